"""The layout fill's frame path: compiled (``GeometricGenerator._layout_fill``) vs its numpy definition
(``_layout_fill_reference``), the same captured frames, alternated in one run (issue 10 sec. 4).

Each item's frames are made once through the engine (scene loops at ``--width x --height`` in the server's play
clips 4 / 6 / 2, keyframe stride 4; ``gym``: the in-process env's 128x96 walk of random actions), every call of the
layout fill captured; then both versions replay every captured call ``--rounds`` times, alternated, timed with
``time.thread_time`` (CPU of this thread: numba runs single-threaded here). Outputs (depth, colour mask, frame) are
compared bit for bit on every call.

    .venv/bin/python benchmarks/layout_fill.py --items gym house courtyard [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import _common  # noqa: E402,F401  (logs to stderr: stdout carries only the JSON lines)
import spatia.model.geometric as geo  # noqa: E402

G = geo.GeometricGenerator


def capture(item: str, width: int, height: int, frames: int) -> list[tuple]:
    calls = []
    fill = G._layout_fill

    def capturing(self, state, rgb, colored, depth, valid, c2w, request, reach, *rest):
        # (rest: the per-plane coarse fill, which answers alike when asked again, the view, the references' claims
        # and the observed pixels)
        calls.append((self, state, rgb.copy(), colored.copy(), depth.copy(), valid.copy(), c2w.copy(), request,
                      reach, tuple(x.copy() if isinstance(x, np.ndarray) else x for x in rest)))
        return fill(self, state, rgb, colored, depth, valid, c2w, request, reach, *rest)

    G._layout_fill = capturing
    try:
        if item == "gym":
            import spatia.client  # noqa: F401
            from spatia.client.env import SpatiaWorldEnv

            rng = np.random.default_rng(0)
            env = SpatiaWorldEnv(width=128, height=96)
            env.reset(seed=0)
            for _ in range(frames):
                env.step(np.array([rng.uniform(0.2, 1), rng.uniform(-0.5, 0.5), 0, rng.uniform(-1, 1),
                                   rng.uniform(-0.2, 0.2)], np.float32))
            env.close()
            return calls[20:]  # after the first layout fits and tile warm-ups
        from spatia.world.actions import ClipConfig
        from spatia.world.engine import Engine, EngineConfig
        from spatia.world.scenes import make_scene
        from spatia.world.state import World

        world = World.from_scene(item, 0, width, height)
        cfg = EngineConfig(clip=ClipConfig(first_clip_frames=4, clip_frames=6, preceding_frames=2), keyframe_stride=4)
        engine = Engine(world, G(geo.GeometricConfig()), cfg)
        shown = sum(1 for _ in engine.generate(make_scene(item, 0).demo_path(frames)[1:], seed=0))  # counted, not kept
        assert shown and calls, "the loop generated no frame"
        return calls
    finally:
        G._layout_fill = fill


def replay(calls: list[tuple], fn) -> tuple[np.ndarray, list]:
    ms, outs = [], []
    for self, state, rgb, colored, depth, valid, c2w, request, reach, rest in calls:
        out_rgb = rgb.copy()
        t = time.thread_time()
        depth_out, colored_out = fn(self, state, out_rgb, colored, depth, valid, c2w, request, reach, *rest)
        ms.append((time.thread_time() - t) * 1000)
        outs.append((depth_out, colored_out, out_rgb))
    return np.array(ms), outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", nargs="+", default=["gym", "house", "courtyard"])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--frames", type=int, default=161, help="loop length (scenes) or steps (gym)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for item in args.items:
        calls = capture(item, args.width, args.height, args.frames)
        replay(calls, G._layout_fill)  # warm: tiles, kernels
        runs = {"fused": [], "reference": []}
        identical = True
        for _ in range(args.rounds):
            fused, outs_f = replay(calls, G._layout_fill)
            ref, outs_r = replay(calls, G._layout_fill_reference)
            runs["fused"].append(fused)
            runs["reference"].append(ref)
            identical &= all(np.array_equal(a, b) for of, orf in zip(outs_f, outs_r) for a, b in zip(of, orf))

        def stats(rounds: list[np.ndarray]) -> dict:
            means = [float(r.mean()) for r in rounds]
            return {"mean_ms": round(min(means), 3), "mean_ms_rounds": [round(m, 3) for m in means],
                    "p95_ms": round(float(np.percentile(np.concatenate(rounds), 95)), 3)}

        print(json.dumps({"name": "layout_fill", "item": item, "size": [128, 96] if item == "gym" else
                          [args.width, args.height], "frames": len(calls), "fused": stats(runs["fused"]),
                          "baseline": "reference (numpy), same frames, same run", "reference": stats(runs["reference"]),
                          "identical": bool(identical), "load": [round(x, 1) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    main()
