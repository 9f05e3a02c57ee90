"""``spatia demo``: build a world, fly a closed loop (out and back), write the video, the cloud, a map and numbers.

The closed-loop numbers are the paper's memory test (Sec. 4, Table 3): the last frame returns to the first
viewpoint and is compared with the first image (PSNR_C, SSIM_C).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from tqdm import tqdm

from spatia.world.actions import ClipConfig, out_and_back_path
from spatia.world.engine import Engine, EngineConfig
from spatia.world.metrics import psnr, ssim
from spatia.world.state import World

log = structlog.get_logger("spatia.demo")


@dataclass
class DemoOptions:
    out: Path
    scene: str | None = "room"
    image: Path | None = None
    depth: Path | None = None
    case: Path | None = None
    seed: int = 0
    width: int = 640
    height: int = 360
    frames: int = 161
    fps: float = 16.0
    generator: str = "geometric"
    weights: Path | None = None
    depth_model: Path | None = None


# The demo's clip settings (``spatia eval novel-view`` grades the same ones: model/eval/novel_view.py SETTINGS).
DEMO_CLIP = ClipConfig(first_clip_frames=33, clip_frames=41, preceding_frames=9)


def build_world(opts: DemoOptions) -> tuple[World, np.ndarray, bool]:
    """The world, the camera path to fly and whether that path is a closed loop."""
    if opts.case is not None:
        from spatia.model.fill.geometry.photo import photo_depth_estimator

        world, c2w = World.from_case(opts.case, depth_estimator=photo_depth_estimator(opts.depth_model),
                                     width=opts.width)
        return world, c2w, False
    if opts.image is not None:
        from spatia.world.images import load_depth, load_rgb, resize_depth, resize_rgb

        rgb = load_rgb(opts.image)
        depth = load_depth(opts.depth, expected_size=(rgb.shape[1], rgb.shape[0])) if opts.depth else None
        if opts.width != rgb.shape[1]:  # generate at --width, keeping the aspect ratio (even height)
            size = (opts.width, int(round(rgb.shape[0] * opts.width / rgb.shape[1] / 2)) * 2)
            rgb, _ = resize_rgb(rgb, size)
            depth = resize_depth(depth, size) if depth is not None else None
        if depth is not None:
            world = World.from_image(rgb, depth_m=depth, source=f"image:{opts.image.name}")
        else:
            from spatia.model.fill.geometry.photo import photo_depth_estimator

            world = World.from_image(rgb, depth_estimator=photo_depth_estimator(opts.depth_model),
                                     source=f"image:{opts.image.name}")
        return world, out_and_back_path(world.origin_c2w, opts.frames, up=world.level_up), True
    from spatia.world.scenes import make_scene

    world = World.from_scene(opts.scene or "room", opts.seed, opts.width, opts.height)
    path = make_scene(opts.scene or "room", opts.seed).demo_path(opts.frames)
    return world, path, True


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    import os

    import imageio.v2 as imageio

    os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")  # no preexec_fn fork beside threads (recording.py)

    # macro_block_size 8: 360-pixel-high frames stay unscaled (libx264 needs even sizes, 8 keeps every common one)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=8,
                            ffmpeg_params=["-movflags", "+faststart"]) as writer:  # moov first: browsers stream it
        for f in frames:
            writer.append_data(f)


def write_map(path: Path, world: World, path_c2w: np.ndarray) -> None:
    """Top-down view of the memory (world up = -y of the first camera) with the camera path on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R0 = world.origin_c2w[:3, :3]
    pts = (world.memory.positions - world.origin_c2w[:3, 3]) @ R0  # origin-camera frame: x right, y down, z fwd
    cols = world.memory.colors
    rng = np.random.default_rng(0)
    if len(pts) > 300_000:
        keep = rng.choice(len(pts), 300_000, replace=False)
        pts, cols = pts[keep], cols[keep]
    order = np.argsort(pts[:, 1])[::-1]  # draw high points (small y) last so they stay visible from above
    cam = (path_c2w[:, :3, 3] - world.origin_c2w[:3, 3]) @ R0
    fwd = path_c2w[:, :3, 2] @ R0
    fig, ax = plt.subplots(figsize=(8, 8), dpi=110)
    ax.scatter(pts[order, 0], pts[order, 2], c=cols[order] / 255.0, s=0.3, linewidths=0)
    ax.plot(cam[:, 0], cam[:, 2], "-", color="crimson", lw=2, label="camera path")
    step = max(1, len(cam) // 16)
    ax.quiver(cam[::step, 0], cam[::step, 2], fwd[::step, 0], fwd[::step, 2], color="crimson", scale=18, width=0.004)
    ax.plot(cam[0, 0], cam[0, 2], "o", color="black", ms=8, label="start / end")
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, right of the first camera)")
    ax.set_ylabel("z (m, ahead of the first camera)")
    ax.set_title(f"{world.info.source}: {world.memory.num_points:,} memory points")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _finite_db(value: float) -> float:
    """JSON has no infinity: identical frames (PSNR = inf) are reported as 100 dB, far above any real match."""
    return 100.0 if value == float("inf") else round(value, 2)


def run_demo(opts: DemoOptions) -> dict:
    from spatia.model import make_generator

    opts.out.mkdir(parents=True, exist_ok=True)
    t_build = time.perf_counter()
    world, path, closed_loop = build_world(opts)
    log.info("world built", source=world.info.source, points=world.memory.num_points,
             seconds=round(time.perf_counter() - t_build, 2))
    kwargs = {"weights_dir": opts.weights} if opts.weights else {}
    generator = make_generator(opts.generator, **kwargs)
    engine = Engine(world, generator, EngineConfig(clip=DEMO_CLIP))
    if opts.generator == "geometric":  # compile (or load) the fill's kernels now, not inside the timed frames
        from spatia.model.fill.warmup import compile_fill_kernels

        t_warm = time.perf_counter()
        compile_fill_kernels()
        log.info("fill kernels ready", seconds=round(time.perf_counter() - t_warm, 2))
    # A procedural scene has exact truth: grade the never-seen pixels along the loop (issue 10's novel-view metrics)
    novel = None
    if opts.case is None and opts.image is None:
        from spatia.model.eval.novel_view import DemoNovelGrader
        from spatia.world.scenes import make_scene

        novel = DemoNovelGrader(make_scene(opts.scene or "room", opts.seed), world)
    first = world.first_image  # the conditioning image itself (lossless), not the history's JPEG copy
    frames: list[np.ndarray] = []
    t0 = time.perf_counter()
    grade_s = 0.0
    # The path's frame 0 is the first image's own pose; the world already holds that frame, so generate the rest.
    for i, frame in enumerate(tqdm(engine.generate(path[1:], seed=opts.seed), total=len(path) - 1,
                                   desc="generating", unit="frame", file=sys.stderr), start=1):
        frames.append(frame.rgb)
        if novel is not None:
            t = time.perf_counter()
            novel.add(path[i], frame.rgb, frame.depth_m)
            grade_s += time.perf_counter() - t
    wall = time.perf_counter() - t0 - grade_s  # fps counts generation only, not the grading
    video = [first] + frames
    write_video(opts.out / "demo.mp4", video, opts.fps)
    world.memory.save_ply(opts.out / "world.ply")
    write_map(opts.out / "map.png", world, path)
    world.save(opts.out / "world.spw")
    summary = {
        "frames": len(video),
        "generated_frames": len(frames),
        "fps": round(len(frames) / wall, 2),
        "wall_s": round(wall, 2),
        "memory_points": int(world.memory.num_points),
        "memory_bytes_per_point": round(float(world.memory.bytes_per_point), 2),
        "closed_loop_psnr": _finite_db(psnr(frames[-1], first)) if closed_loop else None,
        "closed_loop_ssim": round(ssim(frames[-1], first), 4) if closed_loop else None,
        # the memory alone (no reference frames) rendered at the final pose: how much the point cloud remembers
        "closed_loop_memory_psnr": _finite_db(psnr(world.memory.render(world.intrinsics, path[-1]).rgb, first))
        if closed_loop else None,
        # never-seen pixels (issue 10): PSNR and depth AbsRel vs the exact renders on pixels the first memory could
        # not show, frames with >= 40% of them (procedural scenes only; None for photos and cases)
        **(novel.summary() if novel is not None else
           {"novel_psnr": None, "novel_depth_absrel": None, "novel_graded_frames": None}),
        "generator": generator.name,
        "source": world.info.source,
        "seed": opts.seed,
        "resolution": [world.intrinsics.width, world.intrinsics.height],
        "command": " ".join(sys.argv),
    }
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("demo written", out=str(opts.out), **{k: summary[k] for k in ("frames", "fps", "closed_loop_psnr")})
    return summary
