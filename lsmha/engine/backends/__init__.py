"""Backends: what runs a committee's members. One module per backend, one registry entry each.

A backend module defines

    NAME: str                                        # its registry key, e.g. "onnxruntime"
    NATIVE: bool (optional)                          # True: it loads native code from the directory
    class Options(BackendOptions)                    # its options: a frozen dataclass of `option` fields
    def unavailable() -> str | None                  # why its packages/devices are missing, with the install hint
    def open(source: Source, options: Options) -> Backend  # BackendUnavailable when `source` lacks its files

and is listed in `BACKENDS` below (heavy packages are imported inside `open`, so importing
every backend module is cheap). Every construction path (`Committee`, verify, the bench)
goes through `open_backend`. `backend="auto"` tries `auto_order(device)` (fastest first) and
logs which backend it took and why it skipped the others. Options are checked once, before
the search: a name no candidate takes, or a value no candidate taking it accepts, is a
ValueError naming the option, the value and what is allowed. `auto` never opens a native
backend (AOTInductor packages, TensorRT plans: code that runs on load) unless the caller
says the directory is trusted (`trust_native=True`); naming such a backend is that consent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import (
    aoti_backend,
    cuda_graph_backend,
    onnxruntime_backend,
    openvino_backend,
    tensorrt_backend,
    torch_backend,
)
from .base import (
    Backend,
    BackendOptions,
    BackendUnavailable,
    FileBackend,
    Source,
    check_value,
    pick_files,
)

if TYPE_CHECKING:
    from ...artifacts import FileEntry

FileRunner = Callable[[np.ndarray], dict[str, np.ndarray]]  # float32 NCHW -> output name -> array
log = logging.getLogger("lsmha.engine")


@dataclass(frozen=True)
class BackendKind:
    """A registry entry: its typed options, how to open it, why it cannot run here (None: it
    can), and whether it loads native code from the export directory."""

    Options: type[BackendOptions]
    open: Callable[[Source, Any], Backend]
    unavailable: Callable[[], str | None]
    native: bool = False
    format: str | None = None  # the file format its `file_runner` runs one file of (parity checks)
    file_runner: Callable[[Path, FileEntry], FileRunner] | None = None

    def options(self) -> set[str]:
        """The options this backend takes."""
        return self.Options.names()


BACKENDS: dict[str, BackendKind] = {
    m.NAME: BackendKind(
        m.Options,
        m.open,
        m.unavailable,
        getattr(m, "NATIVE", False),
        getattr(m, "FORMAT", None),
        getattr(m, "file_runner", None),
    )
    for m in (torch_backend, onnxruntime_backend, openvino_backend, aoti_backend, tensorrt_backend, cuda_graph_backend)
}
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "cuda-graph", "aoti", "onnxruntime", "torch")
# On a CPU, OpenVINO's bf16 graph goes first where the CPU runs bf16 natively (AMX or
# AVX512_BF16); without it ONNX Runtime fp32 does (docs/performance.md has the measurements).
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
    """Refuse, with a ValueError naming it, an option none of the backends `names` takes, or a
    value none of those taking it accepts; a CUDA device where torch sees none is BackendUnavailable."""
    known = set().union(*(BACKENDS[n].options() for n in names))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown backend option(s) {unknown}; the backends {names} take {sorted(known)}")
    for key, value in options.items():
        errors = []
        for n in names:
            if key in BACKENDS[n].options():
                try:
                    check_value(BACKENDS[n].Options, key, value)
                    break
                except ValueError:
                    errors.append(f"{n} takes {BACKENDS[n].Options.allowed(key)}")
        else:
            raise ValueError(f"backend option {key}={value!r} is not allowed: " + "; ".join(errors))
    device = options.get("device")
    if isinstance(device, str) and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"device={device!r} asked for, but torch {torch.__version__} sees no CUDA device "
                "(check nvidia-smi and CUDA_VISIBLE_DEVICES), or use device='cpu'"
            )


def file_runtime(fmt: str) -> str:
    """The backend that runs one file of format `fmt` (the format itself when none does)."""
    return next((name for name, kind in BACKENDS.items() if kind.format == fmt), fmt)


def open_file(path: Path, entry: FileEntry) -> FileRunner:
    """One exported file as a runner, on the backend of its format (`file_runtime`): float32
    NCHW images -> output name -> array. BackendUnavailable where nothing here runs it."""
    kind = BACKENDS.get(file_runtime(entry.format))
    if kind is None or kind.file_runner is None:
        raise BackendUnavailable(f"lsmha has no runtime for files of format {entry.format!r}")
    return kind.file_runner(path, entry)


def _open(name: str, source: Source, options: BackendOptions) -> Backend:
    kind = BACKENDS[name]
    reason = kind.unavailable()
    if reason:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
    return kind.open(source, options)


def open_backend(name: str, source: Source, *, trust_native: bool = False, **options: Any) -> Backend:
    """Open backend `name` ("auto" or a registered name) on `source`: the one way a backend is built.

    "auto" tries `auto_order(options.get("device"))` and takes the first that opens, handing each
    the options it takes; if none opens, BackendUnavailable lists each one's reason. It skips
    native backends (AOTInductor, TensorRT) unless `trust_native`: their files run code on load.

    Raises:
        ValueError: unknown backend name, an option no backend takes, a value none accepts.
    """
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; known: auto, {', '.join(sorted(BACKENDS))}")
        check_options(options, [name])
        return _open(name, source, BACKENDS[name].Options(**options))
    order = [n for n in auto_order(options.get("device")) if n in BACKENDS]
    check_options(options, order)
    skipped = []
    for candidate in order:
        kind = BACKENDS[candidate]
        if kind.native and not trust_native:
            skipped.append(f"{candidate}: native code, opened only by name or with trust_native=True")
            continue
        mine = {k: v for k, v in options.items() if k in kind.options()}
        try:
            typed = kind.Options(**mine)
        except ValueError as err:
            skipped.append(f"{candidate}: {err}")
            continue
        try:
            backend = _open(candidate, source, typed)
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
    "BackendOptions",
    "BackendUnavailable",
    "FileBackend",
    "FileRunner",
    "Source",
    "auto_order",
    "available_backends",
    "check_options",
    "file_runtime",
    "open_file",
    "open_backend",
    "pick_files",
]
