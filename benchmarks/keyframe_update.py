"""A keyframe's memory update on the frame's thread, and the memory's maintenance thread, per frame (thread CPU).

The engine in-process as served (``ServerConfig``'s keyframe stride and reference reuse, the server's OpenMP
settings, one numba thread), 640x360, one-frame clips along play.py's walk at 10 fps (forward while turning, one
pose every 3rd 30 Hz tick: as far as one of four served sessions' clips move) from ``--scene`` (seed 0), ``--fill``
of the geometric generator; ``--warmup`` clips untimed, then ``--clips`` timed. Per clip, the frame thread's CPU
(``time.thread_time``) around ``generate_clip``, and inclusive thread CPU of the parts below (frame thread only);
keyframes (frame index a multiple of the stride: the ones that integrate) and the other frames apart. The
maintenance thread's CPU per frame from ``/proc/self/task``. Hashes, to compare trees: every frame's rgb + depth,
the memory's arrays as read after every clip (``to_arrays``), the history's records at the end (all but its wall
clock timestamps).

``--roots NAME=DIR,...``: each tree (``SPATIA_AB_ROOT``, e.g. ``base=/tmp/x/base`` from ``git archive main``) in a
fresh process, in the order base new new base (``--rounds`` pairs, mirrored): only trees run in the same minutes
compare on a shared machine. The first tree is the baseline. Without ``--roots`` the current tree runs once.

    python benchmarks/keyframe_update.py [--fill layout] [--scene room] [--clips 100] [--roots base=DIR,new=.]
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ab_env, add_ab_arguments, emit, log, mirrored_order, run_here  # noqa: E402
from stalls import present_parts  # noqa: E402

# (module, attribute path, label) of each timed part; a part a tree lacks is left out of its figures
PARTS = (
    ("spatia.world.engine", "Engine._commit", "commit"),  # memory update + history
    ("spatia.world.engine", "update_memory", "update_memory"),
    ("spatia.world.memory", "SpatialMemory.integrate", "integrate"),
    ("spatia.world._memory_kernels", "frame_samples", "frame_samples"),
    ("spatia.world._memory_kernels", "merge_samples", "merge_samples"),
    ("spatia.world.memory", "SpatialMemory._adopt_growth", "adopt_growth"),
    ("spatia.world.memory", "SpatialMemory._grow", "grow"),
    ("spatia.world.memory", "SpatialMemory.remove_invented_seen_through", "remove_seen_through"),
    ("spatia.world.memory", "SpatialMemory.remove_invented_in", "remove_invented_in"),
    ("spatia.world.memory", "SpatialMemory.remove_invented_near_groups", "remove_invented_near"),
    ("spatia.world.memory", "SpatialMemory._drop", "drop"),
    ("spatia.world.memory", "SpatialMemory._growth_rows_now", "growth_rows_now"),
    ("spatia.world.memory", "SpatialMemory._reindex", "reindex"),
    ("spatia.world.memory", "SpatialMemory._render", "render"),
    ("spatia.world.memory", "SpatialMemory.rendered_voxel_keys", "rendered_voxel_keys"),
    ("spatia.world.update", "pinholes", "pinholes"),
    ("spatia.world.history", "FrameStore.add", "history_add"),
)


def _instrument(acc: collections.Counter, main_thread: int) -> None:
    import importlib
    import threading

    for owner, attr, fn, label in present_parts(PARTS):
        def make(fn, label):
            @functools.wraps(fn)
            def timed(*a, **k):
                if threading.get_ident() != main_thread:
                    return fn(*a, **k)
                c0 = time.thread_time()
                try:
                    return fn(*a, **k)
                finally:
                    acc[label] += (time.thread_time() - c0) * 1e3
            if hasattr(fn, "compile"):  # a numba kernel: the maintenance thread loads it by signature
                timed.compile = fn.compile
            return timed

        setattr(owner, attr, make(fn, label))
        if owner.__name__ == "spatia.world._memory_kernels":  # memory.py calls them as K.<name>
            setattr(importlib.import_module("spatia.world.memory").K, attr, getattr(owner, attr))


def _thread_cpu_s() -> collections.Counter:
    import threading

    out = collections.Counter()
    tick = os.sysconf("SC_CLK_TCK")
    for t in threading.enumerate():
        try:
            stat = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[t.name.split("_")[0]] += (int(stat[11]) + int(stat[12])) / tick
    return out


def _child(args) -> dict:
    import threading

    import numpy as np

    import spatia.server.host  # noqa: F401  -- the server's OpenMP settings: the engine as served
    from spatia.model import make_generator
    from spatia.server.config import ServerConfig
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    acc: collections.Counter = collections.Counter()
    _instrument(acc, threading.get_ident())
    server = ServerConfig()
    world = World.from_scene(args.scene, 0, args.width, args.height)
    gen = make_generator("geometric", fill=args.fill)
    engine = Engine(world, gen, EngineConfig(
        clip=ClipConfig(4, 6, 2), keyframe_stride=server.play_keyframe_stride,
        reuse_references_within=server.play_reuse_references_within,
        reuse_references_clips=server.play_reuse_references_clips))
    if hasattr(gen, "wait_prepared"):
        gen.wait_prepared(world.memory, 60.0)
    total = args.warmup + args.clips
    poses = np.asarray(ActionIntegrator(world.current_c2w, ControlConfig(fps=30)).run(
        [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1 / 30)] * (3 * total)))[::3]
    frames_h, memory_h = hashlib.sha256(), hashlib.sha256()
    clips = []
    cpu0 = _thread_cpu_s()
    for i in range(total):
        if i == args.warmup:
            cpu0 = _thread_cpu_s()
        acc.clear()
        key = len(world.history) % server.play_keyframe_stride == 0
        c0 = time.thread_time()
        for f in engine.generate_clip(poses[i : i + 1]):
            frames_h.update(np.ascontiguousarray(f.rgb).tobytes() + np.ascontiguousarray(f.depth_m).tobytes())
        cpu_ms = (time.thread_time() - c0) * 1e3
        arrays = world.memory.to_arrays()
        for name in sorted(arrays):
            memory_h.update(name.encode() + np.ascontiguousarray(arrays[name]).tobytes())
        if i >= args.warmup:
            clips.append({"key": key, "cpu_ms": cpu_ms, "parts": dict(acc)})
    cpu1 = _thread_cpu_s()
    history_h = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, dict):
            for k in sorted(x):
                if k != "timestamp_ns":  # wall clock
                    history_h.update(str(k).encode())
                    feed(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                feed(v)
        elif isinstance(x, np.ndarray):
            history_h.update(np.ascontiguousarray(x).tobytes())
        else:
            history_h.update(repr(x).encode())

    feed(world.history.to_arrays())

    def summary(sel: list[dict]) -> dict:
        cpu = np.array([c["cpu_ms"] for c in sel])
        parts = collections.Counter()
        for c in sel:
            parts.update(c["parts"])
        return {"clips": len(sel), "cpu_mean_ms": round(float(cpu.mean()), 2),
                "cpu_p95_ms": round(float(np.percentile(cpu, 95)), 2), "cpu_max_ms": round(float(cpu.max()), 2),
                "parts_mean_ms": {k: round(v / len(sel), 2) for k, v in parts.most_common()}}

    top = sorted(clips, key=lambda c: -c["cpu_ms"])[:5]
    return {
        "keyframes": summary([c for c in clips if c["key"]]),
        "other_frames": summary([c for c in clips if not c["key"]]),
        "all_frames": summary(clips),
        "slowest_clips": [{"cpu_ms": round(c["cpu_ms"], 1), "key": c["key"],
                           "parts": {k: round(v, 1) for k, v in sorted(c["parts"].items(), key=lambda kv: -kv[1])
                                     if v >= 2.0}} for c in top],
        "thread_cpu_ms_per_frame": {k: round((v - cpu0.get(k, 0)) * 1e3 / args.clips, 2) for k, v in cpu1.items()},
        "points": int(world.memory.num_points),
        "sha": {"frames": frames_h.hexdigest()[:16], "memory_after_every_clip": memory_h.hexdigest()[:16],
                "history": history_h.hexdigest()[:16]},
        "load_end": os.getloadavg(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fill", default="layout", choices=["layout", "legacy"])
    p.add_argument("--scene", default="room")
    p.add_argument("--clips", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    add_ab_arguments(p)
    args = p.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    if run_here(args, _child, {"fill": args.fill, "scene": args.scene}):
        return
    order = mirrored_order(args.roots, args.rounds)
    runs = []
    for name, root in order:
        root = str(Path(root).resolve())
        env = ab_env(root, NUMBA_NUM_THREADS="1")
        cmd = [sys.executable, str(Path(root) / "benchmarks" / "keyframe_update.py"), "--child",
               "--fill", args.fill, "--scene", args.scene, "--clips", str(args.clips), "--warmup", str(args.warmup),
               "--width", str(args.width), "--height", str(args.height)]
        if not (Path(root) / "benchmarks" / "keyframe_update.py").exists():  # a tree from before this script
            cmd[1] = str(Path(__file__).resolve())
        start, load = time.strftime("%H:%M:%S", time.gmtime()), os.getloadavg()
        log(f"{name} ({root}) from {start} UTC, load {load[0]:.1f}")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        runs.append({"tree": name, "start_utc": start, "load_start": load,
                     **json.loads(out.stdout.strip().splitlines()[-1])})
    emit({"fill": args.fill, "scene": args.scene, "order": [n for n, _ in order], "runs": runs})


if __name__ == "__main__":
    main()
