"""Compiled (numba) kernels of the texture synthesis in ``model.fill.texture.synthesis``.

``region_detail`` makes a region's shading-free texels in one call: the cell choices it needs (cached per model
and seed in an open-addressing table of plain arrays, ``new_cell_table``), the boundary cuts between them and the
composition. It is a port of the Python path in ``texture.py`` (``TextureModel.cell_source``, ``_seam``,
``reference_region``), which stays as the slow reference: tests compare them texel for texel. Why compiled: a
64 x 64 tile took 2.5-4 ms of Python-bound work (hundreds of small numpy calls per cell) and held the GIL
throughout, so in a server the frame threads and the fill's maintenance threads queued behind one another on one
core (docs/BENCHMARKS.md, session 7).

Arithmetic follows the reference's numpy types exactly (float32 patches plus float64 offsets rounded to float32,
float32 cut errors summed in channel order, splitmix64 hashes in wrapping uint64), so the texels are the same.
"""

from __future__ import annotations

import numpy as np

from spatia.world.numba_start import nb

NUM_CANDIDATES = 64
DC_WEIGHT = 0.25
PICK_TOLERANCE = 0.1
CELL_TABLE_SLOTS = 1 << 15  # a table is cleared when half full (its entries are pure functions of their key)

KIND_NONE, KIND_1D, KIND_2D = 0, 1, 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TAG_CANDIDATES = 0x51
_TAG_PICK = 0x77

_EMPTY = np.iinfo(np.int64).min  # no cell packs to this key (row -2^31, col 0)


def new_cell_table(slots: int = CELL_TABLE_SLOTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An empty cell-choice table for ``region_detail``: an open-addressing hash table (linear probing) of
    ``slots`` (a power of two) from a cell's packed (row, col) to its choice: keys [slots] int64, values
    [slots, 5] float64 (source row, source col, offset r, g, b), used [1] int64. Plain arrays, not a numba typed
    dict: those cost ~3 s of compilation per function that touches one (a cold cache took 80 s)."""
    if slots < 64 or slots & (slots - 1):
        raise ValueError(f"slots must be a power of two >= 64, got {slots}")
    return np.full(slots, _EMPTY, np.int64), np.zeros((slots, 5), np.float64), np.zeros(1, np.int64)


def cell_table_slots_for(rows: int, cols: int, step_px: int) -> int:
    """Slots a table needs for a region of rows x cols texels to stay under half full however it is asked for
    (the cells it reads, with their dependency chains and a margin)."""
    cells = 2 * (rows // step_px + 12) * (cols // step_px + 12)
    return max(CELL_TABLE_SLOTS, 1 << int(np.ceil(np.log2(4 * cells))))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _slot(keys, key):
    """Where ``key`` is in ``keys``, or the empty slot where it goes."""
    mask = keys.shape[0] - 1
    i = np.int64(_mix64(np.uint64(key)) & np.uint64(mask))
    while keys[i] != key and keys[i] != _EMPTY:
        i = (i + 1) & mask
    return i


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _has(table, key):
    return table[0][_slot(table[0], key)] == key


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _get(table, key):
    v = table[1][_slot(table[0], key)]
    return (v[0], v[1], v[2], v[3], v[4])


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _put(table, key, value):
    keys, values, used = table
    i = _slot(keys, key)
    if keys[i] != key:
        if 2 * (used[0] + 1) > keys.shape[0]:
            raise RuntimeError("texture cell table over half full inside one region")
        keys[i] = key
        used[0] += 1
    for c in range(5):
        values[i, c] = value[c]


# ---------------------------------------------------------------------------------------------------------------
# Hashing (splitmix64, as texture._key_hash / _hash_stream)
# ---------------------------------------------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _mix64(x):
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _key_hash4(a, b, c, d):
    h = _GOLDEN
    h = _mix64(h ^ np.uint64(a))
    h = _mix64(h ^ np.uint64(b))
    h = _mix64(h ^ np.uint64(c))
    return _mix64(h ^ np.uint64(d))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _stream(h, k):
    """The k-th value (k >= 1) of ``texture._hash_stream(h, n)``."""
    return _mix64(h + np.uint64(k) * _GOLDEN)


# ---------------------------------------------------------------------------------------------------------------
# Kernels shared with the reference path
# ---------------------------------------------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, error_model="numpy")
def ssd_costs(detail, cand, canvas, pix, dc_weight):
    """Match cost and colour offset per candidate patch against the wanted content.

    detail [H, W, 3] float32; cand [K, 2] int64 patch origins (row, col); canvas [P, P, 3] float32 (the wanted
    content); pix [M, 2] int64 patch-local (row, col) of the constrained pixels. With d = canvas - candidate over
    those pixels, per channel: cost = var(d) + dc_weight * mean(d)^2 summed over channels, offset = mean(d).
    Returns (cost [K] float64, offset [K, 3] float64).
    """
    k_n, m_n = cand.shape[0], pix.shape[0]
    cost = np.empty(k_n, np.float64)
    offset = np.zeros((k_n, 3), np.float64)
    inv_m = 1.0 / max(m_n, 1)
    width = detail.shape[1]
    flat = detail.reshape(-1)
    want = np.empty(3 * m_n, np.float32)  # the canvas at the constrained pixels, gathered once
    at = np.empty(m_n, np.int64)  # their offsets into ``flat`` relative to a candidate's origin
    for m in range(m_n):
        at[m] = 3 * (pix[m, 0] * width + pix[m, 1])
        for c in range(3):
            want[3 * m + c] = canvas[pix[m, 0], pix[m, 1], c]
    for k in range(k_n):
        base = 3 * (cand[k, 0] * width + cand[k, 1])
        # scalar accumulators (registers, not a 3-array in memory); pixels in order, so the sums are the same
        a0 = a1 = a2 = 0.0
        b0 = b1 = b2 = 0.0
        for m in range(m_n):
            q = base + at[m]
            d0 = want[3 * m] - flat[q]
            d1 = want[3 * m + 1] - flat[q + 1]
            d2 = want[3 * m + 2] - flat[q + 2]
            a0 += d0
            a1 += d1
            a2 += d2
            b0 += d0 * d0
            b1 += d1 * d1
            b2 += d2 * d2
        total = 0.0
        for c, s1, s2 in ((0, a0, b0), (1, a1, b1), (2, a2, b2)):
            mean = s1 * inv_m
            total += s2 * inv_m - mean * mean + dc_weight * mean * mean
            offset[k, c] = mean
        cost[k] = total
    return cost, offset


@nb.njit(cache=True, nogil=True, error_model="numpy")
def pinned_seam(err, lo, hi):
    """Minimum-error path down ``err`` [L, Wd] (one pixel per row, moving at most one column per row, staying in
    columns [lo, hi]) that starts and ends at the middle column ``Wd // 2``. Returns [L] int64 column per row."""
    n_rows, width = err.shape
    mid = width // 2
    cost = np.full((n_rows, width), np.inf)
    back = np.zeros((n_rows, width), np.int64)
    cost[0, mid] = err[0, mid]
    for y in range(1, n_rows):
        for x in range(lo, hi + 1):
            best, arg = np.inf, x
            for dx in (-1, 0, 1):  # ties prefer the left-most: fixed order keeps it deterministic
                xp = x + dx
                if lo <= xp <= hi and cost[y - 1, xp] < best:
                    best, arg = cost[y - 1, xp], xp
            cost[y, x] = best + err[y, x]
            back[y, x] = arg
    path = np.empty(n_rows, np.int64)
    path[n_rows - 1] = mid
    for y in range(n_rows - 1, 0, -1):
        path[y - 1] = back[y, path[y]]
    return path


@nb.njit(cache=True, nogil=True, error_model="numpy")
def compose(detail, src, off, rmin, cmin, r_lo, r_hi, r_w, c_lo, c_hi, c_w, y0, x0, step, half):
    """Texels of a region from its owner cells: each texel mixes up to four cells' patches (row owners r_lo/r_hi
    with weight r_w on r_hi, column owners likewise), reading only those with non-zero weight.

    detail [H, W, 3] float32; src [R, C, 2] int64 patch origins and off [R, C, 3] float32 colour offsets of
    cells (rmin + r, cmin + c); r_lo, r_hi, c_lo, c_hi [h, w] int64 and r_w, c_w [h, w] float32; texel (i, j)
    is at texture-space row y0 + i, column x0 + j. Returns [h, w, 3] float32."""
    hh, ww = r_lo.shape
    out = np.zeros((hh, ww, 3), np.float32)
    for i in range(hh):
        y = y0 + i
        for j in range(ww):
            x = x0 + j
            for a in range(2):
                rw = r_w[i, j] if a == 1 else 1.0 - r_w[i, j]
                if rw <= 0.0:
                    continue
                row = r_hi[i, j] if a == 1 else r_lo[i, j]
                for b in range(2):
                    cw = c_w[i, j] if b == 1 else 1.0 - c_w[i, j]
                    if cw <= 0.0:
                        continue
                    col = c_hi[i, j] if b == 1 else c_lo[i, j]
                    sy = src[row - rmin, col - cmin, 0] + y - (row * step - half)
                    sx = src[row - rmin, col - cmin, 1] + x - (col * step - half)
                    w = rw * cw
                    for c in range(3):
                        out[i, j, c] += w * (detail[sy, sx, c] + off[row - rmin, col - cmin, c])
    return out


# ---------------------------------------------------------------------------------------------------------------
# The model, as the kernels see it
# ---------------------------------------------------------------------------------------------------------------
# m: one tuple (``TextureModel._kernel_view``), read by these indices (numba folds a global constant index of a
# heterogeneous tuple at compile time):
(M_DETAIL,  # [H, W, 3] f32
 M_VALID,  # [H, W] bool
 M_VALID_INTEGRAL,  # [H+1, W+1] i64
 M_SOURCE_OK,  # [H-P+1, W-P+1] bool
 M_FULL_WINDOW,  # [H-P+1, W-P+1] bool
 M_SOURCES,  # [S, 2] i64
 M_KIND,  # KIND_*
 M_BASIS,  # [2, 2] f64, the copy lattice's rows a, b
 M_INV,  # [2, 2] f64, the inverse of basis.T
 M_BASIS_INTEGER,  # bool
 M_PHASE_SORTED,  # [S] f64
 M_PHASE_ORDER,  # [S] i64
 M_PERIOD_1D,  # float
 M_ORIGIN_Y, M_ORIGIN_X, M_STEP, M_HALF, M_PATCH, M_OVERLAP, M_FEATHER,  # ints, texels
 M_FIELDS) = range(21)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _observed_count(valid_integral, y0, x0, size):
    h, w = valid_integral.shape[0] - 1, valid_integral.shape[1] - 1
    ya, yb, xa, xb = max(y0, 0), min(y0 + size, h), max(x0, 0), min(x0 + size, w)
    if ya >= yb or xa >= xb:
        return 0
    s = valid_integral
    return s[yb, xb] - s[ya, xb] - s[yb, xa] + s[ya, xa]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _level(m, gi, gj):
    """0: the cell's patch covers observed texels; 1: even row; 2: odd row (texture.TextureModel._level)."""
    ty, tx = gi * m[M_STEP] - m[M_HALF] - m[M_ORIGIN_Y], gj * m[M_STEP] - m[M_HALF] - m[M_ORIGIN_X]
    if _observed_count(m[M_VALID_INTEGRAL], ty, tx, m[M_PATCH]) > 0:
        return 0
    return 1 if gi % 2 == 0 else 2


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _is_source(source_ok, y, x):
    return 0 <= y < source_ok.shape[0] and 0 <= x < source_ok.shape[1] and source_ok[y, x]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _pool_2d(m, ty, tx):
    """Source windows congruent to (ty, tx) modulo a 2-D lattice, in (row, col) order (``_congruent``'s pool)."""
    source_ok, basis, inv = m[M_SOURCE_OK], m[M_BASIS], m[M_INV]
    if m[M_BASIS_INTEGER]:  # whole-texel lattice: the coset's representative, as the reference keys its pool cache
        c0 = np.floor(inv[0, 0] * ty + inv[0, 1] * tx + 1e-9)
        c1 = np.floor(inv[1, 0] * ty + inv[1, 1] * tx + 1e-9)
        ry = np.rint(ty - (c0 * basis[0, 0] + c1 * basis[1, 0]))
        rx = np.rint(tx - (c0 * basis[0, 1] + c1 * basis[1, 1]))
        ty, tx = np.int64(ry), np.int64(rx)
    hh, ww = source_ok.shape
    lo0, lo1, hi0, hi1 = np.inf, np.inf, -np.inf, -np.inf
    for k in range(4):
        cy = (0.0 if k < 2 else hh - 1.0) - ty
        cx = (0.0 if k % 2 == 0 else ww - 1.0) - tx
        a = cy * inv[0, 0] + cx * inv[0, 1]
        b = cy * inv[1, 0] + cx * inv[1, 1]
        lo0, hi0, lo1, hi1 = min(lo0, a), max(hi0, a), min(lo1, b), max(hi1, b)
    m0, m1 = int(np.floor(lo0)), int(np.ceil(hi0))
    n0, n1 = int(np.floor(lo1)), int(np.ceil(hi1))
    pos = np.empty(((m1 - m0 + 1) * (n1 - n0 + 1), 2), np.int64)
    k = 0
    for mm in range(m0, m1 + 1):
        for nn in range(n0, n1 + 1):
            y = np.int64(np.rint(mm * basis[0, 0] + nn * basis[1, 0] + ty))
            x = np.int64(np.rint(mm * basis[0, 1] + nn * basis[1, 1] + tx))
            if 0 <= y < hh and 0 <= x < ww:
                pos[k, 0], pos[k, 1] = y, x
                k += 1
    pos = pos[:k]
    order = np.argsort(pos[:, 0] * (ww + 1) + pos[:, 1], kind="mergesort")
    pos = pos[order]
    keep = np.zeros(k, np.bool_)
    for i in range(k):
        keep[i] = source_ok[pos[i, 0], pos[i, 1]]
    pool = pos[keep]
    if pool.shape[0] == 0:
        return pos  # in phase but partly pre-filled beats out of phase
    return pool


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _pool_1d(m, ty, tx):
    src, basis, ph, order, period = m[M_SOURCES], m[M_BASIS], m[M_PHASE_SORTED], m[M_PHASE_ORDER], m[M_PERIOD_1D]
    phase_t = (ty * (basis[0, 0] / period) + tx * (basis[0, 1] / period)) % period
    lo, hi = phase_t - 0.5, phase_t + 0.5
    n = ph.shape[0]
    a0, a1 = np.searchsorted(ph, max(lo, 0.0)), np.searchsorted(ph, min(hi, period))
    b0 = np.searchsorted(ph, lo + period) if lo < 0 else n
    c1 = np.searchsorted(ph, hi - period) if hi > period else 0
    idx = np.empty(max(a1 - a0, 0) + (n - b0) + c1, np.int64)
    k = 0
    for i in range(a0, a1):
        idx[k] = order[i]
        k += 1
    for i in range(b0, n):
        idx[k] = order[i]
        k += 1
    for i in range(0, c1):
        idx[k] = order[i]
        k += 1
    return src[np.sort(idx)]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _sorted_unique(values):
    """np.unique of a short int64 array (<= ~70 values here): insertion sort and dedupe, which compiles in a
    fraction of np.unique's time (compilation dominated a cold start)."""
    a = values.copy()
    for i in range(1, a.shape[0]):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v
    n = 0
    for i in range(a.shape[0]):
        if n == 0 or a[i] != a[n - 1]:
            a[n] = a[i]
            n += 1
    return a[:n]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _congruent(m, ty, tx, h):
    """texture.TextureModel._congruent: at most NUM_CANDIDATES congruent source windows, chosen by hash ``h``."""
    kind = m[M_KIND]
    if kind == KIND_2D:
        pool = _pool_2d(m, ty, tx)
    elif kind == KIND_1D:
        pool = _pool_1d(m, ty, tx)
    else:
        pool = m[M_SOURCES]
    if pool.shape[0] == 0:  # exemplar too small to hold a congruent window: keep the texture, lose the phase
        pool = m[M_SOURCES]
    n = pool.shape[0]
    if n <= NUM_CANDIDATES:
        return pool
    pick = np.empty(NUM_CANDIDATES, np.int64)
    for k in range(NUM_CANDIDATES):
        pick[k] = np.int64(_stream(h, k + 1) % np.uint64(n))
    return pool[_sorted_unique(pick)]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _cell_key(gi, gj):
    return (gi << 32) ^ (gj & 0xFFFFFFFF)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _compute_cell(m, table, seed, gi, gj):
    """texture.TextureModel._cell_source_locked for a cell whose dependencies are all in ``table``."""
    detail, valid, source_ok = m[M_DETAIL], m[M_VALID], m[M_SOURCE_OK]
    s, h, p, ov = m[M_STEP], m[M_HALF], m[M_PATCH], m[M_OVERLAP]
    ty, tx = gi * s - h - m[M_ORIGIN_Y], gj * s - h - m[M_ORIGIN_X]
    level = _level(m, gi, gj)
    if level == 0 and _is_source(source_ok, ty, tx) and m[M_FULL_WINDOW][ty, tx]:
        return (float(ty), float(tx), 0.0, 0.0, 0.0)  # fully observed: copy itself
    canvas = np.zeros((p, p, 3), np.float32)
    mask = np.zeros((p, p), np.bool_)
    coherent = np.empty((4, 2), np.int64)
    n_coherent = 0
    if level == 0:
        h_ex, w_ex = valid.shape
        ya, yb, xa, xb = max(ty, 0), min(ty + p, h_ex), max(tx, 0), min(tx + p, w_ex)
        for y in range(ya, yb):
            for x in range(xa, xb):
                if valid[y, x]:
                    for c in range(3):
                        canvas[y - ty, x - tx, c] = detail[y, x, c]
                    mask[y - ty, x - tx] = True
    else:
        chunk_start = gj % 4 == 0
        for d in range(4):
            di = 0 if d < 2 else (-1 if d == 2 else 1)
            dj = (-1 if d == 0 else 1) if d < 2 else 0
            n_level = _level(m, gi + di, gj + dj)
            dep = n_level == 0 or (d == 0 and not chunk_start and n_level == level) or (
                level == 2 and di != 0 and n_level == 1)
            if not dep:
                continue
            got = _get(table, _cell_key(gi + di, gj + dj))
            sy, sx = np.int64(got[0]), np.int64(got[1])
            if dj == -1:
                y_a, y_b, x_a, x_b = 0, p, 0, ov
            elif dj == 1:
                y_a, y_b, x_a, x_b = 0, p, s, p
            elif di == -1:
                y_a, y_b, x_a, x_b = 0, ov, 0, p
            else:
                y_a, y_b, x_a, x_b = s, p, 0, p
            oy, ox = sy - di * s, sx - dj * s  # the neighbour's source, shifted into our patch frame
            for y in range(y_a, y_b):
                for x in range(x_a, x_b):
                    for c in range(3):
                        canvas[y, x, c] = np.float32(np.float64(detail[oy + y, ox + x, c]) + got[2 + c])
                    mask[y, x] = True
            cy, cx = sy - di * s, sx - dj * s
            if _is_source(source_ok, cy, cx):
                coherent[n_coherent, 0], coherent[n_coherent, 1] = cy, cx
                n_coherent += 1
    hk = _key_hash4(seed, gi, gj, _TAG_CANDIDATES)
    pool = _congruent(m, ty, tx, hk)
    width = source_ok.shape[1] + 1
    flat = np.empty(pool.shape[0] + n_coherent, np.int64)
    for k in range(pool.shape[0]):
        flat[k] = pool[k, 0] * width + pool[k, 1]
    for k in range(n_coherent):
        flat[pool.shape[0] + k] = coherent[k, 0] * width + coherent[k, 1]
    flat = _sorted_unique(flat)
    cand = np.empty((flat.shape[0], 2), np.int64)
    for k in range(flat.shape[0]):
        cand[k, 0], cand[k, 1] = flat[k] // width, flat[k] % width
    pick_h = _stream(_key_hash4(seed, gi, gj, _TAG_PICK), 1)
    n_pix = 0
    for y in range(p):
        for x in range(p):
            n_pix += mask[y, x]
    if n_pix == 0:
        pick = np.int64(pick_h % np.uint64(cand.shape[0]))
        return (float(cand[pick, 0]), float(cand[pick, 1]), 0.0, 0.0, 0.0)
    pix = np.empty((n_pix, 2), np.int64)
    k = 0
    for y in range(p):
        for x in range(p):
            if mask[y, x]:
                pix[k, 0], pix[k, 1] = y, x
                k += 1
    periodic = m[M_KIND] != KIND_NONE
    costs, offsets = ssd_costs(detail, cand, canvas, pix, 1.0 if periodic else DC_WEIGHT)
    bound = costs.min() * (1.0 + PICK_TOLERANCE) + 1.0
    near = np.empty(costs.shape[0], np.int64)
    n_near = 0
    for k in range(costs.shape[0]):
        if costs[k] <= bound:
            near[n_near] = k
            n_near += 1
    pick = near[np.int64(pick_h % np.uint64(n_near))]
    if periodic:
        return (float(cand[pick, 0]), float(cand[pick, 1]), 0.0, 0.0, 0.0)
    return (float(cand[pick, 0]), float(cand[pick, 1]), offsets[pick, 0], offsets[pick, 1], offsets[pick, 2])


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _push(work, n, gi, gj):
    work[n, 0], work[n, 1] = gi, gj
    return n + 1


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _push_level0_around(m, work, n, gi, gj):
    for d in range(4):
        ni = gi + (0 if d < 2 else (-1 if d == 2 else 1))
        nj = gj + ((-1 if d == 0 else 1) if d < 2 else 0)
        if _level(m, ni, nj) == 0:
            n = _push(work, n, ni, nj)
    return n


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _push_chain(m, table, work, n, gi, gj, level):
    """Cell (gi, gj) of ``level`` (1 or 2) after what it depends on: the cells left of it in its chain (each after
    its own level-0 neighbours and, on odd rows, the even-row chains above and below it)."""
    start = gj
    while start % 4 != 0 and _level(m, gi, start - 1) == level and not _has(table, _cell_key(gi, start - 1)):
        start -= 1
    for j in range(start, gj + 1):
        n = _push_level0_around(m, work, n, gi, j)
        if level == 2:
            for di in (-1, 1):
                if _level(m, gi + di, j) == 1:
                    row = gi + di
                    first = j
                    while first % 4 != 0 and _level(m, row, first - 1) == 1 and not _has(table,
                                                                                       _cell_key(row, first - 1)):
                        first -= 1
                    for jj in range(first, j + 1):
                        n = _push_level0_around(m, work, n, row, jj)
                        n = _push(work, n, row, jj)
        n = _push(work, n, gi, j)
    return n


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _ensure_cells(m, table, seed, rows0, rows1, cols0, cols1):
    """Every cell of rows [rows0, rows1] x cols [cols0, cols1] in ``table``, each made after the cells it depends
    on (texture.TextureModel.cell_source's recursion as a work list: ``_compute_cell`` has one call site, which
    keeps the compiled code small)."""
    work = np.empty((4 * 64, 2), np.int64)  # one cell's dependencies: chain <= 4 x (4 + 2 x 4 x 5 + 1)
    for gi in range(rows0, rows1 + 1):
        for gj in range(cols0, cols1 + 1):
            if _has(table, _cell_key(gi, gj)):
                continue
            level = _level(m, gi, gj)
            n = _push(work, 0, gi, gj) if level == 0 else _push_chain(m, table, work, 0, gi, gj, level)
            for w in range(n):
                key = _cell_key(work[w, 0], work[w, 1])
                if not _has(table, key):
                    _put(table, key, _compute_cell(m, table, seed, work[w, 0], work[w, 1]))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _seam(m, table, seed, vertical, i, j):
    """texture.TextureModel._seam: the cut between cells (i, j-1) | (i, j) (vertical) or (i-1, j) / (i, j)."""
    detail, s, h, ov, q = m[M_DETAIL], m[M_STEP], m[M_HALF], m[M_OVERLAP], m[M_FEATHER]
    a = _get(table, _cell_key(i, j - 1)) if vertical else _get(table, _cell_key(i - 1, j))
    b = _get(table, _cell_key(i, j))
    ay, ax, by, bx = np.int64(a[0]), np.int64(a[1]), np.int64(b[0]), np.int64(b[1])
    a_off = np.empty(3, np.float32)
    b_off = np.empty(3, np.float32)
    for c in range(3):
        a_off[c], b_off[c] = np.float32(a[2 + c]), np.float32(b[2 + c])
    err = np.empty((s, ov), np.float64)
    for r in range(s):  # along the cut
        for u in range(ov):  # across the band
            if vertical:
                pa = detail[ay + h + r, ax + s + u]
                pb = detail[by + h + r, bx + u]
            else:
                pa = detail[ay + s + u, ax + h + r]
                pb = detail[by + u, bx + h + r]
            e = np.float32(0.0)
            for c in range(3):
                d = (pa[c] + a_off[c]) - (pb[c] + b_off[c])
                e = e + d * d if c > 0 else d * d
            err[r, u] = e
    return pinned_seam(err, q, min(ov - q, ov - 1))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _split(m, table, seed, coords, others, vertical):
    """Owner cells (lower, upper) and the upper's weight along one axis: [len(others), len(coords)] each
    (``texture._reference_region``'s ``split``): ``coords`` run across the cuts, ``others`` along them."""
    s, h, q = m[M_STEP], m[M_HALF], m[M_FEATHER]
    n_o, n_c = others.shape[0], coords.shape[0]
    lo = np.empty((n_o, n_c), np.int64)
    hi = np.empty((n_o, n_c), np.int64)
    wt = np.zeros((n_o, n_c), np.float32)
    # the cuts this region crosses, each made once: [other cores, boundary lines, s]
    o_min, k_min = others[0] // s, (coords[0] + h) // s
    n_oc, n_k = others[n_o - 1] // s - o_min + 1, (coords[n_c - 1] + h) // s - k_min + 1
    cuts = np.empty((n_oc, n_k, s), np.int64)
    made = np.zeros((n_oc, n_k), np.bool_)
    for a in range(n_o):
        o_core = others[a] // s
        for b in range(n_c):
            x = coords[b]
            core = x // s
            k = (x + h) // s  # nearest cell boundary line
            if x - k * s >= h:
                lo[a, b] = core
                hi[a, b] = core
                continue
            io, ik = o_core - o_min, k - k_min
            if not made[io, ik]:
                cuts[io, ik] = _seam(m, table, seed, vertical, o_core if vertical else k, k if vertical else o_core)
                made[io, ik] = True
            u = x - (k * s - h)  # position in the band
            lo[a, b] = k - 1
            hi[a, b] = k
            c = cuts[io, ik, others[a] - o_core * s]
            # texels p-q .. p+q-1 around the cut p cross-fade; the DP keeps p in [q, 2h - q]
            if q > 0:
                wt[a, b] = np.float32(min(max((u - c + q + 0.5) / (2 * q), 0.0), 1.0))
            else:
                wt[a, b] = np.float32(1.0 if u >= c else 0.0)
    return lo, hi, wt


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _owner_range(coords, s, h):
    """Lowest and highest owner cell ``_split`` gives ``coords`` [n] (along one axis): the core cell, and in the
    band around a boundary line k the cells k - 1 and k."""
    lo, hi = coords[0] // s, coords[0] // s
    for x in coords:
        k = (x + h) // s
        if x - k * s < h:
            lo, hi = min(lo, k - 1), max(hi, k)
        else:
            lo, hi = min(lo, x // s), max(hi, x // s)
    return lo, hi


@nb.njit(cache=True, nogil=True, error_model="numpy")
def region_detail(m, table, seed, r0, c0, hh, ww):
    """The shading-free texels [hh, ww, 3] float32 of texture-space rows [r0, r0+hh), cols [c0, c0+ww): the
    composition step of ``texture._reference_region`` (shading and the observed edge are added by the caller)."""
    s, h = m[M_STEP], m[M_HALF]
    if 4 * table[2][0] > table[0].shape[0]:  # cleared only here, a quarter full: a region's cells stay
        table[0][:] = _EMPTY
        table[2][0] = 0
    ys = np.arange(r0, r0 + hh)
    xs = np.arange(c0, c0 + ww)
    # the owner cells the region reads (as ``_split`` assigns them), made first
    rows0, rows1 = _owner_range(ys, s, h)
    cols0, cols1 = _owner_range(xs, s, h)
    _ensure_cells(m, table, seed, rows0, rows1, cols0, cols1)
    c_lo, c_hi, c_w = _split(m, table, seed, xs, ys, True)  # [H, W]: columns decided by vertical cuts
    r_lo_t, r_hi_t, r_w_t = _split(m, table, seed, ys, xs, False)  # [W, H]: rows decided by horizontal cuts
    r_lo, r_hi, r_w = r_lo_t.T.copy(), r_hi_t.T.copy(), r_w_t.T.copy()
    rmin, cmin = r_lo.min(), c_lo.min()
    nr, nc = r_hi.max() - rmin + 1, c_hi.max() - cmin + 1
    src = np.empty((nr, nc, 2), np.int64)
    off = np.empty((nr, nc, 3), np.float32)
    for a in range(nr):
        for b in range(nc):
            got = _get(table, _cell_key(rmin + a, cmin + b))
            src[a, b, 0], src[a, b, 1] = np.int64(got[0]), np.int64(got[1])
            for c in range(3):
                off[a, b, c] = np.float32(got[2 + c])
    return compose(m[M_DETAIL], src, off, rmin, cmin, r_lo, r_hi, r_w, c_lo, c_hi, c_w, r0, c0, s, h)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def gather_tiles(stack, slot, rows, cols, tile_rows, tile_cols, tile_px, level, dst, out):
    """out[dst[n]] = stack[slot[n], (rows[n] - tile_rows[n] * tile_px) >> level, (cols[n] - ...) >> level]: texels
    of mip ``level`` read from the tiles ``stack`` [G, T >> level, T >> level, 3] uint8 (one pass, no temporaries).
    rows, cols [N] int64 texture-space texels in tiles (tile_rows, tile_cols) [N]; dst [N] int64 rows of out."""
    for n in range(dst.shape[0]):
        y = (rows[n] - tile_rows[n] * tile_px) >> level
        x = (cols[n] - tile_cols[n] * tile_px) >> level
        g = slot[n]
        for c in range(3):
            out[dst[n], c] = stack[g, y, x, c]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def shade_region(detail_out, r0, c0, shading, shading_mean, decay_px, edge_weight, edge_value, origin_y, origin_x,
                 feather):
    """``TextureModel._shaded`` in one pass, in place on ``detail_out`` [H, W, 3] float32 (texture-space rows
    r0.., cols c0..): plus the shading (inside the exemplar's box as fitted; outside, its nearest box texel's
    relaxing towards ``shading_mean`` as exp(-distance / decay_px); beyond 8 decays the mean alone), then the
    observed texels faded in over the ``feather``-texel band (``edge_weight`` / ``edge_value``, the box padded by
    ``feather``). float32 throughout, as the numpy expressions it replaces."""
    hh, ww = detail_out.shape[0], detail_out.shape[1]
    h, w = shading.shape[0], shading.shape[1]
    decay = np.float32(decay_px)
    near = np.int64(1) << 62
    for i in range(hh):
        py = r0 + i - origin_y
        near = min(near, abs(py - min(max(py, 0), h - 1)))
    near_x = np.int64(1) << 62
    for j in range(ww):
        px = c0 + j - origin_x
        near_x = min(near_x, abs(px - min(max(px, 0), w - 1)))
    far = min(near, near_x) > 8.0 * decay_px
    one = np.float32(1.0)
    eh, ew = edge_weight.shape[0], edge_weight.shape[1]
    for i in range(hh):
        py = r0 + i - origin_y
        cy = min(max(py, 0), h - 1)
        for j in range(ww):
            px = c0 + j - origin_x
            cx = min(max(px, 0), w - 1)
            if far:
                for c in range(3):
                    detail_out[i, j, c] += shading_mean[c]
            else:
                dy, dx = np.float32(py - cy), np.float32(px - cx)
                keep = np.exp(-np.hypot(dy, dx) / decay) if (dy != 0 or dx != 0) else one
                for c in range(3):
                    m = shading_mean[c]
                    detail_out[i, j, c] += m + (shading[cy, cx, c] - m) * keep if keep != one else shading[cy, cx, c]
            ey, ex = py + feather, px + feather
            if 0 <= ey < eh and 0 <= ex < ew:
                wt = edge_weight[ey, ex]
                for c in range(3):
                    detail_out[i, j, c] = wt * edge_value[ey, ex, c] + (one - wt) * detail_out[i, j, c]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def far_texels(detail, rows, cols, level, origin_y, origin_x, shading, shading_mean, decay_px):
    """``TextureModel._far_texels`` before rounding, per texel in one pass: [N, 3] float32. ``detail`` [h, w, 3]
    float32 is the far-field pyramid's mip ``level``; rows, cols [N] int64 level-0 texture-space texels."""
    n_pts = rows.shape[0]
    out = np.empty((n_pts, 3), np.float32)
    dh, dw = detail.shape[0], detail.shape[1]
    sh, sw = shading.shape[0], shading.shape[1]
    half = (1 << level) // 2  # the level's texel centre, in level-0 texels
    decay = np.float32(decay_px)
    for n in range(n_pts):
        iy = ((rows[n] - origin_y) >> level) % (2 * dh)
        ix = ((cols[n] - origin_x) >> level) % (2 * dw)
        iy = 2 * dh - 1 - iy if iy >= dh else iy  # mirror repeat: no seams
        ix = 2 * dw - 1 - ix if ix >= dw else ix
        py = ((rows[n] >> level) << level) + half - origin_y
        px = ((cols[n] >> level) << level) + half - origin_x
        cy, cx = min(max(py, 0), sh - 1), min(max(px, 0), sw - 1)
        keep = np.exp(-np.float32(np.hypot(np.float64(py - cy), np.float64(px - cx))) / decay)
        for c in range(3):
            m = shading_mean[c]
            out[n, c] = detail[iy, ix, c] + (m + (shading[cy, cx, c] - m) * keep)
    return out


@nb.njit(cache=True, nogil=True)
def periodic_copy(detail, valid, shifts, out, have, shift_of):
    """In place: each texel not ``valid`` [H, W] takes ``detail`` [H, W, 3] float32 from the first of ``shifts``
    [K, 2] int64 (d_row, d_col), in their order, whose source texel lies inside and is ``valid`` into ``out``
    [H, W, 3], and that shift into ``shift_of`` [H, W, 2] int64; ``have`` [H, W] marks it. The per-texel form of
    ``texture._reference_periodic_copy`` (a numpy pass per shift over the texels still missing: hundreds of shifts
    for a 2-D lattice, ~5 ms of Python per periodic plane fitted at a world's start). Sources are read from
    ``detail`` and ``valid`` as given, so the order texels are visited in does not matter."""
    h, w = valid.shape
    for y in range(h):
        for x in range(w):
            if valid[y, x]:
                continue
            for k in range(shifts.shape[0]):
                sy, sx = y + shifts[k, 0], x + shifts[k, 1]
                if 0 <= sy < h and 0 <= sx < w and valid[sy, sx]:
                    for c in range(3):
                        out[y, x, c] = detail[sy, sx, c]
                    shift_of[y, x, 0], shift_of[y, x, 1] = shifts[k, 0], shifts[k, 1]
                    have[y, x] = True
                    break
