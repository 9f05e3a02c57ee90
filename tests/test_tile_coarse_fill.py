"""The per-tile coarse fill (``GeometricConfig.coarse_tile_frames``, ``geometric._PlaneCoarse.texels``,
``model.fill.state.TileJobs``): a texture tile a frame asks for is final from D frames after the first ask (or at
once for the warm-up's tiles), provisional before, synthesised meanwhile on a thread of its own; frames and memory
do not depend on how fast that thread is."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import spatia.model.geometric as geometric
from spatia.model.fill import state as fill_state
from spatia.model.fill.texture import synthesis
from spatia.model.geometric import GeometricConfig, GeometricGenerator
from spatia.world.actions import ClipConfig
from spatia.world.engine import Engine, EngineConfig
from spatia.world.errors import InvalidInputError
from spatia.world.scenes import make_scene
from spatia.world.state import World

W, H = 128, 72
PLAY = EngineConfig(clip=ClipConfig(first_clip_frames=4, clip_frames=6, preceding_frames=2), keyframe_stride=4)


def _walk(scene: str = "room", frames: int = 40) -> tuple[World, np.ndarray]:
    # the demo loop's turn: frames reveal walls the first view did not show
    return World.from_scene(scene, 0, W, H), make_scene(scene, 0).demo_path(161)[1:1 + frames]


def _memory_bytes(world: World) -> bytes:
    m = world.memory
    return b"".join(np.ascontiguousarray(a).tobytes() for a in (m.voxel_keys, m.colors, m.provenance))


def _late_log(monkeypatch) -> list[tuple[int, tuple, bool, bool]]:
    """Record every tile each layout frame asks for: (frame, tile key, warm-up tile, provisional)."""
    log: list[tuple[int, tuple, bool, bool]] = []
    real = geometric._PlaneCoarse.texels

    def texels(self, state, tex, rows, cols, level):
        codes = real(self, state, tex, rows, cols, level)
        tiles, _, tile = synthesis.tiles_read(tex.synth, rows, cols, level)
        warm = geometric._warm_plan(state).due.get((id(tex.synth), int(tex.seed)), frozenset())
        for q, (i, j) in enumerate(tiles.tolist()):
            shown = codes[tile == q]
            assert (shown == shown[0]).all()  # a tile is final, or shows one stand-in, as a whole
            log.append((self._frame, (id(tex.synth), int(tex.seed), i, j), (i, j) in warm,
                        bool(shown[0] != geometric.FINAL)))
        return codes

    monkeypatch.setattr(geometric._PlaneCoarse, "texels", texels)
    return log


def test_a_tile_first_read_at_frame_f_is_final_from_frame_f_plus_d(monkeypatch):
    """On the house's demo walk (through a doorway): a tile is provisional in the frames f .. f + D - 1 after the first that asked for
    it and final from f + D on; the warm-up's tiles are final from the first ask."""
    d = 3
    log = _late_log(monkeypatch)
    world, path = _walk("house", 30)
    gen = GeometricGenerator(GeometricConfig(fill="layout", coarse_frames=0, coarse_tile_frames=d))
    list(Engine(world, gen, PLAY).generate(path, seed=0))
    first: dict[tuple, int] = {}
    for frame, key, warm, late in log:
        first.setdefault(key, frame)
        assert late == (not warm and frame - first[key] < d), (frame, key, first[key])
    assert any(late for *_, late in log)  # the turn asked for tiles outside the warm-up's
    assert any(not warm and not late for _, _, warm, late in log)  # ... and showed them final D frames on
    assert any(warm for _, _, warm, _ in log)


def test_frames_and_memory_do_not_depend_on_how_fast_the_tile_thread_is(monkeypatch):
    """The same walk with the tile thread (and the warm-up's tiles) slowed, twice, and fast: byte-identical frames
    (rgb, depth, provisional pixels) and memory. "Whatever is ready" would differ with the timing."""
    late_frames = []
    real_warm = synthesis.warm_tiles
    results = []
    for delay_s in (0.0, 0.03, 0.03):
        def warm_tiles(*args, delay_s=delay_s, **kwargs):
            if delay_s:
                time.sleep(delay_s)
            return real_warm(*args, **kwargs)

        monkeypatch.setattr(synthesis, "warm_tiles", warm_tiles)
        log = _late_log(monkeypatch)
        world, path = _walk("house", 30)
        gen = GeometricGenerator(GeometricConfig(fill="layout", coarse_frames=0, coarse_tile_frames=3))
        frames = list(Engine(world, gen, PLAY).generate(path, seed=0))
        monkeypatch.undo()
        late_frames.append(sum(late for *_, late in log))
        results.append((np.stack([f.rgb for f in frames]), np.stack([f.depth_m for f in frames]),
                        _memory_bytes(world)))
    assert late_frames[0] > 0  # tiles were provisional: the timing could have shown
    for other in results[1:]:
        np.testing.assert_array_equal(results[0][0], other[0])
        np.testing.assert_array_equal(results[0][1], other[1])
        assert results[0][2] == other[2]


def test_no_tile_is_provisional_at_zero():
    """``coarse_tile_frames=0``: every tile is due (frames make what they miss), nothing recorded or queued."""

    class Entry:
        tile_first_asked: dict = {}
        tile_jobs = None

    coarse = geometric._PlaneCoarse(Entry(), 5, 0, 0)
    rows = np.arange(200, dtype=np.int64)
    assert not coarse.texels(None, None, rows, rows, np.zeros(200, np.int64)).any()
    assert not coarse.sampled(None, None, np.zeros((200, 2)), np.ones(200))[0].any()
    assert Entry.tile_first_asked == {}
    with pytest.raises(InvalidInputError):
        GeometricConfig(coarse_tile_frames=9)
    with pytest.raises(InvalidInputError):
        GeometricConfig(coarse_tile_frames=-1)


def test_texels_rule_on_a_model(monkeypatch):
    """``_PlaneCoarse.texels`` on a fitted model: per tile, provisional until D frames after its first ask (the
    warm-up's tiles never; the far-field texels, mip >= FAR_LEVEL, as one tile more, due at once for a model the
    warm-up planned); a tile not due is queued; the due frame joins it."""
    rng = np.random.default_rng(3)
    model = synthesis.TextureModel.fit(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8), np.ones((40, 40), bool),
                                       0.01)

    class Tex:
        synth, seed = model, 11

    submitted, joined = [], []

    class Jobs:
        def submit(self, key, fn):
            submitted.append(key)

        def join(self, key):
            joined.append(key)

    class Entry:
        tile_first_asked: dict = {}
        tile_jobs = Jobs()

    t = model.tile_px
    warm_ij = (5, 5)
    monkeypatch.setattr(geometric, "_warm_plan", lambda state: geometric._WarmPlan([], {(id(model), 11): {warm_ij}}))
    rows = np.array([0, 1, t, t + 3, 5 * t, 0], np.int64)
    cols = np.array([0, 2, 0, 1, 5 * t + 1, t], np.int64)
    level = np.array([0, 1, 0, 0, 0, synthesis.FAR_LEVEL], np.int64)
    d = 2
    for frame in range(10, 14):
        codes = geometric._PlaneCoarse(Entry(), frame, 0, d).texels(None, Tex, rows, cols, level)
        want = geometric.STAND_IN if frame - 10 < d else geometric.FINAL
        # tiles (0, 0), (1, 0): the far-field stand-in for D frames (the planned model's pyramid is due at once);
        # the warm tile (5, 5) and the far texel: final
        np.testing.assert_array_equal(codes, [want, want, want, want, 0, 0])
    assert sorted(set(submitted)) == [(id(model), 11, 0, 0), (id(model), 11, 1, 0)]
    assert (id(model), 11, 5, 5) in joined and (id(model), 11, 0, 0) in joined
    # a model the warm-up did not plan: its far-field texels (the pyramid of its exemplar box) count as a tile
    Entry.tile_first_asked = {}
    monkeypatch.setattr(geometric, "_warm_plan", lambda state: geometric._WarmPlan([], {}))
    for frame in range(20, 24):
        codes = geometric._PlaneCoarse(Entry(), frame, 0, d).texels(None, Tex, rows, cols, level)
        want = geometric.COLOUR_FILL if frame - 20 < d else geometric.FINAL  # no stand-in before the pyramid
        np.testing.assert_array_equal(codes, [want] * 6)  # (tile (5, 5) is not planned here either)
    assert (id(model), 11, "far") in submitted and (id(model), 11, "far") in joined


def test_tile_jobs_are_joined_taken_over_or_waited_for():
    """``TileJobs``: a job not started when its frame comes is the frame's (never run); a running one is waited
    for; a key held is not queued twice."""
    pool = ThreadPoolExecutor(1)
    jobs = fill_state.TileJobs(lambda: pool)
    gate, started, ran = threading.Event(), threading.Event(), []

    def blocker():
        started.set()
        gate.wait(10)
        ran.append("a")

    jobs.submit("a", blocker)
    jobs.submit("b", lambda: ran.append("b"))
    jobs.submit("b", lambda: ran.append("b twice"))
    assert started.wait(10)
    jobs.join("b")  # queued behind "a": taken over, never run
    threading.Timer(0.2, gate.set).start()
    t0 = time.monotonic()
    jobs.join("a")  # running: waited for
    assert time.monotonic() - t0 >= 0.15 and ran == ["a"]
    jobs.submit("c", lambda: ran.append("c"))
    pool.shutdown(wait=True)
    assert ran == ["a", "c"] and jobs.held() == 1  # "c" done, held until a frame joins it
    jobs.join("c")
    assert jobs.held() == 0


def test_tiles_read_is_a_2d_unique_of_the_texels_tiles():
    """``tiles_read`` (a compiled pass with a dense table, or a sort where the tiles are scattered) against
    ``np.unique`` over the (tile row, tile col) pairs, on clustered and on scattered texels, negative indices and
    the far-field levels included."""
    rng = np.random.default_rng(5)
    model = synthesis.TextureModel.fit(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8), np.ones((40, 40), bool),
                                       0.01)
    t = model.tile_px
    for spread in (3 * t, 10_000 * t):
        rows = rng.integers(-spread, spread, 5000)
        cols = rng.integers(-spread // 2, spread, 5000)
        level = rng.integers(0, synthesis.FAR_LEVEL + 2, 5000)
        tiles, top, tile = synthesis.tiles_read(model, rows, cols, level)
        near = level < synthesis.FAR_LEVEL
        want, inverse = np.unique(np.stack([rows[near] // t, cols[near] // t], 1), axis=0, return_inverse=True)
        np.testing.assert_array_equal(tiles, want)
        np.testing.assert_array_equal(tile[near], inverse.reshape(-1))
        assert (tile[~near] == -1).all()
        want_top = np.zeros(len(want), np.int64)
        np.maximum.at(want_top, inverse.reshape(-1), level[near])
        np.testing.assert_array_equal(top, want_top)
    assert len(synthesis.tiles_read(model, rows[:3], cols[:3], np.full(3, synthesis.FAR_LEVEL))[0]) == 0
