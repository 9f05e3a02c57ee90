"""Every way a Play session ends releases its world and its session slot exactly once (issue 11 section 1).

The server runs with ``max_sessions=1``: a leaked slot shows as RESOURCE_EXHAUSTED on any other world, a leaked
lease as ``controlled = true`` / FAILED_PRECONDITION. Faults are injected deterministically (a finish that blocks
until the test lets it go, a save or a recording close that raises, a generator that raises).
"""

from __future__ import annotations

import asyncio
import errno
import threading
import time

import grpc
import pytest

from spatia.client.api import WorldClient, WorldServiceError, play_start
from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.proto.spatia.v1 import world_pb2_grpc as pb_grpc
from spatia.server import errors
from spatia.server.config import Limits, ServerConfig
from spatia.server.host import WorldHost
from spatia.server.recording import Recorder
from spatia.server.service import WorldServicer
from spatia.server.session import PlaySession
from spatia.server.store import WorldStore
from spatia.server.testing import ServerThread, running_server

W, H = 64, 48


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), port=0, limits=Limits(max_sessions=1))
    with running_server(config) as st:
        with WorldClient(st.target, timeout_s=60) as c:
            for wid in ("a", "b"):
                c.create_scene("room", seed=0, width=W, height=H, world_id=wid)
        yield st


@pytest.fixture(scope="module")
def client(server):
    with WorldClient(server.target, timeout_s=60) as c:
        yield c


def _assert_released(server, client, started_before: int) -> None:
    """World 'a' and the one slot are free again, released exactly once."""
    servicer = server.server.servicer
    deadline = time.monotonic() + 20
    while servicer.sessions and time.monotonic() < deadline:  # the release follows the finish on the worker
        time.sleep(0.02)
    assert servicer.sessions == 0
    assert servicer.sessions_started == started_before + 1
    assert servicer.sessions_ended == servicer.sessions_started  # exactly once: never twice, never skipped
    assert not client.get_world("a").controlled
    with client.play("b", record=False) as s:  # the slot is free for another world (max_sessions = 1)
        assert s.session_id
    deadline = time.monotonic() + 20
    while servicer.sessions and time.monotonic() < deadline:
        time.sleep(0.02)


def _moved_frame(s) -> None:
    s.send(move_forward=1.0, dt_s=2 / 16)
    assert s.next_frame(timeout_s=60) is not None


def test_leaving_the_with_block_through_an_exception(server, client):
    n = server.server.servicer.sessions_started
    with pytest.raises(TimeoutError):
        with client.play("a", record=False) as s:
            s.next_frame(timeout_s=0.05)  # standing still: no frame comes
    _assert_released(server, client, n)


def test_deadline(server, client):
    n = server.server.servicer.sessions_started
    stub = pb_grpc.WorldServiceStub(client.channel)

    def requests():
        yield pb.PlayRequest(start=play_start("a", record=False))
        time.sleep(5)  # the deadline passes while the stream is open

    with pytest.raises(grpc.RpcError) as e:
        for _ in stub.Play(requests(), timeout=1.0):
            pass
    assert e.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    _assert_released(server, client, n)


def test_broken_connection(server, client):
    n = server.server.servicer.sessions_started
    other = WorldClient(server.target)
    s = other.play("a", record=False)
    _moved_frame(s)
    other.channel.close()  # the connection goes away under the session
    _assert_released(server, client, n)


def test_exception_in_the_clip_loop(server, client, monkeypatch):
    n = server.server.servicer.sessions_started
    before = errors.ERROR_COUNTS["unexpected"]

    def broken_clip(self, *args, **kwargs):
        raise RuntimeError("generator exploded")

    monkeypatch.setattr(WorldHost, "play_clip", broken_clip)
    with pytest.raises(WorldServiceError) as e:
        with client.play("a", record=False) as s:
            s.send(move_forward=1.0, dt_s=2 / 16)
            s.next_frame(timeout_s=60)
    assert e.value.code is grpc.StatusCode.INTERNAL and "exploded" not in e.value.message
    assert e.value.error_id and e.value.error_id in e.value.message
    assert errors.ERROR_COUNTS["unexpected"] == before + 1
    monkeypatch.undo()
    _assert_released(server, client, n)


def test_failing_save_at_the_end(server, client, monkeypatch):
    n = server.server.servicer.sessions_started
    calls = []

    def full_disk(self):
        calls.append(self.world_id)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(WorldHost, "save_now", full_disk)
    with client.play("a", record=False) as s:
        _moved_frame(s)
    deadline = time.monotonic() + 20
    while not calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert calls == ["a"]
    _assert_released(server, client, n)


def test_failing_recording_close(server, client, monkeypatch):
    n = server.server.servicer.sessions_started

    def broken_close(self):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(Recorder, "close", broken_close)
    with client.play("a", record=True) as s:
        _moved_frame(s)
    _assert_released(server, client, n)


def test_server_shutdown_ends_a_running_session(tmp_path):
    config = ServerConfig(data_dir=tmp_path, port=0, limits=Limits(max_sessions=1))
    st = ServerThread(config)
    st.start()
    with WorldClient(st.target, timeout_s=60) as c:
        c.create_scene("room", seed=0, width=W, height=H, world_id="a")
        s = c.play("a", record=True)
        _moved_frame(s)
        st.stop(grace_s=2.0)
        servicer = st.server.servicer
        assert servicer.sessions == 0 and servicer.sessions_ended == servicer.sessions_started == 1
        assert st.server.store.get("a").controller is None
        s.close(drain=False)


class _Context:
    def peer(self) -> str:
        return "test"

    async def abort(self, code, message, trailing_metadata=()):
        raise grpc.aio.AbortError()


def test_a_second_cancellation_during_the_finish_still_releases_once(tmp_path, monkeypatch):
    """The race of issue 11 (one try in three) made deterministic: the finish blocks on the worker until the
    test lets it go; the handler is cancelled (client gone), then cancelled again (shutdown) while it waits."""
    gate = threading.Event()
    entered = threading.Event()
    original = PlaySession.finish

    async def slow_finish(self):
        entered.set()
        assert await asyncio.to_thread(gate.wait, 30)
        await original(self)

    monkeypatch.setattr(PlaySession, "finish", slow_finish)

    async def scenario():
        config = ServerConfig(data_dir=tmp_path, port=0, limits=Limits(max_sessions=1))
        store = WorldStore(tmp_path, 4)
        from spatia.model import make_generator
        from spatia.world.state import World

        await store.add(World.from_scene("room", 0, W, H, world_id="a"))
        servicer = WorldServicer(config, store, make_generator("geometric"))
        started = asyncio.Event()
        queue: asyncio.Queue = asyncio.Queue()
        await queue.put(pb.PlayRequest(start=play_start("a", record=False)))

        async def requests():
            while True:
                yield await queue.get()

        async def consume():
            async for item in servicer.Play(requests(), _Context()):
                if item.HasField("started"):
                    started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 60)
        host = store.get("a")
        assert host.controller is not None and servicer.sessions == 1
        task.cancel()  # the client went away
        await asyncio.to_thread(entered.wait, 30)  # the finish runs on the worker now
        task.cancel()  # a second cancellation (server shutdown) while the handler awaits the finish
        with pytest.raises(asyncio.CancelledError):
            await task
        assert host.controller is not None  # still finishing: not released early
        gate.set()
        deadline = time.monotonic() + 30
        while host.controller is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert host.controller is None
        assert servicer.sessions == 0 and servicer.sessions_ended == 1
        await asyncio.sleep(0.1)
        assert servicer.sessions == 0  # released once, not twice
        await asyncio.to_thread(store.close)

    asyncio.run(scenario())


def test_the_session_limit_names_itself_in_error_info(server, client):
    n = server.server.servicer.sessions_started
    with client.play("a", record=False):
        with pytest.raises(WorldServiceError) as e:
            client.play("b", record=False)
        assert e.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.reason == "LIMIT_EXCEEDED" and e.value.metadata["limit"] == "max_sessions"
        with pytest.raises(WorldServiceError) as e:
            client.delete_world("a")  # controlled
        assert e.value.code is grpc.StatusCode.FAILED_PRECONDITION
    _assert_released(server, client, n)
