"""How fresh an output is, per data type: its watermark, and how far that is behind what
should be ready now. Pure: what the destination holds and ``now`` are passed in.

The watermark of a type is the end of the newest key K such that every key from the
type's first one up to K is complete at the destination: a hole holds it back, however
much is complete after the hole, until the hole is filled. A key beyond GrowingIO's
retention (gone: it can never be filled) is stepped over. A type's first key is the
configured ``start``, else the oldest key the destination or the state knows of that type.
For the hour key 2026-12-03T05 (Beijing) the watermark is 2026-12-03T06:00+08:00.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from backfill.keys import Granularity, Key


@dataclass(frozen=True)
class Freshness:
    """One data type's freshness: ``complete_to`` (None when its first key is not
    complete, or nothing is known of it), against ``due``, the newest key that should be
    ready now."""

    data_type: str
    first: Key | None
    complete_to: Key | None
    due: Key

    @property
    def watermark(self) -> datetime | None:
        return self.complete_to.end if self.complete_to is not None else None

    @property
    def lag(self) -> float:
        """Seconds from the watermark to the end of the key due (0 when it is complete;
        infinite when nothing is complete)."""
        if self.watermark is None:
            return float("inf")
        return max((self.due.end - self.watermark).total_seconds(), 0.0)

    def behind(self, now: datetime) -> float | None:
        """Seconds from the watermark to ``now``."""
        return (now - self.watermark).total_seconds() if self.watermark else None

    def to_json(self, now: datetime) -> dict[str, object]:
        return {"first": self.first.name if self.first else None,
                "complete_to": self.complete_to.name if self.complete_to else None,
                "watermark": self.watermark.isoformat() if self.watermark else None,
                "watermark_seconds": self.watermark.timestamp() if self.watermark else None,
                "due": self.due.name,
                "lag_seconds": None if self.watermark is None else self.lag,
                "behind_seconds": self.behind(now)}


def freshness(types: Iterable[str], granularity: Granularity,
              complete: Iterable[tuple[str, str]], known: Iterable[tuple[str, str]],
              due: Key, start: Key | None = None,
              gone: Iterable[tuple[str, str]] = ()) -> list[Freshness]:
    """Each type's :class:`Freshness`, from the (key name, type) pairs ``complete`` at the
    destination, those ``known`` to the state (of any status) and those ``gone``, for
    keys of ``granularity``."""
    width = len(due.name)
    skipped: dict[str, set[str]] = {}
    for name, data_type in gone:
        skipped.setdefault(data_type, set()).add(name)
    done: dict[str, set[str]] = {}
    first: dict[str, str] = {}
    for pairs, counted in ((complete, True), (known, False)):
        for name, data_type in pairs:
            if len(name) != width:  # the other granularity's keys
                continue
            if counted:
                done.setdefault(data_type, set()).add(name)
            if data_type not in first or name < first[data_type]:
                first[data_type] = name
    found = []
    for data_type in types:
        begin = start or (Key.parse(first[data_type]) if data_type in first else None)
        found.append(Freshness(data_type, begin,
                               frontier(done.get(data_type, set()), begin, granularity,
                                        skipped.get(data_type, set())),
                               due))
    return found


def frontier(complete: set[str], first: Key | None, granularity: Granularity,
             gone: set[str] | frozenset[str] = frozenset()) -> Key | None:
    """The newest key K in ``complete`` (names) with every key from ``first`` to K in
    ``complete`` or ``gone``."""
    newest, key = None, first
    while key is not None and (key.name in complete or key.name in gone):
        if key.name in complete:
            newest = key
        key = Key(key.start + granularity.step, granularity)
    return newest
