"""lsmha: a committee engine for low-latency vision transformers with large-scale
multi-head attention (Gross, Halevi, Koresh, Tzach, Kanter)."""

from typing import Any

from .models import CCT, CCTSpec, count_macs, count_params, create_model, layer_latency, list_models, load, save
from .version import __version__ as __version__

__all__ = [
    "CCT",
    "CCTSpec",
    "Committee",
    "count_macs",
    "count_params",
    "create_model",
    "layer_latency",
    "list_models",
    "load",
    "save",
]


def __getattr__(name: str) -> Any:
    # The engine pulls in onnxruntime; import it only when asked for.
    if name == "Committee":
        from .engine import Committee

        return Committee
    raise AttributeError(f"module 'lsmha' has no attribute {name!r}")
