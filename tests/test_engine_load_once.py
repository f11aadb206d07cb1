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
    """Per file name: `hashed` (digests computed), `read` (reads of its content: the manifest's
    text, a hash, a graph or weights read by lsmha or handed over as bytes); `checked` (spec checks)."""
    import onnx

    import lsmha.engine.committee as engine_committee
    import lsmha.models.checkpoint as checkpoint_module

    hashed: Counter = Counter()
    read: Counter = Counter()
    checked: list = []

    class Digests(dict):  # where artifacts.verified keeps each digest it computes
        def __setitem__(self, key, value):
            hashed[Path(key[0]).name] += 1
            super().__setitem__(key, value)

    def counting(name_of, original):
        def wrapper(first, *args, **kwargs):
            read[name_of(first)] += 1
            return original(first, *args, **kwargs)

        return wrapper

    def counting_check(specs, *args, **kwargs):
        checked.append(len(specs))
        return spec_module.check_compatible(specs, *args, **kwargs)

    name = lambda p: Path(p).name  # noqa: E731
    monkeypatch.setattr(verified_module, "_digests", Digests())  # a fresh process: nothing hashed yet
    monkeypatch.setattr(files_module, "sha256_file", counting(name, files_module.sha256_file))
    monkeypatch.setattr(Path, "read_text", counting(lambda p: p.name, Path.read_text))
    monkeypatch.setattr(Path, "read_bytes", counting(lambda p: p.name, Path.read_bytes))
    monkeypatch.setattr(checkpoint_module, "safe_open", counting(name, checkpoint_module.safe_open))
    monkeypatch.setattr(onnx, "load", counting(name, onnx.load))
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
    # each checkpoint: read for its hash, then by the loader (safe_open: header, tensors)
    assert mine == {"committee.json": 1, "m0.safetensors": 2, "m1.safetensors": 2} and len(checked) == 1


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
    ("backend", "reads"),
    [  # a graph: read once, hashed from those bytes, parsed by its runtime from them, its inputs and
        # outputs checked on what the runtime read; weights: read for the hash, then by the loader
        ("onnxruntime", {"committee.onnx": 1}),
        ("openvino", {"committee.onnx": 1}),
        ("torch", {"member0.safetensors": 2, "member1.safetensors": 2}),
    ],
)
def test_a_load_hashes_only_the_files_its_backend_opens(every_kind, counted, backend, reads):
    from lsmha.engine.backends import available_backends

    if available_backends()[backend]:
        pytest.skip(available_backends()[backend])
    from lsmha.artifacts import read_manifest

    hashed, read, checked = counted
    listed = {Path(e.path).name for e in read_manifest(every_kind, verify=False).files}
    assert set(reads) < listed and len(listed) >= 7, listed
    hashed.clear(), read.clear()
    committee = Committee.load(every_kind, backend=backend)
    committee.predict(IMAGES)
    assert dict(hashed) == dict.fromkeys(reads, 1)  # per path: the files it opened, once each
    mine = {name: n for name, n in read.items() if name in listed | {"manifest.json"}}
    assert mine == {"manifest.json": 1, **reads} and len(checked) == 1
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
