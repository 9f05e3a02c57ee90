"""Compiled (numba) ray cast of ``model.fill.geometry.layout.cast_layout``: every hole pixel's ray against the view's
bounding planes in one pass (the numpy version walked the ~150 k rays of a 640x360 frame once per plane with a
dozen temporaries each: ~20 ms of a house frame). Arithmetic follows the numpy expressions' types: float32 rates
and ray parameters, the facade tests in float64 (a float64 camera coordinate plus a float32 product), the doorway
tests in float32. ``tests/test_fill_layout.py`` compares it with a per-ray float64 reference.

Division follows numpy (``error_model="numpy"``): a ray parallel to a plane (rate exactly 0) gets an infinite or NaN
ray parameter and no hit, as the numpy version did; numba's default raised ZeroDivisionError there (a courtyard
frame looking exactly along the ground).
"""

from __future__ import annotations

import numpy as np

from spatia.world.numba_start import nb


@nb.njit(cache=True, nogil=True, error_model="numpy")
def cast_planes(rays, rate_vec, gap, facade, top_m, span_lo_m, span_hi_m, along_vec, cam_along_m, rise_vec,
                cam_up_m, door_plane, door_along_vec, door_cam_along, door_centre, door_half, door_bottom, door_top,
                cam_up32):
    """Nearest positive hit per ray: (z-depth [M] float32, 0 = none; plane index [M] int16, -1 = none).

    rays [M, 3] float32 camera frame (z = 1). Per plane b of B: rate_vec [B, 3] float32 (its axis in camera
    frame), gap [B] float32 (offset minus the camera's coordinate); facade [B] bool (outdoor walls that end at
    top_m [B] float64 along up and within [span_lo_m, span_hi_m] [B] along their horizontal axis, whose camera
    -frame vector is along_vec [B, 3] float32 and camera coordinate cam_along_m [B] float64); rise_vec [3]
    float32 up in camera frame, cam_up_m float64 the camera's height. Doorways d of D: door_plane [D] int64
    (the plane), door_along_vec [D, 3] float32, door_cam_along [D] float32, door_centre / door_half /
    door_bottom / door_top [D] float32 (metres along the wall's horizontal axis and along up); cam_up32 float32.
    """
    m_n, b_n, d_n = rays.shape[0], gap.shape[0], door_plane.shape[0]
    # plane by plane over contiguous ray columns: the plain planes' loop is branch-free and vectorises
    rx, ry, rz = rays[:, 0].copy(), rays[:, 1].copy(), rays[:, 2].copy()
    best = np.full(m_n, np.inf, np.float32)
    index = np.full(m_n, -1, np.int16)
    rise = rx * rise_vec[0] + ry * rise_vec[1] + rz * rise_vec[2]
    for b in range(b_n):
        v0, v1, v2, g = rate_vec[b, 0], rate_vec[b, 1], rate_vec[b, 2], gap[b]
        plain = not facade[b]
        for d in range(d_n):
            plain = plain and door_plane[d] != b
        b16 = np.int16(b)
        if plain:
            for n in range(m_n):  # selects written as arithmetic, so that LLVM vectorises the loop
                t = g / (rx[n] * v0 + ry[n] * v1 + rz[n] * v2)
                cur = best[n]
                take = np.int16((t > 0) & (t < cur))  # an infinite t (rate 0) never beats ``best`` (inf at most)
                best[n] = min(cur, t if t > 0 else cur)
                index[n] = index[n] + take * (b16 - index[n])
            continue
        a0, a1, a2 = along_vec[b, 0], along_vec[b, 1], along_vec[b, 2]
        for n in range(m_n):
            t = g / (rx[n] * v0 + ry[n] * v1 + rz[n] * v2)
            if not (t > 0 and np.isfinite(t) and t < best[n]):
                continue
            if facade[b]:
                if cam_up_m + np.float64(t * rise[n]) > top_m[b]:
                    continue
                along = cam_along_m[b] + np.float64(t * (rx[n] * a0 + ry[n] * a1 + rz[n] * a2))
                if along < span_lo_m[b] or along > span_hi_m[b]:
                    continue
            inside = False
            for d in range(d_n):
                if door_plane[d] != b:
                    continue
                height = cam_up32 + t * rise[n]
                dv = door_along_vec[d]
                along32 = door_cam_along[d] + t * (rx[n] * dv[0] + ry[n] * dv[1] + rz[n] * dv[2])
                if abs(along32 - door_centre[d]) <= door_half[d] and door_bottom[d] <= height <= door_top[d]:
                    inside = True
                    break
            if not inside:
                best[n] = t
                index[n] = b16
    depth = np.where(np.isfinite(best), best, np.float32(0.0)).astype(np.float32)
    return depth, index


@nb.njit(cache=True, nogil=True)
def axis_votes(cand, normals, cos_tol):
    """``[C]`` int64: for each candidate direction ``cand[i]`` ([C, 3] float64) how many ``normals`` ([N, 3]
    float64) have ``|cand[i] . normal| >= cos_tol`` (the up vote of ``layout._dominant_direction``). One pass with
    no temporaries: numpy's [C, N] product (C ~ 400, N up to 60 k) took 30-600 ms of a world's fit in memory
    traffic. The dot is summed in order without fused multiply-adds; BLAS may round it differently in the last
    bit, which changes a vote only for a normal within ~1e-16 of the threshold (the nearest on the scenes' first
    views was 2e-9 away: ``tests/test_fill_layout.py`` compares the counts with numpy's product)."""
    out = np.zeros(cand.shape[0], np.int64)
    for i in range(cand.shape[0]):
        a0, a1, a2 = cand[i, 0], cand[i, 1], cand[i, 2]
        k = 0
        for j in range(normals.shape[0]):
            if abs(a0 * normals[j, 0] + a1 * normals[j, 1] + a2 * normals[j, 2]) >= cos_tol:
                k += 1
        out[i] = k
    return out
