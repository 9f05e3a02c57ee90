"""A lock-step step's frame leaves before the history add (issue 14 section 6, session 10):

- ``EngineConfig.commit_before_last_frame``: the engine runs the clip's memory update and free-space removal before
  it yields the clip's last frame (which carries the clip's ``ClipStats``) and records the clip in the history on
  the caller's next pull. Frames, stats, memory (every array, byte for byte) and history (poses, voxel sets,
  images, depth) are the same as with the default order, over one-frame clips and longer ones;
- the Play session hands a lock-step clip's frames and stats to the event loop from the worker when the last frame
  carries stats (before the history add ends the clip), in the same order and with the same content as after the
  clip; a frame without stats (an engine in another process) keeps the hand-off after the clip
  (tests/test_lockstep.py).
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np

from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.server.config import Limits, ServerConfig
from spatia.server.session import _END, PlayOptions, PlaySession, action_from_proto
from spatia.world.actions import ClipConfig
from spatia.world.camera import Intrinsics
from spatia.world.engine import Engine, EngineConfig
from spatia.world.state import World

W, H = 64, 48


def _walk(n: int, seed: int = 0) -> np.ndarray:
    """[n, 4, 4] poses walking forward while turning (y is down: yaw about y), from the identity."""
    rng = np.random.default_rng(seed)
    poses, T = [], np.eye(4)
    for _ in range(n):
        a = rng.uniform(-0.1, 0.1)
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        T = T.copy()
        T[:3, :3] = T[:3, :3] @ R
        T[:3, 3] += 0.06 * T[:3, 2]
        poses.append(T)
    return np.stack(poses)


def _run(early: bool, clips: list[int]):
    from spatia.model.geometric import GeometricGenerator

    world = World.from_scene("room", 1, W, H)
    engine = Engine(world, GeometricGenerator(), EngineConfig(clip=ClipConfig(1, 2, 1),
                                                              commit_before_last_frame=early))
    path = world.origin_c2w @ _walk(sum(clips))
    frames, stats, history_at_last = [], [], []
    k = 0
    for n in clips:
        made = []
        for f in engine.generate_clip(path[k : k + n]):
            made.append(f)
            if len(made) == n:  # the last frame: what history and memory hold when it is handed out
                history_at_last.append((len(world.history), world.memory.num_points))
        k += n
        frames += [(f.frame_index, f.rgb.copy(), None if f.depth_m is None else f.depth_m.copy()) for f in made]
        stats.append((engine.last_stats, [f.stats for f in made]))
    return world, frames, stats, history_at_last


def test_commit_before_the_last_frame_changes_nothing_but_when_the_frame_leaves():
    clips = [1, 1, 1, 3, 1, 1, 2, 1, 1, 1]
    late = _run(False, clips)
    early = _run(True, clips)
    (w0, f0, s0, h0), (w1, f1, s1, h1) = late, early
    assert len(f0) == len(f1) == sum(clips)
    for (i0, rgb0, d0), (i1, rgb1, d1) in zip(f0, f1):
        assert i0 == i1
        np.testing.assert_array_equal(rgb0, rgb1)
        np.testing.assert_array_equal(d0, d1)
    a0, a1 = w0.memory.to_arrays(), w1.memory.to_arrays()
    assert a0.keys() == a1.keys()
    for name in a0:
        assert a0[name].dtype == a1[name].dtype and a0[name].tobytes() == a1[name].tobytes(), name
    assert w0.memory.num_points == w1.memory.num_points > 0
    assert len(w0.history) == len(w1.history) == 1 + sum(clips)
    np.testing.assert_array_equal(w0.history.poses(), w1.history.poses())
    for i in range(len(w0.history)):
        assert np.array_equal(np.sort(w0.history.get_voxel_keys(i)), np.sort(w1.history.get_voxel_keys(i)))
        np.testing.assert_array_equal(w0.history.get_rgb(i), w1.history.get_rgb(i))
        np.testing.assert_array_equal(w0.history.get_depth(i), w1.history.get_depth(i))
    # the stats: on the last frame only (early), the same figures either way, and the engine's last_stats
    for (last0, per0), (last1, per1), n in zip(s0, s1, clips):
        assert all(s is None for s in per0) and all(s is None for s in per1[:-1])
        assert per1[-1] is last1
        assert (last0.clip_id, last0.frames, last0.references, last0.memory_points) == \
            (last1.clip_id, last1.frames, last1.references, last1.memory_points)
    # the last frame is handed out before its clip is in the history, either way; early, after the memory update
    first, grew = 1, 0
    for n, (hist1, points1), (hist0, points0), (last1, _) in zip(clips, h1, h0, s1):
        assert hist0 == hist1 == first
        assert points1 == last1.memory_points
        grew += points0 != last1.memory_points  # late: the memory of before the update
        first += n
    assert grew >= len(clips) // 2


class _Host:
    """``play_clip`` as ``WorldHost`` runs it: the clip's frames to the sink on a worker thread, the last carrying
    the clip's stats; then the worker goes on (the history add) until the test lets it finish."""

    world_id = "w-order"

    def __init__(self) -> None:
        self.session: PlaySession | None = None
        self.clips = 0
        self.out_before_clip_end: list[int] = []

    def open_engine(self, generator, config):
        assert config.commit_before_last_frame  # a lock-step session asks for the early commit
        return None

    def view(self):
        return SimpleNamespace(history_frames=1, intrinsics=Intrinsics.from_fov(75.0, 32, 24),
                               origin_c2w=np.eye(4), current_c2w=np.eye(4))

    async def play_clip(self, engine, poses, prompt, seed, sink, autosave=None, frame_format=None):
        self.clips += 1
        clip_id = self.clips
        loop = asyncio.get_running_loop()
        release = threading.Event()
        stats = SimpleNamespace(clip_id=clip_id, generate_s=0.001, update_s=0.001, memory_points=100 + clip_id)
        box = self.session.outbox
        before = box.frames_queued

        def work():
            for i, c2w in enumerate(poses):
                sink(i, SimpleNamespace(rgb=np.full((24, 32, 3), 5 * clip_id, np.uint8), frame_index=clip_id,
                                        clip_id=clip_id, c2w=c2w, stats=stats if i == len(poses) - 1 else None))
            release.wait(5)  # "the history add": the frame must be out before it ends
            return stats

        fut = loop.run_in_executor(None, work)
        for _ in range(200):  # the event loop runs the sink's hand-off while the worker still works
            await asyncio.sleep(0.005)
            if box.frames_queued > before:
                break
        self.out_before_clip_end.append(box.frames_queued - before)
        release.set()
        return await fut


def test_lockstep_session_sends_the_frame_while_the_clip_finishes(tmp_path):
    config = ServerConfig(data_dir=tmp_path, limits=Limits())
    for inline in (False, True):
        start = pb.PlayStart(world_id="w-order", lockstep=True, stats_in_frame=inline, encoding=pb.FRAME_ENCODING_RAW,
                             no_recording=True, clip=pb.ClipLengths(first_clip_frames=1, clip_frames=2,
                                                                    preceding_frames=1))
        host = _Host()
        session = PlaySession("s-order", host, PlayOptions.from_proto(start, config), None, config,
                              config.data_dir / "recordings", start)
        host.session = session

        async def run():
            for seq in (1, 2, 3):
                await session.actions.put(action_from_proto(pb.Action(seq=seq, move_forward=1.0, dt_s=1 / 16)))
            await session.actions.put(_END)
            await session.drive()
            out = []
            while (item := await session.outbox.get()) is not None:
                out.append(item)
            return out

        out = asyncio.run(run())
        assert host.out_before_clip_end == [1, 1, 1]  # each step's frame was out before its clip ended
        kinds = [r.WhichOneof("kind") for r in out]
        frames = [r.frame for r in out if r.HasField("frame")]
        assert [f.last_action_seq for f in frames] == [1, 2, 3]
        if inline:
            assert kinds == ["frame"] * 3
            assert [f.stats.memory_points for f in frames] == [101, 102, 103]
        else:
            assert kinds == ["frame", "stats"] * 3
            assert [r.stats.memory_points for r in out if r.HasField("stats")] == [101, 102, 103]
            assert not any(f.HasField("stats") for f in frames)
        assert [r.stats.pending_frames for r in out if r.HasField("stats")] == ([] if inline else [0, 0, 0])
