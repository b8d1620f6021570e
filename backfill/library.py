"""The library entry point: what integrations (an orchestrator, a script, a notebook) call
instead of the command line, with the same guarantees and the same settings::

    import backfill

    summary = backfill.fetch("2026-11-01", "2026-11-07", out="s3://lake/growingio",
                             types=["visit", "page"])
    summary.exit_code, summary.parts, summary.bytes, summary.problems

Options are the config file's keys (see ``config.example.toml``); ``config=`` reads a
file first, and options win over it, as flags do. Credentials come from the environment
(``GIO_*``, and the storage providers' own variables), never from arguments.

Raises :class:`backfill.errors.BackfillError` subclasses, each with ``exit_code``:
:class:`UsageError` (bad input, exit 2) before any call, :class:`AuthError` (exit 3),
:class:`Interrupted` (130). Keys that fail, are gone or are not ready do not raise:
the :class:`Summary` says so (``exit_code`` 1 or 4, ``problems`` per key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from backfill.clock import wall_now
from backfill.config import (
    Settings,
    check_hourly_layout,
    check_token_rule,
    did_you_mean,
    load,
    option_names,
)
from backfill.engine.progress import PlainReporter, Reporter
from backfill.errors import UsageError
from backfill.keys import Granularity, Key, date_form, expand, parse_bound
from backfill.model import Summary

MAX_KEYS = 100_000


def fetch(first: str, last: str, *, config: Path | str | None = None, force: bool = False,
          reporter: Reporter | None = None, environ: Mapping[str, str] | None = None,
          project: str | None = None, **options: Any) -> Summary:
    """Fetch every key from ``first`` to ``last`` (inclusive, Beijing time, the forms
    ``--from`` takes); blocks until the run ends. Not from inside a running event loop:
    use :func:`fetch_async` there. ``environ`` replaces ``os.environ`` as the source of
    the ``GIO_*`` credentials; ``project`` picks a ``[[projects]]`` entry of the config
    (its settings, and its credentials under its ``env_prefix``)."""
    return anyio.run(partial(fetch_async, first, last, config=config, force=force,
                             reporter=reporter, environ=environ, project=project, **options))


async def fetch_async(first: str, last: str, *, config: Path | str | None = None,
                      force: bool = False, reporter: Reporter | None = None,
                      environ: Mapping[str, str] | None = None, project: str | None = None,
                      **options: Any) -> Summary:
    """:func:`fetch`, for callers that run an event loop (asyncio or trio via anyio)."""
    from backfill.engine.runner import backfill

    unknown = sorted(set(options) - set(option_names()))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}"
                         + did_you_mean(unknown[0], option_names(), every=True))
    settings = load(Path(config) if config is not None else None, options,
                    dict(environ) if environ is not None else None, project=project,
                    origin="argument")
    check_token_rule(settings)
    settings = for_range(await settle_output(settings), first, last)
    keys = expand_range(first, last, settings)
    return await backfill(settings, keys, reporter or PlainReporter(), force=force)


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
    ``--granularity hour`` takes day forms as all their hours; ``day`` refuses an hour.

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


def expand_range(first: str, last: str, settings: Settings, *,
                 check_retention: bool = True) -> list[Key]:
    """Parse a range into keys; refuse inverted, oversized and wholly expired ranges."""
    from backfill.engine.policy import beyond_retention

    now = wall_now()
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
