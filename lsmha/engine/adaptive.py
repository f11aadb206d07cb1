"""The adaptive committee's exit rule and its calibration (pure numpy), and the calibration file.

Rule. The members run in an order (default: cheapest first by MACs, `default_order`). After
k members, an image's partial logit sum S_k is the sum of the first k members' raw logits,
accumulated in float32 in that order. The image leaves at stage k < M when its margin
(top-1 minus top-2 of S_k) is >= tau_k; its decision is then argmax S_k. The last member
always decides: an image reaching stage M gets the full committee's decision argmax S_M.

Calibration (`calibrate`), on a calibration split (never the test split): with N images and
`target`, the disagreement budget is B = floor(N * (1 - target)), the most disagreements with
the full committee that keep agreement >= target. Stages are calibrated in order, greedily:
tau_k is the smallest c among the margins at stage k of the images that reach stage k (and
+inf: nobody leaves there) such that the images leaving at stages 1..k with tau_1..tau_k
disagree with the full committee on at most B images in all. Stage 1 thus spends what it
needs of the budget, and each later stage may spend only what is left; every threshold
between the next-lower calibration margin and c would make the same calibration images
leave, and c is the highest (most cautious) of them. The overall agreement on the
calibration images is then >= target by construction.

The thresholds, the order and the calibration facts live in `adaptive.json` in the export
directory, listed and hashed in its manifest (`write_calibration`, `read_calibration`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models import CCTSpec, count_macs

CALIBRATION_FILE = "adaptive.json"
CALIBRATION_FORMAT = "lsmha-adaptive-1"
CALIBRATE_COMMAND = "lsmha-export calibrate DIR --dataset NAME"


def margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 of each row of (N, classes) logits: (N,), >= 0, in the logits' dtype."""
    top2 = np.partition(logits, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def default_order(specs: Sequence[CCTSpec]) -> list[int]:
    """Member indices cheapest first by multiply-accumulates per image (ties: committee order)."""
    return sorted(range(len(specs)), key=lambda i: (count_macs(specs[i]), i))


def check_order(order: Sequence[int] | None, num_members: int) -> list[int]:
    """`order` as a list, checked to be a permutation of 0..num_members-1 (None: 0..M-1)."""
    if order is None:
        return list(range(num_members))
    order = [int(i) for i in order]
    if sorted(order) != list(range(num_members)):
        raise ValueError(f"order must list each member index 0..{num_members - 1} once, got {order}")
    return order


@dataclass
class Calibration:
    """Thresholds of the exit rule and what calibration measured.

    Attributes:
        order: member indices in the order they run.
        thresholds: tau_1..tau_{M-1} (stage k leaves with margin >= thresholds[k-1]; inf: nobody
            leaves there). The last member always decides, so it has none.
        target: the agreement asked for.
        n: calibration images.
        agreement: measured agreement with the full committee on them (>= target).
        mean_members_run: mean members run per calibration image.
        members_run: histogram: members_run[k-1] calibration images ran k members.
        facts: where the logits came from (dataset, split, backend, ...), free form.
    """

    order: list[int]
    thresholds: list[float]
    target: float
    n: int
    agreement: float
    mean_members_run: float
    members_run: list[int]
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": list(self.order),
            "thresholds": [None if math.isinf(t) else float(t) for t in self.thresholds],  # JSON has no inf
            "target": self.target,
            "n": self.n,
            "agreement": self.agreement,
            "mean_members_run": self.mean_members_run,
            "members_run": list(self.members_run),
            **self.facts,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        known = {"order", "thresholds", "target", "n", "agreement", "mean_members_run", "members_run"}
        missing = sorted(known - set(d))
        if missing:
            raise ValueError(f"calibration lacks {missing}; recalibrate with `{CALIBRATE_COMMAND}`")
        return cls(
            order=[int(i) for i in d["order"]],
            thresholds=[math.inf if t is None else float(t) for t in d["thresholds"]],
            target=float(d["target"]),
            n=int(d["n"]),
            agreement=float(d["agreement"]),
            mean_members_run=float(d["mean_members_run"]),
            members_run=[int(c) for c in d["members_run"]],
            facts={k: v for k, v in d.items() if k not in known},
        )


def partial_sums(member_logits: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """(M, N, classes) float32: stage k's partial sums S_{k+1}, accumulated in `order` in float32
    exactly as the adaptive committee adds them (0 + first member, then each next one)."""
    return np.cumsum(np.asarray(member_logits, dtype=np.float32)[list(order)], axis=0, dtype=np.float32)


def budget(n: int, target: float) -> int:
    """The most disagreements among `n` images that keep agreement >= `target`."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")
    return int(math.floor(n * (1.0 - target) + 1e-9))


def calibrate(member_logits: np.ndarray, target: float = 0.999, order: Sequence[int] | None = None) -> Calibration:
    """Thresholds tau_1..tau_{M-1} by the module's rule (greedy per stage, one shared budget).

    Args:
        member_logits: (M, N, classes) raw logits of the members, in committee order, on the
            calibration images.
        target: agreement with the full committee to keep on these images, in (0, 1].
        order: member indices in the order they run (default committee order 0..M-1).

    Returns:
        The `Calibration`; its agreement and members-run figures are measured on these images.
    """
    logits = np.asarray(member_logits, dtype=np.float32)
    if logits.ndim != 3 or logits.shape[1] == 0 or logits.shape[2] < 2:
        raise ValueError(f"expected member logits of shape (members, N >= 1, classes >= 2), got {logits.shape}")
    num_members, n, _ = logits.shape
    order = check_order(order, num_members)
    allowed = budget(n, target)
    sums = partial_sums(logits, order)
    full = sums[-1].argmax(axis=1)
    runs = np.full(n, num_members, dtype=np.int64)
    remaining = np.arange(n)
    spent = 0
    thresholds: list[float] = []
    for k in range(num_members - 1):
        stage = sums[k, remaining]
        margin = margins(stage)
        wrong = stage.argmax(axis=1) != full[remaining]
        wrong_margins = np.sort(margin[wrong])[::-1]  # descending
        left = allowed - spent
        if len(wrong_margins) <= left:  # every image here may leave
            tau = float(margin.min()) if len(margin) else math.inf
        else:  # leave only above the (left+1)-th largest wrong margin
            above = margin[margin > wrong_margins[left]]
            tau = float(above.min()) if len(above) else math.inf
        leaves = margin >= tau
        spent += int((wrong & leaves).sum())
        runs[remaining[leaves]] = k + 1
        remaining = remaining[~leaves]
        thresholds.append(tau)
    counts = np.bincount(runs, minlength=num_members + 1)[1:]
    return Calibration(
        order=order,
        thresholds=thresholds,
        target=float(target),
        n=n,
        agreement=(n - spent) / n,
        mean_members_run=float(runs.mean()),
        members_run=[int(c) for c in counts],
    )


@dataclass
class Decisions:
    """What the adaptive rule decided for a batch.

    Attributes:
        decisions: (N,) int64 class per image.
        logits: (N, classes) float32: each image's partial sum over the members it ran (the full
            sum where all ran); `decisions` is its argmax.
        members_run: (N,) int64, 1..M members run per image.
    """

    decisions: np.ndarray
    logits: np.ndarray
    members_run: np.ndarray


def apply_rule(member_logits: np.ndarray, thresholds: Sequence[float], order: Sequence[int]) -> Decisions:
    """The exit rule on precomputed member logits (M, N, classes): the reference the adaptive
    committee's gather/scatter run is checked against, and how agreement on a split is measured."""
    logits = np.asarray(member_logits, dtype=np.float32)
    order = check_order(order, logits.shape[0])
    if len(thresholds) != len(order) - 1:
        raise ValueError(f"expected {len(order) - 1} thresholds for {len(order)} members, got {len(thresholds)}")
    sums = partial_sums(logits, order)
    n = logits.shape[1]
    stage = np.full(n, len(order) - 1)
    undecided = np.ones(n, dtype=bool)
    for k, tau in enumerate(thresholds):
        leaves = undecided & (margins(sums[k]) >= tau)
        stage[leaves] = k
        undecided &= ~leaves
    chosen = sums[stage, np.arange(n)]
    return Decisions(chosen.argmax(axis=1), chosen, stage + 1)


def write_calibration(directory: str | os.PathLike, calibration: Calibration) -> Path:
    """Write `adaptive.json` into the export `directory` and list it (hashed) in its manifest,
    with the thresholds and facts also shown in the entry. Replaces an earlier calibration."""
    from ..artifacts import COMMITTEE, add_entries, file_entry, write_json_atomic

    directory = Path(directory)
    doc = {"format": CALIBRATION_FORMAT, **calibration.to_dict()}
    write_json_atomic(directory / CALIBRATION_FILE, doc)
    backend = str(calibration.facts.get("backend", ""))
    precision = next((p for p in ("bf16", "fp16", "int8") if p in backend), "fp32")  # of the logits calibrated on
    entry = file_entry(
        directory, CALIBRATION_FILE, format="adaptive", precision=precision, scope=COMMITTEE,
        **calibration.to_dict(),
    )  # fmt: skip
    add_entries(directory, [entry])
    return directory / CALIBRATION_FILE


def read_calibration(manifest: Any) -> Calibration | None:
    """The calibration of a (verified) `ExportManifest`, or None if it has none.

    Raises:
        ValueError: the file is not a calibration, disagrees with its manifest entry, or does not
            fit the committee (member count, order)."""
    from ..artifacts import read_json_document

    entries = manifest.find(format="adaptive")
    if not entries:
        return None
    path, doc = read_json_document(manifest.verified_path(entries[0]), CALIBRATION_FILE, CALIBRATION_FORMAT)
    doc = {k: v for k, v in doc.items() if k != "format"}
    if doc != entries[0].extra:
        raise ValueError(f"{path} differs from its entry in the manifest; recalibrate with `{CALIBRATE_COMMAND}`")
    calibration = Calibration.from_dict(doc)
    num_members = len(manifest.specs)
    check_order(calibration.order, num_members)
    if len(calibration.thresholds) != num_members - 1:
        raise ValueError(
            f"{path} holds {len(calibration.thresholds)} thresholds, the committee of {num_members} members "
            f"needs {num_members - 1}; recalibrate with `{CALIBRATE_COMMAND}`"
        )
    return calibration
