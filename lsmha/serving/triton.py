"""A Triton Inference Server model repository from an export directory (its command line:
`lsmha-export triton`, lsmha/export/triton_cli.py).

    REPO/
      lsmha_committee/
        config.pbtxt          platform, max_batch_size, input/output dims, dynamic_batching, instance_group
        1/model.onnx          (or 1/model.plan when the export holds a TensorRT committee plan)
      lsmha_committee_pixels/ the same committee for UINT8 NHWC images (an ensemble: triton_pixels.py)
      lsmha_committee_to_nchw/

The committee is ONE model: the export's whole-committee graph, which takes `images`
FP32 NCHW. Triton wants the batch axis first in every tensor of a batching model, so an
output whose batch axis is elsewhere (the ONNX graph's `member_logits`, (M, N, classes)) is
moved there in the copied ONNX graph by one `Transpose` node (served as (N, M, classes),
like `lsmha-serve`), and `label` (INT64, the argmax of `logits`) is added by one `ArgMax`
node, so the outputs are lsmha-serve's. A TensorRT plan cannot be edited, so its config has
neither. Triton then loads the repository unchanged:

    docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/REPO:/models \\
        nvcr.io/nvidia/tritonserver:<ver>-py3 tritonserver --model-repository=/models
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import COMMITTEE, FileEntry, TensorInfo, read_manifest
from .triton_pixels import write_pixels_models

DEFAULT_NAME = "lsmha_committee"
PLATFORMS = {"plan": ("tensorrt_plan", "model.plan"), "onnx": ("onnxruntime_onnx", "model.onnx")}
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}  # fmt: skip
KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}


@dataclass(frozen=True)
class TritonTensor:
    """A tensor as Triton sees it: dims without the batch axis (-1 for other dynamic axes)."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape_scalar: bool = False  # (N,) in the model: dims [1] reshaped to [], Triton's way to batch it


def _batch_first(info: TensorInfo) -> TritonTensor:
    if info.dtype not in TRITON_TYPES:
        raise ValueError(f"tensor {info.name!r}: no Triton type for dtype {info.dtype!r}; known {sorted(TRITON_TYPES)}")
    if info.shape[:1] != ("batch",):
        raise ValueError(f"tensor {info.name!r} has shape {list(info.shape)}: expected the batch axis first")
    dims = tuple(d if isinstance(d, int) else -1 for d in info.shape[1:])
    return TritonTensor(info.name, TRITON_TYPES[info.dtype], dims)


def pick_committee_file(entries: list[FileEntry], precision: str | None = None) -> FileEntry:
    """The whole-committee file Triton should serve: a TensorRT plan when one exists,
    else the ONNX graph; fp32 first unless `precision` says otherwise."""
    for fmt in PLATFORMS:
        found = [e for e in entries if e.format == fmt and e.scope == COMMITTEE]
        if precision is not None:
            found = [e for e in found if e.precision == precision]
        if found:
            return sorted(found, key=lambda e: e.precision != "fp32")[0]
    have = sorted({(e.format, e.precision, str(e.scope)) for e in entries})
    raise ValueError(
        f"the export holds no whole-committee ONNX graph or TensorRT plan"
        f"{'' if precision is None else f' in {precision}'} (have: {have}); run `lsmha-export onnx` first"
    )


def _move_batch_first_onnx(src: Path, dst: Path, outputs: list[TensorInfo]) -> None:
    """Copy the ONNX graph, adding one Transpose per output whose batch axis is not first."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    for info in outputs:
        axis = list(info.shape).index("batch")
        perm = [axis] + [i for i in range(len(info.shape)) if i != axis]
        inner = f"{info.name}__as_exported"
        for node in graph.node:
            node.output[:] = [inner if o == info.name else o for o in node.output]
        graph.node.append(
            helper.make_node("Transpose", [inner], [info.name], perm=perm, name=f"{info.name}__batch_first")
        )
        (out,) = [o for o in graph.output if o.name == info.name]
        dims = list(out.type.tensor_type.shape.dim)
        permuted = [type(dims[0])() for _ in perm]
        for new, old in zip(permuted, perm):
            new.CopyFrom(dims[old])
        del out.type.tensor_type.shape.dim[:]
        out.type.tensor_type.shape.dim.extend(permuted)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def config_pbtxt(
    name: str,
    platform: str,
    max_batch: int,
    inputs: list[TritonTensor],
    outputs: list[TritonTensor],
    max_delay_us: int,
    instances: int,
    kind: str,
) -> str:
    """The `config.pbtxt` text (protobuf text format of Triton's `inference.ModelConfig`)."""

    def tensor(t: TritonTensor) -> str:
        dims = ", ".join(map(str, t.dims))
        reshape = "\n    reshape: { shape: [ ] }" if t.reshape_scalar else ""
        return f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {dims} ]{reshape}\n  }}'

    preferred = sorted({b for b in (max_batch // 4, max_batch // 2, max_batch) if b >= 1})
    return "\n".join(
        [
            f'name: "{name}"',
            f'platform: "{platform}"',
            f"max_batch_size: {max_batch}",
            "input [\n" + ",\n".join(map(tensor, inputs)) + "\n]",
            "output [\n" + ",\n".join(map(tensor, outputs)) + "\n]",
            "dynamic_batching {",
            f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
            f"  max_queue_delay_microseconds: {max_delay_us}",
            "}",
            "instance_group [\n  {\n" + f"    count: {instances}\n    kind: {kind}\n" + "  }\n]",
            "",
        ]
    )


def write_triton_repository(
    export_dir: str | Path,
    out: str | Path,
    *,
    name: str = DEFAULT_NAME,
    max_batch: int = 64,
    max_delay_us: int = 500,
    instances: int = 1,
    kind: str = "auto",
    precision: str | None = None,
) -> Path:
    """Write a Triton model repository for the committee of `export_dir` into `out`.

    Args:
        export_dir: an export directory (hashes are verified).
        out: the repository root; `out/<name>/` is replaced if it exists.
        name: the model name (the directory and `name:` in config.pbtxt).
        max_batch: Triton's `max_batch_size` (capped by a plan's batch profile maximum,
            `extra["profile"]["max"]` in its manifest entry).
        max_delay_us: dynamic batching's `max_queue_delay_microseconds`.
        instances: model instances per device (`instance_group.count`).
        kind: "auto", "gpu" or "cpu" (a TensorRT plan always runs on the GPU).
        precision: pick the committee file of this precision (default: fp32 when present).

    Returns:
        The model directory `out/<name>`.
    """
    if max_batch < 1 or instances < 1 or max_delay_us < 0:
        raise ValueError(
            f"expected max_batch >= 1, instances >= 1, max_delay_us >= 0; got {max_batch}, {instances}, {max_delay_us}"
        )
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"model name must be a plain directory name, got {name!r}")
    manifest = read_manifest(export_dir)
    entry = pick_committee_file(manifest.files, precision)
    platform, filename = PLATFORMS[entry.format]
    if entry.format == "plan":
        kind = "gpu"
        profile = entry.extra.get("profile")  # {"min", "opt", "max"} from `lsmha-export tensorrt`
        if profile:
            if int(profile["min"]) > 1:
                raise ValueError(
                    f"{entry.path} was built for batches {profile['min']}..{profile['max']}; Triton sends batches "
                    f"from 1 up: rebuild it with `lsmha-export tensorrt --profile 1,OPT,MAX`"
                )
            max_batch = min(max_batch, int(profile["max"]))
    inputs = [_batch_first(t) for t in entry.inputs]
    elsewhere = [t for t in entry.outputs if t.shape[:1] != ("batch",) and "batch" in t.shape]
    served = [t for t in entry.outputs if t not in elsewhere or entry.format == "onnx"]
    outputs = [
        _batch_first(t if t not in elsewhere else TensorInfo(t.name, t.dtype, _permuted(t.shape))) for t in served
    ]
    if not inputs or not outputs:
        raise ValueError(f"{entry.path}: the manifest lists no inputs/outputs for it; re-export it")
    model_dir = Path(out) / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    src = manifest.path_of(entry)
    if entry.format == "onnx" and elsewhere:
        _move_batch_first_onnx(src, model_dir / "1" / filename, elsewhere)
    else:
        shutil.copyfile(src, model_dir / "1" / filename)
    if entry.format == "onnx" and "label" not in {t.name for t in outputs}:
        _add_label_onnx(model_dir / "1" / filename)
        outputs.append(TritonTensor("label", "TYPE_INT64", (1,), reshape_scalar=True))
    text = config_pbtxt(name, platform, max_batch, inputs, outputs, max_delay_us, instances, KINDS[kind])
    (model_dir / "config.pbtxt").write_text(text)
    (images,) = inputs  # FP32 NCHW: (C, H, W)
    write_pixels_models(Path(out), name, max_batch, images.dims[1], images.dims[0], outputs)
    return model_dir


def _add_label_onnx(path: Path) -> None:
    """Add the output `label`, ArgMax of `logits` over classes (INT64 (N,)), to the graph at `path`."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0, name="label"))
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _permuted(shape: tuple[int | str, ...]) -> tuple[int | str, ...]:
    axis = list(shape).index("batch")
    return (shape[axis], *shape[:axis], *shape[axis + 1 :])
