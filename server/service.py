"""The gRPC service (grpc.aio): ``WorldService`` + health + reflection, auth, limits, graceful shutdown.

``WorldServer(config)``: ``await start()`` binds (port 0 = ephemeral, see ``.port``), loads the worlds in the data
dir and reports SERVING; ``await stop()`` reports NOT_SERVING, lets running calls end within the grace period,
flushes recordings and saves every world. ``serve(config)`` runs one until SIGTERM / SIGINT.
"""

from __future__ import annotations

import asyncio
import base64
import math
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
from spatia.proto.spatia.v1.convert import encode_image, pose_to_proto, trajectory_to_proto, vec3_to_proto
from spatia.server import builders, errors
from spatia.server.config import ServerConfig
from spatia.server.errors import (
    OutOfRangeError, UnavailableError, check_id, invalid, limit_exceeded, streaming, unary,
)
from spatia.server.host import HostView, KernelWarmUp, WorldHost, bound_heap
from spatia.server.metrics import ServerMetrics
from spatia.server.recording import RecordingCloser, recorded_frames, summarize
from spatia.server.session import Outbox, PlayOptions, PlaySession, check_image_options, clip_from_proto
from spatia.server.store import WorldStore, open_store
from spatia.world.actions import ClipConfig
from spatia.world.engine import EngineConfig
from spatia.world.errors import InvalidInputError, NotFoundError
from spatia.world.generator import capabilities_of

log = structlog.get_logger("spatia.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WorldService"].full_name  # "spatia.v1.WorldService"
CHUNK_BYTES = 1 << 20  # Export chunk size
DEFAULT_PAGE_SIZE = 100  # ListWorlds / ListRecordings (AIP-158)
MAX_PAGE_SIZE = 1000
# CreateWorld answers once the generator's per-world fit (the layout fill's layout and plane textures,
# ``wait_prepared``) is done, or after this long: a Play right after then neither waits for it in its first final
# frame nor shares the CPU with it (frames do not depend on when it finished; docs/BENCHMARKS.md, session 15, lspeed)
CREATE_WAITS_FOR_PREPARE_S = 5.0


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


def _stats(view: HostView) -> pb.WorldStats:
    return pb.WorldStats(memory_points=view.memory_points, history_frames=view.history_frames,
                         clips_generated=view.clips_generated, snapshot_bytes=view.snapshot_bytes,
                         memory_bytes=view.memory_bytes, index_bytes=view.index_bytes)


def world_info(host: WorldHost, case_c2w: np.ndarray | None = None) -> pb.WorldInfo:
    v = host.view()
    info = pb.WorldInfo(
        world_id=v.world_id, source=v.source, prompt=v.prompt, created_unix_ns=v.created_ns,
        intrinsics=builders.intrinsics_to_proto(v.intrinsics), origin=pose_to_proto(v.origin_c2w),
        current=pose_to_proto(v.current_c2w), stats=_stats(v), controlled=v.controlled,
        node_id=host.node_id,  # a world actor's node (server/ray_host.py); in-process: none
    )
    if v.level_up is not None:
        info.level_up.CopyFrom(vec3_to_proto(v.level_up))
    if case_c2w is not None:
        info.case_trajectory.CopyFrom(trajectory_to_proto(case_c2w))
    return info


def _vec(v: pb.Vec3, field: str) -> tuple[float, float, float]:
    t = (v.x, v.y, v.z)
    if not all(math.isfinite(x) for x in t):
        raise invalid(field, f"{field} must be finite numbers, got {list(t)}")
    return t


def _rotation(values, field: str) -> np.ndarray | None:
    if not values:
        return None
    if len(values) != 9:
        raise invalid(field, f"{field} must hold 9 numbers, got {len(values)}")
    rot = np.asarray(values, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(rot).all() or not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) \
            or np.linalg.det(rot) < 0:
        raise invalid(field, f"{field} must be a rotation (orthonormal, determinant +1)")
    return rot


def _region(r: pb.Region, field: str):
    from spatia.world.memory import Box, Sphere

    shape = r.WhichOneof("shape")
    if shape == "box":
        e = _vec(r.box.half_extents_m, f"{field}.box.half_extents_m")
        if min(e) < 0:
            raise invalid(f"{field}.box.half_extents_m", f"{field}.box.half_extents_m must be >= 0, got {list(e)}")
        return Box(_vec(r.box.center, f"{field}.box.center"), e, _rotation(r.box.rotation, f"{field}.box.rotation"))
    if shape == "sphere":
        radius = r.sphere.radius_m
        if not (math.isfinite(radius) and radius >= 0):
            raise invalid(f"{field}.sphere.radius_m", f"{field}.sphere.radius_m must be >= 0, got {radius}")
        return Sphere(_vec(r.sphere.center, f"{field}.sphere.center"), radius)
    raise invalid(field, f"{field} needs a box or a sphere")


def _page(request, total_sorted: list, key, what: str) -> tuple[list, str]:
    """AIP-158 over a sorted list: ``page_size`` (0 = 100, at most 1000) from after ``page_token`` (the last key
    of the previous page, opaque to clients)."""
    size = request.page_size
    if size < 0:
        raise invalid("page_size", f"page_size must be >= 0, got {size}")
    size = min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = ""
    if request.page_token:
        try:
            after = base64.urlsafe_b64decode(request.page_token.encode("ascii")).decode("utf-8")
            if not after.startswith(what + ":"):
                raise ValueError(what)
            after = after[len(what) + 1:]
        except (ValueError, UnicodeError):
            raise invalid("page_token", "page_token is not one this server gave out") from None
    items = [x for x in total_sorted if key(x) > after] if after else total_sorted
    page = items[:size]
    token = ""
    if len(items) > size:
        token = base64.urlsafe_b64encode(f"{what}:{key(page[-1])}".encode()).decode("ascii")
    return page, token


class WorldServicer(pb_grpc.WorldServiceServicer):
    """gRPC -> world hosts. Counters for metrics (plain attributes, read at scrape time): ``sessions`` (running
    Play + Generate calls), ``play_sessions``, ``frames_served``, ``frames_dropped``, ``poses_skipped``,
    ``sessions_started``, ``sessions_ended``; ``errors.ERROR_COUNTS`` has statuses by code and ``unexpected``;
    per world: ``store.hosts()`` and ``WorldHost.stats()``."""

    def __init__(self, config: ServerConfig, store: WorldStore, generator) -> None:
        self.config = config
        self.limits = config.limits
        self.store = store
        self.generator = generator
        self.recordings_dir = config.data_dir / "recordings"
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.sessions = 0  # running Play + Generate calls
        self.sessions_started = 0
        self.sessions_ended = 0
        self.frames_served = 0
        self.frames_dropped = 0
        self.poses_skipped = 0
        self.draining = False
        self._play: dict[str, PlaySession] = {}
        # recordings are finished (end point cloud, summary, footer) here, after their session released the world
        self.closer = RecordingCloser(max_pending=4)
        self.finishing: set[asyncio.Task] = set()  # slots' finish tasks still running (awaited at stop)
        slots = config.clip_slot_count()  # interactive clips at once (server.session: why)
        self.clip_slots = asyncio.Semaphore(slots) if slots else None

    @property
    def play_sessions(self) -> int:
        return len(self._play)

    def _admit(self) -> None:
        if self.draining:
            raise UnavailableError("server is shutting down")
        if self.sessions >= self.limits.max_sessions:
            raise limit_exceeded("max_sessions",
                                 f"limit max_sessions={self.limits.max_sessions} reached (Play + Generate)")

    async def _get(self, world_id: str, field: str) -> WorldHost:
        """The world's host (``WorldIds.get_async``: a lookup that waits, e.g. for a Ray actor's placement, never
        waits on this event loop)."""
        return await self.store.get_async(world_id, field)

    async def _open_slot(self, host: WorldHost, session_id: str) -> "_Slot":
        """Admission + the world's lease, released together exactly once by ``_Slot.close``. The slot is counted
        while the claim runs (on a Ray host, a call to the world's actor), so concurrent calls cannot pass
        ``max_sessions`` together."""
        self._admit()
        self.sessions += 1
        try:
            await host.claim_async(session_id)
        except BaseException:
            self.sessions -= 1
            raise
        self.sessions_started += 1
        return _Slot(self, host, session_id)

    # ---- worlds ------------------------------------------------------------------------------------------

    @unary
    async def CreateWorld(self, request, context):
        if self.draining:
            raise UnavailableError("server is shutting down")
        world_id = self.store.new_id(request.world_id, "CreateWorldRequest.world_id")
        try:
            world, case_c2w = await asyncio.to_thread(builders.build_world, request, world_id, self.limits)
            host = await self.store.add(world)  # all-or-nothing: on failure no entry, no file, id free again
        finally:
            self.store.release_id(world_id)
        host.prepare(self.generator)  # e.g. the layout fill's fit starts now, not in the first Play's frames
        # off the event loop: other sessions' frames go on (with --ray the front door has no generator: the world's
        # actor prepares its own)
        if self.generator is not None and capabilities_of(self.generator).prepares_worlds:
            await asyncio.to_thread(self.generator.wait_prepared, world.memory, CREATE_WAITS_FOR_PREPARE_S)
        log.info("world created", world_id=world_id, source=world.info.source)
        return world_info(host, case_c2w)

    @unary
    async def GetWorld(self, request, context):
        return world_info(await self._get(request.world_id, "GetWorldRequest.world_id"))

    @unary
    async def ListWorlds(self, request, context):
        hosts, token = _page(request, self.store.hosts(), lambda h: h.world_id, "worlds")
        return pb.ListWorldsResponse(worlds=[world_info(h) for h in hosts], next_page_token=token)

    @unary
    async def DeleteWorld(self, request, context):
        await self.store.delete(check_id(request.world_id, "DeleteWorldRequest.world_id"))
        log.info("world deleted", world_id=request.world_id)
        return pb.DeleteWorldResponse(world_id=request.world_id)

    # ---- memory ------------------------------------------------------------------------------------------

    @unary
    async def Render(self, request, context):
        host = await self._get(request.world_id, "RenderRequest.world_id")
        if not request.HasField("pose"):
            raise invalid("RenderRequest.pose", "RenderRequest.pose is required")
        c2w = builders.pose_from_proto(request.pose, "pose")
        K = host.view().intrinsics
        if request.HasField("resolution"):
            builders.check_pixels(request.resolution.width, request.resolution.height, self.limits, "resolution")
            K = K.scaled(int(request.resolution.width), int(request.resolution.height))
        from spatia.world.images import encode_png

        r = await host.render(K, c2w)

        def _encode():
            return pb.RenderResponse(
                intrinsics=builders.intrinsics_to_proto(K), rgb_png=encode_png(r.rgb),
                depth_m=np.ascontiguousarray(r.depth_m, dtype="<f4").tobytes(), valid_png=encode_png(r.valid),
            )

        return await asyncio.to_thread(_encode)

    @unary
    async def Edit(self, request, context):
        host = await self._get(request.world_id, "EditRequest.world_id")
        kind = request.WhichOneof("edit")
        if kind == "remove":
            region = _region(request.remove.region, "remove.region")
            op = lambda mem: mem.remove(region)  # noqa: E731
        elif kind == "recolor":
            region, c = _region(request.recolor.region, "recolor.region"), request.recolor.color
            if max(c.r, c.g, c.b) > 255:
                raise invalid("recolor.color", f"recolor.color must be 0..255, got ({c.r}, {c.g}, {c.b})")
            op = lambda mem: mem.recolor(region, (int(c.r), int(c.g), int(c.b)))  # noqa: E731
        elif kind == "move":
            m = request.move
            region = _region(m.region, "move.region")
            rot = _rotation(m.rotation, "move.rotation")
            t = _vec(m.translation_m, "move.translation_m")
            op = lambda mem: mem.move(region, t, rot)  # noqa: E731
        elif kind == "insert":
            cloud = await asyncio.to_thread(builders.read_ply_points, request.insert.ply, "insert.ply")
            op = lambda mem: _insert(mem, cloud)  # noqa: E731
        else:
            raise invalid("EditRequest.edit", "EditRequest needs remove, recolor, move or insert")
        n = await host.edit(op)  # NOT_FOUND when a DeleteWorld won the race
        log.info("world edited", world_id=host.world_id, edit=kind, points=n)
        return pb.EditResponse(points_affected=n, stats=_stats(host.view()))

    # ---- generation --------------------------------------------------------------------------------------

    @streaming
    async def Play(self, request_iterator, context) -> AsyncIterator[pb.PlayResponse]:
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            raise invalid("PlayRequest.start", "empty Play stream: the first message must be PlayStart") from None
        if first.WhichOneof("kind") != "start":
            raise invalid("PlayRequest.start", "the first message of a Play stream must be PlayStart")
        options = PlayOptions.from_proto(first.start, self.config)
        host = await self._get(options.world_id, "PlayStart.world_id")
        session_id = uuid.uuid4().hex[:12]
        slot = await self._open_slot(host, session_id)
        session = None
        try:
            session = PlaySession(session_id, host, options, self.generator, self.config, self.recordings_dir,
                                  first.start, closer=self.closer, clip_slots=self.clip_slots)
            slot.session = session
            self._play[session.id] = session
            structlog.contextvars.bind_contextvars(world_id=host.world_id, session_id=session.id)
            session.log.info("play started", peer=context.peer(), recording=session.recording_id,
                             lockstep=options.lockstep)
            yield pb.PlayResponse(started=pb.PlayStarted(
                session_id=session.id, world=world_info(host), fps=options.fps,
                clip=pb.ClipLengths(first_clip_frames=options.clip.first_clip_frames,
                                    clip_frames=options.clip.clip_frames,
                                    preceding_frames=options.clip.preceding_frames),
                recording_id=session.recording_id, lockstep=options.lockstep,
            ))
            reader = asyncio.create_task(session.read(request_iterator))
            driver = asyncio.create_task(session.drive())
            try:
                while True:
                    item = await session.outbox.get()
                    if item is None:
                        break
                    if item.HasField("frame"):
                        self.frames_served += 1
                    yield item
                if session.error is not None:
                    raise session.error
            finally:
                reader.cancel()
                driver.cancel()
                await asyncio.gather(reader, driver, return_exceptions=True)
        finally:
            # Whatever ended the session (client cancel, deadline, broken connection, shutdown, an error in the
            # clip loop, a failing save or recording close, a second cancellation while finishing): the slot's
            # finish task runs to its end on its own and releases world and slot exactly once when it is done.
            await slot.close()

    @streaming
    async def Generate(self, request, context) -> AsyncIterator[pb.Frame]:
        host = await self._get(request.world_id, "GenerateRequest.world_id")
        view = host.view()
        path = request.WhichOneof("path")
        if path == "trajectory":
            c2w = builders.trajectory_from_proto(request.trajectory, "trajectory", self.limits)
        elif path == "official":
            c2w = builders.official_to_c2w(request.official, view.origin_c2w, self.limits)
            if request.official.HasField("intrinsics"):
                n = request.official.intrinsics
                given = np.array([n.fx_over_width, n.fy_over_height, n.cx_over_width, n.cy_over_height])
                if not np.allclose(given, view.intrinsics.to_normalized(), rtol=1e-3, atol=1e-4):
                    raise invalid(
                        "official.intrinsics",
                        f"official.intrinsics {given.tolist()} differ from the world's camera "
                        f"{view.intrinsics.to_normalized().tolist()}; frames are generated with the world's"
                    )
        else:
            raise invalid("GenerateRequest.path", "GenerateRequest needs a trajectory or an official trajectory")
        quality = check_image_options(request.jpeg_quality, request.encoding, "")
        clip = clip_from_proto(request.clip if request.HasField("clip") else None, self.limits, "",
                               default=ClipConfig.paper())
        session_id = uuid.uuid4().hex[:12]
        slot = await self._open_slot(host, session_id)
        loop = asyncio.get_running_loop()
        outbox = _Handoff(self.limits.frame_queue)
        encoding = request.encoding or pb.FRAME_ENCODING_JPEG
        K = builders.intrinsics_to_proto(view.intrinsics)
        work = None
        try:
            engine = host.open_engine(self.generator, EngineConfig(clip=clip))

            def sink(n: int, f) -> bool:
                frame = pb.Frame(frame_index=f.frame_index, clip_id=f.clip_id, pose=pose_to_proto(f.c2w),
                                 intrinsics=K, server_time_ns=time.time_ns(), encoding=encoding,
                                 width=f.rgb.shape[1], height=f.rgb.shape[0],
                                 data=encode_image(f.rgb, encoding, quality), session_frame=n)
                # False when the client went away: the clip in progress is abandoned before its memory update
                return outbox.put_blocking(loop, frame)

            work = asyncio.ensure_future(host.generate(engine, c2w, request.prompt or None, int(request.seed),
                                                       sink))
            work.add_done_callback(lambda _: outbox.close())
            while True:
                frame = await outbox.get()
                if frame is None:
                    break
                self.frames_served += 1
                yield frame
            await work  # re-raises a generation error
        finally:
            outbox.cancel()
            # the worker sees the cancel within 0.2 s; the world is released only after it (slot.close waits for
            # the work on its own, even if this handler is cancelled again)
            await slot.close(work)

    # ---- export / import ---------------------------------------------------------------------------------

    @streaming
    async def ExportWorld(self, request, context):
        host = await self._get(request.world_id, "ExportWorldRequest.world_id")
        fmt = request.format or pb.EXPORT_FORMAT_SNAPSHOT
        if fmt not in (pb.EXPORT_FORMAT_SNAPSHOT, pb.EXPORT_FORMAT_PLY):
            raise invalid("ExportWorldRequest.format", f"format {request.format} is not an ExportFormat")
        data = await host.export("ply" if fmt == pb.EXPORT_FORMAT_PLY else "snapshot")
        for off in range(0, max(len(data), 1), CHUNK_BYTES):
            yield pb.DataChunk(data=data[off:off + CHUNK_BYTES], offset=off, total_bytes=len(data))

    @unary
    async def ImportWorld(self, request_iterator, context):
        if self.draining:
            raise UnavailableError("server is shutting down")
        header = None
        parts: list[bytes] = []
        size = 0
        async for req in request_iterator:
            kind = req.WhichOneof("kind")
            if header is None:
                if kind != "header":
                    raise invalid("ImportWorldRequest.header", "the first ImportWorld message must be an ImportHeader")
                header = req.header
                continue
            if kind != "chunk":
                raise invalid("ImportWorldRequest.chunk", "ImportWorld takes one header, then chunks")
            if req.chunk.offset != size:
                raise invalid("chunk.offset", f"chunk offset {req.chunk.offset} but {size} bytes received so far")
            size += len(req.chunk.data)
            if size > self.limits.max_import_bytes:
                raise invalid("chunk.data", f"import exceeds the limit max_import_bytes={self.limits.max_import_bytes}")
            parts.append(req.chunk.data)
        if header is None:
            raise invalid("ImportWorldRequest.header", "empty ImportWorld stream")
        data = b"".join(parts)
        fmt = header.format or pb.EXPORT_FORMAT_SNAPSHOT
        if fmt == pb.EXPORT_FORMAT_PLY:
            if not header.HasField("intrinsics"):
                raise invalid("header.intrinsics", "ImportHeader.intrinsics is required for a PLY import")
            K = builders.intrinsics_from_proto(header.intrinsics, self.limits, "header.intrinsics")
            start = builders.pose_from_proto(header.start, "header.start") if header.HasField("start") else np.eye(4)
            world_id = self.store.new_id(header.world_id, "header.world_id")
            try:
                world = await asyncio.to_thread(builders.world_from_ply, data, K, start, world_id, header.prompt)
                host = await self.store.add(world)
            finally:
                self.store.release_id(world_id)
        elif fmt == pb.EXPORT_FORMAT_SNAPSHOT:
            if header.world_id:
                check_id(header.world_id, "header.world_id")
            world = await asyncio.to_thread(builders.world_from_snapshot, data, "")
            wanted = header.world_id or world.world_id
            world_id = self.store.new_id(wanted, "header.world_id" if header.world_id else "snapshot world_id")
            try:
                world.info.world_id = world_id
                host = await self.store.add(world)
            finally:
                self.store.release_id(world_id)
        else:
            raise invalid("header.format", f"format {header.format} is not an ExportFormat")
        log.info("world imported", world_id=world_id, bytes=len(data))
        return world_info(host)

    # ---- recordings --------------------------------------------------------------------------------------

    @unary
    async def ListRecordings(self, request, context):
        if request.world_id:
            check_id(request.world_id, "ListRecordingsRequest.world_id")
        if request.page_size < 0:
            raise invalid("page_size", f"page_size must be >= 0, got {request.page_size}")

        def _list():
            self.closer.wait_all(timeout_s=30.0)  # a session that just ended: its recording listed complete
            out = []
            for p in sorted(self.recordings_dir.glob("*.mcap")):
                if request.world_id and not p.stem.startswith(request.world_id + "."):
                    continue  # ids are <world_id>.<session_id>: filter before reading the file
                s = summarize(p)
                if not request.world_id or s.world_id == request.world_id:
                    out.append(s.to_proto())
            return out

        recordings, token = _page(request, await asyncio.to_thread(_list), lambda r: r.recording_id, "recordings")
        return pb.ListRecordingsResponse(recordings=recordings, next_page_token=token)

    @streaming
    async def Replay(self, request, context):
        rid = check_id(request.recording_id, "ReplayRequest.recording_id", "recording_id")
        path = self.recordings_dir / f"{rid}.mcap"
        await asyncio.to_thread(self.closer.wait, path, 30.0)  # its close in flight (seeking needs the summary)
        if not await asyncio.to_thread(path.is_file):
            raise NotFoundError(f"recording {rid!r} not found")
        speed = request.speed
        if not (np.isfinite(speed) and speed >= 0):
            raise invalid("ReplayRequest.speed", f"speed must be >= 0, got {speed}")
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
                    await asyncio.sleep(min(delay, 3600.0))
            yield frame
            item = await asyncio.to_thread(next, frames, None)


class _Slot:
    """A running Play / Generate call's hold on one session slot and one world's lease. ``close`` ends it:
    the session's finish (recording close, save) and the release run in a task of their own, so the release
    happens exactly once, after the work on the world's thread is over, even when the handler awaiting it is
    cancelled again (a second cancellation during shutdown) or the finish fails (disk full)."""

    def __init__(self, servicer: WorldServicer, host: WorldHost, session_id: str) -> None:
        self.servicer = servicer
        self.host = host
        self.session_id = session_id
        self.session: PlaySession | None = None
        self._task: asyncio.Task | None = None

    async def close(self, work: asyncio.Future | None = None) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._finish(work))
            self.servicer.finishing.add(self._task)
            self._task.add_done_callback(self.servicer.finishing.discard)
        await asyncio.shield(self._task)

    async def _finish(self, work: asyncio.Future | None) -> None:
        s, session = self.servicer, self.session
        try:
            if work is not None:
                try:
                    await work
                except BaseException:  # noqa: BLE001 -- reported on the stream already
                    pass
            if session is not None:
                s._play.pop(session.id, None)
                try:
                    await session.finish()  # after the clip in flight: world saved, recording closed
                except Exception as exc:  # noqa: BLE001 -- logged; the release below happens regardless
                    code, _, _ = errors.report(exc, "Play.finish")
                    session.log.error("play finish failed; world released anyway", code=code.name)
                s.frames_dropped += session.outbox.dropped
                s.poses_skipped += session.poses_dropped
                session.log.info("play ended", frames=session.frames_sent, dropped=session.outbox.dropped,
                                 poses_skipped=session.poses_dropped)
        finally:  # this task runs once per slot: one release, one decrement
            self.host.release(self.session_id)
            s.sessions -= 1
            s.sessions_ended += 1


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
        bound_heap()  # before the worlds' threads exist (server/host.py)
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.store = open_store(config)  # in-process hosts, or Ray actors with config.cluster
        self.servicer: WorldServicer | None = None
        errors.set_data_dir(config.data_dir)
        self.metrics = ServerMetrics(self)  # read at scrape time; served on config.metrics_port
        self._warm = None  # the kernel warm-up process (config.warm_kernels), while it runs

    def stats(self) -> dict:
        """Counters for metrics, read at scrape time (cheap, no worker round trip): live sessions, frames served /
        dropped, poses skipped, statuses by code (``errors``, ``unexpected`` = INTERNAL), per world
        ``WorldHost.stats()`` (memory_points, history_frames, clips_generated, frames_generated, snapshot_bytes,
        saves, save_failures, last_save_cpu_s, controlled), whether it is draining, and per live Play session its
        queue depths (``live``)."""
        s = self.servicer
        live = list(s._play.values()) if s is not None else []
        return {
            "sessions": s.sessions if s else 0,
            "play_sessions": len(live),
            "sessions_started": s.sessions_started if s else 0,
            "sessions_ended": s.sessions_ended if s else 0,
            "frames_served": s.frames_served if s else 0,
            # ended sessions' totals plus the live ones'
            "frames_dropped": (s.frames_dropped if s else 0) + sum(p.outbox.dropped for p in live),
            "poses_skipped": (s.poses_skipped if s else 0) + sum(p.poses_dropped for p in live),
            "errors": dict(errors.ERROR_COUNTS),
            "worlds_unreadable": len(self.store.broken),
            "worlds": {h.world_id: h.stats() for h in self.store.hosts()},
            "draining": bool(s.draining) if s else False,
            # per live Play session: queue depths (ints and lens, safe from the scrape thread)
            "live": [{"session_id": p.id, "world_id": p.host.world_id, "outbox_frames": int(p.outbox.frames_queued),
                      "pending_actions": p.actions.qsize(), "frames_sent": int(p.frames_sent)} for p in live],
        }

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
        # with --ray each world actor builds its own generator (on its GPU); the front door needs none
        generator = None if c.cluster is not None else make_generator(c.generator, **dict(c.generator_kwargs))
        await asyncio.to_thread(self.store.load_all)
        self.servicer = WorldServicer(c, self.store, generator)
        self._server = grpc.aio.server(interceptors=[self.metrics.interceptor, _AuthInterceptor(c.token)],
                                       options=self._options())
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
        if c.warm_kernels and generator is not None:  # with --ray the actors run the kernels
            self._warm = KernelWarmUp()
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
        if self.servicer is not None:
            # sessions' finishes (save, recording handed to the closer) complete, then the closer drains
            if self.servicer.finishing:
                await asyncio.wait(list(self.servicer.finishing), timeout=60.0)
            await asyncio.to_thread(self.servicer.closer.shutdown, 60.0)
        saved = await self.store.save_all()
        await asyncio.to_thread(self.store.close)
        self._server = None
        self.metrics.close()
        if self._warm is not None and self._warm.poll() is None:  # a warm-up still compiling: not needed now
            self._warm.terminate()
            await asyncio.to_thread(self._warm.wait)
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
