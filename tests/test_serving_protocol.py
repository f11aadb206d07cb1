"""KServe v2 JSON decoding/encoding: accepted inputs round-trip, every refusal says why."""

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
    body = encode_response("m", req, {"logits": logits, "label": logits.argmax(1), "member_logits": logits[:, None]})
    assert body["model_name"] == "m" and body["id"] == "7"
    assert [o["name"] for o in body["outputs"]] == ["logits", "label"]
    assert body["outputs"][0]["datatype"] == "FP32" and body["outputs"][1]["datatype"] == "INT64"
    out = decode_outputs(body)
    assert np.array_equal(out["logits"], logits)  # float32 -> JSON -> float32 is exact
    assert np.array_equal(out["label"], logits.argmax(1))
