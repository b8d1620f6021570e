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

A ``Retry-After`` that came with a miss (a 503) or a 429 pauses every call to the service
for that long, probes included.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import anyio

from backfill.errors import OutageError

OUTAGE_AFTER = 3
"""Misses in a row (no answer between them) that make an outage rather than bad luck."""
MAX_PROBE_INTERVAL = 15.0
"""Probes during an outage are at most this far apart: a recovery is noticed quickly."""


class ServiceHealth:
    """What the run knows about one service; shared by every task that calls it."""

    def __init__(self, name: str, *, budget: float, probe_interval: float,
                 rng: random.Random | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.name = name
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
        self._paused_until = 0.0
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
        """Hold the caller during an outage or a pause, then let its call go (as the probe,
        if one).

        Raises :class:`OutageError` once the outage outlived the budget.
        """
        # A timed wait, not a poll for an event: a pause may grow while we sleep.
        while (left := self._paused_until - anyio.current_time()) > 0:  # noqa: ASYNC110
            await anyio.sleep(left)
        probe = await self._admit()
        try:
            yield
        finally:
            if probe:
                self._probing = False
                self._wake()

    def answered(self) -> None:
        """The service answered (any HTTP status below 500): it is up."""
        if self._misses:
            self._misses = 0
            self._probes = 0
            self._wake()

    def pause(self, seconds: float | None) -> None:
        """Hold every call to the service for ``seconds`` (a ``Retry-After``)."""
        if seconds:
            self._paused_until = max(self._paused_until, anyio.current_time() + seconds)

    def missed(self, problem: str, *, retry_after: float | None = None) -> bool:
        """The service did not answer; return whether that is part of an outage.

        A miss inside an outage is the service's fault, not the key's: the caller does not
        count it against the key's retries (and waits in :meth:`attempt` instead).
        ``retry_after`` (the server said when to come back) pauses every call, probes too.
        """
        self.pause(retry_after)
        now = anyio.current_time()
        if self._misses == 0:
            self._first_miss, self._first_miss_wall = now, time.time()
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
                left = self._first_miss + self._budget - anyio.current_time()
                if left <= 0:
                    return self.error()
                with anyio.move_on_after(left):
                    await changed.wait()
            else:
                await changed.wait()

    async def _admit(self) -> bool:
        while self.down:
            end = self._first_miss + self._budget
            if anyio.current_time() >= end:
                self._wake()  # the others waiting see it too
                raise self.error()
            if not self._probing:
                self._probing = True
                try:
                    await anyio.sleep_until(min(self._next_probe, end))
                except BaseException:
                    self._probing = False
                    raise
                if not self.down or anyio.current_time() < end:
                    return True
                self._probing = False
                continue
            changed = self._changed
            with anyio.move_on_after(end - anyio.current_time()):
                await changed.wait()
        return False

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        if self._on_change is not None:
            self._on_change()

    def error(self) -> OutageError:
        """The error that ends the run for this outage."""
        since = datetime.fromtimestamp(self._first_miss_wall, UTC)
        return OutageError(self.name, since, anyio.current_time() - self._first_miss,
                           self._last_problem)


class LinkHosts:
    """The hosts that serve download links, each judged on its own: a dead host holds only
    the parts it serves, and an outage of one ends the run as the API's would."""

    def __init__(self, *, budget: float, probe_interval: float,
                 rng: random.Random | None = None) -> None:
        self._budget = budget
        self._probe_interval = probe_interval
        self._rng = rng or random.Random()
        self._hosts: dict[str, ServiceHealth] = {}
        self._changed = anyio.Event()

    def for_url(self, url: str) -> ServiceHealth:
        """The judgement of the host that serves ``url``."""
        from backfill.net.transport import origin

        _, host, port = origin(url)
        name = f"{host}:{port}"
        health = self._hosts.get(name)
        if health is None:
            health = self._hosts[name] = ServiceHealth(
                f"the download links' host {name}", budget=self._budget,
                probe_interval=self._probe_interval, rng=self._rng, on_change=self._wake)
        return health

    @property
    def outages(self) -> int:
        return sum(h.outages for h in self._hosts.values())

    def trouble(self) -> str | None:
        return next((t for h in self._hosts.values() if (t := h.trouble())), None)

    async def watch(self) -> OutageError:
        """Wait until the outage of any link host outlives the budget; return its error."""
        while True:
            changed = self._changed
            soonest = min(self._hosts.values(), key=lambda h: h.deadline, default=None)
            if soonest is not None and soonest.deadline <= anyio.current_time():
                return soonest.error()
            left = math.inf if soonest is None else soonest.deadline - anyio.current_time()
            with anyio.move_on_after(left):
                await changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
