"""Outdoors the sky is an environment layer, not a shell of points: the first view's sky (kept in the memory as
far points) is no surface the small-hole fill may continue, and a ray that hits nothing is sky."""

from __future__ import annotations

import numpy as np

from spatia.model.geometric import GeometricConfig, GeometricGenerator
from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
from spatia.world.engine import Engine, EngineConfig
from spatia.world.state import World


def test_turning_in_the_courtyard_invents_nothing_in_the_sky():
    """Walk 1.5 m, turn 57 deg right, walk on (160x90): no invented point stands higher than the highest observed
    surface (+0.5 m). Before, facades' and trees' depths were continued into the gaps between the first view's
    sky points, a shell of sky-coloured invented points 10-50 m away drawn as blocks: 566 here."""
    world = World.from_scene("courtyard", 0, 160, 90)
    up = -world.origin_c2w[:3, 1]
    seen = world.memory.positions
    near = np.linalg.norm(seen - world.origin_c2w[:3, 3], axis=1) < 80.0  # the sky dome is ~130 m away
    top_m = float((seen[near] @ up).max())
    walk = ActionIntegrator(world.origin_c2w, ControlConfig(fps=15))
    poses = walk.run([Action(move_forward=1.0, dt_s=1.5), Action(yaw_rate_rad_s=1.0, dt_s=1.0),
                      Action(move_forward=1.0, dt_s=1.5)])
    n = len(poses) + 1
    engine = Engine(world, GeometricGenerator(GeometricConfig(fill="layout", coarse_frames=0)),
                    EngineConfig(clip=ClipConfig(first_clip_frames=n, clip_frames=n, preceding_frames=1)))
    frames = list(engine.generate(poses, seed=0))
    assert len(frames) == len(poses)
    memory = world.memory
    invented = memory.positions[memory.provenance == 2]
    assert len(invented) > 1000  # the turn revealed new ground and facades
    assert int((invented @ up > top_m + 0.5).sum()) <= 10
