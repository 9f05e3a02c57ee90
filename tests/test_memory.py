"""SpatialMemory: fast kernels against the numpy references, update semantics, edits, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

import spatia.world.memory as memory_module
from spatia.world import _reference as ref
from spatia.world.camera import Intrinsics, look_at
from spatia.world.errors import InvalidInputError, NotFoundError
from spatia.world.geometry import depth_to_world_points, pixel_rays, voxel_keys
from spatia.world.memory import Box, IntegrateStats, MemoryConfig, SpatialMemory, Sphere, depth_quant, splat_k


# ---------------------------------------------------------------------------------------------------------------
# Tiny procedural scenes
# ---------------------------------------------------------------------------------------------------------------


def plane_frame(intrinsics: Intrinsics, c2w: np.ndarray, normal, offset_m: float, cell_m: float = 0.05):
    """RGB-D of the plane ``normal . X = offset_m`` (world frame) with a checker + gradient texture.

    Returns rgb [H, W, 3] uint8, depth [H, W] float32 (0 where the ray misses the plane or goes backwards).
    """
    n = np.asarray(normal, dtype=np.float64)
    rays = pixel_rays(intrinsics)  # [H, W, 3] camera frame, z = 1
    dirs = rays @ c2w[:3, :3].T  # world-frame directions whose camera z is 1
    denom = dirs @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = (offset_m - n @ c2w[:3, 3]) / denom
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    hit = c2w[:3, 3] + dirs * depth[..., None]  # [H, W, 3] world frame
    cells = np.floor(hit / cell_m).astype(np.int64)
    checker = (cells.sum(axis=-1) % 2).astype(np.float64)
    rgb = np.stack(
        [60 + 150 * checker, (hit[..., 0] * 97.0) % 256, (hit[..., 1] * 53.0 + 40) % 256], axis=-1
    ).astype(np.uint8)
    rgb[depth == 0] = 0
    return rgb, depth.astype(np.float32)


def random_memory(rng, n: int, config: MemoryConfig, extent_m: float = 1.0) -> SpatialMemory:
    pts = rng.uniform(-extent_m, extent_m, size=(n, 3))
    cols = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    mem = SpatialMemory(config)
    mem.integrate_points(pts, cols, frame_index=0)
    return mem


def assert_same_state(mem: SpatialMemory, state: dict) -> None:
    got = mem.to_arrays()
    order = np.argsort(got["voxel_keys"])
    want = ref.reference_state_arrays(state)
    for name, arr in want.items():
        np.testing.assert_array_equal(got[name][order], arr, err_msg=name)


def render_reference(mem: SpatialMemory, intrinsics: Intrinsics, c2w: np.ndarray):
    a = mem.to_arrays()
    cfg = mem.config
    return ref.reference_render(
        a["voxel_keys"], a["voxel_offsets"], a["colors"], cfg.voxel_size_m, intrinsics, c2w, cfg.min_depth_m,
        cfg.max_depth_m, splat_k(cfg, intrinsics), cfg.max_splat_px, depth_quant(cfg),
    )


def assert_render_matches(mem: SpatialMemory, intrinsics: Intrinsics, c2w: np.ndarray) -> None:
    got = mem.render(intrinsics, c2w, return_point_ids=True)
    rgb, depth, valid, ids = render_reference(mem, intrinsics, c2w)
    np.testing.assert_array_equal(got.point_ids, ids)
    np.testing.assert_array_equal(got.valid, valid)
    np.testing.assert_array_equal(got.depth_m, depth)
    np.testing.assert_array_equal(got.rgb, rgb)


CAM = Intrinsics.from_fov(70.0, 40, 30)


def orbit_poses(count: int, radius_m: float = 1.2):
    angles = np.linspace(-0.6, 0.6, count)
    return [look_at([radius_m * np.sin(a), -0.3, -radius_m * np.cos(a)], [0.0, 0.0, 0.2]) for a in angles]


# ---------------------------------------------------------------------------------------------------------------
# Integrate
# ---------------------------------------------------------------------------------------------------------------


def test_integrate_matches_reference_over_several_frames():
    rng = np.random.default_rng(1)
    cfg = MemoryConfig(voxel_size_m=0.02, max_mean_weight=3)
    cam = Intrinsics.from_fov(70.0, 160, 120)  # 19200 pixels: the first frame outgrows the initial capacity
    mem = SpatialMemory(cfg)
    state: dict = {}
    for f, c2w in enumerate(orbit_poses(3)):
        rgb, depth = plane_frame(cam, c2w, normal=[0.3, 0.1, -1.0], offset_m=-0.4)
        depth[rng.random(depth.shape) < 0.05] = np.nan  # unknown pixels are skipped, not errors
        depth[rng.random(depth.shape) < 0.05] = -1.0
        exclude = np.zeros(depth.shape, bool)
        exclude[40:60, 70:90] = True
        stats = mem.integrate(rgb, depth, cam, c2w, frame_index=10 + f, exclude_mask=exclude)
        pts, pix = ref.reference_frame_points(depth, cam, c2w, cfg.max_depth_m, exclude)
        keys, offs = ref.reference_quantize(pts, cfg.voxel_size_m)
        want = ref.reference_merge(state, keys, offs, rgb.reshape(-1, 3)[pix], 10 + f, cfg.max_mean_weight)
        assert stats == IntegrateStats(*want)
        assert_same_state(mem, state)
        # merge_samples puts each new point where hash_insert would: the table of inserts in row order
        table = np.full(mem._table.shape, -1, np.int32)
        memory_module.K.hash_build_range(table, mem._keys, 0, mem._n)
        assert np.array_equal(mem._table, table)
    assert mem.num_points == len(state)


def test_frame_samples_are_the_usable_pixels_only_in_row_major_order():
    """``frame_samples`` hands ``merge_samples`` one sample per pixel with a known depth that is not excluded, no
    more (an [H * W] list mostly of skipped pixels cost more than a keyframe's few merged samples), each with the
    reference's key, offsets, colour and hash look-up, in row-major order (the order new points are appended)."""
    from spatia.world import _memory_kernels as K

    rng = np.random.default_rng(5)
    cfg = MemoryConfig(voxel_size_m=0.02)
    cam = Intrinsics.from_fov(70.0, 64, 48)
    c2w = orbit_poses(1)[0]
    mem = SpatialMemory(cfg)
    rgb, depth = plane_frame(cam, c2w, normal=[0.3, 0.1, -1.0], offset_m=-0.4)
    mem.integrate(rgb, depth, cam, c2w, frame_index=0, exclude_mask=rng.random(depth.shape) < 0.5)  # half known
    depth[rng.random(depth.shape) < 0.1] = np.nan
    depth[rng.random(depth.shape) < 0.1] = 0.0
    exclude = rng.random(depth.shape) < 0.7  # most pixels excluded, as a keyframe's already-shown ones
    s_keys, s_offs, s_rgb, s_idx = K.frame_samples(
        depth, exclude, True, rgb, c2w[:3, :3].copy(), c2w[:3, 3].copy(), cam.fx, cam.fy, cam.cx, cam.cy,
        1.0 / cfg.voxel_size_m, cfg.max_depth_m, mem._table, mem._keys)
    pts, pix = ref.reference_frame_points(depth, cam, c2w, cfg.max_depth_m, exclude)
    keys, offs = ref.reference_quantize(pts, cfg.voxel_size_m)
    assert 0 < len(s_keys) == len(pix) < exclude.size // 3
    np.testing.assert_array_equal(s_keys, keys)
    np.testing.assert_array_equal(s_offs, offs)
    np.testing.assert_array_equal(s_rgb, rgb.reshape(-1, 3)[pix])
    index = {int(k): i for i, k in enumerate(mem.voxel_keys)}
    np.testing.assert_array_equal(s_idx, [index.get(int(k), -1) for k in keys])
    assert (s_idx >= 0).any() and (s_idx == -1).any()


def test_integrate_points_matches_reference_with_duplicates():
    rng = np.random.default_rng(2)
    cfg = MemoryConfig(voxel_size_m=0.05)
    mem = SpatialMemory(cfg)
    state: dict = {}
    for f in range(3):
        pts = rng.uniform(-0.3, 0.3, size=(3000, 3))  # ~1700 voxels: many samples share one
        cols = rng.integers(0, 256, size=(3000, 3), dtype=np.uint8)
        stats = mem.integrate_points(pts, cols, frame_index=f)
        keys, offs = ref.reference_quantize(pts, cfg.voxel_size_m)
        assert stats == IntegrateStats(*ref.reference_merge(state, keys, offs, cols, f, cfg.max_mean_weight))
    assert_same_state(mem, state)
    assert mem.observation_count.sum() == 9000


@pytest.mark.parametrize("max_mean_weight", [1, 255, 4096])
def test_running_means_stay_exact_at_large_weights(max_mean_weight):
    # thousands of samples into four voxels: the kernel's multiply-shift division must equal the reference's //
    rng = np.random.default_rng(12)
    cfg = MemoryConfig(voxel_size_m=0.1, max_mean_weight=max_mean_weight)
    pts = rng.uniform(0.0, 0.3, size=(6000, 3)) * [1.0, 0.0, 0.0] + 0.05
    cols = rng.integers(0, 256, size=(6000, 3), dtype=np.uint8)
    mem = SpatialMemory(cfg)
    mem.integrate_points(pts, cols, frame_index=0)
    state: dict = {}
    keys, offs = ref.reference_quantize(pts, cfg.voxel_size_m)
    ref.reference_merge(state, keys, offs, cols, 0, max_mean_weight)
    assert_same_state(mem, state)
    assert mem.num_points == 4


def test_reintegration_does_not_grow_and_updates_metadata():
    c2w = look_at([0.0, 0.0, -1.0], [0.0, 0.0, 0.0])
    rgb, depth = plane_frame(CAM, c2w, normal=[0, 0, 1], offset_m=0.0)
    mem = SpatialMemory()
    first = mem.integrate(rgb, depth, CAM, c2w, frame_index=0)
    n = mem.num_points
    counts = mem.observation_count.copy()
    second = mem.integrate(rgb, depth, CAM, c2w, frame_index=7)
    assert first.new_points == n > 0 and first.updated_points == 0
    assert second == IntegrateStats(0, n)
    assert mem.num_points == n
    np.testing.assert_array_equal(mem.observation_count, 2 * counts)
    assert np.all(mem.last_seen_frame == 7)


def test_observation_count_saturates():
    mem = SpatialMemory(MemoryConfig(voxel_size_m=0.1))
    pts = np.full((70000, 3), 0.05)
    mem.integrate_points(pts, np.zeros((70000, 3), np.uint8), frame_index=0)
    assert mem.num_points == 1 and mem.observation_count[0] == 65535


def test_exclude_mask_pixels_are_never_written():
    c2w = look_at([0.0, 0.0, -1.0], [0.0, 0.0, 0.0])
    rgb, depth = plane_frame(CAM, c2w, normal=[0, 0, 1], offset_m=0.0)
    dynamic = np.zeros(depth.shape, bool)
    dynamic[:, :20] = True  # left half is a "dynamic entity" at a different depth
    depth_dyn = depth.copy()
    depth_dyn[dynamic] = 0.5
    mem = SpatialMemory()
    mem.integrate(rgb, depth_dyn, CAM, c2w, frame_index=0, exclude_mask=dynamic)
    masked = depth.copy()
    masked[dynamic] = 0.0
    plain = SpatialMemory()
    plain.integrate(rgb, masked, CAM, c2w, frame_index=0)
    np.testing.assert_array_equal(np.sort(mem.voxel_keys), np.sort(plain.voxel_keys))
    # nothing at the dynamic entity's depth (z = -0.5 in the world) made it in
    assert np.all(np.abs(mem.positions[:, 2]) < 0.02)


def test_positions_stay_in_their_voxels():
    mem = random_memory(np.random.default_rng(3), 5000, MemoryConfig(voxel_size_m=0.03), extent_m=5.0)
    np.testing.assert_array_equal(voxel_keys(mem.positions, 0.03), mem.voxel_keys)


# ---------------------------------------------------------------------------------------------------------------
# Render
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sorted_part", [False, True])
def test_render_matches_reference(sorted_part):
    cfg = MemoryConfig(voxel_size_m=0.02, max_splat_px=3, min_depth_m=0.3, max_depth_m=3.0)
    mem = random_memory(np.random.default_rng(4), 20000, cfg, extent_m=1.5)
    if sorted_part:
        mem._reindex()  # block-sorted with culling for all points, then a small unsorted tail on top
        mem.integrate_points(np.random.default_rng(5).uniform(-1, 1, (500, 3)), np.full((500, 3), 9, np.uint8), 1)
        assert 0 < mem._n_sorted < mem.num_points
    # inside the cloud (points behind, beside and nearer than min depth) and outside looking in
    poses = [look_at([0.1, 0.2, -0.3], [1.0, 0.5, 1.0]), look_at([0.0, -0.5, -2.8], [0.2, 0.0, 0.0])]
    for c2w in poses + [look_at([2.5, 0.0, 0.0], [0.0, 0.3, 0.0])]:
        assert_render_matches(mem, CAM, c2w)


def test_render_culling_keeps_partial_splats_at_the_image_border():
    # one dense wall, rendered with a camera that sees only its edge: blocks just outside the image still splat in
    cfg = MemoryConfig(voxel_size_m=0.01, max_splat_px=4)
    mem = SpatialMemory(cfg)
    c2w = look_at([0.0, 0.0, -0.3], [0.0, 0.0, 0.0])
    rgb, depth = plane_frame(CAM, c2w, normal=[0, 0, 1], offset_m=0.0)
    mem.integrate(rgb, depth, CAM, c2w, frame_index=0)
    mem._reindex()
    for shift in (0.2, 0.25, 0.3):
        side = c2w.copy()
        side[0, 3] += shift
        assert_render_matches(mem, CAM, side)


def test_render_side_two_splats_and_scratch_zbuffers_match_reference():
    # a wall at the distances where a 1 cm point's splat is 2 pixels (the kernel writes those out), seen straight and
    # from the side (partial splats at the border); every render reuses its thread's z-buffer, and two threads render
    # at once: each frame must still equal the reference, whatever an earlier or concurrent render left
    import threading

    cam = Intrinsics.from_fov(70.0, 160, 120)
    cfg = MemoryConfig(voxel_size_m=0.01, max_splat_px=6)
    sk = splat_k(cfg, cam)
    mem = SpatialMemory(cfg)
    c2w = look_at([0.0, 0.0, -0.75 * sk], [0.0, 0.0, 0.0])  # the wall at z = 0.75 splat_k: side ceil(4 / 3) = 2
    rgb, depth = plane_frame(cam, c2w, normal=[0, 0, 1], offset_m=0.0, cell_m=0.03)
    mem.integrate(rgb, depth, cam, c2w, frame_index=0)
    mem._reindex()
    views = [c2w]
    for dx, dz in ((0.4, 0.0), (-0.3, 0.2), (0.0, -0.8)):  # beside (the wall's edge in view), nearer, farther
        v = c2w.copy()
        v[0, 3] += dx
        v[2, 3] += dz
        views.append(v)
    want = [render_reference(mem, cam, v) for v in views]
    side = np.ceil(sk / want[0][1][want[0][2]])
    assert (side == 2).mean() > 0.9  # the straight view is mostly side-2 splats
    errors = []

    def render_all(order):
        try:
            for k in order:
                got = mem.render(cam, views[k], return_point_ids=True)
                for a, b in zip((got.rgb, got.depth_m, got.valid, got.point_ids), want[k]):
                    np.testing.assert_array_equal(a, b)
        except AssertionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=render_all, args=(order,)) for order in ([0, 1, 2, 3] * 3, [3, 2, 1, 0] * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_render_splat_sides_across_a_slanted_wall_match_reference():
    # the side-2 splat is told by compares (1 < splat_k / z <= 2) before the other sides: a wall seen at a slant runs
    # from sides 3-4 near the camera through 2 to 1 far away, and its edges cross the image border; with
    # ``max_splat_px`` 1 every splat is clipped to one pixel (the side-2 path must not be taken) and with 2 the
    # nearer ones are clipped to two
    cam = Intrinsics.from_fov(70.0, 120, 90)
    for max_splat in (1, 2, 4):
        cfg = MemoryConfig(voxel_size_m=0.01, max_splat_px=max_splat)
        sk = splat_k(cfg, cam)
        mem = SpatialMemory(cfg)
        c2w = look_at([0.0, 0.0, -1.5 * sk], [0.0, 0.0, 0.0])  # a wall wide enough to reach past z = splat_k
        rgb, depth = plane_frame(cam, c2w, normal=[0, 0, 1], offset_m=0.0, cell_m=0.03)
        mem.integrate(rgb, depth, cam, c2w, frame_index=0)
        mem._reindex()
        slant = look_at([0.8 * sk, 0.05, -0.3 * sk], [-0.6 * sk, 0.0, 0.0])
        want = render_reference(mem, cam, slant)
        sides = np.minimum(np.ceil(sk / want[1][want[2]]), max_splat)
        assert {1, min(2, max_splat)} <= set(np.unique(sides).tolist())
        if max_splat == 4:
            assert (sides == 3).any()
        for view in (c2w, slant):
            assert_render_matches(mem, cam, view)


def test_culling_drops_blocks_out_of_view():
    # what makes render cost follow the points in view: whole blocks behind / beside the camera are never touched
    rng = np.random.default_rng(13)
    front = rng.uniform(-0.5, 0.5, size=(4000, 3)) + [0.0, 0.0, 3.0]
    behind = rng.uniform(-0.5, 0.5, size=(4000, 3)) + [0.0, 0.0, -3.0]
    beside = rng.uniform(-0.5, 0.5, size=(4000, 3)) + [30.0, 0.0, 3.0]
    cfg = MemoryConfig(voxel_size_m=0.02)
    mem = SpatialMemory(cfg)
    for pts in (front, behind, beside):
        mem.integrate_points(pts, np.zeros(pts.shape, np.uint8), 0)
    mem._reindex()
    c2w = np.eye(4)  # at the origin looking down +z
    w2c_r = np.ascontiguousarray(c2w[:3, :3].T)
    keep = memory_module.K.cull_blocks(
        mem._block_ids, w2c_r, c2w[:3, 3].copy(), CAM.fx, CAM.fy, CAM.cx, CAM.cy, CAM.width, CAM.height,
        float(cfg.max_splat_px), cfg.min_depth_m, cfg.max_depth_m, cfg.voxel_size_m,
    )
    starts, stops = mem._block_starts[:-1], mem._block_starts[1:]
    block_z = np.array([mem.positions[a, 2] for a in starts])
    block_x = np.array([mem.positions[a, 0] for a in starts])
    in_front = (block_z > 2.0) & (np.abs(block_x) < 1.0)
    assert keep[in_front].all()
    assert not keep[~in_front].any()
    assert (stops - starts)[keep].sum() < 0.4 * mem.num_points
    assert_render_matches(mem, CAM, c2w)


def test_render_empty_memory_is_all_invalid():
    r = SpatialMemory().render(CAM, np.eye(4), return_point_ids=True)
    assert not r.valid.any() and r.rgb.max() == 0 and r.depth_m.max() == 0 and r.point_ids.min() == -1


def test_visible_voxel_keys_match_reference():
    mem = random_memory(np.random.default_rng(6), 8000, MemoryConfig(voxel_size_m=0.02))
    mem._reindex()
    c2w = look_at([0.0, -0.2, -2.5], [0.0, 0.0, 0.0])
    ids = render_reference(mem, CAM, c2w)[3]
    want = ref.reference_visible_voxel_keys(mem.to_arrays()["voxel_keys"], ids)
    got = mem.visible_voxel_keys(CAM, c2w)
    np.testing.assert_array_equal(got, want)
    assert 0 < len(got) < mem.num_points  # occlusion hides most of a random cloud


def test_lazy_reindex_keeps_renders_identical(monkeypatch):
    monkeypatch.setattr(memory_module, "TAIL_MIN", 100)
    mem = random_memory(np.random.default_rng(7), 6000, MemoryConfig(voxel_size_m=0.02))
    assert mem._n_sorted == 0
    c2w = look_at([0.0, 0.0, -2.0], [0.0, 0.0, 0.0])
    before = mem.to_arrays()
    want = render_reference(mem, CAM, c2w)
    got = mem.render(CAM, c2w, return_point_ids=True)  # merges the tail into the block-sorted part first
    assert mem._n_sorted - len(mem._dead) == mem.num_points  # (dead rows: the run a re-sort leaves before the tail)
    np.testing.assert_array_equal(got.rgb, want[0])
    np.testing.assert_array_equal(got.depth_m, want[1])
    # ids follow the new order: the same points won the same pixels
    np.testing.assert_array_equal(mem.voxel_keys[got.point_ids[got.valid]], before["voxel_keys"][want[3][want[2]]])
    # the hash table still maps every key to its (moved) point
    stats = mem.integrate_points(mem.positions.astype(np.float64), mem.colors.copy(), frame_index=1)
    assert stats == IntegrateStats(0, mem.num_points)


def test_reindex_merges_the_tail_into_sorted_blocks():
    rng = np.random.default_rng(14)
    mem = random_memory(rng, 3000, MemoryConfig(voxel_size_m=0.02))
    mem._reindex()
    mem.integrate_points(rng.uniform(-1, 1, (2000, 3)), np.full((2000, 3), 7, np.uint8), 1)  # interleaves
    before = mem.to_arrays()
    mem._reindex()
    sk = memory_module.K.sort_keys(mem._keys, 0, mem.num_points)  # (then the dead rows a re-sort leaves)
    assert mem._n_sorted - len(mem._dead) == mem.num_points and np.all(np.diff(sk) > 0)
    blocks = sk >> (3 * memory_module.K.BLOCK_BITS)
    np.testing.assert_array_equal(mem._block_ids, np.unique(blocks))
    np.testing.assert_array_equal(mem._block_starts[:-1], np.searchsorted(blocks, mem._block_ids))
    after = mem.to_arrays()
    order_b, order_a = np.argsort(before["voxel_keys"]), np.argsort(after["voxel_keys"])
    for name in before:  # the same points, only reordered
        np.testing.assert_array_equal(before[name][order_b], after[name][order_a], err_msg=name)
    idx = memory_module.K.hash_lookup_many(mem._table, mem._keys, after["voxel_keys"])
    np.testing.assert_array_equal(idx, np.arange(mem.num_points))


def test_no_pinholes_on_a_close_textured_plane():
    cam = Intrinsics.from_fov(60.0, 160, 120)
    src = look_at([0.0, 0.0, -0.6], [0.0, 0.0, 0.0])
    rgb, depth = plane_frame(cam, src, normal=[0, 0, 1], offset_m=0.0)
    mem = SpatialMemory()  # d = 1 cm, f = 139 px: at 0.55-0.7 m a voxel spans 2-2.5 pixels, under the 4 px cap
    mem.integrate(rgb, depth, cam, src, frame_index=0)
    for eye in ([0.05, 0.03, -0.55], [0.25, -0.05, -0.65]):  # closer and oblique
        c2w = look_at(eye, [0.0, 0.0, 0.0])
        r = mem.render(cam, c2w)
        _, truth = plane_frame(cam, c2w, normal=[0, 0, 1], offset_m=0.0)
        covered = np.abs(project_plane_extent(cam, c2w, src)) > 0  # pixels whose plane point the source saw
        interior = covered & (truth > 0)
        interior[:4], interior[-4:], interior[:, :4], interior[:, -4:] = False, False, False, False
        assert interior.sum() > 0.5 * interior.size
        assert r.valid[interior].all(), f"{(~r.valid[interior]).sum()} pinholes"


def project_plane_extent(cam: Intrinsics, c2w: np.ndarray, src: np.ndarray) -> np.ndarray:
    """1.0 where the plane point seen by pixel of ``c2w`` lies inside the source camera's view (minus a margin)."""
    _, depth = plane_frame(cam, c2w, normal=[0, 0, 1], offset_m=0.0)
    pts, idx = depth_to_world_points(depth, cam, c2w)
    inv = np.linalg.inv(src)
    pc = pts @ inv[:3, :3].T + inv[:3, 3]
    u = cam.fx * pc[:, 0] / pc[:, 2] + cam.cx
    v = cam.fy * pc[:, 1] / pc[:, 2] + cam.cy
    inside = (u > 3) & (u < cam.width - 3) & (v > 3) & (v < cam.height - 3)
    out = np.zeros(cam.height * cam.width)
    out[idx[inside]] = 1.0
    return out.reshape(cam.height, cam.width)


def test_rendered_depth_unprojects_onto_the_memory_points():
    cam = Intrinsics.from_fov(60.0, 160, 120)
    src = look_at([0.0, 0.0, -0.5], [0.0, 0.0, 0.0])
    rgb, depth = plane_frame(cam, src, normal=[0.2, 0.0, 1.0], offset_m=0.0)
    mem = SpatialMemory()
    mem.integrate(rgb, depth, cam, src, frame_index=0)
    for eye in ([0.08, -0.04, -0.45], [0.1, 0.05, -0.8]):
        c2w = look_at(eye, [0.0, 0.0, 0.0])
        r = mem.render(cam, c2w, return_point_ids=True)
        pts, idx = depth_to_world_points(r.depth_m, cam, c2w)
        own = mem.positions[r.point_ids.reshape(-1)[idx]]
        # a pixel lies in its point's square splat of s pixels, at the point's depth: at most s / sqrt(2) * z / f away
        z = r.depth_m.reshape(-1)[idx].astype(np.float64)
        s = np.clip(np.ceil(splat_k(mem.config, cam) / z), 1, mem.config.max_splat_px)
        assert np.all(np.linalg.norm(pts - own, axis=1) <= s / np.sqrt(2) * z / cam.fx + 1e-6)
        # ... and, away from the surface's rim (where splats reach past the last points), within a voxel of it
        dist, _ = cKDTree(mem.positions).query(pts)
        interior = binary_erosion(r.valid, iterations=4).reshape(-1)[idx]
        assert interior.sum() > 0.5 * len(idx)
        assert dist[interior].max() <= mem.config.voxel_size_m


def test_render_trajectory_stacks_renders():
    mem = random_memory(np.random.default_rng(8), 3000, MemoryConfig(voxel_size_m=0.02))
    poses = np.stack(orbit_poses(3, radius_m=2.5))
    proj = mem.render_trajectory(CAM, poses)
    assert len(proj) == 3 and proj.rgb.shape == (3, 30, 40, 3)
    for t in range(3):
        r = mem.render(CAM, poses[t])
        np.testing.assert_array_equal(proj.rgb[t], r.rgb)
        np.testing.assert_array_equal(proj.depth_m[t], r.depth_m)
        np.testing.assert_array_equal(proj.valid[t], r.valid)


# ---------------------------------------------------------------------------------------------------------------
# Edits
# ---------------------------------------------------------------------------------------------------------------


def grid_memory(step_m: float = 0.05) -> SpatialMemory:
    g = np.arange(-0.5, 0.5, step_m) + step_m / 2
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    mem = SpatialMemory(MemoryConfig(voxel_size_m=0.02))
    mem.integrate_points(pts, np.full(pts.shape, 100, np.uint8), frame_index=3)
    return mem


def test_regions_contain():
    pts = np.array([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.9, 0.0], [2.0, 0.0, 0.0]])
    assert Sphere([0, 0, 0], 1.0).contains(pts).tolist() == [True, True, True, False]
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # box axes rotated 45 degrees about z
    box = Box([0, 0, 0], [1.0, 0.1, 0.1], c2w_rotation=rot)
    assert box.contains(pts).tolist() == [True, False, False, False]
    assert box.contains(np.array([[0.6, 0.6, 0.0]])).tolist() == [True]


def test_remove_and_recolor():
    mem = grid_memory()
    n = mem.num_points
    sphere = Sphere([0, 0, 0], 0.2)
    inside = sphere.contains(mem.positions).sum()
    assert mem.remove(sphere) == inside > 0
    assert mem.num_points == n - inside and not sphere.contains(mem.positions).any()
    assert mem.remove(sphere) == 0
    box = Box([0.25, 0.0, 0.0], [0.1, 0.5, 0.5])
    k = mem.recolor(box, (255, 0, 10))
    inside = box.contains(mem.positions)
    assert k == inside.sum() > 0
    assert (mem.colors[inside] == [255, 0, 10]).all() and (mem.colors[~inside] == 100).all()
    # the hash table survived the compaction: re-adding the same points only updates
    stats = mem.integrate_points(mem.positions.astype(np.float64), mem.colors.copy(), 4)
    assert stats.new_points == 0


def test_move_translates_and_rotates_the_selection():
    mem = grid_memory()
    n = mem.num_points
    box = Box([0.0, 0.0, 0.0], [0.12, 0.12, 0.12])
    sel = box.contains(mem.positions)
    moved_before = mem.positions[sel].astype(np.float64)
    mem.recolor(box, (1, 2, 3))
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert mem.move(box, [0.0, 0.0, 2.0], rotation=rot) == sel.sum()
    assert mem.num_points == n  # nothing was at the destination
    target = moved_before @ rot.T + [0.0, 0.0, 2.0]
    now = mem.positions[(mem.colors == [1, 2, 3]).all(axis=1)]
    dist, _ = cKDTree(now).query(target)
    assert dist.max() < mem.config.voxel_size_m
    assert not box.contains(mem.positions).any()
    assert (mem.last_seen_frame == 3).all()


def test_move_onto_occupied_voxels_replaces_them():
    mem = grid_memory()
    n = mem.num_points
    box = Box([0.025, 0.025, 0.025], [0.01, 0.01, 0.01])  # exactly one grid point
    mem.recolor(box, (9, 9, 9))
    assert mem.move(box, [0.05, 0.0, 0.0]) == 1
    assert mem.num_points == n - 1
    hit = Box([0.075, 0.025, 0.025], [0.01, 0.01, 0.01]).contains(mem.positions)
    assert hit.sum() == 1 and (mem.colors[hit] == 9).all()


def test_insert_overwrites_and_averages():
    mem = grid_memory()
    n = mem.num_points
    pts = np.array([[0.025, 0.025, 0.025], [0.026, 0.026, 0.026], [3.0, 3.0, 3.0]])  # two share a voxel
    cols = np.array([[10, 10, 10], [20, 20, 20], [5, 6, 7]], np.uint8)
    assert mem.insert(pts, cols, frame_index=9) == IntegrateStats(1, 1)
    assert mem.num_points == n + 1
    keys = voxel_keys(pts, 0.02)
    a = mem.to_arrays()
    i = np.flatnonzero(a["voxel_keys"] == keys[0])[0]
    assert a["colors"][i].tolist() == [15, 15, 15] and a["observation_count"][i] == 2
    assert a["last_seen_frame"][i] == 9
    j = np.flatnonzero(a["voxel_keys"] == keys[2])[0]
    assert a["colors"][j].tolist() == [5, 6, 7]


def test_copy_is_independent():
    mem = grid_memory()
    other = mem.copy()
    mem.remove(Sphere([0, 0, 0], 10.0))
    assert mem.num_points == 0 and other.num_points == 8000
    assert other.integrate_points(np.full((1, 3), 0.025), np.zeros((1, 3), np.uint8), 0).new_points == 0


# ---------------------------------------------------------------------------------------------------------------
# Persistence, size
# ---------------------------------------------------------------------------------------------------------------


def test_to_arrays_round_trip_is_exact():
    mem = random_memory(np.random.default_rng(9), 5000, MemoryConfig(voxel_size_m=0.02))
    mem._reindex()
    mem.integrate_points(np.random.default_rng(10).uniform(2, 3, (300, 3)), np.zeros((300, 3), np.uint8), 5)
    arrays = mem.to_arrays()
    back = SpatialMemory.from_arrays(mem.config, arrays)
    for name, a in back.to_arrays().items():
        np.testing.assert_array_equal(a, arrays[name], err_msg=name)
        assert a.dtype == arrays[name].dtype
    c2w = look_at([0.0, 0.0, -3.0], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(back.render(CAM, c2w).rgb, mem.render(CAM, c2w).rgb)


def test_ply_round_trip(tmp_path):
    mem = random_memory(np.random.default_rng(11), 4000, MemoryConfig(voxel_size_m=0.02))
    mem.integrate_points(mem.positions.astype(np.float64), mem.colors.copy(), frame_index=6)
    path = tmp_path / "memory.ply"
    mem.save_ply(path)
    back = SpatialMemory.load_ply(path, mem.config)
    a, b = mem.to_arrays(), back.to_arrays()
    ia, ib = np.argsort(a["voxel_keys"]), np.argsort(b["voxel_keys"])
    for name in a:
        np.testing.assert_array_equal(a[name][ia], b[name][ib], err_msg=name)
    with pytest.raises(NotFoundError):
        SpatialMemory.load_ply(tmp_path / "missing.ply")


def test_bytes_per_point_within_budget():
    cam = Intrinsics.from_fov(60.0, 320, 240)
    mem = SpatialMemory()
    for f, c2w in enumerate(orbit_poses(4, radius_m=1.0)):
        rgb, depth = plane_frame(cam, c2w, normal=[0, 0, 1], offset_m=0.3)
        mem.integrate(rgb, depth, cam, c2w, frame_index=f)
        assert mem.bytes_per_point <= 34.0, (mem.num_points, mem.bytes_per_point)  # 21 B + slack (provenance: 1 B)
    mem.render(cam, c2w)
    assert mem.num_points > 50000 and mem.bytes_per_point <= 34.0


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_invalid_input():
    c2w = look_at([0.0, 0.0, -1.0], [0.0, 0.0, 0.0])
    rgb, depth = plane_frame(CAM, c2w, normal=[0, 0, 1], offset_m=0.0)
    mem = SpatialMemory()
    fine = SpatialMemory(MemoryConfig(voxel_size_m=0.001, max_depth_m=1e4))  # key range +-1048 m
    bad_calls = [
        lambda: mem.integrate(rgb.astype(np.float32), depth, CAM, c2w, 0),
        lambda: mem.integrate(rgb[:-1], depth, CAM, c2w, 0),
        lambda: mem.integrate(rgb, depth[:, :-1], CAM, c2w, 0),
        lambda: mem.integrate(rgb, depth.astype(np.int32), CAM, c2w, 0),
        lambda: mem.integrate(rgb, depth, CAM, c2w * 2.0, 0),
        lambda: mem.integrate(rgb, depth, CAM, np.eye(3), 0),
        lambda: mem.integrate(rgb, depth, CAM, c2w, 0.5),
        lambda: mem.integrate(rgb, depth, CAM, c2w, 0, exclude_mask=np.zeros(depth.shape, np.uint8)),
        lambda: fine.integrate(rgb, np.full(depth.shape, 2000.0, np.float32), CAM, c2w, 0),  # beyond +-2**20 voxels
        lambda: mem.integrate_points(np.array([[np.nan, 0, 0]]), np.zeros((1, 3), np.uint8), 0),
        lambda: mem.integrate_points(np.zeros((2, 3)), np.zeros((3, 3), np.uint8), 0),
        lambda: mem.insert(np.zeros((2, 2)), np.zeros((2, 3), np.uint8)),
        lambda: mem.render(CAM, np.full((4, 4), np.nan)),
        lambda: mem.recolor(Sphere([0, 0, 0], 1.0), (256, 0, 0)),
        lambda: mem.move(Sphere([0, 0, 0], 1.0), [0, 0, 0], rotation=np.ones((3, 3))),
        lambda: Sphere([0, 0, 0], -1.0),
        lambda: Box([0, 0, 0], [1, 1]),
        lambda: MemoryConfig(voxel_size_m=0.0),
        lambda: MemoryConfig(min_depth_m=2.0, max_depth_m=1.0),
        lambda: MemoryConfig(max_mean_weight=5000),
        lambda: SpatialMemory.from_arrays(MemoryConfig(), {"voxel_keys": np.zeros(2, np.int64)}),
    ]
    for i, call in enumerate(bad_calls):
        with pytest.raises(InvalidInputError):
            call()
            pytest.fail(f"bad call {i} did not raise")
    arrays = grid_memory().to_arrays()
    arrays["voxel_keys"][1] = arrays["voxel_keys"][0]
    with pytest.raises(InvalidInputError, match="duplicates"):
        SpatialMemory.from_arrays(MemoryConfig(voxel_size_m=0.02), arrays)
    assert mem.num_points == 0  # nothing was half-written


def test_provenance_kept_and_round_trips():
    from spatia.world.memory import INVENTED_FINAL, INVENTED_PROVISIONAL, OBSERVED

    rng = np.random.default_rng(3)
    mem = random_memory(rng, 500, MemoryConfig(voxel_size_m=0.02))
    assert (mem.provenance == OBSERVED).all()
    v0 = mem.observed_version
    far = rng.uniform(5.0, 6.0, size=(300, 3))
    mem.integrate_points(far, np.full((300, 3), 9, np.uint8), frame_index=1, provenance=INVENTED_FINAL)
    assert mem.observed_version == v0  # invented points do not change what the layout is fitted to
    prov = mem.provenance
    assert (prov[:500] == OBSERVED).all() and (prov[500:] == INVENTED_FINAL).all()
    pts, cols = mem.observed_points()
    assert len(pts) == 500 and np.all(np.abs(pts) <= 1.0 + 0.02)
    back = SpatialMemory.from_arrays(mem.config, mem.to_arrays())
    np.testing.assert_array_equal(back.provenance, prov)
    old = mem.to_arrays()
    del old["provenance"]  # a snapshot made before provenance existed: every point counts as observed
    assert (SpatialMemory.from_arrays(mem.config, old).provenance == OBSERVED).all()
    # provisional points can be dropped; observed and final ones never are
    mem.integrate_points(rng.uniform(8.0, 9.0, size=(200, 3)), np.zeros((200, 3), np.uint8), 2,
                         provenance=INVENTED_PROVISIONAL)
    n = mem.num_points
    assert mem.drop_provisional() == n - len(prov)
    np.testing.assert_array_equal(mem.provenance, prov)
    with pytest.raises(InvalidInputError):
        mem.integrate_points(far, np.zeros((300, 3), np.uint8), 3, provenance=7)


def test_remove_invented_near_keeps_observed():
    from spatia.world.memory import INVENTED_FINAL

    rng = np.random.default_rng(4)
    mem = random_memory(rng, 2000, MemoryConfig(voxel_size_m=0.02))
    inv = rng.uniform(-1.0, 1.0, size=(2000, 3))
    mem.integrate_points(inv, np.zeros((2000, 3), np.uint8), 1, provenance=INVENTED_FINAL)
    before = mem.provenance.copy()
    pos_before = mem.positions
    centres = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    removed = mem.remove_invented_near(centres, 0.3)
    # slow reference: every invented point within 0.3 m of a centre goes, nothing else
    d = np.min(np.linalg.norm(pos_before[:, None, :] - centres[None], axis=2), axis=1)
    want = (before != 0) & (d <= 0.3)
    assert removed == int(want.sum()) > 0
    assert mem.num_points == len(before) - removed
    assert int((mem.provenance == 0).sum()) == int((before == 0).sum())


def test_visited_positions_answer_as_one_tree_over_the_whole_path():
    """``VisitedPositions`` (the path in chunk trees, synced as it grows) against ``near_reference`` (one k-d tree
    over every position), points at exactly the radius included; and the memory's removal with it against the
    removal with the plain array, byte for byte."""
    from spatia.world.free_space import VisitedPositions, near_reference
    from spatia.world.memory import INVENTED_FINAL

    rng = np.random.default_rng(7)
    visited, path = VisitedPositions(), np.zeros((0, 3))
    for step in range(60):
        walk = np.cumsum(rng.normal(0.0, 0.05, (int(rng.integers(1, 400)), 3)), axis=0)
        path = np.concatenate([path, walk + (path[-1] if len(path) else 0.0)])
        visited.sync(path)
        dirs = rng.normal(size=(50, 3))
        at_radius = path[rng.integers(0, len(path), 50)] + 0.5 * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        pts = np.concatenate([path[rng.integers(0, len(path), 300)] + rng.normal(0.0, 0.4, (300, 3)), at_radius])
        np.testing.assert_array_equal(visited.near(pts, 0.5), near_reference(pts, path, 0.5), err_msg=str(step))
        np.testing.assert_array_equal(visited.lo_m, path.min(axis=0))
        np.testing.assert_array_equal(visited.hi_m, path.max(axis=0))
    assert len(visited) == len(path) and len(visited._chunks) >= 2  # (merged chunks, not one per sync)
    np.testing.assert_array_equal(visited.positions(), path)
    changed = path[:100].copy()
    changed[-1] += 1.0  # a path that is not the one taken: taken anew
    np.testing.assert_array_equal(visited.sync(changed).positions(), changed)

    mem = random_memory(rng, 2000, MemoryConfig(voxel_size_m=0.02))
    inv = rng.uniform(-1.0, 1.0, size=(4000, 3))
    mem.integrate_points(inv, np.zeros((4000, 3), np.uint8), 1, provenance=INVENTED_FINAL)
    twin = mem.copy()
    centres = np.cumsum(rng.normal(0.0, 0.05, (700, 3)), axis=0)
    for few in (centres[:3], centres):  # the direct distances below SMALL_CENTRE_SET, trees above
        a = mem.remove_invented_near_groups([(VisitedPositions().sync(few), None)], 0.3)
        b = twin.remove_invented_near_groups([(few, None)], 0.3)
        assert a == b > 0
        for name, arr in mem.to_arrays().items():
            np.testing.assert_array_equal(arr, twin.to_arrays()[name], err_msg=name)


def test_update_never_writes_a_coarse_fills_pixels():
    """``update_memory(provisional_px=...)``: the pixels of a frame that show a coarse fill get no memory point (the
    rest of the frame is integrated as usual); without the mask the same frame fills both halves."""
    from spatia.world.geometry import project_points
    from spatia.world.update import update_memory

    K = Intrinsics.from_fov(70.0, 64, 48)
    c2w = look_at([0.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    depth = np.full((1, 48, 64), 2.0037, np.float32)
    coarse = np.zeros((1, 48, 64), bool)
    coarse[0, :, :32] = True  # the left half shows a coarse fill
    cols = {}
    for name, mask in (("masked", coarse), ("plain", None)):
        mem = SpatialMemory()
        mem.integrate_points(np.array([[0.0, 0.0, -5.0]]), np.zeros((1, 3), np.uint8), 0)  # one point, behind
        update_memory(mem, rgb, c2w[None], K, [1], generator_depth=depth, provisional_px=mask)
        new = mem.positions[1:]
        uv = project_points(new, K, c2w)[0]
        cols[name] = uv[:, 0]
    assert len(cols["masked"]) > 0 and cols["masked"].min() >= 32 - 1  # only the final half (a splat's margin)
    assert cols["plain"].min() < 16 and cols["plain"].max() > 48
