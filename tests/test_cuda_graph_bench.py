"""The GPU comparison harness (lsmha.bench.gpu, gpu_plan, gpu_report): its plan and
bookkeeping on CPU, its runners on a GPU."""

import datetime
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lsmha.bench import gpu, gpu_cli, gpu_plan, gpu_report
from lsmha.bench.backends import CUDA_ONLY, RUNNERS, describe, make_runner
from lsmha.bench.cli import main as bench_main
from lsmha.bench.gpu_plan import BASELINE, ENGINE, STOCK, STOCK_COMMITTEE, Job, Planner, RunnerKey
from lsmha.bench.timing import time_call
from lsmha.models import CCT, CCTSpec, committee_specs, parse_committee

CUDA = torch.cuda.is_available()
TINY = {
    "cct_7_3x1": "cct_7_3x1:dim=32:heads=4:n_blocks=2:img_size=16",
    "committee-5": "cct_2_3x2:dim=32:heads=4:img_size=16,cct_2_3x2:dim=32:heads=2:img_size=16",
    "committee-10": "cct_1_3x1:dim=16:heads=2:img_size=16",
}


def _specs(group):
    return committee_specs(parse_committee(gpu_plan.GROUPS[group]), num_classes=100)


def _row(model, backend, batch, ms, gpu_ms=None):
    return gpu_report.GpuRow(model, 1, 0, 1.0, 1, backend, batch, ms, ms, batch / ms, 1.0, gpu_ms=gpu_ms)


def test_bf16_peaks_by_device_name():
    peak = gpu_report.bf16_peak_tflops
    assert peak("NVIDIA H100 80GB HBM3") == 989.0 and peak("NVIDIA H100 PCIe") == 756.0
    assert peak("NVIDIA H200") == 989.0 and peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("NVIDIA L40S") == 362.0 and peak("NVIDIA L4") == 121.0 and peak("Tesla T4") is None


def test_ratios_crossover_and_summary():
    rows = [
        _row(BASELINE, STOCK, 1, 0.27, 0.20), _row(BASELINE, ENGINE, 1, 0.15, 0.10),
        _row("committee-5", STOCK_COMMITTEE, 1, 0.37), _row("committee-5", ENGINE, 1, 0.12, 0.08),
        _row("committee-5", STOCK_COMMITTEE, 256, 32.0), _row("committee-5", ENGINE, 256, 20.0),
        _row(BASELINE, STOCK, 256, 3.1), _row(BASELINE, ENGINE, 256, 3.0),
    ]  # fmt: skip
    got = {r["ratio"]: r for r in gpu_report.ratios(rows)}
    assert got["committee-5 engine / CCT-7/3x1 stock, batch 1"]["value"] == pytest.approx(0.12 / 0.27)
    assert got["committee-5 engine / CCT-7/3x1 stock, batch 1"]["gpu_time_value"] == pytest.approx(0.08 / 0.20)
    assert got["committee-5 stock / CCT-7/3x1 stock, batch 1"]["gpu_time_value"] is None  # stock row lacks it
    assert got["CCT-7/3x1 stock / engine, batch 1"]["value"] == pytest.approx(1.8)
    assert got["committee-5 stock / engine, largest batch"]["value"] == pytest.approx(1.6)
    assert [r["value"] for r in gpu_report.ratios(rows[:2])][2:4] == [pytest.approx(1.8), None]
    # the committee's stock runner is compared with CCT-7/3x1's stock runner; the engine with the engine
    assert gpu_report.crossover(rows) == {"committee-5": {STOCK_COMMITTEE: None, ENGINE: 1}}
    table = gpu_report.summary_table({"ratios": gpu_report.ratios(rows)})
    assert table.splitlines()[0].split()[:3] == ["ratio", "latency", "GPU"] and "0.444" in table


def test_results_path_names_card_torch_and_date():
    path = gpu_report.results_path(Path("benchmarks/results"), "NVIDIA H100 80GB HBM3")
    today = datetime.date.today().isoformat()
    assert path.parent == Path("benchmarks/results")
    assert path.name.startswith("nvidia-h100-80gb-hbm3_torch-") and path.name.endswith(f"_{today}.json")


def test_runner_table_is_a_plain_dict_of_factories_and_cuda_only_refused_on_cpu():
    assert all(callable(f) for f in RUNNERS.values()) and set(RUNNERS) >= CUDA_ONLY
    for name in ("torch-compile-graph", "torch-compile-streams", "cuda-graph", "torch-cuda-graph"):
        with pytest.raises(ValueError, match="needs --device cuda"):
            make_runner(name, [], torch.device("cpu"), 1)
    assert "torch-stacked" not in CUDA_ONLY and "bf16 weights" in describe("torch-compile-graph")
    with pytest.raises(ValueError, match="unknown runner 'nope'"):
        make_runner("nope", [], torch.device("cpu"), 1)


# -- the plan ----------------------------------------------------------------------------------


def test_default_plan_runs_the_ratios_first_and_fits_420_s():
    jobs = gpu_plan.default_jobs()
    first = jobs[0]
    assert first.name == "ratios" and first.required and first.rounds == 3
    assert {(k.group, k.runner, b) for k, b in first.rows} == {
        (BASELINE, STOCK, 1), (BASELINE, ENGINE, 1), ("committee-5", STOCK_COMMITTEE, 1),
        ("committee-5", ENGINE, 1), ("committee-5", STOCK_COMMITTEE, 256), ("committee-5", ENGINE, 256),
    }  # fmt: skip
    assert not any(job.required for job in jobs[1:])
    rows = [(k, b) for job in jobs for k, b in job.rows]
    assert len(rows) == len(set(rows))  # each row once
    levers = [job.name.startswith("lever") for job in jobs]
    assert all(levers[levers.index(True) :]) and levers.count(True) == len(gpu_plan.LEVERS)  # levers last
    planned = gpu_plan.plan(jobs, _specs, budget_s=0.3, limit_s=420)
    assert gpu_plan.planned_total_s(planned) <= 420 and all(fits for *_, fits in planned)
    assert all(seconds > 0 for _, seconds, _ in planned)
    # a tighter limit drops a costly job and still fits a cheaper later one in the time left
    names = [job.name for job in jobs]
    costly = names.index("lever all levers")  # followed by the cheap "compile=off"
    limit = gpu_plan.START_S + sum(seconds for _, seconds, _ in planned[: costly + 1]) - 1
    fits = [f for *_, f in gpu_plan.plan(jobs, _specs, budget_s=0.3, limit_s=limit)]
    assert fits[:costly] == [True] * costly and not fits[costly] and fits[names.index("lever compile=off")]
    assert not any(job.rows[0][0].group == "committee-10" for job in jobs)
    assert any(job.rows[0][0].group == "committee-10" for job in gpu_plan.default_jobs(table7=True))


def test_planner_counts_compiles_shapes_and_cached_graphs():
    planner = Planner(_specs, budget_s=0.0)
    stock = RunnerKey(BASELINE, STOCK)
    one = planner.commit(Job("b1", ((stock, 1),)))
    second_shape = planner.commit(Job("b8", ((stock, 8),)))  # the dynamic recompile
    third_shape = planner.commit(Job("b64", ((stock, 64),)))  # reuses the dynamic graph
    row = gpu_plan.WARMUP_S + gpu_plan.ROW_OVERHEAD_S
    blocks = _specs(BASELINE)[0].n_blocks
    assert one == pytest.approx(gpu_plan.BUILD_S + gpu_plan.COMPILE_S + gpu_plan.COMPILE_BLOCK_S * blocks + row)
    assert second_shape == pytest.approx(one - gpu_plan.BUILD_S) and third_shape == pytest.approx(row)
    assert planner.estimate(Job("eager", ((RunnerKey(BASELINE, "torch-bf16"), 1),))) == pytest.approx(
        gpu_plan.BUILD_S + row
    )
    # a lever whose graphs the default engine already compiled costs the cache only
    planner.commit(Job("engine", ((RunnerKey("committee-5", ENGINE), 1),)))
    cached = planner.estimate(Job("one stream", ((RunnerKey("committee-5", ENGINE, "one stream"), 1),)))
    fresh = planner.estimate(Job("sdpa=one", ((RunnerKey("committee-5", ENGINE, "sdpa=one"), 1),)))
    assert cached == pytest.approx(gpu_plan.BUILD_S + 4 * gpu_plan.CACHED_S + row) and fresh > cached
    assert planner.estimate(Job("off", ((RunnerKey("committee-5", ENGINE, "compile=off"), 1),))) == pytest.approx(
        gpu_plan.BUILD_S + row
    )


def test_plan_cli_prints_jobs_estimates_and_total_on_any_machine(capsys):
    assert bench_main(["gpu", "--plan"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2].split()[:2] == ["ratios", "*"]
    total = float(lines[-1].split()[1])
    assert lines[-1].startswith("total: ") and total <= 420 and "0 job(s) dropped" in lines[-1]
    assert "lever stack=pad" in out and "dropped " not in out
    assert gpu_cli.main(["--plan", "--deadline", "100"]) == 0
    assert "dropped" in capsys.readouterr().out


# -- the run, on CPU runners --------------------------------------------------------------------


def _cpu_jobs():
    torch_base, stacked = RunnerKey(BASELINE, "torch"), RunnerKey("committee-5", "torch-stacked")
    torch_c5 = RunnerKey("committee-5", "torch")
    return [
        Job("ratios", ((torch_base, 1), (torch_c5, 1), (torch_base, 2), (torch_c5, 2)), required=True, rounds=2),
        Job("stacked", ((stacked, 1), (stacked, 2))),
    ]


def test_run_comparison_on_cpu_rows_ratios_jobs_and_partials(monkeypatch):
    monkeypatch.setattr(gpu_plan, "WARMUP_S", 0.0)
    partials = []
    result = gpu.run_comparison(_cpu_jobs(), torch.device("cpu"), deadline_s=600, budget_s=0.0,
                                on_progress=partials.append, groups=TINY, log=lambda line: None)  # fmt: skip
    rows = result["rows"]
    assert [(r["model"], r["backend"], r["batch"]) for r in rows] == [
        (BASELINE, "torch", 1), ("committee-5", "torch", 1), (BASELINE, "torch", 2), ("committee-5", "torch", 2),
        ("committee-5", "torch-stacked", 1), ("committee-5", "torch-stacked", 2),
    ]  # fmt: skip
    assert all(r["calls"] >= 5 and r["gpu_ms"] > 0 and r["pct_peak"] is None for r in rows)
    assert all(r["ratio_vs_baseline"] == 1.0 for r in rows if r["model"] == BASELINE)
    assert result["complete"] and result["errors"] == [] and result["dropped"] == []
    assert [j["job"] for j in result["jobs"]] == ["ratios", "stacked"]
    assert all(j["estimated_s"] > 0 and j["measured_s"] > 0 for j in result["jobs"])
    assert len(partials) == len(rows) and len(partials[0]["rows"]) == 1  # rewritten after every row
    assert json.loads(json.dumps(result)) == result


def test_run_comparison_drops_what_would_not_finish_and_records_failures(monkeypatch):
    monkeypatch.setattr(gpu_plan, "WARMUP_S", 0.0)
    jobs = _cpu_jobs()
    lever = Job("lever one stream", ((RunnerKey("committee-5", ENGINE, "one stream"), 1),))
    result = gpu.run_comparison([*jobs, lever], torch.device("cpu"), deadline_s=600, budget_s=0.0, groups=TINY,
                                log=lambda line: None)  # fmt: skip
    assert result["complete"] and result["ablation"] == []
    assert result["errors"] == ["lever one stream: ValueError: runner 'cuda-graph' needs --device cuda, got cpu"]
    result = gpu.run_comparison(jobs, torch.device("cpu"), deadline_s=0.0, budget_s=0.0, groups=TINY,
                                log=lambda line: None)  # fmt: skip
    assert result["rows"] == [] and not result["complete"]
    assert [d.split(":")[0] for d in result["dropped"]] == ["ratios", "stacked"]
    assert all("s left" in d for d in result["dropped"])


def _sigterm_run(monkeypatch):
    def killed(models, device, max_batch):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode
        for _ in range(10_000_000):
            pass
        raise AssertionError("SIGTERM did not stop the job")

    monkeypatch.setitem(RUNNERS, "sigterm", killed)
    monkeypatch.setattr(gpu_plan, "WARMUP_S", 0.0)
    jobs = [_cpu_jobs()[0], Job("killed", ((RunnerKey(BASELINE, "sigterm"), 1),)), _cpu_jobs()[1]]
    before = signal.getsignal(signal.SIGTERM)
    with gpu.sigterm_stops():
        result = gpu.run_comparison(jobs, torch.device("cpu"), deadline_s=600, budget_s=0.0, groups=TINY,
                                    log=lambda line: None)  # fmt: skip
    assert signal.getsignal(signal.SIGTERM) == before  # restored on leaving
    assert len(result["rows"]) == 4 and result["complete"] and result["stopped_by_sigterm"]
    assert result["errors"] == []
    killed_line = "killed: stopped by SIGTERM (the hard time limit) while it ran"
    assert result["dropped"] == [killed_line, "stacked: after SIGTERM"]


def test_sigterm_drops_the_running_job_and_the_rest_and_keeps_rows():
    """The gpu_check.sh hard limit (timeout's SIGTERM) must still leave a result to print.

    In a fresh interpreter: a process that has run OpenVINO's default CPU plugin (the CPU
    latency tests) can crash when it signals itself, which `lsmha-bench gpu` never meets."""
    code = (
        "import sys, pytest; sys.path.insert(0, sys.argv[1]); import test_cuda_graph_bench as t; "
        "mp = pytest.MonkeyPatch(); t._sigterm_run(mp); mp.undo(); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@pytest.mark.skipif(CUDA, reason="checks the no-GPU exit")
def test_gpu_bench_without_cuda_exits_3(capsys):
    assert gpu_cli.main([]) == 3
    assert "no CUDA device" in capsys.readouterr().err


def test_time_call_warms_up_by_time_and_times_back_to_back():
    calls = []
    timing = time_call(lambda: calls.append(1), "cpu", warmup=1, min_repeats=5, budget_s=0.0, warmup_s=0.05,
                       back_to_back=True)  # fmt: skip
    assert len(timing.samples_ms) == 5 and timing.back_to_back_ms is not None and timing.back_to_back_ms >= 0
    assert len(calls) > 1 + 5 + 5 + 100  # 50 ms of warm-up calls of a no-op: far more than 100
    assert time_call(lambda: None, "cpu", budget_s=0.0).back_to_back_ms is None


def test_latency_cli_times_torch_stacked_on_cpu(tmp_path):
    out = tmp_path / "lat.json"
    args = ["latency", "--device", "cpu", "--backend", "torch,torch-stacked", "--batch", "2", "--warmup", "1"]
    args += ["--budget", "0.01", "--no-progress", "--json", str(out), "--baseline", "cct_1_3x1:dim=32:heads=4"]
    args += ["--committee", "cct_1_3x1:dim=32:heads=4,cct_1_3x1:dim=32:heads=2,cct_1_3x1:dim=16:heads=2"]
    assert bench_main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    stacked = [r for r in rows if r["backend"] == "torch-stacked" and r["members"] == 3]
    assert len(stacked) == 1 and "2 unit(s) for 3 member(s)" in stacked[0]["note"]


def test_torch_stacked_runner_matches_eager_sum():
    spec = CCTSpec(n_conv=1, n_blocks=1, dim=32, heads=4, num_classes=10, img_size=16)
    torch.manual_seed(0)
    models = [CCT(spec).eval(), CCT(spec.replace(heads=2)).eval()]
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    want = make_runner("torch", models, torch.device("cpu"), 3)
    got = make_runner("torch-stacked", models, torch.device("cpu"), 3)
    torch.testing.assert_close(got.run(got.prepare(images)), want.run(want.prepare(images)), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device; torch sees none")
@pytest.mark.parametrize(
    "name", ["torch-bf16", "torch-cuda-graph", "torch-compile-graph", "torch-compile-streams", "cuda-graph"]
)
def test_cuda_runners_match_eager_fp32(name):
    spec = CCTSpec(n_conv=2, n_blocks=1, dim=32, heads=4, num_classes=10, img_size=16)
    torch.manual_seed(0)
    models = [CCT(spec).eval(), CCT(spec.replace(heads=8)).eval(), CCT(spec.replace(dim=48, heads=3)).eval()]
    for m in models:
        m.fc.weight.data.mul_(30.0)
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 16, 16), dtype=np.uint8)
    with torch.no_grad():
        want = sum(m(torch.from_numpy(images)) for m in models)
    runner = make_runner(name, models, torch.device("cuda"), 8)
    x = runner.prepare(images)
    got = runner.run(x).float().cpu()
    got_again = runner.run(x).float().cpu()  # a replayed graph gives the same answer
    rel = float((got - want).norm() / want.norm())
    assert rel <= 2e-2, f"{name}: relative error {rel:.3g}"
    torch.testing.assert_close(got, got_again)
    assert all(p.dtype == torch.float32 for m in models for p in m.parameters())  # callers' members untouched


def test_recompile_limit_raises_within_the_run_only():
    import torch._dynamo

    cfg = torch._dynamo.config
    before = cfg.fail_on_recompile_limit_hit
    with gpu.recompile_limit_raises():
        assert cfg.fail_on_recompile_limit_hit
    assert cfg.fail_on_recompile_limit_hit == before


def test_plan_with_batch_1_only_times_each_ratio_row_once():
    (first, *rest) = gpu_plan.default_jobs(batches=(1,))
    rows = [row for job in [first, *rest] for row in job.rows]
    assert len(first.rows) == 4 and len(rows) == len(set(rows)) and all(b == 1 for _, b in rows)
    assert [job.name for job in rest[:2]] == [f"{BASELINE} torch-bf16", "committee-5 torch-bf16"]
