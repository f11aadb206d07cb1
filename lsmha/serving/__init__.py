"""Serving: the KServe v2 HTTP server (`lsmha-serve`), its dynamic batcher and metrics,
and the Triton model-repository writer (`lsmha-export triton`).

Light on import: FastAPI/uvicorn (the `serve` extra) load only with `create_app` or
`CommitteeService`, so `lsmha-export triton` works without them.
"""

from .batcher import BatcherStats, DynamicBatcher, QueueFull
from .config import ServeConfig
from .metrics import ServerMetrics
from .protocol import InferRequest, InputSpec, ProtocolError, decode_outputs, decode_request, encode_images
from .triton import write_triton_repository

__all__ = [
    "BatcherStats",
    "CommitteeService",
    "DynamicBatcher",
    "InferRequest",
    "InputSpec",
    "ProtocolError",
    "QueueFull",
    "ServeConfig",
    "ServerMetrics",
    "create_app",
    "decode_outputs",
    "decode_request",
    "encode_images",
    "write_triton_repository",
]


def __getattr__(name: str):
    if name in ("CommitteeService", "create_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'lsmha.serving' has no attribute {name!r}")
