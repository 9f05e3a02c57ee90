"""Slow, plainly correct numpy/Python versions of the fast ops in ``world`` (tests and benchmarks compare them).

A plain module of functions; each says which fast op it mirrors. Floating-point formulas are written in the same
order as the fast kernels (no matmul, whose summation order differs), so results agree exactly, not just closely.
"""

from __future__ import annotations

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world._memory_kernels import BLOCK_MASK
from spatia.world.geometry import KEY_BITS, KEY_MASK, KEY_OFFSET

# ---------------------------------------------------------------------------------------------------------------
# world.memory
# ---------------------------------------------------------------------------------------------------------------


def reference_positions(keys: np.ndarray, offsets: np.ndarray, voxel_size_m: float) -> np.ndarray:
    """``[N, 3]`` float64 world positions of stored points: ``(ijk + (offset + 0.5) / 256) * d``."""
    keys = np.asarray(keys, dtype=np.int64)
    ijk = np.stack([(keys >> (2 * KEY_BITS)) & KEY_MASK, (keys >> KEY_BITS) & KEY_MASK, keys & KEY_MASK], axis=1)
    ijk = ijk - KEY_OFFSET
    return (ijk.astype(np.float64) + (offsets.astype(np.float64) + 0.5) / 256.0) * voxel_size_m


def reference_quantize(points: np.ndarray, voxel_size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """World points ``[N, 3]`` -> (voxel keys ``[N]`` int64, in-voxel offsets ``[N, 3]`` uint8 on a 256 grid)."""
    q = np.asarray(points, dtype=np.float64) * (1.0 / voxel_size_m)
    c = np.floor(q)
    offs = np.clip(((q - c) * 256.0).astype(np.int64), 0, 255).astype(np.uint8)
    u = c.astype(np.int64) + KEY_OFFSET
    keys = (u[:, 0] << (2 * KEY_BITS)) | (u[:, 1] << KEY_BITS) | u[:, 2]
    return keys, offs


def reference_frame_points(
    depth_m: np.ndarray,  # [H, W] float32
    intrinsics: Intrinsics,
    c2w: np.ndarray,  # [4, 4]
    max_depth_m: float,
    exclude_mask: np.ndarray | None = None,  # [H, W] bool, True = skip
) -> tuple[np.ndarray, np.ndarray]:
    """World points of the usable depth pixels in row-major order: (points ``[N, 3]`` float64, flat pixel ids)."""
    depth = np.asarray(depth_m, dtype=np.float32).astype(np.float64)
    with np.errstate(invalid="ignore"):
        keep = (depth > 0.0) & (depth <= max_depth_m)
    if exclude_mask is not None:
        keep &= ~exclude_mask
    ys, xs = np.nonzero(keep)  # row-major order
    z = depth[ys, xs]
    xcam = (xs + 0.5 - intrinsics.cx) / intrinsics.fx * z
    ycam = (ys + 0.5 - intrinsics.cy) / intrinsics.fy * z
    R, t = c2w[:3, :3], c2w[:3, 3]
    pts = np.stack([R[a, 0] * xcam + R[a, 1] * ycam + R[a, 2] * z + t[a] for a in range(3)], axis=1)
    return pts, ys * intrinsics.width + xs


def reference_merge(
    state: dict[int, list[int]],  # voxel key -> [o0, o1, o2, r, g, b, count, last_seen]; updated in place
    keys: np.ndarray,  # [N] int64
    offsets: np.ndarray,  # [N, 3] uint8
    colors: np.ndarray,  # [N, 3] uint8
    frame_index: int,
    max_mean_weight: int,
) -> tuple[int, int]:
    """Fold samples one by one into a dict memory (mirrors ``SpatialMemory.integrate``/``integrate_points``).

    Returns (voxels created, distinct pre-existing voxels updated).
    """
    before = set(state)
    touched: set[int] = set()
    created = 0
    for key, off, col in zip(keys.tolist(), offsets.tolist(), colors.tolist()):
        p = state.get(key)
        if p is None:
            state[key] = [*off, *col, 1, frame_index]
            created += 1
            continue
        w = min(p[6], max_mean_weight)
        for a in range(3):
            p[3 + a] = round_half_up(p[3 + a] * w + col[a], w + 1)
            p[a] = round_half_up(p[a] * w + off[a], w + 1)
        p[6] = min(p[6] + 1, 65535)
        p[7] = max(p[7], frame_index)
        if key in before:
            touched.add(key)
    return created, len(touched)


def round_half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def reference_state_arrays(state: dict[int, list[int]]) -> dict[str, np.ndarray]:
    """A dict memory as ``SpatialMemory.to_arrays``-style arrays sorted by voxel key."""
    keys = np.array(sorted(state), dtype=np.int64)
    rows = np.array([state[k] for k in keys.tolist()], dtype=np.int64).reshape(-1, 8)
    return {
        "voxel_keys": keys,
        "voxel_offsets": rows[:, 0:3].astype(np.uint8),
        "colors": rows[:, 3:6].astype(np.uint8),
        "observation_count": rows[:, 6].astype(np.uint16),
        "last_seen_frame": rows[:, 7].astype(np.int32),
    }


def reference_drop_order(n_sorted: int, n: int, drops: np.ndarray) -> tuple[np.ndarray, int]:
    """The points as read after ``SpatialMemory._drop(drops)`` (``drops``: indices among the ``n`` points as read,
    the first ``n_sorted`` of them block-sorted): ``(new index -> old index [n - len(drops)], block-sorted points
    after)``. A drop moves no point: the kept points stay in their order (a stable filter)."""
    keep = np.ones(n, bool)
    keep[np.asarray(drops, np.int64)] = False
    return np.flatnonzero(keep), int(keep[:n_sorted].sum())


def reference_drop_rows(n_sorted: int, n: int, dead: np.ndarray,
                        drops: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Row layout after ``SpatialMemory._drop(drops)`` (rows, sorted distinct, live) on ``n`` rows of which
    ``[0, n_sorted)`` are block-sorted and ``dead`` (sorted) are dead: ``(new row -> old row, new n_sorted, dead
    rows after)``. Every row stays where it is; the dropped ones become dead."""
    return np.arange(n, dtype=np.int64), n_sorted, np.union1d(np.asarray(dead, np.int64), np.asarray(drops, np.int64))


def reference_resort_rows(sort_keys: np.ndarray, n0: int, dead0: np.ndarray, n: int,
                          dead: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Row layout after ``SpatialMemory._reindex`` with a re-sort prepared when the memory had ``n0`` rows of which
    ``dead0`` were dead, on ``n`` rows of which ``dead`` (a superset of ``dead0``) are dead now: ``(new row -> old
    row, new n_sorted, dead rows after)``. The rows below ``n0`` live when it was prepared, by sort key
    (``sort_keys`` [n], the block-major keys), then the rows from ``n0`` on in their order; a row dead now stays
    dead at its new place. With ``n0 = n`` and ``dead0 = dead``: a re-sort of every row, no dead row after."""
    order = np.concatenate([reference_merge_order(sort_keys[:n0], n0, dead0), np.arange(n0, n)]).astype(np.int64)
    dead_now = np.zeros(n, bool)
    dead_now[np.asarray(dead, np.int64)] = True
    return order, n0 - len(dead0), np.flatnonzero(dead_now[order]).astype(np.int64)


def reference_live_arrays(arrays: dict[str, np.ndarray], dead: np.ndarray) -> dict[str, np.ndarray]:
    """A memory's points as read (``SpatialMemory.to_arrays``) from its rows ``arrays`` (every row, live or dead, in
    row order) and its dead rows: the live rows, in row order."""
    live = np.ones(len(arrays["voxel_keys"]), bool)
    live[np.asarray(dead, np.int64)] = False
    return {name: a[live] for name, a in arrays.items()}


def reference_render(
    keys: np.ndarray,  # [N] int64
    offsets: np.ndarray,  # [N, 3] uint8
    colors: np.ndarray,  # [N, 3] uint8
    voxel_size_m: float,
    intrinsics: Intrinsics,
    c2w: np.ndarray,  # [4, 4]
    min_depth_m: float,
    max_depth_m: float,
    splat_k: float,  # splat side = clip(ceil(splat_k / z), 1, max_splat_px)
    max_splat_px: int,
    depth_quant: float,  # metres -> integer z-buffer depth (truncated); ties go to the lower point index
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Brute-force z-buffer of every point and every pixel of its square splat (no culling). Mirrors
    ``SpatialMemory.render``. Returns rgb [H, W, 3] uint8, depth [H, W] float32, valid [H, W] bool, ids int32."""
    W, H = intrinsics.width, intrinsics.height
    # camera-frame points as the kernel forms them (blocks of 2**BLOCK_BITS voxels): R (block corner - t) + R d / 256 * (in-block position in
    # 1/256-voxel units); mathematically R (position - t) with position = reference_positions(keys, offsets, d)
    keys = np.asarray(keys, dtype=np.int64)
    R = c2w[:3, :3].T  # world-to-camera rotation
    t = c2w[:3, 3]
    u3 = [(keys >> (2 * KEY_BITS)) & KEY_MASK, (keys >> KEY_BITS) & KEY_MASK, keys & KEY_MASK]  # unsigned voxel coords
    corner = [((u & KEY_MASK & ~BLOCK_MASK) - KEY_OFFSET).astype(np.float64) * voxel_size_m - t[a] for a, u in enumerate(u3)]
    local = [(((u & BLOCK_MASK) << 8) | offsets[:, a].astype(np.int64)).astype(np.float64) + 0.5 for a, u in enumerate(u3)]
    step = R * (voxel_size_m / 256.0)
    xc, yc, zc = (
        (R[a, 0] * corner[0] + R[a, 1] * corner[1] + R[a, 2] * corner[2])
        + step[a, 0] * local[0] + step[a, 1] * local[1] + step[a, 2] * local[2]
        for a in range(3)
    )
    ids = np.arange(len(keys), dtype=np.int64)
    front = (zc >= min_depth_m) & (zc <= max_depth_m)
    xc, yc, zc, ids = xc[front], yc[front], zc[front], ids[front]
    inv_z = 1.0 / zc
    u = intrinsics.fx * xc * inv_z + intrinsics.cx
    v = intrinsics.fy * yc * inv_z + intrinsics.cy
    s = np.clip(np.ceil(splat_k * inv_z).astype(np.int64), 1, max_splat_px)
    half = (s - 1) * 0.5
    x0 = np.floor(u - half)
    y0 = np.floor(v - half)
    packed = ((zc * depth_quant).astype(np.int64) << 32) | ids
    zbuf = np.full(H * W, np.iinfo(np.int64).max, dtype=np.int64)
    side = int(s.max()) if len(s) else 0  # loop to the largest splat present, not the cap (a far scene stays fast)
    for dy in range(side):
        for dx in range(side):
            px, py = x0 + dx, y0 + dy
            hit = (dx < s) & (dy < s) & (px >= 0) & (px < W) & (py >= 0) & (py < H)
            np.minimum.at(zbuf, (py[hit] * W + px[hit]).astype(np.int64), packed[hit])
    valid = zbuf != np.iinfo(np.int64).max
    win = (zbuf[valid] & 0xFFFFFFFF).astype(np.int64)
    rgb = np.zeros((H * W, 3), np.uint8)
    depth = np.zeros(H * W, np.float32)
    out_ids = np.full(H * W, -1, np.int32)
    depth[valid] = ((zbuf[valid] >> 32) * (1.0 / depth_quant)).astype(np.float32)  # the z-buffer's quantised depth
    rgb[valid] = colors[win]
    out_ids[valid] = win
    return rgb.reshape(H, W, 3), depth.reshape(H, W), valid.reshape(H, W), out_ids.reshape(H, W)


def reference_visible_voxel_keys(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Sorted unique keys of the points that own a pixel in a rendered id image (-1 = none)."""
    return np.unique(keys[np.unique(ids[ids >= 0])])


def reference_tail_chunk_boxes(keys: np.ndarray, start: int, stop: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """``tail_chunk_boxes`` in numpy: per chunk of ``chunk`` rows of ``keys[start:stop]``, the min and max of each
    axis' voxel coordinate field ([C, 3] int64 each, inclusive)."""
    u = np.stack([(keys[start:stop] >> (2 * KEY_BITS)) & KEY_MASK, (keys[start:stop] >> KEY_BITS) & KEY_MASK,
                  keys[start:stop] & KEY_MASK], axis=1).astype(np.int64)
    firsts = np.arange(0, stop - start, chunk)
    return np.minimum.reduceat(u, firsts, axis=0), np.maximum.reduceat(u, firsts, axis=0)


def reference_keys_in(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``_memory_kernels.keys_in``: ``[V]`` bool, whether each of ``values`` is one of ``keys`` (numpy's
    sort-based membership)."""
    return np.isin(np.asarray(values, np.int64), np.asarray(keys, np.int64))


def reference_keys_of_points(voxel_keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``SpatialMemory.keys_of_points``: the keys of the points ``ids`` as read (``voxel_keys``, the live rows)."""
    return np.asarray(voxel_keys)[np.asarray(ids, np.int64)]


def reference_merge_order(sort_keys: np.ndarray, n: int, dead: np.ndarray) -> np.ndarray:
    """``memory._merge_order`` (``_memory_kernels.merge_order``): the live rows below ``n`` (all but ``dead``, in the
    prefix or the tail) by their sort key (``sort_keys`` [n], the block-major keys; unique among live rows, so a
    merge of the sorted prefix with the sorted tail is this one sort)."""
    live = np.setdiff1d(np.arange(n), dead)
    return live[np.argsort(np.asarray(sort_keys)[live], kind="stable")]
