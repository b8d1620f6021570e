"""What an output is: its format, API, granularity and layout.

Recorded when the output is first written, as ``_backfill.json`` at its root (created
only if absent, so two shards cannot record two different things), and read by every
command before it plans, lists, verifies or writes anything. A command that does not say
(no ``--format``, no ``--granularity``…) takes what the output records; one that
contradicts it, by a flag, the config file or an argument, is refused with one line
(exit 2). So a Delta output is always looked at as Delta, and raw parts never land
inside a table.

Outputs written before the record existed are recognised from what they hold: a Delta
log under a type's folder, the keys and API of the local state, the format a manifest
names. What cannot be told stays unknown and is taken from the command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from backfill.config import declared
from backfill.errors import UsageError
from backfill.keys import Granularity

if TYPE_CHECKING:
    from backfill.config import Settings
    from backfill.destination import Destination

DESCRIPTOR = "_backfill.json"
RECORDED = tuple(name for name, what in declared().items() if what.recorded)
"""The settings an output records (declared so in :mod:`backfill.config`)."""
CREATION_KEY = "backfill.output"
"""Where a Delta table's creation commit carries the record too."""
FORMAT_WORDS = {"csv": "raw parts", "parquet": "Parquet files", "delta": "Delta tables",
                "iceberg": "Iceberg tables"}


@dataclass(frozen=True)
class Descriptor:
    """What an output holds; ``None`` where an output written before the record existed
    does not tell."""

    format: str | None = None
    api: str | None = None
    granularity: Granularity | None = None
    layout: str | None = None
    iceberg_catalog: str | None = None
    """An Iceberg output's catalog (``""``: the embedded one); None for the others."""
    iceberg_namespace: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> Descriptor:
        iceberg = settings.format == "iceberg"
        return cls(settings.format, settings.api, settings.granularity, settings.layout,
                   settings.iceberg_catalog if iceberg else None,
                   settings.iceberg_namespace if iceberg else None)

    def to_bytes(self) -> bytes:
        document: dict[str, Any] = {
            "written_by": "backfill", "version": 1, "format": self.format, "api": self.api,
            "granularity": _value(self.granularity), "layout": self.layout}
        if self.iceberg_namespace is not None:
            document["iceberg"] = {"catalog": self.iceberg_catalog,
                                   "namespace": self.iceberg_namespace}
        return json.dumps(document, indent=2).encode() + b"\n"

    @classmethod
    def parse(cls, data: bytes) -> Descriptor:
        """Raises ``ValueError`` for a document that is not one of ours."""
        try:
            found = json.loads(data)
            if not isinstance(found, dict) or found.get("written_by") != "backfill":
                raise ValueError("not written by backfill")
            granularity = found.get("granularity")
            iceberg = found.get("iceberg") or {}
            if not isinstance(iceberg, dict):
                raise TypeError("iceberg is not an object")
            return cls(_text(found.get("format")), _text(found.get("api")),
                       Granularity(granularity) if granularity else None,
                       _text(found.get("layout")), _text(iceberg.get("catalog")),
                       _text(iceberg.get("namespace")))
        except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(str(exc)) from None

    def describe(self) -> str:
        """``delta tables of the v2 API, hourly keys``: for messages."""
        words = [FORMAT_WORDS.get(self.format or "", "data")]
        if self.api:
            words.append(f"of the {self.api} API")
        if self.granularity is not None:
            words.append(f"{'hourly' if self.granularity is Granularity.HOUR else 'daily'} "
                         "keys")
        return ", ".join([" ".join(words[:2]), *words[2:]])

    def known(self) -> bool:
        return any(getattr(self, name) is not None for name in RECORDED)


def _value(granularity: Granularity | None) -> str | None:
    return granularity.value if granularity is not None else None


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def settle(settings: Settings, recorded: Descriptor | None) -> Settings:
    """``settings`` with what the output records wherever the command did not say; pure.

    Raises :class:`UsageError` when the command (a flag, the config file, an argument)
    contradicts the record: one line naming what the output holds and what to do.
    """
    if recorded is None or not recorded.known():
        return settings
    changes: dict[str, Any] = {}
    sources = dict(settings.sources)
    for name in RECORDED:
        have, want = getattr(recorded, name), getattr(settings, name)
        if have is None or have == want:
            continue
        given = settings.sources.get(name)
        if given is not None:
            raise UsageError(f"{settings.out} holds {recorded.describe()}, but "
                             f"{_said(name, want, given)} says otherwise: leave it out to use "
                             f"what the output holds, or give another --out for a new one")
        changes[name] = have
        sources[name] = "the output"
    if not changes:
        return settings
    return replace(settings, **changes, sources=sources)


def _said(name: str, value: Any, source: str) -> str:
    shown = getattr(value, "value", value)
    if source.startswith("flag"):
        return f"--{name.replace('_', '-')} {shown}"
    if source.startswith("argument"):
        return f"{name}={shown!r}"
    return f"{name} = {shown!r} in {source}"


async def read(destination: Destination, settings: Settings) -> Descriptor | None:
    """What the output records, or what its tables say when it records nothing (an output
    of an earlier version), or None (see :func:`backfill.state.reconcile.recognise` for
    what the local state can tell then)."""
    try:
        data = await destination.read(DESCRIPTOR)
    except FileNotFoundError:
        return await _recognise(destination, settings)
    try:
        return Descriptor.parse(data)
    except ValueError as exc:
        raise UsageError(f"{settings.out}/{DESCRIPTOR} is not backfill's record of the "
                         f"output ({exc}); move it away if it is not ours") from None


async def record(destination: Destination, settings: Settings) -> None:
    """Record what ``settings`` write, unless the output records it already; raises
    :class:`UsageError` when another writer recorded something else in the meantime."""
    wanted = Descriptor.of(settings)
    if await destination.create(DESCRIPTOR, wanted.to_bytes()):
        return
    settle(settings, Descriptor.parse(await destination.read(DESCRIPTOR)))  # may raise


async def _recognise(destination: Destination, settings: Settings) -> Descriptor | None:
    """An output written before the record existed: a Delta log under a type's folder."""
    from backfill.keys import V2_TYPES

    for data_type in V2_TYPES:
        found = await _delta_table(destination, data_type)
        if found is not None:
            return found
    return None


async def _delta_table(destination: Destination, data_type: str) -> Descriptor | None:
    """What the Delta table in ``data_type``'s folder says of the output: the record its
    creation commit carries, else its partition columns; None when there is no table."""
    log = f"{data_type}/_delta_log/"
    try:
        first = await destination.read(f"{log}{0:020d}.json")
    except FileNotFoundError:
        listed = await destination.listing(log)
        return Descriptor("delta", "v2") if listed else None
    partitions: list[str] = []
    for line in first.splitlines():
        try:
            action = json.loads(line)
        except ValueError:
            continue
        if not isinstance(action, dict):
            continue
        record = (action.get("commitInfo") or {}).get(CREATION_KEY)
        if isinstance(record, str):
            try:
                return Descriptor.parse(record.encode())
            except ValueError:
                pass
        metadata = action.get("metaData")
        if isinstance(metadata, dict):
            partitions = [str(c) for c in metadata.get("partitionColumns") or []]
    hourly = Granularity.HOUR if "hour" in partitions else Granularity.DAY
    return Descriptor("delta", "v2", hourly if partitions else None)
