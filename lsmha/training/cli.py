"""`lsmha-train`: train one CCT, train a committee, or evaluate a checkpoint.

    lsmha-train run --model cct_2_3x2 --dim 512 --heads 32 --dataset cifar100 --data-dir D --epochs 300 --out runs/x
    lsmha-train committee --config table6 --dataset cifar100 --data-dir D --out runs/t6
    lsmha-train eval runs/x/model.safetensors --dataset cifar100 --data-dir D

Runs under `torchrun --nproc-per-node N` unchanged. Every configuration error is found
before training starts. Without --recipe, a run gets its data set's preset: digits for
--dataset digits, backbone otherwise; the first line printed says which recipe ran.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli_help import CliError, HelpFormatter, finish_parser, parse_args, run_command
from ..tables import write_json
from .choices import DATASETS, PRESETS

if TYPE_CHECKING:
    from .distributed import DistContext
    from .recipe import Recipe

# torch and the training modules load inside the commands, after the arguments are parsed

RESUME_HINT = {
    "run": "run the same command with --resume to continue after the last finished epoch",
    "committee": "run the same command again to continue: finished members are kept, the interrupted one resumes",
}


def _pairs(items: list[str], what: str) -> dict[str, Any]:
    from ..models.committees import parse_value

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise CliError.usage(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def _base_recipe(args: argparse.Namespace, table: dict[str, Any] | None = None) -> tuple[Recipe, str]:
    """The recipe named by --recipe, else a committee config's [recipe] table, else the data set's
    preset; and where it came from, for the line that says which recipe ran."""
    from .recipe import Recipe, dataset_recipe, load_recipe

    if args.recipe is not None:
        where = "preset" if args.recipe in PRESETS else "file"
        return load_recipe(args.recipe), f"{args.recipe} ({where})"
    if table:
        return Recipe.from_dict(table, where=f"{args.config} [recipe]"), f"{args.config} [recipe]"
    name = dataset_recipe(args.dataset)
    return load_recipe(name), f"{name} (preset)"


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--set, then the options that name a recipe field (they win)."""
    from .recipe import parse_overrides

    changes = parse_overrides(args.set, "--set")
    for flag in ("batch_size", "lr", "weight_decay"):
        if getattr(args, flag) is not None:
            changes[flag] = getattr(args, flag)
    if args.compile:
        changes["compile"] = True
    return changes


def _device(name: str) -> str:
    """`name` checked against this machine (a CUDA device where there is none is an environment error)."""
    from .distributed import resolve_device

    try:
        return str(resolve_device(name))
    except ValueError as err:
        raise CliError.environment(str(err)) from err
    except RuntimeError:  # torch's own parse error of the name
        raise CliError.usage(f"--device expects auto, cpu, cuda or cuda:N, got {name!r}") from None


def _start(args: argparse.Namespace) -> DistContext:
    from .distributed import init_distributed

    _device(args.device)
    return init_distributed(args.device)


def _check_data(args: argparse.Namespace) -> None:
    from .data import find_cifar100, find_fashion_mnist

    if args.dataset == "cifar100":
        find_cifar100(args.data_dir)
    elif args.dataset == "fashion-mnist":
        find_fashion_mnist(args.data_dir)


def _common(p: argparse.ArgumentParser, committee: bool = False) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="cifar100", help="data set")
    p.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR-100 directory (python or binary layout); Fashion-MNIST's IDX files (default: "
        "/usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist)",
    )
    data_default = "the data set's preset: digits for --dataset digits, backbone otherwise"
    where = f"the config's [recipe] table, else {data_default}" if committee else data_default
    p.add_argument("--recipe", default=None, help=f"preset ({', '.join(PRESETS)}) or a TOML file (default: {where})")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override, parsed by the field's type (booleans true/false, 1/0, yes/no; betas 0.9,0.999); "
        "repeatable",
    )
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's peak learning rate")
    p.add_argument("--weight-decay", type=float, default=None, help="override the recipe's peak weight decay")
    p.add_argument("--compile", action="store_true", help="train through torch.compile")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-val", type=int, default=None, help="use only the first N validation images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (torchrun: one GPU per process)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    parser = argparse.ArgumentParser(
        prog="lsmha-train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="train one model",
        description="Train one CCT with the paper's recipe. The run directory keeps metrics.jsonl, a resumable "
        "train_state.pt (written every epoch), model.safetensors and val_logits.npy; --resume continues it "
        "after the last finished epoch (give the same arguments again).",
        formatter_class=fmt,
    )
    run.add_argument("--model", required=True, help="registry name, e.g. cct_2_3x2")
    run.add_argument("--dim", type=int, default=None, help="override the embedding dim")
    run.add_argument("--heads", default=None, help="heads: one int, or per block as 4/4/16")
    run.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE", help="CCTSpec override")
    run.add_argument("--out", type=Path, required=True, help="run directory")
    run.add_argument("--resume", action="store_true", help="continue the run in --out")
    _common(run)

    com = sub.add_parser(
        "committee",
        help="train every member of a committee, then report",
        description="Train every member of a committee config one after another (each a resumable run under "
        "OUT/members/; finished members are kept), then write committee.json and a report of member and "
        "soft-committee (sum of logits) validation accuracy.",
        formatter_class=fmt,
    )
    com.add_argument("--config", required=True, help="committee TOML, or a packaged name (table4..7, digits4)")
    com.add_argument("--first", type=int, default=None, help="only the first K members")
    com.add_argument(
        "--only",
        type=int,
        nargs="+",
        default=None,
        metavar="I",
        help="train only these members (0-based), e.g. in parallel processes; committee.json is written by a "
        "later run without --only, which keeps the finished members",
    )
    com.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE", help="CCTSpec override for all")
    com.add_argument("--out", type=Path, required=True, help="committee directory (members under members/)")
    _common(com, committee=True)

    ev = sub.add_parser(
        "eval",
        help="validation accuracy of a checkpoint",
        description="Validation accuracy of a checkpoint written by lsmha-train (the facts recorded in it are "
        "printed beside the measured value).",
        formatter_class=fmt,
    )
    ev.add_argument("checkpoint", type=Path, help="model.safetensors written by lsmha-train")
    ev.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="data set (default: the one the checkpoint records, else cifar100)",
    )
    ev.add_argument("--data-dir", default=None, help="CIFAR-100 directory, or Fashion-MNIST's if not the default")
    ev.add_argument(
        "--split", choices=("val", "test"), default="val", help="val, or test (Fashion-MNIST's own test images)"
    )
    ev.add_argument("--batch-size", type=int, default=256, help="images per step")
    ev.add_argument("--limit-val", type=int, default=None, help="use only the first N validation images")
    ev.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    ev.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the result as JSON")
    return finish_parser(parser)


def _cmd_run(args: argparse.Namespace) -> int:
    from ..models import model_spec
    from ..models.committees import parse_value
    from .data import num_classes
    from .distributed import shutdown
    from .loop import RunConfig, train
    from .state import STATE_FILE

    overrides = _pairs(args.model_set, "--model-set")
    if args.dim is not None:
        overrides["dim"] = args.dim
    if args.heads is not None:
        overrides["heads"] = parse_value(args.heads)
    spec = model_spec(args.model, **{**overrides, "num_classes": num_classes(args.dataset)})
    base, source = _base_recipe(args)
    changes = _recipe_overrides(args)
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    recipe = base.replace(**changes)
    _check_data(args)
    cfg = RunConfig(
        spec, recipe, args.dataset, args.out, args.data_dir, args.limit_train, args.limit_val, args.resume,
        not args.no_progress,
    )  # fmt: skip
    ctx = _start(args)
    if ctx.is_main:
        print(f"recipe {source}: {recipe.describe()}", flush=True)
        if args.resume and not (args.out / STATE_FILE).exists():
            print(f"lsmha-train run: --resume: {args.out} holds no run yet; starting a fresh one", file=sys.stderr)
    try:
        result = train(cfg, ctx)
    finally:
        shutdown(ctx)
    if ctx.is_main:
        epochs = f"{result.epochs} epoch{'' if result.epochs == 1 else 's'}"
        print(f"{result.checkpoint}: val accuracy {result.val_accuracy:.4f} after {epochs}")
        write_json(args.json, {"checkpoint": str(result.checkpoint), "val_accuracy": result.val_accuracy,
                                "epochs": result.epochs, "already_finished": result.already_finished})  # fmt: skip
    return 0


def format_report(report: dict[str, Any]) -> str:
    """The human table of a committee: member accuracy (beside the paper's, where the config
    gives it), committee accuracy, mean agreement."""
    width = max(len(m["name"]) for m in report["members"]) + 2
    paper = any(m.get("paper_accuracy") is not None for m in report["members"])
    rule = "-" * (width + (18 if paper else 9))
    lines = [f"{'member':<{width}} {'val acc':>8}" + (f" {'paper':>8}" if paper else ""), rule]
    for m in report["members"]:
        line = f"{m['name']:<{width}} {m['val_accuracy']:>8.4f}"
        if paper:
            line += f" {m['paper_accuracy']:>8.4f}" if m.get("paper_accuracy") is not None else f" {'-':>8}"
        lines.append(line)
    lines += [
        rule,
        f"{'mean of members':<{width}} {report['mean_member_accuracy']:>8.4f}",
        f"{'soft committee':<{width}} {report['committee_accuracy']:>8.4f}",
        f"{'mean agreement':<{width}} {report['mean_agreement']:>8.4f}",
        f"({report['images']} validation images of {report['dataset']})",
    ]
    if paper:
        lines.append("(paper: the paper's CIFAR-100 validation accuracy for that member, for reference)")
    return "\n".join(lines)


def _cmd_committee(args: argparse.Namespace) -> int:
    from .committee import load_committee_config, member_runs, train_committee
    from .distributed import shutdown
    from .loop import check_config, train

    config = load_committee_config(args.config)
    if args.first is not None:
        if not 1 <= args.first <= len(config.members):
            raise CliError.usage(f"--first must be in 1..{len(config.members)}, got {args.first}")
        config = type(config)(config.name, config.members[: args.first], config.recipe, config.common)
    base, source = _base_recipe(args, config.recipe)
    base = base.replace(**_recipe_overrides(args))
    _check_data(args)
    runs = member_runs(
        config, args.dataset, args.out, base, _pairs(args.model_set, "--model-set"), args.epochs,
        data_dir=args.data_dir, limit_train=args.limit_train, limit_val=args.limit_val, resume=True,
        progress=not args.no_progress,
    )  # fmt: skip
    ctx = _start(args)
    if ctx.is_main:
        every = f" (epochs={args.epochs} for every member)" if args.epochs else ""
        print(f"recipe {source}: {base.describe()}{every}", flush=True)
    if args.only is not None:
        bad = [i for i in args.only if not 0 <= i < len(runs)]
        if bad:
            raise CliError.usage(f"--only: member index {bad[0]} is not in 0..{len(runs) - 1}")
        try:
            for i in args.only:
                check_config(runs[i])
            for i in args.only:
                train(runs[i], ctx)
        finally:
            shutdown(ctx)
        if ctx.is_main:
            print(
                f"trained member(s) {', '.join(runs[i].name for i in args.only)}; run without --only to write "
                f"{args.out / 'committee.json'}"
            )
        return 0
    try:
        report = train_committee(runs, args.out, ctx, [m.paper_accuracy for m in config.members])
    finally:
        shutdown(ctx)
    if ctx.is_main:
        print(format_report(report))
        print(f"wrote {args.out / 'committee.json'}")
        write_json(args.json, report)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    if args.dataset is None:
        from ..models import load_facts

        args.dataset = load_facts(args.checkpoint).get("dataset", "cifar100")
    _check_data(args)
    device = _device(args.device)
    result = evaluate_checkpoint(
        args.checkpoint, args.dataset, args.data_dir, args.batch_size, device, args.limit_val, args.split
    )
    result.pop("logits")
    split = "validation" if args.split == "val" else "test"
    print(f"{'checkpoint':<12} {result['checkpoint']}")
    print(f"{'dataset':<12} {result['dataset']} ({result['images']} {split} images)")
    print(f"{args.split + ' acc':<12} {result['accuracy']:.4f}")
    if "val_accuracy" in result["facts"]:
        print(f"{'at training':<12} {result['facts']['val_accuracy']:.4f}")
    write_json(args.json, result)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # run_command reports it (exit 1) with how to resume


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    handler = {"run": _cmd_run, "committee": _cmd_committee, "eval": _cmd_eval}[args.command]
    # SIGTERM (a scheduler's stop, `kill`) is reported like Ctrl-C: one line saying how to resume
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        return run_command(f"lsmha-train {args.command}", handler, args, RESUME_HINT.get(args.command, ""))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
