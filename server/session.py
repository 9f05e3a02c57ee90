"""A Play session: actions in, frames out (docs/DESIGN.md "One Play step").

Three parts, all bounded:

- the *reader* task reads ``PlayRequest``s into ``actions`` (an ``asyncio.Queue`` of ``Limits.action_queue``);
  when it is full the reader stops reading, so HTTP/2 flow control slows the client down;
- the *driver* task integrates actions into poses at the session's fps (``ActionIntegrator``) and, whenever the
  world's worker thread is free and poses are pending, runs one clip of up to a clip's worth of them. Pending
  poses are capped at one clip's worth (and ``Limits.max_pending_frames``); beyond, the oldest are dropped
  (latest wins: a slow generator never builds up lag). Idle actions (no movement, no look) add no poses: with
  no movement the server
  generates nothing and sends a ``Heartbeat`` every ``heartbeat_interval_s``;
- the *outbox* holds responses for the client; it keeps at most ``Limits.frame_queue`` frames and drops the
  oldest frame when a new one arrives to a full queue (latest wins; ``SessionStats.frames_dropped`` counts them).

Clips are short (default 4 / 6 / 2 frames) so the time from an action to the first frame applying it stays low;
frames go out as the generator yields them, before the clip's memory update runs (``Engine.generate_clip``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import structlog

from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.proto.spatia.v1.convert import encode_image, pose_to_proto
from spatia.server.builders import check_pixels, intrinsics_to_proto
from spatia.server.config import ServerConfig
from spatia.server.recording import Recorder
from spatia.server.store import WorldEntry
from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
from spatia.world.engine import EngineConfig
from spatia.world.errors import InvalidInputError

log = structlog.get_logger("spatia.server.play")

_END = object()  # the client half-closed its stream


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

    @classmethod
    def from_proto(cls, start: pb.PlayStart, config: ServerConfig) -> "PlayOptions":
        limits = config.limits
        if not start.world_id:
            raise InvalidInputError("PlayStart.world_id is required")
        width = height = None
        if start.HasField("resolution"):
            width, height = int(start.resolution.width), int(start.resolution.height)
            check_pixels(width, height, limits, "PlayStart.resolution")
        fps = start.fps or 16.0
        if not (math.isfinite(fps) and 0 < fps <= 240):
            raise InvalidInputError(f"PlayStart.fps must be in (0, 240], got {start.fps}")
        quality = start.jpeg_quality or 85
        if not 1 <= quality <= 100:
            raise InvalidInputError(f"PlayStart.jpeg_quality must be in 1..100, got {start.jpeg_quality}")
        if start.encoding not in pb.FrameEncoding.values():
            raise InvalidInputError(f"PlayStart.encoding {start.encoding} is not a FrameEncoding")
        c = start.clip
        clip = ClipConfig(c.first_clip_frames, c.clip_frames, c.preceding_frames) if start.HasField("clip") \
            else ClipConfig(4, 6, 2)
        hb = start.heartbeat_interval_s or 1.0
        if not (math.isfinite(hb) and 0.01 <= hb <= 3600):
            raise InvalidInputError(f"PlayStart.heartbeat_interval_s must be in [0.01, 3600], got {hb}")
        return cls(start.world_id, width, height, fps, start.prompt or None, start.encoding or pb.FRAME_ENCODING_JPEG,
                   quality, clip, not start.no_recording, int(start.seed), hb, int(start.max_pending_frames))


class Outbox:
    """Responses waiting to be written to one client; at most ``frame_capacity`` frames (oldest dropped)."""

    def __init__(self, frame_capacity: int) -> None:
        self._items: deque = deque()
        self._frame_capacity = frame_capacity
        self._frames = 0
        self.dropped = 0
        self._event = asyncio.Event()
        self._closed = False

    @property
    def frames_queued(self) -> int:
        return self._frames

    def put(self, item, is_frame: bool = False) -> None:
        if self._closed:
            return
        if is_frame:
            if self._frames >= self._frame_capacity:
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
        return item


def action_from_proto(a: pb.Action) -> Action:
    return Action(a.move_forward, a.move_right, a.move_up, a.yaw_rate_rad_s, a.pitch_rate_rad_s, a.yaw_delta_rad,
                  a.pitch_delta_rad, a.sprint, a.dt_s, int(a.seq)).validate()


def integrator_at(origin_c2w: np.ndarray, current_c2w: np.ndarray, config: ControlConfig) -> ActionIntegrator:
    """An integrator at ``current_c2w`` whose "level" is the world's first camera (walking stays horizontal),
    with yaw / pitch recovered from the relative rotation; falls back to levelling on ``current_c2w`` when that
    rotation has roll (not reachable by yaw then pitch)."""
    R = origin_c2w[:3, :3].T @ current_c2w[:3, :3]  # = R_y(yaw) @ R_x(pitch) for a pose reached by play
    yaw = math.atan2(R[0, 2], R[2, 2])
    pitch = math.asin(float(np.clip(-R[1, 2], -1.0, 1.0)))
    limit = math.radians(config.max_pitch_deg)
    integ = ActionIntegrator(origin_c2w, config, yaw_rad=yaw, pitch_rad=min(max(pitch, -limit), limit),
                             position=current_c2w[:3, 3].copy())
    if not np.allclose(integ.c2w, current_c2w, atol=1e-6):
        integ = ActionIntegrator(current_c2w, config)
    return integ


class PlaySession:
    def __init__(self, session_id: str, entry: WorldEntry, options: PlayOptions, generator, config: ServerConfig,
                 recordings_dir, start: pb.PlayStart) -> None:
        self.id = session_id
        self.entry = entry
        self.options = options
        self.config = config
        self.limits = config.limits
        self.engine = entry.engine(generator, EngineConfig(
            clip=options.clip, keyframe_stride=config.play_keyframe_stride,
            reuse_references_within=config.play_reuse_references_within))
        self.outbox = Outbox(self.limits.frame_queue)
        self.actions: asyncio.Queue = asyncio.Queue(maxsize=self.limits.action_queue)
        self.prompt = options.prompt
        self.error: BaseException | None = None
        self.poses_dropped = 0
        # At most one clip of poses waits: when generation falls behind, the next clip shows where the player is
        # now, not where they were a backlog ago (latency stays ~ one clip's generation time).
        clip_worth = max(options.clip.first_clip_frames, options.clip.new_frames_per_clip)
        self.max_pending = min(self.limits.max_pending_frames, options.max_pending_frames or clip_worth)
        self.frames_sent = 0
        self.stopping = False  # set by ``end``: no new clips once the one in flight is done
        self.last_seq = 0
        self.last_frame_index = len(entry.world.history) - 1
        world = entry.world
        K = world.intrinsics
        self.out_size = (options.width or K.width, options.height or K.height)
        resized = self.out_size != (K.width, K.height)
        self.out_intrinsics = intrinsics_to_proto(K.scaled(*self.out_size) if resized else K)
        self.integrator = integrator_at(world.origin_c2w, world.current_c2w if world.current_c2w is not None
                                        else world.origin_c2w, ControlConfig(fps=options.fps))
        self.recorder = None
        if options.record:
            rid = f"{entry.world_id}.{self.id}"
            self.recorder = Recorder(recordings_dir / f"{rid}.mcap", entry.world_id, self.id, start)
        self.log = log.bind(world_id=entry.world_id, session_id=self.id)

    @property
    def recording_id(self) -> str:
        return self.recorder.path.stem if self.recorder else ""

    # ---- reader ------------------------------------------------------------------------------------------

    async def read(self, requests) -> None:
        try:
            async for req in requests:
                kind = req.WhichOneof("kind")
                if kind == "action":
                    action = action_from_proto(req.action)  # INVALID_ARGUMENT on NaN / out of range
                    if self.recorder:
                        self.recorder.write("/action", req.action)
                    await self.actions.put(action)
                elif kind == "prompt":
                    await self.actions.put(req.prompt.prompt)
                elif kind == "start":
                    raise InvalidInputError("PlayStart may only be the first message of a Play stream")
                else:
                    raise InvalidInputError("empty PlayRequest: set action or prompt")
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
        pending: deque[tuple[np.ndarray, int]] = deque()  # (c2w [4, 4], seq of the action that made it)
        ended = False
        last_out = time.monotonic()
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
                while not self.actions.empty():
                    ended |= self._apply(self.actions.get_nowait(), pending)
                if self.stopping:
                    pending.clear()
                if len(pending) > self.max_pending:  # latest wins
                    drop = len(pending) - self.max_pending
                    for _ in range(drop):
                        pending.popleft()
                    self.poses_dropped += drop
                if not pending:
                    if ended:
                        break
                    continue
                first = len(self.entry.world.history) <= 1
                n = self.options.clip.first_clip_frames if first else self.options.clip.new_frames_per_clip
                chunk = [pending.popleft() for _ in range(min(n, len(pending)))]
                stats = await self.entry.run(self._run_clip, chunk, self.prompt, asyncio.get_running_loop())
                last_out = time.monotonic()
                self.outbox.put(pb.PlayResponse(stats=pb.SessionStats(
                    clip_id=stats.clip_id, generate_ms=stats.generate_s * 1e3, update_ms=stats.update_s * 1e3,
                    memory_points=stats.memory_points, pending_frames=len(pending),
                    queue_depth=self.outbox.frames_queued, frames_dropped=self.outbox.dropped,
                    poses_dropped=self.poses_dropped,
                )))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.error = exc
        finally:
            self.outbox.close()

    def _apply(self, item, pending: deque) -> bool:
        """Fold one queued item into the session; True when it is the end of the client's stream."""
        if item is _END:
            return True
        if isinstance(item, str):
            self.prompt = item or None
            return False
        poses = self.integrator.step(item)
        self.last_seq = item.seq
        if not item.is_idle:  # standing still generates nothing (heartbeats only)
            pending.extend((T, item.seq) for T in poses)
        return False

    def _heartbeat(self) -> None:
        self.outbox.put(pb.PlayResponse(heartbeat=pb.Heartbeat(
            server_time_ns=time.time_ns(), last_frame_index=max(self.last_frame_index, 0),
            pose=pose_to_proto(self.integrator.c2w), last_action_seq=self.last_seq,
        )))

    def _run_clip(self, chunk, prompt, loop):
        """On the world's worker thread: generate, stream each frame as it comes, then the memory update (pulled
        by the loop's last ``next``), the save and the recording flush."""
        import cv2

        poses = np.stack([c for c, _ in chunk])
        for i, f in enumerate(self.engine.generate_clip(poses, prompt, self.options.seed)):
            rgb = f.rgb
            if (rgb.shape[1], rgb.shape[0]) != self.out_size:
                rgb = cv2.resize(rgb, self.out_size, interpolation=cv2.INTER_AREA)
            frame = pb.Frame(
                frame_index=f.frame_index, clip_id=f.clip_id, pose=pose_to_proto(f.c2w),
                intrinsics=self.out_intrinsics, last_action_seq=chunk[i][1], server_time_ns=time.time_ns(),
                encoding=self.options.encoding, width=self.out_size[0], height=self.out_size[1],
                data=encode_image(rgb, self.options.encoding, self.options.jpeg_quality),
                session_frame=self.frames_sent,
            )
            self.frames_sent += 1
            self.last_frame_index = f.frame_index
            loop.call_soon_threadsafe(self.outbox.put, pb.PlayResponse(frame=frame), True)
            if self.recorder:
                self.recorder.write("/frame", frame)
        stats = self.engine.last_stats
        self.entry.clips_generated = self.engine.clips_done
        self.entry.clips_since_save += 1
        if self.entry.save_due(self.config.save_every_clips, self.config.save_interval_s, self.config.save_max_duty):
            if self.config.save_interval_s == 0:  # strict durability asked for: on disk before the next clip
                self.entry.save()
            else:  # autosave: copied here, written by the saver thread while play goes on
                self.entry.save_in_background()
        if self.recorder:
            self.recorder.write("/stats", pb.SessionStats(clip_id=stats.clip_id, generate_ms=stats.generate_s * 1e3,
                                                          update_ms=stats.update_s * 1e3,
                                                          memory_points=stats.memory_points))
            self.recorder.flush()
        return stats

    def finish(self) -> None:
        """On the worker thread, after the last clip: close the recording and save the world."""
        if self.recorder:
            self.recorder.close()
        if self.entry.clips_since_save:
            self.entry.save()
