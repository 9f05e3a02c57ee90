"""Benchmark: ``SpatialMemory.render`` to 640 x 480.

Scenes (d = 1 cm, points on voxel centres, procedural colours):

* ``plane_2m``: a 14.14 m x 14.14 m wall of 2.0 M points, the camera 16.5 m in front of it so that every point is in
  view (about 9 points per pixel, 1-pixel splats). Target: median <= 15 ms. The naive numpy reference
  (``world._reference.reference_render``: every point, every splat pixel, ``np.minimum.at``) is timed on the same
  scene and must give the same image.
* ``floor_2m``: a floor seen from 1.6 m up, pitched 20 deg down: the 2.0 M floor points nearest the camera that are
  in view, so splats range from 1 px (far) to the 4 px cap (near).
* ``close_up``: what the walking camera sees when it stops at a wall (collision keeps it ~0.25 m away): a 2 m x 2 m
  wall 0.3 m in front, and a wall along the view from 0.3 m to 10 m beside the camera (grazing). Each rendered with
  the default splat cap and with the former cap of 4 px (baseline), in the same run: median time and the share of
  pixels the wall covers (at 0.3 m a 1 cm voxel spans ~21 px at this focal, so 4 px splats leave a grid of holes).
* scaling: ``in_view_1m`` (a 1.0 M-point wall fully in view) against ``memory_10m`` (the same wall plus 9.0 M
  points outside the frustum: beside, behind and above the camera). Block culling should keep the ratio < 2.

Prints one JSON object on stdout, progress on stderr. Timings on the shared 2-core machine are noisy: each entry
also has ``cpu_median_ms`` (CPU time summed over threads), and ``one_thread`` times ``plane_2m`` on one core.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log, time_ms  # noqa: E402

from spatia.world import _reference as ref  # noqa: E402
from spatia.world.camera import Intrinsics, look_at  # noqa: E402
from spatia.world.geometry import pack_voxel_coords  # noqa: E402
from spatia.world.memory import MemoryConfig, SpatialMemory, depth_quant, splat_k  # noqa: E402

CAMERA = Intrinsics.from_fov(60.0, 640, 480)
CONFIG = MemoryConfig(voxel_size_m=0.01)


def wall_ijk(side: int, z_index: int, x0: int = 0, y0: int = 0) -> np.ndarray:
    """``[side * side, 3]`` voxel coordinates of a wall in the plane k = ``z_index`` centred on (x0, y0)."""
    g = np.arange(side) - side // 2
    i, j = np.meshgrid(g + x0, g + y0, indexing="ij")
    return np.stack([i.ravel(), j.ravel(), np.full(i.size, z_index)], axis=1)


def memory_from_ijk(ijk: np.ndarray, config: MemoryConfig = CONFIG) -> SpatialMemory:
    """A memory with one point at the centre of each voxel, coloured by a checker + gradient texture."""
    ijk = np.asarray(ijk, dtype=np.int64)
    colors = np.empty((len(ijk), 3), np.uint8)
    colors[:, 0] = 60 + 150 * (((ijk[:, 0] // 5) + (ijk[:, 1] // 5) + (ijk[:, 2] // 5)) % 2)
    colors[:, 1] = (ijk[:, 0] * 3) % 256
    colors[:, 2] = (ijk[:, 1] * 7 + ijk[:, 2]) % 256
    arrays = {
        "voxel_keys": pack_voxel_coords(ijk),
        "voxel_offsets": np.full((len(ijk), 3), 128, np.uint8),
        "colors": colors,
        "observation_count": np.ones(len(ijk), np.uint16),
        "last_seen_frame": np.zeros(len(ijk), np.int32),
    }
    mem = SpatialMemory.from_arrays(config, arrays)
    mem.render(CAMERA, np.eye(4))  # sorts the points into culling blocks once (a one-off, like after a load)
    return mem


def floor_ijk(c2w: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` floor voxels (plane y = +1.6 m, the world's y points down) nearest the camera and in view."""
    g = np.arange(-1500, 1500)
    i, k = np.meshgrid(g, np.arange(0, 3000), indexing="ij")
    ijk = np.stack([i.ravel(), np.full(i.size, 160), k.ravel()], axis=1)
    pts = (ijk + 0.5) * CONFIG.voxel_size_m
    w2c = np.linalg.inv(c2w)
    pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = CAMERA.fx * pc[:, 0] / z + CAMERA.cx
        v = CAMERA.fy * pc[:, 1] / z + CAMERA.cy
    inside = (z > CONFIG.min_depth_m) & (u >= 0) & (u < CAMERA.width) & (v >= 0) & (v < CAMERA.height)
    idx = np.flatnonzero(inside)
    if len(idx) < count:
        raise RuntimeError(f"floor grid too small: {len(idx)} points in view, need {count}")
    nearest = idx[np.argsort(z[idx], kind="stable")[:count]]
    return ijk[nearest]


def reference_image(mem: SpatialMemory, c2w: np.ndarray):
    a, cfg = mem.to_arrays(), mem.config
    return ref.reference_render(
        a["voxel_keys"], a["voxel_offsets"], a["colors"], cfg.voxel_size_m, CAMERA, c2w, cfg.min_depth_m,
        cfg.max_depth_m, splat_k(cfg, CAMERA), cfg.max_splat_px, depth_quant(cfg),
    )


def close_up(args) -> dict:
    """Walls seen from 0.3 m: the default splat cap against the former 4 px cap (baseline), same scenes."""
    front_ijk = wall_ijk(200, 30)  # 2 m x 2 m, plane z = 0.3 m
    g = np.arange(-150, 150)
    j, k = np.meshgrid(g, np.arange(30, 1000), indexing="ij")
    side_ijk = np.stack([np.full(j.size, 30), j.ravel(), k.ravel()], axis=1)  # plane x = 0.3 m, z 0.3-10 m
    pose = np.eye(4)
    out = {}
    for name, ijk in (("front_wall_0.3m", front_ijk), ("grazing_wall_0.3-10m", side_ijk)):
        row = {"points": len(ijk)}
        for label, cfg in (("default_cap", CONFIG), ("cap_4px_baseline", MemoryConfig(voxel_size_m=0.01,
                                                                                          max_splat_px=4))):
            mem = memory_from_ijk(ijk, cfg)
            r = mem.render(CAMERA, pose, return_point_ids=True)
            want = reference_image(mem, pose)
            row[label] = {
                **time_ms(lambda: mem.render(CAMERA, pose), args.repeats, warmup=2),
                "max_splat_px": cfg.max_splat_px,
                "covered_share": round(float(r.valid.mean()), 4),
                "matches_reference": bool(np.array_equal(r.point_ids, want[3]) and np.array_equal(r.rgb, want[0])),
            }
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--baseline-repeats", type=int, default=2)
    parser.add_argument("--skip-scaling", action="store_true", help="leave out the 10 M-point memory")
    args = parser.parse_args()

    log("plane_2m: building 2.0 M points")
    plane = memory_from_ijk(wall_ijk(1414, 0))
    plane_pose = look_at([0.0, 0.0, -16.5], [0.0, 0.0, 0.0])
    fast = time_ms(lambda: plane.render(CAMERA, plane_pose), args.repeats, warmup=2)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # the CPU cost of one render on one core, for reading the contended wall times
    one_thread = time_ms(lambda: plane.render(CAMERA, plane_pose), args.repeats, warmup=1)
    numba.set_num_threads(threads)
    log(f"  fast median {fast['median_ms']} ms; naive numpy reference ...")
    base = time_ms(lambda: reference_image(plane, plane_pose), args.baseline_repeats, warmup=0)
    got = plane.render(CAMERA, plane_pose, return_point_ids=True)
    want = reference_image(plane, plane_pose)
    matches = bool(np.array_equal(got.point_ids, want[3]) and np.array_equal(got.rgb, want[0]))
    result = {
        "benchmark": "render",
        "median_ms": fast["median_ms"],
        "baseline_median_ms": base["median_ms"],
        "speedup": round(base["median_ms"] / fast["median_ms"], 1),
        "matches_reference": matches,
        "target_median_ms": 15.0,
        "sizes": {
            "width": CAMERA.width, "height": CAMERA.height, "points": plane.num_points,
            "points_in_view": plane.num_points, "valid_pixels": int(got.valid.sum()),
        },
        "fast": fast,
        "one_thread": one_thread,
        "baseline": base,
    }

    log("floor_2m: building 2.0 M points in view")
    floor_pose = look_at([0.0, 0.0, 0.0], [0.0, np.sin(np.radians(20.0)), np.cos(np.radians(20.0))])
    floor = memory_from_ijk(floor_ijk(floor_pose, 2_000_000))
    r = floor.render(CAMERA, floor_pose)
    result["floor_2m"] = {
        **time_ms(lambda: floor.render(CAMERA, floor_pose), args.repeats, warmup=2),
        "points_in_view": floor.num_points, "valid_pixels": int(r.valid.sum()),
        "depth_range_m": [round(float(r.depth_m[r.valid].min()), 2), round(float(r.depth_m.max()), 2)],
    }
    del floor

    log("close_up: walls 0.3 m from the camera, default cap vs 4 px")
    result["close_up"] = close_up(args)

    if not args.skip_scaling:
        wall = wall_ijk(1000, 0)  # 10 m x 10 m; at 12 m the view is 13.9 m x 10.4 m
        pose = look_at([0.0, 0.0, -12.0], [0.0, 0.0, 0.0])
        log("scaling: 1.0 M points, all in view")
        small = memory_from_ijk(wall)
        t_small = time_ms(lambda: small.render(CAMERA, pose), args.repeats, warmup=2)
        img_small = small.render(CAMERA, pose).rgb
        del small
        log("scaling: the same wall + 9.0 M points out of view")
        # 9 walls of 1 M points: beside (x +- 25 m), behind the camera (z = -30 m) and overhead, all outside the
        # frustum, several of them closer to the camera than the visible wall
        others = [
            wall_ijk(1000, z, x0=x, y0=y)
            for x, y, z in [(-2500, 0, 0), (2500, 0, 0), (-2500, 0, -1500), (2500, 0, -1500), (0, 0, -3000),
                            (-2500, 0, -3000), (2500, 0, -3000), (0, -2500, -600), (0, 2500, -600)]
        ]
        big = memory_from_ijk(np.concatenate([wall] + others))
        t_big = time_ms(lambda: big.render(CAMERA, pose), args.repeats, warmup=2)
        same = bool(np.array_equal(big.render(CAMERA, pose).rgb, img_small))
        result["scaling"] = {
            "in_view_1m": {**t_small, "points": 1_000_000},
            "memory_10m": {**t_big, "points": big.num_points, "points_in_view": 1_000_000},
            "ratio": round(t_big["median_ms"] / t_small["median_ms"], 2),
            "target_ratio": 2.0,
            "same_image": same,
            "bytes_per_point_10m": round(big.bytes_per_point, 2),
        }
        del big
    emit(result)


if __name__ == "__main__":
    main()
