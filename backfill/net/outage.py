"""The run's judgement of a remote service: up, blipping, or down for good.

Every call to a service (the export API with its token endpoint, or one host that serves
download links: each link host is judged on its own) reports whether the service
answered. A call that fails because the service did not answer at all — connection
refused or reset, DNS failure, timeout, 5xx — is a *miss*; a bad link (a refused scheme,
an invalid redirect) is never one (see :mod:`backfill.net.transport`). ``OUTAGE_AFTER``
misses in a row, with no answer between them, across every task of the run, make an
outage. During an outage:

- every task holds: one probe at a time goes out, spaced out, and the others wait for
  its outcome instead of spending their own retries;
- misses do not count against a key's retries, so a blip shorter than the budget is
  ridden out with no key failed;
- once the outage has lasted ``budget`` seconds since its first miss, the run stops
  (:class:`OutageError`): one line, exit 1, every unfinished key left retryable.

An answer the client cannot use (a page where JSON was expected, a document of the
wrong shape) is judged across keys: while other keys get good answers, it is that key's
problem, tried again within the key's retries and then failed with the reason; only when
``OUTAGE_AFTER`` different keys in a row get one, with no good answer between them, is it
the service's (a captive portal, a proxy's page), and a miss.

The ``Retry-After`` holds are the rate gate's (:mod:`backfill.net.throttle`).
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import anyio

from backfill.clock import Clock, wait
from backfill.errors import OutageError

OUTAGE_AFTER = 3
"""Misses in a row (no answer between them) that make an outage rather than bad luck."""
MAX_PROBE_INTERVAL = 15.0
"""Probes during an outage are at most this far apart: a recovery is noticed quickly."""


class ServiceHealth:
    """What the run knows about one service; shared by every task that calls it."""

    def __init__(self, name: str, clock: Clock, *, budget: float, probe_interval: float,
                 rng: random.Random | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.name = name
        self._clock = clock
        self._on_change = on_change
        self._budget = budget
        self._probe_interval = max(probe_interval, 0.01)
        self._rng = rng or random.Random()
        self._misses = 0
        self._first_miss = 0.0
        self._first_miss_wall = 0.0
        self._last_problem = ""
        self._next_probe = 0.0
        self._probing = False
        self._probes = 0
        self._unusable: set[str] = set()
        """Keys that got an unusable answer since the last good one."""
        self._changed = anyio.Event()
        self.outages = 0
        """Outages seen in this run (blips included)."""

    @property
    def down(self) -> bool:
        """Whether the service is in an outage now."""
        return self._misses >= OUTAGE_AFTER

    def trouble(self) -> str | None:
        """The outage in words while there is one (for the progress display), else None."""
        if not self.down:
            return None
        since = datetime.fromtimestamp(self._first_miss_wall, UTC)
        return f"{self.name} is not answering since {since:%H:%M:%S} UTC ({self._last_problem})"

    @property
    def deadline(self) -> float:
        """When the current outage outlives the budget (``inf`` when up)."""
        return self._first_miss + self._budget if self.down else math.inf

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """Hold the caller during an outage, then let its call go (as the probe, if one).

        Raises :class:`OutageError` once the outage outlived the budget.
        """
        probe = await self._admit()
        try:
            yield
        finally:
            if probe:
                self._probing = False
                self._wake()

    def answered(self) -> None:
        """The service answered as it should (an HTTP status below 500, a usable body
        where one is read): it is up."""
        self._unusable.clear()
        if self._misses:
            self._misses = 0
            self._probes = 0
            self._wake()

    def unusable(self, problem: str, key: str) -> bool:
        """The service answered ``key`` with something that cannot be used; return whether
        that is part of an outage: the same problem for ``OUTAGE_AFTER`` keys in a row,
        with no good answer between. Else it is the key's, within its own retries."""
        self._unusable.add(key)
        if len(self._unusable) < OUTAGE_AFTER and not self.down:
            return False
        while not self.down and self._misses < OUTAGE_AFTER - 1:
            self.missed(problem)  # the keys' answers before this one were misses as well
        return self.missed(problem)

    def missed(self, problem: str) -> bool:
        """The service did not answer; return whether that is part of an outage.

        A miss inside an outage is the service's fault, not the key's: the caller does not
        count it against the key's retries (and waits in :meth:`attempt` instead).
        """
        now = self._clock.monotonic()
        if self._misses == 0:
            self._first_miss, self._first_miss_wall = now, self._clock.time()
        self._misses += 1
        self._last_problem = problem
        if self._misses == OUTAGE_AFTER:
            self.outages += 1
        if self.down:
            delay = min(MAX_PROBE_INTERVAL, self._probe_interval * 2 ** min(self._probes, 20))
            self._next_probe = now + delay * (0.5 + self._rng.random() / 2)
            self._probes += 1
            self._wake()
        return self.down

    async def watch(self) -> OutageError:
        """Wait until an outage outlives the budget; return the error that ends the run."""
        while True:
            changed = self._changed
            if self.down:
                left = self._first_miss + self._budget - self._clock.monotonic()
                if left <= 0:
                    return self.error()
                await wait(changed, self._clock, left)
            else:
                await changed.wait()

    async def _admit(self) -> bool:
        while self.down:
            end = self._first_miss + self._budget
            if self._clock.monotonic() >= end:
                self._wake()  # the others waiting see it too
                raise self.error()
            if not self._probing:
                self._probing = True
                try:
                    await self._clock.sleep(min(self._next_probe, end) - self._clock.monotonic())
                except BaseException:
                    self._probing = False
                    raise
                if not self.down or self._clock.monotonic() < end:
                    return True
                self._probing = False
                continue
            await wait(self._changed, self._clock, end - self._clock.monotonic())
        return False

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        if self._on_change is not None:
            self._on_change()

    def error(self) -> OutageError:
        """The error that ends the run for this outage."""
        since = datetime.fromtimestamp(self._first_miss_wall, UTC)
        return OutageError(self.name, since, self._clock.monotonic() - self._first_miss,
                           self._last_problem)
