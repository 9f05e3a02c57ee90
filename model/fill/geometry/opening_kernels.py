"""Compiled (numba) doorway test of ``model.fill.geometry.layout.opening_pixels``: every rendered pixel in a doorway's
image box in one pass. The numpy version made four float32 products and a dozen [M] temporaries per doorway; with
the camera walking through a doorway its box is most of the frame (~230 k pixels at 640x360), ~25 ms of a house
frame. Arithmetic follows that version's float32 expressions exactly (same flags: ``opening_pixels`` is compared
with its numpy twin ``reference_opening_pixels`` in tests/test_fill_layout.py)."""

from __future__ import annotations

import numpy as np

from spatia.world.numba_start import nb


@nb.njit(cache=True, nogil=True)
def mark_opening(rays, depth, valid, r0, r1, c0, c1, up_vec, cam_up, along_vec, cam_along, centre, half, bottom,
                 top, wall_vec, cam_wall, offset, slab, out):
    """Sets ``out[y, x]`` (bool [H, W]) for rendered pixels in rows [r0, r1) and cols [c0, c1) whose point lies in
    the doorway: within ``half`` of ``centre`` along the wall, between ``bottom`` and ``top`` along up, within
    ``slab`` of the wall's ``offset``. rays [H, W, 3] float32 camera frame (z = 1), depth [H, W] float32 z-depth,
    valid [H, W] bool; up_vec / along_vec / wall_vec [3] float32: the layout's up, the wall's horizontal axis and
    its normal in camera frame; cam_* float32: the camera's coordinates along them; the rest float32 metres.

    Row by row, branch-free over the row's span (vectorised, as ``mark_stale``): the span's rays are first copied
    into three contiguous rows (one per component), then every coordinate of every pixel is made and and-ed into
    its flag. Pixel by pixel with early exits, the box of a doorway being walked through (most of the frame, most
    of it beyond the wall's slab: all three coordinates made) cost several times the CPU (docs/BENCHMARKS.md,
    session 20, sthr)."""
    u0, u1, u2 = up_vec[0], up_vec[1], up_vec[2]
    a0, a1, a2 = along_vec[0], along_vec[1], along_vec[2]
    w0, w1, w2 = wall_vec[0], wall_vec[1], wall_vec[2]
    n = max(c1 - c0, 0)
    ray_x = np.empty(n, np.float32)
    ray_y = np.empty(n, np.float32)
    ray_z = np.empty(n, np.float32)
    for y in range(r0, r1):
        ray_row = rays[y]
        for j in range(n):
            ray_x[j] = ray_row[c0 + j, 0]
            ray_y[j] = ray_row[c0 + j, 1]
            ray_z[j] = ray_row[c0 + j, 2]
        d_row, v_row, o_row = depth[y, c0:c1], valid[y, c0:c1], out[y, c0:c1]
        for j in range(n):
            d = d_row[j]
            rx, ry, rz = ray_x[j], ray_y[j], ray_z[j]
            height = cam_up + d * (rx * u0 + ry * u1 + rz * u2)
            along = cam_along + d * (rx * a0 + ry * a1 + rz * a2)
            coord = cam_wall + d * (rx * w0 + ry * w1 + rz * w2)
            inside = ((height >= bottom) & (height <= top) & (abs(along - centre) <= half)
                      & (abs(coord - offset) <= slab))
            o_row[j] = o_row[j] | (v_row[j] & inside)


@nb.njit(cache=True, nogil=True)
def mark_stale(rays, ray_x, ray_y, depth, valid, axis_vecs, cam_coords, closing_axis, closing_dir, closing_seen,
               bound_axis, bound_facing, bound_offset, separable, margin, out):
    """Sets ``out[y, x]`` (bool [H, W]) for rendered pixels ``layout.stale_closing_pixels`` marks: beyond
    ``closing_seen[c]`` by ``margin`` in direction ``closing_dir[c]`` along ``closing_axis[c]`` for some closing
    wall c, and more than ``margin`` in front of every bound b (``bound_facing[b] * (coordinate along
    bound_axis[b] - bound_offset[b])``). rays [H, W, 3] float32 camera frame (z = 1), depth [H, W] float32 z-depth,
    valid [H, W] bool; axis_vecs [3, 3] float32: the layout's axes in camera frame; cam_coords [3] float32: the
    camera's coordinates along them; the rest float32 metres. The same float32 expressions as the numpy twin.
    ``separable``: every ray is (ray_x[x], ray_y[y], 1) (a pinhole camera's, ``layout._ray_axes``), and the ray
    products are made from those [W] and [H] float32 vectors (the same products: 1 x a is a), not read from the
    [H, W, 3] rays.

    Row by row, branch-free over the row (vectorised): the three coordinates, then each closing wall's test and
    each bound's, and-ed into the row's flags. Pixel by pixel with early exits it cost twice the CPU
    (docs/BENCHMARKS.md, session 18, lcost): most of a frame lies beyond the closing wall once the camera has
    walked past the observed extent, and every such pixel took the bounds' loop."""
    H, W = valid.shape
    if closing_axis.shape[0] == 0:  # beyond no closing wall: nothing is stale
        return
    coord = np.empty((3, W), np.float32)
    flag = np.empty(W, np.bool_)
    along_x = np.empty((3, W), np.float32)  # ray_x[x] * axis_vecs[k, 0]
    if separable:
        for k in range(3):
            for x in range(W):
                along_x[k, x] = ray_x[x] * axis_vecs[k, 0]
    for y in range(H):
        for k in range(3):
            a0, a1, a2, ck = axis_vecs[k, 0], axis_vecs[k, 1], axis_vecs[k, 2], cam_coords[k]
            row = coord[k]
            if separable:
                by, tx = ray_y[y] * a1, along_x[k]
                for x in range(W):
                    row[x] = ck + depth[y, x] * (tx[x] + by + a2)
            else:
                for x in range(W):
                    row[x] = ck + depth[y, x] * (rays[y, x, 0] * a0 + rays[y, x, 1] * a1 + rays[y, x, 2] * a2)
        # (beyond closing wall 0 or 1 or ...) and valid, as (beyond 0 and valid) or (beyond 1 and valid) ...: the
        # first wall's pass writes the flags (no clearing pass, no pass of its own for valid)
        row = coord[closing_axis[0]]
        direction, seen = closing_dir[0], closing_seen[0]
        for x in range(W):
            flag[x] = (direction * (row[x] - seen) > margin) & valid[y, x]
        for i in range(1, len(closing_axis)):
            row = coord[closing_axis[i]]
            direction, seen = closing_dir[i], closing_seen[i]
            for x in range(W):
                flag[x] = flag[x] | ((direction * (row[x] - seen) > margin) & valid[y, x])
        for i in range(len(bound_axis)):
            row = coord[bound_axis[i]]
            facing, offset = bound_facing[i], bound_offset[i]
            for x in range(W):
                flag[x] = flag[x] & (facing * (row[x] - offset) > margin)
        # or-ed into the row, not stored where set: a branch per pixel mispredicts along every edge of the region
        o = out[y]
        for x in range(W):
            o[x] = o[x] | flag[x]


def stale_kernel_inputs(*arrays: np.ndarray) -> list[np.ndarray]:
    """``mark_stale``'s array arguments (all but ``margin`` and ``out``) as C-contiguous read-only views: one
    compiled signature whatever the caller's arrays' flags (numba compiles one per array type, read-only
    included), the one ``warm_mark_stale`` loads ahead of the first frame."""
    out = []
    for a in arrays:
        v = np.ascontiguousarray(a).view()
        v.setflags(write=False)
        out.append(v)
    return out


def warm_mark_stale() -> None:
    """Compile ``mark_stale`` (or load it from numba's cache) for the types ``layout.stale_closing_pixels`` passes,
    on a 1-pixel frame."""
    f32 = np.float32
    mark_stale(*stale_kernel_inputs(
        np.ones((1, 1, 3), f32), np.ones(1, f32), np.ones(1, f32), np.ones((1, 1), f32), np.ones((1, 1), bool),
        np.eye(3, dtype=f32), np.zeros(3, f32), np.zeros(1, np.int64), np.ones(1, f32), np.zeros(1, f32),
        np.zeros(1, np.int64), np.ones(1, f32), np.zeros(1, f32)), True, f32(0.25), np.zeros((1, 1), bool))
