"""Openings the frames show are open in the memory (issue 10 section 2): the memory update takes away invented
points a frame saw through (``UpdateConfig.carve_seen_through_rel``, ``SpatialMemory.remove_invented_seen_through``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
from spatia.world.camera import Intrinsics, look_at
from spatia.world.engine import Engine, EngineConfig
from spatia.world.free_space import seen_through, seen_through_reference
from spatia.world.memory import INVENTED_FINAL, INVENTED_PROVISIONAL, OBSERVED, SpatialMemory
from spatia.world.state import World

ROOM_SEED = 1826701614  # the room SpatiaWorldEnv.reset(seed=0) makes (docs/RESULTS.md, "Walking through a wall")


@pytest.mark.parametrize("distinct_by", ["bitmap", "sort"])
def test_remove_invented_seen_through_matches_the_reference(distinct_by, monkeypatch):
    """Only invented-final points in front of the view's depth (rel + 5 cm) at their own pixel go; observed and
    provisional ones stay, points behind or where the depth is unknown stay. The ids come as a render's pixels
    give them (each repeated, unordered, -1 where nothing was drawn), made distinct either way
    (``UNIQUE_BY_BITMAP_FROM``: a bitmap of the points for many ids, a sort for a few)."""
    from spatia.world import memory as memory_module

    monkeypatch.setattr(memory_module, "UNIQUE_BY_BITMAP_FROM", 0.0 if distinct_by == "bitmap" else math.inf)
    rng = np.random.default_rng(0)
    K = Intrinsics.from_fov(75.0, 48, 32)
    view = look_at(np.zeros(3), np.array([0.0, 0.0, 1.0]))
    mem = SpatialMemory()
    for prov in (OBSERVED, INVENTED_PROVISIONAL, INVENTED_FINAL):
        pts = np.column_stack([rng.uniform(-1.5, 1.5, 300), rng.uniform(-1.0, 1.0, 300), rng.uniform(0.5, 5.0, 300)])
        mem.integrate_points(pts, np.full((300, 3), 100, np.uint8), 0, provenance=prov)
    depth = np.full((K.height, K.width), 3.0, np.float32)
    depth[:, :10] = 0.0  # unknown: nothing is taken away there
    pos, prov = mem.positions.astype(np.float64), mem.provenance.copy()
    keys = mem.voxel_keys.copy()
    ids = np.concatenate([np.repeat(np.arange(mem.num_points), 3), [-1, -1]]).astype(np.int32)
    rng.shuffle(ids)
    front = seen_through_reference(pos, view, K, np.where(depth > 0, depth, 1e-30).astype(np.float32), 0.03)
    want = front & (prov == INVENTED_FINAL)
    assert 10 < want.sum() < (prov == INVENTED_FINAL).sum()
    removed = mem.remove_invented_seen_through(ids, K, view, depth, 0.03)
    np.testing.assert_array_equal(np.sort(removed), np.sort(keys[want]))
    np.testing.assert_array_equal(np.sort(mem.voxel_keys), np.sort(keys[~want]))
    # the kernel and its reference agree with a margin of their own too
    np.testing.assert_array_equal(seen_through(pos, view, K, depth, 0.1, margin_m=0.2),
                                  seen_through_reference(pos, view, K, depth, 0.1, margin_m=0.2))


def _declaring_generator():
    from spatia.model.geometric import GeometricGenerator

    class Declaring(GeometricGenerator):
        """The geometric generator, keeping the open space each clip's frames declare (``declared[-1]``)."""

        def __init__(self) -> None:
            super().__init__()
            self.declared: list[list] = []

        def generate_frames(self, request):
            self.declared.append([])
            for view in super().generate_frames(request):
                self.declared[-1].extend(view.open_space)
                yield view

    return Declaring()


def _room_walk(width: int, height: int, turns: int, steps: int, collision: bool):
    """The room turned ``turns`` x 5.625 deg right (16 fps at 90 deg/s: 8 = 45 deg), then W held: one-frame clips
    as the Gymnasium env makes them. Yields (step, pose, collided, frame depth, memory render, engine)."""
    world = World.from_scene("room", ROOM_SEED, width, height)
    engine = Engine(world, _declaring_generator(), EngineConfig(clip=ClipConfig(1, 2, 1)))
    control = ControlConfig(collision=collision)
    integ = ActionIntegrator(world.origin_c2w, control, collider=engine.collider() if collision else None)
    for k in range(turns + steps):
        act = Action(move_forward=float(k >= turns), yaw_rate_rad_s=math.radians(90.0) * (k < turns),
                     dt_s=1.0 / control.fps)
        c2w = integ.step(act)[-1]
        frame = list(engine.generate_clip(c2w[None], seed=k + 1))[-1]
        render = world.memory.render(world.intrinsics, c2w, return_point_ids=True)
        yield k + 1, c2w, integ.collided, frame.depth_m, render, engine


def test_the_camera_walks_through_a_doorway_the_frame_shows():
    """Turned 45 deg right and walking at the room's right wall, collision on (320x180): from step ~42 the frames
    show a doorway there (the layout fill's doorway where the camera heads through a wall nothing observed,
    ``door_lookahead_m``) with the room beyond. The memory had invented that wall before: its points in the doorway
    are taken away and the room beyond is integrated, so the memory alone shows the doorway too (before: up to
    15 % of the frame showed an opening where the memory held an invented wall), and the doorway is wide and tall
    enough for the walking camera (before: it stopped 0.5 m short of the wall, in the corner by the bookcase). No
    invented point lies in space the first (observed) view saw through."""
    shown_open, declared_open, disagree, x = 0, 0, [], []
    for step, c2w, collided, frame_depth, render, engine in _room_walk(320, 180, 8, 70, collision=True):
        x.append(c2w[0, 3])
        if step < 42:
            continue
        prov = engine.world.memory.provenance
        invented = render.valid & (prov[np.maximum(render.point_ids, 0)] != OBSERVED)
        deep = frame_depth > render.depth_m * 1.3 + 0.3
        disagree.append(float((invented & deep).mean()))
        shown_open += int((frame_depth > 2.5).sum())
        # the doorway the frame shows is declared open, and no invented point is left in it, in view or not
        declared = engine.generator.declared[-1]
        declared_open += bool(declared)
        pos = engine.world.memory.positions.astype(np.float64)
        for box in declared:
            assert not (box.contains(pos) & (prov != OBSERVED)).any()
    world = engine.world
    assert shown_open > 0 and declared_open > 20
    assert max(disagree) < 0.015, disagree
    mem = world.memory
    pos, prov = mem.positions.astype(np.float64), mem.provenance
    first = world.history.get_depth(0)
    inv = pos[prov != OBSERVED]
    assert not seen_through(inv, world.origin_c2w, world.intrinsics,
                            np.where(first > 0, first, 1e-30).astype(np.float32), 0.03).any()
    # the camera went through the right wall (its observed plane) into the room beyond, which the memory holds
    wall_x = float(np.percentile(pos[prov == OBSERVED, 0], 99.5))
    assert x[-1] > wall_x + 0.15, (x[-1], wall_x)  # past the wall's thickness (LayoutConfig.wall_thickness_m)
    assert np.count_nonzero(pos[prov == INVENTED_FINAL, 0] > wall_x + 0.3) > 100


@pytest.mark.parametrize("rel", [-0.1, 1.0])
def test_carve_tolerance_is_checked(rel):
    from spatia.world.errors import InvalidInputError
    from spatia.world.update import UpdateConfig

    with pytest.raises(InvalidInputError):
        UpdateConfig(carve_seen_through_rel=rel)
