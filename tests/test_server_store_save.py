"""Background snapshot saving of a played world: the newest copy wins, an older one never overwrites it."""

import numpy as np

from spatia.server.host import WorldHost
from spatia.world.camera import Intrinsics
from spatia.world.state import World


def _entry(box_room, tmp_path) -> WorldHost:
    K = Intrinsics.from_fov(70, 64, 48)
    rgb, depth = box_room(K, np.eye(4))
    world = World.from_rgbd(rgb, depth, K, world_id="w")
    return WorldHost(world, tmp_path / "w.msgpack")


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
    back = World.load(entry.path)
    assert back.info.prompt == "second" and back.memory.num_points == n0 + 1


def test_an_older_copy_never_overwrites_a_newer_snapshot(box_room, tmp_path):
    entry = _entry(box_room, tmp_path)
    old = entry._next_payload()
    entry.world.info.prompt = "newer"
    entry.save_now()  # a later sequence number reaches the disk first
    entry._write(*old)  # the stale copy arrives late: skipped
    assert World.load(entry.path).info.prompt == "newer"


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
    assert World.load(entry.path).info.prompt == "kept"
