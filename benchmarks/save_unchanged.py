"""Benchmark: the saver's CPU for a world save (``WorldLog.write``) when few or no memory blocks changed, with the
fingerprint test (a save digests only blocks whose fingerprint differs from the block the log holds) against the
baseline in the same run (every block digested: the same log with its fingerprints forgotten before each write).

A world (``room``, 640x360) is played ``--clips`` one-frame clips along play.py's walk (the server's play
settings), one world per way played alike, and saved once; then, alternated ``--repeats`` times, each way writes
(a) the same memory again (nothing changed: what a save of an idle world, or of one whose play touched a corner,
costs) and (b) after ``--more`` clips more (what an autosave during play costs). Reported: the saver thread's CPU
ms per write (p50 / min) and the blocks written, per way; both ways write the same records.

    python benchmarks/save_unchanged.py [--clips 400] [--more 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit, load_average, log, machine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--more", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import spatia.server.host  # noqa: F401  -- the server's OpenMP settings
    from spatia.model import make_generator
    from spatia.server.config import ServerConfig
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World
    from spatia.world.worldlog import WorldLog

    server = ServerConfig()
    ways = ("fingerprints", "digest_all")
    # one world per way, played alike (the same walk and seed give the same memory): a log moves its world's
    # frames into its own directory, so two logs cannot share a world
    worlds = {way: World.from_scene("room", 0, 640, 360) for way in ways}
    engines = {way: Engine(w, make_generator("geometric", fill="layout"),
                           EngineConfig(clip=ClipConfig(4, 6, 2), keyframe_stride=server.play_keyframe_stride,
                                        reuse_references_within=server.play_reuse_references_within,
                                        reuse_references_clips=server.play_reuse_references_clips))
               for way, w in worlds.items()}
    total = args.clips + args.repeats * args.more
    poses = np.asarray(ActionIntegrator(worlds[ways[0]].current_c2w, ControlConfig(fps=30)).run(
        [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1 / 30)] * total))
    done = 0

    def play(n: int) -> None:
        nonlocal done
        for engine in engines.values():
            for i in range(done, done + n):
                collections.deque(engine.generate_clip(poses[i : i + 1]), maxlen=0)
        done += n

    log(f"playing {args.clips} clips, twice")
    play(args.clips)
    rows = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        logs = {way: WorldLog(Path(tmp) / way) for way in ways}
        for way, wl in logs.items():
            wl.write(wl.prepare_save(worlds[way]))
        load0 = load_average()
        for r in range(args.repeats):
            for case in ("unchanged", "after_clips"):
                if case == "after_clips":
                    play(args.more)
                plans = {way: wl.prepare_save(worlds[way]) for way, wl in logs.items()}
                written = {}
                for way in ways if r % 2 == 0 else ways[::-1]:
                    wl = logs[way]
                    if way == "digest_all":
                        wl._fingerprints = {}  # the baseline: no block known, every block digested
                    c = time.thread_time()
                    report = wl.write(plans[way])
                    rows[way, case].append((time.thread_time() - c) * 1e3)
                    written[way] = report.blocks_written
                if written["fingerprints"] != written["digest_all"]:
                    raise SystemExit(f"the two ways wrote different blocks: {written}")
                rows["blocks", case].append(written["fingerprints"])
        for wl in logs.values():
            wl.close()
    points = int(worlds[ways[0]].memory.num_points)
    for w in worlds.values():
        w.close()
    out = {}
    for case in ("unchanged", "after_clips"):
        for way in ("fingerprints", "digest_all"):
            v = rows[way, case]
            out[f"{case}_{way}_cpu_ms"] = {"p50": round(statistics.median(v), 1), "min": round(min(v), 1)}
        out[f"{case}_blocks_written"] = rows["blocks", case]
    emit({"name": "save_unchanged", "sizes": {"clips": args.clips, "more": args.more, "repeats": args.repeats,
                                              "memory_points": points},
          **out, "median_ms": out["after_clips_fingerprints_cpu_ms"]["p50"],
          "baseline_median_ms": out["after_clips_digest_all_cpu_ms"]["p50"],
          "baseline": "the same log and plan with every block digested (fingerprints forgotten before the write)",
          "load_start": load0, "load": load_average(), "machine": machine()})


if __name__ == "__main__":
    main()
