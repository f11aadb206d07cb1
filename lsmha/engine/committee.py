"""`Committee`: the soft committee of CCT members behind one `predict`.

Decision = argmax of the SUM of the members' raw logits (paper appendix: no
softmax, activation or normalisation). The members run on a backend (torch,
onnxruntime, ... see `lsmha.engine.backends`); images are checked and
normalised by `lsmha.engine.inputs` and run in chunks of `batch_size`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ..models import CCT, CCTSpec
from ..models.file_kind import file_kind
from ..models.spec import SpecFacts, check_compatible
from .backends import Backend, Source, open_backend
from .inputs import check_images
from .selection import Selection
from .selection import select as greedy_select


class Committee(SpecFacts):
    """A soft committee of CCT members.

    Args:
        models: the members (torch `CCT` modules, or a single one); run on the torch backend.
        device: torch device for the members ("cpu", "cuda", ...; default: where they are).
        batch_size: largest chunk sent to the backend at once.

    Attributes:
        specs: the members' `CCTSpec`s. members: their names.
        num_classes, img_size, in_chans: what every member shares.
        backend: the name of what actually runs, e.g. "onnxruntime[CPUExecutionProvider]".
    """

    def __init__(self, models: Sequence[CCT] | CCT, *, device: str | None = None, batch_size: int = 256) -> None:
        models = [models] if isinstance(models, CCT) else list(models)
        for i, m in enumerate(models):
            if not isinstance(m, CCT):
                raise TypeError(f"Committee expects lsmha CCT models, member {i} is {type(m).__name__}")
        specs = [m.spec for m in models]
        check_compatible(specs)
        self._open(Source(specs=specs, models=models), "torch", batch_size, device=device)

    def _open(self, source: Source, backend: str, batch_size: int, **options: Any) -> None:
        """Open `backend` on `source` (`open_backend`) and attach it: the one way `__init__` and
        `load` build a committee (docs/engine.md walks it)."""
        self._setup(source.specs, open_backend(backend, source, **options), batch_size)

    def _setup(self, specs: list[CCTSpec], runner: Backend, batch_size: int) -> None:
        """Attach an opened backend: the one step every constructor ends in (`_open`, and the
        adaptive committee with its per-member backends)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if runner.num_members != len(specs):
            raise ValueError(f"backend {runner.name} runs {runner.num_members} members, the committee has {len(specs)}")
        self.specs = list(specs)
        self.runner = runner
        self.batch_size = min(batch_size, runner.max_batch or batch_size)

    @classmethod
    def from_checkpoints(
        cls, paths: Sequence[str | os.PathLike], *, device: str | None = None, batch_size: int = 256
    ) -> Committee:
        """Load each `.safetensors` checkpoint as a member (torch backend)."""
        from ..models import load

        return cls([load(p) for p in paths], device=device, batch_size=batch_size)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | Source,
        backend: str = "auto",
        *,
        batch_size: int = 256,
        trust_native: bool = False,
        adaptive: bool = False,
        **options: Any,
    ) -> Committee:
        """Load a committee from a `committee.json` (checkpoints) or an export
        directory's `manifest.json` (or a directory holding either).

        The manifest is read and checked once and paths leaving the directory refused; each file
        the backend opens is hashed (once per process) and checked as it opens it, files it does
        not open are never read; a `Source` from `load_source` is taken as it is.

        Args:
            path: a manifest file, a directory with `manifest.json` or `committee.json`, or a `Source`.
            backend: "auto" (the first that opens of `auto_order(device)`: tensorrt > cuda-graph >
                aoti > onnxruntime > torch on CUDA; on a CPU openvino > onnxruntime > aoti > torch
                where it runs bf16 natively, else onnxruntime first) or a registered name
                ("torch", "onnxruntime", "openvino", ...).
            batch_size: largest chunk per backend call.
            trust_native: let `auto` open native packages (AOTInductor `.pt2`, TensorRT plans),
                which run code on load: only for directories you built or trust (docs/export.md).
            adaptive: an `AdaptiveCommittee`: each image leaves once its calibrated margin is
                reached, the rule run as one graph (`adaptive.onnx`) where the backend can, else
                member by member (docs/adaptive.md); the export needs thresholds from
                `lsmha-export calibrate`, else ValueError naming the command.
            **options: the backend's options (its `Options`), e.g. precision="fp16", device="cuda",
                threads=2.

        Raises:
            ValueError: a bad option name or value (naming it and what is allowed), a bad manifest.
            BackendUnavailable: no backend here can run the committee (each one's reason).
        """
        if adaptive:
            from .adaptive_committee import AdaptiveCommittee

            return AdaptiveCommittee.load(path, backend, batch_size=batch_size, trust_native=trust_native, **options)
        source = path if isinstance(path, Source) else load_source(path)
        self = cls.__new__(cls)
        self._open(source, backend, batch_size, trust_native=trust_native, **options)
        return self

    # -- facts ---------------------------------------------------------------------------------

    @property
    def members(self) -> list[str]:
        """Member names (the spec's name, or "member<i>")."""
        return [s.name or f"member{i}" for i, s in enumerate(self.specs)]

    @property
    def backend(self) -> str:
        """What actually runs the members, e.g. "onnxruntime[CPUExecutionProvider]"."""
        return self.runner.name

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return f"Committee({len(self)} members: {', '.join(self.members)}; backend={self.backend})"

    # -- inference -----------------------------------------------------------------------------

    def _chunks(self, images: Any, fn: Any, axis: int) -> np.ndarray:
        batch = check_images(images, self.img_size, self.in_chans)
        outs = [fn(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=axis)

    def predict_logits(self, images: Any) -> np.ndarray:
        """The soft committee's logits: the SUM of the members' raw logits, (N, classes) float32."""
        return self._chunks(images, self.runner.logits, axis=0)

    def member_logits(self, images: Any) -> np.ndarray:
        """Each member's raw logits: (members, N, classes) float32."""
        return self._chunks(images, self.runner.member_logits, axis=1)

    def predict(self, images: Any) -> np.ndarray:
        """Committee decisions: argmax of the summed raw logits, (N,) int64."""
        return self.predict_logits(images).argmax(axis=1)

    def predict_proba(self, images: Any) -> np.ndarray:
        """softmax(sum of the members' raw logits), (N, classes). A convenience for
        clients wanting scores; the paper's decision uses the raw sum (same argmax)."""
        z = self.predict_logits(images).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    # -- evaluation ----------------------------------------------------------------------------

    def _labels(self, labels: Any, n: int) -> np.ndarray:
        labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"expected labels of shape ({n},) integer, got shape {labels.shape} dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"expected labels in 0..{self.num_classes - 1}, got {labels.min()}..{labels.max()}")
        return labels

    def accuracy(self, images: Any, labels: Any) -> dict[str, Any]:
        """Top-1 accuracy: {"committee": float, "members": [float per member]}."""
        logits = self.member_logits(images)
        labels = self._labels(labels, logits.shape[1])
        return {
            "committee": metrics.accuracy(metrics.soft_committee(logits), labels),
            "members": [metrics.accuracy(m, labels) for m in logits],
        }

    def agreement(self, images: Any, labels: Any) -> np.ndarray:
        """(members, members) fraction of inputs on which two members are both right or both wrong."""
        logits = self.member_logits(images)
        return metrics.agreement_matrix(logits, self._labels(labels, logits.shape[1]))

    def select(self, images: Any, labels: Any, k: int) -> Selection:
        """Greedy forward selection of `k` members maximising committee accuracy on
        (images, labels), ties broken by lower mean agreement (see `selection.select`)."""
        logits = self.member_logits(images)
        return greedy_select(logits, self._labels(labels, logits.shape[1]), k)

    def close(self) -> None:
        """Release the backend's sessions/devices. Later calls that would run the members raise
        RuntimeError, on every backend; closing again does nothing."""
        self.runner.close()
        self.runner = ClosedBackend(self.runner)


class ClosedBackend(Backend):
    """What a closed committee holds instead of its backend: it keeps the facts (`name`,
    `num_members`) and answers any attempt to run with one RuntimeError, whatever the backend was
    (a released onnxruntime session list would otherwise fail with an IndexError, and openvino or
    torch would go on running)."""

    def __init__(self, backend: Backend) -> None:
        self.name = backend.name
        self.num_members = backend.num_members
        self.max_batch = backend.max_batch

    def _closed(self) -> RuntimeError:
        return RuntimeError(
            f"committee is closed (its backend {self.name} was released by close()); load it again with Committee.load"
        )

    def member_logits(self, images: np.ndarray) -> np.ndarray:
        raise self._closed()

    def logits(self, images: np.ndarray) -> np.ndarray:
        raise self._closed()

    def __getattr__(self, attr: str) -> Any:  # a subclass's runner parts (e.g. the adaptive graph)
        if attr.startswith("_"):  # copy, pickle and hasattr probes get the usual answer
            raise AttributeError(attr)
        raise self._closed()


def load_source(path: str | os.PathLike) -> Source:
    """A backend `Source` from an export `manifest.json`, a `committee.json`, or a
    directory holding one (manifest.json preferred). A committee.json's checkpoints are hashed
    and loaded here (only the torch backends run them); an export's files are hashed and
    checked when a backend opens them (`ExportManifest.verified_path`), so files it does not
    open are never read."""
    from ..artifacts import MANIFEST, read_committee, read_manifest
    from ..models import load

    path = Path(path)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            path = path / MANIFEST
        elif (path / "committee.json").is_file():
            path = path / "committee.json"
        else:
            raise FileNotFoundError(f"{path} holds neither {MANIFEST} (an export) nor committee.json (checkpoints)")
    if not path.is_file():
        raise FileNotFoundError(f"committee not found: {path}")
    if path.name == MANIFEST:
        fmt = None
    elif path.name == "committee.json":
        fmt = "lsmha-committee-1"
    else:  # a manifest or committee.json under another name: its "format" says which
        try:
            fmt = json.loads(path.read_text(encoding="utf-8")).get("format")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            raise ValueError(
                f"{path} is {file_kind(path)}, expected an export directory (with manifest.json), "
                "its manifest.json, or a committee.json"
            ) from err
    if fmt == "lsmha-committee-1":  # only torch runs checkpoints: load them now, each file read once
        _, checkpoints = read_committee(path)
        models = [load(p) for p in checkpoints]
        specs = [m.spec for m in models]
        check_compatible(specs)
        return Source(specs=specs, models=models, checkpoints=checkpoints)
    manifest = read_manifest(path, hash_files=False)  # each file hashed and checked as a backend opens it
    check_compatible(manifest.specs)
    return Source(specs=manifest.specs, manifest=manifest)
