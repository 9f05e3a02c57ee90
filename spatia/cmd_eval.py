"""``spatia eval PROTOCOL``: the paper's evaluation (Tables 2-7) for a generator on the bundled test sets.

Protocols: ``closed-loop`` (Table 3), ``long-horizon --clips 2,4,6`` (Table 6), ``ablation --tables 4,5,7``
(Tables 4, 5, 7), ``ground-truth`` (Table 2 style), ``novel-view`` (issue 10: the fill of never-seen space against
exact renders, every fill method in the demo and play settings; ``model/eval/novel_view.py``). Outputs: JSON (``--json FILE``, one object; ``ablation`` writes
``{"results": [...]}``), Markdown tables (stdout, or ``--markdown FILE``), PNG plots (``--plot FILE``, default
beside the JSON) for the protocols with a clips / K / voxel axis. Every output carries the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="the paper's evaluation protocols (Tables 2-7) on the bundled test sets")
    protocols = p.add_subparsers(dest="protocol", required=True)
    helps = {
        "closed-loop": "Table 3: two clips out and back, last frame vs first image, with and without memory",
        "long-horizon": "Table 6: 2/4/6 clips left-right-and-back, with vs without memory",
        "ablation": "Tables 4 (projection x references), 5 (K) and 7 (voxel side)",
        "ground-truth": "Table 2 style: generated frames vs exact renders of procedural scenes",
    }
    for name, text in helps.items():
        q = protocols.add_parser(name, help=text)
        q.add_argument("--generator", default="geometric", help="geometric (default), spatia-tiny, spatia")
        q.add_argument("--weights", type=Path, help="weights directory for the Spatia network")
        q.add_argument("--items", type=int, default=6, help="how many test items to run (default 6)")
        q.add_argument("--testset", default="procedural", choices=("procedural", "cases", "all"))
        q.add_argument("--width", type=int, default=128)
        q.add_argument("--height", type=int, default=80, help="procedural items (cases keep their aspect ratio)")
        q.add_argument("--first-clip-frames", type=int, default=17)
        q.add_argument("--clip-frames", type=int, default=17)
        q.add_argument("--preceding-frames", type=int, default=4)
        q.add_argument("--pan-deg", type=float, default=60.0, help="how far each 'right' clip pans")
        q.add_argument("--strafe-m", type=float, default=0.4, help="sideways step of each 'right' clip")
        q.add_argument("--baseline", default="last-frame", choices=("last-frame", "no-projection"),
                       help="what the without-memory baseline shows the generator (see docs/RESULTS.md)")
        q.add_argument("--pose-stride", type=int, default=4, help="camera error on every n-th frame")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--lpips-weights", type=Path, nargs="+", help="local LPIPS files: backbone and linear heads")
        q.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"))
        q.add_argument("--roma-weights", type=Path, help="local RoMa weights (needs romatch installed)")
        q.add_argument("--roma-dinov2-weights", type=Path, help="local DINOv2 weights for RoMa")
        q.add_argument("--json", type=Path, help="write the results here")
        q.add_argument("--markdown", type=Path, help="write the Markdown table(s) here (default: stdout)")
        q.add_argument("--plot", type=Path, help="PNG plot (default: beside --json)")
        q.add_argument("--no-progress", action="store_true")
        if name == "long-horizon":
            q.add_argument("--clips", type=_ints, default=(2, 4, 6), help="even clip counts, e.g. 2,4,6")
        if name == "ablation":
            q.add_argument("--tables", type=_ints, default=(4, 5, 7), help="which of tables 4, 5, 7")
            q.add_argument("--ks", type=_ints, default=(1, 3, 5, 7), help="Table 5: values of K")
            q.add_argument("--voxel-sides", type=_floats, default=(0.01, 0.03, 0.05, 0.07), help="Table 7, metres")
        if name in ("ground-truth", "ablation"):
            q.add_argument("--gt-frames", type=int, default=24, help="length of the ground-truth path")
    _add_novel_view(protocols)


def _add_novel_view(protocols: argparse._SubParsersAction) -> None:
    q = protocols.add_parser("novel-view", help="issue 10: the fill of never-seen space vs exact renders "
                             "(procedural items, every fill method, demo and play settings)")
    q.add_argument("--items", nargs="+", default=["all"],
                   help="item specs or sets: default, variants, photo, all (default); room, house:1, "
                        "courtyard@turned, room@pitched, house@photo")
    q.add_argument("--methods", default=None, help="comma-separated fill methods (default: every FILL_METHODS)")
    q.add_argument("--settings", default="demo,play", help="comma-separated: demo (33/41/9 clips), play (4/6/2, "
                   "keyframe stride 4)")
    q.add_argument("--width", type=int, default=640)
    q.add_argument("--height", type=int, default=360)
    q.add_argument("--frames", type=int, default=161, help="loop length (the demo's default)")
    q.add_argument("--seed", type=int, default=0, help="generation seed")
    q.add_argument("--smoke", action="store_true", help="one item (room) at 320x180: the test suite's subset")
    q.add_argument("--json", type=Path, help="write the rows here")
    q.add_argument("--md", type=Path, help="write the Markdown tables here (default: stdout)")
    q.add_argument("--strips", type=Path, help="directory for one PNG strip per item (truth | new | baseline)")
    q.add_argument("--no-progress", action="store_true")


def run_novel_view(args: argparse.Namespace) -> int:
    from spatia.model.eval.novel_view import evaluate, markdown, parse_items
    from spatia.model.eval.report import command_line, write_json, write_text_atomic

    if args.smoke:
        args.items, args.width, args.height = ["room"], 320, 180
    items = parse_items(args.items)
    methods = [m for m in args.methods.split(",") if m.strip()] if args.methods else None
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    command = command_line(args)

    def partial(result: dict) -> None:  # a long run leaves its results so far after every item
        if args.json:
            write_json(args.json, result)
        if args.md:
            write_text_atomic(args.md, markdown(result))

    result = evaluate(items, methods, settings, width=args.width, height=args.height, frames=args.frames,
                      seed=args.seed, strips_dir=args.strips, progress=not args.no_progress, command=command,
                      on_item=partial)
    partial(result)
    if not args.md:
        sys.stdout.write(markdown(result))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.protocol == "novel-view":
        return run_novel_view(args)
    from spatia.model.eval import run_protocol
    from spatia.model.eval.metrics import LpipsMetric, MatchAccuracy
    from spatia.model.eval.protocols import EvalConfig, Metrics
    from spatia.model.eval.report import command_line, markdown, plot, write_json, write_text_atomic
    from spatia.model.eval.testsets import PanLoop
    from spatia.world.actions import ClipConfig

    kwargs = (("weights_dir", args.weights),) if args.weights else ()
    config = EvalConfig(
        generator=args.generator, generator_kwargs=kwargs, testset=args.testset, items=args.items,
        width=args.width, height=args.height,
        clip=ClipConfig(args.first_clip_frames, args.clip_frames, args.preceding_frames), seed=args.seed,
        loop=PanLoop(args.pan_deg, args.strafe_m), baseline=args.baseline, pose_stride=args.pose_stride,
        gt_frames=getattr(args, "gt_frames", 24), progress=not args.no_progress,
    )
    metrics = Metrics(
        lpips=LpipsMetric(args.lpips_weights, net=args.lpips_net),
        match=MatchAccuracy(args.roma_weights, args.roma_dinov2_weights),
    )
    extra = {}
    if args.protocol == "long-horizon":
        extra["clips"] = args.clips
    if args.protocol == "ablation":
        extra.update(tables=args.tables, ks=args.ks, voxel_sides_m=args.voxel_sides)
    command = command_line(args)
    results = run_protocol(args.protocol, config, metrics, command=command, **extra)
    text = "\n".join(markdown(r) for r in results)
    if args.markdown:
        write_text_atomic(args.markdown, f"<!-- {command} -->\n" + text)
    else:
        sys.stdout.write(text)
    if args.json:
        write_json(args.json, results[0] if len(results) == 1 else {"command": command, "results": results})
    plot_path = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if plot_path is not None:
        for r in results:
            target = plot_path if len(results) == 1 else plot_path.with_name(f"{plot_path.stem}-table{r['table']}.png")
            if plot(r, target):
                print(f"plot: {target}", file=sys.stderr)
    return 0
