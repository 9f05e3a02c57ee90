"""Benchmark: the frame path's fill kernels on the arguments a room walk hands them, before and after.

A served play session's world thread runs numba with 2 threads (one session) or 1 (four sessions). This script walks
the room scene as ``spatia serve`` plays it (the geometric generator's layout fill, the server's play settings),
records the arguments of every call of ``hole_kernels.hole_rays``, ``hole_kernels.hole_depth_texels`` and
``geometric.pushpull_fill`` (copies, before the call writes its outputs), keeps ``--keep`` calls of each spread
over the walk, and times each kernel against the one it replaced (min of ``--repeats`` runs per call, old and new
alternating) at 1 and at 2 numba threads, checking that every output is the same bits.

* ``hole_rays``: old ``hole_kernels._hole_rays_serial`` (one serial pass, still the 1-thread path), new
  ``hole_kernels.hole_rays`` (bands of rows in parallel with 2 threads);
* ``hole_depth_texels``: old ``hole_kernels._hole_depth_texels_plain``, new ``hole_kernels.hole_depth_texels``;
* ``pushpull``: ``geometric.pushpull_fill`` (unchanged: old and new the same function, for its share).

Per kernel: ``old_ms`` / ``new_ms`` per call (the mean over the kept calls of each call's minimum) at each thread
count, and ``*_ms_per_frame`` (times the calls per frame of the walk).

    .venv/bin/python benchmarks/fill_kernels.py --clips 60 --keep 12 --repeats 7
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log  # noqa: E402


def capture(clips: int, clip_poses: int, keep: int) -> tuple[dict[str, list[tuple]], dict[str, float]]:
    """Walk the room (forward, turning) ``clips`` clips of ``clip_poses`` poses; per kernel ``keep`` calls' arguments
    spread over the walk, and its calls per generated frame."""
    import spatia.server.host  # noqa: F401 -- the served process's imports (numba's start, the kernel warm-up)
    from spatia.model import geometric, make_generator
    from spatia.model.fill.image import hole_kernels
    from spatia.server.config import ServerConfig
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    calls: dict[str, list[tuple]] = collections.defaultdict(list)
    originals = []

    def record(module, name: str, key: str) -> None:
        fn = getattr(module, name)
        originals.append((module, name, fn))

        def recorded(*args):
            calls[key].append(tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args))
            return fn(*args)

        setattr(module, name, recorded)

    record(hole_kernels, "hole_rays", "hole_rays")
    record(hole_kernels, "hole_depth_texels", "hole_depth_texels")
    record(geometric, "pushpull_fill", "pushpull")
    try:
        server = ServerConfig()
        world = World.from_scene("room", 0, 640, 360)
        engine = Engine(world, make_generator("geometric", fill="layout"), EngineConfig(
            clip=ClipConfig(4, 6, 2), keyframe_stride=server.play_keyframe_stride,
            reuse_references_within=server.play_reuse_references_within,
            reuse_references_clips=server.play_reuse_references_clips))
        steps = [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=0.1)] * (clips * clip_poses)
        poses = np.asarray(ActionIntegrator(world.current_c2w, ControlConfig(fps=10)).run(steps))
        frames = 0
        for c in range(clips):
            for _ in engine.generate_clip(poses[c * clip_poses:(c + 1) * clip_poses]):
                frames += 1
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)
    kept = {k: [v[i] for i in np.linspace(0, len(v) - 1, min(keep, len(v))).astype(int)] for k, v in calls.items()}
    return kept, {k: len(v) / max(frames, 1) for k, v in calls.items()}


def _same(a, b) -> bool:
    """Outputs equal bit for bit (tuples element by element; floats compared as their bytes, NaN included)."""
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _depth_texels_outputs(args, out):
    """``hole_depth_texels``' outputs that are defined: the depths it wrote, and rows / cols / level only where the
    plane is a synthesis model's (kind 1; other rows are left unset)."""
    order, starts, rows, cols, level, uv, footprint = out
    kind = args[21]
    one = np.zeros(len(order), bool)
    for b in np.flatnonzero(kind == 1):
        one[starts[b]:starts[b + 1]] = True
    return args[19].copy(), order, starts, rows[one], cols[one], level[one], uv, footprint


def kernels():
    """name -> (old, new, outputs(args, result)) ; args are copied per call where the kernel writes into them."""
    from spatia.model.fill.image import hole_kernels as hk
    from spatia.model.fill.image import pushpull as pp

    return {
        "hole_rays": (hk._hole_rays_serial, hk.hole_rays, lambda args, out: out),
        "hole_depth_texels": (hk._hole_depth_texels_plain, hk.hole_depth_texels, _depth_texels_outputs),
        "pushpull": (pp.pushpull_fill, pp.pushpull_fill, lambda args, out: out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--clip-poses", type=int, default=4, help="poses per clip of the walk")
    parser.add_argument("--keep", type=int, default=12, help="calls of each kernel kept and timed")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per call, kernel and thread count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    numba.set_num_threads(1)
    t0 = time.perf_counter()
    calls, per_frame = capture(args.clips, args.clip_poses, args.keep)
    log(f"captured in {time.perf_counter() - t0:.1f} s: " + ", ".join(f"{k} {len(v)}" for k, v in calls.items()))
    result: dict = {"clips": args.clips, "clip_poses": args.clip_poses, "repeats": args.repeats, "kernels": {}}
    identical = True
    for name, (old, new, outputs) in kernels().items():
        entry: dict = {"calls_kept": len(calls[name]), "calls_per_frame": round(per_frame.get(name, 0.0), 3)}
        for threads in args.threads:
            numba.set_num_threads(threads)
            best = {"old": [], "new": []}
            for call in calls[name]:
                runs = {"old": np.inf, "new": np.inf}
                outs = {}
                for _ in range(args.repeats + 1):  # the first round untimed (compiles, pages in)
                    for label, fn in (("old", old), ("new", new)):
                        fresh = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in call)
                        t = time.perf_counter()
                        out = fn(*fresh)
                        runs[label] = min(runs[label], time.perf_counter() - t)
                        outs[label] = outputs(fresh, out)
                if not _same(outs["old"], outs["new"]):
                    identical = False
                    log(f"{name}: outputs differ at {threads} threads")
                for label in runs:
                    best[label].append(runs[label] * 1e3)
            for label in ("old", "new"):
                ms = float(np.mean(best[label])) if best[label] else 0.0
                entry[f"{label}_ms_{threads}t"] = round(ms, 4)
                entry[f"{label}_ms_per_frame_{threads}t"] = round(ms * entry["calls_per_frame"], 4)
            log(f"{name} {threads}t: old {entry[f'old_ms_{threads}t']:.3f} ms, new {entry[f'new_ms_{threads}t']:.3f}")
        result["kernels"][name] = entry
    numba.set_num_threads(1)
    result["identical"] = identical
    emit(result)


if __name__ == "__main__":
    main()
