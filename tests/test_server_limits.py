"""Bounded everything: latest-wins frame dropping for a slow reader, pending-pose dropping when generation falls
behind, and the count limits (worlds, sessions) answering RESOURCE_EXHAUSTED with the limit's name."""

import asyncio

import grpc
import pytest

from spatia.client.api import AsyncWorldClient, WorldClient, WorldServiceError
from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.server.config import Limits, ServerConfig
from spatia.server.session import Outbox
from spatia.server.testing import running_server

W, H = 64, 48


def test_outbox_keeps_the_latest_frames_and_every_control_message():
    async def main():
        box = Outbox(frame_capacity=3)
        for i in range(10):
            box.put(("frame", i), is_frame=True)
            if i == 4:
                box.put(("stats", i))
        box.close()
        out = []
        while (item := await box.get()) is not None:
            out.append(item)
        return out, box.dropped

    out, dropped = asyncio.run(main())
    # reference: a deque of frames of maxlen 3, control messages never dropped, order kept
    assert out == [("stats", 4), ("frame", 7), ("frame", 8), ("frame", 9)] and dropped == 7


def test_slow_reader_gets_the_latest_frames_and_a_drop_count(tmp_path):
    limits = Limits(frame_queue=2)
    with running_server(ServerConfig(data_dir=tmp_path, port=0, limits=limits)) as st:
        with WorldClient(st.target) as c:
            c.create_scene("room", 0, W, H, world_id="slow")

        async def main():
            async with AsyncWorldClient(st.target) as ac:
                # raw 640x480 frames (~0.9 MB) fill the HTTP/2 windows after a few frames
                s = await ac.play("slow", clip=(4, 6, 2), max_pending_frames=32, width=640, height=480,
                                  encoding=pb.FRAME_ENCODING_RAW, record=False)
                await s.send(move_forward=0.5, dt_s=24 / 16)  # 24 frames
                await asyncio.sleep(6.0)  # not reading meanwhile
                frames = await s.close()
                return frames, s.stats

        frames, stats = asyncio.run(main())
    total = 24
    assert stats[-1].frames_dropped > 0
    assert len(frames) + stats[-1].frames_dropped == total
    assert frames[-1].session_frame == total - 1  # the newest frame always arrives
    assert [f.session_frame for f in frames] == sorted(f.session_frame for f in frames)


def test_pending_poses_beyond_the_limit_are_dropped_oldest_first(tmp_path):
    limits = Limits(max_pending_frames=8)
    # without collision: the 6.25 m walk would stop at the room's back wall (test_collision checks that)
    config = ServerConfig(data_dir=tmp_path, port=0, limits=limits, play_collision=False)
    with running_server(config) as st, WorldClient(st.target) as c:
        c.create_scene("room", 0, W, H, world_id="p")
        with c.play("p", clip=(8, 10, 2), record=False) as s:  # clip of 8 = limit of 8 pending
            s.send(move_forward=1.0, dt_s=100 / 16)  # 100 poses at once
            frames = [s.next_frame(timeout_s=60) for _ in range(8)]
        assert s.stats[-1].poses_dropped == 92
        # the frames kept are the last 8 poses: 92 / 16 s of walking at 1 m/s already behind the camera
        start = c.get_world("p").origin.c2w
        import numpy as np

        fwd = np.asarray(start).reshape(4, 4)[:3, 2]
        walked = (frames[0].c2w[:3, 3] - np.asarray(start).reshape(4, 4)[:3, 3]) @ fwd
        assert walked == pytest.approx(93 / 16, abs=1e-6)


def test_count_limits_name_the_limit(tmp_path):
    limits = Limits(max_worlds=2, max_sessions=1)
    with running_server(ServerConfig(data_dir=tmp_path, port=0, limits=limits)) as st, WorldClient(st.target) as c:
        c.create_scene("room", 0, W, H, world_id="a")
        c.create_scene("room", 1, W, H, world_id="b")
        with pytest.raises(WorldServiceError) as exc:
            c.create_scene("room", 2, W, H, world_id="c")
        assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_worlds" in exc.value.message
        with c.play("a", record=False):
            with pytest.raises(WorldServiceError) as exc:
                c.play("b", record=False)
            assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_sessions" in exc.value.message
        with c.play("b", record=False) as s:  # the slot is free again
            assert s.started.session_id
