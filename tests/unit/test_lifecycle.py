"""A key's lifecycle (:mod:`backfill.engine.lifecycle`), pure: each rule on its own, on
plain numbers for the time."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime

import pytest

from backfill.config import Settings
from backfill.engine import lifecycle
from backfill.engine.lifecycle import Ask, Download, End, Step, Wait
from backfill.engine.policy import expected_ready
from backfill.keys import BEIJING, Key
from backfill.model import Status
from backfill.net.retry import RetryPolicy

S = Settings()
HOUR = Key.parse("2026112010")  # 10:00-11:00 Beijing: exportable from 11:40
READY = expected_ready(HOUR, S).timestamp()
NOON = datetime(2026, 11, 20, 12, tzinfo=BEIJING).timestamp()


def ask_and_answer(step: Step, *answers: str, now: float = NOON) -> Step:
    """Answer ``answers`` in turn, waking up whenever a wait ends; the last step."""
    for status in answers:
        while isinstance(step.action, Wait):
            now = step.action.until
            step = lifecycle.woke(step.life, now)
        assert isinstance(step.action, Ask), step
        step = lifecycle.answered(step.life, status, None, now, settings=S)
    return step


def test_a_due_key_is_asked_at_once_and_a_later_one_waits_for_its_readiness() -> None:
    assert isinstance(lifecycle.start(HOUR, S, NOON, NOON + 1800).action, Ask)
    early = lifecycle.start(HOUR, S, READY - 600, READY + 3600)
    assert early.action == Wait(READY, job=False)


def test_a_key_not_due_before_the_deadline_ends_not_ready_without_a_call() -> None:
    step = lifecycle.start(HOUR, S, READY - 3600, READY - 1800)
    assert isinstance(step.action, End) and step.action.status is Status.NOT_READY
    assert "not exportable yet" in (step.action.reason or "")


def test_finished_downloads_running_waits_longer_each_time() -> None:
    step = lifecycle.start(HOUR, S, NOON, NOON + 3600)
    assert isinstance(ask_and_answer(step, "FINISHED").action, Download)
    waits = []
    now = NOON
    for _ in range(4):
        step = ask_and_answer(step, "RUNNING", now=now)
        assert isinstance(step.action, Wait) and step.action.job
        waits.append(step.action.until - now)
        now = step.action.until
    assert waits == sorted(waits) and waits[0] == S.poll_interval


def test_the_first_wait_stretches_to_how_long_jobs_took_so_far() -> None:
    step = lifecycle.start(HOUR, S, NOON, NOON + 3600)
    step = lifecycle.answered(step.life, "RUNNING", None, NOON, settings=S, typical_job=95.0)
    assert isinstance(step.action, Wait) and step.action.until == NOON + 95.0


def test_a_job_that_finishes_tells_how_long_it_ran() -> None:
    step = lifecycle.start(HOUR, S, NOON, NOON + 3600)
    step = lifecycle.answered(step.life, "RUNNING", None, NOON, settings=S)
    assert step.job_seconds is None
    step = lifecycle.answered(step.life, "FINISHED", None, NOON + 42, settings=S)
    assert step.job_seconds == 42 and isinstance(step.action, Download)


def test_error_answers_are_asked_again_then_fail_with_the_message() -> None:
    step = lifecycle.start(HOUR, S, NOON, NOON + 10 * 3600)
    for _ in range(S.error_retries):
        step = lifecycle.answered(step.life, "ERROR", "executor lost", NOON, settings=S)
        assert step.action == Wait(NOON + S.error_retry_delay, job=True)
    step = lifecycle.answered(step.life, "ERROR", "executor lost", NOON, settings=S)
    assert step.action == End(Status.FAILED, "export job failed: executor lost")


def test_not_exists_is_not_yet_then_never() -> None:
    step = lifecycle.start(HOUR, S, NOON, NOON + 3600)
    soon = lifecycle.answered(step.life, "NOT_EXISTS", None, NOON, settings=S)
    assert isinstance(soon.action, Wait) and not soon.action.job  # not exportable yet
    late = lifecycle.answered(step.life, "NOT_EXISTS", None, READY + 7 * 3600, settings=S)
    assert isinstance(late.action, End) and late.action.status is Status.FAILED
    old = Key.parse("2026101010")
    gone = lifecycle.answered(lifecycle.start(old, S, NOON, NOON).life, "NOT_EXISTS", None,
                              NOON, settings=S)
    assert gone.action == End(Status.GONE, "beyond the export retention")


def test_max_wait_is_used_to_its_end_with_one_last_look() -> None:
    deadline = READY + 40.0
    step = lifecycle.start(HOUR, S, READY - 5, deadline)  # not due at the run's start
    assert step.action == Wait(READY, job=False)
    step = lifecycle.answered(lifecycle.woke(step.life, READY).life, "RUNNING", None,
                              READY + 20, settings=S)
    assert step.action == Wait(deadline, job=True)  # 30 s planned: the last look at 40 s
    step = lifecycle.answered(lifecycle.woke(step.life, deadline).life, "RUNNING", None,
                              deadline, settings=S)
    assert step.action == End(Status.NOT_READY,
                              "export job still running when --max-wait ran out; run again "
                              "later")


def test_a_key_due_at_the_start_waits_max_wait_from_its_first_answer() -> None:
    # A long range spends hours on the call budget alone: a key already due at the start,
    # first answered late, deserves the wait an early one gets.
    deadline = NOON + 60.0
    step = lifecycle.start(HOUR, S, NOON, deadline)  # due at the start...
    later = NOON + 3 * 3600  # ...first answered hours later (the call budget)
    step = lifecycle.answered(step.life, "RUNNING", None, later, settings=S)
    assert step.life.deadline == later + S.max_wait
    assert isinstance(step.action, Wait) and step.action.until == later + S.poll_interval


@pytest.mark.parametrize("expired", [True, False])
def test_a_failed_download_asks_again_then_fails_its_key(expired: bool) -> None:
    policy = RetryPolicy(retries=2, backoff=1.0, max_backoff=8.0, rng=random.Random(1))
    step = ask_and_answer(lifecycle.start(HOUR, S, NOON, NOON), "FINISHED")
    for _ in range(policy.retries):
        step = lifecycle.download_failed(step.life, expired=expired, reason="bad", now=NOON,
                                         policy=policy)
        if expired:
            assert isinstance(step.action, Ask)  # fresh links at once
        else:
            assert isinstance(step.action, Wait) and NOON <= step.action.until <= NOON + 8
    step = lifecycle.download_failed(step.life, expired=expired, reason="bad bytes",
                                     now=NOON, policy=policy)
    assert step.action == End(Status.FAILED, "bad bytes")


def test_a_failed_download_is_not_cut_short_by_max_wait() -> None:
    # The data is ready: --max-wait (a wait for readiness) does not end the refreshes.
    policy = RetryPolicy(retries=6, backoff=1.0, max_backoff=1.0, rng=random.Random(1))
    step = ask_and_answer(lifecycle.start(HOUR, S, NOON, NOON), "FINISHED")
    step = lifecycle.download_failed(step.life, expired=False, reason="reset",
                                     now=NOON + 3600, policy=policy)
    assert isinstance(step.action, Wait)
    assert isinstance(lifecycle.woke(step.life, step.action.until).action, Ask)


def test_a_key_a_worker_asked_before_deferring_is_asked_again_a_poll_later() -> None:
    asked_at = NOON
    step = lifecycle.resume(HOUR, S, NOON + 5, NOON + 3600, asked_at=asked_at)
    assert step.action == Wait(asked_at + S.poll_interval, job=True)
    not_due_then = Key.parse("2026112011")  # exportable from 12:40: it was not asked
    step = lifecycle.resume(not_due_then, S, NOON + 5, NOON + 3600, asked_at=asked_at)
    assert step.action == Wait(expected_ready(not_due_then, S).timestamp(), job=False)


def test_the_life_is_a_value() -> None:
    step = lifecycle.start(HOUR, S, NOON, NOON + 3600)
    again = lifecycle.answered(step.life, "RUNNING", None, NOON, settings=S)
    assert step.life.polls == 0 and again.life.polls == 1  # nothing shared, nothing mutated
    assert replace(again.life) == again.life
