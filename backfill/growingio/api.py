"""The export API client: one small async interface, and the GrowingIO implementation.

Every call goes through the export API's :class:`~backfill.net.exchange.Service` (the
outage judgement, the rate gate, the classification of statuses and failures) and the
run's one :class:`~backfill.net.retry.RetryPolicy`. What is GrowingIO's own is read here:
a 401 means a token to replace, a 403 the project refused, a 3xx never followed, and an
answer of the wrong shape is unusable (the key's problem, unless many keys get one).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from backfill.clock import Clock
from backfill.config import Settings
from backfill.errors import AuthError, PermanentError, RemoteError, RetryableError
from backfill.growingio.auth import TokenHolder
from backfill.keys import Key
from backfill.net.exchange import Service, not_json, redirect_refused
from backfill.net.outage import ServiceHealth
from backfill.net.retry import RetryPolicy, Tries, retrying
from backfill.net.throttle import RateGate


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
    """The real export API (or the emulator): v1 or v2, through its service, retried."""

    @classmethod
    def open(cls, session: aiohttp.ClientSession, settings: Settings, clock: Clock, *,
             rng: random.Random | None = None) -> GrowingIO:
        """The client of ``settings``' project: its service (the outage judgement over the
        export API and its token endpoint, the rate gate at ``rate``) and the run's retry
        policy. The one place a client is built."""
        rng = rng or random.Random()
        health = ServiceHealth(f"the export API at {settings.credentials.base_url}", clock,
                               budget=settings.outage_budget, probe_interval=settings.backoff,
                               rng=rng)
        service = Service("the export API", health, RateGate(clock, settings.rate), clock)
        return cls(session, settings, service, settings.retry_policy(rng), clock)

    def __init__(self, session: aiohttp.ClientSession, settings: Settings, service: Service,
                 policy: RetryPolicy, clock: Clock) -> None:
        self._session = session
        self._settings = settings
        self._service = service
        self._policy = policy
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                              sock_read=settings.read_timeout)
        self.tokens = TokenHolder(session, settings, self._timeout, service, policy, clock)
        self.stats = CallStats()

    @property
    def service(self) -> Service:
        """The export API as the run judges it (its health, its gate)."""
        return self._service

    async def export(self, key: Key, types: tuple[str, ...]) -> ExportAnswer:
        """Ask about ``key``; tries again as the policy says (a 401 replaces the token once,
        without counting). Raises :class:`RetryableError` once the tries are spent (an
        unusable answer included), :class:`AuthError` and :class:`UsageError`."""
        url, shape = self._url(key, types)
        tries = Tries()

        def counted(exc: RetryableError) -> None:
            self.stats.retries += 1

        while True:
            try:
                return await retrying(lambda: self._ask(key, url, shape, types),
                                      self._policy, self._clock, tries, counted)
            except _TokenReplaced:
                self.stats.reauthentications += 1

    async def reach(self) -> str:
        """Ask the export API one question without credentials (no token is sent, none is
        minted): the 401 it answers shows it is there and reached. What it answered, in
        words; raises :class:`RemoteError` when nothing, or something else (a portal's
        page, a 5xx), answers, and :class:`UsageError` for a redirect or a proxy's 407."""
        creds = self._settings.credentials
        base = creds.base_url.rstrip("/")
        url = f"{base}/v2/insights/day/visit/{creds.ai}/20200101.json"
        proxy = self._settings.proxies.for_url(url)
        timeout = aiohttp.ClientTimeout(total=None,
                                        sock_connect=min(self._settings.connect_timeout, 10),
                                        sock_read=min(self._settings.read_timeout, 10))
        try:
            async with self._service.exchange(lambda: self._session.get(
                    url, proxy=proxy, timeout=timeout, allow_redirects=False), proxy=proxy,
                    what=f"cannot reach the export API at {creds.base_url}") as resp:
                if 300 <= resp.status < 400:
                    raise redirect_refused("the export API", creds.base_url, resp)
                if resp.status in (401, 403):
                    return f"HTTP {resp.status} to a call without a token, as it should"
                if resp.status == 200:
                    try:
                        await resp.json(content_type=None)
                    except ValueError:
                        raise RemoteError(f"{creds.base_url} is not the export API: "
                                          f"{not_json(resp)}") from None
                raise RemoteError(f"{creds.base_url} answered HTTP {resp.status} to a call "
                                  "without a token, where the export API answers 401: "
                                  "check GIO_BASE_URL")
        except RetryableError as exc:
            raise RemoteError(f"{exc}; check GIO_BASE_URL and the network") from None

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

    async def _ask(self, key: Key, url: str, shape: str, types: tuple[str, ...]
                   ) -> ExportAnswer:
        token, generation = await self.tokens.current()
        headers = {"X-Client-Id": self._settings.credentials.client_id,
                   "Authorization": f"Token {token}"}
        proxy = self._settings.proxies.for_url(url)

        def send() -> Any:
            self.stats.calls += 1  # sent: past the gate (a run stopped there sent nothing)
            # Redirects are not followed: the credentials go to GIO_BASE_URL's origin only
            # (aiohttp would carry X-Client-Id to any host).
            return self._session.get(url, headers=headers, proxy=proxy,
                                     params={"expire": str(self._settings.expire)},
                                     timeout=self._timeout, allow_redirects=False)

        try:
            async with self._service.exchange(send, proxy=proxy,
                                              what="the export API") as resp:
                answer = await self._read(resp, key, shape, types)
        except _TokenRejected:
            await self.tokens.rejected(generation)  # outside the exchange: it calls too
            raise _TokenReplaced from None
        self.tokens.accepted(generation)
        return answer

    async def _read(self, resp: aiohttp.ClientResponse, key: Key, shape: str,
                    types: tuple[str, ...]) -> ExportAnswer:
        if 300 <= resp.status < 400:
            raise redirect_refused("the export API", self._settings.credentials.base_url,
                                   resp)
        if resp.status == 401:
            raise _TokenRejected
        if resp.status == 403:
            raise AuthError("GrowingIO denied access to project "
                            f"{self._settings.credentials.ai} (HTTP 403): check GIO_AI")
        if resp.status != 200:
            raise PermanentError(f"export API refused the request (HTTP {resp.status})")
        try:
            answer = parse_answer(await resp.json(content_type=None), shape, types)
        except ValueError as exc:
            # A page, JSON cut short, a document of the wrong shape: this key's problem
            # while other keys get good answers; the service's (a portal, a proxy) when
            # several keys in a row get one.
            problem = str(exc) if isinstance(exc, UnusableAnswer) else not_json(resp)
            raise RetryableError(f"export API answered {key.name} unusably: {problem}",
                                 outage=self._service.health.unusable(problem, key.name)
                                 ) from None
        self._service.health.answered()
        return answer


class UnusableAnswer(ValueError):
    """An answer the client cannot use: not the documented shape."""


class _TokenRejected(Exception):
    """The API answered 401 to the token sent."""


class _TokenReplaced(Exception):
    """A 401 led to a new token: send the same call again, at once."""


def parse_answer(body: Any, shape: str, types: tuple[str, ...]) -> ExportAnswer:
    """Read an answer; links are kept only when the status is FINISHED.

    Raises :class:`UnusableAnswer` for an answer of the wrong shape (a proxy's error page,
    a half-deployed API).
    """
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise UnusableAnswer("an unexpected document")
    status = body["status"]
    error = body.get("errorMsg") if isinstance(body.get("errorMsg"), str) else None
    if status != "FINISHED":
        return ExportAnswer(status, {}, error)  # links of a job not FINISHED are never used
    raw = body.get("downlinks") if shape == "v1" else body.get("downloadLinks")
    absent: tuple[str, ...] = ()
    if shape == "all":
        if not isinstance(raw, dict):
            raise UnusableAnswer("FINISHED without a links object")
        absent = tuple(t for t in types if raw.get(t) is None)
        links = {t: raw[t] for t in types if t not in absent}
    else:
        links = {types[0]: raw}
    for group in links.values():
        if not isinstance(group, list) or not all(isinstance(u, str) for u in group):
            raise UnusableAnswer("FINISHED with malformed links")
    return ExportAnswer(status, links, error, absent)
