"""Operating it: status, retry, catchup, --dry-run, --json, --log-format json, check."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from backfill.clock import wall_now
from backfill.emulator import EmulatorConfig, Faults, RunningEmulator, serve
from backfill.keys import BEIJING, Granularity, key_at
from tests.helpers import cli, env_for, set_clock

pytestmark = pytest.mark.anyio
HOURS = ["--granularity", "hour", "--types", "visit", "--out", "data"]


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0,
                                    bytes_per_hour=4096)) as running:
        yield running


@pytest.fixture(autouse=True)
def fast_settings(tmp_path: Path) -> None:
    (tmp_path / "backfill.toml").write_text(
        'poll_interval = "0.2s"\nbackoff = "0.05s"\nerror_retries = 0\n'
        'error_retry_delay = "0.1s"\n')


def hour_name(hours_ago: int) -> str:
    return key_at(wall_now() - timedelta(hours=hours_ago), Granularity.HOUR).name


async def test_backfill_status_retry_catchup(emulator: RunningEmulator, tmp_path: Path) -> None:
    env = env_for(emulator.url)
    emulator.state.config.faults = Faults(seed=3, job_error=0.5)
    code, out, _ = await cli(["run", "--from", "-30h", "--to", "-25h", *HOURS, "--json",
                              "--quiet"], env, tmp_path)
    report = json.loads(out)
    failed = set(report["problems"])
    assert code == 1 and report["exit_code"] == 1
    assert 0 < len(failed) < 6
    assert report["keys"]["failed"] == len(failed)
    assert report["keys"]["done"] == 6 - len(failed)

    code, out, _ = await cli(["status", "--json", "--out", "data"], env, tmp_path)
    status = json.loads(out)
    assert code == 0
    assert {p["key"] for p in status["problems"]} == failed
    assert status["keys"]["failed"] == len(failed)
    assert all("executor lost" in p["error"] for p in status["problems"])
    code, out, _ = await cli(["status", "--out", "data"], env, tmp_path)
    assert f"6 keys in data (v2): {len(failed)} failed, {6 - len(failed)} done" in out
    assert "✗" in out and "█" in out

    emulator.state.config.faults = Faults()
    calls = emulator.state.stats()["export_calls"]
    code, out, err = await cli(["retry", "--out", "data", "--json", "--quiet"], env, tmp_path)
    assert code == 0, err
    assert json.loads(out)["keys"]["done"] == len(failed)
    assert emulator.state.stats()["export_calls"] - calls == len(failed)  # none for the rest

    # Time moves on: with a shorter lag, two more hours are due. catchup fetches those only.
    calls = emulator.state.stats()["export_calls"]
    code, out, err = await cli(["catchup", "--lag", "23h", *HOURS, "--json", "--quiet"], env,
                               tmp_path)
    assert code == 0, err
    assert json.loads(out)["keys"]["done"] == 1  # -24h ended 23 hours ago: due now
    code, out, err = await cli(["catchup", "--lag", "21h", *HOURS, "--json", "--quiet"], env,
                               tmp_path)
    assert code == 0, err
    assert json.loads(out)["keys"]["done"] == 2
    assert emulator.state.stats()["export_calls"] - calls == 3
    code, out, _ = await cli(["status", "--json", "--out", "data"], env, tmp_path)
    assert json.loads(out)["keys"] | {"total": 9, "done": 9} == json.loads(out)["keys"]
    assert json.loads(out)["last"] == hour_name(22)


async def test_catchup_on_an_empty_output_starts_at_the_oldest_key_still_kept(
        emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = wall_now().astimezone(BEIJING).replace(hour=10, minute=30)
    set_clock(monkeypatch, now)
    env = env_for(emulator.url)
    code, out, err = await cli(["catchup", *HOURS, "--dry-run", "--json"], env, tmp_path)
    assert code == 0, err
    plan = json.loads(out)
    oldest = (now - timedelta(days=15)).strftime("%Y%m%d")
    assert plan["first"] == f"{oldest}00" and plan["gone"] == 0
    assert plan["last"] == (now - timedelta(hours=2)).strftime("%Y%m%d%H")  # 40 min lag
    assert not (tmp_path / "data").exists()  # a dry run creates nothing
    # A configured start says where an output that holds nothing yet begins.
    (tmp_path / "backfill.toml").write_text('start = "-6h"\n')
    code, out, err = await cli(["catchup", *HOURS, "--dry-run", "--json"], env, tmp_path)
    assert code == 0, err
    assert json.loads(out)["first"] == (now - timedelta(hours=6)).strftime("%Y%m%d%H")


async def test_catchup_warns_about_keys_beyond_retention(emulator: RunningEmulator,
                                                         tmp_path: Path) -> None:
    code, _, err = await cli(["catchup", "--start", "-17d", "--lag", "14d", "--types", "visit",
                              "--out", "data", "--quiet"], env_for(emulator.url), tmp_path)
    assert code == 0, err
    assert "keys from" in err and "beyond the 15-day retention and will never be fetched" in err


async def test_dry_run_makes_no_call_and_writes_nothing(emulator: RunningEmulator,
                                                        tmp_path: Path) -> None:
    code, out, _ = await cli(["run", "--from", "-30h", "--to", "-25h", *HOURS, "--dry-run"],
                             env_for(emulator.url), tmp_path)
    assert code == 0
    assert f"plan: 6 keys from {hour_name(30)} to {hour_name(25)} (hour, v2: visit; csv)" in out
    assert "at least 6 export calls, 3 s at 2 calls/s" in out
    assert emulator.state.stats()["calls"]["token"] == 0
    assert not (tmp_path / "data").exists()
    code, out, _ = await cli(["run", "--from", "-30h", "--to", "-25h", *HOURS, "--dry-run",
                              "--json"], env_for(emulator.url), tmp_path)
    assert json.loads(out)["min_api_calls"] == 6


async def test_json_logs_are_one_object_per_line(emulator: RunningEmulator,
                                                 tmp_path: Path) -> None:
    code, out, err = await cli(["run", "--from", "-27h", "--to", "-26h", *HOURS,
                                "--log-format", "json", "--json"], env_for(emulator.url),
                               tmp_path)
    assert code == 0
    events = [json.loads(line) for line in err.splitlines()]  # stderr is JSON lines only
    kinds = [e["event"] for e in events if e["event"] not in ("progress", "heartbeat")]
    assert kinds == ["begin", "key", "key", "summary"]
    assert events[-1]["exit_code"] == 0 and events[-1]["destination"].endswith("data")
    assert json.loads(out)["exit_code"] == 0  # and stdout one document


async def test_check_asks_for_a_token_only(emulator: RunningEmulator, tmp_path: Path) -> None:
    code, out, _ = await cli(["check"], env_for(emulator.url), tmp_path)
    assert code == 0
    assert "issued a token for project" in out
    assert emulator.state.stats()["export_calls"] == 0
    code, _, err = await cli(["check"], env_for(emulator.url, GIO_SECRET="nope-9c2e"), tmp_path)
    assert code == 3
    assert "nope-9c2e" not in err


async def test_status_without_state_says_so(tmp_path: Path) -> None:
    code, _, err = await cli(["status", "--out", "data"], {}, tmp_path)
    assert code == 2
    assert err.strip() == ("backfill: error: nothing in data yet: no finished unit and no "
                           "backfill state; run `backfill run` first")
