"""Drops (``SpatialMemory._drop``): a dropped row, in the block-sorted prefix or the unsorted tail, becomes dead in
place (``drop_points``); no row moves. The rows must come out as ``world._reference.reference_drop_rows`` lays them
out, the points as read as ``reference_drop_order`` filters them (the live rows in row order), and the hash table
must answer exactly as one rebuilt from scratch (the live rows once each, nothing stale)."""

import numpy as np
import pytest

import spatia.world.memory as memory_module
from spatia.world import _memory_kernels as K
from spatia.world._reference import (reference_drop_order, reference_drop_rows, reference_keys_in,
                                     reference_keys_of_points, reference_live_arrays, reference_merge_order)
from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError
from spatia.world.memory import INVENTED_FINAL, Box, MemoryConfig, SpatialMemory, Sphere

CFG = MemoryConfig(voxel_size_m=0.05)
CAM = Intrinsics.from_fov(75.0, 96, 64)
C2W = np.eye(4)
C2W[2, 3] = -4.0


def _memory(n: int, seed: int) -> SpatialMemory:
    rng = np.random.default_rng(seed)
    mem = SpatialMemory(CFG)
    pts = rng.uniform(-3, 3, (n, 3))
    mem.integrate_points(pts, rng.integers(0, 256, (n, 3), dtype=np.uint8), frame_index=0)
    mem.reindex()
    # a second batch after the first is sorted: an unsorted tail, as after a clip
    pts2 = rng.uniform(-3, 3, (n // 4, 3))
    mem.integrate_points(pts2, rng.integers(0, 256, (n // 4, 3), dtype=np.uint8), frame_index=1)
    return mem


def _rows(mem: SpatialMemory) -> dict[str, np.ndarray]:
    """Every row, live or dead, in row order."""
    n = mem._n
    return {"voxel_keys": mem._keys[:n].copy(), "voxel_offsets": mem._offsets[:n].copy(),
            "colors": mem._colors[:n].copy(), "observation_count": mem._counts[:n].copy(),
            "last_seen_frame": mem._last[:n].copy(), "provenance": mem._prov[:n].copy()}


def _check_table(mem: SpatialMemory, dropped_keys: np.ndarray) -> None:
    n, dead = mem._n, mem._dead
    assert np.all(np.diff(dead) > 0) and (len(dead) == 0 or dead[-1] < n)
    assert (mem._prov[dead] == K.DEAD).all() and (mem._prov[np.setdiff1d(np.arange(n), dead)] != K.DEAD).all()
    live = np.setdiff1d(np.arange(n), dead)
    assert np.array_equal(K.hash_lookup_many(mem._table, mem._keys, mem._keys[live]), live)
    gone = np.setdiff1d(dropped_keys, mem._keys[live])  # (a dropped voxel may hold a point again)
    if len(gone):
        assert (K.hash_lookup_many(mem._table, mem._keys, gone) == -1).all()
    occupied = np.sort(mem._table[mem._table >= 0])
    assert np.array_equal(occupied, live)  # every live row once, nothing stale
    # the block directory covers the prefix, dead rows included (a dead row keeps its key: it stays in its block)
    ids, starts = K.block_directory(mem._keys, mem._n_sorted)
    assert np.array_equal(ids, mem._block_ids) and np.array_equal(starts, mem._block_starts)


def _drop_and_check(mem: SpatialMemory, drops: np.ndarray, label) -> None:
    """``mem._drop(drops)`` (rows) against both references."""
    n, ns, dead = mem._n, mem._n_sorted, mem._dead
    rows_before, read_before = _rows(mem), mem.to_arrays()
    live_drops = drops - np.searchsorted(dead, drops)  # the same points as indices among the live rows
    live_sorted = ns - int(np.searchsorted(dead, ns))
    read_order, want_live_sorted = reference_drop_order(live_sorted, n - len(dead), live_drops)
    mem._drop(drops)
    rows_after, read_after = _rows(mem), mem.to_arrays()
    order, want_ns, want_dead = reference_drop_rows(ns, n, dead, drops)
    assert mem._n == len(order) and mem._n_sorted == want_ns and np.array_equal(mem._dead, want_dead), label
    for name in rows_before:
        moved = rows_after[name] == rows_before[name][order]
        if name == "provenance":  # (a dead row's provenance is DEAD)
            moved[mem._dead] = True
        assert moved.all(), (label, name)
    assert mem._n_sorted - int(np.searchsorted(mem._dead, mem._n_sorted)) == want_live_sorted
    for name in rows_before:
        assert np.array_equal(read_after[name], read_before[name][read_order]), (label, name)
    for name, arr in reference_live_arrays(rows_after, mem._dead).items():
        if name != "provenance":
            assert np.array_equal(read_after[name], arr), (label, name)
    assert mem.num_points == len(read_order)
    _check_table(mem, rows_before["voxel_keys"][drops])


@pytest.mark.parametrize("where", ["tail", "suffix", "scattered", "prefix"])
def test_drops_match_the_references_and_render_as_a_rebuild(where):
    mem = _memory(20_000, seed=hash(where) % 1000)
    rng = np.random.default_rng(1)
    for step in range(2):  # the second drop meets the first one's dead rows
        n = mem._n
        lo = {"tail": n - 300, "suffix": n * 2 // 3, "scattered": n // 2 + 1, "prefix": 10}[where]
        pool = np.setdiff1d(np.arange(lo, n), mem._dead)
        _drop_and_check(mem, np.sort(rng.choice(pool, size=min(250, len(pool)), replace=False)), (where, step))
    assert 0 < mem._n_sorted < mem._n
    # the memory renders exactly as one rebuilt from its points (same point indices too)
    ref = SpatialMemory.from_arrays(CFG, mem.to_arrays())
    a, b = mem.render(CAM, C2W, return_point_ids=True), ref.render(CAM, C2W, return_point_ids=True)
    assert a.valid.sum() > 1000
    for name in ("rgb", "depth_m", "valid", "point_ids"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(mem.rendered_voxel_keys(a.point_ids), ref.rendered_voxel_keys(b.point_ids))
    assert np.array_equal(mem.visible_voxel_keys(CAM, C2W), ref.visible_voxel_keys(CAM, C2W))
    assert np.array_equal(mem.positions, ref.positions) and mem.num_points == ref.num_points
    # whatever the tail's order and the dead rows, a re-sort gives the memory a sorted one minus the points gives
    kept = mem.to_arrays()["voxel_keys"]
    mem.reindex()
    assert mem._n == mem._n_sorted and not len(mem._dead)  # (no re-sort was prepared: every row merged)
    full = _memory(20_000, seed=hash(where) % 1000)
    full.reindex()
    full._compact(np.isin(full.voxel_keys, kept))
    full.reindex()
    for name, arr in full.to_arrays().items():
        assert np.array_equal(mem.to_arrays()[name], arr), name
    _check_table(mem, np.zeros(0, np.int64))


def test_many_small_drops_stay_consistent():
    mem = _memory(8_000, seed=3)
    rng = np.random.default_rng(2)
    dropped = []
    for _ in range(40):
        n = mem._n
        k = int(rng.integers(1, 40))
        lo = int(rng.integers(0, n - 2 * k))
        pool = np.setdiff1d(np.arange(lo, n), mem._dead)
        sel = np.sort(rng.choice(pool, size=k, replace=False))
        dropped.append(mem._keys[sel].copy())
        mem._drop(sel)
    _check_table(mem, np.concatenate(dropped))


@pytest.mark.parametrize("since", [None, 1])
def test_box_candidates_match_a_plain_box_test(since):
    """``box_candidates`` reads only the culling blocks that meet the box (or only points seen since a frame):
    it must list exactly the invented live rows a plain test of every row's voxel finds."""
    from spatia.world.memory import OBSERVED

    rng = np.random.default_rng(5)
    mem = SpatialMemory(CFG)
    mem.integrate_points(rng.uniform(-3, 3, (6000, 3)), np.zeros((6000, 3), np.uint8), 0, provenance=INVENTED_FINAL)
    mem.integrate_points(rng.uniform(-3, 3, (2000, 3)), np.zeros((2000, 3), np.uint8), 0)  # observed
    mem.reindex()  # a sorted prefix with its block directory, then an unsorted tail seen at frame 1
    mem.integrate_points(rng.uniform(-3, 3, (1500, 3)), np.zeros((1500, 3), np.uint8), 1, provenance=INVENTED_FINAL)
    live_prefix = np.setdiff1d(np.arange(mem._n_sorted), mem._dead)
    mem._drop(np.sort(rng.choice(live_prefix, 500, replace=False)))  # dead rows: never candidates
    mem._drop(np.sort(rng.choice(np.arange(mem._n_sorted, mem._n), 300, replace=False)))  # (in the tail too)
    assert 0 < mem._n_sorted < mem._n and len(mem._dead) >= 800
    lo, hi = np.array([-12, -20, -5]), np.array([15, 9, 30])
    floor = np.iinfo(np.int32).min if since is None else since
    ijk = np.floor(mem._positions64() / 0.05).astype(np.int64)
    prov, last = mem._prov[: mem._n], mem._last[: mem._n]
    want = np.flatnonzero(np.all((ijk >= lo) & (ijk <= hi), axis=1) & (prov != OBSERVED) & (prov != K.DEAD)
                          & (last >= floor))
    assert len(want) > 10 and len(np.intersect1d(want, mem._dead)) == 0
    # the tail read in the chunks whose box meets the query's (the memory's kept chunk boxes), or whole
    no_boxes = np.zeros((0, 3), np.int64)
    for tail in (mem._tail_boxes(), (no_boxes, no_boxes)):
        got = K.box_candidates(mem._keys, mem._prov, mem._last, mem._n, mem._n_sorted, mem._block_ids,
                               mem._block_starts, *tail, *lo.tolist(), *hi.tolist(), OBSERVED, floor)
        assert np.array_equal(got, want)


def test_drops_anywhere_match_the_reference_order():
    """Random drop sets on small memories, including the edges: no sorted prefix, all sorted, drops only in the
    prefix or only in the tail, the last rows, every row; with and without dead rows before."""
    rng = np.random.default_rng(6)
    for trial in range(40):
        mem = SpatialMemory(CFG)
        n0 = int(rng.integers(1, 400))
        mem.integrate_points(rng.uniform(-3, 3, (n0, 3)), rng.integers(0, 256, (n0, 3), dtype=np.uint8), 0)
        if trial % 4:
            mem.reindex()
        extra = int(rng.integers(0, 300)) if trial % 5 else 0
        if extra:
            mem.integrate_points(rng.uniform(-3, 3, (extra, 3)), np.zeros((extra, 3), np.uint8), 1)
        live_prefix = np.setdiff1d(np.arange(mem._n_sorted), mem._dead)
        if trial % 3 == 1 and len(live_prefix) > 1:  # dead rows already
            mem._drop(np.sort(rng.choice(live_prefix, int(rng.integers(1, len(live_prefix))), replace=False)))
        n, ns = mem._n, mem._n_sorted
        kind = trial % 4
        pool = {0: np.arange(n), 1: np.arange(ns), 2: np.arange(ns, n), 3: np.arange(max(0, n - 5), n)}[kind]
        if trial == 7:
            pool = np.arange(n)
        pool = np.setdiff1d(pool, mem._dead)
        if not len(pool):
            continue
        k = len(pool) if trial == 7 else int(rng.integers(1, len(pool) + 1))
        _drop_and_check(mem, np.sort(rng.choice(pool, k, replace=False)), trial)


def test_a_drop_changes_no_row_but_the_dropped_ones():
    """A drop costs O(dropped points), in the prefix or the tail: the dropped rows become dead where they are (their
    provenance ``DEAD``, their keys out of the table); no other row changes (a compaction shifted every row behind
    the first dropped one; the drops before these moved the tail's last rows into the holes, which voided a re-sort
    in preparation)."""
    mem = _memory(100_000, seed=4)  # ~125 k points, a ~25 k tail
    rows, n = _rows(mem), mem._n
    drops = np.array([5, 6, 70_000, n - 20_000, n - 3, n - 1])
    assert drops[2] < mem._n_sorted <= drops[3]
    read_order, _ = reference_drop_order(mem._n_sorted, n, drops)
    read = mem.to_arrays()
    mem._drop(drops)
    after = _rows(mem)
    assert mem._n == n and np.array_equal(mem._dead, drops)
    changed = np.zeros(n, bool)
    for name in rows:
        diff = after[name] != rows[name]
        changed |= diff.reshape(n, -1).any(axis=1)
    assert np.array_equal(np.flatnonzero(changed), drops)  # (provenance DEAD)
    for name, arr in mem.to_arrays().items():
        assert np.array_equal(arr, read[name][read_order]), name
    _check_table(mem, rows["voxel_keys"][drops])


def test_tombstones_match_a_compacting_twin_through_every_operation():
    """A random sequence of integrates (new and seen voxels, growth), drops in the prefix and the tail (directly and
    through ``remove_invented_near`` / ``remove_invented_in`` / ``remove_invented_seen_through``), edits, re-sorts
    (prepared and in place), copies and snapshots: the memory reads (arrays, positions, counts, renders with point
    ids, box queries) exactly as a twin whose every drop compacts its points plainly (``reference_drop_order``,
    the rows rebuilt), and its table and dead rows stay consistent."""
    rng = np.random.default_rng(21)
    mem = SpatialMemory(CFG)
    twin = SpatialMemory(CFG)

    def rebuild(order: np.ndarray | None, ns: int) -> None:  # the twin's points in this order, no dead row
        arrays = twin.to_arrays()
        rebuilt = SpatialMemory.from_arrays(CFG, {k: a[order] for k, a in arrays.items()} if order is not None
                                            else arrays)
        rebuilt._n_sorted = ns
        rebuilt._block_ids, rebuilt._block_starts = K.block_directory(rebuilt._keys, ns)
        twin.__dict__.update(rebuilt.__dict__)

    def normalize() -> None:  # (the twin's drops compact: it never keeps a dead row)
        assert not len(twin._dead)

    def compacting_drop(drops: np.ndarray) -> None:  # the reference: no dead rows, every row shifts
        normalize()
        order, ns = reference_drop_order(twin._n_sorted, twin._n, drops)
        rebuild(order, ns)

    twin._drop = compacting_drop
    frame = seen_through = 0
    for step in range(36):
        op = step % 9
        frame += 1
        both = (mem, twin)
        if op in (0, 4):  # new points and seen ones, invented or observed
            pts = np.concatenate([rng.uniform(-3, 3, (int(rng.integers(500, 4000)), 3)),
                                  mem.positions[rng.integers(0, max(mem.num_points, 1), 200)] if mem.num_points
                                  else np.zeros((0, 3))])
            cols = rng.integers(0, 256, (len(pts), 3), dtype=np.uint8)
            prov = INVENTED_FINAL if rng.random() < 0.7 else 0
            for m in both:
                m.integrate_points(pts, cols, frame, provenance=prov)
        elif op in (1, 5, 7):  # drops of live points anywhere (indices as read)
            k = int(rng.integers(1, max(2, mem.num_points // 20)))
            ids = np.sort(rng.choice(mem.num_points, k, replace=False))
            prefix_only = op == 5
            if prefix_only:
                ids = ids[mem._rows_of_points(ids) < mem._n_sorted]
            mem._drop(mem._rows_of_points(ids))
            twin._drop(ids)
        elif op == 2:
            c = rng.uniform(-2, 2, (2, 3))
            assert mem.remove_invented_near(c, 0.8) == twin.remove_invented_near(c, 0.8)
            box = Box(rng.uniform(-2, 2, 3), np.array([0.5, 0.7, 0.4]))
            assert mem.remove_invented_in([box]) == twin.remove_invented_in([box])
        elif op == 3:
            c2w = C2W.copy()
            c2w[:3, 3] += rng.uniform(-1, 1, 3)
            r = mem.render(CAM, c2w, return_point_ids=True)
            depth = np.where(r.valid, r.depth_m * 2 + 0.5, 0).astype(np.float32)  # saw beyond them
            got = mem.remove_invented_seen_through(r.point_ids[r.valid], CAM, c2w, depth, 0.1)
            want = twin.remove_invented_seen_through(r.point_ids[r.valid], CAM, c2w, depth, 0.1)
            assert np.array_equal(got, want)
            seen_through += len(got)
        elif op == 6:
            centre = rng.uniform(-2, 2, 3)
            for m in both:
                m.recolor(Sphere(centre, 0.6), (1, 2, 3))
                m.remove(Sphere(centre + 0.5, 0.4))
                m.move(Sphere(centre - 0.5, 0.3), np.array([0.05, 0.0, 0.1]))
        elif op == 8:
            for m in both:
                m.reindex()
            assert mem._n == mem._n_sorted and not len(mem._dead)  # (no re-sort prepared here: all merged)
        normalize()
        if step % 4 == 3:  # a copy and a snapshot carry on as the original
            mem = mem.copy() if step % 8 == 3 else mem
        got, want = mem.to_arrays(), twin.to_arrays()
        for name in want:
            assert np.array_equal(got[name], want[name]), (step, name)
        assert mem.num_points == twin.num_points and np.array_equal(mem.positions, twin.positions), step
        for name in ("colors", "observation_count", "last_seen_frame", "voxel_keys", "provenance"):
            assert np.array_equal(getattr(mem, name), getattr(twin, name)), (step, name)
        a, b = mem.render(CAM, C2W, return_point_ids=True), twin.render(CAM, C2W, return_point_ids=True)
        for name in ("rgb", "depth_m", "point_ids"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (step, name)
        lo, hi = np.array([-1.0, -2.0, -1.5]), np.array([2.0, 1.0, 2.5])
        for x, y in zip(mem.points_in_box(lo, hi), twin.points_in_box(lo, hi)):
            assert np.array_equal(x, y), step
        snap = SpatialMemory.from_arrays(CFG, mem.to_arrays())
        assert np.array_equal(snap.render(CAM, C2W).rgb, a.rgb)
        _check_table(mem, np.zeros(0, np.int64))
        assert mem._n_sorted - int(np.searchsorted(mem._dead, mem._n_sorted)) == twin._n_sorted, step
    assert seen_through > 0 and mem._structure >= 4


@pytest.mark.parametrize("n_keys", [0, 1, 7, 300, 5000])
def test_keys_in_matches_the_reference(n_keys):
    """The hashed membership the memory update takes removed keys out with, against ``np.isin``: voxel keys,
    repeats on both sides, negative values, absent values whose hash collides."""
    rng = np.random.default_rng(n_keys)
    pool = np.concatenate([rng.integers(0, 1 << 62, 4000), rng.integers(-50, 50, 100)])
    keys = rng.choice(pool, size=n_keys) if n_keys else np.zeros(0, np.int64)
    values = np.concatenate([rng.choice(pool, size=20_000), keys, rng.integers(0, 1 << 62, 500)])
    got = K.keys_in(values, keys)
    assert got.dtype == np.bool_ and np.array_equal(got, reference_keys_in(values, keys))
    assert np.array_equal(K.keys_in(values[:0], keys), np.zeros(0, bool))


def test_keys_of_points_match_the_keys_as_read_with_dead_rows():
    mem = _memory(6_000, seed=5)
    live_prefix = np.setdiff1d(np.arange(mem._n_sorted), mem._dead)
    mem._drop(np.sort(np.random.default_rng(0).choice(live_prefix, 300, replace=False)))  # prefix: dead rows
    mem._drop(np.sort(np.random.default_rng(2).choice(np.arange(mem._n_sorted, mem._n), 100, replace=False)))
    assert len(mem._dead) == 400
    ids = np.random.default_rng(1).integers(0, mem.num_points, 2_000)
    want = reference_keys_of_points(mem.to_arrays()["voxel_keys"], ids)
    assert np.array_equal(mem.keys_of_points(ids), want)
    assert np.array_equal(mem.keys_of_points(ids.astype(np.int32)), want)
    assert np.array_equal(mem.keys_of_points(np.arange(mem.num_points)), mem.voxel_keys)
    with pytest.raises(InvalidInputError):
        mem.keys_of_points(np.array([mem.num_points]))


def test_table_builds_match_one_insert_at_a_time():
    """``hash_build_range`` / ``hash_build_live`` read each chunk's home slots ahead, then insert: the table must be
    the one ``hash_insert`` makes row by row (same slots: later probes and deletions see the same chains)."""
    mem = _memory(20_000, seed=7)
    n, cap = mem._n, mem._table.shape[0]
    dead = np.sort(np.random.default_rng(3).choice(n, 700, replace=False))
    for start in (0, 5, 133):
        want = np.full(cap, -1, np.int32)
        K.hash_insert_rows(want, mem._keys, np.arange(start, n, dtype=np.int64))
        got = np.full(cap, -1, np.int32)
        K.hash_build_range(got, mem._keys, start, n)
        assert np.array_equal(got, want)
        want = np.full(cap, -1, np.int32)
        K.hash_insert_rows(want, mem._keys, np.setdiff1d(np.arange(start, n), dead))
        got = np.full(cap, -1, np.int32)
        K.hash_build_live(got, mem._keys, start, n, dead)
        assert np.array_equal(got, want)


def test_merge_order_matches_the_reference_with_dead_rows():
    """A re-sort's order (``_merge_order``): the live rows by sort key, dead rows left out (in the prefix and in the
    tail), even where a dead row's key is back in a later row."""
    mem = _memory(8_000, seed=13)
    rng = np.random.default_rng(5)
    live_prefix = np.setdiff1d(np.arange(mem._n_sorted), mem._dead)
    gone = np.sort(rng.choice(live_prefix, 400, replace=False))
    back = mem._keys[gone[:50]].copy()
    mem._drop(gone)
    tail_gone = np.sort(rng.choice(np.arange(mem._n_sorted, mem._n), 200, replace=False))
    back = np.concatenate([back, mem._keys[tail_gone[:30]]])
    mem._drop(tail_gone)
    mem.integrate_points((K.decode_positions(back, np.full((80, 3), 128, np.uint8), 80, CFG.voxel_size_m)),
                         rng.integers(0, 256, (80, 3), dtype=np.uint8), frame_index=2)  # dead keys back in the tail
    n, ns, dead = mem._n, mem._n_sorted, mem._dead
    want = reference_merge_order(K.sort_keys(mem._keys, 0, n), n, dead)
    assert np.array_equal(memory_module._merge_order(mem._keys, ns, n, dead), want)
    assert len(want) == mem.num_points and set(mem._keys[want].tolist()) == set(mem.voxel_keys.tolist())
