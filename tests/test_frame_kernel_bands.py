"""The frame path's kernels that run on bands of rows, one band per numba thread (``see_through._see_through_in_bands``,
``update._fill_in_bands``): the same bits for any number of bands, so frames do not depend on how many threads made
them, and the references' answer, on frames whose see-through pixels and holes cross the bands' borders."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from spatia.model.fill.image import see_through as st
from spatia.world import update


def _see_through_frames(rng, h, w):
    """(depth, valid) float32 / bool: a near surface (1 m) held as a sparse grid of points over a far wall (5 m),
    so the wall shows through the gaps, in a block across the middle rows and in a diagonal strip from top to
    bottom; plus random holes, a farther surface in some pixels and NaN depths flagged rendered."""
    yy, xx = np.mgrid[0:h, 0:w]
    depth = np.full((h, w), 5.0, np.float32) + rng.uniform(0.0, 0.1, (h, w)).astype(np.float32)
    grid = (yy % 3 == 0) & (xx % 3 == 0)
    block = (yy > h // 4) & (yy < 3 * h // 4) & (xx > w // 5) & (xx < 3 * w // 5)
    strip = np.abs(xx - yy - w // 3) < 6
    depth[(block | strip) & grid] = 1.0
    depth[rng.random((h, w)) < 0.05] = rng.uniform(8.0, 9.0)
    valid = rng.random((h, w)) < 0.95
    depth[valid & (rng.random((h, w)) < 0.01)] = np.nan
    depth[~valid] = 0.0
    return depth, valid


def _hole_frames(rng, h, w):
    """(depth, valid): a sloped plane and occlusion steps; holes as vertical strips and blobs crossing the bands'
    borders, whole bands of rows without a valid pixel (a hole's vertical ends several bands away), a column with
    one valid pixel, random holes; depths no hole may be filled from (NaN, inf, 0, negative) flagged valid."""
    yy, xx = np.mgrid[0:h, 0:w]
    plane = 1.0 / (0.2 + 0.5 * yy / h + 0.3 * xx / w)
    steps = np.where((xx // 7 + yy // 5) % 3 == 0, 0.6, 3.0) * (1 + 0.01 * rng.uniform(size=(h, w)))
    frames = []
    for base in (plane, steps):
        valid = rng.random((h, w)) > 0.1
        valid[:, w // 3: w // 3 + 2] = False  # from top to bottom
        valid[h // 3: 2 * h // 3 + 5, w // 2: w // 2 + 4] = False  # across the middle rows
        for _ in range(5):  # blobs of a few to 20 pixels across
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 10)
            valid &= (yy - cy) ** 2 + (xx - cx) ** 2 > r * r
        empty = valid.copy()
        empty[h // 5: 4 * h // 5] = False  # no valid row over most bands
        empty[h // 2, 7] = True
        lone = valid.copy()
        lone[:, 5] = False
        lone[h - 3, 5] = True  # the column's only valid pixel, near the bottom
        for v in (valid, empty, lone):
            depth = base.copy()
            bad = rng.random((h, w)) < 0.02
            depth[bad] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0], size=int(bad.sum()))
            frames.append((depth, v | bad))
    return frames


def _thread_counts():
    return sorted({1, min(2, numba.config.NUMBA_NUM_THREADS), numba.config.NUMBA_NUM_THREADS})


@pytest.mark.parametrize("shape", [(72, 64), (50, 33), (7, 20)])
def test_see_through_is_the_same_bits_in_any_number_of_bands_and_the_reference(shape):
    """Every band count from 1 to 7 (more bands than rows too) marks what the reference marks, at radii whose
    windows reach past one or several bands; the public call at each thread count gives the same."""
    rng = np.random.default_rng(3)
    depth, valid = _see_through_frames(rng, *shape)
    for radius in (1, 3, 5):
        expected = st.reference_see_through_pixels(depth, valid, radius)
        assert expected.any()
        for n_bands in range(1, 8):
            out = np.zeros(shape, bool)
            st._see_through_in_bands(depth, valid, radius, 0.05, 0.05, n_bands, out)
            np.testing.assert_array_equal(out, expected, err_msg=f"r {radius}, {n_bands} bands")
            assert out.view(np.uint8).max() <= 1  # a bool: the counts were turned into 0 / 1
        before = numba.get_num_threads()
        try:
            for threads in _thread_counts():
                numba.set_num_threads(threads)
                np.testing.assert_array_equal(st.see_through_pixels(depth, valid, radius), expected)
        finally:
            numba.set_num_threads(before)


def test_see_through_on_a_frame_size_that_splits_at_the_frame_paths_radius():
    """640x360 at radius 13 (the frame path's) splits into bands on several threads: the marks are the same
    bits for every band count, and the reference's on the rows around the bands' borders."""
    rng = np.random.default_rng(4)
    depth, valid = _see_through_frames(rng, 360, 640)
    one = np.zeros(depth.shape, bool)
    st._see_through_in_bands(depth, valid, 13, 0.05, 0.05, 1, one)
    assert one.sum() > 1000
    for n_bands in (2, 3, 4):
        out = np.zeros(depth.shape, bool)
        st._see_through_in_bands(depth, valid, 13, 0.05, 0.05, n_bands, out)
        np.testing.assert_array_equal(out, one, err_msg=f"{n_bands} bands")
    # the reference on a window around the 2-band border (rows 180 +- 40, its own borders then 26 rows off)
    crop = (slice(140, 220), slice(150, 260))
    inner = (slice(13, -13), slice(13, -13))  # what the crop's edges do not change
    expected = st.reference_see_through_pixels(depth[crop], valid[crop], 13)
    np.testing.assert_array_equal(one[crop][inner], expected[inner])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 48), (37, 53), (5, 9)])
def test_hole_fill_is_the_same_bits_in_any_number_of_bands_and_the_reference(dtype, shape):
    """Every band count from 1 to 7 fills the holes with the scan kernel's bits (and the plain reference's values),
    for spans 1, 3, 24 (the frame path's) and unbounded, with holes whose ends lie bands away; the public call at
    each thread count gives the same."""
    rng = np.random.default_rng(5)
    for depth, valid in _hole_frames(rng, *shape):
        depth = depth.astype(dtype)
        for span in (1, 3, 24, None):
            expected = update._fill_holes_background_scans(depth, valid, 0.05, span)
            np.testing.assert_allclose(expected, update._reference_fill_holes_background(depth, valid, 0.05, span),
                                       rtol=1e-6, atol=0)
            for n_bands in range(1, 8):
                out = np.empty(shape, np.float32)
                update._fill_in_bands(depth, valid, 0.05, np.inf if span is None else float(span), n_bands, out)
                np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32),
                                              err_msg=f"{shape} span {span}, {n_bands} bands")
            before = numba.get_num_threads()
            try:
                for threads in _thread_counts():
                    numba.set_num_threads(threads)
                    got = update.fill_holes_background(depth, valid, 0.05, span)
                    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
            finally:
                numba.set_num_threads(before)


def test_band_counts_follow_the_threads_within_the_rows():
    """One band per thread, none thinner than the rows its halo would make too costly (see-through: 8r rows; fill:
    16 rows)."""
    assert st._see_through_bands(360, 13, 1) == 1
    assert st._see_through_bands(360, 13, 2) == 2
    assert st._see_through_bands(360, 13, 16) == 3  # 360 // 104
    assert st._see_through_bands(50, 13, 4) == 1
    assert st._see_through_bands(50, 0, 4) == 4  # (radius 0: nothing marked, whatever the bands)
    assert update._fill_bands(360, 2) == 2
    assert update._fill_bands(360, 64) == 22
    assert update._fill_bands(10, 4) == 1
