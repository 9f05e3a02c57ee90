"""The gRPC service (grpc.aio): ``WorldService`` + health + reflection, auth, limits, graceful shutdown.

``WorldServer(config)``: ``await start()`` binds (port 0 = ephemeral, see ``.port``), loads the worlds in the data
dir and reports SERVING; ``await stop()`` reports NOT_SERVING, lets running calls end within the grace period,
flushes recordings and saves every world. ``serve(config)`` runs one until SIGTERM / SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.proto.spatia.v1 import world_pb2_grpc as pb_grpc
from spatia.proto.spatia.v1.convert import encode_image, pose_to_proto, trajectory_to_proto
from spatia.server import builders
from spatia.server.config import ServerConfig
from spatia.server.errors import OutOfRangeError, UnavailableError, streaming, unary
from spatia.server.metrics import ServerMetrics
from spatia.server.recording import recorded_frames, summarize
from spatia.server.session import Outbox, PlayOptions, PlaySession
from spatia.server.store import WorldEntry, WorldStore
from spatia.world.actions import ClipConfig
from spatia.world.engine import EngineConfig
from spatia.world.errors import InvalidInputError, LimitExceededError, NotFoundError

log = structlog.get_logger("spatia.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WorldService"].full_name  # "spatia.v1.WorldService"
CHUNK_BYTES = 1 << 20  # Export chunk size


class _AuthInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC but health needs ``authorization: Bearer <token>``; binds method / peer for the logs."""

    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}" if token else None

    async def intercept_service(self, continuation, details):
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(method=details.method)
        if self._expected is None or details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        if metadata.get("authorization") == self._expected:
            return await continuation(details)
        handler = await continuation(details)
        return _reject(handler, "missing or wrong bearer token (metadata 'authorization: Bearer <token>')")


def _reject(handler, message: str):
    """A handler of the same arity as ``handler`` that answers UNAUTHENTICATED."""

    async def unary_abort(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream_abort(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover -- makes this an async generator

    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream_abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary_abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream_abort)
    return grpc.unary_unary_rpc_method_handler(unary_abort)


def _stats(entry: WorldEntry) -> pb.WorldStats:
    w = entry.world
    return pb.WorldStats(memory_points=w.memory.num_points, history_frames=len(w.history),
                         clips_generated=entry.clips_generated, snapshot_bytes=entry.snapshot_bytes)


def world_info(entry: WorldEntry, case_c2w: np.ndarray | None = None) -> pb.WorldInfo:
    w = entry.world
    info = pb.WorldInfo(
        world_id=w.world_id, source=w.info.source, prompt=w.info.prompt, created_unix_ns=w.info.created_ns,
        intrinsics=builders.intrinsics_to_proto(w.intrinsics), origin=pose_to_proto(w.origin_c2w),
        current=pose_to_proto(w.current_c2w if w.current_c2w is not None else w.origin_c2w), stats=_stats(entry),
        controlled=entry.controller is not None,
    )
    if case_c2w is not None:
        info.case_trajectory.CopyFrom(trajectory_to_proto(case_c2w))
    return info


def _region(r: pb.Region):
    from spatia.world.memory import Box, Sphere

    shape = r.WhichOneof("shape")
    if shape == "box":
        rot = np.asarray(r.box.rotation, dtype=np.float64).reshape(3, 3) if len(r.box.rotation) == 9 else None
        if r.box.rotation and rot is None:
            raise InvalidInputError(f"box.rotation must hold 9 numbers, got {len(r.box.rotation)}")
        c, e = r.box.center, r.box.half_extents_m
        return Box((c.x, c.y, c.z), (e.x, e.y, e.z), rot)
    if shape == "sphere":
        c = r.sphere.center
        return Sphere((c.x, c.y, c.z), r.sphere.radius_m)
    raise InvalidInputError("region needs a box or a sphere")


class WorldServicer(pb_grpc.WorldServiceServicer):
    def __init__(self, config: ServerConfig, store: WorldStore, generator) -> None:
        self.config = config
        self.limits = config.limits
        self.store = store
        self.generator = generator
        self.recordings_dir = config.data_dir / "recordings"
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.sessions = 0  # running Play + Generate calls
        self.draining = False
        self._play: dict[str, PlaySession] = {}

    def _admit(self) -> None:
        if self.draining:
            raise UnavailableError("server is shutting down")
        if self.sessions >= self.limits.max_sessions:
            raise LimitExceededError(f"limit max_sessions={self.limits.max_sessions} reached (Play + Generate)")

    # ---- worlds ------------------------------------------------------------------------------------------

    @unary
    async def CreateWorld(self, request, context):
        if self.draining:
            raise UnavailableError("server is shutting down")
        world_id = self.store.new_id(request.world_id)
        try:
            world, case_c2w = await asyncio.to_thread(builders.build_world, request, world_id, self.limits)
        except BaseException:
            self.store.release_id(world_id)
            raise
        entry = await self.store.add(world)
        log.info("world created", world_id=world_id, source=world.info.source)
        return world_info(entry, case_c2w)

    @unary
    async def GetWorld(self, request, context):
        return world_info(self.store.get(request.world_id))

    @unary
    async def ListWorlds(self, request, context):
        return pb.ListWorldsResponse(worlds=[world_info(e) for e in self.store.entries()])

    @unary
    async def DeleteWorld(self, request, context):
        await self.store.delete(request.world_id)
        log.info("world deleted", world_id=request.world_id)
        return pb.DeleteWorldResponse(world_id=request.world_id)

    # ---- memory ------------------------------------------------------------------------------------------

    @unary
    async def Render(self, request, context):
        entry = self.store.get(request.world_id)
        if not request.HasField("pose"):
            raise InvalidInputError("RenderRequest.pose is required")
        c2w = builders.pose_from_proto(request.pose, "pose")
        K = entry.world.intrinsics
        if request.HasField("resolution"):
            builders.check_pixels(request.resolution.width, request.resolution.height, self.limits, "resolution")
            K = K.scaled(int(request.resolution.width), int(request.resolution.height))
        from spatia.world.images import encode_png

        def _render():
            r = entry.world.memory.render(K, c2w)
            return pb.RenderResponse(
                intrinsics=builders.intrinsics_to_proto(K), rgb_png=encode_png(r.rgb),
                depth_m=np.ascontiguousarray(r.depth_m, dtype="<f4").tobytes(), valid_png=encode_png(r.valid),
            )

        return await entry.run(_render)

    @unary
    async def Edit(self, request, context):
        entry = self.store.get(request.world_id)
        kind = request.WhichOneof("edit")
        mem = entry.world.memory
        if kind == "remove":
            region = _region(request.remove.region)
            op = lambda: mem.remove(region)  # noqa: E731
        elif kind == "recolor":
            region, c = _region(request.recolor.region), request.recolor.color
            op = lambda: mem.recolor(region, (int(c.r), int(c.g), int(c.b)))  # noqa: E731
        elif kind == "move":
            m = request.move
            region = _region(m.region)
            rot = np.asarray(m.rotation, dtype=np.float64).reshape(3, 3) if len(m.rotation) == 9 else None
            if m.rotation and rot is None:
                raise InvalidInputError(f"move.rotation must hold 9 numbers, got {len(m.rotation)}")
            t = m.translation_m
            op = lambda: mem.move(region, (t.x, t.y, t.z), rot)  # noqa: E731
        elif kind == "insert":
            cloud = await asyncio.to_thread(builders.read_ply_points, request.insert.ply)
            op = lambda: _insert(mem, cloud)  # noqa: E731
        else:
            raise InvalidInputError("EditRequest needs remove, recolor, move or insert")

        def _edit():
            n = op()
            entry.save()
            return int(n)

        n = await entry.run(_edit)
        log.info("world edited", world_id=entry.world_id, edit=kind, points=n)
        return pb.EditResponse(points_affected=n, stats=_stats(entry))

    # ---- generation --------------------------------------------------------------------------------------

    @streaming
    async def Play(self, request_iterator, context) -> AsyncIterator[pb.PlayResponse]:
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            raise InvalidInputError("empty Play stream: the first message must be PlayStart") from None
        if first.WhichOneof("kind") != "start":
            raise InvalidInputError("the first message of a Play stream must be PlayStart")
        options = PlayOptions.from_proto(first.start, self.config)
        self._admit()
        session_id = uuid.uuid4().hex[:12]
        entry = self.store.claim(options.world_id, session_id)
        self.sessions += 1
        session = None
        try:
            session = PlaySession(session_id, entry, options, self.generator, self.config, self.recordings_dir,
                                  first.start)
            self._play[session.id] = session
            structlog.contextvars.bind_contextvars(world_id=entry.world_id, session_id=session.id)
            session.log.info("play started", peer=context.peer(), recording=session.recording_id)
            yield pb.PlayResponse(started=pb.PlayStarted(
                session_id=session.id, world=world_info(entry), fps=options.fps,
                clip=pb.ClipLengths(first_clip_frames=options.clip.first_clip_frames,
                                    clip_frames=options.clip.clip_frames,
                                    preceding_frames=options.clip.preceding_frames),
                recording_id=session.recording_id,
            ))
            reader = asyncio.create_task(session.read(request_iterator))
            driver = asyncio.create_task(session.drive())
            try:
                while True:
                    item = await session.outbox.get()
                    if item is None:
                        break
                    yield item
                if session.error is not None:
                    raise session.error
            finally:
                reader.cancel()
                driver.cancel()
                await asyncio.gather(reader, driver, return_exceptions=True)
        finally:
            if session is not None:
                self._play.pop(session.id, None)
                # after the clip in flight: recording closed, world saved. Shielded: a second cancellation (server
                # shutdown) must not drop the job from the worker's queue
                await asyncio.shield(entry.run(session.finish))
                session.log.info("play ended", frames=session.frames_sent, dropped=session.outbox.dropped)
            self.store.release(entry, session_id)
            self.sessions -= 1

    @streaming
    async def Generate(self, request, context) -> AsyncIterator[pb.Frame]:
        entry = self.store.get(request.world_id)
        path = request.WhichOneof("path")
        if path == "trajectory":
            c2w = builders.trajectory_from_proto(request.trajectory, "trajectory", self.limits)
        elif path == "official":
            c2w = builders.official_to_c2w(request.official, entry.world.origin_c2w, self.limits)
            if request.official.HasField("intrinsics"):
                n = request.official.intrinsics
                given = np.array([n.fx_over_width, n.fy_over_height, n.cx_over_width, n.cy_over_height])
                if not np.allclose(given, entry.world.intrinsics.to_normalized(), rtol=1e-3, atol=1e-4):
                    raise InvalidInputError(
                        f"official.intrinsics {given.tolist()} differ from the world's camera "
                        f"{entry.world.intrinsics.to_normalized().tolist()}; frames are generated with the world's"
                    )
        else:
            raise InvalidInputError("GenerateRequest needs a trajectory or an official trajectory")
        quality = request.jpeg_quality or 85
        if not 1 <= quality <= 100:
            raise InvalidInputError(f"jpeg_quality must be in 1..100, got {request.jpeg_quality}")
        c = request.clip
        clip = ClipConfig(c.first_clip_frames, c.clip_frames, c.preceding_frames) if request.HasField("clip") \
            else ClipConfig.paper()
        self._admit()
        session_id = uuid.uuid4().hex[:12]
        self.store.claim(entry.world_id, session_id)
        self.sessions += 1
        loop = asyncio.get_running_loop()
        outbox = _Handoff(self.limits.frame_queue)
        engine = entry.engine(self.generator, EngineConfig(clip=clip))
        encoding = request.encoding or pb.FRAME_ENCODING_JPEG
        K = builders.intrinsics_to_proto(entry.world.intrinsics)

        def _work():
            n = 0
            for f in engine.generate(c2w, request.prompt or None, int(request.seed)):
                frame = pb.Frame(frame_index=f.frame_index, clip_id=f.clip_id, pose=pose_to_proto(f.c2w),
                                 intrinsics=K, server_time_ns=time.time_ns(), encoding=encoding,
                                 width=f.rgb.shape[1], height=f.rgb.shape[0],
                                 data=encode_image(f.rgb, encoding, quality), session_frame=n)
                n += 1
                if not outbox.put_blocking(loop, frame):
                    break  # the client went away: the clip in progress is abandoned before its memory update;
                    # the world keeps every clip already committed
            entry.clips_generated = engine.clips_done
            entry.save()

        try:
            work = loop.run_in_executor(entry.executor, _work)
            work.add_done_callback(lambda _: loop.call_soon_threadsafe(outbox.close))
            while True:
                frame = await outbox.get()
                if frame is None:
                    break
                yield frame
            await work  # re-raises a generation error
        finally:
            outbox.cancel()
            try:
                await work  # the worker sees the cancel within 0.2 s; the world is released only after it
            except Exception:  # noqa: BLE001 -- raised above already when the stream was still open
                pass
            self.store.release(entry, session_id)
            self.sessions -= 1

    # ---- export / import ---------------------------------------------------------------------------------

    @streaming
    async def ExportWorld(self, request, context):
        entry = self.store.get(request.world_id)
        fmt = request.format or pb.EXPORT_FORMAT_SNAPSHOT

        def _bytes() -> bytes:
            if fmt == pb.EXPORT_FORMAT_PLY:
                import tempfile
                from pathlib import Path

                with tempfile.TemporaryDirectory() as tmp:
                    p = Path(tmp) / "memory.ply"
                    entry.world.memory.save_ply(p)
                    return p.read_bytes()
            from spatia.world import snapshot
            from spatia.world.state import SNAPSHOT_VERSION

            return snapshot.dumps(entry.world.to_payload(), version=SNAPSHOT_VERSION)

        data = await entry.run(_bytes)
        for off in range(0, max(len(data), 1), CHUNK_BYTES):
            yield pb.DataChunk(data=data[off:off + CHUNK_BYTES], offset=off, total_bytes=len(data))

    @unary
    async def ImportWorld(self, request_iterator, context):
        header = None
        parts: list[bytes] = []
        size = 0
        async for req in request_iterator:
            kind = req.WhichOneof("kind")
            if header is None:
                if kind != "header":
                    raise InvalidInputError("the first ImportWorld message must be an ImportHeader")
                header = req.header
                continue
            if kind != "chunk":
                raise InvalidInputError("ImportWorld takes one header, then chunks")
            if req.chunk.offset != size:
                raise InvalidInputError(f"chunk offset {req.chunk.offset} but {size} bytes received so far")
            size += len(req.chunk.data)
            if size > self.limits.max_import_bytes:
                raise InvalidInputError(f"import exceeds the limit max_import_bytes={self.limits.max_import_bytes}")
            parts.append(req.chunk.data)
        if header is None:
            raise InvalidInputError("empty ImportWorld stream")
        data = b"".join(parts)
        fmt = header.format or pb.EXPORT_FORMAT_SNAPSHOT
        if fmt == pb.EXPORT_FORMAT_PLY:
            if not header.HasField("intrinsics"):
                raise InvalidInputError("ImportHeader.intrinsics is required for a PLY import")
            K = builders.intrinsics_from_proto(header.intrinsics, self.limits)
            start = builders.pose_from_proto(header.start, "start") if header.HasField("start") else np.eye(4)
            world_id = self.store.new_id(header.world_id)
            try:
                world = await asyncio.to_thread(builders.world_from_ply, data, K, start, world_id, header.prompt)
            except BaseException:
                self.store.release_id(world_id)
                raise
        else:
            world = await asyncio.to_thread(builders.world_from_snapshot, data, "")
            wanted = header.world_id or world.world_id
            world_id = self.store.new_id(wanted)
            world.info.world_id = world_id
        entry = await self.store.add(world)
        log.info("world imported", world_id=world_id, bytes=len(data))
        return world_info(entry)

    # ---- recordings --------------------------------------------------------------------------------------

    @unary
    async def ListRecordings(self, request, context):
        def _list():
            out = []
            for p in sorted(self.recordings_dir.glob("*.mcap")):
                s = summarize(p)
                if not request.world_id or s.world_id == request.world_id:
                    out.append(s.to_proto())
            return out

        return pb.ListRecordingsResponse(recordings=await asyncio.to_thread(_list))

    @streaming
    async def Replay(self, request, context):
        path = self.recordings_dir / f"{request.recording_id}.mcap"
        if not request.recording_id or "/" in request.recording_id or not path.is_file():
            raise NotFoundError(f"recording {request.recording_id!r} not found")
        speed = request.speed
        if not (np.isfinite(speed) and speed >= 0):
            raise InvalidInputError(f"speed must be >= 0, got {speed}")
        frames = recorded_frames(path, int(request.start_frame))  # read lazily, off the loop, frame by frame
        item = await asyncio.to_thread(next, frames, None)
        if item is None and request.start_frame > 0:
            total = (await asyncio.to_thread(summarize, path)).frames
            raise OutOfRangeError(f"start_frame {request.start_frame} is past the end ({total} frames recorded)")
        t0_rec = item[0] if item else 0
        t0 = time.monotonic()
        while item is not None:
            log_time, frame = item
            if speed > 0:  # recorded pace / speed, from the first frame sent
                delay = (log_time - t0_rec) / 1e9 / speed - (time.monotonic() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
            yield frame
            item = await asyncio.to_thread(next, frames, None)


def _insert(mem, cloud) -> int:
    before = mem.num_points
    mem.insert(*cloud)
    return max(mem.num_points - before, 0)


class _Handoff:
    """Worker thread -> event loop, bounded without dropping (Generate must deliver every frame): the worker
    blocks while ``capacity`` frames wait, so a slow client slows generation instead of growing memory."""

    def __init__(self, capacity: int) -> None:
        import threading

        self._slots = threading.Semaphore(capacity)
        self._box = Outbox(capacity + 1)
        self._cancelled = threading.Event()

    def put_blocking(self, loop, item) -> bool:
        while not self._slots.acquire(timeout=0.2):
            if self._cancelled.is_set():
                return False
        if self._cancelled.is_set():
            return False
        loop.call_soon_threadsafe(self._box.put, item, True)
        return True

    async def get(self):
        item = await self._box.get()
        if item is not None:
            self._slots.release()
        return item

    def close(self) -> None:
        self._box.close()

    def cancel(self) -> None:
        self._cancelled.set()


class WorldServer:
    """One gRPC server over one data dir. Use ``await start()`` / ``await stop()`` (tests) or ``serve``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.store = WorldStore(config.data_dir, config.limits.max_worlds)
        self.servicer: WorldServicer | None = None
        self.metrics = ServerMetrics(self)  # read at scrape time; served on config.metrics_port

    def _options(self) -> list[tuple[str, int]]:
        c = self.config
        return [
            ("grpc.max_send_message_length", c.limits.max_message_bytes),
            ("grpc.max_receive_message_length", c.limits.max_message_bytes),
            ("grpc.keepalive_time_ms", int(c.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(c.keepalive_timeout_s * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", int(c.min_client_ping_interval_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.so_reuseport", 0),  # a second server on a taken port fails instead of sharing it
        ]

    async def start(self) -> int:
        from spatia.model import make_generator

        c = self.config
        generator = make_generator(c.generator, **dict(c.generator_kwargs))
        await asyncio.to_thread(self.store.load_all)
        self.servicer = WorldServicer(c, self.store, generator)
        self._server = grpc.aio.server(interceptors=[self.metrics.interceptor, _AuthInterceptor(c.token)], options=self._options())
        pb_grpc.add_WorldServiceServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        address = f"{c.host}:{c.port}"
        if c.tls_cert is not None:
            creds = grpc.ssl_server_credentials([(c.tls_key.read_bytes(), c.tls_cert.read_bytes())])
            self.port = self._server.add_secure_port(address, creds)
        else:
            self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise InvalidInputError(f"could not bind {address}")
        await self._server.start()
        if c.metrics_port is not None:
            self.metrics.serve_http(c.host, c.metrics_port)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", address=f"{c.host}:{self.port}", tls=c.tls_cert is not None, auth=c.token is not None,
                 generator=c.generator, worlds=len(self.store.entries()), data_dir=str(c.data_dir))
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, no new sessions, running calls get ``grace_s``, then every world is
        saved (after the clip in flight on its worker thread) and recordings are closed by their sessions."""
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        if self.servicer is not None:
            self.servicer.draining = True
            for session in list(self.servicer._play.values()):
                session.end()  # each ends after its clip in flight, within the grace period
        await self._server.stop(self.config.shutdown_grace_s if grace_s is None else grace_s)
        saved = await self.store.save_all()
        await asyncio.to_thread(self.store.close)
        self._server = None
        self.metrics.close()
        log.info("stopped", worlds_saved=saved)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(config: ServerConfig, port_file=None) -> None:
    """Run until SIGTERM / SIGINT, then shut down gracefully."""
    server = WorldServer(config)
    port = await server.start()
    if port_file is not None:
        from spatia.world.snapshot import atomic_write_bytes

        atomic_write_bytes(port_file, f"{port}\n".encode())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received, shutting down")
    await server.stop()
