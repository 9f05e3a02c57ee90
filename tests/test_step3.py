"""The lock-step step's fast paths, third pass (issue 14 section 6, session 9): each against its slow twin."""

import numpy as np
import pytest

from spatia.world._retrieval_reference import reference_intersection_counts
from spatia.world.history import VoxelSetIndex


@pytest.mark.parametrize("tail_runs", [1, 40, 1 << 30])
def test_chained_unsealed_runs_count_as_the_scan_and_the_sets_do(tail_runs):
    """Runs closed since the last seal are read through per-column chains: the counts equal the former scan of
    every closed run and plain set intersections, queried between adds (chains grow, seals empty them)."""
    rng = np.random.default_rng(tail_runs % 997)
    index = VoxelSetIndex(tail_runs)
    frame_sets = []
    centre = np.zeros(3)
    for f in range(40):
        # a wandering window: voxels leave and come back, so columns get several closed runs each
        centre = np.clip(centre + rng.integers(-2, 3, 3), -6, 6)
        keys = ((centre + rng.integers(-4, 5, (int(rng.integers(0, 300)), 3)) + 16) @ [1 << 10, 1 << 5, 1])
        frame_sets.append(np.unique(keys.astype(np.int64)))
        index.add(np.concatenate([keys, keys[:5]]).astype(np.int64))  # repeats within a frame count once
        if f % 7 == 3 or f == 39:
            queries = [frame_sets[int(rng.integers(0, f + 1))] for _ in range(3)]
            queries += [np.unique(rng.integers(0, 1 << 15, 200)), np.zeros(0, np.int64)]
            got = index.intersection_counts(queries)
            np.testing.assert_array_equal(got, index._intersection_counts_scan(queries))
            np.testing.assert_array_equal(got, reference_intersection_counts(queries, frame_sets))
    if tail_runs == 1 << 30:
        assert index.num_unsealed_runs > 100  # the chains carried every closed run
    if tail_runs == 1:
        assert index.num_unsealed_runs < index.num_runs - index.num_voxels
