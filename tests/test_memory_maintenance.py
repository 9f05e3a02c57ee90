"""Background maintenance of the spatial memory: growths and re-sorts prepared on the maintenance thread give the
same memory as doing them on the spot, and are dropped when the points moved in between."""

from __future__ import annotations

import numpy as np
import pytest

import spatia.world.memory as memory_module
from spatia.world.camera import Intrinsics, look_at
from spatia.world.memory import SpatialMemory

CAM = Intrinsics.from_fov(70.0, 96, 64)


def _batches(n_batches: int = 40, per_batch: int = 800) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    out = []
    for b in range(n_batches):  # slabs further and further away: each batch is mostly new voxels
        pts = rng.uniform([-2, -1, 2 + 0.1 * b], [2, 1, 2.1 + 0.1 * b], size=(per_batch, 3))
        out.append((pts, rng.integers(0, 256, size=(per_batch, 3)).astype(np.uint8)))
    return out


def _content(mem: SpatialMemory) -> dict[str, np.ndarray]:
    """The points as a set: arrays ordered by voxel key (the order of points is storage, not content)."""
    arrays = mem.to_arrays()
    order = np.argsort(arrays["voxel_keys"])
    return {name: a[order] for name, a in arrays.items()}


def _build(monkeypatch, background: bool, resort_between: bool = False) -> SpatialMemory:
    with monkeypatch.context() as m:
        if not background:
            m.setattr(memory_module, "GROW_AHEAD_AT", 10.0)  # never prepared: every growth on the spot
            m.setattr(SpatialMemory, "_prepare_reindex", lambda self: None)
        mem = SpatialMemory()
        c2w = look_at(np.zeros(3), np.array([0.0, 0.0, 5.0]))
        for i, (pts, cols) in enumerate(_batches()):
            mem.integrate_points(pts, cols, frame_index=i)
            if resort_between:
                mem.reindex()  # points move while a growth may be in preparation: it must be dropped
            mem.render(CAM, c2w)  # renders re-sort the tail when it is long (with a prepared order if any)
            if background and mem._growth is not None:
                mem._growth[0].result()  # let the prepared growth finish, so the next integrate adopts it
        return mem


@pytest.mark.parametrize("resort_between", [False, True])
def test_background_growth_and_resort_give_the_same_memory(monkeypatch, resort_between):
    adopted = []
    original = SpatialMemory._adopt_growth

    def counting(self, wait=False):
        took = original(self, wait)
        adopted.append(took)
        return took

    monkeypatch.setattr(SpatialMemory, "_adopt_growth", counting)
    fast = _build(monkeypatch, background=True, resort_between=resort_between)
    monkeypatch.setattr(SpatialMemory, "_adopt_growth", original)
    spot = _build(monkeypatch, background=False)
    assert (any(adopted) and not resort_between) or (resort_between and not any(adopted))
    got, want = _content(fast), _content(spot)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert fast.bytes_per_point <= 32.0
    # every point is still found through the hash table: integrating everything again adds nothing
    for i, (pts, cols) in enumerate(_batches()):
        assert fast.integrate_points(pts, cols, frame_index=20 + i).new_points == 0
    c2w = look_at(np.zeros(3), np.array([0.0, 0.0, 5.0]))
    np.testing.assert_array_equal(fast.render(CAM, c2w).valid, spot.render(CAM, c2w).valid)


def test_a_prepared_resort_covers_the_points_it_saw_and_later_ones_stay_in_the_tail(monkeypatch):
    monkeypatch.setattr(memory_module, "GROW_AHEAD_AT", 10.0)
    mem = SpatialMemory()
    batches = _batches(4, 90000)
    mem.integrate_points(*batches[0], frame_index=0)
    mem.reindex()
    mem.integrate_points(*batches[1], frame_index=1)  # a long tail: the re-sort order is prepared
    assert mem._ordering is not None
    n_prepared = mem._ordering[2] - len(mem._dead)  # the points it saw (the dead rows a re-sort left stay out)
    mem._ordering[0].result()
    mem.integrate_points(*batches[2], frame_index=2)  # more points before the prepared order is used
    n = mem.num_points
    mem.reindex()
    assert mem._n_sorted - len(mem._dead) == n_prepared < n  # the later points wait for the next re-sort
    keys = mem.voxel_keys
    mem.reindex()  # now everything
    assert mem._n_sorted - len(mem._dead) == n
    assert sorted(mem.voxel_keys.tolist()) == sorted(keys.tolist())
    for i, (pts, cols) in enumerate(batches[:3]):
        assert mem.integrate_points(pts, cols, frame_index=10 + i).new_points == 0


_RESORT_LOADS = """
import numba.core.dispatcher as D
import spatia.world.memory as memory_module
from spatia.world.memory import SpatialMemory
import tests.test_memory_maintenance as t

memory_module.GROW_AHEAD_AT = 10.0
mem = SpatialMemory()
mem.integrate_points(*t._batches(1, 90000)[0], frame_index=0)  # a long tail: the re-sort order is prepared
assert mem._ordering is not None
mem._ordering[0].result()
loaded = []
original = D.Dispatcher._compile_for_args
def recording(self, *args, **kws):
    loaded.append(self.py_func.__name__)
    return original(self, *args, **kws)
D.Dispatcher._compile_for_args = recording
mem.reindex()
assert mem._n_sorted - len(mem._dead) == mem.num_points
print(sorted(set(loaded)))
"""


def test_a_prepared_resort_loads_its_kernels_off_the_world_thread():
    """The maintenance job that prepares a re-sort's order also loads every kernel ``_reindex`` then calls, for the
    memory's own array types: the re-sort itself loads (or compiles) nothing. A fresh process, since a kernel
    stays loaded once any test here has re-sorted."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _RESORT_LOADS], cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_large_memory_prepares_room_for_its_next_integrate(monkeypatch):
    """From ``GROWTH_MARGIN_POINTS`` on, a growth is prepared while the next integrate (as large as the recent ones)
    would not fit: integrates of 4-7 % of the points each never grow the arrays on the spot (main before this grew
    them on the spot at ~64 k and ~80 k points here), and the memory is the same as one grown on the spot."""
    monkeypatch.setattr(memory_module, "GROWTH_MARGIN_POINTS", 40_000)
    batches = _batches(30, 4_000)
    spot_grows = []
    grow = SpatialMemory._grow

    def counting(self, capacity):
        spot_grows.append(self.num_points)
        grow(self, capacity)

    monkeypatch.setattr(SpatialMemory, "_grow", counting)
    mem = SpatialMemory()
    for i, (pts, cols) in enumerate(batches):
        mem.integrate_points(pts, cols, frame_index=i)
        if mem._growth is not None:
            mem._growth[0].result()  # the maintenance thread keeps up (the next integrate adopts it)
    assert mem.num_points > 110_000
    assert not [n for n in spot_grows if n >= 40_000], spot_grows
    monkeypatch.setattr(memory_module, "GROW_AHEAD_AT", 10.0)  # the reference: every growth on the spot
    spot = SpatialMemory()
    for i, (pts, cols) in enumerate(batches):
        spot.integrate_points(pts, cols, frame_index=i)
    got, want = _content(mem), _content(spot)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_prepared_resort_is_the_in_place_one_with_rows_written_meanwhile(monkeypatch):
    """The re-sort prepared on the maintenance thread (arrays, hash table and directory built there) gives the
    memory, in storage order, that the in-place re-sort with the same order gives, when rows it copied were
    written in the meantime (an integrate over seen voxels, a recolor) and points were added after it began."""
    from concurrent.futures import Future

    from spatia.world import _memory_kernels as K
    from spatia.world.memory import Sphere

    monkeypatch.setattr(memory_module, "GROW_AHEAD_AT", 10.0)  # no growth in between: this is about re-sorts
    batches = _batches(3, 90000)
    mem = SpatialMemory()
    mem.integrate_points(*batches[0], frame_index=0)
    mem.reindex()
    mem.integrate_points(*batches[1], frame_index=1)  # a long tail: the re-sort is prepared
    assert mem._ordering is not None
    job, ns0, n0, _, order = mem._ordering
    seen = n0 - len(mem._dead)  # the points it covers
    job.result()
    ref = mem.copy()  # the reference re-sorts in place with the same order (its copy not ready)
    ref._ordering = (Future(), ns0, n0, ref._structure, order)
    for m in (mem, ref):  # written meanwhile: seen voxels get new colours, a sphere is painted, new points come
        m.integrate_points(batches[0][0], np.full(batches[0][1].shape, 7, np.uint8), frame_index=2)
        m.recolor(Sphere(np.array([0.0, 0.0, 2.05]), 0.5), (1, 2, 3))
        m.integrate_points(batches[2][0][:5000], batches[2][1][:5000], frame_index=3)
    assert mem._resort_touched  # rows the prepared copy had read were written
    mem.reindex()
    ref.reindex()
    assert mem._keys is job.result().keys  # the prepared arrays were taken
    assert mem._n_sorted == ref._n_sorted and mem._n_sorted - len(mem._dead) == seen < mem.num_points
    got, want = mem.to_arrays(), ref.to_arrays()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(mem._block_starts, ref._block_starts)
    np.testing.assert_array_equal(mem._block_ids, ref._block_ids)
    n = mem.num_points  # every key finds its own point's row through the new table
    np.testing.assert_array_equal(K.hash_lookup_many(mem._table, mem._keys, mem.voxel_keys),
                                  mem._rows_of_points(np.arange(n)))
    c2w = look_at(np.zeros(3), np.array([0.0, 0.0, 5.0]))
    np.testing.assert_array_equal(mem.render(CAM, c2w).rgb, ref.render(CAM, c2w).rgb)



@pytest.mark.parametrize("identity", ["job", "spot"])
def test_a_prepared_growth_survives_drops_in_between(monkeypatch, identity):
    """Points dropped (and rows moved: the sorted prefix shifts, the tail's holes are refilled) while a growth is in
    preparation: the growth is still adopted, and the memory, in storage order, equals one grown on the spot; every
    key finds its point through the adopted table. The rows a growth follows start from the identity its job made
    ready (``identity="job"``) or one made at the first drop (``"spot"``)."""
    from spatia.world import _memory_kernels as K

    def build(background: bool):
        rng = np.random.default_rng(11)
        followed = []
        with monkeypatch.context() as m:
            if not background:
                m.setattr(memory_module, "GROW_AHEAD_AT", 10.0)  # every growth on the spot
            mem = SpatialMemory()
            for i, (pts, cols) in enumerate(_batches(24, 3000)):
                if mem._growth is not None:
                    followed.append(mem._growth_rows is not None)
                mem.integrate_points(pts, cols, frame_index=i)
                if i == 6:
                    mem.reindex()  # a sorted prefix, so drops shift it too
                if background and mem._growth_identity is not None:
                    if identity == "job":
                        mem._growth_identity.result()
                    else:
                        mem._growth_identity = None
                for _ in range(2):  # two drops, prefix and tail, while a growth may be in preparation
                    mem._drop(mem._rows_of_points(np.unique(rng.integers(0, mem.num_points, 40))))
                if mem._growth is not None:
                    mem._growth[0].result()  # ready for the next integrate
        return mem, followed

    fast, followed = build(True)
    spot, _ = build(False)
    assert sum(followed) >= 2  # growths were adopted across drops (not thrown away)
    got, want = fast.to_arrays(), spot.to_arrays()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    n = fast.num_points  # (rows: dead ones are skipped)
    np.testing.assert_array_equal(K.hash_lookup_many(fast._table, fast._keys, fast.voxel_keys),
                                  fast._rows_of_points(np.arange(n)))
