"""The frame path's push-pull colour fill (model/fill/pushpull.py) against its definition written out in numpy."""

import numpy as np
import pytest

from spatia.model.fill.pushpull import pushpull_fill, pushpull_fill_reference


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 2), (37, 53), (64, 64), (97, 131), (180, 320)])
@pytest.mark.parametrize("hole_share", [0.05, 0.5, 0.97])
def test_kernels_equal_the_reference(shape, hole_share):
    rng = np.random.default_rng(hash((shape, hole_share)) % 2**32)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    valid = rng.random(shape) > hole_share
    valid.flat[0] = True  # at least one coloured pixel (none: all black, tested below)
    got, want = pushpull_fill(rgb, valid), pushpull_fill_reference(rgb, valid)
    assert got.dtype == np.uint8 and got.shape == rgb.shape
    # float32 levels vs float64: a value on a rounding boundary may land one step apart
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.array_equal(got[valid], rgb[valid])


def test_edge_cases_and_a_hole_takes_its_surroundings():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (200, 40, 10)
    rgb[:, 30:] = (10, 40, 200)
    valid = np.ones((40, 60), bool)
    assert pushpull_fill(rgb, valid) is rgb
    assert not pushpull_fill(rgb, np.zeros_like(valid)).any()
    valid[15:25, 5:15] = False  # inside the red half
    out = pushpull_fill(np.where(valid[..., None], rgb, 0).astype(np.uint8), valid)
    # the coarse levels also see some of the blue half 15 px away: a few levels of it, no more
    assert np.abs(out[15:25, 5:15].astype(int) - (200, 40, 10)).max() <= 8
