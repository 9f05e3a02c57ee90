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

import numpy as np

from spatia.world.numba_start import nb


@nb.njit(cache=True, nogil=True, inline="always")
def _shear(n, i, shear):  # pragma: no cover - compiled
    """The column of the sheared layout where row ``i`` (of ``n``) starts: the down-right diagonals (``shear`` 1)
    are the columns of rows shifted right by ``n - 1 - i``, the down-left ones (2) by ``i``; 0: no shear."""
    return 0 if shear == 0 else (n - 1 - i if shear == 1 else i)


@nb.njit(cache=True, nogil=True, inline="always")
def _fill(dst, value):  # pragma: no cover - compiled
    """``dst[:] = value`` as a plain loop (numba's slice assignment is a generic, slower loop)."""
    for j in range(dst.shape[0]):
        dst[j] = value


@nb.njit(cache=True, nogil=True, inline="always")
def _copy(src, dst):  # pragma: no cover - compiled
    """``dst[:] = src`` (same length) as a plain loop."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@nb.njit(cache=True, nogil=True, inline="always")
def _running_min_row(a, i, off, first, prev, dst):  # pragma: no cover - compiled
    """One row of a block's running minimum: ``dst`` = row ``i`` of ``a`` (placed from column ``off`` on, nothing
    (inf) either side) where the block starts (``first``), else its minimum with ``prev`` (the running minimum so
    far); a row outside ``a`` (padding) holds nothing. Every loop runs over slices from index 0, so that the
    compiler sees no index that may be negative (numba's wrap-around of one kept these loops scalar)."""
    inf = np.float32(np.inf)
    if not 0 <= i < a.shape[0]:
        if first:
            _fill(dst, inf)
        else:
            _copy(prev, dst)
        return
    w = a.shape[1]
    lo, hi = off, off + w
    src = a[i]
    mid = dst[lo:hi]
    if first:
        _fill(dst[:lo], inf)
        _copy(src, mid)
        _fill(dst[hi:], inf)
    else:
        _copy(prev[:lo], dst[:lo])  # the minimum of nothing (inf) and prev
        before = prev[lo:hi]
        for j in range(w):
            v = src[j]
            q = before[j]
            mid[j] = v if v < q else q
        _copy(prev[hi:], dst[hi:])


@nb.njit(cache=True, nogil=True)
def _pairs_along_columns(a, lim, r, count, shear, y0, y1, g, hh, last):  # pragma: no cover - compiled
    """``count[i, j] += 1`` for the rows i of ``y0 .. y1 - 1`` where a value below ``lim[i, j]`` lies among
    ``a[i - r .. i - 1, j]`` and one among ``a[i + 1 .. i + r, j]`` (rows outside ``a`` hold none), along the columns
    of ``a`` sheared by ``shear`` (``_shear``: 0, or one of the diagonals, each row shifted; the shifted layout is
    never built, its rows are read from ``a`` in place); ``last``: the count's last pass, which leaves 1 where the
    count reaches 2, else 0 (the caller's bool answer, without a pass of its own). a [n, w] float32 (inf: no
    rendered pixel), lim [n, w] float32, count [n, w] uint8 (only rows y0 .. y1 - 1 written: bands of rows run on
    threads of their own). Each one-sided minimum is a window of r rows: the min of a suffix and a prefix of blocks
    of r rows (van Herk / Gil-Werman), O(1) a pixel whatever r, every loop along a row. The blocks are made one at
    a time, from row y0 - r on, into the rings ``g`` and ``hh`` ([4r, m] float32 scratch, m the sheared layout's
    columns: w, or w + n - 1) of four blocks' rows (a row's test reads rows i .. i + 2r: three blocks), so that the
    minima stay in the core's cache. Where the blocks start does not change a minimum (exact), so neither do the
    bands."""
    n, w = a.shape
    p_end = y1 + 2 * r  # padded rows: p = i + r, those of y0 .. y1 - 1's windows are y0 .. p_end - 1
    ring = 4 * r  # ring row of padded row p: p % ring
    nxt = y0  # the next row to test
    for b0 in range(y0, p_end, r):
        b1 = min(b0 + r, p_end)  # the block's rows: b0 .. b1 - 1
        for p in range(b0, b1):  # down from the block's first row
            i = p - r
            _running_min_row(a, i, _shear(n, i, shear), p == b0, g[(p - 1) % ring], g[p % ring])
        for p in range(b1 - 1, b0 - 1, -1):  # up from the block's last row
            i = p - r
            _running_min_row(a, i, _shear(n, i, shear), p == b1 - 1, hh[(p + 1) % ring], hh[p % ring])
        while nxt < y1 and nxt + 2 * r <= b1 - 1:  # every row whose windows lie in the blocks made so far
            i = nxt
            # above: rows i - r .. i - 1 (padded i .. i + r - 1); below: rows i + 1 .. i + r (padded i + r + 1 ..
            # i + 2r)
            sa, sb, sc, sd = i % ring, (i + r - 1) % ring, (i + r + 1) % ring, (i + 2 * r) % ring
            off = _shear(n, i, shear)
            ha, gb, hc, gd = hh[sa, off:off + w], g[sb, off:off + w], hh[sc, off:off + w], g[sd, off:off + w]
            lim_row, count_row = lim[i], count[i]
            # the last pass leaves 1 where the count reaches 2 (of 4 at most), in integers (a bool result compiled
            # scalar): (count + 2) >> 2; the others add (>> 0). ``last`` is the same for the whole loop (unswitched)
            round_up, shift = (np.int32(2), np.int32(2)) if last else (np.int32(0), np.int32(0))
            for j in range(w):
                x = ha[j]
                y = gb[j]
                up = x if x < y else y
                x = hc[j]
                y = gd[j]
                down = x if x < y else y
                c = lim_row[j]
                total = np.int32(count_row[j]) + np.int32((up < c) & (down < c))  # branch-free: vectorised
                count_row[j] = np.uint8((total + round_up) >> shift)
            nxt += 1


@nb.njit(cache=True, nogil=True)
def _min_shifted(src, s, n, dst):  # pragma: no cover - compiled
    """``dst[j] = min(src[j], src[j + s])`` for j < n (the shifted operand a slice from index 0: see
    ``_running_min_row``)."""
    far = src[s:]
    for j in range(n):
        a = src[j]
        b = far[j]
        dst[j] = a if a < b else b


@nb.njit(cache=True, nogil=True)
def _pairs_across_row(v_row, lim_row, r, pad_a, pad_b, count_row):  # pragma: no cover - compiled
    """``count_row[x]`` = 1 where a value below ``lim_row[x]`` lies among ``v_row[x - r .. x - 1]`` and one among
    ``v_row[x + 1 .. x + r]`` (none outside the row), else 0: the across line of ``_see_through``, along the row
    itself. The row is padded with r infs each side (``pad_a``, ``pad_b``: [w + 2r] float32 scratch) and turned by
    doubling into the minima of windows of s = 2^k <= r cells (each step one shifted minimum, vectorised); a
    window of r cells is two such windows overlapping (a minimum minds no overlap). The minima are exact, so the
    count is the column passes' for the transposed row (the image and its limits were transposed for that)."""
    w = v_row.shape[0]
    n = w + 2 * r
    inf = np.float32(np.inf)
    _fill(pad_a[:r], inf)
    _copy(v_row, pad_a[r:r + w])
    _fill(pad_a[r + w:], inf)
    s = 1
    in_b = False  # which scratch holds the windows of s cells: src[j] = min(padded[j .. j + s - 1]), j <= n - s
    while 2 * s <= r:
        if in_b:
            _min_shifted(pad_b, s, n - 2 * s + 1, pad_a)
        else:
            _min_shifted(pad_a, s, n - 2 * s + 1, pad_b)
        in_b = not in_b
        s *= 2
    src = pad_b if in_b else pad_a
    left_a, left_b = src[0:w], src[r - s:r - s + w]  # padded cells x .. x + r - 1: x's r left neighbours
    right_a, right_b = src[r + 1:r + 1 + w], src[2 * r + 1 - s:2 * r + 1 - s + w]  # x + r + 1 .. x + 2r: right
    for x in range(w):
        a = left_a[x]
        b = left_b[x]
        left = a if a < b else b
        a = right_a[x]
        b = right_b[x]
        right = a if a < b else b
        c = lim_row[x]
        count_row[x] = (left < c) & (right < c)


@nb.njit(cache=True, nogil=True)
def _limits_across(depth, valid, r, rel, min_gap_m, y0, y1, v, lim, count):  # pragma: no cover - compiled
    """Rows ``y0 .. y1 - 1`` of ``_see_through``'s first pass: each pixel's depth where rendered (``v``, else inf:
    never nearer) and its limit (``lim``, -inf where nothing is marked), then the row's across line counted
    (``_pairs_across_row``, into ``count``). Returns the rendered pixels among those rows."""
    w = depth.shape[1]
    inf = np.float32(np.inf)
    bump = np.empty(w, np.int32)  # 1: the limit's float32 is below it, to be moved one float32 up (one row's)
    pad_a = np.empty(w + 2 * r, np.float32)
    pad_b = np.empty(w + 2 * r, np.float32)
    n_valid = 0
    for y in range(y0, y1):
        for x in range(w):
            d = depth[y, x]
            ok = valid[y, x] & (d == d)  # rendered and not NaN
            z = np.float64(d)
            a = z * (1.0 - rel)
            b = z - min_gap_m
            limit = b if b < a else a  # Python's min(a, b), as the reference: a NaN product (rel 1, an infinite
            # depth) stays NaN, which no depth is below: -inf marks the same
            # the float64 limit rounded up to a float32: for a float32 depth q, q < limit exactly when q < that
            # (no float32 lies in [limit, its round-up)), so the passes compare float32s, on half the bytes
            up = np.float32(limit)  # the nearest float32; one step up below (branch-free: np.nextafter is a call)
            bump[x] = ok & (np.float64(up) < limit)
            v[y, x] = d if ok else inf
            lim[y, x] = up if ok & (limit == limit) else -inf
            n_valid += np.int64(ok)
        # one float32 up: the next integer of its bits for a positive float (+0 included), the previous for a
        # negative one (towards zero); -0 is never moved up (the float64 limit would have rounded to +0)
        bits = lim[y].view(np.int32)
        for x in range(w):
            q = bits[x]
            bits[x] = q + bump[x] * (np.int32(1) if q >= 0 else np.int32(-1))
        _pairs_across_row(v[y], lim[y], r, pad_a, pad_b, count[y])
    return n_valid


@nb.njit(cache=True, nogil=True)
def _band_rows(h, n_bands, b):  # pragma: no cover - compiled
    """Rows ``y0, y1`` of band ``b`` of ``n_bands`` (as even as whole rows go)."""
    return b * h // n_bands, (b + 1) * h // n_bands


@nb.njit(cache=True, nogil=True)
def _see_through(depth, valid, radius_px, rel, min_gap_m, n_threads, out):  # pragma: no cover - compiled
    """``_see_through_in_bands`` in as many bands as ``n_threads`` (the caller's numba threads, passed in: a kernel
    that asks numba for them is not cached on disk) make worth it (``_see_through_bands``)."""
    _see_through_in_bands(depth, valid, radius_px, rel, min_gap_m,
                          _see_through_bands(depth.shape[0], radius_px, n_threads), out)


@nb.njit(cache=True, nogil=True, parallel=True)
def _see_through_in_bands(depth, valid, radius_px, rel, min_gap_m, n_bands, out):  # pragma: no cover - compiled
    """``out[y, x]`` = True where at least two of the four lines through (y, x) (across, down, the two diagonals)
    have a nearer rendered pixel (``depth < limit``) within ``radius_px`` on both sides; ``limit = min(z (1 -
    rel), z - min_gap_m)`` in float64, as the reference (a float32 depth compared with it as a float64). The down
    and diagonal directions are each a pass along the columns of an array (the image and its two shears, read in
    place), so that one pass (``_pairs_along_columns``) counts that direction's pairs for every pixel however
    long the radius (walking up to r pixels each way from every pixel cost more on a mostly rendered frame:
    docs/BENCHMARKS.md, session 15, lspeed); the across direction is counted row by row as each row's limits are
    made (``_limits_across``: the image and its limits were transposed for a column pass). Every per-pixel loop is
    branch-free (selects, not ifs), and the counts add up in place, in ``out`` itself (no per-direction mask):
    docs/BENCHMARKS.md, sessions 16 (lspeed2), 18 (lcost: the limit rounded up to a float32, the shears not
    copied) and 20 (sthr).

    Both passes run on ``n_bands`` bands of rows at once (the second once every band's limits are made: its
    windows read r rows past the band); a band's column passes start r rows above it, so each band beyond one
    makes 2r rows of minima twice (no more than a quarter of a band: ``_see_through_bands``). Each count is exact
    (integer counts of exact float32 comparisons), so the marks are the same bits however many bands: frames do
    not depend on the number of threads (tests/test_frame_kernel_bands.py)."""
    h, w = depth.shape
    r = radius_px
    if r < 1:
        return  # no neighbour within the radius: nothing is marked (the reference's answer)
    # per pixel: its depth where rendered (else inf: never nearer), and its limit (-inf where nothing is marked)
    v = np.empty((h, w), np.float32)
    lim = np.empty((h, w), np.float32)
    count = out.view(np.uint8)  # the pairs found so far, 0 .. 4, until the last pass leaves 0 or 1 (a bool)
    n_valid = 0
    for b in nb.prange(n_bands):
        y0, y1 = _band_rows(h, n_bands, b)
        n_valid += _limits_across(depth, valid, r, rel, min_gap_m, y0, y1, v, lim, count)
    if n_valid == 0:
        return  # (every count is 0: no limit above -inf)
    ring = 4 * r
    for b in nb.prange(n_bands):
        y0, y1 = _band_rows(h, n_bands, b)
        # the rings of running minima: the columns', then the diagonals' (the sheared layout's w + h - 1 columns)
        g, hh = np.empty((ring, w), np.float32), np.empty((ring, w), np.float32)
        _pairs_along_columns(v, lim, r, count, 0, y0, y1, g, hh, False)
        g, hh = np.empty((ring, w + h - 1), np.float32), np.empty((ring, w + h - 1), np.float32)
        _pairs_along_columns(v, lim, r, count, 1, y0, y1, g, hh, False)
        _pairs_along_columns(v, lim, r, count, 2, y0, y1, g, hh, True)


@nb.njit(cache=True, nogil=True)
def _see_through_bands(h, r, n_threads):  # pragma: no cover - compiled
    """The bands of rows ``_see_through`` splits an ``h``-row image into for ``n_threads`` threads: one per thread,
    each at least 8r rows (the 2r rows of minima a band beyond one makes again cost no more than a quarter of its
    own)."""
    return max(1, min(n_threads, h // (8 * max(r, 1))))  # (radius 0 marks nothing, in any bands)


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
    _see_through(depth, ok, int(radius_px), float(rel), float(min_gap_m), nb.get_num_threads(), out)
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
                    if valid[yy, xx] and float(depth[yy, xx]) < limit:  # in float64 (NumPy 2 would round the
                        # limit to the float32 of depth[yy, xx] first: not the compiled pass's test)
                        return True
                return False

            pairs = [nearer(dy, dx) and nearer(-dy, -dx) for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1))]
            out[y, x] = sum(pairs) >= 2
    return out
