"""Compiled files — AOTInductor `.pt2` packages and TensorRT `.plan` files — and what each is
tied to: the machine facts recorded when one is built (`lsmha.export`) and checked when one is
loaded (`lsmha.engine`), the batch range of a plan, and the TensorRT import both sides need.

A package runs only on the torch build, device type and CPU vector ISA or GPU compute
capability it was compiled for; a plan only with the TensorRT version and GPU compute
capability that built it. Both facts are computed here, once, for both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PT2 = "pt2"  # manifest format of an AOTInductor package
PLAN = "plan"  # manifest format of a TensorRT plan
PT2_MAX_BATCH = 1 << 16  # the largest dynamic batch a package is built for
PT2_PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # members' arithmetic -> torch dtype
TENSORRT_INSTALL = "pip install tensorrt (or pip install 'lsmha[gpu]')"


def cuda_capability(device: Any = None) -> str:
    """Compute capability "major.minor" of a CUDA device (torch device, index or None: the current one)."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def cpu_isa() -> str:
    """The CPU vector ISA inductor generates kernels for here ("avx512", "avx2", "neon", ...; "" if none)."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
    except ImportError:  # torch < 2.5 kept it in codecache
        from torch._inductor.codecache import pick_vec_isa  # type: ignore[attr-defined,no-redef]
    return str(pick_vec_isa())


def package_target(device: str) -> dict[str, str]:
    """What an AOTInductor package built here for `device` ("cpu" or "cuda[:i]") is tied to."""
    import torch

    dev = torch.device(device)
    facts = {"torch": torch.__version__, "device": dev.type}
    if dev.type == "cpu":
        facts["cpu_isa"] = cpu_isa()
    elif dev.type == "cuda":
        facts["compute_capability"] = cuda_capability(dev)
        facts["gpu"] = torch.cuda.get_device_name(dev)
    else:
        raise ValueError(f"AOTInductor packages are built for 'cpu' or 'cuda', got device {device!r}")
    return facts


class TensorRTUnavailable(ImportError):
    """TensorRT (or a CUDA device for it) is missing; the message says what to install."""


def import_tensorrt() -> Any:
    """The `tensorrt` module, or TensorRTUnavailable naming the package to install."""
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTUnavailable(f"TensorRT is not installed ({err}): {TENSORRT_INSTALL}") from err
    return tensorrt


@dataclass(frozen=True)
class BatchProfile:
    """One TensorRT optimisation profile over the batch axis: min <= opt <= max, min >= 1.
    TensorRT tunes its kernels for `opt`; any batch in [min, max] runs. A plan's manifest
    entry keeps it under `extra["profile"]`."""

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
