"""The `--device cuda` comparison: stock PyTorch against the cuda-graph engine, in ONE run.

For CCT-7/3x1, the Table 6 committee (first five) and the Table 7 committee (ten), at
batches 1, 8, 64, 256: median/p90 latency (CUDA events, after warm-up), images/s,
achieved TFLOP/s and % of the card's bf16 dense peak, the committee/CCT-7/3x1 ratio
per backend, and the crossover (largest batch at which a committee is still faster).
Then an ablation of the engine's levers at batch 1, and the issue's three targets.

    python -m lsmha.bench.gpu --json out.json           # what benchmarks/gpu_check.sh runs

Jobs run in priority order (`job_plan`: first what the three targets need, then the other
CCT-7/3x1 and Table 6 jobs, the ablation, Table 7) and stop starting new work past
`--deadline` seconds; skipped jobs are listed, never silently dropped. A SIGTERM (the hard
limit of `timeout` in benchmarks/gpu_check.sh) ends the running job as failed and skips the
rest, and the tables and JSON are still written.
Weights are random: latency does not depend on trained values.
Exit: 0 ran, 1 a job failed (the others still ran) or SIGTERM, 2 bad usage, 3 no CUDA device.

This module also holds the runner factories behind `lsmha-bench latency --backend`
torch-stacked, torch-compile-graph, torch-compile-streams and cuda-graph.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cli_help import HelpFormatter
from ..models import CCT, committee_specs, parse_committee
from .backends import Runner, make_runner
from .hardlimit import from_hard_limit, sigterm_stops
from .latency import LatencyRow, build_members, time_row
from .table import format_table

# bf16 dense tensor-core peak (TFLOP/s, no sparsity), first match on the device name wins
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 6000 Ada", 364.0),
    ("A6000", 155.0),
)

GROUPS: dict[str, str] = {"cct_7_3x1": "cct_7_3x1", "committee-5": "table6:5", "committee-10": "table7"}
BASELINE = "cct_7_3x1"
DEFAULT_BACKENDS = ["torch-compile-graph", "cuda-graph", "torch-bf16", "torch", "torch-compile-streams"]
DEFAULT_BATCHES = [1, 8, 64, 256]
# (group, backend) main jobs in the order the targets need them (see `targets`), then the
# cheap eager bf16 baseline and stock compile of Table 6; compiling jobs take tens of seconds each
PRIORITY: tuple[tuple[str, str], ...] = (
    (BASELINE, "torch-compile-graph"),
    (BASELINE, "cuda-graph"),
    ("committee-5", "cuda-graph"),
    ("committee-5", "torch-bf16"),
    (BASELINE, "torch-bf16"),
    ("committee-5", "torch-compile-graph"),
)
# engine levers, each switched off alone (or changed) against the full engine, at batch 1
LEVERS: dict[str, dict[str, Any]] = {
    "cuda-graph": {},
    "no stacking": {"stack": False},
    "one stream": {"streams": False},
    "no compile": {"compile": "off"},
    "fp32": {"precision": "fp32"},
}


def bf16_peak_tflops(device_name: str) -> float | None:
    """The card's bf16 dense peak in TFLOP/s, None when the name is not in `BF16_PEAK_TFLOPS`."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


# -- runners (used through lsmha.bench.backends.BACKENDS) --------------------------------------


def _to_device(device: torch.device):
    return lambda images: torch.from_numpy(images).to(device)


def torch_stacked(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """Equal-shape members stacked into batched GEMMs (`lsmha.engine.stacked`), eager fp32."""
    from ..engine.stacked import StackedCommittee

    program = StackedCommittee([m.eval() for m in models]).to(device)

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        return program(x)

    return Runner(_to_device(device), run, f"eager fp32, {len(program.units)} unit(s) for {len(models)} member(s)")


def torch_compile_graph(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """Stock: torch.compile(mode="reduce-overhead") of the summed committee under bf16 autocast
    (inductor + CUDA graphs by PyTorch itself; one stream: stock compile has no multi-stream)."""
    models = [m.to(device).eval() for m in models]

    def committee(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = models[0](x).float()
            for m in models[1:]:
                out = out + m(x).float()
            return out

    compiled = torch.compile(committee, mode="reduce-overhead")

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(x)

    return Runner(_to_device(device), run, 'stock torch.compile(mode="reduce-overhead"), bf16 autocast')


def torch_compile_streams(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """Stock parts by hand: each member torch.compile'd, bf16 autocast, the whole committee
    captured in one CUDA graph per shape with each member on its own stream."""
    from ..engine.backends.cuda_graph_backend import allow_recompiles

    models = [m.to(device).eval() for m in models]
    allow_recompiles(4 * len(models) + 8)
    compiled = [torch.compile(m, options={"triton.cudagraphs": False}) for m in models]
    streams = [torch.cuda.Stream(device) for _ in models] if len(models) > 1 else None
    graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if streams is None:
                return compiled[0](x).float()
            main = torch.cuda.current_stream(device)
            outs = []
            for m, s in zip(compiled, streams):
                s.wait_stream(main)
                with torch.cuda.stream(s):
                    outs.append(m(x))
            for s in streams:
                main.wait_stream(s)
            total = outs[0].float()
            for o in outs[1:]:
                total = total + o.float()
            return total

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in graphs:
            static_in = x.clone()
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    forward(static_in)
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                static_out = forward(static_in)
            graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    return Runner(_to_device(device), run, "stock compiled members, bf16 autocast, one CUDA graph, stream per member")


def cuda_graph_engine(models: list[CCT], device: torch.device, max_batch: int, **options: Any) -> Runner:
    """The lsmha engine (`CudaGraphCommittee`): bf16, stacked, compiled, one graph per bucket, multi-stream."""
    from ..engine.backends.cuda_graph_backend import CudaGraphCommittee

    engine = CudaGraphCommittee(models, device=str(device), max_batch=max_batch, **options)
    return Runner(_to_device(device), lambda x: engine.run(x)[1], engine.name)


# -- the comparison ----------------------------------------------------------------------------


GpuRow = LatencyRow  # one row type for both harnesses


def job_plan(backends: list[str], ablation: bool = True) -> list[tuple[str, str, str, list[int] | None]]:
    """(kind, group, backend or lever, batches; None: the --batch list) in the order they run:
    `PRIORITY` pairs among `backends`, the other CCT-7/3x1 and Table 6 jobs, the levers at batch 1
    (Table 6 first), Table 7."""
    pairs = [(g, b) for g, b in PRIORITY if b in backends]
    pairs += [(g, b) for g in (BASELINE, "committee-5") for b in backends if (g, b) not in pairs]
    plan: list[tuple[str, str, str, list[int] | None]] = [("main", g, b, None) for g, b in pairs]
    if ablation:
        plan += [("ablation", g, lever, [1]) for g in ("committee-5", BASELINE) for lever in LEVERS]
    plan += [("main", "committee-10", b, None) for b in backends]
    return plan


def _members(spec_text: str, seed: int) -> list[CCT]:
    return build_members(committee_specs(parse_committee(spec_text), num_classes=100), seed)


def run_comparison(
    backends: list[str],
    batches: list[int],
    device: torch.device,
    deadline_s: float,
    warmup: int = 3,
    budget_s: float = 0.3,
    seed: int = 0,
    ablation: bool = True,
    progress: bool = True,
    on_job: Callable[[dict[str, Any]], None] | None = None,
    groups: dict[str, str] = GROUPS,
) -> dict[str, Any]:
    """Time every (group, backend, batch) and the engine's levers at batch 1, until `deadline_s`.

    Returns {"rows", "ablation", "skipped", "errors", "stopped_by_sigterm", "crossover", "targets"}
    (rows as dicts); `on_job` receives that partial result after each job (so a killed run still
    leaves its rows).
    `groups` maps the three keys of `GROUPS` to committee strings (tests use tiny members).
    A `hardlimit.HardLimit` (see `sigterm_stops`) fails the running job and skips all later ones."""
    from tqdm import tqdm

    start = time.perf_counter()
    peak = bf16_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rng = np.random.default_rng(seed)
    rows: list[GpuRow] = []
    lever_rows: list[GpuRow] = []
    skipped: list[str] = []
    errors: list[str] = []
    # priority order: what the targets need first, the ablation before the ten-member committee
    plan = [(kind, group, name, sizes or batches) for kind, group, name, sizes in job_plan(backends, ablation)]
    bar = tqdm(total=sum(len(job[3]) for job in plan), desc="gpu bench", disable=not progress)
    stopped = False
    for kind, group, name, sizes in plan:
        if stopped or time.perf_counter() - start > deadline_s:
            why = "after SIGTERM (the hard time limit)" if stopped else f"past the {deadline_s:.0f} s deadline"
            skipped += [f"{kind} {group} {name} batch {b}: {why}" for b in sizes]
            bar.update(len(sizes))
            continue
        began = time.perf_counter()
        try:  # one broken job is reported (traceback on stderr, listed in "errors"), the others still run
            members = _members(groups[group], seed)
            if kind == "main":
                runner, out = make_runner(name, members, device, max(sizes)), rows
            else:
                runner, out = cuda_graph_engine(members, device, 1, **LEVERS[name]), lever_rows
            for batch in sizes:
                if time.perf_counter() - start > deadline_s:
                    skipped.append(f"{kind} {group} {name} batch {batch}: past the {deadline_s:.0f} s deadline")
                else:
                    bar.set_postfix_str(f"{group} {name} b{batch}")
                    out.append(time_row(group, members, name, runner, batch, device, rng, warmup, budget_s, peak))
                bar.update()
        except Exception as err:
            traceback.print_exc()
            stopped = from_hard_limit(err)
            what = "HardLimit: stopped by SIGTERM (the hard time limit)" if stopped else f"{type(err).__name__}: {err}"
            errors.append(f"{kind} {group} {name}: {what}")
        runner = members = None
        try:
            torch.cuda.empty_cache()
        except Exception:  # a CUDA error left by a failed job: report it, the tables must still come
            traceback.print_exc()
        if not progress:  # a log line per job: where a run's time went (compiles take tens of seconds)
            now = time.perf_counter()
            print(f"[{now - start:4.0f} s] {kind} {group} {name}: {now - began:.1f} s", flush=True)
        if on_job:
            on_job(_result(rows, lever_rows, skipped, errors, stopped))
    bar.close()
    return _result(rows, lever_rows, skipped, errors, stopped)


def _result(
    rows: list[GpuRow], lever_rows: list[GpuRow], skipped: list[str], errors: list[str], stopped: bool = False
) -> dict[str, Any]:
    base = {(r.backend, r.batch): r.median_ms for r in rows if r.model == BASELINE}
    for r in rows:
        r.ratio_vs_baseline = r.median_ms / base[(r.backend, r.batch)] if (r.backend, r.batch) in base else None
    base1 = {r.model: r.median_ms for r in lever_rows if r.backend == "cuda-graph"}
    for r in lever_rows:  # ablation ratio: lever row / full engine, same model
        r.ratio_vs_baseline = r.median_ms / base1[r.model] if r.model in base1 else None
    return {
        "rows": [asdict(r) for r in rows],
        "ablation": [asdict(r) for r in lever_rows],
        "skipped": list(skipped),
        "errors": list(errors),
        "stopped_by_sigterm": stopped,
        "crossover": crossover(rows),
        "targets": targets(rows),
    }


def crossover(rows: list[GpuRow]) -> dict[str, dict[str, int | None]]:
    """Per committee and backend: the largest timed batch at which it is faster than CCT-7/3x1."""
    out: dict[str, dict[str, int | None]] = {}
    for group in (g for g in GROUPS if g != BASELINE):
        for backend in dict.fromkeys(r.backend for r in rows):
            timed = [r for r in rows if r.model == group and r.backend == backend and r.ratio_vs_baseline]
            if timed:
                faster = [r.batch for r in timed if r.ratio_vs_baseline < 1]
                out.setdefault(group, {})[backend] = max(faster) if faster else None
    return out


def targets(rows: list[GpuRow]) -> list[dict[str, Any]]:
    """The issue's three GPU targets, each with its measured value (None: not measured)."""
    ms = {(r.model, r.backend, r.batch): r.median_ms for r in rows}

    def ratio(a: tuple, b: tuple) -> float | None:
        return ms[a] / ms[b] if a in ms and b in ms else None

    checks = [
        ("committee-5 (cuda-graph) / CCT-7/3x1 (torch-compile-graph), batch 1", "< 1.0",
         ratio(("committee-5", "cuda-graph", 1), (BASELINE, "torch-compile-graph", 1)), lambda v: v < 1.0),
        ("CCT-7/3x1 speed-up of cuda-graph over torch-compile-graph, batch 1", ">= 1.5",
         ratio((BASELINE, "torch-compile-graph", 1), (BASELINE, "cuda-graph", 1)), lambda v: v >= 1.5),
        ("committee-5 speed-up of cuda-graph over torch-bf16 (stock eager bf16), batch 256", ">= 1.5",
         ratio(("committee-5", "torch-bf16", 256), ("committee-5", "cuda-graph", 256)), lambda v: v >= 1.5),
    ]  # fmt: skip
    return [
        {"target": name, "goal": goal, "value": v, "met": None if v is None else bool(ok(v))}
        for name, goal, v, ok in checks
    ]


def summary_table(result: dict[str, Any]) -> str:
    """The short table printed last: per backend, batch-1 latencies and ratios, and crossovers."""
    rows = result["rows"]
    ms = {(r["model"], r["backend"], r["batch"]): r for r in rows}
    lines = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        line: list[object] = [backend]
        for group in GROUPS:
            r = ms.get((group, backend, 1))
            line += [r["median_ms"] if r else None]
            if group != BASELINE:
                line += [r["ratio_vs_baseline"] if r else None, result["crossover"].get(group, {}).get(backend)]
        lines.append(line)
    headers = ["backend", "CCT-7 b1 ms", "c5 b1 ms", "c5/CCT-7", "c5 crossover", "c10 b1 ms", "c10/CCT-7"]
    return format_table(headers + ["c10 crossover"], lines)


def results_path(root: Path, device_name: str) -> Path:
    """benchmarks/results/<card>_<torch>_<date>.json, names reduced to [a-z0-9.-]."""

    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")

    date = datetime.date.today().isoformat()
    return root / f"{slug(device_name)}_torch-{slug(torch.__version__)}_{date}.json"


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=",".join(DEFAULT_BACKENDS), help="comma-separated lsmha-bench backends")
    p.add_argument("--batch", type=_int_list, default=DEFAULT_BATCHES, help="batch sizes (comma-separated)")
    p.add_argument("--deadline", type=float, default=240.0, help="seconds after which no new job starts")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (compile + capture happen here)")
    p.add_argument("--budget", type=float, default=0.3, help="seconds of timed calls per row (at least 5 calls)")
    p.add_argument("--no-ablation", action="store_true", help="skip the batch-1 ablation of the engine's levers")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and images")
    p.add_argument("--json", type=Path, default=None, help="write the result here (default: --results-dir/<card>...)")
    p.add_argument("--results-dir", type=Path, default=Path("benchmarks/results"), help="where the JSON goes")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_gpu_parser(sub: argparse._SubParsersAction) -> None:
    """`lsmha-bench gpu`: register this comparison as a subcommand."""
    p = sub.add_parser("gpu", help="stock PyTorch vs the cuda-graph engine on CUDA, one run", description=__doc__,
                       formatter_class=HelpFormatter)  # fmt: skip
    add_arguments(p)
    p.set_defaults(func=cmd_gpu)


def cmd_gpu(args: argparse.Namespace) -> int:
    from .backends import BACKENDS

    if not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none; nothing measured")
        return 3
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        print(f"error: unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device)
    peak = bf16_peak_tflops(name)
    print(f"lsmha gpu bench on {name} (bf16 dense peak {peak or 'unknown'} TFLOP/s), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; random weights; deadline {args.deadline:.0f} s")  # fmt: skip
    facts = {"gpu": name, "torch": torch.__version__, "cuda": torch.version.cuda, "bf16_peak_tflops": peak,
             "date": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    path = args.json or results_path(args.results_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)

    last: dict[str, Any] = _result([], [], [], [])

    def write(result: dict[str, Any], complete: bool) -> None:
        last.update(result)
        path.write_text(json.dumps({"facts": facts, "complete": complete, **result}, indent=2) + "\n")

    print(f"results: {path} (rewritten after every job)", flush=True)
    try:
        with sigterm_stops():
            result = run_comparison(
                backends, args.batch, device, args.deadline, args.warmup, args.budget, args.seed,
                not args.no_ablation, not args.no_progress, on_job=lambda partial: write(partial, False),
            )  # fmt: skip
    except Exception as err:  # SIGTERM between two jobs: keep the last partial result
        if not from_hard_limit(err):
            raise
        result = {**last, "errors": [*last["errors"], "SIGTERM (the hard time limit) between jobs: the rest skipped"]}
        result["stopped_by_sigterm"] = True
    write(result, not result["stopped_by_sigterm"])
    headers = ["model", "backend", "batch", "median ms", "p90 ms", "images/s", "TFLOP/s", "% peak", "vs CCT-7"]
    keys = ["model", "backend", "batch", "median_ms", "p90_ms", "images_per_s", "tflops", "pct_peak"]
    print(format_table(headers, [[r[k] for k in keys] + [r["ratio_vs_baseline"]] for r in result["rows"]]))
    if result["ablation"]:
        print("\nablation at batch 1 (ratio = latency / full cuda-graph engine, same model; > 1: the lever pays)")
        print(format_table(headers[:-1] + ["vs engine"],
                           [[r[k] for k in keys] + [r["ratio_vs_baseline"]] for r in result["ablation"]]))  # fmt: skip
    for line in result["skipped"]:
        print(f"skipped: {line}")
    for line in result["errors"]:
        print(f"FAILED: {line}")
    print("\nsummary (ratio = committee / CCT-7/3x1, same backend and batch; crossover = largest batch still faster)")
    print(summary_table(result))
    for t in result["targets"]:
        verdict = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        print(f"target {t['goal']:>6}: {t['target']}: {value} {verdict}")
    print(f"wrote {path}")
    return 1 if result["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsmha.bench.gpu", description=__doc__,
                                     formatter_class=HelpFormatter)  # fmt: skip
    add_arguments(parser)
    return cmd_gpu(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
