"""uvicorn around a `CommitteeService`: the process `lsmha-serve` runs, and the same server
in a background thread (notebooks, tests).

    server = CommitteeServer(service, host="127.0.0.1", port=8000)
    server.run()                       # returns after SIGTERM / Ctrl-C, once requests drained

    with BackgroundServer(service) as s:
        s.wait_ready()
        httpx.post(f"{s.url}/v2/models/lsmha_committee/infer", json=body)
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from .app import CommitteeService, create_app


class CommitteeServer(uvicorn.Server):
    """uvicorn serving `service` with its config's shutdown bound: on SIGTERM or Ctrl-C it stops
    accepting, waits at most `shutdown_timeout_s` for requests in flight (then cancels them) and
    `run()` returns, so the process exits 0. (uvicorn by itself re-raises the signal once it has
    shut down, which makes a clean stop exit 143.)

    Args:
        service: what to serve.
        host, port: where to listen (ignored when `run(sockets=...)` is given sockets).
        log_level: uvicorn's log level.
    """

    def __init__(
        self, service: CommitteeService, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
    ) -> None:
        self.service = service
        config = uvicorn.Config(
            create_app(service),
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=service.config.shutdown_timeout_s,
        )
        super().__init__(config)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.draining = True  # requests cancelled past the bound get a 503, not a traceback
        await super().shutdown(sockets)

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
    """

    def __init__(self, service: CommitteeService, host: str = "127.0.0.1", log_level: str = "warning") -> None:
        self.service = service
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = CommitteeServer(service, log_level=log_level)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name="lsmha-serve"
        )

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
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
