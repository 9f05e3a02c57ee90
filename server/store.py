"""The world registry: which worlds exist in the data dir and the host that owns each loaded one.

Layout of the data dir::

    worlds/<world_id>/world.log    the world's incremental snapshot log (world/worldlog.py): memory blocks,
                                   history chunks, tombstones, checksummed commits
    worlds/<world_id>/frames.bin   its frame history's compressed frames, append-only (world/history.py)
    worlds/<world_id>.msgpack      a world saved by a server before the log (single file): loaded at start-up,
                                   migrated into worlds/<world_id>/ by its first save, removed only after that
                                   save's commit is on disk
    recordings/<recording_id>.mcap Play sessions (server/recording.py)

Everything a loaded world holds (the World, its thread, saves, controller lease, clip counter) belongs to its
``WorldHost`` (server/host.py); the store only maps ids to hosts and guards the id space:

- ids being created are reserved until the first snapshot is on disk (creation is all-or-nothing: a failed build
  or a failed first save leaves no entry and no file);
- a snapshot that cannot be read at start-up keeps its id taken (DATA_LOSS; never overwritten by a create or an
  import); ``delete`` removes the file, the documented repair path;
- temp files of snapshot writers that died (``.<name>.<host>.<pid>.<rand>.tmp``, see world/snapshot.py) are
  removed at start-up, only when their writer is gone: this host's pid dead (or reused), another host's file
  untouched for ``snapshot.TEMP_LEASE_S`` (several servers may share the data dir); so are a world log's
  compaction temp files (``worlds/<id>/.world.log.<host>.<pid>.compact.tmp``, removed by ``WorldLog.load``).
- both a directory and an old file for one id (a migration cut off before the old file was removed): the
  directory wins when it holds a complete commit (the old file is then removed); otherwise the old file loads and
  the next save rewrites the directory.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

import structlog

from spatia.server.errors import DataLossError, check_id, limit_exceeded
from spatia.server.host import WorldHost
from spatia.world import snapshot
from spatia.world.errors import AlreadyExistsError, NotFoundError, SnapshotError
from spatia.world.resources import release_freed_memory
from spatia.world.state import World
from spatia.world.worldlog import WorldLog

log = structlog.get_logger("spatia.server.store")

WorldEntry = WorldHost  # the former name (tests and tools written against it)


def check_world_id(world_id: str, field: str = "world_id") -> str:
    return check_id(world_id, field, "world_id")


def stale_temp_files(directory: Path, hostname: str | None = None) -> list[Path]:
    """Temp files in ``directory`` whose writer is gone (``world.snapshot.stale_temp_files``: this host's dead or
    reused pid; another host's untouched for ``TEMP_LEASE_S``)."""
    return snapshot.stale_temp_files(directory, hostname=hostname)


class WorldIds(ABC):
    """World-id reservation, one rule for every store: an id with an unreadable snapshot is DATA_LOSS (never
    overwritten), a taken one ALREADY_EXISTS, and ids being created count against ``max_worlds`` until their
    first snapshot is on disk. A store says what "taken" and "how many" mean for it (``_taken``,
    ``_world_count``): its loaded worlds in-process; the shared data dir too behind several Ray front doors."""

    max_worlds: int
    broken: dict[str, str]  # id -> why its snapshot could not be read
    _reserved: set[str]  # ids being created (the build runs off the loop)

    @abstractmethod
    def _taken(self, world_id: str) -> bool:
        """Whether a world with this id exists (apart from the reservations)."""

    @abstractmethod
    def _world_count(self) -> int:
        """How many worlds count against ``max_worlds`` (apart from the reservations)."""

    def _check_free(self, world_id: str) -> None:
        if world_id in self.broken:
            raise DataLossError(f"world {world_id!r} has an unreadable snapshot on disk; it is never overwritten: "
                                "DeleteWorld removes it (docs/API.md, 'Unreadable snapshots')")
        if world_id in self._reserved or self._taken(world_id):
            raise AlreadyExistsError(f"world {world_id!r} already exists")

    def new_id(self, requested: str, field: str = "world_id") -> str:
        """Reserve ``requested`` (validated) or a fresh id; raise ALREADY_EXISTS / DATA_LOSS / RESOURCE_EXHAUSTED."""
        world_id = check_world_id(requested, field) if requested else uuid.uuid4().hex[:12]
        self._check_free(world_id)
        if self._world_count() + len(self._reserved) >= self.max_worlds:
            raise limit_exceeded("max_worlds", f"limit max_worlds={self.max_worlds} reached; delete a world first")
        self._reserved.add(world_id)
        return world_id

    def release_id(self, world_id: str) -> None:
        self._reserved.discard(world_id)

    @abstractmethod
    def get(self, world_id: str, field: str = "world_id"):
        """The world's host; NOT_FOUND, or DATA_LOSS for an id whose snapshot is unreadable."""

    async def get_async(self, world_id: str, field: str = "world_id"):
        """``get`` for the servicer's event loop. In-process a lookup never blocks; a store whose lookup may (Ray:
        starting a world's actor waits for its placement) overrides this to wait off the loop."""
        return self.get(world_id, field)


class WorldStore(WorldIds):
    def __init__(self, data_dir: Path, max_worlds: int) -> None:
        self.data_dir = Path(data_dir)
        self.worlds_dir = self.data_dir / "worlds"
        self.worlds_dir.mkdir(parents=True, exist_ok=True)
        self.max_worlds = max_worlds
        self._hosts: dict[str, WorldHost] = {}
        self._reserved: set[str] = set()  # ids being created (the build runs off the loop)
        self.broken: dict[str, str] = {}  # id -> why its snapshot could not be read (DATA_LOSS)

    # ---- loading -----------------------------------------------------------------------------------------

    def load_all(self) -> list[str]:
        """Remove dead writers' temp files, then load every snapshot; unreadable ones keep their id (DATA_LOSS)
        and stay on disk untouched."""
        for p in stale_temp_files(self.worlds_dir):
            try:
                size = p.stat().st_size
                p.unlink()
                log.warning("stale snapshot temp file removed", file=p.name, bytes=size)
            except OSError as exc:
                log.warning("stale snapshot temp file not removed", file=p.name, error=str(exc))
        _UNREADABLE = (SnapshotError, NotFoundError, OSError, ValueError, KeyError, TypeError)
        ids = sorted({p.name for p in self.worlds_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
                     | {p.stem for p in self.worlds_dir.glob("*.msgpack") if not p.name.startswith(".")})
        for world_id in ids:
            directory, legacy = self.worlds_dir / world_id, self.worlds_dir / f"{world_id}.msgpack"
            dir_error = None
            if directory.is_dir():
                try:
                    world, wlog = WorldLog.load(directory)
                except _UNREADABLE as exc:
                    dir_error = exc
                else:
                    if world.world_id != world_id:
                        world.close()
                        log.error("world log id does not match its directory name; id kept, left untouched",
                                  directory=world_id)
                        self.broken[world_id] = "id mismatch"
                        continue
                    if legacy.exists():  # a migration whose commit landed before the old file was removed
                        legacy.unlink(missing_ok=True)
                        log.info("old single-file snapshot removed (already migrated)", world_id=world_id)
                    self._add(world, wlog=wlog)
                    continue
            if not legacy.exists() and isinstance(dir_error, NotFoundError):
                # no log at all (frames only): a creation cut off before its first commit, never acknowledged
                shutil.rmtree(directory, ignore_errors=True)
                log.warning("world directory without a log removed (creation cut off)", directory=world_id)
                continue
            if not legacy.exists():
                log.error("world log unreadable; id kept, directory left untouched", directory=world_id,
                          error=str(dir_error)[:300])
                self.broken[world_id] = type(dir_error).__name__
                continue
            if dir_error is not None and not isinstance(dir_error, NotFoundError):
                # a first save into the directory was cut off (no complete commit yet): the old file is the
                # world, and the next save rewrites the directory from it
                log.warning("world directory holds no complete commit; loading the old single-file snapshot",
                            world_id=world_id, error=str(dir_error)[:300])
            try:
                world = World.load(legacy)
            except _UNREADABLE as exc:
                log.error("world snapshot unreadable; id kept, file left untouched", file=legacy.name,
                          error=str(exc)[:300])
                self.broken[world_id] = type(exc).__name__
                continue
            if world.world_id != world_id:
                world.close()
                log.error("world snapshot id does not match its file name; id kept, file left untouched",
                          file=legacy.name)
                self.broken[world_id] = "id mismatch"
                continue
            self._add(world, legacy_path=legacy, snapshot_bytes=legacy.stat().st_size)
        log.info("worlds loaded", count=len(self._hosts), unreadable=len(self.broken), data_dir=str(self.data_dir))
        return sorted(self._hosts)

    def _add(self, world: World, *, wlog: WorldLog | None = None, legacy_path: Path | None = None,
             snapshot_bytes: int = 0) -> WorldHost:
        host = WorldHost(world, self.worlds_dir / world.world_id, wlog=wlog, legacy_path=legacy_path,
                         snapshot_bytes=snapshot_bytes, busy_worlds=self.controlled_count)
        if wlog is not None:
            host.snapshot_bytes = host._disk_bytes()
        self._hosts[world.world_id] = host
        return host

    def controlled_count(self) -> int:
        """Worlds held by a Play or Generate call right now."""
        # list(): one C-level copy, so a world added meanwhile on the event loop cannot break the count
        return sum(1 for h in list(self._hosts.values()) if h.controller is not None)

    # ---- CRUD --------------------------------------------------------------------------------------------

    def _taken(self, world_id: str) -> bool:
        return world_id in self._hosts

    def _world_count(self) -> int:
        return len(self._hosts) + len(self.broken)

    async def add(self, world: World) -> WorldHost:
        """Register a freshly built world (its id reserved by ``new_id``) once its first snapshot is on disk;
        on any failure nothing is left (no entry, no file) and the id is free again."""
        host = WorldHost(world, self.worlds_dir / world.world_id, busy_worlds=self.controlled_count)
        try:
            await host.save()
        except BaseException:
            host.deleted = True
            host.log.close()
            shutil.rmtree(host.path, ignore_errors=True)
            host.executor.shutdown(wait=False)
            host.saver.shutdown(wait=False)
            raise
        finally:
            self._reserved.discard(world.world_id)
        self._hosts[world.world_id] = host
        return host

    def get(self, world_id: str, field: str = "world_id") -> WorldHost:
        check_world_id(world_id, field)
        host = self._hosts.get(world_id)
        if host is None:
            if world_id in self.broken:
                raise DataLossError(f"world {world_id!r}: its snapshot on disk is unreadable "
                                    f"({self.broken[world_id]}); DeleteWorld removes it")
            raise NotFoundError(f"world {world_id!r} not found")
        return host

    def hosts(self) -> list[WorldHost]:
        return [self._hosts[k] for k in sorted(self._hosts)]

    entries = hosts  # the former name

    async def delete(self, world_id: str) -> None:
        check_world_id(world_id)
        if world_id in self.broken and world_id not in self._hosts:  # the documented way to drop a broken one
            await asyncio.to_thread(shutil.rmtree, self.worlds_dir / world_id, True)
            await asyncio.to_thread((self.worlds_dir / f"{world_id}.msgpack").unlink, True)
            del self.broken[world_id]
            log.warning("unreadable world snapshot deleted on request", world_id=world_id)
            return
        host = self.get(world_id)
        await host.delete()  # FAILED_PRECONDITION while controlled
        self._hosts.pop(world_id, None)
        del host  # the last reference: the world is freed before the trim
        await asyncio.to_thread(release_freed_memory)  # its memory goes back to the OS (world/resources.py)

    async def unload(self, world_id: str) -> None:
        """Save and forget a loaded world (it stays on disk; ``load_all`` at the next start loads it again)."""
        host = self.get(world_id)
        await host.unload()
        self._hosts.pop(world_id, None)
        del host
        await asyncio.to_thread(release_freed_memory)

    # ---- shutdown ----------------------------------------------------------------------------------------

    async def save_all(self) -> int:
        """Save every world on its worker thread (after whatever is queued there); returns how many."""
        return await save_hosts([h for h in self._hosts.values() if not h.deleted])

    def close(self) -> None:
        for host in self._hosts.values():
            host.close()  # background snapshots finish before the process ends


async def save_hosts(hosts: list) -> int:
    """Save ``hosts`` at shutdown, all at once; a failure is logged, not raised. Returns how many were saved."""
    results = await asyncio.gather(*(h.save() for h in hosts), return_exceptions=True)
    for h, r in zip(hosts, results):
        if isinstance(r, BaseException):
            log.error("world not saved at shutdown", world_id=h.world_id, error=str(r)[:300])
    return sum(1 for r in results if not isinstance(r, BaseException))


def open_store(config) -> "WorldStore":
    """The registry a server uses (the one host-selection seam): in-process hosts, or with ``config.cluster``
    (``spatia serve --ray``) one Ray actor per world (server/ray_host.py; only then is Ray imported)."""
    if config.cluster is None:
        return WorldStore(config.data_dir, config.limits.max_worlds)
    from spatia.server.ray_host import RayWorldStore

    return RayWorldStore(config.data_dir, config.limits.max_worlds, config.cluster, config.generator,
                         dict(config.generator_kwargs), warm_kernels=config.warm_kernels)
