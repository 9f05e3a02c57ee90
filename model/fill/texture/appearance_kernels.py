"""Compiled (numba) window search of ``model.fill.texture.appearance``: the best-covered exemplar window of a plane's
rasterised observations. numpy built four full-size temporaries per window size (and tries up to 14 sizes at up
to 7 texel scales per plane), which made it a quarter of a world's texture fitting at start-up (py-spy of a
served play session, docs/BENCHMARKS.md session 7)."""

from __future__ import annotations

import math

import numpy as np

from spatia.world.numba_start import nb


@nb.njit(cache=True, nogil=True, error_model="numpy")
def best_window(integral, rows, cols):
    """(row, col, count) of the ``rows`` x ``cols`` window with the largest sum, the first in row-major order
    among equals (as ``np.argmax``), from the integral image ``integral`` [H + 1, W + 1] (zero first row and
    column). The caller ensures the window fits (rows <= H, cols <= W)."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    best, best_r, best_c = -1, 0, 0
    for r in range(h - rows + 1):
        for c in range(w - cols + 1):
            total = integral[r + rows, c + cols] - integral[r, c + cols] - integral[r + rows, c] + integral[r, c]
            if total > best:
                best, best_r, best_c = total, r, c
    return best_r, best_c, best


@nb.njit(cache=True, nogil=True, error_model="numpy")
def lower_unseen_contrast(uv, colours, cuts_u, cuts_v, seen_cell, mean, contrast):
    """In place: ``colours`` [M, 3] uint8 at plane points ``uv`` [M, 2] (metres) whose cell is not seen become
    ``floor(mean + contrast * (colour - mean) + 0.5)`` clipped to 0..255. A point's cell is ``iu * (B + 1) + iv``
    with ``iu`` the number of ``cuts_u`` [A] (sorted) below u (``np.searchsorted``'s left side), ``iv`` likewise on
    ``cuts_v`` [B]; ``seen_cell`` [(A + 1) * (B + 1)] bool. Returns how many points were changed. On the frame
    path (every floor pixel of a frame): the numpy twin ``UnseenCells.reference_apply`` took 23 ms CPU per 100 k
    points."""
    m = uv.shape[0]
    nb_v = cuts_v.shape[0] + 1
    changed = 0
    for i in range(m):
        u = uv[i, 0]
        v = uv[i, 1]
        iu = 0
        while iu < cuts_u.shape[0] and cuts_u[iu] < u:
            iu += 1
        iv = 0
        while iv < cuts_v.shape[0] and cuts_v[iv] < v:
            iv += 1
        if seen_cell[iu * nb_v + iv]:
            continue
        changed += 1
        for c in range(3):
            x = mean[c] + contrast * (colours[i, c] - mean[c]) + 0.5
            colours[i, c] = np.uint8(min(max(x, 0.0), 255.0))
    return changed


@nb.njit(cache=True, nogil=True, error_model="numpy")
def add_sky_detail(dirs, elev_deg, colours, detail, forward, right, top_deg, left_deg, texel_deg):
    """In place: ``colours`` [M, 3] uint8 (the sky bands' colours of rays ``dirs`` [M, 3], world frame, at
    elevations ``elev_deg`` [M]) plus the detail cell each ray falls in (``SkyModel.reference_colour``), clipped to
    0..255. One pass over the rays, without numpy's azimuth, cell and gather temporaries."""
    h, w = detail.shape[0], detail.shape[1]
    for i in range(dirs.shape[0]):
        row = math.floor((top_deg - elev_deg[i]) / texel_deg)
        if row < 0 or row >= h:
            continue
        x, y, z = np.float64(dirs[i, 0]), np.float64(dirs[i, 1]), np.float64(dirs[i, 2])
        az = math.degrees(math.atan2(x * right[0] + y * right[1] + z * right[2],
                                     x * forward[0] + y * forward[1] + z * forward[2]))
        col = math.floor(((az - left_deg) % 360.0) / texel_deg) % (2 * w)
        if col >= w:
            col = 2 * w - 1 - col
        for k in range(3):
            v = np.int32(colours[i, k]) + np.int32(detail[row, col, k])
            colours[i, k] = np.uint8(min(max(v, 0), 255))
