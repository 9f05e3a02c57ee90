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

    # two frame times' budget: 2 frames of the newest poses, not the full clip the spacing rule took
    chunk, skipped = select_poses(pending(10), 4, cost.overhead_s, cost.frame_s, 1 / 30)
    assert [s for _, s in chunk] == [9, 10] and skipped == 8
    chunk, _ = select_poses(pending(10), 4, clip(4)[0] - 4 * gen_s, gen_s, 1 / 30)  # the spacing rule's view
    assert len(chunk) == 4
    # a machine that keeps up (a frame well within the frame period): whatever is pending, nothing skipped
    fast = ClipCost()
    for m in (1, 2, 1, 2):
        fast.add(0.004 + m * 0.010, [0.01 * (k + 1) for k in range(m)], m)
    chunk, skipped = select_poses(pending(2), 4, fast.overhead_s, fast.frame_s, 1 / 30)
    assert len(chunk) == 2 and skipped == 0
