"""A graph rewrite applied when onnxruntime loads an exported graph: 4-D `Attention` with its
layout plumbing -> 3-D `Attention`, as an onnxscript rewriter rule.

The exporter writes each block's attention as
    qkv (B, N, 3D) -> Reshape (B, N, 3, H, hd) -> Transpose -> 3 x Slice/Squeeze -> q, k, v (B, H, N, hd)
    -> Attention -> Transpose (B, N, H, hd) -> Reshape (B, N, D)
ONNX `Attention` (opset 23) also takes 3-D q, k, v (B, N, H*hd) with `q_num_heads` /
`kv_num_heads`, so the same block becomes
    qkv -> Split (3 x (B, N, D)) -> Attention -> (B, N, D)
which drops 8 layout nodes per block (and their copies) while computing exactly the same
thing. Blocks with zero-padded heads (Pad/Slice around Attention) do not match and stay as
exported. The file on disk, whose hash the manifest holds, is never changed.
"""

from __future__ import annotations

from typing import Any

from onnxscript.rewriter import pattern


def _ints(value: Any) -> list[int] | None:
    """The integers of a constant value (initializer or Constant), None when not constant."""
    const = value.const_value if value is not None else None
    return None if const is None else [int(v) for v in const.numpy().reshape(-1)]


class AttentionTo3D(pattern.RewriteRuleClassBase):
    """One block's 4-D attention and its Reshape/Transpose/Slice/Squeeze plumbing -> Split + 3-D Attention."""

    def pattern(self, op, qkv, qkv_shape, out_shape, s0, e0, s1, e1, s2, e2, axis0, axis1, axis2, sq0, sq1, sq2):
        heads = op.Transpose(op.Reshape(qkv, qkv_shape, _outputs=["split_heads"]), perm=[2, 0, 3, 1, 4])
        q = op.Squeeze(op.Slice(heads, s0, e0, axis0), sq0)
        k = op.Squeeze(op.Slice(heads, s1, e1, axis1), sq1)
        v = op.Squeeze(op.Slice(heads, s2, e2, axis2), sq2)
        y = op.Attention(q, k, v, _outputs=["attention"])  # (B, H, N, hd)
        return op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), out_shape)  # (B, N, D)

    def check(self, context, qkv_shape, s0, e0, s1, e1, s2, e2, **bindings) -> pattern.MatchResult:
        result = pattern.MatchResult()
        shape = _ints(qkv_shape)
        if shape is None or len(shape) != 5 or shape[2] != 3 or min(shape[3:]) < 1:
            return result.fail("qkv is not reshaped to a constant (B, N, 3, H, hd)")
        if [_ints(s) for s in (s0, e0, s1, e1, s2, e2)] != [[0], [1], [1], [2], [2], [3]]:
            return result.fail("the slices are not q, k, v in order")
        for name in ("axis0", "axis1", "axis2", "sq0", "sq1", "sq2"):
            if _ints(bindings[name]) != [0]:
                return result.fail(f"{name} is not the leading (q/k/v) axis")
        return result

    def rewrite(self, op, qkv, qkv_shape, attention, out_shape, **_):
        heads = _ints(qkv_shape)[3]
        q, k, v = op.Split(qkv, axis=-1, num_outputs=3, _outputs=3)
        attrs = {k: a for k, a in attention.producer().attributes.items() if k not in ("q_num_heads", "kv_num_heads")}
        return op.Attention(q, k, v, q_num_heads=heads, kv_num_heads=heads, **attrs)


RULES = pattern.RewriteRuleSet([AttentionTo3D.rule()])


def attention_to_3d(model: Any) -> tuple[Any, int]:
    """Rewrite every matching block of `model` (an `onnx.ModelProto`, left unchanged); returns
    (the rewritten model, blocks rewritten). Nodes and initializers left unused are dropped."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    graph = ir.serde.deserialize_model(model)
    rewritten = RULES.apply_to_model(graph)
    if not rewritten:
        return model, 0
    RemoveUnusedNodesPass()(graph)
    return ir.serde.serialize_model(graph), rewritten
