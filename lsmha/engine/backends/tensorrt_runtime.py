"""Running TensorRT plans (built by `lsmha-export tensorrt`): checked against this TensorRT and
GPU, deserialised once, run with `execute_async_v3` on torch CUDA buffers.

A plan runs only with the TensorRT version and GPU compute capability that built it
(both in its manifest entry): `check_plan` refuses a mismatch with the
`lsmha-export tensorrt` command that rebuilds it. Output buffers are allocated once at
the profile's max batch and viewed at each call's batch (`IOBuffers`); the buffer
planning needs no TensorRT and is tested everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...artifacts import COMMITTEE, FileEntry
from ...artifacts.compiled import (
    PLAN,
    BatchProfile,
    TensorRTUnavailable,
    cuda_capability,
    import_tensorrt,
)
from .base import BackendUnavailable


class PlanMismatch(RuntimeError):
    """A plan was built for another TensorRT version or GPU; the message holds the rebuild command."""


def rebuild_command(
    directory: str | os.PathLike, precision: str, profile: BatchProfile | None, scope: str | int
) -> str:
    """The `lsmha-export tensorrt` command that rebuilds a plan on this machine."""
    profile_arg = f" --profile {profile.to_text()}" if profile else ""
    members = "" if scope == COMMITTEE else " --members"
    return f"lsmha-export tensorrt {directory} --precision {precision}{profile_arg}{members}"


def check_plan(entry: FileEntry, directory: str | os.PathLike, trt_version: str, capability: str) -> None:
    """Refuse a plan built by another TensorRT version or for another GPU compute capability.

    Args:
        entry: the plan's manifest entry (versions["tensorrt"], extra["compute_capability"]).
        directory: the export directory (for the rebuild command).
        trt_version: this machine's `tensorrt.__version__`.
        capability: this GPU's compute capability, "major.minor".

    Raises:
        PlanMismatch: what the plan was built for, what this machine has, and the rebuild command.
    """
    if entry.format != PLAN:
        raise ValueError(f"{entry.path} is a {entry.format!r} file, expected {PLAN!r}")
    built_version = entry.versions.get("tensorrt")
    built_cc = entry.extra.get("compute_capability")
    problems = []
    if built_version != trt_version:
        problems.append(f"TensorRT {built_version} (this machine has TensorRT {trt_version})")
    if str(built_cc) != str(capability):
        problems.append(f"GPU compute capability {built_cc} (this GPU is {capability})")
    if problems:
        profile = BatchProfile.from_dict(entry.extra["profile"]) if "profile" in entry.extra else None
        command = rebuild_command(directory, entry.precision, profile, entry.scope)
        raise PlanMismatch(
            f"{entry.path} was built for {' and '.join(problems)}; a TensorRT plan runs only with the version "
            f"and GPU that built it. Rebuild it on this machine: `{command}`"
        )


# -- buffer planning --------------------------------------------------------------------------


@dataclass(frozen=True)
class IOTensor:
    """One engine input or output as TensorRT reports it: dtype is the `trt.DataType` name
    ("FLOAT", "HALF", ...) and -1 marks the dynamic (batch) axis."""

    name: str
    is_input: bool
    dtype: str
    shape: tuple[int, ...]


TORCH_DTYPES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32",
    "INT64": "int64", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool",
}  # fmt: skip


def torch_dtype(trt_dtype: str) -> Any:
    """The torch dtype of a `trt.DataType` name."""
    import torch

    if trt_dtype not in TORCH_DTYPES:
        raise ValueError(f"TensorRT tensor dtype {trt_dtype} has no torch buffer type; known: {sorted(TORCH_DTYPES)}")
    return getattr(torch, TORCH_DTYPES[trt_dtype])


def concrete_shapes(tensors: Sequence[IOTensor], batch: int, profile: BatchProfile) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape at `batch`: each tensor has at most one -1 axis, the batch.

    Raises:
        ValueError: batch outside the profile, or a tensor with several dynamic axes.
    """
    if not profile.min <= batch <= profile.max:
        raise ValueError(f"batch {batch} is outside the plan's profile ({profile.describe()})")
    out = {}
    for t in tensors:
        if sum(d == -1 for d in t.shape) > 1:
            raise ValueError(f"tensor {t.name} has several dynamic axes {t.shape}; only the batch may be dynamic")
        out[t.name] = tuple(batch if d == -1 else int(d) for d in t.shape)
    return out


def numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class IOBuffers:
    """One flat torch buffer per output, sized for the profile's max batch; each call views its
    first numel(shape) elements as that batch's shape (contiguous, so TensorRT can write it).

    Args:
        tensors: the engine's I/O tensors (inputs are bound to the caller's tensor, not here).
        profile: the plan's batch profile.
        device: torch device of the buffers ("cuda:0"; "cpu" in tests).
    """

    def __init__(self, tensors: Sequence[IOTensor], profile: BatchProfile, device: Any) -> None:
        import torch

        self.tensors = list(tensors)
        self.profile = profile
        largest = concrete_shapes(self.tensors, profile.max, profile)
        self.buffers = {
            t.name: torch.empty(numel(largest[t.name]), dtype=torch_dtype(t.dtype), device=device)
            for t in self.tensors
            if not t.is_input
        }

    def outputs(self, batch: int) -> dict[str, Any]:
        """Output name -> a contiguous view of its buffer at `batch`."""
        shapes = concrete_shapes(self.tensors, batch, self.profile)
        return {name: buf[: numel(shapes[name])].view(shapes[name]) for name, buf in self.buffers.items()}


# -- the engine ---------------------------------------------------------------------------------


class TensorRTEngine:
    """A deserialised plan with one execution context, run on torch CUDA tensors.

    Args:
        path: the `.plan` file.
        entry: its manifest entry (checked against this TensorRT and GPU with `check_plan`).
        directory: the export directory (for the rebuild command in errors).
        device_index: CUDA device to run on.
    """

    def __init__(
        self, path: str | os.PathLike, entry: FileEntry, directory: str | os.PathLike, device_index: int = 0
    ) -> None:
        import torch

        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise TensorRTUnavailable("running a TensorRT plan needs a CUDA device; torch sees none")
        self.device = torch.device("cuda", device_index)
        with torch.cuda.device(self.device):
            check_plan(entry, directory, trt.__version__, cuda_capability(device_index))
            self.entry = entry
            self.profile = BatchProfile.from_dict(entry.extra["profile"])
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if self.engine is None:
                raise RuntimeError(f"TensorRT {trt.__version__} could not deserialise {path} (see its log above)")
            self.context = self.engine.create_execution_context()
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.tensors = [
                IOTensor(
                    n,
                    self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT,
                    self.engine.get_tensor_dtype(n).name,
                    tuple(self.engine.get_tensor_shape(n)),
                )
                for n in names
            ]
            inputs = [t for t in self.tensors if t.is_input]
            if len(inputs) != 1:
                raise RuntimeError(f"{path}: expected one input tensor, the engine has {[t.name for t in inputs]}")
            self.input = inputs[0]
            self.output_names = [t.name for t in self.tensors if not t.is_input]
            self.buffers = IOBuffers(self.tensors, self.profile, self.device)

    def __call__(self, images: Any) -> dict[str, Any]:
        """(N, C, H, W) images (any device, float) -> output name -> CUDA tensor view, valid until the next call."""
        import torch

        batch = int(images.shape[0])
        x = images.to(self.device, torch_dtype(self.input.dtype), non_blocking=True).contiguous()
        shape = concrete_shapes([self.input], batch, self.profile)[self.input.name]
        if tuple(x.shape) != shape:
            raise ValueError(f"expected images of shape {shape} for {self.input.name}, got {tuple(x.shape)}")
        outputs = self.buffers.outputs(batch)
        self.context.set_input_shape(self.input.name, shape)
        self.context.set_tensor_address(self.input.name, x.data_ptr())
        for name, view in outputs.items():
            self.context.set_tensor_address(name, view.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.entry.path} at batch {batch}")
        x.record_stream(stream)
        return outputs


def file_runner(path: Path, entry: FileEntry) -> Callable[[Any], dict[str, Any]]:
    """One plan as a parity runner: float32 NCHW numpy -> output name -> numpy. Raises
    `BackendUnavailable` when TensorRT or a GPU is missing, or the plan is for another one."""
    import numpy as np
    import torch

    try:
        engine = TensorRTEngine(path, entry, path.parent)
    except (TensorRTUnavailable, PlanMismatch) as err:
        raise BackendUnavailable(str(err)) from err

    def run(images: Any) -> dict[str, Any]:
        out: dict[str, Any] = {name: [] for name in engine.output_names}
        step = engine.profile.max
        for i in range(0, len(images), step):
            chunk = engine(torch.from_numpy(images[i : i + step]))
            for name, value in chunk.items():
                out[name].append(value.float().cpu().numpy())
        axis = {name: 1 if name == "member_logits" else 0 for name in out}
        return {name: np.concatenate(parts, axis=axis[name]) for name, parts in out.items()}

    return run
