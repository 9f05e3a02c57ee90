"""Spatial memory: the paper's scene point cloud, voxel-hashed with cube side ``d`` (Spatia Sec. 3.1.1, Table 7).

One point per voxel. The paper (and the official code's ``pcd.voxel_down_sample(0.01)``) averages all points
that fall into a cube; we do the same incrementally, so integrating the same surface twice does not grow the
memory:

* position: running mean of the samples inside the voxel, stored as a uint8 offset per axis on a 256-level grid
  inside the voxel (``d / 256``, 0.04 mm at d = 1 cm). World position = ``(ijk + (offset + 0.5) / 256) * d``,
  so a point never leaves its voxel and ``world.geometry.voxel_keys(positions)`` gives back its key (as long as
  float32 resolves ``d / 512`` at the scene's scale: up to a few hundred metres from the origin at d = 1 cm).
* colour: running mean of the samples, weighted by the observation count capped at
  ``MemoryConfig.max_mean_weight`` (with the cap the mean becomes an exponential average, so a voxel seen very
  often can still follow new content). Means are rounded to the nearest integer (half up), so once a voxel has
  weight ``w`` a single sample moves it only when it differs by more than about ``w / 2`` levels.
* observation_count: samples (pixels or points) merged into the voxel, saturating at 65535.
* last_seen_frame: the largest frame index of a merged sample.

Samples are merged in row-major pixel order (or the given point order), which makes the result deterministic.

Storage (21 bytes per point + slack): voxel key int64, offsets 3 x uint8, colour 3 x uint8, count uint16,
last_seen int32, provenance uint8 (observed / invented-provisional / invented-final); an int32 open-addressing hash table (load <= 0.75) maps keys to point indices. Arrays grow by
1.25x, so ``bytes_per_point`` stays between ~26 and ~34 for surface-like clouds; a very sparse cloud (about one
point per 16^3-voxel block) pays 16 more bytes per point for the block directory. Points are kept sorted
block-major (16^3-voxel blocks) up to ``_n_sorted``; newer points form an unsorted tail that is merged in lazily
before a render once it is large. Rendering culls whole blocks against the frustum (the tail by chunks of rows), so
its cost follows the points in view, not the memory's size. A dropped point leaves a dead row where it was (out of
the hash table, skipped by every reader) until the next re-sort removes it (``_drop``): no row ever moves but in a
re-sort. Rows are storage; the points are the live rows in row order, and everything read (arrays, point indices,
renders) is the live rows, in row order, with the dead ones left out. Point indices
(``RenderResult.point_ids``) are valid until the next mutation (a render may re-sort the tail); voxel keys are the
stable identity of a point.

Rendering (paper Sec. 3.1.3, "missing pixel values are filled with zeros"): every point in
``[min_depth_m, max_depth_m]`` covers a square of ``s = clip(ceil(splat_scale * d * f / z), 1, max_splat_px)``
pixels around its projection (pixel centres at +0.5, as ``world.geometry.depth_to_world_points``); the nearest
point wins each pixel (ties: lower point index). Rendered depth is the z-buffer's: truncated to
``max_depth_m / 2**31`` (0.47 um at the default 1000 m).

Not thread-safe: one writer, no concurrent readers while it writes. (The memory's own maintenance thread only
copies arrays for a growth or a re-sort in preparation, see ``GROW_AHEAD_AT`` and ``_prepare_reindex``.)
"""

from __future__ import annotations

import math
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import structlog

from spatia.world import _memory_kernels as K
from spatia.world._threads import background
from spatia.world.camera import Intrinsics, validate_pose, validate_trajectory
from spatia.world.errors import InvalidInputError, NotFoundError
from spatia.world.free_space import VisitedPositions
from spatia.world.generator import SceneProjection
from spatia.world.numba_start import numba
# Box and Sphere are re-exported: edits name them as memory regions
from spatia.world.regions import Box, Region, Sphere, as_points, rotation3, vector3  # noqa: F401

log = structlog.get_logger(__name__)

HASH_MAX_LOAD = 0.75  # linear probing stays short below this
GROWTH = 1.25  # point arrays grow by this factor (keeps bytes_per_point <= 34 right after a growth)
# Growing copies every point and rebuilds the hash table: ~100 ms at 1.5 M points, a pause of the frame being made,
# and an explored world grows by ~10^5 points a second. So once the arrays are GROW_AHEAD_AT full, the larger copy
# is prepared on a maintenance thread while integration goes on; the next integrate adopts it, bringing over only
# what changed meanwhile (~5 ms). Growing to GROW_AHEAD x capacity keeps capacity <= 1.25 x points as above.
# From GROWTH_MARGIN_POINTS on, "full" counts the points the next integrate may add (the most one recent integrate
# added; at most a quarter of the points): a 640x360 keyframe adds up to ~5 % of a 300 k-point memory,
# so a 4 % margin let one integrate outgrow arrays nothing had been prepared for, and grow them on the spot (55-100 ms
# with four worlds on two cores: docs/BENCHMARKS.md, "Stalls off the frame path"). A smaller memory grows on the
# spot in a few ms, and a margin there (its first integrates are its largest) would break the bytes_per_point
# budget.
GROW_AHEAD_AT = 0.96
GROW_AHEAD = 1.2
GROWTH_MARGIN_WINDOW = 16  # the margin is the most points one of the last this many integrates added (a keyframe's
# integrate adds ~10^4 points, the fill's integrates between keyframes a few hundred)
GROWTH_MARGIN_POINTS = 1 << 18
MIN_CAPACITY = 1 << 14
UNIQUE_BY_BITMAP_FROM = 1 / 128  # distinct ids through a bitmap of the points once they number more than this x points
TAIL_MIN = 1 << 16  # an unsorted tail below this many points is rendered without culling
TAIL_FRACTION = 4  # ... and above n / 4 points it is merged into the block-sorted part before a render (each merge
# is an O(n) pause of the frame being made, ~80 ms at 1.2 M points; a longer tail costs ~1 ms more per render)
# (TAIL_MIN = 8192 saved ~0.3 ms of a 128x96 lock-step step, within the noise of a shared machine, but a new world
# of < 65 k points then got sorted before its layout fill was fitted, and the fit depends on the order of the
# observed points: the demo's frames changed from its first fill on. Kept at 2**16.)
# A re-sort prepared on the maintenance thread (``_prepare_reindex``) is not due before this many integrates since
# it began, unless the tail passes twice the above: a keyframe that takes the tail from below 3/4 of the limit to
# past it prepared the re-sort and made it due at the next render, which then waited for the whole job (or, before,
# re-sorted in place). Counted in integrates, not time, so that when a re-sort happens does not depend on the
# maintenance thread's speed (determinism).
RESORT_LEAD_INTEGRATES = 2

TAKE_LIVE_RUNS = 256  # ``_take_live``: from this many runs of dead rows on, one compiled pass instead of a copy a run

_NO_BOXES = np.zeros((0, 3), np.int64)  # ``_tail_boxes`` of an empty tail
_NO_ROWS = np.zeros(0, np.int64)  # no dead rows (``K.rendered_keys`` over a render's rows)
SMALL_CENTRE_SET = 4  # remove_invented_near*: up to this many centres are checked directly, more through a k-d tree
ARRAY_NAMES = ("voxel_keys", "voxel_offsets", "colors", "observation_count", "last_seen_frame")
# Provenance of a point (``SpatialMemory.provenance``): what put it there. Observed points come from real images
# (the world's first image, a capture, an edit); invented ones from a generator filling space nothing observed.
# Invented points never fit the layout, never replace observed ones (the update only writes voxels the memory
# lacks), and provisional ones may be replaced (``drop_provisional``, then integrate the final content) until they are final.
OBSERVED = 0
INVENTED_PROVISIONAL = 1
INVENTED_FINAL = 2
PROVENANCE_NAMES = {OBSERVED: "observed", INVENTED_PROVISIONAL: "invented-provisional", INVENTED_FINAL: "invented-final"}


@dataclass(frozen=True)
class MemoryConfig:
    voxel_size_m: float = 0.01  # cube side d, paper Table 7 default (and the official map_voxel_size)
    max_splat_px: int = 24  # cap of a point's square footprint (pixels) when rendering
    min_depth_m: float = 0.05  # points nearer than this to the camera are not rendered
    max_depth_m: float = 1000.0  # farther points are not rendered; farther depth pixels are not integrated
    # footprint side = ceil(splat_scale * d * f / z) pixels before clipping; > 1 because a voxel's point sits at
    # the mean of its samples, so neighbouring points can be up to ~2 d apart (1.0 left pinholes on oblique planes)
    splat_scale: float = 1.5
    max_mean_weight: int = 255  # cap (<= 4096) of the count used as the old value's weight in the running means

    def __post_init__(self) -> None:
        if not (math.isfinite(self.voxel_size_m) and self.voxel_size_m > 0):
            raise InvalidInputError(f"voxel_size_m must be positive, got {self.voxel_size_m}")
        if int(self.max_splat_px) < 1:
            raise InvalidInputError(f"max_splat_px must be >= 1, got {self.max_splat_px}")
        if not (0 < self.min_depth_m < self.max_depth_m) or not math.isfinite(self.max_depth_m):
            raise InvalidInputError(
                f"need 0 < min_depth_m < max_depth_m < inf, got {self.min_depth_m} and {self.max_depth_m}"
            )
        if not (self.splat_scale > 0 and math.isfinite(self.splat_scale)):
            raise InvalidInputError(f"splat_scale must be positive, got {self.splat_scale}")
        if not (1 <= int(self.max_mean_weight) <= K.MAX_MEAN_WEIGHT):
            raise InvalidInputError(
                f"max_mean_weight must be in 1..{K.MAX_MEAN_WEIGHT}, got {self.max_mean_weight}"
            )


@dataclass
class RenderResult:
    rgb: np.ndarray  # [H, W, 3] uint8, zero where invalid
    depth_m: np.ndarray  # [H, W] float32 z-depth, 0 where invalid
    valid: np.ndarray  # [H, W] bool, True where a memory point landed
    point_ids: np.ndarray | None  # [H, W] int32 index into the memory's point arrays, -1 where invalid


class _RowIdsRender(RenderResult):
    """A ``RenderResult`` whose ``point_ids`` are made from the render's rows when first read (``K.live_ids``, a pass
    over every pixel, against the dead rows of the render's time: ``_drop`` and the re-sorts replace the ``_dead``
    array, never edit it, so the ids come out as at the render whenever they are read). A served clip's target
    render is asked for its ids only on keyframes, retrievals and while a coarse fill shows."""

    def __init__(self, rgb, depth_m, valid, rows, dead, n) -> None:
        self.rgb, self.depth_m, self.valid = rgb, depth_m, valid
        self.__dict__["_rows"] = (rows, dead, n)

    def rendered_rows(self) -> tuple[np.ndarray, int] | None:
        """(the render's row image ``[H, W]`` int32, -1 where nothing rendered; the rows in use then) while its
        point ids are not made yet, else None: a reader that needs rows, not point indices, skips the pass."""
        pending = self.__dict__.get("_rows")
        return None if pending is None else (pending[0], pending[2])

    @property  # type: ignore[override]
    def point_ids(self) -> np.ndarray:
        pending = self.__dict__.get("_rows")
        if pending is not None:
            rows, dead, n = pending
            K.live_ids(rows, dead, n)  # (in place: the rows array is this render's own)
            self.__dict__["_ids"], self.__dict__["_rows"] = rows, None
        return self.__dict__["_ids"]

    @point_ids.setter
    def point_ids(self, value) -> None:
        self.__dict__["_ids"], self.__dict__["_rows"] = value, None


class IntegrateStats(NamedTuple):
    new_points: int  # voxels that were empty before the call
    updated_points: int  # distinct pre-existing points that received at least one sample


class SpatialMemory:
    """The scene point cloud (module docstring: storage and update policy)."""

    # rows dropped since the last re-sort, sorted ascending (``_drop``), anywhere below ``_n``: out of the hash table,
    # provenance ``K.DEAD``, skipped by every reader, physically removed by the next re-sort. (Class default: a memory
    # pickled before tombstones has none.)
    _dead = np.zeros(0, np.int64)
    # the memory a ``frozen_view`` shows (None: this is a memory, not a view)
    _frozen_of: "SpatialMemory | None" = None
    # True while a frozen view of this memory is being read: a re-sort that would permute rows in place waits
    # (``_reindex``), since the views share the rows; the owner of the views lifts it (``world.engine``)
    hold_in_place_resorts = False
    _version = 0  # bumped by every change of the points (``version``)

    def __init__(self, config: MemoryConfig = MemoryConfig()) -> None:
        self.config = config
        self._n = 0
        self._n_sorted = 0  # points [0, _n_sorted) are sorted by block-major sort key
        # rows in use, live and dead (``_dead``); the points are the live ones, in row order
        self._dead = np.zeros(0, np.int64)
        self._alloc(MIN_CAPACITY)
        self._table = np.full(_table_size(MIN_CAPACITY), -1, np.int32)
        self._block_ids = np.zeros(0, np.int64)  # [B] block ids of the sorted part
        self._block_starts = np.zeros(1, np.int64)  # [B + 1] point index where each block starts
        # bumped when rows move (only a re-sort moves them): voids background work that follows rows
        self._structure = 0
        # a growth in preparation: (job, rows it copied, structure it follows, dead rows when it began, its capacity,
        # the job of the re-sort in preparation when it began, whose copy it makes at its capacity too, or None)
        self._growth: tuple[Future, int, int, np.ndarray, int, Future | None] | None = None
        self._created: deque[int] = deque(maxlen=GROWTH_MARGIN_WINDOW)  # points each recent integrate added
        # a re-sort in preparation: (job, n_sorted, n, structure, its merge order as soon as known)
        self._ordering: tuple[Future, int, int, int, Future] | None = None
        self._resort_touched: list[np.ndarray] = []  # rows < that n written in place since the re-sort job began
        self._integrates = 0  # integrates so far (``_merge``), and at the re-sort's preparation (``_reindex_due``)
        self._ordering_integrates = 0
        # re-sorts that could not take a prepared copy and permuted every row on the caller's thread (O(points); the
        # frame thread's when a render finds one due): a counter for benchmarks/resort_path.py and the tests
        self.resorts_in_place = 0
        self.resorts_waited = 0  # re-sorts that waited for their prepared copy (``_reindex``)
        self._observed_version = 0
        # False only while no point can be provisional (``has_provisional`` then answers without its O(points)
        # scan, twice a clip). Set wherever a provenance value is written from outside the memory's own points
        # (an integrate with the provisional provenance, a load); moves, drops, re-sorts and edits copy or lower
        # the existing values, so they cannot make a provisional point where there was none.
        self._maybe_provisional = False

    # ----------------------------------------------------------------------------------------------------------
    # Read-only views
    # ----------------------------------------------------------------------------------------------------------

    # The points are the live rows in row order: a view of the arrays while no row is dead, else a compacted copy
    # (O(points), as ``positions`` always was). Point indices (``RenderResult.point_ids`` and what takes them)
    # count live rows only.

    @property
    def num_points(self) -> int:
        return self._n - len(self._dead)

    def __len__(self) -> int:
        return self.num_points

    @property
    def positions(self) -> np.ndarray:
        """[N, 3] float32 world frame, metres (a new array)."""
        return self._live_positions64().astype(np.float32)

    @property
    def colors(self) -> np.ndarray:
        return self._live(self._colors)  # [N, 3] uint8 RGB

    @property
    def observation_count(self) -> np.ndarray:
        return self._live(self._counts)  # [N] uint16, saturating

    @property
    def last_seen_frame(self) -> np.ndarray:
        return self._live(self._last)  # [N] int32

    @property
    def voxel_keys(self) -> np.ndarray:
        """[N] int64, world.geometry packing. While rows are dead, a compacted copy kept between calls: keys
        change only by points added at the end (appended to it) or by rows moving (``_structure``: made again).
        A frame reads them a few times (``world.update``), each an O(points) copy otherwise. (Between re-sorts the
        dead rows only grow: the structure and their count name the rows' state.)"""
        if not len(self._dead):
            self.__dict__.pop("_keys_read", None)
            return _readonly(self._keys[: self._n])
        cache = self.__dict__.get("_keys_read")
        state = (self._structure, len(self._dead))
        if cache is None or cache[0] != state or cache[2] > self._n:
            live = self._live(self._keys)
            buf = np.empty(int(len(live) * GROWTH) + 1, np.int64)
            buf[: len(live)] = live
            cache = (state, buf, self._n, len(live))
        structure, buf, rows, count = cache
        if rows < self._n:  # points appended since (all in the tail: after every dead row)
            add = self._n - rows
            if count + add > len(buf):
                buf = np.concatenate([buf[:count], np.empty(int((count + add) * GROWTH) - count, np.int64)])
            buf[count : count + add] = self._keys[rows : self._n]
            count += add
        self._keys_read = (structure, buf, self._n, count)
        return _readonly(buf[:count])

    @property
    def provenance(self) -> np.ndarray:
        return self._live(self._prov)  # [N] uint8: OBSERVED, INVENTED_PROVISIONAL or INVENTED_FINAL

    def keys_of_points(self, ids: np.ndarray) -> np.ndarray:
        """``voxel_keys[ids]`` (a new [M] int64 array) for point indices ``ids`` ``[M]``, without ``voxel_keys``'s
        O(points) copy, which a drop voids while rows are dead (the memory update reads a few keys after each)."""
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 1:
            raise InvalidInputError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.num_points):
            raise InvalidInputError(f"point ids must be in 0..{self.num_points - 1}")
        return self._keys[self._rows_of_points(ids)]

    def _live(self, a: np.ndarray) -> np.ndarray:
        """Read-only rows of ``a`` for the live points (a view when none is dead)."""
        if not len(self._dead):
            return _readonly(a[: self._n])
        return _readonly(_take_live(a, self._n, self._dead))

    def _live_positions64(self) -> np.ndarray:
        if not len(self._dead):
            return self._positions64()
        return K.decode_live_positions(self._keys, self._offsets, self._n, self._dead, self.config.voxel_size_m)

    def _rows_of_points(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the points ``ids`` (int64 indices among the live rows): ``id + (dead rows below its row)``."""
        if not len(self._dead):
            return ids
        live_before = self._dead - np.arange(len(self._dead))  # live rows below each dead row (non-decreasing)
        return ids + np.searchsorted(live_before, ids, side="right")

    @property
    def origin(self) -> "SpatialMemory":
        """The memory itself, or for a ``frozen_view`` the memory it was taken from (what per-world caches key by)."""
        return self if self._frozen_of is None else self._frozen_of

    @property
    def version(self) -> int:
        """Changes whenever the points may have changed (added, dropped, moved, repainted, re-sorted): a render
        taken at one version holds, point ids included, while the version stays."""
        return self._version

    def frozen_view(self) -> "SpatialMemory":
        """A read-only view of the memory as it is now, for frames made on one thread while another thread updates
        this memory (``EngineConfig.commit_beside_next_clip``). O(points) in bytes for the provenance alone (~1 MB
        at 10^6 points); the other arrays are shared, and the view stays exact because an update leaves the rows it
        shares as they are:

        - new points are appended past the view's rows, and a memory update never repaints a remembered point
          (``integrate(refresh_existing=False)``, the play setting; the engine refuses the other);
        - a growth and a prepared re-sort swap in new arrays, a drop swaps in a new dead-row list, so the view
          keeps the old ones;
        - a drop marks its rows' provenance ``K.DEAD`` in place: the view has its own copy of the provenance;
        - a re-sort that would permute rows in place waits while ``hold_in_place_resorts`` is set (the view's owner
          sets it while the view is read and lifts it after).

        Edits must not run while a view is read (the engine settles its update first). Writing to the view raises.
        """
        view = self._sibling(copy_arrays=False)
        view._prov = self._prov[: self._n].copy()
        view._frozen_of = self
        return view

    def reindex_if_due(self) -> None:
        """The re-sort a render would make now, if one is due (``hold_in_place_resorts`` held one back)."""
        self._maybe_reindex()

    def _writable(self) -> None:
        if self._frozen_of is not None:
            raise RuntimeError("a frozen view of the memory is read-only")
        self._version += 1

    @property
    def observed_version(self) -> int:
        """Changes whenever the observed points may have changed (not when invented ones are added): a cache key
        for what is derived from observations only (the layout)."""
        return self._observed_version

    @property
    def has_provisional(self) -> bool:
        """Whether any point is invented-provisional (a coarse fill waiting to be replaced)."""
        if not getattr(self, "_maybe_provisional", True):  # (a memory pickled before the flag: scan)
            return False
        found = bool((self._prov[: self._n] == INVENTED_PROVISIONAL).any())
        self._maybe_provisional = found  # none left (dropped, replaced): no scan until the next provisional write
        return found

    def observed_points(self) -> tuple[np.ndarray, np.ndarray]:
        """``([M, 3] float64 world frame, [M, 3] uint8)`` positions and colours of the observed points."""
        keep = self._prov[: self._n] == OBSERVED  # (dead rows are not)
        return self._positions64()[keep], self._colors[: self._n][keep].copy()

    def points_in_box(self, lo_m: np.ndarray, hi_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``([M, 3] float64 world frame, [M] uint8 provenance)`` of the points whose voxel lies in the box from
        ``lo_m`` to ``hi_m`` [3] (world frame, metres, inclusive): the culling blocks that meet the box and the
        unsorted tail are read, not the whole memory (``world.collision`` asks this on every move)."""
        d_m = self.config.voxel_size_m
        lo = np.floor(np.asarray(lo_m, np.float64) / d_m).astype(np.int64)
        hi = np.floor(np.asarray(hi_m, np.float64) / d_m).astype(np.int64)
        # box_candidates skips one provenance besides the dead rows': naming K.DEAD, every point counts
        cand = K.box_candidates(self._keys, self._prov, self._last, self._n, self._n_sorted, self._block_ids,
                                self._block_starts, *self._tail_boxes(), *lo.tolist(), *hi.tolist(), K.DEAD,
                                np.iinfo(np.int32).min)
        return K.decode_positions(self._keys[cand], self._offsets[cand], len(cand), d_m), self._prov[cand]

    @property
    def nbytes(self) -> int:
        """Bytes held: point arrays at their capacity, the hash table and the block directory."""
        arrays = (self._keys, self._offsets, self._colors, self._counts, self._last, self._prov, self._table,
                  self._block_ids, self._block_starts, self._dead)
        keys_read = self.__dict__.get("_keys_read")  # (``voxel_keys``'s copy while rows are dead)
        held = keys_read is not None and len(self._dead) > 0 and keys_read[0] == (self._structure, len(self._dead))
        return int(sum(a.nbytes for a in arrays)) + (keys_read[1].nbytes if held else 0)

    @property
    def bytes_per_point(self) -> float:
        return self.nbytes / self.num_points if self.num_points else 0.0

    # ----------------------------------------------------------------------------------------------------------
    # Integration
    # ----------------------------------------------------------------------------------------------------------

    def integrate(
        self,
        rgb: np.ndarray,  # [H, W, 3] uint8
        depth_m: np.ndarray,  # [H, W] float32 z-depth; 0, negative, NaN, inf: unknown
        intrinsics: Intrinsics,
        c2w: np.ndarray,  # [4, 4] camera-to-world
        frame_index: int,
        exclude_mask: np.ndarray | None = None,  # [H, W] bool, True = never written (dynamic entities)
        refresh_existing: bool = True,
        provenance: int = OBSERVED,
    ) -> IntegrateStats:
        """Fold one RGB-D frame into the memory (the paper's memory update, with dynamic regions excluded as in
        the official code's ``mask & ~mask_image``). ``refresh_existing=False``: voxels that already hold a point
        keep its colour and position (their count and last-seen frame still advance); only new voxels are added.
        ``provenance``: what the points this call creates are (``OBSERVED`` for images of the real scene,
        ``INVENTED_*`` for generated content); existing points keep theirs."""
        provenance = _provenance(provenance)
        h, w = intrinsics.height, intrinsics.width
        rgb = _image(rgb, h, w)
        depth = np.asarray(depth_m)
        if depth.shape != (h, w):
            raise InvalidInputError(f"depth_m has shape {depth.shape}, expected ({h}, {w}) to match the intrinsics")
        if not np.issubdtype(depth.dtype, np.floating):
            raise InvalidInputError(f"depth_m must be float metres, got dtype {depth.dtype}")
        depth = np.ascontiguousarray(depth, dtype=np.float32)  # DESIGN: depth is float32 metres
        T = validate_pose(c2w, "c2w")
        frame_index = _frame_index(frame_index)
        use_exclude = exclude_mask is not None
        if use_exclude:
            exclude = np.asarray(exclude_mask)
            if exclude.shape != (h, w) or exclude.dtype != np.bool_:
                raise InvalidInputError(
                    f"exclude_mask must be a ({h}, {w}) bool array, got {exclude.shape} {exclude.dtype}"
                )
            exclude = np.ascontiguousarray(exclude)
        else:
            exclude = np.zeros((1, 1), np.bool_)
        s_keys, s_offs, s_rgb, s_idx = K.frame_samples(
            depth, exclude, use_exclude, rgb, T[:3, :3].copy(), T[:3, 3].copy(),
            intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy, 1.0 / self.config.voxel_size_m,
            self.config.max_depth_m, self._table, self._keys,
        )
        if np.any(s_idx == -3):
            raise InvalidInputError("depth puts points out of the voxel key range (+-2**20 voxels): scene too large")
        return self._merge(s_keys, s_offs, s_rgb, s_idx, frame_index, refresh_existing, provenance)

    def integrate_points(self, points: np.ndarray, colors: np.ndarray, frame_index: int,
                         provenance: int = OBSERVED) -> IntegrateStats:
        """Fold world points ``[N, 3]`` (metres) with colours ``[N, 3]`` uint8 in, with the same running means as
        ``integrate``."""
        provenance = _provenance(provenance)
        pts, cols = _points_colors(points, colors)
        s_keys, s_offs, s_idx = K.point_samples(pts, 1.0 / self.config.voxel_size_m, self._table, self._keys)
        if np.any(s_idx == -3):
            raise InvalidInputError("points out of the voxel key range (+-2**20 voxels): scene too large")
        return self._merge(s_keys, s_offs, cols, s_idx, _frame_index(frame_index), True, provenance)

    def _merge(self, s_keys, s_offs, s_rgb, s_idx, frame_index: int, refresh_existing: bool = True,
               provenance: int = OBSERVED) -> IntegrateStats:
        self._writable()
        self._adopt_growth()
        n_before = self._n
        touched = np.zeros(n_before, np.bool_)
        created = updated = 0
        start = 0
        while True:
            start, self._n, c, u, _ = K.merge_samples(
                s_keys, s_offs, s_rgb, s_idx, start, frame_index, int(self.config.max_mean_weight),
                self._keys, self._offsets, self._colors, self._counts, self._last, self._table,
                self._n, n_before, touched, refresh_existing,
            )
            created += c
            updated += u
            if start >= s_keys.shape[0]:
                break
            if not self._adopt_growth(wait=True):
                self._grow(int(math.ceil(self._capacity * GROWTH)))
            # the samples' hash look-ups stay valid: growing keeps every point's index
        self._created.append(int(created))
        self._integrates += 1
        self._prov[n_before : self._n] = provenance  # new points are appended
        if self._ordering is not None:  # rows a prepared re-sort copied before they changed: copied again
            self._wrote_rows(np.flatnonzero(touched))
        if provenance == INVENTED_PROVISIONAL and self._n > n_before:
            self._maybe_provisional = True
        if provenance == OBSERVED and (created or updated):
            self._prov[:n_before][touched] = OBSERVED  # an observation of a voxel makes it observed
            self._observed_version += 1
        self._prepare_growth()
        self._prepare_reindex()
        return IntegrateStats(int(created), int(updated))

    # ----------------------------------------------------------------------------------------------------------
    # Rendering
    # ----------------------------------------------------------------------------------------------------------

    def render(self, intrinsics: Intrinsics, c2w: np.ndarray, return_point_ids: bool = False) -> RenderResult:
        """Z-buffered projection of the memory (nearest point per pixel, square splats of about ``d * f / z``
        pixels, pixel centres at +0.5); missing pixels are zero, as in the paper's scene projection video."""
        T = validate_pose(c2w, "c2w")
        rgb, depth, valid, ids = self._render(intrinsics, T)
        if return_point_ids and len(self._dead):  # rows -> point indices (the winners are live rows), when read
            return _RowIdsRender(rgb, depth, valid, ids, self._dead, self._n)
        return RenderResult(rgb, depth, valid, ids if return_point_ids else None)

    def render_trajectory(self, intrinsics: Intrinsics, c2w_list: np.ndarray) -> SceneProjection:
        poses = validate_trajectory(c2w_list, "c2w_list")
        frames = [self._render(intrinsics, T)[:3] for T in poses]
        return SceneProjection(
            rgb=np.stack([f[0] for f in frames]),
            depth_m=np.stack([f[1] for f in frames]),
            valid=np.stack([f[2] for f in frames]),
        )

    def visible_voxel_keys(self, intrinsics: Intrinsics, c2w: np.ndarray) -> np.ndarray:
        """Sorted unique int64 keys of the points that win at least one pixel of ``render`` from this camera:
        the paper's view-specific scene point cloud S_T (Sec. 3.1.1), as the official code's front-most test."""
        T = validate_pose(c2w, "c2w")
        return np.sort(self._keys[K.mark_ids(self._render(intrinsics, T)[3], self._n)])

    def rendered_voxel_keys(self, point_ids: np.ndarray) -> np.ndarray:
        """The same set, unsorted (memory order), from a render's ``point_ids`` ``[H, W]``: for a caller that
        rendered already. The ids must be from a render taken since the memory last changed."""
        ids = np.asarray(point_ids)
        if ids.dtype != np.int32 or ids.ndim != 2:
            raise InvalidInputError(f"point_ids must be a render's int32 [H, W] ids, got {ids.dtype} {ids.shape}")
        n = self.num_points
        keys, bad = K.rendered_keys(np.ascontiguousarray(ids), n, self._keys, self._dead)
        if bad >= 0:
            raise InvalidInputError(f"point_ids reach {int(ids.max())} but the memory holds {n} points")
        return keys

    def render_voxel_keys(self, render: RenderResult) -> np.ndarray:
        """``rendered_voxel_keys(render.point_ids)`` for a ``render(..., return_point_ids=True)`` of this memory taken
        since it last changed: the same keys in the same order. While the render's point ids are not made yet its
        rows index the keys directly (rows and point indices run in the same order), so neither the rows -> ids
        pass nor the ids -> rows walk is made."""
        pending = render.rendered_rows() if isinstance(render, _RowIdsRender) else None
        if pending is None:
            return self.rendered_voxel_keys(render.point_ids)
        rows, n_rows = pending
        return K.rendered_keys(rows, n_rows, self._keys, _NO_ROWS)[0]

    def render_shows(self, render: RenderResult, provenance: int, out: np.ndarray | None = None) -> np.ndarray:
        """``[H, W]`` bool: where ``render`` (a ``render(..., return_point_ids=True)`` of this memory taken since it
        last changed) shows a point of ``provenance`` (into ``out`` when given). One compiled pass over the pixels;
        ``render_shows_reference`` is the definition (valid pixels whose point's provenance is that)."""
        pending = render.rendered_rows() if isinstance(render, _RowIdsRender) else None
        if pending is not None:  # rows index the provenance of every row
            index, table = pending[0], self._prov
        else:
            index, table = render.point_ids, self._live(self._prov)
        if out is None:
            out = np.empty(index.shape, np.bool_)
        elif out.shape != index.shape or out.dtype != np.bool_ or not out.flags.c_contiguous:
            raise InvalidInputError(f"out must be a C-contiguous bool {index.shape}, got {out.dtype} {out.shape}")
        # read-only whatever the memory's array is (a frozen view's, a copy's): numba compiles a signature per
        # flag, and the server's kernel warm-up loads this one; a writable table loaded the kernel on a world's
        # first clips (tests/test_first_clip_loads.py)
        table = table.view()
        table.flags.writeable = False
        K.mark_provenance(index, table, np.uint8(provenance), out)
        return out

    def render_shows_reference(self, render: RenderResult, provenance: int) -> np.ndarray:
        """The definition of ``render_shows``, in numpy over the point ids."""
        return render.valid & (self.provenance[np.maximum(render.point_ids, 0)] == provenance)

    def _render(self, intrinsics: Intrinsics, T: np.ndarray):
        if not isinstance(intrinsics, Intrinsics):
            raise InvalidInputError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        self._maybe_reindex()
        cfg = self.config
        w2c_r = np.ascontiguousarray(T[:3, :3].T)
        cam_t = T[:3, 3].copy()
        fx, fy, cx, cy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
        width, height = int(intrinsics.width), int(intrinsics.height)
        max_splat = int(cfg.max_splat_px)
        keep = K.cull_blocks(
            self._block_ids, w2c_r, cam_t, fx, fy, cx, cy, width, height, float(max_splat),
            cfg.min_depth_m, cfg.max_depth_m, cfg.voxel_size_m,
        )
        starts, stops = _visible_ranges(keep, self._block_starts)
        if self._n > self._n_sorted:
            # the unsorted tail (up to TAIL_MIN = 65 k points, all of a world below that) is culled by chunks of
            # rows: its rows were appended frame by frame, so a chunk's box is one region of space (128x96 gym walk,
            # a 50-70 k tail: render 2.2 -> 1.7 ms CPU at load 5). The result does not change: a culled chunk has no
            # point whose splat reaches the image, and the z-buffer's winner does not depend on the scan order.
            lo, hi = self._tail_boxes()
            t_starts, t_stops = _visible_ranges(K.cull_voxel_boxes(
                lo, hi, w2c_r, cam_t, fx, fy, cx, cy, width, height, float(max_splat), cfg.min_depth_m,
                cfg.max_depth_m, cfg.voxel_size_m), np.append(
                    np.arange(self._n_sorted, self._n, K.TAIL_CHUNK, dtype=np.int64), np.int64(self._n)))
            starts = np.concatenate([starts, t_starts])
            stops = np.concatenate([stops, t_stops])
        if len(self._dead):  # the dead rows are cut out of the visible ranges (prefix and tail: ascending)
            starts, stops = K.skip_rows(starts, stops, self._dead)
        return K.render_points(
            self._keys, self._offsets, self._colors, starts, stops, w2c_r, cam_t, fx, fy, cx, cy, width, height,
            cfg.voxel_size_m, cfg.min_depth_m, cfg.max_depth_m, splat_k(cfg, intrinsics), max_splat,
            depth_quant(cfg), _render_scratch(max(1, numba.get_num_threads()), width * height),
        )

    # ----------------------------------------------------------------------------------------------------------
    # Edits (paper Sec. 4 / Fig. 8: 3D-aware interactive editing)
    # ----------------------------------------------------------------------------------------------------------

    def _tail_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """``K.tail_chunk_boxes`` of the unsorted tail ``[n_sorted, n)`` (``lo``, ``hi`` ``[C, 3]``), for the render's
        culling and ``box_candidates``. A row's key never changes in place (a re-sort moves rows and bumps
        ``_structure``; a drop leaves the key in its dead row), so the boxes of whole chunks are kept until the
        structure changes and only the rows appended since are read: the whole tail was read for every render and
        every box query."""
        start, n = self._n_sorted, self._n
        state = (self._structure, start)
        cache = self.__dict__.get("_tail_box_cache")
        if cache is None or cache[0] != state or cache[1] > n:
            cache = (state, start, _NO_BOXES, _NO_BOXES)
        _, done, lo, hi = cache
        whole = start + (n - start) // K.TAIL_CHUNK * K.TAIL_CHUNK
        if whole > done:
            more_lo, more_hi = K.tail_chunk_boxes(self._keys, done, whole, K.TAIL_CHUNK)
            lo, hi = np.concatenate([lo, more_lo]), np.concatenate([hi, more_hi])  # (new arrays: copies share them)
            done = whole
            self._tail_box_cache = (state, done, lo, hi)
        if n > done:  # the last, partial chunk
            last_lo, last_hi = K.tail_chunk_boxes(self._keys, done, n, K.TAIL_CHUNK)
            return np.concatenate([lo, last_lo]), np.concatenate([hi, last_hi])
        return lo, hi

    def remove(self, region: Region) -> int:
        """Delete the points inside ``region``; returns how many."""
        inside = self._inside(region)
        count = int(inside.sum())
        if count:
            self._observed_version += 1
            self._compact(~inside)
        return count

    def recolor(self, region: Region, rgb: tuple[int, int, int]) -> int:
        """Paint the points inside ``region`` one colour; returns how many."""
        color = np.asarray(rgb)
        if color.shape != (3,) or not np.issubdtype(color.dtype, np.integer) or color.min() < 0 or color.max() > 255:
            raise InvalidInputError(f"rgb must be three integers in 0..255, got {rgb!r}")
        inside = self._inside(region)
        self._writable()
        self._wrote_rows(np.flatnonzero(inside))
        self._colors[: self._n][inside] = color.astype(np.uint8)
        self._prov[: self._n][inside] = OBSERVED  # an edit is the user's own content
        self._observed_version += 1
        return int(inside.sum())

    def move(self, region: Region, translation_m, rotation=None) -> int:
        """Rigidly move the points inside ``region``: rotate by ``rotation`` [3, 3] about ``region.center`` (about
        the selection's centroid if the region has none), then translate by ``translation_m`` [3] (world frame).

        The moved points are re-voxelized; each keeps its colour, count and last_seen (points that land in one
        voxel are merged, count-weighted) and replaces whatever occupied its new voxel (the edit wins).
        """
        t = vector3(translation_m, "translation_m")
        R = np.eye(3) if rotation is None else rotation3(rotation, "rotation")
        inside = self._inside(region)
        count = int(inside.sum())
        if not count:
            return 0
        n = self._n
        pos = self._positions64()[inside]
        pivot = np.asarray(getattr(region, "center", pos.mean(axis=0)), dtype=np.float64)
        moved = (pos - pivot) @ R.T + pivot + t
        cols = self._colors[:n][inside].copy()
        counts = self._counts[:n][inside].copy()
        last = self._last[:n][inside].copy()
        prov = self._prov[:n][inside].copy()
        self._compact(~inside)
        self._overwrite(moved, cols, counts, last, prov)
        return count

    def drop_provisional(self, region: Region | None = None) -> int:
        """Delete the invented-provisional points (inside ``region``, or all): a coarse fill about to be replaced
        by its final version. Observed and final points are never touched. Returns how many."""
        drop = self._prov[: self._n] == INVENTED_PROVISIONAL
        if region is not None and drop.any():
            drop &= self._inside(region)
        count = int(drop.sum())
        if count:
            self._compact(~drop)
        return count

    def remove_invented_near(self, centres_m: np.ndarray, radius_m: float, since_frame: int | None = None) -> int:
        """Delete the invented points within ``radius_m`` of any of ``centres_m`` [P, 3] (world frame): space a
        camera has been in is free, whatever a generator invented there before. Observed points stay.
        ``since_frame``: only points last seen at or after this frame index are considered. Returns how many
        were deleted."""
        return self.remove_invented_near_groups([(centres_m, since_frame)], radius_m)

    def remove_invented_near_groups(self, groups: Sequence[tuple[np.ndarray | VisitedPositions, int | None]],
                                    radius_m: float) -> int:
        """``remove_invented_near`` for several (centres, since_frame) groups at once: one compaction. Centres are
        [P, 3] (world frame) or a path kept by ``VisitedPositions`` (its trees made once, not per call). Each
        group's candidates are the invented points in its centres' box grown by the radius (``box_candidates``
        reads only the culling blocks that meet it, or only the points seen since ``since_frame``)."""
        if not self._n:
            return 0
        from scipy.spatial import cKDTree

        d_m = self.config.voxel_size_m
        near = []
        tail = self._tail_boxes()
        for centres_m, since_frame in groups:
            # a kept path answers through its trees; a short one (direct distances below) as its positions
            kept = centres_m if isinstance(centres_m, VisitedPositions) and len(centres_m) > SMALL_CENTRE_SET else None
            if kept is not None:
                c, c_lo, c_hi = None, kept.lo_m, kept.hi_m
            else:
                if isinstance(centres_m, VisitedPositions):
                    centres_m = centres_m.positions()
                c = np.asarray(centres_m, np.float64).reshape(-1, 3)  # [P, 3] world frame
                if not len(c):
                    continue
                c_lo, c_hi = c.min(axis=0), c.max(axis=0)
            lo = np.floor((c_lo - radius_m) / d_m).astype(np.int64)
            hi = np.floor((c_hi + radius_m) / d_m).astype(np.int64)
            floor = np.iinfo(np.int32).min if since_frame is None else _frame_index(since_frame)
            cand = K.box_candidates(self._keys, self._prov, self._last, self._n, self._n_sorted, self._block_ids,
                                    self._block_starts, *tail, *lo.tolist(), *hi.tolist(), OBSERVED, floor)
            if not len(cand):
                continue
            pos = K.decode_positions(self._keys[cand], self._offsets[cand], len(cand), d_m)  # [M, 3] world frame
            if kept is not None:
                near.append(cand[kept.near(pos, radius_m)])
            elif len(c) <= SMALL_CENTRE_SET:  # a one-frame clip's pose: a tree costs more than the distances
                d2 = ((pos[:, None, :] - c[None]) ** 2).sum(axis=2).min(axis=1)
                near.append(cand[d2 < radius_m**2])  # strictly inside, as the tree's upper bound below
            else:
                d, _ = cKDTree(c).query(pos, distance_upper_bound=radius_m)
                near.append(cand[np.isfinite(d)])
        if not near:
            return 0
        drops = np.unique(np.concatenate(near))  # sorted, distinct
        self._drop(drops)
        return len(drops)

    def remove_invented_in(self, boxes: Sequence[Box]) -> int:
        """Delete the invented points (provisional or final) inside any of ``boxes``: space a generator showed as
        open (a doorway it opened in an invented wall, ``GeneratedView.open_space``), in view or not. Observed
        points stay. Each box's candidates are the invented points whose voxel meets its world bounding box
        (``box_candidates``: only the culling blocks that meet it), then tested exactly. Returns how many were
        deleted."""
        if not self._n or not len(boxes):
            return 0
        d_m = self.config.voxel_size_m
        inside = []
        tail = self._tail_boxes()
        for box in boxes:
            reach_m = np.abs(box.rotation) @ box.half_extents_m  # [3] half size of the box's world bounding box
            lo = np.floor((box.center - reach_m) / d_m).astype(np.int64)
            hi = np.floor((box.center + reach_m) / d_m).astype(np.int64)
            cand = K.box_candidates(self._keys, self._prov, self._last, self._n, self._n_sorted, self._block_ids,
                                    self._block_starts, *tail, *lo.tolist(), *hi.tolist(), OBSERVED,
                                    np.iinfo(np.int32).min)
            if len(cand):
                pos = K.decode_positions(self._keys[cand], self._offsets[cand], len(cand), d_m)  # [M, 3] world
                inside.append(cand[box.contains(pos)])
        drops = np.unique(np.concatenate(inside)) if inside else np.zeros(0, np.int64)  # sorted, distinct
        self._drop(drops)
        return len(drops)

    def remove_invented_seen_through(self, ids: np.ndarray, intrinsics: Intrinsics, c2w: np.ndarray,
                                     depth_m: np.ndarray, rel: float) -> np.ndarray:
        """Delete those of the points ``ids`` [M] (indices into the current memory, e.g. a render's point ids)
        that are invented-final and lie in space the view at ``c2w`` saw through: nearer along their pixel's ray
        than ``depth_m`` [H, W] (z-depth, 0 = unknown: nothing is deleted there) by more than ``rel`` of it + 5 cm
        (``world.free_space.seen_through``). Observed points stay; so do provisional ones (a coarse fill, which
        ``drop_provisional`` takes away as a whole once frames are final: deleting its points one frame early and
        integrating the final frame there changed what the next frames filled). Returns the deleted points'
        voxel keys."""
        from spatia.world.free_space import seen_through

        n = self.num_points
        ids = np.ascontiguousarray(ids, np.int64).ravel()
        ids = ids[(ids >= 0) & (ids < n)]
        # sorted and distinct: many ids (a carve of a whole wall's pixels, each splat's id repeated) through a
        # bitmap of the points, O(points); np.unique's sort took 13.5 ms for 1.5e5 ids against 1.5 ms, and is the
        # faster for a few (docs/BENCHMARKS.md, session 24)
        ids = self._rows_of_points(K.mark_ids(ids, n) if len(ids) > UNIQUE_BY_BITMAP_FROM * n else np.unique(ids))
        ids = ids[self._prov[ids] == INVENTED_FINAL]
        if not len(ids):
            return np.zeros(0, np.int64)
        pos = K.decode_positions(self._keys[ids], self._offsets[ids], len(ids), self.config.voxel_size_m)
        # an unknown depth says nothing, while seen_through reads 0 as "nothing came back" (all free): such pixels
        # get a depth so small that no point (z > 0) lies in front of it
        depth = np.asarray(depth_m, np.float32)
        depth = np.where(depth > 0, depth, np.float32(1e-30)).astype(np.float32)
        drops = ids[seen_through(pos, c2w, intrinsics, depth, rel)]  # sorted, distinct
        keys = self._keys[drops].copy()
        self._drop(drops)
        return keys

    def insert(self, points: np.ndarray, colors: np.ndarray, frame_index: int = -1) -> IntegrateStats:
        """Add an object (paper Fig. 8, "adding new ones"): the given points replace whatever occupies their
        voxels. Points sharing a voxel are averaged; each new voxel's count is its number of points."""
        pts, cols = _points_colors(points, colors)
        frame_index = _frame_index(frame_index)
        ones = np.ones(len(pts), np.uint16)
        return self._overwrite(pts, cols, ones, np.full(len(pts), frame_index, np.int32), np.zeros(len(pts), np.uint8))

    def _inside(self, region: Region) -> np.ndarray:
        """[rows] True for the live rows whose point lies in ``region``."""
        if not hasattr(region, "contains"):
            raise InvalidInputError(f"region must have a contains(points) method, got {type(region).__name__}")
        n = self.num_points
        inside = np.asarray(region.contains(self.positions), dtype=bool)
        if inside.shape != (n,):
            raise InvalidInputError(f"region.contains returned shape {inside.shape}, expected ({n},)")
        if len(self._dead):
            rows = np.zeros(self._n, bool)
            rows[self._rows_of_points(np.flatnonzero(inside))] = True
            inside = rows
        return inside

    def _overwrite(self, pts: np.ndarray, cols: np.ndarray, counts: np.ndarray, last: np.ndarray,
                   prov: np.ndarray) -> IntegrateStats:
        """Write points (float64 world) into their voxels, replacing existing points there. ``prov`` [N] uint8: a
        voxel that receives any observed point is observed (else the most certain: final over provisional)."""
        if len(pts) == 0:
            return IntegrateStats(0, 0)
        self._writable()
        self._observed_version += 1
        self._adopt_growth()
        d = self.config.voxel_size_m
        coords = np.floor(pts / d)
        if coords.min() < -K.KEY_OFFSET or coords.max() >= K.KEY_OFFSET:
            raise InvalidInputError("points out of the voxel key range (+-2**20 voxels): scene too large")
        keys = _pack(coords.astype(np.int64))
        uniq, inv = np.unique(keys, return_inverse=True)
        w = counts.astype(np.float64)
        wsum = np.bincount(inv, weights=w)
        frac = pts / d - coords  # [N, 3] in [0, 1) inside the sample's voxel
        offs = np.empty((len(uniq), 3), np.uint8)
        rgb = np.empty((len(uniq), 3), np.uint8)
        for a in range(3):
            mean_frac = np.bincount(inv, weights=frac[:, a] * w) / wsum
            offs[:, a] = np.clip(np.floor(mean_frac * 256.0), 0, 255).astype(np.uint8)
            rgb[:, a] = np.clip(np.rint(np.bincount(inv, weights=cols[:, a] * w) / wsum), 0, 255).astype(np.uint8)
        cnt = np.minimum(np.bincount(inv, weights=w), K.MAX_COUNT).astype(np.uint16)
        lst = np.full(len(uniq), np.iinfo(np.int32).min, np.int32)
        np.maximum.at(lst, inv, last.astype(np.int32))
        # rank: observed 2, final 1, provisional 0 -> the highest rank wins the voxel
        rank_of = np.array([2, 0, 1], np.int8)
        prov_of_rank = np.array([INVENTED_PROVISIONAL, INVENTED_FINAL, OBSERVED], np.uint8)
        rank = np.full(len(uniq), -1, np.int8)
        np.maximum.at(rank, inv, rank_of[np.asarray(prov, np.uint8)])
        pv = prov_of_rank[rank]
        idx = K.hash_lookup_many(self._table, self._keys, uniq)
        old = idx >= 0
        j = idx[old]
        self._wrote_rows(j)
        self._offsets[j], self._colors[j], self._counts[j], self._last[j] = offs[old], rgb[old], cnt[old], lst[old]
        self._prov[j] = pv[old]
        new = ~old
        n_new = int(new.sum())
        if self._n + n_new > self._capacity:
            self._grow(max(int(math.ceil(self._capacity * GROWTH)), self._n + n_new))
        a, b = self._n, self._n + n_new
        self._keys[a:b], self._offsets[a:b], self._colors[a:b] = uniq[new], offs[new], rgb[new]
        self._counts[a:b], self._last[a:b], self._prov[a:b] = cnt[new], lst[new], pv[new]
        self._n = b
        K.hash_build_range(self._table, self._keys, a, b)
        return IntegrateStats(n_new, int(old.sum()))

    # ----------------------------------------------------------------------------------------------------------
    # Persistence
    # ----------------------------------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (copies) that ``from_arrays`` turns back into an identical memory."""
        def live(a: np.ndarray) -> np.ndarray:  # a copy of the live rows
            return _take_live(a, self._n, self._dead) if len(self._dead) else a[: self._n].copy()

        return {
            "voxel_keys": live(self._keys),  # [N] int64
            "voxel_offsets": live(self._offsets),  # [N, 3] uint8, position inside the voxel in 1/256 steps
            "colors": live(self._colors),  # [N, 3] uint8
            "observation_count": live(self._counts),  # [N] uint16
            "last_seen_frame": live(self._last),  # [N] int32
            "provenance": live(self._prov),  # [N] uint8, OBSERVED / INVENTED_PROVISIONAL / INVENTED_FINAL
        }

    @classmethod
    def from_arrays(cls, config: MemoryConfig, arrays: dict[str, np.ndarray]) -> "SpatialMemory":
        missing = [k for k in ARRAY_NAMES if k not in arrays]
        if missing:
            raise InvalidInputError(f"memory arrays lack {missing}")
        keys = np.asarray(arrays["voxel_keys"])
        n = keys.shape[0] if keys.ndim == 1 else -1
        spec = {
            "voxel_keys": ((n,), np.int64),
            "voxel_offsets": ((n, 3), np.uint8),
            "colors": ((n, 3), np.uint8),
            "observation_count": ((n,), np.uint16),
            "last_seen_frame": ((n,), np.int32),
        }
        for name, (shape, dtype) in spec.items():
            a = np.asarray(arrays[name])
            if a.shape != shape or a.dtype != dtype:
                raise InvalidInputError(f"memory array {name} is {a.shape} {a.dtype}, expected {shape} {np.dtype(dtype)}")
        if n and (keys.min() < 0 or keys.max() >= 1 << (3 * K.KEY_BITS)):
            raise InvalidInputError("memory array voxel_keys holds values outside the 63-bit key range")
        if n and np.any(np.diff(np.sort(keys)) == 0):  # a sort: np.unique took ~3 s at 10^6 keys (numpy 2.4)
            raise InvalidInputError("memory array voxel_keys has duplicates (one point per voxel)")
        mem = cls(config)
        mem._alloc(max(MIN_CAPACITY, n))
        mem._keys[:n] = keys
        mem._offsets[:n] = arrays["voxel_offsets"]
        mem._colors[:n] = arrays["colors"]
        mem._counts[:n] = arrays["observation_count"]
        mem._last[:n] = arrays["last_seen_frame"]
        if "provenance" in arrays:  # absent in snapshots made before provenance existed: all observed then
            prov = np.asarray(arrays["provenance"])
            if prov.shape != (n,) or prov.dtype != np.uint8 or (n and int(prov.max()) > INVENTED_FINAL):
                raise InvalidInputError(f"memory array provenance is {prov.shape} {prov.dtype}, expected ({n},) uint8 "
                                        f"in 0..{INVENTED_FINAL}")
            mem._prov[:n] = prov
            mem._maybe_provisional = True  # whatever was saved: the first ``has_provisional`` scans
        else:
            mem._prov[:n] = OBSERVED
        mem._n = n
        mem._n_sorted = int(K.longest_sorted_prefix(mem._keys, n))  # keeps the given order: exact round trip
        mem._block_ids, mem._block_starts = K.block_directory(mem._keys, mem._n_sorted)
        mem._rehash()
        return mem

    def save_ply(self, path: str | Path) -> None:
        """Binary PLY: float64 x y z (world, metres), uchar red green blue, uint16 observation_count, int
        last_seen_frame. open3d is imported here only."""
        import open3d as o3d

        pc = o3d.t.geometry.PointCloud()
        pc.point.positions = o3d.core.Tensor(self._live_positions64())
        pc.point.colors = o3d.core.Tensor(np.ascontiguousarray(self.colors))
        pc.point.observation_count = o3d.core.Tensor(self.observation_count[:, None].copy())
        pc.point.last_seen_frame = o3d.core.Tensor(self.last_seen_frame[:, None].copy())
        if not o3d.t.io.write_point_cloud(str(path), pc):
            raise InvalidInputError(f"could not write a PLY file to {path}")

    @classmethod
    def load_ply(cls, path: str | Path, config: MemoryConfig = MemoryConfig()) -> "SpatialMemory":
        """Read a PLY (ours, or any with positions and optional colours): points are voxelized with ``config``.
        Our own files come back exactly when ``config.voxel_size_m`` is the one they were saved with."""
        import open3d as o3d

        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"PLY file not found: {path}")
        pc = o3d.t.io.read_point_cloud(str(path))
        if "positions" not in pc.point or pc.point.positions.shape[0] == 0:
            raise InvalidInputError(f"{path}: no points")
        pts = pc.point.positions.numpy().astype(np.float64)
        n = len(pts)
        cols = pc.point.colors.numpy() if "colors" in pc.point else np.full((n, 3), 128, np.uint8)
        if cols.dtype != np.uint8:  # float colours in [0, 1]
            cols = np.clip(np.rint(cols.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        counts = (
            pc.point.observation_count.numpy().reshape(-1).astype(np.uint16)
            if "observation_count" in pc.point else np.ones(n, np.uint16)
        )
        last = (
            pc.point.last_seen_frame.numpy().reshape(-1).astype(np.int32)
            if "last_seen_frame" in pc.point else np.full(n, -1, np.int32)
        )
        if not np.all(np.isfinite(pts)):
            raise InvalidInputError(f"{path}: positions contain NaN or infinite values")
        mem = cls(config)
        mem._overwrite(pts, cols, counts, last, np.zeros(n, np.uint8))  # a PLY carries no provenance: observed
        return mem

    def copy(self) -> "SpatialMemory":
        return self._sibling(copy_arrays=True)

    def _sibling(self, copy_arrays: bool) -> "SpatialMemory":
        """A memory object with this one's state: its arrays copied (``copy``) or shared (``frozen_view``), none of
        its background work or holds."""
        mem = SpatialMemory.__new__(SpatialMemory)
        mem.__dict__.update({k: (v.copy() if copy_arrays and isinstance(v, np.ndarray) else v)
                             for k, v in self.__dict__.items()})
        mem._growth = mem._ordering = None  # background work in preparation belongs to this memory's arrays
        mem._resort_touched = []
        mem.__dict__.pop("_keys_read", None)  # (its buffer is shared: appends would write into both)
        mem._created = deque(self._created, maxlen=GROWTH_MARGIN_WINDOW)  # its own
        mem.hold_in_place_resorts = False  # (a copy of a frozen view stays one: ``_frozen_of`` is kept)
        return mem

    # ----------------------------------------------------------------------------------------------------------
    # Storage management
    # ----------------------------------------------------------------------------------------------------------

    @property
    def _capacity(self) -> int:
        return int(self._keys.shape[0])

    def _alloc(self, capacity: int) -> None:
        # uninitialised: only rows < n are ever read, and a new point's row is written whole (``merge_samples``,
        # ``_overwrite``); zeroing 25 MB per growth at 1 M points was part of a frame's pause
        self._keys = np.empty(capacity, np.int64)
        self._offsets = np.empty((capacity, 3), np.uint8)
        self._colors = np.empty((capacity, 3), np.uint8)
        self._counts = np.empty(capacity, np.uint16)
        self._last = np.empty(capacity, np.int32)
        self._prov = np.empty(capacity, np.uint8)

    def _prepare_growth(self) -> None:
        # what the next integrate may add
        ahead = 0
        if self._n >= GROWTH_MARGIN_POINTS:
            ahead = min(max(self._created, default=0), self._n // 4)
        if self._growth is not None or self._n + ahead < GROW_AHEAD_AT * self._capacity:
            return
        # read in place by the job: keys below n stay put until a re-sort (which changes the structure and voids it;
        # a drop moves no row), the other arrays are copied again on adoption
        arrays = (self._keys, self._offsets, self._colors, self._counts, self._last, self._prov)
        # room for the integrate after the adoption too (else it grows on the spot after all)
        capacity = int(math.ceil(max(self._capacity, self._n + ahead) * GROW_AHEAD))
        # a re-sort in preparation (its job ahead of this one on the maintenance thread) is copied at this capacity
        # too, so that it still applies once this growth is adopted (``_adopt_growth``)
        resort = self._ordering[0] if self._ordering is not None else None
        job = background("memory-maintenance").submit(_grown_copy, arrays, self._n, capacity, self._dead, resort)
        self._growth = (job, self._n, self._structure, self._dead, capacity, resort)

    def _adopt_growth(self, wait: bool = False) -> bool:
        """Take the prepared larger arrays (if ready, or once ready with ``wait``); False when there is none or it
        no longer applies (re-sorted meanwhile, or grown on the spot). Points dropped since it began are dead rows
        where they were (no row moved): their keys leave its table, and the rows added since join it, the dead ones
        left out."""
        if self._growth is None:
            return False
        job, n0, structure, dead0, _, resort = self._growth
        if not (wait or job.done()):
            return False
        self._growth = None
        arrays, table, resorted = job.result()
        if structure != self._structure or arrays[0].shape[0] <= self._capacity:  # re-sorted, or grown meanwhile
            return False
        n = self._n
        current = (self._keys, self._offsets, self._colors, self._counts, self._last, self._prov)
        # dropped since it began, among the rows it hashed (the dead rows only grew: dead0 is a subset)
        dropped = self._dead[: int(np.searchsorted(self._dead, n0))]
        if len(dropped) > len(dead0):
            dropped = np.setdiff1d(dropped, dead0, assume_unique=True)
            # while the table holds only rows < n0: a dropped key back in a later row is not in it yet
            K.hash_delete_keys(table, arrays[0], arrays[0][dropped])
        for dst, src in zip(arrays[1:], current[1:]):  # rows < n0 kept their keys; their data may have moved on
            dst[:n0] = src[:n0]
        for dst, src in zip(arrays, current):  # rows added since the copy
            dst[n0:n] = src[n0:n]
        K.hash_build_live(table, arrays[0], n0, n, self._dead)
        self._keys, self._offsets, self._colors, self._counts, self._last, self._prov = arrays
        self._table = table
        if resorted is not None and self._ordering is not None and self._ordering[0] is resort:
            # the re-sort in preparation, its copy at the new capacity (it keeps its order and rows)
            ready = Future()
            ready.set_result(resorted)
            self._ordering = (ready, *self._ordering[1:])
        return True

    def _grow(self, capacity: int) -> None:
        if self._ordering is not None:  # the re-sort in preparation: its copy at the new capacity too, on the
            # maintenance thread after its job (else it would no longer fit and be made in place)
            job = background("memory-maintenance").submit(_enlarged_job, self._ordering[0], capacity)
            self._ordering = (job, *self._ordering[1:])
        n = self._n
        old = (self._keys, self._offsets, self._colors, self._counts, self._last, self._prov)
        self._alloc(capacity)
        for dst, src in zip((self._keys, self._offsets, self._colors, self._counts, self._last, self._prov), old):
            dst[:n] = src[:n]
        self._rehash()

    def _rehash(self) -> None:
        self._table = np.full(_table_size(self._capacity), -1, np.int32)
        K.hash_build_live(self._table, self._keys, 0, self._n, self._dead)

    def _positions64(self) -> np.ndarray:
        return K.decode_positions(self._keys, self._offsets, self._n, self.config.voxel_size_m)

    def _compact(self, keep: np.ndarray) -> None:
        """Drop the rows where ``keep`` [rows] is False (``_drop``; dead rows must be kept: they are gone already)."""
        self._drop(np.flatnonzero(~np.asarray(keep[: self._n], bool)))

    def _drop(self, drops: np.ndarray) -> None:
        """Delete the points in rows ``drops`` (sorted distinct live rows < ``_n``) at O(dropped points) cost: each
        row becomes dead where it is (``K.drop_points``: out of the hash table, provenance ``K.DEAD``; every reader
        skips it) and the next re-sort removes it. The points as read are the live rows in row order
        (``world._reference.reference_drop_order``: a stable filter). No row moves, so a re-sort or a growth in
        preparation still applies: its adoption carries the rows dropped since as dead rows (``_adopt_resort``,
        ``_adopt_growth``). A drop that moved rows (the tail's last kept points into its holes) voided the prepared
        re-sort, and the re-sort then permuted every row on the frame thread (docs/BENCHMARKS.md, "The prepared
        re-sort survives drops")."""
        if not len(drops):
            return
        self._writable()
        drops = np.ascontiguousarray(drops, np.int64)
        K.drop_points(self._table, self._keys, self._prov, drops)
        # (disjoint: a dead row is never dropped again; an insert, not union1d's sort of every dead row)
        self._dead = np.insert(self._dead, np.searchsorted(self._dead, drops), drops)

    def _permute(self, order: np.ndarray) -> None:
        """Row ``i`` takes row ``order[i]`` of every point array, in place."""
        n = len(order)
        buffer = np.empty(n * 8, np.uint8)  # one scratch for all six (the keys' 8 bytes a row are the most)
        for a in (self._keys, self._counts, self._last, self._prov):
            K.permute_rows(a, order, buffer[: n * a.itemsize].view(a.dtype))
        for a in (self._offsets, self._colors):
            K.permute_rows3(a, order, buffer[: n * 3 * a.itemsize].view(a.dtype).reshape(n, 3))

    def reindex(self) -> None:
        """Sort the points added since the last sort into the culling blocks now.

        ``render`` does this lazily once the unsorted tail passes ``max(TAIL_MIN, n / TAIL_FRACTION)`` points
        (~0.1 s at 2 M points); call it off the hot path (after a memory update) to keep renders even.
        Point indices change; keys do not.
        """
        if self._n > self._n_sorted:
            self._reindex()

    def _reindex_due(self) -> bool:
        tail = self._n - self._n_sorted
        limit = max(TAIL_MIN, self.num_points // TAIL_FRACTION)
        if tail <= limit:
            return False
        # a prepared one gets a few integrates' lead (RESORT_LEAD_INTEGRATES)
        return (self._ordering is None or tail > 2 * limit
                or self._integrates - self._ordering_integrates >= RESORT_LEAD_INTEGRATES)

    def _maybe_reindex(self) -> None:
        if self._frozen_of is None and self._reindex_due():  # (a frozen view's rows are its memory's)
            self._reindex()

    def _wrote_rows(self, rows: np.ndarray) -> None:
        """Rows about to be (or just) written in place: a re-sort in preparation copies them again when adopted."""
        if self._ordering is not None and len(rows):
            rows = np.asarray(rows, np.int64)
            rows = rows[rows < self._ordering[2]]  # rows from its n on are copied whole
            if len(rows):
                self._resort_touched.append(rows)

    def _prepare_reindex(self) -> None:
        """Once the tail is 3/4 of the way to a re-sort, prepare it on the maintenance thread: the merge order, the
        point arrays in that order, their hash table and block directory (``_resorted_copy``). ``_reindex`` then
        only brings over what changed meanwhile: the rows written in place since (``_resort_touched``) and the
        points added since, which stay in the tail at their indices, as before. A re-sort in place (permuting
        every row, remapping the table, the directory: O(points)) paused the frame being made 104-268 ms at
        ~1.1 M points with four worlds on two cores (docs/BENCHMARKS.md, "Stalls off the frame path")."""
        tail = self._n - self._n_sorted
        limit = max(TAIL_MIN, self.num_points // TAIL_FRACTION)
        # (past twice the limit the next render re-sorts at once, ``_reindex_due``: prepared, it would wait for the
        # whole job, which is slower than the in-place re-sort; a world's first image, ~2 x 10^5 points at 640x360)
        if self._ordering is not None or 4 * tail < 3 * limit or tail > 2 * limit:
            return
        arrays = (self._keys, self._offsets, self._colors, self._counts, self._last, self._prov)
        rows = tuple(numba.typeof(a) for a in (self._keys, self._counts, self._last, self._prov))
        rows3 = tuple(numba.typeof(a) for a in (self._offsets, self._colors))
        # a growth in preparation (its job ahead of this one): the copy at its capacity, for after its adoption
        growth = self._growth
        capacity = growth[4] if growth is not None and growth[2] == self._structure else self._capacity
        order = Future()
        job = background("memory-maintenance").submit(_resorted_copy, arrays, self._n_sorted, self._n, self._dead,
                                                      rows, rows3, numba.typeof(self._table), order, capacity)
        self._ordering = (job, self._n_sorted, self._n, self._structure, order)
        self._ordering_integrates = self._integrates
        self._resort_touched = []

    def _reindex(self) -> None:
        """Merge the unsorted tail into the block-sorted part, leaving the dead rows out: the prepared re-sort when
        it still applies (no re-sort since it began, same capacity), else in place (O(n) merge + an O(tail log
        tail) sort). A prepared re-sort covers the rows up to its ``n0``: the points live when it began, in block
        order; the rows dropped since stay among them as dead rows (their places in its order), and the rows from
        ``n0`` on follow in their order, the dead ones among them too (``world._reference.reference_resort_rows``).
        Taken from its copy (waited for when not ready) or, when the memory grew on the spot since, made in place
        with its order, the rows come out the same, byte for byte: the result does not depend on the maintenance
        thread's timing."""
        if self._ordering is not None:  # the order of the rows up to n0, computed in the background
            job, ns0, n0, structure, _ = self._ordering
            applies = structure == self._structure and ns0 == self._n_sorted  # (a growth adopted meanwhile kept
            # every key in place, and drops move no row)
            if applies and not job.done():
                # the copy not ready yet: wait for it rather than permute every row here while the maintenance
                # thread goes on making it (the same O(points) work twice on two cores; this thread's wait leaves
                # the core to the job, and at most the jobs queued before it, other worlds' too, come first)
                self.resorts_waited += 1
                log.debug("memory re-sort waits for its copy", points=self.num_points)
                job.result()
            if applies and self._growth is not None and self._growth[0].done():
                # a growth ready: adopted first (it keeps every row where it is), so that the re-sort's copy, made at
                # its capacity, applies (``_prepare_reindex``, ``_grown_copy``)
                self._adopt_growth()
            job, ns0, n0, structure, prepared_order = self._ordering
            self._ordering = None
            touched, self._resort_touched = self._resort_touched, []
            if applies:
                prepared = job.result()
                if prepared.keys.shape[0] == self._capacity:
                    self._adopt_resort(prepared, n0, touched)
                    return
                if self.hold_in_place_resorts:  # (the next one, after the hold, merges the whole tail)
                    return
                # grown on the spot since (a growth that was not ready in time): in place with its order, the same
                # rows in the same order
                log.debug("memory re-sort in place", points=self.num_points, reason="grown since")
                self._resort_in_place(prepared_order.result(), n0)
                return
            log.debug("memory re-sort in place", points=self.num_points, reason="re-sorted since")
        if self.hold_in_place_resorts:  # a frozen view shares the rows: the tail stays unsorted until the hold ends
            return
        self._resort_in_place(_merge_order(self._keys, self._n_sorted, self._n, self._dead), self._n)

    def _resort_in_place(self, order: np.ndarray, n0: int) -> None:
        """Re-lay the rows out as ``order`` (new position -> old row, the live rows below ``n0`` when it was made),
        then the rows from ``n0`` on; the rows of ``order`` dropped since and the dead rows from ``n0`` on stay dead
        at their new places."""
        self._writable()
        self.resorts_in_place += 1
        n = self._n
        m, rest = len(order), n - n0
        if rest:
            order = np.concatenate([order, np.arange(n0, n, dtype=np.int64)])
        self._structure += 1
        self._permute(order)
        new_of_old = np.full(n, -1, np.int32)  # (rows dead when the order was made are in no slot)
        new_of_old[order] = np.arange(len(order), dtype=np.int32)
        K.hash_remap(self._table, new_of_old)  # same keys in the same slots, only the indices move
        self._dead = _dead_after_resort(self._dead, new_of_old, n0, m)
        self._n_sorted, self._n = m, m + rest
        self._block_ids, self._block_starts = K.block_directory(self._keys, m)

    def _adopt_resort(self, prepared: "_Resorted", n0: int, touched: list[np.ndarray]) -> None:
        """Take a prepared re-sort of the live rows up to ``n0``: rows written since it copied them are copied
        again (to their new place), rows dropped since become dead at their new place (their keys leave its table),
        the rows added since (``>= n0``) follow it in their order and join its table (the dead ones among them
        left out). O(rows changed since it began + rows added since)."""
        n = self._n
        m = len(prepared.order)  # its rows: n0 less the rows dead when it began
        current = (self._keys, self._offsets, self._colors, self._counts, self._last, self._prov)
        arrays = (prepared.keys, *prepared.rows)
        if touched:  # keys never change in place: only the other arrays
            rows = np.concatenate(touched)
            for dst, src in zip(arrays[1:], current[1:]):
                (K.scatter_rows3 if src.ndim == 2 else K.scatter_rows)(src, rows, prepared.new_of_old, dst)
        dead = _dead_after_resort(self._dead, prepared.new_of_old, n0, m)
        since = dead[: int(np.searchsorted(dead, m))]  # dropped since it began: in its prefix and its table
        if len(since):
            prepared.rows[4][since] = K.DEAD
            # before the rows from n0 on join the table: a dropped key back in one of them is not in it yet
            K.hash_delete_keys(prepared.table, prepared.keys, prepared.keys[since])
        for dst, src in zip(arrays, current):  # the rows added since, in their order
            dst[m : m + n - n0] = src[n0:n]
        K.hash_build_live(prepared.table, prepared.keys, m, m + n - n0, dead)
        self._writable()
        self._structure += 1
        self._keys, self._offsets, self._colors, self._counts, self._last, self._prov = arrays
        self._table = prepared.table
        self._n_sorted, self._n = m, m + n - n0
        self._dead = dead
        self._block_ids, self._block_starts = prepared.block_ids, prepared.block_starts


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------

def _merge_order(keys: np.ndarray, n_sorted: int, n: int, dead: np.ndarray) -> np.ndarray:
    """New position -> old row that merges the live rows of ``[n_sorted, n)`` into the block-sorted
    ``[0, n_sorted)``, the rows ``dead`` (sorted, anywhere below ``n``) left out (``K.merge_order``). Reads only keys
    below ``n``, which stay put until the memory's structure changes (callers check)."""
    dead = np.ascontiguousarray(dead, np.int64)
    k = int(np.searchsorted(dead, n_sorted))
    sort_keys = K.sort_keys(keys, n_sorted, n)
    if k < len(dead):  # dead tail rows: left out of the tail's order
        live = np.ones(n - n_sorted, np.bool_)
        live[dead[k:] - n_sorted] = False
        rows = np.flatnonzero(live)
        tail_order = rows[np.argsort(sort_keys[rows])]
    else:
        tail_order = np.argsort(sort_keys)
    return K.merge_order(keys, n_sorted, tail_order, n_sorted, dead[:k])


def _dead_after_resort(dead: np.ndarray, new_of_old: np.ndarray, n0: int, m: int) -> np.ndarray:
    """The dead rows after a re-sort whose order covered the rows below ``n0`` (``new_of_old`` [>= n0]: old row ->
    new position, -1 for a row dead when the order was made) into ``m`` rows, the rows from ``n0`` on following
    them: those dropped since the order was made at their new places, the later dead rows shifted with the tail."""
    k = int(np.searchsorted(dead, n0))
    moved = np.asarray(new_of_old[dead[:k]], np.int64)
    return np.concatenate([np.sort(moved[moved >= 0]), dead[k:] - (n0 - m)])


class _Resorted(NamedTuple):
    """A re-sort prepared on the maintenance thread (``_resorted_copy``)."""

    order: np.ndarray  # [m0] new position -> old row (m0: n0 less the rows dead when it began)
    new_of_old: np.ndarray  # [n0] old row -> new position (-1: a row dead when it began)
    keys: np.ndarray  # [capacity] keys in the new order (rows >= m0 not yet written)
    rows: tuple  # the other point arrays (offsets, colors, counts, last_seen, provenance), the same way
    table: np.ndarray  # the hash table of keys[:n0]
    block_ids: np.ndarray
    block_starts: np.ndarray


def _resorted_copy(arrays: tuple[np.ndarray, ...], n_sorted: int, n: int, dead: np.ndarray, rows: tuple,
                   rows3: tuple, table, order_ready: Future, capacity: int) -> _Resorted:
    """On the maintenance thread: the memory's rows ``[0, n)`` but ``dead`` (its dead rows when it began; the owner
    never changes that array in place) merged into block order (``_merge_order``) as new
    arrays of ``capacity`` rows (the memory's, or that of a growth in preparation), with their hash table and block
    directory. Runs while the owner keeps
    integrating: rows < n may be written meanwhile (the owner records them and ``_adopt_resort`` copies them
    again); keys below ``n`` stay put until the memory's structure changes (then the result is discarded).

    Every kernel the world thread's part of a re-sort calls is loaded here for the memory's array types (numba
    ``typeof``), the fallback's in-place ones too: a process loads a kernel from numba's disk cache the first time
    it calls it, and inside ``_reindex`` the loads stalled the frame being made, once per process, ~100 steps into
    a 128x96 lock-step session (docs/BENCHMARKS.md, "Lock-step step, fifth pass"). ``compile`` with a signature
    loads without running the kernel; for a kernel already loaded it returns at once. ``order_ready`` gets the
    merge order as soon as it is known (a re-sort due before the rest is done uses it in place)."""
    try:
        order = _merge_order(arrays[0], n_sorted, n, dead)
    except BaseException as exc:
        order_ready.set_exception(exc)
        raise
    order_ready.set_result(order)
    m = len(order)
    new_of_old = np.full(n, -1, np.int64)
    new_of_old[order] = np.arange(m, dtype=np.int64)
    out = tuple(np.empty((capacity,) + a.shape[1:], a.dtype) for a in arrays)
    for dst, src in zip(out, arrays):
        (K.gather_rows3 if src.ndim == 2 else K.gather_rows)(src, order, dst)
    new_table = np.full(_table_size(capacity), -1, np.int32)
    K.hash_build_range(new_table, out[0], 0, m)
    block_ids, block_starts = K.block_directory(out[0], m)
    order_t, index_t = numba.typeof(order), numba.typeof(new_of_old)
    for arr_t in rows:
        K.permute_rows.compile((arr_t, order_t, arr_t))
        K.scatter_rows.compile((arr_t, index_t, index_t, arr_t))
        K.take_live.compile((arr_t, numba.typeof(n), index_t, arr_t))  # (the points as read while rows are dead)
    for arr_t in rows3:
        K.permute_rows3.compile((arr_t, order_t, arr_t))
        K.scatter_rows3.compile((arr_t, index_t, index_t, arr_t))
        K.take_live.compile((arr_t, numba.typeof(n), index_t, arr_t))
    K.hash_remap.compile((table, numba.typeof(np.empty(0, np.int32))))
    K.hash_delete_keys.compile((table, rows[0], index_t))
    K.block_directory.compile((rows[0], numba.typeof(n)))
    _load_dead_row_kernels(table, rows[0], rows[3])
    return _Resorted(order, new_of_old, out[0], out[1:], new_table, block_ids, block_starts)


def _grown_copy(arrays: tuple[np.ndarray, ...], n: int, capacity: int, dead: np.ndarray,
                resort: Future | None) -> tuple[tuple[np.ndarray, ...], np.ndarray, "_Resorted | None"]:
    """Arrays of ``capacity`` rows holding rows ``[0, n)`` of ``arrays``, and the hash table of their keys but the
    rows ``dead`` (the memory's dead rows when it began; the owner never changes that array in place). Runs
    while the owner keeps integrating: rows < n of every array but the keys may change meanwhile (``_adopt_growth``
    copies them again, and takes the keys dropped since out of the table); rows >= n are not read. With
    ``resort`` (a re-sort's job, submitted before this one to the same thread: done by now), its copy too at
    ``capacity`` rows (``_enlarged``): without it, a re-sort prepared before a growth that is adopted before the
    re-sort would no longer fit and be made in place."""
    out = tuple(np.empty((capacity,) + a.shape[1:], a.dtype) for a in arrays)
    for dst, src in zip(out, arrays):
        dst[:n] = src[:n]
    table = np.full(_table_size(capacity), -1, np.int32)
    K.hash_build_live(table, out[0], 0, n, dead)
    # the kernels its adoption calls, loaded here rather than on the world thread at their first call (see
    # ``_resorted_copy``)
    table_t, index_t = numba.typeof(table), numba.typeof(np.empty(0, np.int64))
    K.hash_delete_keys.compile((table_t, numba.typeof(out[0]), index_t))
    _load_dead_row_kernels(table_t, numba.typeof(out[0]), numba.typeof(out[5]))
    resorted = None
    if resort is not None and resort.exception() is None:  # (never waits: the job ran before this one)
        resorted = _enlarged(resort.result(), capacity)
    return out, table, resorted


def _enlarged_job(resort: Future, capacity: int) -> _Resorted:
    """On the maintenance thread, after the re-sort's job ``resort`` (submitted before: done by now)."""
    return _enlarged(resort.result(), capacity)


def _enlarged(prepared: _Resorted, capacity: int) -> _Resorted:
    """``prepared`` with arrays of ``capacity`` rows (its rows copied, its table rebuilt at that size)."""
    if prepared.keys.shape[0] >= capacity:
        return prepared
    m = len(prepared.order)
    arrays = []
    for a in (prepared.keys, *prepared.rows):
        out = np.empty((capacity,) + a.shape[1:], a.dtype)
        out[:m] = a[:m]
        arrays.append(out)
    table = np.full(_table_size(capacity), -1, np.int32)
    K.hash_build_range(table, arrays[0], 0, m)
    return prepared._replace(keys=arrays[0], rows=tuple(arrays[1:]), table=table)


def _load_dead_row_kernels(table_t, keys_t, prov_t) -> None:
    """Load the kernels the world thread calls on dead rows (a drop, renders and adoptions while some are dead) on
    the maintenance thread, as ``_resorted_copy`` does for the re-sort's."""
    index_t = numba.typeof(np.empty(0, np.int64))
    K.drop_points.compile((table_t, keys_t, prov_t, index_t))
    K.hash_build_live.compile((table_t, keys_t, numba.typeof(0), numba.typeof(0), index_t))
    K.skip_rows.compile((index_t, index_t, index_t))
    K.live_ids.compile((numba.typeof(np.empty((2, 2), np.int32)), index_t, numba.typeof(0)))


def load_maintenance_kernels() -> None:
    """Load every kernel the maintenance thread's jobs (a re-sort's copy ``_resorted_copy``, a growth's copy
    ``_grown_copy``) and the dead-row paths call, for a memory's own array types, by running both jobs on a memory
    of a few points with a dead row. A server calls it once at start (``server.host``): else a process loaded them
    from numba's disk cache inside its first world's first seconds of play (the first growth and background re-sort
    come within a 640x360 session's first dozen clips), each under numba's process-wide lock and holding the GIL
    while the world's thread was making a frame (docs/BENCHMARKS.md, "A served session's first second");
    ``skip_rows`` and ``live_ids`` were loaded on the world's thread itself (its first render with dead rows)."""
    memory = SpatialMemory()
    rng = np.random.default_rng(0)
    memory.insert(rng.uniform(-1.0, 1.0, (64, 3)), rng.integers(0, 256, (64, 3), dtype=np.uint8))
    n = memory._n
    dead = np.array([1], np.int64)  # a dead row, as a drop leaves one (the jobs skip it)
    arrays = (memory._keys, memory._offsets, memory._colors, memory._counts, memory._last, memory._prov)
    rows = tuple(numba.typeof(a) for a in (memory._keys, memory._counts, memory._last, memory._prov))
    rows3 = tuple(numba.typeof(a) for a in (memory._offsets, memory._colors))
    resorted = _resorted_copy(arrays, 0, n, dead, rows, rows3, numba.typeof(memory._table), Future(), memory._capacity)
    _grown_copy(arrays, n, 2 * memory._capacity, dead, None)
    _enlarged(resorted, 2 * memory._capacity)


def splat_k(config: MemoryConfig, intrinsics: Intrinsics) -> float:
    """``splat_scale * d * f`` so that a point at z-depth z covers ``ceil(splat_k / z)`` pixels per side."""
    return float(config.splat_scale) * float(config.voxel_size_m) * max(float(intrinsics.fx), float(intrinsics.fy))


def depth_quant(config: MemoryConfig) -> float:
    """Scale from metres to the 31-bit integer depth used for z-buffer comparisons (ties -> lower point id)."""
    return K.DEPTH_QUANT_MAX / float(config.max_depth_m)


def _take_live(a: np.ndarray, n: int, dead: np.ndarray) -> np.ndarray:
    """Rows ``[0, n)`` of ``a`` but ``dead`` (sorted, non-empty), as a new array: one numpy copy per run of live
    rows while they are few (a copy runs at memory speed), else ``K.take_live`` (the dead rows scattered, one per
    dropped point of the tail, where a Python loop over the runs or numpy's boolean take of an [N, 3] array is slow:
    docs/BENCHMARKS.md, "The prepared re-sort survives drops")."""
    out = np.empty((n - len(dead),) + a.shape[1:], a.dtype)
    brk = np.flatnonzero(np.diff(dead) != 1)
    if len(brk) >= TAKE_LIVE_RUNS:
        K.take_live(a, n, dead, out)
        return out
    run_start = np.concatenate([dead[:1], dead[brk + 1]])  # runs of dead rows
    run_stop = np.concatenate([dead[brk] + 1, dead[-1:] + 1])
    m = 0
    for lo, hi in zip(np.concatenate([[0], run_stop]).tolist(), np.concatenate([run_start, [n]]).tolist()):
        out[m : m + hi - lo] = a[lo:hi]
        m += hi - lo
    return out


_scratch = threading.local()  # ``K.render_points``' z-buffer, per rendering thread (one shape kept)


def _render_scratch(n_chunks: int, pixels: int) -> np.ndarray:
    """A ``[n_chunks, pixels]`` int64 z-buffer of this thread's own (the kernel overwrites it: renders run on several
    threads at once, the worlds' and the memory update's, so one shared buffer would not do)."""
    buf = getattr(_scratch, "zbuf", None)
    if buf is None or buf.shape != (n_chunks, pixels):
        buf = _scratch.zbuf = np.empty((n_chunks, pixels), np.int64)
    return buf


def _visible_ranges(keep: np.ndarray, block_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous point ranges of kept blocks (neighbouring kept blocks are fused into one range)."""
    if not keep.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = keep.astype(np.int8)
    edges = np.diff(np.concatenate(([0], k, [0])))
    first = np.flatnonzero(edges == 1)
    last = np.flatnonzero(edges == -1)  # exclusive block index
    return block_starts[first].astype(np.int64), block_starts[last].astype(np.int64)


def _table_size(capacity: int) -> int:
    return int(math.ceil(capacity / HASH_MAX_LOAD)) + 1


def _pack(ijk: np.ndarray) -> np.ndarray:
    u = ijk + K.KEY_OFFSET
    return (u[:, 0] << (2 * K.KEY_BITS)) | (u[:, 1] << K.KEY_BITS) | u[:, 2]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.view()
    a.flags.writeable = False
    return a


def _points_colors(points, colors) -> tuple[np.ndarray, np.ndarray]:
    pts = np.ascontiguousarray(as_points(points))
    if not np.all(np.isfinite(pts)):
        raise InvalidInputError("points contain NaN or infinite values")
    cols = np.asarray(colors)
    if cols.shape != pts.shape or cols.dtype != np.uint8:
        raise InvalidInputError(f"colors must be [{len(pts)}, 3] uint8, got {cols.shape} {cols.dtype}")
    return pts, np.ascontiguousarray(cols)


def _image(rgb, h: int, w: int) -> np.ndarray:
    a = np.asarray(rgb)
    if a.shape != (h, w, 3) or a.dtype != np.uint8:
        raise InvalidInputError(f"rgb must be a ({h}, {w}, 3) uint8 image matching the intrinsics, got {a.shape} {a.dtype}")
    return np.ascontiguousarray(a)


def _provenance(p) -> int:
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or int(p) not in PROVENANCE_NAMES:
        raise InvalidInputError(f"provenance must be one of {sorted(PROVENANCE_NAMES)} ({PROVENANCE_NAMES}), got {p!r}")
    return int(p)


def _frame_index(frame_index) -> int:
    if isinstance(frame_index, bool) or not isinstance(frame_index, (int, np.integer)):
        raise InvalidInputError(f"frame_index must be an integer, got {frame_index!r}")
    if not (np.iinfo(np.int32).min <= int(frame_index) <= np.iinfo(np.int32).max):
        raise InvalidInputError(f"frame_index {frame_index} does not fit in int32")
    return int(frame_index)
