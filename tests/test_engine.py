import numpy as np
import pytest

from spatia.model.geometric import GeometricGenerator, pushpull_fill
from spatia.world.actions import ClipConfig, out_and_back_path
from spatia.world.camera import Intrinsics
from spatia.world.engine import Engine, EngineConfig
from spatia.world.errors import InvalidInputError
from spatia.world.generator import ClipRequest, ClipResult, Generator, GeneratorCapabilities
from spatia.world.metrics import psnr
from spatia.world.state import World

CLIPS = ClipConfig(first_clip_frames=8, clip_frames=10, preceding_frames=2)


def _world(box_room, w=96, h=64):
    K = Intrinsics.from_fov(75, w, h)
    rgb, depth = box_room(K, np.eye(4))
    return World.from_rgbd(rgb, depth, K), rgb


class Recorder:
    """A generator that records its requests and paints the memory render (holes grey)."""

    name = "recorder"
    capabilities = GeneratorCapabilities()

    def __init__(self):
        self.requests: list[ClipRequest] = []

    def generate(self, request: ClipRequest) -> ClipResult:
        self.requests.append(request)
        proj = request.target_projection
        frames = np.where(proj.valid[..., None], proj.rgb, 128).astype(np.uint8)
        return ClipResult(frames)


def test_generator_protocol_is_satisfied():
    assert isinstance(GeometricGenerator(), Generator) and isinstance(Recorder(), Generator)


def test_requests_carry_projection_preceding_and_references(box_room):
    world, _ = _world(box_room)
    gen = Recorder()
    path = out_and_back_path(world.origin_c2w, 31)[1:]
    frames = list(Engine(world, gen, EngineConfig(clip=CLIPS)).generate(path, prompt="go"))
    assert len(frames) == 30 and [f.frame_index for f in frames] == list(range(1, 31))
    first, second = gen.requests[0], gen.requests[1]
    assert first.num_preceding == 0 and first.first_frame is not None and first.num_target == 8
    assert second.num_preceding == 2 and second.first_frame is None and len(second.projection) == 2 + 8
    assert np.array_equal(second.preceding_c2w, world.history.poses()[7:9])
    assert all(r.frame_index < 7 for r in second.references)  # the preceding clip is not a candidate
    assert any(req.references for req in gen.requests)
    assert len(world.history) == 31 and all(req.prompt == "go" for req in gen.requests)
    assert len({req.seed for req in gen.requests}) == len(gen.requests)  # one seed per clip


def test_ablation_switches(box_room):
    world, _ = _world(box_room)
    gen = Recorder()
    cfg = EngineConfig(clip=CLIPS, use_scene_projection=False, use_references=False, update_memory=False)
    before = world.memory.num_points
    list(Engine(world, gen, cfg).generate(out_and_back_path(world.origin_c2w, 21)[1:]))
    assert all(not r.projection.valid.any() and not r.references for r in gen.requests)
    assert world.memory.num_points == before


def test_closed_loop_with_geometric_generator_returns_to_the_first_image(box_room):
    world, first = _world(box_room)
    path = out_and_back_path(world.origin_c2w, 41)
    frames = list(Engine(world, GeometricGenerator(), EngineConfig(clip=CLIPS)).generate(path[1:], seed=3))
    final = psnr(frames[-1].rgb, first)
    assert final >= 30.0
    # the far point of the loop looks elsewhere, so it is not a copy of the first image
    assert psnr(frames[len(frames) // 2].rgb, first) < final - 10.0


def test_same_seed_same_frames(box_room):
    outs = []
    for _ in range(2):
        world, _ = _world(box_room)
        path = out_and_back_path(world.origin_c2w, 17)[1:]
        outs.append(np.stack([f.rgb for f in Engine(world, GeometricGenerator(), EngineConfig(clip=CLIPS)).generate(path)]))
    assert np.array_equal(outs[0], outs[1])


def test_pushpull_fill_keeps_valid_pixels_and_fills_smoothly():
    rng = np.random.default_rng(0)
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = [200, 10, 10]
    rgb[:, 30:] = [10, 10, 200]
    valid = rng.random((40, 60)) > 0.5
    valid[10:30, 20:40] = False  # a big hole across the colour edge
    out = pushpull_fill(np.where(valid[..., None], rgb, 0).astype(np.uint8), valid)
    assert np.array_equal(out[valid], rgb[valid])
    assert out[20, 22, 0] > out[20, 22, 2] and out[20, 37, 2] > out[20, 37, 0]  # each side takes its neighbour's colour
    assert np.array_equal(pushpull_fill(rgb, np.ones((40, 60), bool)), rgb)


def test_bad_generator_output_is_reported(box_room):
    world, _ = _world(box_room)

    class Broken:
        name = "broken"
        capabilities = GeneratorCapabilities()

        def generate(self, request):
            return ClipResult(np.zeros((1, 2, 2, 3), np.uint8))

    with pytest.raises(RuntimeError, match="broken"):
        list(Engine(world, Broken(), EngineConfig(clip=CLIPS)).generate(out_and_back_path(world.origin_c2w, 5)))


@pytest.mark.parametrize("retrieved", [{0: 0.9}, {3: 0.9}, {}])
def test_with_one_reference_the_view_nearest_the_clip_end_keeps_its_slot(box_room, monkeypatch, retrieved):
    """K = 1 at an exact revisit: the one slot holds the frame seen from where the clip ends (here the first),
    whether Algorithm 1 retrieved it (it must not then be swapped for the next-nearest view), retrieved another
    frame, or nothing."""
    world, _ = _world(box_room)
    path = out_and_back_path(world.origin_c2w, 41)[1:]
    list(Engine(world, Recorder(), EngineConfig(clip=CLIPS)).generate(path[:-8]))  # out and most of the way back
    gen = Recorder()
    engine = Engine(world, gen, EngineConfig(clip=CLIPS, num_references=1))
    monkeypatch.setattr(engine, "_retrieved", lambda *args: dict(retrieved))
    list(engine.generate_clip(path[-8:]))
    assert [r.frame_index for r in gen.requests[-1].references] == [0]


def test_keyframes_alone_are_integrated_and_indexed(box_room):
    world, _ = _world(box_room)
    path = out_and_back_path(world.origin_c2w, 21)[1:]
    list(Engine(world, GeometricGenerator(), EngineConfig(clip=CLIPS, keyframe_stride=4)).generate(path))
    sizes = world.history.voxels.sizes()
    indexed = [i for i in range(len(world.history)) if sizes[i] > 0]
    assert indexed and all(i % 4 == 0 for i in indexed)
    keyframes = {i for i in range(len(world.history)) if i % 4 == 0}
    assert {int(f) for f in np.unique(world.memory.last_seen_frame)} <= keyframes
    assert all(world.history.has_depth(i) for i in range(len(world.history)))  # every frame stays a reference


def test_references_are_kept_while_the_camera_stays_close(box_room, monkeypatch):
    import spatia.world.engine as engine_module

    calls = []
    real = engine_module.retrieve_reference_frames
    monkeypatch.setattr(engine_module, "retrieve_reference_frames", lambda *a, **k: calls.append(1) or real(*a, **k))
    world, _ = _world(box_room)
    path = out_and_back_path(world.origin_c2w, 21)[1:]
    engine = Engine(world, Recorder(), EngineConfig(clip=ClipConfig(1, 2, 1), reuse_references_within=(90.0, 10.0)))
    for T in path[:6]:
        list(engine.generate_clip(T[None]))
    assert len(calls) == 1  # the first clip with candidates retrieved; the next ones were within the bounds
    calls.clear()
    far = EngineConfig(clip=ClipConfig(1, 2, 1), reuse_references_within=(0.0, 0.0))
    engine = Engine(world, Recorder(), far)
    for T in path[6:9]:
        list(engine.generate_clip(T[None]))
    assert len(calls) == 3


def test_references_are_kept_for_reuse_references_clips_whatever_the_distance(box_room, monkeypatch):
    """``reuse_references_clips = 2``: every third clip retrieves although each moves past the distance bound; the
    clips in between get the last retrieval's frames (those still candidates)."""
    import spatia.world.engine as engine_module

    calls = []
    real = engine_module.retrieve_reference_frames
    monkeypatch.setattr(engine_module, "retrieve_reference_frames", lambda *a, **k: calls.append(1) or real(*a, **k))
    world, _ = _world(box_room)
    path = out_and_back_path(world.origin_c2w, 21)[1:]
    gen = Recorder()
    engine = Engine(world, gen, EngineConfig(clip=ClipConfig(1, 2, 1), reuse_references_within=(0.0, 0.0),
                                             reuse_references_clips=2))
    retrieved = []
    for T in path[:10]:
        list(engine.generate_clip(T[None]))
        retrieved.append(len(calls))
    assert retrieved == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]  # clip 0 retrieves, clips 1-2 reuse, 3 retrieves, ...
    scores = engine._last_retrieval[1]
    assert {r.frame_index: r.score for r in gen.requests[-1].references if r.score} == scores
    with pytest.raises(InvalidInputError):
        EngineConfig(reuse_references_clips=-1)


def test_streamed_frames_come_out_before_the_generator_has_made_the_rest(box_room):
    world, _ = _world(box_room)
    made = []

    class Streaming(GeometricGenerator):
        def generate_frames(self, request):
            for view in super().generate_frames(request):
                made.append(1)
                yield view

    engine = Engine(world, Streaming(), EngineConfig(clip=CLIPS))
    frames = engine.generate_clip(out_and_back_path(world.origin_c2w, 9)[1:])
    next(frames)
    assert len(made) == 1  # the first frame is out; the other seven are not made yet
    assert len(list(frames)) == 7 and len(world.history) == 9


def test_a_generator_without_declared_capabilities_is_refused(box_room):
    world, _ = _world(box_room)

    class Undeclared:
        name = "undeclared"

        def generate(self, request):
            return ClipResult(np.zeros((1, 2, 2, 3), np.uint8))

    with pytest.raises(TypeError, match="undeclared.*capabilities"):
        Engine(world, Undeclared(), EngineConfig(clip=CLIPS))


@pytest.mark.parametrize("fill, coarse", [("layout", 0), ("layout", 8), ("legacy", 8)])
def test_targets_render_just_before_their_frames_and_nothing_changes(box_room, fill, coarse):
    """``projection_on_demand``: a streamed clip's first frame waits for its own target's render only (the
    legacy fill's layout estimate asks for them all); frames, memory and history as with every target rendered
    before the clip."""
    from dataclasses import replace

    from spatia.model.geometric import GeometricConfig

    class Eager(GeometricGenerator):
        capabilities = replace(GeometricGenerator.capabilities, projection_on_demand=False)

    out = []
    for cls in (GeometricGenerator, Eager):
        world, _ = _world(box_room)
        path = out_and_back_path(world.origin_c2w, 17)[1:]
        engine = Engine(world, cls(GeometricConfig(fill=fill, coarse_frames=coarse)), EngineConfig(clip=CLIPS))
        rendered = []
        real = engine._target_view
        engine._target_view = lambda memory, c2w, i: (rendered.append(i), real(memory, c2w, i))[1]
        stream = engine.generate(path)
        frames = [next(stream)]
        at_first = sorted(i - frames[0].frame_index for i in rendered)  # (as offsets in the first clip)
        frames += list(stream)
        m = world.memory
        out.append((at_first, np.stack([f.rgb for f in frames]), np.stack([f.depth_m for f in frames]),
                    b"".join(np.ascontiguousarray(a).tobytes() for a in (m.voxel_keys, m.colors, m.provenance)),
                    world.history.poses(), [world.history.get_voxel_keys(i).tobytes() for i in range(len(world.history))]))
    lazy, eager = out
    # retrieval's sampled targets (every K = 7th: 0 and 7) are rendered before the first frame too
    assert eager[0] == list(range(8)) and lazy[0] == ([0, 7] if fill == "layout" and coarse == 0 else list(range(8)))
    assert np.array_equal(lazy[1], eager[1]) and np.array_equal(lazy[2], eager[2])
    assert lazy[3] == eager[3] and np.array_equal(lazy[4], eager[4]) and lazy[5] == eager[5]


class CoarseLeft(Recorder):
    """A (non-streaming) generator whose frames' left half is a coarse fill (``ClipResult.provisional_px``), with
    depth 2 m wherever the memory shows nothing."""

    def generate(self, request: ClipRequest) -> ClipResult:
        frames = super().generate(request).frames
        proj = request.target_projection
        depth = np.where(proj.valid, proj.depth_m, 2.0037).astype(np.float32)
        coarse = np.zeros(frames.shape[:3], bool)
        coarse[:, :, : frames.shape[2] // 2] = True
        return ClipResult(frames, depth, provisional_px=coarse)


def test_a_frames_coarse_pixels_reach_neither_the_memory_nor_the_history_depth(box_room):
    """Pixels a generator marks as a coarse fill are shown but never folded into the memory, and the history keeps
    no depth there (no later frame warps them in as a reference); the rest of each frame is integrated."""
    world, _ = _world(box_room)
    path = out_and_back_path(world.origin_c2w, 9)[1:]
    n_before = world.memory.num_points
    frames = list(Engine(world, CoarseLeft(), EngineConfig(clip=CLIPS)).generate(path))
    K, half = world.intrinsics, world.intrinsics.width // 2
    from spatia.world.geometry import project_points

    new = world.memory.positions[n_before:]
    assert len(new) > 0
    for f in frames:
        assert not world.history.get_depth(f.frame_index)[:, :half].any()
        assert world.history.get_depth(f.frame_index)[:, half:].any()
    # every new point lies where the right (final) half of some frame saw it: none only in a left half
    right = np.zeros(len(new), bool)
    for f in frames:
        uv, z = project_points(new, K, f.c2w)
        right |= (z > 0) & (uv[:, 0] >= half - 1) & (uv[:, 0] < K.width) & (uv[:, 1] >= 0) & (uv[:, 1] < K.height)
    assert right.all()


def test_the_coarse_frames_shown_while_the_fill_is_prepared_are_no_references():
    """The layout fill's first frames of a world are the legacy fill, provisional (``coarse_frames``). In the
    history they are images only, no retrieval candidate and no depth to warp: retrieved 140 frames later, such a
    frame's stand-in was warped in as a flat panel beside a photo's edge (official case 3). Frames made once the
    fill is final are indexed, with depth, as before."""
    from spatia.model.geometric import GeometricConfig

    world = World.from_scene("courtyard", 0, 96, 64)
    gen = GeometricGenerator(GeometricConfig(fill="layout", coarse_frames=4))
    engine = Engine(world, gen, EngineConfig(clip=ClipConfig(1, 2, 1), keyframe_stride=1))
    path = out_and_back_path(world.origin_c2w, 9)[1:]
    list(engine.generate(path))
    history = world.history
    for i in range(1, 5):  # the coarse frames
        assert history.voxels.size_of(i) == 0
        assert not (history.get_depth(i) > 0).any()
    for i in range(5, len(history)):
        assert history.voxels.size_of(i) > 0 and (history.get_depth(i) > 0).any()
