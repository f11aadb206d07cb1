"""`lsmha-bench plot`: a latency JSON (`lsmha-bench latency --json` or `lsmha-bench gpu`) as one PNG.

Left: latency per call against batch size, one line per model and backend (the baseline
solid, committees dashed; one colour per backend, one marker per model, so a result of a
single batch size, one point per series, still tells them apart). Right: committee / baseline latency per
backend and batch; below the line at 1 the committee is the faster one, so where a line
crosses it is the crossover batch.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..cli_help import CliError, HelpFormatter

BASELINE = "cct_7_3x1"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")  # the baseline gets the first


def _series(rows: list[dict[str, Any]], key: str) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """(model, backend) -> (batches ascending, values of `key`), rows without a value left out."""
    points: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r.get(key) is not None:
            points[(r["model"], r["backend"])].append((int(r["batch"]), float(r[key])))
    return {k: ([b for b, _ in sorted(v)], [y for _, y in sorted(v)]) for k, v in points.items()}


def _title(doc: dict[str, Any]) -> str:
    facts = doc.get("facts", {})
    where = facts.get("gpu") or facts.get("cpu_model") or facts.get("device") or "?"
    threads = f", {facts['threads']} threads" if facts.get("threads") and not facts.get("gpu") else ""
    when = str(facts.get("date", ""))[:10]
    return f"{where}{threads}, torch {facts.get('torch', '?')}" + (f", {when}" if when else "")


def plot_latency(doc: dict[str, Any], out: str | Path, baseline: str = BASELINE) -> Path:
    """Write the two-panel PNG for a latency result document; returns its path.

    Raises ValueError when the document has no timed rows or no baseline rows."""
    from ..analysis.plots import pyplot

    fig = latency_figure(doc, baseline)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    pyplot().close(fig)
    return out


def latency_figure(doc: dict[str, Any], baseline: str = BASELINE):
    """The two-panel matplotlib figure of a latency result document (see the module docstring)."""
    from ..analysis.plots import pyplot

    rows = [r for r in doc.get("rows", []) if r.get("median_ms") is not None]
    if not rows:
        raise ValueError("no timed rows to plot (expected the JSON of `lsmha-bench latency --json` or `gpu`)")
    if not any(r["model"] == baseline for r in rows):
        raise ValueError(f"no {baseline} rows: the right panel compares committees against it")
    latency, ratio = _series(rows, "median_ms"), _series(rows, "ratio_vs_baseline")
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    colours = {b: f"C{i % 10}" for i, b in enumerate(backends)}
    models = [baseline, *dict.fromkeys(r["model"] for r in rows if r["model"] != baseline)]
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)}
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for (model, backend), (batches, ms) in latency.items():
        style = "-" if model == baseline else "--"
        left.plot(batches, ms, style, marker=markers[model], color=colours[backend], label=f"{model}, {backend}")
    for (model, backend), (batches, r) in ratio.items():
        if model != baseline:
            right.plot(batches, r, "--", marker=markers[model], color=colours[backend], label=f"{model}, {backend}")
    right.axhline(1.0, color="black", linewidth=1)
    right.set_title(f"below the line at 1 the committee is faster than {baseline}", fontsize=9)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 1, 2, 4 and 0.8, 20: not 2^k or 8x10^-1
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        low, high = ax.get_ylim()  # label minor ticks (2x, 5x) only where there are few major ones
        if high / low >= 3:
            ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(plain if high / low < 300 else NullFormatter())
    left.set_ylabel("latency per call, ms (median)")
    right.set_ylabel(f"committee / {baseline} latency")
    fig.suptitle(_title(doc), fontsize=10)
    return fig


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="latency and committee/baseline ratio against batch size, from a bench JSON, as a PNG",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("result", type=Path, help="JSON written by `lsmha-bench latency --json` or `lsmha-bench gpu`")
    p.add_argument("-o", "--out", type=Path, default=None, help="PNG to write (default: the JSON's path as .png)")
    p.add_argument("--baseline", default=BASELINE, help="the model committees are compared against")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        doc = json.loads(args.result.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CliError.usage(f"cannot read {args.result} (expected a bench JSON): {err}") from err
    try:
        out = plot_latency(doc, args.out or args.result.with_suffix(".png"), args.baseline)
    except ValueError as err:
        raise CliError.usage(f"{args.result}: {err}") from err
    print(f"wrote {out}")
    return 0
