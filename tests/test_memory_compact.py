"""Compaction updates the voxel hash for the moved suffix only (world/_memory_kernels.hash_drop_suffix): the table
must answer exactly as one rebuilt from scratch (``SpatialMemory._rehash``, the reference)."""

import numpy as np
import pytest

from spatia.world import _memory_kernels as K
from spatia.world.camera import Intrinsics
from spatia.world.memory import MemoryConfig, SpatialMemory


def _memory(n: int, seed: int) -> SpatialMemory:
    rng = np.random.default_rng(seed)
    mem = SpatialMemory(MemoryConfig(voxel_size_m=0.05))
    pts = rng.uniform(-3, 3, (n, 3))
    mem.integrate_points(pts, rng.integers(0, 256, (n, 3), dtype=np.uint8), frame_index=0)
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
    before_keys = mem._keys[:n].copy()
    before_cols = mem._colors[:n].copy()
    mem._compact(keep)
    assert mem._n == keep.sum()
    assert np.array_equal(mem._keys[: mem._n], before_keys[keep])  # order kept
    assert np.array_equal(mem._colors[: mem._n], before_cols[keep])
    _check_table(mem, before_keys[~keep])
    # and the memory renders exactly as one rebuilt from scratch
    ref = _memory(20_000, seed=hash(where) % 1000)
    ref._compact(keep)
    ref._rehash()
    K_ = Intrinsics.from_fov(75.0, 96, 64)
    c2w = np.eye(4)
    c2w[2, 3] = -4.0
    a, b = mem.render(K_, c2w), ref.render(K_, c2w)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth_m, b.depth_m)


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
