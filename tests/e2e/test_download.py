"""The downloader alone: resume from a recorded checkpoint, as a new process would."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from backfill.clock import SystemClock, wall_now
from backfill.destination.local import LocalPart
from backfill.emulator import EmulatorConfig, serve
from backfill.errors import IntegrityError, RetryableError
from backfill.net.exchange import LinkHosts
from backfill.transfer.download import Downloader, block_size
from backfill.transfer.integrity import Progress, check_part
from tests.helpers import Api

pytestmark = pytest.mark.anyio
CLOCK = SystemClock()


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

        first = Downloader(session, CLOCK, chunk_size=16 << 10, checkpoint_bytes=64 << 10,
                           connect_timeout=5, read_timeout=0.5, hosts=_hosts())
        with pytest.raises(RetryableError, match="broke off"):
            await first.fetch(link, LocalPart(dest), Progress(), checkpoint, _Quiet())
        assert recorded, "the stalled download wrote checkpoints before it stopped"
        offset, etag = recorded[-1]
        assert 0 < offset < len(source)

        # A new process knows only what the state recorded: the offset and the ETag. What
        # the file holds past that offset was never checked: junk, here.
        temp = LocalPart(dest).temp
        with temp.open("ab") as f:
            f.write(b"junk past the recorded offset" * 100)
        second = Downloader(session, CLOCK, chunk_size=16 << 10, checkpoint_bytes=64 << 10,
                            connect_timeout=5, read_timeout=5, hosts=_hosts())
        verified = await second.fetch(link, LocalPart(dest), Progress(offset, etag),
                                      checkpoint, _Quiet())
        stats = emulator.state.stats()
    assert dest.read_bytes() == source
    assert verified.md5 == hashlib.md5(source).hexdigest()
    assert stats["range_requests"] == 1
    # The object was served whole once for comparison, and only the rest after the stall.
    assert stats["bytes_served"] <= 2 * len(source) + (len(source) - offset)


async def _resume(data_dir: Path, tmp_path: Path, kept: bytes, etag: str | None, *,
                  range_shift: int = 0) -> tuple[Progress, BaseException | None, bytes]:
    """Resume a part from ``kept`` bytes recorded with ``etag``; returns the progress, what
    the attempt raised, and the whole object."""
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=256 << 10,
                            range_shift=range_shift)
    async with serve(config) as emulator, aiohttp.ClientSession() as session:
        api = Api(session, emulator.url)
        await api.login()
        link = (await api.v2(_ready_hour(), data_type="action")).json()["downloadLinks"][0]
        source = (await api.fetch(link)).body
        part = LocalPart(tmp_path / "part-00000.csv.gz")
        part.temp.write_bytes(kept)
        progress = Progress(len(kept), etag)
        downloader = Downloader(session, CLOCK, chunk_size=16 << 10, checkpoint_bytes=1 << 20,
                                connect_timeout=5, read_timeout=5, hosts=_hosts())

        async def checkpoint(progress: Progress) -> None:
            pass

        raised: BaseException | None = None
        try:
            await downloader.fetch(link, part, progress, checkpoint, _Quiet())
        except (RetryableError, IntegrityError) as exc:
            raised = exc
    return progress, raised, source


async def test_a_resume_onto_another_object_starts_over(data_dir: Path, tmp_path: Path) -> None:
    # The kept bytes came from an object whose ETag the store no longer serves.
    kept = b"\x1f\x8b\x08 bytes of an older job's object" * 64
    progress, raised, _ = await _resume(data_dir, tmp_path, kept, '"an-older-etag"')
    assert isinstance(raised, RetryableError) and "object changed" in str(raised)
    assert (progress.offset, progress.etag) == (0, None)  # never appended to other bytes


async def test_a_range_answer_that_starts_elsewhere_starts_over(data_dir: Path,
                                                                tmp_path: Path) -> None:
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=256 << 10)
    async with serve(config) as emulator, aiohttp.ClientSession() as session:
        api = Api(session, emulator.url)
        await api.login()
        link = (await api.v2(_ready_hour(), data_type="action")).json()["downloadLinks"][0]
        reply = await api.fetch(link)
    kept, etag = reply.body[:4096], reply.headers["ETag"]
    progress, raised, _ = await _resume(data_dir, tmp_path, kept, etag, range_shift=100)
    assert isinstance(raised, RetryableError) and "object changed" in str(raised)
    assert (progress.offset, progress.etag) == (0, None)


def _hosts() -> LinkHosts:
    return LinkHosts(CLOCK, budget=60.0, probe_interval=0.1)


def _ready_hour() -> str:
    from datetime import timedelta

    from backfill.keys import Granularity, key_at

    return key_at(wall_now() - timedelta(hours=30), Granularity.HOUR).export_date


def _broken_inside(source: bytes) -> bytes:
    """``source`` with one byte in the middle of its deflate stream flipped: the framing
    (magic bytes, method, trailer) still looks right, inflating it does not."""
    broken = bytearray(source)
    broken[len(broken) // 2] ^= 0xFF
    return bytes(broken)


@pytest.mark.parametrize("deep", [False, True])
async def test_an_md5_proves_the_bytes_and_full_verify_inflates_them_anyway(
        data_dir: Path, tmp_path: Path, deep: bool) -> None:
    # A stored object that was never a good gzip, served with its own (matching) MD5:
    # by default the MD5 and the framing accept it; --verify full inflates and refuses it.
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=64 << 10)
    async with serve(config) as emulator, aiohttp.ClientSession() as session:
        api = Api(session, emulator.url)
        await api.login()
        link = (await api.v2(_ready_hour())).json()["downloadLinks"][0]
        name = link.split("/gio-raw-export/", 1)[1].split("?", 1)[0]
        stored = emulator.state.objects[name]
        bad = tmp_path / "stored-broken.csv.gz"
        bad.write_bytes(_broken_inside(stored.file.read_bytes()))
        emulator.state.objects[name] = replace(
            stored, file=bad, md5=hashlib.md5(bad.read_bytes()).hexdigest())
        downloader = Downloader(session, CLOCK, chunk_size=16 << 10, checkpoint_bytes=1 << 20,
                                connect_timeout=5, read_timeout=5, hosts=_hosts(),
                                deep=deep)
        dest = tmp_path / "part-00000.csv.gz"

        async def checkpoint(progress: Progress) -> None:
            pass

        if deep:
            with pytest.raises(IntegrityError, match="gzip"):
                await downloader.fetch(link, LocalPart(dest), Progress(), checkpoint, _Quiet())
            assert not dest.exists()
        else:
            await downloader.fetch(link, LocalPart(dest), Progress(), checkpoint, _Quiet())
            assert dest.read_bytes() == bad.read_bytes()


def test_the_framing_check_refuses_what_is_not_gzip(tmp_path: Path) -> None:
    page = tmp_path / "error.html"
    page.write_bytes(b"<html><body>503 Service Unavailable</body></html>" * 4)
    md5 = hashlib.md5(page.read_bytes()).hexdigest()
    with pytest.raises(IntegrityError, match="not a gzip file"):
        check_part(page, page.stat().st_size, md5, "error.html")
    good = tmp_path / "good.csv.gz"
    good.write_bytes(gzip.compress(b"visitUserId,time\nu1,1\n" * 100))
    trailer_lies = good.read_bytes()[:-4] + (2**32 - 1).to_bytes(4, "little")
    good.with_name("lies.gz").write_bytes(trailer_lies)
    with pytest.raises(IntegrityError, match="trailer claims"):
        check_part(good.with_name("lies.gz"), len(trailer_lies),
                   hashlib.md5(trailer_lies).hexdigest(), "lies.gz")
    assert check_part(good, -1, None, "good").size == good.stat().st_size


def test_blocks_shrink_when_many_downloads_run_so_memory_stays_flat() -> None:
    mib = 1024 * 1024
    assert [block_size(mib, n) for n in (1, 8, 16)] == [mib] * 3
    assert block_size(mib, 32) == mib // 2
    assert block_size(mib, 64) == block_size(mib, 1000) == mib // 4  # the floor
    assert block_size(64 * 1024, 64) == 64 * 1024  # never larger than asked
    assert max(n * block_size(mib, n) for n in range(1, 65)) == 16 * mib


@pytest.mark.parametrize(("whole", "piece"), [(True, 70_000), (False, 70_000), (True, 100)],
                         ids=["whole", "cut-short", "tiny-http-chunks"])
async def test_a_body_without_a_length_arrives_in_http_chunks_and_is_checked_to_its_end(
        tmp_path: Path, whole: bool, piece: int) -> None:
    # A proxy may re-send an object with chunked transfer encoding: no length, and HTTP
    # chunk ends in the middle of the stream, some arriving after their chunk's data
    # was read; tiny chunks make thousands of pieces per block. Every chunk is kept, in
    # order; the end of the body, not the end of an HTTP chunk, ends the part.
    import asyncio
    import os

    source = gzip.compress(os.urandom(900_000), compresslevel=1)
    sent = source if whole else source[: len(source) - 1000]

    async def serve_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                            ) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # the request's head
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n")
        for start in range(0, len(sent), piece):
            data = sent[start:start + piece]
            writer.write(b"%x\r\n" % len(data) + data)
            if start % 70_000 < piece:  # now and then, the chunk's end comes after its
                await writer.drain()    # data was read
                await asyncio.sleep(0.01)
            writer.write(b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve_chunked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dest = tmp_path / "part-00000.csv.gz"

    async def checkpoint(progress: Progress) -> None:
        pass

    async with server, aiohttp.ClientSession() as session:
        downloader = Downloader(session, CLOCK, chunk_size=256 << 10, checkpoint_bytes=1 << 20,
                                connect_timeout=5, read_timeout=5, hosts=_hosts())
        fetch = downloader.fetch(f"http://127.0.0.1:{port}/part", LocalPart(dest),
                                 Progress(), checkpoint, _Quiet())
        if whole:
            verified = await fetch
            assert verified.md5 == hashlib.md5(source).hexdigest()
            assert dest.read_bytes() == source
        else:  # no length and no MD5: only inflating to the end can tell
            with pytest.raises(IntegrityError, match="ends early"):
                await fetch
            assert not dest.exists()


async def test_a_resume_of_a_part_already_whole_places_it_without_a_body(
        data_dir: Path, tmp_path: Path) -> None:
    # A run stopped after the last byte was written and before the rename: the store
    # answers the resume with 416, and the kept bytes are checked and placed.
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=256 << 10)
    async with serve(config) as emulator, aiohttp.ClientSession() as session:
        api = Api(session, emulator.url)
        await api.login()
        link = (await api.v2(_ready_hour(), data_type="action")).json()["downloadLinks"][0]
        reply = await api.fetch(link)
    progress, raised, source = await _resume(data_dir, tmp_path, reply.body,
                                             reply.headers["ETag"])
    assert raised is None
    assert (tmp_path / "part-00000.csv.gz").read_bytes() == source == reply.body
    assert progress.offset == len(source)


async def test_a_resume_past_the_end_of_a_shorter_object_starts_over(
        data_dir: Path, tmp_path: Path) -> None:
    kept = b"\x1f\x8b\x08" + b"x" * (4 << 20)  # longer than the object the store has now
    progress, raised, _ = await _resume(data_dir, tmp_path, kept, '"an-older-etag"')
    assert isinstance(raised, RetryableError) and "object changed" in str(raised)
    assert progress.offset == 0
