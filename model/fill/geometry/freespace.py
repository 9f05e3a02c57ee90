"""Per-pixel geometry of the layout fill: world points of hole pixels as a numba kernel (one pass over the pixels, no
[M, 3] temporaries) with a plain numpy reference; the free-space test against an observed view (``seen_through``)
lives in ``world.free_space`` (the memory update uses it too) and is re-exported here.

At 640x360 a turn leaves ~10^5 hole pixels; the numpy versions (``*_reference``) built several [M, 3] float64
temporaries per call and cost more than the rest of the fill's geometry together. The references are the
definitions: tests compare the kernels with them.
"""

from __future__ import annotations

import numpy as np

from spatia.world.free_space import seen_through, seen_through_reference  # noqa: F401 -- this module's names too
from spatia.world.numba_start import nb


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
