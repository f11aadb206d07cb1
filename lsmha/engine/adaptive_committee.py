"""`AdaptiveCommittee`: the committee's decision at the cost of fewer members (calibrated early exit).

Each member runs from its own graph (`member<i>.onnx` on onnxruntime and openvino; its
weights on torch), opened as a committee of one through the same `open_backend` path as any
committee, so backend options and "auto" behave alike. A batch runs member by member in the
calibrated order; after each, the images whose partial-sum margin reaches that stage's
threshold leave, and the next member runs only on the images still undecided (gather, run,
scatter), so a batch gets cheaper as more of it is easy. The rule and its calibration:
`lsmha.engine.adaptive`; the guide: docs/adaptive.md.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np

from ..artifacts import ADAPTIVE_GRAPH_FORMAT, COMMITTEE, ExportManifest
from ..metrics import soft_committee
from .adaptive import CALIBRATE_COMMAND, Calibration, Decisions, margins, read_calibration
from .backends import Backend, BackendUnavailable, Source, open_backend
from .committee import Committee, load_source
from .inputs import check_images


def member_source(source: Source, index: int) -> Source:
    """`source` narrowed to member `index` as a committee of one: its model or checkpoint, and
    an in-memory view of the (verified) manifest whose files are member `index`'s own, the
    member's graphs listed as the committee file and its weights as member 0."""
    spec = source.specs[index]
    manifest = None
    if source.manifest is not None:
        files = [
            dataclasses.replace(e, scope=0 if e.format == "safetensors" else COMMITTEE)
            for e in source.manifest.files
            if e.scope == index
        ]
        manifest = ExportManifest(source.manifest.directory, [spec], files, dict(source.manifest.extra))
    return Source(
        specs=[spec],
        models=None if source.models is None else [source.models[index]],
        checkpoints=None if source.checkpoints is None else [source.checkpoints[index]],
        manifest=manifest,
    )


class MemberBackends(Backend):
    """One backend per member (each a committee of one), run one member at a time; and, where
    the export has it, the calibrated rule as one graph (`graph`), which decides instead."""

    def __init__(self, members: Sequence[Backend], graph: Backend | None = None) -> None:
        self.members = list(members)
        self.graph = graph
        self.num_members = len(self.members)
        self.name = f"adaptive[{self.members[0].name}]" if graph is None else f"adaptive[{graph.name}, one graph]"
        batches = [b.max_batch for b in self.members if b.max_batch]
        self.max_batch = min(batches) if batches else None

    def member(self, index: int, images: np.ndarray) -> np.ndarray:
        """Member `index`'s raw logits (N, classes) float32."""
        return self.members[index].logits(images)

    def member_logits(self, images: np.ndarray) -> np.ndarray:
        return np.stack([b.logits(images) for b in self.members])

    def close(self) -> None:
        for b in self.members if self.graph is None else [*self.members, self.graph]:
            b.close()


def open_graph(
    source: Source, calibration: Calibration, backend: str, trust_native: bool, **options: Any
) -> Backend | None:
    """The export's adaptive graph (`ADAPTIVE_GRAPH`) opened on `backend` as a committee of one, or
    None where the export has none for `calibration` (order and thresholds) or `backend` cannot
    run it in one session (then the members run one by one)."""
    entries = source.manifest.find(format=ADAPTIVE_GRAPH_FORMAT) if source.manifest is not None else []
    wanted = calibration.to_dict()
    if (
        not entries
        or entries[0].extra.get("order") != wanted["order"]
        or entries[0].extra.get("thresholds") != wanted["thresholds"]
    ):
        return None
    spec, entry = source.specs[0], dataclasses.replace(entries[0], format="onnx", scope=COMMITTEE)
    narrowed = Source(specs=[spec], manifest=ExportManifest(source.manifest.directory, [spec], [entry], {}))
    try:
        runner = open_backend(backend, narrowed, trust_native=trust_native, **options)
    except BackendUnavailable:
        return None
    if not hasattr(runner, "outputs"):  # a backend that runs no single graph of its own
        runner.close()
        return None
    return runner


def open_members(
    source: Source, backend: str = "auto", *, trust_native: bool = False, **options: Any
) -> MemberBackends:
    """Open each member of `source` on `backend` from its own files (see `member_source`).

    Raises:
        BackendUnavailable: a member has no file the backend runs (e.g. an export without
            per-member graphs: `lsmha-export calibrate` writes them)."""
    members = []
    for i in range(len(source.specs)):
        try:
            members.append(open_backend(backend, member_source(source, i), trust_native=trust_native, **options))
        except BackendUnavailable as err:
            for b in members:
                b.close()
            raise BackendUnavailable(
                f"member {i} cannot run on backend {backend!r} from its own files: {err}. "
                f"The adaptive committee runs per-member graphs; `{CALIBRATE_COMMAND}` (or "
                "`lsmha-export onnx --per-member`) writes them"
            ) from None
    return MemberBackends(members)


class AdaptiveCommittee(Committee):
    """A committee deciding by the calibrated early-exit rule (`lsmha.engine.adaptive`).

    Build it with `Committee.load(DIR, adaptive=True)` (or `AdaptiveCommittee.load`). `predict`
    gives the adaptive decisions; `predict(images, return_members_run=True)` also gives how many
    members ran per image; `decide` gives decisions, logits and members run together.
    `predict_logits` gives, per image, the partial sum of the raw logits of the members that ran
    for it (the full sum where all ran): its argmax is the decision, but rows that left early are
    sums over fewer members, so their scale differs from full-committee rows. `member_logits`,
    `accuracy`, `agreement` and `select` run every member (the full committee's figures).

    Attributes:
        calibration: the thresholds, order and calibration facts.
        order: member indices in the order they run.
        thresholds: tau_1..tau_{M-1}.
    """

    runner: MemberBackends

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("build an AdaptiveCommittee with Committee.load(DIR, adaptive=True)")

    @classmethod
    def from_members(
        cls, specs: Sequence[Any], runner: MemberBackends, calibration: Calibration, batch_size: int = 256
    ) -> AdaptiveCommittee:
        """An adaptive committee over opened per-member backends and a calibration."""
        if len(calibration.thresholds) != len(specs) - 1 or sorted(calibration.order) != list(range(len(specs))):
            raise ValueError(
                f"calibration for order {calibration.order} with {len(calibration.thresholds)} thresholds does "
                f"not fit a committee of {len(specs)} members; recalibrate with `{CALIBRATE_COMMAND}`"
            )
        self = cls.__new__(cls)
        self._setup(list(specs), runner, batch_size)
        self.calibration = calibration
        return self

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | Source,
        backend: str = "auto",
        *,
        batch_size: int = 256,
        trust_native: bool = False,
        adaptive: bool = True,
        **options: Any,
    ) -> AdaptiveCommittee:
        """Load an export directory (or its manifest.json) with its calibration, every member on
        `backend` from its own graph. Arguments as `Committee.load`.

        Raises:
            ValueError: the export has no calibration (names `lsmha-export calibrate`).
            BackendUnavailable: a member has no graph the backend runs."""
        if not adaptive:
            raise ValueError("AdaptiveCommittee.load is the adaptive committee; use Committee.load for the full one")
        source = path if isinstance(path, Source) else load_source(path)
        if source.manifest is None:
            raise ValueError(
                f"{path} is a committee.json; the adaptive committee needs an export directory with "
                f"calibrated thresholds: export it (`lsmha-export onnx`), then `{CALIBRATE_COMMAND}`"
            )
        calibration = read_calibration(source.manifest)
        if calibration is None:
            raise ValueError(
                f"{source.manifest.directory} has no adaptive thresholds; calibrate them first: "
                f"`lsmha-export calibrate {source.manifest.directory} --dataset NAME` (on the val split)"
            )
        members = open_members(source, backend, trust_native=trust_native, **options)
        try:
            graph = open_graph(source, calibration, backend, trust_native, **options)
        except BaseException:
            members.close()
            raise
        return cls.from_members(source.specs, MemberBackends(members.members, graph), calibration, batch_size)

    @property
    def order(self) -> list[int]:
        return list(self.calibration.order)

    @property
    def thresholds(self) -> list[float]:
        return list(self.calibration.thresholds)

    def __repr__(self) -> str:
        return f"AdaptiveCommittee({len(self)} members: {', '.join(self.members)}; backend={self.backend})"

    def _decide_chunk(self, x: np.ndarray) -> Decisions:
        if self.runner.graph is not None:  # the whole rule in one session
            logits, runs = self.runner.graph.outputs(x)
            return Decisions(logits.argmax(axis=1), logits.astype(np.float32, copy=False), runs.astype(np.int64))
        n = len(x)
        total = np.zeros((n, self.num_classes), dtype=np.float32)
        runs = np.zeros(n, dtype=np.int64)
        active = np.arange(n)  # the images still undecided
        last = len(self.order) - 1
        for k, member in enumerate(self.order):
            batch = x if len(active) == n else x[active]  # gather
            total[active] += self.runner.member(member, batch)  # run, scatter
            runs[active] = k + 1
            if k == last:
                break
            active = active[margins(total[active]) < self.calibration.thresholds[k]]
            if not len(active):
                break
        return Decisions(total.argmax(axis=1), total, runs)

    def decide(self, images: Any) -> Decisions:
        """Decisions, the logits they were taken from and members run per image (see `Decisions`)."""
        batch = check_images(images, self.img_size, self.in_chans)
        parts = [self._decide_chunk(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        return Decisions(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("decisions", "logits", "members_run"))
        )

    @overload
    def predict(self, images: Any, return_members_run: Literal[False] = False) -> np.ndarray: ...
    @overload
    def predict(self, images: Any, return_members_run: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...
    def predict(self, images: Any, return_members_run: bool = False) -> Any:
        """Adaptive decisions (N,) int64; with `return_members_run`, also (N,) int64 members run per image."""
        d = self.decide(images)
        return (d.decisions, d.members_run) if return_members_run else d.decisions

    def predict_logits(self, images: Any) -> np.ndarray:
        """(N, classes) float32: per image, the sum of the raw logits of the members that ran for it
        (all members where none could leave early); argmax gives `predict`."""
        return self.decide(images).logits

    def full_predict(self, images: Any) -> np.ndarray:
        """The full committee's decisions (every member on every image), for comparison."""
        return soft_committee(self.member_logits(images)).argmax(axis=1)
