"""`lsmha-bench train`: training throughput (images/s), model-only step against the
full pipeline with the paper's augmentation, per model, in one run; with `--attention`,
the model-only step under each attention-dropout path instead, interleaved step by step."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..cli_help import CliError, HelpFormatter
from ..tables import format_table, write_json


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
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument(
        "--attention",
        default=None,
        help="comma-separated attention-dropout paths to compare, model-only, interleaved step by step "
        "(sdpa: F.scaled_dot_product_attention, its math fallback on a CPU; chunked: "
        "chunked_dropout_attention), e.g. sdpa,chunked; ratios are to the first",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the measurements to this file")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from ..models import CCT, committee_specs, parse_committee
    from ..training.throughput import ATTENTION_PATHS, compare

    try:
        specs = [committee_specs(parse_committee(text))[0] for text in args.model]
        if args.batch_size < 1 or args.steps < 1:
            raise ValueError(f"--batch-size and --steps must be >= 1, got {args.batch_size} and {args.steps}")
        paths = tuple(args.attention.split(",")) if args.attention else ()
        bad = [path for path in paths if path not in ATTENTION_PATHS]
        if bad:
            raise ValueError(f"--attention takes {', '.join(ATTENTION_PATHS)}, got {', '.join(bad)}")
    except ValueError as err:
        raise CliError.usage(str(err)) from err
    if args.threads:
        torch.set_num_threads(args.threads)
    if paths:
        return _compare_attention(args, [CCT(spec) for spec in specs], paths)
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
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


def _compare_attention(args: argparse.Namespace, models: list, paths: tuple[str, ...]) -> int:
    import torch

    from ..engine.cpu import cpu_info
    from ..training.throughput import compare_attention

    load_before = list(os.getloadavg())
    results = {}
    for text, net in zip(args.model, models):
        torch.manual_seed(0)
        results[text] = compare_attention(
            net, paths, batch_size=args.batch_size, device=args.device, steps=args.steps, warmup=args.warmup
        )
    rows = []
    for name, r in results.items():
        for path in paths:
            m = r[path]
            ratio = r["ratio"].get(path, 1.0)
            rows.append([name, path, m["images_per_s"], m["images_per_s_p10"], m["images_per_s_p90"], ratio])
    print(format_table(["model", "attention", "img/s", "p10", "p90", f"x {paths[0]}"], rows))
    machine = {
        **cpu_info().to_dict(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
    }
    if args.json:
        write_json(args.json, {"machine": machine, "models": results})
        print(f"wrote {args.json}")
    return 0
