"""WebRTC for the web app (aiortc): a video track fed from a world's ``PlayHub`` and a data channel for controls.

The page makes the offer (with a data channel named ``control``); ``answer`` subscribes the peer to the hub
(bounded queue, latest frame wins), returns aiortc's answer (ICE candidates gathered, no trickle), and:

- the video track hands out a frame only when a new one came from the Play stream (no repeats, so a slow
  generator is a low frame rate, not a stutter), decoding the server's JPEG once off the event loop; its
  ``pts`` follow the wall clock on the 90 kHz RTP clock so the browser plays frames at the pace they came;
- the data channel carries, per frame, its metadata (index, the page's action seq, pose, ...) with its ``pts``;
  the RTP timestamp is ``origin + pts`` with an origin random per sender (RFC 3550) that aiortc does not expose,
  so the track makes consecutive pts gaps distinct and the page finds the origin from the RTP timestamps of the
  frames it shows (``requestVideoFrameCallback`` metadata), then maps each shown frame back to its metadata:
  key -> frame latency is measured on the frame really shown. Controls come back on the same channel, in order.

No STUN / TURN by default (``ice_servers``): the web app and the browser reach each other directly (loopback,
LAN); pass ICE servers for anything else, or let the page fall back to the WebSocket stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from fractions import Fraction

import structlog
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from spatia.client.api import WorldServiceError

log = structlog.get_logger("spatia.web")

VIDEO_CLOCK_HZ = 90_000
START_REPEATS = 3  # the first picture's extra copies: >= 2 of them shown (the last waits for a next frame)
PTS_WINDOW = 255  # the page keeps the metadata of the latest 256 frames (app.js ``metaByPts``)
# aiortc's VP8 encoder hands the frame to PyAV, whose codec time base is 1 us: the pts is rounded to whole
# microseconds and the RTP timestamp truncated back from them, so a pts on the 90 kHz clock comes out one tick
# lower unless its residue mod 9 (9 ticks = 100 us exactly) survives the round trip. The page matches RTP timestamps
# to announced pts exactly, so the track only uses pts that survive (tests/test_web_pts.py checks the encoder).
PTS_EXACT_RESIDUES = frozenset(r for r in range(9) if (round(r * 100 / 9) * 9) // 100 == r)


class HubVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, sub, on_message, fps: float = 30.0) -> None:
        super().__init__()
        self.min_gap_s = 1.0 / fps  # frames go out at most at the session's rate (see ``recv``)
        self._next_due: float | None = None
        # Resend the last picture after this long without a new one (None: never). Not needed by Chrome, which
        # presents a frame without waiting for the next (measured: docs/BENCHMARKS.md, web section), and it
        # doubled the encoder's and the browser's work under load, when most frames come alone.
        self.repeat_after_s: float | None = None
        self._last_item = None
        self._repeats_left = 0  # copies of the last picture still to send if no new one comes (see ``recv``)
        self.sub = sub  # hub.Subscriber: WebFrame items, dict status messages, None at the end
        self.on_message = on_message  # (dict) -> None: sends on the data channel
        self._t0: float | None = None
        self._last_pts = -1
        self._gaps: deque[int] = deque(maxlen=PTS_WINDOW)  # the latest pts gaps, kept distinct (see ``_next_pts``)
        self._gap_set: set[int] = set()
        self.frames_sent = 0

    async def recv(self) -> VideoFrame:
        repeat = False
        while True:
            first = self.frames_sent <= 1
            if self._last_item is not None and self._repeats_left > 0 and (first or self.repeat_after_s):
                # The stream's first picture goes out START_REPEATS more times, one frame time apart, so that the
                # page sees >= 2 frames (it learns the RTP origin from two, ``_next_pts``) even when standing
                # still; later pictures are resent (marked ``repeat``) only with ``repeat_after_s`` set.
                try:
                    item = await asyncio.wait_for(self.sub.get(),
                                                  timeout=self.min_gap_s if first else self.repeat_after_s)
                except TimeoutError:
                    item, repeat = self._last_item, True
                    self._repeats_left -= 1
            else:
                item = await self.sub.get()
            if item is None:
                self.stop()
                raise MediaStreamError
            if isinstance(item, dict):
                self.on_message(item)
                continue
            break
        if not repeat:
            self._repeats_left = START_REPEATS if self.frames_sent == 0 else 1
        self._last_item = item
        # A clip's frames come from the generator in a burst; sent as they come, the browser would show only the
        # last of each burst (one per display refresh) and its jitter buffer would speed playback up. Pace them at
        # the session fps instead, re-anchoring after a stall so a late frame is not followed by a burst
        # (the research notes on browser streaming, FlashDreams' track). The queue before this (latest wins) bounds the delay.
        now = time.monotonic()
        paced_s = 0.0
        if self._next_due is not None and now < self._next_due:
            paced_s = self._next_due - now
            await asyncio.sleep(paced_s)
            now = time.monotonic()
        self._next_due = max(now, self._next_due or now) + self.min_gap_s
        # the JPEG decoded straight to the encoder's yuv420p, once per frame for every viewer (hub.WebFrame)
        planes = await asyncio.to_thread(item.yuv420p)  # [H * 3 / 2, W] uint8
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        pts = self._next_pts(now)
        frame = VideoFrame.from_ndarray(planes, format="yuv420p")  # a frame of its own: pts differ per viewer
        frame.pts, frame.time_base = pts, Fraction(1, VIDEO_CLOCK_HZ)
        # out_ms / paced_ms: when the frame went to the encoder and how long pacing held it (the page's stages)
        timing = {"pts": pts, "out_ms": time.time() * 1e3, "paced_ms": round(paced_s * 1e3, 1)}
        self.on_message(dict(item.meta, **timing, repeat=True) if repeat else dict(item.meta, **timing))
        self.frames_sent += not repeat
        return frame

    def _next_pts(self, now: float) -> int:
        """The frame's pts on the 90 kHz clock: the wall clock since the first frame, moved on by a few ticks if
        needed so that its gap to the previous pts differs from each of the last ``PTS_WINDOW`` gaps. The page
        knows the pts (data channel) but not the RTP timestamp origin aiortc adds to them (random, private);
        distinct gaps let it find the origin from two frames shown in a row (``learnRtpOrigin`` in app.js). Only
        pts that reach the RTP timestamp unchanged (``PTS_EXACT_RESIDUES``); a few ms later than the clock at most."""
        pts = max(int((now - self._t0) * VIDEO_CLOCK_HZ), self._last_pts + 1)
        while pts % 9 not in PTS_EXACT_RESIDUES:
            pts += 1
        if self._last_pts >= 0:
            while pts - self._last_pts in self._gap_set or pts % 9 not in PTS_EXACT_RESIDUES:
                pts += 1
            if len(self._gaps) == self._gaps.maxlen:
                self._gap_set.discard(self._gaps[0])
            gap = pts - self._last_pts
            self._gaps.append(gap)
            self._gap_set.add(gap)
        self._last_pts = pts
        return pts


async def answer(app, hub, role: str, options, sdp: str, kind: str, ice_servers: list[str] | None = None) -> dict:
    """Answer the page's offer: subscribe to ``hub`` (and take control when ``role == "play"``)."""
    config = RTCConfiguration(iceServers=[RTCIceServer(u) for u in (ice_servers or [])])
    pc = RTCPeerConnection(configuration=config)
    token = object()
    # room for one clip's burst (paced out by the track); beyond it the oldest frame goes
    sub = hub.subscribe(controller=role == "play", maxsize=max(app.config.frame_queue, 6))
    channel: dict = {}
    controls: asyncio.Queue = asyncio.Queue(maxsize=256)

    early: list[str] = []  # sent before the channel opened (the first frame's metadata, the RTP origin)

    def send(message: dict) -> None:
        text = json.dumps(message, separators=(",", ":"))
        ch = channel.get("ch")
        if ch is not None and ch.readyState == "open":
            with contextlib.suppress(Exception):
                ch.send(text)
        else:
            early.append(text)
            del early[:-64]  # bounded: the latest 64

    track = HubVideoTrack(sub, send, fps=options.fps if role == "play" or hub.session is None else hub.options.fps)
    closed = asyncio.Event()

    async def cleanup() -> None:
        if closed.is_set():
            return
        closed.set()
        hub.unsubscribe(sub)
        hub.release_control(token)
        app.rtc_peers.discard(pc)
        worker.cancel()
        with contextlib.suppress(Exception):
            await pc.close()
        log.info("webrtc peer closed", world_id=hub.world_id, role=role, frames=track.frames_sent)

    async def work() -> None:  # controls, in order
        while True:
            msg = await controls.get()
            reply = await app.handle_control(hub, token, msg)
            if reply is not None:
                send(reply)

    worker = asyncio.create_task(work())

    @pc.on("datachannel")
    def on_datachannel(ch) -> None:
        channel["ch"] = ch
        send(hub.status_message())

        def flush() -> None:
            while early and ch.readyState == "open":
                with contextlib.suppress(Exception):
                    ch.send(early.pop(0))

        @ch.on("open")
        def on_open() -> None:
            flush()
            send(hub.status_message())

        flush()

        @ch.on("message")
        def on_message(message) -> None:
            try:
                msg = json.loads(message)
            except (ValueError, TypeError):
                send({"t": "error", "message": "control messages are JSON"})
                return
            try:
                controls.put_nowait(msg)
            except asyncio.QueueFull:
                send({"t": "error", "message": "too many controls queued; dropped"})

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await cleanup()

    app.rtc_peers.add(pc)
    try:
        if role == "play":
            await hub.take_control(token, options)
        pc.addTrack(track)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        await pc.setLocalDescription(await pc.createAnswer())
    except (WorldServiceError, ValueError) as exc:
        await cleanup()
        if isinstance(exc, ValueError):
            raise WorldServiceError(_invalid(), f"bad offer: {exc}") from None
        raise
    log.info("webrtc peer", world_id=hub.world_id, role=role)
    return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}


def _invalid():
    import grpc

    return grpc.StatusCode.INVALID_ARGUMENT
