"""A wall nothing observed borrows a texture in the mean tone of the walls of that material seen facing both ways.

The procedural room's first view sees its left wall (plaster, lit: luma ~121) and part of the right one (the same
plaster facing away from the light: ~95); its front wall (~116 in truth) was shown in the right wall's tone, the
best-supported wall it meets at a corner (docs/RESULTS.md, "Session 36").
"""

from __future__ import annotations

import numpy as np

from spatia.model import make_generator
from spatia.model.eval import novel_view as nv
from spatia.world.engine import Engine


def test_an_unseen_wall_takes_the_mean_tone_of_the_walls_across_it():
    prep = nv.prepare_item(nv.parse_items(["room"])[0], 320, 180)
    names = [o.name for o in prep.scene.objects]
    engine = Engine(prep.build_world(), make_generator("geometric", fill="layout"), nv.SETTINGS["demo"])
    at = 112  # the loop faces the front wall, which the first view never saw
    frames = list(engine.generate(prep.path_world[at - 12:at + 1], seed=0))  # past the first coarse frames
    truth = prep.truth(at)[0]
    hits = prep.scene.cast(prep.intrinsics, prep.scene_from_world @ prep.path_world[at])

    def luma(rgb: np.ndarray, name: str) -> float:
        m = hits.object_id == names.index(name)
        return float(nv.luminance(rgb)[m].mean())

    shown, true = luma(frames[-1].rgb, "wall_front"), luma(truth, "wall_front")
    hits0 = prep.scene.cast(prep.intrinsics, prep.scene_from_world @ prep.path_world[0])
    assert not (hits0.object_id == names.index("wall_front")).any()  # never observed
    # between the two tones it continues (the right wall's alone: 95, 21 levels darker than the truth's 116)
    assert abs(shown - true) < 12, (shown, true)
    assert 100 < shown < 115, shown
