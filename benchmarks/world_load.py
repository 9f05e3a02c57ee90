"""Benchmark: loading a world played for 10 minutes, from its incremental log vs from one single-file snapshot.

The world is built at the scale of 10 minutes of Play at 30 fps (the soak's settings, 320x180): ``--frames``
history frames (every 4th a keyframe whose voxel set is indexed; the camera goes round a 20 s loop, so the
retrieval index compacts), a spatial memory of ``--points`` points, and an incremental save every ``--save-every``
frames (10 s of play) that also changes the colour of a tenth of the memory, as play does. Frames are one real
scene view re-encoded (the load never decodes them). Measured: ``WorldLog.load`` of the world directory
(``median_ms``) and, same run, ``World.load`` of the single-file snapshot of the same world (``baseline``), plus
the sizes on disk and the per-save write time.

    python benchmarks/world_load.py [--frames 18000 --points 1500000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit, log  # noqa: E402


def build(args, directory: Path):
    from spatia.world.camera import look_at
    from spatia.world.geometry import pack_voxel_coords
    from spatia.world.memory import SpatialMemory, Sphere
    from spatia.world.state import World
    from spatia.world.worldlog import WorldLog

    world = World.from_scene("room", 0, args.width, args.height)
    rng = np.random.default_rng(0)
    # memory: points on the walls of a 12 x 3 x 12 m box, at 1 cm voxels
    n = args.points
    face = rng.integers(0, 4, n)
    u = rng.integers(-600, 600, n)
    h = rng.integers(-150, 150, n)
    ijk = np.stack([np.where(face < 2, np.where(face == 0, -600, 600), u), h,
                    np.where(face >= 2, np.where(face == 2, -600, 600), u)], 1)
    keys = np.unique(pack_voxel_coords(ijk))
    n = keys.shape[0]
    arrays = {"voxel_keys": keys, "voxel_offsets": rng.integers(0, 255, (n, 3)).astype(np.uint8),
              "colors": rng.integers(0, 255, (n, 3)).astype(np.uint8),
              "observation_count": rng.integers(1, 50, n).astype(np.uint16),
              "last_seen_frame": np.zeros(n, np.int32)}
    world.memory = SpatialMemory.from_arrays(world.memory.config, arrays)
    rgb = world.history.get_rgb(0).copy()
    depth = world.history.get_depth(0)
    K = world.intrinsics
    wlog = WorldLog(directory)
    save_ms = []
    t_build = time.perf_counter()
    for f in range(1, args.frames):
        t = (f / 30.0) / 20.0  # laps of the 20 s loop
        a = 2 * np.pi * t
        centre = np.array([1.6 * np.cos(a), 0.0, 1.6 * np.sin(a)])
        pose = look_at(centre, 3 * centre + np.array([0.0, 0.0, 0.01]))
        if f % 4 == 0:  # a keyframe: the arc of wall the view faces (8 cm cubes as the history keeps them)
            ang = a + np.linspace(-0.5, 0.5, 120)
            hh = np.arange(-150, 150, 8)
            xyz = np.stack(np.broadcast_arrays(600 * np.cos(ang)[:, None], hh[None, :],
                                               600 * np.sin(ang)[:, None]), -1).reshape(-1, 3)
            vk = pack_voxel_coords(np.round(xyz).astype(np.int64))
        else:
            vk = np.zeros(0, np.int64)
        world.history.add(rgb, pose, K, vk, depth_m=depth if f % 4 == 0 else None)
        if f % args.save_every == 0:  # play since the last save re-observed the wall around where the camera is
            world.memory.recolor(Sphere([6.0 * np.cos(a), 0.0, 6.0 * np.sin(a)], 2.0), tuple(rng.integers(0, 255, 3)))
            world.history.flush()  # frames come 30 a second in play, not 300 at once: the encoder keeps up there
            t0 = time.perf_counter()
            wlog.write(wlog.prepare_save(world))
            save_ms.append((time.perf_counter() - t0) * 1e3)
            log(f"frame {f}: save {save_ms[-1]:.0f} ms, log {wlog.log_bytes / 2**20:.1f} MiB")
    wlog.write(wlog.prepare_save(world))
    return world, wlog, save_ms, time.perf_counter() - t_build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=18000)
    p.add_argument("--points", type=int, default=1_500_000)
    p.add_argument("--save-every", type=int, default=300)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=180)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from spatia.world.state import World
    from spatia.world.worldlog import WorldLog

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "w"
        world, wlog, save_ms, build_s = build(args, directory)
        single = Path(tmp) / "world.spw"
        t0 = time.perf_counter()
        world.save(single)
        single_save_ms = (time.perf_counter() - t0) * 1e3
        single_bytes = single.stat().st_size
        n_frames, n_points = len(world.history), world.memory.num_points
        indexed = int((world.history.indexed() & (world.history.voxels.sizes() > 0)).sum())
        log_bytes, frames_bytes = wlog.log_bytes, (directory / "frames.bin").stat().st_size
        world.close()
        del world
        load_ms, base_ms = [], []
        for _ in range(args.repeats):
            copy = Path(tmp) / f"copy{len(load_ms)}"
            shutil.copytree(directory, copy)  # loading cuts frames.bin to the commit: a copy per run
            t0 = time.perf_counter()
            loaded, _ = WorldLog.load(copy)
            load_ms.append((time.perf_counter() - t0) * 1e3)
            assert len(loaded.history) == n_frames and loaded.memory.num_points == n_points
            loaded.close()
            del loaded
            t0 = time.perf_counter()
            base = World.load(single)
            base_ms.append((time.perf_counter() - t0) * 1e3)
            base.close()
            del base
    emit({
        "name": "world_load",
        "sizes": {"frames": n_frames, "keyframes_still_indexed": indexed, "keyframes": (n_frames - 1) // 4, "memory_points": n_points,
                  "saves": len(save_ms) + 1, "width": args.width, "height": args.height},
        "median_ms": round(float(np.median(load_ms)), 1),
        "baseline_median_ms": round(float(np.median(base_ms)), 1),
        "baseline": "World.load of the single-file snapshot of the same world (same run)",
        "log_mib": round(log_bytes / 2**20, 1),
        "frames_mib": round(frames_bytes / 2**20, 1),
        "single_file_mib": round(single_bytes / 2**20, 1),
        "incremental_save_ms_median": round(float(np.median(save_ms)), 1) if save_ms else None,
        "single_file_save_ms": round(single_save_ms, 1),
        "build_s": round(build_s, 1),
        "loadavg": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
