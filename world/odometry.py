"""RGB-D odometry glue (Open3D) and a numpy photometric check, used to refine generated-frame poses.

Conventions (``docs/DESIGN.md``): OpenCV pinhole (x right, y down, z forward), pixel centres at integer + 0.5, depth is
float32 z-depth in metres with 0 = unknown, images uint8 ``H x W x 3`` RGB. Open3D puts pixel centres at integers,
so the principal point handed to it is shifted by -0.5 px.

``open3d`` is imported inside the function that needs it so that ``import world`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError


@dataclass(frozen=True)
class OdometryResult:
    """What Open3D's RGB-D odometry returned."""

    success: bool  # Open3D's own convergence flag (False when too few correspondences or a singular system)
    source_to_target: np.ndarray  # [4, 4] float64: p_target_cam = T @ p_source_cam
    information: np.ndarray  # [6, 6] float64, sum of J^T J of the point-to-point term
    num_correspondences: int  # pixel pairs used at the finest level (the information matrix's translation diagonal)


def _check_rgbd(rgb: np.ndarray, depth_m: np.ndarray, intrinsics: Intrinsics, name: str) -> None:
    shape = (intrinsics.height, intrinsics.width)
    if rgb.shape != shape + (3,) or rgb.dtype != np.uint8:
        raise InvalidInputError(f"{name} rgb must be uint8 {list(shape) + [3]}, got {rgb.dtype} {list(rgb.shape)}")
    if depth_m.shape != shape:
        raise InvalidInputError(f"{name} depth must be {list(shape)}, got {list(depth_m.shape)}")


def rgbd_odometry(
    source_rgb: np.ndarray,  # [H, W, 3] uint8
    source_depth_m: np.ndarray,  # [H, W] float32 z-depth, 0 = unknown
    target_rgb: np.ndarray,  # [H, W, 3] uint8
    target_depth_m: np.ndarray,  # [H, W] float32 z-depth, 0 = unknown
    intrinsics: Intrinsics,
    init_source_to_target: np.ndarray | None = None,  # [4, 4]; identity when None
    use_depth_term: bool = True,
    iterations_per_level: tuple[int, ...] = (20, 10, 5),
    depth_diff_max_m: float = 0.07,
    depth_max_m: float = 100.0,
) -> OdometryResult:
    """Dense RGB-D odometry between two views (Open3D ``compute_rgbd_odometry``).

    ``use_depth_term`` picks Open3D's hybrid term (photometric + point-to-plane depth, Steinbruecker/Kerl style)
    when both depths are real measurements; without it only the photometric term is used and the target depth
    merely gates correspondences (a source point whose transformed z differs from the target depth by more than
    ``depth_diff_max_m`` is dropped), which is what to use when the target depth is only an approximation.
    """
    import open3d as o3d  # heavy; imported only here

    _check_rgbd(source_rgb, source_depth_m, intrinsics, "source")
    _check_rgbd(target_rgb, target_depth_m, intrinsics, "target")
    init = np.eye(4) if init_source_to_target is None else np.asarray(init_source_to_target, dtype=np.float64)
    if init.shape != (4, 4):
        raise InvalidInputError(f"init_source_to_target must be 4x4, got {init.shape}")

    def rgbd(rgb: np.ndarray, depth: np.ndarray):
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        return o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(rgb)),
            o3d.geometry.Image(np.ascontiguousarray(depth)),
            depth_scale=1.0,  # already metres
            depth_trunc=float(depth_max_m),
            convert_rgb_to_intensity=True,
        )

    camera = o3d.camera.PinholeCameraIntrinsic(
        intrinsics.width, intrinsics.height, intrinsics.fx, intrinsics.fy, intrinsics.cx - 0.5, intrinsics.cy - 0.5
    )
    option = o3d.pipelines.odometry.OdometryOption(
        iteration_number_per_pyramid_level=o3d.utility.IntVector(list(iterations_per_level)),
        depth_diff_max=float(depth_diff_max_m),
        depth_min=1e-3,
        depth_max=float(depth_max_m),
    )
    jacobian = (
        o3d.pipelines.odometry.RGBDOdometryJacobianFromHybridTerm()
        if use_depth_term
        else o3d.pipelines.odometry.RGBDOdometryJacobianFromColorTerm()
    )
    success, transform, info = o3d.pipelines.odometry.compute_rgbd_odometry(
        rgbd(source_rgb, source_depth_m), rgbd(target_rgb, target_depth_m), camera, init, jacobian, option
    )
    transform = np.asarray(transform, dtype=np.float64)
    info = np.asarray(info, dtype=np.float64)
    # Each correspondence adds the 3x3 identity to the translation block of J^T J (point-to-point information).
    num = int(round(info[5, 5])) if success else 0
    return OdometryResult(bool(success), transform, info, num)


def rgb_to_intensity(rgb: np.ndarray) -> np.ndarray:
    """``[H, W]`` float64 intensity in [0, 1] with Open3D's weights (0.2990 R + 0.5870 G + 0.1140 B)."""
    return (rgb.astype(np.float64) @ np.array([0.2990, 0.5870, 0.1140])) / 255.0


@dataclass(frozen=True)
class PhotometricCheck:
    rmse: float  # RMS intensity difference (0..1 scale) over the overlapping pixels; inf when none overlap
    ncc: float  # normalised cross-correlation of the two intensity sets: ~1 aligned, ~0 unrelated; -1 when undefined
    overlap: int  # source pixels that land inside the target image
    overlap_fraction: float  # overlap / source pixels with depth


def photometric_residual(
    source_rgb: np.ndarray,  # [H, W, 3] uint8
    source_depth_m: np.ndarray,  # [H, W] float32, 0 = unknown
    target_rgb: np.ndarray,  # [H, W, 3] uint8
    intrinsics: Intrinsics,
    source_to_target: np.ndarray,  # [4, 4]: p_target_cam = T @ p_source_cam
) -> PhotometricCheck:
    """Warp source pixels into the target with the source depth and compare intensities (bilinear target lookup).

    An independent check of an odometry result: a refinement is only kept when it lowers this residual.
    """
    _check_rgbd(source_rgb, source_depth_m, intrinsics, "source")
    if target_rgb.shape != source_rgb.shape:
        raise InvalidInputError(f"target rgb shape {target_rgb.shape} differs from source {source_rgb.shape}")
    T = np.asarray(source_to_target, dtype=np.float64)
    H, W = intrinsics.height, intrinsics.width
    depth = np.asarray(source_depth_m, dtype=np.float64)
    vv, uu = np.nonzero(np.isfinite(depth) & (depth > 0))
    n_src = vv.size
    if n_src == 0:
        return PhotometricCheck(float("inf"), -1.0, 0, 0.0)
    z = depth[vv, uu]
    # pixel centres at +0.5
    x_cam = (uu + 0.5 - intrinsics.cx) / intrinsics.fx * z
    y_cam = (vv + 0.5 - intrinsics.cy) / intrinsics.fy * z
    pts = np.stack([x_cam, y_cam, z], 1)  # [N, 3] source camera frame
    pt = pts @ T[:3, :3].T + T[:3, 3]
    front = pt[:, 2] > 1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        # continuous coordinates with pixel centres at integers (bilinear sampling grid)
        x = intrinsics.fx * pt[:, 0] / pt[:, 2] + intrinsics.cx - 0.5
        y = intrinsics.fy * pt[:, 1] / pt[:, 2] + intrinsics.cy - 0.5
    eps = 1e-6  # round-off slack, so that an unmoved edge pixel still counts as inside
    inside = front & (x >= -eps) & (x <= W - 1 + eps) & (y >= -eps) & (y <= H - 1 + eps)
    if not inside.any():
        return PhotometricCheck(float("inf"), -1.0, 0, 0.0)
    x, y = np.clip(x[inside], 0, W - 1), np.clip(y[inside], 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2) if W > 1 else np.zeros(x.shape, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2) if H > 1 else np.zeros(y.shape, np.int64)
    ax, ay = x - x0, y - y0
    I_t = rgb_to_intensity(target_rgb)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    sampled = (
        I_t[y0, x0] * (1 - ax) * (1 - ay)
        + I_t[y0, x1] * ax * (1 - ay)
        + I_t[y1, x0] * (1 - ax) * ay
        + I_t[y1, x1] * ax * ay
    )
    I_s = rgb_to_intensity(source_rgb)[vv[inside], uu[inside]]
    rmse = float(np.sqrt(np.mean((sampled - I_s) ** 2)))
    a, b = sampled - sampled.mean(), I_s - I_s.mean()
    denom = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    ncc = float(np.sum(a * b) / denom) if denom > 0 else -1.0
    return PhotometricCheck(rmse, ncc, int(inside.sum()), float(inside.sum()) / n_src)


def depth_edge_free(
    depth_m: np.ndarray,  # [H, W] float32 z-depth, 0 = unknown
    window_px: int = 5,
    rel_jump: float = 0.05,
) -> np.ndarray:
    """``[H, W]`` bool, True where the depth is known and no known depth in the ``window_px`` square around the
    pixel is more than ``rel_jump`` (relative) farther than the nearest one there.

    Open3D's hybrid term differentiates the target depth; at occlusion edges that derivative is huge and
    meaningless (the surface jumps), and it dragged refined poses by several centimetres on the procedural
    scenes. Removing the pixels near edges from both depths keeps the term to smooth surfaces.
    """
    from scipy.ndimage import maximum_filter, minimum_filter  # imported here: keeps ``import world`` light

    if window_px < 1 or window_px % 2 == 0:
        raise InvalidInputError(f"window_px must be a positive odd number, got {window_px}")
    depth = np.asarray(depth_m, dtype=np.float64)
    known = np.isfinite(depth) & (depth > 0)
    far = maximum_filter(np.where(known, depth, 0.0), size=window_px, mode="constant", cval=0.0)
    near = minimum_filter(np.where(known, depth, np.inf), size=window_px, mode="constant", cval=np.inf)
    return known & ~(far > near * (1.0 + rel_jump))
