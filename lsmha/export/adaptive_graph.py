"""The calibrated adaptive committee as ONE ONNX graph (`adaptive.onnx`).

The exit rule (`lsmha.engine.adaptive`) written in ONNX operators, so one session runs a whole
adaptive decision: one thread pool, no return to Python between members. Per stage k >= 1:

    idx_k  = rows of idx_{k-1} whose partial-sum margin (top-1 minus top-2) is < tau_k
    if idx_k is not empty:                                     # an `If` node
        S[idx_k]    += member_{order[k]}(images[idx_k])          # gather, run, scatter-add
        runs[idx_k]  = k + 1

with S = member_{order[0]}(images), runs = 1 and idx_0 = every row to start. Members run in
the calibrated order on the rows still undecided only, so a batch gets cheaper as more of it
is easy, and a batch of one stops at the first confident stage. The thresholds and the order
are constants of the graph: it is written by `lsmha-export calibrate` from the member graphs
(`member<i>.onnx`, fp32) together with `adaptive.json`, and listed in the manifest with format
`adaptive-onnx` (`ADAPTIVE_GRAPH_FORMAT`), so the full-committee backends never take it for the committee graph.

Inputs: `images` float32 (N, C, H, W) raw pixels, as the member graphs. Outputs: `logits`
(N, classes) float32, each row the partial sum over the members that ran for it (its argmax
is the decision), and `members_run` (N,) int64.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..artifacts import ADAPTIVE_GRAPH, ADAPTIVE_GRAPH_FORMAT

INPUTS = ("images",)
OUTPUTS = ("logits", "members_run")


def _member_parts(model: Any, prefix: str, images: str) -> tuple[list[Any], list[Any], str]:
    """Member `model`'s nodes (reading `images`) and initializers, every name prefixed; and the
    name of its logits output."""
    import onnx
    from onnx import compose, helper

    model = compose.add_prefix(model, prefix)
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError(
            f"a member graph has one input and one output (logits), got {len(graph.input)}/{len(graph.output)}"
        )
    nodes = [helper.make_node("Identity", [images], [graph.input[0].name], name=f"{prefix}input")]
    nodes.extend(onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.node)
    return nodes, list(graph.initializer), graph.output[0].name


def adaptive_graph(members: Sequence[Any], order: Sequence[int], thresholds: Sequence[float]) -> Any:
    """The adaptive committee of `members` (ONNX member graphs, committee order) as one model.

    Args:
        members: each member's fp32 ONNX `ModelProto` (input `images`, output `logits`).
        order: member indices in the order they run.
        thresholds: tau_1..tau_{M-1} (inf: nobody leaves at that stage).

    Returns:
        An ONNX `ModelProto` with inputs `INPUTS` and outputs `OUTPUTS`.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if sorted(order) != list(range(len(members))) or len(thresholds) != len(members) - 1:
        raise ValueError(
            f"order {list(order)} and {len(thresholds)} thresholds do not fit a committee of {len(members)} members"
        )
    first = members[0]
    image_type = first.graph.input[0].type
    classes = first.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    opset = max(o.version for o in first.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 18:
        raise ValueError(f"the adaptive graph needs member graphs of opset >= 18, got {opset}")

    const = []

    def constant(name: str, value: Any) -> str:
        const.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    two = constant("adaptive/two", np.array([2], dtype=np.int64))
    top, second = (
        constant("adaptive/i0", np.array([0], dtype=np.int64)),
        constant("adaptive/i1", np.array([1], dtype=np.int64)),
    )
    zero = constant("adaptive/zero", np.array(0, dtype=np.int64))
    one = constant("adaptive/one", np.array(1, dtype=np.int64))
    axis1 = constant("adaptive/axis1", np.array([1], dtype=np.int64))

    ones = numpy_helper.from_array(np.ones(1, np.int64))
    nodes, inits, s0 = _member_parts(members[order[0]], f"m{order[0]}/", "images")
    nodes += [
        helper.make_node("Shape", ["images"], ["adaptive/shape"], start=0, end=1),
        helper.make_node("Squeeze", ["adaptive/shape"], ["adaptive/n"]),
        helper.make_node("Range", [zero, "adaptive/n", one], ["adaptive/idx0"]),
        helper.make_node("ConstantOfShape", ["adaptive/shape"], ["adaptive/runs0"], value=ones),
    ]  # fmt: skip
    sums, runs, idx = s0, "adaptive/runs0", "adaptive/idx0"
    for k in range(1, len(order)):
        member, p = order[k], f"adaptive/s{k}/"
        tau = constant(f"{p}tau", np.array(thresholds[k - 1], dtype=np.float32))
        stage_runs = constant(f"{p}stage", np.array(k + 1, dtype=np.int64))
        nodes += [  # idx_k: the rows of idx_{k-1} still undecided after stage k
            helper.make_node("Gather", [sums, idx], [f"{p}active"], axis=0),
            helper.make_node("TopK", [f"{p}active", two], [f"{p}top2", f"{p}top2i"], axis=1),
            helper.make_node("Gather", [f"{p}top2", top], [f"{p}t1"], axis=1),
            helper.make_node("Gather", [f"{p}top2", second], [f"{p}t2"], axis=1),
            helper.make_node("Sub", [f"{p}t1", f"{p}t2"], [f"{p}margin2d"]),
            helper.make_node("Squeeze", [f"{p}margin2d", axis1], [f"{p}margin"]),
            helper.make_node("Less", [f"{p}margin", tau], [f"{p}stay"]),
            helper.make_node("Compress", [idx, f"{p}stay"], [f"{p}idx"], axis=0),
            helper.make_node("Size", [f"{p}idx"], [f"{p}count"]),
            helper.make_node("Greater", [f"{p}count", zero], [f"{p}any"]),
        ]  # fmt: skip
        body, body_inits, logits = _member_parts(members[member], f"m{member}/", f"{p}x")
        inits += body_inits  # outer-scope initializers, read by the branch
        body = [
            helper.make_node("Gather", ["images", f"{p}idx"], [f"{p}x"], axis=0),
            *body,
            helper.make_node("Unsqueeze", [f"{p}idx", axis1], [f"{p}rows"]),
            helper.make_node("ScatterND", [sums, f"{p}rows", logits], [f"{p}sums_run"], reduction="add"),
            helper.make_node("Unsqueeze", [f"{p}count", top], [f"{p}count1d"]),
            helper.make_node("Expand", [stage_runs, f"{p}count1d"], [f"{p}stage_runs"]),
            helper.make_node("ScatterND", [runs, f"{p}rows", f"{p}stage_runs"], [f"{p}runs_run"]),
        ]
        then = helper.make_graph(
            body, f"stage{k}_run", [],
            [helper.make_tensor_value_info(f"{p}sums_run", TensorProto.FLOAT, None),
             helper.make_tensor_value_info(f"{p}runs_run", TensorProto.INT64, None)],
        )  # fmt: skip
        skip = helper.make_graph(
            [helper.make_node("Identity", [sums], [f"{p}sums_skip"]),
             helper.make_node("Identity", [runs], [f"{p}runs_skip"])],
            f"stage{k}_skip", [],
            [helper.make_tensor_value_info(f"{p}sums_skip", TensorProto.FLOAT, None),
             helper.make_tensor_value_info(f"{p}runs_skip", TensorProto.INT64, None)],
        )  # fmt: skip
        last = k == len(order) - 1
        out_sums, out_runs = ("logits", "members_run") if last else (f"{p}sums", f"{p}runs")
        nodes.append(helper.make_node("If", [f"{p}any"], [out_sums, out_runs], then_branch=then, else_branch=skip))
        sums, runs, idx = out_sums, out_runs, f"{p}idx"
    if len(order) == 1:
        nodes += [
            helper.make_node("Identity", [sums], ["logits"]),
            helper.make_node("Identity", [runs], ["members_run"]),
        ]
    batch = image_type.tensor_type.shape.dim[0].dim_param or "batch"
    graph = helper.make_graph(
        nodes, "lsmha_adaptive_committee", [onnx.ValueInfoProto.FromString(first.graph.input[0].SerializeToString())],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes]),
         helper.make_tensor_value_info("members_run", TensorProto.INT64, [batch])],
        initializer=inits + const,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=list(first.opset_import), producer_name="lsmha")
    model.ir_version = first.ir_version
    onnx.checker.check_model(model)
    return model


def write_adaptive_graph(directory: str | os.PathLike, calibration: Any) -> Path:
    """Build the adaptive graph of the export in `directory` from its fp32 member graphs
    (`member<i>.onnx`) and `calibration`'s order and thresholds, write `ADAPTIVE_GRAPH` (atomically)
    and list it, hashed, in the manifest with the order and thresholds it holds (an earlier
    one is replaced); the path written."""
    import onnx

    from ..artifacts import COMMITTEE, TensorInfo, add_entries, file_entry, read_manifest, write_bytes_atomic

    manifest = read_manifest(directory)
    paths = {e.scope: manifest.path_of(e) for e in manifest.find(format="onnx", precision="fp32")}
    missing = [i for i in range(len(manifest.specs)) if i not in paths]
    if missing:
        raise ValueError(
            f"{manifest.directory} lacks fp32 member graphs for members {missing}; run `lsmha-export calibrate`"
        )
    model = adaptive_graph(
        [onnx.load(str(paths[i])) for i in range(len(manifest.specs))], calibration.order, calibration.thresholds
    )
    path = write_bytes_atomic(Path(manifest.directory) / ADAPTIVE_GRAPH, model.SerializeToString())
    spec = manifest.specs[0]
    entry = file_entry(
        manifest.directory, ADAPTIVE_GRAPH, format=ADAPTIVE_GRAPH_FORMAT, precision="fp32", scope=COMMITTEE,
        inputs=[TensorInfo("images", "float32", ("batch", spec.in_chans, spec.img_size, spec.img_size))],
        outputs=[TensorInfo("logits", "float32", ("batch", spec.num_classes)),
                 TensorInfo("members_run", "int64", ("batch",))],
        opset=max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        order=list(calibration.order), thresholds=calibration.to_dict()["thresholds"],
    )  # fmt: skip
    add_entries(manifest.directory, [entry])
    return path
