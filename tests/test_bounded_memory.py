"""Long sessions stay bounded (issue 11 section 4): the outbox bounds stats and heartbeats, deleting a world gives
its memory back to the OS, and a scaled soak (benchmarks/soak.py) keeps RSS and frame rate."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_outbox_bounds_stats_and_heartbeats_not_only_frames():
    import asyncio

    from spatia.server.session import Outbox

    async def fill():
        box = Outbox(frame_capacity=4)
        for i in range(1000):  # a client that never reads: one stats per clip, frames in between
            box.put(("stats", i))
            box.put(("frame", i), is_frame=True)
        return box

    box = asyncio.run(fill())
    items = list(box._items)
    assert box.frames_queued == 4 and len(items) == 4 + Outbox.OTHER_CAPACITY
    assert box.dropped == 996 and box.others_dropped == 1000 - Outbox.OTHER_CAPACITY
    stats = [x for x, is_frame in items if not is_frame]
    assert stats[-1] == ("stats", 999) and stats[0] == ("stats", 1000 - Outbox.OTHER_CAPACITY)  # newest kept


_DELETE = textwrap.dedent("""
    import sys
    sys.path.insert(0, "benchmarks")
    import os
    from soak import rss_bytes
    from spatia.client.api import WorldClient
    from spatia.server.config import ServerConfig
    from spatia.server.testing import running_server

    def mib():
        return rss_bytes(os.getpid()) / 2**20

    def play(c, wid, frames):
        c.create_scene("room", 0, 320, 180, world_id=wid)
        with c.play(wid, clip=(4, 6, 2), fps=30, max_pending_frames=64, record=False) as s:
            for _ in range(frames // 4):  # one clip's worth of poses at a time
                s.send(move_forward=0.5, yaw_rate_rad_s=0.6, dt_s=4 / 30)
                for _ in range(4):
                    s.next_frame(timeout_s=120)

    with running_server(ServerConfig(data_dir=sys.argv[1], port=0)) as st, WorldClient(st.target) as c:
        play(c, "warm", 12)  # compiles the kernels, starts the threads: what stays whatever worlds exist
        c.delete_world("warm")
        base = mib()
        for i in range(3):
            play(c, f"w{i}", 60)
        played = mib()
        for i in range(3):
            c.delete_world(f"w{i}")
        print("RSS", base, played, mib(), flush=True)
""")


def test_deleting_worlds_returns_their_memory(tmp_path):
    out = subprocess.run([sys.executable, "-c", _DELETE, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    line = [x for x in out.stdout.splitlines() if x.startswith("RSS")]
    assert line, out.stderr[-3000:]
    base, played, deleted = (float(v) for v in line[0].split()[1:])
    assert played - base > 20, (base, played, deleted)  # three played worlds hold tens of MB
    assert deleted - base < 0.25 * (played - base), (base, played, deleted)  # ... and give (nearly) all of it back


@pytest.mark.slow  # runs in `make test` (90 s of its budget): the scaled version of the soak
def test_scaled_soak_keeps_rss_and_frame_rate(tmp_path):
    """benchmarks/soak.py scaled to 90 s: 2 sessions + 1 never-reading client on 20 s loops (the full target,
    8 x 10 min, is in docs/BENCHMARKS.md). Scaled bounds: RSS at the end <= 1.5x RSS after 30 s, no errors, and
    every session keeps >= 50 % of its first window's frame rate (80 % in the full run; CI shares its 2 cores
    with other test files)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from soak import parse_args, soak

    r = soak(parse_args(["--sessions", "2", "--minutes", "1.5", "--first-s", "30", "--sample-s", "10",
                         "--width", "160", "--height", "96"]))
    assert r["errors"] == 0, r["error_samples"]
    assert r["rss_end_over_first"] <= 1.5, r
    assert r["fps_last_over_first_min"] >= 0.5, r
