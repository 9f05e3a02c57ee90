"""The browser player against the Python gRPC client: sustained fps and key -> frame latency (p50 / p95).

One server (``spatia serve``, geometric generator) and one web app (``spatia web``, its own process, as deployed)
run in subprocesses; headless Chromium (Debian chromium + chromium-driver, Selenium) opens the page at
``--width x --height``. Three paths play the same scene with W held, one action per tick (30 Hz):

- ``webrtc``: the page over WebRTC (aiortc VP8 track); latency to the first *presented* frame whose pose reflects
  the action (the frame's RTP timestamp from ``requestVideoFrameCallback`` mapped to its metadata on the data
  channel);
- ``websocket``: the page over the WebSocket + JPEG fallback (forced); latency to the frame decoded and drawn;
- ``grpc``: the Python gRPC client (``client.api.PlaySession``), the baseline; latency to the frame's arrival
  (decoded to numpy).

So that a shared machine's load falls on all three alike, they run in ``--rounds`` rounds of ``--seconds`` each,
in a rotated order (round r starts with path r mod 3), each round on a fresh world of the same scene that was first
played 6 frames untimed by the gRPC client (the world's first-frame set-up and numba's compilation are not
measured); before the rounds each browser plays one short untimed WebRTC (and WebSocket) session, so that a
fresh Chromium's first connection is no round's figure. ``fps`` = frames shown per second over all rounds (after
each round's first second); latencies pool all rounds. Each path also reports where frames went (arrived /
decoded / presented) and the CPU seconds each process used per second of its rounds (server, web app, Chromium,
this process = the gRPC client), with the 1-min load average: on a 2-core machine the engine is CPU-bound, so a
client's CPU is frames the server does not make.

    python benchmarks/web.py [--rounds 3] [--seconds 6] [--width 640 --height 360] [--screenshot docs/web.png]
    python benchmarks/web.py --player [--seconds 10]   # the pygame player instead of the browser
"""

from __future__ import annotations

import argparse
import os
import socket
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
FIRST_SESSION_S = 3.0  # each browser's first WebRTC / WebSocket session, before the rounds (``warm_up_browsers``)
PREWARM_FRAMES = 6
# On a cold numba cache (a fresh clone) the server compiles the fill's kernels on its first frame: 1-2 min on 2 cores.
PREWARM_TIMEOUT_S = 300.0
PATHS = ("grpc", "webrtc", "websocket")
# More WebRTC paths, each through a web app of its own on the same server (chosen with --paths): the same page
# over WebRTC with one setting changed, so a setting is measured against the default in the same rounds.
VARIANTS = {
    "webrtc_h264": ["--video-codec", "h264"],  # H.264 (x264 ultrafast) instead of VP8
    "webrtc_jpeg": ["--server-frames", "jpeg"],  # the server's JPEG (decoded here) instead of RAW frames
    "webrtc_base": None,  # the web app of another source tree (--baseline-tree): before / after in one run
    "webrtc_chrome": [],  # the default web app, in a second Chromium with --chrome-variant-flags added
    "webrtc_smooth": ["--playout-delay-ms", "off"],  # no playout delay asked: the browser's jitter buffer decides
}


def tree_env(tree: Path, tmp: Path) -> tuple[dict, Path]:
    """An environment and a working directory in which ``python -m spatia.cli`` imports ``spatia`` from another
    checkout ``tree`` (the repository maps spatia.world -> world/ etc., pyproject's package-dir): a directory of
    links in that layout, the working directory (``-m`` puts it first on sys.path; this checkout's own ``spatia/``
    there would win, and its editable install maps the rest here) and first on PYTHONPATH."""
    root = tmp / "baseline-tree" / "spatia"
    root.mkdir(parents=True)
    for entry in (tree / "spatia").iterdir():
        (root / entry.name).symlink_to(entry)
    for sub in ("world", "model", "server", "client", "proto"):
        (root / sub).symlink_to(tree / sub)
    return dict(os.environ, PYTHONPATH=str(root.parent)), root.parent


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def _summary(fps: float, lat: list[float], frames: int) -> dict:
    return {"fps": round(fps, 2), "p50_ms": round(_pct(lat, 50), 1), "p95_ms": round(_pct(lat, 95), 1),
            "frames": frames, "latency_samples": len(lat)}


# ---- CPU per process (Linux /proc) ------------------------------------------------------------------------------

_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far: user + system)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        out[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK)
    return out


def _tree_cpu_s(table: dict[int, tuple[int, float]], root: int) -> float:
    """CPU seconds of ``root`` and its live descendants (a process that exited in between is not counted)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def _chromium_kind(pid: int) -> str:
    """A Chromium process's role from its command line (``--type=renderer``, ``gpu-process``, ``utility`` with
    its ``--utility-sub-type``; no type: the browser process; chromedriver itself)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").replace("\0", " ").split()  # children rewrite theirs
    except OSError:
        return "gone"
    if args and args[0].endswith("chromedriver"):
        return "chromedriver"
    kind = next((a.split("=", 1)[1] for a in args if a.startswith("--type=")), "browser")
    sub = next((a.split("=", 1)[1].rsplit(".", 1)[-1] for a in args if a.startswith("--utility-sub-type=")), "")
    return f"{kind}:{sub}" if sub else kind


class CpuMeter:
    """CPU seconds per wall second of named process trees between ``start`` and ``stop``; the ``chromium`` tree
    also by process role (``chromium.renderer``, ``chromium.gpu-process``, ...)."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.own = os.getpid()
        self._kinds: dict[int, str] = {}

    def _sample(self) -> dict[str, float]:
        table = _proc_table()
        out = {name: _tree_cpu_s(table, pid) for name, pid in self.roots.items()}
        # this process without its children (server, web app and the browser are counted on their own)
        out["benchmark"] = table.get(self.own, (0, 0.0))[1]
        if "chromium" in self.roots:
            children: dict[int, list[int]] = {}
            for pid, (ppid, _) in table.items():
                children.setdefault(ppid, []).append(pid)
            todo = [self.roots["chromium"]]
            while todo:
                pid = todo.pop()
                todo.extend(children.get(pid, ()))
                if pid in table:
                    kind = self._kinds.setdefault(pid, _chromium_kind(pid))
                    out[f"chromium.{kind}"] = out.get(f"chromium.{kind}", 0.0) + table[pid][1]
        return out

    def start(self) -> None:
        self._t0, self._c0 = time.perf_counter(), self._sample()

    def stop(self) -> dict[str, float]:
        dt, c1 = time.perf_counter() - self._t0, self._sample()
        return {k: (c1[k] - self._c0.get(k, 0.0)) / dt for k in sorted(set(c1) | set(self._c0))
                if k in c1}


# ---- the three paths --------------------------------------------------------------------------------------------

def prewarm(target: str, world: str, args) -> None:
    """Play ``PREWARM_FRAMES`` frames untimed (W held) so the measured part starts on a world already set up."""
    from spatia.client.api import WorldClient

    with WorldClient(target) as c, c.play(world, fps=TICK_HZ, width=args.width, height=args.height,
                                          jpeg_quality=90, record=False) as s:
        got = 0
        while got < PREWARM_FRAMES:
            s.send(move_forward=1.0, dt_s=1 / TICK_HZ)
            try:
                s.next_frame(timeout_s=PREWARM_TIMEOUT_S)
                got += 1
            except TimeoutError:
                raise SystemExit(f"pre-warming world {world}: no frame within {PREWARM_TIMEOUT_S:.0f} s") from None
        s.close(drain=True)  # the server has released the world when the stream ends


def run_grpc(target: str, world: str, args, meter: "CpuMeter | None" = None) -> dict:
    from spatia.client.api import WorldClient

    with WorldClient(target) as c, c.play(world, fps=TICK_HZ, width=args.width, height=args.height,
                                          jpeg_quality=90, record=args.record) as s:
        sent: dict[int, float] = {}
        sent_wall_ms: dict[int, float] = {}  # the same, wall clock (the server's frame times are wall clock)
        stop = threading.Event()

        def sender():
            t0 = time.perf_counter()
            k = 0
            while not stop.is_set():
                seq = s.send(move_forward=1.0, dt_s=1 / TICK_HZ)
                sent[seq], sent_wall_ms[seq] = time.perf_counter(), time.time() * 1e3
                k += 1
                time.sleep(max(0.0, t0 + k / TICK_HZ - time.perf_counter()))  # absolute schedule

        th = threading.Thread(target=sender, daemon=True)
        t_start = time.perf_counter()
        th.start()
        lat, shown, reflected, stages = [], [], 0, []
        metering = False
        while time.perf_counter() - t_start < args.seconds:
            if meter is not None and not metering and time.perf_counter() - t_start >= WARMUP_S:
                meter.start()  # CPU over the measured window only, like the frames
                metering = True
            try:
                f = s.next_frame(timeout_s=max(0.1, args.seconds - (time.perf_counter() - t_start)))
            except TimeoutError:
                continue
            now = time.perf_counter()
            if f is None:
                break
            shown.append(now)
            q = f.last_action_seq
            if q > reflected and q in sent and sent[q] - t_start >= WARMUP_S:  # the page's stages' up + fwd + server
                stages.append({"newest_ms": (now - sent[q]) * 1e3,
                               "gen_ms": f.server_time_ns / 1e6 - sent_wall_ms[q],
                               "down_ms": f.received_ns / 1e6 - f.server_time_ns / 1e6})
            for q in range(reflected + 1, f.last_action_seq + 1):
                if q in sent and sent[q] - t_start >= WARMUP_S:
                    lat.append((now - sent[q]) * 1e3)
            reflected = max(reflected, f.last_action_seq)
        cpu = meter.stop() if metering else {}
        stop.set()
        th.join()
        s.close(drain=False)
    window = [t for t in shown if t - t_start >= WARMUP_S]
    return {"frames_shown": len(window), "window_s": args.seconds - WARMUP_S, "latencies_ms": lat,
            "frames_arrived": len(window), "cpu_s_per_s": cpu, "stages": stages}


COUNTERS = ("return {shown: spatia.framesShown, lat: spatia.latencies.length, arrived: spatia.framesArrived, "
            "stages: spatia.stages.length, "
            "rvfc: spatia.rvfcCalls, presented: spatia.presentedFrames, "
            "quality: (() => { const v = document.getElementById('video'); if (v.hidden || !v.getVideoPlaybackQuality) "
            "return null; const q = v.getVideoPlaybackQuality(); return {total: q.totalVideoFrames, "
            "dropped: q.droppedVideoFrames}; })()}")
RTP_STATS = ("if (!spatia.pc) return null; return spatia.pc.getStats().then(st => { let r = null; st.forEach(x => {"
             " if (x.type === 'inbound-rtp' && x.kind === 'video') r = {received: x.framesReceived, decoded: "
             "x.framesDecoded, dropped: x.framesDropped, decode_ms: 1000 * (x.totalDecodeTime || 0), "
             "jitter_buffer_s: x.jitterBufferDelay, jitter_emitted: x.jitterBufferEmittedCount, "
             "bytes: x.bytesReceived}; }); return r; })")


def run_browser(driver, url: str, world: str, transport: str, args, meter: "CpuMeter") -> dict:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    _wait(driver, f"return document.getElementById('play-{world}') !== null")
    driver.execute_script("document.getElementById('transport').value = arguments[0]; "
                          "const r = document.getElementById('record'); if (r) r.checked = arguments[1];",
                          transport, bool(args.record))
    driver.find_element(By.ID, f"play-{world}").click()
    _wait(driver, "return spatia.transport === arguments[0] && spatia.shownMeta !== null", transport)
    ActionChains(driver).key_down("w").perform()
    t0 = time.perf_counter()
    time.sleep(WARMUP_S)
    c0 = driver.execute_script(COUNTERS)
    r0 = driver.execute_script(RTP_STATS)
    t1 = time.perf_counter()
    meter.start()  # CPU over the measured window only, like the frames
    time.sleep(max(0.0, args.seconds - (t1 - t0)))
    c1 = driver.execute_script(COUNTERS)
    t2 = time.perf_counter()
    cpu = meter.stop()
    r1 = driver.execute_script(RTP_STATS)
    lat = driver.execute_script("return spatia.latencies")[c0["lat"]:]
    stages = driver.execute_script("return spatia.stages")[c0["stages"]:]
    ActionChains(driver).key_up("w").perform()
    if args.screenshot and transport == "webrtc" and not args.screenshot.exists():
        time.sleep(0.5)
        driver.save_screenshot(str(args.screenshot))
    used = driver.execute_script("return spatia.transport")
    driver.execute_script("spatia.stop()")
    if used != transport:
        raise SystemExit(f"the page used {used!r}, not {transport!r}")
    phases = driver.execute_script("return spatia.phases")  # ms after the click: offer, answer, connected, frame
    out = {"frames_shown": c1["shown"] - c0["shown"], "window_s": t2 - t1, "latencies_ms": lat,
           "phases_ms": phases,
           "frames_arrived": c1["arrived"] - c0["arrived"], "stages": stages, "cpu_s_per_s": cpu}
    if transport == "webrtc":
        out["rvfc_calls"] = c1["rvfc"] - c0["rvfc"]
        out["presented"] = c1["presented"] - c0["presented"]
        if c0["quality"] and c1["quality"]:
            out["playback_total"] = c1["quality"]["total"] - c0["quality"]["total"]
            out["playback_dropped"] = c1["quality"]["dropped"] - c0["quality"]["dropped"]
        if r0 and r1:
            out["rtp_received"] = r1["received"] - r0["received"]
            out["rtp_decoded"] = r1["decoded"] - r0["decoded"]
            out["rtp_dropped"] = (r1["dropped"] or 0) - (r0["dropped"] or 0)
            n = max(r1["decoded"] - r0["decoded"], 1)
            out["decode_ms_per_frame"] = (r1["decode_ms"] - r0["decode_ms"]) / n
            out["rtp_kbit_s"] = 8e-3 * (r1["bytes"] - r0["bytes"]) / (t2 - t1)
            emitted = max(r1["jitter_emitted"] - r0["jitter_emitted"], 1)
            out["jitter_buffer_ms"] = 1e3 * (r1["jitter_buffer_s"] - r0["jitter_buffer_s"]) / emitted
    return out


def warm_up_browsers(target: str, webs: dict, drivers: dict, paths: list[str], args) -> list[dict]:
    """One short session per browser and transport before the rounds, not in the rounds' figures: a fresh
    Chromium's first WebRTC connection (its codec and media pipeline set up, the page compiled) is what a user's
    first seconds cost, reported on its own (``warm_up``: fps and latency over its last ``FIRST_SESSION_S`` - 1 s)."""
    from spatia.client.api import WorldClient

    short = argparse.Namespace(**vars(args))
    short.seconds, short.screenshot = FIRST_SESSION_S, None
    out = []
    for name, drv in drivers.items():
        for transport in ("webrtc", "ws"):
            if transport == "ws" and "websocket" not in paths:
                continue
            world = f"warm-{name}-{transport}"
            with WorldClient(target) as c:
                c.create_scene("room", 0, args.width, args.height, world_id=world)
            prewarm(target, world, args)
            res = run_browser(drv, webs["default"][1], world, transport, short, CpuMeter({}))
            out.append({"browser": name, "transport": transport,
                        "fps": round(res["frames_shown"] / res["window_s"], 2),
                        "p50_ms": round(_pct(res["latencies_ms"], 50), 1),
                        "p95_ms": round(_pct(res["latencies_ms"], 95), 1),
                        "start_ms": {k: round(v, 1) for k, v in (res.get("phases_ms") or {}).items()}})
            log(f"warm-up ({name} browser, {transport}): {out[-1]}")
            time.sleep(0.6)  # the web app closes the session after its 0.5 s grace
    return out


def aggregate(rounds: list[dict]) -> dict:
    """Pool a path's rounds: fps = frames shown / seconds measured; latency percentiles over every sample."""
    shown = sum(r["frames_shown"] for r in rounds)
    secs = sum(r["window_s"] for r in rounds)
    lat = [v for r in rounds for v in r["latencies_ms"]]
    out = _summary(shown / secs if secs else 0.0, lat, shown)
    out["arrived_fps"] = round(sum(r["frames_arrived"] for r in rounds) / secs, 2) if secs else 0.0
    for key in ("rvfc_calls", "presented", "playback_total", "playback_dropped", "rtp_received", "rtp_decoded",
                "rtp_dropped"):
        if all(key in r for r in rounds):
            out[key] = sum(r[key] for r in rounds)
    for key in ("decode_ms_per_frame", "rtp_kbit_s", "jitter_buffer_ms"):
        if all(key in r for r in rounds):
            out[key] = round(sum(r[key] for r in rounds) / len(rounds), 1)
    stages = [st for r in rounds for st in r.get("stages", ())]
    if stages:  # where a shown frame's time went after the web app had it (app.js ``stages``), p50 / p95 ms
        out["stages_ms"] = {k: [round(_pct(v, 50), 1), round(_pct(v, 95), 1)] for k in
                            ("total_ms", "wait_ms", "paced_ms", "wire_ms", "encode_ms", "net_ms", "show_ms",
                             "up_ms", "fwd_ms", "server_ms", "gen_ms", "down_ms", "newest_ms")
                            if (v := [st[k] for st in stages if st.get(k) is not None])}
    cpu = [r for r in rounds if r.get("cpu_s_per_s")]
    if cpu:
        keys = sorted({k for r in cpu for k in r["cpu_s_per_s"]})
        out["cpu_s_per_s"] = {k: round(sum(r["cpu_s_per_s"].get(k, 0.0) for r in cpu) / len(cpu), 2) for k in keys}
        # CPU ms each process spent per frame shown (the measured windows of all rounds pooled): what a path costs
        # the machine per frame, which moves less with the load than fps does
        shown_cpu = sum(r["frames_shown"] for r in cpu)
        out["cpu_ms_per_shown_frame"] = {
            k: round(1e3 * sum(r["cpu_s_per_s"].get(k, 0.0) * r["window_s"] for r in cpu) / max(shown_cpu, 1), 1)
            for k in keys}
    out["rounds"] = [{"fps": round(r["frames_shown"] / r["window_s"], 2),
                      "p50_ms": round(_pct(r["latencies_ms"], 50), 1), "p95_ms": round(_pct(r["latencies_ms"], 95), 1),
                      "load_1min": r.get("load_1min")}
                     | ({"start_ms": {k: round(v, 1) for k, v in r["phases_ms"].items()}} if r.get("phases_ms") else {})
                     for r in rounds]
    return out


def run_player(target: str, world: str, args) -> dict:
    """The pygame player (client/player.py, default config: 30 fps) with W held, SDL's dummy video driver; its
    60 Hz loop as ``Player.run`` has it. Latency: action sent -> first frame *shown* that applied it."""
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(proc: subprocess.Popen, port: int, what: str, timeout_s: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at start (code {proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout_s:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="per path and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--paths", default=",".join(PATHS),
                   help=f"comma-separated, of {','.join(PATHS + tuple(VARIANTS))}")
    p.add_argument("--baseline-tree", type=Path,
                   help="a checkout (e.g. `git worktree add /tmp/base main`) whose web app runs path webrtc_base")
    p.add_argument("--chrome-variant-flags", default="",
                   help="space-separated Chromium flags for path webrtc_chrome (a second browser with them added)")
    p.add_argument("--web-log", type=Path, help="a folder for each web app's log (NAME.log)")
    p.add_argument("--record", action="store_true",
                   help="every path records on the server (default: none does, as the gRPC baseline never did)")
    p.add_argument("--screenshot", type=Path, help="save a screenshot of the page (first WebRTC round) here")
    p.add_argument("--player", action="store_true",
                   help="measure the pygame player (SDL dummy driver) against the gRPC client instead of the browser")
    p.add_argument("--collision", action="store_true", help="the served camera collides with walls (world/collision.py); off by default: this walk meets walls, where a camera held against one reveals nothing new and flatters the figures, and earlier runs walked without it")
    args = p.parse_args()
    os.environ["SPATIA_PLAY_COLLISION"] = "1" if args.collision else "0"  # spatia serve --play-collision
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if not paths or set(paths) - set(PATHS) - set(VARIANTS):
        p.error(f"--paths: choose from {','.join(PATHS + tuple(VARIANTS))}")
    if ("webrtc_base" in paths) != (args.baseline_tree is not None):
        p.error("path webrtc_base and --baseline-tree go together")
    if args.baseline_tree is not None and not (args.baseline_tree / "spatia" / "cli.py").is_file():
        p.error(f"--baseline-tree {args.baseline_tree}: no spatia/cli.py there")
    if args.rounds < 1 or args.seconds <= WARMUP_S:
        p.error(f"--rounds must be >= 1 and --seconds > {WARMUP_S}")
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    from spatia.client.api import WorldClient

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            port = _free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "spatia.cli", "serve", "--port", str(port),
                 "--data-dir", str(Path(tmp) / "data")],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(server)
            _wait_port(server, port, "spatia serve")
            target = f"127.0.0.1:{port}"
            if args.player:
                with WorldClient(target) as c:
                    for w in ("g", "p"):
                        c.create_scene("room", 0, args.width, args.height, world_id=w)
                log(f"server at {target}; grpc client for {args.seconds} s")
                grpc_result = run_grpc(target, "g", args)
                grpc_result = aggregate([grpc_result | {"load_1min": round(os.getloadavg()[0], 1)}])
                log("pygame player")
                pygame_result = run_player(target, "p", args)
                emit({"name": "web-player", "sizes": {"width": args.width, "height": args.height,
                                                      "seconds": args.seconds, "warmup_s": WARMUP_S,
                                                      "generator": "geometric"},
                      "pygame": pygame_result, "grpc": grpc_result, "median_ms": pygame_result["p50_ms"],
                      "baseline_median_ms": grpc_result["p50_ms"]})
                return
            webs: dict[str, tuple[subprocess.Popen, str]] = {}  # web app name -> (process, url)
            for name in ["default"] + [q for q in paths if q in VARIANTS and q != "webrtc_chrome"]:
                web_port = _free_port()
                extra = [] if name == "default" else (VARIANTS[name] or [])
                env, cwd = tree_env(args.baseline_tree.resolve(), Path(tmp)) if name == "webrtc_base" else (None, ROOT)
                web = subprocess.Popen([sys.executable, "-m", "spatia.cli", "web", "--server", target, "--port",
                                        str(web_port), "--grace", "0.5", *extra], cwd=cwd, env=env,
                                       stdout=subprocess.DEVNULL,
                                       stderr=open(args.web_log / f"{name}.log", "w") if args.web_log
                                       else subprocess.DEVNULL)
                procs.append(web)
                _wait_port(web, web_port, f"spatia web ({name})")
                webs[name] = (web, f"http://127.0.0.1:{web_port}")
            from spatia.client.web.browser import chrome

            driver = chrome(window=(1100, 760))
            drivers = {"default": driver}
            try:
                if "webrtc_chrome" in paths:
                    drivers["webrtc_chrome"] = chrome(window=(1100, 760), extra_flags=args.chrome_variant_flags.split())
                results: dict[str, list[dict]] = {k: [] for k in paths}
                warm_up = warm_up_browsers(target, webs, drivers, paths, args)
                for r in range(args.rounds):
                    order = paths[r % len(paths):] + paths[: r % len(paths)]
                    with WorldClient(target) as c:
                        for path in order:
                            c.create_scene("room", 0, args.width, args.height, world_id=f"{path}-{r}")
                    for path in order:
                        world = f"{path}-{r}"
                        web, url = webs[path if path in VARIANTS and path != "webrtc_chrome" else "default"]
                        drv = drivers.get(path, driver)
                        meter = CpuMeter({"server": server.pid, "web_app": web.pid,
                                          "chromium": drv.service.process.pid})
                        prewarm(target, world, args)
                        log(f"round {r + 1}/{args.rounds}: {path} (load {os.getloadavg()[0]:.1f})")
                        load0 = os.getloadavg()[0]
                        if path == "grpc":
                            res = run_grpc(target, world, args, meter)
                        else:
                            res = run_browser(drv, url, world, "ws" if path == "websocket" else "webrtc", args,
                                              meter)
                        res["load_1min"] = round((load0 + os.getloadavg()[0]) / 2, 1)
                        results[path].append(res)
                        time.sleep(0.6)  # the web app closes the session after its 0.5 s grace
            finally:
                for drv in drivers.values():
                    drv.quit()
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in reversed(procs):
                proc.wait(timeout=60)
    out = {k: aggregate(v) for k, v in results.items()}
    result = {
        "name": "web",
        "sizes": {"width": args.width, "height": args.height, "seconds": args.seconds, "rounds": args.rounds,
                  "chrome_variant_flags": args.chrome_variant_flags, "tick_hz": TICK_HZ, "warmup_s": WARMUP_S, "generator": "geometric", "jpeg_quality": 90,
                  "record": bool(args.record), "load_1min_end": round(os.getloadavg()[0], 1)},
        **out,
        "warm_up": warm_up,
    }
    if "webrtc" in out and "grpc" in out:
        g, w = out["grpc"], out["webrtc"]
        result["webrtc_fps_ratio"] = round(w["fps"] / g["fps"], 2) if g["fps"] else None
        result["webrtc_p95_minus_grpc_ms"] = round(w["p95_ms"] - g["p95_ms"], 1)
        result["targets_met"] = bool(g["fps"] and w["fps"] >= 0.9 * g["fps"] and w["p95_ms"] <= g["p95_ms"] + 40)
        result["median_ms"], result["baseline_median_ms"] = w["p50_ms"], g["p50_ms"]
    emit(result)


if __name__ == "__main__":
    main()
