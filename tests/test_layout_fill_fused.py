"""The layout fill's compiled frame path (``GeometricGenerator._layout_fill``, ``model.fill.image.hole_kernels``) against
its numpy definition (``_layout_fill_reference``): the same bits of depth, colour mask and frame, on random rooms
and poses and on the frames of a house walk (doorways, the rooms beyond them)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from spatia.model import geometric
from spatia.model.fill.geometry import layout as layout_module
from spatia.model.fill.geometry.layout import LayoutConfig, cast_layout, estimate_layout, view_bounds
from spatia.model.fill.image import hole_kernels
from spatia.model.fill.texture.appearance import AppearanceConfig, PlaneTextures, SkyModel, plane_basis
from spatia.world.camera import Intrinsics
from spatia.world.generator import ReferenceFrame
from spatia.world.geometry import pixel_rays
from tests.conftest import box_room_points


def _same(a, b) -> None:
    (da, ca, ra), (db, cb, rb) = a, b
    assert da.dtype == db.dtype == np.float32
    np.testing.assert_array_equal(da, db)
    np.testing.assert_array_equal(ca, cb)
    np.testing.assert_array_equal(ra, rb)


def test_pinholes_are_cv2s_chamfer_distance():
    """``hole_rays`` flags a hole as a pinhole where ``cv2.distanceTransform(DIST_L2, 3)`` puts a rendered pixel
    within ``pinhole_px`` (and the background fill has a depth there), without the whole-frame transform; and
    ``hole_rays_near`` (the frame path's, from a dilation) gives the same outputs."""
    rng = np.random.default_rng(0)
    for trial in range(12):
        h, w = rng.integers(5, 40, 2)
        valid = rng.random((h, w)) < rng.uniform(0.02, 0.9)
        if trial == 0:
            valid[:] = False  # nothing rendered: no pinholes
        filled = np.where(rng.random((h, w)) < 0.8, rng.uniform(0.5, 5, (h, w)), 0).astype(np.float32)
        rays = rng.normal(size=(h, w, 3)).astype(np.float32)
        dist = cv2.distanceTransform((~valid).view(np.uint8), cv2.DIST_L2, 3)
        for px in (1.0, 1.5, 2.0, 2.5, 3.0, 4.2):
            idx, f, pin, cast, rays_cast = hole_kernels.hole_rays(valid, filled, rays,
                                                                  *hole_kernels.chamfer_offsets(px))
            np.testing.assert_array_equal(idx, np.flatnonzero(~valid))
            np.testing.assert_array_equal(f, filled.ravel()[idx])
            np.testing.assert_array_equal(pin, (dist.ravel()[idx] <= px) & (f > 0))
            np.testing.assert_array_equal(cast, np.flatnonzero(~pin))
            np.testing.assert_array_equal(rays_cast, rays.reshape(-1, 3)[idx[cast]])
            # the frame path's pass: the pinhole test from the dilation of the rendered pixels, the same outputs
            near = hole_kernels.near_rendered(valid, *hole_kernels.chamfer_offsets(px))
            got = hole_kernels.hole_rays_near(valid, filled, rays, near)
            for a, b in zip(got, (idx, f, pin, cast, rays_cast)):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


def _room(rng, synthesis: bool, indoor: bool):
    """A box room (``box_room_points``) turned by a random yaw, its layout and plane textures."""
    yaw = rng.uniform(0, 2 * np.pi)
    R = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    pts = box_room_points(rng, R, n=2500)
    local = pts @ R  # room frame: stripes and checks that depend on the position alone
    cols = np.stack([(np.floor(local[:, 0] / 0.2) % 2) * 150 + 50, (np.floor(local[:, 1] / 0.3) % 2) * 120 + 60,
                     (np.floor(local[:, 2] / 0.25) % 2) * 100 + 80], 1).astype(np.uint8)
    observer = R @ np.array([3.0, 1.6, 1.0])
    layout = estimate_layout(pts, observer, np.array([0.0, 1.0, 0.0]), R @ np.array([0.0, 0.0, 1.0]),
                             LayoutConfig(max_room_extent_m=20.0))
    sky = None
    if not indoor:  # the same planes outdoors: the ground's cap, the sky where nothing is hit
        layout = dataclasses.replace(layout, indoor=False, config=dataclasses.replace(layout.config,
                                                                                      max_ground_m=6.0))
        sky = SkyModel(layout.up.copy(), 10.0, rng.integers(0, 256, (18, 3)).astype(np.uint8))
    textures = PlaneTextures(layout, pts, cols, AppearanceConfig(synthesis=synthesis))
    # outdoors rendered pixels from 6 m on count as the sky (the first view's sky kept as points)
    return R, layout, geometric._LayoutState(("test",), layout, textures, sky, observer,
                                             6.0 if sky is not None else float("inf"))


def _pose(rng, R, room_m) -> np.ndarray:
    """A camera in the room (room-frame position ``room_m``), looking somewhere level-ish."""
    yaw, pitch = rng.uniform(-np.pi, np.pi), rng.uniform(-0.5, 0.5)
    fwd = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.cross([0.0, 1.0, 0.0], fwd)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c2w = np.eye(4)
    c2w[:3, :3] = R @ np.stack([right, down, fwd], 1)
    c2w[:3, 3] = R @ room_m
    return c2w


@pytest.mark.parametrize("synthesis,indoor,regions", [(True, True, False), (False, True, False),
                                                       (True, False, False), (True, True, True)])
def test_fused_layout_fill_matches_the_reference_in_random_rooms(synthesis, indoor, regions):
    """Random poses in a turned box room (paths through its back wall: doorways and the room beyond), memory
    renders with pinholes, holes and near furniture, an observed view that saw through part of a wall (rays
    re-cast beyond it) and left sky; with ``regions`` the synthesised planes have a far look beyond 3 m and
    are never seen (``PlaneTexture.far`` / ``unseen``, shown at half contrast): the compiled fill gives the
    reference's depth, colour mask and frame."""
    rng = np.random.default_rng(1 if indoor else 2)
    R, layout, state = _room(rng, synthesis, indoor)
    if regions:  # every plane with a synthesis model: a far look 3 m on, the rest never seen
        from spatia.model.fill.texture.appearance import UnseenCells

        regions_on = False
        for plane in layout.planes:
            tex = state.textures.for_plane(plane)
            if tex is None or tex.synth is None:
                continue
            tex.far = dataclasses.replace(tex, seed=tex.seed + 1)
            tex.far_from_m, tex.centre_uv = 3.0, tuple(np.stack(plane_basis(layout, plane)) @ R @ [3, 1.5, 4.0])
            tex.unseen = UnseenCells(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.full(3, 90.0), 0.5)
            regions_on = True
        assert regions_on
    K = Intrinsics.from_fov(75.0, 48, 36)
    rays = pixel_rays(K).astype(np.float32)
    gen = geometric.GeometricGenerator()
    first = _pose(rng, R, np.array([3.0, 1.6, 1.0]))
    obs_depth, _ = cast_layout(layout, view_bounds(layout, first[:3, 3], first[None, :3, 3]), rays.reshape(-1, 3),
                               first)
    obs_depth = obs_depth.reshape(K.height, K.width).copy()
    obs_depth[10:20, 15:30] *= 3.0  # it saw through here (a window): layout hits there are re-cast beyond
    obs_depth[:4] = 0.0  # nothing came back
    view = ReferenceFrame(0, np.zeros((K.height, K.width, 3), np.uint8), first, K, depth_m=obs_depth)
    released: list[int] = []
    rule = geometric._invented_pinholes_on_planes
    geometric._invented_pinholes_on_planes = lambda *a: _counted(rule(*a), released)
    try:
        _random_room_trials(rng, R, layout, state, K, rays, gen, view, released)
    finally:
        geometric._invented_pinholes_on_planes = rule


def _random_room_trials(rng, R, layout, state, K, rays, gen, view, released):
    through_frames = 0
    for trial in range(10):
        start = np.array([rng.uniform(1, 5), 1.6, rng.uniform(2, 6.5)])
        reach = R @ np.stack([start, start + [0, 0, 1.0], [start[0], 1.6, 7.6], [start[0] + 0.3, 1.6, 9.5]]).T
        c2w = _pose(rng, R, start)
        truth, _ = cast_layout(layout, view_bounds(layout, c2w[:3, 3], reach.T), rays.reshape(-1, 3), c2w)
        depth = truth.reshape(K.height, K.width).copy()
        depth[rng.random(depth.shape) < 0.1] = 0.0  # pinholes
        y, x = rng.integers(0, 20), rng.integers(0, 30)
        depth[y:y + 14, x:x + 18] = 0.0  # a hole the fill reaches over
        depth[20:26, 5:12] = np.where(depth[20:26, 5:12] > 0, 0.8, 0.0)  # furniture in front
        valid = depth > 0
        rgb = rng.integers(0, 256, (K.height, K.width, 3), dtype=np.uint8)
        colored = valid & (rng.random(valid.shape) < 0.9)
        request = SimpleNamespace(intrinsics=K, observed_views=[view] if trial % 4 else [])
        args = (colored, depth, valid, c2w, request, reach.T)
        calls = []
        beyond = gen._beyond_openings
        gen._beyond_openings = lambda *a: (calls.append(1), beyond(*a))[1]
        # the memory's observed points: a block of the rendered pixels (the pinholes elsewhere lie between invented
        # points, and those on a plane are cast and textured: ``texture_invented_pinholes``)
        observed = valid.copy()
        observed[:, : K.width // 2] = False
        want_rgb = rgb.copy()
        want = (*gen._layout_fill_reference(state, want_rgb, *args, observed_px=observed), want_rgb)
        got_rgb = rgb.copy()
        got = (*gen._layout_fill(state, got_rgb, *args, observed_px=observed), got_rgb)
        del gen._beyond_openings
        _same(got, want)
        through_frames += bool(calls)
    assert through_frames > 0  # the window made some rays go beyond the wall
    assert sum(released) > 0  # pinholes between invented points on a plane were cast and textured


def _counted(out: tuple, counts: list) -> tuple:
    counts.append(len(out[0]))  # the released pinholes' indices
    return out


def test_fused_layout_fill_matches_the_reference_on_a_house_walk(monkeypatch):
    """The frames of the house loop in the server's play clips (64x36, the first 60 frames, through doorways):
    every frame the layout fill makes; the view's bounds from the world's path summary (``layout.PathSummary``,
    kept as the path grows) equal those computed afresh from the whole path."""
    from spatia.world.actions import ClipConfig
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.scenes import make_scene
    from spatia.world.state import World

    G = geometric.GeometricGenerator
    fused, checked, openings, masks, fronts, offs, released = G._layout_fill, [], [], [], [], [], []

    def both(self, state, rgb, colored, depth, valid, c2w, request, reach, coarse=None, given=None, claims=None,
             observed=None):
        want_rgb = rgb.copy()
        want = (*G._layout_fill_reference(self, state, want_rgb, colored, depth, valid, c2w, request, reach, coarse,
                                          given, claims, observed), want_rgb)
        want_mask = None if coarse is None else coarse.mask
        want_front = None if coarse is None else coarse.in_front
        want_off = None if coarse is None else coarse.off_surface
        got = fused(self, state, rgb, colored, depth, valid, c2w, request, reach, coarse, given, claims, observed)
        assert observed is not None  # the generator declares ``reads_observed``: the engine gives the mask
        _same((*got, rgb), want)
        if coarse is not None:  # the per-plane coarse fill's provisional pixels: the same
            assert (want_mask is None) == (coarse.mask is None)
            assert want_mask is None or np.array_equal(want_mask, coarse.mask)
            # ... and the pixels whose fill lies in front of the layout (shown, not folded): the same
            assert (want_front is None) == (coarse.in_front is None)
            assert want_front is None or np.array_equal(want_front, coarse.in_front)
            # ... and those showing a reference's colour from another surface (shown, not folded): the same
            assert (want_off is None) == (coarse.off_surface is None)
            assert want_off is None or np.array_equal(want_off, coarse.off_surface)
            fronts.append(want_front is not None)
            masks.append(want_mask is not None)
            offs.append(want_off is not None)
        checked.append(1)
        # the path's extremes and crossings from the world's path summary, kept clip after clip ...
        assert isinstance(reach, layout_module.LayoutPath)
        view = view_bounds(state.layout, c2w[:3, 3], reach)
        assert view_bounds(state.layout, c2w[:3, 3], reach.positions()) == view  # ... and computed afresh
        assert np.array_equal(reach.positions(), geometric._reach(request))
        assert given is None or given == view  # the view the generator computed for the frame (and declared open)
        openings.append(bool(view.openings))
        return got

    rule = geometric._invented_pinholes_on_planes
    monkeypatch.setattr(geometric, "_invented_pinholes_on_planes", lambda *a: _counted(rule(*a), released))
    monkeypatch.setattr(G, "_layout_fill", both)
    world = World.from_scene("house", 0, 64, 36)
    path = make_scene("house", 0).demo_path(161)[1:61]
    cfg = EngineConfig(clip=ClipConfig(first_clip_frames=4, clip_frames=6, preceding_frames=2), keyframe_stride=4)
    frames = list(Engine(world, G(geometric.GeometricConfig(coarse_frames=0, coarse_plane_frames=8)), cfg).generate(path, seed=0))
    assert len(frames) == len(path) and len(checked) == len(path)
    assert any(openings)  # the walk went through doorways
    assert any(masks) and not all(masks)  # frames with planes' coarse fill and frames without
    assert any(fronts)  # frames with pixels whose fill lies in front of the layout
    assert any(offs)  # frames with pixels showing a reference's colour from another surface
    assert sum(released) > 0  # gaps between invented points on a plane, textured (both fills)


def test_texel_reads_match_the_numpy_plan():
    """``texture.read_texels`` (tiles planned in one compiled pass) writes what its numpy twin writes: texels of
    both tile-read levels and the far field, tiles in reach packed densely and scattered (the sort), into the
    rows ``dst`` names."""
    from spatia.model.fill.texture import synthesis as texture

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    valid = np.ones((40, 40), bool)
    valid[10:20, 12:30] = False
    model = texture.TextureModel.fit(rgb, valid, 0.01, tile_px=16)
    for spread in (40, 3000):  # texels within a few tiles; over a range too wide for a table of its tiles
        n = 300
        rows = rng.integers(-spread, spread, n)
        cols = rng.integers(-spread, spread, n)
        if spread > 100:  # a handful of distinct tiles, far apart
            rows = rng.choice([-2900, -35, 2, 2800], n) + rng.integers(0, 16, n)
        level = rng.choice([0, 1, 2, 3], n, p=[0.5, 0.3, 0.1, 0.1])
        dst = rng.permutation(2 * n)[:n]
        want = np.zeros((2 * n, 3), np.uint8)
        got = np.zeros((2 * n, 3), np.uint8)
        texture._read_texels_reference(model, rows, cols, level, 5, dst, want)
        texture.read_texels(model, rows, cols, level, 5, dst, got)
        np.testing.assert_array_equal(got, want)
        assert want[dst].any()
    one = np.zeros((1, 3), np.uint8)
    texture.read_texels(model, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 5, None, one)
    assert not one.any()  # nothing to read: nothing written


def test_missing_tiles_shared_with_the_helper_give_the_same_texels(monkeypatch):
    """A read that misses several tiles shares them with the helper thread (``_make_missing_tiles``): the texels
    are those of the numpy twin reading a model of its own (same fit, tiles made one by one on the caller's
    thread); the helper made some of them, and a helper job that had not started is taken back."""
    import threading

    from spatia.model.fill.texture import synthesis as texture

    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    valid = np.ones((40, 40), bool)
    valid[10:20, 12:30] = False
    ours, twin = (texture.TextureModel.fit(rgb, valid, 0.01, tile_px=16) for _ in range(2))
    made_by = []
    warm = texture.TextureModel._warm_tile
    helper_started = threading.Event()

    def spy(self, *args):
        # the caller's half waits until the helper's is under way: on a loaded machine the helper may not start
        # before the caller is done, and then its half is taken back by design (the test failed so at load 10)
        if threading.current_thread().name.startswith("spatia-tile-helper"):
            helper_started.set()
        elif self is ours:
            helper_started.wait(30)
        made = warm(self, *args)
        if made:
            made_by.append(threading.current_thread().name)
        return made

    monkeypatch.setattr(texture.TextureModel, "_warm_tile", spy)
    n = 2000
    rows, cols = rng.integers(-80, 80, n), rng.integers(-80, 80, n)  # ~100 tiles of 16 x 16, none made yet
    level = rng.choice([0, 1], n)
    want = np.zeros((n, 3), np.uint8)
    got = np.zeros((n, 3), np.uint8)
    texture._read_texels_reference(twin, rows, cols, level, 7, None, want)
    texture.read_texels(ours, rows, cols, level, 7, None, got)
    np.testing.assert_array_equal(got, want)
    helper = [name for name in made_by if name.startswith("spatia-tile-helper")]
    assert helper and len(helper) < len(made_by)  # shared: some tiles on each thread

    # a helper busy elsewhere: its share is taken back, not waited for
    gate = threading.Event()
    blocker = texture._helper_pool().submit(gate.wait, 10)
    try:
        again = texture.TextureModel.fit(rgb, valid, 0.01, tile_px=16)
        made_by.clear()
        got[:] = 0
        texture.read_texels(again, rows, cols, level, 7, None, got)
        np.testing.assert_array_equal(got, want)
        assert made_by and not any(name.startswith("spatia-tile-helper") for name in made_by)
    finally:
        gate.set()
        blocker.result()


def test_poses_near_points_per_plane_match_one_tree_over_all_poses():
    """``geometric._near_poses`` (per plane, only the poses that can be near it) finds what one KD-tree over every
    pose finds: the points with a pose strictly nearer than the radius (points on planes up to float32 casts)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(5)
    R, layout, _ = _room(rng, True, True)
    planes = layout.planes
    for trial in range(6):
        reach = R @ np.c_[rng.uniform(0, 6, 40), rng.uniform(1.2, 1.8, 40), rng.uniform(0, 8, 40)].T
        idx = rng.integers(0, len(planes), 3000)
        pts = R @ np.c_[rng.uniform(-1, 7, 3000), rng.uniform(-1, 4, 3000), rng.uniform(-1, 9, 3000)].T
        pts = pts.T
        for q, p in enumerate(planes):  # onto its plane, as a float32 ray cast puts it (off by ~1e-7)
            on = idx == q
            a = layout.axes[p.axis]
            pts[on] += (p.offset_m - pts[on] @ a)[:, None] * a * (1 + rng.normal(0, 1e-7, (on.sum(), 1)))
        want = np.isfinite(cKDTree(reach.T).query(pts, distance_upper_bound=0.5)[0])
        got = geometric._near_poses(layout, planes, idx, pts, reach.T, 0.5)
        np.testing.assert_array_equal(got, want)
        assert want.any() and not want.all()


def test_sky_colour_by_columns_is_the_norm_it_replaced():
    """``SkyModel.colour`` takes the directions' lengths by columns: the same bands as with ``np.linalg.norm``."""
    rng = np.random.default_rng(6)
    sky = SkyModel(np.array([0.0, 1.0, 0.0]), 1.0, rng.integers(0, 256, (180, 3)).astype(np.uint8))
    dirs = rng.normal(size=(20000, 3)) * rng.uniform(1e-3, 1e3, (20000, 1))
    elev = np.degrees(np.arcsin(np.clip((dirs @ sky.up) / np.maximum(np.linalg.norm(dirs, axis=1), 1e-12), -1, 1)))
    want = sky.colours[np.clip(((elev + 90.0) / sky.band_deg).astype(np.int64), 0, len(sky.colours) - 1)]
    np.testing.assert_array_equal(sky.colour(dirs), want)
