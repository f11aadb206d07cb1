"""A hard time limit that still leaves results: SIGTERM becomes an exception in the main thread.

`benchmarks/gpu_check.sh` runs each step under `timeout`; `lsmha-bench gpu` wraps its jobs in
`sigterm_stops()` so the signal drops the running job, and the tables and JSON are still written.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class HardLimit(Exception):
    """SIGTERM arrived (the caller's hard time limit): the running job is lost, the rest dropped."""


def _raise_hard_limit(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills outright
    raise HardLimit("stopped by SIGTERM (the hard time limit) while this job ran")


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """Within: SIGTERM raises `HardLimit` in the main thread, so `run_comparison` drops the
    running job and the rest and returns what it measured (main thread only)."""
    previous = signal.signal(signal.SIGTERM, _raise_hard_limit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def from_hard_limit(err: BaseException | None) -> bool:
    """`err` is, or was raised while handling, a `HardLimit` (e.g. a CUDA-graph capture's exit)."""
    seen = 0
    while err is not None and seen < 16:
        if isinstance(err, HardLimit):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False
