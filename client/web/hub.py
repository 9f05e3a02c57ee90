"""One Play session per world inside the web app, fanned out to every browser that watches it.

A ``PlayHub`` holds the gRPC ``AsyncPlaySession`` of a world (opened when a controller joins), one controller
(the only connection whose actions are forwarded) and any number of ``Subscriber``s (the controller's own view
and spectators). Each subscriber has a small bounded queue where the latest frame wins: a slow browser drops
frames, it never makes the web app's memory grow nor slows the other viewers (the research notes on browser streaming, FlashDreams'
two-frame sender queue). The fan-out lives here, in the web app, not in the gRPC server: the server streams a
world's frames to one Play caller.

When the controller's connection drops, the session stays open for ``grace_s`` so a reconnecting page resumes the
same session (same recording, the camera where it was); after that it is closed (the server saves the world,
with its current camera pose, so a later session also starts where the camera was).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import structlog

from spatia.client.api import AsyncPlaySession, AsyncWorldClient, WorldServiceError
from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.proto.spatia.v1.convert import pose_array

log = structlog.get_logger("spatia.web")

# Action axes a page may send (names of ``pb.Action``); anything else in a control message is refused.
ACTION_AXES = ("move_forward", "move_right", "move_up", "yaw_rate_rad_s", "pitch_rate_rad_s", "yaw_delta_rad",
               "pitch_delta_rad", "sprint", "dt_s")


_JPEG_DECODER: list = []  # one PyAV MJPEG decoder for the process (a fresh one costs ~10x a decode)
_JPEG_LOCK = threading.Lock()


# full-range chroma (JPEG's YCrCb, what OpenCV's RGB2YCrCb gives) -> BT.601 limited range: 128 + 224 / 255 (c - 128)
_CHROMA_TO_LIMITED = np.clip(np.rint(128 + (np.arange(256) - 128) * 224 / 255), 16, 240).astype(np.uint8)


def rgb_to_i420(rgb: np.ndarray) -> np.ndarray:
    """RGB [H, W, 3] uint8 -> the VP8 / H.264 encoders' yuv420p planes [H * 3 / 2, W] (Y, then U, then V), BT.601
    limited range (what the browser's decoder assumes for WebRTC video), chroma the mean of each 2x2 block.
    OpenCV: its one-pass RGB2YUV_I420 for Y (0.17 ms at 640x360), and for chroma an area downscale to half size,
    then YCrCb there and a table to limited range (its RGB2YUV_I420 samples one pixel of each 2x2 block, which
    aliases thin coloured edges). An odd edge row / column is dropped (4:2:0 needs even sizes)."""
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    if h == 0 or w == 0:
        raise ValueError(f"an image of {rgb.shape[1]}x{rgb.shape[0]} px has no 2x2 block to encode")
    rgb = np.ascontiguousarray(rgb[:h, :w])
    out = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # [h * 3 / 2, w]: Y exact, chroma replaced below
    half = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)  # [h / 2, w / 2, 3] 2x2 means
    _, cr, cb = cv2.split(cv2.cvtColor(half, cv2.COLOR_RGB2YCrCb))  # full range
    flat, q = out.reshape(-1), (h // 2) * (w // 2)
    cv2.LUT(cb, _CHROMA_TO_LIMITED, dst=flat[h * w: h * w + q].reshape(h // 2, w // 2))  # U
    cv2.LUT(cr, _CHROMA_TO_LIMITED, dst=flat[h * w + q:].reshape(h // 2, w // 2))  # V
    return out


def rgb_to_i420_reference(rgb: np.ndarray) -> np.ndarray:
    """The definition ``rgb_to_i420`` implements, in float numpy: BT.601 limited-range Y'CbCr per pixel (Y in
    16..235, Cb / Cr in 16..240), chroma averaged over each 2x2 block (tests/test_web_frames.py compares them)."""
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    x = rgb[:h, :w].astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255

    def half(c):  # [h, w] -> [h / 2, w / 2], the mean of each 2x2 block
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    flat = np.concatenate([y.ravel(), half(cb).ravel(), half(cr).ravel()])  # planar: Y, U, V one after another
    return np.clip(np.rint(flat), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


@dataclass
class WebFrame:
    """One frame for every viewer of a world: the server's image bytes as they came (JPEG, or RAW RGB when the web
    app asked for it) and its metadata; each viewer's form (JPEG for WebSocket viewers, yuv420p for the WebRTC
    encoders) is made once, on demand, and shared."""

    data: bytes  # the server's image bytes (``encoding``)
    meta: dict  # JSON-able: index, clip, seq (the page's own action seq), pose [16] row-major c2w, ...
    encoding: int = pb.FRAME_ENCODING_JPEG
    width: int = 0
    height: int = 0
    jpeg_quality: int = 90  # for a RAW frame a WebSocket viewer needs as JPEG
    _jpeg: bytes | None = None
    planes: np.ndarray | None = None  # [H * 3 / 2, W] uint8 yuv420p, made once on demand (the WebRTC tracks)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def jpeg(self) -> bytes:
        """The frame as JPEG (WebSocket viewers): the server's own bytes, or RAW encoded once here."""
        if self._jpeg is not None:
            return self._jpeg
        with self._lock:  # viewers ask from their own threads: one encode, not one each
            if self._jpeg is not None:
                return self._jpeg
            if self.encoding in (pb.FRAME_ENCODING_JPEG, pb.FRAME_ENCODING_UNSPECIFIED):
                self._jpeg = self.data
            else:
                import cv2

                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(self.rgb(), cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
                if not ok:
                    raise ValueError("OpenCV could not encode the frame as JPEG")
                self._jpeg = buf.tobytes()
        return self._jpeg

    @property
    def jpeg_ready(self) -> bool:
        """True when ``jpeg`` costs nothing (the server's JPEG, or one encoded already)."""
        return self._jpeg is not None or self.encoding in (pb.FRAME_ENCODING_JPEG, pb.FRAME_ENCODING_UNSPECIFIED)

    def rgb(self) -> np.ndarray:
        """A RAW frame's pixels, [H, W, 3] uint8 (a view of ``data``, no copy)."""
        if self.encoding != pb.FRAME_ENCODING_RAW:
            raise ValueError("rgb() is for RAW frames; JPEG frames are decoded by yuv420p()")
        if len(self.data) != self.width * self.height * 3:
            raise ValueError(f"raw frame holds {len(self.data)} bytes, expected {self.width}x{self.height}x3")
        return np.frombuffer(self.data, np.uint8).reshape(self.height, self.width, 3)

    def yuv420p(self) -> np.ndarray:
        """The frame as the video encoder's yuv420p planes (Y, then U, then V; even sizes: an odd edge row /
        column is dropped), made once for every viewer. RAW: one OpenCV conversion. JPEG: libjpeg decodes to YUV
        natively (PyAV's MJPEG decoder), which skips OpenCV's YUV -> BGR, the BGR -> RGB and PyAV's RGB -> YUV
        (2.8 vs 4.4 ms CPU at 640x360)."""
        with self._lock:  # viewers' tracks ask from their own threads: one conversion, not one each
            if self.planes is None:
                self.planes = rgb_to_i420(self.rgb()) if self.encoding == pb.FRAME_ENCODING_RAW else \
                    _jpeg_to_i420(self.data)
        return self.planes


def _jpeg_to_i420(jpeg: bytes) -> np.ndarray:
    import av

    with _JPEG_LOCK:
        if not _JPEG_DECODER:
            _JPEG_DECODER.append(av.CodecContext.create("mjpeg", "r"))
        (frame,) = _JPEG_DECODER[0].decode(av.Packet(jpeg))
    w, h = frame.width // 2 * 2, frame.height // 2 * 2
    if (w, h) != (frame.width, frame.height):
        rgb = frame.to_ndarray(format="rgb24")[:h, :w]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    # full-range JPEG YUV (yuvj420p) -> the limited range the browser's decoder assumes. swscale must be told both
    # ranges: without them it copied the full-range levels into limited-range planes (black at Y 0, white at 255:
    # crushed shadows and blown highlights in the browser; tests/test_web_frames.py compares with the RAW path)
    from av.video.reformatter import ColorRange

    src_range = ColorRange.JPEG if frame.format.name.startswith("yuvj") or frame.color_range == ColorRange.JPEG \
        else ColorRange.MPEG
    return frame.reformat(format="yuv420p", src_color_range=src_range, dst_color_range=ColorRange.MPEG).to_ndarray()


class Subscriber:
    """A viewer's queues: frames bounded to ``maxsize`` (when full the oldest goes: latest wins) and control
    messages (status, errors; bounded too, never evicting a frame), messages first."""

    def __init__(self, maxsize: int = 2, controller: bool = False) -> None:
        self._frames: deque = deque(maxlen=maxsize)
        self._messages: deque = deque(maxlen=64)
        self._ready = asyncio.Event()
        self.controller = controller
        self.dropped = 0
        self.closed = False

    def offer(self, item) -> None:
        if item is None or isinstance(item, dict):
            self._messages.append(item)
        else:
            if len(self._frames) == self._frames.maxlen:
                self.dropped += 1
            self._frames.append(item)
        self._ready.set()

    def pending(self) -> int:
        return len(self._frames)

    async def get(self):
        """The next message, else the next frame; None once closed."""
        while True:
            if self._messages:
                return self._messages.popleft()
            if self._frames:
                return self._frames.popleft()
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        self.closed = True
        self.offer(None)  # wakes the reader; None = the end


@dataclass
class PlayOptions:
    fps: float = 30.0
    width: int | None = None
    height: int | None = None
    jpeg_quality: int = 90
    record: bool = True
    prompt: str = ""
    # what the server sends: JPEG (small: any network), or RAW RGB when the web app sits next to the server and only
    # WebRTC viewers want it (no JPEG encode on the server, no decode here; app.WebApp.webrtc_frame_encoding decides)
    encoding: int = pb.FRAME_ENCODING_JPEG


@dataclass
class HubStatus:
    world_id: str
    playing: bool
    viewers: int  # spectators (subscribers that are not the controller)
    recording_id: str = ""
    memory_points: int = 0
    trail: list = field(default_factory=list)


class PlayHub:
    def __init__(self, client: AsyncWorldClient, world_id: str, grace_s: float = 10.0, trail_max: int = 4096) -> None:
        self.client, self.world_id, self.grace_s = client, world_id, grace_s
        self.session: AsyncPlaySession | None = None
        self.subscribers: set[Subscriber] = set()
        self.controller: object | None = None  # the connection that steers (any hashable token)
        self.options = PlayOptions()
        self.recording_id = ""
        self.memory_points = 0
        self.c2w: np.ndarray | None = None  # [4, 4] world frame: the camera of the latest frame
        self.trail: list[np.ndarray] = []  # [3] camera centres, world frame, oldest first
        self.trail_max = trail_max
        self.frames = 0
        # server seq -> (controller token, the page's seq, wall ms it reached this app, wall ms its write returned)
        self._seq_map: dict[int, tuple] = {}  # (latency is measured by the page)
        self._reader: asyncio.Task | None = None
        self._closer: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.last: WebFrame | None = None  # the latest frame, shown at once to a viewer who joins

    @property
    def viewers(self) -> int:
        return sum(1 for s in self.subscribers if not s.controller)

    # ---- membership ------------------------------------------------------------------------------------

    def subscribe(self, controller: bool = False, maxsize: int = 2) -> Subscriber:
        sub = Subscriber(maxsize=maxsize, controller=controller)
        self.subscribers.add(sub)
        if self.last is not None and not controller:  # a new controller gets a still of its own (take_control)
            sub.offer(self.last)
        self._broadcast_status()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        sub.close()
        self._broadcast_status()

    async def take_control(self, token: object, options: PlayOptions) -> pb.PlayStarted:
        """Make ``token`` the controller and open the Play session if none is open (a reconnect within the grace
        period takes over the open one). Raises ``WorldServiceError`` when the server refuses (e.g. the world is
        controlled by another client)."""
        async with self._lock:
            if self._closer is not None:
                self._closer.cancel()
                self._closer = None
            if self.controller is not None and self.controller is not token and self.session is not None:
                raise WorldServiceError(_code("FAILED_PRECONDITION"),
                                        f"world {self.world_id!r} already has a player; join as a spectator")
            changed = self.controller is not token
            self.controller = token
            if changed:
                self.last = None  # its seq was another page's
            if self.session is None:
                self.options = options
                self.session = await self.client.play(
                    self.world_id, fps=options.fps, width=options.width, height=options.height,
                    encoding=options.encoding, jpeg_quality=options.jpeg_quality, record=options.record,
                    prompt=options.prompt)
                started = self.session.started
                self.recording_id = started.recording_id
                self.memory_points = int(started.world.stats.memory_points)
                world = started.world
                self.c2w = pose_array(world.current if world.HasField("current") else world.origin)
                self.trail = [self.c2w[:3, 3].copy()]
                self._reader = asyncio.create_task(self._read(self.session))
                await self._still()
                log.info("play opened", world_id=self.world_id, recording=self.recording_id)
            elif changed:  # a reconnect took the open session over: show where the camera is
                await self._still()
            self._broadcast_status()
            return self.session.started

    def release_control(self, token: object) -> None:
        """The controller's connection ended: keep the session ``grace_s`` for a reconnect, then close it."""
        if self.controller is not token:
            return
        self.controller = None
        if self.session is not None and self._closer is None:
            self._closer = asyncio.create_task(self._close_later())

    async def _close_later(self) -> None:
        await asyncio.sleep(self.grace_s)
        self._closer = None
        await self.close_session()

    async def close_session(self) -> None:
        async with self._lock:
            session, self.session = self.session, None
            if session is None:
                return
            reader, self._reader = self._reader, None
            try:
                # Half-close; the reader task drains the frames still coming (one reader per call), and the server
                # finishes the session: it saves the world and closes the recording once.
                await session._call.done_writing()
                if reader is not None:
                    await asyncio.wait_for(asyncio.shield(reader), timeout=60)
            except (Exception, TimeoutError) as exc:  # noqa: BLE001 -- a broken stream still ends the session
                log.warning("play close failed", world_id=self.world_id, error=str(exc))
                if reader is not None:
                    reader.cancel()
            self.controller = None
            log.info("play closed", world_id=self.world_id, frames=self.frames)
            self._broadcast_status()

    # ---- controls ----------------------------------------------------------------------------------------

    async def send_action(self, token: object, page_seq: int, axes: dict, rx_ms: float | None = None) -> int:
        """Forward one action of the controller; returns the server's seq. Spectators' actions are refused.
        ``rx_ms``: wall clock (ms since 1970) when the action reached this app; with the time its gRPC write
        returned it rides on the metadata of the frames that reflect it (the page's stages of a key's latency)."""
        if token is not self.controller or self.session is None:
            raise PermissionError("only the player steers; spectators watch")
        clean = {}
        for k, v in axes.items():
            if k not in ACTION_AXES:
                raise ValueError(f"unknown action axis {k!r}; known: {list(ACTION_AXES)}")
            clean[k] = bool(v) if k == "sprint" else float(v)
        rx_ms = time.time() * 1e3 if rx_ms is None else rx_ms
        server_seq = await self.session.send(**clean)
        self._seq_map[server_seq] = (token, int(page_seq), rx_ms, time.time() * 1e3)
        if len(self._seq_map) > 4096:  # keep the map bounded: old seqs are never looked up again
            for s in sorted(self._seq_map)[:2048]:
                del self._seq_map[s]
        return server_seq

    async def set_prompt(self, token: object, prompt: str) -> None:
        if token is not self.controller or self.session is None:
            raise PermissionError("only the player sets the prompt")
        await self.session.set_prompt(prompt)

    # ---- frames ------------------------------------------------------------------------------------------

    def _page_action(self, f: pb.Frame | None) -> tuple[int, float | None, float | None]:
        """The controlling page's seq of the action a frame applied (0: none, or another page's action), with the
        wall clock times (ms) that action reached this app and was written to the server (None when not known)."""
        token, seq, rx_ms, fwd_ms = self._seq_map.get(int(f.last_action_seq), (None, 0, None, None)) \
            if f is not None else (None, 0, None, None)
        return (seq, rx_ms, fwd_ms) if token is self.controller else (0, None, None)

    def _meta(self, f: pb.Frame | None, c2w: np.ndarray, kind: str = "frame") -> dict:
        """A frame's metadata for the page; ``c2w`` [4, 4] world frame, the frame's camera."""
        seq, act_rx_ms, act_fwd_ms = self._page_action(f)
        return {
            "t": kind,
            "index": -1 if f is None else int(f.frame_index),
            "clip": -1 if f is None else int(f.clip_id),
            "seq": seq,
            "act_rx_ms": act_rx_ms,  # the action ``seq`` reached this app / its gRPC write returned (wall ms)
            "act_fwd_ms": act_fwd_ms,
            "session_frame": -1 if f is None else int(f.session_frame),
            "collided": False if f is None else bool(f.collided),  # Frame.collided: the move hit a surface
            "server_time_ns": 0 if f is None else int(f.server_time_ns),
            "pose": [float(v) for v in np.asarray(c2w).reshape(-1)],
            "memory_points": self.memory_points,
            "viewers": self.viewers,
            "recording": self.recording_id,
            "width": 0 if f is None else int(f.width),
            "height": 0 if f is None else int(f.height),
            "got_ms": time.time() * 1e3,  # wall clock when the web app had it (the page times the rest from here)
        }

    async def _still(self) -> None:
        """Standing still generates nothing: show the memory from where the camera stands until frames come."""
        try:
            r = await self.client.render(self.world_id, self.c2w, self.options.width or 0, self.options.height or 0)
        except WorldServiceError as exc:
            log.warning("still render failed", world_id=self.world_id, error=str(exc))
            return
        rgb = np.ascontiguousarray(r.rgb, dtype=np.uint8)  # [H, W, 3]
        meta = self._meta(None, self.c2w, "still")
        meta["width"], meta["height"] = int(rgb.shape[1]), int(rgb.shape[0])
        # kept as RAW: JPEG-encoded only if a WebSocket viewer asks (WebFrame.jpeg)
        self._fan_out(WebFrame(rgb.tobytes(), meta, pb.FRAME_ENCODING_RAW, rgb.shape[1], rgb.shape[0],
                               self.options.jpeg_quality))

    async def _read(self, session: AsyncPlaySession) -> None:
        try:
            # frames as they came: the image bytes are forwarded (JPEG) or converted once for the video encoders
            # (WebFrame), never decoded to RGB on this event loop
            while (f := await session.next_raw_frame()) is not None:
                if session.stats:
                    self.memory_points = int(session.stats[-1].memory_points)
                c2w = pose_array(f.pose)  # [4, 4] world frame
                self.c2w = c2w
                self.trail.append(c2w[:3, 3].copy())
                del self.trail[:-self.trail_max]
                self.frames += 1
                self._fan_out(WebFrame(f.data, self._meta(f, c2w), f.encoding, int(f.width), int(f.height),
                                       self.options.jpeg_quality))
        except WorldServiceError as exc:
            log.warning("play stream ended with an error", world_id=self.world_id, error=str(exc))
            self._notify({"t": "error", "message": str(exc)})
        finally:
            if self.session is session:  # ended by the server (shutdown, error): forget it
                self.session = None
                self.controller = None
                self._broadcast_status()

    def _fan_out(self, frame: WebFrame) -> None:
        self.last = frame
        for sub in list(self.subscribers):
            sub.offer(frame)

    def _notify(self, message: dict) -> None:
        for sub in list(self.subscribers):
            sub.offer(message)

    def _broadcast_status(self) -> None:
        self._notify(self.status_message())

    def status_message(self) -> dict:
        return {"t": "status", "world_id": self.world_id, "playing": self.session is not None,
                "viewers": self.viewers, "recording": self.recording_id, "memory_points": self.memory_points,
                "time_ns": time.time_ns()}


def _code(name: str):
    import grpc

    return getattr(grpc.StatusCode, name)


class HubRegistry:
    """The hubs of the web app, one per world id (created on first use, per gRPC client)."""

    def __init__(self, grace_s: float = 10.0) -> None:
        self.grace_s = grace_s
        self.hubs: dict[str, PlayHub] = {}

    def get(self, client: AsyncWorldClient, world_id: str) -> PlayHub:
        hub = self.hubs.get(world_id)
        if hub is None:
            hub = self.hubs[world_id] = PlayHub(client, world_id, grace_s=self.grace_s)
        return hub

    async def close(self) -> None:
        for hub in list(self.hubs.values()):
            await hub.close_session()
