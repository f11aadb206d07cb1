"""The HTTP server: a FastAPI app speaking the KServe v2 protocol for one committee.

    GET  /v2/health/live            200 while the process serves
    GET  /v2/health/ready           503 until the committee is loaded and warmed up, then 200
    GET  /v2                        server metadata
    GET  /v2/models/{name}          model metadata: inputs, outputs, members, backend
    GET  /v2/models/{name}/ready    as /v2/health/ready, for this model
    POST /v2/models/{name}/infer    JSON or binary tensors in, logits / label / member_logits out
                                    (and members_run, always, from an adaptive committee)
    (each of the three also as /v2/models/{name}/versions/1/...)
    GET  /metrics                   Prometheus text

The routes live on the module's `router` and reach the service through the `Service`
dependency (`app.state.service`); `create_app` puts them on an app with the service's
lifespan. Routes raise; one handler (`error_response`) answers every failure from the table
in errors.py as v2 error JSON `{"error": "..."}`: 400 bad input, 404 unknown model
or route, 405 wrong method, 408 a body slower than `body_timeout_s`, 413 payload
over the limit, 503 not ready, queue full or shutting down (with Retry-After),
500 a failed batch (only that batch's requests; the server keeps serving).
The committee loads in a background thread after the server starts, so
liveness answers at once and readiness tells when to send traffic. Request
bodies are parsed in a worker thread, so the event loop keeps reading other
requests and answering health checks meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from ..metrics import soft_committee
from ..version import __version__
from .batcher import BatchKey, DynamicBatcher, QueueFull, ShuttingDown
from .clock import LoopClock
from .config import ServeConfig
from .errors import TABLE, InferenceFailed, NotReady, ShutdownCancelled, classify
from .extension_routes import router as extension_router
from .metrics import CONTENT_TYPE, ServerMetrics
from .model_config import EXTENSIONS, MODEL_VERSION, ONE_INPUT, input_tensors, output_tensors, unknown_model
from .protocol import (
    HEADER_LENGTH,
    OUTPUTS,
    InferRequest,
    InputSpec,
    ProtocolError,
    check_json_size,
    decode_body,
    encode_response,
    join_body,
)

log = logging.getLogger("lsmha.serving")


class LoadingStopped(Exception):
    """Loading or warm-up gave way to a shutdown."""


class CommitteeService:
    """The served committee (once loaded), its batcher and its metrics.

    Args:
        loader: returns the `lsmha.engine.Committee` to serve (called once, in its own thread).
        config: the server settings.
        on_load_failure: called with the exception when loading or warm-up fails (the CLI exits).
    """

    def __init__(
        self,
        loader: Callable[[], Any],
        config: ServeConfig,
        on_load_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.loader, self.config, self.on_load_failure = loader, config, on_load_failure
        self.metrics = ServerMetrics(config.max_batch, config.name, adaptive=config.adaptive)
        self.batcher = DynamicBatcher(
            self.run,
            max_batch=config.max_batch,
            max_delay_ms=config.max_delay_ms,
            max_queue=config.max_queue,
            metrics=self.metrics,
        )
        self.committee: Any = None
        self.spec: InputSpec | None = None
        self.ready = False
        self.draining = False  # set by the server once its graceful-shutdown wait began
        self.failure: str | None = None
        self.clock = LoopClock()  # client deadlines: a paused process does not count against them
        self.loading_abandoned = False  # the shutdown bound passed while loading or warm-up still ran
        self._decoder: ThreadPoolExecutor | None = None
        self._loading: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- loading -------------------------------------------------------------------------------

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise LoadingStopped("the server is shutting down")

    def _load_and_warm(self) -> None:
        committee = self.loader()
        outputs = (*OUTPUTS, "members_run") if self.config.adaptive else OUTPUTS
        spec = InputSpec(committee.img_size, committee.in_chans, self.config.max_batch, outputs)
        try:
            if self.config.warmup:
                rng = np.random.default_rng(0)
                for n in sorted({1, self.config.max_batch}):
                    pixels = rng.integers(0, 256, (n, *spec.shape("UINT8")), dtype=np.uint8)
                    floats = pixels.transpose(0, 3, 1, 2).astype(np.float32)
                    for images, members in ((pixels, True), (floats, False)):
                        self._check_stopping()  # between batches: a shutdown does not wait for the rest
                        self._compute(committee, images, BatchKey.of(images, member_logits=members))
            self._check_stopping()
        except LoadingStopped:
            committee.close()
            raise
        self.committee, self.spec = committee, spec

    def _load_into(self, done: concurrent.futures.Future) -> None:
        done.set_running_or_notify_cancel()
        try:
            self._load_and_warm()
        except BaseException as err:  # handed to load(), on the event loop
            done.set_exception(err)
        else:
            done.set_result(None)

    async def load(self) -> None:
        """Load and warm up the committee; readiness flips only on success. In a daemon thread
        of its own, not the loop's executor, so that a shutdown need not wait for a model load
        (`stop`)."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._loading = threading.Thread(target=self._load_into, args=(done,), name="lsmha-load", daemon=True)
        self._loading.start()
        try:
            await asyncio.wrap_future(done)
        except LoadingStopped:
            log.info("loading stopped: the server is shutting down")
            return
        except Exception as err:
            self.failure = f"loading the committee failed: {type(err).__name__}: {err}"
            log.error(self.failure)
            if self.on_load_failure is not None:
                self.on_load_failure(err)
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: %r on %s", self.committee, self.config.name)

    # -- inference -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batcher and the body decoder (the app's lifespan calls this)."""
        # one thread: parsing holds the interpreter, so more threads would not parse faster,
        # and bodies waiting for it stay queued off the event loop
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsmha-decode")
        self.clock.start()
        await self.batcher.start()

    async def stop(self) -> None:
        """Stop the batcher and the decoder; loading or warm-up under way stops between batches,
        waited for at most `shutdown_timeout_s` (then `loading_abandoned`: the thread is left)."""
        self._stopping.set()
        await self.batcher.stop()
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)
            self._decoder = None
        if self._loading is not None and self._loading.is_alive():
            await asyncio.to_thread(self._loading.join, self.config.shutdown_timeout_s)
            if self._loading.is_alive():
                self.loading_abandoned = True
                log.warning(
                    "loading or warm-up still runs %g s into the shutdown (--shutdown-timeout-s); not waiting for it",
                    self.config.shutdown_timeout_s,
                )
        if self.committee is not None:
            self.committee.close()
        await self.clock.stop()

    async def decode(self, body: bytes, header_length: str | None) -> InferRequest:
        """`protocol.decode_body` in the decoder thread: the event loop stays free meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoder, decode_body, body, header_length, self.spec)

    @staticmethod
    def _compute(committee: Any, images: np.ndarray, key: BatchKey) -> dict[str, np.ndarray]:
        everyone = np.full(len(images), len(committee), dtype=np.int64)
        if key.member_logits:  # every member runs, adaptive or not
            members = committee.member_logits(images)  # (M, N, classes)
            logits = soft_committee(members)
            out = {"member_logits": np.ascontiguousarray(members.transpose(1, 0, 2)), "members_run": everyone}
        elif hasattr(committee, "decide"):  # an AdaptiveCommittee: logits are the partial sums decided on
            decided = committee.decide(images)
            logits, out = decided.logits, {"members_run": decided.members_run}
        else:
            logits, out = committee.predict_logits(images), {"members_run": everyone}
        return {"logits": logits, "label": logits.argmax(axis=1).astype(np.int64), **out}

    def run(self, images: np.ndarray, key: BatchKey) -> dict[str, np.ndarray]:
        """One executed batch: every output, batch axis first (the batcher's `run`)."""
        outputs = self._compute(self.committee, images, key)
        self.metrics.count_members_run(outputs["members_run"])
        return outputs

    def metadata(self) -> dict[str, Any]:
        c = self.committee
        return {
            "name": self.config.name,
            "versions": [MODEL_VERSION],
            "platform": "lsmha_committee",
            "backend": c.backend,
            "members": c.members,
            "max_batch_size": self.config.max_batch,
            # both forms of the one input `images`; a request sends exactly one (parameters say so)
            "inputs": input_tensors(self.spec),
            "outputs": output_tensors(c, self.config.adaptive),
            "parameters": {"inputs": ONE_INPUT},
        }


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # json.dumps escapes non-ASCII, so no client text (not even a lone surrogate) can fail the encoding
    return Response(json.dumps(doc, separators=(",", ":")), status, headers, media_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": message}, status, headers)


def _is_count(text: str | None) -> bool:
    return text is not None and text.isascii() and text.isdigit()


async def _read_body(request: Request, limit: int, timeout_s: float, clock: LoopClock) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all, and
    (408) a body that has not arrived `timeout_s` after the headers did, on `clock`: time the
    process did not run (stopped, or its loop blocked) is not the client's, so a body that came
    meanwhile is read, even when its timer fires before the loop has read the socket."""
    declared = request.headers.get("content-length")
    if _is_count(declared) and int(declared) > limit:
        raise ProtocolError(f"payload of {declared} bytes exceeds the limit of {limit} bytes (--max-body-mb)", 413)
    chunks, total = [], 0
    deadline = clock.now() + timeout_s
    while (left := deadline - clock.now()) > 0:
        try:
            message = await asyncio.wait_for(request.receive(), left)
        except TimeoutError:
            continue  # measured again on the clock: a pause leaves time left
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise ProtocolError(f"payload exceeds the limit of {limit} bytes (--max-body-mb)", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
    expected = f" of {declared}" if _is_count(declared) else ""
    raise ProtocolError(
        f"the request body did not arrive within {timeout_s:g} s ({total}{expected} bytes came; "
        "--body-timeout-s); send it faster or in smaller requests",
        408,
    )


def service_of(request: Request) -> CommitteeService:
    """The app's service (a route dependency)."""
    return request.app.state.service


Service = Annotated[CommitteeService, Depends(service_of)]
router = APIRouter()


def _not_ready(service: CommitteeService) -> NotReady:
    reason = service.failure or "the committee is still loading or warming up"
    return NotReady(f"model {service.config.name!r} is not ready: {reason}")


def _check_model(service: CommitteeService, name: str, version: str | None) -> None:
    """ProtocolError 404 unless `name` (and `version`, when the URL names one) is served here."""
    if why := unknown_model(service.config, name, version):
        raise ProtocolError(why, 404)


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(service: Service) -> Response:
    if not service.ready:
        raise _not_ready(service)
    return _json({"ready": True})


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    return {"name": "lsmha-serve", "version": __version__, "extensions": list(EXTENSIONS)}


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(service: Service, name: str, version: str | None = None) -> Response:
    _check_model(service, name, version)
    if not service.ready:
        raise _not_ready(service)
    return _json(service.metadata())


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(service: Service, name: str, version: str | None = None) -> Response:
    _check_model(service, name, version)
    if not service.ready:
        raise _not_ready(service)
    return _json({"name": name, "ready": True})


@router.get("/metrics")
async def prometheus(service: Service) -> Response:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(service: Service, name: str, request: Request, version: str | None = None) -> Response:
    config = service.config
    service.metrics.request(name)
    request.state.counts_errors = True  # error_response counts this request's failure in /metrics
    _check_model(service, name, version)
    if not service.ready:
        raise _not_ready(service)
    header_length = request.headers.get(HEADER_LENGTH)
    declared = request.headers.get("content-length")
    if header_length is None and _is_count(declared) and int(declared) <= config.max_body_bytes:
        check_json_size(int(declared), service.spec)  # all JSON: refuse before reading it
    try:
        body = await _read_body(request, config.max_body_bytes, config.body_timeout_s, service.clock)
        req = await service.decode(body, header_length)
        if config.adaptive and "members_run" not in req.outputs:  # every adaptive answer says it
            req = dataclasses.replace(req, outputs=(*req.outputs, "members_run"))
        rows = await service.batcher.submit(req.images, key=BatchKey.of(req.images, req.wants_members))
    except asyncio.CancelledError:
        if not service.draining:
            raise
        # the shutdown bound is over and uvicorn cancels what still runs: answer it (the
        # client may retry elsewhere) rather than leave one traceback per request in the log
        asyncio.current_task().uncancel()
        log.info("request from %s cancelled: the shutdown wait is over", _peer(request))
        raise ShutdownCancelled("the server is shutting down; retry elsewhere") from None
    except (ProtocolError, ClientDisconnect, QueueFull, ShuttingDown):
        raise
    except Exception as err:  # a failed batch: only its requests fail
        log.exception("inference failed")
        raise InferenceFailed(f"inference failed: {type(err).__name__}: {err}") from err
    service.metrics.answered(len(req.images))
    doc, blobs = encode_response(config.name, req, rows, MODEL_VERSION)
    content, length = join_body(doc, blobs)
    if length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(length)})


async def error_response(request: Request, exc: Exception) -> Response:
    """The one answer to every failure of every route: status, message and headers from
    `errors.classify`, counted in /metrics for inference requests."""
    failure = classify(exc)
    if getattr(request.state, "counts_errors", False):
        request.app.state.service.metrics.error(failure.kind)
    if failure.kind == "disconnected":  # nobody to answer; one line, not a traceback
        log.info("client %s went away before its request body arrived", _peer(request))
    elif failure.status == 500 and not isinstance(exc, InferenceFailed):  # logged where the batch failed
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return _error(failure.status, failure.message, failure.headers or None)


def create_app(service: CommitteeService) -> FastAPI:
    """The FastAPI app serving `service` (loading starts with the app's lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        loading = asyncio.create_task(service.load())
        try:
            yield
        finally:
            loading.cancel()
            await service.stop()

    app = FastAPI(title="lsmha-serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.include_router(extension_router)  # first: its /v2/models/stats before /v2/models/{name}
    app.include_router(router)
    for kind, _ in TABLE:
        app.add_exception_handler(kind, error_response)
    app.add_exception_handler(Exception, error_response)  # a 500 (Starlette then re-raises it to uvicorn's log)
    return app


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "(unknown address)"
