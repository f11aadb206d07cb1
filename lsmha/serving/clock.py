"""Time as the event loop lived it: wall time less the stretches in which the loop did not run
(the process stopped by SIGSTOP or a debugger, the machine suspended, the loop blocked).

The server measures its clients' deadlines (headers, request bodies) on this clock, so that
time it spent not reading is not held against them: after a 15 s SIGSTOP, a body that arrived
meanwhile is read and answered, not refused with 408 because its timer fired first.

    clock = LoopClock()
    clock.start()                      # on the running loop
    deadline = clock.now() + 30.0
    ...
    if clock.now() > deadline: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class LoopClock:
    """Monotonic seconds that stand still while the event loop does not run.

    A task wakes every `tick_s`; a wake-up later than `stall_s` past its time marks a stall,
    and the stall's length is taken off the clock. A stall still in progress (a timer that fires
    right after the process resumes, before the tick ran) is taken off as well.

    Args:
        tick_s: how often the clock's task wakes.
        stall_s: lateness beyond which a wake-up counts as a stall (below it: ordinary jitter).
    """

    def __init__(self, tick_s: float = 0.1, stall_s: float = 0.5) -> None:
        self.tick_s, self.stall_s = tick_s, stall_s
        self.stalled_s = 0.0  # total time taken off so far
        self._last = time.monotonic()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start ticking on the running event loop."""
        self._last = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._tick(), name="lsmha-loop-clock")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def now(self) -> float:
        """Seconds on this clock (comparable only with other readings of it)."""
        t = time.monotonic()
        return t - self.stalled_s - (self._stall(t) if self._task is not None else 0.0)

    def _stall(self, t: float) -> float:
        late = t - self._last - self.tick_s
        return late if late > self.stall_s else 0.0

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            t = time.monotonic()
            self.stalled_s += self._stall(t)
            self._last = t
