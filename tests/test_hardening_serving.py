"""The HTTP server against clients that cost it more than they send: bodies cheap to send but
dear to parse, connections that never finish their headers, process pauses and SIGTERM
while the committee warms up. A stand-in committee (no model) keeps each test fast."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from lsmha.serving import BackgroundServer, CommitteeService, ServeConfig, protocol
from lsmha.serving.protocol import InputSpec, ProtocolError, decode_body

NAME = "lsmha_committee"


class StandInCommittee:
    """What the service calls on a committee: two members, ten classes, logits from pixel means."""

    img_size, in_chans, num_classes, backend, members = 32, 3, 10, "stand-in", ["a", "b"]

    def __len__(self) -> int:
        return 2

    def member_logits(self, images: np.ndarray) -> np.ndarray:
        means = images.reshape(len(images), -1).mean(axis=1, dtype=np.float32)
        return np.stack([np.outer(means, np.arange(10, dtype=np.float32))] * 2)  # (M, N, classes)

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        return self.member_logits(images).sum(axis=0)

    def close(self) -> None:
        pass


def _nested_zeros_body(n_bytes: int) -> bytes:
    """A request declaring 32 images whose data is `[[0],[0],...]`: 4 bytes a list."""
    head = '{"inputs":[{"name":"images","datatype":"UINT8","shape":[32,32,32,3],"data":['
    count = (n_bytes - len(head) - 4) // 4
    return (head + ",".join(["[0]"] * count) + "]}]}").encode()


SPEC = InputSpec(32, 3, 32)


def test_json_with_more_values_than_any_request_holds_is_refused_before_parsing(monkeypatch):
    """6 MiB of `[[0],[0],...]` (under the byte bound, 1.6 million lists) is a 400 without
    json.loads ever seeing it: parsing it held the interpreter for seconds."""
    body = _nested_zeros_body(SPEC.max_json_bytes - 1000)

    def no_parse(*args, **kwargs):
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(protocol.json, "loads", no_parse)
    with pytest.raises(ProtocolError, match="values, lists and objects") as caught:
        decode_body(body, None, SPEC)
    assert caught.value.status == 400


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_the_largest_request_nested_as_its_shape_is_within_the_value_bound(dtype):
    images = np.zeros((32, 32, 32, 3) if dtype == np.uint8 else (32, 3, 32, 32), dtype)
    body = protocol.encode_images(images, outputs=("logits", "label", "member_logits"), request_id="a,b[c{d")
    body["inputs"][0]["data"] = images.tolist()  # nested as the shape: the most lists a request can have
    head = json.dumps(body, indent=1).encode()
    assert len(head) <= SPEC.max_json_bytes
    assert decode_body(head, None, SPEC).images.shape == images.shape


@pytest.fixture
def server():
    config = ServeConfig(max_batch=32, max_delay_ms=0)
    with BackgroundServer(CommitteeService(StandInCommittee, config)) as s:
        s.wait_ready()
        yield s


def test_health_answers_while_a_body_dear_to_parse_is_refused(server):
    """While 6 MiB of nested lists arrive and are refused (400), health checks keep being
    answered at once: the body never reaches the parser, which holds the interpreter."""
    body = _nested_zeros_body(SPEC.max_json_bytes - 1000)
    answers: list[httpx.Response] = []

    def post() -> None:
        answers.append(httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=body, timeout=60))

    poster = threading.Thread(target=post)
    poster.start()
    latencies = []
    with httpx.Client(timeout=60) as client:
        while poster.is_alive() or len(latencies) < 5:
            start = time.perf_counter()
            assert client.get(f"{server.url}/v2/health/live").status_code == 200
            latencies.append(time.perf_counter() - start)
    poster.join()
    assert answers[0].status_code == 400 and "values, lists and objects" in answers[0].json()["error"], answers[0].text
    # a bound far above a health check's milliseconds and far below the seconds of a parse
    assert max(latencies) < 1.0, latencies


# -- connections: header deadline, cap, out of descriptors ------------------------------------


@pytest.fixture
def guarded():
    config = ServeConfig(max_batch=4, max_delay_ms=0, header_timeout_s=0.5, max_connections=6, body_timeout_s=0.5)
    with BackgroundServer(CommitteeService(StandInCommittee, config)) as s:
        s.wait_ready()
        yield s


def _connect(server, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; socket.timeout if it keeps the connection open."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _is_closed(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /v2/hea", b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"],
    ids=["nothing", "part of the request line", "headers without the blank line"],
)
def test_connections_that_do_not_finish_their_headers_are_closed(guarded, sent):
    """Such connections stayed open for good (>= 75 s measured); now closed after
    --header-timeout-s, with a 408 when they sent something."""
    with _connect(guarded, sent) as sock:
        answer = _read_until_closed(sock)
    if sent:
        assert answer.startswith(b"HTTP/1.1 408 ") and b"--header-timeout-s" in answer, answer
    else:
        assert answer == b""


def test_trickled_header_bytes_do_not_extend_the_deadline(guarded):
    with _connect(guarded) as sock:
        start = time.monotonic()
        with pytest.raises(OSError):  # reset or broken pipe once the server closed it
            for _ in range(30):
                sock.sendall(b"X-Slow: 1\r\n" if time.monotonic() > start + 0.01 else b"GET / HTTP/1.1\r\n")
                time.sleep(0.1)
            _read_until_closed(sock)
            raise OSError("the connection stayed open")
        assert time.monotonic() - start < 2.5


def test_a_kept_alive_connection_gets_the_deadline_for_its_next_headers(guarded):
    """After one answered request, a partial next request line is closed too (uvicorn's own
    keep-alive timer stops at the first byte)."""
    with _connect(guarded, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
        first = b""
        while not first.endswith(b'{"live":true}'):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first
        sock.sendall(b"GET /v2/he")
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_idle_connections_beyond_the_cap_make_room_for_clients(guarded):
    """20 idle sockets against --max-connections 6: the ones idle longest are closed as others
    come, and a health check still gets its answer."""
    socks = [_connect(guarded) for _ in range(20)]
    try:
        assert httpx.get(f"{guarded.url}/v2/health/live", timeout=5).status_code == 200
        closed = sum(_is_closed(sock) for sock in socks)
        assert closed >= 20 - 6 + 1, closed
        assert guarded.server.guard.closed["evicted"] >= 15
    finally:
        for sock in socks:
            sock.close()


def test_a_newcomer_beyond_the_cap_gets_503_when_every_connection_is_busy(guarded):
    head = f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode()
    busy = [_connect(guarded, head + b"{") for _ in range(6)]  # each a request whose body is still coming
    try:
        time.sleep(0.1)
        with _connect(guarded, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
            answer = _read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer, answer
    finally:
        for sock in busy:
            sock.close()


STAND_IN = """
import numpy as np

class StandInCommittee:
    img_size, in_chans, num_classes, backend, members = 32, 3, 10, "stand-in", ["a", "b"]
    warmup_s = 0.0
    def __len__(self):
        return 2
    def member_logits(self, images):
        time.sleep(self.warmup_s)
        return np.zeros((2, len(images), 10), np.float32)
    def predict_logits(self, images):
        return self.member_logits(images).sum(axis=0)
    def close(self):
        pass
"""


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "serve.py"
    path.write_text("import sys, time\n" + STAND_IN + body)
    return [sys.executable, str(path)]


def _wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _live(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(os.name != "posix", reason="needs the POSIX open-file limit")
@pytest.mark.slow  # a process of its own: the engine's import alone takes seconds
def test_out_of_descriptors_logs_a_few_lines_and_keeps_answering(tmp_path):
    """With 64 descriptors and a cap above them, accepts fail (EMFILE): asyncio's traceback per
    failed accept (51.7 MB of log in 20 s) is one line per 10 s, and the connections idle longest
    are closed so that health checks still get in."""
    port = _free_port()
    cmd = _script(tmp_path, f"""
import resource
from lsmha.serving import CommitteeServer, CommitteeService, ServeConfig
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
config = ServeConfig(max_batch=1, warmup=False, max_connections=500, header_timeout_s=60)
CommitteeServer(CommitteeService(StandInCommittee, config), port={port}, log_level="warning").run()
""")  # fmt: skip
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    socks = []
    try:
        _wait_for(lambda: _live(port))
        for _ in range(80):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        _wait_for(lambda: _live(port), timeout_s=10)  # asyncio retries the accept each second
        text = log_path.read_text()
        assert "cannot accept connections" in text, text[-2000:]
        assert len(text) < 10_000 and "Traceback" not in text, text[-2000:]
    finally:
        for sock in socks:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)


# -- pauses and shutdown --------------------------------------------------------------------------


def test_a_body_that_came_while_the_server_stood_still_is_answered_not_408(guarded):
    """The loop stands still 1.5 s (as under SIGSTOP) while the rest of a body arrives, past
    --body-timeout-s 0.5: the request is answered, the pause is not the client's."""
    body = json.dumps(protocol.encode_images(np.zeros((1, 32, 32, 3), np.uint8))).encode()
    head = f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    loop = guarded.service.batcher._worker.get_loop()
    with _connect(guarded, head.encode() + body[:10]) as sock:
        time.sleep(0.2)  # the handler waits for the rest of the body
        loop.call_soon_threadsafe(time.sleep, 1.5)  # the event loop stops running
        time.sleep(0.2)
        sock.sendall(body[10:])
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def test_a_stalled_body_still_gets_408(guarded):
    head = f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    with _connect(guarded, head.encode() + b"{") as sock:
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


class SlowWarmUp(StandInCommittee):
    """Each warm-up batch takes `batch_s`; `closed` says whether the service closed it."""

    def __init__(self, batch_s: float) -> None:
        self.batch_s, self.batches, self.closed = batch_s, 0, False

    def member_logits(self, images: np.ndarray) -> np.ndarray:
        self.batches += 1
        time.sleep(self.batch_s)
        return super().member_logits(images)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("batch_s", [0.3, 30.0], ids=["stops between batches", "left behind past the bound"])
def test_a_stop_during_warm_up_takes_at_most_the_shutdown_timeout(batch_s):
    """Stopping a server whose warm-up runs (four batches) returns within --shutdown-timeout-s:
    warm-up stops between batches (the committee closed), and a batch still running past the
    bound is left behind (`loading_abandoned`). It waited for the whole warm-up before."""
    committee = SlowWarmUp(batch_s)
    service = CommitteeService(lambda: committee, ServeConfig(max_batch=4, shutdown_timeout_s=1))
    with BackgroundServer(service) as server:
        _wait_for(lambda: committee.batches == 1)
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 503
        start = time.monotonic()
    took = time.monotonic() - start
    assert not service.ready and service.failure is None
    assert took < 1 + 1.5, took  # the bound and a margin, far below the warm-up's 4 x batch_s
    if batch_s < 1:
        assert committee.batches < 4 and committee.closed and not service.loading_abandoned
    else:
        assert service.loading_abandoned


def _serve_cli(tmp_path: Path, port: int, patch: str) -> subprocess.Popen:
    cmd = _script(tmp_path, f"""
import types
import lsmha.engine as engine
{patch}
from lsmha.serving.cli import main
sys.exit(main([{str(tmp_path)!r}, "--port", "{port}", "--shutdown-timeout-s", "1", "--log-level", "warning"]))
""")  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (SIGTERM)")
@pytest.mark.slow  # a process of its own: the engine's import alone takes seconds
def test_sigterm_during_warm_up_exits_0_within_the_shutdown_timeout(tmp_path):
    """A warm-up batch that takes 60 s: SIGTERM ends the process within --shutdown-timeout-s 1
    (it exited 26 s late, waiting for the warm-up) with exit 0 and a line saying why."""
    port = _free_port()
    patch = """
StandInCommittee.warmup_s = 60
engine.load_source = lambda directory: types.SimpleNamespace(manifest=None)
engine.Committee.load = staticmethod(lambda *args, **kwargs: StandInCommittee())
"""
    proc = _serve_cli(tmp_path, port, patch)
    try:
        _wait_for(lambda: _live(port))
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status_code == 503
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        took = time.monotonic() - start
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped before the committee was ready" in err, err
    assert took < 1 + 5, took  # the bound, plus a margin for a loaded machine; not the 60 s warm-up


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (SIGTERM)")
@pytest.mark.slow  # a process of its own: the engine's import alone takes seconds
def test_sigterm_before_serving_exits_0(tmp_path):
    """SIGTERM while the export is read (before uvicorn handles signals) exited 143; now 0 and one line."""
    patch = """
def reading(directory):
    print("reading", flush=True)
    time.sleep(60)
engine.load_source = reading
"""
    proc = _serve_cli(tmp_path, _free_port(), patch)
    try:
        assert proc.stdout.readline() == "reading\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "lsmha-serve: stopped by SIGTERM before serving" in err, err


# -- one table for every failure --------------------------------------------------------------


def test_every_failure_maps_to_a_status_and_a_metric_kind():
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from lsmha.serving.batcher import QueueFull, ShuttingDown
    from lsmha.serving.errors import TABLE, InferenceFailed, NotReady, ShutdownCancelled, classify
    from lsmha.serving.metrics import ERROR_KINDS

    cases = {
        ProtocolError("bad"): (400, "bad_request", {}),
        ProtocolError("gone", 404): (404, "unknown_model", {}),
        ProtocolError("slow", 408): (408, "timeout", {"Connection": "close"}),
        ProtocolError("big", 413): (413, "payload_too_large", {"Connection": "close"}),
        NotReady("loading"): (503, "not_ready", {"Retry-After": "1"}),
        ClientDisconnect(): (400, "disconnected", {}),
        QueueFull("full", retry_after_s=3): (503, "queue_full", {"Retry-After": "3"}),
        ShuttingDown("bye"): (503, "shutting_down", {"Retry-After": "1"}),
        ShutdownCancelled("bye"): (503, "shutting_down", {"Retry-After": "1", "Connection": "close"}),
        InferenceFailed("boom"): (500, "internal", {}),
        HTTPException(405, "no"): (405, "bad_request", {}),
        KeyError("bug"): (500, "internal", {}),
    }
    assert {type(e) for e in cases} >= {kind for kind, _ in TABLE}
    for err, (status, kind, headers) in cases.items():
        failure = classify(err)
        assert (failure.status, failure.kind, failure.headers) == (status, kind, headers), err
        assert failure.kind in ERROR_KINDS
