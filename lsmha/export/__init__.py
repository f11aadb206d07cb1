"""Export: builds files — ONNX graphs with fused attention, TensorRT plans, AOTInductor
packages — and records each in the export directory's manifest (`lsmha.artifacts`)."""

__all__ = ["export_onnx"]


def __getattr__(name: str):
    # onnx.py imports torch and onnx; load it only when asked for.
    if name == "export_onnx":
        from .onnx import export_onnx

        return export_onnx
    raise AttributeError(f"module 'lsmha.export' has no attribute {name!r}")
