"""Forward warping of an RGB-D frame into another camera (z-buffered), with a slow reference.

The geometric generator warps retrieved reference frames (which keep the full image resolution) into the target
view: the memory is voxelized at ``d`` (1 cm), a reference frame is not, so where a reference sees the target's
surface it gives the sharper colour. Pixel centres are at +0.5, as in ``world.geometry``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError
from spatia.world.geometry import depth_to_world_points
from spatia.world.numba_start import numba

MAX_SPLAT_PX = 3  # a source pixel covers at most 3x3 target pixels (when the target is closer)
# The warp kernels divide before they test (the branch-free projection of a whole row, the corners of a block):
# a zero divisor (an unknown pixel's depth with the target at the source's centre, fx 0) must give inf / NaN and
# fail the tests after it, not raise ZeroDivisionError (numba's default "python" error model).
_NO_RAISE = "numpy"


@dataclass
class WarpResult:
    rgb: np.ndarray  # [H, W, 3] uint8, zero where invalid
    depth_m: np.ndarray  # [H, W] float32 z-depth in the target camera, 0 where invalid
    valid: np.ndarray  # [H, W] bool


def _check(rgb: np.ndarray, depth_m: np.ndarray, src: Intrinsics) -> None:
    if rgb.shape != (src.height, src.width, 3) or rgb.dtype != np.uint8:
        raise InvalidInputError(f"rgb must be uint8 [{src.height}, {src.width}, 3], got {rgb.dtype} {rgb.shape}")
    if depth_m.shape != (src.height, src.width):
        raise InvalidInputError(f"depth must be [{src.height}, {src.width}], got {depth_m.shape}")


def _footprint_px(z_src: np.ndarray, z_dst: np.ndarray, src: Intrinsics, dst: Intrinsics) -> np.ndarray:
    """Side of the square a source pixel covers in the target: its projected size, rounded up, clamped 1..MAX."""
    scale = (dst.fx / src.fx) * z_src / np.maximum(z_dst, 1e-9)
    return np.clip(np.ceil(scale - 1e-6), 1, MAX_SPLAT_PX).astype(np.int64)


def _project_source(rgb, depth_m, src, c2w_src, dst, c2w_dst):
    pts, idx = depth_to_world_points(depth_m, src, c2w_src)
    R = c2w_dst[:3, :3].T
    pc = (pts - c2w_dst[:3, 3]) @ R.T
    z = pc[:, 2]
    front = z > 1e-6
    pc, z, idx = pc[front], z[front], idx[front]
    u = dst.fx * pc[:, 0] / z + dst.cx
    v = dst.fy * pc[:, 1] / z + dst.cy
    colors = rgb.reshape(-1, 3)[idx]
    size = _footprint_px(depth_m.reshape(-1)[idx], z, src, dst)
    return u, v, z.astype(np.float32), colors, size


@numba.njit(inline="always")
def _warp_span(rgb, depth, y, x_lo, x_hi, col, row, k, R, t, d_fx, d_fy, d_cx, d_cy, r_lo, r_hi, mask, o_depth,
               o_rgb, o_claim, U, V, Z, S):  # pragma: no cover
    """Warp source pixels ``[x_lo, x_hi)`` of row ``y`` into the z-buffer ``o_depth`` / ``o_rgb`` (0 = empty), its
    rows ``[r_lo, r_hi)`` only, and only where ``mask`` (empty: everywhere; else each pixel written is set in
    ``o_claim``, a claim fused into the splat). ``col`` [w] / ``row``: the source
    pixel's ray, ``(x + 0.5 - cx) / fx`` (the same float64 as written per pixel); ``k``: ``d_fx / s_fx``.

    Two passes: the projection of the whole span first, branch-free into the scratch ``U`` / ``V`` (splat corner),
    ``Z`` (target depth, 0 = skipped), ``S`` (splat side), which the compiler vectorises (its divisions were most
    of the per-pixel cost); then the splats, nearest depth wins, ties to the later pixel. Every value is the same
    float64 expression the one-pass loop computed (``warp_rgbd_reference`` defines the result)."""
    H, W = o_depth.shape
    every = mask.shape[0] == 0
    for x in range(x_lo, x_hi):
        z_s = np.float64(depth[y, x])
        px = col[x] * z_s
        py = row * z_s
        qx = R[0, 0] * px + R[0, 1] * py + R[0, 2] * z_s + t[0]
        qy = R[1, 0] * px + R[1, 1] * py + R[1, 2] * z_s + t[1]
        qz = R[2, 0] * px + R[2, 1] * py + R[2, 2] * z_s + t[2]
        u = d_fx * qx / qz + d_cx
        v = d_fy * qy / qz + d_cy
        s = min(max(np.ceil(k * z_s / max(qz, 1e-9) - 1e-6), 1.0), np.float64(MAX_SPLAT_PX))
        U[x] = np.floor(u - 0.5 * s + 0.5)
        V[x] = np.floor(v - 0.5 * s + 0.5)
        S[x] = s
        # 0 = unknown and non-finite depths skipped (NaN compares false), behind the camera, or off any sane image
        keep = (z_s > 0.0) & (z_s < np.inf) & (qz > 1e-6) & (abs(u) <= 1e7) & (abs(v) <= 1e7)
        Z[x] = qz if keep else 0.0
    for x in range(x_lo, x_hi):
        if Z[x] == 0.0:
            continue
        zf = np.float32(Z[x])
        s = int(S[x])
        x0 = int(U[x])
        y0 = int(V[x])
        for yy in range(max(y0, r_lo), min(y0 + s, r_hi)):
            for xx in range(max(x0, 0), min(x0 + s, W)):
                if (every or mask[yy, xx]) and (o_depth[yy, xx] == 0.0 or zf <= o_depth[yy, xx]):
                    o_depth[yy, xx] = zf  # ties: the later pixel wins
                    o_rgb[yy, xx, 0] = rgb[y, x, 0]
                    o_rgb[yy, xx, 1] = rgb[y, x, 1]
                    o_rgb[yy, xx, 2] = rgb[y, x, 2]
                    if not every:
                        o_claim[yy, xx] = True


@numba.njit(inline="always")
def _rays(n, c, f):  # pragma: no cover
    """``(i + 0.5 - c) / f`` for ``i`` in ``range(n)``: a pixel centre's ray coordinate at depth 1."""
    out = np.empty(n, np.float64)
    for i in range(n):
        out[i] = (i + 0.5 - c) / f
    return out


@numba.njit(inline="always")
def _warp_rows(rgb, depth, y_lo, y_hi, s_fx, s_fy, s_cx, s_cy, R, t, d_fx, d_fy, d_cx, d_cy, o_depth, o_rgb):  # pragma: no cover
    """Warp source rows ``[y_lo, y_hi)`` into the z-buffer ``o_depth`` / ``o_rgb`` (0 = empty): per source pixel,
    unproject (pixel centre + 0.5), move into the target camera (R, t: source camera -> target camera), project,
    splat a square of the projected size; nearest depth wins, ties to the later pixel (``_warp_span``)."""
    w = depth.shape[1]
    col = _rays(w, s_cx, s_fx)
    rows = _rays(depth.shape[0], s_cy, s_fy)
    U, V, Z, S = np.empty(w), np.empty(w), np.empty(w), np.empty(w)
    everywhere = np.zeros((0, 0), np.bool_)
    for y in range(y_lo, y_hi):
        _warp_span(rgb, depth, y, 0, w, col, rows[y], d_fx / s_fx, R, t, d_fx, d_fy, d_cx, d_cy, 0,
                   o_depth.shape[0], everywhere, o_depth, o_rgb, everywhere, U, V, Z, S)


@numba.njit(cache=True, nogil=True, error_model=_NO_RAISE, parallel=True)
def _warp_kernel(rgb, depth, s_fx, s_fy, s_cx, s_cy, R, t, d_fx, d_fy, d_cx, d_cy, out_rgb, out_depth, n_chunks):  # pragma: no cover
    """``_warp_rows`` over all source rows, split into ``n_chunks`` bands warped in parallel, each into its own
    z-buffer; the merge takes the nearest depth per pixel and, on a tie, the later band, so the result is exactly
    the serial one (``_warp_serial``)."""
    h = depth.shape[0]
    H, W = out_depth.shape
    band_depth = np.zeros((n_chunks, H, W), np.float32)
    band_rgb = np.zeros((n_chunks, H, W, 3), np.uint8)
    for c in numba.prange(n_chunks):
        _warp_rows(rgb, depth, c * h // n_chunks, (c + 1) * h // n_chunks, s_fx, s_fy, s_cx, s_cy, R, t, d_fx, d_fy,
                   d_cx, d_cy, band_depth[c], band_rgb[c])
    for yy in numba.prange(H):
        for xx in range(W):
            best = np.float32(0.0)
            band = -1
            for c in range(n_chunks):
                d = band_depth[c, yy, xx]
                if d > 0.0 and (band < 0 or d <= best):  # a later band wins ties, as a later pixel does
                    best = d
                    band = c
            if band >= 0:
                out_depth[yy, xx] = best
                out_rgb[yy, xx, 0] = band_rgb[band, yy, xx, 0]
                out_rgb[yy, xx, 1] = band_rgb[band, yy, xx, 1]
                out_rgb[yy, xx, 2] = band_rgb[band, yy, xx, 2]


@numba.njit(cache=True, nogil=True, error_model=_NO_RAISE)
def _warp_serial(rgb, depth, s_fx, s_fy, s_cx, s_cy, R, t, d_fx, d_fy, d_cx, d_cy, out_rgb, out_depth):  # pragma: no cover
    """One thread: straight into the (zeroed) outputs, no band buffers, no merge pass, no parallel launch (the
    lock-step server and the gym env run numba single-threaded; the merge of one band copied every pixel)."""
    _warp_rows(rgb, depth, 0, depth.shape[0], s_fx, s_fy, s_cx, s_cy, R, t, d_fx, d_fy, d_cx, d_cy, out_depth, out_rgb)


CULL_BLOCK_PX = 8  # source pixels per side of a block that ``warp_claim`` keeps or culls whole
_scratch = threading.local()  # ``warp_claim``'s summed-area table and z-buffer, per frame thread (one size kept)


@numba.njit(inline="always")
def _corner_uvq(a, b, z, R, t, d_fx, d_fy, d_cx, d_cy):  # pragma: no cover
    """Target pixel coordinates and depth of the source camera point ``(a z, b z, z)``."""
    px = a * z
    py = b * z
    qx = R[0, 0] * px + R[0, 1] * py + R[0, 2] * z + t[0]
    qy = R[1, 0] * px + R[1, 1] * py + R[1, 2] * z + t[1]
    qz = R[2, 0] * px + R[2, 1] * py + R[2, 2] * z + t[2]
    return d_fx * qx / qz + d_cx, d_fy * qy / qz + d_cy, qz


_INF_BITS = 0x7F800000  # float32 +inf as int32: the bit patterns of the positive finite floats lie in (0, this)


@numba.njit(inline="always")
def _depth_ranges(bits, y_lo, y_hi, block, lo, hi, lo_f, hi_f):  # pragma: no cover
    """Per source block of rows ``[y_lo, y_hi)``: the least and greatest known depth (0 = none known) into
    ``lo_f`` / ``hi_f`` [blocks] float32. ``bits``: the depth map as int32, whose comparisons order positive
    finite floats as the floats do and single out 0, negatives, NaN and inf with two integer tests (the float
    min / max with NaN rules did not vectorise). ``lo`` / ``hi`` [w] int32: scratch (per column first)."""
    w = bits.shape[1]
    for x in range(w):
        lo[x] = _INF_BITS
        hi[x] = 0
    for y in range(y_lo, y_hi):
        for x in range(w):
            b = bits[y, x]
            known = (b > 0) & (b < _INF_BITS)
            lo[x] = min(lo[x], b if known else np.int32(_INF_BITS))
            hi[x] = max(hi[x], b if known else np.int32(0))
    lo_b = lo_f.view(np.int32)
    hi_b = hi_f.view(np.int32)
    for j in range(lo_f.shape[0]):
        a = np.int32(_INF_BITS)
        z = np.int32(0)
        for x in range(j * block, min(j * block + block, w)):
            a = min(a, lo[x])
            z = max(z, hi[x])
        lo_b[j] = a  # (+inf where none is known)
        hi_b[j] = z


@numba.njit(inline="always")
def _block_reach(z_lo, z_hi, y_lo, y_hi, x_lo, x_hi, col, rows, R, t, d_fx, d_fy, d_cx, d_cy, H, W):  # pragma: no cover
    """Target rows ``[r0, r1)`` x columns ``[c0, c1)`` that the splats of source block ``[y_lo, y_hi) x [x_lo,
    x_hi)``, its known depths in ``[z_lo, z_hi]`` (``z_hi`` 0: none), can touch: empty when it has no known depth,
    the whole target when no bound is sure.

    The block's points lie in the frustum slab of its pixel rays between its nearest and farthest depth, a convex
    set whose 8 corners bound it; where all of it is in front of the target camera, the projection maps it onto
    the convex hull of the corners' projections (a projective map keeps lines), so their bounding box holds every
    pixel's splat centre. A splat of side 1-3 (``MAX_SPLAT_PX``) centred at ``u`` covers columns ``floor(u) - 1``
    to ``floor(u) + 1`` at most (rows alike); one more pixel each side covers rounding, which is orders of
    magnitude below it, guarded by asking the slab's nearest target depth to be far from a cancellation (1e-6 of
    the terms' magnitude) and the box to be inside a million pixels."""
    if not (z_hi > 0.0):
        return 0, 0, 0, 0
    a_abs = max(abs(col[x_lo]), abs(col[x_hi - 1]))
    b_abs = max(abs(rows[y_lo]), abs(rows[y_hi - 1]))
    t_abs = max(abs(t[0]), max(abs(t[1]), abs(t[2])))
    magnitude = z_hi * (a_abs + b_abs + 1.0) + t_abs
    u_lo = v_lo = np.inf
    u_hi = v_hi = -np.inf
    q_lo = np.inf
    for a in (col[x_lo], col[x_hi - 1]):
        for b in (rows[y_lo], rows[y_hi - 1]):
            for z in (z_lo, z_hi):
                u, v, q = _corner_uvq(a, b, z, R, t, d_fx, d_fy, d_cx, d_cy)
                u_lo = min(u_lo, u)
                u_hi = max(u_hi, u)
                v_lo = min(v_lo, v)
                v_hi = max(v_hi, v)
                q_lo = min(q_lo, q)
    sure = (q_lo > 1e-6 * magnitude) & (magnitude < 1e30)
    sure = sure & (abs(u_lo) < 1e6) & (abs(u_hi) < 1e6) & (abs(v_lo) < 1e6) & (abs(v_hi) < 1e6)
    if not sure:  # (NaN fails every comparison above)
        return 0, H, 0, W
    r0 = min(max(int(np.floor(v_lo)) - 2, 0), H)
    r1 = min(max(int(np.floor(v_hi)) + 3, 0), H)
    c0 = min(max(int(np.floor(u_lo)) - 2, 0), W)
    c1 = min(max(int(np.floor(u_hi)) + 3, 0), W)
    return r0, r1, c0, c1


@numba.njit(cache=True, nogil=True, error_model=_NO_RAISE, parallel=True)
def _warp_claim_kernel(rgb, depth, s_fx, s_fy, s_cx, s_cy, R, t, d_fx, d_fy, d_cx, d_cy, mask, out_rgb, claimed,
                       n_chunks, block, area, o_depth):  # pragma: no cover
    """``_warp_rows`` restricted to the target pixels of ``mask`` ([H, W] bool, not empty), with the claim fused:
    where a source pixel lands on a ``mask`` pixel the nearest one's colour goes straight into ``out_rgb`` and
    the pixel is ``claimed``. Equal to ``warp_rgbd`` + ``claim_warped`` with ``allowed`` = ``mask`` (the values
    elsewhere are never read).

    A mask pixel's value depends only on the source pixels whose splat covers it, so the source blocks
    (``block`` pixels a side) whose reach (``_block_reach``) holds no mask pixel (a summed-area table answers)
    are neither projected nor splatted: a far reference fills the memory's holes, a tenth of the view. In
    parallel each of ``n_chunks`` threads owns a band of target rows (split by mask count) and warps, in source
    order, the blocks that reach its band: no per-thread buffers, no merge, the serial result.

    ``area`` [H + 1, W + 1] int32 and ``o_depth`` [H, W] float32: scratch, any content (the summed-area table is
    written whole, the z-buffer zeroed): a caller keeps them between calls, where fresh ones cost a page fault per
    4 KiB touched."""
    h, w = depth.shape
    H, W = mask.shape
    col = _rays(w, s_cx, s_fx)
    rows = _rays(h, s_cy, s_fy)
    for xx in range(W + 1):  # area[r, c]: mask pixels in rows < r, columns < c
        area[0, xx] = 0
    for yy in range(H):
        area[yy + 1, 0] = 0
        run = 0
        for xx in range(W):
            run += mask[yy, xx]
            area[yy + 1, xx + 1] = area[yy, xx + 1] + run
    o_depth[:] = 0.0
    n_by = (h + block - 1) // block
    n_bx = (w + block - 1) // block
    reach = np.empty((n_by, n_bx, 4), np.int64)
    bits = depth.view(np.int32)
    for by in numba.prange(n_by):
        y_lo, y_hi = by * block, min(by * block + block, h)
        lo, hi = np.empty(w, np.int32), np.empty(w, np.int32)
        z_lo, z_hi = np.empty(n_bx, np.float32), np.empty(n_bx, np.float32)
        _depth_ranges(bits, y_lo, y_hi, block, lo, hi, z_lo, z_hi)
        for bx in range(n_bx):
            r0, r1, c0, c1 = _block_reach(np.float64(z_lo[bx]), np.float64(z_hi[bx]), y_lo, y_hi, bx * block,
                                          min(bx * block + block, w), col, rows, R, t, d_fx, d_fy, d_cx, d_cy, H, W)
            reach[by, bx, 0] = r0
            reach[by, bx, 1] = r1
            reach[by, bx, 2] = c0
            reach[by, bx, 3] = c1
    total = area[H, W]
    bands = np.empty(n_chunks + 1, np.int64)  # target row bounds, about equal mask pixels each
    bands[0] = 0
    bands[n_chunks] = H
    r = 0
    for c in range(1, n_chunks):
        while r < H and area[r, W] * n_chunks < c * total:
            r += 1
        bands[c] = r
    k = d_fx / s_fx
    for c in numba.prange(n_chunks):
        b_lo, b_hi = bands[c], bands[c + 1]
        U, V, Z, S = np.empty(w), np.empty(w), np.empty(w), np.empty(w)
        keep = np.empty(n_bx, np.bool_)
        for by in range(n_by):
            for bx in range(n_bx):
                r0 = max(reach[by, bx, 0], b_lo)
                r1 = min(reach[by, bx, 1], b_hi)
                c0, c1 = reach[by, bx, 2], reach[by, bx, 3]
                keep[bx] = (r0 < r1 and c0 < c1
                            and area[r1, c1] - area[r0, c1] - area[r1, c0] + area[r0, c0] > 0)
            for y in range(by * block, min(by * block + block, h)):
                bx = 0
                while bx < n_bx:  # runs of kept blocks, one span each
                    if not keep[bx]:
                        bx += 1
                        continue
                    end = bx
                    while end < n_bx and keep[end]:
                        end += 1
                    _warp_span(rgb, depth, y, bx * block, min(end * block, w), col, rows[y], k, R, t, d_fx, d_fy,
                               d_cx, d_cy, b_lo, b_hi, mask, o_depth, out_rgb, claimed, U, V, Z, S)
                    bx = end


@numba.njit(cache=True, nogil=True)
def claim_warped(rgb, claimed, w_rgb, w_depth, allowed):  # pragma: no cover
    """Where the warp landed (``w_depth`` > 0), no earlier reference claimed the pixel and ``allowed``: copy the
    warped colour into ``rgb`` [H, W, 3] and claim the pixel (``claimed`` [H, W] bool, in place). One pass for
    what took a mask, a masked ``copyto`` and an or (``_reference_claim_warped``)."""
    H, W = w_depth.shape
    for y in range(H):
        for x in range(W):
            if w_depth[y, x] > 0.0 and not claimed[y, x] and allowed[y, x]:
                rgb[y, x, 0] = w_rgb[y, x, 0]
                rgb[y, x, 1] = w_rgb[y, x, 1]
                rgb[y, x, 2] = w_rgb[y, x, 2]
                claimed[y, x] = True


def _reference_claim_warped(rgb, claimed, w_rgb, w_depth, allowed) -> None:
    """``claim_warped`` in numpy (the generator's code before the kernel)."""
    take = (w_depth > 0) & ~claimed & allowed
    np.copyto(rgb, w_rgb, where=take[..., None])
    claimed |= take


def _kernel_cameras(rgb, depth_m, src: Intrinsics, c2w_src, dst: Intrinsics, c2w_dst) -> tuple:
    """The warp kernels' leading arguments: the source frame and depth (C-contiguous), the source intrinsics, the
    source camera -> target camera rotation [3, 3] and translation [3] (float64), the target intrinsics."""
    rel = np.linalg.inv(np.asarray(c2w_dst, np.float64)) @ np.asarray(c2w_src, np.float64)  # source cam -> target cam
    return (np.ascontiguousarray(rgb), np.ascontiguousarray(depth_m, dtype=np.float32), src.fx, src.fy, src.cx,
            src.cy, np.ascontiguousarray(rel[:3, :3]), np.ascontiguousarray(rel[:3, 3]), dst.fx, dst.fy, dst.cx,
            dst.cy)


def warp_rgbd(
    rgb: np.ndarray,  # [h, w, 3] uint8, source frame
    depth_m: np.ndarray,  # [h, w] float32 z-depth of the source, 0 = unknown
    src: Intrinsics,
    c2w_src: np.ndarray,  # [4, 4]
    dst: Intrinsics,
    c2w_dst: np.ndarray,  # [4, 4]
) -> WarpResult:
    """Forward-warp a source RGB-D frame into the target camera; nearest surface wins per target pixel."""
    _check(rgb, depth_m, src)
    out_rgb = np.zeros((dst.height, dst.width, 3), np.uint8)
    out_depth = np.zeros((dst.height, dst.width), np.float32)
    args = (*_kernel_cameras(rgb, depth_m, src, c2w_src, dst, c2w_dst), out_rgb, out_depth)
    threads = numba.get_num_threads()
    if threads > 1:
        _warp_kernel(*args, threads)
    else:
        _warp_serial(*args)
    return WarpResult(out_rgb, out_depth, out_depth > 0)


def warp_claim(
    rgb: np.ndarray,  # [h, w, 3] uint8, source frame
    depth_m: np.ndarray,  # [h, w] float32 z-depth of the source, 0 = unknown
    src: Intrinsics,
    c2w_src: np.ndarray,  # [4, 4]
    dst: Intrinsics,
    c2w_dst: np.ndarray,  # [4, 4]
    out_rgb: np.ndarray,  # [H, W, 3] uint8, the target's colour, in place
    claimed: np.ndarray,  # [H, W] bool, pixels already claimed, in place
    allowed: np.ndarray,  # [H, W] bool
    claimed_depth_m: np.ndarray | None = None,  # [H, W] float32 target z-depth, in place; None: not wanted
) -> None:
    """``claim_warped(out_rgb, claimed, w.rgb, w.depth_m, allowed)`` of ``w = warp_rgbd(...)``, warping only the
    source blocks that can land on an allowed, unclaimed pixel (``_warp_claim_kernel``): where those are few (a
    far reference fills the memory's holes) most of the warp is skipped. ``claimed_depth_m``: where this call
    claims a pixel, the warped depth of the colour it took (``w.depth_m`` there); elsewhere left as it was."""
    _check(rgb, depth_m, src)
    H, W = dst.height, dst.width
    for name, a, shape, dtype in (("out_rgb", out_rgb, (H, W, 3), np.uint8), ("claimed", claimed, (H, W), np.bool_),
                                  ("allowed", allowed, (H, W), np.bool_)):
        if a.shape != shape or a.dtype != dtype or (name != "allowed" and not a.flags.c_contiguous):
            raise InvalidInputError(f"{name} must be {np.dtype(dtype)} {shape} (in place: C-contiguous), got "
                                    f"{a.dtype} {a.shape}")
    mask = allowed & ~claimed
    if not mask.any():
        return
    scratch = getattr(_scratch, "arrays", None)
    if scratch is None or scratch[1].shape != (H, W):
        scratch = _scratch.arrays = (np.empty((H + 1, W + 1), np.int32), np.empty((H, W), np.float32))
    _warp_claim_kernel(*_kernel_cameras(rgb, depth_m, src, c2w_src, dst, c2w_dst), mask, out_rgb, claimed,
                       numba.get_num_threads(), CULL_BLOCK_PX, *scratch)
    if claimed_depth_m is not None:
        if claimed_depth_m.shape != (H, W) or claimed_depth_m.dtype != np.float32:
            raise InvalidInputError(f"claimed_depth_m must be float32 {(H, W)}, got {claimed_depth_m.dtype} "
                                    f"{claimed_depth_m.shape}")
        o_depth = scratch[1]  # the kernel's z-buffer: > 0 exactly on the pixels this call claimed
        np.copyto(claimed_depth_m, o_depth, where=o_depth > 0)


def warp_rgbd_reference(rgb, depth_m, src, c2w_src, dst, c2w_dst) -> WarpResult:
    """Slow, obviously correct version of ``warp_rgbd``: points sorted far-to-near, later writes win."""
    _check(rgb, depth_m, src)
    u, v, z, colors, size = _project_source(rgb, depth_m, src, c2w_src, dst, c2w_dst)
    out_rgb = np.zeros((dst.height, dst.width, 3), np.uint8)
    out_depth = np.zeros((dst.height, dst.width), np.float32)
    order = np.argsort(-z, kind="stable")  # far first, so the nearest point is written last
    for i in order:
        if not (np.isfinite(u[i]) and np.isfinite(v[i])) or abs(u[i]) > 1e7 or abs(v[i]) > 1e7:
            continue
        s = int(size[i])
        x0 = int(np.floor(u[i] - 0.5 * s + 0.5))
        y0 = int(np.floor(v[i] - 0.5 * s + 0.5))
        ys = slice(max(y0, 0), max(min(y0 + s, dst.height), 0))
        xs = slice(max(x0, 0), max(min(x0 + s, dst.width), 0))
        out_depth[ys, xs] = z[i]
        out_rgb[ys, xs] = colors[i]
    return WarpResult(out_rgb, out_depth, out_depth > 0)
