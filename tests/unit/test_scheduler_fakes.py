"""The scheduler and the trigger's engine driving key lifecycles against in-memory fakes:
a scripted export API, a downloader that writes small parts through the real sinks, and a
clock that jumps. Hours of waiting take milliseconds; the end-to-end tests are the proof
that the real parts fit."""

from __future__ import annotations

import io
import itertools
import random
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from backfill.config import Settings
from backfill.destination.local import LocalFolder
from backfill.engine.plan import KeyTask
from backfill.engine.policy import expected_ready
from backfill.engine.progress import PlainReporter
from backfill.engine.ready import until_ready
from backfill.engine.scheduler import Scheduler
from backfill.errors import IntegrityError, LinkExpiredError
from backfill.keys import BEIJING, Granularity, Key, expand
from backfill.model import Status, Summary
from backfill.state.store import Store
from tests.fakes import FakeClock, FakeDownloader, ScriptedApi, running

pytestmark = pytest.mark.anyio
NOON = datetime(2026, 11, 20, 12, tzinfo=BEIJING)
HOURS = expand(Key.parse("2026112000"), Key.parse("2026112009"))  # all due at noon


async def _run(tmp_path: Path, api: ScriptedApi, clock: FakeClock, keys: list[Key],
               downloader: FakeDownloader | None = None, **changes: object
               ) -> tuple[Summary, FakeDownloader]:
    settings = replace(Settings(), out=tmp_path, granularity=Granularity.HOUR,
                       types=("visit",), **changes)  # type: ignore[arg-type]
    store = Store(tmp_path / ".backfill")
    summary = Summary()
    downloader = downloader or FakeDownloader()
    scheduler = Scheduler(settings, store, LocalFolder(tmp_path), api, downloader,  # type: ignore[arg-type]
                          PlainReporter(io.StringIO(), clock=clock), summary, clock,
                          rng=random.Random(3))
    try:
        with anyio.fail_after(10):  # real seconds: the fake clock makes hours of these
            async with running(clock):
                await scheduler.run([KeyTask(k, ("visit",)) for k in keys])
    finally:
        store.close()
    return summary, downloader


async def test_each_key_is_driven_to_its_end_as_its_lifecycle_says(tmp_path: Path) -> None:
    clock = FakeClock(NOON)
    running_key, error_key, late_key, stuck_key = HOURS[1], HOURS[2], Key.parse(
        "2026112011"), HOURS[3]
    api = ScriptedApi(clock, script={
        running_key.name: ["RUNNING", "RUNNING", "FINISHED"],
        error_key.name: ["ERROR", "FINISHED"],
        stuck_key.name: ["RUNNING"],
    })
    start = clock.time()
    summary, downloader = await _run(tmp_path, api, clock,
                                     [HOURS[0], running_key, error_key, stuck_key, late_key],
                                     max_wait=3600.0)
    assert summary.statuses == {Status.DONE: 4, Status.NOT_READY: 1}
    assert "export job still running" in summary.problems[stuck_key.name]
    calls = api.calls
    assert len(calls[HOURS[0].name]) == 1
    gaps = [b - a for a, b in itertools.pairwise(calls[running_key.name])]
    assert gaps[0] == 30.0 and gaps[1] == 45.0  # poll_interval, growing by half
    assert calls[error_key.name][1] - calls[error_key.name][0] == 300.0  # error_retry_delay
    # Not exportable before 12:40: asked then, not before, with no call meanwhile.
    assert calls[late_key.name] == [expected_ready(late_key, Settings()).timestamp()]
    assert calls[stuck_key.name][-1] == pytest.approx(start + 3600.0)  # the last look
    assert len(list(tmp_path.rglob("_SUCCESS"))) == 4
    assert sorted(downloader.fetched) == sorted(
        f"/{k.name}/visit/part-0.csv.gz" for k in (HOURS[0], running_key, error_key, late_key))


async def test_expired_links_are_asked_for_at_once_bad_bytes_after_a_backoff(
        tmp_path: Path) -> None:
    clock = FakeClock(NOON)
    expired, damaged = HOURS[0], HOURS[1]
    api = ScriptedApi(clock)
    downloader = FakeDownloader({
        f"/{expired.name}/visit/part-0.csv.gz": [LinkExpiredError("link refused (HTTP 403)")],
        f"/{damaged.name}/visit/part-0.csv.gz": [IntegrityError("MD5 differs")] * 2,
    })
    summary, _ = await _run(tmp_path, api, clock, [expired, damaged], downloader, backoff=4.0,
                            max_backoff=8.0)
    assert summary.statuses == {Status.DONE: 2}
    first, again = api.calls[expired.name]
    assert again == first  # fresh links at once
    asks = api.calls[damaged.name]
    assert len(asks) == 3 and all(b >= a for a, b in itertools.pairwise(asks))
    assert summary.retries == 3


async def test_a_key_whose_downloads_keep_failing_fails_alone(tmp_path: Path) -> None:
    clock = FakeClock(NOON)
    bad = HOURS[0]
    downloader = FakeDownloader({f"/{bad.name}/visit/part-0.csv.gz": [
        IntegrityError("not a gzip file") for _ in range(10)]})
    summary, _ = await _run(tmp_path, ScriptedApi(clock), clock, HOURS[:3], downloader,
                            retries=2, backoff=1.0)
    assert summary.statuses == {Status.DONE: 2, Status.FAILED: 1}
    assert "not a gzip file" in summary.problems[bad.name]


async def test_no_more_keys_download_at_once_than_allowed(tmp_path: Path) -> None:
    clock = FakeClock(NOON)
    active = peak = 0

    class Counting(FakeDownloader):
        async def fetch(self, *args: object, **kwargs: object) -> object:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                await clock.sleep(5.0)
                return await super().fetch(*args, **kwargs)  # type: ignore[arg-type]
            finally:
                active -= 1

    summary, _ = await _run(tmp_path, ScriptedApi(clock), clock, HOURS, Counting(),
                            downloads=3)
    assert summary.statuses == {Status.DONE: len(HOURS)} and peak == 3


# --- the trigger's engine -----------------------------------------------------------------

async def test_waiting_on_keys_a_worker_just_asked_costs_one_call_each() -> None:
    """An Airflow worker asked 24 keys (their jobs run 20 s) and deferred: its trigger asks
    each again a poll after that, all due together, and is done."""
    clock = FakeClock(NOON)
    day = expand(Key.parse("2026111900"), Key.parse("2026111923"))
    api = ScriptedApi(clock, job_seconds=20.0)
    for key in day:  # the worker's round, before it deferred
        await api.export(key, ("visit",))
        clock.advance(0.5)
    asked_at = clock.time()
    api.calls.clear()
    settings = replace(Settings(), granularity=Granularity.HOUR, types=("visit",))
    with anyio.fail_after(10):
        async with running(clock):
            said = await until_ready(api, settings, day, deadline=asked_at + 3600,
                                     clock=clock, asked_at=asked_at)
    assert said == "ready"
    assert {len(times) for times in api.calls.values()} == {1}
    assert min(t for times in api.calls.values() for t in times) == asked_at + 30.0


async def test_the_trigger_gives_up_at_its_deadline() -> None:
    clock = FakeClock(NOON)
    api = ScriptedApi(clock, default=["RUNNING"])
    settings = replace(Settings(), granularity=Granularity.HOUR, types=("visit",))
    with anyio.fail_after(10):
        async with running(clock):
            said = await until_ready(api, settings, HOURS[:2], deadline=clock.time() + 600,
                                     clock=clock)
    assert said == "deadline"
    assert all(len(times) >= 3 for times in api.calls.values())  # polled, growing waits
