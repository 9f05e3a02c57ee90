"""Game actions -> camera poses at the output frame rate, and chunking of a pose stream into clips.

``Action`` is a plain dataclass: the pygame keymap, gamepads and agents all translate *into* it in ``client/``,
so nothing here knows about input devices.

Camera frame: OpenCV (x right, y down, z forward). Walking moves in the horizontal plane of the world, whose up
is ``-y`` of the first camera (``docs/DESIGN.md``), so looking down while walking forward does not sink the camera.
Yaw > 0 turns right, pitch > 0 looks up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from spatia.world.camera import validate_pose
from spatia.world.errors import InvalidInputError

if TYPE_CHECKING:  # world.collision needs numba, which the slim client (remote envs) does not have
    from spatia.world.collision import Collider


@dataclass
class Action:
    """One input tick. Axes are in [-1, 1]; look is a rate (rad/s) and/or a delta (rad, e.g. from the mouse)."""

    move_forward: float = 0.0  # +1 forward, -1 back
    move_right: float = 0.0  # +1 strafe right, -1 left
    move_up: float = 0.0  # +1 up, -1 down (world up)
    yaw_rate_rad_s: float = 0.0  # > 0 turns right
    pitch_rate_rad_s: float = 0.0  # > 0 looks up
    yaw_delta_rad: float = 0.0  # applied once over this action's dt (mouse)
    pitch_delta_rad: float = 0.0
    sprint: bool = False
    dt_s: float = 1.0 / 30.0  # how long this action is held
    seq: int = 0  # the client's sequence number, echoed in the frames that applied it

    def validate(self) -> "Action":
        values = {
            "move_forward": self.move_forward,
            "move_right": self.move_right,
            "move_up": self.move_up,
            "yaw_rate_rad_s": self.yaw_rate_rad_s,
            "pitch_rate_rad_s": self.pitch_rate_rad_s,
            "yaw_delta_rad": self.yaw_delta_rad,
            "pitch_delta_rad": self.pitch_delta_rad,
            "dt_s": self.dt_s,
        }
        for name, v in values.items():
            if not math.isfinite(v):
                raise InvalidInputError(f"action.{name} must be finite, got {v}")
        for name in ("move_forward", "move_right", "move_up"):
            if abs(values[name]) > 1.0 + 1e-6:
                raise InvalidInputError(f"action.{name} must be in [-1, 1], got {values[name]}")
        if not (0.0 <= self.dt_s <= 10.0):
            raise InvalidInputError(f"action.dt_s must be in [0, 10] seconds, got {self.dt_s}")
        return self

    @property
    def is_idle(self) -> bool:
        return not any(
            (self.move_forward, self.move_right, self.move_up, self.yaw_rate_rad_s, self.pitch_rate_rad_s,
             self.yaw_delta_rad, self.pitch_delta_rad)
        )


@dataclass(frozen=True)
class ControlConfig:
    """How fast the camera moves; frozen so one config can serve many sessions."""

    fps: float = 16.0  # output frames per second (the paper's videos are 16 fps at 81 frames ~ 5 s)
    walk_speed_m_s: float = 1.0
    sprint_multiplier: float = 2.5
    vertical_speed_m_s: float = 0.75
    max_pitch_deg: float = 85.0  # clamp short of +-90 so the yaw axis never degenerates
    # The camera is a sphere of this radius that the world's surfaces stop (``world.collision``), when the
    # integrator has a collider (the world's: ``World.collider``); False: it walks through everything.
    collision: bool = True
    body_radius_m: float = 0.25

    def __post_init__(self) -> None:
        if self.fps <= 0 or not math.isfinite(self.fps):
            raise InvalidInputError(f"fps must be positive, got {self.fps}")
        if not (math.isfinite(self.body_radius_m) and self.body_radius_m > 0):
            raise InvalidInputError(f"body_radius_m must be positive, got {self.body_radius_m}")
        if not (0.0 < self.max_pitch_deg < 90.0):
            raise InvalidInputError(f"max_pitch_deg must be in (0, 90), got {self.max_pitch_deg}")


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def level_pose(c2w: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(base_c2w [4, 4], pitch_rad, roll_rad)`` with ``c2w``'s rotation ``= base @ R_x(pitch) @ R_z(roll)``:
    ``base`` at ``c2w``'s position, its -y along ``up`` [3] (world frame, gravity's up) and its z the camera's
    forward made horizontal. An ``ActionIntegrator`` on that base turns about ``up``: a photo taken pitched or
    rolled keeps its horizon as the player turns, where a base at the camera itself turns about the camera's own
    y axis and rolls the horizon by the pitch at 90 degrees (``World.level_up``). A camera looking straight up or
    down has no horizontal forward: its own pose is the base then."""
    c2w = validate_pose(c2w)
    u = np.asarray(up, np.float64).reshape(3)
    n = float(np.linalg.norm(u))
    if not (math.isfinite(n) and n > 0):
        raise InvalidInputError(f"up must be a finite non-zero [3] vector, got {u.tolist()}")
    u = u / n
    fwd = c2w[:3, 2] - (c2w[:3, 2] @ u) * u
    if float(np.linalg.norm(fwd)) < 1e-6:
        return c2w.copy(), 0.0, 0.0
    z = fwd / np.linalg.norm(fwd)
    y = -u
    base = np.eye(4)
    base[:3, :3] = np.stack([np.cross(y, z), y, z], axis=1)
    base[:3, 3] = c2w[:3, 3]
    R = base[:3, :3].T @ c2w[:3, :3]  # = R_x(pitch) @ R_z(roll): [[cr, -sr, 0], [c sr, c cr, -s], [s sr, s cr, c]]
    return base, math.atan2(-R[1, 2], R[2, 2]), math.atan2(-R[0, 1], R[0, 0])


@dataclass
class ActionIntegrator:
    """Integrates ``Action``s into ``c2w`` poses sampled at ``config.fps``; deterministic (no clocks read).

    The state is (position, yaw, pitch) relative to ``base_c2w``'s orientation; ``base_c2w`` fixes what is level,
    and ``roll_rad`` is a fixed roll of the camera about its own view axis (a photo's, ``level_pose``): turning
    and looking never change it.
    With a ``collider`` and ``config.collision``, every move is clamped against the world (``world.collision``);
    ``collided`` tells whether the latest ``step`` was clamped. Turning and looking are never clamped.
    """

    base_c2w: np.ndarray
    config: ControlConfig = field(default_factory=ControlConfig)
    yaw_rad: float = 0.0
    pitch_rad: float = 0.0
    position: np.ndarray = field(default=None)  # type: ignore[assignment]  # [3], world frame
    roll_rad: float = 0.0
    _time_to_next_frame_s: float = 0.0  # 0: the next advance emits a frame at once after its first step
    last_seq: int = 0
    collider: Collider | None = None
    collided: bool = False

    @classmethod
    def resumed(cls, origin_c2w: np.ndarray, current_c2w: np.ndarray, config: ControlConfig,
                up: np.ndarray | None = None, collider: Collider | None = None) -> ActionIntegrator:
        """An integrator at ``current_c2w`` [4, 4] whose level is the world's: ``up`` [3] (world frame,
        ``World.level_up``) by ``level_pose`` of the first camera ``origin_c2w``, or without ``up`` the first camera
        itself; yaw and pitch recovered from the rotation between them, the first camera's roll kept. Falls back to
        levelling on ``current_c2w`` when that rotation is not reachable by yaw then pitch (a pose with roll of its
        own) or the first camera is pitched past ``max_pitch_deg`` from ``up``."""
        limit = math.radians(config.max_pitch_deg)
        base, pitch0, roll = (validate_pose(origin_c2w), 0.0, 0.0) if up is None else level_pose(origin_c2w, up)
        if abs(pitch0) > limit:
            base, roll = validate_pose(origin_c2w), 0.0
        R = base[:3, :3].T @ np.asarray(current_c2w, np.float64)[:3, :3] @ _rot_z(roll).T  # R_y(yaw) @ R_x(pitch)
        yaw = math.atan2(R[0, 2], R[2, 2])
        pitch = math.asin(float(np.clip(-R[1, 2], -1.0, 1.0)))
        integ = cls(base, config, yaw_rad=yaw, pitch_rad=min(max(pitch, -limit), limit),
                    position=np.asarray(current_c2w, np.float64)[:3, 3].copy(), roll_rad=roll, collider=collider)
        if not np.allclose(integ.c2w, current_c2w, atol=1e-6):
            integ = cls(current_c2w, config, collider=collider)
        return integ

    def __post_init__(self) -> None:
        self.base_c2w = validate_pose(self.base_c2w, "base_c2w").copy()
        if self.position is None:
            self.position = self.base_c2w[:3, 3].copy()
        self._time_to_next_frame_s = 1.0 / self.config.fps

    @property
    def c2w(self) -> np.ndarray:
        """The current pose, 4x4 float64."""
        T = np.eye(4)
        T[:3, :3] = self.base_c2w[:3, :3] @ _rot_y(self.yaw_rad) @ _rot_x(self.pitch_rad)
        if self.roll_rad:
            T[:3, :3] = T[:3, :3] @ _rot_z(self.roll_rad)
        T[:3, 3] = self.position
        return T

    def _advance(self, action: Action, dt: float) -> None:
        speed = self.config.walk_speed_m_s * (self.config.sprint_multiplier if action.sprint else 1.0)
        R_level = self.base_c2w[:3, :3] @ _rot_y(self.yaw_rad)  # heading without pitch: walking stays level
        forward, right = R_level[:, 2], R_level[:, 0]
        up = -self.base_c2w[:3, 1]
        move = speed * (action.move_forward * forward + action.move_right * right)
        move = move + self.config.vertical_speed_m_s * action.move_up * up
        if self.collider is not None and self.config.collision and (action.move_forward or action.move_right
                                                                     or action.move_up):
            level_up = up if not action.move_up else None  # a walk slides level along what it brushes
            self.position, hit = self.collider.resolve(self.position, move * dt, self.config.body_radius_m, level_up)
            self.collided |= hit
        else:
            self.position = self.position + move * dt
        look_share = dt / action.dt_s if action.dt_s > 0 else 0.0
        self.yaw_rad += action.yaw_rate_rad_s * dt + action.yaw_delta_rad * look_share
        self.yaw_rad = math.remainder(self.yaw_rad, 2 * math.pi)
        limit = math.radians(self.config.max_pitch_deg)
        pitch = self.pitch_rad + action.pitch_rate_rad_s * dt + action.pitch_delta_rad * look_share
        self.pitch_rad = min(max(pitch, -limit), limit)

    def step(self, action: Action) -> list[np.ndarray]:
        """Apply ``action`` for ``action.dt_s`` seconds; return the poses of every output frame that fell due."""
        action.validate()
        self.last_seq = action.seq
        self.collided = False
        poses: list[np.ndarray] = []
        remaining = action.dt_s
        if remaining == 0.0:  # a pure look delta with no duration: apply it at once
            self._advance(Action(yaw_delta_rad=action.yaw_delta_rad, pitch_delta_rad=action.pitch_delta_rad, dt_s=1.0), 1.0)
            return poses
        while remaining >= self._time_to_next_frame_s - 1e-12:
            dt = self._time_to_next_frame_s
            self._advance(action, dt)
            remaining -= dt
            poses.append(self.c2w)
            self._time_to_next_frame_s = 1.0 / self.config.fps
        if remaining > 0:
            self._advance(action, remaining)
            self._time_to_next_frame_s -= remaining
        return poses

    def run(self, actions: list[Action]) -> np.ndarray:
        """Integrate a list of actions; returns ``[N, 4, 4]`` poses (N may be 0)."""
        poses: list[np.ndarray] = []
        for a in actions:
            poses.extend(self.step(a))
        return np.stack(poses) if poses else np.zeros((0, 4, 4))


# ---------------------------------------------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipConfig:
    """Clip lengths in frames. ``clip_frames`` counts preceding + new frames, as the official ``round_frames``.

    Paper (Sec. 4): 81-frame first clip, later clips of 72 new frames + 9 preceding. Official code: first 121,
    rounds of 81 with ``hist_frames=9``. Real-time play uses short clips (see ``server``), same rules.
    """

    first_clip_frames: int = 81
    clip_frames: int = 81
    preceding_frames: int = 9

    def __post_init__(self) -> None:
        if self.first_clip_frames < 1:
            raise InvalidInputError(f"first_clip_frames must be >= 1, got {self.first_clip_frames}")
        if self.preceding_frames < 0:
            raise InvalidInputError(f"preceding_frames must be >= 0, got {self.preceding_frames}")
        if self.clip_frames - self.preceding_frames < 1:
            raise InvalidInputError(
                f"clip_frames ({self.clip_frames}) must exceed preceding_frames ({self.preceding_frames})"
            )

    @property
    def new_frames_per_clip(self) -> int:
        return self.clip_frames - self.preceding_frames

    @classmethod
    def paper(cls) -> "ClipConfig":
        return cls(81, 81, 9)

    @classmethod
    def official(cls) -> "ClipConfig":
        return cls(121, 81, 9)


@dataclass(frozen=True)
class ClipSpan:
    """Frames ``[start, stop)`` are generated; ``[preceding_start, start)`` condition them (empty for clip 0)."""

    clip_id: int
    start: int
    stop: int
    preceding_start: int

    @property
    def num_new(self) -> int:
        return self.stop - self.start

    @property
    def num_preceding(self) -> int:
        return self.start - self.preceding_start


def chunk_clips(num_frames: int, config: ClipConfig = ClipConfig()) -> list[ClipSpan]:
    """Split a trajectory of ``num_frames`` poses into clips; the last clip may be shorter."""
    if num_frames < 1:
        raise InvalidInputError(f"cannot chunk an empty trajectory (num_frames={num_frames})")
    spans = [ClipSpan(0, 0, min(config.first_clip_frames, num_frames), 0)]
    while spans[-1].stop < num_frames:
        start = spans[-1].stop
        stop = min(start + config.new_frames_per_clip, num_frames)
        spans.append(ClipSpan(len(spans), start, stop, max(0, start - config.preceding_frames)))
    return spans


def out_and_back_path(
    start_c2w: np.ndarray,  # [4, 4]
    num_frames: int = 161,
    distance_m: float = 1.0,
    turn_deg: float = 100.0,
    strafe_m: float = 0.3,
    up: np.ndarray | None = None,  # [3] world frame, what stays level (``World.level_up``); None: start's -y
) -> np.ndarray:
    """A closed loop for worlds we know nothing about (a photograph): walk ``distance_m`` forward while turning
    ``turn_deg`` right and drifting ``strafe_m`` sideways, then retrace the way back to the exact start pose.

    Returns ``[num_frames, 4, 4]`` c2w; frame 0 and the last frame are ``start_c2w``. The path is made with the
    ``ActionIntegrator``, so it is a path a player could walk (level about ``up``, pitch and roll untouched).
    """
    if num_frames < 3:
        raise InvalidInputError(f"num_frames must be >= 3 for an out-and-back path, got {num_frames}")
    n_out = num_frames // 2  # frames after the start on the way out
    fps = 16.0
    duration = n_out / fps
    config = ControlConfig(fps=fps, walk_speed_m_s=1.0)
    integ = ActionIntegrator.resumed(start_c2w, start_c2w, config, up=up)
    forward = min(1.0, distance_m / duration)
    right = min(1.0, strafe_m / duration)
    yaw_rate = math.radians(turn_deg) / duration
    out = integ.run([Action(move_forward=forward, move_right=right, yaw_rate_rad_s=yaw_rate, dt_s=duration)])
    out = np.concatenate([validate_pose(start_c2w)[None], out[:n_out]])
    back = out[::-1][1:]
    path = np.concatenate([out, back])
    if len(path) < num_frames:  # odd counts: hold the start pose once more at the end
        path = np.concatenate([path, path[-1:]])
    return path[:num_frames]
