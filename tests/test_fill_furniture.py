"""Furniture is not a room's wall: rays through a doorway go on to the next room's wall, not to an endless plane
through the front of the sofa standing in that room (house, walking up to its first doorway: the doorway's edges
showed posts textured with the sofa)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from spatia.model.fill.geometry.layout import CEILING, FLOOR, WALL, Layout, Plane
from spatia.model.geometric import GeometricConfig, GeometricGenerator
from spatia.world.actions import ClipConfig
from spatia.world.engine import Engine, EngineConfig
from spatia.world.scenes import make_scene
from spatia.world.state import World

# the house the Gymnasium env's reset(seed=0) builds: a sofa in the room beyond the first doorway
HOUSE_SEED = 1826701614


def test_a_wall_seen_less_than_two_metres_up_is_furniture():
    up = np.eye(3)
    floor = Plane(0, 0.0, 1, 5000, FLOOR, plane_id=0)
    sofa = Plane(2, 6.0, -1, 800, WALL, top_m=0.85, plane_id=1)
    wall = Plane(2, 7.0, -1, 3000, WALL, top_m=2.4, plane_id=2)
    closing = Plane(2, 9.0, -1, 0, WALL, top_m=math.inf, plane_id=1, derived=True)
    layout = Layout(up, [floor, sofa, wall, Plane(0, 2.7, -1, 4000, CEILING, plane_id=3)], True)
    assert not layout.is_room_wall(sofa)
    assert layout.is_room_wall(wall) and layout.is_room_wall(closing)
    assert not layout.is_room_wall(floor)
    no_floor = Layout(up, [sofa, wall], True)
    assert no_floor.is_room_wall(sofa)  # nothing to measure its height from: every wall counts


def test_the_floors_unseen_cells_follow_the_same_room_wall_rule():
    """One furniture rule (``LayoutConfig.room_wall_min_top_m``): a wall cuts the floor into rooms (the appearance's
    unseen cells) exactly when ``Layout.is_room_wall`` says it is a room's wall. A 1.5 m high wall is furniture at
    the default 2 m and a room's wall once the layout's own threshold is lowered to 1 m."""
    from spatia.model.fill.geometry.layout import LayoutConfig
    from spatia.model.fill.texture.appearance import AppearanceConfig, _unseen_cells

    floor = Plane(0, 0.0, 1, 5000, FLOOR, plane_id=0)
    shelf = Plane(2, 3.0, -1, 800, WALL, top_m=1.5, span_m=(-1.0, 1.0), plane_id=1)
    uv = np.column_stack([np.linspace(-2.0, 2.0, 400), np.linspace(0.2, 2.8, 400)])  # samples before the shelf
    col = np.full((400, 3), 120.0)
    cut_at = {}
    for top_m in (2.0, 1.0):
        layout = Layout(np.eye(3), [floor, shelf], True, config=LayoutConfig(room_wall_min_top_m=top_m))
        cells = _unseen_cells(layout, floor, uv, col, AppearanceConfig())
        assert (cells is not None) == layout.is_room_wall(shelf)
        cut_at[top_m] = None if cells is None else cells.cuts_v.tolist()
    assert cut_at == {2.0: None, 1.0: [3.0]}


def _sofa_red(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r >= 45) & (r <= 140) & (g <= 45) & (b <= 70) & (r - g >= 30)


def test_the_doorways_edges_do_not_show_the_sofa_beyond():
    """Walking 1.2 m towards the doorway: the frame shows the sofa's dark red where the truth does, not in posts
    along the doorway's edges (measured at 160x90 over the last 12 frames: up to 384 such pixels without the rule)."""
    world = World.from_scene("house", HOUSE_SEED, 160, 90)
    scene = make_scene("house", HOUSE_SEED)
    start = scene.start_pose()
    poses = np.repeat(start[None], 25, axis=0)
    poses[:, :3, 3] += np.linspace(0.0, 1.2, 25)[:, None] * start[:3, 2]
    engine = Engine(world, GeometricGenerator(GeometricConfig(fill="layout", coarse_frames=0)),
                    EngineConfig(clip=ClipConfig(first_clip_frames=25, clip_frames=25, preceding_frames=1)))
    frames = list(engine.generate(poses[1:], seed=0))
    wrong = []
    for frame, pose in zip(frames[-12:], poses[-12:]):
        truth, _ = scene.render(world.intrinsics, pose)
        near_sofa = cv2.dilate(_sofa_red(truth).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # +-2 px
        wrong.append(int((_sofa_red(frame.rgb) & ~near_sofa).sum()))
    assert max(wrong) <= 10, wrong
