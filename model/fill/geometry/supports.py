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

``supports_of_view`` makes them once per layout (``model.geometric._fit_layout_state``); ``cast_supports`` gives a
frame's hole rays their nearest support hit, which ``model.geometric`` takes where it is nearer than the layout's
or the fill's depth. The fill's output folds into the memory as invented points, so a support is shown once and
lives on like any invented surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.free_space import seen_through
from spatia.world.geometry import pixel_rays


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
    from spatia.model.fill.geometry.layout import CEILING, FLOOR

    depth = np.asarray(depth_m, np.float32)
    up, axes = layout.axes[0], layout.axes
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
    for plane in layout.planes:  # a room's own surfaces continue by the layout, not here
        if plane.kind in (FLOOR, CEILING) or layout.is_room_wall(plane):
            keep &= np.abs(pts @ axes[plane.axis] - plane.offset_m) > config.off_plane_m
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
    axes = layout.axes
    centres = (axes[0] * (floor_m + zc[:, None, None]) + axes[axis] * offset + axes[along_axis] * ac[None, :, None])
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
    along_m = np.array([lo, lo + n_cols * cell])
    up_m = np.array([floor_m, floor_m + n_rows * cell])
    corners = (axes[0] * up_m[:, None, None] + axes[axis] * offset
               + axes[along_axis] * along_m[None, :, None]).reshape(-1, 3)
    return Support(axis, offset, along_axis, lo, floor_m, cell, solid, colour.astype(np.uint8), corners)


def screen_box(support: Support, layout, c2w: np.ndarray, intrinsics: Intrinsics) -> tuple[int, int, int, int] | None:
    """``(row0, row1, col0, col1)``, inclusive pixel bounds of ``support``'s rectangle in a camera at ``c2w`` (the
    whole frame when it reaches behind the camera); None when it lies wholly behind or out of view."""
    cam = (support.corners_m - c2w[:3, 3]) @ c2w[:3, :3]  # [4, 3] camera frame
    if (cam[:, 2] <= 0.0).all():
        return None
    w, h = intrinsics.width, intrinsics.height
    if (cam[:, 2] <= 1e-3).any():
        return 0, h - 1, 0, w - 1
    u = intrinsics.fx * cam[:, 0] / cam[:, 2] + intrinsics.cx
    v = intrinsics.fy * cam[:, 1] / cam[:, 2] + intrinsics.cy
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
