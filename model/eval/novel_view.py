"""``spatia eval novel-view``: how well a generator fills space the world's memory has never seen (issue 10, sec. 1).

Protocol. Procedural items only (exact truth from ``world.scenes``), by default 640x360 at 75 deg FOV, each scene's
demo loop flown through the real ``Engine`` with the geometric generator, once per fill method
(``model.geometric.FILL_METHODS``; "legacy" is the baseline) and per engine setting (the demo's clips and the
server's real-time play clips). Along the loop:

- the *novel* pixels of a frame are those the world's **initial** memory (the first image's points) cannot render
  at that pose; a frame is *graded* when at least 40% of its pixels are novel;
- on the novel pixels of graded frames: masked PSNR, SSIM and GMSD against the exact render; the ratio of mean
  gradient magnitude to the truth's at full and at half resolution (fine noise must not fake detail); flicker
  (mean absolute change between consecutive graded frames on pixels novel in both, over the truth's change);
  AbsRel and delta < 1.25 of the generator's depth against the true z-depth on real surfaces (a generator depth of
  0 counts as an error; pixels that see the sky dome or the far ground are excluded and their share reported);
- at the end, the memory's geometry: accuracy (share of ALL memory points within 5 cm of a true surface; in scenes
  with a sky dome / far ground the point must also lie inside the scene's bounds) and completeness (share of the
  true surface seen on novel pixels along the loop that has a memory point within 5 cm), and its size.

Aggregation: per item, the image metrics (PSNR, SSIM, GMSD) are means over graded frames; the ratios (gradient
ratio, flicker) and the depth errors pool their sums over all graded pixels (a ratio of sums is stable where a
frame has few novel pixels). A row's value is the mean over its items.

Items: ``room``, ``house:1`` (a seed), ``room@turned`` (first camera yawed off the path, the world frame at that
camera, so the room's axes are not the world's), ``room@pitched`` (first camera pitched down, world frame at it:
"up" of the first camera is not the world's), ``room@photo`` (the first render handed to ``World.from_image`` as a
plain image: no depth, no intrinsics, the photo path's planar prior). In variants the offset eases back to the
loop over its first frames. Item sets: ``default``, ``variants``, ``photo``, ``all``.

Distances to the true surface are exact point-to-triangle distances (Open3D ``RaycastingScene.compute_distance``,
the scene's own mesh); completeness queries a scipy ``cKDTree`` of the final memory.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import structlog
from tqdm import tqdm

from spatia.world.actions import ClipConfig
from spatia.world.camera import Intrinsics
from spatia.world.engine import Engine, EngineConfig
from spatia.world.errors import InvalidInputError
from spatia.world.geometry import pixel_rays

log = structlog.get_logger("spatia.eval.novel_view")

NOVEL_FRAME_MIN_SHARE = 0.40  # a frame is graded when at least this share of its pixels is novel
SURFACE_TOL_M = 0.05  # accuracy / completeness: a point "is on" a surface within this distance
DEMO_FRAMES = 161  # the demo's loop length (spatia demo --frames default)
FOV_DEG = 75.0
VARIANT_YAW_DEG = 35.0  # "turned": first camera yawed right by this much (tens of degrees)
VARIANT_PITCH_DEG = 15.0  # "pitched" and "photo": first camera pitched down by this much
VARIANT_EASE_FRAMES = 24  # the offset eases linearly back to the loop over this many frames
COMPLETENESS_VOXEL_M = 0.02  # true surface samples are de-duplicated on this grid (area-like weighting)
COMPLETENESS_PIXEL_STEP = 2  # every n-th pixel of every n-th row of a frame samples the true surface
GMSD_T = 170.0  # Xue et al. 2014, for [0, 255] luminance

# Engine settings graded. "demo" = spatia demo's clips (spatia/demo.py DEMO_CLIP); "play" = the server's real-time
# Play defaults (server/session.py ClipConfig(4, 6, 2), ServerConfig.play_keyframe_stride,
# play_reuse_references_within and play_reuse_references_clips). tests/test_eval_novel_view.py checks both stay equal
# to their sources.
SETTINGS: dict[str, EngineConfig] = {
    "demo": EngineConfig(clip=ClipConfig(first_clip_frames=33, clip_frames=41, preceding_frames=9)),
    "play": EngineConfig(clip=ClipConfig(4, 6, 2), keyframe_stride=4, reuse_references_within=(5.0, 0.10),
                         reuse_references_clips=1),
}
VARIANTS = ("default", "turned", "pitched", "photo")
SCENES = ("room", "house", "courtyard")
ITEM_SETS: dict[str, tuple[str, ...]] = {
    "default": SCENES,
    "variants": tuple(f"{s}@turned" for s in SCENES) + tuple(f"{s}@pitched" for s in SCENES)
    + tuple(f"{s}:1" for s in SCENES),
    "photo": tuple(f"{s}@photo" for s in SCENES),
}
ITEM_SETS["all"] = ITEM_SETS["default"] + ITEM_SETS["variants"] + ITEM_SETS["photo"]
METRIC_KEYS = ("depth_absrel", "depth_delta125", "surface_5cm", "complete_5cm", "gmsd", "psnr", "ssim",
               "grad_ratio", "grad_ratio_2x", "flicker")


# ---------------------------------------------------------------------------------------------------------------
# Image metrics on a pixel mask
# ---------------------------------------------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, truth, mask = np.asarray(pred), np.asarray(truth), np.asarray(mask)
    if pred.shape != truth.shape:
        raise InvalidInputError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if mask.shape != pred.shape[:2] or mask.dtype != np.bool_:
        raise InvalidInputError(f"mask must be a bool array of shape {pred.shape[:2]}, got {mask.dtype} {mask.shape}")
    return pred, truth, mask


def luminance(rgb: np.ndarray) -> np.ndarray:
    """``[H, W]`` float64 luma (ITU-R BT.601, as GMSD's reference code) of a uint8 ``[H, W, 3]`` image."""
    rgb = np.asarray(rgb, np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def masked_mse(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error over the masked pixels (all channels); NaN when the mask is empty."""
    pred, truth, mask = _check_pair(pred, truth, mask)
    if not mask.any():
        return math.nan
    d = pred[mask].astype(np.float64) - truth[mask].astype(np.float64)
    return float(np.mean(d * d))


def masked_psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB over the masked pixels; capped at 100 dB for identical pixels (JSON has no infinity)."""
    mse = masked_mse(pred, truth, mask)
    if math.isnan(mse):
        return math.nan
    return 100.0 if mse == 0 else min(100.0, 10.0 * math.log10(data_range**2 / mse))


def ssim_map(pred: np.ndarray, truth: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """``[H, W]`` SSIM of every pixel's 11x11 Gaussian window (sigma 1.5), averaged over channels: the map whose
    interior mean is ``world.metrics.ssim`` (Wang et al. 2004, scikit-image's settings)."""
    x, y = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    out = np.zeros(x.shape[:2])
    for ch in range(x.shape[2]):
        xc, yc = x[..., ch], y[..., ch]
        mx, my = blur(xc), blur(yc)
        sxx, syy, sxy = blur(xc * xc) - mx * mx, blur(yc * yc) - my * my, blur(xc * yc) - mx * my
        out += ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return out / x.shape[2]


def masked_ssim(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM over the masked pixels (each pixel's window may reach 5 px into unmasked neighbours)."""
    pred, truth, mask = _check_pair(pred, truth, mask)
    return float(ssim_map(pred, truth)[mask].mean()) if mask.any() else math.nan


def _prewitt_magnitude(y: np.ndarray) -> np.ndarray:
    k = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0
    gx = cv2.filter2D(y, cv2.CV_64F, k, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(y, cv2.CV_64F, k.T, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx * gx + gy * gy)


def _half(y: np.ndarray) -> np.ndarray:
    """2x2 box average and decimation (odd last row / column dropped)."""
    h, w = (y.shape[0] // 2) * 2, (y.shape[1] // 2) * 2
    y = y[:h, :w]
    return 0.25 * (y[0::2, 0::2] + y[1::2, 0::2] + y[0::2, 1::2] + y[1::2, 1::2])


def _half_mask(mask: np.ndarray) -> np.ndarray:
    """A half-resolution pixel is in the mask when all four of its pixels are."""
    h, w = (mask.shape[0] // 2) * 2, (mask.shape[1] // 2) * 2
    m = mask[:h, :w]
    return m[0::2, 0::2] & m[1::2, 0::2] & m[0::2, 1::2] & m[1::2, 1::2]


def gmsd(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Gradient magnitude similarity deviation (Xue et al. 2014) over the masked pixels: luma, 2x2 average
    downsampling, Prewitt gradients, GMS = (2 m_p m_t + T) / (m_p^2 + m_t^2 + T) with T = 170; the standard
    deviation of GMS over the (downsampled) mask. 0 = the same structure; larger = more different."""
    pred, truth, mask = _check_pair(pred, truth, mask)
    mp, mt = _prewitt_magnitude(_half(luminance(pred))), _prewitt_magnitude(_half(luminance(truth)))
    m = _half_mask(mask)
    if not m.any():
        return math.nan
    gms = (2.0 * mp * mt + GMSD_T) / (mp * mp + mt * mt + GMSD_T)
    return float(np.std(gms[m]))


def gradient_magnitude(y: np.ndarray) -> np.ndarray:
    """``[H, W]`` gradient magnitude of a luma image from forward differences (grey levels per pixel; the last
    row / column repeat their neighbour). Forward differences see every frequency up to the pixel grid's, so
    pixel-scale noise shows at full resolution (a central-difference Sobel is blind to a 1-pixel checkerboard) and
    vanishes at half resolution after 2x2 averaging: the pair separates fine noise from real detail."""
    y = np.asarray(y, np.float64)
    gx = np.zeros_like(y)
    gy = np.zeros_like(y)
    gx[:, :-1] = y[:, 1:] - y[:, :-1]
    gy[:-1] = y[1:] - y[:-1]
    if y.shape[1] > 1:
        gx[:, -1] = gx[:, -2]
    if y.shape[0] > 1:
        gy[-1] = gy[-2]
    return np.sqrt(gx * gx + gy * gy)


def gradient_sums(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, half: bool = False) -> tuple[float, float]:
    """(sum of the prediction's, sum of the truth's) gradient magnitude over the mask, at full or half resolution."""
    pred, truth, mask = _check_pair(pred, truth, mask)
    yp, yt = luminance(pred), luminance(truth)
    if half:
        yp, yt, mask = _half(yp), _half(yt), _half_mask(mask)
    return float(gradient_magnitude(yp)[mask].sum()), float(gradient_magnitude(yt)[mask].sum())


def gradient_ratio(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, half: bool = False) -> float:
    """Mean gradient magnitude of the prediction over the truth's on the mask: 1 = as much detail, a blur << 1."""
    gp, gt = gradient_sums(pred, truth, mask, half)
    return gp / gt if gt > 0 else math.nan


def depth_error_sums(pred_m: np.ndarray, true_m: np.ndarray, mask: np.ndarray) -> tuple[float, int, int]:
    """(sum of |pred - true| / true, count with max(pred/true, true/pred) < 1.25, count) over the masked pixels
    with a true depth > 0. A prediction <= 0 or non-finite counts as an error (AbsRel 1, delta failed)."""
    pred_m, true_m, mask = np.asarray(pred_m, np.float64), np.asarray(true_m, np.float64), np.asarray(mask, bool)
    if pred_m.shape != true_m.shape or mask.shape != true_m.shape:
        raise InvalidInputError(f"depth shapes differ: {pred_m.shape}, {true_m.shape}, mask {mask.shape}")
    m = mask & (true_m > 0)
    p, t = pred_m[m], true_m[m]
    p = np.where(np.isfinite(p) & (p > 0), p, 0.0)
    absrel = np.where(p > 0, np.abs(p - t) / t, 1.0)
    with np.errstate(divide="ignore"):
        ratio = np.where(p > 0, np.maximum(p / t, t / np.maximum(p, 1e-12)), np.inf)
    return float(absrel.sum()), int(np.count_nonzero(ratio < 1.25)), int(p.size)


def depth_absrel(pred_m: np.ndarray, true_m: np.ndarray, mask: np.ndarray) -> float:
    s, _, n = depth_error_sums(pred_m, true_m, mask)
    return s / n if n else math.nan


def depth_delta125(pred_m: np.ndarray, true_m: np.ndarray, mask: np.ndarray) -> float:
    _, good, n = depth_error_sums(pred_m, true_m, mask)
    return good / n if n else math.nan


def flicker_sums(prev_pred: np.ndarray, pred: np.ndarray, prev_truth: np.ndarray, truth: np.ndarray,
                 mask: np.ndarray) -> tuple[float, float]:
    """(sum |pred - prev_pred|, sum |truth - prev_truth|) over the mask, all channels: the flicker ratio's parts."""
    m = np.asarray(mask, bool)
    dp = np.abs(pred.astype(np.int16) - prev_pred.astype(np.int16))[m]
    dt = np.abs(truth.astype(np.int16) - prev_truth.astype(np.int16))[m]
    return float(dp.sum()), float(dt.sum())


# ---------------------------------------------------------------------------------------------------------------
# Accumulating a loop
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FrameGrader:
    """Accumulates the per-frame novel-pixel metrics of one loop; ``result()`` gives the item's values."""

    min_novel_share: float = NOVEL_FRAME_MIN_SHARE
    frames: int = 0
    graded: int = 0
    novel_share_sum: float = 0.0
    psnr: list = field(default_factory=list)
    ssim: list = field(default_factory=list)
    gmsd: list = field(default_factory=list)
    grad: list = field(default_factory=lambda: [0.0, 0.0])
    grad2: list = field(default_factory=lambda: [0.0, 0.0])
    flick: list = field(default_factory=lambda: [0.0, 0.0])
    depth: list = field(default_factory=lambda: [0.0, 0, 0])  # absrel sum, delta count, count
    novel_pixels: int = 0
    excluded_pixels: int = 0  # novel pixels of graded frames seeing sky / far ground (no depth graded)
    # per graded frame: [loop frame number (1 = first generated), novel share, PSNR, AbsRel], to find where a
    # fill fails along the loop
    per_frame: list = field(default_factory=list)
    _prev: tuple | None = None

    def add(
        self,
        pred_rgb: np.ndarray,  # [H, W, 3] uint8, the generated frame
        pred_depth_m: np.ndarray | None,  # [H, W] float32 z-depth the generator gave (None: none given)
        truth_rgb: np.ndarray,  # [H, W, 3] uint8, exact render at the same pose and intrinsics
        truth_depth_m: np.ndarray,  # [H, W] float32 exact z-depth
        real_surface: np.ndarray,  # [H, W] bool, True where the truth sees a real surface (not sky / far ground)
        novel: np.ndarray,  # [H, W] bool, True where the initial memory renders nothing
        depth_only: bool = False,  # grade depth alone (the demo's summary needs no image metrics)
    ) -> bool:
        """Add one frame; returns whether it was graded (>= ``min_novel_share`` novel pixels)."""
        self.frames += 1
        share = float(novel.mean())
        self.novel_share_sum += share
        if share < self.min_novel_share:
            self._prev = None
            return False
        self.graded += 1
        self.novel_pixels += int(novel.sum())
        self.excluded_pixels += int((novel & ~real_surface).sum())
        if pred_depth_m is not None:
            s, good, n = depth_error_sums(pred_depth_m, truth_depth_m, novel & real_surface)
        else:  # no depth at all: every graded pixel is an error
            n = int((novel & real_surface & (truth_depth_m > 0)).sum())
            s, good = float(n), 0
        self.depth[0] += s
        self.depth[1] += good
        self.depth[2] += n
        self.psnr.append(masked_psnr(pred_rgb, truth_rgb, novel))
        self.per_frame.append([self.frames, round(share, 4), round(self.psnr[-1], 2), round(s / n, 4) if n else None])
        if depth_only:
            return True
        self.ssim.append(masked_ssim(pred_rgb, truth_rgb, novel))
        self.gmsd.append(gmsd(pred_rgb, truth_rgb, novel))
        for acc, half in ((self.grad, False), (self.grad2, True)):
            gp, gt = gradient_sums(pred_rgb, truth_rgb, novel, half)
            acc[0] += gp
            acc[1] += gt
        if self._prev is not None:
            pp, pt, pn = self._prev
            fp, ft = flicker_sums(pp, pred_rgb, pt, truth_rgb, pn & novel)
            self.flick[0] += fp
            self.flick[1] += ft
        self._prev = (pred_rgb, truth_rgb, novel)
        return True

    def result(self) -> dict[str, Any]:
        def mean(v: list) -> float | None:
            v = [x for x in v if x is not None and not math.isnan(x)]
            return float(np.mean(v)) if v else None

        def ratio(a: float, b: float) -> float | None:
            return a / b if b > 0 else None

        return {
            "frames": self.frames,
            "graded_frames": self.graded,
            "novel_share": self.novel_share_sum / self.frames if self.frames else None,
            "psnr": mean(self.psnr),
            "ssim": mean(self.ssim),
            "gmsd": mean(self.gmsd),
            "grad_ratio": ratio(*self.grad),
            "grad_ratio_2x": ratio(*self.grad2),
            "flicker": ratio(*self.flick),
            "depth_absrel": ratio(self.depth[0], self.depth[2]),
            "depth_delta125": ratio(self.depth[1], self.depth[2]),
            "depth_excluded_share": ratio(self.excluded_pixels, self.novel_pixels),
            "per_frame": {"columns": ["frame", "novel_share", "psnr", "depth_absrel"], "values": self.per_frame},
        }


# ---------------------------------------------------------------------------------------------------------------
# Geometry: accuracy and completeness of the final memory against the exact mesh
# ---------------------------------------------------------------------------------------------------------------


class SurfaceTruth:
    """Exact distances from points to a scene's triangles (Open3D ``RaycastingScene.compute_distance``)."""

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray,
                 bounds: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        import open3d as o3d

        self._rc = o3d.t.geometry.RaycastingScene()
        self._rc.add_triangles(o3d.core.Tensor(np.asarray(vertices, np.float32)),
                               o3d.core.Tensor(np.asarray(triangles, np.uint32)))
        self.bounds = bounds  # ([3], [3]) AABB a point must lie in (outdoor scenes), None: anywhere

    @classmethod
    def of_scene(cls, scene) -> "SurfaceTruth":
        has_background = any(o.background for o in scene.objects)
        return cls(scene.vertices, scene.triangles, scene.bounds if has_background else None)

    def distance_m(self, points: np.ndarray) -> np.ndarray:
        """``[N]`` unsigned distance of ``points`` ``[N, 3]`` (scene frame) to the nearest triangle."""
        import open3d as o3d

        pts = np.ascontiguousarray(points, np.float32).reshape(-1, 3)
        out = np.empty(len(pts), np.float32)
        for s in range(0, len(pts), 1_000_000):  # chunks bound the temporary memory
            out[s:s + 1_000_000] = self._rc.compute_distance(o3d.core.Tensor(pts[s:s + 1_000_000])).numpy()
        return out

    def accurate(self, points: np.ndarray, tol_m: float = SURFACE_TOL_M) -> np.ndarray:
        """``[N]`` bool: within ``tol_m`` of a true surface (and inside the bounds, where there are bounds)."""
        ok = self.distance_m(points) <= tol_m
        if self.bounds is not None:
            lo, hi = self.bounds
            ok &= np.all((points >= np.asarray(lo) - tol_m) & (points <= np.asarray(hi) + tol_m), axis=1)
        return ok


def surface_accuracy(points: np.ndarray, truth: SurfaceTruth, tol_m: float = SURFACE_TOL_M) -> float | None:
    """Share of ``points`` ``[N, 3]`` (scene frame) within ``tol_m`` of a true surface; None for no points."""
    return float(truth.accurate(points, tol_m).mean()) if len(points) else None


def completeness(surface_points: np.ndarray, memory_points: np.ndarray, tol_m: float = SURFACE_TOL_M) -> float | None:
    """Share of true surface samples ``[S, 3]`` with a memory point ``[N, 3]`` (same frame) within ``tol_m``."""
    from scipy.spatial import cKDTree

    if len(surface_points) == 0:
        return None
    if len(memory_points) == 0:
        return 0.0
    tree = cKDTree(np.asarray(memory_points, np.float64))
    d, _ = tree.query(np.asarray(surface_points, np.float64), k=1, distance_upper_bound=tol_m, workers=1)
    return float(np.mean(d <= tol_m))


def voxel_unique(points: np.ndarray, voxel_m: float) -> np.ndarray:
    """One point per occupied ``voxel_m`` cell (the first in order), so that samples weigh surface area."""
    points = np.asarray(points).reshape(-1, 3)
    if len(points) == 0:
        return points
    q = np.floor(points / voxel_m).astype(np.int64)
    q -= q.min(axis=0)
    span = q.max(axis=0) + 1
    if float(span[0]) * float(span[1]) * float(span[2]) >= 2.0**62:
        raise InvalidInputError(f"points span too many {voxel_m} m cells to pack into one key")
    keys = (q[:, 0] * span[1] + q[:, 1]) * span[2] + q[:, 2]  # one int64 per cell: 1-D unique is ~10x faster
    _, first = np.unique(keys, return_index=True)
    return points[np.sort(first)]


def backproject(depth_m: np.ndarray, mask: np.ndarray, intrinsics: Intrinsics, c2w: np.ndarray,
                step: int = 1) -> np.ndarray:
    """``[M, 3]`` world points of the masked pixels (every ``step``-th row and column) of a z-depth image."""
    rays = pixel_rays(intrinsics)[::step, ::step]  # [h, w, 3] camera frame, z = 1
    d, m = depth_m[::step, ::step], mask[::step, ::step] & (depth_m[::step, ::step] > 0)
    pts_cam = rays[m] * d[m][:, None]
    return pts_cam @ c2w[:3, :3].T + c2w[:3, 3]


# ---------------------------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------------------------


def _camera_rotation(yaw_deg: float, pitch_down_deg: float) -> np.ndarray:
    """``[4, 4]`` rotation in the camera's own frame (x right, y down, z forward): yaw right, then pitch down."""
    a, b = math.radians(yaw_deg), math.radians(pitch_down_deg)
    yaw = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])  # z turns to +x
    pitch = np.array([[1, 0, 0], [0, math.cos(b), math.sin(b)], [0, -math.sin(b), math.cos(b)]])  # z tilts to +y
    T = np.eye(4)
    T[:3, :3] = yaw @ pitch
    return T


@dataclass(frozen=True)
class NovelItem:
    scene: str
    seed: int = 0
    variant: str = "default"

    @classmethod
    def parse(cls, spec: str) -> "NovelItem":
        """``room``, ``house:1``, ``courtyard@turned``, ``room:2@photo``."""
        text = spec.strip()
        variant = "default"
        if "@" in text:
            text, variant = text.split("@", 1)
        seed = 0
        if ":" in text:
            text, s = text.split(":", 1)
            try:
                seed = int(s)
            except ValueError:
                raise InvalidInputError(f"item {spec!r}: seed {s!r} is not an integer") from None
        if text not in SCENES:
            raise InvalidInputError(f"item {spec!r}: unknown scene {text!r}; scenes: {', '.join(SCENES)}")
        if variant not in VARIANTS:
            raise InvalidInputError(f"item {spec!r}: unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
        if seed < 0:
            raise InvalidInputError(f"item {spec!r}: seed must be >= 0")
        return cls(text, seed, variant)

    @property
    def name(self) -> str:
        return self.scene + (f":{self.seed}" if self.seed else "") + ("" if self.variant == "default" else f"@{self.variant}")

    @property
    def item_set(self) -> str:
        if self.variant == "photo":
            return "photo"
        return "default" if (self.variant == "default" and self.seed == 0) else "variants"


def parse_items(specs: Sequence[str]) -> list[NovelItem]:
    """Item specs or set names (``default``, ``variants``, ``photo``, ``all``), comma- or space-separated."""
    out: list[NovelItem] = []
    for spec in specs:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            for name in ITEM_SETS.get(part, (part,)):
                item = NovelItem.parse(name)
                if item not in out:
                    out.append(item)
    if not out:
        raise InvalidInputError("no items given")
    return out


def truth_view(scene, intrinsics: Intrinsics, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb [H, W, 3] uint8, z-depth [H, W] float32, real surface [H, W] bool) of a procedural scene's exact render
    at ``c2w`` (scene frame); "real" excludes misses and the sky dome / far ground (``SceneObject.background``)."""
    rgb, depth = scene.render(intrinsics, c2w)
    obj = scene.cast(intrinsics, c2w).object_id
    background = np.array([o.background for o in scene.objects] + [True], bool)  # index -1 (a miss) -> True
    return rgb, depth, (depth > 0) & ~background[obj]


class DemoNovelGrader:
    """The demo's novel-pixel numbers (``summary.json``): PSNR and depth AbsRel of a procedural loop, graded with
    ``FrameGrader`` against the scene's exact renders, novel = what the world's initial memory cannot render."""

    def __init__(self, scene, world) -> None:
        self.scene = scene
        self.intrinsics = world.intrinsics
        self.initial = world.memory.copy()  # the memory before any generated frame is folded in
        self.grader = FrameGrader()

    def add(self, c2w: np.ndarray, rgb: np.ndarray, depth_m: np.ndarray | None) -> None:
        """One generated frame at ``c2w`` (world frame = the scene's for ``World.from_scene``)."""
        novel = ~self.initial.render(self.intrinsics, c2w).valid
        if novel.mean() < self.grader.min_novel_share:  # not graded: skip the truth render
            self.grader.frames += 1
            self.grader.novel_share_sum += float(novel.mean())
            return
        truth_rgb, truth_depth, real = truth_view(self.scene, self.intrinsics, c2w)
        self.grader.add(rgb, depth_m, truth_rgb, truth_depth, real, novel, depth_only=True)

    def summary(self) -> dict[str, Any]:
        r = self.grader.result()
        return {"novel_psnr": _r(r["psnr"], 2), "novel_depth_absrel": _r(r["depth_absrel"], 3),
                "novel_graded_frames": r["graded_frames"]}


@dataclass
class PreparedItem:
    """An item made concrete at one resolution: how to build its world, its path and the truth along it."""

    item: NovelItem
    scene: Any  # world.scenes.ProceduralScene
    build_world: Callable[[], Any]  # -> a fresh World (the same one every call)
    intrinsics: Intrinsics  # the camera the world generates with (photo mode: the photo path's guess)
    scene_from_world: np.ndarray  # [4, 4] maps world-frame points to the scene's frame
    path_world: np.ndarray  # [N, 4, 4] c2w, world frame; frame 0 = the first image's pose
    novel: np.ndarray  # [N, H, W] bool, pixels the initial memory cannot render
    initial_points: int
    # truth per path frame, rendered once and shared by every method and setting of the item
    _truth: dict = field(default_factory=dict, repr=False)
    _surface: np.ndarray | None = field(default=None, repr=False)

    def truth(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb, z-depth, real-surface mask) of the exact render at path frame ``i``."""
        if i not in self._truth:
            self._truth[i] = truth_view(self.scene, self.intrinsics, self.scene_from_world @ self.path_world[i])
        return self._truth[i]

    def surface_samples(self) -> np.ndarray:
        """``[S, 3]`` scene-frame samples of the true surface seen on novel pixels along the loop (completeness's
        reference set): every ``COMPLETENESS_PIXEL_STEP``-th pixel, one per ``COMPLETENESS_VOXEL_M`` cell."""
        if self._surface is None:
            parts = []
            for i in range(1, len(self.path_world)):
                _, depth, real = self.truth(i)
                pts = backproject(depth, self.novel[i] & real, self.intrinsics,
                                  self.scene_from_world @ self.path_world[i], step=COMPLETENESS_PIXEL_STEP)
                parts.append(voxel_unique(pts, COMPLETENESS_VOXEL_M))
            self._surface = voxel_unique(np.concatenate(parts) if parts else np.zeros((0, 3)), COMPLETENESS_VOXEL_M)
        return self._surface

    @property
    def graded_frames(self) -> np.ndarray:
        share = self.novel.reshape(len(self.novel), -1).mean(axis=1)
        return np.flatnonzero(share >= NOVEL_FRAME_MIN_SHARE)


def prepare_item(item: NovelItem, width: int, height: int, frames: int = DEMO_FRAMES) -> PreparedItem:
    from spatia.world.scenes import make_scene
    from spatia.world.state import World

    scene = make_scene(item.scene, item.seed)
    K = Intrinsics.from_fov(FOV_DEG, width, height)
    path = scene.demo_path(frames)  # [N, 4, 4] scene frame
    if item.variant in ("turned", "pitched", "photo"):
        yaw, pitch = (VARIANT_YAW_DEG, 0.0) if item.variant == "turned" else (0.0, VARIANT_PITCH_DEG)
        path = path.copy()
        for i in range(min(VARIANT_EASE_FRAMES, len(path))):
            w = 1.0 - i / VARIANT_EASE_FRAMES
            path[i] = path[i] @ _camera_rotation(yaw * w, pitch * w)
    first = path[0]
    source = f"eval:{item.name}"
    if item.variant == "default":
        T_sw = np.eye(4)

        def build():
            return World.from_scene(item.scene, item.seed, width, height, FOV_DEG, source=source)
    else:
        T_sw = first.copy()  # the world frame is the first camera's
        rgb0, depth0 = scene.render(K, first)
        if item.variant == "photo":
            def build():  # a plain image: no depth, no intrinsics (the photo path guesses both, as
                # `spatia demo --image` and CreateWorld from an image do: the photo layout estimator)
                from spatia.model.fill.geometry.photo import photo_depth_estimator

                return World.from_image(rgb0.copy(), depth_estimator=photo_depth_estimator(), source=source)
        else:
            def build():
                return World.from_rgbd(rgb0.copy(), depth0.copy(), K, None, source=source)
    world = build()
    path_world = np.linalg.inv(T_sw) @ path
    Kw = world.intrinsics
    novel = np.stack([~world.memory.render(Kw, T).valid for T in path_world])
    return PreparedItem(item, scene, build, Kw, T_sw, path_world, novel, world.memory.num_points)


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------


def fill_methods() -> tuple[str, ...]:
    from spatia.model.geometric import FILL_METHODS

    return tuple(FILL_METHODS)


def strip_frames(prepared: PreparedItem, count: int = 3) -> list[int]:
    """Path frames shown in the item's strip: ``count`` graded frames spread evenly over the graded ones."""
    graded = prepared.graded_frames
    graded = graded[graded > 0]
    if len(graded) == 0:
        return []
    picks = np.linspace(0, len(graded) - 1, count + 2)[1:-1] if len(graded) > count else np.arange(len(graded))
    return sorted({int(graded[int(round(p))]) for p in picks})


def run_item(prepared: PreparedItem, method: str, setting: str, seed: int = 0, keep_frames: Sequence[int] = (),
             progress: bool = True) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Fly one item's loop with one fill method and engine setting; returns (values, kept frames by path index)."""
    from spatia.model import make_generator

    world = prepared.build_world()
    engine = Engine(world, make_generator("geometric", fill=method), SETTINGS[setting])
    grader = FrameGrader()
    kept: dict[int, np.ndarray] = {}
    keep = set(keep_frames)
    n = len(prepared.path_world)
    t0 = time.perf_counter()
    gen_s = 0.0
    stream = engine.generate(prepared.path_world[1:], seed=seed)
    bar = tqdm(total=n - 1, desc=f"{prepared.item.name} {method} {setting}", unit="frame", file=sys.stderr,
               disable=not progress, leave=False)
    for i in range(1, n):
        t = time.perf_counter()
        frame = next(stream)
        gen_s += time.perf_counter() - t
        truth_rgb, truth_depth, real = prepared.truth(i)
        novel = prepared.novel[i]
        grader.add(frame.rgb, frame.depth_m, truth_rgb, truth_depth, real, novel)
        if i in keep:
            kept[i] = frame.rgb
        bar.update(1)
    deque(stream, maxlen=0)  # drains the generator: the last clip's memory update runs on the final next()
    bar.close()
    values = grader.result()
    T = prepared.scene_from_world
    mem_pts = world.memory.positions.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    truth = SurfaceTruth.of_scene(prepared.scene)
    samples = prepared.surface_samples()
    values.update(
        surface_5cm=surface_accuracy(mem_pts, truth),
        complete_5cm=completeness(samples, mem_pts),
        memory_points=int(world.memory.num_points),
        memory_bytes=int(world.memory.nbytes),
        initial_points=prepared.initial_points,
        generate_s=round(gen_s, 2),
        wall_s=round(time.perf_counter() - t0, 2),
    )
    log.info("novel-view item done", item=prepared.item.name, method=method, setting=setting,
             graded=values["graded_frames"], psnr=_r(values["psnr"]), absrel=_r(values["depth_absrel"]),
             wall_s=values["wall_s"])
    return values, kept


def _r(x: Any, digits: int = 3) -> Any:
    return None if x is None else round(float(x), digits)


def _mean_of(per_item: dict[str, dict[str, Any]], key: str) -> float | None:
    v = [d[key] for d in per_item.values() if d.get(key) is not None]
    return float(np.mean(v)) if v else None


def evaluate(items: Sequence[NovelItem], methods: Sequence[str] | None = None,
             settings: Sequence[str] = ("demo", "play"), width: int = 640, height: int = 360,
             frames: int = DEMO_FRAMES, seed: int = 0, strips_dir: Path | None = None, strip_setting: str = "demo",
             progress: bool = True, command: str = "",
             on_item: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every item x method x setting; returns ``{"command", "config", "rows", ...}`` (see the module doc).
    ``on_item`` gets the result so far after every item (long runs write partial output with it)."""
    methods = tuple(methods or fill_methods())
    known = fill_methods()
    for m in methods:
        if m not in known:
            raise InvalidInputError(f"unknown fill method {m!r}; known: {', '.join(known)}")
    for s in settings:
        if s not in SETTINGS:
            raise InvalidInputError(f"unknown setting {s!r}; known: {', '.join(SETTINGS)}")
    per: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    item_info: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for item in tqdm(items, desc="novel-view items", unit="item", file=sys.stderr, disable=not progress):
        prepared = prepare_item(item, width, height, frames)
        graded = prepared.graded_frames
        shown = strip_frames(prepared) if strips_dir is not None else []
        item_info.append({
            "item": item.name, "item_set": item.item_set, "frames": len(prepared.path_world),
            "graded_frames": int(len(graded)),
            "novel_share": float(prepared.novel[1:].mean()),
            "resolution": [prepared.intrinsics.width, prepared.intrinsics.height],
            "fov_deg": round(math.degrees(2 * math.atan(prepared.intrinsics.width / 2 / prepared.intrinsics.fx)), 2),
        })
        strip: dict[str, dict[int, np.ndarray]] = {}
        for setting in settings:
            for method in methods:
                values, kept = run_item(prepared, method, setting, seed,
                                        keep_frames=shown if setting == strip_setting else (), progress=progress)
                per.setdefault((method, setting, item.item_set), {})[item.name] = values
                if kept:
                    strip[method] = kept
        if strips_dir is not None and strip:
            write_strip(Path(strips_dir) / f"{item.name.replace(':', '-').replace('@', '_')}.png", prepared, shown,
                        strip, methods)
        if on_item is not None:
            on_item(_result(per, item_info, methods, settings, width, height, frames, seed, command, t_all))
    return _result(per, item_info, methods, settings, width, height, frames, seed, command, t_all)


def _result(per: dict, item_info: list, methods, settings, width: int, height: int, frames: int, seed: int,
            command: str, t_all: float) -> dict[str, Any]:
    rows = []
    for (method, setting, item_set), per_item in per.items():
        row: dict[str, Any] = {"method": method, "baseline": method == "legacy", "setting": setting,
                               "item_set": item_set, "items": len(per_item)}
        for key in METRIC_KEYS + ("depth_excluded_share", "novel_share", "memory_points", "memory_bytes"):
            row[key] = _mean_of(per_item, key)
        row["per_item"] = per_item
        rows.append(row)
    return {
        "command": command,
        "protocol": "novel-view",
        "config": {"width": width, "height": height, "fov_deg": FOV_DEG, "frames": frames, "seed": seed,
                   "methods": list(methods), "settings": {s: _setting_doc(SETTINGS[s]) for s in settings},
                   "novel_frame_min_share": NOVEL_FRAME_MIN_SHARE, "surface_tol_m": SURFACE_TOL_M},
        "items": list(item_info),
        "rows": rows,
        "wall_s": round(time.perf_counter() - t_all, 1),
    }


def _setting_doc(cfg: EngineConfig) -> dict[str, Any]:
    c = cfg.clip
    return {"first_clip_frames": c.first_clip_frames, "clip_frames": c.clip_frames,
            "preceding_frames": c.preceding_frames, "keyframe_stride": cfg.keyframe_stride,
            "reuse_references_within": cfg.reuse_references_within,
            "reuse_references_clips": cfg.reuse_references_clips}


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------


def write_strip(path: Path, prepared: PreparedItem, frames: Sequence[int], by_method: dict[str, dict[int, np.ndarray]],
                methods: Sequence[str], scale: float = 0.5) -> None:
    """A PNG: one row per shown frame, columns truth | each method (new fills first, the baseline last)."""
    order = [m for m in methods if m != "legacy"] + [m for m in methods if m == "legacy"]
    rows = []
    for i in frames:
        truth, _, _ = prepared.truth(i)
        cells = [("truth", truth)] + [(m + (" (baseline)" if m == "legacy" else ""), by_method[m][i])
                                      for m in order if i in by_method.get(m, {})]
        row = []
        for label, img in cells:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale != 1 else img.copy()
            text = f"{label}  f{i} novel {prepared.novel[i].mean():.0%}"
            cv2.putText(img, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(img, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            row.append(img)
            row.append(np.full((img.shape[0], 4, 3), 255, np.uint8))
        rows.append(np.concatenate(row[:-1], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    if not rows:
        return
    image = np.concatenate(rows[:-1], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _fmt(x: Any, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


COLUMNS = (("depth_absrel", "AbsRel", 2), ("depth_delta125", "δ<1.25", 2), ("surface_5cm", "acc 5cm", 2),
           ("complete_5cm", "compl 5cm", 2), ("gmsd", "GMSD", 3), ("psnr", "PSNR dB", 1), ("ssim", "SSIM", 3),
           ("grad_ratio", "grad", 2), ("grad_ratio_2x", "grad ½", 2), ("flicker", "flicker", 2),
           ("depth_excluded_share", "sky/far", 2), ("memory_points", "points", 0))


def markdown(result: dict[str, Any]) -> str:
    """Tables: one per item set (rows = method x setting), then per-item values of every row."""
    out = [f"<!-- {result.get('command', '')} -->", ""]
    cfg = result["config"]
    out.append(f"Novel-view fill, {cfg['width']}x{cfg['height']}, {cfg['fov_deg']:g} deg FOV, {cfg['frames']}-frame "
               f"demo loops; novel pixels of frames with >= {cfg['novel_frame_min_share']:.0%} novel pixels.")
    head = "| item set | method | setting | " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|---" * (3 + len(COLUMNS)) + "|"
    out += ["", head, sep]
    for row in result["rows"]:
        method = row["method"] + (" (baseline)" if row["baseline"] else "")
        cells = [_fmt(row.get(k), d) if k != "memory_points" else (f"{row[k]:,.0f}" if row.get(k) else "-")
                 for k, _, d in COLUMNS]
        out.append(f"| {row['item_set']} ({row['items']}) | {method} | {row['setting']} | " + " | ".join(cells) + " |")
    out += ["", "Per item:", "", "| item | method | setting | " + " | ".join(c[1] for c in COLUMNS) + " |", sep]
    for row in result["rows"]:
        for name, v in row["per_item"].items():
            cells = [_fmt(v.get(k), d) if k != "memory_points" else f"{v[k]:,}" for k, _, d in COLUMNS]
            out.append(f"| {name} | {row['method']} | {row['setting']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
