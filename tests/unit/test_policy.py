"""Pure decisions: what an answer leads to, backoff, readiness, layout, answers' shapes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from backfill.config import Settings
from backfill.engine.policy import Next, decide, expected_ready, fit_wait, poll_interval, typical
from backfill.growingio.api import parse_answer
from backfill.keys import BEIJING, Key
from backfill.layout import key_folder, redact
from backfill.net.exchange import retry_after
from backfill.net.retry import backoff

S = Settings()
NOW = datetime(2026, 11, 20, 12, tzinfo=BEIJING)


def test_finished_downloads_and_running_waits_longer_each_time() -> None:
    key = Key.parse("2026112008")
    assert decide("FINISHED", key, NOW, polls=0, errors=0, error_message=None,
                  settings=S).action is Next.DOWNLOAD
    waits = [decide("RUNNING", key, NOW, polls=n, errors=0, error_message=None,
                    settings=S).delay for n in range(10)]
    assert waits[0] == S.poll_interval
    assert waits == sorted(waits)
    assert waits[-1] == S.max_poll_interval


def test_the_first_repoll_waits_as_long_as_jobs_have_been_taking() -> None:
    assert typical([5.0, 50.0]) is None  # too few to trust
    assert typical([20.0, 22.0, 90.0]) == 22.0
    assert poll_interval(0, S, typical_job=100.0) == 100.0
    assert poll_interval(0, S, typical_job=1.0) == S.poll_interval
    assert poll_interval(1, S, typical_job=100.0) == S.poll_interval * 1.5
    assert poll_interval(0, S, typical_job=10_000.0) == S.max_poll_interval


def test_not_exists_means_wait_gone_or_failed_by_age() -> None:
    def action(name: str) -> Next:
        return decide("NOT_EXISTS", Key.parse(name), NOW, polls=0, errors=0,
                      error_message=None, settings=S).action

    assert action("2026112011") is Next.WAIT  # just ended: not exportable yet
    assert action("2026112001") is Next.FAIL  # should have been ready hours ago
    assert action("2026110100") is Next.GONE  # beyond 15 days


def test_error_is_retried_then_fails_with_its_message() -> None:
    key = Key.parse("20261119")
    retry = decide("ERROR", key, NOW, polls=0, errors=1, error_message="boom", settings=S)
    assert (retry.action, retry.delay) == (Next.WAIT, S.error_retry_delay)
    final = decide("ERROR", key, NOW, polls=0, errors=S.error_retries + 1,
                   error_message="boom", settings=S)
    assert final.action is Next.FAIL
    assert "boom" in final.reason


def test_a_poll_past_the_deadline_becomes_one_last_look_at_it() -> None:
    assert fit_wait(3.0, 10.0, asked=True, last_look=False) == (3.0, False, False)
    assert fit_wait(30.0, 4.0, asked=True, last_look=False) == (4.0, True, False)
    assert fit_wait(45.0, 0.0, asked=True, last_look=True)[2]  # looked already: give up
    assert fit_wait(30.0, 4.0, asked=False, last_look=False)[2]  # never due: no call
    assert fit_wait(30.0, -1.0, asked=True, last_look=False)[2]  # no time left at all


def test_late_hours_are_expected_later() -> None:
    assert expected_ready(Key.parse("2026112023"), S) - Key.parse("2026112023").end == \
        timedelta(hours=1)
    assert expected_ready(Key.parse("2026112010"), S) - Key.parse("2026112010").end == \
        timedelta(minutes=40)


def test_backoff_is_jittered_and_capped() -> None:
    rng = random.Random(1)
    delays = [backoff(n, 1.0, 10.0, rng) for n in range(20)]
    assert all(0 <= d <= 10.0 for d in delays)
    assert len(set(delays)) == 20


def test_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2026, 11, 20, tzinfo=UTC)
    assert retry_after("3", now) == 3
    assert retry_after("Fri, 20 Nov 2026 00:00:05 GMT", now) == 5
    assert retry_after("soon", now) is None


def test_layout_drops_hour_for_days() -> None:
    template = "{type}/dt={date}/hour={hour}"
    assert str(key_folder(template, Key.parse("2026112008"), "visit")) == \
        "visit/dt=2026-11-20/hour=08"
    assert str(key_folder(template, Key.parse("20261120"), "all")) == "all/dt=2026-11-20"


def test_redact_drops_the_signature() -> None:
    link = "https://user:pw@bucket.example:8443/a/b.csv.gz?X-Amz-Signature=abc#frag"
    assert redact(link) == "https://bucket.example:8443/a/b.csv.gz"


def test_links_of_unfinished_answers_are_dropped() -> None:
    answer = parse_answer({"status": "RUNNING", "downloadLinks": ["http://x/trap"]}, "one",
                          ("visit",))
    assert answer.links == {}
    finished = parse_answer({"status": "FINISHED", "downloadLinks": {"visit": ["u"]}}, "all",
                            ("visit", "page"))
    assert finished.links == {"visit": ["u"]}


def test_absent_is_not_empty() -> None:
    # An explicit empty list is an empty unit; a type the answer does not hold is no news.
    answer = parse_answer({"status": "FINISHED", "downloadLinks": {
        "visit": [], "page": None}}, "all", ("visit", "page", "action"))
    assert answer.links == {"visit": []}
    assert answer.absent == ("page", "action")


@pytest.mark.parametrize("body", [[], {"status": 1}, {"status": "FINISHED"},
                                  {"status": "FINISHED", "downloadLinks": [3]}])
def test_malformed_answers_are_unusable(body: object) -> None:
    # Judged by the run (the key's problem, or the service's when several keys get one).
    from backfill.growingio.api import UnusableAnswer

    with pytest.raises(UnusableAnswer):
        parse_answer(body, "one", ("visit",))


@pytest.mark.parametrize("name", ["20261120", "2026112010", "2026112023", "2026112100",
                                  "2026112101", "2026112102"])
def test_the_planner_and_the_emulator_agree_on_readiness(name: str) -> None:
    # Two copies of the documentation's figures, written apart (the emulator imports nothing
    # of the client's): this fails when one of them drifts.
    from backfill.config import Settings
    from backfill.emulator import EmulatorConfig
    from backfill.emulator.jobs import producible_at
    from backfill.keys import Key

    key = Key.parse(name)
    assert expected_ready(key, Settings()) == producible_at(key, EmulatorConfig())


def test_the_client_and_the_emulator_agree_on_the_documented_protocol() -> None:
    """Each side wrote the API's facts from the documentation on its own."""
    from backfill.destination.tables.schema import COLUMNS
    from backfill.emulator import protocol
    from backfill.growingio.auth import TOKEN_PATH, signature
    from backfill.keys import V2_TYPES

    assert V2_TYPES == protocol.V2_TYPES
    assert COLUMNS == protocol.COLUMNS
    assert TOKEN_PATH == protocol.TOKEN_PATH
    for secret, uid, ai, tm in (("k", "u", "a", 1), ("私钥", "proj", "0123abcd", 1764000000000)):
        assert signature(secret, uid, ai, tm) == protocol.signature(secret, uid, ai, tm)
