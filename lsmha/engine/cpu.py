"""What the CPU at hand can do: its model name, ISA flags and kind (AVX2 / AVX-512 / AVX-512+BF16 / AMX).

Read from /proc/cpuinfo on Linux; elsewhere the flags are unknown and OpenVINO's
own `OPTIMIZATION_CAPABILITIES` (which lists "BF16" where its CPU plugin has bf16
kernels) stands in for the bf16 question. Every timing the project records names
the kind and the flags, since the fastest backend and precision differ between them.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

# The flags that decide kernels for a CCT committee on a CPU, as /proc/cpuinfo spells them.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # either gives native bf16 dot products


@dataclass(frozen=True)
class CpuInfo:
    """One CPU's model name and the ISA flags of `ISA_FLAGS` it has (None: flags unknown here).

    Attributes:
        model: the marketing name, e.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8480+".
        flags: the relevant flags present, in `ISA_FLAGS` order; None where /proc/cpuinfo is absent.
    """

    model: str
    flags: tuple[str, ...] | None = field(default=None)

    @property
    def kind(self) -> str:
        """ "amx", "avx512_bf16", "avx512", "avx2", "sse" or "unknown" (flags not readable)."""
        if self.flags is None:
            return "unknown"
        for kind, flag in (
            ("amx", "amx_bf16"),
            ("avx512_bf16", "avx512_bf16"),
            ("avx512", "avx512f"),
            ("avx2", "avx2"),
        ):
            if flag in self.flags:
                return kind
        return "sse"

    @property
    def has_bf16(self) -> bool | None:
        """Native bf16 arithmetic (AMX or AVX512_BF16); None when the flags are unknown."""
        if self.flags is None:
            return None
        return any(f in self.flags for f in BF16_FLAGS)

    def describe(self) -> str:
        """One line for a table header: model, kind and flags."""
        flags = "flags unknown" if self.flags is None else (" ".join(self.flags) or "none of " + ", ".join(ISA_FLAGS))
        return f"{self.model} [{self.kind}: {flags}]"

    def to_dict(self) -> dict[str, object]:
        return {"cpu_model": self.model, "cpu_kind": self.kind, "isa_flags": list(self.flags or ())}


def parse_cpuinfo(text: str) -> CpuInfo:
    """A `CpuInfo` from the text of /proc/cpuinfo (the first processor's entry decides)."""
    model, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and flags is None:
            present = set(value.split())
            flags = tuple(f for f in ISA_FLAGS if f in present)
    return CpuInfo(model or platform.processor() or platform.machine(), flags)


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The CPU this process runs on (read once)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return CpuInfo(platform.processor() or platform.machine(), None)


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))
