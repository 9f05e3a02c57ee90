"""Appearance of the unseen: per-plane textures and the sky, exemplar-based synthesis in texture tiles,
and their compiled kernels."""
