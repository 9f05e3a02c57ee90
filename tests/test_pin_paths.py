"""The compiled frame paths of session 20 (engineer pin) against their numpy references, on hostile inputs."""

from __future__ import annotations

import numpy as np
import pytest

from spatia.model.fill.geometry.layout import cast_layout, estimate_layout, view_bounds
from spatia.model.geometric import _pinholes_on_planes, _pinholes_on_planes_reference
from spatia.world.camera import Intrinsics
from spatia.world.geometry import pixel_rays
from tests.conftest import box_room_points


def _room_frame(seed: int):
    rng = np.random.default_rng(seed)
    cam = np.array([3.0, 1.6, 1.5])
    layout = estimate_layout(box_room_points(rng, np.eye(3), n=4000), cam, np.array([0.0, 1.0, 0.0]),
                             np.array([0.0, 0.0, 1.0]))
    view = view_bounds(layout, cam, cam[None])
    K = Intrinsics.from_fov(75.0, 64, 36)
    a = np.deg2rad(-20.0 + 7.0 * seed)  # pitched down at the floor, a different pitch per seed
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    c2w = np.eye(4)
    c2w[:3, :3] = pitch @ np.diag([1.0, -1.0, 1.0])
    c2w[:3, 3] = cam
    rays = pixel_rays(K).astype(np.float32).reshape(-1, 3)
    true, _ = cast_layout(layout, view, rays, c2w)
    return rng, layout, view, c2w, rays, true.reshape(36, 64)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pinholes_on_planes_matches_its_reference_on_hostile_inputs(seed):
    rng, layout, view, c2w, rays, true = _room_frame(seed)
    # the fill: near the plane (within and just beyond rel, both signs), far in front, zero, negative, NaN and inf
    f_img = (true * rng.choice([0.9, 0.95, 0.999, 1.0, 1.05, 1.0999, 1.1, 1.2, 0.3], true.shape)).astype(np.float32)
    special = rng.random(true.shape)
    f_img[special < 0.05] = 0.0
    f_img[(special >= 0.05) & (special < 0.08)] = -1.0
    f_img[(special >= 0.08) & (special < 0.1)] = np.nan
    f_img[(special >= 0.1) & (special < 0.11)] = np.inf
    hole_idx = np.flatnonzero(rng.random(true.shape) < 0.4)
    f = f_img.ravel()[hole_idx]
    pinhole = rng.random(len(hole_idx)) < 0.7
    out = f_img.copy()
    out.ravel()[rng.choice(out.size, out.size // 10)] = 0.0  # pixels free space emptied (depth 0) stay so
    for rel in (0.1, 0.05, 1e-7, 0.0):
        want, got = out.copy(), out.copy()
        _pinholes_on_planes_reference(layout, view, rays, hole_idx, f, pinhole, c2w, rel, want)
        _pinholes_on_planes(layout, view, rays, hole_idx, f, pinhole, c2w, rel, got)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # NaNs bit for bit too
        if rel == 0.1:
            assert np.count_nonzero(got != out) > 10  # the test writes something, both ways


def test_pinholes_on_planes_with_no_pinholes_and_read_only_inputs_leaves_the_depth():
    _, layout, view, c2w, rays, true = _room_frame(0)
    hole_idx = np.arange(0, true.size, 3)
    f = true.ravel()[hole_idx].astype(np.float32)
    rays.setflags(write=False)
    for a in (hole_idx, f):
        a.setflags(write=False)
    out = true.astype(np.float32)
    _pinholes_on_planes(layout, view, rays, hole_idx, f, np.zeros(len(hole_idx), bool), c2w, 0.1, out)
    np.testing.assert_array_equal(out, true.astype(np.float32))
    with pytest.raises(ValueError):
        _pinholes_on_planes(layout, view, rays, hole_idx, f, np.ones(len(hole_idx), bool), c2w, 0.1,
                            np.zeros((64, 36), np.float32).T)


def _mark_stale_numpy(rays, depth, valid, axis_vecs, cam_coords, closing_axis, closing_dir, closing_seen, bound_axis,
                      bound_facing, bound_offset, margin):
    """``mark_stale``'s definition in numpy (its docstring; the float32 expressions of the kernel's general path)."""
    coord = [cam_coords[k] + depth * (rays[..., 0] * axis_vecs[k, 0] + rays[..., 1] * axis_vecs[k, 1]
                                      + rays[..., 2] * axis_vecs[k, 2]) for k in range(3)]
    beyond = np.zeros(depth.shape, bool)
    for a, d, s in zip(closing_axis, closing_dir, closing_seen):
        beyond |= d * (coord[a] - s) > margin
    inside = np.ones(depth.shape, bool)
    for a, f, o in zip(bound_axis, bound_facing, bound_offset):
        inside &= f * (coord[a] - o) > margin
    return beyond & valid & inside


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mark_stale_matches_numpy_on_hostile_inputs(seed):
    from spatia.model.fill.geometry.opening_kernels import mark_stale, stale_kernel_inputs

    rng = np.random.default_rng(seed)
    f32 = np.float32
    H, W = 23, 37
    x, y = rng.uniform(-0.8, 0.8, W).astype(f32), rng.uniform(-0.5, 0.5, H).astype(f32)
    rays = np.stack(np.broadcast_arrays(x[None], y[:, None], np.ones((H, W), f32)), -1).astype(f32)
    depth = rng.uniform(0.2, 9.0, (H, W)).astype(f32)
    special = rng.random((H, W))
    depth[special < 0.05] = np.nan
    depth[(special >= 0.05) & (special < 0.08)] = np.inf
    depth[(special >= 0.08) & (special < 0.1)] = 0.0
    valid = rng.random((H, W)) < 0.8
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    axis_vecs, cam = q.astype(f32), rng.normal(size=3).astype(f32)
    bound_axis = np.array([0, 0, 1, 1, 2, 2], np.int64)
    bound_facing = np.array([1, -1, 1, -1, 1, -1], f32)
    bound_offset = np.array([-2.0, 2.5, -6.0, 6.0, -7.0, 7.0], f32)
    margin = f32(0.25)
    for n_closing in (0, 1, 2, 3):
        closing_axis = rng.integers(1, 3, n_closing).astype(np.int64)
        closing_dir = rng.choice([-1.0, 1.0], n_closing).astype(f32)
        closing_seen = rng.uniform(-1.0, 1.0, n_closing).astype(f32)
        want = _mark_stale_numpy(rays, depth, valid, axis_vecs, cam, closing_axis, closing_dir, closing_seen,
                                 bound_axis, bound_facing, bound_offset, margin)
        if n_closing >= 2:
            assert 0 < np.count_nonzero(want) < want.size // 2  # the case tests something
        for separable in (True, False):
            prior = rng.random((H, W)) < 0.1  # the kernel only adds flags
            got = prior.copy()
            mark_stale(*stale_kernel_inputs(rays, x, y, depth, valid, axis_vecs, cam, closing_axis, closing_dir,
                                            closing_seen, bound_axis, bound_facing, bound_offset), separable, margin,
                       got)
            np.testing.assert_array_equal(got, want | prior)
