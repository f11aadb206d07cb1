"""The bad-request sweep: every kind of malformed, oversized or misdirected request a client
can send gets a 4xx with a v2 JSON error `{"error": ...}` saying why, is counted under its
kind, never reaches a batch, and leaves the server answering good requests exactly."""

import json
import math

import httpx
import numpy as np
import pytest

from lsmha.engine import Committee
from lsmha.serving import BackgroundServer, CommitteeService, ServeConfig
from lsmha.serving.protocol import encode_images, join_body

NAME = "lsmha_committee"
MAX_BODY = 1 << 20  # --max-body-mb 1
JSON_LIMIT = 4 * 32 * 32 * 3 * 64 + (64 << 10)  # what 4 images may take as JSON (protocol.max_json_bytes)


@pytest.fixture(scope="module")
def committee(serving_export):
    c = Committee.load(serving_export, "onnxruntime")
    yield c
    c.close()


@pytest.fixture(scope="module")
def server(serving_export):
    config = ServeConfig(max_batch=4, max_delay_ms=1, max_queue=16, max_body_mb=1, body_timeout_s=5)
    with BackgroundServer(CommitteeService(lambda: Committee.load(serving_export, "onnxruntime"), config)) as s:
        s.wait_ready()
        yield s


def _tensor(shape=(1, 32, 32, 3), datatype="UINT8", data=None, **extra):
    data = [v % 256 for v in range(math.prod(shape))] if data is None else data
    return {"name": "images", "shape": list(shape), "datatype": datatype, "data": data, **extra}


def _doc(*tensors, **extra) -> bytes:
    return json.dumps({"inputs": list(tensors) or [_tensor()], **extra}).encode()


def _binary(n=1, cut=0, **head_extra):
    """A binary-extension body for `n` zero images, `cut` bytes short; its header length."""
    blobs: list[bytes] = []
    doc = encode_images(np.zeros((n, 32, 32, 3), np.uint8), blobs=blobs)
    doc["inputs"][0].update(head_extra)
    body, length = join_body(doc, blobs)
    return body[: len(body) - cut], {"Inference-Header-Content-Length": str(length)}


GOOD = _doc()
LONE_SURROGATE = GOOD[:-1] + b', "id": "\\ud800"}'
H = "Inference-Header-Content-Length"

# (id, method, path suffix, body, headers, status, message)
SWEEP = [
    ("not-json", "POST", "", b'{"inputs": [', {}, 400, "not valid JSON"),
    ("empty-body", "POST", "", b"", {}, 400, "not valid JSON"),
    ("invalid-utf8", "POST", "", b'{"id": "\xff\xfe"}', {}, 400, "not valid JSON"),
    ("deep-nesting", "POST", "", b"[" * 100_000, {}, 400, "nested too deeply"),
    ("deep-nesting-in-data", "POST", "", _doc(_tensor(data=json.loads("[" * 90 + "1" + "]" * 90))), {}, 400, "data"),
    ("array-body", "POST", "", b"[1, 2]", {}, 400, "must be a JSON object"),
    ("no-inputs", "POST", "", b'{"outputs": []}', {}, 400, "needs a 'inputs' field"),
    ("empty-inputs", "POST", "", b'{"inputs": []}', {}, 400, "exactly one input tensor"),
    ("two-inputs", "POST", "", _doc(_tensor(), _tensor()), {}, 400, "exactly one input tensor"),
    ("input-not-object", "POST", "", b'{"inputs": [1]}', {}, 400, "exactly one input tensor"),
    ("id-number", "POST", "", GOOD[:-1] + b', "id": 5}', {}, 400, "'id' must be a string"),
    ("id-lone-surrogate", "POST", "", LONE_SURROGATE, {}, 400, "'id' must be valid Unicode"),
    ("unknown-input", "POST", "", _doc(_tensor() | {"name": "x"}), {}, 400, "unknown input 'x'"),
    ("missing-datatype", "POST", "", b'{"inputs": [{"name": "images"}]}', {}, 400, "needs a 'datatype'"),
    ("unknown-datatype", "POST", "", _doc(_tensor(datatype="PIXELS")), {}, 400, "unknown datatype 'PIXELS'"),
    ("datatype-not-accepted", "POST", "", _doc(_tensor(datatype="INT32")), {}, 400, "INT32 is not accepted"),
    ("uint8-nchw", "POST", "", _doc(_tensor((1, 3, 32, 32))), {}, 400, "got UINT8 shape [1, 3, 32, 32]"),
    ("fp32-nhwc", "POST", "", _doc(_tensor(datatype="FP32")), {}, 400, "got FP32 shape [1, 32, 32, 3]"),
    ("three-dims", "POST", "", _doc(_tensor((1, 32, 32))), {}, 400, "got UINT8 shape [1, 32, 32]"),
    ("bad-shape-values", "POST", "", _doc(_tensor(data=[]) | {"shape": [1, "32", 32, -3]}), {}, 400, "non-negative"),
    ("zero-images", "POST", "", _doc(_tensor((0, 32, 32, 3), data=[])), {}, 400, "at least one image"),
    ("too-many-images", "POST", "", _doc(_tensor((5, 32, 32, 3), data=[0])), {}, 400, "too many images: 5"),
    ("too-few-values", "POST", "", _doc(_tensor(data=[1, 2, 3])), {}, 400, "'data' holds 3 values"),
    ("string-values", "POST", "", _doc(_tensor(data=["a"] * 3072)), {}, 400, "must hold numbers"),
    ("bool-values", "POST", "", _doc(_tensor(data=[True] * 3072)), {}, 400, "must hold numbers"),
    ("huge-int-values", "POST", "", _doc(_tensor(data=[2**70] * 3072)), {}, 400, "must hold numbers"),
    ("ragged", "POST", "", _doc(_tensor(data=[[1, 2], [3]])), {}, 400, "regularly nested"),
    ("nested-3072x1", "POST", "", _doc(_tensor(data=[[0]] * 3072)), {}, 400, "nested exactly as shape"),
    ("uint8-out-of-range", "POST", "", _doc(_tensor(data=[300] * 3072)), {}, 400, "0..255, got 300..300"),
    ("uint8-floats", "POST", "", _doc(_tensor(data=[0.5] * 3072)), {}, 400, "UINT8 data must be integers"),
    ("fp32-nan", "POST", "", _doc(_tensor((1, 3, 32, 32), "FP32", [0.0] * 3071 + [math.nan])), {}, 400, "NaN"),
    ("fp32-overflow", "POST", "", _doc(_tensor((1, 3, 32, 32), "FP32", [1e39] * 3072)), {}, 400, "NaN or Inf"),
    ("unknown-output", "POST", "", _doc(outputs=[{"name": "probs"}]), {}, 400, "unknown output 'probs'"),
    ("output-not-object", "POST", "", _doc(outputs=["logits"]), {}, 400, "must be an object with a 'name'"),
    ("parameters-not-object", "POST", "", _doc(parameters=[1]), {}, 400, "'parameters' must be an object"),
    ("binary-flag-not-bool", "POST", "", _doc(parameters={"binary_data_output": 1}), {}, 400, "true or false"),
    ("header-length-superscript", "POST", "", GOOD, {H: b"\xb2"}, 400, "Inference-Header-Content"),
    ("header-length-text", "POST", "", GOOD, {H: "x"}, 400, "Inference-Header-Content-Length"),
    ("header-length-too-long", "POST", "", GOOD, {H: "999999"}, 400, "Inference-Header-Content"),
    ("binary-one-byte-short", "POST", "", *_binary(cut=1), 400, "binary_data_size says 3072 bytes, the body holds"),
    ("binary-size-not-int", "POST", "", *_binary(parameters={"binary_data_size": "3072"}), 400, "non-negative int"),
    ("binary-and-data", "POST", "", *_binary(data=[0] * 3072), 400, "both 'data' and binary_data_size"),
    ("bytes-after-json", "POST", "", GOOD + b"\0\0\0\0", {H: str(len(GOOD))}, 400, "no input declares"),
    ("body-over-limit", "POST", "", b" " * (MAX_BODY + 1), {}, 413, "exceeds the limit of 1048576 bytes"),
    ("json-over-need", "POST", "", GOOD + b" " * JSON_LIMIT, {}, 413, "the JSON part is"),
    ("json-head-over-need", "POST", "", b" " * (JSON_LIMIT + 1), {H: str(JSON_LIMIT + 1)}, 413, "JSON"),
    ("unknown-model", "POST", "/v2/models/resnet/infer", GOOD, {}, 404, "unknown model 'resnet'"),
    ("unknown-version", "POST", f"/v2/models/{NAME}/versions/2/infer", GOOD, {}, 404, "has no version '2'"),
    ("unknown-route", "GET", "/v2/nothing", b"", {}, 404, "Not Found"),
    ("wrong-method", "GET", f"/v2/models/{NAME}/infer", b"", {}, 405, "Method Not Allowed"),
    ("metadata-unknown-model", "GET", "/v2/models/resnet", b"", {}, 404, "unknown model 'resnet'"),
]


def test_the_sweep_has_the_kinds_it_claims():
    assert len({case[0] for case in SWEEP}) == len(SWEEP) >= 25


@pytest.mark.parametrize(
    ("kind", "method", "path", "body", "headers", "status", "message"), [pytest.param(*c, id=c[0]) for c in SWEEP]
)
def test_bad_request_is_a_4xx_json_error_and_the_server_stays_healthy(
    server, committee, kind, method, path, body, headers, status, message
):
    batches = server.service.batcher.stats.batches
    url = server.url + (path or f"/v2/models/{NAME}/infer")
    r = httpx.request(method, url, content=body or None, headers=headers, timeout=30)
    assert r.status_code == status, f"{kind}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"] == "application/json", f"{kind}: {r.headers}"
    error = r.json()["error"]
    assert message in error, f"{kind}: {error[:300]}"
    assert len(error) < 1000, f"{kind}: the message echoes the request ({len(error)} characters)"
    assert server.service.batcher.stats.batches == batches, f"{kind}: a refused request ran a batch"
    assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
    x = np.random.default_rng(len(kind)).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    good = httpx.post(f"{server.url}/v2/models/{NAME}/infer", json=encode_images(x), timeout=30)
    assert good.status_code == 200 and good.json()["outputs"][1]["data"] == committee.predict(x).tolist()


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(server):
    def chunks():
        for _ in range(40):
            yield b" " * (64 << 10)  # 2.5 MiB in all, no Content-Length

    r = httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=chunks(), timeout=30)
    assert r.status_code == 413 and "exceeds the limit of 1048576 bytes" in r.json()["error"]


def test_refusals_are_counted_by_kind_and_none_as_internal(server):
    metrics = server.service.metrics
    assert metrics.value("lsmha_errors_total", kind="internal") == 0
    assert metrics.value("lsmha_errors_total", kind="bad_request") >= sum(case[5] == 400 for case in SWEEP)
    assert metrics.value("lsmha_errors_total", kind="payload_too_large") >= 3
    assert metrics.value("lsmha_errors_total", kind="unknown_model") >= 2
