"""Training data and the training CLIs under bad input: corrupt or hostile data sets, damaged
run directories, and what a new user types."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lsmha.training.cli import main
from lsmha.training.data import load_dataset

TINY = ["--model", "cct_1_3x1", "--dim", "32", "--heads", "2", "--model-set", "conv_width=16"]
FAST = ["--limit-train", "32", "--limit-val", "16", "--batch-size", "16", "--set", "randaugment=false", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cifar_python(root, data, fine, coarse=None, raw: bytes | None = None):
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    coarse = [0] * len(fine) if coarse is None else coarse
    for split in ("train", "test"):
        doc = {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse}
        (d / split).write_bytes(raw if raw is not None else pickle.dumps(doc, protocol=2))
    return root


def _cifar_binary(root, records: np.ndarray):
    d = root / "cifar-100-binary"
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        records.astype(np.uint8).tofile(d / f"{split}.bin")
    return root


PIXELS = np.zeros((4, 3072), np.uint8)


@pytest.mark.parametrize(
    "data, fine, message",
    [
        (np.zeros((200, 3072), np.uint8), list(range(10)), r"200 images need 200 integer labels"),
        (np.full((4, 3072), 1000.0, np.float32), [0] * 4, r"data must be uint8 \(N, 3072\) pixels, got float32"),
        (PIXELS, [200, 0, 0, 0], r"labels span 0..200, expected 0..99"),
        (PIXELS, [-1, 0, 0, 0], r"labels span -1..0, expected 0..99"),
        (PIXELS, [255, 0, 0, 0], r"labels span 0..255"),
        (np.zeros((0, 3072), np.uint8), [], r"holds no images"),
        (PIXELS, ["a"] * 4, r"need 4 integer labels"),
    ],
)
def test_cifar100_python_files_are_checked_up_front(tmp_path, data, fine, message):
    """counts, dtypes and label ranges of CIFAR-100's python layout."""
    with pytest.raises(ValueError, match=message):
        load_dataset("cifar100", "train", _cifar_python(tmp_path, data, fine))


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", r"not a readable CIFAR-100 python file \(EOFError"),
        (pickle.dumps({b"data": PIXELS, b"fine_labels": [0] * 4}, protocol=2)[:200], r"not a readable CIFAR-100"),
        (pickle.dumps({b"other": 1}, protocol=2), r"expected a pickled dict with b'data' and b'fine_labels'"),
        (pickle.dumps([1, 2], protocol=2), r"expected a pickled dict.*found list"),
        (b"cos\nsystem\n(S'echo pwned'\ntR.", r"refusing os.system"),
    ],
)
def test_empty_truncated_keyless_and_malicious_pickles_are_value_errors(tmp_path, raw, message):
    """each is a ValueError (exit 2 at the CLI), never a traceback or code run."""
    with pytest.raises(ValueError, match=message):
        load_dataset("cifar100", "train", _cifar_python(tmp_path, None, [], raw=raw))


def test_cifar100_binary_files_are_checked(tmp_path):
    """an empty train.bin and out-of-range labels in the binary layout."""
    with pytest.raises(ValueError, match="holds no images"):
        load_dataset("cifar100", "train", _cifar_binary(tmp_path / "empty", np.zeros((0, 3074))))
    records = np.zeros((3, 3074))
    records[1, 1] = 200
    with pytest.raises(ValueError, match=r"labels span 0..200, expected 0..99"):
        load_dataset("cifar100", "train", _cifar_binary(tmp_path / "labels", records))
    records[1, 1], records[2, 0] = 5, 30  # coarse labels run 0..19
    with pytest.raises(ValueError, match=r"labels span 0..30, expected 0..19"):
        load_dataset("cifar100", "train", _cifar_binary(tmp_path / "labels", records), labels="coarse")


def test_bad_data_exits_2_with_one_line(tmp_path, capsys):
    """at the CLI, a malicious pickle is exit 2 and one line, not a traceback."""
    root = _cifar_python(tmp_path, None, [], raw=b"cos\nsystem\n(S'echo pwned'\ntR.")
    code = main(["run", *TINY, "--dataset", "cifar100", "--data-dir", str(root), *FAST, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "refusing os.system" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    assert main(["run", *TINY, "--dataset", "digits", *FAST, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_one_epoch_is_said_in_the_singular(digits_run, tmp_path, capsys):
    """"after 1 epoch", not "after 1 epochs"; and "already finished (1 epoch)" when run again."""
    out = tmp_path / "again"
    argv = ["run", *TINY, "--dataset", "digits", *FAST, "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    assert "after 1 epoch\n" in capsys.readouterr().out
    assert main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "already finished (1 epoch); nothing to do" in printed and "after 1 epoch\n" in printed


def test_eval_defaults_to_the_data_set_the_checkpoint_records(digits_run, capsys):
    """`lsmha-train eval CKPT` evaluates on the checkpoint's own data set."""
    assert main(["eval", str(digits_run / "model.safetensors"), "--limit-val", "16", "--device", "cpu"]) == 0
    assert "digits" in capsys.readouterr().out


def test_shp_defaults_to_the_data_set_the_checkpoint_records(digits_run):
    """`lsmha-shp --checkpoint CKPT` without --dataset reads the checkpoint's."""
    from lsmha.analysis.cli import build_parser

    args = build_parser().parse_args(["--checkpoint", str(digits_run / "model.safetensors"), "--out", "x"])
    assert args.dataset is None  # resolved from the checkpoint's facts when the run starts


def test_truncated_train_state_says_how_to_get_out(digits_run, tmp_path, capsys):
    """a truncated train_state.pt names itself and the way out."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(digits_run, out)
    state = out / "train_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    (out / "model.safetensors").unlink()
    code = main(["run", *TINY, "--dataset", "digits", *FAST, "--epochs", "1", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "truncated or corrupt" in err and "move it away to start the run again" in err


def test_packaged_configs_are_listed_for_an_unknown_name(tmp_path, capsys):
    """`--config digits5` lists the packaged configs."""
    assert main(["committee", "--config", "digits5", "--dataset", "digits", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "no packaged committee config 'digits5'" in err and "digits4" in err and "table6" in err


def test_committee_refusal_does_not_mention_resume(tmp_path, capsys):
    """`committee` has no --resume, so its refusal must not ask for one."""
    out = tmp_path / "c"
    common = ["committee", "--config", "digits4", "--first", "1", "--dataset", "digits", *FAST, "--out", str(out)]
    assert main([*common, "--epochs", "1"]) == 0
    assert main([*common, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "--resume" not in err and "cannot continue" in err


def test_option_prefixes_are_not_taken(capsys):
    """`--epoch 2` is not silently read as `--epochs 2`."""
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *TINY, "--dataset", "digits", "--epoch", "2", "--out", "x"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unrecognized arguments: --epoch 2" in err
    assert err.startswith("usage: lsmha-train run ")  # the subcommand's usage, not the top level's


def test_sigterm_exits_with_a_message_and_how_to_resume(tmp_path):
    """SIGTERM during `lsmha-train run` is one line and exit 1, not a silent 143."""
    out = tmp_path / "run"
    args = ["run", *TINY, "--dataset", "synthetic", *FAST, "--epochs", "1000", "--out", str(out)]
    log = tmp_path / "log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "lsmha.training.cli", *args], env=ENV, stdout=f, stderr=f)
    deadline = time.monotonic() + 120
    while not (out / "train_state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1, log.read_text()
    assert "lsmha-train run: interrupted; run the same command with --resume" in log.read_text()
