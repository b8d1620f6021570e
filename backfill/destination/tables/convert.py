"""Verified CSV parts to typed Arrow batches and Parquet files, streaming: the stage between
the checked bytes and a table (``--format parquet|delta|iceberg``). Blocking: a worker
thread's job.

GrowingIO's dialect is read exactly: ``,`` separator, ``"`` quote, ``\\`` escape (no doubled
quotes), quoted fields holding commas, quotes, newlines, and fields longer than a megabyte.
Every value is read as text first, so nothing is guessed: ``00123`` and ``NULL`` stay text.
Then the documented columns get their types (:mod:`.schema`); an empty field of a typed
column is a null. A column the schema does not know is kept, as text; a documented
column a part lacks is null; no row is dropped. A value a typed column cannot hold fails
the unit, naming the row by its number, never its content.

Needs the ``tables`` extra (pyarrow, deltalake), or the ``iceberg`` one (pyiceberg, pyarrow):
:func:`require_tables` says so in one line.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backfill.destination.tables.schema import COLUMNS, column_kind
from backfill.errors import IntegrityError, UsageError
from backfill.install import install_line

if TYPE_CHECKING:
    import pyarrow as pa

BLOCK = 256 << 10
"""Bytes of CSV per batch: memory stays flat however large a part inflates (pyarrow's
reader holds several blocks: 1 MiB ones took twice the memory for no CPU saved)."""
MAX_BLOCK = 1 << 30
"""The longest row a part may hold (the reader's block grows to it, four times each step)."""
ROW_GROUP_BYTES = 8 << 20
"""Arrow bytes gathered into one Parquet row group (some 20,000 rows of ``visit``):
readers skip and decode well, and a conversion holds about this much."""


def require_tables(fmt: str, held: str | None = None) -> None:
    """Raise :class:`UsageError` (one line, how to install it) when ``fmt`` needs an
    extra that is not installed; ``held``: the output that holds such tables (the format
    was not asked for, the output records it)."""
    if fmt == "csv":
        return
    extra = "iceberg" if fmt == "iceberg" else "tables"
    try:
        import pyarrow  # noqa: F401
        if fmt == "delta":
            import deltalake  # noqa: F401
        if fmt == "iceberg":
            import pyiceberg.catalog.sql  # noqa: F401
    except ImportError:
        needs = (f"{held} holds {fmt} tables, which need" if held
                 else f"--format {fmt} needs")
        raise UsageError(f"{needs} the {extra} extra: {install_line(extra)}") from None


def header(path: Path) -> list[str]:
    """The column names of a verified gzip CSV part (its first record)."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as text:
        reader = csv.reader(text, delimiter=",", quotechar='"', escapechar="\\",
                            doublequote=False)
        return next(reader, [])


@dataclass(frozen=True)
class UnitSchema:
    """The columns of one data type's table: the documented ones, typed, in their order,
    then every other column a part brought, as text."""

    data_type: str
    extra: tuple[str, ...] = ()

    def arrow(self, partitions: tuple[str, ...] = (), *, time_unit: str = "ms") -> pa.Schema:
        """The Arrow schema; ``time_unit`` of the timestamps (``us`` for Iceberg)."""
        import pyarrow as pa

        fields = [pa.field(c, _arrow_type(column_kind(c), time_unit))
                  for c in documented(self.data_type)]
        fields += [pa.field(c, pa.string()) for c in self.extra]  # unknown: kept, as text
        return pa.schema([*fields, *(pa.field(p, pa.string()) for p in partitions)])

    @property
    def columns(self) -> tuple[str, ...]:
        return (*documented(self.data_type), *self.extra)

    @classmethod
    def of(cls, data_type: str, headers: list[list[str]]) -> UnitSchema:
        known = set(documented(data_type))
        extra: dict[str, None] = {}
        for names in headers:
            extra.update(dict.fromkeys(n for n in names if n not in known))
        return cls(data_type, tuple(extra))


def documented(data_type: str) -> tuple[str, ...]:
    return COLUMNS.get(data_type, ())


def batches(path: Path, target: pa.Schema, *, shown: str,
            partitions: dict[str, str] | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of one verified part as batches of ``target`` (a
    :meth:`UnitSchema.arrow`; its ``partitions`` columns hold their constant values),
    about :data:`BLOCK` bytes of CSV each.

    Raises :class:`IntegrityError` naming ``shown`` and the row for a value its column's
    type cannot hold, or for CSV that does not parse.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = header(path)
    parse = pacsv.ParseOptions(delimiter=",", quote_char='"', escape_char="\\",
                               double_quote=False, newlines_in_values=True)
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                   strings_can_be_null=False, quoted_strings_can_be_null=False,
                                   null_values=[])
    seen, block = 0, BLOCK
    while True:
        # A row longer than a block (a field of megabytes) makes the reader give up: it
        # starts again after the rows already given, with blocks four times as large.
        read = pacsv.ReadOptions(block_size=block, column_names=names, skip_rows=1,
                                 skip_rows_after_names=seen, use_threads=False)
        try:
            reader = pacsv.open_csv(pa.input_stream(str(path), compression="gzip"),
                                    read_options=read, parse_options=parse,
                                    convert_options=convert)
            for batch in reader:
                typed = _typed(batch, target, partitions or {}, seen, shown)
                seen += batch.num_rows
                yield typed
            return
        except pa.ArrowInvalid as exc:
            if "straddl" in str(exc) and block < MAX_BLOCK:
                block *= 4
                continue
            raise IntegrityError(f"{shown}: not CSV of GrowingIO's dialect after row {seen} "
                                 f"({_first_line(exc)})") from None


def _typed(batch: pa.RecordBatch, target: pa.Schema, partitions: dict[str, str], seen: int,
           shown: str) -> pa.RecordBatch:
    import pyarrow as pa

    columns = []
    present = set(batch.schema.names)
    for field in target:
        if field.name in partitions:
            columns.append(pa.array([partitions[field.name]] * batch.num_rows, pa.string()))
        elif field.name in present:
            columns.append(_cast(batch.column(field.name), field, seen, shown))
        else:  # a documented column this part lacks, or an extra another part has
            columns.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=target)


def _cast(text: pa.Array, field: pa.Field, seen: int, shown: str) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_string(field.type):
        return text
    values = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    timestamp = pa.types.is_timestamp(field.type)
    try:
        if timestamp:  # epoch milliseconds, whatever unit the table keeps
            millis = pa.timestamp("ms", tz=field.type.tz)
            return pc.cast(pc.cast(pc.cast(values, pa.int64()), millis), field.type)
        return pc.cast(values, field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row = _first_bad(values, field.type)
        what = "an epoch-milliseconds time" if timestamp else f"a {field.type}"
        raise IntegrityError(f"{shown}: row {seen + row + 1} has a {field.name} that is not "
                             f"{what}") from None


def _first_bad(values: pa.Array, target: pa.DataType) -> int:
    import pyarrow as pa

    wanted = pa.int64() if pa.types.is_timestamp(target) else target
    for index, value in enumerate(values.to_pylist()):
        if value is None:
            continue
        try:
            pa.array([value]).cast(wanted)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return index
    return 0


def _arrow_type(kind: str, time_unit: str) -> Any:
    import pyarrow as pa

    return {"timestamp": pa.timestamp(time_unit, tz="UTC"), "integer": pa.int64(),
            "double": pa.float64()}.get(kind, pa.string())


def write_parquet(source: Path, target: Path, schema: pa.Schema, *, shown: str,
                  partitions: dict[str, str] | None = None) -> tuple[int, str, int]:
    """Convert one verified part into the Parquet file ``target`` (removed if anything
    fails), streaming: rows of ``schema`` gathered into row groups of about
    :data:`ROW_GROUP_BYTES`; the file is on disk (fsync) when this returns.
    ``(rows, MD5, size)`` of the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    try:
        with pq.ParquetWriter(target, schema, compression="zstd") as writer:
            gathered: list[pa.RecordBatch] = []
            held = 0
            for batch in batches(source, schema, shown=shown, partitions=partitions):
                gathered.append(batch)
                held += batch.nbytes
                rows += batch.num_rows
                if held >= ROW_GROUP_BYTES:
                    writer.write_table(pa.Table.from_batches(gathered, schema))
                    gathered, held = [], 0
                    # The allocator keeps what a row group freed unless told: 13 MiB a
                    # conversion, measured.
                    pa.default_memory_pool().release_unused()
            if gathered or not rows:
                writer.write_table(pa.Table.from_batches(gathered, schema))
        digest = hashlib.md5()
        with target.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
            os.fsync(f.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return rows, digest.hexdigest(), target.stat().st_size


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
