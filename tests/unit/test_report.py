"""The end summary: one line per run of keys with the same outcome, failures first. Pure."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

from rich.console import Console

from backfill.cli.report import print_summary, problem_lines
from backfill.keys import BEIJING, Granularity, Key, expand
from backfill.model import Status, Summary

GONE = "beyond the 15-day retention (the oldest day kept is 2026-11-16)"


def _hours(first: datetime, count: int) -> list[Key]:
    start = Key(first, Granularity.HOUR)
    return expand(start, Key(first + timedelta(hours=count - 1), Granularity.HOUR))


def test_consecutive_keys_with_one_outcome_are_one_line_and_failures_come_first() -> None:
    keys = _hours(datetime(2025, 10, 28, 2, tzinfo=BEIJING), 9_241)
    broken = keys[5_000]
    outcomes = {k.name: (Status.GONE, GONE) for k in keys if k != broken}
    outcomes[broken.name] = (Status.FAILED, "export job failed: executor lost")
    outcomes["2026112004"] = (Status.NOT_READY, "export job still running")
    lines = problem_lines(outcomes)
    assert lines == [
        f"{broken.start:%Y-%m-%dT%H}: failed: export job failed: executor lost",
        "2026-11-20T04: not ready: export job still running",
        f"2025-10-28T02 … {keys[4_999].start:%Y-%m-%dT%H}: 5,000 keys gone: {GONE}",
        f"{keys[5_001].start:%Y-%m-%dT%H} … {keys[-1].start:%Y-%m-%dT%H}: 4,240 keys gone: "
        f"{GONE}",
    ]


def test_the_same_reason_apart_in_time_or_another_reason_starts_a_new_line() -> None:
    outcomes = {"20261101": (Status.FAILED, "a"), "20261102": (Status.FAILED, "a"),
                "20261104": (Status.FAILED, "a"), "20261103": (Status.FAILED, "b")}
    assert problem_lines(outcomes) == ["2026-11-01 … 2026-11-02: 2 keys failed: a",
                                       "2026-11-03: failed: b", "2026-11-04: failed: a"]


def test_a_failure_never_hides_behind_the_gone_keys_and_json_keeps_every_key() -> None:
    summary = Summary()
    for day in range(400):  # every other day gone, with a reason of its own: 400 lines
        name = (datetime(2025, 1, 1, tzinfo=BEIJING) + timedelta(days=day)).strftime("%Y%m%d")
        summary.add(name, Status.GONE, f"gone {day % 2}")
    summary.add("20261120", Status.FAILED, "broken")
    console = Console(file=io.StringIO(), width=200)
    print_summary(summary, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    shown = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    assert shown[0] == "2026-11-20: failed: broken"
    assert shown[-1] == "… and 381 more lines (--json has every key)"
    assert len(summary.to_json()["problems"]) == 401  # type: ignore[arg-type]


def test_the_summary_names_the_destination_and_the_state_in_its_two_columns() -> None:
    summary = Summary()
    summary.add("20261120", Status.DONE)
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    print_summary(summary, console, where=("s3://lake/gio", "/state/gio"))
    rows = [line for line in console.file.getvalue().splitlines()  # type: ignore[attr-defined]
            if line.startswith("│")]
    assert [cell.strip() for cell in rows[0].split("│")[1:3]] == ["destination",
                                                                  "s3://lake/gio"]
    assert all(row.count("│") == 3 for row in rows)  # two columns, none empty


def test_piped_or_quiet_the_summary_is_plain_lines() -> None:
    summary = Summary()
    summary.add("20261120", Status.DONE)
    summary.add("20261121", Status.FAILED, "broken")
    for console, plain in ((Console(file=io.StringIO(), width=100), False),  # a pipe
                           (Console(file=io.StringIO(), force_terminal=True), True)):  # -q
        print_summary(summary, console, where=("data", "data/.backfill"), plain=plain)
        text = console.file.getvalue()  # type: ignore[attr-defined]
        assert not set(text) & set("│┃┌┐└┘─━"), text  # no box drawing
        lines = text.splitlines()
        assert lines[:4] == ["destination: data", "state: data/.backfill", "keys done: 1",
                             "keys failed: 1"]
        assert "exit code: 1" in lines and "  2026-11-21: failed: broken" in lines
