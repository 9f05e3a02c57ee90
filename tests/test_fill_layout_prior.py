"""The layout prior contract (issue 10, photo worlds): the photo estimator's layout is recorded by the world at
creation, persisted, handed to the fill through the ClipRequest, and the layout fill starts from it; closing
walls stand beyond what was observed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spatia.model.fill.geometry.layout import FLOOR, WALL, estimate_layout, view_bounds
from spatia.model.fill.geometry.photo import PhotoLayoutDepth
from spatia.model.geometric import GeometricGenerator
from spatia.world.camera import Intrinsics
from spatia.world.depth import LayoutPrior
from spatia.world.engine import Engine
from spatia.world.errors import InvalidInputError
from spatia.world.scenes import make_scene
from spatia.world.state import World


def _rot_y(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])


def test_layout_prior_round_trips_transforms_and_rejects_bad_input():
    up = np.array([0.0, -1.0, 0.0])  # camera frame: y down
    prior = LayoutPrior("photo_layout", up, np.array([1.0, 0.0, 0.0]),
                        (("floor", -up, 1.6), ("wall", np.array([0.0, 0.0, 1.0]), 4.0)), 0.9)
    again = LayoutPrior.from_doc(prior.to_doc())
    np.testing.assert_allclose(again.up, prior.up)
    assert [p[0] for p in again.planes] == ["floor", "wall"] and again.planes[1][2] == 4.0
    # a camera 2 m along world x, turned 90 deg: the wall 4 m ahead of it is the plane x = 6
    c2w = np.eye(4)
    c2w[:3, :3] = _rot_y(90.0)
    c2w[:3, 3] = [2.0, 0.0, 0.0]
    moved = prior.transformed(c2w)
    kind, n, o = moved.planes[1]
    np.testing.assert_allclose(n, [1.0, 0.0, 0.0], atol=1e-12)
    assert abs(o - 6.0) < 1e-9
    np.testing.assert_allclose(moved.transformed(np.linalg.inv(c2w)).planes[1][1], prior.planes[1][1], atol=1e-12)
    with pytest.raises(InvalidInputError, match="unit"):
        LayoutPrior("x", np.array([0.0, 2.0, 0.0]), np.array([1.0, 0.0, 0.0]), (), 1.0)
    with pytest.raises(InvalidInputError, match="horizontal"):
        LayoutPrior("x", up, np.array([0.0, 1.0, 0.0]), (), 1.0)
    with pytest.raises(InvalidInputError, match="kind"):
        LayoutPrior("x", up, np.array([1.0, 0.0, 0.0]), (("door", up, 1.0),), 1.0)
    with pytest.raises(InvalidInputError, match="malformed"):
        LayoutPrior.from_doc({"source": "x"})


def test_photo_world_records_the_prior_and_the_clip_request_carries_it(tmp_path):
    scene = make_scene("room", 0)
    K = Intrinsics.from_fov(75.0, 320, 180)
    pitch = math.radians(15.0)
    c2w = scene.start_pose()
    c2w[:3, :3] = c2w[:3, :3] @ np.array([[1, 0, 0], [0, math.cos(pitch), math.sin(pitch)],
                                           [0, -math.sin(pitch), math.cos(pitch)]])
    rgb, _ = scene.render(K, c2w)
    world = World.from_image(rgb, depth_estimator=PhotoLayoutDepth())
    prior = world.layout_prior
    assert prior is not None and prior.source == "photo_layout"
    # the world frame is the photo's camera: up is the camera's -y pitched by 15 deg (y down, z forward)
    want_up = np.array([0.0, -math.cos(pitch), -math.sin(pitch)])
    assert math.degrees(math.acos(min(1.0, float(prior.up @ want_up)))) < 2.0
    assert any(k == "floor" for k, _, _ in prior.planes)
    # persisted with the world, and handed to the generator with every clip
    world.save(tmp_path / "w.spatia")
    loaded = World.load(tmp_path / "w.spatia")
    np.testing.assert_allclose(loaded.layout_prior.up, prior.up)
    from spatia.world.worldlog import WorldLog  # the server's incremental save keeps it too

    wlog = WorldLog(tmp_path / "log")
    wlog.write(wlog.prepare_save(world))
    logged, _ = WorldLog.load(tmp_path / "log")
    assert logged.info.layout_prior == world.info.layout_prior
    generator = GeometricGenerator()
    request = Engine(loaded, generator).build_request(np.stack([loaded.origin_c2w] * 2), "", 0)
    assert isinstance(request.layout_prior, LayoutPrior)
    # ... and the layout fill fits its layout in the prior's frame (up and Manhattan axis are the prior's)
    layout = generator._fill_entry(request).state().layout
    np.testing.assert_allclose(layout.axes[0], loaded.layout_prior.up, atol=1e-9)
    np.testing.assert_allclose(abs(layout.axes[1] @ loaded.layout_prior.axis_a), 1.0, atol=1e-9)
    # a world with real depth records none
    depth_world = World.from_scene("room", 0, 64, 36)
    assert depth_world.layout_prior is None
    assert Engine(depth_world, GeometricGenerator()).build_request(np.stack([depth_world.origin_c2w]), "", 0).layout_prior is None


def _room_points(rng: np.random.Generator, R: np.ndarray) -> np.ndarray:
    """A 6 x 3 x 8 m room (up = +y, floor y = 0) seen from (3, 1.6, 1): floor, the far wall z = 8, the right wall
    x = 6 and a bookshelf front at x = 4.5 (z 3-4); the left wall x = 0 is not seen but the floor reaches it."""
    n = 5000
    floor = np.c_[rng.uniform(0, 6, n), np.zeros(n), rng.uniform(2, 8, n)]
    far = np.c_[rng.uniform(0, 6, n), rng.uniform(0, 3, n), np.full(n, 8.0)]
    right = np.c_[np.full(n, 6.0), rng.uniform(0, 3, n), rng.uniform(4, 8, n)]
    shelf = np.c_[np.full(n // 2, 4.5), rng.uniform(0, 2, n // 2), rng.uniform(3, 4, n // 2)]
    return np.concatenate([floor, far, right, shelf]) @ R.T


def test_layout_from_a_prior_takes_its_frame_and_the_farthest_wall_per_direction():
    rng = np.random.default_rng(0)
    R = _rot_y(25.0)  # room axes not aligned with the world's
    pts = _room_points(rng, R)
    observer = R @ np.array([3.0, 1.6, 1.0])
    up = R @ np.array([0.0, 1.0, 0.0])
    a = R @ np.array([1.0, 0.0, 0.0])
    # planes as a photo estimator states them: normals away from the observer, offsets from the origin
    def plane(kind, n_room, point_room):
        n = R @ np.asarray(n_room, float)
        return kind, n, float(n @ (R @ np.asarray(point_room, float)))
    prior = LayoutPrior("photo_layout", up, a, (
        plane("floor", [0, -1, 0], [0, 0, 0]),
        plane("wall", [1, 0, 0], [4.5, 0, 0]),  # the bookshelf front: furniture, nearer than the wall
        plane("wall", [1, 0, 0], [6.0, 0, 0]),
        plane("wall", [0, 0, 1], [0, 0, 8.0]),
    ), 0.9)
    layout = estimate_layout(pts, observer, up, R @ np.array([0.0, 0.0, 1.0]), prior=prior)
    np.testing.assert_allclose(layout.axes[0], up, atol=1e-9)
    np.testing.assert_allclose(np.abs(layout.axes[1] @ a), 1.0, atol=1e-9)
    assert layout.floor() is not None and layout.floor().kind == FLOOR and abs(layout.floor().offset_m) < 1e-9
    walls = sorted(round(abs(p.offset_m), 6) for p in layout.planes if p.kind == WALL)
    assert walls == [6.0, 8.0], walls  # the bookshelf front is not a wall of the room
    layout.indoor = True  # (the world says so when no sky is seen)
    view = view_bounds(layout, observer, observer[None])
    # the unseen left wall (x = 0) is closed beyond the observed floor, not 1 m from the camera (x = 2): a wall
    # in front of what the first view saw would be erased by the free-space rule and leave a hole
    left = [p for p in view.bounds if p.kind == WALL and p.axis == 1 and p.derived]
    assert len(left) == 1
    assert -0.15 < left[0].offset_m < 0.0, left[0].offset_m
