"""Where a one-frame clip's worst times come from: per part, p50 / p95 / p99 / max, over play.py's walk.

The engine in-process (no gRPC, no encoding), the server's play settings (``ServerConfig``'s keyframe stride and
reference reuse, its OpenMP settings), 640x360, ``--fill`` of the geometric generator, one-frame clips along
play.py's walk (forward while turning; a clip per 1/30 s, or per 1/``--fps`` s: at 10 a clip moves as far as one of
four served sessions' clips) from the room (seed 0). Each part below is timed around every call (inclusive: a
part's time holds the parts it calls) and summed per clip; a clip's ``wall`` is its whole
``generate_clip``, ``cpu`` the world thread's CPU for it, ``update`` the engine's time after the clip's last frame
(``ClipStats.update_s``: memory update, history, free-space removal). ``--clock thread`` times the parts on the world
thread's CPU clock instead of the wall (with ``NUMBA_NUM_THREADS=1`` a kernel's work is all on that thread): what a
shared machine's other load moves least. ``phases``: each part's mean per keyframe phase (the clip's frame index mod
the keyframe stride; 0 = a keyframe, integrated by the memory update; with play.py's walk and the retrieval reuse,
phase 1 holds the clips that retrieve).

``--mode served``: a clip per 1/``--fps`` s of real time instead of back to back, so the idle time between clips
goes to the background threads as in a served session, and (one world) the memory update beside the next clip.

``--worlds 4``: play.py's four worlds (room, house, courtyard, room; seeds 0-3) at once, each on a thread of its own
with one numba thread (as a server's four sessions, server/host.py). ``events``: per maintenance part, the clips
where it took 10 ms or more. ``--digest``: each world's final memory hashed by voxel key, to compare trees.

``--roots NAME=DIR,...``: each tree (``SPATIA_AB_ROOT``, e.g. ``base=/tmp/x/base`` from ``git archive main``) in a
fresh process, alternated ``--rounds`` times (A B, B A, ...): only trees run in the same minutes compare on a
shared machine. The first tree is the baseline. Without ``--roots`` the current tree runs once.

    python benchmarks/stalls.py [--clips 400] [--worlds 1] [--roots base=/tmp/stall/base,new=.] [--rounds 2]
    NUMBA_NUM_THREADS=1 python benchmarks/stalls.py --fill layout --clock thread --clips 300 \
        --roots base=/tmp/x/base,new=. --rounds 2

The parts a tree lacks (a function renamed or added) are left out of its table.
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ab_env, check_tree, emit, log  # noqa: E402

# (module, attribute path) of each timed part; the clip's own figures come from Engine.last_stats
PARTS = (
    ("spatia.world.engine", "Engine._prepare", "prepare"),  # conditioning: target renders, retrieval, projection
    ("spatia.world.memory", "SpatialMemory._render", "render"),
    ("spatia.world.engine", "retrieve_reference_frames", "retrieval"),
    ("spatia.world.engine", "Engine._commit", "commit"),  # memory update + history
    ("spatia.world.engine", "update_memory", "update_memory"),
    ("spatia.world.memory", "SpatialMemory._merge", "integrate"),
    ("spatia.world.memory", "SpatialMemory._adopt_growth", "adopt_growth"),
    ("spatia.world.memory", "SpatialMemory._grow", "grow"),
    ("spatia.world.memory", "SpatialMemory._reindex", "reindex"),
    ("spatia.world.memory", "SpatialMemory.remove_invented_near_groups", "remove_invented_near_groups"),
    ("spatia.world.memory", "SpatialMemory._drop", "drop"),
    ("spatia.world.memory", "SpatialMemory.drop_provisional", "drop_provisional"),
    ("spatia.world.memory", "SpatialMemory.compact_step", "compact_step"),
    ("spatia.world.history", "FrameStore.add", "framestore_add"),
    ("spatia.world.history", "VoxelSetIndex.add", "voxelset_add"),
    ("spatia.world.history", "VoxelSetIndex.seal", "voxelset_seal"),
    ("spatia.world.history", "VoxelSetIndex._ensure_table", "voxelset_table"),
    ("spatia.world.history", "VoxelSetIndex.rebuilt", "voxelset_rebuild"),
    ("spatia.world.history", "FrameStore._compact_cell", "compact_cell"),
    ("spatia.world.history", "GrowingRows.reserve", "growing_reserve"),
    ("spatia.world.history", "VoxelSetIndex.intersection_counts", "intersection_counts"),
    ("spatia.world.history", "FrameStore._loc", "history_wait_encoded"),  # a frame's records, once compressed
    ("spatia.world.history", "FrameStore.get_rgb", "history_get_rgb"),
    # the frame path's own parts (the geometric generator; a part its fill does not run stays 0)
    ("spatia.model.geometric", "GeometricGenerator._layout_fill", "layout_fill"),
    ("spatia.model.geometric", "GeometricGenerator._apply_references", "apply_references"),
    ("spatia.model.geometric", "see_through_pixels", "see_through"),
    ("spatia.model.geometric", "pushpull_fill", "pushpull"),
    ("spatia.model.geometric", "fill_holes_background", "fill_holes_background"),
    ("spatia.model.geometric", "_pinholes_on_planes", "pinholes_on_planes"),
    ("spatia.model.fill.geometry.layout", "view_bounds", "view_bounds"),
    ("spatia.model.fill.geometry.layout", "stale_closing_pixels", "stale_closing"),
    ("spatia.model.fill.texture.synthesis", "read_texels", "read_texels"),
    # a keyframe's memory update, inside ``update_memory``
    ("spatia.world.update", "pinholes", "update_pinholes"),
    ("spatia.world.update", "_choose_depth", "choose_depth"),
    ("spatia.world.memory", "SpatialMemory.remove_invented_seen_through", "carve_seen_through"),
    ("spatia.world.memory", "SpatialMemory.rendered_voxel_keys", "rendered_voxel_keys"),
)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] if s else float("nan")


def present_parts(parts):
    """``(owner, attribute, function, name)`` of each ``(module, attribute path, name)`` of ``parts`` present in this
    tree (``keyframe_update.py`` times its parts through it too)."""
    import importlib

    for module, path, name in parts:
        mod = importlib.import_module(module)
        owner_name, _, attr = path.rpartition(".")
        owner = getattr(mod, owner_name) if owner_name else mod
        fn = getattr(owner, attr, None)
        if fn is not None:
            yield owner, attr, fn, name


def _instrument(local, clock=time.perf_counter) -> list[str]:
    """Wrap each part present in this tree so that its ms on ``clock`` (wall, or ``time.thread_time``: the calling
    thread's CPU) add up in ``local.acc`` (a Counter per thread, per clip); the names wrapped."""
    wrapped = []
    for owner, attr, fn, name in present_parts(PARTS):

        def make(fn, name):
            @functools.wraps(fn)
            def timed(*a, **k):
                t0 = clock()
                try:
                    return fn(*a, **k)
                finally:
                    local.acc[name] += (clock() - t0) * 1e3
            return timed

        setattr(owner, attr, make(fn, name))
        wrapped.append(name)
    return wrapped


SCENES = ("room", "house", "courtyard", "room")  # play.py's worlds: session i plays SCENES[i % 4] with seed i


def _child(args) -> dict:
    """One tree's clips (run in a fresh process whose ``SPATIA_AB_ROOT`` picks the tree): ``--worlds`` worlds, each
    on a thread of its own (as a server's worlds), one numba thread each when more than one (server/host.py)."""
    import threading

    import numba
    import numpy as np

    import spatia.server.host  # noqa: F401  -- the server's OpenMP settings: the engine as served
    import spatia.world.engine as engine_mod
    from spatia.model import make_generator
    from spatia.server.config import ServerConfig
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    check_tree(engine_mod)  # an A/B's tree is the one it names (``_common.ab_env``)

    class Local(threading.local):
        def __init__(self) -> None:
            self.acc = collections.Counter()  # a thread that is no world's (setup, maintenance): counted, not read

    local = Local()
    wrapped = _instrument(local, time.thread_time if args.clock == "thread" else time.perf_counter)
    server = ServerConfig()
    scenes = [(args.scene, args.seed)] if args.worlds == 1 else [(SCENES[i % 4], i) for i in range(args.worlds)]
    # (a tree from before ``play_reuse_references_clips`` runs as it did: by distance only)
    reuse_clips = ({"reuse_references_clips": server.play_reuse_references_clips}
                   if hasattr(server, "play_reuse_references_clips") else {})
    engines = []
    for scene, seed in scenes:
        world = World.from_scene(scene, seed, args.width, args.height)
        engines.append(Engine(world, make_generator("geometric", **({"fill": args.fill} if args.fill else {})),
                              EngineConfig(clip=ClipConfig(4, 6, 2), keyframe_stride=server.play_keyframe_stride,
                                           reuse_references_within=server.play_reuse_references_within,
                                           commit_beside_next_clip=args.mode == "served" and len(scenes) == 1,
                                           **reuse_clips)))
    # a server's world has a core to spare only while it is the only one in play (server.host); a tree from before
    # ``spare_core`` runs as it did
    spare = ({"spare_core": len(engines) == 1}
             if "spare_core" in inspect.signature(Engine.generate_clip).parameters else {})
    start = threading.Barrier(len(engines))
    results: list = [None] * len(engines)

    def play(w: int) -> None:
        local.acc = acc = collections.Counter()
        if len(engines) > 1:
            numba.set_num_threads(1)
        engine = engines[w]
        world = engine.world
        poses = np.asarray(ActionIntegrator(world.current_c2w, ControlConfig(fps=args.fps)).run(
            [Action(move_forward=1.0, yaw_rate_rad_s=args.yaw_rate, dt_s=1 / args.fps)] * (args.warmup + args.clips)))
        rows = []
        start.wait()
        t_first = time.perf_counter()
        for i in range(len(poses)):
            if args.mode == "served":  # a clip per 1/fps s, as a session's actions come: the time between is idle
                time.sleep(max(0.0, t_first + i / args.fps - time.perf_counter()))
            acc.clear()
            t0, c0 = time.perf_counter(), time.thread_time()
            collections.deque(engine.generate_clip(poses[i : i + 1], **spare), maxlen=0)  # pulling: the update too
            wall, cpu = (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3
            if i >= args.warmup:
                st = engine.last_stats
                rows.append({"world": w, "clip": i, "phase": (len(engine.world.history) - 1) % server.play_keyframe_stride,
                             "wall": wall, "cpu": cpu, "generate": st.generate_s * 1e3,
                             "update": st.update_s * 1e3, "points": st.memory_points,
                             **{k: acc.get(k, 0.0) for k in wrapped}})
        results[w] = rows

    threads = [threading.Thread(target=play, args=(w,)) for w in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None for r in results):
        raise SystemExit("a world's thread failed")
    out = {"parts": ["wall", "cpu", "generate", "update", *wrapped], "rows": [r for rs in results for r in rs],
           "root": os.environ.get("SPATIA_AB_ROOT", ""), "engine_file": engine_mod.__file__}
    if args.digest:  # each world's memory at the end, to compare trees (same walk, same seed)
        import hashlib

        out["memory_sha256_by_key"] = []
        for engine in engines:
            arrays = engine.world.memory.to_arrays()
            order = np.argsort(arrays["voxel_keys"], kind="stable")
            h = hashlib.sha256()
            for k in sorted(arrays):
                h.update(np.ascontiguousarray(arrays[k][order]).tobytes())
            out["memory_sha256_by_key"].append(h.hexdigest()[:16])
        out["memory_points"] = [int(e.world.memory.num_points) for e in engines]
    return out


def _phases(runs: list[dict]) -> dict:
    """Per keyframe phase (the clip's frame index mod the keyframe stride; 0 = a keyframe, which the memory update
    integrates): clips and each part's mean ms, over every clip of every run of one tree."""
    rows = [r for run in runs for r in run["rows"]]
    out = {}
    for phase in sorted({r["phase"] for r in rows}):
        sel = [r for r in rows if r["phase"] == phase]
        out[str(phase)] = {"clips": len(sel), **{p: round(statistics.mean(r[p] for r in sel), 2)
                                                 for p in runs[0]["parts"]}}
    return out


def _table(runs: list[dict]) -> dict:
    """Per part: p50 / p95 / p99 / max / mean ms over every clip of every run of one tree."""
    parts = runs[0]["parts"]
    rows = [r for run in runs for r in run["rows"]]
    return {p: {"p50": round(_pct([r[p] for r in rows], 50), 2), "p95": round(_pct([r[p] for r in rows], 95), 2),
                "p99": round(_pct([r[p] for r in rows], 99), 2), "max": round(max(r[p] for r in rows), 2),
                "mean": round(statistics.mean(r[p] for r in rows), 2)} for p in parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=400, help="timed one-frame clips per process")
    ap.add_argument("--warmup", type=int, default=30, help="untimed clips first (numba caches, first retrieval)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--worlds", type=int, default=1, help="worlds played at once, each on a thread (play.py's "
                    "scenes: room, house, courtyard, room, seeds 0..)")
    ap.add_argument("--scene", default="room", help="with one world")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fps", type=float, default=30.0, help="one clip per 1/fps s of the walk (the same walk: "
                    "at 10, each clip moves 3x as far as at 30, as four served sessions' clips do)")
    ap.add_argument("--yaw-rate", type=float, default=0.4, help="rad/s while walking forward (play.py's walk)")
    ap.add_argument("--fill", default="legacy", help="geometric generator's fill (layout, legacy)")
    ap.add_argument("--roots", default="", help="NAME=DIR,...: trees to compare (SPATIA_AB_ROOT), first = baseline")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--digest", action="store_true", help="hash the final memory (by key) to compare trees")
    ap.add_argument("--slowest", type=int, default=8, help="list this many slowest clips per tree")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="the parts' clock: wall, or the world thread's CPU (thread: little moved by other load; "
                    "set NUMBA_NUM_THREADS=1 so that a kernel's work is all on that thread)")
    ap.add_argument("--mode", choices=("back-to-back", "served"), default="back-to-back",
                    help="back-to-back: each clip as soon as the last is done; served: a clip per 1/fps s of real "
                    "time (the idle time between them is the background threads') and, with one world, its memory "
                    "update beside the next clip, as a server's one session")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    roots = [tuple(x.split("=", 1)) for x in args.roots.split(",") if x] or [("current", "")]
    t_start, load0 = time.time(), os.getloadavg()
    runs: dict[str, list[dict]] = {name: [] for name, _ in roots}
    loads: dict[str, list] = {name: [] for name, _ in roots}
    for r in range(args.rounds if args.roots else 1):
        for name, root in (roots if r % 2 == 0 else roots[::-1]):
            env = ab_env(root) if root else dict(os.environ)
            before = os.getloadavg()
            log(f"round {r + 1}: {name} ({root or 'current tree'}), load {before[0]:.1f}")
            child = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                     if k not in ("roots", "rounds", "child", "digest", "slowest")]
            child += ["--digest"] if args.digest else []
            out = subprocess.run([sys.executable, __file__, *child, "--child"], env=env, capture_output=True,
                                 text=True)
            if out.returncode:
                sys.stderr.write(out.stderr[-4000:])
                raise SystemExit(f"{name}: child failed ({out.returncode})")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(res)
            loads[name].append([round(before[0], 1), round(os.getloadavg()[0], 1)])
    tables = {name: _table(rs) for name, rs in runs.items()}
    slowest = {}
    for name, rs in runs.items():
        rows = sorted((r for run in rs for r in run["rows"]), key=lambda r: -r["wall"])[: args.slowest]
        slowest[name] = [{k: round(v, 1) for k, v in r.items() if v >= 1.0 or k in ("clip", "phase", "wall", "points")}
                         for r in rows]
    events = {}  # per maintenance part: clips where it took >= 10 ms, and the longest (world, clip, points, ms)
    for name, rs in runs.items():
        rows = [r for run in rs for r in run["rows"]]
        events[name] = {}
        for part in ("grow", "adopt_growth", "reindex", "drop", "voxelset_table", "voxelset_seal",
                     "growing_reserve", "voxelset_rebuild"):
            hit = sorted((r for r in rows if r.get(part, 0.0) >= 10.0), key=lambda r: -r[part])
            events[name][part] = {"clips_over_10ms": len(hit), "longest": [
                [r.get("world", 0), r["clip"], r["points"], round(r[part], 1)] for r in hit[:3]]}
    first = roots[0][0]
    last = roots[-1][0]
    emit({
        "name": "stalls",
        "sizes": {"width": args.width, "height": args.height, "clips": args.clips, "warmup": args.warmup,
                  "worlds": args.worlds, "scene": args.scene, "seed": args.seed, "fill": args.fill,
                  "rounds": args.rounds},
        "trees": {name: root for name, root in roots},
        "loads": loads,
        "parts": tables,
        "phases": {name: _phases(rs) for name, rs in runs.items()},
        "slowest": slowest,
        "events": events,
        "memory": {name: sorted({json.dumps([r.get("memory_sha256_by_key"), r.get("memory_points")]) for r in rs})
                   for name, rs in runs.items()} if args.digest else None,
        "median_ms": tables[last]["wall"]["p50"],
        "baseline_median_ms": tables[first]["wall"]["p50"],
        "wall_s": round(time.time() - t_start, 1), "load_start": load0, "load": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
