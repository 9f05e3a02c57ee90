"""FrameStore: codecs, poses, LRU, validation, snapshot round trip; VoxelSetIndex against np.intersect1d."""

from __future__ import annotations

import os

import numpy as np
import pytest

from spatia.world._retrieval_reference import reference_intersection_counts
from spatia.world.camera import Intrinsics, look_at
from spatia.world.errors import ImageDecodeError, InvalidInputError, NotFoundError, SnapshotError
from spatia.world.geometry import coarsen_voxel_keys, pack_voxel_coords, unpack_voxel_keys
from spatia.world.history import FrameStore, HistoryConfig, VoxelSetIndex

K = Intrinsics.from_fov(60.0, 32, 24)
EXACT = HistoryConfig(voxel_set_levels=0)  # sets kept at the keys given: the index mechanics tested exactly


def _image(seed: int, w: int = 32, h: int = 24) -> np.ndarray:
    """A smooth RGB gradient with a seed-dependent phase (JPEG-friendly, unlike noise)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(0.3 * xx + seed)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def _depth(seed: int, w: int = 32, h: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.3, 12.0, size=(h, w)).astype(np.float32)
    d[rng.random((h, w)) < 0.2] = 0.0  # unknown pixels
    return d


def _pose(i: int) -> np.ndarray:
    return look_at([0.1 * i, 0.0, -3.0], [0.1 * i, 0.0, 0.0])


def _keys(rng: np.random.Generator, n: int, extent: int = 40) -> np.ndarray:
    return np.unique(pack_voxel_coords(rng.integers(-extent, extent, size=(n, 3))))


def test_add_and_read_back_poses_intrinsics_timestamps_and_voxels():
    store = FrameStore(EXACT)
    rng = np.random.default_rng(0)
    keys = [_keys(rng, 200) for _ in range(5)]
    for i in range(5):
        assert store.add(_image(i), _pose(i), K, keys[i], timestamp_ns=1000 + i) == i
    assert len(store) == 5
    np.testing.assert_array_equal(store.poses(), np.stack([_pose(i) for i in range(5)]))
    np.testing.assert_array_equal(store.timestamps_ns(), 1000 + np.arange(5))
    assert store.intrinsics(3) == K
    for i in range(5):
        np.testing.assert_array_equal(store.get_voxel_keys(i), keys[i])
    p = store.get_pose(2)
    p[0, 3] = 99.0  # a copy: the store is unchanged
    assert store.get_pose(2)[0, 3] == pytest.approx(0.2)
    with pytest.raises(ValueError):
        store.poses()[0, 0, 0] = 5.0  # the bulk view is read-only


def test_voxel_keys_are_stored_as_a_set():
    store = FrameStore(EXACT)
    store.add(_image(0), _pose(0), K, np.array([9, 3, 3, 7, 9], dtype=np.int64))
    store.add(_image(1), _pose(1), K, np.zeros(0, dtype=np.int64))  # a view that sees nothing is allowed
    np.testing.assert_array_equal(store.get_voxel_keys(0), [9, 3, 7])  # distinct, in the order given
    assert store.get_voxel_keys(1).shape == (0,)
    assert store.voxels.sizes().tolist() == [3, 0]
    np.testing.assert_array_equal(store.voxels.intersection_counts([np.array([3, 9, 4])]), [[2, 0]])


def test_jpeg_is_close_and_png_is_exact():
    img = _image(3, 64, 48)
    jpeg = FrameStore(HistoryConfig(image_codec="jpeg", jpeg_quality=95))
    png = FrameStore(HistoryConfig(image_codec="png", voxel_set_levels=0))
    for s in (jpeg, png):
        s.add(img, _pose(0), K.scaled(64, 48), np.arange(3))
    np.testing.assert_array_equal(png.get_rgb(0), img)
    err = np.abs(jpeg.get_rgb(0).astype(np.int16) - img.astype(np.int16))
    assert err.mean() < 3.0 and err.max() < 40  # 4:2:0 chroma subsampling dominates the error
    assert jpeg.get_rgb(0).dtype == np.uint8 and jpeg.get_rgb(0).shape == (48, 64, 3)


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_image_records_are_the_bytes_of_the_channel_reversed_copy(codec):
    """``_encode_rgb`` / ``_decode_rgb`` swap channels with OpenCV: the same bytes and pixels as numpy's reversed
    channel axis (the reference)."""
    import cv2

    from spatia.world.history import _decode_rgb, _encode_rgb

    img = (np.random.default_rng(4).random((48, 64, 3)) * 255).astype(np.uint8)
    config = HistoryConfig(image_codec=codec)
    params = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality] if codec == "jpeg" else \
        [cv2.IMWRITE_PNG_COMPRESSION, config.png_compression]
    blob = cv2.imencode(f".{codec}", np.ascontiguousarray(img[:, :, ::-1]), params)[1].tobytes()
    assert _encode_rgb(img, config) == blob
    bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(_decode_rgb(blob, 64, 48, "frame 0"), bgr[:, :, ::-1])


@pytest.mark.parametrize(
    "codec, atol, rtol",
    [("float32_zstd", 0.0, 0.0), ("float16_zstd", 0.0, 1e-3), ("png_mm", 0.0005 + 1e-6, 0.0)],
)
def test_depth_codecs(codec, atol, rtol):
    depth = _depth(1)
    store = FrameStore(HistoryConfig(depth_codec=codec))
    store.add(_image(0), _pose(0), K, np.arange(3), depth_m=depth)
    store.add(_image(1), _pose(1), K, np.arange(3))
    out = store.get_depth(0)
    assert out.dtype == np.float32 and out.shape == depth.shape
    np.testing.assert_allclose(out, depth, atol=atol, rtol=rtol)
    np.testing.assert_array_equal(out == 0, depth == 0)  # unknown stays unknown
    assert store.has_depth(0) and not store.has_depth(1) and store.get_depth(1) is None


def test_depth_a_codec_cannot_hold_becomes_unknown():
    depth = np.full((24, 32), 2.0, dtype=np.float32)
    depth[0, 0] = 70.0  # > 65.535 m: no 16-bit millimetre value
    store = FrameStore(HistoryConfig(depth_codec="png_mm"))
    store.add(_image(0), _pose(0), K, np.arange(3), depth_m=depth)
    out = store.get_depth(0)
    assert out[0, 0] == 0.0 and out[1, 1] == pytest.approx(2.0)


def test_float16_depth_kernels_give_numpys_bits():
    """The compiled float16 codec (``_depth_as_stored``, ``_half_to_float32``) against numpy's casts
    (``_depth_as_stored_reference``): every exponent with its rounding edges (ties to even, carries into the
    exponent, subnormals, float16's overflow to "unknown"), both signs, inf and NaN, and random bit patterns."""
    from spatia.world.history import _depth_as_stored, _depth_as_stored_reference, _half_to_float32

    rng = np.random.default_rng(0)
    exps = np.arange(256, dtype=np.uint32) << 23
    mants = np.array([0, 1, 0x7FF, 0x800, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFFFF, 0x7FE000,
                      0x7FEFFF, 0x7FF000, 0x400000, 0x401000, 0x403000], dtype=np.uint32)
    edges = (exps[:, None] | mants[None, :]).ravel()
    bits = np.concatenate([edges, edges | np.uint32(0x80000000), rng.integers(0, 1 << 32, 200_000, dtype=np.uint64)
                           .astype(np.uint32)])
    values = bits.view(np.float32).reshape(-1, 8)  # any 2-D shape: a depth map
    config = HistoryConfig(depth_codec="float16_zstd")
    ours, ref = _depth_as_stored(values, config), _depth_as_stored_reference(values, config)
    assert ours.dtype == np.float16 and ours.shape == values.shape
    np.testing.assert_array_equal(ours.view(np.uint16), ref.view(np.uint16))
    # another dtype goes the reference's way (one rounding, not float64 -> float32 -> float16)
    wide = np.where(np.isfinite(values), values, np.float32(0)).astype(np.float64) * 1.0000001
    np.testing.assert_array_equal(_depth_as_stored(wide, config).view(np.uint16),
                                  _depth_as_stored_reference(wide, config).view(np.uint16))
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(256, 256)
    np.testing.assert_array_equal(_half_to_float32(every).view(np.uint32), every.astype(np.float32).view(np.uint32))
    depth = _depth(3)  # and a stored depth map decodes to the float32 numpy would give
    store = FrameStore(config)
    store.add(_image(0), _pose(0), K, np.arange(3), depth_m=depth)
    expected = _depth_as_stored_reference(depth, config).astype(np.float32)
    np.testing.assert_array_equal(store.get_depth(0).view(np.uint32), expected.view(np.uint32))


def test_branch_free_float16_kernel_matches_the_branchy_reference():
    """``_depth_as_stored``'s vectorisable kernel against the step-by-step one it replaced (``to_half_bits``, which
    was checked against numpy over all 2^32 float32 patterns): every exponent with a dense run of low mantissa
    patterns and the rounding edges (ties, carries, the subnormal shifts), both signs, and 2^20 random patterns."""
    from spatia.world.history import _half_kernels

    fast, _, _, reference = _half_kernels()
    rng = np.random.default_rng(1)
    exps = np.arange(256, dtype=np.uint32) << 23
    mants = np.concatenate([np.arange(0x4000, dtype=np.uint32), np.arange(0x7FC000, 0x800000, dtype=np.uint32),
                            rng.integers(0, 1 << 23, 2048, dtype=np.uint32)])
    bits = (exps[:, None] | mants[None, :]).ravel()
    bits = np.concatenate([bits, bits | np.uint32(0x80000000),
                           rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)])
    ours, ref = np.empty(bits.shape, np.uint16), np.empty(bits.shape, np.uint16)
    fast(bits, ours)
    reference(bits, ref)
    np.testing.assert_array_equal(ours, ref)


def test_depth_records_are_a_fresh_compressors_bytes():
    """The encoder thread's reused zstd compressor (``_zstd_compressor``) writes the bytes a new compressor
    would, frame after frame and from another thread too (each thread has its own)."""
    import threading

    import zstandard

    from spatia.world.history import _depth_as_stored, _encode_depth

    config = HistoryConfig(depth_codec="float16_zstd")
    depths = [_depth(i) for i in range(4)] + [np.zeros((48, 64), np.float32)]
    fresh = [zstandard.ZstdCompressor(level=config.zstd_level).compress(_depth_as_stored(d, config).tobytes())
             for d in depths]
    assert [_encode_depth(d, config) for d in depths] == fresh
    assert [_encode_depth(d, config) for d in reversed(depths)] == fresh[::-1]
    other: list[bytes] = []
    t = threading.Thread(target=lambda: other.extend(_encode_depth(d, config) for d in depths))
    t.start()
    t.join()
    assert other == fresh


def test_lru_cache_is_bounded_and_returns_read_only_arrays():
    store = FrameStore(HistoryConfig(image_codec="png", decoded_cache_frames=2))
    for i in range(4):
        store.add(_image(i), _pose(i), K, np.arange(3))
    a = store.get_rgb(0)
    assert store.get_rgb(0) is a  # second read is the cached array
    store.get_rgb(1)
    store.get_rgb(2)  # evicts frame 0
    assert len(store._cache) == 2 and ("rgb", 0) not in store._cache
    np.testing.assert_array_equal(store.get_rgb(0), _image(0))
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1
    uncached = FrameStore(HistoryConfig(decoded_cache_frames=0))
    uncached.add(_image(0), _pose(0), K, np.arange(3))
    assert uncached.get_rgb(0) is not uncached.get_rgb(0)


def test_invalid_inputs_name_the_problem_and_store_nothing():
    store = FrameStore()
    with pytest.raises(InvalidInputError, match="rgb must be uint8"):
        store.add(_image(0)[:, :16], _pose(0), K, np.arange(3))
    with pytest.raises(InvalidInputError, match="rgb must be uint8"):
        store.add(_image(0).astype(np.float32), _pose(0), K, np.arange(3))
    bad_pose = _pose(0)
    bad_pose[:3, :3] *= 2.0
    with pytest.raises(InvalidInputError, match="not rigid"):
        store.add(_image(0), bad_pose, K, np.arange(3))
    with pytest.raises(InvalidInputError, match="negative"):
        store.add(_image(0), _pose(0), K, np.array([-5, 1]))
    with pytest.raises(InvalidInputError, match="1-D"):
        store.add(_image(0), _pose(0), K, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(InvalidInputError, match="integer"):
        store.add(_image(0), _pose(0), K, np.array([1.5]))
    with pytest.raises(InvalidInputError, match="finite"):
        store.add(_image(0), _pose(0), K, np.arange(3), depth_m=np.full((24, 32), np.nan, dtype=np.float32))
    with pytest.raises(InvalidInputError, match="depth_m must be float"):
        store.add(_image(0), _pose(0), K, np.arange(3), depth_m=np.ones((10, 10), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="Intrinsics"):
        store.add(_image(0), _pose(0), K.matrix, np.arange(3))
    assert len(store) == 0 and store.poses().shape == (0, 4, 4) and len(store.voxels) == 0
    with pytest.raises(NotFoundError):
        store.get_rgb(0)
    with pytest.raises(InvalidInputError):
        HistoryConfig(image_codec="webp")
    with pytest.raises(InvalidInputError):
        HistoryConfig(jpeg_quality=0)


def test_snapshot_round_trip_is_exact():
    rng = np.random.default_rng(5)
    store = FrameStore(HistoryConfig(index_tail_runs=50, voxel_set_levels=0))
    for i in range(7):
        depth = _depth(i) if i % 2 == 0 else None
        store.add(_image(i), _pose(i), K, _keys(rng, 100), depth_m=depth, timestamp_ns=10 * i)
    data = store.to_arrays()
    for name, value in data.items():  # plain values only: what a msgpack writer can take
        assert isinstance(value, (np.ndarray, bytes, int, dict)), name
    back = FrameStore.from_arrays(data)
    assert back.config == store.config and len(back) == len(store)
    again = back.to_arrays()
    for name in data:
        if isinstance(data[name], np.ndarray):
            np.testing.assert_array_equal(again[name], data[name], err_msg=name)
        else:
            assert again[name] == data[name], name
    for i in range(7):
        np.testing.assert_array_equal(back.get_rgb(i), store.get_rgb(i))
        np.testing.assert_array_equal(back.get_voxel_keys(i), store.get_voxel_keys(i))
        assert back.has_depth(i) == store.has_depth(i)
        if store.has_depth(i):
            np.testing.assert_array_equal(back.get_depth(i), store.get_depth(i))
    q = [_keys(rng, 300) for _ in range(3)]
    np.testing.assert_array_equal(back.voxels.intersection_counts(q), store.voxels.intersection_counts(q))
    # The restored store keeps growing normally.
    assert back.add(_image(9), _pose(9), K, _keys(rng, 50)) == 7


def test_snapshot_errors():
    store = FrameStore(EXACT)
    store.add(_image(0), _pose(0), K, np.arange(5))
    store.add(_image(1), _pose(1), K, np.arange(3, 9))
    data = store.to_arrays()
    with pytest.raises(SnapshotError, match="version"):
        FrameStore.from_arrays({**data, "version": 99})
    with pytest.raises(SnapshotError):
        FrameStore.from_arrays({**data, "rgb_offsets": data["rgb_offsets"][:-1]})
    with pytest.raises(SnapshotError):
        FrameStore.from_arrays({**data, "voxel_cols": data["voxel_cols"] + 100})
    with pytest.raises(SnapshotError, match="malformed"):
        FrameStore.from_arrays({k: v for k, v in data.items() if k != "c2w"})


@pytest.mark.parametrize("tail_runs", [1, 300, 1 << 30])
def test_intersection_counts_match_reference_across_index_rebuilds(tail_runs):
    """Runs merged into the by-voxel index and runs still in the scanned list give the counts np.intersect1d does."""
    rng = np.random.default_rng(tail_runs % 1000)
    index = VoxelSetIndex(tail_runs)
    frame_sets = []
    for _ in range(23):
        frame_sets.append(_keys(rng, int(rng.integers(0, 400)), extent=12))
        index.add(frame_sets[-1])
    # 70 query sets: several 16-target bitmask passes over the unmerged runs; one empty; one fully unseen.
    queries = [_keys(rng, int(rng.integers(1, 500)), extent=12) for _ in range(68)]
    queries += [np.zeros(0, dtype=np.int64), pack_voxel_coords(np.array([[500, 500, 500]]))]
    np.testing.assert_array_equal(
        index.intersection_counts(queries), reference_intersection_counts(queries, frame_sets)
    )
    np.testing.assert_array_equal(index.sizes(), [s.shape[0] for s in frame_sets])
    if tail_runs == 1:  # merged often: only the runs closed since the last merge are left in the list
        assert index.num_unsealed_runs < index.num_runs - index.num_voxels
    if tail_runs == 1 << 30:  # never merged
        assert index.num_unsealed_runs == index.num_runs - index.num_voxels > 0


def test_column_table_prepared_in_the_background_gives_the_same_index(monkeypatch):
    """Larger column tables built on the maintenance thread (and adopted with the columns created meanwhile) give
    the same columns, sets and counts as tables rebuilt on the spot."""
    from concurrent.futures import Future

    import spatia.world.history as history_module

    rng = np.random.default_rng(4)
    sets = [_keys(rng, 2500, extent=120) for _ in range(24)]
    monkeypatch.setattr(history_module, "TABLE_AHEAD_MIN_SLOTS", 1 << 60)  # never prepared: the reference
    spot = VoxelSetIndex(tail_runs=3000)
    for s in sets:
        spot.add(s)
    monkeypatch.setattr(history_module, "TABLE_AHEAD_MIN_SLOTS", 1 << 12)
    adopted = []
    adopt = VoxelSetIndex._adopt_table

    def counting(self, wait):
        table = self._table
        adopt(self, wait)
        adopted.append(self._table is not table)

    monkeypatch.setattr(VoxelSetIndex, "_adopt_table", counting)
    index = VoxelSetIndex(tail_runs=3000)
    held = 0
    for s in sets:
        fits = 2 * (index.num_voxels + s.shape[0]) <= index._table.shape[0]  # this frame needs no new table
        if index._table_job is None and index.num_voxels >= 2000 and fits and not held:
            # a table prepared early and held back over a frame: the columns that frame creates are added to it
            # when it is adopted
            index._prepare_table(index._table.shape[0])
            job, n0 = index._table_job
            table = job.result()
            pending: Future = Future()
            index._table_job = (pending, n0)
            index.add(s)
            assert index._table_job[0] is pending and index.num_voxels > n0  # not done: not adopted
            pending.set_result(table)
            held = 1
            continue
        index.add(s)
    assert held and sum(adopted) >= 2  # the held one and at least one prepared as the index grew
    assert index.num_voxels == spot.num_voxels
    for f in range(len(sets)):
        np.testing.assert_array_equal(index.keys(f), spot.keys(f))
        np.testing.assert_array_equal(index.columns(f), spot.columns(f))
    probe = np.concatenate(sets + [_keys(rng, 500, extent=300)])
    np.testing.assert_array_equal(index.lookup(probe), spot.lookup(probe))
    queries = [np.unique(np.concatenate(sets[i : i + 3])) for i in (0, 10, 20)]
    np.testing.assert_array_equal(index.intersection_counts(queries), spot.intersection_counts(queries))


def test_growing_buffers_prepared_in_the_background_keep_every_row(monkeypatch):
    """An append-only ``GrowingRows`` whose next buffer is filled on the maintenance thread (rows appended meanwhile
    copied at the adoption) holds the same rows as one grown on the spot; so does a whole index built so."""
    from concurrent.futures import Future

    import spatia.world.history as history_module

    monkeypatch.setattr(history_module, "GROWING_AHEAD_MIN_BYTES", 1 << 10)
    rng = np.random.default_rng(5)
    chunks = [rng.integers(0, 1 << 30, rng.integers(50, 400)).astype(np.int32) for _ in range(60)]
    grown = history_module.GrowingRows((), np.int32, 16, append_only=True)
    held = adopted = 0
    for c in chunks:
        buf = grown.buffer
        if grown._ahead is not None and not held and grown.size + 3 * c.shape[0] <= buf.shape[0]:
            job, n0 = grown._ahead  # held back over two appends: their rows are copied when it is adopted
            pending: Future = Future()
            grown._ahead = (pending, n0)
            grown.extend(c)
            assert grown._ahead is not None and grown._ahead[0] is pending and grown.size > n0
            pending.set_result(job.result())
            held = 1
            continue
        grown.extend(c)
        adopted += grown.buffer is not buf and grown.buffer.shape[0] > buf.shape[0] and grown._ahead is None
    assert held and adopted
    np.testing.assert_array_equal(grown.view, np.concatenate(chunks))
    sets = [_keys(rng, 1500, extent=100) for _ in range(16)]
    index = VoxelSetIndex(tail_runs=2000)
    for s_ in sets:
        index.add(s_)
    for f, s_ in enumerate(sets):
        np.testing.assert_array_equal(index.keys(f), s_)
    queries = [np.unique(np.concatenate(sets[i : i + 2])) for i in (0, 7, 14)]
    np.testing.assert_array_equal(index.intersection_counts(queries),
                                  reference_intersection_counts(queries, sets))


def test_runs_merged_in_the_background_give_the_same_counts(monkeypatch):
    """Closed runs merged into the by-column index on the maintenance thread (adopted frames later, the runs
    closed meanwhile kept in the list) count the same as the reference, before and after each adoption."""
    from concurrent.futures import Future

    import spatia.world.history as history_module

    monkeypatch.setattr(history_module, "SEAL_AHEAD_MIN_RUNS", 1)
    rng = np.random.default_rng(6)
    base = _keys(rng, 1200, extent=30)
    sets = [np.unique(np.concatenate([base[rng.random(base.shape[0]) < 0.7], _keys(rng, 300, extent=60)]))
            for _ in range(30)]
    queries = [np.unique(np.concatenate(sets[i : i + 2])) for i in (0, 12, 27)]
    index = VoxelSetIndex(tail_runs=1500)
    held = adopted = 0
    for f, s_ in enumerate(sets):
        if index._seal_job is not None and not held:  # held back over two frames: their runs stay in the list
            job, k = index._seal_job
            pending: Future = Future()
            index._seal_job = (pending, k)
            index.add(s_)
            assert index._seal_job is not None and index._seal_job[0] is pending
            np.testing.assert_array_equal(index.intersection_counts(queries),
                                          reference_intersection_counts(queries, sets[: f + 1]))
            pending.set_result(job.result())
            held = 1
            continue
        before = index._sealed_starts
        index.add(s_)
        adopted += index._sealed_starts is not before
        np.testing.assert_array_equal(index.intersection_counts(queries),
                                      reference_intersection_counts(queries, sets[: f + 1]))
    assert held and adopted >= 2
    index.seal()  # what is left, on the spot (after any merge still in preparation)
    assert index._seal_job is None and index.num_unsealed_runs == 0
    np.testing.assert_array_equal(index.intersection_counts(queries), reference_intersection_counts(queries, sets))


def test_hash_table_growth_keeps_every_column():
    """Tens of thousands of distinct keys force several table rehashes; every lookup still finds its column."""
    rng = np.random.default_rng(1)
    index = VoxelSetIndex(tail_runs=1000)
    sets = [_keys(rng, 3000, extent=200) for _ in range(20)]
    for s in sets:
        index.add(s)
    for i in (0, 7, 19):
        np.testing.assert_array_equal(index.keys(i), sets[i])
    all_keys = np.unique(np.concatenate(sets))
    assert index.num_voxels == all_keys.shape[0]
    cols = index.lookup(all_keys)
    assert cols.min() >= 0 and np.unique(cols).shape[0] == all_keys.shape[0]
    assert (index.lookup(np.array([pack_voxel_coords(np.array([[999, 999, 999]]))[0]])) == -1).all()


def test_five_thousand_frames_stay_cheap():
    """The hot paths at the brief's scale: poses in one array, counts over 5,000 frames equal the reference."""
    rng = np.random.default_rng(2)
    # every frame at the same pose: compaction off, this checks the raw index against the reference
    store = FrameStore(HistoryConfig(image_codec="png", voxel_set_levels=0, compact_cell_m=0))
    img = _image(0, 8, 6)
    K_small = Intrinsics.from_fov(60.0, 8, 6)
    frame_sets = []
    for i in range(5000):
        centre = rng.integers(-30, 30, size=3)
        frame_sets.append(np.unique(pack_voxel_coords(centre + rng.integers(-4, 4, size=(60, 3)))))
        store.add(img, np.eye(4), K_small, frame_sets[-1], timestamp_ns=i)
    assert store.poses().shape == (5000, 4, 4)
    queries = frame_sets[100:103]
    np.testing.assert_array_equal(
        store.voxels.intersection_counts(queries), reference_intersection_counts(queries, frame_sets)
    )
    assert store.nbytes > 0


def test_runs_of_consecutive_frames_are_merged():
    """A sliding window seen frame after frame is stored as one run per voxel; a voxel seen again after a gap
    starts a new run; the counts stay exact across the seal."""
    index = VoxelSetIndex(tail_runs=2)
    frame_sets = []
    for f in range(10):
        start = f if f < 6 else f - 6  # frames 6..9 come back to the start of the strip
        frame_sets.append(np.arange(start, start + 20, dtype=np.int64))
        index.add(frame_sets[-1])
    # Voxels 0..25 appear over 10 frames; ends of the strip split into runs at the return (frame 6).
    expected_runs = 0
    for v in range(26):
        seen = [v in s for s in frame_sets]
        expected_runs += sum(1 for f in range(10) if seen[f] and (f == 0 or not seen[f - 1]))
    assert index.num_runs == expected_runs < sum(s.shape[0] for s in frame_sets)
    queries = [np.arange(0, 5), np.arange(18, 30), np.arange(3, 40, 3)]
    np.testing.assert_array_equal(
        index.intersection_counts(queries), reference_intersection_counts(queries, frame_sets)
    )


def test_voxel_snapshot_keeps_set_order_and_rejects_repeated_voxels():
    index = VoxelSetIndex()
    index.add(np.array([9, 1, 5], dtype=np.int64))
    data = index.to_arrays()
    np.testing.assert_array_equal(VoxelSetIndex.from_arrays(data).keys(0), [9, 1, 5])
    data["voxel_cols"] = np.array([0, 1, 0], dtype=np.int32)  # voxel 9 twice in one frame's set
    with pytest.raises(SnapshotError, match="repeats"):
        VoxelSetIndex.from_arrays(data)


@pytest.mark.parametrize("tail_runs", [1, 1 << 30])
def test_replaying_all_frames_at_once_equals_adding_them_one_by_one(tail_runs):
    """``from_arrays`` (a rebuild, a load) replays every frame in one compiled call; ``_append`` frame by frame
    (the same kernel, one frame a call) gives the same forward lists, runs and counts, empty sets (dropped frames)
    included. What a frame does to the runs is checked against the slow reference in
    ``test_intersection_counts_match_reference_across_index_rebuilds``."""
    rng = np.random.default_rng(5)
    sets = [_keys(rng, int(rng.integers(0, 300)), extent=10) if i % 3 else np.zeros(0, np.int64) for i in range(40)]
    slow = VoxelSetIndex(tail_runs)
    for keys in sets:
        slow._append(slow._insert_columns(keys))
    slow.seal()
    fast = VoxelSetIndex.from_arrays(slow.to_arrays(), tail_runs)
    for name in ("_cols", "_offsets", "_col_keys", "_open_start", "_last_seen"):
        np.testing.assert_array_equal(getattr(fast, name).view, getattr(slow, name).view, err_msg=name)
    for name in ("_indptr", "_sealed_starts", "_sealed_ends"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    assert fast.nnz == slow.nnz == sum(s.shape[0] for s in sets)
    queries = [_keys(rng, 200, extent=10) for _ in range(3)]
    np.testing.assert_array_equal(fast.intersection_counts(queries), reference_intersection_counts(queries, sets))


@pytest.mark.parametrize("levels", [1, 2, 5])
def test_sets_are_kept_at_the_coarse_voxel_and_match_the_slow_coarsening(levels):
    rng = np.random.default_rng(levels)
    ijk = rng.integers(-(1 << 19), 1 << 19, size=(5000, 3))
    ijk[:50] = rng.integers(-9, 9, size=(50, 3))  # around the origin, where floor division of negatives matters
    keys = pack_voxel_coords(ijk)
    store = FrameStore(HistoryConfig(voxel_set_levels=levels))
    store.add(_image(0), _pose(0), K, keys)
    want = coarsen_voxel_keys(keys, levels)
    np.testing.assert_array_equal(np.sort(store.get_voxel_keys(0)), np.unique(want))
    np.testing.assert_array_equal(unpack_voxel_keys(want), np.floor_divide(ijk, 1 << levels))
    query = store.query_voxel_set(np.concatenate([keys[::-1], keys[:7]]))  # any order, repeats
    np.testing.assert_array_equal(np.sort(query), np.unique(want))
    assert store.voxel_set_scale == 1 << levels


def test_queries_in_a_row_give_first_seen_distinct_keys_and_leave_the_kept_table_empty():
    """``query_voxel_set`` keeps its hash set between queries (the kernel empties it): large, small and repeated
    queries on one store each give the coarse keys' distinct values in first-seen order (the reference:
    ``dict.fromkeys``), and the table holds nothing afterwards."""
    rng = np.random.default_rng(7)
    store = FrameStore(HistoryConfig(voxel_set_levels=2))
    for n in (20_000, 30, 20_000, 0, 5_000):
        keys = pack_voxel_coords(rng.integers(-300, 300, size=(n, 3)))
        keys = np.concatenate([keys, keys[: n // 3]])  # repeats
        want = list(dict.fromkeys(coarsen_voxel_keys(keys, 2).tolist()))
        assert store.query_voxel_set(keys).tolist() == want
        assert (store._query_table == -1).all()


def test_history_snapshots_from_before_coarse_sets_load_at_the_memory_voxel():
    store = FrameStore(EXACT)
    store.add(_image(0), _pose(0), K, np.array([5, 1], dtype=np.int64))
    data = store.to_arrays()
    for field in ("voxel_set_levels", "compact_evict", "compact_rebuild_dead_ratio"):
        del data["config"][field]
    back = FrameStore.from_arrays(data)
    assert back.config.voxel_set_levels == 0
    np.testing.assert_array_equal(back.get_voxel_keys(0), [5, 1])
    # ... and compact as they did when saved: the oldest view of a full cell out, rebuilt at half dead
    assert (back.config.compact_evict, back.config.compact_rebuild_dead_ratio) == ("oldest", 1.0)


# --- frames out of RAM, retrieval-index compaction ------------------------------------------------------------


def test_frames_live_in_the_frame_file_not_in_ram(tmp_path):
    store = FrameStore(HistoryConfig(image_codec="png", compact_cell_m=0))
    big = np.random.default_rng(0).integers(0, 255, size=(96, 128, 3), dtype=np.uint8)  # noise: PNG can't shrink it
    K_big = Intrinsics.from_fov(60.0, 128, 96)
    depth = np.full((96, 128), 2.0, np.float32)
    store.add(big, _pose(0), K_big, np.arange(3), depth_m=depth)
    ram_1 = store.nbytes
    for i in range(1, 200):
        store.add(big, _pose(i), K_big, np.arange(3), depth_m=depth)
    store.flush()
    assert store.disk_bytes > 200 * big.nbytes * 0.9  # the compressed frames are on disk ...
    per_frame_ram = (store.nbytes - ram_1) / 199
    assert per_frame_ram < 1000, per_frame_ram  # ... RAM keeps poses and record locations per frame
    np.testing.assert_array_equal(store.get_rgb(7), big)
    # moving the frames into a world's own file keeps every frame readable and appends continue there
    file = store.attach(tmp_path / "frames.bin")
    assert file.path == tmp_path / "frames.bin" and (tmp_path / "frames.bin").stat().st_size == file.end
    store._cache.clear()
    np.testing.assert_array_equal(store.get_rgb(199), big)
    assert store.get_depth(3)[0, 0] == pytest.approx(2.0)
    store.add(_image(1, 128, 96), _pose(201), K_big, np.arange(3))
    np.testing.assert_array_equal(store.get_rgb(200), _image(1, 128, 96))


def test_a_damaged_frame_record_is_an_error_naming_the_frame(tmp_path):
    store = FrameStore(HistoryConfig(image_codec="png", decoded_cache_frames=0))
    for i in range(3):
        store.add(_image(i), _pose(i), K, np.arange(3))
    file = store.attach(tmp_path / "frames.bin")
    r_off = int(store.locations()[1, 0])
    with open(tmp_path / "frames.bin", "r+b") as f:  # flip one byte inside frame 1's image
        f.seek(r_off + 5)
        b = f.read(1)
        f.seek(r_off + 5)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ImageDecodeError, match="frame 1 image.*damaged"):
        store.get_rgb(1)
    np.testing.assert_array_equal(store.get_rgb(2), _image(2))
    os.truncate(tmp_path / "frames.bin", file.end - 10)  # torn tail
    with pytest.raises(ImageDecodeError, match="frame 2 image.*truncated"):
        store.get_rgb(2)


def _loop_pose(t: float) -> np.ndarray:
    """A camera walking a 2 m circle, looking outwards (a bounded loop that revisits)."""
    a = 2 * np.pi * t
    centre = np.array([2.0 * np.cos(a), 0.0, 2.0 * np.sin(a)])
    return look_at(centre, 2 * centre)


def _loop_keys(t: float) -> np.ndarray:
    """What the loop's view at ``t`` sees: an arc of a wall at radius 4 m (10 cm voxels, packed at 1 cm keys)."""
    a = 2 * np.pi * t + np.linspace(-0.4, 0.4, 60)
    h = np.arange(-10, 10)
    xyz = np.stack(np.broadcast_arrays(400 * np.cos(a)[:, None], 10 * h[None, :], 400 * np.sin(a)[:, None]), -1)
    return pack_voxel_coords(np.round(xyz.reshape(-1, 3)).astype(np.int64))


def test_a_revisiting_path_keeps_the_index_bounded_and_counts_exact(monkeypatch):
    monkeypatch.setattr("spatia.world.history.REBUILD_MIN_VOXELS", 0)
    store = FrameStore(HistoryConfig(image_codec="png", voxel_set_levels=0, compact_angle_deg=20))
    sizes = []
    for lap in range(6):
        for step in range(40):
            if store._rebuild_job is not None:
                # the rebuild on the maintenance thread done before the next keyframe, as on an idle machine: under
                # load it was not yet done after six laps (235,200 runs), and the bound below read its timing
                store._rebuild_job[0].result()
            store.add(_image(0), _loop_pose(step / 40), K, _loop_keys(step / 40))
        sizes.append((int(store.indexed().sum()), store.voxels.num_runs, store.voxels.nbytes))
    # every lap sees what the first saw: the index stops growing after the first lap
    assert sizes[-1][0] <= sizes[0][0] and sizes[-1][1] <= 2 * sizes[0][1], sizes
    assert len(store) == 240 and store.indexed()[-40:].all() and not store.indexed()[:40].any()
    # counts over the indexed frames equal the reference; dropped frames have empty sets and are no candidates
    indexed = np.flatnonzero(store.indexed())
    query = [np.unique(_loop_keys(0.3)), np.unique(_loop_keys(0.71))]
    ref = reference_intersection_counts(query, [np.unique(store.get_voxel_keys(f)) for f in range(len(store))])
    got = store.voxels.intersection_counts(query)
    np.testing.assert_array_equal(got[:, indexed], ref[:, indexed])
    assert store.get_voxel_keys(0).size == 0
    from spatia.world.retrieval import retrieve_reference_frames

    found = retrieve_reference_frames(store, _loop_pose(0.3)[None], K, [_loop_keys(0.3)], k=1)
    assert found and found[0].frame_index >= 200  # the newest lap's view of the same place
    # the round trip keeps which frames are indexed, and compaction goes on the same way after it
    back = FrameStore.from_arrays(store.to_arrays())
    np.testing.assert_array_equal(back.indexed(), store.indexed())
    assert back._cells == store._cells
    for f in (back, store):
        f.add(_image(0), _loop_pose(0.5), K, _loop_keys(0.5))
    np.testing.assert_array_equal(back.indexed(), store.indexed())


def test_a_rebuild_on_the_maintenance_thread_reads_as_the_rebuild_in_place(monkeypatch):
    """The index rebuilt without dropped frames on the maintenance thread (``FrameStore._start_rebuild``), adopted
    some keyframes later, against the rebuild in place (the former way): after every frame the same candidates, the
    same intersection counts and set sizes on them, the same cells and the same saved arrays. The job is held back
    until released, so frames are added and dropped while it runs."""
    import threading

    from spatia.world import history

    monkeypatch.setattr(history, "REBUILD_MIN_VOXELS", 0)
    gate = threading.Event()
    real = history.VoxelSetIndex.rebuilt_from
    monkeypatch.setattr(history.VoxelSetIndex, "rebuilt_from",
                        classmethod(lambda cls, *a: (gate.wait(30), real(*a))[1]))
    config = HistoryConfig(image_codec="png", voxel_set_levels=0, compact_angle_deg=20, compact_rebuild_dead_ratio=0.1)
    behind, in_place = FrameStore(config), FrameStore(config)

    def rebuild_in_place() -> None:
        in_place.voxels = in_place.voxels.rebuilt(in_place._indexed.view)
        in_place._dropped_voxels = 0

    in_place._start_rebuild = rebuild_in_place
    late = []  # per adoption: frames added while the job ran
    adopt = behind._adopt_rebuild

    def adopting() -> None:
        late.append(len(behind.voxels) - behind._rebuild_job[1])
        adopt()

    behind._adopt_rebuild = adopting
    dropped_meanwhile = 0
    query = [np.unique(_loop_keys(0.3)), np.unique(_loop_keys(0.71))]
    for i in range(200):
        t = (i % 40) / 40  # five laps of one loop: each lap's views drop the last lap's
        pending = behind._rebuild_job
        indexed_before = behind.indexed().sum()
        for store in (behind, in_place):
            store.add(_image(0), _loop_pose(t), K, _loop_keys(t))
        dropped_meanwhile += pending is not None and behind._rebuild_job is pending and (
            behind.indexed().sum() <= indexed_before)
        if i % 7 == 6 and behind._rebuild_job is not None:  # let the job run; the next keyframe adopts it
            gate.set()
            behind._rebuild_job[0].result()
            gate.clear()
        indexed = np.flatnonzero(behind.indexed())
        np.testing.assert_array_equal(behind.indexed(), in_place.indexed())
        np.testing.assert_array_equal(behind.voxels.sizes()[indexed], in_place.voxels.sizes()[indexed])
        np.testing.assert_array_equal(behind.voxels.intersection_counts(query)[:, indexed],
                                      in_place.voxels.intersection_counts(query)[:, indexed])
        assert behind._cells == in_place._cells
        live = behind.voxels.nnz - behind._dropped_voxels
        assert live == in_place.voxels.nnz - in_place._dropped_voxels
        a, b = (s.voxels.to_arrays(s.indexed()) for s in (behind, in_place))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    gate.set()
    assert sum(n > 1 for n in late) >= 3 and dropped_meanwhile >= 1, (late, dropped_meanwhile)
    behind.close()
    in_place.close()


def test_compaction_keeps_views_that_differ():
    """Views of one pose cell that see different things (IoU below the threshold) all stay, up to the cap; then
    the cap drops the view most like another one of the cell (the oldest of equals), or the oldest by the old rule."""
    strip = np.arange(0, 300, dtype=np.int64)
    # IoU(1, 2) = 1/3 (the most alike pair), every other pair shares nothing; each below compact_min_iou
    sets = [strip[:100], strip[100:200], strip[150:250], strip[250:300] + 1000]
    for evict, kept in (("redundant", [True, False, True, True]), ("oldest", [False, True, True, True])):
        store = FrameStore(HistoryConfig(image_codec="png", voxel_set_levels=0, compact_max_views=3,
                                         compact_evict=evict))
        for i, keys in enumerate(sets[:3]):
            store.add(_image(i), np.eye(4), K, keys)
        assert store.indexed().all()
        store.add(_image(3), np.eye(4), K, sets[3])
        np.testing.assert_array_equal(store.indexed(), kept, err_msg=evict)
    # the newest view stays even when it is the most alike (it shows the world as it is now)
    store = FrameStore(HistoryConfig(image_codec="png", voxel_set_levels=0, compact_max_views=2))
    for i, keys in enumerate((strip[:100], strip[200:300], strip[20:120])):  # IoU(0, 2) = 80/120
        store.add(_image(i), np.eye(4), K, keys)
    np.testing.assert_array_equal(store.indexed(), [False, True, True])


def test_redundant_eviction_keeps_the_views_a_loop_needs():
    """A loop walked at four phases, one view per lap into one pose cell of two views: the cell keeps the two
    views farthest apart (phases 0 and 3), where dropping the oldest keeps the last two laps' (2 and 3)."""
    wall = np.arange(0, 1000, dtype=np.int64)
    views = [wall[p * 100 : p * 100 + 400] for p in (0, 1, 2, 3)]  # each lap's view slides 100 voxels along
    for evict, kept in (("redundant", [True, False, False, True]), ("oldest", [False, False, True, True])):
        store = FrameStore(HistoryConfig(image_codec="png", voxel_set_levels=0, compact_max_views=2,
                                         compact_evict=evict))
        for i, keys in enumerate(views):
            store.add(_image(i), np.eye(4), K, keys)
        np.testing.assert_array_equal(store.indexed(), kept, err_msg=evict)


def test_unique_first_and_has_duplicates_equal_numpy():
    from spatia.world.history import has_duplicates, unique_first

    rng = np.random.default_rng(0)
    for values in (rng.integers(0, 50, 1000), rng.integers(0, 1 << 60, 500), np.zeros(0, np.int64), np.array([7])):
        uniq, first, inverse = unique_first(values)
        want = np.unique(values, return_index=True, return_inverse=True)
        for got, ref in zip((uniq, first, inverse), want):
            np.testing.assert_array_equal(got, ref.reshape(-1))
        assert has_duplicates(values) == (np.unique(values).shape[0] != values.shape[0])


def test_a_closed_store_refuses_to_touch_its_file():
    store = FrameStore(HistoryConfig(image_codec="png", decoded_cache_frames=0))
    store.add(_image(0), _pose(0), K, np.arange(3))
    store.close()
    with pytest.raises(InvalidInputError, match="closed"):
        store.get_rgb(0)
    with pytest.raises(InvalidInputError, match="closed"):
        store.frame_file.append(b"x")


def test_a_frame_read_before_the_encoder_reached_it_is_compressed_on_the_reading_thread():
    """The encoder thread is shared by every world; a frame read back while it is busy elsewhere is compressed on
    the reader's thread instead of waiting (the queued jobs taken over, in frame order): the same records, at the
    same places of the frame file, as the encoder writes."""
    import threading

    from spatia.world._threads import background

    rng = np.random.default_rng(7)
    keys = [_keys(rng, 100) for _ in range(4)]
    ref = FrameStore(EXACT)
    for i in range(4):
        ref.add(_image(i), _pose(i), K, keys[i], depth_m=_depth(i))
    ref.flush()
    gate = threading.Event()
    busy = background("history-encoder").submit(gate.wait, 60)  # another world's frames, say
    try:
        store = FrameStore(EXACT)
        for i in range(4):
            store.add(_image(i), _pose(i), K, keys[i], depth_m=_depth(i))
        np.testing.assert_array_equal(store.get_rgb(2), ref.get_rgb(2))  # without waiting for the gate
        assert not busy.done() and all(job.done() for job in store._pending.values())  # every one taken over
    finally:
        gate.set()
    busy.result()
    np.testing.assert_array_equal(store.locations(), ref.locations())
    assert not store._encode_args  # nothing held once compressed
    for i in range(4):
        np.testing.assert_array_equal(store.get_rgb(i), ref.get_rgb(i))
        np.testing.assert_array_equal(store.get_depth(i), ref.get_depth(i))
    store.close()
    ref.close()
