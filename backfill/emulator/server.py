"""Run the emulator on a loopback port, in-process (tests, demo) or standalone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from backfill.emulator.app import STATE, EmulatorState, create_app
from backfill.emulator.config import EmulatorConfig


class RunningEmulator:
    """A served emulator: its URL, its state, and a switch to take it off the network."""

    def __init__(self, runner: web.AppRunner, site: web.TCPSite, host: str, port: int,
                 state: EmulatorState) -> None:
        self._runner = runner
        self._site: web.TCPSite | None = site
        self._host, self._port = host, port
        display = f"[{host}]" if ":" in host else host
        self.url = f"http://{display}:{port}"
        self.state = state

    async def go_down(self) -> None:
        """Stop listening and drop every open connection, as a dead host does: new
        connections are refused, downloads under way break off."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server
        for handler in list(server.connections if server is not None else []):
            handler.force_close()

    async def come_back(self) -> None:
        """Listen again on the same address and port."""
        if self._site is None:
            site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
            await site.start()
            self._site = site


@asynccontextmanager
async def serve(config: EmulatorConfig | None = None, host: str = "127.0.0.1",
                port: int = 0) -> AsyncIterator[RunningEmulator]:
    """Serve a fresh emulator until the block exits; port 0 picks a free port."""
    app = create_app(config)
    # Cancel handlers whose client went away (a stalled body would otherwise linger),
    # and do not wait long for them on shutdown.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(_ignoring_sendfile_race(previous))
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield RunningEmulator(runner, site, bound_host, bound_port, app[STATE])
    finally:
        await runner.cleanup()
        loop.set_exception_handler(previous)


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def _ignoring_sendfile_race(previous: ExceptionHandler | None) -> ExceptionHandler:
    """The loop's exception handler, less one CPython race (3.11 to 3.13 at least): a
    connection that breaks during ``loop.sendfile`` can have its write error and its
    loss both resolve the same waiter, and the second raises ``InvalidStateError`` from
    ``_call_connection_lost``. The connection is gone either way; nothing is lost."""
    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), asyncio.InvalidStateError) and (
                "_call_connection_lost" in repr(context.get("handle"))):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    return handle
