"""lsmha-serve options that cannot work are usage errors before anything loads or binds."""

from __future__ import annotations

import socket

import pytest

from lsmha.serving.cli import main
from lsmha.serving.config import ServeConfig


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--max-delay-ms", "inf", "max_delay_ms=inf"),
        ("--max-delay-ms", "nan", "max_delay_ms=nan"),
        ("--max-body-mb", "inf", "max_body_mb=inf"),
        ("--max-body-mb", "1e-9", "max_body_mb=1e-09"),  # would refuse every request
        ("--body-timeout-s", "inf", "body_timeout_s=inf"),
        ("--shutdown-timeout-s", "nan", "shutdown_timeout_s=nan"),
        ("--header-timeout-s", "0", "header_timeout_s=0.0"),
        ("--header-timeout-s", "inf", "header_timeout_s=inf"),
        ("--max-connections", "0", "max_connections=0"),
        ("--name", "", "bad model name ''"),
        ("--name", "a/b", "bad model name 'a/b'"),
        ("--name", "..", "bad model name '..'"),
    ],
)
def test_unusable_settings_exit_2(tmp_path, capsys, option, value, message):
    """--max-delay-ms inf (every request would hang), --max-body-mb inf (every
    infer a 500) and names no URL reaches are refused with exit 2."""
    assert main([str(tmp_path), option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lsmha-serve: error: ") and message in err, err


def test_ordinary_names_and_settings_pass():
    assert ServeConfig(name="cifar100-committee_v2.1", max_delay_ms=0, max_body_mb=64).max_body_bytes == 64 << 20


def test_busy_port_is_named(serving_export, capsys):
    """a port another process listens on is `lsmha-serve: error:` naming it (exit 2)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([str(serving_export), "--port", str(port), "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert f"lsmha-serve: error: cannot listen on 127.0.0.1:{port}: Address already in use" in err, err
