"""The frame path's push-pull colour fill (model/fill/image/pushpull.py) against its definition written out in numpy."""

import numpy as np
import pytest

from spatia.model.fill.image.pushpull import pushpull_fill, pushpull_fill_reference


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


def _pulled_at_every_cell(rgb, valid, push_first):
    """The push-pull fill with every cell of every level pulled (``_pull``, then ``_pull_holes``), level 1 made by
    ``push_first``."""
    from spatia.model.fill.image import pushpull as pp

    shape = valid.shape
    levels = [np.empty((pp._half(shape[0]), pp._half(shape[1]), 4), np.float32)]
    push_first(rgb, valid, levels[0])
    while min(levels[-1].shape[:2]) > 2:
        nxt = np.empty((pp._half(levels[-1].shape[0]), pp._half(levels[-1].shape[1]), 4), np.float32)
        pp._push(levels[-1], nxt)
        levels.append(nxt)
    filled = pp._top_estimate(levels[-1])
    for lv in reversed(levels[:-1]):
        out = np.empty((lv.shape[0], lv.shape[1], 3), np.float32)
        pp._pull(filled, lv, out)
        filled = out
    whole = rgb.copy()
    pp._pull_holes(filled, valid, whole)
    return whole


@pytest.mark.parametrize("shape", [(7, 9), (180, 320), (181, 321)])
def test_the_level_below_full_resolution_pulled_where_the_holes_read_it_gives_the_whole_pull(shape):
    """``pushpull_fill`` pulls each level only at the cells the next finer pull reads: the same frame, bit for bit,
    as pulling every cell (odd shapes: the edge taps)."""
    from spatia.model.fill.image import pushpull as pp

    rng = np.random.default_rng(shape[0])
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    valid = rng.random(shape) > 0.04  # a served frame's few holes ...
    valid[2:6, 3:8] = False  # ... and a larger one
    whole = _pulled_at_every_cell(rgb, valid, pp._push_first)
    assert np.array_equal(pp.pushpull_fill(rgb, valid), whole)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 3), (5, 2), (37, 53), (180, 320), (181, 321)])
def test_branch_free_first_push_equals_the_plain_one(shape):
    """``_push_first`` (a branch-free int32 loop over whole blocks, odd edges after it) gives level 1 bit for bit
    as ``_push_first_plain`` (a branch per cell)."""
    from spatia.model.fill.image import pushpull as pp

    rng = np.random.default_rng(sum(shape))
    for hole_share in (0.0, 0.3, 1.0):
        rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        valid = rng.random(shape) >= hole_share
        a = np.full((pp._half(shape[0]), pp._half(shape[1]), 4), np.nan, np.float32)
        b = a.copy()
        pp._push_first(rgb, valid, a)
        pp._push_first_plain(rgb, valid, b)
        assert np.array_equal(a, b)


@pytest.mark.parametrize("shape", [(3, 3), (7, 9), (64, 64), (180, 320), (181, 321)])
@pytest.mark.parametrize("holes", ["few", "blob", "most"])
def test_pulls_at_the_cells_read_equal_the_whole_pull(shape, holes):
    """``pushpull_fill`` pulls each level only at the cells the next finer pull reads (``_cells_read_by`` down from
    the holes): the same frame, bit for bit, as pulling every cell of every level (``_pull`` everywhere, then
    ``_pull_holes``)."""
    from spatia.model.fill.image import pushpull as pp

    rng = np.random.default_rng(shape[0] * 7 + len(holes))
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    valid = rng.random(shape) > {"few": 0.02, "blob": 0.0, "most": 0.9}[holes]
    if holes == "blob":
        valid[shape[0] // 3: shape[0] // 3 + 5, 1:6] = False
    valid.flat[-1] = True
    whole = _pulled_at_every_cell(rgb, valid, pp._push_first_plain)
    assert np.array_equal(pp.pushpull_fill(rgb, valid), whole)
