"""Time, through one door: the wall clock (what is due, what is kept, Beijing days), the
monotonic clock (waits, rates, durations), and sleeping.

Everything of the client that reads the time or waits for it is given a :class:`Clock`:
the key lifecycle, the rate gate, the outage judgement, the downloader's speed window, the
reporters. Tests give a fake one and run hours of waiting in milliseconds.

``BACKFILL_CLOCK_OFFSET`` (seconds, may be negative) shifts the wall clock: a test, or a
demo, can run at another hour of the day than the machine's. The bundled emulator reads
the same variable (its own code), so a client and an emulator in two processes keep one
clock. ``backfill config show`` says when it is set: it is never meant for real runs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import anyio

from backfill.errors import UsageError

OFFSET_VARIABLE = "BACKFILL_CLOCK_OFFSET"


class Clock(Protocol):
    """Wall time (aware, UTC), a monotonic clock in seconds, and a way to sleep on it."""

    def now(self) -> datetime: ...
    def time(self) -> float:
        """Wall time, seconds since the epoch."""
    def monotonic(self) -> float: ...
    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` passed on :meth:`monotonic` (at once for none)."""


@dataclass(frozen=True)
class SystemClock:
    """The machine's clocks, the wall clock shifted by ``offset`` seconds."""

    offset: float = 0.0

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(seconds, 0.0))


async def wait(event: anyio.Event, clock: Clock, seconds: float) -> bool:
    """Wait for ``event``, at most ``seconds`` on ``clock`` (forever for ``inf``); whether
    it was set."""
    if event.is_set():
        return True
    if math.isinf(seconds):
        await event.wait()
        return True
    async with anyio.create_task_group() as group:
        async def expire() -> None:
            await clock.sleep(seconds)
            group.cancel_scope.cancel()

        group.start_soon(expire)
        await event.wait()
        group.cancel_scope.cancel()
    return event.is_set()


def system_clock(env: Mapping[str, str] | None = None) -> SystemClock:
    """The machine's clock, shifted by ``BACKFILL_CLOCK_OFFSET`` when it is set.

    Raises :class:`UsageError` when the variable is not a number of seconds."""
    text = (os.environ if env is None else env).get(OFFSET_VARIABLE, "").strip()
    if not text:
        return SystemClock()
    try:
        return SystemClock(float(text))
    except ValueError:
        raise UsageError(f"{OFFSET_VARIABLE} must be a number of seconds, got {text!r}") from None


def wall_now() -> datetime:
    """The wall clock's now, as :func:`system_clock` gives it (for the command line's
    one-off questions; a run is given its clock)."""
    return system_clock().now()


def machine_now() -> datetime:
    """The machine's own now, never shifted: for a moment another library compares with
    its own clock (when obstore should ask for credentials again)."""
    return SystemClock().now()
