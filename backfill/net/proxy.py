"""Which proxy a URL goes through, from the standard environment variables. Pure.

The conventions curl, pip, requests and httpx share:

- ``http_proxy`` / ``HTTP_PROXY`` for ``http://`` URLs, ``https_proxy`` / ``HTTPS_PROXY``
  for ``https://`` URLs, then ``all_proxy`` / ``ALL_PROXY`` for either; the lowercase
  name wins when both are set.
- ``no_proxy`` / ``NO_PROXY``: comma-separated hosts that are reached directly. ``*``
  means every host; ``example.com`` and ``.example.com`` match it and its subdomains;
  ``host:port`` only that port; IP addresses and CIDR ranges (``10.0.0.0/8``) match
  literal addresses.
- Loopback targets (``localhost``, ``127.0.0.0/8``, ``::1``) are always reached directly,
  as Go's standard library does: a remote proxy's loopback is not ours, and the bundled
  emulator must work behind a company proxy without a ``NO_PROXY`` of its own.
- A proxy URL may carry credentials (``http://user:pass@proxy:3128``, percent-encoded);
  they are sent to the proxy and never shown: :func:`redact_proxy` hides them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from backfill.errors import UsageError

DEFAULT_PORTS = {"http": 80, "https": 443}
MACHINE_SERVICES = ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "169.254.170.23",
                    "fd00:ec2::23", "metadata.google.internal", "localhost", "127.0.0.0/8",
                    "::1")
"""Where the clouds' credential services answer on the machine's own link (instance
metadata, ECS and EKS Pod Identity, the GCE metadata server), and loopback: never through a
proxy, which cannot reach them and must not see their tokens."""


@dataclass(frozen=True)
class Proxies:
    """The proxy settings of a run: a proxy per URL scheme and the hosts that bypass it."""

    http: str | None = None
    https: str | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Proxies:
        """Read the standard variables; raise :class:`UsageError` for a proxy URL we cannot use."""
        every = _first(env, "all_proxy")
        return cls(
            http=_checked(_first(env, "http_proxy") or every),
            https=_checked(_first(env, "https_proxy") or every),
            no_proxy=tuple(entry for entry in
                           (_first(env, "no_proxy") or "").replace(" ", ",").lower().split(",")
                           if entry),
        )

    def for_url(self, url: str) -> str | None:
        """The proxy to send ``url`` through (credentials included), or ``None`` for direct."""
        parts = urlsplit(url)
        proxy = self.https if parts.scheme == "https" else self.http
        if proxy is None or not parts.hostname:
            return None
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
        if _loopback(parts.hostname.lower()):
            return None
        if any(_bypasses(entry, parts.hostname.lower(), port) for entry in self.no_proxy):
            return None
        return proxy

    def direct_hosts(self) -> str:
        """The hosts reached directly, as the comma-separated host list libraries take
        beside a proxy (the object stores' ``proxy_excludes``): NO_PROXY's entries
        without their ports (the list takes none), then :data:`MACHINE_SERVICES`."""
        hosts = [_split_port(entry)[0] for entry in self.no_proxy]
        return ",".join(dict.fromkeys(h for h in [*hosts, *MACHINE_SERVICES] if h))

    def describe(self, url: str) -> str:
        """How ``url`` is reached, for ``backfill check``; credentials are hidden."""
        proxy = self.for_url(url)
        if proxy is not None:
            return f"through the proxy {redact_proxy(proxy)}"
        scheme = "https" if url.startswith("https:") else "http"
        if getattr(self, scheme) is not None:
            host = urlsplit(url).hostname or ""
            why = "a loopback address" if _loopback(host) else "NO_PROXY matches it"
            return f"directly ({why})"
        return "directly (no proxy set)"


def redact_proxy(url: str) -> str:
    """A proxy URL with its user and password replaced by ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def proxy_refusal(status: int, proxy: str | None) -> None:
    """Raise :class:`UsageError` when ``status`` is the proxy refusing our credentials."""
    if status == 407 and proxy is not None:
        raise UsageError(f"the proxy {redact_proxy(proxy)} wants credentials (HTTP 407): put "
                         "them in the proxy variable, as http://user:password@host:port")


def _first(env: Mapping[str, str], name: str) -> str | None:
    for variant in (name, name.upper()):
        value = env.get(variant, "").strip()
        if value:
            return value
    return None


def _checked(url: str | None) -> str | None:
    if url is None:
        return None
    if "://" not in url:
        url = "http://" + url  # "proxy.corp:3128" means an HTTP proxy, as curl reads it
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"proxy {redact_proxy(url)}: only http:// and https:// proxies are "
                         "supported, not " + parts.scheme)
    try:
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        raise UsageError(f"proxy {redact_proxy(url)} has an invalid port") from None
    if not parts.hostname:
        raise UsageError(f"proxy {redact_proxy(url)} names no host")
    return url


def _bypasses(entry: str, host: str, port: int) -> bool:
    """Whether one ``NO_PROXY`` entry sends ``host:port`` direct."""
    if entry == "*":
        return True
    entry_host, entry_port = _split_port(entry)
    if entry_port is not None and entry_port != port:
        return False
    address = _address(host)
    if address is not None:
        try:
            return address in ipaddress.ip_network(entry_host, strict=False)
        except ValueError:
            return False
    name = entry_host.lstrip("*").lstrip(".")
    return bool(name) and (host == name or host.endswith("." + name))


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [::1]:8080
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def _loopback(host: str) -> bool:
    address = _address(host)
    return host == "localhost" or (address is not None and address.is_loopback)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
