"""The world store: worlds in the data dir, one worker thread per world, one controller per world.

Layout of the data dir::

    worlds/<world_id>.msgpack      the world-core snapshot (memory + frame history + metadata), atomic writes
    recordings/<recording_id>.mcap Play sessions (server/recording.py)

Every engine call on a world runs on that world's single worker thread (``WorldEntry.run``): the engine is not
thread-safe, and a slow clip of one world never blocks the event loop or other worlds. Play and Generate *claim*
the world (one controller at a time, FAILED_PRECONDITION for a second); Render, Edit, Export queue on the same
thread and so never see a half-updated memory.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numba
import structlog

from spatia.world.engine import Engine, EngineConfig
from spatia.world.errors import AlreadyExistsError, LimitExceededError, NotFoundError, PreconditionError, SnapshotError
from spatia.world import snapshot
from spatia.world.resources import release_freed_memory
from spatia.world.state import SNAPSHOT_VERSION, World

log = structlog.get_logger("spatia.server.store")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _low_priority() -> None:
    """Run the calling thread at a low CPU priority (Linux: nice 10, this thread only). A snapshot write takes
    ~0.3 s of CPU per 10^6 points; at normal priority it took a core from the session being played, whose frames
    then queued up (measured: 23 actions in a row over 50 ms around a save; 4 at nice 10). Not nice 19: under a
    saturating load that starved the saver for seconds, and every second unsaved is play a crash can lose."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux / not permitted: saves still work, at normal priority
        pass


def check_world_id(world_id: str) -> str:
    from spatia.world.errors import InvalidInputError

    if not _ID.match(world_id):
        raise InvalidInputError(
            f"world_id {world_id!r} is not valid: 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit"
        )
    return world_id


@dataclass
class WorldEntry:
    world: World
    path: Path  # its snapshot file
    executor: ThreadPoolExecutor
    controller: str | None = None  # session id of the Play / Generate call holding it
    clips_generated: int = 0
    clips_since_save: int = 0
    last_save_monotonic: float = field(default_factory=time.monotonic)  # when the latest snapshot copy was taken
    last_save_cpu_s: float = 0.0  # how long the latest snapshot took to copy, serialise and write
    snapshot_bytes: int = 0
    deleted: bool = False
    save_lock: threading.Lock = field(default_factory=threading.Lock)  # held while the snapshot file is written
    # Background saving during play: the worker thread takes a consistent copy of the world (``to_payload``,
    # ~25 ms at 1 M points) and a saver thread serialises and writes it (~1 s at 1 M points), so the next clip
    # does not wait for the disk. Sequence numbers keep an older copy from overwriting a newer one.
    saver: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        1, thread_name_prefix="world-saver", initializer=_low_priority))
    _latest_lock: threading.Lock = field(default_factory=threading.Lock)
    _latest: tuple[int, dict] | None = None  # (sequence, payload) waiting for the saver
    _save_scheduled: bool = False
    _seq: int = 0  # last payload sequence number handed out
    _written_seq: int = 0  # sequence number of the snapshot on disk
    busy_worlds: Callable[[], int] = lambda: 1  # how many worlds are being played or generated right now

    @property
    def world_id(self) -> str:
        return self.world.world_id

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on this world's worker thread and await it."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._call, fn, args)

    def _call(self, fn: Callable[..., Any], args: tuple) -> Any:
        # The world core's parallel kernels (render, warp, depth fill) split each call over numba's threads. With
        # one world in play that uses the idle core; with several, each world's worker is already one thread of
        # work, and splitting every kernel again only adds OpenMP hand-offs between oversubscribed threads.
        # Measured (benchmarks/play.py, 4 sessions, 2 cores): 9.9-11.4 fps each with 2 kernel threads per call,
        # 11.6-12.3 with 1; one session kept its p95 latency either way (35-49 vs 39-51 ms).
        numba.set_num_threads(1 if self.busy_worlds() > 1 else numba.config.NUMBA_NUM_THREADS)
        return fn(*args)

    def _next_payload(self) -> tuple[int, dict, float]:
        t0 = time.perf_counter()
        payload = self.world.to_payload()  # copies: the world may change while it is written
        with self._latest_lock:
            self._seq += 1
            return self._seq, payload, time.perf_counter() - t0

    def _write(self, seq: int, payload: dict, copy_s: float = 0.0) -> int:
        with self.save_lock:
            if self.deleted or seq <= self._written_seq:  # deleted, or a newer snapshot is already on disk
                return self.snapshot_bytes
            t0 = time.perf_counter()
            self.snapshot_bytes = snapshot.save(self.path, payload, version=SNAPSHOT_VERSION)
            write_s = time.perf_counter() - t0
            self.last_save_cpu_s = copy_s + write_s
            self._written_seq = seq
            log.debug("world saved", world_id=self.world_id, bytes=self.snapshot_bytes, copy_ms=round(copy_s * 1e3, 1),
                      write_ms=round(write_s * 1e3, 1))
            return self.snapshot_bytes

    def save(self) -> int:
        """Write the snapshot atomically now (call on the worker thread, or when nothing else touches the world)."""
        if self.deleted:
            return 0
        item = self._next_payload()
        self.clips_since_save = 0
        self.last_save_monotonic = time.monotonic()
        return self._write(*item)

    def save_in_background(self) -> None:
        """Copy the world now (on the worker thread) and write it on the saver thread; a copy still waiting when a
        newer one arrives is replaced by it (only the newest needs writing)."""
        if self.deleted:
            return
        item = self._next_payload()
        self.clips_since_save = 0
        self.last_save_monotonic = time.monotonic()
        with self._latest_lock:
            self._latest = item
            if not self._save_scheduled:
                self._save_scheduled = True
                self.saver.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._latest_lock:
                item, self._latest = self._latest, None
                if item is None:
                    self._save_scheduled = False
                    return
            try:
                self._write(*item)
            except Exception as exc:  # noqa: BLE001 -- a failed write keeps the previous snapshot; log and go on
                log.error("world snapshot write failed", world_id=self.world_id, error=str(exc))

    def save_due(self, every_clips: int, interval_s: float, max_duty: float = 1.0) -> bool:
        """Whether a played world should be saved now (``ServerConfig.save_every_clips``, ``save_interval_s`` and
        ``save_max_duty``)."""
        wait_s = interval_s if max_duty >= 1.0 else max(interval_s, self.last_save_cpu_s / max_duty)  # 1: no limit
        return self.clips_since_save >= every_clips and time.monotonic() - self.last_save_monotonic >= wait_s

    def engine(self, generator, config: EngineConfig) -> Engine:
        """A fresh engine over this world (engines hold no state the world does not; clip ids count per engine)."""
        engine = Engine(self.world, generator, config)
        engine.clips_done = self.clips_generated
        return engine


class WorldStore:
    def __init__(self, data_dir: Path, max_worlds: int) -> None:
        self.data_dir = Path(data_dir)
        self.worlds_dir = self.data_dir / "worlds"
        self.worlds_dir.mkdir(parents=True, exist_ok=True)
        self.max_worlds = max_worlds
        self._entries: dict[str, WorldEntry] = {}
        self._reserved: set[str] = set()  # ids being created (the build runs off the loop)

    # ---- loading -----------------------------------------------------------------------------------------

    def load_all(self) -> list[str]:
        """Load every snapshot in the data dir; unreadable ones are logged and skipped (left on disk untouched)."""
        for path in sorted(self.worlds_dir.glob("*.msgpack")):
            try:
                world = World.load(path)
            except (SnapshotError, OSError, ValueError) as exc:
                log.error("world snapshot unreadable, skipped", path=str(path), error=str(exc))
                continue
            if world.world_id != path.stem:
                log.error("world snapshot id does not match its file name, skipped", path=str(path))
                continue
            self._add(world, path.stat().st_size)
        log.info("worlds loaded", count=len(self._entries), data_dir=str(self.data_dir))
        return sorted(self._entries)

    def _add(self, world: World, snapshot_bytes: int) -> WorldEntry:
        entry = WorldEntry(
            world, self.worlds_dir / f"{world.world_id}.msgpack",
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"world-{world.world_id}"),
            snapshot_bytes=snapshot_bytes, busy_worlds=self.controlled_count,
        )
        self._entries[world.world_id] = entry
        return entry

    def controlled_count(self) -> int:
        """Worlds held by a Play or Generate call right now."""
        # list(): one C-level copy, so a world added meanwhile on the event loop cannot break the count
        return sum(1 for e in list(self._entries.values()) if e.controller is not None)

    # ---- CRUD --------------------------------------------------------------------------------------------

    def new_id(self, requested: str) -> str:
        """Reserve ``requested`` (validated) or a fresh id; raise ALREADY_EXISTS / RESOURCE_EXHAUSTED."""
        world_id = check_world_id(requested) if requested else uuid.uuid4().hex[:12]
        if world_id in self._entries or world_id in self._reserved:
            raise AlreadyExistsError(f"world {world_id!r} already exists")
        if len(self._entries) + len(self._reserved) >= self.max_worlds:
            raise LimitExceededError(f"limit max_worlds={self.max_worlds} reached; delete a world first")
        self._reserved.add(world_id)
        return world_id

    def release_id(self, world_id: str) -> None:
        self._reserved.discard(world_id)

    async def add(self, world: World) -> WorldEntry:
        """Register a freshly built world (its id reserved by ``new_id``) and save it before answering."""
        try:
            entry = self._add(world, 0)
            await entry.run(entry.save)
            return entry
        finally:
            self._reserved.discard(world.world_id)

    def get(self, world_id: str) -> WorldEntry:
        entry = self._entries.get(world_id)
        if entry is None:
            raise NotFoundError(f"world {world_id!r} not found")
        return entry

    def entries(self) -> list[WorldEntry]:
        return [self._entries[k] for k in sorted(self._entries)]

    async def delete(self, world_id: str) -> None:
        entry = self.get(world_id)
        if entry.controller is not None:
            raise PreconditionError(f"world {world_id!r} is in use by session {entry.controller}; end it first")
        del self._entries[world_id]
        entry.deleted = True

        def _remove() -> None:
            with entry.save_lock:
                entry.path.unlink(missing_ok=True)
            entry.world.close()  # its frame file; on the worker thread, after every call queued before the delete

        await entry.run(_remove)
        entry.executor.shutdown(wait=False)
        entry.saver.shutdown(wait=False)
        del entry  # the last reference here: the world is freed before the trim
        await asyncio.to_thread(release_freed_memory)  # the world's memory goes back to the OS (world/resources.py)

    # ---- control -----------------------------------------------------------------------------------------

    def claim(self, world_id: str, session_id: str) -> WorldEntry:
        entry = self.get(world_id)
        if entry.controller is not None:
            raise PreconditionError(
                f"world {world_id!r} is already controlled by session {entry.controller}; one controller per world"
            )
        entry.controller = session_id
        return entry

    def release(self, entry: WorldEntry, session_id: str) -> None:
        if entry.controller == session_id:
            entry.controller = None

    # ---- shutdown ----------------------------------------------------------------------------------------

    async def save_all(self) -> int:
        """Save every world on its worker thread (after whatever is queued there); returns how many."""
        entries = [e for e in self._entries.values() if not e.deleted]
        await asyncio.gather(*(e.run(e.save) for e in entries))
        return len(entries)

    def close(self) -> None:
        for entry in self._entries.values():
            entry.executor.shutdown(wait=True)
            entry.saver.shutdown(wait=True)  # background snapshots finish before the process ends
