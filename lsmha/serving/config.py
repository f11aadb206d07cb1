"""`lsmha-serve`'s settings, importable without the `serve` extra (FastAPI, uvicorn)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Server settings.

    Args:
        name: the model name in the URL (`/v2/models/{name}/infer`).
        max_batch: most images in one executed batch, and in one request.
        max_delay_ms: longest a batch waits for more requests after its first one.
        max_queue: most requests waiting for a batch; more get 503 with Retry-After.
        max_body_mb: largest request body in MiB; larger get 413.
        body_timeout_s: longest a request's body may take to arrive once its headers did; a
            slower (or stalled) client gets 408 and its connection is closed.
        shutdown_timeout_s: on SIGTERM, longest to wait for requests in flight before they are
            cancelled and the process exits.
        warmup: run the committee on every accepted input kind before reporting ready.
        adaptive: the committee is an `AdaptiveCommittee` (`Committee.load(..., adaptive=True)`):
            every response carries `members_run`, and /metrics has its histogram.
    """

    name: str = "lsmha_committee"
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256
    max_body_mb: float = 16.0
    body_timeout_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    warmup: bool = True
    adaptive: bool = False

    def __post_init__(self) -> None:
        bad = [
            f"{field}={getattr(self, field)!r}"
            for field, ok in (
                ("max_batch", self.max_batch >= 1),
                ("max_queue", self.max_queue >= 1),
                ("max_delay_ms", self.max_delay_ms >= 0),
                ("max_body_mb", self.max_body_mb > 0),
                ("body_timeout_s", self.body_timeout_s > 0),
                ("shutdown_timeout_s", self.shutdown_timeout_s >= 0),
            )
            if not ok
        ]
        if bad:
            raise ValueError(
                f"bad server settings: {', '.join(bad)}; expected max_batch and max_queue >= 1, "
                "max_delay_ms >= 0, max_body_mb > 0, body_timeout_s > 0, shutdown_timeout_s >= 0"
            )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))
