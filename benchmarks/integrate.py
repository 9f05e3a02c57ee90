"""Benchmark: ``SpatialMemory.integrate`` of one 640 x 480 RGB-D frame into a 2 M-point memory.

Scene: a closed room 7.5 m x 3 m x 7.5 m (walls, floor and ceiling in the middle of a voxel layer, so that re-observed
surfaces do not flicker between two layers), d = 1 cm. The memory starts with every surface voxel of the room (2.0 M
points). Frames are the room's analytic z-depth and a procedural texture seen from a camera walking and turning
inside it. Target: median <= 25 ms per frame.

* ``median_ms``: frames of the known room (re-observation: almost every pixel updates an existing point).
* ``new_surface``: the same frames into a 2 M-point memory of a different room 50 m away, so every voxel is new
  (the memory grows; growth re-hashes now and then, which shows in max_ms).
* ``baseline_median_ms``: the naive reference (``world._reference``: numpy unprojection + a Python dict merge,
  sample by sample) on the same frames and an equal dict memory; its result is checked against the fast one.

Prints one JSON object on stdout, progress on stderr. Timings on the shared 2-core machine are noisy: each entry
also has ``cpu_median_ms`` (CPU time summed over threads), and ``one_thread`` times the known room on one core.
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
from spatia.world.geometry import pack_voxel_coords, pixel_rays  # noqa: E402
from spatia.world.memory import MemoryConfig, SpatialMemory  # noqa: E402

CAMERA = Intrinsics.from_fov(60.0, 640, 480)
CONFIG = MemoryConfig(voxel_size_m=0.01)
# room bounds in voxel indices: surfaces sit in the middle of these voxel layers (x = i_lo * d + d / 2, ...)
LO = np.array([-375, -150, -375])
HI = np.array([374, 149, 374])


def room_surface_ijk(shift: np.ndarray = np.zeros(3, np.int64)) -> np.ndarray:
    """Voxel coordinates ``[N, 3]`` of the room's six faces (each voxel once)."""
    faces = []
    for axis in range(3):
        a, b = [ax for ax in range(3) if ax != axis]
        ga, gb = np.arange(LO[a], HI[a] + 1), np.arange(LO[b], HI[b] + 1)
        A, B = np.meshgrid(ga, gb, indexing="ij")
        for level in (LO[axis], HI[axis]):
            f = np.empty((A.size, 3), np.int64)
            f[:, axis], f[:, a], f[:, b] = level, A.ravel(), B.ravel()
            faces.append(f)
    return np.unique(np.concatenate(faces), axis=0) + shift


def texture(points: np.ndarray) -> np.ndarray:
    """Procedural colours ``[N, 3]`` uint8 of world points: 25 cm checker plus gradients."""
    cells = np.floor(points / 0.25).astype(np.int64).sum(axis=-1) % 2
    rgb = np.stack([60 + 150 * cells, (points[..., 0] * 40 + 128) % 256, (points[..., 2] * 25 + 128) % 256], -1)
    return rgb.astype(np.uint8)


def memory_of(ijk: np.ndarray) -> SpatialMemory:
    pts = (ijk + 0.5) * CONFIG.voxel_size_m
    arrays = {
        "voxel_keys": pack_voxel_coords(ijk),
        "voxel_offsets": np.full((len(ijk), 3), 128, np.uint8),
        "colors": texture(pts),
        "observation_count": np.ones(len(ijk), np.uint16),
        "last_seen_frame": np.zeros(len(ijk), np.int32),
    }
    mem = SpatialMemory.from_arrays(CONFIG, arrays)
    mem.render(CAMERA, np.eye(4))  # one-off sort into culling blocks, as after a load
    return mem


def room_frame(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB [H, W, 3] uint8 and z-depth [H, W] float32 of the room's inside seen from ``c2w``."""
    d = CONFIG.voxel_size_m
    lo, hi = (LO + 0.5) * d, (HI + 0.5) * d  # surface planes (voxel middles)
    dirs = pixel_rays(CAMERA) @ c2w[:3, :3].T  # world directions with camera z = 1, so t is the z-depth
    eye = c2w[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_exit = np.where(dirs > 0, (hi - eye) / dirs, np.where(dirs < 0, (lo - eye) / dirs, np.inf))
    depth = t_exit.min(axis=-1)
    hit = eye + dirs * depth[..., None]
    return texture(hit), depth.astype(np.float32)


def walk(count: int) -> list[np.ndarray]:
    """Camera poses walking a circle of 1.5 m radius at eye height, looking ahead and slightly outwards."""
    out = []
    for a in np.linspace(0.0, 2.0 * np.pi, count, endpoint=False):
        eye = np.array([1.5 * np.cos(a), 0.0, 1.5 * np.sin(a)])
        look = eye + np.array([-np.sin(a + 0.6), 0.15, np.cos(a + 0.6)])
        out.append(look_at(eye, look))
    return out


def reference_state(mem: SpatialMemory) -> dict[int, list[int]]:
    a = mem.to_arrays()
    rows = np.concatenate(
        [a["voxel_offsets"], a["colors"], a["observation_count"][:, None], a["last_seen_frame"][:, None]], axis=1
    ).astype(np.int64)
    return dict(zip(a["voxel_keys"].tolist(), rows.tolist()))


def reference_integrate(state: dict, rgb: np.ndarray, depth: np.ndarray, c2w: np.ndarray, frame: int):
    pts, pix = ref.reference_frame_points(depth, CAMERA, c2w, CONFIG.max_depth_m)
    keys, offs = ref.reference_quantize(pts, CONFIG.voxel_size_m)
    return ref.reference_merge(state, keys, offs, rgb.reshape(-1, 3)[pix], frame, CONFIG.max_mean_weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--baseline-frames", type=int, default=2)
    args = parser.parse_args()

    log("building the room memory and frames")
    room = room_surface_ijk()
    frames = [(c2w, *room_frame(c2w)) for c2w in walk(args.frames + 2)]
    mem = memory_of(room)
    n0 = mem.num_points
    it = iter(range(10**9))

    def integrate_next(memory: SpatialMemory):
        k = next(it)
        c2w, rgb, depth = frames[k % len(frames)]
        return memory.integrate(rgb, depth, CAMERA, c2w, frame_index=1 + k)

    stats = integrate_next(mem)  # warm-up (and a check that it updates rather than grows)
    fast = time_ms(lambda: integrate_next(mem), args.frames, warmup=1)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # the CPU cost of one frame on one core, for reading the contended wall times
    one_thread = time_ms(lambda: integrate_next(mem), args.frames, warmup=1)
    numba.set_num_threads(threads)
    log(f"  known room: median {fast['median_ms']} ms, memory {n0} -> {mem.num_points} points")

    log("new surface: every voxel new")
    far = memory_of(room_surface_ijk(np.array([5000, 0, 0])))
    n_far = far.num_points
    it = iter(range(10**9))
    new_stats = integrate_next(far)
    new = time_ms(lambda: integrate_next(far), args.frames, warmup=0)
    log(f"  new surface: median {new['median_ms']} ms, memory {n_far} -> {far.num_points} points")

    log("naive reference ...")
    check = memory_of(room)
    state = reference_state(check)
    c2w, rgb, depth = frames[0]
    got = check.integrate(rgb, depth, CAMERA, c2w, frame_index=1)
    want = reference_integrate(state, rgb, depth, c2w, 1)
    a = check.to_arrays()
    b = ref.reference_state_arrays(state)
    order = np.argsort(a["voxel_keys"])
    matches = tuple(got) == tuple(want) and all(np.array_equal(a[k][order], b[k]) for k in b)
    base = time_ms(
        lambda: reference_integrate(state, rgb, depth, c2w, 2), args.baseline_frames, warmup=0
    )
    emit({
        "benchmark": "integrate",
        "median_ms": fast["median_ms"],
        "baseline_median_ms": base["median_ms"],
        "speedup": round(base["median_ms"] / fast["median_ms"], 1),
        "matches_reference": bool(matches),
        "target_median_ms": 25.0,
        "sizes": {
            "width": CAMERA.width, "height": CAMERA.height, "memory_points": n0,
            "pixels": CAMERA.width * CAMERA.height, "first_frame_stats": list(stats),
        },
        "fast": fast,
        "one_thread": one_thread,
        "baseline": base,
        "new_surface": {
            **new, "memory_points_before": n_far, "memory_points_after": far.num_points,
            "first_frame_stats": list(new_stats), "bytes_per_point_after": round(far.bytes_per_point, 2),
        },
        "bytes_per_point": round(mem.bytes_per_point, 2),
    })


if __name__ == "__main__":
    main()
