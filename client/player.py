"""The pygame player: play a world like a game against a server (``spatia play``).

Threads (the render loop never blocks on the network, docs/DESIGN.md "Recordings and the
player"):

- render loop (the caller's thread, pygame): events -> ``KeyMap.action`` -> ``PlaySession.send`` (a queue put,
  never blocks); pops the due frame from the ``JitterBuffer``; draws frame, HUD, minimap, prompt line;
- ``player-net``: pulls decoded frames off the Play stream into the jitter buffer;
- ``player-map``: unary RPCs off the render loop: the memory as PLY for the minimap every ``map_refresh_s``,
  world stats, and the edit key's ``Edit`` (remove the memory points in a sphere in front of the camera: the
  paper's 3D-aware editing, Sec. 3 / Fig. 7; the next frames are generated from the edited memory).

Quit closes the action stream and drains the frames still coming, so the server finishes the session, saves the
world once (its own save policy) and closes the recording: nothing is saved twice, nothing is lost.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygame

from spatia.client.api import DecodedFrame, WorldClient
from spatia.client.hud import (HudState, MapFrame, draw_hud, draw_minimap, draw_prompt_line, draw_stale, heading_rad,
                        minimap_image, read_ply_points)
from spatia.client.jitter import JitterBuffer, JitterConfig
from spatia.client.keymap import HELD, KeyMap
from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.proto.spatia.v1.convert import pose_array


@dataclass(frozen=True)
class PlayerConfig:
    window: tuple[int, int] = (960, 540)  # pixels; the stream is scaled to fit
    fps: float = 30.0  # the session's frame rate (a session is served at ~30 fps; the jitter buffer paces at it)
    width: int | None = None  # stream resolution; None = the world's
    height: int | None = None
    prompt: str = ""
    record: bool = True
    screenshot_dir: Path = Path("screenshots")
    map_refresh_s: float = 2.0  # minimap memory refresh period
    edit_distance_m: float = 1.5  # the edit sphere's centre, in front of the camera
    edit_radius_m: float = 0.5
    stale_after_s: float = 1.5
    show_hud: bool = True
    show_minimap: bool = True


class Player:
    def __init__(self, client: WorldClient, world_id: str, config: PlayerConfig = PlayerConfig(),
                 keymap: KeyMap = KeyMap(), screen=None) -> None:
        self.client, self.world_id, self.config, self.keymap = client, world_id, config, keymap
        self.screen = screen  # a pygame Surface; None = open a window in ``open``
        self.session = None
        self.buffer = JitterBuffer(JitterConfig(fps=config.fps, stale_after_s=config.stale_after_s))
        self.held: set[str] = set()  # pygame key names held now
        self.mouse_dx = self.mouse_dy = 0.0
        self.mouse_captured = True
        self.show_hud, self.show_minimap = config.show_hud, config.show_minimap
        self.prompt_mode = False
        self.prompt_text = ""
        self.prompt = config.prompt
        self.current: DecodedFrame | None = None  # the frame on screen
        self.still: np.ndarray | None = None  # [H, W, 3] the memory seen from the start pose, until a frame arrives
        self.frames_shown = 0
        self.trail: list[np.ndarray] = []  # camera centres shown, world frame
        self.hud = HudState(world_id=world_id, prompt=config.prompt)
        self.last_screenshot: Path | None = None
        self.edits: list[int] = []  # points removed by each edit
        self._sent_ns: dict[int, int] = {}  # action seq -> time.time_ns() sent (latency)
        self.shown_latencies_ms: list[float] = []  # action sent -> first frame shown that applied it (latest 4096)
        self._shown_times: list[float] = []
        self._map_image: np.ndarray | None = None
        self._map_points: tuple[np.ndarray, np.ndarray] | None = None
        self._map_jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._joystick = None
        self._message_until = 0.0
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def open(self) -> None:
        if not pygame.get_init():
            pygame.init()
        if self.screen is None:
            self.screen = pygame.display.set_mode(self.config.window)
            pygame.display.set_caption(f"Spatia World - {self.world_id}")
            self._capture(True)
        self.font = pygame.font.Font(None, 20)
        info = self.client.get_world(self.world_id)
        self.map_frame = MapFrame.from_origin(pose_array(info.origin))
        self.hud.memory_points = int(info.stats.memory_points)
        self.session = self.client.play(self.world_id, fps=self.config.fps, prompt=self.prompt,
                                        record=self.config.record, width=self.config.width,
                                        height=self.config.height)
        self.hud.recording = bool(self.session.started.recording_id)
        self.start_c2w = pose_array(self.session.started.world.current) if self.session.started.world.HasField(
            "current") else pose_array(info.origin)
        self.hud.c2w = self.start_c2w
        self.trail.append(self.start_c2w[:3, 3].copy())
        # Standing still generates nothing, so show the memory from where the camera stands until the first frame.
        self.still = self.client.render(self.world_id, self.start_c2w, self.config.width, self.config.height).rgb
        for target, name in ((self._net_loop, "player-net"), (self._map_loop, "player-map")):
            t = threading.Thread(target=target, daemon=True, name=name)
            t.start()
            self._threads.append(t)
        self._map_jobs.put("refresh")
        if pygame.joystick.get_count():
            self._joystick = pygame.joystick.Joystick(0)

    def close(self) -> None:
        """End the session cleanly: stop sending, drain the frames still coming, stop the threads."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._map_jobs.put(None)
        for t in self._threads:
            t.join(timeout=30)
        if self.session is not None:
            self.session.close(drain=True)  # the server finishes, saves and closes the recording once
        self._capture(False)

    def run(self, max_seconds: float | None = None) -> None:
        """The interactive loop (60 Hz) until quit."""
        self.open()
        clock = pygame.time.Clock()
        t0 = time.monotonic()
        try:
            while self.tick(clock.tick(60) / 1000.0):
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    break
        finally:
            self.close()

    # ---- threads -------------------------------------------------------------------------------------------

    def _net_loop(self) -> None:
        while not self._stop.is_set():
            try:
                f = self.session.next_frame(timeout_s=0.1)
            except TimeoutError:
                continue
            except Exception as exc:  # the stream failed: show it, keep the last frame up (marked stale)
                self._note(f"stream error: {exc}")
                break
            if f is None:
                break
            self.buffer.push(f)
        self.buffer.close()

    def _map_loop(self) -> None:
        next_refresh = time.monotonic()
        while True:
            try:
                job = self._map_jobs.get(timeout=max(0.05, next_refresh - time.monotonic()))
            except queue.Empty:
                job = "refresh"
            if job is None or self._stop.is_set():
                return
            try:
                if isinstance(job, tuple) and job[0] == "edit":
                    resp = self.client.edit(self._edit_request(job[1]))
                    self.edits.append(int(resp.points_affected))
                    self._note(f"edit: removed {resp.points_affected} points")
                    self.hud.memory_points = int(resp.stats.memory_points)
                if job == "refresh" or isinstance(job, tuple):
                    if self.show_minimap:
                        self._map_points = read_ply_points(self.client.export_world(self.world_id,
                                                                                    pb.EXPORT_FORMAT_PLY))
                    self.hud.memory_points = int(self.client.get_world(self.world_id).stats.memory_points)
                    next_refresh = time.monotonic() + self.config.map_refresh_s
            except Exception as exc:  # a failed refresh keeps the old map; the HUD says why
                self._note(f"map: {exc}")
                next_refresh = time.monotonic() + self.config.map_refresh_s

    # ---- input ---------------------------------------------------------------------------------------------

    def _capture(self, on: bool) -> None:
        self.mouse_captured = on
        if pygame.display.get_init() and pygame.display.get_surface() is not None:
            pygame.event.set_grab(on)
            pygame.mouse.set_visible(not on)

    def _note(self, text: str, seconds: float = 3.0) -> None:
        self.hud.message = text
        self._message_until = time.monotonic() + seconds

    def handle_event(self, event) -> bool:
        """Apply one pygame event; False = quit."""
        if event.type == pygame.QUIT:
            return False
        if event.type == pygame.KEYDOWN:
            if self.prompt_mode:
                self._prompt_key(event)
                return True
            name = pygame.key.name(event.key).lower()
            binds = self.keymap.bindings_of(name)
            if any(b in HELD for b in binds):
                self.held.add(name)
            if "quit" in binds:
                return False
            if "release_mouse" in binds:
                self._capture(False)
            if "toggle_hud" in binds:
                self.show_hud = not self.show_hud
            if "toggle_minimap" in binds:
                self.show_minimap = not self.show_minimap
            if "screenshot" in binds:
                self.screenshot()
            if "prompt" in binds:
                self.prompt_mode, self.prompt_text = True, self.prompt
                self.held.clear()  # typing must not walk
            if "edit" in binds:
                self.edit_in_front()
        elif event.type == pygame.KEYUP:
            self.held.discard(pygame.key.name(event.key).lower())
        elif event.type == pygame.MOUSEBUTTONDOWN and not self.mouse_captured:
            self._capture(True)
        elif event.type == pygame.MOUSEMOTION and self.mouse_captured:
            self.mouse_dx += event.rel[0]
            self.mouse_dy += event.rel[1]
        elif event.type == pygame.JOYDEVICEADDED and self._joystick is None:
            self._joystick = pygame.joystick.Joystick(event.device_index)
        return True

    def _prompt_key(self, event) -> None:
        if event.key == pygame.K_RETURN:
            self.prompt = self.prompt_text.strip()
            self.session.set_prompt(self.prompt)
            self.hud.prompt = self.prompt
            self.prompt_mode = False
            self._note("prompt changed")
        elif event.key == pygame.K_ESCAPE:
            self.prompt_mode = False
        elif event.key == pygame.K_BACKSPACE:
            self.prompt_text = self.prompt_text[:-1]
        elif getattr(event, "unicode", "") and event.unicode.isprintable():
            self.prompt_text += event.unicode

    def _stick(self) -> tuple[float, float, float, float]:
        j = self._joystick
        if j is None:
            return (0.0, 0.0, 0.0, 0.0)
        km = self.keymap

        def ax(i: int) -> float:
            return float(j.get_axis(i)) if i < j.get_numaxes() else 0.0

        return ax(km.stick_move_x), ax(km.stick_move_y), ax(km.stick_look_x), ax(km.stick_look_y)

    # ---- actions -------------------------------------------------------------------------------------------

    def camera_c2w(self) -> np.ndarray:
        """The pose of the frame on screen (the start pose before the first frame)."""
        return self.current.c2w if self.current is not None else self.start_c2w

    def edit_in_front(self) -> None:
        """Remove the memory points in a sphere in front of the camera (async, via the Edit RPC): centred where
        the view's centre ray meets the memory (``Render`` depth), else ``edit_distance_m`` ahead."""
        self._map_jobs.put(("edit", self.camera_c2w().copy()))

    def _edit_request(self, c2w: np.ndarray) -> pb.EditRequest:
        r = self.client.render(self.world_id, c2w)
        h, w = r.depth_m.shape
        patch = r.depth_m[h // 2 - h // 8: h // 2 + h // 8 + 1, w // 2 - w // 8: w // 2 + w // 8 + 1]
        hit = patch[patch > 0]
        # z-depth is the distance along the optical axis: the surface point on the centre ray is c + d * forward
        dist = float(np.median(hit)) if hit.size else self.config.edit_distance_m
        centre = c2w[:3, 3] + dist * c2w[:3, 2]
        region = pb.Region(sphere=pb.SphereRegion(center=pb.Vec3(x=centre[0], y=centre[1], z=centre[2]),
                                                  radius_m=self.config.edit_radius_m))
        return pb.EditRequest(world_id=self.world_id, remove=pb.RemoveEdit(region=region))

    def screenshot(self, path: Path | None = None) -> Path:
        self.config.screenshot_dir.mkdir(parents=True, exist_ok=True)
        path = path or self.config.screenshot_dir / f"spatia-{self.world_id}-{time.strftime('%Y%m%d-%H%M%S')}-" \
                                                    f"{self.frames_shown:05d}.png"
        self.draw()
        pygame.image.save(self.screen, str(path))
        self.last_screenshot = path
        self._note(f"screenshot {path.name}")
        return path

    def tick(self, dt_s: float) -> bool:
        """One render-loop step of ``dt_s`` seconds: input -> action -> due frame -> draw. False = quit."""
        for event in pygame.event.get():
            if not self.handle_event(event):
                return False
        if self.session is not None and not self.prompt_mode and dt_s > 0:
            action = self.keymap.action(self.held, dt_s, self.mouse_dx, self.mouse_dy, self._stick())
            self.mouse_dx = self.mouse_dy = 0.0
            seq = self.session.send(move_forward=action.move_forward, move_right=action.move_right,
                                    move_up=action.move_up, yaw_rate_rad_s=action.yaw_rate_rad_s,
                                    pitch_rate_rad_s=action.pitch_rate_rad_s, yaw_delta_rad=action.yaw_delta_rad,
                                    pitch_delta_rad=action.pitch_delta_rad, sprint=action.sprint, dt_s=action.dt_s)
            if not action.is_idle:
                self._sent_ns[seq] = time.time_ns()
        frame = self.buffer.pop()
        if frame is not None:
            self._show(frame)
        self.draw()
        if pygame.display.get_init() and pygame.display.get_surface() is self.screen:
            pygame.display.flip()
        return True

    def _show(self, frame: DecodedFrame) -> None:
        self.current = frame
        self.frames_shown += 1
        self.hud.collided = frame.collided
        now = time.monotonic()
        self._shown_times = [t for t in self._shown_times if now - t < 2.0] + [now]
        self.hud.fps = (len(self._shown_times) - 1) / max(now - self._shown_times[0], 1e-6) \
            if len(self._shown_times) > 1 else 0.0
        sent = [s for s in self._sent_ns if s <= frame.last_action_seq]
        if sent:  # the first frame that applied an action: action -> frame latency
            self.hud.latency_ms = (frame.received_ns - self._sent_ns[max(sent)]) / 1e6
            shown_ns = time.time_ns()
            for s in sent:  # each action to the first frame shown that applied it (benchmarks/web.py --player)
                self.shown_latencies_ms.append((shown_ns - self._sent_ns[s]) / 1e6)
                del self._sent_ns[s]
            del self.shown_latencies_ms[:-4096]
        self.trail.append(frame.c2w[:3, 3].copy())
        if len(self.trail) > 2000:
            self.trail = self.trail[-2000:]

    # ---- drawing -------------------------------------------------------------------------------------------

    def draw(self) -> None:
        screen = self.screen
        screen.fill((0, 0, 0))
        rgb = self.current.rgb if self.current is not None else self.still
        if rgb is not None:
            surf = pygame.surfarray.make_surface(np.ascontiguousarray(rgb.transpose(1, 0, 2)))
            sw, sh = screen.get_size()
            scale = min(sw / rgb.shape[1], sh / rgb.shape[0])
            size = (max(1, int(rgb.shape[1] * scale)), max(1, int(rgb.shape[0] * scale)))
            screen.blit(pygame.transform.scale(surf, size), ((sw - size[0]) // 2, (sh - size[1]) // 2))
        c2w = self.camera_c2w()
        self.hud.c2w = c2w
        self.hud.heading_deg = math.degrees(heading_rad(c2w, self.map_frame))
        self.hud.stale = self.buffer.stale()
        self.hud.keys_held = tuple(sorted(self.held))
        if self.hud.message and time.monotonic() > self._message_until:
            self.hud.message = ""
        if self.show_hud:
            draw_hud(screen, self.hud, self.font)
        if self.hud.stale and self.current is not None:
            draw_stale(screen, self.font)
        if self.show_minimap:
            pts, cols = self._map_points if self._map_points is not None else (None, None)
            side = max(96, min(screen.get_size()) // 3)
            self._map_image = minimap_image(pts, cols, np.asarray(self.trail), c2w, self.map_frame, size_px=side)
            draw_minimap(screen, self._map_image)
        if self.prompt_mode:
            draw_prompt_line(screen, self.prompt_text, self.font)
