"""Cameras, poses and trajectories.

Conventions (``docs/DESIGN.md``): OpenCV pinhole (x right, y down, z forward); poses are camera-to-world 4x4 float64
(``c2w``); ``w2c`` appears only where a file format stores it (the official Spatia cases); angles are radians
inside the code and degrees only where a name says ``_deg``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spatia.world.errors import InvalidInputError, NotFoundError

# A rotation block is accepted as rigid when R^T R is within this of the identity and det(R) is within it of 1.
RIGID_TOLERANCE = 1e-4
DEFAULT_FOV_DEG = 60.0  # horizontal field of view assumed when an image comes without intrinsics


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels for an image of ``width`` x ``height`` pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in values):
            raise InvalidInputError(f"intrinsics must be finite, got fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy}")
        if self.fx <= 0 or self.fy <= 0:
            raise InvalidInputError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise InvalidInputError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def matrix(self) -> np.ndarray:
        """``K`` 3x3 float64 in pixels."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64)

    @classmethod
    def from_matrix(cls, K: np.ndarray, width: int, height: int) -> "Intrinsics":
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise InvalidInputError(f"K must be 3x3, got shape {K.shape}")
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))

    @classmethod
    def from_normalized(cls, normalized: "np.ndarray | list[float]", width: int, height: int) -> "Intrinsics":
        """From the official case form ``[fx/W, fy/H, cx/W, cy/H]``."""
        n = np.asarray(normalized, dtype=np.float64).reshape(-1)
        if n.shape != (4,):
            raise InvalidInputError(f"normalized intrinsics need 4 values [fx/W fy/H cx/W cy/H], got {n.size}")
        return cls(n[0] * width, n[1] * height, n[2] * width, n[3] * height, int(width), int(height))

    def to_normalized(self) -> np.ndarray:
        """``[fx/W, fy/H, cx/W, cy/H]``."""
        return np.array([self.fx / self.width, self.fy / self.height, self.cx / self.width, self.cy / self.height])

    @classmethod
    def from_fov(cls, fov_deg: float, width: int, height: int) -> "Intrinsics":
        """Square pixels, principal point at the centre, horizontal field of view ``fov_deg``."""
        if not (0.0 < fov_deg < 180.0):
            raise InvalidInputError(f"fov_deg must be in (0, 180), got {fov_deg}")
        f = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
        return cls(f, f, width / 2.0, height / 2.0, int(width), int(height))

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """The same camera for an image resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width), int(height))

    @property
    def fov_x_deg(self) -> float:
        return math.degrees(2.0 * math.atan(self.width / (2.0 * self.fx)))


def validate_pose(c2w: np.ndarray, name: str = "pose") -> np.ndarray:
    """Return ``c2w`` as a 4x4 float64 array, or raise ``InvalidInputError`` naming what is wrong."""
    T = np.asarray(c2w, dtype=np.float64)
    if T.shape != (4, 4):
        raise InvalidInputError(f"{name} must be a 4x4 matrix, got shape {T.shape}")
    problem = pose_problem(T)
    if problem is not None:
        raise InvalidInputError(f"{name} {problem}")
    return T


def pose_problem(T: np.ndarray) -> str | None:
    """What makes a 4x4 float64 ``T`` no rigid camera-to-world pose (None: nothing). Python floats on the 16
    entries: a step validates each pose several times, and the numpy version (isfinite, R^T R, det: ~10 array
    calls) cost ~0.1 ms a call, ~0.5 ms of a 128x96 lock-step step."""
    (r00, r01, r02, t0), (r10, r11, r12, t1), (r20, r21, r22, t2), last = T.tolist()
    if not all(map(math.isfinite, (r00, r01, r02, t0, r10, r11, r12, t1, r20, r21, r22, t2, *last))):
        return "contains NaN or infinite values"
    if max(abs(last[0]), abs(last[1]), abs(last[2]), abs(last[3] - 1.0)) > RIGID_TOLERANCE:
        return f"last row must be [0 0 0 1], got {last}"
    # R^T R - I (column dot products) and det R
    off = max(abs(r00 * r00 + r10 * r10 + r20 * r20 - 1.0), abs(r01 * r01 + r11 * r11 + r21 * r21 - 1.0),
              abs(r02 * r02 + r12 * r12 + r22 * r22 - 1.0), abs(r00 * r01 + r10 * r11 + r20 * r21),
              abs(r00 * r02 + r10 * r12 + r20 * r22), abs(r01 * r02 + r11 * r12 + r21 * r22))
    det = r00 * (r11 * r22 - r12 * r21) - r01 * (r10 * r22 - r12 * r20) + r02 * (r10 * r21 - r11 * r20)
    if off > RIGID_TOLERANCE or abs(det - 1.0) > RIGID_TOLERANCE:
        return "is not rigid: its rotation block is not orthonormal with det +1"
    return None


def validate_trajectory(c2w: np.ndarray, name: str = "trajectory") -> np.ndarray:
    """Return poses as ``[N, 4, 4]`` float64 (N >= 1), each validated."""
    T = np.asarray(c2w, dtype=np.float64)
    if T.ndim == 2:
        T = T[None]
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise InvalidInputError(f"{name} must have shape [N, 4, 4], got {T.shape}")
    if T.shape[0] == 0:
        raise InvalidInputError(f"{name} is empty")
    for i in range(T.shape[0]):
        validate_pose(T[i], name=f"{name}[{i}]")
    return T


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (``c2w`` <-> ``w2c``); works on ``[..., 4, 4]``."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, -1.0, 0.0)) -> np.ndarray:
    """``c2w`` of an OpenCV camera at ``eye`` looking at ``target``; ``up`` is the world's up (default -y)."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    if np.linalg.norm(z) < 1e-12:
        raise InvalidInputError("look_at: eye and target coincide")
    z /= np.linalg.norm(z)
    # Image y points down, so the camera's y axis is the projection of -up onto the image plane.
    down = -np.asarray(up, dtype=np.float64)
    x = np.cross(down, z)
    if np.linalg.norm(x) < 1e-9:
        raise InvalidInputError("look_at: viewing direction is parallel to up")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def rotation_matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion ``[w, x, y, z]`` of a rotation matrix (Shepperd's method, numerically stable)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def quaternion_to_rotation_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions along the shorter arc."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation; take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: lerp is accurate and avoids dividing by sin(~0)
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(min(1.0, dot))
    s = math.sin(theta)
    return (math.sin((1 - t) * theta) / s) * q0 + (math.sin(t * theta) / s) * q1


def interpolate_pose(c2w_a: np.ndarray, c2w_b: np.ndarray, t: float) -> np.ndarray:
    """Pose a fraction ``t`` in [0, 1] of the way from ``a`` to ``b``: slerp of rotations, lerp of positions."""
    A, B = validate_pose(c2w_a, "c2w_a"), validate_pose(c2w_b, "c2w_b")
    q = slerp(rotation_matrix_to_quaternion(A[:3, :3]), rotation_matrix_to_quaternion(B[:3, :3]), t)
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation_matrix(q)
    T[:3, 3] = (1 - t) * A[:3, 3] + t * B[:3, 3]
    return T


def interpolate_trajectory(keyframes: np.ndarray, frames_per_segment: int) -> np.ndarray:
    """Densify keyframe poses ``[K, 4, 4]`` to ``[(K-1)*frames_per_segment + 1, 4, 4]`` poses."""
    keys = validate_trajectory(keyframes, "keyframes")
    if frames_per_segment < 1:
        raise InvalidInputError(f"frames_per_segment must be >= 1, got {frames_per_segment}")
    out = [keys[0]]
    for a, b in zip(keys[:-1], keys[1:]):
        for i in range(1, frames_per_segment + 1):
            out.append(interpolate_pose(a, b, i / frames_per_segment))
    return np.stack(out)


def rotation_angle_deg(c2w_a: np.ndarray, c2w_b: np.ndarray) -> float:
    """Angle of the relative rotation between two poses, in degrees."""
    R = np.asarray(c2w_a)[:3, :3].T @ np.asarray(c2w_b)[:3, :3]
    return math.degrees(math.acos(float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def translation_distance_m(c2w_a: np.ndarray, c2w_b: np.ndarray) -> float:
    """Distance between the camera centres of two poses, in metres."""
    return float(np.linalg.norm(np.asarray(c2w_a)[:3, 3] - np.asarray(c2w_b)[:3, 3]))


# ---------------------------------------------------------------------------------------------------------------
# Trajectory files
# ---------------------------------------------------------------------------------------------------------------


def load_official_w2c(path: str | Path) -> np.ndarray:
    """Read an official Spatia ``w2c.txt`` (one nested-list 4x4 w2c per line) and return ``c2w`` ``[N, 4, 4]``."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"trajectory file not found: {path}")
    mats = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            m = np.asarray(json.loads(line), dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"{path}:{lineno}: not a 4x4 nested list ({exc})") from None
        if m.shape != (4, 4):
            raise InvalidInputError(f"{path}:{lineno}: expected a 4x4 matrix, got shape {m.shape}")
        mats.append(m)
    if not mats:
        raise InvalidInputError(f"{path}: empty trajectory")
    return validate_trajectory(invert_pose(np.stack(mats)), name=str(path))


def save_official_w2c(path: str | Path, c2w: np.ndarray) -> None:
    w2c = invert_pose(validate_trajectory(c2w))
    Path(path).write_text("\n".join(json.dumps(m.tolist()) for m in w2c) + "\n")


def load_official_intrinsics(path: str | Path, width: int, height: int) -> Intrinsics:
    """Read an official ``intrinsics.txt`` (``[fx/W fy/H cx/W cy/H]``) for an image of the given size."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"intrinsics file not found: {path}")
    text = path.read_text().strip().strip("[]").replace(",", " ")
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise InvalidInputError(f"{path}: expected four numbers [fx/W fy/H cx/W cy/H]") from None
    return Intrinsics.from_normalized(values, width, height)


def save_trajectory(path: str | Path, c2w: np.ndarray, intrinsics: Intrinsics | None = None) -> None:
    """Our own format: ``.json`` ({"c2w": [[4x4]...], "intrinsics": {...}}) or ``.npz`` (c2w, optional K/size)."""
    path = Path(path)
    poses = validate_trajectory(c2w)
    if path.suffix == ".npz":
        extra = {}
        if intrinsics is not None:
            extra = {"K": intrinsics.matrix, "size": np.array([intrinsics.width, intrinsics.height])}
        np.savez(path, c2w=poses, **extra)
    elif path.suffix == ".json":
        doc: dict = {"convention": "c2w, OpenCV camera (x right, y down, z forward), metres", "c2w": poses.tolist()}
        if intrinsics is not None:
            doc["intrinsics"] = {k: getattr(intrinsics, k) for k in ("fx", "fy", "cx", "cy", "width", "height")}
        path.write_text(json.dumps(doc))
    else:
        raise InvalidInputError(f"trajectory file must end in .json or .npz, got {path.name}")


def load_trajectory(path: str | Path) -> tuple[np.ndarray, Intrinsics | None]:
    """Read a trajectory written by ``save_trajectory`` (``.json``/``.npz``) or an official ``w2c.txt``."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"trajectory file not found: {path}")
    if path.suffix == ".txt":
        return load_official_w2c(path), None
    if path.suffix == ".npz":
        try:
            data = np.load(path)
            poses = data["c2w"]
        except Exception as exc:  # numpy raises several types for broken archives
            raise InvalidInputError(f"{path}: unreadable trajectory archive ({exc})") from None
        K = None
        if "K" in data:
            w, h = (int(v) for v in data["size"])
            K = Intrinsics.from_matrix(data["K"], w, h)
        return validate_trajectory(poses, str(path)), K
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text())
            poses = np.asarray(doc["c2w"], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{path}: not a trajectory JSON with a 'c2w' list ({exc})") from None
        K = Intrinsics(**doc["intrinsics"]) if doc.get("intrinsics") else None
        return validate_trajectory(poses, str(path)), K
    raise InvalidInputError(f"unknown trajectory format: {path.name} (expected .json, .npz or w2c .txt)")
