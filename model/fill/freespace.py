"""Per-pixel geometry of the layout fill: world points of hole pixels and the free-space test against an observed
view, as numba kernels (one pass over the pixels, no [M, 3] temporaries) with plain numpy references.

At 640x360 a turn leaves ~10^5 hole pixels; the numpy versions (``*_reference``) built several [M, 3] float64
temporaries per call and cost more than the rest of the fill's geometry together. The references are the
definitions: tests compare the kernels with them.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from spatia.world.camera import Intrinsics


@nb.njit(cache=True, nogil=True)
def _world_points_kernel(rays, z, R, cam, out):  # pragma: no cover - compiled
    for i in range(rays.shape[0]):
        x, y, w = rays[i, 0] * z[i], rays[i, 1] * z[i], rays[i, 2] * z[i]
        for k in range(3):
            out[i, k] = cam[k] + R[k, 0] * x + R[k, 1] * y + R[k, 2] * w


def world_points(
    rays_cam: np.ndarray,  # [M, 3] float32 pixel rays, camera frame, z = 1
    depth_z_m: np.ndarray,  # [M] z-depth along each ray
    c2w: np.ndarray,  # [4, 4] camera to world
) -> np.ndarray:
    """``[M, 3]`` float64 world-frame points at ``depth_z_m`` along the rays."""
    out = np.empty((len(rays_cam), 3), np.float64)
    _world_points_kernel(np.ascontiguousarray(rays_cam, np.float32), np.ascontiguousarray(depth_z_m, np.float32),
                         np.ascontiguousarray(c2w[:3, :3], np.float64), np.ascontiguousarray(c2w[:3, 3], np.float64),
                         out)
    return out


def world_points_reference(rays_cam: np.ndarray, depth_z_m: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    return c2w[:3, 3] + (rays_cam.astype(np.float64) * np.asarray(depth_z_m, np.float64)[:, None]) @ c2w[:3, :3].T


@nb.njit(cache=True, nogil=True)
def _seen_through_kernel(points, R, t, fx, fy, cx, cy, depth, rel, out):  # pragma: no cover - compiled
    h, w = depth.shape
    for i in range(points.shape[0]):
        dx, dy, dz = points[i, 0] - t[0], points[i, 1] - t[1], points[i, 2] - t[2]
        # camera frame of the view: R^T (p - t)
        x = R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz
        y = R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz
        z = R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz
        if z <= 0.0:
            continue
        u = np.floor(fx * x / z + cx)
        v = np.floor(fy * y / z + cy)
        if u < 0 or u >= w or v < 0 or v >= h:
            continue
        seen = depth[int(v), int(u)]
        # depth 0 = nothing came back (sky): all of that ray is free space
        if seen <= 0.0 or z < seen * (1.0 - rel) - 0.05:
            out[i] = True


def seen_through(
    points: np.ndarray,  # [M, 3] world frame
    view_c2w: np.ndarray,  # [4, 4] the observed view's pose
    intrinsics: Intrinsics,
    view_depth_m: np.ndarray,  # [H, W] float32 the view's z-depth, 0 = nothing came back
    rel: float,
    out: np.ndarray | None = None,  # [M] bool to OR into
) -> np.ndarray:
    """``[M]`` bool: True where a point lies in front of what the view saw along its line of sight (more than
    ``rel`` of that depth + 5 cm nearer), i.e. in space the view saw through."""
    if out is None:
        out = np.zeros(len(points), bool)
    K = intrinsics
    _seen_through_kernel(np.ascontiguousarray(points, np.float64), np.ascontiguousarray(view_c2w[:3, :3], np.float64),
                         np.ascontiguousarray(view_c2w[:3, 3], np.float64), float(K.fx), float(K.fy), float(K.cx),
                         float(K.cy), np.ascontiguousarray(view_depth_m, np.float32), float(rel), out)
    return out


def seen_through_reference(points: np.ndarray, view_c2w: np.ndarray, intrinsics: Intrinsics,
                           view_depth_m: np.ndarray, rel: float) -> np.ndarray:
    K = intrinsics
    R, t = view_c2w[:3, :3], view_c2w[:3, 3]
    pc = (np.asarray(points, np.float64) - t) @ R  # [M, 3] camera frame of the view
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.floor(K.fx * pc[:, 0] / z + K.cx)
        v = np.floor(K.fy * pc[:, 1] / z + K.cy)
    inside = (z > 0) & (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
    bad = np.zeros(len(points), bool)
    idx = np.flatnonzero(inside)
    seen = view_depth_m[v[idx].astype(np.int64), u[idx].astype(np.int64)]
    bad[idx] = np.where(seen > 0, z[idx] < seen * (1.0 - rel) - 0.05, True)
    return bad
