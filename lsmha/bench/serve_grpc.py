"""`lsmha-bench serve`'s gRPC mode: the same loop as its HTTP modes (`measure_server`), over
lsmha-serve's KServe v2 gRPC endpoint, and the reason KServe's own ModelServer is not measured.

Each client thread has its own channel and sends a pre-serialised ModelInferRequest (images as
`raw_input_contents`, `label` asked for), as tritonclient.grpc sends them, so client-side
encoding costs nothing; every answer's labels are compared with direct predict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from .serve import ServeRow, drive_clients

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def measure_grpc(
    url: str,
    target: str,
    name: str,
    images: list[np.ndarray],
    expected: list[np.ndarray],
    clients: int,
    requests: int,
    mode: str = "grpc",
    timeout_s: float = 60.0,
) -> ServeRow:
    """`clients` threads send `requests` ModelInfer calls in all to `target` (host:port), client c
    sending `images[c % len]`; batching facts come from the same server's /metrics at `url`."""
    import grpc

    from ..serving.proto import kserve_v2_pb2 as pb

    bodies = []
    for x in images:
        req = pb.ModelInferRequest(model_name=name)
        req.inputs.add(name="images", datatype="UINT8" if x.dtype == np.uint8 else "FP32", shape=x.shape)
        req.outputs.add(name="label")
        req.raw_input_contents.append(np.ascontiguousarray(x).tobytes())
        bodies.append(req.SerializeToString())

    def send(call: Any, c: int) -> Any:
        try:
            return pb.ModelInferResponse.FromString(call(bodies[c % len(bodies)], timeout=timeout_s))
        except grpc.RpcError:
            return None

    def check(answer: Any, c: int) -> tuple[bool, bool]:
        ok = answer is not None
        return ok, ok and np.array_equal(
            np.frombuffer(answer.raw_output_contents[0], "<i8"), expected[c % len(expected)]
        )

    @contextlib.contextmanager
    def connect() -> Iterator[Any]:
        with grpc.insecure_channel(target) as channel:
            yield channel.unary_unary(METHOD)

    return drive_clients(url, mode, clients, requests, len(images[0]), connect, send, check)
