"""Python clients of the world service: ``WorldClient`` (blocking) and ``AsyncWorldClient`` (asyncio).

Every RPC of ``spatia.v1.WorldService``; frames come back decoded to numpy (``DecodedFrame.rgb`` uint8
[H, W, 3], ``c2w`` [4, 4] float64 world frame); every failure raises ``WorldServiceError`` carrying the gRPC
status code and message. ``play()`` opens a session object: ``send`` actions, iterate frames, ``close``.

    with WorldClient("127.0.0.1:50051") as c:
        info = c.create_scene("room", seed=0, width=64, height=48)
        with c.play(info.world_id) as s:
            s.send(move_forward=1.0, dt_s=0.25)
            frame = s.next_frame(timeout_s=10)
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.proto.spatia.v1 import world_pb2_grpc as pb_grpc
from spatia.proto.spatia.v1.convert import decode_frame, decode_png, pose_array, pose_to_proto, trajectory_to_proto

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class WorldServiceError(Exception):
    """An RPC failed: ``code`` is the ``grpc.StatusCode``, ``message`` the server's explanation.

    The AIP-193 details the server attaches (``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer)
    are decoded: ``reason`` / ``domain`` / ``metadata`` from its ``ErrorInfo`` (e.g. reason ``LIMIT_EXCEEDED``
    with ``metadata["limit"] == "max_sessions"``, ``DISK_FULL``, ``INTERNAL`` with ``metadata["error_id"]``),
    ``field_violations`` = [(field, description)] from its ``BadRequest``; ``status`` is the whole message
    (None when the server sent no details)."""

    def __init__(self, code: grpc.StatusCode, message: str, status=None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.reason = ""
        self.domain = ""
        self.metadata: dict[str, str] = {}
        self.field_violations: list[tuple[str, str]] = []
        if status is not None:
            from google.rpc import error_details_pb2

            for any_msg in status.details:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                if any_msg.Is(info.DESCRIPTOR) and any_msg.Unpack(info):
                    self.reason, self.domain, self.metadata = info.reason, info.domain, dict(info.metadata)
                elif any_msg.Is(bad.DESCRIPTOR) and any_msg.Unpack(bad):
                    self.field_violations += [(v.field, v.description) for v in bad.field_violations]

    @property
    def error_id(self) -> str:
        """For INTERNAL: the id under which the server logged the error ("" otherwise)."""
        return self.metadata.get("error_id", "")


def _status_details(exc) -> object | None:
    """The ``google.rpc.Status`` from the call's trailers, or None."""
    trailing = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            from google.rpc import status_pb2

            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # noqa: BLE001 -- a malformed trailer: the code and message still stand
                return None
            return status
    return None


def _translate(exc: grpc.RpcError) -> WorldServiceError:
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    return WorldServiceError(code, details or "", _status_details(exc))


@dataclass
class DecodedFrame:
    frame_index: int  # index in the world's history
    clip_id: int
    c2w: np.ndarray  # [4, 4] float64, the commanded pose, world frame
    rgb: np.ndarray  # [H, W, 3] uint8
    last_action_seq: int  # Play: seq of the last action applied
    server_time_ns: int
    received_ns: int  # this client's clock (time.time_ns) when decoded
    session_frame: int
    collided: bool  # Play: the move of action last_action_seq was stopped or slid by a surface
    raw: pb.Frame  # the message itself (intrinsics, encoding, bytes)


@dataclass
class Rendered:
    rgb: np.ndarray  # [H, W, 3] uint8
    depth_m: np.ndarray  # [H, W] float32 z-depth, metres, 0 = no point
    valid: np.ndarray  # [H, W] bool, True where a memory point was rendered


def decode(frame: pb.Frame) -> DecodedFrame:
    return DecodedFrame(int(frame.frame_index), int(frame.clip_id), pose_array(frame.pose), decode_frame(frame),
                        int(frame.last_action_seq), int(frame.server_time_ns), time.time_ns(),
                        int(frame.session_frame), bool(frame.collided), frame)


def _rendered(r: pb.RenderResponse) -> Rendered:
    h, w = r.intrinsics.height, r.intrinsics.width
    depth = np.frombuffer(r.depth_m, dtype="<f4").reshape(h, w).astype(np.float32)
    return Rendered(decode_png(r.rgb_png), depth, decode_png(r.valid_png) > 0)


def action_message(seq: int, **axes) -> pb.Action:
    """Action message from keyword axes (names of ``pb.Action``); stamps ``client_time_ns``."""
    return pb.Action(seq=seq, client_time_ns=time.time_ns(), **axes)


def scene_request(name: str, seed: int, width: int, height: int, fov_deg: float = 0.0, world_id: str = "",
                  prompt: str = "") -> pb.CreateWorldRequest:
    return pb.CreateWorldRequest(world_id=world_id, prompt=prompt, scene=pb.SceneSource(
        name=name, seed=seed, resolution=pb.Resolution(width=width, height=height), fov_deg=fov_deg))


def play_start(world_id: str, *, width: int | None = None, height: int | None = None, fps: float = 0.0,
               prompt: str = "",
               encoding: int = pb.FRAME_ENCODING_JPEG, jpeg_quality: int = 0, clip: tuple[int, int, int] | None = None,
               record: bool = True, seed: int = 0, heartbeat_interval_s: float = 0.0,
               max_pending_frames: int = 0, lockstep: bool = False) -> pb.PlayStart:
    start = pb.PlayStart(world_id=world_id, fps=fps, prompt=prompt, encoding=encoding, jpeg_quality=jpeg_quality,
                         no_recording=not record, seed=seed, heartbeat_interval_s=heartbeat_interval_s,
                         max_pending_frames=max_pending_frames, lockstep=lockstep)
    if width is not None or height is not None:  # unset = the world's size; set must be >= 1x1
        start.resolution.CopyFrom(pb.Resolution(width=width or 0, height=height or 0))
    if clip is not None:
        start.clip.CopyFrom(pb.ClipLengths(first_clip_frames=clip[0], clip_frames=clip[1], preceding_frames=clip[2]))
    return start


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),  # the server permits pings every 30 s
        ("grpc.keepalive_timeout_ms", 20_000),
    ]


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _wrap(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    return wrapper


def _wrap_iter(it):
    try:
        yield from it
    except grpc.RpcError as exc:
        raise _translate(exc) from None


# ---------------------------------------------------------------------------------------------------------------
# Blocking client
# ---------------------------------------------------------------------------------------------------------------


class WorldClient:
    def __init__(self, target: str, *, token: str | None = None, root_certificates: bytes | None = None,
                 timeout_s: float = 60.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 server_name: str | None = None) -> None:
        options = _channel_options(max_message_bytes)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_certificates is not None:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb_grpc.WorldServiceStub(self.channel)
        self.metadata = _metadata(token)
        self.timeout_s = timeout_s  # unary calls; streams have no deadline (a session lasts as long as it lasts)

    def __enter__(self) -> "WorldClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _unary(self, method, request):
        return method(request, timeout=self.timeout_s, metadata=self.metadata)

    # ---- worlds ----
    @_wrap
    def create_world(self, request: pb.CreateWorldRequest) -> pb.WorldInfo:
        return self._unary(self.stub.CreateWorld, request)

    def create_scene(self, name: str = "room", seed: int = 0, width: int = 640, height: int = 360,
                     **kw) -> pb.WorldInfo:
        return self.create_world(scene_request(name, seed, width, height, **kw))

    @_wrap
    def get_world(self, world_id: str) -> pb.WorldInfo:
        return self._unary(self.stub.GetWorld, pb.GetWorldRequest(world_id=world_id))

    @_wrap
    def list_worlds(self, page_size: int = 0) -> list[pb.WorldInfo]:
        """Every world, following ``next_page_token`` (``page_size`` per request; 0 = the server's default)."""
        out, token = [], ""
        while True:
            resp = self._unary(self.stub.ListWorlds, pb.ListWorldsRequest(page_size=page_size, page_token=token))
            out += resp.worlds
            token = resp.next_page_token
            if not token:
                return out

    @_wrap
    def delete_world(self, world_id: str) -> None:
        self._unary(self.stub.DeleteWorld, pb.DeleteWorldRequest(world_id=world_id))

    # ---- memory ----
    @_wrap
    def render(self, world_id: str, c2w: np.ndarray, width: int = 0, height: int = 0) -> Rendered:
        req = pb.RenderRequest(world_id=world_id, pose=pose_to_proto(c2w))
        if width or height:
            req.resolution.CopyFrom(pb.Resolution(width=width, height=height))
        return _rendered(self._unary(self.stub.Render, req))

    @_wrap
    def edit(self, request: pb.EditRequest) -> pb.EditResponse:
        return self._unary(self.stub.Edit, request)

    # ---- generation ----
    def generate(self, world_id: str, c2w: np.ndarray, *, prompt: str = "", seed: int = 0,
                 encoding: int = pb.FRAME_ENCODING_PNG,
                 clip: tuple[int, int, int] | None = None) -> Iterator[DecodedFrame]:
        """Frames for the trajectory ``c2w`` [N, 4, 4] (world frame), in order."""
        req = pb.GenerateRequest(world_id=world_id, trajectory=trajectory_to_proto(c2w), prompt=prompt, seed=seed,
                                 encoding=encoding)
        if clip is not None:
            req.clip.CopyFrom(pb.ClipLengths(first_clip_frames=clip[0], clip_frames=clip[1], preceding_frames=clip[2]))
        call = self.stub.Generate(req, metadata=self.metadata)
        try:
            for f in _wrap_iter(call):
                yield decode(f)
        finally:
            call.cancel()  # closing the iterator early ends the call (no-op when it completed)

    def play(self, world_id: str, **start) -> "PlaySession":
        """Start a Play session (keywords: see ``play_start``); raises when the server refuses it."""
        return PlaySession(self, play_start(world_id, **start))

    # ---- export / import ----
    @_wrap
    def export_world(self, world_id: str, fmt: int = pb.EXPORT_FORMAT_SNAPSHOT) -> bytes:
        chunks = self.stub.ExportWorld(pb.ExportWorldRequest(world_id=world_id, format=fmt), metadata=self.metadata)
        return b"".join(c.data for c in chunks)

    @_wrap
    def import_world(self, data: bytes, fmt: int = pb.EXPORT_FORMAT_SNAPSHOT, *, world_id: str = "",
                     intrinsics: pb.CameraIntrinsics | None = None, chunk_bytes: int = 1 << 20) -> pb.WorldInfo:
        def requests():
            yield pb.ImportWorldRequest(header=pb.ImportHeader(world_id=world_id, format=fmt, intrinsics=intrinsics))
            for off in range(0, len(data), chunk_bytes):
                yield pb.ImportWorldRequest(chunk=pb.DataChunk(data=data[off:off + chunk_bytes], offset=off,
                                                               total_bytes=len(data)))

        return self.stub.ImportWorld(requests(), timeout=self.timeout_s, metadata=self.metadata)

    # ---- recordings ----
    @_wrap
    def list_recordings(self, world_id: str = "", page_size: int = 0) -> list[pb.RecordingInfo]:
        """Every recording (of ``world_id`` when given), following ``next_page_token``."""
        out, token = [], ""
        while True:
            resp = self._unary(self.stub.ListRecordings, pb.ListRecordingsRequest(
                world_id=world_id, page_size=page_size, page_token=token))
            out += resp.recordings
            token = resp.next_page_token
            if not token:
                return out

    def replay(self, recording_id: str, start_frame: int = 0, speed: float = 0.0) -> Iterator[DecodedFrame]:
        req = pb.ReplayRequest(recording_id=recording_id, start_frame=start_frame, speed=speed)
        call = self.stub.Replay(req, metadata=self.metadata)
        try:
            for f in _wrap_iter(call):
                yield decode(f)
        finally:
            call.cancel()

    @_wrap
    def health(self, service: str = "") -> int:
        """The health status (grpc.health.v1 ServingStatus value: 1 = SERVING, 2 = NOT_SERVING)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s).status


_CLOSE = object()


class PlaySession:
    """A blocking Play session. ``send`` never blocks on the network; frames arrive on a background thread and
    wait in a bounded queue (latest wins: beyond ``max_buffered`` the oldest frame is dropped, ``frames_dropped``)."""

    def __init__(self, client: WorldClient, start: pb.PlayStart, max_buffered: int = 64) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._requests.put(pb.PlayRequest(start=start))
        self._call = client.stub.Play(self._request_iter(), metadata=client.metadata)
        self._frames: queue.Queue = queue.Queue(maxsize=max_buffered)
        self.frames_dropped = 0
        self._lossless = start.lockstep
        self._closing = False  # close(drain=False): a lock-step reader waiting for room gives up
        self.stats: list[pb.SessionStats] = []
        self.heartbeats = 0
        self.error: WorldServiceError | None = None
        self._seq = 0
        try:
            first = next(self._call)
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        self.started: pb.PlayStarted = first.started
        self._reader = threading.Thread(target=self._read, daemon=True, name="play-reader")
        self._reader.start()

    def _request_iter(self):
        while True:
            item = self._requests.get()
            if item is _CLOSE:
                return
            yield item

    def _read(self) -> None:
        try:
            for resp in self._call:
                kind = resp.WhichOneof("kind")
                if kind == "frame":
                    if self._lossless:  # lock-step: every frame is kept; a slow reader slows the server
                        while not self._closing:
                            try:
                                self._frames.put(resp.frame, timeout=0.2)
                                break
                            except queue.Full:
                                pass
                        if self._closing:
                            return
                    else:
                        self._put_latest(resp.frame)
                elif kind == "stats":
                    self.stats.append(resp.stats)
                elif kind == "heartbeat":
                    self.heartbeats += 1
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = _translate(exc)
        finally:
            self._put_latest(None)  # end marker; never blocks, even when nobody reads

    def _put_latest(self, item) -> None:
        """Queue ``item``; when full, drop the oldest frame first (latest wins). The reader is the only producer."""
        while True:
            try:
                self._frames.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._frames.get_nowait()
                    self.frames_dropped += 1
                except queue.Empty:
                    pass

    @property
    def session_id(self) -> str:
        return self.started.session_id

    def send(self, **axes) -> int:
        """Send one action (keywords: move_forward, move_right, move_up, yaw_rate_rad_s, pitch_rate_rad_s,
        yaw_delta_rad, pitch_delta_rad, sprint, dt_s); returns its seq (1, 2, ...)."""
        self._seq += 1
        self._requests.put(pb.PlayRequest(action=action_message(self._seq, **axes)))
        return self._seq

    def set_prompt(self, prompt: str) -> None:
        self._requests.put(pb.PlayRequest(prompt=pb.PromptChange(prompt=prompt)))

    def next_frame(self, timeout_s: float | None = None) -> DecodedFrame | None:
        """The next frame; None when the session has ended (``error`` says why, if it failed)."""
        try:
            f = self._frames.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no frame within {timeout_s} s") from None
        if f is None:
            self._frames.put(None)
            if self.error is not None:
                raise self.error
            return None
        return decode(f)

    def __iter__(self) -> Iterator[DecodedFrame]:
        while (f := self.next_frame()) is not None:
            yield f

    def close(self, drain: bool = True) -> list[DecodedFrame]:
        """End the action stream; with ``drain`` wait for the frames still coming (returned), else cancel."""
        self._requests.put(_CLOSE)
        if not drain:
            self._closing = True
            self._call.cancel()
            self._reader.join(timeout=5)
            return []
        rest = list(self)
        self._reader.join(timeout=5)
        return rest

    def __enter__(self) -> "PlaySession":
        return self

    def __exit__(self, *exc) -> None:
        self.close(drain=exc[0] is None)


# ---------------------------------------------------------------------------------------------------------------
# asyncio client
# ---------------------------------------------------------------------------------------------------------------


def _awrap(fn):
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    return wrapper


class AsyncWorldClient:
    """The asyncio twin of ``WorldClient`` (create it inside the running loop)."""

    def __init__(self, target: str, *, token: str | None = None, root_certificates: bytes | None = None,
                 timeout_s: float = 60.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        options = _channel_options(max_message_bytes)
        if root_certificates is not None:
            self.channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options)
        self.stub = pb_grpc.WorldServiceStub(self.channel)
        self.metadata = _metadata(token)
        self.timeout_s = timeout_s

    async def __aenter__(self) -> "AsyncWorldClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _unary(self, method, request):
        return await method(request, timeout=self.timeout_s, metadata=self.metadata)

    @_awrap
    async def create_world(self, request: pb.CreateWorldRequest) -> pb.WorldInfo:
        return await self._unary(self.stub.CreateWorld, request)

    async def create_scene(self, name: str = "room", seed: int = 0, width: int = 640, height: int = 360,
                           **kw) -> pb.WorldInfo:
        return await self.create_world(scene_request(name, seed, width, height, **kw))

    @_awrap
    async def get_world(self, world_id: str) -> pb.WorldInfo:
        return await self._unary(self.stub.GetWorld, pb.GetWorldRequest(world_id=world_id))

    @_awrap
    async def list_worlds(self, page_size: int = 0) -> list[pb.WorldInfo]:
        out, token = [], ""
        while True:
            resp = await self._unary(self.stub.ListWorlds, pb.ListWorldsRequest(page_size=page_size, page_token=token))
            out += resp.worlds
            token = resp.next_page_token
            if not token:
                return out

    @_awrap
    async def delete_world(self, world_id: str) -> None:
        await self._unary(self.stub.DeleteWorld, pb.DeleteWorldRequest(world_id=world_id))

    @_awrap
    async def render(self, world_id: str, c2w: np.ndarray, width: int = 0, height: int = 0) -> Rendered:
        req = pb.RenderRequest(world_id=world_id, pose=pose_to_proto(c2w))
        if width or height:
            req.resolution.CopyFrom(pb.Resolution(width=width, height=height))
        return _rendered(await self._unary(self.stub.Render, req))

    @_awrap
    async def edit(self, request: pb.EditRequest) -> pb.EditResponse:
        return await self._unary(self.stub.Edit, request)

    async def generate(self, world_id: str, c2w: np.ndarray, *, prompt: str = "", seed: int = 0,
                       encoding: int = pb.FRAME_ENCODING_PNG,
                       clip: tuple[int, int, int] | None = None) -> AsyncIterator[DecodedFrame]:
        req = pb.GenerateRequest(world_id=world_id, trajectory=trajectory_to_proto(c2w), prompt=prompt, seed=seed,
                                 encoding=encoding)
        if clip is not None:
            req.clip.CopyFrom(pb.ClipLengths(first_clip_frames=clip[0], clip_frames=clip[1], preceding_frames=clip[2]))
        try:
            async for f in self.stub.Generate(req, metadata=self.metadata):
                yield decode(f)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    async def play(self, world_id: str, **start) -> "AsyncPlaySession":
        session = AsyncPlaySession(self, play_start(world_id, **start))
        await session._open()
        return session

    @_awrap
    async def list_recordings(self, world_id: str = "", page_size: int = 0) -> list[pb.RecordingInfo]:
        out, token = [], ""
        while True:
            resp = await self._unary(self.stub.ListRecordings, pb.ListRecordingsRequest(
                world_id=world_id, page_size=page_size, page_token=token))
            out += resp.recordings
            token = resp.next_page_token
            if not token:
                return out

    async def replay(self, recording_id: str, start_frame: int = 0, speed: float = 0.0) -> AsyncIterator[DecodedFrame]:
        req = pb.ReplayRequest(recording_id=recording_id, start_frame=start_frame, speed=speed)
        try:
            async for f in self.stub.Replay(req, metadata=self.metadata):
                yield decode(f)
        except grpc.RpcError as exc:
            raise _translate(exc) from None


class AsyncPlaySession:
    """An asyncio Play session: ``await send(...)``, ``async for frame in session``, ``await close()``."""

    def __init__(self, client: AsyncWorldClient, start: pb.PlayStart) -> None:
        self._call = client.stub.Play(metadata=client.metadata)
        self._start = start
        self._seq = 0
        self.stats: list[pb.SessionStats] = []
        self.heartbeats = 0
        self.started: pb.PlayStarted | None = None

    async def _open(self) -> None:
        try:
            await self._call.write(pb.PlayRequest(start=self._start))
            first = await self._call.read()
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        if first is grpc.aio.EOF:
            raise WorldServiceError(await self._call.code(), await self._call.details())
        self.started = first.started

    async def send(self, **axes) -> int:
        self._seq += 1
        try:
            await self._call.write(pb.PlayRequest(action=action_message(self._seq, **axes)))
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        return self._seq

    async def set_prompt(self, prompt: str) -> None:
        await self._call.write(pb.PlayRequest(prompt=pb.PromptChange(prompt=prompt)))

    async def next_frame(self) -> DecodedFrame | None:
        """The next frame (stats and heartbeats are collected on the way); None at the end of the stream."""
        frame = await self.next_raw_frame()
        return None if frame is None else decode(frame)

    async def next_raw_frame(self) -> pb.Frame | None:
        """The next frame as it came (image bytes not decoded: a relay such as the web app forwards or re-encodes
        them itself; a decode here cost it ~2 ms of its event loop a 640x360 JPEG for nothing, PIL,
        benchmarks/web_encode.py); stats and heartbeats are collected on the way; None at the end of the stream."""
        try:
            while True:
                resp = await self._call.read()
                if resp is grpc.aio.EOF:
                    return None
                kind = resp.WhichOneof("kind")
                if kind == "frame":
                    return resp.frame
                if kind == "stats":
                    self.stats.append(resp.stats)
                elif kind == "heartbeat":
                    self.heartbeats += 1
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    def __aiter__(self):
        return self

    async def __anext__(self) -> DecodedFrame:
        f = await self.next_frame()
        if f is None:
            raise StopAsyncIteration
        return f

    async def close(self) -> list[DecodedFrame]:
        """Half-close and collect the frames still coming."""
        try:
            await self._call.done_writing()
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        return [f async for f in self]
