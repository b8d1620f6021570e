"""The emulated clock: starts where told, runs at a chosen speed, can be moved."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

OFFSET_VARIABLE = "BACKFILL_CLOCK_OFFSET"
"""Seconds the machine's wall clock is shifted by for a test (the client reads the same
variable, with code of its own): the emulator then starts its clock there and tells that
time in its ``Date`` header and its token check."""


def machine_time() -> float:
    """The machine's wall clock, shifted as ``BACKFILL_CLOCK_OFFSET`` says."""
    text = os.environ.get(OFFSET_VARIABLE, "").strip()
    try:
        return time.time() + (float(text) if text else 0.0)
    except ValueError:
        raise ValueError(f"{OFFSET_VARIABLE} must be a number of seconds, got {text!r}") from None


class Clock:
    """Emulated wall time. ``speed`` emulated seconds pass per real second."""

    def __init__(self, start: datetime | None = None, speed: float = 1.0) -> None:
        if speed < 0:
            raise ValueError("clock speed cannot be negative")
        self._speed = speed
        self._anchor = start.timestamp() if start else machine_time()
        self._real_anchor = time.monotonic()

    @property
    def speed(self) -> float:
        return self._speed

    def time(self) -> float:
        """Emulated seconds since the epoch."""
        return self._anchor + (time.monotonic() - self._real_anchor) * self._speed

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def set(self, moment: datetime, speed: float | None = None) -> None:
        """Jump to ``moment`` (and optionally change speed) from this real instant on."""
        if speed is not None:
            if speed < 0:
                raise ValueError("clock speed cannot be negative")
            self._speed = speed
        self._anchor = moment.timestamp()
        self._real_anchor = time.monotonic()

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` emulated seconds."""
        self.set(datetime.fromtimestamp(self.time() + seconds, UTC))
