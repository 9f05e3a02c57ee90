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
