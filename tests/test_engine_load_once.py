"""One load and one predict read and hash each file once: the manifest is parsed and checked
once, each file the backend opens hashed once per process and the files it does not open never,
whichever way the committee is built (the server's too). docs/engine.md walks the same path."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import lsmha.artifacts.files as files_module
import lsmha.artifacts.verified as verified_module
import lsmha.models.spec as spec_module
from lsmha.artifacts import write_committee
from lsmha.engine import Committee, load_source
from lsmha.models import CCT, CCTSpec, save


@pytest.fixture
def counted(monkeypatch):
    hashed: Counter = Counter()
    read: Counter = Counter()
    checked: list = []
    sha256_file, read_text, check = files_module.sha256_file, Path.read_text, spec_module.check_compatible

    def counting_sha256(path, *args, **kwargs):
        hashed[Path(path).name] += 1
        return sha256_file(path, *args, **kwargs)

    def counting_read(self, *args, **kwargs):
        read[self.name] += 1
        return read_text(self, *args, **kwargs)

    def counting_check(specs, *args, **kwargs):
        checked.append(len(specs))
        return check(specs, *args, **kwargs)

    import onnx

    import lsmha.models.checkpoint as checkpoint_module

    safe_open, onnx_load = checkpoint_module.safe_open, onnx.load

    def counting_safe_open(path, *args, **kwargs):  # a checkpoint's header parsed (the spec check or a load)
        read[Path(path).name] += 1
        return safe_open(path, *args, **kwargs)

    def counting_onnx_load(path, *args, **kwargs):  # a graph parsed by lsmha itself (its inputs and outputs checked)
        read[Path(path).name] += 1
        return onnx_load(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "safe_open", counting_safe_open)
    monkeypatch.setattr(onnx, "load", counting_onnx_load)
    monkeypatch.setattr(files_module, "sha256_file", counting_sha256)
    monkeypatch.setattr(verified_module, "_digests", {})  # a fresh process: nothing hashed yet
    monkeypatch.setattr(Path, "read_text", counting_read)
    import lsmha.engine.committee as engine_committee

    monkeypatch.setattr(engine_committee, "check_compatible", counting_check)
    return hashed, read, checked


def _members():
    torch.manual_seed(0)
    spec = CCTSpec(n_conv=1, n_blocks=1, dim=16, heads=2, num_classes=5, img_size=16, attn_dropout=0.0)
    return [CCT(spec.replace(name=f"m{i}")).eval() for i in range(2)]


IMAGES = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)


def test_a_committee_json_load_and_predict_read_each_file_once(tmp_path, counted):
    hashed, read, checked = counted
    paths = [save(m, tmp_path / f"m{i}.safetensors") for i, m in enumerate(_members())]
    write_committee(tmp_path / "committee.json", paths)
    hashed.clear(), read.clear()
    Committee.load(tmp_path, backend="torch").predict(IMAGES)
    assert hashed == {"m0.safetensors": 1, "m1.safetensors": 1}
    mine = {name: n for name, n in read.items() if (tmp_path / name).exists()}
    assert mine == {"committee.json": 1, "m0.safetensors": 1, "m1.safetensors": 1} and len(checked) == 1


def test_an_export_load_and_predict_parse_the_manifest_once(tmp_path, counted):
    from lsmha.export.onnx import export_onnx

    hashed, read, checked = counted
    export_onnx(_members(), tmp_path)
    hashed.clear(), read.clear()
    Committee.load(tmp_path, backend="onnxruntime").predict(IMAGES)
    assert read["manifest.json"] == 1 and len(checked) == 1
    assert dict(hashed) == {"committee.onnx": 1}  # the file onnxruntime opens, once; the weights never
    hashed.clear(), read.clear()
    verified_module._digests.clear()  # as in a fresh process
    source = load_source(tmp_path)  # what lsmha-serve does: read once before binding, load from it
    Committee.load(source, backend="onnxruntime").predict(IMAGES)
    assert read["manifest.json"] == 1 and dict(hashed) == {"committee.onnx": 1}


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """An export holding more than any one backend opens: the fp32 and fp16 committee graphs, one
    graph per member and the members' weights."""
    from lsmha.export.onnx import export_onnx

    directory = tmp_path_factory.mktemp("every_kind")
    export_onnx(_members(), directory, precisions=("fp32", "fp16"), per_member=True)
    return directory


@pytest.mark.parametrize(
    ("backend", "opened", "parsed"),
    [  # parsed: by lsmha itself (onnx.load for ORT's graph rewrite, a checkpoint's safetensors header);
        # OpenVINO parses its graph itself, and the inputs and outputs are checked on what it read
        ("onnxruntime", {"committee.onnx"}, {"committee.onnx"}),
        ("openvino", {"committee.onnx"}, set()),
        ("torch", {"member0.safetensors", "member1.safetensors"}, {"member0.safetensors", "member1.safetensors"}),
    ],
)
def test_a_load_hashes_only_the_files_its_backend_opens(every_kind, counted, backend, opened, parsed):
    from lsmha.engine.backends import available_backends

    if available_backends()[backend]:
        pytest.skip(available_backends()[backend])
    from lsmha.artifacts import read_manifest

    hashed, read, checked = counted
    listed = {Path(e.path).name for e in read_manifest(every_kind, verify=False).files}
    assert opened < listed and len(listed) >= 7, listed
    hashed.clear(), read.clear()
    committee = Committee.load(every_kind, backend=backend)
    committee.predict(IMAGES)
    assert dict(hashed) == dict.fromkeys(opened, 1)  # per path: the files it opened, once each
    mine = {name: n for name, n in read.items() if name in listed | {"manifest.json"}}
    assert mine == {"manifest.json": 1, **dict.fromkeys(parsed, 1)} and len(checked) == 1
    committee.close()
    hashed.clear()
    Committee.load(load_source(every_kind), backend=backend).predict(IMAGES)  # again, as lsmha-serve does
    assert not hashed  # unchanged files are not hashed twice in one process


def test_a_file_changed_after_a_load_is_hashed_again_and_refused(every_kind, tmp_path, counted):
    import shutil

    hashed, _, _ = counted
    shutil.copytree(every_kind, tmp_path, dirs_exist_ok=True)
    Committee.load(tmp_path, backend="onnxruntime").close()
    graph = tmp_path / "committee.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    hashed.clear()
    with pytest.raises(ValueError, match="committee.onnx does not match its sha256"):
        Committee.load(tmp_path, backend="onnxruntime")
    assert hashed == {"committee.onnx": 1}
