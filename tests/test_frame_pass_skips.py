"""The layout fill's per-frame passes that visit only what can matter (hole runs, tiles, boxes), each against its
twin over every pixel, on hostile frames: runs and tiles at the borders, everything or nothing valid, one-pixel
frames, non-finite and non-positive depths."""

import numpy as np
import pytest


def _hostile_hole_frames(rng):
    """(depth, valid) frames: random masks of every density, blobs, bands along each border, lone rows and
    columns, all valid, none valid, tiny shapes; depths with NaN, +-inf, 0 and negatives flagged valid, planes
    (one surface across a hole) and steps (occlusion edges)."""
    frames = []
    for h, w in ((1, 1), (1, 9), (9, 1), (2, 2), (3, 40), (40, 3), (37, 53), (64, 96)):
        yy, xx = np.mgrid[0:h, 0:w]
        plane = 1.0 / (0.2 + 0.5 * yy / max(h, 1) + 0.3 * xx / max(w, 1))
        steps = np.where((xx // 7 + yy // 5) % 3 == 0, 0.6, 3.0) * (1 + 0.01 * rng.uniform(size=(h, w)))
        for base in (plane, steps, rng.uniform(0.1, 20.0, (h, w))):
            for p_valid in (0.0, 0.05, 0.5, 0.9, 0.99, 1.0):
                valid = rng.uniform(size=(h, w)) < p_valid
                frames.append((base.copy(), valid))
            valid = np.ones((h, w), bool)
            valid[: h // 3] = False  # a band along the top
            valid[:, -(w // 4) - 1:] = False  # and the right
            frames.append((base.copy(), valid))
            valid = np.ones((h, w), bool)
            valid[-1] = False  # the bottom row, the left column, a middle column
            valid[:, 0] = False
            valid[:, w // 2] = False
            frames.append((base.copy(), valid))
            blobs = np.ones((h, w), bool)
            for _ in range(4):  # holes of a few to a few tens of pixels across
                cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 30)
                blobs &= (yy - cy) ** 2 + (xx - cx) ** 2 > r * r
            frames.append((base.copy(), blobs))
    for depth, valid in frames[::3]:  # values no hole may be filled from, flagged valid
        bad = rng.uniform(size=depth.shape) < 0.05
        depth[bad] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0], size=int(bad.sum()))
        valid |= bad
    return frames


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hole_fill_by_runs_is_the_scan_kernel_bit_for_bit(dtype):
    """``fill_holes_background`` (row passes, hole runs, ends read once per run and per vertical pair) gives the
    prefix-scan kernel's bits on hostile frames, for spans 1, 3, 24 (the frame path's) and unbounded."""
    from spatia.world.update import _fill_holes_background_scans, fill_holes_background

    rng = np.random.default_rng(20)
    for depth, valid in _hostile_hole_frames(rng):
        depth = depth.astype(dtype)
        for span in (1, 3, 24, None):
            fast = fill_holes_background(depth, valid, 0.05, span)
            slow = _fill_holes_background_scans(depth, valid, 0.05, span)
            np.testing.assert_array_equal(fast.view(np.uint32), slow.view(np.uint32),
                                          err_msg=f"{depth.shape} span {span}")


def test_see_through_rows_by_doubled_windows_match_the_reference_at_every_radius():
    """The across line is counted along each row from windows of 2^k cells, two overlapping per side: radii on
    and either side of powers of two, radii past the row's width, one-column and one-row images, and nearer pixels
    exactly r and r + 1 cells away (the radius's edge) give the reference's marks; radius 0 marks nothing."""
    from spatia.model.fill.image.see_through import reference_see_through_pixels, see_through_pixels

    rng = np.random.default_rng(21)
    for h, w in ((1, 40), (6, 37), (11, 1), (9, 18)):
        for radius in (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 64):
            far = rng.uniform(5.0, 6.0, (h, w)).astype(np.float32)
            near = rng.uniform(1.0, 2.0, (h, w)).astype(np.float32)
            depth = far.copy()
            # near pixels: random ones, and ones exactly radius and radius + 1 cells from a far pixel along a row
            pick = rng.random((h, w)) < 0.15
            for y in range(h):
                x0 = int(rng.integers(0, w))
                for dx in (-radius - 1, -radius, radius, radius + 1):
                    if 0 <= x0 + dx < w:
                        pick[y, x0 + dx] = True
            depth[pick] = near[pick]
            valid = rng.random((h, w)) < 0.9
            np.testing.assert_array_equal(see_through_pixels(depth, valid, radius),
                                          reference_see_through_pixels(depth, valid, radius),
                                          err_msg=f"{h}x{w} r{radius}")
    depth = np.where(np.arange(30) % 2 == 0, 1.0, 5.0).astype(np.float32)[None].repeat(4, 0)
    assert see_through_pixels(depth, np.ones(depth.shape, bool), 3).any()
    assert not see_through_pixels(depth, np.ones(depth.shape, bool), 0).any()
    assert not reference_see_through_pixels(depth, np.ones(depth.shape, bool), 0).any()


def test_pixels_dropped_by_bits_are_np_where_bit_for_bit():
    """``_without`` zeroes the dropped (and unrendered) pixels' depth by and-ing its bits with a mask: the same
    bits as ``np.where`` for NaN, +-inf, -0.0 and negative depths, the same arrays back when nothing is dropped, and
    float64 depths (the ``np.where`` path) made float32 as before."""
    from spatia.model.geometric import _without, _without_reference

    rng = np.random.default_rng(22)
    for dtype in (np.float32, np.float64):
        depth = rng.uniform(0.1, 9.0, (37, 53)).astype(dtype)
        depth.flat[:6] = [np.nan, np.inf, -np.inf, -0.0, -2.5, 0.0]
        valid = rng.random(depth.shape) < 0.8
        for p_drop in (0.0, 0.01, 0.5, 1.0):
            drop = rng.random(depth.shape) < p_drop
            drop[0, :6] |= p_drop > 0
            v, d = _without(valid, depth, drop)
            rv, rd = _without_reference(valid, depth, drop)
            np.testing.assert_array_equal(v, rv)
            assert d.dtype == rd.dtype and d.shape == rd.shape
            np.testing.assert_array_equal(np.asarray(d).view(np.uint8), np.asarray(rd).view(np.uint8))
            if not drop.any():
                assert v is valid and d is depth
    sliced = rng.uniform(0.1, 9.0, (20, 30)).astype(np.float32)[:, 5:25]  # not C-contiguous
    keep = rng.random(sliced.shape) < 0.5
    v, d = _without(keep, sliced, ~keep)
    np.testing.assert_array_equal(d.view(np.uint32), np.where(keep, sliced, np.float32(0)).view(np.uint32))


def test_doorway_rows_branch_free_match_the_reference_with_bad_depths():
    """``mark_opening`` flags a row's span branch-free from de-interleaved rays: on renders with NaN, +-inf and
    1 mm depths (rendered or not) and cameras in front of, inside and beyond a doorway's slab, the flags are
    ``reference_opening_pixels``'s; read-only rays (the generator's cached ones) included. (Depths <= 0 flagged
    rendered are left out: a point at or behind the camera can lie in the slab from a pixel outside the slab's
    image box, which only the reference tests; main's kernel differs there too.)"""
    from spatia.model.fill.geometry.layout import (LayoutConfig, estimate_layout, opening_pixels, reference_opening_pixels,
                                          view_bounds)
    from spatia.world.camera import Intrinsics
    from spatia.world.geometry import pixel_rays
    from tests.conftest import box_room_points
    from tests.test_opening_kernels import _c2w

    rng = np.random.default_rng(23)
    cam0 = np.array([3.0, 1.6, 2.0])
    layout = estimate_layout(box_room_points(rng, np.eye(3), n=4000), cam0, np.array([0.0, 1.0, 0.0]),
                             np.array([0.0, 0.0, 1.0]), LayoutConfig(max_room_extent_m=20.0))
    path = np.array([cam0, [3.0, 1.6, 4.0], [3.2, 1.6, 7.0], [3.2, 1.6, 9.5]])
    view = view_bounds(layout, cam0, path)
    assert len(view.openings) == 1
    K = Intrinsics.from_fov(80.0, 61, 37)
    rays = pixel_rays(K).astype(np.float32)
    rays.setflags(write=False)
    flagged = 0
    for cam in ([3.2, 1.6, 7.5], [3.2, 1.6, 7.95], [3.1, 1.5, 8.2], [3.3, 1.6, 9.0]):
        for yaw, pitch in ((0, 0), (30, -15), (170, 5)):
            c2w = _c2w(np.asarray(cam, float), yaw, pitch)
            depth = rng.uniform(0.2, 9.0, (K.height, K.width)).astype(np.float32)
            bad = rng.random(depth.shape) < 0.1
            depth[bad] = rng.choice(np.array([np.nan, np.inf, -np.inf, 1e-3], np.float32), int(bad.sum()))
            valid = rng.random(depth.shape) > 0.2
            want = reference_opening_pixels(layout, view, depth, valid, rays, c2w)
            np.testing.assert_array_equal(opening_pixels(layout, view, depth, valid, rays, c2w), want)
            flagged += int(want.sum())
    assert flagged > 20  # the cases reach the doorway
