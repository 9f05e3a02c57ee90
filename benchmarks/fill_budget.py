"""The layout fill's cost on the frame path and off it, against the legacy fill in the same run (issue 10, sec. 4).

Each scene's demo loop through the engine in-process with the server's real-time play settings (clips 4 / 6 / 2,
keyframe stride 4), once per fill. Per frame: the frame thread's CPU time (``time.thread_time``: what a frame
costs, little disturbed by other load on the machine) and wall time. Per run: CPU of the other threads (the fill's
maintenance threads, the memory's and history's) as a share of one core over the run's wall time, and of the fill's
maintenance threads alone (``spatia-fill*``: layout and texture fits, tile warming; the budget of issue 10 sec. 4 is
<= 25 % of one core on average during play).

numba runs single-threaded here (``NUMBA_NUM_THREADS=1`` unless set), so a frame's kernels count on its thread.

``--walk N``: instead of the demo loops, served play's walk (``benchmarks/play.py``'s: forward 1 m/s while turning
0.4 rad/s at 30 fps) for N frames after 30 untimed ones, in one-frame clips with the server's play settings
(keyframe stride, reference reuse), as a session that keeps up draws it: the frames whose p95 / max served play
shows. Each timed frame is one whole clip (generation and the memory update).

    .venv/bin/python benchmarks/fill_budget.py --frames 161 --scenes room house courtyard [--laps 3]
    .venv/bin/python benchmarks/fill_budget.py --walk 450 --scenes room courtyard
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import threading
import time

import numpy as np

# numba's parallel kernels run on a pool of their own threads, whose CPU time would escape the frame thread's
# count; one thread keeps every kernel on the caller (both fills alike)
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # likewise OpenBLAS's threads (and as ``spatia`` runs: spatia/cli.py)

import _common  # noqa: E402,F401  (logs to stderr: stdout carries only the JSON lines)
from spatia.model.geometric import GeometricConfig, GeometricGenerator
from spatia.world.actions import ClipConfig
from spatia.world.engine import Engine, EngineConfig
from spatia.world.scenes import make_scene
from spatia.world.state import World


def _thread_cpu_s(native_id: int) -> float:
    """CPU seconds (user + system) of one of this process's threads so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = open(f"/proc/self/task/{native_id}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def _fill_thread_cpu_s() -> dict[int, float]:
    """{native thread id: CPU seconds so far} of the fill's maintenance threads alive now."""
    return {t.native_id: _thread_cpu_s(t.native_id) for t in threading.enumerate() if t.name.startswith("spatia-fill")}


WALK_WARM_FRAMES = 30  # untimed frames of the walk first (the coarse fill's, first kernel loads)


def _walk(engine: Engine, world: World, frames: int):
    """Served play's walk: its first ``WALK_WARM_FRAMES`` one-pose clips run here (untimed), then an iterator of
    the next ``frames`` clips, one pose each (each step a whole clip: generation and the memory update)."""
    from spatia.world.actions import Action, ActionIntegrator, ControlConfig

    poses = np.asarray(ActionIntegrator(world.current_c2w, ControlConfig(fps=30)).run(
        [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1 / 30)] * (WALK_WARM_FRAMES + frames)))
    for i in range(WALK_WARM_FRAMES):
        collections.deque(engine.generate_clip(poses[i : i + 1]), maxlen=0)  # pulling runs the memory update
    return (list(engine.generate_clip(poses[i : i + 1])) for i in range(WALK_WARM_FRAMES, len(poses)))


def run(scene_name: str, fill: str, width: int, height: int, frames: int, laps: int = 1, walk: int = 0) -> dict:
    from spatia.server.config import ServerConfig

    scene = make_scene(scene_name, 0)
    world = World.from_scene(scene_name, 0, width, height)
    loop = scene.demo_path(frames)
    path = np.concatenate([loop[1:]] * laps)  # the loop ends where it starts: laps follow on
    cfg = EngineConfig(clip=ClipConfig(first_clip_frames=4, clip_frames=6, preceding_frames=2), keyframe_stride=4)
    if walk:
        server = ServerConfig()
        cfg = EngineConfig(clip=cfg.clip, keyframe_stride=server.play_keyframe_stride,
                           reuse_references_within=server.play_reuse_references_within,
                           reuse_references_clips=server.play_reuse_references_clips)
    fill_before = _fill_thread_cpu_s()  # threads of an earlier run's generator may still be alive
    wall0, cpu0 = time.perf_counter(), time.process_time()
    generator = GeometricGenerator(GeometricConfig(fill=fill))
    engine = Engine(world, generator, cfg)
    if walk:  # as a server's CreateWorld does before the session plays
        generator.wait_prepared(world.memory, 120.0)
    thread_ms, wall_ms = [], []
    main_cpu = 0.0
    stream = engine.generate(path, seed=0)
    if walk:  # the untimed frames' CPU is not a timed frame's: counted from the first timed one
        stream = _walk(engine, world, walk)
        fill_before = _fill_thread_cpu_s()
        wall0, cpu0 = time.perf_counter(), time.process_time()
    while True:
        t, c = time.perf_counter(), time.thread_time()
        if next(stream, None) is None:
            break
        dc = time.thread_time() - c
        main_cpu += dc
        thread_ms.append(dc * 1000)
        wall_ms.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - wall0
    other_cpu = time.process_time() - cpu0 - main_cpu
    fill_cpu = sum(cpu - fill_before.get(tid, 0.0) for tid, cpu in _fill_thread_cpu_s().items())
    th, wa = np.array(thread_ms), np.array(wall_ms)
    return {
        "scene": scene_name, "fill": fill, "frames": len(th),
        "frame_cpu_ms": {"mean": round(float(th.mean()), 2), "p50": round(float(np.median(th)), 2),
                         "p90": round(float(np.percentile(th, 90)), 2), "p95": round(float(np.percentile(th, 95)), 2),
                         "max": round(float(th.max()), 2)},
        "frame_wall_ms": {"mean": round(float(wa.mean()), 2), "p50": round(float(np.median(wa)), 2),
                          "p90": round(float(np.percentile(wa, 90)), 2), "p95": round(float(np.percentile(wa, 95)), 2),
                          "max": round(float(wa.max()), 2)},
        "other_threads_cpu_s": round(other_cpu, 2),
        "other_threads_core_share": round(other_cpu / wall, 3),
        "fill_threads_cpu_s": round(fill_cpu, 2),
        "fill_threads_core_share": round(fill_cpu / wall, 3),
        "wall_s": round(wall, 2),
        "memory_points": world.memory.num_points,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=161)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--scenes", nargs="+", default=["room", "house", "courtyard"])
    ap.add_argument("--laps", type=int, default=1, help="times round the loop (a longer session: the fill's fits "
                    "are once per world, its share of a core falls with the session's length)")
    ap.add_argument("--walk", type=int, default=0, metavar="N",
                    help="served play's walk for N frames in one-frame clips instead of the demo loops (0: loops)")
    args = ap.parse_args()
    rows = []
    for scene in args.scenes:
        for fill in ("legacy", "layout"):
            rows.append(run(scene, fill, args.width, args.height, args.frames, args.laps, args.walk))
            print(json.dumps(rows[-1]), flush=True)
    added = {}
    for scene in args.scenes:
        base, new = (next(r for r in rows if r["scene"] == scene and r["fill"] == f) for f in ("legacy", "layout"))
        added[scene] = {k: round(new["frame_cpu_ms"][k] - base["frame_cpu_ms"][k], 2)
                        for k in ("mean", "p50", "p90", "p95")}
    print(json.dumps({"name": "fill_budget", "baseline": "legacy fill, same run", "width": args.width,
                      "height": args.height, "frames": args.walk or args.frames, "laps": args.laps,
                      "path": "served play's walk, one-frame clips" if args.walk else "demo loop",
                      "added_frame_cpu_ms": added,
                      "load": list(os.getloadavg()), "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()
