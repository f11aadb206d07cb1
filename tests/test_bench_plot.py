"""`lsmha-bench plot`: a bench JSON becomes a PNG; documents it cannot plot are refused with the reason."""

import json
from pathlib import Path

import pytest

from lsmha.bench.cli import main as bench_main
from lsmha.bench.plot import _series, latency_figure, plot_latency

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _row(model, backend, batch, ms, ratio=None):
    return {"model": model, "backend": backend, "batch": batch, "median_ms": ms, "ratio_vs_baseline": ratio}


def test_series_sorts_batches_and_skips_missing_values():
    rows = [_row("a", "x", 8, 3.0, 0.5), _row("a", "x", 1, 1.0, None), _row("b", "x", 1, 2.0)]
    assert _series(rows, "median_ms") == {("a", "x"): ([1, 8], [1.0, 3.0]), ("b", "x"): ([1], [2.0])}
    assert _series(rows, "ratio_vs_baseline") == {("a", "x"): ([8], [0.5])}


def test_recorded_cpu_result_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "fig.png"
    assert bench_main(["plot", str(RESULTS / "cpu-2core_latency_default.json"), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert f"wrote {out}" in capsys.readouterr().out


def test_gpu_shaped_result_plots(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row("cct_7_3x1", b, n, 0.3 * n**0.5) for b in ("torch-bf16", "cuda-graph") for n in (1, 8, 64, 256)]
    rows += [_row("committee(table6:5)", "cuda-graph", n, 0.2 * n, 0.2 * n / (0.3 * n**0.5)) for n in (1, 8)]
    doc = {"facts": {"gpu": "NVIDIA H200", "torch": "2.11.0"}, "rows": rows, "ablation": [], "errors": []}
    assert plot_latency(doc, tmp_path / "gpu.png").stat().st_size > 20_000


def test_documents_without_rows_or_baseline_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="no timed rows"):
        plot_latency({"rows": []}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no cct_7_3x1 rows"):
        plot_latency({"rows": [_row("committee(x)", "torch", 1, 2.0)]}, tmp_path / "x.png")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert bench_main(["plot", str(bad)]) == 2 and "cannot read" in capsys.readouterr().err
    bad.write_text(json.dumps({"rows": []}))
    assert bench_main(["plot", str(bad)]) == 2 and "no timed rows" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


def test_batch_1_only_result_gives_every_series_its_own_marker_and_colour():
    pytest.importorskip("matplotlib")
    rows = [_row("cct_7_3x1", b, 1, 1.0) for b in ("torch", "onnxruntime")]
    rows += [_row(f"committee(table{t})", b, 1, 0.8, 0.8) for t in (5, 6) for b in ("torch", "onnxruntime")]
    fig = latency_figure({"rows": rows})
    left, right = fig.axes
    for ax, series in ((left, 6), (right, 4)):
        styles = [(line.get_marker(), line.get_color()) for line in ax.lines if not line.get_label().startswith("_")]
        assert len(styles) == series == len(set(styles)), styles  # one point each: only marker and colour tell
