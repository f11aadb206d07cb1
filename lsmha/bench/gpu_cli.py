"""`lsmha-bench gpu`: the fair stock PyTorch baselines against the cuda-graph engine, in ONE run.

For CCT-7/3x1 and the Table 6 committee (first five; Table 7 with --table7) at batches 1, 8,
64, 256: median/p90 latency per call (CUDA events, one call then a sync), the back-to-back
GPU time per call (calls queued without a sync: where it is lower, the CPU is the limit),
images/s, achieved TFLOP/s and % of the card's bf16 dense peak; the committee/baseline
ratios; the crossover (largest batch at which a committee is still faster than CCT-7/3x1);
then each engine lever at batch 1, against the default engine.

    lsmha-bench gpu --plan                 # the jobs, their estimated seconds and the total (any machine)
    lsmha-bench gpu --json out.json        # what benchmarks/gpu_check.sh runs

The stock baselines have bf16 weights: torch.compile(mode="reduce-overhead") for CCT-7/3x1,
and for a committee each member compiled, all captured in one CUDA graph with each member
on its own stream. They run first (`lsmha.bench.gpu_plan`), interleaved with the engine over
three rounds. A job starts only if its estimate fits in the time left (--deadline); dropped
jobs are listed. A SIGTERM (the hard limit of `timeout` in benchmarks/gpu_check.sh) drops
the running job and the rest; the tables and JSON are still written, and the JSON is
rewritten after every row. Weights are random: latency does not depend on trained values.
Exit: 0 the ratios' rows were measured and no job failed (jobs dropped for time are fine),
1 a job failed or a ratio's row is missing, 2 bad usage, 3 no CUDA device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_help import HelpFormatter, finish_parser, parse_args, run_command
from .gpu_plan import DEFAULT_BATCHES

DEFAULT_DEADLINE_S = 420.0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", action="store_true", help="print the jobs, their estimated seconds and total; run none")
    p.add_argument("--batch", type=_int_list, default=list(DEFAULT_BATCHES), help="batch sizes")
    p.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S,
                   help="seconds the run may take: a job starts only if its estimate fits")  # fmt: skip
    p.add_argument("--budget", type=float, default=0.3, help="seconds of timed calls per row, all rounds together")
    p.add_argument("--levers", default="main", choices=["main", "all", "none"],
                   help="engine levers at batch 1: the main set, with the costly extra ones, or none")  # fmt: skip
    p.add_argument("--table7", action="store_true", help="also time the ten-member Table 7 committee")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and images")
    p.add_argument("--json", type=Path, default=None, help="write the result here (default: --results-dir/<card>...)")
    p.add_argument("--results-dir", type=Path, default=Path("benchmarks/results"), help="where the JSON goes")


def cmd_gpu(args: argparse.Namespace) -> int:
    """Run the comparison (`lsmha.bench.gpu.cmd_gpu`), importing torch only now."""
    from .gpu import cmd_gpu

    return cmd_gpu(args)


def add_gpu_parser(sub: argparse._SubParsersAction) -> None:
    """`lsmha-bench gpu`: register this comparison as a subcommand."""
    p = sub.add_parser("gpu", help="fair stock PyTorch vs the cuda-graph engine on CUDA, one run",
                       description=__doc__, formatter_class=HelpFormatter)  # fmt: skip
    add_arguments(p)  # the exit-code table comes with lsmha-bench's own (finish_parser on the whole parser)
    p.set_defaults(func=lambda args: run_command("lsmha-bench gpu", cmd_gpu, args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsmha.bench.gpu_cli", description=__doc__,
                                     formatter_class=HelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run_command("python -m lsmha.bench.gpu_cli", cmd_gpu, parse_args(finish_parser(parser), argv))


if __name__ == "__main__":
    sys.exit(main())
