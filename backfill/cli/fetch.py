"""The commands that fetch: ``run``, ``retry`` and ``catchup``, each a few lines over the
library (:mod:`backfill.library`)."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer
from rich.console import Console

from backfill import library
from backfill.cli.report import print_summary
from backfill.cli.shared import (
    DATE_HELP,
    DryRun_,
    Force_,
    OptionalFrom_,
    OptionalTo_,
    app,
    configured,
    document,
    error,
    guarded,
    output,
    reporting,
    run_async,
    settings,
    settled,
    warning,
)
from backfill.config import Scope, Settings, format_duration, parse_duration
from backfill.errors import EXIT_CODES
from backfill.keys import Key
from backfill.model import keys as count_keys


@app.command(epilog=f"""Examples:

\b
  backfill run --from 2026-09-01 --to 2026-11-27              # a quarter of days
  backfill run --from -36h --to -2h --types visit,page       # hours (the dates say so)
  backfill run --from -7d --to -1d --out s3://my-lake/gio --dry-run

{EXIT_CODES}""")
@guarded
@reporting
@configured(Scope.FETCH)
def run(
    from_: Annotated[str, typer.Option("--from", help=f"First key, inclusive: {DATE_HELP}")],
    to: Annotated[str, typer.Option("--to", help="Last key, inclusive (same forms).")],
    force: Force_ = False, dry_run: DryRun_ = False,
) -> None:
    """Backfill a range of days or hours into the output folder or bucket."""
    chosen, keys = library.range_keys(settled(), from_, to)
    _execute(chosen, keys, force=force, dry_run=dry_run)


@app.command(epilog=f"""Examples:

\b
  backfill retry                         # every key that failed or was not ready
  backfill retry --from -3d --to -1d     # only those of these days
  backfill retry --dry-run --json        # what it would fetch, for a script

{EXIT_CODES}""")
@guarded
@reporting
@configured(Scope.FETCH)
def retry(from_: OptionalFrom_ = None, to: OptionalTo_ = None,
          dry_run: DryRun_ = False) -> None:
    """Fetch again only the keys that failed, were interrupted or were not ready."""
    # Nothing to retry: one line, no call, not even to read the output; unless the run is
    # to report its metrics, which it does as a run of no key (a success, the watermark).
    given = settings()
    if not given.reports_metrics and not library.anything_to_retry(given):
        _nothing_to_retry(given)
    chosen, within = library.optional_range(settled(), from_, to)
    chosen, keys = library.retry_keys(chosen, within)
    if not keys:
        if chosen.reports_metrics and not dry_run:
            run_async(partial(library.report_idle, chosen, reporter=output().reporter(
                chosen.heartbeat)))
        _nothing_to_retry(chosen)
    _execute(chosen, keys, dry_run=dry_run)


def _nothing_to_retry(chosen: Settings) -> None:
    """One line, exit 0, no call and nothing created."""
    line = library.nothing_to_retry(chosen)
    if output().json:
        document({"keys": 0, "to_fetch": 0, "message": line})
    else:
        typer.echo(line)
    raise typer.Exit(0)


@app.command(epilog=f"""Examples:

\b
  backfill catchup --granularity hour --out s3://my-lake/gio --max-wait 20m --json
  backfill catchup --start 2026-11-20 --lag 3h --quiet      # from cron

Exit 4 (some keys not ready yet) is not a failure: the next run takes them.

{EXIT_CODES}""")
@guarded
@reporting
@configured(Scope.FETCH)
def catchup(
    lag: Annotated[str | None, typer.Option(
        help="Only keys that ended this long ago, e.g. 2h [default: the documented "
        "readiness].")] = None,
    dry_run: DryRun_ = False,
) -> None:
    """For cron and CI: fetch everything that should be ready now and is not done yet."""
    plan = run_async(partial(library.catchup_keys, settled(),
                             lag=parse_duration(lag) if lag else None))
    if gone := plan.gone:
        what = (f"key {gone[0]} is" if len(gone) == 1
                else f"{len(gone)} keys from {gone[0]} to {gone[-1]} are")
        warning(f"{what} beyond the {plan.settings.retention_days}-day retention and will "
                "never be fetched")
    _execute(plan.settings, plan.keys, dry_run=dry_run)


def _execute(chosen: Settings, keys: list[Key], *, force: bool = False,
             dry_run: bool = False) -> None:
    """Plan or fetch ``keys`` (the runner keeps this shard's, with --shard), report, and
    exit with the documented code."""

    out = output()
    if dry_run:
        plan = library.plan(chosen, keys, force=force)
        if out.json:
            document(plan)
        else:
            typer.echo(_describe_plan(plan))
        raise typer.Exit(0)
    summary = run_async(partial(library.fetch_keys, chosen, keys, force=force,
                                reporter=out.reporter(chosen.heartbeat)))
    report = {**summary.to_json(), "destination": str(chosen.out),
              "state": str(chosen.state_folder)}
    if out.log_format == "json":
        out.event("summary", **report)  # stderr stays JSON lines, the summary too
    else:
        print_summary(summary, Console(stderr=True) if out.json else None,
                      plain=out.quiet or out.level in ("error", "warning"),
                      where=(str(chosen.out), str(chosen.state_folder)))
    if out.json:
        document(report, summary.exit_code)
    if summary.outage:
        error(summary.outage)
    raise typer.Exit(summary.exit_code)


def _describe_plan(plan: dict[str, object]) -> str:
    if not plan["keys"]:
        return f"plan: nothing to fetch into {plan['destination']}"
    shard = (f"  shard:                   {plan['shard']}: one key in {plan['shards']} (by "
             f"time), at {plan['rate']:g} calls/s (the budget split {plan['shards']} ways)\n"
             if plan.get("shard") else "")
    wait = format_duration(float(str(plan["max_wait_seconds"])))
    return (f"plan: {count_keys(int(str(plan['keys'])))} from {plan['first']} to {plan['last']} "
            f"({plan['granularity']}, {plan['api']}: {plan['types']}; {plan['format']})\n"
            f"{shard}"
            f"  into:                    {plan['destination']} (state in {plan['state']})\n"
            f"  already done:            {plan['done']}\n"
            f"  to fetch:                {plan['to_fetch']} (at least {plan['min_api_calls']} "
            f"export calls, {plan['min_seconds']:.0f} s at {plan['rate']:g} calls/s)\n"
            f"  beyond retention:        {plan['gone']}\n"
            f"  not ready by --max-wait: {plan['not_due']} (keys not ready are waited for up "
            f"to {wait})")
