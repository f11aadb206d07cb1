import json
import stat

import pytest
import torch

import lsmha
from lsmha.artifacts import read_committee, write_committee
from lsmha.models import load_facts


def test_save_load_gives_identical_logits(tmp_path, tiny_spec):
    torch.manual_seed(0)
    model = lsmha.CCT(tiny_spec).eval()
    path = lsmha.save(model, tmp_path / "m.safetensors", dataset="digits", val_accuracy=0.5)
    again = lsmha.load(path)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again.spec == tiny_spec and again.facts == {"dataset": "digits", "val_accuracy": 0.5}
    assert load_facts(path)["spec"]["dim"] == 32
    assert not again.training
    probe = tmp_path / "probe"
    probe.touch()  # what any new file gets here; safetensors alone would give 0600
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(probe.stat().st_mode)


def test_missing_truncated_and_foreign_files_fail_clearly(tmp_path, tiny_spec):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        lsmha.load(tmp_path / "nope.safetensors")
    path = lsmha.save(lsmha.CCT(tiny_spec), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt|unreadable"):
        lsmha.load(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an lsmha checkpoint"):
        lsmha.load(tmp_path / "other.safetensors")


def test_mismatched_tensors_are_refused(tmp_path, tiny_spec):
    from safetensors.torch import save_file

    model = lsmha.CCT(tiny_spec)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["fc.weight"] = torch.zeros(3, 32)
    meta = {"format": "lsmha-checkpoint-1", "spec": tiny_spec.to_json(), "facts": "{}"}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"fc.weight.*shape \(3, 32\).*\(10, 32\)"):
        lsmha.load(tmp_path / "bad.safetensors")
    del state["fc.weight"]
    save_file(state, str(tmp_path / "short.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="missing tensors"):
        lsmha.load(tmp_path / "short.safetensors")


def test_committee_manifest_verifies_hashes_and_paths(tmp_path, tiny_spec):
    paths = [lsmha.save(lsmha.CCT(tiny_spec), tmp_path / "members" / f"m{i}.safetensors") for i in range(2)]
    manifest = write_committee(tmp_path / "committee.json", paths)
    doc, resolved = read_committee(tmp_path)
    assert resolved == [p.resolve() for p in paths] and doc["num_classes"] == 10
    other = lsmha.save(lsmha.CCT(tiny_spec.replace(num_classes=7)), tmp_path / "members" / "o.safetensors")
    with pytest.raises(ValueError, match="classes, img_size, in_chans"):
        write_committee(tmp_path / "bad.json", [paths[0], other])
    doc["members"][0]["checkpoint"] = "../escape.safetensors"
    manifest.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="leaves the directory"):
        read_committee(manifest)
    doc["members"][0]["checkpoint"] = "members/m0.safetensors"
    manifest.write_text(json.dumps(doc))
    paths[0].write_bytes(paths[1].read_bytes())
    with pytest.raises(ValueError, match="does not match its sha256"):
        read_committee(manifest)
