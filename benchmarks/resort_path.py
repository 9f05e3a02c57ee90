"""Which way the memory's re-sorts go on the frame thread during served layout play (issue 11 sec. 5).

``benchmarks/fill_budget.py``'s runs (same options: ``--walk N`` for served play's walk), with
``SpatialMemory._reindex`` and ``_adopt_resort`` wrapped: each re-sort on the frame thread is counted as adopted
(the copy prepared on the maintenance thread taken, O(changes)) or in place (O(points): the permutation, the table
remap, the block directory), with its frame-thread CPU ms (``time.thread_time``). Works on any tree (the wrapped
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

_counts: dict[str, list[float]] = {"adopted": [], "in_place": []}
_state = threading.local()


def _instrument() -> None:
    reindex, adopt = SpatialMemory._reindex, SpatialMemory._adopt_resort
    main = threading.get_ident()

    def timed_reindex(self, *a, **k):
        if threading.get_ident() != main:
            return reindex(self, *a, **k)
        _state.adopted = False
        c = time.thread_time()
        try:
            return reindex(self, *a, **k)
        finally:
            _counts["adopted" if _state.adopted else "in_place"].append((time.thread_time() - c) * 1000)

    def marking_adopt(self, *a, **k):
        _state.adopted = True
        return adopt(self, *a, **k)

    SpatialMemory._reindex = timed_reindex
    SpatialMemory._adopt_resort = marking_adopt


def _summary(ms: list[float]) -> dict:
    if not ms:
        return {"count": 0}
    s = sorted(ms)
    return {"count": len(s), "mean_ms": round(sum(s) / len(s), 2), "max_ms": round(s[-1], 2),
            "total_ms": round(sum(s), 1)}


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
