"""Which way the memory's re-sorts go on the frame thread during served layout play (issue 11 sec. 5).

``benchmarks/fill_budget.py``'s runs (same options: ``--walk N`` for served play's walk), with
``SpatialMemory._reindex`` and ``_adopt_resort`` wrapped: each re-sort on the frame thread is counted as adopted
(the copy prepared on the maintenance thread taken, O(changes); "waited" also counts those that waited for it) or
in place (O(points): the permutation, the table
remap, the block directory), with its frame-thread CPU ms (``time.thread_time``) and wall ms (a re-sort that waits
for its copy costs wall time, not CPU); growths on the spot (``_grow``) likewise. Works on any tree (the wrapped
names are the same in trees before and after the prepared re-sort survived drops).

    .venv/bin/python benchmarks/resort_path.py --walk 450 --scenes room courtyard
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import fill_budget  # noqa: E402  (the script's folder is on sys.path; it sets up _common's logging)
from spatia.world.memory import SpatialMemory  # noqa: E402

_counts: dict[str, list[tuple[float, float]]] = {"adopted": [], "in_place": [], "waited": [], "grown_on_the_spot": []}
_state = threading.local()


def _instrument() -> None:
    reindex, adopt, grow = SpatialMemory._reindex, SpatialMemory._adopt_resort, SpatialMemory._grow
    main = threading.get_ident()

    def timed_reindex(self, *a, **k):
        if threading.get_ident() != main:
            return reindex(self, *a, **k)
        _state.adopted = False
        waited = getattr(self, "resorts_waited", 0)  # (trees that wait for a prepared copy count the waits)
        c, t = time.thread_time(), time.perf_counter()
        try:
            return reindex(self, *a, **k)
        finally:
            took = ((time.thread_time() - c) * 1000, (time.perf_counter() - t) * 1000)
            _counts["adopted" if _state.adopted else "in_place"].append(took)
            if getattr(self, "resorts_waited", 0) > waited:
                _counts["waited"].append(took)

    def timed_grow(self, *a, **k):
        c, t = time.thread_time(), time.perf_counter()
        try:
            return grow(self, *a, **k)
        finally:
            if threading.get_ident() == main:
                _counts["grown_on_the_spot"].append(((time.thread_time() - c) * 1000,
                                                     (time.perf_counter() - t) * 1000))

    def marking_adopt(self, *a, **k):
        _state.adopted = True
        return adopt(self, *a, **k)

    SpatialMemory._reindex = timed_reindex
    SpatialMemory._adopt_resort = marking_adopt
    SpatialMemory._grow = timed_grow


def _summary(ms: list[tuple[float, float]]) -> dict:
    if not ms:
        return {"count": 0}
    cpu, wall = sorted(c for c, _ in ms), sorted(w for _, w in ms)
    return {"count": len(ms), "cpu_mean_ms": round(sum(cpu) / len(cpu), 2), "cpu_max_ms": round(cpu[-1], 2),
            "cpu_total_ms": round(sum(cpu), 1), "wall_max_ms": round(wall[-1], 2)}


def main() -> None:
    _instrument()
    run = fill_budget.run

    def counted_run(*a, **k):
        for v in _counts.values():
            v.clear()
        row = run(*a, **k)
        row["resorts"] = {name: _summary(ms) for name, ms in _counts.items()}
        row["load"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps({"scene": row["scene"], "fill": row["fill"], "resorts": row["resorts"],
                          "frame_cpu_ms": row["frame_cpu_ms"], "load": row["load"]}), file=sys.stderr, flush=True)
        return row

    fill_budget.run = counted_run
    fill_budget.main()


if __name__ == "__main__":
    main()
