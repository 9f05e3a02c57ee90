"""Prometheus metrics of one server process (``spatia serve --metrics-port P`` serves them at ``/metrics``).

Two sources, both owned by the process that holds the numbers (issue 14: once worlds live in other processes,
the front door aggregates what they report):

- ``MetricsInterceptor`` (a ``grpc.aio`` server interceptor, outermost, so refused calls count too) sees every RPC
  and every message a server stream writes: RPC counts and latency histograms by service, method and status code
  (the go-grpc-prometheus names ``grpc_server_handled_total`` / ``grpc_server_handling_seconds``), frames written
  per RPC, and the clip generate / update times and dropped-frame counts that Play's ``SessionStats`` carry.
- ``ServerCollector`` reads the live state of the server object at scrape time (nothing is copied in between):
  live sessions, worlds with their memory points, history frames, snapshot size and last save time, and the
  per-session queue depths. ``_read_server`` reads them from ``WorldServer.stats()`` only.

Each ``ServerMetrics`` has its own ``CollectorRegistry``, so several servers in one process (tests) do not mix.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from spatia.proto.spatia.v1 import world_pb2 as pb

# RPC latency: unary calls take ms, Play / Generate streams last seconds to hours.
RPC_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200)
# Clip times: the geometric generator takes a few ms per clip on CPU, the network tens of seconds on a GPU.
CLIP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _split_method(full: str) -> tuple[str, str]:
    """'/spatia.v1.WorldService/Play' -> ('spatia.v1.WorldService', 'Play')."""
    _, _, rest = full.partition("/")
    service, _, method = rest.partition("/")
    return service or "unknown", method or full


def _code_name(context, exc: BaseException | None) -> str:
    """The status the call ended with: what the handler set (``abort`` sets it too), else OK / CANCELLED / UNKNOWN."""
    code = None
    try:
        code = context.code()
    except Exception:  # older grpcio: no code() on the aio context
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpcio versions hand back the raw integer
        for c in grpc.StatusCode:
            if c.value[0] == code:
                return c.name
    if exc is None:
        return "OK"
    import asyncio

    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


class _Instruments:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_service", "grpc_method", "grpc_type")
        self.started = Counter("grpc_server_started", "RPCs started", labels, registry=registry)
        self.handled = Counter("grpc_server_handled", "RPCs completed, by status code", (*labels, "grpc_code"),
                               registry=registry)
        self.seconds = Histogram("grpc_server_handling_seconds", "RPC duration until its status, seconds",
                                 (*labels, "grpc_code"), buckets=RPC_BUCKETS_S, registry=registry)
        self.msg_sent = Counter("grpc_server_msg_sent", "stream messages written", labels, registry=registry)
        self.frames_served = Counter("spatia_frames_served", "frames written to clients", ("grpc_method",),
                                     registry=registry)
        self.frames_dropped = Counter("spatia_frames_dropped",
                                      "Play frames dropped for a slow client (latest-wins queue)", registry=registry)
        self.poses_dropped = Counter("spatia_poses_dropped",
                                     "Play poses dropped because generation fell behind", registry=registry)
        self.clip_generate = Histogram("spatia_clip_generate_seconds", "generator time per Play clip, seconds",
                                       buckets=CLIP_BUCKETS_S, registry=registry)
        self.clip_update = Histogram("spatia_clip_update_seconds", "memory update time per Play clip, seconds",
                                     buckets=CLIP_BUCKETS_S, registry=registry)


@dataclass
class _StreamTally:
    """Per-stream cumulative counters as the last SessionStats reported them (they count from 0 per session)."""

    frames_dropped: int = 0
    poses_dropped: int = 0
    labels: tuple[str, str, str] = field(default=("", "", ""))


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, instruments: _Instruments) -> None:
        self._m = instruments

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        service, method = _split_method(details.method)
        if handler.request_streaming and handler.response_streaming:
            kind, behaviour = "bidi_stream", handler.stream_stream
        elif handler.request_streaming:
            kind, behaviour = "client_stream", handler.stream_unary
        elif handler.response_streaming:
            kind, behaviour = "server_stream", handler.unary_stream
        else:
            kind, behaviour = "unary", handler.unary_unary
        labels = (service, method, kind)
        m = self._m

        def finish(context, t0: float, exc: BaseException | None) -> None:
            code = _code_name(context, exc)
            m.handled.labels(*labels, code).inc()
            m.seconds.labels(*labels, code).observe(time.perf_counter() - t0)

        if handler.response_streaming and inspect.isasyncgenfunction(behaviour):
            async def stream(request_or_iterator, context):
                m.started.labels(*labels).inc()
                t0 = time.perf_counter()
                tally = _StreamTally(labels=labels)
                try:
                    async for response in behaviour(request_or_iterator, context):
                        self._observe(method, response, tally)
                        yield response
                except BaseException as exc:
                    finish(context, t0, exc)
                    raise
                finish(context, t0, None)

            wrapped = stream
        else:
            async def unary(request_or_iterator, context):
                m.started.labels(*labels).inc()
                t0 = time.perf_counter()
                try:
                    response = await behaviour(request_or_iterator, context)
                except BaseException as exc:
                    finish(context, t0, exc)
                    raise
                finish(context, t0, None)
                return response

            wrapped = unary  # also a streaming handler that writes with ``await context.write`` (health Watch)

        make = {
            "bidi_stream": grpc.stream_stream_rpc_method_handler,
            "client_stream": grpc.stream_unary_rpc_method_handler,
            "server_stream": grpc.unary_stream_rpc_method_handler,
            "unary": grpc.unary_unary_rpc_method_handler,
        }[kind]
        return make(wrapped, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def _observe(self, method: str, response: Any, tally: _StreamTally) -> None:
        """Count what a stream writes: frames, and the clip times / drops that Play's stats messages report."""
        m = self._m
        m.msg_sent.labels(*tally.labels).inc()
        if isinstance(response, pb.Frame):
            m.frames_served.labels(method).inc()
        elif isinstance(response, pb.PlayResponse):
            kind = response.WhichOneof("kind")
            if kind == "frame":
                m.frames_served.labels(method).inc()
            if kind == "stats" or (kind == "frame" and response.frame.HasField("stats")):  # lock-step: on the frame
                s = response.stats if kind == "stats" else response.frame.stats
                m.clip_generate.observe(s.generate_ms / 1e3)
                m.clip_update.observe(s.update_ms / 1e3)
                # SessionStats carry per-session totals: count what is new since the previous stats message
                if s.frames_dropped > tally.frames_dropped:
                    m.frames_dropped.inc(s.frames_dropped - tally.frames_dropped)
                    tally.frames_dropped = s.frames_dropped
                if s.poses_dropped > tally.poses_dropped:
                    m.poses_dropped.inc(s.poses_dropped - tally.poses_dropped)
                    tally.poses_dropped = s.poses_dropped


# ---- scrape-time state ----------------------------------------------------------------------------------------


@dataclass
class WorldState:
    world_id: str
    memory_points: int
    history_frames: int
    snapshot_bytes: int
    last_save_s: float
    clips_generated: int
    controlled: bool
    saves: int | None = None  # counters the server keeps since it started (None: this server does not say)
    save_failures: int | None = None
    frames_generated: int | None = None
    node_id: str = ""  # ``spatia serve --ray``: the Ray node whose world actor reported these numbers


@dataclass
class SessionState:
    session_id: str
    world_id: str
    outbox_frames: int  # frames written by the generator, not yet by gRPC
    pending_actions: int  # actions read from the client, not integrated yet
    frames_sent: int


@dataclass
class ServerState:
    live_calls: int  # Play + Generate calls running (the max_sessions limit counts these)
    draining: bool
    worlds: list[WorldState]
    sessions: list[SessionState]
    counters: dict[str, float] = field(default_factory=dict)  # server-kept totals: sessions_started, ...
    errors: dict[str, float] = field(default_factory=dict)  # statuses answered, by code name


def _read_server(server) -> ServerState:
    """The numbers of a ``WorldServer`` right now, from its ``stats()`` (ints and lens only: safe from the scrape
    thread while the event loop and world workers run; a value may be one clip old)."""
    stats = server.stats()
    sessions = [SessionState(**s) for s in stats["live"]]
    worlds = [WorldState(
        world_id=wid, memory_points=int(w["memory_points"]), history_frames=int(w["history_frames"]),
        snapshot_bytes=int(w["snapshot_bytes"]), last_save_s=float(w["last_save_cpu_s"]),
        clips_generated=int(w["clips_generated"]), controlled=bool(w["controlled"]),
        saves=w.get("saves"), save_failures=w.get("save_failures"), frames_generated=w.get("frames_generated"),
        node_id=str(w.get("node_id", "")))
        for wid, w in stats["worlds"].items()]
    counters = {k: float(stats[k]) for k in ("sessions_started", "sessions_ended", "frames_served",
                                             "frames_dropped", "poses_skipped", "worlds_unreadable")}
    return ServerState(live_calls=int(stats["sessions"]), draining=stats["draining"], worlds=worlds,
                       sessions=sessions, counters=counters,
                       errors={str(k): float(v) for k, v in stats["errors"].items()})


# server-kept totals (WorldServer.stats()) -> (metric name, help); counters unless noted
SERVER_COUNTERS = {
    "sessions_started": ("spatia_sessions_started", "Play + Generate calls admitted"),
    "sessions_ended": ("spatia_sessions_ended", "Play + Generate calls ended"),
    "frames_served": ("spatia_server_frames_served", "frames handed to gRPC, as the server counts them"),
    "frames_dropped": ("spatia_server_frames_dropped", "Play frames dropped for slow clients (ended + live sessions)"),
    "poses_skipped": ("spatia_server_poses_skipped", "Play poses skipped to keep latency (ended + live sessions)"),
}


class ServerCollector(Collector):
    def __init__(self, server) -> None:
        self._server = server

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = _read_server(self._server)
        yield GaugeMetricFamily("spatia_live_sessions", "Play + Generate calls running", value=state.live_calls)
        yield GaugeMetricFamily("spatia_play_sessions", "Play streams running", value=len(state.sessions))
        yield GaugeMetricFamily("spatia_draining", "1 while the server shuts down", value=int(state.draining))
        yield GaugeMetricFamily("spatia_worlds", "worlds loaded from the data dir", value=len(state.worlds))
        for key, (name, doc) in SERVER_COUNTERS.items():
            if key in state.counters:
                yield CounterMetricFamily(name, doc, value=state.counters[key])
        if "worlds_unreadable" in state.counters:
            yield GaugeMetricFamily("spatia_worlds_unreadable", "snapshots in the data dir that could not be read",
                                    value=state.counters["worlds_unreadable"])
        if state.errors:
            c = CounterMetricFamily("spatia_errors", "error statuses answered, by code", labels=["grpc_code"])
            for code, n in sorted(state.errors.items()):
                c.add_metric([code], n)
            yield c
        per_world = {
            "spatia_world_memory_points": ("points in the world's spatial memory", "memory_points"),
            "spatia_world_history_frames": ("frames in the world's history", "history_frames"),
            "spatia_world_snapshot_bytes": ("size of the world's snapshot on disk, bytes", "snapshot_bytes"),
            "spatia_world_last_save_seconds": ("time the latest save took (copy + serialise + write), seconds",
                                               "last_save_s"),
            "spatia_world_clips_generated": ("clips generated in the world since the server started",
                                             "clips_generated"),
            "spatia_world_controlled": ("1 while a Play / Generate call holds the world", "controlled"),
        }
        for name, (doc, attr) in per_world.items():
            g = GaugeMetricFamily(name, doc, labels=["world_id"])
            for w in state.worlds:
                g.add_metric([w.world_id], float(getattr(w, attr)))
            yield g
        for name, doc, attr in (("spatia_world_saves", "snapshots written", "saves"),
                                ("spatia_world_save_failures", "snapshot writes that failed", "save_failures"),
                                ("spatia_world_frames_generated", "frames generated", "frames_generated")):
            known = [w for w in state.worlds if getattr(w, attr) is not None]
            if known:
                c = CounterMetricFamily(name, doc, labels=["world_id"])
                for w in known:
                    c.add_metric([w.world_id], float(getattr(w, attr)))
                yield c
        on_nodes = [w for w in state.worlds if w.node_id]
        if on_nodes:  # with --ray the per-world numbers above come from the world actors (their last report)
            g = GaugeMetricFamily("spatia_world_node", "1 for the Ray node whose world actor serves the world",
                                  labels=["world_id", "node_id"])
            for w in on_nodes:
                g.add_metric([w.world_id, w.node_id], 1.0)
            yield g
        per_session = {
            "spatia_session_outbox_frames": ("frames queued for the client (queue depth)", "outbox_frames"),
            "spatia_session_pending_actions": ("actions read but not integrated yet (queue depth)",
                                               "pending_actions"),
            "spatia_session_frames_sent": ("frames sent in this Play session", "frames_sent"),
        }
        for name, (doc, attr) in per_session.items():
            g = GaugeMetricFamily(name, doc, labels=["session_id", "world_id"])
            for s in state.sessions:
                g.add_metric([s.session_id, s.world_id], float(getattr(s, attr)))
            yield g


class ServerMetrics:
    """The metrics of one ``WorldServer``: ``interceptor`` goes first in its interceptor list; ``serve_http``
    exposes ``/metrics``."""

    def __init__(self, server) -> None:
        self.registry = CollectorRegistry()
        self.instruments = _Instruments(self.registry)
        self.interceptor = MetricsInterceptor(self.instruments)
        self.registry.register(ServerCollector(server))
        self._http = None
        self.port: int | None = None

    def serve_http(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0 = an ephemeral port) from a daemon thread; returns the port."""
        try:
            self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            from spatia.world.errors import InvalidInputError

            raise InvalidInputError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror}") from None
        self.port = int(self._http.server_port)
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
