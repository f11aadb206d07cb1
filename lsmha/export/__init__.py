"""Export: builds files — ONNX graphs with fused attention, TensorRT plans, AOTInductor
packages — and records each in the export directory's manifest (`lsmha.artifacts`).

Light on import: torch and onnx load with the first name asked for."""

from ..lazy import lazy_getattr

_LAZY = {"export_onnx": "onnx"}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
