"""TensorRT: a plan (serialised engine) built from the committee's ONNX graph, or from a member's.

The committee graph becomes ONE engine: all members and their sum, their
independent branches free to run on TensorRT's auxiliary streams. The batch axis
is dynamic within one optimisation profile (min/opt/max, `--profile 1,1,256`).

Precision, by TensorRT major version (`build_recipe`):
- 11.x networks are always strongly typed: the precision is the ONNX file's types,
  so an fp16 plan is built from `committee.fp16.onnx` (`lsmha-export onnx --precision fp16`);
- 10.x builds the fp32 ONNX with the builder flags FP16 / BF16 (weak typing), or a
  strongly typed network from the ONNX of that precision when only that one exists.
fp32 plans clear TF32 so they meet the fp32 parity tolerance.

A plan runs only on the TensorRT version and GPU compute capability that built it:
both are recorded in the manifest entry and checked when the engine loads it
(`lsmha.engine.backends.tensorrt_runtime`). The timing cache (`tensorrt.timing.cache`
in the export directory by default) is loaded and written back on each build, so
rebuilds and member plans reuse measured tactics.

TensorRT is imported only inside the functions that need it; without it they raise
`TensorRTUnavailable` naming the package to install. The build recipe and plan names
need no TensorRT and are tested everywhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import COMMITTEE, FileEntry, add_entries, file_entry, read_manifest
from ..artifacts.compiled import (
    DEFAULT_PROFILE,
    PLAN,
    TENSORRT_INSTALL,
    BatchProfile,
    TensorRTUnavailable,
    cuda_capability,
    import_tensorrt,
)

PRECISIONS = ("fp32", "fp16", "bf16")
TIMING_CACHE = "tensorrt.timing.cache"


def major_version(version: str) -> int:
    """10 for "10.13.0.35"; ValueError for anything that does not start with a number."""
    head = str(version).split(".")[0]
    if not head.isdigit():
        raise ValueError(f"expected a TensorRT version like '10.13.0', got {version!r}")
    return int(head)


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
        raise ValueError(
            f"TensorRT {trt_version} is too old: lsmha builds plans with TensorRT 10 or 11 ({TENSORRT_INSTALL})"
        )
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


def keep_standardisation_f32(network: Any, trt: Any) -> int:
    """Constrain the layers before the first convolution (the per-image standardisation: mean,
    centring, std, division) to run and write float32, for a weakly typed build whose FP16 / BF16
    flags would otherwise let TensorRT lower them: raw pixels far from zero (+10,000) lose their
    detail in fp16 or bf16 before their mean is subtracted. Constant layers are left free.
    Returns how many layers were constrained."""
    kept = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.CONVOLUTION:
            break
        if layer.type == trt.LayerType.CONSTANT:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        kept += 1
    return kept


def plan_name(scope: str | int, precision: str) -> str:
    """`committee.fp16.plan`, `member0.fp32.plan`, ..."""
    stem = COMMITTEE if scope == COMMITTEE else f"member{scope}"
    return f"{stem}.{precision}.plan"


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
    if recipe.flags and keep_standardisation_f32(network, trt):
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
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
                format=PLAN,
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
