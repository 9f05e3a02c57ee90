"""Recording round trip: every Play session is recorded (MCAP, protobuf channels) unless it opts out;
ListRecordings / Replay stream it back with seek; ``spatia replay --export`` writes the video."""

import json

import grpc
import numpy as np
import pytest

from spatia.client.api import WorldClient, WorldServiceError
from spatia.server.config import ServerConfig
from spatia.server.recording import read_recording, summarize
from spatia.server.testing import running_server

W, H = 64, 48


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    with running_server(ServerConfig(data_dir=data, port=0)) as st, WorldClient(st.target) as c:
        c.create_scene("room", 0, W, H, world_id="r")
        with c.play("r", clip=(2, 4, 2), max_pending_frames=32, fps=8) as s:
            s.send(move_forward=1.0, dt_s=3 / 8)
            s.send(yaw_rate_rad_s=1.0, dt_s=3 / 8)
            frames = [s.next_frame(timeout_s=60) for _ in range(6)]
            rec_id = s.started.recording_id
        with c.play("r", record=False) as s:
            assert s.started.recording_id == ""
        recordings = c.list_recordings()
        replayed = list(c.replay(rec_id))
        seek = list(c.replay(rec_id, start_frame=4, speed=4.0))
        with pytest.raises(WorldServiceError) as exc:
            list(c.replay(rec_id, start_frame=99))
        yield {"data": data, "frames": frames, "rec_id": rec_id, "recordings": recordings, "replayed": replayed,
               "seek": seek, "out_of_range": exc.value.code}


def test_one_recording_per_recorded_session(played):
    (info,) = played["recordings"]
    assert info.recording_id == played["rec_id"] and info.world_id == "r" and info.complete
    assert info.frames == 6 and info.actions == 2 and info.end_unix_ns >= info.start_unix_ns


def test_replay_gives_back_the_played_frames(played):
    live, rep = played["frames"], played["replayed"]
    assert [f.frame_index for f in rep] == [f.frame_index for f in live]
    assert all(np.array_equal(a.rgb, b.rgb) and np.allclose(a.c2w, b.c2w) for a, b in zip(live, rep))
    assert [f.last_action_seq for f in rep] == [1, 1, 1, 2, 2, 2]
    assert [f.frame_index for f in played["seek"]] == [f.frame_index for f in live[4:]]
    assert played["out_of_range"] == grpc.StatusCode.OUT_OF_RANGE


def test_recording_holds_actions_poses_and_frames_with_timestamps(played):
    path = played["data"] / "recordings" / f"{played['rec_id']}.mcap"
    msgs = list(read_recording(path))
    assert msgs[0].topic == "/start" and msgs[0].message.world_id == "r" and msgs[0].message.fps == 8
    actions = [m.message for m in msgs if m.topic == "/action"]
    assert [a.seq for a in actions] == [1, 2] and actions[0].client_time_ns > 0
    times = [m.log_time_ns for m in msgs]
    assert times == sorted(times)
    assert sum(m.topic == "/stats" for m in msgs) >= 2


def test_truncated_recording_reads_up_to_the_cut(played, tmp_path):
    path = played["data"] / "recordings" / f"{played['rec_id']}.mcap"
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    s = summarize(cut)
    assert not s.complete and 0 < s.frames <= 6


def test_cli_replay_exports_a_video(played, tmp_path, capsys):
    import imageio.v3 as iio

    path = played["data"] / "recordings" / f"{played['rec_id']}.mcap"
    out = tmp_path / "out.mp4"
    import argparse

    from spatia import cmd_replay

    parser = argparse.ArgumentParser()
    cmd_replay.add_parser(parser.add_subparsers())
    assert cmd_replay.run(parser.parse_args(["replay", str(path), "--export", str(out), "--no-overlay"])) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 6 and summary["exported_frames"] == 6 and summary["complete"]
    video = iio.imread(out)
    assert video.shape == (6, H, W, 3)
    # lossy, but the picture is the played one
    assert np.abs(video.astype(int) - np.stack([f.rgb for f in played["frames"]]).astype(int)).mean() < 12
