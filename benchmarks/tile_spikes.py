"""The frames that make many texture tiles themselves: per clip, the layout fill's tile reads (``read_texels``),
with missing tiles shared with the helper thread (``synthesis.SHARED_TILES_FROM``, this tree) and made one by one
on the frame's thread (the baseline: the threshold out of reach), in fresh processes alternated ``--rounds`` times.

The engine in-process along play.py's walk (forward while turning, a one-frame clip per 1/30 s, the server's play
settings) from the room (seed 0) at 640x360. Per run: the clips whose tile reads took the longest (ms), every
clip's tile-read p50 / p99 / max, the clip wall's p50 / p95 / p99, and a hash of every frame (both modes must
agree: who makes a tile does not change it).

    python benchmarks/tile_spikes.py [--clips 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, load_average, log, machine  # noqa: E402


def _child(clips: int, serial: bool) -> dict:
    import numpy as np

    import spatia.server.host  # noqa: F401  -- the server's OpenMP settings: the engine as served
    from spatia.model import make_generator
    from spatia.model.fill.texture import synthesis
    from spatia.server.config import ServerConfig
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    if serial:
        synthesis.SHARED_TILES_FROM = 1 << 62
    spent = [0.0]
    read = synthesis.read_texels

    def timed(*args):
        t = time.perf_counter()
        read(*args)
        spent[0] += time.perf_counter() - t

    synthesis.read_texels = timed  # model.geometric imports it inside the fill, from the module
    server = ServerConfig()
    world = World.from_scene("room", 0, 640, 360)
    engine = Engine(world, make_generator("geometric", fill="layout"),
                    EngineConfig(clip=ClipConfig(4, 6, 2), keyframe_stride=server.play_keyframe_stride,
                                 reuse_references_within=server.play_reuse_references_within,
                                 reuse_references_clips=server.play_reuse_references_clips))
    poses = np.asarray(ActionIntegrator(world.current_c2w, ControlConfig(fps=30)).run(
        [Action(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1 / 30)] * clips))
    h = hashlib.sha256()
    rows = []
    for i in range(clips):
        spent[0] = 0.0
        t = time.perf_counter()
        for f in engine.generate_clip(poses[i : i + 1]):
            h.update(f.rgb.tobytes())
        rows.append((i, (time.perf_counter() - t) * 1e3, spent[0] * 1e3))
    steady = rows[30:]  # after the warm-up's first frames
    reads = np.array([r[2] for r in steady])
    walls = np.array([r[1] for r in steady])
    worst = sorted(steady, key=lambda r: -r[2])[:6]
    return {"frames_sha256": h.hexdigest()[:16],
            "tile_reads_ms": {"p50": round(float(np.percentile(reads, 50)), 2),
                              "p99": round(float(np.percentile(reads, 99)), 2), "max": round(float(reads.max()), 2)},
            "wall_ms": {q: round(float(np.percentile(walls, int(q[1:]))), 1) for q in ("p50", "p95", "p99")},
            "worst_clips": [{"clip": i, "tile_reads_ms": round(r, 1), "wall_ms": round(w, 1)} for i, w, r in worst]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", choices=["shared", "serial"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.clips, args.child == "serial")))
        return
    runs = collections.defaultdict(list)
    loads = []
    for r in range(args.rounds):
        for mode in (("serial", "shared") if r % 2 == 0 else ("shared", "serial")):
            log(f"round {r}: {mode}")
            loads.append(load_average())
            out = subprocess.run([sys.executable, __file__, "--clips", str(args.clips), "--child", mode],
                                 capture_output=True, text=True, check=True, env=os.environ)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    emit({"name": "tile_spikes", "sizes": {"width": 640, "height": 360, "clips": args.clips, "scene": "room",
                                           "rounds": args.rounds},
          "baseline": "serial", "runs": dict(runs),
          "same_frames": len({run["frames_sha256"] for rs in runs.values() for run in rs}) == 1,
          "load": loads, "machine": machine()})


if __name__ == "__main__":
    main()
