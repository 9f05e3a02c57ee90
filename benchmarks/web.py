"""The browser player against the Python gRPC client: sustained fps and key -> frame latency (p50 / p95).

A server runs in a subprocess (``spatia serve``, geometric generator) and the web app (``client/web``) in this
process; headless Chromium (Debian chromium + chromium-driver, Selenium) opens the page at ``--width x --height``
and holds W for ``--seconds``, once over WebRTC and once over the WebSocket + JPEG fallback (forced). The page
sends one action per tick (30 Hz) and measures each action's latency to the first *displayed* frame whose pose
reflects it (WebRTC: the frame's RTP timestamp from ``requestVideoFrameCallback`` mapped to its metadata on the
data channel; WebSocket: after the JPEG is decoded and drawn). ``fps`` = frames displayed per second after the
first second.

Baseline (same run): the Python gRPC client (``client.api.PlaySession``) sending the same actions at the same rate;
its latency is to the frame's arrival (decoded to numpy). Each mode plays a fresh world of the same scene.

    python benchmarks/web.py [--seconds 10] [--width 640 --height 360] [--screenshot docs/web.png]
    python benchmarks/web.py --player [--seconds 10]   # the pygame player instead of the browser
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, log  # noqa: E402

TICK_HZ = 30.0
WARMUP_S = 1.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def _summary(fps: float, lat: list[float], frames: int) -> dict:
    return {"fps": round(fps, 2), "p50_ms": round(_pct(lat, 50), 1), "p95_ms": round(_pct(lat, 95), 1),
            "frames": frames, "latency_samples": len(lat)}


def run_grpc(target: str, world: str, args) -> dict:
    from spatia.client.api import WorldClient

    with WorldClient(target) as c, c.play(world, fps=TICK_HZ, width=args.width, height=args.height,
                                          jpeg_quality=90, record=False) as s:
        sent: dict[int, float] = {}
        stop = threading.Event()

        def sender():
            t0 = time.perf_counter()
            k = 0
            while not stop.is_set():
                seq = s.send(move_forward=1.0, dt_s=1 / TICK_HZ)
                sent[seq] = time.perf_counter()
                k += 1
                time.sleep(max(0.0, t0 + k / TICK_HZ - time.perf_counter()))  # absolute schedule

        th = threading.Thread(target=sender, daemon=True)
        t_start = time.perf_counter()
        th.start()
        lat, shown, reflected = [], [], 0
        while time.perf_counter() - t_start < args.seconds:
            try:
                f = s.next_frame(timeout_s=5)
            except TimeoutError:
                continue
            now = time.perf_counter()
            if f is None:
                break
            shown.append(now)
            for q in range(reflected + 1, f.last_action_seq + 1):
                if q in sent and sent[q] - t_start >= WARMUP_S:
                    lat.append((now - sent[q]) * 1e3)
            reflected = max(reflected, f.last_action_seq)
        stop.set()
        th.join()
        s.close(drain=False)
    window = [t for t in shown if t - t_start >= WARMUP_S]
    fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else 0.0
    return _summary(fps, lat, len(shown))


def run_browser(driver, url: str, world: str, transport: str, args) -> dict:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    _wait(driver, f"return document.getElementById('play-{world}') !== null")
    driver.execute_script("document.getElementById('transport').value = arguments[0]", transport)
    driver.find_element(By.ID, f"play-{world}").click()
    _wait(driver, "return spatia.transport === arguments[0] && spatia.shownMeta !== null", transport)
    ActionChains(driver).key_down("w").perform()
    t0 = time.perf_counter()
    time.sleep(WARMUP_S)
    n0, l0 = driver.execute_script("return [spatia.framesShown, spatia.latencies.length]")
    t1 = time.perf_counter()
    time.sleep(max(0.0, args.seconds - (t1 - t0)))
    n1, lat = driver.execute_script("return [spatia.framesShown, spatia.latencies]")
    t2 = time.perf_counter()
    rtp = driver.execute_script(
        "if (!spatia.pc) return null; return spatia.pc.getStats().then(st => { let r = null; st.forEach(x => {"
        " if (x.type === 'inbound-rtp' && x.kind === 'video') r = {received: x.framesReceived, decoded: "
        "x.framesDecoded, dropped: x.framesDropped, jitter_buffer_ms: 1000 * x.jitterBufferDelay / "
        "Math.max(x.jitterBufferEmittedCount, 1)}; }); return r; })")
    ActionChains(driver).key_up("w").perform()
    if args.screenshot and transport == "webrtc":
        time.sleep(0.5)
        driver.save_screenshot(str(args.screenshot))
    driver.execute_script("spatia.stop()")
    used = driver.execute_script("return spatia.transport")
    result = _summary((n1 - n0) / (t2 - t1), lat[l0:], n1)
    result["transport"] = used
    if rtp:
        result["inbound_rtp"] = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in rtp.items()}
    return result


def run_player(target: str, world: str, args) -> dict:
    """The pygame player (client/player.py, default config: 30 fps) with W held, SDL's dummy video driver; its
    60 Hz loop as ``Player.run`` has it. Latency: action sent -> first frame *shown* that applied it."""
    import os

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import pygame

    from spatia.client.api import WorldClient
    from spatia.client.player import Player, PlayerConfig

    pygame.init()
    with WorldClient(target) as c:
        player = Player(c, world, PlayerConfig(width=args.width, height=args.height, record=False,
                                               show_minimap=True), screen=pygame.Surface((960, 540)))
        player.open()
        player.held.add("w")
        clock = pygame.time.Clock()
        t0 = time.perf_counter()
        n0 = l0 = None
        t1 = t0
        try:
            while time.perf_counter() - t0 < args.seconds:
                player.tick(clock.tick(60) / 1000.0)
                if n0 is None and time.perf_counter() - t0 >= WARMUP_S:
                    n0, l0, t1 = player.frames_shown, len(player.shown_latencies_ms), time.perf_counter()
            n1, lat, t2 = player.frames_shown, player.shown_latencies_ms[l0:], time.perf_counter()
        finally:
            player.held.clear()
            player.close()
            pygame.quit()
    return _summary((n1 - n0) / (t2 - t1), lat, n1) | {"player_fps_config": player.config.fps}


def _wait(driver, script, *a, timeout_s=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if driver.execute_script(script, *a):
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out: {script}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--screenshot", type=Path, help="save a screenshot of the page (WebRTC run) here")
    p.add_argument("--player", action="store_true",
                   help="measure the pygame player (SDL dummy driver) against the gRPC client instead of the browser")
    args = p.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    from spatia.client.api import WorldClient
    from spatia.client.web.app import WebConfig, running_web_app
    from spatia.client.web.browser import chrome

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [sys.executable, "-m", "spatia.cli", "serve", "--port", "0", "--port-file", str(port_file),
             "--data-dir", str(Path(tmp) / "data")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not port_file.exists():
                if server.poll() is not None:
                    raise SystemExit("server exited at start")
                time.sleep(0.1)
            target = f"127.0.0.1:{int(port_file.read_text())}"
            with WorldClient(target) as c:
                for w in ("g", "p") if args.player else ("g", "r", "s"):
                    c.create_scene("room", 0, args.width, args.height, world_id=w)
            log(f"server at {target}; grpc client for {args.seconds} s")
            grpc_result = run_grpc(target, "g", args)
            if args.player:
                log("pygame player")
                pygame_result = run_player(target, "p", args)
                emit({"name": "web-player", "sizes": {"width": args.width, "height": args.height,
                                                      "seconds": args.seconds, "warmup_s": WARMUP_S,
                                                      "generator": "geometric"},
                      "pygame": pygame_result, "grpc": grpc_result, "median_ms": pygame_result["p50_ms"],
                      "baseline_median_ms": grpc_result["p50_ms"]})
                return
            with running_web_app(WebConfig(server=target, port=0, grace_s=0.5)) as web:
                driver = chrome(window=(1100, 760))
                try:
                    log("browser, WebRTC")
                    rtc = run_browser(driver, web.url, "r", "webrtc", args)
                    log("browser, WebSocket + JPEG")
                    ws = run_browser(driver, web.url, "s", "ws", args)
                finally:
                    driver.quit()
        finally:
            server.terminate()
            server.wait(timeout=60)
    emit({
        "name": "web",
        "sizes": {"width": args.width, "height": args.height, "seconds": args.seconds, "tick_hz": TICK_HZ,
                  "warmup_s": WARMUP_S, "generator": "geometric", "jpeg_quality": 90},
        "webrtc": rtc, "websocket": ws, "grpc": grpc_result,
        "webrtc_fps_ratio": round(rtc["fps"] / grpc_result["fps"], 2) if grpc_result["fps"] else None,
        "webrtc_p95_minus_grpc_ms": round(rtc["p95_ms"] - grpc_result["p95_ms"], 1),
        "median_ms": rtc["p50_ms"], "baseline_median_ms": grpc_result["p50_ms"],
    })


if __name__ == "__main__":
    main()
