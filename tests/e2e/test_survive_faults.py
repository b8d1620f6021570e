"""Remote faults at high rates, one at a time and all together: output stays exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backfill.emulator import EmulatorConfig, Faults, serve
from tests.e2e.test_run import days_ago, downloaded_md5s, run, settings_for, source_md5s
from tests.helpers import assert_no_secrets, state_text

pytestmark = pytest.mark.anyio

TYPES = ("visit", "page")
FAULTS: dict[str, dict[str, Any]] = {
    "api_5xx": {"api_5xx": 0.3},
    "reset": {"reset": 0.3},
    "truncate": {"truncate": 0.3},
    "corrupt": {"corrupt": 0.3},
    "stall": {"stall": 0.2, "stall_seconds": 3.0},
    "slow_first_byte": {"slow_first_byte": 0.3, "slow_seconds": 0.2},
    "revoke_token": {"revoke_token": 1.0, "limit": 1},
    "job_error": {"job_error": 0.5},
    "all together": {"api_5xx": 0.2, "reset": 0.2, "truncate": 0.2, "corrupt": 0.2,
                     "stall": 0.1, "stall_seconds": 3.0, "slow_first_byte": 0.2,
                     "slow_seconds": 0.2, "job_error": 0.2, "revoke_token": 0.1},
}


@pytest.mark.parametrize("name", list(FAULTS))
async def test_output_is_exact_under_faults(name: str, data_dir: Path, tmp_path: Path) -> None:
    faults = Faults(seed=11, **FAULTS[name])
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.2, bytes_per_hour=8 * 1024,
                            part_size=4 * 1024, faults=faults)
    async with serve(config) as emulator:
        keys = days_ago(4, 3)
        settings = settings_for(emulator, tmp_path, types=TYPES, read_timeout=1.0,
                                error_retries=5, error_retry_delay=0.1, retries=8)
        summary = await run(settings, keys)
        stats = emulator.state.stats()
    assert summary.exit_code == 0, summary.problems
    assert sum(stats["faults"].values()) > 0  # the faults really fired
    token = emulator.state.token.code if emulator.state.token else None
    assert_no_secrets([state_text(tmp_path), *summary.problems.values()], token)
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, TYPES)
    assert not list(tmp_path.rglob("*.partial"))
    parts = sum(source_md5s(emulator, keys, TYPES).values())
    assert summary.retries < parts  # bounded: retries follow faults, not a storm


async def test_429_bursts_are_waited_out(data_dir: Path, tmp_path: Path) -> None:
    # The server allows less than the client's budget: every 429 carries Retry-After.
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, rate_limit=1,
                            rate_window=2.0, bytes_per_hour=4096)
    async with serve(config) as emulator:
        keys = days_ago(6, 3)
        summary = await run(settings_for(emulator, tmp_path, types=("visit",)), keys)
        stats = emulator.state.stats()
    assert summary.exit_code == 0
    assert stats["rate_limited"] >= 1
    assert stats["rate_limited"] <= len(keys)  # each 429 paused every task, not just one
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, ("visit",))


async def test_no_corrupt_part_is_ever_kept(data_dir: Path, tmp_path: Path) -> None:
    # Every attempt is corrupted: the key fails, and nothing wrong sits under a final name.
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=4096,
                            faults=Faults(corrupt=1.0))
    async with serve(config) as emulator:
        settings = settings_for(emulator, tmp_path, types=("visit",), retries=2)
        summary = await run(settings, days_ago(3, 3))
    assert summary.exit_code == 1
    problem = next(iter(summary.problems.values()))
    assert_no_secrets([problem, state_text(tmp_path)], None)
    assert "MD5" in problem or "not a valid gzip stream" in problem
    assert not list(tmp_path.rglob("part-*.csv.gz"))
    assert not list(tmp_path.rglob("_SUCCESS"))


# Where the store states the object's MD5; the other headers are left without one.
MD5_SOURCES: dict[str, dict[str, bool]] = {
    "x-amz-meta-md5-hash": {"md5_header": True, "etag_md5": False},
    "Content-MD5": {"md5_header": False, "content_md5": True, "etag_md5": False},
    "ETag": {"md5_header": False, "etag_md5": True},
}


def md5_store(data_dir: Path, source: str, faults: Faults) -> EmulatorConfig:
    """An emulator whose store states each object's MD5 only in ``source``."""
    return EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=4096,
                          faults=faults, **MD5_SOURCES[source])


@pytest.mark.parametrize("source", list(MD5_SOURCES))
async def test_a_valid_gzip_that_is_not_the_object_is_refused_by_its_md5(
        source: str, data_dir: Path, tmp_path: Path) -> None:
    # The first two downloads serve a valid gzip of the right length that is not the stored
    # object: only the MD5 tells. They are never kept, and fresh links bring the real ones.
    async with serve(md5_store(data_dir, source, Faults(wrong_object=1.0, limit=2))
                     ) as emulator:
        keys = days_ago(3, 3)
        summary = await run(settings_for(emulator, tmp_path, types=("visit",)), keys)
        stats = emulator.state.stats()
    assert stats["faults"] == {"wrong_object": 2}
    assert summary.exit_code == 0, summary.problems
    assert summary.retries >= 1
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, ("visit",))


@pytest.mark.parametrize("source", list(MD5_SOURCES))
async def test_a_store_that_always_serves_other_bytes_fails_the_key_and_keeps_nothing(
        source: str, data_dir: Path, tmp_path: Path) -> None:
    async with serve(md5_store(data_dir, source, Faults(wrong_object=1.0))) as emulator:
        summary = await run(settings_for(emulator, tmp_path, types=("visit",), retries=1),
                            days_ago(3, 3))
    assert summary.exit_code == 1
    assert "MD5" in next(iter(summary.problems.values()))
    assert not list(tmp_path.rglob("part-*.csv.gz"))
    assert not list(tmp_path.rglob("_SUCCESS"))


async def test_without_an_md5_the_whole_stream_is_inflated(data_dir: Path,
                                                           tmp_path: Path) -> None:
    # No MD5 anywhere (a multipart ETag), and a flipped byte mid-stream: the length and
    # the framing look right, so only inflating the stream finds it.
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=4096,
                            md5_header=False, etag_md5=False,
                            faults=Faults(corrupt=1.0, limit=2))
    async with serve(config) as emulator:
        keys = days_ago(3, 3)
        summary = await run(settings_for(emulator, tmp_path, types=("visit",)), keys)
        stats = emulator.state.stats()
    assert stats["faults"] == {"corrupt": 2}
    assert summary.exit_code == 0, summary.problems
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, ("visit",))


@pytest.mark.parametrize("fault", ["reset", "stall", "truncate"])
async def test_a_key_failed_by_a_broken_download_shows_no_signed_link(
        fault: str, data_dir: Path, tmp_path: Path) -> None:
    import io

    from backfill.engine.progress import PlainReporter
    from backfill.library import fetch_keys

    faults = Faults(**{fault: 1.0}, stall_seconds=5.0)
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=8 * 1024,
                            part_size=4 * 1024, faults=faults)
    async with serve(config) as emulator:
        settings = settings_for(emulator, tmp_path, types=("visit",), retries=0,
                                read_timeout=1.0)
        lines = io.StringIO()
        summary = await fetch_keys(settings, days_ago(4, 4),
                                   reporter=PlainReporter(lines, interval=0))
        token = emulator.state.token.code if emulator.state.token else None
    assert summary.exit_code == 1
    problem = next(iter(summary.problems.values()))
    assert "/gio-raw-export/" in problem  # the link is named...
    assert_no_secrets([problem, lines.getvalue(), state_text(tmp_path)], token)  # ...unsigned
