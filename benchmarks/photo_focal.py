"""Focal length of a photo without intrinsics: the estimator's error on procedural renders and the official cases.

Tuning set: procedural scenes (room, house, courtyard) rendered at several horizontal FOVs, pitched down and
yawed at the start pose, at two widths (16:9). The estimator (``model.fill.geometry.photo.estimate_focal_px``) gets only
the RGB. Held out: other seeds of the same scenes (``--holdout-seeds``), and the official cases
(``assets/cases/case_N``: ``img.jpg`` with ``intrinsics.txt``, normalised fx fy cx cy), never used for tuning.
Error = estimated fx / true fx - 1; "miss" = no focal measured (the layout then uses the default 60 deg and falls
back to the planar prior). Baselines in the same run, same images: the estimator before session 7 (the horizon
sweep, else the orthogonal vanishing-point pair: ``sweep``) and the default 60 deg FOV.

    python benchmarks/photo_focal.py [--fovs 50 60 75 90] [--widths 320 640] [--pitches 0 10 20] [--yaws 0 30]

Renders are cached under ``--cache`` (default /tmp/spatia_photo_focal) so that re-runs time only the estimator.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, log  # noqa: E402
from photo_layout import _pitched  # noqa: E402  (the same pitched-and-yawed first camera)


def _fov(fx: float, width: int) -> float:
    return math.degrees(2 * math.atan(0.5 * width / fx))


def _stats(rows: list[dict], key: str = "err") -> dict:
    errs = [abs(r[key]) for r in rows if r[key] is not None]
    out = {
        "items": len(rows),
        "measured_share": round(len(errs) / max(1, len(rows)), 2),
        "abs_err_median": round(statistics.median(errs), 3) if errs else None,
        "abs_err_mean": round(statistics.mean(errs), 3) if errs else None,
        "within_5pct": round(sum(e <= 0.05 for e in errs) / max(1, len(rows)), 2),
        "within_10pct": round(sum(e <= 0.10 for e in errs) / max(1, len(rows)), 2),
        "over_15pct": sum(e > 0.15 for e in errs),
    }
    if key == "err":  # the same items with the sweep (the estimator before) and with the default FOV
        out["sweep"] = _stats(rows, "sweep_err")
        out["baseline_abs_err_median"] = round(statistics.median(abs(r["baseline_err"]) for r in rows), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", nargs="+", default=["room", "house", "courtyard"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--holdout-seeds", nargs="*", type=int, default=[1])
    ap.add_argument("--fovs", nargs="+", type=float, default=[50.0, 60.0, 75.0, 90.0])
    ap.add_argument("--widths", nargs="+", type=int, default=[320, 640])
    ap.add_argument("--pitches", nargs="+", type=float, default=[0.0, 10.0, 20.0])
    ap.add_argument("--yaws", nargs="+", type=float, default=[0.0, 30.0])
    ap.add_argument("--case-widths", nargs="*", type=int, default=[320, 640, 0], help="0 = the case's own size")
    ap.add_argument("--cache", default="/tmp/spatia_photo_focal")
    args = ap.parse_args()

    import cv2
    import structlog
    from tqdm import tqdm

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout carries only the JSON

    from spatia.model.fill.geometry.photo import (
        PhotoLayoutConfig,
        analyse_lines,
        estimate_focal_px,
        focal_from_horizon_sweep,
        focal_from_vps,
    )

    def sweep_focal_px(img: np.ndarray) -> float | None:
        """The estimator before session 7 (c38b448): the horizon sweep's focal, else the vanishing-point pair's."""
        cfg = PhotoLayoutConfig()
        small, s, seg, vps, labels = analyse_lines(img, cfg)
        h, w = small.shape[:2]
        f = focal_from_horizon_sweep(seg, labels, vps, w, h, cfg) or focal_from_vps(vps, w, h, cfg)
        return None if f is None else f / s
    from spatia.world.camera import DEFAULT_FOV_DEG, Intrinsics
    from spatia.world.scenes import make_scene

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    items = [(s, seed, fov, wd, p, y, seed in args.holdout_seeds)
             for s in args.scenes for seed in args.seeds + list(args.holdout_seeds) for fov in args.fovs
             for wd in args.widths for p in args.pitches for y in args.yaws]
    rows, scenes, est_ms = [], {}, []
    for name, seed, fov, wd, pitch, yaw, held in tqdm(items, desc="focal", file=sys.stderr):
        ht = wd * 9 // 16
        K = Intrinsics.from_fov(fov, wd, ht)
        f = cache / f"{name}_{seed}_{fov:g}_{wd}_{pitch:g}_{yaw:g}.png"
        if f.exists():
            rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        else:
            scene = scenes.setdefault((name, seed), make_scene(name, seed))
            rgb, _ = scene.render(K, _pitched(scene.start_pose(), pitch, yaw))
            cv2.imwrite(str(f), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        t0 = time.perf_counter()
        fx = estimate_focal_px(rgb)
        est_ms.append((time.perf_counter() - t0) * 1e3)
        base_fx = Intrinsics.from_fov(DEFAULT_FOV_DEG, wd, ht).fx
        sw = sweep_focal_px(rgb)
        rows.append({
            "scene": name, "seed": seed, "held_out": held, "fov_deg": fov, "width": wd, "pitch_deg": pitch,
            "yaw_deg": yaw, "fx_est": None if fx is None else round(fx, 1),
            "fov_est_deg": None if fx is None else round(_fov(fx, wd), 1),
            "err": None if fx is None else round(fx / K.fx - 1.0, 3), "baseline_err": round(base_fx / K.fx - 1.0, 3),
            "sweep_err": None if sw is None else round(sw / K.fx - 1.0, 3),
        })
    cases = []
    for case in sorted((ROOT / "assets" / "cases").glob("case_*")):
        img = cv2.cvtColor(cv2.imread(str(case / "img.jpg")), cv2.COLOR_BGR2RGB)
        fxn = float((case / "intrinsics.txt").read_text().strip().strip("[]").split()[0])
        for wd in args.case_widths:
            im = img if wd == 0 else cv2.resize(img, (wd, round(wd * img.shape[0] / img.shape[1])),
                                                interpolation=cv2.INTER_AREA)
            fx = estimate_focal_px(im)
            sw = sweep_focal_px(im)
            true_fov = _fov(fxn * im.shape[1], im.shape[1])
            cases.append({"case": case.name, "width": im.shape[1], "fov_true_deg": round(true_fov, 1),
                          "fov_est_deg": None if fx is None else round(_fov(fx, im.shape[1]), 1),
                          "err": None if fx is None else round(fx / (fxn * im.shape[1]) - 1.0, 3),
                          "sweep_fov_deg": None if sw is None else round(_fov(sw, im.shape[1]), 1)})
            log(str(cases[-1]))
    tune = [r for r in rows if not r["held_out"]]
    held = [r for r in rows if r["held_out"]]
    emit({
        "benchmark": "photo_focal",
        "tuning": _stats(tune),
        "held_out_seeds": _stats(held) if held else None,
        "by_fov": {f"{fov:g}": _stats([r for r in tune if r["fov_deg"] == fov]) for fov in args.fovs},
        "by_width": {str(wd): _stats([r for r in tune if r["width"] == wd]) for wd in args.widths},
        "by_scene": {s: _stats([r for r in tune if r["scene"] == s]) for s in args.scenes},
        "by_pitch": {f"{p:g}": _stats([r for r in tune if r["pitch_deg"] == p]) for p in args.pitches},
        "cases_held_out": cases,
        "median_ms": round(statistics.median(est_ms), 1),
        "rows": rows,
    })


if __name__ == "__main__":
    main()
