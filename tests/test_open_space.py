"""Space a frame shows as open is open in the memory (issue 10 section 2, "doorways the camera walks through stay
open"): a generator declares the doorways it shows (``GeneratedView.open_space``), the engine deletes the invented
points inside them when it commits the clip, in view or not (``SpatialMemory.remove_invented_in``), and the layout
fill declares each doorway of its view as the box it hides (``model.fill.geometry.layout.opening_box``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spatia.world.camera import Intrinsics, look_at
from spatia.world.engine import Engine, EngineConfig
from spatia.world.actions import ClipConfig
from spatia.world.generator import GeneratedView, GeneratorCapabilities, ClipResult
from spatia.world.memory import INVENTED_FINAL, INVENTED_PROVISIONAL, OBSERVED, Box, SpatialMemory
from spatia.world.state import World
from tests.conftest import box_room_points


def _yaw(deg: float) -> np.ndarray:
    r = math.radians(deg)
    return np.array([[math.cos(r), 0.0, math.sin(r)], [0.0, 1.0, 0.0], [-math.sin(r), 0.0, math.cos(r)]])


def _inside_reference(points: np.ndarray, box: Box) -> np.ndarray:
    """[N] bool, one point at a time: its coordinates along each box axis within the half extents."""
    out = np.zeros(len(points), bool)
    for i, p in enumerate(points):
        d = p - box.center
        out[i] = all(abs(float(d @ box.rotation[:, a])) <= box.half_extents_m[a] for a in range(3))
    return out


def test_remove_invented_in_matches_the_reference():
    """Invented points (provisional and final) inside any of the boxes go, turned boxes included; observed points
    and points outside stay."""
    rng = np.random.default_rng(3)
    mem = SpatialMemory()
    for prov in (OBSERVED, INVENTED_PROVISIONAL, INVENTED_FINAL):
        mem.integrate_points(rng.uniform(-3.0, 3.0, (4000, 3)), np.full((4000, 3), 90, np.uint8), 0, provenance=prov)
    mem.reindex()  # most points in the block-sorted prefix, some appended after it
    mem.integrate_points(rng.uniform(-3.0, 3.0, (500, 3)), np.full((500, 3), 90, np.uint8), 1,
                         provenance=INVENTED_FINAL)
    boxes = [Box([0.5, 0.0, -1.0], [0.3, 1.0, 0.6], _yaw(30.0)), Box([-2.0, 1.0, 2.0], [0.5, 0.5, 0.5]),
             Box([1.0, -1.0, 1.5], [0.2, 1.2, 0.4], _yaw(-75.0) @ _yaw(0.0))]
    pos, prov, keys = mem.positions.astype(np.float64), mem.provenance.copy(), mem.voxel_keys.copy()
    inside = np.zeros(len(pos), bool)
    for box in boxes:
        inside |= _inside_reference(pos, box)
    want = inside & (prov != OBSERVED)
    assert want.sum() > 50 and (inside & (prov == OBSERVED)).sum() > 10
    assert mem.remove_invented_in(boxes) == want.sum()
    np.testing.assert_array_equal(np.sort(mem.voxel_keys), np.sort(keys[~want]))
    assert mem.remove_invented_in(boxes) == 0 and mem.remove_invented_in([]) == 0


@pytest.mark.parametrize("turn_deg", [0.0, 33.0])
def test_a_doorways_box_is_the_slab_the_fill_hides(turn_deg):
    """``opening_box`` holds exactly the points ``opening_pixels`` calls the doorway's (within ``door_slab_m`` of its
    wall, inside its width and height), for a room whose axes are the world's and one turned from them."""
    from spatia.model.fill.geometry.layout import _in_openings, estimate_layout, opening_box, view_bounds

    rng = np.random.default_rng(5)
    R = _yaw(turn_deg)
    cam0 = R @ np.array([3.0, 1.6, 2.0])
    layout = estimate_layout(box_room_points(rng, R, n=4000), cam0, R @ np.array([0.0, 1.0, 0.0]),
                             R @ np.array([0.0, 0.0, 1.0]))
    path = np.array([[3.0, 1.6, 2.0], [3.0, 1.6, 4.0], [3.2, 1.6, 7.0], [3.2, 1.6, 9.5]]) @ R.T  # through z = 8
    view = view_bounds(layout, cam0, path)
    assert len(view.openings) == 1
    door = view.openings[0]
    box = opening_box(layout, door)
    # points around the doorway, seen from a camera at the first pose
    pts = (np.c_[rng.uniform(1.5, 5.0, 20000), rng.uniform(-0.5, 3.5, 20000), rng.uniform(7.3, 8.7, 20000)]) @ R.T
    c2w = look_at(cam0, cam0 + R @ np.array([0.0, 0.0, 1.0]))
    cam = (pts - c2w[:3, 3]) @ c2w[:3, :3]  # [N, 3] camera frame
    ahead = cam[:, 2] > 0.05
    rays = (cam[ahead] / cam[ahead, 2:3]).astype(np.float32)
    hidden = _in_openings(layout, [door], rays, cam[ahead, 2].astype(np.float32), c2w, near_wall=True)
    inside = box.contains(pts[ahead])
    # float32 in the fill, float64 in the box: the two may differ for points within a micrometre of a face
    near_face = np.abs(np.abs((pts[ahead] - box.center) @ box.rotation) - box.half_extents_m).min(axis=1) < 1e-4
    np.testing.assert_array_equal(inside[~near_face], hidden[~near_face])
    assert inside.sum() > 500


class _OpensBeside:
    """A streaming generator that draws the memory at each pose and declares a box beside the camera, outside its
    view, as open space (as the layout fill declares a doorway whose jamb is beside the camera)."""

    name = "opens-beside"
    capabilities = GeneratorCapabilities(exact_poses=True, uses_preceding_clip=False, streams_frames=True)

    def __init__(self, box: Box) -> None:
        self.box = box

    def generate_frames(self, request):
        proj = request.target_projection
        for t in range(request.num_target):
            yield GeneratedView(proj.rgb[t], np.where(proj.valid[t], proj.depth_m[t], 2.0).astype(np.float32),
                                open_space=(self.box,))


class _OpensBesideWhole(_OpensBeside):
    """The same, as a clip at once (``generate``: the clip's ``ClipResult.open_space``)."""

    capabilities = GeneratorCapabilities(exact_poses=True, uses_preceding_clip=False)

    def generate(self, request):
        views = list(self.generate_frames(request))
        return ClipResult(np.stack([v.rgb for v in views]), np.stack([v.depth_m for v in views]),
                          open_space=(self.box,))


@pytest.mark.parametrize("generator", [_OpensBeside, _OpensBesideWhole])
def test_the_engine_opens_in_the_memory_what_a_frame_declares_open(generator):
    world = World.from_scene("room", 0, 64, 48)
    cam = world.origin_c2w[:3, 3]
    side = world.origin_c2w[:3, 0]  # the camera's right: outside a 75 deg view
    box = Box(cam + 0.8 * side, [0.3, 0.6, 0.3], world.origin_c2w[:3, :3])
    rng = np.random.default_rng(1)
    jamb = box.center + rng.uniform(-0.25, 0.25, (300, 3))
    world.memory.integrate_points(jamb, np.full((300, 3), 80, np.uint8), 0, provenance=INVENTED_FINAL)
    world.memory.integrate_points(jamb + 3 * side, np.full((300, 3), 80, np.uint8), 0, provenance=INVENTED_FINAL)
    observed_before = int((world.memory.provenance == OBSERVED).sum())
    engine = Engine(world, generator(box), EngineConfig(clip=ClipConfig(1, 2, 1), free_radius_m=0.0))
    list(engine.generate_clip(world.origin_c2w[None], seed=1))
    pos, prov = world.memory.positions.astype(np.float64), world.memory.provenance
    assert not (box.contains(pos) & (prov != OBSERVED)).any()
    assert (prov == OBSERVED).sum() == observed_before
    assert (Box(box.center + 3 * side, [0.3, 0.6, 0.3]).contains(pos) & (prov == INVENTED_FINAL)).sum() > 200
