"""The run behind `lsmha-bench gpu` (`python -m lsmha.bench.gpu_cli`): what it measures and its
options are in `lsmha.bench.gpu_cli`, which imports this module (and torch) once the arguments
are parsed."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from functools import partial
from typing import Any

import numpy as np
import torch

from ..artifacts.files import write_json_atomic
from ..cli_help import CliError
from ..models import CCT, CCTSpec, committee_specs, parse_committee
from . import gpu_plan, gpu_report
from .backends import RUNNERS, make_runner
from .gpu_plan import EXTRA_LEVERS, GROUPS, LEVERS, START_S, Job, Planner, RunnerKey
from .gpu_report import GpuRow, bf16_peak_tflops, crossover, ratios, results_path, rows_table, set_ratios
from .gpu_runners import cuda_graph_engine
from .hardlimit import from_hard_limit, sigterm_stops
from .latency import build_members, describe_row
from .runner import Runner
from .timing import Timing, time_call


def _specs(groups: dict[str, str]) -> Callable[[str], list[CCTSpec]]:
    return lambda group: committee_specs(parse_committee(groups[group]), num_classes=100)


def _time_job(job: Job, runners: dict[RunnerKey, Runner], members: dict[str, list[CCT]], device: torch.device,
              rng: np.random.Generator, budget_s: float, peak: float | None,
              on_row: Callable[[GpuRow], None]) -> None:  # fmt: skip
    """Time `job`'s rows, interleaved over its rounds (order reversed every other round), samples pooled."""
    inputs = {}
    for key, batch in job.rows:
        spec = members[key.group][0].spec
        images = rng.integers(0, 256, (batch, spec.in_chans, spec.img_size, spec.img_size), dtype=np.uint8)
        inputs[key, batch] = runners[key].prepare(images)
    samples: dict[tuple[RunnerKey, int], list[float]] = {row: [] for row in job.rows}
    gpu: dict[tuple[RunnerKey, int], list[float]] = {row: [] for row in job.rows}
    for r in range(job.rounds):
        for row in job.rows if r % 2 == 0 else job.rows[::-1]:
            fn = partial(runners[row[0]].run, inputs[row])
            timing = time_call(fn, str(device), warmup=3 if r == 0 else 1, min_repeats=-(-5 // job.rounds),
                               budget_s=budget_s / job.rounds, warmup_s=gpu_plan.WARMUP_S if r == 0 else 0.05,
                               back_to_back=True)  # fmt: skip
            samples[row] += timing.samples_ms
            if timing.back_to_back_ms is not None:
                gpu[row].append(timing.back_to_back_ms)
    for key, batch in job.rows:
        timing = Timing(tuple(samples[key, batch]))
        row = describe_row(key.group, members[key.group], key.label, batch, timing, runners[key].note, peak)
        values = {f.name: getattr(row, f.name) for f in fields(row)}
        on_row(GpuRow(**values, gpu_ms=float(np.median(gpu[key, batch])) if gpu[key, batch] else None, job=job.name))


def run_comparison(
    jobs: list[Job],
    device: torch.device,
    deadline_s: float,
    budget_s: float = 0.3,
    seed: int = 0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    groups: dict[str, str] = GROUPS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run `jobs` in order, each only if its estimate fits before `deadline_s` (seconds from now).

    Returns {"rows", "ablation", "jobs", "dropped", "errors", "stopped_by_sigterm", "ratios",
    "crossover", "complete"} (rows as dicts); `on_progress` receives that partial result after
    every row, so a killed run still leaves its rows. `groups` maps group names to committee
    strings (tests use tiny members). A `hardlimit.HardLimit` (see `sigterm_stops`) drops the
    running job and all later ones."""
    start = time.perf_counter() - START_S  # the estimates count the interpreter's start
    peak = bf16_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rng = np.random.default_rng(seed)
    planner = Planner(_specs(groups), budget_s)
    state: dict[str, Any] = {"rows": [], "ablation": [], "jobs": [], "dropped": [], "errors": [], "stopped": False}
    members: dict[str, list[CCT]] = {}
    runners: dict[RunnerKey, Runner] = {}

    def result() -> dict[str, Any]:
        set_ratios(state["rows"], state["ablation"])
        required = {(k.group, k.label, b) for job in jobs if job.required for k, b in job.rows}
        measured = {(r.model, r.backend, r.batch) for r in state["rows"]}
        return {
            "rows": [asdict(r) for r in state["rows"]], "ablation": [asdict(r) for r in state["ablation"]],
            "jobs": list(state["jobs"]), "dropped": list(state["dropped"]), "errors": list(state["errors"]),
            "stopped_by_sigterm": state["stopped"], "ratios": ratios(state["rows"]),
            "crossover": crossover(state["rows"]), "complete": required <= measured,
        }  # fmt: skip

    def on_row(row: GpuRow) -> None:
        state["ablation" if row.backend in {**LEVERS, **EXTRA_LEVERS} else "rows"].append(row)
        if on_progress:
            on_progress(result())

    with recompile_limit_raises():  # a silent fallback to eager kernels would time the wrong thing
        for job in jobs:
            elapsed = time.perf_counter() - start
            estimate = planner.estimate(job)
            if state["stopped"] or elapsed + estimate > deadline_s:
                left = deadline_s - elapsed
                why = "after SIGTERM" if state["stopped"] else f"estimated {estimate:.0f} s, {left:.0f} s left"
                state["dropped"].append(f"{job.name}: {why}")
                continue
            planner.commit(job)
            began = time.perf_counter()
            try:  # one broken job is reported (traceback on stderr, listed in "errors"), the others still run
                for key, _ in job.rows:
                    if key.group not in members:
                        members[key.group] = build_members(_specs(groups)(key.group), seed)
                    if key not in runners:
                        max_batch = max(b for j in jobs for k, b in j.rows if k == key)
                        if key.lever:
                            runners[key] = cuda_graph_engine(members[key.group], device, max_batch, **key.options)
                        else:
                            runners[key] = make_runner(key.runner, members[key.group], device, max_batch)
                _time_job(job, runners, members, device, rng, budget_s, peak, on_row)
            except Exception as err:
                traceback.print_exc()
                if from_hard_limit(err):
                    state["stopped"] = True
                    state["dropped"].append(f"{job.name}: stopped by SIGTERM (the hard time limit) while it ran")
                else:
                    state["errors"].append(f"{job.name}: {type(err).__name__}: {err}")
            spent = time.perf_counter() - began
            state["jobs"].append({"job": job.name, "estimated_s": round(estimate, 1), "measured_s": round(spent, 1)})
            log(f"[{time.perf_counter() - start:4.0f} s] {job.name}: {spent:.1f} s (estimated {estimate:.1f} s)")
            for key in [k for k in runners if k.lever]:  # lever engines are used once: free their graphs
                del runners[key]
            if device.type == "cuda":
                try:
                    torch.cuda.empty_cache()
                except Exception:  # a CUDA error left by a failed job: report it, the tables must still come
                    traceback.print_exc()
    return result()


@contextmanager
def recompile_limit_raises() -> Iterator[None]:
    """Within: a function past dynamo's recompile limit raises instead of running eagerly."""
    import torch._dynamo

    cfg = torch._dynamo.config
    if not hasattr(cfg, "fail_on_recompile_limit_hit"):
        yield
        return
    with cfg.patch(fail_on_recompile_limit_hit=True):
        yield


def jobs_from_args(args: argparse.Namespace) -> list[Job]:
    levers = {"main": tuple(LEVERS), "all": (*LEVERS, *EXTRA_LEVERS), "none": ()}[args.levers]
    return gpu_plan.default_jobs(tuple(args.batch), levers, args.table7)


def print_plan(jobs: list[Job], budget_s: float, deadline_s: float) -> None:
    planned = gpu_plan.plan(jobs, _specs(GROUPS), budget_s, deadline_s)
    print(gpu_plan.plan_table(planned, deadline_s))
    total, dropped = gpu_plan.planned_total_s(planned), sum(not fits for *_, fits in planned)
    print(f"total: {total:.0f} s estimated (interpreter start {START_S:.0f} s included) for --deadline "
          f"{deadline_s:.0f} s, {dropped} job(s) dropped; * = the rows the committee/baseline ratios need",
          flush=True)  # fmt: skip


def cmd_gpu(args: argparse.Namespace) -> int:
    if args.budget <= 0 or args.deadline <= 0:
        raise CliError.usage(f"--budget and --deadline must be > 0, got {args.budget} and {args.deadline}")
    jobs = jobs_from_args(args)
    unknown = sorted({k.runner for job in jobs for k, _ in job.rows} - set(RUNNERS))
    if unknown:
        raise CliError(f"the job list names runners {unknown} that lsmha.bench.backends.RUNNERS lacks")
    if args.plan:
        print_plan(jobs, args.budget, args.deadline)
        return 0
    if not torch.cuda.is_available():
        raise CliError.environment(
            f"no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none; nothing measured"
        )
    device = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device)
    peak = bf16_peak_tflops(name)
    print(f"lsmha gpu bench on {name} (bf16 dense peak {peak or 'unknown'} TFLOP/s), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; random weights; deadline {args.deadline:.0f} s", flush=True)  # fmt: skip
    facts = {"gpu": name, "torch": torch.__version__, "cuda": torch.version.cuda, "bf16_peak_tflops": peak,
             "date": datetime.datetime.now().isoformat(timespec="seconds"), "deadline_s": args.deadline,
             "budget_s": args.budget}  # fmt: skip
    path = args.json or results_path(args.results_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    last: dict[str, Any] = {}

    def write(result: dict[str, Any]) -> None:
        last.update(result)
        write_json_atomic(path, {"facts": facts, **result})  # rewritten after every row: never half-written

    print_plan(jobs, args.budget, args.deadline)
    print(f"results: {path} (rewritten after every row)", flush=True)
    try:
        with sigterm_stops():
            result = run_comparison(jobs, device, args.deadline, args.budget, args.seed, on_progress=write,
                                    log=lambda line: print(line, flush=True))  # fmt: skip
    except Exception as err:  # SIGTERM between two jobs: keep the last partial result
        if not from_hard_limit(err) or not last:
            raise
        result = {**last, "stopped_by_sigterm": True}
        result["dropped"] = [*last["dropped"], "SIGTERM (the hard time limit) between jobs: the rest dropped"]
    write(result)
    print(rows_table(result["rows"]))
    if result["ablation"]:
        print("\nlevers at batch 1 (ratio = latency / default engine, same model; < 1: the lever pays)")
        print(rows_table(result["ablation"], last="vs engine"))
    for line in result["dropped"]:
        print(f"dropped: {line}")
    for line in result["errors"]:
        print(f"FAILED: {line}")
    print(
        f"\nsummary: committee/baseline ratios ({gpu_plan.ENGINE} = the engine, stock = bf16 weights, compiled, "
        "CUDA graphs)"
    )
    print(gpu_report.summary_table(result))
    print(f"crossover (largest batch a committee is still faster than CCT-7/3x1): {result['crossover']}")
    print(f"wrote {path}")
    if not result["complete"]:
        print("not all rows of the committee/baseline ratios were measured", file=sys.stderr)
    return 0 if result["complete"] and not result["errors"] else 1
