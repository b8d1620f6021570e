"""The commands that look without fetching: ``status``, ``verify`` and ``check``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from backfill.cli.shared import (
    Api_,
    Config_,
    Granularity_,
    Json_,
    OptionalFrom_,
    OptionalTo_,
    Out_,
    Project_,
    StateDir_,
    app,
    guarded,
    load_settings,
    optional_range,
    run_async,
    sync_cache,
)
from backfill.config import Settings
from backfill.errors import UsageError
from backfill.keys import Key
from backfill.report import EXIT_CODES, EXIT_FAILED
from backfill.store import UnitRecord, has_state

if TYPE_CHECKING:
    from backfill.verify import VerifyReport

@app.command()
@guarded
def status(
    from_: OptionalFrom_ = None, to: OptionalTo_ = None,
    granularity: Granularity_ = None, api: Api_ = None, out: Out_ = None,
    config: Config_ = None, project: Project_ = None, json: Json_ = False,
    state_dir: StateDir_ = None,
) -> None:
    """What is done, failed or waiting (no API call): counts, calendar, problems.

    For a bucket, what it holds is read from its markers first (a few LIST calls)."""
    import json as json_module

    from backfill.report import human_bytes
    from backfill.status import SEVERITY, print_calendar, summarize

    settings = load_settings(config, project=project, out=out, granularity=granularity, api=api,
                             state_dir=state_dir)
    from backfill.runner import as_the_state_says

    settings = as_the_state_says(settings)
    settings, within = optional_range(from_, to, settings)
    units = run_async(_units, settings, within)
    wanted = {k.name for k in within} if within is not None else None
    report = summarize(units, str(settings.out), settings.api, wanted)
    if json:
        typer.echo(json_module.dumps(report.to_json(), indent=2))
        return
    console = Console()
    counts = report.counts()
    where = "on disk" if isinstance(settings.out, Path) else "stored"
    console.print(f"{len(report.keys)} keys in {settings.out} ({settings.api}): "
                  + ", ".join(f"{counts[s]} {s.value.replace('_', ' ')}" for s in SEVERITY
                            if counts[s])
                  + f"; {human_bytes(report.bytes)} {where}", highlight=False)
    if report.keys:
        print_calendar(report, console)
    shown = 20
    for unit in report.problems[:shown]:
        console.print(f"  {unit.key} {unit.data_type}: {unit.status.value} after "
                      f"{unit.attempts} attempt(s): {unit.last_error or ''}", highlight=False)
    if len(report.problems) > shown:
        console.print(f"  … and {len(report.problems) - shown} more (backfill status --json)")


async def _units(settings: Settings, within: list[Key] | None) -> list[UnitRecord]:
    import anyio

    from backfill.runner import known_units

    if not isinstance(settings.out, Path):
        await sync_cache(settings, within)
    elif not has_state(settings.state_folder):
        raise UsageError(f"no backfill state in {settings.out}: run `backfill run` first")
    return await anyio.to_thread.run_sync(known_units, settings)  # SQLite: off the loop


@app.command()
@guarded
def check(config: Config_ = None, project: Project_ = None, out: Out_ = None) -> None:
    """Check the configuration and the credentials (a token request, no export call), and
    for a bucket that it can be listed.

    A new token revokes the previous one: do not run it while a backfill is running.
    """
    settings = load_settings(config, project=project, out=out)
    creds = settings.credentials.require()
    if not isinstance(settings.out, Path):
        # The store first: its answer costs nothing, a token may revoke another's.
        run_async(_check_store, settings)
        typer.echo(f"{settings.out} can be listed with the storage credentials")
    route = f"{creds.base_url} is reached {settings.proxies.describe(creds.base_url)}"
    if not creds.secret:
        typer.echo(f"configuration ok; GIO_TOKEN is used as is (it can only be checked by an "
                   f"export call); {route}")
        return
    run_async(_check_token, settings)
    typer.echo(f"configuration ok; {creds.base_url} issued a token for project {creds.ai} "
               f"(client {creds.client_id}); {route}")


async def _check_store(settings: Settings) -> None:
    from backfill.destination import open_destination

    await open_destination(settings).listing(".backfill/")


async def _check_token(settings: Settings) -> None:
    import aiohttp

    from backfill.api import GrowingIO
    from backfill.runner import service_health
    from backfill.throttle import RateLimiter

    # A check answers within half a minute, whatever the outage budget of a run.
    settings = replace(settings, outage_budget=min(settings.outage_budget, 30.0))
    async with aiohttp.ClientSession() as session:
        client = GrowingIO(session, settings, RateLimiter(settings.rate),
                           service_health(settings))
        await client.tokens.current()


@app.command(epilog=EXIT_CODES)
@guarded
def verify(
    from_: OptionalFrom_ = None, to: OptionalTo_ = None,
    granularity: Granularity_ = None, api: Api_ = None, out: Out_ = None,
    config: Config_ = None, project: Project_ = None,
    deep: Annotated[bool, typer.Option(
        "--deep", help="Read every part and inflate its gzip stream too.")] = False,
    state_dir: StateDir_ = None,
) -> None:
    """Re-check finished keys against their manifests; mark damaged ones for `run`.

    On disk every part is read; in a bucket its size and ETag are looked up (--deep
    downloads and re-checks it)."""
    settings = load_settings(config, project=project, out=out, granularity=granularity, api=api,
                             state_dir=state_dir)
    from backfill.runner import as_the_state_says

    settings = as_the_state_says(settings)
    settings, keys = optional_range(from_, to, settings)
    if isinstance(settings.out, Path) and not has_state(settings.state_folder):
        raise UsageError(f"no backfill state in {settings.out}: nothing to verify")
    report = run_async(_verify, settings, keys, deep)
    for unit, problem in report.damaged.items():
        typer.echo(f"damaged {unit}: {problem}")
    verdict = (f"{len(report.damaged)} damaged, marked to be fetched again by `backfill run`"
               if report.damaged else "all intact")
    typer.echo(f"checked {report.checked} finished units ({report.parts} parts): {verdict}")
    raise typer.Exit(EXIT_FAILED if report.damaged else 0)


async def _verify(settings: Settings, keys: list[Key] | None, deep: bool) -> VerifyReport:
    import anyio

    from backfill.destination import open_destination
    from backfill.reconcile import reconcile
    from backfill.runner import open_store
    from backfill.verify import verify as verify_keys

    store = await anyio.to_thread.run_sync(open_store, settings)
    try:
        destination = open_destination(settings)
        if not isinstance(settings.out, Path):
            await reconcile(store, destination, settings, keys)
        return await verify_keys(store, destination, settings, keys, deep=deep)
    finally:
        await anyio.to_thread.run_sync(store.close)
