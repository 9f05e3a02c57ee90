"""Compiled (numba) doorway test of ``model.fill.layout.opening_pixels``: every rendered pixel in a doorway's
image box in one pass. The numpy version made four float32 products and a dozen [M] temporaries per doorway; with
the camera walking through a doorway its box is most of the frame (~230 k pixels at 640x360), ~25 ms of a house
frame. Arithmetic follows that version's float32 expressions exactly (same flags: ``opening_pixels`` is compared
with its numpy twin ``reference_opening_pixels`` in tests/test_fill_layout.py)."""

from __future__ import annotations

import numba as nb


@nb.njit(cache=True, nogil=True)
def mark_opening(rays, depth, valid, r0, r1, c0, c1, up_vec, cam_up, along_vec, cam_along, centre, half, bottom,
                 top, wall_vec, cam_wall, offset, slab, out):
    """Sets ``out[y, x]`` (bool [H, W]) for rendered pixels in rows [r0, r1) and cols [c0, c1) whose point lies in
    the doorway: within ``half`` of ``centre`` along the wall, between ``bottom`` and ``top`` along up, within
    ``slab`` of the wall's ``offset``. rays [H, W, 3] float32 camera frame (z = 1), depth [H, W] float32 z-depth,
    valid [H, W] bool; up_vec / along_vec / wall_vec [3] float32: the layout's up, the wall's horizontal axis and
    its normal in camera frame; cam_* float32: the camera's coordinates along them; the rest float32 metres."""
    for y in range(r0, r1):
        for x in range(c0, c1):
            if not valid[y, x]:
                continue
            d = depth[y, x]
            rx, ry, rz = rays[y, x, 0], rays[y, x, 1], rays[y, x, 2]
            height = cam_up + d * (rx * up_vec[0] + ry * up_vec[1] + rz * up_vec[2])
            if not (height >= bottom and height <= top):
                continue
            along = cam_along + d * (rx * along_vec[0] + ry * along_vec[1] + rz * along_vec[2])
            if not abs(along - centre) <= half:
                continue
            coord = cam_wall + d * (rx * wall_vec[0] + ry * wall_vec[1] + rz * wall_vec[2])
            if abs(coord - offset) <= slab:
                out[y, x] = True
