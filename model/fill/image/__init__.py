"""Passes over one rendered frame: its hole pixels, the push-pull colour fill, what is seen through gaps."""
