"""Time, through one door: the wall clock (what is due, what is kept, Beijing days) and the
monotonic clock (waits, rates, durations).

``BACKFILL_CLOCK_OFFSET`` (seconds, may be negative) shifts the wall clock: a test, or a
demo, can run at another hour of the day than the machine's. The bundled emulator reads
the same variable (its own code), so a client and an emulator in two processes keep one
clock. ``backfill config show`` says when it is set: it is never meant for real runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from backfill.errors import UsageError

OFFSET_VARIABLE = "BACKFILL_CLOCK_OFFSET"


class Clock(Protocol):
    """Wall time (aware, UTC) and a monotonic clock, in seconds."""

    def now(self) -> datetime: ...
    def time(self) -> float: ...
    def monotonic(self) -> float: ...


@dataclass(frozen=True)
class SystemClock:
    """The machine's clocks, the wall clock shifted by ``offset`` seconds."""

    offset: float = 0.0

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


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
    """The wall clock's now, as :func:`system_clock` gives it."""
    return system_clock().now()
