"""Regions of a plane's look (model.fill.texture.appearance, session 9): the ground beyond the distance where its
observed samples change colour continues the far look (the courtyard's grass beyond the paving), and a floor cell
the observed walls cut off with no observed samples (a room beyond a doorway) shows a lower-contrast guess."""

from __future__ import annotations

import numpy as np
import pytest

from spatia.model.fill.texture.appearance import (AppearanceConfig, UnseenCells, _reference_split_by_distance,
                                          _split_by_distance, plane_basis, plane_texture)
from spatia.model.fill.geometry.layout import FLOOR, estimate_layout
from tests.conftest import box_room_points

UP = np.array([0.0, 1.0, 0.0])
FWD = np.array([0.0, 0.0, 1.0])


def test_the_distance_split_matches_its_slow_twin():
    """``_split_by_distance`` (cumulative sums) picks the split the per-split recomputation picks, with ties in
    distance (never split between equal distances) and a step in colour."""
    rng = np.random.default_rng(0)
    for n, step in ((300, 0.0), (300, 90.0), (257, 40.0)):
        r = np.sort(np.round(rng.uniform(0, 30, n), 1))  # rounded: many equal distances
        col = rng.normal(120, 15, (n, 3))
        col[r > 18] += step
        for min_points in (16, 64):
            k, s = _split_by_distance(r, col, min_points)
            k_ref, s_ref = _reference_split_by_distance(r, col, min_points)
            assert k == k_ref and s == pytest.approx(s_ref, rel=1e-9)
            assert r[k - 1] != r[k]
    assert _split_by_distance(np.arange(10.0), np.zeros((10, 3)), 8) is None  # too few for two sides


def _square(rng, n, r_lo, r_hi, centre):
    """``n`` ground points (y = 0) at horizontal distance ``r_lo``..``r_hi`` from ``centre`` [3], all around."""
    r = np.sqrt(rng.uniform(r_lo**2, r_hi**2, n))
    a = rng.uniform(0, 2 * np.pi, n)
    return np.c_[centre[0] + r * np.cos(a), np.zeros(n), centre[2] + r * np.sin(a)]


def _ground_scene(far_colour, tilt_deg=0.12, far_n=600, seed=1):
    """Outdoor points: paving (grey, noisy) within 4 m of the camera, a far ring 10-20 m of ``far_colour`` 1 cm
    lower (grass beside paving), one facade ahead; the fitted layout's axes are then tilted by ``tilt_deg`` (the
    courtyard's fitted up is 0.12 deg off its ground; here ground 15 m away lies 3 cm off the Manhattan plane)."""
    rng = np.random.default_rng(seed)
    cam = np.array([0.0, 1.5, 0.0])
    near = _square(rng, 20000, 0.5, 4.0, cam)
    far = _square(rng, far_n, 10.0, 20.0, cam)
    far[:, 1] -= 0.01
    facade = np.c_[rng.uniform(-6, 6, 3000), rng.uniform(0, 8, 3000), np.full(3000, 14.0)]
    pts = np.concatenate([near, far, facade])
    cols = np.concatenate([np.clip(rng.normal(140, 12, (len(near), 3)), 0, 255),
                           np.tile(np.asarray(far_colour, float), (len(far), 1)),
                           np.full((len(facade), 3), 200.0)]).astype(np.uint8)
    layout = estimate_layout(pts, cam, UP, FWD)
    t = np.radians(tilt_deg)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])  # about x
    layout.axes = layout.axes @ tilt.T
    floor = layout.floor()
    assert floor is not None and not layout.indoor
    return layout, floor, pts, cols, cam


def _ground_uv(layout, floor, xz):
    u_ax, v_ax = plane_basis(layout, floor)
    p = np.c_[xz[:, 0], np.zeros(len(xz)), xz[:, 1]]
    return np.stack([p @ u_ax, p @ v_ax], 1)


def test_the_ground_beyond_a_change_of_look_continues_the_far_look():
    """Paving near the camera and grass in a ring 10-20 m away (slightly below the fitted plane): ground 15 m away
    in any direction shows the grass's colour, ground 2 m away the paving's; without the change (far samples
    of the paving's colour) there is one look; a far side holding most samples is not a region."""
    config = AppearanceConfig(synthesis=False)
    layout, floor, pts, cols, cam = _ground_scene((60, 100, 35))
    tex = plane_texture(layout, floor, pts, cols, config)
    assert tex is not None and tex.far is not None
    assert 4.0 <= tex.far_from_m <= 10.0
    xz = np.array([[15.0, 0.0], [0.0, -15.0], [-10.6, 10.6], [2.0, 0.0], [0.0, -2.0]])
    got = tex.sample(_ground_uv(layout, floor, xz), np.full(len(xz), 0.05)).astype(float)
    assert np.abs(got[:3] - [60, 100, 35]).max() <= 8  # the grass, behind the camera too
    assert np.abs(got[3:].mean(0) - 140).max() <= 25  # the paving near it
    # the far samples are found only against the plane's own fit: with the Manhattan plane's tolerance alone
    # they lie off it (the tilt), and so do some of the near ones
    a = layout.axes[floor.axis]
    assert np.mean(np.abs(pts[np.hypot(pts[:, 0], pts[:, 2]) > 10] @ a - floor.offset_m) <= 0.015) < 0.5
    # off: nothing changes look (far samples like the near ones); the layout is the same (it reads no colours)
    grey = cols.copy()
    far = np.hypot(pts[:, 0], pts[:, 2]) > 10
    grey[far] = 140
    assert plane_texture(layout, floor, pts, grey, config).far is None
    # a far side with more samples than the near one (a rug seen near, the floor beyond) is not a region
    ring = cols.copy()
    ring[(np.hypot(pts[:, 0], pts[:, 2]) > 1.5) & (pts[:, 1] < 0.5)] = (60, 100, 35)
    assert plane_texture(layout, floor, pts, ring, config).far is None


def test_a_floor_cell_cut_off_by_observed_walls_shows_a_lower_contrast_guess():
    """A 6 x 8 m room with a checker floor: floor inside the room (observed cell) keeps the exemplar's contrast;
    floor beyond the right wall (x > 6, no observed samples: the next room) shows the same texels at
    ``unseen_contrast`` around the observed mean."""
    rng = np.random.default_rng(3)
    pts = box_room_points(rng, np.eye(3))
    cols = np.full((len(pts), 3), 150, np.uint8)
    floor_pts = np.abs(pts[:, 1]) < 1e-9
    checker = (np.floor(pts[:, 0] / 0.3) + np.floor(pts[:, 2] / 0.3)) % 2 == 0
    cols[floor_pts & checker] = 230
    cols[floor_pts & ~checker] = 40
    cam = np.array([3.0, 1.6, 1.0])
    layout = estimate_layout(pts, cam, UP, FWD)
    floor = next(p for p in layout.planes if p.kind == FLOOR)
    full = plane_texture(layout, floor, pts, cols, AppearanceConfig(synthesis=False, unseen_contrast=1.0))
    half = plane_texture(layout, floor, pts, cols, AppearanceConfig(synthesis=False))
    assert full.unseen is None and half.unseen is not None
    xz_in = np.c_[rng.uniform(0.5, 5.5, 200), rng.uniform(3.5, 7.5, 200)]
    xz_out = xz_in + [7.0, 0.0]  # the same pattern phase 7 m to the right, past the wall at x = 6
    for xz, unseen in ((xz_in, False), (xz_out, True)):
        uv = _ground_uv(layout, floor, xz)
        a = full.sample(uv, np.full(len(uv), 0.01)).astype(float)
        b = half.sample(uv, np.full(len(uv), 0.01)).astype(float)
        if unseen:
            want = half.unseen.mean + 0.5 * (a - half.unseen.mean)
            assert np.abs(b - want).max() <= 0.51
            assert b.std() < 0.6 * a.std()
        else:
            np.testing.assert_array_equal(a, b)
    # the observed mean is the floor samples' mean colour
    assert np.abs(half.unseen.mean - cols[floor_pts].mean(0)).max() < 12
    # walls seen only up to 1.5 m above the floor are furniture fronts: they cut nothing
    import dataclasses

    low = dataclasses.replace(layout, planes=[dataclasses.replace(p, top_m=1.5) if p.kind != FLOOR
                                              and p.axis != 0 else p for p in layout.planes])
    assert plane_texture(low, floor, pts, cols, AppearanceConfig(synthesis=False)).unseen is None


def test_the_compiled_unseen_cell_contrast_matches_numpy():
    """``UnseenCells.apply`` (compiled, on every floor pixel of a frame) changes the texels its numpy twin
    changes, to the same values: points on the cuts, in every cell, strided colour arrays, no cuts on one axis."""
    rng = np.random.default_rng(4)
    for cuts_u, cuts_v, seen in ((np.array([-1.0, 0.5, 2.0]), np.array([0.0]), np.array([0, 3, 5])),
                                 (np.array([1.0]), np.zeros(0), np.array([1])),
                                 (np.array([0.0]), np.array([0.0]), np.zeros(0, np.int64))):
        cells = UnseenCells(cuts_u, cuts_v, seen, rng.uniform(0, 255, 3), 0.5)
        uv = rng.uniform(-3, 3, (500, 2))
        uv[:20, 0] = cuts_u[0]  # exactly on a cut
        cols = rng.integers(0, 256, (500, 6), dtype=np.uint8)[:, ::2]  # a strided view
        want = cols.copy()
        cells.reference_apply(uv, want)
        got = cols.copy()
        cells.apply(uv, got)
        np.testing.assert_array_equal(got, want)
        strided = cols.copy(order="F")
        cells.apply(uv, strided)
        np.testing.assert_array_equal(strided, want)
        assert (got != cols).any()


def _cloudy_view(w: int = 160, h: int = 90, fov_deg: float = 75.0):
    """A level camera looking along +z (y down: up is -y) at a sky only: a blue gradient by elevation with bright
    cloud dots on a grid of directions (a pattern in azimuth and elevation). Returns (rgb, depth, rays, c2w)."""
    from spatia.world.camera import Intrinsics
    from spatia.world.geometry import pixel_rays

    rays = pixel_rays(Intrinsics.from_fov(fov_deg, w, h)).astype(np.float32)
    d = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    elev = np.degrees(np.arcsin(-d[..., 1]))
    az = np.degrees(np.arctan2(d[..., 0], d[..., 2]))
    rgb = np.empty((h, w, 3), np.float64)
    rgb[:] = np.array([90.0, 140.0, 220.0])
    rgb += elev[..., None] * np.array([1.0, 1.0, 0.5])
    clouds = (np.mod(az, 3.0) < 1.2) & (np.mod(elev, 2.0) < 0.8)
    rgb[clouds] += 60.0
    far = np.full((h, w), 1000.0, np.float32)  # the sky's depth as a world holds it: far (a dome, a photo's 100 m)
    return np.clip(rgb, 0, 255).astype(np.uint8), far, rays, np.eye(4)


def test_pixels_without_depth_below_the_horizon_are_no_sky():
    """A dynamic entity is kept out of the memory, and the first view's depth is 0 there: that is no sky (official
    case 3's grazing cow gave its sky the cow's colours), unless it is above the horizon and open to the sky (the
    top row, or far pixels)."""
    from spatia.model.fill.texture.appearance import sky_model

    rgb, depth, rays, c2w = _cloudy_view()
    up = np.array([0.0, -1.0, 0.0])
    h, w = depth.shape
    depth[h // 2 + 2:] = 8.0  # ground below the horizon
    brown = np.array([120, 60, 20], np.uint8)
    rgb[h // 2 + 10: h - 5, 20: 80] = brown  # a cow below the horizon, masked out: no depth
    depth[h // 2 + 10: h - 5, 20: 80] = 0.0
    sky = sky_model(up, rgb, depth, rays, c2w)
    assert sky is not None
    assert np.abs(sky.colours.astype(int) - brown).sum(axis=1).min() > 100  # no band took the cow's colour
    depth[: h // 2 + 2] = 8.0  # no sky in view at all: the cow alone makes none
    assert sky_model(up, rgb, depth, rays, c2w) is None
    rgb[10:30, 20:80], depth[10:30, 20:80] = brown, 0.0  # ... nor does one against a hillside above the horizon
    assert sky_model(up, rgb, depth, rays, c2w) is None
    depth[:30, 20:80] = 0.0  # a region without depth that reaches the top row is sky (a depth sensor's)
    assert sky_model(up, rgb, depth, rays, c2w) is not None


def test_the_sky_continues_the_observed_clouds_around_the_horizon():
    """The sky layer adds the observed sky's detail to its bands: turned 90 and 180 degrees away from the view,
    at the elevations it saw, the sky steps from pixel to pixel along the horizon about as much as the view did
    (the bands alone: under a tenth of it); the vectorised lookup is its ray-by-ray twin's."""
    from spatia.model.fill.texture.appearance import SkyModel, sky_model

    rgb, depth, rays, c2w = _cloudy_view()
    up = np.array([0.0, -1.0, 0.0])
    sky = sky_model(up, rgb, depth, rays, c2w)
    assert sky is not None and sky.detail is not None

    def step(img):  # along the horizon: the bands have no steps that way, clouds do
        return np.abs(np.diff(img.astype(np.float64).mean(-1), axis=1)).mean()

    seen = step(rgb[5:-5])
    for yaw in (90.0, 180.0):
        t = np.radians(yaw)
        R = np.array([[np.cos(t), 0.0, np.sin(t)], [0.0, 1.0, 0.0], [-np.sin(t), 0.0, np.cos(t)]])
        img = sky.colour(rays.reshape(-1, 3) @ R.T).reshape(rgb.shape)
        assert 0.7 <= step(img[5:-5]) / seen <= 1.3, (yaw, step(img[5:-5]) / seen)
        bands = SkyModel(sky.up, sky.band_deg, sky.colours).colour(rays.reshape(-1, 3) @ R.T).reshape(rgb.shape)
        assert step(bands[5:-5]) < 0.1 * seen
    dirs = np.random.default_rng(3).normal(size=(3000, 3))
    np.testing.assert_array_equal(sky.colour(dirs), sky.reference_colour(dirs))


def test_the_sky_detail_grid_is_the_main_observed_patch():
    """Sky pixels far off the main patch (a gap beside a facade) do not stretch the detail grid over azimuths it
    holds nothing for: mirror-repeated, such a grid showed a cloudy rectangle in a plain sky."""
    from spatia.model.fill.texture.appearance import sky_model

    rgb, depth, rays, c2w = _cloudy_view()
    up = np.array([0.0, -1.0, 0.0])
    depth[:, : int(0.6 * depth.shape[1])] = 5.0  # a near surface hides the left 60 %
    alone = sky_model(up, rgb, depth, rays, c2w)
    depth[:, 2] = 0.0  # ... but for one column of sky at its far left
    sky = sky_model(up, rgb, depth, rays, c2w)
    assert sky.detail.shape[1] <= 0.45 * depth.shape[1]
    assert sky.detail.shape == alone.detail.shape


def _facade_points(window_x_m: np.ndarray, floors_y_m: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(points [N, 3], colours [N, 3] uint8)``: a plastered facade z = 10 m (x 0-12 m, 7 m high) seen every
    5 cm, with 1.1 x 1.5 m windows centred at ``window_x_m`` on floors whose sills are at ``floors_y_m``, 6 cm
    proud of it (as the procedural courtyard's)."""
    x, y = np.meshgrid(np.arange(0.0, 12.0, 0.05), np.arange(0.0, 7.0, 0.05))
    x, y = x.ravel(), y.ravel()
    window = np.zeros(len(x), bool)
    for cx in window_x_m:
        for y0 in floors_y_m:
            window |= (np.abs(x - cx) <= 0.55) & (y >= y0) & (y <= y0 + 1.5)
    pts = np.c_[x, y, np.where(window, 9.94, 10.0)]
    cols = np.where(window[:, None], np.array([[40, 60, 110]], np.uint8), np.array([[200, 170, 160]], np.uint8))
    return pts, cols.astype(np.uint8)


def test_a_facades_windows_are_its_texture_where_they_repeat():
    """Outdoors a facade's samples reach ``facade_tol_m`` from its plane: its windows, 6 cm proud, continue past
    what was seen on their lattice. Indoors (a picture proud of a room's wall is not the wall's texture), and
    outdoors where the window does not repeat (one alone), the wall's own surface alone is continued: no window."""
    from spatia.model.fill.geometry.layout import WALL, Layout, Plane

    axes = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    wall = Plane(2, 10.0, -1, 1000, WALL, 7.0, (0.0, 12.0), 0)
    observer = np.array([6.0, 1.6, 0.0])
    # beyond the seen 12 m: the lattice's next window centres (x = 13.2, 15.6) and the wall between (14.4)
    probe = np.array([[13.2, 1.75], [15.6, 4.75], [14.4, 1.75], [14.4, 3.3]])

    # ... and a grid over the 12 m beyond: no window where none repeats
    gx, gy = np.meshgrid(np.arange(12.0, 24.0, 0.1), np.arange(0.0, 7.0, 0.1))
    grid = np.c_[gx.ravel(), gy.ravel()]

    def colours(window_x_m, floors_y_m, indoor: bool, at: np.ndarray = probe) -> np.ndarray:
        pts, cols = _facade_points(window_x_m, floors_y_m)
        tex = plane_texture(Layout(axes, [wall], indoor=indoor, observer=observer), wall, pts, cols,
                            AppearanceConfig())
        return tex.sample(at, np.full(len(at), 0.05)).astype(float)

    blue, plaster = np.array([40, 60, 110]), np.array([200, 170, 160])
    lattice = 1.2 + 2.4 * np.arange(5)
    got = colours(lattice, (1.0, 4.0), indoor=False)
    assert np.abs(got[:2] - blue).max() < 40 and np.abs(got[2:] - plaster).max() < 40
    for window_x_m, floors_y_m, indoor in ((lattice, (1.0, 4.0), True), (np.array([3.7]), (1.0,), False)):
        got = colours(window_x_m, floors_y_m, indoor, grid)
        assert (np.abs(got - plaster).max(axis=1) < 40).mean() > 0.99, indoor


def _wall_with_doorway(rng, texel_m: float = 0.02):
    """An exemplar of a plaster wall (mottled grey, 4 m x 2.4 m at ``texel_m``) with a doorway 1 m wide showing
    the next room (red brick above black and white tiles): rgb [H, W, 3] uint8, valid [H, W], the doorway."""
    H, W = int(2.4 / texel_m), int(4.0 / texel_m)
    rgb = np.clip(rng.normal(120, 5, (H, W, 1)) + np.zeros((1, 1, 3)), 0, 255)
    door = np.zeros((H, W), bool)
    door[int(0.4 / texel_m):, int(1.5 / texel_m):int(2.5 / texel_m)] = True
    rows, cols = np.nonzero(door)
    brick = rows < int(1.4 / texel_m)
    rgb[rows[brick], cols[brick]] = (170, 60, 45)
    squares = rng.uniform(size=(H // 8 + 1, W // 8 + 1)) < 0.5  # floor tiles seen at a slant: no lattice
    check = squares[rows[~brick] // 8, cols[~brick] // 8][:, None]
    rgb[rows[~brick], cols[~brick]] = np.where(check, 235.0, 40.0)
    valid = rng.uniform(size=(H, W)) < 0.97
    return rgb.astype(np.uint8), valid, door


def test_objects_on_a_plane_are_the_compact_regions_of_another_colour():
    """``_foreign_regions`` marks a doorway in a plaster wall (grown over its mixed edges), the same as its slow
    twin; nothing on plaster alone, on a checker of large tiles (its blocks differ by its own spread) or where the
    other colour covers most of the exemplar."""
    from spatia.model.fill.texture.appearance import _foreign_regions, _foreign_regions_reference

    rng = np.random.default_rng(4)
    config = AppearanceConfig()
    rgb, valid, door = _wall_with_doorway(rng)
    got = _foreign_regions(rgb, valid, 0.02, config)
    np.testing.assert_array_equal(got, _foreign_regions_reference(rgb, valid, 0.02, config))
    assert got[door & valid].all()  # every doorway texel
    assert got[valid].mean() < 0.4  # the doorway and one block around it, not the wall
    away = np.zeros_like(door)
    away[:, : int(1.2 / 0.02)] = True
    assert not got[away].any()
    plaster = np.clip(rng.normal(120, 5, rgb.shape), 0, 255).astype(np.uint8)
    assert _foreign_regions(plaster, valid, 0.02, config) is None
    yy, xx = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    tiles = np.where((((yy // 15) + (xx // 15)) % 2 == 0)[..., None], 230, 50).astype(np.uint8) * np.ones((1, 1, 3),
                                                                                                      np.uint8)
    assert _foreign_regions(tiles, valid, 0.02, config) is None
    half = plaster.copy()
    half[:, : int(1.9 / 0.02)] = (170, 60, 45)  # nearly half of it: with its edges, more than foreign_max_share
    assert _foreign_regions(half, valid, 0.02, config) is None
    half[:, int(1.0 / 0.02) : int(1.9 / 0.02)] = plaster[:, int(1.0 / 0.02) : int(1.9 / 0.02)]
    assert _foreign_regions(half, valid, 0.02, config)[:, : int(1.0 / 0.02)].all()  # a quarter: an object


def test_a_wall_continues_as_its_plaster_not_as_the_doorway_seen_in_it():
    """Indoors an exemplar's objects are left out of its synthesis: the wall continued far from what was seen is
    plaster, where with the doorway in the quilt's sources it showed pieces of the next room's brick and tiles."""
    from spatia.model.fill.texture.appearance import _exemplar

    rng = np.random.default_rng(5)
    config = AppearanceConfig()
    texel_m = 0.02
    rgb, valid, _ = _wall_with_doorway(rng, texel_m)
    rows, cols = np.nonzero(valid)
    uv = np.c_[(cols + 0.5) * texel_m, (rows + 0.5) * texel_m]  # one sample per observed texel
    col = rgb[rows, cols].astype(np.float32)
    grid = np.mgrid[0:200, 0:200].reshape(2, -1).T * texel_m  # a 4 m square of the wall 6 m beside what was seen
    far_uv = np.c_[grid[:, 1] + 10.0, grid[:, 0]]
    footprint = np.full(len(far_uv), texel_m)
    shown = {}
    for without in (False, True):
        tex = _exemplar(uv, col, texel_m, config, 7, config.min_coverage, config.min_exemplar_texels,
                        without_objects=without)
        assert tex is not None and tex.synth is not None and tex.synth.kind == "stochastic"
        shown[without] = tex.sample(far_uv, footprint).astype(np.float32)
    off = {k: float((np.abs(v - 120.0).max(axis=1) > 40).mean()) for k, v in shown.items()}  # not plaster
    assert off[False] > 0.02, off  # the doorway's pieces, copied by the quilt
    assert off[True] < 0.002, off


def test_a_rug_seen_densely_is_an_object_on_a_floor_seen_sparsely():
    """A floor seen at a slant is sampled in columns (a quarter of the texels of its far part), a rug near the
    camera densely: counted by area, not by how densely each block was seen, the wood is the floor's material and
    the rug an object on it (room@pitched showed blue blotches across its unseen floor, docs/RESULTS.md, session
    38). The slow twin agrees."""
    from spatia.model.fill.texture.appearance import _foreign_regions, _foreign_regions_reference

    rng = np.random.default_rng(6)
    texel_m, H, W = 0.01, 256, 192
    rgb = np.clip(rng.normal((120, 80, 45), 8, (H, W, 3)), 0, 255)  # wood
    rug = np.zeros((H, W), bool)
    rug[60:200, :80] = True
    rgb[rug] = np.clip(rng.normal((70, 90, 140), 8, (int(rug.sum()), 3)), 0, 255)
    valid = rug | ((np.arange(W) % 4 == 0)[None, :] & (rng.uniform(size=(H, W)) < 0.9))
    rgb = rgb.astype(np.uint8)
    got = _foreign_regions(rgb, valid, texel_m, AppearanceConfig())
    assert got is not None
    np.testing.assert_array_equal(got, _foreign_regions_reference(rgb, valid, texel_m, AppearanceConfig()))
    assert got[rug].all()
    assert got[valid & ~rug].mean() < 0.25  # the rug's blocks and one around them, not the wood


def test_a_planes_exemplar_leaves_out_its_junctions_with_the_planes_across_it(monkeypatch):
    """Samples within ``plane_tol_m`` of another observed plane across a plane (a ceiling's along the top of a brick
    wall) are the edge of two surfaces: the ceiling's texture model is fitted without them."""
    from spatia.model.fill.geometry.layout import CEILING, WALL, Layout, Plane
    from spatia.model.fill.texture import synthesis
    from spatia.model.fill.texture.appearance import plane_texture

    fitted = []
    fit = synthesis.TextureModel.fit.__func__

    def spy(cls, rgb, valid, *args, **kwargs):
        fitted.append((rgb, valid))
        return fit(cls, rgb, valid, *args, **kwargs)

    monkeypatch.setattr(synthesis.TextureModel, "fit", classmethod(spy))
    rng = np.random.default_rng(8)
    n = 40000
    ceiling_pts = np.c_[np.full(n, 2.5), rng.uniform(0, 3, n), rng.uniform(0, 3, n)]  # up = axis 0 = x
    grey = np.clip(rng.normal(140, 4, (n, 3)), 0, 255).astype(np.uint8)
    grey[ceiling_pts[:, 1] < 0.012] = (170, 60, 45)  # along the top of the wall y = 0
    ceiling = Plane(axis=0, offset_m=2.5, facing=-1, support=n, kind=CEILING, plane_id=0)
    wall = Plane(axis=1, offset_m=0.0, facing=1, support=n, kind=WALL, plane_id=1)
    tex = plane_texture(Layout(np.eye(3), [ceiling, wall], indoor=True), ceiling, ceiling_pts, grey, AppearanceConfig())
    assert tex is not None and tex.synth is not None and fitted
    for rgb, valid in fitted:
        assert np.abs(rgb[valid].astype(np.float32) - 140).max() < 30  # no brick-red texel among its sources


def test_a_facade_seen_too_little_takes_a_seen_facades_lattice_in_its_own_colour():
    """Outdoors a facade seen too little for an exemplar (a strip at a grazing angle: its colour only) shows the
    window lattice of the facade seen best, as luminance detail over its own colour: rows of dark windows on its
    grey, not a flat slab of grey. Indoors a wall borrows only from a wall of its own material: the grey strip keeps
    its colour beside the pink plaster, and a strip of that plaster in a darker tone takes the plaster's detail."""
    from spatia.model.fill.geometry.layout import FLOOR, WALL, Layout, Plane
    from spatia.model.fill.texture.appearance import PlaneTextures

    axes = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # up = y; x; z
    floor = Plane(0, 0.0, 1, 1000, FLOOR, plane_id=0)
    front = Plane(2, 10.0, -1, 1000, WALL, 7.0, (0.0, 12.0), 1)
    side = Plane(1, 0.0, 1, 100, WALL, 7.0, (9.3, 10.0), 2)
    pts, cols = _facade_points(1.2 + 2.4 * np.arange(5), (1.0, 4.0))
    z, y = np.meshgrid(np.arange(9.3, 10.0, 0.05), np.arange(0.0, 7.0, 0.05))  # the side facade: a 0.7 m strip
    grey = np.array([120, 130, 140], np.uint8)
    pts = np.concatenate([pts, np.c_[np.zeros(z.size), y.ravel(), z.ravel()]])
    cols = np.concatenate([cols, np.repeat(grey[None], z.size, axis=0)])
    gz, gy = np.meshgrid(np.arange(-10.0, 9.0, 0.1), np.arange(0.0, 7.0, 0.1))
    grid = np.c_[gz.ravel(), gy.ravel()]  # the side facade's (u = z, v = up) beyond the strip
    for indoor in (False, True):
        layout = Layout(axes, [floor, front, side], indoor=indoor, observer=np.array([6.0, 1.6, 0.0]))
        tex = PlaneTextures(layout, pts, cols).for_plane(side)
        got = tex.sample(grid, np.full(len(grid), 0.05)).astype(float)
        lum = got @ np.array([0.299, 0.587, 0.114])
        if indoor:
            assert tex.detail_over is None and np.abs(got - grey).max() < 2
            dim = np.array([180, 153, 144], np.uint8)  # the plaster (200, 170, 160) a tenth darker
            same = np.concatenate([cols[: len(cols) - z.size], np.repeat(dim[None], z.size, axis=0)])
            tex = PlaneTextures(layout, pts, same).for_plane(side)
            assert tex.detail_over is not None
            assert np.abs(tex.sample(grid, np.full(len(grid), 0.05)).astype(float).mean(axis=0) - dim).max() < 10
            continue
        assert tex.detail_over is not None
        assert np.abs(got.mean(axis=0) - grey).max() < 10  # its own colour on average ...
        dark = lum < float(grey @ np.array([0.299, 0.587, 0.114])) - 40
        assert 0.05 < dark.mean() < 0.4, dark.mean()  # ... with the windows' rows
