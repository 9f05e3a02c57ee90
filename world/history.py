"""The frame history: every frame the world has shown, with its pose, and the view-specific voxel sets.

Paper Sec. 3.1.1-3.1.2: the candidate frames ``{C}^O`` are the frames generated so far, each with its camera pose
and its *view-specific scene point cloud* ``S_C`` (the part of the scene point cloud that the view sees). We keep
that point cloud as a set of voxel keys (``world.geometry`` packing, cube side ``d``); the caller computes it
(e.g. ``SpatialMemory.visible_voxel_keys`` or ``world.geometry.voxel_keys`` of the unprojected depth).

What is stored per frame (``frame_index`` = position in the store, 0-based, in the order of ``add``):
- the image, compressed (JPEG quality 95 or lossless PNG) on the "history-encoder" thread (``world._threads``),
  decoded on demand through a small LRU;
- optional depth, compressed (float16 + zstd, lossless float32 + zstd, or 16-bit PNG millimetres);
- ``c2w`` (OpenCV camera, world frame, float64), intrinsics and a timestamp, in growing arrays (hot paths read
  all poses at once);
- the voxel set, as int32 column ids into one shared key table (``VoxelSetIndex``), which also keeps an inverted
  index (voxel -> runs of consecutive frames that see it) so that overlap queries touch only the frames that
  share voxels with the query.

Not thread-safe: the engine adds frames and queries from one thread (or holds a lock around both).
"""

from __future__ import annotations

import functools
import time
import os
import struct
import tempfile
import threading
import zlib
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spatia.world._threads import background
from spatia.world.camera import Intrinsics, validate_pose
from spatia.world.errors import ImageDecodeError, InvalidInputError, NotFoundError, SnapshotError
from spatia.world.geometry import KEY_BITS, KEY_MASK, KEY_OFFSET

SNAPSHOT_VERSION = 1
_IMAGE_CODECS = ("jpeg", "png")
_DEPTH_CODECS = ("float16_zstd", "float32_zstd", "png_mm")
_EMPTY_KEY = -1  # hash-table sentinel; packed voxel keys are >= 0 (``world.geometry`` offsets every axis)
# The retrieval index is rebuilt without the dropped sets only once they hold more voxels than this (a few
# keyframes' sets), whatever ``HistoryConfig.compact_rebuild_dead_ratio`` says: a tiny index is not worth a rebuild.
REBUILD_MIN_VOXELS = 1 << 16
_FRAME_MAGIC = b"SPF1"
_FRAME_HEADER = struct.Struct("<4sII")  # magic, payload length, crc32 of the payload
_HASH_MULT = 0x9E3779B97F4A7C15  # Fibonacci hashing: 2**64 / golden ratio, spreads packed keys evenly
# A column table of this many slots or more is built on the "history-maintenance" thread once 25 % more keys, or
# TABLE_AHEAD_FRAMES more frames adding as many columns as the recent ones, would need it
# (``VoxelSetIndex._prepare_table``): a table is sized for every key of a frame being new (~2 x 10^5 keys with
# repeats at 640x360), so a 640x360 history's second table has 2 M slots (34 MB) at only ~66 k columns, and
# building it on the spot (mostly filling those 34 MB) paused the memory update 45 ms on a quiet machine, 331-581 ms
# with four worlds on two cores (docs/BENCHMARKS.md, "Stalls off the frame path"). A smaller table is built on the
# spot in a few ms.
TABLE_AHEAD_MIN_SLOTS = 1 << 18
TABLE_AHEAD_FRAMES = 3
TABLE_AHEAD_DECAY = 0.75  # per frame: the columns a frame adds, as ``_prepare_table`` expects them
GROWING_AHEAD_MIN_BYTES = 1 << 22  # ``GrowingRows``: smaller buffers grow on the spot (a copy of < 4 MB, ~1 ms)
# From this many runs (sealed + unsealed) on, ``VoxelSetIndex.add`` merges the closed runs into the by-column index
# on the "history-maintenance" thread (``seal`` is O(runs): 11-15 ms at ~3 M runs on a quiet machine, 77-138 ms
# with four worlds on two cores: docs/BENCHMARKS.md); queries scan the runs not merged yet meanwhile.
SEAL_AHEAD_MIN_RUNS = 1 << 20


@dataclass(frozen=True)
class HistoryConfig:
    """How frames are kept. Defaults favour fidelity (JPEG 95 is visually lossless) and a fast hot path."""

    image_codec: str = "jpeg"  # "jpeg" (lossy, ~10x smaller) or "png" (lossless)
    jpeg_quality: int = 95
    png_compression: int = 1  # 0-9; 1: fast (frames are encoded on a background thread, still while play goes on)
    depth_codec: str = "float16_zstd"  # "float16_zstd" (~0.05 % relative error), "float32_zstd" (exact), "png_mm"
    zstd_level: int = 3
    decoded_cache_frames: int = 32  # LRU of decoded images / depth maps (a 1248x704 RGB frame is 2.6 MB)
    # Runs closed since the last seal are scanned linearly by every query; they are merged into the by-voxel index
    # once there are this many and at least half the indexed runs (so merges cost O(1) amortised per run, and
    # each O(runs) merge, a pause of the frame being made, comes ~4x less often than at 1/8).
    index_tail_runs: int = 1 << 18
    # View-specific voxel sets are kept at cubes of side d * 2**voxel_set_levels (d: the memory's voxel, 1 cm):
    # ``add`` and ``query_voxel_set`` coarsen the keys they are given. The paper does not say at what resolution
    # Algorithm 1's IoU is taken; the official code compares front-most memory points at its render voxel, which it
    # coarsens by 5 mm each round. Measured on a 640x360 view after a 10 s walk (the memory then reaches 12 m
    # away, where a pixel is wider than d): 216k memory keys -> 125k at 4 cm, 44k at 8 cm, 13k at 16 cm; near
    # room-scale views shrink far more. At 8 cm the cost of indexing each frame, of each retrieval query and the
    # history's size drop ~5x, while views that share a surface still share its cubes. 0 keeps sets at d
    # (snapshots written before this field load with 0).
    voxel_set_levels: int = 3
    # Compaction of the retrieval index (a path that revisits must not grow it without bound). Keyframes (frames
    # with a non-empty voxel set) fall into pose cells: camera centre on a ``compact_cell_m`` grid and viewing
    # direction in ``compact_angle_deg`` bins of yaw and pitch. A new keyframe drops an older one of its cell from
    # the index when their voxel sets overlap by IoU >= ``compact_min_iou`` (the older view is redundant: it sees
    # what the newer one sees), and a cell keeps at most ``compact_max_views`` indexed views (``compact_evict``
    # says which goes), so the index is bounded by the cells a path covers, not by its length. Dropped frames stay
    # in the history (images and poses are still read), they are no longer retrieval candidates. 0 cell size: no
    # compaction.
    compact_cell_m: float = 0.5
    compact_angle_deg: float = 30.0
    compact_min_iou: float = 0.9
    # 6, not 8: on the soak's revisiting loop, the 6 views of a cell that differ most from each other (see
    # ``compact_evict``) are retrieved as well as 8 were, from a smaller index walked by every query; fewer lose the
    # loop's phases (docs/BENCHMARKS.md, "Long sessions ..." of session 11, engineer soak).
    compact_max_views: int = 6
    # Dropped views' sets stay in the index (in its memory and in every query's walk over the runs) until a rebuild,
    # which comes once they hold more than this fraction of the live sets' voxels. A rebuild costs O(live voxels +
    # frames), so a ratio r makes it cost O(1/r) amortised per dropped voxel, while the index holds at most
    # (1 + r) x its live part: 1.0 let it swing between 1x and 2x over a session, 0.25 keeps it within 1.25x for
    # 4x the rebuild work (one compiled pass, ``VoxelSetIndex.from_arrays``).
    compact_rebuild_dead_ratio: float = 0.25
    # Which view a full cell drops for a new keyframe: "redundant" (the one most like another view of the cell, see
    # ``FrameStore._evicted``) or "oldest" (the rule before; snapshots written without this field load with it).
    compact_evict: str = "redundant"

    def __post_init__(self) -> None:
        if self.image_codec not in _IMAGE_CODECS:
            raise InvalidInputError(f"image_codec must be one of {_IMAGE_CODECS}, got {self.image_codec!r}")
        if self.depth_codec not in _DEPTH_CODECS:
            raise InvalidInputError(f"depth_codec must be one of {_DEPTH_CODECS}, got {self.depth_codec!r}")
        if not (1 <= self.jpeg_quality <= 100):
            raise InvalidInputError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if not (0 <= self.png_compression <= 9):
            raise InvalidInputError(f"png_compression must be in [0, 9], got {self.png_compression}")
        if not (1 <= self.zstd_level <= 22):
            raise InvalidInputError(f"zstd_level must be in [1, 22], got {self.zstd_level}")
        if self.decoded_cache_frames < 0:
            raise InvalidInputError(f"decoded_cache_frames must be >= 0, got {self.decoded_cache_frames}")
        if not 0 <= self.voxel_set_levels <= 10:
            raise InvalidInputError(f"voxel_set_levels must be in [0, 10], got {self.voxel_set_levels}")
        if self.index_tail_runs < 1:
            raise InvalidInputError(f"index_tail_runs must be >= 1, got {self.index_tail_runs}")
        if not (self.compact_cell_m >= 0) or not (0 < self.compact_angle_deg <= 180):
            raise InvalidInputError(
                f"compact_cell_m must be >= 0 and compact_angle_deg in (0, 180], got {self.compact_cell_m}, "
                f"{self.compact_angle_deg}")
        if self.compact_evict not in ("redundant", "oldest"):
            raise InvalidInputError(f"compact_evict must be 'redundant' or 'oldest', got {self.compact_evict!r}")
        if not self.compact_rebuild_dead_ratio > 0:
            raise InvalidInputError(f"compact_rebuild_dead_ratio must be > 0, got {self.compact_rebuild_dead_ratio}")
        if not (0 <= self.compact_min_iou <= 1) or self.compact_max_views < 1:
            raise InvalidInputError(
                f"compact_min_iou must be in [0, 1] and compact_max_views >= 1, got {self.compact_min_iou}, "
                f"{self.compact_max_views}")


# ---------------------------------------------------------------------------------------------------------------
# Codecs (OpenCV: about twice as fast as PIL for JPEG at this size, and frames are encoded on the hot path)
# ---------------------------------------------------------------------------------------------------------------


def _encode_rgb(rgb: np.ndarray, config: HistoryConfig) -> bytes:
    import cv2

    # cvtColor, not a reversed-axis copy: the same bytes, ~0.02 vs ~0.8 ms of a 640x360 frame (numpy copies a
    # negative-stride channel axis element by element)
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if config.image_codec == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, config.png_compression])
    if not ok:
        raise InvalidInputError(f"could not encode a {rgb.shape[1]}x{rgb.shape[0]} frame as {config.image_codec}")
    return buf.tobytes()


def _decode_rgb(blob: bytes, width: int, height: int, what: str) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != (height, width, 3):
        raise ImageDecodeError(f"{what}: stored image does not decode to {width}x{height} RGB")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # as in ``_encode_rgb``


def _encode_depth(depth_m: np.ndarray, config: HistoryConfig, stored: np.ndarray | None = None) -> bytes:
    """Depth ``[H, W]`` float32 metres (0 = unknown) -> bytes. Values a codec cannot hold become 0 (unknown)."""
    if config.depth_codec == "png_mm":
        import cv2

        mm = np.round(depth_m.astype(np.float64) * 1000.0)
        mm[mm > 65535] = 0  # beyond 65.535 m: unknown rather than a wrong, saturated distance
        ok, buf = cv2.imencode(".png", mm.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, config.png_compression])
        if not ok:
            raise InvalidInputError("could not encode depth as 16-bit PNG")
        return buf.tobytes()
    stored = _depth_as_stored(depth_m, config) if stored is None else stored
    return _zstd_compressor(config.zstd_level).compress(np.ascontiguousarray(stored))


_zstd_local = threading.local()


def _zstd_compressor(level: int):
    """This thread's compressor at ``level``, made once: a new one allocates and sets up its context (window,
    match tables) on every frame. A context is reset at each ``compress``, so the bytes are those of a fresh
    one (test: ``test_depth_records_are_a_fresh_compressors_bytes``); one per thread because a compressor must
    not be used by two threads at once (the encoder thread and a reader's ``_encode_here``)."""
    import zstandard

    made = getattr(_zstd_local, "by_level", None)
    if made is None:
        made = _zstd_local.by_level = {}
    if level not in made:
        made[level] = zstandard.ZstdCompressor(level=level)
    return made[level]


def _depth_as_stored(depth_m: np.ndarray, config: HistoryConfig) -> np.ndarray | None:
    """The array a zstd depth codec compresses (``[H, W]`` float16 or float32; its ``astype(np.float32)`` is what
    ``_decode_depth`` returns); None for ``png_mm``. float16: ``_half_kernels``' one pass, the same bits as
    ``_depth_as_stored_reference`` (numpy's float16 casts and ``isfinite`` run ~4 ns an element here, ~2.5 ms of
    the encoder thread's time a 640x360 frame with the float32 copy back)."""
    if config.depth_codec == "float16_zstd":
        if np.asarray(depth_m).dtype != np.float32:  # (float64 -> float32 -> float16 could round twice)
            return _depth_as_stored_reference(depth_m, config)
        depth = np.ascontiguousarray(depth_m)
        bits = np.empty(depth.shape, np.uint16)
        _half_kernels()[0](depth.reshape(-1).view(np.uint32), bits.reshape(-1))
        return bits.view(np.float16)
    if config.depth_codec == "float32_zstd":
        return depth_m.astype(np.float32)
    return None


def _depth_as_stored_reference(depth_m: np.ndarray, config: HistoryConfig) -> np.ndarray | None:
    """``_depth_as_stored`` in numpy (the reference the tests compare it with)."""
    if config.depth_codec == "float16_zstd":
        with np.errstate(over="ignore"):
            half = depth_m.astype(np.float16)
        half[~np.isfinite(half)] = 0  # beyond float16's 65504 m: unknown
        return half
    if config.depth_codec == "float32_zstd":
        return depth_m.astype(np.float32)
    return None


def _half_to_float32(half: np.ndarray) -> np.ndarray:
    """``half.astype(np.float32)`` (exact: every float16 is a float32) through a table of all 65536 float16 bit
    patterns that numpy's own cast built (``_half_kernels``): ~5x faster than numpy's cast here."""
    half = np.ascontiguousarray(half, dtype=np.float16)
    out = np.empty(half.shape, np.float32)
    kernels = _half_kernels()
    kernels[1](half.view(np.uint16).reshape(-1), kernels[2], out.reshape(-1))
    return out


@functools.lru_cache(maxsize=1)
def _half_kernels():
    """(to_half_bits_select, from_half_bits, table, to_half_bits): float32 bits -> float16 bits, rounded to
    nearest even (numpy's ``npy_floatbits_to_halfbits``, step for step in ``to_half_bits``, the reference that
    ``to_half_bits_select`` computes branch-free), where the result is not finite (beyond float16's 65504, inf,
    NaN) +0, the depth codec's "unknown"; float16 bits -> float32 through ``table`` (``[65536]`` float32: numpy's
    cast of every bit pattern, so exact by construction)."""
    from spatia.world.numba_start import numba

    @numba.njit(cache=True, nogil=True)
    def to_half_bits(f32_bits, out):
        for i in range(f32_bits.shape[0]):
            f = np.uint32(f32_bits[i])
            h_sgn = np.uint32((f & np.uint32(0x80000000)) >> np.uint32(16))
            f_exp = f & np.uint32(0x7F800000)
            if f_exp >= np.uint32(0x47800000):  # overflow, inf, NaN: not finite as a float16
                out[i] = 0
                continue
            if f_exp <= np.uint32(0x38000000):  # a subnormal float16 or a signed zero
                if f_exp < np.uint32(0x33000000):
                    out[i] = h_sgn
                    continue
                e = f_exp >> np.uint32(23)
                f_sig = (np.uint32(0x00800000) + (f & np.uint32(0x007FFFFF))) >> (np.uint32(113) - e)
                # ties to even: no increment when the kept part is even and the rest exactly half (the shift
                # above may have dropped up to 11 bits of f, hence the second test)
                if (f_sig & np.uint32(0x3FFF)) != np.uint32(0x1000) or (f & np.uint32(0x7FF)) != 0:
                    f_sig += np.uint32(0x1000)
                out[i] = h_sgn + (f_sig >> np.uint32(13))  # a carry into the exponent is the right result
                continue
            h_exp = (f_exp - np.uint32(0x38000000)) >> np.uint32(13)
            f_sig = f & np.uint32(0x007FFFFF)
            if (f_sig & np.uint32(0x3FFF)) != np.uint32(0x1000):
                f_sig += np.uint32(0x1000)
            h = h_exp + (f_sig >> np.uint32(13))  # a carry into the exponent is the right result, up to inf
            out[i] = 0 if h >= np.uint32(0x7C00) else h_sgn + h

    @numba.njit(cache=True, nogil=True)
    def to_half_bits_select(f32_bits, out):
        # ``to_half_bits`` with every case computed and the answer picked by selects, no branch and no early
        # exit, so that LLVM vectorises the loop (the branchy one runs one element at a time). In int64 with plain
        # int constants: numba types uint32 with an int literal as int64 and uint64 with int64 as float64, which
        # in the reference's style put float conversions in the vector loop. The shift is kept in [0, 31]: the
        # lanes of the cases not taken compute values no select picks. The same bits as ``to_half_bits`` for all
        # 2^32 inputs (checked once; the tests compare both on every exponent's rounding edges).
        for i in range(f32_bits.shape[0]):
            f = np.int64(f32_bits[i])
            h_sgn = (f & 0x80000000) >> 16
            f_exp = f & 0x7F800000
            f_man = f & 0x007FFFFF
            # a normal float16: the exponent rebiased, the mantissa rounded to 10 bits (ties to even); a carry
            # into the exponent is the right result, up to float16's inf (then "unknown")
            h = ((f_exp - 0x38000000) >> 13) + ((f_man + (0 if (f_man & 0x3FFF) == 0x1000 else 0x1000)) >> 13)
            normal = 0 if h >= 0x7C00 else h_sgn + h
            # a subnormal float16: the implicit bit shifted in by 113 - exponent (1..11 where this case is taken)
            f_sig = (0x00800000 + f_man) >> min(max(113 - (f_exp >> 23), 0), 31)
            keep = ((f_sig & 0x3FFF) == 0x1000) & ((f & 0x7FF) == 0)
            sub = h_sgn + ((f_sig + (0 if keep else 0x1000)) >> 13)
            small = h_sgn if f_exp < 0x33000000 else sub  # below float16's subnormals: a signed zero
            r = small if f_exp <= 0x38000000 else normal
            out[i] = np.uint16(0 if f_exp >= 0x47800000 else r)  # overflow, inf, NaN: "unknown"

    @numba.njit(cache=True, nogil=True)
    def from_half_bits(bits, table, out):
        for i in range(bits.shape[0]):
            out[i] = table[bits[i]]

    table = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    return to_half_bits_select, from_half_bits, table, to_half_bits


def _decode_depth(blob: bytes, codec: str, width: int, height: int, what: str) -> np.ndarray:
    if codec == "png_mm":
        import cv2

        mm = cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if mm is None or mm.shape != (height, width) or mm.dtype != np.uint16:
            raise ImageDecodeError(f"{what}: stored depth does not decode to a {width}x{height} 16-bit PNG")
        return (mm.astype(np.float32) / np.float32(1000.0)).astype(np.float32)
    import zstandard

    dtype = np.float16 if codec == "float16_zstd" else np.float32
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob)
    except zstandard.ZstdError as exc:
        raise ImageDecodeError(f"{what}: stored depth is not valid zstd ({exc})") from None
    if len(raw) != width * height * np.dtype(dtype).itemsize:
        raise ImageDecodeError(f"{what}: stored depth has {len(raw)} bytes, expected {width}x{height} {dtype.__name__}")
    stored = np.frombuffer(raw, dtype=dtype).reshape(height, width)
    return _half_to_float32(stored) if dtype == np.float16 else stored.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Numba kernels (compiled on first use and cached on disk, so ``import world`` stays light)
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def _kernels():
    from spatia.world.numba_start import numba

    mult = np.uint64(_HASH_MULT)

    @numba.njit(cache=True, nogil=True)
    def hash_get_or_insert(table, shift, keys, col_keys, n_cols, insert, out):
        """``out[i]`` = column of ``keys[i]``; absent keys get the next column when ``insert`` else -1.

        Open addressing with linear probing; the caller keeps the load factor <= 1/2 and ``col_keys`` large
        enough. Returns the new number of columns.
        """
        mask = table.shape[0] - 1
        for i in range(keys.shape[0]):
            k = keys[i]
            j = np.int64((np.uint64(k) * mult) >> np.uint64(shift))
            while True:
                tk = table[j, 0]
                if tk == k:
                    out[i] = table[j, 1]
                    break
                if tk == -1:
                    if insert:
                        table[j, 0] = k
                        table[j, 1] = n_cols
                        col_keys[n_cols] = k
                        out[i] = n_cols
                        n_cols += 1
                    else:
                        out[i] = -1
                    break
                j = (j + 1) & mask
        return n_cols

    @numba.njit(cache=True, nogil=True)
    def add_frames(cols, offsets, f0, open_start, last_seen, run_col, run_start, run_end, n_runs, unique_out,
                   unique_offsets):
        """Fold frames ``f0, f0 + 1, ...``, whose columns are ``cols[offsets[k]:offsets[k + 1]]``, into the runs, in
        one call (a rebuild replays every frame of the history, most of them empty: not a Python call each; ``add``
        passes one frame). Each column's latest run is ``[open_start, last_seen + 1)``; seeing the column again at
        ``last_seen + 1`` extends it, later closes it into the run list (the caller reserved one more run slot per
        column given). A column repeated within a frame (``last_seen == f``) is skipped, so a frame's set needs no
        sort to be a set: frame k's distinct columns go to ``unique_out[unique_offsets[k]:unique_offsets[k + 1]]``
        in their given order (``unique_offsets[0]`` is set by the caller). Returns the new number of closed runs.
        One kernel, not a per-frame kernel called from this one: numba's disk cache cannot key a kernel that calls
        another through a closure, so it recompiled (~0.4 s, and a new cache file) in every process."""
        for k in range(offsets.shape[0] - 1):
            f = f0 + k
            n_unique = unique_offsets[k]
            for p in range(offsets[k], offsets[k + 1]):
                c = cols[p]
                seen = last_seen[c]
                if seen == f:
                    continue
                unique_out[n_unique] = c
                n_unique += 1
                if seen >= 0 and seen == f - 1:
                    last_seen[c] = f
                    continue
                if seen >= 0:
                    run_col[n_runs] = c
                    run_start[n_runs] = open_start[c]
                    run_end[n_runs] = seen + 1
                    n_runs += 1
                open_start[c] = f
                last_seen[c] = f
            unique_offsets[k + 1] = n_unique
        return n_runs

    @numba.njit(cache=True, nogil=True)
    def merge_runs(indptr, starts, ends, run_col, run_start, run_end, n_new, n_cols):
        """A by-column run index (``indptr`` over its columns, ``starts``/``ends``) plus ``n_new`` newer closed runs
        -> the by-column index over ``n_cols`` columns. Per column, old runs come first (runs stay in time order)."""
        n_old_cols = indptr.shape[0] - 1
        new_indptr = np.zeros(n_cols + 1, dtype=np.int64)
        for c in range(n_old_cols):
            new_indptr[c + 1] = indptr[c + 1] - indptr[c]
        for r in range(n_new):
            new_indptr[run_col[r] + 1] += 1
        for c in range(n_cols):
            new_indptr[c + 1] += new_indptr[c]
        new_starts = np.empty(new_indptr[n_cols], dtype=np.int32)
        new_ends = np.empty(new_indptr[n_cols], dtype=np.int32)
        fill = new_indptr[:-1].copy()
        for c in range(n_old_cols):
            for q in range(indptr[c], indptr[c + 1]):
                new_starts[fill[c]] = starts[q]
                new_ends[fill[c]] = ends[q]
                fill[c] += 1
        for r in range(n_new):
            c = run_col[r]
            new_starts[fill[c]] = run_start[r]
            new_ends[fill[c]] = run_end[r]
            fill[c] += 1
        return new_indptr, new_starts, new_ends

    @numba.njit(cache=True, nogil=True)
    def count_indexed(target_cols, target_offsets, indptr, starts, ends, open_start, last_seen, diff):
        """For every target voxel, add each run of frames that see it to the target's difference array:
        ``diff[t, start] += 1``, ``diff[t, end] -= 1`` (a prefix sum over frames then gives the counts)."""
        n_indexed_cols = indptr.shape[0] - 1
        for t in range(target_offsets.shape[0] - 1):
            for p in range(target_offsets[t], target_offsets[t + 1]):
                c = target_cols[p]
                if c < n_indexed_cols:
                    for q in range(indptr[c], indptr[c + 1]):
                        diff[t, starts[q]] += 1
                        diff[t, ends[q]] -= 1
                if last_seen[c] >= 0:
                    diff[t, open_start[c]] += 1
                    diff[t, last_seen[c] + 1] -= 1

    @numba.njit(cache=True, nogil=True)
    def count_unsealed(target_bits, t0, n_t, run_col, run_start, run_end, n_runs, diff):
        """The same for the runs closed since the last seal, scanned against a per-column bitmask (uint16) of
        targets ``t0 .. t0 + n_t`` (n_t <= 16)."""
        for r in range(n_runs):
            m = target_bits[run_col[r]]
            if m != 0:
                for b in range(n_t):
                    if (m >> b) & 1:
                        diff[t0 + b, run_start[r]] += 1
                        diff[t0 + b, run_end[r]] -= 1

    @numba.njit(cache=True, nogil=True)
    def coarsen(keys, levels, out):
        """``world.geometry.coarsen_voxel_keys`` on the packed key: each 21-bit field u = i + 2**20 becomes
        floor(i / 2**L) + 2**20 = (u >> L) + 2**20 - 2**(20 - L) (2**20 is a multiple of 2**L)."""
        shift = np.int64(levels)
        add = np.int64(KEY_OFFSET - (KEY_OFFSET >> levels))
        mask = np.int64(KEY_MASK)
        for i in range(keys.shape[0]):
            k = keys[i]
            x = ((k >> np.int64(2 * KEY_BITS)) & mask) >> shift
            y = ((k >> np.int64(KEY_BITS)) & mask) >> shift
            z = (k & mask) >> shift
            out[i] = ((x + add) << np.int64(2 * KEY_BITS)) | ((y + add) << np.int64(KEY_BITS)) | (z + add)

    @numba.njit(cache=True, nogil=True)
    def distinct(keys, table, out):
        """The distinct keys (>= 0) of ``keys`` in first-seen order into ``out``, by an open-addressing set in
        ``table`` (all -1, a power of two >= 2 x len); returns how many. O(n), where a sort is O(n log n).
        ``table`` is all -1 again on return (its keys taken out newest first: each one's probe then meets only
        keys inserted before it, still in place), so a caller may keep it for the next call."""
        shift = np.uint64(64 - int(np.log2(table.shape[0])))
        tmask = table.shape[0] - 1
        n = 0
        for i in range(keys.shape[0]):
            k = keys[i]
            j = np.int64((np.uint64(k) * mult) >> shift)
            while True:
                tk = table[j]
                if tk == k:
                    break
                if tk == -1:
                    table[j] = k
                    out[n] = k
                    n += 1
                    break
                j = (j + 1) & tmask
        for i in range(n - 1, -1, -1):
            k = out[i]
            j = np.int64((np.uint64(k) * mult) >> shift)
            while table[j] != k:
                j = (j + 1) & tmask
            table[j] = -1
        return n

    @numba.njit(cache=True, nogil=True)
    def coarsen_firsts(keys, levels, out):
        """``coarsen`` into ``out``, leaving out a coarse key that one of the last few distinct ones written holds
        (a 16-slot direct-mapped memo); returns how many were written. A memory's keys come block-major (16^3
        voxels a block), so a view's keys fall into runs of the same few coarse cubes (a block holds 8 cubes at
        levels = 3), and most repeats are of one of the last few. Only repeats of a key already written are left
        out, so the first-seen order of the distinct keys is unchanged (what the index's columns and a query set
        follow)."""
        shift = np.int64(levels)
        add = np.int64(KEY_OFFSET - (KEY_OFFSET >> levels))
        mask = np.int64(KEY_MASK)
        memo = np.full(16, -1, np.int64)
        n = 0
        for i in range(keys.shape[0]):
            k = keys[i]
            x = ((k >> np.int64(2 * KEY_BITS)) & mask) >> shift
            y = ((k >> np.int64(KEY_BITS)) & mask) >> shift
            z = (k & mask) >> shift
            c = ((x + add) << np.int64(2 * KEY_BITS)) | ((y + add) << np.int64(KEY_BITS)) | (z + add)
            j = np.int64((np.uint64(c) * mult) >> np.uint64(60))
            fresh = memo[j] != c  # (branch-free: whether a key repeats is hard to predict)
            memo[j] = c
            out[n] = c
            n += np.int64(fresh)
        return n

    return hash_get_or_insert, add_frames, merge_runs, count_indexed, count_unsealed, coarsen, distinct, coarsen_firsts


@functools.cache
def _renumber_kernel():
    from spatia.world.numba_start import numba

    @numba.njit(cache=True, nogil=True)
    def first_use_renumber(cols, n_cols):
        """``cols`` [M] int32 in ``[0, n_cols)`` -> (the distinct columns in first-use order [U] int32, ``cols``
        renumbered 0..U-1 in that order [M] int32); ``reference_first_use_renumber`` is the numpy version."""
        remap = np.full(n_cols, -1, np.int32)
        used = np.empty(min(cols.shape[0], n_cols), np.int32)
        out = np.empty(cols.shape[0], np.int32)
        n = 0
        for i in range(cols.shape[0]):
            c = cols[i]
            r = remap[c]
            if r < 0:
                r = n
                remap[c] = n
                used[n] = c
                n += 1
            out[i] = r
        return used[:n].copy(), out

    return first_use_renumber


@functools.cache
def _overlap_kernel():
    from spatia.world.numba_start import numba

    @numba.njit(cache=True, nogil=True)
    def overlaps(cols, offsets, f, frames, mark):
        """Shared columns of frame ``f``'s forward list with each of ``frames``' (``VoxelSetIndex.overlaps``)."""
        for p in range(offsets[f], offsets[f + 1]):
            mark[cols[p]] = True
        out = np.zeros(frames.shape[0], np.int64)
        for j in range(frames.shape[0]):
            g = frames[j]
            n = 0
            for p in range(offsets[g], offsets[g + 1]):
                if mark[cols[p]]:
                    n += 1
            out[j] = n
        for p in range(offsets[f], offsets[f + 1]):
            mark[cols[p]] = False
        return out

    return overlaps


def load_save_kernels() -> None:
    """Load ``first_use_renumber`` for the types a save calls it with (``VoxelSetIndex.to_arrays``) without running
    it: numba's ``compile`` with a signature loads it from the disk cache (else compiles it). Its first call in a
    process otherwise loaded it inside a world's first save, on the world's thread (4-8 ms); the engine runs this
    off the frame path when it opens a world (``world.engine``)."""
    from spatia.world.numba_start import numba

    cols = np.zeros(1, np.int32)
    kernel = _renumber_kernel()
    kernel.compile((numba.typeof(cols), numba.int64))  # a range with frames dropped from the index: a copy
    cols.setflags(write=False)
    kernel.compile((numba.typeof(cols), numba.int64))  # else a view of the column buffer (read-only)


def load_history_kernels() -> None:
    """Load the history's kernels that a played world reaches only after its start, by running them on a few
    values: the depth codec's float16 round trip (the history encoder's thread, on a served world's first frames),
    ``seal``'s merge of closed runs into the by-column index (``merge_runs``) and a column table rebuilt from
    read-only keys (``_column_table``, as the maintenance thread builds a larger table). A server calls it once at
    start (``server.host.load_play_kernels``): else a 640x360 session loaded the codec in its first frames and the
    index kernels ~8 s into play, one on the world's thread (6 ms) and one on the maintenance thread, each under
    numba's process-wide lock (docs/BENCHMARKS.md, session 24)."""
    config = HistoryConfig()
    _half_to_float32(_depth_as_stored(np.ones((2, 2), np.float32), config))
    index = VoxelSetIndex()
    for f in range(3):  # each key seen by two consecutive frames: runs that close, then merge
        index.add(np.arange(f, f + 8, dtype=np.int64))
    index.seal()
    _column_table(index._col_keys.view, _table_bits(index._col_keys.size))  # as ``_prepare_table`` submits it


def reference_first_use_renumber(cols: np.ndarray, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """``first_use_renumber`` by a stable sort (``to_arrays``' former code), for tests."""
    used, first, _ = unique_first(cols)
    order = np.argsort(first, kind="stable")
    remap = np.empty(n_cols, dtype=np.int32)
    remap[used[order]] = np.arange(used.shape[0], dtype=np.int32)
    return used[order].astype(np.int32), (remap[cols] if cols.size else cols.copy()).astype(np.int32)


class GrowingRows:
    """A numpy array that grows along axis 0 with amortised O(1) appends (capacity x1.5: the voxel lists get
    to hundreds of MB, so less slack than doubling).

    ``append_only``: rows below ``size`` never change once written (the forward lists, the column keys). Then, from
    ``GROWING_AHEAD_MIN_BYTES`` on, the next larger buffer is allocated and filled on the "history-maintenance"
    thread once two more reservations like the current one would outgrow this one, and a later ``reserve`` takes it,
    copying only the rows appended meanwhile: a growth on the spot (allocating and copying tens of MB) paused the
    memory update 18-28 ms at ~10^6 points on a quiet machine, 52-260 ms with four worlds on two cores
    (docs/BENCHMARKS.md, "Stalls off the frame path")."""

    def __init__(self, item_shape: tuple[int, ...], dtype: Any, capacity: int = 64, append_only: bool = False):
        self._buf = np.empty((capacity, *item_shape), dtype=dtype)
        self.size = 0
        self._append_only = append_only
        self._ahead: tuple[Future, int] | None = None  # (the next buffer, rows [0, n0) copied into it; n0)

    def reserve(self, extra: int) -> None:
        need = self.size + extra
        if self._ahead is not None:
            self._adopt_ahead(wait=need > self._buf.shape[0])
        cap = self._buf.shape[0]
        if need > cap:
            new = np.empty((max(need, cap + cap // 2, 16), *self._buf.shape[1:]), dtype=self._buf.dtype)
            new[: self.size] = self._buf[: self.size]
            self._buf = new
        elif (self._append_only and self._ahead is None and need + 2 * extra > cap
              and self._buf.nbytes >= GROWING_AHEAD_MIN_BYTES):
            job = background("history-maintenance").submit(
                _copied_into, self._buf, self.size, max(need + 2 * extra, cap + cap // 2))
            self._ahead = (job, self.size)

    def _adopt_ahead(self, wait: bool) -> None:
        job, n0 = self._ahead
        if not (wait or job.done()):
            return
        self._ahead = None
        new = job.result()
        if new.shape[0] > self._buf.shape[0]:  # (else grown on the spot meanwhile)
            new[n0 : self.size] = self._buf[n0 : self.size]
            self._buf = new

    def extend(self, values: np.ndarray) -> None:
        self.reserve(len(values))
        self._buf[self.size : self.size + len(values)] = values
        self.size += len(values)

    @property
    def buffer(self) -> np.ndarray:
        """The whole allocation (kernels write into it past ``size`` after ``reserve``)."""
        return self._buf

    @property
    def view(self) -> np.ndarray:
        v = self._buf[: self.size]
        v.flags.writeable = False
        return v

    @property
    def nbytes(self) -> int:
        return int(self._buf.nbytes)


def _copied_into(buf: np.ndarray, n: int, capacity: int) -> np.ndarray:
    """A new buffer of ``capacity`` rows holding rows ``[0, n)`` of ``buf`` (which its owner may append to after
    row ``n`` meanwhile; rows past ``n`` are left unset)."""
    new = np.empty((capacity, *buf.shape[1:]), dtype=buf.dtype)
    new[:n] = buf[:n]
    return new


class VoxelSetIndex:
    """The view-specific voxel sets of all frames, and fast intersection counts against query sets.

    Storage:
    - a hash table maps each distinct voxel key to a column id (int32, first-seen order);
    - forward lists: a frame's set is its keys' column ids, distinct, in the order added (4 bytes per voxel, one
      flat array + offsets),
      which is what ``keys`` and snapshots read;
    - an inverted index of *runs*: for every column, the maximal runs ``[start, end)`` of consecutive frames that
      see the voxel. A moving camera sees a voxel over a stretch of consecutive frames, so a voxel seen by 60
      frames is one run, not 60 postings. Each column's latest run is kept open per column (``add`` extends it in
      O(1)); closed runs go to an append-only list that ``seal`` merges into the by-column index once it holds
      ``tail_runs`` runs and at least half the indexed ones (geometric, so merging is O(1) amortised per run).

    ``intersection_counts`` adds +1/-1 at each run's ends into a per-target difference array over frames and
    prefix-sums it, so its cost is (runs of the query's voxels) + (runs closed since the last seal) + T x F; it
    does not grow with frames that share nothing with the query. Worst case (no temporal coherence: every run one
    frame long) it is a plain postings walk.
    """

    def __init__(self, tail_runs: int = 1 << 18):
        if tail_runs < 1:
            raise InvalidInputError(f"tail_runs must be >= 1, got {tail_runs}")
        self.tail_runs = int(tail_runs)
        self._shift = 64 - 10
        # [slots, 2] int64: (voxel key or -1 = empty, column); key and column share a cache line.
        self._table = np.full((1 << 10, 2), _EMPTY_KEY, dtype=np.int64)
        self._col_keys = GrowingRows((), np.int64, 1024, append_only=True)  # column -> voxel key
        self._open_start = GrowingRows((), np.int32, 1024)  # column -> first frame of its latest run
        self._last_seen = GrowingRows((), np.int32, 1024)  # column -> last frame of its latest run (-1: never)
        self._cols = GrowingRows((), np.int32, 1 << 16, append_only=True)  # forward lists, concatenated
        self._offsets = GrowingRows((), np.int64, append_only=True)
        self._offsets.extend(np.zeros(1, dtype=np.int64))
        self._run_col = GrowingRows((), np.int32, 1 << 12)  # runs closed since the last seal, in closing order
        self._run_start = GrowingRows((), np.int32, 1 << 12)
        self._run_end = GrowingRows((), np.int32, 1 << 12)
        self._indptr = np.zeros(1, dtype=np.int64)  # [columns + 1]: sealed closed runs grouped by column
        self._sealed_starts = np.zeros(0, dtype=np.int32)
        self._sealed_ends = np.zeros(0, dtype=np.int32)
        self._bits = np.zeros(0, dtype=np.uint16)  # query scratch: per-column target bitmask, kept all-zero
        self._table_job: tuple[Future, int] | None = None  # (a larger column table in preparation, columns it holds)
        self._new_columns = 0  # columns a frame adds (the most of the recent frames, decaying)
        self._seal_job: tuple[Future, int] | None = None  # (a merge in preparation, the closed runs it merges)

    def __len__(self) -> int:
        return self._offsets.size - 1

    @property
    def num_voxels(self) -> int:
        """Distinct voxel keys seen by any frame."""
        return self._col_keys.size

    @property
    def num_runs(self) -> int:
        """Runs of consecutive frames over all voxels (closed + each voxel's latest)."""
        return self._sealed_starts.shape[0] + self._run_col.size + self._col_keys.size

    @property
    def nnz(self) -> int:
        """Voxels over all frames' sets (the sum of ``sizes()``, kept as a count: O(1), where the sum is O(frames))."""
        return self._cols.size

    @property
    def num_unsealed_runs(self) -> int:
        """Closed runs not yet merged into the by-voxel index (each query scans them linearly)."""
        return self._run_col.size

    # --- building ---------------------------------------------------------------------------------------------

    def _ensure_table(self, extra: int) -> None:
        """A column table with room for ``extra`` more keys at load <= 1/2: the one prepared in the background
        if it is ready (or needed now: then waited for), else rebuilt here."""
        n = self._col_keys.size + extra
        if self._table_job is not None:
            self._adopt_table(wait=2 * n > self._table.shape[0])
        if 2 * n <= self._table.shape[0]:
            # a frame's keys (with repeats) vary by ~10 % and decide the need: 25 % ahead, or the columns of a few
            # frames if more
            self._prepare_table(max(n + n // 4, n + TABLE_AHEAD_FRAMES * self._new_columns))
            return
        self._table, self._shift = _column_table(self._col_keys.view.copy(), _table_bits(n))

    def _prepare_table(self, n_next: int) -> None:
        """Start building the table for ``n_next`` keys (what ``_ensure_table`` will ask for a few frames on) on
        the maintenance thread, unless the current one holds them or the new one is small. Only the columns there
        now are read: a column's key never changes, later ones are added at the adoption."""
        if (self._table_job is not None or 2 * n_next <= self._table.shape[0]
                or (1 << _table_bits(n_next)) < TABLE_AHEAD_MIN_SLOTS):
            return
        job = background("history-maintenance").submit(_column_table, self._col_keys.view, _table_bits(n_next))
        self._table_job = (job, self._col_keys.size)

    def _adopt_table(self, wait: bool) -> None:
        """Take the prepared table if it is done (or once done with ``wait``), adding the columns created since
        it was started, in column order (each gets its own column back: the same ids as a rebuild here)."""
        job, n0 = self._table_job
        if not (wait or job.done()):
            return
        self._table_job = None
        table, shift = job.result()
        if table.shape[0] <= self._table.shape[0]:  # (a rebuild on the spot came first)
            return
        n = self._col_keys.size
        if n > n0:
            keys = self._col_keys.view[n0:].copy()
            out = np.empty(n - n0, dtype=np.int32)
            # the kernel writes each new key at its column of ``col_keys``: where it already is
            n_new = _kernels()[0](table, shift, keys, self._col_keys.buffer, n0, True, out)
            if n_new != n or not np.array_equal(out, np.arange(n0, n, dtype=np.int32)):
                raise AssertionError("prepared column table: columns did not come back in order")
        self._table, self._shift = table, shift

    def _insert_columns(self, keys: np.ndarray) -> np.ndarray:
        """Columns of ``keys`` ([V] int64), creating the missing ones."""
        self._ensure_table(keys.shape[0])
        self._col_keys.reserve(keys.shape[0])
        cols = np.empty(keys.shape[0], dtype=np.int32)
        n_old = self._col_keys.size
        n_new = _kernels()[0](
            self._table, self._shift, keys, self._col_keys.buffer, n_old, True, cols
        )
        self._col_keys.size = n_new
        self._new_columns = max(n_new - n_old, int(TABLE_AHEAD_DECAY * self._new_columns))
        for arr in (self._open_start, self._last_seen):
            arr.extend(np.full(n_new - n_old, -1, dtype=np.int32))
        return cols

    def _append(self, cols: np.ndarray) -> int:
        """Add one frame's columns (repeats are dropped) to the forward lists and the runs; returns how many
        distinct columns the frame has."""
        return int(self._fold(cols, np.array([0, cols.shape[0]], dtype=np.int64))[0])

    def _fold(self, cols: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Frames ``cols[offsets[k]:offsets[k + 1]]`` (repeats dropped) onto the forward lists and the runs;
        returns ``[n_frames]`` int64, each frame's number of distinct columns."""
        n_frames, nnz = offsets.shape[0] - 1, cols.shape[0]
        f0 = len(self)
        self._cols.reserve(nnz)
        for arr in (self._run_col, self._run_start, self._run_end):
            arr.reserve(nnz)  # a frame closes at most one run per column it sees
        unique_offsets = np.empty(n_frames + 1, dtype=np.int64)
        unique_offsets[0] = self._cols.size
        n_runs = _kernels()[1](
            np.ascontiguousarray(cols, dtype=np.int32), np.ascontiguousarray(offsets, dtype=np.int64), f0,
            self._open_start.buffer, self._last_seen.buffer, self._run_col.buffer, self._run_start.buffer,
            self._run_end.buffer, self._run_col.size, self._cols.buffer, unique_offsets,
        )
        self._cols.size = int(unique_offsets[-1])
        self._offsets.extend(unique_offsets[1:])
        for arr in (self._run_col, self._run_start, self._run_end):
            arr.size = n_runs
        return np.diff(unique_offsets)

    def _append_all(self, cols: np.ndarray, offsets: np.ndarray) -> None:
        """``_append`` of every frame ``cols[offsets[k]:offsets[k + 1]]`` in one compiled call (``from_arrays``).
        Raises ``SnapshotError`` if a frame repeats a column."""
        given = np.diff(offsets)
        kept = self._fold(cols, offsets)
        if not np.array_equal(given, kept):
            raise SnapshotError(f"voxel set of frame {int(np.flatnonzero(given != kept)[0])} repeats a voxel")

    def add(self, keys: np.ndarray) -> int:  # keys: [V] int64 voxel keys >= 0, any order, repeats allowed
        """Append one frame's voxel set (validated by ``check_voxel_keys``; a key given twice counts once, and no
        sort is needed: a 640x360 view holds ~10^5 keys and sorting them cost more than the rest of ``add``);
        returns its frame id."""
        self._append(self._insert_columns(keys))
        due = max(self.tail_runs, self._sealed_starts.shape[0] // 2)
        if self._seal_job is not None:  # waited for only once the runs not merged pile up
            self._adopt_seal(wait=self._run_col.size >= 2 * due)
        if self._run_col.size >= due and self._seal_job is None:
            if self._sealed_starts.shape[0] + self._run_col.size >= SEAL_AHEAD_MIN_RUNS:
                self._prepare_seal()
            else:
                self.seal()
        return len(self) - 1

    def seal(self) -> None:
        """Merge the runs closed since the last seal into the by-column index (called by ``add``, or on the
        maintenance thread through ``_prepare_seal`` for a large index)."""
        if self._seal_job is not None:
            self._adopt_seal(wait=True)
        self._indptr, self._sealed_starts, self._sealed_ends = _kernels()[2](
            self._indptr, self._sealed_starts, self._sealed_ends, self._run_col.buffer, self._run_start.buffer,
            self._run_end.buffer, self._run_col.size, self._col_keys.size,
        )
        for arr in (self._run_col, self._run_start, self._run_end):
            arr.size = 0

    def _prepare_seal(self) -> None:
        """``seal`` of the runs closed so far, on the maintenance thread: it reads the by-column index and the
        first ``k`` closed runs, which stay as they are until ``_adopt_seal`` (``add`` appends runs after them;
        a growth of the run lists copies them into a new buffer and leaves the old one to the job)."""
        k = self._run_col.size
        job = background("history-maintenance").submit(
            _kernels()[2], self._indptr, self._sealed_starts, self._sealed_ends, self._run_col.buffer,
            self._run_start.buffer, self._run_end.buffer, k, self._col_keys.size)
        self._seal_job = (job, k)

    def _adopt_seal(self, wait: bool) -> None:
        """Take the merged index if done (or once done with ``wait``): its ``k`` runs leave the list of closed
        runs, the ones closed since move to its front (closing order kept). Counts are the same before and after:
        a run is counted from the by-column index or from the list, never both."""
        job, k = self._seal_job
        if not (wait or job.done()):
            return
        self._seal_job = None
        self._indptr, self._sealed_starts, self._sealed_ends = job.result()
        m = self._run_col.size - k
        for arr in (self._run_col, self._run_start, self._run_end):
            buf = arr.buffer
            buf[:m] = buf[k : k + m].copy()
            arr.size = m

    # --- reading ----------------------------------------------------------------------------------------------

    def keys(self, frame: int) -> np.ndarray:
        """``[V]`` int64 distinct voxel keys of one frame, in the order they were added (a set: order carries no
        meaning; ``np.sort`` for a canonical form)."""
        off = self._offsets.view
        return self._col_keys.view[self._cols.view[off[frame] : off[frame + 1]]]

    def sizes(self) -> np.ndarray:
        """``[F]`` int64: number of voxels in each frame's set."""
        return np.diff(self._offsets.view)

    def size_of(self, frame: int) -> int:
        off = self._offsets.view
        return int(off[frame + 1] - off[frame])

    def columns(self, frame: int) -> np.ndarray:
        """``[V]`` int32 distinct column ids of one frame's set (read-only view)."""
        off = self._offsets.view
        return self._cols.view[off[frame] : off[frame + 1]]

    def overlaps(self, f: int, frames: np.ndarray, mark: np.ndarray) -> np.ndarray:
        """``[G]`` int64: ``|voxels(f) ∩ voxels(g)|`` for each ``g`` of ``frames`` ([G] int64), in one compiled pass
        (marks ``f``'s columns in ``mark``, a bool scratch of >= ``num_voxels`` all False, and clears them again).
        The per-frame fancy-indexed mark, count and clear cost ~0.2 ms of a 128x96 lock-step step."""
        return _overlap_kernel()(self._cols.buffer, self._offsets.buffer, f, frames, mark)

    def rebuilt(self, keep: np.ndarray) -> "VoxelSetIndex":
        """A fresh index over the same frames where frames with ``keep[f]`` False have empty sets: their runs,
        postings and the columns only they saw are gone (compaction)."""
        return VoxelSetIndex.from_arrays(self.to_arrays(keep), self.tail_runs)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Column ids of ``keys`` (int64 ``[V]``); -1 where no frame has that voxel."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        out = np.empty(keys.shape[0], dtype=np.int32)
        _kernels()[0](self._table, self._shift, keys, self._col_keys.buffer, 0, False, out)
        return out

    def intersection_counts(self, query_keys: list[np.ndarray]) -> np.ndarray:
        """``[T, F]`` int32: ``counts[t, f] = |query_keys[t] ∩ voxels(f)|`` for every stored frame ``f``.

        Each query set must be free of duplicates (``FrameStore.query_voxel_set``); keys no frame has are ignored.
        """
        _, _, _, count_indexed, count_unsealed, _, _, _ = _kernels()
        n_t, n_f = len(query_keys), len(self)
        if n_t == 0 or n_f == 0:
            return np.zeros((n_t, n_f), dtype=np.int32)
        diff = np.zeros((n_t, n_f + 1), dtype=np.int32)  # [T, F + 1] run starts +1, run ends -1
        # Ascending columns make the walk over the per-column arrays (indptr, runs) monotone in memory: 3-6x faster
        # than hash order once those arrays outgrow the caches.
        target_cols = [np.sort(c[c >= 0]) for c in (self.lookup(k) for k in query_keys)]
        offsets = np.zeros(n_t + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([c.shape[0] for c in target_cols])
        flat = np.concatenate(target_cols).astype(np.int32, copy=False)
        count_indexed(
            flat, offsets, self._indptr, self._sealed_starts, self._sealed_ends,
            self._open_start.buffer, self._last_seen.buffer, diff,
        )
        if self._run_col.size > 0:
            if self._bits.shape[0] < self._col_keys.size:
                self._bits = np.zeros(2 * self._col_keys.size, dtype=np.uint16)
            # 16 targets per pass: a 2-byte mask per voxel keeps the randomly accessed array small (the paper's
            # every-K-th frame gives ~11 views per clip, the official stride 6-7).
            for t0 in range(0, n_t, 16):
                n_group = min(16, n_t - t0)
                for b in range(n_group):
                    self._bits[target_cols[t0 + b]] |= np.uint16(1 << b)
                count_unsealed(
                    self._bits, t0, n_group, self._run_col.buffer, self._run_start.buffer, self._run_end.buffer,
                    self._run_col.size, diff,
                )
                for b in range(n_group):
                    self._bits[target_cols[t0 + b]] = 0
        return np.cumsum(diff[:, :n_f], axis=1, dtype=np.int32)

    @property
    def nbytes(self) -> int:
        parts = (
            self._table, self._indptr, self._sealed_starts, self._sealed_ends, self._bits,
        )
        growing = (
            self._col_keys, self._open_start, self._last_seen, self._cols, self._offsets, self._run_col,
            self._run_start, self._run_end,
        )
        return int(sum(a.nbytes for a in parts) + sum(g.nbytes for g in growing))

    # --- snapshot ---------------------------------------------------------------------------------------------

    def to_arrays(self, keep: np.ndarray | None = None, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Frames ``[start, stop)`` as plain arrays (copies); frames with ``keep[f]`` False (``[F]`` bool, global
        frame ids) get empty sets. The column table holds only the columns these sets use, in first-use order, so
        ``from_arrays`` (and concatenating ranges with ``concat_arrays``) rebuilds the same index."""
        return _frames_as_arrays(self.frames_view(), keep, start, len(self) if stop is None else stop)

    def frames_view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cols, offsets, col_keys)``: read-only views of the forward lists and the column keys as they are now.
        All three are append-only, so the frames there now read the same from any thread while ``add`` goes on (a
        growth copies into a new buffer and leaves these as they are)."""
        return self._cols.view, self._offsets.view, self._col_keys.view

    @classmethod
    def rebuilt_from(cls, view: tuple[np.ndarray, np.ndarray, np.ndarray], keep: np.ndarray, n_frames: int,
                     tail_runs: int) -> "VoxelSetIndex":
        """``rebuilt(keep)`` of the first ``n_frames`` frames of ``frames_view()``'s index: for a thread other than
        the index's owner (``FrameStore``'s background rebuild)."""
        return cls.from_arrays(_frames_as_arrays(view, keep, 0, n_frames), tail_runs)

    @staticmethod
    def concat_arrays(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """``to_arrays`` of consecutive frame ranges -> the arrays of their concatenation (keys as columns)."""
        keys = [p["voxel_col_keys"][p["voxel_cols"]] for p in parts]
        sizes = [np.diff(p["voxel_offsets"]) for p in parts]
        flat = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        size = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        if flat.size:
            uniq, first, inverse = unique_first(flat)
            order = np.argsort(first, kind="stable")
            rank = np.empty(uniq.shape[0], dtype=np.int32)
            rank[order] = np.arange(uniq.shape[0], dtype=np.int32)
            col_keys, cols = uniq[order], rank[inverse.reshape(-1)]
        else:
            col_keys, cols = np.zeros(0, np.int64), np.zeros(0, np.int32)
        offsets = np.zeros(size.shape[0] + 1, dtype=np.int64)
        np.cumsum(size, out=offsets[1:])
        return {"voxel_col_keys": col_keys, "voxel_cols": cols, "voxel_offsets": offsets}

    @classmethod
    def from_arrays(cls, data: dict[str, Any], tail_runs: int = 1 << 18) -> "VoxelSetIndex":
        """Rebuild from ``to_arrays`` output: the same columns, then the runs replayed frame by frame."""
        col_keys = np.asarray(data["voxel_col_keys"], dtype=np.int64)
        cols = np.asarray(data["voxel_cols"], dtype=np.int32)
        offsets = np.asarray(data["voxel_offsets"], dtype=np.int64)
        if (
            col_keys.ndim != 1 or cols.ndim != 1 or offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0
            or offsets[-1] != cols.shape[0] or np.any(np.diff(offsets) < 0)
            or (cols.size and (cols.min() < 0 or cols.max() >= col_keys.shape[0]))
            or (col_keys.size and col_keys.min() < 0) or has_duplicates(col_keys)
        ):
            raise SnapshotError("voxel index arrays are inconsistent (offsets, column range or duplicate keys)")
        index = cls(tail_runs)
        if not np.array_equal(index._insert_columns(col_keys), np.arange(col_keys.shape[0])):
            raise SnapshotError("voxel index column table did not rebuild in order")
        index._append_all(cols, offsets)
        index.seal()
        return index


def _frames_as_arrays(view: tuple[np.ndarray, np.ndarray, np.ndarray], keep: np.ndarray | None, start: int,
                      stop: int) -> dict[str, np.ndarray]:
    """``VoxelSetIndex.to_arrays`` over ``view`` = ``(cols, offsets, col_keys)`` (``frames_view``)."""
    all_cols, off, col_keys = view
    cols = all_cols[off[start] : off[stop]]
    sizes = np.diff(off[start : stop + 1])
    if keep is not None and not np.all(keep[start:stop]):
        mask = np.repeat(np.asarray(keep[start:stop], dtype=bool), sizes)
        cols = cols[mask]
        sizes = np.where(keep[start:stop], sizes, 0)
    offsets = np.zeros(stop - start + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if start == 0 and stop == off.shape[0] - 1 and cols.shape[0] == all_cols.shape[0]:
        # every column was created by some frame's set, in first-use order: the table as it is
        return {"voxel_col_keys": col_keys.copy(), "voxel_cols": cols.copy(), "voxel_offsets": offsets}
    # renumber the columns these frames use in first-use order: one pass (a save's range of ~10^6 columns
    # took ~100 ms through a stable argsort, on the world's thread between two clips)
    used, renumbered = _renumber_kernel()(np.ascontiguousarray(cols, dtype=np.int32), col_keys.shape[0])
    return {
        "voxel_col_keys": col_keys[used],  # [U] int64: column -> voxel key (a gather: a copy)
        "voxel_cols": renumbered,  # [nnz] int32: every frame's columns
        "voxel_offsets": offsets,  # [F + 1] int64: frame f is cols[off[f]:off[f+1]]
    }


def _table_bits(n: int) -> int:
    """log2 slots of a column table for ``n`` keys (load <= 1/4 when built, rebuilt beyond 1/2)."""
    return max(10, int(np.ceil(np.log2(4 * max(n, 1)))))


def _column_table(col_keys: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """``(table [2**bits, 2], shift)`` holding ``col_keys`` [C] (distinct) at columns 0..C-1: re-inserting the
    keys in column order gives every key its old column back. Reads ``col_keys`` only (a maintenance thread may
    build it while the owner appends columns after them)."""
    table = np.full((1 << bits, 2), _EMPTY_KEY, dtype=np.int64)
    shift = 64 - bits
    out = np.empty(col_keys.shape[0], dtype=np.int32)
    scratch = np.empty(col_keys.shape[0], dtype=np.int64)
    n_new = _kernels()[0](table, shift, np.ascontiguousarray(col_keys), scratch, 0, True, out)
    if n_new != col_keys.shape[0] or not np.array_equal(out, np.arange(col_keys.shape[0])):
        raise AssertionError("column table: keys did not get their columns back in order")
    return table, shift


def unique_first(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(values, return_index=True, return_inverse=True)`` by one stable argsort: numpy 2.4's
    ``np.unique`` took 0.65-3 s on 930k int64 keys where the sort takes 30 ms (measured here)."""
    values = np.asarray(values).reshape(-1)
    if values.size == 0:
        return values.copy(), np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new = np.empty(values.shape[0], dtype=bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    inverse = np.empty(values.shape[0], dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], order[new].astype(np.int64), inverse


def has_duplicates(values: np.ndarray) -> bool:
    """Whether a 1-D array repeats a value (a sort, not ``np.unique``: see ``unique_first``)."""
    ordered = np.sort(np.asarray(values).reshape(-1))
    return bool(ordered.size > 1 and np.any(ordered[1:] == ordered[:-1]))


def check_voxel_keys(voxel_keys: np.ndarray, name: str = "voxel_keys") -> np.ndarray:
    """A view-specific voxel set as int64 ``[V]`` keys >= 0, validated, in the given order (repeats allowed)."""
    keys = np.asarray(voxel_keys)
    if keys.ndim != 1:
        raise InvalidInputError(f"{name} must be a 1-D array of voxel keys, got shape {keys.shape}")
    if keys.size and not np.issubdtype(keys.dtype, np.integer):
        raise InvalidInputError(f"{name} must hold integer voxel keys, got dtype {keys.dtype}")
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    if keys.size and keys.min() < 0:
        raise InvalidInputError(f"{name} has negative values; packed voxel keys (world.geometry) are >= 0")
    return keys


# ---------------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------------


class FrameFile:
    """An append-only file of compressed frames, read back by offset.

    Each record is ``magic "SPF1" | payload length (uint32 LE) | crc32 of the payload (uint32 LE) | payload``; the
    offsets handed out point at the payload. ``read`` checks magic, length and checksum, so a torn or overwritten
    record is an error naming the frame, never a wrong image. Without a path the file is an anonymous temporary
    file (gone when closed or when the process ends): a world not yet saved still keeps its frames out of RAM.
    Appends come from one thread at a time (the encoder thread); reads from any thread (``pread``).
    """

    def __init__(self, path: str | Path | None = None, truncate_at: int | None = None):
        if path is None:
            self._file = tempfile.TemporaryFile(prefix="spatia-frames-")
            self.path: Path | None = None
        else:
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+b", buffering=0)
        self._fd = self._file.fileno()
        size = os.fstat(self._fd).st_size
        if truncate_at is not None and truncate_at < size:
            # bytes past the last committed frame: appended after the last snapshot by a process that died
            os.ftruncate(self._fd, truncate_at)
            size = truncate_at
        self.end = size
        self._lock = threading.Lock()

    def append(self, payload: bytes) -> tuple[int, int]:
        """Append one record; returns (payload offset, payload length)."""
        record = _FRAME_HEADER.pack(_FRAME_MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._file.closed:  # never write through a descriptor number that may now be another file's
                raise InvalidInputError("the frame file is closed (its world was deleted or closed)")
            offset = self.end
            view = memoryview(record)
            while view:
                n = os.pwrite(self._fd, view, offset + len(record) - len(view))
                view = view[n:]
            self.end = offset + len(record)
        return offset + _FRAME_HEADER.size, len(payload)

    def read(self, offset: int, length: int, what: str) -> bytes:
        if self._file.closed:
            raise InvalidInputError(f"{what}: the frame file is closed (its world was deleted or closed)")
        start = int(offset) - _FRAME_HEADER.size
        data = os.pread(self._fd, int(length) + _FRAME_HEADER.size, start) if start >= 0 else b""
        if len(data) != int(length) + _FRAME_HEADER.size:
            raise ImageDecodeError(f"{what}: the frame file ends before this record (truncated)")
        magic, n, crc = _FRAME_HEADER.unpack_from(data)
        payload = data[_FRAME_HEADER.size :]
        if magic != _FRAME_MAGIC or n != length or zlib.crc32(payload) != crc:
            raise ImageDecodeError(f"{what}: the frame file record is damaged (magic, length or checksum)")
        return payload

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed


def _encode_frame(file: FrameFile, rgb: np.ndarray, depth: np.ndarray | None, config: HistoryConfig,
                  decoded: tuple[deque | None, deque | None] | None = None, f: int = -1) -> tuple:
    """On the encoder thread: compress and append; returns (rgb offset, rgb length, depth offset, depth length).
    ``decoded`` (images, depths; either None: not that kind): also append ``(f, rgb)`` and ``(f, depth)`` as
    ``get_rgb(f)`` / ``get_depth(f)`` will return them (the image decoded from its record, the depth as its zstd
    codec stores it)."""
    blob = _encode_rgb(rgb, config)
    r_off, r_len = file.append(blob)
    if decoded is not None and decoded[0] is not None:
        decoded[0].append((f, _decode_rgb(blob, rgb.shape[1], rgb.shape[0], f"frame {f}")))
    if depth is None:
        return r_off, r_len, 0, -1
    stored = _depth_as_stored(depth, config)
    d_off, d_len = file.append(_encode_depth(depth, config, stored))
    if decoded is not None and decoded[1] is not None and stored is not None:
        decoded[1].append((f, _half_to_float32(stored) if stored.dtype == np.float16 else stored.astype(np.float32)))
    return r_off, r_len, d_off, d_len


DECODE_AHEAD_FRAMES = 4  # the encoder thread's decoded newest images kept for get_rgb
# Encode jobs submitted and not started yet, every history of the process (``FrameStore._encode_here``).
_encoder_queued = 0
_encoder_lock = threading.Lock()


def _encode_job(*args) -> tuple:
    """``_encode_frame`` as the encoder thread runs it (counted out of ``_encoder_queued``)."""
    global _encoder_queued
    with _encoder_lock:
        _encoder_queued -= 1
    return _encode_frame(*args)


class FrameStore:
    """Every frame shown so far: compressed image (+ depth), pose, intrinsics, timestamp and voxel set.

    ``frame_index`` is the position in the store (0, 1, 2, ... in the order of ``add``). Compressed frames live in
    a ``FrameFile`` (an anonymous temporary file until ``attach`` moves them into a world's directory); RAM holds
    only what retrieval scans (poses, intrinsics, the voxel index) plus a small LRU of decoded images and depth
    maps, returned read-only (copy before editing).
    """

    def __init__(self, config: HistoryConfig = HistoryConfig()):
        self.config = config
        self._c2w = GrowingRows((4, 4), np.float64)  # [N, 4, 4] camera-to-world, OpenCV camera
        self._intrinsics = GrowingRows((6,), np.float64)  # [N, 6]: fx, fy, cx, cy, width, height (pixels)
        self._timestamp_ns = GrowingRows((), np.int64)
        # [N, 4] int64 where frame i's records are in the frame file: rgb offset, rgb length, depth offset, depth
        # length (-1: no depth); rows of frames still being compressed are filled in from ``_pending``
        self._locs = GrowingRows((4,), np.int64)
        self._has_depth = GrowingRows((), np.bool_)
        self._pending: dict[int, Future] = {}
        self._encode_args: dict[int, tuple] = {}  # frame -> ``_encode_frame``'s arguments, while pending
        self._file: FrameFile | None = None  # created on the first add
        self.voxels = VoxelSetIndex(config.index_tail_runs)
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        # The newest frames' images as ``get_rgb`` returns them, decoded by the encoder thread right after encoding
        # (bounded; appended there, read here): a one-frame clip's references are mostly the frame added two steps
        # before (the one before is the preceding frame), and its decode cost ~0.3 ms of the world thread's step.
        self._decoded_ahead: deque = deque(maxlen=DECODE_AHEAD_FRAMES)
        # ... and their depth maps as the codec stores them (``_depth_as_stored``, also on the encoder thread: the
        # decode without the round trip, ~0.2 ms). Both are transient, like the encoder's queued copies: not in
        # ``nbytes``.
        self._stored_depth: deque = deque(maxlen=DECODE_AHEAD_FRAMES)
        # Decoding ahead pays only while the reader asks for the newest frames (lock-step's one-frame clips); for a
        # reader that does not, each decode costs the shared encoder thread ~2.7 ms of a 640x360 frame for nothing.
        # So it runs while a newest frame was read within the last few adds (the frame count at that read), one
        # mark per kind: served play reads every newest frame's depth (the next clip's references) but a newest
        # image only now and then, and a mark that either read set kept every image decoded ahead, nearly all of
        # them never read (docs/BENCHMARKS.md, "Four sessions' server CPU outside the frame thread").
        self._newest_rgb_read_at = -(1 << 30)
        self._newest_depth_read_at = -(1 << 30)
        # retrieval-index compaction: which frames are candidates, and the indexed keyframes of each pose cell
        self._indexed = GrowingRows((), np.bool_)
        self._cells: dict[tuple[int, ...], list[int]] = {}
        self._dropped_voxels = 0  # voxels of dropped frames still in the index (until the next rebuild)
        # the index rebuilt without the dropped frames on the maintenance thread: (job, frames it holds, the dropped
        # voxels it leaves out), adopted by a later keyframe once done
        self._rebuild_job: tuple[Future, int, int] | None = None
        self._mark = np.zeros(0, dtype=np.bool_)  # scratch: per-column mark of a new keyframe's set
        self._query_table = np.full(16, -1, dtype=np.int64)  # scratch: ``query_voxel_set``'s hash set, all -1

    def __len__(self) -> int:
        return self._c2w.size

    @property
    def frame_file(self) -> FrameFile:
        if self._file is None:
            self._file = FrameFile()
        return self._file

    def add(
        self,
        rgb: np.ndarray,  # [H, W, 3] uint8
        c2w: np.ndarray,  # [4, 4] camera-to-world, world frame
        intrinsics: Intrinsics,  # for this frame's H x W
        voxel_keys: np.ndarray,  # [V] int64 memory voxel keys this view sees (any order; repeats count once)
        depth_m: np.ndarray | None = None,  # [H, W] float32 z-depth, 0 = unknown
        timestamp_ns: int | None = None,  # None: wall clock now
    ) -> int:
        """Store one frame and return its ``frame_index``. Validates everything before storing anything."""
        if not isinstance(intrinsics, Intrinsics):
            raise InvalidInputError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        w, h = int(intrinsics.width), int(intrinsics.height)
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.shape != (h, w, 3):
            raise InvalidInputError(
                f"rgb must be uint8 [{h}, {w}, 3] to match the intrinsics, got {rgb.dtype} {rgb.shape}"
            )
        pose = validate_pose(c2w, "c2w")
        keys = self._coarsen_firsts(check_voxel_keys(voxel_keys))
        depth = None
        if depth_m is not None:
            depth = np.asarray(depth_m)
            if depth.shape != (h, w) or not np.issubdtype(depth.dtype, np.floating):
                raise InvalidInputError(f"depth_m must be float [{h}, {w}], got {depth.dtype} {depth.shape}")
            if not np.all(np.isfinite(depth)) or depth.min() < 0:
                raise InvalidInputError("depth_m must be finite and >= 0 (0 = unknown)")
            depth = depth.astype(np.float32, copy=True)
        ts = time.time_ns() if timestamp_ns is None else int(timestamp_ns)
        # compressed and appended to the frame file on the encoder thread (~3 ms for both at 640x360, off the
        # frame's path); the copies keep the caller free to reuse its buffers
        f = len(self)
        ahead = None
        if self.config.decoded_cache_frames > 0:
            rgb_ahead = f - self._newest_rgb_read_at <= 2 * DECODE_AHEAD_FRAMES
            depth_ahead = f - self._newest_depth_read_at <= 2 * DECODE_AHEAD_FRAMES
            if rgb_ahead or depth_ahead:
                ahead = (self._decoded_ahead if rgb_ahead else None, self._stored_depth if depth_ahead else None)
        args = (self.frame_file, rgb.copy(), depth, self.config, ahead, f)
        self._encode_args[f] = args  # until started: ``_encode_here`` may take the job over
        global _encoder_queued
        with _encoder_lock:
            _encoder_queued += 1
        job = background("history-encoder").submit(_encode_job, *args)
        # (also called on a cancel; the dict, not the store, so no reference cycle keeps a dropped store alive)
        job.add_done_callback(lambda _, f=f, held=self._encode_args: held.pop(f, None))
        self._pending[f] = job

        self._c2w.extend(pose[None])
        self._intrinsics.extend(
            np.array([[intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy, w, h]], dtype=np.float64)
        )
        self._timestamp_ns.extend(np.array([ts], dtype=np.int64))
        self._locs.extend(np.zeros((1, 4), dtype=np.int64))
        self._has_depth.extend(np.array([depth is not None]))
        self._indexed.extend(np.ones(1, dtype=np.bool_))
        self.voxels.add(keys)
        if self.config.compact_cell_m > 0 and self.voxels.size_of(f) > 0:
            self._compact_cell(f)
        return f

    # --- retrieval-index compaction -------------------------------------------------------------------------

    def _cell(self, f: int) -> tuple[int, ...]:
        """Pose cell of frame ``f``: camera centre on the ``compact_cell_m`` grid, yaw and pitch of the viewing
        direction (camera +z) in ``compact_angle_deg`` bins (world axes; roll ignored)."""
        T = self._c2w.view[f]
        ijk = np.floor(T[:3, 3] / self.config.compact_cell_m).astype(np.int64)
        fwd = T[:3, 2]
        yaw = np.degrees(np.arctan2(fwd[0], fwd[2])) % 360.0
        pitch = np.degrees(np.arcsin(np.clip(fwd[1], -1.0, 1.0))) + 90.0
        step = self.config.compact_angle_deg
        return (int(ijk[0]), int(ijk[1]), int(ijk[2]), int(yaw // step) % int(np.ceil(360.0 / step)),
                int(pitch // step))

    def _compact_cell(self, f: int) -> None:
        """Drop the views of ``f``'s pose cell that ``f`` makes redundant (IoU >= ``compact_min_iou``), then one by
        ``compact_evict`` while the cell holds more than ``compact_max_views``; rebuild the index once dropped sets
        hold more than ``compact_rebuild_dead_ratio`` of the live ones' voxels."""
        views = self._cells.setdefault(self._cell(f), [])
        if views:
            if self._mark.shape[0] < self.voxels.num_voxels:
                self._mark = np.zeros(2 * self.voxels.num_voxels, dtype=np.bool_)
            inters = self.voxels.overlaps(f, np.asarray(views, dtype=np.int64), self._mark)
            size_f = self.voxels.size_of(f)
            keep = []
            for g, inter in zip(views, inters.tolist()):
                union = size_f + self.voxels.size_of(g) - inter
                if union > 0 and inter / union >= self.config.compact_min_iou:
                    self._drop(g)
                else:
                    keep.append(g)
            views[:] = keep
        views.append(f)
        while len(views) > self.config.compact_max_views:
            self._drop(views.pop(self._evicted(views) if self.config.compact_evict == "redundant" else 0))
        if self._rebuild_job is not None and self._rebuild_job[0].done():
            self._adopt_rebuild()
        live = self.voxels.nnz - self._dropped_voxels
        if self._rebuild_job is None and self._dropped_voxels > max(
                self.config.compact_rebuild_dead_ratio * live, REBUILD_MIN_VOXELS):
            self._start_rebuild()

    def _start_rebuild(self) -> None:
        """Rebuild the index without the frames dropped so far, on the maintenance thread: it reads the frames there
        now (append-only lists: ``VoxelSetIndex.frames_view``) while ``add`` goes on. On the world's thread the
        rebuild paused a keyframe's update ~25 ms 20 s into a 640x360 session, and longer as the index grows
        (docs/BENCHMARKS.md, session 24). Nothing reads a dropped frame's set meanwhile: retrieval takes only
        indexed frames, and a cell holds only those."""
        n = len(self.voxels)
        keep = self._indexed.view[:n].copy()
        job = background("history-maintenance").submit(
            VoxelSetIndex.rebuilt_from, self.voxels.frames_view(), keep, n, self.voxels.tail_runs)
        self._rebuild_job = (job, n, self._dropped_voxels)

    def _adopt_rebuild(self) -> None:
        """Take the rebuilt index (once its job is done): the frames added since it started are added to it in
        order, and the frames dropped since stay counted as dropped (their sets are still in it)."""
        job, n, left_out = self._rebuild_job
        self._rebuild_job = None
        voxels = job.result()
        for f in range(n, len(self.voxels)):
            voxels.add(self.voxels.keys(f))
        self.voxels = voxels
        self._dropped_voxels -= left_out

    def _evicted(self, views: list[int]) -> int:
        """Position in ``views`` (a full cell, oldest first, the new keyframe last) of the view to drop: the one
        most like another view of the cell (the highest IoU with any of them; on a tie the higher sum of IoUs with
        all of them, then the oldest); never the new keyframe (it shows the world as it is now). The cell then keeps
        views that differ most from each other: a loop's laps fall at other phases, and each view's set is the best
        match for targets at its own phase. O(views^2 x set size) per full cell, a few views."""
        n = len(views)
        ious = np.zeros((n - 1, n))
        sizes = np.array([self.voxels.size_of(g) for g in views], dtype=np.float64)
        frames = np.asarray(views, dtype=np.int64)
        for a, g in enumerate(views[:-1]):
            inter = self.voxels.overlaps(g, frames, self._mark).astype(np.float64)
            union = sizes[a] + sizes - inter
            ious[a] = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            ious[a, a] = 0.0
        return int(np.lexsort((np.arange(n - 1), -ious.sum(axis=1), -ious.max(axis=1)))[0])

    def _drop(self, g: int) -> None:
        self._indexed.buffer[g] = False
        self._dropped_voxels += self.voxels.size_of(g)

    def indexed(self) -> np.ndarray:
        """``[N]`` bool: True for frames that are retrieval candidates (False: dropped by compaction)."""
        return self._indexed.view

    def _rebuild_cells(self) -> None:
        self._cells = {}
        if self.config.compact_cell_m <= 0:
            return
        sizes = self.voxels.sizes()
        for f in np.flatnonzero(self._indexed.view & (sizes > 0)):
            self._cells.setdefault(self._cell(int(f)), []).append(int(f))

    def _coarsen(self, keys: np.ndarray) -> np.ndarray:
        levels = self.config.voxel_set_levels
        if levels == 0 or keys.size == 0:
            return keys
        out = np.empty_like(keys)
        _kernels()[5](keys, levels, out)
        return out

    def _coarsen_firsts(self, keys: np.ndarray) -> np.ndarray:
        """``_coarsen``, less most repeats of a coarse key already given (``coarsen_firsts``): the same set in the
        same first-seen order, for ``VoxelSetIndex.add`` and ``distinct``, which drop repeats anyway (each repeat
        cost them a hash probe; a keyframe's keys are ~4/5 repeats once coarsened)."""
        levels = self.config.voxel_set_levels
        if levels == 0 or keys.size == 0:
            return keys
        out = np.empty_like(keys)
        return out[: _kernels()[7](keys, levels, out)].copy()

    def query_voxel_set(self, voxel_keys: np.ndarray, name: str = "voxel_keys") -> np.ndarray:
        """A view-specific voxel set given at the memory's voxel size (``SpatialMemory.visible_voxel_keys``), as
        this history keeps sets: coarsened to ``config.voxel_set_levels``, distinct, in first-seen order (a
        retrieval query; hashing, not sorting: a view gives ~10^5 memory keys and a sort cost ~5 ms)."""
        keys = self._coarsen_firsts(check_voxel_keys(voxel_keys, name))
        size = 1 << max(4, int(keys.shape[0]).bit_length() + 1)
        if self._query_table.shape[0] < size:  # kept between queries (the kernel leaves it all -1): a fresh
            self._query_table = np.full(size, -1, dtype=np.int64)  # [2^18] table cost ~0.5 ms a query to fill
        out = np.empty_like(keys)
        return out[: _kernels()[6](keys, self._query_table, out)]

    @property
    def voxel_set_scale(self) -> int:
        """Side of the history's voxel-set cubes in memory voxels (``2 ** config.voxel_set_levels``)."""
        return 1 << self.config.voxel_set_levels

    # --- reading ----------------------------------------------------------------------------------------------

    def _loc(self, i: int) -> np.ndarray:
        """``[4]`` int64 record locations of frame ``i``, waiting for the encoder thread if it is at it, or
        compressing it here if the encoder has not started it (``_encode_here``)."""
        job = self._pending.get(i)
        if job is not None:
            if not job.done():
                self._encode_here()
                job = self._pending[i]
            self._locs.buffer[i] = job.result()
            del self._pending[i]
        return self._locs.buffer[i]

    def _encode_here(self) -> None:
        """Compress on this thread the frames the encoder thread has not started. The encoder is one thread for
        every world of the process, so on a busy machine a frame read back soon after it was added (a reference,
        a preceding frame) waited for other worlds' frames: 56-110 ms at the p99 of one-frame clips
        (docs/BENCHMARKS.md, "Stalls off the frame path"). The queued jobs are cancelled newest first (the
        encoder can start only the oldest meanwhile, which is then waited for), and the cancelled ones run here
        oldest first: the frame file gets its records in frame order, as from the encoder. Only when the frame
        waits behind others (another history's, or two of its own): a lone job about to start is waited for, as
        before, so that it still overlaps the reader's other work (a lock-step step reads the frame it added one
        step before; compressing it here cost ~7 % of in-process steps at 128x96)."""
        global _encoder_queued
        own = sum(1 for job in self._pending.values() if not (job.done() or job.running()))
        if own < 2 and _encoder_queued <= own:
            return
        taken: dict[int, tuple] = {}
        for f in sorted(self._pending, reverse=True):
            args = self._encode_args.get(f)  # (taken before the cancel, whose callback drops them)
            if args is None or not self._pending[f].cancel():
                break  # started (or done): every older one too (one thread, first in first out)
            taken[f] = args
            with _encoder_lock:
                _encoder_queued -= 1  # never started
        for f in sorted(self._pending):  # the one the encoder is at, if any, writes its records first
            if f not in taken:
                self._pending[f].exception()  # waits; its result (or error) is read by ``_loc``
        for f in sorted(taken):
            done: Future = Future()
            try:
                done.set_result(_encode_frame(*taken[f]))
            except Exception as exc:  # noqa: BLE001 -- raised where the frame is read, as from the encoder
                done.set_exception(exc)
            self._pending[f] = done

    def flush(self) -> None:
        """Wait until every frame added so far is compressed and in the frame file."""
        for i in sorted(self._pending):
            self._loc(i)

    def _rgb_blob(self, i: int) -> bytes:
        r_off, r_len, _, _ = self._loc(i)
        return self.frame_file.read(r_off, r_len, f"frame {i} image")

    def _depth_blob(self, i: int) -> bytes | None:
        _, _, d_off, d_len = self._loc(i)
        return None if d_len < 0 else self.frame_file.read(d_off, d_len, f"frame {i} depth")

    def _all_blobs(self) -> tuple[list[bytes], list[bytes | None]]:
        self.flush()
        return [self._rgb_blob(i) for i in range(len(self))], [self._depth_blob(i) for i in range(len(self))]

    def _check_index(self, i: int) -> int:
        i = int(i)
        if not (0 <= i < len(self)):
            raise NotFoundError(f"frame {i} is not in the history (it holds frames 0..{len(self) - 1})")
        return i

    def _cached(self, kind: str, i: int, decode) -> np.ndarray:
        key = (kind, i)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        return self._remember(kind, i, decode())

    def _remember(self, kind: str, i: int, arr: np.ndarray) -> np.ndarray:
        arr.flags.writeable = False
        if self.config.decoded_cache_frames > 0:
            self._cache[(kind, i)] = arr
            while len(self._cache) > self.config.decoded_cache_frames:
                self._cache.popitem(last=False)
        return arr

    def _take_decoded(self, i: int, newest: deque | None = None) -> np.ndarray | None:
        """Frame ``i``'s image if the encoder thread has decoded it ahead (or its depth from ``_stored_depth``);
        list(): one C call, so the encoder's concurrent append cannot break the iteration."""
        if i >= len(self) - DECODE_AHEAD_FRAMES:
            if newest is None:
                self._newest_rgb_read_at = len(self)
            else:
                self._newest_depth_read_at = len(self)
        for f, arr in list(self._decoded_ahead if newest is None else newest):
            if f == i:
                return arr
        return None

    def get_rgb(self, i: int) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB of frame ``i`` (read-only)."""
        i = self._check_index(i)
        w, h = (int(v) for v in self._intrinsics.view[i, 4:6])
        return self._cached("rgb", i, lambda: self._decoded_or(i, w, h))

    def _decoded_or(self, i: int, w: int, h: int) -> np.ndarray:
        ahead = self._take_decoded(i)
        return ahead if ahead is not None else _decode_rgb(self._rgb_blob(i), w, h, f"frame {i}")

    def has_depth(self, i: int) -> bool:
        return bool(self._has_depth.view[self._check_index(i)])

    def get_depth(self, i: int) -> np.ndarray | None:
        """``[H, W]`` float32 z-depth in metres (0 = unknown) of frame ``i``, or None if it was stored without."""
        i = self._check_index(i)
        if not self._has_depth.view[i]:
            return None
        w, h = (int(v) for v in self._intrinsics.view[i, 4:6])
        def decode() -> np.ndarray:
            stored = self._take_decoded(i, self._stored_depth)
            if stored is not None:
                return stored
            return _decode_depth(self._depth_blob(i), self.config.depth_codec, w, h, f"frame {i}")

        return self._cached("depth", i, decode)

    def get_pose(self, i: int) -> np.ndarray:
        """``[4, 4]`` float64 camera-to-world of frame ``i`` (a copy)."""
        return self._c2w.view[self._check_index(i)].copy()

    def poses(self) -> np.ndarray:
        """``[N, 4, 4]`` float64 camera-to-world of every frame (read-only view, no copy)."""
        return self._c2w.view

    def timestamps_ns(self) -> np.ndarray:
        """``[N]`` int64."""
        return self._timestamp_ns.view

    def intrinsics(self, i: int) -> Intrinsics:
        fx, fy, cx, cy, w, h = self._intrinsics.view[self._check_index(i)]
        return Intrinsics(float(fx), float(fy), float(cx), float(cy), int(w), int(h))

    def get_voxel_keys(self, i: int) -> np.ndarray:
        """``[V]`` int64 distinct voxel keys frame ``i`` sees (its view-specific scene point cloud), at the
        history's set resolution (``config.voxel_set_levels``), in the order they were added; empty for a frame
        compaction dropped from the index."""
        i = self._check_index(i)
        return self.voxels.keys(i) if self._indexed.view[i] else np.zeros(0, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes of RAM held: pose/intrinsics/location arrays, the voxel index and the decoded-frame cache (the
        compressed frames are in the frame file: ``disk_bytes``)."""
        arrays = sum(g.nbytes for g in (self._c2w, self._intrinsics, self._timestamp_ns, self._locs,
                                         self._has_depth, self._indexed))
        cache = sum(a.nbytes for a in self._cache.values())
        return int(arrays + self.voxels.nbytes + cache + self._mark.nbytes + self._query_table.nbytes)

    @property
    def disk_bytes(self) -> int:
        """Bytes of the frame file (compressed frames, with their record headers)."""
        return 0 if self._file is None else int(self._file.end)

    def close(self) -> None:
        """Close the frame file (an anonymous one is deleted); the store is unusable afterwards."""
        # every encode job finishes first (a few ms each): one still writing after the close would write through
        # a file descriptor number the process may already have given to another file
        for job in self._pending.values():
            try:
                job.result()
            except Exception:  # noqa: BLE001 -- closing: a frame that failed to encode is lost with the store
                pass
        self._pending.clear()
        self._encode_args.clear()
        if self._rebuild_job is not None:  # (it reads only this store's arrays: let it end, then drop it)
            self._rebuild_job[0].exception()
            self._rebuild_job = None
        if self._file is not None:
            self._file.close()
        self._cache.clear()
        self._decoded_ahead.clear()
        self._stored_depth.clear()

    # --- frame file -------------------------------------------------------------------------------------------

    def attach(self, path: str | Path) -> FrameFile:
        """Move the compressed frames into a new frame file at ``path`` (created or emptied) and keep appending
        there; returns it. For a world saved into its own directory for the first time. A store already on
        that file keeps it as it is."""
        self.flush()
        if self._file is not None and self._file.path is not None and self._file.path.resolve() == Path(path).resolve():
            return self._file
        new = FrameFile(path, truncate_at=0)
        locs = self._locs.buffer
        for i in range(len(self)):
            r_off, r_len, d_off, d_len = locs[i]
            locs[i, 0:2] = new.append(self.frame_file.read(r_off, r_len, f"frame {i} image"))
            if d_len >= 0:
                locs[i, 2:4] = new.append(self.frame_file.read(d_off, d_len, f"frame {i} depth"))
        if self._file is not None:
            self._file.close()
        self._file = new
        return new

    def locations(self) -> np.ndarray:
        """``[N, 4]`` int64 record locations in ``frame_file`` (rgb offset, length, depth offset, length or -1),
        after waiting for the encoder."""
        self.flush()
        return self._locs.view

    # --- snapshot ---------------------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, Any]:
        """Plain numpy arrays, bytes and scalars (for the msgpack world snapshot); ``from_arrays`` inverts it exactly.

        Compressed frames are concatenated into one ``bytes`` with ``[N + 1]`` offsets; frames without depth have
        an empty depth slice and ``has_depth`` False. Frames dropped from the index have empty voxel sets and
        ``indexed`` False.
        """
        rgb, depth = self._all_blobs()
        rgb_offsets = np.zeros(len(self) + 1, dtype=np.int64)
        rgb_offsets[1:] = np.cumsum([len(b) for b in rgb])
        depth_offsets = np.zeros(len(self) + 1, dtype=np.int64)
        depth_offsets[1:] = np.cumsum([0 if b is None else len(b) for b in depth])
        return {
            **self.meta_arrays(0, len(self)),
            "rgb_data": b"".join(rgb),
            "rgb_offsets": rgb_offsets,
            "depth_data": b"".join(b for b in depth if b is not None),
            "depth_offsets": depth_offsets,
            "has_depth": self._has_depth.view.copy(),
        }

    def meta_arrays(self, start: int, stop: int) -> dict[str, Any]:
        """Everything about frames ``[start, stop)`` but their compressed images: poses, intrinsics, timestamps,
        voxel sets (``VoxelSetIndex.to_arrays`` of the range), ``indexed``, plus version and config."""
        return {
            "version": SNAPSHOT_VERSION,
            "config": asdict(self.config),
            "c2w": self._c2w.view[start:stop].copy(),  # [N, 4, 4] float64
            "intrinsics": self._intrinsics.view[start:stop].copy(),  # [N, 6] float64: fx, fy, cx, cy, width, height
            "timestamp_ns": self._timestamp_ns.view[start:stop].copy(),  # [N] int64
            "indexed": self._indexed.view[start:stop].copy(),  # [N] bool: retrieval candidates
            **self.voxels.to_arrays(self._indexed.view, start, stop),
        }

    @classmethod
    def from_arrays(cls, data: dict[str, Any]) -> "FrameStore":
        """Rebuild a store from ``to_arrays`` output. Raises ``SnapshotError`` on anything inconsistent."""
        config, c2w, intr, ts, indexed, voxels = cls._parse_meta(data)
        try:
            rgb_data, depth_data = bytes(data["rgb_data"]), bytes(data["depth_data"])
            rgb_off = np.asarray(data["rgb_offsets"], dtype=np.int64)
            depth_off = np.asarray(data["depth_offsets"], dtype=np.int64)
            has_depth = np.asarray(data["has_depth"], dtype=bool)
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"frame history snapshot is malformed ({type(exc).__name__}: {exc})") from None
        n = c2w.shape[0]
        consistent = (
            has_depth.shape == (n,) and rgb_off.shape == (n + 1,) and depth_off.shape == (n + 1,)
            and rgb_off[0] == 0 and rgb_off[-1] == len(rgb_data) and np.all(np.diff(rgb_off) > 0)
            and depth_off[0] == 0 and depth_off[-1] == len(depth_data) and np.all(np.diff(depth_off) >= 0)
            and np.array_equal(np.diff(depth_off) > 0, has_depth)
        )
        if not consistent:
            raise SnapshotError(f"frame history snapshot arrays disagree in length or offsets (N = {n})")
        file = FrameFile()
        locs = np.zeros((n, 4), dtype=np.int64)
        for i in range(n):
            locs[i, 0:2] = file.append(rgb_data[rgb_off[i] : rgb_off[i + 1]])
            locs[i, 2:4] = file.append(depth_data[depth_off[i] : depth_off[i + 1]]) if has_depth[i] else (0, -1)
        return cls._assemble(config, c2w, intr, ts, locs, has_depth, indexed, voxels, file)

    @classmethod
    def _assemble(cls, config, c2w, intr, ts, locs, has_depth, indexed, voxels, file) -> "FrameStore":
        store = cls(config)
        store._c2w.extend(c2w)
        store._intrinsics.extend(intr)
        store._timestamp_ns.extend(ts)
        store._locs.extend(locs)
        store._has_depth.extend(has_depth)
        store._indexed.extend(indexed)
        store.voxels = voxels
        store._file = file
        store._rebuild_cells()
        return store

    @classmethod
    def from_meta(cls, data: dict[str, Any], locs: np.ndarray, file: FrameFile) -> "FrameStore":
        """A store over frames already in ``file``: ``meta_arrays(0, N)`` (or several ranges concatenated by
        ``concat_meta``) and their ``[N, 4]`` record locations. Raises ``SnapshotError`` on anything inconsistent."""
        config, c2w, intr, ts, indexed, voxels = cls._parse_meta(data)
        n = c2w.shape[0]
        locs = np.asarray(locs, dtype=np.int64)
        if locs.shape != (n, 4) or (n and (locs[:, 0].min() < 0 or locs[:, 1].min() <= 0)):
            raise SnapshotError(f"frame locations are not [{n}, 4] with positive image records")
        if n and max(int((locs[:, 0] + locs[:, 1]).max()), int((locs[:, 2] + locs[:, 3]).max())) > file.end:
            raise SnapshotError("frame file is shorter than the frames it should hold (truncated)")
        return cls._assemble(config, c2w, intr, ts, locs, locs[:, 3] >= 0, indexed, voxels, file)

    @staticmethod
    def _parse_meta(data: dict[str, Any]):
        try:
            version = int(data["version"])
            if version != SNAPSHOT_VERSION:
                raise SnapshotError(
                    f"frame history snapshot version {version} is not supported ({SNAPSHOT_VERSION} is)"
                )
            # older snapshots: sets at d, the oldest view of a full cell dropped, rebuilt at half dead
            config = HistoryConfig(**{"voxel_set_levels": 0, "compact_evict": "oldest",
                                      "compact_rebuild_dead_ratio": 1.0, **dict(data["config"])})
            c2w = np.asarray(data["c2w"], dtype=np.float64)
            intr = np.asarray(data["intrinsics"], dtype=np.float64)
            ts = np.asarray(data["timestamp_ns"], dtype=np.int64)
            indexed = np.asarray(data.get("indexed", np.ones(len(ts), dtype=bool)), dtype=bool)  # older: all
            voxels = VoxelSetIndex.from_arrays(data, config.index_tail_runs)
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"frame history snapshot is malformed ({type(exc).__name__}: {exc})") from None
        n = c2w.shape[0] if c2w.ndim == 3 else -1
        if not (c2w.shape == (n, 4, 4) and intr.shape == (n, 6) and ts.shape == (n,) and indexed.shape == (n,)
                and len(voxels) == n):
            raise SnapshotError(f"frame history snapshot arrays disagree in length (N = {n})")
        return config, c2w, intr, ts, indexed, voxels
