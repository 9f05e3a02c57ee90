"""``spatia`` — the command line. Subcommands import their packages lazily, so ``spatia --help`` is instant."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import structlog


def _configure_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build a world, fly a closed loop through it, write video/cloud/map/summary")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--scene", default=None, help="procedural scene: room, house, courtyard (default room)")
    src.add_argument("--image", type=Path, help="a photograph to start from (depth: --depth, --depth-model or a planar prior)")
    src.add_argument("--case", type=Path, help="an official Spatia case directory (img.jpg, intrinsics.txt, w2c.txt, ...)")
    p.add_argument("--depth", type=Path, help="depth for --image: .npy metres or 16-bit PNG millimetres")
    p.add_argument("--depth-model", type=Path, help="local transformers depth-estimation model directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360, help="frame height for procedural scenes")
    p.add_argument("--frames", type=int, default=161, help="length of the closed loop, in frames")
    p.add_argument("--fps", type=float, default=16.0, help="video frame rate")
    p.add_argument("--generator", default="geometric", help="generator name (see model.GENERATOR_NAMES)")
    p.add_argument("--weights", type=Path, help="weights directory for a neural generator")


def _run_demo(args: argparse.Namespace) -> int:
    import json

    from spatia.demo import DemoOptions, run_demo

    opts = DemoOptions(
        out=args.out, scene=args.scene, image=args.image, depth=args.depth, case=args.case, seed=args.seed,
        width=args.width, height=args.height, frames=args.frames, fps=args.fps, generator=args.generator,
        weights=args.weights, depth_model=args.depth_model,
    )
    summary = run_demo(opts)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spatia", description="Spatia World: explorable worlds with spatial memory")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    from world.errors import SpatiaError

    try:
        return {"demo": _run_demo}[args.command](args)
    except SpatiaError as exc:  # bad input: one clear line, no traceback
        print(f"spatia {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
