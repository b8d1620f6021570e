"""One backfill, start to end: plan against the state, fetch, summarise.

This is the library entry point the CLI (and the demo) call:
``await backfill(settings, keys, reporter)`` returns a :class:`Summary`.
"""

from __future__ import annotations

import random
import signal
import time
from datetime import UTC, datetime

import aiohttp
import anyio

from backfill.api import ExportApi, GrowingIO
from backfill.config import Settings
from backfill.download import Downloader
from backfill.errors import Interrupted
from backfill.keys import Key
from backfill.plan import Plan, make_plan
from backfill.report import Reporter, Summary
from backfill.scheduler import Scheduler, first_error
from backfill.store import Status, Store
from backfill.throttle import RateLimiter


def open_store(settings: Settings) -> Store:
    """The state of ``settings.out``, locked for this process."""
    store = Store(settings.out)
    try:
        store.lock()
    except BaseException:
        store.close()
        raise
    return store


def plan_keys(store: Store, settings: Settings, keys: list[Key], *, force: bool,
              now: datetime) -> Plan:
    known = store.statuses(settings.api, [k.name for k in keys])
    return make_plan(keys, settings, known, now, force=force)


async def backfill(settings: Settings, keys: list[Key], reporter: Reporter, *,
                   force: bool = False, api: ExportApi | None = None) -> Summary:
    """Fetch ``keys`` into ``settings.out``; finished keys cost nothing unless ``force``.

    Raises :class:`Interrupted` on SIGINT/SIGTERM, once the state is consistent.
    """
    interrupted: list[str] = []
    summary = Summary()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_stop_on_signal, group.cancel_scope, interrupted)
            await _backfill(settings, keys, reporter, force, api, summary)
            group.cancel_scope.cancel()
    except BaseExceptionGroup as errors:
        raise first_error(errors) from None
    if interrupted:
        raise Interrupted(interrupted[0])
    return summary


async def _backfill(settings: Settings, keys: list[Key], reporter: Reporter, force: bool,
                    api: ExportApi | None, summary: Summary) -> None:
    started = time.monotonic()
    store = await anyio.to_thread.run_sync(open_store, settings)
    try:
        plan = plan_keys(store, settings, keys, force=force, now=datetime.now(UTC))
        _record_skipped(store, settings, plan, summary)
        reporter.begin(len(plan.tasks), len(plan.done))
        try:
            if plan.tasks:
                settings.credentials.require()
                await _fetch(settings, store, plan, reporter, summary, api)
        finally:
            reporter.end()
    finally:
        store.close()
    summary.seconds = time.monotonic() - started


def _record_skipped(store: Store, settings: Settings, plan: Plan, summary: Summary) -> None:
    for key in plan.done:
        summary.add(key.name, Status.DONE)
    reasons = ((plan.gone, Status.GONE, f"beyond the {settings.retention_days}-day retention"),
               (plan.not_due, Status.NOT_READY, "not exportable before --max-wait runs out"))
    for keys, status, reason in reasons:
        for key in keys:
            store.set_status(settings.api, key.name, settings.wanted_types, status, reason)
            summary.add(key.name, status, reason)


async def _fetch(settings: Settings, store: Store, plan: Plan, reporter: Reporter,
                 summary: Summary, api: ExportApi | None) -> None:
    connector = aiohttp.TCPConnector(limit=settings.downloads + settings.polls + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = GrowingIO(session, settings, RateLimiter(settings.rate), random.Random())
        downloader = Downloader(session, chunk_size=settings.chunk_size,
                                checkpoint_bytes=settings.checkpoint_bytes,
                                connect_timeout=settings.connect_timeout,
                                read_timeout=settings.read_timeout)
        scheduler = Scheduler(settings, store, api or client, downloader, reporter, summary)
        try:
            await scheduler.run(plan.tasks)
        finally:
            summary.api_calls += client.stats.calls
            summary.retries += client.stats.retries


async def _stop_on_signal(scope: anyio.CancelScope, received: list[str]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            received.append(signal.Signals(signum).name)
            scope.cancel()
            return
