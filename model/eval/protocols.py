"""The paper's evaluation protocols (Sec. 4, Tables 2-7) on the project's test sets, for any generator.

- ``closed_loop`` (Table 3): from each item's first image, two clips: to the right and back to the first
  viewpoint; the last frame is compared with the first image (PSNR_C, SSIM_C, LPIPS_C, Match Acc), with memory
  and without it.
- ``long_horizon`` (Table 6): 2, 4, 6, ... clips of the same back-and-forth, with vs without memory.
- ``ablation_inputs`` (Table 4: scene projection x references), ``ablation_k`` (Table 5: K), ``ablation_voxel``
  (Table 7: cube side d against the exact renders, with the memory's size).
- ``ground_truth`` (Table 2, RealEstate-style): generated frames vs the exact renders along the same path.

Without memory (the Wan2.2 row of Table 6: "the last frame of each generated clip is used as the starting frame for
the next"): every clip starts a fresh world from the previous clip's last frame (with the generator's depth for it,
else the planar prior), with no references and no memory update, so nothing outlives a clip but that one frame.
What the generator may see of that frame is the baseline's ``mode``:

- ``last-frame`` (default): the scene projection of the one-frame world, i.e. the last frame warped along the new
  clip. This is what an image-to-video model knows (its conditioning image) in the only form the geometric
  generator can use, so it is the honest baseline for it: it loses what left the view, nothing else.
- ``no-projection``: ``EngineConfig(use_scene_projection=False, use_references=False)`` literally; the image reaches
  the generator only as ``request.first_frame`` (the TI2V conditioning a neural generator uses). The geometric
  generator ignores ``first_frame`` and gets an all-invalid projection, so its output is the fill of nothing
  (black): a degenerate floor, reported for completeness, not as a fair comparison.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import structlog
from tqdm import tqdm

from spatia.model.eval.metrics import (
    CameraControlConfig,
    LpipsMetric,
    MatchAccuracy,
    PoseError,
    camera_control_errors,
    summarize_pose_errors,
)
from spatia.model.eval.testsets import LoadedItem, PanLoop, TestItem, clip_lengths, forward_path, load_items, load_world, pan_loop_path
from spatia.world.actions import ClipConfig, chunk_clips
from spatia.world.engine import Engine, EngineConfig
from spatia.world.errors import InvalidInputError
from spatia.world.memory import MemoryConfig
from spatia.world.metrics import psnr, ssim
from spatia.world.state import World

log = structlog.get_logger("spatia.eval")

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; means use this cap (per-item values keep inf)
BASELINE_MODES = ("last-frame", "no-projection")


@dataclass(frozen=True)
class EvalConfig:
    generator: str = "geometric"
    generator_kwargs: tuple[tuple[str, Any], ...] = ()  # e.g. (("weights_dir", path),) for "spatia"
    testset: str = "procedural"
    items: int = 6
    width: int = 128
    height: int = 80  # procedural items; cases keep their aspect ratio
    fov_deg: float = 75.0
    clip: ClipConfig = field(default_factory=lambda: ClipConfig(17, 17, 4))
    seed: int = 0
    loop: PanLoop = field(default_factory=PanLoop)
    baseline: str = "last-frame"
    pose_stride: int = 4  # camera-control error on every n-th generated frame (odometry is the slow part)
    gt_frames: int = 24  # ground-truth protocol path length
    progress: bool = True

    def __post_init__(self) -> None:
        if self.baseline not in BASELINE_MODES:
            raise InvalidInputError(f"baseline must be one of {BASELINE_MODES}, got {self.baseline!r}")
        if self.width < 32 or self.height < 32:
            raise InvalidInputError(f"frames must be at least 32x32, got {self.width}x{self.height}")
        if self.pose_stride < 1:
            raise InvalidInputError(f"pose_stride must be >= 1, got {self.pose_stride}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["generator_kwargs"] = {k: str(v) for k, v in self.generator_kwargs}
        return d


@dataclass
class Metrics:
    """The metric implementations of one run (LPIPS may be unavailable; Match Accuracy names its method)."""

    lpips: LpipsMetric = field(default_factory=LpipsMetric)
    match: MatchAccuracy = field(default_factory=MatchAccuracy)
    camera: CameraControlConfig = field(default_factory=CameraControlConfig)

    def describe(self) -> dict[str, Any]:
        return {
            "lpips": {"available": self.lpips.available, "net": self.lpips.net_name,
                      "reason": self.lpips.reason or None},
            "match_accuracy": {"method": self.match.method, "note": self.match.note or None},
            "psnr_cap_db": PSNR_CAP_DB,
            "camera_control": {"how": "photometric RGB-D odometry from the reference view at the commanded pose "
                                      "(exact scene for procedural items, initial memory for cases)",
                               **asdict(self.camera)},
        }


def _generator(config: EvalConfig):
    from spatia.model import make_generator

    return make_generator(config.generator, **dict(config.generator_kwargs))


# ---------------------------------------------------------------------------------------------------------------
# Generation: with memory, and the last-frame-chaining baseline
# ---------------------------------------------------------------------------------------------------------------


def generate_with_memory(world: World, generator, path: np.ndarray, engine_config: EngineConfig, seed: int) -> list[np.ndarray]:
    """Frames ``[H, W, 3]`` uint8 for every pose of ``path``, one engine over the whole path (memory persists)."""
    return [f.rgb for f in Engine(world, generator, engine_config).generate(path, seed=seed)]


def generate_without_memory(world: World, generator, path: np.ndarray, clip: ClipConfig, seed: int,
                            mode: str = "last-frame") -> list[np.ndarray]:
    """Last-frame chaining (module docstring): each clip is a fresh world from the previous clip's last frame."""
    if mode not in BASELINE_MODES:
        raise InvalidInputError(f"baseline mode must be one of {BASELINE_MODES}, got {mode!r}")
    config = EngineConfig(clip=clip, use_scene_projection=(mode == "last-frame"), use_references=False,
                          update_memory=False)
    frames: list[np.ndarray] = []
    current, last = world, None
    for span in chunk_clips(len(path), clip):
        if last is not None:
            if last.depth_m is not None and (last.depth_m > 0).any():
                current = World.from_rgbd(last.rgb, last.depth_m, world.intrinsics, last.c2w, source="chain")
            else:  # a generator without depth: the planar prior, as for a photograph
                current = World.from_image(last.rgb, world.intrinsics, c2w=last.c2w, source="chain")
        clip_seed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, span.clip_id]).generate_state(1)[0])
        out = list(Engine(current, generator, config).generate_clip(path[span.start : span.stop], seed=clip_seed))
        frames += [f.rgb for f in out]
        last = out[-1]
    return frames


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


def image_scores(a: np.ndarray, b: np.ndarray, metrics: Metrics, match: bool = True) -> dict[str, float | None]:
    return {
        "psnr": psnr(a, b),
        "ssim": ssim(a, b),
        "lpips": metrics.lpips(a, b),
        "match_acc": metrics.match(b, a) if match else None,  # (first image, generated frame)
    }


def _mean(values: Sequence[float | None], cap: float | None = None) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if cap is not None:
        vals = [min(v, cap) for v in vals]
    return float(np.mean(vals))


def pose_errors_for(loaded: LoadedItem, frames: Sequence[np.ndarray], path: np.ndarray, stride: int,
                    camera: CameraControlConfig) -> list[PoseError]:
    idx = list(range(stride, len(frames), stride))  # frame 0 is the first image's view: not a control test
    if not idx:
        return []
    return camera_control_errors([frames[i] for i in idx], path[idx], loaded.render_truth,
                                 loaded.world.intrinsics, camera)


def closed_loop_row(method: str, per_item: list[dict[str, Any]]) -> dict[str, Any]:
    """A Table 3 / 4 / 5 / 6 row: means over items of the last-frame scores and the pose errors."""
    errors = [e for it in per_item for e in it.pop("_pose_errors", [])]
    return {
        "method": method,
        "psnr_c": _mean([it["psnr"] for it in per_item], PSNR_CAP_DB),
        "ssim_c": _mean([it["ssim"] for it in per_item]),
        "lpips_c": _mean([it["lpips"] for it in per_item]),
        "match_acc": _mean([it["match_acc"] for it in per_item]),
        "camera_control": summarize_pose_errors(errors),
        "items": per_item,
    }


def _items(config: EvalConfig, procedural_only: bool = False) -> list[TestItem]:
    items = load_items(config.testset, config.items)
    if procedural_only:
        items = [it for it in items if it.kind == "scene"]
        if not items:
            raise InvalidInputError("this protocol needs exact ground truth: use --testset procedural or all")
    return items


def _bar(items, config: EvalConfig, desc: str):
    return tqdm(items, desc=desc, unit="item", disable=not config.progress, leave=False)


# ---------------------------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------------------------


def long_horizon(config: EvalConfig, clips: Sequence[int] = (2, 4, 6), metrics: Metrics | None = None) -> dict[str, Any]:
    """Table 6: per clip count, ``with_memory`` and ``without_memory`` rows (each: psnr_c, ssim_c, lpips_c, ...).

    The runs are causal (a clip never depends on later poses), so the longest path is generated once per item and
    the closed loops at every requested (even) clip count are read off its prefix.
    """
    metrics = metrics or Metrics()
    clips = sorted(set(int(c) for c in clips))
    if not clips or clips[0] < 2 or any(c % 2 for c in clips):
        raise InvalidInputError(f"clip counts must be even and >= 2 (each pair returns to the start), got {clips}")
    generator = _generator(config)
    ends = np.cumsum(clip_lengths(clips[-1], config.clip))  # frame count after each clip
    per: dict[int, dict[str, list]] = {c: {"with_memory": [], "without_memory": []} for c in clips}
    t0 = time.perf_counter()
    for item in _bar(_items(config), config, "long-horizon"):
        for variant in ("with_memory", "without_memory"):
            loaded = load_world(item, config.width, config.height, config.fov_deg)
            world = loaded.world
            first = world.history.get_rgb(0)
            path = pan_loop_path(world.origin_c2w, clips[-1], config.clip, config.loop)
            if variant == "with_memory":
                frames = generate_with_memory(world, generator, path, EngineConfig(clip=config.clip), config.seed)
            else:
                frames = generate_without_memory(world, generator, path, config.clip, config.seed, config.baseline)
            errors_all = pose_errors_for(loaded, frames, path, config.pose_stride, metrics.camera)
            err_frames = list(range(config.pose_stride, len(frames), config.pose_stride))
            for c in clips:
                n = int(ends[c - 1])
                scores = image_scores(frames[n - 1], first, metrics)
                scores["item"] = item.name
                scores["_pose_errors"] = [e for e, i in zip(errors_all, err_frames) if i < n]
                per[c][variant].append(scores)
    out = {}
    for c in clips:
        out[str(c)] = {v: closed_loop_row(_method_name(config, v), per[c][v]) for v in ("with_memory", "without_memory")}
        out[str(c)]["frames"] = int(ends[c - 1])
    return {"protocol": "long-horizon", "clips": out, "wall_s": time.perf_counter() - t0}


def _method_name(config: EvalConfig, variant: str) -> str:
    if variant == "with_memory":
        return f"{config.generator} (with memory)"
    return f"{config.generator} (without memory: {config.baseline})"


def closed_loop(config: EvalConfig, metrics: Metrics | None = None) -> dict[str, Any]:
    """Table 3: two clips out and back; rows with memory and without memory."""
    result = long_horizon(config, clips=(2,), metrics=metrics)
    two = result["clips"]["2"]
    return {"protocol": "closed-loop", "rows": [two["with_memory"], two["without_memory"]], "frames": two["frames"],
            "wall_s": result["wall_s"]}


def _closed_loop_variants(config: EvalConfig, variants: Sequence[tuple[str, EngineConfig]], metrics: Metrics,
                          desc: str) -> list[dict[str, Any]]:
    """With-memory closed loops (2 clips) under several engine configs; one row per config."""
    generator = _generator(config)
    per: list[list[dict]] = [[] for _ in variants]
    for item in _bar(_items(config), config, desc):
        for k, (_, engine_config) in enumerate(variants):
            loaded = load_world(item, config.width, config.height, config.fov_deg)
            first = loaded.world.history.get_rgb(0)
            path = pan_loop_path(loaded.world.origin_c2w, 2, config.clip, config.loop)
            frames = generate_with_memory(loaded.world, generator, path, engine_config, config.seed)
            scores = image_scores(frames[-1], first, metrics)
            scores["item"] = item.name
            scores["_pose_errors"] = pose_errors_for(loaded, frames, path, config.pose_stride, metrics.camera)
            per[k].append(scores)
    return [closed_loop_row(name, rows) for (name, _), rows in zip(variants, per)]


def ablation_inputs(config: EvalConfig, metrics: Metrics | None = None) -> dict[str, Any]:
    """Table 4: scene projection video on/off x reference frames on/off (closed loop, with memory)."""
    metrics = metrics or Metrics()
    variants = []
    for proj in (False, True):
        for refs in (False, True):
            ec = EngineConfig(clip=config.clip, use_scene_projection=proj, use_references=refs)
            variants.append((f"projection={'on' if proj else 'off'} references={'on' if refs else 'off'}", ec))
    t0 = time.perf_counter()
    rows = _closed_loop_variants(config, variants, metrics, "ablation: table 4")
    for row, (proj, refs) in zip(rows, [(p, r) for p in (False, True) for r in (False, True)]):
        row["scene_projection"], row["references"] = proj, refs
    return {"protocol": "ablation-inputs", "table": 4, "rows": rows, "wall_s": time.perf_counter() - t0}


def ablation_k(config: EvalConfig, ks: Sequence[int] = (1, 3, 5, 7), metrics: Metrics | None = None) -> dict[str, Any]:
    """Table 5: the number of reference frames K (closed loop, with memory)."""
    metrics = metrics or Metrics()
    variants = [(f"K={k}", EngineConfig(clip=config.clip, num_references=int(k))) for k in ks]
    t0 = time.perf_counter()
    rows = _closed_loop_variants(config, variants, metrics, "ablation: table 5")
    for row, k in zip(rows, ks):
        row["num_references"] = int(k)
    return {"protocol": "ablation-k", "table": 5, "rows": rows, "wall_s": time.perf_counter() - t0}


def _frames_vs_truth(loaded: LoadedItem, frames: Sequence[np.ndarray], path: np.ndarray, metrics: Metrics) -> dict[str, Any]:
    """Mean PSNR / SSIM / LPIPS of generated frames 1.. against the exact renders (frame 0 is the given image)."""
    ps, ss, lp = [], [], []
    for rgb, c2w in zip(frames[1:], path[1:]):
        truth = loaded.render_truth(c2w)[0]
        ps.append(min(psnr(rgb, truth), PSNR_CAP_DB))
        ss.append(ssim(rgb, truth))
        lp.append(metrics.lpips(rgb, truth))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "lpips": _mean(lp)}


def _truth_row(method: str, per_item: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [e for it in per_item for e in it.pop("_pose_errors", [])]
    row = {"method": method, "psnr": _mean([it["psnr"] for it in per_item]),
           "ssim": _mean([it["ssim"] for it in per_item]), "lpips": _mean([it["lpips"] for it in per_item]),
           "camera_control": summarize_pose_errors(errors), "items": per_item}
    for key in ("memory_points", "memory_bytes"):
        if per_item and key in per_item[0]:
            row[key] = float(np.mean([it[key] for it in per_item]))
    return row


def ground_truth(config: EvalConfig, metrics: Metrics | None = None) -> dict[str, Any]:
    """Table 2 style: generated frames vs the exact renders along the same forward path (procedural items)."""
    metrics = metrics or Metrics()
    generator = _generator(config)
    per: dict[str, list] = {"with_memory": [], "without_memory": []}
    t0 = time.perf_counter()
    for item in _bar(_items(config, procedural_only=True), config, "ground-truth"):
        for variant in per:
            loaded = load_world(item, config.width, config.height, config.fov_deg)
            path = forward_path(loaded.scene, config.gt_frames)
            if variant == "with_memory":
                frames = generate_with_memory(loaded.world, generator, path, EngineConfig(clip=config.clip), config.seed)
            else:
                frames = generate_without_memory(loaded.world, generator, path, config.clip, config.seed, config.baseline)
            scores = _frames_vs_truth(loaded, frames, path, metrics)
            scores["item"] = item.name
            scores["_pose_errors"] = pose_errors_for(loaded, frames, path, config.pose_stride, metrics.camera)
            per[variant].append(scores)
    rows = [_truth_row(_method_name(config, v), per[v]) for v in per]
    return {"protocol": "ground-truth", "table": 2, "rows": rows, "frames": config.gt_frames,
            "wall_s": time.perf_counter() - t0}


def ablation_voxel(config: EvalConfig, sides_m: Sequence[float] = (0.01, 0.03, 0.05, 0.07),
                   metrics: Metrics | None = None) -> dict[str, Any]:
    """Table 7: cube side d of the memory's voxels; frames vs exact renders, and the memory's size at the end."""
    metrics = metrics or Metrics()
    generator = _generator(config)
    per: list[list[dict]] = [[] for _ in sides_m]
    t0 = time.perf_counter()
    for item in _bar(_items(config, procedural_only=True), config, "ablation: table 7"):
        for k, d in enumerate(sides_m):
            loaded = load_world(item, config.width, config.height, config.fov_deg, MemoryConfig(voxel_size_m=float(d)))
            path = forward_path(loaded.scene, config.gt_frames)
            frames = generate_with_memory(loaded.world, generator, path, EngineConfig(clip=config.clip), config.seed)
            scores = _frames_vs_truth(loaded, frames, path, metrics)
            scores["item"] = item.name
            scores["memory_points"] = int(loaded.world.memory.num_points)
            scores["memory_bytes"] = int(loaded.world.memory.nbytes)
            per[k].append(scores)
    rows = []
    for d, items in zip(sides_m, per):
        row = _truth_row(f"d={d:.2f} m", items)
        row["voxel_size_m"] = float(d)
        rows.append(row)
    return {"protocol": "ablation-voxel", "table": 7, "rows": rows, "frames": config.gt_frames,
            "wall_s": time.perf_counter() - t0}

