"""What the state says, without a single API call: per key, by state, as a calendar.

The JSON document (``backfill status --json``) has this shape::

    {
      "out": "data", "api": "v2",
      "keys": {"total": 48, "done": 45, "failed": 2, "gone": 0, "not_ready": 1,
               "active": 0, "pending": 0},
      "bytes": 123456,
      "first": "2026112000", "last": "2026112123",
      "problems": [{"key": "2026112007", "data_type": "visit", "status": "failed",
                    "attempts": 2, "error": "..."}],
      "freshness": {"visit": {"first": "2026112000", "complete_to": "2026112106",
                              "watermark": "2026-11-21T07:00:00+08:00",
                              "watermark_seconds": 1795734000.0, "due": "2026112123",
                              "lag_seconds": 61200.0, "behind_seconds": 63000.0}}
    }

A key's state is the worst of its data types' states.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backfill.model import Status, UnitRecord
from backfill.state.freshness import Freshness

# Worst first: a key shows the worst state of its types.
SEVERITY = (Status.FAILED, Status.GONE, Status.NOT_READY, Status.ACTIVE, Status.PENDING,
            Status.DONE)


@dataclass
class StatusReport:
    out: str
    api: str
    keys: dict[str, Status] = field(default_factory=dict)
    bytes: int = 0
    problems: list[UnitRecord] = field(default_factory=list)
    running: bool = False
    """A run holds the output now: its active units are being fetched. Without one, an
    active unit is one a run left when it was stopped: interrupted."""
    freshness: list[Freshness] = field(default_factory=list)
    """Each wanted type's watermark (:mod:`backfill.state.freshness`)."""
    now: datetime | None = None

    def counts(self) -> Counter[Status]:
        return Counter(self.keys.values())

    def word(self, status: Status) -> str:
        """How a status reads: ``not ready``; ``interrupted`` for an active unit that no
        run holds."""
        if status is Status.ACTIVE and not self.running:
            return "interrupted"
        return status.value.replace("_", " ")

    def to_json(self) -> dict[str, Any]:
        counts = self.counts()
        names = sorted(self.keys)
        return {
            "out": self.out,
            "api": self.api,
            "keys": {"total": len(self.keys)} | {s.value: counts[s] for s in SEVERITY},
            "running": self.running,
            "bytes": self.bytes,
            "first": names[0] if names else None,
            "last": names[-1] if names else None,
            "problems": [{"key": u.key, "data_type": u.data_type,
                          "status": self.word(u.status).replace(" ", "_"),
                          "attempts": u.attempts, "error": u.last_error}
                         for u in self.problems],
            "freshness": {f.data_type: f.to_json(self.now) for f in self.freshness
                          if self.now is not None},
        }


def summarize(units: list[UnitRecord], out: str, api: str,
              wanted: set[str] | None = None, *, running: bool = False) -> StatusReport:
    """Fold units into keys (optionally only the ``wanted`` key names); ``running``: a run
    holds the output now."""
    report = StatusReport(out, api, running=running)
    per_key: dict[str, list[Status]] = defaultdict(list)
    for unit in units:
        if wanted is not None and unit.key not in wanted:
            continue
        per_key[unit.key].append(unit.status)
        if unit.status is Status.DONE:
            report.bytes += unit.bytes
        elif unit.status is not Status.PENDING:
            report.problems.append(unit)
    report.keys = {key: min(states, key=SEVERITY.index) for key, states in per_key.items()}
    return report
