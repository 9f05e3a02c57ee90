"""Collision of the walking camera (world/collision.py): stop at a wall by the body radius, slide along it, back
away, walk out of points, ignore stray points; the fast kernels and collider against their references; lock-step
determinism and the env's ``info["collided"]``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spatia.world.actions import Action, ActionIntegrator, ControlConfig
from spatia.world.collision import (
    CollisionConfig, MemoryCollider, NearbyCollider, NearbyPoints, ReferenceCollider, first_blocked_fraction, first_blocked_fraction_reference,
    push_direction, push_direction_reference, resolve_move, resolve_move_reference,
)
from spatia.world.errors import InvalidInputError
from spatia.world.memory import INVENTED_FINAL, OBSERVED, MemoryConfig, SpatialMemory
from spatia.world.state import World

R = 0.25  # body radius, metres
FPS = 16.0


def wall_points(z_m: float = 1.0, half_m: float = 1.5, spacing_m: float = 0.02) -> np.ndarray:
    """A square wall in the plane z = ``z_m`` (world frame), centred on the z axis, points on a grid."""
    g = np.arange(-half_m, half_m + 1e-9, spacing_m)
    x, y = np.meshgrid(g, g)
    return np.stack([x.ravel(), y.ravel(), np.full(x.size, z_m)], axis=1)


def memory_of(points: np.ndarray, provenance: int = OBSERVED, memory: SpatialMemory | None = None) -> SpatialMemory:
    mem = memory if memory is not None else SpatialMemory(MemoryConfig(voxel_size_m=0.01))
    mem.integrate_points(points, np.full((len(points), 3), 128, np.uint8), frame_index=0, provenance=provenance)
    return mem


def walker(memory: SpatialMemory, config: CollisionConfig = CollisionConfig(), yaw_rad: float = 0.0,
           position=(0.0, 0.0, 0.0)) -> ActionIntegrator:
    """An integrator at ``position`` looking along +z (turned by ``yaw_rad``), colliding with ``memory``."""
    return ActionIntegrator(np.eye(4), ControlConfig(fps=FPS, body_radius_m=R), yaw_rad=yaw_rad,
                            position=np.asarray(position, np.float64), collider=MemoryCollider(memory, config))


def hold(integ: ActionIntegrator, steps: int, **axes: float) -> list[bool]:
    return [(integ.step(Action(dt_s=1 / FPS, **axes)), integ.collided)[1] for _ in range(steps)]


def test_walk_into_a_wall_stops_short_by_the_radius_and_backs_away_freely():
    integ = walker(memory_of(wall_points(z_m=1.0)))
    hits = hold(integ, 40, move_forward=1.0)  # 2.5 m of walking towards a wall 1 m ahead
    assert not any(hits[:10]) and all(hits[-10:])
    gap = 1.0 - integ.position[2]
    assert R - 0.002 <= gap <= R + CollisionConfig().skin_m + 0.002, gap
    np.testing.assert_allclose(integ.position[:2], 0.0, atol=1e-4)  # straight in: no slide (but voxel rounding)
    # turning and looking are never blocked
    integ.step(Action(yaw_rate_rad_s=1.0, pitch_rate_rad_s=0.5, dt_s=1 / FPS))
    assert not integ.collided and integ.yaw_rad == pytest.approx(1 / FPS)
    # back away: the whole move, no contact
    integ.yaw_rad = integ.pitch_rad = 0.0
    z0 = integ.position[2]
    assert not any(hold(integ, 4, move_forward=-1.0))
    assert integ.position[2] == pytest.approx(z0 - 4 / FPS, abs=1e-12)


def test_diagonal_walk_slides_along_the_wall():
    integ = walker(memory_of(wall_points(z_m=0.6)), yaw_rad=math.radians(45))  # heading 45 deg between +z and +x
    hold(integ, 16, move_forward=1.0)  # 1 m of walking
    x0, z0 = integ.position[0], integ.position[2]
    assert 0.6 - z0 == pytest.approx(R, abs=0.015)
    hits = hold(integ, 8, move_forward=1.0)
    assert all(hits)
    along = integ.position[0] - x0  # glides along the wall at the tangential share of the walk (cos 45 deg)
    assert along == pytest.approx(8 / FPS * math.cos(math.radians(45)), rel=0.1)
    assert 0.6 - integ.position[2] == pytest.approx(R, abs=0.015)


def test_corner_stops_and_single_stray_points_do_not_block():
    wall_z = wall_points(z_m=0.8)
    wall_x = wall_points(z_m=0.0)[:, [2, 1, 0]] + [0.8, 0.0, 0.0]  # the plane x = 0.8
    integ = walker(memory_of(np.concatenate([wall_z, wall_x])), yaw_rad=math.radians(30))
    hold(integ, 40, move_forward=1.0)
    assert 0.8 - integ.position[0] == pytest.approx(R, abs=0.015)
    assert 0.8 - integ.position[2] == pytest.approx(R, abs=0.015)
    # stray points: fewer than min_points anywhere along the path let the body through
    stray = np.array([[0.0, 0.0, 0.5], [0.05, 0.0, 1.0], [0.0, 0.05, 1.5]])
    k = CollisionConfig().min_points
    integ = walker(memory_of(np.concatenate([stray, stray[:1] + [0.0, -0.05, 0.0]])))
    assert k > 2 and not any(hold(integ, 32, move_forward=1.0))
    assert integ.position[2] == pytest.approx(2.0)


def test_a_body_inside_points_walks_out_but_never_deeper():
    # an edit put a slab of points through the camera (0.1 m in front of it, 0.2 m thick)
    slab = np.concatenate([wall_points(z_m=z) for z in np.arange(0.1, 0.3, 0.05)])
    integ = walker(memory_of(slab))
    hits = hold(integ, 4, move_forward=1.0)  # deeper into the slab: the move loses its inward part
    assert all(hits) and integ.position[2] == pytest.approx(0.0, abs=1e-9)
    assert not any(hold(integ, 8, move_forward=-1.0))  # out the way it came
    assert integ.position[2] == pytest.approx(-0.5)
    # and sideways while inside: the tangential part goes through
    integ = walker(memory_of(slab))
    hold(integ, 4, move_right=1.0)
    assert integ.position[0] == pytest.approx(0.25, abs=1e-3) and integ.position[2] == pytest.approx(0.0, abs=1e-3)


def test_invented_points_block_at_the_clearance():
    mem = memory_of(wall_points(z_m=1.0), provenance=INVENTED_FINAL)
    integ = walker(mem, CollisionConfig(invented_clearance_m=0.5))
    hold(integ, 24, move_forward=1.0)
    assert 1.0 - integ.position[2] == pytest.approx(0.5, abs=0.015)
    integ = walker(mem, CollisionConfig(include_invented=False))  # observed only: walks through
    assert not any(hold(integ, 24, move_forward=1.0))
    for bad in (lambda: CollisionConfig(min_points=0), lambda: ControlConfig(body_radius_m=0.0)):
        with pytest.raises(InvalidInputError):
            bad()


def test_kernels_match_their_references():
    rng = np.random.default_rng(0)
    for trial in range(30):
        pts = rng.uniform(-0.6, 0.6, (int(rng.integers(5, 300)), 3)) + [0.0, 0.0, 0.5]
        radius = np.where(rng.random(len(pts)) < 0.5, R, 0.4)
        p = np.zeros(3)
        d = rng.normal(size=3) * 0.3
        k = int(rng.integers(1, 6))
        push, count = push_direction(pts, radius, p, 0.01)
        push_ref, count_ref = push_direction_reference(pts, radius, p, 0.01)
        np.testing.assert_allclose(push, push_ref, atol=1e-9)
        assert count == count_ref
        if count >= k:  # the sweep starts from a free body
            continue
        t = first_blocked_fraction(pts, radius, p, d, k)
        t_ref = first_blocked_fraction_reference(pts, radius, p, d, k)
        if t_ref > 1.0:
            assert t > 1.0, (trial, t, t_ref)
        else:
            assert t == pytest.approx(t_ref, abs=1e-9), (trial, t, t_ref)
        config = CollisionConfig(min_points=k)
        level = np.array([0.0, -1.0, 0.0]) if trial % 2 else None
        fast = resolve_move(pts, radius, p, d, config, level)
        ref = resolve_move_reference(pts, radius, p, d, config, level)
        np.testing.assert_allclose(fast.position, ref.position, atol=1e-7)
        assert fast.collided == ref.collided


def test_memory_collider_matches_the_reference_collider_on_a_random_walk():
    rng = np.random.default_rng(1)
    mem = _two_walls(rng)
    assert _random_walk_agrees(MemoryCollider(mem), ReferenceCollider(mem), rng) >= 5  # the walk met the walls


def _two_walls(rng) -> SpatialMemory:
    """An observed wall at z = 0.7 with 40 stray points, and an invented wall at x = -0.8 (world frame)."""
    mem = memory_of(np.concatenate([wall_points(z_m=0.7, spacing_m=0.05), rng.uniform(-1, 1, (40, 3))]))
    return memory_of(wall_points(z_m=-0.8, spacing_m=0.05)[:, [2, 1, 0]], provenance=INVENTED_FINAL, memory=mem)


def _random_walk_agrees(fast, other, rng, steps: int = 40) -> int:
    """Walk both colliders along the same random moves from the origin; they agree at every step (within 10 um:
    the reference and a copy read float32 positions). Returns how many moves collided."""
    p = np.zeros(3)
    hits = 0
    for _ in range(steps):
        d = rng.normal(size=3) * np.array([0.1, 0.02, 0.1])
        a, b = fast.resolve(p, d, R), other.resolve(p, d, R)
        np.testing.assert_allclose(a.position, b.position, atol=1e-5)
        assert a.collided == b.collided
        hits += a.collided
        p = a.position
    return hits


def test_a_nearby_copy_collides_as_the_memory_inside_its_box_and_says_when_a_move_left_it():
    """``NearbyCollider`` (a Ray front door's session: a copy of the points around the camera) gives the memory
    collider's result for every move whose reach lies in the copy's box, and flags the first move that does not."""
    rng = np.random.default_rng(1)
    mem = _two_walls(rng)
    nearby = NearbyPoints.of(mem, np.zeros(3), 1.2)
    assert 0 < len(nearby.positions) < mem.num_points  # the wall's far corners lie outside the box
    for _ in range(20):  # the cell index finds exactly the points a scan of the copy finds
        lo = rng.uniform(-1.5, 1.0, 3)
        hi = lo + rng.uniform(0.0, 1.5, 3)
        got, prov = nearby.in_box(lo, hi)
        scan = np.all((nearby.positions >= lo) & (nearby.positions <= hi), axis=1)
        order = np.lexsort(got.T)
        want = nearby.positions[scan].astype(np.float64)
        np.testing.assert_array_equal(got[order], want[np.lexsort(want.T)])
        assert sorted(prov.tolist()) == sorted(nearby.provenance[scan].tolist())
    copy = NearbyCollider(NearbyPoints.of(mem, np.zeros(3), 3.0))  # a box the walk's reach stays in
    assert _random_walk_agrees(MemoryCollider(mem), copy, rng) >= 5 and not copy.outside
    assert copy.collided  # some of the walk's moves hit a wall: the holder renews the copy after the next clip
    copy.replace(nearby)
    assert not copy.collided
    held = copy.resolve(np.array([0.0, 0.0, 0.3]), np.array([0.0, 0.5, 0.0]), R)  # reaches y = 1.51 > 1.2
    assert copy.outside and not held.collided and not copy.collided  # held where it is: past the copy nothing is known
    np.testing.assert_array_equal(held.position, [0.0, 0.0, 0.3])
    np.testing.assert_array_equal(copy.position_m, [0.0, 0.0, 0.3])
    copy.replace(NearbyPoints.of(mem, np.array([0.0, 0.0, 1.0]), 1.2))
    assert not copy.outside
    with pytest.raises(InvalidInputError):
        NearbyPoints.of(mem, np.array([np.nan, 0.0, 0.0]), 1.0)
    empty = NearbyCollider(NearbyPoints.of(mem, np.array([50.0, 0.0, 0.0]), 1.0))  # no points in the box
    assert len(empty.nearby.positions) == 0
    free = empty.resolve(np.array([50.0, 0.0, 0.0]), np.array([0.1, 0.0, 0.0]), R)
    np.testing.assert_allclose(free.position, [50.1, 0.0, 0.0])
    assert not free.collided and not empty.collided


def test_resolve_move_without_points_or_motion_is_the_plain_move():
    none = np.zeros((0, 3))
    out = resolve_move(none, np.zeros(0), np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.0, 0.0]), CollisionConfig())
    np.testing.assert_array_equal(out.position, [1.1, 2.0, 3.0])
    assert not out.collided
    assert not resolve_move(wall_points(), np.full(len(wall_points()), R), np.zeros(3), np.zeros(3),
                            CollisionConfig()).collided


def test_room_back_wall_stops_the_camera():
    """The room's first image (observed points only, no generation): holding W stops short of the back wall."""
    world = World.from_scene("room", 0, 160, 120)
    integ = ActionIntegrator(world.origin_c2w, ControlConfig(fps=FPS), collider=world.collider())
    hits = hold(integ, 160, move_forward=1.0)  # 10 m: the room is 6-8 m deep
    assert hits[-1]
    pos = world.memory.positions.astype(np.float64)
    p = integ.position
    ahead = (np.abs(pos[:, 0] - p[0]) < 0.1) & (np.abs(pos[:, 1] - p[1]) < 0.1) & (pos[:, 2] > p[2])
    wall_z = float(np.percentile(pos[ahead, 2], 5))
    assert wall_z - p[2] == pytest.approx(R, abs=0.03)
    world.close()


def _walk_into_back_wall(walk_speed_m_s: float = 2.5, collision: bool = True):
    """The room env walked straight at its back wall (observed) with W held: (poses [N, 4, 4], collided [N], the
    env). (A wall nothing observed, e.g. the front wall behind the first camera, gets a doorway where the camera
    heads into it (``LayoutConfig.door_lookahead_m``), sized for the walking camera: the camera walks through it.)"""
    from spatia.client.env import SpatiaWorldEnv

    env = SpatiaWorldEnv(width=48, height=32,
                         control=ControlConfig(walk_speed_m_s=walk_speed_m_s, collision=collision))
    env.reset(seed=0)
    poses, hits = [], []
    for _ in range(40):  # 40 steps at 2.5 m/s and 16 fps: 6.25 m, past the back wall (z ~ 6.5, from z ~ 0.9)
        _, _, _, _, info = env.step(np.array([1, 0, 0, 0, 0], np.float32))
        poses.append(info["pose"])
        hits.append(info["collided"])
    return np.stack(poses), np.array(hits), env


def test_lockstep_walk_into_a_wall_is_deterministic_and_reported_in_info():
    poses_a, hits_a, env_a = _walk_into_back_wall()
    poses_b, hits_b, env_b = _walk_into_back_wall()
    assert not hits_a[:8].any() and hits_a[-4:].all()  # the walk starts free; the wall stops it
    np.testing.assert_array_equal(poses_a, poses_b)
    np.testing.assert_array_equal(hits_a, hits_b)
    mem_a, mem_b = (e._backend.engine.world.memory.to_arrays() for e in (env_a, env_b))
    for name in mem_a:
        assert mem_a[name].tobytes() == mem_b[name].tobytes(), name
    # stopped at the wall: the last steps hardly move (a rough wall's normal is not quite the walk's) and level
    assert np.linalg.norm(poses_a[-1][:3, 3] - poses_a[-2][:3, 3]) < 0.1 / 16
    np.testing.assert_allclose(poses_a[:, 1, 3], poses_a[0, 1, 3], atol=1e-9)
    off, hits_off, env_off = _walk_into_back_wall(collision=False)
    assert not hits_off.any() and off[-1][2, 3] > poses_a[-1][2, 3] + 0.5  # without collision: on through it
    for e in (env_a, env_b, env_off):
        e.close()


def test_a_level_walk_slides_level_along_a_leaning_wall_and_passes_under_a_low_lintel():
    # a wall leaning 20 deg towards the walker: the slide keeps the camera's height
    wall = wall_points(z_m=0.0)
    lean = math.radians(20)
    leaning = np.stack([wall[:, 0], wall[:, 1] * math.cos(lean), 0.5 + wall[:, 1] * math.sin(lean)], axis=1)
    integ = walker(memory_of(leaning), yaw_rad=math.radians(30))
    hold(integ, 24, move_forward=1.0)
    assert integ.position[1] == pytest.approx(0.0, abs=1e-9) and integ.position[0] > 0.3
    # a lintel 0.24 m above the eye (world up is -y): brushed from below, the body slides under it, not stops
    lintel = wall_points(z_m=0.0, half_m=0.6)[:, [0, 2, 1]] + [0.0, -0.24, 0.8]
    integ = walker(memory_of(lintel))
    hits = hold(integ, 32, move_forward=1.0)
    assert any(hits) and integ.position[2] > 1.5 and integ.position[1] > 0.0
