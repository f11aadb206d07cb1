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
        warmup: run the committee on every accepted input kind before reporting ready.
    """

    name: str = "lsmha_committee"
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256
    max_body_mb: float = 16.0
    warmup: bool = True

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))
