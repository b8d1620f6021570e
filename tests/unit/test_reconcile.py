"""Pure parts of reading the destination back: folders to keys, and what to list."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from backfill.keys import BEIJING, Granularity, Key, expand
from backfill.layout import folder_key, key_folder, literal_prefix
from backfill.state.reconcile import Unit, listing_prefixes

TEMPLATES = ["{type}/dt={date}/hour={hour}", "{type}/{key}", "raw/{yyyymmdd}/{type}/{hour}",
             "{type}/date={date}/{date}-{hour}"]


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
       st.sampled_from(list(Granularity)), st.sampled_from(TEMPLATES),
       st.sampled_from(["visit", "page", "all"]))
def test_a_folder_gives_back_its_key(moment: datetime, granularity: Granularity,
                                     template: str, data_type: str) -> None:
    key = Key(moment.replace(tzinfo=BEIJING, minute=0, second=0, microsecond=0)
              if granularity is Granularity.HOUR else
              moment.replace(tzinfo=BEIJING, hour=0, minute=0, second=0, microsecond=0),
              granularity)
    folder = str(key_folder(template, key, data_type))
    assert folder.startswith(literal_prefix(template, data_type))
    assert folder_key(template, data_type, folder, granularity) == key
    other = "page" if data_type != "page" else "visit"
    assert folder_key(template, other, folder, granularity) is None


def test_listings_are_one_per_type_and_month_and_narrow() -> None:
    first = Key(datetime(2026, 10, 30, tzinfo=BEIJING), Granularity.DAY)
    keys = expand(first, Key(first.start + timedelta(days=4), Granularity.DAY))
    template = "{type}/dt={date}/hour={hour}"
    units = [Unit(k, t, str(key_folder(template, k, t))) for k in keys for t in ("visit", "page")]
    assert listing_prefixes(units) == ["page/dt=2026-10-3", "page/dt=2026-11-0",
                                       "visit/dt=2026-10-3", "visit/dt=2026-11-0"]
    one = [units[0]]
    assert listing_prefixes(one) == ["visit/dt=2026-10-30/"]  # a folder alone: itself
    assert listing_prefixes([]) == []
