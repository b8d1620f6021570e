"""The command line: a thin typer layer over the library.

It catches only :class:`BackfillError`, prints its one-line message on stderr and
exits with the error's documented code; anything else reaching a user is a bug.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console

from backfill import __version__
from backfill.config import Settings
from backfill.errors import BackfillError, Interrupted, UsageError
from backfill.keys import BEIJING, Granularity, Key, expand, key_at, parse_bound
from backfill.report import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    Reporter,
    Summary,
    make_reporter,
    print_summary,
)
from backfill.store import UnitRecord, has_state

if TYPE_CHECKING:
    from backfill.verify import VerifyReport

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="backfill",
    help="Pull GrowingIO raw event exports for any range of days or hours onto disk: "
    "fast, resumable, verified.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can hold secrets
    # Plain help, as git and pip print it: rich's help panels cost 0.1 s of imports, a
    # third of `backfill --help`.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"backfill {__version__}")
        raise typer.Exit()


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`BackfillError` into one line on stderr and its documented exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except BackfillError as exc:
            typer.echo(f"backfill: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # a signal before or after the run's own handling
            typer.echo(f"backfill: error: {Interrupted(str(exc) or 'SIGINT')}", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return run


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Pull GrowingIO raw event exports onto disk."""


def _parse_moment(text: str) -> datetime:
    """ISO 8601 date-time; without an offset it is Beijing time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"invalid --now {text!r}: use ISO 8601, e.g. 2026-11-20T10:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=BEIJING)


def _parse_faults(specs: list[str]) -> dict[str, float]:
    from backfill.emulator.config import FAULT_KINDS

    rates: dict[str, float] = {}
    for spec in specs:
        kind, _, rate = spec.partition("=")
        if kind not in FAULT_KINDS:
            raise UsageError(f"unknown fault {kind!r}: use one of {', '.join(FAULT_KINDS)}")
        try:
            value = float(rate)
        except ValueError:
            raise UsageError(f"fault {spec!r}: the rate must be a number in 0..1") from None
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"fault {spec!r}: the rate must be a number in 0..1")
        rates[kind] = value
    return rates


DATE_HELP = ("YYYY-MM-DD, YYYYMMDD, YYYY-MM-DDTHH, YYYYMMDDHH, today, yesterday, -7d, -36h "
             "(Beijing time).")


# Options shared by the commands that fetch (run, retry, catchup).
Granularity_ = Annotated[str | None, typer.Option("--granularity",
                                                 help="day or hour [default: day].")]
Api_ = Annotated[str | None, typer.Option("--api", help="v1 or v2 [default: v2].")]
Types_ = Annotated[str | None, typer.Option(
    "--types", help="v2 data types, comma-separated [default: all].")]
Out_ = Annotated[str | None, typer.Option(
    "--out", help="Output folder (or file:// URL), or an object store: s3://BUCKET/PREFIX, "
    "gs://…, az://… [default: ./data].")]
Project_ = Annotated[str | None, typer.Option(
    "--project", help="Use the [[projects]] entry of this name in the config: its settings, "
    "and its credentials from <env_prefix>CLIENT_ID and the like.")]
Shard_ = Annotated[str | None, typer.Option(
    "--shard", help="K/N: fetch only shard K of N (every N-th key in time), at rate/N; for "
    "N machines or jobs on one destination.")]
SingleMinter_ = Annotated[bool, typer.Option(
    "--single-minter", help="With --shard and GIO_SECRET: this is the only process that "
    "mints tokens (else GIO_TOKEN is required).")]
StateDir_ = Annotated[str | None, typer.Option(
    "--state-dir", help="Folder of the local state, a cache of what is done [default: "
    "OUT/.backfill; for a bucket, ~/.local/state/backfill/<its URL>].")]
Config_ = Annotated[Path | None, typer.Option(
    "--config", help="TOML config file [default: ./backfill.toml if present].")]
Downloads_ = Annotated[int | None, typer.Option(
    "--downloads", help="Keys and parts downloading at once [default: 8].")]
MaxWait_ = Annotated[str | None, typer.Option(
    "--max-wait", help="How long to wait for keys not ready yet, e.g. 30m [default: 30m].")]
Force_ = Annotated[bool, typer.Option("--force", help="Fetch keys again even if done.")]
Verify_ = Annotated[str | None, typer.Option(
    "--verify", help="auto: inflate a part only when no MD5 proves its bytes; full: inflate "
    "every part [default: auto].")]
DryRun_ = Annotated[bool, typer.Option(
    "--dry-run", help="Print the plan and make no API call.")]
Quiet_ = Annotated[bool, typer.Option("--quiet", help="Plain log lines instead of bars.")]
Json_ = Annotated[bool, typer.Option(
    "--json", help="One JSON report on stdout at the end; human output goes to stderr.")]
OptionalFrom_ = Annotated[str | None, typer.Option("--from", help="Only keys from here.")]
OptionalTo_ = Annotated[str | None, typer.Option("--to", help="Only keys up to here.")]
LogFormat_ = Annotated[str, typer.Option(
    "--log-format", help="text or json (one JSON object per log line).")]


@dataclass(frozen=True)
class Output:
    """How a fetching command talks: bars or lines, text or JSON."""

    quiet: bool = False
    json: bool = False
    log_format: str = "text"

    def reporter(self) -> Reporter:
        if self.log_format not in ("text", "json"):
            raise UsageError(f"--log-format must be text or json, got {self.log_format!r}")
        return make_reporter(self.quiet or self.json, json_lines=self.log_format == "json")


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
    keys = expand_range(from_, to, settings)
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
    within = _optional_range(from_, to, settings)
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
    if start is None and not isinstance(settings.out, Path):
        # A fresh runner knows nothing: what the bucket holds within the retention says
        # where to start.
        _run_async(_sync, settings, _retention_window(settings, now))
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
    summary = _run_async(_backfill, settings, keys, output.reporter(), force)
    if output.json:
        print_summary(summary, Console(stderr=True))
        typer.echo(json_module.dumps(summary.to_json()))
    else:
        print_summary(summary)
    if summary.outage:
        typer.echo(f"backfill: error: {summary.outage}", err=True)
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


def _optional_range(first: str | None, last: str | None, settings: Settings) -> list[Key] | None:
    if (first is None) != (last is None):
        raise UsageError("give both --from and --to, or neither")
    if first is None or last is None:
        return None
    return expand_range(first, last, settings, check_retention=False)


def load_settings(config: Path | None, *, project: str | None = None,
                  **flags: object) -> Settings:
    from backfill.config import check_token_rule, load

    settings = load(config, flags, project=project)
    check_token_rule(settings)  # before anything reads the state or the network
    return settings


def expand_range(first: str, last: str, settings: Settings, *,
                 check_retention: bool = True) -> list[Key]:
    from backfill import library

    return library.expand_range(first, last, settings, check_retention=check_retention)


async def _backfill(settings: Settings, keys: list[Key], reporter: Reporter,
                    force: bool) -> Summary:
    from backfill.runner import backfill

    return await backfill(settings, keys, reporter, force=force)


def _run_async(function: Callable[..., Awaitable[R]], *args: object) -> R:
    import anyio

    return anyio.run(lambda: function(*args))


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
    from backfill.status import print_calendar, summarize

    settings = load_settings(config, project=project, out=out, granularity=granularity, api=api,
                             state_dir=state_dir)
    within = _optional_range(from_, to, settings)
    units = _run_async(_units, settings, within)
    wanted = {k.name for k in within} if within is not None else None
    report = summarize(units, str(settings.out), settings.api, wanted)
    if json:
        typer.echo(json_module.dumps(report.to_json(), indent=2))
        return
    console = Console()
    counts = report.counts()
    where = "on disk" if isinstance(settings.out, Path) else "stored"
    console.print(f"{len(report.keys)} keys in {settings.out} ({settings.api}): "
                  + ", ".join(f"{n} {s.value.replace('_', ' ')}" for s, n in counts.items())
                  + f"; {human_bytes(report.bytes)} {where}", highlight=False)
    if report.keys:
        print_calendar(report, console)
    shown = 20
    for unit in report.problems[:shown]:
        console.print(f"  {unit.key} {unit.data_type}: {unit.status.value} after "
                      f"{unit.attempts} attempt(s): {unit.last_error or ''}", highlight=False)
    if len(report.problems) > shown:
        console.print(f"  … and {len(report.problems) - shown} more (backfill status --json)")


def _retention_window(settings: Settings, now: datetime) -> list[Key]:
    first = key_at(now - timedelta(days=settings.retention_days), settings.granularity)
    return expand(first, key_at(now, settings.granularity))


async def _sync(settings: Settings, keys: list[Key] | None) -> None:
    """Bring the local cache of a bucket in line with what the bucket holds."""
    import anyio

    from backfill.destination import open_destination
    from backfill.reconcile import reconcile
    from backfill.store import Store

    store = await anyio.to_thread.run_sync(Store, settings.state_folder)
    try:
        await reconcile(store, open_destination(settings), settings, keys)
    finally:
        await anyio.to_thread.run_sync(store.close)


async def _units(settings: Settings, within: list[Key] | None) -> list[UnitRecord]:
    import anyio

    from backfill.runner import known_units

    if not isinstance(settings.out, Path):
        await _sync(settings, within)
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
        _run_async(_check_store, settings)
        typer.echo(f"{settings.out} can be listed with the storage credentials")
    route = f"{creds.base_url} is reached {settings.proxies.describe(creds.base_url)}"
    if not creds.secret:
        typer.echo(f"configuration ok; GIO_TOKEN is used as is (it can only be checked by an "
                   f"export call); {route}")
        return
    _run_async(_check_token, settings)
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
    keys = _optional_range(from_, to, settings)
    if isinstance(settings.out, Path) and not has_state(settings.state_folder):
        raise UsageError(f"no backfill state in {settings.out}: nothing to verify")
    report = _run_async(_verify, settings, keys, deep)
    for unit, problem in report.damaged.items():
        typer.echo(f"damaged {unit}: {problem}")
    verdict = (f"{len(report.damaged)} damaged, marked to be fetched again by `backfill run`"
               if report.damaged else "all intact")
    typer.echo(f"checked {report.checked} finished units ({report.parts} parts): {verdict}")
    raise typer.Exit(EXIT_FAILED if report.damaged else 0)


@app.command()
@guarded
def demo(
    out_: Annotated[str, typer.Option(
        "--out", help="Output folder, or s3://BUCKET/PREFIX (gs://, az://).")] = "backfill-demo",
    quiet: Annotated[bool, typer.Option(help="Plain log lines instead of bars.")] = False,
) -> None:
    """Back up a week of data from the bundled emulator: the whole flow, no account needed."""
    from backfill.config import parse_out
    from backfill.demo import DEMO_TYPES, run_demo

    try:
        out = parse_out(out_)
    except UsageError as exc:
        raise UsageError(f"--out {out_}: {exc}") from None

    typer.echo(f"Starting the bundled GrowingIO emulator and backing up a week of "
               f"{', '.join(DEMO_TYPES)} into {out}/ ...", err=True)
    summary, stats = _run_async(run_demo, out, make_reporter(quiet))
    print_summary(summary)
    faults = sum(stats["faults"].values())
    typer.echo(
        f"\nThe emulator saw {stats['export_calls']} export calls, "
        f"{stats['rate_limited']} over the 2 calls/s limit, {stats['downloads_trap']} downloads "
        f"of unfinished parts, and injected {faults} faults that the run recovered from.")
    typer.echo(_demo_next_steps(out) if isinstance(out, Path) else f"""
Try next:
  backfill demo --out {out}     # again: everything is done, so no API call at all
  backfill status --out {out}   # what the bucket holds, from its markers""")
    raise typer.Exit(summary.exit_code)


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


def _demo_next_steps(out: Path) -> str:
    query = (f"SELECT dt, count(*) AS visits FROM read_csv('{out}/visit/*/*.csv.gz', "
             "hive_partitioning = true, escape = '\\') GROUP BY dt ORDER BY dt")
    try:
        import duckdb  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        duckdb_part = ("  # read it with DuckDB: pip install duckdb, then in python3:\n"
                       f'  #   import duckdb; duckdb.sql(r"{query}").show()')
    else:
        duckdb_part = f"  # DuckDB reads it as is:\n{duckdb.sql(query)}"
    return f"""
Try next:
  backfill demo --out {out}     # again: everything is done, so no API call at all
  ls {out}/visit/               # Hive layout: <type>/dt=YYYY-MM-DD/part-NNNNN.csv.gz
  head -c 600 {out}/visit/dt=*/_manifest.json | head -20
{duckdb_part}
  backfill emulator             # serve the emulator, then `backfill run` against it
                                # with config.example.toml"""


@app.command()
@guarded
def emulator(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8931,
    data_dir: Annotated[Path | None, typer.Option(
        help="Folder for generated parts [default: ~/.cache/backfill/emulator-data].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data and of the faults.")] = 0,
    now: Annotated[str | None, typer.Option(
        help="Start the emulated clock here (ISO 8601; Beijing time without an offset).")
    ] = None,
    speed: Annotated[float, typer.Option(
        help="Emulated seconds per real second (0 freezes the clock).")] = 1.0,
    bytes_per_hour: Annotated[int, typer.Option(
        help="Average gzip bytes per data type and hour.")] = 48 * 1024,
    part_size: Annotated[int, typer.Option(help="Largest part in bytes.")] = 64 * 1024 * 1024,
    job_seconds: Annotated[float, typer.Option(
        help="Emulated seconds an export job stays RUNNING.")] = 120.0,
    retention_days: Annotated[int, typer.Option(help="Days of data kept.")] = 15,
    rate_limit: Annotated[int, typer.Option(help="Export calls allowed per second.")] = 2,
    md5_header: Annotated[bool, typer.Option(
        help="Send x-amz-meta-md5-hash on downloads.")] = True,
    content_md5: Annotated[bool, typer.Option(
        help="Send Content-MD5 on downloads.")] = False,
    etag_md5: Annotated[bool, typer.Option(
        help="Make the ETag the object's MD5 (else a multipart-style ETag).")] = True,
    trap_links: Annotated[bool, typer.Option(
        help="Put links to unfinished parts in RUNNING answers.")] = True,
    fault: Annotated[list[str] | None, typer.Option(
        help="KIND=RATE, repeatable. Kinds: api_5xx, revoke_token, job_error, "
        "slow_first_byte, reset, truncate, corrupt, stall, wrong_object.")] = None,
    slow_seconds: Annotated[float, typer.Option(help="Delay of slow_first_byte.")] = 2.0,
    stall_seconds: Annotated[float, typer.Option(help="Pause of a stalled body.")] = 30.0,
    fault_limit: Annotated[int, typer.Option(
        help="Inject each fault at most this often (0: no limit).")] = 0,
) -> None:
    """Serve the bundled GrowingIO export API emulator (for the demo, tests, trying things)."""
    import anyio

    from backfill.emulator import EmulatorConfig, Faults

    if speed < 0:
        raise UsageError("--speed cannot be negative")
    faults = Faults(seed=seed, slow_seconds=slow_seconds, stall_seconds=stall_seconds,
                    limit=fault_limit)
    faults.update(**_parse_faults(fault or []))
    config = EmulatorConfig(
        seed=seed, data_dir=data_dir, now=_parse_moment(now) if now else None, speed=speed,
        bytes_per_hour=bytes_per_hour, part_size=part_size, job_seconds=job_seconds,
        retention_days=retention_days, rate_limit=rate_limit, md5_header=md5_header,
        content_md5=content_md5, etag_md5=etag_md5,
        trap_links=trap_links, faults=faults,
    )
    try:
        anyio.run(_serve_forever, config, host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def _serve_forever(config: object, host: str, port: int) -> None:
    import anyio

    from backfill.emulator import EmulatorConfig, serve

    assert isinstance(config, EmulatorConfig)
    async with serve(config, host, port) as running:
        typer.echo(_emulator_banner(running.url, config, running.state.clock.now()))
        await anyio.sleep_forever()


def _emulator_banner(url: str, config: object, now: datetime) -> str:
    from backfill.emulator import EmulatorConfig

    assert isinstance(config, EmulatorConfig)
    c = config.credentials
    ready = key_at(now - timedelta(hours=3), Granularity.HOUR)
    return f"""\
GrowingIO export API emulator on {url}
clock {now.astimezone(BEIJING):%Y-%m-%d %H:%M} Beijing, speed {config.speed:g}x; \
jobs run {config.job_seconds:g}s; data in {config.data_dir or "the user cache"}

Demo credentials (not secret) -- paste to point backfill at it:
  export GIO_BASE_URL={url}
  export GIO_CLIENT_ID={c.client_id}
  export GIO_SECRET={c.secret}
  export GIO_PROJECT_UID={c.project_uid}
  export GIO_AI={c.ai}

Walk the API by hand (needs curl, openssl, python3):
  TM=$(($(date +%s) * 1000))
  SIG=$(printf 'POST\\n/auth/token\\nproject=%s&ai=%s&tm=%s' "$GIO_PROJECT_UID" "$GIO_AI" "$TM" \\
        | openssl dgst -sha256 -hmac "$GIO_SECRET" | sed 's/^.* //')
  TOKEN=$(curl -s -X POST "$GIO_BASE_URL/auth/token" -H "X-Client-Id: $GIO_CLIENT_ID" \\
        --data-raw "project=$GIO_PROJECT_UID&ai=$GIO_AI&tm=$TM&auth=$SIG" \\
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])')
  # ask twice: RUNNING first, FINISHED once the job ran ({config.job_seconds:g} emulated seconds)
  curl -s "$GIO_BASE_URL/v2/insights/hour/visit/$GIO_AI/{ready.export_date}.json?expire=1" \\
        -H "X-Client-Id: $GIO_CLIENT_ID" -H "Authorization: Token $TOKEN"
  curl -s -o part.csv.gz -D - "<a link from the FINISHED answer>"   # then zcat part.csv.gz
  # after the expire minutes, the same link answers 403 "Request has expired"
  curl -s "$GIO_BASE_URL/_emulator/stats"
Ctrl-C stops it."""


def main() -> None:
    """Console entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    app()


def _terminate(signum: int, frame: object) -> None:
    # Until a run installs its own handling, SIGTERM stops like Ctrl-C: cleanly, exit 130.
    raise KeyboardInterrupt("SIGTERM")
