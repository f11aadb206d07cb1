"""Every way an HTTP request can fail, mapped in one table to its status, its error kind in
/metrics (`lsmha_errors_total{kind=...}`) and its headers.

Routes raise; the app's one handler (`app.error_response`) answers `{"error": message}` with
what `classify` says. An exception outside the table is a 500.

    raise NotReady(reason)        # 503, not_ready, Retry-After: 1
    classify(QueueFull(...)).status == 503
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .batcher import QueueFull, ShuttingDown
from .protocol import ProtocolError


class NotReady(RuntimeError):
    """The committee is not loaded and warmed up (yet, or loading failed)."""


class InferenceFailed(RuntimeError):
    """The batch holding this request raised; only its requests fail, the server keeps serving."""


class ShutdownCancelled(ShuttingDown):
    """The request was still running when the shutdown wait ended and was cancelled."""


@dataclass(frozen=True)
class Failure:
    """How one failure is answered."""

    status: int
    kind: str  # the lsmha_errors_total label
    message: str
    headers: dict[str, str] = field(default_factory=dict)


# a refusal answered before the whole body came: the connection cannot be reused
_CLOSE = {"Connection": "close"}
_PROTOCOL_KINDS = {400: "bad_request", 404: "unknown_model", 408: "timeout", 413: "payload_too_large"}


def _protocol(err: ProtocolError) -> Failure:
    close = _CLOSE if err.status in (408, 413) else {}
    return Failure(err.status, _PROTOCOL_KINDS.get(err.status, "bad_request"), str(err), close)


# most specific first: the first class an exception is an instance of decides
TABLE: list[tuple[type[BaseException], Callable[[BaseException], Failure]]] = [
    (ProtocolError, _protocol),
    (NotReady, lambda e: Failure(503, "not_ready", str(e), {"Retry-After": "1"})),
    (ClientDisconnect, lambda e: Failure(400, "disconnected", "client disconnected")),
    (QueueFull, lambda e: Failure(503, "queue_full", str(e), {"Retry-After": str(e.retry_after_s)})),
    (ShutdownCancelled, lambda e: Failure(503, "shutting_down", str(e), {"Retry-After": "1", **_CLOSE})),
    (ShuttingDown, lambda e: Failure(503, "shutting_down", str(e), {"Retry-After": "1"})),
    (InferenceFailed, lambda e: Failure(500, "internal", str(e))),
    # routing: 404 unknown route, 405 wrong method
    (HTTPException, lambda e: Failure(e.status_code, "bad_request", str(e.detail), dict(e.headers or {}))),
]


def classify(err: BaseException) -> Failure:
    """How `err` is answered: its row of `TABLE`, or 500 for anything else."""
    for kind, failure in TABLE:
        if isinstance(err, kind):
            return failure(err)
    return Failure(500, "internal", f"internal error: {type(err).__name__}: {err}")
