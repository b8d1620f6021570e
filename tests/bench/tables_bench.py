"""Benchmark of the typed tables (``--format parquet|delta``); prints figures, checks nothing.

    python tests/bench/tables_bench.py      # about 5 minutes on 2 cores

- Conversion throughput, in MB of inflated CSV per CPU-second: backfill's converter
  (pyarrow, streaming) against DuckDB's ``COPY (SELECT * FROM read_csv(...)) TO ...
  (FORMAT parquet)`` with the dialect and the columns given, on the same realistic parts
  (the emulator's rows, gzip level 6), each in a process of its own, as a ratio in one run.
- Wall time of a ``--format delta`` run against a ``--format csv`` run of the same range.
- Peak RSS of a run per table format at ``--downloads 16``, units of 4 parts of 32 MiB.

    python tests/bench/tables_bench.py memory delta   # only the memory of these
    BENCH_DATA=/var/tmp/bench python tests/bench/tables_bench.py memory  # data kept
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import MiB, backfill_cli, emulator, env_for, measure

FORMATS = ("csv", "parquet", "delta", "iceberg")

_CONVERT = """
import sys
from pathlib import Path
from backfill.destination.tables.convert import UnitSchema, header, write_parquet
data_type, out, unit = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
for index, name in enumerate(sys.argv[4:]):
    part = Path(name)
    schema = UnitSchema.of(data_type, [header(part)]).arrow(time_unit=unit)
    write_parquet(part, out / f"{index}.parquet", schema, shown=name)
"""

_PYARROW_TYPED = """
import sys
import pyarrow as pa, pyarrow.csv as pacsv, pyarrow.parquet as pq
from pathlib import Path
from backfill.destination.tables.convert import UnitSchema, header
data_type, out = sys.argv[1], Path(sys.argv[2])
for index, name in enumerate(sys.argv[4:]):
    names = header(Path(name))
    schema = UnitSchema.of(data_type, [names]).arrow()
    types = {f.name: (pa.int64() if pa.types.is_timestamp(f.type) else f.type) for f in schema}
    reader = pacsv.open_csv(pa.input_stream(name, compression="gzip"),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 20),
        parse_options=pacsv.ParseOptions(escape_char="\\\\", double_quote=False,
                                         newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=types))
    with pq.ParquetWriter(out / f"{index}.parquet", reader.schema, compression="zstd") as w:
        for batch in reader:
            w.write_batch(batch)
"""

_DUCKDB = """
import sys, duckdb
from backfill.destination.tables.schema import COLUMNS
data_type, out = sys.argv[1], sys.argv[2]
columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in COLUMNS[data_type]) + "}"
connection = duckdb.connect()
connection.execute("SET threads = 1")
for index, name in enumerate(sys.argv[4:]):
    connection.execute(
        f"COPY (SELECT * FROM read_csv('{name}', delim = ',', quote = '\\"', escape = '\\\\', "
        f"header = true, columns = {columns}, strict_mode = false)) "
        f"TO '{out}/{index}.parquet' (FORMAT parquet)")
"""


def realistic_parts(work: Path, data_type: str, hours: int) -> tuple[list[Path], float]:
    """Parts of the emulator's rows (every dialect case), and their inflated CSV MB."""
    from backfill.emulator.data import DataSettings, DataStore
    from backfill.keys import Granularity, Key, expand

    store = DataStore(work / "data", DataSettings(seed=5, bytes_per_hour=4 * MiB,
                                                  part_size=4 * MiB, compress_level=6))
    first = Key.parse("2026112000")
    keys = expand(first, Key(first.start.replace(hour=hours - 1), Granularity.HOUR))
    parts = [p.path for k in keys for p in store.parts("a", data_type, k)]
    inflated = sum(len(gzip.decompress(p.read_bytes())) for p in parts) / 1e6
    return parts, inflated


def conversion(work: Path) -> None:
    parts, mb = realistic_parts(work, "page", 6)
    results = {}
    for label, script, unit in (("backfill (pyarrow), ms", _CONVERT, "ms"),
                                ("backfill (pyarrow), µs", _CONVERT, "us"),
                                ("pyarrow typed read_csv, no checks", _PYARROW_TYPED, "ms"),
                                ("DuckDB COPY", _DUCKDB, "ms")):
        out = Path(tempfile.mkdtemp(dir=work))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        # The same process with no part: its start-up (imports) is not conversion.
        idle = measure([sys.executable, "-c", script, "page", str(out), unit], env=env)
        run = measure([sys.executable, "-c", script, "page", str(out), unit,
                       *map(str, parts)], env=env)
        if run.code != 0:
            print(f"| {label} | failed (exit {run.code}) | |")
            continue
        cpu = run.cpu_seconds - idle.cpu_seconds
        results[label] = mb / cpu
        print(f"| conversion, {label} | {mb / cpu:.1f} MB of CSV per CPU-second "
              f"({mb:.0f} MB, {cpu:.1f} CPU-s past a start-up of {idle.cpu_seconds:.1f}, "
              f"peak RSS {run.peak_rss_mb:.0f} MB) | |")
    if len(results) == 4:
        ratio = results["backfill (pyarrow), ms"] / results["DuckDB COPY"]
        print(f"| conversion, backfill / DuckDB | {ratio:.2f} | ≥ 1 |")


def conversion_stages(work: Path) -> None:
    """Where a conversion's CPU goes, stage by stage, in this process (one thread)."""
    import time

    import pyarrow as pa
    import pyarrow.csv as pacsv

    from backfill.destination.tables.convert import UnitSchema, batches, header, write_parquet

    parts, mb = realistic_parts(work, "page", 24)

    def inflate() -> None:
        for part in parts:
            with pa.input_stream(str(part), compression="gzip") as stream:
                while stream.read(1 << 20):
                    pass

    def text() -> None:
        for part in parts:
            names = header(part)
            reader = pacsv.open_csv(
                pa.input_stream(str(part), compression="gzip"),
                read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 20,
                                               column_names=names, skip_rows=1),
                parse_options=pacsv.ParseOptions(escape_char="\\", double_quote=False,
                                                 newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string())))
            for _ in reader:
                pass

    def typed() -> None:
        for part in parts:
            for _ in batches(part, UnitSchema.of("page", [header(part)]).arrow(), shown=""):
                pass

    def parquet() -> None:
        for index, part in enumerate(parts):
            schema = UnitSchema.of("page", [header(part)]).arrow()
            write_parquet(part, work / f"stage-{index}.parquet", schema, shown="")

    before = 0.0
    for label, stage in (("inflate (gzip)", inflate), ("+ CSV parse, as text", text),
                         ("+ types (cast, checks)", typed),
                         ("+ Parquet (encode, zstd, MD5, fsync)", parquet)):
        started = time.process_time()
        stage()
        spent = time.process_time() - started
        print(f"| conversion stage: {label} | {spent:.2f} CPU-s for {mb:.0f} MB "
              f"({spent - before:+.2f}) | |")
        before = spent


def delta_against_csv(work: Path) -> None:
    with emulator(job_seconds=0.0, bytes_per_hour=2 * MiB, part_size=1 * MiB,
                  data_dir=work / "emulator-data") as url:
        args = ["run", "--from", "-30h", "--to", "-7h", "--types", "visit,page", "--quiet"]
        backfill_cli([*args, "--out", "warm"], env_for(url), work)  # the emulator's data
        csv_run = backfill_cli([*args, "--out", "csv"], env_for(url), work)
        delta_run = backfill_cli([*args, "--format", "delta", "--out", "delta"],
                                 env_for(url), work)
    print(f"| wall time, 24 hourly keys × 2 types | csv {csv_run.seconds:.1f} s, delta "
          f"{delta_run.seconds:.1f} s: {delta_run.seconds / csv_run.seconds:.2f} × | ≤ 1.3 × |")


def table_memory(work: Path, formats: tuple[str, ...] = FORMATS) -> None:
    """Peak RSS of the CLI (``wait4``) per table format, on units of 1 part of 32 MiB and
    of 4 such parts (about 80 MB of CSV each): 2 hours × 2 types at ``--downloads 16``.
    Memory must not grow with the unit (GrowingIO's large hours are many 64 MB parts):
    the second is the first."""
    from datetime import timedelta

    from backfill.clock import OFFSET_VARIABLE, wall_now
    from backfill.keys import V2_TYPES, Granularity, key_at

    if keep := os.environ.get("BENCH_DATA"):
        # The data of a fixed "now", kept between runs: the next run skips the minutes of
        # generating it.
        work = Path(keep)
        work.mkdir(parents=True, exist_ok=True)
        moment = work / "now"
        if not moment.exists():
            moment.write_text(repr(time.time()))
        os.environ[OFFSET_VARIABLE] = repr(float(moment.read_text()) - time.time())
    hours = [key_at(wall_now() - timedelta(hours=h), Granularity.HOUR) for h in (9, 8)]
    types = ("visit", "page")
    small: dict[str, float] = {}
    for shape, hourly, part, folder in (("1 part of 32 MiB", 32, 32, "emulator-one"),
                                        ("4 parts of 32 MiB", 128, 32, "emulator-big")):
        # An export job makes every type of its hour: all are generated before anything
        # is timed (minutes), or the first call would wait past the client's read timeout.
        with emulator(warm=[(t, k.name) for t in V2_TYPES for k in hours], job_seconds=0.0,
                      flat_data=True, compress_level=6, bytes_per_hour=hourly * MiB,
                      part_size=part * MiB, data_dir=work / folder) as url:
            args = ["run", "--from", f"{hours[0].start:%Y-%m-%dT%H}", "--to",
                    f"{hours[-1].start:%Y-%m-%dT%H}", "--types", ",".join(types),
                    "--downloads", "16", "--quiet"]
            outs = Path(tempfile.mkdtemp(dir=work))  # fresh outputs, even with BENCH_DATA
            for fmt in formats:
                run = backfill_cli([*args, "--format", fmt, "--out", str(outs / fmt)],
                                   env_for(url), work)
                target = (f"≤ {small[fmt] * 1.15:.0f} MiB (1-part units' + 15 %)"
                          if fmt in small else "(the baseline)")
                small.setdefault(fmt, run.peak_rss_mb)
                print(f"| peak RSS, --format {fmt}, --downloads 16, 2 hours × 2 types, "
                      f"{shape} a unit | {run.peak_rss_mb:.0f} MiB in {run.seconds:.0f} s, "
                      f"{run.cpu_seconds:.0f} CPU-s (exit {run.code}) | {target} |")
            shutil.rmtree(outs, ignore_errors=True)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="backfill-tables-bench-") as scratch:
        work = Path(scratch)
        print("| measure | figure | target |\n|---|---|---|")
        if sys.argv[1:2] == ["memory"]:  # only the memory of the formats named after it
            table_memory(work, tuple(sys.argv[2:]) or FORMATS)
            return
        conversion(work)
        conversion_stages(work)
        delta_against_csv(work)
        table_memory(work)


if __name__ == "__main__":
    main()
