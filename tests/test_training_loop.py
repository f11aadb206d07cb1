"""The training loop end to end on tiny models: files, resume (also after kill -9),
bad configurations, committees, 2-process gloo DDP, throughput."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lsmha
from lsmha.artifacts import read_committee
from lsmha.metrics import accuracy
from lsmha.training import committee_report, load_recipe
from lsmha.training.cli import main
from lsmha.training.evaluate import predict_logits
from lsmha.training.state import load_state
from lsmha.training.throughput import measure

TINY = [
    "--model",
    "cct_1_3x2",
    "--dim",
    "32",
    "--heads",
    "2",
    "--model-set",
    "pool=all",
    "--model-set",
    "conv_width=16",
]
FAST = ["--limit-train", "64", "--limit-val", "32", "--batch-size", "32", "--set", "randaugment=false", "--no-progress"]
SYNTH = ["--dataset", "synthetic", *FAST]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_checkpoint_logits_metrics_and_resume_of_finished_run_does_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, *SYNTH, "--epochs", "2", "--out", str(out), "--json", str(tmp_path / "r.json")]) == 0
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["lr"] < rows[0]["lr"] and rows[1]["weight_decay"] < rows[0]["weight_decay"]  # both annealed
    model = lsmha.load(out / "model.safetensors")
    logits, labels = np.load(out / "val_logits.npy"), np.load(out / "val_labels.npy")
    assert logits.shape == (32, 10) and model.facts["epochs"] == 2 and model.facts["dataset"] == "synthetic"
    assert model.facts["val_accuracy"] == accuracy(logits, labels) == rows[1]["val_accuracy"]
    images, _ = lsmha.training.load_dataset("synthetic", "val", limit=32)
    assert np.allclose(predict_logits(model, images).numpy(), logits, atol=1e-4)

    assert main(["eval", str(out / "model.safetensors"), "--dataset", "synthetic", "--limit-val", "32"]) == 0
    assert f"{model.facts['val_accuracy']:.4f}" in capsys.readouterr().out

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["run", *TINY, *SYNTH, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert "already finished (2 epochs); nothing to do" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp and len(_metrics(out)) == 2

    assert main(["run", *TINY, *SYNTH, "--epochs", "2", "--out", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["run", *TINY, *SYNTH, "--epochs", "3", "--out", str(out), "--resume"]) == 2
    assert "was started with recipe.epochs=2 (now 3)" in capsys.readouterr().err
    assert main(["run", *TINY[:3], "64", *TINY[4:], *SYNTH, "--epochs", "2", "--out", str(out), "--resume"]) == 2
    assert "was started with spec.dim=32 (now 64)" in capsys.readouterr().err

    fresh = tmp_path / "typo"  # --resume where no run is: said, then a fresh run
    assert main(["run", *TINY, *SYNTH, "--epochs", "1", "--out", str(fresh), "--resume"]) == 0
    assert "holds no run yet; starting a fresh one" in capsys.readouterr().err and len(_metrics(fresh)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "cct_9_9x9"], "unknown model 'cct_9_9x9'"),
        (["--model", "cct_1_3x2", "--dim", "32", "--heads", "3"], "dim=32 is not divisible by block 1's heads=3"),
        ([*TINY, "--dataset", "cifar100", "--data-dir", "{tmp}/absent"], "no complete CIFAR-100"),
        ([*TINY, "--set", "learning_rate=1e-3"], r"unknown recipe key(s) ['learning_rate']"),
        ([*TINY, "--recipe", "{tmp}/bad.toml"], r"unknown recipe key(s) ['warmup']"),
        ([*TINY, "--set", "lr=abc"], "--set lr=abc: lr expects a float, got 'abc'"),
        ([*TINY, "--set", "randaugment=maybe"], "randaugment expects true/false (or 1/0, yes/no), got 'maybe'"),
        ([*TINY, "--set", "seed=abc"], "seed expects an int, got 'abc'"),
    ],
)
def test_bad_configuration_fails_before_training(tmp_path, capsys, args, message):
    (tmp_path / "bad.toml").write_text("lr = 1e-3\nwarmup = 5\n")
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    dataset = [] if "--dataset" in args else ["--dataset", "synthetic"]
    assert main(["run", *args, *dataset, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written, nothing trained


def test_committee_trains_members_writes_manifest_and_report(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(
        '[recipe]\npreset = "backbone"\nepochs = 1\n[common]\npool = "all"\nconv_width = 16\n'
        '[[members]]\nmodel = "cct_1_3x2"\ndim = 32\nheads = 2\npaper_accuracy = 0.8\n'
        '[[members]]\nmodel = "cct_2_3x2"\ndim = 32\nheads = 4\n'
    )
    out = tmp_path / "committee"
    args = ["committee", "--config", str(config), *SYNTH, "--out", str(out), "--json", str(tmp_path / "rep.json")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    doc, paths = read_committee(out)
    assert len(paths) == 2 and doc["dataset"] == "synthetic" and doc["num_classes"] == 10
    logits = np.stack([np.load(p.parent / "val_logits.npy") for p in paths])
    expected = committee_report(logits, np.load(paths[0].parent / "val_labels.npy"), [p.parent.name for p in paths])
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["committee_accuracy"] == expected["committee_accuracy"] == doc["committee_accuracy"]
    assert report["mean_agreement"] == expected["mean_agreement"]
    assert f"{expected['committee_accuracy']:.4f}" in printed and "soft committee" in printed
    # the config's paper_accuracy is shown beside the measured one ("-" where it gives none)
    assert [m.get("paper_accuracy") for m in report["members"]] == [0.8, None]
    rows = [line.split() for line in printed.splitlines() if line.startswith(tuple(p.parent.name for p in paths))]
    assert [row[-1] for row in rows[-2:]] == ["0.8000", "-"] and "(paper: the paper's CIFAR-100" in printed
    epoch_lines = [line for line in printed.splitlines() if "epoch 1/1:" in line]
    assert [line.split()[0] for line in epoch_lines] == [p.parent.name for p in paths]  # whose progress it is
    assert main(args) == 0  # every member finished: nothing retrained
    assert capsys.readouterr().out.count("already finished") == 2


def _default_sigint() -> None:
    # a background shell starts its jobs with SIGINT ignored, and children inherit that; with the
    # default disposition Python installs its own handler, so Ctrl-C is a KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _launch(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lsmha.training.cli", *args],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV, preexec_fn=_default_sigint,
    )  # fmt: skip


@pytest.mark.slow
def test_resume_after_kill_9_continues_from_last_finished_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", *TINY, *SYNTH, "--epochs", "4", "--out", str(out)]
    proc = _launch(args, tmp_path / "log")
    deadline = time.monotonic() + 240
    while not (out / "train_state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, (tmp_path / "log").read_text()  # killed mid-run, not finished
    done = load_state(out / "train_state.pt")["epoch"]
    assert 1 <= done < 4 and not (out / "model.safetensors").exists()
    assert main([*args, "--resume"]) == 0
    assert f"resuming after epoch {done} of 4" in capsys.readouterr().out
    assert [r["epoch"] for r in _metrics(out)] == [1, 2, 3, 4]
    assert lsmha.load(out / "model.safetensors").facts["epochs"] == 4


@pytest.mark.slow
def test_two_process_gloo_ddp_on_digits(tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "lsmha.training.cli", "run", *TINY]
    cmd += ["--dataset", "digits", *FAST, "--limit-val", "45", "--epochs", "2", "--out", str(out)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["world_size"] == 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    # rows computed on two ranks, gathered back in order: the same as one process on the saved model
    model = lsmha.load(out / "model.safetensors")
    images, labels = lsmha.training.load_dataset("digits", "val", limit=45)
    logits = np.load(out / "val_logits.npy")
    assert logits.shape == (45, 10) and np.array_equal(np.load(out / "val_labels.npy"), labels.numpy())
    assert np.allclose(predict_logits(model, images).numpy(), logits, atol=1e-4)


def test_throughput_measure_runs_real_steps():
    torch.manual_seed(0)
    kw = dict(dim=32, heads=2, pool="all", conv_width=16, num_classes=10)
    bare = measure("cct_1_3x2", batch_size=8, device="cpu", augment=False, steps=2, warmup=1, **kw)
    full = measure("cct_1_3x2", batch_size=8, device="cpu", augment=True, steps=2, warmup=1, **kw)
    assert bare.images_per_s > 0 and full.images_per_s > 0 and full.augment and not bare.augment
    assert bare.images_per_s_p10 <= bare.images_per_s <= bare.images_per_s_p90


def test_digits_runs_the_digits_recipe_by_default_and_says_which_recipe_ran(tmp_path, capsys):
    out = tmp_path / "d"
    fast = ["--limit-train", "64", "--limit-val", "32", "--no-progress", "--epochs", "1"]
    assert main(["run", *TINY, "--dataset", "digits", *fast, "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("recipe digits (preset):") and "epochs=1" in first and "lr=0.002" in first
    recipe = json.loads((out / "run.json").read_text())["recipe"]
    assert recipe == {**load_recipe("digits").to_dict(), "epochs": 1}
    assert main(["run", *TINY, *SYNTH, "--epochs", "1", "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.startswith("recipe backbone (preset):")


def test_help_names_the_default_recipes_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "digits for --dataset digits, backbone otherwise" in text and "exit status: 0 ok" in text


@pytest.mark.slow
def test_default_digits_recipe_learns_in_its_few_epochs(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["run", *TINY, "--dataset", "digits", "--no-progress", "--out", str(out)]) == 0
    rows = _metrics(out)
    assert len(rows) == load_recipe("digits").epochs and rows[-1]["val_accuracy"] > 0.8  # chance is 0.1


def _state_dicts_equal(a: Path, b: Path) -> bool:
    sa, sb = lsmha.load(a).state_dict(), lsmha.load(b).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_interrupted_run_says_how_to_resume_and_resumes_bit_identical(tmp_path):
    args = ["run", *TINY, *SYNTH, "--epochs", "4"]
    whole = subprocess.run([sys.executable, "-m", "lsmha.training.cli", *args, "--out", str(tmp_path / "whole")],
                           env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "cut"
    proc = _launch([*args, "--out", str(out)], tmp_path / "log")
    deadline = time.monotonic() + 240
    while not (out / "train_state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    log = (tmp_path / "log").read_text
    assert proc.wait() == 1, log()
    assert "interrupted; run the same command with --resume to continue after the last finished epoch" in log()
    assert load_state(out / "train_state.pt")["epoch"] < 4 and not (out / "model.safetensors").exists()
    resumed = subprocess.run([sys.executable, "-m", "lsmha.training.cli", *args, "--out", str(out), "--resume"],
                             env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert _state_dicts_equal(out / "model.safetensors", tmp_path / "whole" / "model.safetensors")
    drop = ("images_per_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in _metrics(out)] == [
        {k: v for k, v in r.items() if k not in drop} for r in _metrics(tmp_path / "whole")
    ]


def test_devices_this_machine_lacks_are_environment_errors(tmp_path, capsys):
    assert main(["run", *TINY, *SYNTH, "--device", "gpu0", "--out", str(tmp_path / "x")]) == 2
    assert "--device expects auto, cpu, cuda or cuda:N, got 'gpu0'" in capsys.readouterr().err
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main(["run", *TINY, *SYNTH, "--device", "cuda", "--out", str(tmp_path / "x")]) == 3
    assert "no CUDA device is available" in capsys.readouterr().err and not (tmp_path / "x").exists()
