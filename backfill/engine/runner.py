"""One backfill, start to end: plan against the state, fetch, summarise.

This is the library entry point the CLI (and the demo) call:
``await backfill(settings, keys, reporter)`` returns a :class:`Summary`.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import TYPE_CHECKING

import anyio

from backfill.clock import Clock, system_clock
from backfill.config import Settings
from backfill.destination import Destination, descriptor, open_destination
from backfill.engine.plan import Plan, make_plan
from backfill.engine.policy import oldest_kept
from backfill.engine.progress import Activity, Reporter
from backfill.engine.stops import stop_on_signal
from backfill.errors import Interrupted
from backfill.keys import Key
from backfill.model import Status, Summary
from backfill.net.exchange import LinkHosts
from backfill.state.reconcile import reconcile
from backfill.state.store import Store

if TYPE_CHECKING:
    from backfill.growingio.api import ExportApi


def open_store(settings: Settings) -> Store:
    """The state of ``settings.out``, locked for this process (a damaged one is set aside:
    ``store.set_aside``)."""
    return Store(settings.state_folder, owner=settings.out, lock=True)


def set_aside_warning(store: Store) -> str | None:
    """The one warning line for a state file that was damaged and set aside, if one was."""
    if store.set_aside is None:
        return None
    return (f"the state in {store.folder} could not be read and was moved to "
            f"{store.set_aside.name}; what is done is read again from the destination's "
            "markers")


def plan_keys(store: Store, settings: Settings, keys: list[Key], *, force: bool,
              now: datetime) -> Plan:
    known = store.statuses(settings.api, [k.name for k in keys])
    return make_plan(keys, settings, known, now, force=force)


async def backfill(settings: Settings, keys: list[Key], reporter: Reporter, *,
                   force: bool = False, api: ExportApi | None = None,
                   clock: Clock | None = None, summary: Summary | None = None) -> Summary:
    """Fetch ``keys`` (this shard's only, with a shard) into ``settings.out``; finished
    keys cost nothing unless ``force``. ``clock``: the run's time (the machine's by
    default); ``api``: the export API (GrowingIO's, through ``settings``, by default);
    ``summary``: the one to fill as the run goes (what a stopped run did is in it)."""

    keys = shard_keys(settings, keys)
    clock = clock or system_clock()
    interrupted: list[str] = []
    summary = summary if summary is not None else Summary()
    async with anyio.create_task_group() as group:
        group.start_soon(stop_on_signal, group.cancel_scope, interrupted)
        await _backfill(settings, keys, reporter, force, api, summary, clock)
        group.cancel_scope.cancel()
    if interrupted:
        raise Interrupted(interrupted[0])
    return summary


async def _backfill(settings: Settings, keys: list[Key], reporter: Reporter, force: bool,
                    api: ExportApi | None, summary: Summary, clock: Clock) -> None:
    """Raises :class:`Interrupted` on SIGINT/SIGTERM (when called from the main thread),
    once the state is consistent."""
    started = clock.monotonic()
    store = await anyio.to_thread.run_sync(open_store, settings)
    if warning := set_aside_warning(store):
        reporter.warning(warning)
    try:
        # Off the loop: finding storage credentials may ask the instance metadata service.
        destination = await anyio.to_thread.run_sync(open_destination, settings)
        # Done units the cache does not know (a fresh CI runner, another machine) cost
        # no export call: the destination's markers say they are done.
        await reconcile(store, destination, settings, keys)
        plan = await anyio.to_thread.run_sync(_plan_and_record, store, settings, keys, force,
                                              summary, clock.now())
        if plan.tasks:
            settings.credentials.require()
        # One writer per destination: refused before any export call, and before the bars.
        async with (destination.hold(settings) if plan.tasks
                    else contextlib.nullcontext()) as caveat:
            if caveat:
                reporter.warning(caveat)
            if plan.tasks:  # what the output is, recorded before its first unit
                await descriptor.record(destination, settings)
            reporter.begin(len(plan.tasks), len(plan.done), settings.max_wait)
            try:
                if plan.tasks:
                    await _fetch(settings, store, destination, plan, reporter, summary, api,
                                 clock)
            finally:
                reporter.end()
        summary.held_parts, summary.held_bytes = await anyio.to_thread.run_sync(
            _held, store, settings, keys)
    finally:
        with anyio.CancelScope(shield=True):  # closing checkpoints the WAL: disk I/O
            await anyio.to_thread.run_sync(store.close)
    summary.seconds = clock.monotonic() - started


def _held(store: Store, settings: Settings, keys: list[Key]) -> tuple[int, int]:
    """Parts and bytes of the done units of ``keys`` (the state, reconciled)."""
    wanted = {k.name for k in keys}
    done = [u for u in store.units(settings.api)
            if u.key in wanted and u.status is Status.DONE]
    return sum(u.parts for u in done), sum(u.bytes for u in done)


def _plan_and_record(store: Store, settings: Settings, keys: list[Key], force: bool,
                     summary: Summary, now: datetime) -> Plan:
    """Plan against the state and record the keys that need no call (SQLite: a thread)."""
    plan = plan_keys(store, settings, keys, force=force, now=now)
    _record_skipped(store, settings, plan, summary, now)
    return plan


def _record_skipped(store: Store, settings: Settings, plan: Plan, summary: Summary,
                    now: datetime) -> None:
    for key in plan.done:
        summary.add(key.name, Status.DONE)
    oldest = oldest_kept(now, settings.retention_days)
    reasons = ((plan.gone, Status.GONE, f"beyond the {settings.retention_days}-day retention "
                                        f"(the oldest day kept is {oldest:%Y-%m-%d})"),
               (plan.not_due, Status.NOT_READY, "not exportable before --max-wait runs out"))
    for keys, status, reason in reasons:
        store.set_statuses(settings.api, [(k.name, settings.wanted_types) for k in keys],
                           status, reason)
        for key in keys:
            summary.add(key.name, status, reason)


async def _fetch(settings: Settings, store: Store, destination: Destination, plan: Plan,
                 reporter: Reporter, summary: Summary, api: ExportApi | None,
                 clock: Clock) -> None:
    # Imported here: a run that finds nothing to do (a no-op cron run) never needs them.
    import aiohttp

    from backfill.engine.scheduler import Scheduler
    from backfill.growingio.api import GrowingIO
    from backfill.transfer.download import BodyLimits, Downloader, block_size

    connector = aiohttp.TCPConnector(limit=settings.downloads + settings.polls + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = GrowingIO.open(session, settings, clock)
        gate = client.service.gate
        recent = await anyio.to_thread.run_sync(_load_recent_calls, settings)
        if recent is not None:  # else the gate assumes the budget was just spent
            gate.remember(recent)
        link_hosts = LinkHosts(clock, budget=settings.outage_budget,
                               probe_interval=settings.backoff)
        limits = BodyLimits(min_speed=settings.min_speed,
                            min_speed_time=settings.min_speed_time,
                            max_size=settings.max_part_size)
        downloader = Downloader(session, clock,
                                chunk_size=block_size(settings.chunk_size, settings.downloads),
                                checkpoint_bytes=settings.checkpoint_bytes,
                                connect_timeout=settings.connect_timeout,
                                read_timeout=settings.read_timeout, hosts=link_hosts,
                                proxies=settings.proxies, deep=settings.verify == "full",
                                limits=limits)
        api_health = client.service.health
        activity = Activity(clock, keys_total=len(plan.tasks),
                            token_pending=lambda: client.tokens.fetching,
                            outage=lambda: api_health.trouble() or link_hosts.trouble())
        scheduler = Scheduler(settings, store, destination, api or client, downloader,
                              reporter, summary, clock, services=(api_health, link_hosts),
                              activity=activity)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_heartbeat, reporter, activity, clock)
                await scheduler.run(plan.tasks)
                group.cancel_scope.cancel()
        finally:
            client.tokens.release()
            summary.api_calls += client.stats.calls
            summary.retries += client.stats.retries
            with anyio.CancelScope(shield=True):  # also when the run is being cancelled
                await anyio.to_thread.run_sync(_save_recent_calls, settings, gate.recent())


async def _heartbeat(reporter: Reporter, activity: Activity, clock: Clock) -> None:
    """Tell the reporter what the run does, every second: the live display shows it, the
    plain and JSON logs say it when nothing else was said for a while."""
    while True:
        await clock.sleep(1.0)
        reporter.heartbeat(activity, clock.monotonic())


# Back-to-back runs (run, then retry, then catchup) share the server's window: the
# last calls of one run are handed to the next through the state folder.
def _load_recent_calls(settings: Settings) -> list[float] | None:
    try:
        times = json.loads((settings.state_folder / RECENT_CALLS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(times, list):
        return None
    return [float(t) for t in times if isinstance(t, int | float)]


def _save_recent_calls(settings: Settings, times: list[float]) -> None:
    with contextlib.suppress(OSError):
        (settings.state_folder / RECENT_CALLS).write_text(json.dumps(times))


def shard_keys(settings: Settings, keys: list[Key]) -> list[Key]:
    """This run's share of ``keys``: all of them, or its shard's (``--shard``, ``shard=``)."""
    shard = settings.shard
    return keys if shard is None else [k for k in keys if shard.holds(k)]


RECENT_CALLS = "recent-calls.json"
