"""HUD text and the top-down minimap of the player (and of replay exports).

The minimap is drawn in numpy (``minimap_image``: testable, reusable by the video export) and blitted with
pygame. It shows the spatial memory from above: the points below the camera's head (ceilings would hide the
floor plan), coloured by their memory colour, north-up in the frame of the world's first camera (its right =
map right, its level forward = map up), centred on the camera, with the camera trail and a heading arrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spatia.world.errors import InvalidInputError


def read_ply_points(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[N, 3]`` float64 (world, metres) and colours ``[N, 3]`` uint8 from a binary little-endian PLY
    with scalar vertex properties (what ``ExportWorld(PLY)`` sends); colours are grey when absent."""
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply") or end < 0:
        raise InvalidInputError("not a PLY file (no 'ply' magic or end_header)")
    header = data[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise InvalidInputError("only binary_little_endian PLY is supported")
    types = {"char": "i1", "uchar": "u1", "int8": "i1", "uint8": "u1", "short": "<i2", "ushort": "<u2",
             "int16": "<i2", "uint16": "<u2", "int": "<i4", "uint": "<u4", "int32": "<i4", "uint32": "<u4",
             "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8"}
    n, props, in_vertex = 0, [], False
    for line in header:
        parts = line.split()
        if parts[:1] == ["element"]:
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                n = int(parts[2])
            elif n and not props:
                raise InvalidInputError("PLY: the vertex element must come first")
        elif parts[:1] == ["property"] and in_vertex:
            if parts[1] == "list" or parts[1] not in types:
                raise InvalidInputError(f"PLY: unsupported vertex property {line!r}")
            props.append((parts[2], types[parts[1]]))
    dtype = np.dtype(props)
    body = data[end + len(b"end_header\n"):]
    if len(body) < n * dtype.itemsize:
        raise InvalidInputError(f"PLY: {n} vertices need {n * dtype.itemsize} bytes, got {len(body)}")
    v = np.frombuffer(body, dtype=dtype, count=n)
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    if all(c in dtype.names for c in ("red", "green", "blue")):
        rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
    else:
        rgb = np.full((n, 3), 160, np.uint8)
    return xyz, rgb


@dataclass(frozen=True)
class MapFrame:
    """The minimap's axes, from the world's first camera ``origin_c2w`` [4, 4]: right, level forward, up (world)."""

    right: np.ndarray  # [3]
    forward: np.ndarray  # [3]
    up: np.ndarray  # [3], = -y of the first camera (docs/DESIGN.md)

    @classmethod
    def from_origin(cls, origin_c2w: np.ndarray) -> "MapFrame":
        up = -np.asarray(origin_c2w, dtype=np.float64)[:3, 1]
        up = up / np.linalg.norm(up)
        fwd = origin_c2w[:3, 2] - up * float(origin_c2w[:3, 2] @ up)
        fwd = fwd / np.linalg.norm(fwd)
        return cls(np.cross(fwd, up), fwd, up)  # right = forward x up (OpenCV: x = y x z with y = -up)

    def to_map(self, points: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """``[N, 3]`` world points -> ``[N, 3]`` (right m, forward m, up m) relative to ``centre``."""
        d = np.asarray(points, dtype=np.float64) - centre
        return np.stack([d @ self.right, d @ self.forward, d @ self.up], axis=1)


def heading_rad(c2w: np.ndarray, frame: MapFrame) -> float:
    """Heading of the camera on the map: 0 = map up (the first camera's forward), > 0 = turned right."""
    f = c2w[:3, 2]
    return math.atan2(float(f @ frame.right), float(f @ frame.forward))


def minimap_image(
    points: np.ndarray | None,  # [N, 3] world, metres (the memory)
    colors: np.ndarray | None,  # [N, 3] uint8
    trail: np.ndarray,  # [T, 3] camera centres, world, oldest first
    c2w: np.ndarray,  # [4, 4] the current camera
    frame: MapFrame,
    size_px: int = 160,
    metres_across: float = 16.0,
    head_clearance_m: float = 0.3,  # points higher than this above the camera are left out (ceilings)
) -> np.ndarray:
    """``[size, size, 3]`` uint8 top-down map centred on the camera; up = the first camera's forward."""
    img = np.full((size_px, size_px, 3), 24, np.uint8)
    px_per_m = size_px / metres_across
    centre = np.asarray(c2w, dtype=np.float64)[:3, 3]
    c = size_px / 2.0

    def to_px(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (c + m[:, 0] * px_per_m).astype(np.int64), (c - m[:, 1] * px_per_m).astype(np.int64)

    if points is not None and len(points):
        m = frame.to_map(points, centre)
        keep = m[:, 2] < head_clearance_m
        m, col = m[keep], colors[keep]
        order = np.argsort(m[:, 2], kind="stable")  # higher points drawn last: furniture over floor
        u, v = to_px(m[order])
        ok = (u >= 0) & (u < size_px) & (v >= 0) & (v < size_px)
        img[v[ok], u[ok]] = col[order][ok]
    if len(trail):
        u, v = to_px(frame.to_map(trail, centre))
        for i in range(len(u)):  # trail: yellow dots (the few hundred poses of a session)
            if 0 <= u[i] < size_px and 0 <= v[i] < size_px:
                img[max(v[i] - 1, 0):v[i] + 1, max(u[i] - 1, 0):u[i] + 1] = (255, 210, 0)
    h = heading_rad(c2w, frame)
    for s in np.linspace(0.0, 7.0, 15):  # heading arrow from the centre, red
        x, y = int(round(c + s * math.sin(h))), int(round(c - s * math.cos(h)))
        if 0 <= x < size_px and 0 <= y < size_px:
            img[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = (255, 40, 40)
    img[int(c) - 2:int(c) + 2, int(c) - 2:int(c) + 2] = (255, 255, 255)
    return img


@dataclass
class HudState:
    """What the HUD shows; the player fills it every frame."""

    fps: float = 0.0  # displayed frames per second
    latency_ms: float | None = None  # action sent -> first frame that applied it
    world_id: str = ""
    c2w: np.ndarray = field(default_factory=lambda: np.eye(4))
    heading_deg: float = 0.0
    memory_points: int = 0
    recording: bool = False
    stale: bool = False
    prompt: str = ""
    message: str = ""  # transient note ("screenshot saved ...")
    keys_held: tuple[str, ...] = ()
    collided: bool = False  # the frame shown: its move was stopped by a surface (Frame.collided)

    def lines(self) -> list[str]:
        p = self.c2w[:3, 3]
        lat = "-" if self.latency_ms is None else f"{self.latency_ms:.0f} ms"
        out = [
            f"world {self.world_id}",
            f"{self.fps:4.1f} fps   latency {lat}",
            f"pos {p[0]:+.2f} {p[1]:+.2f} {p[2]:+.2f} m   heading {self.heading_deg:+.0f} deg"
            + ("   BLOCKED" if self.collided else ""),
            f"memory {self.memory_points:,} pts   {'REC' if self.recording else 'not recording'}",
        ]
        if self.prompt:
            out.append(f"prompt: {self.prompt[:60]}")
        if self.message:
            out.append(self.message)
        return out


def draw_hud(surface, state: HudState, font) -> None:
    """Text lines on a translucent panel, top-left; a STALE marker top-right when frames stopped arriving."""
    import pygame

    lines = state.lines()
    rendered = [font.render(t, True, (255, 255, 255)) for t in lines]
    w = max(r.get_width() for r in rendered) + 12
    h = sum(r.get_height() for r in rendered) + 10
    panel = pygame.Surface((w, h), pygame.SRCALPHA)
    panel.fill((0, 0, 0, 150))
    surface.blit(panel, (6, 6))
    y = 11
    for r in rendered:
        surface.blit(r, (12, y))
        y += r.get_height()
    if state.recording:
        pygame.draw.circle(surface, (230, 30, 30), (w + 18, 16), 6)


def draw_stale(surface, font) -> None:
    import pygame

    label = font.render("STALE", True, (255, 255, 255))
    x = surface.get_width() - label.get_width() - 14
    pygame.draw.rect(surface, (200, 40, 40), (x - 6, 6, label.get_width() + 12, label.get_height() + 6))
    surface.blit(label, (x, 9))


def draw_minimap(surface, image: np.ndarray) -> None:
    """Blit a ``minimap_image`` bottom-right with a border."""
    import pygame

    surf = pygame.surfarray.make_surface(np.ascontiguousarray(image.transpose(1, 0, 2)))
    x = surface.get_width() - image.shape[1] - 8
    y = surface.get_height() - image.shape[0] - 8
    pygame.draw.rect(surface, (255, 255, 255), (x - 2, y - 2, image.shape[1] + 4, image.shape[0] + 4), 1)
    surface.blit(surf, (x, y))


def draw_prompt_line(surface, text: str, font) -> None:
    import pygame

    label = font.render(f"prompt> {text}_", True, (255, 255, 255))
    y = surface.get_height() - label.get_height() - 12
    pygame.draw.rect(surface, (0, 0, 0), (6, y - 4, surface.get_width() - 12, label.get_height() + 8))
    surface.blit(label, (12, y))


def draw_keys(surface, keys: tuple[str, ...], font) -> None:
    """The keys held, bottom-left (replay export overlay)."""
    import pygame

    text = " ".join(k.upper() for k in keys) or "-"
    label = font.render(f"keys: {text}", True, (255, 255, 255))
    y = surface.get_height() - label.get_height() - 8
    panel = pygame.Surface((label.get_width() + 10, label.get_height() + 4), pygame.SRCALPHA)
    panel.fill((0, 0, 0, 150))
    surface.blit(panel, (6, y - 2))
    surface.blit(label, (11, y))
