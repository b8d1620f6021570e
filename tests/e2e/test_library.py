"""The library entry point, as the README shows it, against the real emulator."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import backfill
from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from backfill.errors import UsageError
from backfill.model import Status
from tests.e2e.test_run import days_ago, downloaded_md5s, source_md5s
from tests.helpers import env_for

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.2,
                                    bytes_per_hour=8192, part_size=4096)) as running:
        yield running


@pytest.fixture
def in_a_project(emulator: RunningEmulator, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    """The emulator's credentials in the environment, a config with test-speed polls."""
    for name, value in env_for(emulator.url).items():
        if name.startswith("GIO_"):
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "backfill.toml").write_text('poll_interval = "0.2s"\nbackoff = "0.05s"\n')
    return tmp_path


def readme_example() -> str:
    section = README.read_text().split("### Use it from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "the README's Python example is gone"
    return match[1]


@pytest.mark.anyio
async def test_the_readmes_example_runs(emulator: RunningEmulator, in_a_project: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import anyio

    # The example blocks (fetch runs its own event loop): a worker thread, as a script.
    await anyio.to_thread.run_sync(exec, readme_example(), {})
    printed = capsys.readouterr().out
    assert printed.startswith("0 ")
    keys = days_ago(4, 3)
    assert downloaded_md5s(in_a_project / "data") == source_md5s(emulator, keys,
                                                                 ("visit", "page"))


@pytest.mark.anyio
async def test_bad_input_raises_before_any_call(emulator: RunningEmulator,
                                                in_a_project: Path) -> None:
    for first, last, options, message in [
            ("-2d", "-4d", {}, "is after"),
            ("-4d", "-3d", {"typo": 1}, "unknown option 'typo'"),
            ("-4d", "-3d", {"downloads": 0}, "downloads must be"),
            ("-4d", "-3d", {"out": "ftp://x/y"}, "not supported")]:
        with pytest.raises(UsageError, match=message) as raised:
            await backfill.fetch_async(first, last, **options)
        assert raised.value.exit_code == 2
    assert emulator.state.stats()["calls"]["token"] == 0
    assert emulator.state.stats()["export_calls"] == 0


def test_importing_backfill_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, backfill; print(sorted(m for m in ('aiohttp', 'obstore', 'anyio') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    assert callable(backfill.fetch) and issubclass(backfill.BackfillError, Exception)


@pytest.mark.anyio
async def test_a_shard_given_to_the_library_fetches_only_its_keys(
        emulator: RunningEmulator, in_a_project: Path) -> None:
    # The same split as `--shard`: an orchestrator calling fetch() gets its share only.
    from backfill.keys import Shard

    keys = days_ago(6, 3)
    shard = Shard(2, 2)
    summary = await backfill.fetch_async("-6d", "-3d", types=["visit"], shard="2/2",
                                         single_minter=True)
    assert summary.exit_code == 0
    mine = sum(map(shard.holds, keys))
    assert mine == 2 and summary.statuses[Status.DONE] == mine
    assert downloaded_md5s(in_a_project / "data") == source_md5s(
        emulator, [k for k in keys if shard.holds(k)], ("visit",))


@pytest.mark.parametrize(("first", "last", "config", "flag", "expected"), [
    ("2026-11-30T15", "2026-11-30T18", None, None, "hour"),
    ("2026113015", "2026113018", None, None, "hour"),
    ("2026-11-28", "2026-11-30", None, None, "day"),
    ("-36h", "-2h", None, None, "hour"),
    ("-7d", "-1d", None, None, "day"),
    ("yesterday", "today", None, None, "day"),
    ("-7d", "-1d", "hour", None, "hour"),        # the config sets it for relative forms
    ("-36h", "-2h", "day", None, "day"),
    ("2026-11-30T15", "2026-11-30T18", "day", None, "hour"),  # a written hour is an hour
    ("2026-11-28", "2026-11-30", None, "hour", "hour"),       # days as all their hours
])
def test_the_dates_say_days_or_hours(tmp_path: Path, first: str, last: str,
                                     config: str | None, flag: str | None,
                                     expected: str) -> None:
    from backfill.config import load
    from backfill.library import for_range

    path = None
    if config:
        path = tmp_path / "backfill.toml"
        path.write_text(f'granularity = "{config}"\n')
    settings = load(path, {"granularity": flag}, env={})
    assert for_range(settings, first, last).granularity.value == expected


@pytest.mark.parametrize(("first", "last", "flag", "message"), [
    ("2026-11-30", "2026-11-30T18", None,
     "--from 2026-11-30 is a day and --to 2026-11-30T18 is an hour: give both as days or "
     "both as hours (or --granularity hour)"),
    ("-7d", "-2h", None, "--from -7d is a day and --to -2h is an hour"),
    ("2026-11-30T15", "2026-11-30T18", "day",
     "--granularity day, but '2026-11-30T15' is an hour: give days, or leave --granularity "
     "out to fetch hours"),
])
def test_mixed_forms_and_a_contradicting_granularity_are_refused(
        first: str, last: str, flag: str | None, message: str) -> None:
    from backfill.config import load
    from backfill.library import for_range

    settings = load(None, {"granularity": flag}, env={})
    with pytest.raises(UsageError) as caught:
        for_range(settings, first, last)
    assert str(caught.value).startswith(message)


def test_a_library_run_gives_the_hosts_signal_handlers_back() -> None:
    import signal

    def host(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, host)
    try:
        import anyio

        from backfill.engine.stops import stop_on_signal

        async def briefly() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(stop_on_signal, group.cancel_scope, [])
                await anyio.sleep(0.1)
                group.cancel_scope.cancel()

        anyio.run(briefly)
        assert signal.getsignal(signal.SIGTERM) is host  # not SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
