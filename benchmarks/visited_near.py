"""A clip's "invented points near any pose the camera has been at" question against the session's length: one k-d
tree over the whole path made each clip (the baseline, as the engine asked before) vs the path kept in chunk trees
(``world.free_space.VisitedPositions``) synced with the clip's new pose, same answers (checked each call).

The path: a walk round a 5 m loop at 1 m/s and 30 poses a second (plus 5 cm of sway), revisiting; the points asked:
``--points`` positions around the loop, as a clip's new invented points near the camera's path.

    python benchmarks/visited_near.py [--poses 1000,5000,20000] [--points 2000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, load_average, log, time_ms  # noqa: E402
from spatia.world.free_space import VisitedPositions, near_reference  # noqa: E402

RADIUS_M = 0.5  # EngineConfig.free_radius_m's default


def _path(poses: int, rng: np.random.Generator) -> np.ndarray:
    """``[P, 3]`` world frame: round a loop of radius 2.5 m at 1 m/s, 30 poses a second, with sway."""
    angle = np.arange(poses) / 30.0 / 2.5
    sway = rng.normal(0.0, 0.05, (poses, 2))
    return np.stack([2.5 * np.cos(angle) + sway[:, 0], np.full(poses, 1.6), 2.5 * np.sin(angle) + sway[:, 1]], 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--poses", default="1000,5000,20000", help="session lengths timed")
    p.add_argument("--points", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    results = {}
    for poses in [int(x) for x in args.poses.split(",")]:
        path = _path(poses + args.repeats + 1, rng)
        points = path[rng.integers(0, poses, args.points)] + rng.normal(0.0, 0.6, (args.points, 3))
        visited = VisitedPositions().sync(path[:poses])
        state = {"n": poses}

        def grow() -> None:  # the next clip's pose
            state["n"] += 1

        def baseline() -> None:
            state["want"] = near_reference(points, path[: state["n"]], RADIUS_M)

        def kept() -> None:
            state["got"] = visited.sync(path[: state["n"]]).near(points, RADIUS_M)

        state["n"] = poses
        base = time_ms(baseline, args.repeats, setup=grow)
        state["n"] = poses
        new = time_ms(kept, args.repeats, setup=grow)
        baseline()
        if not np.array_equal(state["got"], state["want"]):
            raise SystemExit(f"answers differ at {poses} poses")
        results[f"poses_{poses}"] = {"baseline": base, "visited_positions": new,
                                     "near_share": round(float(state["want"].mean()), 3)}
        log(f"{poses} poses: baseline {base['cpu_median_ms']} ms, kept {new['cpu_median_ms']} ms")
    emit({"name": "visited_near", "points": args.points, "radius_m": RADIUS_M, "results": results,
          "load": load_average()})


if __name__ == "__main__":
    main()
