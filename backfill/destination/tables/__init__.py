"""Typed tables as a destination (``--format parquet|delta|iceberg``), over a folder or a
bucket.

Parts are downloaded as for ``csv``, verified, into a local staging folder beside the
state (so they resume with ``Range`` even for a bucket). When a unit's parts are all
there, each is converted in streaming (:mod:`backfill.destination.tables.convert`) into
one Parquet file, and the unit is committed in one step:

- ``parquet``: ``part-NNNNN.parquet`` for each source part in the unit's Hive folder, then
  ``_manifest.json`` (each file's size, MD5 and rows, the source part's MD5, size and link,
  the unit's rows), then ``_SUCCESS``: the commit order of the raw parts.
- ``delta`` (:mod:`.delta`) and ``iceberg`` (:mod:`.iceberg`): ``<type>`` is a table
  partitioned by ``dt`` (and ``hour``); each unit is one commit that replaces exactly its
  partition with its files and carries its summary (:mod:`.commits`). The table is the
  truth: a unit whose latest commit is ours is done, for a fresh runner too.

At most :data:`CONVERSIONS` parts are converted at once, whatever the number of units
ready: a conversion holds a row group, so memory does not grow with the unit.

The scheduler sees only a destination: parts, a unit's publish, listings and manifests.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from backfill.destination import Destination, Stored
from backfill.destination.local import LocalFolder, LocalPart, _walk
from backfill.destination.tables.commits import (
    COMMIT_ATTEMPTS,
    Conflict,
    TableFormat,
    Written,
    partitions_of,
)
from backfill.destination.tables.convert import UnitSchema, header, write_parquet
from backfill.errors import IntegrityError, OutputError, RetryableError, UsageError
from backfill.layout import MANIFEST, MARKER, partial_name
from backfill.model import ManifestPart

if TYPE_CHECKING:
    import pyarrow as pa

    from backfill.config import Settings

CONVERSIONS = 2
"""Parts converted at once (a CPU's work each; the machines we run on have a few)."""


class TableDestination:
    """Parquet files, or a table format's commits, per unit, over ``inner`` (a folder or
    a bucket)."""

    def __init__(self, inner: Destination, fmt: str, settings: Settings) -> None:
        from backfill.config import DEFAULT_LAYOUT

        if fmt != "parquet" and settings.layout != DEFAULT_LAYOUT:
            raise UsageError(f"--format {fmt} keeps one table per data type, partitioned by "
                             f"dt and hour: it takes the default layout, not "
                             f"{settings.layout!r}")
        self._inner = inner
        self._format = fmt
        self._settings = settings
        self._staging = settings.state_folder / "staging"
        self._table: TableFormat | None = None if fmt == "parquet" else _open_format(settings)
        self._units: dict[str, dict[str, dict[str, Any]]] = {}
        """Per data type: the unit folders the table shows done, with their summaries."""
        self._files: dict[str, dict[str, list[dict[str, Any]]]] = {}
        """Per data type: the table's data files by partition (read when verified)."""
        self._converting = anyio.CapacityLimiter(CONVERSIONS)

    def __str__(self) -> str:
        return str(self._inner)

    # --- parts are staged locally ----------------------------------------------------------

    def part(self, path: str) -> LocalPart:
        return LocalPart(self._staging / path)

    async def unpublish(self, folder: str) -> None:
        if self._table is None:
            await self._inner.unpublish(folder)
        # A table: the commit that rewrites a unit replaces its partition atomically;
        # readers see the old rows until then, and the new ones after.

    async def withdraw(self, folder: str) -> None:
        """A unit found damaged: no longer done at the destination either."""
        if self._table is None:
            await self._inner.unpublish(folder)
            return
        data_type = folder.split("/", 1)[0]
        units = await anyio.to_thread.run_sync(self._done, data_type)
        if (summary := units.get(folder)) is None:
            return
        await anyio.to_thread.run_sync(self._table.withdraw, data_type, folder,
                                       str(summary["key"]), partitions_of(folder))
        units.pop(folder, None)

    async def publish(self, folder: str, manifest: bytes, names: set[str]) -> int | None:
        document = json.loads(manifest)
        try:
            if self._table is None:
                rows = await self._publish_parquet(folder, document)
            else:
                rows = await self._publish_commit(self._table, folder, document)
        except OSError as exc:
            raise OutputError.from_os_error(exc, folder) from None
        except (OutputError, RetryableError, IntegrityError, UsageError):
            raise
        except Exception as exc:
            if self._table is None:
                raise
            translated = self._table.translate(exc, f"{self._inner}/{folder.split('/')[0]}")
            if translated is None:
                raise
            raise translated from None
        await anyio.to_thread.run_sync(
            lambda: shutil.rmtree(self._staging / folder, ignore_errors=True))
        return rows

    # --- what the destination holds ---------------------------------------------------------

    async def listing(self, prefix: str) -> dict[str, dict[str, Stored]]:
        found = await self._inner.listing(prefix)
        staged = await anyio.to_thread.run_sync(_walk, self._staging, prefix)
        for folder, files in staged.items():
            found.setdefault(folder, {}).update(files)
        if self._table is not None:
            for data_type in self._types_under(prefix):
                units = await anyio.to_thread.run_sync(self._done, data_type)
                for folder, summary in units.items():
                    if folder.startswith(prefix.rstrip("/")) or f"{folder}/".startswith(prefix):
                        files = found.setdefault(folder, {})
                        files[MARKER] = Stored(0)
                        files[MANIFEST] = Stored(len(json.dumps(summary)))
        return found

    async def remove(self, folder: str, names: set[str]) -> None:
        # The raw parts the state recorded are staged here; the table's own files are
        # replaced by the unit's commit (a table) or its manifest (Parquet).
        await LocalFolder(self._staging).remove(folder, names)

    async def create(self, path: str, data: bytes) -> bool:
        return await self._inner.create(path, data)

    async def read(self, path: str) -> bytes:
        folder, _, name = path.rpartition("/")
        if self._table is not None and name == MANIFEST:
            data_type = folder.split("/", 1)[0]
            units = await anyio.to_thread.run_sync(self._done, data_type)
            if folder not in units:
                raise FileNotFoundError(path)
            files = (await anyio.to_thread.run_sync(self._table_files, data_type)).get(
                folder.split("/", 1)[1], [])
            return json.dumps(_as_manifest(units[folder], files)).encode()
        return await self._inner.read(path)

    async def check(self, path: str, part: ManifestPart, listed: Stored, *,
                    deep: bool) -> None:
        await self._inner.check(path, part, listed, deep=deep)
        if deep and part.rows is not None and isinstance(self._settings.out, Path):
            rows = await anyio.to_thread.run_sync(_parquet_rows, self._settings.out / path)
            if rows != part.rows:
                raise IntegrityError(f"{self._settings.out / path}: {rows} rows, "
                                     f"{part.rows} in the manifest")

    def hold(self, settings: Settings) -> contextlib.AbstractAsyncContextManager[str | None]:
        return self._inner.hold(settings)

    async def place(self, path: str, file: Path) -> Stored:
        return await self._inner.place(path, file)

    # --- parquet -----------------------------------------------------------------------------

    async def _publish_parquet(self, folder: str, document: dict[str, Any]) -> int:
        sources = [ManifestPart(**p) for p in document["parts"]]
        data_type = document["data_type"]
        unit = await anyio.to_thread.run_sync(self._schema, folder, data_type, sources)
        schema = unit.arrow()
        parts: list[dict[str, Any]] = []
        for source in sources:
            name = source.file.replace(".csv.gz", ".parquet")
            written = await self._convert(folder, source, name, schema, None, None)
            parts.append({"file": name, "size": written.size, "md5": written.md5,
                          "rows": written.rows, "source": source.source,
                          "source_md5": source.md5, "source_size": source.size})
        rows: int = sum(p["rows"] for p in parts)
        typed = {**document, "format": "parquet", "rows": rows, "parts": parts}
        await self._inner.publish(folder, json.dumps(typed, indent=2).encode() + b"\n",
                                  {p["file"] for p in parts})
        return rows

    def _schema(self, folder: str, data_type: str, sources: list[ManifestPart]) -> UnitSchema:
        return UnitSchema.of(data_type, [header(self._staging / folder / s.file)
                                         for s in sources])

    async def _convert(self, folder: str, source: ManifestPart, name: str,
                       schema: pa.Schema, partitions: dict[str, str] | None,
                       table: TableFormat | None) -> Written:
        """One verified part converted (one of :data:`CONVERSIONS` at a time) and placed
        at ``<folder>/<name>``."""
        temp = self._staging / folder / partial_name(name)
        async with self._converting:
            rows, md5, size = await anyio.to_thread.run_sync(lambda: write_parquet(
                self._staging / folder / source.file, temp, schema, partitions=partitions,
                shown=f"{self._inner}/{folder}/{source.file}"))
            stats = await anyio.to_thread.run_sync(table.stats, temp) if table else {}
        try:
            await self._inner.place(f"{folder}/{name}", temp)
        finally:
            temp.unlink(missing_ok=True)
        return Written(name, size, rows, md5, stats)

    # --- delta, iceberg ----------------------------------------------------------------------

    async def _publish_commit(self, table: TableFormat, folder: str,
                              document: dict[str, Any]) -> int:
        """The unit's files, then its commit (see :mod:`.commits`); returns its rows."""
        data_type = document["data_type"]
        sources = [ManifestPart(**p) for p in document["parts"]]
        unit = await anyio.to_thread.run_sync(self._schema, folder, data_type, sources)
        partitions = partitions_of(folder)
        written: list[Written] = []
        schema: pa.Schema | None = None
        attempt = uuid.uuid4().hex[:12]
        for tries in range(1, COMMIT_ATTEMPTS + 1):
            try:
                prepared = await anyio.to_thread.run_sync(table.prepare, data_type, unit,
                                                          partitions)
                if schema is None or not prepared.schema.equals(schema, check_metadata=True):
                    await self._discard(folder, written)
                    schema, written = prepared.schema, []
                    for index, source in enumerate(sources):
                        written.append(await self._convert(
                            folder, source, f"part-{index:05d}-{attempt}-{tries}.parquet",
                            schema, partitions if table.partitions_in_files else None,
                            table))
                summary = _summary(document, table.format, sources, written)
                # A part without rows adds no file (Iceberg could not tell its partition).
                await anyio.to_thread.run_sync(functools.partial(
                    table.commit, prepared, data_type, folder, partitions,
                    [f for f in written if f.rows], summary))
            except Conflict as exc:
                if tries == COMMIT_ATTEMPTS:
                    await self._discard(folder, written)
                    raise RetryableError(f"{self._inner}/{folder}: {tries} commits lost to "
                                         f"other writers ({exc})") from None
                await anyio.sleep(random.uniform(0.05, 0.2) * tries)
                continue
            except (IntegrityError, OutputError, OSError):
                await self._discard(folder, written)  # nothing committed: ours, unused
                raise
            await self._discard(folder, [f for f in written if not f.rows])
            self._units.setdefault(data_type, {})[folder] = summary
            if data_type in self._files:
                self._files[data_type][folder.split("/", 1)[1]] = [
                    {"file": f.name, "size": f.size, "rows": f.rows} for f in written
                    if f.rows]
            return sum(f.rows for f in written)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _discard(self, folder: str, written: list[Written]) -> None:
        """Files of an attempt that did not commit: ours, and referenced by nothing."""
        if written:
            with contextlib.suppress(OSError, OutputError):
                await self._inner.remove(folder, {f.name for f in written})

    def _done(self, data_type: str) -> dict[str, dict[str, Any]]:
        """The unit folders whose latest commit in the type's table is ours; read once."""
        if data_type not in self._units:
            assert self._table is not None
            found: dict[str, dict[str, Any]] = {}
            for summary in self._table.units(data_type):
                folder = self._unit_folder(summary)
                if folder is not None and folder.startswith(f"{data_type}/"):
                    found.setdefault(folder, summary)
            self._units[data_type] = found
        return self._units[data_type]

    def _table_files(self, data_type: str) -> dict[str, list[dict[str, Any]]]:
        if data_type not in self._files:
            assert self._table is not None
            self._files[data_type] = self._table.files(data_type)
        return self._files[data_type]

    def _unit_folder(self, document: dict[str, Any]) -> str | None:
        from backfill.keys import Key
        from backfill.layout import key_folder

        try:
            key = Key.parse(str(document["key"]))
        except (KeyError, ValueError):
            return None
        return str(key_folder(self._settings.layout, key, str(document["data_type"])))

    def _types_under(self, prefix: str) -> list[str]:
        first = prefix.split("/", 1)[0]
        types = self._settings.wanted_types
        return [t for t in types if t == first or (not prefix and t)] or (
            [t for t in types if t.startswith(first)] if "/" not in prefix else [])


def _open_format(settings: Settings) -> TableFormat:
    from backfill.destination.descriptor import CREATION_KEY, Descriptor

    record = {CREATION_KEY: Descriptor.of(settings).to_bytes().decode()}
    if settings.format == "iceberg":
        from backfill.destination.tables.iceberg import IcebergTables

        return IcebergTables(settings, record)
    from backfill.destination.tables.delta import DeltaTables

    root, options = delta_location(settings)
    return DeltaTables(root, options, record)


def delta_location(settings: Settings) -> tuple[str, Callable[[], dict[str, str]]]:
    """Where the Delta tables are, and delta-rs's storage options, current when called
    (S3: the credentials every writer uses, :mod:`backfill.destination.credentials`)."""
    import os

    from backfill.destination.credentials import (
        CREDENTIAL_VARIABLES,
        bucket_endpoint,
        s3_credentials,
    )
    from backfill.destination.object_store import proxy_options

    out = settings.out
    if isinstance(out, Path):
        return str(out.resolve()), dict
    given = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_",
                                                                   "AZURE_"))}
    given.update(proxy_options(settings))  # the parts' proxy, and what bypasses it
    if out.kind != "s3":
        # Names obstore reads from the environment and delta-rs only under its own: the
        # App Service managed identity, a service account file. One identity for both.
        for theirs, ours in (("IDENTITY_ENDPOINT", "AZURE_MSI_ENDPOINT"),
                             ("SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT")):
            if os.environ.get(theirs) and ours not in given:
                given[ours] = os.environ[theirs]
        return out.url, lambda: dict(given)
    # delta-rs's own reading of a profile or a role is not the one the parts get.
    plain = {k: v for k, v in given.items() if k not in CREDENTIAL_VARIABLES}
    if endpoint := bucket_endpoint(settings):
        plain["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            plain["AWS_ALLOW_HTTP"] = "true"
    if (virtual := settings.storage.virtual_hosted_style) is not None:
        plain["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = str(virtual).lower()
    access = s3_credentials(settings.storage.region)
    if access.source is None and not access.keys:  # a role the stores read themselves
        return out.url, lambda: {**given, **plain}
    return out.url, lambda: {**plain, **access.delta()}


def _summary(document: dict[str, Any], fmt: str, sources: list[ManifestPart],
             written: list[Written]) -> dict[str, Any]:
    """What a unit's commit carries: the source parts (MD5, size, link without its query,
    rows), the unit's rows, and the files it added."""
    return {**document, "format": fmt, "rows": sum(f.rows for f in written),
            "parts": [{"file": s.file, "size": s.size, "md5": s.md5, "source": s.source,
                       "rows": f.rows} for s, f in zip(sources, written, strict=True)],
            "files": [{"file": f.name, "size": f.size, "rows": f.rows} for f in written
                      if f.rows]}


def _as_manifest(summary: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
    """A committed unit as a manifest: the data files the table references in its
    partition (what ``verify`` checks: each there, of its size, with its rows)."""
    return {**summary, "sources": summary.get("parts", []),
            "rows": sum(f["rows"] for f in files),
            "parts": [{"file": f["file"], "size": f["size"], "md5": "", "source": "",
                       "rows": f["rows"]} for f in files]}


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)
