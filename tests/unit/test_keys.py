"""Beijing-time keys: names, API dates, parsing of user dates (property tests in later work)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill.errors import UsageError
from backfill.keys import BEIJING, Granularity, Key, expand, key_at, parse_bound, parse_export_date

NOW = datetime(2026, 11, 20, 3, 30, tzinfo=UTC)  # 11:30 Beijing


def test_key_names_and_periods() -> None:
    hour = Key.parse("2026112008")
    assert hour.granularity is Granularity.HOUR
    assert hour.export_date == "202611200800"
    assert hour.start == datetime(2026, 11, 20, 0, tzinfo=UTC)
    day = Key.parse("20261120")
    assert day.end == datetime(2026, 11, 21, tzinfo=BEIJING)
    assert [k.name for k in day.hours()][:2] == ["2026112000", "2026112001"]
    assert len(day.hours()) == 24


@pytest.mark.parametrize("name", ["2026112", "202611208", "20261320", "2026112024",
                                  "２０２６１１２０"])
def test_bad_key_names(name: str) -> None:
    with pytest.raises(ValueError):
        Key.parse(name)


def test_export_dates_use_only_what_counts() -> None:
    assert parse_export_date("202611200859", Granularity.DAY).name == "20261120"
    assert parse_export_date("202611200859", Granularity.HOUR).name == "2026112008"
    with pytest.raises(ValueError):
        parse_export_date("20261120", Granularity.HOUR)


@pytest.mark.parametrize(
    ("text", "granularity", "end", "expected"),
    [
        ("2026-11-01", Granularity.DAY, False, "20261101"),
        ("20261101", Granularity.HOUR, False, "2026110100"),
        ("20261101", Granularity.HOUR, True, "2026110123"),
        ("2026-11-01T07", Granularity.HOUR, False, "2026110107"),
        ("2026110107", Granularity.DAY, False, "20261101"),
        ("today", Granularity.DAY, True, "20261120"),
        ("yesterday", Granularity.HOUR, True, "2026111923"),
        ("-7d", Granularity.DAY, False, "20261113"),
        ("-36h", Granularity.HOUR, False, "2026111823"),
    ],
)
def test_user_dates_are_beijing_time(text: str, granularity: Granularity, end: bool,
                                     expected: str) -> None:
    assert parse_bound(text, granularity, now=NOW, end=end).name == expected


@pytest.mark.parametrize("text", ["2026-13-01", "2026-1-5", "20261301", "next week", "", "-7w"])
def test_bad_user_dates_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(UsageError, match="YYYY-MM-DD, YYYYMMDD"):
        parse_bound(text, Granularity.DAY, now=NOW, end=False)


@pytest.mark.parametrize("text", ["-999999d", "99991231", "1999-12-31"])
def test_far_dates_are_out_of_range(text: str) -> None:
    with pytest.raises(UsageError, match="out of range"):
        parse_bound(text, Granularity.HOUR, now=NOW, end=True)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)),
       st.integers(0, 500), st.sampled_from(list(Granularity)))
def test_expansion_has_no_gaps_and_round_trips(start: datetime, count: int,
                                               granularity: Granularity) -> None:
    first = Key.parse(start.strftime("%Y%m%d%H" if granularity is Granularity.HOUR
                                     else "%Y%m%d"))
    last = Key(first.start + count * granularity.step, granularity)
    keys = expand(first, last)
    assert len(keys) == count + 1
    assert all(b.start - a.start == granularity.step for a, b in itertools.pairwise(keys))
    assert all(Key.parse(k.name) == k for k in keys)


@given(st.text(max_size=20) | st.from_regex(r"-?\d{1,12}[dhT-]?\d{0,4}", fullmatch=True),
       st.sampled_from(list(Granularity)), st.booleans())
def test_any_date_text_parses_or_is_refused_in_one_line(text: str, granularity: Granularity,
                                                        end: bool) -> None:
    try:
        key = parse_bound(text, granularity, now=NOW, end=end)
    except UsageError as exc:
        assert "\n" not in str(exc)
    else:
        assert key.granularity is granularity


@pytest.mark.parametrize(("moment", "granularity", "name"), [
    (datetime(2026, 11, 20, 17, 30, tzinfo=UTC), Granularity.HOUR, "2026112101"),
    (datetime(2026, 11, 20, 17, 30, tzinfo=UTC), Granularity.DAY, "20261121"),
    (datetime(2026, 11, 20, 15, 59, tzinfo=UTC), Granularity.DAY, "20261120"),
    (datetime(2026, 11, 20, 16, 0, tzinfo=UTC), Granularity.DAY, "20261121"),
    (datetime(2026, 11, 21, 1, 30, tzinfo=BEIJING), Granularity.HOUR, "2026112101"),
])
def test_the_key_of_a_moment_is_its_beijing_hour_or_day(moment: datetime,
                                                        granularity: Granularity,
                                                        name: str) -> None:
    assert key_at(moment, granularity).name == name
