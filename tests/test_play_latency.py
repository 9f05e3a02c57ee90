"""Where a served interactive frame's time goes, and what keeps the world's thread on the frame path
(issue 11 section 5, issue 10 section 4; docs/BENCHMARKS.md "Served play latency")."""

from __future__ import annotations

import json
import threading
import time

import pytest

from spatia.client.api import WorldClient
from spatia.server.config import Limits, ServerConfig
from spatia.server.testing import running_server

W, H = 64, 48


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A server that traces its Play sessions, and a client."""
    tmp = tmp_path_factory.mktemp("play")
    config = ServerConfig(data_dir=tmp / "data", port=0, play_trace_dir=tmp / "trace",
                          limits=Limits(max_image_pixels=320 * 240))
    with running_server(config) as st, WorldClient(st.target, timeout_s=60) as c:
        yield st, c, tmp / "trace"


def _walk(client, world_id: str, actions: int) -> list:
    """Play ``actions`` 30 Hz actions (walking while turning); the frames until the last one is applied."""
    frames = []
    with client.play(world_id, clip=(1, 2, 1), fps=30, record=False) as s:
        seqs = [s.send(move_forward=1.0, yaw_rate_rad_s=0.4, dt_s=1 / 30) for _ in range(actions)]
        while not frames or frames[-1].last_action_seq < seqs[-1]:
            frames.append(s.next_frame(timeout_s=60))
    return frames


def _trace_rows(trace_dir, session_id: str) -> list[dict]:
    path = trace_dir / f"{session_id}.jsonl"
    deadline = time.monotonic() + 30  # written when the session finishes, after the client left
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_play_trace_has_every_frames_stages_in_order(traced):
    st, client, trace_dir = traced
    client.create_scene("room", seed=0, width=W, height=H, world_id="traced")
    before = set(trace_dir.glob("*.jsonl")) if trace_dir.exists() else set()
    frames = _walk(client, "traced", 12)
    deadline = time.monotonic() + 30
    while not (new := set(trace_dir.glob("*.jsonl")) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(new) == 1
    rows = _trace_rows(trace_dir, new.pop().stem)
    recs = [r for r in rows if r["kind"] == "frame"]
    clips = [r for r in rows if r["kind"] == "clip"]
    # one record per frame the client got, with the frame's own seq (the action whose pose it shows)
    assert [r["session_frame"] for r in recs] == [f.session_frame for f in frames]
    assert [r["seq"] for r in recs] == [f.last_action_seq for f in frames]
    order = ("received", "integrated", "clip_start", "generated", "encoded", "queued", "sent")
    for r in recs:
        times = [r[k] for k in order]
        assert all(t is not None for t in times), r
        assert times == sorted(times), r  # each stage after the one before
    assert {r["clip"] for r in recs} <= {c["clip"] for c in clips}
    assert all(c["end"] >= c["start"] and c["generate_s"] > 0 and c["update_s"] >= 0 for c in clips)


def test_interactive_frames_are_encoded_off_the_worlds_thread(traced, monkeypatch):
    """The world's worker thread makes frames; JPEG encoding happens on the session's encoder thread, in order
    (before: on the worker, between one frame and the next)."""
    import spatia.server.session as session

    threads = []
    real = session.encode_image

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(session, "encode_image", spy)
    st, client, _ = traced
    client.create_scene("room", seed=1, width=W, height=H, world_id="encoded")
    frames = _walk(client, "encoded", 10)
    assert len(threads) >= len(frames) > 0
    assert not any(name.startswith("world-") for name in threads), threads
    assert all(name.startswith("play-encode") for name in threads), threads
    # in the order made, each frame's seq the action after which its pose was integrated
    assert [f.session_frame for f in frames] == sorted(f.session_frame for f in frames)
    assert [f.last_action_seq for f in frames] == sorted(f.last_action_seq for f in frames)
    assert [f.frame_index for f in frames] == sorted(f.frame_index for f in frames)


def test_clip_cost_counts_the_renders_before_a_clips_first_frame_as_per_frame_cost():
    """The engine renders the memory at every pose of a clip before its first frame, so a clip of m frames takes
    overhead + m * (render + generation) while its frames follow each other by the generation alone. Sizing
    clips by that spacing took every render for per-clip overhead and always chose full clips (a pose then waits
    for the renders of every pose after it); the cost is fitted over clip lengths instead."""
    from collections import deque

    import numpy as np

    from spatia.server.session import ClipCost, select_poses

    overhead_s, render_s, gen_s = 0.080, 0.114, 0.020  # measured at load ~8, 640x360 room (BENCHMARKS.md)

    def clip(m: int):  # (wall seconds, the frames' times, frames): renders first, then frames gen_s apart
        first = overhead_s / 2 + m * render_s + gen_s
        return overhead_s + m * (render_s + gen_s), [first + k * gen_s for k in range(m)], m

    cost = ClipCost()
    cost.add(*clip(4))
    cost.add(*clip(4))
    assert cost.probe  # one clip length so far: the next clip is one frame shorter
    assert cost.frame_s == pytest.approx(gen_s)  # the spacing alone is all it can tell yet
    cost.add(*clip(3))
    assert not cost.probe
    assert cost.frame_s == pytest.approx(render_s + gen_s) and cost.overhead_s == pytest.approx(overhead_s)

    # a clip that stalled (a fit waited for, a save) does not move the estimate
    for m in (2, 4, 3, 2):
        cost.add(*clip(m))
    cost.add(clip(3)[0] + 2.0, *clip(3)[1:])
    assert cost.frame_s == pytest.approx(render_s + gen_s) and cost.overhead_s == pytest.approx(overhead_s)

    def pending(k):
        return deque((np.eye(4) * (i + 1), i + 1) for i in range(k))

    # overloaded (a frame beyond the frame period): the newest pose alone, not the full clip the spacing rule took
    chunk, skipped = select_poses(pending(10), 4, cost.overhead_s, cost.frame_s, 1 / 30)
    assert [s for _, s in chunk] == [10] and skipped == 9
    # the spacing rule's view (the renders taken for per-clip overhead) is overloaded too: the newest pose alone
    chunk, _ = select_poses(pending(10), 4, clip(4)[0] - 4 * gen_s, gen_s, 1 / 30)
    assert [s for _, s in chunk] == [10]
    # a machine that keeps up (a frame well within the frame period): whatever is pending, nothing skipped
    fast = ClipCost()
    for m in (1, 2, 1, 2):
        fast.add(0.004 + m * 0.010, [0.01 * (k + 1) for k in range(m)], m)
    chunk, skipped = select_poses(pending(2), 4, fast.overhead_s, fast.frame_s, 1 / 30)
    assert len(chunk) == 2 and skipped == 0


def _simulated_latencies(select, overhead_s: float, frame_s: float, period_s: float, n: int = 4,
                         seconds: float = 6.0) -> tuple[list[float], float]:
    """The session driver's loop against a world whose clip of ``m`` frames shows frame ``k`` (1..m) at
    ``overhead_s / 2 + k * frame_s`` after it starts and ends at ``overhead_s + m * frame_s`` (half the overhead
    before the frames, conditioning, half after, the memory update); one pose per action, an action every
    ``period_s``. Each action's latency: to the first frame whose seq is at least its own (what benchmarks/play.py
    measures) and the frames per second shown, both after the first second (steady state)."""
    from collections import deque

    arrival, pending, latency, shown_after_1s = {}, deque(), {}, 0
    t, seq, next_action = 0.0, 0, 0.0
    while t < seconds:
        while next_action <= t:
            seq += 1
            arrival[seq] = next_action
            pending.append((None, seq))
            next_action += period_s
        if not pending:
            t = next_action
            continue
        chunk, _ = select(pending, n, overhead_s, frame_s, period_s)
        for k, (_, s) in enumerate(chunk, 1):
            shown = t + overhead_s / 2 + k * frame_s
            shown_after_1s += 1.0 < shown <= seconds
            for a in range(s, 0, -1):
                if a in latency:
                    break
                latency[a] = shown - arrival[a]
        t += overhead_s + len(chunk) * frame_s
    return [v for a, v in latency.items() if arrival[a] > 1.0], shown_after_1s / (seconds - 1.0)


def test_clip_sizing_bounds_the_worst_actions_latency_not_the_clips_own_time():
    """``select_poses`` sizes a clip by the latency of the worst action (the one that waits for the clip in flight,
    then for this one), not by the clip's own time: with the former budget (the clip's newest frame within two
    frame periods, or twice a one-frame clip when overloaded) an overloaded session took 2-frame clips and its
    oldest actions waited for ~2.7x a one-frame clip. Against a simulated driver loop, the old rule as reference."""
    from spatia.server.session import select_poses

    def old_rule(pending, n, overhead_s, frame_s, period_s):  # before: the clip alone within the budget
        budget_s = max(2.0 * period_s, 2.0 * (overhead_s + frame_s))
        m = max(1, min(n, int((budget_s - overhead_s) / frame_s)))
        skipped = max(len(pending) - m, 0)
        for _ in range(skipped):
            pending.popleft()
        return [pending.popleft() for _ in range(min(m, len(pending)))], skipped

    period = 1 / 30
    # keeping up (10 ms a clip, 20 ms a frame): every action shown within two frame periods, at the input rate
    lat, fps = _simulated_latencies(select_poses, 0.010, 0.020, period)
    assert max(lat) <= 2 * period and fps >= 29
    # overloaded (40 ms a frame): within what one-frame clips give, 2 x (overhead + frame)
    (new, new_fps), (old, old_fps) = (_simulated_latencies(rule, 0.010, 0.040, period)
                                      for rule in (select_poses, old_rule))
    assert max(new) <= 2 * (0.010 + 0.040) + 1e-9 < max(old)
    assert new_fps >= 19  # one-frame clips at 50 ms (the old rule's 2-frame clips: ~22 fps)
    # after a stall (a backlog of poses on a machine that keeps up): back within two frame periods at once
    from collections import deque

    chunk, skipped = select_poses(deque((None, s) for s in range(1, 31)), 4, 0.010, 0.012, period)
    assert [s for _, s in chunk] == [29, 30] and 2 * 0.010 + 3 * 0.012 <= 2 * period
    # overloaded by per-clip overhead (100 ms a clip, 10 ms a frame): one-frame clips of the newest pose, so an
    # action waits at most two one-frame clips (latency first; the frame rate drops to one frame a clip)
    lat, fps = _simulated_latencies(select_poses, 0.100, 0.010, period)
    assert max(lat) <= 2 * (0.100 + 0.010) + 1e-9 and 8 <= fps <= 10


def test_the_servers_openmp_threads_sleep_between_parallel_regions(tmp_path):
    """A server's numba (OpenMP) threads wait passively: spinning ones took the cores from the threads of the same
    render on a shared machine (docs/BENCHMARKS.md). libgomp reports its settings when it starts."""
    import os
    import subprocess
    import sys

    script = ("import spatia.server.service\n"  # what `spatia serve` imports
              "from spatia.world.state import World\n"
              "w = World.from_scene('room', 0, 32, 24)\n"
              "w.memory.render(w.intrinsics, w.origin_c2w)\n")  # a parallel kernel starts the threads
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", NUMBA_THREADING_LAYER="omp")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GOMP_SPINCOUNT = '0'" in out.stderr, out.stderr[-2000:]


def test_interactive_clips_of_several_sessions_take_the_servers_clip_slots(tmp_path, monkeypatch):
    """Interactive clips run at most ``ServerConfig.play_clip_slots`` at once in a server (here 1, two sessions): a
    clip waits for a slot, then takes the poses pending by then (newest last), and every frame still shows the pose
    after its ``last_action_seq``."""
    from spatia.server.host import WorldHost

    lock, running, most = threading.Lock(), [0], [0]
    real = WorldHost.clip_work

    def counted(self, *args, **kwargs):
        work = real(self, *args, **kwargs)

        def _clip():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            try:
                time.sleep(0.02)  # long enough that the other session's clip would overlap without the slot
                return work()
            finally:
                with lock:
                    running[0] -= 1

        return _clip

    monkeypatch.setattr(WorldHost, "clip_work", counted)
    config = ServerConfig(data_dir=tmp_path / "data", port=0, limits=Limits(max_image_pixels=320 * 240),
                          play_clip_slots=1)
    with running_server(config) as st, WorldClient(st.target, timeout_s=60) as client:
        for i in range(2):
            client.create_scene("room", seed=i, width=W, height=H, world_id=f"slot{i}")
        got: dict = {}

        def play(i: int) -> None:
            got[i] = _walk(client, f"slot{i}", 12)

        threads = [threading.Thread(target=play, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert most[0] == 1
    for frames in got.values():
        assert frames and frames[-1].last_action_seq == 12
        assert [f.last_action_seq for f in frames] == sorted(f.last_action_seq for f in frames)


def test_interactive_sessions_keep_references_for_the_servers_clip_count_lockstep_never(tmp_path):
    """``ServerConfig.play_reuse_references_clips`` reaches an interactive session's engine as given; a lock-step
    session retrieves every clip (0), as the in-process engine does; a negative count is refused. The same for
    ``play_commit_beside_next_clip``: interactive sessions only (a lock-step step's update is done when it answers)."""
    from spatia.model.geometric import GeometricGenerator
    from spatia.proto.spatia.v1 import world_pb2 as pb
    from spatia.server.session import PlayOptions, PlaySession
    from spatia.world.errors import InvalidInputError

    class Opened(Exception):
        """Raised by the stand-in host with the engine config the session asked for (its only argument)."""

    class Host:  # only what PlaySession reads before it opens the engine
        shares_server_cores = True

        def open_engine(self, generator, config):
            raise Opened(config)

    def opened(config, lockstep, generator=GeometricGenerator()):
        start = pb.PlayStart(world_id="w", lockstep=lockstep)
        with pytest.raises(Opened) as raised:
            PlaySession("s", Host(), PlayOptions.from_proto(start, config), generator, config, tmp_path, start)
        return raised.value.args[0]

    config = ServerConfig(data_dir=tmp_path, play_reuse_references_clips=3)
    for lockstep, expected in ((False, 3), (True, 0)):
        engine_config = opened(config, lockstep)
        assert engine_config.reuse_references_clips == expected
        assert engine_config.commit_beside_next_clip is not lockstep
    off = ServerConfig(data_dir=tmp_path, play_commit_beside_next_clip=False)
    assert not opened(off, False).commit_beside_next_clip
    with pytest.raises(InvalidInputError):
        ServerConfig(data_dir=tmp_path, play_reuse_references_clips=-1)
