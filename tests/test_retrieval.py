"""Reference-frame retrieval on synthetic voxel worlds where the right answer is known, and fast vs reference."""

from __future__ import annotations

import numpy as np
import pytest

from spatia.world._retrieval_reference import reference_retrieve_official, reference_retrieve_paper
from spatia.world.camera import Intrinsics, look_at
from spatia.world.errors import InvalidInputError
from spatia.world.geometry import pack_voxel_coords
from spatia.world.history import FrameStore, HistoryConfig
from spatia.world.retrieval import (
    IcpConfig,
    RetrievedFrame,
    register_voxel_set,
    retrieve_reference_frames,
    to_reference_frames,
    voxel_iou,
)

D = 0.05  # voxel side, metres
K = Intrinsics.from_fov(60.0, 8, 6)
IMG = np.zeros((6, 8, 3), dtype=np.uint8)
REGIONS, WINDOWS = 6, 4


def _wall_keys(region: int, i0: int, i1: int, j0: int = 0, j1: int = 20, k: int = 50) -> np.ndarray:
    """Voxels of a window [i0, i1) x [j0, j1) of wall ``region``: walls are 100 voxels apart along x at z = k."""
    i, j = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
    ijk = np.stack([region * 100 + i.ravel(), j.ravel(), np.full(i.size, k)], axis=1)
    return np.sort(pack_voxel_coords(ijk))


def _pose_facing(keys: np.ndarray) -> np.ndarray:
    """A camera 2 m in front of the voxels' centroid, looking at it (OpenCV, world up -y)."""
    from spatia.world.geometry import unpack_voxel_keys

    centre = (unpack_voxel_keys(keys).mean(axis=0) + 0.5) * D
    return look_at(centre - np.array([0.0, 0.0, 2.0]), centre)


def _window(w: int) -> tuple[int, int]:
    return 5 * w, 5 * w + 30


def _wall_history() -> FrameStore:
    """Frame ``REGIONS * r + w``... i.e. frame 4r + w sees window w ([5w, 5w + 30) x [0, 20)) of wall r."""
    store = FrameStore(HistoryConfig(voxel_set_levels=0, image_codec="png", index_tail_runs=100))
    for r in range(REGIONS):
        for w in range(WINDOWS):
            keys = _wall_keys(r, *_window(w))
            store.add(IMG, _pose_facing(keys), K, keys)
    return store


def _target(sets: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    return np.stack([_pose_facing(s) for s in sets]), sets


def test_paper_retrieves_the_frame_of_the_region_the_target_sees():
    store = _wall_history()
    # 14 target frames all seeing window [8, 38) of wall 3: best is frame 4*3 + 2 (window [10, 40)), IoU 28/32.
    poses, sets = _target([_wall_keys(3, 8, 38)] * 14)
    got = retrieve_reference_frames(store, poses, K, sets, k=7, method="paper")
    # Views 0 and 7 both pick frame 14; {R} is a set, so the second pick is skipped, not replaced.
    assert got == [RetrievedFrame(14, pytest.approx(28 / 32), 0)]


def test_official_assigns_distinct_frames_of_the_right_region():
    store = _wall_history()
    poses, sets = _target([_wall_keys(3, 8, 38)] * 14)
    got = retrieve_reference_frames(store, poses, K, sets, method="official", target_stride=7, candidate_stride=1)
    # Hungarian: two views, two distinct frames; the best (14, 28 shared columns) and the runner-up (13, 27).
    assert sorted((r.frame_index, r.score) for r in got) == [(13, 27 * 20.0), (14, 28 * 20.0)]
    assert {r.target_index for r in got} == {0, 7}
    assert all(r.frame_index // WINDOWS == 3 for r in got)


@pytest.mark.parametrize("method", ["paper", "official"])
def test_target_moving_across_regions_gets_a_reference_per_region(method):
    store = _wall_history()
    regions = [0, 2, 5, 1]
    sets = [_wall_keys(regions[i // 7], 3, 33) for i in range(28)]  # 7 frames per region
    poses, sets = _target(sets)
    got = retrieve_reference_frames(
        store, poses, K, sets, k=7, method=method, target_stride=7, candidate_stride=1
    )
    assert [r.target_index for r in got] == [0, 7, 14, 21]
    assert [r.frame_index // WINDOWS for r in got] == regions  # each reference shows the view's region
    assert [r.frame_index % WINDOWS for r in got] == [1] * 4  # window [5, 35) overlaps [3, 33) the most


def test_eps_threshold_filters_weak_overlaps():
    store = _wall_history()
    poses, sets = _target([_wall_keys(3, 8, 38)] * 7)
    assert retrieve_reference_frames(store, poses, K, sets, eps=0.9) == []
    assert [r.frame_index for r in retrieve_reference_frames(store, poses, K, sets, eps=0.8)] == [14]
    with pytest.raises(InvalidInputError, match="eps"):
        retrieve_reference_frames(store, poses, K, sets, eps=1.5)


def test_only_every_kth_target_frame_is_used():
    """Frames i with i mod K != 0 are skipped (Algorithm 1, line 3), even when they would overlap better."""
    store = _wall_history()
    sets = [_wall_keys(1, 0, 30) if i % 7 == 0 else _wall_keys(5, 15, 45) for i in range(15)]
    poses, sets = _target(sets)
    got = retrieve_reference_frames(store, poses, K, sets, k=7)
    assert [r.target_index for r in got] == [0]  # views 7 and 14 pick the same frame: skipped
    assert got[0].frame_index == 4 * 1 + 0 and got[0].score == pytest.approx(1.0)
    assert all(r.frame_index // WINDOWS != 5 for r in got)


def test_at_most_k_frames_keeping_the_best_scores():
    """72 target frames with K = 7 give 11 views (0, 7, ..., 70); the K best distinct frames are kept."""
    store = _wall_history()
    sets = []
    for i in range(72):
        # View v = i // 7 sees wall v mod 6, window 0 (v < 6) or 3, shortened by 10 - v voxels: a distinct best
        # frame per view, IoU (20 + v) / 30 rising with v.
        v = i // 7
        i0, i1 = _window(0 if v < REGIONS else 3)
        sets.append(_wall_keys(v % REGIONS, i0, i1 - (10 - v)))
    poses, sets = _target(sets)
    everything = retrieve_reference_frames(store, poses, K, sets, k=100, target_stride=7)
    assert len(everything) == 11
    got = retrieve_reference_frames(store, poses, K, sets, k=7)
    assert [r.target_index for r in got] == [28, 35, 42, 49, 56, 63, 70]
    assert [r.score for r in got] == pytest.approx([(20 + v) / 30 for v in range(4, 11)])
    best = sorted(everything, key=lambda r: (-r.score, r.target_index))[:7]
    assert got == sorted(best, key=lambda r: r.target_index)


def test_candidates_exclude_frames_in_every_accepted_form():
    store = _wall_history()
    poses, sets = _target([_wall_keys(3, 8, 38)] * 7)
    # Frames 0..11 show walls 0-2 only: nothing overlaps wall 3.
    assert retrieve_reference_frames(store, poses, K, sets, candidates=range(0, 12)) == []
    expected = retrieve_reference_frames(store, poses, K, sets, candidates=[0, 1, 12, 13, 15])
    assert [r.frame_index for r in expected] == [13]  # 14 is not a candidate
    mask = np.zeros(len(store), dtype=bool)
    mask[[0, 1, 12, 13, 15]] = True
    assert retrieve_reference_frames(store, poses, K, sets, candidates=mask) == expected
    assert retrieve_reference_frames(store, poses, K, sets, candidates=np.array([15, 13, 12, 1, 0])) == expected
    assert [r.frame_index for r in retrieve_reference_frames(store, poses, K, sets, candidates=slice(15, None))] == [15]
    with pytest.raises(InvalidInputError, match="mask"):
        retrieve_reference_frames(store, poses, K, sets, candidates=mask[:-1])
    with pytest.raises(InvalidInputError, match="in \\[0, 24\\)"):
        retrieve_reference_frames(store, poses, K, sets, candidates=[3, 24])
    assert retrieve_reference_frames(store, poses, K, sets, candidates=[]) == []


def test_official_default_strides():
    """ref_fps 2 and ref_hist_fps 6 of 24 fps: target views every 12 frames, candidates every 4th frame."""
    store = _wall_history()
    # Views 0, 12, 24 see walls 3, 4, 5 (window 1); of each wall only window 0 (frame 4r) is a candidate.
    poses, sets = _target([_wall_keys(3 + i // 12, *_window(1)) for i in range(30)])
    got = retrieve_reference_frames(store, poses, K, sets, method="official")
    assert [(r.target_index, r.frame_index, r.score) for r in got] == [(0, 12, 500.0), (12, 16, 500.0), (24, 20, 500.0)]
    # Candidates 12..19 leave wall 5 without a candidate: its view's pair shares nothing and is dropped.
    got = retrieve_reference_frames(store, poses, K, sets, method="official", candidates=range(12, 20))
    assert [r.frame_index for r in got] == [12, 16]


def _random_walk_sets(rng: np.random.Generator, n: int, grid: int = 30, size: int = 300) -> list[np.ndarray]:
    """View sets from a random walk over a voxel grid: each view is a box of voxels around a drifting centre."""
    centre = rng.integers(0, grid, size=3).astype(np.float64)
    out = []
    for _ in range(n):
        centre = np.clip(centre + rng.normal(0, 1.5, size=3), 0, grid)
        pts = np.round(centre + rng.normal(0, 3.0, size=(size, 3))).astype(np.int64)
        out.append(np.unique(pack_voxel_coords(pts)))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("compact", [False, True])
def test_fast_paths_equal_the_references(seed, compact):
    """Without compaction, over every candidate; with it (every frame at one pose: one pose cell, so all but the
    cell's newest ``compact_max_views`` views are dropped), over the candidates still indexed."""
    rng = np.random.default_rng(seed)
    hist_sets = _random_walk_sets(rng, 60)
    store = FrameStore(HistoryConfig(
        voxel_set_levels=0, image_codec="png", index_tail_runs=int(rng.integers(1, 3000)),
        compact_cell_m=0.5 if compact else 0.0, compact_max_views=8, compact_min_iou=0.3))
    for s in hist_sets:
        store.add(IMG, np.eye(4), K, s)
    assert (store.indexed().sum() <= 8) if compact else store.indexed().all()
    targets = _random_walk_sets(rng, int(rng.integers(20, 40)))
    poses = np.repeat(np.eye(4)[None], len(targets), axis=0)
    mask = rng.random(60) < 0.7
    cand = {int(j): hist_sets[j] for j in np.flatnonzero(mask & store.indexed())}
    for k, eps, stride in [(7, 0.0, 7), (3, 0.05, 2), (7, 0.2, 5)]:
        fast = retrieve_reference_frames(store, poses, K, targets, k=k, eps=eps, candidates=mask, target_stride=stride)
        ref = reference_retrieve_paper(targets, cand, k, eps, stride)
        assert [(r.frame_index, r.score, r.target_index) for r in fast] == ref
    for k, t_stride, c_stride in [(7, 12, 4), (7, 3, 1), (2, 5, 2)]:
        fast = retrieve_reference_frames(
            store, poses, K, targets, k=k, method="official", candidates=mask,
            target_stride=t_stride, candidate_stride=c_stride,
        )
        ref = reference_retrieve_official(targets, cand, k, t_stride, c_stride)
        assert [(r.frame_index, r.score, r.target_index) for r in fast] == ref


def test_icp_registration_recovers_a_drifted_frame():
    """Frame A saw the same wall as the target but its set drifted 2 voxels off the wall (pose error): IoU 0
    without registration. Frame B saw 60 % of it exactly. Identity picks B; ICP registration picks A."""
    target = _wall_keys(0, 0, 40, 0, 40, k=50)
    drifted = _wall_keys(0, 0, 40, 0, 40, k=52)
    partial = _wall_keys(0, 0, 24, 0, 40, k=50)
    store = FrameStore(HistoryConfig(voxel_set_levels=0, image_codec="png"))
    for s in (_wall_keys(4, 0, 30), drifted, partial):
        store.add(IMG, _pose_facing(s), K, s)
    poses, sets = _target([target])
    plain = retrieve_reference_frames(store, poses, K, sets, k=7)
    assert [(r.frame_index, round(r.score, 6)) for r in plain] == [(2, 0.6)]
    icp = IcpConfig(voxel_size_m=D, top_n=3)
    registered = retrieve_reference_frames(store, poses, K, sets, k=7, icp=icp)
    assert [r.frame_index for r in registered] == [1] and registered[0].score == pytest.approx(1.0)
    assert voxel_iou(target, register_voxel_set(drifted, target, icp)) == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match="paper"):
        retrieve_reference_frames(store, poses, K, sets, method="official", icp=icp)


def test_invalid_arguments():
    store = _wall_history()
    poses, sets = _target([_wall_keys(3, 8, 38)] * 3)
    with pytest.raises(InvalidInputError, match="method"):
        retrieve_reference_frames(store, poses, K, sets, method="nearest")
    with pytest.raises(InvalidInputError, match="3 target poses"):
        retrieve_reference_frames(store, poses, K, sets[:2])
    with pytest.raises(InvalidInputError, match="target_intrinsics"):
        retrieve_reference_frames(store, poses, [K], sets)
    with pytest.raises(InvalidInputError, match="target_stride"):
        retrieve_reference_frames(store, poses, K, sets, target_stride=0)
    with pytest.raises(InvalidInputError, match="k must"):
        retrieve_reference_frames(store, poses, K, sets, k=-1)
    assert retrieve_reference_frames(store, poses, [K] * 3, sets, k=0) == []
    assert retrieve_reference_frames(FrameStore(HistoryConfig(voxel_set_levels=0)), poses, K, sets) == []


def test_to_reference_frames_carries_image_pose_intrinsics_and_depth():
    store = FrameStore(HistoryConfig(voxel_set_levels=0, image_codec="png"))
    rgb = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    depth = np.full((6, 8), 2.5, dtype=np.float32)
    keys = _wall_keys(0, 0, 30)
    store.add(IMG, _pose_facing(keys), K, keys)
    store.add(rgb, _pose_facing(keys), K, keys, depth_m=depth)
    refs = to_reference_frames(store, [RetrievedFrame(1, 0.5, 0), RetrievedFrame(0, 0.25, 7)])
    assert [r.frame_index for r in refs] == [1, 0] and [r.score for r in refs] == [0.5, 0.25]
    np.testing.assert_array_equal(refs[0].rgb, rgb)
    np.testing.assert_array_equal(refs[0].c2w, store.get_pose(1))
    np.testing.assert_allclose(refs[0].depth_m, depth, rtol=1e-3)
    assert refs[0].intrinsics == K and refs[1].depth_m is None
