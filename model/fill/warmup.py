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
    from spatia.model.fill.geometry import freespace, layout_kernels, opening_kernels
    from spatia.model.fill.image import hole_kernels, see_through
    from spatia.model.fill.texture import appearance, synthesis as texture

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    valid = np.ones((40, 40), bool)
    valid[10:20, 12:30] = False
    model = texture.TextureModel.fit(rgb, valid, 0.01)  # the region path: cells, cuts, composition, shading
    uv = np.stack(np.meshgrid(np.linspace(-0.3, 0.6, 24), np.linspace(-0.3, 0.6, 16)), -1).reshape(-1, 2)
    colours = texture.sample_uv(model, uv, np.full(len(uv), 0.004), seed=0)  # the tile gather
    # the per-tile coarse fill's tiles of a frame's texels (geometric._PlaneCoarse.texels)
    texture.tiles_read(model, *texture.texel_indices(model, uv, np.full(len(uv), 0.004)))
    # a periodic exemplar's hole fill (the random exemplar above has no lattice), with ``_periodic_fill``'s types
    texture.texture_kernels.periodic_copy(
        np.zeros((4, 4, 3), np.float32), valid[:4, :4].copy(), np.ones((1, 2), np.int64), np.zeros((4, 4, 3), np.float32),
        valid[:4, :4].copy(), np.zeros((4, 4, 2), np.int64))
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
    layout_kernels.axis_votes(np.eye(3), np.eye(3), 0.9)  # the layout fit's up vote
    freespace.world_points(np.ones((2, 3), np.float32), np.ones(2, np.float32), np.eye(4))  # an outdoor 1st clip
    see_through.see_through_pixels(np.ones((4, 4), np.float32), np.ones((4, 4), bool), 1)  # gaps in near surfaces
    f32, vec = np.float32, np.array([0.0, 1.0, 0.0], np.float32)
    opening_kernels.mark_opening(
        np.ones((2, 2, 3), np.float32), np.ones((2, 2), np.float32), np.ones((2, 2), bool), 0, 2, 0, 2, vec, f32(1.6),
        vec, f32(0), f32(0), f32(0.5), f32(0), f32(2), vec, f32(0), f32(1), f32(0.3), np.zeros((2, 2), bool),
    )  # fmt: skip (the doorway test)
    opening_kernels.warm_mark_stale()  # what an earlier guess of a closing wall left (layout.stale_closing_pixels)
    warm_pinhole_kernels()  # geometric._pinholes_on_planes
    # the fused hole passes of GeometricGenerator._layout_fill, with the types its frames pass (numba compiles a
    # signature per array type, read-only included: the cached camera rays and a view's depth are read-only)
    def read_only(a: np.ndarray) -> np.ndarray:
        a.setflags(write=False)
        return a

    valid, filled = rng.random((6, 8)) < 0.5, np.ones((6, 8), np.float32)
    idx, f, _, cast, rays_cast = hole_kernels.hole_rays_near(
        read_only(valid), filled, read_only(np.ones((6, 8, 3), np.float32)),
        read_only(hole_kernels.near_rendered(valid, *hole_kernels.chamfer_offsets(2.5))))
    eye, t3, i2 = np.eye(3), np.zeros(3), np.zeros((1, 2), np.int64)
    views = (eye[None], t3[None], np.ones((1, 4)), np.ones((1, 2), np.int64), np.array([0, 1], np.int64),
             read_only(np.ones(1, np.float32)))
    ld, li, pts, use, _ = hole_kernels.hole_surfaces(
        len(idx), cast, np.ones(len(cast), np.float32), np.zeros(len(cast), np.int16), rays_cast, f, 0.1, eye, t3,
        np.zeros((1, 3)), np.array([0, 1], np.int64), np.zeros((1, 3)), np.ones((1, 3)), 0.5, *views, 0.03)
    hole_kernels.hole_depth_texels(
        idx, ld, li, pts, use, f, read_only(np.ones((48, 3), np.float32)), eye, t3, True, *views, 0.03,
        np.float32(np.inf), filled.reshape(-1), filled.copy().reshape(-1), 1, np.ones(1, np.int8), np.zeros((1, 2, 3)),
        np.zeros((1, 3), np.float32), np.float32(50.0), np.float32(1 / 64), np.zeros((1, 2)), np.ones(1), i2,
        np.zeros(1, np.int64))
    hole_kernels.enclosed_pinhole_depths(filled.copy(), read_only(filled.copy()), read_only(valid.copy()), 2)
    # geometric._colour_off_surface: the holes whose colour may come from another surface
    mask = np.ones((6, 8), bool)
    hole_kernels.colour_off_surface(idx, filled, mask, mask, filled, filled, mask, 2, np.float32(1.1), np.float32(0.1))
    # geometric._match_pinhole_tone
    hole_kernels.match_pinhole_tone(np.zeros((6, 8, 3), np.uint8), read_only(valid.copy()),
                                    read_only(np.flatnonzero(~valid)), 4, 1)
    return int(colours.shape[0])


def load_frame_kernels() -> None:
    """Load the kernels a layout-filled frame is the first to call, for the argument types frames call them with,
    without running them (numba's ``compile`` with a signature loads it from the disk cache, else compiles it).

    A process loads a kernel from the cache on its first call, 3-8 ms each (``mark_opening``: the doorway test;
    ``far_texels``: the far-field texels; ``see_through``: every layout-filled frame's first pass), inside whichever
    frame first shows a doorway or a far plane; and
    ``compile_fill_kernels`` (run by ``spatia serve``'s warm-up child) calls ``mark_opening`` with writable rays,
    a signature of its own, so with a fresh cache a frame compiled the one it needs. ``GeometricGenerator`` runs
    this on a thread of its own when it is built (``model.geometric._load_frame_kernels``). The types follow the calls:
    ``layout.opening_pixels`` (the cached camera rays are read-only) and ``TextureModel._far_texels``."""
    from spatia.model.fill.geometry import opening_kernels
    from spatia.model.fill.image import hole_kernels, see_through
    from spatia.model.fill.texture import synthesis_kernels as texture_kernels
    from spatia.world.numba_start import numba

    def t(a: np.ndarray, read_only: bool = False):
        if read_only:
            a.setflags(write=False)
        return numba.typeof(a)

    f32, i64, f64 = numba.float32, numba.int64, numba.float64
    rays, depth = t(np.zeros((1, 1, 3), np.float32), True), t(np.zeros((1, 1), np.float32))
    mask, vec = t(np.zeros((1, 1), bool)), t(np.zeros(3, np.float32))
    opening_kernels.mark_opening.compile(
        (rays, depth, mask, i64, i64, i64, i64, vec, f32, vec, f32, f32, f32, f32, f32, vec, f32, f32, f32, mask))
    image = t(np.zeros((1, 1, 3), np.float32))
    texels = t(np.zeros(1, np.int64))
    texture_kernels.far_texels.compile((image, texels, texels, i64, i64, i64, image, vec, f64))
    see_through._see_through.compile((depth, mask, i64, f64, f64, i64, mask))
    # geometric._colour_off_surface and the gap crossings before it: every layout-filled frame with holes
    hole_kernels.enclosed_pinhole_depths.compile((depth, t(np.zeros((1, 1), np.float32), True),
                                                  t(np.zeros((1, 1), bool), True), i64))
    hole_kernels.colour_off_surface.compile((texels, depth, mask, mask, depth, depth, mask, i64, f32, f32))
    # geometric._match_pinhole_tone: every frame with gaps between invented points on a plane
    hole_kernels.match_pinhole_tone.compile((t(np.zeros((1, 1, 3), np.uint8)), t(np.zeros((1, 1), bool), True),
                                             t(np.zeros(1, np.int64), True), i64, i64))
    opening_kernels.warm_mark_stale()  # layout.stale_closing_pixels: every indoor frame with a closing wall
    warm_pinhole_kernels()  # geometric._pinholes_on_planes: every layout-filled frame with pinholes


def warm_pinhole_kernels() -> None:
    """Run ``model.fill.geometry.pinhole_kernels`` once with the types ``geometric._pinholes_on_planes`` passes (its
    read-only views; the frame's depth writable)."""
    from spatia.model.fill.geometry import pinhole_kernels

    def read_only(a: np.ndarray) -> np.ndarray:
        a.setflags(write=False)
        return a

    idx, f = read_only(np.zeros(1, np.int64)), read_only(np.ones(1, np.float32))
    depth = np.ones(1, np.float32)
    sel, _ = pinhole_kernels.pinhole_rays(idx, f, read_only(np.ones(1, bool)), depth,
                                          read_only(np.ones((1, 3), np.float32)))
    pinhole_kernels.pinholes_onto_planes(sel, idx, f, read_only(np.ones(1, np.float32)), np.float32(0.1), depth)
