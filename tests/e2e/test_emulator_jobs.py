"""The job model: readiness lag, RUNNING → FINISHED, retention, ERROR, answer shapes."""

from __future__ import annotations

import re

import pytest

from backfill.emulator import V1_TYPES, V2_TYPES, RunningEmulator
from tests.e2e.conftest import EmulatorFactory
from tests.helpers import Api

pytestmark = pytest.mark.anyio

# NOW is 2026-11-20 12:00 Beijing, frozen; jobs run 60 emulated seconds.
READY_HOUR = "202611201000"


async def finished(running: RunningEmulator, api: Api, key: str, **kw: str) -> dict:  # type: ignore[type-arg]
    first = (await api.v2(key, **kw)).json()
    assert first["status"] == "RUNNING", first
    running.state.clock.advance(61)
    body = (await api.v2(key, **kw)).json()
    assert body["status"] == "FINISHED", body
    return body  # type: ignore[no-any-return]


async def test_first_ask_starts_a_job_that_runs_then_finishes(
        emulator: tuple[RunningEmulator, Api]) -> None:
    running, api = emulator
    body = await finished(running, api, READY_HOUR)
    assert body["downloadLinks"]
    assert set(body) == {"status", "downloadLinks", "exportType", "dataType", "exportDate",
                         "exportVersion", "requestTime", "errorMsg"}
    assert (body["exportType"], body["dataType"], body["exportDate"]) == (
        "hour", "visit", READY_HOUR)
    assert body["exportVersion"] == 1
    assert body["errorMsg"] is None


async def test_an_hour_is_not_exportable_before_its_lag(
        emulator: tuple[RunningEmulator, Api]) -> None:
    running, api = emulator
    # 11:00–12:00 ended just now; 40 minutes of lag.
    assert (await api.v2("202611201100")).json()["status"] == "NOT_EXISTS"
    running.state.clock.advance(39 * 60)
    assert (await api.v2("202611201100")).json()["status"] == "NOT_EXISTS"
    running.state.clock.advance(60)
    assert (await api.v2("202611201100")).json()["status"] == "RUNNING"


async def test_late_hours_take_an_hour(emulator_factory: EmulatorFactory) -> None:
    from datetime import datetime

    from backfill.keys import BEIJING

    now = datetime(2026, 11, 20, 0, 50, tzinfo=BEIJING)  # 23:00–24:00 ended 50 min ago
    async with emulator_factory(now=now) as (running, api):
        await api.login()
        assert (await api.v2("202611192300")).json()["status"] == "NOT_EXISTS"
        running.state.clock.advance(10 * 60)
        assert (await api.v2("202611192300")).json()["status"] == "RUNNING"


async def test_a_day_is_exportable_hours_after_it_ends(
        emulator_factory: EmulatorFactory) -> None:
    from datetime import datetime

    from backfill.keys import BEIJING

    now = datetime(2026, 11, 20, 2, 0, tzinfo=BEIJING)
    async with emulator_factory(now=now) as (running, api):
        await api.login()
        day = "20261119"
        assert (await api.v2(day, export_type="day")).json()["status"] == "NOT_EXISTS"
        running.state.clock.advance(3600)
        assert (await api.v2(day, export_type="day")).json()["status"] == "RUNNING"


@pytest.mark.parametrize(("key", "status"), [("202611050000", "RUNNING"),
                                              ("202611042300", "NOT_EXISTS")])
async def test_retention_is_fifteen_days(emulator: tuple[RunningEmulator, Api], key: str,
                                         status: str) -> None:
    _, api = emulator
    assert (await api.v2(key)).json()["status"] == status


@pytest.mark.parametrize("key", ["20261345", "202611201", "2026112010xx", "20261120256",
                                 "202611202500", "202611201060"])
async def test_malformed_dates_do_not_exist(emulator: tuple[RunningEmulator, Api],
                                            key: str) -> None:
    _, api = emulator
    reply = await api.v2(key)
    assert reply.status == 200
    assert reply.json()["status"] == "NOT_EXISTS"
    assert reply.json()["downloadLinks"] == []


async def test_v1_hour_mixes_the_seven_tables(emulator: tuple[RunningEmulator, Api]) -> None:
    running, api = emulator
    assert (await api.v1("2026112010")).json()["status"] == "RUNNING"
    running.state.clock.advance(61)
    body = (await api.v1("2026112010")).json()
    assert set(body) == {"status", "downlinks"}
    assert body["status"] == "FINISHED"
    types = {re.search(r"export_[0-9a-f]+_(\w+?)_\d{10}/", link)[1]  # type: ignore[index]
             for link in body["downlinks"]}
    assert types <= set(V1_TYPES)
    assert {"visit", "page", "action", "action_tag", "custom_attr"} <= types


async def test_v1_has_no_default_date(emulator: tuple[RunningEmulator, Api]) -> None:
    _, api = emulator
    assert (await api.get(f"/insights/{api.creds.ai}/.json")).status == 404


async def test_v2_all_types_answers_an_object_of_lists(
        emulator: tuple[RunningEmulator, Api]) -> None:
    running, api = emulator
    body = await finished(running, api, READY_HOUR, data_type=None)
    assert body["dataType"] == "all"
    assert set(body["downloadLinks"]) == set(V2_TYPES)
    assert all(isinstance(v, list) for v in body["downloadLinks"].values())
    assert body["downloadLinks"]["visit"]


async def test_a_day_export_returns_every_hour(emulator: tuple[RunningEmulator, Api]) -> None:
    running, api = emulator
    body = await finished(running, api, "20261119", export_type="day")
    utc_hours = {re.search(r"_(\d{10})/part-", link)[1]  # type: ignore[index]
                 for link in body["downloadLinks"]}
    # Beijing 2026-11-19 is 2026-11-18 16:00 UTC to 2026-11-19 16:00 UTC.
    assert len(utc_hours) == 24
    assert min(utc_hours) == "2026111816"
    assert max(utc_hours) == "2026111915"


async def test_error_is_reported_once_then_the_job_runs_again(
        emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        await api.login()
        running.state.config.faults.update(job_error=1.0)
        body = (await api.v2(READY_HOUR)).json()
        assert body["status"] == "ERROR"
        assert body["errorMsg"]
        assert body["downloadLinks"] == []
        running.state.config.faults.update(job_error=0.0)
        retry = (await api.v2(READY_HOUR)).json()
        assert retry["status"] == "FINISHED"
        assert retry["exportVersion"] == 2


async def test_link_order_changes_between_answers(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0, part_size=4096) as (_, api):
        await api.login()
        orders = set()
        for _ in range(5):
            links = (await api.v2(READY_HOUR, data_type=None)).json()["downloadLinks"]["action"]
            assert len(links) > 2
            orders.add(tuple(link.split("?")[0] for link in links))
        assert len(orders) > 1


async def test_expire_defaults_to_five_minutes_and_is_bounded(
        emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0) as (_, api):
        await api.login()
        link = (await api.v2(READY_HOUR)).json()["downloadLinks"][0]
        assert "X-Amz-Expires=300&" in link
        link = (await api.v2(READY_HOUR, expire="60")).json()["downloadLinks"][0]
        assert "X-Amz-Expires=3600&" in link
        for bad in ("0", "abc", str(7 * 24 * 60 + 1)):
            assert (await api.v2(READY_HOUR, expire=bad)).status == 400


async def test_unknown_types_are_refused(emulator: tuple[RunningEmulator, Api]) -> None:
    _, api = emulator
    assert (await api.v2(READY_HOUR, data_type="clicks")).status == 400
    assert (await api.v2(READY_HOUR, export_type="week")).status == 400


async def test_running_answers_carry_trap_links(emulator: tuple[RunningEmulator, Api]) -> None:
    running, api = emulator
    body = (await api.v2(READY_HOUR, data_type=None)).json()
    assert body["status"] == "RUNNING"
    trap = next(links[0] for links in body["downloadLinks"].values() if links)
    assert (await api.fetch(trap)).status == 200
    stats = running.state.stats()
    assert stats["downloads_trap"] == 1
    assert stats["trap_links_issued"] >= 1


async def test_trap_links_can_be_switched_off(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(trap_links=False) as (_, api):
        await api.login()
        body = (await api.v2(READY_HOUR)).json()
        assert body == {**body, "status": "RUNNING", "downloadLinks": []}


async def test_the_clock_can_be_moved_over_http(emulator: tuple[RunningEmulator, Api]) -> None:
    running, api = emulator
    async with api.session.post(f"{api.url}/_emulator/clock", json={"advance": 3600}) as r:
        assert (await r.json())["now"].startswith("2026-11-20T05:00:00")
    assert running.state.clock.now().hour == 5
