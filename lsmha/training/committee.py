"""Committees of trained members: TOML member lists, training every member, the report.

A committee file (configs/table6.toml):

    name = "table6"
    [recipe]             # optional: preset and overrides for every member
    preset = "backbone"
    epochs = 1000
    [common]             # optional: model fields for every member
    [[members]]
    model = "cct_2_3x2"  # registry name; other keys are CCTSpec overrides,
    dim = 1024           # except `epochs` (this member's epochs) and
    heads = 64           # `paper_accuracy` (the paper's, shown in the report)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import write_committee, write_json_atomic
from ..metrics import accuracy, agreement_matrix, mean_agreement, soft_committee
from ..models import CCTSpec, model_spec
from .data import num_classes
from .distributed import DistContext
from .loop import RunConfig, check_config, train
from .recipe import CONFIG_DIR, PRESETS, Recipe, read_toml

MEMBER_META = ("model", "epochs", "paper_accuracy")
_FILE_KEYS = {"name", "description", "recipe", "common", "members"}


@dataclass(frozen=True)
class Member:
    """One member: a registry name, its spec overrides, optionally its own epoch count and the
    paper's validation accuracy for it (CIFAR-100; shown beside the measured one in the report)."""

    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    paper_accuracy: float | None = None

    def label(self) -> str:
        heads = self.overrides.get("heads", "")
        heads = "-".join(map(str, heads)) if isinstance(heads, list | tuple) else heads
        parts = [self.model]
        if "dim" in self.overrides:
            parts.append(f"d{self.overrides['dim']}")
        if heads:
            parts.append(f"h{heads}")
        return "_".join(parts)


@dataclass(frozen=True)
class CommitteeConfig:
    name: str
    members: list[Member]
    recipe: dict[str, Any] = field(default_factory=dict)
    common: dict[str, Any] = field(default_factory=dict)


def load_committee_config(path: str | os.PathLike) -> CommitteeConfig:
    """Read a committee TOML; a bare name (`table6`) reads the packaged configs/<name>.toml."""
    p = Path(path)
    if not p.suffix and not p.is_file():  # a directory of that name (a run dir, say) is not the config
        p = CONFIG_DIR / f"{path}.toml"
        if not p.is_file():
            packaged = ", ".join(sorted(c.stem for c in CONFIG_DIR.glob("*.toml") if c.stem not in PRESETS))
            raise FileNotFoundError(
                f"no packaged committee config {str(path)!r} (packaged: {packaged}); or give a committee TOML file"
            )
    doc = read_toml(p)
    unknown = sorted(set(doc) - _FILE_KEYS)
    if unknown:
        raise ValueError(f"{p}: unknown top-level key(s) {unknown}; expected {sorted(_FILE_KEYS)}")
    members = []
    for i, m in enumerate(doc.get("members", [])):
        if "model" not in m:
            raise ValueError(f"{p}: member {i} has no 'model' key (a registry name such as cct_2_3x2)")
        overrides = {k: v for k, v in m.items() if k not in MEMBER_META}
        members.append(Member(m["model"], overrides, m.get("epochs"), m.get("paper_accuracy")))
    if not members:
        raise ValueError(f"{p}: no [[members]] entries")
    return CommitteeConfig(doc.get("name", p.stem), members, dict(doc.get("recipe", {})), dict(doc.get("common", {})))


def member_runs(
    config: CommitteeConfig,
    dataset: str,
    out: Path,
    base: Recipe,
    common: dict[str, Any] | None = None,
    epochs: int | None = None,
    **run_kw: Any,
) -> list[RunConfig]:
    """One validated RunConfig per member (all specs and recipes checked before any training)."""
    runs = []
    for i, m in enumerate(config.members):
        spec: CCTSpec = model_spec(
            m.model, **{**m.overrides, **config.common, **(common or {}), "num_classes": num_classes(dataset)}
        )
        n_epochs = epochs or m.epochs or base.epochs
        recipe = dataclasses.replace(base, epochs=n_epochs)
        name = f"{i:02d}_{m.label()}"  # its directory, and the prefix of its progress lines
        runs.append(RunConfig(spec, recipe, dataset, out / "members" / name, name=name, **run_kw))
    return runs


def committee_report(logits: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Member accuracies, soft-committee accuracy, agreement matrix and its mean."""
    members = [accuracy(logits[i], labels) for i in range(logits.shape[0])]
    matrix = agreement_matrix(logits, labels)
    return {
        "members": [{"name": n, "val_accuracy": a} for n, a in zip(names, members)],
        "mean_member_accuracy": float(np.mean(members)),
        "committee_accuracy": accuracy(soft_committee(logits), labels),
        "mean_agreement": mean_agreement(matrix),
        "agreement_matrix": matrix.tolist(),
        "images": int(labels.shape[0]),
    }


def train_committee(
    runs: list[RunConfig],
    out: Path,
    ctx: DistContext | None = None,
    paper_accuracies: list[float | None] | None = None,
) -> dict[str, Any]:
    """Train (or resume, or skip when finished) every member, then write `committee.json`
    and return the report (rank 0 writes). `paper_accuracies` (a `Member`'s `paper_accuracy`,
    one per run, None where the paper gives none) go into the report beside the measured ones."""
    ctx = ctx or DistContext()
    for run in runs:  # every member's directory is checked before the first one trains
        check_config(run)
    results = [train(run, ctx) for run in runs]
    logits = np.stack([np.load(r.out / "val_logits.npy") for r in results])
    labels = np.load(results[0].out / "val_labels.npy")
    for r in results[1:]:
        if not np.array_equal(np.load(r.out / "val_labels.npy"), labels):
            raise ValueError(f"{r.out} was validated on different images than {results[0].out}")
    report = committee_report(logits, labels, [r.out.name for r in results])
    report["dataset"] = runs[0].dataset
    if paper_accuracies is not None and any(a is not None for a in paper_accuracies):
        for member, paper in zip(report["members"], paper_accuracies, strict=True):
            member["paper_accuracy"] = paper
    if ctx.is_main:
        write_committee(
            out / "committee.json",
            [r.checkpoint for r in results],
            dataset=runs[0].dataset,
            committee_accuracy=report["committee_accuracy"],
            mean_agreement=report["mean_agreement"],
            member_accuracies=[m["val_accuracy"] for m in report["members"]],
        )
        write_json_atomic(out / "committee_report.json", report)
    return report
