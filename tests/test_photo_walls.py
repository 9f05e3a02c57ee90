"""Photo layout walls (issue 10 section 5): the walls the photo estimator hands to the layout fill.

The layout fill of a photo world takes, per wall direction, the farthest wall of the photo's prior and closes the
other directions by rule, so a wall missing from the prior, or a spurious far one, moves every frame that turns
that way (docs/RESULTS.md, photo2). Procedural renders give the truth; intrinsics are handed in so that the
walls' offsets are not scaled by a focal estimate.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from spatia.model.fill.geometry.layout import WALL, LayoutConfig, estimate_layout as fit_layout
from spatia.model.fill.geometry.photo import estimate_layout, layout_prior
from spatia.world.camera import Intrinsics
from spatia.world.depth import LayoutPrior
from spatia.world.errors import InvalidInputError
from spatia.world.scenes import make_scene

K = Intrinsics.from_fov(75.0, 320, 180)


def _pitched(c2w: np.ndarray, pitch_down_deg: float) -> np.ndarray:
    p = math.radians(pitch_down_deg)
    T = c2w.copy()
    T[:3, :3] = c2w[:3, :3] @ np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    return T


@functools.lru_cache(maxsize=None)
def _photo(name: str):
    """(scene, rgb, layout) of the scene's first pose pitched 15 deg down (the novel-view photo mode's photo)."""
    scene = make_scene(name, 0)
    rgb, _ = scene.render(K, _pitched(scene.start_pose(), 15.0))
    rgb.flags.writeable = False
    return scene, rgb, estimate_layout(rgb, K)


def _walls(layout, normal_cam: np.ndarray) -> list[float]:
    """Offsets (m) of the walls whose camera-frame normal is within 10 deg of ``normal_cam``."""
    return [p.offset_m for p in layout.planes
            if p.kind == "wall" and float(p.normal_cam @ normal_cam) > math.cos(math.radians(10.0))]


def test_side_walls_are_found_on_both_sides():
    # the house's first room, seen from its middle: side walls 2.4 m left and right (x = 0 and the inner wall
    # x = Wr, the camera at Wr / 2). Before: only +x walls were ever tried, and the side walls' few receding
    # contact columns were sliced into fronto-parallel walls 2.8 and 3.2 m ahead
    scene, _, layout = _photo("house")
    half_room_m = (scene.bounds[1][0] - 0.2) / 4.0  # bounds span the outer walls' 0.2 m thickness
    right, left = _walls(layout, np.array([1.0, 0.0, 0.0])), _walls(layout, np.array([-1.0, 0.0, 0.0]))
    assert right and left, f"walls: right {right}, left {left}"
    for side in (right, left):
        assert abs(max(side) / half_room_m - 1.0) < 0.12, f"side wall at {max(side):.2f} m, truth {half_room_m:.2f}"


def test_no_wall_where_the_ground_meets_the_sky_and_facades_rise_out_of_the_photo():
    # courtyard: the paving's far edge and grass seen past a building's corner made walls 19 and 36 m ahead; the
    # fill took the farthest as the square's far side. The back facade stands D - 1.5 m ahead (the loop starts
    # 1.5 m into the square); it rises out of the photo's top, so its height is open
    scene, _, layout = _photo("courtyard")
    back_m = (scene.bounds[1][2] - 8.0) - 1.5  # the paving reaches 8 m past the back facade
    ahead = [p for p in layout.planes if p.kind == "wall" and p.normal_cam[2] > 0.9]
    assert ahead, "no fronto-parallel wall"
    farthest = max(ahead, key=lambda p: p.offset_m)
    assert abs(farthest.offset_m / back_m - 1.0) < 0.1, f"farthest wall {farthest.offset_m:.1f} m, truth {back_m:.1f}"
    assert farthest.open_top
    prior = layout_prior(layout)
    index = next(i for i, p in enumerate(layout.planes) if p is farthest)
    assert len(prior.open_top) == len(prior.planes) and prior.open_top[index]


def test_open_top_walls_are_not_capped_by_the_layout_fill():
    # a wall whose photo shows no sky above it continues open_top_rise_m above its observed top; without the flag the
    # top is the highest point the photo saw (outdoors the fill shows sky above it)
    up = np.array([0.0, 1.0, 0.0])
    rng = np.random.default_rng(0)
    floor = np.column_stack([rng.uniform(-4, 4, 4000), np.full(4000, -1.6), rng.uniform(0.5, 8, 4000)])
    wall = np.column_stack([rng.uniform(-4, 4, 4000), rng.uniform(-1.6, 1.5, 4000), np.full(4000, 8.0)])
    pts = np.concatenate([floor, wall])
    planes = (("floor", -up, 1.6), ("wall", np.array([0.0, 0.0, 1.0]), 8.0))
    tops = {}
    for flags in ((), (False, True)):
        prior = LayoutPrior("photo_layout", up, np.array([1.0, 0.0, 0.0]), planes, 0.9, flags)
        lay = fit_layout(pts, np.zeros(3), up, np.array([0.0, 0.0, 1.0]), prior=prior)
        tops[flags] = [p.top_m for p in lay.planes if p.kind == WALL]
    assert len(tops[()]) == 1 and tops[()][0] == pytest.approx(1.5, abs=0.05)
    assert tops[(False, True)] == [pytest.approx(1.5 + LayoutConfig().open_top_rise_m, abs=0.05)]


def test_open_top_round_trips_and_is_checked():
    up = np.array([0.0, -1.0, 0.0])
    planes = (("floor", -up, 1.6), ("wall", np.array([0.0, 0.0, 1.0]), 4.0))
    prior = LayoutPrior("photo_layout", up, np.array([1.0, 0.0, 0.0]), planes, 0.9, (False, True))
    assert LayoutPrior.from_doc(prior.to_doc()).open_top == (False, True)
    c2w = np.eye(4)
    c2w[:3, 3] = [1.0, 2.0, 3.0]
    assert prior.transformed(c2w).open_top == (False, True)
    old = prior.to_doc()
    del old["open_top"]  # worlds saved before the flag existed
    assert LayoutPrior.from_doc(old).open_top == ()
    with pytest.raises(InvalidInputError, match="open_top"):
        LayoutPrior("photo_layout", up, np.array([1.0, 0.0, 0.0]), planes, 0.9, (True,))


def test_a_side_facade_seen_only_at_the_photos_edge_becomes_a_wall():
    # courtyard@photo: the left building (its facade at x = 0, the camera at x = W / 2) shows only in the photo's
    # top-left corner behind the colonnade; no contact run lines up along it. Before: no left wall (a tree trunk's
    # 0.1 m footprint made a "wall" 2.8 m left instead), so walking left showed sky and the back facade's extension
    scene, _, layout = _photo("courtyard")
    left_true_m = float(scene.loop_xz[0][0])  # facade at x = 0
    left = _walls(layout, np.array([-1.0, 0.0, 0.0]))
    assert left, "no left facade"
    assert abs(max(left) / left_true_m - 1.0) < 0.12, f"left facade at {max(left):.2f} m, truth {left_true_m:.2f}"
    assert all(p.open_top for p in layout.planes if p.kind == "wall" and p.normal_cam[0] < -0.9)


def test_edge_facade_rule_needs_a_surface_rising_out_of_the_top():
    from spatia.model.fill.geometry.photo import PhotoLayoutConfig, _edge_facades, _wall_length_m

    C = 60
    # a left facade at x = -6 m: contacts along it at the first 10 columns, then a fountain 4 m ahead
    foot = np.column_stack([np.full(C, -6.0), np.linspace(6.0, 9.0, C)])
    foot[10:, 0], foot[10:, 1] = np.linspace(-2.0, 2.0, C - 10), 4.0
    contact = np.ones(C, bool)
    axes = [np.array([1.0, 0.0]), np.array([-1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.0, -1.0])]
    ahead = (np.array([0.0, 1.0]), 4.0, np.arange(C) >= 10)
    cfg = PhotoLayoutConfig()
    no_sky = np.full(C, -1)
    no_sky[10:] = 2  # sky above the fountain: nothing rises out of the photo on the right
    walls = _edge_facades(foot, contact, no_sky, [ahead], axes, cfg)
    side = [w for w in walls if w[0][0] < -0.9]
    assert len(side) == 1 and side[0][1] == pytest.approx(6.0) and side[0][2][:10].all() and not side[0][2][10:].any()
    # sky above the edge columns: the surface there ends below the sky, it is no facade rising out of the photo
    sky = no_sky.copy()
    sky[:5] = 3
    assert [w for w in _edge_facades(foot, contact, sky, [ahead], axes, cfg) if w[0][0] < -0.9] == []
    # a wall already faces that way: nothing added
    have = (np.array([-1.0, 0.0]), 5.0, np.arange(C) < 4)
    assert len(_edge_facades(foot, contact, no_sky, [ahead, have], axes, cfg)) == 2
    # the right edge with no sky above (a near building corner) adds a wall there too
    assert [w for w in _edge_facades(foot, contact, np.full(C, -1), [ahead], axes, cfg) if w[0][0] > 0.9]
    # too far out for the square the other walls outline (1.5x their median distance)
    far = foot.copy()
    far[:10, 0] = -30.0
    assert [w for w in _edge_facades(far, contact, no_sky, [ahead], axes, cfg) if w[0][0] < -0.9] == []
    # a wall's length along itself: a trunk's footprint is no wall
    trunk = (np.array([-1.0, 0.0]), 2.8, np.arange(C) < 3)
    assert _wall_length_m(foot, trunk) < cfg.min_wall_length_m <= _wall_length_m(foot, side[0])
