"""Presigned links: content and headers, expiry, signature, Range, determinism."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from backfill.destination.tables.schema import COLUMNS
from backfill.emulator import RunningEmulator
from tests.e2e.conftest import EmulatorFactory
from tests.helpers import Api

pytestmark = pytest.mark.anyio
READY_HOUR = "202611201000"


async def links_for(api: Api, data_type: str | None = "visit", key: str = READY_HOUR,
                    **params: str) -> list[str]:
    body = (await api.v2(key, data_type=data_type, **params)).json()
    assert body["status"] == "FINISHED", body
    links = body["downloadLinks"]
    return links if data_type else [link for group in links.values() for link in group]


async def test_a_download_is_the_part_with_its_checksums(emulator_factory: EmulatorFactory
                                                         ) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        await api.login()
        link = (await links_for(api))[0]
        reply = await api.fetch(link)
        assert reply.status == 200
        md5 = hashlib.md5(reply.body).hexdigest()
        assert reply.headers["x-amz-meta-md5-hash"] == md5
        assert reply.headers["ETag"] == f'"{md5}"'
        assert int(reply.headers["Content-Length"]) == len(reply.body)
        assert "Content-Encoding" not in reply.headers  # served as stored, never re-encoded
        assert running.state.stats()["bytes_served"] == len(reply.body)
        # Counted once the handler resumes after the send: maybe after the client read
        # the last byte.
        for _ in range(500):  # up to 5 s
            if running.state.stats()["downloads_completed"]:
                break
            await anyio.sleep(0.01)
        assert running.state.stats()["downloads_completed"] == 1


@pytest.mark.parametrize("data_type", ["visit", "page", "custom_event", "pvar", "evar", "vstr"])
async def test_parts_are_csv_in_the_documented_dialect(emulator_factory: EmulatorFactory,
                                                        data_type: str) -> None:
    async with emulator_factory(job_seconds=0.0) as (_, api):
        await api.login()
        body = (await api.fetch((await links_for(api, data_type))[0])).body
        text = gzip.decompress(body).decode()
        rows = list(csv.reader(io.StringIO(text), quotechar='"', escapechar="\\",
                               doublequote=False))
        assert tuple(rows[0]) == COLUMNS[data_type]
        assert len(rows) > 1
        assert all(len(row) == len(rows[0]) for row in rows)
        header = rows[0]
        start_ms = int(datetime(2026, 11, 20, 2, tzinfo=UTC).timestamp() * 1000)  # 10:00 Beijing
        for row in rows[1:]:
            assert start_ms <= int(row[header.index("time")]) < start_ms + 3_600_000
            for column in ("pageVariable", "eventVariable", "conversionVariable",
                           "visitorVariable", "appVariable"):
                if column in header:
                    assert isinstance(json.loads(row[header.index(column)]), dict)


async def test_expired_links_are_refused_like_s3(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        await api.login()
        link = (await links_for(api, expire="1"))[0]
        running.state.clock.advance(59)
        assert (await api.fetch(link)).status == 200
        running.state.clock.advance(2)
        reply = await api.fetch(link)
        assert reply.status == 403
        assert reply.headers["Content-Type"].startswith("application/xml")
        assert b"<Code>AccessDenied</Code><Message>Request has expired</Message>" in reply.body
        assert running.state.stats()["downloads_expired"] == 1


async def test_a_tampered_link_is_refused(emulator: tuple[RunningEmulator, Api]) -> None:
    running, api = emulator
    await api.v2(READY_HOUR)
    running.state.clock.advance(61)
    link = (await links_for(api))[0]
    longer = link.replace("X-Amz-Expires=300", "X-Amz-Expires=99999")
    reply = await api.fetch(longer)
    assert reply.status == 403
    assert b"SignatureDoesNotMatch" in reply.body
    assert (await api.fetch(link.split("?")[0])).status == 403
    unknown = link.replace("part-00000", "part-09999")
    assert (await api.fetch(unknown)).status == 403  # the name is signed too


@pytest.mark.parametrize(("header", "lo", "hi"), [("bytes=10-99", 10, 100),
                                                   ("bytes=100-", 100, None),
                                                   ("bytes=-50", -50, None)])
async def test_range_requests_get_206_and_the_slice(emulator_factory: EmulatorFactory,
                                                    header: str, lo: int, hi: int | None
                                                    ) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        await api.login()
        link = (await links_for(api))[0]
        whole = (await api.fetch(link)).body
        part = await api.fetch(link, headers={"Range": header})
        assert part.status == 206
        assert part.body == whole[lo:hi]
        start = lo % len(whole)
        assert part.headers["Content-Range"] == (
            f"bytes {start}-{start + len(part.body) - 1}/{len(whole)}")
        assert part.headers["x-amz-meta-md5-hash"] == hashlib.md5(whole).hexdigest()
        assert running.state.stats()["range_requests"] == 1


async def test_an_unsatisfiable_range_gets_416(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0) as (_, api):
        await api.login()
        link = (await links_for(api))[0]
        size = len((await api.fetch(link)).body)
        reply = await api.fetch(link, headers={"Range": f"bytes={size}-"})
        assert reply.status == 416
        assert reply.headers["Content-Range"] == f"bytes */{size}"


async def test_the_md5_header_can_be_switched_off(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0, md5_header=False) as (_, api):
        await api.login()
        reply = await api.fetch((await links_for(api))[0])
        assert reply.status == 200
        assert "x-amz-meta-md5-hash" not in reply.headers
        assert reply.headers["ETag"] == f'"{hashlib.md5(reply.body).hexdigest()}"'


async def download_all(api: Api) -> dict[str, bytes]:
    await api.login()
    result = {}
    for link in await links_for(api, data_type=None):
        name = link.split("?")[0].rsplit("_", 1)[-1]
        result[name] = (await api.fetch(link)).body
    return result


async def test_data_is_deterministic_per_seed(emulator_factory: EmulatorFactory,
                                              tmp_path: Path) -> None:
    async with emulator_factory(job_seconds=0.0, data_dir=tmp_path / "a") as (_, api):
        first = await download_all(api)
    async with emulator_factory(job_seconds=0.0, data_dir=tmp_path / "b") as (_, api):
        second = await download_all(api)
    async with emulator_factory(job_seconds=0.0, data_dir=tmp_path / "c", seed=7) as (_, api):
        other = await download_all(api)
    assert first == second
    # Object names carry a seed-derived uuid: compare the bytes, not the names.
    assert sorted(first.values()) != sorted(other.values())


async def test_parts_split_at_the_part_size(emulator_factory: EmulatorFactory) -> None:
    part_size = 8 * 1024
    async with emulator_factory(job_seconds=0.0, part_size=part_size,
                                bytes_per_hour=64 * 1024) as (_, api):
        await api.login()
        links = await links_for(api, "action")
        sizes = [len((await api.fetch(link)).body) for link in links]
        assert len(sizes) >= 4
        assert max(sizes) <= part_size
        for body in [(await api.fetch(link)).body for link in links]:
            assert gzip.decompress(body).startswith(b"visitUserId,sessionId,requestType")
