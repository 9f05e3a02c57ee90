"""A ``World``: the persistent state of one explorable world (spatial memory + frame history + metadata).

Creating a world follows the paper's inference start (Sec. 3.2, Fig. 4): estimate the initial scene point cloud
from the conditioning image (with its depth: exact for procedural scenes, a depth estimator's for photographs),
excluding pixels marked dynamic (the appendix's dynamic-static disentanglement), and keep the image as frame 0
of the history so that later clips can retrieve it as a reference frame.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spatia.world import snapshot
from spatia.world.camera import Intrinsics, load_official_intrinsics, load_official_w2c, validate_pose
from spatia.world.errors import InvalidInputError, NotFoundError, SnapshotError
from spatia.world.history import FrameStore, HistoryConfig
from spatia.world.memory import MemoryConfig, SpatialMemory

SNAPSHOT_VERSION = 1


@dataclass
class WorldInfo:
    """Metadata kept with a world; nothing here is needed to render it."""

    world_id: str
    source: str  # how it was made: "scene:room:seed=0", "image:photo.jpg", "case:case_1", "ply:cloud.ply"
    prompt: str = ""
    created_ns: int = field(default_factory=time.time_ns)
    case_trajectory_frames: int = 0  # the official case's trajectory length, when made from a case
    # What the depth estimator measured about the layout of the first image (``world.depth.LayoutPrior.to_doc``,
    # world frame), None for worlds with real depth: the fill of a photo world starts from it
    layout_prior: dict | None = None


@dataclass
class World:
    info: WorldInfo
    intrinsics: Intrinsics  # the camera frames are generated with (resolution included)
    origin_c2w: np.ndarray  # [4, 4] pose of frame 0; "up" for walking is -y of this camera
    memory: SpatialMemory
    history: FrameStore
    current_c2w: np.ndarray | None = None  # [4, 4] where the last session left the camera
    first_image: np.ndarray | None = None  # [H, W, 3] uint8, the conditioning image, lossless (history frames are JPEG)

    # ---- creation ----------------------------------------------------------------------------------------

    @classmethod
    def from_rgbd(
        cls,
        rgb: np.ndarray,  # [H, W, 3] uint8
        depth_m: np.ndarray,  # [H, W] float32 z-depth, 0 = unknown
        intrinsics: Intrinsics,
        c2w: np.ndarray | None = None,  # [4, 4]; default identity: the first camera is the world frame
        dynamic: np.ndarray | None = None,  # [H, W] bool, True = dynamic entity, kept out of the memory
        prompt: str = "",
        world_id: str | None = None,
        source: str = "rgbd",
        memory_config: MemoryConfig = MemoryConfig(),
        history_config: HistoryConfig = HistoryConfig(),
    ) -> "World":
        pose = validate_pose(np.eye(4) if c2w is None else c2w, "c2w")
        rgb = np.asarray(rgb)
        depth = np.asarray(depth_m, dtype=np.float32)
        if dynamic is not None:
            dynamic = np.asarray(dynamic, dtype=bool)
            if dynamic.shape != rgb.shape[:2]:
                raise InvalidInputError(f"dynamic mask is {dynamic.shape[::-1]} but the image is {rgb.shape[1::-1]}")
        memory = SpatialMemory(memory_config)
        memory.integrate(rgb, depth, intrinsics, pose, frame_index=0, exclude_mask=dynamic)
        if memory.num_points == 0:
            raise InvalidInputError("the first image produced no memory points (is its depth all zero?)")
        history = FrameStore(history_config)
        static_depth = depth if dynamic is None else np.where(dynamic, 0.0, depth).astype(np.float32)
        history.add(rgb, pose, intrinsics, memory.visible_voxel_keys(intrinsics, pose), depth_m=static_depth)
        info = WorldInfo(world_id or uuid.uuid4().hex[:12], source, prompt)
        return cls(info, intrinsics, pose, memory, history, current_c2w=pose.copy(), first_image=rgb.copy())

    @classmethod
    def from_scene(
        cls,
        name: str = "room",
        seed: int = 0,
        width: int = 640,
        height: int = 360,
        fov_deg: float = 75.0,
        **kwargs: Any,
    ) -> "World":
        """A world whose first image is a procedural scene seen from its start pose (exact depth)."""
        from spatia.world.scenes import make_scene

        scene = make_scene(name, seed)
        K = Intrinsics.from_fov(fov_deg, width, height)
        pose = scene.start_pose()
        rgb, depth = scene.render(K, pose)
        kwargs.setdefault("source", f"scene:{name}:seed={seed}")
        return cls.from_rgbd(rgb, depth, K, pose, **kwargs)

    @classmethod
    def from_image(
        cls,
        rgb: np.ndarray,  # [H, W, 3] uint8
        intrinsics: Intrinsics | None = None,
        depth_m: np.ndarray | None = None,
        depth_estimator: Any = None,  # world.depth.DepthEstimator; default: the planar prior (approximate)
        **kwargs: Any,
    ) -> "World":
        """A world from a photograph: given depth, else the estimator's (a local depth model or the planar prior)."""
        from spatia.world.depth import PlanarPriorDepth, default_intrinsics

        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InvalidInputError(f"image must be uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
        K = intrinsics or default_intrinsics(rgb.shape[1], rgb.shape[0])
        if depth_m is None:
            if intrinsics is None and hasattr(depth_estimator, "estimate_uncalibrated"):
                # the estimator measures the focal itself (model.fill.geometry.photo): its depth is for its intrinsics
                est = depth_estimator.estimate_uncalibrated(rgb)
                K = est.intrinsics or K
            else:
                est = (depth_estimator or PlanarPriorDepth()).estimate(rgb, K)
            depth_m = est.depth_m
        else:
            est = None
        kwargs.setdefault("source", "image")
        world = cls.from_rgbd(rgb, depth_m, K, **kwargs)
        if getattr(est, "layout", None) is not None:
            world.info.layout_prior = est.layout.transformed(world.origin_c2w).to_doc()
        return world

    @classmethod
    def from_case(cls, case_dir: str | Path, depth_estimator: Any = None, width: int | None = None, **kwargs: Any) -> tuple["World", np.ndarray]:
        """A world from the official Spatia case layout; also returns the case's trajectory ``[N, 4, 4]`` c2w.

        Layout (``assets/cases/NOTICE.md``): img.jpg, intrinsics.txt ([fx/W fy/H cx/W cy/H]),
        w2c.txt (one 4x4 per line, line 1 = first frame), prompt.txt, optional mask.png (white = dynamic).
        ``width`` resizes the image (and intrinsics) first, keeping the aspect ratio.
        """
        from spatia.world.images import load_mask, load_rgb, resize_mask, resize_rgb

        case = Path(case_dir)
        if not case.is_dir():
            raise NotFoundError(f"case directory not found: {case}")
        for name in ("img.jpg", "intrinsics.txt", "w2c.txt"):
            if not (case / name).is_file():
                raise NotFoundError(f"case {case} lacks {name}")
        rgb = load_rgb(case / "img.jpg")
        mask_path = case / "mask.png"
        dynamic = load_mask(mask_path, size=(rgb.shape[1], rgb.shape[0])) if mask_path.is_file() else None
        if width is not None and width != rgb.shape[1]:
            # keep the aspect ratio, even height; normalized intrinsics stay valid under resizing
            size = (int(width), int(round(rgb.shape[0] * width / rgb.shape[1] / 2)) * 2)
            rgb, _ = resize_rgb(rgb, size)
            dynamic = resize_mask(dynamic, size) if dynamic is not None else None
        h, w = rgb.shape[:2]
        K = load_official_intrinsics(case / "intrinsics.txt", w, h)
        c2w = load_official_w2c(case / "w2c.txt")
        # The case's world frame is its first camera's (w2c line 1 is ~identity); re-base exactly on it.
        c2w = np.linalg.inv(c2w[0]) @ c2w
        prompt = (case / "prompt.txt").read_text().strip() if (case / "prompt.txt").is_file() else ""
        kwargs.setdefault("source", f"case:{case.name}")
        world = cls.from_image(rgb, K, depth_estimator=depth_estimator, dynamic=dynamic, prompt=prompt, **kwargs)
        world.info.case_trajectory_frames = int(c2w.shape[0])
        return world, c2w

    # ---- persistence -------------------------------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        K = self.intrinsics
        return {
            "info": asdict(self.info),
            "intrinsics": [K.fx, K.fy, K.cx, K.cy, K.width, K.height],
            "origin_c2w": self.origin_c2w,
            "current_c2w": self.current_c2w if self.current_c2w is not None else self.origin_c2w,
            "memory": {"config": asdict(self.memory.config), "arrays": self.memory.to_arrays()},
            "history": self.history.to_arrays(),  # carries its own config and version
            "first_image": self.first_image,
        }

    @classmethod
    def from_payload(cls, doc: dict[str, Any]) -> "World":
        try:
            fx, fy, cx, cy, w, h = doc["intrinsics"]
            memory = SpatialMemory.from_arrays(MemoryConfig(**doc["memory"]["config"]), doc["memory"]["arrays"])
            history = FrameStore.from_arrays(doc["history"])
            return cls(
                info=WorldInfo(**doc["info"]),
                intrinsics=Intrinsics(fx, fy, cx, cy, int(w), int(h)),
                origin_c2w=np.asarray(doc["origin_c2w"], dtype=np.float64),
                memory=memory,
                history=history,
                current_c2w=np.asarray(doc["current_c2w"], dtype=np.float64),
                first_image=doc.get("first_image"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"world snapshot is missing or has malformed fields ({exc!r})") from None

    def save(self, path: str | Path) -> int:
        """Write a versioned msgpack snapshot atomically; returns its size in bytes."""
        return snapshot.save(path, self.to_payload(), version=SNAPSHOT_VERSION)

    @classmethod
    def load(cls, path: str | Path) -> "World":
        return cls.from_payload(snapshot.load(path, max_version=SNAPSHOT_VERSION))

    @property
    def layout_prior(self):
        """``world.depth.LayoutPrior`` (world frame) recorded at creation, or None."""
        if self.info.layout_prior is None:
            return None
        from spatia.world.depth import LayoutPrior

        return LayoutPrior.from_doc(self.info.layout_prior)

    @property
    def camera_up(self) -> np.ndarray:
        """``[3]`` world frame: the first camera's -y (docs/DESIGN.md's world up)."""
        return -np.asarray(self.origin_c2w, np.float64)[:3, 1]

    @property
    def level_up(self) -> np.ndarray:
        """``[3]`` world frame: the up a player's turns keep level (``world.actions.level_pose``): the gravity the
        photo layout measured when the world recorded one (a photo taken pitched or rolled), else ``camera_up``."""
        prior = self.layout_prior
        if prior is not None:
            return np.asarray(prior.up, np.float64).copy()
        return self.camera_up

    def collider(self, config=None):
        """A ``world.collision.MemoryCollider`` over this world's memory (``ActionIntegrator(collider=...)``): the
        walking camera's body collides with the memory as it is at each move. ``config``: a ``CollisionConfig``."""
        from spatia.world.collision import CollisionConfig, MemoryCollider

        return MemoryCollider(self.memory, config if config is not None else CollisionConfig())

    @property
    def world_id(self) -> str:
        return self.info.world_id

    def close(self) -> None:
        """Release what the world holds outside the Python heap (its frame file); unusable afterwards."""
        self.history.close()
