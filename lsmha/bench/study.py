"""`lsmha-bench study`: the committee's deal on real data, in one table.

For a trained committee (committee.json) and a trained reference (the deep CCT-7/3x1),
on one data set, it gives for the reference, each member, the soft committee of all
members and the best subset chosen on the validation split:

- test accuracy (the `test` split; Fashion-MNIST's own 10,000 test images), params, GMAC;
- latency under `auto` at batch 1 and 32 on this machine, all rows timed interleaved in
  one run (each row exported to ONNX and loaded as `Committee.load(dir)` would be);
- the mean pairwise agreement of the members (both right or both wrong, paper §4);
- the adaptive committee (calibrated early exit, `lsmha.engine.adaptive`): the thresholds
  calibrated on val (target 0.999, cheapest member first), its test accuracy, agreement with
  the full committee and members run; it runs as `Committee.load(dir, adaptive=True)` would.
  What it costs depends on the image, so its latency is the mean over the first
  `ADAPTIVE_IMAGES` test images (one call per image at batch 1, per chunk at batch 32) where the
  other rows give the median of repeated calls on the same batch.

Selection and anything calibrated use the `val` split; the test split is read only for
the final figures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..cli_help import CliError, HelpFormatter
from ..tables import format_table

BATCHES = (1, 32)
ADAPTIVE_IMAGES = 256  # test images the adaptive row is timed on, each round
ADAPTIVE_TARGET = 0.999  # agreement with the full committee kept on val


def add_study_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="accuracy and latency of a trained committee against a trained reference, one table",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", type=Path, help="committee directory (committee.json, as lsmha-train committee writes)")
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="reference checkpoint (default: RUN/reference/model.safetensors)",
    )
    p.add_argument("--dataset", default="fashion-mnist", help="data set the checkpoints were trained on")
    p.add_argument("--data-dir", default=None, help="the data set's directory, if not its default")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (the median is reported)")
    p.add_argument("--budget-s", type=float, default=0.5, help="seconds of timed calls per row, batch and round")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the table and facts as JSON")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write accuracy against latency")
    p.set_defaults(func=cmd_study)


def _load_members(run: Path, reference: Path) -> tuple[list[Any], list[str], Any]:
    from ..artifacts import read_committee
    from ..models import load

    if not (run / "committee.json").is_file():
        raise FileNotFoundError(f"{run} holds no committee.json; train one with lsmha-train committee --out {run}")
    if not reference.is_file():
        raise FileNotFoundError(f"reference checkpoint {reference} not found; pass --reference")
    _, paths = read_committee(run / "committee.json")
    members = [load(p) for p in paths]
    return members, [p.parent.name for p in paths], load(reference)


def _logits(models: list[Any], images: Any) -> np.ndarray:
    from ..training.evaluate import predict_logits

    return np.stack([predict_logits(m, images).numpy() for m in models])  # (M, N, C)


def best_subset(val_logits: np.ndarray, val_labels: np.ndarray) -> tuple[list[int], float]:
    """The greedy-selected subset (lsmha.engine.selection) of the size with the best validation
    committee accuracy; ties go to the smaller subset."""
    from ..engine.selection import select

    chosen = select(val_logits, val_labels, val_logits.shape[0])
    best_k = int(np.argmax(chosen.accuracy)) + 1  # argmax takes the first (smallest) of equal values
    return sorted(chosen.indices[:best_k]), float(chosen.accuracy[best_k - 1])


def _time_rows(rows: list[dict[str, Any]], images: np.ndarray, rounds: int, budget_s: float, work: Path) -> None:
    """Each row's committee exported and loaded under `auto`, then timed at every batch size,
    the rows interleaved round by round; medians over rounds go into the rows."""
    from tqdm import tqdm

    from ..engine import Committee
    from ..export import export_onnx
    from .timing import time_call

    loaded = []
    for i, row in enumerate(tqdm(rows, desc="export", leave=False)):
        calibration = row.pop("calibration", None)
        directory = work / f"row{i}"
        export_onnx(row.pop("models"), directory, per_member=calibration is not None, force=True)
        if calibration is not None:
            from ..engine.adaptive import write_calibration
            from ..export.adaptive_graph import write_adaptive_graph

            write_calibration(directory, calibration)
            write_adaptive_graph(directory, calibration)
        loaded.append(Committee.load(directory, adaptive=calibration is not None))
        row["backend"] = loaded[-1].backend
    samples: dict[tuple[int, int], list[float]] = {}
    for _ in tqdm(range(rounds), desc="timing rounds", leave=False):
        for i, committee in enumerate(loaded):
            for b in BATCHES:
                if rows[i]["kind"] == "adaptive":  # each image (chunk) in turn, the mean
                    chunks = [images[j : j + b] for j in range(0, len(images) - b + 1, b)]
                    turn = iter(chunks * 2)  # warm-up calls first, then every chunk once
                    t = time_call(
                        lambda c=committee, it=turn: c.predict(next(it)), warmup=len(chunks), min_repeats=len(chunks),
                        max_repeats=len(chunks), budget_s=0.0,
                    )  # fmt: skip
                    samples.setdefault((i, b), []).append(float(np.mean(t.samples_ms)))
                    continue
                batch = images[:b]
                t = time_call(lambda c=committee, x=batch: c.predict(x), warmup=2, budget_s=budget_s)
                samples.setdefault((i, b), []).append(t.median_ms)
    for i, row in enumerate(rows):
        for b in BATCHES:
            row[f"b{b}_ms"] = float(np.median(samples[(i, b)]))
    for committee in loaded:
        committee.close()


def adaptive_row(members: list[Any], val_logits: np.ndarray, test_logits: np.ndarray, test_y: np.ndarray) -> dict:
    """The adaptive committee of all `members`: calibrated on the val logits, its decisions and
    members run on test by the rule (`apply_rule`, what the runtime computes), and what the
    timing needs (models, calibration)."""
    from ..engine.adaptive import apply_rule, calibrate, default_order
    from ..metrics import soft_committee
    from ..models import count_macs, count_params

    specs = [m.spec for m in members]
    calibration = calibrate(val_logits, ADAPTIVE_TARGET, default_order(specs))
    calibration.facts = {"dataset": "val logits of the study", "split": "val", "backend": "torch"}
    decided = apply_rule(test_logits, calibration.thresholds, calibration.order)
    full = soft_committee(test_logits).argmax(axis=1)
    macs = np.array([count_macs(specs[i]) for i in calibration.order], dtype=np.float64)
    return {
        "name": f"adaptive committee of {len(members)}",
        "kind": "adaptive",
        "members": [m.spec.name or str(i) for i, m in enumerate(members)],
        "test_accuracy": float((decided.decisions == test_y).mean()),
        "params": sum(count_params(m) for m in members),
        "gmac": float(np.cumsum(macs)[decided.members_run - 1].mean() / 1e9),  # mean over test images
        "mean_agreement": None,
        "agreement_with_full": float((decided.decisions == full).mean()),
        "mean_members_run": float(decided.members_run.mean()),
        "members_run_histogram": np.bincount(decided.members_run, minlength=len(members) + 1)[1:].tolist(),
        "calibration": calibration,
        "models": members,
    }


def run_study(
    run: Path,
    reference: Path,
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    rounds: int = 5,
    budget_s: float = 0.5,
) -> dict[str, Any]:
    """The study's rows (see the module docstring) and the facts of where they were measured."""
    import torch

    from ..metrics import accuracy, agreement_matrix, mean_agreement, soft_committee
    from ..models import count_macs, count_params
    from ..training import load_dataset
    from .latency import machine_facts

    members, names, ref = _load_members(run, reference)
    val_x, val_y = load_dataset(dataset, "val", data_dir)
    test_x, test_y = load_dataset(dataset, "test", data_dir)
    val_y, test_y = val_y.numpy(), test_y.numpy()
    val_logits = _logits(members, val_x)
    test_logits = _logits(members + [ref], test_x)
    member_test, ref_test = test_logits[:-1], test_logits[-1]
    subset, subset_val_acc = best_subset(val_logits, val_y)

    def row(name: str, kind: str, idx: list[int]) -> dict[str, Any]:
        models = [ref] if kind == "reference" else [members[i] for i in idx]
        logits = ref_test if kind == "reference" else soft_committee(member_test[idx])
        agree = mean_agreement(agreement_matrix(member_test[idx], test_y)) if len(idx) > 1 else None
        return {
            "name": name,
            "kind": kind,
            "members": [names[i] for i in idx] if kind != "reference" else [reference.parent.name],
            "test_accuracy": accuracy(logits, test_y),
            "params": sum(count_params(m) for m in models),
            "gmac": sum(count_macs(m.spec) for m in models) / 1e9,
            "mean_agreement": agree,
            "models": models,
        }

    everyone = list(range(len(members)))
    rows = [row("CCT-7/3x1 (reference)", "reference", [])]
    rows += [row(n, "member", [i]) for i, n in enumerate(names)]
    rows.append(row(f"committee of all {len(members)}", "committee", everyone))
    rows.append(row(f"selected subset ({len(subset)})", "selected", subset))
    rows[-1]["val_accuracy"] = subset_val_acc
    rows.append(adaptive_row(members, val_logits, member_test, test_y))
    with tempfile.TemporaryDirectory(prefix="lsmha-study-") as work:
        _time_rows(rows, test_x[:ADAPTIVE_IMAGES].numpy(), rounds, budget_s, Path(work))
    return {
        "dataset": dataset,
        "split": "test",
        "test_images": int(test_y.shape[0]),
        "selection_split": "val",
        "rows": rows,
        "member_agreement_matrix": agreement_matrix(member_test, test_y).tolist(),
        "machine": machine_facts(torch.device("cpu")),
    }


def study_table(doc: dict[str, Any]) -> str:
    ref = doc["rows"][0]
    rows = []
    for r in doc["rows"]:
        agree = "" if r["mean_agreement"] is None else f"{r['mean_agreement']:.3f}"
        rows.append(
            [r["name"], f"{r['test_accuracy']:.4f}", f"{r['params']:,}", f"{r['gmac']:.3f}"]
            + [f"{r[f'b{b}_ms']:.2f}" for b in BATCHES]
            + [f"{r['b1_ms'] / ref['b1_ms']:.2f}", agree, r["backend"]]
        )
    head = ["model", "test acc", "params", "GMAC"] + [f"b{b} ms" for b in BATCHES]
    return format_table(head + ["b1 / ref", "agreement", "auto ran"], rows)


def plot_study(doc: dict[str, Any], out: Path) -> Path:
    from ..analysis.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"reference": "s", "member": "o", "committee": "*", "selected": "D", "adaptive": "P"}
    for r in doc["rows"]:
        ax.scatter(
            r["b1_ms"], 100 * r["test_accuracy"], marker=markers[r["kind"]], s=90 if r["kind"] != "member" else 40
        )
        ax.annotate(
            r["name"], (r["b1_ms"], 100 * r["test_accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    m = doc["machine"]
    ax.set_xlabel("latency at batch 1, ms (auto backend)")
    ax.set_ylabel(f"{doc['dataset']} test accuracy, %")
    ax.set_title(f"{doc['dataset']}: committee against CCT-7/3x1\n{m['cpu_model']}, {m['threads']} threads", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def cmd_study(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.budget_s <= 0:
        raise CliError.usage(f"--rounds must be >= 1 and --budget-s > 0, got {args.rounds} and {args.budget_s}")
    reference = args.reference or args.run / "reference" / "model.safetensors"
    doc = run_study(args.run, reference, args.dataset, args.data_dir, args.rounds, args.budget_s)
    print(study_table(doc))
    where = doc["machine"]["cpu_model"]
    print(f"{doc['dataset']} test split ({doc['test_images']} images); subset chosen on val; {where}")
    for r in doc["rows"]:
        if r["kind"] == "adaptive":
            print(
                f"{r['name']}: thresholds calibrated on val (target {ADAPTIVE_TARGET}); agreement with the full "
                f"committee {100 * r['agreement_with_full']:.2f} %, members run mean {r['mean_members_run']:.2f} "
                f"{r['members_run_histogram']}; GMAC and latency are means over test images"
            )
    if args.json:
        from ..artifacts import write_json_atomic

        write_json_atomic(args.json, doc)
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot_study(doc, args.plot)}")
    return 0
