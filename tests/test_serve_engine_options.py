"""lsmha-serve's engine flags (--precision, --mode, --threads, --cache-dir) and --grpc-port:
what the chosen backend cannot take is exit 2 naming the flag, before anything loads or binds."""

from __future__ import annotations

import socket

import pytest

from lsmha.serving.cli import build_parser, main
from lsmha.serving.engine_options import backend_options


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--backend", "onnxruntime", "--mode", "latency"], "--mode is not an option of --backend onnxruntime"),
        (["--backend", "torch", "--cache-dir", "cache"], "--cache-dir is not an option of --backend torch"),
        (["--backend", "onnxruntime", "--precision", "fp64"], "--precision fp64: backend option precision='fp64'"),
        (["--backend", "openvino", "--mode", "fastest"], "--mode fastest: backend option mode='fastest'"),
        (["--grpc-port", "70000"], "--grpc-port must be between 0 and 65535"),
        (["--port", "8123", "--grpc-port", "8123"], "and not --port"),
    ],
)
def test_flags_the_backend_cannot_take_exit_2(serving_export, capsys, flags, message):
    assert main([str(serving_export), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lsmha-serve: error: ") and message in err, err


def test_flags_become_the_backends_options(serving_export):
    """What each backend takes passes, typed as Committee.load's options; auto takes what any may open takes."""
    parse = build_parser().parse_args

    def options(*flags: str) -> dict:
        return backend_options(parse([str(serving_export), *flags]))

    assert options("--backend", "openvino", "--mode", "latency", "--precision", "fp32", "--cache-dir", "c") == {
        "mode": "latency",
        "precision": "fp32",
        "cache_dir": "c",
    }
    assert options("--backend", "onnxruntime", "--threads", "1") == {"threads": 1}
    assert options("--mode", "throughput") == {"mode": "throughput"}  # auto: openvino takes it


def test_busy_grpc_port_is_named(serving_export, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([str(serving_export), "--port", "0", "--grpc-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err, err
