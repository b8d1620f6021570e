"""The gate every call to a service passes, right before it is sent: at most ``rate`` calls
a second, and nothing at all while the service asked to be left alone.

Calls are spaced out evenly, one every ``1/rate`` seconds (and a little more): never two
at once, so any one-second window at the server holds at most ``rate`` of them, and a
call held up a little on its way (a busy event loop, a connection being opened) still
does not make a third.

The hold is what a ``Retry-After`` says (on a 429, a 503, any status): once one answer
carries it, no call of the run goes out before it ends, whichever key it is for, probes
of an outage included. It is checked at the last moment, after the call's turn came: a
call that queued before the answer came waits as well.

A gate starts as if a call had just gone out: calls another process made a moment ago
(the run before this one, an Airflow worker handing its keys over to a trigger, or the
trigger handing them back) still count at the server, and a gate cannot see them all.
The calls it does know of (:meth:`RateGate.remember`: the previous run's, from the state
folder) are counted too.
"""

from __future__ import annotations

import math

import anyio

from backfill.clock import Clock

SLACK_SECONDS = 0.05
"""Added to each call's turn: a call held up to 0.1 s on its way still leaves two in any
second (1.82 calls/s at most at a rate of 2)."""


class RateGate:
    """Admits a call every ``1/rate`` seconds (none: no rate, only holds), for every task
    of a run; holds every call while a ``Retry-After`` lasts."""

    def __init__(self, clock: Clock, rate: float | None = None, *,
                 slack: float = SLACK_SECONDS, spent: bool = True) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self._clock = clock
        self._gap = 1.0 / rate + slack if rate else 0.0
        self._last = clock.monotonic() if spent and rate else -math.inf
        self._lock = anyio.Lock()
        self._held_until = -math.inf
        self.calls = 0

    @property
    def held_for(self) -> float:
        """Seconds the service asked to be left alone from now (0: none)."""
        return max(self._held_until - self._clock.monotonic(), 0.0)

    async def admit(self) -> None:
        """Wait for a call's turn and for any hold to end; the caller sends its request
        right after."""
        async with self._lock:
            while (wait := self._wait(self._clock.monotonic())) > 0:
                await self._clock.sleep(wait)
            self._last = self._clock.monotonic()
            self.calls += 1

    def hold(self, seconds: float | None) -> None:
        """Send nothing more for ``seconds`` (a ``Retry-After``), whoever asks."""
        if seconds:
            self._held_until = max(self._held_until, self._clock.monotonic() + seconds)

    def recent(self) -> list[float]:
        """The wall-clock time of the last call, if one was made (for the next run)."""
        if math.isinf(self._last):
            return []
        return [self._last + self._clock.time() - self._clock.monotonic()]

    def remember(self, wall_times: list[float]) -> None:
        """Count the calls a previous run made moments ago: the server still counts them
        (on top of the call a fresh gate assumes: another process may have called
        since)."""
        offset = self._clock.time() - self._clock.monotonic()
        for stamp in wall_times:
            self._last = max(self._last, min(stamp - offset, self._clock.monotonic()))

    def _wait(self, now: float) -> float:
        return max(self._held_until - now, self._last + self._gap - now)
