"""Every command's --help: each default shown at most once, none for required options."""

import argparse
import re

import pytest

from lsmha.analysis.cli import main as shp_main
from lsmha.bench.cli import main as bench_main
from lsmha.cli_help import HelpFormatter
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
