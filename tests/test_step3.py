"""The lock-step step's fast paths, third pass (issue 14 section 6, session 9): each against its slow twin."""

import numpy as np
import pytest



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

