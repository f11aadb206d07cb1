"""Loading AOTInductor `.pt2` packages (built by `lsmha-export aoti`), checked against this machine.

A package runs only on the torch build, device type and CPU vector ISA or GPU compute
capability it was compiled for (recorded in its manifest entry). `check_package` compares
them with this machine (`lsmha.artifacts.compiled.package_target`) and refuses a mismatch
with the `lsmha-export aoti` command that rebuilds it, before torch would fail obscurely.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...artifacts import COMMITTEE, FileEntry
from ...artifacts.compiled import PT2, PT2_MAX_BATCH, package_target
from .base import BackendUnavailable


class PackageMismatch(RuntimeError):
    """A `.pt2` package was built for another torch, device or CPU/GPU; the message says how to rebuild."""


def aoti_loader() -> Callable[..., Any]:
    """This torch's `aoti_load_package(path)`; ImportError when it has none.

    torch 2.6 introduced `torch._inductor.aoti_load_package` and keeps the name through 2.14;
    torch 2.5 exposed loading as `torch._inductor.package.load_package` only."""
    import torch._inductor as inductor

    load_fn = getattr(inductor, "aoti_load_package", None)
    if load_fn is None:
        try:
            from torch._inductor.package import load_package as load_fn
        except ImportError:
            raise ImportError(
                f"torch {torch.__version__} has no AOTInductor package loader "
                "(torch._inductor.aoti_load_package); install torch>=2.6"
            ) from None
    return load_fn


def rebuild_command(directory: str | os.PathLike, device: str, precision: str, scope: str | int) -> str:
    """The `lsmha-export aoti` command that rebuilds one package on this machine."""
    members = "" if scope == COMMITTEE else " --members"
    return f"lsmha-export aoti {directory} --device {device} --precision {precision}{members}"


def check_package(entry: FileEntry, directory: str | os.PathLike, facts: dict[str, str] | None = None) -> None:
    """Refuse a package this machine cannot run: other torch build, device type, CPU ISA or GPU.

    Args:
        entry: the package's manifest entry.
        directory: the export directory (for the rebuild command in the message).
        facts: this machine's `package_target(entry's device)`; computed when None (tests pass their own).

    Raises:
        PackageMismatch: what the package was built for, what this machine is, and the rebuild command.
    """
    if entry.format != PT2:
        raise ValueError(f"{entry.path} is a {entry.format!r} file, expected {PT2!r}")
    device = entry.extra.get("device", "cpu")
    if facts is None:
        if device == "cuda" and not torch.cuda.is_available():
            raise PackageMismatch(
                f"{entry.path} is a CUDA package but torch sees no CUDA device here; use a CPU package: "
                f"`{rebuild_command(directory, 'cpu', entry.precision, entry.scope)}`"
            )
        facts = package_target(device)
    built = {"torch": entry.versions.get("torch", "?"), **{k: str(v) for k, v in entry.extra.items()}}
    problems = [
        f"{key} {built.get(key, '?')!r} (this machine: {facts[key]!r})"
        for key in ("torch", "device", "cpu_isa", "compute_capability")
        if key in facts and built.get(key) != facts[key]
    ]
    if problems:
        command = rebuild_command(directory, device, entry.precision, entry.scope)
        raise PackageMismatch(
            f"{entry.path} was built for {', '.join(problems)}; an AOTInductor package runs only where it "
            f"was built. Rebuild it on this machine: `{command}`"
        )


class AotiPackage:
    """A loaded `.pt2`: float32 (N, C, H, W) torch tensor on its device -> tuple of float32 outputs.

    Args:
        path: the package file.
        entry: its manifest entry (checked with `check_package` unless `check=False`).
        directory: the export directory (for error messages).
    """

    def __init__(
        self, path: str | os.PathLike, entry: FileEntry, directory: str | os.PathLike, check: bool = True
    ) -> None:
        if check:
            check_package(entry, directory)
        load_fn = aoti_loader()
        self.entry = entry
        self.device = torch.device(entry.extra.get("device", "cpu"))
        self.max_batch = int(entry.extra.get("max_batch", PT2_MAX_BATCH))
        self.output_names = [t.name for t in entry.outputs]
        kwargs = {}
        if self.device.type == "cuda" and "device_index" in inspect.signature(load_fn).parameters:
            kwargs["device_index"] = torch.cuda.current_device()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._model = load_fn(str(path), **kwargs)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._model(images)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)

    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Output name -> tensor."""
        return dict(zip(self.output_names, self(images)))


def file_runner(path: Path, entry: FileEntry) -> Callable[[Any], dict[str, Any]]:
    """One package as a parity runner: float32 NCHW numpy -> output name -> numpy.
    Raises `BackendUnavailable` when this machine cannot run the package."""
    try:
        package = AotiPackage(path, entry, path.parent)
    except PackageMismatch as err:
        raise BackendUnavailable(str(err)) from err

    def run(images: Any) -> dict[str, Any]:
        with torch.inference_mode():
            x = torch.from_numpy(images).to(package.device, torch.float32)
            return {k: v.float().cpu().numpy() for k, v in package.outputs(x).items()}

    return run
