"""Every command's --help: each default shown at most once, none for required options."""

import argparse
import re

import pytest

from lsmha.analysis.cli import main as shp_main
from lsmha.bench.cli import main as bench_main
from lsmha.cli_help import HelpFormatter, subparsers
from lsmha.export.cli import main as export_main
from lsmha.serving.cli import main as serve_main
from lsmha.training.cli import main as train_main

COMMANDS = [
    (bench_main, ["latency"]),
    (bench_main, ["train"]),
    (bench_main, ["plot"]),
    (bench_main, ["serve"]),
    (bench_main, ["gpu"]),
    (export_main, ["onnx"]),
    (export_main, ["verify"]),
    (export_main, ["aoti"]),
    (export_main, ["tensorrt"]),
    (export_main, ["triton"]),
    (train_main, ["run"]),
    (train_main, ["committee"]),
    (train_main, ["eval"]),
    (shp_main, []),
    (serve_main, []),
]


@pytest.mark.parametrize("main, argv", COMMANDS, ids=lambda c: " ".join(c) if isinstance(c, list) else c.__module__)
def test_help_shows_each_default_once(main, argv, capsys):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert "(default: None)" not in text and "(default: )" not in text and "(default: False)" not in text
    for option in re.split(r"\s(?=-{1,2}[a-z])", text):
        assert option.count("default") <= 1, option


def test_formatter_writes_list_defaults_as_the_option_takes_them():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--batch", default=[1, 8], help="batch sizes")
    parser.add_argument("--out", required=True, help="where")
    parser.add_argument("--level", default=5, help="level; 100%% is the most")
    text = " ".join(parser.format_help().split())
    assert "batch sizes (default: 1,8)" in text and "level; 100% is the most (default: 5)" in text
    assert "where (default" not in text


PARSERS = {
    "lsmha-train": train_main,
    "lsmha-shp": shp_main,
    "lsmha-export": export_main,
    "lsmha-bench": bench_main,
    "lsmha-serve": serve_main,
}


def _build(prog: str) -> argparse.ArgumentParser:
    import importlib

    return importlib.import_module(PARSERS[prog].__module__).build_parser()


@pytest.mark.parametrize("prog", [*PARSERS, "python -m lsmha.bench.gpu_cli"])
def test_no_parser_takes_an_abbreviated_option(prog, capsys):
    if prog.startswith("python"):
        from lsmha.bench import gpu_cli

        with pytest.raises(SystemExit):
            gpu_cli.main(["--plan", "--dead", "100"])
        assert "unrecognized arguments: --dead 100" in capsys.readouterr().err
        return
    parsers = subparsers(_build(prog))
    assert len(parsers) >= 1 and all(not p.allow_abbrev for p in parsers)


@pytest.mark.parametrize(
    "main, argv, message",
    [
        (train_main, ["run", "--model", "m", "--out", "x", "--epoch", "2"], "lsmha-train run: error: --epoch 2"),
        (bench_main, ["latency", "--bud", "1"], "lsmha-bench latency: error: --bud 1"),
        (export_main, ["onnx", "cct_2_3x2", "-o", "x", "--per-mem"], "lsmha-export onnx: error: --per-mem"),
        (shp_main, ["--checkpoint", "c", "--out", "o", "--head-epoch", "3"], "lsmha-shp: error: --head-epoch 3"),
        (serve_main, ["dir", "--max-b", "3"], "lsmha-serve: error: --max-b 3"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "",
)
def test_an_abbreviated_option_is_refused(main, argv, message, capsys):
    """argparse would take `--epoch 2` for `--epochs 2`: every command refuses it instead."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    where, unknown = message.split("error: ")
    assert f"{where}error: unrecognized arguments: {unknown}" in capsys.readouterr().err


SUBCOMMANDS = [
    (prog, name)
    for prog in ("lsmha-train", "lsmha-export", "lsmha-bench")
    for action in _build(prog)._actions
    if isinstance(action, argparse._SubParsersAction)
    for name in action.choices
]


@pytest.mark.parametrize("prog, name", SUBCOMMANDS, ids=" ".join)
def test_a_subcommand_error_shows_that_subcommand_usage(prog, name, capsys):
    with pytest.raises(SystemExit) as done:
        PARSERS[prog]([name, "--no-such-option"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog} {name} ") and f"\n{prog} {name}: error: " in err, err
