"""The gate every call to a service passes, right before it is sent: at most ``rate`` calls
in any one-second window, and nothing at all while the service asked to be left alone.

The hold is what a ``Retry-After`` says (on a 429, a 503, any status): once one answer
carries it, no call of the run goes out before it ends, whichever key it is for, probes
of an outage included. It is checked at the last moment, after the call's turn in the
budget came: a call that queued for the budget before the answer came waits as well.

Calls are also spaced out evenly (one every ``1/rate`` seconds, not two at once each
second): a call held back a little on its way (a busy event loop, a connection being
opened) then still lands in its own window at the server, and does not make a third.

A gate starts with its budget spent: calls another process made a moment ago (the run
before this one, an Airflow worker handing its keys over to a trigger, or the trigger
handing them back) still count at the server, and a gate cannot see them all. So a fresh
gate's first call waits one window; the calls it does know of (:meth:`RateGate.remember`:
the previous run's, from the state folder) are counted on top.
"""

from __future__ import annotations

import math
from collections import deque

import anyio

from backfill.clock import Clock

SLACK_SECONDS = 0.1
"""Calls are stamped when they leave; a little slack absorbs the time between the stamp
and the server's own clock reading, which is what the limit is counted against: a call
held up to 0.1 s on its way still leaves two in any second (at 1.8 calls/s at most)."""


class RateGate:
    """Admits at most ``rate`` calls per second (none: no rate, only holds), over any
    window, for every task of a run; holds every call while a ``Retry-After`` lasts."""

    def __init__(self, clock: Clock, rate: float | None = None, *,
                 slack: float = SLACK_SECONDS, spent: bool = True) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self._clock = clock
        self._limit = max(1, math.floor(rate)) if rate else 0
        self._window = self._limit / rate + slack if rate else 0.0
        self._sent: deque[float] = deque()
        if spent and self._limit:
            self._sent.extend([clock.monotonic()] * self._limit)
        self._lock = anyio.Lock()
        self._held_until = -math.inf
        self.calls = 0

    @property
    def held_for(self) -> float:
        """Seconds the service asked to be left alone from now (0: none)."""
        return max(self._held_until - self._clock.monotonic(), 0.0)

    async def admit(self) -> None:
        """Wait for a call's turn in the budget and for any hold to end; the caller sends
        its request right after."""
        async with self._lock:
            while (wait := self._wait(self._clock.monotonic())) > 0:
                await self._clock.sleep(wait)
            if self._limit:
                self._sent.append(self._clock.monotonic())
            self.calls += 1

    def hold(self, seconds: float | None) -> None:
        """Send nothing more for ``seconds`` (a ``Retry-After``), whoever asks."""
        if seconds:
            self._held_until = max(self._held_until, self._clock.monotonic() + seconds)

    def recent(self) -> list[float]:
        """Wall-clock times of the calls still inside the window (to hand to the next run)."""
        offset = self._clock.time() - self._clock.monotonic()
        return [stamp + offset for stamp in self._sent]

    def remember(self, wall_times: list[float]) -> None:
        """Count the calls a previous run made moments ago: the server still counts them
        (on top of the budget a fresh gate assumes spent: another process may have called
        since)."""
        offset = self._clock.time() - self._clock.monotonic()
        now = self._clock.monotonic()
        known = [stamp - offset for stamp in sorted(wall_times)[-self._limit:]
                 if now - self._window < stamp - offset <= now]
        self._sent = deque(sorted([*self._sent, *known])[-self._limit:])

    def _wait(self, now: float) -> float:
        while self._sent and self._sent[0] <= now - self._window:
            self._sent.popleft()
        wait = self._held_until - now
        if self._limit and len(self._sent) >= self._limit:
            wait = max(wait, self._sent[0] + self._window - now)
        if self._limit and self._sent:
            wait = max(wait, self._sent[-1] + self._window / self._limit - now)
        return wait
