"""A clip's memory update beside the next clip (``EngineConfig.commit_beside_next_clip``, served interactive play):
the frozen view the next clip reads is the memory as it was, whatever the update does meanwhile; the frames, the
memory and the history are a function of the path alone, however late the update thread runs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from spatia.model.geometric import GeometricConfig, GeometricGenerator
from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
from spatia.world.camera import Intrinsics, look_at
from spatia.world.engine import Engine, EngineConfig, commits_beside_next_clip
from spatia.world.errors import InvalidInputError
from spatia.world.memory import SpatialMemory
from spatia.world.regions import Box
from spatia.world.state import World
from spatia.world.update import UpdateConfig
from test_memory_maintenance import _batches  # slabs further and further away: mostly new voxels each

CAM = Intrinsics.from_fov(70.0, 96, 64)
PLAY_CLIPS = ClipConfig(first_clip_frames=4, clip_frames=6, preceding_frames=2)


def _reads(mem: SpatialMemory, poses: list[np.ndarray]) -> list[np.ndarray]:
    """Everything a clip (and a session's collider) reads of the memory, as arrays."""
    out = [np.array([mem.num_points])]
    for c2w in poses:
        r = mem.render(CAM, c2w, return_point_ids=True)
        out += [r.rgb, r.depth_m, r.valid, r.point_ids, np.sort(mem.rendered_voxel_keys(r.point_ids))]
    pts, cols = mem.observed_points()
    near, prov = mem.points_in_box(np.array([-1.0, -1.0, 2.0]), np.array([1.0, 1.0, 4.0]))
    order = np.lexsort(near.T)
    return out + [pts, cols, near[order], prov[order], mem.provenance, np.array([mem.has_provisional])]


def test_a_frozen_view_reads_the_memory_as_it_was_while_it_changes(monkeypatch):
    """Integrates (growths prepared and made on the spot, re-sorts prepared and adopted) and drops change the
    memory while a view taken before them is read: the view reads as a copy made at that moment does."""
    import spatia.world.memory as memory_module

    adopted = {"growth": 0, "resort": 0}
    for name, key in (("_adopt_growth", "growth"), ("_adopt_resort", "resort")):
        original = getattr(SpatialMemory, name)

        def counting(self, *args, _original=original, _key=key, **kwargs):
            took = _original(self, *args, **kwargs)
            adopted[_key] += took is not False
            return took

        monkeypatch.setattr(SpatialMemory, name, counting)
    monkeypatch.setattr(memory_module, "TAIL_MIN", 2000)  # re-sorts every few batches at this size
    batches = _batches(36)
    mem = SpatialMemory()
    for i in range(4):
        mem.integrate_points(*batches[i], frame_index=i)
    poses = [look_at(np.array([x, 0.2, 0.0]), np.array([0.0, 0.0, 4.0])) for x in (-0.5, 0.4)]
    for i in range(4, len(batches)):
        view = mem.frozen_view()
        mem.hold_in_place_resorts = True
        then = mem.copy()  # the memory as it is now, in arrays of its own
        then.hold_in_place_resorts = True  # (its rows stay in place too, so point ids compare)
        mem.integrate_points(*batches[i], frame_index=i)  # appended past the view's rows; may grow or re-sort
        if i % 3 == 0:
            centre = np.array([-1.5, 0.0, 2.1 + 0.1 * (i - 3)])
            mem.remove(Box(centre, [0.5, 1.0, 0.1]))  # a drop: dead rows, provenance marked in place
        mem.render(CAM, poses[0])  # the update's own renders adopt a prepared re-sort
        for got, want in zip(_reads(view, poses), _reads(then, poses), strict=True):
            np.testing.assert_array_equal(got, want)
        assert view.origin is mem and mem.origin is mem and view.version == then.version != mem.version
        mem.hold_in_place_resorts = False
        mem.reindex_if_due()
    assert adopted["growth"] and adopted["resort"], adopted  # the loop exercised both swaps
    with pytest.raises(RuntimeError, match="read-only"):
        view.integrate_points(*batches[0], frame_index=99)
    with pytest.raises(RuntimeError, match="read-only"):
        view.remove(Box(np.zeros(3), [9.0, 9.0, 9.0]))


def test_an_in_place_resort_waits_while_a_view_is_read(monkeypatch):
    monkeypatch.setattr(SpatialMemory, "_prepare_reindex", lambda self: None)  # nothing prepared: in place only
    mem = SpatialMemory()
    for i, batch in enumerate(_batches(100)):
        mem.integrate_points(*batch, frame_index=i)
    view = mem.frozen_view()
    mem.hold_in_place_resorts = True
    c2w = look_at(np.zeros(3), np.array([0.0, 0.0, 5.0]))
    mem.render(CAM, c2w)  # a re-sort is due: held back
    assert mem.resorts_in_place == 0 and mem._n_sorted == 0
    want = view.render(CAM, c2w, return_point_ids=True)
    mem.hold_in_place_resorts = False
    mem.reindex_if_due()
    assert mem.resorts_in_place == 1 and mem._n_sorted == mem.num_points
    got = mem.render(CAM, c2w)
    np.testing.assert_array_equal(got.rgb, want.rgb)
    np.testing.assert_array_equal(got.depth_m, want.depth_m)


def _walk_poses(world: World, n: int) -> np.ndarray:
    return np.asarray(ActionIntegrator(world.current_c2w, ControlConfig(fps=30)).run(
        [Action(move_forward=1.0, yaw_rate_rad_s=0.9, dt_s=1 / 30)] * n))


def _play(box_room, beside: bool, slow_update: bool = False, monkeypatch=None, clips: int = 30, solo=None):
    """One-pose clips along a turning walk (served play's clips), in play settings; (frames, world). ``solo``:
    [clips] bool, each clip's ``generate_clip(spare_core=...)`` (a server's other worlds starting and ending play)."""
    rgb, depth = box_room(CAM, np.eye(4))
    world = World.from_rgbd(rgb, depth, CAM)
    generator = GeometricGenerator(GeometricConfig(fill="layout"))
    engine = Engine(world, generator, EngineConfig(clip=PLAY_CLIPS, keyframe_stride=4, free_radius_m=0.3,
                                                    commit_beside_next_clip=beside))
    generator.wait_prepared(world.memory, 60.0)
    if slow_update:  # the update thread late by 0-25 ms at random, before and after its work
        rng = np.random.default_rng(11)
        original = Engine._commit_memory

        def late(self, *args, **kwargs):
            time.sleep(float(rng.uniform(0, 0.025)))
            out = original(self, *args, **kwargs)
            time.sleep(float(rng.uniform(0, 0.010)))
            return out

        monkeypatch.setattr(Engine, "_commit_memory", late)
    frames = []
    for i, c2w in enumerate(_walk_poses(world, clips)):
        frames += list(engine.generate_clip(c2w[None], spare_core=True if solo is None else bool(solo[i])))
    engine.settle()
    return frames, world


def _world_arrays(world: World) -> list[np.ndarray]:
    h = world.history
    return [*world.memory.to_arrays().values(), h.poses(),
            *[h.get_voxel_keys(i) for i in range(len(h))], *[h.get_depth(i) for i in range(len(h))]]


def test_updates_beside_the_next_clip_give_the_same_world_however_late_they_run(box_room, monkeypatch):
    fast, fast_world = _play(box_room, beside=True)
    slow, slow_world = _play(box_room, beside=True, slow_update=True, monkeypatch=monkeypatch)
    assert [f.frame_index for f in fast] == list(range(1, 31)) == [f.frame_index for f in slow]
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.depth_m, b.depth_m)
    for a, b in zip(_world_arrays(fast_world), _world_arrays(slow_world), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(fast_world.history) == 31  # every frame made is in the history once settled
    # the frames differ from those made in turn (each clip sees the memory one update late), not by much: the
    # fill that shows what a keyframe's update would add is anchored in the world
    in_turn, _ = _play(box_room, beside=False)
    diff = [np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() for a, b in zip(fast, in_turn, strict=True)]
    assert max(diff) < 8.0, diff


def test_clips_may_switch_between_updates_beside_and_in_turn(box_room, monkeypatch):
    """A server asks for each clip's update in turn while other worlds play (``generate_clip(spare_core=False)``):
    switching either way mid-walk loses no frame and no removal, and the same switches give the same world."""
    solo = np.random.default_rng(2).random(30) < 0.5
    a, a_world = _play(box_room, beside=True, solo=solo)
    b, b_world = _play(box_room, beside=True, solo=solo, slow_update=True, monkeypatch=monkeypatch)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.rgb, y.rgb)
    for x, y in zip(_world_arrays(a_world), _world_arrays(b_world), strict=True):
        np.testing.assert_array_equal(x, y)
    assert len(a_world.history) == 31
    # every clip in turn is the engine without updates beside the clips
    in_turn, in_turn_world = _play(box_room, beside=True, solo=np.zeros(30, bool))
    plain, plain_world = _play(box_room, beside=False)
    for x, y in zip(in_turn, plain, strict=True):
        np.testing.assert_array_equal(x.rgb, y.rgb)
    for x, y in zip(_world_arrays(in_turn_world), _world_arrays(plain_world), strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_next_clip_reads_the_memory_before_the_update_and_a_failed_update_surfaces(box_room, monkeypatch):
    rgb, depth = box_room(CAM, np.eye(4))
    world = World.from_rgbd(rgb, depth, CAM)
    seen = []
    generator = GeometricGenerator(GeometricConfig(fill="layout"))
    original = GeometricGenerator.generate_frames

    def recording(self, request):
        seen.append((request.memory, request.memory.num_points, world.memory.num_points))
        return original(self, request)

    monkeypatch.setattr(GeometricGenerator, "generate_frames", recording)
    engine = Engine(world, generator, EngineConfig(clip=PLAY_CLIPS, keyframe_stride=4, commit_beside_next_clip=True))
    poses = _walk_poses(world, 9)
    for c2w in poses[:8]:
        list(engine.generate_clip(c2w[None]))
    # from the second clip on the clip reads a frozen view of the world's memory
    assert seen[0][0] is world.memory and all(m is not world.memory and m.origin is world.memory for m, *_ in seen[1:])
    assert engine.frame_memory is not world.memory and len(world.history) == 8  # the last clip's frame: pending
    assert engine.next_frame_index == 9
    engine.settle()
    assert engine.frame_memory is world.memory and len(world.history) == 9

    def failing(self, *args, **kwargs):
        raise RuntimeError("update failed")

    monkeypatch.setattr(Engine, "_commit_memory", failing)
    list(engine.generate_clip(poses[8][None]))  # its update fails on the commit thread ...
    with pytest.raises(RuntimeError, match="update failed"):
        engine.settle()  # ... and whoever settles it learns so
    assert engine.frame_memory is world.memory and not world.memory.hold_in_place_resorts


def test_only_a_generator_that_allows_it_gets_its_updates_beside_the_next_clip(box_room):
    """A generator that reads the preceding frames (or whose poses the update refines) needs each update done
    before the next clip: the engine runs them so, as ``EngineConfig.commit_beside_next_clip`` says; an update that
    repaints remembered points is refused."""
    from spatia.world.generator import GeneratorCapabilities

    class ReadsPreceding(GeometricGenerator):
        capabilities = GeneratorCapabilities(uses_preceding_clip=True, exact_poses=True)

    rgb, depth = box_room(CAM, np.eye(4))
    world = World.from_rgbd(rgb, depth, CAM)
    assert commits_beside_next_clip(GeometricGenerator()) and not commits_beside_next_clip(ReadsPreceding())
    engine = Engine(world, ReadsPreceding(), EngineConfig(clip=PLAY_CLIPS, commit_beside_next_clip=True))
    assert not engine.commits_beside
    list(engine.generate_clip(_walk_poses(world, 1)))
    assert engine.frame_memory is world.memory and len(world.history) == 2  # committed before the call returned
    with pytest.raises(InvalidInputError, match="integrate_observed"):
        EngineConfig(commit_beside_next_clip=True, update=UpdateConfig(integrate_observed=True))


def test_a_served_session_leaves_every_frame_in_the_world_and_edits_wait_for_the_update(tmp_path):
    """Served interactive play runs its updates beside the clips: an Edit in the middle of play sees the memory with
    every update done, and once the session ends the history holds every frame made, also after a restart."""
    from spatia.client.api import WorldClient
    from spatia.proto.spatia.v1 import world_pb2 as pb
    from spatia.server.config import ServerConfig
    from spatia.server.testing import running_server

    config = ServerConfig(data_dir=tmp_path, port=0)
    everywhere = pb.Region(sphere=pb.SphereRegion(center=pb.Vec3(x=0.0, y=0.0, z=0.0), radius_m=100))
    with running_server(config) as st, WorldClient(st.target, timeout_s=60) as client:
        client.create_scene("room", seed=0, width=64, height=48, world_id="w")
        with client.play("w", fps=30, encoding=pb.FRAME_ENCODING_RAW) as s:
            for _ in range(6):
                s.send(move_forward=1.0, yaw_rate_rad_s=0.5, dt_s=1 / 30)
                last = s.next_frame(timeout_s=60)
            edited = client.edit(pb.EditRequest(world_id="w", recolor=pb.RecolorEdit(region=everywhere,
                                                                                     color=pb.Color(g=255))))
            # the update in flight was done first: the edit saw every point the memory holds after it
            assert edited.points_affected == client.get_world("w").stats.memory_points > 0
            for _ in range(6):
                s.send(move_forward=1.0, dt_s=1 / 30)
                last = s.next_frame(timeout_s=60)
            last = (s.close(drain=True) or [last])[-1]
        assert client.get_world("w").stats.history_frames == last.frame_index + 1
    with running_server(config) as st, WorldClient(st.target, timeout_s=60) as client:
        assert client.get_world("w").stats.history_frames == last.frame_index + 1


def test_a_served_world_has_a_core_to_spare_only_while_no_other_world_plays(box_room, tmp_path, monkeypatch):
    """``WorldHost.clip_work`` tells each clip whether the process has a core to spare (``spare_core``: no other
    world in play, ``busy_worlds() <= 1``): the engine's request carries it to the generator (tiles ahead) and it
    decides whether the update runs beside the next clip."""
    from spatia.server.host import WorldHost

    rgb, depth = box_room(CAM, np.eye(4))
    world = World.from_rgbd(rgb, depth, CAM)
    busy = [1]
    host = WorldHost(world, tmp_path / "w", busy_worlds=lambda: busy[0])
    try:
        engine = host.open_engine(GeometricGenerator(GeometricConfig(fill="layout")),
                                  EngineConfig(clip=PLAY_CLIPS, keyframe_stride=4, commit_beside_next_clip=True))
        requests = []
        real = Engine._prepare

        def prepare(self, *args, **kwargs):
            request, views = real(self, *args, **kwargs)
            requests.append(request)
            return request, views

        monkeypatch.setattr(Engine, "_prepare", prepare)
        pattern = [1, 1, 2, 3, 1, 2]
        for count, c2w in zip(pattern, _walk_poses(world, len(pattern)), strict=True):
            busy[0] = count
            host.clip_work(engine, c2w[None], None, 0, lambda i, f: None)()
            assert (engine._pending is not None) == (count <= 1)  # an update beside the next clip, or in turn
        assert [r.spare_core for r in requests] == [c <= 1 for c in pattern]
    finally:
        host.close()
