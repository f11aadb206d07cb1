"""Export: builds files — ONNX graphs with fused attention, TensorRT plans, AOTInductor
packages — and records each in the export directory's manifest (`lsmha.artifacts`).

Light on import: torch and onnx load with the first name asked for."""

from typing import Any

_LAZY = {"export_onnx": "onnx"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lsmha.export' has no attribute {name!r}")
