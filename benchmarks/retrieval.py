"""Benchmark: reference-frame retrieval of K = 7 frames for a 72-frame target clip over a 5,000-frame history.

Scene: a camera 1.6 m above a flat ground (the world's y axis points down, ground at y = +1.6 m), pitched 40 deg
down, walks at 1.4 m/s (24 fps) on a random smooth path inside a 40 m x 40 m arena, so it keeps revisiting places.
Each view's set is what ``world.geometry`` gives for a rendered depth map: the ground's analytic z-depth per pixel
of a 192 x 108 camera (60 deg fov, pixels beyond 8 m unknown), unprojected with ``depth_to_world_points`` and
voxelised with ``voxel_keys``. The target clip re-walks a stretch of the history 0.3 m to the side with a 5 deg
yaw offset. Candidates are all history frames but the last 9 (the preceding clip).

``--soak-loop``: instead, how the retrieval index's compaction settles on the soak's revisiting loop (see
``soak_loop``): per config, index bytes, postings a query walks and the retrieved views' IoU per lap, against the
compaction rule before session 11 replayed from the same recorded run.

Prints one JSON object on stdout (progress on stderr): fast ``retrieve_reference_frames`` medians for both
methods and the naive per-candidate ``np.intersect1d`` references (``world/_retrieval_reference.py``) timed in the
same run, plus sizes. ``matches_reference`` checks that both give the same frames and scores.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time

import numpy as np

from spatia.world._retrieval_reference import reference_retrieve_official, reference_retrieve_paper
from spatia.world.camera import Intrinsics
from spatia.world.geometry import depth_to_world_points, voxel_keys
from spatia.world.history import FrameStore, HistoryConfig
from spatia.world.retrieval import retrieve_reference_frames

EYE_HEIGHT_M, PITCH_DEG, MAX_RANGE_M, ARENA_M, SPEED_M_S, FPS = 1.6, 40.0, 8.0, 40.0, 1.4, 24.0
CAMERA = Intrinsics.from_fov(60.0, 192, 108)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def walk(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[n, 2]`` (x, z) metres and yaw ``[n]`` radians of a smooth random walk that stays in the arena."""
    pos, yaw, yaw_rate = np.zeros(2), 0.0, 0.0
    xs, yaws = np.empty((n, 2)), np.empty(n)
    for i in range(n):
        yaw_rate = 0.95 * yaw_rate + rng.normal(0.0, 0.08)
        to_centre = -pos
        if np.linalg.norm(pos) > 0.4 * ARENA_M:  # steer back towards the centre near the walls
            want = math.atan2(to_centre[0], to_centre[1])
            yaw_rate += 0.2 * math.remainder(want - yaw, 2 * math.pi)
        yaw += yaw_rate / FPS
        pos = pos + SPEED_M_S / FPS * np.array([math.sin(yaw), math.cos(yaw)])
        xs[i], yaws[i] = pos, yaw
    return xs, yaws


def camera_pose(xz: np.ndarray, yaw: float) -> np.ndarray:
    """``c2w``: OpenCV camera at eye height (world y down, so eye at y = 0 and ground at y = +1.6), yawed about
    the world's vertical and pitched ``PITCH_DEG`` down."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    R_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    p = math.radians(PITCH_DEG)  # looking down = rotating +z towards +y (down)
    R_pitch = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(p), math.sin(p)], [0.0, -math.sin(p), math.cos(p)]])
    T = np.eye(4)
    T[:3, :3] = R_yaw @ R_pitch
    T[:3, 3] = [xz[0], 0.0, xz[1]]
    return T


def ground_depth(c2w: np.ndarray, rays: np.ndarray, ray_norms: np.ndarray) -> np.ndarray:
    """``[H, W]`` float32 z-depth of the plane y = EYE_HEIGHT_M; 0 where the ray misses it or is beyond range.

    ``rays``: ``[H, W, 3]`` camera rays with z = 1 (``pixel_rays``), ``ray_norms`` their lengths."""
    dy = rays @ c2w[1, :3]  # world y component of each ray (world y points down, towards the ground)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (EYE_HEIGHT_M - c2w[1, 3]) / dy  # z-depth, since the rays have z = 1 in the camera
    ok = (dy > 1e-6) & (t * ray_norms <= MAX_RANGE_M)
    return np.where(ok, t, 0.0).astype(np.float32)


def view_keys(c2w: np.ndarray, rays: np.ndarray, voxel_size_m: float) -> np.ndarray:
    pts, _ = depth_to_world_points(ground_depth(c2w, rays, np.linalg.norm(rays, axis=-1)), CAMERA, c2w)
    return np.unique(voxel_keys(pts, voxel_size_m))


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and median process-CPU milliseconds per call. The code under test is single-threaded, so
    CPU time is the better figure on a shared machine (it leaves out time spent waiting for a core)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    return float(np.median(wall)), float(np.median(cpu))


# Compaction settings compared by ``--soak-loop`` (baseline: the rule before session 11, same run).
LOOP_CONFIGS = {
    "before: 8 views, oldest out, rebuild at 1.0 dead": dict(compact_max_views=8, compact_evict="oldest",
                                                             compact_rebuild_dead_ratio=1.0),
    "defaults": {},
    "8 views, redundant out": dict(compact_max_views=8),
    "6 views, oldest out": dict(compact_max_views=6, compact_evict="oldest"),
    "4 views, redundant out": dict(compact_max_views=4),
    "no compaction": dict(compact_cell_m=0.0),
}


def record_loop(scene: str, laps: int, fps: float, loop_s: float, width: int, height: int):
    """Play ``laps`` of the soak's circle (0.5 m/s, a lap every ``loop_s`` s; each lap after the first starts 0.37
    frame later, as a real session's frames fall at other phases) in-process with the server's play settings
    (clips (4, 6, 2), keyframe stride 4, reference reuse within 5 deg / 10 cm, geometric generator) at ``fps``
    frames a second; returns the history's adds [(c2w, voxel set as the history keeps it)] and retrieval queries
    [(target c2w, target sets as kept, retrieval kwargs)] in order, and the seconds per lap."""
    import spatia.world.engine as engine_mod
    from spatia.model import make_generator
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    world = World.from_scene(scene, 0, width, height)
    engine = Engine(world, make_generator("geometric"), EngineConfig(
        clip=ClipConfig(4, 6, 2), keyframe_stride=4, reuse_references_within=(5.0, 0.10)))
    events: list = []
    add, retrieve = FrameStore.add, engine_mod.retrieve_reference_frames

    def add_recorded(store, rgb, c2w, intrinsics, voxel_keys, *a, **kw):
        if store is world.history:
            events.append(("add", np.asarray(c2w, np.float64).copy(), store._coarsen(np.asarray(voxel_keys, np.int64))))
        return add(store, rgb, c2w, intrinsics, voxel_keys, *a, **kw)

    def retrieve_recorded(store, target_c2w, target_intrinsics, target_keys, **kw):
        sets = [store.query_voxel_set(target_keys[i]) for i in range(len(target_keys))]
        events.append(("query", np.asarray(target_c2w).copy(), sets, kw))
        return retrieve(store, target_c2w, target_intrinsics, target_keys, **kw)

    FrameStore.add, engine_mod.retrieve_reference_frames = add_recorded, retrieve_recorded
    try:
        integrator = ActionIntegrator(world.origin_c2w, ControlConfig(fps=fps))
        yaw = 2 * math.pi / loop_s
        lap_s = []
        for lap in range(laps):
            if lap:
                integrator.run([Action(move_forward=0.5, yaw_rate_rad_s=yaw, dt_s=0.37 / fps)])
            poses = integrator.run([Action(move_forward=0.5, yaw_rate_rad_s=yaw, dt_s=1 / fps)] * int(loop_s * fps))
            t0 = time.perf_counter()
            for i in range(0, len(poses), 4):
                collections.deque(engine.generate_clip(poses[i : i + 4]), maxlen=0)  # run the clip, keep no frame
            lap_s.append(round(time.perf_counter() - t0, 2))
            log(f"lap {lap}: {lap_s[-1]} s, {len(world.history)} frames")
    finally:
        FrameStore.add, engine_mod.retrieve_reference_frames = add, retrieve
    return events, lap_s


def replay_loop(events: list, frames_per_lap: int, config: dict) -> list[dict]:
    """The recorded adds and queries into a fresh history with ``config``; per lap: indexed views, index MiB,
    postings a query walks (runs of the query's voxels in the by-voxel index + the unsealed runs it scans), the
    retrieved view's IoU (mean over the lap's queries) and the add / query time."""
    thumb = Intrinsics.from_fov(60.0, 8, 6)
    img = np.zeros((6, 8, 3), np.uint8)
    # the sets were recorded as the history keeps them (coarsened): replay them as given
    store = FrameStore(HistoryConfig(image_codec="png", decoded_cache_frames=0, **{"voxel_set_levels": 0, **config}))
    store.add(img, np.eye(4), thumb, np.zeros(0, np.int64))  # frame 0, the first image (not recorded)
    rows, lap, add_s, query_s = [], [], 0.0, 0.0
    for ev in events:
        if ev[0] == "add":
            t0 = time.perf_counter()
            store.add(img, ev[1], thumb, ev[2])
            add_s += time.perf_counter() - t0
            if (len(store) - 1) % frames_per_lap == 0:
                v = store.voxels
                rows.append({
                    "lap": len(rows), "indexed_views": int((store.indexed() & (v.sizes() > 0)).sum()),
                    "index_mib": round(v.nbytes / 2**20, 2),
                    "walked_per_query": int(np.mean([q[0] for q in lap])) if lap else 0,
                    "retrieved_iou": round(float(np.mean([q[1] for q in lap])), 4) if lap else 0.0,
                    "add_ms_per_frame": round(1000 * add_s / frames_per_lap, 3),
                    "query_ms": round(1000 * query_s / max(len(lap), 1), 3),
                })
                lap, add_s, query_s = [], 0.0, 0.0
        else:
            _, c2w, sets, kw = ev
            t0 = time.perf_counter()
            found = retrieve_reference_frames(store, c2w, thumb, sets, **kw)
            query_s += time.perf_counter() - t0
            v = store.voxels
            walked = v.num_unsealed_runs
            for s in sets[:: max(int(kw.get("k", 7)), 1)]:  # the target views the paper's method scores
                c = v.lookup(s)
                c = c[(c >= 0) & (c < v._indptr.shape[0] - 1)]
                walked += int((v._indptr[c + 1] - v._indptr[c]).sum())
            lap.append((walked, max((r.score for r in found), default=0.0)))
    return rows


def soak_loop(args) -> dict:
    events, lap_s = record_loop(args.scene, args.laps, args.fps, args.loop_s, args.width, args.height)
    frames_per_lap = int(args.loop_s * args.fps)
    out = {}
    for name, config in LOOP_CONFIGS.items():
        rows = replay_loop(events, frames_per_lap, config)
        late = rows[len(rows) // 3 :]  # after the first third: what the index settles at
        out[name] = {
            "config": config, "retrieved_iou_late_mean": round(float(np.mean([r["retrieved_iou"] for r in late])), 4),
            "index_mib_late_min_max": [min(r["index_mib"] for r in late), max(r["index_mib"] for r in late)],
            "walked_per_query_late_mean": int(np.mean([r["walked_per_query"] for r in late])),
            "walked_per_query_late_max": max(r["walked_per_query"] for r in late),
            "indexed_views_end": rows[-1]["indexed_views"], "per_lap": rows,
        }
        log(f"{name}: IoU {out[name]['retrieved_iou_late_mean']}, index {out[name]['index_mib_late_min_max']} MiB")
    return {"benchmark": "retrieval_soak_loop", "scene": args.scene, "laps": args.laps, "fps": args.fps,
            "loop_s": args.loop_s, "width": args.width, "height": args.height, "engine_lap_s": lap_s,
            "baseline": "before: 8 views, oldest out, rebuild at 1.0 dead (same recorded run)", "configs": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--target", type=int, default=72)
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--voxel-size", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--baseline-repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--soak-loop", action="store_true", help="instead: the retrieval index's compaction on the soak's "
                    "loop, recorded from the engine once and replayed per config (see soak_loop)")
    ap.add_argument("--scene", default="room")
    ap.add_argument("--laps", type=int, default=30)
    ap.add_argument("--fps", type=float, default=4.0, help="frames a second (the full soak's sessions: ~4)")
    ap.add_argument("--loop-s", type=float, default=20.0)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=180)
    args = ap.parse_args()
    if args.soak_loop:
        import logging

        import structlog

        # the engine's layout fit logs at info level: keep stdout for the one JSON object
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
        print(json.dumps(soak_loop(args)))
        return

    from spatia.world.geometry import pixel_rays

    rng = np.random.default_rng(args.seed)
    rays = pixel_rays(CAMERA)
    xz, yaw = walk(rng, args.frames)
    # The stored image plays no part in retrieval: a tiny one keeps the history build about the voxel sets.
    thumb = CAMERA.scaled(8, 6)
    img = np.zeros((thumb.height, thumb.width, 3), dtype=np.uint8)
    # The sets are built at --voxel-size already: keep them as given (no further coarsening), as the reference does.
    store = FrameStore(HistoryConfig(image_codec="png", voxel_set_levels=0))
    sets = []
    t0 = time.perf_counter()
    add_s = 0.0
    for i in range(args.frames):
        c2w = camera_pose(xz[i], yaw[i])
        sets.append(view_keys(c2w, rays, args.voxel_size))
        ta = time.perf_counter()
        store.add(img, c2w, thumb, sets[-1], timestamp_ns=int(i * 1e9 / FPS))
        add_s += time.perf_counter() - ta
        if i % 1000 == 0:
            log(f"history {i}/{args.frames}, {time.perf_counter() - t0:.1f} s")
    sizes = np.array([s.shape[0] for s in sets])

    start = args.frames // 2
    offset = np.array([0.3, 0.0])
    target_poses = np.stack(
        [camera_pose(xz[start + i] + offset, yaw[start + i] + math.radians(5.0)) for i in range(args.target)]
    )
    target_sets = [view_keys(T, rays, args.voxel_size) for T in target_poses]
    candidates = range(0, args.frames - 9)
    cand_sets = {j: sets[j] for j in candidates}

    def fast(method: str):
        return retrieve_reference_frames(
            store, target_poses, CAMERA, target_sets, k=args.k, method=method, candidates=candidates
        )

    results = {m: fast(m) for m in ("paper", "official")}  # warm-up (numba kernels load from the disk cache)
    log("timing fast paths")
    paper_ms, paper_cpu_ms = median_ms(lambda: fast("paper"), args.repeats)
    official_ms, official_cpu_ms = median_ms(lambda: fast("official"), args.repeats)
    log("timing naive references (per-candidate np.intersect1d)")
    ref = {}
    t_paper = []
    for _ in range(args.baseline_repeats):
        t1 = time.perf_counter()
        ref["paper"] = reference_retrieve_paper(target_sets, cand_sets, args.k, 0.0, args.k)
        t_paper.append((time.perf_counter() - t1) * 1000.0)
    t_official = []
    for _ in range(args.baseline_repeats):
        t1 = time.perf_counter()
        ref["official"] = reference_retrieve_official(target_sets, cand_sets, args.k, 12, 4)
        t_official.append((time.perf_counter() - t1) * 1000.0)
    matches = all(
        [(r.frame_index, r.score, r.target_index) for r in results[m]] == ref[m] for m in ("paper", "official")
    )
    print(json.dumps({
        "benchmark": "retrieval",
        "median_ms": round(paper_ms, 3),  # method="paper", the default
        "median_cpu_ms": round(paper_cpu_ms, 3),
        "baseline_median_ms": round(float(np.median(t_paper)), 3),
        "official_median_ms": round(official_ms, 3),
        "official_median_cpu_ms": round(official_cpu_ms, 3),
        "official_baseline_median_ms": round(float(np.median(t_official)), 3),
        "matches_reference": bool(matches),
        "retrieved_paper": [[r.frame_index, round(r.score, 4), r.target_index] for r in results["paper"]],
        "retrieved_official": [[r.frame_index, r.score, r.target_index] for r in results["official"]],
        "history_frames": args.frames,
        "candidates": len(candidates),
        "target_frames": args.target,
        "k": args.k,
        "voxel_size_m": args.voxel_size,
        "keys_per_view_mean": int(sizes.mean()),
        "keys_per_view_min": int(sizes.min()),
        "keys_per_view_max": int(sizes.max()),
        "distinct_voxels": int(store.voxels.num_voxels),
        "history_voxel_entries": int(sizes.sum()),
        "store_add_total_s": round(add_s, 2),
        "voxel_index_mb": round(store.voxels.nbytes / 2**20, 1),
        "repeats": args.repeats,
        "baseline_repeats": args.baseline_repeats,
        "scene": "camera walking over a flat ground plane, rendered z-depth -> depth_to_world_points -> voxel_keys",
    }))


if __name__ == "__main__":
    main()
