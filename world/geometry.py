"""Small geometric operations shared by the memory, the history and the memory update.

Voxel keys: a point's voxel is ``floor(p / d)`` per axis (``d`` = cube side in metres). The three integer
coordinates are packed into one int64 with 21 bits each (offset by 2**20), which covers +-10 km at d = 0.01 m.
"""

from __future__ import annotations

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError

KEY_BITS = 21
KEY_OFFSET = 1 << (KEY_BITS - 1)
KEY_MASK = (1 << KEY_BITS) - 1


def pack_voxel_coords(ijk: np.ndarray) -> np.ndarray:
    """``[N, 3]`` integer voxel coordinates -> ``[N]`` int64 keys. Raises if a coordinate is out of range."""
    ijk = np.asarray(ijk, dtype=np.int64)
    if ijk.size and (ijk.min() < -KEY_OFFSET or ijk.max() >= KEY_OFFSET):
        raise InvalidInputError(f"voxel coordinate out of range +-{KEY_OFFSET} (scene too large for the voxel size)")
    u = ijk + KEY_OFFSET
    return (u[:, 0] << (2 * KEY_BITS)) | (u[:, 1] << KEY_BITS) | u[:, 2]


def unpack_voxel_keys(keys: np.ndarray) -> np.ndarray:
    """``[N]`` int64 keys -> ``[N, 3]`` int64 voxel coordinates."""
    keys = np.asarray(keys, dtype=np.int64)
    out = np.empty((keys.shape[0], 3), dtype=np.int64)
    out[:, 0] = (keys >> (2 * KEY_BITS)) & KEY_MASK
    out[:, 1] = (keys >> KEY_BITS) & KEY_MASK
    out[:, 2] = keys & KEY_MASK
    return out - KEY_OFFSET


def coarsen_voxel_keys(keys: np.ndarray, levels: int) -> np.ndarray:
    """Keys of cubes of side ``d`` -> keys (same packing) of the cubes of side ``d * 2**levels`` holding them.

    Slow and obviously correct (unpack, floor-divide, pack); ``world.history`` has the fast one (bit operations
    on the packed key) and tests compare the two."""
    if not 0 <= levels < KEY_BITS:
        raise InvalidInputError(f"levels must be in [0, {KEY_BITS}), got {levels}")
    return pack_voxel_coords(np.floor_divide(unpack_voxel_keys(keys), 1 << levels))


def voxel_keys(points: np.ndarray, voxel_size_m: float) -> np.ndarray:
    """Voxel keys of ``points`` ``[N, 3]`` (world frame) for cubes of side ``voxel_size_m``."""
    if voxel_size_m <= 0:
        raise InvalidInputError(f"voxel_size_m must be positive, got {voxel_size_m}")
    return pack_voxel_coords(np.floor(np.asarray(points, dtype=np.float64) / voxel_size_m).astype(np.int64))


def pixel_rays(intrinsics: Intrinsics) -> np.ndarray:
    """``[H, W, 3]`` camera-frame directions with z = 1 through every pixel centre."""
    u = (np.arange(intrinsics.width, dtype=np.float64) + 0.5 - intrinsics.cx) / intrinsics.fx
    v = (np.arange(intrinsics.height, dtype=np.float64) + 0.5 - intrinsics.cy) / intrinsics.fy
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu, vv, np.ones_like(uu)], axis=-1)


def depth_to_world_points(
    depth_m: np.ndarray,  # [H, W] float32, z-depth, 0 = unknown
    intrinsics: Intrinsics,
    c2w: np.ndarray,  # [4, 4]
    mask: np.ndarray | None = None,  # [H, W] bool, True = keep
) -> tuple[np.ndarray, np.ndarray]:
    """Unproject valid depth pixels. Returns (points ``[N, 3]`` float64 world frame, pixel flat indices ``[N]``).

    Pixel centres are at integer + 0.5 (the convention ``render`` uses too), so a depth map rendered from the
    memory unprojects onto the points that made it.
    """
    depth = np.asarray(depth_m)
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise InvalidInputError(
            f"depth is {depth.shape[1] if depth.ndim == 2 else '?'}x{depth.shape[0]} but the camera is "
            f"{intrinsics.width}x{intrinsics.height}"
        )
    keep = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        keep &= mask
    idx = np.flatnonzero(keep)
    rays = pixel_rays(intrinsics).reshape(-1, 3)[idx]
    pts_cam = rays * depth.reshape(-1)[idx, None]
    pts_world = pts_cam @ c2w[:3, :3].T + c2w[:3, 3]
    return pts_world, idx


def project_points(
    points: np.ndarray,  # [N, 3] world frame
    intrinsics: Intrinsics,
    c2w: np.ndarray,  # [4, 4]
) -> tuple[np.ndarray, np.ndarray]:
    """Project world points. Returns (pixel coordinates ``[N, 2]`` (u, v) continuous, z-depth ``[N]``)."""
    w2c_R = c2w[:3, :3].T
    pc = (np.asarray(points, dtype=np.float64) - c2w[:3, 3]) @ w2c_R.T
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = intrinsics.fx * pc[:, 0] / z + intrinsics.cx
        v = intrinsics.fy * pc[:, 1] / z + intrinsics.cy
    return np.stack([u, v], axis=-1), z
