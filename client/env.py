"""``SpatiaWorldEnv``: a Spatia world as a Gymnasium 1.x environment (ids ``SpatiaWorld-v0``,
``SpatiaWorldDiscrete-v0``; importing ``client`` registers them).

One ``step`` = one action held for ``1 / fps`` seconds = one generated frame, the same path a Play session takes
(``world.actions.ActionIntegrator`` -> pose -> ``Engine`` clip -> memory update). Back ends, same behaviour:

- in-process (default): ``world.state.World`` + ``world.engine.Engine`` + ``model.make_generator(generator)``,
  no network; needs the ``[server]`` extra;
- remote (``server="host:port"`` or a shared ``client=WorldClient``), slim: only the core dependencies.
  ``remote_mode="lockstep"`` (default): one Play stream per episode in lock-step (``PlayStart.lockstep``): each
  step sends its action and reads exactly that action's frame (``last_action_seq``) and the clip's stats (memory
  points for the reward); nothing is skipped or dropped and the world is not saved per step. ``"generate"``: one
  ``Generate`` RPC per step for the step's pose plus a ``GetWorld`` (the old path; each Generate call saves the
  world: ~6x slower, see benchmarks/gym.py). The pose is integrated here too, so every back end walks
  identically. The env deletes the worlds it created when it resets or closes. Several envs may share one
  ``WorldClient`` = one gRPC channel (``make_vector_env``).

Observation: ``rgb`` uint8 [H, W, 3], or with ``observation="dict"`` a Dict of ``rgb``, ``depth_m`` (float32
[H, W] z-depth of the spatial memory at the pose, metres, 0 = no point) and ``pose`` (float64 [4, 4] c2w, world
frame, OpenCV camera axes). The reset observation is the memory rendered at the start pose (identical in both
back ends; a fresh world's memory is its conditioning image lifted to 3D, so it shows that image).

Collision (``ControlConfig.collision``, on by default): the camera is a sphere of ``ControlConfig.body_radius_m``
that the world's memory points stop (``world.collision``): a move into a wall is clipped and slides along it;
``info["collided"]`` says whether the step's move was. In-process the env's integrator collides with the world;
in lock-step the server's session does (``ServerConfig.play_collision``) and the env takes the frame's pose;
``remote_mode="generate"`` sends poses as given and does not collide (a warning says so).

Reward: pluggable ``reward_fn(info) -> float``; the built-in ``ExplorationReward`` pays for newly observed
memory voxels (growth of ``SpatialMemory.num_points``: one point per 5 cm voxel), the exploration signal of the
issue. Nothing terminates; the horizon is Gymnasium's: the ids are registered with ``max_episode_steps=200``, so
``gymnasium.make`` wraps the env in ``TimeLimit``, which owns truncation (``gymnasium.make(id,
max_episode_steps=N)`` changes it). A ``SpatiaWorldEnv`` built directly never truncates; wrap it in
``gymnasium.wrappers.TimeLimit``.
"""

from __future__ import annotations

import math
import queue
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from spatia.world.actions import Action, ActionIntegrator, ControlConfig
from spatia.world.errors import InvalidInputError

# Discrete actions: index -> (move_forward, move_right, move_up, yaw sign, pitch sign)
DISCRETE_ACTIONS: tuple[tuple[str, tuple[float, float, float, float, float]], ...] = (
    ("noop", (0, 0, 0, 0, 0)),
    ("forward", (1, 0, 0, 0, 0)),
    ("back", (-1, 0, 0, 0, 0)),
    ("left", (0, -1, 0, 0, 0)),
    ("right", (0, 1, 0, 0, 0)),
    ("turn_left", (0, 0, 0, -1, 0)),
    ("turn_right", (0, 0, 0, 1, 0)),
    ("look_up", (0, 0, 0, 0, 1)),
    ("look_down", (0, 0, 0, 0, -1)),
    ("up", (0, 0, 1, 0, 0)),
    ("down", (0, 0, -1, 0, 0)),
)


@dataclass(frozen=True)
class ExplorationReward:
    """Reward = newly observed memory voxels this step x ``per_voxel`` (the memory keeps one point per voxel, so
    point growth is voxel growth). Edits and dynamic exclusion can shrink the memory; shrinking is not punished."""

    per_voxel: float = 1e-3  # a 128x96 frame looking at new ground adds a few hundred voxels -> ~0.1-1 per step

    def __call__(self, info: dict[str, Any]) -> float:
        return max(0, int(info["new_memory_points"])) * self.per_voxel


RewardFn = Callable[[dict[str, Any]], float]

MAX_EPISODE_STEPS = 200  # the registered horizon (TimeLimit); gymnasium.make(id, max_episode_steps=N) overrides it


class _LocalBackend:
    """The world core in this process: one ``World`` + ``Engine`` per episode."""

    server_c2w = None  # no server pose: the env's own integrator collides with the world

    def __init__(self, generator: str, generator_kwargs: dict[str, Any]) -> None:
        from spatia.model import make_generator

        try:
            self.generator = make_generator(generator, **generator_kwargs)
        except ModuleNotFoundError as exc:  # a slim install (the core only) has the remote env, not this one
            raise ModuleNotFoundError(
                f"the in-process env needs the world core ({exc.name} is missing): pip install 'spatia-world[server]',"
                " or use a server: SpatiaWorldEnv(server='host:port')", name=exc.name) from exc
        self.engine = None

    def new_world(self, options: dict[str, Any], seed: int, width: int, height: int, fov_deg: float, prompt: str):
        """Start an episode's world; returns its origin c2w [4, 4]."""
        from spatia.world.actions import ClipConfig
        from spatia.world.engine import Engine, EngineConfig
        from spatia.world.state import World

        if "world_id" in options:
            raise InvalidInputError("options['world_id'] needs a server (SpatiaWorldEnv(server=...)); "
                                    "in-process use options={'world': World}")
        if "world" in options:
            world = options["world"]
        elif "image" in options:
            from spatia.model.fill.geometry.photo import photo_depth_estimator
            from spatia.world.images import load_depth, load_rgb

            rgb = options["image"] if isinstance(options["image"], np.ndarray) else load_rgb(options["image"])
            depth = options.get("depth")
            if depth is not None and not isinstance(depth, np.ndarray):
                depth = load_depth(depth)
            # no depth: the photo path every other way in takes (a server's CreateWorld, ``spatia demo --image``)
            estimator = photo_depth_estimator() if depth is None else None
            world = World.from_image(rgb, depth_m=depth, depth_estimator=estimator, prompt=prompt)
        else:
            world = World.from_scene(options.get("scene", "room"), seed, width, height, fov_deg=fov_deg, prompt=prompt)
        # One frame per step: a clip of one new frame continuing from one preceding frame (the Play loop's rule).
        self.engine = Engine(world, self.generator, EngineConfig(clip=ClipConfig(1, 2, 1)))
        return world.current_c2w.copy() if world.current_c2w is not None else world.origin_c2w.copy()

    @property
    def intrinsics(self):
        return self.engine.world.intrinsics

    def collider(self):
        """The world's collider for this engine's walking camera (``Engine.collider``)."""
        return self.engine.collider()

    def level_up(self) -> np.ndarray:
        """``[3]`` world frame: what the walking camera's turns keep level (``World.level_up``)."""
        return self.engine.world.level_up

    def step(self, action: Action, c2w: np.ndarray, prompt: str | None, seed: int) -> tuple[np.ndarray, int]:
        """The frame at ``c2w`` (the pose after ``action``) and the memory's points after its update."""
        frames = list(self.engine.generate_clip(c2w[None], prompt, seed))  # pulling all runs the memory update
        return frames[-1].rgb, self.memory_points()

    def render(self, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = self.engine.world.memory.render(self.intrinsics, c2w)
        return r.rgb, r.depth_m

    def memory_points(self) -> int:
        return int(self.engine.world.memory.num_points)

    def close(self) -> None:
        self.engine = None


def _image_request(image, depth, prompt: str):
    """A ``CreateWorldRequest`` from an image (path, bytes or uint8 [H, W, 3]) and optional depth (path, bytes
    or float32 [H, W] metres, sent as .npy)."""
    import io

    from spatia.proto.spatia.v1 import world_pb2 as pb
    from spatia.world.images import encode_png

    def as_bytes(x, encode):
        if isinstance(x, np.ndarray):
            return encode(x)
        if isinstance(x, (bytes, bytearray)):
            return bytes(x)
        from pathlib import Path

        path = Path(x)
        if not path.is_file():
            raise InvalidInputError(f"file not found: {path}")
        return path.read_bytes()

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.asarray(a, dtype=np.float32))
        return buf.getvalue()

    source = pb.ImageSource(image=as_bytes(image, encode_png))
    if depth is not None:
        source.depth = as_bytes(depth, npy)
    return pb.CreateWorldRequest(prompt=prompt, image=source)


class _RemoteBackend:
    """A server through ``client.api.WorldClient`` (never server internals)."""

    def __init__(self, server: str | None, client, token: str | None) -> None:
        from spatia.client.api import WorldClient

        self.owns_client = client is None
        self.client = client if client is not None else WorldClient(server, token=token)
        self.world_id: str | None = None
        self.created = False
        self.K = None
        self.server_c2w: np.ndarray | None = None  # lock-step: the pose of the latest step's frame, the server's
        self.up: np.ndarray | None = None  # [3] world frame, the episode's world's ``WorldInfo.level_up``
        self.server_collided = False  # lock-step: whether the server's session clamped that step's move

    def collider(self):
        """None: the server's session collides (lock-step) or nothing does (``Generate`` takes poses as given)."""
        return None

    def level_up(self) -> np.ndarray | None:
        """``WorldInfo.level_up`` of the episode's world ([3] world frame), None from a server without the field
        (turns then keep the first camera's level)."""
        return self.up

    def new_world(self, options: dict[str, Any], seed: int, width: int, height: int, fov_deg: float, prompt: str):
        from spatia.proto.spatia.v1.convert import pose_array, vec3_array

        self._drop_created()
        if "world_id" in options:
            info = self.client.get_world(options["world_id"])
            self.created = False
        elif "image" in options:
            info = self.client.create_world(_image_request(options["image"], options.get("depth"), prompt))
            self.created = True
        else:
            info = self.client.create_scene(options.get("scene", "room"), seed, width, height, fov_deg=fov_deg,
                                            prompt=prompt)
            self.created = True
        self.world_id = info.world_id
        self.K = (info.intrinsics.width, info.intrinsics.height)
        self.up = vec3_array(info.level_up) if info.HasField("level_up") else None
        return pose_array(info.current if info.HasField("current") else info.origin)

    def step(self, action: Action, c2w: np.ndarray, prompt: str | None, seed: int) -> tuple[np.ndarray, int]:
        frames = list(self.client.generate(self.world_id, c2w[None], prompt=prompt or "", seed=seed, clip=(1, 2, 1)))
        return frames[-1].rgb, self.memory_points()

    def render(self, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = self.client.render(self.world_id, c2w)
        return r.rgb, r.depth_m

    def memory_points(self) -> int:
        return int(self.client.get_world(self.world_id).stats.memory_points)

    def _drop_created(self) -> None:
        if self.created and self.world_id is not None:
            try:
                self.client.delete_world(self.world_id)
            except Exception:  # the server may already be gone at close; the world is then its to keep
                pass
        self.created = False
        self.world_id = None

    def close(self) -> None:
        self._drop_created()
        if self.owns_client:
            self.client.close()


_CLOSE = object()


class _LockstepBackend(_RemoteBackend):
    """A server through one lock-step Play stream per episode: a step is one Action message up and, down, exactly
    its frame (``last_action_seq`` = the step's seq) carrying the clip's ``SessionStats`` (``Frame.stats``, asked
    for with ``PlayStart.stats_in_frame``; from a server without it, the stats message after the frame). The
    response stream is read on the caller's thread (no reader thread, no queue hop); gRPC's request thread takes
    the actions."""

    def __init__(self, server: str | None, client, token: str | None, fps: float, record: bool) -> None:
        super().__init__(server, client, token)
        self.fps = float(fps)
        self.record = record
        self._requests: queue.SimpleQueue | None = None
        self._call = None
        self._responses = None
        self._prompt_sent: str | None = None  # the prompt the stream's clips use now
        self.last_stats = None  # the latest step's ``SessionStats`` (the server's generate / update times)

    def new_world(self, options: dict[str, Any], seed: int, width: int, height: int, fov_deg: float, prompt: str):
        self._end_stream()
        c2w = super().new_world(options, seed, width, height, fov_deg, prompt)
        self._open_stream(seed, prompt)
        return c2w

    def _open_stream(self, seed: int, prompt: str) -> None:
        import grpc

        from spatia.client.api import _translate, play_start
        from spatia.proto.spatia.v1 import world_pb2 as pb

        start = play_start(self.world_id, fps=self.fps, prompt=prompt, encoding=pb.FRAME_ENCODING_RAW,
                           clip=(1, 2, 1), record=self.record, seed=seed, lockstep=True)
        start.stats_in_frame = True  # one message per step: the clip's stats on its frame (a server without it
        # sends them as their own message next, which step() reads as well)
        self._requests = queue.SimpleQueue()
        self._requests.put(pb.PlayRequest(start=start))
        self._call = self.client.stub.Play(iter(self._requests.get, _CLOSE), metadata=self.client.metadata)
        self._responses = iter(self._call)
        self._prompt_sent = prompt or None
        try:
            first = next(self._responses)
        except grpc.RpcError as exc:
            self._call = None
            raise _translate(exc) from None
        if not first.started.lockstep:  # an older server would drop and skip frames
            self._end_stream()
            raise InvalidInputError("the server does not support lock-step Play sessions; "
                                    "use SpatiaWorldEnv(remote_mode='generate')")

    def step(self, action: Action, c2w: np.ndarray, prompt: str | None, seed: int) -> tuple[np.ndarray, int]:
        import grpc

        from spatia.client.api import _translate, action_message
        from spatia.proto.spatia.v1 import world_pb2 as pb
        from spatia.proto.spatia.v1.convert import decode_frame, pose_array

        if prompt is not None and prompt != self._prompt_sent:
            self._requests.put(pb.PlayRequest(prompt=pb.PromptChange(prompt=prompt)))
            self._prompt_sent = prompt
        self._requests.put(pb.PlayRequest(action=action_message(
            action.seq, move_forward=action.move_forward, move_right=action.move_right, move_up=action.move_up,
            yaw_rate_rad_s=action.yaw_rate_rad_s, pitch_rate_rad_s=action.pitch_rate_rad_s, dt_s=action.dt_s)))
        frame = None
        try:
            for resp in self._responses:
                kind = resp.WhichOneof("kind")
                if kind == "frame":
                    if resp.frame.last_action_seq != action.seq:
                        raise InvalidInputError(f"lock-step broke: frame for action {resp.frame.last_action_seq}"
                                                f" while waiting for {action.seq}")
                    self.server_c2w = pose_array(resp.frame.pose)  # the session collided it: authoritative
                    self.server_collided = resp.frame.collided
                    if resp.frame.HasField("stats"):  # PlayStart.stats_in_frame: after the memory update
                        self.last_stats = resp.frame.stats
                        return decode_frame(resp.frame), int(resp.frame.stats.memory_points)
                    frame = resp.frame
                elif kind == "stats" and frame is not None:  # after the clip's memory update
                    self.last_stats = resp.stats
                    return decode_frame(frame), int(resp.stats.memory_points)
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        raise InvalidInputError("the Play stream ended before the step's frame arrived")

    def _end_stream(self) -> None:
        """Half-close the action stream and read it to its end: the server finishes the session (the world is
        saved and released) before the status arrives, so a DeleteWorld after this finds it free."""
        if self._call is None:
            return
        import grpc

        self._requests.put(_CLOSE)
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError:  # the server may be gone at close; nothing left to read
            pass
        self._call = self._responses = self._requests = None
        self._prompt_sent = None

    def _drop_created(self) -> None:
        self._end_stream()
        super()._drop_created()


class SpatiaWorldEnv(gym.Env):
    """A Spatia world as a Gymnasium env. See the module docstring for spaces, back ends and reward."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 16}

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        width: int = 128,
        height: int = 96,
        fov_deg: float = 75.0,
        scene: str = "room",
        prompt: str = "",
        observation: str = "rgb",  # "rgb" or "dict" (rgb + depth_m + pose)
        action_type: str = "continuous",  # "continuous" Box(5) or "discrete"
        control: ControlConfig = ControlConfig(),
        max_yaw_rate_rad_s: float = math.radians(90.0),  # continuous yaw/pitch axis 1.0 = this rate
        reward_fn: RewardFn | None = None,
        server: str | None = None,  # "host:port": remote back end
        client=None,  # a shared client.api.WorldClient (one channel for several envs); implies remote
        token: str | None = None,
        remote_mode: str = "lockstep",  # "lockstep" (one Play stream) or "generate" (a Generate RPC per step)
        record: bool = False,  # remote lock-step: record the episode as an MCAP on the server
        generator: str = "geometric",  # in-process only
        generator_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise InvalidInputError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        if observation not in ("rgb", "dict"):
            raise InvalidInputError(f"observation must be 'rgb' or 'dict', got {observation!r}")
        if action_type not in ("continuous", "discrete"):
            raise InvalidInputError(f"action_type must be 'continuous' or 'discrete', got {action_type!r}")
        if width < 8 or height < 8:
            raise InvalidInputError(f"resolution must be at least 8x8, got {width}x{height}")
        if remote_mode not in ("lockstep", "generate"):
            raise InvalidInputError(f"remote_mode must be 'lockstep' or 'generate', got {remote_mode!r}")
        self.render_mode = render_mode
        self.width, self.height, self.fov_deg = int(width), int(height), float(fov_deg)
        self.scene, self.prompt = scene, prompt
        self.observation_kind, self.action_type = observation, action_type
        self.control = control
        self.max_yaw_rate_rad_s = float(max_yaw_rate_rad_s)
        self.reward_fn: RewardFn = reward_fn or ExplorationReward()
        self.metadata = {**self.metadata, "render_fps": control.fps}
        self.remote = server is not None or client is not None
        self.remote_mode = remote_mode if self.remote else None
        if not self.remote:
            self._backend = _LocalBackend(generator, dict(generator_kwargs or {}))
        elif remote_mode == "lockstep":
            self._backend = _LockstepBackend(server, client, token, control.fps, record)
        else:
            self._backend = _RemoteBackend(server, client, token)

        rgb_space = spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
        if observation == "rgb":
            self.observation_space = rgb_space
        else:
            self.observation_space = spaces.Dict({
                "rgb": rgb_space,
                "depth_m": spaces.Box(0.0, np.inf, (self.height, self.width), np.float32),
                "pose": spaces.Box(-np.inf, np.inf, (4, 4), np.float64),
            })
        if action_type == "continuous":
            # move_forward, move_right, move_up, yaw (> 0 right), pitch (> 0 up); each in [-1, 1]
            self.action_space = spaces.Box(-1.0, 1.0, (5,), np.float32)
        else:
            self.action_space = spaces.Discrete(len(DISCRETE_ACTIONS))
        self._integrator: ActionIntegrator | None = None
        self._steps = 0
        self._episode_seed = 0
        self._memory_points = 0
        self._last_rgb: np.ndarray | None = None
        self._warned_no_collision = False

    # ---- helpers -------------------------------------------------------------------------------------------

    def to_action(self, action) -> Action:
        """The env action (Box vector or Discrete index) as a ``world.actions.Action`` held for one frame."""
        if self.action_type == "discrete":
            a = int(np.asarray(action).item())
            if not 0 <= a < len(DISCRETE_ACTIONS):
                raise InvalidInputError(f"discrete action must be in [0, {len(DISCRETE_ACTIONS)}), got {a}")
            axes = np.asarray(DISCRETE_ACTIONS[a][1], dtype=np.float64)
        else:
            axes = np.asarray(action, dtype=np.float64).reshape(-1)
            if axes.shape != (5,) or not np.all(np.isfinite(axes)):
                raise InvalidInputError(f"continuous action must be 5 finite values, got {np.asarray(action)!r}")
            axes = np.clip(axes, -1.0, 1.0)
        return Action(move_forward=axes[0], move_right=axes[1], move_up=axes[2],
                      yaw_rate_rad_s=axes[3] * self.max_yaw_rate_rad_s,
                      pitch_rate_rad_s=axes[4] * self.max_yaw_rate_rad_s,
                      dt_s=1.0 / self.control.fps, seq=self._steps + 1)

    def _observation(self, rgb: np.ndarray, c2w: np.ndarray, depth_m: np.ndarray | None):
        self._last_rgb = rgb
        if self.observation_kind == "rgb":
            return rgb
        if depth_m is None:
            depth_m = self._backend.render(c2w)[1]
        return {"rgb": rgb, "depth_m": depth_m.astype(np.float32), "pose": c2w.astype(np.float64)}

    def _info(self, c2w: np.ndarray, new_points: int) -> dict[str, Any]:
        fwd = c2w[:3, 2]
        return {
            "pose": c2w.copy(),  # [4, 4] c2w, world frame
            "position_m": c2w[:3, 3].copy(),
            "yaw_rad": float(self._integrator.yaw_rad),
            "pitch_rad": float(self._integrator.pitch_rad),
            "forward": fwd.copy(),
            "memory_points": self._memory_points,
            "new_memory_points": int(new_points),
            "step": self._steps,
            "collided": bool(self._integrator.collided),  # the step's move was clamped by a surface
        }

    # ---- Gymnasium API -------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"scene", "image", "depth", "world_id", "world", "scene_seed"}
        if unknown:
            raise InvalidInputError(f"unknown reset options {sorted(unknown)}; "
                                    "use scene | image (+ depth) | world_id | world, scene_seed")
        options.setdefault("scene", self.scene)
        # The scene's layout seed: given, else drawn from the env's RNG (reset(seed=s) is reproducible).
        scene_seed = int(options.pop("scene_seed", self.np_random.integers(0, 2**31 - 1)))
        self._episode_seed = scene_seed
        c2w = self._backend.new_world(options, scene_seed, self.width, self.height, self.fov_deg, self.prompt)
        collider = self._backend.collider() if self.control.collision else None
        if self.control.collision and self.remote_mode == "generate" and not self._warned_no_collision:
            warnings.warn("SpatiaWorldEnv(remote_mode='generate'): the camera does not collide (Generate takes the "
                          "poses as given); remote_mode='lockstep' collides on the server", stacklevel=2)
            self._warned_no_collision = True
        self._integrator = ActionIntegrator.resumed(c2w, c2w, self.control, up=self._backend.level_up(),
                                                    collider=collider)
        self._steps = 0
        self._memory_points = self._backend.memory_points()
        rgb, depth = self._backend.render(c2w)
        if rgb.shape != (self.height, self.width, 3):
            raise InvalidInputError(f"the world renders {rgb.shape[1]}x{rgb.shape[0]} but the env was made for "
                                    f"{self.width}x{self.height}; pass width/height matching the world")
        return self._observation(rgb, c2w, depth), self._info(c2w, 0)

    def step(self, action):
        if self._integrator is None:
            raise InvalidInputError("call reset() before step()")
        act = self.to_action(action)
        poses = self._integrator.step(act)
        c2w = poses[-1] if poses else self._integrator.c2w  # dt = 1/fps gives exactly one frame
        self._steps += 1
        rgb, points = self._backend.step(act, c2w, None if not self.prompt else self.prompt,
                                         seed=self._episode_seed + self._steps)
        server_c2w = self._backend.server_c2w
        if server_c2w is not None:  # lock-step: the server's session integrated the same action and collided it
            # (``ServerConfig.play_collision``, its own body radius); the frame is at its pose, so the env takes it
            clamped = not np.allclose(server_c2w[:3, 3], c2w[:3, 3], rtol=0.0, atol=1e-6)
            if clamped and not self.control.collision and not self._warned_no_collision:
                warnings.warn("the server's Play session collides (ServerConfig.play_collision) although this env "
                              "has ControlConfig(collision=False): poses follow the server's", stacklevel=2)
                self._warned_no_collision = True
            self._integrator.collided = self._backend.server_collided  # the server says (Frame.collided)
            self._integrator.position = server_c2w[:3, 3].copy()
            c2w = server_c2w
        before, self._memory_points = self._memory_points, points
        info = self._info(c2w, self._memory_points - before)
        reward = float(self.reward_fn(info))
        # never truncated here: the horizon is TimeLimit's (registered max_episode_steps), as Gymnasium expects
        return self._observation(rgb, c2w, None), reward, False, False, info

    def render(self):
        if self.render_mode == "rgb_array":
            return None if self._last_rgb is None else self._last_rgb.copy()
        return None

    def close(self) -> None:
        self._backend.close()
        super().close()


def make_vector_env(num_envs: int = 3, *, server: str | None = None, client=None, token: str | None = None,
                    scenes: tuple[str, ...] = ("room", "house", "courtyard"),
                    max_episode_steps: int | None = MAX_EPISODE_STEPS, **kwargs: Any):
    """``gymnasium.vector.SyncVectorEnv`` of ``num_envs`` worlds (scenes cycled), each in ``TimeLimit`` at
    ``max_episode_steps`` (None: no horizon). Remote: the sub-envs share one ``WorldClient``, i.e. one gRPC channel
    (one lock-step Play stream per sub-env over it); it is closed with the vector env when this function opened
    it."""
    if num_envs < 1:
        raise InvalidInputError(f"num_envs must be >= 1, got {num_envs}")
    shared = client
    if server is not None and client is None:
        from spatia.client.api import WorldClient

        shared = WorldClient(server, token=token)
    def make(i: int) -> gym.Env:
        env = SpatiaWorldEnv(scene=scenes[i % len(scenes)], client=shared, **kwargs)
        return gym.wrappers.TimeLimit(env, max_episode_steps) if max_episode_steps is not None else env

    fns = [(lambda i=i: make(i)) for i in range(num_envs)]
    venv = gym.vector.SyncVectorEnv(fns)
    if shared is not None and client is None:  # we opened the channel: close it after the sub-envs
        inner_close = venv.close_extras

        def close_extras(**kw):
            inner_close(**kw)
            shared.close()

        venv.close_extras = close_extras
    return venv


def register_envs() -> None:
    """Register ``SpatiaWorld-v0`` (continuous) and ``SpatiaWorldDiscrete-v0`` (idempotent), with the horizon in
    the spec (``max_episode_steps``), so that ``gymnasium.make`` adds ``TimeLimit`` and its argument overrides it."""
    for env_id, kw in (("SpatiaWorld-v0", {}), ("SpatiaWorldDiscrete-v0", {"action_type": "discrete"})):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="spatia.client.env:SpatiaWorldEnv", kwargs=kw,
                         max_episode_steps=MAX_EPISODE_STEPS)
