"""TensorRT: a plan (serialised engine) built from the committee's ONNX graph, or from a member's.

The committee graph becomes ONE engine: all members and their sum, their
independent branches free to run on TensorRT's auxiliary streams. The batch axis
is dynamic within one optimisation profile (min/opt/max, `--profile 1,1,256`);
the plan runs with `execute_async_v3` on torch CUDA buffers, allocated once at the
profile's max batch and viewed at each call's batch (`IOBuffers`).

Precision, by TensorRT major version (`build_recipe`):
- 11.x networks are always strongly typed: the precision is the ONNX file's types,
  so an fp16 plan is built from `committee.fp16.onnx` (`lsmha-export onnx --precision fp16`);
- 10.x builds the fp32 ONNX with the builder flags FP16 / BF16 (weak typing), or a
  strongly typed network from the ONNX of that precision when only that one exists.
fp32 plans clear TF32 so they meet the fp32 parity tolerance.

A plan runs only on the TensorRT version and GPU compute capability that built it:
both are recorded in the manifest entry and checked at load (`check_plan`), refusing
a mismatch with the `lsmha-export tensorrt` command that rebuilds it. The timing
cache (`tensorrt.timing.cache` in the export directory by default) is loaded and
written back on each build, so rebuilds and member plans reuse measured tactics.

TensorRT is imported only inside the functions that need it; without it they raise
`TensorRTUnavailable` naming the package to install.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manifest import COMMITTEE, FileEntry, file_entry

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


# -- build --------------------------------------------------------------------------------------


def build_plan(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    *,
    recipe: BuildRecipe,
    profile: BatchProfile = DEFAULT_PROFILE,
    timing_cache: str | os.PathLike | None = None,
    workspace_mib: int | None = None,
    aux_streams: int | None = None,
) -> dict[str, Any]:
    """Parse `onnx_path`, build a plan with `recipe` and `profile`, write it to `plan_path`.

    Args:
        recipe: from `build_recipe` (strong typing / builder flags by TensorRT version).
        profile: batch range of the input `images`.
        timing_cache: file to load tactics from (if present) and write back after the build.
        workspace_mib: builder workspace limit (None: TensorRT's default, the device memory).
        aux_streams: most auxiliary streams the engine may use (None: TensorRT decides).

    Returns:
        Build facts: tensorrt version, compute capability, gpu, build_s, timing_cache_reused.
    """
    import torch

    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("building a TensorRT plan needs a CUDA device; torch sees none")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if recipe.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # implied (and ignored) in 11.x
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    for name in recipe.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if recipe.clear_tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if aux_streams is not None:
        config.max_aux_streams = int(aux_streams)
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        tail = tuple(tensor.shape)[1:]
        if any(d < 0 for d in tail):
            raise RuntimeError(f"input {tensor.name} has dynamic non-batch axes {tuple(tensor.shape)}")
        opt_profile.set_shape(tensor.name, *profile.shapes(tail))
    config.add_optimization_profile(opt_profile)
    cache_path = Path(timing_cache) if timing_cache else None
    reused = bool(cache_path and cache_path.is_file())
    cache = config.create_timing_cache(cache_path.read_bytes() if reused else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if serialized is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build a plan from {onnx_path} (see its log above)")
    plan_path = Path(plan_path)
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, plan_path)
    if cache_path is not None:
        tmp = cache_path.with_name(cache_path.name + ".tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(tmp, cache_path)
    return {
        "tensorrt": trt.__version__,
        "compute_capability": cuda_capability(torch.cuda.current_device()),
        "gpu": torch.cuda.get_device_name(),
        "build_s": round(build_s, 2),
        "timing_cache_reused": reused,
    }


def export_tensorrt_dir(
    directory: str | os.PathLike,
    *,
    precision: str = "fp16",
    profile: BatchProfile = DEFAULT_PROFILE,
    members: bool = False,
    timing_cache: str | os.PathLike | None = None,
    workspace_mib: int | None = None,
    aux_streams: int | None = None,
    progress: bool = False,
) -> list[FileEntry]:
    """Build plans from an export directory's ONNX files and record them in its manifest.

    Args:
        directory: made by `lsmha-export onnx` (the committee graph; per-member graphs for `members`).
        precision: "fp16" (default), "bf16" (TensorRT 10 only) or "fp32".
        profile: the batch range.
        members: one plan per member (from `member<i>[.fp16].onnx`) instead of the committee plan.
        timing_cache: default `<directory>/tensorrt.timing.cache`.
        workspace_mib, aux_streams: as in `build_plan`.
        progress: show a tqdm bar and each plan's build time.
    """
    from tqdm import tqdm

    from .manifest import add_entries, read_manifest

    trt = import_tensorrt()
    manifest = read_manifest(directory)
    scopes: list[str | int] = list(range(len(manifest.specs))) if members else [COMMITTEE]
    cache = Path(timing_cache) if timing_cache else Path(manifest.directory) / TIMING_CACHE
    entries = []
    for scope in tqdm(scopes, desc="tensorrt", disable=not progress):
        onnx_files = {e.precision: e for e in manifest.find(format="onnx", scope=scope)}
        recipe = build_recipe(trt.__version__, precision, onnx_files)
        source = onnx_files[recipe.onnx_precision]
        plan = Path(manifest.directory) / plan_name(scope, precision)
        facts = build_plan(
            manifest.path_of(source), plan, recipe=recipe, profile=profile, timing_cache=cache,
            workspace_mib=workspace_mib, aux_streams=aux_streams,
        )  # fmt: skip
        if progress:
            tqdm.write(f"{plan.name}: built in {facts['build_s']:.1f} s")
        entries.append(
            file_entry(
                manifest.directory,
                plan,
                format=FORMAT,
                precision=precision,
                scope=scope,
                inputs=source.inputs,
                outputs=source.outputs,
                versions={"tensorrt": facts["tensorrt"]},
                profile=profile.to_dict(),
                compute_capability=facts["compute_capability"],
                gpu=facts["gpu"],
                onnx=source.path,
                strongly_typed=recipe.strongly_typed,
                flags=list(recipe.flags),
                build_s=facts["build_s"],
                timing_cache_reused=facts["timing_cache_reused"],
            )  # fmt: skip
        )
    add_entries(manifest.directory, entries)
    return entries


# -- runtime ------------------------------------------------------------------------------------


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
    """For `lsmha.export.verify`: float32 NCHW numpy -> output name -> numpy. Raises
    `BackendUnavailable` when TensorRT or a GPU is missing, or the plan is for another one."""
    import numpy as np
    import torch

    from ..engine.backends import BackendUnavailable

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


# -- CLI ------------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """`lsmha-export tensorrt` (see `lsmha.export.cli`)."""
    import argparse

    p = sub.add_parser(
        "tensorrt",
        help="build a TensorRT plan from the exported committee ONNX (or one per member)",
        description=(
            "Build a TensorRT plan in an export directory (made by `lsmha-export onnx`): the committee graph as "
            "ONE engine, a dynamic batch within --profile, precision from the ONNX types on TensorRT 11 "
            "(export --precision fp16 first) or builder flags on TensorRT 10, the timing cache reused. The plan's "
            f"TensorRT version and GPU compute capability go into manifest.json and are checked at load. "
            f"Needs a CUDA GPU and TensorRT: {INSTALL}."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("directory", type=Path, help="export directory (holding manifest.json and the ONNX files)")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS, help="plan precision")
    p.add_argument(
        "--profile", default=DEFAULT_PROFILE.to_text(),
        help="batch range min,opt,max (kernels tuned for opt), or one batch size",
    )  # fmt: skip
    p.add_argument("--members", action="store_true", help="one plan per member instead of the committee plan")
    p.add_argument("--timing-cache", type=Path, default=None, help=f"timing cache file (default: DIR/{TIMING_CACHE})")
    p.add_argument("--workspace-mib", type=int, default=None, help="builder workspace limit (default: TensorRT's)")
    p.add_argument("--aux-streams", type=int, default=None, help="max auxiliary streams (default: TensorRT decides)")
    p.add_argument("--json", type=Path, default=None, help="also write the new manifest entries to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_cli)


def run_cli(args: Any) -> int:
    import sys

    from .cli import format_table, write_json
    from .manifest import MANIFEST

    try:
        profile = BatchProfile.parse(args.profile)
    except ValueError as err:
        print(f"error: --profile: {err}", file=sys.stderr)
        return 2
    for flag, value in (("--workspace-mib", args.workspace_mib), ("--aux-streams", args.aux_streams)):
        if value is not None and value < 0:
            print(f"error: {flag} must be >= 0, got {value}", file=sys.stderr)
            return 2
    if not (args.directory / MANIFEST).is_file():
        print(
            f"error: {args.directory} has no {MANIFEST}; run `lsmha-export onnx SOURCES -o {args.directory}`",
            file=sys.stderr,
        )
        return 2
    try:
        entries = export_tensorrt_dir(
            args.directory, precision=args.precision, profile=profile, members=args.members,
            timing_cache=args.timing_cache, workspace_mib=args.workspace_mib, aux_streams=args.aux_streams,
            progress=not args.no_progress,
        )  # fmt: skip
    except (TensorRTUnavailable, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rows = [
        [e.path, e.precision, e.scope, BatchProfile.from_dict(e.extra["profile"]).to_text(), e.versions["tensorrt"],
         e.extra["compute_capability"], e.extra["build_s"], "yes" if e.extra["timing_cache_reused"] else "no",
         e.sha256[:12]]
        for e in entries
    ]  # fmt: skip
    headers = ["file", "precision", "scope", "profile", "tensorrt", "cc", "build s", "cache reused", "sha256"]
    print(format_table(headers, rows))
    write_json(args.json, [e.to_dict() for e in entries])
    return 0
