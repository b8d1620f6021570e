"""A service that goes away: held as one outage, ridden out if short, ended if sustained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import SocketStream

from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from backfill.engine.progress import PlainReporter
from backfill.keys import Granularity, Key
from backfill.library import fetch_keys, retry_keys
from backfill.model import Status, Summary
from backfill.net.outage import OUTAGE_AFTER
from backfill.state.store import Store
from tests.e2e.test_run import downloaded_md5s, hours_ago, settings_for, source_md5s
from tests.helpers import cli, env_for

pytestmark = pytest.mark.anyio

TYPES = ("visit",)


class _AfterKeys(PlainReporter):
    """Sets ``enough`` once ``count`` keys have ended."""

    def __init__(self, count: int) -> None:
        super().__init__(interval=3600)
        self.count = count
        self.enough = anyio.Event()

    def key_done(self, key: str, status: Status, detail: str | None) -> None:
        super().key_done(key, status, detail)
        self.count -= 1
        if self.count <= 0:
            self.enough.set()


async def _run_with_an_outage(emulator: RunningEmulator, out: Path, keys: list[Key],
                              down_for: float | None, **changes: object
                              ) -> tuple[Summary, float]:
    """Run ``keys``; after a few keys the emulator goes away for ``down_for`` seconds
    (``None``: for good). Returns the summary and the seconds from going down to the end."""
    # More than GrowingIO's 2 calls/s, only to keep the suite short: the emulator allows it.
    settings = settings_for(emulator, out, granularity=Granularity.HOUR, types=TYPES,
                            rate=10.0, **changes)
    reporter = _AfterKeys(3)
    result: list[tuple[Summary, float]] = []

    async def run() -> None:
        summary = await fetch_keys(settings, keys, reporter=reporter)
        result.append((summary, anyio.current_time()))

    with anyio.fail_after(120):  # a hang guard, not a timing
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await reporter.enough.wait()
            await emulator.go_down()
            down_at = anyio.current_time()
            if down_for is not None:
                await anyio.sleep(down_for)  # the blip itself: real time passing, by design
                await emulator.come_back()
    summary, ended = result[0]
    return summary, ended - down_at


@pytest.fixture
async def emulator(data_dir: Path) -> object:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=4096,
                                    part_size=2048, rate_limit=1000)) as running:
        yield running


async def test_a_dead_api_ends_the_run_within_its_budget_and_keeps_keys_retryable(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    # 48 hourly keys, each allowed 6 retries backing off up to 4 s: alone, each key would
    # take about 10 s to give up, 8 at a time: a minute. The budget is 3 s.
    keys = hours_ago(50, 3)
    budget = 3.0
    summary, elapsed = await _run_with_an_outage(
        emulator, tmp_path, keys, None, retries=6, backoff=0.5, max_backoff=4.0,
        outage_budget=budget)
    assert summary.exit_code == 1
    assert summary.outage is not None
    assert " has not answered since " in summary.outage
    assert "keys not finished are kept for `backfill retry`" in summary.outage
    assert budget <= elapsed < budget + 4.0
    store = Store(tmp_path / ".backfill")
    try:
        units = store.units("v2")
    finally:
        store.close()
    assert len(units) == len(keys)  # every key is in the state, started or not
    failed = [u for u in units if u.status is not Status.DONE]
    assert failed and {u.status for u in failed} == {Status.FAILED}
    assert all((u.last_error or "").startswith("not finished: ") for u in failed)
    assert summary.statuses[Status.FAILED] == len(failed)

    # Back up: `retry` takes exactly the keys the outage left, and the output is exact.
    await emulator.come_back()
    retried, again = retry_keys(settings_for(emulator, tmp_path, granularity=Granularity.HOUR),
                                None)
    assert [k.name for k in again] == sorted(u.key for u in failed)
    assert retried.types == TYPES
    settings = settings_for(emulator, tmp_path, granularity=Granularity.HOUR, types=TYPES,
                            rate=10.0)
    assert (await fetch_keys(settings, again,
                             reporter=PlainReporter(interval=3600))).exit_code == 0
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, TYPES)


async def test_a_short_outage_is_ridden_out_with_no_key_failed(emulator: RunningEmulator,
                                                               tmp_path: Path) -> None:
    # One retry each, backing off 0.1 s at most: alone, every key in flight would fail
    # within a fraction of the 2 s blip. Held by the run, none does.
    keys = hours_ago(50, 3)
    summary, _ = await _run_with_an_outage(emulator, tmp_path, keys, 2.0, retries=1,
                                           backoff=0.05, max_backoff=0.1, outage_budget=8.0)
    assert summary.exit_code == 0, summary.problems
    assert summary.outage is None and not summary.problems
    assert summary.statuses[Status.DONE] == len(keys)
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, TYPES)
    assert not list(tmp_path.rglob("*.partial"))


async def test_an_api_dead_from_the_start_costs_one_token_loop_and_one_line(
        tmp_path: Path) -> None:
    connections = 0

    async def hang_up(stream: SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.aclose()  # accepted, then dropped: a dead backend behind a balancer

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    (tmp_path / "backfill.toml").write_text('outage_budget = "3s"\nbackoff = "0.2s"\n')
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, hang_up)
        started = anyio.current_time()
        code, out, err = await cli(["run", "--from", "-50h", "--to", "-3h", "--granularity",
                                    "hour", "--types", "visit", "--out", "data", "--quiet"],
                                   env_for(f"http://127.0.0.1:{port}"), tmp_path)
        elapsed = anyio.current_time() - started
        group.cancel_scope.cancel()
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"backfill: error: the export API at http://127.0.0.1:{port} has "
                           "not answered since "), err
    assert "outage budget (3s)" in last
    # In words, whichever way the transport saw the hang-up.
    assert re.search(r"last: (connection reset|the server closed the connection|"
                     r"connection broken|the connection failed)\)", last), last
    assert "48 keys not finished are kept for `backfill retry`" in last
    # One token loop for the run, not 4 attempts for each of the 48 keys.
    assert connections <= 3 * OUTAGE_AFTER
    assert elapsed < 3.0 + 5.0  # the budget, plus the start-up of a Python process
    code, out, _ = await cli(["retry", "--dry-run", "--json", "--out", "data"],
                             env_for(f"http://127.0.0.1:{port}"), tmp_path)
    assert code == 0 and json.loads(out)["to_fetch"] == 48
