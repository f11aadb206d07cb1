"""Export manifests whose member specs disagree with the files, and malformed manifests."""

import json
import shutil

import pytest

from lsmha.artifacts import read_manifest


@pytest.fixture
def export_dir(serving_export, tmp_path):
    directory = tmp_path / "export"
    shutil.copytree(serving_export, directory)
    return directory


def _edit(directory, change):
    path = directory / "manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return doc


def _set_members(**fields):
    def change(doc):
        for member in doc["members"]:
            member.update(fields)
        doc.pop("members_sha256", None)  # as a forger who knows the format would

    return change


def test_untouched_export_reads_back(export_dir):
    manifest = read_manifest(export_dir)
    assert manifest.num_classes == 10 and len(manifest.specs) == 2


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_classes": 1000}, r"member 0's spec disagrees with its weights.*num_classes.*\(1000, 10\)"),
        ({"img_size": 30000}, r"member 0's spec disagrees.*img_size"),
        ({"img_size": 64}, r"member 0's spec disagrees.*img_size"),
        ({"in_chans": 1}, r"member 0's spec disagrees.*in_chans"),
    ],
)
def test_spec_that_disagrees_with_member_weights_is_refused(export_dir, fields, message):
    """member specs are checked against the weights stored for each member."""
    _edit(export_dir, _set_members(**fields))
    with pytest.raises(ValueError, match=message):
        read_manifest(export_dir)


def test_extra_member_spec_is_refused(export_dir):
    """an advertised member without weights or a graph."""
    _edit(export_dir, lambda doc: (doc["members"].append(dict(doc["members"][0])), doc.pop("members_sha256")))
    with pytest.raises(ValueError, match=r"lists 3 member specs but holds weights for members \[0, 1\]"):
        read_manifest(export_dir)


def test_spec_checked_against_the_graph_without_member_weights(export_dir):
    """with the weights unlisted, the declared tensors and then the ONNX graph's
    own shapes still give the forgery away."""

    def drop_weights(doc):
        doc["files"] = [f for f in doc["files"] if f["format"] != "safetensors"]

    _edit(export_dir, lambda doc: (_set_members(num_classes=1000)(doc), drop_weights(doc)))
    with pytest.raises(ValueError, match=r"declares logits of shape \['batch', 10\], the member specs imply"):
        read_manifest(export_dir)

    def declare_1000(doc):
        for f in doc["files"]:
            for t in f["outputs"]:
                t["shape"][-1] = 1000

    _edit(export_dir, declare_1000)
    with pytest.raises(ValueError, match=r"committee.onnx's logits has shape \['batch', 10\], the manifest declares"):
        read_manifest(export_dir)


def test_specs_are_hashed(export_dir):
    """an edit to the specs (here only a member's name) breaks members_sha256."""
    _edit(export_dir, lambda doc: doc["members"][0].update(name="renamed"))
    with pytest.raises(ValueError, match="do not match their members_sha256"):
        read_manifest(export_dir)


def _claim_classes(n):
    def change(doc):
        for f in doc["files"]:
            for t in f["outputs"]:
                t["shape"][-1] = n

    return change


def test_committee_load_refuses_a_forged_spec(export_dir):
    from lsmha import Committee

    _edit(export_dir, _set_members(num_classes=1000))
    # refused from the listing itself, before any file is read: the graphs declare 10 classes
    with pytest.raises(ValueError, match=r"declares logits of shape \['batch', 10\], the member specs imply"):
        Committee.load(export_dir, backend="torch")
    _edit(export_dir, _claim_classes(1000))  # the listing forged too: the weights still tell
    with pytest.raises(ValueError, match="member 0's spec disagrees with its weights"):
        Committee.load(export_dir, backend="torch")


@pytest.mark.parametrize(
    "change, message",
    [
        (_set_members(mlp_ratio=float("inf")), r"mlp_ratio must be a finite number, got inf"),
        (lambda doc: doc.update(files={"committee.onnx": {}}), r"'files' must be a list of file entries, got dict"),
        (lambda doc: doc.update(files=["committee.onnx"]), r"file entry must be a JSON object, got str"),
        (lambda doc: doc["files"][0].update(scope=-1), r"scope must be 'committee' or a member index >= 0"),
        (lambda doc: doc["files"][2]["inputs"][0].update(shape="abc"), r"a tensor must be"),
        (lambda doc: doc.update(members={}), r"'members' must be a non-empty list"),
        (lambda doc: (doc["members"].__setitem__(0, [1]), doc.pop("members_sha256")), r"CCTSpec must be a JSON object"),
    ],
)
def test_malformed_manifest_is_a_value_error(export_dir, change, message):
    """malformed manifests give a ValueError naming the field, not a traceback."""
    _edit(export_dir, change)
    with pytest.raises(ValueError, match=message):
        read_manifest(export_dir)


def test_deeply_nested_manifest_is_a_value_error(export_dir):
    """a 100,000-deep manifest."""
    depth = 100_000
    (export_dir / "manifest.json").write_text('{"format": "lsmha-export-1", "x": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ValueError, match="nested too deeply"):
        read_manifest(export_dir)
