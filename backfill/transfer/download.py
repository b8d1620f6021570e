"""The downloader: stream one part into its destination, checking every block on the way.

A part lands under its final name only after its length, its MD5 (whichever header the
object store sent it in) and its gzip stream were checked: inflated to its end when no
MD5 proves the bytes (or with ``--verify full``), else its framing. An interrupted part
continues with ``Range`` from the bytes its destination kept (a local folder keeps them;
an object store starts over), when the object is the same.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import anyio

from backfill.clock import Clock
from backfill.errors import IntegrityError, LinkExpiredError, PermanentError, RetryableError
from backfill.layout import redact
from backfill.net.exchange import LinkHosts
from backfill.net.proxy import Proxies
from backfill.net.transport import MAX_REDIRECTS, scheme_problem
from backfill.transfer.integrity import Batch, Checker, Checkpoint, Progress, Verified
from backfill.transfer.sink import PartSink, Watch

BLOCKS_BUDGET = 16 * 1024 * 1024
"""Bytes that all downloads together read per block, at most (unless blocks would get
smaller than ``MIN_BLOCK``): memory must not grow with ``--downloads``."""
MIN_BLOCK = 256 * 1024


def block_size(chunk_size: int, downloads: int) -> int:
    """The largest block a download reads at once: ``chunk_size``, shared out under
    ``BLOCKS_BUDGET`` when many downloads run (1 MiB up to 16 downloads, 512 KiB at 32).

    Larger blocks cost fewer worker-thread trips; past 16 downloads they cost more
    memory than they save time (32 downloads with 1 MiB blocks peaked at 158 MB).
    """
    return max(min(chunk_size, BLOCKS_BUDGET // max(downloads, 1)), min(chunk_size, MIN_BLOCK))


_PLAIN_MD5 = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_UNSATISFIED = re.compile(r"^bytes \*/(\d+)$")


@dataclass(frozen=True)
class BodyLimits:
    """What a body must do to be kept reading: the low-speed abort and the size ceiling."""

    min_speed: float = 4096.0
    """Bytes per second; a transfer under it for ``min_speed_time`` is cut (0: never)."""
    min_speed_time: float = 60.0
    max_size: int = 128 * 1024 * 1024
    """The most a part may be: a body without a length stops here, and a declared length
    past it is refused."""


class Downloader:
    """Fetches parts over one shared session; a part's ``watch`` hears every block written.

    Links are fetched as stored (no content decoding), only over http(s), following at most
    :data:`MAX_REDIRECTS` redirects, and never with the API's credentials.
    """

    def __init__(self, session: aiohttp.ClientSession, clock: Clock, *, chunk_size: int,
                 checkpoint_bytes: int, connect_timeout: float, read_timeout: float,
                 hosts: LinkHosts, proxies: Proxies | None = None,
                 deep: bool = False, limits: BodyLimits | None = None) -> None:
        self._session = session
        self._clock = clock
        self._deep = deep
        """Inflate every part, even when an MD5 proves its bytes (``--verify full``)."""
        self._hosts = hosts
        self._proxies = proxies or Proxies()
        self._limits = limits or BodyLimits()
        self._chunk = chunk_size
        self._checkpoint_bytes = checkpoint_bytes
        # No total: a 64 MB part on a slow line legitimately takes long; a silent socket not
        # (and a trickling one is cut by the low-speed abort).
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                              sock_read=read_timeout)

    async def fetch(self, link: str, sink: PartSink, progress: Progress, checkpoint: Checkpoint,
                    watch: Watch, *, shown: str | None = None) -> Verified:
        """Download ``link`` into ``sink`` (visible only once whole and checked), continuing
        from ``progress`` when the sink kept bytes.

        ``shown`` is the link as messages may name it (redacted here if not given).

        Raises :class:`LinkExpiredError` (ask the API again), :class:`RetryableError`
        (try again; ``progress`` says what is kept), :class:`IntegrityError` (the bytes
        were wrong and are discarded), :class:`PermanentError` (this link cannot be
        fetched: a refused scheme, a bad redirect) or the sink's :class:`OutputError`.
        """
        shown = shown or redact(link)
        if problem := scheme_problem(link):
            raise PermanentError(f"refused the link {shown}: {problem}")
        if not sink.resumable:
            progress.offset, progress.etag = 0, None
        # Kept bytes are checked as the last answer said: an MD5 then (the usual case)
        # means no inflating. _stream corrects it if this answer differs.
        checker = Checker(shown, inflate=self._deep or not progress.etag)
        try:
            if progress.offset:
                # Bytes kept from an earlier attempt are checked again on the way in: the
                # MD5 and the gzip stream cover the whole part, not just the rest.
                await sink.restore(progress, checker)
            return await self._stream(link, sink, progress, checkpoint, watch, checker)
        except IntegrityError:
            progress.offset, progress.etag = 0, None
            await sink.discard()
            raise

    async def _stream(self, link: str, sink: PartSink, progress: Progress,
                      checkpoint: Checkpoint, watch: Watch, checker: Checker) -> Verified:
        # As stored: a part uploaded with Content-Encoding: gzip must not be inflated on
        # the way, or its length and MD5 could never match.
        headers = {"Accept-Encoding": "identity"}
        if progress.offset:
            headers["Range"] = f"bytes={progress.offset}-"
        shown = checker.shown
        proxy = self._proxies.for_url(link)
        host = self._hosts.for_url(link)
        verdict: list[Verified] = []
        # Admitted before the request: a response left unread while the destination
        # catches up would hold a link's connection idle.
        async with sink.admitted(), host.exchange(lambda: self._session.get(
                link, headers=headers, timeout=self._timeout, proxy=proxy,
                read_bufsize=self._chunk, auto_decompress=False,
                max_redirects=MAX_REDIRECTS), proxy=proxy,
                what=lambda: f"download of {shown} broke off after {progress.offset} bytes",
                request=f"the link {shown}") as resp:
            if resp.status == 416 and progress.offset:
                return await self._kept_whole(resp, sink, progress, checker)
            expected = self._check_answer(resp, progress, shown)
            host.health.answered()
            inflate = self._deep or expected.md5 is None
            if progress.offset == 0:
                checker.reset(inflate=inflate)  # from the first byte, whatever was kept
            elif inflate and not checker.inflating:
                await sink.refeed(checker)
            elif not inflate and checker.inflating:
                checker.stop_inflating()
            rest = expected.size - progress.offset if expected.size >= 0 else None
            watch.started(rest)
            if rest is not None and rest <= max(self._chunk, sink.whole_limit):
                start = progress.offset
                try:
                    pieces = self._batches(resp, progress, watch, checker, expected)
                    body = b"".join([chunk async for batch in pieces for chunk in batch])
                finally:
                    progress.offset = start  # nothing is written until write_whole

                def check() -> Verified:
                    checker.feed(body)
                    return checker.verdict(expected.size, expected.md5)

                verified = await sink.write_whole(body, progress, check)
                progress.offset = verified.size
                return verified
            batches = self._batches(resp, progress, watch, checker, expected, verdict)
            await sink.write_stream(batches, checker.feed_batch, progress, checkpoint,
                                    self._checkpoint_bytes)
        return await sink.commit(verdict[0])

    async def _kept_whole(self, resp: aiohttp.ClientResponse, sink: PartSink,
                          progress: Progress, checker: Checker) -> Verified:
        """A 416 to a resume: nothing is left after the kept bytes if the object is as long
        as they are (a run stopped between the last byte and the rename). A 416 names no
        MD5, so the kept bytes are inflated to their end before they are placed."""
        match = _UNSATISFIED.match(resp.headers.get("Content-Range", ""))
        if match is None or int(match[1]) != progress.offset:
            progress.offset, progress.etag = 0, None  # shorter than what is kept: another one
            raise RetryableError(f"object changed while resuming {checker.shown}")
        if not checker.inflating:
            await sink.refeed(checker)
        verified = checker.verdict(progress.offset, None)
        return await sink.commit(verified)

    async def _batches(self, resp: aiohttp.ClientResponse, progress: Progress, watch: Watch,
                       checker: Checker, expected: _Expected,
                       verdict: list[Verified] | None = None) -> AsyncIterator[Batch]:
        """The body as batches of the chunks the socket delivered, about ``chunk_size``
        bytes each; the verdict is taken before the last one ends, once the sink has fed
        every batch to the checker, so a sink never commits bad bytes (an object store's
        upload is aborted by the error raised here).

        A body slower than the low-speed limit is cut (:class:`RetryableError`: continue on
        a fresh connection); one that goes past its length, or past the size ceiling when it
        has none, is refused (:class:`IntegrityError`).

        The chunks are never joined: a join would copy every byte once more on the event
        loop's thread, the one a download's Python work queues on.
        """
        content = resp.content
        limits = self._limits
        ceiling = expected.size if expected.size >= 0 else limits.max_size
        clock = self._clock
        window_start, window_bytes = clock.monotonic(), 0
        batch: Batch = []
        size = 0
        while True:
            chunk, http_chunk_end = b"", True
            judge_at = window_start + limits.min_speed_time
            broken: Exception | None = None
            try:
                with anyio.move_on_after(max(judge_at - clock.monotonic(), 0)
                                         if limits.min_speed else math.inf):
                    chunk, http_chunk_end = await content.readchunk()
            except (aiohttp.ClientError, TimeoutError) as exc:
                broken = exc
            # (b"", True) ends an HTTP chunk only; (b"", False) ends the body.
            end = not chunk and not http_chunk_end and broken is None
            window_bytes += len(chunk)
            too_slow = None
            if limits.min_speed and clock.monotonic() >= judge_at and broken is None:
                if window_bytes < limits.min_speed * limits.min_speed_time and not end:
                    rate = window_bytes / limits.min_speed_time
                    too_slow = RetryableError(
                        f"download of {expected.shown} too slow: {rate:.0f} bytes/s for "
                        f"{limits.min_speed_time:g} s, under min_speed "
                        f"({limits.min_speed:g}); cut, to go on over a fresh connection")
                window_start, window_bytes = clock.monotonic(), 0
            if chunk:
                if progress.offset + size + len(chunk) > ceiling:
                    what = (f"its declared {expected.size} bytes" if expected.size >= 0
                            else f"max_part_size ({limits.max_size} bytes) without a length")
                    raise IntegrityError(f"{expected.shown}: the body goes past {what}; "
                                         "discarded")
                batch.append(chunk)
                size += len(chunk)
            stopping = broken is not None or too_slow is not None
            # What arrived before a break or a cut is the object's: it is kept, and the
            # part goes on from there.
            if batch and (end or stopping or size >= self._chunk):
                progress.offset += size
                watch.advanced(size)
                yield batch
                batch, size = [], 0
            if broken is not None:
                raise broken
            if too_slow is not None:
                raise too_slow
            if end:
                break
        if verdict is not None:
            verdict.append(checker.verdict(expected.size, expected.md5))

    def _check_answer(self, resp: aiohttp.ClientResponse, progress: Progress,
                      shown: str) -> _Expected:
        """What the link's answer promises; 5xx, 429, 407 and broken exchanges were
        classified by the host's service already."""
        status = resp.status
        if status in (401, 403, 404, 410):
            # Object stores answer an expired signature with 403 (S3) or 410; a new job
            # version can make an old object vanish (404). Fresh links fix all of these.
            raise LinkExpiredError(f"link refused (HTTP {status}): {shown}")
        etag = resp.headers.get("ETag")
        if status == 206 and progress.offset:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if match is None or int(match[1]) != progress.offset or (
                    progress.etag and etag != progress.etag):
                progress.offset, progress.etag = 0, None  # another object now: start over
                raise RetryableError(f"object changed while resuming {shown}")
            total = int(match[3])
        elif status == 200:
            progress.offset = 0  # the server ignored Range (or none was asked): from the start
            total = resp.content_length if resp.content_length is not None else -1
        else:
            raise PermanentError(f"unexpected HTTP {status} for {shown}")
        if total > self._limits.max_size:
            raise IntegrityError(f"{shown}: declares {total} bytes, more than max_part_size "
                                 f"({self._limits.max_size}); not fetched")
        progress.etag = etag
        return _Expected(total, _expected_md5(resp.headers), shown)


@dataclass(frozen=True)
class _Expected:
    size: int
    """-1 when the server sent no length."""
    md5: str | None
    shown: str


def _expected_md5(headers: Mapping[str, str]) -> str | None:
    """The object's MD5 from the first header that carries one, as lowercase hex."""
    get = headers.get
    value = get("x-amz-meta-md5-hash")
    if value and re.fullmatch(r"[0-9a-fA-F]{32}", value.strip()):
        return value.strip().lower()
    if content_md5 := get("Content-MD5"):
        try:
            return base64.b64decode(content_md5, validate=True).hex()
        except (binascii.Error, ValueError):
            pass
    if (etag := get("ETag")) and (match := _PLAIN_MD5.match(etag.strip())):
        return match[1].lower()  # a multipart ETag ("…-3") is not an MD5 and is skipped
    return None

