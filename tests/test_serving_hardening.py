"""`lsmha-serve` as its own process against hostile and broken clients: one test per failure
mode (label explosion, stalled bodies and shutdown, requests that used to be 500s, client
disconnects, oversized JSON, exit status and a committee.json without members)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lsmha.serving.protocol import encode_images

NAME = "lsmha_committee"
pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (SIGTERM)")


class Process:
    """`python -m lsmha.serving.cli` on a free loopback port, its log in a file."""

    def __init__(self, directory, log_path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "lsmha.serving.cli", str(directory), "--port", str(self.port)]
        cmd += ["--backend", "onnxruntime", "--max-batch", "4", "--threads", "1", "--log-level", "info", *extra]
        self.log = log_path.open("w")  # noqa: SIM115 (the process writes it until stop() closes it)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            assert self.proc.poll() is None, f"lsmha-serve exited {self.proc.returncode}: {self.log_text()}"
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"lsmha-serve not ready: {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def infer(self, content: bytes, name: str = NAME, **kw) -> httpx.Response:
        return httpx.post(f"{self.url}/v2/models/{name}/infer", content=content, timeout=30, **kw)


@pytest.fixture(scope="module")
def server(serving_export, tmp_path_factory):
    p = Process(serving_export, tmp_path_factory.mktemp("log") / "serve.log")
    yield p
    p.stop()


def _raw(port: int, head: bytes, body: bytes) -> socket.socket:
    """A connection that sent `head` and `body` and stays open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head + body)
    return sock


def _stalled_request(port: int, declared: int = 5000, sent: int = 100) -> socket.socket:
    head = (
        f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    return _raw(port, head, b" " * sent)


def _json_error(r: httpx.Response, status: int, message: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert message in r.json()["error"], r.text


def _healthy(server) -> None:
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    r = server.infer(json.dumps(encode_images(x)).encode())
    assert r.status_code == 200, r.text


def test_unknown_model_names_share_one_metric_label(server):
    names = [f"model-{i}-" + "x" * 1000 for i in range(40)]
    for name in names:
        _json_error(server.infer(b"{}", name=name), 404, "unknown model")
    samples = server.metrics()
    models = {dict(labels)["model"] for (n, labels) in samples if n == "lsmha_requests_total"}
    assert len(models) <= 2 and not any(name in m for m in models for name in names), models
    unknown = [v for (n, labels), v in samples.items() if n == "lsmha_requests_total" and dict(labels)["model"] != NAME]
    assert unknown == [40.0]
    assert samples[("lsmha_errors_total", (("kind", "unknown_model"),))] >= 40


def test_requests_that_were_500s_are_400s_with_json_errors(server):
    before = server.metrics()[("lsmha_batch_size_count", ())]
    _json_error(server.infer(b"[" * 100_000), 400, "nested")
    body = json.dumps(encode_images(np.zeros((1, 32, 32, 3), np.uint8))).encode()
    _json_error(server.infer(body, headers={"Inference-Header-Content-Length": b"\xb2"}), 400, "Inference-Header")
    lone = body[:-1] + b', "id": "\\ud800"}'
    _json_error(server.infer(lone), 400, "'id'")
    data = np.zeros((3072, 1), np.uint8).tolist()
    doc = {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": data}]}
    _json_error(server.infer(json.dumps(doc).encode()), 400, "nested")
    assert server.metrics()[("lsmha_batch_size_count", ())] == before  # no refused request reached a batch
    _healthy(server)


def test_client_disconnects_are_counted_as_such_and_logged_once(server):
    def errors(kind):
        return server.metrics().get(("lsmha_errors_total", (("kind", kind),)), 0.0)

    internal, disconnected = errors("internal"), errors("disconnected")
    for _ in range(5):
        sock = _stalled_request(server.port)
        time.sleep(0.05)
        sock.close()
    deadline = time.monotonic() + 10
    while errors("disconnected") < disconnected + 5:
        assert time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.05)
    assert errors("internal") == internal
    log = server.log_text()
    assert "Traceback" not in log and log.count("disconnected") <= 5 + 1, log[-3000:]
    _healthy(server)


def test_json_larger_than_any_request_needs_is_refused_unparsed_and_health_answers(server):
    images = np.zeros((4, 32, 32, 3), np.uint8).tolist()  # the 4 images --max-batch allows
    huge = {"inputs": [{"name": "images", "shape": [4, 32, 32, 3], "datatype": "UINT8", "data": images}]}
    body = json.dumps(huge, indent=40).encode()  # whitespace: 2.5 MB, about 40x what 4 images need
    _json_error(server.infer(body), 413, "JSON")

    done, latencies = [], []

    def big():
        done.append(server.infer(body).status_code)

    threads = [threading.Thread(target=big) for _ in range(6)]
    for t in threads:
        t.start()
    with httpx.Client(timeout=30) as http:
        while any(t.is_alive() for t in threads):
            start = time.perf_counter()
            assert http.get(f"{server.url}/v2/health/live").status_code == 200
            latencies.append(time.perf_counter() - start)
    for t in threads:
        t.join()
    assert done == [413] * 6 and latencies


def test_stalled_bodies_get_a_json_408_and_their_connection_closed(serving_export):
    from lsmha.engine import Committee
    from lsmha.serving import BackgroundServer, CommitteeService, ServeConfig

    config = ServeConfig(max_batch=4, body_timeout_s=0.5)
    service = CommitteeService(lambda: Committee.load(serving_export, "onnxruntime"), config)
    with BackgroundServer(service) as s:
        s.wait_ready()
        stalled = [_stalled_request(s.port) for _ in range(20)]
        for sock in stalled:  # each: a JSON 408 once the body timeout passed, then EOF
            sock.settimeout(20)
            answer = b"".join(iter(lambda sock=sock: sock.recv(65536), b""))
            assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s (100 of 5000" in answer, answer
            sock.close()
        assert service.metrics.value("lsmha_errors_total", kind="timeout") == 20
        x = np.zeros((1, 32, 32, 3), np.uint8)
        r = httpx.post(f"{s.url}/v2/models/{NAME}/infer", json=encode_images(x), timeout=30)
        assert r.status_code == 200


def test_sigterm_with_a_stalled_client_exits_0_within_the_shutdown_bound(serving_export, tmp_path):
    p = Process(serving_export, tmp_path / "serve.log", "--body-timeout-s", "60", "--shutdown-timeout-s", "1")
    try:
        held = _stalled_request(p.port)  # would hold its request for the 60 s body timeout
        time.sleep(0.3)
        start = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(timeout=30) == 0, p.log_text()[-3000:]
        assert time.monotonic() - start < 20, "the shutdown waited for the stalled body"
        held.settimeout(10)
        answer = b"".join(iter(lambda: held.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 503") and b"shutting down" in answer, answer
        assert "Traceback" not in p.log_text(), p.log_text()[-3000:]
        held.close()
    finally:
        p.stop()


def test_committee_json_without_members_is_a_clear_usage_error(tmp_path, capsys):
    from lsmha.serving.cli import main

    (tmp_path / "committee.json").write_text(json.dumps({"format": "lsmha-committee-1", "num_classes": 10}))
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "members" in err and "committee.json" in err, err


def test_missing_directory_is_a_usage_error_and_help_lists_exit_codes(tmp_path, capsys):
    from lsmha.serving.cli import main

    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "exit status: 0 ok" in " ".join(capsys.readouterr().out.split())


def test_docs_list_every_option_with_its_default():
    from pathlib import Path

    from lsmha.serving.cli import build_parser

    docs = (Path(__file__).parents[1] / "docs" / "serving.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2].strip(" `") for line in docs.splitlines()
            if line.startswith("| `--")}  # fmt: skip
    for action in build_parser()._actions:
        option = next((o for o in action.option_strings if o.startswith("--")), None)
        if option is None or option == "--help":
            continue
        assert option in rows, f"docs/serving.md has no row for {option}"
        if action.default not in (None, False):
            assert rows[option] == str(action.default), f"{option}: docs say {rows[option]}, code {action.default}"
