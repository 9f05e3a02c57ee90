"""A Play session: actions in, frames out (docs/DESIGN.md "One Play step").

Three parts, all bounded:

- the *reader* task reads ``PlayRequest``s into ``actions`` (an ``asyncio.Queue`` of ``Limits.action_queue``);
  when it is full the reader stops reading, so HTTP/2 flow control slows the client down;
- the *driver* task integrates actions into poses and, whenever the world's worker thread is free and poses are
  pending, has the world's host run one clip of them (``WorldHost.play_clip``);
- the *outbox* holds responses for the client.

Two modes:

- interactive (default): poses fall due at the session's fps of camera time. When the generator falls behind,
  the next clip skips intermediate poses (never the newest) so that the newest action's frame comes within about
  two frame times: the clip takes the newest ``m`` pending poses, ``m`` the most for which the measured per-clip
  and per-frame times keep an action's latency (the clip in flight when it came, then its own) within two frame
  times (at least 1, at most a clip's worth; ``select_poses``). ``SessionStats.poses_dropped``
  counts skipped poses, ``held_fps`` the frame rate the session holds. A frame's ``last_action_seq`` is always the
  seq of the action after which the integrator was at that frame's pose. The outbox keeps at most
  ``Limits.frame_queue`` frames and drops the oldest when a new one arrives to a full queue (latest wins);
- lock-step (``PlayStart.lockstep``, agents): every action gets exactly one frame, at the integrator's pose after
  it; nothing is skipped or dropped: the driver takes no more actions while a clip's worth of poses waits, and
  no clip starts while the outbox is full (a slow reader slows generation; HTTP/2 flow control slows the sender).
  A clip's frames reach the outbox together with its stats, after the memory update (the client waits for the
  stats anyway); with ``PlayStart.stats_in_frame`` the stats ride on the clip's last frame (one message a step).

Idle actions (no movement, no look) add no poses in interactive mode: with no movement the server generates
nothing and sends a ``Heartbeat`` every ``heartbeat_interval_s``. Clips are short (default 4 / 6 / 2 frames);
interactive frames go out as the generator yields them, before the clip's memory update runs
(``Engine.generate_clip``).

Session code knows a world only through its host's methods (server/host.py), never its implementation.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog

from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.proto.spatia.v1.convert import encode_image, pose_to_proto
from spatia.server.builders import check_pixels, intrinsics_to_proto
from spatia.server.errors import check_id, invalid
from spatia.server.config import ServerConfig
from spatia.server.recording import Recorder, RecordingCloser, downsample_memory
from spatia.server.host import WorldHost
from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
from spatia.world.engine import EngineConfig
from spatia.world.errors import InvalidInputError

log = structlog.get_logger("spatia.server.play")

_END = object()  # the client half-closed its stream

# Interactive clips that run at once in one server (``ServerConfig.play_clip_slots``, one per core by default).
# Four sessions on two cores shared them (each clip ~2x its CPU time, all finishing late together); with a slot per
# core a clip runs at a core's speed and the others wait for a slot, and a clip picks its poses once it has one (the
# newest then), so an action waits for the next clip to start and that clip alone: on average one clip's CPU time
# less than with every clip in flight at once (docs/BENCHMARKS.md, "Four sessions on two cores"). Lock-step
# sessions do not wait, nor sessions of worlds kept in other processes (``host.shares_server_cores``). The
# servicer owns the semaphore (FIFO) and hands it to each session.


def check_image_options(jpeg_quality: int, encoding: int, prefix: str) -> int:
    """A Play / Generate request's ``jpeg_quality`` (0 = 85) and ``encoding``: the quality to use, or
    INVALID_ARGUMENT naming ``prefix`` + the field."""
    quality = jpeg_quality or 85
    if not 1 <= quality <= 100:
        raise invalid(f"{prefix}jpeg_quality", f"{prefix}jpeg_quality must be in 1..100, got {jpeg_quality}")
    if encoding not in pb.FrameEncoding.values():
        raise invalid(f"{prefix}encoding", f"{prefix}encoding {encoding} is not a FrameEncoding")
    return quality


def clip_from_proto(clip: pb.ClipLengths | None, limits, prefix: str, default: ClipConfig) -> ClipConfig:
    """A request's clip lengths (None: not set -> ``default``), each at most ``max_trajectory_frames``; else
    INVALID_ARGUMENT naming ``prefix`` + ``clip``."""
    if clip is None:
        return default
    if max(clip.first_clip_frames, clip.clip_frames, clip.preceding_frames) > limits.max_trajectory_frames:
        raise invalid(f"{prefix}clip", f"{prefix}clip lengths must be <= max_trajectory_frames="
                                       f"{limits.max_trajectory_frames}")
    try:
        return ClipConfig(clip.first_clip_frames, clip.clip_frames, clip.preceding_frames)
    except InvalidInputError as exc:
        raise invalid(f"{prefix}clip", f"{prefix}clip: {exc}") from None


@dataclass(frozen=True)
class PlayOptions:
    """The validated PlayStart."""

    world_id: str
    width: int | None  # output size; None = the world's
    height: int | None
    fps: float
    prompt: str | None
    encoding: int
    jpeg_quality: int
    clip: ClipConfig
    record: bool
    seed: int
    heartbeat_interval_s: float
    max_pending_frames: int  # 0 = one clip's worth
    lockstep: bool = False
    stats_in_frame: bool = False  # lock-step only: a clip's stats on its last frame (Frame.stats), no own message

    @classmethod
    def from_proto(cls, start: pb.PlayStart, config: ServerConfig) -> "PlayOptions":
        limits = config.limits
        check_id(start.world_id, "PlayStart.world_id")
        width = height = None
        if start.HasField("resolution"):
            width, height = int(start.resolution.width), int(start.resolution.height)
            check_pixels(width, height, limits, "PlayStart.resolution")
        fps = start.fps or 16.0
        if not (math.isfinite(fps) and 0 < fps <= 240):
            raise invalid("PlayStart.fps", f"PlayStart.fps must be in (0, 240], got {start.fps}")
        quality = check_image_options(start.jpeg_quality, start.encoding, "PlayStart.")
        clip = clip_from_proto(start.clip if start.HasField("clip") else None, limits, "PlayStart.",
                               default=ClipConfig(4, 6, 2))
        hb = start.heartbeat_interval_s or 1.0
        if not (math.isfinite(hb) and 0.01 <= hb <= 3600):
            raise invalid("PlayStart.heartbeat_interval_s",
                          f"PlayStart.heartbeat_interval_s must be in [0.01, 3600], got {hb}")
        return cls(start.world_id, width, height, fps, start.prompt or None, start.encoding or pb.FRAME_ENCODING_JPEG,
                   quality, clip, not start.no_recording, int(start.seed), hb, int(start.max_pending_frames),
                   bool(start.lockstep), bool(start.lockstep and start.stats_in_frame))


class Outbox:
    """Responses waiting to be written to one client; at most ``frame_capacity`` frames (oldest dropped), or, when
    ``lossless``, never dropped (the producer waits with ``wait_room`` before it makes more)."""

    OTHER_CAPACITY = 64  # stats / heartbeats waiting; beyond, the oldest of them is dropped

    def __init__(self, frame_capacity: int, lossless: bool = False,
                 on_frame_out: Callable[[object], None] | None = None) -> None:
        self._items: deque = deque()
        self.on_frame_out = on_frame_out  # called with each frame ``get`` hands out (``PlayTrace``)
        self._frame_capacity = frame_capacity
        self.lossless = lossless
        self.max_other = self.OTHER_CAPACITY
        self.others_dropped = 0
        self._frames = 0
        self.dropped = 0
        self._event = asyncio.Event()
        self._room = asyncio.Event()
        self._closed = False

    @property
    def frames_queued(self) -> int:
        return self._frames

    def put(self, item, is_frame: bool = False) -> None:
        if self._closed:
            return
        if not is_frame and len(self._items) - self._frames >= self.max_other:
            # a client that never reads: stats and heartbeats stay bounded too (the newest carry the counters)
            for i, (_, old_is_frame) in enumerate(self._items):
                if not old_is_frame:
                    del self._items[i]
                    self.others_dropped += 1
                    break
        if is_frame:
            if self._frames >= self._frame_capacity and not self.lossless:
                for i, (_, old_is_frame) in enumerate(self._items):  # the oldest frame goes, not stats/heartbeats
                    if old_is_frame:
                        del self._items[i]
                        self._frames -= 1
                        self.dropped += 1
                        break
            self._frames += 1
        self._items.append((item, is_frame))
        self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()
        self._room.set()

    async def wait_room(self, frames: int) -> None:
        """Until ``frames`` more fit under the capacity (at least when the queue is empty) or the box is closed."""
        while not self._closed and self._frames and self._frames + frames > self._frame_capacity:
            self._room.clear()
            await self._room.wait()

    async def get(self):
        """The next response, or None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._event.clear()
            await self._event.wait()
        item, is_frame = self._items.popleft()
        if is_frame:
            self._frames -= 1
            self._room.set()
            if self.on_frame_out is not None:
                self.on_frame_out(item)
        return item


def action_from_proto(a: pb.Action) -> Action:
    return Action(a.move_forward, a.move_right, a.move_up, a.yaw_rate_rad_s, a.pitch_rate_rad_s, a.yaw_delta_rad,
                  a.pitch_delta_rad, a.sprint, a.dt_s, int(a.seq)).validate()


def session_collider(host, control: ControlConfig, engine):
    """The collider for a session's integrator (the host's: ``Engine.collider`` in-process, a copy of the memory
    around the camera on a Ray host), None when ``control.collision`` is off."""
    return host.collider(engine) if control.collision else None


def select_poses(pending: deque, n: int, overhead_s: float | None, frame_s: float | None,
                 frame_period_s: float) -> tuple[list, int]:
    """Interactive clip selection: (the poses of the next clip, how many older ones are skipped).

    ``pending`` holds (c2w, seq, collided) oldest first; ``n`` is a clip's worth. A clip of ``m`` frames takes about
    ``W = overhead_s + m * frame_s`` (measured: per-clip work such as retrieval and the memory update, then per-frame
    generation) and shows its newest pose last. An action's latency also holds the clip in flight when it arrived:
    the poses that came during one clip of ``W`` are shown by the next, the oldest of them (skipped, or the first
    of the clip) after ``W + overhead_s + frame_s``. So the worst action latency of ``m``-frame clips is
    ``2 * overhead_s + (m + 1) * frame_s``, and the clip takes the newest ``m`` poses, ``m`` (1..n) the most that
    keep it within two frame periods; when even one-frame clips cannot (overloaded), the newest pose alone: a game
    keeps latency and lowers the frame rate. (Until session 16 an overloaded session could take a longer clip
    within 1.25x a one-frame clip's latency, to buy frame rate where per-clip overhead dominates; on a loaded
    machine ``ClipCost``'s fit put keyframe updates into that overhead, chose 3-4-frame clips, and those clips'
    later frames made the four-session p95: docs/BENCHMARKS.md, session 16.) The newest pose is never skipped.
    Nothing measured yet (the session's first two clips): the newest ``n``."""
    if frame_s is None or overhead_s is None or frame_s <= 0:
        m = n
    else:
        m = max(1, min(n, int((2.0 * frame_period_s - 2.0 * overhead_s) / frame_s) - 1))
    if len(pending) <= m:
        return [pending.popleft() for _ in range(len(pending))], 0
    skipped = len(pending) - m
    for _ in range(skipped):
        pending.popleft()
    return [pending.popleft() for _ in range(m)], skipped


class ClipCost:
    """A clip's wall time as ``overhead_s + m * frame_s`` for a clip of ``m`` frames, fitted (robustly: Theil-Sen)
    to the latest ``window`` clips; what ``select_poses`` sizes clips with.

    Why a fit over clips of different lengths, not the spacing of a clip's frames: the engine renders the memory
    at *every* target pose before the clip's first frame (``Engine._prepare``: the projection, retrieval and the
    memory update share those renders) unless the generator asks for each just before its frame
    (``projection_on_demand``: the layout fill's final frames, not the legacy fill), so most of a frame's cost can
    show before the first frame, and frames then follow each other quickly. Measured on a served 640x360 room walk at load ~8 (docs/BENCHMARKS.md, "Served
    play latency"): ~20 ms between frames but ~110 ms per render; the spacing rule took the renders for per-clip
    overhead, believed a frame cost 20 ms, and always chose full clips, so a pose waited for the renders of every
    pose after it. When the window holds one clip length only, ``probe`` asks for one frame fewer once, so the
    fit has two lengths to go on. The spacing of a clip's frames stays a lower bound of ``frame_s``."""

    def __init__(self, window: int = 12) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)  # (frames, wall seconds)
        self.spacing_s: float | None = None  # EMA of the time between a clip's frames
        self.overhead_s: float | None = None
        self.frame_s: float | None = None
        self.probe = False  # the next clip should be one frame shorter (one clip length in the window only)

    def add(self, clip_s: float, frame_times: list[float], frames: int) -> None:
        if len(frame_times) >= 2:
            gap = (frame_times[-1] - frame_times[0]) / (len(frame_times) - 1)
            self.spacing_s = gap if self.spacing_s is None else 0.7 * self.spacing_s + 0.3 * gap
        self._samples.append((frames, clip_s))
        m = np.array([x for x, _ in self._samples], np.float64)
        t = np.array([y for _, y in self._samples], np.float64)
        floor = self.spacing_s or 0.0
        if np.ptp(m) > 0:
            # Theil-Sen: the median slope over pairs of clips of different lengths, then the median intercept, so
            # a few stalled clips (a fit waited for, a re-sort, a save) do not skew the estimate for 12 clips
            i, j = np.triu_indices(len(m), 1)
            diff = m[j] != m[i]
            slope = float(np.median((t[j] - t[i])[diff] / (m[j] - m[i])[diff]))
            self.frame_s = max(slope, floor, 1e-4)
            self.overhead_s = max(float(np.median(t - self.frame_s * m)), 0.0)
            self.probe = False
        else:  # one length so far: the old split (the spacing per frame, the rest per clip) until a probe
            self.frame_s = max(floor, 1e-4) if floor else max(clip_s / 2, 1e-4)
            self.overhead_s = max(float(t.mean()) - frames * self.frame_s, 0.0)
            self.probe = frames > 1 and len(self._samples) >= 2


class PlayTrace:
    """Per-frame timestamps of one interactive Play session, for finding where a served frame's latency goes
    (``ServerConfig.play_trace_dir``; off by default). Times are ``time.perf_counter`` seconds since the session
    started; every record is made on the event loop's thread (the worker's and encoder's times ride along with
    the frame), and everything is bounded: at most ``max_frames`` frames and clips are kept, and an action's
    times are dropped once a frame has applied it (or a later one).

    A frame's record: ``seq`` (the action after which its pose was integrated), ``received`` (that action read
    from the stream), ``integrated`` (its pose made), ``clip_start`` (the clip that drew it handed to the world's
    thread), ``generated`` (the generator yielded it), ``encoded`` (JPEG done), ``queued`` (in the outbox),
    ``sent`` (handed to gRPC); ``clip``, ``in_clip`` / ``clip_frames``, ``skipped`` (poses the clip skipped).
    A clip's record: ``start``, ``end`` (the world's thread done: memory update and save policy included),
    ``generate_s`` / ``update_s`` (the engine's), ``frames``, ``skipped``, ``pending`` (poses left waiting),
    ``overhead_s`` / ``frame_s`` (``ClipCost``'s estimates once this clip is counted)."""

    def __init__(self, max_frames: int = 20_000) -> None:
        self.t0 = time.perf_counter()
        self._received: dict[int, float] = {}  # seq -> time (insertion order = seq order)
        self._integrated: dict[int, float] = {}
        self.frames: deque[dict] = deque(maxlen=max_frames)
        self.clips: deque[dict] = deque(maxlen=max_frames)
        self._unsent: dict[int, dict] = {}  # session_frame -> record, until handed to gRPC (or dropped)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def received(self, seq: int) -> None:
        self._received[seq] = self.now()

    def integrated(self, seq: int) -> None:
        self._integrated[seq] = self.now()

    def frame(self, rec: dict) -> None:
        """A frame put in the outbox (``rec`` has its seq, session frame, clip and worker times)."""
        seq = rec["seq"]
        rec["received"] = self._received.get(seq)
        rec["integrated"] = self._integrated.get(seq)
        rec["queued"] = self.now()
        for table in (self._received, self._integrated):
            for old in [s for s in table if s < seq]:  # applied or skipped by now (more frames may share seq)
                del table[old]
        self.frames.append(rec)
        self._unsent[rec["session_frame"]] = rec
        while len(self._unsent) > 64:  # frames the outbox dropped are never sent
            self._unsent.pop(next(iter(self._unsent)))

    def sent(self, response) -> None:
        rec = self._unsent.pop(response.frame.session_frame, None)
        if rec is not None:
            rec["sent"] = self.now()

    def clip(self, rec: dict) -> None:
        self.clips.append(rec)

    def write(self, path) -> None:
        """The records as JSON lines: clips first (``"kind": "clip"``), then frames (``"kind": "frame"``)."""
        from pathlib import Path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            for kind, rows in (("clip", self.clips), ("frame", self.frames)):
                for row in rows:
                    fh.write(json.dumps({"kind": kind, **row}) + "\n")


class PlaySession:
    def __init__(self, session_id: str, host: WorldHost, options: PlayOptions, generator, config: ServerConfig,
                 recordings_dir, start: pb.PlayStart, closer: RecordingCloser | None = None,
                 clip_slots: asyncio.Semaphore | None = None) -> None:
        self.id = session_id
        self.clip_slots = clip_slots  # the server's interactive clip slots (None: no limit)
        self.closer = closer  # finishes the recording after the world is released (None: inline in ``finish``)
        self.host = host
        self.options = options
        self.config = config
        self.limits = config.limits
        self.lockstep = options.lockstep
        self.engine = host.open_engine(generator, EngineConfig(
            # lock-step (agents) integrates and retrieves for every frame, as the in-process engine does, so a
            # remote episode equals a local one; interactive play uses the real-time settings
            clip=options.clip, keyframe_stride=1 if options.lockstep else config.play_keyframe_stride,
            reuse_references_within=None if options.lockstep else config.play_reuse_references_within,
            reuse_references_clips=0 if options.lockstep else config.play_reuse_references_clips,
            commit_beside_next_clip=not options.lockstep and config.play_commit_beside_next_clip))
        # interactive only: a clip's per-frame timestamps (diagnostics, ``ServerConfig.play_trace_dir``)
        self.trace = PlayTrace() if config.play_trace_dir is not None and not options.lockstep else None
        self.outbox = Outbox(self.limits.frame_queue, lossless=options.lockstep,
                             on_frame_out=self.trace.sent if self.trace is not None else None)
        # interactive: frames are resized and JPEG-encoded on a thread of the session's own (in the order the
        # world's thread made them), so the world's thread goes on to the next frame, or the clip's memory update,
        # instead of encoding: cv2 releases the GIL, so the encode runs on the other core. Lock-step encodes on the
        # world's thread as before (its frames are held until the clip's end anyway). Started on first use.
        self._encoder: ThreadPoolExecutor | None = None
        self._clip_trace = (0.0, 0)  # (clip start, poses skipped) of the clip in flight, for its frames' records
        self._last_clip_frames = 0  # frames of the last clip (``ClipCost.probe`` asks for one fewer)
        self._clips_run = 0
        self._slot_held = False  # interactive: this session holds one of the server's clip slots
        self.actions: asyncio.Queue = asyncio.Queue(maxsize=self.limits.action_queue)
        self.prompt = options.prompt
        self.error: BaseException | None = None
        self.poses_dropped = 0
        clip_worth = max(options.clip.first_clip_frames, options.clip.new_frames_per_clip)
        self.max_pending = min(self.limits.max_pending_frames, options.max_pending_frames or clip_worth)
        self.frames_sent = 0
        self.cost = ClipCost()  # interactive clip sizing: measured per-clip and per-frame seconds
        self._sent_times: deque[float] = deque(maxlen=256)  # monotonic times of recent frames (held_fps)
        self.stopping = False  # set by ``end``: no new clips once the one in flight is done
        self.finished = False
        self.closing = None  # the recording's close on the closer (a concurrent.futures.Future), once handed over
        self.last_seq = 0
        view = host.view()
        self.last_frame_index = view.history_frames - 1
        K = view.intrinsics
        self.out_size = (options.width or K.width, options.height or K.height)
        resized = self.out_size != (K.width, K.height)
        self.out_intrinsics = intrinsics_to_proto(K.scaled(*self.out_size) if resized else K)
        control = ControlConfig(fps=options.fps, collision=config.play_collision)
        self.integrator = ActionIntegrator.resumed(view.origin_c2w, view.current_c2w, control, up=view.level_up,
                                                   collider=session_collider(host, control, self.engine))
        self.recorder = None
        if options.record:
            rid = f"{host.world_id}.{self.id}"
            self.recorder = Recorder(recordings_dir / f"{rid}.mcap", host.world_id, self.id, start,
                                     origin_c2w=view.origin_c2w)
            self.recorder.snapshot_memory(host.world.memory)  # the memory at the start (packed off this thread)
        self.log = log.bind(world_id=host.world_id, session_id=self.id)

    @property
    def recording_id(self) -> str:
        return self.recorder.path.stem if self.recorder else ""

    def held_fps(self, window_s: float = 2.0) -> float:
        now = time.monotonic()
        recent = [t for t in self._sent_times if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    # ---- reader ------------------------------------------------------------------------------------------

    async def read(self, requests) -> None:
        try:
            async for req in requests:
                kind = req.WhichOneof("kind")
                if kind == "action":
                    action = action_from_proto(req.action)  # INVALID_ARGUMENT on NaN / out of range
                    if self.trace is not None:
                        self.trace.received(action.seq)
                    if self.recorder:
                        self.recorder.write("/action", req.action)
                    await self.actions.put(action)
                elif kind == "prompt":
                    await self.actions.put(req.prompt.prompt)
                elif kind == "start":
                    raise invalid("PlayRequest.start", "PlayStart may only be the first message of a Play stream")
                else:
                    raise invalid("PlayRequest", "empty PlayRequest: set action or prompt")
            await self.actions.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- reported through the response stream
            self.error = exc
            self.outbox.close()

    def end(self) -> None:
        """Server shutdown: let the clip in flight finish, generate nothing more, end the stream (the handler then
        closes the recording and saves the world)."""
        self.stopping = True
        while True:
            try:
                self.actions.put_nowait(_END)
                return
            except asyncio.QueueFull:
                self.actions.get_nowait()  # unread actions are dropped: the session is ending

    # ---- driver ------------------------------------------------------------------------------------------

    async def drive(self) -> None:
        # (c2w [4, 4] world frame, seq of the action after it, whether that action's move collided)
        pending: deque[tuple[np.ndarray, int, bool]] = deque()
        ended = False
        last_out = time.monotonic()
        # (a world kept in another process, a Ray actor, runs on cores these slots do not count)
        slots = None if self.lockstep or not self.host.shares_server_cores else self.clip_slots
        try:
            while True:
                if not pending and not ended:
                    wait_s = self.options.heartbeat_interval_s - (time.monotonic() - last_out)
                    try:
                        item = await asyncio.wait_for(self.actions.get(), timeout=max(wait_s, 0.0))
                    except TimeoutError:
                        self._heartbeat()
                        last_out = time.monotonic()
                        continue
                    ended |= self._apply(item, pending)
                # lock-step takes no more actions than a clip's worth of poses (the queue then pushes back)
                while not self.actions.empty() and not (self.lockstep and len(pending) >= self.max_pending):
                    ended |= self._apply(self.actions.get_nowait(), pending)
                if slots is not None and pending and not self.stopping:
                    await slots.acquire()  # a core for this clip; what came meanwhile joins the pending poses
                    self._slot_held = True
                    while not self.actions.empty():
                        ended |= self._apply(self.actions.get_nowait(), pending)
                if self.stopping:
                    pending.clear()
                if not self.lockstep and len(pending) > self.max_pending:  # a bound, whatever the timing
                    drop = len(pending) - self.max_pending
                    for _ in range(drop):
                        pending.popleft()
                    self.poses_dropped += drop
                if not pending:
                    self._release_slot(slots)
                    if ended:
                        break
                    continue
                first = self.last_frame_index < 1
                n = self.options.clip.first_clip_frames if first else self.options.clip.new_frames_per_clip
                skipped = 0
                if self.lockstep:
                    chunk = [pending.popleft() for _ in range(min(n, len(pending)))]
                    await self.outbox.wait_room(len(chunk))
                elif self.options.max_pending_frames:  # the client chose its bound: every pose within it
                    chunk = [pending.popleft() for _ in range(min(n, len(pending)))]
                else:
                    if self.cost.probe:  # one frame fewer than last time, so the cost fit sees two lengths
                        n = max(1, min(n, self._last_clip_frames - 1))
                    chunk, skipped = select_poses(pending, n, self.cost.overhead_s, self.cost.frame_s,
                                                  1.0 / self.options.fps)
                    self.poses_dropped += skipped
                clip_start = self.trace.now() if self.trace is not None else 0.0
                self._clip_trace = (clip_start, skipped)
                self._last_clip_frames = len(chunk)
                stats, held = await self._run_clip(chunk, slots)
                if self.trace is not None:
                    self.trace.clip({"clip": stats.clip_id, "start": clip_start, "end": self.trace.now(),
                                     "generate_s": stats.generate_s, "update_s": stats.update_s,
                                     "frames": len(chunk), "skipped": skipped, "pending": len(pending),
                                     "overhead_s": self.cost.overhead_s, "frame_s": self.cost.frame_s})
                last_out = time.monotonic()
                message = pb.SessionStats(
                    clip_id=stats.clip_id, generate_ms=stats.generate_s * 1e3, update_ms=stats.update_s * 1e3,
                    memory_points=stats.memory_points, pending_frames=len(pending),
                    queue_depth=self.outbox.frames_queued + len(held), frames_dropped=self.outbox.dropped,
                    poses_dropped=self.poses_dropped, held_fps=round(self.held_fps(), 2),
                )
                inline = bool(held) and self.options.stats_in_frame
                if inline:
                    held[-1].frame.stats.CopyFrom(message)
                for response in held:  # lock-step: the clip's frames, then (or with) its stats
                    self.outbox.put(response, True)
                if not inline:
                    self.outbox.put(pb.PlayResponse(stats=message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.error = exc
        finally:
            self._release_slot(slots)
            self.outbox.close()

    def _release_slot(self, slots: asyncio.Semaphore | None) -> None:
        if slots is not None and self._slot_held:
            self._slot_held = False
            slots.release()

    def _apply(self, item, pending: deque) -> bool:
        """Fold one queued item into the session; True when it is the end of the client's stream."""
        if item is _END:
            return True
        if isinstance(item, str):
            self.prompt = item or None
            return False
        poses = self.integrator.step(item)
        self.last_seq = item.seq
        if self.trace is not None:
            self.trace.integrated(item.seq)
        if self.lockstep:  # exactly one frame per action, at the pose after it
            pending.append((self.integrator.c2w, item.seq, self.integrator.collided))
        elif not item.is_idle:  # standing still generates nothing (heartbeats only)
            pending.extend((T, item.seq, self.integrator.collided) for T in poses)
        return False

    def _heartbeat(self) -> None:
        self.outbox.put(pb.PlayResponse(heartbeat=pb.Heartbeat(
            server_time_ns=time.time_ns(), last_frame_index=max(self.last_frame_index, 0),
            pose=pose_to_proto(self.integrator.c2w), last_action_seq=self.last_seq,
            collided=self.integrator.collided,
        )))

    async def _run_clip(self, chunk, slots: asyncio.Semaphore | None = None):
        """One clip on the world's host: each frame, as it is generated, resized, encoded and recorded (on the
        session's encoder thread when interactive, on the worker when lock-step) and handed to the outbox
        (interactive) or held for the caller (lock-step); then the memory update and the host's autosave policy.
        Returns (the engine's ``ClipStats``, the held frame responses)."""
        import cv2

        loop = asyncio.get_running_loop()
        poses = np.stack([c for c, *_ in chunk])
        t0 = time.perf_counter()
        times: list[float] = []  # perf_counter of each frame handed out
        # Lock-step: the clip's frames go to the outbox with its stats, after the clip, not one by one from the
        # worker: the client waits for the stats anyway, and each hand-off (``call_soon_threadsafe``) woke the event
        # loop in the middle of the memory update, which then waited for the GIL behind the loop's gRPC write
        # (measured 0.67 ms a step in the self-pipe ``send`` alone, at 128x96; docs/BENCHMARKS.md).
        held: list | None = [] if self.lockstep else None

        trace = self.trace

        def deliver(i: int, f, data, session_frame: int, generated: float) -> None:
            """The frame's message to the client (lock-step: held) and the recording (any thread)."""
            if data is None:
                rgb = f.rgb
                if (rgb.shape[1], rgb.shape[0]) != self.out_size:
                    rgb = cv2.resize(rgb, self.out_size, interpolation=cv2.INTER_AREA)
                data = encode_image(rgb, self.options.encoding, self.options.jpeg_quality)
            frame = pb.Frame(
                frame_index=f.frame_index, clip_id=f.clip_id, pose=pose_to_proto(f.c2w),
                intrinsics=self.out_intrinsics, last_action_seq=chunk[i][1], server_time_ns=time.time_ns(),
                encoding=self.options.encoding, width=self.out_size[0], height=self.out_size[1],
                data=data, session_frame=session_frame, collided=chunk[i][2],
            )
            if held is not None:
                held.append(pb.PlayResponse(frame=frame))  # list.append: safe from the worker thread
            elif trace is not None:
                clip_start, skipped = self._clip_trace
                rec = {"seq": chunk[i][1], "session_frame": session_frame, "clip": f.clip_id, "in_clip": i,
                       "clip_frames": len(chunk), "skipped": skipped, "clip_start": clip_start,
                       "generated": generated, "encoded": trace.now()}
                loop.call_soon_threadsafe(self._deliver_traced, pb.PlayResponse(frame=frame), rec)
            else:
                loop.call_soon_threadsafe(self.outbox.put, pb.PlayResponse(frame=frame), True)
            if self.recorder:
                self.recorder.write("/frame", frame)

        encodes: list = []  # interactive: the clip's frames on the encoder thread (concurrent.futures.Future)

        def sink(i: int, f) -> None:
            generated = trace.now() if trace is not None else 0.0
            data = getattr(f, "data", None)  # a host in another process sends the frame encoded (frame_format)
            session_frame = self.frames_sent
            self.frames_sent += 1
            self.last_frame_index = f.frame_index
            self._sent_times.append(time.monotonic())
            times.append(time.perf_counter())
            if held is None and data is None:
                if self._encoder is None:
                    self._encoder = ThreadPoolExecutor(1, thread_name_prefix=f"play-encode-{self.id}")
                encodes.append(self._encoder.submit(deliver, i, f, None, session_frame, generated))
            else:
                deliver(i, f, data, session_frame, generated)

        c = self.config
        try:
            stats = await self.host.play_clip(self.engine, poses, self.prompt, self.options.seed, sink,
                                              autosave=(c.save_every_clips, c.save_interval_s, c.save_max_duty),
                                              frame_format=(self.out_size, self.options.encoding,
                                                            self.options.jpeg_quality))
        except BaseException:  # frames made before a failure still reach the client (lossless), then the error
            for response in held or ():
                self.outbox.put(response, True)
            raise
        finally:
            self._release_slot(slots)  # the world's work is done (its frames may still be encoding)
        for job in encodes:  # the clip's frames are out (and recorded) before its stats
            await asyncio.wrap_future(job)
        if self.recorder:  # one chunk per clip: a crash loses at most the clip in flight
            await asyncio.to_thread(self._record_stats, stats)
        if self._clips_run:  # interactive clip sizing; not from the session's first clip (its first retrieval,
            # cold caches, a new world's image-conditioned clip: 3-5x a later clip's time in traced runs), which
            # would stay in the fit's window for 12 clips
            self.cost.add(time.perf_counter() - t0, times, len(chunk))
        self._clips_run += 1
        return stats, held or []

    def _deliver_traced(self, response, rec: dict) -> None:
        self.outbox.put(response, True)
        self.trace.frame(rec)

    def _record_stats(self, stats) -> None:
        self.recorder.write("/stats", pb.SessionStats(clip_id=stats.clip_id, generate_ms=stats.generate_s * 1e3,
                                                      update_ms=stats.update_s * 1e3,
                                                      memory_points=stats.memory_points))
        self.recorder.flush()

    async def finish(self) -> None:
        """After the last clip: save the world (queued on its host after the clip in flight), then hand the
        recording to the closer. Both are tried; the first failure is raised after both (the caller releases the
        world whatever happens).

        The end-of-session point cloud is only *copied* here (a strided <= 200k-point sample, while this session
        still holds the world); packing it, writing it and the recording's summary and footer happen on the
        server's ``RecordingCloser`` after the world is released, so ending a session does not wait for them
        (bounded: the closer takes ``max_pending`` recordings at a time, a finish beyond that waits for room)."""
        errors = []
        if self._encoder is not None:  # idle: every clip waited for its frames
            self._encoder.shutdown(wait=False)
        if self.trace is not None:
            try:
                await asyncio.to_thread(self.trace.write, self.config.play_trace_dir / f"{self.id}.jsonl")
            except OSError as exc:  # diagnostics only: the session still ends cleanly
                self.log.warning("play trace not written", error=str(exc))
        try:
            await self.host.save_if_changed()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        if self.recorder:
            try:
                cloud = None
                if self.frames_sent and self.recorder.foxglove:  # the memory at the end
                    cloud = await asyncio.to_thread(downsample_memory, self.host.world.memory)
                if self.closer is not None:
                    self.closing = await asyncio.to_thread(self.closer.submit, self.recorder, cloud)
                else:
                    if cloud is not None:
                        await asyncio.to_thread(self.recorder.write_memory_now, *cloud)
                    await asyncio.to_thread(self.recorder.close)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        self.finished = True
        if errors:
            raise errors[0]
