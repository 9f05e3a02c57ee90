"""The web app's WebRTC frame path without a browser (issue 13 section 2): RAW frames converted to yuv420p against
the BT.601 definition, a RAW frame JPEG-encoded once for WebSocket viewers, the track's own VP8 / H.264 encoder
(decodes back at PSNR >= 30 dB, keyframes when asked, every pts reaches the RTP timestamp unchanged), the SDP's
negotiated codec, and when the web app asks the server for RAW frames. The browser tests (tests/test_web.py) play
both kinds of session in Chromium."""

from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("aiortc")
pytest.importorskip("aiohttp")

from spatia.client.web.hub import WebFrame, rgb_to_i420, rgb_to_i420_reference  # noqa: E402
from spatia.client.web.rtc import (  # noqa: E402
    VIDEO_CLOCK_HZ,
    VideoEncoder,
    negotiated_video_codec,
)
from spatia.proto.spatia.v1 import world_pb2 as pb  # noqa: E402


def scene(h: int, w: int, shift: int = 0) -> np.ndarray:
    """A smooth procedural picture with edges ([H, W, 3] uint8): gradients, a disc and stripes, moved by shift px."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    x = x + shift
    r = 128 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)
    g = 255 * (y / max(h - 1, 1))
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 4) ** 2, 230, 40) + 20 * ((x // 8) % 2)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("h,w", [(72, 128), (36, 64), (6, 10), (7, 11)])
def test_rgb_to_i420_matches_the_bt601_reference(h, w):
    rng = np.random.default_rng(h * w)
    for rgb in (scene(h, w), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)):
        fast, ref = rgb_to_i420(rgb), rgb_to_i420_reference(rgb)
        assert fast.shape == ref.shape == (h // 2 * 2 * 3 // 2, w // 2 * 2)
        assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 2  # fixed-point rounding in OpenCV
    # limited range: black and white at Y 16 / 235, grey chroma at 128
    ends = rgb_to_i420(np.array([[[0, 0, 0]] * 2, [[255, 255, 255]] * 2], np.uint8))
    assert ends[0].tolist() == [16, 16] and ends[1].tolist() == [235, 235] and ends[2].tolist() == [128, 128]


def test_rgb_to_i420_refuses_what_it_cannot_convert():
    with pytest.raises(ValueError, match="RGB uint8"):
        rgb_to_i420(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        rgb_to_i420(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="no 2x2 block"):
        rgb_to_i420(np.zeros((1, 8, 3), np.uint8))


def test_a_raw_frame_is_converted_once_and_jpeg_encoded_for_websocket_viewers():
    import cv2

    rgb = scene(72, 128)
    f = WebFrame(rgb.tobytes(), {"index": 3}, pb.FRAME_ENCODING_RAW, 128, 72, jpeg_quality=90)
    assert not f.jpeg_ready
    planes = f.yuv420p()
    assert planes is f.yuv420p() and np.array_equal(planes, rgb_to_i420(rgb))  # made once, shared by viewers
    jpeg = f.jpeg
    assert f.jpeg_ready and jpeg is f.jpeg and jpeg[:2] == b"\xff\xd8"
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert psnr(back, rgb) >= 30.0  # quality 90 (32.5 dB on this saturated test picture)
    # a JPEG frame is forwarded as is and decoded to the same planes (within JPEG's loss)
    g = WebFrame(jpeg, {"index": 3}, pb.FRAME_ENCODING_JPEG, 128, 72)
    assert g.jpeg_ready and g.jpeg is jpeg
    assert psnr(g.yuv420p(), planes) >= 35.0
    with pytest.raises(ValueError, match="expected 128x72x3"):
        WebFrame(b"\0" * 10, {}, pb.FRAME_ENCODING_RAW, 128, 72).yuv420p()


def _decode(codec: str, packets) -> list:
    import av

    dec = av.CodecContext.create("libvpx" if codec == "vp8" else "h264", "r")
    return [fr for p in packets for fr in dec.decode(av.Packet(bytes(p)))] + list(dec.decode(None))


def _is_keyframe(codec: str, data: bytes) -> bool:
    if codec == "vp8":
        return data[0] & 1 == 0  # VP8 frame tag: bit 0 is 0 on a key frame (RFC 6386 9.1)
    # H.264 Annex B: an IDR slice (NAL type 5)
    return any(data[i + 3] & 0x1F == 5 for i in range(len(data) - 4) if data[i:i + 3] == b"\0\0\1")


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_the_track_encoder_decodes_back_keyframes_when_asked_and_keeps_pts(codec):
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.vpx import Vp8Encoder

    enc = VideoEncoder(codec, fps=30)
    packer = H264Encoder() if codec == "h264" else Vp8Encoder()  # what aiortc's sender does with a packet
    w, h = 128, 72
    sources, packets = [], []
    for k in range(12):
        # uneven gaps, pts of every residue mod 9 (aiortc's frame path lost a tick on most: tests/test_web_pts.py)
        pts = 900_000 + 3000 * k + k % 9
        rgb = scene(h, w, shift=3 * k)
        if k == 8:
            enc.request_keyframe()  # a receiver's PLI
        p = enc.encode(rgb_to_i420(rgb), pts)
        assert p is not None and p.pts == pts and p.time_base == Fraction(1, VIDEO_CLOCK_HZ)
        payloads, rtp = packer.pack(p)
        assert payloads and rtp == pts  # the RTP timestamp is origin + exactly this pts
        sources.append(rgb)
        packets.append(p)
    keys = [k for k, p in enumerate(packets) if _is_keyframe(codec, bytes(p))]
    assert keys == [0, 8]
    frames = _decode(codec, packets)
    assert len(frames) == len(sources)
    for fr, rgb in zip(frames, sources):
        assert (fr.width, fr.height) == (w, h)
        assert psnr(fr.to_ndarray(format="rgb24"), rgb) >= 30.0


def test_the_encoder_refuses_an_unknown_codec():
    with pytest.raises(ValueError, match="video codec must be one of"):
        VideoEncoder("av1")


SDP = """v=0
o=- 1 1 IN IP4 0.0.0.0
s=-
t=0 0
m=audio 9 UDP/TLS/RTP/SAVPF 111
a=rtpmap:111 opus/48000/2
m=video 9 UDP/TLS/RTP/SAVPF 102 97 96
a=rtpmap:96 VP8/90000
a=rtpmap:97 rtx/90000
a=rtpmap:102 H264/90000
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
"""


def test_the_negotiated_codec_is_the_first_payload_type_of_the_video_section():
    assert negotiated_video_codec(SDP) == "h264"
    assert negotiated_video_codec(SDP.replace("102 97 96", "96 97 102")) == "vp8"
    assert negotiated_video_codec("v=0\nm=audio 9 RTP/AVP 0\n") is None


def test_the_web_app_asks_for_raw_frames_only_next_to_the_server_and_without_recording():
    from spatia.client.web.app import WebApp, WebConfig, is_loopback
    from spatia.client.web.hub import PlayOptions

    assert is_loopback("127.0.0.1:50051") and is_loopback("localhost:1") and is_loopback("[::1]:2")
    assert not is_loopback("10.1.2.3:50051") and not is_loopback("worlds.example.org:443")
    raw, jpeg = pb.FRAME_ENCODING_RAW, pb.FRAME_ENCODING_JPEG
    local = WebApp(WebConfig(server="127.0.0.1:50051"))
    assert local.webrtc_frame_encoding(PlayOptions(record=False)) == raw
    assert local.webrtc_frame_encoding(PlayOptions(record=True)) == jpeg  # recordings keep JPEG (Foxglove)
    remote = WebApp(WebConfig(server="10.1.2.3:50051"))
    assert remote.webrtc_frame_encoding(PlayOptions(record=False)) == jpeg  # 0.7 MB a frame over a network: no
    forced = WebApp(WebConfig(server="10.1.2.3:50051", server_frames="raw"))
    assert forced.webrtc_frame_encoding(PlayOptions(record=True)) == raw
    with pytest.raises(ValueError, match="server_frames"):
        WebConfig(server="x:1", server_frames="png")
    with pytest.raises(ValueError, match="video_codec"):
        WebConfig(server="x:1", video_codec="av1")


def test_playout_delay_bytes_are_two_12_bit_counts_of_10_ms():
    from spatia.client.web.rtc import playout_delay_bytes

    assert playout_delay_bytes(0, 0) == b"\x00\x00\x00"
    assert playout_delay_bytes(100, 200) == bytes([0x00, 0xA0, 0x14])  # 10 << 12 | 20
    assert playout_delay_bytes(1, 15) == bytes([0x00, 0x10, 0x02])  # rounded up: never less than asked
    assert playout_delay_bytes(40_950, 40_950) == b"\xff\xff\xff"
    for bad in ((-10, 0), (20, 10), (0, 40_960)):
        with pytest.raises(ValueError, match="playout delay"):
            playout_delay_bytes(*bad)


def test_the_answer_negotiates_playout_delay_and_every_packet_carries_it():
    """The browser's offer lists the playout-delay extension (Chrome does; aiortc's own offers do not): the answer
    names it with the offer's id and the sender's map writes it next to aiortc's own extensions; an offer without
    it is answered as aiortc would."""
    import asyncio

    from aiortc import RTCPeerConnection, RTCRtpParameters, sdp
    from aiortc.rtp import HeaderExtensions, unpack_header_extensions

    from spatia.client.web.rtc import (
        PLAYOUT_DELAY_URI,
        HubVideoTrack,
        PlayoutDelayExtensionsMap,
        negotiate_playout_delay,
    )

    async def answer(with_extension: bool):
        offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
        try:
            offerer.addTransceiver("video", direction="recvonly")
            await offerer.setLocalDescription(await offerer.createOffer())
            offer = offerer.localDescription.sdp
            if with_extension:  # where Chrome puts it: among the video section's extmaps, id 5
                offer = offer.replace("a=rtpmap:", f"a=extmap:5 {PLAYOUT_DELAY_URI}\r\na=rtpmap:", 1)
            sender = answerer.addTrack(HubVideoTrack(sub=None, on_message=lambda m: None))
            transceiver = next(t for t in answerer.getTransceivers() if t.sender is sender)
            await answerer.setRemoteDescription(offerer.localDescription.__class__(sdp=offer, type="offer"))
            negotiated = negotiate_playout_delay(transceiver, sender, offer, (0, 0))
            await answerer.setLocalDescription(await answerer.createAnswer())
            return negotiated, answerer.localDescription.sdp, sender._RTCRtpSender__rtp_header_extensions_map
        finally:
            await offerer.close()
            await answerer.close()

    negotiated, text, xmap = asyncio.run(answer(True))
    assert negotiated and f"a=extmap:5 {PLAYOUT_DELAY_URI}" in text
    assert isinstance(xmap, PlayoutDelayExtensionsMap)
    video = next(m for m in sdp.SessionDescription.parse(text).media if m.kind == "video")
    xmap.configure(RTCRtpParameters(headerExtensions=video.rtp.headerExtensions))
    mid_id = next(x.id for x in video.rtp.headerExtensions if x.uri.endswith("sdes:mid"))
    written = dict(unpack_header_extensions(*xmap.set(HeaderExtensions(mid="0", abs_send_time=77))))
    assert written[5] == b"\x00\x00\x00" and written[mid_id] == b"0"  # aiortc's own extensions kept

    negotiated, text, xmap = asyncio.run(answer(False))
    assert not negotiated and PLAYOUT_DELAY_URI not in text and not isinstance(xmap, PlayoutDelayExtensionsMap)


def test_the_web_config_checks_its_playout_delay():
    from spatia.client.web.app import WebConfig

    assert WebConfig(server="x:1").playout_delay_ms == (0, 0)
    assert WebConfig(server="x:1", playout_delay_ms=None).playout_delay_ms is None
    with pytest.raises(ValueError, match="playout_delay_ms"):
        WebConfig(server="x:1", playout_delay_ms=(50, 10))
