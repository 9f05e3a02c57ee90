"""A render's rows read directly (``SpatialMemory.render_voxel_keys``, ``render_shows``): the same keys in the same
order as ``rendered_voxel_keys(render.point_ids)`` and the same masks as ``render_shows_reference`` (numpy over the
point ids), with and without dead rows, before and after the render's point ids are made, on a frozen view too."""

import numpy as np
import pytest

from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError
from spatia.world.memory import (INVENTED_FINAL, INVENTED_PROVISIONAL, OBSERVED, Box, MemoryConfig,
                                 SpatialMemory)

CFG = MemoryConfig(voxel_size_m=0.05)
CAM = Intrinsics.from_fov(75.0, 96, 64)
C2W = np.eye(4)
C2W[2, 3] = -4.0
PROVENANCES = (OBSERVED, INVENTED_PROVISIONAL, INVENTED_FINAL)


def _memory(dead: bool) -> SpatialMemory:
    rng = np.random.default_rng(7)
    mem = SpatialMemory(CFG)
    for frame, prov in enumerate(PROVENANCES):  # three batches, one provenance each, interleaved in space
        pts = rng.uniform(-3, 3, (6_000, 3))
        mem.integrate_points(pts, rng.integers(0, 256, (6_000, 3), dtype=np.uint8), frame_index=frame,
                             provenance=prov)
        if frame == 0:
            mem.reindex()  # a sorted prefix, then an unsorted tail
    if dead:
        mem.remove(Box([0.5, 0.0, 0.0], [1.0, 3.0, 3.0]))  # dead rows in the prefix and the tail
        assert len(mem._dead) > 0
    return mem


@pytest.mark.parametrize("dead", [False, True])
@pytest.mark.parametrize("frozen", [False, True])
def test_render_rows_read_as_point_ids(dead, frozen):
    mem = _memory(dead)
    mem = mem.frozen_view() if frozen else mem
    # rows read before the point ids are made (the engine's order), then after
    r = mem.render(CAM, C2W, return_point_ids=True)
    assert r.valid.sum() > 1000
    keys = mem.render_voxel_keys(r)
    masks = [mem.render_shows(r, p) for p in PROVENANCES]
    want_keys = mem.rendered_voxel_keys(r.point_ids)
    assert np.array_equal(keys, want_keys)
    for p, mask in zip(PROVENANCES, masks):
        want = mem.render_shows_reference(r, p)
        assert np.array_equal(mask, want), p
        assert want.any(), p  # every provenance is on screen
        assert np.array_equal(mem.render_shows(r, p), want), p  # from the point ids now
    assert np.array_equal(mem.render_voxel_keys(r), want_keys)
    # into a given array
    out = np.ones(r.valid.shape, bool)
    assert mem.render_shows(mem.render(CAM, C2W, return_point_ids=True), OBSERVED, out=out) is out
    assert np.array_equal(out, masks[0])


def test_render_shows_refuses_an_output_it_cannot_write_through():
    mem = _memory(True)
    r = mem.render(CAM, C2W, return_point_ids=True)
    with pytest.raises(InvalidInputError):
        mem.render_shows(r, OBSERVED, out=np.zeros((64, 192), bool)[:, ::2])
    with pytest.raises(InvalidInputError):
        mem.render_shows(r, OBSERVED, out=np.zeros((64, 96), np.uint8))
