"""Deterministic event data: gzip CSV parts per data type and Beijing hour.

Parts are generated once into a data folder (a thread's work: this module is
blocking) and then served from disk. The same seed, project and settings always
give byte-identical parts, so tests can compare downloads with the source.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import random
import tempfile
import zlib
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import IO

from backfill.emulator.protocol import COLUMNS, JSON_COLUMNS, TIME_COLUMNS
from backfill.keys import Granularity, Key

GENERATOR_VERSION = 2

# Relative volume of each type; the ads tables are sparse and often empty.
WEIGHTS = {
    "visit": 1.0, "page": 2.0, "action": 3.0, "action_tag": 0.6, "custom_event": 1.5,
    "pvar": 0.8, "evar": 0.4, "vstr": 0.3, "custom_attr": 0.8,
    "ads_track_activation": 0.05, "ads_track_click": 0.1,
}  # fmt: skip

# Traffic by Beijing hour of day: quiet nights, busy evenings.
_DAY_CURVE = (
    0.5, 0.3, 0.2, 0.15, 0.15, 0.2, 0.35, 0.6, 0.9, 1.0, 1.05, 1.1,
    1.1, 1.05, 1.0, 1.0, 1.05, 1.1, 1.2, 1.35, 1.4, 1.3, 1.0, 0.75,
)  # fmt: skip

_PLATFORMS = ("Web", "iOS", "Android", "MinP")
_DOMAINS = ("www.example.com", "m.example.com", "com.example.shop")
_PAGES = ("/", "/search", "/product/detail", "/cart", "/checkout", "/user/profile", "/help")
_EVENTS = ("addToCart", "purchase", "share", "signUp", "videoPlay", "couponClaim")
_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0",
)
_JSON_COLUMNS = JSON_COLUMNS
_TIME_COLUMNS = TIME_COLUMNS


@dataclass(frozen=True)
class PartFile:
    """One generated part on disk."""

    path: Path
    size: int
    md5: str


@dataclass(frozen=True)
class DataSettings:
    seed: int
    bytes_per_hour: int
    part_size: int
    compress_level: int
    flat: bool = False
    """Benchmarks: exactly ``bytes_per_hour`` per type and hour, rows recycled for speed."""
    keep_rows: bool = False
    """Keep the values of every row beside its part (``DataStore.rows``), for the tests that
    compare a table with what was generated rather than with a parse of the CSV."""
    drift: frozenset[str] = frozenset()
    """Hour keys whose parts drift from the documented columns: one more column
    (``extraColumn``) and one less (the second documented one)."""
    long_field: int = 0
    """Now and then a text field this long (a megabyte and more tests the readers)."""

    @property
    def fingerprint(self) -> str:
        text = f"{GENERATOR_VERSION}:{self.seed}:{self.bytes_per_hour}:{self.part_size}:"
        text += f"{self.compress_level}:{self.flat}:{self.keep_rows}:{sorted(self.drift)}:"
        text += f"{self.long_field}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "backfill" / "emulator-data"


class DataStore:
    """Generates parts on first use and remembers them; all methods block."""

    def __init__(self, root: Path, settings: DataSettings) -> None:
        self.settings = settings
        self.root = root / settings.fingerprint

    def parts(self, ai: str, data_type: str, hour: Key) -> list[PartFile]:
        """The parts of one data type in one Beijing hour, generating them if needed."""
        if hour.granularity is not Granularity.HOUR:
            raise ValueError("parts are generated per hour")
        folder = self.root / ai / data_type / hour.name
        index = folder / "index.json"
        if index.exists():
            entries = json.loads(index.read_text())
            return [PartFile(folder / e["name"], e["size"], e["md5"]) for e in entries]
        folder.mkdir(parents=True, exist_ok=True)
        parts = self._generate(folder, ai, data_type, hour)
        entries = [{"name": p.path.name, "size": p.size, "md5": p.md5} for p in parts]
        _atomic_write(index, json.dumps(entries).encode())
        return parts

    def _generate(self, folder: Path, ai: str, data_type: str, hour: Key) -> list[PartFile]:
        s = self.settings
        rng = random.Random(f"{s.seed}:{ai}:{data_type}:{hour.name}")
        weight = WEIGHTS[data_type]
        if s.flat:
            target: float = s.bytes_per_hour
        elif weight < 0.2 and rng.random() < 0.5:
            return []  # sparse tables have empty hours: a FINISHED answer with no links
        else:
            target = s.bytes_per_hour * weight * _DAY_CURVE[hour.start.hour] * rng.uniform(0.7, 1.3)
        rows = _RowMaker(rng, data_type, hour, recycle=s.flat,
                         drift=hour.name in s.drift, long_field=s.long_field)
        parts: list[PartFile] = []
        total = 0
        while total < target:
            path = folder / f"part-{len(parts):05d}.csv.gz"
            rows.kept = [] if s.keep_rows else None
            part = _write_part(path, rows, s, budget=int(target - total))
            if rows.kept is not None:
                _atomic_write(path.with_suffix(".rows.json"),
                              json.dumps([list(rows.columns), *rows.kept]).encode())
            parts.append(part)
            total += part.size
        return parts

    def rows(self, ai: str, data_type: str, hour: Key) -> tuple[tuple[str, ...],
                                                                 list[list[str]]]:
        """The header and the values of every row of one type and hour, in order, as they
        were generated (needs ``keep_rows``)."""
        header: tuple[str, ...] = ()
        values: list[list[str]] = []
        for part in self.parts(ai, data_type, hour):
            kept = json.loads(part.path.with_suffix(".rows.json").read_text())
            header, values = tuple(kept[0]), values + kept[1:]
        return header, values


def _write_part(path: Path, rows: _RowMaker, s: DataSettings, budget: int) -> PartFile:
    """Write rows into one gzip part of about ``budget`` bytes, at most about ``part_size``.

    Streams to a temporary file beside ``path`` so that a part is never held in memory
    whole and a crash never leaves a half-written part under its final name.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=s.compress_level,
                               mtime=0) as gz:
                _fill(gz, raw, rows, s.part_size, budget)
            size = raw.tell()
        md5 = _md5_of(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return PartFile(path, size, md5)


def _fill(gz: gzip.GzipFile, raw: IO[bytes], rows: _RowMaker, part_size: int,
          budget: int) -> None:
    """Add batches until ``budget`` bytes are reached or one more would pass ``part_size``."""
    # A sync flush after each batch makes raw.tell() the true compressed size so far.
    gz.write(rows.header())
    gz.flush(zlib.Z_SYNC_FLUSH)
    batch_rows, last_batch = 64, 0
    while raw.tell() < budget and raw.tell() + last_batch <= part_size:
        before = raw.tell()
        gz.write(rows.batch(batch_rows))
        gz.flush(zlib.Z_SYNC_FLUSH)
        last_batch = raw.tell() - before
        if last_batch * 4 > part_size and batch_rows > 1:
            batch_rows //= 2  # tiny parts (tests) need fine steps to stay near their size


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _RowMaker:
    """Plausible rows for one data type and hour; times are UTC epoch milliseconds."""

    def __init__(self, rng: random.Random, data_type: str, hour: Key, *,
                 recycle: bool = False, drift: bool = False, long_field: int = 0) -> None:
        self.rng = rng
        self.recycle = recycle
        self.long_field = long_field
        self.batches: list[bytes] = []
        self.kept: list[list[str]] | None = None
        columns = COLUMNS[data_type]
        if drift:  # the vendor added a column and dropped one
            columns = (columns[0], *columns[2:], "extraColumn") if len(columns) > 2 else (
                *columns, "extraColumn")
        self.columns = columns
        start = hour.start.astimezone(UTC)
        self.t0 = int(start.timestamp() * 1000)
        self.span = int(timedelta(hours=1).total_seconds() * 1000)
        self.users = [self._hex(16) for _ in range(64)]

    def header(self) -> bytes:
        return self._encode([list(self.columns)])

    def batch(self, count: int) -> bytes:
        if self.recycle and len(self.batches) >= 64:
            # 64 distinct batches span more than deflate's 32 KB window: no false gain.
            return self.batches[self.rng.randrange(64)]
        rows = [self._row() for _ in range(count)]
        if self.kept is not None:
            self.kept.extend(rows)
        data = self._encode(rows)
        if self.recycle:
            self.batches.append(data)
        return data

    @staticmethod
    def _encode(rows: list[list[str]]) -> bytes:
        out = io.StringIO()
        # The documented dialect: ',' separator, '"' quote, '\' escape.
        writer = csv.writer(out, quotechar='"', escapechar="\\", doublequote=False,
                            lineterminator="\n")
        writer.writerows(rows)
        return out.getvalue().encode()

    def _row(self) -> list[str]:
        t = self.t0 + self.rng.randrange(self.span)
        return [self._value(column, t) for column in self.columns]

    def _hex(self, n: int) -> str:
        return f"{self.rng.getrandbits(n * 4):0{n}x}"

    def _value(self, column: str, t: int) -> str:
        rng = self.rng
        if column in _TIME_COLUMNS:
            return str(t + (rng.randrange(3000) if column == "sendTime" else 0))
        if column in _JSON_COLUMNS:
            keys = rng.sample(("color", "size", "campaign", "level", "tab", "note", "城市"), 2)
            values = {k: rng.choice(('red', 'XL', 'spring "sale"', 'a,b', '3', 'x\\y',
                                     '北京 "旗舰店"', 'line\nbreak', ''))
                      for k in keys}
            return json.dumps(values, ensure_ascii=False)
        if self.long_field and column == "userAgent" and rng.random() < 0.02:
            return "L" * self.long_field
        if column == "visitUserId":
            return rng.choice(self.users)
        if column.endswith(("Id", "RequestId")) or column in ("idfa", "imei", "uuid", "IMEI"):
            return self._hex(16)
        if column == "platform":
            return rng.choice(_PLATFORMS)
        if column == "domain":
            return rng.choice(_DOMAINS)
        if column in ("page", "referrerPage", "href"):
            return rng.choice(_PAGES)
        if column == "eventName":
            return rng.choice(_EVENTS)
        if column == "userAgent":
            return rng.choice(_AGENTS)
        if column == "ip":
            return f"203.0.113.{rng.randrange(1, 255)}"  # documentation range
        if column in ("screenHeight", "screenWidth", "index"):
            return rng.choice((str(rng.randrange(1, 4000)), ""))  # an empty one is a null
        if column == "eventNumber":
            return rng.choice((str(rng.randrange(1, 2000)), f"{rng.uniform(0, 500):.2f}", ""))
        if column in ("latitude", "longitude"):
            return f"{rng.uniform(-90, 90):.5f}"
        if column == "queryParameters":
            return rng.choice(("", "utm_source=newsletter&utm_medium=email", "q=shoes"))
        if column == "title":
            return rng.choice(("Home", "Search results", "Cart, 3 items", "Help & FAQ",
                               'He said "hi"', "two\nlines", "back\\slash", "商品详情"))
        return rng.choice(("", "a", "b", "zh-CN", "en-US", "v1.2.3", "phone", "portrait",
                           "00123", "NULL", "NA", "x,y"))
