"""The commands that look without fetching: ``status``, ``verify``, ``check`` and ``config
show``, each a few lines over the library (:mod:`backfill.library`)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from backfill import library
from backfill.cli.report import print_calendar, shown_key
from backfill.cli.shared import (
    OptionalFrom_,
    OptionalTo_,
    app,
    configured,
    document,
    guarded,
    output,
    reporting,
    run_async,
    settings,
    settled,
)
from backfill.config import Scope, Settings
from backfill.errors import EXIT_CODES, ExitCode
from backfill.model import human_bytes, human_duration, keys, plural
from backfill.state.status import SEVERITY, StatusReport


@app.command(epilog="""Examples:

\b
  backfill status                                  # everything the folder holds
  backfill status --from -2d --to -1d --json       # those days, for a script
  backfill status --out s3://my-lake/gio           # a bucket, from its markers
  backfill status --max-lag 3h                     # for a probe: exit 1 if stale
""")
@guarded
@reporting
@configured(Scope.STATUS)
def status(from_: OptionalFrom_ = None, to: OptionalTo_ = None) -> None:
    """What is done, failed or waiting (no API call): counts, calendar, problems; with
    --max-lag, whether each type is fresh enough (exit 1 if not).

    What the destination's markers show complete is done, whatever the local state says
    (a few LIST calls for a bucket); nothing is created or changed. A type is complete up
    to the newest key before its first hole (its watermark)."""
    chosen, within = library.optional_range(settled(), from_, to)
    report = run_async(library.status, chosen, within)
    if chosen.max_lag is not None:
        _freshness(report, chosen.max_lag)
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
                      f"{plural(unit.attempts, 'attempt')}{why}", highlight=False)
    if len(report.problems) > shown:
        console.print(f"  … and {len(report.problems) - shown} more (backfill status --json)")


def _freshness(report: StatusReport, allowed: float) -> None:
    """``status --max-lag``: one line per type, exit 1 if any is more than ``allowed``
    behind what should be ready now."""
    assert report.now is not None
    stale = [f for f in report.freshness if f.lag > allowed]
    limit = f"more than the {human_duration(allowed)} allowed"
    if output().json:
        document({**report.to_json(), "max_lag_seconds": allowed,
                  "stale": [f.data_type for f in stale]},
                 ExitCode.FAILED if stale else ExitCode.OK, indent=2)
    else:
        for fresh in report.freshness:
            if fresh.complete_to is None:
                since = f" from {shown_key(fresh.first)}" if fresh.first else ""
                line = f"{fresh.data_type}: nothing complete{since}"
            else:
                line = (f"{fresh.data_type}: complete up to {shown_key(fresh.complete_to)} "
                        f"(Beijing), {human_duration(fresh.behind(report.now) or 0)} behind")
            typer.echo(f"{line}, {limit}" if fresh in stale else f"{line}: fresh")
    raise typer.Exit(ExitCode.FAILED if stale else ExitCode.OK)


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
    report = run_async(library.check, settings())
    if output().json:
        document({"ok": True, **report.facts, "checked": report.checked,
                  "not_checked": report.not_checked})
        return
    typer.echo("\n".join([*(f"ok: {line}" for line in report.checked),
                          *(f"not checked: {line}" for line in report.not_checked)]))


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
        "--deep", help="Read every part and inflate its gzip stream too (a table's files: "
        "count their rows).")] = False,
) -> None:
    """Re-check finished keys against their manifests (a table: against its log); mark
    damaged ones for `run`.

    On disk every part is read; in a bucket its size and ETag are looked up (--deep
    downloads and re-checks it)."""
    chosen, within = library.optional_range(settled(), from_, to)
    report = run_async(partial(library.verify, chosen, within, deep=deep))
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
    from backfill.config import ENV, SECRETS, option_names, written
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
    for field in dataclasses.fields(creds):
        value, name = getattr(creds, field.name), f"growingio.{field.name}"
        if field.name in SECRETS:
            rows.append((name, "*** (set)" if value else "(not set)", chosen.sources.get(
                name, f"environment {ENV[field.name]}" if value else "default")))
        else:
            rows.append((name, value or "(not set)", chosen.sources.get(name, "default")))
    for field in dataclasses.fields(chosen.storage):
        value = getattr(chosen.storage, field.name)
        rows.append((f"storage.{field.name}", "(not set)" if value in ("", None) else str(value),
                     chosen.sources.get(f"storage.{field.name}", "default")))
    for scheme in ("http", "https"):
        proxy = getattr(chosen.proxies, scheme)
        rows.append((f"proxy.{scheme}", redact_proxy(proxy) if proxy else "(none)",
                     "environment" if proxy else "default"))
    return rows
