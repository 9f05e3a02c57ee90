"""Free space of a view: which world points lie in space a view saw through (in front of the depth it saw along
their line of sight), as a numba kernel with a plain numpy reference (the definition; tests compare them).

Two users: the layout fill (``model.fill``) keeps its invented points out of the space the world's observed views
saw through, and the memory update (``world.update``) takes away invented points a frame saw through (a doorway
the frame shows where the memory held an invented wall), so that what a frame shows as open is open in the memory.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from spatia.world.camera import Intrinsics

SEEN_THROUGH_MARGIN_M = 0.05  # beyond the relative tolerance: a point this much nearer than the surface seen


@nb.njit(cache=True, nogil=True)
def _seen_through_kernel(points, R, t, fx, fy, cx, cy, depth, rel, margin, out):  # pragma: no cover - compiled
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
        if seen <= 0.0 or z < seen * (1.0 - rel) - margin:
            out[i] = True


def seen_through(
    points: np.ndarray,  # [M, 3] world frame
    view_c2w: np.ndarray,  # [4, 4] the view's pose
    intrinsics: Intrinsics,
    view_depth_m: np.ndarray,  # [H, W] float32 the view's z-depth, 0 = nothing came back
    rel: float,
    out: np.ndarray | None = None,  # [M] bool to OR into
    margin_m: float = SEEN_THROUGH_MARGIN_M,
) -> np.ndarray:
    """``[M]`` bool: True where a point lies in front of what the view saw along its line of sight (more than
    ``rel`` of that depth + ``margin_m`` nearer), i.e. in space the view saw through. A depth of 0 counts as
    nothing seen (all of that ray is free): callers whose 0 means "unknown" pass only points where it is not."""
    if out is None:
        out = np.zeros(len(points), bool)
    K = intrinsics
    _seen_through_kernel(np.ascontiguousarray(points, np.float64), np.ascontiguousarray(view_c2w[:3, :3], np.float64),
                         np.ascontiguousarray(view_c2w[:3, 3], np.float64), float(K.fx), float(K.fy), float(K.cx),
                         float(K.cy), np.ascontiguousarray(view_depth_m, np.float32), float(rel), float(margin_m), out)
    return out


def seen_through_reference(points: np.ndarray, view_c2w: np.ndarray, intrinsics: Intrinsics,
                           view_depth_m: np.ndarray, rel: float, margin_m: float = SEEN_THROUGH_MARGIN_M) -> np.ndarray:
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
    bad[idx] = np.where(seen > 0, z[idx] < seen * (1.0 - rel) - margin_m, True)
    return bad
