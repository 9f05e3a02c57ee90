"""The web app's minimap thins the memory's points to one per voxel before drawing (client/web/app.py
``thin_points``): checked against an obviously-correct dictionary walk, and the drawn map barely changes."""

import numpy as np
import pytest

pytest.importorskip("aiohttp")

from spatia.client.hud import MapFrame, minimap_image  # noqa: E402
from spatia.client.web.app import thin_points  # noqa: E402


def thin_reference(points, colors, voxel_m):
    seen, keep = set(), []
    for i, p in enumerate(points):
        cell = tuple(int(np.floor(v / voxel_m)) for v in p)
        if cell not in seen:
            seen.add(cell)
            keep.append(i)
    return points[keep], colors[keep]


def test_thin_points_matches_the_reference_and_keeps_the_map():
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(-4, 4, 20000), np.full(20000, 1.5), rng.uniform(-4, 4, 20000)]  # y-down: floor at +1.5
    wall = np.c_[np.full(8000, 3.0), rng.uniform(-1, 1.5, 8000), rng.uniform(-4, 4, 8000)]
    points = np.concatenate([floor, wall, floor[:5000] + 1e-4])  # [N, 3] world metres, with near-duplicates
    colors = rng.integers(0, 256, (len(points), 3), dtype=np.uint8)
    got_p, got_c = thin_points(points, colors, 0.05)
    ref_p, ref_c = thin_reference(points, colors, 0.05)
    assert np.array_equal(got_p, ref_p) and np.array_equal(got_c, ref_c)
    assert len(got_p) < 0.8 * len(points)
    # the map drawn from the thinned points: the same pixels covered
    c2w = np.eye(4)
    frame = MapFrame.from_origin(c2w)
    full = minimap_image(points, colors, c2w[None, :3, 3], c2w, frame, 192)
    thin = minimap_image(got_p, got_c, c2w[None, :3, 3], c2w, frame, 192)
    empty = np.all(full == 24, axis=2), np.all(thin == 24, axis=2)
    assert np.mean(empty[0] != empty[1]) < 0.01
    assert thin_points(points[:0], colors[:0], 0.05)[0].shape == (0, 3)
    with pytest.raises(ValueError, match="voxel_m"):
        thin_points(points, colors, 0.0)
