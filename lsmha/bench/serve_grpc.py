"""`lsmha-bench serve`'s gRPC mode: the same loop as its HTTP modes (`measure_server`), over
lsmha-serve's KServe v2 gRPC endpoint, and the reason KServe's own ModelServer is not measured.

Each client thread has its own channel and sends a pre-serialised ModelInferRequest (images as
`raw_input_contents`, `label` asked for), as tritonclient.grpc sends them, so client-side
encoding costs nothing; every answer's labels are compared with direct predict.
"""

from __future__ import annotations

import importlib.util
import threading
import time

import numpy as np

from .serve import ServeRow, _row, scrape_batching

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

    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures = {"errors": 0, "mismatches": 0}

    def client(c: int) -> None:
        k = c % len(bodies)
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary(METHOD)
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                t0 = time.perf_counter()
                try:
                    answer = pb.ModelInferResponse.FromString(call(bodies[k], timeout=timeout_s))
                except grpc.RpcError:
                    answer = None
                dt = time.perf_counter() - t0
                ok = answer is not None
                same = ok and np.array_equal(np.frombuffer(answer.raw_output_contents[0], "<i8"), expected[k])
                with lock:
                    if ok:
                        latencies.append(dt)
                    failures["errors"] += not ok
                    failures["mismatches"] += ok and not same

    before = scrape_batching(url)
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    after = scrape_batching(url)
    batches = after["batches"] - before["batches"]
    mean_batch = (after["images"] - before["images"]) / batches if batches else None
    return _row(mode, clients, len(images[0]), latencies, seconds, mean_batch_images=mean_batch,
                multi_request_batches=int(after["multi"] - before["multi"]), **failures)  # fmt: skip


def kserve_skipped() -> str:
    """Why the KServe ModelServer row is absent: KServe is not a dependency, and a row is only
    measured where it imports; no wrapper of the committee for it is written yet either."""
    if importlib.util.find_spec("kserve") is None:
        return "kserve: skipped, the kserve package is not installed (it is not a dependency of lsmha)"
    return "kserve: skipped, lsmha-bench has no KServe ModelServer wrapper of the committee yet"
