"""``spatia export-rerun``: a world snapshot and Play recordings (v0 and v2, with memory clouds) written as Rerun
.rrd files and read back with rerun's own reader (``rerun.chunk.RrdReader``): the memory points, the camera poses
and the frames are the source's."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rerun")

from rerun.chunk import RrdReader  # noqa: E402

from spatia import cmd_export_rerun  # noqa: E402
from spatia.proto.spatia.v1 import world_pb2 as pb  # noqa: E402
from spatia.proto.spatia.v1.convert import pose_to_proto  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "v0"


def columns(path: Path) -> dict[str, dict[str, list]]:
    """entity path -> column name -> values (Python lists), over all chunks."""
    out: dict[str, dict[str, list]] = {}
    for chunk in RrdReader(path).store().stream():
        batch = chunk.to_record_batch()
        cols = out.setdefault(str(chunk.entity_path), {})
        for name in batch.schema.names:
            col = batch.column(name)
            if str(col.type).startswith("timestamp"):  # ns timestamps: as integers (no pandas needed)
                col = col.cast("int64")
            cols.setdefault(name, []).extend(col.to_pylist())
    return out


def export(src: Path, out: Path, *extra: str, capsys=None) -> dict:
    parser = argparse.ArgumentParser()
    cmd_export_rerun.add_parser(parser.add_subparsers())
    assert cmd_export_rerun.run(parser.parse_args(["export-rerun", str(src), str(out), *extra])) == 0
    return json.loads(capsys.readouterr().out) if capsys else {}


def test_world_snapshot_to_rrd(tmp_path, capsys):
    from spatia.world.state import World

    world = World.load(FIXTURES / "world_v0.spw")
    out = tmp_path / "w.rrd"
    stats = export(FIXTURES / "world_v0.spw", out, capsys=capsys)
    cols = columns(out)
    (points,) = cols["/world/memory"]["Points3D:positions"]
    assert len(points) == world.memory.num_points == stats["points"]
    assert np.allclose(np.sort(np.asarray(points), 0), np.sort(world.memory.positions, 0), atol=1e-5)
    poses = world.history.poses()
    assert np.allclose(np.asarray(cols["/world/camera"]["Transform3D:translation"]).reshape(-1, 3), poses[:, :3, 3], atol=1e-5)
    assert cols["/world/camera"]["frame"] == list(range(len(poses))) * 2  # Transform3D and Pinhole chunks
    (strip,) = cols["/world/camera_path"]["LineStrips3D:strips"]
    assert np.allclose(np.asarray(strip[0]), poses[:, :3, 3], atol=1e-5)
    assert len(cols["/world/camera/image"]["Image:buffer"]) == len(poses)


def test_recording_with_memory_clouds_to_rrd(tmp_path, capsys):
    import cv2

    from spatia.server.recording import Recorder

    rng = np.random.default_rng(0)
    path = tmp_path / "rec.mcap"
    rec = Recorder(path, "w", "s", pb.PlayStart(world_id="w", fps=30), origin_c2w=np.eye(4))
    cloud = (rng.normal(size=(500, 3)).astype(np.float32), rng.integers(0, 255, (500, 3), dtype=np.uint8))
    rec.write_memory(*cloud)
    poses, jpegs = [], []
    for i in range(5):
        c2w = np.eye(4)
        c2w[:3, 3] = [0.0, 0.0, 0.1 * i]
        rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
        rec.write("/frame", pb.Frame(frame_index=i + 1, clip_id=1, pose=pose_to_proto(c2w), width=32, height=24,
                                     encoding=pb.FRAME_ENCODING_JPEG, data=jpeg, last_action_seq=i + 1,
                                     intrinsics=pb.CameraIntrinsics(fx=30, fy=30, cx=16, cy=12, width=32, height=24)))
        poses.append(c2w)
        jpegs.append(jpeg)
    rec.write_memory(*cloud)
    rec.close()
    out = tmp_path / "r.rrd"
    stats = export(path, out, capsys=capsys)
    assert stats["frames"] == 5 and stats["memory_clouds"] == 2
    cols = columns(out)
    clouds = cols["/world/memory"]["Points3D:positions"]
    assert len(clouds) == 2 and np.allclose(np.asarray(clouds[0]), cloud[0])
    assert np.allclose(np.asarray(cols["/world/memory"]["Points3D:colors"][1]) & 0xFF, 255)  # packed RGBA: alpha
    assert np.allclose(np.asarray(cols["/world/camera"]["Transform3D:translation"]).reshape(-1, 3),
                       np.stack(poses)[:, :3, 3])
    assert cols["/world/camera"]["frame"] == [1, 2, 3, 4, 5] * 2  # Transform3D and Pinhole chunks
    blobs = cols["/world/camera/image"]["EncodedImage:blob"]
    assert [np.asarray(b, dtype=np.uint8).tobytes() for b in blobs] == jpegs  # the recorded JPEGs, as they are


def test_v0_recording_to_rrd_and_bad_input(tmp_path, capsys):
    from spatia.world.errors import NotFoundError

    out = tmp_path / "v0.rrd"
    stats = export(FIXTURES / "session_v0.mcap", out, "--max-frames", "3", capsys=capsys)
    assert stats["frames"] == 3 and stats["memory_clouds"] == 0
    assert len(columns(out)["/world/camera"]["Transform3D:translation"]) == 3
    with pytest.raises(NotFoundError):
        export(tmp_path / "missing.mcap", tmp_path / "x.rrd")
