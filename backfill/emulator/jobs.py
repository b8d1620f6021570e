"""The export job model: when a key can be produced, how long its job runs, retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from backfill.emulator.config import EmulatorConfig
from backfill.keys import BEIJING, Granularity, Key

LATE_HOURS = frozenset({23, 0, 1})
"""Hours 23:00–02:00 take longer to become exportable."""


class Status(StrEnum):
    FINISHED = "FINISHED"
    RUNNING = "RUNNING"
    NOT_EXISTS = "NOT_EXISTS"
    ERROR = "ERROR"


def producible_at(key: Key, config: EmulatorConfig) -> datetime:
    """The first moment the service can export ``key``."""
    if key.granularity is Granularity.DAY:
        return key.end + config.day_lag
    lag = config.late_hour_lag if key.start.hour in LATE_HOURS else config.hour_lag
    return key.end + lag


def retained(key: Key, now: datetime, retention_days: int) -> bool:
    """Whether ``key``'s data is still kept: produced on day D, kept through D + retention."""
    today = now.astimezone(BEIJING).date()
    return key.date >= today - timedelta(days=retention_days)


@dataclass
class Job:
    finishes: float
    fails: bool
    version: int
    error_reported: bool = False
    started: float = 0.0
    """When its first ask started it (emulated seconds)."""


@dataclass(frozen=True)
class Answer:
    status: Status
    version: int | None = None
    error: str | None = None


JOB_ERROR_MESSAGE = "executor lost, please retry later"


class JobBook:
    """Export jobs by identity (endpoint family, types, project, key)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._config = config
        self._jobs: dict[tuple[str, ...], Job] = {}

    def started(self) -> dict[tuple[str, ...], float]:
        """When each job was started (its first ask), by identity."""
        return {job_id: job.started for job_id, job in self._jobs.items()}

    def answer(self, job_id: tuple[str, ...], key: Key, now: datetime, *,
               can_fail: bool) -> Answer:
        """What the service says about ``key`` at ``now``; the first ask starts the job.

        A failed job answers ERROR once; the next ask starts it again, as a retry would.
        """
        config = self._config
        if not retained(key, now, config.retention_days) or now < producible_at(key, config):
            return Answer(Status.NOT_EXISTS)
        t = now.timestamp()
        job = self._jobs.get(job_id)
        if job is None or job.error_reported:
            fails = can_fail and config.faults.roll("job_error")
            version = 1 if job is None else job.version + 1
            job = self._jobs[job_id] = Job(t + config.job_seconds, fails, version, started=t)
        if t < job.finishes:
            return Answer(Status.RUNNING, job.version)
        if job.fails:
            job.error_reported = True
            return Answer(Status.ERROR, job.version, JOB_ERROR_MESSAGE)
        return Answer(Status.FINISHED, job.version)
