"""Regions of world space: what edits select (``SpatialMemory.remove`` / ``recolor`` / ``move``) and what a
generator declares free (``world.generator.GeneratedView.open_space``). Apart from the memory so that the generator
protocol can name them without importing the memory."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from spatia.world.camera import validate_pose
from spatia.world.errors import InvalidInputError


class Region(Protocol):
    def contains(self, points: np.ndarray) -> np.ndarray: ...  # [N, 3] world frame -> [N] bool


class Box:
    """An oriented box: ``center`` [3] world frame, ``half_extents_m`` [3] along the box axes, and the box-to-world
    rotation ``c2w_rotation`` [3, 3] whose columns are the box axes in the world (identity: axis-aligned)."""

    def __init__(self, center, half_extents_m, c2w_rotation=None) -> None:
        self.center = vector3(center, "Box center")
        self.half_extents_m = vector3(half_extents_m, "Box half_extents_m")
        if np.any(self.half_extents_m < 0):
            raise InvalidInputError(f"Box half_extents_m must be >= 0, got {self.half_extents_m.tolist()}")
        self.rotation = np.eye(3) if c2w_rotation is None else rotation3(c2w_rotation, "Box c2w_rotation")

    def contains(self, points: np.ndarray) -> np.ndarray:
        local = (as_points(points) - self.center) @ self.rotation  # [N, 3] box frame (R^T p as a row product)
        return np.all(np.abs(local) <= self.half_extents_m, axis=1)


class Sphere:
    def __init__(self, center, radius_m: float) -> None:
        self.center = vector3(center, "Sphere center")
        self.radius_m = float(radius_m)
        if not (math.isfinite(self.radius_m) and self.radius_m >= 0):
            raise InvalidInputError(f"Sphere radius_m must be >= 0, got {radius_m}")

    def contains(self, points: np.ndarray) -> np.ndarray:
        d = as_points(points) - self.center
        return np.einsum("ij,ij->i", d, d) <= self.radius_m**2


def vector3(v, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise InvalidInputError(f"{name} must be 3 finite numbers, got {v!r}")
    return a


def rotation3(R, name: str) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise InvalidInputError(f"{name} must be 3x3, got shape {R.shape}")
    T = np.eye(4)
    T[:3, :3] = R
    return validate_pose(T, name)[:3, :3]


def as_points(points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise InvalidInputError(f"points must be [N, 3], got shape {p.shape}")
    return p
