"""Each world's fill state, fitted once per change of its observed points, off the frame path.

The layout fill needs, per world, the Manhattan layout of the observed points (``model.fill.geometry.layout``),
each plane's texture model (``model.fill.texture.appearance``, ``model.fill.texture.synthesis``) and, outdoors, the
sky: 0.5-2 s of CPU for a 640x360 first image, a function of the observed points alone. Fitting it inside a frame
stalled that frame by as much (and a server shares one generator between its worlds, so a single cached slot was
refitted every time another world's clip ran). Here:

- one state per world, keyed weakly by the world's ``SpatialMemory`` object (the state goes when the world is
  unloaded) and tagged with ``observed_version``; invented points never change it;
- ``prepare`` snapshots the observed points on the caller's thread (the memory is not thread-safe) and fits on a
  maintenance thread (two run at once); the engine calls it when it opens a world, so the fit runs while the
  session starts; a server calls it when it creates a world and waits (``wait``) for the fit and the plane
  textures before CreateWorld answers, so a Play right after shares no CPU with them;
- the generator shows a coarse fill for the first few frames after a world is opened (or its observed points
  change), counted in the entry, and from then on the fitted state, waiting for a fit still in flight. Counting
  frames (not "use whatever is ready") keeps frames a function of the world and the path alone: the same seed
  and path give byte-identical memory however fast the machine is.
- the fit hands over the layout (and the sky) alone; then a maintenance thread fits the planes' texture models,
  nearest first (a frame needing one waits for that plane only), and synthesises the mip-0 tiles around the
  observed points (tiles are pure functions of plane, tile and seed, so when they are made does not change them),
  so the frame path mostly reads cached tiles; with ``GeometricConfig.tiles_ahead`` (off by default: four served
  sessions on two cores paid for it in frame rate), as the camera moves on, the tiles of the planes a widened
  view around it shows are made before a frame reads them (``ahead``: a thread of its own, at the frames'
  priority).
- with ``GeometricConfig.coarse_tile_frames`` (the per-tile coarse fill), a tile a frame asks for that is not due
  yet (first asked fewer than that many frames before, and not one of the warm-up's tiles) is synthesised on a
  thread of its own (``TileJobs``, at the frames' priority: these are tiles frames read, not speculative ones) while
  frames show a provisional stand-in on its pixels; the frame at which it becomes due joins the job (waits for it
  when it is running, takes it over when it has not started). Which pixels are provisional is counted in frames
  (``FillEntry.tile_first_asked``), never "is the tile ready yet".
- a frame that still misses two or more tiles of one read makes half of them and hands the other half to a helper
  thread (``texture.synthesis._make_missing_tiles``, taken back if it has not started when the frame's half is
  done), so a turn towards a wall no frame showed costs that frame about half the tiles where a core is free.
- the tile synthesis (``tiles``, after the texture fits) runs at a low CPU priority (nice +``WARM_NICE``, its
  threads only): no frame waits for it (a frame synthesises a tile it misses; the tile thread holds the texture
  model's lock only to look a tile up and to store it, ``texture.warm_tiles``), and at normal priority the
  maintenance threads took as much CPU as the world's thread in a served session on two cores
  (docs/BENCHMARKS.md, "Layout fill frame path, fused": py-spy). The layout fit and the plane texture fits stay
  at normal priority: a frame waits for them (a plane's fit holds that plane's lock for 0.1-0.8 s of CPU, and at
  nice 10 on a machine at load ~10 a frame waited 8.8 s behind one: "Served play latency").
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import structlog

log = structlog.get_logger(__name__)

WARM_NICE = 10  # the tile warm-up thread runs this much nicer than the server (server/host.py's savers: nice 10 too)


def _low_priority() -> None:
    """Run the calling thread ``WARM_NICE`` steps below the thread that started it (this thread only, Linux:
    ``PRIO_PROCESS`` of a thread id is that thread's nice value); elsewhere, or where not permitted, as is."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WARM_NICE))
    except (AttributeError, OSError):
        pass


@dataclass(frozen=True)
class FillInputs:
    """What a world's fill state is a function of, copied on the caller's thread."""

    version: tuple  # (observed_version, index of the first observed view or None)
    points: np.ndarray  # [N, 3] float64, world frame, observed points
    colors: np.ndarray  # [N, 3] uint8
    observer: np.ndarray  # [3] world frame, where the observed points were seen from
    forward: np.ndarray  # [3] world frame, the first camera's viewing direction
    up: np.ndarray  # [3] world frame, the first camera's up (a prior; the layout finds its own)
    first_view: object | None  # world.generator.ReferenceFrame of the first image (rgb, depth, pose) or None
    layout_prior: object | None = None  # world.depth.LayoutPrior the world recorded at creation (photo worlds)


@dataclass
class FillEntry:
    """One world's state for one ``key``: the fit (a future) and how many frames were made since it started."""

    key: tuple
    future: Future
    frames_made: int = 0  # frames generated for this world since this key (the coarse-fill count is taken here)
    # per plane texture (``plane_texture_key``): the index (in ``frames_made``) of the first frame that showed it;
    # its per-plane coarse fill is counted from there
    first_shown: dict = field(default_factory=dict)
    # set once the fit and the warm-up that frames wait for (the plane textures) are over, done or failed; the
    # tiles after it are not waited for (``FillStates.wait``)
    ready: threading.Event = field(default_factory=threading.Event)
    # tiles ahead of the view (``FillStates.ahead``): the pose last asked for, and the job not started yet
    ahead_c2w: np.ndarray | None = None
    ahead_job: Callable[[], object] | None = None
    # per texture tile ((id of the synthesis model, seed, tile row, tile col)): the index (in ``frames_made``) of the
    # first frame that asked for it; the per-tile coarse fill (``GeometricConfig.coarse_tile_frames``) counts from it
    # (-1 once a frame found it due: it stays due)
    tile_first_asked: dict = field(default_factory=dict)
    # the tiles synthesised off the frame's thread for this world's frames (``TileJobs``; None: made by frames)
    tile_jobs: "TileJobs | None" = None
    # the world's camera path in the fitted layout (``model.fill.geometry.layout.PathSummary``), kept by the frame's
    # thread as clips come: what the fill reads of the path then costs the same however long the session
    path: object | None = None

    def state(self):
        """The fitted state, waited for if the fit is still running."""
        return self.future.result()


class _TileJob:
    """One tile's synthesis: queued, running, done, or taken over by the frame that needed it first."""

    __slots__ = ("fn", "state", "done")

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.state = "queued"
        self.done = threading.Event()


class TileJobs:
    """One world's texture tiles synthesised off the frame's thread, in the order frames asked for them
    (``submit``), and joined by the frame that needs one (``join``). A job's result is the model's tile cache
    (tiles are pure functions of model, index and seed): what a job does never changes a frame, only how long
    the frame that joins it waits."""

    def __init__(self, pool: Callable[[], ThreadPoolExecutor]) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._jobs: dict = {}  # key -> _TileJob, until joined

    def submit(self, key, fn: Callable[[], object]) -> None:
        """Queue ``fn`` (synthesise the tile ``key`` into its model's cache) unless a job for ``key`` is held."""
        with self._lock:
            if key in self._jobs:
                return
            job = self._jobs[key] = _TileJob(fn)
        try:
            self._pool().submit(self._run, job)
        except RuntimeError:  # closed: the frame that needs the tile makes it
            with self._lock:
                self._jobs.pop(key, None)

    def _run(self, job: _TileJob) -> None:
        with self._lock:
            if job.state != "queued":  # taken over by a frame
                return
            job.state = "running"
        try:
            job.fn()
        except Exception as exc:  # noqa: BLE001 -- the frame that joins it makes the tile itself
            log.warning("fill tile job failed", error=type(exc).__name__)
        finally:
            with self._lock:
                job.state = "done"
            job.done.set()

    def join(self, key) -> None:
        """The frame thread needs tile ``key`` now: wait for its job if it is running; take it over if it has
        not started (the caller then synthesises the tile itself, as without a job); forget it."""
        with self._lock:
            job = self._jobs.pop(key, None)
            if job is None:
                return
            if job.state == "queued":
                job.state = "taken"
                return
        job.done.wait()

    def held(self) -> int:
        with self._lock:
            return len(self._jobs)


def inputs_key(memory, observed_views) -> tuple:
    first = observed_views[0] if observed_views else None
    return (memory.observed_version, None if first is None else first.frame_index)


def _failed(job: Future) -> bool:
    return job.done() and not job.cancelled() and job.exception() is not None


class FillStates:
    """Fill states of many worlds; thread-safe (a server's sessions share one generator)."""

    def __init__(self, fit: Callable[[FillInputs], object], warm: Callable[[object], None] | None = None,
                 tiles: Callable[[object], None] | None = None) -> None:
        self._fit = fit
        self._warm = warm  # after the fit, at normal priority (frames may wait for what it holds)
        self._tiles = tiles  # after ``warm``, at low priority (frames wait for a few ms of it at most)
        self._lock = threading.Lock()
        # memory -> FillEntry
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._executor: ThreadPoolExecutor | None = None
        self._warm_executor: ThreadPoolExecutor | None = None
        self._ahead_executor: ThreadPoolExecutor | None = None
        self._tile_executor: ThreadPoolExecutor | None = None

    def _warm_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._warm_executor is None:  # one thread: tiles are a background optimisation
                self._warm_executor = ThreadPoolExecutor(1, thread_name_prefix="spatia-fill-tiles",
                                                         initializer=_low_priority)
            return self._warm_executor

    def _ahead_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._ahead_executor is None:
                # not the warm-up's thread (its tiles around the first camera took ~8 s at load ~9), and at the
                # frames' priority: these are tiles a frame is about to make itself, on its own path, if they are
                # not there (at nice 10 and load ~11 they came 0.2-1.4 s late, after the frame that needed them)
                self._ahead_executor = ThreadPoolExecutor(1, thread_name_prefix="spatia-fill-ahead")
            return self._ahead_executor

    def _tile_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._tile_executor is None:
                # one thread for every world's tile jobs, at the frames' priority: a frame joins these jobs a few
                # frames on (at nice 10 under load it would wait behind the scheduler, as the fits did)
                self._tile_executor = ThreadPoolExecutor(1, thread_name_prefix="spatia-fill-tile")
            return self._tile_executor

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            # two fits at once: worlds created together (a server start, a benchmark's four sessions) otherwise
            # queue behind one another, and the last one's first final frame waits for all of them
            self._executor = ThreadPoolExecutor(min(2, os.cpu_count() or 1), thread_name_prefix="spatia-fill")
        return self._executor

    def prepare(self, memory, inputs: Callable[[], FillInputs], key: tuple) -> "FillEntry":
        """Start fitting ``memory``'s state for ``key`` unless it is fitted or being fitted; returns its entry.
        A fit that failed is not kept: the frame that finds it raises its error, and the next ``prepare`` fits
        again (one failure once left a world unplayable until its process restarted).

        ``inputs`` builds the copy of what the fit reads; it runs here, on the caller's thread."""
        with self._lock:
            held = self._states.get(memory)
            if held is not None and held.key == key and not _failed(held.future):
                return held
            snapshot = inputs()
            ready = threading.Event()
            entry = FillEntry(key, self._pool().submit(self._run, snapshot, ready), ready=ready,
                              tile_jobs=TileJobs(self._tile_pool))
            self._states[memory] = entry
            return entry

    def wait(self, memory, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for ``memory``'s fit and the warm-up frames wait for (the plane textures: not
        the tiles); True when they are over (or nothing was prepared for it). Frames do not depend on it (they
        count, ``FillEntry``): a server waits before it answers CreateWorld, so that the world's first Play
        frames neither wait for the fits nor share the CPU with them (docs/BENCHMARKS.md, session 15, lspeed)."""
        with self._lock:
            entry = self._states.get(memory)
        return entry is None or entry.ready.wait(timeout_s)

    def _run(self, inputs: FillInputs, ready: threading.Event):
        try:
            state = self._fit(inputs)
        except BaseException:
            ready.set()  # a failed fit: nothing more comes (frames see the failure in ``FillEntry.state``)
            raise
        if self._warm is not None or self._tiles is not None:
            # after the state is handed over: a frame waiting for it does not also wait for the warm-up (the
            # warm-up runs under each plane's and texture model's own lock, so frames interleave with it)
            try:
                self._pool().submit(self._warm_quietly, state, ready)
            except RuntimeError:  # closed meanwhile: no warm-up comes (frames fit what they need)
                ready.set()
        else:
            ready.set()
        return state

    def _warm_quietly(self, state, ready: threading.Event) -> None:
        try:
            if self._warm is not None:
                self._warm(state)
        except Exception as exc:  # noqa: BLE001 -- a warm-up is an optimisation: frames fit what it missed
            log.warning("fill warm-up failed", error=type(exc).__name__)
        finally:
            ready.set()
        if self._tiles is not None:
            self._warm_pool().submit(self._tiles_quietly, state)

    def ahead(self, entry: FillEntry, job: Callable[[], object]) -> None:
        """Run ``job`` (texture tiles the next frames will read) on a thread of its own, after the job it has in
        hand; a job of ``entry`` that has not started yet is replaced by this one (the view it was for is gone).
        Frames never wait for it: they make any tile it has not."""
        with self._lock:
            waiting = entry.ahead_job is not None
            entry.ahead_job = job
        if waiting:
            return
        try:
            self._ahead_pool().submit(self._ahead_quietly, entry)
        except RuntimeError:  # closed: frames make their tiles
            entry.ahead_job = None

    def _ahead_quietly(self, entry: FillEntry) -> None:
        with self._lock:
            job, entry.ahead_job = entry.ahead_job, None
        if job is None:
            return
        try:
            job()
        except Exception as exc:  # noqa: BLE001 -- a hint: frames make the tiles it missed
            log.warning("fill tiles ahead failed", error=type(exc).__name__)

    def _tiles_quietly(self, state) -> None:
        try:
            self._tiles(state)
        except Exception as exc:  # noqa: BLE001 -- frames synthesise what it missed
            log.warning("fill tile warm-up failed", error=type(exc).__name__)

    def close(self) -> None:
        for pool in (self._executor, self._warm_executor, self._ahead_executor, self._tile_executor):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
