"""What the novel-view GMSD gives images that are *not* the generator's: a scale for issue 10's GMSD <= 0.12.

For each procedural item's demo loop (the `spatia eval novel-view` protocol: novel pixels of frames with >= 40 %
novel pixels, every ``--stride``-th path frame), the truth is compared with images made from the truth itself:

- ``yaw_0.25deg`` / ``side_1cm`` / ``side_5cm``: the exact render from a camera turned 0.25 deg, or moved 1 or 5 cm
  to its right: perfect content, slightly off the pixel grid;
- ``blur_1px`` / ``blur_3px``: the truth blurred (Gaussian sigma in pixels): right structure, less detail;
- ``tiles_swapped_16px``: the truth with each 16x16 tile swapped with its right neighbour: the same texture
  statistics, colours and layout at 16 px, another phase (what a plausible invented texture is at best);
- ``mean_colour``: one flat colour (the mean over the novel pixels).

Each value is the mean over graded frames of ``model.eval.novel_view.gmsd`` (the protocol's own metric); the
masked PSNR (``masked_psnr``, dB) of the same images is reported beside it (``psnr``).
The baseline in the same run is the generator's figure from `spatia eval novel-view` (not recomputed here).

    python benchmarks/gmsd_scale.py [--items room house courtyard] [--width 320 --height 180] [--stride 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, load_average, log  # noqa: E402


def _swap_tiles(rgb, tile_px: int):
    """``rgb`` [H, W, 3] with each ``tile_px`` square tile swapped with its right neighbour (pairs of columns)."""
    out = rgb.copy()
    h, w = (rgb.shape[0] // tile_px) * tile_px, (rgb.shape[1] // (2 * tile_px)) * 2 * tile_px
    tiles = out[:h, :w].reshape(h // tile_px, tile_px, w // tile_px, tile_px, 3)
    out[:h, :w] = tiles[:, :, [j ^ 1 for j in range(w // tile_px)]].reshape(h, w, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", nargs="+", default=["room", "house", "courtyard"])
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--stride", type=int, default=10, help="every n-th path frame")
    args = ap.parse_args()

    import cv2
    import numpy as np

    from spatia.model.eval.novel_view import (
        NOVEL_FRAME_MIN_SHARE, _camera_rotation, gmsd, masked_psnr, parse_items, prepare_item, truth_view,
    )

    def moved_right(T, metres: float):
        out = T.copy()
        out[:3, 3] += T[:3, 0] * metres
        return out

    rows = {}
    for item in parse_items(args.items):
        log(f"{item.name}: preparing")
        p = prepare_item(item, args.width, args.height)
        values: dict[str, list[float]] = {}
        psnr: dict[str, list[float]] = {}
        for i in range(args.stride, len(p.path_world), args.stride):
            mask = p.novel[i]
            if mask.mean() < NOVEL_FRAME_MIN_SHARE:
                continue
            truth = p.truth(i)[0]
            T = p.scene_from_world @ p.path_world[i]  # scene frame
            K = p.intrinsics
            made = {
                "yaw_0.25deg": truth_view(p.scene, K, T @ _camera_rotation(0.25, 0.0))[0],
                "side_1cm": truth_view(p.scene, K, moved_right(T, 0.01))[0],
                "side_5cm": truth_view(p.scene, K, moved_right(T, 0.05))[0],
                "blur_1px": cv2.GaussianBlur(truth, (0, 0), 1.0),
                "blur_3px": cv2.GaussianBlur(truth, (0, 0), 3.0),
                "tiles_swapped_16px": _swap_tiles(truth, 16),
                "mean_colour": np.broadcast_to(truth[mask].mean(0).astype(np.uint8), truth.shape).copy(),
            }
            for name, image in made.items():
                values.setdefault(name, []).append(gmsd(image, truth, mask))
                psnr.setdefault(name, []).append(masked_psnr(image, truth, mask))
        rows[item.name] = {"gmsd": {k: round(float(np.mean(v)), 3) for k, v in values.items()},
                           "psnr": {k: round(float(np.mean(v)), 2) for k, v in psnr.items()},
                           "frames": len(values.get("blur_1px", []))}
    emit({"benchmark": "gmsd_scale", "width": args.width, "height": args.height, "stride": args.stride,
          "load_average": load_average(), "items": rows})


if __name__ == "__main__":
    main()
