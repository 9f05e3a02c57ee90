"""world.update: depth for generated frames, pose refinement against the memory, and the update loop.

The scene is a tiny exact one built here (textured axis-aligned rectangles, rendered by ray-plane intersection): a
back wall at z = 3 m, a floor at y = 1 m (y down) and a box whose front face is at z = 1.5 m, so that a sideways
step disoccludes part of the wall behind the box.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import perturbation
from spatia.world.camera import Intrinsics, look_at, rotation_angle_deg, translation_distance_m
from spatia.world.errors import InvalidInputError
from spatia.world.geometry import depth_to_world_points, pixel_rays, project_points
from spatia.world.update import (
    UpdateConfig,
    _reference_fill_holes_background,
    align_model_depth,
    align_scale_shift,
    depth_for_generated_frame,
    fill_holes_background,
    pinholes,
    refine_pose,
    splat_centre_mask,
    update_memory,
)
from spatia.world.memory import MemoryConfig, SpatialMemory
from spatia.world.scenes import make_scene

INTR = Intrinsics.from_fov(70.0, 160, 120)
HOME = look_at([0.0, 0.2, -0.5], [0.0, 0.3, 3.0])  # sees wall, floor and box

# (normal axis, plane offset, lower corner, upper corner) of axis-aligned rectangles, world frame, metres. Offsets
# sit off the 1 cm voxel boundaries (a plane exactly on one would flip between two voxel layers on round-off).
RECTS = [
    (2, 3.0037, (-3.0, -2.0), (3.0, 1.0037)),  # back wall z = 3: x in [-3, 3], y in [-2, 1]
    (1, 1.0037, (-3.0, -1.0), (3.0, 3.0037)),  # floor y = 1: x in [-3, 3], z in [-1, 3]
    (2, 1.5037, (-0.4037, -0.1037), (0.2037, 1.0037)),  # box front z = 1.5
    (0, -0.4037, (-0.1037, 1.5037), (1.0037, 2.1037)),  # box left side x = -0.4: y in [-0.1, 1], z in [1.5, 2.1]
    (0, 0.2037, (-0.1037, 1.5037), (1.0037, 2.1037)),  # box right side x = 0.2
    (1, -0.1037, (-0.4037, 1.5037), (0.2037, 2.1037)),  # box top y = -0.1: x in [-0.4, 0.2], z in [1.5, 2.1]
]


def _texture(points: np.ndarray, seed: int) -> np.ndarray:
    """[N, 3] world points -> [N, 3] uint8: smooth random sinusoids (wavelengths 0.25-1.5 m)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((points.shape[0], 3))
    for ch in range(3):
        for _ in range(6):
            k = rng.normal(size=3) * rng.uniform(4.0, 25.0)  # rad/m
            out[:, ch] += np.sin(points @ k + rng.uniform(0.0, 2 * np.pi))
    return np.clip(128 + 127 * np.tanh(out / 2.5), 0, 255).astype(np.uint8)


def _cast(origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit along ``origin + t * dirs`` (``dirs`` [..., 3]); returns (t [...] inf = miss, rect id [...])."""
    best = np.full(dirs.shape[:-1], np.inf)
    which = np.full(dirs.shape[:-1], -1)
    for i, (axis, offset, lo, hi) in enumerate(RECTS):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (offset - origin[axis]) / dirs[..., axis]
        p = origin + t[..., None] * dirs
        others = [a for a in range(3) if a != axis]
        inside = np.ones(t.shape, bool)
        for a, l, h in zip(others, lo, hi):
            inside &= (p[..., a] >= l) & (p[..., a] <= h)
        hit = (t > 1e-9) & inside & (t < best)
        best[hit], which[hit] = t[hit], i
    return best, which


def render_scene(intrinsics: Intrinsics, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (rgb [H, W, 3] uint8, z-depth [H, W] float32) of the scene."""
    rays = pixel_rays(intrinsics) @ c2w[:3, :3].T  # world directions with camera z = 1, so t = z-depth
    t, which = _cast(c2w[:3, 3], rays)
    rgb = np.zeros(t.shape + (3,), np.uint8)
    for i in range(len(RECTS)):
        m = which == i
        rgb[m] = _texture(c2w[:3, 3] + t[m][:, None] * rays[m], seed=i)
    return rgb, np.where(np.isfinite(t), t, 0.0).astype(np.float32)


def _seen_from(c2w_seen: np.ndarray, c2w_view: np.ndarray) -> np.ndarray:
    """[H, W] bool for camera ``c2w_view``: True where the surface it sees is also seen (unoccluded, in frame) from
    ``c2w_seen`` -- exactly what a memory built from ``c2w_seen`` alone can render."""
    _, depth = render_scene(INTR, c2w_view)
    pts, idx = depth_to_world_points(depth, INTR, c2w_view)
    uv, z = project_points(pts, INTR, c2w_seen)
    in_frame = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < INTR.width) & (uv[:, 1] >= 0) & (uv[:, 1] < INTR.height)
    t, _ = _cast(c2w_seen[:3, 3], pts - c2w_seen[:3, 3])  # t = 1 exactly at the point itself
    seen = np.zeros(depth.size, bool)
    seen[idx] = in_frame & (t > 1.0 - 1e-6)
    return seen.reshape(depth.shape)


# ---------------------------------------------------------------------------------------------------------------
# Hole fill
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_span_px", [None, 7])
def test_fill_matches_reference(seed, max_span_px):
    rng = np.random.default_rng(seed)
    H, W = 17, 23
    depth = np.repeat(rng.uniform(1.0, 4.0, size=(H, 1)), W, axis=1) + rng.uniform(0, 0.1, size=(H, W))
    depth[rng.integers(0, H) :, rng.integers(0, W) :] *= 0.4  # a near block: occlusion edges
    valid = rng.uniform(size=(H, W)) > 0.35
    valid[3:9, 5:15] = False  # one large hole
    valid[:, 20] = False
    valid[0] = False
    fast = fill_holes_background(depth.astype(np.float32), valid, 0.05, max_span_px)
    slow = _reference_fill_holes_background(depth.astype(np.float32), valid, 0.05, max_span_px)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=0)
    assert (fast[valid] == depth.astype(np.float32)[valid]).all()


def test_fill_disocclusion_takes_the_wall_not_the_box():
    # The memory was built from HOME; a step 0.35 m to the right reveals wall behind the box's right edge.
    moved = HOME.copy()
    moved[:3, 3] += HOME[:3, 0] * 0.35
    _, true_depth = render_scene(INTR, moved)
    seen = _seen_from(HOME, moved)
    disoccluded = ~seen & (true_depth > 0)
    _, surface = _cast(moved[:3, 3], pixel_rays(INTR) @ moved[:3, :3].T)
    wall_behind_box = disoccluded & (surface == 0) & (pixel_rays(INTR)[..., 0] < 0.25)  # not the frustum edge
    assert wall_behind_box.sum() > 100, "the step must disocclude a real patch of wall"

    filled = fill_holes_background(np.where(seen, true_depth, 0), seen, gap_rel=0.05)
    rel_err = np.abs(filled - true_depth) / true_depth
    assert np.median(rel_err[wall_behind_box]) < 0.01
    # Not one wall pixel got box depth (the box is <= 2.6 m from the camera, the wall >= 3.4 m).
    assert rel_err[wall_behind_box].max() < 0.05 and (filled[wall_behind_box] > 3.0).all()
    # What a nearest-neighbour fill would do, to show that the test is meaningful: some of it reaches the box.
    from scipy.ndimage import distance_transform_edt

    _, (iy, ix) = distance_transform_edt(~seen, return_indices=True)
    nearest = np.where(seen, true_depth, true_depth[iy, ix])
    assert (nearest[wall_behind_box] < 3.0).mean() > 0.2


def test_fill_interpolates_a_hole_in_a_continuous_surface():
    pose = look_at([1.9, -0.3, -0.5], [1.9, 1.0, 1.0])  # looking down at the floor, right of the box
    _, depth = render_scene(INTR, pose)
    _, surface = _cast(pose[:3, 3], pixel_rays(INTR) @ pose[:3, :3].T)
    valid = depth > 0
    valid[50:80, 60:110] = False
    assert (surface[50:80, 60:110] == 1).all()  # the hole is all floor, slanted in depth (1.7 to 2.4 m)
    filled = fill_holes_background(np.where(valid, depth, 0), valid)
    hole = ~valid & (depth > 0)
    assert np.max(np.abs(filled[hole] - depth[hole]) / depth[hole]) < 0.03


def test_fill_leaves_unknown_where_nothing_is_known():
    depth = np.zeros((5, 6), np.float32)
    out = fill_holes_background(depth, np.zeros((5, 6), bool))
    assert (out == 0).all() and out.dtype == np.float32


# ---------------------------------------------------------------------------------------------------------------
# Depth-model alignment
# ---------------------------------------------------------------------------------------------------------------


def test_scale_shift_recovers_affine_despite_outliers():
    rng = np.random.default_rng(3)
    target = rng.uniform(0.8, 6.0, size=(60, 80))
    model = (target - 0.7) / 2.5  # target = 2.5 * model + 0.7
    outliers = rng.uniform(size=target.shape) < 0.12
    model_noisy = np.where(outliers, model * rng.uniform(0.2, 3.0, size=target.shape), model)
    mask = rng.uniform(size=target.shape) > 0.1

    fit = align_scale_shift(model_noisy, target, mask, trim_fraction=0.2, iterations=4)
    assert fit.scale == pytest.approx(2.5, rel=1e-6) and fit.shift == pytest.approx(0.7, abs=1e-6)
    assert fit.rms_residual < 1e-6
    # Reference: ordinary least squares on exactly the inliers.
    keep = mask & ~outliers
    ref_scale, ref_shift = np.polyfit(model_noisy[keep], target[keep], 1)
    assert fit.scale == pytest.approx(ref_scale, rel=1e-6) and fit.shift == pytest.approx(ref_shift, abs=1e-6)
    # Without trimming the outliers bias the fit: the robust part is what does the work.
    plain = align_scale_shift(model_noisy, target, mask, percentile_range=(0.0, 100.0), iterations=0)
    assert abs(plain.scale - 2.5) > 0.05


def test_align_model_disparity_to_rendered_depth():
    rng = np.random.default_rng(4)
    depth = rng.uniform(1.0, 5.0, size=(40, 50)).astype(np.float32)
    disparity = 0.8 / depth + 0.05  # affine-invariant inverse depth, as relative depth models output
    config = UpdateConfig(model_depth_is_disparity=True)
    fit_mask = np.zeros(depth.shape, bool)
    fit_mask[:, :20] = True
    aligned = align_model_depth(disparity, depth, fit_mask, config)
    np.testing.assert_allclose(aligned, depth, rtol=1e-4)
    assert align_model_depth(disparity, depth, np.zeros_like(fit_mask), config) is None  # nothing to fit on


# ---------------------------------------------------------------------------------------------------------------
# depth_for_generated_frame
# ---------------------------------------------------------------------------------------------------------------


def _half_render(c2w: np.ndarray):
    rgb, depth = render_scene(INTR, c2w)
    valid = np.zeros(depth.shape, bool)
    valid[:, : INTR.width // 2] = True
    return rgb, depth, (rgb * valid[..., None], np.where(valid, depth, 0).astype(np.float32), valid)


def test_depth_choice_prefers_generator_depth():
    rgb, depth, rendered = _half_render(HOME)
    gen = depth.copy()
    gen[:5] = 0.0
    out = depth_for_generated_frame(rendered, rgb, generator_depth=gen, model_depth=depth * 7)
    np.testing.assert_array_equal(out, gen)


def test_depth_choice_uses_aligned_model_in_holes_fitted_on_static_pixels():
    rgb, depth, rendered = _half_render(HOME)
    # The generated frame has a person at 1 m in the left (rendered) half; the model sees it, the memory does not.
    dynamic = np.zeros(depth.shape, bool)
    dynamic[20:100, 10:70] = True
    model = 0.5 * depth - 0.2  # a relative model, affine in depth
    model[dynamic] = 0.5 * 1.0 - 0.2
    out = depth_for_generated_frame(rendered, rgb, model_depth=model, dynamic=dynamic)
    holes = ~rendered[2]
    np.testing.assert_allclose(out[holes], depth[holes], rtol=1e-4)
    np.testing.assert_array_equal(out[~holes], depth[~holes])  # the render is kept where valid
    # Fitted on the dynamic pixels too, the alignment is biased (those disagree with the static render).
    biased = depth_for_generated_frame(rendered, rgb, model_depth=model)
    assert np.median(np.abs(biased[holes] - depth[holes]) / depth[holes]) > 0.01


def test_depth_choice_fills_from_memory_without_a_model():
    rgb, depth, rendered = _half_render(HOME)
    out = depth_for_generated_frame(rendered, rgb)
    assert (out > 0).all()  # every hole row has a valid pixel to its left
    no_fill = depth_for_generated_frame(rendered, rgb, config=UpdateConfig(fill_holes=False))
    assert (no_fill[~rendered[2]] == 0).all()
    with pytest.raises(InvalidInputError, match="dynamic"):
        depth_for_generated_frame(rendered, rgb, dynamic=np.zeros((3, 3), bool))


# ---------------------------------------------------------------------------------------------------------------
# Pose refinement
# ---------------------------------------------------------------------------------------------------------------


def _memory_from(c2w_list, intrinsics: Intrinsics = INTR) -> SpatialMemory:
    memory = SpatialMemory(MemoryConfig(voxel_size_m=0.01))
    for k, pose in enumerate(c2w_list):
        rgb, depth = render_scene(intrinsics, pose)
        memory.integrate(rgb, depth, intrinsics, pose, frame_index=k)
    return memory


def _centre_render(memory: SpatialMemory, c2w: np.ndarray):
    render = memory.render(INTR, c2w, return_point_ids=True)
    centre = splat_centre_mask(render.point_ids, memory.positions, INTR, c2w)
    return render, (render.rgb, render.depth_m, render.valid & centre)


@pytest.mark.parametrize("with_frame_depth", [True, False])
def test_refine_pose_recovers_3deg_5cm_against_the_memory(with_frame_depth):
    memory = _memory_from([HOME])
    frame_rgb, frame_depth = render_scene(INTR, HOME)  # the frame truly taken at HOME
    for seed in range(3):
        init = HOME @ perturbation(3.0, 0.05, seed)  # ... but generated for a slightly different pose
        _, rendered = _centre_render(memory, init)  # the memory rendered at the commanded pose
        result = refine_pose(rendered, frame_rgb, frame_depth if with_frame_depth else None, INTR, init)
        assert result.accepted, result.reason
        assert rotation_angle_deg(result.c2w, HOME) < 0.5
        assert translation_distance_m(result.c2w, HOME) < 0.01
        assert result.residual_after < result.residual_before and result.ncc_after > 0.9
        assert result.rotation_deg == pytest.approx(rotation_angle_deg(init, result.c2w))


@pytest.mark.parametrize("scene_name", ["room", "house", "courtyard"])
def test_refine_pose_recovers_3deg_5cm_on_procedural_scenes(scene_name):
    scene = make_scene(scene_name, seed=0)
    home = scene.start_pose()
    frame_rgb, frame_depth = scene.render(INTR, home)
    memory = SpatialMemory(MemoryConfig(voxel_size_m=0.01))
    memory.integrate(frame_rgb, frame_depth, INTR, home, frame_index=0)
    for seed in range(3):
        init = home @ perturbation(3.0, 0.05, seed)
        render = memory.render(INTR, init, return_point_ids=True)
        centre = render.valid & splat_centre_mask(render.point_ids, memory.positions, INTR, init)
        result = refine_pose((render.rgb, render.depth_m, centre), frame_rgb, frame_depth, INTR, init)
        assert result.accepted, result.reason
        assert rotation_angle_deg(result.c2w, home) < 0.5
        assert translation_distance_m(result.c2w, home) < 0.01


def test_splat_centre_mask_matches_per_pixel_projection():
    memory = _memory_from([HOME])
    pose = HOME @ perturbation(3.0, 0.05, seed=1)
    render, _ = _centre_render(memory, pose)
    fast = splat_centre_mask(render.point_ids, memory.positions, INTR, pose)
    w2c = np.linalg.inv(pose)
    slow = np.zeros_like(fast)
    for y, x in zip(*np.nonzero(render.point_ids >= 0)):
        p = w2c[:3, :3] @ memory.positions[render.point_ids[y, x]] + w2c[:3, 3]
        u, v = INTR.fx * p[0] / p[2] + INTR.cx, INTR.fy * p[1] / p[2] + INTR.cy
        slow[y, x] = int(np.floor(u)) == x and int(np.floor(v)) == y
    np.testing.assert_array_equal(fast, slow)
    assert 0.5 < fast.sum() / render.valid.sum() < 1.0  # near points splat over several pixels


def test_refine_pose_rejects_huge_or_diverging_corrections_and_keeps_the_initial_pose():
    frame_rgb, frame_depth = render_scene(INTR, HOME)
    init = HOME @ perturbation(25.0, 0.6, seed=5)
    m_rgb, m_depth = render_scene(INTR, init)
    result = refine_pose((m_rgb, m_depth, m_depth > 0), frame_rgb, frame_depth, INTR, init)
    assert not result.accepted and result.reason != "ok"
    np.testing.assert_array_equal(result.c2w, init)

    noise = np.random.default_rng(0).integers(0, 256, size=frame_rgb.shape, dtype=np.uint8)
    result = refine_pose((m_rgb, m_depth, m_depth > 0), noise, None, INTR, init)
    assert not result.accepted
    np.testing.assert_array_equal(result.c2w, init)

    # A correct but too large correction is rejected by the bounds.
    init = HOME @ perturbation(3.0, 0.05, seed=0)
    m_rgb, m_depth = render_scene(INTR, init)
    tight = UpdateConfig(max_refine_rotation_deg=1.0)
    result = refine_pose((m_rgb, m_depth, m_depth > 0), frame_rgb, frame_depth, INTR, init, tight)
    assert not result.accepted and "exceeds the bounds" in result.reason
    np.testing.assert_array_equal(result.c2w, init)

    empty = (np.zeros_like(m_rgb), np.zeros_like(m_depth), np.zeros(m_depth.shape, bool))
    result = refine_pose(empty, frame_rgb, frame_depth, INTR, init)
    assert not result.accepted and "covers" in result.reason


# ---------------------------------------------------------------------------------------------------------------
# update_memory
# ---------------------------------------------------------------------------------------------------------------


def test_update_with_a_frame_rendered_from_the_memory_does_not_grow_it():
    memory = _memory_from([HOME])
    n0 = memory.num_points
    render = memory.render(INTR, HOME)
    report = update_memory(memory, render.rgb[None], HOME[None], INTR, [1])
    assert report.frames[0].integrated and report.frames[0].depth_source in ("memory", "memory+fill")
    # default: pixels the memory renders are re-observations and are not integrated at all
    assert report.new_points <= 0.01 * n0 and report.updated_points <= 0.01 * n0
    # integrating them too re-observes (nearly) every point
    memory = _memory_from([HOME])
    report = update_memory(memory, render.rgb[None], HOME[None], INTR, [1], config=UpdateConfig(integrate_observed=True))
    assert report.new_points <= 0.03 * n0 and memory.num_points <= 1.03 * n0  # far wall: pixels wider than voxels
    assert report.updated_points > 0.9 * n0
    # The pose needed no correction: either none was accepted or it stayed tiny.
    assert rotation_angle_deg(report.poses_refined[0], HOME) < 0.2
    assert translation_distance_m(report.poses_refined[0], HOME) < 0.01


@pytest.mark.parametrize("with_generator_depth", [True, False])
def test_update_grows_the_memory_where_the_frame_sees_new_area(with_generator_depth):
    memory = _memory_from([HOME])
    n0 = memory.num_points
    turned = HOME @ perturbation(0.0, 0.0, 0)
    turned[:3, :3] = HOME[:3, :3] @ Rotation.from_rotvec([0.0, np.radians(20.0), 0.0]).as_matrix()
    rgb, depth = render_scene(INTR, turned)
    before = memory.render(INTR, turned)
    report = update_memory(
        memory, rgb[None], turned[None], INTR, [1], generator_depth=depth[None] if with_generator_depth else None
    )
    frame = report.frames[0]
    assert frame.integrated and frame.depth_source == ("generator" if with_generator_depth else "memory+fill")
    assert 0.2 < frame.coverage < 0.9  # the turned view overlaps the memory only partly
    assert report.new_points > 2000 and memory.num_points == n0 + report.new_points
    # The memory now renders the new area (1-2 px gaps in what it held already are left: ``pinholes``).
    after = memory.render(INTR, turned)
    new_area = (depth > 0) & ~before.valid & ~pinholes(before.valid, before.depth_m, frame.depth_m, 0.1, 2)
    assert after.valid[new_area].mean() > 0.95
    assert after.valid[depth > 0].mean() > 0.9


def test_dynamic_pixels_never_enter_the_memory():
    memory = _memory_from([HOME])
    moved = HOME.copy()
    moved[:3, 3] += HOME[:3, 0] * 0.3
    rgb, depth = render_scene(INTR, moved)
    # A red "person" 1 m in front of the camera, drawn by the generator, with its depth.
    dynamic = np.zeros(depth.shape, bool)
    dynamic[30:110, 60:90] = True
    rgb[dynamic] = (255, 0, 0)
    depth = np.where(dynamic, 1.0, depth).astype(np.float32)
    person_points, _ = depth_to_world_points(depth, INTR, moved, mask=dynamic)

    masked = memory.copy()
    report = update_memory(
        masked, rgb[None], moved[None], INTR, [1], generator_depth=depth[None], dynamic=dynamic[None]
    )
    assert report.frames[0].dynamic_pixels == int(dynamic.sum())
    near_person = np.linalg.norm(masked.positions[:, None] - person_points[None, ::50], axis=-1).min(axis=1) < 0.02
    assert near_person.sum() == 0
    assert not (masked.colors == (255, 0, 0)).all(axis=1).any()
    # The same update without the mask writes the person in: the test is not vacuous.
    unmasked = memory.copy()
    update_memory(unmasked, rgb[None], moved[None], INTR, [1], generator_depth=depth[None])
    near_person = np.linalg.norm(unmasked.positions[:, None] - person_points[None, ::50], axis=-1).min(axis=1) < 0.02
    assert near_person.sum() > 100


def test_update_returns_refined_poses_and_respects_the_stride():
    memory = _memory_from([HOME])
    rgb, depth = render_scene(INTR, HOME)
    commanded = np.stack([HOME @ perturbation(2.0, 0.03, seed) for seed in (1, 2, 3)])
    args = (np.stack([rgb] * 3), commanded, INTR, [10, 11, 12])
    unrefined = update_memory(
        memory.copy(), *args, generator_depth=np.stack([depth] * 3),
        config=UpdateConfig(integrate_stride=2, refine_pose=False),
    )
    report = update_memory(
        memory, *args, generator_depth=np.stack([depth] * 3), config=UpdateConfig(integrate_stride=2)
    )
    assert [f.integrated for f in report.frames] == [True, False, True]
    assert [f.frame_index for f in report.frames] == [10, 11, 12]
    assert report.accepted.tolist() == [True, False, True]
    for k in (0, 2):
        assert rotation_angle_deg(report.poses_refined[k], HOME) < 0.5
        assert translation_distance_m(report.poses_refined[k], HOME) < 0.01
    np.testing.assert_array_equal(report.poses_refined[1], commanded[1])  # skipped: pose as given
    # Integrated at the refined pose, the frame lands mostly on the existing points instead of beside them.
    assert not unrefined.accepted.any()
    assert report.new_points < 0.5 * unrefined.new_points


def test_update_rejects_mismatched_inputs():
    memory = _memory_from([HOME])
    rgb, _ = render_scene(INTR, HOME)
    with pytest.raises(InvalidInputError, match="poses"):
        update_memory(memory, rgb[None], np.stack([HOME, HOME]), INTR, [0])
    with pytest.raises(InvalidInputError, match="frame indices"):
        update_memory(memory, rgb[None], HOME[None], INTR, [0, 1])
    with pytest.raises(InvalidInputError, match="dynamic"):
        update_memory(memory, rgb[None], HOME[None], INTR, [0], dynamic=np.zeros((1, 4, 4), bool))


def test_update_along_a_path_keeps_exact_poses_and_corrects_drifted_ones():
    scene = make_scene("room", seed=0)
    path = scene.demo_path(60)[:6]  # ~0.1 m and a few degrees apart: each frame sees some new area
    rendered = [scene.render(INTR, pose) for pose in path]
    frames = np.stack([rgb for rgb, _ in rendered])
    depths = np.stack([depth for _, depth in rendered])

    def run(commanded: np.ndarray, with_depth: bool):
        memory = SpatialMemory(MemoryConfig(voxel_size_m=0.01))
        memory.integrate(frames[0], depths[0], INTR, path[0], frame_index=0)
        return update_memory(
            memory, frames[1:], commanded[1:], INTR, range(1, 6), generator_depth=depths[1:] if with_depth else None
        )

    for with_depth in (True, False):
        # Exact poses: render artefacts (the memory was seen from elsewhere) must not trigger bogus corrections.
        report = run(path, with_depth)
        assert not report.accepted.any()
        np.testing.assert_array_equal(report.poses_refined, path[1:])
    # Drifted by 2 deg / 3 cm with generator depth: every frame is corrected, rotation most of the way.
    drifted = np.stack([pose @ perturbation(2.0, 0.03, k) for k, pose in enumerate(path)])
    report = run(drifted, True)
    assert report.accepted.all()
    assert max(rotation_angle_deg(a, b) for a, b in zip(report.poses_refined, path[1:])) < 0.75
    assert max(translation_distance_m(a, b) for a, b in zip(report.poses_refined, path[1:])) < 0.03


def test_load_update_kernels_loads_what_the_update_calls():
    """``load_update_kernels`` (run off the frame path by the engine) loads ``keys_in`` for the types the update
    calls it with: the call compiles or loads nothing more."""
    from spatia.world.update import keys_in, load_update_kernels

    load_update_kernels()
    loaded = set(keys_in.overloads)
    memory = SpatialMemory(MemoryConfig(voxel_size_m=0.05))
    rng = np.random.default_rng(0)
    memory.integrate_points(rng.uniform(-1, 1, (500, 3)), rng.integers(0, 256, (500, 3), dtype=np.uint8), 0)
    view = memory.keys_of_points(np.arange(0, 500, 3))  # as update_memory reads them
    removed = memory.keys_of_points(np.arange(0, 500, 7)).copy()
    assert keys_in(view, removed).sum() == len(np.intersect1d(view, removed))
    assert set(keys_in.overloads) == loaded
