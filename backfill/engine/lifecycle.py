"""The life of one key, pure: given where a key stands, what just happened and the time,
what to do next. The scheduler drives it for every key of a run; the Airflow trigger
drives the same code for the keys it waits on. Neither decides anything of its own.

A key starts (:func:`start`), then each step answers an event with an action:

- :class:`Ask` the export API now; its answer goes to :func:`answered`;
- :class:`Wait` until a moment (its data is not exportable yet, its job is ``RUNNING`` or
  failed, or a bad download backs off), then :func:`woke`;
- :class:`Download` the links of a ``FINISHED`` answer; a download that fails goes to
  :func:`download_failed` (expired links are asked for again at once, bad bytes or a
  broken line after a backoff, within ``retries``);
- :class:`End` with a status: done, failed, gone, or not ready when ``--max-wait`` ran out.

Waiting for readiness ends ``max_wait`` after the run's start. A key already due then,
whose first answer came later (a long range spends hours on the call budget alone), waits
``max_wait`` from that answer: its job deserves what an early one gets. A wait planned past
the deadline becomes one last look at the deadline, so a job that finishes inside the
allowed wait is never abandoned for want of a question.

Times are wall-clock seconds (``Clock.time()``): a deadline also holds across an Airflow
deferral, from one process to another.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from backfill.config import Settings
from backfill.engine.policy import Next, decide, expected_ready, fit_wait, poll_interval
from backfill.keys import Key
from backfill.model import Status
from backfill.net.retry import RetryPolicy


@dataclass(frozen=True)
class Life:
    """Where one key stands."""

    key: Key
    deadline: float
    """When waiting for readiness ends (wall-clock seconds)."""
    late_start: bool
    """Due at the start: its deadline counts from its first answer."""
    polls: int = 0
    """``RUNNING`` answers so far."""
    errors: int = 0
    """``ERROR`` answers so far."""
    refreshes: int = 0
    """Downloads that failed and asked for fresh links."""
    asked: bool = False
    last_look: bool = False
    status: str | None = None
    """Of the last answer."""
    running_since: float | None = None


@dataclass(frozen=True)
class Ask:
    """Ask the export API about the key now."""


@dataclass(frozen=True)
class Wait:
    """Ask again at ``until``; ``job``: an export job runs (or failed), else the data is
    not exportable yet or a download backs off."""

    until: float
    job: bool = False


@dataclass(frozen=True)
class Download:
    """Fetch the links of the ``FINISHED`` answer just given."""


@dataclass(frozen=True)
class End:
    status: Status
    reason: str | None = None


Action = Ask | Wait | Download | End


@dataclass(frozen=True)
class Step:
    """A key's next state and action; ``job_seconds``: how long its job ran, when this
    answer was the ``FINISHED`` after its first ``RUNNING`` (the run learns the pace)."""

    life: Life
    action: Action
    job_seconds: float | None = None


def start(key: Key, settings: Settings, now: float, run_deadline: float) -> Step:
    """A key's first step: ask now if it is due, else wait until it should be."""
    ready = expected_ready(key, settings).timestamp()
    life = Life(key, run_deadline, late_start=ready <= now)
    return _after(life, ready - now, now, job=False)


def resume(key: Key, settings: Settings, now: float, deadline: float, *,
           asked_at: float) -> Step:
    """A key another process asked at ``asked_at`` and heard not ready from (an Airflow
    worker, before it deferred): its job is started, so it is asked again one poll after
    that, not at once."""
    ready = expected_ready(key, settings).timestamp()
    if ready > asked_at:  # it was not due then: it was not asked
        return start(key, settings, now, deadline)
    life = Life(key, deadline, late_start=False, polls=1, asked=True, status="RUNNING",
                running_since=asked_at)
    return _after(life, asked_at + poll_interval(0, settings) - now, now, job=True)


def woke(life: Life, now: float) -> Step:
    """The wait is over: ask."""
    return Step(life, Ask())


def answered(life: Life, status: str, error: str | None, now: float, *, settings: Settings,
             typical_job: float | None = None) -> Step:
    """The export API answered ``status`` (with ``error``, for ``ERROR``)."""
    deadline = life.deadline
    if life.late_start and not life.asked:
        deadline = max(deadline, now + settings.max_wait)
    job_seconds = None
    running_since = life.running_since
    if status == "RUNNING" and running_since is None:
        running_since = now
    elif status == "FINISHED" and running_since is not None and not life.refreshes:
        job_seconds = now - running_since
    life = replace(life, deadline=deadline, asked=True, status=status,
                   errors=life.errors + (status == "ERROR"), running_since=running_since)
    decision = decide(status, life.key, datetime.fromtimestamp(now, UTC), polls=life.polls,
                      errors=life.errors, error_message=error, settings=settings,
                      typical_job=typical_job)
    if decision.action is Next.DOWNLOAD:
        return Step(life, Download(), job_seconds)
    if decision.action is Next.FAIL:
        return Step(life, End(Status.FAILED, decision.reason), job_seconds)
    if decision.action is Next.GONE:
        return Step(life, End(Status.GONE, decision.reason), job_seconds)
    life = replace(life, polls=life.polls + (status == "RUNNING"))
    return _after(life, decision.delay, now, job=status != "NOT_EXISTS", seconds=job_seconds)


def download_failed(life: Life, *, expired: bool, reason: str, now: float,
                    policy: RetryPolicy) -> Step:
    """A download of the links failed: fresh links at once when they expired, after a
    backoff when the bytes were bad or the line broke; the key fails once ``retries``
    refreshes are spent. The data is ready: ``--max-wait`` (a wait for readiness) does not
    cut this short."""
    life = replace(life, refreshes=life.refreshes + 1)
    if policy.gives_up(life.refreshes):
        return Step(life, End(Status.FAILED, reason))
    if expired:
        return Step(life, Ask())
    return Step(life, Wait(now + policy.delay(life.refreshes)))


def _after(life: Life, wait: float, now: float, *, job: bool,
           seconds: float | None = None) -> Step:
    """Ask after ``wait`` seconds, fitted into what is left before the deadline."""
    if wait <= 0:
        return Step(life, Ask(), seconds)
    fitted, last_look, give_up = fit_wait(wait, life.deadline - now, asked=life.asked,
                                          last_look=life.last_look)
    if give_up:
        what = "export job still running" if life.polls else "not exportable yet"
        return Step(life, End(Status.NOT_READY,
                              f"{what} when --max-wait ran out; run again later"), seconds)
    return Step(replace(life, last_look=last_look), Wait(now + fitted, job=job), seconds)
