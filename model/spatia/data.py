"""Training samples for the Spatia network (paper Sec. 3.1, Fig. 2): videos in, latent samples out.

A training video V (frames, per-frame c2w, intrinsics, optional depth, optional dynamic masks, a prompt) is split as
the paper does: a random target clip {T}^N, the clip right before it {P}^M, and every other frame as a candidate
{C}^O. Then (Sec. 3.1.1) a scene point cloud S is estimated from a random candidate frame (dynamic pixels removed),
rendered along the preceding + target poses (the scene projection video, holes = 0) and along the candidate poses
(the view-specific voxel sets S_C); finally (Sec. 3.1.2) up to K reference frames are retrieved from the candidates
with the world core's ``retrieve_reference_frames`` over a ``FrameStore``.

Departures, each because the paper's tool is not available here: S comes from the dataset's depth (or a
``world.depth.DepthEstimator``) unprojected with the known poses, instead of MapAnything; dynamic regions come from
the dataset's masks, instead of Keye-VL + ReferDINO.

Sources (all ``TrainingVideo``): ``FolderVideo`` (our plain folder format, see docs/TRAINING.md),
``read_realestate10k`` (RealEstate10K camera files + extracted frames), ``read_spatialvid`` (SpatialVID
annotations), ``SceneVideo`` (the procedural scenes of ``world.scenes``, exact depth: the built-in dataset).

``encode_sample`` turns a ``TrainingSample`` into a ``LatentSample`` (VAE latents + prompt embedding), which
``LatentCache`` stores as safetensors files so that a second epoch / second run skips the VAE and the text encoder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from spatia.world.camera import Intrinsics, invert_pose, validate_trajectory
from spatia.world.errors import InvalidInputError, NotFoundError
from spatia.world.generator import ReferenceFrame, SceneProjection

if TYPE_CHECKING:  # torch is imported inside the functions that need it
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# ----------------------------------------------------------------------------------------------------------------
# Videos
# ----------------------------------------------------------------------------------------------------------------


class TrainingVideo(Protocol):
    """One training video V. Frames are read lazily: a sample touches only its clips and a few candidates."""

    name: str
    prompt: str
    c2w: np.ndarray  # [T, 4, 4] float64 camera-to-world, OpenCV camera, metres
    intrinsics: Intrinsics  # for the frames' W x H

    def __len__(self) -> int: ...

    def rgb(self, i: int) -> np.ndarray:
        """[H, W, 3] uint8."""
        ...

    def depth(self, i: int) -> np.ndarray | None:
        """[H, W] float32 z-depth in metres (0 = unknown), or None when the video has none."""
        ...

    def dynamic(self, i: int) -> np.ndarray | None:
        """[H, W] bool, True = dynamic entity (kept out of the scene point cloud), or None."""
        ...


@dataclass
class ArrayVideo:
    """A video held in memory (tests, small datasets)."""

    name: str
    frames: np.ndarray  # [T, H, W, 3] uint8
    c2w: np.ndarray  # [T, 4, 4]
    intrinsics: Intrinsics
    prompt: str = ""
    depth_m: np.ndarray | None = None  # [T, H, W] float32
    dynamic_mask: np.ndarray | None = None  # [T, H, W] bool, True = dynamic

    def __post_init__(self) -> None:
        t, h, w = _check_frames_poses(self.frames.shape, self.c2w, self.intrinsics, self.name)
        self.c2w = validate_trajectory(self.c2w, f"{self.name}: c2w")
        if self.frames.dtype != np.uint8:
            raise InvalidInputError(f"{self.name}: frames must be uint8, got {self.frames.dtype}")
        for what, arr in (("depth_m", self.depth_m), ("dynamic_mask", self.dynamic_mask)):
            if arr is not None and arr.shape != (t, h, w):
                raise InvalidInputError(f"{self.name}: {what} must be [{t}, {h}, {w}], got {arr.shape}")

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def rgb(self, i: int) -> np.ndarray:
        return self.frames[i]

    def depth(self, i: int) -> np.ndarray | None:
        return None if self.depth_m is None else self.depth_m[i].astype(np.float32)

    def dynamic(self, i: int) -> np.ndarray | None:
        return None if self.dynamic_mask is None else self.dynamic_mask[i].astype(bool)


def _check_frames_poses(frames_shape, c2w: np.ndarray, intrinsics: Intrinsics, name: str) -> tuple[int, int, int]:
    if len(frames_shape) != 4 or frames_shape[-1] != 3:
        raise InvalidInputError(f"{name}: frames must be [T, H, W, 3], got {tuple(frames_shape)}")
    t, h, w = (int(v) for v in frames_shape[:3])
    if np.asarray(c2w).shape != (t, 4, 4):
        raise InvalidInputError(f"{name}: {t} frames but c2w has shape {np.asarray(c2w).shape}")
    if (intrinsics.width, intrinsics.height) != (w, h):
        raise InvalidInputError(f"{name}: intrinsics are for {intrinsics.width}x{intrinsics.height}, frames are {w}x{h}")
    return t, h, w


def _sorted_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class FolderVideo:
    """Our plain folder format (docs/TRAINING.md)::

        video_dir/
          frames/000000.png ...        RGB frames, sorted by name (.png / .jpg)
          cameras.json                 world.camera.save_trajectory: {"c2w": [[4x4] per frame], "intrinsics": {...}}
          depth/000000.png|.npy ...    optional: 16-bit PNG millimetres or .npy metres, z-depth, 0 = unknown
          dynamic/000000.png ...       optional: masks, white = dynamic entity
          prompt.txt                   optional: the text description
    """

    def __init__(self, root: str | Path) -> None:
        from spatia.world.camera import load_trajectory

        self.root = Path(root)
        if not (self.root / "frames").is_dir():
            raise NotFoundError(f"{self.root / 'frames'} not found (expected the folder format of docs/TRAINING.md)")
        self._frames = _sorted_images(self.root / "frames")
        c2w, K = load_trajectory(self.root / "cameras.json")
        if K is None:
            raise InvalidInputError(f"{self.root / 'cameras.json'} has no intrinsics")
        self.c2w, self.intrinsics = c2w, K
        self.name = self.root.name
        prompt_path = self.root / "prompt.txt"
        self.prompt = prompt_path.read_text().strip() if prompt_path.is_file() else ""
        if len(self._frames) != len(c2w):
            raise InvalidInputError(f"{self.root}: {len(self._frames)} frames but {len(c2w)} poses")
        self._depth = self._optional("depth", (".png", ".npy", ".tif", ".tiff"))
        self._dynamic = self._optional("dynamic", (".png", ".jpg", ".npy"))

    def _optional(self, sub: str, suffixes: tuple[str, ...]) -> list[Path] | None:
        folder = self.root / sub
        if not folder.is_dir():
            return None
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
        if len(files) != len(self._frames):
            raise InvalidInputError(f"{folder}: {len(files)} files for {len(self._frames)} frames")
        return files

    def __len__(self) -> int:
        return len(self._frames)

    def _size(self) -> tuple[int, int]:
        return self.intrinsics.width, self.intrinsics.height

    def rgb(self, i: int) -> np.ndarray:
        from spatia.world.images import load_rgb

        rgb = load_rgb(self._frames[i])
        if (rgb.shape[1], rgb.shape[0]) != self._size():
            raise InvalidInputError(f"{self._frames[i]}: {rgb.shape[1]}x{rgb.shape[0]}, intrinsics say {self._size()}")
        return rgb

    def depth(self, i: int) -> np.ndarray | None:
        from spatia.world.images import load_depth

        return None if self._depth is None else load_depth(self._depth[i], self._size())

    def dynamic(self, i: int) -> np.ndarray | None:
        from spatia.world.images import load_mask

        return None if self._dynamic is None else load_mask(self._dynamic[i], self._size())


def write_folder_video(root: str | Path, video: TrainingVideo) -> Path:
    """Write any ``TrainingVideo`` in the folder format (depth as 16-bit PNG millimetres, masks as PNG)."""
    from spatia.world.camera import save_trajectory
    from spatia.world.images import depth_to_png16, encode_png

    root = Path(root)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    for i in range(len(video)):
        (root / "frames" / f"{i:06d}.png").write_bytes(encode_png(video.rgb(i)))
        depth, dyn = video.depth(i), video.dynamic(i)
        if depth is not None:
            (root / "depth").mkdir(exist_ok=True)
            (root / "depth" / f"{i:06d}.png").write_bytes(depth_to_png16(depth))
        if dyn is not None:
            (root / "dynamic").mkdir(exist_ok=True)
            (root / "dynamic" / f"{i:06d}.png").write_bytes(encode_png(dyn))
    save_trajectory(root / "cameras.json", video.c2w, video.intrinsics)
    (root / "prompt.txt").write_text(video.prompt)
    return root


class SceneVideo:
    """A procedural scene (``world.scenes``) walked along its demo loop: exact RGB-D, the built-in dataset."""

    def __init__(self, name: str, seed: int, num_frames: int, width: int, height: int, fov_deg: float = 75.0,
                 prompt: str | None = None, loop_fraction: float = 1.0) -> None:
        from spatia.world.scenes import make_scene

        if not 0.0 < loop_fraction <= 1.0:
            raise InvalidInputError(f"loop_fraction must be in (0, 1], got {loop_fraction}")
        self.scene = make_scene(name, seed)
        self.name = f"{name}-{seed}"
        self.prompt = prompt if prompt is not None else f"a walk through a {name}"
        self.intrinsics = Intrinsics.from_fov(fov_deg, width, height)
        # A fraction of the loop at the same frame count: slower camera motion, more overlap between clips.
        full = max(int(round(num_frames / loop_fraction)), num_frames)
        self.c2w = self.scene.demo_path(full)[:num_frames]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def _render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            self._cache[i] = self.scene.render(self.intrinsics, self.c2w[i])
        return self._cache[i]

    def rgb(self, i: int) -> np.ndarray:
        return self._render(i)[0]

    def depth(self, i: int) -> np.ndarray | None:
        return self._render(i)[1]

    def dynamic(self, i: int) -> np.ndarray | None:
        return None


def procedural_videos(count: int, num_frames: int, width: int, height: int, loop_fraction: float = 0.5) -> list[SceneVideo]:
    """The built-in dataset: ``count`` scenes of ``world.scenes.scene_items`` (rooms, houses, courtyards)."""
    from spatia.world.scenes import scene_items

    return [SceneVideo(n, s, num_frames, width, height, loop_fraction=loop_fraction) for n, s in scene_items(count)]


# ----------------------------------------------------------------------------------------------------------------
# Readers of public datasets
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RealEstate10KCameras:
    """One RealEstate10K camera file: line 1 the YouTube URL, then one line per frame
    ``timestamp_us fx fy cx cy 0 0 w2c[3x4 row-major]`` with intrinsics normalised by the image size and the pose
    world-to-camera in the OpenCV convention (x right, y down, z forward)."""

    url: str
    timestamps_us: np.ndarray  # [T] int64
    normalized_intrinsics: np.ndarray  # [T, 4] fx/W, fy/H, cx/W, cy/H
    c2w: np.ndarray  # [T, 4, 4] float64


def read_realestate10k_cameras(path: str | Path) -> RealEstate10KCameras:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"RealEstate10K camera file {path} not found")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise InvalidInputError(f"{path}: needs a URL line and at least one camera line")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if len(parts) != 19:
            raise InvalidInputError(f"{path}:{n}: expected 19 numbers (timestamp, 4 intrinsics, 2 zeros, 12 pose), "
                                    f"got {len(parts)}")
        try:
            rows.append([float(v) for v in parts])
        except ValueError:
            raise InvalidInputError(f"{path}:{n}: not all values are numbers") from None
    arr = np.array(rows, dtype=np.float64)
    w2c = np.tile(np.eye(4), (len(arr), 1, 1))
    w2c[:, :3, :4] = arr[:, 7:19].reshape(-1, 3, 4)
    c2w = np.stack([invert_pose(T) for T in w2c])
    return RealEstate10KCameras(lines[0], arr[:, 0].astype(np.int64), arr[:, 1:5], validate_trajectory(c2w, str(path)))


def read_realestate10k(camera_file: str | Path, frames_dir: str | Path, depth_dir: str | Path | None = None,
                       prompt: str = "") -> ArrayVideo:
    """A RealEstate10K clip: its camera file plus the frames extracted from the video (one image per camera line,
    named ``<timestamp_us>.png|jpg`` or simply sorted in order). Depth (optional, needed unless the trainer gets a
    depth estimator) from ``depth_dir`` with the same names (.npy metres or 16-bit PNG millimetres).

    Note: RealEstate10K poses come from ORB-SLAM and have an arbitrary scale per clip; depth must share it.
    """
    from spatia.world.images import load_depth, load_rgb

    cams = read_realestate10k_cameras(camera_file)
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        raise NotFoundError(f"frames folder {frames_dir} not found")
    files = _match_frames(frames_dir, cams.timestamps_us)
    frames = np.stack([load_rgb(p) for p in files])
    h, w = frames.shape[1:3]
    K = Intrinsics.from_normalized(cams.normalized_intrinsics[0], w, h)
    depth = None
    if depth_dir is not None:
        depth_files = _match_frames(Path(depth_dir), cams.timestamps_us, (".npy", ".png"))
        depth = np.stack([load_depth(p, (w, h)) for p in depth_files])
    return ArrayVideo(Path(camera_file).stem, frames, cams.c2w, K, prompt, depth)


def _match_frames(folder: Path, timestamps: np.ndarray, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    by_stem = {p.stem: p for p in files}
    named = [by_stem.get(str(int(t))) for t in timestamps]
    if all(p is not None for p in named):
        return named  # type: ignore[return-value]
    if len(files) != len(timestamps):
        raise InvalidInputError(f"{folder}: {len(files)} files for {len(timestamps)} cameras, and they are not "
                                "named by timestamp")
    return files


def _quaternion_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """[N, 4] (x, y, z, w) -> [N, 3, 3], normalising the quaternion first."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    x, y, z, w = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def read_spatialvid(annotation_dir: str | Path, frames_dir: str | Path, depth: str | Path | None = None,
                    prompt: str | None = None) -> ArrayVideo:
    """A SpatialVID-style clip (SpatialVID ``utils/pack_clip_assets.py`` / ``utils/c2w.py``):

    * ``annotation_dir/poses.npy``: [T, 7] world-to-camera as (tx, ty, tz, qx, qy, qz, qw) (lietorch SE3 order);
    * ``annotation_dir/intrinsics.npy``: [T, 4] normalised (fx/W, fy/H, cx/W, cy/H);
    * ``annotation_dir/caption.txt`` (optional) or ``prompt``;
    * ``frames_dir``: the frames at the annotated indexes, sorted (SpatialVID's ``indexes.txt`` picks them);
    * ``depth`` (optional): a ``.npy`` [T, H', W'] metric z-depth (SpatialVID ships inverse depth as zipped EXR;
      convert once with ``1 / inv_depth``, as its ``read_depth`` does, since no EXR reader is a dependency here).
    """
    from spatia.world.images import load_rgb, resize_depth

    ann = Path(annotation_dir)
    for name in ("poses.npy", "intrinsics.npy"):
        if not (ann / name).is_file():
            raise NotFoundError(f"{ann / name} not found (expected a SpatialVID annotation folder)")
    poses = np.load(ann / "poses.npy")
    norm_k = np.load(ann / "intrinsics.npy")
    if poses.ndim != 2 or poses.shape[1] != 7 or norm_k.shape != (len(poses), 4):
        raise InvalidInputError(f"{ann}: poses.npy must be [T, 7] and intrinsics.npy [T, 4], got {poses.shape} "
                                f"and {norm_k.shape}")
    w2c = np.tile(np.eye(4), (len(poses), 1, 1))
    w2c[:, :3, :3] = _quaternion_xyzw_to_matrix(poses[:, 3:7].astype(np.float64))
    w2c[:, :3, 3] = poses[:, :3]
    c2w = np.stack([invert_pose(T) for T in w2c])
    files = _sorted_images(Path(frames_dir))
    if len(files) != len(poses):
        raise InvalidInputError(f"{frames_dir}: {len(files)} frames for {len(poses)} annotated poses")
    frames = np.stack([load_rgb(p) for p in files])
    h, w = frames.shape[1:3]
    depth_m = None
    if depth is not None:
        d = np.load(depth).astype(np.float32)
        if d.ndim != 3 or len(d) != len(poses):
            raise InvalidInputError(f"{depth}: expected [T={len(poses)}, H, W] depth, got {d.shape}")
        d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
        depth_m = np.stack([resize_depth(x, (w, h)) for x in d]) if d.shape[1:] != (h, w) else d
    if prompt is None:
        caption = ann / "caption.txt"
        prompt = caption.read_text().strip() if caption.is_file() else ""
    return ArrayVideo(ann.name, frames, c2w, Intrinsics.from_normalized(norm_k[0], w, h), prompt, depth_m)


# ----------------------------------------------------------------------------------------------------------------
# Sample construction (paper Sec. 3.1.1-3.1.2)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleConfig:
    """How a video is cut into a training sample. Lengths follow the VAE's 1 + 4k rule."""

    target_frames: int = 72  # N; official later rounds: 81 frames of which 9 preceding -> 72 new
    preceding_frames: int = 9  # M; official ``hist_frames``; 0 trains only first (image-conditioned) clips
    first_clip_prob: float = 0.0  # chance of a TI2V first-clip sample: no preceding clip, target frame 0 known
    first_clip_frames: int = 81  # N of a first-clip sample (1 + 4k)
    num_references: int = 7  # K
    retrieval_method: str = "paper"  # world.retrieval: "paper" (Algorithm 1, IoU) or "official" (shared + Hungarian)
    retrieval_eps: float = 0.0  # Algorithm 1's IoU threshold
    candidate_stride: int = 1  # keep every n-th candidate frame (official ref_hist_fps: every 4th at 24 fps)
    cloud_frames: int = 1  # candidate frames unprojected into S (paper Fig. 2a: one random candidate frame)
    voxel_size_m: float = 0.01  # d of the scene point cloud (paper Table 7)
    width: int | None = None  # resize frames to this size (multiples of 32 for Wan2.2); None keeps the video's
    height: int | None = None

    def __post_init__(self) -> None:
        if self.preceding_frames and (self.preceding_frames - 1) % 4:
            raise InvalidInputError(f"preceding_frames must be 0 or 1 + 4k, got {self.preceding_frames}")
        if self.preceding_frames and self.target_frames % 4:
            raise InvalidInputError(f"target_frames must be a multiple of 4 so preceding + target is 1 + 4k, "
                                    f"got {self.target_frames}")
        if (self.first_clip_frames - 1) % 4 or self.first_clip_frames < 1:
            raise InvalidInputError(f"first_clip_frames must be 1 + 4k, got {self.first_clip_frames}")
        if not 0.0 <= self.first_clip_prob <= 1.0:
            raise InvalidInputError(f"first_clip_prob must be in [0, 1], got {self.first_clip_prob}")
        if self.preceding_frames == 0 and self.first_clip_prob < 1.0:
            raise InvalidInputError("preceding_frames = 0 means first-clip samples only: set first_clip_prob = 1")
        if self.num_references < 0 or self.candidate_stride < 1 or self.cloud_frames < 1:
            raise InvalidInputError("num_references >= 0, candidate_stride >= 1 and cloud_frames >= 1 are required")
        if self.retrieval_method not in ("paper", "official"):
            raise InvalidInputError(f"retrieval_method must be 'paper' or 'official', got {self.retrieval_method!r}")
        if (self.width is None) != (self.height is None):
            raise InvalidInputError("give both width and height, or neither")


@dataclass
class TrainingSample:
    """One sample: frames in pixels, before the VAE."""

    video: str
    prompt: str
    target_frames: np.ndarray  # [N, H, W, 3] uint8
    preceding_frames: np.ndarray  # [M, H, W, 3] uint8 (M = 0 for a first-clip sample)
    projection: SceneProjection  # M + N frames: S rendered along the preceding then target poses
    references: list[ReferenceFrame]  # up to K, frame_index = index in the video
    first_clip: bool  # True: TI2V sample, target frame 0 is given (the first-frame mechanism)
    target_start: int  # index of the first target frame in the video
    cloud_frame_indices: list[int]  # the candidate frames S was built from

    @property
    def intrinsics_size(self) -> tuple[int, int]:
        return int(self.target_frames.shape[2]), int(self.target_frames.shape[1])


class SampleBuilder:
    """Builds ``TrainingSample``s from ``TrainingVideo``s (paper Fig. 2a-b)."""

    def __init__(self, config: SampleConfig = SampleConfig(), depth_estimator: Any = None) -> None:
        self.config = config
        self.depth_estimator = depth_estimator  # world.depth.DepthEstimator for videos without depth

    def _size(self, video: TrainingVideo) -> tuple[int, int]:
        c = self.config
        return (c.width, c.height) if c.width is not None else (video.intrinsics.width, video.intrinsics.height)

    def _frame(self, video: TrainingVideo, i: int) -> np.ndarray:
        from spatia.world.images import resize_rgb

        rgb = video.rgb(i)
        w, h = self._size(video)
        return rgb if rgb.shape[:2] == (h, w) else resize_rgb(rgb, (w, h))[0]

    def _depth(self, video: TrainingVideo, i: int) -> np.ndarray:
        depth = video.depth(i)
        if depth is None:
            if self.depth_estimator is None:
                raise InvalidInputError(f"{video.name}: frame {i} has no depth; give the trainer a depth estimator "
                                        "(world.depth) or a dataset with depth")
            depth = self.depth_estimator.estimate(video.rgb(i), video.intrinsics).depth_m
        return depth

    def spans(self, video: TrainingVideo, first_clip: bool) -> tuple[int, int, int]:
        """(preceding start, target start, target stop) limits check; raises if the video is too short."""
        c = self.config
        m = 0 if first_clip else c.preceding_frames
        n = c.first_clip_frames if first_clip else c.target_frames
        if len(video) < m + n + 1:
            raise InvalidInputError(f"{video.name}: {len(video)} frames, a sample needs {m + n} plus at least one "
                                    "candidate frame")
        return m, n, len(video) - (m + n)

    def build(self, video: TrainingVideo, rng: np.random.Generator) -> TrainingSample:
        from spatia.world.history import FrameStore, HistoryConfig
        from spatia.world.memory import MemoryConfig, SpatialMemory
        from spatia.world.retrieval import retrieve_reference_frames

        c = self.config
        first_clip = bool(rng.random() < c.first_clip_prob)
        m, n, last_start = self.spans(video, first_clip)
        # 1. Target clip at random; the preceding clip right before it; everything else is a candidate.
        p_start = int(rng.integers(0, last_start + 1))
        t_start = p_start + m
        t_stop = t_start + n
        candidates = np.array([i for i in range(len(video)) if not p_start <= i < t_stop], dtype=np.int64)
        K_src = video.intrinsics
        w, h = self._size(video)
        K = K_src.scaled(w, h) if (w, h) != (K_src.width, K_src.height) else K_src

        # 2. Scene point cloud S from random candidate frame(s), dynamic pixels excluded (Sec. 3.1.1).
        memory = SpatialMemory(MemoryConfig(voxel_size_m=c.voxel_size_m))
        cloud = sorted(int(i) for i in rng.choice(candidates, size=min(c.cloud_frames, len(candidates)), replace=False))
        for i in cloud:
            memory.integrate(video.rgb(i), self._depth(video, i), K_src, video.c2w[i], frame_index=i,
                             exclude_mask=video.dynamic(i))

        # 3. View-specific renders: the projection video of P + T, the voxel sets of T and of the candidates.
        poses_pt = video.c2w[p_start:t_stop]
        projection = memory.render_trajectory(K, poses_pt)
        references: list[ReferenceFrame] = []
        kept = candidates[candidates % c.candidate_stride == 0] if c.candidate_stride > 1 else candidates
        if c.num_references > 0 and len(kept):
            store = FrameStore(HistoryConfig(image_codec="png", decoded_cache_frames=0, voxel_set_levels=0))
            blank = np.zeros((h, w, 3), np.uint8)  # retrieval reads only poses and voxel sets; pixels come later
            for i in kept:
                store.add(blank, video.c2w[i], K, memory.visible_voxel_keys(K, video.c2w[i]), timestamp_ns=int(i))
            target_c2w = video.c2w[t_start:t_stop]
            target_keys = _LazyKeys(memory, K, target_c2w)
            found = retrieve_reference_frames(store, target_c2w, K, target_keys, k=c.num_references,
                                              eps=c.retrieval_eps, method=c.retrieval_method,
                                              candidate_stride=1)  # the store holds the kept candidates only
            for r in found:
                i = int(kept[r.frame_index])
                references.append(ReferenceFrame(i, self._frame(video, i), video.c2w[i].copy(), K, float(r.score)))
        return TrainingSample(
            video=video.name, prompt=video.prompt,
            target_frames=np.stack([self._frame(video, i) for i in range(t_start, t_stop)]),
            preceding_frames=(np.stack([self._frame(video, i) for i in range(p_start, t_start)]) if m
                              else np.zeros((0, h, w, 3), np.uint8)),
            projection=projection, references=references, first_clip=first_clip, target_start=t_start,
            cloud_frame_indices=cloud,
        )


class _LazyKeys(Sequence):
    """Target voxel sets rendered only for the target views retrieval looks at (every K-th)."""

    def __init__(self, memory, intrinsics: Intrinsics, poses: np.ndarray) -> None:
        self._memory, self._K, self._poses, self._cache = memory, intrinsics, poses, {}

    def __len__(self) -> int:
        return len(self._poses)

    def __getitem__(self, i):  # type: ignore[override]
        if i not in self._cache:
            self._cache[i] = self._memory.visible_voxel_keys(self._K, self._poses[i])
        return self._cache[i]


# ----------------------------------------------------------------------------------------------------------------
# Latents
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LatentSample:
    """A sample in the network's terms (batch dimension 1). ``F`` = latent frames of preceding + target."""

    latents: "torch.Tensor"  # [1, C, F, h, w] clean latents of the preceding + target video (encoded together)
    control: "torch.Tensor"  # [1, 2C, F, h, w] latents of the projection video and of its hole-mask video
    references: "torch.Tensor"  # [1, C, K, h, w], each reference encoded alone (K may be 0)
    text: "torch.Tensor"  # [1, L, text_dim] prompt embedding
    num_preceding: int  # latent frames of the preceding clip (0 for a first clip)
    first_clip: bool  # True: latent frame 0 is the given first image (TI2V), not generated
    meta: dict = field(default_factory=dict)

    @property
    def num_references(self) -> int:
        return int(self.references.shape[2])

    @property
    def num_known(self) -> int:
        """Leading latent frames of ``latents`` that are conditions, not generated."""
        return 1 if self.first_clip else self.num_preceding

    def shape_key(self) -> tuple:
        return (tuple(self.latents.shape), self.num_references, self.num_preceding, self.first_clip,
                tuple(self.text.shape))


def encode_sample(sample: TrainingSample, vae, prompt_encoder) -> LatentSample:
    """VAE-encode one sample as the generator does at inference (``SpatiaGenerator.build_inputs``): preceding and
    target frames as one video (the Wan VAE is causal, so its first latents equal the preceding clip's own
    latents), the projection + hole-mask videos over the same frames, every reference alone."""
    import torch

    from spatia.model.spatia.vae import latent_frames

    video = np.concatenate([sample.preceding_frames, sample.target_frames])
    latents = vae.encode_video(np.ascontiguousarray(video))
    control = torch.cat([vae.encode_video(np.ascontiguousarray(sample.projection.rgb)),
                         vae.encode_hole_mask(np.ascontiguousarray(sample.projection.valid))], dim=1)
    if sample.references:
        refs = vae.encode_images([r.rgb for r in sample.references])
    else:
        refs = latents.new_zeros((1, latents.shape[1], 0, *latents.shape[3:]))
    m = len(sample.preceding_frames)
    meta = {"video": sample.video, "target_start": sample.target_start,
            "references": [r.frame_index for r in sample.references], "cloud_frames": sample.cloud_frame_indices}
    return LatentSample(latents, control, refs, prompt_encoder.encode(sample.prompt).float().cpu(),
                        latent_frames(m) if m else 0, sample.first_clip, meta)


class LatentCache:
    """Latent samples on disk, one safetensors file each (tensors + JSON metadata), keyed by a string."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, sample: LatentSample) -> None:
        from safetensors.torch import save_file

        tensors = {name: getattr(sample, name).contiguous() for name in ("latents", "control", "references", "text")}
        meta = {"key": key, "num_preceding": str(sample.num_preceding), "first_clip": str(int(sample.first_clip)),
                "meta": json.dumps(sample.meta)}
        tmp = self.path(key).with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(self.path(key))

    def get(self, key: str) -> LatentSample:
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            raise NotFoundError(f"no cached latents for {key!r}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}
        return LatentSample(t["latents"], t["control"], t["references"], t["text"], int(meta["num_preceding"]),
                            bool(int(meta["first_clip"])), json.loads(meta["meta"]))


def build_latent_samples(videos: Sequence[TrainingVideo], count: int, builder: SampleBuilder, vae, prompt_encoder,
                         seed: int, cache: LatentCache | None = None, progress: bool = False) -> list[LatentSample]:
    """``count`` latent samples drawn round-robin over ``videos``; sample j uses rng seed (seed, j), so the set is
    reproducible and cacheable (key = video, j, seed and the sample config)."""
    from tqdm import tqdm

    if not videos:
        raise InvalidInputError("no training videos")
    out = []
    config_tag = json.dumps(asdict(builder.config), sort_keys=True)
    for j in tqdm(range(count), desc="samples", disable=not progress, leave=False):
        video = videos[j % len(videos)]
        # The poses identify the video beyond its name (two folders may share a name).
        poses_tag = hashlib.sha1(np.ascontiguousarray(video.c2w, dtype=np.float64).tobytes()).hexdigest()[:12]
        key = f"{video.name}|{poses_tag}|{j}|{seed}|{config_tag}"
        if cache is not None and key in cache:
            out.append(cache.get(key))
            continue
        rng = np.random.default_rng([int(seed), j])
        sample = encode_sample(builder.build(video, rng), vae, prompt_encoder)
        if cache is not None:
            cache.put(key, sample)
        out.append(sample)
    return out
