"""What `lsmha-bench gpu` runs, in which order, and how long each job should take.

A job times a few rows (group, runner, batch); its runners are built once and kept for
later jobs. Jobs run in priority order: first `ratios` (the fair stock baselines and the
engine, the rows the committee/baseline ratios need, interleaved over rounds), then the
other batches, eager bf16, the engine's levers at batch 1 (committee-5), and, on request,
Table 7. A job starts only if its estimate fits in the time left; jobs that do not fit
are listed as dropped, never silently lost.

The estimate counts compiles: every inductor graph a runner builds costs `COMPILE_S` plus
`COMPILE_BLOCK_S` per transformer block in it, once for the first batch shape and once more
for the second (dynamo's automatic dynamic recompile; later shapes reuse that graph); a
graph an earlier runner already compiled costs `CACHED_S` (inductor's FX-graph and kernel
caches). These constants are estimates for a 16-core host with a cold cache; every job's
measured seconds are in the result JSON next to its estimate, to correct them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..models import CCTSpec
from ..tables import format_table

BASELINE = "cct_7_3x1"
GROUPS: dict[str, str] = {BASELINE: "cct_7_3x1", "committee-5": "table6:5", "committee-10": "table7"}
STOCK = "torch-compile-graph"  # the fair stock baseline of one model
STOCK_COMMITTEE = "torch-compile-streams"  # the fair stock baseline of a committee
ENGINE = "cuda-graph"
DEFAULT_BATCHES = (1, 8, 64, 256)
# the engine's levers, each changed alone against the default engine at batch 1, most telling first
LEVERS: dict[str, dict[str, Any]] = {
    "stack=pad": {"stack": "pad"},
    "one graph": {"one_graph": True},
    "sdpa=one": {"sdpa": "one"},
    "bias=fused": {"bias": "fused"},
    "input=float": {"input": "float"},
    "all levers": {"stack": "pad", "sdpa": "one", "bias": "fused", "one_graph": True},
    "compile=off": {"compile": "off"},
    "one stream": {"streams": False},
}
EXTRA_LEVERS: dict[str, dict[str, Any]] = {  # opt-in (--levers all): each compiles much, teaches little
    "stack=off": {"stack": "off"},
    "fp32": {"precision": "fp32"},
}

START_S = 12.0  # interpreter, torch import, CUDA context
BUILD_S = 1.0  # members built and moved, per runner
COMPILE_S = 5.0
COMPILE_BLOCK_S = 1.2
SMALL_GRAPH_S = 2.0  # the engine's standardisation and combine graphs
CACHED_S = 1.5
ROW_OVERHEAD_S = 0.6  # capture, first calls, back-to-back calls
WARMUP_S = 0.2  # replays after compiling, before the first timed call


@dataclass(frozen=True)
class RunnerKey:
    """A runner of the run: a `RUNNERS` name for a group, or the engine with one lever changed."""

    group: str
    runner: str
    lever: str | None = None

    @property
    def label(self) -> str:
        return self.lever or self.runner

    @property
    def options(self) -> dict[str, Any]:
        return {**LEVERS, **EXTRA_LEVERS}[self.lever] if self.lever else {}


@dataclass(frozen=True)
class Job:
    """Rows (runner, batch) timed together, interleaved over `rounds` passes."""

    name: str
    rows: tuple[tuple[RunnerKey, int], ...]
    required: bool = False  # the committee/baseline ratios need its rows
    rounds: int = 1


def default_jobs(
    batches: tuple[int, ...] = DEFAULT_BATCHES, levers: tuple[str, ...] = tuple(LEVERS), table7: bool = False
) -> list[Job]:
    """The jobs of a run, in the order they run (see the module doc)."""
    big = max(batches)
    stock, engine = RunnerKey(BASELINE, STOCK), RunnerKey(BASELINE, ENGINE)
    c5_stock, c5_engine = RunnerKey("committee-5", STOCK_COMMITTEE), RunnerKey("committee-5", ENGINE)
    ratio_rows = [(stock, 1), (engine, 1), (c5_stock, 1), (c5_engine, 1), (c5_stock, big), (c5_engine, big)]
    jobs = [Job("ratios", tuple(dict.fromkeys(ratio_rows)), required=True, rounds=3)]
    rest = [b for b in batches if b not in (1, big)]
    jobs += [Job(f"{k.group} {k.label}", tuple((k, b) for b in rest + [big]), rounds=1) for k in (stock, engine)]
    jobs += [Job(f"{k.group} {k.label}", tuple((k, b) for b in rest), rounds=1) for k in (c5_stock, c5_engine)]
    for group in (BASELINE, "committee-5"):
        key = RunnerKey(group, "torch-bf16")
        jobs.append(Job(f"{group} torch-bf16", tuple((key, b) for b in batches)))
    jobs += [Job(f"lever {lever}", ((RunnerKey("committee-5", ENGINE, lever), 1),)) for lever in levers]
    if table7:
        for runner in (STOCK_COMMITTEE, ENGINE):
            key = RunnerKey("committee-10", runner)
            jobs.append(Job(f"committee-10 {runner}", tuple((key, b) for b in batches)))
    seen: set[tuple[RunnerKey, int]] = set()
    unique = []
    for job in jobs:  # each row once, in the first job that has it (e.g. --batch 1)
        rows = tuple(row for row in job.rows if row not in seen)
        seen.update(rows)
        if rows:
            unique.append(Job(job.name, rows, job.required, job.rounds))
    return unique


def _engine_graphs(specs: list[CCTSpec], options: dict[str, Any]) -> list[tuple[Hashable, int]]:
    """(graph key, blocks) of every inductor graph the engine with `options` compiles."""
    from ..engine.stacked import group_members  # torch: loaded when a plan is made, not for `--help`

    if options.get("compile") == "off":
        return []
    stack = options.get("stack", "shape")
    groups = [[i] for i in range(len(specs))] if stack == "off" else group_members(specs, by=stack)
    dtype = options.get("precision", "bf16")
    levers = (stack, options.get("sdpa", "per-heads"), options.get("bias", "baddbmm"), dtype)
    units = [(tuple(g), specs[g[0]].n_blocks) for g in groups]
    if options.get("one_graph"):
        return [(("engine", *levers, options.get("input", "uint8"), tuple(units)), sum(b for _, b in units))]
    graphs: list[tuple[Hashable, int]] = [(("unit", *levers, g), b) for g, b in units]
    return graphs + [(("prepare", dtype, options.get("input", "uint8")), 0), (("combine", stack, len(units)), 0)]


def runner_graphs(key: RunnerKey, specs: list[CCTSpec]) -> list[tuple[Hashable, int]]:
    """(graph key, transformer blocks in it) of every graph `key`'s runner compiles (per shape)."""
    if key.runner == STOCK:
        return [(("stock", key.group), sum(s.n_blocks for s in specs))]
    if key.runner == STOCK_COMMITTEE:
        return [(("member", key.group, i), s.n_blocks) for i, s in enumerate(specs)]
    if key.runner == ENGINE:
        return [((key.group, *graph), blocks) for graph, blocks in _engine_graphs(specs, key.options)]
    return []  # eager runners compile nothing


class Planner:
    """Estimated seconds per job, given what earlier jobs already built and compiled.

    Args:
        specs_of: group name -> its member specs.
        budget_s: seconds of timed calls per row (all rounds together).
    """

    def __init__(self, specs_of: Callable[[str], list[CCTSpec]], budget_s: float) -> None:
        self.specs_of = specs_of
        self.budget_s = budget_s
        self.shapes: dict[RunnerKey, set[int]] = {}  # batches each built runner has compiled for
        self.compiled: set[tuple[Hashable, int]] = set()  # (graph key, shape-compile number) done

    def _cost(self, job: Job, commit: bool) -> float:
        shapes = {k: set(v) for k, v in self.shapes.items()}
        compiled = set(self.compiled)
        seconds = 0.0
        for key, batch in job.rows:
            if key not in shapes:
                shapes[key] = set()
                seconds += BUILD_S
            if batch not in shapes[key] and len(shapes[key]) < 2:  # a new static or the dynamic compile
                event = len(shapes[key])
                for graph, blocks in runner_graphs(key, self.specs_of(key.group)):
                    full = SMALL_GRAPH_S if blocks == 0 else COMPILE_S + COMPILE_BLOCK_S * blocks
                    seconds += CACHED_S if (graph, event) in compiled else full
                    compiled.add((graph, event))
            shapes[key].add(batch)
            seconds += WARMUP_S + ROW_OVERHEAD_S + self.budget_s * 1.1  # + back-to-back calls
        if commit:
            self.shapes, self.compiled = shapes, compiled
        return seconds

    def estimate(self, job: Job) -> float:
        """Seconds `job` should take after the jobs committed so far."""
        return self._cost(job, commit=False)

    def commit(self, job: Job) -> float:
        """Count `job` as run (its runners built, its graphs compiled); its estimate."""
        return self._cost(job, commit=True)


def plan(
    jobs: list[Job], specs_of: Callable[[str], list[CCTSpec]], budget_s: float, limit_s: float | None = None
) -> list[tuple[Job, float, bool]]:
    """Each job with its estimate and whether it fits: run in order as `lsmha-bench gpu` runs
    them, a job that would end past `limit_s` (interpreter start included) dropped and the
    next tried in the time left."""
    planner, spent, out = Planner(specs_of, budget_s), START_S, []
    for job in jobs:
        seconds = planner.estimate(job)
        fits = limit_s is None or spent + seconds <= limit_s
        if fits:
            planner.commit(job)
            spent += seconds
        out.append((job, seconds, fits))
    return out


def plan_table(planned: list[tuple[Job, float, bool]], limit_s: float) -> str:
    """The plan as a table: job, rows, estimate, cumulative time (interpreter start included)
    and whether it fits in `limit_s`."""
    lines, total = [], START_S
    for job, seconds, fits in planned:
        total += seconds if fits else 0.0
        by_runner: dict[RunnerKey, list[int]] = {}
        for key, batch in job.rows:
            by_runner.setdefault(key, []).append(batch)
        rows = "; ".join(f"{k.group} {k.label} b{','.join(map(str, b))}" for k, b in by_runner.items())
        name = job.name + (" *" if job.required else "")
        lines.append([name, rows, round(seconds, 1), round(total, 1) if fits else None, "yes" if fits else "dropped"])
    return format_table(["job", "rows", "est. s", "cumulative s", f"fits {limit_s:.0f} s"], lines)


def planned_total_s(planned: list[tuple[Job, float, bool]]) -> float:
    """Estimated seconds of the jobs that fit, interpreter start included."""
    return START_S + sum(seconds for _, seconds, fits in planned if fits)
