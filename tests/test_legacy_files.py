"""Files written by earlier versions keep loading: a snapshot and a recording written before the ``spatia.*``
namespace (tests/fixtures/v0, a 64x48 room played for one short session)."""

from pathlib import Path

import numpy as np

from spatia.server.recording import read_recording, summarize
from spatia.world.state import World

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0"


def test_v0_snapshot_loads_and_renders():
    world = World.load(FIXTURES / "world_v0.spw")
    assert len(world.memory) > 1000
    view = world.memory.render(world.intrinsics, world.origin_c2w)
    assert view.valid.mean() > 0.5 and np.isfinite(view.depth_m[view.valid]).all()


def test_v0_recording_replays():
    summary = summarize(FIXTURES / "session_v0.mcap")
    assert summary.complete and summary.frames >= 6
    frames = [m.message for m in read_recording(FIXTURES / "session_v0.mcap") if m.topic == "/frame"]
    assert len(frames) == summary.frames and all(f.data for f in frames)
