"""A lit patch of floor in a photo (sunlight through a window) is floor, not a card standing to the ceiling.

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
