"""Request bodies cheap to send that must be 400s: huge integer literals, booleans among numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lsmha.serving.protocol import InputSpec, ProtocolError, decode_body

SPEC = InputSpec(img_size=8, in_chans=3, max_images=4)
N = 8 * 8 * 3


def _text(data, datatype="UINT8") -> str:
    shape = [1, 8, 8, 3] if datatype == "UINT8" else [1, 3, 8, 8]
    return json.dumps({"inputs": [{"name": "images", "shape": shape, "datatype": datatype, "data": data}]})


def test_integer_literal_beyond_python_limit_is_a_400():
    """a 5,000-digit integer in the JSON is a 400, not a 500 with a traceback."""
    body = _text([0] * N).replace("[0, ", "[" + "9" * 5000 + ", ", 1).encode()
    with pytest.raises(ProtocolError, match="got an integer literal of 5000 characters") as info:
        decode_body(body, None, SPEC)
    assert info.value.status == 400


def test_huge_binary_header_length_is_a_400():
    """a 5,000-digit Inference-Header-Content-Length is a 400."""
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length must be") as info:
        decode_body(_text([0] * N).encode(), "9" * 5000, SPEC)
    assert info.value.status == 400


@pytest.mark.parametrize("datatype, value", [("UINT8", True), ("UINT8", False), ("FP32", True)])
def test_true_among_numbers_is_a_400(datatype, value):
    """JSON `true` among the numbers is refused, not read as 1."""
    data = [0] * N
    data[5] = value
    with pytest.raises(ProtocolError, match="got true or false among them") as info:
        decode_body(_text(data, datatype).encode(), None, SPEC)
    assert info.value.status == 400


def test_numbers_still_decode_beside_true_elsewhere_in_the_body():
    doc = json.loads(_text(list(range(N))))
    doc["parameters"] = {"binary_data_output": True}
    request = decode_body(json.dumps(doc).encode(), None, SPEC)
    assert np.array_equal(request.images.ravel(), np.arange(N) % 256) and request.binary_outputs
