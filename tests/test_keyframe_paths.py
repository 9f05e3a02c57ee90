"""The keyframe clip's fast paths against their plain references: a render's voxel set (``rendered_keys``: a bitmap
over the ids and a merge walk over the dead rows, not ``mark_ids``'s byte per point), a frame's coarse voxel set
without most repeats (``coarsen_firsts``), ``pinholes`` in wide holes."""

import numpy as np
import pytest

from spatia.world import _memory_kernels as K
from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError
from spatia.world.history import FrameStore, HistoryConfig
from spatia.world.memory import MemoryConfig, SpatialMemory
from spatia.world.update import UpdateConfig

CFG = MemoryConfig(voxel_size_m=0.05)
CAM = Intrinsics.from_fov(75.0, 96, 64)
C2W = np.eye(4)
C2W[2, 3] = -4.0


def _reference_rendered_keys(keys: np.ndarray, n_rows: int, dead: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The live rows' keys (row order, dead ones cut out) at the distinct non-negative ids, ascending."""
    live = np.delete(keys[:n_rows], dead)
    return live[np.unique(ids[ids >= 0])]


@pytest.mark.parametrize("seed", range(6))
def test_rendered_keys_matches_the_reference_on_hostile_ids(seed):
    rng = np.random.default_rng(seed)
    n_rows = int(rng.choice([1, 63, 64, 65, 127, 128, 1000, 4097]))
    keys = rng.integers(0, 1 << 62, n_rows + 7)  # (capacity past the rows: never read)
    n_dead = int(rng.integers(0, n_rows))
    dead = np.sort(rng.choice(n_rows, n_dead, replace=False)).astype(np.int64)
    if seed == 0:  # a run of dead rows at the start and at the end
        dead = np.unique(np.r_[np.arange(min(70, n_rows // 2)), np.arange(n_rows - min(70, n_rows // 2), n_rows)])
        dead = dead[dead < n_rows].astype(np.int64)
    n = n_rows - len(dead)
    if n == 0:
        dead = dead[:-1]
        n = 1
    # ids: -1 holes, word edges (63, 64), the last id, repeats
    pool = np.r_[-1, -1, 0, n - 1, np.arange(min(n, 130)), rng.integers(-1, n, 300)]
    ids = rng.choice(pool, (17, 23)).astype(np.int32)
    got, bad = K.rendered_keys(ids, n, keys, dead)
    assert bad == -1
    assert np.array_equal(got, _reference_rendered_keys(keys, n_rows, dead, ids))
    empty, bad = K.rendered_keys(np.full((3, 4), -1, np.int32), n, keys, dead)
    assert bad == -1 and empty.shape == (0,)
    _, bad = K.rendered_keys(np.array([[0, n]], np.int32), n, keys, dead)
    assert bad == n


def test_rendered_voxel_keys_of_a_memory_with_dead_rows():
    rng = np.random.default_rng(3)
    mem = SpatialMemory(CFG)
    pts = rng.uniform(-3, 3, (20_000, 3))
    mem.integrate_points(pts, rng.integers(0, 256, (len(pts), 3), dtype=np.uint8), frame_index=0)
    mem.reindex()
    mem.integrate_points(rng.uniform(-3, 3, (5000, 3)), rng.integers(0, 256, (5000, 3), dtype=np.uint8), 1)
    mem._drop(np.sort(rng.choice(mem._n, 2000, replace=False)))
    r = mem.render(CAM, C2W, return_point_ids=True)
    assert r.valid.sum() > 1000 and len(mem._dead) == 2000
    want = mem.voxel_keys[np.unique(r.point_ids[r.point_ids >= 0])]
    assert np.array_equal(mem.rendered_voxel_keys(r.point_ids), want)
    assert np.array_equal(np.sort(want), mem.visible_voxel_keys(CAM, C2W))
    bad = r.point_ids.copy()
    bad[0, 0] = mem.num_points
    with pytest.raises(InvalidInputError):
        mem.rendered_voxel_keys(bad)


def _block_major_keys(rng, n: int) -> np.ndarray:
    """Keys as a memory's rows give them: runs inside 16^3-voxel blocks, blocks in sequence, some repeats far back."""
    from spatia.world.geometry import pack_voxel_coords

    blocks = rng.integers(-40, 40, (n // 50 + 1, 3)) * 16
    ijk = np.repeat(blocks, 50, axis=0)[:n] + rng.integers(0, 16, (n, 3))
    keys = pack_voxel_coords(ijk)
    keys[rng.integers(0, n, n // 20)] = keys[rng.integers(0, n, n // 20)]  # repeats anywhere
    return keys


@pytest.mark.parametrize("levels", [1, 3, 5])
def test_coarsen_firsts_keeps_every_first_occurrence_in_order(levels):
    from spatia.world.geometry import coarsen_voxel_keys
    from spatia.world.history import unique_first

    rng = np.random.default_rng(levels)
    keys = _block_major_keys(rng, 20_000)
    store = FrameStore(HistoryConfig(voxel_set_levels=levels))
    got = store._coarsen_firsts(keys)
    full = coarsen_voxel_keys(keys, levels)
    if levels >= 3:  # (what it is for: a block holds few coarse cubes)
        assert len(got) < len(full) // 2
    # the distinct keys in first-seen order, the same; and got is a subsequence of full
    first = lambda a: a[np.sort(unique_first(a)[1])]  # noqa: E731
    assert np.array_equal(first(got), first(full))
    pos = np.searchsorted(np.arange(len(full)), 0)
    for k in got[:2000]:  # (a subsequence: each next one found after the previous one)
        pos = pos + int(np.argmax(full[pos:] == k))
        assert full[pos] == k
        pos += 1


def test_frame_store_with_coarsen_firsts_equals_one_given_every_coarse_key(monkeypatch):
    rng = np.random.default_rng(7)
    frames = [_block_major_keys(rng, int(rng.integers(1, 5000))) for _ in range(40)]
    frames[5] = np.zeros(0, np.int64)
    cam = Intrinsics.from_fov(60.0, 8, 6)
    rgb = np.zeros((6, 8, 3), np.uint8)
    fast, plain = FrameStore(), FrameStore()
    monkeypatch.setattr(plain, "_coarsen_firsts", plain._coarsen)
    for i, keys in enumerate(frames):
        c2w = np.eye(4)
        c2w[0, 3] = 0.01 * i
        for store in (fast, plain):
            store.add(rgb, c2w, cam, keys, timestamp_ns=i)
    a, b = fast.voxels.to_arrays(), plain.voxels.to_arrays()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    for keys in frames[:10]:
        assert np.array_equal(fast.query_voxel_set(keys), plain.query_voxel_set(keys))
    assert np.array_equal(fast.indexed(), plain.indexed())
    q = [fast.query_voxel_set(k) for k in frames[-3:]]
    assert np.array_equal(fast.voxels.intersection_counts(q), plain.voxels.intersection_counts(q))


@pytest.mark.parametrize("max_gap_px", [1, 2, 3])
def test_pinholes_in_wide_holes_match_the_pixel_by_pixel_reference(max_gap_px):
    """``pinholes`` skips pixels with no rendered pixel within ``max_gap_px`` in both axes (the inside of a wide
    hole): against the reference on frames of blobs and wide holes, edges and corners included."""
    from test_bounded_memory import _pinholes_reference

    from spatia.world.update import pinholes

    rng = np.random.default_rng(10 + max_gap_px)
    for trial in range(30):
        h, w = rng.integers(1, 40, size=2)
        valid = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(0, 6))):  # rendered blobs, the rest a hole
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            valid[y0 : y0 + rng.integers(1, 8), x0 : x0 + rng.integers(1, 8)] = True
        valid &= rng.random((h, w)) < rng.uniform(0.5, 1.0)  # with pinholes in them
        if trial == 0:
            valid[:] = False
        rendered = np.where(valid, rng.uniform(1.0, 3.0, (h, w)), 0.0).astype(np.float32)
        depth = np.where(rng.random((h, w)) < 0.9, rng.uniform(0.8, 3.5, (h, w)), 0.0).astype(np.float32)
        got = pinholes(valid, rendered, depth, 0.1, max_gap_px)
        assert np.array_equal(got, _pinholes_reference(valid, rendered, depth, 0.1, max_gap_px))


def test_kept_tail_boxes_equal_fresh_ones_through_appends_drops_and_resorts():
    """``SpatialMemory._tail_boxes`` keeps the whole chunks' boxes between calls: after every change they must equal
    ``tail_chunk_boxes`` of the tail read afresh, and a box query through them list what a plain test finds."""
    from spatia.world.memory import INVENTED_FINAL, OBSERVED

    rng = np.random.default_rng(11)
    mem = SpatialMemory(CFG)
    mem.integrate_points(rng.uniform(-3, 3, (3000, 3)), np.zeros((3000, 3), np.uint8), 0, provenance=INVENTED_FINAL)
    mem.reindex()
    for step in range(30):
        op = step % 5
        if op in (0, 1):  # appends of a few points or of several chunks (a local patch: a chunk box of its own)
            m = int(rng.choice([1, 37, 255, 256, 257, 900]))
            centre = rng.uniform(-3, 3, 3)
            mem.integrate_points(centre + rng.uniform(-0.3, 0.3, (m, 3)), np.zeros((m, 3), np.uint8), step,
                                 provenance=INVENTED_FINAL)
        elif op == 2:  # drops (dead rows keep their keys)
            live = np.setdiff1d(np.arange(mem._n), mem._dead)
            mem._drop(np.sort(rng.choice(live, min(100, len(live)), replace=False)))
        elif op == 3 and step % 10 == 3:
            mem.reindex()
        lo, hi = mem._tail_boxes()
        f_lo, f_hi = K.tail_chunk_boxes(mem._keys, mem._n_sorted, mem._n, K.TAIL_CHUNK)
        assert np.array_equal(lo, f_lo) and np.array_equal(hi, f_hi), step
        q_lo, q_hi = rng.integers(-60, 20, 3), None
        q_hi = q_lo + rng.integers(0, 50, 3)
        got = K.box_candidates(mem._keys, mem._prov, mem._last, mem._n, mem._n_sorted, mem._block_ids,
                               mem._block_starts, lo, hi, *q_lo.tolist(), *q_hi.tolist(), OBSERVED,
                               np.iinfo(np.int32).min)
        ijk = np.floor(mem._positions64() / CFG.voxel_size_m).astype(np.int64)
        prov = mem._prov[: mem._n]
        want = np.flatnonzero(np.all((ijk >= q_lo) & (ijk <= q_hi), axis=1) & (prov != OBSERVED) & (prov != K.DEAD))
        assert np.array_equal(got, want), step


def test_known_depth_matches_the_numpy_expression_on_hostile_values():
    from spatia.world.update import _choose_depth, _known_depth, _reference_known_depth

    rng = np.random.default_rng(4)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -2.0, 1.5, np.finfo(np.float32).max],
                       np.float32)
    for dtype in (np.float32, np.float64):
        depth = rng.choice(special, (37, 53)).astype(dtype)
        depth[::3] = rng.uniform(-1, 5, depth[::3].shape)
        for d in (depth, depth[:, ::2], depth.T):  # non-contiguous too
            out = np.empty(d.shape, np.float32)
            assert not _known_depth(np.ascontiguousarray(d, dtype=np.float32), out)
            want = _reference_known_depth(d)
            assert out.tobytes() == want.tobytes()  # bit for bit (zeros' signs too)
            rgb = np.zeros(d.shape + (3,), np.uint8)
            got, source = _choose_depth(None, rgb, d, None, None, UpdateConfig())
            assert source == "generator" and got.dtype == np.float32 and got.tobytes() == want.tobytes()
    bad = np.ones((4, 5), np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        _choose_depth(None, np.zeros((4, 5, 3), np.uint8), bad, None, None, UpdateConfig())
    with pytest.raises(InvalidInputError, match="generator_depth must be"):
        _choose_depth(None, np.zeros((4, 5, 3), np.uint8), np.ones((5, 4)), None, None, UpdateConfig())


def test_integrate_of_a_keyframe_like_frame_matches_the_reference():
    """``frame_samples`` lists the sample pixels in its first pass and reads only them: a frame excluded but for a
    few holes (whole rows without a sample, rows with one, a hole at each edge), with unknown depths, integrated
    into a memory that already holds some of it, against the numpy reference of the whole integrate."""
    from test_memory import assert_same_state, orbit_poses, plane_frame

    from spatia.world import _reference as ref

    rng = np.random.default_rng(9)
    cfg = MemoryConfig(voxel_size_m=0.02, max_mean_weight=3)
    cam = Intrinsics.from_fov(70.0, 160, 120)
    mem = SpatialMemory(cfg)
    state: dict = {}
    for f, c2w in enumerate(orbit_poses(3)):
        rgb, depth = plane_frame(cam, c2w, normal=[0.3, 0.1, -1.0], offset_m=-0.4)
        depth[rng.random(depth.shape) < 0.05] = np.nan
        depth[rng.random(depth.shape) < 0.05] = -1.0
        exclude = np.ones(depth.shape, bool) if f else np.zeros(depth.shape, bool)  # the first frame whole
        if f:
            exclude[30:34, 50:90] = False  # a hole
            exclude[70, 5] = exclude[0, 0] = exclude[119, 159] = exclude[60, 159] = False  # single pixels, corners
            exclude[90:100, 0:3] = False
        stats = mem.integrate(rgb, depth, cam, c2w, frame_index=10 + f, exclude_mask=exclude)
        pts, pix = ref.reference_frame_points(depth, cam, c2w, cfg.max_depth_m, exclude)
        keys, offs = ref.reference_quantize(pts, cfg.voxel_size_m)
        want = ref.reference_merge(state, keys, offs, rgb.reshape(-1, 3)[pix], 10 + f, cfg.max_mean_weight)
        assert tuple(stats) == tuple(want)
        assert_same_state(mem, state)


@pytest.mark.parametrize("masks", ["none", "dyn", "prov", "both"])
def test_seen_through_mask_matches_numpy_bit_for_bit(masks):
    from spatia.world.update import _NO_MASK, _reference_seen_through_mask, _seen_through_mask

    rng = np.random.default_rng(len(masks))
    h, w = 41, 67
    depth = rng.uniform(0, 6, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.1] = 0.0
    # rendered depths right at the threshold (float32 rounding decides), and far in front
    rel = 0.03
    edge = depth * np.float32(1.0 - rel) - np.float32(0.05)
    r_depth = np.where(rng.random((h, w)) < 0.5, edge, edge + rng.choice([-1e-6, 0, 1e-6, -1, 1], (h, w)))
    r_depth = np.nextafter(r_depth.astype(np.float32), rng.choice([-np.inf, np.inf], (h, w)).astype(np.float32))
    r_depth[rng.random((h, w)) < 0.3] = np.float32(0.0)
    valid = rng.random((h, w)) < 0.8
    dyn = rng.random((h, w)) < 0.2 if masks in ("dyn", "both") else None
    prov = rng.random((h, w)) < 0.2 if masks in ("prov", "both") else None
    out = np.empty((h, w), bool)
    found = _seen_through_mask(valid, depth, r_depth, np.float32(1.0 - rel), np.float32(0.05),
                               _NO_MASK if dyn is None else dyn, _NO_MASK if prov is None else prov, out)
    want = _reference_seen_through_mask(valid, depth, r_depth, rel, dyn, prov)
    assert np.array_equal(out, want) and found == bool(want.any()) and want.any() and not want.all()


def test_render_ids_made_when_first_read_are_those_of_the_render_time():
    """With dead rows, ``render`` hands back its rows and turns them into point indices when ``point_ids`` is first
    read, against the dead rows of the render's time: the same ids as before, read at once or after later drops."""
    from spatia.world.memory import RenderResult

    rng = np.random.default_rng(12)
    mem = SpatialMemory(CFG)
    mem.integrate_points(rng.uniform(-3, 3, (20_000, 3)), rng.integers(0, 256, (20_000, 3), dtype=np.uint8), 0)
    mem.reindex()
    mem.integrate_points(rng.uniform(-3, 3, (5000, 3)), rng.integers(0, 256, (5000, 3), dtype=np.uint8), 1)
    mem._drop(np.sort(rng.choice(mem._n, 3000, replace=False)))
    rows = mem._render(CAM, C2W)[3].copy()
    want = rows.copy()
    K.live_ids(want, mem._dead, mem._n)
    early, late = mem.render(CAM, C2W, return_point_ids=True), mem.render(CAM, C2W, return_point_ids=True)
    assert isinstance(early, RenderResult) and (want >= 0).sum() > 1000
    assert np.array_equal(early.point_ids, want)
    live = np.setdiff1d(np.arange(mem._n), mem._dead)
    mem._drop(np.sort(rng.choice(live, 2000, replace=False)))  # later drops: the render's ids stay its own
    assert np.array_equal(late.point_ids, want) and np.array_equal(late.point_ids, want)
    assert late.valid is not None and late.rgb.shape == (64, 96, 3)
    assert np.array_equal(np.asarray(want >= 0), early.valid)


def test_valid_depth_matches_numpy():
    from spatia.world.update import _unpack_render, _valid_depth

    rng = np.random.default_rng(13)
    depth = rng.choice(np.array([0.0, -0.0, -1.0, np.inf, -np.inf, np.nan, 1e-45, 2.5], np.float32), (23, 31))
    valid = rng.random((23, 31)) < 0.7
    want = valid & np.isfinite(depth) & (depth > 0)
    assert np.array_equal(_valid_depth(valid, depth), want) and want.any() and not want.all()
    rgb = np.zeros((23, 31, 3), np.uint8)
    _, d, v = _unpack_render((rgb, depth[:, ::1], valid), (23, 31))
    assert np.array_equal(v, want) and d.dtype == np.float32
