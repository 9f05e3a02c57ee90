"""The web app's CPU per WebRTC frame, stage by stage, on real frames: what a 640x360 frame costs between the server's
generator and the RTP packetizer, for the settings the web app can use, against aiortc's own encoders (the baseline,
what the web app used before) in the same run.

Frames: a world of the room scene played ``--frames`` frames with W held through an in-process server (RAW, so the
stages below start from the generator's pixels). Per frame, CPU time of this process (``time.process_time``, all
threads: a 2-core machine shared with others moves wall time more than this), median and mean over the frames,
in ms:

- ``server_jpeg_encode``: what a JPEG session costs the server (``encode_image``, PIL, quality 90); a RAW
  session skips it;
- ``pil_jpeg_decode``: the decode the web app's gRPC session did on every frame before (``client.api.decode``),
  whose result it never used; ``client_jpeg_decode``: what every other client's frame costs now
  (``convert.decode_frame``: OpenCV since session 26, PIL before, which is ``pil_jpeg_decode``);
- ``jpeg_to_i420`` (PyAV's MJPEG decoder straight to yuv420p, the web app's JPEG path) vs ``rgb_to_i420`` (OpenCV,
  the RAW path);
- encoders, each from the same yuv420p planes, with its output size (kbit/s at ``--fps``) and quality (PSNR of
  the decoded frame against the planes, all three planes): ``aiortc_vp8`` / ``aiortc_h264`` (aiortc's encoders
  as its sender runs them: libvpx cpu-used -6 with its denoiser, threads by CPU count; x264 default preset) vs
  ``vp8`` / ``h264`` (``client.web.rtc.VideoEncoder``: libvpx speed 16, no denoiser, one thread; x264
  ultrafast / zerolatency).

    python benchmarks/web_encode.py [--frames 60] [--width 640 --height 360]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, log  # noqa: E402


def frames_from_server(n: int, width: int, height: int, fps: float) -> list[np.ndarray]:
    """``n`` RGB frames [H, W, 3] uint8 of the room scene walked forward (W held), from an in-process server."""
    from spatia.client.api import WorldClient
    from spatia.proto.spatia.v1 import world_pb2 as pb
    from spatia.server.config import ServerConfig
    from spatia.server.testing import running_server

    out = []
    with tempfile.TemporaryDirectory() as tmp, running_server(ServerConfig(data_dir=Path(tmp), port=0)) as st, \
            WorldClient(st.target) as c:
        c.create_scene("room", 0, width, height, world_id="enc")
        with c.play("enc", fps=fps, width=width, height=height, encoding=pb.FRAME_ENCODING_RAW, record=False) as s:
            while len(out) < n:
                s.send(move_forward=1.0, yaw_rate_rad_s=0.3, dt_s=1 / fps)
                f = s.next_frame(timeout_s=60)
                if f is None:
                    raise SystemExit("the play stream ended early")
                out.append(f.rgb)
            s.close(drain=False)
    return out


def cpu_ms(fn, items) -> tuple[list[float], list]:
    """Process CPU ms of ``fn(item)`` for each item (all threads: an encoder may start its own; the server that
    made the frames has stopped by then), and the results."""
    times, results = [], []
    for x in items:
        t0 = time.process_time()
        results.append(fn(x))
        times.append((time.process_time() - t0) * 1e3)
    return times, results


def stats(times: list[float]) -> dict:
    return {"median_ms": round(statistics.median(times), 2), "mean_ms": round(statistics.fmean(times), 2)}


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def decode_all(codec: str, payloads: list[bytes]) -> list[np.ndarray]:
    """Decode a stream of encoded frames (VP8 frames / H.264 Annex B access units) back to yuv420p planes."""
    import av

    dec = av.CodecContext.create("libvpx" if codec == "vp8" else "h264", "r")
    out = []
    for data in payloads:
        for fr in dec.decode(av.Packet(data)):
            out.append(fr.reformat(format="yuv420p").to_ndarray())
    return out


def run_encoder(name: str, planes: list[np.ndarray], fps: float, bitrate_bps: int | None = None) -> dict:
    """Encode every frame with encoder ``name``; CPU per frame, kbit/s and PSNR of what a decoder gets back."""
    from aiortc.codecs.h264 import H264Encoder, h264_depayload
    from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload
    from av import VideoFrame

    from spatia.client.web.rtc import VIDEO_CLOCK_HZ, VideoEncoder

    codec = "h264" if name.endswith("h264") else "vp8"
    step = round(VIDEO_CLOCK_HZ / fps)
    sent: list[list[bytes]] = []  # each frame's RTP payloads
    if name.startswith("aiortc_"):
        enc = H264Encoder() if codec == "h264" else Vp8Encoder()

        def one(item):  # what aiortc's sender runs for a VideoFrame: encode and packetize
            i, p = item
            frame = VideoFrame.from_ndarray(p, format="yuv420p")
            frame.pts, frame.time_base = i * step, Fraction(1, VIDEO_CLOCK_HZ)
            sent.append(enc.encode(frame, i == 0)[0])
    else:
        enc = VideoEncoder(codec, fps=fps, bitrate_bps=bitrate_bps)
        packer = H264Encoder() if codec == "h264" else Vp8Encoder()

        def one(item):  # our encode, then what aiortc's sender runs for an av.Packet: packetize
            i, p = item
            sent.append(packer.pack(enc.encode(p, i * step))[0])

    times, _ = cpu_ms(one, list(enumerate(planes)))
    depayload = h264_depayload if codec == "h264" else vp8_depayload
    streams = [b"".join(depayload(x) for x in payloads) for payloads in sent]
    decoded = decode_all(codec, streams)
    n = min(len(decoded), len(planes))
    quality = [psnr_db(decoded[i], planes[i]) for i in range(n)]
    kbit_s = 8e-3 * sum(len(x) for x in streams) / (len(planes) / fps)
    return stats(times[1:]) | {"kbit_s": round(kbit_s), "rtp_packets_per_frame": round(
                                   sum(len(p) for p in sent[1:]) / (len(sent) - 1), 1), "psnr_db_median": round(statistics.median(quality), 2),
                               "frames_decoded": n, "keyframe_ms": round(times[0], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=float, default=15.0, help="the stream's frame rate (sets pts and kbit/s)")
    p.add_argument("--kbit-s", default="", help="also run our encoders at these target kbit/s (comma-separated)")
    args = p.parse_args()
    if args.frames < 3:
        p.error("--frames must be >= 3")
    import cv2

    cv2.setNumThreads(1)  # the web app's conversions run beside the engine; one thread is what they get
    from spatia.client.web.hub import _jpeg_to_i420, rgb_to_i420
    from spatia.proto.spatia.v1 import world_pb2 as pb
    from spatia.proto.spatia.v1.convert import encode_image

    log(f"generating {args.frames} frames at {args.width}x{args.height}")
    rgbs = frames_from_server(args.frames, args.width, args.height, args.fps)
    enc_t, jpegs = cpu_ms(lambda x: encode_image(x, pb.FRAME_ENCODING_JPEG, 90), rgbs)

    import io

    from PIL import Image

    pil_t, _ = cpu_ms(lambda j: np.asarray(Image.open(io.BytesIO(j)).convert("RGB")), jpegs)
    from spatia.proto.spatia.v1.convert import decode_frame

    h, w = rgbs[0].shape[:2]
    frames = [pb.Frame(encoding=pb.FRAME_ENCODING_JPEG, width=w, height=h, data=j) for j in jpegs]
    client_t, _ = cpu_ms(decode_frame, frames)
    j2y_t, _ = cpu_ms(_jpeg_to_i420, jpegs)
    r2y_t, planes = cpu_ms(rgb_to_i420, rgbs)
    result = {
        "name": "web_encode",
        "sizes": {"width": args.width, "height": args.height, "frames": args.frames, "fps": args.fps,
                  "jpeg_quality": 90, "jpeg_kbytes_mean": round(statistics.fmean(len(j) for j in jpegs) / 1e3, 1),
                  "raw_kbytes": args.width * args.height * 3 / 1e3},
        "server_jpeg_encode": stats(enc_t),
        "pil_jpeg_decode": stats(pil_t),
        "client_jpeg_decode": stats(client_t),
        "jpeg_to_i420": stats(j2y_t),
        "rgb_to_i420": stats(r2y_t),
    }
    for name in ("aiortc_vp8", "vp8", "aiortc_h264", "h264"):
        log(f"encoder {name}")
        result[name] = run_encoder(name, planes, args.fps)
    for kbit in [int(k) for k in args.kbit_s.split(",") if k.strip()]:
        for name in ("vp8", "h264"):
            result[f"{name}_{kbit}k"] = run_encoder(name, planes, args.fps, bitrate_bps=kbit * 1000)
    # before: server JPEG encode + PIL decode + MJPEG -> I420 + aiortc's VP8; after: RGB -> I420 + our VP8
    before = (result["server_jpeg_encode"]["median_ms"] + result["pil_jpeg_decode"]["median_ms"]
              + result["jpeg_to_i420"]["median_ms"] + result["aiortc_vp8"]["median_ms"])
    after = result["rgb_to_i420"]["median_ms"] + result["vp8"]["median_ms"]
    result["median_ms"], result["baseline_median_ms"] = round(after, 2), round(before, 2)
    emit(result)


if __name__ == "__main__":
    main()
