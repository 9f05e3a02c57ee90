"""Test sets that ship with the project, and the camera paths of the protocols.

- ``procedural``: ``world.scenes.scene_items(n)`` — rooms, houses and courtyards with exact geometry, seeded, in a
  fixed order (item i is always the same scene). Exact renders give the ground truth (Table 2 / 7 style) and the
  reference for camera-control errors.
- ``cases``: the three official Spatia cases (``assets/cases/``, with their NOTICE) as the real-image items. Their
  depth comes from the planar prior (no depth model is bundled), so their memory is approximate; camera-control
  errors on them are measured against that initial memory.

The closed-loop path (paper Sec. 4.2, Table 6): each pair of clips moves the camera from the first viewpoint to
the right (a pan plus a sideways step) and back, so the last frame of every second clip is the first viewpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spatia.world.actions import ClipConfig
from spatia.world.camera import interpolate_pose, validate_pose
from spatia.world.errors import InvalidInputError
from spatia.world.memory import MemoryConfig
from spatia.world.state import World

CASES_DIR = Path(__file__).resolve().parents[2] / "assets" / "cases"
TESTSETS = ("procedural", "cases", "all")


@dataclass(frozen=True)
class TestItem:
    __test__ = False  # not a pytest class

    name: str  # "room-0", "case_1"
    kind: str  # "scene" or "case"
    scene: str | None = None  # procedural family
    seed: int = 0
    case_dir: Path | None = None


def load_items(testset: str = "procedural", count: int | None = None) -> list[TestItem]:
    """The first ``count`` items of a test set (all cases when ``count`` is None for ``cases``)."""
    from spatia.world.scenes import scene_items

    if testset not in TESTSETS:
        raise InvalidInputError(f"unknown test set {testset!r}; known: {', '.join(TESTSETS)}")
    if count is not None and count < 1:
        raise InvalidInputError(f"--items must be >= 1, got {count}")
    cases = [TestItem(p.name, "case", case_dir=p) for p in sorted(CASES_DIR.glob("case_*")) if p.is_dir()]
    if testset == "cases":
        return cases[:count] if count is not None else cases
    scenes = [TestItem(f"{n}-{s}", "scene", n, s) for n, s in scene_items(count or 24)]
    if testset == "procedural":
        return scenes
    # "all": procedural items with the cases interleaved at the front so small counts see both kinds
    mixed = cases + scenes
    return mixed[:count] if count is not None else mixed


@dataclass
class LoadedItem:
    item: TestItem
    world: World
    render_truth: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]  # c2w -> rgb, depth, valid
    exact: bool  # True when ``render_truth`` is the exact scene (procedural), False: the initial memory
    scene: object | None  # the ProceduralScene for procedural items


def load_world(item: TestItem, width: int, height: int, fov_deg: float = 75.0,
               memory_config: MemoryConfig = MemoryConfig()) -> LoadedItem:
    """A fresh world for ``item`` at ``width`` x ``height`` (cases keep their aspect ratio: height follows width)."""
    if item.kind == "scene":
        from spatia.world.camera import Intrinsics
        from spatia.world.scenes import make_scene

        scene = make_scene(item.scene, item.seed)
        world = World.from_scene(item.scene, item.seed, width, height, fov_deg=fov_deg, memory_config=memory_config,
                                 world_id=item.name)
        K = Intrinsics.from_fov(fov_deg, width, height)

        def truth(c2w: np.ndarray):
            rgb, depth = scene.render(K, c2w)
            return rgb, depth, depth > 0

        return LoadedItem(item, world, truth, True, scene)
    world, _ = World.from_case(item.case_dir, width=width, memory_config=memory_config, world_id=item.name)
    initial = world.memory.copy()  # frozen before any generation: the anchor for camera-control errors
    K = world.intrinsics

    def memory_truth(c2w: np.ndarray):
        r = initial.render(K, c2w)
        return r.rgb, r.depth_m, r.valid

    return LoadedItem(item, world, memory_truth, False, None)


@dataclass(frozen=True)
class PanLoop:
    """The "left to right and back" motion of one pair of clips, in the first camera's frame."""

    yaw_deg: float = 60.0  # pan to the right; 60 of a 75 degree field of view keeps a sliver of the first view
    strafe_m: float = 0.4  # sideways step to the right while panning (parallax, not only a rotation)

    def right_pose(self, start_c2w: np.ndarray) -> np.ndarray:
        start = validate_pose(start_c2w, "start_c2w")
        a = math.radians(self.yaw_deg)
        R = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
        right = np.eye(4)
        right[:3, :3] = start[:3, :3] @ R  # about the camera's y axis: > 0 turns right (world.actions convention)
        right[:3, 3] = start[:3, 3] + self.strafe_m * start[:3, 0]
        return right


def clip_lengths(num_clips: int, clip: ClipConfig) -> list[int]:
    """New frames of each clip: the first clip's length, then ``clip.new_frames_per_clip`` (``chunk_clips``)."""
    if num_clips < 1:
        raise InvalidInputError(f"number of clips must be >= 1, got {num_clips}")
    return [clip.first_clip_frames] + [clip.new_frames_per_clip] * (num_clips - 1)


def pan_loop_path(start_c2w: np.ndarray, num_clips: int, clip: ClipConfig, loop: PanLoop = PanLoop()) -> np.ndarray:
    """``[N, 4, 4]`` c2w for ``num_clips`` clips: odd clips move right, even clips return to ``start_c2w``.

    Frame 0 is the start pose (the first image's view); each clip ends exactly on its target pose, so with an even
    ``num_clips`` the last frame is the first viewpoint again (the closed loop). Chunked with ``chunk_clips`` the
    trajectory splits exactly at the turning points.
    """
    start = validate_pose(start_c2w, "start_c2w")
    targets = [loop.right_pose(start), start]
    poses, cur = [start], start
    for c, n in enumerate(clip_lengths(num_clips, clip)):
        steps = n - 1 if c == 0 else n  # clip 0's first frame is the start pose itself
        end = targets[c % 2]
        poses += [interpolate_pose(cur, end, (i + 1) / steps) for i in range(steps)]
        cur = end
    return np.stack(poses)


def forward_path(scene, num_frames: int) -> np.ndarray:
    """Ground-truth protocol path: the first quarter of the scene's demo loop (walking and turning, RealEstate-like
    forward motion), ``[num_frames, 4, 4]`` c2w starting at the start pose."""
    if num_frames < 2:
        raise InvalidInputError(f"num_frames must be >= 2, got {num_frames}")
    return scene.demo_path(4 * num_frames)[:num_frames]
