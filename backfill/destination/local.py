"""A local folder: parts download to hidden temporary files, are checked, fsynced and
renamed into place; the manifest and ``_SUCCESS`` are written the same way, last.

An interrupted part keeps its bytes up to the last checkpoint and continues with
``Range``. The state's file lock (:meth:`backfill.state.store.Store.lock`) keeps a second run
out of the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiofiles
import aiofiles.os
import anyio

from backfill.destination import Stored
from backfill.destination.manifest import publish, remove, unpublish
from backfill.errors import OutputError
from backfill.layout import partial_name
from backfill.model import ManifestPart

if TYPE_CHECKING:
    from backfill.config import Settings
    from backfill.transfer.integrity import Batch, Checker, Progress, Verified


class LocalFolder:
    """The embedded default: a folder tree on a local (or mounted) file system."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def part(self, path: str) -> LocalPart:
        return LocalPart(self.root / path)

    async def unpublish(self, folder: str) -> None:
        await anyio.to_thread.run_sync(unpublish, self.root / folder)

    async def publish(self, folder: str, manifest: bytes, names: set[str]) -> int | None:
        path = self.root / folder
        try:
            await anyio.to_thread.run_sync(publish, path, manifest, names)
        except OSError as exc:
            raise OutputError.from_os_error(exc, path) from None
        return None

    async def remove(self, folder: str, names: set[str]) -> None:
        ours = names | {partial_name(name) for name in names}
        await anyio.to_thread.run_sync(remove, self.root / folder, ours)

    async def listing(self, prefix: str) -> dict[str, dict[str, Stored]]:
        return await anyio.to_thread.run_sync(_walk, self.root, prefix)

    async def create(self, path: str, data: bytes) -> bool:
        try:
            return await anyio.to_thread.run_sync(_create, self.root / path, data)
        except OSError as exc:
            raise OutputError.from_os_error(exc, self.root) from None

    async def read(self, path: str) -> bytes:
        try:
            return await anyio.to_thread.run_sync((self.root / path).read_bytes)
        except NotADirectoryError:  # a file where a folder should be: nothing there
            raise FileNotFoundError(path) from None

    async def check(self, path: str, part: ManifestPart, listed: Stored, *,
                    deep: bool) -> None:
        # Reading a local file is cheap: its MD5 is checked every time, not only its size.
        from backfill.transfer.integrity import check_part

        file = self.root / path
        await anyio.to_thread.run_sync(
            lambda: check_part(file, part.size, part.md5 or None, str(file), deep=deep))

    @contextlib.asynccontextmanager
    async def hold(self, settings: Settings) -> AsyncIterator[str | None]:
        yield None  # the state's file lock, taken with the state, covers the folder

    async def place(self, path: str, file: Path) -> Stored:
        target = self.root / path
        try:
            return await anyio.to_thread.run_sync(_move_in, file, target)
        except OSError as exc:
            raise OutputError.from_os_error(exc, target.parent) from None

    async def withdraw(self, folder: str) -> None:
        await self.unpublish(folder)


def _create(path: Path, data: bytes) -> bool:
    """Write ``path`` whole (a synced temporary file, then a hard link: it fails if the
    name exists), unless it exists; whether this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(partial_name(f"{path.name}.{os.getpid()}"))
    try:
        with temp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
    finally:
        temp.unlink(missing_ok=True)
    _sync_folder(path.parent)
    return True


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_in(file: Path, target: Path) -> Stored:
    """``file`` (fsynced) under ``target``'s name: renamed, or copied then renamed when the
    two are on different file systems (a state folder elsewhere)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(file, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        temp = target.with_name(partial_name(target.name))
        shutil.copyfile(file, temp)
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
        file.unlink(missing_ok=True)
    return Stored(target.stat().st_size)


def _walk(root: Path, prefix: str) -> dict[str, dict[str, Stored]]:
    """Files under ``root`` whose relative path starts with ``prefix``, by folder; only
    the folders that can hold such paths are read (a month, not the whole type)."""
    found: dict[str, dict[str, Stored]] = {}
    for folder, dirs, files in os.walk(root / prefix.rpartition("/")[0]):
        relative = Path(folder).relative_to(root).as_posix()
        relative = "" if relative == "." else relative
        dirs[:] = [d for d in dirs if _may_hold(f"{relative}/{d}".lstrip("/"), prefix)]
        for name in files:
            if f"{relative}/{name}".lstrip("/").startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    size = os.stat(os.path.join(folder, name)).st_size
                    found.setdefault(relative, {})[name] = Stored(size)
    return found


def _may_hold(path: str, prefix: str) -> bool:
    return path.startswith(prefix) or prefix.startswith(path + "/")


class LocalPart:
    """One part: ``.part-NNNNN.csv.gz.partial`` beside its final name until it is whole."""

    resumable = True
    whole_limit = 0  # the downloader's block size decides

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.temp = dest.with_name(partial_name(dest.name))

    def admitted(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # a file's memory is one block: no limit to keep

    async def restore(self, progress: Progress, checker: Checker) -> None:
        await anyio.to_thread.run_sync(self._restore, progress, checker)

    def _restore(self, progress: Progress, checker: Checker) -> None:
        temp = self.temp
        try:
            if temp.exists() and temp.stat().st_size >= progress.offset:
                with temp.open("r+b") as f:
                    f.truncate(progress.offset)  # bytes past the last checkpoint are not trusted
                    f.seek(0)
                    while block := f.read(min(1 << 20, progress.offset - checker.size)):
                        checker.feed(block)
                return
            progress.offset, progress.etag = 0, None
        except OSError as exc:
            raise _disk_error(exc, temp) from None

    async def refeed(self, checker: Checker) -> None:
        await anyio.to_thread.run_sync(self._refeed, checker)

    def _refeed(self, checker: Checker) -> None:
        kept = checker.size
        checker.reset(inflate=True)
        with self.temp.open("rb") as f:
            while kept > checker.size and (block := f.read(min(1 << 20, kept - checker.size))):
                checker.feed(block)

    async def write_whole(self, body: bytes, progress: Progress,
                          check: Callable[[], Verified]) -> Verified:
        # One trip to a worker thread checks, writes, syncs and places a small part: a
        # trip costs more than its bytes.
        return await anyio.to_thread.run_sync(self._write_whole, body, progress, check)

    def _write_whole(self, body: bytes, progress: Progress,
                     check: Callable[[], Verified]) -> Verified:
        verified = check()  # nothing bad reaches the disk
        try:
            if not progress.offset:
                self.temp.parent.mkdir(parents=True, exist_ok=True)
            # After restore the file holds exactly the trusted bytes: append to them.
            with self.temp.open("ab" if progress.offset else "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.temp, self.dest)
        except OSError as exc:
            raise _disk_error(exc, self.dest) from None
        return verified

    async def write_stream(self, batches: AsyncIterator[Batch], check: Callable[[Batch], None],
                           progress: Progress, checkpoint: Callable[[Progress], Awaitable[None]],
                           every: int) -> None:
        """Append ``batches`` to the temporary file; fsync it and call ``checkpoint`` each
        time ``every`` more bytes are written, so that a rerun resumes from there.

        A batch is checked and written in one trip to a worker thread (aiofiles would make
        the write a second trip: measured slower); aiofiles opens and closes the file."""
        try:
            if progress.offset == 0:
                await aiofiles.os.makedirs(self.temp.parent, exist_ok=True)
            f = await aiofiles.open(self.temp, "ab" if progress.offset else "wb")
        except OSError as exc:
            raise _disk_error(exc, self.temp) from None
        try:
            since = 0
            async for batch in batches:  # errors of the download pass through untouched
                try:
                    since += await anyio.to_thread.run_sync(_append, f.fileno(), batch, check)
                    if since >= every:
                        await anyio.to_thread.run_sync(os.fsync, f.fileno())
                        since = 0
                        await checkpoint(progress)
                except OSError as exc:
                    raise _disk_error(exc, self.temp) from None
        finally:
            with anyio.CancelScope(shield=True):
                await f.close()

    async def commit(self, verified: Verified) -> Verified:
        await anyio.to_thread.run_sync(self._place)
        return verified

    def _place(self) -> None:
        try:
            fd = os.open(self.temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.temp, self.dest)
            # The folder itself is fsynced once, when its manifest is published: that
            # makes every rename in it durable before the key is recorded done.
        except OSError as exc:
            raise _disk_error(exc, self.dest) from None

    async def discard(self) -> None:
        await anyio.to_thread.run_sync(lambda: self.temp.unlink(missing_ok=True))


WRITEV_MAX = 512
"""Chunks per ``writev`` call: under every platform's IOV_MAX (1,024 on Linux and macOS).
A batch can hold thousands when a proxy re-sends a body in small HTTP chunks."""


def _append(fd: int, batch: Batch, check: Callable[[Batch], None]) -> int:
    """Check ``batch``, then write all of it at the end of ``fd``; its length."""
    check(batch)
    size = 0
    for start in range(0, len(batch), WRITEV_MAX):
        group = batch[start:start + WRITEV_MAX]
        length = sum(map(len, group))
        written = os.writev(fd, group)
        if written < length:  # a short write (a full disk raises instead): the rest
            data = memoryview(b"".join(group))
            while written < length:
                written += os.write(fd, data[written:])
        size += length
    return size


def _disk_error(exc: OSError, path: Path) -> OutputError:
    return OutputError.from_os_error(exc, path.parent)
