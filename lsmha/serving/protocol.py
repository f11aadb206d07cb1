"""KServe v2 inference protocol, JSON tensors: decoding requests and encoding responses.

A request (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/):

    {"id": "42",
     "inputs":  [{"name": "images", "shape": [2, 32, 32, 3], "datatype": "UINT8", "data": [...]}],
     "outputs": [{"name": "logits"}, {"name": "label"}]}          # optional; default logits + label

`images` is either UINT8 NHWC (raw pixels, what a camera gives) or FP32 NCHW
(any scale: every member standardises each image itself). `data` is the
row-major flattened tensor or the same values nested. Outputs, batch axis first:
`logits` FP32 (N, classes) — the SUM of the members' raw logits; `label` INT64
(N,) — its argmax; `member_logits` FP32 (N, members, classes), only when asked.

The binary tensor data extension is supported both ways (what `tritonclient.http`
sends by default): the body is the JSON header, whose length is given by the HTTP
header `Inference-Header-Content-Length`, followed by the raw little-endian,
row-major tensor bytes; the input says `"parameters": {"binary_data_size": n}` in
place of `data`. Outputs come back as binary when the request asks for it, per
output (`"parameters": {"binary_data": true}`) or for all
(`"parameters": {"binary_data_output": true}`). Decoding images from binary costs
microseconds where JSON costs 0.3 ms per 32x32 image.

Every rejection is a `ProtocolError` whose message says what was expected and
what came; the server answers it as 400 `{"error": message}` (413 for a body
larger than any valid request needs). `decode_body` is the whole path from the
raw HTTP body to an `InferRequest`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

INPUT_NAME = "images"
OUTPUTS = ("logits", "label", "member_logits")
DEFAULT_OUTPUTS = ("logits", "label")
# Every datatype string of the v2 protocol; only UINT8 and FP32 are accepted as images.
V2_DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
)  # fmt: skip
ACCEPTED = {"UINT8": "NHWC", "FP32": "NCHW"}
NUMPY_TO_V2 = {"float32": "FP32", "int64": "INT64", "uint8": "UINT8"}
V2_TO_NUMPY = {"FP32": "<f4", "INT64": "<i8", "UINT8": "u1"}  # binary: little-endian
HEADER_LENGTH = "Inference-Header-Content-Length"  # HTTP header of the binary tensor extension
# A JSON value takes at most ~25 bytes ("-1.1754943508222875e-38, "); 64 leaves room for
# indentation. A JSON part beyond what `max_images` images need is refused before parsing:
# parsing holds the interpreter (about 15-60 ms per MiB), and no valid request needs it.
JSON_BYTES_PER_VALUE = 64
JSON_OVERHEAD_BYTES = 64 << 10
# The parser's cost is per value, list and object (an allocation each, the interpreter held
# throughout), not per byte: 6 MiB of `[[0],[0],...]` is 1.6 million lists, seconds to parse.
# So a JSON part with more of them than `max_images` images can hold is refused before
# parsing, counted by a byte search (milliseconds for the largest allowed part); the overhead
# leaves room for the id, outputs and parameters.
JSON_OVERHEAD_TOKENS = 4096
TOO_DEEP = "the request body is nested too deeply; an image tensor's 'data' needs 4 levels at most, the body 5"


class ProtocolError(ValueError):
    """A request the protocol refuses; `status` is the HTTP code (400 unless said)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputSpec:
    """What the served committee takes: image size, channels, and the most images per request;
    and the outputs a request may ask for (an adaptive committee's add `members_run`)."""

    img_size: int
    in_chans: int
    max_images: int
    outputs: tuple[str, ...] = OUTPUTS

    def shape(self, datatype: str) -> tuple[int, int, int]:
        """Per-image shape for `datatype`: (H, W, C) for UINT8, (C, H, W) for FP32."""
        s, c = self.img_size, self.in_chans
        return (s, s, c) if ACCEPTED[datatype] == "NHWC" else (c, s, s)

    @property
    def max_json_bytes(self) -> int:
        """The largest JSON part a request may have: `max_images` images written as JSON numbers."""
        return self.max_images * math.prod(self.shape("UINT8")) * JSON_BYTES_PER_VALUE + JSON_OVERHEAD_BYTES

    @property
    def max_json_tokens(self) -> int:
        """The most values, lists and objects a request may hold: `max_images` images, each
        value, and each list of an image nested as deeply as its shape allows."""
        per_image = max(
            math.prod(self.shape(dt)) + 1 + d0 + d0 * d1 for dt in ACCEPTED for d0, d1, _ in [self.shape(dt)]
        )
        return self.max_images * per_image + JSON_OVERHEAD_TOKENS

    def describe(self) -> str:
        return " or ".join(f"{dt} {ACCEPTED[dt]} shape [N, {', '.join(map(str, self.shape(dt)))}]" for dt in ACCEPTED)


@dataclass(frozen=True)
class InferRequest:
    """A decoded request: images (N, H, W, C) uint8 or (N, C, H, W) float32, and the outputs asked for."""

    id: str | None
    images: np.ndarray
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str] = frozenset()  # outputs to return as binary data

    @property
    def wants_members(self) -> bool:
        return "member_logits" in self.outputs


def show(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters: error messages echo client data, which may be huge."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{where} needs a {key!r} field, got keys {show(sorted(obj))}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(f"{where} field {key!r} must be a {names}, got {type(value).__name__}")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """A request body's JSON part and its binary part (empty without the binary extension's
    `Inference-Header-Content-Length` header, whose value is the JSON part's length)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    # ASCII digits only: str.isdigit() also accepts "²" or "٣", which int() then refuses; at most
    # 20 of them, so int() never meets a literal beyond its 4,300-digit limit
    if not (text.isascii() and text.isdigit() and len(text) <= 20) or int(text) > len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} must be the JSON header's length in bytes (0..{len(body)}), got {show(header_length)}"
        )
    n = int(text)
    return body[:n], memoryview(body)[n:]


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"{where} 'parameters' must be an object, got {type(params).__name__}")
    return params


def _binary_values(tensor: dict[str, Any], datatype: str, shape: list[int], binary: memoryview) -> np.ndarray:
    size = _parameters(tensor, "input tensor")["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"binary_data_size must be a non-negative int (bytes), got {show(size)}")
    if "data" in tensor:
        raise ProtocolError("the input has both 'data' and binary_data_size: send its values one way")
    dtype = np.dtype(V2_TO_NUMPY[datatype])
    needed = math.prod(shape) * dtype.itemsize
    if size != needed:
        raise ProtocolError(f"binary_data_size is {size} bytes, {datatype} shape {shape} needs {needed}")
    if len(binary) != size:
        raise ProtocolError(
            f"binary_data_size says {size} bytes, the body holds {len(binary)} after the "
            f"{HEADER_LENGTH} JSON header (is the header's length right?)"
        )
    return np.frombuffer(binary, dtype=dtype).reshape(shape).copy()  # own, writable, native order


def _decode_tensor(tensor: dict[str, Any], spec: InputSpec, binary: memoryview, check_bools: bool) -> np.ndarray:
    where = "input tensor"
    name = _field(tensor, "name", str, where)
    if name != INPUT_NAME:
        raise ProtocolError(f"unknown input {show(name)}: this model takes one input named {INPUT_NAME!r}")
    datatype = _field(tensor, "datatype", str, where)
    if datatype not in V2_DATATYPES:
        raise ProtocolError(f"unknown datatype {show(datatype)}; the v2 protocol knows {', '.join(V2_DATATYPES)}")
    if datatype not in ACCEPTED:
        raise ProtocolError(f"datatype {datatype} is not accepted for {INPUT_NAME!r}: expected {spec.describe()}")
    shape = _field(tensor, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"shape must be a list of non-negative ints, got {show(shape)}")
    per_image = spec.shape(datatype)
    if len(shape) != 4 or tuple(shape[1:]) != per_image:
        raise ProtocolError(f"expected {spec.describe()}, got {datatype} shape {show(shape)}")
    n = shape[0]
    if n == 0:
        raise ProtocolError(f"expected at least one image, got shape {shape}")
    if n > spec.max_images:
        raise ProtocolError(f"too many images: {n} in one request, at most {spec.max_images}; split the request")
    if "binary_data_size" in _parameters(tensor, where):
        values = _binary_values(tensor, datatype, shape, binary)
    else:
        if len(binary):
            raise ProtocolError(f"{len(binary)} bytes follow the JSON header, but no input declares binary_data_size")
        data = _field(tensor, "data", list, where)
        try:
            values = np.asarray(data)
        except ValueError as err:  # ragged nesting
            raise ProtocolError(f"'data' must be a flat or regularly nested list of numbers: {err}") from None
        if values.dtype.kind not in "iuf":
            raise ProtocolError(f"'data' must hold numbers, got {values.dtype.kind!r}-kind values ({values.dtype})")
        if check_bools and any(type(v) is bool for v in np.asarray(data, dtype=object).flat):
            raise ProtocolError("'data' must hold numbers, got true or false among them")
        if values.size != math.prod(shape):
            raise ProtocolError(f"'data' holds {values.size} values, shape {shape} needs {math.prod(shape)}")
        if values.ndim != 1 and values.shape != tuple(shape):
            raise ProtocolError(
                f"'data' must be flat or nested exactly as shape {shape}, got values nested as {list(values.shape)}"
            )
        values = values.reshape(shape)
    if datatype == "UINT8":
        if values.dtype.kind == "f":
            raise ProtocolError("UINT8 data must be integers, got non-integer numbers; send FP32 NCHW for floats")
        if values.min() < 0 or values.max() > 255:
            raise ProtocolError(f"UINT8 data must lie in 0..255, got {values.min()}..{values.max()}")
        return np.ascontiguousarray(values, dtype=np.uint8)
    with np.errstate(over="ignore"):  # beyond FP32 range becomes Inf, refused just below
        images = np.ascontiguousarray(values, dtype=np.float32)
    finite = np.isfinite(images)
    if not finite.all():
        bad = int((~finite).reshape(n, -1).any(axis=1).sum())
        raise ProtocolError(
            f"expected finite FP32 values, got NaN or Inf (or beyond FP32 range) in {bad} of {n} image(s)"
        )
    return images


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where} parameter {key!r} must be true or false, got {show(value)}")
    return value


def decode_request(
    body: Any, spec: InputSpec, binary: bytes | memoryview = b"", check_bools: bool = True
) -> InferRequest:
    """Decode and validate a parsed v2 JSON request body and the binary data that followed it
    (binary tensor extension; `split_body` separates them). ProtocolError on anything wrong.
    `check_bools=False` skips the search for JSON booleans among the numbers (numpy reads
    `true` as 1): for callers who know the text held none."""
    binary = memoryview(binary)
    if not isinstance(body, dict):
        raise ProtocolError(f"the request body must be a JSON object, got {type(body).__name__}")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string, got {type(request_id).__name__}")
    if request_id is not None and not _is_unicode(request_id):
        # JSON lets "\ud800" through, but the answer echoes the id and UTF-8 cannot encode it
        raise ProtocolError(f"'id' must be valid Unicode text, got {show(request_id)} (a lone surrogate escape?)")
    inputs = _field(body, "inputs", list, "the request")
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"expected exactly one input tensor object named {INPUT_NAME!r}, got {len(inputs)} item(s)")
    images = _decode_tensor(inputs[0], spec, binary, check_bools)
    all_binary = _flag(_parameters(body, "the request"), "binary_data_output", "the request")
    outputs, binary_outputs = DEFAULT_OUTPUTS, set(DEFAULT_OUTPUTS) if all_binary else set()
    if body.get("outputs") is not None:
        asked = _field(body, "outputs", list, "the request")
        names, binary_outputs = [], set()
        for item in asked:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ProtocolError(f"each requested output must be an object with a 'name', got {show(item)}")
            if item["name"] not in spec.outputs:
                raise ProtocolError(f"unknown output {show(item['name'])}; this model has {', '.join(spec.outputs)}")
            names.append(item["name"])
            where = f"output {item['name']!r}"
            params = _parameters(item, where)
            if _flag(params, "binary_data", where) if "binary_data" in params else all_binary:
                binary_outputs.add(item["name"])
        outputs = tuple(dict.fromkeys(names)) or DEFAULT_OUTPUTS
        if not names and all_binary:
            binary_outputs = set(DEFAULT_OUTPUTS)
    return InferRequest(request_id, images, outputs, frozenset(binary_outputs))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json_size(n: int, spec: InputSpec) -> None:
    """Refuse (413) a JSON part of `n` bytes, more than any valid request for `spec` needs."""
    if n > spec.max_json_bytes:
        raise ProtocolError(
            f"the JSON part is {n} bytes; a request of at most {spec.max_images} images needs at most "
            f"{spec.max_json_bytes}: send fewer images, less whitespace, or binary tensors ({HEADER_LENGTH})",
            413,
        )


def check_json_tokens(head: bytes, spec: InputSpec) -> None:
    """Refuse (400) a JSON part holding more values, lists and objects than a request for
    `spec` can, before it is parsed. Each value but the last of a list or object follows a ',',
    each list and object opens with '[' or '{': their count (strings included, so never fewer)
    bounds what the parser would build."""
    if b"[" * 8 in head:  # a tensor of images is 4 lists deep in a list of inputs: 5 at most
        raise ProtocolError(TOO_DEEP)
    tokens = head.count(b",") + head.count(b"[") + head.count(b"{")
    if tokens > spec.max_json_tokens:
        raise ProtocolError(
            f"the JSON part holds about {tokens} values, lists and objects (its ',' '[' '{{'); a request of at "
            f"most {spec.max_images} images holds at most {spec.max_json_tokens}: expected {spec.describe()}, "
            "flat or nested as its shape"
        )


def decode_body(body: bytes, header_length: str | None, spec: InputSpec) -> InferRequest:
    """The whole request path from raw HTTP body to `InferRequest`: split off binary tensors
    (`header_length` is the `Inference-Header-Content-Length` header or None), bound and parse
    the JSON (its size and its count of values), parse, validate. CPU-bound: the server runs it
    off its event loop."""
    head, binary = split_body(body, header_length)
    check_json_size(len(head), spec)
    check_json_tokens(head, spec)
    try:
        doc = json.loads(head, parse_int=_bounded_int)
        # the element-wise search for booleans only when the text has one (a fast byte search)
        return decode_request(doc, spec, binary, check_bools=b"true" in head or b"false" in head)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"the request body is not valid JSON: {err}") from None
    except RecursionError:
        raise ProtocolError(TOO_DEEP) from None


def _bounded_int(text: str) -> int:
    """A JSON integer literal, refused beyond 20 digits (int() would fail past 4,300 digits, and
    no pixel, shape or size needs more than 20)."""
    if len(text.lstrip("-")) > 20:
        raise ProtocolError(
            f"the request must hold numbers of at most 20 digits, got an integer literal of {len(text)} characters"
        )
    return int(text)


def v2_datatype(array: np.ndarray) -> str:
    """The v2 datatype of an output array ("FP32", "INT64", "UINT8")."""
    datatype = NUMPY_TO_V2.get(array.dtype.name)
    if datatype is None:
        raise TypeError(f"no v2 datatype for numpy {array.dtype}; known: {sorted(NUMPY_TO_V2)}")
    return datatype


def tensor_bytes(array: np.ndarray) -> bytes:
    """A tensor's little-endian, row-major bytes: binary data over HTTP, raw contents over gRPC."""
    return np.ascontiguousarray(array, dtype=V2_TO_NUMPY[v2_datatype(array)]).tobytes()


def encode_tensor(name: str, array: np.ndarray, blobs: list[bytes] | None = None) -> dict[str, Any]:
    """One v2 tensor: name, shape, datatype and the row-major flattened values, or, given
    `blobs`, its little-endian bytes appended there and their size in its parameters."""
    tensor: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": v2_datatype(array)}
    if blobs is None:
        return tensor | {"data": array.reshape(-1).tolist()}
    blob = tensor_bytes(array)
    blobs.append(blob)
    return tensor | {"parameters": {"binary_data_size": len(blob)}}


def join_body(doc: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, int | None]:
    """The HTTP body for a JSON document and its binary tensors, and the JSON part's length for
    the `Inference-Header-Content-Length` header (None when there are no binary tensors)."""
    head = json.dumps(doc, separators=(",", ":")).encode()
    return (head + b"".join(blobs), len(head)) if blobs else (head, None)


def encode_response(
    model_name: str, request: InferRequest, results: dict[str, np.ndarray], version: str = "1"
) -> tuple[dict[str, Any], list[bytes]]:
    """The v2 response for `request` from its rows of every output: the JSON document and the
    binary tensors that follow it (empty unless the request asked for binary outputs)."""
    body: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if request.id is not None:
        body["id"] = request.id
    blobs: list[bytes] = []
    body["outputs"] = [
        encode_tensor(name, results[name], blobs if name in request.binary_outputs else None)
        for name in request.outputs
    ]
    return body, blobs


def encode_images(
    images: np.ndarray,
    outputs: tuple[str, ...] | None = None,
    request_id: str | None = None,
    blobs: list[bytes] | None = None,
) -> dict:
    """A v2 request body for `images` ((N, H, W, C) uint8 or (N, C, H, W) float): what a client
    sends. Given `blobs`, the images go there as binary data and every output is asked for as
    binary too; send `join_body(doc, blobs)` with the `Inference-Header-Content-Length` header."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = images.astype(np.float32, copy=False)
    body: dict[str, Any] = {"inputs": [encode_tensor(INPUT_NAME, images, blobs)]}
    if blobs is not None:
        body["parameters"] = {"binary_data_output": True}
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    if request_id is not None:
        body["id"] = request_id
    return body


def decode_outputs(body: dict[str, Any], binary: bytes | memoryview = b"") -> dict[str, np.ndarray]:
    """Client side: the response's output tensors as numpy arrays, by name; `binary` is what
    followed the JSON header (binary tensor extension), read in the order of the outputs."""
    out, offset, binary = {}, 0, memoryview(binary)
    for o in body["outputs"]:
        dtype = np.dtype(V2_TO_NUMPY[o["datatype"]])
        size = (o.get("parameters") or {}).get("binary_data_size")  # KServe's ModelServer writes null
        if size is None:
            out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
        else:
            out[o["name"]] = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(o["shape"])
            offset += size
    return out
