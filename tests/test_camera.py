import json
import math

import numpy as np
import pytest

from spatia.world.camera import (
    Intrinsics,
    interpolate_pose,
    interpolate_trajectory,
    invert_pose,
    load_official_intrinsics,
    load_official_w2c,
    load_trajectory,
    look_at,
    rotation_angle_deg,
    save_official_w2c,
    save_trajectory,
    translation_distance_m,
    validate_pose,
    validate_trajectory,
)
from spatia.world.errors import InvalidInputError, NotFoundError

CASES = __import__("pathlib").Path(__file__).resolve().parents[1] / "assets" / "cases"


def _rot_y(a):
    T = np.eye(4)
    T[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    return T


def test_intrinsics_forms_round_trip():
    K = Intrinsics(500.0, 510.0, 320.0, 180.0, 640, 360)
    assert np.allclose(K.matrix, [[500, 0, 320], [0, 510, 180], [0, 0, 1]])
    n = K.to_normalized()
    assert np.allclose(n, [500 / 640, 510 / 360, 0.5, 0.5])
    assert Intrinsics.from_normalized(n, 640, 360) == K
    assert Intrinsics.from_matrix(K.matrix, 640, 360) == K
    half = K.scaled(320, 180)
    assert (half.fx, half.cx, half.width) == (250.0, 160.0, 320)


def test_intrinsics_from_fov():
    K = Intrinsics.from_fov(90.0, 640, 480)
    assert K.fx == pytest.approx(320.0)
    assert K.fov_x_deg == pytest.approx(90.0)


@pytest.mark.parametrize("bad", [dict(fx=0.0), dict(fy=-1.0), dict(fx=float("nan")), dict(width=0), dict(height=-5)])
def test_intrinsics_reject_non_positive(bad):
    args = dict(fx=500.0, fy=500.0, cx=320.0, cy=240.0, width=640, height=480) | bad
    with pytest.raises(InvalidInputError):
        Intrinsics(**args)


def test_validate_pose_rejects_nan_and_non_rigid():
    with pytest.raises(InvalidInputError, match="NaN"):
        validate_pose(np.full((4, 4), np.nan))
    scaled = np.eye(4)
    scaled[0, 0] = 2.0
    with pytest.raises(InvalidInputError, match="not rigid"):
        validate_pose(scaled)
    mirror = np.diag([1.0, 1.0, -1.0, 1.0])
    with pytest.raises(InvalidInputError, match="not rigid"):
        validate_pose(mirror)
    with pytest.raises(InvalidInputError, match="4x4"):
        validate_pose(np.eye(3))
    with pytest.raises(InvalidInputError, match="empty"):
        validate_trajectory(np.zeros((0, 4, 4)))


def test_look_at_points_camera_z_at_target_with_y_down():
    T = look_at([0, 0, 0], [0, 0, 5])
    assert np.allclose(T[:3, :3], np.eye(3))
    T = look_at([1, -2, 0], [1, -2, 3])
    assert np.allclose(T[:3, 2], [0, 0, 1]) and np.allclose(T[:3, 1], [0, 1, 0])
    T = look_at([0, 0, 0], [1, 0, 0])  # turning right from +z looks along +x
    assert np.allclose(T[:3, 2], [1, 0, 0])
    validate_pose(T)


def test_invert_pose_batched():
    poses = np.stack([_rot_y(0.3), look_at([1, 2, 3], [0, 0, 0])])
    inv = invert_pose(poses)
    assert np.allclose(inv @ poses, np.eye(4))


def test_slerp_interpolation_halfway_and_endpoints():
    a, b = _rot_y(0.0), _rot_y(1.0)
    b[:3, 3] = [2.0, 0.0, 0.0]
    mid = interpolate_pose(a, b, 0.5)
    assert rotation_angle_deg(a, mid) == pytest.approx(math.degrees(0.5))
    assert np.allclose(mid[:3, 3], [1.0, 0.0, 0.0])
    assert np.allclose(interpolate_pose(a, b, 0.0), a) and np.allclose(interpolate_pose(a, b, 1.0), b)
    traj = interpolate_trajectory(np.stack([a, b]), 4)
    assert traj.shape == (5, 4, 4)
    angles = [rotation_angle_deg(traj[i], traj[i + 1]) for i in range(4)]
    assert np.allclose(angles, angles[0])  # constant angular speed


def test_official_case_files_load_as_c2w():
    case = CASES / "case_1"
    c2w = load_official_w2c(case / "w2c.txt")
    assert c2w.ndim == 3 and c2w.shape[1:] == (4, 4) and len(c2w) > 50
    assert rotation_angle_deg(np.eye(4), c2w[0]) < 0.1  # line 1 is (nearly) the identity
    K = load_official_intrinsics(case / "intrinsics.txt", 1248, 704)
    assert K.width == 1248 and 0.4 * 1248 < K.cx < 0.6 * 1248


def test_official_w2c_round_trip(tmp_path):
    poses = np.stack([_rot_y(0.1 * i) for i in range(5)])
    poses[:, :3, 3] = np.arange(15).reshape(5, 3) * 0.1
    save_official_w2c(tmp_path / "w2c.txt", poses)
    first = json.loads((tmp_path / "w2c.txt").read_text().splitlines()[1])
    assert np.allclose(first, invert_pose(poses[1]))
    assert np.allclose(load_official_w2c(tmp_path / "w2c.txt"), poses)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_own_trajectory_format_round_trip(tmp_path, suffix):
    poses = np.stack([look_at([i * 0.1, 0, 0], [i * 0.1, 0, 1]) for i in range(4)])
    K = Intrinsics.from_fov(60, 320, 240)
    save_trajectory(tmp_path / f"t{suffix}", poses, K)
    back, K2 = load_trajectory(tmp_path / f"t{suffix}")
    assert np.allclose(back, poses) and K2 == K


def test_trajectory_file_errors(tmp_path):
    with pytest.raises(NotFoundError):
        load_trajectory(tmp_path / "missing.json")
    (tmp_path / "w2c.txt").write_text("[[1, 0], [0, 1]]\n")
    with pytest.raises(InvalidInputError, match="4x4"):
        load_official_w2c(tmp_path / "w2c.txt")
    (tmp_path / "bad.txt").write_text("not json\n")
    with pytest.raises(InvalidInputError, match="bad.txt:1"):
        load_official_w2c(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(InvalidInputError, match="empty"):
        load_official_w2c(tmp_path / "empty.txt")
    (tmp_path / "t.json").write_text(json.dumps({"c2w": [np.full((4, 4), 2.0).tolist()]}))
    with pytest.raises(InvalidInputError):
        load_trajectory(tmp_path / "t.json")
    with pytest.raises(InvalidInputError, match=".json or .npz"):
        save_trajectory(tmp_path / "t.csv", np.eye(4)[None])


def test_translation_distance():
    a, b = np.eye(4), np.eye(4)
    b[:3, 3] = [3, 4, 0]
    assert translation_distance_m(a, b) == pytest.approx(5.0)
