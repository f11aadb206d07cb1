"""Exports and training runs that do not finish: killed half-way, a full disk, a read-only
directory."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from lsmha import Committee, create_model
from lsmha.artifacts import read_manifest
from lsmha.export import export_onnx
from lsmha.export.directory import write_weights

MEMBER = "cct_1_3x1:dim=32:heads=2:num_classes=10"


def _models():
    torch.manual_seed(0)
    return [create_model("cct_1_3x1", dim=32, heads=2, num_classes=10).eval() for _ in range(2)]


def test_export_killed_after_the_weights_is_refused(tmp_path, monkeypatch):
    """the directory an export leaves when it dies once the weights are written
    but before the graphs are listed does not load as a committee."""
    from lsmha.export import onnx as onnx_export

    def killed(*args, **kw):
        raise KeyboardInterrupt  # the files on disk are those kill -9 would leave here

    monkeypatch.setattr(onnx_export, "export_scope_onnx", killed)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(_models(), tmp_path / "cut")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == [
        "manifest.json",
        "member0.safetensors",
        "member1.safetensors",
    ]
    with pytest.raises(ValueError, match=r"did not finish \(interrupted or failed\).*--force"):
        Committee.load(tmp_path / "cut", backend="torch")
    manifest = export_onnx(_models(), tmp_path / "cut", force=True)  # the way out the message names
    assert manifest.complete and read_manifest(tmp_path / "cut").complete
    write_weights(_models(), tmp_path / "weights")  # a weights-only directory is complete as written
    assert len(Committee.load(tmp_path / "weights", backend="torch").specs) == 2


def _no_space():
    def save_model(proto, target, **kw):
        with open(target, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    return save_model


def test_full_disk_during_export_is_one_line_exit_3_without_temporaries(tmp_path, monkeypatch, capsys):
    """ENOSPC while the graph is written: exit 3, one line naming the path and
    the cause, no .tmp left, and the half-written directory refused."""
    import onnx

    from lsmha.export.cli import main

    monkeypatch.setattr(onnx, "save_model", _no_space())
    out = tmp_path / "export"
    assert main(["onnx", MEMBER, MEMBER, "-o", str(out), "--no-progress"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "committee" in err[0] and "No space left on device" in err[0], err
    assert err[0].startswith("lsmha-export: error: ") and "Traceback" not in err[0]
    assert not list(out.glob("*.tmp"))
    with pytest.raises(ValueError, match="did not finish"):
        read_manifest(out)


def test_read_only_directory_during_training_is_one_line_without_temporaries(tmp_path, monkeypatch, capsys):
    """the run directory turns read-only (EROFS) as the state is saved: exit 3,
    one line naming train_state.pt.tmp and the cause, the temporary removed."""
    from lsmha.training import state
    from lsmha.training.cli import main

    def read_only(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), f.name)

    monkeypatch.setattr(state.torch, "save", read_only)
    out = tmp_path / "run"
    args = ["run", "--model", "cct_1_3x1", "--dim", "32", "--heads", "2", "--dataset", "synthetic"]
    fast = ["--limit-train", "16", "--limit-val", "16", "--batch-size", "16", "--set", "randaugment=false"]
    assert main([*args, *fast, "--no-progress", "--epochs", "1", "--out", str(out)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lsmha-train run: error: {out / 'train_state.pt.tmp'}: Read-only file system"]
    assert not list(out.glob("*.tmp"))


def test_permission_denied_is_a_failure_naming_the_path(tmp_path, monkeypatch, capsys):
    """a directory the user may not write (EACCES) is exit 1 with the path."""
    from pathlib import Path

    from lsmha.export.cli import main

    real = Path.write_bytes

    def denied(self, data):
        if self.suffix == ".tmp":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", denied)
    out = tmp_path / "export"
    assert main(["onnx", MEMBER, "-o", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lsmha-export: error: {out / 'member0.safetensors.tmp'}: Permission denied"]
