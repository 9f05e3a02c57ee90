"""Depth for a first image: the ``DepthEstimator`` interface and three sources.

A world starts from one image; the memory needs a depth map for it before anything can be rendered
(paper Sec. 3.2 and Fig. 4: "At the first iteration, the user provides an initial image, from which Spatia
estimates the initial 3D scene point cloud"; the official code runs MapAnything with ``is_metric_scale=True``).
Sources, best first:

- ``UserDepth``: a depth map the user supplies (``.npy`` metres or 16-bit PNG millimetres).
- ``TransformersDepth``: a local transformers depth model (Depth Anything V2, DepthPro, DPT, ZoeDepth, GLPN).
  Metric models give metres; relative models give disparity-like values that are mapped into an assumed
  depth range and flagged ``is_metric=False``.
- ``PlanarPriorDepth``: no model at all, a floor plane plus a back wall seen by a level camera. Plausible for
  an indoor or street photo, wrong in the details, and flagged ``approximate=True`` with a logged warning.

All depth is z-depth in metres along the OpenCV camera's +z axis (``docs/DESIGN.md``), float32 ``[H, W]``, 0 = unknown.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import structlog

from spatia.world.camera import DEFAULT_FOV_DEG, Intrinsics
from spatia.world.errors import InvalidInputError, NotFoundError
from spatia.world.images import ImageSource, load_depth

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LayoutPrior:
    """What a world's creator measured about the scene's layout from its first image (the contract by which the
    fill learns that a world came from a photo; ``docs/RESULTS.md``, novel view).

    A photo's first memory is its estimated depth: planes drawn per image column, with furniture and occlusions
    as steps. Fitting a layout to those points finds steps as walls; the photo estimator (``model.fill.geometry.photo``)
    already measured the Manhattan frame and the planes, so the world records them at creation
    (``WorldInfo.layout_prior``, persisted with the world), the engine hands them over in
    ``ClipRequest.layout_prior`` and the layout fill starts from them. Worlds with real depth record none.
    Planes are ``{X : normal . X = offset_m}`` with the normal pointing away from the observing camera.
    """

    source: str  # who measured it, e.g. "photo_layout"
    up: np.ndarray  # [3] unit gravity up, in the frame named by the holder (camera frame in a DepthEstimate,
    # world frame once recorded by the world)
    axis_a: np.ndarray  # [3] unit horizontal Manhattan axis (the other one is up x axis_a), same frame
    planes: tuple[tuple[str, np.ndarray, float], ...]  # (kind "floor" / "wall" / "ceiling", normal [3], offset_m)
    confidence: float  # 0..1, the estimator's
    # per plane (empty: unknown, all False): True where the image showed the plane up to its own top edge, with no
    # sky above it, so the plane's height is unknown (a facade rising out of the picture). The fill then does not
    # cap it at the highest point the image saw, which showed sky over half of courtyard@photo's back facade.
    open_top: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        for name in ("up", "axis_a"):
            v = np.asarray(getattr(self, name), np.float64)
            if v.shape != (3,) or not np.all(np.isfinite(v)) or abs(np.linalg.norm(v) - 1.0) > 1e-3:
                raise InvalidInputError(f"layout prior {name} must be a finite unit [3] vector, got {v.tolist()}")
        if abs(float(np.dot(self.up, self.axis_a))) > 1e-3:
            raise InvalidInputError("layout prior axis_a must be horizontal (perpendicular to up)")
        for kind, normal, offset in self.planes:
            if kind not in ("floor", "wall", "ceiling"):
                raise InvalidInputError(f"layout prior plane kind must be floor, wall or ceiling, got {kind!r}")
            if np.asarray(normal).shape != (3,) or not math.isfinite(float(offset)):
                raise InvalidInputError("layout prior planes need a [3] normal and a finite offset_m")
        if len(self.open_top) not in (0, len(self.planes)):
            raise InvalidInputError(
                f"layout prior open_top needs one flag per plane ({len(self.planes)}), got {len(self.open_top)}")

    def transformed(self, c2w: np.ndarray) -> "LayoutPrior":
        """The same prior in the frame ``c2w`` [4, 4] maps this one's coordinates into (camera -> world)."""
        R, t = np.asarray(c2w, np.float64)[:3, :3], np.asarray(c2w, np.float64)[:3, 3]
        planes = tuple((k, R @ np.asarray(n, np.float64), float(o + (R @ np.asarray(n, np.float64)) @ t))
                       for k, n, o in self.planes)
        return LayoutPrior(self.source, R @ self.up, R @ self.axis_a, planes, self.confidence, self.open_top)

    def to_doc(self) -> dict:
        """Plain lists and floats (msgpack / JSON), for ``WorldInfo``."""
        return {"source": self.source, "up": [float(x) for x in self.up], "axis_a": [float(x) for x in self.axis_a],
                "planes": [[k, [float(x) for x in n], float(o)] for k, n, o in self.planes],
                "confidence": float(self.confidence), "open_top": [bool(x) for x in self.open_top]}

    @classmethod
    def from_doc(cls, doc: dict) -> "LayoutPrior":
        try:
            return cls(str(doc["source"]), np.asarray(doc["up"], np.float64), np.asarray(doc["axis_a"], np.float64),
                       tuple((str(k), np.asarray(n, np.float64), float(o)) for k, n, o in doc["planes"]),
                       float(doc["confidence"]), tuple(bool(x) for x in doc.get("open_top", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed layout prior ({exc!r})") from None


@dataclass(frozen=True)
class DepthEstimate:
    """A depth map and what is known about it."""

    depth_m: np.ndarray  # [H, W] float32, z-depth in metres (relative units when not is_metric), 0 = unknown
    is_metric: bool  # True: the scale is real metres; False: the scale was assumed (relative model)
    source: str  # e.g. "user", "transformers:depth_anything", "planar_prior"
    approximate: bool  # True: a coarse guess (a prior, or relative depth mapped to an assumed range)
    # The intrinsics depth_m is for when the estimator chose or measured them (a photo without intrinsics);
    # None: the intrinsics the caller passed.
    intrinsics: Intrinsics | None = None
    # the layout the estimator measured, camera frame of the image (photo estimators); the world records it
    layout: LayoutPrior | None = None

    def __post_init__(self) -> None:
        d = self.depth_m
        if self.intrinsics is not None and (self.intrinsics.width, self.intrinsics.height) != (d.shape[1], d.shape[0]):
            raise InvalidInputError(
                f"estimate intrinsics are for {self.intrinsics.width}x{self.intrinsics.height} "
                f"but depth_m is {d.shape[1]}x{d.shape[0]}"
            )
        if not isinstance(d, np.ndarray) or d.ndim != 2 or d.dtype != np.float32:
            raise InvalidInputError(
                f"depth_m must be a float32 [H, W] array, got {getattr(d, 'dtype', type(d).__name__)} "
                f"{getattr(d, 'shape', '')}"
            )
        if not np.all(np.isfinite(d)) or (d < 0).any():
            raise InvalidInputError("depth_m must be finite and >= 0 (0 = unknown)")


@runtime_checkable
class DepthEstimator(Protocol):
    """Anything that gives depth for an RGB image seen through known intrinsics."""

    def estimate(self, rgb: np.ndarray, intrinsics: Intrinsics) -> DepthEstimate:
        """``rgb`` ``[H, W, 3]`` uint8 seen through ``intrinsics`` (for that ``W x H``) -> depth ``[H, W]``."""
        ...


def default_intrinsics(width: int, height: int) -> Intrinsics:
    """Intrinsics for an image that came without any: square pixels, centred, ``DEFAULT_FOV_DEG`` horizontal FOV.

    60 degrees is close to a phone's main camera (about 65-70 degrees) and to the official Spatia cases'
    normalised focal ``fx/W`` of about 0.8-0.9 (64-70 degrees), and errs on the narrow side so that depth
    estimated from it does not spread points too wide.
    """
    return Intrinsics.from_fov(DEFAULT_FOV_DEG, int(width), int(height))


def _check_image(rgb: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InvalidInputError(f"rgb must be uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    if (arr.shape[1], arr.shape[0]) != (intrinsics.width, intrinsics.height):
        raise InvalidInputError(
            f"image is {arr.shape[1]}x{arr.shape[0]} but the intrinsics are for "
            f"{intrinsics.width}x{intrinsics.height}"
        )
    return arr


# ---------------------------------------------------------------------------------------------------------------
# User-supplied depth
# ---------------------------------------------------------------------------------------------------------------


class UserDepth:
    """Depth the user supplies, from an array or a file/bytes (``world.images.load_depth``), checked for size."""

    def __init__(self, depth: np.ndarray | ImageSource, *, is_metric: bool = True, name: str | None = None):
        if isinstance(depth, np.ndarray):
            arr = depth
            if arr.ndim != 2 or arr.dtype.kind not in "iuf":
                raise InvalidInputError(f"user depth must be a numeric [H, W] array, got {arr.dtype} {arr.shape}")
            arr = np.where(np.isfinite(arr), arr, 0.0).astype(np.float32)
            if (arr < 0).any():
                raise InvalidInputError(f"user depth has negative values (min {float(arr.min()):.3f} m)")
        else:
            arr = load_depth(depth, name=name)
        self._depth_m = arr  # [H, W] float32 metres
        self._is_metric = bool(is_metric)

    def estimate(self, rgb: np.ndarray, intrinsics: Intrinsics) -> DepthEstimate:
        rgb = _check_image(rgb, intrinsics)
        h, w = self._depth_m.shape
        if (w, h) != (rgb.shape[1], rgb.shape[0]):
            raise InvalidInputError(f"user depth is {w}x{h} but the image is {rgb.shape[1]}x{rgb.shape[0]}")
        if not (self._depth_m > 0).any():
            raise InvalidInputError("user depth has no valid (> 0) pixels")
        return DepthEstimate(self._depth_m.copy(), is_metric=self._is_metric, source="user", approximate=False)


# ---------------------------------------------------------------------------------------------------------------
# Relative (disparity-like) model output -> depth
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelativeDepthRange:
    """How a relative model's disparity is turned into depth: its robust range maps onto [near_m, far_m].

    Relative models (Depth Anything "relative", DPT/MiDaS) predict affine-invariant inverse depth: larger is
    nearer, and scale and shift are unknown. We map the ``low_percentile``..``high_percentile`` disparity range
    linearly onto inverse depth ``1/far_m .. 1/near_m`` (linear in inverse depth, the space where the model is
    affine-correct) and clamp outside it. The defaults suit a room or a street seen at eye level.
    """

    near_m: float = 0.5
    far_m: float = 20.0
    low_percentile: float = 2.0
    high_percentile: float = 98.0

    def __post_init__(self) -> None:
        if not (0 < self.near_m < self.far_m):
            raise InvalidInputError(f"need 0 < near_m < far_m, got {self.near_m}, {self.far_m}")
        if not (0 <= self.low_percentile < self.high_percentile <= 100):
            raise InvalidInputError("need 0 <= low_percentile < high_percentile <= 100")


def disparity_to_depth(
    disparity: np.ndarray,  # [H, W] relative inverse depth, larger = nearer
    depth_range: RelativeDepthRange = RelativeDepthRange(),
) -> np.ndarray:
    """Relative disparity -> float32 z-depth ``[H, W]`` in ``[near_m, far_m]`` (see ``RelativeDepthRange``).

    A constant disparity map (no structure at all) maps to the geometric mean of near and far everywhere.
    """
    disp = np.asarray(disparity, dtype=np.float64)
    if disp.ndim != 2:
        raise InvalidInputError(f"disparity must be 2-D [H, W], got shape {disp.shape}")
    finite = np.isfinite(disp)
    if not finite.any():
        raise InvalidInputError("disparity has no finite values")
    lo, hi = np.percentile(disp[finite], [depth_range.low_percentile, depth_range.high_percentile])
    inv_near, inv_far = 1.0 / depth_range.near_m, 1.0 / depth_range.far_m
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.full(disp.shape, np.sqrt(depth_range.near_m * depth_range.far_m), dtype=np.float32)
    t = np.clip((np.where(finite, disp, lo) - lo) / (hi - lo), 0.0, 1.0)
    inv_depth = inv_far + t * (inv_near - inv_far)
    return (1.0 / inv_depth).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Local transformers depth model
# ---------------------------------------------------------------------------------------------------------------

# model_type -> whether its prediction is metric regardless of config (Depth Anything reads its config instead).
_METRIC_MODEL_TYPES = {"depth_pro": True, "zoedepth": True, "glpn": True, "dpt": False}


class TransformersDepth:
    """A transformers depth-estimation model loaded from a LOCAL directory (never downloads).

    Supported families: ``DepthAnythingForDepthEstimation`` (V1/V2, relative or metric per its config's
    ``depth_estimation_type``), ``DepthProForDepthEstimation`` (metric; its canonical inverse depth is scaled with
    *our* focal length, as the DepthPro paper does when the focal length is known), ``DPTForDepthEstimation``
    (relative), ``ZoeDepthForDepthEstimation`` and ``GLPNForDepthEstimation`` (metric).
    The model is loaded on first use; ``estimate`` is thread-safe.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        relative_range: RelativeDepthRange = RelativeDepthRange(),
    ):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise NotFoundError(f"no transformers model (config.json) in {self.model_dir}")
        self.device = device
        self.relative_range = relative_range
        self._lock = threading.Lock()
        self._model = None
        self._processor = None

    def _load(self):
        if self._model is None:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            try:
                processor = AutoImageProcessor.from_pretrained(self.model_dir, local_files_only=True)
                model = AutoModelForDepthEstimation.from_pretrained(self.model_dir, local_files_only=True)
            except ImportError as exc:  # e.g. DepthPro's image processor needs torchvision
                raise InvalidInputError(
                    f"{self.model_dir}: this model's processor needs a package that is not installed ({exc})"
                ) from None
            except (OSError, ValueError, KeyError) as exc:
                raise InvalidInputError(f"{self.model_dir}: not a loadable depth-estimation model ({exc})") from None
            self._processor, self._model = processor, model.to(self.device).eval()
            log.info("depth_model_loaded", model_dir=str(self.model_dir), model_type=self.model_type)
        return self._model, self._processor

    @property
    def model_type(self) -> str:
        return str(self._model.config.model_type) if self._model is not None else "?"

    @property
    def is_metric(self) -> bool:
        model, _ = self._load()
        model_type = model.config.model_type
        if model_type in _METRIC_MODEL_TYPES:
            return _METRIC_MODEL_TYPES[model_type]
        # Depth Anything (and Prompt Depth Anything) say it in their config; unknown families are treated as
        # relative, which only costs a rescale, whereas a wrong "metric" would silently mis-scale the world.
        return getattr(model.config, "depth_estimation_type", "relative") == "metric"

    def estimate(self, rgb: np.ndarray, intrinsics: Intrinsics) -> DepthEstimate:
        import torch

        rgb = _check_image(rgb, intrinsics)
        h, w = rgb.shape[:2]
        with self._lock:
            model, processor = self._load()
            inputs = processor(images=rgb, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                outputs = model(**inputs)
            raw = self._to_image_size(outputs, processor, model.config.model_type, h, w)  # [H, W] float64
        model_type = model.config.model_type
        source = f"transformers:{model_type}"
        if model_type == "depth_pro":
            # Canonical inverse depth -> metres with the known focal length: depth = f_px / (W * inv_canonical).
            depth = intrinsics.fx / (w * np.clip(raw, 1e-4, 1e4))
            return DepthEstimate(depth.astype(np.float32), is_metric=True, source=source, approximate=False)
        if self.is_metric:
            depth = np.where(np.isfinite(raw) & (raw > 0), raw, 0.0).astype(np.float32)
            return DepthEstimate(depth, is_metric=True, source=source, approximate=False)
        depth = disparity_to_depth(raw, self.relative_range)
        log.warning(
            "relative_depth_scaled",
            model_dir=str(self.model_dir),
            near_m=self.relative_range.near_m,
            far_m=self.relative_range.far_m,
            note="relative model: depth scale is assumed, not measured",
        )
        return DepthEstimate(depth, is_metric=False, source=source, approximate=True)

    @staticmethod
    def _to_image_size(outputs, processor, model_type: str, h: int, w: int) -> np.ndarray:
        """The model's raw prediction resized to ``[h, w]``.

        Bilinear, not the bicubic the DPT processor uses: bicubic overshoots at depth edges (negative depth,
        values past ``max_depth``), bilinear stays within the range of its neighbours.
        """
        import torch

        if model_type == "zoedepth":
            result = processor.post_process_depth_estimation(outputs, source_sizes=[(h, w)], target_sizes=[(h, w)])
            return result[0]["predicted_depth"].float().cpu().numpy().astype(np.float64)
        pred = outputs.predicted_depth  # [1, h', w']
        if pred.ndim == 4:
            pred = pred[:, 0]
        resized = torch.nn.functional.interpolate(
            pred[:, None].float(), size=(h, w), mode="bilinear", align_corners=False
        )[0, 0]
        return resized.cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Planar prior: no model, a floor and a back wall
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanarPriorConfig:
    """Geometry assumed for a photo with no depth: a level camera above a floor, facing a wall."""

    camera_height_m: float = 1.6  # eye height above the floor (the scenes' start pose uses the same)
    wall_distance_m: float = 6.0  # z-distance of a fronto-parallel back wall
    ceiling_height_m: float | None = None  # floor-to-ceiling height; None: no ceiling (outdoor / unknown)

    def __post_init__(self) -> None:
        if self.camera_height_m <= 0 or self.wall_distance_m <= 0:
            raise InvalidInputError("camera_height_m and wall_distance_m must be positive")
        if self.ceiling_height_m is not None and self.ceiling_height_m <= self.camera_height_m:
            raise InvalidInputError(
                f"ceiling_height_m ({self.ceiling_height_m}) must be above camera_height_m ({self.camera_height_m})"
            )


class PlanarPriorDepth:
    """Depth of a floor + back wall (+ optional ceiling) for a level camera; clearly approximate.

    With a level camera the horizon is the image row ``v = cy`` (a ray with zero camera-y is horizontal). A pixel
    centre at row ``v + 0.5`` has ray slope ``y = (v + 0.5 - cy) / fy`` per metre of z; below the horizon it meets
    the floor ``camera_height_m`` below the eye at z-depth ``camera_height_m / y``. The back wall caps the depth
    at ``wall_distance_m`` everywhere (so the sky/upper half becomes the wall).
    """

    def __init__(self, config: PlanarPriorConfig = PlanarPriorConfig()):
        self.config = config

    def horizon_row(self, intrinsics: Intrinsics) -> float:
        """The image row (continuous, pixel-edge coordinates) where a level camera sees the horizon."""
        return float(intrinsics.cy)

    def estimate(self, rgb: np.ndarray, intrinsics: Intrinsics) -> DepthEstimate:
        _check_image(rgb, intrinsics)
        depth = planar_prior_depth(intrinsics, self.config)
        log.warning(
            "planar_prior_depth",
            note="APPROXIMATE geometry: floor plane + back wall assumed, not estimated from the image",
            camera_height_m=self.config.camera_height_m,
            wall_distance_m=self.config.wall_distance_m,
            horizon_row=self.horizon_row(intrinsics),
        )
        return DepthEstimate(depth, is_metric=True, source="planar_prior", approximate=True)


def planar_prior_depth(intrinsics: Intrinsics, config: PlanarPriorConfig = PlanarPriorConfig()) -> np.ndarray:
    """``[H, W]`` float32 z-depth of the floor/wall/ceiling prior (see ``PlanarPriorDepth``)."""
    v = (np.arange(intrinsics.height, dtype=np.float64) + 0.5 - intrinsics.cy) / intrinsics.fy  # [H] ray slope
    depth_row = np.full(intrinsics.height, config.wall_distance_m)
    below = v > 0
    depth_row[below] = np.minimum(depth_row[below], config.camera_height_m / v[below])
    if config.ceiling_height_m is not None:
        above = v < 0
        headroom_m = config.ceiling_height_m - config.camera_height_m
        depth_row[above] = np.minimum(depth_row[above], headroom_m / -v[above])
    # z-depth of a horizontal plane depends only on the row, so every column repeats it.
    return np.ascontiguousarray(np.broadcast_to(depth_row[:, None], (intrinsics.height, intrinsics.width)), np.float32)
