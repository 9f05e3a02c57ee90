"""Benchmark: the frame path's two serial-looking numba kernels, this tree's against a base commit's, at 1 and 2
numba threads.

* ``see_through``: ``see_through_pixels(depth, valid, radius_px)`` (``_see_through``), radius round(0.02 W) as
  ``GeometricGenerator`` asks for it;
* ``fill``: ``fill_holes_background(depth, valid, max_span_px=GeometricConfig.small_hole_px)``
  (``_fill_kernel_fused``) on the same render with the see-through pixels removed (``geometric._without``), as the
  layout fill gets it.

Inputs: the memory rendered along served play's walk (forward 1 m/s while turning 0.4 rad/s, 10 one-frame clips a
second; the memory grows as the clips are generated) of a procedural scene at 640x360, every ``--stride``-th clip:
``--frames`` renders. The base kernels are the files at ``--base`` (``git show``), loaded as modules of their own
(uncached). Per thread count, ``--repeats`` rounds, each timing every frame through both trees (the order
alternated round by round); per kernel and tree: ms a frame (wall, the round's sum over the frames / frames),
min and median over the rounds, and page faults a call. Both trees' outputs are compared bit for bit at every
thread count (``identical``).

The heap is kept (glibc's trim and mmap thresholds raised): in the served walk these kernels fault a few times a
call (3 and 9, measured with ``server.host.bound_heap`` on a world thread), while a script that calls them alone
would give every [H, W] temporary fresh pages each call (~600 faults, 40 % of the see-through pass). The OpenMP
workers sleep between kernels (``OMP_WAIT_POLICY=PASSIVE``, the server's setting). ``median_ms`` /
``baseline_median_ms``: both kernels' median ms a frame summed, at 2 threads, this tree / the base.

    python benchmarks/frame_kernels.py [--scene room] [--frames 12] [--stride 8] [--repeats 9] [--base a3ae423]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numba starts its threads (the server's setting)

import argparse  # noqa: E402
import collections  # noqa: E402
import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import importlib.util  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FILES = {"see_through": "model/fill/image/see_through.py", "fill": "world/update.py"}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def keep_heap() -> bool:
    """Raise glibc's trim and mmap thresholds, so that freed temporaries stay in the heap (module doc)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 25))


def base_module(base: str, name: str, tmp: Path):
    """The base commit's version of kernel file ``name`` as a module of its own (numba's disk cache off: its
    kernels compile in this process, none written beside the temporary copy)."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{base}:{FILES[name]}"], check=True,
                          capture_output=True, text=True).stdout
    path = tmp / f"_base_{name}.py"
    path.write_text(text.replace("cache=True", "cache=False"))
    spec = importlib.util.spec_from_file_location(f"_base_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def walk_renders(scene: str, frames: int, stride: int, width: int, height: int):
    """``frames`` memory renders ``(depth [H, W] float32, valid [H, W] bool)`` along served play's walk (doc)."""
    import numpy as np

    from spatia.model import make_generator
    from spatia.server.config import ServerConfig
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    server = ServerConfig()
    world = World.from_scene(scene, 0, width, height)
    engine = Engine(world, make_generator("geometric", fill="layout"), EngineConfig(
        clip=ClipConfig(4, 6, 2), keyframe_stride=server.play_keyframe_stride,
        reuse_references_within=server.play_reuse_references_within,
        reuse_references_clips=server.play_reuse_references_clips))
    poses = np.asarray(ActionIntegrator(world.current_c2w, ControlConfig(fps=10)).run(
        [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=0.1)] * (frames * stride + 1)))
    out = []
    for i in range(frames * stride):
        collections.deque(engine.generate_clip(poses[i:i + 1]), maxlen=0)
        if i % stride == stride - 1:
            r = world.memory.render(world.intrinsics, poses[i + 1])
            out.append((np.ascontiguousarray(r.depth_m, np.float32), np.ascontiguousarray(r.valid, bool)))
    return out


def time_round(calls, inputs) -> tuple[float, float]:
    """One pass of ``calls`` over ``inputs``: (wall ms a frame, minor page faults a call) on this thread."""
    faults0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    t0 = time.perf_counter()
    for args in inputs:
        calls(*args)
    wall = (time.perf_counter() - t0) * 1e3 / len(inputs)
    return wall, (resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults0) / len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", default="room")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--stride", type=int, default=8, help="clips of the walk between two renders")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--base", default="a3ae423", help="the commit whose kernels are the baseline")
    args = parser.parse_args()

    heap_kept = keep_heap()
    import numba
    import numpy as np

    from spatia.model.fill.image import see_through as st_new
    from spatia.model.geometric import GeometricConfig, _without
    from spatia.world import update as fill_new

    with tempfile.TemporaryDirectory() as tmp:
        st_base, fill_base = base_module(args.base, "see_through", Path(tmp)), base_module(args.base, "fill", Path(tmp))
    radius_px = max(1, round(GeometricConfig().see_through_frac * args.width))
    span_px = GeometricConfig().small_hole_px
    log(f"walking {args.scene}: {args.frames} renders, one every {args.stride} clips")
    renders = walk_renders(args.scene, args.frames, args.stride, args.width, args.height)
    st_inputs = [(d, v, radius_px) for d, v in renders]
    fill_inputs = []
    for d, v in renders:
        v2, d2 = _without(v, d, st_new.see_through_pixels(d, v, radius_px))
        fill_inputs.append((d2, v2, 0.05, span_px))
    kernels = {
        "see_through": (st_inputs, st_base.see_through_pixels, st_new.see_through_pixels),
        "fill": (fill_inputs, fill_base.fill_holes_background, fill_new.fill_holes_background),
    }
    result: dict = {"scene": args.scene, "frames": args.frames, "width": args.width, "height": args.height,
                    "radius_px": radius_px, "max_span_px": span_px, "repeats": args.repeats, "base": args.base,
                    "heap_kept": heap_kept, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "hole_fraction": round(float(np.mean([(~v).mean() for _, v, _, _ in fill_inputs])), 4),
                    "see_through_fraction": round(float(np.mean([st_new.see_through_pixels(*a).mean()
                                                                 for a in st_inputs])), 4)}
    identical = True
    for threads in (1, 2):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        for name, (inputs, base, new) in kernels.items():
            for a in inputs:  # (also compiles both before timing)
                same = np.array_equal(np.asarray(base(*a)).view(np.uint8), np.asarray(new(*a)).view(np.uint8))
                identical &= bool(same)
            times: dict = {"base": [], "new": []}
            faults: dict = {"base": [], "new": []}
            for rep in range(args.repeats):
                order = (("base", base), ("new", new)) if rep % 2 == 0 else (("new", new), ("base", base))
                for tree, fn in order:
                    wall, fault = time_round(fn, inputs)
                    times[tree].append(wall)
                    faults[tree].append(fault)
            result[f"{name}_threads_{threads}"] = {
                **{f"{tree}_min_ms": round(min(t), 3) for tree, t in times.items()},
                **{f"{tree}_median_ms": round(statistics.median(t), 3) for tree, t in times.items()},
                **{f"{tree}_faults_per_call": round(statistics.median(f), 1) for tree, f in faults.items()},
            }
            log(f"{name} at {threads} thread(s): {result[f'{name}_threads_{threads}']}")
    result["identical"] = identical
    result["median_ms"] = round(sum(result[f"{k}_threads_2"]["new_median_ms"] for k in kernels), 3)
    result["baseline_median_ms"] = round(sum(result[f"{k}_threads_2"]["base_median_ms"] for k in kernels), 3)
    emit(result)


if __name__ == "__main__":
    main()
