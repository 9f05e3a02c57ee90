"""Photo layout (model/fill/geometry/photo.py): up, focal and depth measured from one RGB image against procedural truth."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import structlog

from spatia.model.fill.geometry.photo import (
    PhotoLayoutConfig,
    PhotoLayoutDepth,
    boundary_dp,
    boundary_dp_reference,
    estimate_layout,
)
from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError
from spatia.world.scenes import make_scene

K75 = Intrinsics.from_fov(75.0, 640, 360)


def _pitched(c2w: np.ndarray, pitch_down_deg: float, yaw_deg: float) -> np.ndarray:
    """The start pose pitched down about the camera's x axis, then turned about world y (down)."""
    p, y = math.radians(pitch_down_deg), math.radians(yaw_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    T = c2w.copy()
    T[:3, :3] = ry @ c2w[:3, :3] @ rx
    return T


@functools.lru_cache(maxsize=None)
def _render(name: str, pitch_down_deg: float, yaw_deg: float):
    scene = make_scene(name, 0)
    c2w = _pitched(scene.start_pose(), pitch_down_deg, yaw_deg)
    rgb, depth = scene.render(K75, c2w)
    rgb.flags.writeable = depth.flags.writeable = False  # cached: shared between tests
    up_true = -(c2w[:3, :3].T @ np.array([0.0, 1.0, 0.0]))  # world y is down; up in the camera frame
    return rgb, depth, up_true


# (scene, pitch down, yaw, AbsRel bound): measured 0.15 / 0.07 / 0.19 / 0.07 when written (benchmarks/photo_layout.py)
CASES = [
    ("room", 12.0, 0.0, 0.25),
    ("house", 12.0, 0.0, 0.12),
    ("courtyard", 12.0, 0.0, 0.25),
    ("courtyard", 10.0, 35.0, 0.12),
]


@pytest.mark.parametrize("name,pitch,yaw,absrel_max", CASES)
def test_layout_matches_procedural_truth(name, pitch, yaw, absrel_max):
    rgb, depth_true, up_true = _render(name, pitch, yaw)
    layout = estimate_layout(rgb)  # no intrinsics: the focal is measured
    assert layout.focal_source == "vanishing_points"
    assert abs(layout.intrinsics.fx / K75.fx - 1.0) < 0.15
    angle = math.degrees(math.acos(float(np.clip(layout.up_cam @ up_true, -1, 1))))
    assert angle < 3.0, f"up off by {angle:.1f} deg"
    assert abs(layout.pitch_deg - pitch) < 3.0
    assert layout.confidence >= PhotoLayoutConfig().min_confidence
    real = (depth_true > 0) & (depth_true < 60.0) & ~layout.sky_mask  # sky dome / far ground excluded
    absrel = float(np.mean(np.abs(layout.depth_m[real] - depth_true[real]) / depth_true[real]))
    assert absrel < absrel_max, f"{name}: AbsRel {absrel:.3f}"
    # the floor plane is the scale rule: 1.6 m below the eye, normal = -up
    floor = layout.planes[0]
    assert floor.kind == "floor" and floor.offset_m == pytest.approx(1.6)
    np.testing.assert_allclose(floor.normal_cam, -layout.up_cam)
    assert any(p.kind == "wall" for p in layout.planes)


def test_sky_is_found_outdoors_only():
    rgb, depth_true, _ = _render("courtyard", 0.0, 0.0)
    sky_true = depth_true > 60.0  # the dome
    layout = estimate_layout(rgb, K75)
    assert sky_true.any()
    recall = float((layout.sky_mask & sky_true).sum() / sky_true.sum())
    false_pos = float((layout.sky_mask & ~sky_true).sum() / max(1, layout.sky_mask.sum()))
    assert recall > 0.6 and false_pos < 0.1, (recall, false_pos)
    assert np.all(layout.depth_m[layout.sky_mask] == PhotoLayoutConfig().sky_depth_m)
    room, _, _ = _render("room", 12.0, 0.0)
    assert not estimate_layout(room, K75).sky_mask.any()


def test_estimator_protocol_and_given_intrinsics_are_kept():
    rgb, _, _ = _render("house", 12.0, 0.0)
    est = PhotoLayoutDepth().estimate(rgb, K75)
    assert est.source == "photo_layout" and est.is_metric and est.approximate
    assert est.intrinsics == K75
    assert est.depth_m.shape == (360, 640) and est.depth_m.dtype == np.float32 and (est.depth_m > 0).all()
    again = PhotoLayoutDepth().estimate(rgb, K75)  # seeded RANSAC: same image, same depth
    np.testing.assert_array_equal(est.depth_m, again.depth_m)


def test_featureless_image_falls_back_to_the_planar_prior():
    rng = np.random.default_rng(0)
    flat = np.clip(128 + rng.normal(0, 3, (180, 320, 3)), 0, 255).astype(np.uint8)
    K = Intrinsics.from_fov(60.0, 320, 180)
    with structlog.testing.capture_logs() as logs:
        est = PhotoLayoutDepth().estimate(flat, K)
    assert est.source == "planar_prior(photo_fallback)" and est.approximate
    events = [e for e in logs if e["event"] == "photo_layout_fallback"]
    assert events and events[0]["log_level"] == "warning" and events[0]["confidence"] < 0.35
    from spatia.world.depth import planar_prior_depth

    np.testing.assert_array_equal(est.depth_m, planar_prior_depth(K))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64, 3), np.float32),  # not uint8
        np.zeros((64, 64), np.uint8),  # not RGB
        np.zeros((64, 64, 4), np.uint8),  # RGBA
        np.zeros((16, 200, 3), np.uint8),  # too small
    ],
)
def test_bad_images_are_rejected(bad):
    with pytest.raises(InvalidInputError):
        estimate_layout(bad)


def test_bad_intrinsics_and_config_are_rejected():
    rgb = np.zeros((90, 160, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="intrinsics are for"):
        estimate_layout(rgb, Intrinsics.from_fov(60.0, 320, 180))
    with pytest.raises(InvalidInputError):
        PhotoLayoutDepth().estimate(rgb, "60 degrees")
    with pytest.raises(InvalidInputError):
        PhotoLayoutConfig(camera_height_m=0.0)
    with pytest.raises(InvalidInputError):
        PhotoLayoutConfig(min_fov_deg=70.0)


def test_boundary_dp_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        score = rng.normal(size=(4, 5))
        smooth, jump = float(rng.uniform(0.1, 1.0)), float(rng.uniform(0.5, 2.0))
        fast, ref = boundary_dp(score, smooth, jump), boundary_dp_reference(score, smooth, jump)

        def value(rows):
            return score[rows, np.arange(5)].sum() - np.minimum(smooth * np.abs(np.diff(rows)), jump).sum()

        assert value(fast) == pytest.approx(value(ref))  # ties may pick different rows, never a worse value


def test_ceiling_is_measured_in_a_level_room():
    rgb, depth_true, _ = _render("room", 0.0, 35.0)
    layout = estimate_layout(rgb)
    ceilings = [p for p in layout.planes if p.kind == "ceiling"]
    assert len(ceilings) == 1 and layout.ceiling_mask.any()
    scene = make_scene("room", 0)
    headroom_true = float(-scene.vertices[:, 1].min()) - 1.6  # world y is down; the eye is 1.6 m up
    assert abs(ceilings[0].offset_m / headroom_true - 1.0) < 0.15
    np.testing.assert_allclose(ceilings[0].normal_cam, layout.up_cam)
    c = layout.ceiling_mask & (depth_true > 0)
    absrel = float(np.mean(np.abs(layout.depth_m[c] - depth_true[c]) / depth_true[c]))
    assert absrel < 0.25, absrel


def test_world_from_image_uses_the_measured_focal_and_the_layout_is_recoverable():
    """``World.from_image`` takes the measured intrinsics; the fill can re-derive the layout from
    ``world.first_image`` and ``world.intrinsics``: same planes, same depth."""
    from spatia.world.state import World

    rgb, _, _ = _render("courtyard", 10.0, 35.0)
    estimator = PhotoLayoutDepth()
    world = World.from_image(rgb, depth_estimator=estimator)
    assert abs(world.intrinsics.fx / K75.fx - 1.0) < 0.15  # not the 60 degree default (fx 554)
    again = estimate_layout(world.first_image, world.intrinsics)
    np.testing.assert_array_equal(again.depth_m, estimator.last_layout.depth_m)
    np.testing.assert_allclose(again.up_cam, estimator.last_layout.up_cam)
    assert [p.kind for p in again.planes] == [p.kind for p in estimator.last_layout.planes]


def test_unmeasurable_focal_falls_back_unless_intrinsics_are_given():
    rgb, _, _ = _render("room", 0.0, 0.0)  # level and frontal: no pair of vanishing points gives the focal
    with structlog.testing.capture_logs() as logs:
        est = PhotoLayoutDepth().estimate_uncalibrated(rgb)
    assert est.source == "planar_prior(photo_fallback)"
    assert any(e["event"] == "photo_layout_fallback" and e["terms"]["focal"] < 1.0 for e in logs)
    assert PhotoLayoutDepth().estimate(rgb, K75).source == "photo_layout"  # known intrinsics: the layout is used
