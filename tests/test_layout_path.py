"""The camera path kept per world (``model.fill.geometry.layout.PathSummary`` and its ``LayoutPath`` handles) against the
whole-path arithmetic it replaces: the path's crossings of a wall (``_crossing_parts`` of the heading path), its
extremes along the layout's axes (``reach @ axis``) and the poses near a plane, byte for byte, however the path
came (a pose at a time, clips of several, a path that changes its past, tails of guessed poses), and
``view_bounds`` through a handle against ``view_bounds`` of the poses' array."""

from __future__ import annotations

import numpy as np

from spatia.model.fill.geometry import layout as L


def _layout(rng) -> L.Layout:
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    return L.Layout(axes=R, planes=[], indoor=True)


def _walk(rng, n: int) -> np.ndarray:
    """``[n, 3]`` a wandering walk of short steps, some of them standing still (a camera turning in place)."""
    steps = rng.normal(size=(n, 3)) * rng.uniform(0.01, 0.2)
    steps[rng.random(n) < 0.1] = 0.0
    return np.cumsum(steps, axis=0) + rng.normal(size=3)


def _bytes(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _same_parts(got, want) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return all(_bytes(g) == _bytes(w) for g, w in zip(got, want))


def _check(layout: L.Layout, path: L.LayoutPath, reach: np.ndarray, rng) -> None:
    """Everything ``path`` answers equals the arithmetic over ``reach`` [P, 3], the whole path."""
    assert len(path) == len(reach)
    assert _bytes(path.positions()) == _bytes(reach)
    heading = L._heading_path(reach.copy(), layout.config.door_lookahead_m)
    for k in range(3):
        t = reach @ layout.axes[k]
        assert path.extent(k) == (float(np.min(t)), float(np.max(t)))
    for axis in (1, 2):
        t = reach @ layout.axes[axis]
        offsets = [float(o) + 1e-3 for o in rng.choice(t, 3)] + [float(np.max(t)) + 1.0, float(rng.normal())]
        for off in offsets:
            for derived in (False, True):
                plane = L.Plane(axis, off, 1, 0, L.WALL, span_m=(-0.5, 0.5), derived=derived)
                want = L._crossing_parts(layout, plane, heading, len(reach))
                assert _same_parts(path.parts(plane), want)
                cam = reach[-1] + rng.normal(size=3)
                for half in (False, True):
                    got, exp = path.crossings(plane, cam, half), L._select_crossings(layout, want, cam, half)
                    assert _same_parts(got if half else (got,), exp if half else (exp,))
            for width in (layout.config.min_camera_distance_m, 0.3, 0.7, 2.0):
                assert _bytes(path.near(axis, off, width)) == _bytes(reach[np.abs(t - off) < width])


def test_the_summary_answers_as_the_whole_path_however_the_path_came():
    rng = np.random.default_rng(0)
    for trial in range(12):
        layout = _layout(rng)
        reach = _walk(rng, int(rng.integers(2, 400)))
        summary = L.PathSummary(layout)
        n = 0
        while n < len(reach):
            n = min(len(reach), n + int(rng.choice([1, 1, 1, 2, 6, 41])))
            path = summary.sync(reach[:n])
            assert path.summary is summary  # the path went on from the poses held: the same summary
            _check(layout, path, reach[:n], rng)
            guess = reach[n - 1] + np.cumsum(rng.normal(size=(int(rng.integers(1, 31)), 3)) * 0.05, axis=0)
            _check(layout, path.extended(guess), np.concatenate([reach[:n], guess]), rng)
        # a path that changes its past (a clip given up): a new summary, the old one and its handles unchanged
        cut = int(rng.integers(1, len(reach)))
        other = np.concatenate([reach[:cut], _walk(rng, 30)])
        old = summary.sync(reach)
        new = summary.sync(other)
        assert new.summary is not summary
        _check(layout, new, other, rng)
        _check(layout, old, reach, rng)
        _check(layout, new.summary.sync(other[:cut]), other[:cut], rng)  # a shorter path: a prefix


def test_a_single_pose_and_a_lone_new_row_keep_numpys_products():
    """numpy's product of a single row rounds differently from BLAS's matrix-vector one: a path of one pose
    answers with the former (as ``reach @ axis`` is then), a pose added alone to a longer path with the latter."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        layout = _layout(rng)
        reach = rng.normal(size=(3, 3)) * 7.3
        summary = L.PathSummary(layout)
        for n in (1, 2, 3):
            path = summary.sync(reach[:n])
            for k in range(3):
                t = reach[:n] @ layout.axes[k]
                assert path.extent(k) == (float(np.min(t)), float(np.max(t)))
        one = L.LayoutPath(L.PathSummary(layout), 0, reach[:1])
        assert one.extent(0) == (float((reach[:1] @ layout.axes[0])[0]),) * 2


def test_a_clip_reads_only_the_history_rows_added_since_the_last_one():
    """Visited poses given as read-only views of one growing buffer (the history's ``poses()``) are read from
    where the last clip stopped; a writable array is compared whole, so a changed row is seen."""
    rng = np.random.default_rng(2)
    layout = _layout(rng)
    walk = _walk(rng, 300)
    buf = np.tile(np.eye(4), (400, 1, 1))
    buf[:300, :3, 3] = walk
    summary = L.PathSummary(layout)
    for i in range(1, 120):
        visited = buf[:i]
        visited.flags.writeable = False
        path = summary.sync(walk[i : i + 1], visited)
        assert path.summary is summary
        if i % 17 == 0:
            _check(layout, path, walk[: i + 1], rng)
    # the trusted rows are not read again: a row changed behind the read-only view is not seen ...
    buf[5, :3, 3] += 1.0
    visited = buf[:120]
    visited.flags.writeable = False
    assert summary.sync(walk[120:121], visited).summary is summary
    # ... while a writable array is compared whole: its changed row starts a new summary
    mine = buf[:121].copy()
    path = summary.sync(walk[121:122], mine)
    assert path.summary is not summary
    want = np.concatenate([mine[:, :3, 3], walk[121:122]])
    _check(layout, path, want, rng)


def test_view_bounds_through_a_path_equal_view_bounds_of_its_poses():
    """``view_bounds`` with a ``LayoutPath`` kept clip after clip equals ``view_bounds`` of the poses' array, on a
    room with walls the path goes through (doorways, the rooms beyond, closing walls); the whole path is scanned
    for a few walls only, not every clip."""
    rng = np.random.default_rng(3)
    R = np.eye(3)
    planes = [
        L.Plane(0, 0.0, 1, 900, L.FLOOR), L.Plane(0, 2.6, -1, 800, L.CEILING),
        L.Plane(2, 5.0, -1, 700, L.WALL, 2.6, (0.0, 3.0)), L.Plane(1, 0.0, 1, 600, L.WALL, 2.6, (0.0, 5.0)),
        L.Plane(1, 4.0, -1, 500, L.WALL, 2.6, (0.0, 5.0)), L.Plane(2, 9.0, -1, 400, L.WALL, 2.6, (0.0, 4.0)),
    ]
    layout = L.Layout(axes=R, planes=planes, indoor=True, observer=np.array([2.0, 1.6, 1.0]),
                      observer_forward=np.array([0.0, 0.0, 1.0]))
    # up the room, through the wall at z = 5 into the next room, back, and again
    leg = np.stack([np.full(90, 2.0), np.full(90, 1.6), np.linspace(1.0, 7.5, 90)], axis=1)
    walk = np.concatenate([leg, leg[::-1], leg, leg[::-1]]) + rng.normal(size=(360, 3)) * [0.02, 0.0, 0.0]
    summary = L.PathSummary(layout)
    for i in range(1, len(walk) - 1):
        path = summary.sync(walk[: i + 1])
        cam = walk[i]
        got = L.view_bounds(layout, cam, path)
        assert got == L.view_bounds(layout, cam, walk[: i + 1])
        step = walk[i] - walk[i - 1]
        ahead = walk[i] + np.arange(1, 16)[:, None] * step
        assert L.view_bounds(layout, cam + 15 * step, path.extended(ahead)) == L.view_bounds(
            layout, cam + 15 * step, np.concatenate([walk[: i + 1], ahead]))
        summary = path.summary
    assert any(L.view_bounds(layout, c, walk[:200]).openings for c in walk[80:100])  # doorways were made
    assert summary.scans <= 12
