"""A Manhattan layout (floor, ceiling, walls) estimated from the memory's observed points, and ray casts into it.

Estimation (``estimate_layout``), from observed points only (invented ones never fit the layout):

1. the points are thinned to one per ``sample_voxel_m`` cube and get normals from their neighbours (Open3D),
   oriented towards the camera that observed them;
2. up = the normal direction shared by the most points (within ``axis_tol_deg``) among directions within 45 deg
   of the prior up (the first camera's -y): the floor's and ceiling's normal, so a pitched first camera does
   not tilt the world; the two horizontal axes = the dominant direction of the wall normals modulo 90 deg
   (circular mean of 4x their azimuth, the Manhattan prior), refined on their inliers;
3. along each of the three axes, points whose normal is aligned with it vote in a 2 cm histogram of their
   coordinate; peaks with at least ``min_plane_points`` votes become planes, each with the side it faces
   (where its observer stood), its support and its extent along the other axes.

Per camera (``LayoutView``): in each of the six axis directions the plane that bounds the free space the camera
stands in is the best-supported plane facing the camera at least ``min_camera_distance_m`` away. Where no
observed plane bounds a direction it is closed by this rule (documented in the module; scene-independent):

- indoors (a ceiling was observed: a horizontal surface above the eye that no observed wall rises past by more
  than ``ceiling_max_wall_rise_m``; an arcade's or a balcony's underside under taller facades is not one), 1: a wall the camera has walked through (it stands behind a plane that
  faces the other way, e.g. it went through a doorway) is a wall of the next room too: its back side, one
  ``wall_thickness_m`` nearer, bounds the way back; 2: the way on, beyond a wall the camera came through, is
  closed where a room as deep as the one it came from would end;
- indoors, 3: a direction nothing else bounds (behind the first camera) is closed ``unseen_wall_margin_m``
  beyond the farthest pose the camera has been at or is going to in that direction; beside the first camera at
  least as far from it as the observed wall on its other side (``mirror_side_walls``). Such a wall is a guess
  that moves as the path grows: what the memory invented on an earlier guess is not shown once it stands in
  front of the current one (``stale_closing_pixels``);
- indoors, 4: a space with no ceiling and no sky in its first view (a camera pitched down in a room: the
  generator makes it indoors, ``enclose``) has a ceiling ``unseen_ceiling_height_m`` above its floor
  (``close_unseen_ceiling``), and its walls keep the extent observed of them (not run on as facades), unless what
  the view saw rises higher than a room (``rises_above_a_room``): then it is outdoors, under a sky nothing observed
  (``appearance.unseen_sky``);
- outdoors (no ceiling) the ground continues (up to ``max_ground_m``), observed facades continue as planes up to
  their observed height, and everything else is sky, with one closing rule: beside the first camera, a side of
  the square nothing observed has a facade as far from the camera as the one seen on its other side, as high
  and as long as that one and in its texture (``mirror_side_facades``: a square is built round, so a view that
  saw a facade on one side and nothing on the other has seen only half of it); the observed facades run on to
  meet it as at a corner. Behind the first camera and where nothing was seen opposite, the square stays open.

Doorways on the path (``path_openings``): indoors, where the camera's path (the poses it has been at and is about
to be at, in time order) crosses a bounding wall, that wall has an opening: the camera cannot walk through a wall.
Its size is a door's (``door_width_m`` wide, centred on the crossing, from the floor to ``door_height_m``): a
generic architectural prior, nothing of the scene. Rays through it reach the room beyond: the farthest observed
wall that way, else one closed where a room as deep as the camera's own would end (rule 2), and the other bounds
(side walls, floor and ceiling) continued. Before, such walls stood closed until the camera was within
``min_camera_distance_m`` (a porthole), and the frames walking up to a doorway showed a flat wall where the next
room is (house loop, 320x180, demo clips: novel-pixel depth AbsRel 0.6 on frames 46-54, 66-88, 106-120).
The path also continues ``door_lookahead_m`` along its last step (where the camera is heading); crossings on that
stretch open only parts of a wall nothing observed (a closing wall; a doorway's width the wall's observed points
leave uncovered at door height, ``_door_cover``): play clips know ~1 m of the path ahead, and a wall the camera
heads into stood closed until then. Such a heading doorway is sized for a walking camera
(``heading_door_margin_m``): invented points block it at the engine's free radius, and a 1 m doorway let only a
camera crossing its centre at right angles through (so one the camera heads at square-on,
``heading_door_square_deg``, keeps a door's width). A wall the path goes through stays a bound (with its doorway)
when the camera is nearer to it than ``min_camera_distance_m``.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, field, replace

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.regions import Box

FLOOR, CEILING, WALL = "floor", "ceiling", "wall"


@dataclass(frozen=True)
class LayoutConfig:
    sample_voxel_m: float = 0.04  # points are thinned to one per cube of this side before fitting
    max_sample_points: int = 60000  # ... and to at most this many (every k-th), which bounds the fit at ~0.2 s
    normal_neighbours: int = 16
    axis_tol_deg: float = 12.0  # a normal within this of an axis votes for that axis' planes
    bin_m: float = 0.02  # histogram bin of plane offsets
    min_plane_points: int = 120  # thinned points a plane needs
    min_plane_fraction: float = 0.004  # ... and this share of all thinned points
    min_camera_distance_m: float = 0.5  # free space: no invented surface this close to a camera pose
    wall_thickness_m: float = 0.15  # a wall passed through is this thick (its back side bounds the next room)
    unseen_wall_margin_m: float = 1.0  # a never-seen wall stands this far beyond the farthest pose that way
    max_room_extent_m: float = 12.0  # no closing wall is placed farther than this from the camera
    max_ground_m: float = 30.0  # invented ground stops at this z-depth outdoors (extents capped)
    facade_top_margin_m: float = 0.2  # outdoors a facade continues up to its observed top + this
    # ... and at least this far beyond its observed ends (estimate_layout). Infinite by default: on the courtyard
    # demo loop (320x180, 81 frames) extending by the observed length instead put facades' novel-pixel depth
    # AbsRel at 0.34 vs 0.15 for endless facades (a facade cut short shows sky where a building stands)
    facade_extend_m: float = math.inf
    facade_corner_m: float = 15.0
    # when finite, instead: an end without a corner continues to this far past the first camera along the facade
    # (and no less than observed). Endless facades built a canyon on the courtyard loop's open side (frames 70-140
    # at 12-14 dB PSNR: facades across the sky and grass)
    facade_past_camera_m: float = 2.0
    # with a prior: directions it has no wall in take the points' best wall. Off: on room@photo (320x180, demo
    # settings) it moved AbsRel 0.208 -> 0.193 but PSNR 17.1 -> 14.5 dB, and courtyard@photo not at all (0.576)
    prior_point_walls: bool = False
    full_height_margin_m: float = 0.3  # a wall walked through reaches within this of the ceiling (view_bounds)
    observed_range_pct: float = 0.5  # Layout.observed_range_m: this and 100 minus this percentile per axis
    observed_range_margin_m: float = 0.05  # a closing wall stands this far beyond the observed extent
    # a photo prior's wall that rose out of the photo (LayoutPrior.open_top) continues this far above the highest
    # point the photo saw of it. Finite: unbounded facades (courtyard@photo, 320x180, demo settings) moved AbsRel
    # 0.425 -> 0.383 but synthesised 25x the texture tiles (generation 136 -> 601 s)
    open_top_rise_m: float = 6.0
    # ... and so does an outdoor facade of an RGBD first view that rose out of the view's top (``raise_open_tops``:
    # its topmost pixel within the top this many rows, in at least this share of the columns where either that or
    # its roofline against the sky shows): its highest observed point is where the view ended. courtyard@pitched
    # (first camera 15 deg down) saw its facades only to 2.3-3.6 m above the ground, and capped there they showed
    # sky where 7 m buildings stand
    open_top_rows: int = 2
    open_top_min_share: float = 0.5
    open_top_band_m: float = 0.3  # ... counting its pixels up to this above its observed top (a 99th percentile)
    # doorways where the path crosses a wall (path_openings): as wide as the free space a pose keeps on each side
    # (2 x min_camera_distance_m), as high as a standard interior door (2.0 m; at least the eye + 0.3 m)
    door_width_m: float = 1.0
    door_height_m: float = 2.0
    door_slab_m: float = 0.3  # memory points within this of a wall, inside its doorway, are the wall's (opening_pixels)
    # the path's last step continued this far (the way the camera is heading) also makes doorways, but only in
    # parts of a wall nothing observed (closing walls; where the wall's observed points leave the doorway's width
    # uncovered from the floor to a door's height, ``door_cover_*``): the camera cannot walk through a wall, and in
    # play clips (6 poses ahead, ~1 m) the path showed a doorway only in the last metre before it.
    # House loop, play clips, 320x180: novel-pixel depth AbsRel 0.206 -> see docs/RESULTS.md (session 8)
    door_lookahead_m: float = 2.0
    # A wall counts as observed at a heading crossing where at least ``door_cover_min_share`` of the
    # ``door_cover_bin_m`` bins across the doorway's width hold observed points between ``door_cover_floor_m``
    # above the floor and a door's height. Before, its observed extent (``Plane.span_m``) counted: an inner wall
    # seen left and right of a doorway the first view never saw into stayed shut until the path's known poses
    # reached it (house:1, play clips: docs/RESULTS.md, "Session 35")
    door_cover_bin_m: float = 0.1
    door_cover_min_share: float = 0.5
    door_cover_floor_m: float = 0.1
    # ... and such a doorway is wide enough for the camera to walk through at the angle it approaches: invented
    # points block a walking camera at ``min_camera_distance_m`` (the engine's free radius), so a 1 m doorway let
    # only a camera crossing its centre at right angles through; along the wall it reaches
    # (min_camera_distance_m + this) / cos(approach) either side of the crossing (the approach capped at 60 deg),
    # at least door_width_m / 2
    heading_door_margin_m: float = 0.15
    # ... but a camera heading at the wall within this of square-on (over its last door_width_m of path: one
    # sliding along a wall it met at an angle still approaches at that angle) gets a door's width (its lintel still
    # clears the walking camera): walking straight through the centre of a door_width_m doorway its body clears both
    # jambs, and the walking width made every doorway the house loop heads through 1.3 m wide where the real ones
    # are 1.1 m (play clips, 320x180: novel-pixel depth AbsRel 0.104 -> 0.157, the wall beside the doorway shown
    # as the room beyond; docs/BENCHMARKS.md, session 15, qual)
    heading_door_square_deg: float = 5.0
    # a wall plane seen less than this above the floor is a piece of furniture's front (sofas, shelves: observed
    # tops 0.5-1.8 m above the floor on the room and house items; a room's walls 2.3-2.9 m), not a room's wall
    # (``Layout.is_room_wall``): rays through a doorway do not stop at it, and it does not cut the floor into rooms
    # (``model.fill.texture.appearance``'s unseen cells: cutting there faded the room's own floor)
    room_wall_min_top_m: float = 2.0
    # a horizontal surface above the eye is a room's ceiling only if no observed wall rises more than this above it:
    # walls meet a room's ceiling (highest wall top within 0.05 m of it on every room and house item), while the
    # underside of an arcade, a balcony or a canopy outdoors has facades rising metres past it (courtyard seed 1:
    # an arcade at 3.4 m under facades seen to 5.8-7.4 m, taken for a ceiling, made the square a closed room)
    ceiling_max_wall_rise_m: float = 0.5
    # an enclosed space whose ceiling the first view did not see (a camera pitched down in a room: no ceiling, no
    # sky) has one this far above its floor (``close_unseen_ceiling``): a generic room height, the middle of the
    # usual 2.4-3.0 m, nothing of the scene. Without it the walls rose without end and every
    # pixel above them showed the wall behind (house@pitched, play clips, 320x180: the truth's ceiling pixels, 10 %
    # of the novel ones, at depth AbsRel 0.38, a quarter of the item's)
    unseen_ceiling_height_m: float = 2.7
    unseen_ceiling_margin_m: float = 0.05  # ... and at least this above every observed point
    # ... unless what it saw rises more than this above the floor: no room is that high without walls or a ceiling
    # in view, so the space is outdoors with its sky out of view (official case 3: a meadow under a wooded
    # hillside seen 9-11 m above the floor was a closed room with a meadow-green ceiling at 9.5 m)
    max_room_height_m: float = 6.0
    # a closing wall (rule 3 and the others) is a guess that moves out as the path grows, but what the memory
    # invented on an earlier guess stayed there: room@turned (its left wall unseen) kept a wall 2 m inside the
    # room from the first clips on. Memory points beyond every observed point in the direction of a closing wall
    # and more than this in front of every bound of the view are no longer shown (``stale_closing_pixels``): the
    # fill shows the current guess there, and the engine's free-space carving takes the stale points away
    stale_guess_margin_m: float = 0.25
    # closing rule 3 beside the first camera (not behind it): a wall nothing observed stands at least as far from
    # the first camera as the observed wall on the other side (a room is photographed from near the middle of a
    # wall, looking in: its side walls about as far either side). room@turned, its left wall unseen: placed 1 m
    # beyond the poses so far, it stood 2 m inside the room for the loop's first half (docs/BENCHMARKS.md, session
    # 16, acc). Behind the camera rule 3 alone (the wall behind a photographer is near)
    mirror_side_walls: bool = True
    # outdoors, the same mirror beside the first camera: an unseen side of a square the first view saw a facade
    # on is a facade too (a square is built round), as high, as long and textured as the one seen; behind the
    # first camera, and where no facade was seen opposite, the square stays open. courtyard@turned (its left
    # side never seen): see docs/RESULTS.md, "Session 28"
    mirror_side_facades: bool = True


@dataclass(frozen=True)
class Plane:
    axis: int  # 0 = up, 1 / 2 = the horizontal Manhattan axes
    offset_m: float  # the plane is {p : p . axis_vec = offset_m}
    facing: int  # +1: its surface faces +axis_vec (its free side is offset < p . axis), -1: faces -axis_vec
    support: int  # thinned observed points on it
    kind: str  # FLOOR, CEILING or WALL
    top_m: float = math.inf  # highest observed point along up (walls; for the outdoor height cap)
    span_m: tuple[float, float] = (-math.inf, math.inf)  # walls: observed extent along their horizontal axis
    plane_id: int = -1  # index in ``Layout.planes`` (closing walls borrow the id of the plane they derive from)
    derived: bool = False  # a closing wall of the rule above, not observed


@dataclass
class Layout:
    axes: np.ndarray  # [3, 3] rows: up, a1, a2 (world frame, orthonormal, right-handed)
    planes: list[Plane]
    indoor: bool  # a ceiling was observed (or neither a ceiling nor the sky: ``model.geometric._fit_layout_state``)
    config: LayoutConfig = field(default_factory=LayoutConfig)
    # [3, 2] the observed points' extent along each axis (``observed_range_pct`` percentiles): a wall closed by
    # rule 2 or 3 stands beyond what was seen that way (in front of it, free space would erase it)
    observed_range_m: np.ndarray | None = None
    observer: np.ndarray | None = None  # [3] world frame, where the observed points were seen from (the first
    # camera): the appearance of a plane region follows what was seen at that distance (model.fill.texture.appearance)
    # [3, 2] the thinned observed points' full extent (min, max) along each axis: beyond it, in a direction a
    # closing wall bounds, the memory holds only invented points (``stale_closing_pixels``)
    observed_extent_m: np.ndarray | None = None
    observer_forward: np.ndarray | None = None  # [3] world frame, the first camera's viewing direction
    # plane_id -> the wall's observed ``span_m`` where ``_finish_layout`` ran it on as an outdoor facade (to a
    # corner, past the first camera): ``enclose`` puts it back when the space turns out to be enclosed
    observed_spans_m: dict[int, tuple[float, float]] = field(default_factory=dict)
    # plane_id -> (first bin's start along the wall's horizontal axis in metres, [B] bool): which
    # ``door_cover_bin_m`` bins along each wall hold observed points at door height (``_door_cover``); a wall
    # without an entry counts as observed over its ``span_m``
    door_cover: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)

    @property
    def up(self) -> np.ndarray:
        return self.axes[0]

    def floor(self) -> Plane | None:
        floors = [p for p in self.planes if p.kind == FLOOR]
        return max(floors, key=lambda p: p.support) if floors else None

    def is_room_wall(self, plane: Plane) -> bool:
        """Whether a wall plane is one of the rooms' walls rather than a piece of furniture's front: seen at least
        ``room_wall_min_top_m`` above the floor (a derived wall continues a room's wall; without a floor, every
        wall counts)."""
        floor = self.floor()
        return (plane.kind == WALL and (plane.derived or floor is None
                                         or plane.top_m - floor.offset_m >= self.config.room_wall_min_top_m))


def _thin(points: np.ndarray, voxel_m: float, max_points: int) -> np.ndarray:
    """One point per cube (the first in the given order, deterministic), then every k-th to ``max_points``."""
    keys = np.floor(points / voxel_m).astype(np.int64)
    first = _first_of_each_row(keys)
    first.sort()
    pts = points[first]
    if len(pts) > max_points:
        pts = pts[:: int(math.ceil(len(pts) / max_points))]
    return pts


def _first_of_each_row(keys: np.ndarray) -> np.ndarray:
    """``np.unique(keys, axis=0, return_index=True)[1]`` for ``keys`` [N, 3] int64, in some order: the index of
    each distinct row's first occurrence. The rows are packed into one int64 each (offset from their minimum) when
    their ranges allow, which a 1-D stable sort handles ~6x faster than ``axis=0``'s sort of row records."""
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    lo = keys.min(axis=0)
    span = keys.max(axis=0) - lo + 1  # int64: a few thousand cells along each axis at most in practice
    if float(span[0]) * float(span[1]) * float(span[2]) >= 2.0 ** 62:
        return np.unique(keys, axis=0, return_index=True)[1]
    packed = ((keys[:, 0] - lo[0]) * span[1] + (keys[:, 1] - lo[1])) * span[2] + (keys[:, 2] - lo[2])
    return np.unique(packed, return_index=True)[1]  # a stable sort: the first occurrence, as with axis=0


def _normals(points: np.ndarray, k: int, observer: np.ndarray) -> np.ndarray:
    """``[N, 3]`` unit normals from the ``k`` nearest neighbours, oriented towards ``observer`` [3]."""
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(k))
    n = np.asarray(pc.normals)
    flip = np.einsum("ij,ij->i", n, observer - points) < 0
    n[flip] *= -1
    return n


def _dominant_direction(normals: np.ndarray, prior: np.ndarray, cos_tol: float, max_angle_deg: float) -> np.ndarray | None:
    """The (sign-free) direction within ``max_angle_deg`` of ``prior`` that most normals share, refined by
    averaging its inliers; None when no normal is near the prior."""
    near = np.abs(normals @ prior) >= math.cos(math.radians(max_angle_deg))
    cand = normals[near]
    if len(cand) == 0:
        return None
    cand = cand[:: max(1, len(cand) // 400)]  # ~400 candidates are plenty
    from spatia.model.fill.geometry.layout_kernels import axis_votes

    votes = axis_votes(np.ascontiguousarray(cand, np.float64), np.ascontiguousarray(normals, np.float64),
                       float(cos_tol))
    best = cand[int(np.argmax(votes))]
    for _ in range(2):  # refine: mean of the inliers, signs aligned
        dots = normals @ best
        inl = np.abs(dots) >= cos_tol
        if not inl.any():
            break
        m = (normals[inl] * np.sign(dots[inl])[:, None]).sum(axis=0)
        best = m / np.linalg.norm(m)
    return best if best @ prior >= 0 else -best


def estimate_axes(normals: np.ndarray, prior_up: np.ndarray, prior_forward: np.ndarray, cos_tol: float) -> np.ndarray:
    """``[3, 3]`` rows up, a1, a2 (see module docstring, step 2)."""
    up = _dominant_direction(normals, prior_up, cos_tol, 45.0)
    if up is None:
        up = prior_up / np.linalg.norm(prior_up)
    # a horizontal basis, then the azimuth of the wall normals in it
    e1 = prior_forward - (prior_forward @ up) * up
    if np.linalg.norm(e1) < 1e-6:
        e1 = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    wall = np.abs(normals @ up) <= math.sin(math.radians(15.0))
    phi = 0.0
    if wall.sum() >= 50:
        az = np.arctan2(normals[wall] @ e2, normals[wall] @ e1)
        phi = math.atan2(np.sin(4 * az).sum(), np.cos(4 * az).sum()) / 4.0
        for _ in range(2):  # refine on the normals within 10 deg of an axis
            d = (az - phi + math.pi / 4) % (math.pi / 2) - math.pi / 4
            inl = np.abs(d) <= math.radians(10.0)
            if not inl.any():
                break
            phi += float(d[inl].mean())
    a1 = math.cos(phi) * e1 + math.sin(phi) * e2
    a2 = np.cross(up, a1)
    return np.stack([up, a1, a2])


def _peaks(values: np.ndarray, bin_m: float, min_count: int) -> list[tuple[float, int]]:
    """(offset, support) of histogram peaks: local maxima of 3-bin sums with at least ``min_count`` votes,
    non-maximum suppressed within 10 cm; offsets refined to the median of the votes within 1.5 bins."""
    if len(values) < min_count:
        return []
    lo = float(values.min()) - bin_m
    idx = np.floor((values - lo) / bin_m).astype(np.int64)
    hist = np.bincount(idx, minlength=int(idx.max()) + 2).astype(np.int64)
    s = hist.copy()
    s[1:] += hist[:-1]
    s[:-1] += hist[1:]
    order = np.argsort(-s, kind="stable")
    taken = np.zeros(len(s), bool)
    out = []
    sup = int(round(0.10 / bin_m))
    for b in order:
        if s[b] < min_count:
            break
        if taken[b]:
            continue
        taken[max(0, b - sup) : b + sup + 1] = True
        centre = lo + (b + 0.5) * bin_m
        near = np.abs(values - centre) <= 1.5 * bin_m
        out.append((float(np.median(values[near])), int(near.sum())))
    return out


def _axes_from_prior(prior) -> np.ndarray:
    """``[3, 3]`` rows up, a1, a2 from a ``world.depth.LayoutPrior`` (world frame)."""
    up = np.asarray(prior.up, np.float64)
    up = up / np.linalg.norm(up)
    a1 = np.asarray(prior.axis_a, np.float64)
    a1 = a1 - (a1 @ up) * up
    a1 /= np.linalg.norm(a1)
    return np.stack([up, a1, np.cross(up, a1)])


def _prior_planes(prior, axes: np.ndarray, pts: np.ndarray, observer: np.ndarray, config: LayoutConfig,
                  min_count: int) -> list[Plane]:
    """The prior's planes as layout planes (support = thinned observed points within 2 bins of the plane).

    Walls: per direction (axis, facing) only the farthest one from the observer with ``min_count`` support: a
    photo's estimator also fits fronts of furniture standing against nothing (a bookshelf seen from its side);
    seen from inside, the room's wall is the farthest vertical plane that way (the estimator's own closure rule).
    """
    cam_h = float(observer @ axes[0])
    heights = pts @ axes[0]
    out: list[Plane] = []
    best: dict[tuple[int, int], Plane] = {}
    open_top = tuple(getattr(prior, "open_top", ())) or (False,) * len(prior.planes)
    for (kind, normal, offset), rises_out in zip(prior.planes, open_top):
        n = np.asarray(normal, np.float64)
        k = int(np.argmax(np.abs(axes @ n)))
        s = 1.0 if axes[k] @ n >= 0 else -1.0
        coord = s * float(offset)  # axes[k] . X on the plane (its normal is aligned with s * axes[k])
        facing = -int(s)  # the normal points away from the observer: the surface faces back along -s * axes[k]
        on = np.abs(pts @ axes[k] - coord) <= 2 * config.bin_m
        support = int(on.sum())
        if k == 0:
            kind = FLOOR if (facing == 1 and coord < cam_h) else CEILING if (facing == -1 and coord > cam_h) else ""
            if kind:
                out.append(Plane(0, coord, facing, support, kind))
            continue
        if support < min_count:
            continue
        # a wall the photo saw rise out of its top edge (no sky above it) is not capped at the photo's top
        top = float(np.percentile(heights[on], 99.0)) + (config.open_top_rise_m if rises_out else 0.0)
        along = pts[on] @ axes[3 - k]
        plane = Plane(k, coord, facing, support, WALL, top, (float(np.percentile(along, 1.0)), float(np.percentile(along, 99.0))))
        dist = abs(coord - float(observer @ axes[k]))
        key = (k, facing)
        if key not in best or dist > abs(best[key].offset_m - float(observer @ axes[k])):
            best[key] = plane
    return out + list(best.values())


def estimate_layout(
    points: np.ndarray,  # [N, 3] observed points, world frame
    observer: np.ndarray,  # [3] where they were observed from (the first camera), world frame
    prior_up: np.ndarray,  # [3] the first camera's up (-y), world frame
    prior_forward: np.ndarray,  # [3] the first camera's viewing direction, world frame
    config: LayoutConfig = LayoutConfig(),
    prior=None,  # world.depth.LayoutPrior (world frame) the world recorded at creation (photo worlds), or None
) -> Layout:
    """The layout of the observed points (module docstring). Deterministic.

    With a ``prior`` (a photo world: its observed points are the photo estimator's depth, planes drawn per image
    column) the Manhattan frame and the planes are the prior's, which the estimator measured on the image's
    lines; the points only give each plane its support and extent (``_prior_planes``)."""
    pts = _thin(np.asarray(points, np.float64), config.sample_voxel_m, config.max_sample_points)
    prior_up = np.asarray(prior_up, np.float64) / np.linalg.norm(prior_up)
    if prior is not None and len(pts):
        axes = _axes_from_prior(prior)
        min_count = max(config.min_plane_points, int(config.min_plane_fraction * len(pts)))
        planes = _prior_planes(prior, axes, pts, np.asarray(observer, np.float64), config, min_count)
        if config.prior_point_walls and len(pts) >= 3 * config.normal_neighbours:
            # a direction the photo estimator fitted no wall in (a facade at the image's edge) takes the best
            # supported wall the points show that way, in the prior's frame
            have = {(p.axis, p.facing) for p in planes if p.kind == WALL}
            normals = _normals(pts, config.normal_neighbours, np.asarray(observer, np.float64))
            found = [p for p in _point_planes(pts, normals, axes, np.asarray(observer, np.float64), config, min_count)
                     if p.kind == WALL and (p.axis, p.facing) not in have]
            for key in {(p.axis, p.facing) for p in found}:
                planes.append(max((p for p in found if (p.axis, p.facing) == key), key=lambda p: p.support))
        return _finish_layout(axes, planes, config, pts, np.asarray(observer, np.float64), prior_forward)
    if len(pts) < 3 * config.normal_neighbours:
        return Layout(estimate_axes(np.zeros((0, 3)), prior_up, np.asarray(prior_forward, float), 1.0), [], False, config)
    normals = _normals(pts, config.normal_neighbours, np.asarray(observer, np.float64))
    cos_tol = math.cos(math.radians(config.axis_tol_deg))
    axes = estimate_axes(normals, prior_up, np.asarray(prior_forward, np.float64), cos_tol)
    min_count = max(config.min_plane_points, int(config.min_plane_fraction * len(pts)))
    planes = _point_planes(pts, normals, axes, np.asarray(observer, np.float64), config, min_count)
    return _finish_layout(axes, planes, config, pts, np.asarray(observer, np.float64), prior_forward)


def _point_planes(pts: np.ndarray, normals: np.ndarray, axes: np.ndarray, observer: np.ndarray,
                  config: LayoutConfig, min_count: int) -> list[Plane]:
    """Planes of the thinned points ``pts`` [N, 3] with ``normals`` [N, 3] along ``axes`` (module docstring, 3)."""
    cos_tol = math.cos(math.radians(config.axis_tol_deg))
    cam_h = float(observer @ axes[0])
    heights = pts @ axes[0]
    planes: list[Plane] = []
    for k in range(3):
        dots = normals @ axes[k]
        coord = pts @ axes[k]
        for facing in (1, -1):
            on = facing * dots >= cos_tol
            for offset, support in _peaks(coord[on], config.bin_m, min_count):
                if k == 0:
                    kind = FLOOR if (facing == 1 and offset < cam_h) else CEILING if (facing == -1 and offset > cam_h) else ""
                    if not kind:
                        continue  # a horizontal surface facing away from where it was seen from: noise
                    top = math.inf
                else:
                    kind = WALL
                    near = on & (np.abs(coord - offset) <= 1.5 * config.bin_m)
                    top = float(np.percentile(heights[near], 99.0)) if near.any() else math.inf
                    along = pts[near] @ axes[3 - k] if k else np.zeros(0)
                    span = (float(np.percentile(along, 1.0)), float(np.percentile(along, 99.0))) if len(along) else (-math.inf, math.inf)
                planes.append(Plane(k, offset, facing, support, kind, top, span if k else (-math.inf, math.inf)))
    return planes


def _finish_layout(axes: np.ndarray, planes: list[Plane], config: LayoutConfig, pts: np.ndarray,
                   observer: np.ndarray, forward: np.ndarray) -> Layout:
    """Keep one floor and one ceiling, number the planes, and extend facades outdoors."""
    # horizontal surfaces: keep the floor (most support below the camera) and the ceiling (most above); table
    # tops and seats are furniture, which the background-preferring fill handles
    floors = [p for p in planes if p.kind == FLOOR]
    walls = [p for p in planes if p.kind == WALL]
    ceilings = [p for p in planes if p.kind == CEILING
                and not any(w.top_m > p.offset_m + config.ceiling_max_wall_rise_m for w in walls)]
    keep = list(walls)
    if floors:
        keep.append(max(floors, key=lambda p: p.support))
    if ceilings:
        keep.append(max(ceilings, key=lambda p: p.support))
    planes = [Plane(p.axis, p.offset_m, p.facing, p.support, p.kind, p.top_m, p.span_m, i) for i, p in enumerate(keep)]
    observed_spans: dict[int, tuple[float, float]] = {}
    if not ceilings:
        # outdoors a facade seen over L metres continues max(L, ``facade_extend_m``) beyond each end (a building
        # as long again as what was seen of it), or to a perpendicular facade (a corner) within
        # ``facade_corner_m`` of its end; past that the square is open
        walls = [p for p in planes if p.kind == WALL]
        # ... the facades mirrored onto the square's unseen sides (``_mirrored_facade``) make corners too: a facade
        # that ran out of the first view towards one meets it
        corners = [(q.axis, q.offset_m) for q in walls]
        if config.mirror_side_facades:
            top_min_m = float(observer @ axes[0]) + config.full_height_margin_m  # as view_bounds' outdoors
            for k in (1, 2):
                for direction in (1, -1):
                    m = _mirror_source(axes, walls, observer, forward, k, direction, top_min_m, config)
                    if m is not None:
                        corners.append((k, m[0]))
        ext = []
        for p in planes:
            if p.kind != WALL:
                ext.append(p)
                continue
            ext_m = max(config.facade_extend_m, p.span_m[1] - p.span_m[0])
            lo, hi = p.span_m[0] - ext_m, p.span_m[1] + ext_m
            if math.isfinite(config.facade_past_camera_m):
                # an end with no corner: the facade runs alongside the square the camera stands in, and ends a
                # little behind it (the square's open side), not in a canyon to the horizon
                cam = float(observer @ axes[3 - p.axis])
                lo = min(p.span_m[0], cam - config.facade_past_camera_m)
                hi = max(p.span_m[1], cam + config.facade_past_camera_m)
            for axis, offset in corners:
                if axis == 3 - p.axis:
                    if p.span_m[1] < offset <= p.span_m[1] + config.facade_corner_m:
                        hi = max(hi, offset)
                    if p.span_m[0] - config.facade_corner_m <= offset < p.span_m[0]:
                        lo = min(lo, offset)
            ext.append(Plane(p.axis, p.offset_m, p.facing, p.support, p.kind, p.top_m, (lo, hi), p.plane_id))
            observed_spans[p.plane_id] = p.span_m
        planes = ext
    coords = pts @ axes.T  # [N, 3] along up, a1, a2
    floor = max((p for p in planes if p.kind == FLOOR), key=lambda p: p.support, default=None)
    cover = _door_cover(planes, coords, floor, config)
    q = config.observed_range_pct
    observed = np.stack([np.percentile(coords, q, axis=0), np.percentile(coords, 100.0 - q, axis=0)], axis=1)
    extent = np.stack([coords.min(axis=0), coords.max(axis=0)], axis=1)
    return Layout(axes, planes, indoor=bool(ceilings), config=config, observed_range_m=observed,
                  observer=np.asarray(observer, np.float64).copy(), observed_extent_m=extent,
                  observer_forward=np.asarray(forward, np.float64).copy(), observed_spans_m=observed_spans,
                  door_cover=cover)


def _door_cover(planes: list[Plane], coords: np.ndarray, floor: Plane | None,
                config: LayoutConfig) -> dict[int, tuple[float, np.ndarray]]:
    """``Layout.door_cover`` of each wall: the observed points ``coords`` [N, 3] (along up, a1, a2) within two
    histogram bins of the wall, from ``door_cover_floor_m`` above the floor to ``door_height_m`` (without a floor:
    none, and the wall keeps its extent), binned along the wall's horizontal axis."""
    if floor is None or not len(coords):
        return {}
    band = ((coords[:, 0] >= floor.offset_m + config.door_cover_floor_m)
            & (coords[:, 0] <= floor.offset_m + config.door_height_m))
    out: dict[int, tuple[float, np.ndarray]] = {}
    for p in planes:
        if p.kind != WALL:
            continue
        along = coords[band & (np.abs(coords[:, p.axis] - p.offset_m) <= 2 * config.bin_m), 3 - p.axis]
        if not len(along):
            out[p.plane_id] = (0.0, np.zeros(0, bool))
            continue
        lo = math.floor(float(along.min()) / config.door_cover_bin_m) * config.door_cover_bin_m
        idx = np.floor((along - lo) / config.door_cover_bin_m).astype(np.int64)
        covered = np.zeros(int(idx.max()) + 1, bool)
        covered[idx] = True
        out[p.plane_id] = (lo, covered)
    return out


def _observed_at(layout: Layout, plane: Plane, along: np.ndarray) -> np.ndarray:
    """``[C]`` bool: whether the wall was observed where a doorway centred at ``along`` [C] (metres along its
    horizontal axis) would stand (``LayoutConfig.door_cover_*``; a wall without a cover: within ``span_m``)."""
    if plane.derived:
        return np.zeros(len(along), bool)
    got = layout.door_cover.get(plane.plane_id)
    if got is None:
        return (along >= plane.span_m[0]) & (along <= plane.span_m[1])
    cfg = layout.config
    lo, covered = got
    half = cfg.door_width_m / 2
    b0 = np.floor((along - half - lo) / cfg.door_cover_bin_m).astype(np.int64)  # [C] the doorway's bins [b0, b1)
    b1 = np.ceil((along + half - lo) / cfg.door_cover_bin_m).astype(np.int64)
    counted = np.concatenate([[0], np.cumsum(covered)])  # covered bins before each bin index
    inside = counted[np.clip(b1, 0, len(covered))] - counted[np.clip(b0, 0, len(covered))]
    return inside >= cfg.door_cover_min_share * (b1 - b0)


def enclose(layout: Layout) -> Plane | None:
    """Make an outdoor layout (no ceiling observed) an enclosed space: what ``_fit_layout_state`` does when the
    first view saw no sky either (a camera pitched down in a room). Its walls get back the extent that was
    observed of them (``Layout.observed_spans_m``): the facade extension is outdoors' alone, and a wall's
    extent is what says where the path's heading may open a doorway in it (``path_crossings``). Extended to the
    corners, the pitched house's side walls counted as seen along the whole next room, and every doorway the
    play clips headed into stayed a flat wall until the camera was 0.5 m from it (house@pitched, play: docs/
    RESULTS.md, session 34). Returns the unseen ceiling it adds (``close_unseen_ceiling``), or None."""
    layout.indoor = True
    layout.planes = [replace(p, span_m=layout.observed_spans_m[p.plane_id]) if p.plane_id in layout.observed_spans_m
                     else p for p in layout.planes]
    layout.observed_spans_m = {}
    return close_unseen_ceiling(layout)


def rises_above_a_room(layout: Layout) -> bool:
    """Whether the observed points rise more than ``max_room_height_m`` above the floor (none: False)."""
    floor = layout.floor()
    if floor is None or layout.observed_extent_m is None:
        return False
    return float(layout.observed_extent_m[0, 1]) - floor.offset_m > layout.config.max_room_height_m


def close_unseen_ceiling(layout: Layout) -> Plane | None:
    """An enclosed space (``layout.indoor``) with a floor and no observed ceiling gets one (appended to
    ``layout.planes``, ``derived``: nothing observed it, so it never decides which walls reach the ceiling):
    ``unseen_ceiling_height_m`` above the floor, and at least ``unseen_ceiling_margin_m`` above the highest observed
    point (walls the view cut off rise at least that far). Returns it, or None where the rule does not apply (a
    ceiling was seen, outdoors, no floor). Its look is borrowed like any plane without an exemplar
    (``appearance.PlaneTextures.for_plane``)."""
    cfg = layout.config
    floor = layout.floor()
    if not layout.indoor or floor is None or any(p.kind == CEILING for p in layout.planes):
        return None
    offset_m = floor.offset_m + cfg.unseen_ceiling_height_m
    if layout.observed_extent_m is not None:
        offset_m = max(offset_m, float(layout.observed_extent_m[0, 1]) + cfg.unseen_ceiling_margin_m)
    plane = Plane(0, float(offset_m), -1, 0, CEILING, math.inf, (-math.inf, math.inf), len(layout.planes),
                  derived=True)
    layout.planes.append(plane)
    return plane


def raise_open_tops(layout: Layout, points: np.ndarray) -> None:
    """Outdoors, raise the top of each facade that rose out of the first view's top edge.

    ``points`` [H, W, 3] world frame: the first view's pixels back-projected (NaN where it saw no surface: the sky
    and what lies as far). In each image column a facade shows in, its topmost pixel either lies in the view's top
    ``open_top_rows`` rows (it rose out of the view there), or has the sky right above it (its roofline), or a
    nearer surface (a tree in front: unknown). A facade that rose out in at least ``open_top_min_share`` of the
    columns that tell continues ``open_top_rise_m`` above its highest observed point, as a photo prior's
    open-topped walls do (``_prior_planes``): what was seen of it ends where the view did. Indoors nothing
    changes: walls indoors are not capped."""
    cfg = layout.config
    if layout.indoor or points.ndim != 3 or points.shape[0] <= cfg.open_top_rows:
        return
    height = points @ layout.up  # [H, W] along up, NaN where no surface
    planes = list(layout.planes)
    for i, p in enumerate(planes):
        if p.kind != WALL or not math.isfinite(p.top_m):
            continue
        with np.errstate(invalid="ignore"):  # NaN compares False
            # [H, W] on the plane, and not above the facade's observed top: pixels of other surfaces that cross the
            # plane (a taller facade behind a low wall) are not its own
            on = ((np.abs(points @ layout.axes[p.axis] - p.offset_m) <= 2 * cfg.bin_m)
                  & (height <= p.top_m + cfg.open_top_band_m))
        cols = np.flatnonzero(on.any(axis=0))
        if not len(cols):
            continue
        top_row = np.argmax(on[:, cols], axis=0)  # [C] the facade's topmost pixel in each column it shows in
        rose_out = top_row < cfg.open_top_rows
        above = points[np.maximum(top_row - 1, 0), cols]  # [C, 3]
        # the sky right above a facade's topmost pixel is its roofline only where that outline is level: where it
        # climbs steeper than 45 deg between neighbouring columns it is the facade's end, a vertical edge (slanted
        # in a pitched view) with the sky beyond it, which says nothing of its height
        tops = points[top_row, cols]  # [C, 3]
        pair = np.diff(cols) == 1
        steep_pair = pair & (np.abs(np.diff(tops @ layout.up)) > np.abs(np.diff(tops @ layout.axes[3 - p.axis])))
        steep = np.zeros(len(cols), bool)
        steep[:-1] |= steep_pair
        steep[1:] |= steep_pair
        sky_above = ~rose_out & np.isnan(above[:, 0])
        roofline = sky_above & ~steep
        telling = int(rose_out.sum() + roofline.sum())
        if telling:
            raise_it = rose_out.sum() >= cfg.open_top_min_share * telling
        else:
            # its outline against the sky was its end alone: its top was never seen. A wall that rises past the eye
            # is a building's, which the view ended below (courtyard@pitched saw its right facade in a sliver at
            # the view's edge, bounded above by its end only, and capped there a 7 m building stood 2.3 m high)
            eye_m = float(layout.observer @ layout.up) if layout.observer is not None else -math.inf
            raise_it = bool(sky_above.any()) and p.top_m >= eye_m + cfg.full_height_margin_m
        if raise_it:
            p = planes[i] = replace(p, top_m=p.top_m + cfg.open_top_rise_m)
        end = sky_above & steep
        if end.any():
            # the view saw the sky past the facade's end: it ends there, whatever corner ``_finish_layout`` ran it
            # on to (raised, it showed through the gap as a wall with a hole cut where the sky was seen)
            h = layout.axes[3 - p.axis]
            end_m = float(np.median(tops[end] @ h))
            own_m = float(np.median(points[on] @ h))  # the facade lies on this side of its end
            lo, hi = p.span_m
            if own_m < end_m < hi:
                planes[i] = replace(p, span_m=(lo, end_m))
            elif lo < end_m < own_m:
                planes[i] = replace(p, span_m=(end_m, hi))
    layout.planes = planes


@dataclass(frozen=True)
class Opening:
    """A doorway in a bounding wall: where the camera's path goes through it (module docstring)."""

    plane: Plane  # the wall (one of ``LayoutView.bounds``)
    centre_m: float  # along the wall's horizontal axis (``Layout.axes[3 - plane.axis]``)
    half_width_m: float
    bottom_m: float  # along up: the floor (or -inf)
    top_m: float  # along up


@dataclass
class LayoutView:
    """The (at most six) planes that bound the free space around one camera position, the doorways the path
    makes in them and the walls of the rooms beyond those (appended to ``bounds``)."""

    bounds: list[Plane]
    openings: list[Opening] = field(default_factory=list)


def view_bounds(layout: Layout, camera_m: np.ndarray, reach_m: np.ndarray | LayoutPath) -> LayoutView:
    """The bounding planes for a camera at ``camera_m`` [3] (world frame); ``reach_m`` [P, 3] or a
    ``LayoutPath`` of ``layout`` (the same at a cost that does not grow with the path): every pose the camera has
    been at or is about to be at (for the closing rule and the free-space margin)."""
    cfg = layout.config
    out: list[Plane] = []
    eye_m = float(camera_m @ layout.axes[0])
    path = layout_path(layout, reach_m)  # the path's extremes and crossings, kept as it grows
    known = len(path)
    ceilings = [p.offset_m for p in layout.planes if p.kind == CEILING and not p.derived]
    # only a wall reaching the ceiling (or well above the eye without one) can have been walked through: the
    # front of a bookshelf or a sofa's back the camera passed beside is furniture, and closing the way back at
    # it walled the turned room in 1.5 m behind the camera (room@turned AbsRel 0.38 -> see docs/RESULTS.md)
    top_min_m = (max(ceilings) - cfg.full_height_margin_m) if ceilings else eye_m + cfg.full_height_margin_m

    def walls(k: int, facing: int) -> list[Plane]:
        return [p for p in layout.planes if p.axis == k and p.facing == facing and p.top_m >= top_min_m]

    for k in range(3):
        c = float(camera_m @ layout.axes[k])
        lo, hi = path.extent(k) if known else (c, c)  # of ``reach_m @ layout.axes[k]``
        for direction in (1, -1):  # the bound in the +axis / -axis direction: a plane facing -direction
            ahead = [p for p in layout.planes if p.axis == k and p.facing == -direction
                     and direction * (p.offset_m - c) >= cfg.min_camera_distance_m]
            if k == 0:
                kind = CEILING if direction == 1 else FLOOR
                ahead = [p for p in ahead if p.kind == kind]
                if ahead:
                    out.append(max(ahead, key=lambda p: p.support))
                continue  # floors and ceilings are not closed by rule
            # (free space around the other poses is kept per point by the caller: planes are infinite, and a
            # pose beyond a wall, in the next room, says nothing about the wall's other parts)
            doorway = _crossed_near_wall(layout, walls(k, -direction), direction, camera_m, path)
            if doorway is not None:
                # the camera is about to walk through a wall nearer than the free-space margin: that wall still
                # bounds the view (with its doorway, path_openings), else the memory's wall invented there before
                # the path showed the doorway stays on screen (house loop, play clips: a flat wall 0.4-0.5 m
                # ahead filling the whole frame for the 3-4 frames before each doorway, depth AbsRel 0.8)
                out.append(doorway)
                continue
            through = [p for p in walls(k, direction) if direction * (p.offset_m - c) - cfg.wall_thickness_m > 0.0]
            if ahead:
                best = max(ahead, key=lambda p: p.support)
                # ... unless the camera walked through a wall nearer than it: that wall's back side is nearer
                if through:
                    wall = min(through, key=lambda p: direction * (p.offset_m - c))
                    if direction * (wall.offset_m - best.offset_m) < 0:
                        out.append(Plane(k, wall.offset_m - direction * cfg.wall_thickness_m, -direction, 0, WALL,
                                         math.inf, (-math.inf, math.inf), wall.plane_id, derived=True))
                        continue
                out.append(best)
                continue
            if not layout.indoor:
                facade = _mirrored_facade(layout, k, direction, lo, hi, top_min_m)
                if facade is not None:
                    out.append(facade)
                continue
            # closing rule 1: the back side of a wall the camera walked through (it lies ahead, facing away)
            offset, src = None, None
            through = [p for p in walls(k, direction) if direction * (p.offset_m - c) > 0]
            back_side = False  # rule 1: that wall's back side bounds the way back, whatever was seen beyond it
            if through:
                src = min(through, key=lambda p: direction * (p.offset_m - c))
                offset = src.offset_m - direction * cfg.wall_thickness_m
                back_side = True
            else:
                # closing rule 2: the camera came through a wall facing it from behind (a doorway): the room
                # beyond is as deep as the one it came from (between that wall and the room's opposite wall,
                # observed, else guessed by rule 3 from where the camera has been)
                came = [p for p in walls(k, -direction) if direction * (p.offset_m - c) < 0]
                if came:
                    src = min(came, key=lambda p: direction * (c - p.offset_m))
                    opposite = [p.offset_m for p in layout.planes if p.axis == k and p.facing == direction
                                and direction * (p.offset_m - src.offset_m) < 0]
                    if opposite:
                        depth_m = min(direction * (src.offset_m - o) for o in opposite)
                    else:
                        nearest = lo if direction == 1 else -hi  # min(direction * reach)
                        depth_m = direction * src.offset_m - nearest + cfg.unseen_wall_margin_m
                    offset = src.offset_m + direction * (depth_m + cfg.wall_thickness_m)
            if offset is None or direction * (offset - c) < cfg.min_camera_distance_m:
                # closing rule 3: a wall nothing observed bounds stands beyond the farthest pose that way
                far = hi if direction == 1 else lo  # max(direction * reach) * direction
                offset = far + direction * cfg.unseen_wall_margin_m
                mirror = _mirrored_side_wall(layout, k, direction, top_min_m) if cfg.mirror_side_walls else None
                if mirror is not None and direction * (mirror[0] - offset) > 0:
                    offset = mirror[0]
                src = None  # no wall of its own to continue: its look is borrowed (appearance.PlaneTextures)
                back_side = False
            if not back_side:
                offset = _beyond_observed(layout, k, direction, offset)
            if direction * (offset - c) > cfg.max_room_extent_m:
                continue
            out.append(Plane(k, float(offset), -direction, 0, WALL, math.inf, (-math.inf, math.inf),
                             src.plane_id if src is not None else -1, derived=True))
    view = LayoutView(out)
    if layout.indoor and known >= 2:
        path_openings(layout, view, camera_m, path)
    return view


def _mirrored_side_wall(layout: Layout, k: int, direction: int, top_min_m: float) -> tuple[float, Plane] | None:
    """``(offset_m, source)``: the observed wall on the other side of the first camera from direction ``k``,
    ``direction`` (the best-supported one reaching ``top_min_m``) and its mirror image's offset about the first
    camera, where closing rule 3 puts an unseen wall beside it (``LayoutConfig.mirror_side_walls``) and where an
    unseen facade stands outdoors (``mirror_side_facades``); None for the direction behind the first camera (the
    horizontal axis direction most opposite to its view) or without an observed wall the other way."""
    if layout.observer is None or layout.observer_forward is None:
        return None
    return _mirror_source(layout.axes, layout.planes, layout.observer, layout.observer_forward, k, direction,
                          top_min_m, layout.config)


def _mirror_source(axes: np.ndarray, planes: list[Plane], observer: np.ndarray, forward: np.ndarray, k: int,
                   direction: int, top_min_m: float, cfg: LayoutConfig) -> tuple[float, Plane] | None:
    """``_mirrored_side_wall`` on the parts of a layout (``axes`` [3, 3], ``observer`` and ``forward`` [3], world
    frame), for ``_finish_layout`` before the layout exists."""
    up = axes[0]
    fwd = forward - (forward @ up) * up
    if np.linalg.norm(fwd) < 1e-6:
        return None  # a camera looking straight up or down has no behind
    # the four horizontal directions (axis, sign); the one most opposite to the view is behind the camera
    dots = {(a, s): s * float(axes[a] @ fwd) for a in (1, 2) for s in (1, -1)}
    if min(dots, key=dots.get) == (k, direction):
        return None
    obs = float(observer @ axes[k])
    other = [p for p in planes if p.axis == k and p.facing == direction and p.kind == WALL and not p.derived
             and p.top_m >= top_min_m and direction * (obs - p.offset_m) >= cfg.min_camera_distance_m]
    if not other:
        return None
    src = max(other, key=lambda p: p.support)
    return 2.0 * obs - src.offset_m, src


def _mirrored_facade(layout: Layout, k: int, direction: int, lo: float, hi: float, top_min_m: float) -> Plane | None:
    """Outdoors, the unseen facade beside the first camera (``LayoutConfig.mirror_side_facades``): the observed
    facade on its other side mirrored about it, as high and as long as that one (its ``top_m`` and ``span_m``: it
    ends where the source ends, a little past the first camera, so the side behind stays open) and textured like
    it (its ``plane_id``). Like an indoor closing wall it is a guess that moves out as the path grows: at least
    ``unseen_wall_margin_m`` beyond the farthest pose that way (``lo``, ``hi``: the path's extent along axis ``k``)
    and beyond what was observed that way. None where the rule places nothing (behind the first camera, no facade
    on the other side, or the option off)."""
    cfg = layout.config
    if not cfg.mirror_side_facades:
        return None
    mirror = _mirrored_side_wall(layout, k, direction, top_min_m)
    if mirror is None:
        return None
    offset, src = mirror
    far = (hi if direction == 1 else lo) + direction * cfg.unseen_wall_margin_m  # as closing rule 3's
    offset = _beyond_observed(layout, k, direction, offset if direction * (offset - far) > 0 else far)
    return Plane(k, float(offset), -direction, 0, WALL, src.top_m, src.span_m, src.plane_id, derived=True)


def _beyond_observed(layout: Layout, k: int, direction: int, offset_m: float) -> float:
    """A closing wall's offset along axis ``k`` in ``direction``, moved out past what was observed that way (the
    observed range plus ``observed_range_margin_m``): what was observed lies inside the space it closes."""
    if layout.observed_range_m is None:
        return offset_m
    seen = float(layout.observed_range_m[k, 1 if direction == 1 else 0]) + direction * layout.config.observed_range_margin_m
    return seen if direction * (seen - offset_m) > 0 else offset_m


def _heading_path(path_m: np.ndarray, lookahead_m: float) -> np.ndarray:
    """``path_m`` [P, 3] (poses in time order) with one more point ``lookahead_m`` on along its last step's
    direction; unchanged when the last step does not move (a camera turning in place heads nowhere)."""
    if len(path_m) < 2 or lookahead_m <= 0:
        return path_m
    step = path_m[-1] - path_m[-2]
    n = float(np.linalg.norm(step))
    if n < 1e-3:
        return path_m
    return np.concatenate([path_m, path_m[-1:] + step * (lookahead_m / n)])


def path_crossings(layout: Layout, plane: Plane, path_m: np.ndarray, known: int | None = None,
                   camera_m: np.ndarray | None = None) -> np.ndarray:
    """``[C]`` coordinates along the wall's horizontal axis where ``path_m`` [P, 3] (world frame, time order)
    goes through ``plane``. Steps from index ``known - 1`` on are a heading, not poses: their crossings count only
    where the wall was not observed (``_observed_at``; a closing wall was never observed) and within
    ``door_lookahead_m`` of the camera at ``camera_m`` [3] (demo clips know 41 poses ahead: a heading from the
    last of them opened the unseen wall the loop stops short of, house:1 frames 130-146)."""
    return _select_crossings(layout, _crossing_parts(layout, plane, path_m, known), camera_m)


def _crossing_parts(layout: Layout, plane: Plane, path_m: np.ndarray, known: int | None):
    """What ``path_crossings`` computes before it looks at the camera: ``(cross [C, 3], along [C], heading [C]
    bool: a guessed crossing inside what was observed of the wall, or None without ``known``)``."""
    a, h = layout.axes[plane.axis], layout.axes[3 - plane.axis]
    s = path_m @ a - plane.offset_m
    j = np.flatnonzero(s[:-1] * s[1:] < 0)
    if not len(j):
        return None
    frac = s[j] / (s[j] - s[j + 1])
    step = path_m[j + 1] - path_m[j]  # [C, 3]
    cross = path_m[j] + frac[:, None] * step
    along = cross @ h
    if known is None:
        return cross, along, None, None, None
    guessed = j >= known - 1
    seen = _observed_at(layout, plane, along)
    # [C] cos of the approach to the wall: from the last pose at least door_width_m before the crossing (a camera
    # sliding along the wall it met at an angle still approaches at that angle; its last step alone is square-on)
    back = np.empty_like(cross)
    for c in range(len(j)):
        far = np.flatnonzero(np.linalg.norm(path_m[: j[c] + 1] - cross[c], axis=1) >= layout.config.door_width_m)
        back[c] = path_m[far[-1] if len(far) else 0]
    approach = cross - back
    cos = np.abs(approach @ a) / np.maximum(np.linalg.norm(approach, axis=1), 1e-12)
    return cross, along, guessed, seen, cos


def _select_crossings(layout: Layout, parts, camera_m: np.ndarray | None, half_widths: bool = False):
    """The crossings ``[C]`` kept (``path_crossings``); with ``half_widths``: ``(along [C], half width [C], heading
    [C] bool)``, the doorway's half width at each (``LayoutConfig.heading_door_margin_m`` for heading crossings met
    at an angle, ``heading_door_square_deg``)."""
    cfg = layout.config
    if parts is None:
        return (np.zeros(0), np.zeros(0), np.zeros(0, bool)) if half_widths else np.zeros(0)
    cross, along, guessed, seen, cos = parts
    if guessed is None or not guessed.any():  # no heading crossing: nothing depends on the camera
        return (along, np.full(len(along), cfg.door_width_m / 2), np.zeros(len(along), bool)) if half_widths else along
    if camera_m is not None:
        seen = seen | (np.linalg.norm(cross - camera_m, axis=1) > cfg.door_lookahead_m)
    keep = ~(guessed & seen)
    if not half_widths:
        return along[keep]
    fit = (cfg.min_camera_distance_m + cfg.heading_door_margin_m) / np.maximum(cos, 0.5)
    oblique = cos < math.cos(math.radians(cfg.heading_door_square_deg))
    half = np.where(guessed & oblique, np.maximum(cfg.door_width_m / 2, fit), cfg.door_width_m / 2)
    return along[keep], half[keep], guessed[keep]


def _dots(rows: np.ndarray, vec: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
    """``rows [R, 3] @ vec`` with each row's value as a product over a path of two or more rows gives it: numpy's
    product of a single row is not BLAS's matrix-vector one (it rounds differently in the last bit), so a lone row
    is computed beside ``before`` (the row before it; else itself) and taken back out."""
    if len(rows) != 1:
        return rows @ vec
    return (np.concatenate([rows if before is None else before[None], rows]) @ vec)[1:]


class _Rows:
    """Rows of a path held as the first ``n`` rows of ``pos`` followed by ``tail``."""

    __slots__ = ("pos", "n", "tail")

    def __init__(self, pos: np.ndarray, n: int, tail: np.ndarray) -> None:
        self.pos, self.n, self.tail = pos, n, tail

    def take(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), 3))
        low = idx < self.n
        out[low] = self.pos[idx[low]]
        out[~low] = self.tail[idx[~low] - self.n]
        return out

    def span(self, lo: int, hi: int) -> np.ndarray:
        n = self.n
        if lo >= n:
            return self.tail[lo - n : hi - n]
        if hi <= n:
            return self.pos[lo:hi]
        return np.concatenate([self.pos[lo:n], self.tail[: hi - n]])

    def crossings(self, s: np.ndarray, j: np.ndarray, start: int, width_m: float) -> tuple[np.ndarray, np.ndarray]:
        """``(cross [C, 3], back [C, 3])`` of the steps ``start + j`` (``s``: the rows' signed distances to the
        wall from row ``start`` on): ``_crossing_parts``' arithmetic, with each crossing's approach pose (the last
        row of ``[0, j]`` at least ``width_m`` from it, else the first) read backwards from ``j``."""
        frac = s[j] / (s[j] - s[j + 1])
        here = self.take(start + j)
        cross = here + frac[:, None] * (self.take(start + j + 1) - here)
        back = np.empty_like(cross)
        for c in range(len(j)):
            hi, found = int(start + j[c]) + 1, None
            while hi > 0 and found is None:
                lo = max(hi - 64, 0)
                rows = self.span(lo, hi)
                far = np.flatnonzero(np.linalg.norm(rows - cross[c], axis=1) >= width_m)
                if len(far):
                    found = rows[far[-1]]
                hi = lo
            back[c] = found if found is not None else self.span(0, 1)[0]
        return cross, back


class _WallCrossings:
    """The held steps' crossings of one wall (axis, offset): steps ``[0, upto)`` read; per crossing, in step
    order, its step, point and approach pose (``_Rows.crossings``)."""

    __slots__ = ("upto", "j", "cross", "back")

    def __init__(self) -> None:
        self.upto = 0
        self.j = np.zeros(0, np.int64)
        self.cross = np.zeros((0, 3))
        self.back = np.zeros((0, 3))


class _NearPoses:
    """The held poses nearer than ``PathSummary.near_width_m`` to one plane (axis, offset), in time order; poses
    ``[0, upto)`` read."""

    __slots__ = ("upto", "idx")

    def __init__(self) -> None:
        self.upto = 0
        self.idx = np.zeros(0, np.int64)


class PathSummary:
    """The camera's path in one layout (the poses visited and about to be, in time order), summarised so that what
    ``view_bounds``, ``path_openings`` and the layout fill read of it costs about the same at the 20 000th pose of
    a session as at the 100th (the whole path was read per call; docs/BENCHMARKS.md, engineer lspk's section): each
    pose's coordinates along the layout's axes with their running extremes, and per wall (axis, offset) the steps
    that cross it and per plane the poses near it, each extended by the poses that came since it was last read.
    A wall or plane read for the first time is read over the whole path once, unless the path lies all on one
    side of it (a closing wall beyond the farthest pose), which the extremes answer.

    Append-only: the poses held never change. ``sync`` returns a handle (``LayoutPath``) on a prefix of it plus
    poses of its own, and a new summary when a path does not start with the poses held (a clip given up before
    the history took it); handles stay valid while the summary grows. Thread-safe: the frame's thread syncs, the
    tiles-ahead thread reads handles.

    Same values as the whole-path arithmetic (``_crossing_parts``, ``reach @ axis``; tests): a row's product with
    an axis is the same in any batch of two rows or more (``_dots``), and what the layout computes over all of a
    wall's crossings at once (their products with its axes) is computed per read, over those crossings."""

    NEAR_SLACK_M = 0.25  # near-pose lists hold the poses within min_camera_distance_m + this of their plane
    MAX_ENTRIES = 96  # walls and planes kept each (least recently read dropped): closing walls move with the path

    def __init__(self, layout: Layout, capacity: int = 256) -> None:
        self.layout = layout
        self.near_width_m = layout.config.min_camera_distance_m + self.NEAR_SLACK_M
        self.n = 0
        self._pos = np.empty((capacity, 3))  # [N, 3] float64 world frame
        self._t = np.empty((capacity, 3))  # [N, 3] pose . axes[k] in column k
        self._lo = np.empty((capacity, 3))  # [N, 3] minimum of _t over poses [0, i]
        self._hi = np.empty((capacity, 3))  # ... maximum
        self._walls: dict = {}  # (axis, offset) -> _WallCrossings, least recently read first
        self._near: dict = {}  # (axis, offset) -> _NearPoses
        self._visited: tuple | None = None  # (weakref to the visited array's owner, data pointer, strides, rows)
        self._lock = threading.Lock()
        self.scans = 0  # walls and planes read over the whole path (the extremes could not answer)

    # ---- the path ---------------------------------------------------------------------------------------------

    def sync(self, positions_m: np.ndarray, visited_c2w: np.ndarray | None = None) -> LayoutPath:
        """A handle on the path ``positions_m`` [P, 3] (world frame, time order), preceded by the positions of
        ``visited_c2w`` [V, 4, 4] when given, in this summary or, when the path does not start with the poses held,
        in a new one (the handle's ``summary``: the rows in common copied). Rows are compared with those held by
        their bytes, except: when ``visited_c2w`` is read-only and starts where the array the last call read
        started, in the same buffer, its rows read then are taken as unchanged (the engine's history is
        append-only, ``FrameStore.poses``), so a clip reads only the poses added since the last one."""
        parts, trusted, held_visited = [], 0, None
        if visited_c2w is not None:
            V = np.asarray(visited_c2w).reshape(-1, 4, 4)
            owner = V if V.base is None else V.base
            ptr, strides = V.__array_interface__["data"][0], V.strides
            held = self._visited
            if (held is not None and held[0]() is owner and held[1] == ptr and held[2] == strides
                    and held[3] <= min(len(V), self.n) and not V.flags.writeable):
                trusted = held[3]
            held_visited = (weakref.ref(owner), ptr, strides, len(V))
            parts.append(V[:, :3, 3])
        parts.append(np.asarray(positions_m, np.float64).reshape(-1, 3))
        total = sum(len(p) for p in parts)
        rows, at = [], 0  # (first row, rows) from ``trusted`` on
        for p in parts:
            lo = max(trusted - at, 0)
            if lo < len(p):
                rows.append((at + lo, p[lo:]))
            at += len(p)
        with self._lock:  # one sync at a time (two would append the same rows)
            differ = total if total < self.n else None  # a shorter path: a prefix of the one held at most
            for start, r in rows:
                stop = min(start + len(r), self.n)
                if start >= stop:
                    continue
                got = np.ascontiguousarray(r[: stop - start], np.float64)
                bad = np.flatnonzero((got.view(np.int64) != self._pos[start:stop].view(np.int64)).any(axis=1))
                if len(bad):
                    differ = min(start + int(bad[0]), total)
                    break
            summary = self if differ is None else self._truncated(differ)  # a new one: no other thread has it
            for start, r in rows:
                skip = max(summary.n - start, 0)
                if skip < len(r):
                    summary._append(np.ascontiguousarray(r[skip:], np.float64))
            if held_visited is not None:
                summary._visited = held_visited
        return LayoutPath(summary, total)

    def _truncated(self, m: int) -> PathSummary:
        """A new summary holding this one's first ``m`` poses and what is known of them (under the lock)."""
        new = PathSummary(self.layout, max(2 * m, 256))
        new.n = m
        for name in ("_pos", "_t", "_lo", "_hi"):
            getattr(new, name)[:m] = getattr(self, name)[:m]
        for key, w in self._walls.items():
            keep = w.j < m - 1
            c = new._walls[key] = _WallCrossings()
            c.upto, c.j, c.cross, c.back = min(w.upto, max(m - 1, 0)), w.j[keep], w.cross[keep], w.back[keep]
        for key, q in self._near.items():
            c = new._near[key] = _NearPoses()
            c.upto, c.idx = min(q.upto, m), q.idx[q.idx < m]
        return new

    def _append(self, rows: np.ndarray) -> None:
        """Hold ``rows`` [R, 3] float64 after the poses held (under the lock)."""
        n, r = self.n, len(rows)
        if n + r > len(self._pos):
            cap = max(n + r, len(self._pos) * 3 // 2)
            for name in ("_pos", "_t", "_lo", "_hi"):
                new = np.empty((cap, 3))
                new[:n] = getattr(self, name)[:n]
                setattr(self, name, new)
        self._pos[n : n + r] = rows
        # each row's products as over a path of two rows or more (``_dots``): a lone row beside the one before it
        rows2 = self._pos[n - 1 : n + r] if n and r == 1 else (rows if r > 1 else np.concatenate([rows, rows]))
        t = np.empty((len(rows2), 3))
        for k in range(3):
            t[:, k] = rows2 @ self.layout.axes[k]
        t = t[len(rows2) - r :]
        lo, hi = (t, t) if r == 1 else (np.minimum.accumulate(t, axis=0), np.maximum.accumulate(t, axis=0))
        if n:
            lo, hi = np.minimum(lo, self._lo[n - 1]), np.maximum(hi, self._hi[n - 1])
        self._t[n : n + r], self._lo[n : n + r], self._hi[n : n + r] = t, lo, hi
        self.n = n + r  # last: a reader that sees the count sees the rows

    # ---- what the handles read ------------------------------------------------------------------------------

    def _entry(self, table: dict, key, make):
        got = table.pop(key, None)
        if got is None:
            got = make()
            while len(table) >= self.MAX_ENTRIES:
                table.pop(next(iter(table)))
        table[key] = got  # most recently read last
        return got

    def _one_side(self, axis: int, offset: float, width: float) -> bool:
        """Every held pose lies at least ``width`` from ``offset`` along ``axis``, on one side, as ``t - offset``
        rounds (monotonic in t: the extremes decide)."""
        n = self.n
        return bool((self._lo[n - 1, axis] - offset) >= width or (self._hi[n - 1, axis] - offset) <= -width)

    def crossings(self, axis: int, offset: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(j [C], cross [C, 3], back [C, 3])``: the crossings of the wall (axis, offset) by the steps between
        the first ``n`` poses held, in step order (``_Rows.crossings``)."""
        with self._lock:
            w = self._entry(self._walls, (axis, offset), _WallCrossings)
            end = self.n - 1  # steps [0, end) are between held poses
            if w.upto < end:
                start = w.upto
                if start == 0 and self._one_side(axis, offset, 0.0):
                    start = end  # no sign change: no step crosses it
                elif start == 0:
                    self.scans += 1
                if start == end - 1 and not ((float(self._t[start, axis]) - offset)
                                             * (float(self._t[end, axis]) - offset) < 0):
                    start = end  # one new step (a one-frame clip's), not crossing: the same test on floats
                if start < end:
                    s = self._t[start : end + 1, axis] - offset
                    j = np.flatnonzero(s[:-1] * s[1:] < 0)
                    if len(j):
                        cross, back = _Rows(self._pos, self.n, np.zeros((0, 3))).crossings(
                            s, j, start, self.layout.config.door_width_m)
                        w.j = np.concatenate([w.j, j + start])
                        w.cross, w.back = np.concatenate([w.cross, cross]), np.concatenate([w.back, back])
                w.upto = end
            keep = len(w.j) if n == self.n else int(np.searchsorted(w.j, n - 1))
            return w.j[:keep], w.cross[:keep], w.back[:keep]

    def near(self, axis: int, offset: float, width: float, n: int) -> np.ndarray:
        """``[K]`` the first ``n`` held poses nearer than ``width`` to the plane (axis, offset) (``|pose . axis -
        offset| < width`` as numpy rounds it), in time order."""
        with self._lock:
            q = self._entry(self._near, (axis, offset, width), _NearPoses)
            if q.upto < self.n:
                start = q.upto
                if start == 0 and self._one_side(axis, offset, width):
                    start = self.n
                elif start == 0:
                    self.scans += 1
                if start == self.n - 1 and not abs(float(self._t[start, axis]) - offset) < width:
                    start = self.n  # one new pose, not near: the same test on floats
                if start < self.n:
                    idx = np.flatnonzero(np.abs(self._t[start : self.n, axis] - offset) < width)
                    if len(idx):
                        q.idx = np.concatenate([q.idx, idx + start])
                q.upto = self.n
            return q.idx if n == self.n else q.idx[: int(np.searchsorted(q.idx, n))]


class LayoutPath:
    """A path (camera positions in time order, world frame) read through a ``PathSummary``: its first ``n`` poses
    and then ``tail`` [T, 3] (poses of its own: where the camera would be heading, ``extended``). Immutable.
    ``view_bounds``, ``path_openings`` and the layout fill take it wherever they take the poses as an array."""

    def __init__(self, summary: PathSummary, n: int, tail: np.ndarray | None = None) -> None:
        self.summary, self.n = summary, n
        self.tail = np.zeros((0, 3)) if tail is None else tail
        self._parts: dict = {}  # plane -> its crossing parts (``parts``): the frames of a clip share a path
        self._seg = None  # ``_segment``

    def __len__(self) -> int:
        return self.n + len(self.tail)

    @property
    def layout(self) -> Layout:
        return self.summary.layout

    def positions(self) -> np.ndarray:
        """``[P, 3]`` the whole path as an array (a copy: O(P))."""
        return np.concatenate([self.summary._pos[: self.n], self.tail])

    def last(self, k: int) -> np.ndarray:
        """``[min(k, P), 3]`` its last ``k`` poses."""
        k = min(k, len(self))
        return _Rows(self.summary._pos, self.n, self.tail).span(len(self) - k, len(self))

    def extended(self, rows_m: np.ndarray) -> LayoutPath:
        """This path followed by ``rows_m`` [R, 3]."""
        return LayoutPath(self.summary, self.n, np.concatenate([self.tail, np.asarray(rows_m, np.float64)]))

    def _tail_dots(self, vec: np.ndarray) -> np.ndarray:
        return _dots(self.tail, vec, self.summary._pos[self.n - 1] if self.n else None)

    def extent(self, k: int) -> tuple[float, float]:
        """``(min, max)`` of ``positions() @ axes[k]`` (a path of one pose or more)."""
        if len(self) == 1:  # one row: numpy's product of a single row (as ``reach @ axis`` is then)
            v = float((self.positions() @ self.layout.axes[k])[0])
            return v, v
        s, n = self.summary, self.n
        lo, hi = (s._lo[n - 1, k], s._hi[n - 1, k]) if n else (np.inf, -np.inf)
        if len(self.tail):
            t = self._tail_dots(self.layout.axes[k])
            lo, hi = np.minimum(lo, np.min(t)), np.maximum(hi, np.max(t))
        return float(lo), float(hi)

    def near(self, axis: int, offset: float, width: float) -> np.ndarray:
        """``[K, 3]`` the poses nearer than ``width`` to the plane (axis, offset): ``reach[np.abs(reach @ a - offset)
        < width]`` of the whole path. Kept per width: the layout fill's free-space radius; another width up to
        ``near_width_m`` (``geometric._near_poses``' radius and slack) is taken out of that width's poses."""
        s = self.summary
        if len(self) <= 1 or width > s.near_width_m:  # one row (numpy's product of a single row), or too wide
            reach = self.positions()
            return reach[np.abs(reach @ self.layout.axes[axis] - offset) < width]
        exact = width == s.layout.config.min_camera_distance_m
        idx = s.near(axis, offset, width if exact else s.near_width_m, self.n) if self.n else np.zeros(0, np.int64)
        if not exact:
            idx = idx[np.abs(s._t[idx, axis] - offset) < width]
        out = s._pos[idx]
        if len(self.tail):
            out = np.concatenate([out, self.tail[np.abs(self._tail_dots(self.layout.axes[axis]) - offset) < width]])
        return out

    def _segment(self):
        """``(first, rows, seg_t)``: the steps after the held ones, from the last held pose (index ``first``)
        through the tail and the point where the path heads (``_heading_path``): ``rows`` (``_Rows`` of the path
        with that point) and ``seg_t`` [S, 3] the segment's rows along the axes (None: fewer than two rows)."""
        if self._seg is None:
            heading = _heading_path(self.last(2), self.layout.config.door_lookahead_m)[2:]
            first = max(self.n - 1, 0)
            rows = _Rows(self.summary._pos, self.n, np.concatenate([self.tail, heading]) if len(heading) else self.tail)
            seg = rows.span(first, len(self) + len(heading))
            # (two rows or more: each row's products as over the whole path)
            seg_t = np.stack([seg @ self.layout.axes[k] for k in range(3)], axis=1) if len(seg) >= 2 else None
            self._seg = (first, rows, seg_t)
        return self._seg

    def parts(self, plane: Plane):
        """``_crossing_parts(layout, plane, path, len(self))`` of this path continued where it heads
        (``_heading_path``): the held steps' crossings from the summary, the rest's computed here."""
        got = self._parts.get(plane, self)
        if got is not self:
            return got
        layout, total = self.layout, len(self)
        got = None
        if total >= 2:
            s = self.summary
            j, cross, back = s.crossings(plane.axis, plane.offset_m, self.n) if self.n >= 2 else (
                np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3)))
            first, rows, seg_t = self._segment()
            if seg_t is not None:
                d = seg_t[:, plane.axis] - plane.offset_m
                jj = np.flatnonzero(d[:-1] * d[1:] < 0)
                if len(jj):
                    c2, b2 = rows.crossings(d, jj, first, layout.config.door_width_m)
                    j = np.concatenate([j, jj + first])
                    cross, back = np.concatenate([cross, c2]), np.concatenate([back, b2])
            if len(j):
                a, h = layout.axes[plane.axis], layout.axes[3 - plane.axis]
                along = cross @ h
                guessed = j >= total - 1
                seen = _observed_at(layout, plane, along)
                approach = cross - back
                cos = np.abs(approach @ a) / np.maximum(np.linalg.norm(approach, axis=1), 1e-12)
                got = (cross, along, guessed, seen, cos)
        self._parts[plane] = got
        return got

    def crossings(self, plane: Plane, camera_m: np.ndarray, half_widths: bool = False):
        """``path_crossings(layout, plane, heading path, len(self), camera_m)`` (``_select_crossings``)."""
        return _select_crossings(self.layout, self.parts(plane), camera_m, half_widths)


def layout_path(layout: Layout, reach_m) -> LayoutPath:
    """``reach_m`` as a ``LayoutPath`` of ``layout``: itself when it is one, else [P, 3] poses in a summary of
    their own (read whole: O(P))."""
    if isinstance(reach_m, LayoutPath):
        if reach_m.layout is not layout:
            raise ValueError("the path's summary is of another layout")
        return reach_m
    return PathSummary(layout).sync(np.asarray(reach_m, np.float64).reshape(-1, 3))


def _crossed_near_wall(layout: Layout, candidates: list[Plane], direction: int, camera_m: np.ndarray,
                       path: LayoutPath) -> Plane | None:
    """The nearest of ``candidates`` (walls of one axis facing the camera at ``camera_m`` [3]) that lies less than
    ``min_camera_distance_m`` ahead of it in ``direction`` and that ``path`` (continued where it heads, see
    ``path_crossings``) goes through within a door's width of the camera along the wall; None when there is none."""
    cfg = layout.config
    if len(path) < 2 or not candidates:
        return None
    k = candidates[0].axis
    a, h = layout.axes[k], layout.axes[3 - k]
    c, cam_along = float(camera_m @ a), float(camera_m @ h)
    best = None
    for p in candidates:
        gap = direction * (p.offset_m - c)
        if not 0.0 <= gap < cfg.min_camera_distance_m or (best is not None and gap >= direction * (best.offset_m - c)):
            continue
        along = path.crossings(p, camera_m)
        if np.any(np.abs(along - cam_along) <= cfg.door_width_m):
            best = p
    return best


def path_openings(layout: Layout, view: LayoutView, camera_m: np.ndarray, reach_m: np.ndarray | LayoutPath) -> None:
    """Add to ``view`` a doorway wherever the path crosses one of its walls, and for each wall with a doorway the
    wall of the room beyond (module docstring). ``reach_m`` [P, 3] (camera positions in time order, world frame)
    or a ``LayoutPath`` of ``layout``: the poses visited and about to be; the path goes on where its last step
    heads (``_heading_path``, ``path_crossings``)."""
    cfg = layout.config
    path = layout_path(layout, reach_m)
    up = layout.axes[0]
    floor = next((p for p in view.bounds if p.kind == FLOOR), None)
    bottom = floor.offset_m if floor is not None else -math.inf
    eye = float(camera_m @ up)
    top = max(bottom + cfg.door_height_m, eye + cfg.full_height_margin_m)
    base = list(view.bounds)
    for p in base:
        if p.kind != WALL:
            continue
        a = layout.axes[p.axis]
        along, half, heading = path.crossings(p, camera_m, half_widths=True)
        if len(along) == 0:
            continue
        order = np.argsort(along, kind="stable")
        along, half, heading = along[order], half[order], heading[order]
        # one doorway per place the path goes through
        keep = np.concatenate([[True], np.diff(along) > cfg.door_width_m / 2])
        for c, w, guess in zip(along[keep], half[keep], heading[keep]):
            # a doorway's lintel is no lower than the free radius above the walking camera: invented points within
            # it are not shown, so a lower lintel had a dome cut into it where the camera passed, the ceiling of the
            # room beyond showing through (house loop, frames 145-160); a heading doorway's clears it by a margin
            t = max(top, eye + cfg.min_camera_distance_m + (cfg.heading_door_margin_m if guess else 0.0))
            view.openings.append(Opening(p, float(c), float(w), bottom, t))
        # the room beyond: the farthest observed wall that way facing back, else as deep as the camera's room
        direction = -p.facing  # from the camera towards the wall
        far = [q for q in layout.planes if q.kind == WALL and q.axis == p.axis and q.facing == p.facing
               and direction * (q.offset_m - p.offset_m) > cfg.wall_thickness_m + cfg.min_camera_distance_m]
        if far:
            beyond = max(far, key=lambda q: direction * q.offset_m)
        else:
            opposite = [q for q in base if q.axis == p.axis and q.facing == -p.facing and q.kind == WALL]
            if not opposite:
                continue
            depth_m = abs(p.offset_m - opposite[0].offset_m)
            offset = p.offset_m + direction * (depth_m + cfg.wall_thickness_m)
            if direction * (offset - float(camera_m @ a)) > cfg.max_room_extent_m:
                continue
            beyond = Plane(p.axis, float(offset), p.facing, 0, WALL, math.inf, (-math.inf, math.inf),
                           p.plane_id, derived=True)
        if beyond not in view.bounds:
            view.bounds.append(beyond)


def _rate(rays_cam: np.ndarray, vec_cam: np.ndarray) -> np.ndarray:
    """``[M]`` float32 ``rays_cam [M, 3] . vec_cam [3]`` by columns (a BLAS product on [M, 3] is slower here and
    spins threads on a shared machine)."""
    v = np.asarray(vec_cam, np.float32)
    return rays_cam[:, 0] * v[0] + rays_cam[:, 1] * v[1] + rays_cam[:, 2] * v[2]


_OPENING_BOXES: dict = {}  # (id(layout), Opening) -> (weakref to layout, Box); the last few doorways' boxes
_OPENING_BOXES_MAX = 64
_OPENING_BOXES_LOCK = threading.Lock()


def opening_box(layout: Layout, o: Opening) -> Box:
    """Doorway ``o`` as the world-frame box the fill shows open: its width and height, within ``door_slab_m`` of its
    wall (what ``opening_pixels`` hides); a doorway with no floor below it is ``door_height_m`` tall. The memory
    deletes the invented points inside (``GeneratedView.open_space``), in view or not. A doorway stays the same
    over the frames walking through it: its box is made once (``_opening_box``; the memory only reads it)."""
    key = (id(layout), o)
    with _OPENING_BOXES_LOCK:
        got = _OPENING_BOXES.get(key)
        if got is not None and got[0]() is layout:
            return got[1]
    box = _opening_box(layout, o)
    with _OPENING_BOXES_LOCK:
        _OPENING_BOXES[key] = (weakref.ref(layout), box)
        while len(_OPENING_BOXES) > _OPENING_BOXES_MAX:
            _OPENING_BOXES.pop(next(iter(_OPENING_BOXES)))
    return box


def _opening_box(layout: Layout, o: Opening) -> Box:
    """``opening_box`` made anew."""
    up, a = layout.axes[0], layout.axes[o.plane.axis]
    h = layout.axes[3 - o.plane.axis]
    bottom = o.bottom_m if math.isfinite(o.bottom_m) else o.top_m - layout.config.door_height_m
    centre = a * o.plane.offset_m + h * o.centre_m + up * (bottom + o.top_m) / 2
    half = [layout.config.door_slab_m, o.half_width_m, (o.top_m - bottom) / 2]
    return Box(centre, half, np.stack([a, np.cross(up, a), up], axis=1))  # columns: across, along, up


def _in_openings(layout: Layout, openings: list[Opening], rays_cam: np.ndarray, depth_m: np.ndarray,
                 c2w: np.ndarray, near_wall: bool = False) -> np.ndarray:
    """``[M]`` bool: the points at z-depth ``depth_m`` [M] along ``rays_cam`` [M, 3] (camera frame, z = 1) lie in
    one of the doorways (with ``near_wall``: also within ``door_slab_m`` of the doorway's wall)."""
    R, cam = c2w[:3, :3], c2w[:3, 3]
    up = layout.axes[0]
    height = np.float32(cam @ up) + depth_m * _rate(rays_cam, R.T @ up)
    inside = np.zeros(len(rays_cam), bool)
    for o in openings:
        h = layout.axes[3 - o.plane.axis]
        along = np.float32(cam @ h) + depth_m * _rate(rays_cam, R.T @ h)
        ok = (np.abs(along - o.centre_m) <= o.half_width_m) & (height >= o.bottom_m) & (height <= o.top_m)
        if near_wall:
            a = layout.axes[o.plane.axis]
            coord = np.float32(cam @ a) + depth_m * _rate(rays_cam, R.T @ a)
            ok &= np.abs(coord - o.plane.offset_m) <= layout.config.door_slab_m
        inside |= ok
    return inside


def opening_pixels(
    layout: Layout,
    view: LayoutView,
    depth_m: np.ndarray,  # [H, W] float32 z-depth the memory rendered
    valid: np.ndarray,  # [H, W] bool, where it rendered
    rays_cam: np.ndarray,  # [H, W, 3] float32 pixel rays, camera frame, z = 1
    c2w: np.ndarray,  # [4, 4]
) -> np.ndarray:
    """``[H, W]`` bool: rendered pixels whose point lies in a doorway of ``view`` within ``door_slab_m`` of its
    wall: a wall the memory holds there was invented before the path showed the doorway, and is not shown.
    Only the pixels in the image box of each doorway's slab are tested (compiled: ``opening_kernels``); the
    numpy twin over the whole frame is ``reference_opening_pixels``."""
    from spatia.model.fill.geometry.opening_kernels import mark_opening

    out = np.zeros(valid.shape, bool)
    H, W = valid.shape
    R, cam = c2w[:3, :3], c2w[:3, 3]
    rays = np.ascontiguousarray(rays_cam, np.float32)
    depth = np.ascontiguousarray(depth_m, np.float32)
    valid = np.ascontiguousarray(valid, bool)
    up = layout.axes[0]
    f32 = np.float32
    for o in view.openings:
        box = _slab_image_box(layout, o, rays, c2w)
        if box is None:
            continue
        a, h = layout.axes[o.plane.axis], layout.axes[3 - o.plane.axis]
        mark_opening(rays, depth, valid, *box, (R.T @ up).astype(f32), f32(cam @ up), (R.T @ h).astype(f32),
                     f32(cam @ h), f32(o.centre_m), f32(o.half_width_m), f32(o.bottom_m), f32(o.top_m),
                     (R.T @ a).astype(f32), f32(cam @ a), f32(o.plane.offset_m), f32(layout.config.door_slab_m), out)
    return out


def stale_closing_pixels(layout: Layout, view: LayoutView, depth_m: np.ndarray, valid: np.ndarray,
                         rays_cam: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """(The arguments as ``opening_pixels``'s.) ``[H, W]`` bool: rendered pixels whose point lies in free space by
    the view's current layout and where only an earlier guess can have put it (``LayoutConfig.stale_guess_margin_m``):
    beyond the observed extent (``Layout.observed_extent_m``) by the margin in the direction of one of the view's
    closing (derived) walls, and more than the margin in front of every bound of the view. Indoors only (outdoors
    nothing is closed). One compiled pass (``opening_kernels.mark_stale``); the numpy twin is
    ``reference_stale_closing_pixels``."""
    from spatia.model.fill.geometry.opening_kernels import mark_stale, stale_kernel_inputs

    out = np.zeros(valid.shape, bool)
    closing = _stale_closing_walls(layout, view)
    if not closing or not valid.any():
        return out
    f32 = np.float32
    R, cam = c2w[:3, :3], c2w[:3, 3]
    ext = layout.observed_extent_m
    rays = np.asarray(rays_cam, f32)
    axes = _ray_axes(rays)
    ray_x, ray_y = axes if axes is not None else (np.zeros(0, f32), np.zeros(0, f32))
    mark_stale(*stale_kernel_inputs(
        rays, ray_x, ray_y, np.asarray(depth_m, f32), np.asarray(valid, bool), (layout.axes @ R).astype(f32),
        (layout.axes @ cam).astype(f32),
        np.array([p.axis for p in closing], np.int64), np.array([-p.facing for p in closing], f32),
        np.array([ext[p.axis, 1 if p.facing == -1 else 0] for p in closing], f32),
        np.array([p.axis for p in view.bounds], np.int64), np.array([p.facing for p in view.bounds], f32),
        np.array([p.offset_m for p in view.bounds], f32)), axes is not None, f32(layout.config.stale_guess_margin_m),
        out)
    return out


_RAY_AXES: dict = {}  # id(rays) -> (weakref to rays, _ray_axes' answer): the cameras' cached read-only rays
_RAY_AXES_LOCK = threading.Lock()


def _ray_axes(rays: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(x [W], y [H])`` float32 when every ray of ``rays`` [H, W, 3] is ``(x[col], y[row], 1)`` (a pinhole
    camera's, ``world.geometry.pixel_rays``), else None. Checked once per read-only array (the generator's cached
    camera rays: ``model.geometric._rays``), every call for a writable one."""
    cached = not rays.flags.writeable
    if cached:
        with _RAY_AXES_LOCK:
            got = _RAY_AXES.get(id(rays))
            if got is not None and got[0]() is rays:
                return got[1]
    x, y = rays[0, :, 0].copy(), rays[:, 0, 1].copy()
    ok = bool(np.all(rays[..., 2] == 1) and np.all(rays[..., 0] == x) and np.all(rays[..., 1] == y[:, None]))
    answer = (x, y) if ok else None
    if cached:
        with _RAY_AXES_LOCK:
            for k in [k for k, (ref, _) in _RAY_AXES.items() if ref() is None]:
                del _RAY_AXES[k]
            _RAY_AXES[id(rays)] = (weakref.ref(rays), answer)
    return answer


def _stale_closing_walls(layout: Layout, view: LayoutView) -> list[Plane]:
    """The view's closing (derived) walls ``stale_closing_pixels`` looks beyond; none outdoors or without an
    observed extent."""
    if not layout.indoor or layout.observed_extent_m is None:
        return []
    return [p for p in view.bounds if p.derived and p.axis != 0]


def reference_stale_closing_pixels(layout: Layout, view: LayoutView, depth_m: np.ndarray, valid: np.ndarray,
                                   rays_cam: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """The numpy definition of ``stale_closing_pixels`` (the same float32 expressions, whole frame)."""
    closing = _stale_closing_walls(layout, view)
    if not closing:
        return np.zeros(valid.shape, bool)
    f32 = np.float32
    R, cam = c2w[:3, :3], c2w[:3, 3]
    vecs, cams = (layout.axes @ R).astype(f32), (layout.axes @ cam).astype(f32)
    depth = np.asarray(depth_m, f32)
    coord = [cams[k] + depth * (rays_cam[..., 0] * vecs[k, 0] + rays_cam[..., 1] * vecs[k, 1]
                                + rays_cam[..., 2] * vecs[k, 2]) for k in range(3)]
    margin = f32(layout.config.stale_guess_margin_m)
    ext = layout.observed_extent_m
    beyond = np.zeros(valid.shape, bool)
    for p in closing:
        beyond |= f32(-p.facing) * (coord[p.axis] - f32(ext[p.axis, 1 if p.facing == -1 else 0])) > margin
    out = valid & beyond
    for p in view.bounds:
        out &= f32(p.facing) * (coord[p.axis] - f32(p.offset_m)) > margin
    return out


def _slab_image_box(layout: Layout, o: Opening, rays_cam: np.ndarray, c2w: np.ndarray):
    """``(r0, r1, c0, c1)``: the pixel rows and columns that can see doorway ``o``'s slab (the box of its wall
    +- ``door_slab_m``, the doorway's width and height), or None when none can. The slab's 8 corners are projected;
    an edge that crosses the near plane (the camera walking through the doorway) adds its crossing point, whose
    projection runs off the image in that direction, so the box is the clipped slab's, not the whole frame."""
    H, W = rays_cam.shape[:2]
    w2c_R, cam = c2w[:3, :3].T, c2w[:3, 3]
    # intrinsics from the rays (z = 1): x = (u + 0.5 - cx) / fx
    fx = 1.0 / float(rays_cam[0, 1, 0] - rays_cam[0, 0, 0]) if W > 1 else 1.0
    fy = 1.0 / float(rays_cam[1, 0, 1] - rays_cam[0, 0, 1]) if H > 1 else 1.0
    cx, cy = 0.5 - float(rays_cam[0, 0, 0]) * fx, 0.5 - float(rays_cam[0, 0, 1]) * fy
    a, h, up = layout.axes[o.plane.axis], layout.axes[3 - o.plane.axis], layout.axes[0]
    slab = layout.config.door_slab_m
    bottom = o.bottom_m if math.isfinite(o.bottom_m) else float(cam @ up) - 3.0
    corners = np.array([oa * a + ha * h + ua * up
                        for oa in (o.plane.offset_m - slab, o.plane.offset_m + slab)
                        for ha in (o.centre_m - o.half_width_m, o.centre_m + o.half_width_m)
                        for ua in (bottom, o.top_m)])
    pc = (corners - cam) @ w2c_R.T  # [8, 3] camera frame; corner k's bits: wall side, along, up
    near = 1e-3
    front = pc[:, 2] > near
    if not front.any():
        return None  # wholly behind the camera (a doorway passed long ago): nothing of it is in view
    pts = [pc[front]]
    for k in range(8):
        for bit in (1, 2, 4):
            m = k | bit
            if m != k and front[k] != front[m]:  # the edge k-m crosses the near plane
                t = (near - pc[k, 2]) / (pc[m, 2] - pc[k, 2])
                pts.append((pc[k] + t * (pc[m] - pc[k]))[None])
    p = np.concatenate(pts)
    z = np.maximum(p[:, 2], near)
    u, v = fx * p[:, 0] / z + cx, fy * p[:, 1] / z + cy
    c0, c1 = max(0, int(math.floor(max(u.min(), -1.0))) - 1), min(W, int(math.ceil(min(u.max(), W + 1.0))) + 1)
    r0, r1 = max(0, int(math.floor(max(v.min(), -1.0))) - 1), min(H, int(math.ceil(min(v.max(), H + 1.0))) + 1)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def reference_opening_pixels(layout: Layout, view: LayoutView, depth_m: np.ndarray, valid: np.ndarray,
                             rays_cam: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Slow twin of ``opening_pixels`` in numpy: every rendered pixel of the frame through ``_in_openings``."""
    sel = np.flatnonzero(valid)
    hit = _in_openings(layout, view.openings, rays_cam.reshape(-1, 3)[sel].astype(np.float32),
                       depth_m.reshape(-1)[sel].astype(np.float32), c2w, near_wall=True)
    out = np.zeros(valid.size, bool)
    out[sel[hit]] = True
    return out.reshape(valid.shape)


def cast_layout(
    layout: Layout,
    view: LayoutView,
    rays_cam: np.ndarray,  # [M, 3] float32 pixel rays, camera frame, z = 1
    c2w: np.ndarray,  # [4, 4]
) -> tuple[np.ndarray, np.ndarray]:
    """``(depth [M] float32 z-depth, 0 = no layout surface (sky), index [M] int16 into view.bounds, -1)``: the
    nearest bounding plane each ray reaches (rays are z = 1, so the ray parameter is the z-depth). The ground is
    not capped here (``max_ground_m`` caps what becomes memory, not what is shown)."""
    from spatia.model.fill.geometry.layout_kernels import cast_planes

    cfg = layout.config
    rays = np.ascontiguousarray(rays_cam, np.float32).reshape(-1, 3)
    R, cam = c2w[:3, :3], c2w[:3, 3]
    up = layout.axes[0]
    bounds = list(view.bounds)
    n = len(bounds)
    rate_vec = np.zeros((n, 3), np.float32)
    along_vec = np.zeros((n, 3), np.float32)
    gap = np.zeros(n, np.float32)
    facade = np.zeros(n, bool)
    top_m, span_lo, span_hi, cam_along = (np.zeros(n) for _ in range(4))
    for i, p in enumerate(bounds):
        a = layout.axes[p.axis]
        rate_vec[i] = R.T @ a
        gap[i] = np.float32(p.offset_m - cam @ a)
        if p.kind == WALL and not layout.indoor and math.isfinite(p.top_m):
            # outdoors a facade ends at its observed top: the sky shows above it
            h = layout.axes[3 - p.axis]
            facade[i], top_m[i] = True, p.top_m + cfg.facade_top_margin_m
            span_lo[i], span_hi[i] = p.span_m
            along_vec[i], cam_along[i] = R.T @ h, cam @ h
    # doorways: a ray through its wall's doorway goes on to what lies beyond
    doors = [(i, o) for o in view.openings for i, p in enumerate(bounds) if o.plane == p]
    door_vec = np.array([R.T @ layout.axes[3 - o.plane.axis] for _, o in doors], np.float32).reshape(-1, 3)
    door_cam = np.array([cam @ layout.axes[3 - o.plane.axis] for _, o in doors], np.float32)
    depth, index = cast_planes(
        rays, rate_vec, gap, facade, top_m, span_lo, span_hi, along_vec, cam_along,
        (R.T @ up).astype(np.float32), float(cam @ up),
        np.array([i for i, _ in doors], np.int64), door_vec, door_cam,
        *(np.array([getattr(o, k) for _, o in doors], np.float32) for k in ("centre_m", "half_width_m", "bottom_m",
                                                                           "top_m")),
        np.float32(cam @ up),
    )  # fmt: skip
    return depth.reshape(rays_cam.shape[:-1]), index.reshape(rays_cam.shape[:-1])
