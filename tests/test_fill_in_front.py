"""The small-hole fill's depth where it lies in front of the layout is shown, not folded into the memory
(``model.geometric._fill_in_front``, ``GeometricConfig.fold_fill_in_front``).

courtyard@turned in the play setting: the first view sees the fountain's water at a grazing angle, so up close
the memory renders it as sparse streaks; the fill spread their depth over the gaps, the keyframes folded those
points into the memory, and the next frames spread them further, into a ghost wall across the square
(docs/RESULTS.md, session 28)."""

from __future__ import annotations

from collections import deque

import numpy as np

from spatia.model import make_generator
from spatia.model.eval.novel_view import SETTINGS, NovelItem, SurfaceTruth, prepare_item
from spatia.world.engine import Engine
from spatia.world.memory import OBSERVED


def test_the_fill_in_front_of_the_layout_grows_no_ghost_in_the_memory():
    prepared = prepare_item(NovelItem.parse("courtyard@turned"), 160, 90)
    truth = SurfaceTruth.of_scene(prepared.scene)
    T = prepared.scene_from_world
    accurate = {}
    for fold in (True, False):
        world = prepared.build_world()
        engine = Engine(world, make_generator("geometric", fill="layout", fold_fill_in_front=fold), SETTINGS["play"])
        deque(engine.generate(prepared.path_world[1:81], seed=0), maxlen=0)
        pts = world.memory.positions.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        invented = np.asarray(world.memory.provenance) != OBSERVED
        accurate[fold] = float(truth.accurate(pts[invented]).mean())  # share of invented points within 5 cm
    # 160x90, 80 frames: 0.65 folded, 0.77 not
    assert accurate[False] >= accurate[True] + 0.08 and accurate[False] >= 0.72, accurate
