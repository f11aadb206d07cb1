"""AOTInductor: a member or a whole committee compiled ahead of time into one `.pt2` package.

`torch.export` traces the same graph the ONNX export writes (`CommitteeGraph`:
per-image standardisation once, every member, their sum; or `MemberGraph`) with
a dynamic batch dimension, and `aoti_compile_and_package` compiles it into a
self-contained `.pt2` (generated C++/CUDA kernels + weights) for the device at
hand. Loading needs only torch, no Python model code.

A package is tied to what built it: the exact torch build, the device type, the
CPU vector ISA the kernels were generated for (CPU) or the GPU's compute
capability (CUDA). Those are recorded in the manifest entry (`lsmha.artifacts.compiled`) and checked
when the engine loads it (`lsmha.engine.backends.aoti_runtime`); a mismatch is refused
with the command that rebuilds it.

    lsmha-export aoti runs/export            # committee.cpu.pt2 next to committee.onnx
    Committee.load("runs/export", backend="aoti")

CPU kernels have the OpenMP thread count of the compiling process baked in
(recorded as `threads`). Measured on 2 shared AMD EPYC cores, torch 2.14.1:
compiling CCT-7/3x1 or a 3-member committee takes about 100 s; CCT-7/3x1 at
batch 1 runs in about 24 ms against 27-35 ms in torch eager (interleaved, after
warm-up); parity with torch fp32 is within 6e-7 relative.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import COMMITTEE, FileEntry, add_entries, file_entry, read_manifest
from ..artifacts.compiled import PT2, PT2_MAX_BATCH, PT2_PRECISIONS, package_target
from ..models import CCT, CCTSpec, load
from .graphs import INPUT, graph_for, io_tensors

PRECISIONS = {name: getattr(torch, dtype) for name, dtype in PT2_PRECISIONS.items()}
MAX_BATCH = PT2_MAX_BATCH


def aoti_compiler() -> Callable[..., Any]:
    """This torch's `aoti_compile_and_package(exported_program, package_path=...)`; ImportError when it
    has none (torch 2.6 introduced it, and it keeps the name through 2.14)."""
    import torch._inductor as inductor

    compile_fn = getattr(inductor, "aoti_compile_and_package", None)
    if compile_fn is None:
        raise ImportError(
            f"torch {torch.__version__} has no AOTInductor packaging API "
            "(torch._inductor.aoti_compile_and_package); install torch>=2.6"
        )
    return compile_fn


def cuda_toolkit_missing() -> str | None:
    """Why a CUDA package cannot be compiled here, or None when a CUDA toolkit is found.

    AOTInductor compiles its C++ wrapper against the CUDA headers of `CUDA_HOME` (else the
    toolkit of the `nvcc` on PATH, else /usr/local/cuda); torch's wheels do not ship them."""
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # cannot tell here: the compile itself will say
        return None
    if CUDA_HOME:
        return None
    return (
        "no CUDA toolkit found (CUDA_HOME unset, no nvcc on PATH, no /usr/local/cuda): AOTInductor compiles its "
        "C++ wrapper against the CUDA headers; install the toolkit or set CUDA_HOME, or build with --device cpu"
    )


def cannot_build(device: str) -> str | None:
    """Why this machine cannot build a package for `device`, or None when it can."""
    if torch.device(device).type != "cuda":
        return None
    if not torch.cuda.is_available():
        return "cannot build a CUDA AOTInductor package: torch sees no CUDA device; use --device cpu"
    if why := cuda_toolkit_missing():
        return f"cannot build a CUDA AOTInductor package: {why}"
    return None


def package_name(scope: str | int, device: str, precision: str) -> str:
    """`committee.cpu.pt2`, `member0.cuda.fp16.pt2`, ..."""
    stem = COMMITTEE if scope == COMMITTEE else f"member{scope}"
    suffix = "" if precision == "fp32" else f".{precision}"
    return f"{stem}.{torch.device(device).type}{suffix}.pt2"


def export_program(module: nn.Module, spec: CCTSpec, device: str, max_batch: int = MAX_BATCH) -> Any:
    """`torch.export` of `module` (raw float32 images -> outputs) on `device`, batch dynamic in 1..max_batch."""
    example = torch.rand(2, spec.in_chans, spec.img_size, spec.img_size, device=device) * 255
    # torch.export needs min < max for a dynamic dim (and the example has batch 2): a package
    # asked for max_batch=1 still accepts up to 2.
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(
            module.to(device).eval(), (example,), dynamic_shapes={INPUT: {0: batch}}, strict=False
        )


def export_aoti(
    models: Sequence[CCT],
    directory: str | os.PathLike,
    *,
    scope: str | int = COMMITTEE,
    device: str = "cpu",
    precision: str = "fp32",
    max_batch: int = MAX_BATCH,
) -> FileEntry:
    """Compile the committee (scope "committee") or member `scope` into a `.pt2` under `directory`.

    Args:
        models: all the committee's members (a member package takes `models[scope]`).
        directory: the export directory (created if missing).
        scope: "committee" for one package of all members + sum, or a member index.
        device: "cpu" or "cuda" (the package runs only there).
        precision: "fp32", "fp16" or "bf16" (the members' arithmetic; inputs and outputs stay float32).
        max_batch: largest batch the package accepts.

    Returns:
        The manifest entry (not yet written): format "pt2", versions {"torch": ...}, and in
        `extra` the device, the CPU ISA or GPU compute capability, max_batch and compile_s.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if not 1 <= max_batch <= MAX_BATCH:
        raise ValueError(f"max_batch must be in 1..{MAX_BATCH}, got {max_batch}")
    if why := cannot_build(device):  # before the export: fail in a second, not after it
        raise RuntimeError(why)
    module, specs = graph_for(models, scope, PRECISIONS[precision])
    facts = package_target(device)
    compile_fn = aoti_compiler()
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / package_name(scope, device, precision)
    tmp = path.with_name(path.name + ".tmp.pt2")
    start = time.perf_counter()
    program = export_program(module, specs[0], device, max_batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compile_fn(program, package_path=str(tmp))
    compile_s = time.perf_counter() - start
    os.replace(tmp, path)
    inputs, outputs = io_tensors(specs, scope)
    extra = {k: v for k, v in facts.items() if k != "torch"}
    if facts["device"] == "cpu":
        extra["threads"] = torch.get_num_threads()  # inductor bakes the OpenMP thread count into CPU kernels
    return file_entry(
        directory, path, format=PT2, precision=precision, scope=scope, inputs=inputs, outputs=outputs,
        versions={"torch": facts["torch"]}, max_batch=max_batch, compile_s=round(compile_s, 2), **extra,
    )  # fmt: skip


def export_aoti_dir(
    directory: str | os.PathLike,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    members: bool = False,
    max_batch: int = MAX_BATCH,
    progress: bool = False,
) -> list[FileEntry]:
    """Add AOTInductor packages to an existing export directory (made by `lsmha-export onnx`,
    or by `lsmha.export.write_weights`), from the members' safetensors it holds, and record
    them in its `manifest.json`.

    Args:
        directory: the export directory.
        device, precision, max_batch: as in `export_aoti`.
        members: one package per member instead of one for the committee.
        progress: show a tqdm bar and each package's compile time.

    Returns:
        The new entries (compile_s in each entry's `extra`).
    """
    from tqdm import tqdm

    manifest = read_manifest(directory)
    weights = {e.scope: e for e in manifest.find(format="safetensors")}
    missing = [i for i in range(len(manifest.specs)) if i not in weights]
    if missing:
        raise FileNotFoundError(
            f"{manifest.directory} lists no weights for member(s) {missing}; AOTInductor compiles the members "
            f"from their member<i>.safetensors (re-export with `lsmha-export onnx SOURCES -o {directory} --force`)"
        )
    models = [load(manifest.path_of(weights[i])) for i in range(len(manifest.specs))]
    scopes: list[str | int] = list(range(len(models))) if members else [COMMITTEE]
    entries = []
    for scope in tqdm(scopes, desc="aoti", disable=not progress):
        entry = export_aoti(models, directory, scope=scope, device=device, precision=precision, max_batch=max_batch)
        if progress:
            tqdm.write(f"{entry.path}: compiled in {entry.extra['compile_s']:.1f} s")
        entries.append(entry)
    add_entries(directory, entries)
    return entries
