"""Filling what the memory has never seen: layout, geometry and texture for unseen space (issue 10)."""
