"""A small HTTP forward proxy on loopback, for the tests of proxy-only networks.

It serves absolute-form requests (``GET http://host/…``) and ``CONNECT`` tunnels, and
resolves host names only through its own table: a client that bypasses it cannot reach
those hosts at all, as on a company network. It counts what it forwarded, by host.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import anyio


@dataclass
class ForwardProxy:
    hosts: dict[str, str]
    """Host name → loopback address: the only names this proxy can resolve."""
    credentials: tuple[str, str] | None = None
    """(user, password) the proxy demands, or none."""
    port: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    """Requests (and tunnels) forwarded, by host name."""
    refused: int = 0
    """Requests turned away for lack of the right credentials."""

    def url(self, *, with_credentials: bool = True) -> str:
        if self.credentials and with_credentials:
            user, password = (quote(x, safe="") for x in self.credentials)
            return f"http://{user}:{password}@127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await self._forward(head, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def _forward(self, head: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers = [line for line in header_lines if line]
        if not self._authorized(headers):
            self.refused += 1
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b'Proxy-Authenticate: Basic realm="test"\r\n'
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            path = ""
        else:
            parts = urlsplit(target)
            host, port = parts.hostname or "", str(parts.port or 80)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
        address = self.hosts.get(host)
        if address is None:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            return
        self.seen[host] += 1
        up_reader, up_writer = await asyncio.open_connection(address, int(port))
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                kept = [h for h in headers if h.split(":", 1)[0].lower() not in
                        ("proxy-authorization", "proxy-connection", "connection")]
                upstream_head = "\r\n".join([f"{method} {path} {version}", *kept,
                                             "Connection: close", "", ""])
                up_writer.write(upstream_head.encode("latin-1"))
            async with anyio.create_task_group() as group:
                group.start_soon(_pipe, reader, up_writer)
                await _pipe(up_reader, writer)  # the answer; the server then closes
                group.cancel_scope.cancel()
        finally:
            up_writer.close()

    def _authorized(self, headers: list[str]) -> bool:
        if self.credentials is None:
            return True
        expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        given = [h.split(":", 1)[1].strip() for h in headers
                 if h.lower().startswith("proxy-authorization:")]
        return given == [expected]


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with suppress(ConnectionError):
        while data := await source.read(1 << 16):
            sink.write(data)
            await sink.drain()


@asynccontextmanager
async def forward_proxy(hosts: dict[str, str],
                        credentials: tuple[str, str] | None = None
                        ) -> AsyncIterator[ForwardProxy]:
    """Serve a :class:`ForwardProxy` on a free loopback port until the block exits."""
    proxy = ForwardProxy(hosts, credentials)
    server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()
