"""Limits on the server's connections, which uvicorn leaves unbounded.

- Header deadline: a connection must deliver a request's headers within `header_timeout_s`
  of opening (or of its previous response). One that sends nothing, part of a request line, or
  headers without the blank line is closed then (with a 408 when it sent something); bytes
  trickled in do not extend the deadline. Measured on the `LoopClock`, so a paused server
  does not close connections whose headers arrived while it was stopped.
- Connection cap: beyond `max_connections` open connections, the one that has waited longest
  for its headers is closed to make room, so idle sockets cannot lock clients out; when every
  connection has a request in progress, the newcomer gets a 503 and is closed.
- Out of file descriptors: asyncio logs a traceback for every failed accept (up to 2048 a pass
  of the loop: megabytes a second); here that is one warning line per `LOG_EVERY_S` with a
  count, and each pass closes the older half of the connections waiting for headers, so the
  listener recovers.

    guard = ConnectionGuard(header_timeout_s=10, max_connections=1000, clock=clock)
    uvicorn.Config(app, http=guard.protocol_factory())
    loop.set_exception_handler(guard.exception_handler)
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .clock import LoopClock

log = logging.getLogger("lsmha.serving")
LOG_EVERY_S = 10.0
LINGER_S = 0.5  # how long a refused connection stays open for its answer to arrive
ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message for EMFILE, ENFILE, ENOBUFS


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class RateLimitedLog:
    """One log line per `every_s` for a repeated event, with how many were not logged."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s, self.count, self._logged, self._last = every_s, 0, 0, float("-inf")

    def __call__(self, level: int, message: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self.every_s:
            since = self.count - self._logged
            log.log(level, "%s (%d time(s) in the last %g s, %d in all)", message, since, self.every_s, self.count)
            self._last, self._logged = now, self.count


class ConnectionGuard:
    """The header deadline, the connection cap and the accept-failure path for one server.

    Args:
        header_timeout_s: longest a connection may take to deliver a request's headers.
        max_connections: most connections open at once.
        clock: the clock deadlines are measured on.
    """

    def __init__(self, header_timeout_s: float, max_connections: int, clock: LoopClock) -> None:
        self.header_timeout_s, self.max_connections, self.clock = header_timeout_s, max_connections, clock
        self.open: set[GuardedH11Protocol] = set()
        self.closed = {"header_timeout": 0, "evicted": 0, "refused": 0}
        self._log_evicted, self._log_refused, self._log_accept = RateLimitedLog(), RateLimitedLog(), RateLimitedLog()
        self._last_accept_eviction = float("-inf")

    def protocol_factory(self) -> functools.partial:
        """uvicorn's `http` setting: its h11 protocol with this guard."""
        return functools.partial(GuardedH11Protocol, guard=self)

    def admit(self, newcomer: GuardedH11Protocol) -> None:
        """Called as `newcomer` opens: keep the count within the cap."""
        if len(self.open) <= self.max_connections:
            return
        if self.evict_idlest(exclude=newcomer):
            self.closed["evicted"] += 1
            self._log_evicted(
                logging.WARNING,
                f"{self.max_connections} connections open (--max-connections): closed the one waiting longest "
                "for its request headers",
            )
        else:
            self.closed["refused"] += 1
            self._log_refused(
                logging.WARNING,
                f"{self.max_connections} connections open (--max-connections), each with a request in progress: "
                "refused a new one with 503",
            )
            newcomer.close_with(503, "Service Unavailable", "too many connections; retry shortly")

    def evict_idlest(self, exclude: GuardedH11Protocol | None = None) -> bool:
        """Close the connection that has waited longest for request headers; False if none waits."""
        idle = [c for c in self.open if c.waiting_since is not None and c is not exclude]
        if not idle:
            return False
        min(idle, key=lambda c: c.waiting_since).close_with(None)
        return True

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler: failed accepts rate-limited, the rest as asyncio logs them."""
        if context.get("message") != ACCEPT_FAILED:
            loop.default_exception_handler(context)
            return
        self._log_accept(
            logging.WARNING,
            f"cannot accept connections: {context.get('exception')} (raise the open-file limit, ulimit -n, "
            "or lower --max-connections)",
        )
        # asyncio retries the accept a second later, after up to 2048 failures a pass: make room
        # once a pass, closing the older half of the connections waiting for headers
        now = time.monotonic()
        if now - self._last_accept_eviction >= 0.5:
            self._last_accept_eviction = now
            idle = sorted((c for c in self.open if c.waiting_since is not None), key=lambda c: c.waiting_since)
            for connection in idle[: max(1, len(idle) // 2)]:
                connection.close_with(None)
                self.closed["evicted"] += 1


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under a `ConnectionGuard`: a header deadline, and counted against its cap."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.waiting_since: float | None = None  # on the guard's clock, while no request is in progress
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.open.add(self)
        self._await_headers()
        self.guard.admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.open.discard(self)
        self._headers_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a request's headers came (or the connection ended)
            self._headers_done()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_headers()  # keep-alive: the next request's headers get the same deadline

    def _await_headers(self) -> None:
        self._headers_done()
        self.waiting_since = self.guard.clock.now()
        self._deadline = self.loop.call_later(self.guard.header_timeout_s, self._check_deadline)

    def _headers_done(self) -> None:
        self.waiting_since = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _check_deadline(self) -> None:
        self._deadline = None
        if self.waiting_since is None or self.transport.is_closing():
            return
        left = self.waiting_since + self.guard.header_timeout_s - self.guard.clock.now()
        if left > 0:  # the loop stood still meanwhile: that time is not the client's
            self._deadline = self.loop.call_later(left, self._check_deadline)
            return
        self.guard.closed["header_timeout"] += 1
        partial, _ = self.conn.trailing_data
        if partial:
            why = f"the request headers did not arrive within {self.guard.header_timeout_s:g} s (--header-timeout-s)"
            self.close_with(408, "Request Timeout", why)
        else:
            self.close_with(None)

    def close_with(self, status: int | None, reason: str = "", message: str = "") -> None:
        """Close the connection, first answering `status` (raw: no request was parsed) unless None."""
        self._headers_done()
        if self.transport.is_closing():
            return
        if status is None:
            self.transport.close()
            return
        self.transport.write(_raw_response(status, reason, message))
        # a close with the client's request unread would reset the connection, and the client
        # might never see the answer: stop reading, end our side, close a moment later
        self.transport.pause_reading()
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
