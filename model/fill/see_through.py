"""Farther points seen through the gaps between a nearer surface's points, found in a rendered frame.

A surface observed from far holds one point per pixel footprint of that view (4.8 cm apart at 10 m for a 320 px
wide, 75 deg first view), while a point's splat is sized for the voxel side ``d`` (``MemoryConfig``). Walking up
to it the splats no longer touch, and what lies behind shows through the gaps: the brick facade as a grid on the
courtyard's fountain column seen from 1 m. Those pixels are rendered, so no hole fill sees them.

The test (``see_through_pixels``): a rendered pixel with a nearer rendered pixel (by more than ``rel`` of its depth
and at least ``min_gap_m``) within ``radius_px`` on *both* sides along at least two of the four directions
(across, down, the two diagonals). The inverse depth of a plane is linear in the image,
so no pixel of one plane has nearer pixels on both sides along a line; a room's inside corner seen square on is
~3 % nearer over 2 % of the image's width (the radius ``GeometricConfig.see_through_frac`` gives), under ``rel``. The caller treats what it marks as holes (the small-hole fill continues the nearer
surface's depth, push-pull its colour). ``reference_see_through_pixels`` is the slow, plain twin the tests compare
it with.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, inline="always")
def _nearer_along(depth, valid, y, x, dy, dx, radius_px, limit, h, w):  # pragma: no cover - compiled
    for k in range(1, radius_px + 1):
        yy = y + k * dy
        xx = x + k * dx
        if yy < 0 or yy >= h or xx < 0 or xx >= w:
            return False
        if valid[yy, xx] and depth[yy, xx] < limit:
            return True
    return False


@nb.njit(cache=True, nogil=True, parallel=True)
def _see_through(depth, valid, radius_px, rel, min_gap_m, out):  # pragma: no cover - compiled
    h, w = depth.shape
    for y in nb.prange(h):  # rows are independent (each writes its own row of ``out``)
        for x in range(w):
            if not valid[y, x]:
                continue
            z = np.float64(depth[y, x])
            limit = min(z * (1.0 - rel), z - min_gap_m)  # float64, as the reference
            # one side first: on a surface (most pixels) nothing is nearer, and the other side is never walked
            across = (_nearer_along(depth, valid, y, x, 0, -1, radius_px, limit, h, w)
                      and _nearer_along(depth, valid, y, x, 0, 1, radius_px, limit, h, w))
            vertical = (_nearer_along(depth, valid, y, x, -1, 0, radius_px, limit, h, w)
                        and _nearer_along(depth, valid, y, x, 1, 0, radius_px, limit, h, w))
            if across and vertical:
                out[y, x] = True
                continue
            diagonal = (_nearer_along(depth, valid, y, x, -1, -1, radius_px, limit, h, w)
                        and _nearer_along(depth, valid, y, x, 1, 1, radius_px, limit, h, w))
            if across or vertical:
                out[y, x] = diagonal or (_nearer_along(depth, valid, y, x, -1, 1, radius_px, limit, h, w)
                                         and _nearer_along(depth, valid, y, x, 1, -1, radius_px, limit, h, w))
            elif diagonal:  # where two lines of gaps cross: only the diagonals meet the surface
                out[y, x] = (_nearer_along(depth, valid, y, x, -1, 1, radius_px, limit, h, w)
                             and _nearer_along(depth, valid, y, x, 1, -1, radius_px, limit, h, w))


def see_through_pixels(
    depth_m: np.ndarray,  # [H, W] float32 z-depth of the render (0 where nothing rendered)
    valid: np.ndarray,  # [H, W] bool, rendered
    radius_px: int,
    rel: float = 0.05,
    min_gap_m: float = 0.05,
) -> np.ndarray:
    """``[H, W]`` bool: rendered pixels that show a farther surface through a nearer one's gaps (module doc)."""
    depth = np.ascontiguousarray(depth_m, np.float32)
    ok = np.ascontiguousarray(valid, np.bool_)
    if depth.shape != ok.shape or depth.ndim != 2:
        raise ValueError(f"depth {depth.shape} and valid {ok.shape} must be the same [H, W]")
    out = np.zeros(depth.shape, np.bool_)
    _see_through(depth, ok, int(radius_px), float(rel), float(min_gap_m), out)
    return out


def reference_see_through_pixels(depth_m: np.ndarray, valid: np.ndarray, radius_px: int, rel: float = 0.05,
                                 min_gap_m: float = 0.05) -> np.ndarray:
    """The definition, pixel by pixel in plain Python (slow): for tests."""
    depth = np.asarray(depth_m, np.float32)
    h, w = depth.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if not valid[y, x]:
                continue
            z = float(depth[y, x])
            limit = min(z * (1.0 - rel), z - min_gap_m)

            def nearer(dy: int, dx: int) -> bool:
                for k in range(1, radius_px + 1):
                    yy, xx = y + k * dy, x + k * dx
                    if not (0 <= yy < h and 0 <= xx < w):
                        return False
                    if valid[yy, xx] and depth[yy, xx] < limit:
                        return True
                return False

            pairs = [nearer(dy, dx) and nearer(-dy, -dx) for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1))]
            out[y, x] = sum(pairs) >= 2
    return out
