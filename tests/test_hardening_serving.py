"""The HTTP server against clients that cost it more than they send: bodies cheap to send but
dear to parse, connections that never finish their headers, process pauses and SIGTERM
while the committee warms up. A stand-in committee (no model) keeps each test fast."""

from __future__ import annotations

import json
import threading
import time

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
