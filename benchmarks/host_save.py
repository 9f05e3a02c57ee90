"""Benchmark: a played world's per-clip save in the server's ``WorldHost``, incremental log vs the former single file.

A world (``room`` scene, ``--width x --height``) is played clip by clip with the geometric generator on a path
that walks forward while turning; after every clip the host saves it (``WorldHost.save_now``: copy on the world's
thread + ``WorldLog.write``, what ``--save-interval-s 0`` does after each clip). Baseline, same run, same world
state: the former server's save, ``snapshot.save(path, world.to_payload())`` (the whole world, msgpack, atomic
write). Reported: median wall and CPU ms per save, bytes written per save, and the bytes on disk at the end.

    python benchmarks/host_save.py [--clips 30 --width 320 --height 180]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit, log  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=30)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=180)
    args = p.parse_args()
    if args.clips < 2:
        raise SystemExit("--clips must be >= 2 (the first save of each kind is reported apart)")

    from tqdm import tqdm

    from spatia.model.geometric import GeometricGenerator
    from spatia.server.host import WorldHost
    from spatia.world import snapshot
    from spatia.world.actions import ClipConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import SNAPSHOT_VERSION, World

    world = World.from_scene("room", 0, args.width, args.height)
    engine = Engine(world, GeometricGenerator(), EngineConfig(clip=ClipConfig(4, 6, 2), keyframe_stride=4))
    new_wall, new_cpu, new_bytes, old_wall, old_cpu, old_bytes = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        host = WorldHost(world, Path(tmp) / "worlds" / "w")
        single = Path(tmp) / "w.msgpack"
        c2w = world.origin_c2w.copy()
        for _ in tqdm(range(args.clips), desc="clips", file=sys.stderr):
            poses = []
            for _ in range(4):  # 4 frames forward 5 cm while turning 2 deg each
                yaw = np.deg2rad(2.0)
                R = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
                c2w = c2w.copy()
                c2w[:3, :3] = c2w[:3, :3] @ R
                c2w[:3, 3] += c2w[:3, 2] * 0.05
                poses.append(c2w)
            for _ in engine.generate_clip(np.stack(poses), None, 0):
                pass
            w0, c0 = time.perf_counter(), time.process_time()
            host.save_now()
            new_wall.append((time.perf_counter() - w0) * 1e3)
            new_cpu.append((time.process_time() - c0) * 1e3)
            new_bytes.append(host.last_save_bytes)
            w0, c0 = time.perf_counter(), time.process_time()
            old_bytes.append(snapshot.save(single, world.to_payload(), version=SNAPSHOT_VERSION))
            old_wall.append((time.perf_counter() - w0) * 1e3)
            old_cpu.append((time.process_time() - c0) * 1e3)
        disk = host.snapshot_bytes
        host.close()

    def med(v):  # the first save of each kind writes everything: reported apart
        return round(statistics.median(v[1:]), 1)

    emit({
        "name": "host_save",
        "sizes": {"clips": args.clips, "width": args.width, "height": args.height, "frames_per_clip": 4,
                  "memory_points": int(world.memory.num_points), "history_frames": len(world.history)},
        "median_ms": med(new_wall), "cpu_median_ms": med(new_cpu), "bytes_per_save_median": int(med(new_bytes)),
        "first_save_ms": round(new_wall[0], 1), "disk_bytes_end": int(disk),
        "baseline": "former server save: snapshot.save(world.to_payload()) single msgpack file, same states",
        "baseline_median_ms": med(old_wall), "baseline_cpu_median_ms": med(old_cpu),
        "baseline_bytes_per_save_median": int(med(old_bytes)),
        "load": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
