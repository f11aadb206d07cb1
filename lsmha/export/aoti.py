"""AOTInductor: a member or a whole committee compiled ahead of time into one `.pt2` package.

`torch.export` traces the same graph the ONNX export writes (`CommitteeGraph`:
per-image standardisation once, every member, their sum; or `MemberGraph`) with
a dynamic batch dimension, and `aoti_compile_and_package` compiles it into a
self-contained `.pt2` (generated C++/CUDA kernels + weights) for the device at
hand. Loading needs only torch, no Python model code.

A package is tied to what built it: the exact torch build, the device type, the
CPU vector ISA the kernels were generated for (CPU) or the GPU's compute
capability (CUDA). Those are recorded in the manifest entry and checked at load
(`check_package`); a mismatch is refused with the command that rebuilds it.

    lsmha-export aoti runs/export            # committee.cpu.pt2 next to committee.onnx
    Committee.load("runs/export", backend="aoti")

CPU kernels have the OpenMP thread count of the compiling process baked in
(recorded as `threads`). Measured on 2 shared AMD EPYC cores, torch 2.14.1:
compiling CCT-7/3x1 or a 3-member committee takes about 100 s; CCT-7/3x1 at
batch 1 runs in about 24 ms against 27-35 ms in torch eager (interleaved, after
warm-up); parity with torch fp32 is within 6e-7 relative.
"""

from __future__ import annotations

import inspect
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import COMMITTEE, FileEntry, TensorInfo, file_entry
from ..cli_help import HelpFormatter
from ..models import CCT, CCTSpec
from .onnx import INPUT, CommitteeGraph, MemberGraph

FORMAT = "pt2"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_BATCH = 1 << 16


class PackageMismatch(RuntimeError):
    """A `.pt2` package was built for another torch, device or CPU/GPU; the message says how to rebuild."""


def aoti_api() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(compile_and_package, load_package) of this torch; ImportError when it has none.

    torch 2.6 introduced `torch._inductor.aoti_compile_and_package(ep, package_path=...)` and
    `torch._inductor.aoti_load_package(path)`; they keep these names through 2.14. Older
    torch (2.5) exposed loading as `torch._inductor.package.load_package` only.
    """
    import torch._inductor as inductor

    compile_fn = getattr(inductor, "aoti_compile_and_package", None)
    load_fn = getattr(inductor, "aoti_load_package", None)
    if load_fn is None:
        try:
            from torch._inductor.package import load_package as load_fn
        except ImportError:
            load_fn = None
    if compile_fn is None or load_fn is None:
        raise ImportError(
            f"torch {torch.__version__} has no AOTInductor packaging API "
            "(torch._inductor.aoti_compile_and_package / aoti_load_package); install torch>=2.6"
        )
    return compile_fn, load_fn


def cpu_isa() -> str:
    """The CPU vector ISA inductor generates kernels for here ("avx512", "avx2", "neon", ...; "" if none)."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
    except ImportError:  # torch < 2.5 kept it in codecache
        from torch._inductor.codecache import pick_vec_isa  # type: ignore[attr-defined,no-redef]
    return str(pick_vec_isa())


def cuda_capability(device: torch.device | str = "cuda") -> str:
    """Compute capability "major.minor" of a CUDA device."""
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return f"{major}.{minor}"


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


def target_facts(device: str) -> dict[str, str]:
    """What a package built here for `device` ("cpu" or "cuda[:i]") is tied to."""
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


def package_name(scope: str | int, device: str, precision: str) -> str:
    """`committee.cpu.pt2`, `member0.cuda.fp16.pt2`, ..."""
    stem = COMMITTEE if scope == COMMITTEE else f"member{scope}"
    suffix = "" if precision == "fp32" else f".{precision}"
    return f"{stem}.{torch.device(device).type}{suffix}.pt2"


def rebuild_command(directory: str | os.PathLike, device: str, precision: str, scope: str | int) -> str:
    """The `lsmha-export aoti` command that rebuilds one package on this machine."""
    members = "" if scope == COMMITTEE else " --members"
    return f"lsmha-export aoti {directory} --device {device} --precision {precision}{members}"


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
    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("cannot build a CUDA AOTInductor package: torch sees no CUDA device; use --device cpu")
        if why := cuda_toolkit_missing():  # before the export: fail in a second, not after it
            raise RuntimeError(f"cannot build a CUDA AOTInductor package: {why}")
    models = list(models)
    dtype = PRECISIONS[precision]
    if scope == COMMITTEE:
        module: nn.Module = CommitteeGraph(models, dtype)
        specs = [m.spec for m in models]
    elif isinstance(scope, int) and 0 <= scope < len(models):
        module = MemberGraph(models[scope], dtype)
        specs = [models[scope].spec]
    else:
        raise ValueError(f"scope must be {COMMITTEE!r} or a member index in 0..{len(models) - 1}, got {scope!r}")
    facts = target_facts(device)
    compile_fn, _ = aoti_api()
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
    s = specs[0]
    inputs = [TensorInfo(INPUT, "float32", ("batch", s.in_chans, s.img_size, s.img_size))]
    outputs = [TensorInfo("logits", "float32", ("batch", s.num_classes))]
    if scope == COMMITTEE:
        outputs.append(TensorInfo("member_logits", "float32", (len(specs), "batch", s.num_classes)))
    extra = {k: v for k, v in facts.items() if k != "torch"}
    if facts["device"] == "cpu":
        extra["threads"] = torch.get_num_threads()  # inductor bakes the OpenMP thread count into CPU kernels
    return file_entry(
        directory, path, format=FORMAT, precision=precision, scope=scope, inputs=inputs, outputs=outputs,
        versions={"torch": facts["torch"]}, max_batch=max_batch, compile_s=round(compile_s, 2), **extra,
    )  # fmt: skip


def check_package(entry: FileEntry, directory: str | os.PathLike, facts: dict[str, str] | None = None) -> None:
    """Refuse a package this machine cannot run: other torch build, device type, CPU ISA or GPU.

    Args:
        entry: the package's manifest entry.
        directory: the export directory (for the rebuild command in the message).
        facts: this machine's `target_facts(entry device)`; computed when None (tests pass their own).

    Raises:
        PackageMismatch: what the package was built for, what this machine is, and the rebuild command.
    """
    if entry.format != FORMAT:
        raise ValueError(f"{entry.path} is a {entry.format!r} file, expected {FORMAT!r}")
    device = entry.extra.get("device", "cpu")
    if facts is None:
        if device == "cuda" and not torch.cuda.is_available():
            raise PackageMismatch(
                f"{entry.path} is a CUDA package but torch sees no CUDA device here; use a CPU package: "
                f"`{rebuild_command(directory, 'cpu', entry.precision, entry.scope)}`"
            )
        facts = target_facts(device)
    built = {"torch": entry.versions.get("torch", "?"), **{k: str(v) for k, v in entry.extra.items()}}
    problems = [
        f"{key} {built.get(key, '?')!r} (this machine: {facts[key]!r})"
        for key in ("torch", "device", "cpu_isa", "compute_capability")
        if key in facts and built.get(key) != facts[key]
    ]
    if problems:
        command = rebuild_command(directory, device, entry.precision, entry.scope)
        raise PackageMismatch(
            f"{entry.path} was built for {', '.join(problems)}; an AOTInductor package runs only where it "
            f"was built. Rebuild it on this machine: `{command}`"
        )


class AotiPackage:
    """A loaded `.pt2`: float32 (N, C, H, W) torch tensor on its device -> tuple of float32 outputs.

    Args:
        path: the package file.
        entry: its manifest entry (checked with `check_package` unless `check=False`).
        directory: the export directory (for error messages).
    """

    def __init__(
        self, path: str | os.PathLike, entry: FileEntry, directory: str | os.PathLike, check: bool = True
    ) -> None:
        if check:
            check_package(entry, directory)
        _, load_fn = aoti_api()
        self.entry = entry
        self.device = torch.device(entry.extra.get("device", "cpu"))
        self.max_batch = int(entry.extra.get("max_batch", MAX_BATCH))
        self.output_names = [t.name for t in entry.outputs]
        kwargs = {}
        if self.device.type == "cuda" and "device_index" in inspect.signature(load_fn).parameters:
            kwargs["device_index"] = torch.cuda.current_device()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._model = load_fn(str(path), **kwargs)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._model(images)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)

    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Output name -> tensor."""
        return dict(zip(self.output_names, self(images)))


def file_runner(path: Path, entry: FileEntry) -> Callable[[Any], dict[str, Any]]:
    """For `lsmha.export.verify`: float32 NCHW numpy -> output name -> numpy.
    Raises `BackendUnavailable` when this machine cannot run the package."""
    from ..engine.backends import BackendUnavailable

    try:
        package = AotiPackage(path, entry, path.parent)
    except PackageMismatch as err:
        raise BackendUnavailable(str(err)) from err

    def run(images: Any) -> dict[str, Any]:
        with torch.inference_mode():
            x = torch.from_numpy(images).to(package.device, torch.float32)
            return {k: v.float().cpu().numpy() for k, v in package.outputs(x).items()}

    return run


def export_aoti_dir(
    directory: str | os.PathLike,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    members: bool = False,
    max_batch: int = MAX_BATCH,
    progress: bool = False,
) -> list[FileEntry]:
    """Add AOTInductor packages to an existing export directory (made by `lsmha-export onnx`),
    from the members' safetensors it holds, and record them in its `manifest.json`.

    Args:
        directory: the export directory.
        device, precision, max_batch: as in `export_aoti`.
        members: one package per member instead of one for the committee.
        progress: show a tqdm bar and each package's compile time.

    Returns:
        The new entries (compile_s in each entry's `extra`).
    """
    from tqdm import tqdm

    from ..artifacts import add_entries, read_manifest
    from ..engine.backends import Source

    manifest = read_manifest(directory)
    models = Source(specs=manifest.specs, manifest=manifest).torch_models()
    scopes: list[str | int] = list(range(len(models))) if members else [COMMITTEE]
    entries = []
    for scope in tqdm(scopes, desc="aoti", disable=not progress):
        entry = export_aoti(models, directory, scope=scope, device=device, precision=precision, max_batch=max_batch)
        if progress:
            tqdm.write(f"{entry.path}: compiled in {entry.extra['compile_s']:.1f} s")
        entries.append(entry)
    add_entries(directory, entries)
    return entries


def write_weights(models: Sequence[CCT], directory: str | os.PathLike) -> None:
    """Start an export directory with the members' `.safetensors` and a fresh manifest (no ONNX)."""
    from ..artifacts import ExportManifest, write_manifest
    from ..models import save

    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, m in enumerate(models):
        path = save(m, directory / f"member{i}.safetensors", **getattr(m, "facts", {}))
        versions = {"torch": torch.__version__.split("+")[0]}
        entries.append(file_entry(directory, path, format="safetensors", precision="fp32", scope=i, versions=versions))
    write_manifest(ExportManifest(directory.resolve(), [m.spec for m in models], entries))


def register(sub: Any) -> None:
    """`lsmha-export aoti` (see `lsmha.export.cli`)."""

    p = sub.add_parser(
        "aoti",
        help="compile the committee (or each member) into an AOTInductor .pt2 package",
        description=(
            "torch.export the committee graph (standardisation once, all members, their sum; dynamic batch) and "
            "compile it with AOTInductor into committee.<device>.pt2 in an export directory (made by "
            "`lsmha-export onnx`, or started here with --from). The package runs only on the torch build and "
            "CPU ISA / GPU it was compiled for; both are recorded in manifest.json and checked at load."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("directory", type=Path, help="export directory (holding manifest.json, or new with --from)")
    p.add_argument(
        "--from", dest="sources", nargs="+", default=None, metavar="SOURCE",
        help="start a new export directory from a committee.json, .safetensors files or model names",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device the package is compiled for")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS), help="members' arithmetic")
    p.add_argument("--members", action="store_true", help="one package per member instead of one for the committee")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, help="largest batch the package accepts")
    p.add_argument("--json", type=Path, default=None, help="also write the new manifest entries to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_cli)


def run_cli(args: Any) -> int:
    import sys

    from ..artifacts import MANIFEST
    from .cli import format_table, write_json

    has_manifest = (args.directory / MANIFEST).is_file()
    if args.sources and has_manifest:
        print(
            f"error: {args.directory} already holds {MANIFEST}; drop --from to add packages to it",
            file=sys.stderr,
        )
        return 2
    if not args.sources and not has_manifest:
        print(
            f"error: {args.directory} has no {MANIFEST}; export first (`lsmha-export onnx SOURCES -o "
            f"{args.directory}`) or start it here with --from SOURCES",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.max_batch <= MAX_BATCH:
        print(f"error: --max-batch must be in 1..{MAX_BATCH}, got {args.max_batch}", file=sys.stderr)
        return 2
    if args.sources:
        from .onnx_cli import load_members

        try:
            write_weights(load_members(args.sources), args.directory)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        entries = export_aoti_dir(
            args.directory, device=args.device, precision=args.precision, members=args.members,
            max_batch=args.max_batch, progress=not args.no_progress,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rows = [
        [e.path, e.extra["device"], e.extra.get("cpu_isa") or e.extra.get("compute_capability"), e.precision,
         e.scope, e.extra["compile_s"], (Path(args.directory) / e.path).stat().st_size >> 10, e.sha256[:12]]
        for e in entries
    ]  # fmt: skip
    print(format_table(["file", "device", "isa/cc", "precision", "scope", "compile s", "KiB", "sha256"], rows))
    print(f"torch {torch.__version__}; recorded in {Path(args.directory) / MANIFEST}")
    write_json(args.json, [e.to_dict() for e in entries])
    return 0
