"""``model.fill.image.see_through``: the compiled test against its plain twin, and what it marks and leaves."""

from __future__ import annotations

import numpy as np
import pytest

from spatia.model.fill.image.see_through import reference_see_through_pixels, see_through_pixels
from spatia.world.camera import Intrinsics
from spatia.world.geometry import pixel_rays


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_matches_the_reference_on_random_renders(seed):
    rng = np.random.default_rng(seed)
    h, w = 40, 56
    depth = rng.uniform(1.0, 3.0, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.3] = rng.uniform(4.0, 9.0)  # a farther surface in some pixels
    valid = rng.random((h, w)) < 0.85
    depth[~valid] = 0.0
    for radius in (1, 3, 6):
        np.testing.assert_array_equal(see_through_pixels(depth, valid, radius),
                                      reference_see_through_pixels(depth, valid, radius))


def test_compiled_matches_the_reference_at_long_radii_odd_shapes_and_bad_depths():
    """The compiled pass takes its minima over blocks of ``radius`` rows along each line direction: radii longer
    than the image, one-pixel images and NaN depths of rendered pixels give the reference's marks too."""
    rng = np.random.default_rng(7)
    for h, w, radius in ((23, 31, 13), (9, 40, 25), (1, 12, 3), (17, 1, 4), (30, 30, 29)):
        depth = rng.uniform(1.0, 3.0, (h, w)).astype(np.float32)
        depth[rng.random((h, w)) < 0.4] = 8.0
        valid = rng.random((h, w)) < 0.8
        depth[valid & (rng.random((h, w)) < 0.05)] = np.nan
        np.testing.assert_array_equal(see_through_pixels(depth, valid, radius),
                                      reference_see_through_pixels(depth, valid, radius), err_msg=f"{h}x{w} r{radius}")


def test_compiled_matches_the_reference_with_infinite_depths_and_a_whole_relative_gap():
    """rel 1 makes an infinite depth's limit NaN (inf x 0): the reference's ``min`` keeps it, no depth is below it."""
    rng = np.random.default_rng(3)
    for _ in range(6):
        depth = rng.uniform(1.0, 3.0, (12, 15)).astype(np.float32)
        depth[rng.random(depth.shape) < 0.2] = np.inf
        depth[rng.random(depth.shape) < 0.05] = np.nan
        valid = rng.random(depth.shape) < 0.85
        for rel in (0.05, 1.0):
            np.testing.assert_array_equal(see_through_pixels(depth, valid, 3, rel=rel),
                                          reference_see_through_pixels(depth, valid, 3, rel=rel))


def test_nearer_pixels_one_float32_either_side_of_the_limit():
    """The compiled pass compares float32 depths with each limit rounded up to a float32 (exact: no float32 lies
    between a limit and its round-up); neighbours at the float32s just below, at and just above each float64 limit
    (positive, tiny and negative limits) are marked as the reference marks them."""
    rng = np.random.default_rng(11)
    for rel, gap in ((0.05, 0.05), (0.0, 0.0), (0.3, 0.07), (0.05, 2.0)):
        depth = rng.choice(np.array([0.05, 0.0500001, 1.0, 1.3, 2.7, 3.1, 1e-30], np.float32), (15, 17))
        lim = np.minimum(depth.astype(np.float64) * (1.0 - rel), depth.astype(np.float64) - gap)
        near = lim.astype(np.float32)  # the nearest float32 to each limit, then one step either way
        step = rng.integers(-1, 2, depth.shape)
        near = np.where(step < 0, np.nextafter(near, np.float32(-np.inf)),
                        np.where(step > 0, np.nextafter(near, np.float32(np.inf)), near))
        # every other pixel of a checkerboard: the far ones see their neighbours at the limits of other far ones
        cells = (np.add.outer(np.arange(15), np.arange(17)) % 2).astype(bool)
        mixed = np.where(cells, np.roll(near, 1, axis=1), depth).astype(np.float32)
        valid = rng.random(depth.shape) < 0.95
        for radius in (1, 2):
            np.testing.assert_array_equal(see_through_pixels(mixed, valid, radius, rel=rel, min_gap_m=gap),
                                          reference_see_through_pixels(mixed, valid, radius, rel=rel,
                                                                       min_gap_m=gap), err_msg=f"{rel} {gap}")


def test_gaps_in_a_near_surface_are_marked_a_plane_and_a_corner_are_not():
    """At 320x240 with the default radius (2 % of the width: 6 px)."""
    K = Intrinsics.from_fov(75.0, 320, 240)
    rays = pixel_rays(K)
    valid = np.ones((K.height, K.width), bool)
    # a wall turned 50 deg to the camera: depth varies along each row, no pixel has nearer ones on both sides
    n = np.array([np.sin(np.radians(50)), 0.0, -np.cos(np.radians(50))])
    wall = (np.float32(-3.0) / (rays @ n)).astype(np.float32)
    assert not see_through_pixels(wall, valid, 6).any()
    # a room's inside corner 3 m ahead, seen square on: two walls meeting at 90 deg
    x = rays[..., 0]
    corner = np.where(x < 0, 3.0 / (1.0 - x), 3.0 / (1.0 + x)).astype(np.float32)
    assert not see_through_pixels(corner, valid, 6).any()
    # a column 1 m away in front of the wall, its points 5 px apart with 3 px splats: the wall shows in between
    near = wall.copy()
    grid = np.zeros(wall.shape, bool)
    for y in range(100, 160, 5):
        for x0 in range(140, 180, 5):
            grid[y:y + 3, x0:x0 + 3] = True
    near[grid] = 1.0
    marked = see_through_pixels(near, valid, 6)
    column, interior = np.zeros(wall.shape, bool), np.zeros(wall.shape, bool)
    column[100:158, 140:178] = True
    interior[103:155, 143:175] = True  # the notches between the outermost splats stay: the silhouette's
    assert marked[interior & ~grid].all()  # every gap inside the column
    assert not marked[grid].any() and not marked[~column].any()  # the column itself and the wall around it


def test_back_at_the_first_camera_the_frame_is_the_first_image():
    """At an observed view's pose the memory is sampled as that view saw it, so its gaps are real (the first view's
    own, between a chair's legs) and the see-through pass is skipped: a loop back to the first camera ends on the
    first image exactly (the demo's closed loop was 45.9 dB with the pass everywhere)."""
    from spatia.model.geometric import GeometricConfig, GeometricGenerator
    from spatia.world.actions import ClipConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.scenes import make_scene
    from spatia.world.state import World

    world = World.from_scene("room", 0, 320, 180)
    path = make_scene("room", 0).demo_path(9)
    poses = np.concatenate([path[1:5], path[:1]])  # a few steps away and back
    engine = Engine(world, GeometricGenerator(GeometricConfig(fill="layout", coarse_frames=0)),
                    EngineConfig(clip=ClipConfig(first_clip_frames=6, clip_frames=6, preceding_frames=1)))
    frames = list(engine.generate(poses, seed=0))
    truth, _ = make_scene("room", 0).render(world.intrinsics, path[0])
    np.testing.assert_array_equal(frames[-1].rgb, truth)
