"""Depth for a first image: user depth, a tiny random transformers model, relative->depth mapping, planar prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import structlog

from spatia.world.camera import DEFAULT_FOV_DEG, Intrinsics
from spatia.world.depth import (
    DepthEstimate,
    DepthEstimator,
    PlanarPriorConfig,
    PlanarPriorDepth,
    RelativeDepthRange,
    TransformersDepth,
    UserDepth,
    default_intrinsics,
    disparity_to_depth,
    planar_prior_depth,
)
from spatia.world.errors import InvalidInputError, NotFoundError
from spatia.world.images import depth_to_png16

W, H = 64, 48


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


@pytest.fixture
def K() -> Intrinsics:
    return default_intrinsics(W, H)


def test_default_intrinsics_use_the_stated_fov():
    K = default_intrinsics(640, 480)
    assert K.fov_x_deg == pytest.approx(DEFAULT_FOV_DEG)
    assert (K.cx, K.cy) == (320.0, 240.0) and K.fx == K.fy


def test_depth_estimate_validates():
    with pytest.raises(InvalidInputError, match="float32"):
        DepthEstimate(np.ones((2, 2)), True, "x", False)  # float64
    with pytest.raises(InvalidInputError, match=">= 0"):
        DepthEstimate(-np.ones((2, 2), np.float32), True, "x", False)


# --- user depth --------------------------------------------------------------------------------------------------


def test_user_depth_from_array_and_png(rgb, K, tmp_path):
    depth = np.random.default_rng(2).uniform(0.5, 4.0, size=(H, W)).astype(np.float32)
    est = UserDepth(depth).estimate(rgb, K)
    assert isinstance(UserDepth(depth), DepthEstimator)
    assert est.is_metric and not est.approximate and est.source == "user"
    np.testing.assert_array_equal(est.depth_m, depth)
    path = tmp_path / "depth.png"
    path.write_bytes(depth_to_png16(depth))
    np.testing.assert_allclose(UserDepth(path).estimate(rgb, K).depth_m, depth, atol=5e-4)


def test_user_depth_size_and_value_checks(rgb, K):
    with pytest.raises(InvalidInputError, match=r"32x24.*64x48"):
        UserDepth(np.ones((24, 32), np.float32)).estimate(rgb, K)
    with pytest.raises(InvalidInputError, match="negative"):
        UserDepth(-np.ones((H, W), np.float32))
    with pytest.raises(InvalidInputError, match="no valid"):
        UserDepth(np.zeros((H, W), np.float32)).estimate(rgb, K)
    with pytest.raises(InvalidInputError, match=r"intrinsics are for 32x24"):
        UserDepth(np.ones((H, W), np.float32)).estimate(rgb, default_intrinsics(32, 24))
    nan_depth = np.ones((H, W), np.float32)
    nan_depth[0, 0] = np.nan
    assert UserDepth(nan_depth).estimate(rgb, K).depth_m[0, 0] == 0.0


# --- relative disparity -> depth -------------------------------------------------------------------------------


def _reference_disparity_to_depth(disp: np.ndarray, r: RelativeDepthRange) -> np.ndarray:
    """Per-pixel loop: normalise by the percentile range, clamp, interpolate in inverse depth."""
    lo = np.percentile(disp, r.low_percentile)
    hi = np.percentile(disp, r.high_percentile)
    out = np.empty(disp.shape, np.float32)
    for i in range(disp.shape[0]):
        for j in range(disp.shape[1]):
            t = min(1.0, max(0.0, (disp[i, j] - lo) / (hi - lo)))
            out[i, j] = 1.0 / ((1 - t) / r.far_m + t / r.near_m)
    return out


def test_disparity_to_depth_matches_reference():
    disp = np.random.default_rng(3).gamma(2.0, 1.0, size=(12, 17))
    r = RelativeDepthRange(near_m=0.4, far_m=15.0)
    out = disparity_to_depth(disp, r)
    np.testing.assert_allclose(out, _reference_disparity_to_depth(disp, r), rtol=1e-5)
    assert out.min() >= 0.4 - 1e-6 and out.max() <= 15.0 + 1e-4
    # larger disparity = nearer
    i, j = np.unravel_index(np.argmax(disp), disp.shape)
    assert out[i, j] == pytest.approx(0.4, rel=1e-5)


def test_disparity_to_depth_degenerate_input():
    flat = disparity_to_depth(np.full((3, 4), 7.0))
    np.testing.assert_allclose(flat, math.sqrt(0.5 * 20.0), rtol=1e-6)
    with pytest.raises(InvalidInputError):
        disparity_to_depth(np.full((3, 4), np.nan))
    with pytest.raises(InvalidInputError):
        RelativeDepthRange(near_m=2.0, far_m=1.0)


# --- tiny random transformers model ----------------------------------------------------------------------------


def _save_tiny_depth_anything(directory, depth_estimation_type: str) -> None:
    """A random Depth Anything (a tiny config of the transformers classes), saved for offline loading."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(
        image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, patch_size=14, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type=depth_estimation_type, max_depth=20,
    )
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():  # random weights with enough spread that the output varies across the image
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(directory)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14).save_pretrained(
        directory
    )


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    pytest.importorskip("transformers")
    dirs = {}
    for kind in ("metric", "relative"):
        d = tmp_path_factory.mktemp(f"tiny_depth_anything_{kind}")
        _save_tiny_depth_anything(d, kind)
        dirs[kind] = d
    return dirs


def test_transformers_metric_model(tiny_models, rgb, K):
    est = TransformersDepth(tiny_models["metric"]).estimate(rgb, K)
    assert est.depth_m.shape == (H, W) and est.depth_m.dtype == np.float32
    assert est.is_metric and not est.approximate
    assert est.source == "transformers:depth_anything"
    d = est.depth_m
    # metric Depth Anything: sigmoid * max_depth, so within [0, 20]; exact 0 would be "unknown"
    assert np.isfinite(d).all() and (d >= 0).all() and d.max() <= 20.0 + 1e-4
    assert (d > 0).mean() > 0.5 and d.std() > 0


def test_transformers_relative_model_is_flagged_and_ranged(tiny_models, rgb, K):
    r = RelativeDepthRange(near_m=0.5, far_m=10.0)
    estimator = TransformersDepth(tiny_models["relative"], relative_range=r)
    with structlog.testing.capture_logs() as logs:
        est = estimator.estimate(rgb, K)
    assert not est.is_metric and est.approximate
    assert est.depth_m.shape == (H, W)
    assert est.depth_m.min() >= 0.5 - 1e-5 and est.depth_m.max() <= 10.0 + 1e-4
    assert any(entry["event"] == "relative_depth_scaled" for entry in logs)
    # deterministic: same image, same model -> same depth
    np.testing.assert_array_equal(estimator.estimate(rgb, K).depth_m, est.depth_m)


def test_transformers_missing_or_broken_dir(tmp_path, rgb, K):
    with pytest.raises(NotFoundError, match="config.json"):
        TransformersDepth(tmp_path / "no_model")
    (tmp_path / "config.json").write_text("{}")
    broken = TransformersDepth(tmp_path)
    assert isinstance(broken, DepthEstimator)
    with pytest.raises(InvalidInputError, match="not a loadable"):
        broken.estimate(rgb, K)


# --- planar prior ----------------------------------------------------------------------------------------------


def test_planar_prior_shape_positivity_and_horizon(rgb, K):
    cfg = PlanarPriorConfig(camera_height_m=1.5, wall_distance_m=5.0)
    prior = PlanarPriorDepth(cfg)
    with structlog.testing.capture_logs() as logs:
        est = prior.estimate(rgb, K)
    assert any(e["event"] == "planar_prior_depth" and e["log_level"] == "warning" for e in logs)
    d = est.depth_m
    assert d.shape == (H, W) and d.dtype == np.float32 and (d > 0).all()
    assert est.approximate and est.source == "planar_prior"
    horizon = prior.horizon_row(K)
    assert horizon == K.cy
    # at and above the horizon only the wall is seen; below it depth falls towards the bottom row
    above = np.arange(H) + 0.5 <= horizon
    np.testing.assert_allclose(d[above], 5.0)
    col = d[:, 7]
    assert np.all(np.diff(col[~above]) <= 0) and col[-1] < 5.0
    # bottom row: a floor point 1.5 m below the eye, exactly by similar triangles
    slope = (H - 0.5 - K.cy) / K.fy
    assert col[-1] == pytest.approx(min(5.0, 1.5 / slope), rel=1e-6)
    assert (d == d[:, :1]).all()  # a level plane's z-depth depends on the row only


def test_planar_prior_points_lie_on_the_floor():
    from spatia.world.geometry import depth_to_world_points

    K = Intrinsics.from_fov(70.0, 80, 60)
    cfg = PlanarPriorConfig(camera_height_m=1.6, wall_distance_m=50.0, ceiling_height_m=2.5)
    d = planar_prior_depth(K, cfg)
    pts, idx = depth_to_world_points(d, K, np.eye(4))  # camera frame: y down, floor at y = +1.6
    rows = idx // K.width
    slopes = (rows + 0.5 - K.cy) / K.fy
    floor = slopes > 1.6 / 50.0
    ceiling = slopes < -0.9 / 50.0
    np.testing.assert_allclose(pts[floor, 1], 1.6, rtol=1e-5)
    np.testing.assert_allclose(pts[ceiling, 1], -0.9, rtol=1e-5)


def test_planar_prior_config_checks():
    with pytest.raises(InvalidInputError):
        PlanarPriorConfig(camera_height_m=0.0)
    with pytest.raises(InvalidInputError, match="ceiling"):
        PlanarPriorConfig(camera_height_m=1.6, ceiling_height_m=1.0)
