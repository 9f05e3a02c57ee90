"""Texture synthesis for unseen plane regions (model/fill/texture/synthesis.py): ms per 64x64 tile and per fit.

Exemplars: 128x192-texel crops of procedural brick, tiles, wood and plaster (``world.textures``) with a disc-shaped
hole and a notch, as a plane's observed texels would be. For each:

- ``fit_ms``: ``TextureModel.fit`` (lattice detection, shading split, hole pre-fill);
- ``tile_cold_ms``: one 64x64 tile far from the exemplar with nothing cached (every cell and cut computed);
- ``tile_stream_ms``: per tile, tiles of an 8x8 block asked in raster order (neighbours share border cells), as
  tiles entering the view arrive;
- ``continue_ms``: the exemplar's own holes (``continue_exemplar``).

The plain-Python path (``TextureModel.reference_region``: the compiled path's reference, texel for texel the same,
checked here) is timed on the same tile stream: ``reference_tile_stream_cpu_ms``. Baselines in the same run: tiling the hole-filled exemplar (a wrap-around window: what a naive fill does) and
push-pull filling the holes. Quality next to the speed: gradient ratio of the hole fill to the observed texels
(1 = as much detail; push-pull is a smear), and the step at tile / exemplar-period borders over the interior step
(1 = no seam; tiles are windows of one image, so a tile border is a seam only where a cell's cut band
happens to lie on it), and the step inside the cells' cut bands over their cores (the cost of the patchwork).
``*_cpu_ms`` is process CPU time: steadier than wall time on a shared machine.

    .venv/bin/python benchmarks/texture.py [--repeats 15] [--strip docs/texture_strip.png]

``--strip FILE`` also writes a picture: per texture, the exemplar (unobserved texels magenta) | the plane around
it as synthesised (exemplar's box outlined in yellow), palette-quantised to stay small.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import structlog

import numpy as np
from _common import emit, log, time_ms

from spatia.model.fill.texture import synthesis as tx
from spatia.world.textures import TextureSpec

TEXTURES = {
    "brick": ("brick", {}),
    "tiles": ("tiles", {}),
    "wood": ("wood", {}),
    "plaster": ("noise", {"cells": 8, "contrast": 1.5}),
}


def exemplar(family: str, params: dict, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    # one procedural tile (256 texels) is larger than the crop, so plaster does not repeat inside the exemplar
    tex = TextureSpec(family, 1.0, tuple(params.items())).make(seed, size_px=256)
    big = (np.tile(tex, (2, 2, 1)) * 255).round().astype(np.uint8)
    rgb = big[7 : 7 + 128, 11 : 11 + 192].copy()
    yy, xx = np.mgrid[:128, :192]
    valid = ((yy - 64) ** 2 + (xx - 90) ** 2 >= 24**2) & ~((xx > 160) & (yy < 40))
    return rgb, valid


def luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def grad(img: np.ndarray, mask: np.ndarray) -> float:
    gy, gx = np.gradient(luma(img))
    return float(np.hypot(gx, gy)[mask].mean())


def border_step(img: np.ndarray, period: int) -> float:
    """Mean |step| across columns at multiples of ``period`` over the mean |step| elsewhere."""
    dx = np.abs(np.diff(luma(img), axis=1))
    cols = np.arange(period - 1, dx.shape[1], period)
    return float(dx[:, cols].mean() / np.delete(dx, cols, 1).mean())


def cut_step(img: np.ndarray, row0: int, col0: int, model: tx.TextureModel) -> float:
    """Mean |horizontal step| in the cells' vertical cut bands over that in the cells' cores (1 = cuts unseen)."""
    s, h = model.step_px, model.overlap_px // 2
    dx = np.abs(np.diff(luma(img), axis=1))
    band = ((np.arange(col0, col0 + dx.shape[1]) + h) % s) < 2 * h - 1
    return float(dx[:, band].mean() / dx[:, ~band].mean())


def tile_the_exemplar(filled: np.ndarray, tile_ij: tuple[int, int], t: int = 64) -> np.ndarray:
    h, w = filled.shape[:2]
    rows = np.arange(tile_ij[0] * t, tile_ij[0] * t + t) % h
    cols = np.arange(tile_ij[1] * t, tile_ij[1] * t + t) % w
    return filled[np.ix_(rows, cols)]


def write_strip(path: str) -> None:
    from PIL import Image

    rows = []
    for family, params in TEXTURES.values():
        rgb, valid = exemplar(family, params)
        model = tx.TextureModel.fit(rgb, valid, texel_m=0.02)
        h, w = rgb.shape[:2]
        pad = 48
        plane = tx.synthesize_region(model, (-pad, -pad), (h + 2 * pad, w + 2 * pad), seed=1)
        yellow = (255, 255, 0)
        plane[pad - 1, pad - 1 : pad + w + 1] = plane[pad + h, pad - 1 : pad + w + 1] = yellow
        plane[pad - 1 : pad + h + 1, pad - 1] = plane[pad - 1 : pad + h + 1, pad + w] = yellow
        shown = np.full_like(plane[:, :w], 255)
        shown[pad : pad + h] = np.where(valid[..., None], rgb, np.array([255, 0, 255], np.uint8))
        gap = np.full((plane.shape[0], 6, 3), 255, np.uint8)
        rows.append(np.concatenate([shown, gap, plane], 1))
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
    img = Image.fromarray(np.concatenate(rows[:-1], 0))
    img.convert("P", palette=Image.ADAPTIVE, colors=256).save(path, optimize=True)
    log(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--strip", default=None, help="also write the picture strip here (PNG)")
    args = ap.parse_args()
    # stdout carries only the JSON result: keep the library's debug lines out of it
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.strip:
        write_strip(args.strip)
    tx.synthesize_tile(tx.TextureModel.fit(*exemplar("noise", {}), texel_m=0.02), (0, 0), 0)  # numba: load/compile
    rows = {}
    for name, (family, params) in TEXTURES.items():
        log(f"{name} ...")
        rgb, valid = exemplar(family, params)
        fit = time_ms(lambda: tx.TextureModel.fit(rgb, valid, texel_m=0.02), args.repeats)
        model = tx.TextureModel.fit(rgb, valid, texel_m=0.02)
        cold, cold_cpu = [], []
        for r in range(args.repeats):
            fresh = tx.TextureModel.fit(rgb, valid, texel_m=0.02)
            c0, t0 = time.process_time(), time.perf_counter()
            tx.synthesize_tile(fresh, (40 + 7 * r, -35 + 5 * r), 1)
            cold.append((time.perf_counter() - t0) * 1e3)
            cold_cpu.append((time.process_time() - c0) * 1e3)
        stream, stream_cpu = [], []
        for r in range(max(3, args.repeats // 3)):
            fresh = tx.TextureModel.fit(rgb, valid, texel_m=0.02)
            c0, t0 = time.process_time(), time.perf_counter()
            block = [[tx.synthesize_tile(fresh, (20 + i, 30 + j), r) for j in range(8)] for i in range(8)]
            stream.append((time.perf_counter() - t0) * 1e3 / 64)
            stream_cpu.append((time.process_time() - c0) * 1e3 / 64)
        mosaic = np.concatenate([np.concatenate(row, 1) for row in block], 0)
        # the plain-Python path (TextureModel.reference_region, the compiled path's reference), same tiles
        ref_stream_cpu = []
        for r in range(max(2, args.repeats // 5)):
            fresh = tx.TextureModel.fit(rgb, valid, texel_m=0.02)
            c0 = time.process_time()
            ref_block = [[fresh.reference_region((64 * (20 + i), 64 * (30 + j)), (64, 64), r) for j in range(8)]
                         for i in range(8)]
            ref_stream_cpu.append((time.process_time() - c0) * 1e3 / 64)
        assert np.array_equal(np.concatenate([np.concatenate(row, 1) for row in ref_block], 0), np.concatenate(
            [np.concatenate([tx.synthesize_tile(fresh, (20 + i, 30 + j), r) for j in range(8)], 1)
             for i in range(8)], 0))  # the same texels
        cont = time_ms(lambda: tx.continue_exemplar(tx.TextureModel.fit(rgb, valid, texel_m=0.02), 2), 5)
        filled_pp = np.clip(np.rint(tx.push_pull_fill(rgb.astype(np.float32), valid.astype(np.float32))), 0, 255)
        filled_pp = filled_pp.astype(np.uint8)
        base_tile = time_ms(lambda: tile_the_exemplar(filled_pp, (40, -35)), args.repeats * 20)
        base_pp = time_ms(
            lambda: tx.push_pull_fill(rgb.astype(np.float32), valid.astype(np.float32)), args.repeats
        )
        ours_fill = tx.continue_exemplar(model, 2)
        hole = ~valid
        hole[:, :2] = hole[:, -2:] = False
        base_mosaic = np.concatenate([tile_the_exemplar(filled_pp, (0, j)) for j in range(6)], 1)
        rows[name] = {
            "kind": model.kind,
            "lattice": model.lattice.kind,
            "periods_px": [round(p, 2) for p in model.lattice.periods_px],
            "fit_ms": fit["median_ms"],
            "tile_cold_ms": round(statistics.median(cold), 3),
            "tile_cold_cpu_ms": round(statistics.median(cold_cpu), 3),
            "tile_stream_ms": round(statistics.median(stream), 3),
            "tile_stream_cpu_ms": round(statistics.median(stream_cpu), 3),
            "reference_tile_stream_cpu_ms": round(statistics.median(ref_stream_cpu), 3),
            "continue_ms": cont["median_ms"],
            "baseline_tile_exemplar_ms": base_tile["median_ms"],
            "baseline_push_pull_ms": base_pp["median_ms"],
            "hole_grad_ratio": round(grad(ours_fill, hole) / grad(rgb, valid), 3),
            "baseline_push_pull_hole_grad_ratio": round(grad(filled_pp, hole) / grad(rgb, valid), 3),
            "tile_border_step": round(border_step(mosaic, 64), 3),
            "cell_cut_step": round(cut_step(mosaic, 20 * 64, 30 * 64, model), 3),
            "baseline_exemplar_border_step": round(border_step(base_mosaic[:, : 192 * 2], 192), 3),
        }
    emit(
        {
            "benchmark": "texture",
            "median_ms": round(statistics.median(r["tile_cold_ms"] for r in rows.values()), 3),
            "baseline_median_ms": round(statistics.median(r["baseline_tile_exemplar_ms"] for r in rows.values()), 3),
            "tile_px": 64,
            "exemplar_px": [128, 192],
            "textures": rows,
        }
    )


if __name__ == "__main__":
    main()
