"""The lock-step step's fast paths (issue 14 section 6, second pass): each against its slow twin, bit for bit."""

import numpy as np
import pytest

from spatia.world import _memory_kernels as K
from spatia.world._reference import reference_render, reference_tail_chunk_boxes
from spatia.world.camera import Intrinsics, look_at
from spatia.world.memory import MemoryConfig, SpatialMemory, depth_quant, splat_k


def _tail_memory(seed: int) -> SpatialMemory:
    """A memory whose points are all in the unsorted tail (below TAIL_MIN), added as a walk's frames add them:
    batch by batch, each batch one region of space (a few chunks of rows)."""
    rng = np.random.default_rng(seed)
    mem = SpatialMemory(MemoryConfig(voxel_size_m=0.05))
    for f in range(12):
        centre = rng.uniform(-4, 4, 3)
        pts = centre + rng.normal(0, 0.4, (700, 3))
        mem.integrate_points(pts, rng.integers(0, 256, (700, 3), dtype=np.uint8), frame_index=f)
    return mem


def test_tail_chunk_boxes_match_the_reference():
    mem = _tail_memory(0)
    n = mem._n
    for start, stop, chunk in ((0, n, K.TAIL_CHUNK), (17, n - 5, 100), (0, 1, 7), (3, n, n)):
        lo, hi = K.tail_chunk_boxes(mem._keys, start, stop, chunk)
        rlo, rhi = reference_tail_chunk_boxes(mem._keys, start, stop, chunk)
        assert np.array_equal(lo, rlo) and np.array_equal(hi, rhi)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_culled_tail_renders_as_every_point_does(seed):
    """The tail's chunk culling drops only chunks that cannot reach the image: the render equals the brute-force
    reference (every point, every splat pixel), from views inside, outside and at the edge of the cloud."""
    mem = _tail_memory(seed)
    assert mem._n_sorted == 0 and mem._n > 8 * K.TAIL_CHUNK
    K_ = Intrinsics.from_fov(75.0, 96, 72)
    rng = np.random.default_rng(seed + 10)
    culled = 0
    for _ in range(8):
        eye = rng.uniform(-6, 6, 3)
        c2w = look_at(eye, eye + rng.normal(0, 1, 3))
        lo, hi = K.tail_chunk_boxes(mem._keys, 0, mem._n, K.TAIL_CHUNK)
        T = c2w
        keep = K.cull_voxel_boxes(lo, hi, np.ascontiguousarray(T[:3, :3].T), T[:3, 3].copy(), K_.fx, K_.fy, K_.cx,
                                  K_.cy, K_.width, K_.height, float(mem.config.max_splat_px), mem.config.min_depth_m,
                                  mem.config.max_depth_m, mem.config.voxel_size_m)
        culled += int((~keep).sum())
        got = mem.render(K_, c2w, return_point_ids=True)
        n = mem._n
        ref = reference_render(mem._keys[:n], mem._offsets[:n], mem._colors[:n], mem.config.voxel_size_m, K_, c2w,
                               mem.config.min_depth_m, mem.config.max_depth_m, splat_k(mem.config, K_),
                               mem.config.max_splat_px, depth_quant(mem.config))
        for a, b in zip((got.rgb, got.depth_m, got.valid, got.point_ids), ref):
            assert np.array_equal(a, b)
    assert culled > 0  # the views did cull chunks (else this test would not test the culling)


def test_serial_warp_and_claim_match_their_references():
    """The one-thread warp (no band buffers) equals the banded kernel and the reference; the fused claim equals
    the numpy mask + copyto + or it replaced."""
    from spatia.world.warp import (
        _reference_claim_warped, _warp_kernel, _warp_serial, claim_warped, warp_rgbd_reference,
    )

    rng = np.random.default_rng(3)
    h, w = 36, 48
    src = Intrinsics.from_fov(70, w, h)
    dst = Intrinsics.from_fov(60, 40, 30)
    for seed in range(3):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        depth = (2.0 + rng.random((h, w))).astype(np.float32)
        depth[rng.random((h, w)) < 0.1] = 0.0
        dst_pose = look_at(rng.normal(0, 0.2, 3), [rng.normal(0, 0.3), rng.normal(0, 0.3), 2.5])
        rel = np.linalg.inv(dst_pose)
        args = (rgb, depth, src.fx, src.fy, src.cx, src.cy, np.ascontiguousarray(rel[:3, :3]),
                np.ascontiguousarray(rel[:3, 3]), dst.fx, dst.fy, dst.cx, dst.cy)
        outs = []
        for kernel, extra in ((_warp_serial, ()), (_warp_kernel, (1,)), (_warp_kernel, (3,))):
            o_rgb, o_depth = np.zeros((30, 40, 3), np.uint8), np.zeros((30, 40), np.float32)
            kernel(*args, o_rgb, o_depth, *extra)
            outs.append((o_rgb, o_depth))
        ref = warp_rgbd_reference(rgb, depth, src, np.eye(4), dst, dst_pose)
        for o_rgb, o_depth in outs:
            assert np.array_equal(o_rgb, ref.rgb) and np.array_equal(o_depth, ref.depth_m)
        base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        claimed = rng.random((30, 40)) < 0.3
        allowed = rng.random((30, 40)) < 0.6
        a_rgb, a_claimed = base.copy(), claimed.copy()
        claim_warped(a_rgb, a_claimed, ref.rgb, ref.depth_m, allowed)
        b_rgb, b_claimed = base.copy(), claimed.copy()
        _reference_claim_warped(b_rgb, b_claimed, ref.rgb, ref.depth_m, allowed)
        assert np.array_equal(a_rgb, b_rgb) and np.array_equal(a_claimed, b_claimed)
        assert a_claimed.sum() > claimed.sum()  # the warp claimed pixels (the test tests something)


def test_first_use_renumber_matches_the_sort():
    """A save's voxel-set range renumbers its columns in one pass; the same arrays as the stable-sort version."""
    from spatia.world.history import _renumber_kernel, reference_first_use_renumber

    rng = np.random.default_rng(5)
    for n_cols, m in ((1, 0), (1, 5), (50, 400), (5000, 3000)):
        cols = rng.integers(0, n_cols, m).astype(np.int32)
        used, out = _renumber_kernel()(cols, n_cols)
        r_used, r_out = reference_first_use_renumber(cols, n_cols)
        assert np.array_equal(used, r_used) and np.array_equal(out, r_out)
        assert out.dtype == np.int32 and np.array_equal(used[out], cols)


def test_voxel_set_overlaps_match_set_intersections():
    """The compaction's compiled overlap counts equal plain set intersections, and leave the scratch clear."""
    from spatia.world.history import VoxelSetIndex

    rng = np.random.default_rng(6)
    index = VoxelSetIndex()
    sets = [rng.choice(3000, size=int(rng.integers(0, 900)), replace=False).astype(np.int64) * 7 for _ in range(12)]
    for keys in sets:
        index.add(keys)
    mark = np.zeros(2 * index.num_voxels, bool)
    for f in (0, 5, 11):
        frames = np.array([g for g in range(12) if g != f], np.int64)
        got = index.overlaps(f, frames, mark)
        assert got.tolist() == [len(set(sets[f]) & set(sets[g])) for g in frames]
        assert not mark.any()


def test_casting_the_layout_only_off_pinholes_changes_no_frame(monkeypatch):
    """The layout fill casts its rays only for the holes that are not pinholes (a pinhole's layout hit is never
    read): on the frames of a short walk, the fill's depth, colour and mask equal those of casting every hole (in
    the numpy definition, ``_layout_fill_reference``; the compiled path is compared with it elsewhere)."""
    import spatia.client  # noqa: F401
    import spatia.model.geometric as geometric
    from spatia.client.env import SpatiaWorldEnv

    seen = []
    fill = geometric.GeometricGenerator._layout_fill

    def capturing(self, state, rgb, colored, depth, valid, *rest):
        seen.append((self, state, rgb.copy(), colored.copy(), depth.copy(), valid.copy(), *rest))
        return fill(self, state, rgb, colored, depth, valid, *rest)

    monkeypatch.setattr(geometric.GeometricGenerator, "_layout_fill", capturing)
    rng = np.random.default_rng(0)
    env = SpatiaWorldEnv(width=64, height=48, generator_kwargs={"coarse_frames": 0})
    env.reset(seed=0)
    for _ in range(6):
        env.step(np.array([rng.uniform(0.2, 1), 0, 0, rng.uniform(-1, 1), 0], np.float32))
    env.close()
    assert seen
    pinholes = 0
    for self, state, rgb, colored, depth, valid, *rest in seen:
        outs = []
        for cast_pinholes in (True, False):
            monkeypatch.setattr(geometric, "_CAST_PINHOLES", cast_pinholes)
            out_rgb = rgb.copy()
            # the numpy definition honours the flag (the compiled path never casts pinholes)
            out_depth, out_colored = geometric.GeometricGenerator._layout_fill_reference(
                self, state, out_rgb, colored, depth, valid, *rest)
            outs.append((out_rgb, out_depth, out_colored))
        for a, b in zip(*outs):
            assert np.array_equal(a, b)
        pinholes += int((~valid).sum())
    assert pinholes > 0  # the frames had holes to fill
