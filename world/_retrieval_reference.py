"""Slow, plainly correct references for ``world.retrieval`` (tests compare the fast paths against these).

Everything here works on plain lists of voxel-key arrays and ``np.intersect1d``, one candidate at a time, and
follows the paper's Algorithm 1 / the official ``find_mask_matches`` line by line. Not for production use.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

# --- retrieval references ---


def reference_intersection_counts(target_sets: list[np.ndarray], frame_sets: list[np.ndarray]) -> np.ndarray:
    """``[T, F]`` int64: ``|target_sets[t] ∩ frame_sets[f]|`` (each set sorted unique int64 keys)."""
    out = np.zeros((len(target_sets), len(frame_sets)), dtype=np.int64)
    for t, a in enumerate(target_sets):
        for f, b in enumerate(frame_sets):
            out[t, f] = np.intersect1d(a, b, assume_unique=True).shape[0]
    return out


def reference_iou(a: np.ndarray, b: np.ndarray) -> float:
    """3D IoU of two voxel sets; 0 when both are empty."""
    inter = np.intersect1d(a, b, assume_unique=True).shape[0]
    union = a.shape[0] + b.shape[0] - inter
    return inter / union if union > 0 else 0.0


def reference_retrieve_paper(
    target_sets: list[np.ndarray],
    candidate_sets: dict[int, np.ndarray],  # frame_index -> voxel keys, the candidates {C}^O
    k: int,
    eps: float,
    target_stride: int,
) -> list[tuple[int, float, int]]:
    """Algorithm 1 literally, then the K cap. Returns ``(frame_index, score, target_index)`` in target order."""
    selected: list[tuple[int, float, int]] = []
    taken: set[int] = set()
    for i, s_t in enumerate(target_sets):
        if i % target_stride != 0:
            continue
        s, r_hat = 0.0, None
        for j in sorted(candidate_sets):
            score = reference_iou(s_t, candidate_sets[j])
            if score > s:
                s, r_hat = score, j
        if r_hat is not None and s > eps and r_hat not in taken:
            taken.add(r_hat)
            selected.append((r_hat, s, i))
    if len(selected) > k:
        best = sorted(selected, key=lambda r: (-r[1], r[2]))[:k]
        selected = sorted(best, key=lambda r: r[2])
    return selected


def reference_retrieve_official(
    target_sets: list[np.ndarray],
    candidate_sets: dict[int, np.ndarray],
    k: int,
    target_stride: int,
    candidate_stride: int,
) -> list[tuple[int, float, int]]:
    """Official ``select_reference_frames``: strided views, intersection counts, Hungarian, drop zeros, first K."""
    targets = [i for i in range(len(target_sets)) if i % target_stride == 0]
    frames = [j for j in sorted(candidate_sets) if j % candidate_stride == 0]
    if not targets or not frames:
        return []
    scores = np.zeros((len(targets), len(frames)), dtype=np.float64)
    for r, i in enumerate(targets):
        for c, j in enumerate(frames):
            scores[r, c] = np.intersect1d(target_sets[i], candidate_sets[j], assume_unique=True).shape[0]
    rows, cols = linear_sum_assignment(scores, maximize=True)
    out = [(frames[c], float(scores[r, c]), targets[r]) for r, c in zip(rows, cols) if scores[r, c] > 0]
    out.sort(key=lambda x: x[2])
    return out[:k]
