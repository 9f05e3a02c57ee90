import numpy as np
import pytest

from spatia.world.camera import Intrinsics, look_at
from spatia.world.errors import InvalidInputError
from spatia.world.geometry import depth_to_world_points
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


def _hostile(seed, w=48, h=36):
    """A source frame with what real frames rarely hold: depth steps (splats of 1 to 3 pixels), unknown, negative,
    NaN and inf depths, and points that land behind the target camera or far off its image."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = np.where(rng.random((h, w)) < 0.5, 0.4 + rng.random((h, w)), 2.0 + 3.0 * rng.random((h, w)))
    depth[: h // 3, : w // 3] = 0.05 + 0.01 * rng.random((h // 3, w // 3))  # near blob: big splats, some behind
    depth = depth.astype(np.float32)
    bad = rng.random((h, w))
    depth[bad < 0.08] = 0.0
    depth[(bad >= 0.08) & (bad < 0.1)] = -1.0
    depth[(bad >= 0.1) & (bad < 0.11)] = np.nan
    depth[(bad >= 0.11) & (bad < 0.12)] = np.inf
    depth[0, 0] = 1e-5  # near the camera plane: huge target coordinates
    return rgb, depth, Intrinsics.from_fov(70, w, h)


def _moved(rng):
    return look_at(rng.normal(0, 0.3, 3), [rng.normal(0, 0.4), rng.normal(0, 0.4), 2.5])


@pytest.mark.parametrize("seed", range(6))
def test_fast_warp_matches_reference_on_hostile_input(seed):
    rgb, depth, K = _hostile(seed)
    rng = np.random.default_rng(200 + seed)
    K_dst = Intrinsics.from_fov(60, 40 + seed, 30)
    pose = _moved(rng)
    fast = warp_rgbd(rgb, depth, K, np.eye(4), K_dst, pose)
    ref = warp_rgbd_reference(rgb, depth, K, np.eye(4), K_dst, pose)
    assert np.array_equal(fast.depth_m, ref.depth_m) and np.array_equal(fast.rgb, ref.rgb)
    assert ref.valid.any()


def _claim_cases(seed):
    """(source frame, target intrinsics and pose, target colour, claimed, allowed) with holes in blobs and speckle."""
    rgb, depth, K = _hostile(seed, 64, 48)
    rng = np.random.default_rng(300 + seed)
    K_dst = Intrinsics.from_fov(60, 56, 40)
    pose = _moved(rng) if seed % 3 else np.eye(4)
    base = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    claimed = rng.random((40, 56)) < 0.2
    allowed = rng.random((40, 56)) < 0.005  # speckle (pinholes)
    y, x = rng.integers(0, 30), rng.integers(0, 46)
    allowed[y:y + 10, x:x + 10] = True  # a hole blob
    if seed == 5:
        allowed[:] = True  # nothing to cull
    return rgb, depth, K, K_dst, pose, base, claimed, allowed


@pytest.mark.parametrize("seed", range(6))
def test_warp_claim_matches_warp_then_claim(seed):
    """The culled, fused warp + claim equals the reference warp followed by the reference claim, for 1, 2 and 3
    target bands and blocks of 1, 3 and 8 pixels (an odd block leaves partial blocks at the edges)."""
    from spatia.world.warp import _reference_claim_warped, _warp_claim_kernel, warp_claim

    rgb, depth, K, K_dst, pose, base, claimed, allowed = _claim_cases(seed)
    ref = warp_rgbd_reference(rgb, depth, K, np.eye(4), K_dst, pose)
    want_rgb, want_claimed = base.copy(), claimed.copy()
    _reference_claim_warped(want_rgb, want_claimed, ref.rgb, ref.depth_m, allowed)
    assert (want_claimed & ~claimed).any()  # the warp claims pixels (the test tests something)
    got_rgb, got_claimed = base.copy(), claimed.copy()
    got_depth = np.full(claimed.shape, 0.25, np.float32)  # left alone where nothing is claimed
    warp_claim(rgb, depth, K, np.eye(4), K_dst, pose, got_rgb, got_claimed, allowed, got_depth)
    assert np.array_equal(got_rgb, want_rgb) and np.array_equal(got_claimed, want_claimed)
    # the depth of each colour claimed here is the reference warp's, the rest untouched
    new = want_claimed & ~claimed
    assert np.array_equal(got_depth, np.where(new, ref.depth_m, np.float32(0.25)))
    rel = np.linalg.inv(pose)
    for n_chunks in (1, 2, 3):
        for block in (1, 3, 8):
            got_rgb, got_claimed = base.copy(), claimed.copy()
            _warp_claim_kernel(rgb, depth, K.fx, K.fy, K.cx, K.cy, np.ascontiguousarray(rel[:3, :3]),
                               np.ascontiguousarray(rel[:3, 3]), K_dst.fx, K_dst.fy, K_dst.cx, K_dst.cy,
                               allowed & ~claimed, got_rgb, got_claimed, n_chunks, block,
                               np.full((41, 57), 7, np.int32), np.full((40, 56), -1.0, np.float32))  # dirty scratch
            assert np.array_equal(got_rgb, want_rgb) and np.array_equal(got_claimed, want_claimed)


def test_block_reach_holds_every_splat_and_culls():
    """A block's reach holds every target pixel its pixels' splats cover (the reference's projection), and is
    small for a block of one surface: the culling skips blocks (without it ``warp_claim`` is the whole warp)."""
    from spatia.world.warp import MAX_SPLAT_PX, _block_reach, _project_source, _rays

    bounded = 0
    for seed in range(4):
        rgb, depth, K = _hostile(seed, 64, 48)
        rng = np.random.default_rng(400 + seed)
        K_dst = Intrinsics.from_fov(60, 56, 40)
        pose = _moved(rng)
        rel = np.linalg.inv(pose)
        R, t = np.ascontiguousarray(rel[:3, :3]), np.ascontiguousarray(rel[:3, 3])
        col, rows = _rays(K.width, K.cx, K.fx), _rays(K.height, K.cy, K.fy)
        u, v, _, _, size = _project_source(rgb, depth, K, np.eye(4), K_dst, pose)
        pts, idx = depth_to_world_points(depth, K, np.eye(4))  # the points ``_project_source`` keeps, in order
        idx = idx[((pts - pose[:3, 3]) @ pose[:3, :3])[:, 2] > 1e-6]
        ys, xs = np.divmod(idx, K.width)
        for y_lo in range(0, 48, 8):
            for x_lo in range(0, 64, 8):
                inside = (ys >= y_lo) & (ys < y_lo + 8) & (xs >= x_lo) & (xs < x_lo + 8)
                z = depth[y_lo:y_lo + 8, x_lo:x_lo + 8]
                known = z[np.isfinite(z) & (z > 0)]
                z_lo, z_hi = (float(known.min()), float(known.max())) if known.size else (np.inf, 0.0)
                r0, r1, c0, c1 = _block_reach(z_lo, z_hi, y_lo, y_lo + 8, x_lo, x_lo + 8, col, rows, R, t, K_dst.fx,
                                              K_dst.fy, K_dst.cx, K_dst.cy, 40, 56)
                if (r1 - r0) * (c1 - c0) < 40 * 56:
                    bounded += 1
                for i in np.flatnonzero(inside):
                    if abs(u[i]) > 1e7 or abs(v[i]) > 1e7:
                        continue
                    s = int(size[i])
                    x0, y0 = int(np.floor(u[i] - 0.5 * s + 0.5)), int(np.floor(v[i] - 0.5 * s + 0.5))
                    for yy in range(max(y0, 0), min(y0 + s, 40)):
                        for xx in range(max(x0, 0), min(x0 + s, 56)):
                            assert r0 <= yy < r1 and c0 <= xx < c1
        assert s <= MAX_SPLAT_PX
    assert bounded > 20


def _reference_apply_references(cfg, rgb, depth, valid, c2w, K, references):
    """``GeometricGenerator._apply_references`` written with the reference warp and claim (every reference warped
    whole, in numpy)."""
    from spatia.world.camera import rotation_angle_deg, translation_distance_m
    from spatia.world.warp import _reference_claim_warped

    claimed = np.zeros_like(valid)
    fill_warps = 0 if 1.0 - float(valid.mean()) < cfg.fill_warp_min_hole_fraction else 1
    order = sorted(references, key=lambda r: rotation_angle_deg(r.c2w, c2w) + 10.0 * translation_distance_m(r.c2w, c2w))
    for ref in order[: cfg.max_reference_warps]:
        rot, trans = rotation_angle_deg(ref.c2w, c2w), translation_distance_m(ref.c2w, c2w)
        close = rot <= cfg.sharpen_max_rotation_deg and trans <= cfg.sharpen_max_translation_m
        same_view = rot <= cfg.trust_max_rotation_deg and trans <= cfg.trust_max_translation_m
        if not close:
            if not fill_warps:
                continue
            fill_warps -= 1
        warped = warp_rgbd_reference(ref.rgb, ref.depth_m, ref.intrinsics, ref.c2w, K, c2w)
        allowed = ~valid
        if same_view:
            allowed = np.ones_like(valid)
        elif close:
            allowed = allowed | (np.abs(warped.depth_m - depth) <= cfg.same_surface_rel_tol * np.maximum(depth, 1e-6))
        _reference_claim_warped(rgb, claimed, warped.rgb, warped.depth_m, allowed)
    return valid | claimed


@pytest.mark.parametrize("case", ["far", "far_few_holes", "close_and_far", "same_view"])
def test_apply_references_matches_the_reference_warps(case):
    """The generator's reference warps (far ones through ``warp_claim``, close ones whole) give the colour and
    the colour-valid mask of every reference warped whole and claimed in numpy."""
    from types import SimpleNamespace

    from spatia.model.geometric import GeometricGenerator
    from spatia.world.generator import ReferenceFrame

    def turned(deg, step_m):
        a = np.radians(deg)
        pose = np.eye(4)
        pose[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        pose[0, 3] = step_m
        return pose

    rng = np.random.default_rng(len(case))
    w, h = 64, 48
    K = Intrinsics.from_fov(70, w, h)
    gen = GeometricGenerator()
    refs = []
    poses = {"far": [(3.0, 0.1), (8.0, 0.2)], "far_few_holes": [(3.0, 0.1)],
             "close_and_far": [(3.0, 0.02), (4.0, 0.3), (9.0, 0.1)], "same_view": [(1.0, 0.01), (6.0, 0.1)]}[case]
    for i, (deg, step) in enumerate(poses):
        depth = (2.0 + rng.random((h, w))).astype(np.float32)
        depth[: h // 2, : w // 3] = 1.0  # a nearer box
        depth[rng.random((h, w)) < 0.05] = 0.0
        refs.append(ReferenceFrame(i, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), turned(deg, step), K,
                                   depth_m=depth))
    depth = (2.0 + rng.random((h, w))).astype(np.float32)
    valid = rng.random((h, w)) > (0.02 if case == "far_few_holes" else 0.1)
    valid[10:20, 30:45] = case == "far_few_holes"  # a hole blob (none when the holes are few)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    got_rgb, want_rgb = rgb.copy(), rgb.copy()
    got = gen._apply_references(got_rgb, depth, valid, np.eye(4), SimpleNamespace(intrinsics=K), refs)
    want = _reference_apply_references(gen.config, want_rgb, depth, valid, np.eye(4), K, refs)
    assert np.array_equal(got, want) and np.array_equal(got_rgb, want_rgb)
    assert got is not valid and (case == "far_few_holes" or (got & ~valid).any())


def test_warps_at_the_source_pose_with_unknown_depth_do_not_raise():
    """The projection divides before it tests: an unknown pixel with the target at the source's centre (a
    reference at the target's pose, standing still) divides by a zero target depth, which must skip the pixel, not
    raise ZeroDivisionError, on one thread and banded, whole warp and ``warp_claim``; the same as the reference."""
    from spatia.world.warp import _warp_claim_kernel, _warp_kernel, _warp_serial

    rgb, depth, K = _frame(7)
    assert (depth == 0).any()
    ref = warp_rgbd_reference(rgb, depth, K, np.eye(4), K, np.eye(4))
    R, t = np.eye(3), np.zeros(3)
    args = (rgb, depth, K.fx, K.fy, K.cx, K.cy, R, t, K.fx, K.fy, K.cx, K.cy)
    for kernel, extra in ((_warp_serial, ()), (_warp_kernel, (1,)), (_warp_kernel, (2,))):
        o_rgb, o_depth = np.zeros_like(rgb), np.zeros(depth.shape, np.float32)
        kernel(*args, o_rgb, o_depth, *extra)
        assert np.array_equal(o_rgb, ref.rgb) and np.array_equal(o_depth, ref.depth_m)
    for n_chunks in (1, 2):
        got_rgb, got_claimed = np.zeros_like(rgb), np.zeros(depth.shape, bool)
        _warp_claim_kernel(*args, np.ones(depth.shape, bool), got_rgb, got_claimed, n_chunks, 8,
                           np.empty((37, 49), np.int32), np.empty((36, 48), np.float32))
        assert np.array_equal(got_rgb, ref.rgb) and np.array_equal(got_claimed, ref.valid)
