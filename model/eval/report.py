"""Outputs of an evaluation run: JSON (``--json``), Markdown tables in the paper's layout, PNG plots.

Every output carries the command line that produced it. Non-finite numbers do not exist in JSON: an infinite
PSNR (identical images) is written as the string ``"inf"``, anything else non-finite (an unrecovered pose) as null.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import tempfile
import textwrap
from pathlib import Path
from typing import Any

TABLE_TITLES = {
    "closed-loop": "Table 3 layout: memory mechanism (closed loop, last frame vs first image)",
    "long-horizon": "Table 6 layout: long-horizon generation, with vs without memory",
    "ablation-inputs": "Table 4 layout: scene projection video x reference frames",
    "ablation-k": "Table 5 layout: number of reference frames K",
    "ablation-voxel": "Table 7 layout: cube side d, frames vs exact renders",
    "ground-truth": "Table 2 layout: generated frames vs exact renders (RealEstate-style)",
}


def command_line(args: Any, prog: str = "spatia eval") -> str:
    """The full command that reproduces a run, every option spelled out (defaults included) from the parsed
    ``argparse`` namespace: what was typed may be a prefix of it, what it sets is all here."""
    parts = shlex.split(prog) + [args.protocol]
    for key, value in sorted(vars(args).items()):
        if key in ("command", "protocol", "verbose") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            if key in ("lpips_weights",):
                parts += [flag] + [str(v) for v in value]
            else:
                parts += [flag, ",".join(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def sanitize(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isinf(obj) and obj > 0:
            return "inf"
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return sanitize(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    from spatia.world.snapshot import default_file_mode

    os.fchmod(fd, default_file_mode())  # mkstemp's 0600 would hide results from other users
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(sanitize(result), indent=2, allow_nan=False) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}"


def _camera(row: dict[str, Any]) -> str:
    cc = row.get("camera_control") or {}
    if cc.get("rotation_deg_median") is None:
        frac = cc.get("recovered_fraction")
        return "n/a" if frac is None else f"not recovered ({frac:.0%})"
    return (f"{cc['rotation_deg_median']:.2f} deg / {cc['translation_cm_median']:.1f} cm"
            f" ({cc['recovered_fraction']:.0%})")


def _closed_loop_cells(row: dict[str, Any]) -> list[str]:
    return [_f(row["psnr_c"]), _f(row["ssim_c"], 3), _f(row["lpips_c"], 3), _f(row["match_acc"], 3)]


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table in the layout of the paper's table for this protocol."""
    protocol = result["protocol"]
    lines = [f"### {TABLE_TITLES.get(protocol, protocol)}", "", f"`{result.get('command', '')}`", ""]
    cam = "Camera error (median rot / trans, recovered)"
    if protocol == "closed-loop":
        lines += [f"| Method | PSNR_C ↑ | SSIM_C ↑ | LPIPS_C ↓ | Match Acc ↑ | {cam} ↓ |", "|---|---|---|---|---|---|"]
        for row in result["rows"]:
            lines.append("| " + " | ".join([row["method"]] + _closed_loop_cells(row) + [_camera(row)]) + " |")
    elif protocol == "long-horizon":
        lines += [f"| Method | #Clips | {cam} ↓ | PSNR_C ↑ | SSIM_C ↑ | LPIPS_C ↓ | Match Acc ↑ |",
                  "|---|---|---|---|---|---|---|"]
        for variant in ("without_memory", "with_memory"):
            for i, (c, pair) in enumerate(result["clips"].items()):
                row = pair[variant]
                name = row["method"] if i == 0 else ""
                lines.append("| " + " | ".join([name, c, _camera(row)] + _closed_loop_cells(row)) + " |")
    elif protocol == "ablation-inputs":
        lines += [f"| Scene projection video | Reference frames | {cam} ↓ | PSNR_C ↑ | SSIM_C ↑ | LPIPS_C ↓ |",
                  "|---|---|---|---|---|---|"]
        for row in result["rows"]:
            lines.append("| " + " | ".join(["✓" if row["scene_projection"] else "", "✓" if row["references"] else "",
                                             _camera(row)] + _closed_loop_cells(row)[:3]) + " |")
    elif protocol == "ablation-k":
        lines += ["| #Reference frames | PSNR_C ↑ | SSIM_C ↑ | LPIPS_C ↓ | Match Acc ↑ |", "|---|---|---|---|---|"]
        for row in result["rows"]:
            lines.append("| " + " | ".join([str(row["num_references"])] + _closed_loop_cells(row)) + " |")
    elif protocol == "ablation-voxel":
        lines += ["| Cube side length (m) | PSNR ↑ | SSIM ↑ | LPIPS ↓ | Memory points | Memory MiB |",
                  "|---|---|---|---|---|---|"]
        for row in result["rows"]:
            lines.append("| " + " | ".join([f"{row['voxel_size_m']:.2f}", _f(row["psnr"]), _f(row["ssim"], 3),
                                             _f(row["lpips"], 3), f"{row['memory_points']:.0f}",
                                             f"{row['memory_bytes'] / 2**20:.2f}"]) + " |")
    elif protocol == "ground-truth":
        lines += [f"| Method | PSNR ↑ | SSIM ↑ | LPIPS ↓ | {cam} ↓ |", "|---|---|---|---|---|"]
        for row in result["rows"]:
            lines.append("| " + " | ".join([row["method"], _f(row["psnr"]), _f(row["ssim"], 3), _f(row["lpips"], 3),
                                             _camera(row)]) + " |")
    else:
        raise ValueError(f"no table layout for protocol {protocol!r}")
    notes = result.get("metrics", {})
    if notes:
        lp = notes.get("lpips", {})
        lines += ["", f"LPIPS: {'available (' + lp.get('net', '') + ')' if lp.get('available') else 'n/a — ' + str(lp.get('reason'))}."
                  f" Match Acc: {notes.get('match_accuracy', {}).get('method')}."]
    cfg = result.get("config", {})
    if cfg:
        lines += [f"Sizes: {cfg.get('items')} items ({cfg.get('testset')}), {cfg.get('width')}x{cfg.get('height')} px, "
                  f"clips {cfg['clip']['first_clip_frames']}/{cfg['clip']['clip_frames']} frames "
                  f"({cfg['clip']['preceding_frames']} preceding), seed {cfg.get('seed')}, "
                  f"wall {result.get('wall_s', 0):.0f} s."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: str | Path) -> bool:
    """A PNG of the metrics against clips / K / voxel side; False for protocols without such an axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocol = result["protocol"]
    series: dict[str, tuple[list[float], list[float | None]]] = {}
    if protocol == "long-horizon":
        xs = [int(c) for c in result["clips"]]
        xlabel, keys = "#clips", ("psnr_c", "ssim_c", "lpips_c", "match_acc")
        for variant in ("with_memory", "without_memory"):
            for key in keys:
                series[f"{variant}:{key}"] = (xs, [result["clips"][str(c)][variant][key] for c in xs])
    elif protocol == "ablation-k":
        xs = [r["num_references"] for r in result["rows"]]
        xlabel, keys = "K (reference frames)", ("psnr_c", "ssim_c", "lpips_c", "match_acc")
        for key in keys:
            series[key] = (xs, [r[key] for r in result["rows"]])
    elif protocol == "ablation-voxel":
        xs = [r["voxel_size_m"] for r in result["rows"]]
        xlabel, keys = "cube side d (m)", ("psnr", "ssim", "lpips", "memory_points")
        for key in keys:
            series[key] = (xs, [r[key] for r in result["rows"]])
    else:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
    for ax, key in zip(axes, keys):
        if all(v is None for name, (_, y) in series.items() if name.split(":")[-1] == key for v in y):
            ax.text(0.5, 0.5, f"{key}: unavailable", ha="center", va="center", transform=ax.transAxes)
        for name, (x, y) in series.items():
            if name.split(":")[-1] != key or all(v is None for v in y):
                continue
            ax.plot(x, [float("nan") if v is None else v for v in y], marker="o", label=name.split(":")[0])
        ax.set_xlabel(xlabel)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if protocol == "long-horizon" and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("\n".join(textwrap.wrap(result.get("command", ""), 200)), fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Description": result.get("command", "")})  # the command, in the PNG too
    plt.close(fig)
    return True
