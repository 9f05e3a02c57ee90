"""``spatia`` — the command line. Each subcommand lives in ``spatia/cmd_<name>.py`` with two functions,
``add_parser(subparsers)`` and ``run(args) -> int``; the packages it needs are imported inside ``run``, so
``spatia --help`` is instant.

Errors a user can fix (bad input, a port in use, a missing file, a server that does not answer, a missing extra)
print one line naming the problem and exit non-zero without a traceback; ``-v`` shows the traceback too."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

import structlog

# numba would first try TBB, find this machine's too old and say so on every run; OpenMP is what it then uses.
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
# OpenBLAS splits a large product (the layout fill's sky rays times the frame's rotation) over threads of its own
# that spin while they wait: on shared cores they take CPU from every session (docs/BENCHMARKS.md, session 16,
# lspeed2). One thread gives the same bits (each output element is one thread's). Read when numpy loads: before any
# command imports it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# In the order ``spatia --help`` lists them. A module that does not exist yet is simply not offered.
COMMANDS = ("demo", "serve", "play", "web", "replay", "export_rerun", "eval", "train", "health")

# Which extra brings a module a command may miss in a slim install (pyproject.toml).
EXTRA_OF = {
    "torch": "neural", "diffusers": "neural", "transformers": "neural", "safetensors": "neural", "peft": "neural",
    "pygame": "play", "open3d": "server", "numba": "server", "scipy": "server", "cv2": "server",
    "matplotlib": "server", "mcap": "server", "mcap_protobuf": "server", "msgpack": "server", "zstandard": "server",
    "imageio": "server", "tqdm": "server", "grpc_reflection": "server", "prometheus_client": "server",
    "aiohttp": "web", "aiortc": "web", "rerun": "web", "foxglove_schemas_protobuf": "web",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("spatia-world")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (pytest's capture swaps it; a fixed file would go stale)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(verbose: bool = False, fmt: str = "console") -> None:
    """structlog to stderr: ``console`` (coloured key=value lines) or ``json`` (one object a line, for log
    shippers). Tracebacks are rendered as plain text in both: never with local variables, which could hold tokens,
    image bytes or whole worlds."""
    level = logging.DEBUG if verbose else logging.INFO
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=fmt == "json"),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        processors = [*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    elif fmt == "console":
        processors = [*shared, structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback)]
    else:
        raise ValueError(f"log format must be 'console' or 'json', got {fmt!r}")
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),
        cache_logger_on_first_use=False,
    )


def _one_line(command: str, exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    from spatia.world.errors import SpatiaError

    if isinstance(exc, SpatiaError):  # bad input
        return str(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in EXTRA_OF:
            return (f"this needs {top}, which is not installed: pip install 'spatia-world[{EXTRA_OF[top]}]' "
                    "(or `make setup` for everything)")
        return None
    if isinstance(exc, OSError) and exc.filename is not None:  # unwritable --out, a missing or unreadable file
        what = exc.strerror or type(exc).__name__
        return f"{exc.filename}: {what}"
    client_api = sys.modules.get("spatia.client.api")
    if client_api is not None and isinstance(exc, client_api.WorldServiceError):
        import grpc

        if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return f"cannot reach the server (--server): {exc.code.name}: {exc.message}"
        return f"the server answered {exc.code.name}: {exc.message}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spatia", description="Spatia World: explorable worlds with spatial memory")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs, and tracebacks on errors")
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
    configure_logging(args.verbose, os.environ.get("SPATIA_LOG_FORMAT", "console")
                      if os.environ.get("SPATIA_LOG_FORMAT") in ("console", "json") else "console")
    try:
        return int(runners[args.command.replace("-", "_")](args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _one_line(args.command, exc)
        if message is None or args.verbose:
            raise
        print(f"spatia {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
