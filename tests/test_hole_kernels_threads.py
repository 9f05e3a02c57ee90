"""The layout fill's hole kernels (``model.fill.image.hole_kernels``) in parallel chunks give the serial kernels'
outputs bit for bit, whatever the number of numba threads or chunks: a frame must not depend on how many threads
rendered it."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from spatia.model.fill.image import hole_kernels as hk


def _same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.fixture
def threads():
    """Sets numba's thread count for a test; puts it back after."""
    before = numba.get_num_threads()
    yield lambda n: numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(before)


def _frame(rng, h, w, hole_share):
    valid = rng.random((h, w)) >= hole_share
    valid[: h // 3, : w // 2] = False  # a large hole (the rows of one band holding most holes)
    filled = np.where(rng.random((h, w)) < 0.7, rng.uniform(0.5, 5, (h, w)), 0).astype(np.float32)
    rays = rng.normal(size=(h, w, 3)).astype(np.float32)
    return valid, filled, rays


@pytest.mark.parametrize("hole_share", [0.02, 0.3, 0.9])
def test_hole_rays_in_bands_equal_one_pass(threads, hole_share):
    rng = np.random.default_rng(1)
    valid, filled, rays = _frame(rng, 240, 300, hole_share)  # 72 000 px: two bands of PARALLEL_MIN_PX
    offs = hk.chamfer_offsets(2.5)
    want = hk._hole_rays_serial(valid, filled, rays, *offs)
    for n_threads in (1, 2):
        threads(n_threads)
        _same(hk.hole_rays(valid, filled, rays, *offs), want)
    for bands in (2, 3, 7, 240):  # more bands than threads, one row each
        _same(hk._hole_rays_parallel(valid, filled, rays, *offs, bands), want)
    all_valid = np.ones_like(valid)
    _same(hk._hole_rays_parallel(all_valid, filled, rays, *offs, 3), hk._hole_rays_serial(all_valid, filled, rays,
                                                                                            *offs))


def _depth_texels_args(rng, n_holes, n_planes=6, h=200, w=320):
    hole_idx = np.sort(rng.choice(h * w, n_holes, replace=False)).astype(np.int64)
    li = rng.integers(-1, n_planes, n_holes).astype(np.int16)
    ld = np.where(li >= 0, rng.uniform(0.3, 12, n_holes), 0).astype(np.float32)
    use = (li >= 0) & (rng.random(n_holes) < 0.7)
    pts = rng.normal(size=(n_holes, 3)) * 3
    f = np.where(rng.random(n_holes) < 0.8, rng.uniform(0.5, 6, n_holes), -1).astype(np.float32)
    rays_flat = rng.normal(size=(h * w, 3)).astype(np.float32)
    rays_flat[:, 2] = np.abs(rays_flat[:, 2]) + 0.5
    R, cam = np.eye(3), np.array([0.1, 1.5, -0.2])
    vh, vw = 40, 60
    view_R = np.stack([np.eye(3), np.eye(3)])
    view_t = np.array([[0.0, 1.5, -1.0], [0.5, 1.4, -2.0]])
    view_k = np.array([[50.0, 50.0, 30.0, 20.0], [45.0, 45.0, 30.0, 20.0]])
    view_hw = np.array([[vh, vw], [vh, vw]], np.int64)
    view_off = np.array([0, vh * vw, 2 * vh * vw], np.int64)
    depth_flat = rng.uniform(0.5, 8, 2 * vh * vw).astype(np.float32)
    filled = rng.uniform(0, 5, h * w).astype(np.float32)
    plane_tex = np.array([1, 2, 0, 1, 1, 2][:n_planes], np.int8)
    basis = rng.normal(size=(n_planes, 2, 3))
    normal_cam = rng.normal(size=(n_planes, 3)).astype(np.float32)
    tex_origin = rng.normal(size=(n_planes, 2))
    texel_m = np.full(n_planes, 1 / 128)
    origin_px = rng.integers(0, 500, (n_planes, 2)).astype(np.int64)
    max_level = np.array([3, 0, 2, 5, 1, 4][:n_planes], np.int64)
    return [hole_idx, ld, li, pts, use, f, rays_flat, R, cam, True, view_R, view_t, view_k, view_hw, view_off,
            depth_flat, 0.03, np.float32(7.5), filled, filled.copy(), n_planes, plane_tex, basis, normal_cam,
            np.float32(300.0), np.float32(1 / 64), tex_origin, texel_m, origin_px, max_level]


def _defined(args, out):
    """The outputs that are set: the depths written, rows / cols / level of the synthesis planes (kind 1) only."""
    order, starts, rows, cols, level, uv, footprint = out
    one = np.zeros(len(order), bool)
    for b in np.flatnonzero(args[21] == 1):
        one[starts[b]:starts[b + 1]] = True
    return args[19], order, starts, rows[one], cols[one], level[one], uv, footprint


def _run(fn, args, *extra):
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    return _defined(args, fn(*args, *extra))


@pytest.mark.parametrize("n_holes", [100, 9000, 30000])
def test_depth_texels_in_chunks_equal_the_serial_kernel(threads, n_holes):
    rng = np.random.default_rng(n_holes)
    args = _depth_texels_args(rng, n_holes)
    want = _run(hk._hole_depth_texels_plain, args)
    assert len(want[1]) > 0 and (want[5] > 0).any()
    _same(_run(hk._hole_depth_texels_serial, args), want)
    for n_threads in (1, 2):
        threads(n_threads)
        _same(_run(hk.hole_depth_texels, args), want)
    for chunks in (1, 2, 3, 7, 64):
        _same(_run(hk._hole_depth_texels_parallel, args, chunks), want)


def test_mip_level_without_log2_is_the_expression():
    """``_mip_level`` (doublings compared) equals ``min(max(floor(log2(max(q, 1))), 0), max_level)`` at and next to
    every power of two, below 1, and at inf and NaN."""
    level = numba.njit(lambda q, top: hk._mip_level(q, top))
    want = numba.njit(lambda q, top: min(max(np.floor(np.log2(max(q, 1.0))), 0.0), np.float64(top)))
    qs = [0.0, -3.0, 0.5, 1.0, np.inf, np.nan, 1e300]
    for k in range(0, 12):
        p = 2.0 ** k
        qs += [p, np.nextafter(p, 0), np.nextafter(p, np.inf), p * (1 - 1e-13), p * (1 - 1e-11), p * 1.5]
    qs += list(np.random.default_rng(0).uniform(0, 3000, 2000))
    for top in (0, 1, 3, 8):
        for q in qs:
            got, exp = level(q, top), want(q, top)
            assert got == exp or (np.isnan(got) and np.isnan(exp)), (q, top, got, exp)
