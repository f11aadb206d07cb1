"""Hostile input to lsmha-serve beyond test_hardening_serving.py: names and versions far longer
than any model's, gRPC connections past --max-connections or silent after connecting, a gRPC
message limit past what gRPC can hold, and settings past any machine. Each gets its proper
answer and the server serves on. A stand-in committee (no engine) keeps each test under a second
or two."""

import socket
import time

import numpy as np
import pytest

from lsmha.serving import BackgroundServer, CommitteeService, ServeConfig
from lsmha.serving.cli import main

grpc = pytest.importorskip("grpc", reason="needs grpcio (the serve extra)")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")
from lsmha.serving.proto import kserve_v2_pb2 as pb  # noqa: E402

NAME = "lsmha_committee"
METHOD = "/inference.GRPCInferenceService/"


class ZeroCommittee:
    """A stand-in committee answering zeros at once."""

    img_size, in_chans, num_classes, members, backend = 32, 3, 10, ["a", "b"], "zeros"

    def __len__(self) -> int:
        return 2

    def predict_logits(self, images):
        return np.zeros((len(images), 10), np.float32)

    def close(self) -> None:
        pass


def _server(**settings) -> BackgroundServer:
    config = ServeConfig(**{"max_batch": 4, "max_delay_ms": 0, "warmup": False, **settings})
    return BackgroundServer(CommitteeService(ZeroCommittee, config), grpc=True)


@pytest.fixture(scope="module")
def server():
    with _server() as s:
        s.wait_ready()
        yield s


def _call(target: str, method: str, data: bytes, timeout: float = 10) -> bytes:
    with grpc.insecure_channel(target) as ch:
        return ch.unary_unary(METHOD + method)(data, timeout=timeout)


def _infer(target: str, model: str = NAME, version: str = "") -> bytes:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(bytes(3072))
    return _call(target, "ModelInfer", request.SerializeToString())


@pytest.mark.parametrize("model, version", [("m" * 100_000, ""), (NAME, "9" * 100_000)])
def test_a_huge_model_name_or_version_over_grpc_is_not_found_in_a_short_message(server, model, version):
    """The name echoed whole made the status details 100 kB, over a client's 16 KiB trailer
    limit: tritonclient saw RESOURCE_EXHAUSTED, not NOT_FOUND."""
    for method, message in [
        ("ModelInfer", None),
        ("ModelConfig", pb.ModelConfigRequest(name=model, version=version)),
        ("ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version)),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            if message is None:
                _infer(server.grpc_target, model, version)
            else:
                _call(server.grpc_target, method, message.SerializeToString())
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, (method, err.value.details()[:200])
        assert "characters)" in err.value.details() and len(err.value.details()) < 300


def test_status_details_are_cut_whatever_the_message():
    from lsmha.serving.grpc_service import MAX_DETAILS, status_details

    assert status_details("short") == "short"
    long = status_details("x" * 50_000)
    assert len(long) < MAX_DETAILS + 40 and long.endswith("... (50000 characters)")


@pytest.mark.parametrize("route", ["config", "stats", "versions/1/stats", "ready", ""])
def test_a_huge_model_name_over_http_is_a_short_404(server, route):
    path = f"/v2/models/{'a' * 60_000}/{route}".rstrip("/")
    answer = httpx.get(server.url + path, timeout=10)
    assert answer.status_code == 404 and len(answer.content) < 300, answer.content[:200]
    assert "characters)" in answer.json()["error"]
    version = httpx.get(f"{server.url}/v2/models/{NAME}/versions/{'1' * 5000}/config", timeout=10)
    assert version.status_code == 404 and len(version.content) < 300


def test_grpc_connections_past_the_cap_are_refused_and_silent_ones_closed():
    """--max-connections bounds gRPC connections too: sockets that never send HTTP/2's preface hold
    their places for --header-timeout-s at most, a call meanwhile is UNAVAILABLE, then served."""
    with _server(max_connections=2, header_timeout_s=1.0) as s:
        s.wait_ready()
        host, port = s.grpc_target.rsplit(":", 1)
        silent = [socket.create_connection((host, int(port))) for _ in range(2)]
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            _call(s.grpc_target, "ServerLive", b"", timeout=0.5)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        time.sleep(1.2)
        assert len(pb.ModelInferResponse.FromString(_infer(s.grpc_target)).raw_output_contents) == 2
        for sock in silent:
            sock.close()


def test_a_body_limit_past_2_gib_serves_grpc():
    """gRPC's message limit is a C int: --max-body-mb 4096 with --grpc-port crashed the start
    (OverflowError, exit 1 with a traceback); gRPC now takes 2 GiB - 1, protobuf's own bound."""
    with _server(max_body_mb=4096) as s:
        s.wait_ready()
        assert pb.ServerLiveResponse.FromString(_call(s.grpc_target, "ServerLive", b"")).live


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--max-batch", "99999999999", "max_batch=99999999999"),  # warm-up failed allocating 279 TiB, exit 1
        ("--max-queue", "10000000000000000000000", "max_queue=10000000000000000000000"),
        ("--max-connections", "99999999999999999999", "max_connections=99999999999999999999"),
    ],
)
def test_settings_past_any_machine_exit_2(tmp_path, capsys, option, value, message):
    assert main([str(tmp_path), option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lsmha-serve: error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "0"], "--target is the agreement"),
        (["--target", "1.5"], "--target is the agreement"),
        (["--target", "nan"], "--target is the agreement"),
        (["--limit", "-5"], "--limit takes the number"),  # calibrated on all but the last 5, exit 0
        (["--limit", "0"], "--limit takes the number"),  # calibrated on every image, exit 0
        (["--order", "0,0,1"], "argument --order: expected each member index once"),
        (["--order", "1,-1"], "argument --order: expected each member index once"),
    ],
)
def test_calibrate_refuses_bad_values_before_touching_the_export(serving_export, tmp_path, capsys, extra, message):
    """Checked before member graphs are written or run (a bad --target used to fail after both,
    naming `target`, not the option)."""
    import shutil

    from lsmha.export.cli import main as export_main

    export = shutil.copytree(serving_export, tmp_path / "export")
    before = sorted(p.name for p in export.iterdir())
    code = _exit_code(export_main, ["calibrate", str(export), "--dataset", "synthetic", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().splitlines()[-1].startswith("lsmha-export"), err
    assert sorted(p.name for p in export.iterdir()) == before


def _exit_code(main_function, argv: list[str]) -> int:
    """A CLI's exit status, whether it returns it or argparse exits."""
    try:
        return main_function(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("calibrated", ["missing", "plain"])
def test_bench_latency_adaptive_checks_the_export_before_the_sweep(serving_export, tmp_path, capsys, calibrated):
    """A directory without thresholds used to be refused only after the random-weight rows (minutes)."""
    from lsmha.bench.cli import main as bench_main

    directory = tmp_path / "nothing" if calibrated == "missing" else serving_export
    start = time.monotonic()
    assert _exit_code(bench_main, ["latency", "--adaptive", str(directory), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lsmha-bench: error: --adaptive ") and err.count("\n") == 1, err
    assert time.monotonic() - start < 10


def test_calls_on_one_grpc_connection_are_bounded():
    """At most --max-queue + --max-batch calls at once on one connection: HTTP/2 refuses more
    (UNAVAILABLE, REFUSED_STREAM), never INTERNAL, and the connection serves on."""
    with _server(max_queue=2, max_batch=1) as s:
        s.wait_ready()
        request = pb.ModelInferRequest(model_name=NAME)
        request.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
        request.raw_input_contents.append(bytes(3072))
        with grpc.insecure_channel(s.grpc_target) as ch:
            infer = ch.unary_unary(METHOD + "ModelInfer")
            futures = [infer.future(request.SerializeToString(), timeout=30) for _ in range(60)]
            codes = [f.code() for f in futures]
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
            refused = [f.details() for f in futures if f.code() != grpc.StatusCode.OK]
            assert any("RST_STREAM" in d for d in refused), refused[:3]
            assert len(infer(request.SerializeToString(), timeout=30)) > 0


def test_a_busy_grpc_port_names_grpc_port(serving_export, capsys):
    """It used to say `choose another --port`, the HTTP option."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([str(serving_export), "--port", "0", "--grpc-port", str(port), "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err and "another --grpc-port" in err, err
