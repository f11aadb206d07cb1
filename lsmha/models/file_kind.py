"""What a file given in the wrong place is, so errors can say "X is an ONNX model, expected
a committee.json" instead of failing to decode it."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

KNOWN_JSON = {
    "lsmha-committee-1": "a committee.json (checkpoints of a committee)",
    "lsmha-export-1": "an export manifest.json",
}


def file_kind(path: str | os.PathLike) -> str:
    """A short description of what `path` holds, from its first bytes (and its suffix for
    formats without a signature): "a safetensors checkpoint", "an ONNX model", ..."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (an AOTInductor .pt2 package?)" if path.suffix == ".pt2" else "a zip archive"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < 100_000_000:
            return "a safetensors file"
        if any(b < 9 for b in head[:8]):  # NUL or control bytes: a length, not text (a forged or corrupt one)
            return f"a safetensors file with a corrupt header length ({n} bytes)"
    if head.lstrip()[:1] in (b"{", b"["):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "a malformed JSON file"
        fmt = doc.get("format") if isinstance(doc, dict) else None
        return KNOWN_JSON.get(fmt, f"a JSON document (format {fmt!r})")
    if path.suffix == ".onnx":
        return "an ONNX model"
    if path.suffix in (".plan", ".engine"):
        return "a TensorRT plan"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file"
    return "a text file"
