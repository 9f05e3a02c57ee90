"""Quick novel-view check of the geometric generator's fill methods against the exact procedural renders.

A stand-in for ``spatia eval novel-view`` (engineer ``eval``) until it lands: each scene's demo loop through the
engine with the demo's clip settings, graded on novel pixels (those the world's initial memory cannot render at
the pose; frames with >= 40% novel pixels). Prints one JSON object per (scene, method) and a summary per method,
each method run in the same process on the same machine.

    .venv/bin/python benchmarks/fill_quick.py --width 320 --height 180 --frames 81 --methods legacy layout
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np

from spatia.model.geometric import GeometricConfig, GeometricGenerator
from spatia.world.actions import ClipConfig
from spatia.world.camera import Intrinsics
from spatia.world.engine import Engine, EngineConfig
from spatia.world.scenes import make_scene
from spatia.world.state import World


def _grad(gray: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def run(scene_name: str, method: str, width: int, height: int, frames: int, seed: int, play: bool) -> dict:
    scene = make_scene(scene_name, seed)
    K = Intrinsics.from_fov(75.0, width, height)
    world = World.from_scene(scene_name, seed, width, height)
    first_memory = world.memory.copy()
    path = scene.demo_path(frames)
    if play:
        cfg = EngineConfig(clip=ClipConfig(first_clip_frames=4, clip_frames=6, preceding_frames=2), keyframe_stride=4)
    else:
        cfg = EngineConfig(clip=ClipConfig(first_clip_frames=33, clip_frames=41, preceding_frames=9))
    engine = Engine(world, GeometricGenerator(GeometricConfig(fill=method)), cfg)
    bg = {i for i, o in enumerate(scene.objects) if o.background}
    sq_err, n_px, absrel, d125, n_d, g_pred, g_true, g_pred2, g_true2, flick, flick_t = ([] for _ in range(11))
    prev = None
    t0 = time.perf_counter()
    gen_times = []
    for k, fr in enumerate(engine.generate(path[1:], seed=seed)):
        T = path[k + 1]
        novel = ~first_memory.render(K, T).valid
        if novel.mean() < 0.4:
            prev = None
            continue
        hits = scene.cast(K, T)
        truth, tdepth = scene.render(K, T)
        err = (fr.rgb.astype(np.float32) - truth.astype(np.float32))[novel]
        sq_err.append(float((err**2).sum()))
        n_px.append(int(novel.sum()) * 3)
        real = novel & (tdepth > 0) & ~np.isin(hits.object_id, list(bg))
        if fr.depth_m is not None and real.any():
            gd, td = fr.depth_m[real], tdepth[real]
            ok = gd > 0
            rel = np.where(ok, np.abs(gd - td) / td, 1.0)
            absrel.append(float(rel.sum()))
            ratio = np.where(ok, np.maximum(gd / td, td / np.maximum(gd, 1e-6)), np.inf)
            d125.append(float((ratio < 1.25).sum()))
            n_d.append(int(real.sum()))
        gp, gt = _grad(_gray(fr.rgb)), _grad(_gray(truth))
        g_pred.append(float(gp[novel].mean()))
        g_true.append(float(gt[novel].mean()))
        half = cv2.resize(novel.astype(np.uint8), (width // 2, height // 2), interpolation=cv2.INTER_NEAREST) > 0
        gp2 = _grad(cv2.resize(_gray(fr.rgb), (width // 2, height // 2), interpolation=cv2.INTER_AREA))
        gt2 = _grad(cv2.resize(_gray(truth), (width // 2, height // 2), interpolation=cv2.INTER_AREA))
        g_pred2.append(float(gp2[half].mean()))
        g_true2.append(float(gt2[half].mean()))
        if prev is not None:
            both = novel & prev[0]
            if both.any():
                flick.append(float(np.abs(fr.rgb.astype(np.float32) - prev[1])[both].mean()))
                flick_t.append(float(np.abs(truth.astype(np.float32) - prev[2])[both].mean()))
        prev = (novel, fr.rgb.astype(np.float32), truth.astype(np.float32))
    wall = time.perf_counter() - t0
    # geometry at the end: share of memory points within 5 cm of a true surface
    import open3d as o3d

    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(scene.vertices), o3d.core.Tensor(scene.triangles))
    pts = world.memory.positions
    dist = rc.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy()
    lo, hi = scene.bounds
    inside = np.all((pts >= lo - 0.05) & (pts <= hi + 0.05), axis=1)
    acc = float(((dist <= 0.05) & inside).mean())
    mse = sum(sq_err) / max(sum(n_px), 1)
    return {
        "scene": scene_name, "method": method, "setting": "play" if play else "demo",
        "psnr": round(10 * np.log10(255.0**2 / max(mse, 1e-9)), 2),
        "depth_absrel": round(sum(absrel) / max(sum(n_d), 1), 3),
        "delta125": round(sum(d125) / max(sum(n_d), 1), 3),
        "grad_ratio": round(sum(g_pred) / max(sum(g_true), 1e-9), 3),
        "grad_ratio_2x": round(sum(g_pred2) / max(sum(g_true2), 1e-9), 3),
        "flicker": round(float(np.mean(flick)) / max(float(np.mean(flick_t)), 1e-9), 3) if flick else None,
        "surface_5cm": round(acc, 3),
        "memory_points": int(world.memory.num_points),
        "memory_bytes": int(world.memory.nbytes),
        "graded_frames": len(g_pred),
        "wall_s": round(wall, 2),
        "gen_ms_per_frame": round(1000 * wall / max(len(path) - 1, 1), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", nargs="+", default=["room", "house", "courtyard"])
    ap.add_argument("--methods", nargs="+", default=["legacy", "layout"])
    ap.add_argument("--play", action="store_true", help="the server's real-time clip settings (4/6/2, stride 4)")
    a = ap.parse_args()
    rows = []
    for method in a.methods:
        for s in a.scenes:
            r = run(s, method, a.width, a.height, a.frames, a.seed, a.play)
            rows.append(r)
            print(json.dumps(r), flush=True)
    for method in a.methods:
        mine = [r for r in rows if r["method"] == method]
        keys = ("psnr", "depth_absrel", "delta125", "grad_ratio", "grad_ratio_2x", "surface_5cm")
        print(json.dumps({"method": method, "mean": {k: round(float(np.mean([r[k] for r in mine])), 3) for k in keys}}))


if __name__ == "__main__":
    main()
