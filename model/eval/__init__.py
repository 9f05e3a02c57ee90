"""The evaluation harness (GitHub issue 6): the paper's Tables 2-7 for any generator on the bundled test sets.

- ``metrics``: LPIPS (local weights only), Match Accuracy (RoMa or the classical ``sift-magsac`` variant),
  camera-control error (degrees / centimetres). PSNR and SSIM are ``world.metrics``.
- ``testsets``: procedural scenes (exact geometry) and the official Spatia cases; the closed-loop camera paths.
- ``protocols``: closed-loop, long-horizon, ablations (Tables 4, 5, 7) and ground-truth.
- ``report``: JSON, Markdown tables in the paper's layout, PNG plots; ``run_protocol`` ties them together.

Run it with ``spatia eval PROTOCOL`` (``spatia/cmd_eval.py``).
"""

from __future__ import annotations

from typing import Any

from spatia.model.eval.protocols import (
    EvalConfig,
    Metrics,
    ablation_inputs,
    ablation_k,
    ablation_voxel,
    closed_loop,
    ground_truth,
    long_horizon,
)

PROTOCOLS = ("closed-loop", "long-horizon", "ablation", "ground-truth")


def run_protocol(name: str, config: EvalConfig, metrics: Metrics | None = None, command: str = "",
                 clips: tuple[int, ...] = (2, 4, 6), tables: tuple[int, ...] = (4, 5, 7),
                 ks: tuple[int, ...] = (1, 3, 5, 7), voxel_sides_m: tuple[float, ...] = (0.01, 0.03, 0.05, 0.07)
                 ) -> list[dict[str, Any]]:
    """Run one protocol; returns its results (one per table; ``ablation`` gives one per requested table), each
    stamped with the command line, the configuration and what the metrics could and could not compute."""
    from spatia.world.errors import InvalidInputError

    metrics = metrics or Metrics()
    if name == "closed-loop":
        results = [closed_loop(config, metrics)]
    elif name == "long-horizon":
        results = [long_horizon(config, clips, metrics)]
    elif name == "ground-truth":
        results = [ground_truth(config, metrics)]
    elif name == "ablation":
        unknown = set(tables) - {4, 5, 7}
        if unknown:
            raise InvalidInputError(f"ablation tables are 4, 5 and 7; got {sorted(unknown)}")
        run = {4: lambda: ablation_inputs(config, metrics), 5: lambda: ablation_k(config, ks, metrics),
               7: lambda: ablation_voxel(config, voxel_sides_m, metrics)}
        results = [run[t]() for t in tables]
    else:
        raise InvalidInputError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    code = code_version()
    for r in results:
        r["command"] = command
        r["code_version"] = code
        r["config"] = config.to_json()
        r["metrics"] = metrics.describe()
    return results


def code_version() -> dict[str, Any]:
    """The commit the numbers came from, and whether tracked files differed from it (the world core is shared)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    changed = [line[3:] for line in dirty.stdout.splitlines() if line.strip()]
    return {"commit": head.stdout.strip(), "dirty": bool(changed), "changed_files": changed}


__all__ = ["EvalConfig", "Metrics", "PROTOCOLS", "run_protocol"]
