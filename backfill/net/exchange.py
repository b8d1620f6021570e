"""Every exchange backfill makes, with the export API, its token endpoint and the hosts of
the download links, goes through :meth:`Service.exchange`: the one place where an HTTP
status, a ``Retry-After`` and a failed exchange are classified. What each answer then
means for GrowingIO (a token refused, links expired) is its caller's.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import anyio
from yarl import URL

from backfill.clock import Clock, wait
from backfill.errors import OutageError, PermanentError, RetryableError, UsageError
from backfill.layout import redact
from backfill.net.outage import ServiceHealth
from backfill.net.proxy import proxy_refusal
from backfill.net.throttle import RateGate
from backfill.net.transport import Kind, classify, origin


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), if usable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), 3600.0)


def not_json(resp: aiohttp.ClientResponse) -> str:
    """What a 200 that is not JSON looks like, for one line."""
    kind = resp.headers.get("Content-Type", "no content type").split(";")[0].strip()
    return (f"it answered {resp.status} {kind}, not JSON: is a proxy or a portal in the "
            "way?")


def redirect_refused(what: str, base_url: str, resp: aiohttp.ClientResponse) -> UsageError:
    """The one line for an API redirect, which is never followed (see :func:`origin`)."""
    location = resp.headers.get("Location", "")
    target = str(resp.url.join(URL(location))) if location else "nowhere"
    shown = redact(target) if location else target
    if location and origin(target) != origin(base_url):
        scheme, host, port = origin(target)
        return UsageError(f"{what} at {base_url} redirects to {shown} (HTTP {resp.status}): "
                          "the credentials are sent only to GIO_BASE_URL's own origin; set "
                          f"GIO_BASE_URL={scheme}://{host}:{port} if that is GrowingIO")
    return UsageError(f"{what} at {base_url} redirects to {shown} (HTTP {resp.status}); "
                      "backfill does not follow API redirects: check GIO_BASE_URL")


class Service:
    """One remote service as a run sees it, shared by every task that calls it: its health
    (the outage judgement), its gate (the calls-per-second budget and any ``Retry-After``
    hold), and :meth:`exchange`, where every answer and every failure of a call to it is
    classified, once."""

    def __init__(self, name: str, health: ServiceHealth, gate: RateGate,
                 clock: Clock) -> None:
        self.name = name
        self.health = health
        self.gate = gate
        self._clock = clock

    @contextlib.asynccontextmanager
    async def exchange(self, send: Callable[[], AbstractAsyncContextManager[Any]], *,
                       proxy: str | None, what: str | Callable[[], str],
                       request: str | None = None) -> AsyncIterator[Any]:
        """Send one request (``send()``, an aiohttp request not yet entered) when the
        outage judgement and the gate let it go, and classify what comes back before the
        caller sees it:

        - a 5xx is a miss (:class:`RetryableError`, an outage's when several come in a row),
          a 429 is the budget spent; both hold every call for their ``Retry-After``, as
          does a ``Retry-After`` on any other status;
        - a 407 from a proxy is :class:`UsageError`;
        - a failure of the exchange itself (refused, reset, a timeout, a body cut off, also
          while the caller reads it) is a miss when it says the host is down, the
          request's own problem (:class:`PermanentError`) when it was wrong, and
          :class:`RetryableError` otherwise.

        Anything else (a 200, a 3xx, a 4xx) is the caller's to read; the service answered.
        ``what`` names the exchange in messages (a function: read when one is raised);
        ``request`` names what a wrong request refuses (``the link …``).
        """
        said = what if callable(what) else lambda: what
        async with self.health.attempt():
            await self.gate.admit()
            try:
                async with send() as resp:
                    wait = retry_after(resp.headers.get("Retry-After"), self._clock.now())
                    self.gate.hold(wait)
                    if resp.status >= 500:
                        problem = f"HTTP {resp.status}"
                        raise RetryableError(f"{said()}: {problem}", retry_after=wait,
                                             outage=self.health.missed(problem))
                    proxy_refusal(resp.status, proxy)
                    if not 200 <= resp.status < 300:
                        # An answer; a 2xx one is judged by its caller, who reads the body
                        # (ServiceHealth.answered, or .unusable for a page where JSON
                        # was expected).
                        self.health.answered()
                    if resp.status == 429:
                        raise RetryableError(f"{said()}: rate limited (HTTP 429)",
                                             retry_after=wait)
                    yield resp
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = classify(exc, proxy)
                if failure.kind is Kind.REQUEST:
                    refused = f"refused {request}" if request else said()
                    raise PermanentError(f"{refused}: {failure.words}") from None
                raise RetryableError(f"{said()}: {failure.words}",
                                     outage=failure.down and self.health.missed(failure.words)
                                     ) from None


class LinkHosts:
    """The hosts that serve download links, each judged on its own: a dead host holds only
    the parts it serves, and an outage of one ends the run as the API's would."""

    def __init__(self, clock: Clock, *, budget: float, probe_interval: float,
                 rng: random.Random | None = None) -> None:
        self._clock = clock
        self._budget = budget
        self._probe_interval = probe_interval
        self._rng = rng or random.Random()
        self._hosts: dict[str, Service] = {}
        self._changed = anyio.Event()

    def for_url(self, url: str) -> Service:
        """The host that serves ``url``, as a service."""
        _, host, port = origin(url)
        name = f"{host}:{port}"
        service = self._hosts.get(name)
        if service is None:
            health = ServiceHealth(f"the download links' host {name}", self._clock,
                                   budget=self._budget, probe_interval=self._probe_interval,
                                   rng=self._rng, on_change=self._wake)
            service = self._hosts[name] = Service(name, health, RateGate(self._clock),
                                                  self._clock)
        return service

    @property
    def outages(self) -> int:
        return sum(s.health.outages for s in self._hosts.values())

    def trouble(self) -> str | None:
        return next((t for s in self._hosts.values() if (t := s.health.trouble())), None)

    async def watch(self) -> OutageError:
        """Wait until the outage of any link host outlives the budget; return its error."""
        while True:
            changed = self._changed
            healths = [s.health for s in self._hosts.values()]
            soonest = min(healths, key=lambda h: h.deadline, default=None)
            now = self._clock.monotonic()
            if soonest is not None and soonest.deadline <= now:
                return soonest.error()
            await wait(changed, self._clock, math.inf if soonest is None
                       else soonest.deadline - now)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
