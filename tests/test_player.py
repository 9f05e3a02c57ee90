"""The pygame player headless (SDL_VIDEODRIVER=dummy) against a real loopback server: keys and mouse move the
camera the right way, F12 writes a screenshot, the edit key removes memory, quitting closes the stream cleanly."""

from __future__ import annotations

import os
import time

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pytest  # noqa: E402

from spatia.client.api import WorldClient  # noqa: E402
from spatia.client.player import Player, PlayerConfig  # noqa: E402
from spatia.server.config import Limits, ServerConfig  # noqa: E402
from spatia.server.testing import running_server  # noqa: E402

W, H = 48, 32


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), port=0, limits=Limits(max_image_pixels=320 * 240))
    with running_server(config) as st, WorldClient(st.target, timeout_s=60) as c:
        yield c


@pytest.fixture
def player(client, tmp_path):
    pygame.init()
    wid = client.create_scene("room", seed=0, width=W, height=H).world_id
    # fps = the tick rate below (1/16 s a tick): one pose per action, so each key's motion ends with its action
    p = Player(client, wid, PlayerConfig(window=(192, 128), screenshot_dir=tmp_path / "shots", map_refresh_s=0.5,
                                         fps=16.0))
    p.open()
    yield p
    p.close()
    pygame.quit()


def key(kind, k):
    pygame.event.post(pygame.event.Event(kind, key=k, mod=0, unicode="", scancode=0))


def tick_until(p: Player, pred, timeout_s: float = 30.0, dt_s: float = 1 / 16) -> None:
    """Tick the player at ``dt_s`` of game time per tick until ``pred()``; each tick sends one action."""
    t0 = time.monotonic()
    while not pred():
        assert p.tick(dt_s)
        time.sleep(0.005)
        assert time.monotonic() - t0 < timeout_s, "the player showed no matching frame in time"


def play_keys(p: Player, down: list[int], ticks: int) -> np.ndarray:
    """Hold ``down`` keys for ``ticks`` ticks, release, wait for the frame of the last action; its pose."""
    for k in down:
        key(pygame.KEYDOWN, k)
    for _ in range(ticks):
        assert p.tick(1 / 16)
    last_seq = p.session._seq  # the last moving action (idle actions make no frames on the server)
    for k in down:
        key(pygame.KEYUP, k)
    tick_until(p, lambda: p.current is not None and p.current.last_action_seq >= last_seq)
    return p.current.c2w


def test_w_forward_a_left_mouse_right_turns_right(player):
    start = player.start_c2w
    fwd, right = start[:3, 2], start[:3, 0]
    c = play_keys(player, [pygame.K_w], 4)
    d = c[:3, 3] - start[:3, 3]
    assert d @ fwd > 0.15 and abs(d @ right) < 1e-6  # W: forward only
    c2 = play_keys(player, [pygame.K_a], 4)
    d2 = c2[:3, 3] - c[:3, 3]
    assert d2 @ right < -0.15 and abs(d2 @ fwd) < 1e-6  # A: left
    pygame.event.post(pygame.event.Event(pygame.MOUSEMOTION, pos=(100, 60), rel=(80, 0), buttons=(0, 0, 0)))
    c3 = play_keys(player, [], 1)
    # the mouse moving right turns right: the view direction swings towards the camera's right
    assert c3[:3, 2] @ c2[:3, 0] > 0.1
    np.testing.assert_allclose(c3[:3, 3], c2[:3, 3], atol=1e-9)  # looking does not move


def test_screenshot_edit_and_prompt(player, client):
    tick_until(player, lambda: player._map_points is not None)  # minimap filled from the memory
    key(pygame.KEYDOWN, pygame.K_F12)
    assert player.tick(1 / 16)
    shot = player.last_screenshot
    assert shot is not None and shot.is_file()
    img = pygame.image.load(str(shot))
    assert img.get_size() == (192, 128)
    before = client.get_world(player.world_id).stats.memory_points
    key(pygame.KEYDOWN, pygame.K_x)  # edit: remove what is in front of the camera
    tick_until(player, lambda: len(player.edits) == 1)
    assert player.edits[0] > 0
    # standing still generates nothing, so the memory changed by the edit alone
    assert client.get_world(player.world_id).stats.memory_points == before - player.edits[0]
    after = client.render(player.world_id, player.camera_c2w())
    h, w = after.valid.shape
    assert not after.valid[h // 2, w // 2]  # the surface the camera looked at is gone, visible at once
    key(pygame.KEYDOWN, pygame.K_t)
    assert player.tick(1 / 16) and player.prompt_mode
    for ch in "hi":
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=ord(ch), mod=0, unicode=ch, scancode=0))
    key(pygame.KEYDOWN, pygame.K_RETURN)
    assert player.tick(1 / 16)
    assert not player.prompt_mode and player.prompt.endswith("hi")


def test_quit_closes_stream_cleanly(client, tmp_path):
    pygame.init()
    wid = client.create_scene("room", seed=1, width=W, height=H).world_id
    p = Player(client, wid, PlayerConfig(window=(96, 64), screenshot_dir=tmp_path))
    p.open()
    key(pygame.KEYDOWN, pygame.K_w)
    tick_until(p, lambda: p.current is not None)
    pygame.event.post(pygame.event.Event(pygame.QUIT))
    assert p.tick(1 / 16) is False
    p.close()
    p.close()  # idempotent
    assert not p.session._reader.is_alive() and p.session.error is None
    assert all(not t.is_alive() for t in p._threads)
    recs = [r for r in client.list_recordings(wid) if r.recording_id == p.session.started.recording_id]
    assert len(recs) == 1 and recs[0].complete and recs[0].frames >= 1
    assert not client.get_world(wid).controlled  # the server released the world
    pygame.quit()


def test_spatia_play_embedded_server_starts_and_stops(tmp_path):
    """`spatia play` without --server: an embedded server for the game, stopped on exit; the world and the
    recording stay in the data dir."""
    from spatia.cli import main

    data = tmp_path / "data"
    rc = main(["play", "--scene", "room", "--width", "48", "--height", "32", "--window", "128x96",
               "--seconds", "1.5", "--data-dir", str(data), "--screenshots", str(tmp_path / "s")])
    assert rc == 0
    assert len(list((data / "worlds").glob("*/world.log"))) == 1  # the world stays, saved by the server (worlds/<id>/)
    assert list((data / "recordings").glob("*.mcap"))  # the (idle) session was recorded and closed
    assert main(["play", "--depth", str(tmp_path / "d.npy"), "--data-dir", str(data), "--seconds", "0"]) != 0


def test_the_start_view_shows_before_any_input(player):
    """Standing still generates nothing; the window still shows the world from where the camera stands."""
    assert player.current is None and player.still is not None
    player.show_hud = player.show_minimap = False
    player.draw()
    centre = player.screen.get_at((96, 64))[:3]
    assert sum(centre) > 0  # the room, not a black window
