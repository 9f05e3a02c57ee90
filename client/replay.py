"""The player in replay mode (``spatia replay FILE --play``): watch a recorded session with pause, seek, speed
and single-frame steps, with the same HUD and a minimap of the recorded camera path.

Controls: Space pause / resume; Left / Right seek -/+ 1 s; Home start; ``,`` / ``.`` step one frame back /
forward (pauses); ``-`` / ``=`` halve / double the speed (1/8x .. 8x); F1 HUD; M minimap; F12 screenshot; Esc or
window close quits. Frames are decoded lazily from their recorded bytes (``pb.Frame``), one at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygame

from spatia.client.hud import HudState, MapFrame, draw_hud, draw_keys, draw_minimap, heading_rad, minimap_image
from spatia.proto.spatia.v1.convert import decode_frame, pose_array


@dataclass
class RecordedFrame:
    frame: object  # pb.Frame as recorded (bytes still encoded)
    keys: tuple[str, ...]  # the controls of the action it applied (server.recording.action_keys)


class ReplayViewer:
    def __init__(self, frames: Sequence[RecordedFrame], fps: float, world_id: str = "", screen=None,
                 window: tuple[int, int] = (960, 540), screenshot_dir: Path = Path("screenshots")) -> None:
        if not frames:
            from spatia.world.errors import InvalidInputError

            raise InvalidInputError("the recording holds no frames")
        self.frames, self.fps = frames, float(fps)
        self.poses = np.stack([pose_array(f.frame.pose) for f in frames])  # [N, 4, 4] c2w
        self.map_frame = MapFrame.from_origin(self.poses[0])
        self.screen, self.window, self.screenshot_dir = screen, window, screenshot_dir
        self.position = 0.0  # frame index, fractional while playing
        self.speed = 1.0
        self.paused = False
        self.show_hud = self.show_minimap = True
        self.hud = HudState(world_id=world_id)
        self._cache: tuple[int, np.ndarray] | None = None

    @property
    def index(self) -> int:
        return int(min(max(self.position, 0), len(self.frames) - 1))

    def rgb(self, i: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != i:
            self._cache = (i, decode_frame(self.frames[i].frame))
        return self._cache[1]

    def open(self) -> None:
        if not pygame.get_init():
            pygame.init()
        if self.screen is None:
            self.screen = pygame.display.set_mode(self.window)
            pygame.display.set_caption("Spatia World - replay")
        self.font = pygame.font.Font(None, 20)

    def seek(self, frame_index: float) -> None:
        self.position = float(min(max(frame_index, 0), len(self.frames) - 1))

    def handle_event(self, event) -> bool:
        if event.type == pygame.QUIT:
            return False
        if event.type != pygame.KEYDOWN:
            return True
        k = event.key
        if k == pygame.K_ESCAPE:
            return False
        if k == pygame.K_SPACE:
            self.paused = not self.paused
        elif k == pygame.K_RIGHT:
            self.seek(self.index + self.fps)
        elif k == pygame.K_LEFT:
            self.seek(self.index - self.fps)
        elif k == pygame.K_HOME:
            self.seek(0)
        elif k in (pygame.K_PERIOD, pygame.K_COMMA):
            self.paused = True
            self.seek(self.index + (1 if k == pygame.K_PERIOD else -1))
        elif k in (pygame.K_EQUALS, pygame.K_PLUS, pygame.K_KP_PLUS):
            self.speed = min(self.speed * 2, 8.0)
        elif k in (pygame.K_MINUS, pygame.K_KP_MINUS):
            self.speed = max(self.speed / 2, 0.125)
        elif k == pygame.K_F1:
            self.show_hud = not self.show_hud
        elif k == pygame.K_m:
            self.show_minimap = not self.show_minimap
        elif k == pygame.K_F12:
            self.screenshot_dir.mkdir(parents=True, exist_ok=True)
            self.draw()
            pygame.image.save(self.screen, str(self.screenshot_dir / f"replay-{self.index:05d}.png"))
        return True

    def tick(self, dt_s: float) -> bool:
        for event in pygame.event.get():
            if not self.handle_event(event):
                return False
        if not self.paused:
            self.seek(self.position + dt_s * self.fps * self.speed)
            if self.index == len(self.frames) - 1:
                self.paused = True  # hold the last frame
        self.draw()
        if pygame.display.get_init() and pygame.display.get_surface() is self.screen:
            pygame.display.flip()
        return True

    def draw(self) -> None:
        screen, i = self.screen, self.index
        screen.fill((0, 0, 0))
        rgb = self.rgb(i)
        surf = pygame.surfarray.make_surface(np.ascontiguousarray(rgb.transpose(1, 0, 2)))
        sw, sh = screen.get_size()
        scale = min(sw / rgb.shape[1], sh / rgb.shape[0])
        size = (max(1, int(rgb.shape[1] * scale)), max(1, int(rgb.shape[0] * scale)))
        screen.blit(pygame.transform.scale(surf, size), ((sw - size[0]) // 2, (sh - size[1]) // 2))
        c2w = self.poses[i]
        self.hud.c2w = c2w
        self.hud.heading_deg = float(np.degrees(heading_rad(c2w, self.map_frame)))
        self.hud.fps = self.fps * (0.0 if self.paused else self.speed)
        state = "paused" if self.paused else f"{self.speed:g}x"
        self.hud.message = f"replay frame {i + 1}/{len(self.frames)}  {state}"
        if self.show_hud:
            draw_hud(screen, self.hud, self.font)
            draw_keys(screen, self.frames[i].keys, self.font)
        if self.show_minimap:
            side = max(96, min(sw, sh) // 3)
            draw_minimap(screen, minimap_image(None, None, self.poses[: i + 1, :3, 3], c2w, self.map_frame,
                                               size_px=side))

    def run(self) -> None:
        self.open()
        clock = pygame.time.Clock()
        last = time.monotonic()
        while True:
            clock.tick(60)
            now = time.monotonic()
            if not self.tick(now - last):
                break
            last = now
