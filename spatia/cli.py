"""``spatia`` — the command line. Each subcommand lives in ``spatia/cmd_<name>.py`` with two functions,
``add_parser(subparsers)`` and ``run(args) -> int``; the packages it needs are imported inside ``run``, so
``spatia --help`` is instant."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

import structlog

# numba would first try TBB, find this machine's too old and say so on every run; OpenMP is what it then uses.
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

# In the order ``spatia --help`` lists them. A module that does not exist yet is simply not offered.
COMMANDS = ("demo", "serve", "play", "web", "replay", "export_rerun", "eval", "train")


def _configure_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spatia", description="Spatia World: explorable worlds with spatial memory")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {}
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"spatia.cmd_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"spatia.cmd_{name}":
                continue
            raise
        module.add_parser(sub)
        runners[name] = module.run
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    from spatia.world.errors import SpatiaError

    try:
        return int(runners[args.command.replace("-", "_")](args) or 0)
    except SpatiaError as exc:  # bad input: one clear line, no traceback
        print(f"spatia {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
