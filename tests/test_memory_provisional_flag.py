"""``SpatialMemory.has_provisional`` skips its O(points) scan while no point can be provisional (the engine asks
twice a clip); it must answer exactly as the scan over every mutation: integrates of each provenance, the coarse
fill dropped, free-space removal, edits (move, insert, recolor, remove), a load, a copy, a re-sort."""

from __future__ import annotations

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.memory import INVENTED_FINAL, INVENTED_PROVISIONAL, OBSERVED, Box, SpatialMemory, Sphere


def _scan(mem: SpatialMemory) -> bool:
    return bool((mem.provenance == INVENTED_PROVISIONAL).any())


def _frame(rng, z_m: float):
    K = Intrinsics.from_fov(70.0, 32, 24)
    depth = np.full((24, 32), z_m, np.float32) + rng.uniform(0, 0.05, (24, 32)).astype(np.float32)
    rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    return rgb, depth, K


def test_has_provisional_answers_as_the_scan_through_every_mutation():
    rng = np.random.default_rng(0)
    mem = SpatialMemory()
    checks = []

    def check(what):
        assert mem.has_provisional == _scan(mem), what
        assert mem.has_provisional == _scan(mem), what  # a second ask (the flag after the first) agrees
        checks.append(_scan(mem))

    check("empty")
    pose = np.eye(4)
    for i, prov in enumerate([OBSERVED, INVENTED_FINAL, INVENTED_PROVISIONAL, INVENTED_FINAL]):
        rgb, depth, K = _frame(rng, 1.0 + 0.3 * i)
        mem.integrate(rgb, depth, K, pose, i, refresh_existing=False, provenance=prov)
        check(f"integrate {prov}")
    moved = mem.move(Box([0, 0, 1.6], [5, 5, 0.2]), [0.0, 0.0, 3.0])
    assert moved
    check("move (provisional points moved)")
    assert mem.drop_provisional() > 0
    check("drop_provisional")
    rgb, depth, K = _frame(rng, 2.0)
    mem.integrate(rgb, depth, K, pose, 5, refresh_existing=False, provenance=INVENTED_PROVISIONAL)
    check("integrate provisional again")
    saved = mem.to_arrays()
    copy = mem.copy()
    assert copy.has_provisional == _scan(copy)
    mem.remove_invented_near(np.array([[0.0, 0.0, 2.0]]), 3.0)
    check("free-space removal")
    loaded = SpatialMemory.from_arrays(mem.config, saved)
    assert loaded.has_provisional == _scan(loaded) is True
    mem = loaded
    mem.remove(Sphere([0, 0, 0], 100.0))
    check("remove all")
    mem.insert(rng.uniform(-1, 1, (50, 3)), rng.integers(0, 255, (50, 3), dtype=np.uint8))
    check("insert")
    mem.recolor(Sphere([0, 0, 0], 100.0), (1, 2, 3))
    check("recolor")
    mem.reindex()
    check("re-sort")
    assert True in checks and False in checks  # both answers were exercised
