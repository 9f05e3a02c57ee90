"""A drop in a ~10^6-point memory, in the block-sorted prefix or the unsorted tail (issue 10 sec. 4, issue 11 sec.
5): the see-through removal of invented points takes 1 to ~10^4 points in many clips of a 640x360 walk.

``SpatialMemory._drop`` (the dropped rows become dead in place, ``_memory_kernels.drop_points``: O(dropped points))
against a plain compaction in the same run on the same points with no dead row (a boolean-mask gather of the six
point arrays, the hash table rebuilt, the block directory made again: what a drop cost before tombstones). Both
start from the same memory (``--points`` on a room's surfaces at 1 cm, re-sorted, then a ``--tail`` fraction
unsorted) and must leave the same points as read, in the same order (a stable filter).

    python benchmarks/prefix_drops.py [--points 1000000] [--tail 0.2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import compact_plainly, emit, load_average, log, time_ms  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--tail", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    from spatia.world import _memory_kernels as K
    from spatia.world.memory import INVENTED_FINAL, MemoryConfig, SpatialMemory

    rng = np.random.default_rng(0)

    def surface(n: int) -> np.ndarray:  # points on a 6 x 3 x 6 m box's faces (1 cm voxels)
        p = rng.uniform([-3, -1.5, -3], [3, 1.5, 3], (n, 3))
        axis = rng.integers(0, 3, n)
        p[np.arange(n), axis] = np.where(rng.random(n) < 0.5, -1, 1) * np.array([3, 1.5, 3])[axis]
        return p

    base = SpatialMemory(MemoryConfig())
    first = int(args.points * (1 - args.tail))
    base.integrate_points(surface(first), rng.integers(0, 256, (first, 3), dtype=np.uint8), 0,
                          provenance=INVENTED_FINAL)
    base._grow(int(base._capacity * 1.25))  # the room a memory has between growths
    base.reindex()
    rest = args.points - base.num_points
    base.integrate_points(surface(rest), rng.integers(0, 256, (rest, 3), dtype=np.uint8), 1,
                          provenance=INVENTED_FINAL)
    n, live_sorted = base.num_points, base._n_sorted - len(base._dead)
    log(f"memory: {n} points, {live_sorted} sorted, {len(base._dead)} dead rows")
    compact = SpatialMemory.from_arrays(base.config, base.to_arrays())  # the same points, no dead row
    compact._n_sorted = live_sorted
    compact._block_ids, compact._block_starts = K.block_directory(compact._keys, live_sorted)

    cases = {}
    for where, count in (("prefix", 1), ("prefix", 100), ("prefix", 5000), ("tail", 100)):
        lo, hi = (0, live_sorted) if where == "prefix" else (live_sorted, n)
        ids = np.sort(lo + rng.choice(hi - lo, count, replace=False))  # points (indices as read)
        state: dict = {}

        def setup() -> None:
            state["fast"], state["old"] = base.copy(), compact.copy()

        def fast() -> None:
            m = state["fast"]
            m._drop(m._rows_of_points(ids))

        def old() -> None:  # a plain compaction, on rows that are the points
            m = state["old"]
            keep = np.ones(m._n, bool)
            keep[ids] = False
            compact_plainly(m, keep)
            m._block_ids, m._block_starts = K.block_directory(m._keys, m._n_sorted)

        setup()
        fast()
        old()
        got, want = state["fast"].to_arrays(), state["old"].to_arrays()
        assert all(np.array_equal(got[k], want[k]) for k in want)  # the same points, in the same order
        cases[f"{where}_drop_{count}"] = {"fast": time_ms(fast, args.repeats, setup=setup),
                                          "baseline": time_ms(old, args.repeats, setup=setup)}
        log(f"  {where} {count}: {cases[f'{where}_drop_{count}']}")
    emit({
        "benchmark": "prefix_drops", "points": n, "sorted": live_sorted, "dead_rows": int(len(base._dead)),
        "median_ms": cases["prefix_drop_100"]["fast"]["median_ms"],
        "baseline_median_ms": cases["prefix_drop_100"]["baseline"]["median_ms"],
        "cases": cases, "load": load_average(),
    })


if __name__ == "__main__":
    main()
