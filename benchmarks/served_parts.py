"""What a served world's clips spend their time on: ``stalls.py``'s parts, timed inside a real server.

Runs ``play.py`` (``--fill layout``, ``--sessions``, 30 Hz, ``--seconds``) with a ``sitecustomize`` of its own on
the server's path: once the server imports ``spatia.server.host``, every part of ``stalls.PARTS`` is wrapped with a
per-thread wall-clock timer and ``Engine.generate_clip`` writes one JSON line per clip (its wall, its thread's CPU,
the engine's generate / update times, each part's ms). In-process runs (``stalls.py``) see the walk's own costs;
this sees what the served process adds (encoding, the event loop, other worlds, threads that run late), which is
what a player's p95 is made of (docs/BENCHMARKS.md, session 23, lead).

Output: play.py's figures for the run, and per session count: the clips' wall / CPU p50 / p95 / p99, each part's
p50 / p99 / max and the clips over 10 ms, the slowest clips with their parts of 3 ms or more, and ``during_play``:
from the first clip on, the server's full garbage collections (every thread waits for one: count, longest, total
ms) and the numba kernels loaded on a first call (those on a world's thread by name, the others' total ms). The
timers cost ~1 % of a clip (a few dozen wrapped calls). Not combinable with ``SPATIA_AB_ROOT`` (one ``sitecustomize`` is
imported): it times the installed tree.

    python benchmarks/served_parts.py [--sessions 1] [--seconds 20] [--slowest 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import emit, log  # noqa: E402

# Installed as ``sitecustomize`` for the run: instruments the server process only (``spatia ... serve``), once it
# imports spatia.server.host; play.py's own process (its in-process baseline) is left as it is.
SITE = '''
import os, sys
if "serve" in sys.argv and os.environ.get("SPATIA_PARTS_OUT"):
    import importlib.abc, importlib.machinery

    def _instrument(module):
        import collections, json, threading, time
        sys.path.insert(0, os.environ["SPATIA_PARTS_BENCH"])
        import spatia.model.geometric, spatia.model.fill.geometry.layout, spatia.model.fill.texture.synthesis  # noqa
        from stalls import _instrument as wrap_parts
        from spatia.world import engine

        class Local(threading.local):
            def __init__(self):
                self.acc = collections.Counter()

        local = Local()
        wrap_parts(local)
        out = open(os.environ["SPATIA_PARTS_OUT"], "a", buffering=1)
        generate_clip = engine.Engine.generate_clip

        def timed_clip(self, *a, **k):
            local.acc = acc = collections.Counter()
            t0, c0 = time.perf_counter(), time.thread_time()
            yield from generate_clip(self, *a, **k)
            st = self.last_stats
            out.write(json.dumps({"t": t0, "thread": threading.current_thread().name, "clip": st.clip_id,
                                  "wall": (time.perf_counter() - t0) * 1e3, "cpu": (time.thread_time() - c0) * 1e3,
                                  "generate": st.generate_s * 1e3, "update": st.update_s * 1e3,
                                  "parts": {n: round(v, 3) for n, v in acc.items() if v > 0}}) + "\\n")

        engine.Engine.generate_clip = timed_clip

        # what pauses a clip from outside its own work: full garbage collections (every thread waits) and numba
        # kernels loaded (or compiled) on a first call with a new signature, on any thread
        import gc
        from numba.core import dispatcher

        started = {}

        def on_gc(phase, info):
            if info["generation"] != 2:
                return
            if phase == "start":
                started[threading.get_ident()] = time.perf_counter()
            elif threading.get_ident() in started:
                t = started.pop(threading.get_ident())
                out.write(json.dumps({"kind": "gc", "t": t, "ms": (time.perf_counter() - t) * 1e3,
                                      "thread": threading.current_thread().name}) + "\\n")

        gc.callbacks.append(on_gc)
        compile_for_args = dispatcher._DispatcherBase._compile_for_args

        def loading(self, *a, **k):
            t = time.perf_counter()
            try:
                return compile_for_args(self, *a, **k)
            finally:
                out.write(json.dumps({"kind": "load", "t": t, "ms": (time.perf_counter() - t) * 1e3,
                                      "thread": threading.current_thread().name,
                                      "kernel": f"{self.py_func.__module__}.{self.py_func.__qualname__}"}) + "\\n")

        dispatcher._DispatcherBase._compile_for_args = loading

    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "spatia.server.host":
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _instrument(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Hook())
'''


def _pct(values, q):
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))], 1) if s else float("nan")


def summarise(rows: list[dict], slowest: int) -> dict:
    """The world threads' clips (a warm-up walk on the server's kernel-load thread is left out), and what paused
    the process from the first such clip on: full collections and kernel loads (``during_play``)."""
    clips = [r for r in rows if r.get("kind", "clip") == "clip" and r["thread"].startswith("world-")]
    names = sorted({n for r in clips for n in r["parts"]})
    parts = {}
    for n in names:
        v = [r["parts"].get(n, 0.0) for r in clips]
        parts[n] = {"p50": _pct(v, 50), "p99": _pct(v, 99), "max": round(max(v), 1),
                    "clips_over_10ms": sum(x >= 10 for x in v)}
    worst = sorted(clips, key=lambda r: -r["wall"])[:slowest]
    t0 = min((r["t"] for r in clips), default=0.0)
    collections_ = [r for r in rows if r.get("kind") == "gc" and r["t"] >= t0]
    loads = [r for r in rows if r.get("kind") == "load" and r["t"] >= t0]
    during_play = {
        "full_collections": len(collections_),
        "full_collection_max_ms": round(max((r["ms"] for r in collections_), default=0.0), 1),
        "full_collection_ms": round(sum(r["ms"] for r in collections_), 1),
        "kernel_loads": len(loads),
        "kernel_loads_on_world_threads": [{"kernel": r["kernel"], "at_s": round(r["t"] - t0, 2),
                                           "ms": round(r["ms"], 1)} for r in loads
                                          if r["thread"].startswith("world-")],
        "kernel_load_ms_elsewhere": round(sum(r["ms"] for r in loads if not r["thread"].startswith("world-")), 1),
    }
    return {
        "clips": len(clips),
        "wall_ms": {q: _pct([r["wall"] for r in clips], int(q[1:])) for q in ("p50", "p95", "p99")},
        "cpu_ms": {q: _pct([r["cpu"] for r in clips], int(q[1:])) for q in ("p50", "p95", "p99")},
        "mean_wall_ms": round(statistics.mean(r["wall"] for r in clips), 2) if clips else float("nan"),
        "parts": parts,
        "during_play": during_play,
        "slowest": [{"world": r["thread"], "clip": r["clip"], "at_s": round(r["t"] - t0, 2),
                     "wall": round(r["wall"], 1),
                     "cpu": round(r["cpu"], 1), "generate": round(r["generate"], 1), "update": round(r["update"], 1),
                     **{n: round(v, 1) for n, v in r["parts"].items() if v >= 3}} for r in worst],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", default="1", help="comma list of concurrent session counts (play.py's)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--slowest", type=int, default=12)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="served-parts-") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITE)
        results = {}
        for n in args.sessions.split(","):
            out = Path(tmp) / f"parts-{n}.jsonl"
            env = {**os.environ, "SPATIA_PARTS_OUT": str(out), "SPATIA_PARTS_BENCH": str(HERE),
                   "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
            log(f"{n} session(s), {args.seconds} s")
            run = subprocess.run([sys.executable, str(HERE / "play.py"), "--fill", "layout", "--rounds", "1",
                                  "--sessions", n, "--tick-hz", "30", "--seconds", str(args.seconds),
                                  "--no-queue-baseline"], env=env, capture_output=True, text=True, check=True)
            play = json.loads(run.stdout)
            served = play["30hz"][f"sessions_{n}"]
            rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
            if not rows:
                raise SystemExit("the server wrote no clip records: was its sitecustomize shadowed by another one?")
            results[f"sessions_{n}"] = {
                "play": {k: served[k] for k in ("fps", "fps_per_session", "p50_ms", "p95_ms", "p99_ms") if k in served},
                **summarise(rows, args.slowest)}
    emit({"name": "served_parts", "sizes": {"width": 640, "height": 360, "fill": "layout", "tick_hz": 30,
                                            "seconds": args.seconds},
          "load": play.get("load"), "machine": play.get("machine"), **results})


if __name__ == "__main__":
    main()
