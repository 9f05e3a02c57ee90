"""Collision of the walking camera with what the world shows: the camera is a sphere that memory points stop.

A game engine's "move, then resolve" (collide and slide), against the spatial memory's points:

* The body is a sphere of ``radius_m`` (``ControlConfig.body_radius_m``) around the camera centre. A point
  *blocks* a body centred at ``c`` when it lies strictly within its radius of ``c``; the body is *blocked* when
  ``CollisionConfig.min_points`` or more points block it. A count, not any point: a single stray point (depth noise,
  a speck of an invented fill) must not stop the camera, while a surface puts hundreds of points inside the body
  within a millimetre of contact.
* A move ``d`` from a free centre ``p`` is swept: the body goes along ``p + t d`` up to the first ``t`` at which
  it would become blocked (exact: each point's entry and exit times are the roots of a quadratic), stops
  ``skin_m`` before it, and the rest of the move loses its component into the contact normal (the mean direction
  from the touching points to the centre) and is swept again: walk diagonally into a wall and the body glides along
  it, straight into it and it stops. A few slides resolve a corner. A swept body never ends blocked.
* A body that is already blocked (a world created there, an edit that put points on the camera, points added by a
  memory update next to it) may move anywhere that does not go *into* the points it is in: the move loses its
  component against the outward normal (the penetration-weighted mean direction from those points to the centre).
  So it can always walk out, and never walks deeper.
* Turning and looking never reach the collider; a move away from a surface is never clipped.

Which points: observed and invented. What the player sees as a wall is both (the room's walls outside the first
image are invented by the fill). The engine removes invented points within ``EngineConfig.free_radius_m`` of every
pose the camera has been at (``Engine.generate_clip``), so a body that touched an invented wall at a smaller radius
would see the wall cut away around it after the next clip and walk through the hole; invented points therefore
block at ``max(radius_m, invented_clearance_m)``, with ``invented_clearance_m`` the engine's free radius.

Fast op and reference: ``MemoryCollider`` reads only the points of the memory near the move
(``SpatialMemory.points_in_box``) and resolves the move in one numba call (``resolve_move``); ``ReferenceCollider``
reads every point (``SpatialMemory.positions``) and resolves in Python over the numpy references
(``resolve_move_reference``: the count sampled densely along the move, then bisected). Tests compare them.
Deterministic: no clocks, no threads, the same memory and move give the same result.

The memory is read on the caller's thread: a Play session's integrator reads it between that session's clips (the
session awaits each clip), so never during its own memory update; an Edit RPC running on the world's thread at the
same moment is not excluded (at worst one move collides with a half-edited memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from spatia.world.errors import InvalidInputError
from spatia.world.memory import OBSERVED, SpatialMemory
from spatia.world.numba_start import nb

MAX_SLIDES = 4  # sweeps per move: the move, then up to three slides (a corner of two walls needs two)
NORMAL_EPS = 1e-12  # a normal sum shorter than this has no direction (points all round the centre)
LEVEL_SHARE = 0.5  # a level walk slides level off a contact whose normal is within 60 deg of horizontal


@dataclass(frozen=True)
class CollisionConfig:
    min_points: int = 4  # points inside the body that make a contact: fewer (stray points, noise) do not block
    skin_m: float = 0.01  # a stopped body stays this far back along its move, so a slide does not catch on roughness
    include_invented: bool = True  # invented points block too (what the player sees as a wall is both kinds)
    # invented points block at max(body radius, this): the engine's free radius (module docstring); 0: body radius
    invented_clearance_m: float = 0.5

    def __post_init__(self) -> None:
        if int(self.min_points) < 1:
            raise InvalidInputError(f"min_points must be >= 1, got {self.min_points}")
        if not (math.isfinite(self.skin_m) and self.skin_m >= 0):
            raise InvalidInputError(f"skin_m must be >= 0, got {self.skin_m}")
        if not (math.isfinite(self.invented_clearance_m) and self.invented_clearance_m >= 0):
            raise InvalidInputError(f"invented_clearance_m must be >= 0, got {self.invented_clearance_m}")


class Resolved(NamedTuple):
    position: np.ndarray  # [3] world frame, metres: where the body ends
    collided: bool  # the move was clipped (a contact stopped or deflected it)


class Collider(Protocol):
    """What ``ActionIntegrator`` asks: clamp a move of the body against the current world."""

    def resolve(self, position: np.ndarray, move_m: np.ndarray, radius_m: float,
                level_up: np.ndarray | None = None) -> Resolved: ...


# ---------------------------------------------------------------------------------------------------------------
# Kernels (fast) and their references (slow, obviously correct)
# ---------------------------------------------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True)
def first_blocked_fraction(pts, radius, p, d, min_points):
    """Smallest ``t`` in [0, 1] at which a body at ``p + t d`` has ``min_points`` or more of ``pts`` [M, 3] strictly
    within ``radius`` [M] (per point) of its centre; 2.0 when the whole move stays free. ``p`` must be free."""
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    m = pts.shape[0]
    if a == 0.0 or m < min_points:
        return 2.0
    times = np.empty(2 * m, np.float64)
    steps = np.empty(2 * m, np.int64)
    n_events = 0
    inside = 0
    for i in range(m):
        w0 = p[0] - pts[i, 0]
        w1 = p[1] - pts[i, 1]
        w2 = p[2] - pts[i, 2]
        r2 = radius[i] * radius[i]
        c = w0 * w0 + w1 * w1 + w2 * w2 - r2
        b = 2.0 * (d[0] * w0 + d[1] * w1 + d[2] * w2)
        disc = b * b - 4.0 * a * c
        if disc <= 0.0:
            continue  # the line never comes within the radius (or only touches it)
        s = math.sqrt(disc)
        t_in = (-b - s) / (2.0 * a)
        t_out = (-b + s) / (2.0 * a)
        if t_out <= 0.0 or t_in >= 1.0:
            continue
        if c < 0.0:  # inside at the start: leaves at t_out
            inside += 1
            times[n_events] = t_out
            steps[n_events] = -1
            n_events += 1
        else:
            times[n_events] = max(t_in, 0.0)
            steps[n_events] = 1
            n_events += 1
            if t_out < 1.0:
                times[n_events] = t_out
                steps[n_events] = -1
                n_events += 1
    if inside >= min_points:
        return 0.0
    order = np.argsort(times[:n_events])
    for j in range(n_events):
        e = order[j]
        inside += steps[e]
        if inside >= min_points:
            return times[e]
    return 2.0


@nb.njit(cache=True, nogil=True)
def push_direction(pts, radius, c, reach_m):
    """Unnormalised sum over the points within ``radius + reach_m`` of ``c`` of the unit vector from the point to
    ``c``, weighted by ``radius + reach_m - distance``: the direction that leads out of them. Also returns how many
    points lie strictly within ``radius`` (the count that blocks)."""
    out = np.zeros(3, np.float64)
    count = 0
    for i in range(pts.shape[0]):
        w0 = c[0] - pts[i, 0]
        w1 = c[1] - pts[i, 1]
        w2 = c[2] - pts[i, 2]
        dist = math.sqrt(w0 * w0 + w1 * w1 + w2 * w2)
        if dist < radius[i]:
            count += 1
        weight = radius[i] + reach_m - dist
        if weight > 0.0 and dist > 0.0:
            out[0] += weight * w0 / dist
            out[1] += weight * w1 / dist
            out[2] += weight * w2 / dist
    return out, count


def first_blocked_fraction_reference(pts: np.ndarray, radius: np.ndarray, p: np.ndarray, d: np.ndarray,
                                     min_points: int, samples: int = 1001) -> float:
    """``first_blocked_fraction`` by counting the points inside the body at ``samples`` evenly spaced ``t``; the
    first blocked sample and the free one before it are then bisected (2.0 when no sample is blocked). A blocked
    stretch shorter than ``1 / (samples - 1)`` can be missed."""
    def blocked(t: float) -> bool:
        return int((np.linalg.norm(pts - (p + t * d)[None, :], axis=1) < radius).sum()) >= min_points

    free = 0.0
    for t in np.linspace(0.0, 1.0, samples):
        if blocked(float(t)):
            hit = float(t)
            for _ in range(50):
                mid = 0.5 * (free + hit)
                free, hit = (free, mid) if blocked(mid) else (mid, hit)
            return hit
        free = float(t)
    return 2.0


def push_direction_reference(pts: np.ndarray, radius: np.ndarray, c: np.ndarray, reach_m: float
                             ) -> tuple[np.ndarray, int]:
    """``push_direction`` in numpy."""
    w = c[None, :] - pts
    dist = np.linalg.norm(w, axis=1)
    weight = radius + reach_m - dist
    use = (weight > 0) & (dist > 0)
    out = (weight[use, None] * w[use] / dist[use, None]).sum(axis=0) if use.any() else np.zeros(3)
    return out, int((dist < radius).sum())


@nb.njit(cache=True, nogil=True)
def _unit_normal(push, level_up, use_level):
    """(unit contact normal, whether it has a direction) from a ``push_direction`` sum, without its part along
    ``level_up`` when ``use_level`` (a level walk slides level along a wall that is not quite vertical), unless
    the contact is mostly above or below the body (a lintel, a table top): its normal keeps its vertical part
    then, and the body slides under or over it instead of stopping."""
    n = push.copy()
    if use_level:
        level = n - (n[0] * level_up[0] + n[1] * level_up[1] + n[2] * level_up[2]) * level_up
        if level[0] * level[0] + level[1] * level[1] + level[2] * level[2] >= LEVEL_SHARE**2 * (
                n[0] * n[0] + n[1] * n[1] + n[2] * n[2]):
            n = level
    norm = math.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
    if norm <= NORMAL_EPS:
        return n, False
    return n / norm, True


@nb.njit(cache=True, nogil=True)
def _resolve_kernel(pts, radius, position, move, min_points, skin, level_up, use_level):
    p = position.copy()
    d = move.copy()
    if d[0] == 0.0 and d[1] == 0.0 and d[2] == 0.0:
        return p, False
    push, count = push_direction(pts, radius, p, 0.0)
    if count >= min_points:  # already inside: anywhere but deeper (module docstring)
        n, ok = _unit_normal(push, level_up, use_level)
        if ok:
            into = d[0] * n[0] + d[1] * n[1] + d[2] * n[2]
            if into < 0.0:
                return p + d - into * n, True
        return p + d, False
    collided = False
    for _ in range(MAX_SLIDES):
        t = first_blocked_fraction(pts, radius, p, d, min_points)
        if t > 1.0:
            return p + d, collided
        collided = True
        contact = p + t * d
        step = math.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
        t_stop = max(0.0, t - skin / step)
        push, _ = push_direction(pts, radius, contact, skin)
        p = p + t_stop * d
        n, ok = _unit_normal(push, level_up, use_level)
        if not ok:
            break
        d = (1.0 - t_stop) * d
        into = d[0] * n[0] + d[1] * n[1] + d[2] * n[2]
        if into >= 0.0:  # (sweeping the same rest again would stop at the same contact)
            break
        d = d - into * n
        if math.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]) <= 1e-9:
            break
    return p, collided


def resolve_move(pts: np.ndarray, radius: np.ndarray, position: np.ndarray, move_m: np.ndarray,
                 config: CollisionConfig, level_up: np.ndarray | None = None) -> Resolved:
    """Move a body from ``position`` by ``move_m`` (both [3], world frame) among ``pts`` [M, 3], each blocking
    within its ``radius`` [M] (module docstring; one numba call). ``pts`` must hold every point within reach of
    the move: those within ``radius + |move_m| + skin_m`` of the segment and of its slides (``MemoryCollider``
    asks the memory for the box grown by that much). ``level_up`` [3] (unit, world up): the move is level and
    its slides stay level, but off a contact above or below the body (``_unit_normal``)."""
    use_level = level_up is not None
    up = np.asarray(level_up, np.float64) if use_level else np.zeros(3)
    out, hit = _resolve_kernel(np.ascontiguousarray(pts, np.float64), np.ascontiguousarray(radius, np.float64),
                               np.asarray(position, np.float64), np.asarray(move_m, np.float64),
                               int(config.min_points), float(config.skin_m), up, use_level)
    return Resolved(out, bool(hit))


def resolve_move_reference(pts: np.ndarray, radius: np.ndarray, position: np.ndarray, move_m: np.ndarray,
                           config: CollisionConfig, level_up: np.ndarray | None = None) -> Resolved:
    """``resolve_move`` in plain Python over the numpy references (``first_blocked_fraction_reference``,
    ``push_direction_reference``)."""
    p = np.asarray(position, np.float64).copy()
    d = np.asarray(move_m, np.float64).copy()
    if not d.any():
        return Resolved(p, False)

    def normal(push: np.ndarray) -> np.ndarray | None:
        if level_up is not None:
            level = push - float(push @ level_up) * level_up
            if np.linalg.norm(level) >= LEVEL_SHARE * np.linalg.norm(push):
                push = level
        norm = float(np.linalg.norm(push))
        return push / norm if norm > NORMAL_EPS else None

    k, skin = int(config.min_points), float(config.skin_m)
    push, count = push_direction_reference(pts, radius, p, 0.0)
    if count >= k:
        n = normal(push)
        if n is not None and float(d @ n) < 0.0:
            return Resolved(p + d - float(d @ n) * n, True)
        return Resolved(p + d, False)
    collided = False
    for _ in range(MAX_SLIDES):
        t = first_blocked_fraction_reference(pts, radius, p, d, k)
        if t > 1.0:
            return Resolved(p + d, collided)
        collided = True
        t_stop = max(0.0, t - skin / float(np.linalg.norm(d)))
        n = normal(push_direction_reference(pts, radius, p + t * d, skin)[0])
        p = p + t_stop * d
        if n is None:
            break
        d = (1.0 - t_stop) * d
        if float(d @ n) >= 0.0:
            break
        d = d - float(d @ n) * n
        if float(np.linalg.norm(d)) <= 1e-9:
            break
    return Resolved(p, collided)


# ---------------------------------------------------------------------------------------------------------------
# Colliders over a world's memory
# ---------------------------------------------------------------------------------------------------------------


class MemoryCollider:
    """Collides a body with a ``SpatialMemory``'s points as they are at each call (the world's memory, which its
    updates change between calls). Reads only the memory's points near the move."""

    def __init__(self, memory: SpatialMemory, config: CollisionConfig = CollisionConfig()) -> None:
        self.memory = memory
        self.config = config

    def _reach_m(self, radius_m: float) -> float:
        if not self.config.include_invented:
            return radius_m
        return max(radius_m, self.config.invented_clearance_m)

    def _radii(self, provenance: np.ndarray, radius_m: float) -> tuple[np.ndarray, np.ndarray]:
        """(keep [M] bool, radius [M] float64) of the points with ``provenance`` [M]."""
        observed = provenance == OBSERVED
        if not self.config.include_invented:
            return observed, np.full(int(observed.sum()), radius_m)
        return np.ones(len(provenance), bool), np.where(observed, radius_m, self._reach_m(radius_m))

    def _points_near(self, lo_m: np.ndarray, hi_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.memory.points_in_box(lo_m, hi_m)

    def resolve(self, position: np.ndarray, move_m: np.ndarray, radius_m: float,
                level_up: np.ndarray | None = None) -> Resolved:
        """``resolve_move`` against the memory's points near the move (``level_up``: see there)."""
        if not (math.isfinite(radius_m) and radius_m > 0):
            raise InvalidInputError(f"radius_m must be positive, got {radius_m}")
        p = np.asarray(position, np.float64)
        d = np.asarray(move_m, np.float64)
        if not d.any():
            return Resolved(p.copy(), False)
        pts, prov = self._points_near(*self._reach_box(p, d, radius_m))
        keep, radius = self._radii(prov, radius_m)
        pts = np.ascontiguousarray(pts[keep]) if not keep.all() else pts
        return self._resolve_move(pts, radius, p, d, self.config, level_up)

    def _reach_box(self, p: np.ndarray, d: np.ndarray, radius_m: float) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) [3], world frame: every point a sweep of the move ``d`` from ``p`` or of its slides can touch
        (slides stay within ``|d|`` of the segment)."""
        grow = self._reach_m(radius_m) + self.config.skin_m + float(np.linalg.norm(d))
        return np.minimum(p, p + d) - grow, np.maximum(p, p + d) + grow

    _resolve_move = staticmethod(resolve_move)


@dataclass(frozen=True, eq=False)
class NearbyPoints:
    """A memory's points in an axis-aligned box, copied out for a process that does not hold the memory (a Ray
    front door's Play session: the world lives in its actor): the memory's points whose voxel lies in the box
    (``SpatialMemory.points_in_box``), as float32 (half the bytes to send; a micrometre at 10 m), sorted into cubic
    cells of ``cell_m`` so that a move's query reads a few cells, not every point (``in_box``; a scan of all of
    them, ~200 k points near a wall at 640x360, took 3-7 ms a move on this machine)."""

    lo_m: np.ndarray  # [3] world frame, metres: the box's low corner
    hi_m: np.ndarray  # [3] world frame, metres: its high corner
    positions: np.ndarray  # [M, 3] float32, world frame, grouped by cell
    provenance: np.ndarray  # [M] uint8 (``world.memory.OBSERVED`` / invented kinds)
    cell_m: float
    cell_keys: np.ndarray  # [C] int64, sorted: the cells that hold points (``_cell_keys``)
    cell_starts: np.ndarray  # [C + 1] int64: cell k's points are positions[cell_starts[k]:cell_starts[k + 1]]

    @classmethod
    def of(cls, memory: SpatialMemory, centre_m: np.ndarray, half_m: float, cell_m: float = 0.25) -> "NearbyPoints":
        """The points within ``half_m`` (per axis) of ``centre_m`` [3] (world frame)."""
        c = np.asarray(centre_m, np.float64).reshape(3)
        if not (np.isfinite(c).all() and math.isfinite(half_m) and half_m > 0 and cell_m > 0):
            raise InvalidInputError(f"a box needs a finite centre, half_m > 0 and cell_m > 0, got {half_m}, {cell_m}")
        lo, hi = c - half_m, c + half_m
        pts, prov = memory.points_in_box(lo, hi)
        cells = np.clip(np.floor((pts - lo) / cell_m), 0, None).astype(np.int64)  # [M, 3]
        dims = _cell_dims(lo, hi, cell_m)
        keys = _cell_keys(cells, dims)
        # numpy sorts 16-bit integers by radix: ~1 ms for 175 k points against ~24 ms for int64 (the default box
        # has 17^3 cells); a larger box takes the general sort
        small = keys.astype(np.int16) if int(np.prod(dims)) <= np.iinfo(np.int16).max else keys
        order = np.argsort(small, kind="stable")
        keys = keys[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
        return cls(lo, hi, np.ascontiguousarray(pts[order], np.float32), prov[order], float(cell_m), keys[starts],
                   np.append(starts, len(order)).astype(np.int64))

    def covers(self, lo_m: np.ndarray, hi_m: np.ndarray) -> bool:
        """Whether the box from ``lo_m`` to ``hi_m`` [3] lies inside this one (what it holds is all there is)."""
        return bool(np.all(lo_m >= self.lo_m) and np.all(hi_m <= self.hi_m))

    def in_box(self, lo_m: np.ndarray, hi_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``([K, 3] float64, [K] uint8)``: the copy's points inside the box from ``lo_m`` to ``hi_m`` [3]."""
        if not len(self.cell_keys):  # nothing in the copy's box
            return np.zeros((0, 3)), np.zeros(0, np.uint8)
        dims = _cell_dims(self.lo_m, self.hi_m, self.cell_m)
        c0 = np.clip(np.floor((lo_m - self.lo_m) / self.cell_m), 0, dims - 1).astype(np.int64)
        c1 = np.clip(np.floor((hi_m - self.lo_m) / self.cell_m), 0, dims - 1).astype(np.int64)
        grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(c0, c1)], indexing="ij"), -1)
        want = _cell_keys(grid.reshape(-1, 3), dims)
        at = np.searchsorted(self.cell_keys, want)
        at = at[(at < len(self.cell_keys)) & (self.cell_keys[np.minimum(at, len(self.cell_keys) - 1)] == want)]
        if not len(at):
            return np.zeros((0, 3)), np.zeros(0, np.uint8)
        first, last = self.cell_starts[at], self.cell_starts[at + 1]
        idx = np.repeat(last - np.cumsum(last - first), last - first) + np.arange(int((last - first).sum()))
        pts = self.positions[idx].astype(np.float64)
        inside = np.all((pts >= lo_m) & (pts <= hi_m), axis=1)
        return pts[inside], self.provenance[idx][inside]


def _cell_dims(lo_m: np.ndarray, hi_m: np.ndarray, cell_m: float) -> np.ndarray:
    """[3] int64: cells along each axis of the box from ``lo_m`` to ``hi_m``."""
    return np.floor((np.asarray(hi_m) - lo_m) / cell_m).astype(np.int64) + 1


def _cell_keys(cells: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """[N] int64 row-major keys of the cells ``cells`` [N, 3] (clipped to ``dims``)."""
    c = np.minimum(cells, dims - 1)
    return (c[:, 0] * dims[1] + c[:, 1]) * dims[2] + c[:, 2]


class NearbyCollider(MemoryCollider):
    """``MemoryCollider`` over a ``NearbyPoints`` copy instead of the memory: the same result, up to the copy's
    float32 positions, for every move whose reach lies inside the copy's box (tested). Beyond the box nothing is
    known, and a wall there must not be walked through, so a move that would reach past it is held (the body stays
    where it is, ``collided`` False) and ``outside`` is set: the holder fetches a copy around ``position_m`` and
    ``replace``s it (``server.ray_host``, after the next clip). At play rates the copy is renewed long before the
    camera gets near its edge; a burst of actions faster than clips are generated waits at the edge. A move that
    collides sets ``collided``: the holder renews the copy after the next clip too, since what stopped it may be
    invented points the world has removed since the copy was taken (a doorway the last clip opened)."""

    def __init__(self, nearby: NearbyPoints, config: CollisionConfig = CollisionConfig()) -> None:
        super().__init__(None, config)  # type: ignore[arg-type]  # no memory here: ``nearby`` stands for it
        self.nearby = nearby
        self.outside = False  # a move since the last copy would have reached past its box (and was held)
        self.collided = False  # a move since the last copy was stopped or deflected by its points
        self.position_m: np.ndarray | None = None  # [3] world frame: where the last move ended

    def resolve(self, position: np.ndarray, move_m: np.ndarray, radius_m: float,
                level_up: np.ndarray | None = None) -> Resolved:
        nearby = self.nearby  # one read: the holder may swap in a new copy from another thread
        p, d = np.asarray(position, np.float64), np.asarray(move_m, np.float64)
        if d.any() and math.isfinite(radius_m) and radius_m > 0 and not nearby.covers(*self._reach_box(p, d, radius_m)):
            self.outside = True  # held: what lies past the copy is not known here
            out = Resolved(p.copy(), False)
        else:
            out = super().resolve(position, move_m, radius_m, level_up)
            self.collided |= out.collided
        self.position_m = out.position
        return out

    def _points_near(self, lo_m: np.ndarray, hi_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.nearby.in_box(lo_m, hi_m)

    def replace(self, nearby: NearbyPoints) -> None:
        self.nearby = nearby
        self.outside = self.collided = False


class ReferenceCollider(MemoryCollider):
    """``MemoryCollider`` over every point of the memory with the numpy references: slow, obviously correct."""

    _resolve_move = staticmethod(resolve_move_reference)

    def _points_near(self, lo_m: np.ndarray, hi_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts = self.memory.positions.astype(np.float64)  # [N, 3] every point
        inside = np.all((pts >= lo_m) & (pts <= hi_m), axis=1)
        return pts[inside], np.asarray(self.memory.provenance)[inside]
