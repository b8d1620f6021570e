"""The records every layer speaks in: a unit's status, the state's rows, a manifest's
entry, a run's summary; and how they read. Pure: nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from backfill.errors import ExitCode


class Status(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    """Being fetched, or interrupted while being fetched."""
    DONE = "done"
    FAILED = "failed"
    GONE = "gone"
    """Beyond the service's retention: it will never be fetched."""
    NOT_READY = "not_ready"


@dataclass(frozen=True)
class PartRecord:
    index: int
    path: str
    source: str
    size: int | None
    md5: str | None
    done: bool
    offset: int
    etag: str | None
    """The source object's ETag, to resume a download only from the same object."""
    stored_etag: str | None = None
    """The destination's ETag of the stored part (object stores)."""


@dataclass(frozen=True)
class DonePart:
    key: str
    data_type: str
    index: int
    size: int
    md5: str
    stored_etag: str | None = None


@dataclass(frozen=True)
class UnitRecord:
    api: str
    key: str
    data_type: str
    status: Status
    attempts: int
    last_error: str | None
    parts: int
    bytes: int
    updated_at: str


@dataclass(frozen=True)
class ManifestPart:
    file: str
    size: int
    md5: str
    source: str
    """The link the part came from, without its signed query."""
    etag: str | None = None
    """The object store's ETag of the stored part (none on local disk): ``verify`` compares
    it without reading the part."""
    rows: int | None = None
    """Typed output: the rows of the file."""
    source_md5: str | None = None
    """Typed output: the MD5 of the verified source part the file was converted from."""
    source_size: int | None = None


@dataclass
class Summary:
    """The outcome of a run, by key."""

    statuses: Counter[Status] = field(default_factory=Counter)
    problems: dict[str, str] = field(default_factory=dict)
    parts: int = 0
    bytes: int = 0
    api_calls: int = 0
    retries: int = 0
    seconds: float = 0.0
    outage: str | None = None
    """Set when an outage outlived its budget and stopped the run: the one line to show."""
    held_parts: int = 0
    held_bytes: int = 0
    """What the destination holds for the keys asked, done ones included (a rerun that
    fetched nothing still holds them)."""

    outcomes: dict[str, tuple[Status, str]] = field(default_factory=dict)
    """Every key that did not end done: its status and why (``problems``, apart)."""
    type_bytes: Counter[str] = field(default_factory=Counter)
    """``bytes``, by data type."""
    type_rows: Counter[str] = field(default_factory=Counter)
    """Typed output: the rows of the units this run committed, by data type."""

    def add(self, key: str, status: Status, detail: str | None = None) -> None:
        self.statuses[status] += 1
        if detail and status is not Status.DONE:
            self.problems[key] = f"{status.value}: {detail}"
            self.outcomes[key] = (status, detail)

    def to_json(self) -> dict[str, object]:
        """The machine-readable report (``--json``)."""
        return {
            "keys": {status.value: self.statuses[status] for status in Status},
            "parts": self.parts,
            "bytes": self.bytes,
            "api_calls": self.api_calls,
            "retries": self.retries,
            "duration_seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
            "outage": self.outage,
            "held_parts": self.held_parts,
            "held_bytes": self.held_bytes,
            "rows": dict(self.type_rows),
            "problems": self.problems,
        }

    def failure(self) -> str | None:
        """Why the run did not succeed, in one line (None when it did): the outage that
        stopped it, or its keys not complete and why."""
        if self.outage:
            return self.outage
        if not self.problems:
            return None
        problems = "; ".join(f"{k}: {p}" for k, p in sorted(self.problems.items()))
        return f"{keys(len(self.problems))} not complete: {problems}"

    @property
    def exit_code(self) -> int:
        if self.outage or self.statuses[Status.FAILED] or self.statuses[Status.GONE]:
            return ExitCode.FAILED
        if self.statuses[Status.NOT_READY]:
            return ExitCode.NOT_READY
        return ExitCode.OK


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``3 h 10 min``, ``45 min``, ``2 d 3 h``: a span as people say it, to the minute."""
    minutes = max(round(seconds / 60), 0)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    shown = [f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if n]
    return " ".join(shown[:2]) or "0 min"


def plural(count: int, word: str) -> str:
    """``1 key``, ``24 keys``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def keys(count: int) -> str:
    """``1 key``, ``24 keys``."""
    return plural(count, "key")
