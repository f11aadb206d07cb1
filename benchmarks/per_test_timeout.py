"""A pytest plugin: a test running past --per-test-timeout seconds fails, and the run goes on.

benchmarks/gpu_check.sh loads it (`-p benchmarks.per_test_timeout`) so one hung compile
cannot eat the whole GPU test step; it needs no package beyond pytest. The limit is a
SIGALRM timer in the main thread, so it interrupts Python code and waits that return to
Python (a kernel that never returns is what the step's own `timeout` is for).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest


class TestTimeout(Exception):
    """The test ran past the per-test limit."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--per-test-timeout", type=float, default=0.0, help="fail a test that runs longer than this (s; 0: no limit)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    limit = item.config.getoption("--per-test-timeout")
    if limit <= 0:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TestTimeout(f"{item.nodeid} ran past the {limit:.0f} s per-test limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
