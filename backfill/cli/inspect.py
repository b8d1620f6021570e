"""The commands that look without fetching: ``status``, ``verify`` and ``check``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from backfill.cli.shared import (
    OptionalFrom_,
    OptionalTo_,
    app,
    configured,
    document,
    guarded,
    optional_range,
    output,
    reporting,
    run_async,
    settings,
    settled,
)
from backfill.config import Scope, Settings
from backfill.errors import EXIT_CODES, ExitCode, UsageError
from backfill.keys import Key
from backfill.model import Status, UnitRecord
from backfill.state.store import has_state, running_pid

if TYPE_CHECKING:
    from backfill.state.verify import VerifyReport



@app.command(epilog="""Examples:

\b
  backfill status                                  # everything the folder holds
  backfill status --from -2d --to -1d --json       # those days, for a script
  backfill status --out s3://my-lake/gio           # a bucket, from its markers
""")
@guarded
@reporting
@configured(Scope.OUTPUT)
def status(from_: OptionalFrom_ = None, to: OptionalTo_ = None) -> None:
    """What is done, failed or waiting (no API call): counts, calendar, problems.

    What the destination's markers show complete is done, whatever the local state says
    (a few LIST calls for a bucket); nothing is created or changed."""

    from backfill.model import human_bytes, keys
    from backfill.state.status import SEVERITY, print_calendar, summarize

    chosen, within = optional_range(from_, to, settled())
    units = run_async(_units, chosen, within)
    wanted = {k.name for k in within} if within is not None else None
    report = summarize(units, str(chosen.out), chosen.api, wanted,
                       running=running_pid(chosen.state_folder) is not None)
    if output().json:
        document(report.to_json(), indent=2)
        return
    console = Console()
    counts = report.counts()
    where = "on disk" if isinstance(chosen.out, Path) else "stored"
    console.print(f"{keys(len(report.keys))} in {chosen.out} ({chosen.api}): "
                  + ", ".join(f"{counts[s]} {report.word(s)}" for s in SEVERITY if counts[s])
                  + f"; {human_bytes(report.bytes)} {where}", highlight=False)
    if report.keys:
        print_calendar(report, console)
    shown = 20
    for unit in report.problems[:shown]:
        why = f": {unit.last_error}" if unit.last_error else ""
        console.print(f"  {unit.key} {unit.data_type}: {report.word(unit.status)} after "
                      f"{unit.attempts} attempt{'' if unit.attempts == 1 else 's'}{why}",
                      highlight=False)
    if len(report.problems) > shown:
        console.print(f"  … and {len(report.problems) - shown} more (backfill status --json)")


async def _units(chosen: Settings, within: list[Key] | None) -> list[UnitRecord]:
    """The state's units, with what the destination's markers show complete counted done
    (the destination is the truth), read-only."""
    import anyio

    from backfill.destination import open_destination
    from backfill.engine.runner import known_units
    from backfill.state.reconcile import finished

    known = await anyio.to_thread.run_sync(known_units, chosen)  # SQLite: off the loop
    exists = not isinstance(chosen.out, Path) or chosen.out.exists()
    destination = await anyio.to_thread.run_sync(open_destination, chosen)
    complete = await finished(destination, chosen, within) if exists else {}
    if not known and not complete:
        raise UsageError(f"nothing in {chosen.out} yet: no finished unit and no backfill "
                         "state; run `backfill run` first")
    by_unit = {(u.key, u.data_type): u for u in known}
    units = []
    for (key, data_type), (parts, size) in complete.items():
        unit = by_unit.pop((key, data_type), None)
        units.append(UnitRecord(chosen.api, key, data_type, Status.DONE,
                                unit.attempts if unit else 0, None, parts, size,
                                unit.updated_at if unit else ""))
    for unit in by_unit.values():  # recorded done, but no marker there: not done any more
        units.append(replace(unit, status=Status.PENDING, last_error="no _SUCCESS in the "
                             "destination") if unit.status is Status.DONE else unit)
    return sorted(units, key=lambda u: (u.key, u.data_type))


@app.command(epilog="""Examples:

\b
  backfill check                          # the config, the credentials, the route
  backfill check --out s3://my-lake/gio   # and that the bucket can be listed
  backfill check --json

With GIO_SECRET, check mints a token, which revokes the previous one: while a backfill on
this machine holds a token of the same client id, it asks for none and says so. What it
did not check, it says it did not.
""")
@guarded
@reporting
@configured(Scope.OUTPUT)
def check() -> None:
    """Check the configuration, that the export API answers, and the credentials (a token
    request, no export call); for a bucket, that it can be listed."""
    chosen = settings()
    creds = chosen.credentials.require()
    route = chosen.proxies.describe(creds.base_url)
    checked = ["configuration: the config file, the environment and the flags are valid"]
    facts: dict[str, object] = {"base_url": creds.base_url, "client_id": creds.client_id,
                                "project_uid": creds.project_uid, "ai": creds.ai,
                                "route": route}
    if not isinstance(chosen.out, Path):
        # The store first: its answer costs nothing, a token may revoke another's.
        run_async(_check_store, chosen)
        checked.append(f"storage: {chosen.out} can be listed with the storage credentials")
        facts["bucket"] = "listed"
    unchecked: list[str] = []
    holder = _token_in_use(creds.client_id) if creds.secret else None
    if creds.secret and holder is None:
        run_async(_check_token, chosen)
        facts["token"] = "issued"
        checked.append(f"credentials: {creds.base_url}, reached {route}, issued a token "
                       f"for project UID {creds.project_uid}, project id (GIO_AI) {creds.ai}, "
                       f"client {creds.client_id}")
    else:
        answer = run_async(_check_reach, chosen)
        facts["api"] = answer
        checked.append(f"export API: {creds.base_url}, reached {route}, answers {answer}")
        if creds.secret:
            facts["token"] = "not checked: in use by a running backfill"
            unchecked.append(f"GIO_SECRET: {holder} uses a token of client {creds.client_id}, "
                             "and minting one to check the secret would revoke it")
        else:
            facts["token"] = "not checked: GIO_TOKEN is used as is"
            unchecked.append("GIO_TOKEN: only an export call could check it, and check "
                             "makes none")
    if output().json:
        document({"ok": True, **facts, "checked": checked, "not_checked": unchecked})
        return
    typer.echo("\n".join([*(f"ok: {line}" for line in checked),
                          *(f"not checked: {line}" for line in unchecked)]))


def _token_in_use(client_id: str) -> str | None:
    from backfill.growingio.auth import MintLock

    holder: str | None = MintLock(client_id).holder()
    return holder


async def _check_store(settings: Settings) -> None:
    import anyio

    from backfill.destination import open_root

    destination = await anyio.to_thread.run_sync(open_root, settings)
    await destination.listing(".backfill/")


async def _check_token(settings: Settings) -> None:
    import aiohttp

    from backfill.engine.runner import service_health
    from backfill.growingio.api import GrowingIO
    from backfill.net.throttle import RateLimiter

    # A check answers within half a minute, whatever the outage budget of a run.
    settings = replace(settings, outage_budget=min(settings.outage_budget, 30.0))
    async with aiohttp.ClientSession() as session:
        client = GrowingIO(session, settings, RateLimiter(settings.rate),
                           service_health(settings))
        await client.tokens.current()


async def _check_reach(settings: Settings) -> str:
    """Ask the export API a question without credentials: any answer the API gives one
    (401, 403) shows it is there and reached. Raises :class:`RemoteError` (exit 1) when
    nothing, or something else (a portal's page, a 5xx), answers."""
    import aiohttp

    from backfill.errors import RemoteError
    from backfill.net.exchange import not_json, redirect_refused
    from backfill.net.proxy import proxy_refusal
    from backfill.net.transport import classify

    creds = settings.credentials
    url = f"{creds.base_url.rstrip('/')}/v2/insights/day/visit/{creds.ai}/20200101.json"
    proxy = settings.proxies.for_url(url)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(settings.connect_timeout, 10),
                                    sock_read=min(settings.read_timeout, 10))
    try:
        async with aiohttp.ClientSession() as session, session.get(
                url, proxy=proxy, timeout=timeout, allow_redirects=False) as resp:
            proxy_refusal(resp.status, proxy)
            if 300 <= resp.status < 400:
                raise redirect_refused("the export API", creds.base_url, resp)
            if resp.status in (401, 403):
                return f"HTTP {resp.status} to a call without a token, as it should"
            if resp.status == 200:
                try:
                    await resp.json(content_type=None)
                except ValueError:
                    raise RemoteError(f"{creds.base_url} is not the export API: "
                                      f"{not_json(resp)}") from None
            raise RemoteError(f"{creds.base_url} answered HTTP {resp.status} to a call without "
                              "a token, where the export API answers 401: check GIO_BASE_URL")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RemoteError(f"cannot reach the export API at {creds.base_url}: "
                          f"{classify(exc, proxy).words}; check GIO_BASE_URL and the "
                          "network") from None


@app.command(epilog=f"""Examples:

\b
  backfill verify                          # every finished unit: sizes and MD5s
  backfill verify --from -3d --to -1d --deep
  backfill verify --out s3://my-lake/gio --json

{EXIT_CODES}""")
@guarded
@reporting
@configured(Scope.OUTPUT)
def verify(
    from_: OptionalFrom_ = None, to: OptionalTo_ = None,
    deep: Annotated[bool, typer.Option(
        "--deep", help="Read every part and inflate its gzip stream too.")] = False,
) -> None:
    """Re-check finished keys against their manifests; mark damaged ones for `run`.

    On disk every part is read; in a bucket its size and ETag are looked up (--deep
    downloads and re-checks it)."""

    chosen, keys = optional_range(from_, to, settled())
    if isinstance(chosen.out, Path) and not has_state(chosen.state_folder):
        raise UsageError(f"no backfill state in {chosen.out}: nothing to verify")
    report = run_async(_verify, chosen, keys, deep)
    code = ExitCode.FAILED if report.damaged or report.unchecked else ExitCode.OK
    if output().json:
        document({"checked": report.checked, "parts": report.parts,
                  "damaged": report.damaged, "unchecked": report.unchecked}, code)
    else:
        for unit, problem in report.damaged.items():
            typer.echo(f"damaged {unit}: {problem}")
        for unit, problem in report.unchecked.items():
            typer.echo(f"not checked {unit}: {problem}")
        verdict = (f"{len(report.damaged)} damaged, marked to be fetched again by `backfill "
                   "run`" if report.damaged else "all intact")
        if report.unchecked:
            verdict += (f"; {len(report.unchecked)} could not be checked (nothing marked: "
                        "run verify again)")
        typer.echo(f"checked {report.checked} finished units ({report.parts} parts): "
                   f"{verdict}")
    raise typer.Exit(code)


async def _verify(settings: Settings, keys: list[Key] | None, deep: bool) -> VerifyReport:
    import anyio

    from backfill.destination import open_destination
    from backfill.engine.runner import open_store
    from backfill.state.reconcile import reconcile
    from backfill.state.verify import verify as verify_keys

    store = await anyio.to_thread.run_sync(open_store, settings)
    try:
        destination = await anyio.to_thread.run_sync(open_destination, settings)
        if not isinstance(settings.out, Path):
            await reconcile(store, destination, settings, keys)
        return await verify_keys(store, destination, settings, keys, deep=deep)
    finally:
        await anyio.to_thread.run_sync(store.close)


config_app = typer.Typer(help="The configuration a command would use, and where each value "
                         "comes from.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(config_app, name="config")


@config_app.command("show", epilog="""Examples:

\b
  backfill config show                         # what `backfill run` would use here
  backfill config show --out s3://lake/gio --granularity hour --json
  backfill config show --project acme          # one [[projects]] entry
""")
@guarded
@reporting
@configured(Scope.FETCH)
def config_show() -> None:
    """Every setting a run would use, with where it came from: a flag, the environment,
    the config file (which one), or the default. Secrets are never shown."""

    from backfill.config import config_file

    chosen = settled()
    rows = _effective(chosen)
    source = config_file(said_config())
    if output().json:
        document({"config_file": str(source) if source else None,
                  "settings": {name: {"value": value, "from": origin}
                               for name, value, origin in rows}}, indent=2)
        return
    typer.echo(f"config file: {source or 'none (defaults, environment and flags)'}")
    width = max(len(name) for name, _, _ in rows)
    for name, value, origin in rows:
        typer.echo(f"  {name:<{width}}  {value:<40}  ({origin})")


def said_config() -> Path | None:
    from backfill.cli.shared import said

    config = said.flags.get("config")
    return config if isinstance(config, Path) else None


def _effective(chosen: Settings) -> list[tuple[str, str, str]]:
    """(setting, value as written in a config file, where it came from), secrets hidden."""
    import dataclasses

    from backfill.clock import OFFSET_VARIABLE, system_clock
    from backfill.config import ENV, option_names, written
    from backfill.net.proxy import redact_proxy

    rows = []
    for name in option_names():
        shown = written(name, getattr(chosen, name))
        if name == "rate" and chosen.shard is not None:
            shown += f" (the budget split {chosen.shard.n} ways)"
        rows.append((name, shown, chosen.sources.get(name, "default")))
    rows.append(("state_folder", str(chosen.state_folder), "from out and state_dir"))
    if shift := system_clock().offset:
        rows.append(("clock", f"shifted by {shift:+.0f} s (a test setting)",
                     f"environment {OFFSET_VARIABLE}"))
    creds = chosen.credentials
    for name in ("base_url", "client_id", "project_uid", "ai"):
        rows.append((f"growingio.{name}", getattr(creds, name) or "(not set)",
                     chosen.sources.get(f"growingio.{name}", "default")))
    for name in ("secret", "token"):
        given = bool(getattr(creds, name))
        rows.append((f"growingio.{name}", "*** (set)" if given else "(not set)",
                     chosen.sources.get(f"growingio.{name}", f"environment {ENV[name]}"
                                        if given else "default")))
    for field in dataclasses.fields(chosen.storage):
        value = getattr(chosen.storage, field.name)
        rows.append((f"storage.{field.name}", "(not set)" if value in ("", None) else str(value),
                     chosen.sources.get(f"storage.{field.name}", "default")))
    for scheme in ("http", "https"):
        proxy = getattr(chosen.proxies, scheme)
        rows.append((f"proxy.{scheme}", redact_proxy(proxy) if proxy else "(none)",
                     "environment" if proxy else "default"))
    return rows
