"""Nothing lost: restart lists the same worlds (loaded from their incremental logs, ``worlds/<id>/``); kill -9
mid-session leaves loadable worlds and readable recordings; SIGTERM shuts down gracefully (sessions end, recordings
complete, worlds saved); a data dir of the old layout (``worlds/<id>.msgpack``) loads and is migrated."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spatia.client.api import WorldClient, WorldServiceError
from spatia.server.config import ServerConfig
from spatia.server.recording import summarize
from spatia.server.testing import running_server
from spatia.world.state import World
from spatia.world.worldlog import LOG_NAME, WorldLog

ROOT = Path(__file__).resolve().parents[1]
W, H = 64, 48


def _load_dir(directory: Path) -> World:
    """A world from a copy of its directory (loading cuts ``frames.bin`` back to the commit)."""
    import shutil

    copy = directory.parent.parent / f"copy-{directory.name}-{time.monotonic_ns()}"
    shutil.copytree(directory, copy)
    return WorldLog.load(copy)[0]


def test_restart_lists_the_same_worlds(tmp_path):
    config = ServerConfig(data_dir=tmp_path, port=0)
    with running_server(config) as st, WorldClient(st.target) as c:
        c.create_scene("room", 0, W, H, world_id="a")
        c.create_scene("house", 1, W, H, world_id="b")
        with c.play("a", clip=(2, 4, 2), max_pending_frames=32, record=False) as s:
            s.send(move_forward=1.0, dt_s=4 / 16)
            played = [s.next_frame(timeout_s=60) for _ in range(4)]
        before = {w.world_id: (w.stats.memory_points, w.stats.history_frames) for w in c.list_worlds()}
        current = np.asarray(c.get_world("a").current.c2w)
    worlds = tmp_path / "worlds"
    assert sorted(p.name for p in worlds.iterdir()) == ["a", "b"]  # one directory per world, no single files
    assert (worlds / "a" / LOG_NAME).is_file() and (worlds / "a" / "frames.bin").is_file()
    with running_server(config) as st, WorldClient(st.target) as c:
        after = {w.world_id: (w.stats.memory_points, w.stats.history_frames) for w in c.list_worlds()}
        assert after == before and after["a"][1] == 5
        assert np.allclose(np.asarray(c.get_world("a").current.c2w), current)
        assert np.allclose(current.reshape(4, 4), played[-1].c2w)
        # a world keeps playing where it stopped
        with c.play("a", clip=(2, 4, 2), max_pending_frames=32, record=False) as s:
            s.send(move_forward=1.0, dt_s=2 / 16)
            f = s.next_frame(timeout_s=60)
        assert f.frame_index == 5


def spawn_server(data_dir: Path, port_file: Path, *serve_args: str, launcher: tuple[str, ...] = ("-m", "spatia.cli"),
                 env: dict | None = None) -> subprocess.Popen:
    """``spatia serve`` in a subprocess on an ephemeral loopback port (``launcher``: how Python starts the CLI, e.g.
    ``("-c", bootstrap)``); returns once ``port_file`` holds the port."""
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, *launcher, "serve", "--port", "0", "--port-file", str(port_file), "--data-dir",
         str(data_dir), *serve_args],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("server did not start")
        time.sleep(0.05)
    return proc


def _spawn(data_dir: Path, port_file: Path) -> subprocess.Popen:
    # strict durability: every clip on disk before the next starts
    return spawn_server(data_dir, port_file, "--save-interval-s", "0", "--save-max-duty", "1")


def _target(port_file: Path) -> str:
    return f"127.0.0.1:{int(port_file.read_text())}"


def test_kill_9_mid_session_loses_at_most_the_clip_in_flight(tmp_path):
    port_file = tmp_path / "port"
    proc = _spawn(tmp_path / "data", port_file)
    try:
        with WorldClient(_target(port_file)) as c:
            c.create_scene("room", 0, W, H, world_id="k")
            s = c.play("k", clip=(2, 4, 2), max_pending_frames=32)
            s.send(move_forward=1.0, yaw_rate_rad_s=0.5, dt_s=40 / 16)  # 40 frames of work
            got = [s.next_frame(timeout_s=60) for _ in range(9)]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            with pytest.raises(WorldServiceError):
                while s.next_frame(timeout_s=30) is not None:
                    pass
    finally:
        if proc.poll() is None:
            proc.kill()
    # the log on disk loads (its newest complete commit) and holds every clip whose update finished
    world = _load_dir(tmp_path / "data" / "worlds" / "k")
    new_per_clip = 2
    assert len(world.history) - 1 >= len(got) - 2 * new_per_clip
    # the recording was cut off but is readable up to its last flushed chunk
    (rec,) = (tmp_path / "data" / "recordings").glob("k.*.mcap")
    summary = summarize(rec)
    assert not summary.complete and summary.world_id == "k"
    assert summary.frames >= len(got) - 2 * new_per_clip and summary.actions == 1
    # and a restarted server lists and serves it
    proc = _spawn(tmp_path / "data", port_file)
    try:
        with WorldClient(_target(port_file)) as c:
            assert [w.world_id for w in c.list_worlds()] == ["k"]
            assert c.get_world("k").stats.history_frames == len(world.history)
            assert len(c.list_recordings("k")) == 1
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_sigterm_ends_sessions_and_saves_everything(tmp_path):
    port_file = tmp_path / "port"
    proc = _spawn(tmp_path / "data", port_file)
    try:
        with WorldClient(_target(port_file)) as c:
            c.create_scene("room", 0, W, H, world_id="t")
            s = c.play("t", clip=(2, 4, 2), max_pending_frames=32)
            s.send(move_forward=1.0, dt_s=4 / 16)
            got = [s.next_frame(timeout_s=60) for _ in range(4)]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            try:
                while s.next_frame(timeout_s=30) is not None:
                    pass
            except WorldServiceError:
                pass  # the session ended with the server (CANCELLED / UNAVAILABLE)
    finally:
        if proc.poll() is None:
            proc.kill()
    world = _load_dir(tmp_path / "data" / "worlds" / "t")
    assert len(world.history) == 1 + len(got)
    (rec,) = (tmp_path / "data" / "recordings").glob("t.*.mcap")
    summary = summarize(rec)
    assert summary.complete and summary.frames == len(got)


def test_shutdown_reports_not_serving_to_health_watchers(tmp_path):
    import threading

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from spatia.server.testing import ServerThread

    st = ServerThread(ServerConfig(data_dir=tmp_path, port=0))
    st.start()
    with grpc.insecure_channel(st.target) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="spatia.v1.WorldService"))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=st.stop, kwargs={"grace_s": 2.0})
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stopper.join(timeout=30)
    assert not stopper.is_alive()


def test_an_old_layout_data_dir_loads_and_is_migrated_on_the_first_save(tmp_path):
    """Worlds saved by the server before the log (``worlds/<id>.msgpack``) load at start-up; the first save writes
    ``worlds/<id>/`` and only then removes the old file; an unreadable old file keeps its id (DATA_LOSS)."""
    import grpc

    worlds = tmp_path / "worlds"
    worlds.mkdir()
    old = World.from_scene("room", 0, W, H)
    old.info.world_id = "old"
    old.save(worlds / "old.msgpack")
    (worlds / "bad.msgpack").write_bytes(b"\x93not a snapshot")
    config = ServerConfig(data_dir=tmp_path, port=0)
    with running_server(config) as st, WorldClient(st.target) as c:
        assert [w.world_id for w in c.list_worlds()] == ["old"]
        assert c.get_world("old").stats.memory_points == old.memory.num_points
        with pytest.raises(WorldServiceError) as e:
            c.get_world("bad")
        assert e.value.code is grpc.StatusCode.DATA_LOSS
        assert (worlds / "old.msgpack").exists()  # nothing saved yet: still the world
        with c.play("old", clip=(2, 4, 2), max_pending_frames=32, record=False) as s:
            s.send(move_forward=1.0, dt_s=4 / 16)
            [s.next_frame(timeout_s=60) for _ in range(4)]
        frames = c.get_world("old").stats.history_frames
    assert not (worlds / "old.msgpack").exists() and (worlds / "old" / LOG_NAME).is_file()
    assert (worlds / "bad.msgpack").read_bytes() == b"\x93not a snapshot"  # never touched
    with running_server(config) as st, WorldClient(st.target) as c:
        assert [w.world_id for w in c.list_worlds()] == ["old"]
        assert c.get_world("old").stats.history_frames == frames == 5


def test_a_migration_cut_off_before_the_old_file_was_removed(tmp_path):
    """Both ``worlds/<id>/`` and ``worlds/<id>.msgpack``: a complete directory wins (the old file goes); a
    directory without a complete commit loses to the old file, which the next save rewrites it from."""
    worlds = tmp_path / "worlds"
    worlds.mkdir()
    for wid in ("done", "cut"):
        w = World.from_scene("room", 0, W, H)
        w.info.world_id, w.info.prompt = wid, "from the old file"
        w.save(worlds / f"{wid}.msgpack")
    done = World.load(worlds / "done.msgpack")
    done.info.prompt = "from the log"
    wlog = WorldLog(worlds / "done")
    wlog.write(wlog.prepare_save(done))
    done.close()
    (worlds / "cut").mkdir()
    (worlds / "cut" / LOG_NAME).write_bytes(b"SPWL\x01torn")  # a first write cut off: no commit
    (worlds / "lost").mkdir()  # a log with no complete commit and no old file: DATA_LOSS, never touched
    (worlds / "lost" / LOG_NAME).write_bytes(b"SPWL\x01torn")
    (worlds / "ghost").mkdir()  # frames only, no log: a creation cut off before its first save
    (worlds / "ghost" / "frames.bin").write_bytes(b"SPF1")
    with running_server(ServerConfig(data_dir=tmp_path, port=0)) as st, WorldClient(st.target) as c:
        assert {w.world_id: w.prompt for w in c.list_worlds()} == {"done": "from the log", "cut": "from the old file"}
        assert not (worlds / "done.msgpack").exists() and (worlds / "cut.msgpack").exists()
        assert not (worlds / "ghost").exists()
        with pytest.raises(WorldServiceError) as e:
            c.create_scene("room", 0, W, H, world_id="lost")
        assert e.value.code.name == "DATA_LOSS"
        assert (worlds / "lost" / LOG_NAME).read_bytes() == b"SPWL\x01torn"
        c.delete_world("lost")  # the documented way out
        c.delete_world("cut")
        assert not any((worlds / n).exists() for n in ("cut.msgpack", "cut", "lost"))
