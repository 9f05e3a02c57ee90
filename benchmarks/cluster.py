"""Worlds on Ray actors vs the in-process server (issue 12 section 4): aggregate and per-session frame rates and
latency for 1, 2 and 4 worker processes (one world actor each, one lock-step Play session each), against the
in-process server (``inprocess``: one session; ``inprocess_sessions_4``: four) in the same run.

Two generators:

- ``geometric``: the real CPU generator. On a 2-core machine this is bounded by the cores, not by Ray.
- ``standin``: a STAND-IN FOR A GPU GENERATOR (server/standin.py): it skips the engine and returns a prepared
  JPEG frame after a fixed 100 ms per frame without using the CPU (a sleep, as a process waiting on its GPU). It
  shows the scheduling: how sessions scale with worker processes and what the Ray hop adds per frame. Targets:
  aggregate fps within 80% of linear in the workers (``linearity`` = aggregate / (workers x workers_1's)), and the
  hop (``ray_hop_p50_ms``, ``ray_hop_p95_ms``: workers_1 minus in-process, per frame) <= 5 ms p50 / 15 ms p95.
  Ray sessions use the compiled Play graph (``--streaming``: streaming calls only); their timed frames start
  once the graph is ready (``graph_ready``).
  ``bare_ray_stream_overhead``: a bare Ray streaming actor call's overhead on the same machine (the hop's floor).
- ``--hop-rounds R``: only the hop (``hop``): in-process, Ray compiled, Ray streaming and a bare Ray streaming
  call alternate R times over one world.

Each session sends one action and waits for its frame (lock-step), ``--frames`` times after 3 warm-up frames (all
sessions start their timed frames together), at
``--width x --height`` JPEG; latency = action sent -> frame received. The front door runs in this process
(``server.testing.ServerThread``), as does the in-process server; Ray is local (``--ray-cpus`` logical CPUs).

    python benchmarks/cluster.py [--frames 30] [--width 640 --height 360] [--only standin] [--streaming]
    python benchmarks/cluster.py --hop-rounds 3 --frames 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, log, process_cpu_s  # noqa: E402

HOP_IDLE_S = 3.0  # --hop-rounds: the last round's sessions then stay open this long without actions (CPU measured)
WARMUP = 3  # untimed frames per session (after a Ray session's compiled graph is ready: ``graph_ready``)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _session(target: str, world_id: str, frames: int, width: int, height: int, out: dict,
             barrier: threading.Barrier, warm=None, actor_pid=None, idle_s: float = 0.0) -> None:
    """One lock-step session: warm-up, then ``frames`` timed frames. ``cpu``: CPU seconds of this process
    (client and front door, or client and in-process server) and, with ``actor_pid`` (a callable), of the world's
    actor over the timed frames; with ``idle_s``, what both use while the session then stays open ``idle_s``
    seconds without an action."""
    from spatia.client.api import WorldClient

    lat_ms: list[float] = []
    cpu: dict = {}
    with WorldClient(target, timeout_s=300) as c:
        with c.play(world_id, record=False, lockstep=True, width=width, height=height, fps=10.0) as s:
            t_start = None
            deadline = time.monotonic() + 120
            while warm is not None and not warm(world_id) and time.monotonic() < deadline:
                s.send(move_forward=0.3, yaw_rate_rad_s=0.3, dt_s=0.1)  # warm-up frames until the graph is ready
                if s.next_frame(timeout_s=300) is None:
                    raise RuntimeError(f"session on {world_id} ended early: {s.error}")
            pid = None
            for k in range(WARMUP + frames):
                if k == WARMUP:  # every session warmed up (a fresh actor compiles its kernels): timed together
                    barrier.wait(timeout=600)
                    t_start = time.perf_counter()
                    pid = actor_pid() if actor_pid else None
                    cpu0 = (time.process_time(), process_cpu_s(pid) if pid else 0.0)
                t0 = time.perf_counter()
                s.send(move_forward=0.3, yaw_rate_rad_s=0.3, dt_s=0.1)
                f = s.next_frame(timeout_s=300)
                if f is None:
                    raise RuntimeError(f"session on {world_id} ended early: {s.error}")
                if k >= WARMUP:
                    lat_ms.append((time.perf_counter() - t0) * 1e3)
            t_end = time.perf_counter()
            cpu["bench_process_s"] = time.process_time() - cpu0[0]
            if pid:
                cpu["actor_s"] = process_cpu_s(pid) - cpu0[1]
            if idle_s:  # the session open, nothing to play: what waiting for the next action costs
                idle0 = (time.process_time(), process_cpu_s(pid) if pid else 0.0)
                time.sleep(idle_s)
                cpu["idle_bench_process_s"] = time.process_time() - idle0[0]
                if pid:
                    cpu["idle_actor_s"] = process_cpu_s(pid) - idle0[1]
    out[world_id] = {"latencies_ms": lat_ms, "start": t_start, "end": t_end, "cpu": cpu}


def graph_ready(server_thread):
    """For a Ray front door running in this process: whether world ``w``'s Play session has its compiled graph
    (its first execution waits for the actor to start the graph's loop, seconds on a loaded machine); the sessions
    keep sending warm-up frames until then, so that the timed frames measure the steady state."""
    def ready(world_id: str) -> bool:
        host = server_thread.server.store._hosts.get(world_id)
        graph = getattr(host, "_graph", None)
        return graph is None or graph.ready or graph.failed
    return ready


def run_sessions(target: str, world_ids: list[str], frames: int, width: int, height: int, raw: bool = False,
                 warm=None, actor_pid=None, idle_s: float = 0.0, cpu_out: list | None = None):
    """``actor_pid(world_id)``: the world's actor's pid (CPU is measured, ``cpu_out`` gets each session's)."""
    out: dict = {}
    barrier = threading.Barrier(len(world_ids))
    threads = [threading.Thread(target=_session, args=(
        target, w, frames, width, height, out, barrier, warm,
        (lambda w=w: actor_pid(w)) if actor_pid else None, idle_s)) for w in world_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(out) != len(world_ids):
        raise RuntimeError("a session failed (see stderr)")
    lat = [x for r in out.values() for x in r["latencies_ms"]]
    if cpu_out is not None:
        cpu_out.extend(r["cpu"] for r in out.values())
    if raw:  # the latencies themselves (ms)
        return lat
    span = max(r["end"] for r in out.values()) - min(r["start"] for r in out.values())
    per = [len(r["latencies_ms"]) / (r["end"] - r["start"]) for r in out.values()]
    return {"sessions": len(world_ids), "aggregate_fps": round(len(lat) / span, 2),
            "fps_per_session": round(statistics.mean(per), 2), "p50_ms": round(_pct(lat, 0.5), 1),
            "p95_ms": round(_pct(lat, 0.95), 1)}


def bare_ray_stream_ms(calls: int = 30, raw: bool = False):
    """A bare Ray streaming actor call on this machine: one 40 kB item after a 100 ms ``asyncio.sleep``; the
    overhead over the sleep is what Ray alone adds per clip (the floor under ``ray_hop_p50_ms``)."""
    import asyncio

    import ray

    @ray.remote(num_cpus=0.1)
    class Bare:
        async def clip(self, delay_s: float):
            await asyncio.sleep(delay_s)
            yield b"x" * 40_000
            yield "stats"

    actor = Bare.remote()

    async def run() -> list[float]:
        out = []
        for k in range(calls + 3):
            t0 = time.perf_counter()
            async for ref in actor.clip.remote(0.1):
                item = await ref
                if isinstance(item, bytes) and k >= 3:
                    out.append((time.perf_counter() - t0 - 0.1) * 1e3)
        return out

    over = asyncio.run(run())
    ray.kill(actor)
    if raw:
        return over
    return {"p50_ms": round(_pct(over, 0.5), 2), "p95_ms": round(_pct(over, 0.95), 2), "calls": calls}


def bench(generator: str, args) -> dict:
    from spatia.client.api import WorldClient
    from spatia.server import store as store_mod
    from spatia.server.cluster import ClusterOptions
    from spatia.server.config import Limits, ServerConfig
    from spatia.server.ray_host import kill_world_actors
    from spatia.server.testing import running_server

    standin = generator == "standin"
    data_dir = Path(tempfile.mkdtemp(prefix=f"spatia-cluster-{generator}-"))
    worlds = [f"w{i}" for i in range(4)]
    base = dict(data_dir=data_dir, port=0, limits=Limits(max_sessions=8), save_interval_s=10.0)
    result: dict = {}
    original = store_mod.WorldHost
    if standin:
        from spatia.server.standin import GpuStandinHost

        store_mod.WorldHost = GpuStandinHost  # the in-process server's hosts are stand-ins for this run
    try:
        with running_server(ServerConfig(**base)) as st:
            with WorldClient(st.target, timeout_s=300) as c:
                for i, w in enumerate(worlds):
                    c.create_scene("room", seed=i, width=args.width, height=args.height, world_id=w)
            log(f"[{generator}] in-process, 1 session")
            result["inprocess"] = run_sessions(st.target, worlds[:1], args.frames, args.width, args.height)
            log(f"[{generator}] in-process, 4 sessions")
            result["inprocess_sessions_4"] = run_sessions(st.target, worlds, args.frames, args.width, args.height)
    finally:
        store_mod.WorldHost = original
    # one front door per world here: the compiled Play graph's safe case (server/cluster.py ``compiled_play``)
    cluster = ClusterOptions(world_cpus=args.world_cpus, idle_exit_s=None, host_kind="gpu-standin" if standin
                             else "world", local_cpus=args.ray_cpus, compiled_play=not args.streaming)
    try:
        with running_server(ServerConfig(**base, cluster=cluster)) as st:
            for k in (1, 2, 4):
                log(f"[{generator}] ray, {k} worker process(es)")
                result[f"workers_{k}"] = run_sessions(st.target, worlds[:k], args.frames, args.width, args.height,
                                                      warm=graph_ready(st))
    finally:
        kill_world_actors(worlds)
    one = result["workers_1"]["aggregate_fps"]
    for k in (2, 4):
        result[f"workers_{k}"]["linearity"] = round(result[f"workers_{k}"]["aggregate_fps"] / (k * one), 3)
    return result


def hop(args) -> dict:
    """The Ray hop alone, stand-in generator, one world: the in-process server and two Ray front doors run side by
    side (two copies of the world; the Ray doors share its actor) and one lock-step session each alternates ``--hop-rounds`` times (in-process,
    Ray with the compiled Play graph, Ray with streaming calls only, a bare Ray streaming call), so a change in
    the shared machine's load hits all alike. Each hop is pooled Ray p50 / p95 minus pooled in-process p50 / p95;
    ``per_round`` keeps each round's p50s."""
    import shutil

    from spatia.client.api import WorldClient
    from spatia.server import store as store_mod
    from spatia.server.cluster import ClusterOptions
    from spatia.server.config import Limits, ServerConfig
    from spatia.server.ray_host import kill_world_actors
    from spatia.server.standin import GpuStandinHost
    from spatia.server.testing import running_server

    dirs = [Path(tempfile.mkdtemp(prefix=f"spatia-hop-{k}-")) for k in ("inprocess", "ray")]
    base = dict(port=0, limits=Limits(max_sessions=8), save_interval_s=10.0)
    cluster = ClusterOptions(world_cpus=args.world_cpus, idle_exit_s=None, host_kind="gpu-standin",
                             local_cpus=args.ray_cpus, compiled_play=True)
    streaming = replace(cluster, compiled_play=False)
    original = store_mod.WorldHost
    store_mod.WorldHost = GpuStandinHost
    lat: dict[str, list[float]] = {"inprocess": [], "ray_compiled": [], "ray_streaming": [], "bare": []}
    cpu: dict[str, list[dict]] = {"inprocess": [], "ray_compiled": [], "ray_streaming": []}
    rounds = []
    try:
        with running_server(ServerConfig(data_dir=dirs[0], **base)) as st:
            with WorldClient(st.target, timeout_s=300) as c:
                c.create_scene("room", seed=0, width=args.width, height=args.height, world_id="w0")
            shutil.copytree(dirs[0] / "worlds", dirs[1] / "worlds")
            try:  # two front doors over one world actor (sessions one at a time): with and without the graph
                with running_server(ServerConfig(data_dir=dirs[1], cluster=cluster, **base)) as rt, \
                        running_server(ServerConfig(data_dir=dirs[1], cluster=streaming, **base)) as rs:
                    def pid(world_id: str) -> int:
                        return rt.server.store.get(world_id).actor_pid

                    for r in range(args.hop_rounds):
                        log(f"[hop] round {r + 1}/{args.hop_rounds}")
                        idle_s = HOP_IDLE_S if r == args.hop_rounds - 1 else 0.0
                        got = {"inprocess": run_sessions(st.target, ["w0"], args.frames, args.width, args.height,
                                                         raw=True, idle_s=idle_s, cpu_out=cpu["inprocess"])}
                        for name, target in (("ray_compiled", rt.target), ("ray_streaming", rs.target)):
                            time.sleep(0.5)  # the previous session's lease release reaches the actor
                            got[name] = run_sessions(target, ["w0"], args.frames, args.width, args.height, raw=True,
                                                     warm=graph_ready(rt) if name == "ray_compiled" else None,
                                                     actor_pid=pid, idle_s=idle_s, cpu_out=cpu[name])
                        got["bare"] = bare_ray_stream_ms(args.frames, raw=True)
                        for k, v in got.items():
                            lat[k] += v
                        rounds.append({f"{k}_p50_ms": round(_pct(v, 0.5), 2) for k, v in got.items()})
            finally:
                kill_world_actors(["w0"])
    finally:
        store_mod.WorldHost = original
    out: dict = {"rounds": args.hop_rounds, "frames_per_round": args.frames}
    for k, v in lat.items():
        out[k] = {"p50_ms": round(_pct(v, 0.5), 2), "p95_ms": round(_pct(v, 0.95), 2)}
    base_p50, base_p95 = _pct(lat["inprocess"], 0.5), _pct(lat["inprocess"], 0.95)
    for k in ("ray_compiled", "ray_streaming"):
        out[f"{k}_hop_p50_ms"] = round(_pct(lat[k], 0.5) - base_p50, 1)
        out[f"{k}_hop_p95_ms"] = round(_pct(lat[k], 0.95) - base_p95, 1)
    out["per_round"] = rounds
    # CPU per timed frame (this process: the client plus the in-process server or the Ray front door; the actor)
    # and, in the last round, CPU per second of a session left open without actions (HOP_IDLE_S)
    for k, sessions in cpu.items():
        frames = args.frames * len(sessions)
        entry = {"bench_process_ms_per_frame": round(sum(c["bench_process_s"] for c in sessions) / frames * 1e3, 2)}
        if k != "inprocess":
            entry["actor_ms_per_frame"] = round(sum(c["actor_s"] for c in sessions) / frames * 1e3, 2)
        idle = [c for c in sessions if "idle_bench_process_s" in c]
        if idle:
            entry["idle_bench_process_cpu_fraction"] = round(idle[0]["idle_bench_process_s"] / HOP_IDLE_S, 3)
            if "idle_actor_s" in idle[0]:
                entry["idle_actor_cpu_fraction"] = round(idle[0]["idle_actor_s"] / HOP_IDLE_S, 3)
        out[f"{k}_cpu"] = entry
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=30, help="timed frames per session (after 3 warm-up frames)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--world-cpus", type=float, default=0.5, help="CPUs each world actor reserves")
    p.add_argument("--ray-cpus", type=int, default=2, help="logical CPUs of the local Ray")
    p.add_argument("--only", choices=("geometric", "standin"), default=None)
    p.add_argument("--streaming", action="store_true", help="Ray sessions without the compiled Play graph")
    p.add_argument("--hop-rounds", type=int, default=0,
                   help="measure only the Ray hop (stand-in, one world): this many alternating rounds")
    args = p.parse_args()

    import ray

    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        out: dict = {"frames_per_session": args.frames, "width": args.width, "height": args.height,
                     "world_cpus": args.world_cpus, "ray_cpus": args.ray_cpus, "ray_version": ray.__version__}
        if args.hop_rounds:
            out["hop"] = hop(args)
            emit(out)
            return
        for generator in ("standin", "geometric"):
            if args.only in (None, generator):
                out[generator] = bench(generator, args)
        out["bare_ray_stream_overhead"] = bare_ray_stream_ms()
        if "standin" in out:
            s = out["standin"]
            out["ray_hop_p50_ms"] = round(s["workers_1"]["p50_ms"] - s["inprocess"]["p50_ms"], 1)
            out["ray_hop_p95_ms"] = round(s["workers_1"]["p95_ms"] - s["inprocess"]["p95_ms"], 1)
    finally:
        ray.shutdown()
    emit(out)


if __name__ == "__main__":
    main()
