"""world.odometry: Open3D RGB-D odometry glue and the numpy photometric check, on a tiny textured two-plane scene."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import perturbation
from spatia.world.camera import Intrinsics, invert_pose, look_at, rotation_angle_deg, translation_distance_m
from spatia.world.errors import InvalidInputError
from spatia.world.geometry import pixel_rays
from spatia.world.odometry import depth_edge_free, photometric_residual, rgb_to_intensity, rgbd_odometry

INTR = Intrinsics.from_fov(70.0, 160, 120)


def _texture(points: np.ndarray, seed: int) -> np.ndarray:
    """[N, 3] world points -> [N, 3] uint8: smooth random sinusoids (wavelengths 0.25-1.5 m), rich in gradients."""
    rng = np.random.default_rng(seed)
    out = np.zeros((points.shape[0], 3))
    for ch in range(3):
        for _ in range(6):
            k = rng.normal(size=3) * rng.uniform(4.0, 25.0)  # rad/m
            out[:, ch] += np.sin(points @ k + rng.uniform(0.0, 2 * np.pi))
    return np.clip(128 + 127 * np.tanh(out / 2.5), 0, 255).astype(np.uint8)


def render_two_planes(intrinsics: Intrinsics, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact render of a back wall z = 3 m and a floor y = 1 m (y down), by ray-plane intersection."""
    rays = pixel_rays(intrinsics) @ c2w[:3, :3].T  # [H, W, 3] world directions scaled so that t = z-depth
    origin = c2w[:3, 3]
    depth = np.full(rays.shape[:2], np.inf)
    rgb = np.zeros(rays.shape[:2] + (3,), np.uint8)
    for seed, (normal, offset) in enumerate([(np.array([0.0, 0, 1]), 3.0), (np.array([0.0, 1, 0]), 1.0)]):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (offset - origin @ normal) / (rays @ normal)
        hit = (t > 1e-6) & (t < depth)
        depth[hit] = t[hit]
        rgb[hit] = _texture(origin + t[hit][:, None] * rays[hit], seed)
    return rgb, np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)


def _reference_photometric_rmse(src_rgb, src_depth, tgt_rgb, intr: Intrinsics, T) -> tuple[float, int]:
    """Per-pixel loop: unproject (pixel centres at +0.5), transform, project, bilinear lookup."""
    I_s, I_t = rgb_to_intensity(src_rgb), rgb_to_intensity(tgt_rgb)
    errs = []
    for v in range(intr.height):
        for u in range(intr.width):
            z = float(src_depth[v, u])
            if z <= 0:
                continue
            p = np.array([(u + 0.5 - intr.cx) / intr.fx * z, (v + 0.5 - intr.cy) / intr.fy * z, z])
            q = T[:3, :3] @ p + T[:3, 3]
            if q[2] <= 1e-6:
                continue
            x = intr.fx * q[0] / q[2] + intr.cx - 0.5
            y = intr.fy * q[1] / q[2] + intr.cy - 0.5
            if not (-1e-6 <= x <= intr.width - 1 + 1e-6 and -1e-6 <= y <= intr.height - 1 + 1e-6):
                continue
            x, y = min(max(x, 0.0), intr.width - 1), min(max(y, 0.0), intr.height - 1)
            x0, y0 = min(int(np.floor(x)), intr.width - 2), min(int(np.floor(y)), intr.height - 2)
            ax, ay = x - x0, y - y0
            val = (I_t[y0, x0] * (1 - ax) * (1 - ay) + I_t[y0, x0 + 1] * ax * (1 - ay)
                   + I_t[y0 + 1, x0] * (1 - ax) * ay + I_t[y0 + 1, x0 + 1] * ax * ay)
            errs.append(val - I_s[v, u])
    return float(np.sqrt(np.mean(np.square(errs)))), len(errs)


def test_photometric_residual_matches_reference_and_is_zero_for_identical_views():
    intr = Intrinsics.from_fov(70.0, 24, 18)
    pose = look_at([0.1, 0.0, 0.0], [0.0, 0.4, 3.0])
    rgb, depth = render_two_planes(intr, pose)
    same = photometric_residual(rgb, depth, rgb, intr, np.eye(4))
    assert same.rmse < 1e-12 and same.overlap == int((depth > 0).sum()) and same.overlap_fraction == 1.0

    other = pose @ perturbation(2.0, 0.03, seed=1)
    rgb2, _ = render_two_planes(intr, other)
    T = invert_pose(other) @ pose  # source camera -> target camera
    fast = photometric_residual(rgb, depth, rgb2, intr, T)
    ref_rmse, ref_n = _reference_photometric_rmse(rgb, depth, rgb2, intr, T)
    assert fast.overlap == ref_n
    np.testing.assert_allclose(fast.rmse, ref_rmse, rtol=1e-9)


@pytest.mark.parametrize("use_depth_term", [True, False])
def test_rgbd_odometry_recovers_relative_motion(use_depth_term):
    source_pose = look_at([0.3, 0.2, -0.5], [0.0, 0.3, 3.0])
    target_pose = source_pose @ perturbation(3.0, 0.05, seed=7)
    src_rgb, src_depth = render_two_planes(INTR, source_pose)
    tgt_rgb, tgt_depth = render_two_planes(INTR, target_pose)
    result = rgbd_odometry(src_rgb, src_depth, tgt_rgb, tgt_depth, INTR, use_depth_term=use_depth_term)
    truth = invert_pose(target_pose) @ source_pose  # p_target = T p_source
    assert result.success
    assert result.num_correspondences > 0.5 * INTR.width * INTR.height
    recovered = source_pose @ invert_pose(result.source_to_target)
    assert rotation_angle_deg(recovered, target_pose) < 0.3
    assert translation_distance_m(recovered, target_pose) < 0.01
    assert np.abs(result.source_to_target - truth).max() < 0.02
    # The check agrees: the recovered motion explains the target far better than no motion does.
    before = photometric_residual(src_rgb, src_depth, tgt_rgb, INTR, np.eye(4)).rmse
    after = photometric_residual(src_rgb, src_depth, tgt_rgb, INTR, result.source_to_target).rmse
    assert after < 0.3 * before


def test_bad_shapes_are_rejected_by_name():
    rgb, depth = render_two_planes(INTR, np.eye(4))
    with pytest.raises(InvalidInputError, match="target depth"):
        rgbd_odometry(rgb, depth, rgb, depth[:-1], INTR)
    with pytest.raises(InvalidInputError, match="source rgb"):
        rgbd_odometry(rgb.astype(np.float32), depth, rgb, depth, INTR)
    with pytest.raises(InvalidInputError, match="init_source_to_target"):
        rgbd_odometry(rgb, depth, rgb, depth, INTR, init_source_to_target=np.eye(3))


@pytest.mark.parametrize("window_px", [1, 3, 5])
def test_depth_edge_free_matches_per_pixel_reference(window_px):
    rng = np.random.default_rng(window_px)
    depth = rng.choice([1.0, 1.02, 1.5, 3.0], size=(13, 17)).astype(np.float32)
    depth[rng.uniform(size=depth.shape) < 0.2] = 0.0
    fast = depth_edge_free(depth, window_px, 0.05)
    r = window_px // 2
    slow = np.zeros_like(fast)
    for y in range(depth.shape[0]):
        for x in range(depth.shape[1]):
            win = depth[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            known = win[win > 0]
            slow[y, x] = depth[y, x] > 0 and not known.max() > known.min() * 1.05
    np.testing.assert_array_equal(fast, slow)
    with pytest.raises(InvalidInputError, match="odd"):
        depth_edge_free(depth, 4)
