"""Joining a Ray cluster for ``spatia serve --ray`` (issue 12): options, ``connect``, and the start-up checks
every node must pass (same data dir, same project version).

Nothing here imports Ray at module level: ``spatia serve`` without ``--ray`` never loads it
(tests/test_imports.py checks). The world actors themselves are in server/ray_host.py.

- ``connect(options, data_dir)``: without an address a local Ray is started (``num_cpus`` of this machine, no
  dashboard); ``auto`` joins the cluster this machine is a node of (``ray start`` ran here); ``ray://HOST:PORT``
  joins through Ray Client (a front door outside the cluster: development only, every frame then crosses the
  client's proxy; docs/SCALE.md).
- The shared data dir: the first front door writes ``<data_dir>/.cluster/sentinel`` (a random token, atomically);
  every node, checked with one task pinned to it, must read the same token from the same path, or the front door
  refuses to start, naming the node. Worlds and recordings are written there by actors on any node, so a node that
  sees another directory (a local disk instead of the shared mount) would fork the worlds.
- The version: ``project_version()`` is the package version plus a hash of the project's Python sources; a node
  whose interpreter reports another one is refused (the same check runs in each world actor's constructor).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import structlog

from spatia.world.errors import InvalidInputError

log = structlog.get_logger("spatia.server.cluster")

NAMESPACE = "spatia"  # every world actor is named in this Ray namespace
SENTINEL = Path(".cluster") / "sentinel"


class ClusterCheckError(RuntimeError):
    """A node does not see the same data dir or does not run the same project version: the front door refuses to
    start (the message names the node)."""


@dataclass(frozen=True)
class ClusterOptions:
    """How ``spatia serve --ray`` places worlds.

    ``address``: None = start a local Ray; ``auto``; ``ray://HOST:PORT``. ``world_cpus`` / ``world_gpus``: the
    resources each world actor reserves (None GPUs = 1 for the ``spatia`` generator, 0 otherwise); numba's thread
    count in the actor follows ``world_cpus`` (at least 1). ``lease_ttl_s``: a controller lease not renewed for
    this long is free again (a front door that died mid-Play cannot lock its world; it renews every third of it).
    ``idle_exit_s``: a world actor with no lease and no call for this long saves and exits (None: never).
    ``placement_timeout_s``: a world that cannot be placed within this long answers RESOURCE_EXHAUSTED.
    ``local_cpus``: CPUs of a local Ray (no address); None = Ray's default (all cores)."""

    address: str | None = None
    world_cpus: float = 0.5
    world_gpus: float | None = None
    lease_ttl_s: float = 10.0
    idle_exit_s: float | None = 600.0
    placement_timeout_s: float = 30.0
    local_cpus: int | None = None
    # Play clips through a compiled graph per session (Ray Compiled Graphs: ~1 ms per frame's round trip instead of
    # ~5 ms for a streaming call; server/ray_host.py ``_PlayGraph``). An actor runs one graph at a time: a session's
    # claim ends any graph loop left running (a front door that died or lost its lease), and a graph that cannot
    # start falls back to streaming calls (docs/SCALE.md). False: streaming calls only.
    compiled_play: bool = True
    stats_interval_s: float = 1.0  # how often a front door refreshes its cached view of each world actor
    # "world": the real host; "gpu-standin": server/standin.py's stand-in for a GPU generator (benchmarks only)
    host_kind: str = "world"

    def __post_init__(self) -> None:
        if self.address is not None and not (self.address == "auto" or self.address.startswith("ray://")
                                             or ":" in self.address):
            raise InvalidInputError(f"--ray address must be 'auto', 'ray://HOST:PORT' or HOST:PORT, got "
                                    f"{self.address!r}")
        if not self.world_cpus > 0:
            raise InvalidInputError(f"world_cpus must be > 0, got {self.world_cpus}")
        if self.world_gpus is not None and self.world_gpus < 0:
            raise InvalidInputError(f"world_gpus must be >= 0, got {self.world_gpus}")
        for name in ("lease_ttl_s", "placement_timeout_s", "stats_interval_s"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.host_kind not in ("world", "gpu-standin"):
            raise InvalidInputError(f"host_kind must be 'world' or 'gpu-standin', got {self.host_kind!r}")
        if self.idle_exit_s is not None and not self.idle_exit_s > 0:
            raise InvalidInputError(f"idle_exit_s must be > 0 or None, got {self.idle_exit_s}")

    def gpus_for(self, generator: str) -> float:
        if self.world_gpus is not None:
            return self.world_gpus
        return 1.0 if generator == "spatia" else 0.0


@lru_cache(maxsize=1)
def project_version() -> str:
    """``<package version>+<12 hex of a hash of every .py file of the project>``: two checkouts of one release
    with different code differ (the package version alone would not say so)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for package in ("world", "model", "server", "proto", "spatia"):
        for p in sorted((root / package).rglob("*.py")):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    try:
        release = importlib.metadata.version("spatia-world")
    except importlib.metadata.PackageNotFoundError:
        release = "0+unknown"
    return f"{release}+{h.hexdigest()[:12]}"


def ensure_sentinel(data_dir: Path) -> str:
    """The data dir's sentinel token (created atomically by the first front door; ``O_EXCL`` so two front doors
    starting together agree on one)."""
    path = Path(data_dir) / SENTINEL
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass  # another front door created it first: its token is read below
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
            f.flush()
            os.fsync(f.fileno())
    for _ in range(50):  # a sentinel being written by another front door right now
        token = path.read_text().strip()
        if token:
            return token
        import time

        time.sleep(0.02)
    raise ClusterCheckError(f"data dir sentinel {path} is empty")


def node_report(data_dir: str) -> dict:
    """What one node sees (runs in a task pinned to that node)."""
    import socket

    path = Path(data_dir) / SENTINEL
    try:
        token = path.read_text().strip()
    except OSError as exc:
        token = f"<unreadable: {exc.strerror}>"
    return {"host": socket.gethostname(), "sentinel": token, "version": project_version()}


def check_report(report: dict, node: str, token: str, version: str, data_dir: Path) -> None:
    if report["sentinel"] != token:
        raise ClusterCheckError(
            f"node {node} ({report['host']}) does not see this data dir: {data_dir / SENTINEL} holds "
            f"{report['sentinel']!r} there, {token!r} here. Every node must mount the same shared data dir at the "
            "same path (docs/SCALE.md, 'Shared data dir')")
    if report["version"] != version:
        raise ClusterCheckError(
            f"node {node} ({report['host']}) runs spatia {report['version']}, this front door {version}; every node "
            "must run the same project version (docs/SCALE.md, 'One version')")


def check_nodes(data_dir: Path, timeout_s: float = 60.0) -> list[dict]:
    """Run ``node_report`` on every alive node and refuse (``ClusterCheckError``) any that differs."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    data_dir = Path(data_dir).resolve()
    token = ensure_sentinel(data_dir)
    version = project_version()
    remote = ray.remote(num_cpus=0)(node_report)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(data_dir)) for n in nodes]
    reports = ray.get(refs, timeout=timeout_s)
    for n, r in zip(nodes, reports):
        check_report(r, n["NodeID"][:12], token, version, data_dir)
    log.info("cluster nodes checked", nodes=len(nodes), version=version, data_dir=str(data_dir))
    return reports


def connect(options: ClusterOptions, data_dir: Path) -> None:
    """Join (or start) Ray in namespace ``spatia`` and check every node; ``ClusterCheckError`` on a mismatch."""
    import ray

    if not ray.is_initialized():
        kwargs: dict = {"namespace": NAMESPACE, "include_dashboard": False, "log_to_driver": False}
        if options.address is None:
            if options.local_cpus is not None:
                kwargs["num_cpus"] = options.local_cpus
            ray.init(address="local", **kwargs)  # a new local Ray, never one another process started here
        else:
            ray.init(address=options.address, **kwargs)
        log.info("ray joined", address=options.address or "local", namespace=NAMESPACE)
    check_nodes(data_dir)
