"""One load and one predict read and hash each file once: the manifest is parsed and checked
once, each listed file hashed once, whichever way the committee is built (the server's too)."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import lsmha.artifacts.committee as committee_file
import lsmha.artifacts.manifest as manifest_file
import lsmha.models.spec as spec_module
from lsmha.artifacts import write_committee
from lsmha.engine import Committee, load_source
from lsmha.models import CCT, CCTSpec, save


@pytest.fixture
def counted(monkeypatch):
    hashed: Counter = Counter()
    read: Counter = Counter()
    checked: list = []
    sha256_file, read_text, check = manifest_file.sha256_file, Path.read_text, spec_module.check_compatible

    def counting_sha256(path, *args, **kwargs):
        hashed[Path(path).name] += 1
        return sha256_file(path, *args, **kwargs)

    def counting_read(self, *args, **kwargs):
        read[self.name] += 1
        return read_text(self, *args, **kwargs)

    def counting_check(specs, *args, **kwargs):
        checked.append(len(specs))
        return check(specs, *args, **kwargs)

    for module in (manifest_file, committee_file):
        monkeypatch.setattr(module, "sha256_file", counting_sha256)
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
    hashed.clear()
    Committee.load(tmp_path, backend="torch").predict(IMAGES)
    assert hashed == {"m0.safetensors": 1, "m1.safetensors": 1}
    assert read["committee.json"] == 1 and len(checked) == 1


def test_an_export_load_and_predict_parse_the_manifest_once(tmp_path, counted):
    from lsmha.export.onnx import export_onnx

    hashed, read, checked = counted
    export_onnx(_members(), tmp_path)
    hashed.clear(), read.clear()
    Committee.load(tmp_path, backend="onnxruntime").predict(IMAGES)
    assert read["manifest.json"] == 1 and len(checked) == 1
    assert hashed and set(hashed.values()) == {1}, hashed  # every listed file hashed once
    hashed.clear(), read.clear()
    source = load_source(tmp_path)  # what lsmha-serve does: read once before binding, load from it
    Committee.load(source, backend="onnxruntime").predict(IMAGES)
    assert read["manifest.json"] == 1 and set(hashed.values()) == {1}
