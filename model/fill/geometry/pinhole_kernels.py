"""Compiled passes of ``model.geometric._pinholes_on_planes`` (its numpy twin: ``_pinholes_on_planes_reference``).

A kernel file of its own: numba's on-disk cache is keyed on the source file, so a kernel kept in geometric.py would
recompile on every edit of that module."""

from __future__ import annotations

import numpy as np

from spatia.world.numba_start import nb


@nb.njit(cache=True, nogil=True)
def pinhole_rays(hole_idx, f, pinhole, depth_flat, rays_flat):  # pragma: no cover - compiled
    """hole_idx [M] int64 flat pixel indices, f [M] float32 the fill's depth there, pinhole [M] bool, depth_flat
    [H * W] float32 the frame's depth, rays_flat [H * W, 3] float32. Returns sel [S] int64 (ascending indices into
    M: pinholes with f > 0 whose pixel's depth is > 0) and their rays [S, 3] float32: the reference's
    ``np.flatnonzero`` and gathers in one pass, counted first so nothing is allocated per hole."""
    n = 0
    for m in range(hole_idx.shape[0]):
        n += np.int64(pinhole[m] and f[m] > 0 and depth_flat[hole_idx[m]] > 0)
    sel = np.empty(n, np.int64)
    rays = np.empty((n, 3), np.float32)
    s = 0
    for m in range(hole_idx.shape[0]):
        if pinhole[m] and f[m] > 0:
            p = hole_idx[m]
            if depth_flat[p] > 0:
                sel[s] = m
                rays[s, 0], rays[s, 1], rays[s, 2] = rays_flat[p, 0], rays_flat[p, 1], rays_flat[p, 2]
                s += 1
    return sel, rays


@nb.njit(cache=True, nogil=True)
def pinholes_onto_planes(sel, hole_idx, f, ld, rel, depth_flat):  # pragma: no cover - compiled
    """Writes ``ld[k]`` into ``depth_flat[hole_idx[sel[k]]]`` where ``ld[k] > 0`` and the fill ``f[sel[k]]`` lies
    within ``rel`` (float32) of it: the reference's float32 expressions, ``|f - ld| <= rel * ld``."""
    for k in range(sel.shape[0]):
        d = ld[k]
        if d > 0:
            m = sel[k]
            if abs(f[m] - d) <= rel * d:
                depth_flat[hole_idx[m]] = d
