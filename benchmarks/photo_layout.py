"""Photo layout accuracy and speed: one RGB render handed over as a plain photo, graded against exact truth.

Items: procedural scenes (room, house, courtyard) x seeds x camera pitch/yaw at the start pose, rendered at
``--width x --height`` with a 75 degree FOV. The estimator gets only the RGB (no depth, no intrinsics). Per item:
depth AbsRel on real surfaces (truth > 0 and < 60 m: the sky dome and far ground excluded), the up-vector error
(degrees), the focal error (share) and the time. Baseline (same run, same pixels): today's planar prior with the
default 60 degree intrinsics, which is what a photo got before.

    python benchmarks/photo_layout.py [--seeds 0 1] [--pitches 0 6 12 20] [--yaws 0 35] [--fovs 50 75 90]
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


def _pitched(c2w: np.ndarray, pitch_down_deg: float, yaw_deg: float) -> np.ndarray:
    p, y = math.radians(pitch_down_deg), math.radians(yaw_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    T = c2w.copy()
    T[:3, :3] = ry @ c2w[:3, :3] @ rx
    return T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", nargs="+", default=["room", "house", "courtyard"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--pitches", nargs="+", type=float, default=[0.0, 6.0, 12.0, 20.0])
    ap.add_argument("--yaws", nargs="+", type=float, default=[0.0, 35.0])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fovs", nargs="+", type=float, default=[75.0], help="true horizontal FOVs rendered")
    ap.add_argument("--default-fov", type=float, default=None,
                    help="PhotoLayoutConfig.default_fov_deg (the focal assumed when the lines do not give one)")
    ap.add_argument("--unmeasured-conf", type=float, default=None,
                    help="PhotoLayoutConfig.unmeasured_focal_confidence (below min_confidence: planar prior)")
    ap.add_argument("--unmeasured-conf-open", type=float, default=None,
                    help="PhotoLayoutConfig.unmeasured_focal_confidence_open (the same for open ground: sky or a "
                         "backdrop seen)")
    ap.add_argument("--floor-patch-min-share", type=float, default=None,
                    help="PhotoLayoutConfig.floor_patch_min_share (> 1: not-floor patches under floor stay objects)")
    ap.add_argument("--max-leg-width", type=float, default=None,
                    help="PhotoLayoutConfig.max_leg_width_m (0: furniture's legs stand to the ceiling)")
    args = ap.parse_args()

    import structlog
    from tqdm import tqdm

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout carries only the JSON

    import dataclasses

    from spatia.model.fill.geometry.photo import PhotoLayoutConfig, PhotoLayoutDepth
    from spatia.world.camera import Intrinsics
    from spatia.world.depth import default_intrinsics, planar_prior_depth
    from spatia.world.scenes import make_scene

    over = {k: v for k, v in (("default_fov_deg", args.default_fov),
                              ("unmeasured_focal_confidence", args.unmeasured_conf),
                              ("unmeasured_focal_confidence_open", args.unmeasured_conf_open),
                              ("floor_patch_min_share", args.floor_patch_min_share),
                              ("max_leg_width_m", args.max_leg_width)) if v is not None}
    config = dataclasses.replace(PhotoLayoutConfig(), **over)
    items = [(s, seed, p, y, fov) for s in args.scenes for seed in args.seeds for p in args.pitches for y in args.yaws
             for fov in args.fovs]
    rows = []
    for name, seed, pitch, yaw, fov in tqdm(items, desc="photo layout", file=sys.stderr):
        K = Intrinsics.from_fov(fov, args.width, args.height)
        scene = make_scene(name, seed)
        c2w = _pitched(scene.start_pose(), pitch, yaw)
        rgb, truth = scene.render(K, c2w)
        up_true = -(c2w[:3, :3].T @ np.array([0.0, 1.0, 0.0]))
        est = PhotoLayoutDepth(config)
        t0 = time.perf_counter()
        d = est.estimate_uncalibrated(rgb)
        ms = (time.perf_counter() - t0) * 1e3
        layout = est.last_layout
        real = (truth > 0) & (truth < 60.0)
        absrel = float(np.mean(np.abs(d.depth_m[real] - truth[real]) / truth[real]))
        base = planar_prior_depth(default_intrinsics(args.width, args.height))
        base_absrel = float(np.mean(np.abs(base[real] - truth[real]) / truth[real]))
        up_err = math.degrees(math.acos(float(np.clip(layout.up_cam @ up_true, -1, 1))))
        rows.append({
            "scene": name, "seed": seed, "pitch_deg": pitch, "yaw_deg": yaw, "fov_deg": fov,
            "absrel": round(absrel, 3), "baseline_absrel": round(base_absrel, 3),
            "fell_back": d.source != "photo_layout", "confidence": round(layout.confidence, 2),
            "up_err_deg": round(up_err, 2), "focal_source": layout.focal_source,
            "focal_err": round(layout.intrinsics.fx / K.fx - 1.0, 3) if d.intrinsics is not None else None,
            "ms": round(ms, 1),
        })
        log(str(rows[-1]))

    def summary(sel):
        return {
            "items": len(sel),
            "absrel_mean": round(statistics.mean(r["absrel"] for r in sel), 3),
            "absrel_median": round(statistics.median(r["absrel"] for r in sel), 3),
            "baseline_absrel_mean": round(statistics.mean(r["baseline_absrel"] for r in sel), 3),
            "up_err_deg_median": round(statistics.median(r["up_err_deg"] for r in sel), 2),
            "focal_measured_share": round(sum(r["focal_source"] == "vanishing_points" for r in sel) / len(sel), 2),
            "fallback_share": round(sum(r["fell_back"] for r in sel) / len(sel), 2),
        }

    pitched = [r for r in rows if r["pitch_deg"] > 0]
    emit({
        "benchmark": "photo_layout",
        "size": [args.width, args.height],
        "config_overrides": over,
        "all": summary(rows),
        "pitched": summary(pitched) if pitched else None,
        "per_scene": {s: summary([r for r in rows if r["scene"] == s]) for s in args.scenes},
        "median_ms": round(statistics.median(r["ms"] for r in rows), 1),
        "rows": rows,
    })


if __name__ == "__main__":
    main()
