"""The process dies or is stopped: kill -9 anywhere, SIGINT/SIGTERM, a second run, a full disk."""

from __future__ import annotations

import contextlib
import hashlib
import random
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from tests.e2e.test_run import days_ago, downloaded_md5s, source_md5s
from tests.helpers import assert_no_secrets, cli, command, env_for, state_text

pytestmark = pytest.mark.anyio
TYPES = ("page", "action")
RANGE = ["--from", "-6d", "--to", "-3d", "--types", ",".join(TYPES), "--quiet"]


@pytest.fixture(autouse=True)
def fast_polls(tmp_path: Path) -> None:
    """The CLI reads ./backfill.toml: poll and back off at test speed, not GrowingIO's."""
    (tmp_path / "backfill.toml").write_text(
        'poll_interval = "0.2s"\nmax_poll_interval = "0.5s"\nbackoff = "0.05s"\n'
        'max_backoff = "0.2s"\n')


async def started(process: anyio.abc.Process) -> None:
    """Wait until the run printed its plan: it is past start-up and into its work."""
    assert process.stderr is not None
    seen = b""
    while b"keys to fetch" not in seen:
        seen += await process.stderr.receive()


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.3, bytes_per_hour=16 * 1024,
                            part_size=4 * 1024)
    async with serve(config) as running:
        yield running


def done_keys(out: Path) -> set[str]:
    # closing() as well: `with connect()` only commits, and Python 3.13 warns about the
    # connection left open.
    with closing(sqlite3.connect(out / ".backfill" / "state.sqlite")) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'units'").fetchall():
            return set()  # killed between creating the file and its first migration
        rows = db.execute("SELECT key FROM units GROUP BY key HAVING "
                          "min(status = 'done') = 1").fetchall()
    return {key for (key,) in rows}


async def start(args: list[str], env: dict[str, str], cwd: Path) -> anyio.abc.Process:
    return await anyio.open_process(command(*args), env=env, cwd=cwd,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def wait_for(process: anyio.abc.Process, seconds: float) -> int:
    with anyio.fail_after(seconds):
        return await process.wait()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_kill_9_anywhere_then_rerun_finishes_exactly(emulator: RunningEmulator,
                                                           tmp_path: Path, seed: int) -> None:
    env = env_for(emulator.url)
    process = await start(["run", *RANGE, "--out", "data"], env, tmp_path)
    # A random crash point: planning, polling, downloading, renaming or a state write.
    await anyio.sleep(random.Random(seed).uniform(0.3, 3.0))
    process.send_signal(signal.SIGKILL)
    await wait_for(process, 10)
    out = tmp_path / "data"
    finished = done_keys(out) if (out / ".backfill" / "state.sqlite").exists() else set()
    calls_before = emulator.state.stats()["export_calls"]

    code, out_text, err = await cli(["run", *RANGE, "--out", "data"], env, tmp_path)

    assert code == 0, err
    token = emulator.state.token.code if emulator.state.token else None
    assert_no_secrets([out_text, err, state_text(out)], token)
    keys = days_ago(6, 3)
    assert downloaded_md5s(out) == source_md5s(emulator, keys, TYPES)
    assert not list(out.rglob("*.partial"))
    assert all((out / t / f"dt={k.start:%Y-%m-%d}" / "_SUCCESS").exists()
               for k in keys for t in TYPES)
    # Keys finished before the crash cost the rerun nothing. Every other key needs at
    # least one call, and at most a few (RUNNING re-polls, refreshes).
    rerun_calls = emulator.state.stats()["export_calls"] - calls_before
    assert len(keys) - len(finished) <= rerun_calls <= 3 * (len(keys) - len(finished))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_stops_it_cleanly_with_130(emulator: RunningEmulator, tmp_path: Path,
                                                  signum: signal.Signals) -> None:
    emulator.state.config.job_seconds = 3600  # keep it busy polling
    env = env_for(emulator.url)
    process = await start(["run", *RANGE, "--out", "data"], env, tmp_path)
    with anyio.fail_after(10):
        await started(process)
    process.send_signal(signum)
    assert await wait_for(process, 5) == 130
    assert process.stderr is not None
    err = b""
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            err += await process.stderr.receive()
    assert f"interrupted by {signum.name}".encode() in err
    assert b"Traceback" not in err
    emulator.state.clock.advance(3601)  # the jobs it started are finished now...
    emulator.state.config.job_seconds = 0  # ...and the ones it did not start finish at once
    code, _, err = await cli(["run", *RANGE, "--out", "data"], env, tmp_path)
    assert code == 0, err


def _catches(pid: int, signum: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler of its own for ``signum`` (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.6])
async def test_a_signal_at_start_up_is_one_line_and_130(emulator: RunningEmulator,
                                                        tmp_path: Path, delay: float,
                                                        signum: signal.Signals) -> None:
    # From the moment backfill's own code runs (its SIGTERM handler is in place), whatever
    # it is doing then: importing, parsing flags, reading the config, starting the run.
    emulator.state.config.job_seconds = 3600
    process = await start(["run", *RANGE, "--out", "data"], env_for(emulator.url), tmp_path)
    with anyio.fail_after(20):
        while not _catches(process.pid, signal.SIGTERM):  # noqa: ASYNC110 (another process)
            await anyio.sleep(0.002)
    await anyio.sleep(delay)
    process.send_signal(signum)
    code = await wait_for(process, 20)
    assert process.stderr is not None
    err = b""
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            err += await process.stderr.receive()
    lines = [line for line in err.decode().splitlines() if line.startswith("backfill: error:")]
    assert code == 130, err
    assert len(lines) == 1 and f"interrupted by {signum.name}" in lines[0], err
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err


async def test_a_second_run_on_the_same_output_is_refused(emulator: RunningEmulator,
                                                          tmp_path: Path) -> None:
    emulator.state.config.job_seconds = 3600
    env = env_for(emulator.url)
    first = await start(["run", *RANGE, "--out", "data"], env, tmp_path)
    try:
        with anyio.fail_after(10):
            await started(first)
        code, _, err = await cli(["run", *RANGE, "--out", "data"], env, tmp_path)
        assert code == 2
        assert f"another backfill (pid {first.pid}) is using data" in err
        assert first.returncode is None  # the first run goes on untouched
    finally:
        first.send_signal(signal.SIGINT)
        await wait_for(first, 5)


async def test_an_output_path_that_is_a_file_is_refused(emulator: RunningEmulator,
                                                        tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    code, _, err = await cli(["run", *RANGE, "--out", "data"], env_for(emulator.url), tmp_path)
    assert code == 2
    assert err.startswith("backfill: error: cannot use output folder data")
    assert err.count("\n") == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                            capture_output=True, check=False)
    if result.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_stops_with_one_line_and_keeps_nothing_corrupt(
        emulator: RunningEmulator, small_disk: Path, tmp_path: Path) -> None:
    env = env_for(emulator.url)
    code, out_text, err = await cli(["run", *RANGE, "--out", str(small_disk / "data")], env,
                                    tmp_path)
    assert code == 2
    token = emulator.state.token.code if emulator.state.token else None
    assert_no_secrets([out_text, err, state_text(small_disk)], token)
    errors = [line for line in err.splitlines() if line.startswith("backfill: error:")]
    assert len(errors) == 1
    assert "disk full while writing" in errors[0]
    assert "Traceback" not in err
    sources = set(source_md5s(emulator, days_ago(6, 3), TYPES))
    assert set(downloaded_md5s(small_disk)) <= sources  # whatever is in place is exact

    await anyio.run_process(["mount", "-o", "remount,size=64m", str(small_disk)])
    code, _, err = await cli(["run", *RANGE, "--out", str(small_disk / "data")], env, tmp_path)
    assert code == 0, err
    assert downloaded_md5s(small_disk) == source_md5s(emulator, days_ago(6, 3), TYPES)
    assert not list(small_disk.rglob("*.partial"))


async def test_a_read_only_output_is_refused(emulator: RunningEmulator, tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    result = await anyio.run_process(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                                      str(mount)], check=False)
    if result.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {result.stderr.decode().strip()}")
    try:
        code, _, err = await cli(["run", *RANGE, "--out", str(mount / "data")],
                                 env_for(emulator.url), tmp_path)
    finally:
        await anyio.run_process(["umount", "-l", str(mount)], check=False)
    assert code == 2
    assert err.strip() == f"backfill: error: cannot use output folder {mount / 'data'}: " \
        "read-only file system"
    assert emulator.state.stats()["calls"]["token"] == 0


class _StopAfterParts:
    """A reporter that sets ``enough`` once ``count`` parts have been written."""

    def __init__(self, count: int) -> None:
        from backfill.engine.progress import PlainReporter

        self._plain = PlainReporter(interval=3600)
        self.count = count
        self.enough = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plain, name)

    def part(self, label: str) -> Any:
        reporter = self

        class _Watch:
            def started(self, total: int | None) -> None:
                pass

            def advanced(self, count: int) -> None:
                pass

            def finished(self) -> None:
                reporter.count -= 1
                if reporter.count <= 0:
                    reporter.enough.set()

        return _Watch()


@pytest.mark.parametrize("size", ["small parts", "large parts"])
async def test_an_interrupted_run_keeps_every_finished_part_across_a_new_emulator(
        data_dir: Path, tmp_path: Path, size: str) -> None:
    from backfill.emulator import Faults
    from backfill.keys import Granularity
    from backfill.library import fetch_keys
    from tests.e2e.test_run import hours_ago, settings_for

    if size == "small parts":
        config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=8 * 1024,
                                part_size=4 * 1024)
        keys, granularity = days_ago(5, 3), Granularity.DAY
    else:  # streamed to the disk with checkpoints, and slow enough to be cut mid-part
        config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, flat_data=True,
                                compress_level=1, bytes_per_hour=3 << 20, part_size=2 << 20,
                                faults=Faults(trickle=1.0, trickle_rate=4 << 20))
        keys, granularity = hours_ago(8, 5), Granularity.HOUR
    out = tmp_path / "data"
    async with serve(config) as first:
        settings = settings_for(first, out, granularity=granularity, types=("visit", "page"),
                                checkpoint_bytes=256 << 10, min_speed=0.0)
        stopping = _StopAfterParts(3)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(partial(fetch_keys, settings, keys, reporter=stopping))
                await stopping.enough.wait()
                group.cancel_scope.cancel()  # what SIGINT does to a run
    complete = {hashlib.md5(p.read_bytes()).hexdigest() for p in out.rglob("part-*.csv.gz")}
    assert complete, "parts were finished before the stop"
    # The rerun talks to a new emulator on another port: links from another host.
    async with serve(config) as second:
        settings = settings_for(second, out, granularity=granularity, types=("visit", "page"),
                                min_speed=0.0)
        with anyio.fail_after(120):
            summary = await fetch_keys(settings, keys, reporter=stopping._plain)
        served = second.state.downloads_by_object
        stored = second.state.objects
    assert summary.exit_code == 0, summary.problems
    again = [name for name in served if stored[name].md5 in complete]
    assert again == [], f"{len(again)} finished parts were downloaded again"
