"""What one served session's action -> frame latency would be if a part of its clips moved off the frame's path: a
model over measured clip times, to weigh a design before building it (docs/BENCHMARKS.md, sessions 23 and 24).

A model, not a measurement: the session loop of ``server/session.py`` replayed on clip times. Actions arrive every
1/``--tick-hz`` s; a clip starts once the world's thread is free and an action newer than the last answered one has
arrived, and draws the newest (one-frame clips, poses skipped as an interactive session skips them); its frame is
out ``generate`` + ``--send-ms`` after its start (JPEG, the outbox, loopback), and the thread is free again ``wall``
after its start (the memory update after the frame included). Every action the frame answers gets its latency (the
older ones waited longer), as ``play.py`` counts them. How close it comes to served play, and what it said:
docs/BENCHMARKS.md, session 24.

Clip times come from the engine in-process (play.py's walk from the room, the server's play settings, 640x360,
``--fill``, ``--clips`` one-frame clips after ``--warmup``; ``read_texels`` timed per clip), or with
``--from-trace DIR`` from a served session's ``PlayTrace`` files (``play.py --trace --trace-keep DIR``; no tile
times there). Rows (p50 / p95 / p99 ms, frames per second):

- ``as_measured``: the clip times as they are (``baseline_median_ms`` is its p50);
- ``update_beside_next_frame``: a clip's memory update runs beside the next frame (``wall`` = ``wall`` - update +
  1 ms): the design for the one-session p95 (BENCHMARKS, session 24);
- ``tile_reads_capped_3ms``: no clip's texture tile reads over 3 ms (in-process clip times only);
- ``both``; and each scaled by ``--served-factor`` (served clips run longer than in-process ones).

The update beside the next frame is modelled as free: the second core it would run on is shared with the
server's other threads, which the model does not see, so that row is a lower bound. Built since (session 25,
``EngineConfig.commit_beside_next_clip``, served one-session play's default), it moved the served p95 by ~4 ms where
this row said ~10: the clip made beside the update ran slower, its frame's parallel kernels sharing the two cores with
the update (docs/BENCHMARKS.md, session 25). The model replays clip times measured with each update in turn.

    python benchmarks/latency_model.py [--clips 400] [--tick-hz 30] [--from-trace DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, log  # noqa: E402


def replay(wall_s: list[float], generate_s: list[float], tick_hz: float, send_s: float) -> dict:
    """The session loop on these clip times: each action's latency (ms) to the first frame that applied it."""
    latencies: list[float] = []
    free = 0.0  # when the world's thread is free again
    answered = -1  # newest action a frame has applied
    for wall, gen in zip(wall_s, generate_s):
        start = max(free, (answered + 1) / tick_hz)  # free, and a newer action has arrived
        newest = int(start * tick_hz + 1e-9)
        sent = start + gen + send_s
        latencies += [(sent - a / tick_hz) * 1e3 for a in range(answered + 1, newest + 1)]
        answered, free = newest, start + wall
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 1), "p95_ms": round(q[94], 1), "p99_ms": round(q[98], 1),
            "fps": round(len(wall_s) / free, 2), "actions": len(latencies)}


def clips_in_process(args) -> list[dict]:
    """Per one-frame clip along play.py's walk: wall, generate, update and texture tile read seconds."""
    import numpy as np

    import spatia.server.host  # noqa: F401  -- the server's OpenMP settings
    from spatia.model import make_generator
    from spatia.model.fill.texture import synthesis
    from spatia.server.config import ServerConfig
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    tiles = collections.Counter()
    read_texels = synthesis.read_texels

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return read_texels(*a, **k)
        finally:
            tiles["s"] += time.perf_counter() - t0

    synthesis.read_texels = timed  # (the fill calls it through the module)
    server = ServerConfig()
    world = World.from_scene("room", 0, args.width, args.height)
    try:
        engine = Engine(world, make_generator("geometric", fill=args.fill), EngineConfig(
            clip=ClipConfig(4, 6, 2), keyframe_stride=server.play_keyframe_stride,
            reuse_references_within=server.play_reuse_references_within,
            reuse_references_clips=server.play_reuse_references_clips))
        n = args.warmup + args.clips
        poses = np.asarray(ActionIntegrator(world.current_c2w, ControlConfig(fps=args.tick_hz)).run(
            [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1 / args.tick_hz)] * n))
        rows = []
        for i in range(n):
            tiles.clear()
            t0 = time.perf_counter()
            collections.deque(engine.generate_clip(poses[i : i + 1]), maxlen=0)  # pulling runs the update
            if i >= args.warmup:
                st = engine.last_stats
                rows.append({"wall": time.perf_counter() - t0, "generate": st.generate_s, "update": st.update_s,
                             "tiles": tiles["s"]})
            if i % 100 == 0:
                log(f"clip {i} / {n}")
        return rows
    finally:
        synthesis.read_texels = read_texels
        world.close()


def clips_from_trace(directory: Path, skip_s: float) -> list[dict]:
    """The clips of every ``PlayTrace`` file in ``directory`` started ``skip_s`` or more into their session, in
    order (a session's start-up, the layout fill's first tiles, is left out as play.py's steady figures do)."""
    rows = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") == "clip" and r["start"] >= skip_s and r["frames"] == 1:
                rows.append({"wall": r["end"] - r["start"], "generate": r["generate_s"], "update": r["update_s"],
                             "tiles": None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fill", default="layout")
    ap.add_argument("--tick-hz", type=float, default=30.0, help="actions a second (and the walk's step)")
    ap.add_argument("--send-ms", type=float, default=2.5, help="frame out -> client: JPEG, outbox, loopback")
    ap.add_argument("--served-factor", type=float, default=1.2, help="served clips' time over in-process")
    ap.add_argument("--from-trace", type=Path, default=None, help="PlayTrace files of a served run instead")
    ap.add_argument("--skip-s", type=float, default=3.0, help="with --from-trace: leave out each session's start")
    args = ap.parse_args()
    rows = clips_from_trace(args.from_trace, args.skip_s) if args.from_trace else clips_in_process(args)
    if len(rows) < 20:
        raise SystemExit(f"only {len(rows)} one-frame clips to replay")
    wall = [r["wall"] for r in rows]
    gen = [r["generate"] for r in rows]
    beside = [w - u + 1e-3 for w, u in zip(wall, (r["update"] for r in rows))]  # the update off the thread's path
    variants = {"as_measured": (wall, gen), "update_beside_next_frame": (beside, gen)}
    if rows[0]["tiles"] is not None:
        cut = [max(r["tiles"] - 3e-3, 0.0) for r in rows]
        variants["tile_reads_capped_3ms"] = ([w - c for w, c in zip(wall, cut)], [g - c for g, c in zip(gen, cut)])
        variants["both"] = ([w - c for w, c in zip(beside, cut)], variants["tile_reads_capped_3ms"][1])
    send_s = args.send_ms / 1e3
    result = {name: replay(w, g, args.tick_hz, send_s) for name, (w, g) in variants.items()}
    if not args.from_trace:  # in-process times made as long as served ones
        f = args.served_factor
        result.update({f"{name}_x{f:g}": replay([x * f for x in w], [x * f for x in g], args.tick_hz, send_s)
                       for name, (w, g) in variants.items()})
    emit({"name": "latency_model", "median_ms": result["as_measured"]["p50_ms"],
          "baseline_median_ms": result["as_measured"]["p50_ms"],
          "baseline": "the clips as measured (the variants are models of changes not made)",
          "sizes": {"clips": len(rows), "tick_hz": args.tick_hz, "send_ms": args.send_ms,
                    "source": str(args.from_trace) if args.from_trace else f"in-process room {args.width}x"
                              f"{args.height} {args.fill}",
                    "clip_wall_ms": {"p50": round(statistics.median(wall) * 1e3, 1),
                                     "p95": round(statistics.quantiles(wall, n=20)[18] * 1e3, 1)}},
          "model": result})


if __name__ == "__main__":
    main()
