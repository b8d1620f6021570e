"""An object store (S3 and S3-compatible stores, GCS, Azure) through obstore.

- A part is visible only once its upload completes. Small parts (up to ``SINGLE_PUT``)
  are checked whole in memory and go up in one PUT; larger ones stream up as a multipart
  upload, in ``UPLOAD_CHUNK`` pieces, while they download. The check that fails raises
  inside the upload, and obstore aborts it: nothing appears under the part's name.
- An interrupted part starts over from byte 0 on a fresh link: a multipart upload
  cannot be continued from another process, and parts are at most 64 MB.
- One writer per destination: a lease object (``.backfill/lease.json``) created with a
  conditional PUT (If-None-Match), renewed with If-Match, and taken over only once its
  expiry passed.

Errors of obstore are translated here, and only here: before a run starts (the lease,
the first listing) into :class:`OutputError` (exit 2); during a run into
:class:`RetryableError`, which fails the key after its retries, not the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import AzureStore, GCSStore, S3Store

from backfill.clock import system_clock
from backfill.destination import Stored
from backfill.destination.credentials import bucket_endpoint, s3_credentials
from backfill.destination.manifest import named, stale
from backfill.errors import IntegrityError, OutputError, RetryableError
from backfill.layout import MANIFEST, MARKER, STATE_DIR
from backfill.model import ManifestPart

if TYPE_CHECKING:
    from backfill.config import Remote, Settings
    from backfill.transfer.integrity import Batch, Checker, Progress, Verified

    ObjectStoreT = S3Store | GCSStore | AzureStore

SINGLE_PUT = 5 * 1024 * 1024
"""Parts up to this size go up in one PUT (a multipart upload costs three requests at
least, and S3 takes no multipart piece under 5 MiB but the last)."""
UPLOAD_CHUNK = 5 * 1024 * 1024
UPLOAD_CONCURRENCY = 1
"""Pieces of one part in flight at once: the downloads run in parallel already."""
PARTS_IN_FLIGHT = 8
"""Parts uploading at once, whatever --downloads says: each holds up to two pieces (one
filling, one sent), about 9 MB measured, so 16 at once peaked at 210 MB and 8 stay
under 150. The store, not the download, is usually the bound (see the README)."""
ABORT_SECONDS = 10.0
"""How long a stopping run waits for the store to abort an upload in flight."""
LEASE = f"{STATE_DIR}/lease.json"
CONTENT_TYPE = "application/gzip"


class Unsupported(OutputError):
    """The store answered 501: it does not implement the request (a conditional write,
    on OSS). Known from obstore's own status line, never from a word a key could hold."""


class ObjectStore:
    """A bucket (and prefix) as a destination."""

    def __init__(self, remote: Remote, store: ObjectStoreT) -> None:
        self.remote = remote
        self._store = store
        self.in_flight = anyio.CapacityLimiter(PARTS_IN_FLIGHT)
        self.conditional = "unknown"
        """How the store takes If-None-Match and If-Match, as its lease finds out:
        "enforced"; "ignored" (the object is overwritten); "refused" (it answers 501, as
        OSS is reported to): the lease is then written plainly, after reading that no live
        one is there, and :meth:`create` reads before it writes."""
        self._setup = True
        """Until the run holds the lease, a store error is the configuration's (exit 2)."""

    def __str__(self) -> str:
        return self.remote.url

    @classmethod
    def open(cls, settings: Settings) -> ObjectStore:
        from backfill.config import Remote

        assert isinstance(settings.out, Remote)
        return cls(settings.out, _make_store(settings))

    # --- the Destination interface ---------------------------------------------------------

    def part(self, path: str) -> ObjectPart:
        return ObjectPart(self, path)

    async def unpublish(self, folder: str) -> None:
        await self._call(f"delete {folder}/{MARKER}",
                         obstore.delete_async(self._store, f"{folder}/{MARKER}"))

    async def publish(self, folder: str, manifest: bytes, names: set[str]) -> int | None:
        try:
            earlier = named(await self.read(f"{folder}/{MANIFEST}"))
        except FileNotFoundError:
            earlier = set()
        await self.remove(folder, stale(earlier, names))
        await self._put(f"{folder}/{MANIFEST}", manifest, content_type="application/json")
        await self._put(f"{folder}/{MARKER}", b"", content_type="text/plain")
        return None

    async def remove(self, folder: str, names: set[str]) -> None:
        # A multipart upload leaves no temporary object: the names alone.
        if names:
            await self._call(f"delete stale parts in {folder}", obstore.delete_async(
                self._store, [f"{folder}/{name}" for name in sorted(names)]))

    async def create(self, path: str, data: bytes) -> bool:
        if self.conditional in ("ignored", "refused"):
            # The lease found that the store cannot refuse: read, then write (one writer,
            # as the run's warning asked).
            try:
                await self.read(path)
                return False
            except FileNotFoundError:
                await self._put(path, data, content_type="application/json")
                return True
        try:
            await self._put(path, data, content_type="application/json", mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        return True

    async def listing(self, prefix: str) -> dict[str, dict[str, Stored]]:
        # obstore lists whole path segments; a string prefix ("visit/dt=2026-11-") is the
        # parent's listing started after the prefix (S3's start-after), stopped as soon as
        # names pass it: only the pages that hold the prefix are fetched.
        # A folder ("…/hour=07/") is listed as a segment, to its end: no stream is left
        # half-read.
        parent = prefix.rpartition("/")[0]
        found: dict[str, dict[str, Stored]] = {}
        whole = prefix.endswith("/")
        pages = obstore.list(self._store, prefix=parent or None,
                             offset=None if whole else prefix or None, chunk_size=1000)
        try:
            async for page in pages:
                for meta in page:
                    path = meta["path"]
                    if not path.startswith(prefix):
                        if path > prefix:
                            return found
                        continue
                    folder, _, name = path.rpartition("/")
                    found.setdefault(folder, {})[name] = Stored(meta["size"], meta["e_tag"])
        except BaseError as exc:
            raise self._error(exc, f"list {prefix or '/'}") from None
        return found

    async def read(self, path: str) -> bytes:
        try:
            result = await obstore.get_async(self._store, path)
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError):  # obstore raises either, by version
            raise FileNotFoundError(path) from None
        except BaseError as exc:
            raise self._error(exc, f"read {path}") from None

    async def check(self, path: str, part: ManifestPart, listed: Stored, *,
                    deep: bool) -> None:
        # The listing's size and ETag say whether the object is the one the manifest
        # recorded, without reading it.
        shown = f"{self.remote.url}/{path}"
        if listed.size != part.size:
            raise IntegrityError(f"{shown}: {listed.size} bytes, {part.size} expected")
        if part.etag and listed.etag != part.etag:
            raise IntegrityError(f"{shown}: ETag {listed.etag} differs from the manifest's "
                                 f"{part.etag}: the object was replaced")
        if deep:
            await self._check_bytes(path, part, shown)

    async def _check_bytes(self, path: str, part: ManifestPart, shown: str) -> None:
        from backfill.transfer.integrity import Checker, is_gzip

        checker = Checker(shown, inflate=True, gzip=is_gzip(path))
        try:
            result = await obstore.get_async(self._store, path)
            async for chunk in result.stream(min_chunk_size=1 << 20):
                await anyio.to_thread.run_sync(checker.feed, bytes(chunk))
        except BaseError as exc:
            raise self._error(exc, f"read {path}") from None
        checker.verdict(part.size, part.md5 or None)

    @contextlib.asynccontextmanager
    async def hold(self, settings: Settings) -> AsyncIterator[str | None]:
        # One lease per shard: shards of the same N run side by side, a shard twice not.
        name = LEASE if settings.shard is None else (
            f"{STATE_DIR}/lease-{settings.shard.slug.removeprefix('shard-')}.json")
        lease = Lease(self, settings.lease_time, name)
        await lease.take()
        caveat = None
        try:
            exclusive = await lease.exclusive()
            self._setup = False
            if not exclusive:
                how = "does not implement" if self.conditional == "refused" else "ignores"
                said = f"{self.remote.url}: the store {how} conditional writes (If-None-Match)"
                if settings.format == "delta":  # commits from 8 keys at once would collide
                    raise OutputError(f"{said}, which every Delta commit needs; write csv "
                                      "or parquet here")
                caveat = (f"{said}: its lease cannot keep a second run out; run one "
                          "backfill at a time on this output")
            async with anyio.create_task_group() as group:
                group.start_soon(lease.keep)
                try:
                    yield caveat
                finally:
                    group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await lease.release()

    async def place(self, path: str, file: Path) -> Stored:
        size = (await anyio.Path(file).stat()).st_size
        try:
            # A small file in one PUT; a large one streams up as a multipart upload.
            data: bytes | Path = (await anyio.Path(file).read_bytes() if size <= SINGLE_PUT
                                  else file)
            etag = await self._put(path, data, content_type="application/vnd.apache.parquet",
                                   multipart=size > SINGLE_PUT)
            return Stored(size, etag)
        finally:
            await anyio.Path(file).unlink(missing_ok=True)

    async def withdraw(self, folder: str) -> None:
        await self.unpublish(folder)

    # --- plumbing --------------------------------------------------------------------------

    async def _put(self, path: str, data: bytes | Path | AsyncIterator[bytes], *,
                   content_type: str = CONTENT_TYPE, metadata: dict[str, str] | None = None,
                   mode: Any = None, multipart: bool | None = None) -> str | None:
        """Upload ``data`` to ``path``; returns the new object's ETag."""
        attributes: dict[str, str] = {"Content-Type": content_type, **(metadata or {})}
        if multipart is None:
            multipart = not isinstance(data, bytes)
        result = await self._call(f"write {path}", obstore.put_async(
            self._store, path, data, attributes=attributes,
            mode=mode, use_multipart=multipart, chunk_size=UPLOAD_CHUNK,
            max_concurrency=UPLOAD_CONCURRENCY))
        etag: str | None = result["e_tag"]
        return etag

    async def _call(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except (AlreadyExistsError, PreconditionError):
            raise
        except BaseError as exc:
            if "status code: 501" in str(exc):  # never on a retry either
                raise Unsupported(f"{self.remote.url}: the store does not implement what "
                                  f"{what} asks: {_first_line(exc)}") from None
            raise self._error(exc, what) from None

    def _error(self, exc: BaseError, what: str) -> OutputError | RetryableError:
        """One line for an obstore error: the configuration's before the lease is held,
        a retryable one for a key after."""
        where = self.remote.url
        if isinstance(exc, UnauthenticatedError | PermissionDeniedError):
            return OutputError(f"{where}: the store refused to {what} ({_first_line(exc)}); "
                               "check the storage credentials and their permissions")
        if "NoSuchBucket" in str(exc) or (isinstance(exc, NotFoundError)
                                           and "bucket" in str(exc).lower()):
            return OutputError(f"{where}: the bucket {self.remote.bucket!r} does not exist")
        if self._setup:
            return OutputError(f"{where}: cannot {what}: {_first_line(exc)}")
        return RetryableError(f"{where}: could not {what}: {_first_line(exc)}")


class ObjectPart:
    """One part of an object-store destination: one PUT, or one multipart upload."""

    resumable = False
    whole_limit = SINGLE_PUT

    def __init__(self, destination: ObjectStore, path: str) -> None:
        self._dest = destination
        self._path = path
        self._etag: str | None = None

    def admitted(self) -> anyio.CapacityLimiter:
        return self._dest.in_flight

    async def restore(self, progress: Progress, checker: Checker) -> None:
        progress.offset, progress.etag = 0, None

    async def refeed(self, checker: Checker) -> None:
        checker.reset(inflate=True)  # never resumed: nothing was kept

    async def write_whole(self, body: bytes, progress: Progress,
                          check: Callable[[], Verified]) -> Verified:
        verified = await anyio.to_thread.run_sync(check)  # nothing bad goes up
        etag = await self._dest._put(self._path, body, metadata={"md5-hash": verified.md5})
        return replace(verified, etag=etag)

    async def write_stream(self, batches: AsyncIterator[Batch], check: Callable[[Batch], None],
                           progress: Progress, checkpoint: Callable[[Progress], Awaitable[None]],
                           every: int) -> None:
        """Stream ``batches`` up as one multipart upload, aborted on any way out but success.

        No checkpoints: an upload cannot be continued by another process. An error from
        ``batches`` (a broken download, bad bytes) makes obstore abort the upload. A
        cancellation (SIGTERM, Ctrl-C, a task group) would only drop obstore's future and
        leave the upload open, invisible and billed: so the upload runs shielded, and a
        cancellation makes its source raise instead, which obstore answers with an abort;
        that is waited for, at most ``ABORT_SECONDS``.
        """
        stop = asyncio.Event()
        upload = asyncio.ensure_future(self._dest._put(self._path,
                                                       _checked(batches, check, stop)))
        try:
            self._etag = await asyncio.shield(upload)
        except BaseException:
            if not upload.done():
                stop.set()
                with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_SECONDS):
                    await asyncio.wait({upload})
                if not upload.done():
                    upload.cancel()
                elif not upload.cancelled():
                    upload.exception()  # the abort's own error: expected, and not the news
            raise

    async def commit(self, verified: Verified) -> Verified:
        return replace(verified, etag=self._etag)

    async def discard(self) -> None:
        pass  # an aborted upload left nothing


class UploadStopped(Exception):
    """Raised into an upload's source to make obstore abort it (the run is stopping)."""


async def _checked(batches: AsyncIterator[Batch], check: Callable[[Batch], None],
                   stop: asyncio.Event) -> AsyncIterator[bytes]:
    """The chunks of ``batches``, each batch checked first; raises :class:`UploadStopped`
    as soon as ``stop`` is set, even while a batch is still on its way."""
    source = aiter(batches)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while True:
            step = asyncio.ensure_future(anext(source))
            await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                raise UploadStopped
            try:
                batch = step.result()
            except StopAsyncIteration:
                return
            await anyio.to_thread.run_sync(check, batch)
            for chunk in batch:
                yield chunk
    finally:
        stopped.cancel()


@dataclass(frozen=True)
class _Holder:
    owner: str
    host: str
    pid: int
    started: str
    expires: str
    run: str

    def describe(self) -> str:
        return (f"{self.owner}@{self.host} (pid {self.pid}, since {self.started}, lease until "
                f"{self.expires})")


class Lease:
    """The destination's lease object: taken at the start, renewed, released at the end."""

    def __init__(self, destination: ObjectStore, seconds: float, name: str = LEASE) -> None:
        self._dest = destination
        self._seconds = seconds
        self.name = name
        self._etag: str | None = None
        self._started = _now()
        self._run = secrets.token_hex(8)

    def _document(self) -> bytes:
        try:
            owner = getpass.getuser()
        except (KeyError, OSError):
            owner = "unknown"
        holder = _Holder(owner, socket.gethostname(), os.getpid(), self._started.isoformat(
            timespec="seconds"), (_now() + timedelta(seconds=self._seconds)).isoformat(
            timespec="seconds"), self._run)
        return json.dumps(holder.__dict__, indent=2).encode() + b"\n"

    async def take(self) -> None:
        """Create the lease, or take over one that expired. Raises :class:`OutputError`
        naming the holder when another run holds it."""
        dest = self._dest
        try:
            self._etag = await dest._put(self.name, self._document(),
                                         content_type="application/json", mode="create")
            return
        except AlreadyExistsError:
            pass
        except Unsupported:
            self._dest.conditional = "refused"  # OSS: a lease by reading first, at best
        current = await self._current()
        if current is not None:
            holder, etag = current
            if datetime.fromisoformat(holder.expires) > _now():
                raise OutputError(
                    f"another backfill holds {dest.remote.url}: {holder.describe()}; wait for "
                    f"it, or if it is dead, wait for the lease to expire or delete "
                    f"{dest.remote.url}/{self.name}")
            mode: Any = {"e_tag": etag}
        else:
            mode = "create"  # released in between
        if self._dest.conditional == "refused":
            mode = None
        try:
            self._etag = await dest._put(self.name, self._document(),
                                         content_type="application/json", mode=mode)
        except (AlreadyExistsError, PreconditionError):
            raise OutputError(f"another backfill just took {dest.remote.url}; wait for it "
                              "to end") from None

    async def exclusive(self) -> bool:
        """Whether the store enforces the lease: creating it again, while held, must be
        refused. A store that ignores If-None-Match overwrites it instead (it is our own
        document again, so nothing is lost): one PUT per run to know."""
        if self._dest.conditional == "refused":
            return False
        try:
            etag = await self._dest._put(self.name, self._document(),
                                         content_type="application/json", mode="create")
        except (AlreadyExistsError, PreconditionError):
            self._dest.conditional = "enforced"
            return True
        self._etag = etag
        self._dest.conditional = "ignored"
        return False

    async def _current(self) -> tuple[_Holder, str | None] | None:
        dest = self._dest
        try:
            result = await obstore.get_async(dest._store, self.name)
            etag = result.meta["e_tag"]  # before the body: obstore < 0.7 disposes of both
            data = bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError):  # obstore raises either, by version
            return None
        except BaseError as exc:
            raise dest._error(exc, f"read {self.name}") from None
        try:
            return _Holder(**json.loads(data)), etag
        except (ValueError, TypeError):
            # Not ours, or damaged: it cannot say who holds it; treat it as expired.
            return _Holder("unknown", "unknown", 0, "?", "1970-01-01T00:00:00+00:00", ""), etag

    async def keep(self) -> None:
        """Renew the lease every third of its time until cancelled. Raises
        :class:`OutputError` if another run took it (this run's time ran out)."""
        while True:
            await anyio.sleep(self._seconds / 3)
            try:
                self._etag = await self._dest._put(
                    self.name, self._document(), content_type="application/json",
                    mode=None if self._dest.conditional == "refused" else {"e_tag": self._etag})
            except (AlreadyExistsError, PreconditionError):
                raise OutputError(f"lost the lease of {self._dest.remote.url} to another run "
                                  "(this one could not renew it in time); stopping") from None
            except Unsupported:  # If-Match refused: renew plainly from now on
                self._dest.conditional = "refused"
            except RetryableError:
                continue  # the store hiccuped: try again before the lease runs out

    async def release(self) -> None:
        """Delete the lease if it is still this run's. Known by the run's id, not only by
        the last ETag seen: a renewal cancelled on the way out may have landed, with an
        ETag this run never heard of."""
        if self._etag is None:
            return
        with contextlib.suppress(BaseError, OutputError, RetryableError):
            current = await self._current()
            if current is not None and (current[1] == self._etag
                                        or current[0].run == self._run):
                await obstore.delete_async(self._dest._store, self.name)
        self._etag = None


def _now() -> datetime:
    """A lease's time: wall-clock time, which every machine on the bucket shares."""
    return system_clock().now()


_QUERY = re.compile(r"(https?://[^\s?]*)\?\S*")


def _first_line(exc: BaseException) -> str:
    """The gist of an obstore error: its first line, without the server's XML body or any
    URL query (a SAS token would be one)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _QUERY.sub(r"\1", text.split(": <", 1)[0])
    return text if len(text) <= 300 else text[:297] + "..."


def _make_store(settings: Settings) -> ObjectStoreT:
    """The obstore client for ``settings.out``. Credentials come from the environment
    and the provider chains obstore follows; never from our config."""
    from backfill.config import Remote

    remote = settings.out
    assert isinstance(remote, Remote)
    storage = settings.storage
    timeouts = {"connect_timeout": timedelta(seconds=settings.connect_timeout),
                "timeout": timedelta(seconds=max(settings.read_timeout, 60.0) * 5)}
    retry = {"max_retries": 2, "retry_timeout": timedelta(seconds=30),
             "backoff": {"init_backoff": timedelta(seconds=0.2),
                         "max_backoff": timedelta(seconds=5), "base": 2}}
    prefix = remote.prefix or None
    try:
        if remote.kind == "s3":
            endpoint = bucket_endpoint(settings)
            access = s3_credentials(storage.region).obstore()
            config: dict[str, Any] = access.pop("config")
            if endpoint:
                config["endpoint"] = endpoint
            if storage.virtual_hosted_style is not None:
                config["virtual_hosted_style_request"] = storage.virtual_hosted_style
            client = {**timeouts, **proxy_options(settings)}
            if endpoint.startswith("http://"):
                client["allow_http"] = True  # a MinIO on the LAN, or tests: as given
            return S3Store(remote.bucket, prefix=prefix, config=config,  # type: ignore[arg-type]
                           client_options=client, retry_config=retry,  # type: ignore[arg-type]
                           **access)
        if remote.kind == "gs":
            client = {**timeouts, **proxy_options(settings)}
            return GCSStore(remote.bucket, prefix=prefix,
                            client_options=client, retry_config=retry)  # type: ignore[arg-type]
        client = {**timeouts, **proxy_options(settings)}
        return AzureStore.from_url(remote.url, client_options=client,  # type: ignore[arg-type]
                                   retry_config=retry)  # type: ignore[arg-type]
    except BaseError as exc:
        raise OutputError(f"{remote.url}: cannot use this store: {_first_line(exc)}") from None


def proxy_options(settings: Settings) -> dict[str, str]:
    """How the Rust object_store clients (obstore's and delta-rs's alike) reach the
    output's store: through the proxy its scheme has, with the hosts that go direct
    excluded (NO_PROXY's, the store's own if listed there, and the machine's credential
    services, whose tokens a proxy must not carry). Given explicitly, so the client never
    falls back on reading the environment its own way."""
    proxies = settings.proxies
    target = _target(settings)
    proxy = proxies.https if target.startswith("https:") else proxies.http
    if proxy is None or "*" in proxies.no_proxy:
        return {}
    return {"proxy_url": proxy, "proxy_excludes": proxies.direct_hosts()}


def _target(settings: Settings) -> str:
    """The store's URL, as its client reaches it."""
    from backfill.config import Remote

    remote = settings.out
    assert isinstance(remote, Remote)
    if remote.kind == "s3":
        return bucket_endpoint(settings) or f"https://{remote.bucket}.s3.amazonaws.com"
    if remote.kind == "gs":
        return "https://storage.googleapis.com"
    return "https://blob.core.windows.net"
