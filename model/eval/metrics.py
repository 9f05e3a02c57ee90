"""Metrics of the paper's evaluation (Sec. 4 and appendix) beyond PSNR / SSIM (those live in ``world.metrics``).

- LPIPS: only with local weights (``model.eval.lpips``); otherwise ``Unavailable`` with the reason.
- Match Accuracy (appendix): high-confidence correspondences between the first image and the last frame,
  normalised by the first image's self-matches. RoMa (``romatch``) when installed and given local weights, as the
  paper; otherwise the classical variant named ``sift-magsac``: SIFT keypoints, Lowe ratio test, the fundamental
  matrix by MAGSAC++ (OpenCV ``USAC_MAGSAC``); the count is its inliers, normalised the same way.
- Camera-control error: where each generated frame really looks from. RGB-D odometry (``world.odometry``) from a
  reference view rendered at the commanded pose (the exact procedural scene, or the world's initial memory for
  photographs) to the generated frame gives the frame's pose; the error is the rotation (degrees) and camera-centre
  distance (centimetres) to the commanded pose. The paper's "Camera Control" column is WorldScore's 0-100 score, a
  different number; ours is a physical error (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from spatia.world.camera import Intrinsics, invert_pose, rotation_angle_deg, translation_distance_m, validate_pose
from spatia.world.errors import InvalidInputError


@dataclass(frozen=True)
class Unavailable:
    """A metric that could not be computed honestly here, and why (reported as ``null`` + the reason)."""

    reason: str


def _check_rgb(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InvalidInputError(f"{name} must be uint8 [H, W, 3], got {img.dtype} {list(img.shape)}")
    return img


# ---------------------------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------------------------


class LpipsMetric:
    """LPIPS when local weights are given, else ``available`` is False and ``reason`` says why."""

    def __init__(self, weight_paths: Sequence[str | Path] | None = None, net: str = "alex", device: str = "cpu"):
        self.net_name = net
        self._model = None
        if not weight_paths:
            self.reason = "no local LPIPS weights given (--lpips-weights BACKBONE.pth HEADS.pth)"
            return
        from spatia.model.eval.lpips import load_lpips  # torch only when LPIPS is really used

        self._model = load_lpips(weight_paths, net=net, device=device)
        self.reason = ""

    @property
    def available(self) -> bool:
        return self._model is not None

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float | None:
        if self._model is None:
            return None
        return self._model.distance(_check_rgb(a, "a"), _check_rgb(b, "b"))


# ---------------------------------------------------------------------------------------------------------------
# Match Accuracy
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiftMagsacConfig:
    max_features: int = 2000
    ratio: float = 0.8  # Lowe's ratio test on the two nearest descriptors
    magsac_threshold_px: float = 1.0  # MAGSAC++ sigma bound; the RoMa demo uses 0.2 px at RoMa's sub-pixel accuracy
    confidence: float = 0.999
    max_iters: int = 10000
    min_matches: int = 8  # fewer ratio-test matches than this: no fundamental matrix, 0 inliers


def ratio_test_matches(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float) -> np.ndarray:
    """``[M, 2]`` (index in a, index in b) pairs passing Lowe's ratio test; OpenCV brute-force L2 kNN."""
    if len(desc_a) == 0 or len(desc_b) < 2:
        return np.zeros((0, 2), np.int64)
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_a.astype(np.float32), desc_b.astype(np.float32), k=2)
    pairs = [(m.queryIdx, m.trainIdx) for m, n in knn if m.distance < ratio * n.distance]
    return np.array(pairs, np.int64).reshape(-1, 2)


def reference_ratio_test_matches(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float) -> np.ndarray:
    """Slow reference of ``ratio_test_matches``: full distance table, a loop over the rows of a."""
    pairs = []
    if len(desc_a) == 0 or len(desc_b) < 2:
        return np.zeros((0, 2), np.int64)
    b = desc_b.astype(np.float64)
    for i, d in enumerate(desc_a.astype(np.float64)):
        dist = np.sqrt(((b - d) ** 2).sum(axis=1))
        j1, j2 = np.argsort(dist, kind="stable")[:2]
        if dist[j1] < ratio * dist[j2]:
            pairs.append((i, int(j1)))
    return np.array(pairs, np.int64).reshape(-1, 2)


def sift_magsac_inliers(a: np.ndarray, b: np.ndarray, config: SiftMagsacConfig = SiftMagsacConfig()) -> int:
    """Correspondences between two RGB images that survive the ratio test and a MAGSAC++ fundamental matrix."""
    sift = cv2.SIFT_create(nfeatures=config.max_features)
    ka, da = sift.detectAndCompute(cv2.cvtColor(_check_rgb(a, "a"), cv2.COLOR_RGB2GRAY), None)
    kb, db = sift.detectAndCompute(cv2.cvtColor(_check_rgb(b, "b"), cv2.COLOR_RGB2GRAY), None)
    if da is None or db is None:
        return 0
    pairs = ratio_test_matches(da, db, config.ratio)
    if len(pairs) < config.min_matches:
        return 0
    pa = np.float64([ka[i].pt for i in pairs[:, 0]])
    pb = np.float64([kb[j].pt for j in pairs[:, 1]])
    if np.abs(pa - pb).max() < 1e-9:
        # identical point sets (an image matched with itself): F is undefined (every F with x^T F x = 0 fits);
        # every match is a correct one, which is what the normalisation needs
        return len(pairs)
    try:
        _, inliers = cv2.findFundamentalMat(pa, pb, cv2.USAC_MAGSAC, config.magsac_threshold_px, config.confidence,
                                            config.max_iters)
    except cv2.error:
        # OpenCV asserts when no model fits at all (degenerate configurations, e.g. matches on one line or a
        # few repeated points): no geometrically consistent correspondences
        return 0
    return 0 if inliers is None else int(inliers.sum())


class MatchAccuracy:
    """Match Accuracy (appendix): matches(first, last) / matches(first, first). ``method`` says which matcher."""

    def __init__(self, roma_weights: str | Path | None = None, dinov2_weights: str | Path | None = None,
                 device: str = "cpu", sift: SiftMagsacConfig = SiftMagsacConfig(),
                 roma_certainty: float = 0.5, min_self_matches: int = 16):
        self.sift = sift
        self.min_self_matches = min_self_matches
        self.roma_certainty = roma_certainty
        self._roma = None
        self.note = ""
        if roma_weights is not None:
            try:
                import romatch  # noqa: F401
            except ModuleNotFoundError:
                self.note = "romatch is not installed: RoMa Match Accuracy unavailable, classical sift-magsac used"
            else:
                self._roma = _load_roma(roma_weights, dinov2_weights, device)
                self._device = device
        else:
            self.note = "no RoMa weights given (--roma-weights): classical sift-magsac variant"

    @property
    def method(self) -> str:
        return "roma" if self._roma is not None else "sift-magsac"

    def count(self, a: np.ndarray, b: np.ndarray) -> int:
        if self._roma is None:
            return sift_magsac_inliers(a, b, self.sift)
        return _roma_confident_matches(self._roma, a, b, self.roma_certainty, self._device)

    def __call__(self, first: np.ndarray, last: np.ndarray) -> float | None:
        """Normalised match count in [0, ~1]; None (undefined, left out of means) when the first image has too
        few self-matches to normalise by (a textureless view: SIFT finds almost no keypoints)."""
        own = self.count(first, first)
        if own < self.min_self_matches:
            return None
        return self.count(first, last) / own


def _load_roma(weights: str | Path, dinov2_weights: str | Path | None, device: str):
    """RoMa outdoor with local state dicts (no URL fetch); ``use_custom_corr=False`` needs no compiled extra."""
    import torch
    from romatch import roma_outdoor

    w = torch.load(weights, map_location=device, weights_only=True)
    d = torch.load(dinov2_weights, map_location=device, weights_only=True) if dinov2_weights else None
    if d is None:
        raise InvalidInputError("RoMa needs its DINOv2 weights too (--roma-dinov2-weights)")
    return roma_outdoor(device, weights=w, dinov2_weights=d, use_custom_corr=False)


def _roma_confident_matches(model, a: np.ndarray, b: np.ndarray, threshold: float, device: str) -> int:
    """Pixels of RoMa's dense warp a->b whose certainty exceeds ``threshold`` (the appendix's valid matches)."""
    from PIL import Image

    _, certainty = model.match(Image.fromarray(a), Image.fromarray(b), device=device)
    return int((certainty > threshold).sum().item())


# ---------------------------------------------------------------------------------------------------------------
# Camera control
# ---------------------------------------------------------------------------------------------------------------

RenderFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]  # c2w -> (rgb, depth_m, valid)


@dataclass(frozen=True)
class PoseError:
    rotation_deg: float  # nan when the pose could not be recovered
    translation_cm: float
    recovered: bool


@dataclass(frozen=True)
class CameraControlConfig:
    min_reference_fraction: float = 0.2  # the reference must cover this much of the view to anchor the pose
    iterations: tuple[int, ...] = (30, 20, 10)
    depth_gate_m: float = 0.3  # correspondences whose depths differ by more are dropped (photometric term only)
    min_ncc: float = 0.5  # intensity correlation of reference and frame at the recovered pose below this: unanchored
    min_overlap: float = 0.3  # reference pixels that must land inside the frame at the recovered pose
    # The odometry's pose replaces the commanded one only if it lowers the photometric residual by this fraction:
    # world.update measured bogus 1-20% "improvements" from render artefacts at the exact pose (min_refine_gain)
    min_gain: float = 0.25


def recover_pose(
    frame_rgb: np.ndarray,  # [H, W, 3] uint8, the generated frame
    c2w_commanded: np.ndarray,  # [4, 4]
    render: RenderFn,
    intrinsics: Intrinsics,
    config: CameraControlConfig = CameraControlConfig(),
) -> np.ndarray | None:
    """The frame's pose ``[4, 4]`` c2w by dense photometric RGB-D odometry from the reference view rendered at the
    commanded pose (whose depth is exact for the reference) to the frame; None when it cannot be anchored.

    Only the photometric term is used: a generator's own depth is part of what is being judged, not a measurement.
    Odometry can diverge on frames that are mostly invented content and still report success, so the estimate is
    checked independently (``world.odometry.photometric_residual``): the odometry's pose is kept only if its warp
    of the reference matches the frame clearly better than the commanded pose's (``min_gain``), and the kept pose
    only if the reference and the frame correlate there (NCC); otherwise the frame's pose is unknown.
    """
    from spatia.world.odometry import photometric_residual, rgbd_odometry

    c2w = validate_pose(c2w_commanded, "c2w_commanded")
    frame = _check_rgb(frame_rgb, "frame_rgb")
    rgb, depth, valid = render(c2w)
    if valid.mean() < config.min_reference_fraction:
        return None
    src_depth = np.where(valid, depth, 0.0).astype(np.float32)
    candidates = [np.eye(4)]
    odo = rgbd_odometry(rgb, src_depth, frame, src_depth, intrinsics, use_depth_term=False,
                        iterations_per_level=config.iterations, depth_diff_max_m=config.depth_gate_m)
    if odo.success and np.all(np.isfinite(odo.source_to_target)):
        candidates.append(odo.source_to_target)
    best, best_check = None, None
    for T in candidates:
        check = photometric_residual(rgb, src_depth, frame, intrinsics, T)
        if check.overlap_fraction < config.min_overlap:
            continue
        if best_check is None or check.rmse < (1.0 - config.min_gain) * best_check.rmse:
            best, best_check = T, check
    if best is None or best_check.ncc < config.min_ncc:
        return None
    return c2w @ invert_pose(best)  # p_frame = T p_render  =>  frame c2w = c2w_render T^-1


def camera_control_errors(
    frames: Sequence[np.ndarray],  # each [H, W, 3] uint8
    commanded_c2w: np.ndarray,  # [N, 4, 4]
    render: RenderFn,
    intrinsics: Intrinsics,
    config: CameraControlConfig = CameraControlConfig(),
) -> list[PoseError]:
    if len(frames) != len(commanded_c2w):
        raise InvalidInputError(f"{len(frames)} frames but {len(commanded_c2w)} commanded poses")
    out = []
    for rgb, c2w in zip(frames, commanded_c2w):
        got = recover_pose(rgb, c2w, render, intrinsics, config)
        if got is None:
            out.append(PoseError(math.nan, math.nan, False))
        else:
            out.append(PoseError(rotation_angle_deg(c2w, got), 100.0 * translation_distance_m(c2w, got), True))
    return out


def summarize_pose_errors(errors: Sequence[PoseError]) -> dict[str, float | None]:
    """Median / mean / max rotation (deg) and translation (cm) over the recovered frames, and the recovered
    fraction. The median is the headline: a single frame where odometry locks onto invented content can be off
    by metres and would dominate a mean."""
    ok = [e for e in errors if e.recovered]
    keys = [f"{q}_{s}" for q in ("rotation_deg", "translation_cm") for s in ("median", "mean", "max")]
    if not ok:
        return {**{k: None for k in keys}, "recovered_fraction": (0.0 if errors else None)}
    out: dict[str, float | None] = {}
    for name, vals in (("rotation_deg", [e.rotation_deg for e in ok]), ("translation_cm", [e.translation_cm for e in ok])):
        out[f"{name}_median"] = float(np.median(vals))
        out[f"{name}_mean"] = float(np.mean(vals))
        out[f"{name}_max"] = float(np.max(vals))
    out["recovered_fraction"] = len(ok) / len(errors)
    return out
