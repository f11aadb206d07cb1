"""The "tensorrt" backend: the export directory's TensorRT plans, run with `execute_async_v3`.

Prefers the committee plan (one engine: all members and their sum), else one plan per
member. Each plan is checked against this machine's TensorRT version and GPU compute
capability before it is deserialised; a mismatch says which `lsmha-export tensorrt`
command rebuilds it. Calls are chunked to the plan profile's max batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...artifacts import FileEntry
from . import Backend, BackendUnavailable, Source

NAME = "tensorrt"
PREFERENCE = ("fp16", "bf16", "fp32")  # precision taken when none is asked for


def unavailable() -> str | None:
    from ...export.tensorrt_plan import INSTALL

    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install torch)"
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__} sees none); TensorRT plans run on NVIDIA GPUs only"
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        return f"TensorRT is not installed ({err}): {INSTALL}"
    return None


def pick_plans(source: Source, precision: str | None) -> tuple[list[FileEntry], bool, str]:
    """(entries, is the committee plan, precision): the committee plan in `precision` (or the first
    of fp16, bf16, fp32 present when None), else a full set of member plans."""
    manifest = source.manifest
    if manifest is None:
        raise BackendUnavailable(
            "tensorrt backend needs an export directory (run `lsmha-export onnx`, then `lsmha-export tensorrt`)"
        )
    for p in (precision,) if precision else PREFERENCE:
        picked = manifest.runnable_set(manifest.find(format="plan", precision=p))
        if picked:
            return (*picked, p)
    have = sorted({(e.precision, str(e.scope)) for e in manifest.find(format="plan")})
    wanted = precision or "any"
    raise BackendUnavailable(
        f"{manifest.directory} has no {wanted}-precision TensorRT plan for the committee or every member "
        f"(have (precision, scope): {have or 'none'}); run `lsmha-export tensorrt {manifest.directory}`"
    )


class TensorRTBackend(Backend):
    """Runs the committee plan (outputs logits, member_logits) or one plan per member."""

    def __init__(self, engines: list[Any], committee_plan: bool, num_members: int, precision: str) -> None:
        self.engines = engines
        self.committee_plan = committee_plan
        self.num_members = num_members
        self.max_batch = min(e.profile.max for e in engines)
        self.name = f"tensorrt[{engines[0].entry.extra.get('gpu', 'cuda')}][{precision}]"

    def _input(self, images: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(images).to(self.engines[0].device, torch.float32, non_blocking=True)

    def _run(self, images: np.ndarray, want_members: bool) -> np.ndarray:
        import torch

        x = self._input(images)
        if self.committee_plan:
            out = self.engines[0](x)["member_logits" if want_members else "logits"]
        else:
            members = torch.stack([e(x)["logits"].float() for e in self.engines])
            out = members if want_members else members.sum(0)
        return out.float().cpu().numpy()

    def member_logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, want_members=True)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, want_members=False)

    def close(self) -> None:
        self.engines = []


def open(source: Source, device: str | None = None, precision: str | None = None, **options: Any) -> TensorRTBackend:
    """Open the TensorRT plans of `source`'s export directory.

    Args:
        device: "cuda" or "cuda:N" (default: the current CUDA device).
        precision: the plans' precision; None takes the first of fp16, bf16, fp32 exported.

    Raises:
        BackendUnavailable: no plan, TensorRT or GPU missing, or a plan built for another
            TensorRT version / GPU (with the rebuild command).
    """
    import torch

    from ...export.tensorrt import TensorRTEngine
    from ...export.tensorrt_plan import PlanMismatch, TensorRTUnavailable

    if options:
        raise BackendUnavailable(f"tensorrt backend: unknown option(s) {sorted(options)}; it takes device, precision")
    if device is not None and not str(device).startswith("cuda"):
        raise BackendUnavailable(f"tensorrt backend runs on CUDA devices only, asked for device={device!r}")
    entries, whole, chosen = pick_plans(source, precision)
    index = torch.device(device).index if device else None
    index = torch.cuda.current_device() if index is None else index
    directory = source.manifest.directory
    try:
        engines = [TensorRTEngine(source.manifest.path_of(e), e, directory, index) for e in entries]
    except (TensorRTUnavailable, PlanMismatch) as err:
        raise BackendUnavailable(str(err)) from err
    return TensorRTBackend(engines, whole, len(source.specs), chosen)
