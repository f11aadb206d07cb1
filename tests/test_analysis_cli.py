"""`lsmha-shp` end to end on the embedded digits set with a small trained CCT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsmha.analysis import block as block_module
from lsmha.analysis.block import BlockResult
from lsmha.analysis.cli import main, parse_blocks
from lsmha.analysis.clusters import block_row
from lsmha.models import CCT, CCTSpec, save
from lsmha.training.data import load_dataset

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def one_thread():
    # tiny tensors: one thread avoids OpenMP hand-off costs on a shared 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A 2-block CCT (2 heads, then 4) trained for 60 AdamW steps on digits, and its val accuracy."""
    torch.manual_seed(0)
    spec = CCTSpec(
        n_conv=2, n_blocks=2, dim=32, heads=(2, 4), num_classes=10, img_size=32, pool="all", conv_width=16,
        attn_dropout=0.0, drop_path=0.0, name="tiny_digits",
    )  # fmt: skip
    model = CCT(spec)
    x, y = load_dataset("digits", "train")
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        i = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xv, yv = load_dataset("digits", "val")
    with torch.no_grad():
        acc = float((model(xv).argmax(1) == yv).float().mean())
    path = save(model, tmp_path_factory.mktemp("ck") / "tiny.safetensors", dataset="digits", accuracy=acc)
    return path, acc


def shp(ck, out, *extra):
    return main(
        ["--checkpoint", str(ck), "--dataset", "digits", "--out", str(out), "--quiet", "--threads", "1", *extra]
    )


@pytest.mark.slow
def test_end_to_end_tables_figures_and_resume(trained, tmp_path, capsys, monkeypatch):
    ck, acc = trained
    assert acc > 0.4  # the backbone learned something (chance is 0.1)
    out = tmp_path / "shp"
    assert shp(ck, out, "--threshold", "0.3", "--head-epochs", "4") == 0
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    expected = [f"block1_head{h}_theta0.3.png" for h in (1, 2)] + [f"block2_head{h}_theta0.3.png" for h in (1, 2, 3, 4)]
    expected += ["block1_head1_shp_vs_hp.png", "block2_head1_shp_vs_hp.png", "blocks_acc_snr.png"]
    assert figures == sorted(expected)
    for name in figures:
        data = (out / "figures" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    capsys.readouterr()

    # rerun with two thresholds: finished blocks are reused, not measured again
    def must_not_run(*a, **k):
        raise AssertionError("a stored block was measured again")

    monkeypatch.setattr(block_module, "analyse_block", must_not_run)  # `run` imports it when called
    json_path = str(tmp_path / "s.json")
    assert shp(ck, out, "--threshold", "0.3", "0.6", "--head-epochs", "4", "--no-figures", "--json", json_path) == 0
    printed = capsys.readouterr().out
    assert "| Block | H | Attn. Acc. | N_c | C_s | Diag | n | N_label | N_noise | N_inter | SNR |" in printed
    assert "## θ = 0.3" in printed and "## θ = 0.6" in printed
    assert (out / "shp_table.md").read_text().strip() == printed.strip()
    csv_lines = (out / "shp_table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("theta,block,heads,labels,attn_acc") and len(csv_lines) == 1 + 4

    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc == json.loads((out / "shp.json").read_text())
    assert [(r["theta"], r["block"], r["heads"]) for r in doc["rows"]] == [
        (0.3, 1, 2), (0.6, 1, 2), (0.3, 2, 4), (0.6, 2, 4)
    ]  # fmt: skip
    for r in doc["rows"]:
        assert r["labels"] == 10 and 0.1 < r["attn_acc"] <= 1.0

    # the table rows are the statistics of the stored matrices
    for block in (1, 2):
        rec = BlockResult.load(out / "blocks" / f"block{block}_attn.npz")
        assert rec.raw.shape == ((2, 10, 10) if block == 1 else (4, 10, 10))
        normalised, _ = rec.normalised()
        row, stats = block_row(normalised, 0.3, rec.attn_acc, block)
        stored = next(r for r in doc["rows"] if r["block"] == block and r["theta"] == 0.3)
        assert stored["diag"] == pytest.approx(row.diag) and stored["n"] == pytest.approx(row.n)
        per_head = doc["blocks"][block - 1]["thresholds"]["0.3"]["heads"]
        assert [h["clusters"] for h in per_head] == [[list(c) for c in s.clusters] for s in stats]
        assert all(np.isclose(np.nanmax(m), 1.0) for m in normalised)

    # other head settings invalidate the stored blocks
    with pytest.raises(AssertionError, match="measured again"):
        shp(ck, out, "--head-epochs", "5", "--no-figures", "--blocks", "2")


def test_output_truncation_measures_after_the_block(trained, tmp_path, capsys):
    ck, _ = trained
    out = tmp_path / "o"
    assert shp(ck, out, "--at", "output", "--blocks", "2", "--head-epochs", "2", "--no-figures") == 0
    assert (out / "blocks" / "block2_output.npz").is_file() and "truncated at output" in capsys.readouterr().out


def _exit_code(call) -> int:
    try:
        return call()
    except SystemExit as done:  # argparse's own checks (choices, types) exit from parse_args
        return done.code


def test_bad_usage_and_bad_input_files_exit_2(trained, tmp_path, capsys):
    ck, _ = trained
    for bad in (["--blocks", "3"], ["--blocks", "2-1"], ["--threshold", "1.5"], ["--at", "qkv"], ["--batch-size", "0"]):
        assert _exit_code(lambda bad=bad: shp(ck, tmp_path / "x", *bad)) == 2, bad
    err = capsys.readouterr().err
    assert "model has blocks 1..2" in err and "--threshold values must lie in [0, 1), got [1.5]" in err
    assert main(["--checkpoint", str(tmp_path / "none.safetensors"), "--dataset", "digits", "--out", "x"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_thresholds_are_documented_and_refused_as_the_option_takes_them(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.3 0.6)" in text and "0.3,0.6" not in text and "exit status: 0 ok" in text
    code = _exit_code(lambda: main(["--checkpoint", "c", "--out", "o", "--threshold", "0.3,0.6"]))
    assert code == 2 and "give thresholds space-separated, e.g. --threshold 0.3 0.6" in capsys.readouterr().err


def test_parse_blocks():
    assert parse_blocks("all", 3) == [1, 2, 3]
    assert parse_blocks("1,3,5-7", 7) == [1, 3, 5, 6, 7]
    assert parse_blocks("2", 2) == [2]
    with pytest.raises(ValueError, match="comma list"):
        parse_blocks("a-b", 7)
    with pytest.raises(ValueError, match=r"blocks \[8\]"):
        parse_blocks("7-8", 7)
