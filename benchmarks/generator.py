"""Geometric generator, one 640x360 frame: memory render + hole filling of colour and depth.

Target (issue: world core, section 8): median <= 20 ms on the demo scene. The frame is taken a third of the way
along the demo path, where the camera has turned away from the first view and the render has real holes.

Baseline, same run: the naive way — a plain numpy z-buffer (points sorted far to near, fancy-index writes) and
OpenCV's Telea inpainting of colour and depth.

    .venv/bin/python benchmarks/generator.py
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from _common import emit, log, time_ms

from spatia.model.geometric import GeometricGenerator
from spatia.world.camera import Intrinsics
from spatia.world.generator import ClipRequest, SceneProjection
from spatia.world.scenes import make_scene
from spatia.world.state import World


def naive_render(points, colors, K: Intrinsics, c2w):
    R, t = c2w[:3, :3], c2w[:3, 3]
    pc = (points - t) @ R
    z = pc[:, 2]
    keep = z > 0.05
    pc, z, cols = pc[keep], z[keep], colors[keep]
    u = np.floor(K.fx * pc[:, 0] / z + K.cx).astype(np.int64)
    v = np.floor(K.fy * pc[:, 1] / z + K.cy).astype(np.int64)
    inside = (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
    u, v, z, cols = u[inside], v[inside], z[inside], cols[inside]
    order = np.argsort(-z)  # far first: the nearest write wins
    rgb = np.zeros((K.height, K.width, 3), np.uint8)
    depth = np.zeros((K.height, K.width), np.float32)
    rgb[v[order], u[order]] = cols[order]
    depth[v[order], u[order]] = z[order]
    return rgb, depth, depth > 0


def naive_fill(rgb, depth, valid):
    holes = (~valid).astype(np.uint8)
    out = cv2.inpaint(rgb, holes, 3, cv2.INPAINT_TELEA)
    d = cv2.inpaint(depth, holes, 3, cv2.INPAINT_TELEA)
    return out, d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scene", default="room")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    log("building the world ...")
    world = World.from_scene(args.scene, 0, args.width, args.height)
    K = world.intrinsics
    path = make_scene(args.scene, 0).demo_path(161)
    pose = path[len(path) // 3]
    gen = GeometricGenerator()

    def request_for(projection: SceneProjection) -> ClipRequest:
        return ClipRequest(0, pose[None], K, projection, np.zeros((0, K.height, K.width, 3), np.uint8),
                           np.zeros((0, 4, 4)), world_up=-world.origin_c2w[:3, 1])

    def fast():
        r = world.memory.render(K, pose)
        proj = SceneProjection(r.rgb[None], r.depth_m[None], r.valid[None])
        return gen.generate(request_for(proj))

    points, colors = world.memory.positions.astype(np.float64), world.memory.colors

    def naive():
        rgb, depth, valid = naive_render(points, colors, K, pose)
        return naive_fill(rgb, depth, valid)

    coverage = float(world.memory.render(K, pose).valid.mean())
    log(f"memory: {world.memory.num_points} points; render coverage at the benchmark pose {coverage:.1%}")
    log("timing the fast path ...")
    fast_t = time_ms(fast, args.repeats, warmup=2)
    log("timing the naive baseline ...")
    base_t = time_ms(naive, max(3, args.repeats // 4), warmup=1)
    emit({
        "benchmark": "geometric generator: render + fill, one frame",
        "median_ms": fast_t["median_ms"],
        "baseline_median_ms": base_t["median_ms"],
        "fast": fast_t,
        "baseline": base_t,
        "width": K.width,
        "height": K.height,
        "memory_points": int(world.memory.num_points),
        "render_coverage": round(coverage, 4),
        "scene": args.scene,
        "target_ms": 20.0,
    })


if __name__ == "__main__":
    main()
