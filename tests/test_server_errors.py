"""Errors are deliberate and leak nothing; nothing saved is overwritten by accident; pagination; lock-step and
pose skipping keep ``last_action_seq`` true (issue 11 sections 2, 3 and 5; issue 14 section 4)."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from spatia.client.api import WorldClient, WorldServiceError
from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.server import errors
from spatia.server.config import Limits, ServerConfig
from spatia.server.host import WorldHost
from spatia.server.store import stale_temp_files
from spatia.server.testing import running_server
from spatia.world.actions import Action, ActionIntegrator, ControlConfig
from spatia.world.errors import NotFoundError
from spatia.world.state import World

W, H = 64, 48


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    (data / "worlds").mkdir()
    (data / "worlds" / "broken.msgpack").write_bytes(b"\x93not a snapshot at all")
    host = socket.gethostname().replace(".", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (data / "worlds" / f".x.msgpack.{host}.{int(dead.stdout)}.abc123.tmp").write_bytes(b"\0" * 1000)
    (data / "worlds" / f".y.msgpack.{host}.{os.getpid()}.abc123.tmp").write_bytes(b"live writer")
    (data / "worlds" / ".z.msgpack.otherhost.1.abc123.tmp").write_bytes(b"another host's writer")
    return data


@pytest.fixture(scope="module")
def server(data_dir):
    config = ServerConfig(data_dir=data_dir, port=0)
    with running_server(config) as st:
        yield st


@pytest.fixture(scope="module")
def client(server):
    with WorldClient(server.target, timeout_s=60) as c:
        c.create_scene("room", seed=0, width=W, height=H, world_id="room0")
        yield c


def _err(fn, *args, **kwargs) -> WorldServiceError:
    with pytest.raises(WorldServiceError) as e:
        fn(*args, **kwargs)
    return e.value


# ---- section 2: nothing saved is overwritten -----------------------------------------------------------------

def test_stale_temp_files_of_dead_writers_only_are_removed_at_start(server, data_dir):
    names = sorted(p.name for p in (data_dir / "worlds").glob(".*.tmp"))
    assert len(names) == 2 and all(".x.msgpack" not in n for n in names)  # the dead writer's is gone
    assert stale_temp_files(data_dir / "worlds") == []


def test_an_unreadable_snapshot_keeps_its_id_and_its_bytes(client, data_dir):
    before = (data_dir / "worlds" / "broken.msgpack").read_bytes()
    e = _err(client.get_world, "broken")
    assert e.code is grpc.StatusCode.DATA_LOSS and "DeleteWorld" in e.message
    e = _err(client.create_scene, "room", seed=0, width=W, height=H, world_id="broken")
    assert e.code is grpc.StatusCode.DATA_LOSS
    snapshot = client.export_world("room0")
    e = _err(client.import_world, snapshot, world_id="broken")
    assert e.code is grpc.StatusCode.DATA_LOSS
    assert (data_dir / "worlds" / "broken.msgpack").read_bytes() == before  # never overwritten
    client.delete_world("broken")  # the documented way out
    assert not (data_dir / "worlds" / "broken.msgpack").exists()
    assert client.import_world(snapshot, world_id="broken").world_id == "broken"
    client.delete_world("broken")


# ---- section 3: errors ---------------------------------------------------------------------------------------

def test_ids_are_checked_in_one_place(client):
    e = _err(client.get_world, "")
    assert e.code is grpc.StatusCode.INVALID_ARGUMENT and e.field_violations[0][0] == "GetWorldRequest.world_id"
    for bad in ("../etc", "a/b", "x" * 300, "é", ".hidden"):
        e = _err(client.get_world, bad)
        assert e.code is grpc.StatusCode.INVALID_ARGUMENT, bad
    e = _err(lambda: list(client.replay("r" * 300)))
    assert e.code is grpc.StatusCode.INVALID_ARGUMENT and "/" not in e.message
    e = _err(lambda: list(client.replay("")))
    assert e.code is grpc.StatusCode.INVALID_ARGUMENT
    e = _err(lambda: list(client.replay("no-such.recording")))
    assert e.code is grpc.StatusCode.NOT_FOUND and "/" not in e.message


def test_corrupt_image_bytes_name_the_field_not_a_repr(client):
    e = _err(client.create_world, pb.CreateWorldRequest(image=pb.ImageSource(image=b"\x89PNG garbage")))
    assert e.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "image.image" in e.message and "0x" not in e.message and "BytesIO" not in e.message
    assert e.field_violations and e.field_violations[0][0] == "image.image"
    assert e.reason == "INVALID_ARGUMENT" and e.domain == "spatia.v1"


def test_limits_carry_their_name_in_error_info(server, client):
    e = _err(client.create_scene, "room", seed=0, width=5000, height=5000)
    assert e.code is grpc.StatusCode.INVALID_ARGUMENT and "max_image_pixels" in e.message


def test_an_unexpected_exception_answers_an_error_id_only_and_never_stalls_others(server, client, monkeypatch):
    before = errors.ERROR_COUNTS["unexpected"]

    async def leaky(self, K, c2w):
        raise RuntimeError("/very/secret/path/in/the/server " + repr(object()))

    monkeypatch.setattr(WorldHost, "render", leaky)
    e = _err(client.render, "room0", np.eye(4))
    assert e.code is grpc.StatusCode.INTERNAL
    assert "secret" not in e.message and "0x" not in e.message and e.error_id.startswith("err-")
    assert e.reason == "INTERNAL" and e.error_id in e.message
    assert errors.ERROR_COUNTS["unexpected"] == before + 1
    t0 = time.perf_counter()
    client.get_world("room0")
    assert time.perf_counter() - t0 < 2.0


def test_edit_racing_delete_answers_not_found(box_room, tmp_path):
    """An Edit queued behind other work on the world's thread when a DeleteWorld arrives: NOT_FOUND, never
    'cannot schedule new futures after shutdown'."""
    from spatia.world.camera import Intrinsics

    K = Intrinsics.from_fov(70, 64, 48)
    rgb, depth = box_room(K, np.eye(4))
    host = WorldHost(World.from_rgbd(rgb, depth, K, world_id="w"), tmp_path / "w.msgpack")
    gate, entered = threading.Event(), threading.Event()

    def busy_work():
        entered.set()
        return gate.wait(30)

    async def scenario():
        busy = asyncio.ensure_future(host.call(busy_work))  # the worker is busy
        await asyncio.to_thread(entered.wait, 30)
        edit = asyncio.ensure_future(host.edit(lambda mem: 0))  # queued behind it
        await asyncio.sleep(0.05)
        delete = asyncio.ensure_future(host.delete())
        await asyncio.sleep(0.05)
        gate.set()
        await busy
        await delete
        with pytest.raises(NotFoundError):
            await edit
        with pytest.raises(NotFoundError):  # and any later call
            await host.edit(lambda mem: 0)

    asyncio.run(scenario())
    assert not host.path.exists()


# ---- issue 14 section 4: pagination ---------------------------------------------------------------------------

def test_list_worlds_paginates(server, client):
    for i in range(5):
        client.create_scene("room", seed=i, width=32, height=24, world_id=f"page{i}")
    stub_ids, token, pages = [], "", 0
    while True:
        resp = client.stub.ListWorlds(pb.ListWorldsRequest(page_size=2, page_token=token))
        stub_ids += [w.world_id for w in resp.worlds]
        assert len(resp.worlds) <= 2
        token, pages = resp.next_page_token, pages + 1
        if not token:
            break
    everything = [w.world_id for w in client.list_worlds()]
    assert stub_ids == everything == sorted(everything) and pages >= 3
    assert [w.world_id for w in client.list_worlds(page_size=1)] == everything
    with pytest.raises(grpc.RpcError) as e:
        client.stub.ListWorlds(pb.ListWorldsRequest(page_token="garbage"))
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.stub.ListWorlds(pb.ListWorldsRequest(page_size=-1))
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    for i in range(5):
        client.delete_world(f"page{i}")


# ---- section 5 / lock-step: last_action_seq tells the truth ----------------------------------------------------

def _reference_poses(info: pb.WorldInfo, actions: list[Action], fps: float) -> dict[int, np.ndarray]:
    """seq -> the integrator's pose after that action (one pose per action of dt = 1 / fps)."""
    origin = np.asarray(info.origin.c2w).reshape(4, 4)
    current = np.asarray(info.current.c2w).reshape(4, 4)
    integ = ActionIntegrator.resumed(origin, current, ControlConfig(fps=fps))
    out = {}
    for a in actions:
        integ.step(a)
        out[a.seq] = integ.c2w
    return out


def test_lockstep_gives_every_action_exactly_its_frame(client):
    info = client.create_scene("room", seed=3, width=W, height=H, world_id="lock")
    fps = 16.0
    kinds = [dict(move_forward=1.0, dt_s=1 / fps), dict(dt_s=1 / fps),  # an idle action gets a frame too
             dict(yaw_rate_rad_s=1.0, dt_s=0.01), dict(move_right=-0.5, pitch_delta_rad=0.1, dt_s=0.3)]
    actions = [Action(**kinds[i % 4], seq=i + 1) for i in range(12)]
    with client.play("lock", lockstep=True, fps=fps, record=False) as s:
        assert s.started.lockstep
        for a in actions:
            s.send(**{k: v for k, v in a.__dict__.items() if k != "seq" and v})
        frames = [s.next_frame(timeout_s=60) for _ in actions]
        with pytest.raises(TimeoutError):
            s.next_frame(timeout_s=0.5)  # nothing more: exactly one frame per action
    assert [f.last_action_seq for f in frames] == [a.seq for a in actions]
    ref = _reference_poses(info, actions, fps)
    for f in frames:
        np.testing.assert_allclose(f.c2w, ref[f.last_action_seq], atol=1e-6)
    assert s.stats[-1].poses_dropped == 0 and s.stats[-1].frames_dropped == 0
    client.delete_world("lock")


def test_interactive_skipping_keeps_last_action_seq_true(server, client, monkeypatch):
    """A generator slower than the frame time: intermediate poses are skipped, never the newest, and every frame
    shows the integrator's pose after the action its last_action_seq names."""
    info = client.create_scene("room", seed=4, width=W, height=H, world_id="skip")
    original = WorldHost.play_clip

    async def slow_clip(self, engine, poses, prompt, seed, sink, **kwargs):
        def slow_sink(i, f):
            time.sleep(0.03)  # 30 ms a frame at 60 fps (16.7 ms): behind
            sink(i, f)

        return await original(self, engine, poses, prompt, seed, slow_sink, **kwargs)

    monkeypatch.setattr(WorldHost, "play_clip", slow_clip)
    fps = 60.0
    actions = [Action(move_forward=1.0, yaw_rate_rad_s=0.5, dt_s=1 / fps, seq=i + 1) for i in range(90)]
    with client.play("skip", fps=fps, record=False) as s:
        for a in actions:
            s.send(move_forward=1.0, yaw_rate_rad_s=0.5, dt_s=1 / fps)
            time.sleep(1 / fps)
        frames = []
        while True:
            try:
                f = s.next_frame(timeout_s=2.0)
            except TimeoutError:
                break
            if f is None:
                break
            frames.append(f)
            if f.last_action_seq == actions[-1].seq:
                break
    assert frames and frames[-1].last_action_seq == actions[-1].seq  # the newest pose is never skipped
    assert s.stats[-1].poses_dropped > 0  # behind: poses were skipped
    assert s.stats[-1].held_fps > 0
    ref = _reference_poses(info, actions, fps)
    for f in frames:
        np.testing.assert_allclose(f.c2w, ref[f.last_action_seq], atol=1e-6)
    seqs = [f.last_action_seq for f in frames]
    assert seqs == sorted(seqs)
    client.delete_world("skip")


def test_lockstep_with_a_slow_reader_drops_nothing(client):
    """Backpressure instead of loss: a 2-frame client buffer and a server frame queue of 8 for 20 actions."""
    from spatia.client.api import PlaySession, play_start

    client.create_scene("room", seed=5, width=W, height=H, world_id="lockslow")
    s = PlaySession(client, play_start("lockslow", lockstep=True, record=False), max_buffered=2)
    try:
        seqs = [s.send(move_forward=0.5, yaw_rate_rad_s=0.2, dt_s=1 / 16) for _ in range(20)]
        time.sleep(1.5)  # not reading: the server must wait, not drop
        frames = [s.next_frame(timeout_s=60) for _ in seqs]
    finally:
        s.close(drain=False)
    assert [f.last_action_seq for f in frames] == seqs
    assert s.frames_dropped == 0 and all(st.frames_dropped == 0 for st in s.stats)
    deadline = time.monotonic() + 20
    while client.get_world("lockslow").controlled and time.monotonic() < deadline:  # released after the cancel
        time.sleep(0.05)
    client.delete_world("lockslow")
