"""Photos of rooms: a lit patch of floor is floor, and a leg stands only to its height, not to the ceiling.

Official case 1's sunlit floor reads as a wall's colour; as an object, its contact row made the columns above it a
slab 4.5 m out, from the floor to the ceiling, across the doorway (docs/RESULTS.md, "Session 36"). Here the same
on a procedural room: a washed-out patch painted on its floor, with floor above it and the far wall beyond.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from spatia.model.fill.geometry.photo import PhotoLayoutConfig, estimate_layout
from spatia.world.camera import Intrinsics
from spatia.world.scenes import make_scene

K = Intrinsics.from_fov(75.0, 640, 360)
NEVER = dataclasses.replace(PhotoLayoutConfig(), floor_patch_min_share=2.0)  # the rule off


@functools.lru_cache(maxsize=None)
def _room():
    """The room seen from its start pitched 12 degrees down: rgb, z-depth and a floor patch [H, W] bool between
    the table and the plant, with floor between it and the far wall's foot."""
    scene = make_scene("room", 0)
    c2w = scene.start_pose().copy()
    p = math.radians(12.0)
    c2w[:3, :3] = c2w[:3, :3] @ np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    rgb, depth = scene.render(K, c2w)
    hits = scene.cast(K, c2w)
    floor_id = [o.name for o in scene.objects].index("floor")
    floor = hits.object_id == floor_id
    cols = slice(450, 495)
    top = int(np.flatnonzero(floor[:, cols].all(axis=1)).min())  # the first row that is floor across the columns
    patch = np.zeros_like(floor)
    patch[top + 8:top + 50, cols] = True
    assert floor[patch].all()
    return rgb, depth, patch


def _painted(rgb: np.ndarray, patch: np.ndarray, towards: tuple, amount: float) -> np.ndarray:
    out = rgb.astype(np.float32)
    out[patch] = (1.0 - amount) * out[patch] + amount * np.asarray(towards, np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _absrel(depth_m: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(np.mean(np.abs(depth_m[mask] - truth[mask]) / truth[mask]))


def test_a_lit_patch_on_the_floor_is_floor():
    rgb, truth, patch = _room()
    lit = _painted(rgb, patch, (236, 232, 224), 0.6)  # sunlight: the wood washed out towards a wall's white
    off = estimate_layout(lit, K, NEVER)
    on = estimate_layout(lit, K)
    assert _absrel(off.depth_m, truth, patch) > 0.1  # without the rule: a card standing on the patch's edge
    assert _absrel(on.depth_m, truth, patch) < 0.02
    assert on.floor_mask[patch].mean() > 0.95
    # the columns above the patch keep the far wall's depth, as in the unpainted photo
    above = np.roll(patch, -(int(np.flatnonzero(patch.any(axis=1)).min()) - 5), axis=0) & ~on.floor_mask
    plain = estimate_layout(rgb, K)
    assert _absrel(on.depth_m, plain.depth_m, above) < 0.05


def test_a_shadow_on_the_floor_is_left_alone():
    rgb, _, patch = _room()
    dark = _painted(rgb, patch, (20, 20, 24), 0.6)  # darker than the floor: a shadow, a rug, an object's front
    np.testing.assert_array_equal(estimate_layout(dark, K).depth_m, estimate_layout(dark, K, NEVER).depth_m)


def _legs(z_col: np.ndarray, free: np.ndarray, config: PhotoLayoutConfig = PhotoLayoutConfig()) -> np.ndarray:
    """``_legs_below_walls`` on a level 100 x C view (focal 50 px, one canvas column per pixel column) whose column
    surfaces stand at ``z_col``: the z-depth of every pixel."""
    from spatia.model.fill.geometry.photo import _legs_below_walls

    C, H, f = len(z_col), 100, 50.0
    v, u = np.mgrid[0:H, 0:C] + 0.5
    rays = np.stack([(u - C / 2) / f, (v - H / 2) / f, np.ones((H, C))], axis=-1)
    col = np.broadcast_to(np.arange(C), (H, C))
    zl = np.ones((H, C))
    return _legs_below_walls(z_col[col] / zl, z_col, free, 1.0 / f, col, rays, zl, config)


def test_a_leg_in_front_of_the_wall_stands_only_to_its_height():
    """A run of columns 0.48 m wide standing 4 m out in front of a wall 5 m out (a chair's leg, seen by the boundary
    search as one contact per column) is a card up to 1.2 m above the floor, and the wall above that. Official
    case 1's chairs stood to the ceiling, carrying strips of the wall above them across the room (docs/RESULTS.md,
    "Session 36")."""
    z = np.full(60, 5.0)
    z[27:33] = 4.0
    free = np.ones(60, bool)
    depth = _legs(z, free)
    rows = np.arange(100)
    height_m = 1.6 - (rows + 0.5 - 50) / 50 * 4.0  # above the floor on the card
    leg = depth[:, 27:33]
    np.testing.assert_allclose(leg[height_m > 1.2], 5.0)  # the wall behind, interpolated between its sides
    np.testing.assert_allclose(leg[height_m <= 1.2], 4.0)
    np.testing.assert_allclose(depth[:, :27], 5.0)
    # wider than max_leg_width_m (a bookcase, a sofa), or not in front on both sides (a wall receding to one side),
    # or a wall's own columns (not free): left as it is
    wide = z.copy()
    wide[20:40] = 4.0
    np.testing.assert_array_equal(_legs(wide, free), wide[np.broadcast_to(np.arange(60), (100, 60))])
    ramp = np.linspace(4.0, 8.0, 60)
    np.testing.assert_array_equal(_legs(ramp, free), ramp[np.broadcast_to(np.arange(60), (100, 60))])
    np.testing.assert_array_equal(_legs(z, np.zeros(60, bool)), z[np.broadcast_to(np.arange(60), (100, 60))])
