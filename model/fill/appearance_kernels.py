"""Compiled (numba) window search of ``model.fill.appearance``: the best-covered exemplar window of a plane's
rasterised observations. numpy built four full-size temporaries per window size (and tries up to 14 sizes at up
to 7 texel scales per plane), which made it a quarter of a world's texture fitting at start-up (py-spy of a
served play session, docs/BENCHMARKS.md session 7)."""

from __future__ import annotations

import numba as nb


@nb.njit(cache=True, nogil=True)
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
