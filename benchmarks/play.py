"""Play sessions against a real server: sustained fps and action -> frame latency.

Input rates: `--tick-hz 30,60` runs each (session fps = input rate, so more than 30 fps can show); a baseline
run with the former policy (a clip's worth of poses queued, `max_pending_frames = 4`) follows on the same server.

A server runs in a subprocess (``spatia serve``, geometric generator); this process drives 1, then 4 concurrent
Play sessions with the asyncio client at ``--width x --height`` JPEG. Each session sends one action per input tick
(``--tick-hz``, on an absolute schedule, walking forward while turning) for ``--seconds``. Latency of an action =
time from sending it to receiving the first frame whose ``last_action_seq`` is at least its seq (the first frame
that applied it). ``fps`` = sustained frame rate: frames received over the span from the first to the last one
(one pose per action at ``--fps 30``, so a server that keeps up delivers ``tick_hz``).

Baseline (same run): the engine driven in-process (no gRPC, no encoding) on the same clip lengths: its per-frame
time ``baseline_median_ms`` bounds what the service can reach; ``median_ms`` is the service's p50 latency.

    python benchmarks/play.py [--seconds 20] [--width 640 --height 360] [--trace]

``--fill layout,legacy``: each fill on a server of its own, ``--rounds`` times, the order alternating (layout
legacy, legacy layout, ...), so both fills see the same minutes of the machine; ``compare`` gives each fill's fps
and p95 per session count (means over the rounds) and layout / legacy (issue 10 section 4: fps within 10 %, p95
no worse).

``--omp-compare ROUNDS``: instead of served play, the engine in-process (640x360 room, the server's play settings,
one-frame clips along the walk) in fresh processes, alternated ``ROUNDS`` times: OpenMP threads spinning between
parallel regions (libgomp's default: the baseline), sleeping (``OMP_WAIT_POLICY=PASSIVE``, what a server sets,
server/host.py) and one numba thread; per policy the clips' p50 / p95 / p99 ms. On a shared machine a spinning
thread takes a core from its own region's other thread.

``--trace``: the server records each session's per-frame timestamps (``ServerConfig.play_trace_dir``,
``server.session.PlayTrace``) and each run's result gets ``trace``: per stage of a frame (action received -> pose
integrated -> its clip started on the world's thread -> frame generated -> encoded -> in the outbox -> handed to
gRPC) the p50 / p95 ms, the clips' per-part times, and the longest gaps between frames; ``after_3s`` the same for
the frames and clips of each session's steady play (3 s on), ``first_3s`` of its start-up (the layout fill's fits,
first-use loads).
Each run also gives ``create_s``: the CreateWorld wall of each session's world (a layout-fill server answers it
once the world's layout and plane textures are fitted, server/service.py).
``--trace-keep DIR`` keeps the raw traces (one JSON lines file per session, named by fill, round, rate, sessions).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, log  # noqa: E402

CLIP = (4, 6, 2)  # default of --clip
# ``steady_p50_ms`` / ``steady_p95_ms``: the latencies of the actions sent this long or more after a session
# started, beside the whole session's (``p50_ms`` / ``p95_ms``, the figures the targets are read on): a
# layout-fill world's first seconds hold its fill's first-use work (the coarse fill, the first texture tiles), which
# a steady walk does not repeat
STEADY_AFTER_S = 3.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


async def _session(client, world_id: str, seconds: float, tick_hz: float, fps: float, clip, max_pending: int) -> dict:
    s = await client.play(world_id, clip=clip, fps=fps, record=False, max_pending_frames=max_pending)
    sent: dict[int, float] = {}
    sent_ns: dict[int, int] = {}  # wall clock, to compare with Frame.server_time_ns (same machine)
    server_ms: list[float] = []  # action sent -> its frame encoded on the server
    latencies: list[float] = []
    steady: list[float] = []  # the latencies of actions sent STEADY_AFTER_S or more into the session
    received = 0
    arrivals: list[float] = []
    stop = time.monotonic() + seconds
    t_first = time.monotonic()
    t_steady = time.perf_counter() + STEADY_AFTER_S

    async def sender():  # on an absolute schedule, so the offered rate is tick_hz however long a send takes
        tick = time.monotonic()
        while tick < stop and time.monotonic() < stop:
            try:
                seq = await s.send(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1.0 / tick_hz)
            except asyncio.InvalidStateError:  # the receiver's timeout at the end cancelled the call
                break
            sent[seq] = time.perf_counter()
            sent_ns[seq] = time.time_ns()
            tick += 1.0 / tick_hz
            await asyncio.sleep(max(tick - time.monotonic(), 0.0))

    async def receiver():
        nonlocal received
        answered = 0
        while time.monotonic() < stop:
            try:
                f = await asyncio.wait_for(s.next_frame(), timeout=max(stop - time.monotonic(), 0.01))
            except TimeoutError:
                break
            if f is None:
                break
            received += 1
            now = time.perf_counter()
            arrivals.append(now)
            for seq in range(answered + 1, f.last_action_seq + 1):
                if seq in sent:
                    latencies.append((now - sent[seq]) * 1e3)
                    if sent[seq] >= t_steady:
                        steady.append(latencies[-1])
                    server_ms.append((f.server_time_ns - sent_ns[seq]) / 1e6)
            answered = max(answered, f.last_action_seq)

    await asyncio.gather(sender(), receiver())
    wall = time.monotonic() - t_first
    await s._call.done_writing()
    s._call.cancel()
    dropped = s.stats[-1].poses_dropped if s.stats else 0
    held = s.stats[-1].held_fps if s.stats else 0.0
    # sustained fps: frames over the span from the first to the last one (a server that keeps up gives tick_hz)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    return {"frames": received, "wall_s": wall, "fps": (len(arrivals) - 1) / span, "latencies_ms": latencies,
            "steady_latencies_ms": steady, "server_ms": server_ms,
            "poses_dropped": dropped, "held_fps": held,
            "generate_ms": [x.generate_ms for x in s.stats], "update_ms": [x.update_ms for x in s.stats]}


def _stage_stats(values: list[float]) -> dict:
    return {"p50": round(_pct(values, 50) * 1e3, 1), "p95": round(_pct(values, 95) * 1e3, 1),
            "mean": round(statistics.mean(values) * 1e3, 1) if values else float("nan")}


STEADY_S = 3.0  # the trace's start-up / steady split: frames generated (clips started) before / after this (s)


def _trace_summary(paths: list[Path], span_s: tuple[float, float] | None = None) -> dict:
    """Where a served frame's time went (server side), from the sessions' ``PlayTrace`` files; with ``span_s``
    ``(from, to)``, only the frames generated and clips started in that span of their session (seconds)."""
    import json

    lo, hi = span_s if span_s is not None else (-math.inf, math.inf)
    frames, clips, gaps = [], [], []
    for path in paths:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        fr = [r for r in rows if r["kind"] == "frame" and lo <= r["generated"] < hi]
        cl = [r for r in rows if r["kind"] == "clip" and lo <= r["start"] < hi]
        frames += fr
        clips += cl
        gen = sorted(r["generated"] for r in fr)
        gaps += sorted(((b - a, round(a, 2)) for a, b in zip(gen, gen[1:])), reverse=True)[:3]
    stages = {
        "received_to_integrated": ("received", "integrated"),
        "integrated_to_clip_start": ("integrated", "clip_start"),  # waits for the clip in flight, then selection
        "clip_start_to_generated": ("clip_start", "generated"),  # conditioning + the clip's earlier frames
        "generated_to_encoded": ("generated", "encoded"),
        "encoded_to_queued": ("encoded", "queued"),  # worker -> event loop hand-off
        "queued_to_sent": ("queued", "sent"),
        "received_to_sent": ("received", "sent"),
    }
    out = {"sessions": len(paths), "frames": len(frames), "clips": len(clips)}
    for name, (a, b) in stages.items():
        out[name] = _stage_stats([r[b] - r[a] for r in frames if r.get(a) is not None and r.get(b) is not None])
    by_clip: dict = {}
    for r in frames:
        by_clip.setdefault((r["clip"], r["clip_start"]), []).append(r)
    first = [min(f["generated"] for f in fs) - start for (_, start), fs in by_clip.items()]
    per_frame = [(max(f["generated"] for f in fs) - min(f["generated"] for f in fs)) / (len(fs) - 1)
                 for fs in by_clip.values() if len(fs) > 1]
    out["clip"] = {
        "frames_mean": round(statistics.mean([c["frames"] for c in clips]), 2) if clips else 0,
        "wall": _stage_stats([c["end"] - c["start"] for c in clips]),
        "generate": _stage_stats([c["generate_s"] for c in clips]),
        "update": _stage_stats([c["update_s"] for c in clips]),
        "start_to_first_frame": _stage_stats(first),  # conditioning (renders, retrieval) + the first frame
        "between_frames": _stage_stats(per_frame),
        "skipped_mean": round(statistics.mean([c["skipped"] for c in clips]), 2) if clips else 0,
    }
    out["longest_gaps_s"] = [(round(g, 3), at) for g, at in sorted(gaps, reverse=True)[:6]]  # (gap, at s)
    if span_s is None:  # the start-up (the layout fill's fits, first-use loads) apart from steady play
        out[f"first_{STEADY_S:g}s"] = _trace_summary(paths, (0.0, STEADY_S))
        out[f"after_{STEADY_S:g}s"] = _trace_summary(paths, (STEADY_S, math.inf))
    return out


def _collect_traces(trace_dir: Path | None, seen: set, expected: int, keep: str | None = None,
                    tag: str = "") -> list[Path]:
    """The trace files of the sessions just ended (written as each session finishes, after the client left);
    copied into ``keep`` (if given) as ``TAG-NAME``."""
    if trace_dir is None:
        return []
    deadline = time.monotonic() + 30
    while True:
        new = sorted(p for p in trace_dir.glob("*.jsonl") if p not in seen)
        if len(new) >= expected or time.monotonic() > deadline:
            # a file appears when the server opens it and is read here only once its size stops changing (read at
            # once, a 1-session trace came back with its clips and none of its frames)
            sizes = None
            while time.monotonic() < deadline + 30:
                now = [p.stat().st_size for p in new]
                if now == sizes:
                    break
                sizes = now
                time.sleep(0.5)
            seen.update(new)
            if keep is not None:
                Path(keep).mkdir(parents=True, exist_ok=True)
                for p in new:
                    shutil.copy(p, Path(keep) / f"{tag}-{p.name}")
            return new
        time.sleep(0.2)


async def _run(target: str, n: int, args) -> list[dict]:
    from spatia.client.api import AsyncWorldClient

    async with AsyncWorldClient(target, timeout_s=600) as c:
        ids, create_s = [], []
        for i in range(n):
            wid = f"bench{getattr(args, 'world_prefix', '')}{n}-{i}"
            t0 = time.monotonic()  # CreateWorld's wall (a layout server answers once the world's fits are done)
            await c.create_scene(("room", "house", "courtyard", "room")[i % 4], seed=i, width=args.width,
                                 height=args.height, world_id=wid)
            create_s.append(time.monotonic() - t0)
            ids.append(wid)
        out = await asyncio.gather(*(
            _session(c, w, args.seconds, args.tick_hz, args.fps, args.clip, args.max_pending) for w in ids))
        return [{**r, "create_s": t} for r, t in zip(out, create_s)]


def _baseline(args) -> float:
    """Median per-frame ms of the engine alone (in-process, same clip lengths, no encoding, no gRPC)."""
    import numpy as np

    import spatia.server.host  # noqa: F401  -- the server's OpenMP settings (server/host.py): the engine as served
    from spatia.model import make_generator
    from spatia.server.config import ServerConfig
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    world = World.from_scene("room", 0, args.width, args.height)
    server = ServerConfig()
    engine = Engine(world, make_generator("geometric"), EngineConfig(
        clip=ClipConfig(*args.clip), keyframe_stride=server.play_keyframe_stride,
        reuse_references_within=server.play_reuse_references_within,
        reuse_references_clips=server.play_reuse_references_clips))
    poses = ActionIntegrator(world.current_c2w, ControlConfig(fps=args.fps)).run(
        [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1.0)] * 2)
    per_frame = []
    i = 0
    while i < len(poses):
        n = args.clip[0] if i == 0 else args.clip[1] - args.clip[2]
        t0 = time.perf_counter()
        for _ in engine.generate_clip(np.asarray(poses[i:i + n])):
            pass
        per_frame.append((time.perf_counter() - t0) * 1e3 / len(poses[i:i + n]))
        i += n
    return statistics.median(per_frame[1:] or per_frame)


def _engine_clip_ms(args) -> list[float]:
    """Wall ms of each one-frame clip of the in-process engine along the benchmark's walk (the first 30 untimed:
    numba's caches, the first retrieval), with the server's play settings and ``--fill``."""
    import numpy as np

    from spatia.model import make_generator
    from spatia.server.config import ServerConfig
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    world = World.from_scene("room", 0, args.width, args.height)
    server = ServerConfig()
    engine = Engine(world, make_generator("geometric", **({"fill": args.fill} if args.fill else {})), EngineConfig(
        clip=ClipConfig(*args.clip), keyframe_stride=server.play_keyframe_stride,
        reuse_references_within=server.play_reuse_references_within,
        reuse_references_clips=server.play_reuse_references_clips))
    poses = np.asarray(ActionIntegrator(world.current_c2w, ControlConfig(fps=30)).run(
        [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1 / 30)] * (30 + args.clips)))
    out = []
    for i in range(len(poses)):
        t0 = time.perf_counter()
        collections.deque(engine.generate_clip(poses[i : i + 1]), maxlen=0)  # pulling runs the memory update
        out.append((time.perf_counter() - t0) * 1e3)
    return out[30:]


def _omp_compare(args) -> dict:
    """``--omp-compare``: the policies in fresh processes (libgomp reads its settings once), alternated. The
    children do not import server/host.py (which sets passive waits), so each runs the policy its environment names."""
    import json

    policies = {"spin (libgomp default, baseline)": {}, "passive (server)": {"OMP_WAIT_POLICY": "PASSIVE"},
                "one thread": {"NUMBA_NUM_THREADS": "1"}}
    times: dict[str, list[float]] = {k: [] for k in policies}
    names = list(policies)
    for r in range(args.omp_compare):
        for name in (names if r % 2 == 0 else names[::-1]):
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            env.update(NUMBA_THREADING_LAYER="omp", **policies[name])
            log(f"round {r + 1}/{args.omp_compare}: {name}, load {os.getloadavg()[0]:.1f}")
            out = subprocess.run([sys.executable, __file__, "--engine-clips", "--clips", str(args.clips),
                                  "--width", str(args.width), "--height", str(args.height),
                                  *(["--fill", args.fill] if args.fill else [])],
                                 env=env, capture_output=True, text=True, check=True)
            times[name] += json.loads(out.stdout)
    return {name: {"clips": len(v), "p50_ms": round(_pct(v, 50), 1), "p95_ms": round(_pct(v, 95), 1),
                   "p99_ms": round(_pct(v, 99), 1), "mean_ms": round(statistics.mean(v), 1)}
            for name, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--tick-hz", default="30,60", help="actions per second sent by each client; a comma list "
                   "runs each (the session fps follows unless --fps is given)")
    p.add_argument("--clip", type=lambda v: tuple(int(x) for x in v.split(",")), default=CLIP,
                   help="first clip, clip, preceding frames (PlayStart.clip)")
    p.add_argument("--max-pending", type=int, default=0,
                   help="PlayStart.max_pending_frames: poses waiting beyond this are dropped, oldest first "
                        "(0: the server skips intermediate poses to keep latency within ~2 frame times)")
    p.add_argument("--fps", type=float, default=None, help="session output fps (camera time); default = tick rate")
    p.add_argument("--server-log", default=None, help="write the server's log here")
    p.add_argument("--no-queue-baseline", dest="queue_baseline", action="store_false",
                   help="skip the baseline run with the former policy (a clip's worth of poses queued)")
    p.add_argument("--fill", default=None, help="geometric generator's fill: layout, legacy, or both as a comma "
                   "list (each on a server of its own, alternated over --rounds, compared in the same run)")
    p.add_argument("--rounds", type=int, default=2, help="with two fills: rounds, each fill once a round, the "
                   "order alternating (A B, B A, ...)")
    p.add_argument("--sessions", default="1,4", help="comma list of concurrent session counts to run, of 1 and 4 "
                   "(e.g. 1: one session only, for quick A/B pairs on a shared machine)")
    p.add_argument("--trace", action="store_true",
                   help="record the server's per-frame timestamps and summarise where each run's time went")
    p.add_argument("--trace-keep", default=None, metavar="DIR",
                   help="with --trace: copy each session's raw trace (JSON lines) into DIR, named by fill and round")
    p.add_argument("--save-interval-s", type=float, default=None,
                   help="the server's snapshot interval (default: the server's own default)")
    p.add_argument("--omp-compare", type=int, default=0, metavar="ROUNDS",
                   help="compare OpenMP wait policies on the in-process engine instead (see the module doc)")
    p.add_argument("--clips", type=int, default=240, help="--omp-compare: one-frame clips per process")
    p.add_argument("--engine-clips", action="store_true", help=argparse.SUPPRESS)  # --omp-compare's child
    p.add_argument("--collision", action="store_true", help="the served camera collides with walls (world/collision.py); off by default: this walk meets walls, where a camera held against one reveals nothing new and flatters the figures, and earlier runs walked without it")
    p.add_argument("--commit-beside", choices=("on", "off"), default="on",
                   help="the server's play-commit-beside: each clip's memory update beside the next clip (on, the "
                        "default) or before it (off)")
    args = p.parse_args()
    os.environ["SPATIA_PLAY_COLLISION"] = "1" if args.collision else "0"  # spatia serve --play-collision
    os.environ["SPATIA_PLAY_COMMIT_BESIDE"] = args.commit_beside  # spatia serve --play-commit-beside
    if args.engine_clips:
        print(__import__("json").dumps(_engine_clip_ms(args)))
        return
    if args.omp_compare:
        t0, load0 = time.time(), os.getloadavg()
        res = _omp_compare(args)
        base = res["spin (libgomp default, baseline)"]
        emit({"name": "play_omp_wait", "sizes": {"width": args.width, "height": args.height, "clips": args.clips,
                                                  "rounds": args.omp_compare, "fill": args.fill or "default"},
              "policies": res, "median_ms": res["passive (server)"]["p50_ms"], "baseline_median_ms": base["p50_ms"],
              "wall_s": round(time.time() - t0, 1), "load_start": load0, "load": os.getloadavg()})
        return
    import logging

    import structlog

    # stdout carries only the JSON result
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))

    rates = [float(x) for x in str(args.tick_hz).split(",")]
    counts = {int(x) for x in str(args.sessions).split(",")}
    if not counts or not counts <= {1, 4}:
        raise SystemExit(f"--sessions: a comma list of 1 and 4, got {args.sessions!r}")
    fills = [None] if args.fill is None else args.fill.split(",")
    if not all(f in ("layout", "legacy") for f in fills) or len(set(fills)) != len(fills):
        raise SystemExit(f"--fill: layout, legacy or both (comma list), got {args.fill!r}")
    if len(fills) == 1:
        results = _serve(args, fills[0], rates, counts)
        fill_out: dict = {"fill": fills[0] or "default"}
    else:
        # every fill on a server of its own, alternated A B B A ... so that both see the same minutes of a machine
        # whose speed drifts; the first fill's runs are compared against the last's (layout / legacy)
        runs: dict = {f: [] for f in fills}
        for r in range(args.rounds):
            for f in (fills if r % 2 == 0 else fills[::-1]):
                log(f"round {r + 1}/{args.rounds}: fill {f}")
                runs[f].append({"load": os.getloadavg(), **_serve(args, f, rates, counts, r)})
        results = {"runs": runs, "compare": _compare(runs, fills, f"{rates[0]:g}hz")}
        fill_out = {"fill": fills, "rounds": args.rounds}
    log("baseline: engine in-process")
    args.fps = args.fps or rates[0]
    baseline = _baseline(args)
    first = results[f"{rates[0]:g}hz"] if len(fills) == 1 else results["runs"][fills[0]][0][f"{rates[0]:g}hz"]
    emit({
        "name": "play",
        "save_interval_s": args.save_interval_s if args.save_interval_s is not None else "server default",
        "commit_beside": args.commit_beside,
        "sizes": {"width": args.width, "height": args.height, "encoding": "jpeg q85", "clip": list(args.clip),
                  "max_pending": args.max_pending, "seconds": args.seconds, "tick_hz": rates,
                  "fps": "= tick_hz" if args.fps is None else args.fps, "generator": "geometric", **fill_out},
        **results,
        "median_ms": (first.get("sessions_1") or first["sessions_4"])["p50_ms"],
        "baseline_median_ms": round(baseline, 1),
        "baseline": "engine in-process per-frame ms (same clip lengths, no gRPC / encoding)",
        "cpu_count": os.cpu_count(), "load": os.getloadavg(),
    })


def _compare(runs: dict, fills: list[str], rate: str) -> dict:
    """Per session count: each fill's fps and p95 over its rounds (mean of the rounds; 4 sessions: the mean of the
    sessions' fps), and the first fill's over the second's (the issue's "fps within 10 %, p95 no worse")."""
    out = {}
    for key, fps_key in (("sessions_1", "fps"), ("sessions_4", "fps_mean")):
        per = {}
        for f in fills:
            rows = [r[rate][key] for r in runs[f] if key in r[rate]]
            if rows:
                per[f] = {"fps": [x[fps_key] for x in rows], "p95_ms": [x["p95_ms"] for x in rows],
                          "fps_mean": round(statistics.mean(x[fps_key] for x in rows), 2),
                          "p95_ms_mean": round(statistics.mean(x["p95_ms"] for x in rows), 1)}
        if len(per) == 2:
            a, b = (per[f] for f in fills)
            per[f"{fills[0]}_over_{fills[1]}"] = {"fps": round(a["fps_mean"] / b["fps_mean"], 3),
                                                  "p95": round(a["p95_ms_mean"] / b["p95_ms_mean"], 3)}
        out[key] = per
    return out


def _serve(args, fill: str | None, rates: list[float], counts: set[int], round_: int = 0) -> dict:
    """One server (``fill``: its generator's fill, None: its default) through the runs: per input rate, 1 then 4
    sessions (``counts``), then the queue baseline if asked; the results by rate."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        trace_dir = Path(tmp) / "trace" if args.trace else None
        seen: set = set()
        env = {**os.environ, **({"SPATIA_PLAY_TRACE_DIR": str(trace_dir)} if trace_dir else {})}
        server = subprocess.Popen(
            [sys.executable, "-m", "spatia.cli", "serve", "--port", "0", "--port-file", str(port_file),
             "--data-dir", str(Path(tmp) / "data"),
             *(["--fill", fill] if fill else []),
             *(["--save-interval-s", str(args.save_interval_s)] if args.save_interval_s is not None else [])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(args.server_log, "ab") if args.server_log
            else subprocess.DEVNULL, env=env,
        )
        try:
            while not port_file.exists():
                if server.poll() is not None:
                    raise SystemExit("server exited at start")
                time.sleep(0.1)
            target = f"127.0.0.1:{int(port_file.read_text())}"
            for k, hz in enumerate(rates):
                # input at hz and poses at the same rate (fps = hz), so more than 30 fps can show at 60 Hz
                run = argparse.Namespace(**{**vars(args), "tick_hz": hz, "fps": hz if args.fps is None else args.fps})
                run.world_prefix = f"r{k}"
                one = four = None
                if 1 in counts:
                    log(f"server at {target}; {hz:g} Hz input: 1 session for {args.seconds} s")
                    one = asyncio.run(_run(target, 1, run))[0]
                    trace_one = _collect_traces(trace_dir, seen, 1, args.trace_keep,
                                                f"{fill or 'default'}-r{round_}-{hz:g}hz-s1")
                if 4 in counts:
                    log(f"{hz:g} Hz input: 4 sessions")
                    four = asyncio.run(_run(target, 4, run))
                    trace_four = _collect_traces(trace_dir, seen, 4, args.trace_keep,
                                                 f"{fill or 'default'}-r{round_}-{hz:g}hz-s4")
                results[f"{hz:g}hz"] = _summary(one, four, run)
                if trace_dir is not None:
                    if one is not None:
                        results[f"{hz:g}hz"]["sessions_1"]["trace"] = _trace_summary(trace_one)
                    if four is not None:
                        results[f"{hz:g}hz"]["sessions_4"]["trace"] = _trace_summary(trace_four)
            if args.queue_baseline:
                # the policy before latency-bounded skipping, same server, same load: a clip's worth of poses
                # queues (max_pending_frames = 4, oldest dropped beyond), every queued pose is generated
                hz = rates[0]
                run = argparse.Namespace(**{**vars(args), "tick_hz": hz, "fps": hz if args.fps is None else args.fps,
                                            "max_pending": max(args.clip[0], args.clip[1] - args.clip[2])})
                run.world_prefix = "q"
                log(f"baseline policy (queue a clip's worth) at {hz:g} Hz: 1 then 4 sessions")
                one = asyncio.run(_run(target, 1, run))[0]
                four = asyncio.run(_run(target, 4, run))
                results[f"{hz:g}hz_queue_baseline"] = _summary(one, four, run)
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:  # a loaded machine: the results are in, the server need not stop kindly
                log("server did not stop within 60 s of SIGTERM: killed")
                server.kill()
                server.wait(timeout=60)
    return results


def _summary(one: dict | None, four: list[dict] | None, args) -> dict:
    out = {}
    if one is not None:
        out["sessions_1"] = _summary_one(one)
    if four is not None:
        out["sessions_4"] = _summary_four(four)
    return out


def _summary_one(one: dict) -> dict:
    lat1 = one["latencies_ms"]
    return {"fps": round(one["fps"], 2), "p50_ms": round(_pct(lat1, 50), 1),
            "p95_ms": round(_pct(lat1, 95), 1), "p99_ms": round(_pct(lat1, 99), 1),
            "max_ms": round(max(lat1, default=float("nan")), 1), "frames": one["frames"],
            "steady_p50_ms": round(_pct(one["steady_latencies_ms"], 50), 1),
            "steady_p95_ms": round(_pct(one["steady_latencies_ms"], 95), 1),
            "p50_to_server_frame_ms": round(_pct(one["server_ms"], 50), 1),
            "p95_to_server_frame_ms": round(_pct(one["server_ms"], 95), 1),
            "poses_dropped": one["poses_dropped"], "held_fps": one["held_fps"],
            "generate_ms_median": round(statistics.median(one["generate_ms"] or [float("nan")]), 1),
            "update_ms_median": round(statistics.median(one["update_ms"] or [float("nan")]), 1),
            "create_s": round(one["create_s"], 2)}


def _summary_four(four: list[dict]) -> dict:
    lat4 = [x for r in four for x in r["latencies_ms"]]
    steady4 = [x for r in four for x in r["steady_latencies_ms"]]
    fps4 = [r["fps"] for r in four]
    return {"fps_per_session": [round(f, 2) for f in fps4], "fps_mean": round(statistics.mean(fps4), 2),
            "fastest_over_slowest": round(max(fps4) / max(min(fps4), 1e-9), 2),
            "p50_ms": round(_pct(lat4, 50), 1), "p95_ms": round(_pct(lat4, 95), 1),
            "steady_p50_ms": round(_pct(steady4, 50), 1), "steady_p95_ms": round(_pct(steady4, 95), 1),
            "poses_dropped": [r["poses_dropped"] for r in four], "frames": [r["frames"] for r in four],
            "create_s": [round(r["create_s"], 2) for r in four]}


if __name__ == "__main__":
    main()
