"""KServe v2 JSON decoding/encoding: accepted inputs round-trip, every refusal says why."""

import json
import math

import numpy as np
import pytest

from lsmha.serving.protocol import (
    InputSpec,
    ProtocolError,
    decode_outputs,
    decode_request,
    encode_images,
    encode_response,
    join_body,
    split_body,
)

SPEC = InputSpec(img_size=8, in_chans=3, max_images=4)


def _body(shape, datatype="UINT8", data=None, **extra):
    data = [v % 256 for v in range(math.prod(shape))] if data is None else data
    return {"inputs": [{"name": "images", "shape": shape, "datatype": datatype, "data": data}], **extra}


def test_uint8_nhwc_and_fp32_nchw_round_trip():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    req = decode_request(encode_images(pixels, request_id="r1"), SPEC)
    assert req.id == "r1" and req.images.dtype == np.uint8 and np.array_equal(req.images, pixels)
    assert req.outputs == ("logits", "label") and not req.wants_members
    floats = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    req = decode_request(encode_images(floats, ("member_logits", "label")), SPEC)
    assert req.images.dtype == np.float32 and np.array_equal(req.images, floats)
    assert req.outputs == ("member_logits", "label") and req.wants_members


def test_nested_data_equals_flat_data():
    pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(1, 8, 8, 3)
    nested = decode_request(_body([1, 8, 8, 3], data=pixels.tolist()), SPEC)
    assert np.array_equal(nested.images, pixels)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"outputs": []}, "needs a 'inputs' field"),
        ({"inputs": []}, "exactly one input tensor"),
        (_body([1, 8, 8, 3]) | {"id": 5}, "'id' must be a string"),
        ({"inputs": [{"name": "x", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": []}]}, "unknown input 'x'"),
        (_body([1, 8, 8, 3], datatype="UINT9"), "unknown datatype 'UINT9'"),
        (_body([1, 8, 8, 3], datatype="INT32"), "datatype INT32 is not accepted"),
        (_body([1, 3, 8, 8], datatype="UINT8"), "got UINT8 shape [1, 3, 8, 8]"),
        (_body([1, 8, 8, 3], datatype="FP32"), "got FP32 shape [1, 8, 8, 3]"),
        (_body([1, 8, 8]), "got UINT8 shape [1, 8, 8]"),
        (_body([0, 8, 8, 3], data=[]), "at least one image"),
        (_body([5, 8, 8, 3]), "too many images: 5"),
        (_body([1, 8, 8, 3], data=[1, 2, 3]), "'data' holds 3 values"),
        (_body([1, 8, 8, 3], data=["a"] * 192), "must hold numbers"),
        (_body([1, 8, 8, 3], data=[[1, 2], [3]]), "regularly nested"),
        (_body([1, 8, 8, 3], data=[300] * 192), "0..255, got 300..300"),
        (_body([1, 8, 8, 3], data=[0.5] * 192), "UINT8 data must be integers"),
        (_body([2, 3, 8, 8], datatype="FP32", data=[0.0] * 383 + [math.nan]), "NaN or Inf"),
        (_body([1, 3, 8, 8], datatype="FP32", data=[1e39] * 192), "NaN or Inf"),
        (_body([1, 8, 8, 3], outputs=[{"name": "probs"}]), "unknown output 'probs'"),
        (_body([1, 8, 8, 3], outputs=["logits"]), "must be an object with a 'name'"),
        (_body([1, 8, 8, 3], datatype="UINT8", data=None) | {"inputs": [{"name": "images"}]}, "needs a 'datatype'"),
    ],
)
def test_bad_requests_say_why(body, message):
    with pytest.raises(ProtocolError) as info:
        decode_request(body, SPEC)
    assert message in str(info.value)
    assert info.value.status == 400


def test_nan_message_counts_images():
    data = [0.0] * (2 * 192)
    data[200] = math.inf
    with pytest.raises(ProtocolError, match=r"in 1 of 2 image"):
        decode_request(_body([2, 3, 8, 8], datatype="FP32", data=data), SPEC)


def test_response_encoding_round_trips_exactly():
    rng = np.random.default_rng(1)
    req = decode_request(encode_images(rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8), request_id="7"), SPEC)
    logits = rng.normal(size=(2, 5)).astype(np.float32)
    results = {"logits": logits, "label": logits.argmax(1), "member_logits": logits[:, None]}
    body, blobs = encode_response("m", req, results)
    assert blobs == [] and body["model_name"] == "m" and body["id"] == "7"
    assert [o["name"] for o in body["outputs"]] == ["logits", "label"]
    assert body["outputs"][0]["datatype"] == "FP32" and body["outputs"][1]["datatype"] == "INT64"
    out = decode_outputs(body)
    assert np.array_equal(out["logits"], logits)  # float32 -> JSON -> float32 is exact
    assert np.array_equal(out["label"], logits.argmax(1))


# -- the binary tensor data extension -------------------------------------------------------------


def _binary_request(images, outputs=None, request_id=None):
    blobs: list[bytes] = []
    doc = encode_images(images, outputs, request_id, blobs=blobs)
    body, length = join_body(doc, blobs)
    return body, str(length)


@pytest.mark.parametrize("fp32", [False, True])
def test_binary_images_decode_exactly_what_json_does(fp32):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    if fp32:
        images = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    body, length = _binary_request(images, ("logits",), "b1")
    head, binary = split_body(body, length)
    declared = json.loads(head)["inputs"][0]["parameters"]["binary_data_size"]
    assert len(binary) == images.nbytes == declared
    req = decode_request(json.loads(head), SPEC, binary)
    assert req.id == "b1" and req.images.dtype == images.dtype and np.array_equal(req.images, images)
    assert req.images.flags.writeable and req.binary_outputs == {"logits"}
    assert np.array_equal(decode_request(encode_images(images), SPEC).images, req.images)


def test_binary_outputs_as_asked_round_trip_exactly():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5)).astype(np.float32)
    results = {"logits": logits, "label": logits.argmax(1), "member_logits": logits[:, None]}
    pixels = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)

    everything = _body([2, 8, 8, 3], data=pixels.reshape(-1).tolist(), parameters={"binary_data_output": True})
    req = decode_request(everything, SPEC)  # JSON images in, binary outputs out
    assert req.binary_outputs == {"logits", "label"}
    doc, blobs = encode_response("m", req, results)
    body, length = join_body(doc, blobs)
    assert [o["parameters"]["binary_data_size"] for o in doc["outputs"]] == [40, 16] and len(body) == length + 56
    out = decode_outputs(json.loads(body[:length]), memoryview(body)[length:])
    assert np.array_equal(out["logits"], logits) and np.array_equal(out["label"], logits.argmax(1))

    outputs = [{"name": "member_logits", "parameters": {"binary_data": True}}, {"name": "label"}]
    req = decode_request(_body([2, 8, 8, 3], outputs=outputs), SPEC)  # per output; label stays JSON
    doc, blobs = encode_response("m", req, results)
    assert req.binary_outputs == {"member_logits"} and "data" in doc["outputs"][1] and len(blobs) == 1
    out = decode_outputs(doc, blobs[0])
    assert np.array_equal(out["member_logits"], logits[:, None]) and np.array_equal(out["label"], logits.argmax(1))

    outputs = [{"name": "logits", "parameters": {"binary_data": False}}]  # a per-output false wins
    req = decode_request(_body([2, 8, 8, 3], outputs=outputs, parameters={"binary_data_output": True}), SPEC)
    assert req.binary_outputs == frozenset() and encode_response("m", req, results)[1] == []


def test_binary_requests_that_do_not_add_up_say_why():
    pixels = np.zeros((1, 8, 8, 3), np.uint8)
    body, length = _binary_request(pixels)
    head, binary = split_body(body, length)
    doc = json.loads(head)

    def refused(doc, binary, message):
        with pytest.raises(ProtocolError) as info:
            decode_request(doc, SPEC, binary)
        assert message in str(info.value) and info.value.status == 400

    refused(doc, binary[:-1], "the body holds 191 after the Inference-Header-Content-Length JSON header")
    refused(doc, b"", "the body holds 0 after")
    wrong = json.loads(head)
    wrong["inputs"][0]["parameters"]["binary_data_size"] = 100
    refused(wrong, binary, "binary_data_size is 100 bytes, UINT8 shape [1, 8, 8, 3] needs 192")
    wrong["inputs"][0]["parameters"]["binary_data_size"] = "192"
    refused(wrong, binary, "binary_data_size must be a non-negative int")
    both = json.loads(head)
    both["inputs"][0]["data"] = [0] * 192
    refused(both, binary, "both 'data' and binary_data_size")
    refused(_body([1, 8, 8, 3]), b"\0" * 4, "4 bytes follow the JSON header, but no input declares binary_data_size")
    refused(_body([1, 8, 8, 3], parameters=[1]), b"", "'parameters' must be an object")
    refused(_body([1, 8, 8, 3], parameters={"binary_data_output": 1}), b"", "must be true or false, got 1")
    nan = json.loads(head)
    nan["inputs"][0].update(datatype="FP32", shape=[1, 3, 8, 8], parameters={"binary_data_size": 768})
    refused(nan, np.full(192, np.nan, np.float32).tobytes(), "NaN or Inf")
    for bad in ("x", "-1", str(len(body) + 1)):
        with pytest.raises(ProtocolError, match="Inference-Header-Content-Length must be the JSON header's length"):
            split_body(body, bad)
    assert split_body(b"{}", None) == (b"{}", memoryview(b""))


def test_outputs_with_null_parameters_decode():
    """KServe's ModelServer answers "parameters": null on every output; the client reads it."""
    from lsmha.serving.protocol import decode_outputs

    body = {"outputs": [{"name": "label", "shape": [2], "datatype": "INT64", "parameters": None, "data": [3, 7]}]}
    assert decode_outputs(body)["label"].tolist() == [3, 7]
