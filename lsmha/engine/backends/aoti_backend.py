"""The "aoti" backend: AOTInductor `.pt2` packages from the export directory.

Prefers the committee package (all members and their sum in one compiled program)
for the device, else one package per member. Each package is checked against
this machine (torch build, device, CPU ISA / GPU compute capability) before it is
loaded; a mismatch says which `lsmha-export aoti` command rebuilds it. Images go
in as float32 (uint8 is widened exactly: the graph standardises each image).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...artifacts import FileEntry
from . import Backend, BackendUnavailable, Source

NAME = "aoti"


def unavailable() -> str | None:
    try:
        import torch  # noqa: F401

        from ...export.aoti import aoti_api
    except ImportError as err:
        return f"AOTInductor needs torch>=2.6 (pip install 'torch>=2.6'): {err}"
    try:
        aoti_api()
    except ImportError as err:
        return str(err)
    return None


def pick_packages(source: Source, device: str, precision: str) -> tuple[list[FileEntry], bool]:
    """The committee package for (device, precision) if exported, else one per member."""
    manifest = source.manifest
    if manifest is None:
        raise BackendUnavailable(
            "aoti backend needs an export directory (run `lsmha-export onnx`, then `lsmha-export aoti`)"
        )
    mine = [e for e in manifest.find(format="pt2", precision=precision) if e.extra.get("device", "cpu") == device]
    picked = manifest.runnable_set(mine)
    if picked:
        return picked
    have = sorted({(e.extra.get("device", "?"), e.precision, str(e.scope)) for e in manifest.find(format="pt2")})
    raise BackendUnavailable(
        f"{manifest.directory} has no {device} {precision} AOTInductor package (have (device, precision, scope): "
        f"{have or 'none'}); run `lsmha-export aoti {manifest.directory} --device {device} --precision {precision}`"
    )


class AotiBackend(Backend):
    """Runs the committee package (outputs logits, member_logits) or one package per member."""

    def __init__(self, packages: list[Any], committee_package: bool, num_members: int, precision: str) -> None:
        self.packages = packages
        self.committee_package = committee_package
        self.num_members = num_members
        self.device = packages[0].device
        self.max_batch = min(p.max_batch for p in packages)
        self.name = f"aoti[{self.device.type}]" + ("" if precision == "fp32" else f"[{precision}]")

    def _input(self, images: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(images).to(self.device, torch.float32, non_blocking=True)

    def _run(self, images: np.ndarray, want_members: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self._input(images)
            if self.committee_package:
                out = self.packages[0](x)[1 if want_members else 0]
            else:
                members = [p(x)[0] for p in self.packages]
                out = torch.stack(members) if want_members else torch.stack(members).sum(0)
            return out.float().cpu().numpy()

    def member_logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, want_members=True)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, want_members=False)

    def close(self) -> None:
        self.packages = []


def open(source: Source, device: str | None = None, precision: str = "fp32", **options: Any) -> AotiBackend:
    """Open the `.pt2` packages of `source`'s export directory.

    Args:
        device: "cpu" or "cuda"; None takes CUDA when torch sees a device and a CUDA package exists, else CPU.
        precision: the packages' precision ("fp32" default, "fp16", "bf16").

    Raises:
        BackendUnavailable: no package for (device, precision), or one built for another torch/CPU/GPU
            (the message holds the rebuild command).
    """
    import torch

    from ...export.aoti import AotiPackage, PackageMismatch

    if options:
        raise BackendUnavailable(f"aoti backend: unknown option(s) {sorted(options)}; it takes device, precision")
    if device is None:
        device = "cpu"
        if torch.cuda.is_available() and source.manifest is not None:
            cuda = [
                e for e in source.manifest.find(format="pt2", precision=precision) if e.extra.get("device") == "cuda"
            ]
            device = "cuda" if cuda else "cpu"
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise BackendUnavailable(f"aoti backend: device must be 'cpu' or 'cuda', got {device!r}")
    entries, whole = pick_packages(source, kind, precision)
    directory = source.manifest.directory
    try:
        packages = [AotiPackage(source.manifest.path_of(e), e, directory) for e in entries]
    except PackageMismatch as err:
        raise BackendUnavailable(str(err)) from err
    return AotiBackend(packages, whole, len(source.specs), precision)
