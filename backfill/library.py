"""The library: everything backfill does, as the command line and both integrations (and
any script, notebook or orchestrator) call it, with the same settings and guarantees::

    import backfill

    summary = backfill.fetch("2026-11-01", "2026-11-07", out="s3://lake/growingio",
                             types=["visit", "page"])
    summary.exit_code, summary.parts, summary.bytes, summary.problems

The parts, for callers that build their own settings (:func:`configure`) and run an event
loop: :func:`fetch_keys`, :func:`plan`, :func:`retry_keys`, :func:`catchup_keys` (the
three jobs), :func:`status`, :func:`verify`, :func:`check` (the questions), and
:func:`open_client`, :func:`until_ready` (the export API itself).

Options are the config file's keys (see ``config.example.toml``); ``config=`` reads a
file first, and options win over it, as flags do. Credentials come from the environment
(``GIO_*``, and the storage providers' own variables), never from arguments.

Raises :class:`backfill.errors.BackfillError` subclasses, each with ``exit_code``:
:class:`UsageError` (bad input, exit 2) before any call, :class:`AuthError` (exit 3),
:class:`Interrupted` (130). Keys that fail, are gone or are not ready do not raise: the
:class:`Summary` says so (``exit_code`` 1 or 4, ``problems`` per key). Errors of the run's
concurrent tasks are handed out here, once: one of ours as itself; a group that holds
anything else (a bug) whole, with its traceback.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio

from backfill.clock import Clock, system_clock
from backfill.config import (
    Settings,
    check_hourly_layout,
    check_token_rule,
    did_you_mean,
    load,
    option_names,
)
from backfill.engine.progress import PlainReporter, Reporter
from backfill.errors import UsageError, flatten
from backfill.keys import BEIJING, Granularity, Key, date_form, expand, key_at, parse_bound
from backfill.model import Status, Summary, UnitRecord

if TYPE_CHECKING:
    from backfill.growingio.api import GrowingIO
    from backfill.state.freshness import Freshness
    from backfill.state.status import StatusReport
    from backfill.state.verify import VerifyReport

MAX_KEYS = 100_000
P = ParamSpec("P")
R = TypeVar("R")
RETRYABLE = frozenset({Status.FAILED, Status.ACTIVE, Status.NOT_READY, Status.PENDING})


def _boundary(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Hand out the errors of ``function``'s task groups once: see the module."""

    @functools.wraps(function)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await function(*args, **kwargs)
        except BaseExceptionGroup as errors:
            flat = flatten(errors)
            if flat is errors:
                raise
            raise flat from None

    return call


# --- settings ---------------------------------------------------------------------------

def configure(config: Path | str | None = None, *, environ: Mapping[str, str] | None = None,
              project: str | None = None, origin: str = "argument",
              **options: Any) -> Settings:
    """Settings from the config file (``config``, else the usual places), the environment
    (``environ`` for ``os.environ``) and ``options`` (named as the file's keys; ``origin``
    says what they are for messages: ``argument`` or ``flag``). ``project`` picks a
    ``[[projects]]`` entry. Raises :class:`UsageError` for anything wrong, and for shards
    that would mint tokens against each other."""
    unknown = sorted(set(options) - set(option_names()))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}"
                         + did_you_mean(unknown[0], option_names(), every=True))
    settings = load(Path(config) if config is not None else None, options,
                    dict(environ) if environ is not None else None, project=project,
                    origin=origin)
    check_token_rule(settings)  # before anything reads the state or the network
    return settings


async def settle_output(settings: Settings) -> Settings:
    """``settings`` with what the output records (its format, API, granularity, layout)
    wherever they do not say, and the format's extra checked; reads, creates nothing.

    Raises :class:`UsageError` when they contradict the output's record (see
    :mod:`backfill.destination.descriptor`).
    """
    from backfill.destination import descriptor, open_root
    from backfill.destination.tables.convert import require_tables
    from backfill.state.reconcile import recognise

    root = await anyio.to_thread.run_sync(open_root, settings)
    recorded = await descriptor.read(root, settings) or await recognise(root, settings)
    settled = descriptor.settle(settings, recorded)
    held = settled.sources.get("format") == "the output"
    require_tables(settled.format, str(settled.out) if held else None)
    if settled.format == "iceberg":
        from backfill.destination.tables.iceberg import check_catalog

        check_catalog(settled)
    check_hourly_layout(settled)
    return settled


def for_range(settings: Settings, first: str, last: str) -> Settings:
    """``settings`` with the granularity the range's dates mean (see
    :func:`range_granularity`)."""
    granularity = range_granularity(first, last, settings)
    if granularity is settings.granularity:
        return settings
    changed = replace(settings, granularity=granularity)
    check_hourly_layout(changed)
    return changed


def range_granularity(first: str, last: str, settings: Settings) -> Granularity:
    """Days or hours, as the dates say: ``YYYY-MM-DDTHH`` and ``YYYYMMDDHH`` mean hours,
    ``YYYY-MM-DD`` and ``YYYYMMDD`` days; relative forms (``-36h``, ``-7d``, ``today``)
    the unit they name, unless the config sets a granularity. An explicit
    ``--granularity hour`` (or an output of hours) takes day forms as all their hours;
    ``day`` refuses an hour.

    Raises :class:`UsageError` for mixed forms or a granularity the dates contradict.
    """
    (first_unit, first_relative), (last_unit, last_relative) = (date_form(first),
                                                                 date_form(last))
    source = settings.sources.get("granularity", "")
    if source.startswith(("flag", "argument", "the output")):
        wanted = settings.granularity
        hour = next((t for t, u in ((first, first_unit), (last, last_unit))
                     if u is Granularity.HOUR), None)
        if wanted is Granularity.DAY and hour is not None:
            if source.startswith("the output"):
                raise UsageError(f"{settings.out} holds daily keys, but {hour!r} is an hour: "
                                 "give days, or another --out for hours")
            raise UsageError(f"--granularity day, but {hour!r} is an hour: give days, or "
                             "leave --granularity out to fetch hours")
        return wanted
    configured = settings.granularity if source else None

    def unit(form: Granularity, relative: bool) -> Granularity:
        return configured if relative and configured is not None else form

    start, end = unit(first_unit, first_relative), unit(last_unit, last_relative)
    if start is not end:
        raise UsageError(f"--from {first} is {_a(start)} and --to {last} is {_a(end)}: give "
                         "both as days or both as hours (or --granularity hour)")
    return start


def _a(granularity: Granularity) -> str:
    return "an hour" if granularity is Granularity.HOUR else "a day"


def expand_range(first: str, last: str, settings: Settings, *, now: datetime | None = None,
                 check_retention: bool = True) -> list[Key]:
    """Parse a range into keys; refuse inverted, oversized and wholly expired ranges."""
    from backfill.engine.policy import beyond_retention

    now = now or system_clock().now()
    start = parse_bound(first, settings.granularity, now=now, end=False)
    end = parse_bound(last, settings.granularity, now=now, end=True)
    if start > end:
        raise UsageError(f"--from {first} is after --to {last}")
    keys = expand(start, end)
    if len(keys) > MAX_KEYS:
        raise UsageError(f"the range holds {len(keys)} keys; split it (at most {MAX_KEYS})")
    if check_retention and all(beyond_retention(k, now, settings.retention_days) for k in keys):
        raise UsageError(f"the whole range is older than the {settings.retention_days}-day "
                         "retention of raw data; set retention_days if your project keeps more")
    return keys


def range_keys(settings: Settings, first: str, last: str, *, check_retention: bool = True,
               now: datetime | None = None) -> tuple[Settings, list[Key]]:
    """The keys from ``first`` to ``last``, and ``settings`` with the granularity the dates
    mean (``2026-11-30T15`` hours, ``2026-11-30`` days)."""
    settings = for_range(settings, first, last)
    return settings, expand_range(first, last, settings, now=now,
                                  check_retention=check_retention)


def optional_range(settings: Settings, first: str | None, last: str | None
                   ) -> tuple[Settings, list[Key] | None]:
    """The keys of a ``--from``/``--to`` filter when both are given; (settings, None) when
    neither is."""
    if (first is None) != (last is None):
        raise UsageError("give both --from and --to, or neither")
    if first is None or last is None:
        return settings, None
    return range_keys(settings, first, last, check_retention=False)


# --- the three jobs -----------------------------------------------------------------------

def fetch(first: str, last: str, *, config: Path | str | None = None, force: bool = False,
          reporter: Reporter | None = None, environ: Mapping[str, str] | None = None,
          project: str | None = None, lineage: bool = True, **options: Any) -> Summary:
    """Fetch every key from ``first`` to ``last`` (inclusive, Beijing time, the forms
    ``--from`` takes); blocks until the run ends. Not from inside a running event loop:
    use :func:`fetch_async` there. ``environ`` replaces ``os.environ`` as the source of
    the ``GIO_*`` credentials; ``project`` picks a ``[[projects]]`` entry of the config
    (its settings, and its credentials under its ``env_prefix``); ``lineage``: see
    :func:`fetch_keys`."""
    return anyio.run(partial(fetch_async, first, last, config=config, force=force,
                             reporter=reporter, environ=environ, project=project,
                             lineage=lineage, **options))


async def fetch_async(first: str, last: str, *, config: Path | str | None = None,
                      force: bool = False, reporter: Reporter | None = None,
                      environ: Mapping[str, str] | None = None, project: str | None = None,
                      lineage: bool = True, **options: Any) -> Summary:
    """:func:`fetch`, for callers that run an event loop (asyncio or trio via anyio)."""
    settings = configure(config, environ=environ, project=project, **options)
    settings, keys = range_keys(await settle_output(settings), first, last)
    return await fetch_keys(settings, keys, force=force, reporter=reporter, lineage=lineage)


@_boundary
async def fetch_keys(settings: Settings, keys: list[Key], *, force: bool = False,
                     reporter: Reporter | None = None, clock: Clock | None = None,
                     api: Any = None, lineage: bool = True) -> Summary:
    """Fetch ``keys`` (this shard's, with ``shard``) into ``settings.out``, as settled
    (:func:`settle_output`); done keys cost nothing unless ``force``. ``api``: another
    export API than GrowingIO's (a test's).

    However it ends, the run reports itself (:mod:`backfill.observe`): its metrics, as
    ``metrics_file`` and ``pushgateway`` say, and OpenLineage events where a transport is
    configured (``lineage=False``: not those, for a caller whose orchestrator emits its
    own, as Airflow's provider does)."""
    from backfill.engine.runner import backfill
    from backfill.observe import Observer

    reporter = reporter or PlainReporter(clock=clock)
    observer = Observer(settings, keys, clock or system_clock(), reporter, lineage=lineage)
    await observer.started()
    summary = Summary()  # filled as the run goes: a stopped run reports what it did
    try:
        await backfill(settings, keys, reporter, force=force, api=api, clock=clock,
                       summary=summary)
    except BaseException as exc:
        await observer.ended(summary, exc, partial(_freshness, settings, clock))
        raise
    await observer.ended(summary, None, partial(_freshness, settings, clock))
    return summary


@_boundary
async def report_idle(settings: Settings, *, reporter: Reporter | None = None,
                      clock: Clock | None = None) -> None:
    """Report a run that has nothing to fetch (``retry`` with nothing to retry) as a run
    of no key, a success with the destination's watermark, without taking the output (a
    run may hold it) and without an event: metrics only."""
    from backfill.observe import Observer

    observer = Observer(settings, [], clock or system_clock(),
                        reporter or PlainReporter(clock=clock), lineage=False)
    await observer.ended(Summary(), None, partial(_freshness, settings, clock))


async def _freshness(settings: Settings, clock: Clock | None) -> list[Freshness]:
    """Each wanted type's freshness, as the destination holds it (see :func:`status`)."""
    return (await status(settings, None, clock=clock, empty_ok=True)).freshness


def plan(settings: Settings, keys: list[Key], *, force: bool = False,
         clock: Clock | None = None) -> dict[str, Any]:
    """What a run of ``keys`` would do, from the state alone: no call, nothing written."""
    from backfill.engine.plan import make_plan
    from backfill.engine.runner import shard_keys

    now = (clock or system_clock()).now()
    keys = shard_keys(settings, keys)
    known = {(u.key, u.data_type): u.status for u in known_units(settings)}
    chosen = make_plan(keys, settings, known, now, force=force)
    calls = len(chosen.tasks)  # one export call per key at the very least
    return {
        "keys": len(keys),
        "first": keys[0].name if keys else None,
        "last": keys[-1].name if keys else None,
        "granularity": keys[0].granularity.value if keys else settings.granularity.value,
        "api": settings.api,
        "types": ",".join(settings.wanted_types),
        "format": settings.format,
        "done": len(chosen.done),
        "to_fetch": len(chosen.tasks),
        "gone": len(chosen.gone),
        "not_due": len(chosen.not_due),
        "max_wait_seconds": settings.max_wait,
        "min_api_calls": calls,
        "min_seconds": calls / settings.rate,
        "rate": settings.rate,
        "shard": str(settings.shard) if settings.shard else None,
        "shards": settings.shard.n if settings.shard else 1,
        "destination": str(settings.out),
        "state": str(settings.state_folder),
    }


def known_units(settings: Settings) -> list[UnitRecord]:
    """The units of ``settings.api`` in the state, none when there is no state (nothing is
    created)."""
    return [u for u in _state_units(settings) if u.api == settings.api]


def _state_units(settings: Settings) -> list[UnitRecord]:
    from backfill.state.store import Store, has_state

    if not has_state(settings.state_folder):
        return []
    store = Store(settings.state_folder)
    try:
        return store.units()
    finally:
        store.close()


def anything_to_retry(settings: Settings) -> bool:
    """Whether the state holds any unit, of any API, that ``retry`` could take; reads the
    state alone (nothing is created)."""
    return any(u.status in RETRYABLE or u.status is Status.GONE
               for u in _state_units(settings))


def nothing_to_retry(settings: Settings) -> str:
    """The one line that says why there is nothing to retry."""
    from backfill.state.store import has_state

    if has_state(settings.state_folder):
        return f"nothing to retry in {settings.out}: no key failed, was interrupted or waits"
    if isinstance(settings.out, Path):
        return f"nothing to retry: no backfill state in {settings.out} yet (run `backfill run`)"
    return (f"nothing to retry: this machine has no state for {settings.out}; on a fresh "
            "runner, `backfill catchup` finds from the bucket where to start")


def retry_keys(settings: Settings, within: list[Key] | None, *, clock: Clock | None = None
               ) -> tuple[Settings, list[Key]]:
    """The keys (and, as ``types``, their data types) that failed, were interrupted or were
    not ready, within ``within``; a ``types`` setting narrows them. Keys marked gone come
    back only if they are within the retention again (``retention_days`` grew); finished
    keys are never touched. No keys: nothing to retry (see :func:`nothing_to_retry`)."""
    from backfill.engine.policy import beyond_retention

    now = (clock or system_clock()).now()
    wanted = {k.name for k in within} if within is not None else None
    names: set[str] = set()
    types: set[str] = set()
    for unit in known_units(settings):
        if wanted is not None and unit.key not in wanted:
            continue
        back = unit.status is Status.GONE and not beyond_retention(
            Key.parse(unit.key), now, settings.retention_days)
        if unit.status in RETRYABLE or back:
            names.add(unit.key)
            types.add(unit.data_type)
    keys = sorted(Key.parse(n) for n in names)
    if settings.api != "v2":
        return settings, keys
    narrowed = set(settings.types or types)
    settings = replace(settings, types=tuple(sorted(t for t in types - {"all"}
                                                    if t in narrowed)))
    return settings, keys if settings.types else []


@dataclass(frozen=True)
class CatchUp:
    """What ``catchup`` fetches: ``keys`` with ``settings`` (the granularity of a
    ``start``), and ``gone``, the keys asked for that are beyond retention."""

    settings: Settings
    keys: list[Key]
    gone: list[Key]


@_boundary
async def catchup_keys(settings: Settings, *, lag: float | None = None,
                       clock: Clock | None = None) -> CatchUp:
    """The keys from where the output stops (or ``start``) to the newest that should be
    ready now (``lag`` after their end, or their documented readiness).

    A ``start`` given as a flag or an argument: from there on, whatever the output holds.
    Else from the earliest key the state knows not complete (or the one after the newest
    complete; on a fresh runner the bucket's markers say), and on an output that holds
    nothing yet from the configured ``start``, else the oldest key GrowingIO will still
    keep when the run may end: its first run is the backfill of the retention window.
    """
    from backfill.engine.policy import beyond_retention, newest_ready

    now = (clock or system_clock()).now()
    given = settings.sources.get("start", "").startswith(("flag", "argument"))
    start = settings.start
    if given and start is not None:
        settings = for_range(settings, start, start)  # a start of 2026-11-30T15: hours
        first: Key | None = parse_bound(start, settings.granularity, now=now, end=False)
    else:
        if not isinstance(settings.out, Path):
            # A fresh runner knows nothing: what the bucket holds within the retention
            # says where to start.
            await sync_cache(settings, _retention_window(settings, now))
        first = None
    last = newest_ready(settings, now, settings.granularity, lag=lag)
    if first is None:
        first = _earliest_incomplete(settings) or _first_start(settings, now)
    if first > last:
        return CatchUp(settings, [], [])
    keys = expand(first, last)
    gone = [k for k in keys if beyond_retention(k, now, settings.retention_days)]
    return CatchUp(settings, [k for k in keys if k not in set(gone)], gone)


def _earliest_incomplete(settings: Settings) -> Key | None:
    width = 8 if settings.granularity is Granularity.DAY else 10
    units = [u for u in known_units(settings) if len(u.key) == width]
    if not units:
        return None
    pending = [u.key for u in units if u.status in RETRYABLE]
    if pending:
        return Key.parse(min(pending))
    newest = Key.parse(max(u.key for u in units))
    return Key(newest.start + settings.granularity.step, settings.granularity)


def _first_start(settings: Settings, now: datetime) -> Key:
    """Where the first catch-up of an output starts: the configured ``start``, or the first
    key of the oldest day GrowingIO will still keep when the run may end (``max_wait`` on),
    so that the edge of the retention does not pass a key between the plan and its call."""
    from backfill.engine.policy import oldest_kept

    if (start := _start(settings, now)) is not None:
        return start
    kept = oldest_kept(now + timedelta(seconds=settings.max_wait), settings.retention_days)
    return key_at(datetime(kept.year, kept.month, kept.day, tzinfo=BEIJING),
                  settings.granularity)


def _retention_window(settings: Settings, now: datetime) -> list[Key]:
    first = key_at(now - timedelta(days=settings.retention_days), settings.granularity)
    return expand(first, key_at(now, settings.granularity))


async def sync_cache(settings: Settings, keys: list[Key] | None) -> None:
    """Bring the local cache of a bucket in line with what the bucket holds."""
    from backfill.destination import open_destination
    from backfill.state.reconcile import reconcile
    from backfill.state.store import Store

    store = await anyio.to_thread.run_sync(Store, settings.state_folder)
    try:
        destination = await anyio.to_thread.run_sync(open_destination, settings)
        await reconcile(store, destination, settings, keys)
    finally:
        await anyio.to_thread.run_sync(store.close)


# --- the questions ----------------------------------------------------------------------

@_boundary
async def status(settings: Settings, within: list[Key] | None, *,
                 clock: Clock | None = None, empty_ok: bool = False) -> StatusReport:
    """What the output holds (no API call, nothing created): the state's units, with what
    the destination's markers show complete counted done (the destination is the truth),
    folded by key, and each type's freshness (from ``within``'s first key, else from
    ``start``, else from the oldest key known). Raises :class:`UsageError` when the output
    holds nothing at all, unless ``empty_ok``."""
    from backfill.destination import open_destination
    from backfill.engine.policy import newest_ready
    from backfill.state.freshness import freshness
    from backfill.state.reconcile import finished
    from backfill.state.status import summarize
    from backfill.state.store import running_pid

    known = await anyio.to_thread.run_sync(known_units, settings)  # SQLite: off the loop
    exists = not isinstance(settings.out, Path) or settings.out.exists()
    destination = await anyio.to_thread.run_sync(open_destination, settings)
    complete = await finished(destination, settings, within) if exists else {}
    if not known and not complete and not empty_ok:
        raise UsageError(f"nothing in {settings.out} yet: no finished unit and no backfill "
                         "state; run `backfill run` first")
    by_unit = {(u.key, u.data_type): u for u in known}
    units = []
    for (key, data_type), (parts, size) in complete.items():
        unit = by_unit.pop((key, data_type), None)
        units.append(UnitRecord(settings.api, key, data_type, Status.DONE,
                                unit.attempts if unit else 0, None, parts, size,
                                unit.updated_at if unit else ""))
    for unit in by_unit.values():  # recorded done, but no marker there: not done any more
        units.append(replace(unit, status=Status.PENDING, last_error="no _SUCCESS in the "
                             "destination") if unit.status is Status.DONE else unit)
    wanted = {k.name for k in within} if within is not None else None
    report = summarize(sorted(units, key=lambda u: (u.key, u.data_type)), str(settings.out),
                       settings.api, wanted,
                       running=running_pid(settings.state_folder) is not None)
    now = (clock or system_clock()).now()
    report.now = now
    held = [(u.key, u.data_type) for u in known]
    # The types asked for, else those the output holds (of those a run would fetch).
    types = settings.types or tuple(
        t for t in settings.wanted_types if any(t == d for _, d in [*held, *complete])
    ) or settings.wanted_types
    report.freshness = freshness(types, settings.granularity, complete, held,
                                 newest_ready(settings, now, settings.granularity),
                                 start=within[0] if within else _start(settings, now),
                                 gone=[(u.key, u.data_type) for u in known
                                       if u.status is Status.GONE])
    return report


def _start(settings: Settings, now: datetime) -> Key | None:
    """The configured ``start``, as a key of the output's granularity."""
    if settings.start is None:
        return None
    return parse_bound(settings.start, settings.granularity, now=now, end=False)


@_boundary
async def verify(settings: Settings, within: list[Key] | None, *,
                 deep: bool = False) -> VerifyReport:
    """Check the finished units (of ``within``) against what their manifests (or their
    table's log) say; damaged ones are withdrawn and marked to be fetched again.
    Raises :class:`UsageError` for a folder with no state."""
    from backfill.destination import open_destination
    from backfill.engine.runner import open_store
    from backfill.state.reconcile import reconcile
    from backfill.state.store import has_state
    from backfill.state.verify import verify as verify_units

    if isinstance(settings.out, Path) and not has_state(settings.state_folder):
        raise UsageError(f"no backfill state in {settings.out}: nothing to verify")
    store = await anyio.to_thread.run_sync(open_store, settings)
    try:
        destination = await anyio.to_thread.run_sync(open_destination, settings)
        if not isinstance(settings.out, Path):
            await reconcile(store, destination, settings, within)
        return await verify_units(store, destination, settings, within, deep=deep)
    finally:
        await anyio.to_thread.run_sync(store.close)


@dataclass
class CheckReport:
    """What :func:`check` checked, and what it did not (and why)."""

    checked: list[str]
    not_checked: list[str]
    facts: dict[str, object]


@_boundary
async def check(settings: Settings, *, clock: Clock | None = None) -> CheckReport:
    """Check the configuration, that the export API answers, and the credentials: a token
    is minted (no export call) unless that would revoke one a running backfill of this
    machine uses, or the token is a console token (``GIO_TOKEN``); then the API is asked a
    question without credentials, which shows it is there. For a bucket, that it can be
    listed. Raises as a run would: :class:`AuthError`, :class:`RemoteError` (unreached),
    :class:`UsageError`."""
    from backfill.destination import open_root
    from backfill.growingio.auth import MintLock

    clock = clock or system_clock()
    creds = settings.credentials.require()
    route = settings.proxies.describe(creds.base_url)
    report = CheckReport(
        ["configuration: the config file, the environment and the flags are valid"], [],
        {"base_url": creds.base_url, "client_id": creds.client_id,
         "project_uid": creds.project_uid, "ai": creds.ai, "route": route})
    if not isinstance(settings.out, Path):
        # The store first: its answer costs nothing, a token may revoke another's.
        destination = await anyio.to_thread.run_sync(open_root, settings)
        await destination.listing(".backfill/")
        report.checked.append(f"storage: {settings.out} can be listed with the storage "
                              "credentials")
        report.facts["bucket"] = "listed"
    holder = MintLock(creds.client_id).holder() if creds.secret else None
    # A check answers within half a minute, whatever the outage budget of a run.
    quick = replace(settings, outage_budget=min(settings.outage_budget, 30.0))
    if creds.secret and holder is None:
        async with open_client(quick, clock) as client:
            await client.tokens.current()
        report.facts["token"] = "issued"
        report.checked.append(f"credentials: {creds.base_url}, reached {route}, issued a "
                              f"token for project UID {creds.project_uid}, project id "
                              f"(GIO_AI) {creds.ai}, client {creds.client_id}")
        return report
    async with open_client(quick, clock) as client:
        answer = await client.reach()
    report.facts["api"] = answer
    report.checked.append(f"export API: {creds.base_url}, reached {route}, answers {answer}")
    if creds.secret:
        report.facts["token"] = "not checked: in use by a running backfill"
        report.not_checked.append(f"GIO_SECRET: {holder} uses a token of client "
                                  f"{creds.client_id}, and minting one to check the secret "
                                  "would revoke it")
    else:
        report.facts["token"] = "not checked: GIO_TOKEN is used as is"
        report.not_checked.append("GIO_TOKEN: only an export call could check it, and "
                                  "check makes none")
    return report


# --- the export API itself ----------------------------------------------------------------

@contextlib.asynccontextmanager
async def open_client(settings: Settings, clock: Clock | None = None
                      ) -> AsyncIterator[GrowingIO]:
    """The export API client of ``settings``' project, on a session of its own, for the
    time of the block (its token's lock released after)."""
    import aiohttp

    from backfill.growingio.api import GrowingIO

    async with aiohttp.ClientSession() as session:
        client = GrowingIO.open(session, settings, clock or system_clock())
        try:
            yield client
        finally:
            client.tokens.release()


@_boundary
async def until_ready(settings: Settings, keys: list[Key], *, deadline: float,
                      asked_at: float | None = None, clock: Clock | None = None) -> str:
    """Wait, with no download, until every key of ``keys`` is ready at GrowingIO (or ends
    otherwise), or ``deadline`` (wall-clock seconds) passes: ``"ready"`` or ``"deadline"``.
    ``asked_at``: when another process asked these keys last (an Airflow worker before it
    deferred). See :mod:`backfill.engine.ready`."""
    from backfill.engine.ready import until_ready as wait

    clock = clock or system_clock()
    async with open_client(settings, clock) as client:
        return await wait(client, settings, keys, deadline=deadline, clock=clock,
                          asked_at=asked_at)
