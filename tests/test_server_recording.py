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


# ---- Foxglove schemas, the frame tree, point clouds, repair (format version 2) -----------------------------


def _raw_messages(path):
    """(topic, schema name, decoded message) through mcap's indexed reader with the protobuf decoder."""
    from mcap.reader import make_reader
    from mcap_protobuf.decoder import DecoderFactory

    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        return [(ch.topic, schema.name, msg) for schema, ch, _, msg in reader.iter_decoded_messages()]


def _matrix_of(q) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()


def test_frames_are_stored_once_as_foxglove_compressed_images(played):
    path = played["data"] / "recordings" / f"{played['rec_id']}.mcap"
    msgs = _raw_messages(path)
    images = [m for t, s, m in msgs if t == "/camera/image"]
    metas = [m for t, s, m in msgs if t == "/frame"]
    assert {s for t, s, _ in msgs if t == "/camera/image"} == {"foxglove.CompressedImage"}
    assert len(images) == len(metas) == 6 and all(m.data == b"" for m in metas)  # bytes stored once
    assert all(i.format == "jpeg" and i.frame_id == "camera" for i in images)
    assert [bytes(i.data) for i in images] == [f.raw.data for f in played["frames"]]
    assert [m.last_action_seq for m in metas] == [1, 1, 1, 2, 2, 2]
    (calib,) = [m for t, s, m in msgs if t == "/camera/calibration"]
    K = played["frames"][0].raw.intrinsics
    assert (calib.width, calib.height) == (W, H) and list(calib.K) == [K.fx, 0, K.cx, 0, K.fy, K.cy, 0, 0, 1]


def test_frame_tree_is_z_up_in_foxglove(played):
    """map (z-up) <- world (y-down) <- camera: composed from the recorded transforms, the first camera looks along
    map +x with its up on map +z, and each camera transform is the frame's c2w."""
    path = played["data"] / "recordings" / f"{played['rec_id']}.mcap"
    msgs = _raw_messages(path)
    (tf,) = [m for t, s, m in msgs if t == "/tf"]
    assert (tf.parent_frame_id, tf.child_frame_id) == ("map", "world")
    cams = [m for t, s, m in msgs if t == "/camera/transform"]
    assert len(cams) == 6 and {(c.parent_frame_id, c.child_frame_id) for c in cams} == {("world", "camera")}
    map_R_world = _matrix_of(tf.rotation)
    for cam, f in zip(cams, played["frames"]):
        assert np.allclose(_matrix_of(cam.rotation), f.c2w[:3, :3], atol=1e-9)
        assert np.allclose([cam.translation.x, cam.translation.y, cam.translation.z], f.c2w[:3, 3])
    first = played["frames"][0].c2w  # the session starts at the world's origin: its first frame turned nothing
    map_R_cam = map_R_world @ first[:3, :3]
    assert np.allclose(map_R_cam @ [0, 0, 1], [1, 0, 0], atol=1e-6)  # optical z (forward) -> map +x
    assert np.allclose(map_R_cam @ [0, -1, 0], [0, 0, 1], atol=1e-6)  # image up (-y) -> map +z
    assert np.allclose(map_R_cam @ [1, 0, 0], [0, -1, 0], atol=1e-6)  # image right -> map -y (y = left)


def test_quaternion_matches_the_reference():
    from scipy.spatial.transform import Rotation

    from spatia.server.recording import map_from_world, quaternion_xyzw

    rots = Rotation.random(200, random_state=0).as_matrix()
    rots = np.concatenate([rots, [np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])]])
    for R in rots:
        q = quaternion_xyzw(R)
        assert np.allclose(Rotation.from_quat(q).as_matrix(), R, atol=1e-9) and q[3] >= 0
    M = map_from_world(np.eye(4))
    assert np.allclose(M, [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]) and np.isclose(np.linalg.det(M), 1.0)


def test_memory_point_clouds_at_start_and_end(played):
    from spatia.server.recording import MAX_CLOUD_POINTS, cloud_points

    path = played["data"] / "recordings" / f"{played['rec_id']}.mcap"
    clouds = [(s, m) for t, s, m in _raw_messages(path) if t == "/memory"]
    assert len(clouds) == 2 and {s for s, _ in clouds} == {"foxglove.PointCloud"}
    (start, end) = (cloud_points(m) for _, m in clouds)
    assert 0 < len(start[0]) <= len(end[0]) <= MAX_CLOUD_POINTS
    assert clouds[0][1].frame_id == "world" and clouds[0][1].point_stride == 16
    assert np.isfinite(end[0]).all() and end[1].dtype == np.uint8 and end[1].std() > 0


def test_downsample_memory_is_an_even_subset():
    from spatia.server.recording import downsample_memory

    class Mem:
        positions = np.arange(3000 * 3, dtype=np.float32).reshape(3000, 3)
        colors = (np.arange(3000 * 3) % 256).astype(np.uint8).reshape(3000, 3)

    p, c = downsample_memory(Mem, max_points=500)
    rows = (p[:, 0] / 3).astype(int)
    assert len(p) == 500 and len(set(rows)) == 500 and np.array_equal(c, Mem.colors[rows])
    assert rows.min() < 300 and rows.max() > 2700  # spread over the whole memory
    assert np.all(np.diff(rows) >= 5) and np.all(np.diff(rows) <= 7)  # evenly: every 6th point
    p2, _ = downsample_memory(Mem, max_points=5000)
    assert len(p2) == 3000


def test_v0_recording_still_replays():
    from pathlib import Path

    from spatia.proto.spatia.v1.convert import decode_frame
    from spatia.server.recording import recorded_frames

    path = Path(__file__).parent / "fixtures" / "v0" / "session_v0.mcap"
    s = summarize(path)
    frames = [f for _, f in recorded_frames(path)]
    assert s.frames == len(frames) > 0 and s.complete
    assert decode_frame(frames[-1]).shape == (frames[-1].height, frames[-1].width, 3)


def test_cut_recording_replays_as_far_as_it_goes_and_repair_makes_it_seekable(played, tmp_path, capsys):
    import argparse

    from mcap.reader import make_reader

    from spatia import cmd_replay
    from spatia.server.recording import recorded_frames, repair

    path = played["data"] / "recordings" / f"{played['rec_id']}.mcap"
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    for fraction in np.arange(0.95, 0.05, -0.025):  # a cut that loses some frames (the clouds are large)
        cut.write_bytes(data[: int(len(data) * fraction)])
        partial = [f for _, f in recorded_frames(cut)]
        if 0 < len(partial) < 6:
            break
    assert 0 < len(partial) < 6 and all(len(f.data) > 0 for f in partial)  # images joined back
    parser = argparse.ArgumentParser()
    cmd_replay.add_parser(parser.add_subparsers())
    assert cmd_replay.run(parser.parse_args(["replay", str(cut), "--export", str(tmp_path / "cut.mp4"),
                                             "--no-overlay"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exported_frames"] == len(partial) and not out["complete"]
    with open(cut, "rb") as f:
        with pytest.raises(Exception):  # no summary / footer: the indexed (seeking) reader gives up
            list(make_reader(f).iter_messages())
    assert cmd_replay.run(parser.parse_args(["replay", str(cut), "--repair"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["repaired"]["frames"] == len(partial) and out["complete"]
    with open(cut, "rb") as f:
        reader = make_reader(f)
        assert reader.get_summary() is not None
        assert sum(1 for _, ch, _ in reader.iter_messages(topics=["/frame"])) == len(partial)
    assert [bytes(f.data) for _, f in recorded_frames(cut)] == [bytes(f.data) for f in partial]


def test_replay_rpc_streams_a_cut_recording_as_far_as_it_goes(played, tmp_path):
    from spatia.server.recording import recorded_frames

    path = played["data"] / "recordings" / f"{played['rec_id']}.mcap"
    data = path.read_bytes()
    for fraction in np.arange(0.95, 0.05, -0.025):  # a cut that loses some frames
        cut = data[: int(len(data) * fraction)]
        (tmp_path / "probe.mcap").write_bytes(cut)
        n = sum(1 for _ in recorded_frames(tmp_path / "probe.mcap"))
        if 0 < n < 6:
            break
    rec_dir = tmp_path / "data" / "recordings"
    rec_dir.mkdir(parents=True)
    (rec_dir / "r.cut.mcap").write_bytes(cut)
    with running_server(ServerConfig(data_dir=tmp_path / "data", port=0)) as st, WorldClient(st.target) as c:
        (info,) = c.list_recordings()
        frames = list(c.replay("r.cut"))
        tail = list(c.replay("r.cut", start_frame=n - 1))
    assert not info.complete and info.frames == n
    assert [f.frame_index for f in frames] == [f.frame_index for f in played["frames"][:n]]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(frames, played["frames"]))
    assert [f.frame_index for f in tail] == [frames[-1].frame_index]


def test_the_end_cloud_and_the_close_run_after_the_world_is_released(tmp_path, monkeypatch):
    """Issue 13: the end-of-session point cloud is packed and the recording closed off the session's finish path.
    Packing on the closer is held until the test lets it go: meanwhile the world is already released and the file
    not yet complete; ListRecordings then waits for the close in flight and lists it complete."""
    import threading
    import time

    from spatia.server import recording

    gate, entered = threading.Event(), threading.Event()
    real = recording.point_cloud

    def held(points, colors, stamp_ns):
        if threading.current_thread().name.startswith("recording-closer"):
            entered.set()
            assert gate.wait(30)
        return real(points, colors, stamp_ns)

    monkeypatch.setattr(recording, "point_cloud", held)
    with running_server(ServerConfig(data_dir=tmp_path, port=0)) as st, WorldClient(st.target) as c:
        c.create_scene("room", 0, W, H, world_id="e")
        with c.play("e", clip=(2, 4, 2), max_pending_frames=32) as s:
            s.send(move_forward=1.0, dt_s=2 / 16)
            assert s.next_frame(timeout_s=60) is not None
            rec_id = s.started.recording_id
        try:
            assert entered.wait(30)  # the closer is packing the end cloud ...
            deadline = time.monotonic() + 20
            while c.get_world("e").controlled and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not c.get_world("e").controlled  # ... and the world is free already
            assert not summarize(tmp_path / "recordings" / f"{rec_id}.mcap").complete
        finally:
            gate.set()
        (info,) = c.list_recordings("e")
        assert info.complete and info.frames >= 1
    clouds = [m for t, _, m in _raw_messages(tmp_path / "recordings" / f"{rec_id}.mcap") if t == "/memory"]
    assert len(clouds) == 2  # start and end, both in the finished file


def test_the_recording_closer_is_bounded():
    """At most ``max_pending`` closes in flight: one more ``submit`` waits for room; ``shutdown`` drains."""
    import threading
    import time
    from pathlib import Path

    from spatia.server.recording import RecordingCloser

    gate = threading.Event()
    closed = []

    class FakeRecorder:
        def __init__(self, name):
            self.path = Path(f"/nonexistent/{name}.mcap")

        def write_memory_now(self, points, colors):
            raise AssertionError("no cloud given")

        def close(self):
            assert gate.wait(30)
            closed.append(self.path.stem)

    closer = RecordingCloser(max_pending=1)
    first = closer.submit(FakeRecorder("a"))
    assert closer.pending == 1 and not closer.wait(Path("/nonexistent/a.mcap"), timeout_s=0.05)
    t0 = time.monotonic()
    second = threading.Thread(target=closer.submit, args=(FakeRecorder("b"),))
    second.start()
    second.join(timeout=0.3)
    assert second.is_alive()  # waiting for room, not queued without bound
    gate.set()
    second.join(timeout=30)
    assert not second.is_alive() and first.done() and time.monotonic() - t0 >= 0.3
    assert closer.shutdown(timeout_s=30) and closed == ["a", "b"] and closer.pending == 0
    closer.submit(FakeRecorder("c"))  # after shutdown: closed inline
    assert closed == ["a", "b", "c"]
