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


def _pinholes_reference(valid, rendered_depth, depth, depth_rel, max_gap_px):
    """``world.update.pinholes`` pixel by pixel: walk from each hole pixel in the two directions of each axis."""
    import numpy as np

    h, w = valid.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            z = depth[y, x]
            if valid[y, x] or not z > 0:
                continue
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                ends = []
                for sign in (1, -1):
                    for k in range(1, max_gap_px + 1):
                        yy, xx = y + sign * k * dy, x + sign * k * dx
                        if 0 <= yy < h and 0 <= xx < w and valid[yy, xx]:
                            ends.append((k, rendered_depth[yy, xx]))
                            break
                if len(ends) == 2 and ends[0][0] + ends[1][0] - 1 <= max_gap_px:
                    lo, hi = min(e[1] for e in ends), max(e[1] for e in ends)
                    if lo > 0 and lo * (1 - depth_rel) <= z <= hi * (1 + depth_rel):
                        out[y, x] = True
    return out


@pytest.mark.parametrize("max_gap_px", [1, 2, 3])
def test_pinholes_match_a_pixel_by_pixel_reference(max_gap_px):
    import numpy as np

    from spatia.world.update import pinholes

    rng = np.random.default_rng(max_gap_px)
    for _ in range(20):
        h, w = rng.integers(1, 14, size=2)
        valid = rng.random((h, w)) < rng.uniform(0.2, 0.9)
        rendered = np.where(valid, rng.uniform(1.0, 3.0, (h, w)), 0.0).astype(np.float32)
        depth = np.where(rng.random((h, w)) < 0.9, rng.uniform(0.8, 3.5, (h, w)), 0.0).astype(np.float32)
        got = pinholes(valid, rendered, depth, 0.1, max_gap_px)
        assert np.array_equal(got, _pinholes_reference(valid, rendered, depth, 0.1, max_gap_px))
    # a one-pixel gap in a plane is one; a gap wider than max_gap_px, or one seeing far behind, is not
    valid = np.ones((5, 9), bool)
    valid[2, 4] = False
    valid[:, 6 : 6 + max_gap_px + 1] = False
    plane = np.full((5, 9), 2.0, np.float32)
    assert pinholes(valid, plane, plane, 0.1, max_gap_px)[2, 4]
    assert not pinholes(valid, plane, plane, 0.1, max_gap_px)[:, 6 : 6 + max_gap_px + 1].any()
    behind = plane.copy()
    behind[2, 4] = 3.0
    assert not pinholes(valid, plane, behind, 0.1, max_gap_px)[2, 4]


def _spin_laps(pinhole_depth_rel, laps: int = 3) -> list[int]:
    """Memory points after each lap of turning in place (room, 64x48, 10 fps, 6 s a lap, the play engine's
    settings); every lap after the first starts half a frame later, so its frames are new viewpoints of what the
    first lap saw at the same distance (as a real session's frames fall at other phases each lap)."""
    import math

    from spatia.model.geometric import GeometricConfig, GeometricGenerator
    from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ControlConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World
    from spatia.world.update import UpdateConfig

    world = World.from_scene("room", 0, 64, 48)
    # no coarse fill at the start (coarse_frames=0: the first frames wait for the layout fit): what the coarse
    # frames showed is dropped from the memory and filled for good when next seen, i.e. on lap 2, which would
    # count as growth here although it is the first lap's view completed
    engine = Engine(world, GeometricGenerator(GeometricConfig(coarse_frames=0)), EngineConfig(
        clip=ClipConfig(4, 6, 2), keyframe_stride=4, reuse_references_within=(5.0, 0.10),
        update=UpdateConfig(pinhole_depth_rel=pinhole_depth_rel)))
    fps, lap_s = 10.0, 6.0
    integrator = ActionIntegrator(world.origin_c2w, ControlConfig(fps=fps))
    turn = 2 * math.pi / lap_s
    points = []
    for lap in range(laps):
        if lap:
            integrator.run([Action(yaw_rate_rad_s=turn, dt_s=0.5 / fps)])
        poses = integrator.run([Action(yaw_rate_rad_s=turn, dt_s=1 / fps)] * int(lap_s * fps))
        for i in range(0, len(poses), 4):
            for _ in engine.generate_clip(poses[i : i + 4]):
                pass
        points.append(world.memory.num_points)
    return points


def test_a_revisited_loop_adds_almost_no_points():
    """Issue 11 section 4: on a loop that revisits, what the world holds stops growing. Measured before the
    pinhole rule: +2.7 % and +16 % on laps 2 and 3 (new pinholes in surfaces held at pixel spacing, filled with
    points in fresh voxels at every new viewpoint); with it +1.0 % and +0.9 %."""
    with_rule = _spin_laps(0.1)
    without = _spin_laps(None)
    growth = [b / a - 1 for a, b in zip(with_rule, with_rule[1:])]
    assert max(growth) <= 0.03, (with_rule, without)
    assert without[-1] / without[0] - 1 > 0.08, (with_rule, without)  # what the rule removes (the test's power)


def test_world_stats_report_the_bytes_the_world_holds(tmp_path):
    from spatia.client.api import WorldClient
    from spatia.server.config import ServerConfig
    from spatia.server.testing import running_server

    with running_server(ServerConfig(data_dir=str(tmp_path), port=0)) as st, WorldClient(st.target) as c:
        info = c.create_scene("room", 0, 64, 48, world_id="bytes")
        stats = c.get_world("bytes").stats
        # 21 B a point in the arrays alone, plus capacity and the hash table; the history holds frame 0's voxel set
        assert stats.memory_bytes >= 21 * stats.memory_points > 0, stats
        assert stats.index_bytes >= 8 * 4 * 4, stats  # at least frame 0's pose
        assert info.stats.memory_bytes == stats.memory_bytes


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


_ARENA_CHURN = """
import resource, sys, threading
import numpy as np
from spatia.server.host import bound_heap
applied = bound_heap(top_pad_bytes=int(sys.argv[1]))
out = {}
def work():  # a thread's arena: 20 MiB of buffers below the mmap threshold, made and freed again and again (a clip)
    faults = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        buffers = [np.ones(512 * 1024 // 8) for _ in range(40)]
        del buffers
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    out["faults"] = faults
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(applied, sum(out["faults"][2:]))
"""


def test_bound_heap_keeps_a_thread_arena_s_freed_top_mapped():
    """``bound_heap``'s top pad: a thread that frees its buffers and makes them again reuses the arena's mapped pages
    (glibc's default pad shrank the heap on every free, and every page faulted in again, zeroed)."""
    if sys.platform != "linux" or not hasattr(__import__("resource"), "RUSAGE_THREAD"):
        pytest.skip("glibc's mallopt and per-thread fault counts: Linux only")

    def faults(pad_bytes: int) -> tuple[bool, int]:
        run = subprocess.run([sys.executable, "-c", _ARENA_CHURN, str(pad_bytes)], capture_output=True, text=True,
                             timeout=120, check=True)
        applied, count = run.stdout.split()
        return applied == "True", int(count)

    applied, padded = faults(64 << 20)
    if not applied:
        pytest.skip("not glibc: nothing to tune")
    _, unpadded = faults(128 << 10)  # glibc's default top pad
    assert padded <= 64 and unpadded >= 10 * max(padded, 64), (padded, unpadded)
