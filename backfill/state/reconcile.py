"""The destination is the truth: bring the local state (a cache) in line with its markers.

A unit whose folder holds ``_SUCCESS`` (and its manifest) is done, whatever the cache
says: another machine, a shard, or a run whose cache was lost (an ephemeral CI runner)
finished it. A unit the cache calls done whose folder has no ``_SUCCESS`` any more is
fetched again.

Cost: one listing (a LIST call per 1,000 objects) per data type and month of the keys,
and only of the units the cache does not know to be done; so a no-op rerun lists
nothing, and a fresh runner pays a few calls per type and month, never one per key.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio

from backfill.config import Settings
from backfill.destination import Destination, Stored
from backfill.destination.descriptor import Descriptor
from backfill.keys import Granularity, Key
from backfill.layout import MANIFEST, MARKER, folder_key, key_folder, literal_prefix
from backfill.model import Status
from backfill.state.store import Store, has_state

LISTINGS_AT_ONCE = 8


@dataclass(frozen=True)
class Unit:
    key: Key
    data_type: str
    folder: str


def listing_prefixes(units: Iterable[Unit]) -> list[str]:
    """The prefixes to list for ``units``: one per data type and month, as narrow as the
    units' folders allow (a single folder is listed alone). Pure."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for unit in units:
        groups[(unit.data_type, unit.key.start.strftime("%Y%m"))].append(unit.folder)
    prefixes = set()
    for folders in groups.values():
        # By character, not by path segment: "visit/dt=2026-11-" lists one month.
        common = os.path.commonprefix(folders)  # noqa: RUF071
        prefixes.add(common + "/" if len(set(folders)) == 1 else common)
    return sorted(prefixes)


def complete(files: dict[str, Stored] | None) -> bool:
    return files is not None and MARKER in files and MANIFEST in files


async def reconcile(store: Store, destination: Destination, settings: Settings,
                    keys: list[Key] | None) -> int:
    """Record as done every unit of ``keys`` (every unit the destination holds, when
    None) that the destination shows complete; returns how many changed."""
    if keys is None:
        listed = await _list_all(destination, settings)
        done = [(u, files) for u, files in listed if complete(files)]
        undone: list[Unit] = []
    else:
        done, undone = await _list_units(store, destination, settings, keys)
    rows = [(u.key.name, u.data_type, *_count(files)) for u, files in done]
    gone = [(u.key.name, u.data_type) for u in undone]
    if rows or gone:
        await anyio.to_thread.run_sync(store.adopt, settings.api, rows, gone)
    return len(rows) + len(gone)


async def finished(destination: Destination, settings: Settings, keys: list[Key] | None
                   ) -> dict[tuple[str, str], tuple[int, int]]:
    """What the destination shows complete, as {(key, data_type): (parts, bytes)}, for
    ``keys`` (everything it holds when None). Read-only: the cache is not touched."""
    if keys is None:
        listed = await _list_all(destination, settings)
    else:
        units = [Unit(k, t, str(key_folder(settings.layout, k, t)))
                 for k in keys for t in settings.wanted_types]
        listing = await _listings(destination, listing_prefixes(units))
        listed = [(u, listing.get(u.folder, {})) for u in units]
    return {(u.key.name, u.data_type): _count(files) for u, files in listed if complete(files)}


async def _list_units(store: Store, destination: Destination, settings: Settings,
                      keys: list[Key]) -> tuple[list[tuple[Unit, dict[str, Stored]]], list[Unit]]:
    known = await anyio.to_thread.run_sync(store.statuses, settings.api, [k.name for k in keys])
    pairs = [(k, t) for k in keys for t in settings.wanted_types]

    def unit(key: Key, data_type: str) -> Unit:
        return Unit(key, data_type, str(key_folder(settings.layout, key, data_type)))

    # Folders only for what the cache does not know: a no-op rerun of a year costs none.
    unknown = [unit(k, t) for k, t in pairs if known.get((k.name, t)) is not Status.DONE]
    if not unknown:
        return [], []
    prefixes = listing_prefixes(unknown)
    listing = await _listings(destination, prefixes)
    done = [(u, listing[u.folder]) for u in unknown if complete(listing.get(u.folder))]
    # Units the cache calls done are judged too when a listing covered their folder.
    cached = (unit(k, t) for k, t in pairs if known.get((k.name, t)) is Status.DONE)
    undone = [u for u in cached if any(u.folder.startswith(p) for p in prefixes)
              and not complete(listing.get(u.folder))]
    return done, undone


async def _list_all(destination: Destination, settings: Settings
                    ) -> list[tuple[Unit, dict[str, Stored]]]:
    prefixes = {literal_prefix(settings.layout, t): t for t in settings.wanted_types}
    listing = await _listings(destination, sorted(prefixes))
    found = []
    for folder, files in listing.items():
        for data_type in settings.wanted_types:
            # Hour folders and day folders alike: what the destination holds decides.
            key = (folder_key(settings.layout, data_type, folder, Granularity.HOUR)
                   or folder_key(settings.layout, data_type, folder, Granularity.DAY))
            if key is not None:
                found.append((Unit(key, data_type, folder), files))
    return found


async def _listings(destination: Destination, prefixes: list[str]
                    ) -> dict[str, dict[str, Stored]]:
    merged: dict[str, dict[str, Stored]] = {}
    slots = anyio.CapacityLimiter(LISTINGS_AT_ONCE)

    async def one(prefix: str) -> None:
        async with slots:
            for folder, files in (await destination.listing(prefix)).items():
                merged.setdefault(folder, {}).update(files)

    async with anyio.create_task_group() as group:
        for prefix in prefixes:
            group.start_soon(one, prefix)
    return merged


def _count(files: dict[str, Stored]) -> tuple[int, int]:
    parts = [f.size for name, f in files.items() if name.startswith("part-")]
    return len(parts), sum(parts)


async def recognise(destination: Destination, settings: Settings) -> Descriptor | None:
    """What an output of an earlier version, with no record, holds, as this machine's state
    tells it: the API and granularity of its keys, and the format a done unit's manifest
    names. None when the state knows nothing."""

    folder = settings.state_folder
    if not await anyio.to_thread.run_sync(has_state, folder):
        return None
    units = await anyio.to_thread.run_sync(_state_units, folder)
    if not units:
        return None
    apis = {api for api, _, _, _ in units}
    widths = {len(key) for _, key, _, _ in units}
    api = apis.pop() if len(apis) == 1 else None
    granularity = (Granularity.HOUR if widths == {10} else Granularity.DAY if widths == {8}
                   else None)
    fmt = None
    done = next(((k, t) for a, k, t, s in units if s is Status.DONE), None)
    if done is not None:
        path = f"{key_folder(settings.layout, Key.parse(done[0]), done[1])}/{MANIFEST}"
        try:
            manifest = json.loads(await destination.read(path))
            fmt = manifest.get("format", "csv") if isinstance(manifest, dict) else None
        except (FileNotFoundError, ValueError):
            fmt = None
    return Descriptor(fmt, api, granularity, None)


def _state_units(folder: Path) -> list[tuple[str, str, str, Status]]:
    store = Store(folder)
    try:
        return [(u.api, u.key, u.data_type, u.status) for u in store.units()]
    finally:
        store.close()

