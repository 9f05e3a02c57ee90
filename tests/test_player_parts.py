"""Player parts without a server: key mapping and config files, the jitter buffer, the PLY reader, the minimap."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spatia.client.hud import HudState, MapFrame, heading_rad, minimap_image, read_ply_points
from spatia.client.jitter import JitterBuffer, JitterConfig
from spatia.client.keymap import KeyMap, load_keymap
from spatia.world.actions import ActionIntegrator
from spatia.world.errors import InvalidInputError


def test_default_keys_move_the_right_way():
    km = KeyMap()
    integ = ActionIntegrator(np.eye(4))
    integ.step(km.action({"w"}, 0.5))
    assert integ.position[2] == pytest.approx(0.5)  # W: +z forward (OpenCV camera, identity pose)
    integ.step(km.action({"a"}, 0.5))
    assert integ.position[0] == pytest.approx(-0.5)  # A: -x left
    a = km.action(set(), 1 / 30, mouse_dx_px=100)
    assert a.yaw_delta_rad > 0  # mouse right turns right (world.actions: yaw > 0 turns right)
    assert km.action({"space"}, 0.1).move_up == 1.0 and km.action({"c"}, 0.1).move_up == -1.0
    assert km.action({"left shift", "w"}, 0.1).sprint
    assert km.action({"right"}, 0.1).yaw_rate_rad_s == pytest.approx(math.radians(90))
    assert km.action({"up"}, 0.1).pitch_rate_rad_s > 0 and km.action(set(), 0.1, mouse_dy_px=-5).pitch_delta_rad > 0
    stick = km.action(set(), 0.1, stick=(0.05, -1.0, 0.5, 0.0))  # left stick pushed up; x inside the deadzone
    assert stick.move_forward == 1.0 and stick.move_right == 0.0 and stick.yaw_rate_rad_s > 0


def test_keymap_config_json_and_toml(tmp_path):
    j = tmp_path / "k.json"
    j.write_text(json.dumps({"keys": {"forward": ["i", "W"]}, "mouse": {"invert_y": True}}))
    km = load_keymap(j)
    assert km.action({"i"}, 0.1).move_forward == 1.0 and km.action({"w"}, 0.1).move_forward == 1.0
    assert km.action(set(), 0.1, mouse_dy_px=-5).pitch_delta_rad < 0  # inverted
    t = tmp_path / "k.toml"
    t.write_text('look_rate_deg_s = 45\n[keys]\nback = "k"\n[gamepad]\ndeadzone = 0.3\n')
    km = load_keymap(t)
    assert km.action({"k"}, 0.1).move_forward == -1.0 and km.deadzone == 0.3
    assert km.look_rate_rad_s == pytest.approx(math.radians(45))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"keys": {"fly": "f"}}))
    with pytest.raises(InvalidInputError, match="unknown key bindings"):
        load_keymap(bad)
    with pytest.raises(InvalidInputError, match="not found"):
        load_keymap(tmp_path / "missing.toml")


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_jitter_buffer_paces_bursts_and_marks_stale():
    clock = FakeClock()
    buf = JitterBuffer(JitterConfig(fps=10, target_depth=2, capacity=8, max_delay_s=0.3, stale_after_s=1.0), clock)
    assert buf.stale() and buf.pop() is None
    buf.push("a")
    assert buf.pop() is None  # one frame, not waited long: hold it to absorb jitter
    clock.t += 0.31
    assert buf.pop() == "a"  # a lone frame is released after max_delay_s
    for f in "bcd":  # a burst
        buf.push(f)
    assert buf.pop() is None  # paced: the next release is one period (0.1 s) after the last
    released = []
    for _ in range(20):  # 0.5 s
        clock.t += 0.025
        if (f := buf.pop()) is not None:
            released.append((f, round(clock.t, 3)))
    assert [f for f, _ in released] == ["b", "c", "d"]
    gaps = np.diff([t for _, t in released])
    assert np.all(gaps >= 0.1 - 1e-9) and np.all(gaps <= 0.125 + 1e-9)  # one frame per period
    assert not buf.stale()
    clock.t += 2.0
    assert buf.stale()
    for i in range(12):
        buf.push(i)
    assert len(buf) == 8 and buf.dropped == 4  # latest wins


def test_ply_reader_matches_memory(tmp_path):
    from spatia.world.memory import SpatialMemory

    mem = SpatialMemory()
    rng = np.random.default_rng(0)
    pts = rng.uniform(-2, 2, (500, 3))
    cols = rng.integers(0, 256, (500, 3), dtype=np.uint8)
    mem.insert(pts, cols)
    path = tmp_path / "m.ply"
    mem.save_ply(path)
    xyz, rgb = read_ply_points(path.read_bytes())
    ref = SpatialMemory.load_ply(path)
    assert len(xyz) == mem.num_points == ref.num_points
    a = np.lexsort(xyz.T)
    ref_xyz = ref.positions if hasattr(ref, "positions") else ref._positions64()
    b = np.lexsort(np.asarray(ref_xyz).T)
    np.testing.assert_allclose(xyz[a], np.asarray(ref_xyz)[b], atol=1e-9)
    assert rgb.dtype == np.uint8 and rgb.shape == (len(xyz), 3)
    with pytest.raises(InvalidInputError):
        read_ply_points(b"not a ply")


def _minimap_reference(points, colors, trail, c2w, frame, size_px, metres_across, head_clearance_m):
    """Point by point, the obvious way (no trail / arrow): the slow reference of ``minimap_image``'s points."""
    img = np.full((size_px, size_px, 3), 24, np.uint8)
    c = size_px / 2.0
    s = size_px / metres_across
    order = sorted(range(len(points)), key=lambda i: float((points[i] - c2w[:3, 3]) @ frame.up))
    for i in order:
        d = points[i] - c2w[:3, 3]
        if d @ frame.up >= head_clearance_m:
            continue
        u, v = int(c + (d @ frame.right) * s), int(c - (d @ frame.forward) * s)
        if 0 <= u < size_px and 0 <= v < size_px:
            img[v, u] = colors[i]
    return img


def test_minimap_matches_reference_and_orientation():
    origin = np.eye(4)  # OpenCV: up = -y, forward = +z, right = +x
    frame = MapFrame.from_origin(origin)
    np.testing.assert_allclose(frame.right, [1, 0, 0])
    rng = np.random.default_rng(1)
    pts = rng.uniform(-6, 6, (3000, 3))
    cols = rng.integers(0, 256, (3000, 3), dtype=np.uint8)
    c2w = np.eye(4)
    c2w[:3, 3] = [0.5, 0.0, -1.0]
    img = minimap_image(pts, cols, np.zeros((0, 3)), c2w, frame, size_px=64, metres_across=16.0)
    ref = _minimap_reference(pts, cols, [], c2w, frame, 64, 16.0, 0.3)
    mask = np.ones((64, 64), bool)  # the heading arrow and centre marker are drawn over the points
    mask[20:36, 28:36] = False
    np.testing.assert_array_equal(img[mask], ref[mask])
    # a point 4 m ahead of the camera lands above the centre; 4 m to the right lands right of it
    one = minimap_image(np.array([[0.5, 1.0, 3.0], [4.5, 1.0, -1.0]]), np.array([[0, 255, 0], [0, 0, 255]], np.uint8),
                        np.zeros((0, 3)), c2w, frame, size_px=64, metres_across=16.0)
    assert (one[16, 32] == [0, 255, 0]).all() and (one[32, 48] == [0, 0, 255]).all()
    turned = c2w.copy()
    turned[:3, :3] = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # yaw 90 deg right: forward = +x
    assert heading_rad(turned, frame) == pytest.approx(math.pi / 2)
    hud = HudState(world_id="w1", c2w=c2w, memory_points=1234, recording=True, latency_ms=85.0)
    text = "\n".join(hud.lines())
    assert "w1" in text and "1,234" in text and "REC" in text and "85 ms" in text
    assert "BLOCKED" not in text
    assert "BLOCKED" in "\n".join(HudState(world_id="w1", c2w=c2w, collided=True).lines())
