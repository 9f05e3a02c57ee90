"""Benchmark: a world save's per-block work on the saver thread (world/worldlog.py ``WorldLog.write``), new vs the
former code on the same memory, alternated in one process.

A world (``room``, ``--width x --height``) is played ``--clips`` four-frame clips along host_save.py's walk; its
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=60)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args()

    import msgpack
    import zstandard

    from spatia.model.geometric import GeometricGenerator
    from spatia.world import worldlog as wl
    from spatia.world.actions import ClipConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    world = World.from_scene("room", 0, args.width, args.height)
    engine = Engine(world, GeometricGenerator(), EngineConfig(clip=ClipConfig(4, 6, 2), keyframe_stride=4))
    c2w = world.origin_c2w.copy()
    log(f"playing {args.clips} clips")
    for _ in range(args.clips):
        poses = []
        for _ in range(4):  # host_save.py's walk: 5 cm forward, 2 deg turn a frame
            yaw = np.deg2rad(2.0)
            R = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
            c2w = c2w.copy()
            c2w[:3, :3] = c2w[:3, :3] @ R
            c2w[:3, 3] += c2w[:3, 2] * 0.05
            poses.append(c2w)
        for _ in engine.generate_clip(np.stack(poses), None, 0):
            pass
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
