"""The real-time geometric generator: memory render + reference warps + hole filling. The embedded default.

It implements ``world.generator.Generator`` without a neural network, on the CPU:

1. start from the scene projection video the engine rendered from the memory (paper Sec. 3.1.3: the memory
   rendered along the target poses, missing pixels zero);
2. warp the best retrieved reference frames into each target view: they keep the full image resolution, while
   the memory is voxelized at ``d`` (1 cm), so where a reference sees the same surface its colour is sharper;
   this is how this generator "uses" the paper's reference frames;
3. fill what nothing covers: colour by push-pull (a pyramid of weighted averages, smooth and O(pixels)), depth by
   the background-preferring fill of the memory update (a disocclusion shows what lies behind, not the occluder).

Unseen regions come out as smooth extrapolations of their surroundings: plausible enough to explore, and,
once folded back into the memory, they stay the same when the camera returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from world.generator import ClipRequest, ClipResult, ReferenceFrame
from world.update import fill_holes_background
from world.warp import warp_rgbd


@dataclass(frozen=True)
class GeometricConfig:
    max_reference_warps: int = 2  # references warped per target frame (best scores first); each costs ~1-2 ms
    same_surface_rel_tol: float = 0.03  # a warped pixel replaces the memory's if their depths agree within 3%


def pushpull_fill(
    rgb: np.ndarray,  # [H, W, 3] uint8
    valid: np.ndarray,  # [H, W] bool
) -> np.ndarray:
    """Fill pixels where ``valid`` is False from the weighted pyramid of their surroundings; valid pixels kept."""
    if valid.all():
        return rgb
    if not valid.any():
        return np.zeros_like(rgb)
    img = rgb.astype(np.float32)
    w = valid.astype(np.float32)
    levels: list[tuple[np.ndarray, np.ndarray]] = []
    c, a = img * w[..., None], w
    # push: premultiplied colour and weight averaged 2x2 down to a pyramid
    while True:
        levels.append((c, a))
        h, wd = a.shape
        if h <= 2 and wd <= 2:
            break
        size = ((wd + 1) // 2, (h + 1) // 2)
        c = cv2.resize(c, size, interpolation=cv2.INTER_AREA)
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
    # pull: from the coarsest level up, holes take the upsampled coarser estimate
    c, a = levels[-1]
    filled = np.where(a[..., None] > 0, c / np.maximum(a, 1e-8)[..., None], c.mean(axis=(0, 1)) / max(a.mean(), 1e-8))
    for c, a in reversed(levels[:-1]):
        up = cv2.resize(filled, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)
        alpha = np.minimum(a, 1.0)[..., None]
        own = c / np.maximum(a, 1e-8)[..., None]
        filled = alpha * own + (1.0 - alpha) * up
    out = np.clip(filled + 0.5, 0, 255).astype(np.uint8)
    out[valid] = rgb[valid]
    return out


class GeometricGenerator:
    """Memory render + reference warps + hole filling; deterministic (no randomness at all)."""

    name = "geometric"

    def __init__(self, config: GeometricConfig = GeometricConfig()) -> None:
        self.config = config

    def _apply_references(
        self,
        rgb: np.ndarray,  # [H, W, 3] uint8, memory render, modified in place
        depth: np.ndarray,  # [H, W] float32, modified in place
        valid: np.ndarray,  # [H, W] bool, modified in place
        c2w: np.ndarray,
        request: ClipRequest,
        references: list[ReferenceFrame],
    ) -> None:
        for ref in references:
            warped = warp_rgbd(ref.rgb, ref.depth_m, ref.intrinsics, ref.c2w, request.intrinsics, c2w)
            agree = warped.valid & valid & (
                np.abs(warped.depth_m - depth) <= self.config.same_surface_rel_tol * np.maximum(depth, 1e-6)
            )
            new = warped.valid & ~valid
            take = agree | new
            rgb[take] = warped.rgb[take]
            depth[new] = warped.depth_m[new]
            valid |= new

    def generate(self, request: ClipRequest) -> ClipResult:
        proj = request.target_projection
        refs = [r for r in sorted(request.references, key=lambda r: -r.score) if r.depth_m is not None]
        refs = refs[: self.config.max_reference_warps]
        n, h, w = request.num_target, request.intrinsics.height, request.intrinsics.width
        frames = np.empty((n, h, w, 3), np.uint8)
        depths = np.empty((n, h, w), np.float32)
        for t in range(n):
            rgb = proj.rgb[t].copy()
            depth = proj.depth_m[t].astype(np.float32, copy=True)
            valid = proj.valid[t].copy()
            if refs:
                self._apply_references(rgb, depth, valid, request.target_c2w[t], request, refs)
            frames[t] = pushpull_fill(rgb, valid)
            depths[t] = fill_holes_background(depth, valid)
        return ClipResult(frames=frames, depth_m=depths)
