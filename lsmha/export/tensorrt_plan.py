"""TensorRT plan facts that need no TensorRT: the optimisation profile, the build
recipe per TensorRT version, plan names and the version / GPU checks, and the
I/O buffer plan. Split from `tensorrt.py` (which drives TensorRT itself) so all of
this is importable and tested on machines without TensorRT."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..artifacts import COMMITTEE, FileEntry

FORMAT = "plan"
PRECISIONS = ("fp32", "fp16", "bf16")
INSTALL = "pip install tensorrt (or pip install 'lsmha[gpu]')"
TIMING_CACHE = "tensorrt.timing.cache"
INPUT = "images"


class TensorRTUnavailable(ImportError):
    """TensorRT (or a CUDA device for it) is missing; the message says what to install."""


class PlanMismatch(RuntimeError):
    """A plan was built for another TensorRT version or GPU; the message holds the rebuild command."""


def import_tensorrt() -> Any:
    """The `tensorrt` module, or TensorRTUnavailable naming the package to install."""
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTUnavailable(f"TensorRT is not installed ({err}): {INSTALL}") from err
    return tensorrt


def major_version(version: str) -> int:
    """10 for "10.13.0.35"; ValueError for anything that does not start with a number."""
    head = str(version).split(".")[0]
    if not head.isdigit():
        raise ValueError(f"expected a TensorRT version like '10.13.0', got {version!r}")
    return int(head)


# -- optimisation profile ---------------------------------------------------------------------


@dataclass(frozen=True)
class BatchProfile:
    """One optimisation profile over the batch axis: min <= opt <= max, min >= 1.
    TensorRT tunes its kernels for `opt`; any batch in [min, max] runs."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"expected a batch profile with 1 <= min <= opt <= max, got {self.describe()}")

    def describe(self) -> str:
        return f"min={self.min}, opt={self.opt}, max={self.max}"

    def to_text(self) -> str:
        """The CLI form, e.g. "1,1,256"."""
        return f"{self.min},{self.opt},{self.max}"

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> BatchProfile:
        return cls(int(d["min"]), int(d["opt"]), int(d["max"]))

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """ "1,8,256" (min,opt,max), "min=1,opt=8,max=256" (any order), or "8" (fixed batch)."""
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        try:
            if parts and all("=" in p for p in parts):
                kv = {k.strip(): int(v) for k, v in (p.split("=", 1) for p in parts)}
                if set(kv) != {"min", "opt", "max"}:
                    raise ValueError(f"keys {sorted(kv)}")
                return cls(kv["min"], kv["opt"], kv["max"])
            values = [int(p) for p in parts]
        except ValueError as err:
            if "batch profile" in str(err):
                raise
            raise ValueError(
                f"expected a batch profile 'min,opt,max' (e.g. 1,1,256), 'min=1,opt=8,max=256' or one batch "
                f"size, got {text!r} ({err})"
            ) from None
        if len(values) == 1:
            return cls(values[0], values[0], values[0])
        if len(values) != 3:
            raise ValueError(f"expected a batch profile 'min,opt,max' (e.g. 1,1,256) or one batch size, got {text!r}")
        return cls(*values)

    def shapes(self, tail: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes for an input of shape (batch, *tail)."""
        return tuple((b, *tail) for b in (self.min, self.opt, self.max))  # type: ignore[return-value]


DEFAULT_PROFILE = BatchProfile(1, 1, 256)  # latency first: kernels tuned for batch 1


# -- precision by version ---------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRecipe:
    """How to get a plan of some precision out of this TensorRT.

    Attributes:
        onnx_precision: which ONNX file to parse ("fp32" or "fp16").
        strongly_typed: build a strongly typed network (precision = the ONNX types).
        flags: builder flags to set (TensorRT 10 weak typing: "FP16", "BF16").
        clear_tf32: clear TF32 so an fp32 plan computes in true fp32.
    """

    onnx_precision: str
    strongly_typed: bool
    flags: tuple[str, ...] = ()
    clear_tf32: bool = False


def build_recipe(trt_version: str, precision: str, onnx_precisions: Iterable[str]) -> BuildRecipe:
    """The recipe for a `precision` plan with TensorRT `trt_version`, given the precisions of the
    ONNX files at hand. ValueError when this TensorRT cannot make it from those files (the
    message says which `lsmha-export onnx` to run)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    have = set(onnx_precisions)
    major = major_version(trt_version)
    if major < 10:
        raise ValueError(f"TensorRT {trt_version} is too old: lsmha builds plans with TensorRT 10 or 11 ({INSTALL})")
    clear_tf32 = precision == "fp32"
    if major >= 11:  # weak typing is gone: the ONNX types are the precision
        if precision not in have:
            hint = (
                f"export it with `lsmha-export onnx ... --precision {precision}`"
                if precision in ("fp32", "fp16")
                else "lsmha writes fp32 and fp16 ONNX only; use --precision fp16"
            )
            raise ValueError(
                f"TensorRT {trt_version} takes the precision from the ONNX types (strongly typed networks) and "
                f"there is no {precision} ONNX file (have: {sorted(have) or 'none'}); {hint}"
            )
        return BuildRecipe(precision, strongly_typed=True, clear_tf32=clear_tf32)
    if "fp32" in have:  # TensorRT 10: fp32 graph, reduced precision allowed by builder flags
        flags = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",)}[precision]
        return BuildRecipe("fp32", strongly_typed=False, flags=flags, clear_tf32=clear_tf32)
    if precision in have:
        return BuildRecipe(precision, strongly_typed=True, clear_tf32=clear_tf32)
    raise ValueError(
        f"no ONNX file to build a {precision} plan from (have: {sorted(have) or 'none'}); run `lsmha-export onnx` first"
    )


# -- names, facts and checks ------------------------------------------------------------------


def plan_name(scope: str | int, precision: str) -> str:
    """`committee.fp16.plan`, `member0.fp32.plan`, ..."""
    stem = COMMITTEE if scope == COMMITTEE else f"member{scope}"
    return f"{stem}.{precision}.plan"


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
    if entry.format != FORMAT:
        raise ValueError(f"{entry.path} is a {entry.format!r} file, expected {FORMAT!r}")
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


def cuda_capability(device_index: int = 0) -> str:
    """Compute capability "major.minor" of a CUDA device (via torch)."""
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return f"{major}.{minor}"


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
