"""Reference-frame retrieval: up to K history frames that see what the target clip will see.

Two variants (``docs/DESIGN.md``, "Where the method follows the paper ..."):

- ``"paper"``: Algorithm 1 of the paper (Sec. 3.1.2 and the appendix). For every K-th target frame, the candidate
  with the largest SpatialOverlap = 3D IoU of the view-specific voxel sets after registering the candidate's set
  to the target's; kept if the score exceeds the threshold eps.
- ``"official"``: the official code's ``select_reference_frames`` (inference.py) + ``find_mask_matches``
  (utils/frustum_culling.py): one target view every ``ref_stride`` = 12 frames (ref_fps 2 of 24), candidates every
  ``ref_hist_stride`` = 4 history frames (ref_hist_fps 6 of 24), score = number of shared front-most visible points
  (here: shared voxel keys), target views assigned to *distinct* history frames by Hungarian matching, no threshold.

The view-specific sets of the target poses come from the caller (rendered from the memory); the history's sets are
in the ``FrameStore``. Both live in the same world frame (the poses are known), so the paper's Register step is the
identity unless ``icp`` asks for an ICP refinement. Scores for all candidates of all target views come from one
pass over the store's inverted voxel index (``VoxelSetIndex.intersection_counts``), not a loop over candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from spatia.world.camera import RIGID_TOLERANCE, Intrinsics, pose_problem
from spatia.world.errors import InvalidInputError
from spatia.world.generator import ReferenceFrame
from spatia.world.geometry import unpack_voxel_keys, voxel_keys
from spatia.world.history import FrameStore

METHODS = ("paper", "official")
OFFICIAL_TARGET_STRIDE = 12  # fps 24 / ref_fps 2 (inference.py get_args)
OFFICIAL_CANDIDATE_STRIDE = 4  # fps 24 / ref_hist_fps 6


@dataclass(frozen=True)
class RetrievedFrame:
    frame_index: int  # index into the FrameStore
    score: float  # "paper": 3D IoU in (eps, 1]; "official": number of shared voxels (> 0)
    target_index: int  # index into target_c2w of the target view this frame was retrieved for


@dataclass(frozen=True)
class IcpConfig:
    """The optional Register step of Algorithm 1: point-to-point ICP of the candidate's voxel centres onto the
    target's (open3d ``registration_icp``), then the IoU of the re-voxelised candidate set.

    ICP per candidate is far slower than the indexed IoU, so only the ``top_n`` candidates by unregistered IoU
    are registered for each target view (a refinement: it re-ranks the likely candidates, it cannot find a
    candidate that shares no voxel at all with the target).
    """

    voxel_size_m: float  # cube side d the memory keys were made with (the history's sets are d * 2**levels)
    top_n: int = 8
    max_distance_voxels: float = 3.0  # ICP correspondence radius, in voxels
    max_iterations: int = 30

    def __post_init__(self) -> None:
        if not (self.voxel_size_m > 0):
            raise InvalidInputError(f"icp.voxel_size_m must be positive, got {self.voxel_size_m}")
        if self.top_n < 1 or self.max_iterations < 1 or not (self.max_distance_voxels > 0):
            raise InvalidInputError("icp.top_n and icp.max_iterations must be >= 1 and max_distance_voxels > 0")


def retrieve_reference_frames(
    store: FrameStore,
    target_c2w: np.ndarray,  # [N, 4, 4] camera-to-world of the target clip, world frame
    target_intrinsics: Intrinsics | Sequence[Intrinsics],  # one for all, or one per target pose
    target_voxel_keys: Sequence[np.ndarray],  # N view-specific voxel sets (int64 keys) of the target poses
    k: int = 7,
    eps: float = 0.0,
    method: str = "paper",
    candidates: range | slice | np.ndarray | Sequence[int] | None = None,
    *,
    target_stride: int | None = None,  # None: K ("paper"), 12 ("official")
    candidate_stride: int | None = None,  # None: 1 ("paper"), 4 ("official"); keeps frames with index % stride == 0
    icp: IcpConfig | None = None,  # "paper" only: register candidates by ICP before the IoU
) -> list[RetrievedFrame]:
    """Retrieve up to ``k`` distinct reference frames for a target clip, ordered by ``target_index``.

    ``candidates`` selects the history frames {C}^O that may be retrieved: None (all), a ``range``/``slice`` of
    frame indices, a bool mask ``[len(store)]`` (True = candidate) or frame indices. The engine passes the frames
    before the preceding clip, since those are conditioned on separately (paper Sec. 3.1.3).

    Scores come from the voxel sets alone: ``target_c2w`` and ``target_intrinsics`` are checked against them
    (one set per pose) but enter no score, because the sets are already in the world frame of these poses.
    """
    if method not in METHODS:
        raise InvalidInputError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise InvalidInputError(f"k must be a non-negative integer, got {k!r}")
    poses = _validate_poses(target_c2w)
    n = poses.shape[0]
    if len(target_voxel_keys) != n:
        raise InvalidInputError(f"target_voxel_keys has {len(target_voxel_keys)} sets for {n} target poses")
    if not isinstance(target_intrinsics, Intrinsics) and (
        len(target_intrinsics) != n or not all(isinstance(K, Intrinsics) for K in target_intrinsics)
    ):
        raise InvalidInputError(f"target_intrinsics must be one Intrinsics or {n} of them")
    stride = _stride(target_stride, max(k, 1) if method == "paper" else OFFICIAL_TARGET_STRIDE, "target_stride")
    cand_stride = _stride(candidate_stride, 1 if method == "paper" else OFFICIAL_CANDIDATE_STRIDE, "candidate_stride")
    frames = _candidate_frames(candidates, len(store))
    frames = frames[frames % cand_stride == 0]
    frames = frames[store.indexed()[frames]]  # frames compaction dropped from the index are no candidates
    if method == "paper" and not (0.0 <= eps < 1.0):
        raise InvalidInputError(f"eps is an IoU threshold in [0, 1), got {eps}")
    if icp is not None and method != "paper":
        raise InvalidInputError("icp registration belongs to the paper's Algorithm 1; use method='paper'")

    # Algorithm 1, line 3: "if i mod K != 0 then break  # Operate every K frames". A literal break would stop at
    # i = 1 and retrieve for frame 0 only; the comment (and Sec. 3.1.2) mean "skip this frame", so we skip.
    # The official code samples its target views with the same stride rule (round_extrinsic[::ref_stride]).
    target_idx = np.arange(0, n, stride)
    if k == 0 or frames.size == 0 or target_idx.size == 0:
        return []
    sets = [store.query_voxel_set(target_voxel_keys[i], f"target_voxel_keys[{i}]") for i in target_idx]
    counts = store.voxels.intersection_counts(sets)[:, frames].astype(np.int64)  # [T, C]
    if method == "paper":
        return _paper(store, sets, target_idx, frames, counts, k, eps, icp)
    return _official(target_idx, frames, counts, k)


def _paper(store, sets, target_idx, frames, counts, k, eps, icp) -> list[RetrievedFrame]:
    sizes_t = np.array([s.shape[0] for s in sets], dtype=np.int64)[:, None]
    sizes_c = store.voxels.sizes()[frames][None, :]
    union = sizes_t + sizes_c - counts
    iou = np.divide(counts, union, out=np.zeros(counts.shape), where=union > 0)  # [T, C] 3D IoU
    if icp is not None:
        icp = replace(icp, voxel_size_m=icp.voxel_size_m * store.voxel_set_scale)  # the sets' cube side
        for t in range(iou.shape[0]):
            for c in np.argsort(-iou[t], kind="stable")[: icp.top_n]:
                moved = register_voxel_set(store.get_voxel_keys(int(frames[c])), sets[t], icp)
                iou[t, c] = voxel_iou(sets[t], moved)
    selected: list[RetrievedFrame] = []
    taken: set[int] = set()
    for t in range(iou.shape[0]):
        # argmax returns the first maximum, i.e. the earliest candidate, as the strict ">" of lines 12-14 does.
        c = int(np.argmax(iou[t]))
        s = float(iou[t, c])
        if s > eps and s > 0.0:  # s > 0: Algorithm 1 keeps no frame when every overlap is 0 (R-hat stays empty)
            frame = int(frames[c])
            if frame in taken:  # {R} is a set: a frame already retrieved for an earlier target view is skipped
                continue
            taken.add(frame)
            selected.append(RetrievedFrame(frame, s, int(target_idx[t])))
    if len(selected) > k:
        # Every K-th frame of an N-frame clip can give more than K frames (72 frames, K = 7: 11 views); the paper
        # selects "up to K of the most spatially relevant frames", so keep the K best scores (ties: earlier view).
        best = sorted(selected, key=lambda r: (-r.score, r.target_index))[:k]
        selected = sorted(best, key=lambda r: r.target_index)
    return selected


def _official(target_idx, frames, counts, k) -> list[RetrievedFrame]:
    from scipy.optimize import linear_sum_assignment

    scores = counts.astype(np.float64)
    # find_mask_matches(method="hungarian"): maximise the total shared count with each target view assigned to a
    # different history frame. The official code raises when there are more views than candidates; a rectangular
    # assignment simply leaves the extra views unmatched.
    rows, cols = linear_sum_assignment(scores, maximize=True)
    out = [
        RetrievedFrame(int(frames[c]), float(scores[r, c]), int(target_idx[r]))
        for r, c in zip(rows, cols)
        if scores[r, c] > 0  # no threshold, but a pair that shares nothing is no reference
    ]
    out.sort(key=lambda r: r.target_index)
    return out[:k]  # selected[: args.ref_num], in target-view order


def to_reference_frames(store: FrameStore, retrieved: Sequence[RetrievedFrame]) -> list[ReferenceFrame]:
    """The generator's ``ReferenceFrame``s (decoded image, pose, intrinsics, depth if kept) of retrieved frames.
    Images and depth are the store's read-only cached arrays."""
    return [
        ReferenceFrame(
            frame_index=r.frame_index,
            rgb=store.get_rgb(r.frame_index),
            c2w=store.get_pose(r.frame_index),
            intrinsics=store.intrinsics(r.frame_index),
            score=r.score,
            depth_m=store.get_depth(r.frame_index),
        )
        for r in retrieved
    ]


def voxel_iou(a: np.ndarray, b: np.ndarray) -> float:
    """3D IoU ``|A ∩ B| / |A ∪ B|`` of two sorted unique voxel-key sets; 0 when both are empty."""
    inter = np.intersect1d(a, b, assume_unique=True).shape[0]
    union = a.shape[0] + b.shape[0] - inter
    return inter / union if union > 0 else 0.0


def register_voxel_set(source_keys: np.ndarray, target_keys: np.ndarray, icp: IcpConfig) -> np.ndarray:
    """Algorithm 1's Register(y, x): move voxel set ``source_keys`` onto ``target_keys`` by point-to-point ICP of
    the voxel centres (world frame, identity start) and re-voxelise. Returns sorted unique int64 keys."""
    if source_keys.size == 0 or target_keys.size == 0:
        return source_keys
    import open3d as o3d

    d = icp.voxel_size_m
    src = (unpack_voxel_keys(source_keys) + 0.5) * d  # [S, 3] voxel centres, metres
    dst = (unpack_voxel_keys(target_keys) + 0.5) * d
    reg = o3d.pipelines.registration
    result = reg.registration_icp(
        o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src)),
        o3d.geometry.PointCloud(o3d.utility.Vector3dVector(dst)),
        icp.max_distance_voxels * d,
        np.eye(4),
        reg.TransformationEstimationPointToPoint(),
        reg.ICPConvergenceCriteria(max_iteration=icp.max_iterations),
    )
    T = np.asarray(result.transformation)
    return np.unique(voxel_keys(src @ T[:3, :3].T + T[:3, 3], d))


def _validate_poses(c2w) -> np.ndarray:
    """``[N, 4, 4]`` rigid float64 poses, checked all at once (``validate_trajectory`` checks one by one, which
    costs ~0.4 ms per pose: more than the whole retrieval for a 72-frame clip)."""
    T = np.asarray(c2w, dtype=np.float64)
    if T.ndim != 3 or T.shape[1:] != (4, 4) or T.shape[0] == 0:
        raise InvalidInputError(f"target_c2w must have shape [N, 4, 4] with N >= 1, got {T.shape}")
    if not np.all(np.isfinite(T)):
        raise InvalidInputError("target_c2w contains NaN or infinite values")
    if T.shape[0] <= 8:  # a short clip: per pose in Python floats (``pose_problem``) beats ~10 array calls
        for i in range(T.shape[0]):
            if pose_problem(T[i]) is not None:
                raise InvalidInputError(f"target_c2w[{i}] is not a rigid camera-to-world pose")
        return T
    R = T[:, :3, :3]
    bad = np.any(np.abs(T[:, 3] - [0.0, 0.0, 0.0, 1.0]) > RIGID_TOLERANCE, axis=1)
    bad |= np.any(np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)) > RIGID_TOLERANCE, axis=(1, 2))
    bad |= np.abs(np.linalg.det(R) - 1.0) > RIGID_TOLERANCE
    if bad.any():
        raise InvalidInputError(f"target_c2w[{int(np.argmax(bad))}] is not a rigid camera-to-world pose")
    return T


def _stride(value: int | None, default: int, name: str) -> int:
    value = default if value is None else value
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _candidate_frames(candidates, n_frames: int) -> np.ndarray:
    """Sorted unique int64 frame indices from None / range / slice / bool mask / indices."""
    if candidates is None:
        return np.arange(n_frames, dtype=np.int64)
    if isinstance(candidates, range) and candidates.step > 0:
        # the engine's case (frames before the preceding clip): np.asarray(range) iterates it in Python, ~1 us a
        # frame (0.3 ms a one-frame clip 300 frames in), for what is an arange
        if len(candidates) and (candidates.start < 0 or candidates[-1] >= n_frames):
            raise InvalidInputError(f"candidate frame indices must be in [0, {n_frames}), got "
                                    f"{candidates.start}..{candidates[-1]}")
        return np.arange(candidates.start, candidates.stop, candidates.step, dtype=np.int64)
    if isinstance(candidates, slice):
        return np.arange(n_frames, dtype=np.int64)[candidates]
    arr = np.asarray(candidates)
    if arr.dtype == np.bool_:
        if arr.shape != (n_frames,):
            raise InvalidInputError(f"candidate mask must have shape ({n_frames},), got {arr.shape}")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(
            f"candidates must be a range, slice, bool mask or 1-D frame indices, got {arr.dtype} {arr.shape}"
        )
    if arr.min() < 0 or arr.max() >= n_frames:
        raise InvalidInputError(f"candidate frame indices must be in [0, {n_frames}), got {arr.min()}..{arr.max()}")
    return np.unique(arr.astype(np.int64))
