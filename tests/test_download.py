"""The downloader alone: resume from a recorded checkpoint, as a new process would."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest

from backfill.download import Downloader, Progress
from backfill.emulator import EmulatorConfig, serve
from backfill.errors import RetryableError
from backfill.outage import ServiceHealth
from tests.helpers import Api

pytestmark = pytest.mark.anyio


class _Quiet:
    def started(self, total: int | None) -> None:
        pass

    def advanced(self, count: int) -> None:
        pass


async def test_a_new_process_resumes_from_the_recorded_checkpoint(data_dir: Path,
                                                                   tmp_path: Path) -> None:
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=1 << 20,
                            part_size=8 << 20)
    async with serve(config) as emulator, aiohttp.ClientSession() as session:
        api = Api(session, emulator.url)
        await api.login()
        body = (await api.v2(_ready_hour(), data_type="action")).json()
        link = body["downloadLinks"][0]
        source = (await api.fetch(link)).body  # the whole object, for comparison
        emulator.state.config.faults.update(stall=1.0, stall_seconds=5.0, limit=1)
        dest = tmp_path / "part-00000.csv.gz"
        recorded: list[tuple[int, str | None]] = []

        async def checkpoint(progress: Progress) -> None:
            recorded.append((progress.offset, progress.etag))

        first = Downloader(session, chunk_size=16 << 10, checkpoint_bytes=64 << 10,
                           connect_timeout=5, read_timeout=0.5, health=_health())
        with pytest.raises(RetryableError, match="broke off"):
            await first.fetch(link, dest, Progress(), checkpoint, _Quiet())
        assert recorded, "the stalled download wrote checkpoints before it stopped"
        offset, etag = recorded[-1]
        assert 0 < offset < len(source)

        # A new process knows only what the state recorded: the offset and the ETag.
        second = Downloader(session, chunk_size=16 << 10, checkpoint_bytes=64 << 10,
                            connect_timeout=5, read_timeout=5, health=_health())
        verified = await second.fetch(link, dest, Progress(offset, etag), checkpoint, _Quiet())
        stats = emulator.state.stats()
    assert dest.read_bytes() == source
    assert verified.md5 == hashlib.md5(source).hexdigest()
    assert stats["range_requests"] == 1
    # The object was served whole once for comparison, and only the rest after the stall.
    assert stats["bytes_served"] <= 2 * len(source) + (len(source) - offset)


def _health() -> ServiceHealth:
    return ServiceHealth("the test's links", budget=60.0, probe_interval=0.1)


def _ready_hour() -> str:
    from datetime import UTC, datetime, timedelta

    from backfill.keys import Granularity, key_at

    return key_at(datetime.now(UTC) - timedelta(hours=30), Granularity.HOUR).export_date
