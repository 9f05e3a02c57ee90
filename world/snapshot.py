"""Versioned msgpack snapshots with zstd-compressed numpy arrays, written atomically.

A snapshot is one msgpack map: ``{"format": "spatia-world", "version": N, ...payload}``. Arrays anywhere in the
payload are stored as ``{"__ndarray__": dtype, "shape": [...], "zstd": bytes}`` so the file is self-describing
and readable from any msgpack implementation. Writes go to a temporary file in the same directory, are fsynced,
then renamed over the target (and the directory fsynced): a crash leaves either the old or the new file, never
a torn one.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import msgpack
import numpy as np
import zstandard

from spatia.world.errors import NotFoundError, SnapshotError

FORMAT = "spatia-world"
VERSION = 1
_ZSTD_LEVEL = 1  # the fastest level: a played world is snapshotted every few seconds (1.4 M points + 300 frames:
# 205 ms at level 1 vs 291 ms at level 3, 53 vs 44 MB)


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {
            "__ndarray__": arr.dtype.str,
            "shape": list(arr.shape),
            # the array's own buffer: no copy (zstd reads it without holding the GIL)
            "zstd": zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(arr.reshape(-1).view(np.uint8)),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    if is_dataclass(obj) and not isinstance(obj, type):
        return _encode(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            try:
                raw = zstandard.ZstdDecompressor().decompress(obj["zstd"])
                return np.frombuffer(raw, dtype=np.dtype(obj["__ndarray__"])).reshape(obj["shape"]).copy()
            except (zstandard.ZstdError, ValueError, TypeError, KeyError) as exc:
                raise SnapshotError(f"corrupt array in snapshot ({exc})") from None
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    atomic_write(path, lambda f: f.write(data))


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask is process-wide, so not toggled while threads write


def default_file_mode() -> int:
    """What ``open(path, "w")`` would give a new file (0644 under the usual umask 022); mkstemp gives 0600."""
    return 0o666 & ~_UMASK


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temp file in ``path``'s directory, fsync, rename over ``path``, fsync the
    directory: a crash leaves the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # named by host and pid: a server starting on a shared data dir removes only temp files of dead writers
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{temp_owner()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())  # snapshots and exports are ordinary files for their owner's tools
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------------------------------------------
# Temp files and their writers
# ---------------------------------------------------------------------------------------------------------------

# A temp file of *another* host is stale once it has not been written to for this long. Its writer cannot be asked
# (its pid means nothing here), and a writer writes its temp file without pause until it renames it: a single-file
# snapshot or a log compaction takes seconds (28 MB at ~100 MB/s). An hour leaves room for a slow shared disk and
# for clock skew between hosts (the mtime is the writer's or the file server's clock).
TEMP_LEASE_S = 3600.0
# How far a process's start time (from /proc, whole seconds of boot time + clock ticks) may be off: a temp file
# modified before its pid's process started (by more than this) was written by an earlier process with that pid.
_START_SLACK_S = 2.0
# .<base>.<host>.<pid>.<tail>.tmp: tail is mkstemp's random part, or "compact" (world/worldlog.py)
_TEMP_NAME = re.compile(r"^\.(?P<base>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.(?P<tail>[^.]+)\.tmp$")
# written by builds before the host was in the name (compaction temps only): the host is unknown
_LEGACY_TEMP_NAME = re.compile(r"^\.world\.log\.(?P<pid>\d+)\.compact\.tmp$")


def host_name() -> str:
    """This host's name as temp file names carry it (dots would split the name's fields: they become ``_``)."""
    return socket.gethostname().replace(".", "_")


def temp_owner() -> str:
    """``<host>.<pid>``: the part of a temp file's name that says who writes it."""
    return f"{host_name()}.{os.getpid()}"


def temp_file_writer(name: str) -> tuple[str | None, int] | None:
    """``(host, pid)`` of a temp file's writer from its name (host None for the legacy ``.world.log.<pid>.compact
    .tmp``); None when the name is not one of ours."""
    m = _LEGACY_TEMP_NAME.match(name)
    if m:
        return None, int(m["pid"])
    m = _TEMP_NAME.match(name)
    if m:
        return m["host"], int(m["pid"])
    return None


def process_start_s(pid: int) -> float | None:
    """Wall-clock start time of process ``pid`` (Linux /proc, ~1 s precise); None when it does not exist or /proc
    cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22; the name in (...) may hold spaces
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def writer_gone(host: str | None, pid: int, mtime_s: float, *, hostname: str | None = None,
                lease_s: float = TEMP_LEASE_S, now_s: float | None = None) -> bool:
    """Whether the process that wrote a temp file (``host``, ``pid``, last modified at ``mtime_s``, wall clock)
    can no longer be writing it.

    - This host: its pid is gone, or the process with that pid started after the file was last written (the pid
      was reused: a restarted server in a container is pid 1 again), our own pid included.
    - Another host (or unknown, a legacy name): we cannot ask it; the file is stale once untouched for
      ``lease_s`` (``TEMP_LEASE_S``).
    """
    now_s = time.time() if now_s is None else now_s
    if host is None or host != (hostname or host_name()):
        return now_s - mtime_s > lease_s
    if not _pid_alive(pid):
        return True
    started = process_start_s(pid)
    return started is not None and mtime_s < started - _START_SLACK_S


def stale_temp_files(directory: str | Path, pattern: str = ".*.tmp", *, hostname: str | None = None,
                     lease_s: float = TEMP_LEASE_S, now_s: float | None = None) -> list[Path]:
    """Temp files in ``directory`` (matching ``pattern``, named by ``temp_owner``) whose writer is gone
    (``writer_gone``): safe to delete. Names that are not ours are never listed."""
    out = []
    for p in sorted(Path(directory).glob(pattern)):
        writer = temp_file_writer(p.name)
        if writer is None:
            continue
        try:
            mtime_s = p.stat().st_mtime
        except OSError:  # removed meanwhile (its writer renamed it)
            continue
        if writer_gone(*writer, mtime_s, hostname=hostname, lease_s=lease_s, now_s=now_s):
            out.append(p)
    return out


def dumps(payload: dict[str, Any], kind: str = FORMAT, version: int = VERSION) -> bytes:
    return msgpack.packb({"format": kind, "version": version, **_encode(payload)}, use_bin_type=True)


def loads(data: bytes, kind: str = FORMAT, max_version: int = VERSION) -> dict[str, Any]:
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise SnapshotError(f"not a readable snapshot ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != kind:
        raise SnapshotError(f"not a {kind} snapshot")
    version = doc.get("version")
    if not isinstance(version, int) or version > max_version or version < 1:
        raise SnapshotError(f"unsupported {kind} snapshot version {version!r} (this build reads 1..{max_version})")
    return _decode(doc)


def _stream(obj: Any, packer: msgpack.Packer, f: BinaryIO) -> int:
    """Write ``obj`` (already ``_encode``d) as msgpack to ``f``, byte for byte what ``packb`` gives, but with large
    binary values written straight from their buffers: ``packb`` copies all of them into one document while holding
    the GIL (~50 MB for a 1.4 M-point world after 10 s of play), stalling the threads that make frames."""
    if isinstance(obj, dict):
        n = f.write(packer.pack_map_header(len(obj)))
        for k, v in obj.items():
            n += f.write(packer.pack(k)) + _stream(v, packer, f)
        return n
    if isinstance(obj, list):
        n = f.write(packer.pack_array_header(len(obj)))
        return n + sum(_stream(v, packer, f) for v in obj)
    if isinstance(obj, (bytes, bytearray)) and 1 << 16 <= len(obj) < 1 << 32:
        return f.write(b"\xc6" + len(obj).to_bytes(4, "big")) + f.write(obj)  # msgpack bin 32 header, then the bytes
    return f.write(packer.pack(obj))


def save(path: str | Path, payload: dict[str, Any], kind: str = FORMAT, version: int = VERSION) -> int:
    """Serialise and write atomically (streamed: the same bytes as ``dumps``); returns the size in bytes."""
    doc = {"format": kind, "version": version, **_encode(payload)}
    size = 0

    def write(f: BinaryIO) -> None:
        nonlocal size
        size = _stream(doc, msgpack.Packer(use_bin_type=True), f)

    atomic_write(path, write)
    return size


def load(path: str | Path, kind: str = FORMAT, max_version: int = VERSION) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"snapshot not found: {path}")
    return loads(path.read_bytes(), kind, max_version)
