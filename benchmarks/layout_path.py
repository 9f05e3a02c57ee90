"""What the layout fill reads of the camera's path, per one-frame clip, against the session's length (poses).

Every layout frame reads the path the camera has been along and is about to take: ``view_bounds`` (its extremes
along the layout's axes for the closing walls, its crossings of the walls for the doorways, ``path_openings``),
and the layout fill the poses near each bounding plane (its free space); the tiles-ahead thread asks
``view_bounds`` twice more for the path extended where the camera heads (``geometric._ahead_views``). Here the
house scene's layout (seed 0) and a session of one-frame clips along its demo loop (161 poses, walked there and
back again: through the doorways each time; ``--path walk``: served play's walk) as the server's Play makes them:
per clip the history's poses (a read-only view of one growing buffer, as ``FrameStore.poses`` gives) and one
target. At each ``--poses`` length, ``--calls`` consecutive clips are timed (the frame thread's CPU,
``time.thread_time``, and wall; median): the path's array or summary for the clip, ``view_bounds``, the near poses
of each bound (``vb_near``), and the two extended views of the tiles ahead (``ahead``). Every clip in between runs
the same calls untimed, as a session would (a tree that reads the whole path each call keeps nothing between clips:
only the timed ones run).

``--roots NAME=DIR,...``: each tree (``SPATIA_AB_ROOT``, imported through ``_common.ab_env``'s sitecustomize, e.g.
``base=/tmp/x/base`` from ``git archive main``) in a fresh process, in the order
base new new base (``--rounds`` pairs, mirrored); the first is the baseline. A tree without ``PathSummary``
(before it) reads the whole path each call, as main did. Without ``--roots`` the current tree runs once.

    python benchmarks/layout_path.py [--poses 100,1000,5000,20000] [--calls 60] [--roots base=DIR,new=.]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ab_env, add_ab_arguments, check_tree, emit, log, mirrored_order, run_here  # noqa: E402


def _session_path(n: int, kind: str = "loops", start=None):
    """``[n, 4, 4]`` c2w: ``loops``, the house demo loop there and back again, as often as it takes (through its
    doorways every time: the walls' crossings pile up); ``walk``, served play's walk from ``start``
    (``benchmarks/play.py``'s: forward 1 m/s while turning 0.4 rad/s at 30 fps: a circle of 2.5 m radius)."""
    import numpy as np

    from spatia.world.scenes import make_scene

    if kind == "walk":
        from spatia.world.actions import Action, ActionIntegrator, ControlConfig

        return np.ascontiguousarray(ActionIntegrator(start, ControlConfig(fps=30)).run(
            [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1 / 30)] * n))[:n]
    loop = make_scene("house", 0).demo_path(161)
    out = []
    forward = True
    while sum(len(x) for x in out) < n:
        out.append(loop if forward else loop[::-1])
        forward = not forward
    return np.ascontiguousarray(np.concatenate(out)[:n])


def _child(args) -> dict:
    import numpy as np

    from spatia.model import geometric
    from spatia.model.fill.geometry import layout as layout_module
    from spatia.world.engine import Engine
    from spatia.world.state import World

    check_tree(geometric)  # an A/B's tree is the one it names (``_common.ab_env``)
    world = World.from_scene("house", 0, 160, 90)
    gen = geometric.GeometricGenerator(geometric.GeometricConfig())
    engine = Engine(world, gen)
    memory = world.memory
    entry = gen._states.prepare(memory, *gen._fill_inputs(memory, engine._observed_views(), engine._world_up()))
    state = entry.state()
    layout = state.layout
    radius = layout.config.min_camera_distance_m
    kept = hasattr(layout_module, "PathSummary")  # this tree keeps the path's summary per world

    sizes = sorted(int(x) for x in args.poses.split(","))
    poses = _session_path(sizes[-1] + args.calls + 1, args.path, world.current_c2w)
    buf = poses.copy()  # the history's buffer: the visited poses are a read-only view of its first rows

    def clip(i: int):
        visited = buf[:i]
        visited.flags.writeable = False
        request = SimpleNamespace(visited_c2w=visited, target_c2w=poses[i : i + 1])
        c2w = poses[i]
        t = [time.thread_time(), time.perf_counter()]
        reach = geometric._layout_reach(entry, layout, request) if kept else geometric._reach(request)
        view = layout_module.view_bounds(layout, c2w[:3, 3], reach)
        t += [time.thread_time(), time.perf_counter()]
        for plane in view.bounds:  # the layout fill's free space: the poses near each bound
            if kept:
                reach.near(plane.axis, plane.offset_m, radius)
            else:
                reach[np.abs(reach @ layout.axes[plane.axis] - plane.offset_m) < radius]
        t += [time.thread_time(), time.perf_counter()]
        geometric._ahead_views(state, view, c2w, reach)
        t += [time.thread_time(), time.perf_counter()]
        return t, len(view.bounds), len(view.openings)

    results = []
    i = 1
    for size in sizes:
        if not kept:  # the whole path read each call: nothing kept between clips, so the clips between are skipped
            i = max(i, size)
        while i < size:
            clip(i)
            i += 1
        rows = []
        for _ in range(args.calls):
            t, bounds, openings = clip(i)
            i += 1
            rows.append((t, bounds, openings))

        def med(k0: int, k1: int, wall: bool) -> float:
            o = 1 if wall else 0
            return round(statistics.median((r[0][2 * k1 + o] - r[0][2 * k0 + o]) * 1e3 for r in rows), 4)

        results.append({
            "poses": size,
            "view_bounds_cpu_ms": med(0, 1, False), "view_bounds_wall_ms": med(0, 1, True),
            "vb_near_cpu_ms": med(0, 2, False), "vb_near_wall_ms": med(0, 2, True),
            "ahead_cpu_ms": med(2, 3, False), "ahead_wall_ms": med(2, 3, True),
            "bounds": round(statistics.mean(r[1] for r in rows), 2),
            "openings": round(statistics.mean(r[2] for r in rows), 2),
        })
        log(f"  {size} poses: {results[-1]}")
    summary = getattr(entry, "path", None)
    return {"kept": kept, "per_poses": results, "scans": getattr(summary, "scans", None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--poses", default="100,1000,5000,20000", help="session lengths timed")
    p.add_argument("--calls", type=int, default=60, help="clips timed at each length")
    p.add_argument("--path", default="loops", choices=["loops", "walk"], help="the session's path (_session_path)")
    add_ab_arguments(p)
    args = p.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if run_here(args, _child, {"scene": "house", "path": args.path}):
        return
    order = mirrored_order(args.roots, args.rounds)
    runs = []
    for name, root in order:
        root = str(Path(root).resolve())
        env = ab_env(root, NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--poses", args.poses,
               "--calls", str(args.calls), "--path", args.path]
        start, load = time.strftime("%H:%M:%S", time.gmtime()), os.getloadavg()
        log(f"{name} ({root}) from {start} UTC, load {load[0]:.1f}")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        runs.append({"tree": name, "start_utc": start, "load_start": round(load[0], 2),
                     **json.loads(out.stdout.strip().splitlines()[-1])})
    emit({"scene": "house", "path": args.path, "order": [n for n, _ in order], "runs": runs})


if __name__ == "__main__":
    main()
