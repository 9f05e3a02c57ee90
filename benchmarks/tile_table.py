"""CPU of a texture tile made off the frame's thread, one ``warm_tiles`` call per tile (as a tile job or a short
tiles-ahead job makes them), against the frame's own path (``TextureModel._tile``, the model's cell table) in the
same run: a row of tiles of a fresh model of a stochastic and of a periodic exemplar, each way twice.

    python benchmarks/tile_table.py
"""

from __future__ import annotations

import json
import time

import numpy as np

from spatia.model.fill.texture.synthesis import TextureModel, warm_tiles

TILES = [(3, j) for j in range(5, 17)]


def _exemplars() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    noise = np.clip(128 + 40 * rng.standard_normal((96, 96, 3)), 0, 255).astype(np.uint8)
    brick = ((yy // 8) % 2 == 0) ^ (((xx + 8 * ((yy // 8) % 2)) // 16) % 2 == 0)
    bricks = np.where(brick[..., None], [150, 80, 60], [200, 190, 170]).astype(np.uint8)
    return {"stochastic": noise, "periodic": bricks}


def _ms_per_tile(rgb: np.ndarray, way: str) -> float:
    model = TextureModel.fit(rgb, np.ones(rgb.shape[:2], bool), 0.01)
    t0 = time.thread_time()
    for i, j in TILES:
        if way == "job":
            warm_tiles(model, [(i, j)], 0)
        else:
            model._tile(i, j, 0)
    return round((time.thread_time() - t0) / len(TILES) * 1e3, 3)


def main() -> None:
    out = {}
    for name, rgb in _exemplars().items():
        runs = {"job": [], "frame": []}
        for way in ("job", "frame", "job", "frame"):
            runs[way].append(_ms_per_tile(rgb, way))
        out[name] = {"job_ms_per_tile": runs["job"], "frame_ms_per_tile": runs["frame"]}
    print(json.dumps({"name": "tile_table", "tiles": len(TILES), "results": out}))


if __name__ == "__main__":
    main()
