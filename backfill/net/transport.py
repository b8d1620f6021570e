"""What a failed HTTP exchange means, in words, and whether it shows a host is down. Pure.

aiohttp's errors are read here and nowhere else. Three kinds matter to the run:

- the host is **down** (refused, reset, DNS failure, timeout, a body cut off): a *miss*
  that feeds the outage judgement (:mod:`backfill.net.outage`);
- the **request** was wrong (an invalid URL, a redirect to a non-http URL, too many
  redirects): the link's own, permanent problem; it never says anything about a host;
- anything **else** (a TLS failure, a malformed answer): retried, but no miss either.

Messages never carry the URL: aiohttp's own texts can hold a signed query.
"""

from __future__ import annotations

import errno as errnos
import os
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from backfill.net.proxy import proxy_refusal, redact_proxy

ALLOWED_SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
"""Redirects a download link may take (S3 sends at most one, to a regional endpoint)."""


class Kind(Enum):
    DOWN = "down"
    REQUEST = "request"
    OTHER = "other"


@dataclass(frozen=True)
class Failure:
    kind: Kind
    words: str
    """What happened, for a person: "connection refused", "timed out"…"""

    @property
    def down(self) -> bool:
        return self.kind is Kind.DOWN


_ERRNO_WORDS = {
    errnos.ECONNREFUSED: "connection refused",
    errnos.ECONNRESET: "connection reset",
    errnos.ECONNABORTED: "connection aborted",
    errnos.EPIPE: "connection broken",
    errnos.ETIMEDOUT: "timed out",
    errnos.EHOSTUNREACH: "host unreachable",
    errnos.ENETUNREACH: "network unreachable",
}


def classify(exc: BaseException, proxy: str | None = None) -> Failure:
    """What ``exc`` (from aiohttp, or a timeout) means; names the proxy if one was used.

    Raises :class:`UsageError` for a proxy that refused our credentials on a tunnel.
    """
    import aiohttp  # here, not at the top: `backfill --help` should not pay for it

    if isinstance(exc, aiohttp.ClientHttpProxyError):
        proxy_refusal(exc.status, proxy)
    failure = _classify(exc)
    if proxy:
        return Failure(failure.kind, f"{failure.words} via the proxy {redact_proxy(proxy)}")
    return failure


def _classify(exc: BaseException) -> Failure:
    import aiohttp as a

    if isinstance(exc, a.TooManyRedirects):
        return Failure(Kind.REQUEST, f"more than {MAX_REDIRECTS} redirects")
    if isinstance(exc, a.NonHttpUrlRedirectClientError):
        return Failure(Kind.REQUEST, "a redirect to a URL that is not http(s)")
    if isinstance(exc, a.InvalidUrlRedirectClientError):
        return Failure(Kind.REQUEST, "a redirect to an invalid URL")
    if isinstance(exc, a.NonHttpUrlClientError):
        return Failure(Kind.REQUEST, "a URL that is not http(s)")
    if isinstance(exc, a.InvalidURL):
        return Failure(Kind.REQUEST, "an invalid URL")
    if isinstance(exc, a.ClientConnectorCertificateError):
        return Failure(Kind.OTHER, "its TLS certificate is not trusted")
    if isinstance(exc, a.ClientSSLError):
        return Failure(Kind.OTHER, "the TLS handshake failed")
    if isinstance(exc, a.ClientConnectorDNSError):
        return Failure(Kind.DOWN, "DNS lookup failed")
    if isinstance(exc, a.ConnectionTimeoutError):
        return Failure(Kind.DOWN, "connecting timed out")
    if isinstance(exc, a.ServerTimeoutError | TimeoutError):
        return Failure(Kind.DOWN, "timed out")
    if isinstance(exc, a.ServerDisconnectedError):
        return Failure(Kind.DOWN, "the server closed the connection")
    if isinstance(exc, a.ClientPayloadError):
        return Failure(Kind.DOWN, "the body broke off")
    if isinstance(exc, a.ClientOSError | OSError):
        return Failure(Kind.DOWN, _os_words(exc))
    if isinstance(exc, a.ClientConnectionError):
        return Failure(Kind.DOWN, "the connection failed")
    return Failure(Kind.OTHER, f"an unusable answer ({type(exc).__name__})")


def _os_words(exc: BaseException) -> str:
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number in _ERRNO_WORDS:
        return _ERRNO_WORDS[number]
    if isinstance(number, int) and number > 0:
        return os.strerror(number).lower()
    return "the connection failed"


def scheme_problem(url: str) -> str | None:
    """Why ``url`` is not fetched at all (not http(s), no host), or None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "an invalid URL"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return f"a {parts.scheme or 'scheme-less'} URL: only http and https links are fetched"
    if not host:
        return "a URL without a host"
    return None


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``: what credentials are bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https"
                                                                  else 80)
