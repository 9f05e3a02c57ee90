"""Soak: N Play sessions for M minutes on bounded loops that revisit, plus one client that never reads.

A server runs in a subprocess (``spatia serve``, geometric generator, loopback only); this process creates N
worlds (``--width x --height``) and drives one Play session per world with the asyncio client: an action every
``1 / --tick-hz`` s, walking forward while turning at ``2 pi / --loop-s`` rad/s, so each camera goes round the
same circle every ``--loop-s`` seconds (what a world legitimately holds stops growing after the first lap). One
more world is played by a client that sends actions and never reads a frame. Everything is bounded in time
(``--minutes``, then the sessions end, every world is deleted and the server stopped).

Reported (one JSON object on stdout): server RSS after minute 1 (``--first-s``) and at the end, and the same
minus the bytes the worlds report (``WorldStats.memory_bytes + index_bytes``: the memory's arrays at capacity with
its hash table, and the history's RAM with its retrieval index); the worlds' points and history frames; per-session frame rate of
the first and of the last minute; errors; RSS after deleting every world vs right after start. Per minute: each
session's frame rate, the server's CPU ms per history frame made (flat: a frame costs the same work, whatever the
frame rate did), the machine's steal share and the worlds' history bytes. Baseline (same run): RSS of the idle
server before any world exists.

    python benchmarks/soak.py [--sessions 8 --minutes 10 --width 320 --height 180]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit, log, process_cpu_s  # noqa: E402


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine_ticks() -> tuple[int, int]:
    """(all, steal) CPU ticks of the machine since boot (``/proc/stat``): the steal share of an interval says how
    much of it the hypervisor gave to other guests."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(vals), vals[7] if len(vals) > 7 else 0


async def _session(client, world_id: str, args, t0: float, stop: float, errors: list[str]) -> dict:
    """One reading session: per-second frame counts (relative to ``t0``)."""
    per_s: dict[int, int] = {}
    try:
        s = await client.play(world_id, fps=args.tick_hz, record=False)
    except Exception as exc:  # noqa: BLE001 -- counted and reported
        errors.append(f"{world_id} start: {type(exc).__name__}: {exc}")
        return {"per_s": per_s}
    yaw = 2 * math.pi / args.loop_s

    async def sender():
        tick = time.monotonic()
        while tick < stop:
            try:
                await s.send(move_forward=args.speed_m_s, yaw_rate_rad_s=yaw, dt_s=1.0 / args.tick_hz)
            except asyncio.InvalidStateError:
                # the receiver's timeout at ``stop`` cancels the call (as in benchmarks/play.py): a send that
                # races it is the end of the run, not an error; before the end it is one
                if time.monotonic() >= stop - 0.5:
                    break
                raise
            tick += 1.0 / args.tick_hz
            await asyncio.sleep(max(tick - time.monotonic(), 0.0))

    async def receiver():
        while time.monotonic() < stop:
            try:
                f = await asyncio.wait_for(s.next_frame(), timeout=max(stop - time.monotonic(), 0.01))
            except TimeoutError:
                break
            if f is None:
                errors.append(f"{world_id}: stream ended early")
                break
            sec = int(time.monotonic() - t0)
            per_s[sec] = per_s.get(sec, 0) + 1

    try:
        await asyncio.gather(sender(), receiver())
    except Exception as exc:  # noqa: BLE001 -- counted and reported
        errors.append(f"{world_id}: {type(exc).__name__}: {exc}")
    finally:
        try:
            await s._call.done_writing()
        except Exception:  # noqa: BLE001 -- the call may be over already
            pass
        s._call.cancel()
    return {"per_s": per_s}


async def _never_reader(client, world_id: str, args, stop: float, errors: list[str]) -> None:
    """Opens Play and sends actions, never reads a frame: the server must drop, not queue."""
    try:
        s = await client.play(world_id, fps=args.tick_hz, record=False)
        while time.monotonic() < stop:
            await s.send(move_forward=args.speed_m_s, yaw_rate_rad_s=2 * math.pi / args.loop_s,
                         dt_s=1.0 / args.tick_hz)
            await asyncio.sleep(1.0 / args.tick_hz)
        s._call.cancel()
    except Exception as exc:  # noqa: BLE001 -- counted and reported
        errors.append(f"never-reader: {type(exc).__name__}: {exc}")


async def _world_bytes(client, ids: list[str]) -> tuple[int, int, int, int]:
    """(bytes, memory points, history frames, history bytes) the worlds report: ``WorldStats.memory_bytes`` (the
    memory's arrays at capacity, hash table, block directory) + ``index_bytes`` (the history's RAM: retrieval index,
    poses, decoded-frame cache), summed over ``ids``; the last item is ``index_bytes`` alone."""
    total = points = frames = index = 0
    for wid in ids:
        st = (await client.get_world(wid)).stats
        total += int(st.memory_bytes) + int(st.index_bytes)
        index += int(st.index_bytes)
        points += int(st.memory_points)
        frames += int(st.history_frames)
    return total, points, frames, index


async def _run(target: str, pid: int, args) -> dict:
    from spatia.client.api import AsyncWorldClient

    errors: list[str] = []
    async with AsyncWorldClient(target, timeout_s=600) as c:
        ids = []
        for i in range(args.sessions + 1):
            wid = f"soak-{i}"
            await c.create_scene(("room", "house", "courtyard")[i % 3], seed=i, width=args.width,
                                 height=args.height, world_id=wid)
            ids.append(wid)
        rss_created = rss_bytes(pid)
        t0 = time.monotonic()
        stop = t0 + args.minutes * 60
        samples: list[tuple] = []
        cpu_prev, ticks_prev, frames_prev = process_cpu_s(pid), machine_ticks(), None
        cpu_start, ticks_start = cpu_prev, ticks_prev

        async def sampler():
            nonlocal cpu_prev, ticks_prev, frames_prev
            while time.monotonic() < stop:
                await asyncio.sleep(min(args.sample_s, max(stop - time.monotonic(), 0.01)))
                now = time.monotonic() - t0
                try:
                    wb, points, frames, index = await _world_bytes(c, ids)
                except Exception as exc:  # noqa: BLE001 -- counted and reported
                    errors.append(f"stats: {type(exc).__name__}: {exc}")
                    wb = points = frames = index = 0
                # the server's CPU per history frame made in the interval (all nine worlds): what a frame costs,
                # apart from how much of the machine the server got (load, steal)
                cpu, ticks = process_cpu_s(pid), machine_ticks()
                made = frames - frames_prev if frames_prev is not None else 0
                cpu_ms = 1000 * (cpu - cpu_prev) / made if made > 0 else None
                steal = (ticks[1] - ticks_prev[1]) / max(ticks[0] - ticks_prev[0], 1)
                cpu_prev, ticks_prev, frames_prev = cpu, ticks, frames
                samples.append((now, rss_bytes(pid), wb, points, frames, index, cpu, ticks[0], ticks[1]))
                log(f"t={now:6.1f}s rss={samples[-1][1] / 2**20:7.1f} MiB worlds={wb / 2**20:7.1f} MiB "
                    f"(history {index / 2**20:6.1f}) points={points} frames={frames} "
                    f"cpu/frame={'-' if cpu_ms is None else f'{cpu_ms:.0f}'} ms steal={100 * steal:.0f} %")

        results = await asyncio.gather(
            *(_session(c, w, args, t0, stop, errors) for w in ids[: args.sessions]),
            _never_reader(c, ids[-1], args, stop, errors),
            sampler(),
        )
        sessions = results[: args.sessions]
        await asyncio.sleep(2.0)  # sessions end after their clip in flight
        rss_end = rss_bytes(pid)
        for wid in ids:
            for attempt in range(50):
                try:
                    await c.delete_world(wid)
                    break
                except Exception as exc:  # noqa: BLE001 -- a session may still be ending: retry
                    if attempt == 49:
                        errors.append(f"delete {wid}: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        rss_deleted = rss_bytes(pid)
    return {"sessions": sessions, "samples": samples, "errors": errors, "rss_created": rss_created,
            "cpu_start": cpu_start, "ticks_start": ticks_start,
            "rss_end": rss_end, "rss_deleted": rss_deleted}


def _fps(per_s: dict[int, int], a: float, b: float) -> float:
    secs = [s for s in range(int(a), int(b))]
    return sum(per_s.get(s, 0) for s in secs) / max(len(secs), 1)


def soak(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [sys.executable, "-m", "spatia.cli", "serve", "--port", "0", "--host", "127.0.0.1", "--port-file",
             str(port_file), "--data-dir", str(Path(tmp) / "data"), "--max-sessions", str(args.sessions + 1),
             *(["--save-interval-s", str(args.save_interval_s)] if args.save_interval_s is not None else [])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 180
            while not port_file.exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.1)
            rss_idle = rss_bytes(server.pid)
            target = f"127.0.0.1:{int(port_file.read_text())}"
            log(f"server at {target}; {args.sessions} sessions + 1 never-reader for {args.minutes} min")
            r = asyncio.run(_run(target, server.pid, args))
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    samples = r["samples"]
    first = min(samples, key=lambda s: abs(s[0] - args.first_s)) if samples else (0,) * 9
    last = samples[-1] if samples else (0,) * 9
    span = args.minutes * 60
    w = min(args.first_s, span / 2)  # the first and last windows (a minute, scaled down for short runs)
    minutes = [(a, min(a + 60.0, span)) for a in np.arange(0.0, span - 1e-9, 60.0)]
    fps_per_minute = [[round(_fps(s["per_s"], a, b), 2) for a, b in minutes] for s in r["sessions"]]
    cpu_per_minute, steal_per_minute, index_per_minute = [], [], []
    for a, b in minutes:  # between the samples nearest the minute's ends (the first from the run's start)
        s0 = min([(0.0, 0, 0, 0, 0, 0, r["cpu_start"], *r["ticks_start"])] + samples, key=lambda x: abs(x[0] - a))
        s1 = min(samples, key=lambda x: abs(x[0] - b)) if samples else s0
        made = s1[4] - s0[4]
        cpu_per_minute.append(round(1000 * (s1[6] - s0[6]) / made, 1) if made > 0 else None)
        steal_per_minute.append(round((s1[8] - s0[8]) / max(s1[7] - s0[7], 1), 3))
        index_per_minute.append(round(s1[5] / 2**20, 1))
    fps_first = [_fps(s["per_s"], 0, w) for s in r["sessions"]]
    fps_last = [_fps(s["per_s"], span - w, span) for s in r["sessions"]]
    ratios = [b / a if a > 0 else 0.0 for a, b in zip(fps_first, fps_last)]
    mib = 1 / 2**20
    end_over_first = last[1] / first[1] if first[1] else None
    minus_first, minus_end = first[1] - first[2], last[1] - last[2]
    minus_ratio = minus_end / minus_first if minus_first > 0 else None
    min_ratio = min(ratios) if ratios else None
    # issue 11 section 4; "flat" is read as: RSS minus the worlds' bytes grows by at most 20 % after minute 1
    targets = {
        "rss_end_over_first<=1.5": end_over_first is not None and end_over_first <= 1.5,
        "rss_minus_worlds_end_over_first<=1.2": minus_ratio is not None and minus_ratio <= 1.2,
        "fps_last_over_first_min>=0.8": min_ratio is not None and min_ratio >= 0.8,
        "errors==0": not r["errors"],
    }
    return {
        "name": "soak",
        "sizes": {"sessions": args.sessions, "never_reading": 1, "minutes": args.minutes, "width": args.width,
                  "height": args.height, "tick_hz": args.tick_hz, "loop_s": args.loop_s,
                  "first_window_s": w, "generator": "geometric",
                  "save_interval_s": args.save_interval_s if args.save_interval_s is not None else "server default"},
        "rss_idle_mib": round(rss_idle * mib, 1),
        "rss_created_mib": round(r["rss_created"] * mib, 1),
        "rss_first_mib": round(first[1] * mib, 1),
        "rss_end_mib": round(last[1] * mib, 1),
        "rss_end_over_first": round(end_over_first, 3) if end_over_first is not None else None,
        "rss_minus_worlds_first_mib": round((first[1] - first[2]) * mib, 1),
        "rss_minus_worlds_end_mib": round((last[1] - last[2]) * mib, 1),
        "rss_minus_worlds_end_over_first": round(minus_ratio, 3) if minus_ratio is not None else None,
        "worlds_reported_first_mib": round(first[2] * mib, 1),
        "worlds_reported_end_mib": round(last[2] * mib, 1),
        "rss_after_delete_mib": round(r["rss_deleted"] * mib, 1),
        "fps_first": [round(x, 2) for x in fps_first],
        "fps_last": [round(x, 2) for x in fps_last],
        "fps_last_over_first_min": round(min_ratio, 3) if min_ratio is not None else None,
        "errors": len(r["errors"]),
        "targets": targets,
        "targets_met": all(targets.values()),
        "error_samples": r["errors"][:5],
        "memory_points_first": first[3],
        "memory_points_end": last[3],
        "history_frames_first": first[4],
        "history_frames_end": last[4],
        # [t s, RSS MiB, worlds' reported MiB, memory points, history frames, history (index_bytes) MiB]
        "samples": [[round(t, 1), round(x * mib, 1), round(wb * mib, 1), p, f, round(ix * mib, 1)]
                    for t, x, wb, p, f, ix, *_ in samples],
        # per minute of the run: each reading session's frame rate; the server's CPU ms per history frame made
        # (all worlds, never-reader included: flat = a frame costs the same work, whatever the frame rate did);
        # the machine's steal share; the worlds' history bytes (index_bytes) at the minute's end, MiB
        "fps_per_minute": fps_per_minute,
        "server_cpu_ms_per_frame_per_minute": cpu_per_minute,
        "steal_per_minute": steal_per_minute,
        "history_mib_per_minute": index_per_minute,
        "baseline": "rss_idle_mib: the server before any world exists (same run)",
        "cpu_count": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=180)
    p.add_argument("--tick-hz", type=float, default=30.0)
    p.add_argument("--loop-s", type=float, default=20.0, help="seconds per lap of each session's circle")
    p.add_argument("--speed-m-s", type=float, default=0.5)
    p.add_argument("--first-s", type=float, default=60.0, help="end of the first window (RSS and fps)")
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--save-interval-s", type=float, default=None, help="the server's autosave interval "
                   "(default: the server's own)")
    p.add_argument("--collision", action="store_true", help="the served camera collides with walls (world/collision.py); off by default: this walk meets walls, where a camera held against one reveals nothing new and flatters the figures, and earlier runs walked without it")
    args = p.parse_args(argv)
    os.environ["SPATIA_PLAY_COLLISION"] = "1" if args.collision else "0"  # spatia serve --play-collision
    return args


def main() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    emit(soak(parse_args()))


if __name__ == "__main__":
    main()
