"""Replay export with the overlay (keys held + camera path map): frame count and duration match the recording."""

from __future__ import annotations

import numpy as np
import pytest

from spatia.client.api import WorldClient
from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.server.config import ServerConfig
from spatia.server.recording import action_keys, export_video, summarize
from spatia.server.testing import running_server

W, H = 48, 32


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    with running_server(ServerConfig(data_dir=data, port=0)) as st, WorldClient(st.target) as c:
        wid = c.create_scene("room", seed=0, width=W, height=H).world_id
        with c.play(wid, fps=8.0, max_pending_frames=8) as s:  # every pose kept: a loaded machine skips none
            s.send(move_forward=1.0, dt_s=0.5)  # 4 frames at 8 fps
            s.send(move_right=-1.0, yaw_rate_rad_s=0.5, dt_s=0.25)  # 2 more
            rec_id = s.started.recording_id
    return data / "recordings" / f"{rec_id}.mcap"


def test_action_keys():
    assert action_keys(pb.Action(move_forward=1.0, move_right=-0.5, sprint=True)) == ("W", "A", "SHIFT")
    assert action_keys(pb.Action(move_up=-1.0, yaw_delta_rad=-0.1, pitch_rate_rad_s=0.2)) == ("C", "LOOK-L", "LOOK-UP")
    assert action_keys(pb.Action()) == ()


def test_overlay_export_frame_count_and_duration(recording, tmp_path):
    import imageio.v3 as iio

    summary = summarize(recording)
    assert summary.frames == 6
    plain, over = tmp_path / "plain.mp4", tmp_path / "over.mp4"
    assert export_video(recording, plain) == summary.frames
    assert export_video(recording, over, overlay=True) == summary.frames
    video = iio.imread(over)
    meta = iio.immeta(over)
    assert video.shape[0] == summary.frames  # every recorded frame, once
    assert meta["fps"] == pytest.approx(8.0)
    assert meta["duration"] == pytest.approx(summary.frames / 8.0, abs=0.13)  # frames / the session's fps
    factor = -(-480 // W)
    assert video.shape[1:] == (H * factor, W * factor, 3)
    base = np.repeat(np.repeat(iio.imread(plain), factor, axis=1), factor, axis=2).astype(int)
    diff = np.abs(video.astype(int) - base).mean(axis=(0, 3))  # [h, w]
    h, w = diff.shape
    side = max(48, min(h, w) // 4)
    assert diff[6:6 + side, w - side - 6:w - 6].mean() > 20  # the path map is drawn top-right
    assert diff[h - 20:h - 6, 8:60].mean() > 20  # the keys line bottom-left
    assert diff[h // 3:2 * h // 3, w // 4:w // 2].mean() < 12  # the picture itself is untouched


def test_replay_viewer_pause_seek_speed_step(recording, tmp_path, monkeypatch):
    import os

    monkeypatch.setitem(os.environ, "SDL_VIDEODRIVER", "dummy")
    import pygame

    from spatia.client.replay import ReplayViewer
    from spatia.cmd_replay import load_frames

    frames = load_frames(recording)
    assert len(frames) == summarize(recording).frames and frames[0].keys == ("W",)
    pygame.init()
    try:
        v = ReplayViewer(frames, fps=8.0, screen=pygame.Surface((192, 128)), screenshot_dir=tmp_path)
        v.open()

        def press(k):
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=k, mod=0, unicode="", scancode=0))
            assert v.tick(0.0)

        assert v.tick(0.25) and v.index == 2  # 0.25 s at 8 fps, 1x
        press(pygame.K_SPACE)
        assert v.paused and v.tick(1.0) and v.index == 2  # paused: time does not move it
        press(pygame.K_COMMA)
        assert v.index == 1
        press(pygame.K_PERIOD)
        assert v.index == 2 and v.paused
        press(pygame.K_HOME)
        assert v.index == 0
        press(pygame.K_RIGHT)  # +1 s = 8 frames, clamped to the end
        assert v.index == len(frames) - 1
        press(pygame.K_HOME)
        press(pygame.K_MINUS)
        press(pygame.K_SPACE)
        assert v.speed == 0.5 and v.tick(0.25) and v.index == 1  # half speed
        press(pygame.K_F12)
        assert list(tmp_path.glob("replay-*.png"))
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0, unicode="", scancode=0))
        assert v.tick(0.0) is False
    finally:
        pygame.quit()
