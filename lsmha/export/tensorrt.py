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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..artifacts import COMMITTEE, FileEntry, file_entry
from ..cli_help import HelpFormatter
from .tensorrt_plan import (
    DEFAULT_PROFILE,
    FORMAT,
    INSTALL,
    PRECISIONS,
    TIMING_CACHE,
    BatchProfile,
    BuildRecipe,
    IOBuffers,
    IOTensor,
    PlanMismatch,
    TensorRTUnavailable,
    build_recipe,
    check_plan,
    concrete_shapes,
    cuda_capability,
    import_tensorrt,
    plan_name,
    torch_dtype,
)

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

    from ..artifacts import add_entries, read_manifest

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
        formatter_class=HelpFormatter,
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

    from ..artifacts import MANIFEST
    from .cli import format_table, write_json

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
