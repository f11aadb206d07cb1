"""Serving: the KServe v2 HTTP server (`lsmha-serve`) and its gRPC service (`--grpc-port`,
grpc_service.py), Triton's model configuration and statistics extensions, the dynamic
batcher and metrics, and the Triton model-repository writer (`lsmha-export triton`).

Light on import: FastAPI, uvicorn and prometheus_client (the `serve` extra) load only
with `create_app`, `CommitteeService`, `CommitteeServer`, `BackgroundServer` or
`ServerMetrics`, so `lsmha-export triton` works without them; torch only with
`write_triton_repository` (or a committee), so `lsmha-serve --help` answers at once.
"""

from ..lazy import lazy_getattr
from .batcher import BatcherStats, BatchKey, DynamicBatcher, QueueFull, ShuttingDown
from .config import ServeConfig
from .protocol import (
    InferRequest,
    InputSpec,
    ProtocolError,
    decode_body,
    decode_outputs,
    decode_request,
    encode_images,
)

_LAZY = {
    "CommitteeService": "app",
    "create_app": "app",
    "CommitteeServer": "server",
    "BackgroundServer": "server",
    "ServerMetrics": "metrics",
    "write_triton_repository": "triton",
}

__all__ = [
    "BackgroundServer",
    "BatchKey",
    "BatcherStats",
    "CommitteeServer",
    "CommitteeService",
    "DynamicBatcher",
    "InferRequest",
    "InputSpec",
    "ProtocolError",
    "QueueFull",
    "ServeConfig",
    "ServerMetrics",
    "ShuttingDown",
    "create_app",
    "decode_body",
    "decode_outputs",
    "decode_request",
    "encode_images",
    "write_triton_repository",
]


__getattr__ = lazy_getattr(__name__, _LAZY)
