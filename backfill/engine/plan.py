"""The plan: which keys need work, which are done, gone or not due. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from backfill.config import Settings
from backfill.engine.policy import beyond_retention, expected_ready
from backfill.keys import Key
from backfill.model import Status


@dataclass(frozen=True)
class KeyTask:
    """One key and the data types of it still to fetch."""

    key: Key
    types: tuple[str, ...]
    force: bool = False
    """Fetch every part again, even those already on disk."""


@dataclass(frozen=True)
class Plan:
    tasks: list[KeyTask] = field(default_factory=list)
    done: list[Key] = field(default_factory=list)
    """Every wanted type already fetched: skipped without any call."""
    gone: list[Key] = field(default_factory=list)
    """Beyond the retention: the service no longer has them."""
    not_due: list[Key] = field(default_factory=list)
    """Not exportable before the run would stop waiting (``max_wait``)."""

    @property
    def total(self) -> int:
        return len(self.tasks) + len(self.done) + len(self.gone) + len(self.not_due)


def make_plan(keys: list[Key], settings: Settings, known: dict[tuple[str, str], Status],
              now: datetime, *, force: bool = False) -> Plan:
    """Sort ``keys`` by what they need, given the units already ``known`` to the state."""
    plan = Plan()
    horizon = now + timedelta(seconds=settings.max_wait)
    for key in keys:
        wanted = tuple(t for t in settings.wanted_types
                       if force or known.get((key.name, t)) is not Status.DONE)
        if not wanted:
            plan.done.append(key)
        elif beyond_retention(key, now, settings.retention_days):
            plan.gone.append(key)
        elif expected_ready(key, settings) > horizon:
            plan.not_due.append(key)
        else:
            plan.tasks.append(KeyTask(key, wanted, force))
    return plan
