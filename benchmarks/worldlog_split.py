"""Benchmark: a world save's per-block work on the saver thread (world/worldlog.py ``WorldLog.write``), new vs the
former code on the same memory, alternated in one process.

A world (``room``, ``--width x --height``) is played ``--clips`` four-frame clips along play.py's walk; its
memory arrays (``SpatialMemory.to_arrays``) are then split into log blocks and every block digested (what every
save does) and packed (what a world's first save does; later saves pack only the blocks that changed):

- baseline: ``split_memory_reference`` (numpy canonical keys, quicksort, fancy gathers), ``_digest`` per block,
  ``_pack_arrays`` with a new zstd compressor per block and copied raw bytes (the code before session 16);
- new: ``MemoryBlocks.of`` (numba canonical keys, a stable sort, nogil gathers), ``MemoryBlocks.digests``,
  ``_pack_arrays`` with one compressor.

Both give the same blocks, digests and bytes (checked here, and in tests/test_worldlog.py). Reported: per variant
the p50 / min of the thread's CPU ms and wall ms over ``--repeats`` alternations (base new new base ...).

    python benchmarks/worldlog_split.py [--clips 60 --width 640 --height 360 --repeats 4]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit, log  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=4, help="alternations of the two variants")
    ap.add_argument("--clips", type=int, default=60, help="four-frame clips played before the memory is split")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    args = ap.parse_args()

    import msgpack
    import zstandard

    from spatia.model.geometric import GeometricGenerator
    from spatia.world import worldlog as wl
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    world = World.from_scene("room", 0, args.width, args.height)
    engine = Engine(world, GeometricGenerator(), EngineConfig(clip=ClipConfig(4, 6, 2), keyframe_stride=4))
    log(f"playing {args.clips} clips")
    walk = ActionIntegrator(world.current_c2w, ControlConfig(fps=30)).run(  # play.py's walk, four frames a clip
        [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1 / 30)] * (4 * args.clips))
    for k in range(args.clips):
        collections.deque(engine.generate_clip(np.asarray(walk[4 * k : 4 * k + 4])), maxlen=0)
    arrays = world.memory.to_arrays()

    def pack_before(block):
        doc = {n: [a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes()] for n, a in block.items()}
        return zstandard.ZstdCompressor(level=wl._ZSTD_LEVEL).compress(msgpack.packb(doc, use_bin_type=True))

    def before(pack: bool):
        blocks = wl.split_memory_reference(arrays)
        digests = {k: wl._digest(b) for k, b in blocks.items()}
        return digests, ({k: pack_before(b) for k, b in blocks.items()} if pack else None)

    def new(pack: bool):
        split = wl.MemoryBlocks.of(arrays)
        digests = dict(zip(split.keys, split.digests()))
        zstd = zstandard.ZstdCompressor(level=wl._ZSTD_LEVEL)
        return digests, ({k: wl._pack_arrays(split.block(i), zstd) for i, k in enumerate(split.keys)}
                         if pack else None)

    if before(True) != new(True):  # also the first (compiling) call of the kernels, untimed
        raise SystemExit("the new split, digests or packing differ from the former code")
    t0, load0 = time.time(), os.getloadavg()
    times = {(name, pack): [] for name in ("before", "new") for pack in (False, True)}
    for r in range(args.repeats):
        for name, fn in (("before", before), ("new", new)) if r % 2 == 0 else (("new", new), ("before", before)):
            for pack in (False, True):
                w, c = time.perf_counter(), time.thread_time()
                fn(pack)
                times[name, pack].append(((time.thread_time() - c) * 1e3, (time.perf_counter() - w) * 1e3))

    def stats(rows):
        cpu, wall = [x for x, _ in rows], [y for _, y in rows]
        return {"cpu_p50_ms": round(statistics.median(cpu), 1), "cpu_min_ms": round(min(cpu), 1),
                "wall_p50_ms": round(statistics.median(wall), 1), "wall_min_ms": round(min(wall), 1)}

    res = {f"{name}_{'split_digest_pack_all' if pack else 'split_digest'}": stats(rows)
           for (name, pack), rows in times.items()}
    emit({
        "name": "worldlog_split",
        "sizes": {"clips": args.clips, "width": args.width, "height": args.height, "repeats": args.repeats,
                  "memory_points": int(arrays["voxel_keys"].shape[0]), "blocks": len(new(False)[0])},
        **res,
        "median_ms": res["new_split_digest_pack_all"]["cpu_p50_ms"],
        "baseline_median_ms": res["before_split_digest_pack_all"]["cpu_p50_ms"],
        "baseline": "the former split (numpy), per-block digests and a new zstd compressor per block, same memory",
        "wall_s": round(time.time() - t0, 1), "load_start": load0, "load": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
