"""The KServe v2 gRPC endpoint (`inference.GRPCInferenceService`, as Triton serves it) on a
`CommitteeService`: `lsmha-serve --grpc-port PORT`. It runs on the HTTP server's event loop
(grpc.aio) and shares its batcher, limits, metrics, statistics and shutdown.

    ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata
    ModelInfer        typed `contents` or `raw_input_contents` in; every output in
                      `raw_output_contents`, as Triton answers
    ModelConfig       the model configuration extension (model_config.py)
    ModelStatistics   the statistics extension (statistics.py)

A request is turned into the v2 JSON form and decoded by `protocol.decode_request`, so both
protocols accept and refuse exactly the same tensors, with the same messages. Errors:

    INVALID_ARGUMENT    what HTTP answers 400: bad tensors, names, shapes, values; bytes
                        that are not a protobuf message of the call's type
    NOT_FOUND           an unknown model or version (HTTP 404)
    RESOURCE_EXHAUSTED  a message over --max-body-mb (refused by gRPC before it is read)
    UNAVAILABLE         not ready yet, queue full, or shutting down (HTTP 503)
    DEADLINE_EXCEEDED   the client's deadline passed (gRPC's own answer)
    INTERNAL            a batch failed; only its requests fail (HTTP 500)

Requests are parsed by protobuf (upb) on the event loop, which costs microseconds for raw
contents; typed contents are turned into numbers in a worker thread, as HTTP's JSON is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from ..version import __version__
from .batcher import BatchKey, QueueFull, ShuttingDown
from .model_config import EXTENSIONS, MODEL_VERSION, model_config, unknown_model
from .proto import kserve_v2_pb2 as pb
from .protocol import InferRequest, ProtocolError, decode_request, show, tensor_bytes, v2_datatype

log = logging.getLogger("lsmha.serving")
SERVICE = "inference.GRPCInferenceService"  # the wire name; the .proto's package is lsmha.kserve
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
KINDS = {400: "bad_request", 404: "unknown_model", 408: "timeout", 413: "payload_too_large"}
# the typed-contents field of each datatype (Triton's InferTensorContents)
CONTENTS = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
MAX_DETAILS = 1024  # characters of a status's details
GRPC_IDLE_S = 300  # a connection without calls for this long is closed (GOAWAY)
GRPC_MAX_MESSAGE = (1 << 31) - 1  # the largest message length gRPC's options can hold


class Refused(Exception):
    """An answer with a gRPC status other than OK: raised inside a call, sent by the handler."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def request_document(request: pb.ModelInferRequest) -> tuple[dict[str, Any], bytes]:
    """A ModelInferRequest in the v2 JSON form `decode_request` reads, and its raw bytes (the one
    input's `raw_input_contents`, or empty). ProtocolError on what the JSON form cannot say."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} input(s); "
            "send one per input, in order"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        doc: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        used = [f.name for f, _ in tensor.contents.ListFields()]
        if raw:
            if used:
                raise ProtocolError(f"input {show(tensor.name)} has both contents.{used[0]} and raw_input_contents")
            doc["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            field = CONTENTS.get(tensor.datatype)
            if used and (field is None or used != [field]):
                expected = f"contents.{field}" if field else "a datatype of the v2 protocol"
                raise ProtocolError(
                    f"input {show(tensor.name)} is {show(tensor.datatype)}: expected its values in {expected} "
                    f"(or raw_input_contents), got contents.{', contents.'.join(used)}"
                )
            doc["data"] = list(getattr(tensor.contents, field)) if field else []
        inputs.append(doc)
    outputs = []
    for out in request.outputs:
        extra = sorted(set(out.parameters) - {"binary_data"})  # binary_data: meaningless here, harmless
        if extra:
            raise ProtocolError(f"output {show(out.name)}: parameter(s) {', '.join(extra)} not supported")
        outputs.append({"name": out.name})
    document = {"inputs": inputs, "outputs": outputs or None}
    if request.id:
        document["id"] = request.id
    return document, raw[0] if raw else b""


def decode_infer_request(request: pb.ModelInferRequest, spec: Any) -> InferRequest:
    """A ModelInferRequest decoded and checked as HTTP requests are; ProtocolError if refused."""
    document, raw = request_document(request)
    return decode_request(document, spec, raw, check_bools=False)  # protobuf numbers are never JSON true/false


def infer_response(name: str, req: InferRequest, rows: dict[str, Any]) -> pb.ModelInferResponse:
    """The answer: each output asked for, its bytes in raw_output_contents (as Triton answers)."""
    response = pb.ModelInferResponse(model_name=name, model_version=MODEL_VERSION, id=req.id or "")
    for output in req.outputs:
        array = rows[output]
        response.outputs.add(name=output, datatype=v2_datatype(array), shape=array.shape)
        response.raw_output_contents.append(tensor_bytes(array))
    return response


class InferenceServicer:
    """The calls of `inference.GRPCInferenceService` on one `CommitteeService`."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def _model(self, name: str, version: str, need_ready: bool = True) -> None:
        if why := unknown_model(self.service.config, name, version):
            raise Refused(grpc.StatusCode.NOT_FOUND, why)
        if need_ready and not self.service.ready:
            raise Refused(grpc.StatusCode.UNAVAILABLE, self._not_ready())

    def _not_ready(self) -> str:
        reason = self.service.failure or "the committee is still loading or warming up"
        return f"model {self.service.config.name!r} is not ready: {reason}"

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        self._model(request.name, request.version, need_ready=False)
        return pb.ModelReadyResponse(ready=self.service.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="lsmha-serve", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        self._model(request.name, request.version)
        meta = self.service.metadata()
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        self._model(request.name, request.version)
        return pb.ModelConfigResponse(config=json_format.ParseDict(model_config(self.service), pb.ModelConfig()))

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        if request.name:  # empty: every model
            self._model(request.name, request.version, need_ready=False)
        stats = self.service.metrics.stats.to_dict(self.service.config.name, MODEL_VERSION)
        return json_format.ParseDict({"model_stats": [stats]}, pb.ModelStatisticsResponse())

    async def ModelInfer(self, data: bytes, context: grpc.aio.ServicerContext) -> Message:
        """Parses its request itself, so bytes that are no message count as a bad request."""
        service, metrics = self.service, self.service.metrics
        try:
            request = pb.ModelInferRequest.FromString(data)
        except DecodeError as err:
            request = None
            failure = ProtocolError(f"the request is not a valid inference.ModelInferRequest: {err}")
        metrics.request(request.model_name if request is not None else "")
        try:
            if request is None:
                raise failure
            self._model(request.model_name, request.model_version)
            if request.raw_input_contents:  # bytes: microseconds, on the loop
                req = decode_infer_request(request, service.spec)
            else:  # typed numbers: a list of each, off the loop
                req = await asyncio.to_thread(decode_infer_request, request, service.spec)
            if service.config.adaptive and "members_run" not in req.outputs:  # every adaptive answer says it
                req = dataclasses.replace(req, outputs=(*req.outputs, "members_run"))
            rows = await service.batcher.submit(req.images, key=BatchKey.of(req.images, req.wants_members))
        except ProtocolError as err:
            metrics.error(KINDS.get(err.status, "bad_request"))
            raise Refused(CODES.get(err.status, grpc.StatusCode.INVALID_ARGUMENT), str(err)) from None
        except Refused as err:
            metrics.error("unknown_model" if err.code == grpc.StatusCode.NOT_FOUND else "not_ready")
            raise
        except QueueFull as err:
            metrics.error("queue_full")
            raise Refused(grpc.StatusCode.UNAVAILABLE, str(err)) from None
        except ShuttingDown as err:
            metrics.error("shutting_down")
            raise Refused(grpc.StatusCode.UNAVAILABLE, str(err)) from None
        except asyncio.CancelledError:  # the client went away, its deadline passed, or the shutdown wait ended
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            metrics.error("shutting_down" if service.draining else "timeout" if expired else "disconnected")
            raise
        except Exception as err:  # a failed batch: only its requests fail
            metrics.error("internal")
            log.exception("inference failed")
            raise Refused(grpc.StatusCode.INTERNAL, f"inference failed: {type(err).__name__}: {err}") from None
        metrics.answered(len(req.images))
        return infer_response(service.config.name, req, rows)


def status_details(message: str) -> str:
    """`message` cut to `MAX_DETAILS` characters: status details travel in a trailer, and a client
    refuses trailers over its metadata limit (16 KiB by default), answering RESOURCE_EXHAUSTED in
    place of the status sent."""
    return message if len(message) <= MAX_DETAILS else f"{message[:MAX_DETAILS]}... ({len(message)} characters)"


def _handler(call: Callable[..., Awaitable[Message]], request_type: type[Message] | None):
    """A unary handler that parses the request itself (`request_type`; None: `call` takes the bytes
    and the context), so bytes that are not a message of its type are INVALID_ARGUMENT (gRPC's own
    deserializer would answer INTERNAL), and answers `Refused` with its status."""

    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            if request_type is None:
                response = await call(data, context)
            else:
                try:
                    request = request_type.FromString(data)
                except DecodeError as err:
                    wire_name = f"inference.{request_type.DESCRIPTOR.name}"
                    raise Refused(
                        grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {wire_name}: {err}"
                    ) from None
                response = await call(request)
        except Refused as err:
            await context.abort(err.code, status_details(err.message))
        return response.SerializeToString()

    return grpc.unary_unary_rpc_method_handler(handle)


def generic_handler(service: Any) -> grpc.GenericRpcHandler:
    """Every call of the .proto's service, registered under the wire name `inference.GRPCInferenceService`."""
    servicer = InferenceServicer(service)
    handlers = {
        method.name: _handler(
            getattr(servicer, method.name), None if method.name == "ModelInfer" else getattr(pb, method.input_type.name)
        )
        for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def start_grpc_server(service: Any, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC endpoint for `service` on `host:port` (0: a free port) on the running loop;
    returns the server and the port it listens on. OSError if it cannot listen there."""
    config = service.config
    calls = config.max_queue + config.max_batch  # more inference calls than this are refused by the queue anyway
    server = grpc.aio.server(
        maximum_concurrent_rpcs=2 * calls,  # beyond: RESOURCE_EXHAUSTED
        options=[
            # larger: RESOURCE_EXHAUSTED, never read; gRPC takes a C int here, and protobuf reads no
            # message past 2 GiB anyway
            ("grpc.max_receive_message_length", min(config.max_body_bytes, GRPC_MAX_MESSAGE)),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a port another server listens on is an error, not shared
            # connections, as HTTP's: at most --max-connections (newcomers are closed, the client's
            # call UNAVAILABLE), each with its HTTP/2 preface within --header-timeout-s, idle ones
            # closed after GRPC_IDLE_S (clients reconnect by themselves); calls on one connection
            # bounded (HTTP/2 refuses more, UNAVAILABLE), so their messages in memory are too
            ("grpc.max_allowed_incoming_connections", config.max_connections),
            ("grpc.server_handshake_timeout_ms", int(config.header_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", GRPC_IDLE_S * 1000),
            ("grpc.max_concurrent_streams", calls),
        ],
    )
    server.add_generic_rpc_handlers((generic_handler(service),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as err:  # grpc raises when it cannot bind
        raise OSError(
            f"cannot listen for gRPC on {address}: {err} (another server there? choose another --grpc-port)"
        ) from None
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address} (another server there? choose another --grpc-port)")
    await server.start()
    return server, bound
