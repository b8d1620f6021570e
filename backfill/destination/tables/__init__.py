"""Typed tables as a destination (``--format parquet|delta``), over a folder or a bucket.

Parts are downloaded as for ``csv``, verified, into a local staging folder beside the
state (so they resume with ``Range`` even for a bucket). When a unit's parts are all
there, the unit is converted (:mod:`backfill.destination.tables.convert`) and committed in one step:

- ``parquet``: ``part-NNNNN.parquet`` for each source part in the unit's Hive folder, then
  ``_manifest.json`` (each file's size, MD5 and rows, the source part's MD5, size and link,
  the unit's rows), then ``_SUCCESS``: the commit order of the raw parts.
- ``delta``: ``<out>/<type>/`` is a Delta Lake table partitioned by ``dt`` (and ``hour``);
  version 0 creates it with the type's documented columns; then each unit is one commit
  that replaces exactly its partition, and carries its manifest in the commit's metadata
  (``backfill.unit``, ``backfill.manifest``). The table's log is the truth: a unit whose
  latest commit is ours is done, for a fresh runner too.

The scheduler sees only a destination: parts, a unit's publish, listings and manifests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from backfill.destination import Destination, Stored
from backfill.destination.descriptor import CREATION_KEY, Descriptor
from backfill.destination.local import LocalFolder, LocalPart, _walk
from backfill.destination.tables.convert import UnitSchema, batches, header
from backfill.errors import IntegrityError, OutputError, RetryableError, UsageError
from backfill.layout import MANIFEST, MARKER
from backfill.model import ManifestPart

if TYPE_CHECKING:
    from backfill.config import Settings

UNIT = "backfill.unit"
MANIFEST_KEY = "backfill.manifest"
REMOVED = "backfill.removed"



class TableDestination:
    """Parquet files or Delta commits per unit, over ``inner`` (a folder or a bucket)."""

    def __init__(self, inner: Destination, fmt: str, settings: Settings) -> None:
        from backfill.config import DEFAULT_LAYOUT

        if fmt == "delta" and settings.layout != DEFAULT_LAYOUT:
            raise UsageError("--format delta keeps one table per data type, partitioned by dt "
                             f"and hour: it takes the default layout, not {settings.layout!r}")
        self._inner = inner
        self._format = fmt
        self._settings = settings
        self._staging = settings.state_folder / "staging"
        self._commits: dict[str, dict[str, dict[str, Any]]] = {}
        """Per data type: the unit folders its Delta log shows done, with their manifests."""
        self._shaping: dict[str, threading.Lock] = {}
        """Per data type: held while the type's table is created."""

    def __str__(self) -> str:
        return str(self._inner)

    # --- parts are staged locally ----------------------------------------------------------

    def part(self, path: str) -> LocalPart:
        return LocalPart(self._staging / path)

    async def unpublish(self, folder: str) -> None:
        if self._format == "parquet":
            await self._inner.unpublish(folder)
        # Delta: the commit that rewrites a unit replaces its partition atomically; readers
        # see the old rows until then, and the new ones after.

    async def withdraw(self, folder: str) -> None:
        """A unit found damaged: no longer done at the destination either."""
        if self._format == "parquet":
            await self._inner.unpublish(folder)
            return
        await anyio.to_thread.run_sync(self._remove_partition, folder)

    async def publish(self, folder: str, manifest: bytes, names: set[str]) -> None:
        from deltalake.exceptions import DeltaError, SchemaMismatchError

        document = json.loads(manifest)
        try:
            if self._format == "parquet":
                await self._publish_parquet(folder, document)
            else:
                await anyio.to_thread.run_sync(self._commit, folder, document)
        except OSError as exc:
            raise OutputError.from_os_error(exc, folder) from None
        except SchemaMismatchError as exc:
            raise OutputError(f"{self._inner}/{folder.split('/', 1)[0]}: the Delta table's "
                              f"schema does not take these rows ({_first_line(exc)})") from None
        except DeltaError as exc:  # the store said no, or lost the commit: try again
            raise RetryableError(f"could not commit {folder} to the Delta table: "
                                 f"{_first_line(exc)}") from None
        await anyio.to_thread.run_sync(
            lambda: shutil.rmtree(self._staging / folder, ignore_errors=True))

    # --- what the destination holds ---------------------------------------------------------

    async def listing(self, prefix: str) -> dict[str, dict[str, Stored]]:
        found = await self._inner.listing(prefix)
        staged = await anyio.to_thread.run_sync(_walk, self._staging, prefix)
        for folder, files in staged.items():
            found.setdefault(folder, {}).update(files)
        if self._format == "delta":
            for data_type in self._types_under(prefix):
                committed = await anyio.to_thread.run_sync(self._committed, data_type)
                for folder, document in committed.items():
                    if folder.startswith(prefix.rstrip("/")) or f"{folder}/".startswith(prefix):
                        files = found.setdefault(folder, {})
                        files[MARKER] = Stored(0)
                        files[MANIFEST] = Stored(len(json.dumps(document)))
        return found

    async def remove(self, folder: str, names: set[str]) -> None:
        # The raw parts the state recorded are staged here; the table's own files are
        # replaced by the unit's commit (Delta) or its manifest (Parquet).
        await LocalFolder(self._staging).remove(folder, names)

    async def create(self, path: str, data: bytes) -> bool:
        return await self._inner.create(path, data)

    async def read(self, path: str) -> bytes:
        folder, _, name = path.rpartition("/")
        if self._format == "delta" and name == MANIFEST:
            data_type = folder.split("/", 1)[0]
            committed = await anyio.to_thread.run_sync(self._committed, data_type)
            if folder in committed:
                return json.dumps(committed[folder]).encode()
            raise FileNotFoundError(path)
        return await self._inner.read(path)

    async def check(self, path: str, part: ManifestPart, listed: Stored, *,
                    deep: bool) -> None:
        await self._inner.check(path, part, listed, deep=deep)
        if deep and part.rows is not None and isinstance(self._settings.out, Path):
            rows = await anyio.to_thread.run_sync(_parquet_rows, self._settings.out / path)
            if rows != part.rows:
                raise IntegrityError(f"{self._settings.out / path}: {rows} rows, "
                                     f"{part.rows} in the manifest")

    def hold(self, settings: Settings) -> contextlib.AbstractAsyncContextManager[None]:
        return self._inner.hold(settings)

    async def place(self, path: str, file: Path) -> Stored:
        return await self._inner.place(path, file)

    # --- parquet -----------------------------------------------------------------------------

    async def _publish_parquet(self, folder: str, document: dict[str, Any]) -> None:
        sources = [ManifestPart(**p) for p in document["parts"]]
        data_type = document["data_type"]
        schema = await anyio.to_thread.run_sync(self._schema, folder, data_type, sources)
        parts: list[dict[str, Any]] = []
        for source in sources:
            staged = self._staging / folder / source.file
            name = source.file.replace(".csv.gz", ".parquet")
            temp = staged.with_name(f".{name}.partial")
            rows, md5, size = await anyio.to_thread.run_sync(
                _write_parquet, staged, temp, schema, f"{self._inner}/{folder}/{source.file}")
            await self._inner.place(f"{folder}/{name}", temp)
            parts.append({"file": name, "size": size, "md5": md5, "rows": rows,
                          "source": source.source, "source_md5": source.md5,
                          "source_size": source.size})
        typed = {**document, "format": "parquet", "rows": sum(p["rows"] for p in parts),
                 "parts": parts}
        await self._inner.publish(folder, json.dumps(typed, indent=2).encode() + b"\n",
                                  {p["file"] for p in parts})

    def _schema(self, folder: str, data_type: str, sources: list[ManifestPart]) -> UnitSchema:
        return UnitSchema.of(data_type, [header(self._staging / folder / s.file)
                                         for s in sources])

    # --- delta -------------------------------------------------------------------------------

    def _commit(self, folder: str, document: dict[str, Any]) -> None:
        """One Delta commit that replaces the unit's partition with its rows."""
        import pyarrow as pa

        data_type, key = document["data_type"], document["key"]
        sources = [ManifestPart(**p) for p in document["parts"]]
        schema = self._schema(folder, data_type, sources)
        partitions = _partitions(folder)
        counts: list[int] = []

        def rows() -> Iterator[pa.RecordBatch]:
            for source in sources:
                count = 0
                for batch in batches(self._staging / folder / source.file, schema,
                                     shown=f"{self._inner}/{folder}/{source.file}",
                                     partitions=partitions):
                    count += batch.num_rows
                    yield batch
                counts.append(count)

        reader = pa.RecordBatchReader.from_batches(schema.arrow(tuple(partitions)), rows())
        summary = {**document, "format": "delta", "parts": [
            {"file": s.file, "size": s.size, "md5": s.md5, "source": s.source}
            for s in sources]}
        # The rows are counted as they stream; the manifest goes into the same commit.
        uri, options = self._table(data_type)
        table = commit_rows(uri, options, reader, partitions, {
            UNIT: f"{key} {data_type}", MANIFEST_KEY: json.dumps(summary)},
            self._shaping.setdefault(data_type, threading.Lock()),
            base=UnitSchema(data_type).arrow(tuple(partitions)),
            shown=f"{self._inner}/{data_type}",
            created={CREATION_KEY: Descriptor.of(self._settings).to_bytes().decode()})
        files = _partition_files(table, partitions)
        done = {**summary, "rows": sum(counts), "files": files,
                "sources": [{**p, "rows": n} for p, n in zip(summary["parts"], counts,
                                                                 strict=False)],
                "parts": [{"file": f["file"], "size": f["size"], "md5": "",
                           "source": "", "rows": f["rows"]} for f in files]}
        self._commits.setdefault(data_type, {})[folder] = done

    def _committed(self, data_type: str) -> dict[str, dict[str, Any]]:
        """The unit folders the type's Delta log shows done (their latest commit is ours
        and not a removal), with their manifests; read once per run."""
        if data_type in self._commits:
            return self._commits[data_type]
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        uri, options = self._table(data_type)
        found: dict[str, dict[str, Any]] = {}
        try:
            table = DeltaTable(uri, storage_options=options)
        except TableNotFoundError:
            self._commits[data_type] = found
            return found
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
            folder = self._unit_folder(document)
            if folder is None:
                continue
            partitions = _partitions(folder)
            files = _partition_files(table, partitions)
            found[folder] = {**document, "rows": sum(f["rows"] for f in files),
                             "parts": [{"file": f["file"], "size": f["size"], "md5": "",
                                        "source": "", "rows": f["rows"]} for f in files]}
        self._commits[data_type] = found
        return found

    def _remove_partition(self, folder: str) -> None:
        from deltalake import CommitProperties, DeltaTable

        data_type = folder.split("/", 1)[0]
        document = self._committed(data_type).get(folder)
        if document is None:
            return
        uri, options = self._table(data_type)
        predicate = " AND ".join(f"{k} = '{v}'" for k, v in _partitions(folder).items())
        DeltaTable(uri, storage_options=options).delete(
            predicate, commit_properties=CommitProperties(custom_metadata={
                UNIT: f"{document['key']} {data_type}", REMOVED: "damaged"}))
        self._commits[data_type].pop(folder, None)

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

    def _table(self, data_type: str) -> tuple[str, dict[str, str]]:
        """The Delta table's URI and storage options (credentials from the environment)."""
        out = self._settings.out
        if isinstance(out, Path):
            return str((out / data_type).resolve()), {}
        options = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_",
                                                                         "AZURE_"))}
        endpoint = self._settings.storage.endpoint or options.get("AWS_ENDPOINT_URL", "")
        if endpoint:
            options["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if self._settings.storage.region:
            options["AWS_REGION"] = self._settings.storage.region
        return f"{out.url}/{data_type}", options


def commit_rows(uri: str, options: dict[str, str], reader: Any, partitions: dict[str, str],
                metadata: dict[str, str], shaping: threading.Lock, *, base: Any,
                shown: str, created: dict[str, str] | None = None) -> Any:
    """Replace the partition ``partitions`` names (``{"dt": "2026-11-20", "hour": "07"}``)
    with the rows of ``reader``, in one commit that carries ``metadata``; the table after.

    Two commits that both create the table lose one's new columns, silently (delta-rs 1.6:
    the second writes its schema over the first's). So a missing table is first created
    empty with ``base`` (the type's documented columns: every process creates the same
    one), one creation at a time in this process, and columns are only ever added to a
    table that exists, where an addition that races another commit fails as a conflict
    (retried). A commit whose columns the table lacks afterwards is retried as well.
    The creation commit carries ``created`` (what the output is: its record).
    """
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from deltalake.exceptions import DeltaError

    columns = set(reader.schema.names)
    predicate = " AND ".join(f"{name} = '{value}'" for name, value in partitions.items())
    if not _table_columns(uri, options):
        with shaping:
            if not _table_columns(uri, options):
                with contextlib.suppress(DeltaError):  # another process created it
                    DeltaTable.create(uri, base, mode="ignore", partition_by=list(partitions),
                                      storage_options=options,
                                      commit_properties=CommitProperties(
                                          custom_metadata=created or {}))
    write_deltalake(uri, reader, partition_by=list(partitions), mode="overwrite",
                    predicate=predicate, schema_mode="merge", storage_options=options,
                    commit_properties=CommitProperties(custom_metadata=metadata))
    table = DeltaTable(uri, storage_options=options)
    if lost := columns - set(table.schema().to_arrow().names):
        raise RetryableError(f"{shown}: a concurrent commit dropped the columns "
                             f"{sorted(lost)} from the table's schema; committing again")
    return table


def _table_columns(uri: str, options: dict[str, str]) -> set[str]:
    """The columns of the Delta table at ``uri`` (none when there is no table yet)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return set(DeltaTable(uri, storage_options=options).schema().to_arrow().names)
    except TableNotFoundError:
        return set()


def _partitions(folder: str) -> dict[str, str]:
    """``visit/dt=2026-11-20/hour=07`` → {"dt": "2026-11-20", "hour": "07"}."""
    return dict(segment.split("=", 1) for segment in folder.split("/")[1:] if "=" in segment)


def _partition_files(table: Any, partitions: dict[str, str]) -> list[dict[str, Any]]:
    """The data files of one partition in the table's current snapshot."""
    import pyarrow as pa

    actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    files = []
    for index, path in enumerate(actions["path"]):
        values = {name: actions.get(f"partition.{name}", [None] * len(actions["path"]))[index]
                  for name in partitions}
        if values == partitions:
            rows = actions.get("num_records", [None] * len(actions["path"]))[index]
            files.append({"file": path.rsplit("/", 1)[-1], "path": path,
                          "size": int(actions["size_bytes"][index]),
                          "rows": int(rows) if rows is not None else 0})
    return sorted(files, key=lambda f: f["file"])


def _write_parquet(source: Path, target: Path, schema: UnitSchema,
                   shown: str) -> tuple[int, str, int]:
    """Convert one verified part into a Parquet file; (rows, MD5, size) of the file."""
    import pyarrow.parquet as pq

    rows = 0
    try:
        with pq.ParquetWriter(target, schema.arrow(), compression="zstd") as writer:
            for batch in batches(source, schema, shown=shown):
                writer.write_batch(batch)
                rows += batch.num_rows
        digest = hashlib.md5()
        with target.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
            os.fsync(f.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return rows, digest.hexdigest(), target.stat().st_size


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
