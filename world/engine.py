"""The ``Engine``: a world's memory and history plus a ``Generator`` -> "frames for these poses".

One Play step, one ``Generate`` call, the CLI demo, the evaluation harness and the in-process Gymnasium env all
drive this one loop (``docs/DESIGN.md``, "One Play step"):

1. chunk the poses into clips (``ClipConfig``);
2. for each clip build a ``ClipRequest``: the memory rendered along preceding + target poses (the scene
   projection video), the preceding frames, up to K reference frames retrieved from the history (paper
   Algorithm 1 or the official variant), the prompt and a seed derived from the caller's seed and the clip id;
3. the generator returns frames, which are yielded one by one;
4. after the clip's last frame has been yielded, the memory update folds the frames into the memory (pose
   refinement, depth, dynamic exclusion) and the history records them with their view-specific voxel sets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from spatia.world._threads import background
from spatia.world.actions import ClipConfig, chunk_clips
from spatia.world.camera import rotation_angle_deg, translation_distance_m, validate_trajectory
from spatia.world.collision import CollisionConfig, MemoryCollider
from spatia.world.errors import InvalidInputError
from spatia.world.free_space import VisitedPositions
from spatia.world.generator import (
    ClipRequest, ClipResult, GeneratedView, Generator, ReferenceFrame, SceneProjection, capabilities_of, clip_result,
)
from spatia.world.history import GrowingRows, load_save_kernels
from spatia.world.memory import INVENTED_FINAL, INVENTED_PROVISIONAL, OBSERVED, RenderResult, SpatialMemory
from spatia.world.numba_start import numba
from spatia.world.retrieval import retrieve_reference_frames
from spatia.world.state import World
from spatia.world.update import UpdateConfig, load_update_kernels, update_memory


@dataclass(frozen=True)
class EngineConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)
    num_references: int = 7  # K, paper default (Table 5: no gain beyond 7)
    retrieval_method: str = "paper"  # "paper" (Algorithm 1: IoU of voxel sets) or "official" (shared points + Hungarian)
    retrieval_eps: float = 0.0  # Algorithm 1's threshold on the IoU
    use_scene_projection: bool = True  # Table 4 ablation: False hands the generator an all-invalid projection
    # and neither the memory nor the observed views it is rendered from (``ClipRequest.memory``, ``observed_views``)
    use_references: bool = True  # Table 4 ablation
    update_memory: bool = True  # False: the memory stays as created (a "no memory update" baseline)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    # Departure from Algorithm 1: the history frame nearest in pose to the clip's last target always gets a slot
    # (replacing the weakest retrieved one when all K are taken), and free slots go to the frames nearest to the
    # sampled targets (pose retrieval, as WorldMem and VMem do). Stored view-specific voxel sets are computed
    # against the memory of their time, so an exact revisit of an early view can score below later, denser views;
    # the pose catches it, and where a clip ends is what the next clip continues from.
    fill_references_by_pose: bool = True
    # Keyframes: frames whose global index is a multiple of this. The memory update integrates only keyframes
    # (it is run with ``integrate_stride = keyframe_stride``) and retrieval indexes only their view-specific voxel
    # sets; every frame stays in the history (image, pose, depth) and can still be chosen by pose. 1 (default):
    # every frame, as in Algorithm 1. The official code maps every 6th frame and retrieves among every 4th
    # (candidate stride 4); real-time play uses 4: consecutive frames at 30 fps are ~3 cm apart and nearly the
    # same view, and a frame's voxel set (~10^5 keys at d = 1 cm) costs more to index than the frame to draw.
    keyframe_stride: int = 1
    # (degrees, metres): a clip whose last target pose is within both of the last retrieval's keeps its retrieved
    # frames instead of running Algorithm 1 again (the pose-nearest fill still runs every clip). None (default):
    # retrieve for every clip, as the paper does. Real-time play with one-frame clips retrieves ~30 times a
    # second for nearly the same view; reuse there trades a few cm of staleness for ~4 ms per frame.
    reuse_references_within: tuple[float, float] | None = None
    # ... and, whatever the distance, the clips right after a retrieval keep its frames for this many clips (0:
    # never). Four sessions on two cores draw ~10 fps each, so a clip moves ~0.1 m, past the distance above, and
    # nearly every clip retrieved; measured on play.py's walk at 10 fps, the previous clip's retrieval held every
    # frame a fresh one chose (docs/BENCHMARKS.md, session 15 lat4, "Retrieval at 10 fps"). Frames indexed since
    # that retrieval are not scored until the next one; the pose-nearest fill still runs every clip.
    reuse_references_clips: int = 0
    # Invented memory points within this of a pose the camera has been at are removed after each clip (0: off).
    free_radius_m: float = 0.5
    # Real-time play: a clip's memory update runs on a thread of the engine's own while the next clip is made, and
    # that clip reads the memory and history as they were before the update began (a ``frozen_view``; the clip's
    # frames join the history when the update is done, at the next clip's end or at ``settle``). So each clip sees
    # the memory one clip late: a function of the path alone, whatever the threads' timing. A keyframe's update then
    # no longer delays the next frame (docs/DESIGN.md, "One Play step"). Where the generator allows it
    # (``commits_beside_next_clip``: it reads no preceding frames and gives exact poses); with any other generator
    # each update runs before the next clip, as with False. Needs an update that never repaints a remembered point.
    commit_beside_next_clip: bool = False

    def __post_init__(self) -> None:
        if self.num_references < 0:
            raise InvalidInputError(f"num_references must be >= 0, got {self.num_references}")
        if self.keyframe_stride < 1:
            raise InvalidInputError(f"keyframe_stride must be >= 1, got {self.keyframe_stride}")
        if self.reuse_references_clips < 0:
            raise InvalidInputError(f"reuse_references_clips must be >= 0, got {self.reuse_references_clips}")
        if self.commit_beside_next_clip and self.update.integrate_observed:
            raise InvalidInputError("commit_beside_next_clip needs update.integrate_observed off: the next clip reads "
                                    "the remembered points while the update runs")
        if self.reuse_references_within is not None and (
            len(self.reuse_references_within) != 2 or min(self.reuse_references_within) < 0
        ):
            raise InvalidInputError(f"reuse_references_within must be (degrees, metres) >= 0, "
                                    f"got {self.reuse_references_within}")


@dataclass
class GeneratedFrame:
    frame_index: int  # index in the world's history
    clip_id: int
    c2w: np.ndarray  # [4, 4] the commanded pose (the history keeps the refined one)
    rgb: np.ndarray  # [H, W, 3] uint8
    depth_m: np.ndarray | None  # [H, W] float32 when the generator gave depth


@dataclass
class ClipStats:
    clip_id: int
    frames: int
    references: list[int]  # history frame indices retrieved
    generate_s: float
    # seconds the caller waited for the memory update after the last frame (``commit_beside_next_clip``: finishing
    # the previous clip's update, which ran beside this clip, and starting this one's)
    update_s: float
    memory_points: int  # points in the memory the next clip reads


@dataclass
class TargetView:
    """The memory seen from one target pose before the clip: the render (with point ids) and its voxel set.

    One render per target pose serves the scene projection, retrieval's target voxel sets, the memory update (for
    the frames it integrates before it changes the memory) and the history's voxel sets of the frames it does not
    integrate. Rendering each of these separately cost ~2.75 renders per frame."""

    render: RenderResult  # rgb [H, W, 3], depth_m [H, W], valid [H, W], point_ids [H, W] (current until the update)
    voxel_keys: np.ndarray | None  # [V] int64 distinct memory keys it shows (its view-specific voxel set); None
    # until needed: keyframes get it at once, retrieval asks for its sampled targets (all before the update)


class _TargetViews(Sequence):
    """A clip's ``TargetView`` per target pose, each rendered when first read (``Engine._target_views``), and
    copied into the request's scene projection then (``fill``). A generator with ``projection_on_demand`` asks
    for each target just before its frame (``ClipRequest.need_targets``); retrieval reads the targets it samples;
    the memory update reads them all, before it changes the memory. Nothing changes the memory between a clip's
    start and its update, so a render made later equals the one made before the first frame."""

    def __init__(self, engine: "Engine", poses: np.ndarray, memory, first_index: int) -> None:
        self._engine, self._poses = engine, poses
        self.memory = memory  # what they are rendered from (the engine's ``frame_memory`` when the clip began)
        self.first_index = first_index  # the global frame index of the first target
        self._views: list[TargetView | None] = [None] * len(poses)
        self.fill = None  # (i, TargetView) -> None: set by ``Engine._project``

    def __len__(self) -> int:
        return len(self._views)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self._views))[i]
        view = self._views[i]
        if view is None:
            view = self._views[i] = self._engine._target_view(self.memory, self._poses[i], self.first_index + i)
            if self.fill is not None:
                self.fill(i, view)
        return view

    def render(self, t: int | None = None) -> None:
        """Render target ``t`` (None: every target) unless done."""
        for i in range(len(self)) if t is None else (t,):
            self[i]


class _ViewKeys(Sequence):
    """The target views' voxel sets for retrieval, decoded from their renders for the targets it samples."""

    def __init__(self, memory, views: _TargetViews) -> None:
        self._memory, self._views = memory, views

    def __len__(self) -> int:
        return len(self._views)

    def __getitem__(self, i):  # type: ignore[override]
        view = self._views[i]
        if view.voxel_keys is None:
            view.voxel_keys = self._memory.render_voxel_keys(view.render)
        return view.voxel_keys


class _HistoryReference(ReferenceFrame):
    """A ``ReferenceFrame`` whose image is decoded from the history when first read: a generator may read only
    some of the K references' images (the geometric one warps the one or two nearest in pose), and decoding the
    others cost ~0.1 ms each a one-frame clip. Pickles (and ``dataclasses.replace``s) as a plain one."""

    def __init__(self, frame_index: int, rgb=None, c2w=None, intrinsics=None, score: float = 0.0, depth_m=None,
                 load_rgb=None) -> None:
        self._load_rgb = load_rgb
        super().__init__(frame_index, rgb, c2w, intrinsics, score, depth_m)

    @property  # type: ignore[override]
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = self._load_rgb()
        return self._rgb

    @rgb.setter
    def rgb(self, value) -> None:
        self._rgb = value

    def __reduce__(self):
        return ReferenceFrame, (self.frame_index, self.rgb, self.c2w, self.intrinsics, self.score, self.depth_m)


@dataclass
class _PendingCommit:
    """A clip whose memory update runs on the engine's commit thread (``EngineConfig.commit_beside_next_clip``)."""

    job: Future  # -> (refined poses [N, 4, 4] world frame, [N] ``FrameUpdate`` or None per frame)
    poses: np.ndarray  # [N, 4, 4] commanded, world frame
    result: ClipResult
    views: _TargetViews  # rendered from the frozen view the clip read


class _FrameMemoryCollider(MemoryCollider):
    """``MemoryCollider`` over what the engine's frames read (``Engine.frame_memory``), at each call: while an
    update runs beside the clips, a session's moves collide with the frozen view its next frames show."""

    def __init__(self, engine: "Engine", config: CollisionConfig) -> None:
        self._engine = engine
        self.config = config

    @property
    def memory(self):  # type: ignore[override]
        return self._engine.frame_memory


class Engine:
    """Drives one world with one generator. Not thread-safe: one caller at a time (the server serialises); with
    ``commit_beside_next_clip`` the engine runs a clip's memory update on a thread of its own, and ``settle``
    finishes it."""

    def __init__(self, world: World, generator: Generator, config: EngineConfig = EngineConfig()) -> None:
        self.world = world
        self.generator = generator
        self.capabilities = capabilities_of(generator)  # declared by the generator, never probed for
        self.config = config
        self.clips_done = 0
        self.last_stats: ClipStats | None = None
        # (last target c2w, scores, clips_done when retrieved)
        self._last_retrieval: tuple[np.ndarray, dict[int, float], int] | None = None
        self._observed: list[ReferenceFrame] | None = None
        # the history's camera positions as k-d trees made once (derived: synced from the history each clip)
        self._visited = VisitedPositions()
        # commit_beside_next_clip: the update in flight, the view of the memory the frames read meanwhile (else the
        # memory itself), and the thread the updates run on
        self._pending: _PendingCommit | None = None
        self._frame_memory = world.memory
        self._committer: ThreadPoolExecutor | None = None
        # (first frame index, camera positions [P, 3] world frame, open boxes) of the clips whose free-space removals
        # are still to make
        self._removals: list[tuple[int, np.ndarray, tuple]] = []
        # (the generator's rule: ``EngineConfig.commit_beside_next_clip``)
        self.commits_beside = config.commit_beside_next_clip and commits_beside_next_clip(generator)
        # ... then every frame's pose, those of an update in flight included, append-only: the history's poses are
        # the commanded ones (exact poses), and a read-only view of one growing buffer lets the fill's path summary
        # read only the poses added since the last clip (``PathSummary.sync``), as it does the history's
        self._path: GrowingRows | None = None
        if self.commits_beside:
            self._path = GrowingRows((4, 4), np.float64)
            self._path.extend(world.history.poses())
        if self.config.use_scene_projection:  # (without it the generator is handed no memory: nothing to derive)
            prepare_generator(world, generator, self._observed_views())
        _load_save_kernels()
        _load_update_kernels()

    def collider(self):
        """The world's collider (``world.collision``) for a camera walked through this engine. Invented points block
        at the engine's free radius: it removes invented points nearer than that to every pose after a clip, so a
        body touching an invented wall closer would see the wall cut away around it and walk through the hole."""
        return _FrameMemoryCollider(self, CollisionConfig(invented_clearance_m=self.config.free_radius_m))

    @property
    def frame_memory(self) -> SpatialMemory:
        """The memory as the next frames read it: while a clip's update runs beside them, a frozen view of the memory
        as it was before that update began; otherwise the memory itself."""
        return self._frame_memory

    @property
    def next_frame_index(self) -> int:
        """The global index of the next frame made: the history's length plus the frames of an update in flight."""
        pending = self._pending
        return len(self.world.history) + (0 if pending is None else len(pending.poses))

    def _poses(self) -> np.ndarray:
        """``[F, 4, 4]`` world frame, read-only: every frame's pose so far, those of an update in flight included."""
        return self.world.history.poses() if self._path is None else self._path.view

    # ---- conditioning ------------------------------------------------------------------------------------

    def _target_view(self, memory: SpatialMemory, c2w: np.ndarray, frame_index: int) -> TargetView:
        """``memory`` rendered at ``c2w`` [4, 4] (world frame), for the frame ``frame_index``."""
        render = memory.render(self.world.intrinsics, c2w, return_point_ids=True)
        keys = memory.render_voxel_keys(render) if self._is_keyframe(frame_index) else None
        return TargetView(render, keys)

    def _is_keyframe(self, frame_index: int) -> bool:
        """Whether the memory update integrates frame ``frame_index`` and retrieval indexes its voxel set
        (``EngineConfig.keyframe_stride``; the update applies the same rule as its ``integrate_stride``)."""
        return frame_index % self.config.keyframe_stride == 0

    def _project(self, preceding_c2w: np.ndarray, views: _TargetViews) -> SceneProjection:
        """The scene projection video of preceding + target poses; empty (all invalid) where it is switched off
        (``use_scene_projection``, the Table 4 ablation) or where the generator does not read it. The target part
        is filled in as ``views`` renders each target (all at once here unless the generator asks for them)."""
        K = self.world.intrinsics
        m, n = len(preceding_c2w), len(views)
        # calloc'd: pages a generator never reads (a blank preceding part, an ablation) are never touched
        proj = SceneProjection(np.zeros((m + n, K.height, K.width, 3), np.uint8),
                               np.zeros((m + n, K.height, K.width), np.float32), np.zeros((m + n, K.height, K.width), bool))
        if not self.config.use_scene_projection:
            return proj
        memory = views.memory
        if m and self.capabilities.uses_preceding_clip:
            preceding = memory.render_trajectory(K, preceding_c2w)
            proj.rgb[:m], proj.depth_m[:m], proj.valid[:m] = preceding.rgb, preceding.depth_m, preceding.valid
        if memory.has_provisional:  # where the memory shows a coarse fill the generator may replace
            proj.provisional = np.zeros((m + n, K.height, K.width), bool)
        if self.capabilities.reads_observed:  # the target renders' observed pixels (the preceding part: none)
            proj.observed = np.zeros((m + n, K.height, K.width), bool)

        def fill(i: int, view: TargetView) -> None:
            r = view.render
            proj.rgb[m + i], proj.depth_m[m + i], proj.valid[m + i] = r.rgb, r.depth_m, r.valid
            if proj.provisional is not None:
                memory.render_shows(r, INVENTED_PROVISIONAL, out=proj.provisional[m + i])
            if proj.observed is not None:
                memory.render_shows(r, OBSERVED, out=proj.observed[m + i])

        views.fill = fill
        return proj

    def _references(self, target_c2w: np.ndarray, views: _TargetViews, exclude_from: int) -> list[ReferenceFrame]:
        history = self.world.history
        k = self.config.num_references
        if not self.config.use_references or k == 0 or exclude_from <= 0:
            return []
        scores = self._retrieved(target_c2w, views, exclude_from)  # {frame: score}, in target order
        chosen = list(scores)
        if self.config.fill_references_by_pose:
            candidates = history.poses()[:exclude_from]
            to_end = _pose_distance(candidates, target_c2w[-1])  # [C], computed once for both uses below
            by_pose = _nearest_pose_frames(candidates, target_c2w, k, exclude=set(chosen), to_last=to_end)
            end = int(np.argmin(to_end))
            if end not in chosen and len(chosen) >= k:  # the view nearest to where the clip ends always gets a slot
                chosen.remove(min(chosen, key=scores.get))  # the weakest retrieved one (by_pose starts with `end`)
            chosen += by_pose[: k - len(chosen)]
        return [
            _HistoryReference(
                frame_index=i,
                # frame 0: the lossless original
                load_rgb=self._first_frame if i == 0 else (lambda i=i: history.get_rgb(i)),
                c2w=history.get_pose(i),
                intrinsics=history.intrinsics(i),
                score=scores.get(i, 0.0),
                depth_m=history.get_depth(i),
            )
            for i in chosen
        ]

    def _retrieved(self, target_c2w: np.ndarray, views: _TargetViews, exclude_from: int) -> dict[int, float]:
        """Algorithm 1 (or the official variant) for this clip, or the last clip's result when
        ``reuse_references_within`` or ``reuse_references_clips`` allows."""
        reuse, last = self.config.reuse_references_within, self._last_retrieval
        if last is not None:
            last_c2w, last_scores, last_clip = last
            if (self.clips_done - last_clip <= self.config.reuse_references_clips or (
                    reuse is not None and rotation_angle_deg(last_c2w, target_c2w[-1]) <= reuse[0]
                    and translation_distance_m(last_c2w, target_c2w[-1]) <= reuse[1])):
                return {i: s for i, s in last_scores.items() if i < exclude_from}
        found = retrieve_reference_frames(
            self.world.history,
            target_c2w,
            self.world.intrinsics,
            _ViewKeys(views.memory, views),
            k=self.config.num_references,
            eps=self.config.retrieval_eps,
            method=self.config.retrieval_method,
            candidates=range(0, exclude_from),
        )
        scores = {r.frame_index: float(r.score) for r in found}
        self._last_retrieval = (target_c2w[-1].copy(), scores, self.clips_done)
        return scores

    def _observed_views(self) -> list[ReferenceFrame]:
        if self._observed is None:
            self._observed = observed_views(self.world)
        return self._observed

    def _world_up(self) -> np.ndarray:
        return world_up(self.world)

    def _first_frame(self) -> np.ndarray:
        return first_frame(self.world)

    def build_request(self, target_c2w: np.ndarray, prompt: str, seed: int) -> ClipRequest:
        """The conditioning of the next clip (paper Fig. 2c): projection, preceding frames, references, text."""
        request = self._prepare(validate_trajectory(target_c2w, "target_c2w"), prompt, seed)[0]
        request.need_targets()  # complete, whoever reads it
        return request

    def _prepare(self, target_c2w: np.ndarray, prompt: str, seed: int,
                 spare_core: bool = False) -> tuple[ClipRequest, _TargetViews]:
        history = self.world.history
        n_frames = self.next_frame_index  # (frames of an update in flight are not in the history yet)
        first_clip = n_frames <= 1  # only the initial image so far: the TI2V image-conditioned first clip
        m = 0 if first_clip else min(self.config.clip.preceding_frames, n_frames)
        prec_idx = list(range(n_frames - m, n_frames))
        K = self.world.intrinsics
        if m and self.capabilities.uses_preceding_clip:  # (never with an update in flight: all in the history)
            preceding = np.stack([history.get_rgb(i) for i in prec_idx])
        else:  # blank (calloc'd, never touched): nothing reads it
            preceding = np.zeros((m, K.height, K.width, 3), np.uint8)
        poses = self._poses()
        preceding_c2w = poses[prec_idx] if m else np.zeros((0, 4, 4))
        views = _TargetViews(self, target_c2w, self.frame_memory, n_frames)
        projection = self._project(preceding_c2w, views)
        on_demand = self.capabilities.projection_on_demand
        if not on_demand:
            views.render()  # every target before the generator sees the request
        request = ClipRequest(
            clip_id=self.clips_done,
            target_c2w=target_c2w,
            intrinsics=self.world.intrinsics,
            projection=projection,
            preceding_frames=preceding,
            preceding_c2w=preceding_c2w,
            references=self._references(target_c2w, views, exclude_from=min(len(history), n_frames - m)),
            prompt=prompt,
            seed=seed,
            first_frame=self._first_frame() if first_clip and n_frames else None,
            world_up=self._world_up(),
            # the memory and the views it began from are what the scene projection is made of: the Table 4 ablation
            # withholds them too (a fill that read them would draw the remembered scene without its projection)
            memory=views.memory if self.config.use_scene_projection else None,
            observed_views=self._observed_views() if self.config.use_scene_projection else [],
            visited_c2w=poses,
            layout_prior=self.world.layout_prior,
            render_targets=views.render if on_demand else None,
            spare_core=spare_core,
        )
        return request, views

    # ---- generation --------------------------------------------------------------------------------------

    def _check_view(self, view: GeneratedView, i: int) -> None:
        K = self.world.intrinsics
        shape = (K.height, K.width)
        if view.rgb.shape != shape + (3,) or view.rgb.dtype != np.uint8:
            raise RuntimeError(f"generator {self.generator.name} returned frame {i} as {view.rgb.dtype} "
                               f"{view.rgb.shape}, expected uint8 {shape + (3,)}")
        for name in ("depth_m", "dynamic", "provisional_px"):
            arr = getattr(view, name)
            if arr is not None and arr.shape != shape:
                raise RuntimeError(f"generator {self.generator.name} returned {name} {arr.shape} for frame {i}, "
                                   f"expected {shape}")

    def _views(self, request: ClipRequest) -> Iterator[GeneratedView]:
        """The generator's frames one at a time (``generate_frames`` when it streams, else its clip's frames)."""
        n = request.num_target
        if self.capabilities.streams_frames:
            count = 0
            for view in self.generator.generate_frames(request):
                if count == n:
                    raise RuntimeError(f"generator {self.generator.name} streamed more than {n} frames")
                self._check_view(view, count)
                count += 1
                yield view
            if count != n:
                raise RuntimeError(f"generator {self.generator.name} streamed {count} frames, expected {n}")
            return
        result = self.generator.generate(request)
        if result.frames.shape[:1] != (n,):
            raise RuntimeError(f"generator {self.generator.name} returned frames {result.frames.shape}, "
                               f"expected {n} frames")
        views = [GeneratedView(result.frames[i], None if result.depth_m is None else result.depth_m[i],
                               None if result.dynamic is None else result.dynamic[i],
                               # what of it is a coarse fill (the whole frame, some pixels) goes on to the update
                               result.provisional is not None and bool(result.provisional[i]),
                               None if result.provisional_px is None else result.provisional_px[i],
                               result.open_space if i == 0 else ())  # the clip's, once
                 for i in range(n)]
        for i, view in enumerate(views):  # all checked before the first is shown
            self._check_view(view, i)
        yield from views

    def generate_clip(self, target_c2w: np.ndarray, prompt: str | None = None, seed: int = 0,
                      spare_core: bool = True) -> Iterator[GeneratedFrame]:
        """Generate one clip for ``target_c2w`` ``[N, 4, 4]``; each frame is yielded as soon as the generator has
        made it (all before the memory update runs, which the caller's last ``next`` pulls; where the engine
        ``commits_beside``, that pull finishes the previous clip's update and starts this one's). ``spare_core``:
        whether the caller's process has a core to spare beside this clip; False (a server whose other worlds are
        in play too, ``server.host``): this clip's update is done when the pull returns, and the generator's
        request says no core is spare (``ClipRequest.spare_core``: no speculative work beside the clip)."""
        poses = validate_trajectory(target_c2w, "target_c2w")
        prompt = self.world.info.prompt if prompt is None else prompt
        clip_id = self.clips_done
        t0 = time.perf_counter()
        request, views = self._prepare(poses, prompt, seed=_clip_seed(seed, clip_id), spare_core=spare_core)
        gen_s = time.perf_counter() - t0  # generation time excludes the time the caller holds each frame
        first_index = views.first_index
        made: list[GeneratedView] = []
        stream = self._views(request)
        while True:
            t = time.perf_counter()
            view = next(stream, None)
            gen_s += time.perf_counter() - t
            if view is None:
                break
            made.append(view)
            yield GeneratedFrame(first_index + len(made) - 1, clip_id, poses[len(made) - 1], view.rgb, view.depth_m)
        t1 = time.perf_counter()
        result = clip_result(made)
        views.render()  # any target the generator did not ask for, from what the clip read
        self._join()  # (the previous clip's update, when it ran beside this clip)
        # the clip's renders show the memory as it is now unless that update changed it since they were made
        current = views.memory.version == self.world.memory.version
        if spare_core and self.commits_beside:
            self.world.memory.reindex_if_due()  # (a re-sort in place, held back while a view was read, runs here)
            self._launch_commit(poses, result, views, current)
        else:
            self._add_history(poses, result, views, *self._commit_memory(
                poses, result, first_index, views if current else None, defer_removals=False))
        if self._path is not None:
            self._path.extend(poses)
        self.clips_done += 1
        self.world.current_c2w = poses[-1].copy()
        self.last_stats = ClipStats(
            clip_id, len(poses), [r.frame_index for r in request.references], gen_s,
            time.perf_counter() - t1, self.frame_memory.num_points,
        )

    def settle(self) -> None:
        """Finish the memory update running beside the clips, if any, add its clip's frames to the history and make
        the removals it left for the next keyframe: afterwards the memory and the history hold every clip made.
        Whatever reads or changes the world outside the clips (a save, an edit, a render, the end of a session)
        settles first (``server.host``)."""
        if self._join():
            self._remove_from_free_space()

    def _join(self) -> bool:
        """Finish the update in flight and add its clip's frames to the history; False when there was none."""
        pending, self._pending = self._pending, None
        if pending is None:
            return False
        memory = self.world.memory
        try:
            refined, updates = pending.job.result()
        finally:
            self._frame_memory = memory
            memory.hold_in_place_resorts = False
        self._add_history(pending.poses, pending.result, pending.views, refined, updates)
        return True

    def _launch_commit(self, poses: np.ndarray, result: ClipResult, views: _TargetViews, current: bool) -> None:
        """Start the clip's memory update on the commit thread (``current``: its renders show the memory as it is
        now); the next clip reads a frozen view of the memory as it is now (before the update's first write)."""
        memory = self.world.memory
        view = memory.frozen_view()
        memory.hold_in_place_resorts = True
        self._frame_memory = view
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="world-commit")

        def commit():
            numba.set_num_threads(1)  # (the frames' kernels beside it have the cores: ``server.host``)
            out = self._commit_memory(poses, result, views.first_index, views if current else None,
                                      defer_removals=True)
            # a re-sort due now is adopted here if prepared (new arrays: the view keeps its own), not at the join on
            # the frames' thread (O(rows changed since it began)); one in place waits for the join
            memory.reindex_if_due()
            return out

        self._pending = _PendingCommit(self._committer.submit(commit), poses, result, views)

    def _commit_memory(self, poses: np.ndarray, result: ClipResult, first_index: int, views: _TargetViews | None,
                       defer_removals: bool) -> tuple[np.ndarray, list]:
        """The memory update of a clip whose first frame is ``first_index`` (paper Sec. 3.2) and the removals of
        invented points from free space: (refined poses [N, 4, 4], each frame's ``FrameUpdate`` or None). ``views``:
        the clip's renders when they show the memory as it is now (the update reuses them), else None (it renders).
        ``defer_removals``: a clip without a keyframe leaves its removals to the next keyframe's update. The history
        holds the frames before the clip's (no more)."""
        world = self.world
        memory = world.memory
        refined = poses
        updates = [None] * len(poses)
        if self.config.update_memory:
            update_cfg = replace(self.config.update, integrate_stride=self.config.keyframe_stride)
            if self.capabilities.exact_poses:
                # The generator drew each frame from the memory at exactly the commanded pose (the geometric
                # one does): there is no drift to refine, and refinement would cost more than the frame did.
                update_cfg = replace(update_cfg, refine_pose=False)
            provisional = np.zeros(len(poses), bool) if result.provisional is None else result.provisional
            report = update_memory(
                memory, result.frames, poses, world.intrinsics, range(first_index, first_index + len(poses)),
                generator_depth=result.depth_m, dynamic=result.dynamic, config=update_cfg,
                memory_renders=None if views is None else [v.render for v in views],
                memory_render_keys=None if views is None else [v.voxel_keys for v in views],
                provenance=np.where(provisional, INVENTED_PROVISIONAL, INVENTED_FINAL),
                provisional_px=result.provisional_px,
            )
            refined = report.poses_refined
            updates = report.frames
            if not provisional.all() and memory.has_provisional:
                # the generator is final again: the coarse fill goes, and the next clip shows (and keeps) the
                # final content there (this clip's final frames already painted over it)
                memory.drop_provisional()
            self._removals.append((first_index, poses[:, :3, 3], result.open_space))
            if not defer_removals or any(self._is_keyframe(first_index + i) for i in range(len(poses))):
                self._remove_from_free_space()
            # else (an update beside the next clip, no keyframe) they wait for the next keyframe's update: the next
            # clip's renders were made from the memory before this update, and an update that changed nothing may
            # use them instead of rendering again (docs/BENCHMARKS.md, session 25)
        return refined, updates

    def _remove_from_free_space(self) -> None:
        """The removals of invented points the clips since the last ones call for (``_removals``)."""
        memory, removals = self.world.memory, self._removals
        if not removals:
            return
        self._removals = []
        opened = [box for _, _, boxes in removals for box in boxes]
        if opened:
            # what the frames showed as open (a doorway in an invented wall) is open in the memory too, beside
            # the camera as well as in view: otherwise the frame shows a doorway whose invented jambs stop the body
            memory.remove_invented_in(opened)
        if self.config.free_radius_m > 0:
            # free space: where the camera has been, nothing invented stands (a wall invented across a doorway
            # the camera then walks through is taken away); observed points are never removed
            # ... and what these clips invented near any earlier pose (one compaction for both)
            positions = np.concatenate([p for _, p, _ in removals])
            since = removals[0][0]  # the first of these clips' frames
            visited = self._visited.sync(self.world.history.poses()[:since, :3, 3])
            memory.remove_invented_near_groups([(positions, None), (visited, since)], self.config.free_radius_m)

    def _add_history(self, poses: np.ndarray, result: ClipResult, views: _TargetViews, refined: np.ndarray,
                     updates: list) -> None:
        """The clip's frames into the history, each with its view-specific voxel set (the update's, or the one the
        clip rendered) and depth."""
        world = self.world
        first_index = views.first_index
        for i in range(len(poses)):
            done = updates[i]
            if done is not None and done.voxel_keys is not None:  # the update already knows what this view sees
                keys, depth = done.voxel_keys, done.depth_m
            else:  # not integrated (its pose was not refined either): the memory as the clip saw it at this pose
                keys, depth = views[i].voxel_keys, views[i].render.depth_m
                if not self._is_keyframe(first_index + i):
                    keys = np.zeros(0, np.int64)  # not a keyframe: not indexed for retrieval
            if result.depth_m is not None:
                depth = result.depth_m[i]
            if result.dynamic is not None:
                depth = np.where(result.dynamic[i], 0.0, depth).astype(np.float32)
            if result.provisional_px is not None and result.provisional_px[i].any():
                # a coarse fill's pixels: no depth, so no later frame warps them in as a reference
                depth = np.where(result.provisional_px[i], 0.0, depth).astype(np.float32)
            if result.provisional is not None and result.provisional[i]:
                # a whole frame of coarse fill (shown while the generator's state is prepared) is kept as an image
                # only: no retrieval candidate and no depth, so no later frame warps it in (what the memory showed
                # in it may itself be an earlier coarse frame's). Retrieved 140 frames later, the first frames'
                # stand-in (a flat colour over a guessed depth) was warped in as a panel beside a photo's edge
                # (official case 3, docs/RESULTS.md, "Session 35")
                keys = np.zeros(0, np.int64)
                depth = np.zeros_like(depth, dtype=np.float32)
            world.history.add(result.frames[i], refined[i], world.intrinsics, keys, depth_m=depth)

    def generate(self, c2w: np.ndarray, prompt: str | None = None, seed: int = 0,
                 spare_core: bool = True) -> Iterator[GeneratedFrame]:
        """Generate frames for a whole trajectory ``[N, 4, 4]``, chunked into clips by ``config.clip``
        (``spare_core``: as ``generate_clip``'s, for every clip).

        A fresh world (history = the initial image only) starts with the first-clip length; a world with
        generated frames continues with later-clip rules (preceding frames from its history).
        """
        poses = validate_trajectory(c2w, "c2w")
        clip = self.config.clip
        if len(self.world.history) > 1:  # continuing: every clip is a "later" clip
            clip = ClipConfig(clip.new_frames_per_clip, clip.clip_frames, clip.preceding_frames)
        for span in chunk_clips(len(poses), clip):
            yield from self.generate_clip(poses[span.start : span.stop], prompt, seed, spare_core)


def first_frame(world: World) -> np.ndarray:
    """The world's first image, lossless where the world keeps it."""
    return world.first_image if world.first_image is not None else world.history.get_rgb(0)


def world_up(world: World) -> np.ndarray:
    return world.camera_up  # docs/DESIGN.md: up = -y of the first camera


def observed_views(world: World) -> list[ReferenceFrame]:
    """The views of the real scene: the first image with its depth (every later frame is generated)."""
    if not len(world.history):
        return []
    depth = world.history.get_depth(0)
    if depth is None:
        return []
    return [ReferenceFrame(0, first_frame(world), world.origin_c2w.copy(), world.history.intrinsics(0), depth_m=depth)]


def prepare_generator(world: World, generator: Generator, views: list[ReferenceFrame] | None = None) -> None:
    """Let ``generator`` start deriving its per-world state (``Generator.prepare_world``, optional) for ``world``:
    engines call it when they open a world, a server when it creates one (so a Play soon after finds it ready)."""
    if capabilities_of(generator).prepares_worlds:
        generator.prepare_world(world.memory, observed_views(world) if views is None else views, world_up(world),
                                layout_prior=world.layout_prior)


def commits_beside_next_clip(generator: Generator) -> bool:
    """Whether ``generator`` allows ``EngineConfig.commit_beside_next_clip``: the next clip is made before the
    history holds this one's frames and from the memory before this one's update, so the generator must read no
    preceding frames, and its frames' poses must be the commanded ones (no refinement to wait for)."""
    caps = capabilities_of(generator)
    return not caps.uses_preceding_clip and caps.exact_poses


@lru_cache(maxsize=1)
def _load_save_kernels() -> Future:
    """Load the kernels a world's first save runs (``history.load_save_kernels``) on a background thread, once per
    process, so that save does not load them on the world's thread; returns the job (tests wait for it)."""
    return background("kernel-loads").submit(load_save_kernels)


@lru_cache(maxsize=1)
def _load_update_kernels() -> Future:
    """``update.load_update_kernels`` on the same background thread, once per process; returns the job."""
    return background("kernel-loads").submit(load_update_kernels)


def _pose_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Degrees of relative rotation + 10 x metres between camera centres, for ``a`` ``[N, 4, 4]`` vs ``b`` ``[4, 4]``."""
    cos = (np.einsum("nij,ij->n", a[:, :3, :3], b[:3, :3]) - 1.0) / 2.0  # trace(A^T B) = sum(A * B)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return angle + 10.0 * np.linalg.norm(a[:, :3, 3] - b[:3, 3], axis=1)


def _nearest_pose_frames(candidates_c2w: np.ndarray, target_c2w: np.ndarray, k: int, exclude: set[int],
                         to_last: np.ndarray | None = None) -> list[int]:
    """History frames nearest in pose to the last target (first in the list) and to every k-th target (then by
    distance), distinct, none from ``exclude``. ``to_last``: ``_pose_distance`` to the last target if known."""
    if len(candidates_c2w) == 0:
        return []
    last = len(target_c2w) - 1
    out: list[int] = []
    d_last = _pose_distance(candidates_c2w, target_c2w[last]) if to_last is None else to_last
    if int(np.argmin(d_last)) not in exclude:
        out.append(int(np.argmin(d_last)))
    best: dict[int, float] = {}
    for t in range(0, len(target_c2w), max(k, 1)):
        d = d_last if t == last else _pose_distance(candidates_c2w, target_c2w[t])  # a one-frame clip: t = last
        i = int(np.argmin(d))
        if i not in exclude and i not in out:
            best[i] = min(best.get(i, np.inf), float(d[i]))
    return out + sorted(best, key=best.get)


def _clip_seed(seed: int, clip_id: int) -> int:
    """A distinct, reproducible seed per clip (same world + same actions + same seed = same frames)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, clip_id]).generate_state(1)[0])
