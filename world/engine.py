"""The ``Engine``: a world's memory and history plus a ``Generator`` -> "frames for these poses".

One Play step, one ``Generate`` call, the CLI demo, the evaluation harness and the in-process Gymnasium env all
drive this one loop (``DESIGN.md``, "One Play step"):

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
from dataclasses import dataclass, field, replace

import numpy as np

from world.actions import ClipConfig, chunk_clips
from world.camera import validate_trajectory
from world.errors import InvalidInputError
from world.generator import ClipRequest, ClipResult, Generator, ReferenceFrame, SceneProjection
from world.retrieval import retrieve_reference_frames
from world.state import World
from world.update import UpdateConfig, update_memory


@dataclass(frozen=True)
class EngineConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)
    num_references: int = 7  # K, paper default (Table 5: no gain beyond 7)
    retrieval_method: str = "paper"  # "paper" (Algorithm 1: IoU of voxel sets) or "official" (shared points + Hungarian)
    retrieval_eps: float = 0.0  # Algorithm 1's threshold on the IoU
    use_scene_projection: bool = True  # Table 4 ablation: False hands the generator an all-invalid projection
    use_references: bool = True  # Table 4 ablation
    update_memory: bool = True  # False: the memory stays as created (a "no memory update" baseline)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    # Departure from Algorithm 1: the history frame nearest in pose to the clip's last target always gets a slot
    # (replacing the weakest retrieved one when all K are taken), and free slots go to the frames nearest to the
    # sampled targets (pose retrieval, as WorldMem and VMem do). Stored view-specific voxel sets are computed
    # against the memory of their time, so an exact revisit of an early view can score below later, denser views;
    # the pose catches it, and where a clip ends is what the next clip continues from.
    fill_references_by_pose: bool = True

    def __post_init__(self) -> None:
        if self.num_references < 0:
            raise InvalidInputError(f"num_references must be >= 0, got {self.num_references}")


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
    update_s: float
    memory_points: int


class _TargetKeys(Sequence):
    """The view-specific voxel sets of the target poses, rendered only for the poses retrieval looks at."""

    def __init__(self, world: World, poses: np.ndarray) -> None:
        self._world, self._poses, self._cache = world, poses, {}

    def __len__(self) -> int:
        return len(self._poses)

    def __getitem__(self, i):  # type: ignore[override]
        if i not in self._cache:
            self._cache[i] = self._world.memory.visible_voxel_keys(self._world.intrinsics, self._poses[i])
        return self._cache[i]


class Engine:
    """Drives one world with one generator. Not thread-safe: one caller at a time (the server serialises)."""

    def __init__(self, world: World, generator: Generator, config: EngineConfig = EngineConfig()) -> None:
        self.world = world
        self.generator = generator
        self.config = config
        self.clips_done = 0
        self.last_stats: ClipStats | None = None

    # ---- conditioning ------------------------------------------------------------------------------------

    def _project(self, poses: np.ndarray) -> SceneProjection:
        K = self.world.intrinsics
        if not self.config.use_scene_projection or len(poses) == 0:
            t = len(poses)
            return SceneProjection(
                np.zeros((t, K.height, K.width, 3), np.uint8),
                np.zeros((t, K.height, K.width), np.float32),
                np.zeros((t, K.height, K.width), bool),
            )
        return self.world.memory.render_trajectory(K, poses)

    def _references(self, target_c2w: np.ndarray, exclude_from: int) -> list[ReferenceFrame]:
        history = self.world.history
        k = self.config.num_references
        if not self.config.use_references or k == 0 or exclude_from <= 0:
            return []
        found = retrieve_reference_frames(
            history,
            target_c2w,
            self.world.intrinsics,
            _TargetKeys(self.world, target_c2w),
            k=k,
            eps=self.config.retrieval_eps,
            method=self.config.retrieval_method,
            candidates=range(0, exclude_from),
        )
        chosen = [r.frame_index for r in found]
        if self.config.fill_references_by_pose:
            by_pose = _nearest_pose_frames(history.poses()[:exclude_from], target_c2w, k, exclude=set(chosen))
            if by_pose and len(chosen) >= k:  # the view nearest to where the clip ends always gets a slot
                weakest = min(found, key=lambda r: r.score).frame_index
                chosen = [i for i in chosen if i != weakest]
            chosen += by_pose[: k - len(chosen)]
        scores = {r.frame_index: float(r.score) for r in found}
        return [
            ReferenceFrame(
                frame_index=i,
                rgb=self._first_frame() if i == 0 else history.get_rgb(i),  # frame 0: the lossless original
                c2w=history.get_pose(i),
                intrinsics=history.intrinsics(i),
                score=scores.get(i, 0.0),
                depth_m=history.get_depth(i),
            )
            for i in chosen
        ]

    def _first_frame(self) -> np.ndarray:
        return self.world.first_image if self.world.first_image is not None else self.world.history.get_rgb(0)

    def build_request(self, target_c2w: np.ndarray, prompt: str, seed: int) -> ClipRequest:
        """The conditioning of the next clip (paper Fig. 2c): projection, preceding frames, references, text."""
        history = self.world.history
        n_hist = len(history)
        first_clip = n_hist <= 1  # only the initial image so far: the TI2V image-conditioned first clip
        m = 0 if first_clip else min(self.config.clip.preceding_frames, n_hist)
        prec_idx = list(range(n_hist - m, n_hist))
        preceding = (
            np.stack([history.get_rgb(i) for i in prec_idx])
            if m
            else np.zeros((0, self.world.intrinsics.height, self.world.intrinsics.width, 3), np.uint8)
        )
        preceding_c2w = history.poses()[prec_idx] if m else np.zeros((0, 4, 4))
        projection = self._project(np.concatenate([preceding_c2w, target_c2w]) if m else target_c2w)
        return ClipRequest(
            clip_id=self.clips_done,
            target_c2w=target_c2w,
            intrinsics=self.world.intrinsics,
            projection=projection,
            preceding_frames=preceding,
            preceding_c2w=preceding_c2w,
            references=self._references(target_c2w, exclude_from=n_hist - m),
            prompt=prompt,
            seed=seed,
            first_frame=self._first_frame() if first_clip and n_hist else None,
            world_up=-self.world.origin_c2w[:3, 1],  # DESIGN.md: up = -y of the first camera
        )

    # ---- generation --------------------------------------------------------------------------------------

    def _check_result(self, result: ClipResult, n: int) -> None:
        K = self.world.intrinsics
        shape = (n, K.height, K.width)
        if result.frames.shape != shape + (3,) or result.frames.dtype != np.uint8:
            raise RuntimeError(f"generator {self.generator.name} returned frames {result.frames.dtype} "
                               f"{result.frames.shape}, expected uint8 {shape + (3,)}")
        for name in ("depth_m", "dynamic"):
            arr = getattr(result, name)
            if arr is not None and arr.shape != shape:
                raise RuntimeError(f"generator {self.generator.name} returned {name} {arr.shape}, expected {shape}")

    def generate_clip(self, target_c2w: np.ndarray, prompt: str | None = None, seed: int = 0) -> Iterator[GeneratedFrame]:
        """Generate one clip for ``target_c2w`` ``[N, 4, 4]``; frames are yielded before the memory update runs."""
        poses = validate_trajectory(target_c2w, "target_c2w")
        prompt = self.world.info.prompt if prompt is None else prompt
        clip_id = self.clips_done
        t0 = time.perf_counter()
        request = self.build_request(poses, prompt, seed=_clip_seed(seed, clip_id))
        result = self.generator.generate(request)
        self._check_result(result, len(poses))
        gen_s = time.perf_counter() - t0
        first_index = len(self.world.history)
        for i in range(len(poses)):
            depth = None if result.depth_m is None else result.depth_m[i]
            yield GeneratedFrame(first_index + i, clip_id, poses[i], result.frames[i], depth)
        t1 = time.perf_counter()
        self._commit(poses, result)
        self.clips_done += 1
        self.world.current_c2w = poses[-1].copy()
        self.last_stats = ClipStats(
            clip_id, len(poses), [r.frame_index for r in request.references], gen_s,
            time.perf_counter() - t1, self.world.memory.num_points,
        )

    def _commit(self, poses: np.ndarray, result: ClipResult) -> None:
        """Memory update (paper Sec. 3.2), then the history with each frame's view-specific voxel set."""
        world = self.world
        K = world.intrinsics
        first_index = len(world.history)
        refined = poses
        updates = [None] * len(poses)
        if self.config.update_memory:
            update_cfg = self.config.update
            if getattr(self.generator, "exact_poses", False):
                # The generator drew each frame from the memory at exactly the commanded pose (the geometric
                # one does): there is no drift to refine, and refinement would cost more than the frame did.
                update_cfg = replace(update_cfg, refine_pose=False)
            report = update_memory(
                world.memory, result.frames, poses, K, range(first_index, first_index + len(poses)),
                generator_depth=result.depth_m, dynamic=result.dynamic, config=update_cfg,
            )
            refined = report.poses_refined
            updates = report.frames
        for i in range(len(poses)):
            done = updates[i]
            if done is not None and done.voxel_keys is not None:  # the update already knows what this view sees
                keys, depth = done.voxel_keys, done.depth_m
            else:
                render = world.memory.render(K, refined[i], return_point_ids=True)
                seen = np.zeros(world.memory.num_points, bool)  # a bitmap dedupes ~10x faster than np.unique
                seen[render.point_ids[render.valid]] = True
                keys = np.sort(world.memory.voxel_keys[seen])  # the view-specific voxel set (paper Sec. 3.1.1)
                depth = render.depth_m
            if result.depth_m is not None:
                depth = result.depth_m[i]
            if result.dynamic is not None:
                depth = np.where(result.dynamic[i], 0.0, depth).astype(np.float32)
            world.history.add(result.frames[i], refined[i], K, keys, depth_m=depth)

    def generate(self, c2w: np.ndarray, prompt: str | None = None, seed: int = 0) -> Iterator[GeneratedFrame]:
        """Generate frames for a whole trajectory ``[N, 4, 4]``, chunked into clips by ``config.clip``.

        A fresh world (history = the initial image only) starts with the first-clip length; a world with
        generated frames continues with later-clip rules (preceding frames from its history).
        """
        poses = validate_trajectory(c2w, "c2w")
        clip = self.config.clip
        if len(self.world.history) > 1:  # continuing: every clip is a "later" clip
            clip = ClipConfig(clip.new_frames_per_clip, clip.clip_frames, clip.preceding_frames)
        for span in chunk_clips(len(poses), clip):
            yield from self.generate_clip(poses[span.start : span.stop], prompt, seed)


def _pose_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Degrees of relative rotation + 10 x metres between camera centres, for ``a`` ``[N, 4, 4]`` vs ``b`` ``[4, 4]``."""
    cos = (np.einsum("nij,ij->n", a[:, :3, :3], b[:3, :3]) - 1.0) / 2.0  # trace(A^T B) = sum(A * B)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return angle + 10.0 * np.linalg.norm(a[:, :3, 3] - b[:3, 3], axis=1)


def _nearest_pose_frames(candidates_c2w: np.ndarray, target_c2w: np.ndarray, k: int, exclude: set[int]) -> list[int]:
    """History frames nearest in pose to the last target (first in the list) and to every k-th target (then by
    distance), distinct, none from ``exclude``."""
    if len(candidates_c2w) == 0:
        return []
    last = len(target_c2w) - 1
    out: list[int] = []
    d = _pose_distance(candidates_c2w, target_c2w[last])
    if int(np.argmin(d)) not in exclude:
        out.append(int(np.argmin(d)))
    best: dict[int, float] = {}
    for t in range(0, len(target_c2w), max(k, 1)):
        d = _pose_distance(candidates_c2w, target_c2w[t])
        i = int(np.argmin(d))
        if i not in exclude and i not in out:
            best[i] = min(best.get(i, np.inf), float(d[i]))
    return out + sorted(best, key=best.get)


def _clip_seed(seed: int, clip_id: int) -> int:
    """A distinct, reproducible seed per clip (same world + same actions + same seed = same frames)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, clip_id]).generate_state(1)[0])
