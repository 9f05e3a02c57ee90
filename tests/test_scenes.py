"""Procedural scenes and textures: determinism, exact depth, textured surfaces, demo loops, fast vs reference."""

from __future__ import annotations

import functools
import math
import pickle
import time

import numpy as np
import pytest

from spatia.world.camera import Intrinsics, look_at, rotation_angle_deg, validate_trajectory
from spatia.world.errors import InvalidInputError
from spatia.world.scenes import EYE_HEIGHT_M, SCENE_NAMES, SKY_RADIUS_M, make_scene, scene_items
from spatia.world.textures import (
    TEXTURE_FAMILIES,
    TextureAtlas,
    TextureSpec,
    _reference_sample,
    fbm,
    value_noise,
)

SMALL = Intrinsics.from_fov(70.0, 96, 72)


@functools.cache
def scene(name: str, seed: int = 0):
    return make_scene(name, seed)


def _object_index(s, name: str) -> int:
    return next(i for i, o in enumerate(s.objects) if o.name == name)


# --- construction -----------------------------------------------------------------------------------------------


def test_unknown_scene_lists_known_names():
    with pytest.raises(InvalidInputError, match=r"room.*house.*courtyard"):
        make_scene("castle")
    with pytest.raises(InvalidInputError, match="seed"):
        make_scene("room", -1)
    assert SCENE_NAMES == ("room", "house", "courtyard")


def test_scene_items_are_distinct_and_cover_the_families():
    items = scene_items(24)
    assert len(set(items)) == 24 and {n for n, _ in items} == set(SCENE_NAMES)
    assert items[:4] == [("room", 0), ("house", 0), ("courtyard", 0), ("room", 1)]
    with pytest.raises(InvalidInputError):
        scene_items(0)


@pytest.mark.parametrize("name", SCENE_NAMES)
def test_same_seed_same_scene_other_seed_differs(name):
    a, b = scene(name, 0), make_scene(name, 0)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    assert [o.name for o in a.objects] == [o.name for o in b.objects]
    pose = a.demo_path(5)[2]
    rgb_a, depth_a = a.render(SMALL, pose)
    rgb_b, depth_b = b.render(SMALL, pose)
    np.testing.assert_array_equal(rgb_a, rgb_b)
    np.testing.assert_array_equal(depth_a, depth_b)
    c = scene(name, 1)
    assert c.vertices.shape != a.vertices.shape or not np.array_equal(c.vertices, a.vertices)
    assert (a.name, a.seed, c.seed) == (name, 0, 1)


@pytest.mark.parametrize("name", SCENE_NAMES)
def test_start_pose_is_level_at_eye_height_inside_bounds(name):
    s = scene(name)
    T = s.start_pose()
    np.testing.assert_allclose(T[:3, :3], np.eye(3))  # camera axes = world axes: y down, looking along +z
    assert T[1, 3] == pytest.approx(-EYE_HEIGHT_M)
    lo, hi = s.bounds
    assert np.all(lo < hi) and np.all(lo <= T[:3, 3]) and np.all(T[:3, 3] <= hi)


# --- depth ------------------------------------------------------------------------------------------------------


def test_depth_matches_manual_ray_plane_intersection():
    """Pixels that hit the back wall's inner face: z-depth = (z_wall - o_z) / d_z with d = R (x, y, 1)."""
    s = scene("room", 0)
    wall = s.objects[_object_index(s, "wall_back")]
    z_wall = wall.lower_m[2]  # the inner face (the room is on the low-z side)
    start = s.start_pose()
    eye = start[:3, 3] + np.array([0.4, 0.1, 0.3])
    T = look_at(eye, eye + np.array([0.25, -0.15, 1.0]))  # a turned, tilted camera
    K = Intrinsics.from_fov(80.0, 160, 120)
    hits = s.cast(K, T)
    on_wall = hits.object_id == _object_index(s, "wall_back")
    assert on_wall.sum() > 1000
    v, u = np.nonzero(on_wall)
    d_cam = np.stack([(u + 0.5 - K.cx) / K.fx, (v + 0.5 - K.cy) / K.fy, np.ones(len(u))], axis=1)
    d_world = d_cam @ T[:3, :3].T
    expected = (z_wall - eye[2]) / d_world[:, 2]
    np.testing.assert_allclose(hits.depth_m[on_wall], expected, rtol=2e-5)
    # the floor (plane y = 0) the same way
    on_floor = hits.object_id == _object_index(s, "floor")
    v, u = np.nonzero(on_floor)
    d_world = np.stack([(u + 0.5 - K.cx) / K.fx, (v + 0.5 - K.cy) / K.fy, np.ones(len(u))], axis=1) @ T[:3, :3].T
    assert on_floor.sum() > 100
    np.testing.assert_allclose(hits.depth_m[on_floor], (0.0 - eye[1]) / d_world[:, 1], rtol=2e-5)


@pytest.mark.parametrize("name", ["room", "house"])
def test_indoor_views_have_no_misses(name):
    s = scene(name)
    for T in s.demo_path(7):
        _, depth = s.render(SMALL, T)
        assert (depth > 0).all()
        assert depth.max() < np.linalg.norm(s.bounds[1] - s.bounds[0])


def test_courtyard_sky_is_far_not_missing():
    s = scene("courtyard")
    T = s.start_pose()
    up = look_at(T[:3, 3], T[:3, 3] + np.array([0.0, -1.0, 1.0]))  # 45 degrees up: lots of sky
    _, depth = s.render(SMALL, up)
    assert (depth > 0).all()
    assert depth.max() > 0.5 * SKY_RADIUS_M


# --- colour -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "surface"), [("room", "wall_back"), ("room", "floor"), ("courtyard", "paving")])
def test_surfaces_are_textured_not_flat(name, surface):
    s = scene(name)
    K = Intrinsics.from_fov(70.0, 160, 120)
    T = s.start_pose()
    rgb, _ = s.render(K, T)
    hits = s.cast(K, T)
    mask = hits.object_id == _object_index(s, surface)
    assert mask.sum() > 500
    luminance = rgb[mask].astype(np.float64) @ [0.299, 0.587, 0.114]
    assert luminance.std() > 4.0  # one flat face with one Lambert factor: any spread comes from the texture
    assert 20 < luminance.mean() < 240


def test_colour_is_view_independent():
    """The same surface point seen from two cameras gets (nearly) the same colour."""
    s = scene("room")
    K = Intrinsics.from_fov(60.0, 120, 90)
    T0 = s.start_pose()
    T1 = T0.copy()
    T1[:3, 3] += [0.3, 0.0, 0.2]  # a small step: similar distance, so the same mip level
    rgb0, depth0 = s.render(K, T0)
    rgb1, depth1 = s.render(K, T1)
    from spatia.world.geometry import depth_to_world_points, project_points

    pts, idx = depth_to_world_points(depth0, K, T0)
    uv, z = project_points(pts, K, T1)
    px = np.floor(uv).astype(int)
    inside = (px[:, 0] >= 0) & (px[:, 0] < K.width) & (px[:, 1] >= 0) & (px[:, 1] < K.height)
    px, z, idx = px[inside], z[inside], idx[inside]
    visible = np.abs(depth1[px[:, 1], px[:, 0]] - z) < 0.01  # not occluded in view 1
    a = rgb0.reshape(-1, 3)[idx[visible]].astype(int)
    b = rgb1[px[visible, 1], px[visible, 0]].astype(int)
    assert visible.sum() > 2000
    assert np.median(np.abs(a - b)) <= 6  # nearest-pixel reprojection blurs texture edges, not colours


@pytest.mark.parametrize("name", SCENE_NAMES)
def test_fast_render_matches_numpy_reference(name):
    s = scene(name, 2)
    for T in s.demo_path(4)[:3]:
        rgb, depth = s.render(SMALL, T)
        rgb_ref, depth_ref = s.render_reference(SMALL, T)
        np.testing.assert_array_equal(depth, depth_ref)
        diff = np.abs(rgb.astype(int) - rgb_ref.astype(int))
        assert diff.max() <= 2 and (diff > 1).mean() < 1e-3  # float32 vs float64 rounding only


def test_render_640x480_sanity(capsys):
    s = scene("room")
    K = Intrinsics.from_fov(70.0, 640, 480)
    s.render(K, s.start_pose())  # compile + ray cache
    t0 = time.perf_counter()
    rgb, depth = s.render(K, s.start_pose())
    elapsed_ms = 1000 * (time.perf_counter() - t0)
    assert rgb.shape == (480, 640, 3) and rgb.dtype == np.uint8
    assert depth.shape == (480, 640) and depth.dtype == np.float32
    with capsys.disabled():
        print(f"\nroom 640x480 render: {elapsed_ms:.0f} ms (shared CPU, informational)")


def test_pickle_round_trip_renders_the_same():
    s = scene("house")
    clone = pickle.loads(pickle.dumps(s))
    T = s.start_pose()
    np.testing.assert_array_equal(clone.render(SMALL, T)[0], s.render(SMALL, T)[0])


# --- demo path --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCENE_NAMES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_demo_path_is_a_closed_free_loop(name, seed):
    s = scene(name, seed)
    poses = s.demo_path(48)
    assert poses.shape == (48, 4, 4)
    validate_trajectory(poses)  # every pose rigid
    np.testing.assert_allclose(poses[0], s.start_pose(), atol=1e-12)
    np.testing.assert_allclose(poses[-1], s.start_pose(), atol=1e-12)
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert steps.sum() >= 1.5
    assert max(rotation_angle_deg(poses[0], T) for T in poses) >= 90.0
    np.testing.assert_allclose(poses[:, 1, 3], -EYE_HEIGHT_M)  # walks at eye height
    np.testing.assert_allclose(poses[:, :3, 1], np.tile([0.0, 1.0, 0.0], (48, 1)), atol=1e-12)  # level
    # free space: every frame and every point between frames keeps clear of furniture and walls
    xz = poses[:, [0, 2], 3]
    dense = np.concatenate([a + (b - a) * np.linspace(0, 1, 20)[:, None] for a, b in zip(xz[:-1], xz[1:])])
    assert s.clearance_m(dense).min() >= 0.3
    assert np.all(np.abs(steps) < 1.0)  # no jumps through walls between frames


def test_demo_path_argument_checks():
    with pytest.raises(InvalidInputError):
        scene("room").demo_path(1)
    two = scene("room").demo_path(2)
    np.testing.assert_allclose(two[0], two[1])


def test_clearance_is_zero_inside_furniture_and_walls():
    s = scene("room")
    table = s.objects[_object_index(s, "table_top")]
    centre = [(table.lower_m[0] + table.upper_m[0]) / 2, (table.lower_m[2] + table.upper_m[2]) / 2]
    assert s.clearance_m(np.array([centre]))[0] == 0.0
    assert s.clearance_m(np.array([[-0.1, 1.0]]))[0] == 0.0  # inside the left wall
    assert s.clearance_m(s.loop_xz[:1])[0] > 0.3


# --- textures ---------------------------------------------------------------------------------------------------


def test_texture_atlas_matches_reference():
    specs = [TextureSpec("wood", 1.0), TextureSpec("brick", 0.8), TextureSpec("tiles", 1.2)]
    atlas = TextureAtlas([spec.make(i, size_px=32) for i, spec in enumerate(specs)], [s.period_m for s in specs])
    rng = np.random.default_rng(0)
    n = 300
    tid = rng.integers(0, 3, n)
    uv = rng.uniform(-7.0, 7.0, (n, 2))
    footprint = rng.uniform(0.0, 0.3, n)  # spans all mip levels of a 32-texel tile
    fast = atlas.sample(tid, uv, footprint)
    ref = np.stack([_reference_sample(atlas, tid[i], uv[i, 0], uv[i, 1], footprint[i]) for i in range(n)])
    np.testing.assert_allclose(fast, ref, atol=1e-4)
    assert len(set(atlas.choose_level(tid, footprint).tolist())) >= 4


def test_mip_levels_are_box_filtered():
    tex = TextureSpec("brick", 1.0).make(0, size_px=16)
    atlas = TextureAtlas([tex], [1.0])
    lvl1 = atlas.level_image(0, 1)
    np.testing.assert_allclose(lvl1[2, 3], tex[4:6, 6:8].reshape(-1, 3).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(atlas.level_image(0, atlas.num_levels - 1)[0, 0], tex.reshape(-1, 3).mean(0), rtol=1e-5)


@pytest.mark.parametrize("family", sorted(TEXTURE_FAMILIES))
def test_textures_are_seeded_varied_and_in_range(family):
    spec = TextureSpec(family, 1.0)
    a, b, c = spec.make(1, size_px=64), spec.make(1, size_px=64), spec.make(2, size_px=64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (64, 64, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert a.std() > 0.02


def test_noise_tiles_without_a_seam():
    rng = np.random.default_rng(5)
    for img in (value_noise(64, (4, 6), rng), fbm(64, (3, 3), rng, octaves=4)):
        inner = np.abs(np.diff(img, axis=1)).mean()
        seam = np.abs(img[:, 0] - img[:, -1]).mean()
        assert seam < 3 * inner
        assert np.abs(img[0] - img[-1]).mean() < 3 * np.abs(np.diff(img, axis=0)).mean()


def test_bad_texture_specs():
    with pytest.raises(InvalidInputError, match="unknown texture family"):
        TextureSpec("marble", 1.0).make(0)
    with pytest.raises(InvalidInputError, match="period"):
        TextureSpec("wood", 0.0).make(0)
    assert math.isfinite(TextureSpec("wood", 1.0).period_m)
