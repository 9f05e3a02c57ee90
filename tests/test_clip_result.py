"""``clip_result``: a clip's views stacked; a one-frame clip's arrays are read-only views of its view's arrays (no
copy), with the same values and shapes as ``np.stack``."""

import numpy as np
import pytest

from spatia.world.generator import GeneratedView, clip_result


def _view(seed: int, with_depth: bool = True) -> GeneratedView:
    rng = np.random.default_rng(seed)
    return GeneratedView(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
                         rng.random((6, 8), dtype=np.float32) if with_depth else None)


@pytest.mark.parametrize("n", [1, 3])
def test_clip_result_stacks_as_np_stack(n):
    views = [_view(i) for i in range(n)]
    result = clip_result(views)
    assert np.array_equal(result.frames, np.stack([v.rgb for v in views]))
    assert np.array_equal(result.depth_m, np.stack([v.depth_m for v in views]))
    assert result.frames.shape == (n, 6, 8, 3) and result.depth_m.shape == (n, 6, 8)
    assert result.dynamic is None and result.provisional is None
    if n == 1:  # a view, not a copy, and not writable through the result
        assert np.shares_memory(result.frames, views[0].rgb) and not result.frames.flags.writeable
        assert np.shares_memory(result.depth_m, views[0].depth_m) and not result.depth_m.flags.writeable
        assert views[0].rgb.flags.writeable  # the view's own array is left as it was


def test_clip_result_without_depth():
    assert clip_result([_view(0, with_depth=False)]).depth_m is None
