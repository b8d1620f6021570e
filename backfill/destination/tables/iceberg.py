"""``--format iceberg``: an Apache Iceberg table per data type, one snapshot per unit, in
the catalog the user runs.

- **The catalog** is pyiceberg's own configuration: ``[iceberg] catalog = "NAME"`` names
  one that ``~/.pyiceberg.yaml`` or ``PYICEBERG_CATALOG__NAME__*`` variables define (REST,
  S3 Tables, DLF, Polaris, Unity, Glue, Hive, SQL). With none named, a local ``--out``
  holds its own: a SQL catalog on SQLite at ``<out>/catalog.db`` named ``backfill`` (the
  name is in every row of it: it is part of the format), warehouse ``<out>``. A bucket
  needs a named catalog: a SQLite file on one runner is no catalog another shares.
- **The tables** are ``<namespace>.<type>`` (namespace ``growingio`` unless set), at
  ``<out>/<type>``, format version 2, identity-partitioned by ``dt`` (and ``hour``), the
  type's documented columns typed as for Delta (``timestamptz`` in µs), each other column
  text, added by a schema update in the transaction of the unit that brought it. The
  table's properties carry the output's record.
- **A unit** is one snapshot (``overwrite``) that deletes the partition's current data
  files (a scan's plan with the unit's filter) and adds the unit's files, which were
  written in streaming with the table's field ids (:mod:`.commits`); its summary carries
  ``backfill.unit`` and ``backfill.manifest``. A conflict (another shard committed
  first) is retried by pyiceberg where its version does (0.12: up to 4 times, then its
  check of the files added meanwhile fails), then by us, from a fresh read of the table,
  the partition's filter re-applied: we depend on neither its retries nor their absence.
- **Done units** are read from the snapshot summaries of the main branch: one catalog
  load (the table's metadata file) per type, however many units. ``verify`` reads the
  current snapshot's manifests too, for the files it references.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backfill.config import Remote
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
from backfill.destination.tables.schema import column_kind
from backfill.errors import OutputError, RetryableError, UsageError

if TYPE_CHECKING:
    from backfill.config import Settings
    from backfill.destination.tables.convert import UnitSchema

EMBEDDED = "backfill"
"""The embedded catalog's name: a SQL catalog stores it in every row."""
CATALOG_FILE = "catalog.db"
FIELD_ID = b"PARQUET:field_id"
FIRST_PARTITION_FIELD = 1000


class IcebergTables:
    """The Iceberg side of a table output: a table per data type in one catalog."""

    format = "iceberg"
    partitions_in_files = True
    time_unit = "us"

    def __init__(self, settings: Settings, created: dict[str, str]) -> None:
        self._settings = settings
        self._created = created
        self._namespace = settings.iceberg_namespace
        self._catalogs: dict[bool, Any] = {}
        self._keys: dict[str, str] = {}
        """The S3 credentials the cached catalogs were made with."""
        self._opening = threading.RLock()
        """Held while this process opens the catalog or creates a table."""
        out = settings.out
        self._root = (out.resolve().as_uri() if isinstance(out, Path) else out.url)
        check_catalog(settings)

    # --- the catalog ----------------------------------------------------------------------

    def catalog(self, *, create: bool) -> Any:
        """The catalog; ``create=False`` (a command that only reads): None when the
        embedded one does not exist yet, and nothing is created."""
        with self._opening:
            if (keys := _keys(self._settings)) != self._keys:
                # Temporary credentials renewed: a catalog made with the old ones would
                # sign with them until they expire.
                self._catalogs.clear()
                self._keys = keys
            for opened in (True, create):  # one that may create serves a reader too
                if opened in self._catalogs:
                    return self._catalogs[opened]
            out = self._settings.out
            if self._settings.iceberg_catalog:
                catalog = _named(self._settings.iceberg_catalog, self._settings)
            else:
                assert isinstance(out, Path)  # a bucket without a named catalog: refused
                catalog = _embedded(out, create=create)
            if catalog is not None:
                self._catalogs[create] = catalog
                # A SQL catalog's connections are closed with the run's destination, not
                # left to the collector (Python 3.13 warns of each).
                weakref.finalize(self, _close, catalog)
            return catalog

    def _load(self, data_type: str, *, create: bool) -> Any:
        """The type's table (None: not there, and not to be created)."""
        from pyiceberg.exceptions import NoSuchTableError

        catalog = self.catalog(create=create)
        if catalog is None:
            return None
        identifier = (self._namespace, data_type)
        try:
            return catalog.load_table(identifier)
        except NoSuchTableError:
            if not create:
                return None
        with self._opening:  # one creation at a time here; another process's is caught
            try:
                return catalog.load_table(identifier)
            except NoSuchTableError:
                pass
            try:
                catalog.create_namespace(self._namespace)
            except Exception:
                if (self._namespace,) not in catalog.list_namespaces():
                    raise
            schema, spec = _base(data_type, self._settings.granularity.value == "hour")
            try:
                return catalog.create_table(
                    identifier, schema, location=f"{self._root}/{data_type}",
                    partition_spec=spec, properties={
                        "format-version": "2", **self._created,
                        "write.parquet.compression-codec": "zstd"})
            except Exception:  # another process created it meanwhile: the same table
                try:
                    return catalog.load_table(identifier)
                except NoSuchTableError:
                    pass
                raise

    # --- a unit's snapshot ----------------------------------------------------------------

    def stats(self, path: Path) -> dict[str, Any]:
        return {}  # pyiceberg reads the footer of the placed file

    def prepare(self, data_type: str, unit: UnitSchema, partitions: dict[str, str]
                ) -> Prepared:
        """A transaction on the table as it is now, with the columns the unit brings
        added (the schema update commits with the snapshot); the files' schema carries
        the table's field ids."""
        import pyarrow as pa
        from pyiceberg.types import StringType

        table = self._load(data_type, create=True)
        transaction = table.transaction()
        have = {f.name for f in table.schema().fields}
        if missing := [c for c in unit.columns if c not in have]:
            with transaction.update_schema() as update:
                for column in missing:
                    update.add_column(column, StringType())
        ids = transaction.table_metadata.schema()
        fields = [field.with_metadata({FIELD_ID: str(ids.find_field(field.name).field_id)})
                  for field in unit.arrow(tuple(partitions), time_unit=self.time_unit)]
        return Prepared(pa.schema(fields), (table, transaction))

    def commit(self, prepared: Prepared, data_type: str, folder: str,
               partitions: dict[str, str], files: list[Written], summary: dict[str, Any]
               ) -> None:
        """One snapshot: the partition's current files deleted, the unit's added."""
        from pyiceberg.exceptions import CommitFailedException, ValidationException
        from pyiceberg.io.pyarrow import parquet_files_to_data_files

        table, transaction = prepared.handle
        paths = [f"{self._root}/{folder}/{f.name}" for f in files]
        added = list(parquet_files_to_data_files(table.io, transaction.table_metadata,
                                                 iter(paths)))
        current = [task.file for task in
                   table.scan(row_filter=predicate(partitions)).plan_files()]
        try:
            with transaction.update_snapshot(snapshot_properties={
                    UNIT: folder, MANIFEST_KEY: json.dumps(summary)}).overwrite() as snapshot:
                for data_file in current:
                    snapshot.delete_data_file(data_file)
                for data_file in added:
                    snapshot.append_data_file(data_file)
            transaction.commit_transaction()
        except (CommitFailedException, ValidationException) as exc:
            # Another writer committed first. pyiceberg 0.12 retries a few times itself,
            # then fails its own check of the files added meanwhile: not landed, either
            # way; we prepare again, from the table as it is now.
            raise Conflict(first_line(exc)) from None

    # --- what the tables hold ---------------------------------------------------------------

    def units(self, data_type: str) -> list[dict[str, Any]]:
        """From the snapshot summaries of the main branch, the newest first: the table's
        metadata file, one read."""
        from pyiceberg.table.snapshots import ancestors_of

        table = self._load(data_type, create=False)
        if table is None:
            return []
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        for snapshot in ancestors_of(table.current_snapshot(), table.metadata):
            properties = snapshot.summary.additional_properties if snapshot.summary else {}
            unit = properties.get(UNIT)
            if not isinstance(unit, str) or unit in seen:
                continue
            seen.add(unit)
            try:
                document = json.loads(properties[MANIFEST_KEY])
            except (KeyError, TypeError, ValueError):
                continue
            if isinstance(document, dict):
                found.append(document)
        return found

    def files(self, data_type: str) -> dict[str, list[dict[str, Any]]]:
        """The current snapshot's data files: its manifest list and manifests."""
        table = self._load(data_type, create=False)
        if table is None:
            return {}
        found: dict[str, list[dict[str, Any]]] = {}
        for task in table.scan().plan_files():
            path = task.file.file_path
            relative = path.removeprefix(f"{self._root}/{data_type}/")
            partition, _, name = relative.rpartition("/")
            found.setdefault(partition, []).append({
                "file": name, "path": path, "size": int(task.file.file_size_in_bytes),
                "rows": int(task.file.record_count)})
        return found

    def withdraw(self, data_type: str, folder: str, key: str, partitions: dict[str, str]
                 ) -> None:
        """A snapshot that deletes the unit's files and says so (no summary of ours: the
        unit is no longer done)."""
        table = self._load(data_type, create=False)
        if table is None:
            return
        transaction = table.transaction()
        with transaction.update_snapshot(snapshot_properties={
                UNIT: folder, REMOVED: "damaged"}).overwrite() as snapshot:
            for task in table.scan(row_filter=predicate(partitions)).plan_files():
                snapshot.delete_data_file(task.file)
        transaction.commit_transaction()

    def translate(self, exc: BaseException, where: str) -> Exception | None:
        from pyiceberg.exceptions import (
            CommitFailedException,
            CommitStateUnknownException,
            ForbiddenError,
            NoSuchNamespaceError,
            ServerError,
            ServiceUnavailableError,
            UnauthorizedError,
        )

        if isinstance(exc, ForbiddenError | UnauthorizedError | NoSuchNamespaceError):
            return OutputError(f"the Iceberg catalog refused {where}: {first_line(exc)}")
        if isinstance(exc, CommitFailedException | CommitStateUnknownException | ServerError
                      | ServiceUnavailableError | ConnectionError | TimeoutError):
            return RetryableError(f"could not commit to the Iceberg table {where}: "
                                  f"{first_line(exc)}")
        if isinstance(exc, ValueError) and "schema" in str(exc).lower():
            return OutputError(f"{where}: the Iceberg table's schema does not take these "
                               f"rows ({first_line(exc)})")
        return None


def _close(catalog: Any) -> None:
    close = getattr(catalog, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


def check_catalog(settings: Settings) -> None:
    """Raise :class:`UsageError` (one line) unless ``settings`` name a catalog that can be
    used: a named one pyiceberg has a configuration for, or the embedded one of a local
    output (a bucket needs a named one). Reads no catalog: commands check it first."""
    if isinstance(settings.out, Remote) and not settings.iceberg_catalog:
        raise UsageError(
            f"--format iceberg into {settings.out} needs a catalog that every runner and "
            "reader shares: name one with [iceberg] catalog = \"NAME\" in the config (or "
            "--iceberg-catalog NAME) and define it as pyiceberg does, in "
            "~/.pyiceberg.yaml or PYICEBERG_CATALOG__NAME__URI and the like")
    if settings.iceberg_catalog:
        configured(settings.iceberg_catalog)


def configured(name: str) -> dict[str, Any]:
    """The catalog ``name``'s properties as pyiceberg reads them now (its yaml files and
    ``PYICEBERG_CATALOG__`` variables); raises :class:`UsageError` when there are none."""
    from pyiceberg.utils.config import Config

    properties = dict(Config().get_catalog_config(name) or {})
    if not properties:
        variable = f"PYICEBERG_CATALOG__{name.upper().replace('-', '_')}__URI"
        raise UsageError(f"no Iceberg catalog {name!r} is configured: define it in "
                         f"~/.pyiceberg.yaml (catalog: {name.lower()}: uri: …) or with "
                         f"{variable} and the like, as pyiceberg reads it")
    return properties


def _keys(settings: Settings) -> dict[str, str]:
    """The S3 credentials an output's named catalog signs with now (none on disk)."""
    from backfill.destination.credentials import s3_credentials

    if not (settings.iceberg_catalog and isinstance(settings.out, Remote)
            and settings.out.kind == "s3"):
        return {}
    return s3_credentials(settings.storage.region).iceberg()


def _named(name: str, settings: Settings) -> Any:
    """The catalog ``name`` as pyiceberg configures it (read now, not at import), with the
    output's S3 endpoint and the credentials every writer uses (current now), where it
    says none."""
    from pyiceberg.catalog import load_catalog

    from backfill.destination.credentials import s3_endpoint

    properties = configured(name)
    if isinstance(settings.out, Remote) and settings.out.kind == "s3":
        if endpoint := s3_endpoint(settings):
            properties.setdefault("s3.endpoint", endpoint)
        if (virtual := settings.storage.virtual_hosted_style) is not None:
            properties.setdefault("s3.force-virtual-addressing", str(virtual).lower())
        if not any(key in properties for key in ("s3.access-key-id", "s3.session-token")):
            properties.update(_keys(settings))  # all of ours, or none: one identity
    return load_catalog(name, **properties)


def _embedded(out: Path, *, create: bool) -> Any:
    """``<out>/catalog.db``; None when it is not there and not to be created."""
    from pyiceberg.catalog.sql import SqlCatalog
    from sqlalchemy.exc import OperationalError

    path = out / CATALOG_FILE
    if not create and not path.exists():
        return None
    if create:
        out.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        try:
            return SqlCatalog(EMBEDDED, uri=f"sqlite:///{path.resolve()}",
                              warehouse=out.resolve().as_uri(),
                              init_catalog_tables="true" if create else "false")
        except OperationalError:  # another shard was creating its tables at that moment
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def _base(data_type: str, hourly: bool) -> tuple[Any, Any]:
    """The type's table as first created: its documented columns, then the partitions;
    identity partitions on ``dt`` (and ``hour``)."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import IdentityTransform
    from pyiceberg.types import DoubleType, LongType, NestedField, StringType, TimestamptzType

    from backfill.destination.tables.convert import documented

    kinds = {"timestamp": TimestamptzType(), "integer": LongType(), "double": DoubleType()}
    names = [*documented(data_type), "dt", *(["hour"] if hourly else [])]
    fields = [NestedField(index, name, kinds.get(column_kind(name), StringType())
                          if name not in ("dt", "hour") else StringType(), required=False)
              for index, name in enumerate(names, start=1)]
    schema = Schema(*fields)
    spec = PartitionSpec(*[
        PartitionField(schema.find_field(name).field_id, FIRST_PARTITION_FIELD + offset,
                       IdentityTransform(), name)
        for offset, name in enumerate(["dt", "hour"] if hourly else ["dt"])])
    return schema, spec
