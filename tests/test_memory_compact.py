"""Compaction (world/_memory_kernels.drop_points) moves only the rows it must and updates the voxel hash for those
alone: the rows must come out in ``world._reference.reference_drop_order``'s order and the table must answer exactly
as one rebuilt from scratch (``SpatialMemory._rehash``, the reference)."""

import numpy as np
import pytest

from spatia.world import _memory_kernels as K
from spatia.world._reference import reference_drop_order
from spatia.world.camera import Intrinsics
from spatia.world.memory import MemoryConfig, SpatialMemory


def _memory(n: int, seed: int) -> SpatialMemory:
    rng = np.random.default_rng(seed)
    mem = SpatialMemory(MemoryConfig(voxel_size_m=0.05))
    pts = rng.uniform(-3, 3, (n, 3))
    mem.integrate_points(pts, rng.integers(0, 256, (n, 3), dtype=np.uint8), frame_index=0)
    mem.reindex()
    # a second batch after the first is sorted: an unsorted tail, as after a clip
    pts2 = rng.uniform(-3, 3, (n // 4, 3))
    mem.integrate_points(pts2, rng.integers(0, 256, (n // 4, 3), dtype=np.uint8), frame_index=1)
    return mem


def _check_table(mem: SpatialMemory, dropped_keys: np.ndarray) -> None:
    n = mem._n
    keys = mem._keys[:n]
    assert np.array_equal(K.hash_lookup_many(mem._table, mem._keys, keys), np.arange(n))
    if len(dropped_keys):
        assert (K.hash_lookup_many(mem._table, mem._keys, dropped_keys) == -1).all()
    occupied = np.sort(mem._table[mem._table >= 0])
    assert np.array_equal(occupied, np.arange(n))  # every point once, nothing stale


@pytest.mark.parametrize("where", ["tail", "suffix", "scattered", "prefix"])
def test_compaction_leaves_the_table_as_a_rebuild_would(where):
    mem = _memory(20_000, seed=hash(where) % 1000)
    n = mem._n
    rng = np.random.default_rng(1)
    keep = np.ones(n, bool)
    lo = {"tail": n - 300, "suffix": n * 2 // 3, "scattered": n // 2 + 1, "prefix": 10}[where]
    keep[lo + rng.choice(n - lo, size=min(250, n - lo), replace=False)] = False
    before, ns0 = mem.to_arrays(), mem._n_sorted
    assert 0 < ns0 < n
    order, n_sorted = reference_drop_order(mem._n_sorted, n, np.flatnonzero(~keep))
    mem._compact(keep)
    assert mem._n == keep.sum() and mem._n_sorted == n_sorted
    after = mem.to_arrays()
    for name in before:
        assert np.array_equal(after[name], before[name][order]), name
    # the sorted prefix keeps its order (culling blocks), and its block directory matches it
    assert np.array_equal(after["voxel_keys"][:n_sorted], before["voxel_keys"][:ns0][keep[:ns0]])
    ids, starts = K.block_directory(mem._keys, mem._n_sorted)
    assert np.array_equal(ids, mem._block_ids) and np.array_equal(starts, mem._block_starts)
    _check_table(mem, before["voxel_keys"][~keep])
    # and the memory renders exactly as one rebuilt from scratch
    ref = _memory(20_000, seed=hash(where) % 1000)
    ref._compact(keep)
    ref._rehash()
    K_ = Intrinsics.from_fov(75.0, 96, 64)
    c2w = np.eye(4)
    c2w[2, 3] = -4.0
    a, b = mem.render(K_, c2w), ref.render(K_, c2w)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth_m, b.depth_m)
    # whatever the tail's order, a re-sort gives the same memory as dropping the points from a sorted one
    mem.reindex()
    full = _memory(20_000, seed=hash(where) % 1000)
    full.reindex()
    full_keep = np.isin(full.voxel_keys, before["voxel_keys"][keep])
    full._compact(full_keep)
    for name, arr in full.to_arrays().items():
        assert np.array_equal(mem.to_arrays()[name], arr), name


def test_many_small_compactions_stay_consistent():
    mem = _memory(8_000, seed=3)
    rng = np.random.default_rng(2)
    dropped = []
    for _ in range(40):
        n = mem._n
        keep = np.ones(n, bool)
        k = int(rng.integers(1, 40))
        lo = int(rng.integers(n // 2, n - k))
        sel = lo + rng.choice(n - lo, size=k, replace=False)
        keep[sel] = False
        dropped.append(mem._keys[sel].copy())
        mem._compact(keep)
    _check_table(mem, np.concatenate(dropped))


@pytest.mark.parametrize("since", [None, 1])
def test_box_candidates_match_a_plain_box_test(since):
    """``box_candidates`` reads only the culling blocks that meet the box (or only points seen since a frame):
    it must list exactly the invented points a plain test of every point's voxel finds."""
    from spatia.world.memory import INVENTED_FINAL, OBSERVED

    rng = np.random.default_rng(5)
    mem = SpatialMemory(MemoryConfig(voxel_size_m=0.05))
    mem.integrate_points(rng.uniform(-3, 3, (6000, 3)), np.zeros((6000, 3), np.uint8), 0, provenance=INVENTED_FINAL)
    mem.integrate_points(rng.uniform(-3, 3, (2000, 3)), np.zeros((2000, 3), np.uint8), 0)  # observed
    mem.reindex()  # a sorted prefix with its block directory, then an unsorted tail seen at frame 1
    mem.integrate_points(rng.uniform(-3, 3, (1500, 3)), np.zeros((1500, 3), np.uint8), 1, provenance=INVENTED_FINAL)
    assert 0 < mem._n_sorted < mem._n
    lo, hi = np.array([-12, -20, -5]), np.array([15, 9, 30])
    floor = np.iinfo(np.int32).min if since is None else since
    got = K.box_candidates(mem._keys, mem._prov, mem._last, mem._n, mem._n_sorted, mem._block_ids,
                           mem._block_starts, *lo.tolist(), *hi.tolist(), OBSERVED, floor)
    ijk = np.floor(mem._positions64() / 0.05).astype(np.int64)
    want = np.flatnonzero(np.all((ijk >= lo) & (ijk <= hi), axis=1) & (mem.provenance != OBSERVED)
                          & (mem.last_seen_frame >= floor))
    assert len(want) > 10
    assert np.array_equal(got, want)
