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
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription, rtp
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from spatia.client.api import WorldServiceError

log = structlog.get_logger("spatia.web")

VIDEO_CLOCK_HZ = 90_000
DISPLAY_HZ = 60.0  # the browser's display refresh the track paces to (headless Chromium draws at 60 Hz)
START_REPEATS = 3  # the first picture's extra copies: >= 2 of them shown (the last waits for a next frame)
PTS_WINDOW = 255  # the page keeps the metadata of the latest 256 frames (app.js ``metaByPts``)
# aiortc's VP8 encoder hands the frame to PyAV, whose codec time base is 1 us: the pts is rounded to whole
# microseconds and the RTP timestamp truncated back from them, so a pts on the 90 kHz clock comes out one tick
# lower unless its residue mod 9 (9 ticks = 100 us exactly) survives the round trip. The page matches RTP timestamps
# to announced pts exactly, so the track only uses pts that survive (tests/test_web_pts.py checks the encoder).
PTS_EXACT_RESIDUES = frozenset(r for r in range(9) if (round(r * 100 / 9) * 9) // 100 == r)

# The browser renders a frame as soon as it is decoded when every RTP packet says its playout delay may be 0 ms
# (min = max = 0, the playout-delay header extension Chrome offers; cloud gaming's setting): without it Chrome's
# receiver holds each frame for its jitter estimate plus a fixed 10 ms render delay, then its smoothing renderer
# schedules it on a later refresh (measured in docs/BENCHMARKS.md, web sections). aiortc does not negotiate the
# extension; ``answer`` adds it when the page's offer has it.
PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
PLAYOUT_DELAY_STEP_MS = 10  # the extension's unit
PLAYOUT_DELAY_MAX_MS = 4095 * PLAYOUT_DELAY_STEP_MS  # 12 bits each for min and max

VIDEO_CODECS = ("vp8", "h264")
BITS_PER_PIXEL = 0.08  # target bitrate = pixels x fps x this: 0.55 Mbit/s at 640x360, 30 fps (aiortc: 0.25-1.5)


class VideoEncoder:
    """The track's own VP8 / H.264 encoder (PyAV: libvpx / libx264), set for the least CPU a frame.

    aiortc would encode a ``VideoFrame`` with its fixed settings (libvpx ``cpu-used -6``, ``noise-sensitivity 4``:
    the denoiser, threads by CPU count). A track may instead hand aiortc an encoded ``av.Packet``, which its sender
    only packetizes, so the settings are ours: VP8 at realtime speed 16 (libvpx's fastest) without the denoiser,
    H.264 with x264's ``ultrafast`` / ``zerolatency`` Constrained Baseline; one thread each (the engine needs the
    other core; measured in benchmarks/web_encode.py and docs/BENCHMARKS.md). The packet's pts is on the 90 kHz
    RTP clock itself, so the RTP timestamp is exactly ``origin + pts``."""

    def __init__(self, codec: str = "vp8", fps: float = 30.0, bitrate_bps: int | None = None,
                 options: dict[str, str] | None = None) -> None:
        if codec not in VIDEO_CODECS:
            raise ValueError(f"video codec must be one of {VIDEO_CODECS}, got {codec!r}")
        self.codec_name, self.fps, self.bitrate_bps = codec, fps, bitrate_bps
        self.extra_options = dict(options or {})
        self._ctx = None
        self._size: tuple[int, int] | None = None
        self.keyframe_wanted = True  # the first frame, and after a receiver's PLI / FIR (``request_keyframe``)
        self.keyframes = 0

    def request_keyframe(self) -> None:
        self.keyframe_wanted = True

    def _open(self, width: int, height: int):
        import av

        bitrate = self.bitrate_bps or int(max(250_000, width * height * self.fps * BITS_PER_PIXEL))
        if self.codec_name == "vp8":
            ctx = av.CodecContext.create("libvpx", "w")
            options = {"deadline": "realtime", "cpu-used": "16", "lag-in-frames": "0", "noise-sensitivity": "0"}
        else:
            ctx = av.CodecContext.create("libx264", "w")
            ctx.profile = "Constrained Baseline"  # what every WebRTC browser decodes (profile-level-id 42e01f)
            options = {"preset": "ultrafast", "tune": "zerolatency", "level": "31"}
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.bit_rate = bitrate
        ctx.time_base = Fraction(1, VIDEO_CLOCK_HZ)
        ctx.framerate = Fraction(round(self.fps * 1000), 1000)
        ctx.gop_size = 1 << 30  # keyframes only when asked (start, PLI / FIR): each costs ~5 frames' bits
        ctx.thread_count = 1
        ctx.options = options | self.extra_options
        ctx.open()
        self._ctx, self._size = ctx, (width, height)
        return ctx

    def encode(self, planes, pts: int):
        """``planes`` [H * 3 / 2, W] uint8 yuv420p -> one ``av.Packet`` (pts on the 90 kHz clock) or None."""
        import av

        h, w = planes.shape[0] * 2 // 3, planes.shape[1]
        ctx = self._ctx if self._size == (w, h) else self._open(w, h)
        frame = VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts, frame.time_base = pts, Fraction(1, VIDEO_CLOCK_HZ)
        if self.keyframe_wanted:
            frame.pict_type = av.video.frame.PictureType.I
            self.keyframe_wanted = False
            self.keyframes += 1
        packets = ctx.encode(frame)
        if not packets:
            return None
        data = b"".join(bytes(p) for p in packets)
        packet = av.Packet(data)
        packet.pts, packet.time_base = pts, Fraction(1, VIDEO_CLOCK_HZ)
        return packet


def playout_delay_bytes(min_ms: int, max_ms: int) -> bytes:
    """The playout-delay extension's 3 bytes: min and max delay, 12 bits each, big-endian, in 10 ms units."""
    if not 0 <= min_ms <= max_ms <= PLAYOUT_DELAY_MAX_MS:
        raise ValueError(f"playout delay needs 0 <= min <= max <= {PLAYOUT_DELAY_MAX_MS} ms, got {min_ms}, {max_ms}")
    lo, hi = -(-min_ms // PLAYOUT_DELAY_STEP_MS), -(-max_ms // PLAYOUT_DELAY_STEP_MS)  # rounded up: never less
    return ((lo << 12) | hi).to_bytes(3, "big")


class PlayoutDelayExtensionsMap(rtp.HeaderExtensionsMap):
    """aiortc's RTP header extension map with the playout-delay extension added to every packet it writes, once the
    sender's parameters name an id for it (``answer`` negotiates it)."""

    def __init__(self, min_ms: int, max_ms: int) -> None:
        super().__init__()
        self.value = playout_delay_bytes(min_ms, max_ms)
        self.playout_delay_id: int | None = None

    def configure(self, parameters) -> None:
        super().configure(parameters)
        self.playout_delay_id = next((x.id for x in parameters.headerExtensions if x.uri == PLAYOUT_DELAY_URI), None)

    def set(self, values) -> tuple[int, bytes]:
        profile, data = super().set(values)
        if self.playout_delay_id is None:
            return profile, data
        return rtp.pack_header_extensions(rtp.unpack_header_extensions(profile, data) +
                                          [(self.playout_delay_id, self.value)])


def negotiate_playout_delay(transceiver, sender, offer_sdp: str, delay_ms: tuple[int, int]) -> bool:
    """Put the playout-delay extension in the answer (with the offer's id) and on every packet ``sender`` writes,
    when the offer's video section has it; False (nothing changed) when it does not. Call between
    ``setRemoteDescription`` and ``createAnswer``. aiortc has no public API for either: its transceiver's header
    extensions and its sender's extension map are private (tests/test_web_frames.py checks both against the
    installed aiortc)."""
    from aiortc import sdp

    video = [m for m in sdp.SessionDescription.parse(offer_sdp).media if m.kind == "video"]
    offered = [x for m in video[:1] for x in m.rtp.headerExtensions if x.uri == PLAYOUT_DELAY_URI]
    if not offered:
        return False
    if not any(x.uri == PLAYOUT_DELAY_URI for x in transceiver._headerExtensions):
        transceiver._headerExtensions.append(offered[0])
    sender._RTCRtpSender__rtp_header_extensions_map = PlayoutDelayExtensionsMap(*delay_ms)
    return True


class HubVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, sub, on_message, fps: float = 30.0, codec: str = "vp8") -> None:
        super().__init__()
        self.encoder = VideoEncoder(codec, fps=fps)  # the negotiated codec is set by ``answer`` before frames flow
        self.fps = fps
        # Frames go out at most one per 1.5 display refreshes (60 Hz; see ``recv``): two sent closer would meet at
        # one vsync and one of them would never be shown (one refresh apart, 9 % of the frames that arrived were not
        # presented, 18:44 UTC; 2-3 % at 1 / fps). The session's own 1 / fps held a frame that came 20 ms after
        # the last one for another 13 ms (paced_ms p50 12.6 ms at 18 fps, 18:20 UTC).
        self.min_gap_s = min(1.0 / fps, 1.5 / DISPLAY_HZ)
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
        self.encode_cpu_s = 0.0  # thread CPU of conversion + encode, all frames (logged when the peer closes)

    async def recv(self):  # -> av.Packet, encoded here (VideoEncoder); aiortc packetizes it
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
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        pts = self._next_pts(now)
        # out_ms / paced_ms: when the frame went to the encoder and how long pacing held it (the page's stages)
        timing = {"pts": pts, "out_ms": time.time() * 1e3, "paced_ms": round(paced_s * 1e3, 1)}
        # conversion (once per frame for every viewer: hub.WebFrame) and encode off the event loop, in one hop
        packet = await asyncio.to_thread(self._encode, item, pts)
        timing["encoded_ms"] = time.time() * 1e3  # back on the event loop, to aiortc's packetizer and sender
        self.on_message(dict(item.meta, **timing, repeat=True) if repeat else dict(item.meta, **timing))
        self.frames_sent += not repeat
        if packet is None:  # the encoder held the frame back (it never does with these settings): nothing to send
            return await self.recv()
        return packet

    def _encode(self, item, pts: int):
        t0 = time.thread_time()
        packet = self.encoder.encode(item.yuv420p(), pts)  # [H * 3 / 2, W] uint8 planes
        self.encode_cpu_s += time.thread_time() - t0
        return packet

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


def negotiated_video_codec(sdp: str) -> str | None:
    """The codec an SDP sends video with: the first payload type of its ``m=video`` line, named by its rtpmap
    (``"vp8"``, ``"h264"``, ...; None without a video section)."""
    lines = sdp.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("m=video "):
            parts = line.split()
            if len(parts) < 4:
                return None
            pt = parts[3]
            for later in lines[i + 1:]:
                if later.startswith("m="):
                    break
                if later.startswith(f"a=rtpmap:{pt} "):
                    return later.split()[1].split("/")[0].lower()
            return None
    return None


def prefer_codec(transceiver, codec: str) -> None:
    """Offer ``codec`` first in the answer (the page's offer lists what its browser decodes); RTX stays."""
    from aiortc import RTCRtpSender

    caps = RTCRtpSender.getCapabilities("video").codecs
    wanted = [c for c in caps if c.mimeType.lower() == f"video/{codec}"]
    if not wanted:
        raise ValueError(f"aiortc cannot send {codec}")
    transceiver.setCodecPreferences(wanted + [c for c in caps if c not in wanted])


async def answer(app, hub, role: str, options, sdp: str, kind: str, ice_servers: list[str] | None = None,
                 codec: str = "vp8", playout_delay_ms: tuple[int, int] | None = (0, 0)) -> dict:
    """Answer the page's offer: subscribe to ``hub`` (and take control when ``role == "play"``); video in
    ``codec`` when the page's browser offers it, else in what it offers that aiortc sends; each packet asks for a
    playout delay of ``playout_delay_ms`` (min, max) when the browser offers the extension (None: not sent)."""
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

    track = HubVideoTrack(sub, send, fps=options.fps if role == "play" or hub.session is None else hub.options.fps,
                          codec=codec)
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
        log.info("webrtc peer closed", world_id=hub.world_id, role=role, frames=track.frames_sent,
                 codec=track.encoder.codec_name, keyframes=track.encoder.keyframes, encode_cpu_ms_per_frame=round(
                     1e3 * track.encode_cpu_s / max(track.frames_sent, 1), 2))

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
            if isinstance(msg, dict):
                msg["rx_ms"] = time.time() * 1e3  # when the action reached this app (the page's stage up_ms)
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
        sender = pc.addTrack(track)
        transceiver = next(t for t in pc.getTransceivers() if t.sender is sender)
        prefer_codec(transceiver, codec)
        # A receiver's PLI / FIR makes aiortc's sender ask its own encoder for a keyframe (``_send_keyframe``);
        # the track encodes (VideoEncoder), so the request goes to it. aiortc has no public hook for this.
        sender._send_keyframe = lambda: track.encoder.request_keyframe()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        playout_delay = playout_delay_ms is not None and negotiate_playout_delay(transceiver, sender, sdp,
                                                                                  playout_delay_ms)
        await pc.setLocalDescription(await pc.createAnswer())
        sent = negotiated_video_codec(pc.localDescription.sdp)
        if sent not in VIDEO_CODECS:
            raise ValueError(f"the browser offers no video codec this app sends (answer: {sent!r})")
        if sent != track.encoder.codec_name:  # the browser does not decode the preferred one
            track.encoder = VideoEncoder(sent, fps=track.fps)
    except (WorldServiceError, ValueError) as exc:
        await cleanup()
        if isinstance(exc, ValueError):
            raise WorldServiceError(_invalid(), f"bad offer: {exc}") from None
        raise
    log.info("webrtc peer", world_id=hub.world_id, role=role, codec=track.encoder.codec_name,
             playout_delay_ms=playout_delay_ms if playout_delay else None)
    return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}


def _invalid():
    import grpc

    return grpc.StatusCode.INVALID_ARGUMENT
