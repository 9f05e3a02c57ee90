"""One owner per loaded world: ``WorldHost`` owns the ``World``, its worker thread, its engines, its saves, its
controller lease and its clip counter. The gRPC servicer and the Play / Generate sessions talk to a world only
through a host's methods (``claim`` / ``release``, ``render``, ``edit``, ``export``, ``open_engine`` +
``play_clip`` / ``generate``, ``save``, ``stats``, ``unload`` / ``delete``), so a second implementation (each
host a Ray actor) can replace this in-process one without the session code changing.

In-process host: every engine call on the world runs on the host's single worker thread (``call``): the engine is
not thread-safe, and a slow clip of one world never blocks the event loop or other worlds. Render, Edit and
Export queue on the same thread and so never see a half-updated memory.

Saving sits behind ``save`` (now, on the worker), ``save_in_background`` (copy on the worker, write on a
low-priority saver thread) and ``autosave`` (the play save policy): the only places a snapshot is written. A world
is saved incrementally into its directory ``worlds/<id>/`` through ``world.worldlog.WorldLog``: ``prepare_save``
(a copy of the memory arrays and the new frames' metadata) on the worker, ``write`` (only the memory blocks that
changed, the new history chunk, a commit; fsynced) on the saver. A world loaded from an old single-file snapshot
(``worlds/<id>.msgpack``) carries it as ``legacy_path``; its first complete save into the directory migrates it,
and only then is the old file removed.

Counters for metrics (read at scrape time, plain attributes; ``stats()`` returns them as a dict):
``clips_generated``, ``frames_generated``, ``snapshot_bytes``, ``saves``, ``save_failures``,
``last_save_cpu_s``, plus ``memory_points`` and ``history_frames`` from the world and ``controlled``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import functools
import gc
import os
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import structlog

from spatia.world import numba_start, snapshot
from spatia.world.engine import Engine, EngineConfig, prepare_generator
from spatia.world.errors import NotFoundError, PreconditionError
from spatia.world.numba_start import numba
from spatia.world.state import SNAPSHOT_VERSION, World
from spatia.world.worldlog import FRAMES_NAME, SavePlan, WorldLog

log = structlog.get_logger("spatia.server.host")

# A server's OpenMP threads (numba's ``omp`` layer, spatia/cli.py) sleep between parallel regions instead of
# spinning: a world's render splits over both cores, and a spinning thread takes a core from the other thread of
# the same region (or from the encoder, the event loop, another world), which then finishes late while both spin.
# Measured in-process at 640x360 on the shared 2-core machine (docs/BENCHMARKS.md, "Served play: where the p95
# comes from"). libgomp reads it when numba first starts its threads (on the first parallel kernel run, not at
# import), so setting it when the server imports this module is in time; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
numba_start.start_threads()  # (after the policy: the threads start now, before any world's)


def _blas_threads_as_configured() -> None:
    """OpenBLAS's own threads spin between products and take the cores from every session (four sessions' p95 a
    third higher: docs/BENCHMARKS.md, session 27). spatia/cli.py sets ``OPENBLAS_NUM_THREADS=1`` for
    the libraries that load after it; one loaded earlier (a program that imported numpy before the CLI or the
    server) read no such variable, so the variable's count (an explicit one wins) is applied to the loaded ones in
    place here (threadpoolctl: it finds each loaded BLAS and calls its own setter)."""
    threads = os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if threads.isdigit() and int(threads) > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(threads), user_api="blas")


_blas_threads_as_configured()


def _low_priority() -> None:
    """Run the calling thread at a low CPU priority (Linux: nice 10, this thread only). A snapshot write takes
    ~0.3 s of CPU per 10^6 points; at normal priority it took a core from the session being played, whose frames
    then queued up (measured: 23 actions in a row over 50 ms around a save; 4 at nice 10). Not nice 19: under a
    saturating load that starved the saver for seconds, and every second unsaved is play a crash can lose."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux / not permitted: saves still work, at normal priority
        pass


# glibc mallopt parameters (malloc.h)
_M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -2, -3, -8
# Free space a thread arena's heap keeps at its top (``bound_heap``). Below it a heap is neither shrunk nor deleted
# when a clip frees its buffers, so the next clip's buffers reuse mapped pages instead of faulting fresh zeroed ones
# in: four served sessions' world threads faulted pages in every frame, a measurable share of the server's CPU a
# frame (docs/BENCHMARKS.md, session 32). It costs up to this much resident memory per arena heap in use.
HEAP_TOP_PAD_BYTES = 64 << 20
_TRIM_EVERY_S = 10.0
_trim_lock = threading.Lock()
_last_trim = 0.0


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return None


def bound_heap(mmap_threshold_bytes: int = 1 << 20, arenas: int = 4,
               top_pad_bytes: int = HEAP_TOP_PAD_BYTES) -> bool:
    """Keep glibc's heap from holding on to freed memory in a long-running server (call once at start-up, before
    the worlds' threads exist). Every world has a worker and a saver thread, each allocating in its own malloc
    arena (up to 8 per core), and glibc raises its mmap threshold after each large free (up to 32 MB), so the
    many MB-sized numpy buffers of play and saves (memory copies, history chunks) came from those arenas and
    their freed space stayed resident: the 8-session soak's RSS minus what the worlds hold grew ~250 MiB a minute
    in ~15 arenas of 30-60 MB each (docs/BENCHMARKS.md). A fixed threshold sends buffers >= 1 MiB to mmap (back
    to the OS on free) and at most ``arenas`` arenas bound the fragmentation. ``top_pad_bytes`` of free space stay
    at each arena heap's top (``HEAP_TOP_PAD_BYTES``): with glibc's default (128 KiB) a heap that a clip's freed
    buffers left empty at the top was shrunk (``MADV_DONTNEED``) or deleted, and the next clip faulted its pages in
    again, zeroed (a whole new heap, again and again). Returns whether it applied."""
    libc = _libc()
    if libc is None:
        return False
    return (bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes)) and bool(libc.mallopt(_M_ARENA_MAX, arenas))
            and bool(libc.mallopt(_M_TOP_PAD, top_pad_bytes)))


def trim_heap_now_and_then() -> bool:
    """``malloc_trim(0)`` (free pages of every arena back to the OS), at most once every 10 s process-wide;
    called by saver threads after a save (low priority, off the frame path; ctypes releases the GIL)."""
    global _last_trim
    libc = _libc()
    now = time.monotonic()
    if libc is None or now - _last_trim < _TRIM_EVERY_S or not _trim_lock.acquire(blocking=False):
        return False
    try:
        _last_trim = now
        libc.malloc_trim(0)
        return True
    finally:
        _trim_lock.release()


def warm_kernels(generator, width: int = 64, height: int = 48, clips: int = 6) -> dict[str, int]:
    """Compile (or load from numba's on-disk cache) the world core's kernels before a session needs them: a
    throwaway scene world of ``width`` x ``height`` walks ``clips`` one-frame clips through ``generator`` (render,
    retrieval, warps, the fill, the memory update, the history index), then its memory is re-sorted and its
    invented points removed (a compaction), and it is saved once into a temporary log. A played world's first
    re-sort comes ~100 lock-step steps into a session at 128x96, and compiling its kernels there (sort_keys,
    merge_order, permute_rows(3) for five dtypes, hash_remap) stalled that step 19.8 s with a cold cache (after an
    edit of a kernel file, a fresh clone) and ~75 ms with a warm one: the remote Gymnasium env's 300-step
    benchmark fell to 11-18 steps/s (docs/BENCHMARKS.md, lock-step section). Returns what ran: clips, points
    re-sorted and points removed."""
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig

    world = World.from_scene("room", 0, width, height)
    try:
        engine = Engine(world, generator, EngineConfig(clip=ClipConfig(1, 2, 1)))
        walk = ActionIntegrator(world.origin_c2w, ControlConfig(), collider=engine.collider())  # its kernels too
        for k in range(clips):  # forward while turning: new ground for the fill every clip
            walk.step(Action(move_forward=1.0, yaw_rate_rad_s=0.8, dt_s=1.0 / 16, seq=k + 1))
            list(engine.generate_clip(walk.c2w[None], None, k))  # one 64x48 frame: run the clip through
        from spatia.world.memory import INVENTED_FINAL

        memory = world.memory
        points = int(memory.num_points)
        memory.reindex()  # sort_keys, merge_order, permute_rows, permute_rows3, hash_remap
        # a few invented points 0.5 m ahead, then free space there: a compaction (drop_points)
        ahead = walk.c2w[:3, 3] + 0.5 * walk.c2w[:3, 2]
        rng = np.random.default_rng(0)
        memory.integrate_points(ahead + rng.uniform(-0.1, 0.1, (32, 3)), np.full((32, 3), 128, np.uint8),
                                frame_index=clips, provenance=INVENTED_FINAL)
        removed = memory.remove_invented_near(ahead[None], radius_m=0.3)
        # the layout fill's own kernels: this world's few 64x48 frames reach only some of them
        from spatia.model.fill.warmup import compile_fill_kernels

        texels = compile_fill_kernels()
        load_play_kernels()
        # a first save, as a served world's autosave makes it (the copy here, the write on its saver): the log's
        # block kernels for each memory array's type; else they loaded inside a session's first autosave, ~45 ms
        # on the world's thread (docs/BENCHMARKS.md, session 24)
        try:
            with tempfile.TemporaryDirectory(prefix="spatia-warm-") as tmp:
                wlog = WorldLog(tmp)
                try:
                    wlog.write(wlog.prepare_save(world))
                finally:
                    wlog.close()
        except OSError as exc:  # no room in the temporary directory: the first autosave loads them instead
            log.warning("kernel warm-up could not save its world", error=type(exc).__name__)
        return {"clips": clips, "points_resorted": points, "points_removed": int(removed), "fill_texels": texels}
    finally:
        world.close()


def load_play_kernels() -> None:
    """The kernels a served world's first clips call that the throwaway walk of ``warm_kernels`` does not reach (or
    not with these argument types), loaded without running them where the types are known: the warp of a reference
    close to the target (a session's first clip warps the world's start frame, whose depth is read-only, into each
    of its frames; the walk's fast turns never pass that close), and the memory's maintenance jobs and dead-row
    paths (a 640x360 world grows and re-sorts in the background within its first dozen clips; the walk's tiny
    world never does), a keyframe's seen-through carve, the history's depth codec and its index's merge and table
    rebuild (reached some hundreds of frames in). Both warp variants: a world's thread runs numba on one thread or
    on several."""
    from spatia.world import _memory_kernels as K, warp
    from spatia.world.camera import Intrinsics
    from spatia.world.free_space import seen_through
    from spatia.world.history import load_history_kernels
    from spatia.world.memory import load_maintenance_kernels

    t = numba.typeof
    rgb, depth, f64 = t(np.zeros((1, 1, 3), np.uint8)), t(np.zeros((1, 1), np.float32)), numba.float64
    rgb_ro, depth_ro = rgb.copy(readonly=True), depth.copy(readonly=True)
    R, tr, mask = t(np.zeros((3, 3))), t(np.zeros(3)), t(np.zeros((1, 1), bool))
    for src_rgb in (rgb, rgb_ro):  # a history frame read back is read-only, the start frame's depth too
        for src_depth in (depth, depth_ro):
            cams = (src_rgb, src_depth, f64, f64, f64, f64, R, tr, f64, f64, f64, f64, rgb, depth)
            warp._warp_kernel.compile((*cams, numba.int64))
            warp._warp_serial.compile(cams)
    warp.claim_warped.compile((rgb, mask, rgb, depth, mask))
    # a keyframe's seen-through carve (``SpatialMemory.remove_invented_seen_through``): first reached ~7 s into a
    # 640x360 session, where its load took 4-88 ms on the world's thread; an outdoor world's first clip passes a
    # read-only view depth
    read_only = np.ones((1, 1), np.float32)
    read_only.setflags(write=False)
    for view_depth in (np.ones((1, 1), np.float32), read_only):
        seen_through(np.zeros((1, 3)), np.eye(4), Intrinsics(1.0, 1.0, 0.5, 0.5, 1, 1), view_depth, 0.1)
    K.mark_ids.compile((t(np.zeros(1, np.int64)), numba.int64))  # the carve's distinct point ids
    load_history_kernels()
    load_maintenance_kernels()


# ``spatia serve``: the kernels loaded into the serving process itself (``KernelWarmUp``). A process loads a numba
# kernel from the disk cache on its first call (milliseconds each, more while another thread holds numba's lock),
# and a served world's first clips were the first callers of dozens of them: a warm-up child fills the cache, but
# only this process's own loads keep them off the frames (docs/BENCHMARKS.md, "A served session's first second").
KERNEL_LOAD_WAIT_S = 10.0  # CreateWorld / a world's first clip waits at most this long for the load
_load_state = "idle"  # idle (no load: tests, --ray), loading, compiling (a cold cache, in the child), done
_load_changed = threading.Condition()


def _set_load_state(state: str) -> None:
    global _load_state
    with _load_changed:
        _load_state = state
        _load_changed.notify_all()


def kernel_load_state() -> str:
    """This process's kernel load: idle (none started), loading, compiling (a cold cache, in the child), done."""
    return _load_state


def wait_for_kernel_load(timeout_s: float = KERNEL_LOAD_WAIT_S) -> bool:
    """Block while this process loads its kernels (``KernelWarmUp``), at most ``timeout_s``; never while a cold
    cache is being compiled in the child (a session then compiles what it needs, as it did before). CreateWorld's
    build (server/builders.py) and a world's first clip (``WorldHost.open_engine``) call it. True when no load is
    in progress any more."""
    with _load_changed:
        return _load_changed.wait_for(lambda: _load_state != "loading", timeout_s)


def _cache_is_warm() -> bool:
    """Whether numba's disk cache holds this tree's kernels: one world-core kernel loaded by signature (a miss
    compiles it: well under a second)."""
    from spatia.world import _memory_kernels as K

    keys = numba.typeof(np.zeros(1, np.int64))
    K.keys_in.compile((keys, keys))
    return K.keys_in.stats.cache_misses.get((keys, keys), 0) == 0


def freeze_startup_objects() -> int:
    """Collect, then move every object the garbage collector tracks now (modules, numba's dispatchers and types,
    protobuf descriptors: ~210 k after the kernel load) into its permanent generation (``gc.freeze``), so that a
    full collection no longer traverses them. A full collection in a serving process paused every thread for
    75-130 ms (the world's thread included, about once a minute of play; measured with ``gc.callbacks``,
    docs/BENCHMARKS.md, session 24); with these frozen one takes ~5 ms. Objects made later (worlds, sessions) are
    collected as before. Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class KernelWarmUp:
    """``spatia serve``'s kernel warm-up, started once it serves. With a warm numba cache: ``warm_kernels`` on a
    thread of this process (loads only, a second or two of CPU), while CreateWorld waits for it (it is the server's
    first seconds; a world then plays its first clips at the speed of its later ones). With a cold cache (a fresh clone,
    an edited kernel file): first ``warm_kernels`` in a child process at nice 10, which compiles into the cache
    (minutes; not a thread here: numba compiles under one process-wide lock, which a warm-up thread compiling for
    minutes would hold against the server's own first calls, and a cold CreateWorld exceeded the client's 60 s
    deadline that way), then the load here. ``poll`` / ``terminate`` / ``wait`` as a ``subprocess.Popen``'s (the
    server stops it at shutdown): None from ``poll`` while it runs."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self._stopped = False
        self._lock = threading.Lock()
        _set_load_state("loading")  # (set before the thread runs: a CreateWorld right after waits for it)
        self.thread = threading.Thread(target=self._run, name="kernel-load", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        warm = False
        try:
            warm = _cache_is_warm()
            if not warm:
                _set_load_state("compiling")
                with self._lock:
                    if not self._stopped:
                        self.child = _start_warm_child()
                if self.child is not None:
                    self.child.wait()
                if self._stopped:
                    return
                _set_load_state("loading")
            from spatia.model import make_generator

            report = warm_kernels(make_generator("geometric"))
            frozen = freeze_startup_objects()
            log.info("kernels loaded in the serving process", seconds=round(time.perf_counter() - t0, 2),
                     cpu_s=round(time.thread_time() - c0, 2), cache_was_warm=warm, objects_frozen=frozen, **report)
        except Exception:  # a failed warm-up costs only the first frames' time
            log.exception("kernel warm-up failed")
        finally:
            _set_load_state("done")

    def poll(self) -> int | None:
        if self.child is not None and self.child.poll() is None:
            return None
        return None if self.thread.is_alive() else 0

    def terminate(self) -> None:
        with self._lock:
            self._stopped = True
            if self.child is not None and self.child.poll() is None:
                self.child.terminate()

    def wait(self, timeout: float | None = None) -> int:
        """The child's end (a load in this process is not interrupted: its thread is a daemon)."""
        return self.child.wait(timeout) if self.child is not None else 0


def _warm_main() -> None:
    """Entry of the warm-up process (``KernelWarmUp`` with a cold cache)."""
    from spatia.model import make_generator

    try:
        os.nice(10)  # below the server's sessions (set here: preexec_fn is unsafe in a threaded parent)
    except (AttributeError, OSError) as exc:  # no nice here: warm at normal priority, once
        log.info("kernel warm-up at normal priority", reason=type(exc).__name__)
    t0 = time.perf_counter()
    report = warm_kernels(make_generator("geometric"))
    log.info("kernels warmed", seconds=round(time.perf_counter() - t0, 2), **report)


def _start_warm_child() -> subprocess.Popen:
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", "from spatia.server.host import _warm_main; _warm_main()"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class DiskFullError(OSError):
    """A write failed because the data dir's file system is full (ENOSPC / EDQUOT); RESOURCE_EXHAUSTED."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class HostView:
    """What a host tells about its world (plain values: crosses a process boundary as is)."""

    world_id: str
    source: str
    prompt: str
    created_ns: int
    intrinsics: Any  # world.camera.Intrinsics
    origin_c2w: np.ndarray  # [4, 4] world frame
    current_c2w: np.ndarray  # [4, 4] world frame: where the last session left the camera
    memory_points: int
    history_frames: int
    clips_generated: int
    snapshot_bytes: int
    controlled: bool
    memory_bytes: int = 0  # RAM of the spatial memory (``SpatialMemory.nbytes``)
    index_bytes: int = 0  # RAM of the history: retrieval index, poses, decoded-frame cache (``FrameStore.nbytes``)
    level_up: np.ndarray | None = None  # [3] world frame: what a player's turns keep level (``World.level_up``)


class WorldHost:
    shares_server_cores = True  # its clips run in this process (on the cores the server's clip slots count)
    node_id = ""  # the Ray node a world actor runs on (server/ray_host.py); in-process: none
    """The in-process host of one loaded world (see the module docstring)."""

    def __init__(self, world: World, path: Path, *, wlog: WorldLog | None = None, legacy_path: Path | None = None,
                 snapshot_bytes: int = 0, busy_worlds: Callable[[], int] = lambda: 1) -> None:
        self.world = world
        self.path = Path(path)  # its directory, worlds/<id>/ (world.log + frames.bin)
        self.log = wlog if wlog is not None else WorldLog(self.path)
        # an old single-file snapshot this world was loaded from: removed once the directory holds a commit
        self.legacy_path = Path(legacy_path) if legacy_path is not None else None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"world-{world.world_id[:16]}")
        # Background saving during play: the worker thread takes a consistent copy of the world (``prepare_save``,
        # ~25 ms at 1 M points) and a saver thread appends what changed to the world's log, so the next clip does
        # not wait for the disk. The log's sequence numbers keep an older copy from overwriting a newer one.
        self.saver = ThreadPoolExecutor(1, thread_name_prefix="world-saver", initializer=_low_priority)
        self.busy_worlds = busy_worlds  # how many worlds are being played or generated right now
        self.controller: str | None = None  # session id of the Play / Generate call holding the lease
        self.clips_generated = 0
        self.frames_generated = 0
        self.clips_since_save = 0
        self.last_save_monotonic = time.monotonic()  # when the latest snapshot copy was taken
        self.last_save_cpu_s = 0.0  # how long the latest snapshot took to copy, serialise and write
        self.snapshot_bytes = snapshot_bytes
        self.saves = 0
        self.save_failures = 0
        self.deleted = False
        self.closed = False
        self.save_lock = threading.Lock()  # held while the snapshot file is written
        self._latest_lock = threading.Lock()
        self._latest: SavePlan | None = None  # the newest copy waiting for the saver
        self._save_scheduled = False
        self.last_save_bytes = 0  # appended to the log by the latest save (what changed)
        self._kernels_awaited = False  # whether the worker has waited for the server's kernel load (open_engine)
        # the engines opened over this world: one may have a clip's memory update in flight
        # (``EngineConfig.commit_beside_next_clip``), which whatever reads or changes the world settles first
        self._engines: weakref.WeakSet[Engine] = weakref.WeakSet()

    @property
    def world_id(self) -> str:
        return self.world.world_id

    # ---- the controller lease ----------------------------------------------------------------------------

    def claim(self, session_id: str) -> None:
        """Take the one controller lease (Play / Generate); FAILED_PRECONDITION while another session holds it."""
        if self.deleted or self.closed:
            raise NotFoundError(f"world {self.world_id!r} not found")
        if self.controller is not None:
            raise PreconditionError(
                f"world {self.world_id!r} is already controlled by session {self.controller}; one controller per "
                "world"
            )
        self.controller = session_id

    async def claim_async(self, session_id: str) -> None:
        """``claim`` for the servicer's event loop: in-process it never waits (a Ray host's is a call to its actor)."""
        self.claim(session_id)

    def release(self, session_id: str) -> bool:
        """Give the lease back; idempotent (True only for the call that released it)."""
        if self.controller == session_id:
            self.controller = None
            return True
        return False

    # ---- work on the world's thread -----------------------------------------------------------------------

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on this world's worker thread and await it, after any memory update in flight
        (``settle``). NOT_FOUND once the world was deleted (a call racing a DeleteWorld never reaches a shut-down
        executor's RuntimeError)."""
        return await self._on_worker(fn, args, settle=True)

    async def _on_worker(self, fn: Callable[..., Any], args: tuple, settle: bool) -> Any:
        if self.deleted or self.closed:
            raise NotFoundError(f"world {self.world_id!r} not found (deleted or unloaded)")
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self._call, fn, args, settle)
        except RuntimeError as exc:
            if self.deleted or self.closed:  # "cannot schedule new futures after shutdown"
                raise NotFoundError(f"world {self.world_id!r} was deleted while the request waited") from None
            raise exc

    def settle(self) -> None:
        """Finish a memory update running beside a session's clips (``Engine.settle``), on the worker thread."""
        for engine in list(self._engines):
            engine.settle()

    def _call(self, fn: Callable[..., Any], args: tuple, settle: bool = True) -> Any:
        # The world core's parallel kernels (render, warp, depth fill) split each call over numba's threads. With
        # one world in play that uses the idle core; with several, each world's worker is already one thread of
        # work, and splitting every kernel again only adds OpenMP hand-offs between oversubscribed threads.
        # Measured (benchmarks/play.py, 4 sessions, 2 cores): 9.9-11.4 fps each with 2 kernel threads per call,
        # 11.6-12.3 with 1; one session kept its p95 latency either way (35-49 vs 39-51 ms).
        numba.set_num_threads(1 if self.busy_worlds() > 1 else numba.config.NUMBA_NUM_THREADS)
        if self.deleted:
            raise NotFoundError(f"world {self.world_id!r} was deleted while the request waited")
        if settle:  # (a clip's own work does not: its engine settles the previous clip's update at its end)
            self.settle()
        return fn(*args)

    # ---- what the service asks ----------------------------------------------------------------------------

    def view(self) -> HostView:
        w = self.world
        return HostView(
            w.world_id, w.info.source, w.info.prompt, w.info.created_ns, w.intrinsics, w.origin_c2w,
            w.current_c2w if w.current_c2w is not None else w.origin_c2w, w.memory.num_points, len(w.history),
            self.clips_generated, self.snapshot_bytes, self.controller is not None, *_world_bytes(w),
            level_up=w.level_up,
        )

    def stats(self) -> dict[str, float]:
        """Counters for metrics (cheap: no worker round trip)."""
        return {
            "memory_points": self.world.memory.num_points, "history_frames": len(self.world.history),
            "clips_generated": self.clips_generated, "frames_generated": self.frames_generated,
            "snapshot_bytes": self.snapshot_bytes, "saves": self.saves, "save_failures": self.save_failures,
            "last_save_cpu_s": self.last_save_cpu_s, "controlled": int(self.controller is not None),
        }

    def collider(self, engine: Engine):
        """The collider for a session's integrator (``Engine.collider``): it reads the memory from the session's
        thread between that session's clips (``PlaySession.drive`` awaits each clip)."""
        return engine.collider()

    async def render(self, K, c2w: np.ndarray):
        """The memory alone at ``c2w`` [4, 4] (world frame) with intrinsics ``K``: a ``memory.Render``."""
        return await self.call(self.world.memory.render, K, c2w)

    async def edit(self, op: Callable[[Any], int]) -> int:
        """Apply ``op(memory) -> points affected`` on the worker and save before answering."""

        def _edit() -> int:
            n = int(op(self.world.memory))
            self.save_now()
            return n

        return await self.call(_edit)

    async def export(self, fmt: str) -> bytes:
        """``"snapshot"`` (msgpack) or ``"ply"`` bytes of the world as it is now."""

        def _bytes() -> bytes:
            if fmt == "ply":
                with tempfile.TemporaryDirectory() as tmp:
                    p = Path(tmp) / "memory.ply"
                    self.world.memory.save_ply(p)
                    return p.read_bytes()
            return snapshot.dumps(self.world.to_payload(), version=SNAPSHOT_VERSION)

        return await self.call(_bytes)

    def prepare(self, generator) -> None:
        """Let the generator start what it derives from this world (the layout fill's fit, ~2 s of CPU) now, off
        the event loop's critical path, so that a Play soon after does not wait for it in its first frames."""
        prepare_generator(self.world, generator)

    def open_engine(self, generator, config: EngineConfig) -> Engine:
        """A fresh engine over this world (engines hold no state the world does not; clip ids continue the
        host's clip counter)."""
        engine = Engine(self.world, generator, config)
        self._engines.add(engine)
        engine.clips_done = self.clips_generated
        if not self._kernels_awaited:  # queued before the first clip: it waits for the server's kernel load (a
            self._kernels_awaited = True  # world loaded from disk and played at once; CreateWorld waited already)
            self.executor.submit(wait_for_kernel_load)
        return engine

    async def play_clip(self, engine: Engine, poses: np.ndarray, prompt: str | None, seed: int,
                        sink: Callable[[int, Any], None], autosave: tuple[int, float, float] | None = None,
                        frame_format=None):
        """Generate one clip for ``poses`` [N, 4, 4] (world frame) on the worker: ``sink(i, frame)`` gets each
        ``GeneratedFrame`` as the generator yields it (on the worker thread; it must not block), then the memory
        update runs and, with ``autosave = (every_clips, interval_s, max_duty)``, the save policy applies.
        ``frame_format`` ((width, height), encoding, quality) is for hosts that encode the frames themselves
        (server/ray_host.py); here the sink encodes them on the worker thread. Returns the engine's ``ClipStats``."""
        return await self._on_worker(self.clip_work(engine, poses, prompt, seed, sink, autosave, frame_format), (),
                                     settle=False)

    def clip_work(self, engine: Engine, poses: np.ndarray, prompt: str | None, seed: int,
                  sink: Callable[[int, Any], None], autosave=None, frame_format=None) -> Callable[[], Any]:
        """``play_clip``'s work as a function to run on the worker thread (a world actor submits it to
        ``executor`` itself, from a thread without an event loop: server/ray_host.py)."""

        def _clip():
            # a core to spare while this world has the process's cores to itself: the update beside the next clip
            # uses it, and so may the generator's speculative work (tiles ahead, when configured). With others in
            # play no core is idle, and four sessions lost frame rate and latency to either (docs/BENCHMARKS.md,
            # sessions 17 and 25)
            spare_core = self.busy_worlds() <= 1
            for i, f in enumerate(engine.generate_clip(poses, prompt, seed, spare_core=spare_core)):
                self.frames_generated += 1
                sink(i, f)
            self.clips_generated = engine.clips_done
            self.clips_since_save += 1
            if autosave is not None:
                self.autosave(*autosave)
            return engine.last_stats

        return _clip

    async def generate(self, engine: Engine, c2w: np.ndarray, prompt: str | None, seed: int,
                       sink: Callable[[int, Any], bool]) -> None:
        """Frames for a whole trajectory ``c2w`` [N, 4, 4]; ``sink(n, frame)`` returning False stops (the clip in
        progress is abandoned before its memory update; clips already committed stay). Saved at the end."""

        def _work() -> None:
            try:
                for n, f in enumerate(engine.generate(c2w, prompt, seed, spare_core=self.busy_worlds() <= 1)):
                    self.frames_generated += 1
                    if not sink(n, f):
                        break
            finally:
                self.clips_generated = engine.clips_done
            self.save_now()

        await self.call(_work)

    # ---- saving -------------------------------------------------------------------------------------------

    async def save(self) -> int:
        """Write the snapshot now (after whatever is queued on the worker); returns its size in bytes."""
        return await self.call(self.save_now)

    async def save_if_changed(self) -> int:
        """``save`` when clips were generated since the last save (the end of a session); else nothing."""
        return await self.call(lambda: self.save_now() if self.clips_since_save else self.snapshot_bytes)

    def _next_payload(self) -> SavePlan:
        """On the worker: the log's copy of what changed (its plans carry increasing sequence numbers, so an
        older copy written late is skipped). The world's first save here moves its frames into ``frames.bin``:
        disk work, so a full disk can already fail here (RESOURCE_EXHAUSTED, nothing committed)."""
        self.settle()  # (an autosave after a clip: the clip's update too)
        try:
            return self.log.prepare_save(self.world)
        except OSError as exc:
            self.save_failures += 1
            if is_disk_full(exc):
                raise DiskFullError(exc.errno, "no space left in the data dir") from None
            raise

    def _disk_bytes(self) -> int:
        frames = self.path / FRAMES_NAME
        try:
            return self.log.log_bytes + frames.stat().st_size
        except OSError:
            return self.log.log_bytes

    def _write(self, plan: SavePlan) -> int:
        with self.save_lock:
            if self.deleted:  # deleted: its directory is gone and stays gone
                return self.snapshot_bytes
            try:
                report = self.log.write(plan)
            except OSError as exc:
                self.save_failures += 1
                if is_disk_full(exc):  # the previous commit stays the newest complete one (the torn tail is cut)
                    raise DiskFullError(exc.errno, "no space left in the data dir") from None
                raise
            if report.skipped:  # a newer copy is already on disk
                return self.snapshot_bytes
            if self.legacy_path is not None:
                # the directory now holds a complete, fsynced commit of the whole world: the old file can go
                try:
                    self.legacy_path.unlink(missing_ok=True)
                    log.info("world migrated to the incremental layout", world_id=self.world_id)
                    self.legacy_path = None
                except OSError as exc:  # harmless: the directory wins at the next start and removes it then
                    log.warning("old single-file snapshot not removed", world_id=self.world_id, error=str(exc))
            self.snapshot_bytes = self._disk_bytes()
            self.last_save_bytes = report.bytes_written
            self.last_save_cpu_s = plan.copy_s + report.write_s
            self.saves += 1
            log.debug("world saved", world_id=self.world_id, bytes=report.bytes_written,
                      blocks=report.blocks_written, removed=report.blocks_removed, log_bytes=report.log_bytes,
                      compacted=report.compacted, copy_ms=round(plan.copy_s * 1e3, 1),
                      write_ms=round(report.write_s * 1e3, 1))
            return self.snapshot_bytes

    def save_now(self) -> int:
        """Write the snapshot atomically now (on the worker thread, or when nothing else touches the world)."""
        if self.deleted:
            return 0
        plan = self._next_payload()
        self.clips_since_save = 0
        self.last_save_monotonic = time.monotonic()
        return self._write(plan)

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
                self._write(item)
            except Exception as exc:  # noqa: BLE001 -- a failed write keeps the previous snapshot; log and go on
                log.error("world snapshot write failed", world_id=self.world_id, error=str(exc))
            del item  # the plan's copies are freed before the trim
            trim_heap_now_and_then()

    def save_due(self, every_clips: int, interval_s: float, max_duty: float = 1.0) -> bool:
        """Whether a played world should be saved now (``ServerConfig.save_every_clips``, ``save_interval_s`` and
        ``save_max_duty``)."""
        wait_s = interval_s if max_duty >= 1.0 else max(interval_s, self.last_save_cpu_s / max_duty)  # 1: no limit
        return self.clips_since_save >= every_clips and time.monotonic() - self.last_save_monotonic >= wait_s

    def autosave(self, every_clips: int, interval_s: float, max_duty: float) -> None:
        """The play save policy, on the worker after a clip: strict (``interval_s == 0``) writes before the next
        clip; otherwise the copy is written in the background."""
        if not self.save_due(every_clips, interval_s, max_duty):
            return
        if interval_s == 0:
            self.save_now()
        else:
            self.save_in_background()

    # ---- end of life --------------------------------------------------------------------------------------

    async def delete(self) -> None:
        """Forget the world and remove its snapshot (the controller must have released it)."""
        if self.controller is not None:
            raise PreconditionError(f"world {self.world_id!r} is in use by session {self.controller}; end it first")
        loop = asyncio.get_running_loop()
        self.deleted = True  # from now on calls answer NOT_FOUND and no save writes

        def _remove() -> None:
            self._settle_before_close()
            self.world.close()  # its frame file; on the worker thread, after every call queued before the delete
            with self.save_lock:
                self.log.close()
                shutil.rmtree(self.path, ignore_errors=True)
                if self.legacy_path is not None:
                    self.legacy_path.unlink(missing_ok=True)

        await loop.run_in_executor(self.executor, _remove)  # after whatever was queued before the delete
        self.executor.shutdown(wait=False)
        self.saver.shutdown(wait=False)

    async def unload(self) -> int:
        """Save, then stop the threads and drop the world (its snapshot stays on disk; the memory is returned).
        FAILED_PRECONDITION while a session holds the lease. Returns the snapshot's size in bytes."""
        if self.controller is not None:
            raise PreconditionError(f"world {self.world_id!r} is in use by session {self.controller}; end it first")
        size = await self.save()
        self.closed = True  # from now on calls answer NOT_FOUND
        await asyncio.to_thread(self.executor.shutdown, True)
        await asyncio.to_thread(self.saver.shutdown, True)
        self.log.close()
        self.world.close()
        return size

    def _settle_before_close(self) -> None:
        try:
            self.settle()
        except Exception as exc:  # noqa: BLE001 -- the world goes anyway; its update's failure is only logged
            log.error("memory update failed before the world was closed", world_id=self.world_id,
                      error=type(exc).__name__)

    def close(self) -> None:
        """Stop the threads (after queued work and background saves finish)."""
        self.closed = True
        self.executor.shutdown(wait=True)
        self._settle_before_close()  # (no clip runs any more)
        self.saver.shutdown(wait=True)
        self.log.close()


def _world_bytes(world) -> tuple[int, int]:
    """(memory bytes, history bytes) of ``world``. Read from the service's thread while the world's thread may be
    playing: the sizes are attribute reads, but the history's decoded-frame cache may change while it is summed
    (RuntimeError), so it is retried; a size is never worth failing a GetWorld for (0 after three tries)."""
    for _ in range(3):
        try:
            return int(world.memory.nbytes), int(world.history.nbytes)
        except RuntimeError:
            continue
    return 0, 0
