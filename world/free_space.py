"""Free space of a view: which world points lie in space a view saw through (in front of the depth it saw along
their line of sight), as a numba kernel with a plain numpy reference (the definition; tests compare them).

Two users: the layout fill (``model.fill``) keeps its invented points out of the space the world's observed views
saw through, and the memory update (``world.update``) takes away invented points a frame saw through (a doorway
the frame shows where the memory held an invented wall), so that what a frame shows as open is open in the memory.
"""

from __future__ import annotations

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.numba_start import nb

SEEN_THROUGH_MARGIN_M = 0.05  # beyond the relative tolerance: a point this much nearer than the surface seen


@nb.njit(cache=True, nogil=True)
def _seen_through_kernel(points, R, t, fx, fy, cx, cy, depth, rel, margin, out):  # pragma: no cover - compiled
    h, w = depth.shape
    for i in range(points.shape[0]):
        dx, dy, dz = points[i, 0] - t[0], points[i, 1] - t[1], points[i, 2] - t[2]
        # camera frame of the view: R^T (p - t)
        x = R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz
        y = R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz
        z = R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz
        if z <= 0.0:
            continue
        u = np.floor(fx * x / z + cx)
        v = np.floor(fy * y / z + cy)
        if u < 0 or u >= w or v < 0 or v >= h:
            continue
        seen = depth[int(v), int(u)]
        # depth 0 = nothing came back (sky): all of that ray is free space; NaN = unknown: no evidence
        if seen <= 0.0 or z < seen * (1.0 - rel) - margin:
            out[i] = True


def seen_through(
    points: np.ndarray,  # [M, 3] world frame
    view_c2w: np.ndarray,  # [4, 4] the view's pose
    intrinsics: Intrinsics,
    view_depth_m: np.ndarray,  # [H, W] float32 the view's z-depth, 0 = nothing came back, NaN = unknown
    rel: float,
    out: np.ndarray | None = None,  # [M] bool to OR into
    margin_m: float = SEEN_THROUGH_MARGIN_M,
) -> np.ndarray:
    """``[M]`` bool: True where a point lies in front of what the view saw along its line of sight (more than
    ``rel`` of that depth + ``margin_m`` nearer), i.e. in space the view saw through. A depth of 0 counts as
    nothing seen (all of that ray is free); a NaN depth as unknown (no point on that ray is in free space):
    callers whose 0 means "unknown" pass NaN there."""
    if out is None:
        out = np.zeros(len(points), bool)
    K = intrinsics
    _seen_through_kernel(np.ascontiguousarray(points, np.float64), np.ascontiguousarray(view_c2w[:3, :3], np.float64),
                         np.ascontiguousarray(view_c2w[:3, 3], np.float64), float(K.fx), float(K.fy), float(K.cx),
                         float(K.cy), np.ascontiguousarray(view_depth_m, np.float32), float(rel), float(margin_m), out)
    return out


def seen_through_reference(points: np.ndarray, view_c2w: np.ndarray, intrinsics: Intrinsics,
                           view_depth_m: np.ndarray, rel: float, margin_m: float = SEEN_THROUGH_MARGIN_M) -> np.ndarray:
    K = intrinsics
    R, t = view_c2w[:3, :3], view_c2w[:3, 3]
    pc = (np.asarray(points, np.float64) - t) @ R  # [M, 3] camera frame of the view
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.floor(K.fx * pc[:, 0] / z + K.cx)
        v = np.floor(K.fy * pc[:, 1] / z + K.cy)
    inside = (z > 0) & (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
    bad = np.zeros(len(points), bool)
    idx = np.flatnonzero(inside)
    seen = view_depth_m[v[idx].astype(np.int64), u[idx].astype(np.int64)]
    with np.errstate(invalid="ignore"):
        bad[idx] = (seen <= 0) | (z[idx] < seen * (1.0 - rel) - margin_m)  # NaN (unknown) is neither
    return bad


class VisitedPositions:
    """The positions a camera has been at, for "which of these points lie within r of any of them", asked every clip
    (``SpatialMemory.remove_invented_near_groups``: nothing invented stands where the camera has been). A k-d tree
    of the whole path made for each question cost O(P log P) a clip, growing with the session (docs/BENCHMARKS.md,
    "Session 19, lead"); here the path is kept in k-d trees over chunks of doubling size, merged as a binary counter
    carries (the logarithmic method), so each position enters a tree O(log P) times over the session and a question
    asks O(log P) trees. The answer is one tree's over the whole path (``near_reference``): a point is near when a
    chunk has a position within the radius, and each chunk compares the same point-position distances."""

    CHUNK_MIN = 2048  # the newest positions, fewer than this, stay in a small tree made again as they come

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, object]] = []  # ([S, 3] positions, their cKDTree), S non-increasing
        self._rest = np.zeros((0, 3), np.float64)  # [R < CHUNK_MIN, 3] the newest positions, not in a chunk yet
        self._rest_tree: object | None = None
        self._count = 0
        self._last = np.zeros(3, np.float64)  # the newest position taken (to tell a path that changed)
        self.lo_m = np.full(3, np.inf)  # [3] per-axis extremes of every position, world frame
        self.hi_m = np.full(3, -np.inf)

    def __len__(self) -> int:
        return self._count

    def sync(self, positions_m: np.ndarray) -> "VisitedPositions":
        """Take the positions of ``positions_m`` [P, 3] (world frame, the path so far: append-only) not taken yet;
        a path shorter than the one taken, or whose position at the last one taken differs, is taken anew."""
        from scipy.spatial import cKDTree

        p = np.asarray(positions_m, np.float64).reshape(-1, 3)
        if len(p) < self._count or (self._count and not np.array_equal(p[self._count - 1], self._last)):
            self.__init__()
        new = p[self._count :]
        if not len(new):
            return self
        self.lo_m = np.minimum(self.lo_m, new.min(axis=0))
        self.hi_m = np.maximum(self.hi_m, new.max(axis=0))
        self._count, self._last = len(p), p[-1].copy()
        rest = np.concatenate([self._rest, new])
        while len(rest) >= self.CHUNK_MIN:
            chunk, rest = rest[: self.CHUNK_MIN], rest[self.CHUNK_MIN :]
            while self._chunks and len(self._chunks[-1][0]) == len(chunk):  # the carry
                chunk = np.concatenate([self._chunks.pop()[0], chunk])
            self._chunks.append((chunk, cKDTree(chunk)))
        self._rest = rest.copy()
        self._rest_tree = cKDTree(self._rest) if len(self._rest) else None
        return self

    def positions(self) -> np.ndarray:
        """``[P, 3]`` every position taken, in order (a copy: O(P))."""
        return np.concatenate([c for c, _ in self._chunks] + [self._rest])

    def near(self, points_m: np.ndarray, radius_m: float) -> np.ndarray:
        """``[M]`` bool: True where a point of ``points_m`` [M, 3] (world frame) has a position within ``radius_m``
        (by the k-d tree's ``distance_upper_bound``, as one tree over the whole path answers)."""
        pts = np.asarray(points_m, np.float64).reshape(-1, 3)
        out = np.zeros(len(pts), bool)
        trees = [t for _, t in self._chunks] + ([self._rest_tree] if self._rest_tree is not None else [])
        for tree in trees:
            ask = np.flatnonzero(~out)
            if not len(ask):
                break
            d, _ = tree.query(pts[ask], distance_upper_bound=radius_m)
            out[ask[np.isfinite(d)]] = True
        return out


def near_reference(points_m: np.ndarray, positions_m: np.ndarray, radius_m: float) -> np.ndarray:
    """``VisitedPositions.near``'s definition: one k-d tree over every position (what the memory asked before)."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points_m, np.float64).reshape(-1, 3)
    d, _ = cKDTree(np.asarray(positions_m, np.float64).reshape(-1, 3)).query(pts, distance_upper_bound=radius_m)
    return np.isfinite(d)
