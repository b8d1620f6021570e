"""Export keys: one Beijing-time day or hour, and the pure arithmetic on them.

GrowingIO names exports by Beijing time (UTC+8, no daylight saving), so every
key here is an aware ``datetime`` in that fixed zone. Nothing in this module
does I/O; ``now`` is always passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import StrEnum
from functools import cached_property

from backfill.errors import UsageError

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
V2_TYPES = (  # the data types of GrowingIO's v2 API, as documented
    "visit", "page", "action", "action_tag", "custom_event", "ads_track_activation",
    "ads_track_click", "pvar", "evar", "vstr",
)  # fmt: skip


class Granularity(StrEnum):
    DAY = "day"
    HOUR = "hour"

    @property
    def step(self) -> timedelta:
        return timedelta(days=1) if self is Granularity.DAY else timedelta(hours=1)


@dataclass(frozen=True, order=True)
class Key:
    """One export period: a Beijing day (00:00–24:00) or hour."""

    start: datetime
    granularity: Granularity

    def __post_init__(self) -> None:
        if self.start.utcoffset() != BEIJING.utcoffset(None):
            raise ValueError(f"key start must be in Beijing time, got {self.start!r}")
        if self.start != truncate(self.start, self.granularity):
            raise ValueError(f"key start {self.start!r} is not aligned to a {self.granularity}")

    @classmethod
    def parse(cls, name: str) -> Key:
        """Parse an API key name: ``YYYYMMDD`` (day) or ``YYYYMMDDHH`` (hour)."""
        if not name.isascii() or not name.isdigit() or len(name) not in (8, 10):
            raise ValueError(f"not a key name: {name!r}")
        granularity = Granularity.DAY if len(name) == 8 else Granularity.HOUR
        hour = int(name[8:10]) if granularity is Granularity.HOUR else 0
        start = datetime(int(name[:4]), int(name[4:6]), int(name[6:8]), hour, tzinfo=BEIJING)
        return cls(start, granularity)

    @cached_property  # asked for at every state write and progress line
    def name(self) -> str:
        """``YYYYMMDD`` or ``YYYYMMDDHH``: the v1 date and the state-store name."""
        fmt = "%Y%m%d" if self.granularity is Granularity.DAY else "%Y%m%d%H"
        return self.start.strftime(fmt)

    @property
    def export_date(self) -> str:
        """``yyyyMMddHHmm``, the v2 ``export_date``."""
        return self.start.strftime("%Y%m%d%H%M")

    @property
    def end(self) -> datetime:
        return self.start + self.granularity.step

    @property
    def date(self) -> date:
        return self.start.date()

    @property
    def hour(self) -> int | None:
        return self.start.hour if self.granularity is Granularity.HOUR else None

    def hours(self) -> list[Key]:
        """The hour keys this key covers (itself for an hour key)."""
        if self.granularity is Granularity.HOUR:
            return [self]
        return expand(Key(self.start, Granularity.HOUR), Key(self.end - timedelta(hours=1),
                                                              Granularity.HOUR))

    def __str__(self) -> str:
        return self.name


def truncate(moment: datetime, granularity: Granularity) -> datetime:
    """The start of the Beijing day or hour that contains ``moment``."""
    local = moment.astimezone(BEIJING)
    local = local.replace(minute=0, second=0, microsecond=0)
    return local.replace(hour=0) if granularity is Granularity.DAY else local


def key_at(moment: datetime, granularity: Granularity) -> Key:
    """The key whose period contains ``moment``."""
    return Key(truncate(moment, granularity), granularity)


def expand(first: Key, last: Key) -> list[Key]:
    """Every key from ``first`` to ``last`` inclusive, in order."""
    if first.granularity is not last.granularity:
        raise ValueError("both ends of a range need the same granularity")
    step = first.granularity.step
    count = (last.start - first.start) // step + 1
    return [Key(first.start + i * step, first.granularity) for i in range(max(count, 0))]


def parse_export_date(text: str, granularity: Granularity) -> Key:
    """Parse a v2 ``export_date``: ``yyyyMMddHHmm``; shorter forms are accepted too.

    Only the part that matters for ``granularity`` counts, as the API documents.
    Raises ``ValueError`` for anything that is not a real date.
    """
    needed = 8 if granularity is Granularity.DAY else 10
    if not text.isascii() or not text.isdigit() or len(text) not in (8, 10, 12):
        raise ValueError(f"not an export date: {text!r}")
    if len(text) < needed:
        raise ValueError(f"{text!r} is too short for a {granularity} export")
    if len(text) == 12 and not 0 <= int(text[10:12]) < 60:
        raise ValueError(f"bad minute in {text!r}")
    return Key.parse(text[:needed])


_RELATIVE = re.compile(r"^-(\d{1,6})([dh])$")
_FORMATS = (
    ("%Y-%m-%dT%H", Granularity.HOUR),
    ("%Y%m%d%H", Granularity.HOUR),
    ("%Y-%m-%d", Granularity.DAY),
    ("%Y%m%d", Granularity.DAY),
)
EARLIEST, LATEST = date(2000, 1, 1), date(2099, 12, 31)
DATE_FORMS = "YYYY-MM-DD, YYYYMMDD, YYYY-MM-DDTHH, YYYYMMDDHH, today, yesterday, -7d or -36h"


def parse_bound(text: str, granularity: Granularity, *, now: datetime, end: bool) -> Key:
    """Parse one end of a user's range into a key of ``granularity``.

    A day given for an hourly range means its first hour (``end=False``) or its
    last hour (``end=True``). An hour given for a daily range means its day.
    Raises :class:`UsageError` with the accepted forms when ``text`` is not a date.
    """
    try:
        moment, given = _parse_moment(text.strip(), now)
    except OverflowError:
        moment, given = datetime.min.replace(tzinfo=BEIJING), Granularity.DAY
    if not EARLIEST <= moment.date() <= LATEST:
        raise UsageError(f"date {text!r} is out of range ({EARLIEST:%Y} to {LATEST:%Y})")
    if given is Granularity.DAY and granularity is Granularity.HOUR and end:
        moment = moment + timedelta(hours=23)
    return key_at(moment, granularity)


def date_form(text: str) -> tuple[Granularity, bool]:
    """The unit a date is written in (``2026-11-30T15`` an hour, ``2026-11-30`` a day,
    ``-36h`` hours, ``-7d`` and ``today`` days) and whether it is relative to now.

    Raises :class:`UsageError` with the accepted forms when ``text`` is not a date.
    """
    lowered = text.strip().lower()
    if lowered in ("today", "yesterday"):
        return Granularity.DAY, True
    if match := _RELATIVE.match(lowered):
        return (Granularity.DAY if match[2] == "d" else Granularity.HOUR), True
    for fmt, given in _FORMATS:
        try:
            parsed = datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
        if len(text.strip()) == len(parsed.strftime(fmt)):
            return given, False
    raise UsageError(f"invalid date {text!r}: use {DATE_FORMS} (Beijing time)")


def _parse_moment(text: str, now: datetime) -> tuple[datetime, Granularity]:
    local_now = now.astimezone(BEIJING)
    lowered = text.lower()
    if lowered in ("today", "yesterday"):
        back = 0 if lowered == "today" else 1
        return truncate(local_now, Granularity.DAY) - timedelta(days=back), Granularity.DAY
    if match := _RELATIVE.match(lowered):
        amount, unit = int(match[1]), match[2]
        if unit == "d":
            return truncate(local_now, Granularity.DAY) - timedelta(days=amount), Granularity.DAY
        return truncate(local_now, Granularity.HOUR) - timedelta(hours=amount), Granularity.HOUR
    for fmt, given in _FORMATS:
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        if len(text) == len(parsed.strftime(fmt)):  # strptime accepts "2026-1-5"; we do not
            return parsed.replace(tzinfo=BEIJING), given
    raise UsageError(f"invalid date {text!r}: use {DATE_FORMS} (Beijing time)")


@dataclass(frozen=True)
class Shard:
    """Shard ``k`` of ``n`` (1-based, as in ``--shard 2/4``): every n-th key in time.

    A key belongs to one shard by its own position in time, not by its place in a range:
    the split is disjoint and covering, the same whatever range (or catchup window) is
    asked, and each shard gets old and recent keys alike, so shards finish together.
    """

    k: int
    n: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` with 1 ≤ K ≤ N; raises ``ValueError`` otherwise."""
        k, sep, n = text.strip().partition("/")
        if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
            raise ValueError(f"{text!r} is not K/N with 1 <= K <= N")
        return cls(int(k), int(n))

    def holds(self, key: Key) -> bool:
        number = int((key.start - _EPOCH) // key.granularity.step)
        return number % self.n == self.k - 1

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    @property
    def slug(self) -> str:
        return f"shard-{self.k}-of-{self.n}"


_EPOCH = datetime(2000, 1, 1, tzinfo=BEIJING)
