"""The export API's rate limit: at most N calls per client id in any window of W seconds.

A sliding window rather than a bucket with a burst: it is the strict reading of
"at most 2 calls per second", so a client that passes here passes any bucket.
"""

from __future__ import annotations

import math
import time
from collections import deque


class SlidingWindowLimiter:
    """Admits a call when fewer than ``limit`` were admitted in the last ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._admitted: dict[str, deque[float]] = {}
        self._offered: dict[str, deque[float]] = {}
        self.peak_offered = 0
        """Most calls one client sent (admitted or not) in any window: for tests."""

    def admit(self, client: str, now: float | None = None) -> float | None:
        """``None`` if the call may go ahead, else the seconds to wait before trying again."""
        now = time.monotonic() if now is None else now
        offered = self._recent(self._offered, client, now)
        offered.append(now)
        self.peak_offered = max(self.peak_offered, len(offered))
        admitted = self._recent(self._admitted, client, now)
        if len(admitted) >= self.limit:
            return admitted[0] + self.window - now
        admitted.append(now)
        return None

    def _recent(self, book: dict[str, deque[float]], client: str, now: float) -> deque[float]:
        calls = book.setdefault(client, deque())
        while calls and calls[0] <= now - self.window:
            calls.popleft()
        return calls


def retry_after_header(wait: float) -> str:
    """``Retry-After`` takes whole seconds; round up so that obeying it always works."""
    return str(max(1, math.ceil(wait)))
