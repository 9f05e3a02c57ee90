"""A served world's first clips load no numba kernel once the server has loaded them (``server.host``).

A process loads a kernel from numba's disk cache on its first call (3-15 ms each, more under numba's lock), and
a 640x360 layout world's first dozen clips were the first callers of ~75 kernels: its first frames took 60-170 ms
where steady play takes ~20. ``spatia serve`` now runs ``warm_kernels`` in its own process at start; these tests
check that nothing a world's first clips call is left out of it (the close-reference warp of the first clip, the
memory's background growth and re-sort) and that a world's first clip waits for a load in progress."""

from __future__ import annotations

import collections
import threading

import numba.core.dispatcher as nd
import numpy as np
import pytest


@pytest.fixture
def new_overloads(monkeypatch):
    """Every kernel signature added to any numba dispatcher while the test runs (a cache load or a compile), on
    any thread: (thread name, kernel name)."""
    added: list[tuple[str, str]] = []
    compile_ = nd.Dispatcher.compile

    def recording(self, sig):
        before = len(self.overloads)
        out = compile_(self, sig)
        if len(self.overloads) != before:
            added.append((threading.current_thread().name, f"{self.py_func.__module__}.{self.py_func.__name__}"))
        return out

    monkeypatch.setattr(nd.Dispatcher, "compile", recording)
    return added


def played_clips(engine, fps: float, clips: int):
    """A served session's clips: a first clip of 4 frames, then one-frame clips, walking forward while turning
    (play.py's walk) at ``fps``; yields after each clip."""
    from spatia.world.actions import Action, ActionIntegrator, ControlConfig

    walk = ActionIntegrator(engine.world.current_c2w, ControlConfig(fps=fps))
    for clip in range(clips):
        poses = []
        for _ in range(4 if clip == 0 else 1):
            walk.step(Action(move_forward=1.0, yaw_rate_rad_s=0.5, dt_s=1 / fps))
            poses.append(walk.c2w.copy())
        collections.deque(engine.generate_clip(np.asarray(poses)), maxlen=0)
        yield clip


def test_a_served_worlds_first_clips_load_no_kernel_after_warm_kernels(new_overloads):
    """As a server plays a new world: the server's play settings, a first clip of 4 frames then one-frame clips
    along play.py's walk, 640x360 (the memory grows and re-sorts in the background within these clips). Without
    ``load_play_kernels`` the first clip loaded the warp of the start frame (read-only depth) and the later clips
    ``skip_rows``, ``live_ids`` and the maintenance thread's kernels."""
    from spatia.model import make_generator
    from spatia.server.config import ServerConfig
    from spatia.server.host import warm_kernels
    from spatia.world.actions import ClipConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.memory import SpatialMemory
    from spatia.world.state import World

    warm_kernels(make_generator("geometric"))
    generator = make_generator("geometric", fill="layout")
    world = World.from_scene("room", 0, 640, 360)
    try:
        server = ServerConfig()
        engine = Engine(world, generator, EngineConfig(
            clip=ClipConfig(4, 6, 2), keyframe_stride=server.play_keyframe_stride,
            reuse_references_within=server.play_reuse_references_within,
            reuse_references_clips=server.play_reuse_references_clips))
        generator.wait_prepared(world.memory, 60.0)  # CreateWorld answers after the fit (server/service.py)
        del new_overloads[:]  # what world creation loads is not a frame's
        grew = resorted = False
        for _ in played_clips(engine, 30.0, 32):
            memory: SpatialMemory = world.memory
            grew |= memory._growth is not None
            resorted |= memory._ordering is not None
        memory._adopt_growth(wait=True)  # the maintenance jobs in flight run to the end
        if memory._ordering is not None:
            memory._ordering[0].result()
        assert grew and resorted, "the walk no longer reaches the background growth and re-sort: lengthen it"
        assert new_overloads == []
    finally:
        world.close()


def test_a_worlds_first_clip_waits_for_the_servers_kernel_load(tmp_path, monkeypatch):
    """``WorldHost.open_engine`` queues a wait on the world's thread while the server loads its kernels: the
    first clip then starts only once they are loaded; no load in progress (or a cold cache being compiled in the
    warm-up child), no wait."""
    from spatia.server import host as host_mod
    from spatia.world.generator import GeneratorCapabilities
    from spatia.world.state import World

    class NoGenerator:  # open_engine only builds the engine: nothing is generated here
        capabilities = GeneratorCapabilities()

    monkeypatch.setattr(host_mod, "_load_state", "idle")
    host = host_mod.WorldHost(World.from_scene("room", 0, 32, 24), tmp_path / "w")
    try:
        host.open_engine(NoGenerator(), host_mod.EngineConfig())
        assert host.executor.submit(lambda: 1).result(timeout=10) == 1  # no load in progress: no wait
        for state, waits in (("compiling", False), ("loading", True)):
            host._kernels_awaited = False
            host_mod._set_load_state(state)
            host.open_engine(NoGenerator(), host_mod.EngineConfig())
            clip = host.executor.submit(lambda: 2)
            if waits:
                with pytest.raises(TimeoutError):
                    clip.result(timeout=0.3)  # held behind the wait
                host_mod._set_load_state("done")
            assert clip.result(timeout=10) == 2
        host_mod._set_load_state("loading")
        host.open_engine(NoGenerator(), host_mod.EngineConfig())  # a later engine of the same world waits no more
        assert host.executor.submit(lambda: 3).result(timeout=10) == 3
    finally:
        host_mod._set_load_state("idle")
        host.executor.shutdown(wait=True)
        host.world.close()


def test_kernel_warm_up_loads_here_with_a_warm_cache_and_create_world_waits_for_it(monkeypatch):
    """With a warm cache ``spatia serve``'s warm-up starts no child and loads the kernels in this process; a
    CreateWorld's build waits until it is done (``server.builders.build_world``)."""
    from spatia.proto.spatia.v1 import world_pb2 as pb
    from spatia.server import builders, host as host_mod
    from spatia.server.config import Limits

    monkeypatch.setattr(host_mod, "_load_state", "idle")
    ran = threading.Event()
    release = threading.Event()

    def fake_warm(generator, *a, **k):  # the load itself is test_a_served_worlds_first_clips_... 's
        ran.set()
        release.wait(10)
        return {}

    monkeypatch.setattr(host_mod, "warm_kernels", fake_warm)
    monkeypatch.setattr(host_mod, "_cache_is_warm", lambda: True)
    frozen = []  # the objects are frozen once the kernels are loaded (not in this test process: recorded only)
    monkeypatch.setattr(host_mod, "freeze_startup_objects", lambda: frozen.append(release.is_set()) or 0)
    warm = host_mod.KernelWarmUp()
    try:
        assert ran.wait(10) and warm.child is None and warm.poll() is None
        request = pb.CreateWorldRequest(scene=pb.SceneSource(name="room", seed=0,
                                                             resolution=pb.Resolution(width=32, height=24)))
        built = []
        create = threading.Thread(target=lambda: built.append(builders.build_world(request, "w", Limits())))
        create.start()
        create.join(0.3)
        assert create.is_alive() and not built  # waits for the load
        release.set()
        create.join(10)
        assert built and warm.wait() == 0
        warm.thread.join(10)
        assert warm.poll() == 0 and frozen == [True]
    finally:
        release.set()
        host_mod._set_load_state("idle")
        for world, _ in built:
            world.close()


def test_kernel_warm_up_with_a_cold_cache_compiles_in_a_child_first_and_nobody_waits_for_it(monkeypatch):
    """A cold cache: the child compiles (here: a process that waits to be told to end) and nothing in this process
    waits meanwhile; once it has ended the kernels are loaded here; ``terminate`` stops the child and skips the load."""
    import subprocess
    import sys

    from spatia.server import host as host_mod

    monkeypatch.setattr(host_mod, "_load_state", "idle")
    loads = []
    monkeypatch.setattr(host_mod, "warm_kernels", lambda generator, *a, **k: loads.append(1) or {})
    monkeypatch.setattr(host_mod, "_cache_is_warm", lambda: False)
    monkeypatch.setattr(host_mod, "freeze_startup_objects", lambda: 0)  # (not this test process's objects)
    child_code = "import sys; sys.stdin.read()"  # runs until its stdin closes
    monkeypatch.setattr(host_mod, "_start_warm_child", lambda: subprocess.Popen(
        [sys.executable, "-c", child_code], stdin=subprocess.PIPE))
    try:
        warm = host_mod.KernelWarmUp()
        for _ in range(100):
            if warm.child is not None:
                break
            warm.thread.join(0.05)
        assert warm.child is not None and warm.poll() is None
        assert host_mod.wait_for_kernel_load(0.5)  # compiling in the child: no wait
        warm.child.stdin.close()  # the child is done
        warm.thread.join(30)
        assert loads == [1] and warm.poll() == 0 and host_mod._load_state == "done"

        warm = host_mod.KernelWarmUp()  # stopped while its child compiles
        for _ in range(100):
            if warm.child is not None:
                break
            warm.thread.join(0.05)
        warm.terminate()
        assert warm.wait(30) != 0
        warm.thread.join(30)
        assert loads == [1] and warm.poll() == 0
    finally:
        host_mod._set_load_state("idle")


def test_what_play_reaches_later_loads_no_kernel_after_warm_kernels(new_overloads, tmp_path, monkeypatch):
    """What a 640x360 session reached 3-9 s into play, each the first caller of a kernel that then loaded on the
    world's thread (or under numba's lock on another): the first autosave (the log's block kernels, ~45 ms), a
    keyframe's seen-through carve (4-88 ms), the history's depth codec, its index's merge of closed runs and a
    larger column table built on the maintenance thread. Reached here on a small world, through the same calls;
    the index's thresholds are lowered so that a few frames reach them."""
    from spatia.model import make_generator
    from spatia.server.host import warm_kernels
    from spatia.world import history
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World
    from spatia.world.worldlog import WorldLog

    warm_kernels(make_generator("geometric"))
    world = World.from_scene("room", 0, 160, 90)
    try:
        engine = Engine(world, make_generator("geometric"), EngineConfig(clip=ClipConfig(1, 2, 1)))
        walk = ActionIntegrator(world.current_c2w, ControlConfig(fps=30))
        for _ in range(4):
            walk.step(Action(move_forward=1.0, yaw_rate_rad_s=0.5, dt_s=1 / 30))
            collections.deque(engine.generate_clip(walk.c2w[None]), maxlen=0)
        world.history.flush()  # the frames encoded (the encoder thread's first frames are a world's first)
        del new_overloads[:]

        log = WorldLog(tmp_path / "log")  # the first autosave: the copy, then the write
        try:
            log.write(log.prepare_save(world))
        finally:
            log.close()

        memory, K, pose = world.memory, world.intrinsics, walk.c2w
        render = memory.render(K, pose, return_point_ids=True)
        ids = render.point_ids[render.valid]
        nearer = np.where(render.valid, render.depth_m * 0.5, 0.0).astype(np.float32)
        memory.remove_invented_seen_through(ids, K, pose, nearer, 0.05)

        depth = np.full((90, 160), 2.5, np.float32)
        config = history.HistoryConfig()
        stored = history._encode_depth(depth, config)
        history._decode_depth(stored, config.depth_codec, 160, 90, "frame")

        monkeypatch.setattr(history, "TABLE_AHEAD_MIN_SLOTS", 1 << 10)
        built = []  # whether each column table was built from read-only keys (the maintenance thread's)
        column_table = history._column_table
        monkeypatch.setattr(history, "_column_table",
                            lambda keys, bits: (built.append(not keys.flags.writeable), column_table(keys, bits))[1])
        index = history.VoxelSetIndex(tail_runs=4)
        for f in range(40):  # voxels seen every other frame (runs close, then merge) and new ones (the table fills)
            seen = np.arange(64) if f % 2 == 0 else np.arange(64, 128)
            index.add(np.concatenate([seen, np.arange(1000 + 16 * f, 1016 + 16 * f)]).astype(np.int64))
        if index._table_job is not None:
            index._table_job[0].result()
        assert True in built, "no column table was prepared on the maintenance thread"
        assert len(index._sealed_starts), "no closed runs were merged"
        assert new_overloads == []
    finally:
        world.close()


def test_an_outdoor_worlds_first_clips_load_no_kernel_after_warm_kernels(new_overloads):
    """The courtyard's first clips reach what the room's do not: the layout fill's world points of its free-space
    test and the seen-through carve with a read-only view depth (each loaded on the world's thread, 4-8 ms, in
    four-session served play before warm_kernels covered them)."""
    from spatia.model import make_generator
    from spatia.server.host import warm_kernels
    from spatia.world.actions import ClipConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    warm_kernels(make_generator("geometric"))
    generator = make_generator("geometric", fill="layout")
    world = World.from_scene("courtyard", 2, 160, 90)
    try:
        engine = Engine(world, generator, EngineConfig(clip=ClipConfig(4, 6, 2), keyframe_stride=4))
        generator.wait_prepared(world.memory, 60.0)
        del new_overloads[:]
        collections.deque(played_clips(engine, 10.0, 6), maxlen=0)
        assert new_overloads == []
    finally:
        world.close()
