"""The "aoti" backend: AOTInductor `.pt2` packages from the export directory.

Prefers the committee package (all members and their sum in one compiled program)
for the device, else one package per member. Each package is checked against
this machine (torch build, device, CPU ISA / GPU compute capability) before it is
loaded; a mismatch says which `lsmha-export aoti` command rebuilds it. Images go
in as float32 (uint8 is widened exactly: the graph standardises each image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import BackendOptions, BackendUnavailable, Devices, FileBackend, OneOf, Source, option, pick_files

NAME = "aoti"
FORMAT = "pt2"  # the files `file_runner` runs
NATIVE = True  # a package is a shared library: `auto` opens it only from a trusted directory


@dataclass(frozen=True)
class Options(BackendOptions):
    """device: "cpu" or "cuda"; None takes CUDA when torch sees a device and a CUDA package exists,
    else CPU. precision: the packages' precision."""

    device: str | None = option(None, Devices())
    precision: str = option("fp32", OneOf(("fp32", "fp16", "bf16")))


def unavailable() -> str | None:
    try:
        import torch  # noqa: F401

        from .aoti_runtime import aoti_loader
    except ImportError as err:
        return f"AOTInductor needs torch>=2.6 (pip install 'torch>=2.6'): {err}"
    try:
        aoti_loader()
    except ImportError as err:
        return str(err)
    return None


class AotiBackend(FileBackend):
    """Runs the committee package (outputs logits, member_logits) or one package per member."""

    def __init__(self, packages: list[Any], committee_package: bool, num_members: int, precision: str) -> None:
        self.device = packages[0].device
        name = f"aoti[{self.device.type}]" + ("" if precision == "fp32" else f"[{precision}]")
        super().__init__(packages, committee_package, num_members, name)
        self.max_batch = min(p.max_batch for p in packages)

    def prepare(self, images: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(images).to(self.device, torch.float32, non_blocking=True)

    def call(self, runner: Any, x: Any) -> Any:
        return runner(x)

    def stack(self, outputs: list[Any]) -> Any:
        import torch

        return torch.stack(outputs)

    def to_numpy(self, out: Any) -> np.ndarray:
        return out.float().cpu().numpy()

    def _run(self, images: np.ndarray, want_members: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return super()._run(images, want_members)


def file_runner(path: Any, entry: Any) -> Any:
    """One file as a parity runner: float32 NCHW numpy -> output name -> numpy (BackendUnavailable
    where this machine cannot run it)."""
    from .aoti_runtime import file_runner as runner

    return runner(path, entry)


def open(source: Source, options: Options) -> AotiBackend:
    """Open the `.pt2` packages of `source`'s export directory (see `Options`).

    Raises:
        BackendUnavailable: no package for (device, precision), or one built for another torch/CPU/GPU
            (the message holds the rebuild command).
    """
    import torch

    from .aoti_runtime import AotiPackage, PackageMismatch

    device, precision = options.device, options.precision
    if device is None:
        device = "cpu"
        if torch.cuda.is_available() and source.manifest is not None:
            cuda = [
                e for e in source.manifest.find(format="pt2", precision=precision) if e.extra.get("device") == "cuda"
            ]
            device = "cuda" if cuda else "cpu"
    kind = torch.device(device).type
    directory = source.manifest.directory if source.manifest else "DIR"
    entries, whole = pick_files(
        source,
        "pt2",
        precision,
        f"lsmha-export aoti {directory} --device {kind} --precision {precision}",
        f"{kind} AOTInductor package",
        where=lambda e: e.extra.get("device", "cpu") == kind,
    )
    try:
        packages = [AotiPackage(source.manifest.verified_path(e), e, source.manifest.directory) for e in entries]
    except PackageMismatch as err:
        raise BackendUnavailable(str(err)) from err
    return AotiBackend(packages, whole, len(source.specs), precision)
