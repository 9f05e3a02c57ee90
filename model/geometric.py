"""The real-time geometric generator: memory render + reference warps + hole filling. The embedded default.

It implements ``world.generator.Generator`` without a neural network, on the CPU:

1. start from the scene projection video the engine rendered from the memory (paper Sec. 3.1.3: the memory
   rendered along the target poses, missing pixels zero);
2. warp the best retrieved reference frames into each target view: they keep the full image resolution, while
   the memory is voxelized at ``d`` (1 cm), so where a reference sees the same surface its colour is sharper;
   this is how this generator "uses" the paper's reference frames;
3. fill what nothing covers: colour by push-pull (a pyramid of weighted averages, smooth and O(pixels)); depth
   of small holes (pinholes, thin disocclusions) by the memory update's background-preferring fill, and of large
   unseen regions by a layout prior: the floor plane where the ray points down to it, else a far backdrop.

Why the layout prior: the generated depth decides where new memory points go. Extending a near surface across a
large unseen region puts points in free space, in front of surfaces already in memory, where they would occlude
the first view on the way back. The floor and a backdrop at the far end of the room keep invented geometry
behind what is known. Unseen regions come out as smooth extrapolations of their surroundings: plausible enough
to explore, and, once folded back into the memory, they stay the same when the camera returns.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import TYPE_CHECKING

import cv2
import numpy as np
import structlog

from spatia.world.errors import InvalidInputError
from spatia.world.camera import Intrinsics, rotation_angle_deg, translation_distance_m
from spatia.world.generator import (
    ClipRequest, ClipResult, GeneratedView, GeneratorCapabilities, ReferenceFrame, clip_result,
)
from spatia.world.geometry import depth_to_world_points, pixel_rays
from spatia.world.update import fill_holes_background
from spatia.world.warp import claim_warped, warp_claim, warp_rgbd
from spatia.model.fill.geometry.freespace import seen_through, world_points
from spatia.model.fill.image.pushpull import pushpull_fill  # noqa: F401 -- also this module's public name (tests, eval)
from spatia.model.fill.image.see_through import see_through_pixels
from spatia.model.fill.state import FillEntry, FillInputs, FillStates, inputs_key

if TYPE_CHECKING:
    from spatia.model.fill.geometry.layout import Layout, LayoutView


log = structlog.get_logger(__name__)

FILL_METHODS = ("legacy", "layout")
_CAST_PINHOLES = False  # True: the layout is cast for pinholes too (unused there; tests compare the two)
MIN_INCIDENCE_COS = 1.0 / 64  # caps the footprint stretch of a ray grazing a plane (any level past FAR_LEVEL reads alike)


@dataclass(frozen=True)
class GeometricConfig:
    max_reference_warps: int = 2  # references warped per target frame (nearest poses first); ~4 ms each at 640x360
    same_surface_rel_tol: float = 0.03  # a warped pixel replaces the memory's if their depths agree within 3%
    # ... and only from a reference seen from nearly the same pose: there the warp is a near-identity resampling
    # and keeps the reference's full resolution; from farther away it would only blur what the memory shows. (At
    # 10 deg / 15 cm the frame a few steps back on a walk qualified, and re-sampled its own render for ~4 ms.)
    sharpen_max_rotation_deg: float = 5.0
    sharpen_max_translation_m: float = 0.05
    # A reference from (almost) the very same viewpoint is a direct observation of what this view shows: it wins
    # over the memory everywhere it sees, also where the memory holds a point in front (invented geometry that
    # the reference saw through). From farther away a reference can miss occluders outside its field of view,
    # so this applies only within these bounds.
    trust_max_rotation_deg: float = 2.0
    trust_max_translation_m: float = 0.03
    # A reference seen from farther than the sharpening bounds only fills the memory's holes; when they cover less
    # than this fraction of the view, push-pull fills them and the warp (~4 ms at 640x360) is skipped; at most one
    # far reference fills per frame. Measured on a 30 fps walk while turning (room / house / courtyard): holes are
    # 3-6% of a view at the median, 5-9% at p90, mostly the strip the turn reveals, which no earlier frame saw.
    fill_warp_min_hole_fraction: float = 0.10
    small_hole_px: int = 24  # holes spanning at most this many pixels get the background-preferring fill
    backdrop_percentile: float = 95.0  # the backdrop sits at this percentile of the depth the clip's render sees
    default_backdrop_m: float = 6.0  # when the memory shows nothing at all
    # The backdrop never goes farther than this. Without a cap it drifts outward: invented backdrop points raise the
    # next clips' depth percentile, so a 10 s walk in "house" pushed it to 20-36 m and the memory grew to 1.4 M
    # points, most of them far, sparse and in no real surface (each pixel then shows its own point, so such views
    # also cost the most to render, index and store).
    max_backdrop_m: float = 12.0
    min_floor_drop_m: float = 0.3  # the floor is at least this far below the camera
    # How never-seen space is filled: "legacy" = push-pull colour over a floor + backdrop depth prior (the
    # method of sessions 1-2, kept selectable so every evaluation can run it as the baseline in the same run);
    # "layout" = the Manhattan layout of the observed points (``model.fill.geometry.layout``) with plane textures and the
    # sky (``model.fill.texture.appearance``), respecting free space. The default: on the room / house / courtyard demo
    # loops it measured better on every novel-pixel metric (docs/BENCHMARKS.md, "Layout fill").
    fill: str = "layout"
    # layout fill: a hole keeps the background-preferring fill (furniture, non-planar gaps) where that fill puts
    # a surface more than this fraction in front of the layout surface; elsewhere the layout surface wins
    layout_front_rel: float = 0.10
    # ... and those hole pixels are shown but not folded into the memory (``_fill_in_front``): the memory's object is
    # what was observed of it. True folds them as before (kept for measurements: docs/RESULTS.md, session 28)
    fold_fill_in_front: bool = False
    # a hole pixel whose colour may come from another surface than the depth the fill gives it is shown, not
    # folded into the memory (``_colour_off_surface``): a reference's colour (``_apply_references``) warped from a
    # depth more than this fraction nearer or farther, or the colour fill's where a rendered pixel within
    # ``pinhole_px`` lies more than this fraction nearer. Folded, one surface's colour landed on another: the
    # courtyard's fountain water as blue streaks on the paving, grown keyframe after keyframe (docs/RESULTS.md,
    # session 29). A pinhole's reference colour warped from more than this fraction farther is a glimpse through the
    # gap and is left to the colour fill (``_glimpses_through_pinholes``). inf: fold them, keep every glimpse.
    # 0.10 let a bookcase 0.3 m in front of its wall (7 % at 4.5 m) tint the colour fill of the wall's gaps beside
    # it: folded as dark wall points, one strip a keyframe, they stood as a column of bars beside the room demo's
    # left bookcase seen from the other side (frames 62-74; docs/RESULTS.md, session 39)
    colour_surface_rel: float = 0.05
    pinhole_px: float = 2.5  # hole pixels at most this far from a rendered pixel keep the background fill
    # ... unless a layout plane lies within this fraction of that fill (``_pinholes_on_planes``): then the plane's
    # depth. On a plane seen at a grazing angle (the courtyard's ground) the fill took the farther side of a gap
    # between noisy rendered points: 18 % of pinhole pixels lay > 5 % beyond the true surface (courtyard demo
    # loop, 320x180, frames 1-60), and became invented ground 5-50 cm under the real one. 0: off
    pinhole_plane_rel: float = 0.10
    # a pinhole with no rendered pixel within ``pinhole_px`` showing an observed point, on a plane (as above), is no
    # pinhole (``_invented_pinholes_on_planes``): the gaps between invented points on a plane, seen closer than when
    # they were invented, take the plane's texture at this frame's footprint, as any other hole on it. Coloured from
    # the memory's sparse points around (the colour fill) or warped from earlier frames (references), the courtyard's
    # invented paving walked up to was a blotchy smear, not tiles (docs/RESULTS.md, session 30). False: every such
    # gap keeps the fill and its colour
    texture_invented_pinholes: bool = True
    # ... in the tone of the points around them: their colour shifted by the local mean difference over a window of
    # this half side, pixels (``_match_pinhole_tone``; 0: off)
    pinhole_tone_px: int = 4
    # the layout fill takes a rendered pixel for a hole where farther points show through the gaps of a nearer
    # surface's points within this share of the image's width on both sides (``model.fill.image.see_through``; 0 =
    # off): a surface seen from far and walked up to showed what lies behind it as a grid (the courtyard's column
    # from 1 m). The gaps scale with the resolution (the first view's point spacing does), so the radius does too
    see_through_frac: float = 0.02
    # free space: an invented point nearer than this (relative, plus 5 cm) to an observed view than the surface
    # that view saw along the same ray lies in space it saw through, and is not invented there
    free_space_rel: float = 0.03
    # layout fill: the first frames after a world is opened (or its observed points change) show the legacy fill
    # as a coarse, provisional fill while the layout is fitted off the frame path (0.6-1.7 s of CPU at 640x360);
    # the engine replaces it in the memory once frames are final; at most 8 (the issue's bound). 0 (default): the
    # first frame waits for the fit instead, which an engine starts when it opens the world and a server's
    # CreateWorld waits for. The count runs whether or not the fit is done, so frames stay a function of the world
    # and the path: at 8 every demo and every new world's first Play began with 8 frames of the legacy fill's
    # smear beside the furniture (the fit long done), for a wait that only a world opened right before its first
    # frame would have had (docs/RESULTS.md, session 39).
    coarse_frames: int = 0
    # layout fill, per plane: the frames that show a plane's texture within this many frames of the first one
    # that showed it (``_PlaneCoarse``) show a coarse fill on its pixels instead (the plane's layout depth, the
    # colour fill's colour), marked provisional per pixel: never folded into the memory, while the plane's
    # texture model is fitted off the frame path (~0.45 s of CPU a world at 640x360, the first final frame's
    # wait before); from then on the texture, waiting for a fit still running. Counted, not "whatever is ready":
    # frames stay a function of the world and the path. 0 (default): a frame waits for the textures of the planes
    # it shows. Off by default: counted from the first frame that asks for the texture, the first view's planes
    # would stay coarse through frame 15 (issue 10: replaced within 8 frames), the demo's memory-only PSNR fell
    # 0.04 dB, and no served-play gain was shown yet (docs/BENCHMARKS.md, session 12, lat).
    coarse_plane_frames: int = 0
    # layout fill: after a frame whose request has a core to spare (``ClipRequest.spare_core``: a server says so
    # while the world is the only one in play in its process), a thread of its own synthesises the texture tiles
    # the next frames are likely to read (``_tiles_ahead``: a widened view's planes from the camera and from where
    # it heads), so frames turning towards an unseen wall do not make 25-46 tiles themselves. The frames are the
    # same either way (a texel is a function of the model, the seed and its position). Off by default, for a
    # machine with cores beyond the frame's: on two cores it was work four served sessions paid for, and one
    # served session's frames came late more often with it (its thread beside the frame's two kernel threads, the
    # update's and the encoder's), although in-process it cut the tile reads' spikes (docs/BENCHMARKS.md, sessions
    # 17 and 27).
    tiles_ahead: bool = False
    # layout fill, per texture tile (``_PlaneCoarse.texels``): a tile is *due* at frame f when a frame <= f - N first
    # asked for it, or when it is one of the warm-up's tiles (``_warm_plan``: the planes around the first camera).
    # A frame shows the final texels of due tiles (made there, or joined from the tile thread); on the pixels of a
    # tile not due yet it shows a stand-in (the texture's far-field colour, mip ``FAR_LEVEL``, once the model's
    # far-field pyramid is due; else the colour fill's colour), marked provisional per pixel (never folded into
    # the memory), and the tile is synthesised on a thread of its own (``model.fill.state.TileJobs``) meanwhile.
    # Counted, not "whatever is ready": frames stay a function of the world and the path. So a turn towards a wall
    # no frame showed does not make its tiles (~1 ms of CPU each) inside that frame. At most 8 (issue 10: a coarse
    # fill is replaced within 8 frames). 0 (default): every tile is due (frames make the tiles they miss). Off by
    # default: on the 2-core machine, four served layout sessions lost frame rate and p95 latency with it, and one
    # session gained nothing measurable (docs/BENCHMARKS.md, session 21, lead). Why four sessions pay (the
    # per-frame tile bookkeeping, the tile thread, stand-ins integrated later) is not measured yet.
    coarse_tile_frames: int = 0

    def __post_init__(self) -> None:
        if self.fill not in FILL_METHODS:
            raise InvalidInputError(f"unknown fill method {self.fill!r}; choose one of {', '.join(FILL_METHODS)}")
        for name in ("coarse_frames", "coarse_plane_frames", "coarse_tile_frames"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("coarse_frames", "coarse_tile_frames"):
            if getattr(self, name) > 8:
                raise InvalidInputError(f"{name} must be <= 8 (a coarse fill is replaced within 8 frames), "
                                        f"got {getattr(self, name)}")


@dataclass(frozen=True)
class Layout:
    """The layout prior of a clip: a floor plane and a backdrop distance."""

    up: np.ndarray  # [3] unit world up
    floor_height_m: float | None  # floor's height along ``up`` (world frame), None when the floor is not seen
    backdrop_m: float  # z-depth given to unseen pixels that do not hit the floor


def estimate_layout(request: ClipRequest, config: GeometricConfig) -> Layout:
    """Floor height and backdrop distance from the points the memory renders along the clip's target poses."""
    up = np.asarray(request.world_up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    proj = request.target_projection
    depth = proj.depth_m[:, ::4, ::4][proj.valid[:, ::4, ::4]]
    backdrop = float(np.percentile(depth, config.backdrop_percentile)) if depth.size else config.default_backdrop_m
    backdrop = min(backdrop, config.max_backdrop_m)
    poses = request.target_c2w
    step = 4  # every 4th pixel of every 4th row: plenty for a percentile, 16x less work
    rays = _rays(request.intrinsics)[::step, ::step]
    heights = []
    for t in range(0, len(poses), max(1, len(poses) // 4)):  # a few frames are enough too
        v = proj.valid[t, ::step, ::step]
        if not v.any():
            continue
        pts = (rays[v] * proj.depth_m[t, ::step, ::step][v][:, None]) @ poses[t][:3, :3].T + poses[t][:3, 3]
        heights.append(pts @ up)
    floor = None
    if heights:
        h = np.concatenate(heights)
        cam_h = float(np.median(poses[:, :3, 3] @ up))
        below = h[h < cam_h - config.min_floor_drop_m]
        if below.size > 0.02 * h.size:  # the floor is visible somewhere in this clip
            floor = float(np.percentile(below, 2.0))
    return Layout(up, floor, backdrop)


@lru_cache(maxsize=8)
def _rays(intrinsics: Intrinsics) -> np.ndarray:
    """``[H, W, 3]`` float32 pixel rays (z = 1) of a camera, cached: frames of a world share one camera."""
    rays = pixel_rays(intrinsics).astype(np.float32)
    rays.setflags(write=False)
    return rays


def plane_footprint_m(
    rays: np.ndarray,  # [K, 3] pixel rays, camera frame, z = 1
    depth_m: np.ndarray,  # [K] z-depth of each ray's hit on the plane
    focal_px: float,
    normal_cam: np.ndarray,  # [3] the plane's unit normal, camera frame
) -> np.ndarray:
    """``[K]`` metres: the long axis of each pixel's footprint on a plane. A pixel is ``depth / focal`` wide across
    its ray at the hit (at any angle off the axis: the ray is longer by 1 / cos and the pixel's angle smaller by
    cos); on a plane hit at incidence i that stretches by 1 / cos(i), capped at 1 / MIN_INCIDENCE_COS."""
    rays = np.asarray(rays, np.float32)
    n = np.asarray(normal_cam, np.float32)
    # by columns, not ``rays @ n``: OpenBLAS's sgemv rounds a row's product differently with the batch's length
    # (fused multiply-adds in blocks), so a pixel's mip level depended on how many other pixels hit its plane
    cos_inc = np.abs(rays[:, 0] * n[0] + rays[:, 1] * n[1] + rays[:, 2] * n[2]) / np.linalg.norm(rays, axis=1)
    return np.asarray(depth_m, np.float32) / np.float32(focal_px) / np.maximum(cos_inc, np.float32(MIN_INCIDENCE_COS))


def _plane_uv(
    points: np.ndarray,  # [K, 3] float64 world frame
    u_axis: np.ndarray,  # [3] the plane's in-plane axes, world frame
    v_axis: np.ndarray,
) -> np.ndarray:
    """``[K, 2]`` float64 plane coordinates (metres) by columns, not ``points @ basis``: BLAS rounds with fused
    multiply-adds in an order of its own, which a compiled pass (``hole_kernels``) could not follow everywhere."""
    out = np.empty((len(points), 2))
    for j, ax in enumerate((u_axis, v_axis)):
        out[:, j] = points[:, 0] * ax[0] + points[:, 1] * ax[1] + points[:, 2] * ax[2]
    return out


def layout_depth(layout: Layout, intrinsics: Intrinsics, c2w: np.ndarray) -> np.ndarray:
    """``[H, W]`` float32 z-depth of the layout prior seen from ``c2w``: floor where rays reach it, else backdrop."""
    rays = _rays(intrinsics)  # z = 1, so the ray parameter is the z-depth
    depth = np.full(rays.shape[:2], layout.backdrop_m, np.float32)
    if layout.floor_height_m is not None:
        up_cam = (c2w[:3, :3].T @ layout.up).astype(np.float32)  # world up in camera coordinates
        rise = rays @ up_cam  # height gained per metre of z-depth
        drop = float(c2w[:3, 3] @ layout.up) - layout.floor_height_m
        down = rise < -1e-6
        t = np.full(rise.shape, np.inf, np.float32)
        t[down] = drop / -rise[down]
        t[t <= 0] = np.inf
        np.minimum(depth, t, out=depth)
    return depth


def plane_texture_key(plane) -> tuple:
    """What a plane's texture (``PlaneTextures.for_plane``) is a function of: its id (own or derived from), whether
    it is derived, its kind and axis (the borrowing rule). The per-plane coarse fill is counted per key."""
    return (int(plane.plane_id), bool(plane.derived), plane.kind, int(plane.axis))


# ``_PlaneCoarse.texels``: a texel of a due tile; a provisional one showing the far-field colour; a provisional one
# left to the colour fill
FINAL, STAND_IN, COLOUR_FILL = 0, 1, 2


class _PlaneCoarse:
    """One layout frame's per-plane coarse fill (``GeometricConfig.coarse_plane_frames``): which planes still show
    it, counted in the world's ``FillEntry`` from the first frame that showed each plane's texture; its per-tile
    coarse fill (``coarse_tile_frames``: ``texels``), counted from the first frame that asked for each tile; and,
    once the fill has run, the frame's provisional pixels of both (``mask``, [H, W] bool, None when none), the
    pixels whose fill lies in front of the layout (``in_front``, ``_fill_in_front``) and those whose colour may
    come from another surface than their depth (``off_surface``, ``_colour_off_surface``): the frame's
    ``provisional_px`` is all three (shown, never folded into the memory)."""

    def __init__(self, entry: FillEntry, frame: int, frames: int, tile_frames: int = 0) -> None:
        self._entry, self._frame, self._frames = entry, frame, frames
        self._tile_frames = tile_frames  # ``GeometricConfig.coarse_tile_frames``
        self.mask: np.ndarray | None = None
        self.in_front: np.ndarray | None = None
        self.off_surface: np.ndarray | None = None

    @property
    def provisional_px(self) -> np.ndarray | None:
        """``[H, W]`` bool: the frame's pixels that are shown but not folded into the memory; None when none."""
        parts = [m for m in (self.mask, self.in_front, self.off_surface) if m is not None]
        if len(parts) <= 1:
            return parts[0] if parts else None
        return np.logical_or.reduce(parts)

    @staticmethod
    def _pixels(shape: tuple[int, int], pixels: np.ndarray) -> np.ndarray | None:
        if not len(pixels):
            return None
        out = np.zeros(shape, bool)
        out.ravel()[pixels] = True
        return out

    def set_in_front(self, shape: tuple[int, int], pixels: np.ndarray) -> None:
        """The frame's pixels whose fill lies in front of the layout: flat indices ``pixels`` [K] into ``shape``."""
        self.in_front = self._pixels(shape, pixels)

    def set_off_surface(self, shape: tuple[int, int], pixels: np.ndarray) -> None:
        """The frame's pixels whose colour may come from another surface: flat indices [K] into ``shape``."""
        self.off_surface = self._pixels(shape, pixels)

    def texels(self, state: _LayoutState, tex, rows: np.ndarray, cols: np.ndarray, level: np.ndarray) -> np.ndarray:
        """``[N]`` int8 per texel (``read_texels``'s ``rows``, ``cols``, ``level`` of ``tex``'s synthesis model, each
        [N] int64): ``FINAL`` where its tile is due (``coarse_tile_frames``); else provisional: ``STAND_IN`` where
        the model's far-field pyramid is due (the frame shows the texel's far-field colour, mip ``FAR_LEVEL``: the
        texture's colours and shading, blurred), ``COLOUR_FILL`` where it is not (the colour fill's colour).
        The one rule, for the fused fill and its reference alike. Records each tile's first ask; queues a tile not
        due on the tile thread; joins a due tile's job (so that ``read_texels`` finds it made, or makes it)."""
        from spatia.model.fill.texture.synthesis import FAR_LEVEL, tiles_read, warm_tiles

        out = np.zeros(len(rows), np.int8)
        if self._tile_frames <= 0 or not len(rows):
            return out
        model, seed = tex.synth, int(tex.seed)
        tiles, top, tile = tiles_read(model, rows, cols, level)
        plan = _warm_plan(state).due
        warm = plan.get((id(model), seed), frozenset())
        late = np.zeros(len(tiles), bool)
        for q, (i, j) in enumerate(tiles.tolist()):
            late[q] = self._late((id(model), seed, i, j), (i, j) in warm,
                                 partial(warm_tiles, model, [(i, j, int(top[q]))], seed))
        near = tile >= 0
        far = ~near & (level >= FAR_LEVEL)
        if not far.any() and not late.any():
            return out
        # the far-field texture (mip FAR_LEVEL on) is read from a pyramid of the whole exemplar box, made once per
        # model and seed (a few ms): counted as one more tile of the model (asked for by the far texels and by the
        # stand-ins), due from the start for the warm-up's models
        far_late = self._late((id(model), seed, "far"), (id(model), seed) in plan, partial(model._far_pyramid, seed))
        out[near] = np.where(late[tile[near]], COLOUR_FILL if far_late else STAND_IN, FINAL)
        out[far] = COLOUR_FILL if far_late else FINAL
        return out

    def _late(self, key: tuple, warm: bool, make) -> bool:
        """Whether the tile ``key`` is not due in this frame (recording its first ask); a tile not due is queued
        (``make`` synthesises it), a due one's job joined."""
        first = self._entry.tile_first_asked.setdefault(key, self._frame)
        if first < 0:  # due and joined in an earlier frame (most of a frame's tiles)
            return False
        jobs = self._entry.tile_jobs
        if warm or self._frame - first >= self._tile_frames:
            if jobs is not None:
                jobs.join(key)
            self._entry.tile_first_asked[key] = -1
            return False
        if jobs is not None:
            jobs.submit(key, make)
        return True

    def planes(self, bounds: list, shown: np.ndarray) -> np.ndarray:
        """``[B]`` bool: the planes of ``bounds`` this frame shows (``shown`` [B] pixel counts) that show the coarse
        fill. The first ask in a frame records the plane's first showing; asking again answers the same."""
        out = np.zeros(len(bounds), bool)
        if self._frames <= 0:
            return out
        first_shown = self._entry.first_shown
        for i in np.flatnonzero(shown):
            first = first_shown.setdefault(plane_texture_key(bounds[i]), self._frame)
            out[i] = self._frame - first < self._frames
        return out

    def set_mask(self, shape: tuple[int, int], pixels: np.ndarray) -> None:
        """The frame's provisional pixels: flat indices ``pixels`` [K] into an image of ``shape``."""
        self.mask = None
        if len(pixels):
            self.mask = np.zeros(shape, bool)
            self.mask.ravel()[pixels] = True

    def sampled(self, state: _LayoutState, tex, uv: np.ndarray, footprint: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """``texels``'s answer ([K] int8) for each point that ``tex.sample(uv [K, 2], footprint [K])`` reads, over
        the synthesis models it reads (``_texture_reads``), and the footprints [K] float64 that read the stand-ins
        there (``footprint`` raised to the model's mip ``FAR_LEVEL`` where ``STAND_IN``)."""
        from spatia.model.fill.texture.synthesis import FAR_LEVEL, texel_indices

        codes = np.zeros(len(uv), np.int8)
        stand_fp = np.asarray(footprint, np.float64).copy()
        if self._tile_frames <= 0:
            return codes, stand_fp
        for t, idx in _texture_reads(tex, np.arange(len(uv)), uv):
            codes[idx] = self.texels(state, t, *texel_indices(
                t.synth, np.asarray(uv[idx], np.float64) - np.asarray(t.synth_origin_uv), stand_fp[idx]))
            stand = idx[codes[idx] == STAND_IN]
            # a stand-in's level (0 or 1) read at FAR_LEVEL: (texel * 2^FAR_LEVEL) / texel is exactly 2^FAR_LEVEL
            stand_fp[stand] = t.synth.texel_m * float(1 << FAR_LEVEL)
        return codes, stand_fp


def _texture_reads(tex, idx: np.ndarray, uv: np.ndarray) -> list:
    """``[(PlaneTexture, [K] indices into idx's points)]``: which synthesis model (``tex.synth`` of the texture
    given or of its far look) ``tex.sample`` reads each point ``uv[idx]`` from; points it reads from no synthesis
    model (an exemplar's mip pyramid alone) are left out. ``PlaneTexture.sample``'s dispatch (``far_points``), point
    by point (a point's colour depends on that point alone, so sampling a subset gives that subset's colours); the
    unseen cells' contrast is applied to the colour read, so it reads nothing else."""
    far = tex.far_points(uv[idx])
    if far is not None:
        return [*_texture_reads(tex.far, idx[far], uv), *_texture_reads_near(tex, idx[~far])]
    return _texture_reads_near(tex, idx)


def _texture_reads_near(tex, idx: np.ndarray) -> list:
    return [(tex, idx)] if tex.synth is not None and len(idx) else []


@dataclass
class _LayoutState:
    key: tuple
    layout: object  # model.fill.geometry.layout.Layout
    textures: object  # model.fill.texture.appearance.PlaneTextures
    sky: object | None  # model.fill.texture.appearance.SkyModel
    observer: np.ndarray  # [3] world frame, where the observed points were seen from
    # with a sky: rendered points at least this far are the sky (those the sky model was made of), not a surface
    sky_min_depth_m: float = math.inf
    warm: "_WarmPlan | None" = None  # ``_warm_plan``, made once
    warm_lock: threading.Lock = field(default_factory=threading.Lock)
    # model.fill.geometry.supports.Support: observed objects continued down to the floor under their occlusion edges
    supports: list = field(default_factory=list)


@dataclass(frozen=True)
class _WarmPlan:
    """The warm-up's tiles (``_warm_tiles``): per texture model, the tiles around the first camera, nearest first."""

    tiles: list  # [(PlaneTexture, [(tile row, tile col), ...])] in the order the warm-up makes them
    due: dict  # (id of the synthesis model, seed) -> frozenset of (tile row, tile col): due from any frame on


# warm-up: the planes bounding the first camera's free space, this far around it at most (outdoors: the ground)
WARM_RADIUS_M = 6.0
WARM_PAUSE_S = 0.002  # between two tiles: the maintenance thread lets a frame in (tiles are Python-heavy)


def _warm_layout_state(state: _LayoutState) -> None:
    """The whole warm-up on one thread: ``_fit_plane_textures``, then ``_warm_tiles`` (a server runs the two on
    different threads: the tiles at low priority, ``model.fill.state``)."""
    _fit_plane_textures(state)
    _warm_tiles(state)


def _fit_plane_textures(state: _LayoutState) -> None:
    """On the maintenance thread, after the state is handed over: fit every plane's texture model, nearest the
    first camera first (a frame that needs one still being fitted waits for it; one that needs one not begun
    fits it itself); then ``_warm_plan`` and the far-field pyramids of its models and of every fitted plane."""
    layout, cam = state.layout, state.observer
    fitted = [state.textures.for_plane(plane)
              for plane in sorted(layout.planes, key=lambda p: abs(p.offset_m - float(cam @ layout.axes[p.axis])))]
    # here, at the fits' priority: frames read the plan (the per-tile coarse fill's due tiles) and count the
    # planned models' far-field pyramids due at once; each is made under its model's lock (a few ms; a stochastic
    # model's with its coarse-band noise, ~13 ms), which a frame could wait for behind the low-priority tile thread.
    # Then every other fitted plane's: the house's first frames waited ~20 ms for one no plan held
    models = {}  # (model, seed) -> texture, the plan's first: each far field once
    for tex in [t for t, _ in _warm_plan(state).tiles] + [t for t in fitted if t is not None and t.synth is not None]:
        models.setdefault((id(tex.synth), int(tex.seed)), tex)
    for tex in models.values():
        tex.synth._far_pyramid(int(tex.seed))


def _warm_plan(state: _LayoutState) -> _WarmPlan:
    """The tiles of the planes around the first camera, nearest first: the walls, floor and ceiling a player turns
    to first. A function of the fitted state alone, made once (by the warm-up or by the first frame that asks,
    whichever comes first; the other waits for it): the per-tile coarse fill counts these as due from the start."""
    with state.warm_lock:
        if state.warm is None:
            state.warm = _make_warm_plan(state)
        return state.warm


def _make_warm_plan(state: _LayoutState) -> _WarmPlan:
    from spatia.model.fill.geometry.layout import view_bounds
    from spatia.model.fill.texture.appearance import plane_basis
    from spatia.model.fill.texture.synthesis import TILE_CACHE, tiles_covering

    layout, cam = state.layout, state.observer
    view = view_bounds(layout, cam, cam[None])
    extent = {}  # axis -> (lo, hi) along it: the bounding planes, else WARM_RADIUS_M around the camera
    for k in range(3):
        c = float(cam @ layout.axes[k])
        offs = [p.offset_m for p in view.bounds if p.axis == k]
        lo = max([o for o in offs if o < c], default=c - WARM_RADIUS_M)
        hi = min([o for o in offs if o > c], default=c + WARM_RADIUS_M)
        extent[k] = (max(lo, c - WARM_RADIUS_M), min(hi, c + WARM_RADIUS_M))
    plan, due = [], {}
    for plane in sorted(view.bounds, key=lambda p: abs(p.offset_m - float(cam @ layout.axes[p.axis]))):
        tex = state.textures.for_plane(plane)
        if tex is None or tex.synth is None or (id(tex.synth), int(tex.seed)) in due:
            continue
        u_ax, v_ax = plane_basis(layout, plane)
        ranges = []
        for ax in (u_ax, v_ax):
            k = int(np.argmax(np.abs(layout.axes @ ax)))
            lo, hi = extent[k]
            ranges.append(sorted((lo * float(layout.axes[k] @ ax), hi * float(layout.axes[k] @ ax))))
        origin = np.asarray(tex.synth_origin_uv)
        lo_uv = np.array([ranges[0][0], ranges[1][0]]) - origin
        hi_uv = np.array([ranges[0][1], ranges[1][1]]) - origin
        # nearest the camera first (its foot on the plane, in the same texture frame)
        foot = np.array([cam @ u_ax, cam @ v_ax]) - origin
        t_m = tex.synth.tile_px * tex.synth.texel_m

        def dist(ij, foot=foot, tex=tex, t_m=t_m):
            i, j = ij
            centre_v = (i + 0.5) * t_m - tex.synth.origin_px[0] * tex.synth.texel_m
            centre_u = (j + 0.5) * t_m - tex.synth.origin_px[1] * tex.synth.texel_m
            return (centre_u - foot[0]) ** 2 + (centre_v - foot[1]) ** 2

        tiles = sorted(tiles_covering(tex.synth, lo_uv, hi_uv), key=dist)[:TILE_CACHE]  # (warm_tiles' cap)
        plan.append((tex, tiles))
        due[(id(tex.synth), int(tex.seed))] = frozenset(tiles)
    return _WarmPlan(plan, due)


def _warm_tiles(state: _LayoutState) -> None:
    """After ``_fit_plane_textures`` (a low-priority thread): synthesise ``_warm_plan``'s tiles (a frame then
    reads cached tiles instead of synthesising ~10 ms of them)."""
    import time

    from spatia.model.fill.texture.synthesis import warm_tiles

    total = 0
    for tex, tiles in _warm_plan(state).tiles:
        total += warm_tiles(tex.synth, tiles, tex.seed, pause=lambda: time.sleep(WARM_PAUSE_S))
    log.info("fill tiles warmed", tiles=total)


# tiles ahead of the view: the planes a view widened by this much on each side sees (the walk's turn reaches
# the edge of such a view in ~1 s at 0.4 rad/s), sampled on a grid of rays this fine, from the camera and from
# where it is heading this many frames on (a doorway the path heads through opens the room beyond it); the view
# moved this much (degrees, metres) from the last one asked for before the next is asked for
AHEAD_WIDEN_DEG = (25.0, 12.0)  # horizontal, vertical
AHEAD_GRID = (72, 30)  # rays across, down
AHEAD_FRAMES = (15, 30)
AHEAD_EVERY = (6.0, 0.25)
AHEAD_MAX_TILES = 96  # per texture model and request: well under texture.TILE_CACHE (the frames' tiles stay)


def _ahead_rays(intrinsics: Intrinsics) -> np.ndarray:
    """``[N, 3]`` float32 camera-frame rays (z = 1) on a grid over the view widened by ``AHEAD_WIDEN_DEG``, the
    view's axis first (nearest the centre, in angle)."""
    K = intrinsics
    wide, tall = (math.radians(a) for a in AHEAD_WIDEN_DEG)
    x_lo, x_hi = math.atan2(-K.cx, K.fx) - wide, math.atan2(K.width - K.cx, K.fx) + wide
    y_lo, y_hi = math.atan2(-K.cy, K.fy) - tall, math.atan2(K.height - K.cy, K.fy) + tall
    ax, ay = np.meshgrid(np.linspace(x_lo, x_hi, AHEAD_GRID[0]), np.linspace(y_lo, y_hi, AHEAD_GRID[1]))
    rays = np.stack([np.tan(ax), np.tan(ay), np.ones_like(ax)], -1).reshape(-1, 3)
    order = np.argsort(np.hypot(ax, ay).ravel(), kind="stable")
    return rays[order].astype(np.float32)


def _ahead_views(state: _LayoutState, view: LayoutView, c2w: np.ndarray, reach) -> list:
    """``[(view, c2w)]``: the frame's, then the camera moved on ``AHEAD_FRAMES`` of its last step (``reach``:
    [P, 3] or a ``layout.LayoutPath``, the poses visited and about to be, the last one last) with the path
    extended as far."""
    from spatia.model.fill.geometry.layout import layout_path, view_bounds

    out = [(view, c2w)]
    if len(reach) < 2:
        return out
    path = layout_path(state.layout, reach)
    last = path.last(2)
    step = last[1] - last[0]
    for k in AHEAD_FRAMES:
        pose = c2w.copy()
        pose[:3, 3] = c2w[:3, 3] + k * step
        ahead = path.extended(last[1] + np.arange(1, k + 1)[:, None] * step)
        out.append((view_bounds(state.layout, pose[:3, 3], ahead), pose))
    return out


def _tiles_ahead(state: _LayoutState, views: list, intrinsics: Intrinsics) -> list:
    """The texture tiles the frames about to come are likely to read: those of the bounding planes that views
    widened beyond ``views``' ([(view, c2w)], ``_ahead_views``) would show, at the mip levels read through tiles,
    nearest each view's axis first; ``[(synthesis model, seed, [(row, col, level), ...])]``. A hint only (the
    tiles a frame reads are pure functions of model, tile and seed, made by the frame when missing): the
    arithmetic of the layout fill's texel plan (``hole_kernels.hole_depth_texels``) on a coarse grid of rays."""
    from spatia.model.fill.geometry.layout import cast_layout
    from spatia.model.fill.texture.appearance import plane_basis
    from spatia.model.fill.texture.synthesis import FAR_LEVEL

    layout = state.layout
    rays = _ahead_rays(intrinsics)
    focal = float(max(intrinsics.fx, intrinsics.fy))
    models = {}
    for view, c2w in views:
        depth, index = cast_layout(layout, view, rays, c2w)
        R, cam = np.asarray(c2w[:3, :3], np.float64), np.asarray(c2w[:3, 3], np.float64)
        for i, plane in enumerate(view.bounds):
            hit = np.flatnonzero((index == i) & (depth > 0))
            tex = state.textures.for_plane(plane) if len(hit) else None
            if tex is None or tex.synth is None:
                continue
            m = tex.synth
            u_ax, v_ax = plane_basis(layout, plane)
            pts = cam + (rays[hit].astype(np.float64) * depth[hit, None].astype(np.float64)) @ R.T
            footprint = plane_footprint_m(rays[hit], depth[hit], focal, R.T @ layout.axes[plane.axis])
            level = np.floor(np.log2(np.maximum(footprint.astype(np.float64) / m.texel_m, 1.0))).astype(np.int64)
            near = level < FAR_LEVEL  # what is read through tiles (farther: the far-field texture)
            t = m.tile_px
            vv, uu = (pts[near] @ v_ax - tex.synth_origin_uv[1]), (pts[near] @ u_ax - tex.synth_origin_uv[0])
            ti = (np.floor(vv / m.texel_m).astype(np.int64) + m.origin_px[0]) // t
            tj = (np.floor(uu / m.texel_m).astype(np.int64) + m.origin_px[1]) // t
            # each tile once, in the order of its first ray (nearest the axis first), with its mips up to the
            # coarsest level read (numpy, not a loop over the rays: this thread holds the GIL the frame's thread
            # wants meanwhile)
            if not len(ti):
                continue
            i0, j0 = int(ti.min()), int(tj.min())
            span = int(tj.max()) - j0 + 1
            uniq, first, inverse = np.unique((ti - i0) * span + (tj - j0), return_index=True, return_inverse=True)
            coarsest = np.zeros(len(uniq), np.int64)
            np.maximum.at(coarsest, inverse, level[near])
            tiles = models.setdefault((id(m), tex.seed), (m, tex.seed, {}))[2]
            for q in np.argsort(first, kind="stable").tolist():
                ab = (i0 + int(uniq[q]) // span, j0 + int(uniq[q]) % span)
                if ab in tiles:
                    tiles[ab] = max(tiles[ab], int(coarsest[q]))
                elif len(tiles) < AHEAD_MAX_TILES:
                    tiles[ab] = int(coarsest[q])
    for m, seed, tiles in models.values():
        # and the tiles beside them: a plane's edge rows (its corners with the next plane) fall between the rays
        for (a, b), lv in list(tiles.items()):
            for ab in ((a - 1, b), (a + 1, b), (a, b - 1), (a, b + 1)):
                if ab not in tiles and len(tiles) < AHEAD_MAX_TILES:
                    tiles[ab] = lv
    return [(m, seed, [(a, b, lv) for (a, b), lv in tiles.items()]) for m, seed, tiles in models.values()]


def _reach(request: ClipRequest) -> np.ndarray:
    """``[P, 3]`` the camera positions visited and about to be (the clip's targets), world frame, in time order."""
    return np.concatenate([np.asarray(request.visited_c2w).reshape(-1, 4, 4)[:, :3, 3], request.target_c2w[:, :3, 3]])


def _layout_reach(entry: FillEntry, layout, request: ClipRequest):
    """``_reach(request)`` as a ``layout.LayoutPath`` in the world's path summary (``FillEntry.path``): what the
    layout fill reads of the path costs the same at any length of the session, and a clip reads only the poses
    added since the last one (the history's, ``PathSummary.sync``)."""
    from spatia.model.fill.geometry.layout import PathSummary

    summary = entry.path if entry.path is not None and entry.path.layout is layout else PathSummary(layout)
    path = summary.sync(request.target_c2w[:, :3, 3], request.visited_c2w)
    entry.path = path.summary  # a new one when the path did not start with the poses held
    return path


def _warm_tiles_ahead(state: _LayoutState, view: LayoutView | None, c2w: np.ndarray, reach: np.ndarray,
                      intrinsics: Intrinsics) -> int:
    """On the tile-ahead thread: synthesise ``_tiles_ahead``'s tiles not cached yet; returns how many. ``view``:
    the frame's ``view_bounds`` (None: made here, for a coarse frame's pose)."""
    import time

    from spatia.model.fill.geometry.layout import view_bounds
    from spatia.model.fill.texture.synthesis import warm_tiles

    if view is None:
        view = view_bounds(state.layout, c2w[:3, 3], reach)

    tiles = _tiles_ahead(state, _ahead_views(state, view, c2w, reach), intrinsics)
    return sum(warm_tiles(m, ts, seed, pause=lambda: time.sleep(WARM_PAUSE_S)) for m, seed, ts in tiles)


def _import_layout_fill() -> None:
    """Import the layout fill's modules now, once per process (~0.4-0.6 s with scipy's ``fft`` and ``ndimage``):
    a server builds its generator when it starts, and otherwise its first world's fit paid for them, which the
    first final frame of the server's first Play session waits for (docs/BENCHMARKS.md, "Served play latency")."""
    from spatia.model.fill.geometry import layout
    from spatia.model.fill.image import hole_kernels
    from spatia.model.fill.texture import appearance, synthesis as texture  # noqa: F401


@lru_cache(maxsize=1)
def _load_frame_kernels() -> threading.Thread:
    """Start loading the kernels a layout-filled frame calls first (``warmup.load_frame_kernels``) on a thread of
    its own, once per process; returns the thread (tests join it)."""
    from spatia.model.fill.warmup import load_frame_kernels

    def run() -> None:
        try:
            load_frame_kernels()
        except Exception as exc:  # noqa: BLE001 -- an optimisation: a frame loads what this missed
            log.warning("fill kernel load failed", error=type(exc).__name__)

    thread = threading.Thread(target=run, name="spatia-fill-kernels", daemon=True)
    thread.start()
    return thread


def _fit_layout_state(inputs: FillInputs) -> _LayoutState:
    """The layout of the observed points and the sky (runs on the fill thread)."""
    from spatia.model.fill.geometry.layout import enclose, estimate_layout, raise_open_tops, rises_above_a_room
    from spatia.model.fill.texture.appearance import (
        AppearanceConfig,
        PlaneTextures,
        sky_model,
        sky_pixels,
        unseen_sky,
    )

    layout = estimate_layout(inputs.points, inputs.observer, inputs.up, inputs.forward, prior=inputs.layout_prior)
    sky = None
    first = inputs.first_view
    appearance = AppearanceConfig()
    if first is not None and not layout.indoor:
        sky = sky_model(layout.up, first.rgb, first.depth_m, _rays(first.intrinsics), first.c2w, appearance)
        if sky is None and rises_above_a_room(layout):
            # no sky seen, but what was seen rises higher than a room: outdoors, the sky out of view
            sky = unseen_sky(layout.up, appearance)
            log.info("sky out of view", note="outdoors (the view rises above a room): an overcast sky is assumed")
        elif sky is None:
            # no ceiling seen, but no sky either (a camera pitched down in a room): an enclosed space, so
            # walls are not capped, keep their observed extent and unseen ones are closed as indoors
            enclose(layout)
        elif inputs.layout_prior is None:  # a photo prior marks its open-topped walls itself
            seen, pixels = depth_to_world_points(first.depth_m, first.intrinsics, first.c2w,
                                                 ~sky_pixels(first.depth_m, appearance))
            points = np.full((first.depth_m.size, 3), np.nan)
            points[pixels] = seen
            raise_open_tops(layout, points.reshape(*first.depth_m.shape, 3))
    # each plane's texture model is fitted on first use or by the warm-up (``_warm_layout_state``), not here:
    # the first final frame waits for the layout alone, and for the textures of the planes it shows
    textures = PlaneTextures(layout, inputs.points, inputs.colors)
    supports = []
    if first is not None and first.depth_m is not None and inputs.layout_prior is None:
        # (a photo's depth is the prior's planes and cards: its objects already stand on the floor)
        from spatia.model.fill.geometry.supports import edge_supports_of_view, supports_of_view

        supports = (supports_of_view(layout, first.rgb, first.depth_m, first.intrinsics, first.c2w)
                    + edge_supports_of_view(layout, first.rgb, first.depth_m, first.intrinsics, first.c2w))
    log.info("layout estimated", planes=len(layout.planes), indoor=layout.indoor, observed_points=len(inputs.points),
             sky=sky is not None, supports=len(supports))
    return _LayoutState(inputs.version, layout, textures, sky, np.asarray(inputs.observer, np.float64),
                        appearance.sky_min_depth_m if sky is not None else math.inf, supports=supports)


def _without(valid: np.ndarray, depth: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``valid`` [H, W] and ``depth`` [H, W] float32 with the pixels ``drop`` [H, W] bool taken for holes (not
    rendered, depth 0); the same arrays when there are none. ``_without_reference`` is the plain numpy twin."""
    if not drop.any():
        return valid, depth
    valid = valid & ~drop
    return valid, _zero_where_not(depth, valid)


def _zero_where_not(depth: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``np.where(keep, depth, float32 0)`` as float32. For a float32 depth by its bits: and-ed with all ones where
    ``keep`` and zeros (+0.0) elsewhere, two vectorised passes (``np.where`` picks element by element, several
    times the CPU on a frame: docs/BENCHMARKS.md, session 20, sthr); the same bits, NaN, -0.0 and negatives
    included."""
    if depth.dtype != np.float32 or depth.shape != keep.shape:
        return np.where(keep, depth, np.float32(0.0)).astype(np.float32, copy=False)
    bits = keep.astype(np.uint32)  # 1 where kept
    np.negative(bits, out=bits)  # all ones where kept (unsigned wrap-around), 0 elsewhere
    np.bitwise_and(np.ascontiguousarray(depth).view(np.uint32), bits, out=bits)
    return bits.view(np.float32)


def _without_reference(valid: np.ndarray, depth: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_without`` in plain numpy (``np.where``): for tests."""
    if not drop.any():
        return valid, depth
    valid = valid & ~drop
    return valid, np.where(valid, depth, np.float32(0.0)).astype(np.float32, copy=False)  # float32 already: no copy


def _enclosed_pinhole_depths(
    filled: np.ndarray,  # [H, W] float32, ``fill_holes_background``'s depth (0: none), changed in place
    depth: np.ndarray,  # [H, W] float32, the render's depth (0 where not rendered)
    valid: np.ndarray,  # [H, W] bool, rendered
    pinhole_px: float,
) -> np.ndarray:
    """``filled`` with a depth for the hole pixels the span fill left empty between rendered pixels: a hole with a
    rendered pixel within ``int(pinhole_px)`` steps on *both* sides along a row, a column or a diagonal takes the
    farthest depth of those ends (background-preferring, as the span fill). Why: a surface observed from far and
    walked up to renders as a lattice of points with one-pixel gaps; where a row of gaps crosses a column of them
    both spans run the lattice's length, the span fill gives up, and the crossing was cast at the layout behind the
    surface: a grid of wall-coloured dots on a sofa (house:1, docs/RESULTS.md, session 32). A big hole's rim has
    rendered pixels on one side only and stays a hole. Returns ``filled`` (the same array). The numpy definition
    of ``hole_kernels.enclosed_pinhole_depths`` (the fused fill's), which tests compare with it."""
    r = int(pinhole_px)
    if r < 1:
        return filled
    h, w = valid.shape
    # candidates: empty holes with a rendered pixel within r steps (a dilation covers every line's ends)
    near = cv2.dilate(valid.view(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).view(bool)
    idx = np.flatnonzero((filled <= 0) & near)
    idx = idx[~valid.ravel()[idx]]
    if not len(idx):
        return filled
    ys, xs = np.divmod(idx, w)
    depth_flat, valid_flat = depth.ravel(), valid.ravel()
    best = np.zeros(len(idx), np.float32)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ends = []
        for sign in (1, -1):
            end = np.zeros(len(idx), np.float32)  # the nearest rendered depth that way, 0: none within r steps
            for k in range(r, 0, -1):  # nearest last: it wins
                yy, xx = ys + sign * k * dy, xs + sign * k * dx
                ok = np.flatnonzero((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w))
                at = yy[ok] * w + xx[ok]
                seen = valid_flat[at]
                end[ok[seen]] = depth_flat[at[seen]]
            ends.append(end)
        both = (ends[0] > 0) & (ends[1] > 0)
        best = np.where(both, np.maximum(best, np.maximum(ends[0], ends[1])), best)
    hit = best > 0
    filled.ravel()[idx[hit]] = best[hit]
    return filled


def _sky_is_no_surface(state: _LayoutState, valid: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outdoors, rendered pixels as far as the sky (the first view's sky, kept as memory points) are the sky: not
    a surface the small-hole fill may continue (it bent facades' and trees' depths up into them: a shell of
    invented sky-coloured points 10-50 m away, drawn as blocks when turning in the courtyard). Their colour stays
    (the clouds the first view saw; the sky layer's bands paint only what no sky point covers: courtyard novel
    pixels +0.1 dB over painting them all). Returns (valid, depth) without them."""
    if state.sky is None:
        return valid, depth
    return _without(valid, depth, valid & (depth >= state.sky_min_depth_m))


# a camera this close to an observed view's (position and turn) sees the memory sampled as that view saw it: its
# gaps are real (the first view's own, between a chair's legs), not a far-seen surface's points spread apart; the
# see-through pass is skipped there, so a loop back to the first camera ends on the first image exactly
SAME_VIEW_M, SAME_VIEW_DEG = 0.1, 5.0


def _fill_in_front(use: np.ndarray, pinhole: np.ndarray, ld: np.ndarray, f: np.ndarray,
                   cfg: GeometricConfig) -> np.ndarray:
    """``[M] bool`` over a frame's hole pixels: those that keep the small-hole fill's depth because it lies more than
    ``layout_front_rel`` in front of the layout surface (an object's gap, not a plane's): shown, but not folded
    into the memory (the frame's ``provisional_px``). Folded, their points grew a ghost: where the memory held an
    object seen sparse (courtyard@turned's fountain water, seen at a grazing angle), the fill spread its depth over
    the gaps, the next frames rendered those points as memory, and the fill spread them further, keyframe after
    keyframe, into a wall of smeared ground and sky across the square (docs/RESULTS.md, session 28)."""
    if cfg.fold_fill_in_front:
        return np.zeros(len(use), bool)
    return ~use & ~pinhole & (ld > 0) & (f > 0) & (f < np.float32(1.0 - cfg.layout_front_rel) * ld)


TONE_BLOCK_PX = 4  # _match_pinhole_tone's block side


def _match_pinhole_tone(
    rgb: np.ndarray,  # [H, W, 3] uint8, the frame (C-contiguous), modified in place
    valid: np.ndarray,  # [H, W] bool, the pixels the memory rendered
    pinholes: np.ndarray,  # [N] int64 flat pixel indices: gaps between invented points the layout textured
    radius_px: int,  # the window's half side, pixels (0: off)
) -> None:
    """Shift each textured gap between invented points by the local mean colour of the rendered points around
    the gaps less the gaps' own: the texture keeps its detail and takes the points' tone. The points were
    coloured where the surface was first seen, from farther away, by a texture read at another mip or warped in
    from a reference; a level or two apart, the gaps of a surface walked up to stood as a grid of dark lines
    around light squares (house@pitched, play: 2.2 levels; docs/RESULTS.md, session 33). Both fills call this
    one function.

    The means are over blocks of ``TONE_BLOCK_PX`` pixels, summed over the (2k + 1)^2 blocks around a gap's own
    (k = ceil(radius_px / TONE_BLOCK_PX)); the points counted are the rendered 8-neighbours of gaps, a mean of
    either kind needs 3 pixels. ``_match_pinhole_tone_reference`` is the numpy definition,
    ``hole_kernels.match_pinhole_tone`` the compiled pass (~0.5 ms for 20 k gaps at 640x360, where numpy's
    gathers took ~5 ms: docs/BENCHMARKS.md, session 33)."""
    if radius_px <= 0 or not len(pinholes):
        return
    from spatia.model.fill.image import hole_kernels

    if not rgb.flags.c_contiguous:
        raise ValueError("rgb must be C-contiguous: the tone match writes into it")
    hole_kernels.match_pinhole_tone(rgb, _read_only(valid), _read_only(np.asarray(pinholes, np.int64)), TONE_BLOCK_PX,
                                    -(-radius_px // TONE_BLOCK_PX))


def _match_pinhole_tone_reference(rgb: np.ndarray, valid: np.ndarray, pinholes: np.ndarray, radius_px: int) -> None:
    """``_match_pinhole_tone`` by loops: each gap's shift from the pixels of the blocks around its own, counted
    one by one (tests compare the two)."""
    if radius_px <= 0 or not len(pinholes):
        return
    H, W = valid.shape
    b = TONE_BLOCK_PX
    k = -(-radius_px // b)
    r, c = np.divmod(pinholes, W)
    y0, x0 = max(int(r.min()) // b - 1, 0) * b, max(int(c.min()) // b - 1, 0) * b
    y1, x1 = min(int(r.max()) + 2 * b, H), min(int(c.max()) + 2 * b, W)
    gap = np.zeros((H, W), bool)
    gap[r, c] = True
    near = np.zeros((H, W), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near[max(dy, 0) : H + min(dy, 0), max(dx, 0) : W + min(dx, 0)] |= gap[max(-dy, 0) : H + min(-dy, 0),
                                                                              max(-dx, 0) : W + min(-dx, 0)]
    pts = near & valid
    src = rgb.astype(np.float64)
    shifts = []
    for y, x in zip(r, c):
        by, bx = (y - y0) // b, (x - x0) // b
        ya, yb = max(y0 + (by - k) * b, y0), min(y0 + (by + k + 1) * b, y1)
        xa, xb = max(x0 + (bx - k) * b, x0), min(x0 + (bx + k + 1) * b, x1)
        p, g = pts[ya:yb, xa:xb], gap[ya:yb, xa:xb]
        if p.sum() >= 3 and g.sum() >= 3:
            shifts.append(src[ya:yb, xa:xb][p].mean(0) - src[ya:yb, xa:xb][g].mean(0))
        else:
            shifts.append(None)
    for (y, x), sh in zip(zip(r, c), shifts):
        if sh is not None:
            rgb[y, x] = np.clip(np.rint(src[y, x] + sh), 0, 255).astype(np.uint8)


def _glimpses_through_pinholes(
    hole_idx: np.ndarray,  # [M] int64 flat pixel indices of the holes
    pinhole: np.ndarray,  # [M] bool, those that keep the fill (a gap between a surface's rendered points)
    out_depth: np.ndarray,  # [H, W] float32, the frame's depth after the fill
    claims_depth_m: np.ndarray | None,  # [H, W] float32, a claimed reference colour's warped depth (0: none)
    cfg: GeometricConfig,
) -> np.ndarray:
    """``[J] int64`` flat pixel indices: pinholes whose reference colour was warped from more than
    ``colour_surface_rel`` farther than the surface around them. A reference frame saw what lies behind through the
    surface's gaps, or past its edge; that colour is a glimpse through the gap, not the surface: the caller lets the
    colour fill (the rendered pixels around: the surface) colour them instead. Shown as claimed, a courtyard tree's
    trunk walked up to was speckled with the paving's light grey (play frame 83, docs/RESULTS.md, session 32)."""
    rel = cfg.colour_surface_rel
    if claims_depth_m is None or not math.isfinite(rel) or not len(hole_idx):
        return np.zeros(0, np.int64)
    px = hole_idx[pinhole]
    d = out_depth.ravel()[px]
    c = claims_depth_m.ravel()[px]
    return px[(d > 0) & (c > np.float32(1.0 + rel) * d)]


def _colour_off_surface(
    claims_depth_m: np.ndarray | None,  # [H, W] float32: the warped depth of each pixel's claimed colour, 0: none
    depth: np.ndarray,  # [H, W] float32, the memory's render depth (the fill's input)
    valid: np.ndarray,  # [H, W] bool, where the memory rendered (the fill's input)
    painted: np.ndarray,  # [K] int64 flat pixel indices the fill painted (plane textures, sky) over any claim
    colored: np.ndarray,  # [H, W] bool, where the frame has colour after the fill (the rest: the colour fill's)
    out_depth: np.ndarray,  # [H, W] float32, the frame's depth after the fill
    cfg: GeometricConfig,
    hole_idx: np.ndarray | None = None,  # [M] int64 flat indices of ``~valid``: the compiled pass (None: numpy)
) -> np.ndarray:
    """``[J] int64`` flat pixel indices: holes of the memory whose colour may come from another surface than the
    depth the fill gave them (shown, not folded: the frame's ``provisional_px``). The fill gives a hole its depth
    (the background-preferring fill, a layout plane) independently of its colour, which is

    - a reference's (claimed in ``_apply_references``, not painted over): the warped depth of that colour differs
      from the pixel's by more than ``colour_surface_rel`` of it (a raised basin's water warped onto the paving
      behind it);
    - or the colour fill's, an average of the pixels around: a rendered pixel within ``pinhole_px`` (the square)
      lies more than ``colour_surface_rel`` nearer (a pinhole between the water's sparse rows, given the paving's
      depth behind).

    Folded, the pair would put one surface's colour on the other. This numpy body is the definition; given
    ``hole_idx``, one compiled pass over the holes (``hole_kernels.colour_off_surface``) gives the same pixels."""
    rel = cfg.colour_surface_rel
    if not math.isfinite(rel):
        return np.zeros(0, np.int64)
    radius, scale = int(cfg.pinhole_px), np.float32(1.0 + rel)
    if hole_idx is not None:
        from spatia.model.fill.image.hole_kernels import colour_off_surface

        mask = np.zeros(valid.shape, bool)
        mask.ravel()[painted] = True
        claims = np.zeros((0, 0), np.float32) if claims_depth_m is None else claims_depth_m
        return hole_idx[colour_off_surface(hole_idx, claims, mask, colored, out_depth, depth, valid, radius, scale,
                                           np.float32(rel))]
    parts = []
    if claims_depth_m is not None:
        shown = (claims_depth_m > 0) & ~valid & colored  # (a claim the colour fill replaced is no colour)
        shown.ravel()[painted] = False
        px = np.flatnonzero(shown)
        d = out_depth.ravel()[px]
        c = claims_depth_m.ravel()[px]
        parts.append(px[(d > 0) & (np.abs(c - d) > np.float32(rel) * d)])
    px = np.flatnonzero(~colored)  # (holes all: the memory's pixels are coloured)
    d = np.where(valid, depth, np.float32(np.inf)).astype(np.float32)
    nearest = cv2.erode(d, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8), borderType=cv2.BORDER_CONSTANT,
                        borderValue=float(np.inf)).ravel()[px]  # the nearest rendered depth in the square
    o = out_depth.ravel()[px]
    parts.append(px[(o > 0) & (scale * nearest < o)])
    return np.sort(np.concatenate(parts))


def _pinholes_on_planes(
    layout: Layout,
    view: LayoutView,  # the frame's bounds (before any beyond a doorway)
    rays_flat: np.ndarray,  # [H * W, 3] float32 pixel rays, camera frame
    hole_idx: np.ndarray,  # [M] flat pixel indices of the holes
    f: np.ndarray,  # [M] the background-preferring fill's depth at the holes (0: none)
    pinhole: np.ndarray,  # [M] bool, holes that keep that fill
    c2w: np.ndarray,  # [4, 4]
    rel: float,  # GeometricConfig.pinhole_plane_rel
    out_depth: np.ndarray,  # [H, W] float32, the frame's depth, modified in place
) -> None:
    """A pinhole whose fill lies within ``rel`` of the layout surface along its ray is on that surface: its
    depth becomes the surface's (``GeometricConfig.pinhole_plane_rel``). Pinholes the fill left empty or that free
    space emptied (depth 0) stay so; elsewhere (furniture, other non-planar gaps) the fill stays.

    ``_pinholes_on_planes_reference`` (numpy) is the definition; the selection and gathers before the cast and the
    write after it run in two compiled passes (``model.fill.geometry.pinhole_kernels``): the same bits
    (tests/test_pin_paths.py). The inputs go in as read-only C-contiguous views: the one signature the warm-up
    compiles."""
    from spatia.model.fill.geometry import pinhole_kernels as pk
    from spatia.model.fill.geometry.layout import cast_layout

    if rel <= 0:
        return
    if not out_depth.flags.c_contiguous:
        raise ValueError("out_depth must be C-contiguous: the pinholes are written through a flat view")
    flat = out_depth.reshape(-1)  # a view: writes land in out_depth
    hole_idx, f = _read_only(np.asarray(hole_idx, np.int64)), _read_only(np.asarray(f, np.float32))
    sel, rays = pk.pinhole_rays(hole_idx, f, _read_only(np.asarray(pinhole, bool)), flat,
                                _read_only(np.asarray(rays_flat, np.float32)))
    if not len(sel):
        return
    ld, _ = cast_layout(layout, view, rays, c2w)
    pk.pinholes_onto_planes(sel, hole_idx, f, _read_only(ld), np.float32(rel), flat)


def _pinholes_on_planes_reference(layout: Layout, view: LayoutView, rays_flat: np.ndarray, hole_idx: np.ndarray,
                                  f: np.ndarray, pinhole: np.ndarray, c2w: np.ndarray, rel: float,
                                  out_depth: np.ndarray) -> None:
    """Slow twin of ``_pinholes_on_planes`` in numpy (the same arguments): the definition its kernels follow."""
    from spatia.model.fill.geometry.layout import cast_layout

    if rel <= 0:
        return
    flat = out_depth.reshape(-1)
    sel = np.flatnonzero(pinhole & (f > 0))
    sel = sel[flat[hole_idx[sel]] > 0]
    if not len(sel):
        return
    ld, _ = cast_layout(layout, view, rays_flat[hole_idx[sel]], c2w)
    on = _fill_on_plane(f[sel], ld, rel)
    flat[hole_idx[sel[on]]] = ld[on]


def _fill_on_plane(f: np.ndarray, ld: np.ndarray, rel: float) -> np.ndarray:
    """``[K]`` bool: the fill's depth ``f`` [K] lies within ``rel`` of the layout's ``ld`` [K] (float32 z-depths, 0:
    none) along the same rays: a pinhole on that plane (``GeometricConfig.pinhole_plane_rel``; the compiled
    ``pinhole_kernels.pinholes_onto_planes`` tests the same)."""
    return (ld > 0) & (np.abs(f - ld) <= np.float32(rel) * ld)


def _invented_pinholes_on_planes(
    layout: Layout,
    view: LayoutView,  # the frame's bounds (before any beyond a doorway)
    rays_flat: np.ndarray,  # [H * W, 3] float32 pixel rays, camera frame
    hole_idx: np.ndarray,  # [M] flat pixel indices of the holes
    f: np.ndarray,  # [M] the background-preferring fill's depth at the holes (0: none)
    pinhole: np.ndarray,  # [M] bool, holes within ``pinhole_px`` of a rendered pixel (that keep the fill)
    observed_px: np.ndarray | None,  # [H, W] bool, rendered pixels showing an observed point; None: unknown
    c2w: np.ndarray,  # [4, 4]
    cfg: GeometricConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(idx [R] int64 into M, ascending; their layout z-depth [R] float32, plane [R] int16 and ray [R, 3] float32,
    cast_layout's)``: the pinholes that are gaps between invented points on a layout plane
    (``GeometricConfig.texture_invented_pinholes``): no rendered pixel within ``pinhole_px`` shows an observed
    point (the chamfer metric of the pinholes themselves), and the plane the ray meets lies within
    ``pinhole_plane_rel`` of the fill (as ``_pinholes_on_planes`` tells a pinhole on a plane). The layout fill casts
    and textures them as the other holes. Both fills call this one numpy function (the rule in one place); its cost
    is one dilation of the frame and a cast of those pinholes."""
    from spatia.model.fill.geometry.layout import cast_layout

    none = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int16), np.zeros((0, 3), np.float32))
    if observed_px is None or not cfg.texture_invented_pinholes or cfg.pinhole_plane_rel <= 0 or not pinhole.any():
        return none
    # pixels within pinhole_px of an observed one (the pinholes' own metric): a dilation, ~20x cheaper than the
    # distance transform of the whole frame
    near_observed = cv2.dilate(np.ascontiguousarray(observed_px).view(np.uint8), _chamfer_disc(cfg.pinhole_px)).ravel()
    cand = np.flatnonzero(pinhole & (near_observed[hole_idx] == 0))
    if not len(cand):
        return none
    rays = np.ascontiguousarray(rays_flat[hole_idx[cand]])
    ld, li = cast_layout(layout, view, rays, c2w)
    on = _fill_on_plane(f[cand], ld, cfg.pinhole_plane_rel)
    return cand[on], ld[on], li[on], rays[on]


def _at_an_observed_view(c2w: np.ndarray, views: list[ReferenceFrame]) -> bool:
    """Whether ``c2w`` [4, 4] is within ``SAME_VIEW_M`` and ``SAME_VIEW_DEG`` of an observed view's pose."""
    return any(translation_distance_m(v.c2w, c2w) <= SAME_VIEW_M and rotation_angle_deg(v.c2w, c2w) <= SAME_VIEW_DEG
               for v in views)


def _paint_supports(
    state: _LayoutState,
    hole_idx: np.ndarray,  # [M] flat pixel indices of the frame's holes
    rays_flat: np.ndarray,  # [H * W, 3] float32 camera frame pixel rays (z = 1)
    out_depth: np.ndarray,  # [H, W] float32, the fill's depth, updated in place
    rgb_flat: np.ndarray,  # [H * W, 3] uint8, the frame's colour, updated in place
    colored: np.ndarray,  # [H, W] bool, where the frame holds colour, updated in place
    c2w: np.ndarray,  # [4, 4] target pose
    reach,  # [P, 3] camera positions, world frame, or a ``layout.LayoutPath`` of them
    request: ClipRequest,
    cfg: GeometricConfig,
) -> None:
    """The holes whose ray meets a support (``model.fill.geometry.supports``: an observed object continued down to
    the floor) nearer than the fill's depth show it, except within the free-space radius of a pose or in front of
    what an observed view saw: the same rules as the layout's points. One function for the fused fill and its
    reference."""
    if not state.supports or not len(hole_idx):
        return
    from spatia.model.fill.geometry.layout import LayoutPath
    from spatia.model.fill.geometry.supports import SupportConfig, cast_supports, screen_box

    layout = state.layout
    width = out_depth.shape[1]
    candidates = []  # per support, the holes (indices into hole_idx, which is sorted) inside its screen box
    for s in state.supports:
        box = screen_box(s, layout, c2w, request.intrinsics)
        if box is None:
            candidates.append(np.zeros(0, np.int64))
            continue
        r0, r1, c0, c1 = box
        lo, hi = np.searchsorted(hole_idx, [r0 * width, (r1 + 1) * width])
        col = hole_idx[lo:hi] % width
        candidates.append(lo + np.flatnonzero((col >= c0) & (col <= c1)))
    some = [c for c in candidates if len(c)]
    if not some:
        return
    if len(some) == 1:  # (each is sorted)
        sub = some[0]
    else:
        mask = np.zeros(len(hole_idx), bool)
        for c in some:
            mask[c] = True
        sub = np.flatnonzero(mask)  # [K] the holes any support may cover
    candidates = [np.searchsorted(sub, c) for c in candidates]
    t, colour, pts = cast_supports(state.supports, layout, rays_flat[hole_idx[sub]], c2w, candidates)
    current = out_depth.ravel()[hole_idx[sub]]
    win = np.flatnonzero((t > 0) & ((current <= 0) | (t < (1.0 - SupportConfig().front_rel) * current)))
    if not len(win):
        return
    from scipy.spatial import cKDTree

    radius = layout.config.min_camera_distance_m
    near = np.zeros(len(win), bool)
    for s in state.supports:
        close = (reach.near(s.axis, s.offset_m, radius) if isinstance(reach, LayoutPath)
                 else reach[np.abs(reach @ layout.axes[s.axis] - s.offset_m) < radius])
        if len(close):
            near |= np.isfinite(cKDTree(close).query(pts[win], distance_upper_bound=radius)[0])
    win = win[~near]
    if request.observed_views and len(win):
        win = win[~_free_space_violation(pts[win], request.observed_views, cfg.free_space_rel)]
    px = hole_idx[sub[win]]
    out_depth.ravel()[px] = t[win]
    rgb_flat[px] = colour[win]
    colored.ravel()[px] = True


def _free_space_violation(
    points: np.ndarray,  # [M, 3] world frame, candidate invented points
    views: list[ReferenceFrame],  # observed views with depth
    rel: float,
) -> np.ndarray:
    """``[M]`` bool: True where a point lies in front of what an observed view saw along its line of sight."""
    bad = np.zeros(len(points), bool)
    for v in views:
        if v.depth_m is not None:
            seen_through(points, v.c2w, v.intrinsics, _known_depth(v.depth_m), rel, out=bad)
    return bad


def _near_poses(
    layout,  # model.fill.geometry.layout.Layout
    planes: list,  # [B] model.fill.geometry.layout.Plane
    plane_idx: np.ndarray,  # [K] int, the plane each point lies on
    points: np.ndarray,  # [K, 3] world frame
    reach,  # [P, 3] camera positions, world frame, or a ``layout.LayoutPath`` of them
    radius_m: float,
) -> np.ndarray:
    """``[K]`` bool: a pose lies nearer than ``radius_m`` to the point, as ``cKDTree(reach).query(points,
    distance_upper_bound=radius_m)`` finds (strictly nearer), but per plane and only among the poses that can be
    that near: a pose farther from the plane than ``radius_m`` plus the points' own distance off it (float32 ray
    casts) is farther than ``radius_m`` from each of them; floors and ceilings mostly have no such pose. (One
    tree over every pose and every re-cast point took ~13 ms of a 640x360 house frame.)"""
    from scipy.spatial import cKDTree

    out = np.zeros(len(points), bool)
    for q in np.unique(plane_idx):
        sel = np.flatnonzero(plane_idx == q)
        a, off = layout.axes[planes[q].axis], planes[q].offset_m
        slack = float(np.max(np.abs(points[sel] @ a - off))) + 1e-9
        width = radius_m + slack
        close = reach[np.abs(reach @ a - off) < width] if isinstance(reach, np.ndarray) else reach.near(
            planes[q].axis, off, width)
        if not len(close):
            continue
        lo, hi = close.min(0) - radius_m - 1e-9, close.max(0) + radius_m + 1e-9
        sel = sel[np.all((points[sel] >= lo) & (points[sel] <= hi), axis=1)]  # outside: farther from every pose
        if len(sel):
            d, _ = cKDTree(close).query(points[sel], distance_upper_bound=radius_m)
            out[sel[np.isfinite(d)]] = True
    return out


@lru_cache(maxsize=4)
def _chamfer_disc(pinhole_px: float) -> np.ndarray:
    """``[2r + 1, 2r + 1]`` uint8 structuring element: the offsets within ``pinhole_px`` (``_chamfer_offsets``) and
    the centre."""
    dy, dx = _chamfer_offsets(pinhole_px)
    r = int(max(np.abs(dy).max(initial=0), np.abs(dx).max(initial=0)))
    disc = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
    disc[r, r] = 1
    disc[dy + r, dx + r] = 1
    return disc


@lru_cache(maxsize=4)
def _chamfer_offsets(pinhole_px: float) -> tuple[np.ndarray, np.ndarray]:
    from spatia.model.fill.image.hole_kernels import chamfer_offsets

    return chamfer_offsets(pinhole_px)


class _HoleRays:
    """``rays[sel]`` of the hole pixels ([M, 3] camera frame) without gathering all M: ``_beyond_openings`` reads
    only the few rays it re-casts."""

    def __init__(self, rays_flat: np.ndarray, hole_idx: np.ndarray) -> None:
        self.rays_flat, self.hole_idx = rays_flat, hole_idx  # [H * W, 3], [M]

    def __getitem__(self, sel: np.ndarray) -> np.ndarray:
        return self.rays_flat[self.hole_idx[sel]]


# ``_known_depth``'s results by the id of the array they were made from (with a weak reference to check it is still
# that array): an observed view's depth is the same array every frame (the engine keeps its observed views)
_KNOWN_DEPTH: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def _known_depth(depth_m: np.ndarray) -> np.ndarray:
    """``[H, W]`` float32: an observed view's history depth (0 = unknown: a dynamic entity kept out of the memory,
    a sensor's hole) with NaN where unknown, which the free-space tests (``seen_through``, ``hole_kernels``) read
    as no evidence either way. Read as 0, "nothing came back", an unknown pixel freed its whole ray: official case
    3's masked cow kept the layout's backdrop out of its silhouette, which then showed the sky. Made once per
    array, not each frame (docs/BENCHMARKS.md, "Session 34, lead")."""
    hit = _KNOWN_DEPTH.get(id(depth_m))
    if hit is not None and hit[0]() is depth_m:
        return hit[1]
    depth = np.ascontiguousarray(depth_m, np.float32)
    known = np.where(depth > 0, depth, np.float32(np.nan)) if (depth <= 0).any() else depth
    if len(_KNOWN_DEPTH) >= 64:  # worlds come and go: forget them all now and then
        _KNOWN_DEPTH.clear()
    _KNOWN_DEPTH[id(depth_m)] = (weakref.ref(depth_m), known)
    return known


def _packed_views(views: list[ReferenceFrame]) -> tuple:
    """The observed views with depth as ``hole_kernels``' arrays: R [V, 3, 3], t [V, 3], (fx, fy, cx, cy) [V, 4],
    (H, W) [V, 2], offsets [V + 1] and the depths one after another (float32; no copy for a single view)."""
    views = [v for v in views if v.depth_m is not None]
    depths = [_known_depth(v.depth_m).reshape(-1) for v in views]
    flat = depths[0] if len(depths) == 1 else (np.concatenate(depths) if depths else np.zeros(1, np.float32))
    return (np.array([v.c2w[:3, :3] for v in views], np.float64).reshape(-1, 3, 3),
            np.array([v.c2w[:3, 3] for v in views], np.float64).reshape(-1, 3),
            np.array([[v.intrinsics.fx, v.intrinsics.fy, v.intrinsics.cx, v.intrinsics.cy] for v in views],
                     np.float64).reshape(-1, 4),
            np.array([v.depth_m.shape for v in views], np.int64).reshape(-1, 2),
            np.concatenate([[0], np.cumsum([len(d) for d in depths])]).astype(np.int64), _read_only(flat))


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only, C-contiguous view of ``a``: numba compiles one signature per array type (writable or not),
    and the warm-up (``model.fill.warmup``) compiles this one, whatever the caller's array was."""
    a = np.ascontiguousarray(a).view()
    a.setflags(write=False)
    return a


class GeometricGenerator:
    """Memory render + reference warps + hole filling; deterministic (no randomness at all)."""

    name = "geometric"
    capabilities = GeneratorCapabilities(
        exact_poses=True,  # frames are drawn at exactly the requested poses: the memory update need not refine them
        uses_preceding_clip=False,  # frames come from the memory at their poses, the layout from the targets' render
        streams_frames=True,  # each frame is independent given the memory, the references and the layout
        prepares_worlds=True,  # the layout fill's per-world state is fitted when a world is opened
        # a layout-filled frame reads its own target's projection only: each target is rendered just before its
        # frame (the legacy fill's layout estimate reads every target's, and asks for them all first)
        projection_on_demand=True,
    )

    def __init__(self, config: GeometricConfig = GeometricConfig()) -> None:
        self.config = config
        if config.fill == "layout" and config.texture_invented_pinholes:
            # the layout fill tells the gaps between invented points from those between observed ones
            self.capabilities = replace(type(self).capabilities, reads_observed=True)
        # per world (model.fill.state): the fit, then the plane textures, then (low priority) the tiles
        self._states = FillStates(_fit_layout_state, _fit_plane_textures, _warm_tiles)
        if config.fill == "layout":
            _import_layout_fill()
            _load_frame_kernels()

    def prepare_world(self, memory, observed_views: list[ReferenceFrame], world_up: np.ndarray,
                      layout_prior=None) -> None:
        """Start fitting the world's layout state on the maintenance thread (the engine calls this when it opens
        a world, so the fit runs while a session starts instead of inside its first frame)."""
        if self.config.fill == "layout" and memory is not None:
            self._states.prepare(memory, *self._fill_inputs(memory, observed_views, world_up, layout_prior))

    def wait_prepared(self, memory, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the fit ``prepare_world`` started (the layout, the sky and the plane
        textures; not the tiles): True when done or when there is none. Frames never depend on it."""
        return self.config.fill != "layout" or memory is None or self._states.wait(memory, timeout_s)

    def _fill_inputs(self, memory, observed_views, world_up, layout_prior=None):
        def inputs() -> FillInputs:
            pts, cols = memory.observed_points()
            first = observed_views[0] if observed_views else None
            if first is not None:
                observer, fwd, up = first.c2w[:3, 3], first.c2w[:3, 2], -first.c2w[:3, 1]
            else:
                observer, fwd, up = np.zeros(3), np.array([0.0, 0.0, 1.0]), np.asarray(world_up, float)
            return FillInputs(inputs_key(memory, observed_views), pts, cols, observer.copy(), fwd.copy(),
                              up.copy(), first, layout_prior)

        return inputs, inputs_key(memory, observed_views)

    def _fill_entry(self, request: ClipRequest) -> FillEntry | None:
        """The request's world's fill entry (the layout, plane textures and sky of its current observed points,
        fitted on the maintenance thread); None when the request carries no memory."""
        mem = request.memory
        if mem is None or not hasattr(mem, "observed_points"):
            return None
        # keyed by the world's memory (a frozen view of it while its update runs beside the clips: ``origin``),
        # read from what the frames read
        return self._states.prepare(mem.origin, *self._fill_inputs(mem, request.observed_views, request.world_up,
                                                                  request.layout_prior))

    def _layout_fill(
        self,
        state: _LayoutState,
        rgb: np.ndarray,  # [H, W, 3] uint8, memory render with references applied, modified in place
        colored: np.ndarray,  # [H, W] bool, where rgb holds colour
        depth: np.ndarray,  # [H, W] float32, memory render depth
        valid: np.ndarray,  # [H, W] bool, where the memory rendered
        c2w: np.ndarray,  # [4, 4] target pose
        request: ClipRequest,
        reach,  # [P, 3] camera positions visited or about to be, world frame, or a ``layout.LayoutPath`` of them
        coarse: _PlaneCoarse | None = None,  # the per-plane coarse fill (None: none); gets the provisional pixels
        view: LayoutView | None = None,  # ``view_bounds`` at c2w for ``reach``, when the caller has it
        claims_depth_m: np.ndarray | None = None,  # [H, W] float32, ``_apply_references``'s (None: no reference)
        observed_px: np.ndarray | None = None,  # [H, W] bool, ``SceneProjection.observed`` (None: unknown)
    ) -> tuple[np.ndarray, np.ndarray]:
        """Depth ([H, W] float32) and the colour-valid mask after filling the holes with the layout.

        ``_layout_fill_reference`` (numpy) is the definition, step by step; here its per-hole-pixel passes run in
        three compiled kernels (``model.fill.image.hole_kernels``) and the texel reads write straight into ``rgb``: the
        same bits (tests/test_layout_fill_fused.py), a fraction of the CPU (docs/BENCHMARKS.md, session 9)."""
        from spatia.model.fill.image import hole_kernels as hk
        from spatia.model.fill.texture.appearance import plane_basis
        from spatia.model.fill.geometry.layout import (cast_layout, layout_path, opening_pixels, stale_closing_pixels,
                                                       view_bounds)
        from spatia.model.fill.texture.synthesis import FAR_LEVEL, read_texels

        cfg = self.config
        layout = state.layout
        K = request.intrinsics
        rays_img = _rays(K)  # [H, W, 3] float32 camera frame
        rays_flat = rays_img.reshape(-1, 3)  # [H * W, 3] a view
        reach = layout_path(layout, reach)  # (the path's summary: the poses near each plane, kept as it grows)
        view = view_bounds(layout, c2w[:3, 3], reach) if view is None else view
        if view.openings:  # a wall the memory holds where the path goes through it (a doorway) is not shown
            valid, depth = _without(valid, depth, opening_pixels(layout, view, depth, valid, rays_img, c2w))
        # what the memory invented on an earlier guess of a closing wall, now in front of the current guess
        valid, depth = _without(valid, depth, stale_closing_pixels(layout, view, depth, valid, rays_img, c2w))
        valid, depth = _sky_is_no_surface(state, valid, depth)
        filled = fill_holes_background(depth, valid, max_span_px=cfg.small_hole_px)
        if valid.all():
            return filled, colored
        hk.enclosed_pinhole_depths(filled, _read_only(depth), _read_only(valid), int(cfg.pinhole_px))
        hole_idx, f, pinhole, cast, rays_cast = hk.hole_rays_near(
            _read_only(valid), filled, rays_img, _read_only(hk.near_rendered(valid, *_chamfer_offsets(cfg.pinhole_px))))
        ld_cast, li_cast = cast_layout(layout, view, rays_cast, c2w)
        rel_idx, rel_ld, rel_li, rel_rays = _invented_pinholes_on_planes(
            layout, view, rays_flat, hole_idx, f, pinhole, observed_px, c2w, cfg)
        if len(rel_idx):  # gaps between invented points on a plane: cast (their cast reused) and textured
            pinhole = pinhole.copy()
            pinhole[rel_idx] = False
            cast, rays_cast = np.concatenate([cast, rel_idx]), np.concatenate([rays_cast, rel_rays])
            ld_cast, li_cast = np.concatenate([ld_cast, rel_ld]), np.concatenate([li_cast, rel_li])
        R, cam = np.ascontiguousarray(c2w[:3, :3], np.float64), np.ascontiguousarray(c2w[:3, 3], np.float64)
        # free space around every pose the camera has been at or is about to be at (only the poses near a plane
        # can be near its points; the reference's selection, box and strict radius)
        radius = layout.config.min_camera_distance_m
        close_pts, close_start = [np.zeros((0, 3))], np.zeros(len(view.bounds) + 1, np.int64)
        box = np.zeros((2, len(view.bounds), 3))
        for i, plane in enumerate(view.bounds):
            close = reach.near(plane.axis, plane.offset_m, radius)  # reach[|reach @ axis - offset| < radius]
            close_start[i + 1] = close_start[i] + len(close)
            if len(close):
                close_pts.append(close)
                box[0, i], box[1, i] = close.min(0) - radius, close.max(0) + radius
        views = _packed_views(request.observed_views)
        ld, li, pts, use, through = hk.hole_surfaces(
            len(hole_idx), cast, ld_cast, li_cast, rays_cast, f, float(cfg.layout_front_rel), R, cam,
            np.ascontiguousarray(np.concatenate(close_pts), np.float64), close_start, box[0], box[1], float(radius),
            *views, float(cfg.free_space_rel))
        bounds = list(view.bounds)
        if len(rel_idx) and len(through):  # (cast in two runs: the released pinholes after the others)
            through = np.sort(through)
        if len(through):
            # where an observed view saw through the plane (a doorway, a window), the ray goes on to what lies
            # beyond the opening (the reference's comment); rare, so the numpy path
            self._beyond_openings(layout, bounds, through, _HoleRays(rays_flat, hole_idx), ld, li, pts, use, c2w,
                                  request, reach)
        # colour: each plane's texture where the layout wins (planes asked for their texture only when shown: a
        # texture model is fitted on first use)
        shown = np.bincount(li[use], minlength=len(bounds)) if use.any() else np.zeros(len(bounds), np.int64)
        n_b = len(bounds)
        coarse_b = np.zeros(n_b, bool) if coarse is None else coarse.planes(bounds, shown)
        kind = np.zeros(n_b, np.int8)  # 0: no texture, 1: a synthesis model's tiles alone, 2: PlaneTexture.sample
        texs = [None] * n_b
        basis = np.zeros((n_b, 2, 3))
        normal_cam = np.zeros((n_b, 3), np.float32)
        tex_origin = np.zeros((n_b, 2))
        texel_m = np.ones(n_b)
        origin_px = np.zeros((n_b, 2), np.int64)
        max_level = np.zeros(n_b, np.int64)
        for i, plane in enumerate(bounds):
            if not shown[i] or coarse_b[i]:  # a coarse plane is left to the colour fill (its texture not asked for)
                continue
            tex = state.textures.for_plane(plane)
            if tex is None:
                continue
            texs[i] = tex
            basis[i] = np.stack(plane_basis(layout, plane))
            normal_cam[i] = R.T @ layout.axes[plane.axis]
            if (tex.synth is None or tex.far is not None or tex.unseen is not None or tex.gain != 1.0
                    or tex.detail_over is not None):
                # its own sampling (mirror repeat; a far look beyond a distance, unseen cells' lowered contrast, a
                # borrowed texture's tone, another wall's detail over a plane's own colour):
                # the kernel's plane coordinates and footprints, the same inputs the reference hands it
                kind[i] = 2
                continue
            kind[i] = 1
            m = tex.synth
            tex_origin[i] = np.asarray(tex.synth_origin_uv, np.float64)
            texel_m[i] = m.texel_m
            origin_px[i] = m.origin_px
            max_level[i] = int(math.log2(m.tile_px & -m.tile_px))  # texture.sample_uv's
        out_depth = filled.copy()
        cap = np.float32(np.inf if layout.indoor else layout.config.max_ground_m)
        order, starts, rows, cols, level, uv, footprint = hk.hole_depth_texels(
            hole_idx, ld, li, pts, use, f, rays_flat, R, cam, len(views[0]) > 0, *views,
            float(cfg.free_space_rel), cap, filled.reshape(-1), out_depth.reshape(-1), n_b, kind, basis, normal_cam,
            np.float32(max(K.fx, K.fy)), np.float32(MIN_INCIDENCE_COS), tex_origin, texel_m, origin_px, max_level)
        _pinholes_on_planes(layout, view, rays_flat, hole_idx, f, pinhole, c2w, cfg.pinhole_plane_rel, out_depth)
        if not rgb.flags.c_contiguous:
            raise ValueError("rgb must be C-contiguous: the fill writes into it through a flat view")
        rgb_flat = rgb.reshape(-1, 3)  # a view: writes below land in ``rgb``
        late_px, fill_px = [], []  # flat pixel indices per plane: provisional (tiles not due); of those, unpainted
        for i in np.flatnonzero(kind):
            s0, s1 = int(starts[i]), int(starts[i + 1])
            dst = hole_idx[order[s0:s1]]
            if kind[i] == 1:
                r, c, lv = rows[s0:s1], cols[s0:s1], level[s0:s1]
                codes = None if coarse is None else coarse.texels(state, texs[i], r, c, lv)
                if codes is not None and codes.any():  # provisional: a stand-in, or left to the colour fill
                    late_px.append(dst[codes != FINAL])
                    fill_px.append(dst[codes == COLOUR_FILL])
                    stand = np.flatnonzero(codes == STAND_IN)
                    read_texels(texs[i].synth, r[stand], c[stand], np.full(len(stand), FAR_LEVEL, np.int64),
                                texs[i].seed, dst[stand], rgb_flat)
                    keep = codes == FINAL
                    r, c, lv, dst = r[keep], c[keep], lv[keep], dst[keep]
                read_texels(texs[i].synth, r, c, lv, texs[i].seed, dst, rgb_flat)
            else:
                uv_i, fp_i = uv[s0:s1], footprint[s0:s1]
                codes, stand_fp = (None, None) if coarse is None else coarse.sampled(state, texs[i], uv_i, fp_i)
                if codes is not None and codes.any():
                    late_px.append(dst[codes != FINAL])
                    fill_px.append(dst[codes == COLOUR_FILL])
                    stand = codes == STAND_IN
                    rgb_flat[dst[stand]] = texs[i].sample(uv_i[stand], stand_fp[stand])
                    keep = codes == FINAL
                    uv_i, fp_i, dst = uv_i[keep], fp_i[keep], dst[keep]
                rgb_flat[dst] = texs[i].sample(uv_i, fp_i)
        painted = hole_idx[order]
        late_px = np.concatenate(late_px) if late_px else np.zeros(0, np.int64)
        if fill_px and sum(map(len, fill_px)):
            unpainted = np.zeros(valid.size, bool)
            unpainted[np.concatenate(fill_px)] = True
            painted = painted[~unpainted[painted]]
        if len(rel_idx):  # the released pinholes a texture painted
            painted_px = np.zeros(valid.size, bool)
            painted_px[painted] = True
            released = hole_idx[rel_idx]
            _match_pinhole_tone(rgb, valid, released[painted_px[released]], cfg.pinhole_tone_px)
        if coarse is not None:
            plane_px = (hole_idx[np.flatnonzero(use & coarse_b[np.maximum(li, 0)])] if coarse_b.any()
                        else np.zeros(0, np.int64))
            coarse.set_mask(valid.shape, np.concatenate([plane_px, late_px]))
            coarse.set_in_front(valid.shape, hole_idx[_fill_in_front(use, pinhole, ld, f, cfg)])
        if state.sky is not None:  # the sky where nothing is hit outdoors
            open_sky = (ld <= 0) & ~pinhole  # a cast ray that hits nothing: sky, not a small-hole fill's surface
            out_depth.ravel()[hole_idx[open_sky]] = 0.0
            sky = np.flatnonzero((ld <= 0) & ((f <= 0) | open_sky))
            sky = hole_idx[sky[~colored.ravel()[hole_idx[sky]]]]
            if len(sky):
                rgb_flat[sky] = state.sky.colour(rays_flat[sky] @ R.T)
                painted = np.concatenate([painted, sky])
        colored = colored.copy()
        colored.ravel()[painted] = True
        _paint_supports(state, hole_idx, rays_flat, out_depth, rgb_flat, colored, c2w, reach, request, cfg)
        colored.ravel()[_glimpses_through_pinholes(hole_idx, pinhole, out_depth, claims_depth_m, cfg)] = False
        if coarse is not None:
            coarse.set_off_surface(valid.shape, _colour_off_surface(claims_depth_m, depth, valid, painted, colored,
                                                                    out_depth, cfg, hole_idx))
        return out_depth, colored

    def _layout_fill_reference(
        self,
        state: _LayoutState,
        rgb: np.ndarray,  # [H, W, 3] uint8, memory render with references applied, modified in place
        colored: np.ndarray,  # [H, W] bool, where rgb holds colour
        depth: np.ndarray,  # [H, W] float32, memory render depth
        valid: np.ndarray,  # [H, W] bool, where the memory rendered
        c2w: np.ndarray,  # [4, 4] target pose
        request: ClipRequest,
        reach,  # [P, 3] camera positions visited or about to be, world frame, or a ``layout.LayoutPath`` of them
        coarse: _PlaneCoarse | None = None,  # the per-plane coarse fill (None: none); gets the provisional pixels
        view: LayoutView | None = None,  # ``view_bounds`` at c2w for ``reach``, when the caller has it
        claims_depth_m: np.ndarray | None = None,  # [H, W] float32, ``_apply_references``'s (None: no reference)
        observed_px: np.ndarray | None = None,  # [H, W] bool, ``SceneProjection.observed`` (None: unknown)
    ) -> tuple[np.ndarray, np.ndarray]:
        """Depth ([H, W] float32) and the colour-valid mask after filling the holes with the layout: the numpy
        definition of ``_layout_fill`` (which fuses its per-pixel passes into compiled kernels)."""
        from spatia.model.fill.texture.appearance import plane_basis
        from spatia.model.fill.geometry.layout import (LayoutPath, cast_layout, opening_pixels, stale_closing_pixels,
                                                       view_bounds)

        cfg = self.config
        layout = state.layout
        K = request.intrinsics
        reach = reach.positions() if isinstance(reach, LayoutPath) else reach  # the whole path, every frame
        view = view_bounds(layout, c2w[:3, 3], reach) if view is None else view
        if view.openings:  # a wall the memory holds where the path goes through it (a doorway) is not shown
            valid, depth = _without(valid, depth, opening_pixels(layout, view, depth, valid, _rays(K), c2w))
        # what the memory invented on an earlier guess of a closing wall, now in front of the current guess
        valid, depth = _without(valid, depth, stale_closing_pixels(layout, view, depth, valid, _rays(K), c2w))
        valid, depth = _sky_is_no_surface(state, valid, depth)
        filled = _enclosed_pinhole_depths(fill_holes_background(depth, valid, max_span_px=cfg.small_hole_px), depth,
                                          valid, cfg.pinhole_px)
        holes = ~valid
        hole_idx = np.flatnonzero(holes)  # [M] flat pixel indices (integer gathers beat [H, W] boolean masks)
        if not len(hole_idx):
            return filled, colored
        rays = _rays(K).reshape(-1, 3)[hole_idx]  # [M, 3] camera frame
        f = filled.ravel()[hole_idx]
        # pinholes between rendered points (a far or oblique surface rendered sparse) keep the fill: they are
        # the surface around them, not a glimpse of the layout behind it
        dist_px = cv2.distanceTransform(holes.view(np.uint8), cv2.DIST_L2, 3).ravel()[hole_idx]
        pinhole = (dist_px <= cfg.pinhole_px) & (f > 0)
        # ... unless they are gaps between invented points on a plane (``texture_invented_pinholes``)
        released = _invented_pinholes_on_planes(layout, view, _rays(K).reshape(-1, 3), hole_idx, f, pinhole,
                                                observed_px, c2w, cfg)[0]
        pinhole[released] = False
        # ... so only the other holes are cast: a pinhole's layout hit is never read (every use of ld / li / pts
        # below is under ``use``, which excludes pinholes, or needs f <= 0, which they do not have). On the 128x96
        # gym walk 88-100 % of a frame's ~4 k holes are pinholes. (Both per-ray kernels: the same bits either way.)
        cast = np.arange(len(hole_idx)) if _CAST_PINHOLES else np.flatnonzero(~pinhole)
        ld = np.zeros(len(hole_idx), np.float32)  # [M] layout z-depth, 0: none (or not cast)
        li = np.full(len(hole_idx), -1, np.int16)  # [M] index into view.bounds, -1: none
        ld[cast], li[cast] = cast_layout(layout, view, rays[cast], c2w)
        use = (ld > 0) & ~pinhole & ((f <= 0) | (f >= (1.0 - cfg.layout_front_rel) * ld))
        R = c2w[:3, :3]
        pts = np.zeros((len(hole_idx), 3))  # [M, 3] world frame (meaningful where ld > 0)
        pts[cast] = world_points(rays[cast], ld[cast], c2w)
        # free space around every pose the camera has been at or is about to be at (only the poses near a
        # plane can be near its points)
        radius = layout.config.min_camera_distance_m
        near_pose = []
        for i, plane in enumerate(view.bounds):
            a = layout.axes[plane.axis]
            close = reach[np.abs(reach @ a - plane.offset_m) < radius]
            if not len(close):
                continue
            sel = np.flatnonzero(use & (li == i))
            # only points inside the box around those poses can be near one: the tree is asked about those
            lo, hi = close.min(0) - radius, close.max(0) + radius
            sel = sel[np.all((pts[sel] >= lo) & (pts[sel] <= hi), axis=1)]
            if len(sel):
                from scipy.spatial import cKDTree

                d, _ = cKDTree(close).query(pts[sel], distance_upper_bound=radius)
                near_pose.append(sel[np.isfinite(d)])
                use[near_pose[-1]] = False
        bounds = list(view.bounds)
        if request.observed_views:
            # where an observed view saw through the plane (a doorway, a window: also where the camera walks
            # through it), the ray goes on to what lies beyond the opening (the next plane that way, or the other
            # bounds: the rooms' side walls, floor and ceiling continued), not to nothing, which the colour fill
            # smeared over. Near a pose alone is no opening: that stays to the fill (a porthole otherwise).
            sel = np.concatenate([np.flatnonzero(use), *near_pose])
            through = sel[_free_space_violation(pts[sel], request.observed_views, cfg.free_space_rel)]
            use[through] = False
            if len(through):
                self._beyond_openings(layout, bounds, through, rays, ld, li, pts, use, c2w, request, reach)
        # depth: the layout where it wins (the ground only up to max_ground_m: extents capped), else the fill
        new_depth = np.where(use, ld, np.maximum(f, 0.0))
        other = np.flatnonzero(~use & (new_depth > 0))
        if request.observed_views and len(other):
            # the fill's own points obey free space too: what an observed view saw through stays empty
            p_other = world_points(rays[other], new_depth[other], c2w)
            new_depth[other[_free_space_violation(p_other, request.observed_views, cfg.free_space_rel)]] = 0.0
        if not layout.indoor:
            new_depth = np.where(use & (ld > layout.config.max_ground_m), 0.0, new_depth)
        out_depth = filled.copy()
        out_depth.ravel()[hole_idx] = new_depth
        _pinholes_on_planes(layout, view, _rays(K).reshape(-1, 3), hole_idx, f, pinhole, c2w, cfg.pinhole_plane_rel,
                            out_depth)
        # colour: each plane's texture where the layout wins; the sky where nothing is hit outdoors
        if not rgb.flags.c_contiguous:
            raise ValueError("rgb must be C-contiguous: the fill writes into it through a flat view")
        rgb_flat = rgb.reshape(-1, 3)  # a view: writes below land in ``rgb``
        cols = rgb_flat[hole_idx]
        painted = np.zeros(len(rays), bool)
        shown = np.array([np.count_nonzero(use & (li == i)) for i in range(len(bounds))], np.int64)
        coarse_b = np.zeros(len(bounds), bool) if coarse is None else coarse.planes(bounds, shown)
        late_px = [np.zeros(0, np.int64)]  # hole indices per plane: its tiles not due yet (``_PlaneCoarse.texels``)
        for i, plane in enumerate(bounds):
            sel = use & (li == i)
            if not sel.any() or coarse_b[i]:  # a coarse plane: the colour fill's (its texture not asked for)
                continue
            tex = state.textures.for_plane(plane)
            if tex is None:
                continue
            uv = _plane_uv(pts[sel], *plane_basis(layout, plane))  # [K, 2] plane metres (u, v)
            # the mip level follows the footprint's long axis on the plane (as a GPU's does): one texel read per
            # pixel of a grazing ray would alias, and synthesise tiles nobody can resolve
            normal_cam = R.T @ layout.axes[plane.axis]
            fp = plane_footprint_m(rays[sel], ld[sel], max(K.fx, K.fy), normal_cam)
            sel = np.flatnonzero(sel)
            if coarse is not None:
                codes, stand_fp = coarse.sampled(state, tex, uv, fp)
                late_px.append(sel[codes != FINAL])  # provisional: a stand-in, or left to the colour fill
                stand = codes == STAND_IN
                cols[sel[stand]] = tex.sample(uv[stand], stand_fp[stand])
                painted[sel[stand]] = True
                keep = codes == FINAL
                sel, uv, fp = sel[keep], uv[keep], fp[keep]
            cols[sel] = tex.sample(uv, fp)
            painted[sel] = True
        if coarse is not None:
            coarse.set_mask(valid.shape, hole_idx[np.concatenate([np.flatnonzero(use & coarse_b[np.maximum(li, 0)]),
                                                                  *late_px])])
            coarse.set_in_front(valid.shape, hole_idx[_fill_in_front(use, pinhole, ld, f, cfg)])
        if state.sky is not None:
            open_sky = (ld <= 0) & ~pinhole  # a cast ray that hits nothing: sky, not a small-hole fill's surface
            out_depth.ravel()[hole_idx[open_sky]] = 0.0
            sky = (ld <= 0) & ((f <= 0) | open_sky) & ~colored.ravel()[hole_idx]
            if sky.any():
                cols[sky] = state.sky.colour(rays[sky] @ R.T)
                painted |= sky
        rgb_flat[hole_idx] = cols
        _match_pinhole_tone(rgb, valid, hole_idx[released[painted[released]]], cfg.pinhole_tone_px)
        out_depth = out_depth.astype(np.float32)
        colored = colored.copy()
        colored.ravel()[hole_idx[painted]] = True
        _paint_supports(state, hole_idx, _rays(K).reshape(-1, 3), out_depth, rgb_flat, colored, c2w, reach, request,
                        cfg)
        colored.ravel()[_glimpses_through_pinholes(hole_idx, pinhole, out_depth, claims_depth_m, cfg)] = False
        if coarse is not None:
            coarse.set_off_surface(valid.shape, _colour_off_surface(claims_depth_m, depth, valid, hole_idx[painted],
                                                                    colored, out_depth, cfg))
        return out_depth, colored

    def _beyond_openings(
        self,
        layout,  # model.fill.geometry.layout.Layout
        bounds: list,  # [B] the view's bounding planes; planes beyond openings are appended
        through: np.ndarray,  # [T] int, indices of hole rays whose layout hit an observed view saw through
        rays: np.ndarray,  # [M, 3] hole pixel rays, camera frame
        ld: np.ndarray,  # [M] layout z-depth, updated in place
        li: np.ndarray,  # [M] index into ``bounds``, updated in place
        pts: np.ndarray,  # [M, 3] world frame, updated in place
        use: np.ndarray,  # [M] bool, updated in place
        c2w: np.ndarray,  # [4, 4] target pose
        request: ClipRequest,
        reach,  # [P, 3] camera positions, world frame, or a ``layout.LayoutPath`` of them
    ) -> None:
        """Cast the rays in ``through`` again without the plane they were seen through, adding the next observed
        plane beyond it along its axis; hits that keep free space (observed views, poses) are used."""
        from spatia.model.fill.geometry.layout import LayoutView, cast_layout

        n_view = len(bounds)
        radius = layout.config.min_camera_distance_m
        groups = [(int(i), through[li[through] == i]) for i in np.unique(li[through])]  # before any ray moves
        for i, rays_i in groups:
            plane = bounds[i]
            # "beyond": further from the camera, which stands on the side the plane faces; a room's wall, not the
            # front of a sofa in the next room (an endless plane there stood across the doorway's edges, textured
            # with the sofa: house, walking up to its first doorway)
            beyond = [p for p in layout.planes if p.axis == plane.axis and p.facing == plane.facing
                      and plane.facing * (p.offset_m - plane.offset_m) < -layout.config.wall_thickness_m
                      and layout.is_room_wall(p)]
            others = [k for k in range(n_view) if k != i]
            planes = [bounds[k] for k in others]
            if beyond:
                planes.append(max(beyond, key=lambda p: plane.facing * (p.offset_m - plane.offset_m)))
            d2, i2 = cast_layout(layout, LayoutView(planes), rays[rays_i], c2w)
            p2 = world_points(rays[rays_i], d2, c2w)
            ok = (d2 > 0) & (i2 >= 0)
            if ok.any() and request.observed_views:
                sel = np.flatnonzero(ok)
                ok[sel[_free_space_violation(p2[sel], request.observed_views, self.config.free_space_rel)]] = False
            # nothing the layout holds lies beyond where the observed view saw through (no hit, or one it saw
            # through too): the ray hits nothing, which outdoors is the sky. Before, the first hit stayed and the
            # colour fill smeared facade and grass over the sky between the courtyard's buildings
            nothing = ~ok
            if ok.any() and len(reach):
                sel = np.flatnonzero(ok)
                ok[sel[_near_poses(layout, planes, i2[sel], p2[sel], reach, radius)]] = False
            ld[rays_i[nothing]], li[rays_i[nothing]] = 0.0, -1
            if not ok.any():
                continue
            index = np.array(others + ([len(bounds)] if beyond else []), np.int16)[i2[ok]]
            if beyond:
                bounds.append(planes[-1])
            r = rays_i[ok]
            ld[r], li[r], pts[r], use[r] = d2[ok], index, p2[ok], True

    def _apply_references(
        self,
        rgb: np.ndarray,  # [H, W, 3] uint8, memory render, modified in place
        depth: np.ndarray,  # [H, W] float32, memory render depth (read only)
        valid: np.ndarray,  # [H, W] bool, where the memory rendered (read only)
        c2w: np.ndarray,  # [4, 4] the target pose
        request: ClipRequest,
        references: list[ReferenceFrame],
        claims_depth_m: np.ndarray | None = None,  # [H, W] float32, zero; in place: a claimed colour's warped depth
    ) -> np.ndarray:
        """Warp the nearest references (by pose) into this target: they fill colour holes, and sharpen from close
        by. Returns the colour-valid mask. Depth stays the memory's: a warp fattens near surfaces by its splat,
        and points placed with that depth would float in front of the background. ``claims_depth_m`` (given
        zero): where a reference's colour is taken, the depth it was warped to (``_colour_off_surface``)."""
        cfg = self.config
        claimed = None  # pixels a nearer reference already set: nearest first, first claim wins (made at a warp)
        # each reference's turn and travel from this target, once (the order and the close / same-view tests); 10 cm
        # of travel weigh like one degree of turn
        poses = [(rotation_angle_deg(ref.c2w, c2w), translation_distance_m(ref.c2w, c2w), ref) for ref in references]
        poses.sort(key=lambda p: p[0] + 10.0 * p[1])
        # (the hole share as ``1 - valid.mean()``, without the float64 pass: the same float; an empty frame's mean
        # is NaN, which no threshold passes)
        holes = 1.0 - np.count_nonzero(valid) / valid.size if valid.size else float("nan")
        fill_warps = 0 if holes < cfg.fill_warp_min_hole_fraction else 1
        for rot, trans, ref in poses[: cfg.max_reference_warps]:
            close = rot <= cfg.sharpen_max_rotation_deg and trans <= cfg.sharpen_max_translation_m
            same_view = rot <= cfg.trust_max_rotation_deg and trans <= cfg.trust_max_translation_m
            if not close:
                if not fill_warps:
                    continue
                fill_warps -= 1  # one far reference fills; a second one would mostly find the same holes filled
            if claimed is None:
                claimed = np.zeros_like(valid)
            if not close:  # it fills the memory's holes only: the warp of the source blocks that can land in one
                warp_claim(ref.rgb, ref.depth_m, ref.intrinsics, ref.c2w, request.intrinsics, c2w, rgb, claimed,
                           ~valid, claims_depth_m)
                continue
            warped = warp_rgbd(ref.rgb, ref.depth_m, ref.intrinsics, ref.c2w, request.intrinsics, c2w)
            allowed = ~valid  # holes of the memory
            if same_view:
                allowed = np.ones_like(valid)
            elif close:
                allowed = allowed | (np.abs(warped.depth_m - depth) <= cfg.same_surface_rel_tol * np.maximum(depth, 1e-6))
            claim_warped(rgb, claimed, warped.rgb, warped.depth_m, allowed)  # rgb, claimed: in place
            if claims_depth_m is not None:  # this reference's claims: the claimed pixels with no depth yet
                np.copyto(claims_depth_m, warped.depth_m, where=claimed & (claims_depth_m == 0))
        return valid.copy() if claimed is None else valid | claimed

    def _tiles_ahead(self, entry: FillEntry, state: _LayoutState | None, view: LayoutView | None,
                     c2w: np.ndarray, reach, request: ClipRequest) -> None:
        """Ask the tile-ahead thread for the tiles ahead of this view (``_warm_tiles_ahead``; ``state`` None: the
        entry's, ``view`` None: made there) once the view has moved ``AHEAD_EVERY`` from the last one asked for:
        frames turning towards an unseen wall or a doorway synthesised 25-46 tiles themselves (18-30 ms of their
        CPU; docs/BENCHMARKS.md, session 17). Only with a core to spare (``request.spare_core``), and once the plane
        textures are fitted (``FillEntry.ready``): a frame would wait for a plane fit that thread started."""
        wanted = self.config.tiles_ahead and request.spare_core
        if not wanted or not entry.ready.is_set() or entry.future.exception() is not None:
            return
        last = entry.ahead_c2w
        if last is not None and (rotation_angle_deg(last, c2w) < AHEAD_EVERY[0]
                                 and translation_distance_m(last, c2w) < AHEAD_EVERY[1]):
            return
        entry.ahead_c2w = c2w.copy()
        state = entry.state() if state is None else state
        reach = reach.copy() if isinstance(reach, np.ndarray) else reach  # (a ``LayoutPath`` is immutable)
        self._states.ahead(entry, partial(_warm_tiles_ahead, state, view, entry.ahead_c2w, reach,
                                          request.intrinsics))

    def generate(self, request: ClipRequest) -> ClipResult:
        return clip_result(list(self.generate_frames(request)))

    def generate_frames(self, request: ClipRequest) -> Iterator[GeneratedView]:
        """The clip's frames one at a time (each is independent given the memory, the references and the layout)."""
        proj = request.target_projection
        refs = [r for r in request.references if r.depth_m is not None]
        entry = self._fill_entry(request) if self.config.fill == "layout" else None
        reach = None
        legacy = None
        for t in range(request.num_target):
            request.need_targets(t)
            rgb = proj.rgb[t].copy()
            depth, valid = proj.depth_m[t], proj.valid[t]
            c2w = request.target_c2w[t]
            coarse = entry is not None and entry.frames_made < self.config.coarse_frames
            if entry is not None and not coarse:
                frame = entry.frames_made
                entry.frames_made += 1
                if proj.provisional is not None and proj.provisional[t].any():
                    # a coarse fill shown earlier: painted over here, and replaced in the memory by the engine
                    valid, depth = _without(valid, depth, proj.provisional[t])
                if self.config.see_through_frac > 0 and not _at_an_observed_view(c2w, request.observed_views):
                    radius_px = max(1, round(self.config.see_through_frac * request.intrinsics.width))
                    # holes in a nearer surface: filled from it, not shown through
                    valid, depth = _without(valid, depth, see_through_pixels(depth, valid, radius_px))
                from spatia.model.fill.geometry.layout import opening_box, view_bounds

                state = entry.state()
                reach = _layout_reach(entry, state.layout, request) if reach is None else reach
                claims = np.zeros(valid.shape, np.float32) if refs else None
                colored = self._apply_references(rgb, depth, valid, c2w, request, refs, claims) if refs else valid
                planes = _PlaneCoarse(entry, frame, self.config.coarse_plane_frames, self.config.coarse_tile_frames)
                view = view_bounds(state.layout, c2w[:3, 3], reach)
                observed = None if proj.observed is None else proj.observed[t]
                filled, colored = self._layout_fill(state, rgb, colored, depth, valid, c2w, request, reach,
                                                    planes, view, claims, observed)
                self._tiles_ahead(entry, state, view, c2w, reach, request)
                # the doorways this frame shows are open in the memory too (their invented jambs would block)
                yield GeneratedView(pushpull_fill(rgb, colored), filled, provisional_px=planes.provisional_px,
                                    open_space=tuple(opening_box(state.layout, o) for o in view.openings))
                continue
            if entry is not None:
                entry.frames_made += 1
                if entry.ready.is_set():  # the fitted state is there: its tiles for the first final frames
                    reach = _layout_reach(entry, entry.state().layout, request) if reach is None else reach
                    self._tiles_ahead(entry, None, None, c2w, reach, request)
            # the legacy fill: push-pull colour over the floor + backdrop depth prior (also the coarse fill the
            # layout fill shows while its state is fitted: provisional, replaced within ``coarse_frames``)
            if legacy is None:
                request.need_targets()  # the estimate reads every target's render
                legacy = estimate_layout(request, self.config)
            colored = self._apply_references(rgb, depth, valid, c2w, request, refs) if refs else valid
            frame = pushpull_fill(rgb, colored)
            filled = fill_holes_background(depth, valid, max_span_px=self.config.small_hole_px)
            unseen = filled <= 0
            if unseen.any():
                filled[unseen] = layout_depth(legacy, request.intrinsics, c2w)[unseen]
            yield GeneratedView(frame, filled, provisional=coarse)
