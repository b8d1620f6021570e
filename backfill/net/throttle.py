"""The run's shared budget of API calls: at most ``rate`` calls in any one-second window."""

from __future__ import annotations

import math
import time
from collections import deque

import anyio

# Calls are stamped when they leave; a little slack absorbs the time between the stamp
# and the server's own clock reading, which is what the limit is counted against.
SLACK_SECONDS = 0.05


class RateLimiter:
    """Admits at most ``rate`` calls per second, over any window, for every task of a run.

    A 429 pauses everybody for the server's ``Retry-After``: one task's bad luck is a
    signal that the budget is spent for all of them.
    """

    def __init__(self, rate: float, *, slack: float = SLACK_SECONDS) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._limit = max(1, math.floor(rate))
        self._window = self._limit / rate + slack
        self._sent: deque[float] = deque()
        self._lock = anyio.Lock()
        self._paused_until = 0.0
        self.calls = 0

    async def acquire(self) -> None:
        """Wait for a slot in the budget; callers send their request right after."""
        async with self._lock:
            # A timed wait, not a poll for an event: a pause may grow while we sleep.
            while (wait := self._wait(time.monotonic())) > 0:  # noqa: ASYNC110
                await anyio.sleep(wait)
            self._sent.append(time.monotonic())
            self.calls += 1

    def recent(self) -> list[float]:
        """Wall-clock times of the calls still inside the window (to hand to the next run)."""
        offset = time.time() - time.monotonic()
        return [stamp + offset for stamp in self._sent]

    def remember(self, wall_times: list[float]) -> None:
        """Count calls a previous run made moments ago: the server still counts them."""
        offset = time.time() - time.monotonic()
        now = time.monotonic()
        for stamp in sorted(wall_times)[-self._limit:]:
            if now - self._window < stamp - offset <= now:
                self._sent.append(stamp - offset)

    def pause(self, seconds: float) -> None:
        """Hold every call back for ``seconds`` (the server said so)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def _wait(self, now: float) -> float:
        while self._sent and self._sent[0] <= now - self._window:
            self._sent.popleft()
        wait = self._paused_until - now
        if len(self._sent) >= self._limit:
            wait = max(wait, self._sent[0] + self._window - now)
        return wait
