"""The "tensorrt" backend: the export directory's TensorRT plans, run with `execute_async_v3`.

Prefers the committee plan (one engine: all members and their sum), else one plan per
member. Each plan is checked against this machine's TensorRT version and GPU compute
capability before it is deserialised; a mismatch says which `lsmha-export tensorrt`
command rebuilds it. Calls are chunked to the plan profile's max batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import BackendOptions, BackendUnavailable, Devices, FileBackend, OneOf, Source, option, pick_files

NAME = "tensorrt"
FORMAT = "plan"  # the files `file_runner` runs
NATIVE = True  # a plan is deserialised native code: `auto` opens it only from a trusted directory
PREFERENCE = ("fp16", "bf16", "fp32")  # precision taken when none is asked for


@dataclass(frozen=True)
class Options(BackendOptions):
    """device: "cuda" or "cuda:N" (None: the current CUDA device); precision: the plans'
    precision (None takes the first of fp16, bf16, fp32 exported)."""

    device: str | None = option(None, Devices(("cuda",)))
    precision: str | None = option(None, OneOf((None, *PREFERENCE)))


def unavailable() -> str | None:
    from ...artifacts.compiled import TENSORRT_INSTALL as INSTALL

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


def pick_plans(source: Source, precision: str | None) -> tuple[list[Any], bool, str]:
    """(entries, is the committee plan, precision): the plans in `precision`, or, when None, in
    the first of fp16, bf16, fp32 exported."""
    rebuild = f"lsmha-export tensorrt {source.manifest.directory if source.manifest else 'DIR'}"
    errors = []
    for chosen in (precision,) if precision else PREFERENCE:
        try:
            return (*pick_files(source, "plan", chosen, rebuild, "TensorRT plan"), chosen)
        except BackendUnavailable as err:
            errors.append(str(err))
    raise BackendUnavailable(errors[0] if precision else f"no TensorRT plan in any of {PREFERENCE}: {errors[-1]}")


class TensorRTBackend(FileBackend):
    """Runs the committee plan (outputs logits, member_logits) or one plan per member."""

    def __init__(self, engines: list[Any], committee_plan: bool, num_members: int, precision: str) -> None:
        name = f"tensorrt[{engines[0].entry.extra.get('gpu', 'cuda')}][{precision}]"
        super().__init__(engines, committee_plan, num_members, name)
        self.max_batch = min(e.profile.max for e in engines)

    def prepare(self, images: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(images).to(self.runners[0].device, torch.float32, non_blocking=True)

    def call(self, runner: Any, x: Any) -> list[Any]:
        out = runner(x)
        return [out["logits"].float(), out["member_logits"]] if "member_logits" in out else [out["logits"].float()]

    def stack(self, outputs: list[Any]) -> Any:
        import torch

        return torch.stack(outputs)

    def to_numpy(self, out: Any) -> np.ndarray:
        return out.float().cpu().numpy()


def file_runner(path: Any, entry: Any) -> Any:
    """One file as a parity runner: float32 NCHW numpy -> output name -> numpy (BackendUnavailable
    where this machine cannot run it)."""
    from .tensorrt_runtime import file_runner as runner

    return runner(path, entry)


def open(source: Source, options: Options) -> TensorRTBackend:
    """Open the TensorRT plans of `source`'s export directory (see `Options`).

    Raises:
        BackendUnavailable: no plan, TensorRT or GPU missing, or a plan built for another
            TensorRT version / GPU (with the rebuild command).
    """
    import torch

    from ...artifacts.compiled import TensorRTUnavailable
    from .tensorrt_runtime import PlanMismatch, TensorRTEngine

    device = options.device
    entries, whole, chosen = pick_plans(source, options.precision)
    index = torch.device(device).index if device else None
    index = torch.cuda.current_device() if index is None else index
    try:
        manifest = source.manifest
        engines = [TensorRTEngine(manifest.verified_path(e), e, manifest.directory, index) for e in entries]
    except (TensorRTUnavailable, PlanMismatch) as err:
        raise BackendUnavailable(str(err)) from err
    return TensorRTBackend(engines, whole, len(source.specs), chosen)
