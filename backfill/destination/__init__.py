"""Where verified parts land: a local folder or an object store, behind one interface.

The scheduler and the downloader do not know which one they write to. Both keep the
same commit order per unit (one key of one data type):

1. parts under their final names — each visible only once whole and verified (a rename
   of a checked temporary file; a completed upload, never an aborted one);
2. ``_manifest.json``;
3. ``_SUCCESS``, strictly last. Fetching a unit again removes ``_SUCCESS`` first.

So a reader that trusts ``_SUCCESS`` never sees a partial unit, and what the destination
holds is the truth: the local state is a cache that :mod:`backfill.state.reconcile` rebuilds
from the markers.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from backfill.transfer.sink import PartSink

if TYPE_CHECKING:
    from backfill.config import Settings
    from backfill.model import ManifestPart


@dataclass(frozen=True)
class Stored:
    """One object of a folder, as a listing shows it."""

    size: int
    etag: str | None = None


class Destination(Protocol):
    """One output: a folder tree of units, addressed by paths relative to its root."""

    def part(self, path: str) -> PartSink:
        """A sink for the part that ends up at ``path``."""

    async def unpublish(self, folder: str) -> None:
        """Remove the unit's ``_SUCCESS``: it is about to be rewritten."""

    async def publish(self, folder: str, manifest: bytes, names: set[str]) -> int | None:
        """Drop the parts the folder's earlier manifest named and ``names`` does not (and
        nothing else: a file backfill did not write is never deleted), then write the
        manifest, then ``_SUCCESS``. Returns the unit's rows for typed output (None for the
        raw parts, whose rows are not counted)."""

    async def remove(self, folder: str, names: set[str]) -> None:
        """Delete the files ``names`` of ``folder`` that backfill wrote there (the state
        recorded them), and their temporary names; absent ones are fine."""

    async def listing(self, prefix: str) -> dict[str, dict[str, Stored]]:
        """Every object under the string ``prefix``, by folder then name: one LIST a page."""

    async def read(self, path: str) -> bytes:
        """A small object's bytes (a manifest); raises ``FileNotFoundError``."""

    async def create(self, path: str, data: bytes) -> bool:
        """Write a small object at ``path`` unless one is there already (atomically: of
        two writers, one creates it); whether this call created it."""

    async def check(self, path: str, part: ManifestPart, listed: Stored, *,
                    deep: bool) -> None:
        """Raise :class:`IntegrityError` unless the part at ``path`` (as its folder's
        listing showed it) still matches its manifest entry; ``deep`` reads and inflates
        it wherever it is."""

    def hold(self, settings: Settings) -> AbstractAsyncContextManager[str | None]:
        """Be this destination's only writer while the context lasts (raise if taken);
        what it gives: None, or the one line saying why the hold cannot keep other writers
        out (a store that ignores conditional writes)."""

    async def place(self, path: str, file: Path) -> Stored:
        """Make a finished local ``file`` visible at ``path`` (it is moved or uploaded)."""

    async def withdraw(self, folder: str) -> None:
        """A unit found damaged: readers and later runs must no longer take it as done."""


def open_root(settings: Settings) -> Destination:
    """The folder or bucket ``settings.out`` names, whatever the format (its record, its
    raw files). Raises :class:`UsageError` for a store that cannot be configured (no
    credentials, a bad endpoint)."""
    if isinstance(settings.out, Path):
        from backfill.destination.local import LocalFolder

        return LocalFolder(settings.out)
    from backfill.destination.object_store import ObjectStore

    return ObjectStore.open(settings)


def open_destination(settings: Settings) -> Destination:
    """The destination ``settings.out`` names, in ``settings.format``. Raises
    :class:`UsageError` for a store that cannot be configured (no credentials, a bad
    endpoint), or a table format without its extra."""
    inner = open_root(settings)
    if settings.format == "csv":
        return inner
    from backfill.destination.tables import TableDestination
    from backfill.destination.tables.convert import require_tables

    require_tables(settings.format)
    return TableDestination(inner, settings.format, settings)
