"""Layout and depth of a single photograph: no depth, no intrinsics, only the image.

A photo handed to the world has no depth; today's fallback (``world.depth.PlanarPriorDepth``) assumes a level
camera over a floor facing a fronto-parallel wall, which looks exact and is wrong as soon as the camera is
pitched or the room is seen at an angle. This module measures the layout from the image's own line structure:

1. **Line segments** (OpenCV's LSD, ``cv2.createLineSegmentDetector``), short ones dropped.
2. **Vanishing points** by RANSAC over segment pairs in the image plane (homogeneous, so points at infinity are
   fine), refined by least squares, found one after the other on the segments left over.
3. **Focal length** (``measure_focal``): a sweep over the FOV for the focal whose horizon puts the segments'
   azimuths at two directions 90 degrees apart (else two orthogonal vanishing points ``v1, v2`` with
   ``(v1 - c) . (v2 - c) = -f^2``), refined by a robust Manhattan fit of focal and frame on the segments' image
   angles and kept only when that fit confirms it; otherwise a fit counts only where two finite vanishing points
   pin the focal down. Unmeasured: the intrinsics handed in (``DEFAULT_FOV_DEG`` when the photo came without any)
   and, without intrinsics, the planar prior (step 7).
4. **Up and the Manhattan frame**: up is the vertical vanishing direction; without one, the normal of two
   horizontal ones; with a single horizontal one, the direction orthogonal to it closest to the camera's up
   (zero roll). The frame's horizontal axes come from the strongest horizontal vanishing point.
5. **Horizon, sky and ground**: the horizon is the line ``K^-T up``. Sky is blue-ish, smooth, above the
   horizon and connected to the top border. Floor/ground is classified by colour against the bottom of the photo
   (floor seed) and everything above the horizon (not floor) with smoothed Lab histograms.
6. **Layout and depth** ("pop-up" over a level-rectified image): the image is re-rendered as a level camera
   (a homography), where vertical 3-D lines are image columns. A dynamic programme over columns finds the
   floor/vertical boundary (smooth, with jumps at occlusions); the floor is the plane ``camera_height_m`` below
   the eye (**scale rule**: camera 1.6 m over the floor, the eye height of the procedural scenes and the planar
   prior); everything standing on it continues up from its contact row at that contact's distance. Runs of
   columns whose footprints line up along a Manhattan axis become wall planes and take the plane's exact depth.
   Sky gets ``sky_depth_m``.
7. **Confidence** from the line structure, the floor/not-floor separation, whether up was measured and whether
   the focal length is known (handed in or measured); below ``min_confidence`` the estimator falls back to the
   planar prior and says so in the log. A photo without intrinsics whose focal cannot be measured falls back by
   default: the layout's depths scale with the guessed focal, and the planar prior measured better there; open
   ground (sky or a backdrop seen, no ceiling) keeps a confident layout, since the prior would make it a room.

``PhotoLayoutDepth`` implements ``world.depth.DepthEstimator``; ``estimate_layout`` returns the full
``PhotoLayout`` (up, Manhattan frame, planes, masks) for the fill to extend into unseen space.
All image coordinates are pixel-edge continuous (pixel ``(u, v)`` has its centre at ``u + 0.5, v + 0.5``),
camera frame OpenCV (x right, y down, z forward), depth is z-depth in metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import structlog
from scipy import ndimage

from spatia.world.camera import DEFAULT_FOV_DEG, Intrinsics
from spatia.world.depth import DepthEstimate, LayoutPrior, PlanarPriorConfig, PlanarPriorDepth, default_intrinsics
from spatia.world.errors import InvalidInputError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PhotoLayoutConfig:
    """Knobs of the photo layout estimator (defaults tuned on the procedural scenes, never on the cases)."""

    camera_height_m: float = 1.6  # scale rule: the eye is this far above the floor/ground plane
    default_fov_deg: float = DEFAULT_FOV_DEG  # horizontal FOV when neither intrinsics nor vanishing points give one
    min_fov_deg: float = 30.0  # focal estimates implying a FOV outside [min, max] are rejected
    max_fov_deg: float = 110.0
    max_depth_m: float = 80.0  # ground seen close to the horizon is capped here
    max_depth_no_sky_m: float = 25.0  # the cap when no sky is seen (interiors; ground seen from above)
    min_backdrop_share: float = 0.05  # of the photo's pixels, on columns at that cap: they become a wall there
    min_depth_m: float = 0.3
    sky_depth_m: float = 100.0  # depth given to sky pixels (the memory needs something; the fill owns the sky)
    work_width_px: int = 640  # analysis resolution (the depth is computed at full resolution)
    min_segment_frac: float = 0.025  # segments shorter than this share of the image diagonal are dropped
    vp_inlier_deg: float = 1.5  # a segment supports a vanishing point when its angle to it is below this
    vp_hypotheses: int = 1500  # RANSAC pair samples per vanishing point
    min_wall_height_m: float = 2.0  # a floor contact with sky less than this above it is no wall's foot
    min_wall_length_m: float = 0.3  # a wall's contacts span at least this along it (a tree trunk is no wall)
    # In an interior (a ceiling found), a run of columns at most ``max_leg_width_m`` wide whose floor contact stands
    # ``leg_front_rel`` in front of what is seen on both sides of it is a leg (a chair's, a table's): it stands up to
    # ``max_leg_height_m`` and what is behind continues above it (``_legs_below_walls``). One card per column stood
    # the legs to the ceiling: strips of the wall above them that slid across the room as the camera moved
    # (official case 1; docs/RESULTS.md, "Session 36"). 0: never.
    max_leg_width_m: float = 0.5
    max_leg_height_m: float = 1.2
    leg_front_rel: float = 0.15
    edge_facade_cols_frac: float = 0.03  # outdoors: the image-edge block tested for a facade rising out of the top
    min_confidence: float = 0.35  # below: fall back to the planar prior (logged)
    # Confidence factor when the photo came without intrinsics and its vanishing points do not give the focal
    # either (a level camera facing a wall). The layout's depths then scale with the assumed focal; on the
    # procedural scenes the planar prior measured better in that case (benchmarks/photo_layout.py, level rows),
    # so the default makes it fall back.
    unmeasured_focal_confidence: float = 0.3
    # The same factor for open ground: a photo that sees sky, or a backdrop beyond ``max_depth_no_sky_m``, and no
    # ceiling. The planar prior is a room (a wall 6 m ahead), which the fill then closes into a room of the
    # photo's own ground texture (official case 3 through ``--image``: a meadow walled in by grass), while the
    # layout at the assumed focal keeps the ground open. Halved rather than dropped: an unsure layout still
    # falls back (a level house view whose wall met no floor read as a backdrop 25 m away; docs/RESULTS.md,
    # "Session 35").
    unmeasured_focal_confidence_open: float = 0.5
    # A not-floor patch below the horizon with floor right above it, brighter than that floor and without a
    # vertical edge, is floor in another light (sunlight through a window, washed out to a wall's colour):
    # ``floor_patches_as_floor``. Counted as floor when at least this share of its upper edge meets floor (> 1:
    # never). As an object, its contact row made the whole column a card from the floor to the ceiling
    # (official case 1: a slab across the doorway; docs/RESULTS.md, "Session 36")
    floor_patch_min_share: float = 0.9
    floor_patch_min_lift: float = 10.0  # grey levels the patch is brighter than the floor's median (lit)
    seed: int = 0  # RANSAC sampling seed: same image, same layout
    # measure_focal: when the lines pin the focal down (tuned on procedural renders at 50-90 deg, never the cases)
    focal_inlier_deg: float = 2.0  # a segment belongs to a vanishing point within this image angle
    focal_seed_fovs_deg: tuple = (50.0, 70.0, 90.0)  # fit starts besides the sweep's and the pair's focal
    focal_vp_max_dist: float = 50.0  # a vanishing point farther than this many focal lengths is "at infinity"
    focal_min_family_segments: int = 8
    focal_min_family_share: float = 0.02  # of the inlier segment length
    focal_min_vertical_segments: int = 4
    focal_max_log_sd: float = 0.05

    def __post_init__(self) -> None:
        if self.camera_height_m <= 0 or self.max_depth_m <= self.min_depth_m or self.min_depth_m <= 0:
            raise InvalidInputError("need camera_height_m > 0 and 0 < min_depth_m < max_depth_m")
        if not (0 < self.min_fov_deg < self.default_fov_deg < self.max_fov_deg < 180):
            raise InvalidInputError("need 0 < min_fov_deg < default_fov_deg < max_fov_deg < 180")
        if self.work_width_px < 64:
            raise InvalidInputError(f"work_width_px must be >= 64, got {self.work_width_px}")
        if not (0.0 <= self.min_confidence <= 1.0):
            raise InvalidInputError(f"min_confidence must be in [0, 1], got {self.min_confidence}")


@dataclass(frozen=True)
class VanishingPoint:
    """A vanishing point found from line segments."""

    point_h: np.ndarray  # [3] unit homogeneous image point (pixel coordinates, z = 0: at infinity)
    support_px: float  # summed length of its inlier segments, pixels (of the analysed image)
    num_segments: int
    vertical: bool  # its segments are near-vertical in the image: the gravity direction

    @property
    def finite(self) -> bool:
        return abs(float(self.point_h[2])) > 1e-9

    def point_px(self) -> np.ndarray | None:
        """``[2]`` pixel coordinates, or None at infinity."""
        return self.point_h[:2] / self.point_h[2] if self.finite else None


@dataclass(frozen=True)
class LayoutPlane:
    """A plane of the layout in the photo's camera frame: points ``X`` with ``normal_cam . X = offset_m``."""

    kind: str  # "floor", "ceiling" or "wall"
    normal_cam: np.ndarray  # [3] unit, camera frame; points away from the camera (offset_m > 0)
    offset_m: float  # distance from the camera centre to the plane, metres
    pixels: int  # how many pixels of the photo it explains
    # walls: no sky above most of its columns, so it rises out of the photo (its height is unknown)
    open_top: bool = False


@dataclass(frozen=True)
class PhotoLayout:
    """What the image says about its scene; everything in the photo's camera frame (OpenCV axes)."""

    intrinsics: Intrinsics  # for the full-resolution photo: the estimated focal, or the one handed in
    focal_source: str  # "vanishing_points", "given" or "default"
    up_cam: np.ndarray  # [3] unit gravity-up direction, camera frame
    up_source: str  # "vertical_vp", "horizontal_vps", "horizontal_vp_zero_roll" or "assumed_level"
    manhattan_cam: np.ndarray  # [3, 3] columns: horizontal axis a, up, horizontal axis b (right-handed), camera frame
    horizon_line: np.ndarray  # [3] homogeneous line (a, b, c): a u + b v + c = 0 in pixels; sky side has < 0
    vanishing_points: tuple[VanishingPoint, ...]  # at the analysed resolution
    segments_px: np.ndarray  # [N, 4] x1 y1 x2 y2 of the analysed image
    analysis_scale: float  # analysed image size / photo size
    planes: tuple[LayoutPlane, ...]  # floor first, then walls, then the ceiling when one was measured
    floor_mask: np.ndarray  # [H, W] bool, photo resolution
    sky_mask: np.ndarray  # [H, W] bool
    vertical_mask: np.ndarray  # [H, W] bool: walls and everything standing on the floor
    ceiling_mask: np.ndarray  # [H, W] bool (empty when no ceiling was measured)
    depth_m: np.ndarray  # [H, W] float32 z-depth in metres (sky = sky_depth_m)
    camera_height_m: float
    confidence: float  # 0..1
    confidence_terms: dict = field(default_factory=dict)

    @property
    def pitch_deg(self) -> float:
        """Camera pitch: positive when it looks down (up has a negative camera-z component then)."""
        return float(math.degrees(math.asin(np.clip(-self.up_cam[2], -1.0, 1.0))))

    @property
    def roll_deg(self) -> float:
        return float(math.degrees(math.atan2(self.up_cam[0], -self.up_cam[1])))


# ---------------------------------------------------------------------------------------------------------------
# Line segments and vanishing points
# ---------------------------------------------------------------------------------------------------------------


def detect_segments(gray: np.ndarray, min_length_px: float) -> np.ndarray:
    """``[N, 4]`` float64 segments (x1, y1, x2, y2), pixel-edge coordinates, at least ``min_length_px`` long."""
    lsd = cv2.createLineSegmentDetector(cv2.LSD_REFINE_STD)
    lines = lsd.detect(gray)[0]
    if lines is None:
        return np.zeros((0, 4))
    seg = lines.reshape(-1, 4).astype(np.float64) + 0.5  # LSD works in pixel-centre coordinates
    length = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])
    return seg[length >= min_length_px]


def _segment_lines(seg: np.ndarray, centre: np.ndarray, scale: float) -> np.ndarray:
    """``[N, 3]`` homogeneous lines of the segments in normalised coordinates ``(p - centre) / scale``, (a, b) unit."""
    p1 = np.column_stack([(seg[:, :2] - centre) / scale, np.ones(len(seg))])
    p2 = np.column_stack([(seg[:, 2:] - centre) / scale, np.ones(len(seg))])
    lines = np.cross(p1, p2)
    return lines / np.maximum(np.linalg.norm(lines[:, :2], axis=1, keepdims=True), 1e-12)


def _vp_angles(vp: np.ndarray, seg_n: np.ndarray) -> np.ndarray:
    """Angles (radians) ``[..., N]`` between each segment and the direction from its midpoint to ``vp`` ``[..., 3]``.

    ``seg_n`` ``[N, 4]`` is in normalised coordinates; ``vp`` unit homogeneous (z = 0 at infinity).
    """
    mid = 0.5 * (seg_n[:, :2] + seg_n[:, 2:])  # [N, 2]
    d = seg_n[:, 2:] - seg_n[:, :2]
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    vp = np.asarray(vp)[..., None, :]  # [..., 1, 3]
    # direction midpoint -> vp, homogeneous-safe: vp_xy - vp_z * mid
    to = vp[..., :2] - vp[..., 2:3] * mid  # [..., N, 2]
    norm = np.linalg.norm(to, axis=-1)
    cos = np.abs((to * d).sum(-1)) / np.maximum(norm, 1e-12)
    return np.arccos(np.clip(cos, 0.0, 1.0))


def _refine_vp(lines: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The unit point minimising ``sum w (l . v)^2``: the smallest eigenvector of the weighted scatter."""
    m = (lines * weights[:, None]).T @ lines
    _, vecs = np.linalg.eigh(m)
    v = vecs[:, 0]
    return v if v[2] >= 0 else -v


def find_vanishing_points(
    seg: np.ndarray,  # [N, 4] pixels
    width: int,
    height: int,
    config: PhotoLayoutConfig,
    max_points: int = 3,
) -> tuple[list[VanishingPoint], np.ndarray]:
    """Up to ``max_points`` vanishing points, strongest first, and ``[N]`` int labels (-1 = none) of the segments.

    Each point: RANSAC over pairs of the remaining segments (sampled by length), scored by the summed length of
    segments pointing at it within ``vp_inlier_deg``, refined by weighted least squares on its inliers.
    """
    labels = np.full(len(seg), -1, np.int64)
    if len(seg) < 4:
        return [], labels
    centre = np.array([width / 2.0, height / 2.0])
    scale = max(width, height) / 2.0
    seg_n = np.column_stack([(seg[:, :2] - centre) / scale, (seg[:, 2:] - centre) / scale])
    lines = _segment_lines(seg, centre, scale)
    length = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])
    thr = math.radians(config.vp_inlier_deg)
    rng = np.random.default_rng(config.seed)
    found: list[VanishingPoint] = []
    for k in range(max_points):
        free = np.flatnonzero(labels < 0)
        if len(free) < 4:
            break
        p = length[free] / length[free].sum()
        a = rng.choice(free, size=config.vp_hypotheses, p=p)
        b = rng.choice(free, size=config.vp_hypotheses, p=p)
        keep = a != b
        hyp = np.cross(lines[a[keep]], lines[b[keep]])
        norm = np.linalg.norm(hyp, axis=1)
        hyp = hyp[norm > 1e-9] / norm[norm > 1e-9, None]
        if not len(hyp):
            break
        ang = _vp_angles(hyp, seg_n[free])  # [Hyp, F]
        score = ((ang < thr) * length[free]).sum(axis=1)
        best = hyp[int(np.argmax(score))]
        for _ in range(3):  # refine on the inliers, re-select
            inl = free[_vp_angles(best, seg_n[free]) < thr]
            if len(inl) < 2:
                break
            best = _refine_vp(lines[inl], length[inl])
        inl = free[_vp_angles(best, seg_n[free]) < thr]
        if len(inl) < 3:
            break
        labels[inl] = k
        # back to pixel coordinates: p_px = scale * p_n + centre
        ph = np.array([scale * best[0] + centre[0] * best[2], scale * best[1] + centre[1] * best[2], best[2]])
        ph /= np.linalg.norm(ph)
        d = seg[inl, 2:] - seg[inl, :2]
        tilt = np.degrees(np.arctan2(np.abs(d[:, 0]), np.abs(d[:, 1])))  # 0 = vertical in the image
        vertical = float(np.average(tilt, weights=length[inl])) < 25.0
        found.append(VanishingPoint(ph, float(length[inl].sum()), int(len(inl)), vertical))
    return found, labels


def focal_from_vps(vps: list[VanishingPoint], width: int, height: int, config: PhotoLayoutConfig) -> float | None:
    """Focal length (pixels) from the best-supported finite pair of orthogonal-looking vanishing points, or None.

    For orthogonal directions and principal point ``c``: ``(v1 - c) . (v2 - c) = -f^2``. A pair qualifies when the
    product is negative and the focal gives a horizontal FOV in ``[min_fov_deg, max_fov_deg]``. Two horizontal
    points of the same wall family would give a positive or out-of-range product, so they drop out.
    """
    c = np.array([width / 2.0, height / 2.0])
    f_lo = 0.5 * width / math.tan(math.radians(config.max_fov_deg) / 2)
    f_hi = 0.5 * width / math.tan(math.radians(config.min_fov_deg) / 2)
    best, best_support = None, 0.0
    for i in range(len(vps)):
        for j in range(i + 1, len(vps)):
            pi, pj = vps[i].point_px(), vps[j].point_px()
            if pi is None or pj is None:
                continue
            # a point farther than ~40 image widths is numerically at infinity: its product says nothing
            if max(np.linalg.norm(pi - c), np.linalg.norm(pj - c)) > 40 * width:
                continue
            prod = -float((pi - c) @ (pj - c))
            if prod <= 0:
                continue
            f = math.sqrt(prod)
            support = min(vps[i].support_px, vps[j].support_px)
            if f_lo <= f <= f_hi and support > best_support:
                best, best_support = f, support
    return best


def focal_from_horizon_sweep(
    seg: np.ndarray,  # [N, 4] pixels
    labels: np.ndarray,  # [N] vanishing point index per segment (-1 none)
    vps: list[VanishingPoint],
    width: int,
    height: int,
    config: PhotoLayoutConfig,
) -> float | None:
    """Focal length (pixels) that makes the non-vertical segments meet the horizon at two points 90 degrees apart.

    For a candidate focal ``f`` the vertical vanishing point gives up, hence the horizon; every non-vertical
    segment's line meets it at an azimuth (a horizontal direction, modulo 180 degrees). Manhattan scenes put
    that azimuth's mass at two directions 90 degrees apart only for the true ``f`` (a pitched camera moves the
    horizon with ``f``; a level one moves the azimuths). Score = the best such pair's geometric-mean share;
    the focal is accepted only if its score stands clearly above the median over the sweep.
    """
    vertical = [i for i, v in enumerate(vps) if v.vertical]
    if not vertical or len(seg) < 8:
        return None
    iv = max(vertical, key=lambda i: vps[i].support_px)
    use = labels != iv
    if use.sum() < 6:
        return None
    s = seg[use]
    wgt = np.hypot(s[:, 2] - s[:, 0], s[:, 3] - s[:, 1])
    p1 = np.column_stack([s[:, :2], np.ones(len(s))])
    p2 = np.column_stack([s[:, 2:], np.ones(len(s))])
    fovs = np.arange(config.min_fov_deg, config.max_fov_deg + 0.5, 1.0)
    scores = np.zeros(len(fovs))
    for k, fov in enumerate(fovs):
        f = 0.5 * width / math.tan(math.radians(fov) / 2)
        K_inv = np.linalg.inv(np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1.0]]))
        up = K_inv @ vps[iv].point_h
        up /= np.linalg.norm(up)
        up = up if up[1] <= 0 else -up
        try:
            R = level_rotation(up)
        except InvalidInputError:
            continue
        r1, r2 = (p1 @ K_inv.T) @ R.T, (p2 @ K_inv.T) @ R.T  # level-frame rays
        ln = np.cross(r1, r2)  # the plane through the camera and the segment; its horizontal direction:
        d = np.column_stack([ln[:, 2], -ln[:, 0]])  # direction (x, z) with ln . (x, 0, z) = 0
        az = np.degrees(np.arctan2(d[:, 0], d[:, 1])) % 180.0
        hist = np.bincount(np.minimum((az * 2).astype(int), 359), weights=wgt, minlength=360)  # 0.5 degree bins
        hist = ndimage.gaussian_filter1d(hist, 1.5, mode="wrap")
        # both directions must be there: the geometric mean, so that one strong family (often the one parallel
        # to the image rows, whose azimuth does not depend on f) cannot carry the score alone
        scores[k] = float(np.max(np.sqrt(hist * np.roll(hist, -180)))) / wgt.sum()
    best = int(np.argmax(scores))
    if scores[best] < 1.3 * float(np.median(scores)):
        return None
    if best in (0, len(fovs) - 1):  # the optimum on the edge of the range is not a measurement
        return None
    return 0.5 * width / math.tan(math.radians(float(fovs[best])) / 2)


@dataclass(frozen=True)
class FocalFit:
    """A Manhattan frame and focal length fitted to the segments (analysed-image pixels)."""

    focal_px: float
    frame_cam: np.ndarray  # [3, 3] columns: horizontal axis a, up, horizontal axis b; camera frame
    score: float  # summed length of the segments within ``focal_inlier_deg`` of their vanishing point (soft)
    log_focal_sd: float  # standard deviation of log(focal) from the fit's Jacobian
    families: tuple  # per axis (share of inlier length, segments, vanishing point distance from centre / focal)

    def confirms(self, width: int, config: "PhotoLayoutConfig") -> bool:
        """A focal the segments constrain (sd(log f) < ``focal_max_log_sd``) inside the FOV range (not on its edge)."""
        fov = math.degrees(2.0 * math.atan(0.5 * width / self.focal_px))
        return (self.log_focal_sd < config.focal_max_log_sd
                and config.min_fov_deg + 0.5 < fov < config.max_fov_deg - 0.5)

    def observable(self, config: "PhotoLayoutConfig") -> bool:
        """Whether the lines pin the focal down (see ``measure_focal``)."""
        finite = sum(1 for share, n, dist in self.families
                     if dist < config.focal_vp_max_dist and n >= config.focal_min_family_segments
                     and share >= config.focal_min_family_share)
        return (finite >= 2 and self.families[1][1] >= config.focal_min_vertical_segments
                and self.log_focal_sd < config.focal_max_log_sd)


def _segment_vp_sines(seg: np.ndarray, vps_h: np.ndarray) -> np.ndarray:
    """``[V, N]`` signed sine of the image angle between each segment ``[N, 4]`` and the direction from its midpoint
    to each homogeneous vanishing point ``[V, 3]`` (pixels; z = 0 at infinity)."""
    mid = 0.5 * (seg[:, :2] + seg[:, 2:])
    d = seg[:, 2:] - seg[:, :2]
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    to = vps_h[:, None, :2] - vps_h[:, None, 2:3] * mid[None]
    return (d[None, :, 0] * to[..., 1] - d[None, :, 1] * to[..., 0]) / np.maximum(np.linalg.norm(to, axis=-1), 1e-12)


def _rotvec_matrix(w: np.ndarray) -> np.ndarray:
    """Rodrigues: the rotation by ``|w|`` radians about ``w``."""
    th = float(np.linalg.norm(w))
    if th < 1e-12:
        return np.eye(3)
    k = w / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(th) * Kx + (1 - math.cos(th)) * Kx @ Kx


def _manhattan_vps(log_f: float, w: np.ndarray, frame0: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[3, 3]`` rows: unit homogeneous vanishing points (pixels) of the frame ``R(w) frame0`` at focal ``e^log_f``."""
    f = math.exp(log_f)
    K = np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1.0]])
    v = (K @ (_rotvec_matrix(w) @ frame0)).T
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fit_manhattan_focal(
    seg: np.ndarray,  # [N, 4] pixels
    width: int,
    height: int,
    f0: float,  # initial focal, pixels
    frame0: np.ndarray,  # [3, 3] initial Manhattan frame (columns a, up, b), camera frame
    config: "PhotoLayoutConfig",
    iterations: int = 3,
) -> FocalFit | None:
    """Focal and frame minimising the image-space angle between each segment and its family's vanishing point.

    Robust least squares (``scipy.optimize.least_squares``, soft-L1) over (log f, a rotation of ``frame0``), each
    segment weighted by the square root of its length; segments are (re)assigned to the nearest of the three
    vanishing points, inliers within ``focal_inlier_deg`` only, ``iterations`` times. Image-space angles are the
    segments' own noise model: a histogram of azimuths (``focal_from_horizon_sweep``) leans towards narrow fields
    of view, where every interpretation plane contains nearly the same optical axis.
    """
    from scipy.optimize import least_squares

    L = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])
    f_lo = 0.5 * width / math.tan(math.radians(config.max_fov_deg) / 2)
    f_hi = 0.5 * width / math.tan(math.radians(config.min_fov_deg) / 2)
    lb = np.array([math.log(f_lo), -0.5, -0.5, -0.5])
    ub = np.array([math.log(f_hi), 0.5, 0.5, 0.5])
    x = np.array([float(np.clip(math.log(f0), lb[0] + 1e-6, ub[0] - 1e-6)), 0.0, 0.0, 0.0])
    thr = math.sin(math.radians(config.focal_inlier_deg))
    sol = None
    for _ in range(iterations):
        sines = _segment_vp_sines(seg, _manhattan_vps(x[0], x[1:], frame0, width, height))
        fam = np.argmin(np.abs(sines), axis=0)
        inl = np.abs(sines[fam, np.arange(len(seg))]) < thr
        if inl.sum() < 6:
            return None
        sq, fam_i, seg_i = np.sqrt(L[inl]), fam[inl], seg[inl]
        cols = np.arange(len(seg_i))

        def residuals(p, seg_i=seg_i, fam_i=fam_i, sq=sq, cols=cols):
            return _segment_vp_sines(seg_i, _manhattan_vps(p[0], p[1:], frame0, width, height))[fam_i, cols] * sq

        sol = least_squares(residuals, x, bounds=(lb, ub), loss="soft_l1", f_scale=3.0 * math.sin(math.radians(1.0)))
        x = sol.x
    vps = _manhattan_vps(x[0], x[1:], frame0, width, height)
    sines = np.abs(_segment_vp_sines(seg, vps))
    amin, fam = sines.min(axis=0), np.argmin(sines, axis=0)
    inl = amin < thr
    score = float((L * np.maximum(0.0, 1.0 - (amin / thr) ** 2)).sum())
    dof = max(1, len(sol.fun) - 4)
    try:
        cov = np.linalg.inv(sol.jac.T @ sol.jac) * float((sol.fun ** 2).sum() / dof)
        sd = math.sqrt(max(float(cov[0, 0]), 0.0))
    except np.linalg.LinAlgError:
        sd = math.inf
    f = math.exp(x[0])
    total = max(float(L[inl].sum()), 1e-9)
    families = []
    for k in range(3):
        sel = inl & (fam == k)
        dist = math.inf if abs(vps[k, 2]) < 1e-12 else float(
            np.linalg.norm(vps[k, :2] / vps[k, 2] - [width / 2.0, height / 2.0]) / f)
        families.append((float(L[sel].sum()) / total, int(sel.sum()), dist))
    return FocalFit(f, _rotvec_matrix(x[1:]) @ frame0, score, sd, tuple(families))


def measure_focal(
    seg: np.ndarray,  # [N, 4] pixels of the analysed image
    labels: np.ndarray,  # [N] vanishing point index per segment (-1 none)
    vps: list[VanishingPoint],
    width: int,
    height: int,
    config: PhotoLayoutConfig,
) -> float | None:
    """Focal length (pixels of the analysed image) from the line structure, or None when it cannot be measured.

    1. The horizon sweep's focal (else the orthogonal vanishing-point pair's) is refined by ``fit_manhattan_focal``
       (both strongest horizontal vanishing points tried as the frame's start) and kept when the fit **confirms**
       it: sd(log f) < ``focal_max_log_sd`` and not on the FOV range's edge. The sweep alone, 1 degree steps on
       azimuth histograms, returned whatever noise peaked where the lines do not fix the focal (house at 75 deg:
       44-105 deg; case 1 at 62.5: 40; case 3 at 52.4: 101), and the fit's uncertainty or its run onto the range's
       edge flags those.
    2. Otherwise fits from ``focal_seed_fovs_deg`` count only when **observable**: two of the three families have a
       finite vanishing point (within ``focal_vp_max_dist`` focal lengths of the centre) carried by at least
       ``focal_min_family_segments`` segments and ``focal_min_family_share`` of the inlier length, the vertical
       family has ``focal_min_vertical_segments``, and sd(log f) < ``focal_max_log_sd``. A level camera facing a
       wall (vertical and lateral points at infinity) has none; a pitched one facing a wall whose receding lines
       are too short to detect has one (the vertical point).

    The observability test alone (step 2 for every photo) was tried: fewer bad focals, but a photo without a
    measured focal gets the planar prior, and the photo's depth AbsRel went 0.28 -> 0.40 on the procedural set
    (``benchmarks/photo_layout.py``, docs/RESULTS.md photo3): a focal consistent with the lines, even a few
    percent off, keeps the layout consistent with its own up vector.
    """
    f_sweep = focal_from_horizon_sweep(seg, labels, vps, width, height, config)
    if f_sweep is None:
        f_sweep = focal_from_vps(vps, width, height, config)
    if f_sweep is not None:
        # refine the sweep's focal (1 degree steps, azimuth histograms) on the segments' own angles; keep it
        # when the fit confirms it: a focal the segments constrain (sd) and not pushed onto the FOV range's edge
        best = _best_fit(seg, vps, width, height, [f_sweep], config)
        if best is not None and best.confirms(width, config):
            return best.focal_px
    # nothing peaked: a focal from the fit's own starts, only where the lines pin it down
    seeds = [0.5 * width / math.tan(math.radians(a) / 2) for a in config.focal_seed_fovs_deg]
    best = _best_fit(seg, vps, width, height, seeds, config)
    if best is None or not best.observable(config):
        return None
    return best.focal_px


def _best_fit(seg: np.ndarray, vps: list[VanishingPoint], width: int, height: int, starts: list[float],
              config: PhotoLayoutConfig) -> FocalFit | None:
    """The best-scoring ``fit_manhattan_focal`` over focal starts x the two strongest horizontal vanishing points
    (within 2% of the best score, the fit with the smaller focal uncertainty)."""
    horizontal = sorted([v for v in vps if not v.vertical], key=lambda v: -v.support_px)[:2] or [None]
    best: FocalFit | None = None
    for f0 in starts:
        K = np.array([[f0, 0, width / 2.0], [0, f0, height / 2.0], [0, 0, 1.0]])
        up, _, _ = estimate_up(vps, K)
        for h_vp in horizontal:
            fit = fit_manhattan_focal(seg, width, height, f0, manhattan_frame(up, h_vp, K), config)
            if fit is None:
                continue
            if (best is None or fit.score > 1.02 * best.score
                    or (fit.score > 0.98 * best.score and fit.log_focal_sd < best.log_focal_sd)):
                best = fit
    return best


def analyse_lines(rgb: np.ndarray, config: PhotoLayoutConfig = PhotoLayoutConfig()):
    """``(small [h, w, 3], scale, segments [N, 4], vanishing points, labels [N])`` of a photo at the analysis size."""
    rgb = _check_rgb(rgb)
    H, W = rgb.shape[:2]
    s = min(1.0, config.work_width_px / W)
    w, h = max(32, int(round(W * s))), max(32, int(round(H * s)))
    small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA) if (w, h) != (W, H) else rgb
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    seg = detect_segments(gray, config.min_segment_frac * math.hypot(w, h))
    vps, labels = find_vanishing_points(seg, w, h, config, max_points=4)
    return small, s, seg, vps, labels


def estimate_focal_px(rgb: np.ndarray, config: PhotoLayoutConfig = PhotoLayoutConfig()) -> float | None:
    """Focal length in pixels of the full-resolution photo (square pixels, centred principal point), or None."""
    small, s, seg, vps, labels = analyse_lines(rgb, config)
    f = measure_focal(seg, labels, vps, small.shape[1], small.shape[0], config)
    return None if f is None else f / s


def _direction(vp: VanishingPoint, K_inv: np.ndarray) -> np.ndarray:
    d = K_inv @ vp.point_h
    return d / np.linalg.norm(d)


def estimate_up(vps: list[VanishingPoint], K: np.ndarray) -> tuple[np.ndarray, str, VanishingPoint | None]:
    """Gravity up ``[3]`` in the camera frame, how it was found, and the strongest horizontal vanishing point."""
    K_inv = np.linalg.inv(K)
    cam_up = np.array([0.0, -1.0, 0.0])
    vertical = [v for v in vps if v.vertical]
    horizontal = [v for v in vps if not v.vertical]
    h_best = max(horizontal, key=lambda v: v.support_px) if horizontal else None
    if vertical:
        up = _direction(max(vertical, key=lambda v: v.support_px), K_inv)
        up = up if up @ cam_up >= 0 else -up
        if up @ cam_up > math.cos(math.radians(45)):  # a pitch or roll past 45 degrees is not believed
            return up, "vertical_vp", h_best
    if len(horizontal) >= 2:
        hs = sorted(horizontal, key=lambda v: -v.support_px)
        d1, d2 = _direction(hs[0], K_inv), _direction(hs[1], K_inv)
        if abs(d1 @ d2) < math.cos(math.radians(60)):  # the two must be far apart to span the ground plane
            up = np.cross(d1, d2)
            up /= np.linalg.norm(up)
            up = up if up @ cam_up >= 0 else -up
            if up @ cam_up > math.cos(math.radians(45)):
                return up, "horizontal_vps", h_best
    if h_best is not None:
        d = _direction(h_best, K_inv)
        up = cam_up - (cam_up @ d) * d
        if np.linalg.norm(up) > 0.5:
            up /= np.linalg.norm(up)
            if up @ cam_up > math.cos(math.radians(45)):
                return up, "horizontal_vp_zero_roll", h_best
    return cam_up.copy(), "assumed_level", h_best


def manhattan_frame(up: np.ndarray, h_vp: VanishingPoint | None, K: np.ndarray) -> np.ndarray:
    """``[3, 3]`` columns (a, up, b): a from the horizontal vanishing point (or camera x), all orthonormal."""
    a = _direction(h_vp, np.linalg.inv(K)) if h_vp is not None else np.array([1.0, 0.0, 0.0])
    a = a - (a @ up) * up
    if np.linalg.norm(a) < 1e-6:
        a = np.array([1.0, 0.0, 0.0]) - up[0] * up
    a /= np.linalg.norm(a)
    b = np.cross(a, up)
    return np.column_stack([a, up, b])


# ---------------------------------------------------------------------------------------------------------------
# Sky and floor
# ---------------------------------------------------------------------------------------------------------------


def _above_horizon(h: int, w: int, horizon: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixel centres strictly on the sky side of the horizon line."""
    u = np.arange(w) + 0.5
    v = np.arange(h)[:, None] + 0.5
    return horizon[0] * u[None, :] + horizon[1] * v + horizon[2] < 0


def sky_mask(rgb: np.ndarray, above: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool sky: blue-ish or bright-neutral, smooth, above the horizon, connected to the top border."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    L, a, b = lab[..., 0] * (100 / 255), lab[..., 1] - 128, lab[..., 2] - 128
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    grad = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3))
    grad = cv2.blur(grad, (5, 5))
    blue = (b < -8) & (b < a - 4) & (L > 35)
    cand = blue & (grad < 60) & above
    cand = ndimage.binary_closing(cand, iterations=2) & above
    lab_cc, n = ndimage.label(cand)
    if n == 0:
        return np.zeros_like(cand)
    top = lab_cc[:4]  # closing erodes the border rows (outside counts as background): look a few rows down
    top_ids = np.unique(top[top > 0])
    sky = np.isin(lab_cc, top_ids)
    if sky.sum() < 0.005 * sky.size:  # a few blue pixels at the top are not a sky
        return np.zeros_like(sky)
    # clouds: holes inside the sky that are bright and smooth
    filled = ndimage.binary_fill_holes(sky) & above
    return filled


def colour_probability(rgb: np.ndarray, seed: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, float]:
    """``[H, W]`` float32 probability that a pixel belongs with ``seed`` rather than ``other`` (``[H, W]`` bool), by
    colour, and a separability score (mean probability on the seed minus on the others; 0 when either is tiny).

    Smoothed 3-D Lab histograms give the likelihoods (multi-modal classes such as chequered tiles stay one class).
    """
    h, w = rgb.shape[:2]
    if seed.sum() < 0.01 * h * w or other.sum() < 0.01 * h * w:
        return np.full((h, w), 0.5, np.float32), 0.0
    lab = cv2.cvtColor(cv2.GaussianBlur(rgb, (5, 5), 0), cv2.COLOR_RGB2LAB)
    bins = (12, 24, 24)
    qL = np.minimum(lab[..., 0].astype(np.int32) * bins[0] // 256, bins[0] - 1)
    qa = np.clip((lab[..., 1].astype(np.int32) - 64) * bins[1] // 128, 0, bins[1] - 1)
    qb = np.clip((lab[..., 2].astype(np.int32) - 64) * bins[2] // 128, 0, bins[2] - 1)
    idx = (qL * bins[1] + qa) * bins[2] + qb
    nb = bins[0] * bins[1] * bins[2]
    hf = np.bincount(idx[seed], minlength=nb).reshape(bins).astype(np.float64)
    ho = np.bincount(idx[other], minlength=nb).reshape(bins).astype(np.float64)
    hf = ndimage.gaussian_filter(hf / hf.sum(), 0.8)
    ho = ndimage.gaussian_filter(ho / ho.sum(), 0.8)
    # A colour seen in neither sample (furniture below the horizon) must not count as the seed's class: a uniform
    # pseudo-count leans it slightly towards "other" (p = 0.4) instead of the ratio of two tiny tails.
    u = 0.1 / nb
    p_bins = ((hf + u) / (hf + ho + 2.5 * u)).reshape(-1)
    p = cv2.blur(p_bins[idx].astype(np.float32), (7, 7))
    sep = float(p[seed].mean() - p[other].mean())
    return p, max(0.0, sep)


def floor_probability(rgb: np.ndarray, above: np.ndarray, sky: np.ndarray) -> tuple[np.ndarray, float]:
    """``[H, W]`` float32 probability of floor/ground by colour, and a separability score in [0, 1].

    Floor samples: the bottom 12% of rows on the ground side of the horizon. Not-floor samples: everything on the
    sky side (walls, facades, sky).
    """
    rows = np.arange(rgb.shape[0])[:, None]
    return colour_probability(rgb, (rows >= int(0.88 * rgb.shape[0])) & ~above & ~sky, above | sky)


def floor_patches_as_floor(p_floor: np.ndarray, not_ground: np.ndarray, vertical: np.ndarray, luma: np.ndarray,
                           min_share: float, min_lift: float) -> np.ndarray:
    """``p_floor`` [H, W] float32 with the lit patches of the floor counted as floor (p mirrored to 1 - p).

    A patch is a connected not-floor region on the ground side (p < 0.5, ``not_ground`` [H, W] bool False; holes
    filled). It is a lit part of the floor when (1) at least ``min_share`` of its upper edge pixels (whose upper
    neighbour is outside it) have above them the floor the photo stands on (floor connected to its bottom rows,
    where the floor's colours were sampled; a facade whose plaster reads as paving is not), (2) it holds no
    vertical 3-D edge (``vertical`` [H, W] bool: a low object's side, a bench's leg, a basin's rim stand up) and
    (3) its mean ``luma`` ([H, W] float32) is at least ``min_lift`` levels above that floor's median (a window, a
    plinth or a shadow is darker or alike; sunlight washes a floor out to a wall's colour)."""
    patch = ndimage.binary_fill_holes((p_floor < 0.5) & ~not_ground)
    labels, n = ndimage.label(patch)
    if n == 0:
        return p_floor
    floor_labels, _ = ndimage.label((p_floor >= 0.5) & ~not_ground)
    ground = np.isin(floor_labels, np.unique(floor_labels[int(0.88 * len(p_floor)):])) & (floor_labels > 0)
    if not ground.any():
        return p_floor
    edge = patch.copy()
    edge[1:] &= ~patch[:-1]  # the pixel above is outside the patch (row 0: nothing above, never floor)
    floor_above = np.zeros_like(patch)
    floor_above[1:] = edge[1:] & ground[:-1]
    edges = np.bincount(labels[edge], minlength=n + 1)
    met = np.bincount(labels[floor_above], minlength=n + 1)
    inside = np.bincount(labels.ravel(), weights=luma.ravel(), minlength=n + 1)
    lift = inside / np.maximum(np.bincount(labels.ravel(), minlength=n + 1), 1) - float(np.median(luma[ground]))
    floor_like = ((met >= min_share * np.maximum(edges, 1)) & (lift >= min_lift)
                  & (np.bincount(labels[vertical], minlength=n + 1) == 0))
    floor_like[0] = False
    flip = floor_like[labels] & (p_floor < 0.5)
    if not flip.any():
        return p_floor
    return np.where(flip, 1.0 - p_floor, p_floor).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Level rectification and the floor boundary
# ---------------------------------------------------------------------------------------------------------------


def level_rotation(up: np.ndarray) -> np.ndarray:
    """``R`` 3x3 mapping camera-frame vectors to a level frame (y = -up, z = camera z made horizontal)."""
    y = -up / np.linalg.norm(up)
    z = np.array([0.0, 0.0, 1.0]) - y[2] * y
    if np.linalg.norm(z) < 1e-6:
        raise InvalidInputError("camera looks straight up or down; no level frame")
    z /= np.linalg.norm(z)
    x = np.cross(y, z)
    return np.stack([x, y, z])  # rows: level axes in camera coordinates


def boundary_dp(
    score: np.ndarray,  # [R, C] score of putting the boundary at row r of column c (higher = better)
    smooth: float,  # cost per row of change between neighbouring columns
    jump: float,  # cap on that cost (occlusion edges)
) -> np.ndarray:
    """``[C]`` int rows maximising ``sum score - min(smooth |b_c - b_{c-1}|, jump)`` (Viterbi, exact)."""
    R, C = score.shape
    r = np.arange(R)
    trans = np.minimum(smooth * np.abs(r[:, None] - r[None, :]), jump)  # [R_prev, R]
    acc = score[:, 0].copy()
    back = np.zeros((R, C), np.int32)
    for c in range(1, C):
        tot = acc[:, None] - trans  # [R_prev, R]
        back[:, c] = np.argmax(tot, axis=0)
        acc = tot[back[:, c], r] + score[:, c]
    out = np.zeros(C, np.int64)
    out[-1] = int(np.argmax(acc))
    for c in range(C - 1, 0, -1):
        out[c - 1] = back[out[c], c]
    return out


def boundary_dp_reference(score: np.ndarray, smooth: float, jump: float) -> np.ndarray:
    """Brute force over every boundary (tiny inputs only): the reference ``boundary_dp`` is tested against."""
    import itertools

    R, C = score.shape
    best, best_val = None, -np.inf
    for rows in itertools.product(range(R), repeat=C):
        val = sum(score[rows[c], c] for c in range(C))
        val -= sum(min(smooth * abs(rows[c] - rows[c - 1]), jump) for c in range(1, C))
        if val > best_val + 1e-12:
            best, best_val = rows, val
    return np.array(best, np.int64)


def _vertical_spans(vert_segs: np.ndarray, Hom: np.ndarray, Wr: int, Hr: int) -> np.ndarray:
    """``[Hr, Wr]`` float32 1 where a vertical surface spans between two vertical edges (rectified image).

    Two vertical 3-D edges whose heights overlap bound a vertical surface between them (a bookcase's sides, a
    wall's corners, a table's legs): over their common rows the columns between them are not floor. Pairs
    farther apart than a third of the canvas, or overlapping by under half the shorter edge, are not paired.
    """
    span = np.zeros((Hr, Wr), np.float32)
    if len(vert_segs) < 2:
        return span
    p = np.concatenate([vert_segs[:, :2], vert_segs[:, 2:]])
    q = np.column_stack([p, np.ones(len(p))]) @ Hom.T
    q = q[:, :2] / q[:, 2:3]
    n = len(vert_segs)
    x = 0.5 * (q[:n, 0] + q[n:, 0])
    top, bot = np.minimum(q[:n, 1], q[n:, 1]), np.maximum(q[:n, 1], q[n:, 1])
    length = bot - top
    for i in range(n):
        for j in range(i + 1, n):
            if abs(x[i] - x[j]) > Wr / 3 or abs(x[i] - x[j]) < 3:
                continue
            t, b = max(top[i], top[j]), min(bot[i], bot[j])
            if b - t < 0.5 * min(length[i], length[j]):
                continue
            x0, x1 = int(max(0, min(x[i], x[j]))), int(min(Wr, max(x[i], x[j])))
            span[int(max(0, t)):int(min(Hr, b)), x0:x1] = 1.0
    return span


TANGENT_COLS = 3  # _fit_walls: half-window (analysis columns) of a footprint's local tangent


def _fit_walls(
    foot_xz: np.ndarray,  # [C, 2] level-frame floor contact (x, z) per column, metres
    valid: np.ndarray,  # [C] bool columns with a measured contact
    axes_xz: list[np.ndarray],  # unit horizontal normals (level frame xz) to try
    min_run: int,
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Wall planes ``(normal_xz, offset_m, columns [C] bool)`` explaining contiguous runs of contacts.

    Greedy: for each axis, the offset ``n . x`` shared by the most still-unexplained columns (tolerance 4% of the
    distance + 5 cm) wins; its contiguous runs of at least ``min_run`` columns become one wall. Up to 6 walls.

    A column supports a wall only where the footprint runs along it: its local tangent (over +-``TANGENT_COLS``
    columns) lies within 45 degrees of the wall's direction. Without this, a side wall seen at the photo's edge
    (its contacts recede quickly in depth over a few columns) was cut into slices of fronto-parallel "walls" at
    every depth its contacts cross within the tolerance, and the side wall itself was never fitted (house@photo:
    walls at 2.81 and 3.18 m ahead instead of the side walls 2.4 m left and right).
    """
    free = valid.copy()
    walls = []
    dist = np.linalg.norm(foot_xz, axis=1)
    tol = 0.04 * dist + 0.05
    C = len(foot_xz)
    idx = np.arange(C)
    lo, hi = np.clip(idx - TANGENT_COLS, 0, C - 1), np.clip(idx + TANGENT_COLS, 0, C - 1)
    tangent = foot_xz[hi] - foot_xz[lo]  # [C, 2]
    t_len = np.linalg.norm(tangent, axis=1)
    for _ in range(6):
        best = None
        for n in axes_xz:
            off = foot_xz @ n
            # along the wall: the tangent's component along the normal is at most cos(45 deg) of its length
            # (a footprint that does not move, |t| ~ 0, says nothing and is kept)
            along = (np.abs(tangent @ n) <= math.cos(math.radians(45.0)) * t_len) | (t_len < 1e-3)
            cand = np.flatnonzero(free & along & (off > 0.2))
            if len(cand) < min_run:
                continue
            # count support of each candidate offset (vectorised over candidates)
            sup = (np.abs(off[cand][:, None] - off[None, cand]) < tol[None, cand]).sum(axis=1)
            i = int(np.argmax(sup))
            o = float(np.median(off[cand][np.abs(off[cand] - off[cand][i]) < tol[cand]]))
            inl = free & along & (np.abs(off - o) < tol)
            runs = _runs(inl, min_run)
            if runs.sum() >= min_run and (best is None or runs.sum() > best[2].sum()):
                best = (n, o, runs)
        if best is None:
            break
        walls.append(best)
        free &= ~best[2]
    return walls


def _seen_past_columns(
    foot_xz: np.ndarray,  # [C, 2] level-frame floor contact (x, z) per column, metres
    contact: np.ndarray,  # [C] bool columns with a wall-foot contact
    wall: tuple[np.ndarray, float, np.ndarray],
) -> int:
    """How many columns saw the floor beyond where the wall would stand, nearer than any contact of the wall's own:
    a wall plane there would have hidden what they saw. A real wall is seen from its near end on (or ends
    there, and then no column sees past it nearer than its seen part); official case 3's meadow boundary 18-23 m
    away lined up into a "side wall" 1.9 m beside the camera that 72 columns saw past, against its 15. Columns
    past its far end are no evidence against it (walls end; doorways open)."""
    n, o, cols = wall
    n = n if o > 0 else -n
    z = foot_xz[:, 1]
    x_over_z = foot_xz[:, 0] / z
    denom = n[0] * x_over_z + n[1]  # n . (x/z, 1): the column's ray meets the wall's foot at z = |o| / denom
    z_cross = np.full(len(z), np.inf)
    np.divide(abs(o), denom, out=z_cross, where=denom > 1e-3)
    nearest = float(z[cols].min())
    past = contact & ~cols & (z > 1.04 * z_cross + 0.05) & (z_cross < 0.96 * nearest - 0.05)
    return int(past.sum())


def _legs_below_walls(
    t_vert: np.ndarray,  # [H, W] ray parameter of each pixel's column surface (z-depth: camera rays have z = 1)
    z_col: np.ndarray,  # [C] level-frame z of each rectified column's surface
    free: np.ndarray,  # [C] bool: columns with a floor contact that no wall plane explains
    col_rad: float,  # one column's width over its depth (level frame)
    col: np.ndarray,  # [H, W] int64 rectified column of each pixel
    rays_l: np.ndarray,  # [H, W, 3] pixel rays, level frame (y down)
    zl: np.ndarray,  # [H, W] their level-frame z
    config: PhotoLayoutConfig,
) -> np.ndarray:
    """``t_vert`` with furniture's legs cut at ``max_leg_height_m`` (``PhotoLayoutConfig.max_leg_width_m``): a run of
    ``free`` columns standing more than ``leg_front_rel`` in front of the farthest surface on each side of it
    (within an eighth of the canvas; a wall seen at an angle recedes to one side only), at most
    ``max_leg_width_m`` wide at its depth. Above that height its pixels show what stands behind: the surface of
    the columns on either side of the run, interpolated in inverse depth (exact for one vertical plane)."""
    C = len(z_col)
    reach = max(4, C // 8)
    padded = np.concatenate([np.full(reach, -np.inf), z_col, np.full(reach, -np.inf)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, reach)  # [C + reach + 1, reach]
    far = np.minimum(windows[:C].max(axis=1), windows[reach + 1:reach + 1 + C].max(axis=1))
    front = free & (far > z_col * (1.0 + config.leg_front_rel))
    behind = np.full(C, np.inf)
    edges = np.flatnonzero(np.diff(np.r_[0, front.astype(np.int8), 0]))
    for c0, c1 in zip(edges[0::2], edges[1::2]):  # runs [c0, c1)
        if (c1 - c0) * col_rad * float(np.max(z_col[c0:c1])) > config.max_leg_width_m:
            continue
        left, right = z_col[max(c0 - 1, 0)], z_col[min(c1, C - 1)]
        t = (np.arange(c0, c1) - (c0 - 1)) / float(c1 - c0 + 1)
        behind[c0:c1] = 1.0 / ((1.0 - t) / left + t / right)
    leg = np.isfinite(behind)
    if not leg.any():
        return t_vert
    height_m = config.camera_height_m - rays_l[..., 1] / zl * z_col[col]  # above the floor, on the leg's card
    above = leg[col] & (height_m > config.max_leg_height_m)
    return np.where(above, np.where(leg, behind, 0.0)[col] / zl, t_vert)


def _wall_length_m(foot_xz: np.ndarray, wall: tuple[np.ndarray, float, np.ndarray]) -> float:
    """Extent (metres) of a wall's contact columns along the wall (perpendicular to its normal)."""
    n, _, cols = wall
    along = foot_xz[cols] @ np.array([-n[1], n[0]])
    return float(along.max() - along.min()) if len(along) else 0.0


def _edge_facades(
    foot_xz: np.ndarray,  # [C, 2] level-frame contact per column
    contact: np.ndarray,  # [C] bool columns with a wall-foot contact
    sky_above: np.ndarray,  # [C] lowest sky row above the contact (-1: none, the surface rises out of the top)
    walls: list[tuple[np.ndarray, float, np.ndarray]],
    axes_xz: list[np.ndarray],  # unit horizontal normals (level xz), both signs
    config: PhotoLayoutConfig,
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Outdoors: a side facade at the photo's left or right edge that no wall explains becomes a wall.

    A courtyard's side building is often seen only in the photo's top corner, behind a colonnade or trees: its
    foot is hidden or broken into short runs, so no run of contacts lines up along it, and walking towards it
    showed sky or the back facade's extension there (courtyard@photo, frames 64-96). Rule: the outermost
    ``edge_facade_cols_frac`` of the columns on that side all have a contact and no sky above it (a surface rising
    out of the photo's top), and no wall faces that way; then a wall along the Manhattan axis closest to the
    image's side direction stands through the outermost plausible contact near the edge, and the columns from the
    edge inwards whose contacts lie behind it or within ``max(1 m, 20%)`` in front of it take its depth (a short
    fronto-parallel run there was the colonnade's or the facade's foot seen between pillars; a contact far behind
    it was ground seen below a corner whose own foot is hidden).
    """
    C = len(foot_xz)
    m = max(3, int(round(config.edge_facade_cols_frac * C)))
    out = list(walls)
    for side, edge in ((-1.0, np.arange(C)), (1.0, np.arange(C)[::-1])):
        n = max(axes_xz, key=lambda a: side * a[0])  # the axis normal pointing most to that side
        if side * n[0] < math.cos(math.radians(35.0)):
            continue  # the frame is turned too far from the image's sides to call either axis "the side"
        if any(np.allclose(wn if o > 0 else -wn, n, atol=1e-3) for wn, o, _ in out):
            continue
        block = edge[:m]
        if not (contact[block].all() and (sky_above[block] < 0).all()):
            continue
        off = foot_xz @ n  # how far out each contact lies along n
        # The facade's foot: the outermost contact near the edge (the first 4x block columns, no sky above) no
        # farther out than 1.5x the median distance of the walls the contacts did line up into (the square's
        # scale; 20 m without any). At courtyard@photo's right edge the right building's corner fills the top
        # while the contact found below it is the grass 36 m away (its own foot is hidden); the corner's foot is
        # a few columns in.
        scale = float(np.median([abs(wo) for _, wo, _ in walls])) if walls else 0.0
        cap = 1.5 * scale if scale > 0 else 0.25 * config.max_depth_m
        near = edge[:4 * m]
        near = near[contact[near] & (sky_above[near] < 0) & (off[near] > 0.5) & (off[near] <= cap)]
        if not len(near):
            continue
        o = float(off[near].max())
        cols = np.zeros(C, bool)
        for c in edge:  # from the edge inwards while the contacts stay near or behind the facade's line
            if not contact[c] or off[c] < o - max(1.0, 0.2 * o):
                break
            cols[c] = True
        out = [(wn, wo, wc & ~cols) for wn, wo, wc in out]
        out = [wl for wl in out if wl[2].any()]
        out.append((n, o, cols))
    return out


def _runs(mask: np.ndarray, min_run: int) -> np.ndarray:
    """``mask`` with only its contiguous True runs of length >= ``min_run`` kept (small gaps of 2 bridged)."""
    m = ndimage.binary_closing(mask, structure=np.ones(3)) & True
    lab, n = ndimage.label(m)
    out = np.zeros_like(mask)
    for i in range(1, n + 1):
        sel = lab == i
        if sel.sum() >= min_run:
            out |= sel
    return out & (mask | ndimage.binary_dilation(mask, iterations=1))


# ---------------------------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------------------------


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InvalidInputError(f"rgb must be uint8 [H, W, 3], got {arr.dtype} {list(arr.shape)}")
    if arr.shape[0] < 32 or arr.shape[1] < 32:
        raise InvalidInputError(f"image is too small for a layout ({arr.shape[1]}x{arr.shape[0]}, need >= 32x32)")
    return arr


def estimate_layout(
    rgb: np.ndarray,  # [H, W, 3] uint8
    intrinsics: Intrinsics | None = None,  # None: unknown, estimate the focal (default FOV when impossible)
    config: PhotoLayoutConfig = PhotoLayoutConfig(),
    debug: dict | None = None,
) -> PhotoLayout:
    """The layout of one photo (see the module docstring). Intrinsics handed in are trusted, not re-estimated.

    ``debug``: a dict that receives the intermediate maps (floor probability, rectified evidence, boundary) for
    inspection; nothing is computed for it that is not computed anyway.
    """
    rgb = _check_rgb(rgb)
    H, W = rgb.shape[:2]
    if intrinsics is not None and (intrinsics.width, intrinsics.height) != (W, H):
        raise InvalidInputError(
            f"image is {W}x{H} but the intrinsics are for {intrinsics.width}x{intrinsics.height}"
        )
    small, s, seg, vps, _labels = analyse_lines(rgb, config)
    h, w = small.shape[:2]
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)

    # --- focal
    if intrinsics is not None:
        K_full, focal_source = intrinsics, "given"
    else:
        f_small = measure_focal(seg, _labels, vps, w, h, config)
        if f_small is not None:
            f = f_small / s
            K_full, focal_source = Intrinsics(f, f, W / 2.0, H / 2.0, W, H), "vanishing_points"
        else:
            K_full = Intrinsics.from_fov(config.default_fov_deg, W, H)
            focal_source = "default"
    K_small = K_full.scaled(w, h)
    up, up_source, h_vp = estimate_up(vps, K_small.matrix)
    frame = manhattan_frame(up, h_vp, K_small.matrix)
    horizon_small = np.linalg.inv(K_small.matrix).T @ up  # l . p = up . K^-1 p; > 0 means a ray going up
    horizon_small = -horizon_small  # sky side < 0
    above = _above_horizon(h, w, horizon_small)

    sky = sky_mask(small, above)
    p_floor, separation = floor_probability(small, above, sky)

    # --- level rectification of the floor probability
    R = level_rotation(up)  # camera -> level
    f = K_small.fx
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64)
    rays = (np.linalg.inv(K_small.matrix) @ corners.T).T @ R.T  # [4, 3] level frame
    if (rays[:, 2] <= 0.05).any():
        raise InvalidInputError("camera is pitched too far for a layout (an image corner looks backwards)")
    uv = f * rays[:, :2] / rays[:, 2:3]
    x0, y0 = uv.min(axis=0)
    x1, y1 = uv.max(axis=0)
    y0 = min(y0, -2.0)  # keep the horizon row inside the canvas
    scale_r = min(1.0, 2.0 * w / (x1 - x0), 2.0 * h / (y1 - y0))  # cap the canvas at twice the image
    f_r = f * scale_r
    Wr, Hr = int(math.ceil((x1 - x0) * scale_r)), int(math.ceil((y1 - y0) * scale_r))
    K_r = np.array([[f_r, 0, -x0 * scale_r], [0, f_r, -y0 * scale_r], [0, 0, 1.0]])
    Hom = K_r @ R @ np.linalg.inv(K_small.matrix)  # small image -> rectified canvas (pixel-edge coordinates)
    # cv2 maps pixel centres (integer indices); our coordinates are edges: shift by 0.5 on both sides
    T_in = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    T_out = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])
    Hcv = T_out @ Hom @ T_in
    valid_r = cv2.warpPerspective(np.ones((h, w), np.uint8), Hcv, (Wr, Hr), flags=cv2.INTER_NEAREST) > 0
    gray_r = cv2.warpPerspective(gray, Hcv, (Wr, Hr), flags=cv2.INTER_LINEAR).astype(np.float32)
    # Vertical 3-D edges (segments of the vertical vanishing point) stand on vertical surfaces: never floor.
    # A segment that also points at a finite horizontal vanishing point (a floor line through the centre
    # column looks vertical too) is ambiguous and left out.
    vert_mask = np.zeros((h, w), np.uint8)
    iv = [i for i, vp in enumerate(vps) if vp.vertical]
    if iv:
        iv = max(iv, key=lambda i: vps[i].support_px)
        cand = seg[_labels == iv]
        if len(cand):
            centre, sc = np.array([w / 2.0, h / 2.0]), max(w, h) / 2.0
            cand_n = np.column_stack([(cand[:, :2] - centre) / sc, (cand[:, 2:] - centre) / sc])
            amb = np.zeros(len(cand), bool)
            for j, vp in enumerate(vps):
                if j != iv and not vp.vertical and vp.finite:
                    ph = vp.point_h
                    pn = np.array([(ph[0] - centre[0] * ph[2]) / sc, (ph[1] - centre[1] * ph[2]) / sc, ph[2]])
                    amb |= _vp_angles(pn / np.linalg.norm(pn), cand_n) < 2 * math.radians(config.vp_inlier_deg)
            for x1, y1, x2, y2 in cand[~amb]:
                cv2.line(vert_mask, (int(x1), int(y1)), (int(x2), int(y2)), 1, 3)
            vert_segs = cand[~amb]
        else:
            vert_segs = np.zeros((0, 4))
    else:
        vert_segs = np.zeros((0, 4))
    vert_r = cv2.warpPerspective(vert_mask, Hcv, (Wr, Hr), flags=cv2.INTER_NEAREST).astype(np.float32)
    p_floor = floor_patches_as_floor(p_floor, above | sky, vert_mask > 0, gray.astype(np.float32),
                                     config.floor_patch_min_share, config.floor_patch_min_lift)
    p_r = cv2.warpPerspective(p_floor, Hcv, (Wr, Hr), flags=cv2.INTER_LINEAR, borderValue=-1.0)
    span_r = _vertical_spans(vert_segs, Hom, Wr, Hr)
    cy_r = float(K_r[1, 2])
    cx_r = float(K_r[0, 2])

    # --- boundary per rectified column (at half resolution for speed)
    ds = 2
    p_d = cv2.resize(np.where(valid_r, p_r, 0.5).astype(np.float32), (Wr // ds, Hr // ds), interpolation=cv2.INTER_AREA)
    v_d = cv2.resize(valid_r.astype(np.float32), (Wr // ds, Hr // ds), interpolation=cv2.INTER_AREA) > 0.5
    g_d = cv2.resize(gray_r, (Wr // ds, Hr // ds), interpolation=cv2.INTER_AREA)
    e_d = cv2.resize(vert_r, (Wr // ds, Hr // ds), interpolation=cv2.INTER_AREA) > 0
    s_d = cv2.resize(span_r, (Wr // ds, Hr // ds), interpolation=cv2.INTER_AREA) > 0.5
    Cd, Rd = p_d.shape[1], p_d.shape[0]
    r_h = int(math.floor(cy_r / ds)) + 1  # first row below the horizon (downsampled)
    r_h = min(max(r_h, 0), Rd - 1)
    # score of boundary b (floor = rows > b): sum over rows > b of (2p - 1), valid rows only
    contrib = np.where(v_d, 2.0 * p_d - 1.0 - 4.0 * e_d - 1.5 * s_d, 0.0)[r_h:]  # [R', C]
    below = np.vstack([np.cumsum(contrib[::-1], axis=0)[::-1][1:], np.zeros((1, Cd))])  # rows > b
    # ... plus not-floor evidence above b (rows r_h..b): sum of (1 - 2p)
    above_sc = np.cumsum(-contrib, axis=0)
    # an edge bonus: floor boundaries are usually intensity edges
    gy = np.abs(cv2.Sobel(g_d, cv2.CV_32F, 0, 1, ksize=3))[r_h:]
    gy = gy / (np.percentile(gy, 95) + 1e-6)
    score = below + above_sc + 2.0 * np.minimum(gy, 1.5)
    col_valid = v_d[r_h:].any(axis=0)
    b_rel = boundary_dp(score.astype(np.float64), smooth=0.6, jump=6.0)
    if debug is not None:
        debug.update(p_floor=p_floor, p_rect=p_d, vertical_edges=e_d, vertical_spans=s_d, boundary=b_rel + r_h,
                     horizon_row=r_h)
    b_row = (r_h + b_rel + 1) * ds  # first floor row (full rectified resolution), pixel-edge coordinate
    # columns whose boundary sits at the lowest valid row: nothing of the floor seen there
    last_valid = np.array([np.flatnonzero(v_d[:, c]).max() if v_d[:, c].any() else Rd - 1 for c in range(Cd)])
    contact = col_valid & (r_h + b_rel < last_valid - 1)
    # contact depth in the level frame: z = h f / (row - cy) with the row's centre
    slope = np.maximum((b_row - cy_r) / f_r, 1e-6)
    z_c = np.clip(config.camera_height_m / slope, config.min_depth_m, config.max_depth_m)
    # columns without a contact: the surface comes closer than the bottom row's floor; use that (an upper bound)
    bottom_slope = np.maximum(((last_valid + 1) * ds - cy_r) / f_r, 1e-6)
    z_c = np.where(contact, z_c, np.clip(config.camera_height_m / bottom_slope, config.min_depth_m, config.max_depth_m))
    # one-column spikes (a thin leg, a mislabelled strip) become free-standing slivers when the camera moves:
    # a 5-column median in inverse depth removes them and keeps real steps (occlusion edges) where they are
    z_c = 1.0 / ndimage.median_filter(1.0 / z_c, size=5, mode="nearest")
    xc = ((np.arange(Cd) + 0.5) * ds - cx_r) / f_r  # x/z of the column's vertical plane
    foot = np.column_stack([xc * z_c, z_c])  # [C, 2] level (x, z)

    # --- Manhattan wall planes through the contacts
    axes_xz = []
    for k in (0, 2):
        a = R @ frame[:, k]
        n = np.array([a[0], a[2]])
        if np.linalg.norm(n) > 1e-6:
            # both signs: a wall's offset along its normal is positive (it stands in front of the camera), so
            # the walls on the negative side of an axis (the left wall, when the axis points right) need -n
            axes_xz += [n / np.linalg.norm(n), -n / np.linalg.norm(n)]
    # A contact with sky just above it is where the ground meets the horizon (the far end of a paved square
    # seen past a building's corner), not the foot of a wall: what stands on it rises less than
    # ``min_wall_height_m`` before the sky. Such contacts lined up into fronto-parallel "walls" 19 and 36 m away
    # on courtyard@photo, which the fill then took as the square's far side (the farthest wall of a direction).
    sky_d = cv2.resize(cv2.warpPerspective(sky.astype(np.uint8), Hcv, (Wr, Hr), flags=cv2.INTER_NEAREST),
                       (Wr // ds, Hr // ds), interpolation=cv2.INTER_NEAREST) > 0
    rows_d = np.arange(Rd)[:, None]
    sky_above = np.where(sky_d & (rows_d <= (r_h + b_rel)[None, :]), rows_d, -1).max(axis=0)  # [C] lowest sky row
    rise_m = z_c * ((r_h + b_rel) - sky_above) * ds / f_r  # height of what stands on the contact, below the sky
    horizon_contact = (sky_above >= 0) & (rise_m < config.min_wall_height_m)
    if debug is not None:
        debug.update(sky_rect=sky_d, rise_m=rise_m, horizon_contact=horizon_contact, foot=foot, contact=contact)
    walls = _fit_walls(foot, contact & ~horizon_contact & (z_c < 0.5 * config.max_depth_m), axes_xz,
                       min_run=max(4, Cd // 25))
    walls = [wl for wl in walls if _wall_length_m(foot, wl) >= config.min_wall_length_m
             and _seen_past_columns(foot, contact & ~horizon_contact, wl) <= wl[2].sum()]
    if sky.any():
        walls = _edge_facades(foot, contact & ~horizon_contact, sky_above, walls, axes_xz, config)
    if debug is not None:
        debug.update(walls=walls)
    z_wall = z_c.copy()
    wall_of_col = np.full(Cd, -1)
    for i, (n, o, cols) in enumerate(walls):
        n = n if o > 0 else -n
        denom = n[0] * xc + n[1]  # n . (x/z, 1)
        ok = cols & (denom > 1e-3)
        z_wall[ok] = np.clip(abs(o) / denom[ok], config.min_depth_m, config.max_depth_m)
        wall_of_col[ok] = i
    # Closure: the farthest wall found in each horizontal direction bounds the room (or the yard). Seen from
    # inside a convex enclosure, a ray leaves through the nearest of those planes, so no column's surface lies
    # beyond it; this corrects columns whose floor contact is hidden by furniture (the boundary then lands too
    # high and the contact too far).
    enclosing: dict[tuple, tuple[np.ndarray, float]] = {}
    for n, o, cols in walls:
        n = n if o > 0 else -n
        key = tuple(np.round(n, 3))
        # a plane within 1 m of the eye is furniture seen up close far more often than the room's boundary
        if cols.sum() >= max(4, Cd // 12) and abs(o) >= 1.0 and (key not in enclosing or abs(o) > enclosing[key][1]):
            enclosing[key] = (n, abs(o))
    if enclosing:
        exit_z = np.full(Cd, np.inf)
        for n, o in enclosing.values():
            denom = n[0] * xc + n[1]
            with np.errstate(divide="ignore"):
                exit_z = np.where(denom > 1e-3, np.minimum(exit_z, o / denom), exit_z)
        # Only columns with a floor contact (without one the depth is already the nearer bottom-row bound) that
        # no wall plane explains: a contact run that lines up into a plane of its own is structure seen through
        # an opening (the next room through a doorway), and capping it would paint the doorway shut.
        cap = np.isfinite(exit_z) & contact & (wall_of_col < 0)
        z_wall = np.where(cap, np.minimum(z_wall, exit_z), z_wall)

    # No sky in view: nothing stands farther than ``max_depth_no_sky_m``. Columns whose surface lies beyond it show
    # a backdrop (a wooded hillside, the far end of a hall) on one level plane at that distance facing the camera:
    # a wall of the layout that the fill continues and rays through the photo's holes meet (official case 3: the
    # meadow's treeline), where a cap on the camera's z-depth put them on a tilted plane no Manhattan wall holds.
    backdrop_cols = np.zeros(Cd, bool)
    backdrop_n = None
    if not sky.any() and axes_xz:
        backdrop_n = max(axes_xz, key=lambda n: n[1])  # the Manhattan direction nearest the camera's forward
        denom = backdrop_n[0] * xc + backdrop_n[1]
        z_back = np.full(Cd, np.inf)
        np.divide(config.max_depth_no_sky_m, denom, out=z_back, where=denom > 1e-3)
        backdrop_cols = (z_wall >= z_back) & (wall_of_col < 0)
        z_wall = np.where(backdrop_cols, z_back, z_wall)

    # --- ceiling (interiors): the same boundary search from the top, above the horizon
    ceiling_h_m, t_row = None, None
    if not sky.any() and r_h > 4:
        rows_s = np.arange(h)[:, None]
        p_ceil, ceil_sep = colour_probability(small, (rows_s < int(0.10 * h)) & above, ~above)
        if ceil_sep > 0.25:
            pc_r = cv2.warpPerspective(p_ceil, Hcv, (Wr, Hr), flags=cv2.INTER_LINEAR, borderValue=0.5)
            pc_d = cv2.resize(pc_r, (Wr // ds, Hr // ds), interpolation=cv2.INTER_AREA)
            top = np.where(v_d, 2.0 * pc_d - 1.0 - 4.0 * e_d, 0.0)[:r_h]  # [r_h, C] rows above the horizon
            # boundary t: ceiling = rows < t; score = ceiling evidence above t + not-ceiling evidence below
            up_sc = np.vstack([np.zeros((1, Cd)), np.cumsum(top, axis=0)])[:-1]
            down_sc = np.cumsum(-top[::-1], axis=0)[::-1]
            gy_top = np.abs(cv2.Sobel(g_d, cv2.CV_32F, 0, 1, ksize=3))[:r_h]
            gy_top = gy_top / (np.percentile(gy_top, 95) + 1e-6)
            t_rel = boundary_dp((up_sc + down_sc + 2.0 * np.minimum(gy_top, 1.5)).astype(np.float64), 0.6, 6.0)
            first_valid = np.array([np.flatnonzero(v_d[:, c]).min() if v_d[:, c].any() else 0 for c in range(Cd)])
            seen = (t_rel > first_valid + 1) & contact & (t_rel < r_h - 1)
            if seen.mean() > 0.2:
                # the wall at z_wall meets the ceiling at row t: height above the eye = z (cy - t) / f
                heights = z_wall[seen] * (cy_r - t_rel[seen] * ds) / f_r
                hc = float(np.median(heights))
                spread = float(np.median(np.abs(heights - hc)))
                if 0.4 <= hc <= 3.0 and spread < 0.25 * hc:
                    ceiling_h_m, t_row = hc, np.where(t_rel > first_valid + 1, t_rel * ds, -1)

    # --- depth of every photo pixel
    u = np.arange(W, dtype=np.float64) + 0.5
    v = np.arange(H, dtype=np.float64) + 0.5
    rays_c = np.stack(np.broadcast_arrays((u[None, :] - K_full.cx) / K_full.fx, (v[:, None] - K_full.cy) / K_full.fy,
                                          np.ones((H, W))), axis=-1)  # [H, W, 3] camera frame, z = 1
    rays_l = rays_c @ R.T  # level frame
    zl = np.maximum(rays_l[..., 2], 1e-6)
    qx = f_r * rays_l[..., 0] / zl + cx_r  # rectified pixel coordinates (edge convention)
    qy = f_r * rays_l[..., 1] / zl + cy_r
    col = np.clip((qx / ds).astype(np.int64), 0, Cd - 1)
    floor = (qy >= b_row[col]) & (rays_l[..., 1] > 1e-6)
    sky_full = cv2.resize(sky.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0
    floor &= ~sky_full
    t_floor = config.camera_height_m / np.maximum(rays_l[..., 1], 1e-9)  # ray parameter (level frame)
    t_vert = z_wall[col] / zl  # the column's vertical surface at level-frame z = z_wall
    if ceiling_h_m is not None and config.max_leg_width_m > 0:  # an interior
        t_vert = _legs_below_walls(t_vert, z_wall, contact & (wall_of_col < 0), ds / f_r, col, rays_l, zl, config)
    t = np.where(floor, t_floor, t_vert)
    ceiling = np.zeros((H, W), bool)
    if ceiling_h_m is not None:
        t_ceil = ceiling_h_m / np.maximum(-rays_l[..., 1], 1e-9)
        # a ceiling never lies beyond the wall it meets: where the plane would, the pixel is that wall (a grey
        # wall below a grey ceiling can fool the colour boundary)
        ceiling = (qy < t_row[col]) & (rays_l[..., 1] < -1e-6) & ~sky_full & (t_ceil <= 1.05 * t_vert)
        t = np.where(ceiling, t_ceil, t)
    depth = t  # camera-frame rays have z = 1, so the ray parameter is the z-depth
    # no sky in view: an interior, or the ground seen from above; nothing there is 80 m away
    far_m = config.max_depth_m if sky.any() else config.max_depth_no_sky_m
    on_backdrop = backdrop_cols[col] & ~floor & ~ceiling
    depth = np.where(on_backdrop, depth, np.clip(depth, config.min_depth_m, far_m))
    depth = np.where(sky_full, config.sky_depth_m, depth).astype(np.float32)
    vertical = ~floor & ~sky_full & ~ceiling

    # --- planes in the camera frame
    planes = [LayoutPlane("floor", -up.copy(), config.camera_height_m, int(floor.sum()))]
    for i, (n, o, cols) in enumerate(walls):
        n3_l = np.array([n[0], 0.0, n[1]]) * (1 if o > 0 else -1)
        n_cam = R.T @ n3_l
        open_top = bool(np.mean(sky_above[cols] < 0) >= 0.5)
        pixels = int((vertical & (wall_of_col[col] == i)).sum())
        if pixels < 0.001 * H * W:
            # fitted on canvas columns outside the photo (the rectified canvas is wider than the photo at the
            # bottom): it explains nothing the photo shows (courtyard@photo: a "wall" 36 m ahead)
            continue
        planes.append(LayoutPlane("wall", n_cam, abs(float(o)), pixels, open_top))
    backdrop_px = int((vertical & backdrop_cols[col]).sum())
    has_backdrop = backdrop_n is not None and backdrop_px >= config.min_backdrop_share * H * W
    if has_backdrop:
        n_cam = R.T @ np.array([backdrop_n[0], 0.0, backdrop_n[1]])
        planes.append(LayoutPlane("wall", n_cam, config.max_depth_no_sky_m, backdrop_px, open_top=True))
    if ceiling_h_m is not None:
        planes.append(LayoutPlane("ceiling", up.copy(), ceiling_h_m, int(ceiling.sum())))

    # --- confidence
    manhattan_len = sum(vp.support_px for vp in vps[:3])
    c_lines = min(1.0, manhattan_len / (1.5 * math.hypot(w, h)))
    # below ~0.15 the bottom of the photo looks like its top: no floor to stand the layout on
    c_floor = float(np.clip((separation - 0.15) / 0.25, 0.0, 1.0))
    c_up = {"vertical_vp": 1.0, "horizontal_vps": 0.9, "horizontal_vp_zero_roll": 0.7, "assumed_level": 0.4}[up_source]
    c_contact = float(contact.mean())
    open_ground = ceiling_h_m is None and (bool(sky.any()) or has_backdrop)
    c_focal = (1.0 if focal_source != "default" else
               config.unmeasured_focal_confidence_open if open_ground else config.unmeasured_focal_confidence)
    confidence = float(c_lines ** 0.5 * c_floor ** 0.5 * c_up * (0.5 + 0.5 * c_contact) * c_focal)
    if sky.any() and not floor.any():
        confidence *= 0.5
    terms = {"lines": round(c_lines, 3), "floor_separation": round(c_floor, 3), "up": c_up,
             "contact_columns": round(c_contact, 3), "focal": c_focal}
    return PhotoLayout(
        intrinsics=K_full,
        focal_source=focal_source,
        up_cam=up,
        up_source=up_source,
        manhattan_cam=frame,
        horizon_line=horizon_small * np.array([1.0, 1.0, 1.0 / s]) if s != 1 else horizon_small,
        vanishing_points=tuple(vps),
        segments_px=seg,
        analysis_scale=s,
        planes=tuple(planes),
        floor_mask=floor,
        sky_mask=sky_full,
        vertical_mask=vertical,
        ceiling_mask=ceiling,
        depth_m=depth,
        camera_height_m=config.camera_height_m,
        confidence=confidence,
        confidence_terms=terms,
    )


class PhotoLayoutDepth:
    """``world.depth.DepthEstimator`` for photos: depth from the measured layout, planar prior when unsure.

    ``estimate(rgb, intrinsics)`` trusts the intrinsics it is given (an official case's, or the default FOV the
    caller assumed); ``estimate_uncalibrated(rgb)`` also estimates the focal length from vanishing points and
    returns it in ``DepthEstimate.intrinsics``. ``last_layout`` keeps the most recent layout for inspection.
    """

    def __init__(self, config: PhotoLayoutConfig = PhotoLayoutConfig(),
                 fallback: PlanarPriorConfig = PlanarPriorConfig()):
        self.config = config
        self.fallback = fallback
        self.last_layout: PhotoLayout | None = None

    def estimate(self, rgb: np.ndarray, intrinsics: Intrinsics) -> DepthEstimate:
        if not isinstance(intrinsics, Intrinsics):
            raise InvalidInputError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        return self._estimate(rgb, intrinsics)

    def estimate_uncalibrated(self, rgb: np.ndarray) -> DepthEstimate:
        """Depth and the intrinsics it is for (focal from vanishing points, else ``default_fov_deg``)."""
        return self._estimate(rgb, None)

    def _estimate(self, rgb: np.ndarray, intrinsics: Intrinsics | None) -> DepthEstimate:
        rgb = _check_rgb(rgb)
        layout = estimate_layout(rgb, intrinsics, self.config)
        self.last_layout = layout
        if layout.confidence < self.config.min_confidence:
            K = intrinsics or default_intrinsics(rgb.shape[1], rgb.shape[0])
            log.warning(
                "photo_layout_fallback",
                note="layout confidence too low: using the planar prior (floor + back wall) instead",
                confidence=round(layout.confidence, 3),
                min_confidence=self.config.min_confidence,
                terms=layout.confidence_terms,
            )
            est = PlanarPriorDepth(self.fallback).estimate(rgb, K)
            return DepthEstimate(est.depth_m, is_metric=True, source="planar_prior(photo_fallback)",
                                 approximate=True, intrinsics=K)
        log.info(
            "photo_layout",
            confidence=round(layout.confidence, 3),
            terms=layout.confidence_terms,
            focal_source=layout.focal_source,
            fov_deg=round(layout.intrinsics.fov_x_deg, 1),
            up_source=layout.up_source,
            pitch_deg=round(layout.pitch_deg, 1),
            roll_deg=round(layout.roll_deg, 1),
            walls=sum(p.kind == "wall" for p in layout.planes),
            sky_share=round(float(layout.sky_mask.mean()), 3),
        )
        return DepthEstimate(layout.depth_m, is_metric=True, source="photo_layout", approximate=True,
                             intrinsics=layout.intrinsics, layout=layout_prior(layout))


def photo_depth_estimator(depth_model_dir: str | None = None):
    """The depth estimator of every way to make a world from a plain photo (``spatia demo --image`` / ``--case``,
    CreateWorld from an image or an official case, the in-process Gymnasium env), so that one photo makes one
    world whichever way it came in: a local depth model's directory when given, else the layout measured from the
    photo's own lines (``PhotoLayoutDepth``: the planar prior when unsure)."""
    if depth_model_dir:
        from spatia.world.depth import TransformersDepth

        return TransformersDepth(depth_model_dir)
    return PhotoLayoutDepth()


def layout_prior(layout: PhotoLayout) -> LayoutPrior:
    """The photo layout as the world records it (``world.depth.LayoutPrior``, camera frame of the photo)."""
    up = layout.up_cam / np.linalg.norm(layout.up_cam)
    a = layout.manhattan_cam[:, 0] - (layout.manhattan_cam[:, 0] @ up) * up
    planes = tuple((p.kind, np.asarray(p.normal_cam, np.float64), float(p.offset_m)) for p in layout.planes)
    return LayoutPrior("photo_layout", up, a / np.linalg.norm(a), planes, float(layout.confidence),
                       tuple(bool(p.open_top) for p in layout.planes))
