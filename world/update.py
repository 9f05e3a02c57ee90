"""The memory update after generation: the paper's "update the scene point cloud with visual SLAM" (Sec. 3.2).

The official code re-runs MapAnything from scratch on all history frames each round, with the KNOWN camera path
as input (``docs/DESIGN.md``, "Where the method follows ..."). We do an incremental, real-time version, one generated frame at a
time:

1. render the memory at the frame's pose (the frame should agree with it where the memory has points);
2. optionally refine the pose against that render by dense RGB-D odometry (``world.odometry``), bounded and
   checked, so that a generator that drifted from the commanded path does not smear the memory;
3. choose a depth for the frame: the generator's own depth when it gives one; otherwise the memory's rendered
   depth where valid, with holes filled from a depth model aligned to the render, or by a background-preferring
   fill (disocclusions reveal the far surface, never the occluder);
4. integrate the frame, never writing pixels marked dynamic (the paper's dynamic-static disentanglement,
   Sec. 3 / appendix "Dynamic-Static Disentanglement in the Inference Stage": masks exclude dynamic regions when
   the point cloud is updated; the official code drops them with ``mask & ~mask_image``).

Conventions (``docs/DESIGN.md``): OpenCV camera, ``c2w`` 4x4 float64, depth float32 z-depth metres with 0 = unknown,
images uint8 ``H x W x 3``, masks named for what True means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, Union

import numpy as np

from spatia.world.camera import (
    Intrinsics,
    invert_pose,
    rotation_angle_deg,
    translation_distance_m,
    validate_pose,
    validate_trajectory,
)
from spatia.world.depth import DepthEstimator
from spatia.world.errors import InvalidInputError
from spatia.world.free_space import SEEN_THROUGH_MARGIN_M
from spatia.world.geometry import project_points
from spatia.world._memory_kernels import keys_in
from spatia.world.memory import INVENTED_FINAL
from spatia.world.numba_start import numba
from spatia.world.odometry import depth_edge_free, photometric_residual, rgbd_odometry


@dataclass(frozen=True)
class UpdateConfig:
    """Policy of the memory update. Per-session state (the memory itself) is passed in separately."""

    # -- pose refinement (RGB-D odometry of the generated frame against the memory render) --
    refine_pose: bool = True
    max_refine_rotation_deg: float = 5.0  # larger corrections are rejected: the generator is trusted that far only
    max_refine_translation_m: float = 0.10
    min_refine_fitness: float = 0.3  # correspondences / memory-render pixels below this: too few inliers, reject
    min_refine_ncc: float = 0.5  # intensity correlation of render and frame at the refined pose below this: reject
    # The photometric residual (memory render vs frame) must drop by at least this fraction. Measured: a genuine
    # 3 deg / 5 cm offset drops it by 72-84%; at the exact pose, render artefacts (a memory seen from elsewhere)
    # still let odometry "improve" it by 1-20% with bogus 0.2-0.7 deg / 1-3 cm corrections, which this rejects.
    min_refine_gain: float = 0.25
    odometry_iterations: tuple[int, ...] = (20, 10, 5)  # per pyramid level, coarse to fine (Open3D's default)
    # With a frame depth, Open3D's hybrid (photometric + depth) term, with pixels near depth edges removed from
    # both depths (``depth_edge_free``). Measured on make_scene room/house/courtyard seeds 0-1 at 160x120, 5
    # perturbations of 3 deg / 5 cm each: max error 0.09 deg / 0.91 cm (mean 0.32 cm); the photometric term alone
    # gave max 0.45 deg / 5.4 cm (mean 1.55 cm); the hybrid term with edges kept diverged in some cases. Without
    # a frame depth only the photometric term can be used.
    odometry_use_depth_term: bool = True
    depth_edge_window_px: int = 3  # square window of the depth-edge test (5 dropped too many pixels in clutter)
    depth_edge_rel_jump: float = 0.05  # a relative depth jump inside the window above this marks an edge
    odometry_depth_diff_max_m: float = 0.10  # gate when the frame has its own depth
    odometry_render_gate_m: float = 0.5  # gate when the render's depth stands in for the frame's (approximate)
    # -- depth for a generated frame without generator depth --
    fill_holes: bool = True  # False: only pixels the memory renders get depth (re-observations only)
    fill_depth_gap_rel: float = 0.05  # a plane extended across a hole missing the far end by more = occlusion edge
    max_fill_span_px: int | None = None  # holes whose bounding run is longer than this stay unknown; None = no limit
    # -- alignment of a depth model's output to the rendered depth --
    model_depth_is_disparity: bool = False  # True: the model outputs affine-invariant inverse depth (Depth Anything)
    align_percentile_range: tuple[float, float] = (2.0, 98.0)  # pixels outside these percentiles are not fitted
    align_trim_fraction: float = 0.2  # each refit drops this fraction of the largest residuals (trimmed LS)
    align_iterations: int = 3
    min_align_pixels: int = 64  # fewer rendered pixels than this: no alignment is attempted
    # -- integration --
    # Integrate the frames whose global frame index is a multiple of this (the official code maps every 6th frame
    # at 24 fps; the engine sets it from ``EngineConfig.keyframe_stride``). Consecutive frames of a walk overlap
    # almost entirely, so a stride of a few frames loses little; indexing by the global frame index, not the
    # position in the clip, keeps the rate when clips are short.
    integrate_stride: int = 1
    # Pixels where the memory already renders a surface are re-observations. By default they are not integrated:
    # the memory stays the authority for what was seen, so a revisit renders what the first visit saw (FlexWorld
    # likewise adds points only in un-rendered regions). Integrating them anyway adds a point beside each existing
    # one wherever a pixel is wider than a voxel, and blends generated colours into remembered ones.
    integrate_observed: bool = False
    # A hole pixel of one pixel between rendered pixels on two opposite sides (left/right, up/down or a diagonal
    # pair), whose new depth lies within this relative margin of theirs, is a pinhole in a surface the memory
    # already holds at about the pixel's spacing: it is not integrated (None: it is, as every other hole pixel).
    # Why: the memory renders a point as ``ceil(splat_scale * d * f / z)`` pixels, one pixel wherever a pixel is
    # wider than a voxel, while a surface integrated there holds one point per pixel, not per voxel. Every new
    # viewpoint then sees such a surface with a new pattern of pinholes, and integrating them added points in
    # fresh voxels of the same surface on every lap of a revisiting loop (measured: room, 160x96, a 20 s circle
    # walked at a shifted frame phase each lap: +3 % and +9 % on laps 3 and 4, and a 10-minute soak's worlds
    # grew by +2.3 M points) until the surface would be full at spacing d: up to (pixel / d)^2 times its points.
    # A revisit at the same spacing now adds (nearly) nothing; a closer look (gaps of 2+ pixels) still adds.
    pinhole_depth_rel: float | None = 0.1
    pinhole_max_px: int = 2  # the widest gap (pixels) treated so
    # Free space a frame shows: an invented point the memory renders where the frame's depth lies beyond it (more
    # than this fraction + 5 cm, ``world.free_space.seen_through``, at the point's own pixel) is taken away, and
    # the frame is integrated there: what a frame shows as open (a doorway opened where the memory held an
    # invented wall) is open in the memory, so the camera can walk through it. Observed points are never taken
    # away. None: off (the memory keeps such points and shows a wall where the frame showed an opening).
    carve_seen_through_rel: float | None = 0.03
    min_valid_fraction: float = 0.05  # render coverage below this: no refinement and no render-based depth

    def __post_init__(self) -> None:
        if self.max_refine_rotation_deg <= 0 or self.max_refine_translation_m <= 0:
            raise InvalidInputError("refinement bounds must be positive")
        if not 0.0 <= self.min_refine_gain < 1.0:
            raise InvalidInputError(f"min_refine_gain must be in [0, 1), got {self.min_refine_gain}")
        if not 0.0 <= self.min_refine_fitness <= 1.0 or not 0.0 <= self.min_valid_fraction <= 1.0:
            raise InvalidInputError("min_refine_fitness and min_valid_fraction must be in [0, 1]")
        if self.fill_depth_gap_rel < 0:
            raise InvalidInputError(f"fill_depth_gap_rel must be >= 0, got {self.fill_depth_gap_rel}")
        if self.max_fill_span_px is not None and self.max_fill_span_px < 1:
            raise InvalidInputError(f"max_fill_span_px must be >= 1 or None, got {self.max_fill_span_px}")
        lo, hi = self.align_percentile_range
        if not 0.0 <= lo < hi <= 100.0:
            raise InvalidInputError(f"align_percentile_range must satisfy 0 <= lo < hi <= 100, got {lo, hi}")
        if not 0.0 <= self.align_trim_fraction < 1.0 or self.align_iterations < 0:
            raise InvalidInputError("align_trim_fraction must be in [0, 1) and align_iterations >= 0")
        if self.depth_edge_window_px < 1 or self.depth_edge_window_px % 2 == 0 or self.depth_edge_rel_jump <= 0:
            raise InvalidInputError("depth_edge_window_px must be a positive odd number, depth_edge_rel_jump > 0")
        if self.integrate_stride < 1:
            raise InvalidInputError(f"integrate_stride must be >= 1, got {self.integrate_stride}")
        if self.pinhole_depth_rel is not None and not (0.0 <= self.pinhole_depth_rel < 1.0):
            raise InvalidInputError(f"pinhole_depth_rel must be in [0, 1) or None, got {self.pinhole_depth_rel}")
        if self.carve_seen_through_rel is not None and not (0.0 <= self.carve_seen_through_rel < 1.0):
            raise InvalidInputError(
                f"carve_seen_through_rel must be in [0, 1) or None, got {self.carve_seen_through_rel}")
        if self.pinhole_max_px < 1:
            raise InvalidInputError(f"pinhole_max_px must be >= 1, got {self.pinhole_max_px}")
        if not self.odometry_iterations or min(self.odometry_iterations) < 1:
            raise InvalidInputError("odometry_iterations needs at least one level with >= 1 iteration")


class RenderLike(Protocol):
    """What the update reads from a render (``world.memory.RenderResult``); an ``(rgb, depth_m, valid)`` tuple
    is accepted wherever this is."""

    rgb: np.ndarray  # [H, W, 3] uint8
    depth_m: np.ndarray  # [H, W] float32, 0 = invalid
    valid: np.ndarray  # [H, W] bool


RenderArg = Union[RenderLike, tuple]


def _unpack_render(rendered: RenderArg, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb, depth_m, valid) from a ``RenderResult``-like object or an ``(rgb, depth_m, valid)`` tuple, checked."""
    if isinstance(rendered, tuple):
        if len(rendered) != 3:
            raise InvalidInputError(f"a render tuple is (rgb, depth_m, valid), got {len(rendered)} items")
        rgb, depth, valid = rendered
    else:
        rgb, depth, valid = rendered.rgb, rendered.depth_m, rendered.valid
    rgb, depth, valid = np.asarray(rgb), np.asarray(depth, dtype=np.float32), np.asarray(valid, dtype=bool)
    if rgb.shape != shape + (3,) or depth.shape != shape or valid.shape != shape:
        raise InvalidInputError(
            f"render arrays must be {list(shape)} (+3 for rgb), got rgb {list(rgb.shape)} depth {list(depth.shape)} "
            f"valid {list(valid.shape)}"
        )
    valid = _valid_depth(np.ascontiguousarray(valid), np.ascontiguousarray(depth))
    return rgb, depth, valid


@numba.njit(cache=True, nogil=True)
def _valid_depth(valid, depth):  # pragma: no cover - compiled
    """``valid & np.isfinite(depth) & (depth > 0)`` (a new [H, W] bool array) in one pass, for four numpy passes."""
    out = np.empty(valid.shape, np.bool_)
    v, d, o = valid.ravel(), depth.ravel(), out.ravel()
    for i in range(v.shape[0]):
        z = d[i]
        o[i] = v[i] and z > 0 and z < np.inf
    return out


def _check_image(rgb: np.ndarray, name: str) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidInputError(f"{name} must be uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    return rgb


def _check_map(arr: np.ndarray | None, shape: tuple[int, int], name: str, dtype: type) -> np.ndarray | None:
    if arr is None:
        return None
    arr = np.asarray(arr)
    if arr.shape != shape:
        raise InvalidInputError(f"{name} must be {list(shape)}, got {list(arr.shape)}")
    if dtype is bool:
        if arr.dtype != np.bool_:
            raise InvalidInputError(f"{name} must be a bool mask, got {arr.dtype}")
        return arr
    arr = arr.astype(np.float32)
    if np.isnan(arr).any():
        raise InvalidInputError(f"{name} contains NaN (use 0 for unknown depth)")
    return arr


# ---------------------------------------------------------------------------------------------------------------
# Background-preferring hole fill
# ---------------------------------------------------------------------------------------------------------------
#
# Rule. For every hole pixel, look for the nearest valid pixel in each of the four axis directions. Along one axis
# (left/right or up/down) with valid ends a and b on both sides, decide whether one surface continues across the
# hole or the hole spans an occlusion edge:
#   - continuous when extending either end as a plane predicts the other end's depth within ``gap_rel``
#     (relative). On a plane, inverse depth is affine in the pixel coordinates, so an end is extended with the
#     inverse-depth slope measured between it and the valid pixel ``SLOPE_BASELINE_PX`` further out (slope 0 when
#     that pixel is unknown). Then the hole takes the inverse-depth interpolation of a and b (exact on a plane);
#   - otherwise it is an occlusion edge -- a disocclusion, where the camera now sees behind the occluder -- and the
#     hole takes the FAR end's depth: what appears behind a foreground edge is background, never the occluder.
# With only one side valid, that side's plane is extended (constant depth when the extension would more than
# double or halve the depth). Of the two axes the one with the shorter span
# (the sum of the distances to its two ends; a one-sided axis counts twice its distance) decides, since it is the
# more local evidence. Pixels with no valid pixel on any axis stay 0 (unknown).

SLOPE_BASELINE_PX = 3  # pixels between an end and the pixel its inverse-depth slope is measured against


@numba.njit(cache=True, nogil=True)
def _end(depth, valid, ye, xe, k, dy, dx, H, W, limit):  # pragma: no cover - compiled
    """(inverse depth, inverse-depth slope into the hole, steps) of the end pixel (ye, xe) found ``k`` steps away
    towards (dy, dx); k = 0 when there is none before the border, -1 when it lies beyond ``limit`` steps (the axis'
    span then exceeds ``max_span`` whatever the end holds). Inverse depths in float64, taken here from ``depth``
    for the two pixels read: a frame's holes read a few per cent of its pixels, and an [H, W] inverse-depth array
    made up front cost a division and a store for every pixel."""
    if k == 0:
        return 0.0, 0.0, 0
    if k > limit:
        return 0.0, 0.0, -1
    inv_e = 1.0 / np.float64(depth[ye, xe])
    yf, xf = ye + SLOPE_BASELINE_PX * dy, xe + SLOPE_BASELINE_PX * dx
    slope = 0.0
    if 0 <= yf < H and 0 <= xf < W and valid[yf, xf]:
        slope = (inv_e - 1.0 / np.float64(depth[yf, xf])) / SLOPE_BASELINE_PX
    return inv_e, slope, k


@numba.njit(cache=True, nogil=True)
def _predicts(inv_from, slope_from, inv_to, span, gap_rel):  # pragma: no cover - compiled
    pred = inv_from + slope_from * span  # inverse depth predicted at the other end
    return pred > 0 and abs(inv_to / pred - 1.0) <= gap_rel + 1e-12  # |d_pred - d_to| / d_to


@numba.njit(cache=True, nogil=True)
def _axis(inv_a, slope_a, ka, inv_b, slope_b, kb, gap_rel):  # pragma: no cover - compiled
    """(estimate, span) along one axis from its two ends (k = 0: that end is missing; -1: beyond the limit)."""
    if ka < 0 or kb < 0:
        return 0.0, np.inf
    if ka > 0 and kb > 0:
        span = float(ka + kb)
        if _predicts(inv_a, slope_a, inv_b, span, gap_rel) or _predicts(inv_b, slope_b, inv_a, span, gap_rel):
            return 1.0 / ((inv_a * kb + inv_b * ka) / span), span  # one surface: inverse-depth interpolation
        return max(1.0 / inv_a, 1.0 / inv_b), span  # an occlusion edge: the far side
    if ka > 0 or kb > 0:
        inv_e, slope_e, k = (inv_a, slope_a, ka) if ka > 0 else (inv_b, slope_b, kb)
        pred = inv_e + slope_e * k
        if 0.5 * inv_e <= pred <= 2.0 * inv_e:
            return 1.0 / pred, 2.0 * k
        return 1.0 / inv_e, 2.0 * k
    return 0.0, np.inf


@numba.njit(cache=True, parallel=True, nogil=True)
def _fill_kernel(depth, valid, gap_rel, max_span, out):  # pragma: no cover - compiled
    H, W = depth.shape
    limit = int(min(max_span, H + W))
    # nearest valid pixel in each direction, by prefix scans (O(1) per hole pixel afterwards); -1 / H / W: none
    left = np.empty((H, W), np.int32)
    right = np.empty((H, W), np.int32)
    up = np.empty((H, W), np.int32)
    down = np.empty((H, W), np.int32)
    for y in numba.prange(H):
        last = -1
        for x in range(W):
            left[y, x] = last
            if valid[y, x]:
                last = x
        last = W
        for x in range(W - 1, -1, -1):
            right[y, x] = last
            if valid[y, x]:
                last = x
    for x in numba.prange(W):
        last = -1
        for y in range(H):
            up[y, x] = last
            if valid[y, x]:
                last = y
        last = H
        for y in range(H - 1, -1, -1):
            down[y, x] = last
            if valid[y, x]:
                last = y
    for y in numba.prange(H):
        for x in range(W):
            if valid[y, x]:
                out[y, x] = depth[y, x]
                continue
            kl = x - left[y, x] if left[y, x] >= 0 else 0
            kr = right[y, x] - x if right[y, x] < W else 0
            ku = y - up[y, x] if up[y, x] >= 0 else 0
            kd = down[y, x] - y if down[y, x] < H else 0
            il, sl, kl = _end(depth, valid, y, left[y, x], kl, 0, -1, H, W, limit)
            ir, sr, kr = _end(depth, valid, y, right[y, x], kr, 0, 1, H, W, limit)
            iu, su, ku = _end(depth, valid, up[y, x], x, ku, -1, 0, H, W, limit)
            idn, sd, kd = _end(depth, valid, down[y, x], x, kd, 1, 0, H, W, limit)
            est_h, span_h = _axis(il, sl, kl, ir, sr, kr, gap_rel)
            est_v, span_v = _axis(iu, su, ku, idn, sd, kd, gap_rel)
            est, span = (est_h, span_h) if span_h <= span_v else (est_v, span_v)
            out[y, x] = est if (span < np.inf and span <= max_span) else 0.0


@numba.njit(cache=True, nogil=True)
def _axis_span(ka, kb, limit):  # pragma: no cover - compiled
    """``_axis``'s span from the steps to the two ends alone (0: no end; beyond ``limit``: inf), so the pixel's
    axis is chosen before any end is read."""
    if ka > limit or kb > limit:
        return np.inf
    if ka > 0 and kb > 0:
        return float(ka + kb)
    if ka > 0 or kb > 0:
        return 2.0 * (ka if ka > 0 else kb)
    return np.inf


@numba.njit(cache=True, nogil=True)
def _end_inverse(depth, valid, ye, xe, dy, dx, H, W):  # pragma: no cover - compiled
    """``_end``'s (inverse depth, inverse-depth slope into the hole) of a valid end pixel (ye, xe) reached
    towards (dy, dx) (the same float64 arithmetic)."""
    inv_e = 1.0 / np.float64(depth[ye, xe])
    yf, xf = ye + SLOPE_BASELINE_PX * dy, xe + SLOPE_BASELINE_PX * dx
    slope = 0.0
    if 0 <= yf < H and 0 <= xf < W and valid[yf, xf]:
        slope = (inv_e - 1.0 / np.float64(depth[yf, xf])) / SLOPE_BASELINE_PX
    return inv_e, slope


@numba.njit(cache=True, nogil=True)
def _ends_join(inv_a, slope_a, inv_b, slope_b, span, gap_rel):  # pragma: no cover - compiled
    """``_axis``'s test of two ends ``span`` steps apart: (one surface, the far side's depth where not)."""
    if _predicts(inv_a, slope_a, inv_b, span, gap_rel) or _predicts(inv_b, slope_b, inv_a, span, gap_rel):
        return True, 0.0
    return False, max(1.0 / inv_a, 1.0 / inv_b)


@numba.njit(cache=True, nogil=True)
def _axis_at(inv_a, slope_a, ka, inv_b, slope_b, kb, span, one, far):  # pragma: no cover - compiled
    """``_axis``'s estimate for a hole ``ka`` and ``kb`` steps from its ends (0: none; at least one is there),
    given ``_ends_join``'s answer for two ends ``span`` (= ka + kb) apart."""
    if ka > 0 and kb > 0:
        if one:
            return 1.0 / ((inv_a * kb + inv_b * ka) / span)
        return far
    inv_e, slope_e, k = (inv_a, slope_a, ka) if ka > 0 else (inv_b, slope_b, kb)
    pred = inv_e + slope_e * k
    if 0.5 * inv_e <= pred <= 2.0 * inv_e:
        return 1.0 / pred
    return 1.0 / inv_e


@numba.njit(cache=True, nogil=True)
def _fill_rows_down(depth, valid_in, y0, y1, valid, up, holes, first, last):  # pragma: no cover - compiled
    """``_fill_kernel_fused``'s forward pass over rows ``y0 .. y1 - 1`` (a band), branch-free along each row
    (vectorised): the rows' validity, each hole's column's last valid row above it within the band (``up``, -1:
    none there), each row's holes; per column the band's first and last valid rows (``first``, ``last`` [W]:
    ``y1`` and -1 where none), from which the bands' passes learn what lies beyond their rows."""
    W = depth.shape[1]
    inf = np.inf
    for x in range(W):
        first[x] = y1
        last[x] = -1
    for y in range(y0, y1):
        n_valid = 0
        for x in range(W):
            d = depth[y, x]
            ok = valid_in[y, x] & (d > 0) & (d < inf)  # finite and positive (NaN fails both)
            valid[y, x] = ok
            up[y, x] = last[x]
            last[x] = y if ok else last[x]
            first[x] = y if ok & (first[x] == y1) else first[x]
            n_valid += np.int64(ok)
        holes[y] = W - n_valid


@numba.njit(cache=True, nogil=True)
def _fill_rows_up(depth, valid, gap_rel, max_span, y0, y1, up, holes, above, below, out):  # pragma: no cover
    """``_fill_kernel_fused``'s backward pass over rows ``y0 .. y1 - 1`` (a band): copies the rows' depths and
    fills their holes. ``above`` / ``below`` [W]: each column's last valid row above the band (-1: none) and first
    below it (H: none), for the holes whose vertical ends lie beyond the band."""
    H, W = depth.shape
    limit = int(min(max_span, H + W))
    col = below.copy()  # column x's next valid row below the row, H: none
    # per column, the vertical ends last read: inverse depths, slopes, one surface or not, the far side's depth;
    # keyed by the upper end's row vu (-1: none; -2: nothing read yet): the holes of a column with one upper end
    # have one lower end too (the pass meets no valid pixel between them)
    vu = np.full(W, -2, np.int32)
    v_inv_u = np.empty(W, np.float64)
    v_slope_u = np.empty(W, np.float64)
    v_inv_d = np.empty(W, np.float64)
    v_slope_d = np.empty(W, np.float64)
    v_one = np.empty(W, np.bool_)
    v_far = np.empty(W, np.float64)
    for y in range(y1 - 1, y0 - 1, -1):
        for x in range(W):
            col[x] = y if valid[y, x] else col[x]  # a hole's own column entry is left as it was: the row below's
            out[y, x] = depth[y, x]  # holes are written below
        left = holes[y]  # the row's holes not visited yet: the scan stops at its leftmost run
        x = W - 1
        while left > 0:
            if valid[y, x]:
                x -= 1
                continue
            a = x  # the hole run [a, x]: valid pixels (or the borders) at a - 1 and x + 1
            while a > 0 and not valid[y, a - 1]:
                a -= 1
            lf, rt = a - 1, x + 1
            h_read = False  # the run's horizontal ends, read at its first hole that takes that axis
            inv_l = slope_l = inv_r = slope_r = far_h = 0.0
            one_h = False
            for hx in range(a, x + 1):
                u, dn = up[y, hx], col[hx]
                u = u if u >= 0 else above[hx]  # none in the band: the last one above it
                kl = hx - lf if lf >= 0 else 0
                kr = rt - hx if rt < W else 0
                ku = y - u if u >= 0 else 0
                kd = dn - y if dn < H else 0
                span_h = _axis_span(kl, kr, limit)
                span_v = _axis_span(ku, kd, limit)
                span = span_h if span_h <= span_v else span_v
                if not (span < np.inf and span <= max_span):
                    out[y, hx] = 0.0
                    continue
                # the chosen axis's ends lie within ``limit`` (else its span is inf): ``_end``'s k is the step
                if span_h <= span_v:
                    if not h_read:
                        h_read = True
                        if kl > 0:
                            inv_l, slope_l = _end_inverse(depth, valid, y, lf, 0, -1, H, W)
                        if kr > 0:
                            inv_r, slope_r = _end_inverse(depth, valid, y, rt, 0, 1, H, W)
                        if kl > 0 and kr > 0:
                            one_h, far_h = _ends_join(inv_l, slope_l, inv_r, slope_r, float(kl + kr), gap_rel)
                    est = _axis_at(inv_l, slope_l, kl, inv_r, slope_r, kr, span_h, one_h, far_h)
                else:
                    if vu[hx] != u:
                        vu[hx] = u
                        if ku > 0:
                            v_inv_u[hx], v_slope_u[hx] = _end_inverse(depth, valid, u, hx, -1, 0, H, W)
                        if kd > 0:
                            v_inv_d[hx], v_slope_d[hx] = _end_inverse(depth, valid, dn, hx, 1, 0, H, W)
                        if ku > 0 and kd > 0:
                            v_one[hx], v_far[hx] = _ends_join(v_inv_u[hx], v_slope_u[hx], v_inv_d[hx],
                                                              v_slope_d[hx], float(ku + kd), gap_rel)
                    est = _axis_at(v_inv_u[hx], v_slope_u[hx], ku, v_inv_d[hx], v_slope_d[hx], kd, span_v,
                                   v_one[hx], v_far[hx])
                out[y, hx] = est
            left -= x + 1 - a
            x = a - 2  # a - 1 is valid (or the border)


@numba.njit(cache=True, nogil=True)
def _fill_kernel_fused(depth, valid_in, gap_rel, max_span, n_threads, out):  # pragma: no cover - compiled
    """``_fill_in_bands`` in as many bands as ``n_threads`` (the caller's numba threads, passed in: a kernel that
    asks numba for them is not cached on disk) make worth it (``_fill_bands``)."""
    _fill_in_bands(depth, valid_in, gap_rel, max_span, _fill_bands(depth.shape[0], n_threads), out)


@numba.njit(cache=True, nogil=True, parallel=True)
def _fill_in_bands(depth, valid_in, gap_rel, max_span, n_bands, out):  # pragma: no cover - compiled
    """``_fill_kernel`` in two row-major passes and one axis per hole. Each pass first runs over a whole row
    branch-free (vectorised): the forward pass makes the row's validity and keeps each column's last valid row
    above it, the backward pass each column's next valid row below it and copies the row's depths; only then are
    the row's holes visited, run by run, and filled. A hole's two spans depend on its ends' steps only, so only
    the winning axis's ends are read, and a hole no axis reaches within ``max_span`` costs nothing more. An end's
    inverse depth and slope, and whether an axis's two ends are one surface (its span is the same for every hole
    between them), belong to the ends, not the hole: they are made once per horizontal run, and once per vertical
    pair of ends, kept per column while the pass walks up through the holes they bound (the divisions were most
    of a hole's cost). ``depth`` [H, W] any float dtype (inverse depths in float64 as ``_fill_kernel``), ``out``
    [H, W] float32 (each value rounded once, as ``_fill_kernel``'s float64 out then ``astype``). Same bits as
    ``_fill_kernel`` (tested).

    Each pass runs on ``n_bands`` bands of rows at once (the backward one once the forward one has made every
    band's validity: ends lie in other bands). A band's passes know the columns beyond its rows only from the
    other bands' first and last valid rows, made in between, so a hole's ends are the same rows whatever the
    bands; each hole's estimate is made from its ends alone (the per-column reads are a cache of the same
    arithmetic), so the fill is the same bits however many bands: frames do not depend on the number of threads
    (tests/test_frame_kernel_bands.py)."""
    H, W = depth.shape
    valid = np.empty((H, W), np.bool_)
    up = np.empty((H, W), np.int32)  # [y, x]: column x's last valid row above y in y's band, -1: none (holes only)
    holes = np.empty(H, np.int64)  # holes in each row
    first = np.empty((n_bands, W), np.int32)  # per band and column: its first valid row (the band's end: none)
    last = np.empty((n_bands, W), np.int32)  # and its last (-1: none)
    for b in numba.prange(n_bands):
        _fill_rows_down(depth, valid_in, b * H // n_bands, (b + 1) * H // n_bands, valid, up, holes, first[b],
                        last[b])
    above = np.empty((n_bands, W), np.int32)  # per band and column: the last valid row above the band, -1: none
    below = np.empty((n_bands, W), np.int32)  # the first one below it, H: none
    for x in range(W):
        above[0, x] = -1
        below[n_bands - 1, x] = H
    for b in range(1, n_bands):
        for x in range(W):
            above[b, x] = last[b - 1, x] if last[b - 1, x] >= 0 else above[b - 1, x]
    for b in range(n_bands - 2, -1, -1):
        y_end = (b + 2) * H // n_bands  # band b + 1's end: its ``first`` where it has none
        for x in range(W):
            below[b, x] = first[b + 1, x] if first[b + 1, x] < y_end else below[b + 1, x]
    for b in numba.prange(n_bands):
        _fill_rows_up(depth, valid, gap_rel, max_span, b * H // n_bands, (b + 1) * H // n_bands, up, holes,
                      above[b], below[b], out)


@numba.njit(cache=True, nogil=True)
def _fill_bands(h, n_threads):  # pragma: no cover - compiled
    """The bands of rows ``_fill_kernel_fused`` splits ``h`` rows into for ``n_threads`` threads: one per thread,
    each at least 16 rows (a band costs a few passes over a row on top of its rows)."""
    return max(1, min(n_threads, h // 16))


def fill_holes_background(
    depth_m: np.ndarray,  # [H, W] float32 z-depth
    valid: np.ndarray,  # [H, W] bool, True where depth_m is known
    gap_rel: float = 0.05,
    max_span_px: int | None = None,
) -> np.ndarray:
    """Fill the unknown pixels of a depth map, preferring the far side at occlusion edges (rule above).

    Returns ``[H, W]`` float32: ``depth_m`` where ``valid``, the fill elsewhere, 0 where nothing can be inferred.
    Compiled: running scans find every hole pixel's nearest known pixel on each axis (``_fill_kernel_fused``; the
    earlier prefix-scan kernel ``_fill_kernel`` and the plainly written ``_reference_fill_holes_background`` are
    the same rule, and the tests compare all three).
    """
    depth = np.ascontiguousarray(depth_m)
    if depth.dtype not in (np.float32, np.float64):
        depth = depth.astype(np.float64)
    if depth.ndim != 2 or np.shape(valid) != depth.shape:
        raise InvalidInputError(f"fill_holes_background needs [H, W] depth and valid of one shape, got "
                                f"{depth.shape} and {np.shape(valid)}")
    out = np.empty(depth.shape, np.float32)
    _fill_kernel_fused(depth, np.ascontiguousarray(valid, dtype=bool), float(gap_rel),
                       np.inf if max_span_px is None else float(max_span_px), numba.get_num_threads(), out)
    return out


def _fill_holes_background_scans(depth_m: np.ndarray, valid: np.ndarray, gap_rel: float = 0.05,
                                 max_span_px: int | None = None) -> np.ndarray:
    """``fill_holes_background`` through the former kernel (four prefix-scan arrays, both axes per hole): tests
    compare it with the fused kernel bit for bit."""
    depth = np.ascontiguousarray(depth_m, dtype=np.float64)
    valid = np.ascontiguousarray(np.asarray(valid, dtype=bool) & np.isfinite(depth) & (depth > 0))
    out = np.zeros(depth.shape, np.float64)
    _fill_kernel(depth, valid, float(gap_rel), np.inf if max_span_px is None else float(max_span_px), out)
    return out.astype(np.float32)


def _reference_fill_holes_background(
    depth_m: np.ndarray, valid: np.ndarray, gap_rel: float = 0.05, max_span_px: int | None = None
) -> np.ndarray:
    """Slow, plainly written version of ``fill_holes_background`` (per-pixel walks), for tests."""
    depth = np.asarray(depth_m, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool) & np.isfinite(depth) & (depth > 0)
    H, W = depth.shape
    out = np.where(valid, depth, 0.0)

    def walk(y: int, x: int, dy: int, dx: int) -> tuple[float, float, int] | None:
        """First valid pixel from (y, x) in direction (dy, dx): (depth, inverse-depth slope into the hole, steps)."""
        k = 1
        while 0 <= y + k * dy < H and 0 <= x + k * dx < W:
            ye, xe = y + k * dy, x + k * dx
            if valid[ye, xe]:
                yf, xf = ye + SLOPE_BASELINE_PX * dy, xe + SLOPE_BASELINE_PX * dx
                slope = 0.0
                if 0 <= yf < H and 0 <= xf < W and valid[yf, xf]:
                    slope = (1.0 / depth[ye, xe] - 1.0 / depth[yf, xf]) / SLOPE_BASELINE_PX
                return float(depth[ye, xe]), slope, k
            k += 1
        return None

    def plane_predicts(d_from: float, slope: float, d_to: float, span: int) -> bool:
        pred_inv = 1.0 / d_from + slope * span
        return pred_inv > 0 and abs((1.0 / pred_inv) - d_to) / d_to <= gap_rel + 1e-12

    def axis(a, b) -> tuple[float, float]:
        if a is not None and b is not None:
            (da, sa, ka), (db, sb, kb) = a, b
            span = ka + kb
            if plane_predicts(da, sa, db, span) or plane_predicts(db, sb, da, span):
                return 1.0 / ((kb / da + ka / db) / span), span
            return max(da, db), span
        for end in (a, b):
            if end is not None:
                d, slope, k = end
                pred_inv = 1.0 / d + slope * k
                if 0.5 / d <= pred_inv <= 2.0 / d:
                    return 1.0 / pred_inv, 2 * k
                return d, 2 * k
        return 0.0, math.inf

    for y in range(H):
        for x in range(W):
            if valid[y, x]:
                continue
            est_h, span_h = axis(walk(y, x, 0, -1), walk(y, x, 0, 1))
            est_v, span_v = axis(walk(y, x, -1, 0), walk(y, x, 1, 0))
            est, span = (est_h, span_h) if span_h <= span_v else (est_v, span_v)
            if math.isfinite(span) and (max_span_px is None or span <= max_span_px):
                out[y, x] = est
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Depth-model alignment
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleShift:
    scale: float
    shift: float
    num_fitted: int  # pixels in the final (trimmed) fit
    rms_residual: float  # over those pixels, in the target's units


def align_scale_shift(
    source: np.ndarray,  # [H, W] the model's output (depth or disparity, any affine-invariant scale)
    target: np.ndarray,  # [H, W] what to match (rendered depth, or its inverse for disparity)
    mask: np.ndarray,  # [H, W] bool, True = pixel may be used for fitting
    percentile_range: tuple[float, float] = (2.0, 98.0),
    trim_fraction: float = 0.2,
    iterations: int = 3,
) -> ScaleShift:
    """Robust least-squares ``target ~ scale * source + shift``.

    Percentile-limited then trimmed: pixels whose source or target lies outside ``percentile_range`` are never
    fitted (FlexWorld's ``refine_depth`` matches the 10-90 percentile range), then an ordinary LS fit is repeated
    ``iterations`` times, each time on the ``1 - trim_fraction`` pixels with the smallest absolute residual of the
    previous fit (the trimmed scale/shift alignment of MoGe/DUSt3R depth to a known reference that GEN3C and
    Voyager use). Raises ``InvalidInputError`` when fewer than 2 distinct pixels remain.
    """
    s = np.asarray(source, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    m = np.asarray(mask, dtype=bool) & np.isfinite(s) & np.isfinite(t)
    x, y = s[m], t[m]
    if x.size >= 2:
        lo, hi = percentile_range
        xl, xh = np.percentile(x, [lo, hi])
        yl, yh = np.percentile(y, [lo, hi])
        keep = (x >= xl) & (x <= xh) & (y >= yl) & (y <= yh)
        x, y = x[keep], y[keep]
    if x.size < 2 or np.ptp(x) <= 0:
        raise InvalidInputError(f"cannot align depth: {x.size} usable pixels with no spread in the model output")

    def fit(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
        A = np.stack([xs, np.ones_like(xs)], axis=1)
        (a, b), *_ = np.linalg.lstsq(A, ys, rcond=None)
        return float(a), float(b)

    a, b = fit(x, y)
    x_fit, y_fit = x, y
    n_keep = max(2, int(math.ceil((1.0 - trim_fraction) * x.size)))
    for _ in range(iterations):
        idx = np.argpartition(np.abs(a * x + b - y), n_keep - 1)[:n_keep]  # the best-fitting pixels
        if np.ptp(x[idx]) <= 0:
            break
        x_fit, y_fit = x[idx], y[idx]
        a, b = fit(x_fit, y_fit)
    rms = float(np.sqrt(np.mean((a * x_fit + b - y_fit) ** 2)))
    return ScaleShift(a, b, int(x_fit.size), rms)


def align_model_depth(
    model_depth: np.ndarray,  # [H, W] model output: depth (relative or metric) or disparity (config says)
    rendered_depth_m: np.ndarray,  # [H, W] float32
    fit_mask: np.ndarray,  # [H, W] bool, True = rendered depth known and pixel static
    config: "UpdateConfig",
) -> np.ndarray | None:
    """The model's output in metres, aligned to the render (0 where the model gives <= 0, its "unknown");
    ``None`` when too few pixels allow a fit."""
    model = np.asarray(model_depth, dtype=np.float64)
    known = np.isfinite(model) & (model > 0)
    fit_mask = fit_mask & known
    if int(fit_mask.sum()) < config.min_align_pixels:
        return None
    if config.model_depth_is_disparity:
        with np.errstate(divide="ignore"):
            target = np.where(rendered_depth_m > 0, 1.0 / rendered_depth_m, 0.0)
    else:
        target = rendered_depth_m.astype(np.float64)
    try:
        fitm = align_scale_shift(
            model, target, fit_mask, config.align_percentile_range, config.align_trim_fraction, config.align_iterations
        )
    except InvalidInputError:
        return None
    aligned = fitm.scale * model + fitm.shift
    if config.model_depth_is_disparity:
        with np.errstate(divide="ignore"):
            aligned = np.where(aligned > 0, 1.0 / aligned, 0.0)
    aligned = np.where(known & np.isfinite(aligned) & (aligned > 0), aligned, 0.0)
    return aligned.astype(np.float32)


def depth_for_generated_frame(
    rendered: RenderArg,  # the memory rendered at the frame's pose
    generated_rgb: np.ndarray,  # [H, W, 3] uint8, the generated frame
    generator_depth: np.ndarray | None = None,  # [H, W] float32 metres, 0 = unknown
    model_depth: np.ndarray | None = None,  # [H, W] a depth model's output on generated_rgb (relative or metric)
    dynamic: np.ndarray | None = None,  # [H, W] bool, True = dynamic entity
    config: UpdateConfig = UpdateConfig(),
) -> np.ndarray:
    """Depth (``[H, W]`` float32 z-depth metres, 0 = unknown) to integrate ``generated_rgb`` with.

    Priority: the generator's depth when given (it knows what it drew, dynamic entities included). Otherwise the
    memory's rendered depth where it is valid (the frame was generated to agree with the memory there); the holes
    take the depth model's output aligned to the render (robust scale/shift, ``align_scale_shift``; fitted on static
    rendered pixels only, since a dynamic entity stands in front of the rendered static background), or, without a
    model or when the alignment is impossible, the background-preferring fill (``fill_holes_background``).
    """
    return _choose_depth(rendered, generated_rgb, generator_depth, model_depth, dynamic, config)[0]


_NO_MASK = np.zeros((0, 0), bool)  # ``_seen_through_mask``: no such mask


@numba.njit(cache=True, nogil=True)
def _seen_through_mask(valid, depth, r_depth, keep_rel, margin, dyn, prov_px, out):  # pragma: no cover - compiled
    """``out = valid & (depth > 0) & (r_depth < depth * keep_rel - margin) & ~dyn & ~prov_px`` (float32 arithmetic,
    as numpy does it; an empty ``dyn`` / ``prov_px`` is no mask) in one pass; returns whether any is True."""
    h, w = valid.shape
    use_dyn = dyn.shape[0] > 0
    use_prov = prov_px.shape[0] > 0
    found = False
    for y in range(h):
        for x in range(w):
            d = depth[y, x]
            t = valid[y, x] and d > 0 and r_depth[y, x] < d * keep_rel - margin
            if t and use_dyn and dyn[y, x]:
                t = False
            if t and use_prov and prov_px[y, x]:
                t = False
            out[y, x] = t
            found |= t
    return found


def _reference_seen_through_mask(valid, depth, r_depth, rel, dyn, prov_px) -> np.ndarray:
    """``_seen_through_mask`` as numpy did it in ``update_memory``."""
    margin = np.float32(SEEN_THROUGH_MARGIN_M)
    through = valid & (depth > 0) & (r_depth < depth * np.float32(1.0 - rel) - margin)
    if dyn is not None:
        through &= ~dyn
    if prov_px is not None:
        through &= ~prov_px
    return through


@numba.njit(cache=True, nogil=True)
def _known_depth(depth, out):  # pragma: no cover - compiled
    """``out`` = ``depth`` where finite and > 0, else 0 (both float32 [H, W], C order); True if a NaN was met. One
    pass for what took seven numpy passes over the frame (a copy, the NaN test, the mask, the select, a copy)."""
    src = depth.ravel()
    dst = out.ravel()
    nan = False
    for i in range(src.shape[0]):
        z = src[i]
        if z != z:
            nan = True
        dst[i] = z if z > 0 and z < np.inf else np.float32(0.0)
    return nan


def _reference_known_depth(depth: np.ndarray) -> np.ndarray:
    """``_known_depth`` in numpy, as ``_choose_depth`` computed it before (NaN checked by the caller)."""
    gen = np.asarray(depth).astype(np.float32)
    return np.where(np.isfinite(gen) & (gen > 0), gen, 0.0).astype(np.float32)


def _choose_depth(
    rendered: RenderArg,
    generated_rgb: np.ndarray,
    generator_depth: np.ndarray | None,
    model_depth: np.ndarray | None,
    dynamic: np.ndarray | None,
    config: UpdateConfig,
) -> tuple[np.ndarray, str]:
    """``depth_for_generated_frame`` plus where the depth came from: "generator", "memory", "memory+model",
    "memory+fill", or "memory (holes unknown)" when the holes could not be filled."""
    rgb = _check_image(generated_rgb, "generated_rgb")
    shape = rgb.shape[:2]
    if generator_depth is not None:  # ``_check_map``'s checks, and the known depth, in one compiled pass
        gen = np.asarray(generator_depth)
        if gen.shape != shape:
            raise InvalidInputError(f"generator_depth must be {list(shape)}, got {list(gen.shape)}")
        gen = np.ascontiguousarray(gen, dtype=np.float32)
        out = np.empty(shape, np.float32)
        if _known_depth(gen, out):
            raise InvalidInputError("generator_depth contains NaN (use 0 for unknown depth)")
        return out, "generator"
    _, depth, valid = _unpack_render(rendered, shape)
    model = _check_map(model_depth, shape, "model_depth", float)
    dyn = _check_map(dynamic, shape, "dynamic", bool)
    out = np.where(valid, depth, 0.0).astype(np.float32)
    if valid.all():
        return out, "memory"
    if model is not None:
        fit_mask = valid if dyn is None else valid & ~dyn
        aligned = align_model_depth(model, depth, fit_mask, config)
        if aligned is not None:
            return np.where(valid, depth, aligned).astype(np.float32), "memory+model"
    if config.fill_holes and valid.mean() >= config.min_valid_fraction:
        return fill_holes_background(depth, valid, config.fill_depth_gap_rel, config.max_fill_span_px), "memory+fill"
    return out, "memory (holes unknown)"


# ---------------------------------------------------------------------------------------------------------------
# Pose refinement
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoseRefinement:
    """Outcome of refining a generated frame's pose against the memory."""

    c2w: np.ndarray  # [4, 4] refined pose when accepted, else exactly c2w_init
    accepted: bool
    rotation_deg: float  # size of the proposed correction (also when rejected; nan when odometry failed)
    translation_m: float
    fitness: float  # correspondences / memory-render pixels handed to the odometry
    num_correspondences: int
    residual_before: float  # photometric RMS (intensity 0..1) of the memory render warped into the frame, at init
    residual_after: float  # the same at the proposed pose
    ncc_after: float  # intensity correlation of render and frame at the proposed pose (nan when not computed)
    reason: str  # "ok" or why it was rejected


def refine_pose(
    memory_render: RenderArg,  # the memory rendered at c2w_init
    frame_rgb: np.ndarray,  # [H, W, 3] uint8, the generated frame
    frame_depth: np.ndarray | None,  # [H, W] float32 metres when the frame has its own depth, else None
    intrinsics: Intrinsics,
    c2w_init: np.ndarray,  # [4, 4] the commanded pose of the frame
    config: UpdateConfig = UpdateConfig(),
) -> PoseRefinement:
    """Where was the frame really taken? Dense RGB-D odometry from the memory render to the frame.

    Source = the memory render at ``c2w_init`` (its depth is the memory's geometry, exact in that camera), target =
    the frame. With ``frame_depth`` (and ``config.odometry_use_depth_term``) Open3D's hybrid photometric + depth
    term is used on both depths minus the pixels near depth edges; without it the photometric term alone, with
    the rendered depth standing in for the frame's only to gate correspondences (a looser gate). Odometry gives
    ``T`` with ``p_frame = T p_render``, so the frame's pose is ``c2w_init @ inv(T)``.

    Pass the render's splat-centre pixels only as valid (``splat_centre_mask``): splat copies bias the result.

    Rejected (``c2w_init`` returned, ``accepted=False``) when the memory covers too little of the frame, Open3D
    reports failure, the correction exceeds the configured bounds, too few pixels correspond, the photometric
    residual does not decrease (divergence) or the render and the frame do not correlate at the refined pose.
    """
    c2w_init = validate_pose(c2w_init, "c2w_init")
    frame_rgb = _check_image(frame_rgb, "frame_rgb")
    shape = (intrinsics.height, intrinsics.width)
    if frame_rgb.shape[:2] != shape:
        raise InvalidInputError(f"frame is {frame_rgb.shape[1]}x{frame_rgb.shape[0]}, camera is {shape[1]}x{shape[0]}")
    r_rgb, r_depth, r_valid = _unpack_render(memory_render, shape)
    f_depth = _check_map(frame_depth, shape, "frame_depth", float)
    src_depth = np.where(r_valid, r_depth, 0.0).astype(np.float32)
    n_src = int(r_valid.sum())

    def reject(reason: str, rot: float = math.nan, trans: float = math.nan, fit: float = 0.0, n: int = 0,
               before: float = math.nan, after: float = math.nan, ncc: float = math.nan) -> PoseRefinement:
        return PoseRefinement(c2w_init.copy(), False, rot, trans, fit, n, before, after, ncc, reason)

    if n_src < max(1, config.min_valid_fraction * r_valid.size):
        return reject(f"memory covers {n_src / r_valid.size:.1%} of the frame (< {config.min_valid_fraction:.0%})")
    use_depth_term = config.odometry_use_depth_term and f_depth is not None
    if use_depth_term:
        tgt_depth = np.where(
            depth_edge_free(f_depth, config.depth_edge_window_px, config.depth_edge_rel_jump), f_depth, 0.0
        ).astype(np.float32)
        odo_src_depth = np.where(
            depth_edge_free(src_depth, config.depth_edge_window_px, config.depth_edge_rel_jump), src_depth, 0.0
        ).astype(np.float32)
    else:
        tgt_depth = f_depth if f_depth is not None else src_depth
        odo_src_depth = src_depth
    odo = rgbd_odometry(
        r_rgb, odo_src_depth, frame_rgb, tgt_depth, intrinsics,
        use_depth_term=use_depth_term,
        iterations_per_level=tuple(config.odometry_iterations),
        depth_diff_max_m=config.odometry_depth_diff_max_m if f_depth is not None else config.odometry_render_gate_m,
    )
    before = photometric_residual(r_rgb, src_depth, frame_rgb, intrinsics, np.eye(4)).rmse
    if not odo.success or not np.all(np.isfinite(odo.source_to_target)):
        return reject("odometry failed to converge", before=before)
    c2w_new = c2w_init @ invert_pose(odo.source_to_target)
    rot = rotation_angle_deg(c2w_init, c2w_new)
    trans = translation_distance_m(c2w_init, c2w_new)
    fitness = odo.num_correspondences / max(1, int((odo_src_depth > 0).sum()))
    after_check = photometric_residual(r_rgb, src_depth, frame_rgb, intrinsics, odo.source_to_target)
    after = after_check.rmse
    args = dict(rot=rot, trans=trans, fit=fitness, n=odo.num_correspondences, before=before, after=after,
                ncc=after_check.ncc)
    if rot > config.max_refine_rotation_deg or trans > config.max_refine_translation_m:
        return reject(
            f"correction {rot:.2f} deg / {trans:.3f} m exceeds the bounds "
            f"{config.max_refine_rotation_deg} deg / {config.max_refine_translation_m} m", **args
        )
    if fitness < config.min_refine_fitness or after_check.overlap_fraction < config.min_refine_fitness:
        return reject(f"too few inliers: fitness {fitness:.2f} < {config.min_refine_fitness}", **args)
    if not after <= (1.0 - config.min_refine_gain) * before:
        return reject(
            f"diverged or no clear gain: photometric residual {before:.4f} -> {after:.4f} "
            f"(needs a drop of {config.min_refine_gain:.0%})", **args
        )
    if after_check.ncc < config.min_refine_ncc:
        return reject(
            f"frame does not match the memory: intensity correlation {after_check.ncc:.2f} < {config.min_refine_ncc}",
            **args,
        )
    return PoseRefinement(
        c2w_new, True, rot, trans, fitness, odo.num_correspondences, before, after, after_check.ncc, "ok"
    )


# ---------------------------------------------------------------------------------------------------------------
# The update loop
# ---------------------------------------------------------------------------------------------------------------


def splat_centre_mask(
    point_ids: np.ndarray,  # [H, W] int, index into positions, -1 where nothing rendered (RenderResult.point_ids)
    positions: np.ndarray,  # [N, 3] world frame, ``memory.positions`` read AFTER the render (it may re-sort)
    intrinsics: Intrinsics,
    c2w: np.ndarray,  # [4, 4] the pose the render was made at
) -> np.ndarray:
    """``[H, W]`` bool, True where the rendered point projects inside the pixel itself.

    The memory renders a point as a square splat of several pixels where it is near; the z-buffer then lets a
    near point cover its farther neighbours on a slanted surface, which shifts colours by a pixel towards the far
    side -- a bias that pose refinement would follow (measured: ~1.5 cm at 3 m on the test scene). Splat copies
    carry no information the centre pixel lacks, so refinement uses only the centre pixels.
    """
    ids = np.asarray(point_ids)
    shown = ids >= 0
    ys, xs = np.nonzero(shown)
    uv, z = project_points(np.asarray(positions)[ids[shown]], intrinsics, validate_pose(c2w, "c2w"))
    with np.errstate(invalid="ignore"):
        home = (z > 0) & (np.floor(uv[:, 0]) == xs) & (np.floor(uv[:, 1]) == ys)
    out = np.zeros(ids.shape, dtype=bool)
    out[ys[home], xs[home]] = True
    return out


@numba.njit(cache=True, nogil=True)
def _pinholes_kernel(valid, rd, z, depth_rel, max_gap, out):  # pragma: no cover - compiled
    H, W = valid.shape
    g = max_gap
    # ``valid`` copied into a flat frame with a border of g unrendered pixels: a walk of at most g steps from an
    # image pixel then never leaves it, so each step is one load with no bounds test (the four compares a step
    # made the walks most of the kernel's time on a keyframe, whose hole pixels are few)
    Wp = W + 2 * g
    vp = np.zeros((H + 2 * g) * Wp, np.bool_)
    for y in range(H):
        row = (y + g) * Wp + g
        for x in range(W):
            vp[row + x] = valid[y, x]
    # one direction of each opposite pair, as a step in the flat frame: (0, 1), (1, 0), (1, 1), (1, -1) in (dy, dx)
    steps = np.array([1, Wp, Wp + 1, Wp - 1], np.int64)
    for y in range(H):
        row = (y + g) * Wp + g
        for x in range(W):
            zc = z[y, x]
            if valid[y, x] or not zc > 0:
                continue
            c = row + x
            for d in range(4):
                s = steps[d]
                # the nearest rendered pixel within max_gap steps each way (k = 0: none). The other side is looked
                # for only when this one has a pixel, and only as far as a gap of max_gap allows (ka + kb - 1 <=
                # max_gap): the same pixels found, without the second walk inside a wide hole
                ka = 0
                for k in range(1, g + 1):
                    if vp[c + k * s]:
                        ka = k
                        break
                if ka == 0:
                    continue
                kb = 0
                for k in range(1, g + 2 - ka):
                    if vp[c - k * s]:
                        kb = k
                        break
                if kb == 0:
                    continue
                pa, pb = c + ka * s, c - kb * s  # back to image pixels
                da = np.float64(rd[pa // Wp - g, pa % Wp - g])
                db = np.float64(rd[pb // Wp - g, pb % Wp - g])
                lo, hi = min(da, db), max(da, db)
                if lo > 0 and lo * (1.0 - depth_rel) <= zc <= hi * (1.0 + depth_rel):
                    out[y, x] = True
                    break


def pinholes(
    valid: np.ndarray,  # [H, W] bool, True where the memory rendered a point
    rendered_depth_m: np.ndarray,  # [H, W] float32, the render's depth (read where valid)
    depth_m: np.ndarray,  # [H, W] float32, the depth the frame is integrated with, 0 = unknown
    depth_rel: float,
    max_gap_px: int = 2,
) -> np.ndarray:
    """``[H, W]`` bool, True at a hole pixel (not ``valid``, depth known) inside a gap of at most ``max_gap_px``
    pixels between two rendered pixels on opposite sides (along a row, a column or a diagonal: the nearest rendered
    pixel in each of the two opposite directions, ``ka + kb - 1 <= max_gap_px`` pixels of gap), with its depth
    inside ``[min * (1 - depth_rel), max * (1 + depth_rel)]`` of their two depths: a small gap in a surface the
    memory holds at about the pixel's spacing (``UpdateConfig.pinhole_depth_rel``). A numba kernel (the numpy
    version took 20 ms at 320x180 on the loaded machine); ``tests/test_bounded_memory.py`` checks it against a
    pixel-by-pixel Python reference."""
    valid = np.ascontiguousarray(valid, dtype=bool)
    rd = np.ascontiguousarray(rendered_depth_m, dtype=np.float32)
    z = np.ascontiguousarray(depth_m, dtype=np.float32)
    if rd.shape != valid.shape or z.shape != valid.shape:
        raise InvalidInputError(f"pinholes needs equal [H, W] maps, got valid {valid.shape}, rendered depth "
                                f"{rd.shape}, depth {z.shape}")
    if int(max_gap_px) < 1:
        raise InvalidInputError(f"max_gap_px must be >= 1, got {max_gap_px}")
    out = np.zeros(valid.shape, bool)
    _pinholes_kernel(valid, rd, z, float(depth_rel), int(max_gap_px), out)
    return out


class MemoryLike(Protocol):
    """The part of ``world.memory.SpatialMemory`` the update uses."""

    @property
    def positions(self) -> np.ndarray: ...  # [N, 3] world frame

    @property
    def num_points(self) -> int: ...

    def keys_of_points(self, ids: np.ndarray) -> np.ndarray: ...  # voxel_keys[ids]

    def render(self, intrinsics: Intrinsics, c2w: np.ndarray, return_point_ids: bool = False) -> Any: ...

    def integrate(self, rgb: np.ndarray, depth_m: np.ndarray, intrinsics: Intrinsics, c2w: np.ndarray,
                  frame_index: int, exclude_mask: np.ndarray | None = None, refresh_existing: bool = True,
                  provenance: int = 0) -> Any: ...

    def remove_invented_seen_through(self, ids: np.ndarray, intrinsics: Intrinsics, c2w: np.ndarray,
                                     depth_m: np.ndarray, rel: float) -> np.ndarray: ...  # removed voxel keys


def load_update_kernels() -> None:
    """Load ``keys_in``, ``_known_depth``, ``_seen_through_mask`` and ``_valid_depth`` for the types ``update_memory`` calls them
    with, without running them (numba's ``compile`` with a signature loads a kernel from the disk cache, else
    compiles it): a first call in a
    process otherwise loaded it on the world's thread, inside the first keyframe (that took points away). The engine
    runs this off the frame path when it opens a world (``world.engine``)."""
    keys_t = numba.typeof(np.zeros(0, np.int64))
    keys_in.compile((keys_t, keys_t))
    depth_t = numba.typeof(np.zeros((1, 1), np.float32))
    _known_depth.compile((depth_t, depth_t))  # (every integrated frame with a generator's depth)
    mask_t = numba.typeof(np.zeros((1, 1), bool))
    _valid_depth.compile((mask_t, depth_t))
    f32_t = numba.typeof(np.float32(0))
    _seen_through_mask.compile((mask_t, depth_t, depth_t, f32_t, f32_t, mask_t, mask_t, mask_t))


# A ``world.depth.DepthEstimator`` (``.estimate(rgb, intrinsics).depth_m``) or a plain callable
# rgb [H, W, 3] uint8 -> [H, W] depth-like output (relative or metric; disparity when the config says so).
DepthModel = Union[DepthEstimator, Callable[[np.ndarray], np.ndarray]]


def _run_depth_model(depth_model: DepthModel, rgb: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    if isinstance(depth_model, DepthEstimator):
        return np.asarray(depth_model.estimate(rgb, intrinsics).depth_m, dtype=np.float32)
    return np.asarray(depth_model(rgb), dtype=np.float32)


@dataclass(frozen=True)
class FrameUpdate:
    """What happened to one generated frame."""

    frame_index: int
    integrated: bool
    depth_source: str  # see ``_choose_depth``; "none" when the frame was skipped
    coverage: float  # fraction of pixels the memory rendered at the final pose
    new_points: int
    updated_points: int
    dynamic_pixels: int  # pixels excluded from integration as dynamic
    refinement: PoseRefinement | None  # None when refinement was off or the frame was skipped
    reason: str  # "ok" or why the frame was skipped
    # For the frame history, when the frame was integrated: the depth it was integrated with ([H, W] float32) and
    # the voxel keys it sees afterwards (sorted unique int64: the points the memory rendered before plus the ones
    # it added). Saves the caller a second render of the same pose.
    depth_m: np.ndarray | None = None
    voxel_keys: np.ndarray | None = None


@dataclass
class UpdateReport:
    poses_refined: np.ndarray  # [N, 4, 4] float64: refined where accepted, else the input pose
    accepted: np.ndarray  # [N] bool, True where a pose refinement was accepted
    new_points: int
    updated_points: int
    frames: list[FrameUpdate] = field(default_factory=list)


def update_memory(
    memory: MemoryLike,
    frames: np.ndarray,  # [N, H, W, 3] uint8 generated frames
    c2w: np.ndarray,  # [N, 4, 4] the poses they were generated for, world frame
    intrinsics: Intrinsics,
    frame_indices: Sequence[int],  # [N] global frame indices (recorded per point as first/last seen)
    generator_depth: np.ndarray | None = None,  # [N, H, W] float32 metres, 0 = unknown
    dynamic: np.ndarray | None = None,  # [N, H, W] bool, True = dynamic entity: never written to memory
    depth_model: DepthModel | None = None,
    config: UpdateConfig = UpdateConfig(),
    memory_renders: Sequence[Any] | None = None,  # [N] renders at c2w[i] with point ids, or None (see below)
    provenance: int | Sequence[int] = INVENTED_FINAL,
    memory_render_keys: Sequence[np.ndarray | None] | None = None,  # [N] voxel keys of memory_renders, or None
    provisional_px: np.ndarray | None = None,  # [N, H, W] bool, True = a coarse fill's pixel: never written
) -> UpdateReport:
    """Fold generated frames into the memory, in order (each frame sees what the previous ones added).

    The frames whose ``frame_indices`` are multiples of ``config.integrate_stride`` are processed: render the
    memory at its pose, refine the pose (when enabled and the memory covers enough of the frame), re-render at the
    refined pose, choose the depth (``depth_for_generated_frame``), integrate with ``exclude_mask = dynamic``.
    Other frames keep their pose.

    ``memory_renders``: ``SpatialMemory.render(..., return_point_ids=True)`` results at ``c2w``, taken since the
    memory last changed (the engine rendered them for the scene projection). A frame processed before this call
    first changes the memory uses its render instead of rendering again; later frames render, since the memory
    now holds what the earlier frames added. ``memory_render_keys``: each such render's voxel set as
    ``SpatialMemory.rendered_voxel_keys(render.point_ids)`` gave it (None where not computed): a frame that uses
    its caller's render reuses it instead of collecting it again (an O(points) pass, ~0.5 ms at 10^5 points).

    ``provenance``: what the points added are, for all frames or per frame ([N]). Generated frames invent what
    the memory lacks (the default, ``INVENTED_FINAL``; a coarse fill's frames ``INVENTED_PROVISIONAL``); pass
    ``OBSERVED`` for frames of the real scene (a capture).

    ``provisional_px``: pixels of a frame that show a coarse fill while the final content is prepared
    (``world.generator.GeneratedView.provisional_px``): like dynamic pixels they are never written to the memory
    (the final content is, by a later frame), whatever the frame's ``provenance``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise InvalidInputError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    n = frames.shape[0]
    shape = (intrinsics.height, intrinsics.width)
    if frames.shape[1:3] != shape:
        raise InvalidInputError(f"frames are {frames.shape[2]}x{frames.shape[1]}, camera is {shape[1]}x{shape[0]}")
    poses = validate_trajectory(c2w, "c2w")
    if poses.shape[0] != n:
        raise InvalidInputError(f"{n} frames but {poses.shape[0]} poses")
    indices = [int(i) for i in frame_indices]
    if len(indices) != n:
        raise InvalidInputError(f"{n} frames but {len(indices)} frame indices")
    for name, arr in (("generator_depth", generator_depth), ("dynamic", dynamic), ("provisional_px", provisional_px)):
        if arr is not None and np.asarray(arr).shape != (n,) + shape:
            raise InvalidInputError(f"{name} must be {[n, *shape]}, got {list(np.asarray(arr).shape)}")
    for name, arr in (("dynamic", dynamic), ("provisional_px", provisional_px)):
        if arr is not None and np.asarray(arr).dtype != np.bool_:
            raise InvalidInputError(f"{name} must be a bool mask, got {np.asarray(arr).dtype}")
    provenances = [int(provenance)] * n if np.ndim(provenance) == 0 else [int(p) for p in provenance]
    if len(provenances) != n:
        raise InvalidInputError(f"{n} frames but {len(provenances)} provenances")
    if memory_renders is not None and len(memory_renders) != n:
        raise InvalidInputError(f"{n} frames but {len(memory_renders)} memory renders")
    changed = False  # whether this call has integrated anything yet (``memory_renders`` are current until then)

    refined = poses.copy()
    accepted = np.zeros(n, dtype=bool)
    report = UpdateReport(refined, accepted, 0, 0)
    for i in range(n):
        if indices[i] % config.integrate_stride:
            report.frames.append(FrameUpdate(indices[i], False, "none", math.nan, 0, 0, 0, None, "stride"))
            continue
        rgb = frames[i]
        gen = None if generator_depth is None else np.asarray(generator_depth[i], dtype=np.float32)
        dyn = None if dynamic is None else np.asarray(dynamic[i])
        # Only splat-centre pixels keep their rendered depth (see ``splat_centre_mask``): a splat copy carries a
        # neighbouring point's depth at the wrong pixel, which would unproject beside the surface and refinement
        # would follow its shifted colour. Copies become holes, which the fill closes from the centres around them.
        # Positions are decoded after each render: a render may re-sort the memory's points (point ids change).
        render = None if memory_renders is None or changed else memory_renders[i]
        known_keys = None if render is None or memory_render_keys is None else memory_render_keys[i]
        if render is None:
            render = memory.render(intrinsics, poses[i], return_point_ids=True)
        r_rgb, r_depth, valid = _unpack_render(render, shape)
        # the splat centres matter to refinement and to render-based depth only; with the generator's depth and no
        # refinement, skip them (decoding every position costs more than the render)
        needs_centre = config.refine_pose or gen is None
        centre = valid & splat_centre_mask(render.point_ids, memory.positions, intrinsics, poses[i]) if needs_centre else valid
        refinement = None
        if config.refine_pose:
            refinement = refine_pose((r_rgb, r_depth, centre), rgb, gen, intrinsics, poses[i], config)
            if refinement.accepted:
                refined[i] = refinement.c2w
                accepted[i] = True
                render = memory.render(intrinsics, refined[i], return_point_ids=True)
                known_keys = None
                r_rgb, r_depth, valid = _unpack_render(render, shape)
                centre = valid & splat_centre_mask(render.point_ids, memory.positions, intrinsics, refined[i])
        coverage = float(valid.mean())
        model = None
        if gen is None and depth_model is not None and not centre.all():
            model = _run_depth_model(depth_model, rgb, intrinsics)
        if gen is None and model is None and coverage < config.min_valid_fraction:
            reason = f"memory covers {coverage:.1%} of the frame and there is no generator or model depth"
            report.frames.append(FrameUpdate(indices[i], False, "none", coverage, 0, 0, 0, refinement, reason))
            continue
        depth, source = _choose_depth((r_rgb, r_depth, centre), rgb, gen, model, dyn, config)
        exclude = dyn
        if not config.integrate_observed:
            exclude = valid if dyn is None else (valid | dyn)
            if config.pinhole_depth_rel is not None:
                exclude = exclude | pinholes(valid, r_depth, depth, config.pinhole_depth_rel, config.pinhole_max_px)
        if provisional_px is not None and provisional_px[i].any():
            exclude = provisional_px[i] if exclude is None else (exclude | provisional_px[i])
        # a hole pixel may still land in an occupied voxel (a pinhole, a grazing surface): it must not repaint it
        if known_keys is not None:
            keys_before = known_keys
        else:
            seen = np.zeros(memory.num_points, bool)  # the points this view rendered, by id (ids hold until the
            seen[render.point_ids[valid]] = True  # memory changes)
            keys_before = memory.keys_of_points(np.flatnonzero(seen))
        if config.carve_seen_through_rel is not None and valid.any():
            rel = config.carve_seen_through_rel
            through = np.empty(shape, bool)
            any_through = _seen_through_mask(
                valid, np.ascontiguousarray(depth, np.float32), np.ascontiguousarray(r_depth, np.float32),
                np.float32(1.0 - rel), np.float32(SEEN_THROUGH_MARGIN_M),
                _NO_MASK if dyn is None else np.ascontiguousarray(dyn),
                _NO_MASK if provisional_px is None else np.ascontiguousarray(provisional_px[i]), through)
            if any_through:
                ids = render.point_ids[through]
                keys_at = memory.keys_of_points(ids)  # [T] before the removal re-numbers the points
                removed = memory.remove_invented_seen_through(ids, intrinsics, refined[i], depth, rel)
                if len(removed):
                    keys_before = keys_before[~keys_in(keys_before, removed)]
                    # the frame is integrated where the point it saw through was shown (not where the rest of a
                    # removed point's splat showed it at the frame's depth: that would put it back)
                    if exclude is not None:
                        gone = np.zeros(valid.shape, bool)
                        gone[through] = keys_in(keys_at, removed)
                        exclude = exclude & ~gone
        n_before = memory.num_points
        stats = memory.integrate(rgb, depth, intrinsics, refined[i], indices[i], exclude_mask=exclude,
                                 refresh_existing=config.integrate_observed, provenance=provenances[i])
        changed = True
        # new points are appended at the end; their keys join the view's set (exact while observed pixels are not
        # integrated: the new points come from the view's holes, so nothing already seen hides them)
        added = memory.keys_of_points(np.arange(n_before, memory.num_points, dtype=np.int64))
        view_keys = np.concatenate([keys_before, added])  # disjoint, each unique: a set
        new, upd = int(stats.new_points), int(stats.updated_points)
        report.new_points += new
        report.updated_points += upd
        n_dyn = 0 if dyn is None else int(dyn.sum())
        report.frames.append(FrameUpdate(indices[i], True, source, coverage, new, upd, n_dyn, refinement, "ok",
                                         depth_m=depth, voxel_keys=view_keys))
    return report
