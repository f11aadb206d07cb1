"""Backends: what runs a committee's members. One module per backend, one registry line each.

A backend module defines

    NAME: str                                       # the registry key, e.g. "onnxruntime"
    def unavailable() -> str | None                 # why its packages/devices are missing, with the install hint
    def open(source: Source, **options) -> Backend  # raise BackendUnavailable when `source` lacks its files

and is listed in `BACKENDS` below. `backend="auto"` tries `AUTO_ORDER`
(fastest first) among the registered backends whose packages are present and
whose files the source holds, and reports why each skipped one was skipped.
When the committee will run on the CPU (device="cpu", or torch sees no CUDA
device) it tries `CPU_AUTO_ORDER` instead: on a CPU, ONNX Runtime ran the Table 6
committee faster than the AOTInductor package in all four interleaved runs, and
CCT-7/3x1 in three of four (README, "What the numbers say"), so it comes first there.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ...models import CCTSpec

if TYPE_CHECKING:
    from ...artifacts import ExportManifest
    from ...models import CCT

# name -> module. Adding a backend: one new module + one line here (+ its place in AUTO_ORDER).
BACKENDS: dict[str, str] = {
    "torch": "lsmha.engine.backends.torch_backend",
    "onnxruntime": "lsmha.engine.backends.onnxruntime_backend",
    "aoti": "lsmha.engine.backends.aoti_backend",
    "tensorrt": "lsmha.engine.backends.tensorrt_backend",
    "cuda-graph": "lsmha.engine.backends.cuda_graph_backend",
}
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "cuda-graph", "aoti", "onnxruntime", "torch")
CPU_AUTO_ORDER: tuple[str, ...] = ("onnxruntime", "aoti", "torch")


def auto_order(device: str | None = None) -> tuple[str, ...]:
    """The backends `auto` tries, fastest first, for `device` (None: CUDA when torch sees one)."""
    if device is None:
        import torch

        on_cpu = not torch.cuda.is_available()
    else:
        on_cpu = str(device) == "cpu"
    return CPU_AUTO_ORDER if on_cpu else AUTO_ORDER


class BackendUnavailable(RuntimeError):
    """A backend cannot run here or cannot run this source; the message says why and what to do."""


@dataclass
class Source:
    """Everything a backend may build from: the member specs, and either torch
    models / checkpoints, or an export directory's verified manifest (or both).

    Args:
        specs: one `CCTSpec` per member, in committee order.
        models: in-memory torch models, when the committee was built from them.
        checkpoints: member `.safetensors` files (verified), when known.
        manifest: the export directory's manifest (hashes already verified).
    """

    specs: list[CCTSpec]
    models: list[CCT] | None = None
    checkpoints: list[Path] | None = None
    manifest: ExportManifest | None = None
    _loaded: list[CCT] | None = field(default=None, repr=False)

    def torch_models(self) -> list[CCT]:
        """The members as torch models: given, loaded from checkpoints, or from the
        export directory's safetensors entries. BackendUnavailable when none of these exist."""
        if self.models is not None:
            return self.models
        if self._loaded is None:
            from ...models import load

            paths = self.checkpoints
            if paths is None and self.manifest is not None:
                by_scope = {e.scope: e for e in self.manifest.find(format="safetensors")}
                if all(i in by_scope for i in range(len(self.specs))):
                    paths = [self.manifest.path_of(by_scope[i]) for i in range(len(self.specs))]
            if paths is None:
                raise BackendUnavailable(
                    "no torch weights: the source has no models, checkpoints or safetensors files in its manifest"
                )
            self._loaded = [load(p) for p in paths]
        return self._loaded


class Backend(abc.ABC):
    """Runs the members on checked images: (N, C, H, W) uint8 or float32, C-contiguous numpy.

    Attributes:
        name: what actually runs, e.g. "torch[cpu]" or "onnxruntime[CPUExecutionProvider]".
        num_members: members in the committee.
        max_batch: largest batch one call accepts (None: any); the Committee chunks to it.
    """

    name: str
    num_members: int
    max_batch: int | None = None

    @abc.abstractmethod
    def member_logits(self, images: np.ndarray) -> np.ndarray:
        """Raw logits of each member: (M, N, classes) float32."""

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Sum of the members' raw logits: (N, classes) float32."""
        return self.member_logits(images).sum(axis=0)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions/devices (optional)."""


def backend_module(name: str) -> ModuleType:
    """The registered module for `name` (ValueError when unknown)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: auto, {', '.join(sorted(BACKENDS))}")
    return importlib.import_module(BACKENDS[name])


def available_backends() -> dict[str, str | None]:
    """Every registered backend -> None if usable here, else the reason it is not."""
    out: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            out[name] = backend_module(name).unavailable()
        except ImportError as err:
            out[name] = f"cannot import {BACKENDS[name]}: {err}"
    return out


def open_backend(name: str, source: Source, **options: Any) -> Backend:
    """Open backend `name` ("auto" or a registered name) on `source`.

    "auto" tries `auto_order(options.get("device"))` and takes the first that
    opens; if none does, BackendUnavailable lists each one's reason.
    """
    if name != "auto":
        module = backend_module(name)
        reason = module.unavailable()
        if reason:
            raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
        return module.open(source, **options)
    reasons = []
    for candidate in auto_order(options.get("device")):
        if candidate not in BACKENDS:
            continue
        try:
            module = backend_module(candidate)
            reason = module.unavailable()
            if reason is None:
                return module.open(source, **options)
        except (BackendUnavailable, ImportError) as err:
            reason = str(err)
        reasons.append(f"{candidate}: {reason}")
    raise BackendUnavailable("no backend can run this committee:\n  " + "\n  ".join(reasons))


__all__ = [
    "AUTO_ORDER",
    "CPU_AUTO_ORDER",
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "Source",
    "auto_order",
    "available_backends",
    "backend_module",
    "open_backend",
]
