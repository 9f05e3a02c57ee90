"""Stale temp files at start-up: a temp file names its writer by host and pid, and is removed only once that
writer is gone (issue 11 section 2; several servers may share a data dir, issue 12):

- this host: the pid is dead, or the process now holding that pid started after the file was last written (a
  restarted server in a container has the same pid and host name);
- another host (or a legacy name without a host): untouched for ``TEMP_LEASE_S``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from spatia.server.store import WorldStore
from spatia.world.snapshot import TEMP_LEASE_S, host_name, stale_temp_files, temp_file_writer, temp_owner
from spatia.world.state import World
from spatia.world.worldlog import LOG_NAME, WorldLog


def _dead_pid() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(out.stdout)


def _touch(path, age_s: float = 0.0, data: bytes = b"partial") -> None:
    path.write_bytes(data)
    t = time.time() - age_s
    os.utime(path, (t, t))


def test_temp_names_carry_host_and_pid():
    assert temp_owner() == f"{host_name()}.{os.getpid()}"
    assert temp_file_writer(f".a.b.msgpack.{temp_owner()}.k3y_9.tmp") == (host_name(), os.getpid())
    assert temp_file_writer(f".{LOG_NAME}.{temp_owner()}.compact.tmp") == (host_name(), os.getpid())
    assert temp_file_writer(".world.log.4242.compact.tmp") == (None, 4242)  # legacy: host unknown
    for other in (".hidden", ".x.tmp", "x.h.1.r.tmp", ".x.msgpack.h.notapid.r.tmp"):
        assert temp_file_writer(other) is None, other


def test_only_files_whose_writer_is_gone_are_stale(tmp_path):
    me, dead = host_name(), _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        files = {
            "dead writer": (f".a.msgpack.{me}.{dead}.r1.tmp", 0.0, True),
            "live writer": (f".b.msgpack.{me}.{live.pid}.r2.tmp", 0.0, False),
            # the pid is alive but its process started after the file was last written: an earlier owner's
            "reused pid": (f".c.msgpack.{me}.{live.pid}.r3.tmp", 600.0, True),
            # ours, written before this process started (a restarted server with the same pid)
            "own pid, earlier life": (f".d.msgpack.{me}.{os.getpid()}.r4.tmp", 7 * 86400.0, True),
            "own pid, now": (f".e.msgpack.{me}.{os.getpid()}.r5.tmp", 0.0, False),
            "other host, fresh": (".f.msgpack.otherhost.1.r6.tmp", TEMP_LEASE_S - 60, False),
            "other host, past the lease": (".g.msgpack.otherhost.1.r7.tmp", TEMP_LEASE_S + 60, True),
            "legacy compaction, fresh": (f".{LOG_NAME}.{dead}.compact.tmp", 10.0, False),
            "legacy compaction, old": (f".{LOG_NAME}.{dead + 1}.compact.tmp", TEMP_LEASE_S + 60, True),
            "compaction, dead writer": (f".{LOG_NAME}.{me}.{dead}.compact.tmp", 0.0, True),
            "not ours": (".notes.tmp", 10 * TEMP_LEASE_S, False),
        }
        for name, age_s, _ in files.values():
            _touch(tmp_path / name, age_s)
        stale = {p.name for p in stale_temp_files(tmp_path)}
        for what, (name, _, expected) in files.items():
            assert (name in stale) is expected, what
        # the lease is a parameter (and the clock too): the fresh one of another host goes after it
        later = time.time() + TEMP_LEASE_S
        assert ".f.msgpack.otherhost.1.r6.tmp" in {p.name for p in stale_temp_files(tmp_path, now_s=later)}
    finally:
        live.kill()
        live.wait()


def test_start_up_removes_dead_writers_temp_files_and_keeps_the_rest(tmp_path):
    """The store (single-file temps in ``worlds/``) and ``WorldLog.load`` (compaction temps in a world's
    directory) apply the rule; what is kept is byte for byte what was there."""
    worlds = tmp_path / "worlds"
    w = World.from_scene("room", 0, 32, 24)
    w.info.world_id = "w"
    wlog = WorldLog(worlds / "w")
    wlog.write(wlog.prepare_save(w))
    w.close()
    me, dead = host_name(), _dead_pid()
    gone = [worlds / f".x.msgpack.{me}.{dead}.r1.tmp", worlds / ".y.msgpack.far.7.r2.tmp",
            worlds / "w" / f".{LOG_NAME}.{me}.{dead}.compact.tmp", worlds / "w" / f".{LOG_NAME}.far.7.compact.tmp"]
    kept = [worlds / ".z.msgpack.far.7.r3.tmp", worlds / "w" / f".{LOG_NAME}.far.8.compact.tmp"]
    for p in gone:
        _touch(p, TEMP_LEASE_S + 5 if ".far." in p.name else 0.0)
    for p in kept:
        _touch(p, 5.0, b"another host's writer, still at it")
    store = WorldStore(tmp_path, max_worlds=4)
    assert store.load_all() == ["w"] and not store.broken
    assert not any(p.exists() for p in gone)
    assert all(p.read_bytes() == b"another host's writer, still at it" for p in kept)
    for host in list(store._hosts.values()):
        host.close()
        host.world.close()


def test_a_compaction_temp_file_is_named_by_host_and_pid(tmp_path, monkeypatch):
    """What ``_compact`` writes, seen at the moment it renames it over the log."""
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    from spatia.world import worldlog

    monkeypatch.setattr(worldlog, "COMPACT_RATIO", 1.0)  # the first commit is dead after the second save
    monkeypatch.setattr(worldlog, "COMPACT_MIN_BYTES", 0)
    monkeypatch.setattr(worldlog.os, "replace", replace)
    w = World.from_scene("room", 0, 32, 24)
    wlog = WorldLog(tmp_path / "w")
    wlog.write(wlog.prepare_save(w))
    report = wlog.write(wlog.prepare_save(w))
    w.close()
    assert report.compacted
    assert seen == [f".{LOG_NAME}.{temp_owner()}.compact.tmp"]
