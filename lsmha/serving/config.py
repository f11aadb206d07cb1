"""`lsmha-serve`'s settings, importable without the `serve` extra (FastAPI, uvicorn)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
MAX_BATCH = 8192  # images in one batch: 100 MB of FP32 32x32x3 pixels
MAX_QUEUE = 1 << 20
MIN_BODY_MB = 0.01  # 10 KiB: a few 32x32 images, binary or JSON
MAX_CONNECTIONS = 1 << 20
FD_RESERVE = 64  # descriptors kept for the process itself: model files, logs, the listener, runtimes


def default_max_connections() -> int:
    """The connection cap when none is given: the open-file limit less `FD_RESERVE`, at most 1024
    (at least 16), so connections alone never exhaust the process's descriptors."""
    try:
        import resource
    except ImportError:  # not POSIX: no limit to read
        return 1024
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, min(1024, soft - FD_RESERVE))


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
            cancelled and the process exits (and for loading or warm-up to stop, when it is under way).
        header_timeout_s: longest a connection may take to send a request's headers, from when it
            opened or its previous response went out; a slower one is closed (408 if it sent part).
        max_connections: most connections open at once; beyond it the connection waiting longest
            for headers is closed (or, when all have requests in progress, the newcomer gets 503).
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
    header_timeout_s: float = 10.0
    max_connections: int = field(default_factory=default_max_connections)
    warmup: bool = True
    adaptive: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"bad model name {self.name!r}: it is a URL path segment (/v2/models/NAME/infer), so 1-128 "
                "characters among letters, digits, '.', '_' and '-', not starting with '.'"
            )
        bad = [
            f"{field}={getattr(self, field)!r}"
            for field, ok in (
                # bounded: warm-up allocates a batch of max_batch images, and a cap past any
                # machine's descriptors or memory only hides a typo
                ("max_batch", 1 <= self.max_batch <= MAX_BATCH),
                ("max_queue", 1 <= self.max_queue <= MAX_QUEUE),
                # finite and bounded: inf would make every batch wait forever, or every body limit overflow
                ("max_delay_ms", 0 <= self.max_delay_ms <= 60_000),
                # at least MIN_BODY_MB: a smaller limit refuses every request (one 32x32 image is 3 KiB)
                ("max_body_mb", MIN_BODY_MB <= self.max_body_mb <= 1 << 20),
                ("body_timeout_s", 0 < self.body_timeout_s <= 86_400),
                ("shutdown_timeout_s", 0 <= self.shutdown_timeout_s <= 86_400),
                ("header_timeout_s", 0 < self.header_timeout_s <= 86_400),
                ("max_connections", 1 <= self.max_connections <= MAX_CONNECTIONS),
            )
            if not ok
        ]
        if bad:
            raise ValueError(
                f"bad server settings: {', '.join(bad)}; expected max_batch in [1, {MAX_BATCH}], "
                f"max_queue in [1, {MAX_QUEUE}], "
                f"max_delay_ms in [0, 60000], max_body_mb in [{MIN_BODY_MB}, 1048576], body_timeout_s in (0, 86400], "
                "shutdown_timeout_s in [0, 86400], header_timeout_s in (0, 86400], "
                f"max_connections in [1, {MAX_CONNECTIONS}]"
            )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))
