"""Lock-step Play sessions (issue 14 section 6): what the server does per step, beyond the env-level checks in
tests/test_env.py.

- A lock-step clip's frames reach the session's outbox with its stats, after the clip (one hand-off to the event
  loop per step instead of one per frame plus one for the clip; the client waits for the stats anyway), while an
  interactive clip's frames go out one by one as they are generated. Both keep frame -> stats order.
- With ``PlayStart.stats_in_frame`` the stats ride on the clip's frame: one message per step.
- Actions sent ahead of their frames (an agent that pipelines) still get exactly one frame each, in seq order,
  each clip's frame followed by (or carrying) its stats, with the memory counts of the in-process env.
- The metrics still see the clip times when the stats ride on frames.
- The kernel warm-up of `spatia serve` reaches the memory re-sort and compaction kernels.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.server.config import Limits, ServerConfig
from spatia.server.session import _END, PlayOptions, PlaySession, action_from_proto
from spatia.world.camera import Intrinsics

W, H = 32, 24


class _FakeHost:
    """The host methods a PlaySession uses; ``play_clip`` runs its clip on a thread like ``WorldHost`` and notes
    how many frames the outbox gained while the clip ran (all its frames handed to the sink, before it returns)."""

    world_id = "w-fake"
    shares_server_cores = True  # its clips run in this process (the server's clip slots count them)

    def __init__(self) -> None:
        self.queued_after_sink: list[int] = []
        self.session: PlaySession | None = None
        self.clips = 0

    def open_engine(self, generator, config):
        return None

    def collider(self, engine):
        return None  # no memory here: the session's camera moves as integrated

    def view(self):
        return SimpleNamespace(history_frames=1, intrinsics=Intrinsics.from_fov(75.0, W, H),
                               origin_c2w=np.eye(4), current_c2w=np.eye(4), level_up=None)

    async def play_clip(self, engine, poses, prompt, seed, sink, autosave=None, frame_format=None):
        self.clips += 1
        clip_id = self.clips
        before = self.session.outbox.frames_queued  # nobody reads the outbox until drive() ends

        def work():
            for i, c2w in enumerate(poses):
                sink(i, SimpleNamespace(rgb=np.full((H, W, 3), 7 * clip_id, np.uint8), frame_index=clip_id,
                                        clip_id=clip_id, c2w=c2w))
            return SimpleNamespace(clip_id=clip_id, generate_s=0.001, update_s=0.001, memory_points=100 + clip_id)

        stats = await asyncio.get_running_loop().run_in_executor(None, work)
        for _ in range(5):  # let the event loop run whatever the worker handed to it
            await asyncio.sleep(0)
        self.queued_after_sink.append(self.session.outbox.frames_queued - before)
        return stats


def _session(mode: str, config: ServerConfig) -> tuple[PlaySession, _FakeHost]:
    start = pb.PlayStart(world_id="w-fake", lockstep=mode != "interactive", stats_in_frame=mode == "inline",
                         encoding=pb.FRAME_ENCODING_RAW, no_recording=True,
                         clip=pb.ClipLengths(first_clip_frames=1, clip_frames=2, preceding_frames=1))
    host = _FakeHost()
    session = PlaySession("s-fake", host, PlayOptions.from_proto(start, config), None, config,
                          config.data_dir / "recordings", start)
    host.session = session
    return session, host


@pytest.mark.parametrize("mode", ["lockstep", "inline", "interactive"])
def test_lockstep_frames_go_out_with_the_clip_stats(mode, tmp_path):
    config = ServerConfig(data_dir=tmp_path, limits=Limits())

    async def run():
        session, host = _session(mode, config)
        for seq in (1, 2, 3):
            await session.actions.put(action_from_proto(pb.Action(seq=seq, move_forward=1.0, dt_s=1 / 16)))
        await session.actions.put(_END)
        await session.drive()
        out = []
        while (item := await session.outbox.get()) is not None:
            out.append(item)
        return host, out

    host, out = asyncio.run(run())
    kinds = [r.WhichOneof("kind") for r in out]
    frames = [r.frame for r in out if r.HasField("frame")]
    if mode == "lockstep":
        # nothing in the outbox while the clip ran: its frame came with the stats; one frame per action
        assert host.queued_after_sink == [0, 0, 0]
        assert kinds == ["frame", "stats"] * 3
        assert [f.last_action_seq for f in frames] == [1, 2, 3]
        assert [r.stats.memory_points for r in out if r.HasField("stats")] == [101, 102, 103]
        assert not any(f.HasField("stats") for f in frames)
    elif mode == "inline":
        # PlayStart.stats_in_frame: one message per step, the stats on the frame
        assert host.queued_after_sink == [0, 0, 0]
        assert kinds == ["frame"] * 3
        assert [f.last_action_seq for f in frames] == [1, 2, 3]
        assert [f.stats.memory_points for f in frames] == [101, 102, 103]
        assert [f.stats.clip_id for f in frames] == [1, 2, 3]
    else:
        # interactive: each frame is handed to the event loop as it is generated (before the clip's end)
        assert host.queued_after_sink and all(q >= 1 for q in host.queued_after_sink)
        assert kinds[0] == "frame" and kinds[-1] == "stats"
        assert not any(f.HasField("stats") for f in frames)
    assert all(f.width == W and f.height == H and len(f.data) == W * H * 3 for f in frames)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from spatia.server.testing import running_server

    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), port=0, limits=Limits(max_image_pixels=320 * 240))
    with running_server(config) as st:
        yield st


@pytest.mark.parametrize("inline", [False, True])
def test_pipelined_actions_get_one_frame_each_in_order(server, inline):
    """An agent may send several actions before reading: lock-step still answers each with exactly its frame
    (seq by seq, none skipped), each followed by (or, with ``stats_in_frame``, carrying) its clip's stats, and
    the memory grows exactly as in-process."""
    from spatia.client.api import WorldClient, action_message, decode, play_start
    from spatia.client.env import SpatiaWorldEnv

    actions = [np.array(a, np.float32) for a in ([1, 0, 0, 0.3, 0], [0.5, 0.5, 0, -0.5, 0.1], [1, 0, 0, 0, 0],
                                                 [0, 0, 0, 1, 0], [0.8, -0.2, 0, 0.2, -0.1])]
    local = SpatiaWorldEnv(width=W, height=H)
    local.reset(seed=3)
    expected = [local.step(a) for a in actions]
    # the same world on the server, driven over a raw Play stream with every action sent up front
    with WorldClient(server.target) as c:
        info = c.create_scene("room", int(local._episode_seed), W, H, fov_deg=local.fov_deg)
        start = play_start(info.world_id, fps=local.control.fps, encoding=pb.FRAME_ENCODING_RAW, clip=(1, 2, 1),
                           record=False, seed=int(local._episode_seed), lockstep=True)
        start.stats_in_frame = inline
        msgs = [pb.PlayRequest(start=start)]
        for k, a in enumerate(actions, start=1):
            act = local.to_action(a)
            msgs.append(pb.PlayRequest(action=action_message(
                k, move_forward=act.move_forward, move_right=act.move_right, move_up=act.move_up,
                yaw_rate_rad_s=act.yaw_rate_rad_s, pitch_rate_rad_s=act.pitch_rate_rad_s, dt_s=act.dt_s)))
        responses = list(c.stub.Play(iter(msgs), metadata=c.metadata))
        c.delete_world(info.world_id)
    local.close()
    kinds = [r.WhichOneof("kind") for r in responses]
    assert kinds == ["started"] + (["frame"] if inline else ["frame", "stats"]) * len(actions)
    frames = [r.frame for r in responses if r.HasField("frame")]
    stats = [f.stats for f in frames] if inline else [r.stats for r in responses if r.HasField("stats")]
    assert [f.last_action_seq for f in frames] == [1, 2, 3, 4, 5]
    for (obs, _, _, _, inf), f, s in zip(expected, frames, stats):
        np.testing.assert_array_equal(decode(f).rgb, obs)
        assert s.memory_points == inf["memory_points"]


def test_metrics_count_clip_times_from_stats_on_frames():
    """The Prometheus clip-time histograms see a lock-step clip whose stats ride on its frame."""
    from prometheus_client import CollectorRegistry

    from spatia.server.metrics import MetricsInterceptor, _Instruments, _StreamTally

    registry = CollectorRegistry()
    interceptor = MetricsInterceptor(_Instruments(registry))
    tally = _StreamTally(labels=("spatia.v1.WorldService", "Play", "bidi_stream"))
    frame = pb.PlayResponse(frame=pb.Frame(stats=pb.SessionStats(generate_ms=4.0, update_ms=2.0)))
    interceptor._observe("Play", frame, tally)
    interceptor._observe("Play", pb.PlayResponse(frame=pb.Frame()), tally)  # a frame without stats
    interceptor._observe("Play", pb.PlayResponse(stats=pb.SessionStats(generate_ms=6.0, update_ms=1.0)), tally)
    assert registry.get_sample_value("spatia_clip_generate_seconds_count") == 2
    assert registry.get_sample_value("spatia_clip_generate_seconds_sum") == pytest.approx(0.010)
    assert registry.get_sample_value("spatia_clip_update_seconds_sum") == pytest.approx(0.003)
    assert registry.get_sample_value("spatia_frames_served_total", {"grpc_method": "Play"}) == 2


def test_warm_kernels_runs_the_resort_and_compaction_paths():
    """``spatia serve`` warms the kernels a session would otherwise compile mid-play (server.host.warm_kernels):
    its throwaway world reaches the memory's re-sort and a compaction, not only the clip path."""
    from spatia.model import make_generator
    from spatia.server.host import warm_kernels
    from spatia.world import _memory_kernels as K

    report = warm_kernels(make_generator("geometric"), width=32, height=24, clips=3)
    assert report["clips"] == 3 and report["points_resorted"] > 0 and report["points_removed"] > 0
    assert report["fill_texels"] > 0  # the layout fill's kernels (model.fill.warmup) ran too
    for kernel in (K.sort_keys, K.merge_order, K.hash_remap, K.drop_points, K.render_points):
        assert kernel.signatures, kernel.py_func.__name__
    assert len(K.permute_rows.signatures) >= 4 and K.permute_rows3.signatures  # the point arrays: four vector dtypes, [N, 3] uint8
