"""Incremental world snapshots: one directory per world, an append-only log keyed by what changed.

Layout of a world directory::

    world.log    records: memory blocks, history chunks, the first image, tombstones, commits
    frames.bin   the frame history's compressed frames (``world.history.FrameFile``), append-only

Record (little endian): ``magic "SPWL" | kind u8 | key length u16 | payload length u32 | crc32 u32`` then the key
(UTF-8) and the payload; the crc covers kind, key and payload. Kinds:

- ``BLOCK`` (key ``m/<block>``, ``h/<first frame>``, ``first_image``): a 16-byte content digest (BLAKE2b) then
  zstd(msgpack({array name: [dtype, shape, raw bytes]})). The spatial memory is not append-only (edits remove and
  move points, re-sorts renumber them), so it is keyed by *spatial block*: the points whose voxel key falls in one
  cube of ``2**BLOCK_BITS`` voxels per side, in voxel-key order; a save writes only blocks whose digest changed,
  and digests only blocks whose fingerprint (``MemoryBlocks.fingerprints``: 128 bits, seeded per log, kept in
  memory, never stored) differs from that of the block the log holds: most blocks of a save are unchanged.
  Every per-point array ``SpatialMemory.to_arrays()`` returns is kept (whatever names it has). The history is
  append-only: a chunk holds the metadata (poses, intrinsics, timestamps, record locations in ``frames.bin``,
  voxel sets) of the frames added since the previous save.
- ``TOMBSTONE`` (key of a memory block that is gone): written for blocks a save no longer has.
- ``COMMIT`` (key ``commit``): msgpack of the world's small fields, the frame count and ``frames.bin`` length,
  which frames are still retrieval candidates, and ``refs`` {key: digest} of every record the world consists of.

Loading scans the log, checking each record's crc: a torn append (the process died mid-write) or a damaged
record is skipped (logged), and the newest commit whose every ref is present and intact wins, so a crash loses
at most what was written after the last complete commit. ``frames.bin`` is cut back to the committed length.
When the log holds more than twice the bytes the live records need, the saver rewrites it with the live records
and one commit (a new file renamed over the old: atomic). Writes are ordered: frames fsynced, then the records
and the commit appended and fsynced, so a commit never refers to anything not on disk.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import structlog
import zstandard

from spatia.world import _memory_kernels as MK
from spatia.world import snapshot
from spatia.world.camera import Intrinsics
from spatia.world.errors import NotFoundError, SnapshotError
from spatia.world.geometry import KEY_BITS, KEY_MASK
from spatia.world.history import FrameFile, FrameStore, HistoryConfig, VoxelSetIndex
from spatia.world.memory import MemoryConfig, SpatialMemory

log = structlog.get_logger("spatia.world.worldlog")

LOG_NAME = "world.log"
FRAMES_NAME = "frames.bin"
FORMAT_VERSION = 1
BLOCK_BITS = 6  # memory blocks are cubes of 64 voxels per side (64 cm at d = 1 cm): a room is ~10^2-10^3 blocks
_MAGIC = b"SPWL"
_HEADER = struct.Struct("<4sBHII")  # magic, kind, key length, payload length, crc32
BLOCK, TOMBSTONE, COMMIT = 1, 2, 3
_DIGEST = 16
_ZSTD_LEVEL = 1
COMPACT_RATIO = 2.0  # rewrite the log once it is this many times the live records' size ...
COMPACT_MIN_BYTES = 1 << 20  # ... and at least this large


# ---------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------


def _record(kind: int, key: str, payload: bytes) -> bytes:
    k = key.encode()
    crc = zlib.crc32(payload, zlib.crc32(k, zlib.crc32(bytes([kind]))))
    return _HEADER.pack(_MAGIC, kind, len(k), len(payload), crc) + k + payload


@dataclass
class _Scanned:
    kind: int
    key: str
    offset: int  # of the record's header in the log
    length: int  # whole record
    payload: memoryview


def scan(data: bytes) -> tuple[list[_Scanned], int, int]:
    """Parse a log's bytes: (intact records in order, end of the last intact record, records skipped as damaged).

    A record whose header is garbled is resynchronised past (the next magic); one whose crc fails is skipped; one
    that runs past the end of the data is a torn append and ends the scan."""
    out: list[_Scanned] = []
    view = memoryview(data)
    pos, end, skipped = 0, 0, 0
    while pos + _HEADER.size <= len(data):
        magic, kind, klen, plen, crc = _HEADER.unpack_from(data, pos)
        if magic != _MAGIC or kind not in (BLOCK, TOMBSTONE, COMMIT):
            nxt = data.find(_MAGIC, pos + 1)
            skipped += 1
            if nxt < 0:
                break
            pos = nxt
            continue
        total = _HEADER.size + klen + plen
        if pos + total > len(data):
            break  # torn append: the process died while writing it
        key_b = view[pos + _HEADER.size : pos + _HEADER.size + klen]
        payload = view[pos + _HEADER.size + klen : pos + total]
        if zlib.crc32(payload, zlib.crc32(key_b, zlib.crc32(bytes([kind])))) != crc:
            skipped += 1
            pos += total
            continue
        out.append(_Scanned(kind, bytes(key_b).decode(errors="replace"), pos, total, payload))
        pos += total
        end = pos
    return out, end, skipped


def _pack_arrays(arrays: dict[str, np.ndarray], compressor: zstandard.ZstdCompressor | None = None) -> bytes:
    """zstd(msgpack({name: [dtype, shape, raw bytes]})). ``compressor``: one at ``_ZSTD_LEVEL`` to reuse (not
    thread-safe: one caller at a time), the same bytes as a new one: a save packs ~10^3 blocks, and a compressor
    made per block set up its context each time. The raw bytes go to msgpack as memoryviews (packed as bin, as
    bytes are), not copied first."""
    doc = {name: [a.dtype.str, list(a.shape), memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))]
           for name, a in arrays.items()}
    compressor = compressor or zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return compressor.compress(msgpack.packb(doc, use_bin_type=True))


def _unpack_arrays(blob: bytes | memoryview, what: str) -> dict[str, np.ndarray]:
    try:
        doc = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(blob), raw=False)
        return {name: np.frombuffer(raw, dtype=np.dtype(dt)).reshape(shape) for name, (dt, shape, raw) in doc.items()}
    except (zstandard.ZstdError, msgpack.UnpackException, ValueError, TypeError) as exc:
        raise SnapshotError(f"{what}: record does not decode ({type(exc).__name__}: {exc})") from None


def _digest(arrays: dict[str, np.ndarray]) -> bytes:
    h = hashlib.blake2b(digest_size=_DIGEST)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.digest()


def memory_block_ids(voxel_keys: np.ndarray) -> np.ndarray:
    """``[N]`` int64 block of each packed voxel key: its coordinates floor-divided by ``2**BLOCK_BITS`` (on the
    offset fields, which is the same for negative coordinates since the offset is a multiple of 2**BLOCK_BITS)."""
    return _canonical_keys(voxel_keys) >> (3 * BLOCK_BITS)


def _canonical_keys(voxel_keys: np.ndarray) -> np.ndarray:
    """``[N]`` int64 ``block << 3 * BLOCK_BITS | voxel in block``: sorting by it groups points by block in one
    sort (45 + 18 bits, so it stays >= 0)."""
    k = np.asarray(voxel_keys, dtype=np.int64)
    x = (k >> (2 * KEY_BITS)) & KEY_MASK
    y = (k >> KEY_BITS) & KEY_MASK
    z = k & KEY_MASK
    b, m = KEY_BITS - BLOCK_BITS, (1 << BLOCK_BITS) - 1
    block = ((x >> BLOCK_BITS) << (2 * b)) | ((y >> BLOCK_BITS) << b) | (z >> BLOCK_BITS)
    local = ((x & m) << (2 * BLOCK_BITS)) | ((y & m) << BLOCK_BITS) | (z & m)
    return (block << (3 * BLOCK_BITS)) | local


def split_memory(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Memory arrays -> {``m/<block>``: the block's arrays} with points in a canonical order (by voxel inside the
    block), which the digests are taken of: the same points give the same block whatever order the memory holds
    them in. (``MemoryBlocks.of`` is what a save uses; ``split_memory_reference`` the obviously correct twin.)"""
    split = MemoryBlocks.of(arrays)
    return {key: split.block(i) for i, key in enumerate(split.keys)}


def _fingerprint_seeds(seed: int) -> tuple[np.uint64, np.uint64]:
    s = int(seed) & ((1 << 64) - 1)
    return np.uint64(s), np.uint64(s ^ 0xD6E8FEB86659FD93)


def _fingerprint_values(name: str, a: np.ndarray) -> tuple[np.ndarray, np.uint64]:
    """An array as ``block_fingerprints`` reads it: ``[N, C]`` unsigned integers of its item size (its raw bytes
    ``[N, row bytes]`` where the item size is not 1, 2, 4 or 8), and its salt (name, dtype and row shape)."""
    a = np.ascontiguousarray(a)
    rows = a.reshape(a.shape[0], math.prod(a.shape[1:]))  # [N, C] (C = 1 for a vector; N may be 0)
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(a.dtype.itemsize)
    values = rows.view(unsigned) if unsigned is not None else rows.view(np.uint8).reshape(a.shape[0], -1)
    return values, np.uint64(zlib.crc32(f"{name}:{a.dtype.str}:{a.shape[1:]}".encode()))


def reference_fingerprints(split: "MemoryBlocks", seed: int) -> np.ndarray:
    """``MemoryBlocks.fingerprints`` in plain Python, element by element (the slow twin the tests compare with)."""
    mask = (1 << 64) - 1

    def mix(h: int, v: int, mul: int) -> int:
        h = ((h ^ v) * mul) & mask
        return h ^ (h >> 29)

    muls = (int(MK._FP_MUL_A), int(MK._FP_MUL_B))
    out = np.zeros((len(split.keys), 2), np.uint64)
    lanes0 = [int(x) for x in _fingerprint_seeds(seed)]
    for b, (a0, b0) in enumerate(zip(split.starts, split.stops)):
        lanes = list(lanes0)
        for name in sorted(split.arrays):
            values, salt = _fingerprint_values(name, split.arrays[name])
            bits = values.dtype.itemsize * 8
            for lane in range(2):
                h = mix(lanes[lane], int(salt) ^ (0 if lane == 0 else 0x5555555555555555), muls[lane])
                h = mix(h, b0 - a0, muls[lane])
                for row in values[a0:b0].tolist():
                    for w in range(0, len(row), 64 // bits):
                        word = sum(v << (q * bits) for q, v in enumerate(row[w : w + 64 // bits]))
                        h = mix(h, word, muls[lane])
                lanes[lane] = h
        out[b] = lanes
    return out


def split_memory_reference(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``split_memory`` in plain numpy (the slow twin the tests compare with)."""
    keys = arrays["voxel_keys"]
    if keys.size == 0:
        return {}
    canon = _canonical_keys(keys)
    order = np.argsort(canon)  # keys are unique: no ties, any sort gives the same order
    blocks = canon[order] >> (3 * BLOCK_BITS)
    cuts = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [blocks.shape[0]]])
    sorted_arrays = {name: a[order] for name, a in arrays.items()}
    return {
        f"m/{int(blocks[a])}": {name: arr[a:b] for name, arr in sorted_arrays.items()}
        for a, b in zip(starts.tolist(), stops.tolist())
    }


def _take_rows(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``a[order]``, by a serial numba gather without the GIL for the memory's vectors and [N, C] arrays (numpy's
    fancy gather of an [N, 3] uint8 array is several times slower)."""
    a = np.ascontiguousarray(a)
    if a.ndim == 1:
        return MK.take_rows(a, order)
    if a.ndim == 2:
        return MK.take_rows2(a, order)
    return a[order]


@dataclass
class MemoryBlocks:
    """A memory split into log blocks: block ``keys[i]`` (``m/<block>``) is rows ``starts[i]:stops[i]`` of
    ``arrays`` (the memory's arrays in canonical order: by block, then by voxel inside the block).

    What a save does per block is the one part left in Python: its digest (``digests``, no numpy view per array
    and block) and, for the few blocks that changed, its arrays (``block``) to pack."""

    keys: list[str]
    starts: list[int]
    stops: list[int]
    arrays: dict[str, np.ndarray]
    _parts: list | None = field(default=None, repr=False, compare=False)  # ``digest``'s per-array views, made once

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> "MemoryBlocks":
        keys = arrays["voxel_keys"]
        if keys.size == 0:
            return cls([], [], [], {})
        canon = MK.log_block_keys(np.ascontiguousarray(keys, dtype=np.int64), BLOCK_BITS)
        # keys are unique, so any sort gives the same order; a stable one (timsort) follows the runs of the
        # memory's own block-major order (~98 % of neighbouring points already in canonical order), several
        # times faster than the default quicksort on it (docs/BENCHMARKS.md, "session 16, engineer lat5")
        order = np.argsort(canon, kind="stable")
        first, ids = MK.log_block_starts(canon, order, BLOCK_BITS)
        starts = first.tolist()
        return cls([f"m/{b}" for b in ids.tolist()], starts, [*starts[1:], int(order.shape[0])],
                   {name: _take_rows(a, order) for name, a in arrays.items()})

    def block(self, i: int) -> dict[str, np.ndarray]:
        a, b = self.starts[i], self.stops[i]
        return {name: arr[a:b] for name, arr in self.arrays.items()}

    def digests(self) -> list[bytes]:
        """``_digest(self.block(i))`` of every block, the same bytes: each array's raw bytes sliced by rows."""
        return [self.digest(i) for i in range(len(self.keys))]

    def digest(self, i: int) -> bytes:
        """``_digest(self.block(i))``: block ``i``'s arrays' raw bytes sliced by rows."""
        if self._parts is None:
            parts = []
            for name in sorted(self.arrays):
                a = np.ascontiguousarray(self.arrays[name])
                rest = tuple(a.shape[1:])
                row_bytes = a.dtype.itemsize * math.prod(rest)
                raw = memoryview(a.reshape(-1).view(np.uint8))
                parts.append((f"{name}:{a.dtype.str}:", rest, row_bytes, raw))
            self._parts = parts
        a, b = self.starts[i], self.stops[i]
        h = hashlib.blake2b(digest_size=_DIGEST)
        for prefix, rest, row_bytes, raw in self._parts:
            h.update(f"{prefix}{(b - a, *rest)}".encode())
            h.update(raw[a * row_bytes : b * row_bytes])
        return h.digest()

    def fingerprints(self, seed: int) -> np.ndarray:
        """``[B, 2]`` uint64: a 128-bit fingerprint of each block's arrays (``_memory_kernels.block_fingerprints``
        over each array in name order, salted by ``seed`` and the array's name, dtype and row shape), a few times
        cheaper than its digest (docs/BENCHMARKS.md, session 23). A save compares it with the one of the block the
        log holds and digests only the blocks that differ (``WorldLog.write``); ``reference_fingerprints`` is the
        plain-Python twin."""
        out = np.zeros((len(self.keys), 2), np.uint64)
        if not self.keys:
            return out
        out[:, 0], out[:, 1] = _fingerprint_seeds(seed)
        starts, stops = np.asarray(self.starts, np.int64), np.asarray(self.stops, np.int64)
        for name in sorted(self.arrays):
            values, salt = _fingerprint_values(name, self.arrays[name])
            MK.block_fingerprints(values, starts, stops, salt, out)
        return out


def _slice_chunk(chunk: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
    """Frames ``[start, ...)`` of a history chunk (``start`` relative to the chunk)."""
    if start == 0:
        return chunk
    off = chunk["voxel_offsets"]
    out = {k: v[start:] for k, v in chunk.items() if k not in ("voxel_col_keys", "voxel_cols", "voxel_offsets")}
    out["voxel_col_keys"] = chunk["voxel_col_keys"]
    out["voxel_cols"] = chunk["voxel_cols"][off[start] :]
    out["voxel_offsets"] = off[start:] - off[start]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SavePlan:
    """What ``prepare_save`` copied on the world's thread, for ``write`` on a saver thread."""

    seq: int
    meta: dict[str, Any]  # small fields of the commit
    memory: dict[str, np.ndarray]  # SpatialMemory.to_arrays() (copies)
    chunk_start: int  # first frame of ``chunk``
    chunk: dict[str, np.ndarray] | None  # history metadata of frames [chunk_start, n_frames)
    first_image: np.ndarray | None
    copy_s: float = 0.0


@dataclass
class SaveReport:
    bytes_written: int  # appended to the log this save (or the compacted log's size)
    blocks_written: int
    blocks_removed: int
    log_bytes: int
    live_bytes: int
    compacted: bool
    write_s: float
    skipped: bool = False  # a newer plan was already written


@dataclass
class _Live:
    digest: bytes
    offset: int
    length: int


class WorldLog:
    """The incremental snapshot of one world in ``directory`` (see the module docstring).

    ``prepare_save(world)`` runs on the world's thread (it copies the memory arrays and the new frames' metadata;
    the first call also moves the history's frames into ``frames.bin``); ``write(plan)`` runs on any one thread at
    a time and appends what changed. ``WorldLog.load(directory)`` returns ``(world, log)`` to continue with.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / LOG_NAME
        self._lock = threading.Lock()  # one write at a time
        self._zstd = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)  # used under ``_lock`` only
        self._live: dict[str, _Live] = {}  # records the last commit refers to
        # the memory blocks' fingerprints (``MemoryBlocks.fingerprints``) as the last commit written here holds them:
        # a save digests only the blocks whose fingerprint differs. Empty after a load (the first save digests
        # every block); seeded per log, so no memory can be built to collide with one it does not know.
        self._fingerprints: dict[str, bytes] = {}
        self._fingerprint_seed = int.from_bytes(os.urandom(8), "little")
        self._seq = 0  # last plan handed out
        self._written_seq = 0
        self._frames_written = 0  # frames whose metadata is in a committed chunk
        self._log_end = 0  # bytes of the log that are intact records
        self._frames: FrameFile | None = None
        self.closed = False

    # --- state ------------------------------------------------------------------------------------------------

    @property
    def log_bytes(self) -> int:
        return self._log_end

    @property
    def live_bytes(self) -> int:
        return sum(r.length for r in self._live.values())

    # --- save -------------------------------------------------------------------------------------------------

    def prepare_save(self, world: Any) -> SavePlan:
        """On the world's thread: a consistent copy of what the next save needs (memory arrays, new frames)."""
        t0 = time.perf_counter()
        history: FrameStore = world.history
        if self._frames is None or history.frame_file is not self._frames:
            # first save of this world here: its frames move into the directory's frame file (a world loaded
            # from this directory is on it already)
            moved = history.frame_file.path != self.directory / FRAMES_NAME
            self._frames = history.attach(self.directory / FRAMES_NAME)
            if moved:
                self._frames_written = 0
        history.flush()
        n = len(history)
        start = min(self._frames_written, n)
        chunk = None
        if n > start:
            chunk = {**{k: v for k, v in history.meta_arrays(start, n).items() if isinstance(v, np.ndarray)},
                     "locations": history.locations()[start:n].copy()}
        K = world.intrinsics
        meta = {
            "format_version": FORMAT_VERSION,
            "info": asdict(world.info),
            "intrinsics": [K.fx, K.fy, K.cx, K.cy, K.width, K.height],
            "origin_c2w": np.asarray(world.origin_c2w, dtype=np.float64).reshape(-1).tolist(),
            "current_c2w": np.asarray(
                world.current_c2w if world.current_c2w is not None else world.origin_c2w, dtype=np.float64
            ).reshape(-1).tolist(),
            "memory_config": asdict(world.memory.config),
            "history_config": asdict(history.config),
            "n_frames": n,
            "frames_end": int(self._frames.end),
            "indexed": np.packbits(history.indexed()).tobytes(),
            "saved_ns": time.time_ns(),
        }
        with self._lock:
            self._seq += 1
            seq = self._seq
        return SavePlan(seq, meta, world.memory.to_arrays(), start, chunk,
                        world.first_image, copy_s=time.perf_counter() - t0)

    def write(self, plan: SavePlan) -> SaveReport:
        """Append what changed since the last write and a commit; fsync; compact when the log is mostly dead."""
        with self._lock:
            if self.closed:
                raise SnapshotError(f"world log {self.directory} is closed")
            t0 = time.perf_counter()
            if plan.seq <= self._written_seq:
                return SaveReport(0, 0, 0, self._log_end, self.live_bytes, False, 0.0, skipped=True)
            records: list[tuple[str, bytes, bytes]] = []  # (key, digest, record bytes)
            split = MemoryBlocks.of(plan.memory)
            fingerprints = [fp.tobytes() for fp in split.fingerprints(self._fingerprint_seed)]
            for i, key in enumerate(split.keys):
                live = self._live.get(key)
                if live is not None and self._fingerprints.get(key) == fingerprints[i]:
                    continue  # the block the log holds: no digest (most blocks of a save)
                digest = split.digest(i)
                if live is None or live.digest != digest:
                    packed = _pack_arrays(split.block(i), self._zstd)
                    records.append((key, digest, _record(BLOCK, key, digest + packed)))
            blocks = set(split.keys)
            removed = [k for k in self._live if k.startswith("m/") and k not in blocks]
            if plan.chunk is not None and plan.chunk_start + len(plan.chunk["c2w"]) > self._frames_written:
                chunk = _slice_chunk(plan.chunk, max(0, self._frames_written - plan.chunk_start))
                first = max(plan.chunk_start, self._frames_written)
                digest = _digest(chunk)
                key = f"h/{first}"
                records.append((key, digest, _record(BLOCK, key, digest + _pack_arrays(chunk, self._zstd))))
            if plan.first_image is not None:
                digest = _digest({"rgb": plan.first_image})
                live = self._live.get("first_image")
                if live is None or live.digest != digest:
                    records.append(("first_image", digest,
                                    _record(BLOCK, "first_image",
                                            digest + _pack_arrays({"rgb": plan.first_image}, self._zstd))))
            new_live = {k: v for k, v in self._live.items() if k not in removed}
            if self._frames is not None:
                self._frames.sync()  # the frames a commit counts are on disk before the commit
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            written = 0
            try:
                os.ftruncate(fd, self._log_end)  # drop a torn tail before appending after it
                pos = self._log_end
                buf = []
                for key, digest, rec in records:
                    new_live[key] = _Live(digest, pos + written, len(rec))
                    buf.append(rec)
                    written += len(rec)
                for key in removed:
                    rec = _record(TOMBSTONE, key, b"")
                    buf.append(rec)
                    written += len(rec)
                commit = _record(COMMIT, "commit", msgpack.packb(
                    {**plan.meta, "seq": plan.seq, "refs": {k: v.digest for k, v in new_live.items()}},
                    use_bin_type=True))
                buf.append(commit)
                written += len(commit)
                try:
                    _pwrite_all(fd, b"".join(buf), pos)
                    os.fsync(fd)
                except OSError:
                    # a full disk: give the partial append's space back (a later load would skip it anyway)
                    try:
                        os.ftruncate(fd, self._log_end)
                    except OSError:
                        pass
                    raise
            finally:
                os.close(fd)
            if self._log_end == 0:
                _fsync_dir(self.directory)  # the new file's name is durable too
            self._log_end += written
            self._live = new_live
            self._fingerprints = dict(zip(split.keys, fingerprints))
            self._written_seq = plan.seq
            self._frames_written = max(self._frames_written, int(plan.meta["n_frames"]))
            compacted = False
            live_bytes = self.live_bytes
            if self._log_end > max(COMPACT_RATIO * (live_bytes + len(commit)), COMPACT_MIN_BYTES):
                self._compact(commit)
                compacted = True
            return SaveReport(written, len(records), len(removed), self._log_end, live_bytes, compacted,
                              time.perf_counter() - t0)

    def _compact(self, commit: bytes) -> None:
        """Rewrite the log as its live records + the last commit: a new file, fsynced, renamed over the old."""
        # named by host and pid (``snapshot.temp_owner``): whoever loads this directory after a crash removes it
        # only once this writer is gone (several servers may share a data dir)
        tmp = self.directory / f".{LOG_NAME}.{snapshot.temp_owner()}.compact.tmp"
        src = os.open(self.path, os.O_RDONLY)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                pos = 0
                moved: dict[str, _Live] = {}
                for key, live in sorted(self._live.items(), key=lambda kv: kv[1].offset):
                    rec = os.pread(src, live.length, live.offset)
                    _pwrite_all(fd, rec, pos)
                    moved[key] = _Live(live.digest, pos, live.length)
                    pos += live.length
                _pwrite_all(fd, commit, pos)
                pos += len(commit)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.directory)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(src)
        self._live = moved
        self._log_end = pos
        log.debug("world log compacted", directory=str(self.directory), bytes=pos)

    def close(self) -> None:
        with self._lock:
            self.closed = True

    # --- load -------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path) -> tuple[Any, "WorldLog"]:
        """The world as of the newest intact commit in ``directory``, and a log to keep saving it with."""
        from spatia.world.state import World, WorldInfo

        directory = Path(directory)
        path = directory / LOG_NAME
        if not path.is_file():
            raise NotFoundError(f"world log not found: {path}")
        for tmp in remove_stale_temp_files(directory):
            log.info("stale compaction temp file removed", path=str(tmp))
        data = path.read_bytes()
        records, end, skipped = scan(data)
        if skipped:
            log.warning("world log records damaged, skipped", path=str(path), skipped=skipped)
        blocks: dict[tuple[str, bytes], _Scanned] = {}
        commits: list[tuple[_Scanned, dict]] = []
        for rec in records:
            if rec.kind == BLOCK and len(rec.payload) >= _DIGEST:
                blocks[(rec.key, bytes(rec.payload[:_DIGEST]))] = rec
            elif rec.kind == COMMIT:
                try:
                    commits.append((rec, msgpack.unpackb(rec.payload, raw=False)))
                except (msgpack.UnpackException, ValueError) as exc:
                    log.warning("world log commit does not decode, skipped", path=str(path), error=str(exc))
        for rec, doc in reversed(commits):
            refs = doc.get("refs", {})
            if all((k, bytes(d)) in blocks for k, d in refs.items()):
                break
            log.warning("world log commit refers to missing records, trying an older one", path=str(path),
                        seq=doc.get("seq"))
        else:
            raise SnapshotError(f"world log {path} holds no complete commit")
        if doc.get("format_version", 0) > FORMAT_VERSION:
            raise SnapshotError(f"world log format {doc.get('format_version')} is newer than this build reads")
        try:
            mem_parts = [_unpack_arrays(blocks[(k, bytes(d))].payload[_DIGEST:], k)
                         for k, d in refs.items() if k.startswith("m/")]
            memory_arrays = _concat_memory(mem_parts)
            # the block-sorted order a re-sort gives (``SpatialMemory`` keeps points sorted by it), so the loaded
            # memory starts fully indexed
            keys = memory_arrays["voxel_keys"]
            order = np.argsort(MK.sort_keys(keys, 0, keys.shape[0]), kind="stable") if keys.size else keys
            memory = SpatialMemory.from_arrays(MemoryConfig(**doc["memory_config"]),
                                               {k: v[order] for k, v in memory_arrays.items()})
            chunks = sorted(((int(k[2:]), _unpack_arrays(blocks[(k, bytes(d))].payload[_DIGEST:], k))
                             for k, d in refs.items() if k.startswith("h/")), key=lambda c: c[0])
            n = int(doc["n_frames"])
            indexed = np.unpackbits(np.frombuffer(doc["indexed"], dtype=np.uint8), count=n).astype(bool)
            history_meta = _concat_chunks(chunks, n, indexed)
            history_meta["config"] = doc["history_config"]
            history_meta["version"] = 1
            frames = FrameFile(directory / FRAMES_NAME, truncate_at=int(doc["frames_end"]))
            history = FrameStore.from_meta(history_meta, history_meta.pop("locations"), frames)
            first = None
            if "first_image" in refs:
                first = _unpack_arrays(blocks[("first_image", bytes(refs["first_image"]))].payload[_DIGEST:],
                                       "first_image")["rgb"].copy()
            fx, fy, cx, cy, w, h = doc["intrinsics"]
            world = World(
                info=WorldInfo(**doc["info"]),
                intrinsics=Intrinsics(fx, fy, cx, cy, int(w), int(h)),
                origin_c2w=np.asarray(doc["origin_c2w"], dtype=np.float64).reshape(4, 4),
                memory=memory,
                history=history,
                current_c2w=np.asarray(doc["current_c2w"], dtype=np.float64).reshape(4, 4),
                first_image=first,
            )
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"world log {path}: commit is malformed ({type(exc).__name__}: {exc})") from None
        wlog = cls(directory)
        wlog._live = {k: _Live(bytes(d), blocks[(k, bytes(d))].offset, blocks[(k, bytes(d))].length)
                      for k, d in refs.items()}
        wlog._log_end = end  # appends go after the last intact record (a torn tail is cut off at the next write)
        wlog._frames = frames
        wlog._frames_written = n
        wlog._seq = wlog._written_seq = int(doc.get("seq", 0))
        return world, wlog


def open_world(path: str | Path) -> tuple[Any, "WorldLog | None"]:
    """A world from a world directory (this format: ``(world, its log)``) or from a single-file snapshot
    (``world.state.World.save``, the format before this one and of ExportWorld: ``(world, None)``; save it with a
    new ``WorldLog(directory)``, whose first write holds everything)."""
    from spatia.world.state import World

    path = Path(path)
    if path.is_dir():
        return WorldLog.load(path)
    return World.load(path), None


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete compaction temp files (``.world.log.<host>.<pid>.compact.tmp``) whose writer is gone
    (``snapshot.writer_gone``: this host's pid dead or reused; another host's untouched for
    ``snapshot.TEMP_LEASE_S``); returns them."""
    removed = []
    for tmp in snapshot.stale_temp_files(directory, f".{LOG_NAME}.*.compact.tmp"):
        try:
            tmp.unlink()
        except FileNotFoundError:
            continue
        removed.append(tmp)
    return removed


def _concat_memory(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return SpatialMemory().to_arrays()
    names = parts[0].keys()
    for p in parts:
        if p.keys() != names:
            raise SnapshotError("memory blocks disagree on their arrays")
    return {name: np.concatenate([p[name] for p in parts]) for name in names}


def _concat_chunks(chunks: list[tuple[int, dict[str, np.ndarray]]], n: int, indexed: np.ndarray) -> dict[str, Any]:
    """History chunks covering frames ``[0, n)`` -> ``FrameStore.from_meta`` input, sets of frames no longer
    indexed emptied. Chunks must be contiguous."""
    pos = 0
    for start, c in chunks:
        if start != pos:
            raise SnapshotError(f"history chunks are not contiguous: frame {pos} expected, chunk starts at {start}")
        pos += len(c["c2w"])
    if pos < n:
        raise SnapshotError(f"history chunks hold {pos} frames, the commit counts {n}")
    parts = []
    for start, c in chunks:
        m = len(c["c2w"])
        keep = indexed[start : start + m] if start < n else np.zeros(0, bool)
        keep = np.concatenate([keep, np.ones(m - keep.shape[0], bool)])
        sizes = np.diff(c["voxel_offsets"])
        sizes = np.where(keep, sizes, 0)
        mask = np.repeat(keep, np.diff(c["voxel_offsets"]))
        offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        parts.append({"voxel_col_keys": c["voxel_col_keys"], "voxel_cols": c["voxel_cols"][mask],
                      "voxel_offsets": offsets})
    voxels = VoxelSetIndex.concat_arrays(parts)
    voxels["voxel_offsets"] = voxels["voxel_offsets"][: n + 1]
    voxels["voxel_cols"] = voxels["voxel_cols"][: voxels["voxel_offsets"][-1]]

    def cat(name: str, shape: tuple, dtype) -> np.ndarray:
        arrs = [c[name] for _, c in chunks]
        return (np.concatenate(arrs) if arrs else np.zeros((0, *shape), dtype))[:n]

    return {
        "c2w": cat("c2w", (4, 4), np.float64),
        "intrinsics": cat("intrinsics", (6,), np.float64),
        "timestamp_ns": cat("timestamp_ns", (), np.int64),
        "locations": cat("locations", (4,), np.int64),
        "indexed": indexed,
        **voxels,
    }


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
