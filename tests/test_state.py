import os

import numpy as np
import pytest

from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError, NotFoundError, SnapshotError
from spatia.world.state import World
from spatia.world import snapshot

CASES = __import__("pathlib").Path(__file__).resolve().parents[1] / "assets" / "cases"


def _world(box_room, **kw):
    K = Intrinsics.from_fov(70, 96, 64)
    rgb, depth = box_room(K, np.eye(4))
    return World.from_rgbd(rgb, depth, K, prompt="a box", world_id="w1", **kw), rgb


def test_world_from_rgbd_holds_first_frame(box_room):
    w, rgb = _world(box_room)
    assert w.memory.num_points > 1000 and len(w.history) == 1
    assert np.array_equal(w.history.get_rgb(0), rgb) or w.history.config.image_codec == "jpeg"
    assert w.history.get_voxel_keys(0).size > 0


def test_dynamic_pixels_stay_out_of_memory(box_room):
    K = Intrinsics.from_fov(70, 96, 64)
    rgb, depth = box_room(K, np.eye(4))
    dyn = np.zeros(depth.shape, bool)
    dyn[:, :48] = True
    w = World.from_rgbd(rgb, depth, K, dynamic=dyn)
    r = w.memory.render(K, np.eye(4))
    assert r.valid[:, 52:].mean() > 0.95 and r.valid[:, :40].mean() < 0.05


def test_snapshot_round_trip_renders_identically(tmp_path, box_room):
    w, _ = _world(box_room)
    size = w.save(tmp_path / "w.spw")
    assert size > 0 and [p.name for p in tmp_path.iterdir()] == ["w.spw"]  # no temp file left behind
    back = World.load(tmp_path / "w.spw")
    pose = np.eye(4)
    pose[:3, 3] = [0.2, -0.1, -0.3]
    a, b = w.memory.render(w.intrinsics, pose), back.memory.render(back.intrinsics, pose)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth_m, b.depth_m)
    assert back.info == w.info and back.intrinsics == w.intrinsics
    assert np.array_equal(back.history.get_rgb(0), w.history.get_rgb(0))


def test_snapshot_errors(tmp_path, box_room):
    with pytest.raises(NotFoundError):
        World.load(tmp_path / "none.spw")
    (tmp_path / "junk.spw").write_bytes(b"\x00\x01garbage")
    with pytest.raises(SnapshotError):
        World.load(tmp_path / "junk.spw")
    w, _ = _world(box_room)
    data = snapshot.dumps(w.to_payload(), version=99)
    (tmp_path / "future.spw").write_bytes(data)
    with pytest.raises(SnapshotError, match="version 99"):
        World.load(tmp_path / "future.spw")
    good = snapshot.dumps(w.to_payload())
    (tmp_path / "cut.spw").write_bytes(good[: len(good) // 2])
    with pytest.raises(SnapshotError):
        World.load(tmp_path / "cut.spw")


def test_failed_write_keeps_the_old_snapshot(tmp_path, box_room, monkeypatch):
    w, _ = _world(box_room)
    w.save(tmp_path / "w.spw")
    before = (tmp_path / "w.spw").read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        w.save(tmp_path / "w.spw")
    monkeypatch.undo()
    assert (tmp_path / "w.spw").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.spw"]


def test_world_from_case_reads_the_official_layout():
    w, c2w = World.from_case(CASES / "case_3", width=320)
    assert w.intrinsics.width == 320 and w.intrinsics.height == 180
    assert len(c2w) == w.info.case_trajectory_frames > 10
    assert np.allclose(c2w[0], np.eye(4))
    assert "APPROX" not in w.info.prompt and len(w.info.prompt) > 10
    # case 3's mask marks a dynamic entity: those pixels are not in the memory
    r = w.memory.render(w.intrinsics, np.eye(4))
    assert 0.3 < r.valid.mean() < 0.999


def test_bad_world_inputs(tmp_path, box_room):
    K = Intrinsics.from_fov(70, 96, 64)
    rgb, depth = box_room(K, np.eye(4))
    with pytest.raises(InvalidInputError):
        World.from_rgbd(rgb, np.zeros_like(depth), K)  # no geometry at all
    with pytest.raises(InvalidInputError):
        World.from_rgbd(rgb, depth[:10], K)
    with pytest.raises(InvalidInputError):
        World.from_rgbd(rgb, depth, K, dynamic=np.zeros((3, 3), bool))
    with pytest.raises(NotFoundError):
        World.from_case(tmp_path / "nope")


def test_streamed_save_writes_exactly_the_packed_snapshot(tmp_path):
    w = World.from_scene("room", 0, 320, 240)  # large enough for values written straight from their buffers
    assert any(len(v["zstd"]) >= 1 << 16 for v in snapshot._encode(w.memory.to_arrays()).values())
    path = tmp_path / "w.spw"
    size = w.save(path)
    assert path.read_bytes() == snapshot.dumps(w.to_payload()) and size == path.stat().st_size
    back = World.load(path)
    np.testing.assert_array_equal(back.memory.voxel_keys, w.memory.voxel_keys)
