"""Background snapshot saving of a played world into its incremental log (``worlds/<id>/``): the newest copy
wins, an older one never overwrites it; a world from an old single-file snapshot is migrated by its first save."""

import numpy as np

from spatia.server.host import WorldHost
from spatia.world.camera import Intrinsics
from spatia.world.state import World
from spatia.world.worldlog import LOG_NAME, WorldLog


def _world(box_room) -> World:
    K = Intrinsics.from_fov(70, 64, 48)
    rgb, depth = box_room(K, np.eye(4))
    return World.from_rgbd(rgb, depth, K, world_id="w")


def _entry(box_room, tmp_path) -> WorldHost:
    return WorldHost(_world(box_room), tmp_path / "w")


def _load(entry: WorldHost) -> World:
    return WorldLog.load(entry.path)[0]


def test_background_saves_land_and_the_newest_wins(box_room, tmp_path):
    entry = _entry(box_room, tmp_path)
    entry.save_now()
    n0 = entry.world.memory.num_points
    entry.world.info.prompt = "first"
    entry.save_in_background()
    entry.world.info.prompt = "second"
    entry.world.memory.insert(np.array([[5.0, 5.0, 5.0]]), np.array([[255, 0, 0]], np.uint8))
    entry.save_in_background()
    entry.saver.shutdown(wait=True)
    back = _load(entry)
    assert back.info.prompt == "second" and back.memory.num_points == n0 + 1
    # incremental: the one inserted point changed one memory block, not the whole memory
    assert 0 < entry.last_save_bytes < entry.snapshot_bytes / 4


def test_an_older_copy_never_overwrites_a_newer_snapshot(box_room, tmp_path):
    entry = _entry(box_room, tmp_path)
    old = entry._next_payload()
    entry.world.info.prompt = "newer"
    entry.save_now()  # a later sequence number reaches the disk first
    entry._write(old)  # the stale copy arrives late: skipped
    assert _load(entry).info.prompt == "newer"


def test_a_deleted_world_is_not_written_again(box_room, tmp_path):
    entry = _entry(box_room, tmp_path)
    entry.deleted = True
    entry.save_in_background()
    entry.saver.shutdown(wait=True)
    assert not entry.path.exists()


def test_saves_wait_for_the_interval_and_the_duty_cycle(box_room, tmp_path):
    entry = _entry(box_room, tmp_path)
    entry.save_now()
    assert entry.last_save_cpu_s > 0
    entry.clips_since_save = 1
    assert not entry.save_due(1, interval_s=60.0)  # saved just now
    assert entry.save_due(1, interval_s=0.0)
    assert not entry.save_due(2, interval_s=0.0)  # fewer clips than asked for
    entry.last_save_cpu_s = 1.0  # a save that took 1 s at a 5% duty waits 20 s, whatever the interval
    entry.last_save_monotonic -= 10.0
    assert not entry.save_due(1, interval_s=5.0, max_duty=0.05)
    entry.last_save_monotonic -= 11.0
    assert entry.save_due(1, interval_s=5.0, max_duty=0.05)


def test_unload_saves_then_answers_not_found(box_room, tmp_path):
    import asyncio

    import pytest

    from spatia.world.errors import NotFoundError, PreconditionError

    entry = _entry(box_room, tmp_path)
    entry.world.info.prompt = "kept"

    async def scenario():
        entry.claim("s1")
        with pytest.raises(PreconditionError):
            await entry.unload()
        assert entry.release("s1") and not entry.release("s1")  # idempotent
        assert await entry.unload() > 0
        with pytest.raises(NotFoundError):
            await entry.render(entry.world.intrinsics, np.eye(4))

    asyncio.run(scenario())
    assert _load(entry).info.prompt == "kept"


def test_an_old_single_file_world_is_migrated_by_its_first_save(box_room, tmp_path):
    legacy = tmp_path / "w.msgpack"
    _world(box_room).save(legacy)
    world = World.load(legacy)
    entry = WorldHost(world, tmp_path / "w", legacy_path=legacy)
    entry.world.info.prompt = "migrated"
    real_write = entry.log.write

    def write_checking_the_old_file(plan):
        assert legacy.exists()  # never removed before the new state is complete on disk
        return real_write(plan)

    entry.log.write = write_checking_the_old_file
    entry.save_now()
    assert not legacy.exists() and (tmp_path / "w" / LOG_NAME).exists()
    assert _load(entry).info.prompt == "migrated" and len(_load(entry).history) == len(world.history)


def test_a_failed_save_keeps_the_old_file_and_the_previous_commit(box_room, tmp_path, monkeypatch):
    import errno

    import pytest

    from spatia.server.host import DiskFullError
    from spatia.world import worldlog

    legacy = tmp_path / "w.msgpack"
    _world(box_room).save(legacy)
    entry = WorldHost(World.load(legacy), tmp_path / "w", legacy_path=legacy)
    real = worldlog._pwrite_all

    def full(fd, data, offset):
        real(fd, data[: len(data) // 2], offset)  # half the append lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(worldlog, "_pwrite_all", full)
    with pytest.raises(DiskFullError):
        entry.save_now()
    assert legacy.exists() and entry.save_failures == 1  # the old file is still the world
    assert (tmp_path / "w" / LOG_NAME).stat().st_size == 0  # the partial append was given back
    monkeypatch.setattr(worldlog, "_pwrite_all", real)
    entry.save_now()
    assert not legacy.exists()
    entry.world.info.prompt = "good"
    entry.save_now()
    monkeypatch.setattr(worldlog, "_pwrite_all", full)
    entry.world.info.prompt = "lost"
    with pytest.raises(DiskFullError):
        entry.save_now()
    assert _load(entry).info.prompt == "good"  # the previous commit is intact
