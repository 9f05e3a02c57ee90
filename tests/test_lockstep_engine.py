"""The engine's one-frame clip (a lock-step Gymnasium step, issue 14 section 6) skips work that changes nothing:

- references decode their image from the history only when a generator reads it (the geometric one warps the
  nearest one or two of K), and still pickle as plain ``ReferenceFrame``s;
- retrieval takes the engine's ``range`` of candidates without iterating it in Python, and still rejects one that
  reaches past the history;
- the memory update reuses the voxel set the engine collected from the same render instead of collecting it
  again (same report, same memory);
- pose validation in Python floats accepts and rejects exactly what the numpy checks did;
- a small world's unsorted tail is merged into the culling blocks once it passes ``TAIL_MIN`` (8192) points.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from spatia.world.actions import ClipConfig
from spatia.world.camera import RIGID_TOLERANCE, Intrinsics, pose_problem
from spatia.world.engine import Engine, EngineConfig
from spatia.world.errors import InvalidInputError
from spatia.world.generator import ReferenceFrame
from spatia.world.state import World

W, H = 64, 48


def _walk(n: int, seed: int = 0) -> np.ndarray:
    """[n, 4, 4] poses walking forward while turning, from the scene's origin (y is down: yaw about y)."""
    rng = np.random.default_rng(seed)
    poses, T = [], np.eye(4)
    for _ in range(n):
        a = rng.uniform(-0.08, 0.08)
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        T = T.copy()
        T[:3, :3] = T[:3, :3] @ R
        T[:3, 3] += 0.04 * T[:3, 2]
        poses.append(T)
    return np.stack(poses)


def _engine(geometric: bool = True) -> Engine:
    from spatia.model.geometric import GeometricGenerator

    world = World.from_scene("room", 0, W, H)
    return Engine(world, GeometricGenerator(), EngineConfig(clip=ClipConfig(1, 2, 1)))


def test_references_decode_their_image_only_when_read(monkeypatch):
    engine = _engine()
    path = engine.world.origin_c2w @ _walk(12)
    for T in path[:-1]:
        list(engine.generate_clip(T[None]))
    history = engine.world.history
    decoded: list[int] = []
    get_rgb = history.get_rgb
    monkeypatch.setattr(history, "get_rgb", lambda i: decoded.append(int(i)) or get_rgb(i))
    request = engine.build_request(path[-1][None], "", 0)
    refs = [r for r in request.references if r.frame_index != 0]  # frame 0 is the world's lossless first image
    assert len(refs) >= 1 and decoded == []
    rgb = refs[0].rgb
    assert decoded == [refs[0].frame_index]
    assert np.array_equal(rgb, get_rgb(refs[0].frame_index)) and refs[0].rgb is rgb  # decoded once
    ref = [r for r in engine.build_request(path[-1][None], "", 0).references if r.frame_index != 0][0]
    plain = pickle.loads(pickle.dumps(ref))  # e.g. to a generator in another process: a plain frame
    assert type(plain) is ReferenceFrame and np.array_equal(plain.rgb, get_rgb(ref.frame_index))
    assert plain.frame_index == ref.frame_index and np.array_equal(plain.c2w, ref.c2w)


def test_retrieval_takes_a_range_as_its_indices():
    from spatia.world.retrieval import retrieve_reference_frames

    engine = _engine()
    path = engine.world.origin_c2w @ _walk(10, seed=1)
    for T in path:
        list(engine.generate_clip(T[None]))
    memory, history, K = engine.world.memory, engine.world.history, engine.world.intrinsics
    target = path[3][None]
    keys = [memory.visible_voxel_keys(K, target[0])]
    n = len(history)
    by_range = retrieve_reference_frames(history, target, K, keys, candidates=range(0, n - 2))
    assert by_range and by_range == retrieve_reference_frames(history, target, K, keys, candidates=list(range(n - 2)))
    with pytest.raises(InvalidInputError, match="candidate frame indices"):
        retrieve_reference_frames(history, target, K, keys, candidates=range(0, n + 1))


def test_memory_update_reuses_the_views_voxel_sets(monkeypatch):
    """Two engines walk the same path; in one the update is not given the engine's voxel sets (it collects them
    itself, as before): frames, history voxel sets and memory come out identical."""
    import spatia.world.engine as engine_module

    runs = []
    for reuse in (True, False):
        if not reuse:
            update = engine_module.update_memory
            monkeypatch.setattr(engine_module, "update_memory",
                                lambda *a, **kw: update(*a, **{**kw, "memory_render_keys": None}))
        engine = _engine()
        frames = [f.rgb for T in engine.world.origin_c2w @ _walk(15, seed=2) for f in engine.generate_clip(T[None])]
        history = engine.world.history
        runs.append((frames, [np.sort(history.get_voxel_keys(i)) for i in range(len(history))],
                     engine.world.memory.to_arrays()))
    (fa, ka, ma), (fb, kb, mb) = runs
    assert all(np.array_equal(a, b) for a, b in zip(fa, fb))
    assert len(ka) == len(kb) and all(np.array_equal(a, b) for a, b in zip(ka, kb))
    assert all(np.array_equal(ma[name], mb[name]) for name in ma)


def _numpy_pose_problem(T: np.ndarray) -> bool:
    """The checks ``validate_pose`` made with numpy before (the slow reference)."""
    if not np.isfinite(T).all() or np.abs(T[3] - (0.0, 0.0, 0.0, 1.0)).max() > RIGID_TOLERANCE:
        return True
    R = T[:3, :3]
    return bool(np.abs(R.T @ R - np.eye(3)).max() > RIGID_TOLERANCE or abs(np.linalg.det(R) - 1.0) > RIGID_TOLERANCE)


def test_pose_validation_in_python_floats_matches_the_numpy_checks():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(3)
    verdicts = []
    for k in range(600):
        T = np.eye(4)
        T[:3, :3] = Rotation.random(random_state=k).as_matrix()
        T[:3, 3] = rng.uniform(-50, 50, 3)
        kind = k % 6
        if kind == 1:  # small noise on the rotation: either side of the tolerance
            T[:3, :3] += rng.normal(0, 10 ** rng.uniform(-6, -3), (3, 3))
        elif kind == 2:
            T[3, rng.integers(4)] += rng.choice([-1, 1]) * 10 ** rng.uniform(-6, -2)
        elif kind == 3:
            T[:3, 0] *= -1  # a reflection
        elif kind == 4:
            T[rng.integers(4), rng.integers(4)] = rng.choice([np.nan, np.inf])
        elif kind == 5:
            T[:3, :3] *= 1 + rng.choice([-1, 1]) * 10 ** rng.uniform(-6, -3)
        verdicts.append((pose_problem(T) is not None, _numpy_pose_problem(T)))
    fast, slow = np.array(verdicts).T
    assert np.array_equal(fast, slow) and 100 < slow.sum() < 550  # both verdicts well represented


def test_a_small_worlds_tail_is_merged_into_the_culling_blocks():
    from spatia.world import memory as memory_module
    from spatia.world.memory import MemoryConfig, SpatialMemory

    assert memory_module.TAIL_MIN == 8192
    rng = np.random.default_rng(4)
    mem = SpatialMemory(MemoryConfig(voxel_size_m=0.02))
    mem.integrate_points(rng.uniform(-2, 2, (30_000, 3)), np.zeros((30_000, 3), np.uint8), 0)
    mem.reindex()
    mem.integrate_points(rng.uniform(-2, 2, (12_000, 3)), np.zeros((12_000, 3), np.uint8), 1)
    assert mem._n - mem._n_sorted > 8192
    c2w = np.eye(4)
    c2w[2, 3] = -5.0
    before = mem.render(Intrinsics.from_fov(60.0, W, H), c2w)
    assert mem._n_sorted == mem._n  # the render merged the tail first (a tail this long was rendered unculled)
    mem.integrate_points(rng.uniform(-2, 2, (5_000, 3)), np.zeros((5_000, 3), np.uint8), 2)
    mem.render(Intrinsics.from_fov(60.0, W, H), c2w)
    assert mem._n - mem._n_sorted > 0  # below the threshold the tail stays
    assert before.valid.any()
