"""Gymnasium steps per second: in-process vs remote lock-step (one Play stream) vs remote Generate-per-step.

A server runs in a subprocess (``spatia serve``, geometric generator, loopback); this process steps three
``SpatiaWorldEnv``s through the same seeded random actions at ``--width x --height`` (default 128x96):

- ``in_process`` (the baseline: no network, no encoding): ``baseline_median_ms`` is its per-step median;
- ``remote_lockstep`` (default remote mode): one Play stream per episode, RAW frames, no save per step, the
  clip's stats on its frame (one message down per step): ``median_ms`` is its per-step median; the issue's
  target is >= 100 steps/s; ``server_clip_median_ms`` is the server's generate + update time per step and
  ``overhead_median_ms`` the rest of a step (hops, gRPC, client);
- ``remote_generate`` (the old path): a Generate RPC + GetWorld per step, the world saved per Generate call.

Every step's frame and memory-point count are compared across the three (they must be identical: lock-step
loses nothing). Each mode steps ``--steps`` after ``--warmup`` untimed steps (numba compilation, first clip).

    python benchmarks/gym.py [--steps 300] [--width 128 --height 96]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, log  # noqa: E402


def _start_server(data_dir: Path, threads: int) -> tuple[subprocess.Popen, str]:
    port_file = data_dir / "port"
    proc = subprocess.Popen([sys.executable, "-m", "spatia.cli", "serve", "--port", "0", "--port-file", str(port_file),
                             "--data-dir", str(data_dir / "data")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, "NUMBA_THREADING_LAYER": "omp", "NUMBA_NUM_THREADS": str(threads)})
    deadline = time.monotonic() + 180
    while not (port_file.is_file() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def _run(env, actions, warmup: int) -> tuple[list[float], list, list[float]]:
    """Per-step wall times (ms) of the timed steps, (frame, memory_points) of every step, and for the lock-step
    env the server's own clip time (generate + memory update, ``SessionStats``) of each timed step."""
    env.reset(seed=0)
    times, seen, server = [], [], []
    for k, a in enumerate(actions):
        t0 = time.perf_counter()
        obs, _, _, _, info = env.step(a)
        dt = (time.perf_counter() - t0) * 1e3
        if k >= warmup:
            times.append(dt)
            stats = getattr(env._backend, "last_stats", None)
            if stats is not None:
                server.append(stats.generate_ms + stats.update_ms)
        seen.append((obs, info["memory_points"]))
    return times, seen, server


def _summary(times: list[float], server: list[float]) -> dict[str, float]:
    s = sorted(times)
    out = {"median_ms": round(statistics.median(s), 3), "p95_ms": round(s[int(0.95 * (len(s) - 1))], 3),
           "max_ms": round(s[-1], 3),  # a one-off stall (a kernel loaded, a re-sort) shows here, not in the p95
           "steps_per_s": round(len(s) / (sum(s) / 1e3), 1),  # over the total time, tail included
           "steps_per_s_at_median": round(1e3 / statistics.median(s), 1)}
    if server:
        # what the step costs beyond the engine: hops, gRPC, the client (the step's wall time minus the server's
        # generate + update time for the same step)
        out["server_clip_median_ms"] = round(statistics.median(server), 3)
        out["server_clip_max_ms"] = round(max(server), 3)
        out["overhead_median_ms"] = round(statistics.median([t - c for t, c in zip(times, server)]), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    # numba kernel threads, in this process (in-process env) and in the server alike. 1 by default: on a small
    # shared machine, OpenMP's parallel kernels in the stepping thread measured 10-40x slower under load.
    ap.add_argument("--threads", type=int, default=1)
    # Off by default: the Generate-per-step mode takes poses as given and cannot collide, and every mode's frames
    # are compared; the random walk meets the room's walls (239 of its 330 steps collided at 128x96)
    ap.add_argument("--collision", action="store_true", help="the camera collides (in-process and lock-step only)")
    args = ap.parse_args()
    os.environ["SPATIA_PLAY_COLLISION"] = "1" if args.collision else "0"  # spatia serve --play-collision
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)  # before numba is imported

    import numpy as np

    import spatia.client  # noqa: F401  (registers the ids)
    from spatia.client.env import SpatiaWorldEnv
    from spatia.world.actions import ControlConfig

    rng = np.random.default_rng(0)
    # walk mostly forward while turning: new ground every step, as an exploring agent sees it
    actions = [np.array([rng.uniform(0.2, 1), rng.uniform(-0.5, 0.5), 0, rng.uniform(-1, 1), rng.uniform(-0.2, 0.2)],
                        np.float32) for _ in range(args.warmup + args.steps)]
    size = dict(width=args.width, height=args.height)
    results, seen = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = _start_server(Path(tmp), args.threads)
        try:
            for name, kw in (("in_process", {}), ("remote_lockstep", {"server": target}),
                             ("remote_generate", {"server": target, "remote_mode": "generate"})):
                env = SpatiaWorldEnv(**size, **kw, control=ControlConfig(collision=args.collision))
                log(f"{name}: {args.warmup} + {args.steps} steps at {args.width}x{args.height}")
                c0 = time.process_time()
                times, seen[name], server = _run(env, actions, args.warmup)
                results[name] = {**_summary(times, server), "client_cpu_s": round(time.process_time() - c0, 2)}
                env.close()
                log(f"  {results[name]}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    identical = {name: all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(seen["in_process"], s))
                 for name, s in seen.items() if name != "in_process"}
    emit({
        "benchmark": "gym",
        "width": args.width, "height": args.height, "steps": args.steps, "warmup": args.warmup,
        "numba_threads": args.threads, "collision": args.collision,
        "median_ms": results["remote_lockstep"]["median_ms"],
        "baseline_median_ms": results["in_process"]["median_ms"],
        "modes": results,
        "identical_to_in_process": identical,
    })


if __name__ == "__main__":
    main()
