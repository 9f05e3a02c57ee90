"""Compiled (numba) passes over a frame's hole pixels for ``GeometricGenerator._layout_fill`` (the fused path).

The numpy version (``GeometricGenerator._layout_fill_reference``, the definition) walks the hole pixels of a frame
with ~30 array expressions, each a pass over [M] or [M, 3] temporaries (M ~ 10^5 holes at 640x360): ray gathers,
the pinhole distance transform of the whole frame, world points, the near-pose and free-space tests, the colour
gather and scatter, per plane a boolean mask over all holes, the plane coordinates and the texel indices. Here the
same per-pixel arithmetic runs in three passes with no temporaries:

1. ``hole_rays_near`` (``hole_rays`` its plainer twin): the hole pixels, their background-fill depth, the pinhole
   test (a rendered pixel within ``pinhole_px`` in the chamfer metric of ``cv2.distanceTransform(DIST_L2, 3)``:
   steps 0.955 across, 1.3693 diagonally, the numbers OpenCV's 3x3 mask uses) and the rays of the others, which
   are cast;
2. ``hole_surfaces``: from the cast (``layout_kernels.cast_planes``) to world points, the free space around the
   poses (brute force over the few poses near each plane instead of a KD-tree) and against the observed views;
3. ``hole_depth_texels``: the output depth (the fill's own points obey free space too) and, per plane, the texel
   row, column and mip level of every pixel the layout wins (``texture.sample_uv``'s arithmetic), grouped by plane
   (a counting sort), so the texel reads write straight into the frame.

And after the fill, ``colour_off_surface``: the hole pixels whose colour may come from another surface than their
depth (a reference's warped from another depth; the colour fill's next to a nearer rendered pixel): not folded.

Arithmetic follows the reference's types expression by expression (float32 where it is float32, float64 where it
is float64, no fused multiply-add: numba contracts nothing without fastmath), so the outputs are the same bits;
``tests/test_layout_fill_fused.py`` compares the two on random and captured frames. No njit function here calls
one in another file: numba's on-disk cache does not notice when a callee in another file changes.
"""

from __future__ import annotations

import numpy as np

from spatia.world.numba_start import nb

CHAMFER_ACROSS_PX = 0.955  # cv2.distanceTransform(DIST_L2, maskSize 3): a step across ...
CHAMFER_DIAGONAL_PX = 1.3693  # ... and a diagonal step (OpenCV's constants, float32)


def chamfer_offsets(max_px: float) -> tuple[np.ndarray, np.ndarray]:
    """``(dy [K], dx [K])`` int64: the pixel offsets within ``max_px`` of a pixel in the 3x3 chamfer metric of
    ``cv2.distanceTransform(DIST_L2, 3)`` (a * (long - short) + b * short steps), nearest first (a pixel next to a
    rendered one, the common case, is found at the first look)."""
    a, b = np.float32(CHAMFER_ACROSS_PX), np.float32(CHAMFER_DIAGONAL_PX)
    r = int(max_px / CHAMFER_ACROSS_PX) + 1
    offs = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            lo, hi = sorted((abs(dy), abs(dx)))
            d = np.float32(a * np.float32(hi - lo)) + np.float32(b * np.float32(lo))
            if float(d) <= max_px:
                offs.append((float(d), dy, dx))
    offs.sort()
    return np.array([o[1] for o in offs], np.int64), np.array([o[2] for o in offs], np.int64)


@nb.njit(cache=True, nogil=True, inline="always")
def _nearest_rendered(depth, valid, y, x, dy, dx, r, h, w):  # pragma: no cover - compiled
    """The depth of the first rendered pixel within ``r`` steps of (y, x) along (dy, dx) in an [h, w] image, 0:
    none."""
    for k in range(1, r + 1):
        yy, xx = y + k * dy, x + k * dx
        if yy < 0 or yy >= h or xx < 0 or xx >= w:
            return np.float32(0.0)
        if valid[yy, xx]:
            return depth[yy, xx]
    return np.float32(0.0)


@nb.njit(cache=True, nogil=True)
def enclosed_pinhole_depths(filled, depth, valid, r):  # pragma: no cover - compiled
    """``geometric._enclosed_pinhole_depths`` (its numpy definition, which tests compare) in one pass: filled [H, W]
    float32 written in place where a hole the span fill left empty (<= 0) has a rendered pixel (valid [H, W] bool,
    depth [H, W] float32) within ``r`` steps on both sides along a row, a column or a diagonal: the farthest of
    those ends."""
    h, w = valid.shape
    for y in range(h):
        for x in range(w):
            if valid[y, x] or filled[y, x] > 0:
                continue
            best = np.float32(0.0)
            for line in range(4):  # a row, a column, the two diagonals (as branches: a table of offsets read in
                # the loop made the pass several times slower, docs/BENCHMARKS.md, session 32)
                if line == 0:
                    dy, dx = 0, 1
                elif line == 1:
                    dy, dx = 1, 0
                elif line == 2:
                    dy, dx = 1, 1
                else:
                    dy, dx = 1, -1
                a = _nearest_rendered(depth, valid, y, x, dy, dx, r, h, w)
                if a <= 0:
                    continue
                b = _nearest_rendered(depth, valid, y, x, -dy, -dx, r, h, w)
                if b <= 0:
                    continue
                far = a if a > b else b
                if far > best:
                    best = far
            if best > 0:
                filled[y, x] = best


@nb.njit(cache=True, nogil=True)
def hole_rays(valid, filled, rays, off_dy, off_dx):  # pragma: no cover - compiled
    """One pass over the frame. valid [H, W] bool (rendered), filled [H, W] float32 (the background fill's depth),
    rays [H, W, 3] float32 camera frame (z = 1), off_dy / off_dx [K] int64 (``chamfer_offsets``).

    Returns hole_idx [M] int64 (flat pixel index of each hole, row-major), f [M] float32 (the fill's depth there),
    pinhole [M] bool (f > 0 and a rendered pixel within the offsets), cast [C] int64 (indices into M of the
    others) and their rays [C, 3] float32. The holes are counted by a branch-free sum (not a pass that tests every
    pixel), and the cast holes' rays copied as they are met, into arrays of M rows of which the first C are
    returned (no third pass dividing flat indices back into rows and columns)."""
    h, w = valid.shape
    n_valid = 0
    for y in range(h):
        for x in range(w):
            n_valid += np.int64(valid[y, x])
    n = h * w - n_valid
    hole_idx = np.empty(n, np.int64)
    f = np.empty(n, np.float32)
    pinhole = np.zeros(n, np.bool_)
    cast = np.empty(n, np.int64)
    rays_cast = np.empty((n, 3), np.float32)
    m = 0
    c = 0
    for y in range(h):
        for x in range(w):
            if valid[y, x]:
                continue
            fv = filled[y, x]
            hole_idx[m] = y * w + x
            f[m] = fv
            if fv > 0:
                for k in range(off_dy.shape[0]):
                    yy, xx = y + off_dy[k], x + off_dx[k]
                    if 0 <= yy < h and 0 <= xx < w and valid[yy, xx]:
                        pinhole[m] = True
                        break
            if not pinhole[m]:
                cast[c] = m
                for j in range(3):
                    rays_cast[c, j] = rays[y, x, j]
                c += 1
            m += 1
    return hole_idx, f, pinhole, cast[:c], rays_cast[:c]


@nb.njit(cache=True, nogil=True)
def hole_rays_near(valid, filled, rays, near):  # pragma: no cover - compiled
    """``hole_rays`` with the pinhole test read from ``near`` [H, W] uint8, nonzero within the offsets of a rendered
    pixel (``valid`` dilated by the offsets' disc, ``near_rendered``): the same outputs. A hole inside a large one
    looked at every offset (~20 at ``pinhole_px`` 2.5) before it was cast; the dilation (OpenCV's, vectorised) and
    one read a pixel cost less (docs/BENCHMARKS.md, session 33)."""
    h, w = valid.shape
    n_valid = 0
    for y in range(h):
        for x in range(w):
            n_valid += np.int64(valid[y, x])
    n = h * w - n_valid
    hole_idx = np.empty(n, np.int64)
    f = np.empty(n, np.float32)
    pinhole = np.zeros(n, np.bool_)
    cast = np.empty(n, np.int64)
    rays_cast = np.empty((n, 3), np.float32)
    m = 0
    c = 0
    for y in range(h):
        for x in range(w):
            if valid[y, x]:
                continue
            fv = filled[y, x]
            hole_idx[m] = y * w + x
            f[m] = fv
            p = fv > 0 and near[y, x] != 0
            pinhole[m] = p
            if not p:
                cast[c] = m
                for j in range(3):
                    rays_cast[c, j] = rays[y, x, j]
                c += 1
            m += 1
    return hole_idx, f, pinhole, cast[:c], rays_cast[:c]


def near_rendered(valid: np.ndarray, off_dy: np.ndarray, off_dx: np.ndarray) -> np.ndarray:
    """``[H, W]`` uint8, nonzero where a rendered pixel (``valid`` [H, W] bool) lies at one of the offsets (or is the
    pixel itself): ``hole_rays_near``'s ``near``. A dilation by the offsets' disc; outside the image counts as not
    rendered (OpenCV's default border for a dilation), as ``hole_rays``' bounds test."""
    import cv2

    r = int(max(np.abs(off_dy).max(initial=0), np.abs(off_dx).max(initial=0)))
    disc = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
    disc[r, r] = 1
    disc[off_dy + r, off_dx + r] = 1
    return cv2.dilate(np.ascontiguousarray(valid).view(np.uint8), disc)


@nb.njit(cache=True, nogil=True)
def _seen_through(px, py, pz, view_R, view_t, view_k, view_hw, view_off, depth_flat, rel):  # pragma: no cover
    """``freespace.seen_through`` of one world point against every view (the same float64 arithmetic)."""
    for v in range(view_R.shape[0]):
        dx, dy, dz = px - view_t[v, 0], py - view_t[v, 1], pz - view_t[v, 2]
        R = view_R[v]
        x = R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz
        y = R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz
        z = R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz
        if z <= 0.0:
            continue
        u = np.floor(view_k[v, 0] * x / z + view_k[v, 2])
        vv = np.floor(view_k[v, 1] * y / z + view_k[v, 3])
        hh, ww = view_hw[v, 0], view_hw[v, 1]
        if u < 0 or u >= ww or vv < 0 or vv >= hh:
            continue
        seen = depth_flat[view_off[v] + int(vv) * ww + int(u)]
        if seen <= 0.0 or z < seen * (1.0 - rel) - 0.05:
            return True
    return False


@nb.njit(cache=True, nogil=True)
def hole_surfaces(n_holes, cast, ld_cast, li_cast, rays_cast, f, front_rel, R, cam, close_pts, close_start, box_lo,
                  box_hi, radius, view_R, view_t, view_k, view_hw, view_off, depth_flat, rel):  # pragma: no cover
    """From the cast to the layout surfaces a frame uses.

    n_holes M; cast [C] int64 into M; ld_cast [C] float32 / li_cast [C] int16 (``cast_planes``); rays_cast [C, 3]
    float32; f [M] float32; front_rel float64 (``layout_front_rel``); R [3, 3], cam [3] float64 the camera's pose.
    Poses near plane b: close_pts[close_start[b]:close_start[b + 1]] [Q, 3] float64, their box +- radius
    box_lo / box_hi [B, 3] float64. Observed views v: view_R [V, 3, 3], view_t [V, 3], view_k [V, 4] (fx, fy, cx,
    cy) float64, view_hw [V, 2] int64, depth_flat float32 (the views' depths, row-major, from view_off [V + 1]);
    rel float64 (``free_space_rel``).

    Returns ld [M] float32 (0: none or not cast), li [M] int16 (-1), pts [M, 3] float64 world frame (rows of cast
    rays only; the rest unset), use [M] bool (the layout wins, outside the poses' and the views' free space) and
    through [T] int64 (ascending: rays whose surface an observed view saw through)."""
    ld = np.zeros(n_holes, np.float32)
    li = np.full(n_holes, -1, np.int16)
    pts = np.empty((n_holes, 3), np.float64)
    use = np.zeros(n_holes, np.bool_)
    through = np.empty(cast.shape[0], np.int64)
    n_through = 0
    keep = np.float32(1.0 - front_rel)
    r2 = radius * radius
    for k in range(cast.shape[0]):
        m = cast[k]
        d = ld_cast[k]
        ld[m] = d
        li[m] = li_cast[k]
        # world point (freespace.world_points: float32 ray * depth, then float64)
        x, y, w = rays_cast[k, 0] * d, rays_cast[k, 1] * d, rays_cast[k, 2] * d
        p0 = cam[0] + R[0, 0] * x + R[0, 1] * y + R[0, 2] * w
        p1 = cam[1] + R[1, 0] * x + R[1, 1] * y + R[1, 2] * w
        p2 = cam[2] + R[2, 0] * x + R[2, 1] * y + R[2, 2] * w
        pts[m, 0], pts[m, 1], pts[m, 2] = p0, p1, p2
        fm = f[m]
        if not (d > 0 and (fm <= 0 or fm >= keep * d)):
            continue
        b = li_cast[k]
        near = False
        if b >= 0 and close_start[b + 1] > close_start[b]:
            if (box_lo[b, 0] <= p0 <= box_hi[b, 0] and box_lo[b, 1] <= p1 <= box_hi[b, 1]
                    and box_lo[b, 2] <= p2 <= box_hi[b, 2]):
                for q in range(close_start[b], close_start[b + 1]):
                    e0, e1, e2 = p0 - close_pts[q, 0], p1 - close_pts[q, 1], p2 - close_pts[q, 2]
                    if e0 * e0 + e1 * e1 + e2 * e2 < r2:
                        near = True
                        break
        if _seen_through(p0, p1, p2, view_R, view_t, view_k, view_hw, view_off, depth_flat, rel):
            through[n_through] = m
            n_through += 1
        elif not near:
            use[m] = True
    return ld, li, pts, use, through[:n_through]


@nb.njit(cache=True, nogil=True)
def hole_depth_texels(hole_idx, ld, li, pts, use, f, rays_flat, R, cam, has_views, view_R, view_t, view_k, view_hw,
                      view_off, depth_flat, rel, cap_m, filled_flat, out_depth_flat, n_planes, plane_tex, basis,
                      normal_cam, focal_px, min_cos, tex_origin_uv, texel_m, origin_px, max_level):  # pragma: no cover
    """The output depth of every hole, and the texels of the pixels each plane's texture paints.

    hole_idx [M] int64; ld [M] float32, li [M] int16, pts [M, 3] float64, use [M] bool (after the openings); f [M]
    float32; rays_flat [H * W, 3] float32 camera frame; R, cam the pose; views as in ``hole_surfaces`` (used when
    has_views); cap_m float64: outdoors a used layout depth beyond it is dropped (inf indoors). out_depth_flat
    [H * W] float32 (a copy of filled_flat) gets the holes' depth.

    Per plane b < n_planes with plane_tex[b] (0: no texture, 1: a synthesis model, 2: another texture): basis [B, 2,
    3] float64 (u, v axes), normal_cam [B, 3] float32, focal_px float32, min_cos float32; for kind 1,
    tex_origin_uv [B, 2], texel_m [B] float64, origin_px [B, 2] int64, max_level [B] int64.

    Returns order [U] int64 (indices into M of the painted pixels, grouped by plane in plane order, ascending within
    one), starts [B + 1], and per row of ``order``: rows, cols, level [U] int64 (kind 1) and uv [U, 2] float64,
    footprint [U] float32 (every kind: what ``texture.sample_uv`` and ``PlaneTexture.sample`` read)."""
    n = hole_idx.shape[0]
    counts = np.zeros(n_planes + 1, np.int64)
    for m in range(n):
        nd = ld[m] if use[m] else max(f[m], np.float32(0.0))
        if not use[m] and nd > 0 and has_views:
            p = hole_idx[m]
            x, y, w = rays_flat[p, 0] * nd, rays_flat[p, 1] * nd, rays_flat[p, 2] * nd
            p0 = cam[0] + R[0, 0] * x + R[0, 1] * y + R[0, 2] * w
            p1 = cam[1] + R[1, 0] * x + R[1, 1] * y + R[1, 2] * w
            p2 = cam[2] + R[2, 0] * x + R[2, 1] * y + R[2, 2] * w
            if _seen_through(p0, p1, p2, view_R, view_t, view_k, view_hw, view_off, depth_flat, rel):
                nd = np.float32(0.0)
        if use[m] and ld[m] > cap_m:
            nd = np.float32(0.0)
        out_depth_flat[hole_idx[m]] = nd
        if use[m] and plane_tex[li[m]] != 0:
            counts[li[m] + 1] += 1
    starts = np.cumsum(counts)
    total = starts[n_planes]
    order = np.empty(total, np.int64)
    fill = starts[:n_planes].copy()
    for m in range(n):
        if use[m] and plane_tex[li[m]] != 0:
            b = li[m]
            order[fill[b]] = m
            fill[b] += 1
    rows = np.empty(total, np.int64)
    cols = np.empty(total, np.int64)
    level = np.empty(total, np.int64)
    uv = np.empty((total, 2), np.float64)
    footprint = np.empty(total, np.float32)
    for b in range(n_planes):
        u0, u1, u2 = basis[b, 0, 0], basis[b, 0, 1], basis[b, 0, 2]
        v0, v1, v2 = basis[b, 1, 0], basis[b, 1, 1], basis[b, 1, 2]
        n0, n1, n2 = normal_cam[b, 0], normal_cam[b, 1], normal_cam[b, 2]
        for s in range(starts[b], starts[b + 1]):
            m = order[s]
            p = hole_idx[m]
            # plane coordinates (the reference's columns: float64, no fused multiply-add)
            uu = pts[m, 0] * u0 + pts[m, 1] * u1 + pts[m, 2] * u2
            vv = pts[m, 0] * v0 + pts[m, 1] * v1 + pts[m, 2] * v2
            uv[s, 0], uv[s, 1] = uu, vv
            # geometric.plane_footprint_m, float32
            rx, ry, rz = rays_flat[p, 0], rays_flat[p, 1], rays_flat[p, 2]
            cos_inc = abs(rx * n0 + ry * n1 + rz * n2) / np.sqrt(rx * rx + ry * ry + rz * rz)
            fp = ld[m] / focal_px / max(cos_inc, min_cos)
            footprint[s] = fp
            if plane_tex[b] != 1:
                continue
            # texture.sample_uv: the plane coordinates from the synthesis exemplar's corner, float64
            t = texel_m[b]
            q = np.float64(fp) / t
            lv = np.floor(np.log2(max(q, 1.0)))
            lv = min(max(lv, 0.0), np.float64(max_level[b]))
            level[s] = np.int64(lv)
            rows[s] = np.int64(np.floor((vv - tex_origin_uv[b, 1]) / t)) + origin_px[b, 0]
            cols[s] = np.int64(np.floor((uu - tex_origin_uv[b, 0]) / t)) + origin_px[b, 1]
    return order, starts, rows, cols, level, uv, footprint



@nb.njit(cache=True, nogil=True)
def colour_off_surface(hole_idx, claims, painted, colored, out_depth, depth, rendered, radius, scale, rel):  # pragma: no cover - compiled
    """``[M]`` bool over the frame's hole pixels (``hole_idx`` [M] int64, flat): the colour may come from another
    surface than the pixel's depth (``out_depth`` [H, W] float32, > 0). Where the colour fill colours the pixel
    (``colored`` [H, W] bool False): a ``rendered`` pixel ([H, W] bool, its ``depth`` [H, W] float32) within the
    square of ``radius`` with ``scale * depth < out_depth`` (``scale`` float32: 1 + ``rel``). Where a reference's
    colour stays (``claims`` [H, W] float32 > 0, its warped depth; ``painted`` [H, W] bool False; ``claims`` of
    shape (0, 0): no reference): ``|claims - out_depth| > rel * out_depth`` (``rel`` float32).
    ``model.geometric._colour_off_surface`` with ``reference=True`` is the definition."""
    H, W = depth.shape
    has_claims = claims.shape[0] > 0
    out = np.zeros(len(hole_idx), np.bool_)
    inf = np.float32(np.inf)
    n = 2 * radius + 1
    cols = np.empty(n, np.float32)  # per column of the square: the nearest rendered depth in it (inf: none)
    last_y, last_x = -1, -2  # the colour fill's last pixel: the next one along its row shifts ``cols`` by one
    y, row = 0, 0  # the row of the pixel and its first flat index: no division per pixel (the holes ascend)
    for k in range(len(hole_idx)):
        p = hole_idx[k]
        if p - row >= W or p < row:
            y = p // W
            row = y * W
        x = p - row
        d = out_depth[y, x]
        if not d > 0:
            continue
        if not colored[y, x]:
            # the nearest rendered depth in the square (its columns' minima, shifted by one column along a run of
            # the colour fill's pixels); scale * min < d exactly when some rendered pixel has scale * depth < d
            first = 0 if (y != last_y or x != last_x + 1) else n - 1
            if first:
                for c in range(n - 1):
                    cols[c] = cols[c + 1]
            for c in range(first, n):
                xx = x - radius + c
                m = inf
                if 0 <= xx < W:
                    for yy in range(max(0, y - radius), min(H, y + radius + 1)):
                        if rendered[yy, xx] and depth[yy, xx] < m:
                            m = depth[yy, xx]
                cols[c] = m
            m = cols[0]
            for c in range(1, n):
                m = min(m, cols[c])
            out[k] = scale * m < d
            last_y, last_x = y, x
        elif has_claims and not painted[y, x]:
            c = claims[y, x]
            out[k] = c > 0 and abs(c - d) > rel * d
    return out


@nb.njit(cache=True, nogil=True)
def match_pinhole_tone(rgb, valid, pinholes, block, k):  # pragma: no cover - compiled
    """``geometric._match_pinhole_tone``: rgb [H, W, 3] uint8 (written), valid [H, W] bool, pinholes [N] int64
    flat indices, blocks of ``block`` pixels, windows of (2k + 1)^2 blocks. One pass over the gaps' bounding box
    sums per block the colours of the gaps and of the rendered pixels with a gap among their 8-neighbours (integer
    sums in float64: exact); prefix sums give each gap's window; the shift is the points' mean less the gaps'
    (each from its own sum and count, as the reference's means), added and rounded half to even."""
    H, W = valid.shape
    n = pinholes.shape[0]
    if n == 0:
        return
    r0, r1, c0, c1 = H, -1, W, -1
    for i in range(n):
        y, x = pinholes[i] // W, pinholes[i] % W
        r0, r1, c0, c1 = min(r0, y), max(r1, y), min(c0, x), max(c1, x)
    y0, x0 = max(r0 // block - 1, 0) * block, max(c0 // block - 1, 0) * block
    y1, x1 = min(r1 + 2 * block, H), min(c1 + 2 * block, W)
    hb, wb = (y1 - y0 + block - 1) // block, (x1 - x0 + block - 1) // block
    # 2: a gap, 1: a pixel with a gap among its 8-neighbours (a point where it rendered)
    mark = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for i in range(n):
        y, x = pinholes[i] // W - y0, pinholes[i] % W - x0
        for yy in range(max(y - 1, 0), min(y + 2, y1 - y0)):
            for xx in range(max(x - 1, 0), min(x + 2, x1 - x0)):
                mark[yy, xx] = max(mark[yy, xx], np.uint8(1))
    for i in range(n):
        mark[pinholes[i] // W - y0, pinholes[i] % W - x0] = 2
    # [hb + 1, wb + 1] prefix sums of the per-block sums: colour (3) and count, points then gaps
    acc = np.zeros((2, hb + 1, wb + 1, 4), np.float64)
    for y in range(y0, y1):
        for x in range(x0, x1):
            m = mark[y - y0, x - x0]
            if m == 0 or (m == 1 and not valid[y, x]):
                continue
            kind = 1 if m == 2 else 0
            by, bx = (y - y0) // block + 1, (x - x0) // block + 1
            for ch in range(3):
                acc[kind, by, bx, ch] += rgb[y, x, ch]
            acc[kind, by, bx, 3] += 1.0
    for kind in range(2):
        for by in range(1, hb + 1):
            for bx in range(1, wb + 1):
                for ch in range(4):
                    acc[kind, by, bx, ch] += acc[kind, by - 1, bx, ch] + acc[kind, by, bx - 1, ch] \
                        - acc[kind, by - 1, bx - 1, ch]
    for i in range(n):
        y, x = pinholes[i] // W, pinholes[i] % W
        by, bx = (y - y0) // block, (x - x0) // block
        ya, yb = max(by - k, 0), min(by + k + 1, hb)
        xa, xb = max(bx - k, 0), min(bx + k + 1, wb)
        pn = acc[0, yb, xb, 3] - acc[0, ya, xb, 3] - acc[0, yb, xa, 3] + acc[0, ya, xa, 3]
        gn = acc[1, yb, xb, 3] - acc[1, ya, xb, 3] - acc[1, yb, xa, 3] + acc[1, ya, xa, 3]
        if pn < 3.0 or gn < 3.0:
            continue
        for ch in range(3):
            ps = acc[0, yb, xb, ch] - acc[0, ya, xb, ch] - acc[0, yb, xa, ch] + acc[0, ya, xa, ch]
            gs = acc[1, yb, xb, ch] - acc[1, ya, xb, ch] - acc[1, yb, xa, ch] + acc[1, ya, xa, ch]
            v = np.rint(rgb[y, x, ch] + (ps / pn - gs / gn))
            rgb[y, x, ch] = np.uint8(min(max(v, 0.0), 255.0))
