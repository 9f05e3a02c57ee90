"""Numba kernels behind ``world.memory.SpatialMemory``; ``world._reference`` holds the slow numpy twins.

Storage model (see ``world/memory.py``): a point is its voxel key (``world.geometry`` packing, 21 bits per axis)
plus a uint8 offset per axis inside the voxel, so world position = ``(ijk + (offset + 0.5) / 256) * d``.
A point's *sort key* reorders the key bits block-major (blocks of ``2**BLOCK_BITS`` voxels per side) so that
points sorted by it sit in contiguous runs per spatial block; rendering culls whole blocks against the frustum.

The key -> point-index map is an open-addressing hash table (linear probing) of int32 point indices; the key of
a slot is read from the point's own ``keys`` entry, so the table costs 4 bytes per slot and nothing else.

Every floating-point formula here is written out in the same order as in ``world._reference`` (no fastmath, no
matmul) so that the fast and the slow versions agree bit for bit.
"""

from __future__ import annotations

import numpy as np

from spatia.world.geometry import KEY_BITS, KEY_MASK, KEY_OFFSET
from spatia.world.numba_start import nb

OFFSET_LEVELS = 256  # sub-voxel position quantisation: d / 256 per axis (0.04 mm at d = 1 cm)
BLOCK_BITS = 4  # culling blocks are 16 voxels per side (16 cm at d = 1 cm: about 256 points of a surface)
BLOCK_COORD_BITS = KEY_BITS - BLOCK_BITS
BLOCK_MASK = (1 << BLOCK_BITS) - 1
BLOCK_LOCAL_MASK = (1 << (3 * BLOCK_BITS)) - 1
INT64_MAX = np.iinfo(np.int64).max
DEPTH_QUANT_MAX = (1 << 31) - 1  # depth is packed above the 32-bit point id; 31 bits keep the packed value positive
MAX_COUNT = 65535  # observation_count saturates here (uint16)
# provenance of a dead row: a point dropped from the block-sorted prefix, out of the hash table, skipped by every
# reader, physically removed by the next re-sort (``SpatialMemory._drop``); no live point has this value
DEAD = 255

_WINDOW_STRIDE_BITS = 6  # in-block indices are spread 2**6 slots apart: a block's window is 4096 * 64 slots
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


# ---------------------------------------------------------------------------------------------------------------
# Hash table
# ---------------------------------------------------------------------------------------------------------------


@nb.njit(inline="always")
def sort_key(key):
    """Block-major reordering of a voxel key's bits: (block x, y, z, then voxel-in-block x, y, z)."""
    ux = (key >> (2 * KEY_BITS)) & KEY_MASK
    uy = (key >> KEY_BITS) & KEY_MASK
    uz = key & KEY_MASK
    blk = (((ux >> BLOCK_BITS) << BLOCK_COORD_BITS | (uy >> BLOCK_BITS)) << BLOCK_COORD_BITS) | (uz >> BLOCK_BITS)
    local = ((ux & BLOCK_MASK) << (2 * BLOCK_BITS)) | ((uy & BLOCK_MASK) << BLOCK_BITS) | (uz & BLOCK_MASK)
    return (blk << (3 * BLOCK_BITS)) | local


@nb.njit(inline="always")
def _slot(key, capacity):
    """Home slot of a key: a hashed base per culling block plus the voxel's (scrambled) index inside the block.

    Neighbouring voxels (what neighbouring pixels hit) thus probe one 1 MB window of the table instead of random
    slots anywhere, which keeps look-ups in cache (measured: the frame look-up pass ~1.6x faster than a fully random
    hash on a 2 M-point room). The in-block index is permuted by an odd multiplier (a wall or floor is a run of
    consecutive indices) and spread 64 slots apart, so that each window overlaps ~200 other blocks' windows and the
    load evens out: with a 4096-slot window, measured mean probe lengths were 5 (hit) and 42 (miss) at load 0.75,
    against 2.5 and 9 for this layout and for a random hash.
    """
    sk = sort_key(key)
    h = np.uint64(sk >> (3 * BLOCK_BITS))
    h ^= h >> np.uint64(30)
    h *= _MIX1
    h ^= h >> np.uint64(27)
    h *= _MIX2
    h ^= h >> np.uint64(31)
    local = (((sk & BLOCK_LOCAL_MASK) * 2731) & BLOCK_LOCAL_MASK) << _WINDOW_STRIDE_BITS
    return (np.int64(h >> np.uint64(1)) % capacity + local) % capacity


@nb.njit(inline="always")
def hash_lookup(table, keys, key):
    """Point index of ``key`` or -1."""
    return _probe_from(table, keys, key, _slot(key, table.shape[0]))


@nb.njit(inline="always")
def hash_insert(table, key, index):
    """Insert a key known to be absent (the caller looked it up first)."""
    cap = table.shape[0]
    s = _slot(key, cap)
    while table[s] >= 0:
        s += 1
        if s == cap:
            s = 0
    table[s] = index


_INSERT_CHUNK = 64  # rows whose home slots are read ahead together (``_insert_rows_ahead``)


@nb.njit(inline="always")
def _insert_rows_ahead(table, keys, rows, m, slots):
    """``hash_insert`` of the rows ``rows[:m]`` in order, the same table: first every home slot, then one read of
    each (independent loads, so the CPU overlaps their cache misses; the value is not used), then the inserts, whose
    probes then mostly hit cache. One insert after another waited for each probe's miss in turn."""
    cap = table.shape[0]
    for t in range(m):
        slots[t] = _slot(keys[rows[t]], cap)
    touch = 0
    for t in range(m):
        touch += table[slots[t]]
    for t in range(m):
        s = slots[t]
        while table[s] >= 0:
            s += 1
            if s == cap:
                s = 0
        table[s] = rows[t]
    return touch


@nb.njit(cache=True, nogil=True)
def hash_build_range(table, keys, start, stop):
    """Insert points ``start..stop-1`` (keys unique and absent from the table), in row order. (Returns the sum of
    the read-ahead values, unused: a result nobody reads would let the compiler drop those loads.)"""
    rows = np.empty(_INSERT_CHUNK, np.int64)
    slots = np.empty(_INSERT_CHUNK, np.int64)
    touch = 0
    for c0 in range(start, stop, _INSERT_CHUNK):
        m = min(_INSERT_CHUNK, stop - c0)
        for t in range(m):
            rows[t] = c0 + t
        touch += _insert_rows_ahead(table, keys, rows, m, slots)
    return touch


@nb.njit(inline="always")
def _slot_of(table, keys, key):
    """Slot holding ``key`` or -1 (linear probe from its home slot)."""
    return _slot_from(table, keys, key, _slot(key, table.shape[0]))


@nb.njit(cache=True, nogil=True)
def _delete_slot(table, keys, i):
    """Empty slot ``i`` and shift back the entries after it whose probe passed it (linear probing stays exact
    without tombstones: Knuth vol. 3, 6.4, Algorithm R)."""
    cap = table.shape[0]
    table[i] = -1
    j = i
    while True:
        j += 1
        if j == cap:
            j = 0
        idx = table[j]
        if idx < 0:
            return
        home = _slot(keys[idx], cap)
        # the entry stays when its home slot lies cyclically in (i, j]: its probe never passed the hole
        if (i < j and i < home <= j) or (i > j and (home > i or home <= j)):
            continue
        table[i] = idx
        table[j] = -1
        i = j


@nb.njit(cache=True, nogil=True)
def drop_points(table, keys, prov, rows):
    """Delete the points in rows ``rows`` (live, in the table) in place: their keys leave the table
    (backward-shift deletion), their provenance becomes ``DEAD``; no row moves, so nothing that follows rows (a
    re-sort or a growth in preparation) is voided (``SpatialMemory._drop``). O(rows)."""
    for t in range(rows.shape[0]):
        r = rows[t]
        _delete_slot(table, keys, _slot_of(table, keys, keys[r]))
        prov[r] = DEAD


@nb.njit(cache=True, nogil=True)
def hash_build_live(table, keys, start, stop, dead):
    """``hash_build_range`` skipping the rows ``dead`` (sorted ascending): a table of the live rows only. (Returns
    the read-ahead sum, as ``hash_build_range``.)"""
    t = 0
    nd = dead.shape[0]
    while t < nd and dead[t] < start:
        t += 1
    rows = np.empty(_INSERT_CHUNK, np.int64)
    slots = np.empty(_INSERT_CHUNK, np.int64)
    touch = 0
    m = 0
    for i in range(start, stop):
        if t < nd and dead[t] == i:
            t += 1
            continue
        rows[m] = i
        m += 1
        if m == _INSERT_CHUNK:
            touch += _insert_rows_ahead(table, keys, rows, m, slots)
            m = 0
    return touch + _insert_rows_ahead(table, keys, rows, m, slots)


@nb.njit(cache=True, nogil=True)
def skip_rows(range_start, range_stop, dead):
    """Row ranges (ascending, disjoint) with the rows ``dead`` (sorted ascending) cut out; empty ranges left out.
    O(ranges + dead rows)."""
    nr = range_start.shape[0]
    nd = dead.shape[0]
    out_start = np.empty(nr + nd, np.int64)
    out_stop = np.empty(nr + nd, np.int64)
    m = 0
    t = 0
    for r in range(nr):
        a = range_start[r]
        b = range_stop[r]
        while t < nd and dead[t] < a:
            t += 1
        while t < nd and dead[t] < b:
            if dead[t] > a:
                out_start[m] = a
                out_stop[m] = dead[t]
                m += 1
            a = dead[t] + 1
            t += 1
        if a < b:
            out_start[m] = a
            out_stop[m] = b
            m += 1
    return out_start[:m], out_stop[:m]


@nb.njit(inline="always")
def _popcount64(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@nb.njit(cache=True, nogil=True)
def live_ids(ids, dead, n):
    """In place: each row index ``i >= 0`` (below ``n``) of ``ids`` (a render's id image; live rows) becomes its
    index among the live rows, ``i - (dead rows below i)`` (``dead`` sorted ascending). O(1) a pixel: a bitmask of
    the dead rows per 64 rows and the dead rows below each 64 (a binary search over ~10^4 dead rows a pixel took
    ~2 ms of a 640x360 render)."""
    nc = (n >> 6) + 1
    mask = np.zeros(nc, np.uint64)
    for t in range(dead.shape[0]):
        d = dead[t]
        mask[d >> 6] |= np.uint64(1) << np.uint64(d & 63)
    before = np.empty(nc, np.int64)
    acc = 0
    for c in range(nc):
        before[c] = acc
        acc += _popcount64(mask[c])
    flat = ids.ravel()
    for p in range(flat.shape[0]):
        i = flat[p]
        if i < 0:
            continue
        c = i >> 6
        low = mask[c] & ((np.uint64(1) << np.uint64(i & 63)) - np.uint64(1))
        flat[p] = i - before[c] - _popcount64(low)


@nb.njit(cache=True, nogil=True)
def take_live(src, n, dead, dst):
    """``dst[:n - len(dead)]`` = rows ``[0, n)`` of ``src`` but ``dead`` (sorted ascending), in order: one copy per
    run of live rows. (numpy's boolean take of an [N, 3] array is many times slower than a copy, docs/BENCHMARKS.md
    "The prepared re-sort survives drops"; the dead rows may be scattered, one per dropped point.)"""
    t = 0
    nd = dead.shape[0]
    m = 0
    lo = 0
    while lo < n:
        hi = dead[t] if t < nd else n
        if hi > lo:
            dst[m : m + hi - lo] = src[lo:hi]
            m += hi - lo
        lo = hi + 1
        t += 1
    return m


@nb.njit(cache=True, nogil=True)
def decode_live_positions(keys, offsets, n, dead, voxel_size_m):
    """``decode_positions`` of the live rows below ``n`` (rows ``dead``, sorted ascending, left out), in order."""
    out = np.empty((n - dead.shape[0], 3), np.float64)
    t = 0
    m = 0
    nd = dead.shape[0]
    for p in range(n):
        if t < nd and dead[t] == p:
            t += 1
            continue
        x, y, z = decode_position(keys[p], offsets[p, 0], offsets[p, 1], offsets[p, 2], voxel_size_m)
        out[m, 0] = x
        out[m, 1] = y
        out[m, 2] = z
        m += 1
    return out


@nb.njit(cache=True, nogil=True)
def hash_remap(table, new_index_of_old):
    """After a permutation of the points: every stored index ``j`` becomes ``new_index_of_old[j]``."""
    for s in range(table.shape[0]):
        j = table[s]
        if j >= 0:
            table[s] = new_index_of_old[j]


@nb.njit(cache=True, nogil=True)
def hash_delete_keys(table, keys, query):
    """Take each key of ``query`` (present in the table, whose indices point into ``keys``) out of the table."""
    for t in range(query.shape[0]):
        _delete_slot(table, keys, _slot_of(table, keys, query[t]))


@nb.njit(cache=True, nogil=True)
def hash_insert_rows(table, keys, rows):
    """Insert the points ``rows`` (their keys absent from the table)."""
    for t in range(rows.shape[0]):
        hash_insert(table, keys[rows[t]], rows[t])


@nb.njit(cache=True, nogil=True)
def hash_lookup_many(table, keys, query):
    out = np.empty(query.shape[0], np.int64)
    for i in range(query.shape[0]):
        out[i] = hash_lookup(table, keys, query[i])
    return out


@nb.njit(cache=True, nogil=True)
def keys_in(values, keys):
    """``np.isin(values, keys)`` for int64 arrays: a hash set of ``keys`` (a power-of-two table at most half full,
    linear probing), one probe sequence per value, O(values + keys). The memory update asks it with a view's voxel
    set (~10^5 keys) against the few hundred keys one frame removed, where ``np.isin`` sorted both."""
    bits = 4
    while (1 << bits) < 2 * keys.shape[0]:
        bits += 1
    size = 1 << bits
    shift = np.uint64(64 - bits)  # multiplicative hashing: the product's top bits
    table = np.empty(size, np.int64)
    used = np.zeros(size, np.bool_)
    for t in range(keys.shape[0]):
        k = keys[t]
        s = np.int64((np.uint64(k) * _MIX1) >> shift)
        while used[s] and table[s] != k:
            s = (s + 1) & (size - 1)
        used[s] = True
        table[s] = k
    out = np.zeros(values.shape[0], np.bool_)
    for i in range(values.shape[0]):
        v = values[i]
        s = np.int64((np.uint64(v) * _MIX1) >> shift)
        while used[s]:
            if table[s] == v:
                out[i] = True
                break
            s = (s + 1) & (size - 1)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Keys, positions, blocks
# ---------------------------------------------------------------------------------------------------------------


@nb.njit(inline="always")
def decode_position(key, o0, o1, o2, voxel_size_m):
    """World position (float64 metres) of a stored point."""
    i = ((key >> (2 * KEY_BITS)) & KEY_MASK) - KEY_OFFSET
    j = ((key >> KEY_BITS) & KEY_MASK) - KEY_OFFSET
    k = (key & KEY_MASK) - KEY_OFFSET
    x = (np.float64(i) + (np.float64(o0) + 0.5) / 256.0) * voxel_size_m
    y = (np.float64(j) + (np.float64(o1) + 0.5) / 256.0) * voxel_size_m
    z = (np.float64(k) + (np.float64(o2) + 0.5) / 256.0) * voxel_size_m
    return x, y, z


@nb.njit(cache=True, nogil=True)
def decode_positions(keys, offsets, n, voxel_size_m):
    out = np.empty((n, 3), np.float64)
    for p in range(n):
        x, y, z = decode_position(keys[p], offsets[p, 0], offsets[p, 1], offsets[p, 2], voxel_size_m)
        out[p, 0] = x
        out[p, 1] = y
        out[p, 2] = z
    return out


@nb.njit(cache=True, nogil=True)
def sort_keys(keys, start, stop):
    out = np.empty(stop - start, np.int64)
    for i in range(stop - start):
        out[i] = sort_key(keys[start + i])
    return out


@nb.njit(cache=True, nogil=True)
def longest_sorted_prefix(keys, n):
    prev = -1
    for i in range(n):
        s = sort_key(keys[i])
        if s <= prev:
            return i
        prev = s
    return n


@nb.njit(cache=True, nogil=True, parallel=True)
def permute_rows(arr, order, scratch):
    """``arr[:len(order)] = arr[order]`` in place (through ``scratch``, >= len(order) rows of ``arr``'s type, which
    the caller shares between the point arrays: fresh pages cost the frame their faults) for a vector ``arr`` [N],
    rows in parallel: a numpy fancy gather of the five point arrays took ~85 ms at 1.5 M points, a pause of the frame
    being rendered. ``permute_rows3`` is the same for [N, 3] arrays."""
    n = order.shape[0]
    for i in nb.prange(n):
        scratch[i] = arr[order[i]]
    for i in nb.prange(n):
        arr[i] = scratch[i]


@nb.njit(cache=True, nogil=True, parallel=True)
def permute_rows3(arr, order, scratch):
    """``permute_rows`` for an [N, 3] array, element by element: a row assignment (``scratch[i] = arr[j]``) made a
    view per row and took 11x a vector's time (2.2 ms for [132 k, 3] uint8)."""
    n = order.shape[0]
    for i in nb.prange(n):
        src = order[i]
        scratch[i, 0] = arr[src, 0]
        scratch[i, 1] = arr[src, 1]
        scratch[i, 2] = arr[src, 2]
    for i in nb.prange(n):
        arr[i, 0] = scratch[i, 0]
        arr[i, 1] = scratch[i, 1]
        arr[i, 2] = scratch[i, 2]


@nb.njit(cache=True, nogil=True)
def gather_rows(src, order, dst):
    """``dst[i] = src[order[i]]`` for a vector (serial: it runs on the maintenance thread, beside the world's
    parallel kernels; ``permute_rows`` is the in-place, parallel version for the world thread)."""
    for i in range(order.shape[0]):
        dst[i] = src[order[i]]


@nb.njit(cache=True, nogil=True)
def gather_rows3(src, order, dst):
    """``gather_rows`` for [N, 3] arrays, element by element (see ``permute_rows3``)."""
    for i in range(order.shape[0]):
        j = order[i]
        dst[i, 0] = src[j, 0]
        dst[i, 1] = src[j, 1]
        dst[i, 2] = src[j, 2]


@nb.njit(cache=True, nogil=True)
def scatter_rows(src, rows, new_index, dst):
    """``dst[new_index[r]] = src[r]`` for each ``r`` in ``rows`` (a vector)."""
    for t in range(rows.shape[0]):
        r = rows[t]
        dst[new_index[r]] = src[r]


@nb.njit(cache=True, nogil=True)
def scatter_rows3(src, rows, new_index, dst):
    """``scatter_rows`` for [N, 3] arrays."""
    for t in range(rows.shape[0]):
        r = rows[t]
        k = new_index[r]
        dst[k, 0] = src[r, 0]
        dst[k, 1] = src[r, 1]
        dst[k, 2] = src[r, 2]


@nb.njit(cache=True, nogil=True)
def merge_order(keys, n_sorted, tail_order, tail_offset, dead):
    """Permutation (new position -> old index) merging the sorted prefix ``[0, n_sorted)`` but its rows ``dead``
    (sorted, all below ``n_sorted``) with the tail rows ``tail_order + tail_offset`` (in that order; the caller
    leaves the tail's dead rows out of it). A dead row's key may be back in a live row: leaving the dead ones out
    here orders the rest as a merge of every live row. (One output array: a filtered copy and a concatenation after
    it were two more fresh arrays of the points' size, whose page faults a re-sort on the frame's thread paid.)"""
    m = tail_order.shape[0]
    nd = dead.shape[0]
    total = n_sorted - nd + m
    out = np.empty(total, np.int64)
    d = 0
    a = 0
    while d < nd and dead[d] == a:
        a += 1
        d += 1
    b = 0
    sa = sort_key(keys[a]) if a < n_sorted else INT64_MAX
    sb = sort_key(keys[tail_order[0] + tail_offset]) if m > 0 else INT64_MAX
    for o in range(total):
        if sa < sb:
            out[o] = a
            a += 1
            while d < nd and dead[d] == a:
                a += 1
                d += 1
            sa = sort_key(keys[a]) if a < n_sorted else INT64_MAX
        else:
            out[o] = tail_order[b] + tail_offset
            b += 1
            sb = sort_key(keys[tail_order[b] + tail_offset]) if b < m else INT64_MAX
    return out


@nb.njit(cache=True, nogil=True)
def block_directory(keys, n):
    """For points sorted by sort key: (block ids [B], start indices [B + 1])."""
    ids = np.empty(n, np.int64)
    starts = np.empty(n + 1, np.int64)
    nb_ = 0
    prev = -1
    for i in range(n):
        b = sort_key(keys[i]) >> (3 * BLOCK_BITS)
        if b != prev:
            ids[nb_] = b
            starts[nb_] = i
            nb_ += 1
            prev = b
    starts[nb_] = n
    return ids[:nb_].copy(), starts[: nb_ + 1].copy()


@nb.njit(cache=True, nogil=True)
def _box_in_frustum(x0, y0, z0, sx, sy, sz, w2c_r, cam_t, fx, fy, cx, cy, width, height, margin_px, min_depth,
                    max_depth):
    """False when all 8 corners of the world box [x0, x0 + sx] x [y0, y0 + sy] x [z0, z0 + sz] lie outside one face
    of the (margin-grown) image frustum between the depth limits: nothing in the box can put a splat in view."""
    out = 0x3F  # bit i set: every corner so far is outside face i
    for c in range(8):
        px = x0 + sx * (c & 1) - cam_t[0]
        py = y0 + sy * ((c >> 1) & 1) - cam_t[1]
        pz = z0 + sz * ((c >> 2) & 1) - cam_t[2]
        xc = w2c_r[0, 0] * px + w2c_r[0, 1] * py + w2c_r[0, 2] * pz
        yc = w2c_r[1, 0] * px + w2c_r[1, 1] * py + w2c_r[1, 2] * pz
        zc = w2c_r[2, 0] * px + w2c_r[2, 1] * py + w2c_r[2, 2] * pz
        f = 0
        if zc < min_depth:
            f |= 1
        if zc > max_depth:
            f |= 2
        if fx * xc + (cx + margin_px) * zc < 0.0:  # u < -margin
            f |= 4
        if fx * xc + (cx - width - margin_px) * zc > 0.0:  # u > W + margin
            f |= 8
        if fy * yc + (cy + margin_px) * zc < 0.0:
            f |= 16
        if fy * yc + (cy - height - margin_px) * zc > 0.0:
            f |= 32
        out &= f
    return out == 0


@nb.njit(cache=True, nogil=True)
def cull_blocks(block_ids, w2c_r, cam_t, fx, fy, cx, cy, width, height, margin_px, min_depth, max_depth, voxel_size_m):
    """True for blocks whose box may put a splat inside the (margin-grown) image between the depth limits.

    Conservative: a block is dropped only when all 8 corners of its box lie outside one face of the frustum.
    """
    nb_ = block_ids.shape[0]
    keep = np.zeros(nb_, np.bool_)
    side = (1 << BLOCK_BITS) * voxel_size_m
    pad = 1e-3 * voxel_size_m  # float slack: decoded points lie strictly inside their voxel anyway
    cmask = (1 << BLOCK_COORD_BITS) - 1
    for b in range(nb_):
        blk = block_ids[b]
        bx = ((blk >> (2 * BLOCK_COORD_BITS)) & cmask) << BLOCK_BITS
        by = ((blk >> BLOCK_COORD_BITS) & cmask) << BLOCK_BITS
        bz = (blk & cmask) << BLOCK_BITS
        x0 = np.float64(bx - KEY_OFFSET) * voxel_size_m - pad
        y0 = np.float64(by - KEY_OFFSET) * voxel_size_m - pad
        z0 = np.float64(bz - KEY_OFFSET) * voxel_size_m - pad
        keep[b] = _box_in_frustum(x0, y0, z0, side + 2 * pad, side + 2 * pad, side + 2 * pad, w2c_r, cam_t, fx, fy,
                                  cx, cy, width, height, margin_px, min_depth, max_depth)
    return keep


TAIL_CHUNK = 256  # rows of the unsorted tail per culling box (a frame adds its new points as consecutive rows)


@nb.njit(cache=True, nogil=True)
def tail_chunk_boxes(keys, start, stop, chunk):
    """Voxel-coordinate bounding boxes of the rows ``[start, stop)`` in chunks of ``chunk`` rows: ``lo``, ``hi``
    ``[C, 3]`` int64 (inclusive, the keys' 21-bit fields per axis). Rows of the unsorted tail were appended frame
    by frame (and compaction moves only a few), so a chunk holds points of one region of space."""
    n_chunks = (stop - start + chunk - 1) // chunk
    lo = np.empty((n_chunks, 3), np.int64)
    hi = np.empty((n_chunks, 3), np.int64)
    for c in range(n_chunks):
        a = start + c * chunk
        b = min(a + chunk, stop)
        x0 = y0 = z0 = KEY_MASK
        x1 = y1 = z1 = np.int64(0)
        for i in range(a, b):
            k = keys[i]
            ux = (k >> (2 * KEY_BITS)) & KEY_MASK
            uy = (k >> KEY_BITS) & KEY_MASK
            uz = k & KEY_MASK
            x0 = min(x0, ux)
            x1 = max(x1, ux)
            y0 = min(y0, uy)
            y1 = max(y1, uy)
            z0 = min(z0, uz)
            z1 = max(z1, uz)
        lo[c, 0], lo[c, 1], lo[c, 2] = x0, y0, z0
        hi[c, 0], hi[c, 1], hi[c, 2] = x1, y1, z1
    return lo, hi


@nb.njit(cache=True, nogil=True)
def cull_voxel_boxes(lo, hi, w2c_r, cam_t, fx, fy, cx, cy, width, height, margin_px, min_depth, max_depth,
                     voxel_size_m):
    """``cull_blocks``' test for boxes of whole voxels ``lo..hi`` (inclusive voxel coordinates, ``[C, 3]``): True
    where the box may put a splat inside the (margin-grown) image between the depth limits (dropped only when all
    8 corners lie outside one face of the frustum)."""
    n = lo.shape[0]
    keep = np.zeros(n, np.bool_)
    pad = 1e-3 * voxel_size_m  # float slack: decoded points lie strictly inside their voxel anyway
    for b in range(n):
        x0 = np.float64(lo[b, 0] - KEY_OFFSET) * voxel_size_m - pad
        y0 = np.float64(lo[b, 1] - KEY_OFFSET) * voxel_size_m - pad
        z0 = np.float64(lo[b, 2] - KEY_OFFSET) * voxel_size_m - pad
        sx = np.float64(hi[b, 0] + 1 - lo[b, 0]) * voxel_size_m + 2 * pad
        sy = np.float64(hi[b, 1] + 1 - lo[b, 1]) * voxel_size_m + 2 * pad
        sz = np.float64(hi[b, 2] + 1 - lo[b, 2]) * voxel_size_m + 2 * pad
        keep[b] = _box_in_frustum(x0, y0, z0, sx, sy, sz, w2c_r, cam_t, fx, fy, cx, cy, width, height, margin_px,
                                  min_depth, max_depth)
    return keep


# ---------------------------------------------------------------------------------------------------------------
# Render
# ---------------------------------------------------------------------------------------------------------------


_IN_BLOCK_BITS = (BLOCK_MASK << (2 * KEY_BITS)) | (BLOCK_MASK << KEY_BITS) | BLOCK_MASK


@nb.njit(inline="always")
def block_camera_origin(key, voxel_size_m, w2c_r, cam_t):
    """Camera-frame position of the corner of ``key``'s culling block (float64 metres)."""
    bx = np.float64(((key >> (2 * KEY_BITS)) & KEY_MASK & ~BLOCK_MASK) - KEY_OFFSET) * voxel_size_m - cam_t[0]
    by = np.float64(((key >> KEY_BITS) & KEY_MASK & ~BLOCK_MASK) - KEY_OFFSET) * voxel_size_m - cam_t[1]
    bz = np.float64((key & KEY_MASK & ~BLOCK_MASK) - KEY_OFFSET) * voxel_size_m - cam_t[2]
    c0 = w2c_r[0, 0] * bx + w2c_r[0, 1] * by + w2c_r[0, 2] * bz
    c1 = w2c_r[1, 0] * bx + w2c_r[1, 1] * by + w2c_r[1, 2] * bz
    c2 = w2c_r[2, 0] * bx + w2c_r[2, 1] * by + w2c_r[2, 2] * bz
    return c0, c1, c2


@nb.njit(cache=True, parallel=True, nogil=True)
def render_points(
    keys, offsets, colors, range_start, range_stop, w2c_r, cam_t, fx, fy, cx, cy, width, height,
    voxel_size_m, min_depth, max_depth, splat_k, max_splat, depth_quant, zbuf,
):
    """Z-buffer the points in ``[range_start[r], range_stop[r])`` for all r.

    A point's camera-frame position is its block corner's (computed once per run of points in one block) plus
    ``step @ l`` with ``l`` its position inside the block in 1/256-voxel units: ~20% faster than decoding every
    point's world position, and the same arithmetic whether or not consecutive points share a block.

    Each of ``n_chunks`` parallel chunks owns a private buffer of packed ``(quantised depth << 32) | point id``
    (so one integer min keeps the nearest point, ties to the lower id, no atomics); the buffers are then reduced
    per pixel. Splat side ``s = clip(ceil(splat_k / z), 1, max_splat)`` pixels with ``splat_k = scale * d * f``,
    covering pixels ``floor(u - (s - 1) / 2) + 0..s-1`` (so s = 1 is the pixel containing (u, v)). The output depth
    is the z-buffer's: truncated to steps of ``1 / depth_quant`` metres (0.47 um for max_depth 1000 m).
    ``zbuf`` ``[n_chunks, H * W]`` int64 is scratch (its contents are ignored and overwritten): the caller keeps one
    per thread, since a fresh 1.8 MB buffer a frame (640x360) cost more page faults and zeroing than the splats.
    A splat of side 2 (most points of a room at 1-4 m) inside the image is written out, its minima without branches:
    the same winners as the loop, which took ~a third of the render in loop bounds and mispredicted compares. It is
    told by two compares before any other case (no ``ceil``, no clip), and a one-pixel splat takes its minimum
    without a branch too (docs/BENCHMARKS.md, session 33).
    Returns rgb [H, W, 3] uint8, depth [H, W] float32, valid [H, W] bool, ids [H, W] int32.
    """
    n_chunks = zbuf.shape[0]
    n_ranges = range_start.shape[0]
    step = w2c_r * (voxel_size_m / 256.0)  # camera-frame step of one 1/256-voxel offset along each world axis
    cum = np.zeros(n_ranges + 1, np.int64)
    for r in range(n_ranges):
        cum[r + 1] = cum[r] + range_stop[r] - range_start[r]
    total = cum[n_ranges]
    for c in nb.prange(n_chunks):
        zb = zbuf[c]
        for j in range(zb.shape[0]):  # a plain loop: numba lowers a slice assignment of a non-zero value to a
            zb[j] = INT64_MAX  # generic, slower loop (docs/BENCHMARKS.md, session 33)
        lo = total * c // n_chunks
        hi = total * (c + 1) // n_chunks
        if lo >= hi:
            continue
        r = np.searchsorted(cum, lo, side="right") - 1
        pos = lo
        while pos < hi:
            first = range_start[r] + (pos - cum[r])
            last = range_start[r] + (min(hi, cum[r + 1]) - cum[r])
            prev_block = np.int64(-1)
            b0 = 0.0
            b1 = 0.0
            b2 = 0.0
            for i in range(first, last):
                # camera point = block corner (once per block) + step * in-block position in 1/256 voxels
                key = keys[i]
                blk = key & ~_IN_BLOCK_BITS
                if blk != prev_block:
                    b0, b1, b2 = block_camera_origin(key, voxel_size_m, w2c_r, cam_t)
                    prev_block = blk
                lx = np.float64((((key >> (2 * KEY_BITS)) & BLOCK_MASK) << 8) | offsets[i, 0]) + 0.5
                ly = np.float64((((key >> KEY_BITS) & BLOCK_MASK) << 8) | offsets[i, 1]) + 0.5
                lz = np.float64(((key & BLOCK_MASK) << 8) | offsets[i, 2]) + 0.5
                xc = b0 + step[0, 0] * lx + step[0, 1] * ly + step[0, 2] * lz
                yc = b1 + step[1, 0] * lx + step[1, 1] * ly + step[1, 2] * lz
                zc = b2 + step[2, 0] * lx + step[2, 1] * ly + step[2, 2] * lz
                if zc < min_depth or zc > max_depth:
                    continue
                inv_z = 1.0 / zc
                u = fx * xc * inv_z + cx
                v = fy * yc * inv_z + cy
                packed = (np.int64(zc * depth_quant) << 32) | i
                sf = splat_k * inv_z
                if sf > 1.0 and sf <= 2.0 and max_splat >= 2:
                    # side 2 (ceil(sf) == 2, most points of a room at 1-4 m): tested first, by compares, its
                    # half side 0.5 as a constant (the same floats as the general case below)
                    x0 = np.int64(np.floor(u - 0.5))
                    y0 = np.int64(np.floor(v - 0.5))
                    if x0 >= 0 and y0 >= 0 and x0 + 2 <= width and y0 + 2 <= height:
                        p = y0 * width + x0
                        zb[p] = min(zb[p], packed)
                        zb[p + 1] = min(zb[p + 1], packed)
                        zb[p + width] = min(zb[p + width], packed)
                        zb[p + width + 1] = min(zb[p + width + 1], packed)
                        continue
                if sf <= 1.0:  # the common far case: one pixel, no loops
                    if u >= 0.0 and v >= 0.0 and u < width and v < height:
                        p = np.int64(v) * width + np.int64(u)
                        zb[p] = min(zb[p], packed)
                    continue
                s = np.int64(np.ceil(sf))
                if s > max_splat:
                    s = max_splat
                half = (s - 1) * 0.5
                fu = np.floor(u - half)
                fv = np.floor(v - half)
                if fu >= width or fv >= height or fu + s <= 0 or fv + s <= 0:
                    continue
                x0 = np.int64(fu)
                y0 = np.int64(fv)
                for yy in range(max(y0, 0), min(y0 + s, height)):
                    row = yy * width
                    for xx in range(max(x0, 0), min(x0 + s, width)):
                        if packed < zb[row + xx]:
                            zb[row + xx] = packed
            pos += last - first
            r += 1
    rgb = np.empty((height, width, 3), np.uint8)  # (every pixel is written below)
    depth = np.empty((height, width), np.float32)
    valid = np.empty((height, width), np.bool_)
    ids = np.empty((height, width), np.int32)
    inv_quant = 1.0 / depth_quant
    for y in nb.prange(height):
        for x in range(width):
            p = y * width + x
            best = zbuf[0, p]
            for c in range(1, n_chunks):
                if zbuf[c, p] < best:
                    best = zbuf[c, p]
            if best == INT64_MAX:
                depth[y, x] = 0.0
                rgb[y, x, 0] = 0
                rgb[y, x, 1] = 0
                rgb[y, x, 2] = 0
                valid[y, x] = False
                ids[y, x] = -1
                continue
            i = best & 0xFFFFFFFF
            depth[y, x] = np.float32((best >> 32) * inv_quant)  # quantisation step 1 / depth_quant (< 1 um)
            rgb[y, x, 0] = colors[i, 0]
            rgb[y, x, 1] = colors[i, 1]
            rgb[y, x, 2] = colors[i, 2]
            valid[y, x] = True
            ids[y, x] = i
    return rgb, depth, valid, ids


@nb.njit(cache=True, nogil=True)
def mark_ids(ids, n):
    """Sorted unique non-negative ids in ``ids`` (a bitmap pass: O(n + pixels), no sort)."""
    seen = np.zeros(n, np.bool_)
    flat = ids.ravel()
    count = 0
    for p in range(flat.shape[0]):
        i = flat[p]
        if i >= 0 and not seen[i]:
            seen[i] = True
            count += 1
    out = np.empty(count, np.int64)
    k = 0
    for i in range(n):
        if seen[i]:
            out[k] = i
            k += 1
    return out


@nb.njit(cache=True, nogil=True)
def mark_provenance(index, table, value, out):
    """``out[p] = index[p] >= 0 and table[index[p]] == value`` over a render's pixels (``index`` [H, W] int32 point
    ids or rows, -1 where nothing rendered; ``table`` uint8 provenance by the same index): numpy's
    ``maximum``, gather, compare and ``&`` made four passes and two temporaries of it."""
    flat = index.ravel()
    dst = out.ravel()
    for p in range(flat.shape[0]):
        i = flat[p]
        dst[p] = i >= 0 and table[i] == value


@nb.njit(cache=True, nogil=True)
def rendered_keys(ids, n, keys, dead):
    """``keys[rows of the distinct non-negative ids in ids]`` in id order: a render's view-specific voxel set from
    its live point indices ``ids`` (``dead``: sorted dead rows; row of live id i = i + dead rows below it). Returns
    an empty array and the offending id if one is ``>= n`` (else -1).

    The ids are marked in a bitmap of ``n`` bits, not bytes: at 10^6 points it is 125 kB, which stays in cache for
    the pixels' random writes, and the read-out skips 64 ids at a time where none was rendered (``mark_ids``'s
    byte-per-point pass read every point). The rows come from one merge walk over ``dead`` alongside the sorted
    ids, and the keys are gathered in the same loop (no index arrays in between)."""
    nw = (n >> 6) + 1
    bits = np.zeros(nw, np.uint64)
    flat = ids.ravel()
    one = np.uint64(1)
    for p in range(flat.shape[0]):
        i = flat[p]
        if i >= 0:
            if i >= n:
                return np.zeros(0, np.int64), np.int64(i)
            bits[i >> 6] |= one << np.uint64(i & 63)
    count = 0
    for c in range(nw):
        count += _popcount64(bits[c])
    out = np.empty(count, np.int64)
    k = 0
    d = 0
    nd = dead.shape[0]
    for c in range(nw):
        w = bits[c]
        while w != 0:
            low = w & (~w + one)
            i = np.int64(c << 6) + _popcount64(low - one)
            w ^= low
            while d < nd and dead[d] <= i + d:
                d += 1
            out[k] = keys[i + d]
            k += 1
    return out, np.int64(-1)


# ---------------------------------------------------------------------------------------------------------------
# Integrate
# ---------------------------------------------------------------------------------------------------------------


@nb.njit(inline="always")
def _quantize(x, inv_d):
    """Voxel coordinate and in-voxel offset level of one world coordinate (status False when out of range)."""
    q = x * inv_d
    c = np.floor(q)
    o = np.int64((q - c) * 256.0)
    if o > 255:
        o = 255
    if o < 0:
        o = 0
    ok = c >= -KEY_OFFSET and c < KEY_OFFSET
    return np.int64(c) if ok else np.int64(0), o, ok


_PENDING = -4  # frame_samples: a sample whose key still has to be looked up
_SAME_AS = -5  # frame_samples: a sample in the same voxel as the row's previous sample


@nb.njit(inline="always")
def _slot_from(table, keys, key, s):
    """Continue a linear probe at slot ``s``: the slot holding ``key`` or -1."""
    cap = table.shape[0]
    while True:
        j = table[s]
        if j < 0:
            return -1
        if keys[j] == key:
            return s
        s += 1
        if s == cap:
            s = 0


@nb.njit(inline="always")
def _probe_from(table, keys, key, s):
    """Continue a linear probe at slot ``s``: point index of ``key`` or -1."""
    slot = _slot_from(table, keys, key, s)
    return table[slot] if slot >= 0 else -1


@nb.njit(cache=True, parallel=True, nogil=True)
def frame_samples(depth, exclude, use_exclude, rgb, c2w_r, cam_t, fx, fy, cx, cy, inv_d, max_depth, table, keys):
    """The pixels to integrate, row-major: voxel key, offsets, colour and status (-3 out of range, -1 new, >= 0
    found) of each pixel with a known depth that is not excluded; skipped pixels get no sample at all.

    Compact: a keyframe's view is mostly pixels the memory already shows (excluded), and an [H * W] sample list
    of them cost more to fill and to skip in ``merge_samples`` than the few samples merged. A first pass counts
    each row's samples (serially: one parallel region a call, as before, since each region's fork and join can wait
    for a descheduled thread on a busy machine), so every row writes its own part of the output in parallel, in
    the same order as before.
    Look-ups run per row in passes (home slots, then the first probe of every sample, then the key checks) so
    that the random loads of one pass are independent and the CPU overlaps their cache misses; in one loop each
    probe waited for the previous one's branch.
    """
    h, w = depth.shape
    cap = table.shape[0]
    row_start = np.zeros(h + 1, np.int64)
    # the first pass also lists each sample's column (row-major), so the second reads only the samples: a keyframe's
    # samples are its few hole pixels, and a second scan of every pixel (and scratch for empty rows) cost as much
    # as the samples themselves
    cols = np.empty(h * w, np.int32)
    for y in range(h):
        c = row_start[y]
        for x in range(w):
            z = np.float64(depth[y, x])
            cols[c] = x
            c += z > 0.0 and z <= max_depth and not (use_exclude and exclude[y, x])
        row_start[y + 1] = c
    total = row_start[h]
    out_keys = np.zeros(total, np.int64)
    out_offs = np.zeros((total, 3), np.uint8)
    out_rgb = np.empty((total, 3), np.uint8)
    out_idx = np.full(total, -2, np.int64)
    for y in nb.prange(h):
        yn = (y + 0.5 - cy) / fy
        row = row_start[y]
        m = row_start[y + 1] - row
        if m == 0:
            continue
        slots = np.empty(m, np.int64)
        first = np.empty(m, np.int64)
        prev_key = np.int64(-1)
        for p in range(row, row + m):  # a known depth (not NaN, inf, zero, negative), not excluded
            x = np.int64(cols[p])
            z = np.float64(depth[y, x])
            out_rgb[p, 0] = rgb[y, x, 0]
            out_rgb[p, 1] = rgb[y, x, 1]
            out_rgb[p, 2] = rgb[y, x, 2]
            xn = (x + 0.5 - cx) / fx
            xcam = xn * z
            ycam = yn * z
            wx = c2w_r[0, 0] * xcam + c2w_r[0, 1] * ycam + c2w_r[0, 2] * z + cam_t[0]
            wy = c2w_r[1, 0] * xcam + c2w_r[1, 1] * ycam + c2w_r[1, 2] * z + cam_t[1]
            wz = c2w_r[2, 0] * xcam + c2w_r[2, 1] * ycam + c2w_r[2, 2] * z + cam_t[2]
            ci, oi, ok0 = _quantize(wx, inv_d)
            cj, oj, ok1 = _quantize(wy, inv_d)
            ck, ok, ok2 = _quantize(wz, inv_d)
            if not (ok0 and ok1 and ok2):
                out_idx[p] = -3
                continue
            key = ((ci + KEY_OFFSET) << (2 * KEY_BITS)) | ((cj + KEY_OFFSET) << KEY_BITS) | (ck + KEY_OFFSET)
            out_keys[p] = key
            out_offs[p, 0] = oi
            out_offs[p, 1] = oj
            out_offs[p, 2] = ok
            # close up, neighbouring pixels share a voxel: look it up once
            out_idx[p] = _SAME_AS if key == prev_key else _PENDING
            prev_key = key
        for j in range(m):
            if out_idx[row + j] == _PENDING:
                slots[j] = _slot(out_keys[row + j], cap)
        for j in range(m):
            if out_idx[row + j] == _PENDING:
                first[j] = table[slots[j]]
        last = np.int64(-1)
        for j in range(m):
            p = row + j
            st = out_idx[p]
            if st == _PENDING:
                i = first[j]
                if i >= 0 and keys[i] != out_keys[p]:
                    s1 = slots[j] + 1
                    i = _probe_from(table, keys, out_keys[p], 0 if s1 == cap else s1)
                out_idx[p] = i
                last = i
            elif st == _SAME_AS:
                out_idx[p] = last
    return out_keys, out_offs, out_rgb, out_idx


@nb.njit(cache=True, nogil=True)
def point_samples(points, inv_d, table, keys):
    """Like ``frame_samples`` for explicit world points ``[N, 3]`` float64 (all finite). Serial: a parallel loop
    cost ~5 s more numba compile time, and point batches are edits or tests, not the per-frame path."""
    n = points.shape[0]
    out_keys = np.zeros(n, np.int64)
    out_offs = np.zeros((n, 3), np.uint8)
    out_idx = np.full(n, -2, np.int64)
    for p in range(n):
        ci, oi, ok0 = _quantize(points[p, 0], inv_d)
        cj, oj, ok1 = _quantize(points[p, 1], inv_d)
        ck, ok, ok2 = _quantize(points[p, 2], inv_d)
        if not (ok0 and ok1 and ok2):
            out_idx[p] = -3
            continue
        key = ((ci + KEY_OFFSET) << (2 * KEY_BITS)) | ((cj + KEY_OFFSET) << KEY_BITS) | (ck + KEY_OFFSET)
        out_keys[p] = key
        out_offs[p, 0] = oi
        out_offs[p, 1] = oj
        out_offs[p, 2] = ok
        out_idx[p] = hash_lookup(table, keys, key)
    return out_keys, out_offs, out_idx


MAX_MEAN_WEIGHT = 4096  # bound on MemoryConfig.max_mean_weight that keeps the reciprocal division below exact
_RECIP_SHIFT = 35  # numerators < 2**21 and divisors < 2**14: shift n + l = 21 + 14 (Granlund-Montgomery)


@nb.njit(inline="always")
def _running_mean(old, sample, w, recip):
    """Round-half-up of ``(old * w + sample) / (w + 1)`` in integers, i.e. ``(2 (old w + s) + w + 1) // (2 (w + 1))``.

    The floor division is a multiply-shift by ``recip = 2**35 // (2 (w + 1)) + 1``, exact for numerators below
    2**21 (uint8 values with w <= 4096), so one division per sample serves all six channels.
    """
    return (np.int64(2 * (old * w + sample) + (w + 1)) * recip) >> _RECIP_SHIFT


@nb.njit(cache=True, nogil=True)
def merge_samples(
    s_keys, s_offs, s_rgb, s_idx, start, frame_index, weight_cap,
    keys, offsets, colors, counts, last_seen, table, n, n_before, touched, refresh_existing,
):
    """Fold samples ``start..`` in order into the memory; stops early when the point arrays are full.
    With ``refresh_existing`` False, points that existed before this batch keep their colour and position (only
    their count and last-seen frame move): new content may add points, never repaint remembered ones.

    Returns (next sample to process, new point count n, points created, distinct pre-existing points updated, the
    read-ahead sum: unused, it keeps those loads from being optimised away).
    """
    cap = keys.shape[0]
    created = 0
    updated = 0
    i = start
    # the home slots of the next chunk's look-ups, computed and read ahead (their cache misses overlap; the value
    # read is not used), as ``_insert_rows_ahead``
    ahead = np.empty(_INSERT_CHUNK, np.int64)
    chunk_start = i
    chunk_stop = i
    touch = 0
    while i < s_keys.shape[0]:
        if i >= chunk_stop:
            chunk_start = i
            chunk_stop = min(i + _INSERT_CHUNK, s_keys.shape[0])
            for t in range(chunk_start, chunk_stop):
                if s_idx[t] == -1:
                    ahead[t - chunk_start] = _slot(s_keys[t], table.shape[0])
            for t in range(chunk_start, chunk_stop):
                if s_idx[t] == -1:
                    touch += table[ahead[t - chunk_start]]
        j = s_idx[i]
        if j == -2:
            i += 1
            continue
        key = s_keys[i]
        if j == -1:
            # an earlier sample of this batch may have created it; else it goes into the empty slot that ended the
            # probe, where ``hash_insert`` would put it (one probe sequence instead of two, the same table)
            slot = ahead[i - chunk_start]
            while True:
                j = table[slot]
                if j < 0 or keys[j] == key:
                    break
                slot += 1
                if slot == table.shape[0]:
                    slot = 0
            if j < 0:
                if n == cap:
                    return i, n, created, updated, touch
                j = n
                n += 1
                keys[j] = key
                offsets[j, 0] = s_offs[i, 0]
                offsets[j, 1] = s_offs[i, 1]
                offsets[j, 2] = s_offs[i, 2]
                colors[j, 0] = s_rgb[i, 0]
                colors[j, 1] = s_rgb[i, 1]
                colors[j, 2] = s_rgb[i, 2]
                counts[j] = 1
                last_seen[j] = frame_index
                table[slot] = j
                created += 1
                i += 1
                continue
        c = np.int64(counts[j])
        if refresh_existing or j >= n_before:
            w = min(c, weight_cap)
            recip = (np.int64(1) << _RECIP_SHIFT) // (2 * (w + 1)) + 1
            for a in range(3):
                colors[j, a] = _running_mean(np.int64(colors[j, a]), np.int64(s_rgb[i, a]), w, recip)
                offsets[j, a] = _running_mean(np.int64(offsets[j, a]), np.int64(s_offs[i, a]), w, recip)
        counts[j] = min(c + 1, MAX_COUNT)
        if frame_index > last_seen[j]:
            last_seen[j] = frame_index
        if j < n_before and not touched[j]:
            touched[j] = True
            updated += 1
        i += 1
    return i, n, created, updated, touch


@nb.njit(cache=True, nogil=True)
def box_candidates(keys, prov, last, n, n_sorted, block_ids, block_starts, tail_lo, tail_hi, lo0, lo1, lo2, hi0, hi1,
                   hi2, observed, min_last_seen):
    """Indices (ascending) of points ``< n`` whose voxel (i, j, k) lies in ``[lo, hi]`` (inclusive, voxel units),
    whose provenance is neither ``observed`` nor ``DEAD`` and whose last-seen frame is at least ``min_last_seen``:
    integer work on the keys only, no position decoding. With a last-seen floor (the points a clip just touched:
    ~1 % of them) one pass reads ``last`` and looks further only where it passes; without one, the block-sorted prefix
    ``[0, n_sorted)`` (``block_ids`` / ``block_starts``, ``block_directory``) is read only in the blocks that meet
    the box (a pose's 1 m box: a few hundred of ~10^4 blocks), and the unsorted tail only in the chunks of
    ``TAIL_CHUNK`` rows whose voxel box (``tail_lo`` / ``tail_hi``, ``tail_chunk_boxes`` of ``[n_sorted, n)``) meets
    it; given no chunk boxes (or not one per chunk), the tail is read whole."""
    out = np.empty(max(n, 1), np.int64)
    m = 0
    if min_last_seen > np.iinfo(np.int32).min:
        for p in range(n):
            if last[p] >= min_last_seen and _in_box(keys[p], prov[p], lo0, lo1, lo2, hi0, hi1, hi2, observed):
                out[m] = p
                m += 1
        return out[:m]
    side = 1 << BLOCK_BITS
    cmask = (1 << BLOCK_COORD_BITS) - 1
    for b in range(block_ids.shape[0]):
        blk = block_ids[b]
        bi = (((blk >> (2 * BLOCK_COORD_BITS)) & cmask) << BLOCK_BITS) - KEY_OFFSET
        bj = (((blk >> BLOCK_COORD_BITS) & cmask) << BLOCK_BITS) - KEY_OFFSET
        bk = ((blk & cmask) << BLOCK_BITS) - KEY_OFFSET
        if (bi + side - 1 < lo0 or bi > hi0 or bj + side - 1 < lo1 or bj > hi1 or bk + side - 1 < lo2
                or bk > hi2):
            continue
        for p in range(block_starts[b], block_starts[b + 1]):
            if _in_box(keys[p], prov[p], lo0, lo1, lo2, hi0, hi1, hi2, observed):
                out[m] = p
                m += 1
    n_chunks = (n - n_sorted + TAIL_CHUNK - 1) // TAIL_CHUNK
    if tail_lo.shape[0] != n_chunks or tail_hi.shape[0] != n_chunks:
        for p in range(n_sorted, n):
            if _in_box(keys[p], prov[p], lo0, lo1, lo2, hi0, hi1, hi2, observed):
                out[m] = p
                m += 1
        return out[:m]
    for c in range(n_chunks):  # (the chunk boxes hold the keys' fields: coordinate + KEY_OFFSET)
        if (tail_hi[c, 0] < lo0 + KEY_OFFSET or tail_lo[c, 0] > hi0 + KEY_OFFSET
                or tail_hi[c, 1] < lo1 + KEY_OFFSET or tail_lo[c, 1] > hi1 + KEY_OFFSET
                or tail_hi[c, 2] < lo2 + KEY_OFFSET or tail_lo[c, 2] > hi2 + KEY_OFFSET):
            continue
        for p in range(n_sorted + c * TAIL_CHUNK, min(n_sorted + (c + 1) * TAIL_CHUNK, n)):
            if _in_box(keys[p], prov[p], lo0, lo1, lo2, hi0, hi1, hi2, observed):
                out[m] = p
                m += 1
    return out[:m]


@nb.njit(inline="always")
def _in_box(key, prov, lo0, lo1, lo2, hi0, hi1, hi2, observed):
    if prov == observed or prov == DEAD:
        return False
    i = ((key >> (2 * KEY_BITS)) & KEY_MASK) - KEY_OFFSET
    if i < lo0 or i > hi0:
        return False
    j = ((key >> KEY_BITS) & KEY_MASK) - KEY_OFFSET
    if j < lo1 or j > hi1:
        return False
    k = (key & KEY_MASK) - KEY_OFFSET
    return lo2 <= k <= hi2


@nb.njit(cache=True, nogil=True)
def log_block_keys(keys, block_bits):
    """``worldlog``'s canonical key of each voxel key (``worldlog._canonical_keys``, the numpy twin): block (cubes
    of ``2**block_bits`` voxels) then voxel in block, in one pass without the GIL. The autosave sorts a whole
    memory by it on its saver thread; the numpy version's dozen [N] int64 temporaries were most of a save's split."""
    n = keys.shape[0]
    out = np.empty(n, np.int64)
    b = KEY_BITS - block_bits
    m = (1 << block_bits) - 1
    for i in range(n):
        k = keys[i]
        x = (k >> (2 * KEY_BITS)) & KEY_MASK
        y = (k >> KEY_BITS) & KEY_MASK
        z = k & KEY_MASK
        block = ((x >> block_bits) << (2 * b)) | ((y >> block_bits) << b) | (z >> block_bits)
        local = ((x & m) << (2 * block_bits)) | ((y & m) << block_bits) | (z & m)
        out[i] = (block << (3 * block_bits)) | local
    return out


@nb.njit(cache=True, nogil=True)
def log_block_starts(canon, order, block_bits):
    """For canonical keys ``canon`` visited in sorted ``order``: (the first position of each block, its block id),
    the block being ``canon >> 3 * block_bits``."""
    n = order.shape[0]
    starts = np.empty(n, np.int64)
    ids = np.empty(n, np.int64)
    m = 0
    prev = -1
    for i in range(n):
        b = canon[order[i]] >> (3 * block_bits)
        if i == 0 or b != prev:
            starts[m] = i
            ids[m] = b
            m += 1
            prev = b
    return starts[:m], ids[:m]


@nb.njit(cache=True, nogil=True)
def take_rows(arr, order):
    """``arr[order]`` of a vector, serial and without the GIL (the autosave's gather on its saver thread)."""
    out = np.empty(order.shape[0], arr.dtype)
    for i in range(order.shape[0]):
        out[i] = arr[order[i]]
    return out


@nb.njit(cache=True, nogil=True)
def take_rows2(arr, order):
    """``take_rows`` of an [N, C] array, element by element (a row assignment makes a view per row)."""
    c = arr.shape[1]
    out = np.empty((order.shape[0], c), arr.dtype)
    for i in range(order.shape[0]):
        src = order[i]
        for j in range(c):
            out[i, j] = arr[src, j]
    return out


# ``worldlog.MemoryBlocks.fingerprints``: two 64-bit multiply-xorshift lanes per block (128 bits), a save's test
# for "this block is what the log holds" before it spends a BLAKE2 digest on it
_FP_MUL_A = np.uint64(0x9E3779B97F4A7C15)
_FP_MUL_B = np.uint64(0xC2B2AE3D27D4EB4F)


@nb.njit(cache=True, nogil=True, inline="always")
def _fp_mix(h, v, mul):
    h = (h ^ v) * mul
    return h ^ (h >> np.uint64(29))


@nb.njit(cache=True, nogil=True)
def block_fingerprints(values, starts, stops, salt, out):
    """Fold rows ``starts[b]:stops[b]`` of ``values`` ([N, C] unsigned integers: one memory array, rows in block
    order) into ``out[b]`` ([B, 2] uint64, in place): each lane takes the array's ``salt``, the block's row count,
    then the elements in row-major order packed into 64-bit words (``64 // bits`` of them a word, a row's last word
    padded with zeros: rows of 3 uint8 are one word each) and mixed word by word. ``worldlog.reference_fingerprints``
    is the plain-Python twin."""
    c = values.shape[1]
    bits = values.itemsize * 8
    per_word = 64 // bits
    for b in range(starts.shape[0]):
        ha = _fp_mix(out[b, 0], salt, _FP_MUL_A)
        hb = _fp_mix(out[b, 1], salt ^ np.uint64(0x5555555555555555), _FP_MUL_B)
        n = np.uint64(stops[b] - starts[b])
        ha = _fp_mix(ha, n, _FP_MUL_A)
        hb = _fp_mix(hb, n, _FP_MUL_B)
        for i in range(starts[b], stops[b]):
            j = 0
            while j < c:
                m = min(per_word, c - j)
                word = np.uint64(0)
                for q in range(m):
                    word = word | (np.uint64(values[i, j + q]) << np.uint64(q * bits))
                j += m
                ha = _fp_mix(ha, word, _FP_MUL_A)
                hb = _fp_mix(hb, word, _FP_MUL_B)
        out[b, 0] = ha
        out[b, 1] = hb
