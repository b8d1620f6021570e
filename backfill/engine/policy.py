"""Pure timing decisions: when a key should be ready, what to do with an answer.

No I/O here: ``now`` and random numbers are passed in, so every rule is testable alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from backfill.config import Settings
from backfill.keys import BEIJING, Granularity, Key, key_at

LATE_HOURS = frozenset({23, 0, 1})
NOT_EXISTS_GRACE = {Granularity.HOUR: timedelta(hours=6), Granularity.DAY: timedelta(hours=12)}
"""How long after its expected readiness a NOT_EXISTS is still 'not yet' rather than 'never'."""


def expected_ready(key: Key, settings: Settings) -> datetime:
    """When the service should be able to export ``key`` (documented lags)."""
    if key.granularity is Granularity.DAY:
        return key.end + timedelta(seconds=settings.day_lag)
    late = key.start.hour in LATE_HOURS
    return key.end + timedelta(seconds=settings.late_hour_lag if late else settings.hour_lag)


def longest_lag(granularity: Granularity, settings: Settings) -> timedelta:
    """The longest a key waits after its end to be exportable: a day's lag, or for hours
    the late hours' (:func:`expected_ready`)."""
    if granularity is Granularity.DAY:
        return timedelta(seconds=settings.day_lag)
    return timedelta(seconds=max(settings.hour_lag, settings.late_hour_lag))


def newest_ready(settings: Settings, now: datetime, granularity: Granularity, *,
                 lag: float | None = None) -> Key:
    """The newest key that should be ready at ``now``: ``lag`` seconds after its end, or
    its documented readiness (:func:`expected_ready`). What ``catchup`` fetches up to, and
    what ``status --max-lag`` measures freshness against."""
    key = key_at(now, granularity)
    while not (expected_ready(key, settings) if lag is None
               else key.end + timedelta(seconds=lag)) <= now:
        key = Key(key.start - granularity.step, granularity)
    return key


def beyond_retention(key: Key, now: datetime, retention_days: int) -> bool:
    """Whether the service no longer keeps ``key`` (kept through its day + retention)."""
    return key.date < oldest_kept(now, retention_days)


def oldest_kept(now: datetime, retention_days: int) -> date:
    """The oldest Beijing day the service still keeps."""
    return now.astimezone(BEIJING).date() - timedelta(days=retention_days)


def poll_interval(polls: int, settings: Settings, typical_job: float | None = None) -> float:
    """Wait before asking again about a RUNNING job: grows by half each time, capped.

    The first wait stretches to ``typical_job`` (how long this run's jobs took so far):
    asking earlier would only hear RUNNING again and spend the API budget for nothing.
    """
    wait = settings.poll_interval * 1.5 ** min(polls, 40)
    if polls == 0 and typical_job is not None:
        wait = max(wait, typical_job)
    return min(settings.max_poll_interval, wait)


def typical(durations: list[float]) -> float | None:
    """The median of the job durations seen so far, once there are a few."""
    if len(durations) < 3:
        return None
    ordered = sorted(durations)
    return ordered[len(ordered) // 2]


class Next(StrEnum):
    DOWNLOAD = "download"
    WAIT = "wait"
    FAIL = "fail"
    GONE = "gone"


@dataclass(frozen=True)
class Decision:
    action: Next
    delay: float = 0.0
    reason: str = ""


def decide(status: str, key: Key, now: datetime, *, polls: int, errors: int,
           error_message: str | None, settings: Settings,
           typical_job: float | None = None) -> Decision:
    """What to do after an export answer for ``key`` (``polls``/``errors`` so far)."""
    if status == "FINISHED":
        return Decision(Next.DOWNLOAD)
    if status == "RUNNING":
        return Decision(Next.WAIT, poll_interval(polls, settings, typical_job),
                        "export job running")
    if status == "ERROR":
        message = error_message or "no message"
        if errors > settings.error_retries:
            return Decision(Next.FAIL, reason=f"export job failed: {message}")
        return Decision(Next.WAIT, settings.error_retry_delay, f"export job failed: {message}")
    if status == "NOT_EXISTS":
        if beyond_retention(key, now, settings.retention_days):
            return Decision(Next.GONE, reason="beyond the export retention")
        ready = expected_ready(key, settings)
        if now > ready + NOT_EXISTS_GRACE[key.granularity]:
            return Decision(Next.FAIL, reason="NOT_EXISTS long after it should be ready: "
                                              "is raw-data export enabled for this date?")
        wait = max((ready - now).total_seconds(), settings.not_ready_interval)
        return Decision(Next.WAIT, wait, "not exportable yet")
    return Decision(Next.FAIL, reason=f"unknown export status {status!r}")


def fit_wait(wait: float, remaining: float, *, asked: bool, last_look: bool
             ) -> tuple[float, bool, bool]:
    """Fit the next wait into what is left of ``--max-wait``: (wait, last look, give up).

    A poll planned past the deadline becomes one last look at the deadline, so a job that
    finishes inside the allowed wait is never abandoned for want of a question. A key
    never asked (its data is not due by then) and a key that had its last look give up.
    """
    if wait <= remaining:
        return wait, last_look, False
    if not asked or last_look or remaining <= 0:
        return wait, last_look, True
    return remaining, True, False
