"""Each loaded world in its own Ray actor (issue 12, ``spatia serve --ray``): the actor, the front door's proxy
to it (``RayWorldHost``, the same methods as the in-process ``WorldHost``, so the servicer and the Play session
do not know which runs) and the registry (``RayWorldStore``, the same methods as ``WorldStore``).

The actor (``WorldActor``): named ``world:<id>`` in namespace ``spatia``, detached, created with
``get_if_exists`` (so two front doors asking for one world get the one actor: the cluster-wide guard, Ray's
registry being the router), with ``world_cpus`` CPUs and ``world_gpus`` GPUs (``ClusterOptions``). Inside it an
in-process ``WorldHost`` loaded from the shared data dir does the work, on its own worker thread as in the
embedded server; numba's thread count follows the actor's CPUs (``NUMBA_NUM_THREADS`` in its runtime env).

- Play frames: through the session's compiled graph (``_PlayGraph``, Ray Compiled Graphs, the default: one graph
  per session, opened after its first clip, closed when idle; the actor ends graphs left running when a session
  claims the world: docs/SCALE.md); until it answers, or with ``compiled_play=False``, one actor call per clip
  (``play_clip``), a Ray streaming generator whose items are the clip's
  frames, resized and JPEG-encoded on the actor's worker thread, then the clip's stats. The front door awaits each
  item as soon as it exists and hands it to the session's latest-wins outbox: pose skipping and dropping stay in
  the front door, a slow client never stalls the actor, and no object refs pile up (each is awaited once and
  dropped). Generate (every frame, no dropping) sends raw frames with Ray's generator backpressure
  (``GENERATE_BACKPRESSURE`` unconsumed items): a slow client pauses the actor's generation.
- The controller lease lives in the actor with an expiry (``lease_ttl_s``); the front door renews it every third
  of that while its session runs. A front door that dies mid-Play stops renewing, and after the expiry another
  front door may take the world. Every clip checks (and renews) the lease, so one controlling Play per world holds
  across front doors.
- Epochs: each actor incarnation takes the next number from ``<data_dir>/.cluster/epoch.<id>`` (under an
  exclusive ``flock``) and checks it before each snapshot write: an actor replaced by a newer one (an old actor on
  a partitioned node that still runs) finds a larger epoch and its write is refused (ABORTED), never overwriting
  the newer actor's snapshot. (The check and the write are not one atomic step; the window is one write.)
- Faults: a call that finds the actor dead (killed, node lost, out of memory) answers UNAVAILABLE saying so; the
  proxy then forgets the handle, and the next call re-creates the actor (any node with room) from the last
  snapshot on disk.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import math
import os
import shutil
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import structlog
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from spatia.server.cluster import NAMESPACE, ClusterCheckError, ClusterOptions, connect, project_version
from spatia.server.errors import AbortedError, DataLossError, UnavailableError, check_id, limit_exceeded
from spatia.server.host import HostView, WorldHost
from spatia.server.store import WorldIds, save_hosts
from spatia.world.collision import CollisionConfig, NearbyCollider, NearbyPoints
from spatia.world.errors import NotFoundError, PreconditionError, SnapshotError, SpatiaError
from spatia.world.state import World
from spatia.world.worldlog import WorldLog

log = structlog.get_logger("spatia.server.ray")

GENERATE_BACKPRESSURE = 4  # Generate: frames the actor may have produced that the front door has not taken yet
PLAY_BACKPRESSURE = 32  # Play: a bound only (the front door drains every frame at once)
CALL_TIMEOUT_S = 10.0  # a blocking lease call (claim) waits at most this long
GRAPH_FRAME_TIMEOUT_S = 300.0  # a Play graph's frame that takes longer breaks the graph (UNAVAILABLE)
GRAPH_IDLE_S = 2.0  # a Play graph with no clip for this long is closed (its actor's loop spins while open)
GRAPH_ATTEMPTS = 4  # graphs a session may reopen in a row after ones that failed to start in a retryable way
# ... each after a back-off (this, doubling per failure in a row) counted from when the session's clip found the
# failed graph: a graph compiled right after the previous one's teardown can find the actor still closing that
# one's channels (CI: three reopens 0.15 s apart after an idle close all got "Channel closed", and the session
# stayed on streaming calls for good). Clips take streaming calls meanwhile.
GRAPH_RETRY_S = 0.25
# Collision on a Ray host: the front door's session sweeps its moves against a copy of the memory's points around
# the camera (``world.collision.NearbyCollider``), taken by the actor after a clip's memory update when asked:
NEARBY_HALF_M = 2.0  # the copy's box: this far from the camera along each axis
NEARBY_RECENTRE_M = 0.75  # asked for again once a clip ends this far from the copy's centre (a move reaches ~0.7 m)
NEARBY_EVERY_CLIPS = 4  # ... or this many clips after the last copy (the memory changed: keyframes, fills)
GRAPH_END_TIMEOUT_S = 5.0  # the actor ending a graph loop left running waits at most this long for its channels


def actor_name(world_id: str) -> str:
    return f"world:{world_id}"


class StaleEpochError(AbortedError):
    """A world actor that a newer incarnation replaced tried to write a snapshot (ABORTED)."""


# ---- on disk: epochs ----------------------------------------------------------------------------------------

def next_epoch(data_dir: Path, world_id: str) -> int:
    """Take the world's next epoch number (1, 2, ...): read, add one, write, under an exclusive lock on the file
    (flock works on NFS v4 and CephFS, the shared file systems docs/SCALE.md names)."""
    path = Path(data_dir) / ".cluster" / f"epoch.{world_id}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read().strip()
        epoch = (int(text) if text.isdigit() else 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(epoch))
        f.flush()
        os.fsync(f.fileno())
    return epoch


def current_epoch(data_dir: Path, world_id: str) -> int:
    try:
        text = (Path(data_dir) / ".cluster" / f"epoch.{world_id}").read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def load_world(worlds_dir: Path, world_id: str) -> tuple[World, WorldLog | None, Path | None, int]:
    """(world, its log, an old single-file snapshot it came from, snapshot bytes) from the data dir, as
    ``WorldStore.load_all`` loads one world. NOT_FOUND when neither form exists; DATA_LOSS when unreadable."""
    directory, legacy = worlds_dir / world_id, worlds_dir / f"{world_id}.msgpack"
    try:
        if directory.is_dir():
            try:
                world, wlog = WorldLog.load(directory)
                if world.world_id != world_id:
                    world.close()
                    raise DataLossError(f"world {world_id!r}: its log holds world {world.world_id!r}")
                return world, wlog, None, 0
            except NotFoundError:
                if not legacy.exists():
                    raise
        if legacy.exists():
            world = World.load(legacy)
            return world, None, legacy, legacy.stat().st_size
    except (SnapshotError, OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, DataLossError):
            raise
        raise DataLossError(f"world {world_id!r}: its snapshot on disk is unreadable ({type(exc).__name__}); "
                            "DeleteWorld removes it") from None
    raise NotFoundError(f"world {world_id!r} not found")


# ---- the actor ----------------------------------------------------------------------------------------------

def channels_without_torch() -> bool:
    """Ray's compiled-graph channels import torch (when installed) on a graph's first execution, to place tensors:
    measured 2.7 s on a quiet machine and 4-9 s loaded, holding the GIL, so the world actor's event loop stalled
    (lease renewals lapsed) and a session waited that long for its graph. Play frames and stats are bytes and
    numpy: a process that has not loaded torch for its own use tells the channels torch is not there (Ray 2.60's
    ``ChannelContext``, a process-wide singleton). Returns whether it did."""
    import sys

    if "torch" in sys.modules:  # the generator uses it anyway (the neural one): nothing to save
        return False
    from ray.experimental.channel.common import ChannelContext

    ctx = ChannelContext.get_current()
    if ctx._torch_available is None:
        ctx._torch_available = False
    return ctx._torch_available is False


_CHANNEL_PUTS = None  # ``channel_puts_off_fibers``: the thread that puts this process's channel buffers
_CREATE_CHANNEL_REF = None  # ... and Ray's own function, which it calls there


def channel_puts_off_fibers(on: bool = True) -> bool:
    """Puts the buffers of this process's compiled-graph channels (Ray 2.60's ``_create_channel_ref``, a
    ``put_object``) on a thread of their own, where Ray gives them object ids that never repeat; ``on=False``
    puts Ray's function back (``benchmarks/ray_channel_puts.py`` measures both). Returns whether it is on.

    Why: a world actor is an async actor. Ray runs its calls that are not coroutines (``__ray_call__``, which is
    how a graph's compile has the actor make its channels: ``do_allocate_channel``) on one fiber thread, and a
    put's object id is that thread's current task id plus a per-task counter, kept per *thread*. A fiber that
    ends resets both (nil task id, counter 0) under whichever fiber runs next, so a ``__ray_call__`` that started
    while other calls were in flight often runs with the nil task id, and its first put is always
    ``ffff...ff`` + index 100000002 (measured on a bare async actor: 1152 of 1374 such puts, 223 distinct ids,
    three at a time with sync calls in flight; Ray issue 10324). While one graph's buffer holds that id, the next
    graph's compile that gets it too aborts the actor: ``reference_counter.cc ... Check failed:
    AddOwnedObjectInternal ... Tried to create an owned object that already exists: ffff...ff02e1f505`` (the Ray
    tests' intermittent world actor crash, sessions 28-30). A thread that runs no Ray task keeps a random task id
    and a counter that never resets. The replacement keeps Ray's name, so a remote reader's buffer (made there
    through ``__ray_call__``) still runs Ray's function in the reader's process."""
    global _CHANNEL_PUTS, _CREATE_CHANNEL_REF
    import functools
    from concurrent.futures import ThreadPoolExecutor

    from ray.experimental.channel import shared_memory_channel as smc

    if _CREATE_CHANNEL_REF is None:
        _CREATE_CHANNEL_REF = smc._create_channel_ref
    if not on:
        smc._create_channel_ref = _CREATE_CHANNEL_REF
        return False
    if _CHANNEL_PUTS is None:
        _CHANNEL_PUTS = ThreadPoolExecutor(1, thread_name_prefix="channel-puts")
    original = _CREATE_CHANNEL_REF

    @functools.wraps(original)  # Ray's module and name: pickled by reference (to a remote reader: its own)
    def _create_channel_ref(self, buffer_size_bytes: int):
        if threading.current_thread().name.startswith("channel-puts"):
            return original(self, buffer_size_bytes)
        return _CHANNEL_PUTS.submit(original, self, buffer_size_bytes).result()

    smc._create_channel_ref = _create_channel_ref
    return True


def _graph_loop_codes() -> tuple:
    from ray.dag import compiled_dag_node as cdn

    return cdn.do_exec_tasks.__code__, cdn.do_profile_tasks.__code__


def _graph_loop_tasks(frame) -> list | None:
    """The task list of the compiled-graph loop (Ray's ``do_exec_tasks``) that ``frame`` runs inside, if any."""
    codes = _graph_loop_codes()
    while frame is not None:
        if frame.f_code in codes:
            return frame.f_locals.get("tasks")
        frame = frame.f_back
    return None


def running_graph_loops() -> list[list]:
    """The task lists of every compiled-graph loop running in this process, found in its threads' stacks. A world
    actor runs each graph's loop as one long task on its ``_ray_system`` thread (one at a time, Ray 2.60:
    ``ray.dag.compiled_dag_node.do_exec_tasks``); Ray offers no handle to it on the actor's side, and a loop whose
    front door died or lost its lease would hold that thread for good. Cancelling a loop's tasks closes its
    channels (what Ray's own driver-side teardown does), and the loop ends."""
    import sys

    found = []
    for frame in sys._current_frames().values():
        tasks = _graph_loop_tasks(frame)
        if tasks is not None:
            found.append(tasks)
    return found


@dataclass(frozen=True)
class EncodedFrame:
    """One Play frame as the actor sends it: already resized and encoded (``data``) for the session."""

    frame_index: int
    clip_id: int
    c2w: np.ndarray  # [4, 4] world frame
    width: int
    height: int
    data: bytes


class _EpochHost(WorldHost):
    """The in-process host, with each snapshot write first checking that no newer actor took the world."""

    def __init__(self, *args, epoch_check: Callable[[], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._epoch_check = epoch_check

    def _write(self, plan):
        self._epoch_check()
        return super()._write(plan)


class WorldActor:
    """One loaded world (see the module docstring). Async actor: its methods run on the actor's event loop; the
    engine work runs on the host's worker thread."""

    def __init__(self, data_dir: str, world_id: str, generator: str, generator_kwargs: dict, version: str,
                 lease_ttl_s: float, idle_exit_s: float | None, host_kind: str = "world",
                 warm_kernels: bool = False) -> None:
        if version != project_version():
            raise ClusterCheckError(f"this node runs spatia {project_version()}, the front door {version}")
        self.data_dir = Path(data_dir)
        self.world_id = world_id
        self.lease_ttl_s = lease_ttl_s
        self.idle_exit_s = idle_exit_s
        self.epoch = next_epoch(self.data_dir, world_id)
        world, wlog, legacy, size = load_world(self.data_dir / "worlds", world_id)
        host_class = _EpochHost
        if host_kind == "gpu-standin":
            from spatia.server.standin import GpuStandinMixin

            host_class = type("StandinEpochHost", (GpuStandinMixin, _EpochHost), {})
        self.host = host_class(world, self.data_dir / "worlds" / world_id, wlog=wlog, legacy_path=legacy,
                               snapshot_bytes=size, epoch_check=self._check_epoch)
        if wlog is not None:
            self.host.snapshot_bytes = self.host._disk_bytes()
        from spatia.model import make_generator

        self.generator = make_generator(generator, **generator_kwargs)
        if hasattr(self.host, "prepare"):  # the generator's per-world state (layout fill's fit) starts now
            self.host.prepare(self.generator)
        if warm_kernels:  # this process's own kernel loads, as the embedded server's (the first clip waits for them)
            from spatia.server.host import KernelWarmUp

            self._warm = KernelWarmUp()
        channels_without_torch()  # after the generator: a generator that loaded torch keeps it
        channel_puts_off_fibers()  # a graph's channels never get an object id the actor already holds
        self.lease: tuple[str, float] | None = None  # (session id, monotonic expiry)
        self.engines: dict[str, Any] = {}  # engine key -> Engine (one per session)
        self.last_call = time.monotonic()
        self._idle_task: asyncio.Task | None = None
        self._step_work = None  # the compiled-graph path's clip in flight (a concurrent.futures.Future)
        self._step_frames = None  # its frames, as the worker encodes them (a queue.SimpleQueue)
        self._step_left = 0  # its frames not yet returned
        self._graph_owner: tuple[str, int] | None = None  # (session id, id of its loop's tasks): who pinged last
        self._ended_loops: set[int] = set()  # ids of the graph loops' task lists this actor ended (``_end_graphs``)
        self.node_id = ray.get_runtime_context().get_node_id()
        log.info("world actor started", world_id=world_id, epoch=self.epoch, node=self.node_id[:12],
                 pid=os.getpid(), points=world.memory.num_points)

    # ---- bookkeeping ----

    def _check_epoch(self) -> None:
        newest = current_epoch(self.data_dir, self.world_id)
        if newest != self.epoch:
            raise StaleEpochError(f"world {self.world_id!r}: this actor (epoch {self.epoch}) was replaced by epoch "
                                  f"{newest}; its snapshot write is refused")

    def _touch(self) -> None:
        self.last_call = time.monotonic()
        if self.idle_exit_s is not None and self._idle_task is None:
            self._idle_task = asyncio.ensure_future(self._idle_watch())

    async def _idle_watch(self) -> None:
        while True:
            await asyncio.sleep(min(self.idle_exit_s, 5.0))
            if self._holder() is None and time.monotonic() - self.last_call >= self.idle_exit_s:
                log.info("world actor idle; saving and exiting", world_id=self.world_id)
                try:
                    await self.host.unload()
                finally:  # (exit_actor only works inside an actor call; this is a background task)
                    ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def _holder(self) -> str | None:
        if self.lease is not None and self.lease[1] <= time.monotonic():
            log.warning("controller lease expired", world_id=self.world_id, session_id=self.lease[0])
            self.lease = None
            self.host.controller = None
        return self.lease[0] if self.lease else None

    def _require_lease(self, session_id: str) -> None:
        holder = self._holder()
        if holder != session_id:
            raise PreconditionError(f"world {self.world_id!r}: session {session_id} no longer holds the controller "
                                    f"lease (expired or taken by {holder or 'nobody'})")
        self.lease = (session_id, time.monotonic() + self.lease_ttl_s)

    def _engine(self, key: str, config):
        engine = self.engines.get(key)
        if engine is None:
            if config is None:
                raise PreconditionError(f"world {self.world_id!r}: this actor does not hold the session's engine "
                                        "(it was restarted); start a new session")
            engine = self.engines[key] = self.host.open_engine(self.generator, config)
        return engine

    # ---- what the proxy calls ----

    async def view(self) -> HostView:
        self._touch()
        return replace(self.host.view(), controlled=self._holder() is not None)

    async def where(self) -> dict:
        from spatia.server import host
        from spatia.world.numba_start import numba

        return {"node_id": self.node_id, "pid": os.getpid(), "epoch": self.epoch,
                "numba_threads": numba.config.NUMBA_NUM_THREADS,
                "kernel_load": host.kernel_load_state(),
                "holder": self._holder() or "",
                "stats": {**self.host.stats(), "controlled": int(self._holder() is not None)},
                "view": replace(self.host.view(), controlled=self._holder() is not None)}

    async def claim(self, session_id: str, released: str = "") -> HostView:
        """``released``: the session this caller's front door released last; its release may not have run yet
        (it is sent without waiting, and an async actor need not run calls in the order they were sent)."""
        self._touch()
        if released:
            await self.release(released)
        holder = self._holder()
        if holder is not None and holder != session_id:
            raise PreconditionError(f"world {self.world_id!r} is already controlled by session {holder}; one "
                                    "controller per world")
        self.host.controller = session_id  # the in-process host's flag (its stats and unload read it)
        self.lease = (session_id, time.monotonic() + self.lease_ttl_s)
        # A graph loop still running belongs to an earlier session (this one opens its graph at its first clip,
        # after this claim): its front door died, lost the lease or has not torn it down yet. It would hold the
        # actor's one graph thread, and the new session's graph would never start.
        await self._end_graphs(f"claimed by session {session_id}")
        return replace(self.host.view(), controlled=True)

    async def _end_graphs(self, reason: str) -> int:
        """End every compiled-graph loop running in this actor (``running_graph_loops``); returns how many."""
        from ray.dag.compiled_dag_node import do_cancel_executable_tasks

        ended = 0
        running = running_graph_loops()
        self._ended_loops &= {id(t) for t in running}  # a loop ended here may take a moment to exit: once is enough
        for tasks in running:
            if id(tasks) in self._ended_loops:
                continue
            self._ended_loops.add(id(tasks))
            owner = self._graph_owner[0] if self._graph_owner and self._graph_owner[1] == id(tasks) else "unknown"
            try:  # closing a channel whose other end was on a lost node may wait on the network: off the loop
                await asyncio.wait_for(asyncio.to_thread(do_cancel_executable_tasks, self, tasks), GRAPH_END_TIMEOUT_S)
                ended += 1
                log.info("ended a play graph left running", world_id=self.world_id, owner=owner, reason=reason)
            except Exception as exc:  # noqa: BLE001 -- the loop may be ending by itself (its driver's teardown)
                log.warning("could not end a play graph", world_id=self.world_id, owner=owner, reason=reason,
                            error=f"{type(exc).__name__}: {str(exc)[:200]}")
        if ended:
            self._graph_owner = None
        return ended

    async def renew(self, session_id: str) -> bool:
        self._touch()
        self._require_lease(session_id)
        return True

    async def release(self, session_id: str) -> bool:
        self._touch()
        for key in [k for k in self.engines if k.startswith(session_id + ":")]:
            del self.engines[key]
        if self.lease is not None and self.lease[0] == session_id:
            self.lease = None
            self.host.release(session_id)
            # its graph, if any, is done (the front door tears it down too; whichever comes first ends the loop)
            await self._end_graphs(f"session {session_id} released the world")
            return True
        return False

    def _encoder(self, frame_format) -> Callable[[Any], EncodedFrame]:
        """The Play frame as the actor sends it: resized and encoded on the world's worker thread, where the
        generator yields it (``frame_format = ((width, height), encoding, jpeg_quality)``)."""
        import cv2

        from spatia.proto.spatia.v1.convert import encode_image

        (out_w, out_h), encoding, quality = frame_format

        def encode(f) -> EncodedFrame:
            data = getattr(f, "data", None)  # a host that prepared its frames (server/standin.py)
            if data is None:
                rgb = f.rgb
                if (rgb.shape[1], rgb.shape[0]) != (out_w, out_h):
                    rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)
                data = encode_image(rgb, encoding, quality)
            return EncodedFrame(f.frame_index, f.clip_id, f.c2w, out_w, out_h, data)

        return encode

    async def play_clip(self, session_id: str, engine_key: str, engine_config, poses: np.ndarray,
                        prompt: str | None, seed: int, autosave, frame_format):
        """Streaming: ``("frame", i, EncodedFrame)`` per frame as generated, then ``("stats", ClipStats, view)``;
        the last frame comes as ``("last", i, EncodedFrame, ClipStats, view)`` instead when the clip had already
        ended by then (one stream item less per clip; never waited for). ``frame_format = ((width, height),
        encoding, jpeg_quality)``. (The path a session takes until its compiled graph is ready, or when it cannot
        have one: ``play_step``.)"""
        self._touch()
        self._require_lease(session_id)
        engine = self._engine(engine_key, engine_config)
        encode = self._encoder(frame_format)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def sink(i: int, f) -> None:  # on the world's worker thread
            loop.call_soon_threadsafe(queue.put_nowait, ("frame", i, encode(f)))

        # the host's play_clip, with the worker's own future: whether the clip has ended is known at once on the
        # loop (an asyncio wrapper learns it a few loop turns later)
        work_fn = self.host.clip_work(engine, poses, prompt, seed, sink, autosave, frame_format)
        if self.host.deleted or self.host.closed:
            raise NotFoundError(f"world {self.world_id!r} not found (deleted or unloaded)")
        try:
            work = self.host.executor.submit(self.host._call, work_fn, (), False)
        except RuntimeError:  # "cannot schedule new futures after shutdown": deleted or unloaded meanwhile
            raise NotFoundError(f"world {self.world_id!r} not found (deleted or unloaded)") from None
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        last = len(poses) - 1
        while (item := await queue.get()) is not None:
            if item[1] == last and work.done() and work.exception() is None:
                self.last_call = time.monotonic()
                yield ("last", item[1], item[2], work.result(),
                       replace(self.host.view(), controlled=self._holder() is not None))
                return
            yield item
        stats = await asyncio.wrap_future(work)
        self.last_call = time.monotonic()
        yield ("stats", stats, replace(self.host.view(), controlled=self._holder() is not None))

    def play_step(self, request: tuple):
        """One execution of a Play session's compiled graph (``RayWorldHost``: Ray Compiled Graphs, one graph per
        session, ``actor.play_step.bind(InputNode())``). Runs on the actor's ``_ray_system`` thread, where no event
        loop runs: the clip goes straight to the host's worker thread and its frames come back through a plain
        queue, one thread hand-off each way (the streaming path has three and a Ray task per clip).

        ``("ping", session_id)`` -> ``"pong"`` (the graph works; the actor notes which session's loop this is, for
        its log when ``claim`` ends it); ``("clip", session_id, engine_key, engine_config, poses,
        prompt, seed, autosave, frame_format)`` starts a clip (as ``play_clip``) and returns its first
        ``EncodedFrame``; ``("next",)`` the next one; the clip's last frame comes as ``(EncodedFrame, (ClipStats,
        HostView))`` when the clip had already ended by then; otherwise ``("stats",)`` waits for the clip's end
        (memory update, autosave) and returns ``(ClipStats, HostView)``. Errors raise here and reach the front door as the
        graph's result (the graph stays usable)."""
        import queue as queue_mod

        kind = request[0]
        if kind == "ping":  # ("ping", session_id): the graph's first execution; it names its owner
            import sys

            session_id = request[1] if len(request) > 1 else ""
            if self._holder() != session_id:
                # a graph compiled by a session that lost the world meanwhile (its loop may have waited behind the
                # new holder's): refused, so its front door tears it down at once instead of it holding the thread
                raise PreconditionError(f"world {self.world_id!r}: session {session_id} does not hold the "
                                        "controller lease; no play graph")
            tasks = _graph_loop_tasks(sys._getframe())
            self._graph_owner = (session_id, id(tasks))
            return "pong"
        self.last_call = time.monotonic()
        if kind == "clip":
            session_id, engine_key, engine_config, poses, prompt, seed, autosave, frame_format = request[1:]
            if self._step_work is not None and not self._step_work.done():
                raise PreconditionError(f"world {self.world_id!r}: a clip is still running on this graph")
            self._require_lease(session_id)
            engine = self._engine(engine_key, engine_config)
            encode = self._encoder(frame_format)
            frames: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
            self._step_frames = frames
            work = self.host.clip_work(engine, poses, prompt, seed, lambda i, f: frames.put(encode(f)),
                                       autosave, frame_format)
            if self.host.deleted or self.host.closed:
                raise NotFoundError(f"world {self.world_id!r} not found (deleted or unloaded)")
            self._step_work = self.host.executor.submit(self.host._call, work, (), False)
            self._step_work.add_done_callback(lambda _: frames.put(None))  # wakes a reader if the clip fails
            self._step_left = len(poses)
            kind = "next"
        if self._step_work is None:
            raise PreconditionError(f"world {self.world_id!r}: no clip is running on this graph")
        if kind == "next":
            frame = self._step_frames.get()
            if frame is None:  # the clip ended before this frame: its error, or a bookkeeping slip of ours
                self._step_frames.put(None)
                error = self._step_work.exception()
                raise error if error is not None else PreconditionError(
                    f"world {self.world_id!r}: the clip has no more frames")
            self._step_left -= 1
            # The clip's last frame: when the clip has already ended (no memory update left to wait for: the
            # stand-in, or a worker that finished while this thread waited for the GIL) its stats ride along and
            # the front door skips the ("stats",) round trip. Never waited for: the frame is not held back.
            if self._step_left == 0 and self._step_work.done() and self._step_work.exception() is None:
                return frame, self._step_stats()
            return frame
        if kind == "stats":
            self._step_work.result()
            return self._step_stats()
        raise ValueError(f"play_step: unknown request {kind!r}")

    async def nearby_points(self, centre_m: np.ndarray, half_m: float) -> NearbyPoints:
        """The memory's points within ``half_m`` of ``centre_m`` [3] (world frame), on the world's worker (in order
        with the clips queued there). A plain actor call, never through a Play graph's channels: a copy is MBs."""
        self._touch()
        return await self.host.call(NearbyPoints.of, self.host.world.memory, centre_m, half_m)

    def _step_stats(self):
        """The graph's clip, ended: ``(ClipStats, HostView)``."""
        stats = self._step_work.result()
        self._step_work = self._step_frames = None
        self.last_call = time.monotonic()
        return stats, replace(self.host.view(), controlled=self._holder() is not None)

    async def generate(self, session_id: str, engine_key: str, engine_config, c2w: np.ndarray,
                       prompt: str | None, seed: int):
        """Streaming: ``("frame", n, GeneratedFrame)`` for every frame; the worker waits while the stream's
        backpressure holds the consumer (so a slow client slows generation), and stops when the stream is
        cancelled (the clip in progress is abandoned before its memory update, as in-process)."""
        self._touch()
        self._require_lease(session_id)
        engine = self._engine(engine_key, engine_config)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        room = threading.Semaphore(2)
        stop = threading.Event()

        def sink(n: int, f) -> bool:  # on the world's worker thread
            while not room.acquire(timeout=0.2):
                if stop.is_set():
                    return False
            if stop.is_set():
                return False
            loop.call_soon_threadsafe(queue.put_nowait, ("frame", n, f))
            return True

        work = asyncio.ensure_future(self.host.generate(engine, c2w, prompt, seed, sink))
        work.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (item := await queue.get()) is not None:
                yield item
                room.release()
                self.last_call = time.monotonic()
            await work
        finally:
            stop.set()

    async def render(self, K, c2w: np.ndarray):
        self._touch()
        return await self.host.render(K, c2w)

    async def edit(self, op) -> int:
        self._touch()
        return await self.host.edit(op)

    async def export(self, fmt: str) -> bytes:
        self._touch()
        return await self.host.export(fmt)

    async def save(self) -> int:
        self._touch()
        return await self.host.save()

    async def save_if_changed(self) -> int:
        self._touch()
        return await self.host.save_if_changed()

    async def memory_sample(self):
        """The memory downsampled as a recording stores it: ([M, 3] float32 world positions, [M, 3] uint8)."""
        from spatia.server.recording import downsample_memory

        self._touch()
        return await self.host.call(downsample_memory, self.host.world.memory)

    async def unload(self) -> int:
        if self._holder() is not None:
            raise PreconditionError(f"world {self.world_id!r} is in use by session {self.lease[0]}; end it first")
        self.host.controller = None
        return await self.host.unload()

    async def delete(self) -> None:
        if self._holder() is not None:
            raise PreconditionError(f"world {self.world_id!r} is in use by session {self.lease[0]}; end it first")
        self.host.controller = None
        await self.host.delete()

    async def pid(self) -> int:
        return os.getpid()


# ---- the front door's side ----------------------------------------------------------------------------------

def _unwrap(exc: BaseException, world_id: str) -> BaseException:
    """A Ray error as the error the service maps to a status: the actor's own exception (its message, not a
    remote traceback), or UNAVAILABLE for a dead actor."""
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            remote = getattr(exc, "traceback_str", "")
            if remote and not isinstance(cause, SpatiaError):  # an unexpected error: the front door's log (never
                cause.add_note(f"in the world actor:\n{remote}")  # the status message) shows where it was raised
            return cause
    if isinstance(exc, RayActorError):
        return UnavailableError(f"world {world_id!r}: its actor died ({type(exc).__name__}: killed, its node lost "
                                "or out of memory); the next call restarts it from its last snapshot")
    return exc


async def _drain(gen) -> None:
    try:
        async for _ in gen:
            pass
    except Exception:  # noqa: BLE001 -- the clip's result was taken already
        pass


@dataclass
class _RemoteEngine:
    key: str
    config: Any  # EngineConfig
    sent: bool = False  # the actor has built it


class _MemorySample:
    """What ``downsample_memory`` reads of a memory (``positions``, ``colors``), fetched from the actor on first
    use (a recording that stores no clouds never fetches it)."""

    def __init__(self, host: "RayWorldHost") -> None:
        self._host = host
        self._data = None

    def _get(self):
        if self._data is None:
            self._data = ray.get(self._host.actor.memory_sample.remote(), timeout=60)
        return self._data

    @property
    def positions(self) -> np.ndarray:
        return self._get()[0]

    @property
    def colors(self) -> np.ndarray:
        return self._get()[1]


class _RemoteWorld:
    def __init__(self, host: "RayWorldHost") -> None:
        self._host = host

    @property
    def memory(self) -> _MemorySample:
        return _MemorySample(self._host)


_OPEN_GRAPHS: "weakref.WeakSet[_PlayGraph]" = weakref.WeakSet()  # graphs not torn down yet (``_PlayGraph._close``)
GRAPH_SETTLE_S = 30.0  # ``close_play_graphs``: how long a caller waits for graphs' teardown on their own threads


def close_play_graphs(world_ids: list[str] | None = None, owner: Any = None,
                      wait_s: float = GRAPH_SETTLE_S) -> int:
    """Close this process's Play graphs (all; or those to the named worlds' actors; or those a store opened:
    ``owner``) and wait up to ``wait_s`` for each to be torn down on its own thread, after whatever runs there (a
    compile, a ping, a clip). Returns how many were still not torn down at the end.

    Whoever kills a world actor or shuts Ray down calls this first: a graph thread still compiling or pinging then
    (a session's graph is compiled in the background after its first clip, and a session may end before that is
    done) would meet the killed actor in Ray's half-made graph (Ray's own monitor thread then fails on it and a
    garbage collector tears it down later, from whatever thread), or call into Ray after ``ray.shutdown()``, which
    ends the whole process by design (Ray 2.60: "The core worker has already been shutdown ... The process will
    exit"; it took a pytest-xdist worker down, docs/BENCHMARKS.md session 29)."""
    graphs = [g for g in list(_OPEN_GRAPHS)
              if (world_ids is None or g.world_id in world_ids) and (owner is None or g.owner is owner)]
    for graph in graphs:
        graph.close()
    deadline = time.monotonic() + wait_s
    left = 0
    for graph in graphs:
        if not graph.close(wait_s=max(0.0, deadline - time.monotonic())):
            left += 1
            log.warning("play graph not torn down in time", world_id=graph.world_id, session_id=graph.session_id,
                        wait_s=wait_s)
    return left


def _retire(dag) -> None:
    """Tear a compiled graph down, on the calling thread (a ``_PlayGraph``'s own), and make sure nothing tries again
    later: Ray's ``CompiledDAG.__del__`` would otherwise tear down a graph left half-done whenever a garbage
    collector reaches it, on whatever thread runs then, or (a graph in a reference cycle) only log "CompiledDAG has
    been destructed before teardown", with its actor's loop still running.

    Ray 2.60's teardown itself fails on a graph whose compile stopped before its driver-side channels existed (an
    actor that died during the compile: ``AttributeError`` on ``_dag_submitter``): that graph's actor loops are
    cancelled here, as Ray's teardown would have next (a dead actor answers at once), and the graph is marked torn
    down."""
    try:
        dag.teardown()
        return
    except Exception as exc:  # noqa: BLE001 -- finished below as far as it can be
        log.debug("play graph teardown", error=f"{type(exc).__name__}: {str(exc)[:200]}")
    from ray.dag.compiled_dag_node import do_cancel_executable_tasks

    monitor = getattr(dag, "_monitor", None)
    if monitor is not None:  # its thread, woken by the loops' end below, finds the teardown done (not failing again)
        monitor._teardown_done = True
    for actor, tasks in dict(getattr(dag, "actor_to_executable_tasks", None) or {}).items():
        try:
            ray.get(actor.__ray_call__.remote(do_cancel_executable_tasks, tasks), timeout=CALL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 -- a dead actor, or a loop that ended already: nothing left to end
            log.debug("play graph loops not cancelled", error=type(exc).__name__)
    dag._is_teardown = True


def _compiled_dag_of(exc: BaseException):
    """The ``CompiledDAG`` that an ``experimental_compile`` which raised ``exc`` had made (Ray keeps no handle to
    it), from the frames of the traceback; None when the compile failed before making one."""
    from ray.dag.compiled_dag_node import CompiledDAG

    tb = exc.__traceback__
    while tb is not None:
        for name in ("self", "compiled_dag"):
            obj = tb.tb_frame.f_locals.get(name)
            if isinstance(obj, CompiledDAG):
                return obj
        tb = tb.tb_next
    return None


def _close_graphs_at_exit() -> None:
    """At interpreter exit, before Ray's own exit hook: ``ray.shutdown`` tears every compiled graph still open down
    with ``kill_actors=True``, which kills the graph's actors. A front door that exits with a session's graph open
    (a crash, an exit without closing the store) would take its world actors down with it, and with them the other
    front doors' sessions and whatever the worlds had not saved. Ours end here without killing anything. (The
    graphs' own threads have been joined by then: ``concurrent.futures`` joins its workers before atexit runs.)"""
    for graph in list(_OPEN_GRAPHS):
        graph._close()


atexit.register(_close_graphs_at_exit)  # after ``import ray`` registered Ray's hook: atexit runs the later first


class _PlayGraph:
    """One Play session's compiled graph to its world actor (Ray Compiled Graphs: ``actor.play_step`` bound to an
    ``InputNode``, compiled once per session; docs/SCALE.md). Each execution is a write to and a read from Ray's
    shared-memory channels instead of a Ray task per clip plus a stream report per frame: measured ~1.5 ms per round
    trip vs ~5-6 ms for a streaming actor call on the same loaded machine (docs/BENCHMARKS.md).

    Everything on the graph (compile, executions, teardown) runs on this object's own thread, in order: the graph
    is not thread-safe, and compile / teardown block. Compiling takes 0.1-0.6 s, in the background: until the
    graph answers a ping, the session's clips take the streaming path. An actor runs one graph at a time: the actor
    ends any graph loop still running when a session claims the world (``WorldActor.claim``), so a graph left
    behind by a front door that died or lost its lease never blocks the next one. A graph that does not answer its
    ping within ``PING_TIMEOUT_S`` (or cannot be compiled: Ray Client) is torn down and the session plays through
    streaming calls (``start_failed``: this front door then uses streaming calls for the actor until it is
    replaced). (A graph's first execution waits for the actor to start the graph's loop: measured 4-9 s on the
    loaded 2-core machine, ~1 ms per round trip after that.)

    Teardown is this object's too, always on its thread: ``close`` queues it after whatever runs there (and may
    wait for it: ``close_play_graphs``, before an actor is killed or Ray is shut down); a graph that broke, or whose
    compile failed half-way (its actor died meanwhile), is torn down there at once (``_retire``), never left to
    Ray's monitor thread or a garbage collector."""

    PING_TIMEOUT_S = 60.0
    SPIN_MARGIN_S = 0.010  # ``_get``: how long before a frame's predicted time the read starts

    def __init__(self, actor, world_id: str, session_id: str, owner: Any = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.actor = actor
        self.world_id = world_id
        self.session_id = session_id
        self.owner = owner  # the store whose session opened it (``close_play_graphs``)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"play-graph-{world_id[:16]}")
        self.dag = None
        self.ready = False  # compiled and answered its ping: clips may use it
        self.failed = False  # could not be compiled, or broke: the session's clips take streaming calls
        self.start_failed = False  # never answered its ping (or did not compile)
        self.retryable = False  # failed to start in a way another graph may not (``_compile``)
        self.closed = False
        self._closing = None  # the queued teardown (a concurrent.futures.Future), once ``close`` was called
        self.last_used = time.monotonic()  # the end of the graph's last clip (``RayWorldHost`` closes idle graphs)
        self._waits: dict[bool, deque] = {True: deque(maxlen=8), False: deque(maxlen=8)}  # first / next frame, s
        _OPEN_GRAPHS.add(self)
        self.thread.submit(self._compile)

    def _compile(self) -> None:
        from ray.dag import InputNode

        t0 = time.perf_counter()
        if self.closed:  # closed before its compile began (a session that ended at once): nothing to do
            self.failed = True
            return
        try:
            channels_without_torch()
            with InputNode() as inp:
                node = self.actor.play_step.bind(inp)
            try:
                self.dag = node.experimental_compile()
            except Exception as exc:  # a graph made in part (its actor died during the compile): torn down here
                self.dag = _compiled_dag_of(exc)
                raise
            # (pinged even when closed meanwhile, as before: the actor's loop is then running when the teardown comes)
            if ray.get(self.dag.execute(("ping", self.session_id)), timeout=self.PING_TIMEOUT_S) != "pong":
                raise RuntimeError("the graph's ping came back wrong")
        except Exception as exc:  # noqa: BLE001 -- the streaming path serves the session instead
            refused = isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), PreconditionError)
            # a channel closed under a new graph (seen once in ~10 test runs on the loaded machine: Ray logged an
            # object put twice in the actor; likely two graphs' buffers given one object id, which
            # ``channel_puts_off_fibers`` now prevents) is worth another graph; a timeout or a compile error is not
            self.retryable = isinstance(exc, ray.exceptions.RayChannelError) \
                and not isinstance(exc, ray.exceptions.RayChannelTimeoutError)
            self.failed = True
            self.start_failed = not (self.closed or refused or self.retryable)  # sticky for the actor
            if not (self.closed or refused):
                log.warning("play graph not available; this session's frames take streaming calls",
                            world_id=self.world_id, retry=self.retryable,
                            error=f"{type(exc).__name__}: {str(exc)[:200]}")
            self._teardown()
            return
        self.ready = not self.closed
        log.info("play graph ready", world_id=self.world_id, session_id=self.session_id,
                 ms=round((time.perf_counter() - t0) * 1e3, 1))

    def _teardown(self) -> None:
        dag, self.dag = self.dag, None
        self.ready = False
        if dag is not None:
            _retire(dag)

    def _close(self) -> None:
        self._teardown()
        _OPEN_GRAPHS.discard(self)

    def clip(self, request: tuple, frames: int, sink: Callable[[int, Any], None], timeout_s: float):
        """On ``thread``: one clip (``WorldActor.play_step``): each frame to ``sink`` as it comes, then
        ``(ClipStats, HostView)``. A graph that broke before its first frame raises ``GraphLost`` (the clip did
        not start on the actor: the caller may take the streaming path)."""
        dag = self.dag
        if dag is None:
            raise GraphLost("the play graph was torn down")
        sent = 0
        try:
            for i in range(frames):
                item = self._get(dag.execute(request if i == 0 else ("next",)), i == 0, timeout_s)
                if isinstance(item, tuple):  # the last frame with the clip's stats (WorldActor.play_step)
                    sink(i, item[0])
                    return item[1]
                sink(i, item)
                sent += 1
            return ray.get(dag.execute(("stats",)), timeout=timeout_s)
        except RayTaskError:
            raise  # the actor's own error (lease lost, world deleted, the clip failed): the graph goes on
        except BaseException as exc:
            self.failed = True  # a channel error, a timeout, a dead actor: this graph is done
            self._teardown()
            # Its channels closed before the first frame: the actor ended it (another session claimed the world)
            # or it died; either way no clip runs there for this request.
            if sent == 0 and isinstance(exc, Exception) and not isinstance(exc, TimeoutError):
                raise GraphLost(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
            raise

    def _get(self, ref, first: bool, timeout_s: float):
        """A frame from the graph. Ray 2.60's channel read spins (``sched_yield``) until the value is written, so a
        frame 100 ms away cost this thread 100 ms of CPU (measured: 98 ms of CPU per frame for the front door,
        against 16 ms with streaming calls). The thread first sleeps through most of the shortest wait of the last
        frames of this kind (first of a clip / next), then reads: it spins only for the last ``SPIN_MARGIN_S``,
        and a frame faster than all recent ones is late by at most the difference."""
        t0 = time.perf_counter()
        waits = self._waits[first]
        if waits:
            nap_s = min(waits) - self.SPIN_MARGIN_S
            if nap_s > 0:
                time.sleep(nap_s)
        item = ray.get(ref, timeout=timeout_s)
        waits.append(time.perf_counter() - t0)
        return item

    def close(self, wait_s: float | None = None) -> bool:
        """Tear the graph down after whatever runs on its thread; with ``wait_s``, wait that long for it. Returns
        whether it is torn down."""
        from concurrent.futures import TimeoutError as FutureTimeout

        self.closed = True
        self.ready = False
        if self._closing is None:
            self._closing = self.thread.submit(self._close)
            self.thread.shutdown(wait=False)
        if wait_s is not None:
            try:
                self._closing.result(timeout=wait_s)
            except FutureTimeout:  # still tearing down: the caller reads that from the result (False) and logs it
                return False
            except Exception as exc:  # noqa: BLE001 -- ``_retire`` catches what Ray raises; done either way
                log.warning("play graph close failed", world_id=self.world_id, error=type(exc).__name__)
        return self._closing.done()


class GraphLost(RuntimeError):
    """A session's compiled Play graph was closed before the clip reached the actor."""


class RayWorldHost:
    shares_server_cores = False  # its clips run in a Ray actor, on cores the server's clip slots do not count
    """The front door's proxy of one world actor: ``WorldHost``'s methods (server/host.py), each a call to the
    actor. ``view()`` and ``stats()`` answer from a cache refreshed after every call and by the store's poller."""

    def __init__(self, store: "RayWorldStore", world_id: str, actor, view: HostView, where: dict | None = None):
        self.store = store
        self.world_id = world_id
        self.deleted = False
        self.reset(actor, where or {"view": view})
        self.controller: str | None = None  # this front door's session holding the lease
        self._renew: asyncio.Task | None = None
        self._tails: set[asyncio.Task] = set()  # clips' end-of-stream reports being drained
        self._play_method = None  # actor.play_clip with its stream options (made once)
        self._released_session = ""  # the session whose lease this door released last (``refresh``)
        self._idle_timer: asyncio.TimerHandle | None = None  # closes an idle session's graph (``_arm_idle_close``)
        self._graph_attempts = 0  # graphs reopened in a row after retryable start failures (``GRAPH_ATTEMPTS``)
        self._graph_retry_at: float | None = None  # monotonic time the next reopen may start (``GRAPH_RETRY_S``)
        # the session's collider: a copy of the memory's points around the camera (``NEARBY_HALF_M``), fetched at
        # the claim and then with clips (``_nearby_request``); None until a claim
        self._nearby: NearbyCollider | None = None
        self._nearby_start: NearbyPoints | None = None  # the copy taken at the claim
        self._nearby_clips = 0  # clips since the copy was taken
        self._nearby_fetch: asyncio.Future | None = None  # a new copy on its way (``_renew_nearby``)

    def reset(self, actor, where: dict) -> None:
        """Point at a (new) actor of this world."""
        self.actor = actor
        self._view = where["view"]
        self._stats: dict = dict(where.get("stats", {}))
        self.node_id: str = where.get("node_id", "")
        self.actor_pid: int = where.get("pid", 0)
        self.epoch: int = where.get("epoch", 0)
        self.dead = False
        self._play_method = None
        old = getattr(self, "_graph", None)
        if old is not None:
            old.close()
        self._graph: _PlayGraph | None = None  # the Play session's compiled graph (``_PlayGraph``)
        self._graph_failed = False  # a graph to this actor failed: streaming calls only, until it is replaced

    def _revive(self) -> None:
        """Blocking: start the world's actor again from its last snapshot (after it exited idle or died)."""
        log.info("restarting world actor from its last snapshot", world_id=self.world_id)
        self.store._attach_locked(self.world_id)

    @property
    def world(self) -> _RemoteWorld:
        return _RemoteWorld(self)

    def view(self) -> HostView:
        return self._view

    def stats(self) -> dict:
        """The actor's counters as of the last refresh (``WorldHost.stats()``'s keys) plus where it runs."""
        base = {"memory_points": self._view.memory_points, "history_frames": self._view.history_frames,
                "clips_generated": self._view.clips_generated, "frames_generated": 0,
                "snapshot_bytes": self._view.snapshot_bytes, "saves": 0, "save_failures": 0,
                "last_save_cpu_s": 0.0}
        return {**base, **self._stats, "controlled": int(self._view.controlled), "node_id": self.node_id,
                "actor_pid": self.actor_pid, "epoch": self.epoch}

    def _failed(self, exc: BaseException) -> BaseException:
        err = _unwrap(exc, self.world_id)
        if isinstance(exc, RayActorError):
            self.dead = True
            worlds = self.store.worlds_dir
            if not (worlds / self.world_id).exists() and not (worlds / f"{self.world_id}.msgpack").exists():
                self.deleted = True  # another front door deleted it
                self.store._hosts.pop(self.world_id, None)
                return NotFoundError(f"world {self.world_id!r} not found (deleted)")
            log.warning("world actor died", world_id=self.world_id, node=self.node_id[:12], error=type(exc).__name__)
            self._close_graph()  # torn down now, on its own thread (Ray's monitor thread may be at it too)
        return err

    async def _call(self, method: str, *args, retry: bool = False):
        """``retry``: a call without side effects whose actor turns out gone (exited idle, or died since the
        last call) starts the actor again and is made once more, instead of answering UNAVAILABLE."""
        if self.dead:
            if not retry:
                raise UnavailableError(f"world {self.world_id!r}: its actor died; the next call restarts it")
            await asyncio.to_thread(self._revive)
        try:
            return await getattr(self.actor, method).remote(*args)
        except RayActorError as exc:
            err = self._failed(exc)
            if not retry or self.deleted:
                raise err from None
        except RayTaskError as exc:
            raise self._failed(exc) from None
        await asyncio.to_thread(self._revive)
        try:
            return await getattr(self.actor, method).remote(*args)
        except (RayTaskError, RayActorError) as exc:
            raise self._failed(exc) from None

    async def refresh(self) -> None:
        where = await self._call("where")
        view = where["view"]
        # The release is sent without waiting for it, and an async actor need not run its calls in the order they
        # were sent: a holder this door already released is one whose release has not run yet.
        if view.controlled and where["holder"] == self._released_session:
            view = replace(view, controlled=False)
        self._view, self._stats, self.node_id = view, where["stats"], where["node_id"]
        self.actor_pid, self.epoch = where["pid"], where["epoch"]

    # ---- the controller lease ----

    async def claim_async(self, session_id: str) -> None:
        """Take the world's lease in its actor without blocking the event loop (the servicer's path): Ray's async
        API for the call, a worker thread only to restart a dead actor (its placement wait)."""
        for attempt in (0, 1):
            if self.dead:
                await asyncio.to_thread(self._revive)
            try:
                claimed = self.actor.claim.remote(session_id, self._released_session)
                self._view = await asyncio.wait_for(claimed, timeout=CALL_TIMEOUT_S)
                near = self.actor.nearby_points.remote(self._view.current_c2w[:3, 3], NEARBY_HALF_M)
                self._nearby_start = await asyncio.wait_for(near, timeout=CALL_TIMEOUT_S)
                break
            except RayActorError as exc:  # gone since the last call (exited idle, or died): start it again, once
                err = self._failed(exc)
                if self.deleted or attempt:
                    raise err from None
            except RayTaskError as exc:
                raise self._failed(exc) from None
            except asyncio.TimeoutError:
                raise UnavailableError(f"world {self.world_id!r}: its actor did not answer within "
                                       f"{CALL_TIMEOUT_S:g} s") from None
        self.controller = session_id
        self._graph_attempts = 0
        self._graph_retry_at = None
        self._renew = asyncio.get_running_loop().create_task(self._renew_loop(session_id))

    def claim(self, session_id: str) -> None:
        """Take the world's lease in its actor (blocking: for callers without an event loop; the servicer uses
        ``claim_async``)."""
        if self.dead:
            self._revive()
        released = self._released_session
        try:
            try:
                self._view = ray.get(self.actor.claim.remote(session_id, released), timeout=CALL_TIMEOUT_S)
            except RayActorError as exc:  # gone since the last call (exited idle, or died): start it again, once
                err = self._failed(exc)
                if self.deleted:
                    raise err from None
                self._revive()
                self._view = ray.get(self.actor.claim.remote(session_id, released), timeout=CALL_TIMEOUT_S)
            self._nearby_start = ray.get(self.actor.nearby_points.remote(self._view.current_c2w[:3, 3],
                                                                         NEARBY_HALF_M), timeout=CALL_TIMEOUT_S)
        except (RayTaskError, RayActorError) as exc:
            raise self._failed(exc) from None
        except GetTimeoutError:
            raise UnavailableError(f"world {self.world_id!r}: its actor did not answer within {CALL_TIMEOUT_S} s")
        self.controller = session_id
        self._graph_attempts = 0
        self._graph_retry_at = None
        self._renew = asyncio.get_running_loop().create_task(self._renew_loop(session_id))

    def _open_graph(self) -> None:
        """Start compiling the session's Play graph in the background (``ClusterOptions.compiled_play``), after
        its first clip (and after the first clip since an idle close): a Generate call (streaming, with
        backpressure) never holds the actor's one graph."""
        if self.store.options.compiled_play and not self._graph_failed and self._graph is None \
                and self.controller is not None:
            self._graph = _PlayGraph(self.actor, self.world_id, self.controller, owner=self.store)

    def _close_graph(self) -> None:
        if self._graph is not None:
            # a graph that never started (Ray Client, a stuck actor) is not tried again on this actor; one that the
            # actor ended (another session claimed the world) or that broke mid-session is, by the next session
            self._graph_failed |= self._graph.start_failed
            self._graph.close()
            self._graph = None

    def _arm_idle_close(self, graph: _PlayGraph) -> None:
        """After a clip through ``graph``: close it if no clip follows within ``GRAPH_IDLE_S``. While a graph is
        open the actor's loop spins waiting for the next clip (Ray 2.60's channel read: measured 64-95% of a core),
        so a session that plays nothing for a while gives that back; its next clip opens a new graph (150-200 ms,
        its clips take streaming calls meanwhile)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()

        def close_if_idle() -> None:
            self._idle_timer = None
            if self._graph is graph and graph.ready and time.monotonic() - graph.last_used >= GRAPH_IDLE_S:
                log.info("play graph idle; closed", world_id=self.world_id, session_id=graph.session_id)
                self._close_graph()

        self._idle_timer = asyncio.get_running_loop().call_later(GRAPH_IDLE_S, close_if_idle)

    async def _renew_loop(self, session_id: str) -> None:
        period = self.store.options.lease_ttl_s / 3
        while True:
            await asyncio.sleep(period)
            try:
                await self.actor.renew.remote(session_id)
            except Exception as exc:  # noqa: BLE001 -- the next clip reports it to the client
                log.warning("lease renewal failed", world_id=self.world_id, error=type(exc).__name__)
                return

    def stop_renewing(self) -> None:
        """Stop renewing the lease without releasing it (what a front door that died does; tests)."""
        if self._renew is not None:
            self._renew.cancel()
            self._renew = None

    def release(self, session_id: str) -> bool:
        if self.controller != session_id:
            return False
        self.stop_renewing()
        self._close_graph()
        self.controller = None
        self._nearby = self._nearby_start = None
        if not self.dead:
            self.actor.release.remote(session_id)  # fire and forget: the lease expires anyway if this is lost
        self._view = replace(self._view, controlled=False)
        self._released_session = session_id
        return True

    # ---- work ----

    def prepare(self, generator) -> None:
        """Nothing here: the actor prepares its own generator for the world when it starts."""

    def open_engine(self, generator, config) -> _RemoteEngine:
        """The actor builds the engine (with its own generator) on the first clip; ``generator`` is the front
        door's and is not used."""
        return _RemoteEngine(f"{self.controller}:{uuid.uuid4().hex[:8]}", config)

    async def play_clip(self, engine: _RemoteEngine, poses: np.ndarray, prompt: str | None, seed: int,
                        sink: Callable[[int, Any], None], autosave=None, frame_format=None):
        if self.dead:
            raise UnavailableError(f"world {self.world_id!r}: its actor died; the next call restarts it")
        if frame_format is None:
            frame_format = ((self._view.intrinsics.width, self._view.intrinsics.height), 1, 85)
        if self._play_method is None:
            self._play_method = self.actor.play_clip.options(_generator_backpressure_num_objects=PLAY_BACKPRESSURE)
        # the engine's config travels with its first clip only (the actor keeps the engine by key)
        config, engine.sent = (None if engine.sent else engine.config), True
        self._renew_nearby(poses[-1][:3, 3])
        graph = self._graph
        if graph is not None and graph.ready:
            request = ("clip", self.controller, engine.key, config, poses, prompt, seed, autosave, frame_format)
            try:
                graph.last_used = math.inf  # in use: never closed as idle
                stats, self._view = await asyncio.get_running_loop().run_in_executor(
                    graph.thread, graph.clip, request, len(poses), sink, GRAPH_FRAME_TIMEOUT_S)
                return stats
            except (RayTaskError, RayActorError) as exc:
                raise self._failed(exc) from None
            except GraphLost as exc:  # closed before the clip reached the actor: this session goes on streaming
                log.warning("play graph lost; the session's clips take streaming calls", world_id=self.world_id,
                            session_id=self.controller, error=str(exc)[:200])
            except Exception as exc:  # noqa: BLE001 -- the graph broke mid-clip (channel closed, timed out)
                raise await self._clip_broke(exc, "the clip's compiled graph failed") from None
            finally:
                graph.last_used = time.monotonic()
                self._arm_idle_close(graph)
        gen = self._play_method.remote(self.controller, engine.key, config, poses, prompt, seed, autosave,
                                       frame_format)
        stats = None
        try:
            async for ref in gen:
                item = await ref
                if item[0] == "frame":
                    sink(item[1], item[2])
                    continue
                # the clip's last item: its end-of-stream report is not waited for (one hop less per clip); a task
                # drains it so the generator ends normally
                if item[0] == "last":  # the last frame with the clip's stats
                    sink(item[1], item[2])
                    item = item[2:]
                _, stats, self._view = item
                break
        except (RayTaskError, RayActorError) as exc:
            raise self._failed(exc) from None
        except ray.exceptions.RayError as exc:  # an item lost with its node, its owner gone: did the actor die?
            raise await self._clip_broke(exc, "the clip's stream failed") from None
        if stats is None:  # a stream that ended early: its actor died under it, or a bug of ours
            raise await self._clip_broke(None, "its actor ended a clip without its stats")
        self._tails.add(task := asyncio.ensure_future(_drain(gen)))
        task.add_done_callback(self._tails.discard)
        graph = self._graph  # after a clip the actor took: a session that lost the lease opens no graph
        if graph is not None and graph.ready:
            self._graph_attempts = 0  # failures in a row count: a graph reopened after an idle close starts afresh
            self._graph_retry_at = None
        if graph is None:
            self._open_graph()
        elif graph.retryable and self._graph_attempts < GRAPH_ATTEMPTS:  # another try (counted per session)
            now = time.monotonic()
            if self._graph_retry_at is None:
                self._graph_retry_at = now + GRAPH_RETRY_S * 2 ** self._graph_attempts
            if now >= self._graph_retry_at:
                self._graph_retry_at = None
                self._graph_attempts += 1
                self._close_graph()
                self._open_graph()
        return stats

    def _renew_nearby(self, clip_end_m: np.ndarray) -> None:
        """With this clip, ask the actor for a new copy of the memory around the camera (a plain actor call, run
        on the world's worker after the clip) when the session collides (``collider`` was asked), none is on its
        way, and the copy is old (``NEARBY_EVERY_CLIPS``), a move was held at its edge or collided with its points
        (they may be invented ones the world removed since: a doorway a clip opened, whose jambs would otherwise
        hold the player for up to ``NEARBY_EVERY_CLIPS`` clips), or the camera is ``NEARBY_RECENTRE_M`` from its
        centre. The camera: where the integrator's last move ended (it runs ahead of
        the clips), else the clip's last pose (``clip_end_m`` [3], world frame)."""
        collider = self._nearby
        if collider is None or self._nearby_fetch is not None:
            return
        self._nearby_clips += 1
        camera_m = collider.position_m if collider.position_m is not None else clip_end_m
        centre = (collider.nearby.lo_m + collider.nearby.hi_m) / 2
        if not (collider.outside or collider.collided or self._nearby_clips >= NEARBY_EVERY_CLIPS
                or float(np.abs(camera_m - centre).max()) > NEARBY_RECENTRE_M):
            return
        self._nearby_fetch = asyncio.ensure_future(self._fetch_nearby(collider, np.asarray(camera_m, np.float64)))

    async def _fetch_nearby(self, collider: NearbyCollider, camera_m: np.ndarray) -> None:
        try:
            nearby = await asyncio.wait_for(self.actor.nearby_points.remote(camera_m, NEARBY_HALF_M),
                                            timeout=CALL_TIMEOUT_S)
            if collider is self._nearby:  # still this session's
                collider.replace(nearby)
                self._nearby_clips = 0
        except Exception as exc:  # noqa: BLE001 -- the copy it has stays; the next clip asks again
            log.debug("memory copy for collision not renewed", world_id=self.world_id, error=type(exc).__name__)
        finally:
            self._nearby_fetch = None

    async def _clip_broke(self, exc: BaseException | None, what: str) -> BaseException:
        """The error for a clip that failed other than with the actor's own error or its reported death (a graph
        that broke, a stream that failed or ended early): UNAVAILABLE either way, and "its actor died" (the
        actor marked dead, its graph torn down) when a plain call finds it dead: a killed actor's graph usually
        reports a closed channel, and an actor lost with its node a lost stream item, not the death."""
        try:
            await asyncio.wait_for(self.actor.pid.remote(), timeout=CALL_TIMEOUT_S)
        except RayActorError as dead:
            return self._failed(dead)
        except Exception:  # noqa: BLE001 -- no answer: the actor is treated as gone
            self.dead = True
            self._close_graph()
            return UnavailableError(f"world {self.world_id!r}: its actor does not answer (it may have been lost with "
                                    "its node); the next call restarts it")
        error = "" if exc is None else f" ({type(exc).__name__})"
        log.warning("play clip broke", world_id=self.world_id, what=what,
                    error="" if exc is None else f"{type(exc).__name__}: {str(exc)[:200]}")
        return UnavailableError(f"world {self.world_id!r}: {what}{error}; start the session again")

    async def generate(self, engine: _RemoteEngine, c2w: np.ndarray, prompt: str | None, seed: int,
                       sink: Callable[[int, Any], bool]) -> None:
        if self.dead:
            raise UnavailableError(f"world {self.world_id!r}: its actor died; the next call restarts it")
        gen = self.actor.generate.options(_generator_backpressure_num_objects=GENERATE_BACKPRESSURE).remote(
            self.controller, engine.key, engine.config, c2w, prompt, seed)
        done = False
        try:
            async for ref in gen:
                _, n, frame = await ref
                # the servicer's sink blocks while its client is behind: off the event loop
                if not await asyncio.to_thread(sink, n, frame):
                    break
            else:
                done = True
        except (RayTaskError, RayActorError) as exc:
            raise self._failed(exc) from None
        finally:
            if not done:
                ray.cancel(gen)
        await self.refresh()

    def collider(self, engine: _RemoteEngine) -> NearbyCollider:
        """The session's collider: the memory lives in the actor's process, so moves are swept against a copy of
        its points around the camera, taken at the claim and renewed after clips (``_nearby_request``). Invented
        points block at the engine's free radius, as ``Engine.collider``. A move before a renewed copy arrives
        collides with the copy it has (at most ``NEARBY_EVERY_CLIPS`` clips old)."""
        if self._nearby_start is None:
            raise PreconditionError(f"world {self.world_id!r}: a collider needs the lease (claim first)")
        self._nearby = NearbyCollider(self._nearby_start,
                                      CollisionConfig(invented_clearance_m=engine.config.free_radius_m))
        self._nearby_clips = 0
        return self._nearby

    async def render(self, K, c2w: np.ndarray):
        return await self._call("render", K, c2w, retry=True)

    async def edit(self, op) -> int:
        n = await self._call("edit", op)
        await self.refresh()
        return n

    async def export(self, fmt: str) -> bytes:
        return await self._call("export", fmt, retry=True)

    async def save(self) -> int:
        size = await self._call("save")
        await self.refresh()
        return size

    async def save_if_changed(self) -> int:
        size = await self._call("save_if_changed")
        await self.refresh()
        return size

    async def unload(self) -> int:
        size = await self._call("unload")
        await asyncio.to_thread(close_play_graphs, [self.world_id])  # (the actor has no holder: none runs now)
        ray.kill(self.actor)
        self.dead = True
        return size

    async def delete(self) -> None:
        await self._call("delete")
        self.deleted = self.dead = True
        await asyncio.to_thread(close_play_graphs, [self.world_id])
        ray.kill(self.actor)

    def close(self) -> None:
        """The front door stops: no more renewals; the session's graph, if any, closed (``RayWorldStore.close``
        waits for the teardown)."""
        self.stop_renewing()
        self._close_graph()


_ACTOR = None  # ray.remote(WorldActor), made once


class RayWorldStore(WorldIds):
    """``WorldStore``'s methods over world actors. The data dir (shared by every node) says which worlds exist;
    ``load_all`` finds or creates the actor of each; a world created by another front door is found on its next
    ``get`` (and by the poller, for ListWorlds)."""

    def __init__(self, data_dir: Path, max_worlds: int, options: ClusterOptions, generator: str,
                 generator_kwargs: dict | None = None, warm_kernels: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.warm_kernels = warm_kernels  # ServerConfig.warm_kernels: each world actor loads its kernels at start
        self.worlds_dir = self.data_dir / "worlds"
        self.worlds_dir.mkdir(parents=True, exist_ok=True)
        self.max_worlds = max_worlds
        self.options = options
        self.generator = generator
        self.generator_kwargs = dict(generator_kwargs or {})
        self._hosts: dict[str, RayWorldHost] = {}
        self._reserved: set[str] = set()
        self.broken: dict[str, str] = {}
        self._poller: asyncio.Task | None = None
        self._attach_lock = threading.Lock()

    # ---- actors ----

    def _actor_class(self, world_id: str):
        global _ACTOR
        if _ACTOR is None:
            _ACTOR = ray.remote(WorldActor)
        gpus = self.options.gpus_for(self.generator)
        threads = str(max(1, math.ceil(self.options.world_cpus)))
        return _ACTOR.options(
            name=actor_name(world_id), get_if_exists=True, namespace=NAMESPACE, lifetime="detached", num_cpus=self.options.world_cpus,
            num_gpus=gpus, max_restarts=0, max_concurrency=64, scheduling_strategy="SPREAD",
            # OMP_NUM_THREADS: Ray sets it to the actor's CPUs (floor, at least 1) itself; setting it here too
            # made the actor's compiled graphs never run (Ray 2.60: their first execution timed out)
            runtime_env={"env_vars": {"NUMBA_NUM_THREADS": threads}},
        )

    def _attach(self, world_id: str) -> RayWorldHost:
        """Find or create the world's actor and wait until it answers (blocking; RESOURCE_EXHAUSTED when it
        cannot be placed within ``placement_timeout_s``)."""
        o = self.options
        actor = self._actor_class(world_id).remote(
            str(self.data_dir), world_id, self.generator, self.generator_kwargs, project_version(), o.lease_ttl_s,
            o.idle_exit_s, o.host_kind, self.warm_kernels)
        try:
            where = ray.get(actor.where.remote(), timeout=o.placement_timeout_s)
        except GetTimeoutError:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 -- best effort: the placement already failed, that error is raised
                pass
            raise limit_exceeded("cluster_resources", (
                f"world {world_id!r} could not be placed within {o.placement_timeout_s:g} s: no node has "
                f"{o.world_cpus:g} CPU and {o.gpus_for(self.generator):g} GPU free")) from None
        except RayActorError as exc:  # the constructor failed (unreadable snapshot, version): the actor is gone
            cause = getattr(exc, "cause", None) or getattr(exc, "error_msg", "")
            err = _unwrap(cause, world_id) if isinstance(cause, BaseException) else None
            if isinstance(err, (DataLossError, NotFoundError, ClusterCheckError)):
                raise err from None
            raise UnavailableError(f"world {world_id!r}: its actor could not start: {str(cause)[-300:]}") from None
        host = self._hosts.get(world_id)
        if host is not None and not host.deleted:  # the same proxy object lives on (callers may hold it)
            host.reset(actor, where)
        else:
            host = self._hosts[world_id] = RayWorldHost(self, world_id, actor, where["view"], where)
        log.info("world actor attached", world_id=world_id, node=host.node_id[:12], pid=host.actor_pid,
                 epoch=host.epoch)
        return host

    def _ids_on_disk(self) -> list[str]:
        return sorted({p.name for p in self.worlds_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
                      | {p.stem for p in self.worlds_dir.glob("*.msgpack") if not p.name.startswith(".")})

    def load_all(self) -> list[str]:
        connect(self.options, self.data_dir)
        ids = self._ids_on_disk()
        for world_id in ids:
            try:
                self._attach(world_id)
            except DataLossError as exc:
                self.broken[world_id] = str(exc)[:200]
                log.error("world unreadable; id kept", world_id=world_id)
            except NotFoundError:
                pass  # a creation cut off before its first commit
        log.info("worlds attached", count=len(self._hosts), unreadable=len(self.broken))
        return sorted(self._hosts)

    def _ensure_poller(self) -> None:
        if self._poller is None:
            try:
                self._poller = asyncio.get_running_loop().create_task(self._poll())
            except RuntimeError:
                pass  # called off the event loop (e.g. load_all on a thread): a later call on the loop starts it

    async def _poll(self) -> None:
        """Refresh every world's cached view, stats and node; pick up worlds other front doors created."""
        while True:
            await asyncio.sleep(self.options.stats_interval_s)
            hosts = [h for h in self._hosts.values() if not h.dead]
            await asyncio.gather(*(h.refresh() for h in hosts), return_exceptions=True)
            try:
                new = [i for i in await asyncio.to_thread(self._ids_on_disk)
                       if i not in self._hosts and i not in self._reserved and i not in self.broken]
                gone = [i for i in self._hosts if not (self.worlds_dir / i).is_dir()
                        and not (self.worlds_dir / f"{i}.msgpack").exists()]
            except OSError:
                continue
            for world_id in gone:  # deleted through another front door
                self._hosts.pop(world_id, None)
            for world_id in new:
                try:
                    await asyncio.to_thread(self._attach_locked, world_id)
                except Exception as exc:  # noqa: BLE001 -- a half-created world; the next poll tries again
                    log.debug("world not attached yet", world_id=world_id, error=type(exc).__name__)

    def _attach_locked(self, world_id: str) -> RayWorldHost:
        with self._attach_lock:
            host = self._hosts.get(world_id)
            if host is not None and not host.dead:
                return host
            return self._attach(world_id)

    def controlled_count(self) -> int:
        return sum(1 for h in list(self._hosts.values()) if h.view().controlled)

    # ---- CRUD (as WorldStore) ----

    def _taken(self, world_id: str) -> bool:
        # another front door may have created it since: the shared data dir says
        return world_id in self._hosts or (self.worlds_dir / world_id).exists() \
            or (self.worlds_dir / f"{world_id}.msgpack").exists()

    def _world_count(self) -> int:
        return len(self._ids_on_disk())

    async def add(self, world: World) -> RayWorldHost:
        """Write the new world's first snapshot (all-or-nothing, as in-process), then start its actor from it."""
        host = WorldHost(world, self.worlds_dir / world.world_id)
        try:
            await host.save()
        except BaseException:
            host.deleted = True
            host.log.close()
            shutil.rmtree(host.path, ignore_errors=True)
            host.executor.shutdown(wait=False)
            host.saver.shutdown(wait=False)
            self._reserved.discard(world.world_id)
            raise
        await host.unload()
        try:
            return await asyncio.to_thread(self._attach_locked, world.world_id)
        except BaseException:  # not placed (RESOURCE_EXHAUSTED) or not started: the creation leaves nothing
            await asyncio.to_thread(shutil.rmtree, host.path, True)
            (self.data_dir / ".cluster" / f"epoch.{world.world_id}").unlink(missing_ok=True)
            raise
        finally:
            self._reserved.discard(world.world_id)

    def get(self, world_id: str, field: str = "world_id") -> RayWorldHost:
        """The world's proxy; a dead actor (or one another front door created) is (re)attached here: a blocking
        wait of up to ``placement_timeout_s`` while the actor loads the world from its last snapshot."""
        check_id(world_id, field)
        self._ensure_poller()
        host = self._hosts.get(world_id)
        if host is not None and not host.dead:
            return host
        if world_id in self.broken:
            raise DataLossError(f"world {world_id!r}: its snapshot on disk is unreadable "
                                f"({self.broken[world_id]}); DeleteWorld removes it")
        if world_id in self._reserved or not ((self.worlds_dir / world_id).is_dir()
                                              or (self.worlds_dir / f"{world_id}.msgpack").exists()):
            self._hosts.pop(world_id, None)
            raise NotFoundError(f"world {world_id!r} not found")
        if host is not None:
            log.info("restarting world actor from its last snapshot", world_id=world_id)
        return self._attach_locked(world_id)

    async def get_async(self, world_id: str, field: str = "world_id") -> RayWorldHost:
        """``get`` for the servicer's event loop: a live proxy at once; (re)attaching an actor (a blocking wait of
        up to ``placement_timeout_s``) on a worker thread, never on the loop."""
        check_id(world_id, field)
        self._ensure_poller()
        host = self._hosts.get(world_id)
        if host is not None and not host.dead:
            return host
        return await asyncio.to_thread(self.get, world_id, field)

    def hosts(self) -> list[RayWorldHost]:
        self._ensure_poller()
        return [self._hosts[k] for k in sorted(self._hosts)]

    entries = hosts

    async def delete(self, world_id: str) -> None:
        check_id(world_id, "world_id")
        if world_id in self.broken and world_id not in self._hosts:
            await asyncio.to_thread(shutil.rmtree, self.worlds_dir / world_id, True)
            await asyncio.to_thread((self.worlds_dir / f"{world_id}.msgpack").unlink, True)
            del self.broken[world_id]
            return
        host = await asyncio.to_thread(self.get, world_id)
        await host.delete()
        self._hosts.pop(world_id, None)

    async def unload(self, world_id: str) -> None:
        host = await asyncio.to_thread(self.get, world_id)
        await host.unload()
        self._hosts.pop(world_id, None)

    async def save_all(self) -> int:
        """At a front door's shutdown: every world saved (the actors keep running for other front doors)."""
        return await save_hosts([h for h in self._hosts.values() if not h.dead])

    def close(self) -> None:
        """Blocking (the server calls it on a worker thread): stop the poller, close every session's graph and wait
        for their teardown (``close_play_graphs``; graphs closed earlier whose teardown has not run yet included),
        so that nothing of this front door is still talking to Ray when its caller kills actors or shuts Ray
        down."""
        if self._poller is not None:
            self._poller.get_loop().call_soon_threadsafe(self._poller.cancel)
        for host in list(self._hosts.values()):
            host.close()
        close_play_graphs(owner=self)


def kill_world_actors(world_ids: list[str] | None = None) -> int:
    """Kill the named world actors (all, or ``world_ids``) in the namespace (``spatia cluster`` cleanup and
    tests: detached actors outlive their front doors). Returns how many were killed."""
    close_play_graphs(world_ids)  # this process's graphs to them torn down first, on their threads
    names = ray.util.list_named_actors(all_namespaces=True)
    killed = 0
    for entry in names:
        if entry["namespace"] != NAMESPACE or not entry["name"].startswith("world:"):
            continue
        if world_ids is not None and entry["name"][len("world:"):] not in world_ids:
            continue
        try:
            ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE))
            killed += 1
        except ValueError:
            pass  # the actor ended between the listing and the lookup
    return killed
