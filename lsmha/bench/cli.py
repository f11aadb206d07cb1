"""`lsmha-bench`: measured latency of soft committees against the deep CCT-7/3x1."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli_help import CliError, HelpFormatter, finish_parser, parse_args, run_command
from ..tables import format_table, write_json
from .adaptive import add_adaptive_parser
from .choices import CUDA_ONLY, DEFAULT_BACKENDS, RUNNER_NAMES
from .gpu_cli import add_gpu_parser
from .plot import add_plot_parser
from .serve import add_serve_parser
from .study import add_study_parser
from .train import add_train_parser

# torch and the runners load inside the commands, after the arguments are parsed
CPU_BACKENDS = list(DEFAULT_BACKENDS["cpu"])
CPU_COMMITTEES = ["cct_2_3x5,cct_2_3x5:heads=4", "table6:5"]  # with the baseline CCT-7/3x1: the CPU comparison
# the default run on a CPU: the two-member committee against the baseline, the engine's choice
# against what a user has without it, sized to end within two minutes on two quiet cores; --full
# times every row of the comparison (CPU_COMMITTEES x CPU_BACKENDS) with the full budget
QUICK = {"committee": CPU_COMMITTEES[:1], "backend": ["torch", "openvino-stock", "auto"], "budget": 1.0, "rounds": 2,
         "min_calls": 3}  # fmt: skip
FULL = {"committee": CPU_COMMITTEES, "backend": CPU_BACKENDS, "budget": 2.0, "rounds": 3, "min_calls": 5}
FULL_COMMAND = "lsmha-bench latency --full"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_latency_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "latency",
        help="time a committee against CCT-7/3x1 per backend and batch",
        description=(
            "Time the baseline model and a soft committee (sum of member logits) on each backend and batch "
            "size in one run, and report latency, images/s, achieved TFLOP/s and the committee/baseline ratio. "
            "Weights are random: latency does not depend on trained values."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--committee",
        action="append",
        default=None,
        help="members: a paper committee (table5, table6, table7), its first k (table6:5), "
        "or name[:field=value...] items separated by commas, e.g. cct_2_3x2:dim=1024:heads=64,cct_1_3x1; "
        f"repeat to time several committees (default on CPU: {QUICK['committee'][0]}; with --full "
        f"{' and '.join(CPU_COMMITTEES)}; table6:5 on CUDA)",
    )
    p.add_argument(
        "--baseline", default="cct_7_3x1", help="the model the committee is compared against, name[:field=value...]"
    )
    p.add_argument(
        "--backend",
        type=_name_list,
        default=None,
        help=f"comma-separated backends among {', '.join(RUNNER_NAMES)} "
        f"(default on CPU: {', '.join(QUICK['backend'])}; with --full {', '.join(CPU_BACKENDS)}; "
        f"{', '.join(DEFAULT_BACKENDS['cuda'])} on CUDA)",
    )
    p.add_argument(
        "--batch", type=_int_list, default=None, help="batch sizes (default: 1,32 on CPU; 1,8,64,256 on CUDA)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto picks cuda when present")
    p.add_argument("--num-classes", type=int, default=100, help="output labels of every model")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument(
        "--full",
        action="store_true",
        help="the whole CPU comparison: both committees on torch, stock OpenVINO, ONNX Runtime and auto, 3 passes "
        "of 2 s a row, instead of the default's one committee, three backends and 2 passes of 1 s",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed calls per row, all passes together (default: 1.0 on CPU, 2.0 with --full or CUDA)",
    )
    p.add_argument(
        "--min-calls",
        type=int,
        default=None,
        help="timed calls per row at least, all passes together (default: 3 on CPU, 5 with --full or CUDA)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="passes over all rows, order reversed every other pass, samples pooled (fair ratios on a noisy machine; "
        "default: 2 on CPU, 3 with --full or CUDA)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and images")
    p.add_argument(
        "--adaptive",
        type=Path,
        default=None,
        metavar="DIR",
        help="also time the adaptive committee of this calibrated export (lsmha-export calibrate) against its full "
        "committee, on --dataset's test images: what it costs depends on trained weights and real images",
    )
    p.add_argument(
        "--dataset", default="fashion-mnist", help="data set of --adaptive's images (its test split is used)"
    )
    p.add_argument("--data-dir", type=Path, default=None, help="where --dataset lives, if not its default")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and machine facts to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_latency)


def cmd_latency(args: argparse.Namespace) -> int:
    import torch

    from ..models import committee_specs, parse_committee
    from .latency import SPEEDUP_REFERENCES, crossover, machine_facts, rows_as_dicts, run_latency, speedup_rows

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError.environment(
            "--device cuda but torch sees no CUDA device (check nvidia-smi), or use --device cpu"
        )
    if args.adaptive is not None:  # before the minutes of random-weight rows, not after them
        _check_calibrated(args.adaptive)
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    torch.set_num_threads(max(1, args.threads))
    quick = device.type == "cpu" and not args.full
    plan = QUICK if quick else FULL
    args.budget = plan["budget"] if args.budget is None else args.budget
    args.rounds = plan["rounds"] if args.rounds is None else args.rounds
    args.min_calls = plan["min_calls"] if args.min_calls is None else args.min_calls
    try:
        committees = args.committee or (plan["committee"] if device.type == "cpu" else ["table6:5"])
        groups = {
            f"committee({c})": committee_specs(parse_committee(c), num_classes=args.num_classes) for c in committees
        }
        base_members = parse_committee(args.baseline)
        if len(base_members) != 1:
            raise ValueError(f"--baseline names one model, got {len(base_members)}: {args.baseline!r}")
        baseline = committee_specs(base_members, num_classes=args.num_classes)[0]
        if args.rounds < 1 or args.min_calls < 1 or args.budget <= 0:
            raise ValueError(
                f"--rounds and --min-calls must be >= 1 and --budget > 0, got {args.rounds}, {args.min_calls} "
                f"and {args.budget}"
            )
        backends = args.backend or (plan["backend"] if device.type == "cpu" else list(DEFAULT_BACKENDS["cuda"]))
        for name in backends:
            if name not in RUNNER_NAMES:
                raise ValueError(f"unknown backend {name!r}; known: {', '.join(RUNNER_NAMES)}")
            if name in CUDA_ONLY and device.type != "cuda":
                raise ValueError(f"backend {name!r} needs a CUDA device")
    except ValueError as err:
        raise CliError.usage(str(err)) from None
    batches = args.batch or ([1, 8, 64, 256] if device.type == "cuda" else [1, 32])
    groups = {args.baseline: [baseline], **groups}
    facts = machine_facts(device)
    where = facts.get("gpu") or f"{facts['cpu_model']}, {facts['cpu_kind']}: {' '.join(facts['isa_flags']) or '-'}"
    versions = ", ".join(f"{k} {facts[k]}" for k in ("torch", "onnxruntime", "openvino") if k in facts)
    print(
        f"lsmha-bench latency on {facts['device']} ({where}; {versions}; {facts['threads']} threads); random "
        f"weights; median of all calls over {args.rounds} interleaved passes, after {args.warmup} warm-up calls"
    )
    rows = run_latency(
        groups,
        backends,
        batches,
        device,
        args.baseline,
        args.warmup,
        args.budget,
        args.seed,
        not args.no_progress,
        args.rounds,
        args.min_calls,
    )
    headers = ["model", "members", "params", "GMAC/img", "paper layers", "backend", "batch", "median ms", "p90 ms"]
    headers += ["images/s", "TFLOP/s", "ratio"]
    print(
        format_table(
            headers,
            [
                [r.model, r.members, r.params, r.gmac_per_image, r.paper_layers, r.backend, r.batch, r.median_ms]
                + [r.p90_ms, r.images_per_s, r.tflops, r.ratio_vs_baseline]
                for r in rows
            ],
        )
    )
    print(f"ratio = latency / {args.baseline} latency, same backend and batch (< 1: faster than {args.baseline})")
    print(f"compared: {', '.join(groups)} on {', '.join(backends)} at batch {', '.join(map(str, batches))}")
    if quick:
        print(f"the full comparison ({' and '.join(CPU_COMMITTEES)} on {', '.join(CPU_BACKENDS)}): {FULL_COMMAND}")
    cross = {}
    for name in list(groups)[1:]:
        cross[name] = crossover(rows, name, args.baseline)
        for backend, batch in cross[name].items():
            verdict = f"up to batch {batch}" if batch else "at none of the timed batches"
            print(f"  {backend}: {name} faster than {args.baseline} {verdict}")
    notes = {r.backend: r.note for r in rows if r.note}
    for backend, note in notes.items():
        print(f"  {backend}: {note}")
    refs = [b for b in SPEEDUP_REFERENCES if b in backends]
    speedups = speedup_rows(rows, refs)
    if speedups:
        print("speed-up = reference ms / backend ms, same model and batch (> 1: faster than the reference)")
        headers = ["model", "batch", "backend"] + [f"x {ref}" for ref in refs]
        table = [[d["model"], d["batch"], d["backend"]] + [d["speedup"].get(ref) for ref in refs] for d in speedups]
        print(format_table(headers, table))
    adaptive = None
    if args.adaptive is not None:
        adaptive = adaptive_rows(args)
    if args.json:
        doc = {"facts": facts, "committees": committees, "crossover": cross, "speedups": speedups}
        doc["rows"] = rows_as_dicts(rows)
        if adaptive is not None:
            doc["adaptive"] = adaptive
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0


def _check_calibrated(directory: Path) -> None:
    """--adaptive DIR is an export with calibrated thresholds (CliError.usage if not)."""
    from ..artifacts import read_manifest
    from ..engine.adaptive import read_calibration

    try:
        calibrated = read_calibration(read_manifest(directory)) is not None
    except (FileNotFoundError, ValueError) as err:
        raise CliError.usage(f"--adaptive {directory}: {err}") from None
    if not calibrated:
        raise CliError.usage(
            f"--adaptive {directory} has no calibrated thresholds: run `lsmha-export calibrate {directory} "
            "--dataset NAME` first"
        )


def adaptive_rows(args: argparse.Namespace) -> dict:
    """`lsmha-bench adaptive`'s rows for `--adaptive DIR` on the test split, printed; the result."""
    from ..engine.backends import BackendUnavailable
    from ..training.data import DataSetMissing
    from .adaptive import measure_adaptive, print_report

    print(f"adaptive committee of {args.adaptive} against its full committee ({args.dataset} test images, auto):")
    try:
        result = measure_adaptive(
            args.adaptive, args.dataset, "test", args.data_dir, latency_images=200, throughput_images=1024,
            progress=not args.no_progress,
        )  # fmt: skip
    except BackendUnavailable as err:
        raise CliError.environment(str(err)) from None
    except DataSetMissing:
        raise  # exit 3: the environment's, not bad usage
    except (FileNotFoundError, ValueError) as err:
        raise CliError.usage(f"--adaptive {args.adaptive}: {err}") from None
    print_report(result)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsmha-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_latency_parser(sub)
    add_serve_parser(sub)
    add_gpu_parser(sub)
    add_train_parser(sub)
    add_study_parser(sub)
    add_adaptive_parser(sub)
    add_plot_parser(sub)
    return finish_parser(parser)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_command("lsmha-bench", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
