import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.memory import SpatialMemory


def test_refresh_existing_false_adds_points_but_never_repaints():
    K = Intrinsics.from_fov(60, 40, 30)
    depth = np.full((30, 40), 2.0, np.float32)
    red = np.zeros((30, 40, 3), np.uint8)
    red[..., 0] = 200
    blue = np.zeros_like(red)
    blue[..., 2] = 200
    mem = SpatialMemory()
    mem.integrate(red, depth, K, np.eye(4), frame_index=0)
    colors, counts = mem.colors.copy(), mem.observation_count.copy()
    stats = mem.integrate(blue, depth, K, np.eye(4), frame_index=5, refresh_existing=False)
    assert stats.new_points == 0 and stats.updated_points == mem.num_points
    assert np.array_equal(mem.colors, colors)  # remembered colours stay
    assert np.all(mem.observation_count == counts + 1) and np.all(mem.last_seen_frame == 5)  # but it was seen
    farther = np.full((30, 40), 3.0, np.float32)  # a new surface behind: new points, in the new colour
    stats = mem.integrate(blue, farther, K, np.eye(4), frame_index=6, refresh_existing=False)
    assert stats.new_points > 0 and np.all(mem.colors[-stats.new_points:, 2] == 200)
    mem.integrate(blue, depth, K, np.eye(4), frame_index=7)  # the default blends
    assert not np.array_equal(mem.colors[: len(colors)], colors)
