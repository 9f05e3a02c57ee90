"""``spatia web``: the browser front end, an aiohttp app in its own process and a gRPC client of any world server.

It talks to the server only through ``spatia.client.api`` (proto), so it fronts a local or a remote server alike.

Routes (JSON unless said otherwise):

    GET  /                         the page (static/index.html, plain HTML + JS, no build step)
    GET  /api/config               {auth_required, logged_in}
    POST /api/login                {token} -> session cookie (HttpOnly, SameSite=Strict; Secure over TLS)
    POST /api/logout
    GET  /api/worlds               the server's worlds, plus who plays / watches them here
    POST /api/worlds               {scene, seed, width, height, prompt, world_id} or multipart with a ``photo`` file
    GET  /api/worlds/{id}/minimap.png   the memory from above with the camera trail (client.hud.minimap_image)
    POST /api/worlds/{id}/edit     remove the memory in a sphere in front of the camera (the edit key)
    GET  /api/recordings
    POST /api/rtc/offer            {sdp, type, world, role, fps, width, height} -> WebRTC answer (client/web/rtc.py)
    GET  /ws/play?world=&role=play|watch&fps=&width=&height=   frames (binary) + status (text); controls in
    GET  /ws/replay?rec=&start=&speed=                         a recording's frames from ``start``

A binary WebSocket message is one frame: 4 bytes (big-endian length n), n bytes of JSON metadata, then the
server's JPEG as it came over gRPC. Controls from the page are JSON text: ``{"t": "act", "seq": n, <axes>}``,
``{"t": "prompt", "prompt": "..."}``; the same messages travel on the WebRTC data channel.

Auth: when the gRPC server wants a token (ListWorlds answers UNAUTHENTICATED), every /api and /ws route but
config and login needs the session cookie, which the login form gets by posting the token (checked against the
server). The token lives only in this process's memory, never in a URL or in the page. Requests that change
anything and every WebSocket / signalling request must come from this app's own origin (the Origin header).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import secrets
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import structlog
from aiohttp import WSMsgType, web

from spatia.client.api import AsyncWorldClient, WorldServiceError, scene_request
from spatia.client.web.hub import HubRegistry, PlayOptions
from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.proto.spatia.v1.convert import pose_array

log = structlog.get_logger("spatia.web")

CLIENT = web.RequestKey("client", AsyncWorldClient) if hasattr(web, "RequestKey") else "client"
STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "spatia_session"
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
MINIMAP_REFRESH_S = 10.0  # the minimap's memory points are fetched again at most this often ...
MINIMAP_BUSY = 0.02  # ... and fetching them takes at most this share of the time (an export of 230 k points
# costs the server and this app ~0.2 s CPU: at most every 3 s, up to ~5 ms a frame at 13 fps, on the engine's cores;
# the camera and its trail are drawn live, only newly seen memory shows up later)
MINIMAP_VOXEL_M = 0.05  # points thinned to one per voxel: a 192 px map across 16 m has 8 cm pixels
MINIMAP_REUSE_S = 0.5  # a drawn minimap is served again for this long (spectators, quick reloads)


def thin_points(points: np.ndarray, colors: np.ndarray, voxel_m: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per ``voxel_m`` voxel (the first in the input's order): ``points`` [N, 3] world metres, ``colors``
    [N, 3] uint8 -> the kept rows of both, in the input's order."""
    if voxel_m <= 0:
        raise ValueError(f"voxel_m must be > 0, got {voxel_m}")
    if len(points) == 0:
        return points, colors
    cells = np.floor(np.asarray(points, dtype=np.float64) / voxel_m).astype(np.int64)
    cells -= cells.min(axis=0)
    span = cells.max(axis=0) + 1  # [3] voxels along each axis
    key = (cells[:, 0] * span[1] + cells[:, 1]) * span[2] + cells[:, 2]  # one int64 per voxel (spans < 2^21 each)
    _, first = np.unique(key, return_index=True)  # np.unique(axis=0) would be ~20x slower
    first.sort()
    return points[first], colors[first]


@dataclass
class WebConfig:
    server: str  # gRPC target host:port
    host: str = "127.0.0.1"
    port: int = 8080
    server_root_certificates: bytes | None = None  # PEM: the gRPC server's CA, for a TLS server
    tls: bool = False  # the page is served over HTTPS (cookies get Secure)
    allowed_origins: tuple[str, ...] = ()  # extra origins allowed besides the app's own (e.g. behind a proxy)
    grace_s: float = 10.0  # a dropped controller may reconnect to the same session within this
    session_ttl_s: float = 12 * 3600.0
    frame_queue: int = 2  # per-viewer frames waiting; beyond, the oldest is dropped
    # what a WebRTC player's session asks the server for: "raw" RGB (no JPEG encode on the server, no decode here;
    # 0.7 MB a 640x360 frame: for a server on this machine or a fast LAN), "jpeg", or "auto": raw when the server
    # is on loopback and the session does not record (a recording keeps JPEG: Foxglove shows CompressedImage)
    server_frames: str = "auto"
    video_codec: str = "vp8"  # WebRTC video: "vp8" or "h264" (when the browser offers it; else what it offers)
    # the playout delay (min, max ms) every WebRTC video packet asks the browser for (rtc.PLAYOUT_DELAY_URI): (0, 0)
    # renders each frame as soon as it is decoded; None sends no such extension (the browser's own jitter buffer
    # and smoothing renderer decide)
    playout_delay_ms: tuple[int, int] | None = (0, 0)

    def __post_init__(self) -> None:
        if self.server_frames not in ("auto", "raw", "jpeg"):
            raise ValueError(f"server_frames must be auto, raw or jpeg, got {self.server_frames!r}")
        if self.video_codec not in ("vp8", "h264"):
            raise ValueError(f"video_codec must be vp8 or h264, got {self.video_codec!r}")
        if self.playout_delay_ms is not None:
            lo, hi = self.playout_delay_ms
            if not 0 <= lo <= hi <= 40_950:
                raise ValueError(f"playout_delay_ms must be (min, max) with 0 <= min <= max <= 40950, "
                                 f"got {self.playout_delay_ms}")


def is_loopback(target: str) -> bool:
    """Is the gRPC target ``host:port`` (or ``unix:path``) on this machine?"""
    import ipaddress

    if target.startswith("unix:"):
        return True
    host = target.rsplit(":", 1)[0] if target.count(":") == 1 or target.startswith("[") else target
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class WebUser:
    client: AsyncWorldClient
    created_s: float = field(default_factory=time.monotonic)


def encode_ws_frame(meta: dict, jpeg: bytes) -> bytes:
    head = json.dumps(meta, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + jpeg


def decode_ws_frame(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack(">I", data[:4])
    return json.loads(data[4:4 + n]), data[4 + n:]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


_HTTP_OF_GRPC = {
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.OUT_OF_RANGE: 416, grpc.StatusCode.UNAVAILABLE: 503,
}


def _world_json(w: pb.WorldInfo, hubs: HubRegistry) -> dict:
    hub = hubs.hubs.get(w.world_id)
    return {"world_id": w.world_id, "source": w.source, "prompt": w.prompt, "width": w.intrinsics.width,
            "height": w.intrinsics.height, "memory_points": int(w.stats.memory_points),
            "frames": int(w.stats.history_frames), "controlled": bool(w.controlled),
            "playing_here": bool(hub and hub.session is not None), "viewers": hub.viewers if hub else 0}


class WebApp:
    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.users: dict[str, WebUser] = {}  # session cookie -> user (token-bound gRPC client)
        self.hubs = HubRegistry(grace_s=config.grace_s)
        self.anonymous: AsyncWorldClient | None = None  # the client when the server wants no token
        self.auth_required: bool | None = None  # unknown until the server answers once
        self.rtc_peers: set = set()

    # ---- app ------------------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._origin_middleware, self._auth_middleware],
                              client_max_size=MAX_UPLOAD_BYTES)
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC_DIR, show_index=False)
        app.router.add_get("/api/config", self.api_config)
        app.router.add_post("/api/login", self.api_login)
        app.router.add_post("/api/logout", self.api_logout)
        app.router.add_get("/api/worlds", self.api_worlds)
        app.router.add_post("/api/worlds", self.api_create_world)
        app.router.add_get("/api/worlds/{world_id}/minimap.png", self.api_minimap)
        app.router.add_post("/api/worlds/{world_id}/edit", self.api_edit)
        app.router.add_get("/api/recordings", self.api_recordings)
        app.router.add_post("/api/rtc/offer", self.api_rtc_offer)
        app.router.add_get("/ws/play", self.ws_play)
        app.router.add_get("/ws/replay", self.ws_replay)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        return app

    def _client(self, token: str | None) -> AsyncWorldClient:
        return AsyncWorldClient(self.config.server, token=token,
                                root_certificates=self.config.server_root_certificates)

    async def _startup(self, app) -> None:
        self.anonymous = self._client(None)
        self._minimaps: dict[str, tuple] = {}  # world -> (when, points, colours, origin, current, seconds taken)
        self._minimap_png: dict[tuple[str, int], tuple[float, bytes]] = {}  # (world, size) -> (when, PNG)
        await self._probe()
        # WebRTC's modules (aiortc, PyAV's codecs: 0.2-0.5 s) load now, not inside the first page's offer, where
        # they made a fresh app's first WebRTC start ~1 s slower than the next ones (benchmarks/web.py warm_up)
        with contextlib.suppress(ImportError):  # without aiortc the pages use the WebSocket stream
            await asyncio.to_thread(importlib.import_module, "spatia.client.web.rtc")

    async def _shutdown(self, app) -> None:
        for pc in list(self.rtc_peers):
            with contextlib.suppress(Exception):
                await pc.close()
        await self.hubs.close()
        for user in self.users.values():
            await user.client.close()
        if self.anonymous is not None:
            await self.anonymous.close()

    async def _probe(self) -> bool | None:
        """Does the server want a token? Asked once it answers (ListWorlds without one)."""
        if self.auth_required is None:
            try:
                await self.anonymous.list_worlds()
                self.auth_required = False
            except WorldServiceError as exc:
                if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                    self.auth_required = True
                else:
                    log.warning("world server not answering", server=self.config.server, error=str(exc))
        return self.auth_required

    # ---- security ---------------------------------------------------------------------------------------

    def _own_origin(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    @web.middleware
    async def _origin_middleware(self, request: web.Request, handler):
        """Cross-site requests may not change anything nor open streams: Origin must be this app's."""
        changes = request.method not in ("GET", "HEAD", "OPTIONS") or request.path.startswith("/ws/")
        origin = request.headers.get("Origin")
        if changes and origin is not None and origin not in (self._own_origin(request),
                                                             *self.config.allowed_origins):
            log.warning("origin refused", origin=origin, path=request.path)
            return _error(403, f"origin {origin} is not allowed")
        return await handler(request)

    def _user(self, request: web.Request) -> WebUser | None:
        sid = request.cookies.get(COOKIE)
        user = self.users.get(sid) if sid else None
        if user is not None and time.monotonic() - user.created_s > self.config.session_ttl_s:
            self.users.pop(sid, None)
            return None
        return user

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler):
        path = request.path
        if not (path.startswith("/api/") or path.startswith("/ws/")) or path in ("/api/config", "/api/login"):
            return await handler(request)
        required = await self._probe()
        if required is None:
            return _error(503, f"the world server {self.config.server} is not answering")
        if not required:
            request[CLIENT] = self.anonymous
            return await handler(request)
        user = self._user(request)
        if user is None:
            return _error(401, "log in first (the world server wants a token)")
        request[CLIENT] = user.client
        return await handler(request)

    # ---- pages & auth -----------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        resp = web.FileResponse(STATIC_DIR / "index.html")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    async def api_config(self, request: web.Request) -> web.Response:
        required = await self._probe()
        return web.json_response({"auth_required": required, "logged_in": bool(self._user(request)) or
                                  required is False, "server": self.config.server})

    async def api_login(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            token = str(body["token"])
        except (ValueError, KeyError, TypeError):
            return _error(400, 'expected JSON {"token": "..."}')
        if not token:
            return _error(400, "token must not be empty")
        client = self._client(token)
        try:
            await client.list_worlds()
        except WorldServiceError as exc:
            await client.close()
            if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                await asyncio.sleep(0.5)  # slows guessing
                log.warning("login refused", peer=request.remote)
                return _error(401, "wrong token")
            return _error(503, f"the world server did not answer: {exc.message}")
        sid = secrets.token_urlsafe(32)
        self.users[sid] = WebUser(client)
        resp = web.json_response({"ok": True})
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", secure=self.config.tls, path="/",
                        max_age=int(self.config.session_ttl_s))
        log.info("login", peer=request.remote)
        return resp

    async def api_logout(self, request: web.Request) -> web.Response:
        user = self.users.pop(request.cookies.get(COOKIE, ""), None)
        if user is not None:
            await user.client.close()
        resp = web.json_response({"ok": True})
        resp.del_cookie(COOKIE, path="/")
        return resp

    # ---- worlds ------------------------------------------------------------------------------------------

    async def api_worlds(self, request: web.Request) -> web.Response:
        try:
            worlds = await request[CLIENT].list_worlds()
        except WorldServiceError as exc:
            return _error(_HTTP_OF_GRPC.get(exc.code, 502), exc.message)
        return web.json_response({"worlds": [_world_json(w, self.hubs) for w in worlds]})

    async def api_create_world(self, request: web.Request) -> web.Response:
        client: AsyncWorldClient = request[CLIENT]
        try:
            if request.content_type.startswith("multipart/"):
                form = await request.post()
                photo = form.get("photo")
                if photo is None or not hasattr(photo, "file"):
                    return _error(400, "multipart upload needs a 'photo' file field")
                data = photo.file.read()
                if not data:
                    return _error(400, "the uploaded photo is empty")
                req = pb.CreateWorldRequest(world_id=str(form.get("world_id", "")), prompt=str(form.get("prompt", "")),
                                            image=pb.ImageSource(image=data))
            else:
                body = await request.json()
                req = scene_request(str(body.get("scene", "room")), int(body.get("seed", 0)),
                                    int(body.get("width", 640)), int(body.get("height", 360)),
                                    world_id=str(body.get("world_id", "")), prompt=str(body.get("prompt", "")))
        except (ValueError, TypeError) as exc:
            return _error(400, f"bad create request: {exc}")
        try:
            info = await client.create_world(req)
        except WorldServiceError as exc:
            return _error(_HTTP_OF_GRPC.get(exc.code, 502), exc.message)
        log.info("world created", world_id=info.world_id, source=info.source)
        return web.json_response(_world_json(info, self.hubs))

    async def api_minimap(self, request: web.Request) -> web.Response:
        """The memory from above with the camera trail of the session played here, centred on the camera
        (client.hud.minimap_image). The points come from a PLY export of the whole memory, which costs the server
        and this app CPU that a 2-core machine takes from the frames: they are refreshed at most every
        ``MINIMAP_REFRESH_S`` and at most ``MINIMAP_BUSY`` of the time, thinned to one per ``MINIMAP_VOXEL_M``
        voxel (a map pixel is ~8 cm), and a drawn map is reused for ``MINIMAP_REUSE_S``."""
        import cv2

        from spatia.client.hud import MapFrame, minimap_image, read_ply_points

        client: AsyncWorldClient = request[CLIENT]
        world_id = request.match_info["world_id"]
        try:
            size_px = min(max(int(request.query.get("size", 192)), 64), 512)
        except ValueError:
            return _error(400, "size must be an integer (pixels)")
        headers = {"Cache-Control": "no-store"}
        drawn = self._minimap_png.get((world_id, size_px))
        if drawn is not None and time.monotonic() - drawn[0] < MINIMAP_REUSE_S:
            return web.Response(body=drawn[1], content_type="image/png", headers=headers)
        try:
            cached = self._minimaps.get(world_id)
            if cached is None or time.monotonic() - cached[0] > max(MINIMAP_REFRESH_S, cached[5] / MINIMAP_BUSY):
                t0 = time.monotonic()
                info = await client.get_world(world_id)
                ply = await _export_ply(client, world_id)
                points, colors = await asyncio.to_thread(
                    lambda: thin_points(*read_ply_points(ply), voxel_m=MINIMAP_VOXEL_M))
                origin = pose_array(info.origin)
                current = pose_array(info.current) if info.HasField("current") else origin
                cached = (time.monotonic(), points, colors, origin, current, time.monotonic() - t0)
                self._minimaps[world_id] = cached
        except WorldServiceError as exc:
            return _error(_HTTP_OF_GRPC.get(exc.code, 502), exc.message)
        _, points, colors, origin, current, _ = cached
        hub = self.hubs.hubs.get(world_id)
        c2w = hub.c2w if hub is not None and hub.c2w is not None else current
        trail = np.stack(hub.trail) if hub is not None and hub.trail else c2w[None, :3, 3]
        img = await asyncio.to_thread(minimap_image, points, colors, trail, c2w, MapFrame.from_origin(origin),
                                      size_px)
        ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        self._minimap_png[(world_id, size_px)] = (time.monotonic(), png.tobytes())
        return web.Response(body=png.tobytes(), content_type="image/png", headers=headers)

    async def api_edit(self, request: web.Request) -> web.Response:
        """Remove the memory inside a sphere where the view's centre ray meets it (Render depth), else
        ``distance_m`` ahead: the pygame player's edit key (client/player.py ``_edit_request``)."""
        client: AsyncWorldClient = request[CLIENT]
        world_id = request.match_info["world_id"]
        try:
            body = await request.json() if request.can_read_body else {}
            radius_m = float(body.get("radius_m", 0.5))
            distance_m = float(body.get("distance_m", 1.5))
            pose = body.get("pose")
            if not (0 < radius_m <= 10 and 0 < distance_m <= 100):
                raise ValueError("radius_m must be in (0, 10] and distance_m in (0, 100]")
        except (ValueError, TypeError) as exc:
            return _error(400, f"bad edit request: {exc}")
        hub = self.hubs.hubs.get(world_id)
        try:
            if pose is not None:
                c2w = np.asarray(pose, dtype=np.float64).reshape(4, 4)
            elif hub is not None and hub.c2w is not None:
                c2w = hub.c2w
            else:
                info = await client.get_world(world_id)
                c2w = pose_array(info.current if info.HasField("current") else info.origin)
            r = await client.render(world_id, c2w)
            h, w = r.depth_m.shape
            patch = r.depth_m[h // 2 - h // 8: h // 2 + h // 8 + 1, w // 2 - w // 8: w // 2 + w // 8 + 1]
            hit = patch[patch > 0]
            dist = float(np.median(hit)) if hit.size else distance_m  # z-depth along the optical axis
            centre = c2w[:3, 3] + dist * c2w[:3, 2]
            region = pb.Region(sphere=pb.SphereRegion(center=pb.Vec3(x=centre[0], y=centre[1], z=centre[2]),
                                                      radius_m=radius_m))
            resp = await client.edit(pb.EditRequest(world_id=world_id, remove=pb.RemoveEdit(region=region)))
        except (ValueError, TypeError) as exc:
            return _error(400, f"bad edit request: {exc}")
        except WorldServiceError as exc:
            return _error(_HTTP_OF_GRPC.get(exc.code, 502), exc.message)
        self._minimaps.pop(world_id, None)
        for key in [k for k in self._minimap_png if k[0] == world_id]:
            self._minimap_png.pop(key, None)
        return web.json_response({"points_removed": int(resp.points_affected),
                                  "memory_points": int(resp.stats.memory_points)})

    async def api_recordings(self, request: web.Request) -> web.Response:
        try:
            recs = await request[CLIENT].list_recordings(request.query.get("world", ""))
        except WorldServiceError as exc:
            return _error(_HTTP_OF_GRPC.get(exc.code, 502), exc.message)
        return web.json_response({"recordings": [
            {"recording_id": r.recording_id, "world_id": r.world_id, "frames": int(r.frames),
             "actions": int(r.actions), "duration_s": (r.end_unix_ns - r.start_unix_ns) / 1e9,
             "complete": r.complete, "start_unix_ns": r.start_unix_ns} for r in recs]})

    # ---- play / watch -------------------------------------------------------------------------------------

    @staticmethod
    def play_options(params) -> PlayOptions:
        def opt_int(name):
            v = params.get(name)
            return int(v) if v not in (None, "", 0, "0") else None

        fps = float(params.get("fps") or 30.0)
        if not 1.0 <= fps <= 120.0:
            raise ValueError(f"fps must be in [1, 120], got {fps}")
        return PlayOptions(fps=fps, width=opt_int("width"), height=opt_int("height"),
                           record=str(params.get("record", "1")) not in ("0", "false", "False"),
                           prompt=str(params.get("prompt", "")))

    async def handle_control(self, hub, token, msg: dict) -> dict | None:
        """One control message from a page (WebSocket text or data channel); returns a reply or None."""
        kind = msg.get("t")
        try:
            if kind == "act":
                axes = {k: v for k, v in msg.items() if k not in ("t", "seq", "sent_ms", "rx_ms")}
                rx_ms = msg.get("rx_ms")  # stamped on arrival by the transport's handler
                await hub.send_action(token, int(msg.get("seq", 0)), axes,
                                      rx_ms=float(rx_ms) if isinstance(rx_ms, (int, float)) else None)
                return None
            if kind == "prompt":
                await hub.set_prompt(token, str(msg.get("prompt", ""))[:2000])
                return {"t": "note", "message": "prompt set"}
            if kind == "ping":
                return {"t": "pong", "sent_ms": msg.get("sent_ms")}
            return {"t": "error", "message": f"unknown control message {kind!r}"}
        except (PermissionError, ValueError, TypeError) as exc:
            return {"t": "error", "message": str(exc)}
        except WorldServiceError as exc:
            return {"t": "error", "message": exc.message}

    async def ws_play(self, request: web.Request) -> web.StreamResponse:
        world_id = request.query.get("world", "")
        role = request.query.get("role", "play")
        if not world_id or role not in ("play", "watch"):
            return _error(400, "need ?world=<id>&role=play|watch")
        try:
            options = self.play_options(request.query)
        except ValueError as exc:
            return _error(400, str(exc))
        hub = self.hubs.get(request[CLIENT], world_id)
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        token = object()
        sub = hub.subscribe(controller=role == "play", maxsize=self.config.frame_queue)
        if role == "play":
            try:
                if hub.session is None:
                    hub.client = request[CLIENT]
                await hub.take_control(token, options)
            except WorldServiceError as exc:
                hub.unsubscribe(sub)
                await ws.send_json({"t": "error", "message": exc.message, "code": exc.code.name})
                await ws.close()
                return ws
        await ws.send_json(hub.status_message())
        sender = asyncio.create_task(self._ws_send(ws, sub))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        await ws.send_json({"t": "error", "message": "control messages are JSON"})
                        continue
                    if isinstance(data, dict):
                        data["rx_ms"] = time.time() * 1e3  # when the action reached this app (the page's stages)
                    reply = await self.handle_control(hub, token, data)
                    if reply is not None:
                        await ws.send_json(reply)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            sender.cancel()
            hub.unsubscribe(sub)
            hub.release_control(token)
        return ws

    @staticmethod
    async def _ws_send(ws: web.WebSocketResponse, sub) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError, RuntimeError):
            while True:
                item = await sub.get()
                if item is None:
                    return
                if isinstance(item, dict):
                    await ws.send_json(item)
                else:
                    # a RAW frame (the session was opened for WebRTC) is encoded once, off the event loop
                    jpeg = item.jpeg if item.jpeg_ready else await asyncio.to_thread(lambda f=item: f.jpeg)
                    await ws.send_bytes(encode_ws_frame(item.meta, jpeg))

    async def ws_replay(self, request: web.Request) -> web.StreamResponse:
        rec = request.query.get("rec", "")
        try:
            start = int(request.query.get("start", 0))
            speed = float(request.query.get("speed", 1.0))
        except ValueError:
            return _error(400, "start must be an integer frame and speed a number")
        if not rec or start < 0 or not speed >= 0:
            return _error(400, "need ?rec=<recording id>&start>=0&speed>=0")
        client: AsyncWorldClient = request[CLIENT]
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        n = start
        try:
            async for f in client.replay(rec, start_frame=start, speed=speed):
                meta = {"t": "frame", "index": f.frame_index, "clip": f.clip_id, "seq": f.last_action_seq,
                        "replay_frame": n, "pose": [float(v) for v in f.c2w.reshape(-1)],
                        "width": int(f.raw.width), "height": int(f.raw.height)}
                jpeg = bytes(f.raw.data) if f.raw.encoding in (pb.FRAME_ENCODING_JPEG,
                                                               pb.FRAME_ENCODING_UNSPECIFIED) else _jpeg(f.rgb)
                await ws.send_bytes(encode_ws_frame(meta, jpeg))
                n += 1
            await ws.send_json({"t": "end", "frames": n})
        except WorldServiceError as exc:
            await ws.send_json({"t": "error", "message": exc.message})
        except (ConnectionError, RuntimeError):
            pass
        await ws.close()
        return ws

    # ---- WebRTC -----------------------------------------------------------------------------------------

    def webrtc_frame_encoding(self, options: PlayOptions) -> int:
        """The server's frame encoding for a session a WebRTC page opens (``WebConfig.server_frames``)."""
        mode = self.config.server_frames
        if mode == "auto":
            mode = "raw" if is_loopback(self.config.server) and not options.record else "jpeg"
        return pb.FRAME_ENCODING_RAW if mode == "raw" else pb.FRAME_ENCODING_JPEG

    async def api_rtc_offer(self, request: web.Request) -> web.Response:
        try:
            from spatia.client.web import rtc
        except ImportError as exc:  # aiortc not installed: the page falls back to the WebSocket
            return _error(501, f"WebRTC is not available here ({exc}); use the WebSocket stream")
        try:
            body = await request.json()
            world_id, role = str(body["world"]), str(body.get("role", "play"))
            sdp, kind = str(body["sdp"]), str(body.get("type", "offer"))
            options = self.play_options(body)
            if role not in ("play", "watch"):
                raise ValueError("role must be play or watch")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"bad offer: {exc}")
        hub = self.hubs.get(request[CLIENT], world_id)
        if role == "play" and hub.session is None:
            hub.client = request[CLIENT]
        try:
            options.encoding = self.webrtc_frame_encoding(options)
            answer = await rtc.answer(self, hub, role, options, sdp, kind, codec=self.config.video_codec,
                                      playout_delay_ms=self.config.playout_delay_ms)
        except WorldServiceError as exc:
            return _error(_HTTP_OF_GRPC.get(exc.code, 502), exc.message)
        return web.json_response(answer)


async def _export_ply(client: AsyncWorldClient, world_id: str) -> bytes:
    req = pb.ExportWorldRequest(world_id=world_id, format=pb.EXPORT_FORMAT_PLY)
    try:
        chunks = [c.data async for c in client.stub.ExportWorld(req, metadata=client.metadata)]
    except grpc.RpcError as exc:
        from spatia.client.api import _translate

        raise _translate(exc) from None
    return b"".join(chunks)


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data.tobytes()


def server_ssl_context(cert: Path, key: Path):
    """TLS for the page (pointer lock and the Gamepad API need a secure context off localhost)."""
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def run_app(config: WebConfig, ssl_context=None) -> None:
    app = WebApp(config).make_app()
    log.info("web app", url=f"{'https' if ssl_context else 'http'}://{config.host}:{config.port}/",
             server=config.server)
    web.run_app(app, host=config.host, port=config.port, ssl_context=ssl_context, print=None)


class WebAppThread:
    """The web app on a loopback ephemeral port in a background thread with its own loop (tests, benchmarks)."""

    def __init__(self, config: WebConfig, ssl_context=None) -> None:
        import threading

        self.config = config
        self.ssl_context = ssl_context
        self.app = WebApp(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="spatia-web")
        self.port = 0
        self._runner = None

    def start(self) -> str:
        self._thread.start()

        async def go():
            self._runner = web.AppRunner(self.app.make_app())
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=self.ssl_context)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout=60)
        return self.url

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.config.host}:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@contextlib.contextmanager
def running_web_app(config: WebConfig, ssl_context=None):
    t = WebAppThread(config, ssl_context)
    t.start()
    try:
        yield t
    finally:
        t.stop()
