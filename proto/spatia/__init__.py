"""Spatia protocol buffers."""
