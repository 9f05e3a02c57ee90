"""The lock-step step's fast paths, third pass (issue 14 section 6, session 9): each against its slow twin."""

import numpy as np
import pytest

from spatia.world._retrieval_reference import reference_intersection_counts
from spatia.world.history import VoxelSetIndex


@pytest.mark.parametrize("tail_runs", [1, 40, 1 << 30])
def test_chained_unsealed_runs_count_as_the_scan_and_the_sets_do(tail_runs):
    """Runs closed since the last seal are read through per-column chains: the counts equal the former scan of
    every closed run and plain set intersections, queried between adds (chains grow, seals empty them)."""
    rng = np.random.default_rng(tail_runs % 997)
    index = VoxelSetIndex(tail_runs)
    frame_sets = []
    centre = np.zeros(3)
    for f in range(40):
        # a wandering window: voxels leave and come back, so columns get several closed runs each
        centre = np.clip(centre + rng.integers(-2, 3, 3), -6, 6)
        keys = ((centre + rng.integers(-4, 5, (int(rng.integers(0, 300)), 3)) + 16) @ [1 << 10, 1 << 5, 1])
        frame_sets.append(np.unique(keys.astype(np.int64)))
        index.add(np.concatenate([keys, keys[:5]]).astype(np.int64))  # repeats within a frame count once
        if f % 7 == 3 or f == 39:
            queries = [frame_sets[int(rng.integers(0, f + 1))] for _ in range(3)]
            queries += [np.unique(rng.integers(0, 1 << 15, 200)), np.zeros(0, np.int64)]
            got = index.intersection_counts(queries)
            np.testing.assert_array_equal(got, index._intersection_counts_scan(queries))
            np.testing.assert_array_equal(got, reference_intersection_counts(queries, frame_sets))
    if tail_runs == 1 << 30:
        assert index.num_unsealed_runs > 100  # the chains carried every closed run
    if tail_runs == 1:
        assert index.num_unsealed_runs < index.num_runs - index.num_voxels


def _depth_with_holes(rng, H, W, dtype=np.float32):
    """A slanted floor, a near box (occlusion edges), pinholes, long holes, a NaN and a negative depth."""
    yy, xx = np.mgrid[0:H, 0:W]
    depth = 1.0 / (0.1 + 0.8 * yy / H + 0.05 * rng.uniform(size=(H, W)))
    depth[H // 4 : H // 2, W // 3 : W // 2] *= 0.3
    valid = rng.uniform(size=(H, W)) > rng.uniform(0.1, 0.5)
    valid[H // 2 : H // 2 + 3, :] = False  # a row band wider than most spans
    valid[:, W - 30 : W - 2] = False  # a column band wider than max_span
    depth[1, 1], depth[2, 2] = np.nan, -1.0  # flagged valid, treated as holes
    valid[1, 1] = valid[2, 2] = True
    return depth.astype(dtype), valid


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_hole_fill_is_the_scan_kernel_bit_for_bit(seed):
    """The two-pass, one-axis-per-hole fill gives the former kernel's bits on 128x96 frames with pinholes, bands,
    occlusion edges and invalid depths, for spans 24 (the frame path's), 1 and unbounded, float32 and float64;
    and the plainly written reference on a small frame."""
    from spatia.world.update import (
        _fill_holes_background_scans, _reference_fill_holes_background, fill_holes_background,
    )

    rng = np.random.default_rng(seed)
    for dtype in (np.float32, np.float64):
        depth, valid = _depth_with_holes(rng, 96, 128, dtype)
        for span in (24, 1, None):
            fast = fill_holes_background(depth, valid, 0.05, span)
            assert fast.dtype == np.float32
            np.testing.assert_array_equal(fast, _fill_holes_background_scans(depth, valid, 0.05, span))
    depth, valid = _depth_with_holes(rng, 20, 40)
    for span in (5, None):
        # (the reference interpolates depths where the kernels interpolate inverse depths: float64 rounding apart)
        np.testing.assert_allclose(fill_holes_background(depth, valid, 0.05, span),
                                   _reference_fill_holes_background(depth, valid, 0.05, span), rtol=1e-6, atol=0)
    with pytest.raises(Exception, match="one shape"):
        fill_holes_background(depth, valid[:, :-1])
