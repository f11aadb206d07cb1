"""Backends: what runs a committee's members. One module per backend, one registry entry each.

A backend module defines

    NAME: str                                       # its registry key, e.g. "onnxruntime"
    def unavailable() -> str | None                 # why its packages/devices are missing, with the install hint
    def open(source: Source, **options) -> Backend  # raise BackendUnavailable when `source` lacks its files

and is listed in `BACKENDS` below (heavy packages are imported inside `open`, so importing
every backend module is cheap). `backend="auto"` tries `auto_order(device)` (fastest first)
and logs which backend it took and why it skipped the others. Options are checked once,
before the search: an option no backend takes is a TypeError; each candidate is handed the
options its `open` takes.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import (
    aoti_backend,
    cuda_graph_backend,
    onnxruntime_backend,
    openvino_backend,
    tensorrt_backend,
    torch_backend,
)
from .base import Backend, BackendUnavailable, FileBackend, Source, pick_files

log = logging.getLogger("lsmha.engine")


@dataclass(frozen=True)
class BackendKind:
    """A registry entry: how to open a backend, and why it cannot run here (None: it can)."""

    open: Callable[..., Backend]
    unavailable: Callable[[], str | None]

    def options(self) -> set[str]:
        """The keyword options `open` takes."""
        params = list(inspect.signature(self.open).parameters.values())[1:]  # after `source`
        return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


BACKENDS: dict[str, BackendKind] = {
    m.NAME: BackendKind(m.open, m.unavailable)
    for m in (torch_backend, onnxruntime_backend, openvino_backend, aoti_backend, tensorrt_backend, cuda_graph_backend)
}
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "cuda-graph", "aoti", "onnxruntime", "torch")
# On a CPU the order depends on whether it runs bf16 natively (docs/performance.md). With AMX
# or AVX512_BF16, OpenVINO's bf16 committee graph beat ONNX Runtime fp32 on every row measured
# (AMX Xeon 2.3-4.6x, AVX512_BF16 EPYC 1.2-3.9x). In f32, OpenVINO won on the AMX Xeon
# (1.10-1.28x) but lost the committee rows on the EPYC (0.78-0.85x), so without bf16 ONNX
# Runtime stays first; it beat the AOTInductor package on an AVX2 EPYC.
CPU_AUTO_ORDER: tuple[str, ...] = ("openvino", "onnxruntime", "aoti", "torch")
CPU_F32_AUTO_ORDER: tuple[str, ...] = ("onnxruntime", "openvino", "aoti", "torch")


def auto_order(device: str | None = None, bf16: bool | None = None) -> tuple[str, ...]:
    """The backends `auto` tries, fastest first, for `device` (None: CUDA when torch sees one).

    On a CPU, `bf16` says whether it has AMX or AVX512_BF16 (None: read /proc/cpuinfo)."""
    if device is None:
        import torch

        on_cpu = not torch.cuda.is_available()
    else:
        on_cpu = str(device) == "cpu"
    if not on_cpu:
        return AUTO_ORDER
    if bf16 is None:
        from ..cpu import cpu_info

        bf16 = bool(cpu_info().has_bf16)
    return CPU_AUTO_ORDER if bf16 else CPU_F32_AUTO_ORDER


def available_backends() -> dict[str, str | None]:
    """Every registered backend -> None if usable here, else the reason it is not."""
    return {name: kind.unavailable() for name, kind in BACKENDS.items()}


def check_options(options: dict[str, Any], names: list[str]) -> None:
    """Refuse options no backend among `names` takes (TypeError) and bad values (ValueError)."""
    known = set().union(*(BACKENDS[n].options() for n in names))
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown backend option(s) {unknown}; the backends {names} take {sorted(known)}")
    threads = options.get("threads")
    if threads is not None:
        limit = os.cpu_count() or 1
        if isinstance(threads, bool) or not isinstance(threads, int):
            raise TypeError(f"threads must be an int, got {threads!r} ({type(threads).__name__})")
        if not 1 <= threads <= limit:
            raise ValueError(f"threads must be between 1 and this machine's {limit} CPUs, got {threads}")
    device = options.get("device")
    if device is not None:
        if not isinstance(device, str) or not (device == "cpu" or device.split(":")[0] == "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise BackendUnavailable(
                    f"device={device!r} asked for, but torch {torch.__version__} sees no CUDA device "
                    "(check nvidia-smi and CUDA_VISIBLE_DEVICES), or use device='cpu'"
                )


def _open(name: str, source: Source, options: dict[str, Any]) -> Backend:
    kind = BACKENDS[name]
    reason = kind.unavailable()
    if reason:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
    return kind.open(source, **options)


def open_backend(name: str, source: Source, **options: Any) -> Backend:
    """Open backend `name` ("auto" or a registered name) on `source`.

    "auto" tries `auto_order(options.get("device"))` and takes the first that opens, handing each
    the options it takes; if none opens, BackendUnavailable lists each one's reason.

    Raises:
        ValueError: unknown backend name, bad option value.  TypeError: an option no backend takes.
    """
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; known: auto, {', '.join(sorted(BACKENDS))}")
        check_options(options, [name])
        return _open(name, source, options)
    order = [n for n in auto_order(options.get("device")) if n in BACKENDS]
    check_options(options, order)
    skipped = []
    for candidate in order:
        taken = BACKENDS[candidate].options()
        mine = {k: v for k, v in options.items() if k in taken}
        try:
            backend = _open(candidate, source, mine)
        except (BackendUnavailable, ImportError) as err:
            skipped.append(f"{candidate}: {err}")
            continue
        ignored = sorted(set(options) - set(mine))
        log.info(
            "backend auto chose %s%s%s",
            backend.name,
            f" (options {ignored} do not apply to it)" if ignored else "",
            "; skipped " + "; ".join(skipped) if skipped else "",
        )
        return backend
    raise BackendUnavailable("no backend can run this committee:\n  " + "\n  ".join(skipped))


__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "CPU_AUTO_ORDER",
    "CPU_F32_AUTO_ORDER",
    "Backend",
    "BackendKind",
    "BackendUnavailable",
    "FileBackend",
    "Source",
    "auto_order",
    "available_backends",
    "check_options",
    "open_backend",
    "pick_files",
]
