"""Geometry of the unseen: the Manhattan layout of the observed points, a photograph's layout, free space,
openings and pinholes, and their compiled kernels."""
