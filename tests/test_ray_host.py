"""``spatia serve --ray`` on a real local Ray (issue 12): each world in a named actor in another process, frames
streamed per clip, the controller lease across front doors, epochs, a killed actor, placement, backpressure.

One Ray for the whole file (``ray.init(num_cpus=2, include_dashboard=False)``, never local mode), shut down at
the end: the front doors first (their Play graphs torn down), then the detached world actors, then Ray. Two front
doors (two ``WorldServer``s in this process) share the Ray and one data dir, as two front doors on two machines
share a cluster and its shared data dir.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from spatia.client.api import WorldClient, WorldServiceError  # noqa: E402
from spatia.server.cluster import (  # noqa: E402
    ClusterCheckError, ClusterOptions, check_report, ensure_sentinel, project_version,
)
from spatia.server.config import Limits, ServerConfig  # noqa: E402
from spatia.server.testing import running_server  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")

W, H = 64, 48
TTL_S = 4.0  # renewed every TTL_S / 3; 2 s expired under a loaded 2-core machine (a late renewal is no bug)


@pytest.fixture(scope="module")
def ray_local(ray_tests_lock):
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        from spatia.server.ray_host import kill_world_actors

        try:
            kill_world_actors()
        finally:  # nothing of this process may call into Ray after this: Ray ends a process that does
            ray.shutdown()


def _config(data_dir, **cluster) -> ServerConfig:
    opts = dict(world_cpus=0.25, lease_ttl_s=TTL_S, idle_exit_s=None, placement_timeout_s=60.0,
                stats_interval_s=0.5)
    opts.update(cluster)
    return ServerConfig(data_dir=data_dir, port=0, limits=Limits(max_sessions=4), cluster=ClusterOptions(**opts),
                        save_interval_s=0.0)


@pytest.fixture(scope="module")
def doors(ray_local, tmp_path_factory):
    """Two front doors over one data dir and one Ray; world 'a' created through the first."""
    data_dir = tmp_path_factory.mktemp("shared")
    with running_server(_config(data_dir)) as one, running_server(_config(data_dir)) as two:
        with WorldClient(one.target, timeout_s=120) as c:
            c.create_scene("room", seed=0, width=W, height=H, world_id="a")
        yield one, two


def _step(s, timeout_s: float = 60.0):
    s.send(move_forward=1.0, dt_s=2 / 16)
    return s.next_frame(timeout_s=timeout_s)


def _host(door, world_id):
    return door.server.store.get(world_id)


def test_a_world_plays_from_its_actor_in_another_process(doors):
    one, _ = doors
    host = _host(one, "a")
    assert host.actor_pid and host.actor_pid != os.getpid()
    actor = ray.get_actor("world:a", namespace="spatia")
    assert ray.get(actor.pid.remote()) == host.actor_pid
    assert ray.get(actor.where.remote())["numba_threads"] == 1  # follows world_cpus=0.25 (at least 1)
    with WorldClient(one.target, timeout_s=60) as c:
        before = c.get_world("a").stats.clips_generated
        with c.play("a", record=False, width=2 * W, height=2 * H, jpeg_quality=70) as s:
            f = _step(s)
            assert f.rgb.shape == (2 * H, 2 * W, 3)  # resized and JPEG-encoded in the actor, decoded here
            assert f.rgb.std() > 5  # the room, not a blank frame
            assert c.get_world("a").controlled
        info = c.get_world("a")
        assert not info.controlled
        assert info.stats.clips_generated > before


def test_a_play_session_on_a_ray_host_collides_with_the_actors_memory(doors):
    """The memory lives in the actor; the front door's session sweeps moves against a copy of the points around the
    camera (taken at the claim, renewed with clips): W held (sprinting) from the room's first camera (z = 1 m) stops
    short of the back wall (observed, z = 6.48 m for seed 0), and the frames say so (``Frame.collided``)."""
    one, _ = doors
    with WorldClient(one.target, timeout_s=120) as c:
        c.create_scene("room", seed=0, width=W, height=H, world_id="bump")
        with c.play("bump", record=False, fps=16, clip=(1, 2, 1), max_pending_frames=64) as s:
            frames = []
            for _ in range(64):  # each key's frame before the next key: a loaded machine (or the actor compiling
                # its kernels) may take seconds for a clip, and a burst faster than clips waits at the copy's edge
                seq = s.send(move_forward=1.0, sprint=True, dt_s=1 / 16)
                while not frames or frames[-1].last_action_seq < seq:
                    frames.append(s.next_frame(timeout_s=60))

    flags = [f.collided for f in frames]
    z = [round(float(f.c2w[2, 3]), 3) for f in frames]
    assert flags[0] is False and flags[-1] is True, (flags, z)
    assert all(flags[flags.index(True):]), (flags, z)
    # short of the wall by the body (observed points) or by the clearance of invented points the fill put in front
    # of it (which clips they come from depends on timing), never through it
    assert 4.5 < z[-1] < 6.48, z


def test_a_second_front_door_serves_the_same_actor(doors):
    one, two = doors
    assert _host(two, "a").actor_pid == _host(one, "a").actor_pid  # found by name, not a second actor
    with WorldClient(two.target, timeout_s=60) as c:
        c.create_scene("room", seed=1, width=W, height=H, world_id="b")  # created through the second door
        with c.play("a", record=False) as s:
            assert _step(s).rgb.shape == (H, W, 3)
    with WorldClient(one.target, timeout_s=60) as c:
        deadline = time.monotonic() + 20
        while "b" not in [w.world_id for w in c.list_worlds()] and time.monotonic() < deadline:
            time.sleep(0.2)  # the first door's poller finds worlds the other door created
        assert "b" in [w.world_id for w in c.list_worlds()]
        assert c.get_world("b").stats.memory_points > 0
    with WorldClient(two.target, timeout_s=60) as c:
        c.delete_world("b")  # deleted through the second door: the first answers NOT_FOUND at once
    with WorldClient(one.target, timeout_s=60) as c, pytest.raises(WorldServiceError) as gone:
        c.render("b", np.eye(4))
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


def _until_graph(door, world_id, session, timeout_s: float = 60.0):
    """Step ``session`` (lock-step) until the door's compiled Play graph for the world answers (or fails);
    returns the graph. Its first clips take streaming calls meanwhile."""
    assert _step(session) is not None  # the first clip opens the graph (compiled in the background)
    host = _host(door, world_id)
    assert host._graph is not None
    deadline = time.monotonic() + timeout_s
    while True:  # (a graph that failed to start in a retryable way is replaced after the next clip)
        graph = host._graph
        if graph.ready or (graph.failed and not graph.retryable) or time.monotonic() > deadline:
            return graph
        assert _step(session) is not None


def test_one_controller_across_front_doors_and_the_lease_expires(doors, monkeypatch):
    """Also the compiled Play graph (the default) across a take-over: the old session's graph was running on the
    actor; the new session's claim ends it there, so the new door's graph starts (it used to wait behind the old
    one for good), and the old session's next clip falls back to a streaming call, which is refused."""
    from spatia.server import ray_host

    monkeypatch.setattr(ray_host, "GRAPH_IDLE_S", 60.0)  # the old door's graph stays open, as a dead door's does
    one, two = doors
    with WorldClient(one.target, timeout_s=60) as c1, WorldClient(two.target, timeout_s=60) as c2:
        s1 = c1.play("a", record=False, lockstep=True)
        old_graph = _until_graph(one, "a", s1)
        assert old_graph.ready, "the first door's Play graph did not start"
        assert _step(s1) is not None  # a clip through the graph
        with pytest.raises(WorldServiceError) as refused:
            c2.play("a", record=False)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "one controller" in refused.value.message
        # the first door "dies": it stops renewing (its session idles; nothing else renews the lease)
        _host(one, "a").stop_renewing()
        time.sleep(TTL_S * 1.5)
        with c2.play("a", record=False, lockstep=True) as s2:  # the expired lease is taken over
            t0 = time.monotonic()
            new_graph = _until_graph(two, "a", s2, timeout_s=45)
            assert new_graph.ready and not new_graph.failed, \
                f"the new door's graph did not start in {time.monotonic() - t0:.0f} s (the old one still runs?)"
            assert _step(s2) is not None  # through the new graph
            s1.send(move_forward=1.0, dt_s=2 / 16)  # the old session's next clip is refused
            with pytest.raises(WorldServiceError) as lost:
                while s1.next_frame(timeout_s=60) is not None:
                    pass
            assert lost.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "no longer holds the controller lease" in lost.value.message
            assert old_graph.failed and not old_graph.start_failed  # lost (ended by the actor), not broken
            assert _step(s2) is not None and new_graph.ready  # the new graph goes on
        s1.close(drain=False)
    assert not _host(one, "a")._graph_failed  # a later session through the first door may open a graph again


def test_a_front_door_that_exits_with_a_graph_open_leaves_the_world_actor_running(doors, tmp_path):
    """Ray's exit hook (``ray.shutdown``) tears open compiled graphs down by killing their actors: a front door
    process that exits (here: an exception) while a session's graph is open must not take the world actor, which
    other front doors share, down with it (``ray_host._close_graphs_at_exit``)."""
    import subprocess
    import sys

    _, two = doors
    actor = ray.get_actor("world:a", namespace="spatia")
    pid = ray.get(actor.pid.remote(), timeout=60)
    script = f"""
import time
import ray
ray.init(address={ray.get_runtime_context().gcs_address!r}, log_to_driver=False)
from spatia.server.ray_host import _PlayGraph
actor = ray.get_actor("world:a", namespace="spatia")
ray.get(actor.claim.remote("exit-door"), timeout=60)
for attempt in range(5):  # a retryable start failure (the actor still closing an earlier graph) is retried
    graph = _PlayGraph(actor, "a", "exit-door")
    while not (graph.ready or graph.failed):
        time.sleep(0.05)
    if graph.ready or not graph.retryable:
        break
    time.sleep(0.25 * 2 ** attempt)
print("ready" if graph.ready else "failed", flush=True)
ray.get(actor.release.remote("exit-door"), timeout=60)
raise RuntimeError("the front door fails with its graph open")
"""
    err = tmp_path / "door.err"
    with open(err, "w") as err_file:
        door = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=err_file, text=True,
                              timeout=240)
    # (the graph thread's "play graph ready" log line, on stdout too, may come before or after)
    assert "ready" in door.stdout.splitlines(), door.stdout[-2000:] + err.read_text()[-3000:]
    assert door.returncode == 1
    assert ray.get(actor.pid.remote(), timeout=60) == pid  # the same actor, alive
    with WorldClient(two.target, timeout_s=60) as c, c.play("a", record=False) as s:
        assert _step(s) is not None


def test_a_killed_front_door_leaves_no_graph_running_on_the_actor(doors, tmp_path):
    """A front door in another process claims world 'a', opens a compiled Play graph to its actor and is
    killed (SIGKILL: no teardown, no release). Once its lease expires, a session through another door claims the
    world, the actor ends the dead door's graph loop, and the new session's graph starts."""
    import signal
    import subprocess
    import sys

    _, two = doors
    script = f"""
import os, time, traceback
import ray
from ray.dag import InputNode
ray.init(address={ray.get_runtime_context().gcs_address!r}, log_to_driver=False)
actor = ray.get_actor("world:a", namespace="spatia")
ray.get(actor.claim.remote("dead-door"), timeout=60)
for attempt in range(5):  # a graph opened while the actor still closes the previous one's channels fails: retry
    dag = None
    try:
        with InputNode() as inp:
            node = actor.play_step.bind(inp)
        dag = node.experimental_compile()
        print(ray.get(dag.execute(("ping", "dead-door")), timeout=60), flush=True)
        break
    except Exception:
        traceback.print_exc()
        if dag is not None:
            dag.teardown()
        time.sleep(0.25 * 2 ** attempt)
else:
    os._exit(1)  # not through ray's exit hook: it tears open graphs down by killing their actors
time.sleep(300)
"""
    err = tmp_path / "door.err"
    with open(err, "w") as err_file:
        door = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=err_file, text=True)
    try:
        line = door.stdout.readline().strip()
    finally:
        door.send_signal(signal.SIGKILL)
        door.wait(timeout=30)
    assert line == "pong", err.read_text()[-3000:]  # its graph runs on the actor
    with WorldClient(two.target, timeout_s=60) as c:
        deadline = time.monotonic() + TTL_S * 4
        while True:  # the dead door's lease holds until it expires
            try:
                s = c.play("a", record=False, lockstep=True)
                break
            except WorldServiceError as exc:
                assert exc.code == grpc.StatusCode.FAILED_PRECONDITION and time.monotonic() < deadline, exc
                time.sleep(0.5)
        with s:
            graph = _until_graph(two, "a", s, timeout_s=45)
            assert graph.ready and not graph.failed, "the dead door's graph loop still holds the actor"
            f = _step(s)
            assert f is not None and f.rgb.std() > 5  # the room, through the new graph


def test_a_killed_actor_ends_play_with_unavailable_and_the_next_call_restarts_it(doors):
    """Killed under a session playing through its compiled graph (the default path), then under a session before its
    first clip (a streaming call: the graph opens after the first clip). Never during a graph's compile (the earlier
    sessions' graphs are torn down first, and the first kill waits for the session's graph to answer): killed then,
    Ray 2.60's own monitor thread fails on the half-made graph (an ``AttributeError`` in its thread), which the front
    door then tears down itself (``ray_host._retire``)."""
    from spatia.server.ray_host import close_play_graphs, kill_world_actors

    one, _ = doors
    assert close_play_graphs() == 0  # the earlier tests' sessions' graphs, torn down
    # a front door of its own that saves after every clip, before the next (the world restarts from its last clip):
    # ``save_interval_s=0`` alone spaces saves 20x their cost apart (``save_max_duty``), and under a running graph a
    # killed world once came back with 62 % of the points it had shown
    strict = replace(_config(one.config.data_dir), save_max_duty=1.0)
    with running_server(strict) as door, WorldClient(door.target, timeout_s=60) as c:
        s = c.play("a", record=False, lockstep=True)
        graph = _until_graph(door, "a", s)
        assert graph.ready, "the session's Play graph did not start"
        saved_points = c.get_world("a").stats.memory_points
        old_pid = _host(door, "a").actor_pid
        ray.kill(ray.get_actor("world:a", namespace="spatia"))
        with pytest.raises(WorldServiceError) as died:
            for _ in range(20):
                if _step(s) is None:
                    break
        assert died.value.code == grpc.StatusCode.UNAVAILABLE
        assert "actor died" in died.value.message
        s.close(drain=False)
        info = c.get_world("a")  # the next call restarts the actor from the last snapshot
        new = _host(door, "a")
        assert new.actor_pid != old_pid and not new.dead
        assert info.stats.memory_points >= saved_points * 0.9  # saved after every clip (``strict``)
        with c.play("a", record=False) as s:
            assert _step(s) is not None
        s = c.play("a", record=False)
        assert kill_world_actors(["a"]) == 1  # (the last session's graph, maybe still compiling, torn down first)
        with pytest.raises(WorldServiceError) as died:
            _step(s)
        assert died.value.code == grpc.StatusCode.UNAVAILABLE
        assert "actor died" in died.value.message
        s.close(drain=False)
        assert c.get_world("a").stats.memory_points >= saved_points * 0.9  # restarted again


def test_a_graph_compiled_in_part_is_torn_down_by_its_session(doors, monkeypatch):
    """A Play graph whose compile fails after Ray made it in part (the actor's loop started, its driver-side
    channels not yet: what an actor dying during the compile leaves) is torn down at once by the session's graph
    thread (``ray_host._compiled_dag_of``, ``_retire``): the actor's loop ends while the session still runs, and
    nothing is left for a garbage collector's ``__del__``. Ray keeps no handle to such a graph, and its own teardown
    fails on it (an ``AttributeError`` on the missing channels)."""
    import gc
    import logging

    from ray.dag.compiled_dag_node import CompiledDAG

    from spatia.server import ray_host

    real = CompiledDAG._get_or_compile
    made = []

    def in_part(self):
        real(self)  # the loop runs on the actor; Ray's monitor thread watches it
        made.append(self)
        self._dag_submitter = self._dag_output_fetcher = None  # as before Ray makes them
        raise RuntimeError("injected: the compile stops half-way")

    def loops() -> int:
        return ray.get(actor.__ray_call__.remote(lambda _: len(ray_host.running_graph_loops())), timeout=30)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    ray_log = logging.getLogger("ray.dag.compiled_dag_node")
    ray_log.addHandler(handler)
    monkeypatch.setattr(CompiledDAG, "_get_or_compile", in_part)
    one, _ = doors
    actor = ray.get_actor("world:a", namespace="spatia")
    try:
        with WorldClient(one.target, timeout_s=60) as c, c.play("a", record=False, lockstep=True) as s:
            graph = _until_graph(one, "a", s)
            assert made and graph.failed and graph.dag is None
            deadline = time.monotonic() + 30
            while loops() and time.monotonic() < deadline:  # cancelled by the session's graph thread
                time.sleep(0.2)
            assert loops() == 0, "the graph's loop still runs on the actor"
            assert made[0]._is_teardown
            assert _step(s) is not None  # the session goes on, through streaming calls
        del made[:]
        gc.collect()
        assert not [r for r in records if "destructed before teardown" in r.getMessage()]
    finally:
        ray_log.removeHandler(handler)
        _host(one, "a")._graph_failed = False  # (this door's later sessions on 'a' may open graphs again)


def test_a_world_actors_channel_buffers_never_share_an_object_id(doors):
    """A graph's compile has the world actor make its channels' buffers through ``__ray_call__`` (a put). On an
    async actor with other calls in flight, Ray 2.60 ran such calls with the nil task id, so buffers got one object
    id, and a second graph's buffer made while the first's was held aborted the actor (``Check failed:
    AddOwnedObjectInternal``, the Ray tests' intermittent crash: docs/BENCHMARKS.md session 30). The actor puts them
    on a thread of its own (``ray_host.channel_puts_off_fibers``): every id is its own. Without it: 67 of 160
    such puts had the nil task id (``benchmarks/ray_channel_puts.py``). The buffers are dropped at once here, so
    the old behaviour fails this test without crashing the actor."""

    def buffer_id(self) -> str:
        from ray.experimental.channel import shared_memory_channel as smc

        return smc._create_channel_ref(self, 1000).hex()

    one, _ = doors
    actor = ray.get_actor("world:a", namespace="spatia")
    ids = []
    for _ in range(10):  # four at once, with async calls beside, as a compile's overlapping other calls
        beside = [actor.where.remote() for _ in range(4)]
        ids += ray.get([actor.__ray_call__.remote(buffer_id) for _ in range(4)], timeout=60)
        ray.get(beside, timeout=60)
    assert len(ids) == 40
    assert not [i for i in ids if i.startswith("f" * 48)], "a buffer put with the nil task id"
    assert len(set(ids)) == len(ids)


def test_a_replaced_actors_snapshot_write_is_refused(doors, tmp_path):
    from spatia.server.ray_host import next_epoch

    one, _ = doors
    host = _host(one, "a")
    old_epoch = host.epoch
    with WorldClient(one.target, timeout_s=60) as c:
        next_epoch(one.config.data_dir, "a")  # what a newer incarnation (say, on the other side of a partition) does
        from spatia.proto.spatia.v1 import world_pb2 as pb

        req = pb.EditRequest(world_id="a", recolor=pb.RecolorEdit(
            region=pb.Region(sphere=pb.SphereRegion(center=pb.Vec3(), radius_m=0.5)), color=pb.Color(r=255)))
        with pytest.raises(WorldServiceError) as stale:
            c.edit(req)  # an edit saves before it answers
        assert stale.value.code == grpc.StatusCode.ABORTED
        assert f"epoch {old_epoch}" in stale.value.message and "refused" in stale.value.message
    ray.kill(host.actor)  # the stale actor goes; the next call starts a fresh one with the newest epoch
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(host.actor.pid.remote(), timeout=5)
            time.sleep(0.1)
        except ray.exceptions.RayActorError:
            break
    host.dead = True
    assert _host(one, "a").epoch > old_epoch


def test_generate_backpressure_pauses_the_actor_for_a_slow_client(doors):
    """The front door's proxy with a sink that blocks (the servicer's sink blocks while its client is behind):
    the actor stops within its stream's backpressure window, then finishes once the sink takes frames again."""
    import asyncio
    import threading

    from spatia.world.actions import ClipConfig
    from spatia.world.engine import EngineConfig

    one, _ = doors
    n = 40
    c2w = np.repeat(np.eye(4)[None], n, 0)
    c2w[:, 2, 3] = np.linspace(0, 0.4, n)  # world frame, walking forward
    gate, first = threading.Event(), threading.Event()
    got = []

    def slow_sink(i, frame) -> bool:
        got.append(i)
        first.set()
        gate.wait(60)
        return True

    async def scenario():
        host = one.server.store.get("a")
        host.claim("backpressure")
        try:
            await host.generate(host.open_engine(None, EngineConfig(clip=ClipConfig(4, 4, 0))), c2w, None, 0,
                                slow_sink)
        finally:
            host.release("backpressure")

    before = _frames_generated(one, "a")
    done = asyncio.run_coroutine_threadsafe(scenario(), one.loop)
    assert first.wait(60)
    time.sleep(3.0)  # the sink holds its first frame
    ahead = _frames_generated(one, "a") - before
    assert ahead <= 12, f"the actor ran {ahead} frames ahead of a sink that took one"
    gate.set()
    done.result(timeout=120)
    assert got == list(range(n))
    assert _frames_generated(one, "a") - before == n


def _frames_generated(door, world_id):
    host = _host(door, world_id)
    return ray.get(host.actor.where.remote())["stats"]["frames_generated"]


def test_a_world_that_cannot_be_placed_answers_resource_exhausted(ray_local, tmp_path):
    with running_server(_config(tmp_path, world_cpus=64, placement_timeout_s=3.0)) as door:
        with WorldClient(door.target, timeout_s=60) as c:
            t0 = time.monotonic()
            with pytest.raises(WorldServiceError) as full:
                c.create_scene("room", seed=0, width=W, height=H, world_id="huge")
            assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "could not be placed within 3 s" in full.value.message
            assert time.monotonic() - t0 < 30
            assert [w.world_id for w in c.list_worlds()] == []  # all-or-nothing
    assert not (tmp_path / "worlds" / "huge").exists()


def test_every_node_is_checked_for_the_data_dir_and_the_version(ray_local, tmp_path):
    from spatia.server.cluster import check_nodes

    reports = check_nodes(tmp_path)
    assert reports and all(r["version"] == project_version() for r in reports)
    token = ensure_sentinel(tmp_path)
    good = {"host": "n2", "sentinel": token, "version": project_version()}
    check_report(good, "n2", token, project_version(), tmp_path)
    with pytest.raises(ClusterCheckError, match="does not see this data dir"):
        check_report({**good, "sentinel": "<unreadable: No such file or directory>"}, "n2", token,
                     project_version(), tmp_path)
    with pytest.raises(ClusterCheckError, match="runs spatia 0.0.9"):
        check_report({**good, "version": "0.0.9+abc"}, "n2", token, project_version(), tmp_path)


def test_an_idle_actor_saves_and_exits_and_its_next_call_restarts_it(ray_local, tmp_path):
    with running_server(_config(tmp_path, idle_exit_s=1.0)) as door:
        with WorldClient(door.target, timeout_s=120) as c:
            c.create_scene("room", seed=0, width=W, height=H, world_id="idle")
            with c.play("idle", record=False) as s:
                assert _step(s) is not None
            frames = c.get_world("idle").stats.history_frames
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    ray.get_actor("world:idle", namespace="spatia")
                    time.sleep(0.2)
                except ValueError:  # the name is gone: the actor exited
                    break
            else:
                pytest.fail("the idle world actor did not exit")
            assert "idle" in [w.world_id for w in c.list_worlds()]  # still a world (on disk)
            with c.play("idle", record=False) as s:  # the actor starts again, transparently, from its snapshot
                assert s.started.world.stats.history_frames == frames
                assert _step(s) is not None
            assert _host(door, "idle").epoch == 2


def test_a_world_actor_loads_its_kernels_at_start_when_the_server_warms_them(ray_local, tmp_path):
    """``spatia serve --ray`` warms kernels (``ServerConfig.warm_kernels``): each world actor's process loads them
    itself at start, as the embedded server does, so its first clips do not (``KernelWarmUp``); off: it loads none."""
    for warm in (False, True):
        world_id = f"warm{int(warm)}"
        with running_server(replace(_config(tmp_path / world_id), warm_kernels=warm)) as door:
            with WorldClient(door.target, timeout_s=120) as c:
                c.create_scene("room", seed=0, width=W, height=H, world_id=world_id)
                actor = ray.get_actor(f"world:{world_id}", namespace="spatia")
                deadline = time.monotonic() + 90
                while (state := ray.get(actor.where.remote(), timeout=60)["kernel_load"]) in ("loading", "compiling"):
                    assert time.monotonic() < deadline, "the actor's kernel load did not end"
                    time.sleep(0.5)
                assert state == ("done" if warm else "idle")
                with c.play(world_id, record=False) as s:
                    assert _step(s) is not None


def test_the_ray_flag_and_the_cluster_options_are_checked():
    import argparse

    from spatia import cmd_serve
    from spatia.world.errors import InvalidInputError

    def resolve(*argv):
        parser = argparse.ArgumentParser()
        cmd_serve.add_parser(parser.add_subparsers())
        return cmd_serve.resolve(parser.parse_args(["serve", *argv]), {})

    assert resolve()["ray"] is None  # no --ray: in-process hosts
    assert resolve("--ray")["ray"] == "local"
    assert resolve("--ray", "auto", "--world-gpus", "1")["world_gpus"] == 1.0
    assert resolve("--ray", "ray://head:10001")["ray"] == "ray://head:10001"
    with pytest.raises(SystemExit):
        resolve("--ray", "nowhere")
    with pytest.raises(InvalidInputError, match="SPATIA_WORLD_CPUS"):
        cmd_serve.resolve(argparse.Namespace(config=None), {"SPATIA_WORLD_CPUS": "0"})
    assert ClusterOptions().gpus_for("spatia") == 1.0 and ClusterOptions().gpus_for("geometric") == 0.0
    with pytest.raises(InvalidInputError, match="world_cpus"):
        ClusterOptions(world_cpus=0)
    with pytest.raises(InvalidInputError, match="host_kind"):
        ClusterOptions(host_kind="tpu")


def test_a_client_that_stops_reading_never_stalls_the_actor(doors):
    """Play: the front door drains each clip's stream at once into the latest-wins outbox, so a client that reads
    nothing for seconds costs dropped frames, never a stalled actor (nor object refs piling up)."""
    import queue
    import threading

    from spatia.client.api import action_message, play_start
    from spatia.proto.spatia.v1 import world_pb2 as pb
    from spatia.proto.spatia.v1 import world_pb2_grpc as pb_grpc

    one, _ = doors
    requests: queue.Queue = queue.Queue()
    requests.put(pb.PlayRequest(start=play_start("a", width=640, height=480, fps=20.0, record=False)))
    stop = threading.Event()

    def request_iter():
        while (item := requests.get()) is not None:
            yield item

    def send_actions():
        seq = 0
        while not stop.is_set():
            seq += 1
            requests.put(pb.PlayRequest(action=action_message(seq, move_forward=0.3, yaw_rate_rad_s=0.5,
                                                              dt_s=0.05)))
            time.sleep(0.05)

    # no BDP probing: the client's receive window stays small, so unread frames back up into the server
    channel = grpc.insecure_channel(one.target, options=[("grpc.http2.bdp_probe", 0)])
    call = pb_grpc.WorldServiceStub(channel).Play(request_iter())
    try:
        assert next(call).HasField("started")
        sender = threading.Thread(target=send_actions, daemon=True)
        sender.start()
        time.sleep(2.0)  # the client reads nothing from here on
        before = _frames_generated(one, "a")
        time.sleep(4.0)
        generated = _frames_generated(one, "a") - before
        session = next(iter(one.server.servicer._play.values()))
        assert generated >= 15, f"the actor generated only {generated} frames while the client did not read"
        assert session.outbox.dropped > 0  # latest wins in the front door
        assert session.outbox.frames_queued <= one.config.limits.frame_queue
        assert not _host(one, "a")._tails or len(_host(one, "a")._tails) <= 1  # no clip streams left behind
    finally:
        stop.set()
        requests.put(None)
        call.cancel()
        channel.close()
    deadline = time.monotonic() + 30
    while one.server.servicer.sessions and time.monotonic() < deadline:
        time.sleep(0.1)


# ---- the Play lifecycle tests (tests/test_server_lifecycle.py) against a Ray front door, and what issue 12's second
# pass added: which node serves a world (ListWorlds, metrics aggregated from the actors), lookups and claims that
# never block the front door's event loop, a Play session through its compiled graph. The lifecycle tests imported
# at the end run with the ``server`` / ``client`` fixtures below: every way a Play session ends releases its world
# and its slot exactly once, the world in an actor in another process (those that patch ``WorldHost`` in this
# process do not apply). They share this file's Ray and the doors' data dir (world 'a'; 'b' again).

@pytest.fixture(scope="module")
def server(doors):
    """A third front door with ``max_sessions=1`` over the doors' data dir, worlds 'a' and 'b' (as the lifecycle
    tests expect)."""
    one, _ = doors
    config = _config(one.config.data_dir)
    config = replace(config, limits=Limits(max_sessions=1))
    with running_server(config) as st:
        with WorldClient(st.target, timeout_s=120) as c:
            if "b" not in [w.world_id for w in c.list_worlds()]:
                c.create_scene("room", seed=1, width=W, height=H, world_id="b")
        yield st


@pytest.fixture(scope="module")
def client(server):
    with WorldClient(server.target, timeout_s=60) as c:
        yield c


def test_list_worlds_and_metrics_name_the_node_serving_each_world(server, client):
    from spatia.server.metrics import ServerCollector

    node = ray.get_runtime_context().get_node_id()  # one local node: every actor runs on it
    with client.play("a", record=False) as s:
        s.send(move_forward=1.0, dt_s=2 / 16)
        assert s.next_frame(timeout_s=60) is not None
    infos = {w.world_id: w for w in client.list_worlds()}
    assert infos["a"].node_id == node and infos["b"].node_id == node
    assert client.get_world("a").node_id == node
    # metrics: the per-world numbers are the actors' own counters (refreshed by the front door's poller)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not server.server.stats()["worlds"]["a"].get("frames_generated"):
        time.sleep(0.1)
    assert server.server.stats()["worlds"]["a"]["frames_generated"] >= 1
    families = {f.name: f for f in ServerCollector(server.server).collect()}
    samples = {tuple(sorted(x.labels.items())): x.value for x in families["spatia_world_node"].samples}
    assert samples[(("node_id", node), ("world_id", "a"))] == 1.0
    frames = {x.labels["world_id"]: x.value for x in families["spatia_world_frames_generated"].samples}
    assert frames["a"] >= 1


def test_restarting_an_actor_never_blocks_the_front_doors_event_loop(server, client):
    """A call that has to start a world's actor again (placement, loading the snapshot: seconds) waits off the
    event loop: another RPC on the same front door answers meanwhile."""
    host = server.server.store.get("b")
    ray.kill(host.actor)
    host.dead = True  # as the proxy marks it when a call finds the actor gone
    done = threading.Event()
    started = time.monotonic()

    def restart():
        with WorldClient(server.target, timeout_s=120) as c:
            c.get_world("b")  # re-attaches: a new actor process loads the world
        done.set()

    t = threading.Thread(target=restart)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    assert "a" in [w.world_id for w in client.list_worlds()]
    answered_s = time.monotonic() - t0
    restarting = not done.is_set()
    t.join(timeout=120)
    restart_s = time.monotonic() - started
    assert restarting, f"the actor restarted in {restart_s:.2f} s, too fast to tell"
    assert answered_s < 0.5 * restart_s
    assert not server.server.store.get("b").dead


def test_a_play_session_streams_through_its_compiled_graph(server, monkeypatch):
    """``compiled_play`` (the default): the session's first clips take streaming calls while its graph compiles,
    then go through the graph (the same frames: the room); a session that plays nothing for ``GRAPH_IDLE_S`` has
    its graph closed (the actor's loop spins while one is open) and its next clip opens a new one; the graph is
    torn down when the session ends. Through a third front door on the same actors."""
    from spatia.server import ray_host

    data_dir = server.config.data_dir
    with running_server(_config(data_dir, compiled_play=True)) as st:  # a third front door on the same actors
        with WorldClient(st.target, timeout_s=120) as c:
            with c.play("a", record=False, lockstep=True) as s:
                host = _host(st, "a")
                assert host._graph is None  # opened at the session's first clip (Generate never opens one)
                graph = _until_graph(st, "a", s)
                assert graph.ready and not graph.failed
                before = c.get_world("a").stats.clips_generated
                seen = []
                for _ in range(3):
                    s.send(move_forward=0.3, yaw_rate_rad_s=0.3, dt_s=0.1)
                    f = s.next_frame(timeout_s=60)
                    assert f is not None and f.rgb.shape == (H, W, 3) and f.rgb.std() > 5  # the room
                    seen.append(f.session_frame)
                assert seen == sorted(seen) and len(set(seen)) == 3  # one frame per action, in order
                monkeypatch.setattr(ray_host, "GRAPH_IDLE_S", 0.3)  # the timer armed by the last clip (2 s) closes it
                deadline = time.monotonic() + TTL_S
                while host._graph is graph and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert host._graph is None and graph.closed, "the idle session's graph stayed open"
                monkeypatch.setattr(ray_host, "GRAPH_IDLE_S", 60.0)
                again = _until_graph(st, "a", s, timeout_s=30)  # the next clip opens a new graph
                assert again is not graph and again.ready and not again.failed
                f = _step(s)
                assert f is not None and f.rgb.std() > 5
                graph = again
            deadline = time.monotonic() + 10
            while host._graph is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert host._graph is None and graph.closed  # torn down with the session
            info = c.get_world("a")
            assert not info.controlled and info.stats.clips_generated >= before + 3



def test_retryable_graph_failures_count_in_a_row(server, monkeypatch):
    """A session may reopen its graph ``GRAPH_ATTEMPTS`` times in a row after retryable start failures (a channel
    closed under a new graph); a graph that answered resets the count, so the graph reopened after an idle close
    gets its retries too (CI once saw two failures at the first open and one after the idle close, and the session
    stayed on streaming calls for good). Compile failures injected: the first two graphs of the session and the
    first after the idle close. Real retryable failures may come on top (the actor still closing an earlier graph's
    channels: CI saw one at either open) and are retried the same way. Each reopen waits a back-off that doubles
    per failure in a row (CI later saw three reopens 0.15 s apart after an idle close all find the actor still
    closing the old graph's channels)."""
    from spatia.server import ray_host

    compiles = []  # monotonic start time of each compile
    real_failures = []  # indices of compiles that really failed
    inject = {"left": 2}  # compile failures still to inject
    real_compile = ray_host._PlayGraph._compile

    def flaky_compile(graph) -> None:
        compiles.append(time.monotonic())
        if inject["left"]:
            inject["left"] -= 1
            graph.failed = graph.retryable = True  # what ``_compile`` records for a closed channel
            return
        real_compile(graph)
        if graph.failed:
            real_failures.append(len(compiles) - 1)

    def retried_with_back_off(times: list[float], injected: int, real: int) -> None:
        """One open: every failure (injected or real) retried, within ``GRAPH_ATTEMPTS``, each wait doubling."""
        assert len(times) == 1 + injected + real, (len(times), injected, real)
        assert len(times) - 1 <= ray_host.GRAPH_ATTEMPTS
        gaps = np.diff(times)
        assert all(g >= ray_host.GRAPH_RETRY_S * 2 ** i for i, g in enumerate(gaps)), gaps

    monkeypatch.setattr(ray_host._PlayGraph, "_compile", flaky_compile)
    with running_server(_config(server.config.data_dir, compiled_play=True)) as st:
        with WorldClient(st.target, timeout_s=120) as c, c.play("a", record=False, lockstep=True) as s:
            host = _host(st, "a")
            graph = _until_graph(st, "a", s)
            assert graph.ready
            first_open = len(compiles)
            retried_with_back_off(compiles, 2, len(real_failures))
            assert _step(s) is not None  # a clip through the graph that answered
            real_before, inject["left"] = len(real_failures), 1
            monkeypatch.setattr(ray_host, "GRAPH_IDLE_S", 0.3)
            deadline = time.monotonic() + TTL_S
            while host._graph is graph and time.monotonic() < deadline:
                time.sleep(0.05)
            assert host._graph is None, "the idle session's graph stayed open"
            monkeypatch.setattr(ray_host, "GRAPH_IDLE_S", 60.0)
            again = _until_graph(st, "a", s, timeout_s=30)
            assert again.ready and len(compiles) > first_open + 1, "the reopened graph got no retry"
            # the count and the back-off start afresh after a graph that answered
            retried_with_back_off(compiles[first_open:], 1, len(real_failures) - real_before)


def test_an_unexpected_actor_error_keeps_its_actor_traceback_for_the_log_only():
    """An actor's unexpected exception reaches the front door as itself, with the actor's traceback as a note: the
    front door's "rpc failed unexpectedly" log shows where in the actor it was raised (a CI failure once showed only
    the front door's frames), while the client's status stays the bare INTERNAL message with an error id. A domain
    error (NOT_FOUND ...) gets no note."""
    import traceback

    from ray.exceptions import RayTaskError

    from spatia.server.errors import status_for
    from spatia.server.ray_host import _unwrap
    from spatia.world.errors import NotFoundError

    def actor_side():
        raise RuntimeError("dictionary changed size during iteration")

    try:
        actor_side()
    except RuntimeError as exc:
        err = _unwrap(RayTaskError("play_clip", traceback.format_exc(), exc), "w")
    assert isinstance(err, RuntimeError)
    logged = "".join(traceback.format_exception(err))
    assert "in the world actor:" in logged and "in actor_side" in logged
    code, message = status_for(err)
    assert code == grpc.StatusCode.INTERNAL and "actor_side" not in message and "Traceback" not in message
    try:
        raise NotFoundError("world 'w' not found")
    except NotFoundError as exc:
        err = _unwrap(RayTaskError("view", traceback.format_exc(), exc), "w")
    assert not getattr(err, "__notes__", None) and status_for(err) == (grpc.StatusCode.NOT_FOUND, "world 'w' not found")


from test_server_lifecycle import (  # noqa: E402,F401 -- collected here (last), run with the fixtures above
    test_broken_connection, test_deadline, test_leaving_the_with_block_through_an_exception,
    test_the_session_limit_names_itself_in_error_info,
)
