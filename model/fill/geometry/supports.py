"""What holds up an object whose lower part the first view could not see: its surface continued down to the floor.

The first view sees a sofa's backrest above a chair that hides the seat, or a cabinet's front above a table: the
memory holds the upper part only, and from beside it the part floats, a plank with the wall showing beneath it
(the room demo, frames 20-60). Objects rest on the floor (a support prior), so where an observed surface ends at
an occlusion edge (the pixel below it in the first view is much nearer: the occluder) and it is neither a room's
wall, floor nor ceiling, the surface is continued straight down to the floor, at its own depth, behind the
occluder. What the first view saw through stays empty (free space), and what it could not see is the object.

Each run of such edge pixels becomes a *support*: a vertical billboard on the Manhattan plane most facing the first
camera through the run (its depth the run's median), a grid of cells about one first-view pixel's footprint,
solid from the floor up to the edge above each cell's column, except where the first view saw past it. Its colour
continues the object's own look: the rows of the first view just above the edge, mirrored downward.

An object the first view's left or right edge cuts goes on past the edge the same way, on its own front
(``edge_supports_of_view``).

``supports_of_view`` and ``edge_supports_of_view`` make them once per layout
(``model.geometric._fit_layout_state``); ``cast_supports`` gives a frame's hole rays their nearest support hit,
which ``model.geometric`` takes where it is nearer than the layout's or the fill's depth. The fill's output folds
into the memory as invented points, so a support is shown once and lives on like any invented surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.free_space import seen_through
from spatia.world.geometry import pixel_rays, project_points


@dataclass(frozen=True)
class SupportConfig:
    edge_front_rel: float = 0.12  # the pixel below is this much nearer (relative z-depth): an occlusion edge
    min_height_m: float = 0.15  # an edge this little above the floor has nothing under it to continue
    max_height_m: float = 1.6  # higher edges (a lamp, a shelf's top above a desk) are not continued
    off_plane_m: float = 0.08  # an edge pixel this near a room's wall, floor or ceiling is that surface's
    join_m: float = 0.12  # edge points of one run are at most this far apart (between neighbouring columns)
    min_run_px: int = 6  # narrower runs (a chair's leg, a noisy edge) are left to the fill
    min_width_m: float = 0.15
    strip_px: int = 24  # rows above an edge the colour is taken from (while the surface continues)
    step_rel: float = 0.01  # ... a row continues the surface while its z-depth is within this (plus step_m) of the
    step_m: float = 0.01  # row below's (a sofa's back 0.2 m in front of the wall ends where the wall begins)
    min_strip_px: int = 3  # a surface seen over fewer rows above its edge says too little of its shape
    max_slope: float = 0.5  # at most this many horizontal metres per vertical metre along the strip: a facing
    # surface rises straight (a table's top seen from above ends at an occluder's silhouette wherever that falls,
    # and nothing is known to stand under it there)
    seen_rel: float = 0.03  # a cell the first view saw this much beyond is free space
    front_rel: float = 0.02  # a support hit wins over the frame's depth when nearer by this much
    # an object cut by the first view's left or right edge (``edge_supports_of_view``): its surface at the edge,
    # over at least min_run_px rows whose z-depth changes by at most edge_step_rel from row to row (across gaps of
    # at most edge_gap_m: a shelf's back panel, close to the room's wall, is left out), followed inward for at most
    # band_px columns while its depth goes on, within a slab of plane_tol_m across a horizontal Manhattan axis (a
    # bookcase's back panel shows 0.4 m behind its shelves), continues beyond the edge on the slab's front
    edge_step_rel: float = 0.15
    edge_gap_m: float = 0.3
    band_px: int = 64
    plane_tol_m: float = 0.45
    max_extend_m: float = 1.0
    # ... by this many times what the view saw of it: 1, the hidden part as wide as the seen part (the median
    # under a scale-free prior on widths). 2 measured better on the room items' depth, GMSD and gradient ratio, but
    # its bookcase stood in the way of a walk through the room's right wall (tests/test_fill_openings.py), and an
    # invented object blocks like any other (docs/RESULTS.md, session 38)
    extend_ratio: float = 1.0


@dataclass(frozen=True)
class Support:
    axis: int  # 1 or 2: the layout's horizontal axis along its normal
    offset_m: float  # its plane: {p : p . axes[axis] = offset_m}
    along_axis: int  # the other horizontal axis: the grid's columns run along it
    along0_m: float  # the first column's left edge along ``along_axis``
    floor_m: float  # the floor's coordinate along up: the grid's bottom edge
    cell_m: float  # a cell's side
    solid: np.ndarray  # [rows, cols] bool, row 0 at the floor
    rgb: np.ndarray  # [rows, cols, 3] uint8
    corners_m: np.ndarray  # [4, 3] world frame, the grid's corners


def supports_of_view(
    layout,  # model.fill.geometry.layout.Layout
    rgb: np.ndarray,  # [H, W, 3] uint8, the first view
    depth_m: np.ndarray,  # [H, W] float32, its z-depth, 0 = unknown
    intrinsics: Intrinsics,
    c2w: np.ndarray,  # [4, 4] its pose
    config: SupportConfig = SupportConfig(),
) -> list[Support]:
    """The supports under the first view's occlusion edges (module docstring); none without a floor."""
    floor = layout.floor()
    if floor is None:
        return []
    depth = np.asarray(depth_m, np.float32)
    up = layout.axes[0]
    floor_m = float(floor.offset_m)
    above, below = depth[:-1], depth[1:]
    edge = (above > 0) & (below > 0) & (below < (1.0 - config.edge_front_rel) * above)
    rows, cols = np.nonzero(edge)  # the surface's pixel (row, col); the occluder is at row + 1
    if not len(rows):
        return []
    rays = pixel_rays(intrinsics)  # [H, W, 3] float64 camera frame, z = 1
    pts = _unproject(rays[rows, cols], depth[rows, cols], c2w)  # [E, 3] world frame
    height = pts @ up - floor_m
    keep = (height >= config.min_height_m) & (height <= config.max_height_m)
    keep &= ~_on_room_surface(layout, pts, config)  # a room's own surfaces continue by the layout, not here
    rows, cols, pts, height = rows[keep], cols[keep], pts[keep], height[keep]
    strip = _strips(depth, rows, cols, config)
    top_row = rows - strip + 1  # the strip's highest row: a facing (vertical) surface rises straight above the edge
    top_pts = _unproject(rays[top_row, cols], depth[top_row, cols], c2w)
    rise = (top_pts - pts) @ up
    run_m = np.linalg.norm((top_pts - pts) - rise[:, None] * up, axis=1)
    keep = (strip >= config.min_strip_px) & (run_m <= config.max_slope * np.abs(rise))
    rows, cols, pts, height, strip = rows[keep], cols[keep], pts[keep], height[keep], strip[keep]
    out = []
    for run in _runs(cols, pts, config):
        if len(run) < config.min_run_px:
            continue
        support = _support(run, rows, cols, pts, height, strip, rgb, depth, intrinsics, c2w, layout, floor_m,
                           config)
        if support is not None:
            out.append(support)
    return out


def edge_supports_of_view(
    layout,  # model.fill.geometry.layout.Layout
    rgb: np.ndarray,  # [H, W, 3] uint8, the first view
    depth_m: np.ndarray,  # [H, W] float32, its z-depth, 0 = unknown
    intrinsics: Intrinsics,
    c2w: np.ndarray,  # [4, 4] its pose
    config: SupportConfig = SupportConfig(),
) -> list[Support]:
    """Objects the first view's left or right edge cuts (a bookcase at the edge of a room photographed from its
    middle), continued beyond the edge on their own vertical Manhattan plane: walking along the room, the part the
    view did not hold showed the wall behind it (the room demo, frames 10-20 and 35-70). How far it goes on is
    unknown; the prior is ``extend_ratio`` times as far as the view saw of it, at most ``max_extend_m``, coloured by
    its visible part mirrored about the edge (and repeated). Rows: the surface's at the edge, down to the floor
    where the object reaches the view's bottom. Each becomes a ``Support`` (module docstring), shown under the
    same free-space rules."""
    floor = layout.floor()
    if floor is None:
        return []
    depth = np.asarray(depth_m, np.float32)
    w = depth.shape[1]
    floor_m = float(floor.offset_m)
    rays = pixel_rays(intrinsics)  # [H, W, 3] float64 camera frame, z = 1
    out = []
    for edge_col, inward in ((w - 1, -1), (0, 1)):
        d = depth[:, edge_col]
        pts = _unproject(rays[:, edge_col], d, c2w)  # [H, 3] world frame
        ok = (d > 0) & ~_on_room_surface(layout, pts, config)  # a room's own surfaces continue by the layout
        runs, run, last = [], [], -1
        for r in np.flatnonzero(ok):  # rows of one front: close in depth, across gaps of at most edge_gap_m
            if run and (r - last > config.edge_gap_m * intrinsics.fy / d[last]
                        or abs(d[r] - d[last]) > config.edge_step_rel * d[last]):
                runs.append(run)
                run = []
            run.append(r)
            last = r
        runs.append(run)
        for run in runs:
            if len(run) >= config.min_run_px:
                support = _edge_support(np.asarray(run), edge_col, inward, rgb, depth, rays, intrinsics, c2w,
                                        layout, floor_m, config)
                if support is not None:
                    out.append(support)
    return out


def _on_room_surface(layout, pts: np.ndarray, config: SupportConfig) -> np.ndarray:
    """``[N]`` bool: which world points ``pts`` [N, 3] lie within ``off_plane_m`` of a room's wall, floor or
    ceiling."""
    from spatia.model.fill.geometry.layout import CEILING, FLOOR

    on = np.zeros(len(pts), bool)
    for plane in layout.planes:
        if plane.kind in (FLOOR, CEILING) or layout.is_room_wall(plane):
            on |= np.abs(pts @ layout.axes[plane.axis] - plane.offset_m) <= config.off_plane_m
    return on


def _edge_support(rows, edge_col, inward, rgb, depth, rays, intrinsics, c2w, layout, floor_m, config):
    """The continuation of the surface seen on ``rows`` [K] of first-view column ``edge_col`` (``inward``: +1 or
    -1, the view's inside that way), or None when the view saw too little of it, or not as one front."""
    axes, up = layout.axes, layout.axes[0]
    # the surface inward from the edge on each row while its depth goes on (at most band_px columns)
    rr, cc = [], []
    prev = depth[rows, edge_col]
    alive = np.ones(len(rows), bool)
    for k in range(config.band_px):
        c = edge_col + inward * k
        if c < 0 or c >= depth.shape[1]:
            break
        d = depth[rows, c]
        alive &= (d > 0) & (np.abs(d - prev) <= config.edge_step_rel * prev)
        alive[alive] &= ~_on_room_surface(layout, _unproject(rays[rows[alive], c], d[alive], c2w), config)
        rr.append(rows[alive])
        cc.append(np.full(int(alive.sum()), c))
        prev = np.where(alive, d, prev)
    rr, cc = np.concatenate(rr), np.concatenate(cc)
    p = _unproject(rays[rr, cc], depth[rr, cc], c2w)  # [S, 3] world frame
    spread = [float(np.percentile(p @ axes[k], 90) - np.percentile(p @ axes[k], 10)) for k in (1, 2)]
    along_axis = 1 + int(np.argmax(spread))  # the surface runs along it; its front faces the other
    axis = 3 - along_axis
    seen = float(np.ptp(p @ axes[along_axis]))  # what the view saw of it along its front
    coord = p @ axes[axis]
    towards_camera = np.sign(c2w[:3, 3] @ axes[axis] - np.median(coord))
    offset = float(np.percentile(coord, 90 if towards_camera > 0 else 10))  # its front: a shelf's, not the books'
    if min(spread) > config.plane_tol_m:
        return None  # not one front (a plant, a chair seen at an angle)
    edge_pts = _unproject(rays[rows, edge_col], depth[rows, edge_col], c2w)  # [K, 3]
    sign = -1.0 if np.median(p @ axes[along_axis]) > np.median(edge_pts @ axes[along_axis]) else 1.0  # +1: on
    # towards +along. It starts where the edge column's rays meet its front (its books lie behind that plane)
    d_world = rays[rows, edge_col] @ c2w[:3, :3].T  # [K, 3] per unit z-depth
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (offset - c2w[:3, 3] @ axes[axis]) / (d_world @ axes[axis])
    hit = np.isfinite(t) & (t > 0)
    if not hit.any():
        return None
    meet = (c2w[:3, 3] + t[hit, None] * d_world[hit]) @ axes[along_axis]
    edge_along = float(meet.max() if sign > 0 else meet.min())
    extend = min(config.extend_ratio * seen, config.max_extend_m)
    if extend < config.min_width_m:
        return None
    height = edge_pts @ up - floor_m
    top = float(height.max())
    bottom = 0.0 if rows[-1] == depth.shape[0] - 1 else max(float(height.min()), 0.0)
    if top <= max(bottom, config.min_height_m) or top > layout.config.max_room_height_m:
        return None
    dist = float(np.median(depth[rows, edge_col]))
    cell = max(dist / max(intrinsics.fx, intrinsics.fy), 0.005)
    n_cols = int(np.ceil(extend / cell))
    n_rows = int(np.ceil(top / cell)) + 1
    zc = (np.arange(n_rows) + 0.5) * cell  # [R] above the floor
    beyond = (np.arange(n_cols) + 0.5) * cell  # [C] past the edge along the plane
    solid = np.repeat(((zc >= bottom) & (zc <= top))[:, None], n_cols, axis=1)
    centres = _on_plane(layout, axis, offset, along_axis, floor_m + zc, edge_along + sign * beyond)  # [R, C, 3]
    known = np.where(depth > 0, depth, np.float32(np.nan))
    solid &= ~seen_through(centres.reshape(-1, 3), c2w, intrinsics, known, config.seen_rel,
                           margin_m=0.0).reshape(solid.shape)  # free space: what the first view saw past
    if not solid.any():
        return None
    # colour: the point as far inside the edge, projected into the first view (mirrored about the edge)
    period = 2.0 * seen
    back = np.mod(beyond, period)
    back = np.where(back < seen, back, period - back)  # mirrored about the edge, then repeated
    mirror = _on_plane(layout, axis, offset, along_axis, floor_m + zc, edge_along - sign * back)  # [R, C, 3]
    uv, _ = project_points(mirror.reshape(-1, 3), intrinsics, c2w)
    u = np.clip(np.rint(uv[:, 0]), 0, depth.shape[1] - 1).astype(np.int64)
    v = np.clip(np.rint(uv[:, 1]), 0, depth.shape[0] - 1).astype(np.int64)
    colour = rgb[v, u].reshape(n_rows, n_cols, 3)
    lo = edge_along if sign > 0 else edge_along - n_cols * cell
    if sign < 0:  # columns run towards +along
        solid, colour = solid[:, ::-1], colour[:, ::-1]
    return _billboard(layout, axis, offset, along_axis, lo, floor_m, cell, solid, colour)


def _unproject(rays: np.ndarray, depth_m: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """``[E, 3]`` world points at z-depth ``depth_m`` [E] along camera-frame ``rays`` [E, 3] (float64 throughout:
    ``freespace.world_points``' float32 rays move a billboard's edges by a cell now and then)."""
    return c2w[:3, 3] + (rays * depth_m[:, None]) @ c2w[:3, :3].T


def _runs(cols: np.ndarray, pts: np.ndarray, config: SupportConfig) -> list[np.ndarray]:
    """Edge pixels grouped into runs: column by column, each joins the open run whose last point is within
    ``join_m`` and at most two columns back, else opens one. [E] indices per run."""
    order = np.lexsort((np.arange(len(cols)), cols))
    runs: list[list[int]] = []
    last: dict[int, tuple[int, np.ndarray]] = {}  # open runs (their last column within two): run -> (column, point)
    for i in order:
        col_i = int(cols[i])
        last = {r: cp for r, cp in last.items() if col_i - cp[0] <= 2}
        best, best_d = -1, config.join_m
        for r, (col, p) in last.items():
            d = float(np.linalg.norm(pts[i] - p))
            if d <= best_d and col != col_i:
                best, best_d = r, d
        if best < 0:
            best = len(runs)
            runs.append([])
        runs[best].append(i)
        last[best] = (col_i, pts[i])
    return [np.asarray(r, np.int64) for r in runs]


def _strips(depth: np.ndarray, rows: np.ndarray, cols: np.ndarray, config: SupportConfig) -> np.ndarray:
    """``[E]`` rows of each edge pixel's surface at and above it (at least 1): while each row's z-depth is within
    ``step_rel`` (plus ``step_m``) of the row below's, up to ``strip_px``."""
    strip = np.ones(len(rows), np.int64)
    prev = depth[rows, cols]
    for k in range(1, config.strip_px):
        r = rows - k
        ok = (r >= 0) & (strip == k)
        d = depth[np.maximum(r, 0), cols]
        ok &= (d > 0) & (np.abs(d - prev) <= config.step_rel * prev + config.step_m)
        strip[ok] += 1
        prev = np.where(ok, d, prev)
    return strip


def _support(run, rows, cols, pts, height, strip, rgb, depth, intrinsics, c2w, layout, floor_m, config):
    """The billboard of one run (``run`` [K] indices into the edge arrays: ``rows`` / ``cols`` [E] first-view
    pixels, ``pts`` [E, 3] world frame, ``height`` [E] metres above the floor, ``strip`` [E] rows of colour), or
    None when it is narrower than ``min_width_m`` or the first view saw past all of it."""
    p = pts[run]
    view_dir = p.mean(0) - c2w[:3, 3]
    axis = 1 if abs(view_dir @ layout.axes[1]) >= abs(view_dir @ layout.axes[2]) else 2
    along_axis = 3 - axis
    offset = float(np.median(p @ layout.axes[axis]))
    along = p @ layout.axes[along_axis]
    lo, hi = float(along.min()), float(along.max())
    if hi - lo < config.min_width_m:
        return None
    dist = float(np.median(depth[rows[run], cols[run]]))
    cell = max(dist / max(intrinsics.fx, intrinsics.fy), 0.005)
    n_cols = int(np.ceil((hi - lo) / cell)) + 1
    n_rows = int(np.ceil(float(height[run].max()) / cell)) + 1
    # each column's edge pixel: the run's pixel nearest along the wall (the highest where two share a cell)
    col_of = np.clip(((along - lo) / cell).astype(np.int64), 0, n_cols - 1)
    by_col = np.full(n_cols, -1, np.int64)
    order = np.argsort(height[run], kind="stable")  # the highest written last
    by_col[col_of[order]] = run[order]
    have = np.flatnonzero(by_col >= 0)
    if len(have) < 2:
        return None
    by_col = by_col[have[np.clip(np.searchsorted(have, np.arange(n_cols)), 0, len(have) - 1)]]  # gaps: a neighbour
    top = height[by_col]  # [C] metres above the floor
    zc = (np.arange(n_rows) + 0.5) * cell  # [R] cell centres above the floor
    ac = lo + (np.arange(n_cols) + 0.5) * cell  # [C] along the wall
    solid = zc[:, None] <= top[None, :]
    # free space: cells the first view saw beyond (projected into it, nearer than what it saw there)
    centres = _on_plane(layout, axis, offset, along_axis, floor_m + zc, ac)  # [R, C, 3]
    known = np.where(depth > 0, depth, np.float32(np.nan))  # (0: nothing known there, not "saw nothing")
    solid &= ~seen_through(centres.reshape(-1, 3), c2w, intrinsics, known, config.seen_rel,
                           margin_m=0.0).reshape(solid.shape)
    if not solid.any():
        return None
    # colour: the rows just above each column's edge (while the surface goes on), mirrored downward
    er, ec, strip = rows[by_col], cols[by_col], strip[by_col]  # [C]
    below_px = ((top[None, :] - zc[:, None]) / cell).astype(np.int64)  # [R, C] rows below the edge
    period = 2 * strip[None, :]
    m = np.clip(below_px, 0, None) % period
    m = np.where(m < strip[None, :], m, period - 1 - m)  # mirrored: 0 1 .. s-1 s-1 .. 1 0 0 1 ..
    colour = rgb[np.clip(er[None, :] - m, 0, None), ec[None, :]]
    return _billboard(layout, axis, offset, along_axis, lo, floor_m, cell, solid, colour)


def _billboard(layout, axis: int, offset_m: float, along_axis: int, along0_m: float, floor_m: float, cell_m: float,
               solid: np.ndarray, colour: np.ndarray) -> Support:
    """A ``Support`` of ``solid`` [rows, cols] cells coloured ``colour`` [rows, cols, 3], its corners computed."""
    rows, cols = solid.shape
    corners = _on_plane(layout, axis, offset_m, along_axis, np.array([floor_m, floor_m + rows * cell_m]),
                        np.array([along0_m, along0_m + cols * cell_m])).reshape(-1, 3)
    return Support(axis, offset_m, along_axis, along0_m, floor_m, cell_m, np.ascontiguousarray(solid),
                   np.ascontiguousarray(colour.astype(np.uint8)), corners)


def _on_plane(layout, axis: int, offset_m: float, along_axis: int, up_m: np.ndarray, along_m: np.ndarray
              ) -> np.ndarray:
    """``[R, C, 3]`` world points of the vertical plane ``p . axes[axis] = offset_m`` at heights ``up_m`` [R] (along
    the layout's up) and ``along_m`` [C] (along ``axes[along_axis]``)."""
    axes = layout.axes
    return (axes[0] * np.asarray(up_m)[:, None, None] + axes[axis] * offset_m
            + axes[along_axis] * np.asarray(along_m)[None, :, None])


def screen_box(support: Support, layout, c2w: np.ndarray, intrinsics: Intrinsics) -> tuple[int, int, int, int] | None:
    """``(row0, row1, col0, col1)``, inclusive pixel bounds of ``support``'s rectangle in a camera at ``c2w`` (the
    whole frame when it reaches behind the camera); None when it lies wholly behind or out of view."""
    uv, z = project_points(support.corners_m, intrinsics, c2w)  # [4, 2] pixels, [4] z-depth
    if (z <= 0.0).all():
        return None
    w, h = intrinsics.width, intrinsics.height
    if (z <= 1e-3).any():
        return 0, h - 1, 0, w - 1
    u, v = uv[:, 0], uv[:, 1]
    c0, c1 = max(int(np.floor(u.min())), 0), min(int(np.floor(u.max())), w - 1)
    r0, r1 = max(int(np.floor(v.min())), 0), min(int(np.floor(v.max())), h - 1)
    return None if c0 > c1 or r0 > r1 else (r0, r1, c0, c1)


def cast_supports(
    supports: list[Support],
    layout,  # model.fill.geometry.layout.Layout
    rays: np.ndarray,  # [M, 3] float32 camera frame (z = 1)
    c2w: np.ndarray,  # [4, 4] target pose
    candidates: list[np.ndarray] | None = None,  # per support, the indices into ``rays`` that may meet it (None: all)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each ray's nearest support hit: z-depth [M] float32 (0: none), colour [M, 3] uint8, world point [M, 3]."""
    m = len(rays)
    best = np.zeros(m, np.float32)
    colour = np.zeros((m, 3), np.uint8)
    point = np.zeros((m, 3))
    cam = c2w[:3, 3]
    up = layout.axes[0]
    for k, s in enumerate(supports):
        idx = np.arange(m) if candidates is None else candidates[k]
        if not len(idx):
            continue
        d = rays[idx].astype(np.float64) @ c2w[:3, :3].T  # [K, 3] world frame, per unit z-depth
        n, a = layout.axes[s.axis], layout.axes[s.along_axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (s.offset_m - cam @ n) / (d @ n)
        hit = np.flatnonzero((t > 0) & np.isfinite(t) & ((best[idx] == 0) | (t < best[idx])))
        if not len(hit):
            continue
        p = cam + t[hit, None] * d[hit]
        c = np.floor((p @ a - s.along0_m) / s.cell_m).astype(np.int64)
        r = np.floor((p @ up - s.floor_m) / s.cell_m).astype(np.int64)
        rows_n, cols_n = s.solid.shape
        ok = (c >= 0) & (c < cols_n) & (r >= 0) & (r < rows_n)
        ok[ok] = s.solid[r[ok], c[ok]]
        hit, p, r, c = hit[ok], p[ok], r[ok], c[ok]
        best[idx[hit]] = t[hit]
        colour[idx[hit]] = s.rgb[r, c]
        point[idx[hit]] = p
    return best, colour, point
