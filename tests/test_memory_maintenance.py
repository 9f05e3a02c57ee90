"""Background maintenance of the spatial memory: growths and re-sorts prepared on the maintenance thread give the
same memory as doing them on the spot, whatever the maintenance thread's timing, drops in between included (a drop
moves no row); a growth is dropped when the points moved in between (a re-sort)."""

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
    ref = mem.copy()  # the reference re-sorts in place with the same order (its copy unusable: one row too many)
    unusable = Future()
    unusable.set_result(memory_module._enlarged(job.result(), mem._capacity + 1))
    ref._ordering = (unusable, ns0, n0, ref._structure, order)
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



def test_a_prepared_growth_survives_drops_in_between(monkeypatch):
    """Points dropped (prefix and tail rows made dead where they are) while a growth is in preparation: the growth
    is still adopted (the dropped keys leave its table, the dead rows added since stay out of it), and the memory,
    in storage order, equals one grown on the spot; every key finds its point through the adopted table."""
    from spatia.world import _memory_kernels as K

    def build(background: bool):
        rng = np.random.default_rng(11)
        adopted_after_drops = []
        original = SpatialMemory._adopt_growth
        with monkeypatch.context() as m:
            if not background:
                m.setattr(memory_module, "GROW_AHEAD_AT", 10.0)  # every growth on the spot

            def counting(self, wait=False):
                dead_before = self._growth[3] if self._growth is not None else None
                took = original(self, wait)
                if took and len(self._dead) > len(dead_before):
                    adopted_after_drops.append(len(self._dead) - len(dead_before))
                return took

            m.setattr(SpatialMemory, "_adopt_growth", counting)
            mem = SpatialMemory()
            for i, (pts, cols) in enumerate(_batches(24, 3000)):
                mem.integrate_points(pts, cols, frame_index=i)
                if i == 6:
                    mem.reindex()  # a sorted prefix, so drops make dead rows in it too
                for _ in range(2):  # two drops anywhere while a growth may be in preparation
                    mem._drop(mem._rows_of_points(np.unique(rng.integers(0, mem.num_points, 40))))
                if mem._growth is not None:
                    mem._growth[0].result()  # ready for the next integrate
        return mem, adopted_after_drops

    fast, followed = build(True)
    spot, _ = build(False)
    assert len(followed) >= 2  # growths were adopted across drops (not thrown away)
    got, want = fast.to_arrays(), spot.to_arrays()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(fast._dead, spot._dead)
    n = fast.num_points  # (rows: dead ones are skipped)
    np.testing.assert_array_equal(K.hash_lookup_many(fast._table, fast._keys, fast.voxel_keys),
                                  fast._rows_of_points(np.arange(n)))
    assert (fast._table >= 0).sum() == n


class _Inline:
    """The maintenance thread, made deterministic: a job runs at once on submit. ``mode`` for a re-sort's job:
    ``"done"``; ``"pending"``: it reports not done until ``_reindex`` waits for it (as when the maintenance thread
    is behind; its merge order is ready); ``"in_place"``: its copy unusable (one row too many, as after a growth on
    the spot), so ``_reindex`` makes the re-sort in place with its order."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def submit(self, fn, *args):
        from concurrent.futures import Future

        class Pending(Future):
            def done(self):
                return False

        resort = fn in (memory_module._resorted_copy, memory_module._enlarged_job)  # (a re-sort's copy)
        f = Pending() if self.mode == "pending" and resort else Future()
        try:
            out = fn(*args)
            if resort and self.mode == "in_place":
                out = memory_module._enlarged(out, out.keys.shape[0] + 1)
            if fn is memory_module._grown_copy and self.mode == "in_place":  # (nor its copy at a growth's capacity)
                out = (*out[:2], None)
            f.set_result(out)
        except BaseException as exc:  # (as an executor: the job's error is the future's)
            f.set_exception(exc)
        return f


def _rows(mem: SpatialMemory) -> dict[str, np.ndarray]:
    n = mem._n
    return {"keys": mem._keys[:n].copy(), "offsets": mem._offsets[:n].copy(), "colors": mem._colors[:n].copy(),
            "counts": mem._counts[:n].copy(), "last": mem._last[:n].copy(), "prov": mem._prov[:n].copy(),
            "dead": mem._dead.copy(), "n_sorted": np.array([mem._n_sorted]), "block_ids": mem._block_ids.copy(),
            "block_starts": mem._block_starts.copy()}


def _play(monkeypatch, mode: str, steps: int = 60):
    """A seeded sequence of integrates (new and seen voxels, invented and observed), drops anywhere (directly and
    through the free-space removals), recolors, renders (which re-sort when due) and explicit re-sorts, on a small
    ``TAIL_MIN`` so that re-sorts are prepared often, with drops between a preparation and its re-sort. Returns
    the rows after each step, and what happened."""
    from spatia.world.memory import INVENTED_FINAL, Box, Sphere

    monkeypatch.setattr(memory_module, "TAIL_MIN", 1500)
    if mode != "thread":
        monkeypatch.setattr(memory_module, "background", lambda name: _Inline(mode))
    rng = np.random.default_rng(17)
    mem = SpatialMemory()
    c2w = look_at(np.zeros(3), np.array([0.0, 0.0, 5.0]))
    states, drops_while_prepared = [], 0
    for step in range(steps):
        op = step % 6
        if op in (0, 3):
            b = 2 + 0.05 * step
            pts = rng.uniform([-2, -1, b], [2, 1, b + 0.3], size=(int(rng.integers(1500, 4000)), 3))
            if mem.num_points:
                pts = np.concatenate([pts, mem.positions[rng.integers(0, mem.num_points, 300)]])
            cols = rng.integers(0, 256, (len(pts), 3), dtype=np.uint8)
            mem.integrate_points(pts, cols, step, provenance=INVENTED_FINAL if rng.random() < 0.6 else 0)
        elif op in (1, 4) and mem.num_points:
            drops_while_prepared += mem._ordering is not None
            ids = np.unique(rng.integers(0, mem.num_points, int(rng.integers(1, mem.num_points // 30 + 2))))
            mem._drop(mem._rows_of_points(ids))
            mem.remove_invented_in([Box(rng.uniform([-2, -1, 2], [2, 1, 5]), np.array([0.3, 0.3, 0.3]))])
            mem.remove_invented_near(rng.uniform([-2, -1, 2], [2, 1, 5], (2, 3)), 0.2)
        elif op == 2:
            mem.recolor(Sphere(rng.uniform([-2, -1, 2], [2, 1, 5]), 0.4), (9, 8, 7))
            mem.render(CAM, c2w)
        elif op == 5:
            mem.render(CAM, c2w)
            if step % 12 == 11:
                mem.reindex()
        states.append(_rows(mem))
    return states, drops_while_prepared, mem


def test_the_rows_do_not_depend_on_the_maintenance_threads_timing(monkeypatch):
    """Determinism whatever the timing: the same integrates, drops (between a re-sort's preparation and its use
    too), edits and renders give byte-identical rows (every point array, the dead rows, the prefix, the block
    directory) after every step, whether each prepared re-sort's copy was ready (adopted), not ready (made in
    place with its order) or left to the real maintenance thread."""
    from spatia.world import _memory_kernels as K

    runs = {}
    for mode in ("done", "pending", "in_place", "thread"):
        with monkeypatch.context() as m:
            adopted = []
            original = SpatialMemory._adopt_resort
            m.setattr(SpatialMemory, "_adopt_resort", lambda self, *a: (adopted.append(1), original(self, *a))[1])
            reasons = []
            m.setattr(memory_module.log, "debug", lambda event, **kw: reasons.append(kw.get("reason")))
            states, drops_while_prepared, mem = _play(m, mode)
        runs[mode] = states
        assert drops_while_prepared >= 4, mode
        if mode in ("done", "pending"):  # every prepared re-sort taken, drops and growths in between or not
            # (in place: only re-sorts with none prepared, which log no reason)
            assert len(adopted) >= 4 and set(reasons) <= {None}, (len(adopted), reasons)
            assert (mem.resorts_waited > 0) == (mode == "pending")
        if mode == "in_place":
            assert not adopted and mem.resorts_in_place >= 4
        n = mem.num_points  # its table answers for every live point, once
        np.testing.assert_array_equal(K.hash_lookup_many(mem._table, mem._keys, mem.voxel_keys),
                                      mem._rows_of_points(np.arange(n)))
        assert (mem._table >= 0).sum() == n
    for step, want in enumerate(runs["done"]):
        for mode in ("pending", "in_place", "thread"):
            got = runs[mode][step]
            for name in want:
                assert got[name].dtype == want[name].dtype
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{mode} step {step} {name}")


@pytest.mark.parametrize("ready", [True, False])  # (False: its copy unusable, in place with its order)
def test_a_prepared_resort_after_drops_lays_the_rows_out_as_the_reference(monkeypatch, ready):
    """A re-sort prepared, then rows dropped (prefix and tail, before and after its ``n0``) and points added: the
    rows come out as ``reference_resort_rows`` lays them out (the points live when it was prepared by sort key, the
    later rows in their order, every row dropped meanwhile dead at its new place), from its copy or in place."""
    from spatia.world import _memory_kernels as K
    from spatia.world._reference import reference_resort_rows

    monkeypatch.setattr(memory_module, "GROW_AHEAD_AT", 10.0)
    monkeypatch.setattr(memory_module, "background", lambda name: _Inline("done" if ready else "in_place"))
    rng = np.random.default_rng(23)
    batches = _batches(3, 90000)
    mem = SpatialMemory()
    mem.integrate_points(*batches[0], frame_index=0)
    mem._grow(1 << 19)  # room for all: no growth in between (its own test)
    mem.reindex()
    mem._drop(np.sort(rng.choice(mem._n, 500, replace=False)))  # dead when it is prepared: left out
    mem.integrate_points(*batches[1], frame_index=1)  # a long tail: the re-sort is prepared
    assert mem._ordering is not None
    n0, dead0 = mem._ordering[2], mem._dead.copy()
    mem.integrate_points(*batches[2], frame_index=2)
    live = np.setdiff1d(np.arange(mem._n), mem._dead)
    mem._drop(np.sort(rng.choice(live, 3000, replace=False)))  # below n0 and above, prefix and tail
    n, dead = mem._n, mem._dead.copy()
    assert (dead > n0).any() and (np.setdiff1d(dead, dead0) < mem._n_sorted).any()
    before = _rows(mem)
    in_place = mem.resorts_in_place
    mem.reindex()
    assert mem.resorts_in_place == in_place + (not ready)
    order, want_ns, want_dead = reference_resort_rows(K.sort_keys(before["keys"], 0, n), n0, dead0, n, dead)
    after = _rows(mem)
    assert mem._n == len(order) == n - len(dead0) and mem._n_sorted == want_ns
    np.testing.assert_array_equal(mem._dead, want_dead)
    for name in ("keys", "offsets", "colors", "counts", "last", "prov"):
        np.testing.assert_array_equal(after[name], before[name][order], err_msg=name)
    ids, starts = K.block_directory(mem._keys, want_ns)
    np.testing.assert_array_equal(mem._block_ids, ids)
    np.testing.assert_array_equal(mem._block_starts, starts)
    live = np.setdiff1d(np.arange(mem._n), mem._dead)
    np.testing.assert_array_equal(K.hash_lookup_many(mem._table, mem._keys, mem._keys[live]), live)
    assert (mem._table >= 0).sum() == len(live)


def test_a_prepared_resort_gets_a_lead_of_integrates_before_it_is_due(monkeypatch):
    """``_reindex_due`` counts integrates, not time: a re-sort prepared by an integrate is due only
    ``RESORT_LEAD_INTEGRATES`` integrates later (its copy has the time to be made), at once when the tail passes
    twice the limit; none is prepared past twice the limit (the render re-sorts at once, in place)."""
    monkeypatch.setattr(memory_module, "TAIL_MIN", 1000)
    monkeypatch.setattr(memory_module, "background", lambda name: _Inline("done"))
    rng = np.random.default_rng(29)

    def add(mem: SpatialMemory, k: int, frame: int) -> None:
        mem.integrate_points(rng.uniform(-3, 3, (k, 3)), np.zeros((k, 3), np.uint8), frame)

    mem = SpatialMemory(memory_module.MemoryConfig(voxel_size_m=0.02))
    add(mem, 3000, 0)  # past twice the limit at once: nothing prepared, due now
    assert mem._ordering is None and mem._reindex_due()
    mem.reindex()
    add(mem, 800, 1)  # 800 of a 1000 limit: prepared, not due
    assert mem._ordering is not None and not mem._reindex_due()
    add(mem, 400, 2)  # past the limit, one integrate after: not due yet
    assert mem._n - mem._n_sorted > 1000 and not mem._reindex_due()
    add(mem, 10, 3)
    assert mem._reindex_due()  # RESORT_LEAD_INTEGRATES = 2
    mem.reindex()
    assert mem.resorts_in_place == 1  # (the first one)
    add(mem, 800, 4)
    add(mem, 6000, 5)  # past twice the limit (n / 4 by now): due at once
    assert mem._ordering is not None and mem._reindex_due()
