"""`lsmha-bench adaptive`: the adaptive committee against the full committee, on real images.

On one split of a data set (test, for final figures; the thresholds were calibrated on val):
decision agreement with the full committee, both accuracies, members run (mean and
histogram), mean latency per image at batch 1 and throughput at batch 256. Timing uses the
split's own images, since how many members run depends on the images (random pixels would
measure another workload). At batch 1 each committee is timed in a block of its own (every
latency image in turn), after a pause, in `rounds` rounds whose committee order alternates:
interleaving single images would time each committee with the other runtime's threads still
spinning from its last call. At batch 256 the committees are timed chunk by chunk in turn, so a
slow phase of a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..cli_help import CliError, HelpFormatter
from ..tables import format_table, write_json

PAUSE_S = 0.5  # between batch-1 blocks: longer than any runtime's spin-wait


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def measure_adaptive(
    export_dir: str | os.PathLike,
    dataset: str,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    backend: str = "auto",
    threads: int | None = None,
    limit: int | None = None,
    latency_images: int = 300,
    throughput_batch: int = 256,
    throughput_images: int = 2560,
    reference: str | os.PathLike | None = None,
    progress: bool = True,
    rounds: int = 2,
) -> dict[str, Any]:
    """Measure the calibrated adaptive committee of `export_dir` against its full committee.

    Args:
        export_dir: an export calibrated with `lsmha-export calibrate`.
        dataset, split, data_dir: the images (`lsmha.training.load_dataset`); use a split the
            thresholds were not calibrated on (test).
        backend: backend of both committees ("auto": what users get).
        threads: backend threads (default: physical cores).
        limit: use only the first `limit` images of the split for agreement and accuracy.
        latency_images: images timed one at a time (the first of the split), in a block per
            committee and round.
        throughput_batch: batch of the throughput rows.
        throughput_images: images timed in batches of `throughput_batch`, chunk by chunk in turn.
        reference: another export (e.g. the scaled CCT-7/3x1) measured alike at its full committee.
        progress: show progress.
        rounds: batch-1 blocks per committee.

    Returns:
        A dict: n, agreement, accuracy (full, adaptive, reference), members_run (mean, histogram),
        batch-1 mean/median ms per image and batch-`throughput_batch` images/s for each, the
        adaptive/full ratios, the calibration facts, the backends and the machine.
    """
    from tqdm import tqdm

    from ..engine import Committee
    from ..engine.adaptive_committee import AdaptiveCommittee
    from ..engine.cpu import cpu_info
    from ..training import load_dataset

    images_t, labels_t = load_dataset(dataset, split, data_dir, **({"limit": limit} if limit else {}))
    images, labels = np.ascontiguousarray(images_t.numpy()), labels_t.numpy()
    options = {"threads": threads} if threads else {}
    full = Committee.load(export_dir, backend, batch_size=throughput_batch, **options)
    adaptive = AdaptiveCommittee.load(export_dir, backend, batch_size=throughput_batch, **options)
    committees = {"full": full, "adaptive": adaptive}
    if reference is not None:
        committees["reference"] = Committee.load(reference, backend, batch_size=throughput_batch, **options)
    try:
        decisions = {name: c.predict(images) for name, c in committees.items() if name != "adaptive"}
        decisions["adaptive"], runs = adaptive.predict(images, return_members_run=True)
        b1: dict[str, list[float]] = {name: [] for name in committees}
        count = min(latency_images, len(images))
        names = list(committees)
        with tqdm(total=rounds * len(names) * count, desc="batch 1", disable=not progress) as bar:
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    time.sleep(PAUSE_S)  # the last runtime's threads stop spinning
                    predict = committees[name].predict
                    for i in range(count):
                        b1[name].append(_timed(predict, images[i : i + 1])[1])
                    bar.update(count)
        tput = {name: [0.0, 0] for name in committees}
        chunks = range(0, min(throughput_images, len(images)), throughput_batch)
        for c in committees.values():  # warm the batch graphs up
            c.predict(images[:throughput_batch])
        for start in tqdm(chunks, desc=f"batch {throughput_batch}", disable=not progress):
            chunk = images[start : start + throughput_batch]
            for name, c in committees.items():
                tput[name][0] += _timed(c.predict, chunk)[1]
                tput[name][1] += len(chunk)
        backends = {name: c.backend for name, c in committees.items()}
    finally:
        for c in committees.values():
            c.close()
    hist = np.bincount(runs, minlength=len(adaptive) + 1)[1:]
    result: dict[str, Any] = {
        "export_dir": str(export_dir),
        "dataset": dataset,
        "split": split,
        "n": len(labels),
        "agreement": float((decisions["adaptive"] == decisions["full"]).mean()),
        "accuracy": {name: float((d == labels).mean()) for name, d in decisions.items()},
        "members": len(adaptive),
        "order": adaptive.order,
        "thresholds": [None if np.isinf(t) else t for t in adaptive.thresholds],
        "mean_members_run": float(runs.mean()),
        "members_run_histogram": {str(k + 1): int(c) for k, c in enumerate(hist)},
        "batch1_mean_ms": {name: 1e3 * float(np.mean(t)) for name, t in b1.items()},
        "batch1_median_ms": {name: 1e3 * float(np.median(t)) for name, t in b1.items()},
        "batch1_images": count,
        "batch1_rounds": rounds,
        "throughput_batch": throughput_batch,
        "throughput_images_per_s": {name: n / s for name, (s, n) in tput.items()},
        "throughput_images": tput["full"][1],
        "calibration": {k: v for k, v in adaptive.calibration.to_dict().items() if k not in ("order", "thresholds")},
        "backends": backends,
        "cpu": cpu_info().model,
        "load_average": list(os.getloadavg()),
    }
    result["accuracy_delta_points"] = 100 * (result["accuracy"]["adaptive"] - result["accuracy"]["full"])
    result["batch1_latency_ratio"] = result["batch1_mean_ms"]["adaptive"] / result["batch1_mean_ms"]["full"]
    tp = result["throughput_images_per_s"]
    result["throughput_ratio"] = tp["adaptive"] / tp["full"]
    return result


def print_report(r: dict[str, Any]) -> None:
    names = list(r["accuracy"])
    rows = [
        [
            name, r["backends"][name], f"{100 * r['accuracy'][name]:.2f}",
            f"{r['batch1_mean_ms'][name]:.2f}", f"{r['batch1_median_ms'][name]:.2f}",
            f"{r['throughput_images_per_s'][name]:.0f}",
        ]
        for name in names
    ]  # fmt: skip
    print(
        format_table(
            ["committee", "backend", "accuracy %", "b1 mean ms", "b1 median ms", f"b{r['throughput_batch']} img/s"],
            rows,
        )
    )
    hist = ", ".join(f"{k}: {v}" for k, v in r["members_run_histogram"].items())
    print(
        f"{r['dataset']} {r['split']} n={r['n']}: agreement with the full committee {100 * r['agreement']:.2f} %, "
        f"accuracy {r['accuracy_delta_points']:+.2f} points; members run mean {r['mean_members_run']:.3f} "
        f"of {r['members']} ({hist}); batch 1 adaptive/full {r['batch1_latency_ratio']:.3f}x latency, "
        f"batch {r['throughput_batch']} {r['throughput_ratio']:.2f}x throughput "
        f"(load average {r['load_average'][0]:.1f}, {r['cpu']})"
    )


def add_adaptive_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adaptive",
        help="the calibrated adaptive committee against the full committee on a data set's images",
        description=(
            "On one split (test: the thresholds were calibrated on val by `lsmha-export calibrate`): agreement "
            "with the full committee, accuracies, members run (mean, histogram), mean batch-1 latency (each "
            "committee timed in blocks of its own, alternating) and batch-256 throughput (chunks in turn), on the "
            "split's own images."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("directory", type=Path, help="a calibrated export directory")
    p.add_argument("--dataset", required=True, choices=["fashion-mnist", "digits", "cifar100", "synthetic"])
    p.add_argument("--split", default="test", choices=["val", "test", "train"])
    p.add_argument("--data-dir", type=Path, default=None, help="where the data set lives (cifar100, fashion-mnist)")
    p.add_argument("--backend", default="auto", help="backend of every committee")
    p.add_argument("--threads", type=int, default=None, help="backend threads (default: physical cores)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images for agreement and accuracy")
    p.add_argument("--latency-images", type=int, default=300, help="images timed one at a time")
    p.add_argument("--rounds", type=int, default=2, help="batch-1 blocks per committee, alternating")
    p.add_argument("--throughput-batch", type=int, default=256, help="batch of the throughput rows")
    p.add_argument("--throughput-images", type=int, default=2560, help="images timed in throughput batches")
    p.add_argument("--reference", type=Path, default=None, help="another export timed alike (e.g. CCT-7/3x1)")
    p.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.backends import BackendUnavailable

    try:
        result = measure_adaptive(
            args.directory, args.dataset, args.split, args.data_dir, args.backend, args.threads, args.limit,
            args.latency_images, args.throughput_batch, args.throughput_images, args.reference,
            progress=not args.no_progress, rounds=args.rounds,
        )  # fmt: skip
    except BackendUnavailable as err:
        raise CliError.environment(str(err)) from None
    print_report(result)
    write_json(args.json, result)
    return 0
