"""Push-pull hole filling of a frame's colour: every pixel without colour takes the weighted pyramid of its
surroundings; pixels with colour are kept.

Definition (``pushpull_fill_reference``, plain numpy, is it written out):

- Push: level 0 holds premultiplied colour ``c * w`` and weight ``w`` (1 where the pixel has colour, else 0). Level
  k+1 is ``ceil(h/2) x ceil(w/2)``; each of its cells is the sum of its 2x2 block of level k divided by 4 (a block
  cut off by an odd edge has fewer cells: the missing ones count as weight 0). Down to ``min(h, w) <= 2``.
- Estimate of a level: colour ``premult / weight`` where the weight is > 0, and confidence ``min(weight, 1)``.
- Pull: the coarsest level's estimate (the mean colour of all weight where it has none) is upsampled bilinearly
  (pixel centres at half-integers, edges clamped: OpenCV's ``INTER_LINEAR``) to the next finer level, which keeps
  its own estimate in proportion to its confidence; down to level 1, then upsampled once more to full resolution
  for the holes only, rounded to uint8.

The frame path fills every frame this way (pinholes between rendered points, gaps around furniture). The former
implementation did the push and the full-resolution pull as seven full-frame OpenCV passes (casts, channel
merges, multiplies) even when a few percent of the pixels were holes; here one numba pass builds level 1 from the
uint8 frame and the mask, the last pull touches the hole pixels only, and each pull before it only the cells the
next finer pull reads (``_cells_read_by``, down from the holes). ``_pull`` / ``_pull_holes`` (every cell) and
``_push_first_plain`` are the whole-level kernels the tests compare these with bit for bit.
"""

from __future__ import annotations

import numpy as np

from spatia.world.numba_start import nb


@nb.njit(inline="always")
def _push_cell(rgb, valid, y, x, h, w, out, i, j):  # pragma: no cover - compiled
    """One cell of level 1 that an odd edge cuts (its 2x2 block partly outside the frame)."""
    r = g = b = a = 0
    for yy in range(y, min(y + 2, h)):
        for xx in range(x, min(x + 2, w)):
            k = np.int64(valid[yy, xx])
            r += k * np.int64(rgb[yy, xx, 0])
            g += k * np.int64(rgb[yy, xx, 1])
            b += k * np.int64(rgb[yy, xx, 2])
            a += k
    out[i, j, 0] = np.float64(r) * 0.25
    out[i, j, 1] = np.float64(g) * 0.25
    out[i, j, 2] = np.float64(b) * 0.25
    out[i, j, 3] = np.float64(a) * 0.25


@nb.njit(cache=True, nogil=True)
def _push_first(rgb, valid, out):  # pragma: no cover - compiled
    """Level 1 ([ceil(H/2), ceil(W/2), 4] float32: premultiplied colour, weight) from the frame and its mask. The
    sums are of uint8 values and counts, exact as integers (the same values as the definition's float64 sums, and
    a sum times 0.25 is exact in float32 too); the whole 2x2 blocks of a row pair in a branch-free int32 loop
    (``_push_first_plain`` took a branch per cell, and int64 products), the cells an odd edge cuts after it."""
    h, w = valid.shape
    quarter = np.float32(0.25)
    for i in range(out.shape[0]):
        y = 2 * i
        if y + 1 >= h:
            for j in range(out.shape[1]):
                _push_cell(rgb, valid, y, 2 * j, h, w, out, i, j)
            continue
        for j in range(w // 2):
            x = 2 * j
            k0 = np.int32(valid[y, x])
            k1 = np.int32(valid[y, x + 1])
            k2 = np.int32(valid[y + 1, x])
            k3 = np.int32(valid[y + 1, x + 1])
            r = (k0 * np.int32(rgb[y, x, 0]) + k1 * np.int32(rgb[y, x + 1, 0]) + k2 * np.int32(rgb[y + 1, x, 0])
                 + k3 * np.int32(rgb[y + 1, x + 1, 0]))
            g = (k0 * np.int32(rgb[y, x, 1]) + k1 * np.int32(rgb[y, x + 1, 1]) + k2 * np.int32(rgb[y + 1, x, 1])
                 + k3 * np.int32(rgb[y + 1, x + 1, 1]))
            b = (k0 * np.int32(rgb[y, x, 2]) + k1 * np.int32(rgb[y, x + 1, 2]) + k2 * np.int32(rgb[y + 1, x, 2])
                 + k3 * np.int32(rgb[y + 1, x + 1, 2]))
            out[i, j, 0] = np.float32(r) * quarter
            out[i, j, 1] = np.float32(g) * quarter
            out[i, j, 2] = np.float32(b) * quarter
            out[i, j, 3] = np.float32(k0 + k1 + k2 + k3) * quarter
        if w % 2:
            _push_cell(rgb, valid, y, w - 1, h, w, out, i, w // 2)


@nb.njit(cache=True, nogil=True)
def _push(level, out):  # pragma: no cover - compiled
    """Level k+1 from level k: each cell the float64 sum of its 2x2 block (row by row, as the definition's loop
    adds them) over 4; whole blocks take a straight-line body."""
    h, w = level.shape[:2]
    for i in range(out.shape[0]):
        y = 2 * i
        whole_rows = y + 1 < h
        for j in range(out.shape[1]):
            x = 2 * j
            if whole_rows and x + 1 < w:
                for c in range(4):
                    t = np.float64(level[y, x, c]) + np.float64(level[y, x + 1, c])
                    t += np.float64(level[y + 1, x, c])
                    t += np.float64(level[y + 1, x + 1, c])
                    out[i, j, c] = t * 0.25
                continue
            for c in range(4):
                t = 0.0
                for yy in range(y, min(y + 2, h)):
                    for xx in range(x, min(x + 2, w)):
                        t += level[yy, xx, c]
                out[i, j, c] = t * 0.25


@nb.njit(cache=True, nogil=True)
def _tap(n_src, n_dst, k):  # pragma: no cover - compiled
    """Bilinear source index and weight of destination index ``k`` (OpenCV INTER_LINEAR, clamped edges)."""
    s = (k + 0.5) * (n_src / n_dst) - 0.5
    i0 = int(np.floor(s))
    f = s - i0
    if i0 < 0:
        return 0, 0, 0.0
    if i0 >= n_src - 1:
        return n_src - 1, n_src - 1, 0.0
    return i0, i0 + 1, f


@nb.njit(cache=True, nogil=True)
def _taps(n_src, n_dst):  # pragma: no cover - compiled
    """``_tap`` of every destination index: (i0, i1, f) arrays."""
    i0 = np.empty(n_dst, np.int64)
    i1 = np.empty(n_dst, np.int64)
    f = np.empty(n_dst, np.float64)
    for k in range(n_dst):
        i0[k], i1[k], f[k] = _tap(n_src, n_dst, k)
    return i0, i1, f


@nb.njit(inline="always")
def _upsampled(coarse, y0, y1, fy, x0, x1, fx, c):  # pragma: no cover - compiled
    """Channel ``c`` of ``coarse`` [h, w, 3] at one finer cell, bilinearly from its taps (``_taps``)."""
    top = coarse[y0, x0, c] + fx * (coarse[y0, x1, c] - coarse[y0, x0, c])
    bot = coarse[y1, x0, c] + fx * (coarse[y1, x1, c] - coarse[y1, x0, c])
    return top + fy * (bot - top)


@nb.njit(inline="always")
def _pull_cell(coarse, level, out, i, j, y0, y1, fy, x0, x1, fx):  # pragma: no cover - compiled
    """One cell of a pull: the upsampled colour blended towards ``level``'s own estimate by its confidence."""
    a = level[i, j, 3]
    conf = min(a, 1.0)
    for c in range(3):
        up = _upsampled(coarse, y0, y1, fy, x0, x1, fx, c)
        own = level[i, j, c] / a if a > 0.0 else 0.0
        out[i, j, c] = up + conf * (own - up)


@nb.njit(inline="always")
def _pull_hole_pixel(coarse, out, i, j, y0, y1, fy, x0, x1, fx):  # pragma: no cover - compiled
    """One full-resolution hole pixel: the upsampled colour rounded to uint8."""
    for c in range(3):
        v = np.floor(_upsampled(coarse, y0, y1, fy, x0, x1, fx, c) + 0.5)
        out[i, j, c] = 0 if v < 0 else (255 if v > 255 else np.uint8(v))


@nb.njit(cache=True, nogil=True)
def _pull(coarse, level, out):  # pragma: no cover - compiled
    """``out`` = upsampled ``coarse`` colour, blended towards ``level``'s own estimate by its confidence, at every
    cell (the whole-level pull ``_pull_cells`` is compared with)."""
    hs, ws = coarse.shape[:2]
    hd, wd = level.shape[:2]
    x0s, x1s, fxs = _taps(ws, wd)
    for i in range(hd):
        y0, y1, fy = _tap(hs, hd, i)
        for j in range(wd):
            _pull_cell(coarse, level, out, i, j, y0, y1, fy, x0s[j], x1s[j], fxs[j])


@nb.njit(cache=True, nogil=True)
def _pull_holes(coarse, valid, out):  # pragma: no cover - compiled
    """Full resolution: the holes of ``out`` (uint8, valid pixels already in place) from ``coarse`` [h, w, 3]."""
    hs, ws = coarse.shape[:2]
    hd, wd = valid.shape
    x0s, x1s, fxs = _taps(ws, wd)
    for i in range(hd):
        y0, y1, fy = _tap(hs, hd, i)
        for j in range(wd):
            if not valid[i, j]:
                _pull_hole_pixel(coarse, out, i, j, y0, y1, fy, x0s[j], x1s[j], fxs[j])


@nb.njit(cache=True, nogil=True)
def _cells_read_by(cells, hd, wd, hs, ws):  # pragma: no cover - compiled
    """The cells (flat indices, each once) of a level [hs, ws] whose colour the bilinear taps of ``cells`` (flat
    indices into the finer [hd, wd]) read: what a pull of the finer level at those cells needs, and no more."""
    seen = np.zeros(hs * ws, np.bool_)
    out = np.empty(4 * cells.shape[0], np.int64)
    n = 0
    y0s, y1s, _ = _taps(hs, hd)
    x0s, x1s, _ = _taps(ws, wd)
    for idx in cells:
        i, j = idx // wd, idx % wd
        for y in (y0s[i], y1s[i]):
            for x in (x0s[j], x1s[j]):
                f = y * ws + x
                if not seen[f]:
                    seen[f] = True
                    out[n] = f
                    n += 1
    return out[:n]


@nb.njit(cache=True, nogil=True)
def _pull_cells(coarse, level, out, cells):  # pragma: no cover - compiled
    """``_pull`` at the cells ``cells`` (flat indices into ``level``) only: each the same expression."""
    hs, ws = coarse.shape[:2]
    hd, wd = level.shape[:2]
    y0s, y1s, fys = _taps(hs, hd)
    x0s, x1s, fxs = _taps(ws, wd)
    for idx in cells:
        i, j = idx // wd, idx % wd
        _pull_cell(coarse, level, out, i, j, y0s[i], y1s[i], fys[i], x0s[j], x1s[j], fxs[j])


@nb.njit(cache=True, nogil=True)
def _pull_hole_pixels(coarse, holes, out):  # pragma: no cover - compiled
    """``_pull_holes`` at the pixels ``holes`` (flat indices, the frame's holes) only: each the same expression."""
    hs, ws = coarse.shape[:2]
    hd, wd = out.shape[:2]
    y0s, y1s, fys = _taps(hs, hd)
    x0s, x1s, fxs = _taps(ws, wd)
    for idx in holes:
        i, j = idx // wd, idx % wd
        _pull_hole_pixel(coarse, out, i, j, y0s[i], y1s[i], fys[i], x0s[j], x1s[j], fxs[j])


def _half(n: int) -> int:
    return (n + 1) // 2


def pushpull_fill(
    rgb: np.ndarray,  # [H, W, 3] uint8
    valid: np.ndarray,  # [H, W] bool, where ``rgb`` holds colour
) -> np.ndarray:
    """``[H, W, 3]`` uint8: ``rgb`` where ``valid``, the push-pull fill elsewhere (module docstring)."""
    if valid.all():
        return rgb
    if not valid.any():
        return np.zeros_like(rgb)
    rgb = np.ascontiguousarray(rgb, np.uint8)
    valid = np.ascontiguousarray(valid, np.bool_)
    H, W = valid.shape
    levels = [np.empty((_half(H), _half(W), 4), np.float32)]
    _push_first(rgb, valid, levels[0])
    while min(levels[-1].shape[:2]) > 2:
        lv = levels[-1]
        nxt = np.empty((_half(lv.shape[0]), _half(lv.shape[1]), 4), np.float32)
        _push(lv, nxt)
        levels.append(nxt)
    # each level is pulled only at the cells the next finer pull reads, down from the holes (a few percent of a
    # served frame); the coarsest level's estimate is whole (a handful of cells)
    holes = np.flatnonzero(~valid)
    needed = []
    cells, shape = holes, (H, W)
    for lv in levels[:-1]:
        cells = _cells_read_by(cells, shape[0], shape[1], lv.shape[0], lv.shape[1])
        needed.append(cells)
        shape = lv.shape[:2]
    filled = _top_estimate(levels[-1])
    for k in range(len(levels) - 2, -1, -1):
        lv = levels[k]
        out = np.empty((lv.shape[0], lv.shape[1], 3), np.float32)
        _pull_cells(filled, lv, out, needed[k])
        filled = out
    out = rgb.copy()
    _pull_hole_pixels(filled, holes, out)
    return out


def _top_estimate(top: np.ndarray) -> np.ndarray:
    """The coarsest level's colour: its own estimate where it has weight, the weighted mean colour elsewhere."""
    a = top[..., 3:4]
    mean = top[..., :3].sum(axis=(0, 1)) / max(float(top[..., 3].sum()), 1e-8)
    return np.where(a > 0, top[..., :3] / np.maximum(a, 1e-8), mean).astype(np.float32)


# ---- the definition, written out (tests compare ``pushpull_fill`` with it) ------------------------------------


@nb.njit(cache=True, nogil=True)
def _push_first_plain(rgb, valid, out):  # pragma: no cover - compiled
    """``_push_first`` as it was (tests compare them): level 1 ([ceil(H/2), ceil(W/2), 4] float32: premultiplied colour, weight) from the frame and its mask. The
    sums are of uint8 values and counts, exact as integers (the same values as the definition's float64 sums),
    without a branch per pixel; whole 2x2 blocks take a straight-line body (the cells an odd edge cuts, the loop)."""
    h, w = valid.shape
    for i in range(out.shape[0]):
        y = 2 * i
        whole_rows = y + 1 < h
        for j in range(out.shape[1]):
            x = 2 * j
            if whole_rows and x + 1 < w:
                k0 = np.int64(valid[y, x])
                k1 = np.int64(valid[y, x + 1])
                k2 = np.int64(valid[y + 1, x])
                k3 = np.int64(valid[y + 1, x + 1])
                for c in range(3):
                    t = (k0 * np.int64(rgb[y, x, c]) + k1 * np.int64(rgb[y, x + 1, c])
                         + k2 * np.int64(rgb[y + 1, x, c]) + k3 * np.int64(rgb[y + 1, x + 1, c]))
                    out[i, j, c] = np.float64(t) * 0.25
                out[i, j, 3] = np.float64(k0 + k1 + k2 + k3) * 0.25
                continue
            r = g = b = a = 0
            for yy in range(y, min(y + 2, h)):
                for xx in range(x, min(x + 2, w)):
                    k = np.int64(valid[yy, xx])
                    r += k * np.int64(rgb[yy, xx, 0])
                    g += k * np.int64(rgb[yy, xx, 1])
                    b += k * np.int64(rgb[yy, xx, 2])
                    a += k
            out[i, j, 0] = np.float64(r) * 0.25
            out[i, j, 1] = np.float64(g) * 0.25
            out[i, j, 2] = np.float64(b) * 0.25
            out[i, j, 3] = np.float64(a) * 0.25


def _push_reference(level: np.ndarray) -> np.ndarray:
    h, w = level.shape[:2]
    padded = np.zeros((2 * _half(h), 2 * _half(w), level.shape[2]), np.float64)
    padded[:h, :w] = level
    return (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2]) / 4.0


def _upsample_reference(img: np.ndarray, hd: int, wd: int) -> np.ndarray:
    hs, ws = img.shape[:2]

    def taps(n_src: int, n_dst: int):
        s = (np.arange(n_dst) + 0.5) * (n_src / n_dst) - 0.5
        i0 = np.floor(s).astype(int)
        f = s - i0
        low, high = i0 < 0, i0 >= n_src - 1
        i0 = np.where(low, 0, np.where(high, n_src - 1, i0))
        f = np.where(low | high, 0.0, f)
        return i0, np.where(high | low, i0, i0 + 1), f

    y0, y1, fy = taps(hs, hd)
    x0, x1, fx = taps(ws, wd)
    top = img[y0][:, x0] + fx[None, :, None] * (img[y0][:, x1] - img[y0][:, x0])
    bot = img[y1][:, x0] + fx[None, :, None] * (img[y1][:, x1] - img[y1][:, x0])
    return top + fy[:, None, None] * (bot - top)


def pushpull_fill_reference(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The definition in plain numpy (float64): slow, obviously the module docstring."""
    if valid.all():
        return rgb
    if not valid.any():
        return np.zeros_like(rgb)
    w = valid.astype(np.float64)
    level = np.concatenate([rgb.astype(np.float64) * w[..., None], w[..., None]], axis=2)
    levels = []
    while True:
        level = _push_reference(level)
        levels.append(level)
        if min(level.shape[:2]) <= 2:
            break

    def estimate(lv):
        a = lv[..., 3:4]
        return np.where(a > 0, lv[..., :3] / np.where(a > 0, a, 1.0), 0.0), np.minimum(a, 1.0)

    own, a = estimate(levels[-1])
    mean = levels[-1][..., :3].sum(axis=(0, 1)) / max(float(levels[-1][..., 3].sum()), 1e-8)
    filled = np.where(a > 0, own, mean)
    for lv in reversed(levels[:-1]):
        up = _upsample_reference(filled, *lv.shape[:2])
        own, a = estimate(lv)
        filled = up + a * (own - up)
    up = _upsample_reference(filled, *valid.shape)
    out = np.clip(np.floor(up + 0.5), 0, 255).astype(np.uint8)
    out[valid] = rgb[valid]
    return out
