"""``backfill verify``: check finished units in the destination against their manifests.

A damaged unit (no marker, a part missing, resized, altered, or not gzip to its end)
loses its ``_SUCCESS`` and is marked failed in the state, with what was wrong, so that
the next ``run`` fetches it again. A unit that could not be checked (the store did not
answer, a file could not be read) is reported as such and marked nothing.

On a local folder every part is read (length, MD5, gzip framing); on an object store its
size and ETag, from one listing of its folder, are compared without reading it. A table
output is checked as a table: a Delta unit's files are those its log references, with
their sizes (and their rows with ``deep``).
``deep`` reads every part and inflates its gzip stream, wherever it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from backfill.config import Settings
from backfill.destination import Destination
from backfill.destination.manifest import parse
from backfill.errors import IntegrityError, OutputError, RemoteError
from backfill.keys import Key
from backfill.layout import MANIFEST, MARKER, key_folder
from backfill.model import Status
from backfill.state.store import Store

UNITS_AT_ONCE = 8


@dataclass
class VerifyReport:
    checked: int = 0
    parts: int = 0
    damaged: dict[str, str] = field(default_factory=dict)
    """``"key type"`` → what is wrong."""
    unchecked: dict[str, str] = field(default_factory=dict)
    """``"key type"`` → why it could not be checked (nothing was marked)."""


async def verify(store: Store, destination: Destination, settings: Settings,
                 keys: list[Key] | None, *, deep: bool = False) -> VerifyReport:
    """Check every done unit of ``settings.api`` (within ``keys`` when given)."""
    wanted = {k.name for k in keys} if keys is not None else None
    report = VerifyReport()
    units = [u for u in await anyio.to_thread.run_sync(store.units, settings.api)
             if u.status is Status.DONE and (wanted is None or u.key in wanted)]
    slots = anyio.CapacityLimiter(UNITS_AT_ONCE)

    async def one(key: str, data_type: str) -> None:
        async with slots:
            folder = str(key_folder(settings.layout, Key.parse(key), data_type))
            try:
                problem = await _check_folder(destination, folder, report, deep)
            except _Unchecked as exc:
                report.unchecked[f"{key} {data_type}"] = str(exc)
                return
        report.checked += 1
        if problem:
            report.damaged[f"{key} {data_type}"] = problem
            # Readers must stop trusting it, and the destination (the truth) says so too.
            await destination.withdraw(folder)
            await anyio.to_thread.run_sync(store.mark_damaged, settings.api, key, data_type,
                                           problem)

    async with anyio.create_task_group() as group:
        for unit in units:
            group.start_soon(one, unit.key, unit.data_type)
    report.damaged = dict(sorted(report.damaged.items()))
    report.unchecked = dict(sorted(report.unchecked.items()))
    return report


class _Unchecked(Exception):
    """What verify could not read: not evidence of damage."""


async def _check_folder(destination: Destination, folder: str, report: VerifyReport,
                        deep: bool) -> str | None:
    shown = f"{destination}/{folder}"
    try:
        parts = parse(await destination.read(f"{folder}/{MANIFEST}"))
        listed = (await destination.listing(f"{folder}/")).get(folder, {})
    except FileNotFoundError:
        return f"no {MANIFEST} in {shown}"
    except ValueError:
        return f"{shown}/{MANIFEST} is not a manifest of backfill's"
    except (OSError, RemoteError, OutputError) as exc:
        raise _Unchecked(f"could not read {shown}: {exc}") from None
    if MARKER not in listed:
        return f"no {MARKER} in {shown}"
    for part in parts:
        if part.file not in listed:
            return f"{shown}/{part.file} is missing"
        try:
            await destination.check(f"{folder}/{part.file}", part, listed[part.file],
                                    deep=deep)
        except FileNotFoundError:
            return f"{shown}/{part.file} is missing"
        except IntegrityError as exc:
            return str(exc)
        except (OSError, RemoteError, OutputError) as exc:
            raise _Unchecked(f"could not read {shown}/{part.file}: {exc}") from None
        report.parts += 1
    return None
