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
def _running_min_row(a, i, first, prev, dst):  # pragma: no cover - compiled
    """One row of a block's running minimum: ``dst`` = row ``i`` of ``a`` where the block starts (``first``), else
    its minimum with ``prev`` (the running minimum so far); a row outside ``a`` (padding) holds nothing (inf)."""
    m = dst.shape[0]
    if not 0 <= i < a.shape[0]:
        src = np.float32(np.inf)
        for j in range(m):
            dst[j] = src if first else prev[j]
    elif first:
        for j in range(m):
            dst[j] = a[i, j]
    else:
        for j in range(m):
            v = a[i, j]
            q = prev[j]
            dst[j] = v if v < q else q


@nb.njit(cache=True, nogil=True)
def _pairs_along_columns(a, lim, r, count):  # pragma: no cover - compiled
    """``count[i, j] += 1`` where a value below ``lim[i, j]`` lies among ``a[i - r .. i - 1, j]`` and one among
    ``a[i + 1 .. i + r, j]`` (rows outside ``a`` hold none). a [n, m] float32 (inf: no rendered pixel), lim [n, m]
    float64, count [n, m] uint8. Each one-sided minimum is a window of r rows: the min of a suffix and a prefix of
    blocks of r rows (van Herk / Gil-Werman), O(1) a pixel whatever r, every loop along a row. The blocks are made
    one at a time into rings of four blocks' rows (a row's test reads rows i .. i + 2r: three blocks), so that the
    minima stay in the core's cache instead of two [n + 2r, m] arrays."""
    n, m = a.shape
    p_rows = n + 2 * r  # padded rows: p = i + r
    ring = 4 * r  # ring row of padded row p: p % ring
    g = np.empty((ring, m), np.float32)  # min from the first row of p's block down to p
    hh = np.empty((ring, m), np.float32)  # min from p down to the last row of p's block
    nxt = 0  # the next row to test
    for b0 in range(0, p_rows, r):
        b1 = min(b0 + r, p_rows)  # the block's rows: b0 .. b1 - 1
        for p in range(b0, b1):  # down from the block's first row
            _running_min_row(a, p - r, p == b0, g[(p - 1) % ring], g[p % ring])
        for p in range(b1 - 1, b0 - 1, -1):  # up from the block's last row
            _running_min_row(a, p - r, p == b1 - 1, hh[(p + 1) % ring], hh[p % ring])
        while nxt < n and nxt + 2 * r <= b1 - 1:  # every row whose windows lie in the blocks made so far
            i = nxt
            # above: rows i - r .. i - 1 (padded i .. i + r - 1); below: rows i + 1 .. i + r (padded i + r + 1 ..
            # i + 2r)
            sa, sb, sc, sd = i % ring, (i + r - 1) % ring, (i + r + 1) % ring, (i + 2 * r) % ring
            for j in range(m):
                x = hh[sa, j]
                y = g[sb, j]
                up = x if x < y else y
                x = hh[sc, j]
                y = g[sd, j]
                down = x if x < y else y
                c = lim[i, j]
                count[i, j] += (up < c) & (down < c)  # branch-free: the loop stays vectorised
            nxt += 1


@nb.njit(cache=True, nogil=True)
def _see_through(depth, valid, radius_px, rel, min_gap_m, out):  # pragma: no cover - compiled
    """``out[y, x]`` = True where at least two of the four lines through (y, x) (across, down, the two diagonals)
    have a nearer rendered pixel (``depth < limit``) within ``radius_px`` on both sides; ``limit = min(z (1 -
    rel), z - min_gap_m)`` in float64, as the reference (a float32 depth compared with it as a float64). Each line
    direction is laid out as the columns of an array (the image, its transpose, its two shears), so that one pass
    (``_pairs_along_columns``) counts that direction's pairs for every pixel, on one thread, however long the
    radius (walking up to r pixels each way from every pixel cost more on a mostly rendered frame:
    docs/BENCHMARKS.md, session 15, lspeed). Every per-pixel loop is branch-free (selects, not ifs), and the
    counts add up in place (no per-direction mask, no float32 rounding of the limit): docs/BENCHMARKS.md, session
    16, lspeed2."""
    h, w = depth.shape
    r = radius_px
    inf = np.float32(np.inf)
    # per pixel: its depth where rendered (else inf: never nearer), and its limit (-inf where nothing is marked)
    v = np.empty((h, w), np.float32)
    lim = np.empty((h, w), np.float64)
    any_valid = False
    for y in range(h):
        for x in range(w):
            d = depth[y, x]
            ok = valid[y, x] and not np.isnan(d)
            z = np.float64(d)
            a = z * (1.0 - rel)
            b = z - min_gap_m
            limit = b if b < a else a  # Python's min(a, b), as the reference: a NaN product (rel 1, an infinite
            # depth) stays NaN, which no depth is below: -inf marks the same
            v[y, x] = d if ok else inf
            lim[y, x] = limit if ok and not np.isnan(limit) else -np.inf
            any_valid |= ok
    if not any_valid:
        return
    count = np.zeros((h, w), np.uint8)
    _pairs_along_columns(v, lim, r, count)  # down: the image's columns
    # the diagonals: (y, x) -> column x - y + h - 1 (down-right) and x + y (down-left) of an [h, w + h - 1] shear
    m = w + h - 1
    vs = np.empty((h, m), np.float32)
    ls = np.empty((h, m), np.float64)
    cs = np.empty((h, m), np.uint8)
    for anti in range(2):
        vs[:] = inf
        ls[:] = -np.inf
        cs[:] = 0
        for y in range(h):
            off = y if anti else h - 1 - y
            for x in range(w):
                vs[y, x + off] = v[y, x]
                ls[y, x + off] = lim[y, x]
        _pairs_along_columns(vs, ls, r, cs)
        for y in range(h):
            off = y if anti else h - 1 - y
            for x in range(w):
                count[y, x] += cs[y, x + off]
    count_t = np.zeros((w, h), np.uint8)
    _pairs_along_columns(np.ascontiguousarray(v.T), np.ascontiguousarray(lim.T), r, count_t)  # across
    for y in range(h):
        for x in range(w):
            if count[y, x] + count_t[x, y] >= 2:
                out[y, x] = True


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
