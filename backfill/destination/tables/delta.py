"""``--format delta``: a Delta Lake table per data type, one commit per unit.

``<out>/<type>/`` is the table, partitioned by ``dt`` (and ``hour``). Version 0 creates it
with the type's documented columns, carrying the output's record. Then each unit is one
commit that replaces exactly its partition: the unit's Parquet files, written in
streaming beside the others (:mod:`.commits`), added with ``mode="overwrite"`` and the
partition's filter, the commit carrying ``backfill.unit`` and ``backfill.manifest``. A
column a unit brings is added to the table's schema first (a commit of its own, columns
are only ever added). The table's log is the truth: a unit whose latest commit is ours
is done, for a fresh runner too.

delta-rs writes a whole file in memory before it stores it; writing the files ourselves
keeps a unit's memory to a row group, however large the unit.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backfill.clock import wall_now
from backfill.destination.tables.commits import (
    MANIFEST_KEY,
    REMOVED,
    UNIT,
    Conflict,
    Prepared,
    Written,
    first_line,
    predicate,
)
from backfill.errors import OutputError, RetryableError

if TYPE_CHECKING:
    from pathlib import Path

    import pyarrow as pa
    from deltalake.transaction import RemoveAction  # only in recent releases: a type here

    from backfill.destination.tables.convert import UnitSchema


class DeltaTables:
    """The Delta side of a table output: a table per data type at ``<root>/<type>``."""

    format = "delta"
    partitions_in_files = False
    time_unit = "us"

    def __init__(self, root: str, options: Callable[[], dict[str, str]],
                 created: dict[str, str]) -> None:
        self._root = root
        self._options = options
        self._created = created
        """The creation commit's metadata: what the output is (its record)."""
        self._shaping: dict[str, threading.Lock] = {}
        """Per data type: held while this process creates the type's table."""

    def uri(self, data_type: str) -> str:
        return f"{self._root}/{data_type}"

    # --- a unit's commit ------------------------------------------------------------------

    def stats(self, path: Path) -> dict[str, Any]:
        return file_stats(path)

    def prepare(self, data_type: str, unit: UnitSchema, partitions: dict[str, str]
                ) -> Prepared:
        """The table created if it is not there, with every column of the unit (a column
        is only ever added); the unit's files hold its columns, not the partitions.

        Two processes that both create a table lose one's columns (delta-rs 1.6: the
        second writes its schema over the first's), so a missing table is created with
        the type's documented columns (every process creates the same one), one creation
        at a time in this process; columns are added afterwards, to a table that exists,
        where an addition that races another commit fails as a conflict."""
        from deltalake import DeltaTable, Field

        from backfill.destination.tables.convert import UnitSchema

        target = unit.arrow(time_unit=self.time_unit)
        uri = self.uri(data_type)
        have = _columns(uri, self._options())
        if not have:
            base = UnitSchema(data_type).arrow(tuple(partitions), time_unit=self.time_unit)
            with self._shaping.setdefault(data_type, threading.Lock()):
                if not _columns(uri, self._options()):
                    _create(uri, base, list(partitions), self._options(), self._created)
            have = _columns(uri, self._options())
        if missing := [f for f in target if f.name not in have]:
            try:
                DeltaTable(uri, storage_options=self._options()).alter.add_columns(
                    [Field.from_arrow(f) for f in missing])
            except Exception as exc:  # another commit changed the table: prepare again
                raise Conflict(f"adding {', '.join(f.name for f in missing)}: "
                               f"{first_line(exc)}") from None
        return Prepared(target)

    def commit(self, prepared: Prepared, data_type: str, folder: str,
               partitions: dict[str, str], files: list[Written], summary: dict[str, Any]
               ) -> None:
        """One commit that replaces the partition with ``files`` (``mode="overwrite"``
        with the partition's filter), carrying the unit's summary."""
        from deltalake import CommitProperties, DeltaTable
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import AddAction

        now = int(wall_now().timestamp() * 1000)  # the clock's one door
        relative = folder.split("/", 1)[1]
        actions: list[AddAction | RemoveAction] = [
            AddAction(f"{relative}/{f.name}", f.size, partitions, now, True,
                      json.dumps(f.stats)) for f in files]
        table = DeltaTable(self.uri(data_type), storage_options=self._options())
        try:
            table.create_write_transaction(
                actions, "overwrite", table.schema(), list(partitions),
                [(name, "=", value) for name, value in partitions.items()],
                commit_properties=CommitProperties(custom_metadata={
                    UNIT: f"{summary['key']} {data_type}",
                    MANIFEST_KEY: json.dumps(summary)}))
        except CommitFailedError as exc:
            raise Conflict(first_line(exc)) from None

    # --- what the tables hold ---------------------------------------------------------------

    def units(self, data_type: str) -> list[dict[str, Any]]:
        """From the table's log: one read of its commits (delta-rs reads the log once)."""
        table = self._open(data_type)
        if table is None:
            return []
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        for commit in table.history():  # the newest first
            unit = commit.get(UNIT)
            if not isinstance(unit, str) or unit in seen:
                continue
            seen.add(unit)
            if commit.get(REMOVED):
                continue
            try:
                document = json.loads(commit[MANIFEST_KEY])
            except (KeyError, TypeError, ValueError):
                continue
            if isinstance(document, dict):
                found.append(document)
        return found

    def files(self, data_type: str) -> dict[str, list[dict[str, Any]]]:
        import pyarrow as pa

        table = self._open(data_type)
        if table is None:
            return {}
        actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
        paths = actions["path"]
        rows = actions.get("num_records", [None] * len(paths))
        found: dict[str, list[dict[str, Any]]] = {}
        for index, path in enumerate(paths):
            partition, _, name = path.rpartition("/")
            found.setdefault(partition, []).append({
                "file": name, "path": path, "size": int(actions["size_bytes"][index]),
                "rows": int(rows[index]) if rows[index] is not None else 0})
        return found

    def withdraw(self, data_type: str, folder: str, key: str, partitions: dict[str, str]
                 ) -> None:
        from deltalake import CommitProperties, DeltaTable

        DeltaTable(self.uri(data_type), storage_options=self._options()).delete(
            predicate(partitions), commit_properties=CommitProperties(custom_metadata={
                UNIT: f"{key} {data_type}", REMOVED: "damaged"}))

    def translate(self, exc: BaseException, where: str) -> Exception | None:
        from deltalake.exceptions import DeltaError, SchemaMismatchError

        if isinstance(exc, SchemaMismatchError):
            return OutputError(f"{where}: the Delta table's schema does not take these rows "
                               f"({first_line(exc)})")
        if isinstance(exc, DeltaError):  # the store said no, or lost the commit: again
            return RetryableError(f"could not commit to the Delta table {where}: "
                                  f"{first_line(exc)}")
        return None

    def _open(self, data_type: str) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri(data_type), storage_options=self._options())
        except TableNotFoundError:
            return None


def _create(uri: str, base: pa.Schema, partition_by: list[str], options: dict[str, str],
            created: dict[str, str]) -> None:
    """Create the table empty with the type's documented columns; a table another
    process created meanwhile is kept."""
    from deltalake import CommitProperties, DeltaTable
    from deltalake.exceptions import DeltaError

    with contextlib.suppress(DeltaError):
        DeltaTable.create(uri, base, mode="ignore", partition_by=partition_by,
                          storage_options=options,
                          commit_properties=CommitProperties(custom_metadata=created))


def _columns(uri: str, options: dict[str, str]) -> set[str]:
    """The columns of the Delta table at ``uri`` (none when there is no table yet)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return set(DeltaTable(uri, storage_options=options).schema().to_arrow().names)
    except TableNotFoundError:
        return set()


MAX_TEXT_STAT = 64
"""Text bounds longer than this are left out of a file's statistics."""


def file_stats(path: Path) -> dict[str, Any]:
    """Delta's statistics of one Parquet file, from its footer: ``numRecords``, and each
    column's minimum, maximum and null count, each only where every row group has it
    (a reader skips files by them: a partial figure would skip rows)."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    bounded: set[str] = set()
    counted: set[str] = set()
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        names = set()
        for index in range(row_group.num_columns):
            column = row_group.column(index)
            name = column.path_in_schema
            names.add(name)
            statistics = column.statistics
            if group == 0:
                bounded.add(name)
                counted.add(name)
            if statistics is None or not statistics.has_null_count:
                counted.discard(name)
            else:
                nulls[name] = nulls.get(name, 0) + statistics.null_count
            if statistics is None or not statistics.has_min_max:
                bounded.discard(name)
                continue
            lo, hi = statistics.min, statistics.max
            if isinstance(lo, str | bytes) and max(len(lo), len(hi)) > MAX_TEXT_STAT:
                bounded.discard(name)  # a JSON map's bounds would swell the log
                continue
            low[name] = lo if name not in low else min(low[name], lo)
            high[name] = hi if name not in high else max(high[name], hi)
        bounded &= names
        counted &= names
    return {"numRecords": metadata.num_rows,
            "minValues": {k: _json(v) for k, v in low.items() if k in bounded},
            "maxValues": {k: _json(v) for k, v in high.items() if k in bounded},
            "nullCount": {k: v for k, v in nulls.items() if k in counted}}


def _json(value: Any) -> Any:
    """A statistic as Delta writes it: a timestamp in ISO 8601 with milliseconds, UTC."""
    from datetime import UTC, datetime

    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return stamp.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value
