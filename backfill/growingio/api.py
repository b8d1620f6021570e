"""The export API client: one small async interface, and the GrowingIO implementation.

Errors from aiohttp are translated into the backfill tree here and nowhere else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import anyio

from backfill.clock import wall_now
from backfill.config import Settings
from backfill.errors import AuthError, PermanentError, RetryableError
from backfill.growingio.auth import TokenHolder
from backfill.keys import Key
from backfill.net.exchange import not_json, redirect_refused, retry_after
from backfill.net.outage import ServiceHealth
from backfill.net.proxy import proxy_refusal
from backfill.net.retry import backoff
from backfill.net.throttle import RateLimiter
from backfill.net.transport import classify


@dataclass(frozen=True)
class ExportAnswer:
    """One answer about one key: its status and, only when FINISHED, its links by type."""

    status: str
    links: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    absent: tuple[str, ...] = ()
    """Wanted types an all-types answer did not hold at all (not even an empty list): no
    news of them, so not an empty unit; ask for each on its own."""


class ExportApi(Protocol):
    """What the scheduler needs from the service."""

    async def export(self, key: Key, types: tuple[str, ...]) -> ExportAnswer:
        """Ask about ``key`` for ``types`` (``("all",)`` with v1)."""
        ...


@dataclass
class CallStats:
    calls: int = 0
    retries: int = 0
    reauthentications: int = 0


class GrowingIO:
    """The real export API (or the emulator): v1 or v2, rate-limited, retried."""

    def __init__(self, session: aiohttp.ClientSession, settings: Settings,
                 limiter: RateLimiter, health: ServiceHealth,
                 rng: random.Random | None = None) -> None:
        self._session = session
        self._settings = settings
        self._limiter = limiter
        self._health = health
        self._rng = rng or random.Random()
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                              sock_read=settings.read_timeout)
        self.tokens = TokenHolder(session, settings, self._timeout, health)
        self.stats = CallStats()

    async def export(self, key: Key, types: tuple[str, ...]) -> ExportAnswer:
        url, shape = self._url(key, types)
        body = await self._get_json(url)
        return parse_answer(body, shape, types)

    def _url(self, key: Key, types: tuple[str, ...]) -> tuple[str, str]:
        s = self._settings
        base, ai = s.credentials.base_url.rstrip("/"), s.credentials.ai
        if s.api == "v1":
            return f"{base}/insights/{ai}/{key.name}.json", "v1"
        granularity = key.granularity.value
        if len(types) == 1:
            return (f"{base}/v2/insights/{granularity}/{types[0]}/{ai}/{key.export_date}.json",
                    "one")
        # Several types: one all-types call costs one unit of the 2 calls/s budget, where a
        # call per type would cost one each; unwanted types are simply not downloaded.
        return f"{base}/v2/insights/{granularity}/{ai}/{key.export_date}.json", "all"

    async def _get_json(self, url: str) -> Any:
        attempt = 0
        while True:
            try:
                return await self._call(url)
            except _TokenReplaced:
                self.stats.reauthentications += 1
            except RetryableError as exc:
                if not exc.outage and attempt >= self._settings.retries:
                    raise
                self.stats.retries += 1
                if exc.outage:
                    continue  # the run holds every call and judges the outage as a whole
                delay = exc.retry_after  # the service (or the budget) holds every task
                if delay is None:
                    delay = backoff(attempt, self._settings.backoff, self._settings.max_backoff,
                                    self._rng)
                attempt += 1
                await anyio.sleep(delay)

    async def _call(self, url: str) -> Any:
        token, generation = await self.tokens.current()
        headers = {"X-Client-Id": self._settings.credentials.client_id,
                   "Authorization": f"Token {token}"}
        proxy = self._settings.proxies.for_url(url)
        try:
            async with self._health.attempt():
                await self._limiter.acquire()
                self.stats.calls += 1
                try:
                    # Redirects are not followed: the credentials go to GIO_BASE_URL's
                    # origin only (aiohttp would carry X-Client-Id to any host).
                    async with self._session.get(url, headers=headers, proxy=proxy,
                                                 params={"expire": str(self._settings.expire)},
                                                 timeout=self._timeout,
                                                 allow_redirects=False) as resp:
                        body = await self._read(resp, proxy)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failure = classify(exc, proxy)
                    raise RetryableError(f"export API unreachable: {failure.words}",
                                         outage=failure.down and self._health.missed(
                                             failure.words)) from None
        except _TokenRejected:
            await self.tokens.rejected(generation)  # outside the attempt: it calls too
            raise _TokenReplaced from None
        self.tokens.accepted(generation)
        return body

    async def _read(self, resp: aiohttp.ClientResponse, proxy: str | None) -> Any:
        wait = retry_after(resp.headers.get("Retry-After"), wall_now())
        if resp.status >= 500:
            raise RetryableError(f"export API error (HTTP {resp.status})", retry_after=wait,
                                 outage=self._health.missed(f"HTTP {resp.status}",
                                                            retry_after=wait))
        proxy_refusal(resp.status, proxy)
        if 300 <= resp.status < 400:
            raise redirect_refused("the export API", self._settings.credentials.base_url,
                                   resp)
        if resp.status == 200:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                # A portal or a proxy's page: the API is not reached. Judged by the run as
                # a miss (every key holds), not retried by each key on its own.
                problem = not_json(resp)
                raise RetryableError(f"export API unusable: {problem}",
                                     outage=self._health.missed(problem)) from None
            self._health.answered()
            return body
        self._health.answered()
        if resp.status == 401:
            raise _TokenRejected
        if resp.status == 403:
            raise AuthError("GrowingIO denied access to project "
                            f"{self._settings.credentials.ai} (HTTP 403): check GIO_AI")
        if resp.status == 429:
            if wait is not None:
                self._limiter.pause(wait)  # the budget is spent for every task
            raise RetryableError("rate limited by the export API (429)", retry_after=wait)
        raise PermanentError(f"export API refused the request (HTTP {resp.status})")


class _TokenRejected(Exception):
    """The API answered 401 to the token sent."""


class _TokenReplaced(Exception):
    """A 401 led to a new token: send the same call again, at once."""


def parse_answer(body: Any, shape: str, types: tuple[str, ...]) -> ExportAnswer:
    """Read an answer; links are kept only when the status is FINISHED.

    Raises :class:`RetryableError` for an answer of the wrong shape (a proxy's error page,
    a half-deployed API): asking again is the only sensible move.
    """
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise RetryableError("export API answered an unexpected document")
    status = body["status"]
    error = body.get("errorMsg") if isinstance(body.get("errorMsg"), str) else None
    if status != "FINISHED":
        return ExportAnswer(status, {}, error)  # links of a job not FINISHED are never used
    raw = body.get("downlinks") if shape == "v1" else body.get("downloadLinks")
    absent: tuple[str, ...] = ()
    if shape == "all":
        if not isinstance(raw, dict):
            raise RetryableError("export API answered FINISHED without a links object")
        absent = tuple(t for t in types if raw.get(t) is None)
        links = {t: raw[t] for t in types if t not in absent}
    else:
        links = {types[0]: raw}
    for group in links.values():
        if not isinstance(group, list) or not all(isinstance(u, str) for u in group):
            raise RetryableError("export API answered FINISHED with malformed links")
    return ExportAnswer(status, links, error, absent)
