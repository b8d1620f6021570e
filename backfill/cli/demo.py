"""The embedded default: ``demo`` (a real backfill against the bundled emulator) and
``emulator`` (the emulator on its own)."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from backfill.cli.report import print_summary
from backfill.cli.shared import app, document, guarded, output, reporting, run_async
from backfill.errors import Interrupted, UsageError
from backfill.keys import BEIJING, Granularity, key_at


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


@app.command(epilog="""Examples:

\b
  backfill demo                          # into ./backfill-demo
  backfill demo --out s3://my-lake/demo  # into a bucket (storage credentials needed)
  backfill demo --quiet                  # plain lines, as in CI logs
""")
@guarded
@reporting
def demo(
    out_: Annotated[str, typer.Option(
        "--out", help="Output folder, or s3://BUCKET/PREFIX (gs://, az://).")] = "backfill-demo",
    fmt: Annotated[str | None, typer.Option(
        "--format", help="csv, parquet or delta (the tables extra), or iceberg (the iceberg "
        "extra) [default: what the output holds, else csv].")] = None,
) -> None:
    """Back up a week of data from the bundled emulator: the whole flow, no account needed."""
    from backfill.cli.demo_run import DEMO_TYPES, demo_settings, run_demo
    from backfill.config import parse_out

    try:
        out = parse_out(out_)
    except UsageError as exc:
        raise UsageError(f"--out {out_}: {exc}") from None

    from backfill.config import parse_flag, user_state_home
    from backfill.emulator.data import default_data_dir

    settings = run_async(demo_settings, out, parse_flag("format", fmt) if fmt else None)
    typer.echo(f"Starting the bundled GrowingIO emulator and backing up a week of "
               f"{', '.join(DEMO_TYPES)} into {out}/ ({settings.format}) ...\n"
               f"(the emulator's generated data is kept in {default_data_dir()}, and token "
               f"locks in {user_state_home() / 'backfill' / 'tokens'})", err=True)
    shown = output()
    summary, stats = run_async(run_demo, settings, shown.reporter())
    if shown.log_format == "json":
        shown.event("summary", **summary.to_json(), destination=str(out))
    else:
        print_summary(summary, plain=shown.quiet or shown.level in ("error", "warning"),
                      where=(str(out), str(out / ".backfill") if isinstance(
            out, Path) else "the user's state folder"))
    if shown.json:

        document({**summary.to_json(), "destination": str(out), "emulator": stats},
                 summary.exit_code)
        raise typer.Exit(summary.exit_code)
    faults = sum(stats["faults"].values())
    typer.echo(
        f"\nThe emulator saw {stats['export_calls']} export calls, "
        f"{stats['rate_limited']} over the 2 calls/s limit, {stats['downloads_trap']} downloads "
        f"of unfinished parts, and injected {faults} faults that the run recovered from.")
    typer.echo(_demo_next_steps(out, settings.format) if isinstance(out, Path) else f"""
Try next:
  backfill demo --out {out}     # again: everything is done, so no API call at all
  backfill status --out {out}   # what the bucket holds, from its markers""")
    raise typer.Exit(summary.exit_code)


def _demo_next_steps(out: Path, fmt: str) -> str:
    files = {"csv": "part-NNNNN.csv.gz", "parquet": "part-NNNNN.parquet",
             "delta": "Delta Lake files; _delta_log/ holds the commits",
             "iceberg": "Iceberg files; catalog.db is the catalog, metadata/ the snapshots"
             }[fmt]
    if fmt == "delta":  # what the tables extra installs reads it; no engine downloads
        read = ("  # read it in python3 with what the tables extra installed:\n"
                "  #   from deltalake import DeltaTable\n"
                f"  #   DeltaTable('{out}/visit').to_pyarrow_table().group_by('dt')"
                ".aggregate([([], 'count_all')])")
    elif fmt == "iceberg":
        read = ("  # read it in python3 with what the iceberg extra installed:\n"
                "  #   from pyiceberg.catalog.sql import SqlCatalog\n"
                f"  #   c = SqlCatalog('backfill', uri='sqlite:///{out.resolve()}/catalog.db')\n"
                "  #   c.load_table('growingio.visit').scan().to_arrow().group_by('dt')"
                ".aggregate([([], 'count_all')])")
    else:
        reader = (f"read_csv('{out}/visit/**/*.csv.gz', hive_partitioning = true, "
                  "escape = '\\')" if fmt == "csv" else
                  f"read_parquet('{out}/visit/**/*.parquet', hive_partitioning = true)")
        query = f"SELECT dt, count(*) AS visits FROM {reader} GROUP BY dt ORDER BY dt"
        read = ("  # read it with DuckDB (pip install duckdb), in python3:\n"
                f'  #   import duckdb; duckdb.sql(r"{query}").show()')
        try:
            import duckdb  # type: ignore[import-not-found,unused-ignore]

            read = f"  # DuckDB reads it as is:\n{duckdb.sql(query)}"
        except Exception:  # not installed, or too old: say how instead
            pass
    return f"""
Try next:
  backfill demo --out {out}     # again: everything is done, so no API call at all
  ls {out}/visit/               # Hive layout: <type>/dt=YYYY-MM-DD/ ({files})
  backfill status --out {out}   # what it holds, from its markers
{read}
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
        run_async(_serve_forever, config, host, port)
    except Interrupted:
        typer.echo("emulator stopped", err=True)  # Ctrl-C is how it is meant to end


async def _serve_forever(config: object, host: str, port: int) -> None:
    import anyio

    from backfill.emulator import EmulatorConfig, serve

    assert isinstance(config, EmulatorConfig)
    async with contextlib.AsyncExitStack() as stack:
        try:
            running = await stack.enter_async_context(serve(config, host, port))
        except OSError as exc:
            raise UsageError(listen_error(host, port, exc)) from None
        typer.echo(_emulator_banner(running.url, config, running.state.clock.now()))
        await anyio.sleep_forever()


def listen_error(host: str, port: int, exc: OSError) -> str:
    """One line for a port the emulator cannot listen on."""
    import errno

    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {host}:{port}: the port is in use (another emulator?); "
                "choose another with --port, or --port 0 for any free one")
    reason = exc.strerror or str(exc)
    return f"cannot listen on {host}:{port}: {reason.lower()}"


def _emulator_banner(url: str, config: object, now: datetime) -> str:
    from backfill.emulator import EmulatorConfig
    from backfill.emulator.data import default_data_dir

    assert isinstance(config, EmulatorConfig)
    c = config.credentials
    ready = key_at(now - timedelta(hours=3), Granularity.HOUR)
    return f"""\
GrowingIO export API emulator on {url}
clock {now.astimezone(BEIJING):%Y-%m-%d %H:%M} Beijing, speed {config.speed:g}x; \
jobs run {config.job_seconds:g}s; generated data kept in {config.data_dir or default_data_dir()}

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
