"""The GPU comparison harness (lsmha.bench.gpu): its bookkeeping on CPU, its runners on a GPU."""

import datetime
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from lsmha.bench import gpu
from lsmha.bench.backends import BACKENDS, make_runner
from lsmha.bench.cli import main as bench_main
from lsmha.models import CCT, CCTSpec

CUDA = torch.cuda.is_available()


def _row(model, backend, batch, ms):
    return gpu.GpuRow(model, 1, 0, 1.0, 1, backend, batch, ms, ms, batch / ms, 1.0)


def _rows():
    rows = [
        _row("cct_7_3x1", "torch-compile-graph", 1, 0.27),
        _row("cct_7_3x1", "cuda-graph", 1, 0.15),
        _row("cct_7_3x1", "cuda-graph", 256, 3.0),
        _row("committee-5", "torch-compile-graph", 1, 0.37),
        _row("committee-5", "cuda-graph", 1, 0.12),
        _row("committee-5", "cuda-graph", 256, 20.0),
        _row("committee-5", "torch-bf16", 256, 32.0),
    ]
    base = {(r.backend, r.batch): r.median_ms for r in rows if r.model == "cct_7_3x1"}
    for r in rows:
        r.ratio_vs_baseline = r.median_ms / base[(r.backend, r.batch)] if (r.backend, r.batch) in base else None
    return rows


def test_bf16_peaks_by_device_name():
    assert gpu.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.bf16_peak_tflops("NVIDIA H200") == 989.0
    assert gpu.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.bf16_peak_tflops("NVIDIA L40S") == 362.0
    assert gpu.bf16_peak_tflops("NVIDIA L4") == 121.0
    assert gpu.bf16_peak_tflops("Tesla T4") is None


def test_targets_crossover_and_summary():
    rows = _rows()
    t = {x["goal"] + x["target"][:12]: x for x in gpu.targets(rows)}
    values = [(round(x["value"], 4), x["met"]) for x in t.values()]
    assert values == [(round(0.12 / 0.27, 4), True), (round(0.27 / 0.15, 4), True), (1.6, True)]
    assert gpu.crossover(rows) == {"committee-5": {"torch-compile-graph": None, "cuda-graph": 1}}
    missing = gpu.targets(rows[:2])
    assert [x["met"] for x in missing] == [None, True, None]
    from dataclasses import asdict

    result = {"rows": [asdict(r) for r in rows], "crossover": gpu.crossover(rows)}
    table = gpu.summary_table(result)
    assert table.splitlines()[0].split()[:3] == ["backend", "CCT-7", "b1"]
    assert "cuda-graph" in table and "0.8" in table


def test_results_path_names_card_torch_and_date():
    path = gpu.results_path(Path("benchmarks/results"), "NVIDIA H100 80GB HBM3")
    today = datetime.date.today().isoformat()
    assert path.parent == Path("benchmarks/results")
    assert path.name.startswith("nvidia-h100-80gb-hbm3_torch-") and path.name.endswith(f"_{today}.json")


def test_runner_entries_registered_and_cuda_only_refused_on_cpu():
    for name in ("torch-compile-graph", "torch-compile-streams", "cuda-graph"):
        assert BACKENDS[name].cuda_only
        with pytest.raises(ValueError, match="needs --device cuda"):
            make_runner(name, [], torch.device("cpu"), 1)
    assert not BACKENDS["torch-stacked"].cuda_only


TINY = {
    "cct_7_3x1": "cct_7_3x1:dim=32:heads=4:n_blocks=2:img_size=16",
    "committee-5": "cct_2_3x2:dim=32:heads=4:img_size=16,cct_2_3x2:dim=32:heads=2:img_size=16",
    "committee-10": "cct_1_3x1:dim=16:heads=2:img_size=16",
}


@pytest.mark.skipif(CUDA, reason="checks the harness on CPU, where the engine's lever jobs must fail")
def test_run_comparison_on_cpu_rows_ratios_errors_and_partials(tmp_path):
    partials = []
    result = gpu.run_comparison(
        ["torch", "torch-stacked"], [1, 2], torch.device("cpu"), deadline_s=600, warmup=1, budget_s=0.0,
        progress=False, on_job=partials.append, groups=TINY,
    )  # fmt: skip
    rows = result["rows"]
    assert [(r["model"], r["backend"], r["batch"]) for r in rows[:4]] == [
        ("cct_7_3x1", "torch", 1), ("cct_7_3x1", "torch", 2), ("cct_7_3x1", "torch-stacked", 1),
        ("cct_7_3x1", "torch-stacked", 2),
    ]  # fmt: skip
    assert len(rows) == 12 and all(r["pct_peak"] is None and r["tflops"] > 0 for r in rows)
    assert all(r["ratio_vs_baseline"] == 1.0 for r in rows if r["model"] == "cct_7_3x1")
    # the engine's lever jobs need CUDA: each fails alone, is reported, and the rest still ran
    assert len(result["errors"]) == 2 * len(gpu.LEVERS) and result["ablation"] == []
    assert all("BackendUnavailable" in e and "needs a CUDA GPU" in e for e in result["errors"])
    assert rows[-1]["model"] == "committee-10"  # the ten-member group runs after the ablation
    assert len(partials) == 2 * 2 + 2 * len(gpu.LEVERS) + 2 and len(partials[0]["rows"]) == 2
    assert [t["met"] for t in result["targets"]] == [None, None, None]
    if importlib.util.find_spec("matplotlib"):  # what gpu_check.sh plots after the bench
        from lsmha.bench.plot import plot_latency

        assert plot_latency(result, tmp_path / "gpu.png").stat().st_size > 20_000


def test_run_comparison_stops_at_the_deadline():
    result = gpu.run_comparison(
        ["torch"], [1], torch.device("cpu"), deadline_s=0.0, warmup=1, budget_s=0.0, ablation=False,
        progress=False, groups=TINY,
    )  # fmt: skip
    assert result["rows"] == [] and len(result["skipped"]) == 3
    assert all("past the 0 s deadline" in s for s in result["skipped"])


@pytest.mark.skipif(CUDA, reason="checks the no-GPU exit")
def test_gpu_bench_without_cuda_exits_3(capsys):
    assert gpu.main(["--no-progress"]) == 3
    assert "no CUDA device" in capsys.readouterr().out


def test_latency_cli_times_torch_stacked_on_cpu(tmp_path):
    out = tmp_path / "lat.json"
    args = ["latency", "--device", "cpu", "--backend", "torch,torch-stacked", "--batch", "2", "--warmup", "1"]
    args += ["--budget", "0.01", "--no-progress", "--json", str(out), "--baseline", "cct_1_3x1:dim=32:heads=4"]
    args += ["--committee", "cct_1_3x1:dim=32:heads=4,cct_1_3x1:dim=32:heads=2,cct_1_3x1:dim=16:heads=2"]
    assert bench_main(args) == 0
    import json

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
@pytest.mark.parametrize("name", ["torch-compile-graph", "torch-compile-streams", "cuda-graph"])
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
    got_again = runner.run(x).float().cpu()  # the replayed graph gives the same answer
    rel = float((got - want).norm() / want.norm())
    assert rel <= 2e-2, f"{name}: relative error {rel:.3g}"
    torch.testing.assert_close(got, got_again)


def test_job_plan_runs_what_the_targets_need_first():
    plan = gpu.job_plan(gpu.DEFAULT_BACKENDS)
    first = [(group, name) for _, group, name, _ in plan[:4]]
    assert first == [
        ("cct_7_3x1", "torch-compile-graph"), ("cct_7_3x1", "cuda-graph"),
        ("committee-5", "cuda-graph"), ("committee-5", "torch-bf16"),
    ]  # fmt: skip
    # every target's (model, backend) comes before any job the targets do not need
    needed = {("cct_7_3x1", "torch-compile-graph"), ("cct_7_3x1", "cuda-graph"), ("committee-5", "cuda-graph"),
              ("committee-5", "torch-bf16")}  # fmt: skip
    assert {(g, b) for _, g, b, _ in plan[: len(needed)]} == needed
    main = [(g, b) for kind, g, b, _ in plan if kind == "main"]
    assert len(main) == len(set(main)) == 3 * len(gpu.DEFAULT_BACKENDS)  # each job once
    kinds = [kind for kind, *_ in plan]
    last_table6 = max(i for i, (kind, group, _, _) in enumerate(plan) if (kind, group) == ("main", "committee-5"))
    assert kinds.index("ablation") > last_table6
    assert all(job[1] == "committee-10" for job in plan[len(plan) - len(gpu.DEFAULT_BACKENDS) :])
    assert [job[2] for job in gpu.job_plan(["torch"], ablation=False)] == ["torch"] * 3


def test_sigterm_fails_the_running_job_skips_the_rest_and_keeps_rows(monkeypatch):
    """The gpu_check.sh hard limit (timeout's SIGTERM) must still leave a result to print."""
    import os
    import signal

    from lsmha.bench.backends import BackendEntry

    def killed(models, device, max_batch):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode
        for _ in range(10_000_000):
            pass
        raise AssertionError("SIGTERM did not stop the job")

    monkeypatch.setitem(BACKENDS, "sigterm", BackendEntry(killed, "sends itself SIGTERM"))
    before = signal.getsignal(signal.SIGTERM)
    with gpu.sigterm_stops():
        result = gpu.run_comparison(
            ["torch", "sigterm"], [1], torch.device("cpu"), deadline_s=600, warmup=1, budget_s=0.0,
            ablation=False, progress=False, groups=TINY,
        )  # fmt: skip
    assert signal.getsignal(signal.SIGTERM) == before  # restored on leaving
    assert [(r["model"], r["backend"]) for r in result["rows"]] == [("cct_7_3x1", "torch")]
    assert result["stopped_by_sigterm"]
    assert result["errors"] == ["main cct_7_3x1 sigterm: HardLimit: stopped by SIGTERM (the hard time limit)"]
    assert len(result["skipped"]) == 4 and all("after SIGTERM" in s for s in result["skipped"])
