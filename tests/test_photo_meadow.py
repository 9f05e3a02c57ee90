"""Official case 3 (a cow grazing a meadow under a wooded hillside, no sky in view; the cow masked as dynamic), as
``spatia demo --case`` builds it (640 px wide): what the camera sees when it pans off the photo.

Before (session 34): a "side wall" 1.9 m beside the camera lined up from the meadow's far boundary, a closed room
with a meadow-green ceiling 9.5 m up, the cow's colours as the sky, and the cow's silhouette carved out of what
the fill may place behind it. The case ships in ``assets/cases`` (Apache-2.0).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from spatia.model.fill.geometry.photo import PhotoLayoutDepth, _seen_past_columns
from spatia.world.state import World

CASE = Path(__file__).resolve().parents[1] / "assets" / "cases" / "case_3"


@pytest.fixture(scope="module")
def meadow():
    estimator = PhotoLayoutDepth()
    world, c2w = World.from_case(CASE, depth_estimator=estimator, width=640)
    return world, c2w, estimator.last_layout


def test_a_wall_the_photo_saw_past_nearer_than_its_own_contacts_is_no_wall():
    """Contacts 18-23 m away lining up into a wall 1.9 m beside the camera, with nearer columns seeing the floor
    beyond where it would stand: rejected; a side wall seen from its near end, with columns past its far end:
    kept."""
    x_over_z = np.linspace(-0.5, 0.5, 101)
    n = np.array([-1.0, 0.0])  # a wall on the left, x = -1.9 m
    wall_z = 1.9 / -x_over_z.clip(max=-1e-3)
    far = np.zeros(101, bool)
    far[40:45] = True  # its "contacts": 19-38 m out, just left of the centre
    z = np.where(far, wall_z, 30.0)  # every other column saw the floor 30 m away
    foot = np.column_stack([x_over_z * z, z])
    contact = np.ones(101, bool)
    assert _seen_past_columns(foot, contact, (n, 1.9, far)) > far.sum()
    near = np.zeros(101, bool)
    near[:30] = True  # ... the same wall seen from the photo's edge on, and a far end (a doorway) past it
    z = np.where(near, wall_z, 30.0)
    foot = np.column_stack([x_over_z * z, z])
    assert _seen_past_columns(foot, contact, (n, 1.9, near)) == 0


def test_the_meadow_has_a_backdrop_and_no_side_wall(meadow):
    world, _, layout = meadow
    walls = [p for p in layout.planes if p.kind == "wall"]
    assert walls, "the hillside above the meadow is a backdrop wall"
    assert min(p.offset_m for p in walls) >= 20.0  # nothing stands beside the camera
    backdrop = max(walls, key=lambda p: p.pixels)
    assert backdrop.offset_m == pytest.approx(PhotoLayoutDepth().config.max_depth_no_sky_m)
    assert abs(backdrop.normal_cam @ layout.up_cam) < 1e-6  # a standing plane
    # the photo's pixels on it lie on that plane (not on a cap of the camera's z-depth)
    on = layout.vertical_mask & (layout.depth_m >= 0.99 * backdrop.offset_m)
    rays = world.intrinsics
    v, u = np.nonzero(on)
    pts = np.stack([(u + 0.5 - rays.cx) / rays.fx, (v + 0.5 - rays.cy) / rays.fy, np.ones(len(u))], 1)
    pts *= layout.depth_m[v, u, None]
    off_m = np.abs(pts @ backdrop.normal_cam - backdrop.offset_m)
    assert np.median(off_m) < 0.02 and np.percentile(off_m, 90) < 0.1  # (columns are the layout's, 2 px wide)


def test_the_meadow_is_outdoors_under_an_unseen_sky_and_the_cow_is_no_sky(meadow):
    from spatia.model import make_generator
    from spatia.model.fill.texture.appearance import unseen_sky
    from spatia.model.geometric import _fit_layout_state
    from spatia.world.engine import observed_views, world_up

    world, _, _ = meadow
    generator = make_generator("geometric")
    inputs, _ = generator._fill_inputs(world.memory, observed_views(world), world_up(world), world.layout_prior)
    state = _fit_layout_state(inputs())
    assert not state.layout.indoor
    assert not any(p.kind == "ceiling" for p in state.layout.planes)
    assert state.sky is not None
    np.testing.assert_array_equal(state.sky.colours, unseen_sky(state.layout.up).colours)  # not the cow's


def test_the_cows_silhouette_shows_what_lies_behind_it(meadow):
    """The cow is kept out of the memory (history depth 0 = unknown), so from a step aside its silhouette is a
    hole: the layout's backdrop behind it fills it, not the sky (an unknown depth frees no ray)."""
    from spatia.model import make_generator
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.actions import ClipConfig

    world, c2w, _ = meadow
    mask = world.history.get_depth(0) <= 0  # the cow
    assert 0.02 < mask.mean() < 0.2
    engine = Engine(world, make_generator("geometric"), EngineConfig(clip=ClipConfig(1, 2, 1)))
    pose = c2w[0].copy()
    pose[:3, 3] += 0.3 * pose[:3, 0]  # 30 cm to the right
    frame = next(engine.generate(pose[None], seed=0))
    inside = np.zeros_like(mask)
    inside[4:-4, 4:-4] = mask[4:-4, 4:-4] & mask[:-8, 4:-4] & mask[8:, 4:-4]  # well inside the silhouette
    assert inside.sum() > 100
    assert (frame.depth_m[inside] > 0).mean() > 0.95  # a surface, not the sky layer (depth 0)


def test_the_meadow_as_a_plain_image_is_open_ground_not_a_room():
    """Handed over without intrinsics (``spatia demo --image``, CreateWorld from an image), the meadow's lines do
    not give the focal length. Before, that alone sent it to the planar prior (a floor and a wall 6 m ahead),
    which the fill closed into a 7 m room walled with the meadow's grass; open ground (a backdrop, no ceiling)
    now keeps its layout at the assumed focal: outdoors, the backdrop 25 m out."""
    from PIL import Image

    from spatia.model import make_generator
    from spatia.model.geometric import _fit_layout_state
    from spatia.world.engine import observed_views, world_up

    rgb = np.asarray(Image.open(CASE / "img.jpg").convert("RGB"))
    rgb = np.ascontiguousarray(rgb[::2, ::2])  # 624 px wide, as fast as the module's
    estimator = PhotoLayoutDepth()
    world = World.from_image(rgb, depth_estimator=estimator)
    layout = estimator.last_layout
    assert layout.focal_source == "default"  # unmeasured: the case's point
    assert world.layout_prior is not None and world.layout_prior.source == "photo_layout"  # not the planar prior
    generator = make_generator("geometric")
    inputs, _ = generator._fill_inputs(world.memory, observed_views(world), world_up(world), world.layout_prior)
    state = _fit_layout_state(inputs())
    assert not state.layout.indoor
    walls = [p for p in state.layout.planes if p.kind == "wall"]
    assert walls and all(abs(p.offset_m - float(state.layout.observer @ state.layout.axes[p.axis])) >= 20.0
                         for p in walls)  # no wall beside the camera: nothing closes the meadow in


def test_turning_in_the_meadow_keeps_its_measured_horizon(meadow):
    """The case's camera is pitched and rolled against the gravity its photo layout measured (up from the
    vertical vanishing point). A player's turns keep that up level (``World.level_up``), so the horizon stays
    where the photo has it; about the camera's own y axis a quarter turn rolled it by the pitch."""
    from spatia.world.actions import out_and_back_path

    world, _, _ = meadow
    up = world.level_up
    assert world.layout_prior is not None and np.allclose(up, world.layout_prior.up)
    tilt_deg = math.degrees(math.acos(float(np.clip(up @ -world.origin_c2w[:3, 1], -1.0, 1.0))))
    assert tilt_deg > 2.0  # the photo is not level
    path = out_and_back_path(world.origin_c2w, 41, up=up)
    assert np.allclose(path[0], world.origin_c2w) and np.allclose(path[-1], world.origin_c2w)
    x_up = world.origin_c2w[:3, 0] @ up
    assert np.allclose(path[:, :3, 0] @ up, x_up, atol=1e-9)
    own = out_and_back_path(world.origin_c2w, 41)
    assert np.abs(own[:, :3, 0] @ up - x_up).max() > 0.5 * math.sin(math.radians(tilt_deg))
