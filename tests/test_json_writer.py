"""The one JSON file writer (`lsmha.artifacts.write_json_atomic`): indented, a trailing newline,
parents created, never half-written; paths and numpy values written, other objects refused."""

import json
from pathlib import Path

import numpy as np
import pytest

from lsmha.artifacts import write_json_atomic
from lsmha.tables import write_json


def test_writes_indented_json_with_a_trailing_newline_and_its_parents(tmp_path):
    path = write_json_atomic(tmp_path / "a" / "b" / "r.json", {"x": 1, "rows": [1.5, None]})
    text = path.read_text()
    assert text == '{\n  "x": 1,\n  "rows": [\n    1.5,\n    null\n  ]\n}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # no temporary left


def test_paths_and_numpy_values_are_written_as_json_values(tmp_path):
    doc = {"out": Path("runs/x"), "acc": np.float32(0.5), "n": np.int64(3), "m": np.arange(2)}
    back = json.loads(write_json_atomic(tmp_path / "r.json", doc).read_text())
    assert back == {"out": "runs/x", "acc": 0.5, "n": 3, "m": [0, 1]}


def test_another_object_is_refused_and_the_old_file_is_kept(tmp_path):
    path = write_json_atomic(tmp_path / "r.json", {"ok": True})
    with pytest.raises(TypeError, match="cannot write a value of type object as JSON"):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_the_json_option_writes_through_it_and_nothing_without_a_path(tmp_path):
    write_json(None, {"x": 1})
    write_json(tmp_path / "new" / "r.json", {"x": Path("p")})
    assert (tmp_path / "new" / "r.json").read_text() == '{\n  "x": "p"\n}\n'
    assert list(tmp_path.iterdir()) == [tmp_path / "new"]
