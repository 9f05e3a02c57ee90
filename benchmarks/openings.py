"""Frame and memory agree on openings: the room turned 45 deg right, then W held (collision off), per tree.

The walk of docs/RESULTS.md "Walking through a wall" (``room``, the scene ``SpatiaWorldEnv.reset(seed=0)`` makes,
one-frame clips as the env makes them), ``--turns`` steps of yaw right at 90 deg/s and 16 fps, then ``--steps`` of
W. Each tree (``--roots name=DIR,...``, the first is the baseline) runs in a fresh process, alternated
(b n n b for ``--rounds 2``), so pairs share the machine's minutes. Per tree:

- ``update_ms``: the memory update per step (``ClipStats.update_s``: the carve runs there), median / p95 / mean;
  ``generate_ms``: the frame's generation, median / p95;
- ``disagree_px``: per step, pixels where the memory (after the update) renders an invented point and the frame's
  depth lies beyond it (> 1.3 x + 0.3 m): an opening the frame shows where the memory holds a wall; sum and max;
- ``seen_through_first_view``: invented points in the final memory in space the first (observed) view saw
  through (``world.free_space.seen_through``, rel 0.03 + 5 cm), and the memory's points;
- with ``--collision`` (the camera collides, ``Engine.collider``): where it ends and how many steps collided.

    python benchmarks/openings.py --roots base=/tmp/door/base,new=/work/wt/door [--width 320 --height 180]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import ab_env, check_tree, emit, load_average, log  # noqa: E402

ROOM_SEED = 1826701614  # SpatiaWorldEnv.reset(seed=0)'s room


def _walk(args) -> dict:
    import math

    import numpy as np

    from spatia.model.geometric import GeometricGenerator
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    try:
        from spatia.world.free_space import seen_through
    except ImportError:  # a tree from before the move (main before session 14): the layout fill's copy
        from spatia.model.fill.geometry.freespace import seen_through
    from spatia.world.memory import OBSERVED
    from spatia.world.state import World

    check_tree(sys.modules[GeometricGenerator.__module__])  # an A/B's tree is the one it names (``_common.ab_env``)
    world = World.from_scene("room", ROOM_SEED, args.width, args.height)
    engine = Engine(world, GeometricGenerator(), EngineConfig(clip=ClipConfig(1, 2, 1)))
    control = ControlConfig(collision=args.collision)
    integ = ActionIntegrator(world.origin_c2w, control, collider=engine.collider() if args.collision else None)
    upd, gen, disagree, hits = [], [], [], 0
    for k in range(args.turns + args.steps):
        act = Action(move_forward=float(k >= args.turns), yaw_rate_rad_s=math.radians(90.0) * (k < args.turns),
                     dt_s=1.0 / control.fps)
        c2w = integ.step(act)[-1]
        hits += int(integ.collided)
        frame = list(engine.generate_clip(c2w[None], seed=k + 1))[-1]
        upd.append(engine.last_stats.update_s * 1e3)
        gen.append(engine.last_stats.generate_s * 1e3)
        r = world.memory.render(world.intrinsics, c2w, return_point_ids=True)
        prov = world.memory.provenance
        invented = r.valid & (prov[np.maximum(r.point_ids, 0)] != OBSERVED)
        disagree.append(int((invented & (frame.depth_m > r.depth_m * 1.3 + 0.3)).sum()))
    timed = slice(args.turns + 2, None)  # the layout's fit and the coarse frames are not the carve's
    first = world.history.get_depth(0)
    pos, prov = world.memory.positions.astype(np.float64), world.memory.provenance
    bad = seen_through(pos[prov != OBSERVED], world.origin_c2w, world.intrinsics,
                       np.where(first > 0, first, 1e-30).astype(np.float32), 0.03)

    def stats(xs):
        xs = sorted(xs)
        return {"median": round(statistics.median(xs), 3), "p95": round(xs[int(0.95 * (len(xs) - 1))], 3),
                "mean": round(statistics.fmean(xs), 3)}

    return {"update_ms": stats(upd[timed]), "generate_ms": stats(gen[timed]),
            "disagree_px": {"sum": sum(disagree), "max": max(disagree), "per_step": disagree},
            "seen_through_first_view": int(bad.sum()), "memory_points": int(world.memory.num_points),
            "final_position_m": [round(float(v), 3) for v in c2w[:3, 3]], "collided_steps": hits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roots", help="name=DIR,...: trees to compare (the first is the baseline)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--steps", type=int, default=52)
    ap.add_argument("--collision", action="store_true", help="the camera collides (world.collision)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child or not args.roots:
        print(json.dumps(_walk(args)))
        return
    roots = [r.split("=", 1) for r in args.roots.split(",")]
    order = []
    for k in range(args.rounds):
        order += roots if k % 2 == 0 else roots[::-1]
    runs: dict[str, list] = {name: [] for name, _ in roots}
    for name, path in order:
        log(f"{name}: {path} (load {load_average():.1f})")
        env = ab_env(path)
        out = subprocess.run([sys.executable, __file__, "--child", "--width", str(args.width), "--height",
                              str(args.height), "--turns", str(args.turns), "--steps", str(args.steps)]
                             + (["--collision"] if args.collision else []),
                             env=env, capture_output=True, text=True, check=True, cwd=path)
        runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = roots[0][0]
    result = {"width": args.width, "height": args.height, "turns": args.turns, "steps": args.steps,
              "collision": args.collision,
              "order": [n for n, _ in order], "load_average_end": load_average(), "runs": runs}
    result["baseline_median_ms"] = statistics.median(r["update_ms"]["median"] for r in runs[base])
    other = roots[-1][0]
    result["median_ms"] = statistics.median(r["update_ms"]["median"] for r in runs[other])
    emit(result)


if __name__ == "__main__":
    main()
