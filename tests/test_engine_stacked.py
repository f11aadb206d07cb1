"""Stacked members (lsmha.engine.stacked) and its levers: parity with the members run one by one, in fp32."""

import pytest
import torch

from lsmha.engine.stacked import StackedCCT, StackedCommittee, group_members, shape_key
from lsmha.models import CCT, CCTSpec, committee_specs, parse_committee


def _spec(**kw) -> CCTSpec:
    base = dict(n_conv=2, n_blocks=2, dim=32, heads=4, num_classes=10, img_size=16, attn_dropout=0.0, drop_path=0.0)
    base.update(kw)
    return CCTSpec(**base)


def _members(specs, seed=0):
    torch.manual_seed(seed)
    models = [CCT(s).eval() for s in specs]
    for m in models:  # non-trivial affine params, so a mixed-up member would show
        for p in m.parameters():
            if p.ndim == 1:
                p.data.normal_(0.0, 0.5)
    return models


def _images(n=3, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _reference(models, x):
    with torch.no_grad():
        return torch.stack([m(x) for m in models])


def test_group_members_table6_first_five():
    specs = committee_specs(parse_committee("table6:5"))
    assert group_members(specs) == [[0, 1], [2, 3, 4]]
    assert shape_key(specs[0]) == shape_key(specs[1]) and shape_key(specs[0]) != shape_key(specs[2])


def test_group_members_keeps_interleaved_order_and_ignores_heads():
    specs = [_spec(dim=32), _spec(dim=48, heads=3), _spec(dim=32, heads=8), _spec(dim=48, heads=6), _spec(n_conv=1)]
    assert group_members(specs) == [[0, 2], [1, 3], [4]]


@pytest.mark.parametrize(
    "specs",
    [
        # equal heads: one SDPA call for the whole group
        [_spec(), _spec(), _spec()],
        # different heads per member and per block, head size 11 (padded to 16 inside)
        [_spec(dim=44, heads=4), _spec(dim=44, heads=(2, 11)), _spec(dim=44, heads=(4, 2))],
        # one conv, pooling after every conv
        [_spec(n_conv=1, n_blocks=1, heads=2), _spec(n_conv=1, n_blocks=1, heads=8)],
        [_spec(n_conv=3, pool="all", img_size=32, heads=2), _spec(n_conv=3, pool="all", img_size=32, heads=4)],
    ],
    ids=["same-heads", "mixed-heads-hd11", "one-conv", "pool-all"],
)
def test_stacked_cct_matches_members_one_by_one_fp32(specs):
    models = _members(specs)
    x = _images(size=specs[0].img_size)
    stacked = StackedCCT(models)
    with torch.no_grad():
        got = stacked(models[0].standardize(x))
    want = _reference(models, x)
    assert got.shape == (len(models), 3, specs[0].num_classes)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_stacked_committee_member_order_sum_and_singletons():
    specs = [_spec(dim=32), _spec(dim=48, heads=3), _spec(dim=32, heads=8), _spec(dim=48, heads=6), _spec(n_conv=1)]
    models = _members(specs)
    committee = StackedCommittee(models)
    assert committee.groups == [[0, 2], [1, 3], [4]]
    assert [type(u).__name__ for u in committee.units] == ["StackedCCT", "StackedCCT", "MemberUnit"]
    x = _images(n=4)
    want = _reference(models, x)
    with torch.no_grad():
        member = committee.member_logits(x)
        total = committee(x)
    torch.testing.assert_close(member, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, want.sum(0), rtol=1e-5, atol=1e-5)


def test_stack_false_is_one_unit_per_member_and_equal():
    specs = [_spec(), _spec(heads=2)]
    models = _members(specs)
    x = _images()
    with torch.no_grad():
        a = StackedCommittee(models, stack="off").member_logits(x)
        b = StackedCommittee(models, stack="shape").member_logits(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_cast_leaves_members_alone_and_stays_close():
    specs = [_spec(), _spec(heads=2), _spec(dim=48, heads=3)]
    models = _members(specs)
    x = _images(n=8)
    committee = StackedCommittee(models).to(torch.bfloat16)
    assert all(p.dtype == torch.float32 for m in models for p in m.parameters())
    with torch.no_grad():
        got = committee.member_logits(x)
    want = _reference(models, x)
    assert got.dtype == torch.float32
    rel = (got - want).norm() / want.norm()
    assert rel < 2e-2, f"bf16 relative logit error {rel:.3g}"


def test_refuses_unequal_shapes_and_training_mode():
    a, b = _members([_spec(), _spec(dim=48, heads=3)])
    with pytest.raises(ValueError, match="equal depth and token count"):
        StackedCCT([a, _members([_spec(n_blocks=1)])[0]])
    assert StackedCCT([a, b]).size == 2  # widths may differ: padded
    b.train()
    with pytest.raises(ValueError, match="inference-only"):
        StackedCommittee([a, b])


def test_forward_builds_no_tensor_from_host_data():
    """Reordering members (interleaved groups, mixed heads) gathers with device index buffers: a
    Python-list index would build a host tensor and copy it to the GPU with a sync on every call,
    which CUDA-graph capture refuses (the cuda-graph backend captures this forward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    # groups [[0, 2, 4], [1, 3], [5]] (committee order restored); block 0 heads in the first: 4, 2, 4
    specs = [_spec(dim=44), _spec(dim=48, heads=3), _spec(dim=44, heads=(2, 11)), _spec(dim=48, heads=6)]
    specs += [_spec(dim=44, heads=(4, 2)), _spec(n_conv=1)]
    models = _members(specs)
    committee = StackedCommittee(models)
    assert committee.reorder and committee.units[0].blocks[0].attn.reorder
    x = _images(n=2)
    with torch.no_grad():
        prepared = committee.prepare(x)
        with Ops() as ops:
            member = committee.combine([unit(prepared) for unit in committee.units])
    assert "aten.lift_fresh" not in ops.seen and "aten.index" not in ops.seen, sorted(ops.seen)
    torch.testing.assert_close(member, _reference(models, x), rtol=1e-5, atol=1e-5)
    assert "restore" not in committee.state_dict()  # index buffers are not weights


# -- the levers: each exact in fp32 against the members run one by one (relative error <= 1e-5) --------

# widths, MLP, conv widths and heads all differ; equal depth and token count. Head sizes 8, 11, 16, 4, 24.
MIXED = [
    _spec(dim=32, heads=4),
    _spec(dim=44, heads=(4, 11), conv_width=24),
    _spec(dim=48, heads=(3, 12), mlp_ratio=1.5),
    _spec(dim=32, heads=(8, 2)),
]


def _rel(got, want):
    return float((got - want).norm() / want.norm())


def _lever_parity(models, **levers):
    x = _images(n=4)
    committee = StackedCommittee(models, **levers)
    with torch.no_grad():
        member, total = committee.member_and_sum(x)
    want = _reference(models, x)
    assert member.shape == want.shape
    assert _rel(member, want) <= 1e-5, f"{levers}: relative error {_rel(member, want):.3g}"
    assert _rel(total, want.sum(0)) <= 1e-5
    torch.testing.assert_close(member, want, rtol=1e-5, atol=1e-5)
    return committee


def test_group_members_by_pad_key_table6_is_one_group():
    specs = committee_specs(parse_committee("table6:5"))
    assert group_members(specs, by="pad") == [[0, 1, 2, 3, 4]]
    assert group_members([*MIXED, _spec(n_blocks=1)], by="pad") == [[0, 1, 2, 3], [4]]


def test_lever_pad_all_members_into_one_unit():
    models = _members(MIXED)
    committee = _lever_parity(models, stack="pad")
    assert committee.groups == [[0, 1, 2, 3]] and len(committee.units) == 1
    unit = committee.units[0]
    assert unit.blocks[0].norm1.padded and unit.pos_embed.shape == (4, 64, 48)


def test_lever_pad_with_interleaved_groups_and_pool_all():
    specs = [_spec(dim=32), _spec(n_blocks=1, dim=48, heads=6), _spec(dim=40, heads=5, conv_width=16)]
    specs += [_spec(n_blocks=1, dim=24, heads=2)]
    committee = _lever_parity(_members(specs), stack="pad")
    assert committee.groups == [[0, 2], [1, 3]] and committee.reorder
    pool_all = [_spec(n_conv=3, pool="all", img_size=32, dim=d, heads=h) for d, h in ((32, 2), (48, 4))]
    models = _members(pool_all)
    x = _images(size=32)
    with torch.no_grad():
        got = StackedCommittee(models, stack="pad").member_logits(x)
    assert _rel(got, _reference(models, x)) <= 1e-5


@pytest.mark.parametrize("stack", ["shape", "pad"])
def test_lever_one_sdpa_call_per_block(stack):
    models = _members(MIXED + [_spec(dim=32, heads=2)])
    committee = _lever_parity(models, stack=stack, sdpa="one")
    attn = committee.units[0].blocks[1].attn
    assert attn.one_sdpa and attn.head_size % 8 == 0
    if stack == "pad":  # heads padded to the most (12) and the largest head size (16 -> 16)
        assert (attn.heads, attn.head_size) == (12, 16)


def test_one_sdpa_calls_sdpa_once_per_block():
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountSdpa(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "scaled_dot_product" in str(func.overloadpacket):
                CountSdpa.calls += 1
            return func(*args, **(kwargs or {}))

    models = _members(MIXED)
    for sdpa, want in (("one", 2), ("per-heads", 4 + 4)):  # per block: 1, or one per (heads, head size)
        committee = StackedCommittee(models, stack="pad", sdpa=sdpa)
        CountSdpa.calls = 0
        with torch.no_grad(), CountSdpa():
            committee.member_logits(_images(n=1))
        assert CountSdpa.calls == want, (sdpa, CountSdpa.calls)


@pytest.mark.parametrize("stack", ["shape", "pad"])
def test_lever_bias_fused_into_the_next_pointwise_op(stack):
    committee = _lever_parity(_members(MIXED), stack=stack, bias="fused")
    assert committee.units[0].blocks[0].fused_bias


def test_all_levers_together():
    _lever_parity(_members(MIXED), stack="pad", sdpa="one", bias="fused")


def test_lever_one_graph_traces_the_whole_committee_once():
    """`member_and_sum` (standardise, every unit, combine, sum) is what the cuda-graph backend
    compiles as ONE graph: dynamo must see one graph without breaks, and it computes the same."""
    import torch._dynamo

    models = _members(MIXED)
    x = _images(n=2)
    for levers in ({"stack": "shape"}, {"stack": "pad", "sdpa": "one", "bias": "fused"}):
        committee = StackedCommittee(models, **levers)
        with torch.no_grad():
            explained = torch._dynamo.explain(committee.member_and_sum)(x)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
            member, _ = torch.compile(committee.member_and_sum, backend="aot_eager", fullgraph=True)(x)
        assert _rel(member, _reference(models, x)) <= 1e-5


def test_lever_uint8_input_cast_inside_equals_float_input():
    committee = StackedCommittee(_members(MIXED[:2]))
    x = _images(n=3)
    with torch.no_grad():
        torch.testing.assert_close(committee.prepare(x), committee.prepare(x.float()), rtol=0, atol=0)


def test_refuses_unknown_levers():
    models = _members(MIXED[:2])
    with pytest.raises(ValueError, match="stack must be one of"):
        StackedCommittee(models, stack="wide")
    with pytest.raises(ValueError, match="sdpa must be one of"):
        StackedCommittee(models, stack="pad", sdpa="fast")


def test_stacked_parts_are_the_model_layers_and_tokens_match_each_member():
    """The stacked committee runs the model's own definitions (`lsmha.models.layers`): its tokenizer is a
    `ConvTokenizer` of G members side by side, its blocks run `ResidualBlock`'s equation, and member g's
    tokens equal that member's own tokenizer output plus positional embedding."""
    from lsmha.models.layers import ConvTokenizer, ResidualBlock

    specs = [_spec(n_conv=3, pool="all", img_size=32, dim=d, heads=2, conv_width=w) for d, w in ((32, 16), (48, 24))]
    models = _members(specs)
    stacked = StackedCCT(models)
    assert isinstance(stacked.tokenizer, ConvTokenizer) and all(isinstance(b, ResidualBlock) for b in stacked.blocks)
    assert [c.groups for c in stacked.tokenizer.convs] == [1, 2, 2]
    x = models[0].standardize(_images(size=32))
    with torch.no_grad():
        got = stacked.tokens(x)  # (G, B, N, D)
        for g, m in enumerate(models):
            want = m.tokenizer(x) + m.pos_embed
            torch.testing.assert_close(got[g, ..., : m.spec.dim], want, rtol=1e-5, atol=1e-5)
            assert not got[g, ..., m.spec.dim :].any()  # a narrower member's padding stays zero
