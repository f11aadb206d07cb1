"""uvicorn around a `CommitteeService`: the process `lsmha-serve` runs, and the same server
in a background thread (notebooks, tests).

    server = CommitteeServer(service, host="127.0.0.1", port=8000)
    server.run()                       # returns after SIGTERM / Ctrl-C, once requests drained

    with BackgroundServer(service) as s:
        s.wait_ready()
        httpx.post(f"{s.url}/v2/models/lsmha_committee/infer", json=body)

Given a gRPC port, the same process also serves the KServe v2 gRPC protocol (grpc_service.py)
on the same event loop: started once HTTP listens, drained with it on shutdown, and stopped
before the batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from .app import CommitteeService, create_app
from .connections import ConnectionGuard


class CommitteeServer(uvicorn.Server):
    """uvicorn serving `service` with its config's shutdown bound: on SIGTERM or Ctrl-C it stops
    accepting, waits at most `shutdown_timeout_s` for requests in flight (then cancels them) and
    `run()` returns, so the process exits 0. (uvicorn by itself re-raises the signal once it has
    shut down, which makes a clean stop exit 143.)

    Args:
        service: what to serve.
        host, port: where to listen (ignored when `run(sockets=...)` is given sockets).
        log_level: uvicorn's log level.
        grpc_port: also serve gRPC on `host:grpc_port` (0: a free port, then in `self.grpc_port`).
    """

    def __init__(
        self,
        service: CommitteeService,
        host: str = "127.0.0.1",
        port: int = 8000,
        log_level: str = "info",
        grpc_port: int | None = None,
    ) -> None:
        self.service = service
        self.grpc_host, self.grpc_port = host, grpc_port
        self.grpc_server = None
        self._grpc_stopped: asyncio.Future | None = None
        settings = service.config
        self.guard = ConnectionGuard(settings.header_timeout_s, settings.max_connections, service.clock)
        config = uvicorn.Config(
            create_app(service),
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            http=self.guard.protocol_factory(),  # header deadline and connection cap
            timeout_graceful_shutdown=service.config.shutdown_timeout_s,
        )
        super().__init__(config)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.grpc_port is not None and not self.should_exit:
            from .grpc_service import start_grpc_server

            self.grpc_server, self.grpc_port = await start_grpc_server(self.service, self.grpc_host, self.grpc_port)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(self.guard.exception_handler)  # accept failures
        await super().serve(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.draining = True  # requests cancelled past the bound get a 503, not a traceback
        if self.grpc_server is not None:  # refuses new calls at once, cancels what runs after the bound
            self._grpc_stopped = asyncio.ensure_future(self.grpc_server.stop(self.service.config.shutdown_timeout_s))
        await super().shutdown(sockets)

    async def _wait_tasks_to_complete(self) -> None:
        # uvicorn's drain, within its shutdown bound and before its lifespan stops the batcher:
        # gRPC calls in flight must end here too
        drains = [super()._wait_tasks_to_complete()]
        if self._grpc_stopped is not None:
            drains.append(asyncio.shield(self._grpc_stopped))
        await asyncio.gather(*drains)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class BackgroundServer:
    """A `CommitteeServer` in a daemon thread on a loopback socket bound here (no port race).

    Args:
        service: what to serve.
        host: the address to bind (a free port is chosen).
        log_level: uvicorn's log level.
        grpc: also serve gRPC, on a free port of `host` (`grpc_target` once started).
    """

    def __init__(
        self, service: CommitteeService, host: str = "127.0.0.1", log_level: str = "warning", grpc: bool = False
    ) -> None:
        self.service = service
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = CommitteeServer(service, host=host, log_level=log_level, grpc_port=0 if grpc else None)
        self.grpc_target: str | None = None  # host:port of the gRPC endpoint, once started
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name="lsmha-serve"
        )

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        # uvicorn says started once HTTP listens; gRPC starts just after
        while not self.server.started or (self.server.grpc_port is not None and self.server.grpc_server is None):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        if self.server.grpc_server is not None:
            self.grpc_target = f"{self.sock.getsockname()[0]}:{self.server.grpc_port}"
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the committee is loaded and warmed up; RuntimeError if loading failed."""
        deadline = time.monotonic() + timeout_s
        while not self.service.ready:
            if self.service.failure is not None:
                raise RuntimeError(self.service.failure)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server on {self.url} was not ready after {timeout_s:g} s")
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.service.config.shutdown_timeout_s + 30)
        self.sock.close()
