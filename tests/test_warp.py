import numpy as np
import pytest

from spatia.world.camera import Intrinsics, look_at
from spatia.world.errors import InvalidInputError
from spatia.world.warp import warp_rgbd, warp_rgbd_reference


def _frame(seed=0, w=48, h=36):
    rng = np.random.default_rng(seed)
    rgb = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    depth = (2.0 + rng.random((h, w))).astype(np.float32)
    depth[rng.random((h, w)) < 0.1] = 0.0  # unknown pixels
    return rgb, depth, Intrinsics.from_fov(70, w, h)


def test_identity_warp_copies_the_frame():
    rgb, depth, K = _frame()
    out = warp_rgbd(rgb, depth, K, np.eye(4), K, np.eye(4))
    known = depth > 0
    assert np.array_equal(out.rgb[known], rgb[known])
    assert np.allclose(out.depth_m[known], depth[known], rtol=1e-5)


@pytest.mark.parametrize("pose_seed", [0, 1, 2, 3])
def test_fast_warp_matches_reference(pose_seed):
    rgb, depth, K = _frame(pose_seed)
    rng = np.random.default_rng(100 + pose_seed)
    eye = rng.normal(0, 0.2, 3)
    dst_pose = look_at(eye, [rng.normal(0, 0.3), rng.normal(0, 0.3), 2.5])
    K_dst = Intrinsics.from_fov(60, 40, 30)
    fast = warp_rgbd(rgb, depth, K, np.eye(4), K_dst, dst_pose)
    ref = warp_rgbd_reference(rgb, depth, K, np.eye(4), K_dst, dst_pose)
    assert np.array_equal(fast.valid, ref.valid)
    assert np.array_equal(fast.depth_m, ref.depth_m)
    assert np.array_equal(fast.rgb, ref.rgb)


def test_nearer_surface_wins():
    K = Intrinsics.from_fov(60, 20, 20)
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[:, :10] = 200
    depth = np.full((20, 20), 4.0, np.float32)
    depth[:, :10] = 1.0  # left half is near
    moved = np.eye(4)
    moved[0, 3] = 0.4  # step right: near pixels slide over far ones
    out = warp_rgbd(rgb, depth, K, np.eye(4), K, moved)
    overlap = out.valid & (out.depth_m < 2.0)
    assert overlap.any() and np.all(out.rgb[overlap] == 200)


def test_bad_shapes_raise():
    rgb, depth, K = _frame()
    with pytest.raises(InvalidInputError):
        warp_rgbd(rgb[:10], depth, K, np.eye(4), K, np.eye(4))
    with pytest.raises(InvalidInputError):
        warp_rgbd(rgb, depth[:, :5], K, np.eye(4), K, np.eye(4))
