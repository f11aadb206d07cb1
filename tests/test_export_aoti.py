"""AOTInductor packages: ONE compile per test run (a tiny 3-member committee, module fixture),
reloaded in a fresh process and in this one, checked against torch fp32; the version/ISA/GPU
checks and the CLI's usage errors need no compile."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lsmha.artifacts import COMMITTEE, FileEntry, read_manifest
from lsmha.artifacts.compiled import package_target
from lsmha.engine import BackendUnavailable, Committee
from lsmha.engine.backends.aoti_runtime import PackageMismatch, check_package
from lsmha.export.aoti import export_aoti_dir, package_name
from lsmha.export.directory import write_weights
from lsmha.models import CCT, CCTSpec

TINY = CCTSpec(n_conv=1, n_blocks=1, dim=16, heads=2, num_classes=10, img_size=16, attn_dropout=0.0, drop_path=0.0)


@pytest.fixture(scope="module")
def committee_dir(tmp_path_factory):
    """Three different tiny members, their weights and ONE committee package (the only compile)."""
    directory = tmp_path_factory.mktemp("aoti")
    torch.manual_seed(0)
    members = [CCT(TINY.replace(heads=h, dim=d)).eval() for h, d in ((2, 16), (1, 16), (2, 24))]
    write_weights(members, directory)
    (entry,) = export_aoti_dir(directory, device="cpu", max_batch=64)
    return directory, members, entry


def reference(members, images):
    with torch.inference_mode():
        return torch.stack([m(torch.from_numpy(images)) for m in members]).numpy()


@pytest.mark.slow
def test_package_entry_records_what_it_is_tied_to(committee_dir):
    directory, _, entry = committee_dir
    assert entry.path == "committee.cpu.pt2" and entry.format == "pt2" and entry.scope == COMMITTEE
    assert entry.versions["torch"] == torch.__version__
    assert entry.extra["device"] == "cpu" and entry.extra["cpu_isa"] == package_target("cpu")["cpu_isa"]
    assert entry.extra["max_batch"] == 64 and entry.extra["compile_s"] > 0
    assert entry.extra["threads"] == torch.get_num_threads()  # baked into the CPU kernels
    assert [t.name for t in entry.outputs] == ["logits", "member_logits"]
    manifest = read_manifest(directory)  # hashes verified
    assert [e.format for e in manifest.files] == ["safetensors"] * 3 + ["pt2"]


@pytest.mark.slow
def test_fresh_process_reload_matches_torch_for_batches_1_and_5(committee_dir, tmp_path):
    directory, members, _ = committee_dir
    rng = np.random.default_rng(1)
    images = {b: rng.integers(0, 256, (b, 3, 16, 16), dtype=np.uint8) for b in (1, 5)}
    for b, x in images.items():
        np.save(tmp_path / f"x{b}.npy", x)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from lsmha.engine import Committee
        c = Committee.load({str(directory)!r}, backend="aoti")
        assert c.backend == "aoti[cpu]", c.backend
        for b in (1, 5):
            x = np.load({str(tmp_path)!r} + f"/x{{b}}.npy")
            np.save({str(tmp_path)!r} + f"/m{{b}}.npy", c.member_logits(x))
            np.save({str(tmp_path)!r} + f"/s{{b}}.npy", c.predict_logits(x.transpose(0, 2, 3, 1)))  # NHWC too
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for b, x in images.items():
        ref = reference(members, x)
        got_members = np.load(tmp_path / f"m{b}.npy")
        assert got_members.shape == (3, b, 10)
        np.testing.assert_allclose(got_members, ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.load(tmp_path / f"s{b}.npy"), ref.sum(0), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_auto_prefers_the_package_and_chunks_to_its_max_batch(committee_dir):
    directory, members, _ = committee_dir
    committee = Committee.load(directory, trust_native=True)  # no ONNX file here: auto takes the package next
    assert committee.backend == "aoti[cpu]" and committee.batch_size == 64
    x = torch.rand(70, 3, 16, 16)  # float pixels in 0..1: the graph standardises each image
    np.testing.assert_allclose(committee.predict_logits(x), reference(members, x.numpy()).sum(0), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_auto_on_a_cpu_prefers_the_onnx_backends_over_the_package(committee_dir, tmp_path):
    from lsmha.artifacts import add_entries
    from lsmha.export.onnx import export_scope_onnx

    directory, members, _ = committee_dir
    for f in directory.iterdir():
        shutil.copy(f, tmp_path / f.name)
    add_entries(tmp_path, [export_scope_onnx(members, tmp_path)])
    assert Committee.load(tmp_path, device="cpu").backend.startswith(("openvino[CPU,", "onnxruntime[CPU"))
    assert Committee.load(tmp_path, backend="aoti").backend == "aoti[cpu]"  # still there when asked for


@pytest.mark.slow
def test_verify_covers_the_package(committee_dir):
    from lsmha.verify import verify_export

    directory, _, _ = committee_dir
    rows = [r for r in verify_export(directory, count=8, seed=0) if r.runtime == "aoti"]
    assert rows and all(r.result == "ok" and r.rel_error <= 1e-4 and r.top1_agreement == 1.0 for r in rows), rows


@pytest.mark.slow
def test_package_from_another_torch_is_refused_with_the_rebuild_command(committee_dir, tmp_path):
    directory, _, _ = committee_dir
    for f in directory.iterdir():
        shutil.copy(f, tmp_path / f.name)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    doc["files"][-1]["versions"]["torch"] = "2.5.1+cu124"  # older than any supported torch
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BackendUnavailable) as err:
        Committee.load(tmp_path, backend="aoti")
    msg = str(err.value)
    assert "torch '2.5.1+cu124'" in msg and torch.__version__ in msg
    assert f"lsmha-export aoti {tmp_path} --device cpu --precision fp32" in msg
    assert Committee.load(tmp_path).backend.startswith(("torch", "onnxruntime"))  # auto falls through


def entry(**extra):
    facts = {"device": "cpu", "cpu_isa": "avx2", **extra}
    return FileEntry("committee.cpu.pt2", "0" * 64, "pt2", "fp32", COMMITTEE, versions={"torch": "2.14.1"}, extra=facts)


def test_check_package_compares_isa_and_gpu():
    check_package(entry(), "/exp", {"torch": "2.14.1", "device": "cpu", "cpu_isa": "avx2"})
    with pytest.raises(PackageMismatch, match=r"cpu_isa 'avx512' \(this machine: 'avx2'\)"):
        check_package(entry(cpu_isa="avx512"), "/exp", {"torch": "2.14.1", "device": "cpu", "cpu_isa": "avx2"})
    cuda = entry(device="cuda", compute_capability="9.0")
    del cuda.extra["cpu_isa"]
    with pytest.raises(PackageMismatch, match=r"compute_capability '9.0' \(this machine: '8.0'\).*--device cuda"):
        check_package(cuda, "/exp", {"torch": "2.14.1", "device": "cuda", "compute_capability": "8.0"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_cuda_package_without_cuda_points_to_a_cpu_build():
    cuda = entry(device="cuda", compute_capability="9.0")
    with pytest.raises(PackageMismatch, match="no CUDA device.*lsmha-export aoti /exp --device cpu"):
        check_package(cuda, "/exp")


def test_names_and_usage_errors(tmp_path, capsys):
    from lsmha.export.cli import main

    assert package_name(COMMITTEE, "cuda:0", "fp16") == "committee.cuda.fp16.pt2"
    assert package_name(2, "cpu", "fp32") == "member2.cpu.pt2"
    assert main(["aoti", str(tmp_path / "none")]) == 2
    assert "--from" in capsys.readouterr().err
    write_weights([CCT(TINY).eval()], tmp_path)
    assert main(["aoti", str(tmp_path), "--from", "cct_1_3x1"]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--force" in err and "drop --from" in err
    assert main(["aoti", str(tmp_path), "--force"]) == 2
    assert "needs --from" in capsys.readouterr().err
    assert main(["aoti", str(tmp_path), "--max-batch", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["aoti", "--help"])
    assert "65536" in capsys.readouterr().out


def test_aoti_backend_without_packages_says_what_to_run(tmp_path):
    write_weights([CCT(TINY).eval()], tmp_path)
    with pytest.raises(BackendUnavailable, match=f"no fp32-precision cpu AOTInductor package.*export aoti {tmp_path}"):
        Committee.load(tmp_path, backend="aoti")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_package_matches_torch(tmp_path):
    from lsmha.export.aoti import cuda_toolkit_missing

    if why := cuda_toolkit_missing():
        pytest.skip(why)
    torch.manual_seed(0)
    members = [CCT(TINY).eval()]  # one member: the GPU check gives all its tests two minutes
    write_weights(members, tmp_path)
    export_aoti_dir(tmp_path, device="cuda", max_batch=64)
    committee = Committee.load(tmp_path, backend="aoti", device="cuda")
    assert committee.backend == "aoti[cuda]"
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    np.testing.assert_allclose(committee.member_logits(x), reference(members, x), rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_export_program_accepts_max_batch_1():
    """torch.export refuses a Dim with min == max; a batch-1 package must still export."""
    from lsmha.export.aoti import export_program
    from lsmha.export.graphs import CommitteeGraph

    program = export_program(CommitteeGraph([CCT(TINY).eval()], torch.float32), TINY, "cpu", max_batch=1)
    logits = program.module()(torch.rand(1, 3, 16, 16) * 255)[0]
    assert logits.shape == (1, 10)


def test_cuda_toolkit_check_names_what_is_missing(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    from lsmha.export.aoti import cuda_toolkit_missing

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    assert "no CUDA toolkit found" in cuda_toolkit_missing() and "--device cpu" in cuda_toolkit_missing()
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    assert cuda_toolkit_missing() is None
