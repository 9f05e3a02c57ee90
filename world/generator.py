"""The ``Generator`` protocol: what the engine hands a video generator for one clip, and what it gets back.

This mirrors the conditioning of the Spatia network (paper Sec. 3.1.3): the scene projection video of the
preceding + target poses, the preceding clip, up to K retrieved reference frames and the text instruction.
``model/`` implements it (a real-time geometric generator and the Spatia network); ``world/`` only defines it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.regions import Box


@dataclass
class SceneProjection:
    """The memory rendered along a sequence of poses; missing pixels are zero (paper Sec. 3.1.3)."""

    rgb: np.ndarray  # [T, H, W, 3] uint8
    depth_m: np.ndarray  # [T, H, W] float32, z-depth, 0 where nothing projects
    valid: np.ndarray  # [T, H, W] bool, True where a memory point landed
    # [T, H, W] bool, True where the point that landed is invented-provisional (a coarse fill shown while the
    # final one was being prepared): a generator may paint over it, the memory then replaces it. None: nowhere.
    provisional: np.ndarray | None = None
    # [T, H, W] bool, True where the point that landed was observed (from a real image, not invented): given to a
    # generator that declares ``GeneratorCapabilities.reads_observed``. None: not given.
    observed: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def slice(self, start: int, stop: int) -> "SceneProjection":
        prov = None if self.provisional is None else self.provisional[start:stop]
        obs = None if self.observed is None else self.observed[start:stop]
        return SceneProjection(self.rgb[start:stop], self.depth_m[start:stop], self.valid[start:stop], prov, obs)


@dataclass
class ReferenceFrame:
    """A retrieved history frame (paper's R_k)."""

    frame_index: int
    rgb: np.ndarray  # [H, W, 3] uint8
    c2w: np.ndarray  # [4, 4]
    intrinsics: Intrinsics
    score: float = 0.0  # the retrieval score that selected it (IoU or shared-point count)
    depth_m: np.ndarray | None = None  # [H, W] float32 when the history kept it


@dataclass
class ClipRequest:
    """Everything a generator may condition on for one clip. Frames are at ``intrinsics``' resolution."""

    clip_id: int
    target_c2w: np.ndarray  # [N, 4, 4], world frame; the poses to generate
    intrinsics: Intrinsics
    projection: SceneProjection  # length M + N: preceding poses then target poses
    preceding_frames: np.ndarray  # [M, H, W, 3] uint8, M may be 0 (first clip)
    preceding_c2w: np.ndarray  # [M, 4, 4]
    references: list[ReferenceFrame] = field(default_factory=list)
    prompt: str = ""
    seed: int = 0
    first_frame: np.ndarray | None = None  # [H, W, 3] uint8: the initial image (TI2V first-frame conditioning)
    world_up: np.ndarray = field(default_factory=lambda: np.array([0.0, -1.0, 0.0]))  # [3] unit, world frame
    # For fills of never-seen space (all optional; a generator that does not use them ignores them):
    # the world's memory (``world.memory.SpatialMemory``), read only: its observed points give the layout;
    memory: Any = None
    # the views of the real scene with depth (the first image): free space is what they saw through;
    observed_views: list[ReferenceFrame] = field(default_factory=list)
    # [P, 4, 4] c2w of every pose the camera has been at so far (the history), world frame.
    visited_c2w: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    # ``world.depth.LayoutPrior`` (world frame) the world recorded at creation (photo worlds), else None
    layout_prior: Any = None
    # the engine's, for generators with ``projection_on_demand``: renders target ``t`` (None: every target) into
    # ``projection``; None: the projection is complete
    render_targets: Any = None
    # True: the caller has a core to spare beside this clip (no other world of its process is being played): a
    # generator may use it for speculative work that leaves its frames as they would be without it (the geometric
    # generator's texture tiles ahead of the view). False: every core is busy; the generator does only the clip.
    spare_core: bool = False

    def need_targets(self, t: int | None = None) -> None:
        """After this call target ``t``'s part of ``projection`` (``None``: every target's) holds its render."""
        if self.render_targets is not None:
            self.render_targets(t)

    @property
    def num_target(self) -> int:
        return int(self.target_c2w.shape[0])

    @property
    def num_preceding(self) -> int:
        return int(self.preceding_frames.shape[0])

    @property
    def target_projection(self) -> SceneProjection:
        return self.projection.slice(self.num_preceding, self.num_preceding + self.num_target)


@dataclass
class ClipResult:
    """Generated frames for the target poses, plus what the generator knows about them."""

    frames: np.ndarray  # [N, H, W, 3] uint8
    depth_m: np.ndarray | None = None  # [N, H, W] float32, z-depth; None: the memory update estimates it
    dynamic: np.ndarray | None = None  # [N, H, W] bool, True = dynamic entity (never written to memory)
    # [N] bool: frame i's invented pixels are a coarse fill, kept in memory as invented-provisional until a final
    # frame replaces them (``GeneratedView.provisional``). None: all final.
    provisional: np.ndarray | None = None
    # [N, H, W] bool: pixels of otherwise final frames that are shown but not folded into the memory
    # (``GeneratedView.provisional_px``). None: none.
    provisional_px: np.ndarray | None = None
    # space the frames show as open, distinct boxes over the clip (``GeneratedView.open_space``)
    open_space: tuple[Box, ...] = ()


@dataclass
class GeneratedView:
    """One generated frame, as a streaming generator yields it (``ClipResult`` for one pose)."""

    rgb: np.ndarray  # [H, W, 3] uint8
    depth_m: np.ndarray | None = None  # [H, W] float32 z-depth
    dynamic: np.ndarray | None = None  # [H, W] bool
    # True: what this frame invents is a coarse fill shown while the final one is prepared (it becomes
    # invented-provisional memory, replaced once frames are final; at most a few frames of a world are)
    provisional: bool = False
    # [H, W] bool: the pixels of a final frame that are shown, never folded into the memory, and not warped into
    # later frames (the history keeps no depth there): a coarse fill (a plane whose texture is still being fitted),
    # or a guess the generator will not commit to (the geometric fill's depth in front of its layout, around an
    # object seen sparse; a colour that may come from another surface than the pixel's depth). None: none.
    provisional_px: np.ndarray | None = None
    # Boxes (world frame) the frame shows as open space where the memory may hold invented points: a doorway the
    # generator opened in a wall it invented before. The engine deletes the invented points inside them when it
    # commits the clip, in view or not, so that what the frame shows as open the camera can walk through (the
    # memory's points block a walking camera). Observed points are never deleted.
    open_space: tuple[Box, ...] = ()


@dataclass(frozen=True)
class GeneratorCapabilities:
    """What a generator declares about itself (``Generator.capabilities``). The engine reads these and never
    probes a generator for attributes."""

    # frames are drawn at exactly the requested poses (a renderer): the memory update skips pose refinement
    exact_poses: bool = False
    # False: the generator never reads the preceding clip (``preceding_frames`` and the preceding part of
    # ``projection``); the engine then leaves them blank (zero, all invalid) instead of decoding and rendering them
    uses_preceding_clip: bool = True
    # ``generate_frames(request) -> Iterator[GeneratedView]``: the same frames as ``generate``, one at a time, so
    # the first can be shown while the rest are made (a diffusion model denoises a clip at once and has none)
    streams_frames: bool = False
    # ``prepare_world(memory, observed_views, world_up, layout_prior=None)``: called when an engine opens a world (and when a server
    # creates one), with what later requests carry as ``memory``, ``observed_views`` and ``world_up``: a generator
    # that derives state from the world (the geometric one fits its layout fill) starts that work there, off the
    # first frame's path. It must not block for long, and the frames it later makes must not depend on when that
    # work finished. Such a generator also has ``wait_prepared(memory, timeout_s) -> bool``: block until that work
    # is done (True) or ``timeout_s`` passed (False); a server calls it, off its event loop, before it answers
    # CreateWorld, so that a Play right after neither waits for that work nor shares the CPU with it.
    prepares_worlds: bool = False
    # The generator calls ``request.need_targets(t)`` before it reads target ``t``'s part of ``projection``
    # (``need_targets()`` before reading every target's): the engine then renders each target pose only when
    # asked, so a streamed clip's first frame does not wait for the renders of the poses after it.
    projection_on_demand: bool = False
    # The generator reads ``projection.observed`` (which rendered pixels show observed points): the engine fills
    # it, a gather per pixel of each target render, only for a generator that declares it.
    reads_observed: bool = False


@runtime_checkable
class Generator(Protocol):
    """A video generator conditioned on spatial memory. Must be deterministic for a given ``request.seed``.

    ``capabilities`` says which of the optional methods (``generate_frames``, ``prepare_world``) it has and how
    the engine may feed it (``GeneratorCapabilities``)."""

    name: str
    capabilities: GeneratorCapabilities

    def generate(self, request: ClipRequest) -> ClipResult: ...


def capabilities_of(generator: object) -> GeneratorCapabilities:
    """The generator's declared capabilities; a clear error when it declares none."""
    caps = getattr(generator, "capabilities", None)
    if not isinstance(caps, GeneratorCapabilities):
        raise TypeError(f"generator {getattr(generator, 'name', type(generator).__name__)!r} must declare "
                        "capabilities = world.generator.GeneratorCapabilities(...)")
    return caps


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.stack(arrays)``; one array (a one-frame clip, every clip of served play) as a read-only view with a
    leading axis instead of a copy: the copy of the clip's frame and depth was made every clip and never needed."""
    if len(arrays) == 1:
        one = np.asarray(arrays[0])[None]
        one.flags.writeable = False
        return one
    return np.stack(arrays)


def clip_result(views: list[GeneratedView]) -> ClipResult:
    """Stack a clip's streamed views (``generate_frames``) into its ``ClipResult`` (a one-frame clip's arrays are
    read-only views of its view's)."""
    def stacked(name: str):
        arrays = [getattr(v, name) for v in views]
        return None if any(a is None for a in arrays) else _stack(arrays)

    prov = np.array([v.provisional for v in views], bool)
    prov_px = None
    if any(v.provisional_px is not None for v in views):
        prov_px = np.zeros((len(views),) + views[0].rgb.shape[:2], bool)
        for i, v in enumerate(views):
            if v.provisional_px is not None:
                prov_px[i] = v.provisional_px
    open_space: dict[bytes, Box] = {}  # a doorway is shown by most frames of a clip: once each
    for v in views:
        for box in v.open_space:
            open_space.setdefault(box.center.tobytes() + box.half_extents_m.tobytes() + box.rotation.tobytes(), box)
    return ClipResult(_stack([v.rgb for v in views]), stacked("depth_m"), stacked("dynamic"),
                      prov if prov.any() else None, prov_px, tuple(open_space.values()))

