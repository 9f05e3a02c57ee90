"""SpatiaWorldEnv: Gymnasium checker (in-process and remote), discrete variant, exploration reward, vector env,
the registered horizon (TimeLimit owns truncation), the lossless lock-step remote mode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import spatia.client  # noqa: F401  (registers the ids)
from spatia.client.api import WorldClient
from spatia.client.env import DISCRETE_ACTIONS, ExplorationReward, SpatiaWorldEnv, make_vector_env
from spatia.server.config import Limits, ServerConfig
from spatia.server.testing import running_server
from spatia.world.errors import InvalidInputError

W, H = 48, 32
SMALL = dict(width=W, height=H)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), port=0, limits=Limits(max_image_pixels=320 * 240))
    with running_server(config) as st:
        yield st


def test_registered_default_env_is_in_process_and_rgb():
    env = gym.make("SpatiaWorld-v0")
    try:
        assert env.unwrapped.remote is False
        assert env.observation_space.shape == (96, 128, 3)
        assert env.unwrapped.metadata["render_fps"] == 16
        assert "SpatiaWorldDiscrete-v0" in gym.registry
    finally:
        env.close()


def test_check_env_in_process_dict_observation():
    env = SpatiaWorldEnv(render_mode="rgb_array", observation="dict", **SMALL)
    check_env(env)
    obs, info = env.reset(seed=3)
    assert set(obs) == {"rgb", "depth_m", "pose"} and obs["depth_m"].dtype == np.float32
    assert (obs["depth_m"] > 0).mean() > 0.5  # the start view is in the memory
    np.testing.assert_array_equal(obs["pose"], info["pose"])
    env.close()


def test_horizon_is_registered_and_owned_by_time_limit():
    spec = gym.spec("SpatiaWorld-v0")
    assert spec.max_episode_steps == 200 and gym.spec("SpatiaWorldDiscrete-v0").max_episode_steps == 200
    env = gym.make("SpatiaWorld-v0", max_episode_steps=3, **SMALL)  # the argument overrides the registered 200
    assert env.spec.max_episode_steps == 3
    env.reset(seed=0)
    flags = [env.step(np.zeros(5, np.float32))[3] for _ in range(3)]
    assert flags == [False, False, True]
    env.close()
    bare = SpatiaWorldEnv(**SMALL)  # no TimeLimit: the env itself never cuts an episode
    bare.reset(seed=0)
    assert not any(bare.step(np.zeros(5, np.float32))[3] for _ in range(3))
    bare.close()


def test_forward_moves_along_view_and_truncates():
    env = gym.wrappers.TimeLimit(SpatiaWorldEnv(**SMALL), max_episode_steps=4)
    _, info0 = env.reset(seed=0)
    fwd = info0["pose"][:3, 2]
    for k in range(4):
        obs, reward, terminated, truncated, info = env.step(np.array([1, 0, 0, 0, 0], np.float32))
        assert not terminated and truncated == (k == 3)
    moved = info["position_m"] - info0["position_m"]
    # 4 frames at 16 fps, 1 m/s walking: 0.25 m straight ahead (level: the start camera looks level)
    np.testing.assert_allclose(moved, 0.25 * fwd, atol=1e-9)
    assert env.render() is None  # no render_mode
    env.close()


def test_discrete_turn_right_and_exploration_reward():
    env = gym.make("SpatiaWorldDiscrete-v0", **SMALL)
    assert env.action_space.n == len(DISCRETE_ACTIONS)
    _, info0 = env.reset(seed=1)
    turn_right = [n for n, _ in DISCRETE_ACTIONS].index("turn_right")
    total = 0.0
    for _ in range(3):
        _, reward, _, _, info = env.step(turn_right)
        # the reward is exactly the built-in function of the step's new voxels
        assert reward == pytest.approx(ExplorationReward()(info))
        assert info["new_memory_points"] >= 0
        total += reward
    assert info["yaw_rad"] == pytest.approx(3 * np.radians(90) / 16)
    assert info["memory_points"] > info0["memory_points"]  # turning uncovers new ground
    assert total == pytest.approx((info["memory_points"] - info0["memory_points"]) * 1e-3)
    with pytest.raises(InvalidInputError):
        env.step(len(DISCRETE_ACTIONS))
    env.close()


def test_pluggable_reward_and_bad_options():
    env = SpatiaWorldEnv(reward_fn=lambda info: -float(info["step"]), **SMALL)
    env.reset(seed=0)
    assert env.step(np.zeros(5, np.float32))[1] == -1.0
    with pytest.raises(InvalidInputError, match="unknown reset options"):
        env.reset(options={"scnee": "room"})
    with pytest.raises(InvalidInputError, match="needs a server"):
        env.reset(options={"world_id": "abc"})
    env.close()


def test_check_env_remote(server):
    env = SpatiaWorldEnv(render_mode="rgb_array", server=server.target, **SMALL)
    check_env(env)
    env.reset(seed=2, options={"scene": "house"})
    wid = env._backend.world_id
    obs, reward, *_ = env.step(np.array([1, 0, 0, 0, 0], np.float32))
    assert obs.shape == (H, W, 3) and reward > 0
    env.close()
    with WorldClient(server.target) as c:  # the env deletes the worlds it made
        assert wid not in {w.world_id for w in c.list_worlds()}


def test_remote_modes_and_in_process_walk_the_same_path(server):
    """Lock-step loses nothing: every step's frame and memory count equal the in-process env's and the
    Generate-per-step path's, over a walk that moves, turns and stands still."""
    envs = [SpatiaWorldEnv(**SMALL), SpatiaWorldEnv(server=server.target, **SMALL),
            SpatiaWorldEnv(server=server.target, remote_mode="generate", **SMALL)]
    assert envs[1].remote_mode == "lockstep" and envs[2].remote_mode == "generate"
    resets = [e.reset(seed=5)[0] for e in envs]
    for r in resets[1:]:
        np.testing.assert_array_equal(resets[0], r)  # same scene, same memory render
    walk = [np.array(a, np.float32) for a in ([0.5, -0.5, 0, 0.4, 0.1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0],
                                              [0, 0, 0, -1, 0], [0.3, 0.3, 0.5, 0.2, -0.3])]
    for act in walk:
        (oa, _, _, _, ia), *rest = [e.step(act) for e in envs]
        for ob, _, _, _, ib in rest:
            np.testing.assert_allclose(ia["pose"], ib["pose"])
            # a lock-step Play session must integrate and retrieve for every frame, as the in-process engine does
            # (server/session.py: keyframe_stride 1 and no reference reuse when options.lockstep)
            assert ia["memory_points"] == ib["memory_points"], "lock-step memory differs from in-process"
            np.testing.assert_array_equal(oa, ob)
    for e in envs:
        e.close()


def test_lockstep_collides_on_the_server_as_in_process(server):
    """Walked into the room's back wall (the first view saw it: an invented wall the camera heads at opens a doorway
    the frame shows, ``GeneratedView.open_space``): the server's lock-step session collides as the in-process env
    does (same poses), and the remote env reports it in ``info["collided"]``."""
    envs = [SpatiaWorldEnv(**SMALL), SpatiaWorldEnv(server=server.target, **SMALL)]
    for e in envs:
        e.reset(seed=0)
    hits = []
    for k in range(88):  # 1 m/s at 16 fps: the wall stops the body after ~5 m
        (_, _, _, _, ia), (_, _, _, _, ib) = [e.step(np.array([1, 0, 0, 0, 0], np.float32)) for e in envs]
        np.testing.assert_allclose(ia["pose"], ib["pose"], atol=1e-9)
        assert ia["collided"] == ib["collided"]
        hits.append(ia["collided"])
    assert not any(hits[:60]) and all(hits[-4:])
    for e in envs:
        e.close()


def test_interactive_play_frames_say_when_the_move_collided(server):
    """Served interactive Play (not lock-step): a frame says whether the move of its action was stopped by a
    surface (``Frame.collided``, what the player's HUD shows). W held (sprinting) from the room's first camera:
    free at first, then stopped short of the back wall (z = 6.48 m for seed 0), every frame after says so."""
    with WorldClient(server.target) as c:
        c.create_scene("room", seed=0, width=W, height=H, world_id="bump")
        with c.play("bump", clip=(1, 2, 1), fps=16, record=False, max_pending_frames=64) as s:
            seqs = [s.send(move_forward=1.0, sprint=True, dt_s=1 / 16) for _ in range(64)]
            frames = []
            while not frames or frames[-1].last_action_seq < seqs[-1]:
                frames.append(s.next_frame(timeout_s=60))
    flags = [f.collided for f in frames]  # (a slow clip may skip poses in between: the newest are shown)
    assert flags[0] is False and flags[-1] is True
    first = flags.index(True)
    assert all(flags[first:])  # held into the wall: blocked from then on
    z = [f.c2w[2, 3] for f in frames]
    # held where it stopped, to within a centimetre (a free sprinting step here is 0.16 m): the points in front of
    # it change between clips (which clips commit what depends on the machine's timing), and the contact moves with
    # them (seen: 10 um, and 4 mm on a clean clone in session 18)
    assert z[first - 1] < z[first] and z[-1] == pytest.approx(z[first], abs=1e-2) and 6.0 < z[-1] < 6.48


def test_lockstep_is_one_play_stream_without_saves_per_step(server, tmp_path):
    """The remote default runs one Play session per episode (recorded here, to count what went over it):
    exactly one frame per action, seq by seq, none dropped; the world is saved at the session's end, not per step."""
    with WorldClient(server.target) as c:
        env = SpatiaWorldEnv(client=c, record=True, **SMALL)
        env.reset(seed=0)
        wid = env._backend.world_id
        for _ in range(6):
            env.step(np.array([1, 0, 0, 0.5, 0], np.float32))
        env.reset(seed=1)  # ends the episode's stream (and deletes its world)
        recs = [r for r in c.list_recordings() if r.world_id == wid]
        env.close()
    assert len(recs) == 1  # one stream for the whole episode
    from spatia.server.recording import read_recording

    path = server.config.data_dir / "recordings" / f"{recs[0].recording_id}.mcap"
    frames = [m.message for m in read_recording(path) if m.topic == "/frame"]
    assert [f.last_action_seq for f in frames] == [1, 2, 3, 4, 5, 6]


def test_reset_from_image_in_process_and_remote(server):
    from spatia.world.camera import Intrinsics
    from spatia.world.scenes import make_scene

    scene = make_scene("room", 0)
    rgb, depth = scene.render(Intrinsics.from_fov(75.0, W, H), scene.start_pose())
    for kw in ({}, {"server": server.target}):
        env = SpatiaWorldEnv(**SMALL, **kw)
        obs, info = env.reset(seed=0, options={"image": rgb, "depth": depth})
        assert obs.shape == (H, W, 3) and info["memory_points"] > 0
        assert np.abs(obs.astype(int) - rgb.astype(int)).mean() < 1.0  # the memory shows the image back
        env.step(np.array([0, 0, 0, 1, 0], np.float32))
        env.close()


def test_a_photo_without_depth_makes_the_same_world_in_process_and_on_a_server(server):
    """A plain photo (no depth, no intrinsics) takes the photo layout path (model.fill.geometry.photo) in both
    backends, as ``spatia demo --image`` and CreateWorld do: the same memory and the same first frame."""
    from spatia.world.camera import Intrinsics
    from spatia.world.scenes import make_scene

    scene = make_scene("house", 0)
    pitch = np.eye(4)
    pitch[1:3, 1:3] = [[np.cos(0.26), np.sin(0.26)], [-np.sin(0.26), np.cos(0.26)]]  # 15 deg down: lines to measure
    rgb, _ = scene.render(Intrinsics.from_fov(75.0, 320, 180), scene.start_pose() @ pitch)
    seen = []
    for kw in ({}, {"server": server.target}, {"server": server.target, "remote_mode": "generate"}):
        env = SpatiaWorldEnv(width=320, height=180, observation="dict", action_type="continuous", **kw)
        obs, info = env.reset(seed=0, options={"image": rgb})
        start, points, up = info["pose"], info["memory_points"], env.unwrapped._backend.level_up()
        for _ in range(3):  # turning right: about the photo's measured up (``WorldInfo.level_up``) everywhere
            _, _, _, _, info = env.step(np.array([0.0, 0.0, 0.0, 1.0, 0.0], np.float32))
        seen.append((points, obs["depth_m"], start, info["pose"], up))
        env.close()
    (n_local, depth_local, start_local, turned_local, up), *remote = seen
    for n_remote, depth_remote, start_remote, turned_remote, up_remote in remote:
        assert n_local == n_remote
        np.testing.assert_allclose(depth_local, depth_remote, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(start_local, start_remote, atol=1e-9)
        np.testing.assert_allclose(up_remote, up, atol=1e-9)
        np.testing.assert_allclose(turned_local, turned_remote, atol=1e-6)
    # the turn kept the horizon: the camera's x axis makes the same angle with the measured up as before, which a
    # turn about the first camera's own y axis (15 degrees off that up) would not
    assert np.degrees(np.arccos(up @ -start_local[:3, 1])) > 10.0
    assert turned_local[:3, 0] @ up == pytest.approx(start_local[:3, 0] @ up, abs=1e-6)


def test_vector_env_three_worlds_one_channel(server):
    with WorldClient(server.target) as shared:
        venv = make_vector_env(3, client=shared, max_episode_steps=2, **SMALL)
        obs, infos = venv.reset(seed=0)
        assert obs.shape == (3, H, W, 3)
        assert all(e.unwrapped._backend.client is shared for e in venv.envs)  # one channel for the three worlds
        obs, rewards, term, trunc, infos = venv.step(np.tile([1, 0, 0, 0, 0], (3, 1)).astype(np.float32))
        assert obs.shape == (3, H, W, 3) and rewards.shape == (3,) and (rewards >= 0).all()
        assert (infos["step"] == 1).all() and (infos["memory_points"] > 0).all()
        ids = {e.unwrapped._backend.world_id for e in venv.envs}
        assert len(ids) == 3
        assert venv.step(np.zeros((3, 5), np.float32))[3].all()  # TimeLimit(2) in every sub-env
        venv.close()
    local = make_vector_env(3, **SMALL)
    obs, _ = local.reset(seed=0)
    assert obs.shape == (3, H, W, 3)
    local.step(np.zeros((3, 5), np.float32))
    local.close()
