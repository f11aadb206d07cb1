"""Export: ONNX graphs with fused attention, manifests with hashes, parity checks."""

from .manifest import (
    COMMITTEE,
    MANIFEST,
    ExportManifest,
    FileEntry,
    TensorInfo,
    add_entries,
    file_entry,
    read_manifest,
    write_manifest,
)

__all__ = [
    "COMMITTEE",
    "MANIFEST",
    "ExportManifest",
    "FileEntry",
    "TensorInfo",
    "add_entries",
    "export_onnx",
    "file_entry",
    "read_manifest",
    "write_manifest",
]


def __getattr__(name: str):
    # onnx.py imports torch and onnx; load it only when asked for.
    if name == "export_onnx":
        from .onnx import export_onnx

        return export_onnx
    raise AttributeError(f"module 'lsmha.export' has no attribute {name!r}")
