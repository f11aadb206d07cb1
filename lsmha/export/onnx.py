"""ONNX export: a member or a whole committee as ONE opset-23 graph with fused `Attention`.

The graph (`lsmha.export.graphs`) takes raw pixels, float32 (N, C, H, W) with a dynamic
batch axis, and standardises each image inside the graph (shared by all members of a
committee graph, since every member standardises identically). Attention is the ONNX
`Attention` operator (opset 23), which `_sdpa_to_attention` writes for
`F.scaled_dot_product_attention` on every torch from 2.6 (head sizes padded to a
multiple of 8 stay padded inside it, with the true scale). Files are self-contained (no
external data) and carry the member specs in `metadata_props`.

Outputs: a member graph gives `logits` (N, classes); a committee graph gives
`logits` (the sum of raw logits, N x classes) and `member_logits` (M, N, classes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import COMMITTEE, ExportManifest, FileEntry, add_entries, file_entry
from ..models import CCT, CCTSpec
from ..models.spec import check_compatible
from .directory import remove_temporaries, write_weights
from .graphs import INPUT, graph_for, io_tensors, output_names

OPSET = 23
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "int8": None}  # int8: see quantize_int8


def op_counts(path_or_model: str | os.PathLike | Any) -> Counter:
    """Operator type -> count over the graph (and its functions/subgraphs' top level)."""
    import onnx

    model = onnx.load(str(path_or_model)) if isinstance(path_or_model, (str, os.PathLike)) else path_or_model
    counts = Counter(n.op_type for n in model.graph.node)
    for fn in model.functions:
        counts.update(n.op_type for n in fn.node)
    return counts


def _versions() -> dict[str, str]:
    import onnx

    versions = {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return versions


def _sdpa_to_attention(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Any:
    """`aten.scaled_dot_product_attention` as ONE opset-23 `Attention` node (4-D Q, K, V).

    torch >= 2.9 with onnxscript >= 0.5 emits the same node by itself; older exporters
    (torch 2.6 to 2.8) decompose attention into MatMul/Softmax unless given this
    translation. Traced by the exporter, so the checks below run at export time."""
    from onnxscript.onnx_opset import opset23 as op  # onnxscript >= 0.4

    if dropout_p:
        raise ValueError(f"attention dropout {dropout_p} in an exported graph: export the model in eval mode")
    if enable_gqa:
        raise ValueError("grouped-query attention (enable_gqa=True) is not exported by lsmha")
    # the node has four outputs (Y, present key and value, QK products); only Y is used
    y, _, _, _ = op.Attention(query, key, value, attn_mask=attn_mask, scale=scale, is_causal=is_causal)
    return y


@contextlib.contextmanager
def _exporter_needs() -> Iterator[None]:
    """Turn "torch's exporter cannot find its onnxscript API module" into what to install."""
    try:
        yield
    except ModuleNotFoundError as err:
        if "onnxscript" not in str(err):
            raise
        import onnxscript

        raise RuntimeError(
            f"torch {torch.__version__}'s ONNX exporter needs a newer onnxscript than {onnxscript.__version__} "
            f"({err}): pip install -U onnxscript"
        ) from err


def export_graph(
    module: nn.Module,
    path: str | os.PathLike,
    specs: Sequence[CCTSpec],
    output_names: list[str],
    scope: str | int,
    precision: str,
    opset: int = OPSET,
) -> Path:
    """Export `module` (raw float32 images -> outputs) to one self-contained ONNX file
    with a dynamic batch axis, fused Attention checked, specs in the metadata."""
    import onnx

    spec = specs[0]
    example = torch.rand(2, spec.in_chans, spec.img_size, spec.img_size) * 255
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), _exporter_needs():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT],
            output_names=output_names,
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=1 << 16)}},
            external_data=False,
            verbose=False,
            optimize=True,  # the default from torch 2.9; torch 2.6 to 2.8 default to False
            custom_translation_table={torch.ops.aten.scaled_dot_product_attention.default: _sdpa_to_attention},
        )
    proto = program.model_proto
    counts = op_counts(proto)
    blocks = sum(s.n_blocks for s in specs)
    if counts.get("Attention", 0) != blocks:
        raise RuntimeError(
            f"expected {blocks} fused ONNX Attention nodes at opset {opset}, the exporter wrote "
            f"{counts.get('Attention', 0)} ({dict(counts)})"
        )
    meta = {
        "lsmha.format": "lsmha-onnx-1",
        "lsmha.members": json.dumps([s.to_dict() for s in specs]),
        "lsmha.scope": str(scope),
        "lsmha.precision": precision,
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "lsmha"
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    os.replace(tmp, path)
    return path


def _filename(stem: str, precision: str) -> str:
    return f"{stem}.onnx" if precision == "fp32" else f"{stem}.{precision}.onnx"


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ORT dynamic int8 quantisation of an fp32 graph's MatMul/Gemm weights (opt-in:
    lower precision, its own parity). Attention stays float: ORT would map the opset-23
    `Attention` to `QAttention`, which rejects its attributes.

    Weights are quantised per output channel to 7 bits (`reduce_range`). The 7 bits
    matter: on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) ORT's u8 x s8
    kernel adds pairs of products in int16 (`vpmaddubsw`), and 255 x 127 x 2
    overflows it, so full-range weights give saturated, wrong sums. On the trained
    digits committee `lsmha-export verify` measured relative logit error 0.117 for the
    8-bit per-tensor variant and 0.012 for this one, at the same speed on a 2-core AVX2
    machine (docs/export.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    # The quantizer re-infers shapes; the exporter's optional value_info (weights' shapes among them)
    # can contradict the graph it rewrites: onnxruntime 1.30 fails with "Inferred shape and existing
    # shape differ" on a transposed classifier weight. Give it the graph without them.
    plain = onnx.load(str(src))
    del plain.graph.value_info[:]
    source = dst.with_name(dst.name + ".src.tmp")
    onnx.save_model(plain, str(source), save_as_external_data=False)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a "consider pre-processing" advice on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(source), str(tmp), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                per_channel=True, reduce_range=True,
            )  # fmt: skip
    finally:
        root.setLevel(level)
        source.unlink(missing_ok=True)
    proto = onnx.load(str(tmp))
    for prop in proto.metadata_props:
        if prop.key == "lsmha.precision":
            prop.value = "int8"
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    os.replace(tmp, dst)
    return dst


def export_scope_onnx(
    models: Sequence[CCT], directory: str | os.PathLike, scope: str | int = COMMITTEE, precision: str = "fp32"
) -> FileEntry:
    """One graph of `scope` ("committee": `committee[.<precision>].onnx`, all members and their sum;
    member i: `member<i>[.<precision>].onnx`) under `directory`; its manifest entry (not yet written)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    directory = Path(directory)
    graph = lambda dtype: graph_for(models, scope, dtype)  # noqa: E731 - built afresh per precision
    _, specs = graph(torch.float32)
    stem = COMMITTEE if scope == COMMITTEE else f"member{scope}"
    path = directory / _filename(stem, precision)
    names = output_names(scope)
    if precision == "int8":  # quantised from the fp32 graph, exported afresh beside it
        fp32 = export_graph(graph(torch.float32)[0], path.with_suffix(".fp32.tmp"), specs, names, scope, "fp32")
        quantize_int8(fp32, path)
        fp32.unlink()
    else:
        export_graph(graph(PRECISIONS[precision])[0], path, specs, names, scope, precision)
    inputs, outputs = io_tensors(specs, scope)
    return file_entry(
        directory, path, format="onnx", precision=precision, scope=scope,
        inputs=inputs, outputs=outputs, opset=OPSET, versions=_versions(),
    )  # fmt: skip


def export_onnx(
    models: Sequence[CCT],
    directory: str | os.PathLike,
    precisions: Sequence[str] = ("fp32",),
    per_member: bool = False,
    progress: bool = False,
    force: bool = False,
) -> ExportManifest:
    """Export a committee into `directory`: its weights (`member<i>.safetensors`, so the
    torch backend and `verify` can load the directory alone), the committee graph in
    each precision, optionally one graph per member, and `manifest.json` listing them.

    Args:
        models: the members (a committee of one is a single model).
        directory: created if missing; must be empty unless `force` (an earlier export's
            manifest would otherwise be replaced, its other files left unlisted).
        precisions: among "fp32", "fp16", "int8" (fp16 and int8 are opt-in variants).
        per_member: also write `member<i>[.<precision>].onnx`.
        progress: show a tqdm bar.
        force: delete an earlier export's files in `directory` first.
    """
    from tqdm import tqdm

    models = list(models)
    for p in precisions:  # before anything is written
        if p not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {p!r}")
    check_compatible([m.spec for m in models])
    manifest = write_weights(models, directory, force, complete=False)
    scopes: list[str | int] = [COMMITTEE] + (list(range(len(models))) if per_member else [])
    jobs = [(scope, p) for p in precisions for scope in scopes]
    entries = []
    try:
        for scope, p in tqdm(jobs, desc="export", disable=not progress):
            if progress:
                tqdm.write(f"writing {'committee' if scope == COMMITTEE else f'member{scope}'} {p}")
            entries.append(export_scope_onnx(models, manifest.directory, scope, p))
        return add_entries(manifest.directory, entries)
    except BaseException:
        remove_temporaries(manifest.directory)  # the manifest still says incomplete: refused at load
        raise
