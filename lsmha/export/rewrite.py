"""Graph rewrite: 4-D `Attention` with its layout plumbing -> 3-D `Attention`.

The exporter writes each block's attention as
    qkv (B, N, 3D) -> Reshape (B, N, 3, H, hd) -> Transpose -> 3 x Slice/Squeeze -> q, k, v (B, H, N, hd)
    -> Attention -> Transpose (B, N, H, hd) -> Reshape (B, N, D)
ONNX `Attention` (opset 23) also takes 3-D q, k, v (B, N, H*hd) with `q_num_heads`
/ `kv_num_heads`, so the same block becomes
    qkv -> Split (3 x (B, N, D)) -> Attention -> (B, N, D)
which drops 8 layout nodes per block (and their copies) while computing exactly
the same thing. Blocks with zero-padded heads (Pad/Slice around Attention) are
left as exported.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper, numpy_helper


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def attention_to_3d(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every matching block (see module docstring); returns (model, blocks rewritten)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: t for t in graph.initializer}
    shapes = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]

    def only_consumer(name: str, op: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    rewritten, drop, add_after = 0, set(), {}
    for att in [n for n in graph.node if n.op_type == "Attention"]:
        if len(att.input) != 3 or len(att.output) != 1:
            continue
        squeezes = [producer.get(i) for i in att.input]
        if not all(s is not None and s.op_type == "Squeeze" for s in squeezes):
            continue
        slices = [producer.get(s.input[0]) for s in squeezes]
        if not all(s is not None and s.op_type == "Slice" for s in slices):
            continue
        transpose = producer.get(slices[0].input[0])
        if transpose is None or transpose.op_type != "Transpose" or _attrs(transpose).get("perm") != [2, 0, 3, 1, 4]:
            continue
        if any(s.input[0] != transpose.output[0] for s in slices) or len(consumers[transpose.output[0]]) != 3:
            continue
        reshape_in = producer.get(transpose.input[0])
        if reshape_in is None or reshape_in.op_type != "Reshape" or len(consumers[reshape_in.output[0]]) != 1:
            continue
        starts = [inits.get(s.input[1]) for s in slices]
        if any(t is None for t in starts) or [int(numpy_helper.to_array(t).ravel()[0]) for t in starts] != [0, 1, 2]:
            continue
        out_t = only_consumer(att.output[0], "Transpose")
        if out_t is None or _attrs(out_t).get("perm") != [0, 2, 1, 3]:
            continue
        out_r = only_consumer(out_t.output[0], "Reshape")
        q_shape = shapes.get(squeezes[0].output[0])
        if out_r is None or not q_shape or len(q_shape) != 4 or None in q_shape[1:]:
            continue
        heads = q_shape[1]
        qkv = reshape_in.input[0]
        names = [f"{att.output[0]}_{c}3d" for c in "qkv"]
        split = helper.make_node(
            "Split", [qkv], names, axis=-1, num_outputs=3, name=f"{att.name or att.output[0]}_split"
        )
        attrs = {k: v for k, v in _attrs(att).items() if k not in ("q_num_heads", "kv_num_heads")}
        new_att = helper.make_node(
            "Attention", names, [out_r.output[0]], name=f"{att.name or att.output[0]}_3d",
            q_num_heads=heads, kv_num_heads=heads, **attrs,
        )  # fmt: skip
        drop.update(id(n) for n in [reshape_in, transpose, *slices, *squeezes, att, out_t, out_r])
        add_after[id(att)] = [split, new_att]
        rewritten += 1
    if rewritten:
        nodes = []
        for n in graph.node:
            if id(n) in add_after:
                nodes += add_after[id(n)]
            if id(n) not in drop:
                nodes.append(n)
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unused_initializers(graph)
    return model, rewritten


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
