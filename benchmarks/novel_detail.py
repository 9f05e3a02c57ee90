"""Where the invented surfaces lose detail (issue 10: gradient ratio): per item, per surface kind and per pixel source.

Flies each item's loop with the layout fill (``spatia eval novel-view``'s protocol: the same items, novel pixels,
graded frames and gradient measure) and splits the gradient sums of the novel pixels of graded frames by

- surface kind, from the truth's hit object (floor / wall / ceiling / ground / sky / object: furniture, windows,
  doors). The kind is read from the scene's object names: this is a benchmark, not the fill;
- the source of the pixel in the generated frame: ``memory`` (the memory's render: points invented by earlier
  frames or observed), ``warp`` (a reference frame warped in), ``layout`` (a plane texture painted this frame),
  ``pushpull`` (the colour fill of what is left) and ``coarse`` (the legacy fill shown while the layout is fitted).

- the geometry of the pixel (``geom:``): the generated depth against the truth's, ``front`` (the generated surface
  more than 20 % nearer: a guessed wall where the truth sees on, into a room beyond a doorway), ``match`` (within
  20 %), ``behind`` (more than 25 % farther) or ``open`` (either depth missing: the sky, a miss). The geometry
  cells also carry the ratio at 4x and 8x averaging (``ratio_4x``, ``ratio_8x``): at which scale detail is lost.

Each cell prints ``[pred, truth]`` sums of forward-difference gradient magnitude at full and half resolution
(half: a half pixel counts where all four of its pixels are in the cell) and their ratios. A ``layout_only``
column re-renders each graded frame with the plane textures alone on every novel pixel the layout paints (no
memory, no warps): the texture's own detail, against which the frame's loss in the other sources shows.

    python benchmarks/novel_detail.py --items room house courtyard --width 320 --height 180 --setting demo
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict, deque

import numpy as np

KINDS = ("floor", "wall", "ceiling", "ground", "sky", "object")
GEOMS = ("front", "match", "behind", "open")
FRONT_REL = 0.8  # generated depth below this share of the truth's: a surface guessed in front of what is there
BEHIND_REL = 1.25


def object_kinds(scene) -> np.ndarray:
    """``[O + 1]`` kind index per scene object (last entry: a miss, sky) from its name."""
    out = []
    for o in scene.objects:
        n = o.name
        if n == "sky" or o.background and n != "ground":
            k = "sky"
        elif n in ("ground", "paving"):
            k = "ground"
        elif n.endswith("floor") or n == "floor_rim":
            k = "floor"
        elif n == "ceiling":
            k = "ceiling"
        elif n.startswith(("wall_", "inner_")) or n in ("building_left", "building_right", "building_back",
                                                        "building_front"):
            k = "wall"
        else:
            k = "object"
        out.append(KINDS.index(k))
    return np.asarray(out + [KINDS.index("sky")], np.int64)


def _key(c2w: np.ndarray) -> bytes:
    return np.round(np.asarray(c2w, np.float64), 6).tobytes()


def instrument(records: dict) -> None:
    """Wrap the geometric generator's fill steps to record each target frame's pixel sources (keyed by pose)."""
    from spatia.model import geometric as g

    cls = g.GeometricGenerator
    orig_refs, orig_layout = cls._apply_references, cls._layout_fill

    def apply_refs(self, rgb, depth, valid, c2w, request, references, *a):
        out = orig_refs(self, rgb, depth, valid, c2w, request, references, *a)
        records.setdefault(_key(c2w), {})["refs"] = (valid.copy(), out.copy())
        return out

    def layout_fill(self, state, rgb, colored, depth, valid, c2w, *a, **k):
        filled, col2 = orig_layout(self, state, rgb, colored, depth, valid, c2w, *a, **k)
        rec = records.setdefault(_key(c2w), {})
        rec["layout"] = (valid.copy(), colored.copy(), col2.copy())
        if records.get("_layout_only"):
            # the plane textures alone on every pixel (no memory, no warps): the texture's own detail
            only = np.zeros_like(rgb)
            none = np.zeros_like(valid)
            _, painted = orig_layout(self, state, only, none.copy(), np.zeros_like(depth), none, c2w, *a[:2])
            rec["only"] = (only, painted)
        return filled, col2

    cls._apply_references = apply_refs
    cls._layout_fill = layout_fill


def sources(rec: dict | None, shape) -> tuple[np.ndarray, list[str]]:
    names = ["memory", "warp", "layout", "pushpull", "coarse"]
    src = np.full(shape, names.index("coarse"), np.int64)
    if rec is None or "layout" not in rec:
        return src, names
    valid, colored_in, colored_out = rec["layout"]
    src[:] = names.index("pushpull")
    src[colored_out & ~colored_in] = names.index("layout")
    src[colored_in & ~valid] = names.index("warp")
    src[valid] = names.index("memory")
    return src, names


def geometry_class(pred_depth_m: np.ndarray | None, truth_depth_m: np.ndarray) -> np.ndarray:
    """``[H, W]`` index into ``GEOMS`` of each pixel: the generated z-depth against the truth's."""
    out = np.full(truth_depth_m.shape, GEOMS.index("open"), np.int64)
    if pred_depth_m is None:
        return out
    p, t = np.asarray(pred_depth_m, np.float64), np.asarray(truth_depth_m, np.float64)
    both = (p > 0) & (t > 0) & np.isfinite(p) & np.isfinite(t)
    out[both] = GEOMS.index("match")
    out[both & (p < FRONT_REL * t)] = GEOMS.index("front")
    out[both & (p > BEHIND_REL * t)] = GEOMS.index("behind")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", nargs="+", default=["room", "house", "courtyard"])
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--setting", default="demo")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--no-layout-only", action="store_true", help="skip the texture-only render")
    ap.add_argument("--per-frame", action="store_true",
                    help="per graded frame: [frame, share of novel pixels in front of the truth (geometry 'front'), "
                         "their share of the truth's gradient, the frame's ratio full, half]")
    ap.add_argument("--save-frames", default=None, help="directory: save every graded frame pred|truth PNG")
    args = ap.parse_args()

    from spatia.model import make_generator
    from spatia.model.eval import novel_view as nv
    from spatia.world.engine import Engine

    records: dict = {}
    instrument(records)
    layout_only = not args.no_layout_only
    result = {"width": args.width, "height": args.height, "setting": args.setting, "items": {}}
    for spec in args.items:
        t0 = time.perf_counter()
        item = nv.parse_items([spec])[0]
        prep = nv.prepare_item(item, args.width, args.height, **({"frames": args.frames} if args.frames else {}))
        kinds_of = object_kinds(prep.scene)
        records.clear()
        records["_layout_only"] = layout_only
        world = prep.build_world()
        engine = Engine(world, make_generator("geometric", fill="layout"), nv.SETTINGS[args.setting])
        sums = defaultdict(lambda: np.zeros(4))  # (kind, source) -> [pred, truth, pred half, truth half]
        counts = defaultdict(int)
        only_sums = defaultdict(lambda: np.zeros(4))  # kind -> the same for the texture-only render
        only_counts = defaultdict(int)
        geom_sums = defaultdict(lambda: np.zeros(4))  # (geometry, kind) -> the same
        geom_counts = defaultdict(int)
        geom_coarse = defaultdict(lambda: np.zeros(4))  # (geometry, kind) -> [pred, truth] at 4x, then at 8x
        per_frame = []
        psnrs = []  # the eval's PSNR: per graded frame on its novel pixels, then the mean
        stream = engine.generate(prep.path_world[1:], seed=0)
        for i in range(1, len(prep.path_world)):
            frame = next(stream)
            novel = prep.novel[i]
            if novel.mean() < nv.NOVEL_FRAME_MIN_SHARE:
                continue
            truth_rgb, truth_depth, _ = prep.truth(i)
            hits = prep.scene.cast(prep.intrinsics, prep.scene_from_world @ prep.path_world[i])
            kind = kinds_of[np.where(hits.object_id >= 0, hits.object_id, len(kinds_of) - 1)]
            rec = records.get(_key(frame.c2w))
            src, names = sources(rec, novel.shape)
            yp, yt = nv.luminance(frame.rgb), nv.luminance(truth_rgb)
            gp, gt = nv.gradient_magnitude(yp), nv.gradient_magnitude(yt)
            gp2, gt2 = nv.gradient_magnitude(nv._half(yp)), nv.gradient_magnitude(nv._half(yt))
            # coarser scales for the geometry cells: 4x and 8x averaged (where the detail a wall lacks sits)
            yp4, yt4 = nv._half(nv._half(yp)), nv._half(nv._half(yt))
            gp4, gt4 = nv.gradient_magnitude(yp4), nv.gradient_magnitude(yt4)
            gp8, gt8 = nv.gradient_magnitude(nv._half(yp4)), nv.gradient_magnitude(nv._half(yt4))
            for k in range(len(KINDS)):
                for s in range(len(names)):
                    m = novel & (kind == k) & (src == s)
                    if not m.any():
                        continue
                    m2 = nv._half_mask(m)
                    acc = sums[(KINDS[k], names[s])]
                    acc += (gp[m].sum(), gt[m].sum(), gp2[m2].sum(), gt2[m2].sum())
                    counts[(KINDS[k], names[s])] += int(m.sum())
            psnrs.append(nv.masked_psnr(frame.rgb, truth_rgb, novel))
            geom = geometry_class(frame.depth_m, truth_depth)
            for g in range(len(GEOMS)):
                for k in range(len(KINDS)):
                    m = novel & (geom == g) & (kind == k)
                    if m.any():
                        m2 = nv._half_mask(m)
                        geom_sums[(GEOMS[g], KINDS[k])] += (gp[m].sum(), gt[m].sum(), gp2[m2].sum(), gt2[m2].sum())
                        m4 = nv._half_mask(m2)
                        m8 = nv._half_mask(m4)
                        geom_coarse[(GEOMS[g], KINDS[k])] += (gp4[m4].sum(), gt4[m4].sum(), gp8[m8].sum(),
                                                              gt8[m8].sum())
                        geom_counts[(GEOMS[g], KINDS[k])] += int(m.sum())
            if args.per_frame:
                front = novel & (geom == GEOMS.index("front"))
                n2 = nv._half_mask(novel)
                per_frame.append([i, round(float(front.mean() / novel.mean()), 3),
                                  round(float(gt[front].sum() / max(gt[novel].sum(), 1e-9)), 3),
                                  round(float(gp[novel].sum() / max(gt[novel].sum(), 1e-9)), 3),
                                  round(float(gp2[n2].sum() / max(gt2[n2].sum(), 1e-9)), 3)])
            if rec is not None and "only" in rec:
                only, painted = rec["only"]
                yo = nv.luminance(only)
                go, go2 = nv.gradient_magnitude(yo), nv.gradient_magnitude(nv._half(yo))
                for k in range(len(KINDS)):
                    m = novel & (kind == k) & painted
                    if m.any():
                        m2 = nv._half_mask(m)
                        only_sums[KINDS[k]] += (go[m].sum(), gt[m].sum(), go2[m2].sum(), gt2[m2].sum())
                        only_counts[KINDS[k]] += int(m.sum())
            if args.save_frames:
                import cv2
                from pathlib import Path

                d = Path(args.save_frames)
                d.mkdir(parents=True, exist_ok=True)
                vis = np.concatenate([frame.rgb, truth_rgb], 1)
                cv2.imwrite(str(d / f"{item.name}_{i:03d}.png"), vis[..., ::-1])
        deque(stream, maxlen=0)  # the last clip's memory update runs on the final next()
        cells = {}
        tot = np.zeros(4)
        by_kind = defaultdict(lambda: np.zeros(4))
        by_src = defaultdict(lambda: np.zeros(4))
        for (k, s), v in sums.items():
            tot += v
            by_kind[k] += v
            by_src[s] += v
        npx = sum(counts.values())

        def cell(v, n):
            return {"share": round(n / max(npx, 1), 3), "truth_grad_share": round(v[1] / max(tot[1], 1e-9), 3),
                    "ratio": round(v[0] / v[1], 3) if v[1] else None,
                    "ratio_2x": round(v[2] / v[3], 3) if v[3] else None}

        cells["all"] = cell(tot, npx)
        for k, v in by_kind.items():
            cells[f"kind:{k}"] = cell(v, sum(c for (kk, _), c in counts.items() if kk == k))
        for s, v in by_src.items():
            cells[f"src:{s}"] = cell(v, sum(c for (_, ss), c in counts.items() if ss == s))
        for (k, s), v in sorted(sums.items()):
            cells[f"{k}/{s}"] = cell(v, counts[(k, s)])
        by_geom = defaultdict(lambda: np.zeros(4))
        for (g, _), v in geom_sums.items():
            by_geom[g] += v
        for g, v in by_geom.items():
            cells[f"geom:{g}"] = cell(v, sum(c for (gg, _), c in geom_counts.items() if gg == g))
        for (g, k), v in sorted(geom_sums.items()):
            cells[f"geom:{g}/{k}"] = cell(v, geom_counts[(g, k)])
            w = geom_coarse[(g, k)]
            cells[f"geom:{g}/{k}"]["ratio_4x"] = round(w[0] / w[1], 3) if w[1] else None
            cells[f"geom:{g}/{k}"]["ratio_8x"] = round(w[2] / w[3], 3) if w[3] else None
        for k, v in only_sums.items():
            cells[f"only:{k}"] = cell(v, only_counts[k])
        if args.per_frame:
            cells["per_frame"] = per_frame
        cells["psnr"] = round(float(np.mean(psnrs)), 3) if psnrs else None
        cells["wall_s"] = round(time.perf_counter() - t0, 1)
        result["items"][item.name] = cells
        print(json.dumps({item.name: cells}), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
