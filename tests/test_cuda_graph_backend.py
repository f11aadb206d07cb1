"""The cuda-graph backend: CPU-side checks everywhere, GPU parity where CUDA is present."""

import numpy as np
import pytest
import torch

from lsmha.engine import BACKENDS, BackendUnavailable, Committee, Source, available_backends, open_backend
from lsmha.engine.backends import cuda_graph_backend as cg
from lsmha.engine.stacked import StackedCommittee
from lsmha.models import CCT, CCTSpec

CUDA = torch.cuda.is_available()


def _spec(**kw) -> CCTSpec:
    base = dict(n_conv=2, n_blocks=2, dim=32, heads=4, num_classes=10, img_size=16, attn_dropout=0.0, drop_path=0.0)
    base.update(kw)
    return CCTSpec(**base)


def _members(specs, seed=0, logit_scale=1.0):
    torch.manual_seed(seed)
    models = [CCT(s).eval() for s in specs]
    for m in models:  # spread the logits so argmax parity is a meaningful check on untrained members
        m.fc.weight.data.mul_(logit_scale)
    return models


SPECS = [_spec(), _spec(heads=8), _spec(dim=44, heads=(4, 2)), _spec(n_conv=1, n_blocks=1, dim=48, heads=3)]


def _images(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 16, 16), dtype=np.uint8)


# -- everywhere ------------------------------------------------------------------------------------


def test_registered_and_in_auto_order():
    from lsmha.engine import AUTO_ORDER
    from lsmha.engine.backends import cuda_graph_backend

    assert BACKENDS["cuda-graph"].open is cuda_graph_backend.open
    assert AUTO_ORDER.index("cuda-graph") < AUTO_ORDER.index("torch")
    assert cg.NAME == "cuda-graph"


def test_buckets():
    assert cg.batch_buckets(1) == (1,)
    assert cg.batch_buckets(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert cg.batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    buckets = cg.batch_buckets(48)
    assert [cg.bucket_for(n, buckets) for n in (1, 2, 3, 5, 33, 48)] == [1, 2, 4, 8, 48, 48]
    with pytest.raises(ValueError, match="exceeds the largest captured bucket 48"):
        cg.bucket_for(49, buckets)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        cg.batch_buckets(0)


def test_allow_recompiles_only_raises():
    import torch._dynamo

    from lsmha.engine.cuda_graph import allow_recompiles

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    before = getattr(cfg, name)
    try:
        allow_recompiles(before + 5)
        assert getattr(cfg, name) == before + 5
        allow_recompiles(1)
        assert getattr(cfg, name) == before + 5
    finally:
        setattr(cfg, name, before)


def test_compiled_units_have_no_graph_breaks():
    """What the backend hands to torch.compile traces as ONE graph each (dynamo only, no inductor)."""
    import torch._dynamo

    program = StackedCommittee(_members(SPECS))
    x = torch.from_numpy(_images(2))
    with torch.no_grad():
        xs = program.prepare(x)
        for fn, arg in [(program.prepare, x)] + [(u, xs) for u in program.units]:
            explained = torch._dynamo.explain(fn)(arg)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.skipif(CUDA, reason="checks the refusal without CUDA")
def test_without_cuda_unavailable_and_refuses_with_reason():
    reason = cg.unavailable()
    assert reason and ("no CUDA" in reason or "no CUDA support" in reason) and "'torch'" in reason
    assert "sees none" in available_backends()["cuda-graph"] or "no CUDA support" in available_backends()["cuda-graph"]
    with pytest.raises(BackendUnavailable, match="backend 'cuda-graph' needs a CUDA GPU"):
        cg.CudaGraphCommittee(_members(SPECS[:1]))
    source = Source(specs=SPECS[:1], models=_members(SPECS[:1]))
    with pytest.raises(BackendUnavailable, match="unavailable"):
        open_backend("cuda-graph", source)
    assert open_backend("auto", source).name != "cuda-graph"


def test_open_refuses_unknown_options_and_cpu_device():
    levers = {"stack", "sdpa", "bias", "streams", "compile", "one_graph", "input", "precision", "max_batch"}
    assert BACKENDS["cuda-graph"].options() == levers | {"device"}  # what Committee.load may pass
    source = Source(specs=SPECS[:1], models=_members(SPECS[:1]))
    with pytest.raises(ValueError, match=r"unknown backend option\(s\) \['threads'\]"):
        open_backend("cuda-graph", source, threads=2)
    with pytest.raises(ValueError, match=r"device='cpu' is not allowed: cuda-graph takes None or 'cuda', 'cuda:N'"):
        open_backend("cuda-graph", source, device="cpu")
    with pytest.raises(ValueError, match=r"stack='rows' is not allowed: cuda-graph takes one of 'shape', 'pad', 'off'"):
        open_backend("cuda-graph", source, stack="rows")


# -- on a GPU --------------------------------------------------------------------------------------


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def no_tf32(monkeypatch):
    """fp32 on the GPU as fp32: cuDNN convolutions use TF32 by default (10-bit mantissa)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _decided_agreement(total, want_total):
    """Top-1 agreement over the images whose fp32 top-2 margin exceeds 5x the measured logit
    error: an image whose two best classes are closer than the error may flip either way."""
    err = float(np.abs(total - want_total).max())
    top2 = np.sort(want_total, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 5 * err
    agree = float((total.argmax(1) == want_total.argmax(1))[decided].mean()) if decided.any() else float("nan")
    return agree, int(decided.sum())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device; torch sees none")
@pytest.mark.parametrize(
    "precision, compile, tol, n, buckets",
    # compiled: one bucket (5 inductor graphs; a second bucket would recompile all 5 dynamic)
    [("bf16", "default", 2e-2, 64, [64]), ("fp32", "off", 1e-4, 72, [8, 64])],
)
def test_parity_against_eager_fp32(precision, compile, tol, n, buckets, no_tf32):
    models = _members(SPECS, logit_scale=30.0)
    images = _images(n)
    with torch.no_grad():
        want = np.stack([m(torch.from_numpy(images)).numpy() for m in models])
    source = Source(specs=[m.spec for m in models], models=models)
    committee = Committee.load(source, "cuda-graph", batch_size=64, precision=precision, max_batch=64, compile=compile)
    engine = committee.runner.engine
    member = committee.member_logits(images)  # chunks of 64 (and 8)
    total = committee.predict_logits(images)
    assert member.shape == want.shape and member.dtype == np.float32
    assert _rel(member, want) <= tol, f"{precision}: member logits relative error {_rel(member, want):.3g}"
    assert _rel(total, want.sum(0)) <= tol
    agree, decided = _decided_agreement(total, want.sum(0))
    assert decided >= len(images) // 4, f"{precision}: only {decided} images decided beyond 5x the error"
    assert agree == 1.0, f"{precision}: top-1 agreement {agree:.3f} over {decided} decided images"
    assert sorted(engine.captured) == [(b, "uint8") for b in buckets]
    assert engine.groups == [[0, 1], [2], [3]] and "3 stream(s)" in engine.name


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device; torch sees none")
def test_levers_on_the_gpu_agree_with_the_default_engine(no_tf32):
    """Every lever (eager kernels, fp32, TF32 off) against the default engine, in one capture each."""
    models = _members(SPECS)
    images = torch.from_numpy(_images(4)).cuda()
    want = cg.CudaGraphCommittee(models, precision="fp32", max_batch=4, compile="off").run(images)[0].clone()
    for levers in ({"stack": "pad"}, {"stack": "pad", "sdpa": "one", "bias": "fused"}, {"input": "float"}):
        engine = cg.CudaGraphCommittee(models, precision="fp32", max_batch=4, compile="off", **levers)
        torch.testing.assert_close(engine.run(images)[0], want, rtol=1e-4, atol=1e-4, msg=str(levers))
        engine.close()
    floats = cg.CudaGraphCommittee(models, precision="fp32", max_batch=4, compile="off")
    torch.testing.assert_close(floats.run(images.float())[0], want, rtol=1e-4, atol=1e-4)
    assert floats.captured == [(4, "float32")]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device; torch sees none")
def test_padding_rows_do_not_change_real_rows_and_levers_agree(no_tf32):
    models = _members(SPECS)
    images = torch.from_numpy(_images(5)).cuda()
    full = cg.CudaGraphCommittee(models, precision="fp32", max_batch=8, compile="off")
    _, alone = full.run(images[:3])  # bucket 4, one padding row
    alone = alone.clone()
    _, padded = full.run(images)  # bucket 8
    torch.testing.assert_close(alone, padded[:3], rtol=1e-4, atol=1e-4)
    flat = cg.CudaGraphCommittee(models, precision="fp32", max_batch=8, compile="off", stack="off", streams=False)
    torch.testing.assert_close(flat.run(images)[1], padded, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="exceeds the largest captured bucket 8"):
        full.run(torch.cat([images, images]))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, 16, 16\)"):
        full.run(images[:, :, :8])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device; torch sees none")
def test_load_from_checkpoints_and_auto_on_cuda(tmp_path):
    from lsmha.artifacts import write_committee
    from lsmha.models import save

    models = _members(SPECS[:2], logit_scale=30.0)
    paths = [tmp_path / f"m{i}.safetensors" for i in range(2)]
    for m, p in zip(models, paths):
        save(m, p)
    write_committee(tmp_path / "committee.json", paths)
    committee = Committee.load(tmp_path, backend="cuda-graph", max_batch=16, compile="off")
    assert committee.backend.startswith("cuda-graph[") and committee.batch_size == 16
    images = _images(20)
    want = sum(m(torch.from_numpy(images)).detach().numpy() for m in models)
    assert _rel(committee.predict_logits(images), want) <= 2e-2
    assert available_backends()["cuda-graph"] is None
