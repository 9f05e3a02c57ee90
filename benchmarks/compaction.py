"""A lock-step step's compaction: dropping a few invented points from a ~10^5-point memory.

``SpatialMemory._drop`` (world/_memory_kernels.drop_points: the dropped rows become dead in place, their keys leave
the hash table; no row moves) against the naive numpy reference in the same run: a boolean-mask gather of the six point arrays and a hash table rebuilt from all points
(what a compaction did before session 6). Both start from the same memory: ``--points`` points, the first
``--sorted`` fraction block-sorted, the rest an unsorted tail, as a 128x96 lock-step world ~300 steps in
(114 835 points, 65 207 sorted). Each case drops ``--drops`` points from one place (a fraction of the rows), as the
free-space removal does around the camera.

    python benchmarks/compaction.py [--points 115000] [--sorted 0.57] [--drops 12]
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
    ap.add_argument("--points", type=int, default=115_000)
    ap.add_argument("--sorted", type=float, default=0.57)
    ap.add_argument("--drops", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    from spatia.world.memory import INVENTED_FINAL, MemoryConfig, SpatialMemory

    rng = np.random.default_rng(0)
    base = SpatialMemory(MemoryConfig())
    n_sorted = int(args.sorted * args.points)
    # a room's surfaces: points on a 6 x 3 x 6 m box (1 cm voxels), first the sorted part, then the tail
    def surface(n: int) -> np.ndarray:
        p = rng.uniform([-3, -1.5, -3], [3, 1.5, 3], (n, 3))
        axis = rng.integers(0, 3, n)
        p[np.arange(n), axis] = np.where(rng.random(n) < 0.5, -1, 1) * np.array([3, 1.5, 3])[axis]
        return p

    base.integrate_points(surface(n_sorted), rng.integers(0, 256, (n_sorted, 3), dtype=np.uint8), 0,
                          provenance=INVENTED_FINAL)
    base.reindex()
    rest = args.points - base.num_points
    base.integrate_points(surface(rest), rng.integers(0, 256, (rest, 3), dtype=np.uint8), 1,
                          provenance=INVENTED_FINAL)
    n = base.num_points
    log(f"memory: {n} points, {base._n_sorted} sorted")
    cases = {}
    for where in (0.3, 0.55, 0.9, 0.99):
        lo = int(where * n)
        # rows of those points (the memory's dead rows are none of them)
        drops = base._rows_of_points(np.sort(lo + rng.choice(min(3000, n - lo), args.drops, replace=False)))
        state: dict = {}

        def setup() -> None:
            state["m"] = base.copy()

        def fast() -> None:
            state["m"]._drop(drops)

        def naive() -> None:
            m = state["m"]
            keep = np.ones(m._n, bool)
            keep[drops] = False
            keep[m._dead] = False  # (rows, not points: SpatialMemory._drop)
            m._dead = np.zeros(0, np.int64)  # (before the rehash, which skips dead rows)
            compact_plainly(m, keep)

        setup()
        fast()
        check = state["m"].to_arrays()
        setup()
        naive()
        want = state["m"].to_arrays()
        order_w, order_c = np.argsort(want["voxel_keys"]), np.argsort(check["voxel_keys"])
        assert all(np.array_equal(want[k][order_w], check[k][order_c]) for k in want)  # the same points remain
        cases[f"drops_at_{where:.2f}"] = {"fast": time_ms(fast, args.repeats, setup=setup),
                                          "baseline": time_ms(naive, args.repeats, setup=setup),
                                          "in_sorted_prefix": int((drops < base._n_sorted).sum())}
        log(f"  {where:.2f}: {cases[f'drops_at_{where:.2f}']}")
    emit({
        "benchmark": "compaction", "points": n, "sorted": base._n_sorted, "drops": args.drops,
        "median_ms": cases["drops_at_0.55"]["fast"]["median_ms"],
        "baseline_median_ms": cases["drops_at_0.55"]["baseline"]["median_ms"],
        "cases": cases, "load": load_average(),
    })


if __name__ == "__main__":
    main()
