"""`backfill run` end to end: the real client against the real emulator over loopback."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from backfill.clock import wall_now
from backfill.config import Credentials, Settings
from backfill.emulator import DEMO_CREDENTIALS, EmulatorConfig, Faults, RunningEmulator, serve
from backfill.engine.progress import PlainReporter
from backfill.keys import Granularity, Key, expand, key_at
from backfill.library import fetch_keys
from backfill.model import Status, Summary
from backfill.state.store import Store
from tests.helpers import Api

pytestmark = pytest.mark.anyio


def settings_for(emulator: RunningEmulator, out: Path, **changes: Any) -> Settings:
    c = DEMO_CREDENTIALS
    base = replace(Settings(), out=out, poll_interval=0.3, max_poll_interval=0.6,
                   backoff=0.05, max_backoff=0.2, max_wait=30.0,
                   credentials=Credentials(base_url=emulator.url, client_id=c.client_id,
                                           secret=c.secret, project_uid=c.project_uid,
                                           ai=c.ai))
    return replace(base, **changes)


def days_ago(first: int, last: int) -> list[Key]:
    now = wall_now()
    return expand(key_at(now - timedelta(days=first), Granularity.DAY),
                  key_at(now - timedelta(days=last), Granularity.DAY))


def hours_ago(first: int, last: int) -> list[Key]:
    now = wall_now()
    return expand(key_at(now - timedelta(hours=first), Granularity.HOUR),
                  key_at(now - timedelta(hours=last), Granularity.HOUR))


async def run(settings: Settings, keys: list[Key], **kw: Any) -> Summary:
    return await fetch_keys(settings, keys, reporter=PlainReporter(interval=3600), **kw)


def source_md5s(emulator: RunningEmulator, keys: list[Key], types: tuple[str, ...]) -> Counter[str]:
    data = emulator.state.data
    return Counter(part.md5 for key in keys for hour in key.hours() for t in types
                   for part in data.parts(DEMO_CREDENTIALS.ai, t, hour))


def downloaded_md5s(out: Path) -> Counter[str]:
    return Counter(hashlib.md5(p.read_bytes()).hexdigest() for p in out.rglob("part-*.csv.gz"))


@pytest.fixture
async def emulator(data_dir: Path) -> Any:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.5,
                                    bytes_per_hour=8 * 1024, part_size=4 * 1024)) as running:
        yield running


async def test_every_part_arrives_byte_identical_with_markers(emulator: RunningEmulator,
                                                              tmp_path: Path) -> None:
    keys = days_ago(4, 3)
    types = ("visit", "page")
    summary = await run(settings_for(emulator, tmp_path, types=types), keys)
    assert summary.exit_code == 0
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, types)
    for key in keys:
        for t in types:
            folder = tmp_path / t / f"dt={key.start:%Y-%m-%d}"
            assert (folder / "_SUCCESS").exists()
            manifest = json.loads((folder / "_manifest.json").read_text())
            files = sorted(p.name for p in folder.glob("part-*.csv.gz"))
            assert [p["file"] for p in manifest["parts"]] == files
            for part in manifest["parts"]:
                data = (folder / part["file"]).read_bytes()
                assert hashlib.md5(data).hexdigest() == part["md5"]
                assert "?" not in part["source"] and "Signature" not in part["source"]
    assert not list(tmp_path.rglob("*.partial"))


async def test_the_api_is_treated_with_care(emulator: RunningEmulator, tmp_path: Path) -> None:
    await run(settings_for(emulator, tmp_path, types=("visit", "page")), days_ago(5, 3))
    stats = emulator.state.stats()
    assert stats["tokens_issued"] == 1  # one token per run, shared by every task
    assert stats["rate_limited"] == 0
    assert stats["peak_calls_per_window"] <= 2
    assert stats["trap_links_issued"] > 0  # RUNNING answers did carry links...
    assert stats["downloads_trap"] == 0  # ...and none was followed
    assert stats["calls"]["v2_all"] == stats["export_calls"]  # one call per key for 2 types


async def test_a_second_run_makes_no_call_at_all(emulator: RunningEmulator,
                                                 tmp_path: Path) -> None:
    settings = settings_for(emulator, tmp_path, types=("visit",))
    keys = days_ago(4, 3)
    await run(settings, keys)
    before = emulator.state.stats()
    again = await run(settings, keys)
    after = emulator.state.stats()
    assert again.exit_code == 0
    assert again.parts == 0
    assert after["calls"] == before["calls"]  # not even a token


async def test_force_fetches_again(emulator: RunningEmulator, tmp_path: Path) -> None:
    settings = settings_for(emulator, tmp_path, types=("visit",))
    keys = days_ago(3, 3)
    first = await run(settings, keys)
    again = await run(settings, keys, force=True)
    assert again.parts == first.parts > 0
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, ("visit",))


async def test_adding_a_type_fetches_only_that_type(emulator: RunningEmulator,
                                                    tmp_path: Path) -> None:
    keys = days_ago(3, 3)
    await run(settings_for(emulator, tmp_path, types=("visit",)), keys)
    summary = await run(settings_for(emulator, tmp_path, types=("visit", "evar")), keys)
    assert summary.exit_code == 0
    assert summary.parts == sum(source_md5s(emulator, keys, ("evar",)).values())
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, ("visit", "evar"))


@pytest.mark.parametrize(("api", "granularity"), [("v1", Granularity.HOUR),
                                                  ("v1", Granularity.DAY),
                                                  ("v2", Granularity.HOUR)])
async def test_v1_and_v2_days_and_hours(emulator: RunningEmulator, tmp_path: Path, api: str,
                                        granularity: Granularity) -> None:
    keys = hours_ago(30, 29) if granularity is Granularity.HOUR else days_ago(3, 3)
    types = () if api == "v1" else ("action",)
    settings = settings_for(emulator, tmp_path, api=api, granularity=granularity, types=types)
    summary = await run(settings, keys)
    assert summary.exit_code == 0
    folder_type = "all" if api == "v1" else "action"
    for key in keys:
        folder = tmp_path / folder_type / f"dt={key.start:%Y-%m-%d}"
        if granularity is Granularity.HOUR:
            folder = folder / f"hour={key.start:%H}"
        assert (folder / "_SUCCESS").exists()
    source_types = ("visit", "page", "action", "action_tag", "custom_attr", "ads_track_click",
                    "ads_track_activation") if api == "v1" else types
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, source_types)
    assert emulator.state.stats()["calls"]["v1" if api == "v1" else "v2_type"] > 0


class _SignalsFirstKey(PlainReporter):
    def __init__(self) -> None:
        super().__init__(interval=3600)
        self.first_key_done = anyio.Event()

    def key_done(self, key: str, status: Status, detail: str | None) -> None:
        super().key_done(key, status, detail)
        self.first_key_done.set()


async def test_a_token_revoked_mid_run_is_replaced_once(emulator: RunningEmulator,
                                                        tmp_path: Path) -> None:
    reporter = _SignalsFirstKey()
    summary: list[Summary] = []
    settings = settings_for(emulator, tmp_path, types=("visit",), downloads=1)

    async def backfill_run() -> None:
        summary.append(await fetch_keys(settings, days_ago(5, 3), reporter=reporter))

    async with anyio.create_task_group() as group, aiohttp.ClientSession() as session:
        group.start_soon(backfill_run)
        await reporter.first_key_done.wait()
        await Api(session, emulator.url).login()  # another client's token revokes the run's
    stats = emulator.state.stats()
    assert summary[0].exit_code == 0
    assert stats["tokens_issued"] == 3  # the run's, the other client's, the run's new one
    assert stats["unauthorized"] == 1


async def test_keys_not_ready_by_the_deadline_exit_4(emulator: RunningEmulator,
                                                     tmp_path: Path) -> None:
    emulator.state.config.job_seconds = 3600
    summary = await run(settings_for(emulator, tmp_path, types=("visit",), max_wait=1.0),
                        days_ago(3, 3))
    assert summary.exit_code == 4
    assert "export job still running" in next(iter(summary.problems.values()))


def slow_polls(emulator: RunningEmulator, out: Path, max_wait: float) -> Settings:
    """Hourly visit keys whose first re-poll is planned 30 s out, far past ``max_wait``."""
    return settings_for(emulator, out, granularity=Granularity.HOUR, types=("visit",),
                        max_wait=max_wait, poll_interval=30.0, max_poll_interval=300.0)


async def test_max_wait_is_used_to_its_end_with_one_last_look(emulator: RunningEmulator,
                                                              tmp_path: Path) -> None:
    # Jobs take 1.5 s; the first re-poll is planned 30 s out, far past --max-wait (5 s).
    # Each key gets one more look at the deadline, finds its job done and downloads it.
    emulator.state.config.job_seconds = 1.5
    keys = hours_ago(5, 3)
    summary = await run(slow_polls(emulator, tmp_path, max_wait=5.0), keys)
    assert summary.exit_code == 0, summary.problems
    answers = emulator.state.stats()["answers"]
    assert answers == {"RUNNING": len(keys), "FINISHED": len(keys)}


async def test_a_job_still_running_at_the_last_look_is_not_ready(emulator: RunningEmulator,
                                                                 tmp_path: Path) -> None:
    emulator.state.config.job_seconds = 3600
    keys = hours_ago(5, 5)
    summary = await run(slow_polls(emulator, tmp_path, max_wait=1.0), keys)
    assert summary.exit_code == 4
    assert emulator.state.stats()["answers"] == {"RUNNING": 2}  # the first ask, the last look


async def test_a_key_asked_late_in_a_long_run_still_gets_its_wait(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    # A long range spends hours on the call budget alone; --max-wait bounds how long a
    # key waits for its job, counted from its own first answer, not from the run's start.
    # Here the last keys' jobs start after --max-wait has passed since the run began.
    settings = settings_for(emulator, tmp_path, types=("visit",), max_wait=1.0)
    summary = await run(settings, days_ago(6, 3))
    assert summary.exit_code == 0, summary.problems
    assert emulator.state.stats()["answers"]["RUNNING"] >= 4  # every job did run a while


async def test_future_keys_cost_no_call(emulator: RunningEmulator, tmp_path: Path) -> None:
    now = wall_now()
    keys = [key_at(now, Granularity.HOUR)]
    summary = await run(settings_for(emulator, tmp_path, granularity=Granularity.HOUR,
                                     max_wait=60.0), keys)
    assert summary.exit_code == 4
    assert emulator.state.stats()["calls"]["token"] == 0


async def test_error_answers_are_retried_then_fail_with_the_message(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    emulator.state.config.faults.update(job_error=1.0)
    settings = settings_for(emulator, tmp_path, types=("visit",), error_retries=2,
                            error_retry_delay=0.1)
    summary = await run(settings, days_ago(3, 3))
    assert summary.exit_code == 1
    assert "export job failed: executor lost" in next(iter(summary.problems.values()))
    assert emulator.state.stats()["answers"]["ERROR"] == 3


async def test_an_expired_link_is_refreshed_and_the_part_resumes(data_dir: Path,
                                                                 tmp_path: Path) -> None:
    # Links live 1 emulated minute = 0.3 s real. The first body stalls half-way; by the time
    # the client gives up on it the link has expired, so it must ask the API for a fresh
    # one and continue from every byte it has, not start over, not even from the last
    # whole chunk. (Parts no bigger than one chunk are read whole and fetched again: the
    # chunk here is smaller than the part and larger than its first half.)
    faults = Faults(stall=1.0, stall_seconds=5.0, limit=1)
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, speed=200.0, faults=faults,
                            bytes_per_hour=64 * 1024, part_size=4 << 20)
    async with serve(config) as emulator:
        keys = hours_ago(30, 30)
        [part] = emulator.state.data.parts(DEMO_CREDENTIALS.ai, "action", keys[0])
        part_size = part.path.stat().st_size
        settings = settings_for(emulator, tmp_path, granularity=Granularity.HOUR,
                                types=("action",), expire=1, read_timeout=0.5,
                                chunk_size=part_size * 3 // 4)
        summary = await run(settings, keys)
        stats = emulator.state.stats()
        resumed = emulator.state.range_starts
    assert summary.exit_code == 0
    assert stats["faults"] == {"stall": 1}
    assert 1 <= stats["downloads_expired"] <= 2  # refreshed at once, not retried stale
    assert stats["range_requests"] == 1  # the resumed request asked only for the rest...
    assert resumed == [(part_size // 2, part_size)]  # ...from the very byte the stall hit
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, ("action",))
    size = sum(p.stat().st_size for p in tmp_path.rglob("part-*.csv.gz"))
    assert stats["bytes_served"] < size * 1.5  # the first half was not fetched again


async def test_back_to_back_runs_share_the_servers_window(data_dir: Path,
                                                          tmp_path: Path) -> None:
    # Each run spends the 2-call budget at once; the next starts right after. The server
    # counts calls per second whatever process made them: the state hands them on.
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=1024)
    async with serve(config) as emulator:
        for first in (9, 7, 5, 3):
            await run(settings_for(emulator, tmp_path, types=("visit",)),
                      days_ago(first, first - 1))
        assert emulator.state.stats()["rate_limited"] == 0


async def test_keys_beyond_retention_are_gone_without_a_call(emulator: RunningEmulator,
                                                             tmp_path: Path) -> None:
    emulator.state.config.job_seconds = 0  # one call per key that is asked about
    summary = await run(settings_for(emulator, tmp_path, types=("visit",)), days_ago(17, 14))
    assert summary.exit_code == 1
    assert summary.statuses[Status.GONE] == 2
    assert summary.statuses[Status.DONE] == 2
    assert all("retention" in p for p in summary.problems.values())
    assert emulator.state.stats()["export_calls"] == 2  # none for the gone keys


class _OrderReporter(PlainReporter):
    """Records which key each part and each ending belongs to, in order."""

    def __init__(self) -> None:
        super().__init__(interval=3600)
        self.events: list[tuple[str, str]] = []

    def key_done(self, key: str, status: Status, detail: str | None) -> None:
        self.events.append(("done", key))
        super().key_done(key, status, detail)

    def part(self, label: str) -> Any:
        self.events.append(("part", label.split()[0]))
        return super().part(label)


async def test_keys_start_within_a_bounded_window(emulator: RunningEmulator, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Memory stays flat over a year of keys because only a window of key tasks exists
    # at a time. With a window of one, a key starts only after the one before it ended.
    monkeypatch.setattr("backfill.engine.scheduler.KEYS_IN_FLIGHT", 1)
    emulator.state.config.job_seconds = 0
    # Slow bodies, so that without the window the next keys' parts would start meanwhile.
    emulator.state.config.faults.update(slow_first_byte=1.0, slow_seconds=0.05)
    keys = days_ago(6, 3)
    reporter = _OrderReporter()
    # A fast budget, so that without the window all keys would ask at once.
    settings = settings_for(emulator, tmp_path, types=("visit",), rate=100.0)
    summary = await fetch_keys(settings, keys, reporter=reporter)
    assert summary.exit_code == 0
    order = [key for _, key in reporter.events]
    assert order == sorted(order), "parts of one key mixed with another's"
    assert [key for event, key in reporter.events if event == "done"] == [k.name for k in keys]


async def test_an_unfinished_key_fetches_only_its_missing_parts(emulator: RunningEmulator,
                                                                tmp_path: Path) -> None:
    # A key interrupted after some parts: those are recorded done. One of them is then
    # lost on disk; the rerun fetches that one again and trusts the others.
    emulator.state.config.job_seconds = 0
    keys = days_ago(3, 3)
    settings = settings_for(emulator, tmp_path, types=("visit",))
    assert (await run(settings, keys)).exit_code == 0
    store = Store(tmp_path / ".backfill")  # as if the run had stopped before the key's end
    store.set_status("v2", keys[0].name, ("visit",), Status.ACTIVE)
    store.close()
    for marker in tmp_path.rglob("_SUCCESS"):  # nor had it written the key's marker
        marker.unlink()
    parts = sorted(tmp_path.rglob("part-*.csv.gz"))
    lost = parts[len(parts) // 2]
    lost_size = lost.stat().st_size
    lost.unlink()
    served = emulator.state.stats()["bytes_served"]
    assert (await run(settings, keys)).exit_code == 0
    assert emulator.state.stats()["bytes_served"] - served == lost_size
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, ("visit",))


class _LiveParts(PlainReporter):
    """Counts the part tasks alive at once (a watch lives from start to finish)."""

    def __init__(self) -> None:
        super().__init__(interval=3600)
        self.live = self.peak = self.total = 0

    def part(self, label: str) -> Any:
        reporter = self
        self.live += 1
        self.total += 1
        self.peak = max(self.peak, self.live)

        class _Watch:
            ended = False

            def started(self, total: int | None) -> None:
                pass

            def advanced(self, count: int) -> None:
                pass

            def finished(self) -> None:
                if not self.ended:
                    self.ended = True
                    reporter.live -= 1

        return _Watch()


async def test_a_key_of_many_parts_keeps_few_part_tasks(emulator: RunningEmulator,
                                                        tmp_path: Path) -> None:
    # Memory must not grow with the parts of one key either: a day of tiny parts here.
    emulator.state.config.job_seconds = 0
    reporter = _LiveParts()
    settings = settings_for(emulator, tmp_path, types=("visit",), downloads=2)
    summary = await fetch_keys(settings, days_ago(3, 3), reporter=reporter)
    assert summary.exit_code == 0
    assert reporter.total >= 24  # one part per hour at least
    assert reporter.peak <= 2 * settings.downloads
