"""One backfill, start to end: plan against the state, fetch, summarise.

This is the library entry point the CLI (and the demo) call:
``await backfill(settings, keys, reporter)`` returns a :class:`Summary`.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from backfill.clock import wall_now
from backfill.config import Settings
from backfill.destination import Destination, descriptor, open_destination
from backfill.engine.plan import Plan, make_plan
from backfill.engine.policy import beyond_retention, expected_ready, oldest_kept
from backfill.engine.progress import Activity, Reporter
from backfill.engine.stops import stop_on_signal
from backfill.errors import Interrupted, first_error
from backfill.keys import BEIJING, Granularity, Key, expand, key_at, parse_bound
from backfill.model import Status, Summary, UnitRecord
from backfill.net.outage import LinkHosts, ServiceHealth
from backfill.net.throttle import RateLimiter
from backfill.state.reconcile import reconcile
from backfill.state.store import Store, has_state

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
                   force: bool = False, api: ExportApi | None = None) -> Summary:
    """Fetch ``keys`` (this shard's only, with a shard) into ``settings.out``; finished
    keys cost nothing unless ``force``.

    Raises :class:`Interrupted` on SIGINT/SIGTERM (when called from the main thread),
    once the state is consistent.
    """
    keys = shard_keys(settings, keys)
    interrupted: list[str] = []
    summary = Summary()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(stop_on_signal, group.cancel_scope, interrupted)
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
    if warning := set_aside_warning(store):
        reporter.warning(warning)
    try:
        # Off the loop: finding storage credentials may ask the instance metadata service.
        destination = await anyio.to_thread.run_sync(open_destination, settings)
        # Done units the cache does not know (a fresh CI runner, another machine) cost
        # no export call: the destination's markers say they are done.
        await reconcile(store, destination, settings, keys)
        plan = await anyio.to_thread.run_sync(_plan_and_record, store, settings, keys, force,
                                              summary)
        if plan.tasks:
            settings.credentials.require()
        # One writer per destination: refused before any export call, and before the bars.
        async with destination.hold(settings) if plan.tasks else contextlib.nullcontext():
            if plan.tasks:  # what the output is, recorded before its first unit
                await descriptor.record(destination, settings)
            reporter.begin(len(plan.tasks), len(plan.done), settings.max_wait)
            try:
                if plan.tasks:
                    await _fetch(settings, store, destination, plan, reporter, summary, api)
            finally:
                reporter.end()
        summary.held_parts, summary.held_bytes = await anyio.to_thread.run_sync(
            _held, store, settings, keys)
    finally:
        with anyio.CancelScope(shield=True):  # closing checkpoints the WAL: disk I/O
            await anyio.to_thread.run_sync(store.close)
    summary.seconds = time.monotonic() - started


def _held(store: Store, settings: Settings, keys: list[Key]) -> tuple[int, int]:
    """Parts and bytes of the done units of ``keys`` (the state, reconciled)."""
    wanted = {k.name for k in keys}
    done = [u for u in store.units(settings.api)
            if u.key in wanted and u.status is Status.DONE]
    return sum(u.parts for u in done), sum(u.bytes for u in done)


def _plan_and_record(store: Store, settings: Settings, keys: list[Key], force: bool,
                     summary: Summary) -> Plan:
    """Plan against the state and record the keys that need no call (SQLite: a thread)."""
    plan = plan_keys(store, settings, keys, force=force, now=wall_now())
    _record_skipped(store, settings, plan, summary)
    return plan


def _record_skipped(store: Store, settings: Settings, plan: Plan, summary: Summary) -> None:
    for key in plan.done:
        summary.add(key.name, Status.DONE)
    oldest = oldest_kept(wall_now(), settings.retention_days)
    reasons = ((plan.gone, Status.GONE, f"beyond the {settings.retention_days}-day retention "
                                        f"(the oldest day kept is {oldest:%Y-%m-%d})"),
               (plan.not_due, Status.NOT_READY, "not exportable before --max-wait runs out"))
    for keys, status, reason in reasons:
        store.set_statuses(settings.api, [(k.name, settings.wanted_types) for k in keys],
                           status, reason)
        for key in keys:
            summary.add(key.name, status, reason)


async def _fetch(settings: Settings, store: Store, destination: Destination, plan: Plan,
                 reporter: Reporter, summary: Summary, api: ExportApi | None) -> None:
    # Imported here: a run that finds nothing to do (a no-op cron run) never needs them.
    import aiohttp

    from backfill.engine.scheduler import Scheduler
    from backfill.growingio.api import GrowingIO
    from backfill.transfer.download import BodyLimits, Downloader, block_size

    connector = aiohttp.TCPConnector(limit=settings.downloads + settings.polls + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        limiter = RateLimiter(settings.rate)
        limiter.remember(await anyio.to_thread.run_sync(_load_recent_calls, settings))
        api_health = service_health(settings)
        link_hosts = LinkHosts(budget=settings.outage_budget, probe_interval=settings.backoff)
        client = GrowingIO(session, settings, limiter, api_health, random.Random())
        limits = BodyLimits(min_speed=settings.min_speed,
                            min_speed_time=settings.min_speed_time,
                            max_size=settings.max_part_size)
        downloader = Downloader(session,
                                chunk_size=block_size(settings.chunk_size, settings.downloads),
                                checkpoint_bytes=settings.checkpoint_bytes,
                                connect_timeout=settings.connect_timeout,
                                read_timeout=settings.read_timeout, hosts=link_hosts,
                                proxies=settings.proxies, deep=settings.verify == "full",
                                limits=limits)
        activity = Activity(keys_total=len(plan.tasks),
                            token_pending=lambda: client.tokens.fetching,
                            outage=lambda: api_health.trouble() or link_hosts.trouble())
        scheduler = Scheduler(settings, store, destination, api or client, downloader,
                              reporter, summary, services=(api_health, link_hosts),
                              activity=activity)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_heartbeat, reporter, activity)
                await scheduler.run(plan.tasks)
                group.cancel_scope.cancel()
        except BaseExceptionGroup as errors:
            raise first_error(errors) from None
        finally:
            client.tokens.release()
            summary.api_calls += client.stats.calls
            summary.retries += client.stats.retries
            with anyio.CancelScope(shield=True):  # also when the run is being cancelled
                await anyio.to_thread.run_sync(_save_recent_calls, settings, limiter.recent())


async def _heartbeat(reporter: Reporter, activity: Activity) -> None:
    """Tell the reporter what the run does, every second: the live display shows it, the
    plain and JSON logs say it when nothing else was said for a while."""
    while True:
        await anyio.sleep(1.0)
        reporter.heartbeat(activity, anyio.current_time())


def service_health(settings: Settings) -> ServiceHealth:
    """The run's judgement of the export API (with its token endpoint); the hosts that
    serve the download links are judged apart, each on its own (:class:`LinkHosts`)."""
    return ServiceHealth(f"the export API at {settings.credentials.base_url}",
                         budget=settings.outage_budget, probe_interval=settings.backoff)


# Back-to-back runs (run, then retry, then catchup) share the server's window: the
# last calls of one run are handed to the next through the state folder.
def _load_recent_calls(settings: Settings) -> list[float]:
    try:
        times = json.loads((settings.state_folder / RECENT_CALLS).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(times, list):
        return []
    return [float(t) for t in times if isinstance(t, int | float)]


def _save_recent_calls(settings: Settings, times: list[float]) -> None:
    with contextlib.suppress(OSError):
        (settings.state_folder / RECENT_CALLS).write_text(json.dumps(times))


def shard_keys(settings: Settings, keys: list[Key]) -> list[Key]:
    """This run's share of ``keys``: all of them, or its shard's (``--shard``, ``shard=``)."""
    shard = settings.shard
    return keys if shard is None else [k for k in keys if shard.holds(k)]


def known_units(settings: Settings) -> list[UnitRecord]:
    """The units in the state, or none when there is no state yet (nothing is created)."""
    return [u for u in _state_units(settings) if u.api == settings.api]


def _state_units(settings: Settings) -> list[UnitRecord]:
    if not has_state(settings.state_folder):
        return []
    store = Store(settings.state_folder)
    try:
        return store.units()
    finally:
        store.close()


def dry_plan(settings: Settings, keys: list[Key], *, force: bool, now: datetime
             ) -> dict[str, Any]:
    """What a run would do, from the state alone: no call, nothing written."""
    keys = shard_keys(settings, keys)
    known = {(u.key, u.data_type): u.status for u in known_units(settings)}
    plan = make_plan(keys, settings, known, now, force=force)
    calls = len(plan.tasks)  # one export call per key at the very least
    return {
        "keys": len(keys),
        "first": keys[0].name if keys else None,
        "last": keys[-1].name if keys else None,
        "granularity": keys[0].granularity.value if keys else settings.granularity.value,
        "api": settings.api,
        "types": ",".join(settings.wanted_types),
        "done": len(plan.done),
        "to_fetch": len(plan.tasks),
        "gone": len(plan.gone),
        "not_due": len(plan.not_due),
        "max_wait_seconds": settings.max_wait,
        "format": settings.format,
        "min_api_calls": calls,
        "min_seconds": calls / settings.rate,
        "rate": settings.rate,
        "shard": str(settings.shard) if settings.shard else None,
        "shards": settings.shard.n if settings.shard else 1,
        "destination": str(settings.out),
        "state": str(settings.state_folder),
    }


RECENT_CALLS = "recent-calls.json"
RETRYABLE = frozenset({Status.FAILED, Status.ACTIVE, Status.NOT_READY, Status.PENDING})


def anything_to_retry(settings: Settings) -> bool:
    """Whether the state holds any unit, of any API, that ``retry`` could take; reads the
    state alone (nothing is created)."""
    return any(u.status in RETRYABLE or u.status is Status.GONE
               for u in _state_units(settings))


def retryable(settings: Settings, within: list[Key] | None, now: datetime
              ) -> tuple[list[Key], tuple[str, ...]]:
    """Keys (and their data types) that failed, were interrupted or were not ready.

    Keys marked gone come back only if they are within the retention again (the
    ``retention_days`` setting grew); finished keys are never touched.
    """
    wanted = {k.name for k in within} if within is not None else None
    names: set[str] = set()
    types: set[str] = set()
    for unit in known_units(settings):
        if wanted is not None and unit.key not in wanted:
            continue
        key = Key.parse(unit.key)
        back = unit.status is Status.GONE and not beyond_retention(
            key, now, settings.retention_days)
        if unit.status in RETRYABLE or back:
            names.add(unit.key)
            types.add(unit.data_type)
    return sorted(Key.parse(n) for n in names), tuple(sorted(types - {"all"}))


def catchup_keys(settings: Settings, first: Key | None, lag: float | None, now: datetime
                 ) -> tuple[list[Key], list[Key]]:
    """Keys from ``first`` to the newest that should be ready now; returns (keys to fetch,
    keys already beyond retention).

    Without ``first``: from the earliest key the state knows not complete (or the one
    after the newest complete), and on an output that holds nothing yet from the
    configured ``start``, else the oldest key GrowingIO still keeps: the first catch-up
    is the backfill of what GrowingIO holds.
    """
    granularity = settings.granularity
    last = key_at(now, granularity)
    while not _should_be_ready(last, settings, lag, now):
        last = Key(last.start - granularity.step, granularity)
    if first is None:
        first = _earliest_incomplete(settings, granularity) or _first_start(settings, now)
    if first > last:
        return [], []
    keys = expand(first, last)
    gone = [k for k in keys if beyond_retention(k, now, settings.retention_days)]
    return [k for k in keys if k not in set(gone)], gone


def _should_be_ready(key: Key, settings: Settings, lag: float | None, now: datetime) -> bool:
    if lag is None:
        return expected_ready(key, settings) <= now
    return key.end + timedelta(seconds=lag) <= now


def _earliest_incomplete(settings: Settings, granularity: Granularity) -> Key | None:
    width = 8 if granularity is Granularity.DAY else 10
    units = [u for u in known_units(settings) if len(u.key) == width]
    if not units:
        return None
    pending = [u.key for u in units if u.status in RETRYABLE]
    if pending:
        return Key.parse(min(pending))
    newest = Key.parse(max(u.key for u in units))
    return Key(newest.start + granularity.step, granularity)


def _first_start(settings: Settings, now: datetime) -> Key:
    """Where the first catch-up of an output starts: ``start``, or the first key of the
    oldest day GrowingIO will still keep when the run may end (``max_wait`` on), so that
    the edge of the retention does not pass a key between the plan and its call."""
    if settings.start is not None:
        return parse_bound(settings.start, settings.granularity, now=now, end=False)
    kept = oldest_kept(now + timedelta(seconds=settings.max_wait), settings.retention_days)
    return key_at(datetime(kept.year, kept.month, kept.day, tzinfo=BEIJING), settings.granularity)
