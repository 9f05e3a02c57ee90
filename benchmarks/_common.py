"""Shared helpers of the benchmark scripts: timing (median of N runs after warm-up) and the one-JSON-object output.

Every ``benchmarks/*.py`` prints exactly one JSON object on stdout (progress goes to stderr) with at least
``median_ms``, ``baseline_median_ms`` (the naive numpy reference timed in the same run) and the sizes used.
Import from a script run as ``python benchmarks/x.py`` (the script's folder is on ``sys.path``)::

    from _common import emit, log, time_ms
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable


def _logs_to_stderr() -> None:
    """The library's structured logs go to stderr, as ``spatia``'s CLI sends them: stdout carries only the JSON
    (a fill thread's log line printed there broke a result line)."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


_logs_to_stderr()


def log(msg: str) -> None:
    """Progress line on stderr (stdout carries only the JSON result)."""
    print(msg, file=sys.stderr, flush=True)


def time_ms(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, setup: Callable[[], Any] | None = None
) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (``setup`` runs untimed before each call).

    Returns ``{"median_ms", "min_ms", "max_ms", "cpu_median_ms", "runs"}`` in milliseconds: wall-clock
    (``perf_counter``) and the process's CPU time summed over its threads (``process_time``). On a shared machine
    the CPU time is the steadier figure: other processes stretch wall time but not the CPU work done.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        if setup is not None:
            setup()
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {
        "median_ms": round(statistics.median(times), 3),
        "min_ms": round(min(times), 3),
        "max_ms": round(max(times), 3),
        "cpu_median_ms": round(statistics.median(cpu), 3),
        "runs": repeats,
    }


def load_average() -> float:
    """1-minute load average (how contended the machine was while timing), or -1 where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return -1.0


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` on this machine has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """What the numbers were measured on (timings on a shared machine are noisy; say so next to them)."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "load_average_1min": load_average()
    }
    try:
        import numba

        info["numba_threads"] = numba.get_num_threads()
    except ImportError:  # numba is a project dependency; this only keeps the helper usable without it
        pass
    return info


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's single JSON object on stdout."""
    result = {**result, "machine": machine()}
    print(json.dumps(result, sort_keys=False))
    sys.stdout.flush()


def add_ab_arguments(parser) -> None:
    """``--roots`` / ``--rounds`` and the hidden ``--child`` of a benchmark that alternates trees in fresh processes
    (``SPATIA_AB_ROOT``; ``mirrored_order``)."""
    parser.add_argument("--roots", default="", help="NAME=DIR,... trees to alternate (the first is the baseline)")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs per tree, mirrored (A B B A ...)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def run_here(args, child: Callable[[Any], dict[str, Any]], labels: dict[str, Any]) -> bool:
    """For an A/B benchmark (``add_ab_arguments``): as a tree's child process, print ``child(args)`` as JSON for the
    parent; without ``--roots``, emit it with ``labels``. False when the trees are to be alternated instead."""
    if not (args.child or not args.roots):
        return False
    result = child(args)
    if args.child:
        print(json.dumps(result))
    else:
        emit({**labels, **result})
    return True


# A child process's ``sitecustomize``: the ``spatia`` packages imported from ``SPATIA_AB_ROOT`` instead of the editable
# install's tree (the install maps ``spatia.model`` to ``<repo>/model`` etc.; a tree exported or checked out elsewhere
# has the same layout). Without it every "tree" of an A/B ran the editable install's code (sessions 37-38 found
# stalls.py's base and new memories equal for that reason).
_AB_SITE = """import importlib.util, os, sys
_root = os.environ.get("SPATIA_AB_ROOT")
if _root:
    _map = {"spatia": "spatia", "spatia.client": "client", "spatia.model": "model", "spatia.proto": "proto",
            "spatia.server": "server", "spatia.world": "world"}

    class _Tree:
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name not in _map:
                return None
            where = os.path.join(_root, _map[name])
            return importlib.util.spec_from_file_location(name, os.path.join(where, "__init__.py"),
                                                          submodule_search_locations=[where])

    sys.meta_path.insert(0, _Tree)
"""


def ab_env(root: str, **extra: str) -> dict[str, str]:
    """The environment of an A/B child that imports ``spatia`` from the tree at ``root`` (``SPATIA_AB_ROOT`` and a
    ``sitecustomize`` on ``PYTHONPATH`` that honours it), plus ``extra``."""
    import tempfile

    site = Path(tempfile.gettempdir()) / f"spatia_ab_site_{os.getuid()}"
    site.mkdir(exist_ok=True)
    if not (site / "sitecustomize.py").exists() or (site / "sitecustomize.py").read_text() != _AB_SITE:
        tmp = site / f"sitecustomize.py.{os.getpid()}"
        tmp.write_text(_AB_SITE)
        os.replace(tmp, site / "sitecustomize.py")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "SPATIA_AB_ROOT": str(Path(root).resolve()), "PYTHONPATH": path, **extra}


def check_tree(module) -> None:
    """In an A/B child: fail unless ``module`` (a ``spatia`` module) was imported from ``SPATIA_AB_ROOT``."""
    root = os.environ.get("SPATIA_AB_ROOT")
    if root and not str(Path(module.__file__).resolve()).startswith(str(Path(root).resolve()) + os.sep):
        raise SystemExit(f"imported {module.__name__} from {module.__file__}, not from the tree {root}")


def mirrored_order(roots_arg: str, rounds: int) -> list[list[str]]:
    """``--roots NAME=DIR,...`` as the [name, dir] runs of an A/B: each round every tree, then the same trees
    mirrored (A B B A, B A A B, ...), so that each tree sees the same minutes of a shared machine."""
    roots = [r.split("=", 1) for r in roots_arg.split(",")]
    order: list[list[str]] = []
    for r in range(rounds):
        order += roots + roots[::-1] if r % 2 == 0 else roots[::-1] + roots
    return order


def compact_plainly(memory, keep) -> None:
    """Keep the rows where ``keep`` [n] bool is True of a ``spatia.world.memory.SpatialMemory``, moving them down in
    order and rebuilding its hash table: the O(points) compaction its drops are measured against."""
    for name in ("_keys", "_offsets", "_colors", "_counts", "_last", "_prov"):
        a = getattr(memory, name)
        kept = a[: memory._n][keep]
        a[: len(kept)] = kept
    memory._n_sorted = int(keep[: memory._n_sorted].sum())
    memory._n = int(keep.sum())
    memory._rehash()
