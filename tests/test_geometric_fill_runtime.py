"""The layout fill at run time: one state per world, fitted off the frame path, a coarse fill first, and frames
that do not depend on when the fit finished (model/fill/state.py, model/geometric.py)."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
import pytest

import spatia.model.geometric as geometric
from spatia.model.geometric import GeometricConfig, GeometricGenerator
from spatia.world.actions import ClipConfig
from spatia.world.engine import Engine, EngineConfig
from spatia.world.memory import INVENTED_PROVISIONAL
from spatia.world.scenes import make_scene
from spatia.world.state import World

W, H = 128, 72
PLAY = EngineConfig(clip=ClipConfig(first_clip_frames=4, clip_frames=6, preceding_frames=2), keyframe_stride=1)


def _world(name: str = "room") -> tuple[World, np.ndarray]:
    scene = make_scene(name, 0)
    return World.from_scene(name, 0, W, H), scene.demo_path(41)[1:17]


@pytest.fixture
def counted_fits(monkeypatch):
    """Counts the layout fits (and lets a test hold them until it says go)."""
    calls: list[tuple] = []
    go = threading.Event()
    go.set()
    real = geometric._fit_layout_state

    def fit(inputs):
        go.wait(timeout=60)
        calls.append(inputs.version)
        return real(inputs)

    monkeypatch.setattr(geometric, "_fit_layout_state", fit)
    return calls, go


def test_one_state_per_world_shared_generator(counted_fits):
    calls, _ = counted_fits
    gen = GeometricGenerator(GeometricConfig(fill="layout"))
    (wa, path_a), (wb, path_b) = _world("room"), _world("house")
    ea, eb = Engine(wa, gen, PLAY), Engine(wb, gen, PLAY)
    a, b = ea.generate(path_a), eb.generate(path_b)
    for _ in range(len(path_a)):  # the two worlds' frames interleave, as two play sessions' do on a server
        next(a)
        next(b)
    assert len(calls) == 2, calls  # each world fitted once, however its clips interleave with the other's


def test_coarse_frames_do_not_wait_for_the_fit(counted_fits):
    calls, go = counted_fits
    go.clear()  # the fit cannot finish until we say so
    world, path = _world()
    engine = Engine(world, GeometricGenerator(GeometricConfig(fill="layout", coarse_frames=4)), PLAY)
    frames = engine.generate(path)
    first = [next(frames) for _ in range(4)]  # the coarse frames come although the fit is held
    assert len(first) == 4 and not calls
    # ... and the first clip (4 frames, all coarse) left provisional invented points in the memory
    next_frame = threading.Thread(target=lambda: first.append(next(frames)))
    next_frame.start()
    next_frame.join(timeout=2.0)
    assert next_frame.is_alive(), "the 5th frame (final) must wait for the fit"
    go.set()
    next_frame.join(timeout=60)
    assert len(first) == 5 and len(calls) == 1
    for _ in frames:
        pass
    # the final frames replaced the coarse fill: nothing provisional is left once a final clip is committed
    assert not world.memory.has_provisional


def test_a_fresh_worlds_first_frames_are_final_by_default(counted_fits):
    """The default (``coarse_frames=0``): the first frame after a world is opened waits for the fit and is final,
    as every later one. With 8 coarse frames counted whether or not the fit was done, ``make demo`` and every new
    world's first Play began with 8 frames of the legacy fill's smear beside the furniture (docs/RESULTS.md,
    session 39)."""
    calls, go = counted_fits
    go.clear()
    world, path = _world()
    gen = GeometricGenerator()
    provisional = []
    real = gen.generate_frames

    def spy(request):
        for view in real(request):
            provisional.append(view.provisional)
            yield view

    gen.generate_frames = spy
    frames = Engine(world, gen, PLAY).generate(path[:6])
    first = threading.Thread(target=lambda: next(frames))
    first.start()
    first.join(timeout=2.0)
    assert first.is_alive(), "the first frame must wait for the fit"
    go.set()
    first.join(timeout=60)
    deque(frames, maxlen=0)
    assert len(calls) == 1 and provisional == [False] * 6
    assert not world.memory.has_provisional


def test_first_clip_is_provisional_then_replaced():
    world, path = _world()
    engine = Engine(world, GeometricGenerator(GeometricConfig(fill="layout", coarse_frames=4)), PLAY)
    frames = engine.generate(path)
    for _ in range(4):
        next(frames)
    next(frames)  # pulls the first clip's commit, then makes the second clip's first frame
    prov = world.memory.provenance
    assert (prov == INVENTED_PROVISIONAL).sum() > 0  # the coarse clip's invented points, provisional
    for _ in range(5):  # the rest of the second clip (final) and its commit
        next(frames)
    next(frames)
    assert not world.memory.has_provisional


def _memory_bytes(world: World) -> bytes:
    m = world.memory
    return b"".join(np.ascontiguousarray(a).tobytes() for a in (m.voxel_keys, m.colors, m.provenance))


def test_frames_do_not_depend_on_when_the_fit_finished(monkeypatch):
    """Same world + same path give byte-identical memory whether the fit (and each plane's texture fit, which the
    per-plane coarse fill does not wait for) is instant or slow."""
    from spatia.model.fill.texture import appearance

    real, real_texture = geometric._fit_layout_state, appearance.plane_texture
    results = []
    for delay in (0.0, 1.5):
        def fit(inputs, delay=delay):
            threading.Event().wait(delay)
            return real(inputs)

        def plane_texture(*args, delay=delay, **kwargs):
            threading.Event().wait(delay / 10)
            return real_texture(*args, **kwargs)

        monkeypatch.setattr(geometric, "_fit_layout_state", fit)
        monkeypatch.setattr(appearance, "plane_texture", plane_texture)
        world, path = _world()
        engine = Engine(world, GeometricGenerator(GeometricConfig(fill="layout")), PLAY)
        frames = [f.rgb for f in engine.generate(path)]
        results.append((np.stack(frames), _memory_bytes(world)))
    assert np.array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_a_plane_shows_its_coarse_fill_for_its_first_frames_only(monkeypatch):
    """Per-plane coarse fill (``coarse_plane_frames``): a plane's pixels are provisional in the frames within N of
    the first that showed it and final from then on; provisional pixels keep no history depth (the memory update
    skipping them: tests/test_memory.py)."""
    n = 3
    shown: list[tuple[int, tuple, bool]] = []  # (frame, plane key, coarse)
    masks: list[np.ndarray | None] = []
    real_planes, real_mask = geometric._PlaneCoarse.planes, geometric._PlaneCoarse.set_mask

    def planes(self, bounds, counts):
        out = real_planes(self, bounds, counts)
        for i in np.flatnonzero(counts):
            shown.append((self._frame, geometric.plane_texture_key(bounds[i]), bool(out[i])))
        return out

    def set_mask(self, shape, pixels):
        real_mask(self, shape, pixels)
        masks.append(self.mask)

    monkeypatch.setattr(geometric._PlaneCoarse, "planes", planes)
    monkeypatch.setattr(geometric._PlaneCoarse, "set_mask", set_mask)
    world, path = _world()
    gen = GeometricGenerator(GeometricConfig(fill="layout", coarse_frames=0, coarse_plane_frames=n))
    frames = list(Engine(world, gen, PLAY).generate(path))
    assert len(masks) == len(frames)  # every frame is a layout frame (no whole-frame coarse fill)
    first: dict[tuple, int] = {}
    for frame, key, coarse in shown:
        first.setdefault(key, frame)
        assert coarse == (frame - first[key] < n), (frame, key)
    assert masks[0] is not None and masks[0].any()  # the first view's unseen planes: coarse
    assert any(m is None for m in masks[n:])  # ... and final after n frames
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        assert not world.history.get_depth(frames[i].frame_index)[mask].any()  # nothing warps them in later


def test_free_space_kernels_match_their_references():
    from spatia.model.fill.geometry.freespace import (
        seen_through, seen_through_reference, world_points, world_points_reference,
    )
    from spatia.world.camera import Intrinsics, look_at

    rng = np.random.default_rng(3)
    K = Intrinsics.from_fov(75.0, 64, 36)
    c2w = look_at(np.array([0.3, -0.2, 0.1]), np.array([1.0, 0.5, 3.0]))
    rays = np.concatenate([rng.uniform(-1, 1, (500, 2)), np.ones((500, 1))], 1).astype(np.float32)
    z = rng.uniform(0.1, 8.0, 500).astype(np.float32)
    pts = world_points(rays, z, c2w)
    np.testing.assert_allclose(pts, world_points_reference(rays, z, c2w), rtol=1e-6, atol=1e-6)
    view = look_at(np.zeros(3), np.array([0.0, 0.0, 1.0]))
    depth = rng.uniform(0.5, 6.0, (36, 64)).astype(np.float32)
    depth[:5] = 0.0  # sky rows: everything in front is free
    depth[20:30, 10:40] = np.nan  # unknown (a dynamic entity's pixels): no evidence either way
    got = seen_through(pts, view, K, depth, 0.03)
    want = seen_through_reference(pts, view, K, depth, 0.03)
    assert got.any() and not got.all()
    np.testing.assert_array_equal(got, want)
    pc = (pts - view[:3, 3]) @ view[:3, :3]  # which points fall on the unknown pixels: none is in free space
    u = np.floor(K.fx * pc[:, 0] / pc[:, 2] + K.cx)
    v = np.floor(K.fy * pc[:, 1] / pc[:, 2] + K.cy)
    unknown = (pc[:, 2] > 0) & (u >= 10) & (u < 40) & (v >= 20) & (v < 30)
    assert unknown.sum() > 5 and not got[unknown].any()


def test_warmed_tiles_are_the_tiles_a_frame_would_make():
    from spatia.model.fill.texture.synthesis import TextureModel, sample_uv, tiles_covering, warm_tiles

    rng = np.random.default_rng(0)
    rgb = (rng.integers(0, 255, (48, 48, 3))).astype(np.uint8)
    valid = np.ones((48, 48), bool)
    cold, warm = (TextureModel.fit(rgb, valid, 0.01) for _ in range(2))
    uv = rng.uniform(-1.0, 1.5, (4000, 2))
    footprint = np.full(len(uv), 0.004)
    tiles = tiles_covering(warm, uv.min(0), uv.max(0))
    assert warm_tiles(warm, tiles, seed=7) == len(tiles) > 4
    assert warm_tiles(warm, tiles, seed=7) == 0  # already there
    cached = len(warm._tiles)
    np.testing.assert_array_equal(sample_uv(warm, uv, footprint, 7), sample_uv(cold, uv, footprint, 7))
    assert len(warm._tiles) == cached  # the frame found every tile it read already made


def test_plane_textures_are_fitted_once_whoever_asks_first(monkeypatch):
    """The fit hands over the layout alone; the planes' texture models are fitted by whichever thread asks first
    (the warm-up, nearest first, or a frame): every plane exactly once, the same models for all askers."""
    import spatia.model.fill.texture.appearance as appearance
    from spatia.world.engine import observed_views, world_up

    world, _ = _world("room")
    gen = GeometricGenerator(GeometricConfig(fill="layout"))
    inputs, _key = gen._fill_inputs(world.memory, observed_views(world), world_up(world), world.layout_prior)
    state = geometric._fit_layout_state(inputs())
    assert not state.textures._own  # no texture fitted before the state is handed over
    fitted: list[int] = []
    real = appearance.plane_texture

    def counted(layout, plane, *args):
        fitted.append(plane.plane_id)
        return real(layout, plane, *args)

    monkeypatch.setattr(appearance, "plane_texture", counted)
    planes = list(state.layout.planes)
    got: dict[int, list] = {}
    start = threading.Barrier(3)

    def ask(name, order):
        start.wait()
        got[name] = [state.textures.for_plane(p) for p in order]

    threads = [threading.Thread(target=ask, args=(k, planes[::step])) for k, step in ((0, 1), (1, -1))]
    for t in threads:
        t.start()
    start.wait()
    geometric._warm_layout_state(state)  # the maintenance thread's work, on this thread
    for t in threads:
        t.join(timeout=120)
    assert sorted(fitted) == sorted(set(fitted)) and fitted, fitted  # each plane at most once
    assert set(fitted) >= {p.plane_id for p in planes if not p.derived and p.plane_id >= 0}
    for a, b in zip(got[0], got[1][::-1]):
        assert a is b


def test_a_pixels_footprint_on_a_plane_stretches_with_incidence():
    """``plane_footprint_m`` (what picks a texture's mip level) against a reference that intersects the rays of a
    pixel's neighbours with the plane and measures the hit points' spacing: head-on it is depth / focal, on a
    floor seen at a grazing angle many times that (the long axis, within the factor a pixel's diagonal allows)."""
    from spatia.world.camera import Intrinsics
    from spatia.world.geometry import pixel_rays

    K = Intrinsics.from_fov(75.0, 160, 90)
    rays = pixel_rays(K).astype(np.float64)  # [H, W, 3] camera frame, z = 1 (camera y points down)
    rng = np.random.default_rng(0)
    for _ in range(6):
        normal = rng.normal(size=3)
        normal[2] = abs(normal[2]) + 0.2  # in front of the camera
        normal /= np.linalg.norm(normal)
        offset = rng.uniform(1.0, 4.0)  # plane n . x = offset, camera at the origin
        t = offset / (rays @ normal)  # [H, W] ray parameter = z-depth of the hit
        ok = (t > 0) & (t < 60)
        ok[-1, :] = ok[:, -1] = False
        ys, xs = np.nonzero(ok & np.roll(ok, -1, 0) & np.roll(ok, -1, 1))
        hit = rays * t[..., None]
        step = np.maximum(np.linalg.norm(hit[ys + 1, xs] - hit[ys, xs], axis=1),
                          np.linalg.norm(hit[ys, xs + 1] - hit[ys, xs], axis=1))  # reference: neighbour spacing
        fp = geometric.plane_footprint_m(rays[ys, xs], t[ys, xs], max(K.fx, K.fy), normal)
        cos_inc = np.abs(rays[ys, xs] @ normal) / np.linalg.norm(rays[ys, xs], axis=1)
        fair = cos_inc > 4 * geometric.MIN_INCIDENCE_COS  # below, the cap holds by design
        ratio = fp[fair] / step[fair]
        assert fair.sum() > 1000
        assert 0.95 < ratio.min() and ratio.max() < 1.5, (ratio.min(), ratio.max())
    # head on: the pixel's width; a floor 1.5 m below seen 20 m away: > 10x that
    head_on = geometric.plane_footprint_m(np.array([[0, 0, 1.0]]), np.array([4.0]), 100.0, np.array([0, 0, 1.0]))
    assert np.isclose(head_on[0], 0.04)
    floor = geometric.plane_footprint_m(np.array([[0, 0.075, 1.0]]), np.array([20.0]), 100.0, np.array([0, 1.0, 0]))
    assert floor[0] > 10 * 20.0 / 100.0


def test_tile_warm_up_runs_at_low_priority_and_the_fits_at_normal_priority():
    """The layout fit and the plane texture fits (frames wait for them: a plane's fit holds its lock) keep the
    process's priority; the tile synthesis after them (no frame waits for more than the tile in progress) runs
    WARM_NICE nicer on its own thread, so on two cores it yields to the world's thread (docs/BENCHMARKS.md,
    "Served play latency")."""
    import os

    from spatia.model.fill.state import WARM_NICE, FillStates

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen: dict[str, int] = {}
    tiled = threading.Event()

    def fit(inputs):
        seen["fit"] = nice()
        return inputs

    def warm(state):
        seen["textures"] = nice()

    def tiles(state):
        seen["tiles"] = nice()
        tiled.set()

    class Memory:
        """A stand-in key: fill states are held weakly per memory object."""

    states = FillStates(fit, warm, tiles)
    memory = Memory()
    try:
        assert states.prepare(memory, lambda: "inputs", ("v", 0)).state() == "inputs"
        assert tiled.wait(30)
    finally:
        states.close()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen["fit"] == base and seen["textures"] == base
    assert seen["tiles"] == min(base + WARM_NICE, 19)


def test_waiting_for_a_world_covers_its_fit_and_plane_textures_not_its_tiles():
    """``FillStates.wait`` (what a server's CreateWorld waits for): over once the fit and the plane-texture warm-up
    are, not before, whatever the tiles do; a world never prepared, or whose fit failed, is not waited for."""
    from spatia.model.fill.state import FillStates

    go_fit, go_warm, go_tiles = threading.Event(), threading.Event(), threading.Event()
    warmed = []

    def fit(inputs):
        assert go_fit.wait(30)
        if inputs == "bad":
            raise ValueError("no layout")
        return inputs

    def warm(state):
        assert go_warm.wait(30)
        warmed.append(state)

    class Memory:
        """A stand-in key: fill states are held weakly per memory object."""

    states = FillStates(fit, warm, lambda state: go_tiles.wait(30))
    memory, other, bad = Memory(), Memory(), Memory()
    try:
        assert states.wait(other, 0.0)  # nothing prepared for it
        states.prepare(memory, lambda: "inputs", ("v", 0))
        assert not states.wait(memory, 0.05)  # fitting
        go_fit.set()
        assert states.prepare(memory, lambda: "inputs", ("v", 0)).state() == "inputs"
        assert not states.wait(memory, 0.05)  # fitted, its plane textures not yet
        go_warm.set()
        assert states.wait(memory, 30) and warmed == ["inputs"]
        assert not go_tiles.is_set()  # the tiles are still running: not waited for
        states.prepare(bad, lambda: "bad", ("v", 0))
        assert states.wait(bad, 30)
    finally:
        go_tiles.set()
        states.close()


def test_a_failed_fit_is_fitted_again_by_the_next_prepare():
    """A fit that raised is not kept for its world: the frame that finds it gets its error, the next ``prepare``
    (the next clip's frames) fits again instead of raising the same error for as long as the process lives."""
    from spatia.model.fill.state import FillStates

    calls = []

    def fit(inputs):
        calls.append(inputs)
        if len(calls) == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return inputs

    class Memory:
        """A stand-in key: fill states are held weakly per memory object."""

    states = FillStates(fit)
    memory = Memory()
    try:
        first = states.prepare(memory, lambda: "inputs", ("v", 0))
        with pytest.raises(RuntimeError, match="changed size"):
            first.state()
        again = states.prepare(memory, lambda: "inputs", ("v", 0))
        assert again is not first and again.state() == "inputs"
        assert states.prepare(memory, lambda: "inputs", ("v", 0)) is again and calls == ["inputs", "inputs"]
    finally:
        states.close()


def test_create_world_answers_once_the_worlds_fit_is_done(tmp_path, monkeypatch):
    """A layout server's CreateWorld waits (off its event loop) for the world's layout and plane textures, so its
    first Play frames do not; here the plane textures are slowed so that an answer that did not wait comes first."""
    import time

    from spatia.client.api import WorldClient
    from spatia.server.config import ServerConfig
    from spatia.server.testing import running_server

    fit_textures = geometric._fit_plane_textures

    def slow_textures(state):
        time.sleep(0.5)
        fit_textures(state)

    monkeypatch.setattr(geometric, "_fit_plane_textures", slow_textures)
    with running_server(ServerConfig(data_dir=tmp_path, port=0)) as st, WorldClient(st.target, timeout_s=60) as c:
        c.create_scene("room", seed=0, width=64, height=48, world_id="room0")
        (host,) = st.server.store.hosts()
        entry = st.server.servicer.generator._states._states[host.world.memory]
        assert entry.ready.is_set() and entry.future.done()


def test_a_layout_generator_imports_its_fill_when_built_not_in_its_first_fit():
    """A server builds its generator at start: the layout fill's modules are imported then, not in the first
    world's fit that the first session's first final frame waits for (a fresh process, so nothing is cached)."""
    import subprocess
    import sys

    code = ("import sys; from spatia.model.geometric import GeometricConfig, GeometricGenerator; "
            "GeometricGenerator(GeometricConfig(fill='layout')); "
            "print(all(m in sys.modules for m in ('spatia.model.fill.texture.synthesis', 'spatia.model.fill.texture.appearance', "
            "'spatia.model.fill.geometry.layout', 'spatia.model.fill.image.hole_kernels', 'scipy.ndimage', 'scipy.fft')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"


_KERNEL_LOADS = """
import json
from collections import deque
from spatia.model import geometric
from spatia.model.fill.geometry import opening_kernels
from spatia.model.fill.image import see_through
from spatia.model.fill.texture import synthesis_kernels as texture_kernels
from spatia.world import engine as engine_module, history
from spatia.world.actions import ClipConfig
from spatia.world.engine import Engine, EngineConfig
from spatia.world.scenes import make_scene
from spatia.world.state import World

kernels = {"mark_opening": opening_kernels.mark_opening, "far_texels": texture_kernels.far_texels,
           "first_use_renumber": history._renumber_kernel(), "_see_through": see_through._see_through}
gen = geometric.GeometricGenerator(geometric.GeometricConfig(fill="layout", coarse_frames=0, coarse_plane_frames=0))
world = World.from_scene("house", 0, 64, 36)
engine = Engine(world, gen, EngineConfig(clip=ClipConfig(4, 6, 2), keyframe_stride=4))
geometric._load_frame_kernels().join(timeout=300)
engine_module._load_save_kernels().result(timeout=300)
loaded = {name: [str(s) for s in k.signatures] for name, k in kernels.items()}
calls = {name: 0 for name in kernels}

def counting(module, name):
    real = getattr(module, name)
    def call(*args):
        calls[name] += 1
        return real(*args)
    setattr(module, name, call)

counting(opening_kernels, "mark_opening")
counting(texture_kernels, "far_texels")
counting(see_through, "_see_through")
deque(engine.generate(make_scene("house", 0).demo_path(161)[1:61]), maxlen=0)
renumber = kernels["first_use_renumber"]
def counting_renumber(*args):
    calls["first_use_renumber"] += 1
    return renumber(*args)
history._renumber_kernel = lambda: counting_renumber
world.history.meta_arrays(1, len(world.history))  # a save's range: renumbers the voxel-set columns
after = {name: [str(s) for s in k.signatures] for name, k in kernels.items()}
print(json.dumps({"loaded": loaded, "after": after, "calls": calls}))
"""


def test_first_use_kernels_are_loaded_before_the_first_frame_needs_them():
    """In a fresh process, the kernels a layout-filled frame (the doorway test, a periodic texture's far-field
    texels, gaps in near surfaces) and a world's
    first save (the voxel-set renumbering) call first are loaded by signature off the frame path when the generator
    and the engine are built: a walk through the house's doorways and a save then load no other signature."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _KERNEL_LOADS], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("mark_opening", "far_texels", "first_use_renumber", "_see_through"):
        # the walk did call it (the far-field kernel is a periodic texture's, which the house at 64x36 does not
        # read from afar: loaded and no other signature is what is asked of it)
        assert got["calls"][name] > 0 or name == "far_texels", name
        # loaded before the first frame (the renumbering for a column view and a copy), for the types passed
        assert len(got["loaded"][name]) == (2 if name == "first_use_renumber" else 1), (name, got["loaded"][name])
        assert got["after"][name] == got["loaded"][name], name


def test_warmed_tiles_with_their_mips_are_the_frames_whatever_the_models_cell_table_holds():
    """``warm_tiles`` synthesises outside the model's lock with the off-frame cell table (kept across calls: one
    tile per call, as a tile job makes them, after other tiles left their cells there); a tile and its mips are
    those a frame makes (``sample_uv`` at a footprint of mip 1), while the model's own table holds what earlier
    reads left there."""
    from spatia.model.fill.texture.synthesis import TextureModel, sample_uv, tiles_covering, warm_tiles

    rng = np.random.default_rng(1)
    rgb = (rng.integers(0, 255, (48, 48, 3))).astype(np.uint8)
    cold, warm = (TextureModel.fit(rgb, np.ones((48, 48), bool), 0.01) for _ in range(2))
    sample_uv(warm, rng.uniform(3.0, 4.0, (500, 2)), np.full(500, 0.004), 7)  # fills the model's own table
    uv = rng.uniform(-1.0, 1.5, (4000, 2))
    footprint = np.full(len(uv), 0.025)  # mip 1
    tiles = [(i, j, 1) for i, j in tiles_covering(warm, uv.min(0), uv.max(0))]
    assert warm_tiles(warm, [(40, 40), (40, 41)], seed=7) == 2  # elsewhere: the off-frame table holds their cells
    assert sum(warm_tiles(warm, [tile], seed=7) for tile in tiles) == len(tiles) > 4
    assert all(len(warm._tiles[(7, i, j)]) == 2 for i, j, _ in tiles)  # level 0 and its mip
    cached = len(warm._tiles)
    np.testing.assert_array_equal(sample_uv(warm, uv, footprint, 7), sample_uv(cold, uv, footprint, 7))
    assert len(warm._tiles) == cached
    for i, j, _ in tiles:
        for level in (0, 1):
            np.testing.assert_array_equal(warm._tiles[(7, i, j)][level], cold._tile(i, j, 7, level))


def test_tiles_ahead_of_a_view_hold_the_tiles_its_frame_reads(monkeypatch):
    """``_tiles_ahead`` (a widened view's planes on a coarse grid of rays, and the tiles beside those) names the
    tiles the layout fill then reads at that pose: frames find them made (all of them on this path; a grid can
    miss a sliver of a tile, hence the margin)."""
    from spatia.model.fill.texture import synthesis as texture

    reads: list[tuple] = []
    made: list[set] = []
    real_tile, real_fill = texture.TextureModel._tile_locked, GeometricGenerator._layout_fill
    main = threading.get_ident()

    def tile_locked(self, i, j, seed, level=0):
        if threading.get_ident() == main:
            made[-1].add((id(self), seed, i, j))
        return real_tile(self, i, j, seed, level)

    def layout_fill(self, state, rgb, colored, depth, valid, c2w, request, reach, coarse=None, view=None,
                    claims=None, observed=None):
        made.append(set())
        out = real_fill(self, state, rgb, colored, depth, valid, c2w, request, reach, coarse, view, claims, observed)
        reads.append((state, view, c2w.copy(), request.intrinsics, made[-1]))
        return out

    monkeypatch.setattr(texture.TextureModel, "_tile_locked", tile_locked)
    monkeypatch.setattr(GeometricGenerator, "_layout_fill", layout_fill)
    monkeypatch.setattr(GeometricGenerator, "_tiles_ahead", lambda *args: None)  # every tile read by the frames
    world = World.from_scene("room", 0, 320, 180)
    path = make_scene("room", 0).demo_path(161)[40:100:6]
    engine = Engine(world, GeometricGenerator(GeometricConfig(fill="layout")), PLAY)
    deque(engine.generate(path), maxlen=0)
    read = named = 0
    for state, view, c2w, K, tiles in reads:
        ahead = {(id(m), seed, i, j) for m, seed, ts in geometric._tiles_ahead(state, [(view, c2w)], K)
                 for i, j, _ in ts}
        read += len(tiles)
        named += len(tiles & ahead)
    assert read > 20
    assert named >= 0.95 * read


def test_tiles_ahead_run_off_the_callers_thread_the_latest_waiting_job_replacing_the_others():
    """``FillStates.ahead``: jobs run on a thread of their own, one at a time; a job asked for while another
    runs waits, and a newer one replaces it before it starts (its view is gone)."""
    from spatia.model.fill.state import FillEntry, FillStates

    states = FillStates(lambda inputs: inputs)
    entry = FillEntry(("v", 0), None)
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    ran: list[tuple[str, int]] = []

    def first():
        ran.append(("first", threading.get_ident()))
        started.set()
        release.wait(30)

    try:
        states.ahead(entry, first)
        assert started.wait(30)
        states.ahead(entry, lambda: ran.append(("second", threading.get_ident())))
        states.ahead(entry, lambda: 1 / 0)
        states.ahead(entry, lambda: (ran.append(("last", threading.get_ident())), done.set()))
        release.set()
        assert done.wait(30)
    finally:
        states.close()
    assert [name for name, _ in ran] == ["first", "last"]
    assert threading.get_ident() not in {tid for _, tid in ran}


def test_tiles_ahead_are_asked_for_only_when_configured_and_a_core_is_spare(monkeypatch):
    """``GeometricConfig.tiles_ahead`` (off by default: on two cores served sessions paid for it) and the request's
    ``spare_core`` (a server's: no other world in play) decide whether layout frames ask the tile-ahead thread for
    jobs; the frames are the same either way."""
    from spatia.model.fill.state import FillStates

    asked = []
    real = FillStates.ahead
    monkeypatch.setattr(FillStates, "ahead", lambda self, entry, job: (asked.append(1), real(self, entry, job)))
    path = make_scene("room", 0).demo_path(161)[20:100:5]  # past the coarse frames shown while the fit runs
    frames = {}
    for on, spare in ((False, True), (True, False), (True, True)):
        asked.clear()
        world = World.from_scene("room", 0, 160, 90)
        engine = Engine(world, GeometricGenerator(GeometricConfig(fill="layout", tiles_ahead=on)), PLAY)
        frames[on, spare] = [f.rgb for f in engine.generate(path, spare_core=spare)]
        assert (len(asked) > 0) == (on and spare), (on, spare, len(asked))
    assert GeometricConfig().tiles_ahead is False
    for a, b, c in zip(frames[False, True], frames[True, False], frames[True, True], strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
