"""Where a lock-step step's CPU goes: per-part thread CPU of the in-process Gymnasium env at 128x96, this tree
against a baseline tree in the same run.

Each run is its own process (numba single-threaded, as ``gym.py``'s server): ``--steps`` timed steps after
``--warmup``, the same seeded random walk as ``gym.py``; a ``thread_time`` wrapper around each part. The baseline
is another checkout's source tree (``git archive <commit> | tar -x -C DIR``) imported in place of this one
(``--baseline-root DIR``); runs alternate ``--rounds`` times (the machine is shared: alternate, then compare).
Every step's frame and memory-point count are hashed; ``identical`` says whether the two trees agree.

    python benchmarks/step_parts.py --baseline-root /tmp/base [--rounds 2] [--steps 300]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, log  # noqa: E402

PARTS = [  # (module, qualified name): what a one-frame clip spends its time on
    ("spatia.world.engine", "Engine._target_views"),  # memory render per target pose (+ voxel keys)
    ("spatia.world.engine", "Engine._references"),  # retrieval + pose fill
    ("spatia.model.geometric", "GeometricGenerator._apply_references"),  # reference warps
    ("spatia.model.geometric", "warp_rgbd"),
    ("spatia.model.geometric", "GeometricGenerator._layout_fill"),
    ("spatia.model.geometric", "fill_holes_background"),
    ("spatia.model.geometric", "pushpull_fill"),
    ("spatia.world.engine", "Engine._commit"),  # memory update + history
    ("spatia.world.engine", "update_memory"),
    ("spatia.world.history", "FrameStore.add"),
    ("spatia.world.memory", "SpatialMemory.remove_invented_near_groups"),
]


def _child(steps: int, warmup: int, root: str | None) -> dict:
    """One measured run in this process (``root``: import ``spatia`` from that tree instead of this one)."""
    os.environ["NUMBA_NUM_THREADS"] = "1"
    if root:
        import importlib

        finder = next(m for name, m in sys.modules.items() if name.startswith("__editable__") and "spatia" in name)
        for k, v in list(finder.MAPPING.items()):
            finder.MAPPING[k] = str(Path(root) / Path(v).relative_to(ROOT))
        importlib.invalidate_caches()
    import functools
    import importlib

    import numpy as np

    import spatia.client  # noqa: F401  (registers the ids)
    from spatia.client.env import SpatiaWorldEnv

    acc: dict[str, float] = {}

    def wrap(modname: str, qual: str) -> None:
        owner = importlib.import_module(modname)
        *path, name = qual.split(".")
        for p in path:
            owner = getattr(owner, p)
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*a, **k):
            c0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                acc[qual] = acc.get(qual, 0.0) + time.thread_time() - c0

        setattr(owner, name, timed)

    for m, q in PARTS:
        wrap(m, q)
    rng = np.random.default_rng(0)
    actions = [np.array([rng.uniform(0.2, 1), rng.uniform(-0.5, 0.5), 0, rng.uniform(-1, 1), rng.uniform(-0.2, 0.2)],
                        np.float32) for _ in range(warmup + steps)]
    env = SpatiaWorldEnv(width=128, height=96)
    env.reset(seed=0)
    digest = hashlib.sha1()
    wall, cpu = [], []
    for k, a in enumerate(actions):
        if k == warmup:
            acc.clear()
        t0, c0 = time.perf_counter(), time.thread_time()
        obs, _, _, _, info = env.step(a)
        if k >= warmup:
            wall.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.thread_time() - c0) * 1e3)
        digest.update(np.ascontiguousarray(obs).tobytes())
        digest.update(str(info["memory_points"]).encode())
    env.close()
    wall.sort()
    cpu.sort()
    return {
        "wall_median_ms": round(wall[len(wall) // 2], 3), "wall_mean_ms": round(sum(wall) / len(wall), 3),
        "cpu_median_ms": round(cpu[len(cpu) // 2], 3), "cpu_mean_ms": round(sum(cpu) / len(cpu), 3),
        "parts_cpu_ms_per_step": {q: round(v / steps * 1e3, 3) for q, v in sorted(acc.items(), key=lambda x: -x[1])},
        "frames_sha1": digest.hexdigest(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-root", required=True, help="source tree of the baseline (git archive of a commit)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--child", choices=["this", "baseline"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.steps, args.warmup, args.baseline_root if args.child == "baseline" else None)))
        return
    if not (Path(args.baseline_root) / "world" / "engine.py").is_file():
        raise SystemExit(f"--baseline-root {args.baseline_root} is not a source tree (no world/engine.py)")
    runs: dict[str, list[dict]] = {"baseline": [], "this": []}
    for r in range(args.rounds):
        for which in ("baseline", "this"):
            log(f"round {r + 1}/{args.rounds}: {which}")
            out = subprocess.run([sys.executable, __file__, "--child", which, "--baseline-root", args.baseline_root,
                                  "--steps", str(args.steps), "--warmup", str(args.warmup)],
                                 capture_output=True, text=True, check=True)
            runs[which].append({**json.loads(out.stdout.strip().splitlines()[-1]), "load_1min": os.getloadavg()[0]})
    emit({
        "benchmark": "step_parts", "width": 128, "height": 96, "steps": args.steps, "warmup": args.warmup,
        "median_ms": runs["this"][-1]["cpu_median_ms"], "baseline_median_ms": runs["baseline"][-1]["cpu_median_ms"],
        "runs": runs,
        "identical": len({r["frames_sha1"] for rs in runs.values() for r in rs}) == 1,
    })


if __name__ == "__main__":
    main()
