"""A full disk, for real: the data dir on a small tmpfs (tests run as root; skipped where mounting is not allowed).

Disk full answers RESOURCE_EXHAUSTED naming the data dir's space (never its path), a failed CreateWorld leaves no
ghost, the previous good snapshot stays intact, and a session whose end-of-session save fails still releases its
world and slot (issue 11 sections 1 and 2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import grpc
import pytest

from spatia.client.api import WorldClient, WorldServiceError
from spatia.server.config import Limits, ServerConfig
from spatia.server.testing import running_server
from spatia.world.worldlog import LOG_NAME, WorldLog

W, H = 64, 48


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt):
    """Fill the file system up to its last byte; returns the filler path."""
    filler = mnt / f"filler-{uuid.uuid4().hex[:6]}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 4096, 512, 1):  # big writes first, then the last bytes
            while True:
                try:
                    if os.write(fd, b"\0" * size) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def _wait_free(servicer):
    deadline = time.monotonic() + 20
    while servicer.sessions and time.monotonic() < deadline:
        time.sleep(0.02)
    return servicer.sessions


def test_disk_full_on_a_real_tmpfs(tmpfs):
    config = ServerConfig(data_dir=tmpfs / "data", port=0, limits=Limits(max_sessions=1))
    with running_server(config) as st, WorldClient(st.target, timeout_s=60) as c:
        servicer = st.server.servicer
        c.create_scene("room", seed=0, width=W, height=H, world_id="a")
        good = (tmpfs / "data" / "worlds" / "a" / LOG_NAME).read_bytes()  # its incremental log (worlds/<id>/)
        good_frames = c.get_world("a").stats.history_frames
        filler = _fill(tmpfs)

        # creation: RESOURCE_EXHAUSTED naming the space, and nothing left behind
        with pytest.raises(WorldServiceError) as e:
            c.create_scene("room", seed=1, width=W, height=H, world_id="b")
        assert e.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
        assert "disk space" in e.value.message and "MiB free" in e.value.message
        assert str(tmpfs) not in e.value.message
        assert e.value.reason == "DISK_FULL" and e.value.metadata.get("limit") == "data_dir_space"
        assert "b" not in [w.world_id for w in c.list_worlds()]
        assert not list((tmpfs / "data" / "worlds").glob("*b.msgpack*"))
        assert not (tmpfs / "data" / "worlds" / "b").exists()
        assert not list((tmpfs / "data" / "worlds").glob(".*.tmp"))

        # a played session whose final save hits the full disk: released, previous snapshot intact
        with c.play("a", record=False) as s:
            s.send(move_forward=1.0, dt_s=2 / 16)
            assert s.next_frame(timeout_s=60) is not None
        assert _wait_free(servicer) == 0
        assert not c.get_world("a").controlled
        assert (tmpfs / "data" / "worlds" / "a" / LOG_NAME).read_bytes() == good  # the failed append was cut back
        shutil.copytree(tmpfs / "data" / "worlds" / "a", tmpfs.parent / "a-copy")  # loading cuts frames.bin
        back = WorldLog.load(tmpfs.parent / "a-copy")[0]
        assert back.world_id == "a" and len(back.history) == good_frames

        # a recorded session cannot even open its recording: refused, released
        with pytest.raises(WorldServiceError) as e:
            with c.play("a", record=True) as s:
                s.send(move_forward=1.0, dt_s=2 / 16)
                s.next_frame(timeout_s=60)
        assert e.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
        assert _wait_free(servicer) == 0 and not c.get_world("a").controlled

        # space again: the retry of the failed creation works (no ghost answering ALREADY_EXISTS)
        filler.unlink()
        info = c.create_scene("room", seed=1, width=W, height=H, world_id="b")
        assert info.world_id == "b"
        assert servicer.sessions_started == servicer.sessions_ended
