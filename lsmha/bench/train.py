"""`lsmha-bench train`: training throughput (images/s), model-only step against the
full pipeline with the paper's augmentation, per model, in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_help import CliError, HelpFormatter
from ..tables import format_table


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="training throughput: model-only step vs the full augmented pipeline",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--model",
        nargs="+",
        default=["cct_7_3x1", "cct_2_3x2"],
        help="models to measure, each name[:field=value...] (e.g. cct_2_3x2:dim=1024:heads=64)",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per training step")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto picks cuda when present")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements to this file")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..models import CCT, committee_specs, parse_committee
    from ..training.throughput import compare

    try:
        specs = [committee_specs(parse_committee(text))[0] for text in args.model]
        if args.batch_size < 1 or args.steps < 1:
            raise ValueError(f"--batch-size and --steps must be >= 1, got {args.batch_size} and {args.steps}")
    except ValueError as err:
        raise CliError.usage(str(err)) from err
    results = {}
    for text, spec in zip(args.model, specs):
        results[text] = compare(
            CCT(spec),
            batch_size=args.batch_size,
            device=args.device,
            steps=args.steps,
            warmup=args.warmup,
            compile=args.compile,
        )
    rows = []
    for name, r in results.items():
        bare, full = r["model_only"], r["with_augment"]
        rows.append(
            [name, bare["device"], bare["batch_size"], bare["amp"], bare["images_per_s"]]
            + [full["images_per_s"], r["ratio"]]
        )
    print(format_table(["model", "device", "batch", "bf16", "model-only img/s", "pipeline img/s", "ratio"], rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
