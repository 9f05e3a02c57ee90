import math

import numpy as np
import pytest

from spatia.world.actions import (
    Action,
    ActionIntegrator,
    ClipConfig,
    ControlConfig,
    chunk_clips,
    out_and_back_path,
)
from spatia.world.camera import rotation_angle_deg, validate_pose
from spatia.world.errors import InvalidInputError


def test_forward_moves_along_camera_z_at_walk_speed():
    integ = ActionIntegrator(np.eye(4), ControlConfig(fps=10, walk_speed_m_s=1.0))
    poses = integ.run([Action(move_forward=1.0, dt_s=1.0)])
    assert len(poses) == 10  # one pose per output frame
    assert np.allclose(poses[-1][:3, 3], [0, 0, 1.0])
    assert np.allclose(np.diff(poses[:, 2, 3]), 0.1)


def test_strafe_left_and_sprint():
    integ = ActionIntegrator(np.eye(4), ControlConfig(fps=10, walk_speed_m_s=1.0, sprint_multiplier=2.0))
    p = integ.run([Action(move_right=-1.0, sprint=True, dt_s=0.5)])
    assert np.allclose(p[-1][:3, 3], [-1.0, 0, 0])


def test_yaw_right_turns_forward_towards_plus_x_and_pitch_up_looks_up():
    integ = ActionIntegrator(np.eye(4), ControlConfig(fps=4))
    p = integ.run([Action(yaw_rate_rad_s=math.pi / 2, dt_s=1.0)])
    assert np.allclose(p[-1][:3, 2], [1, 0, 0], atol=1e-9)
    integ = ActionIntegrator(np.eye(4), ControlConfig(fps=4))
    p = integ.run([Action(pitch_delta_rad=0.3, dt_s=0.25)])
    assert p[-1][1, 2] < 0  # forward has a -y (up) component


def test_walking_stays_level_while_looking_down():
    integ = ActionIntegrator(np.eye(4), ControlConfig(fps=8))
    integ.step(Action(pitch_delta_rad=-0.6, dt_s=0.0))  # look down 34 degrees
    p = integ.run([Action(move_forward=1.0, yaw_rate_rad_s=0.5, dt_s=2.0)])
    assert np.allclose(p[:, 1, 3], 0.0)  # no drift in height without up/down
    p = integ.run([Action(move_up=1.0, dt_s=1.0)])
    assert p[-1][1, 3] < -0.5  # up is -y


def test_pitch_is_clamped_short_of_vertical():
    integ = ActionIntegrator(np.eye(4), ControlConfig(fps=8, max_pitch_deg=80))
    integ.run([Action(pitch_rate_rad_s=10.0, dt_s=2.0)])
    assert math.degrees(integ.pitch_rad) == pytest.approx(80.0)
    validate_pose(integ.c2w)


def test_integration_is_deterministic_and_frame_timing_is_exact():
    acts = [Action(move_forward=0.7, yaw_delta_rad=0.01 * i, dt_s=1 / 60, seq=i) for i in range(120)]
    a = ActionIntegrator(np.eye(4), ControlConfig(fps=16)).run(acts)
    integ = ActionIntegrator(np.eye(4), ControlConfig(fps=16))
    b = integ.run(acts)
    assert np.array_equal(a, b)
    assert len(a) == 32  # 2 s at 16 fps, independent of the 60 Hz input tick
    assert integ.last_seq == 119


@pytest.mark.parametrize("bad", [dict(move_forward=2.0), dict(dt_s=-1.0), dict(yaw_rate_rad_s=float("nan"))])
def test_bad_actions_raise(bad):
    with pytest.raises(InvalidInputError):
        ActionIntegrator(np.eye(4)).step(Action(**bad))


def test_chunking_follows_paper_and_official_lengths():
    spans = chunk_clips(81 + 72 * 2, ClipConfig.paper())
    assert [(s.start, s.stop, s.preceding_start) for s in spans] == [(0, 81, 0), (81, 153, 72), (153, 225, 144)]
    assert all(s.num_preceding == 9 for s in spans[1:])
    spans = chunk_clips(121 + 72 + 10, ClipConfig.official())
    assert [s.num_new for s in spans] == [121, 72, 10]
    with pytest.raises(InvalidInputError):
        chunk_clips(0)
    with pytest.raises(InvalidInputError):
        ClipConfig(first_clip_frames=10, clip_frames=9, preceding_frames=9)


def test_out_and_back_path_is_closed_and_travels():
    p = out_and_back_path(np.eye(4), 101)
    assert p.shape == (101, 4, 4)
    assert np.allclose(p[0], np.eye(4)) and np.allclose(p[-1], np.eye(4))
    assert np.linalg.norm(np.diff(p[:, :3, 3], axis=0), axis=1).sum() >= 1.5
    assert max(rotation_angle_deg(p[0], q) for q in p) >= 90.0


def test_a_turn_about_a_measured_up_keeps_the_horizon_of_a_pitched_and_rolled_camera():
    """``level_pose`` splits a camera into a level base, pitch and roll; an integrator resumed on it reproduces the
    pose exactly and turns about ``up``: the camera's pitch and roll against ``up`` stay as they were. On the
    camera's own axes the same turn rolls the horizon (a photo taken 12 degrees down, turned 90 degrees: rolled by
    about 12 degrees)."""
    from spatia.world.actions import level_pose

    rng = np.random.default_rng(3)
    up = np.array([0.1, -1.0, 0.2]) / np.linalg.norm([0.1, -1.0, 0.2])
    for _ in range(5):
        a, b = rng.uniform(-0.3, 0.3, 2)  # pitch and roll up to ~17 degrees
        yaw = rng.uniform(-math.pi, math.pi)
        base, _, _ = level_pose(np.eye(4), up)
        R = base[:3, :3] @ _rot(1, yaw) @ _rot(0, a) @ _rot(2, b)
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = R, rng.normal(size=3)
        integ = ActionIntegrator.resumed(c2w, c2w, ControlConfig(fps=10), up=up)
        assert np.allclose(integ.c2w, c2w, atol=1e-9)
        x_up, z_up = c2w[:3, 0] @ up, c2w[:3, 2] @ up
        for pose in integ.run([Action(yaw_rate_rad_s=math.pi / 2, move_forward=1.0, dt_s=1.0)]):
            assert pose[:3, 0] @ up == pytest.approx(x_up, abs=1e-9)
            assert pose[:3, 2] @ up == pytest.approx(z_up, abs=1e-9)
        assert abs(float((integ.c2w[:3, 3] - c2w[:3, 3]) @ up)) < 1e-9  # walking stays level too
    # the first camera's own axes: a 12 degree pitch becomes a roll at 90 degrees
    c2w = np.eye(4)
    c2w[:3, :3] = _rot(0, math.radians(-12.0))
    up = np.array([0.0, -1.0, 0.0])
    own = ActionIntegrator(c2w, ControlConfig(fps=10)).run([Action(yaw_rate_rad_s=math.pi / 2, dt_s=1.0)])[-1]
    level = ActionIntegrator.resumed(c2w, c2w, ControlConfig(fps=10), up=up).run(
        [Action(yaw_rate_rad_s=math.pi / 2, dt_s=1.0)])[-1]
    assert abs(own[:3, 0] @ up) > math.sin(math.radians(11.0))
    assert abs(level[:3, 0] @ up) < 1e-9


def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R
