"""Collision's cost on the action path: lock-step Gymnasium steps with and without it, in the same run.

The in-process ``SpatiaWorldEnv`` (``room``, seed 0, ``--width x --height``, default 128x96) walks the seeded
random walk of ``benchmarks/gym.py`` (mostly forward while turning; it meets the room's walls) for ``--steps``
after ``--warmup`` untimed steps, in ``--rounds`` rounds alternating without / with collision (off on, on off,
...), each round a fresh env, so both see the same minutes of the machine:

- ``baseline_median_ms``: the per-step median without collision; ``median_ms``: with it (the walks differ once a
  wall is met: without collision the camera goes on through it into invented space);
- ``collider``: the time of ``MemoryCollider.resolve`` itself in each timed step of the rounds with collision (median,
  p95 and max per step, in ms), the steps it clamped, and the points it read per call (warm-up steps included).

    python benchmarks/collision.py [--steps 300] [--rounds 4] [--width 128 --height 96]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, log  # noqa: E402


def _round(args, actions, collision: bool) -> dict:
    import numpy as np

    from spatia.client.env import SpatiaWorldEnv
    from spatia.world.actions import ControlConfig

    env = SpatiaWorldEnv(width=args.width, height=args.height, control=ControlConfig(collision=collision))
    env.reset(seed=0)
    calls: list[float] = []  # seconds per resolve
    read: list[int] = []  # points read per resolve
    if collision:
        collider = env._integrator.collider
        resolve, near = collider.resolve, collider._points_near

        def points_near(lo, hi):
            pts, prov = near(lo, hi)
            read.append(len(pts))
            return pts, prov

        def timed(*a, **kw):
            t = time.perf_counter()
            out = resolve(*a, **kw)
            calls.append(time.perf_counter() - t)
            return out

        collider._points_near, collider.resolve = points_near, timed
    step_s, per_step, hits = [], [], 0  # per_step: the collider's seconds in each timed step
    for k, a in enumerate(actions):
        n_calls = len(calls)
        t = time.perf_counter()
        _, _, _, _, info = env.step(a)
        if k >= args.warmup:
            step_s.append(time.perf_counter() - t)
            per_step.append(sum(calls[n_calls:]))
            hits += bool(info["collided"])
    end = np.round(info["position_m"], 2).tolist()
    env.close()
    ms = sorted(1e3 * s for s in step_s)
    out = {"median_ms": round(statistics.median(ms), 3), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 3),
           "steps_per_s": round(len(ms) / (sum(ms) / 1e3), 1), "collided_steps": hits, "end_position_m": end}
    if collision:
        c = sorted(1e3 * s for s in per_step)
        out["collider"] = {"median_ms": round(statistics.median(c), 4), "p95_ms": round(c[int(0.95 * (len(c) - 1))], 4),
                           "max_ms": round(c[-1], 3), "calls": len(calls),
                           "points_read_median": int(statistics.median(read)), "points_read_max": max(read)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4, help="alternating without / with collision (even: balanced)")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1, help="numba threads (1: as benchmarks/gym.py)")
    args = ap.parse_args()
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)  # before numba is imported
    import numpy as np

    rng = np.random.default_rng(0)  # benchmarks/gym.py's walk
    actions = [np.array([rng.uniform(0.2, 1), rng.uniform(-0.5, 0.5), 0, rng.uniform(-1, 1), rng.uniform(-0.2, 0.2)],
                        np.float32) for _ in range(args.warmup + args.steps)]
    rounds = {"off": [], "on": []}
    for r in range(args.rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for name in order:
            res = _round(args, actions, name == "on")
            rounds[name].append(res)
            log(f"round {r} collision {name}: {res}")
    on = rounds["on"]
    collider = {k: round(statistics.mean(x["collider"][k] for x in on), 4)
                for k in ("median_ms", "p95_ms", "max_ms", "points_read_median", "points_read_max")}
    emit({
        "benchmark": "collision",
        "width": args.width, "height": args.height, "steps": args.steps, "warmup": args.warmup,
        "rounds": args.rounds, "numba_threads": args.threads,
        "median_ms": round(statistics.mean(x["median_ms"] for x in on), 3),
        "baseline_median_ms": round(statistics.mean(x["median_ms"] for x in rounds["off"]), 3),
        "steps_per_s": {k: [x["steps_per_s"] for x in v] for k, v in rounds.items()},
        "collided_steps": {k: [x["collided_steps"] for x in v] for k, v in rounds.items()},
        "collider_mean_of_rounds": collider,
        "rounds_detail": rounds,
        "load": os.getloadavg()[0],
    })


if __name__ == "__main__":
    main()
