"""GrowingIO authentication: the signed token request (pure) and the run's token holder.

The token request is ``POST /auth/token`` with header ``X-Client-Id`` and the raw body
``project=<uid>&ai=<ai>&tm=<unix ms>&auth=<signature>``, where the signature is the
lowercase hex HMAC-SHA256, keyed with the private key, of
``"POST\\n/auth/token\\nproject=<uid>&ai=<ai>&tm=<unix ms>"``.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import threading
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from backfill.clock import Clock
from backfill.config import Settings
from backfill.errors import AuthError, RetryableError, TokenError
from backfill.net.exchange import Service, not_json, redirect_refused
from backfill.net.retry import RetryPolicy, Tries, retrying

TOKEN_PATH = "/auth/token"
MAX_FRESH_REJECTIONS = 3


def signed_message(project_uid: str, ai: str, tm: int) -> str:
    """The text the signature covers."""
    return f"POST\n{TOKEN_PATH}\nproject={project_uid}&ai={ai}&tm={tm}"


def signature(secret: str, project_uid: str, ai: str, tm: int) -> str:
    """Lowercase hex HMAC-SHA256 of :func:`signed_message`, keyed with ``secret``."""
    message = signed_message(project_uid, ai, tm).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def token_request_body(secret: str, project_uid: str, ai: str, tm: int) -> str:
    """The raw body of the token request (not a form: the same text, sent as is)."""
    auth = signature(secret, project_uid, ai, tm)
    return f"project={project_uid}&ai={ai}&tm={tm}&auth={auth}"


class _Minted:
    """The tokens minted in this process, one per client id (and project). Two runs of one
    client id in one process (two Dagster assets, two Airflow tasks on one worker) share
    it: each minting its own would revoke the other's."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], str] = {}
        self._minting: set[tuple[str, str, str]] = set()
        self._guard = threading.Lock()

    def latest(self, who: tuple[str, str, str]) -> str | None:
        with self._guard:
            return self._tokens.get(who)

    def store(self, who: tuple[str, str, str], token: str) -> None:
        with self._guard:
            self._tokens[who] = token

    def claim(self, who: tuple[str, str, str]) -> bool:
        """Be the one that mints for ``who`` now (False: another run of this process is)."""
        with self._guard:
            if who in self._minting:
                return False
            self._minting.add(who)
            return True

    def done(self, who: tuple[str, str, str]) -> None:
        with self._guard:
            self._minting.discard(who)


MINTED = _Minted()


class MintLock:
    """A lock per client id in the user's state folder, shared by the runs of this machine
    that use a token they minted. ``backfill check`` mints only when no run holds it: a new
    token would revoke theirs."""

    def __init__(self, client_id: str, home: Path | None = None) -> None:
        from backfill.config import user_state_home

        digest = hashlib.sha256(client_id.encode()).hexdigest()[:16]
        self.path = (home or user_state_home()) / "backfill" / "tokens" / f"{digest}.lock"
        self._fd: int | None = None

    def hold(self) -> None:
        """Take the lock (shared with other runs) until :meth:`release`; never fails a run."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return  # an unusable state folder must not cost a run its token
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def holder(self) -> str | None:
        """Who holds the lock, in words, or None (creating nothing)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "a backfill running on this machine"
        finally:
            os.close(fd)
        return None


class TokenHolder:
    """One token for the whole run, shared by every task.

    GrowingIO revokes the previous token whenever a new one is issued, so tokens are
    fetched under a lock, only when none is held or the held one was rejected, and a
    rejection is handled once per token no matter how many tasks saw it.
    """

    def __init__(self, session: aiohttp.ClientSession, settings: Settings,
                 timeout: aiohttp.ClientTimeout, service: Service, policy: RetryPolicy,
                 clock: Clock) -> None:
        self._session = session
        self._creds = settings.credentials
        self._proxies = settings.proxies
        self._timeout = timeout
        self._service = service
        self._policy = policy
        self._clock = clock
        self._token: str | None = self._creds.token or None
        self._generation = 0
        self._proven = False
        self._fresh_rejections = 0
        self._lock = anyio.Lock()
        self._failure: AuthError | None = None
        self.fetched = 0
        self.fetching = False
        """A token request is under way (the progress display says so)."""
        self.mint_lock = MintLock(self._creds.client_id)

    def release(self) -> None:
        """The run is over: it uses its token no more."""
        self.mint_lock.release()

    async def current(self) -> tuple[str, int]:
        """The token to send, and its generation (pass it back to :meth:`rejected`)."""
        if self._token is None:
            async with self._lock:
                if self._token is None:
                    await self._fetch()
        assert self._token is not None
        return self._token, self._generation

    def accepted(self, generation: int) -> None:
        """The API took this token once: a later 401 means it was revoked, not wrong."""
        if generation == self._generation:
            self._proven = True
            self._fresh_rejections = 0

    async def rejected(self, generation: int) -> None:
        """The API answered 401 to a token of ``generation``: replace it once, or give up.

        Raises :class:`AuthError` when the token was never accepted (the credentials are
        wrong) or cannot be renewed (a ready token without the private key).
        """
        async with self._lock:
            if generation != self._generation:
                return  # another task already replaced it
            if self._creds.token or not self._creds.secret:
                # Never re-minted: a ready token is shared (by shards, by colleagues), and
                # a new token would revoke it for all of them.
                raise AuthError("GrowingIO rejected the token from GIO_TOKEN: it expired or "
                                "was revoked; issue a new one in the console (with GIO_TOKEN "
                                "set, backfill never mints its own)")
            if not self._proven:
                # Another client of the project may have fetched a token just after ours
                # (which revokes ours); a few fresh tokens in a row refused means it is us.
                self._fresh_rejections += 1
                if self._fresh_rejections >= MAX_FRESH_REJECTIONS:
                    raise AuthError("GrowingIO keeps rejecting fresh tokens: check "
                                    "GIO_CLIENT_ID and GIO_AI, and that no other client of "
                                    "this project keeps requesting tokens")
            await self._fetch()

    async def _fetch(self) -> None:
        """Get a new token. Misses during an outage are the run's to judge (one loop for the
        whole run, since callers hold the lock); other failures count ``attempts``, and the
        run's verdict is kept: every later caller gets the same error, with no request."""
        if self._failure is not None:
            raise self._failure
        self.fetching = True
        # Shared only with runs that could have minted it: the same key, the same project.
        who = (self._creds.base_url, self._creds.client_id,
               f"{self._creds.ai}:{hashlib.sha256(self._creds.secret.encode()).hexdigest()}")
        try:
            # One minter per client id in this process at a time (a cancellation-safe wait:
            # the other may be on another event loop); then a token it minted meanwhile is
            # taken instead of minting one more, which would revoke it.
            while not MINTED.claim(who):  # noqa: ASYNC110 (another loop's run holds it)
                await anyio.sleep(0.05)
            try:
                shared = MINTED.latest(who)
                if shared is not None and shared != self._token:
                    self._take(shared)
                    return
                await self._fetch_loop()
                assert self._token is not None
                MINTED.store(who, self._token)
            finally:
                MINTED.done(who)
        finally:
            self.fetching = False

    def _take(self, token: str) -> None:
        self._token, self._proven = token, False
        self._generation += 1

    async def _fetch_loop(self) -> None:
        """Ask for a token as the run's retry policy says; a failure is the run's verdict:
        every later caller gets it, with no request."""
        tries = Tries()
        try:
            await retrying(self._ask, self._policy, self._clock, tries)
        except RetryableError as exc:
            self._failure = TokenError(f"{exc} ({tries.counted} attempts)")
            raise self._failure from None
        except AuthError as exc:
            self._failure = exc
            raise

    async def _ask(self) -> None:
        """One token request; raises :class:`RetryableError` when no token came of it, and
        :class:`AuthError` when the answer says the credentials (or the clock) are wrong."""
        c = self._creds
        url = c.base_url.rstrip("/") + TOKEN_PATH
        proxy = self._proxies.for_url(url)
        body = token_request_body(c.secret, c.project_uid, c.ai, int(self._clock.time() * 1000))
        failed = f"cannot get a token from {c.base_url}"
        async with self._service.exchange(lambda: self._session.post(
                url, data=body.encode(), timeout=self._timeout,
                headers={"X-Client-Id": c.client_id}, proxy=proxy, allow_redirects=False),
                proxy=proxy, what=failed) as resp:
            if 300 <= resp.status < 400:
                raise redirect_refused("the token endpoint", c.base_url, resp)
            text = await resp.content.read(MAX_ANSWER)
            if resp.status != 200:
                raise AuthError(self._refusal(resp.status, text, resp.headers.get("Date")))
            answer = _json(text)
            if answer is None:  # a portal's page: judged once, for the whole run
                raise TokenError(f"{failed}: {not_json(resp)}")
            self._service.health.answered()
        code = answer.get("code") if isinstance(answer, dict) else None
        if not isinstance(code, str) or not code:
            raise TokenError(f"{failed}: the answer is JSON but holds no token "
                             f"({self._said(text)})")
        self._take(code)
        self.fetched += 1
        self.mint_lock.hold()  # from now on `check` on this machine leaves our token be

    def _refusal(self, status: int, text: bytes, date: str | None) -> str:
        """The one line for a refused token request: what the server said, and a clock
        that disagrees with the server's, since the signature carries the time."""
        line = (f"GrowingIO refused the token request (HTTP {status}: {self._said(text)}): "
                "check GIO_CLIENT_ID, GIO_SECRET, GIO_PROJECT_UID and GIO_AI")
        if skew := clock_skew(date, self._clock.now()):
            line += f"; {skew}"
        return line

    def _said(self, text: bytes) -> str:
        """The server's message, on one line, without anything of ours that is secret."""
        said = server_message(text)
        for secret in (self._creds.secret, self._creds.token):
            if secret:
                said = said.replace(secret, "***")
        return said


MAX_ANSWER = 64 * 1024
"""A token answer is a few dozen bytes; a portal's page is not read past this."""


def _json(text: bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def server_message(text: bytes, limit: int = 160) -> str:
    """The gist of an error body: its JSON message field, else its text, on one line."""
    answer = _json(text)
    said: Any = None
    if isinstance(answer, dict):
        said = next((answer[f] for f in ("message", "errorMsg", "error", "msg")
                     if isinstance(answer.get(f), str) and answer[f]), None)
    if said is None:
        said = re.sub(r"<[^>]*>", " ", text.decode("utf-8", "replace"))
    line = " ".join(str(said).split()) or "an empty answer"
    return line if len(line) <= limit else line[:limit - 1] + "…"


def clock_skew(date: str | None, now: datetime) -> str | None:
    """A sentence naming this machine's clock error against a server's ``Date`` header, when
    it is over a minute."""
    if not date:
        return None
    try:
        theirs = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    if theirs.tzinfo is None:
        theirs = theirs.replace(tzinfo=UTC)
    ahead = (now - theirs).total_seconds()
    if abs(ahead) <= 60:
        return None
    minutes = round(abs(ahead) / 60)
    return (f"this machine's clock is {minutes} min {'ahead of' if ahead > 0 else 'behind'} "
            "GrowingIO's; the token signature carries the time: set the clock right (NTP)")
