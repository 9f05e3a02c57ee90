"""``opening_pixels`` (compiled, per doorway's image box) against ``reference_opening_pixels`` (numpy, every
rendered pixel of the frame): the same flags for cameras in front of, beside, inside and behind a doorway's slab,
and on a real house loop (model/fill/geometry/opening_kernels.py)."""

from __future__ import annotations

import math

import numpy as np

from spatia.model.fill.geometry.layout import (LayoutConfig, estimate_layout, opening_pixels, reference_opening_pixels,
                                      view_bounds)
from spatia.world.camera import Intrinsics
from spatia.world.geometry import pixel_rays
from tests.conftest import box_room_points


def _c2w(cam: np.ndarray, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Camera at ``cam`` looking along +z turned by yaw about up (+y) and pitch; camera y points down."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    Ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    c2w = np.eye(4)
    c2w[:3, :3] = Ry @ Rx @ np.diag([-1.0, -1.0, 1.0])
    c2w[:3, 3] = cam
    return c2w


def test_compiled_doorway_flags_match_the_numpy_reference():
    rng = np.random.default_rng(5)
    cam0 = np.array([3.0, 1.6, 2.0])
    layout = estimate_layout(box_room_points(rng, np.eye(3), n=4000), cam0, np.array([0.0, 1.0, 0.0]),
                             np.array([0.0, 0.0, 1.0]),
                             LayoutConfig(max_room_extent_m=20.0))
    path = np.array([cam0, [3.0, 1.6, 4.0], [3.2, 1.6, 7.0], [3.2, 1.6, 9.5]])  # through the back wall at z = 8
    K = Intrinsics.from_fov(80.0, 96, 60)
    rays = pixel_rays(K).astype(np.float32)
    cams = [cam0, [3.2, 1.6, 7.5], [3.2, 1.6, 7.95], [3.2, 1.6, 8.05], [3.1, 1.5, 8.2], [3.3, 1.6, 9.0],
            [0.8, 1.6, 6.0], [5.5, 2.5, 7.8]]  # far, near, inside the slab, through it, beyond, beside
    view = view_bounds(layout, cam0, path)
    assert len(view.openings) == 1
    flagged_total = 0
    for k, cam in enumerate(cams):
        cam = np.asarray(cam, float)
        for yaw, pitch in ((0, 0), (35, -10), (-60, 20), (170, 0), (90, 45), (-5, -80)):
            c2w = _c2w(cam, yaw, pitch)
            # a render of points 0.2-9 m away, some pixels empty
            depth = rng.uniform(0.2, 9.0, (K.height, K.width)).astype(np.float32)
            valid = rng.random((K.height, K.width)) > 0.2
            want = reference_opening_pixels(layout, view, depth, valid, rays, c2w)
            got = opening_pixels(layout, view, depth, valid, rays, c2w)
            np.testing.assert_array_equal(got, want, err_msg=f"camera {k}, yaw {yaw}, pitch {pitch}")
            flagged_total += int(want.sum())
    assert flagged_total > 100  # the cases do reach the doorway


def test_doorway_flags_on_a_house_loop_match_the_reference(monkeypatch):
    """Every frame's doorway flags along the house loop (at 96x54 the memory holds a wall in a doorway in frames
    ~120-135)."""
    import spatia.model.fill.geometry.layout as layout_mod
    from spatia.model.geometric import GeometricConfig, GeometricGenerator
    from spatia.world.actions import ClipConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.scenes import make_scene
    from spatia.world.state import World

    checked = []
    real = layout_mod.opening_pixels

    def both(layout, view, depth, valid, rays, c2w):
        got = real(layout, view, depth, valid, rays, c2w)
        np.testing.assert_array_equal(got, reference_opening_pixels(layout, view, depth, valid, rays, c2w))
        checked.append(int(got.sum()))
        return got

    monkeypatch.setattr(layout_mod, "opening_pixels", both)
    world = World.from_scene("house", 0, 96, 54)
    cfg = EngineConfig(clip=ClipConfig(first_clip_frames=4, clip_frames=6, preceding_frames=2), keyframe_stride=4)
    engine = Engine(world, GeometricGenerator(GeometricConfig(fill="layout")), cfg)
    frames = list(engine.generate(make_scene("house", 0).demo_path(161)[1:140], seed=0))
    assert len(frames) == 139
    assert len(checked) > 20 and sum(checked) > 0


def test_the_fill_warm_up_compiles_the_doorway_kernel():
    """``compile_fill_kernels`` (``spatia serve``'s warm-up) compiles the signature ``opening_pixels`` calls."""
    from spatia.model.fill.geometry import opening_kernels
    from spatia.model.fill.warmup import compile_fill_kernels

    compile_fill_kernels()
    before = len(opening_kernels.mark_opening.signatures)
    assert before
    rng = np.random.default_rng(2)
    cam = np.array([3.0, 1.6, 2.0])
    layout = estimate_layout(box_room_points(rng, np.eye(3), n=4000), cam, np.array([0.0, 1.0, 0.0]),
                             np.array([0.0, 0.0, 1.0]))
    view = view_bounds(layout, cam, np.array([cam, [3.2, 1.6, 7.0], [3.2, 1.6, 9.5]]))
    K = Intrinsics.from_fov(80.0, 32, 20)
    depth = np.full((K.height, K.width), 6.0, np.float32)
    opening_pixels(layout, view, depth, np.ones_like(depth, bool), pixel_rays(K).astype(np.float32), _c2w(cam, 0, 0))
    assert len(opening_kernels.mark_opening.signatures) == before
