"""Run the emulator on a loopback port, in-process (tests, demo) or standalone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from backfill.emulator.app import STATE, EmulatorState, create_app
from backfill.emulator.config import EmulatorConfig


@dataclass(frozen=True)
class RunningEmulator:
    url: str
    state: EmulatorState


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
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        display = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield RunningEmulator(f"http://{display}:{bound_port}", app[STATE])
    finally:
        await runner.cleanup()
