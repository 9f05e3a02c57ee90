"""Compiled (numba) bookkeeping of ``model.fill.texture.synthesis.read_texels``: which tiles a batch of texel reads
needs.

The numpy version (``synthesis._read_texels_reference``) made per call ~20 array passes (tile indices, the far
levels' masks, a per-level mask, a dense table of the tiles in reach, a cumulative sum for the slots, the gathers
of each column): a frame's texel reads came to a few ms at 640x360 in calls of a few thousand texels. Here one
counting sort by level and, per tile-read level, one dense table (a sort where the tiles in reach are too
scattered for one) give every texel its tile's slot. Which tile a texel is read from, and where, is unchanged:
``tests/test_layout_fill_fused.py`` compares the two.
"""

from __future__ import annotations

import numpy as np

from spatia.world.numba_start import nb


@nb.njit(cache=True, nogil=True)
def plan_texels(rows, cols, level, dst, tile_px, far_level, n_levels):  # pragma: no cover - compiled
    """Texels rows / cols / level [N] int64 (level in [0, n_levels)), written to rows dst [N] int64 of the output.

    Returns, with the texels sorted by level (stable): s_rows, s_cols, s_ti, s_tj (their tile), s_dst [N] int64,
    level_start [n_levels + 1] int64; for the texels of a level below ``far_level`` (read through tiles) slot [N]
    int64, the index of their tile in that level's tiles, which are tile_i / tile_j [T] int64 from
    tile_start[level] on (tile_start [n_levels + 1]; ascending row-major tile order within a level)."""
    n = rows.shape[0]
    counts = np.zeros(n_levels + 1, np.int64)
    for k in range(n):
        counts[level[k] + 1] += 1
    level_start = np.cumsum(counts)
    fill = level_start[:n_levels].copy()
    s_rows = np.empty(n, np.int64)
    s_cols = np.empty(n, np.int64)
    s_ti = np.empty(n, np.int64)
    s_tj = np.empty(n, np.int64)
    s_dst = np.empty(n, np.int64)
    for k in range(n):
        s = fill[level[k]]
        fill[level[k]] += 1
        r, c = rows[k], cols[k]
        s_rows[s], s_cols[s] = r, c
        s_ti[s], s_tj[s] = r // tile_px, c // tile_px  # floor division, as np.floor_divide
        s_dst[s] = dst[k]
    slot = np.full(n, -1, np.int64)
    tile_i = np.empty(n, np.int64)
    tile_j = np.empty(n, np.int64)
    tile_start = np.zeros(n_levels + 1, np.int64)
    n_tiles = 0
    for lv in range(n_levels):
        tile_start[lv] = n_tiles
        a, b = level_start[lv], level_start[lv + 1]
        if lv >= far_level or a == b:
            continue
        i0, i1, j0, j1 = s_ti[a], s_ti[a], s_tj[a], s_tj[a]
        for s in range(a, b):
            i0, i1 = min(i0, s_ti[s]), max(i1, s_ti[s])
            j0, j1 = min(j0, s_tj[s]), max(j1, s_tj[s])
        span_j = j1 - j0 + 1
        span = (i1 - i0 + 1) * span_j
        if span <= 4 * (b - a) + 4096:
            table = np.full(span, -1, np.int64)
            for s in range(a, b):
                table[(s_ti[s] - i0) * span_j + (s_tj[s] - j0)] = 0
            for q in range(span):  # ascending tile order
                if table[q] == 0:
                    table[q] = n_tiles - tile_start[lv]
                    tile_i[n_tiles], tile_j[n_tiles] = i0 + q // span_j, j0 + q % span_j
                    n_tiles += 1
            for s in range(a, b):
                slot[s] = table[(s_ti[s] - i0) * span_j + (s_tj[s] - j0)]
        else:  # tiles scattered over a wide range: sort instead of a table that large
            key = np.empty(b - a, np.int64)
            for s in range(a, b):
                key[s - a] = (s_ti[s] - i0) * span_j + (s_tj[s] - j0)
            order = np.argsort(key, kind="mergesort")
            prev = np.int64(-1)
            for q in range(b - a):
                kk = key[order[q]]
                if q == 0 or kk != prev:
                    tile_i[n_tiles], tile_j[n_tiles] = i0 + kk // span_j, j0 + kk % span_j
                    n_tiles += 1
                    prev = kk
                slot[a + order[q]] = n_tiles - 1 - tile_start[lv]
    tile_start[n_levels] = n_tiles
    return s_rows, s_cols, s_ti, s_tj, s_dst, level_start, slot, tile_i[:n_tiles], tile_j[:n_tiles], tile_start


@nb.njit(cache=True, nogil=True)
def texel_tiles(rows, cols, level, tile_px, far_level):  # pragma: no cover - compiled
    """``synthesis.tiles_read`` (which tiles the per-tile coarse fill's texels read) in two passes over the texels
    with a dense table of the box of tiles they reach (a frame's plane spans tens of tiles each way); ``dense`` False (nothing else meaningful) when that box is larger than
    4 N + 4096 tiles: the caller sorts instead."""
    n = rows.shape[0]
    shift = -1  # a power-of-two tile: an arithmetic shift (a floor for negative indices too), not a division
    if tile_px & (tile_px - 1) == 0:
        shift = 0
        while (1 << shift) < tile_px:
            shift += 1
    ti = np.empty(n, np.int64)
    tj = np.empty(n, np.int64)
    tile = np.full(n, -1, np.int64)
    i0, j0, i1, j1, m = 0, 0, -1, -1, 0
    for k in range(n):
        if level[k] >= far_level:
            continue
        if shift >= 0:
            i, j = rows[k] >> shift, cols[k] >> shift
        else:
            i, j = rows[k] // tile_px, cols[k] // tile_px  # floor division, as np.floor_divide
        ti[k], tj[k] = i, j
        if m == 0:
            i0, i1, j0, j1 = i, i, j, j
        else:
            i0, i1, j0, j1 = min(i0, i), max(i1, i), min(j0, j), max(j1, j)
        m += 1
    if m == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64), tile, True
    span_j = j1 - j0 + 1
    span = (i1 - i0 + 1) * span_j
    if span > 4 * m + 4096:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64), tile, False
    top_box = np.full(span, -1, np.int64)
    for k in range(n):
        if level[k] >= far_level:
            continue
        q = (ti[k] - i0) * span_j + (tj[k] - j0)
        tile[k] = q
        if level[k] > top_box[q]:
            top_box[q] = level[k]
    index = np.full(span, -1, np.int64)
    count = 0
    for q in range(span):  # ascending key: row-major tile order, as np.unique's
        if top_box[q] >= 0:
            index[q] = count
            count += 1
    tiles = np.empty((count, 2), np.int64)
    top = np.empty(count, np.int64)
    for q in range(span):
        if index[q] >= 0:
            tiles[index[q], 0] = q // span_j + i0
            tiles[index[q], 1] = q % span_j + j0
            top[index[q]] = top_box[q]
    for k in range(n):
        if tile[k] >= 0:
            tile[k] = index[tile[k]]
    return tiles, top, tile, True
