"""What the table formats whose commits are the truth (Delta, Iceberg) have in common.

A unit becomes a table's commit in three steps, driven by
:class:`backfill.destination.tables.TableDestination`:

1. ``prepare``: the table exists, with every column the unit brings (a missing one is
   added); the schema of the unit's files;
2. its files are written in streaming, one per source part, each under a name no other
   attempt uses (``part-00000-<attempt>.parquet``), into the unit's partition folder;
3. ``commit``: one commit that replaces the partition with those files and carries the
   unit's summary (``backfill.unit``, ``backfill.manifest``: the source parts' MD5s and
   sizes, the rows, the files).

A commit that loses a race to another writer raises :class:`Conflict`: the three steps
run again, with the partition's filter applied to the table as it now is (the files
are written again only if their schema changed). Files of an attempt that never
committed are unreferenced: no reader sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from backfill.destination.tables.convert import UnitSchema

UNIT = "backfill.unit"
"""A unit's commit names its unit (a commit property, a snapshot summary's key)."""
MANIFEST_KEY = "backfill.manifest"
"""…and carries its summary, as JSON."""
REMOVED = "backfill.removed"
"""A commit that removed a damaged unit's rows (Delta's ``verify``)."""
COMMIT_ATTEMPTS = 8
"""Commits of one unit that lose a race before the unit is given back to the scheduler."""


class Conflict(Exception):
    """Another writer's commit won: prepare and commit again."""


@dataclass(frozen=True)
class Written:
    """One data file of a unit, in place at ``<unit folder>/<name>``."""

    name: str
    size: int
    rows: int
    md5: str
    stats: dict[str, Any] = field(default_factory=dict)
    """Delta's per-file statistics (``numRecords``, min and max values, null counts)."""


@dataclass(frozen=True)
class Prepared:
    """A table ready for a unit's files: the files' schema, and what the format needs to
    commit them (a transaction, the table it was read from)."""

    schema: pa.Schema
    handle: Any = None


class TableFormat(Protocol):
    """A table format whose commits are the truth (:mod:`.delta`, :mod:`.iceberg`)."""

    format: str
    partitions_in_files: bool
    """Whether the files hold the partition columns (Iceberg) or the paths do (Delta)."""
    time_unit: str

    def stats(self, path: Any) -> dict[str, Any]:
        """What the commit must say of the local file ``path`` (read before it is placed)."""

    def prepare(self, data_type: str, unit: UnitSchema, partitions: dict[str, str]
                ) -> Prepared: ...

    def commit(self, prepared: Prepared, data_type: str, folder: str,
               partitions: dict[str, str], files: list[Written], summary: dict[str, Any]
               ) -> None: ...

    def units(self, data_type: str) -> list[dict[str, Any]]:
        """The summaries of the units whose latest commit is ours, the newest first; a
        table that does not exist holds none. A bounded number of reads per type."""

    def files(self, data_type: str) -> dict[str, list[dict[str, Any]]]:
        """The data files the table's current version references, by partition path
        (``dt=2026-11-20/hour=07``): ``file``, ``path``, ``size``, ``rows``."""

    def withdraw(self, data_type: str, folder: str, key: str, partitions: dict[str, str]
                 ) -> None:
        """Remove a damaged unit's rows, in a commit that says so."""

    def translate(self, exc: BaseException, where: str) -> Exception | None:
        """The library's exception as one of ours (``None``: not the library's)."""


def predicate(partitions: dict[str, str]) -> str:
    """``dt = '2026-11-20' AND hour = '07'``: a partition, as SQL."""
    return " AND ".join(f"{name} = '{value}'" for name, value in partitions.items())


def partitions_of(folder: str) -> dict[str, str]:
    """``visit/dt=2026-11-20/hour=07`` → ``{"dt": "2026-11-20", "hour": "07"}``."""
    return dict(segment.split("=", 1) for segment in folder.split("/")[1:] if "=" in segment)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
