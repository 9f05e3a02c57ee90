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


def test_the_sky_between_buildings_is_sky_not_a_smear():
    """The courtyard's demo loop, frame 22 (160x90), generated straight from the first view's memory: where the
    truth shows sky in the gap between two buildings, the layout's facade continues across it, but the first view
    saw the sky through there. Those rays hit nothing, so the sky layer paints them (blue), where the colour fill
    smeared facade and grass over them before (of 1,036 truth sky pixels, the frame's blue stood at least 25 above
    its red on 0.8 % before, 96 % after)."""
    from spatia.model.eval.novel_view import truth_view
    from spatia.world.scenes import make_scene

    world = World.from_scene("courtyard", 0, 160, 90)
    scene = make_scene("courtyard", 0)
    pose = scene.demo_path(161)[22]
    initial = world.memory.render(world.intrinsics, pose).valid
    engine = Engine(world, GeometricGenerator(GeometricConfig(fill="layout", coarse_frames=0)),
                    EngineConfig(clip=ClipConfig(1, 2, 1)))
    (frame,) = list(engine.generate(pose[None], seed=0))
    truth_rgb, _, real = truth_view(scene, world.intrinsics, pose)
    sky = ~real & ~initial & (truth_rgb[..., 2].astype(int) > truth_rgb[..., 0].astype(int) + 40)
    assert sky.sum() > 100, sky.sum()
    rgb = frame.rgb.astype(int)
    blue = rgb[..., 2] > rgb[..., 0] + 25
    assert blue[sky].mean() > 0.9, blue[sky].mean()
