"""Compile (or load from numba's on-disk cache) the layout fill's kernels on tiny inputs, off any session's path.

``spatia serve``'s warm-up child (``server.host.warm_kernels``) calls ``compile_fill_kernels``: its throwaway world
shows the coarse fill for its first frames and never reaches the layout fill, whose kernels (texture synthesis,
the plane ray cast, the exemplar window search) then compiled inside a player's first frames with a cold cache
(a fresh clone, an edit of a kernel file: about a minute of CPU at a shared machine's load).
"""

from __future__ import annotations

import numpy as np


def compile_fill_kernels() -> int:
    """Run every compiled kernel of ``model.fill`` once; returns how many texels were synthesised."""
    from spatia.model.fill import appearance, layout_kernels, opening_kernels, texture

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    valid = np.ones((40, 40), bool)
    valid[10:20, 12:30] = False
    model = texture.TextureModel.fit(rgb, valid, 0.01)  # the region path: cells, cuts, composition, shading
    uv = np.stack(np.meshgrid(np.linspace(-0.3, 0.6, 24), np.linspace(-0.3, 0.6, 16)), -1).reshape(-1, 2)
    colours = texture.sample_uv(model, uv, np.full(len(uv), 0.004), seed=0)  # the tile gather
    cover = rng.random((20, 20)) < 0.7
    appearance._largest_window(cover, [16, 8], 0.5)  # the exemplar window search
    appearance.UnseenCells(np.zeros(1), np.zeros(0), np.zeros(0, np.int64), np.zeros(3), 0.5).apply(uv, colours)
    rays = np.concatenate([rng.uniform(-1, 1, (8, 2)), np.ones((8, 1))], 1).astype(np.float32)
    two = np.zeros(2)
    layout_kernels.cast_planes(
        rays, np.eye(3, dtype=np.float32)[:2], np.ones(2, np.float32), np.array([False, True]), two + 9.0, two - 9.0,
        two + 9.0, np.eye(3, dtype=np.float32)[1:], two, np.array([0.0, 1.0, 0.0], np.float32), 1.6,
        np.zeros(1, np.int64), np.eye(3, dtype=np.float32)[2:], np.zeros(1, np.float32),
        np.zeros(1, np.float32), np.ones(1, np.float32), np.zeros(1, np.float32), np.ones(1, np.float32),
        np.float32(1.6),
    )  # fmt: skip
    f32, vec = np.float32, np.array([0.0, 1.0, 0.0], np.float32)
    opening_kernels.mark_opening(
        np.ones((2, 2, 3), np.float32), np.ones((2, 2), np.float32), np.ones((2, 2), bool), 0, 2, 0, 2, vec, f32(1.6),
        vec, f32(0), f32(0), f32(0.5), f32(0), f32(2), vec, f32(0), f32(1), f32(0.3), np.zeros((2, 2), bool),
    )  # fmt: skip (the doorway test)
    return int(colours.shape[0])
