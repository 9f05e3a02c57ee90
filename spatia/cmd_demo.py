"""``spatia demo``: build a world, fly a closed loop through it, write video / cloud / map / summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spatia.argtypes import at_least, positive_float


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build a world, fly a closed loop through it, write video/cloud/map/summary")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--scene", default=None, help="procedural scene: room, house, courtyard (default room)")
    src.add_argument("--image", type=Path, help="a photograph to start from (depth: --depth, --depth-model, else the "
                     "layout measured from the photo; the planar prior when that is unsure)")
    src.add_argument("--case", type=Path, help="an official Spatia case directory (img.jpg, intrinsics.txt, w2c.txt, ...)")
    p.add_argument("--depth", type=Path, help="depth for --image: .npy metres or 16-bit PNG millimetres")
    p.add_argument("--depth-model", type=Path, help="local transformers depth-estimation model directory")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--width", type=at_least(8), default=640)
    p.add_argument("--height", type=at_least(8), default=360, help="frame height for procedural scenes")
    p.add_argument("--frames", type=at_least(2), default=161, help="length of the closed loop, in frames")
    p.add_argument("--fps", type=positive_float, default=16.0, help="video frame rate")
    p.add_argument("--generator", default="geometric", help="geometric (default), spatia-tiny, spatia (needs --weights)")
    p.add_argument("--weights", type=Path, help="weights directory for the Spatia network")


def run(args: argparse.Namespace) -> int:
    from spatia.demo import DemoOptions, run_demo

    opts = DemoOptions(
        out=args.out, scene=args.scene, image=args.image, depth=args.depth, case=args.case, seed=args.seed,
        width=args.width, height=args.height, frames=args.frames, fps=args.fps, generator=args.generator,
        weights=args.weights, depth_model=args.depth_model,
    )
    print(json.dumps(run_demo(opts), indent=2))
    return 0
