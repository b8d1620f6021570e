"""The commands that fetch: ``run``, ``retry`` and ``catchup``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from backfill.cli.shared import (
    DATE_HELP,
    Api_,
    Config_,
    Downloads_,
    DryRun_,
    Force_,
    Granularity_,
    Json_,
    LogFormat_,
    MaxWait_,
    OptionalFrom_,
    OptionalTo_,
    Out_,
    Output,
    Project_,
    Quiet_,
    Shard_,
    SingleMinter_,
    StateDir_,
    Types_,
    Verify_,
    app,
    error,
    guarded,
    load_settings,
    optional_range,
    range_keys,
    retention_window,
    run_async,
    sync_cache,
)
from backfill.config import Settings
from backfill.keys import Key, parse_bound
from backfill.report import EXIT_CODES, Reporter, Summary, print_summary


@app.command(epilog=EXIT_CODES)
@guarded
def run(
    from_: Annotated[str, typer.Option("--from", help=f"First key, inclusive: {DATE_HELP}")],
    to: Annotated[str, typer.Option("--to", help="Last key, inclusive (same forms).")],
    granularity: Granularity_ = None, api: Api_ = None, types: Types_ = None, out: Out_ = None,
    config: Config_ = None, project: Project_ = None, downloads: Downloads_ = None,
    max_wait: MaxWait_ = None,
    force: Force_ = False, dry_run: DryRun_ = False, quiet: Quiet_ = False, json: Json_ = False,
    log_format: LogFormat_ = "text", verify: Verify_ = None, state_dir: StateDir_ = None,
    shard: Shard_ = None, single_minter: SingleMinter_ = False,
) -> None:
    """Backfill a range of days or hours into the output folder or bucket."""
    settings = load_settings(config, project=project, out=out, granularity=granularity,
                             api=api, types=types,
                             downloads=downloads, max_wait=max_wait, verify=verify,
                             state_dir=state_dir, shard=shard,
                             single_minter=single_minter or None)
    settings, keys = range_keys(from_, to, settings)
    _execute(settings, keys, Output(quiet, json, log_format), force=force, dry_run=dry_run)


@app.command(epilog=EXIT_CODES)
@guarded
def retry(
    from_: OptionalFrom_ = None, to: OptionalTo_ = None,
    granularity: Granularity_ = None, api: Api_ = None, out: Out_ = None,
    config: Config_ = None, project: Project_ = None, downloads: Downloads_ = None,
    max_wait: MaxWait_ = None,
    dry_run: DryRun_ = False, quiet: Quiet_ = False, json: Json_ = False,
    log_format: LogFormat_ = "text", verify: Verify_ = None, state_dir: StateDir_ = None,
    shard: Shard_ = None, single_minter: SingleMinter_ = False,
) -> None:
    """Fetch again only the keys that failed, were interrupted or were not ready."""
    from backfill.runner import retryable

    settings = load_settings(config, project=project, out=out, granularity=granularity, api=api,
                             downloads=downloads, max_wait=max_wait, verify=verify,
                             state_dir=state_dir, shard=shard,
                             single_minter=single_minter or None)
    from backfill.runner import as_the_state_says

    settings = as_the_state_says(settings)
    settings, within = optional_range(from_, to, settings)
    keys, types = retryable(settings, within, datetime.now(UTC))
    if settings.api == "v2":
        settings = replace(settings, types=types)
    _execute(settings, keys, Output(quiet, json, log_format), dry_run=dry_run)


@app.command(epilog=EXIT_CODES)
@guarded
def catchup(
    start: Annotated[str | None, typer.Option(
        help="Fetch from this key on [default: the earliest key not complete].")] = None,
    lag: Annotated[str | None, typer.Option(
        help="Only keys that ended this long ago, e.g. 2h [default: the documented "
        "readiness].")] = None,
    granularity: Granularity_ = None, api: Api_ = None, types: Types_ = None, out: Out_ = None,
    config: Config_ = None, project: Project_ = None, downloads: Downloads_ = None,
    max_wait: MaxWait_ = None,
    dry_run: DryRun_ = False, quiet: Quiet_ = False, json: Json_ = False,
    log_format: LogFormat_ = "text", verify: Verify_ = None, state_dir: StateDir_ = None,
    shard: Shard_ = None, single_minter: SingleMinter_ = False,
) -> None:
    """For cron and CI: fetch everything that should be ready now and is not done yet."""
    from backfill.config import parse_duration
    from backfill.runner import catchup_keys

    settings = load_settings(config, project=project, out=out, granularity=granularity,
                             api=api, types=types,
                             downloads=downloads, max_wait=max_wait, verify=verify,
                             state_dir=state_dir, shard=shard,
                             single_minter=single_minter or None)
    now = datetime.now(UTC)
    if start is not None:
        from backfill.library import for_range

        settings = for_range(settings, start, start)  # a start of 2026-11-30T15: hours
    if start is None and not isinstance(settings.out, Path):
        # A fresh runner knows nothing: what the bucket holds within the retention says
        # where to start.
        run_async(sync_cache, settings, retention_window(settings, now))
    first = parse_bound(start, settings.granularity, now=now, end=False) if start else None
    keys, gone = catchup_keys(settings, first, parse_duration(lag) if lag else None, now)
    if gone:
        typer.echo(f"backfill: warning: {len(gone)} keys from {gone[0]} to {gone[-1]} are "
                   f"beyond the {settings.retention_days}-day retention and will never be "
                   "fetched", err=True)
    _execute(settings, keys, Output(quiet, json, log_format), dry_run=dry_run)


def _execute(settings: Settings, keys: list[Key], output: Output, *, force: bool = False,
             dry_run: bool = False) -> None:
    """Plan or fetch ``keys`` (the runner keeps this shard's, with --shard), report, and
    exit with the documented code."""
    import json as json_module

    if dry_run:
        from backfill.runner import dry_plan

        plan = dry_plan(settings, keys, force=force, now=datetime.now(UTC))
        if output.json:
            typer.echo(json_module.dumps(plan))
        else:
            typer.echo(_describe_plan(plan))
        raise typer.Exit(0)
    summary = run_async(_backfill, settings, keys, output.reporter(), force)
    if output.json:
        print_summary(summary, Console(stderr=True))
        typer.echo(json_module.dumps(summary.to_json()))
    else:
        print_summary(summary)
    if summary.outage:
        error(summary.outage)
    raise typer.Exit(summary.exit_code)


def _describe_plan(plan: dict[str, object]) -> str:
    if not plan["keys"]:
        return "plan: nothing to fetch"
    shard = (f"  shard:                   {plan['shard']}: one key in {plan['shards']} (by "
             f"time), at {plan['rate']:g} calls/s (the budget split {plan['shards']} ways)\n"
             if plan.get("shard") else "")
    return (f"plan: {plan['keys']} keys from {plan['first']} to {plan['last']} "
            f"({plan['granularity']}, {plan['api']}: {plan['types']})\n{shard}"
            f"  already done:            {plan['done']}\n"
            f"  to fetch:                {plan['to_fetch']} (at least {plan['min_api_calls']} "
            f"export calls, {plan['min_seconds']:.0f} s at {plan['rate']:g} calls/s)\n"
            f"  beyond retention:        {plan['gone']}\n"
            f"  not ready by --max-wait: {plan['not_due']}")


async def _backfill(settings: Settings, keys: list[Key], reporter: Reporter,
                    force: bool) -> Summary:
    from backfill.runner import backfill

    return await backfill(settings, keys, reporter, force=force)
