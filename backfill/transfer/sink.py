"""What the downloader talks to, as it needs it: where a part's bytes go (a
:class:`PartSink`, which each destination implements) and who hears of its progress (a
:class:`Watch`). Protocols only: importing them costs nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from backfill.transfer.integrity import Batch, Checker, Progress, Verified


class Watch(Protocol):
    """Hears about one part's download: its size once known, then every block."""

    def started(self, total: int | None) -> None: ...
    def advanced(self, count: int) -> None: ...


class PartSink(Protocol):
    """Where one part's bytes go while the downloader fetches and checks them."""

    resumable: bool
    """Whether bytes kept from an earlier attempt can be continued with ``Range``."""
    whole_limit: int
    """Parts up to this many bytes are read whole, checked, then written in one go."""

    def admitted(self) -> AbstractAsyncContextManager[None]:
        """Held from the request to the commit: waits while the destination has as many
        parts in flight as its memory allows."""

    async def restore(self, progress: Progress, checker: Checker) -> None:
        """Keep exactly ``progress.offset`` bytes, fed to ``checker``; or reset the offset."""

    async def refeed(self, checker: Checker) -> None:
        """Feed the kept bytes again, through a checker that was just reset."""

    async def write_whole(self, body: bytes, progress: Progress,
                          check: Callable[[], Verified]) -> Verified:
        """Run ``check`` (it raises on bad bytes), then write and commit ``body``."""

    async def write_stream(self, batches: AsyncIterator[Batch], check: Callable[[Batch], None],
                           progress: Progress, checkpoint: Callable[[Progress], Awaitable[None]],
                           every: int) -> None:
        """Write ``batches``, each passed to ``check`` (blocking: a worker thread's job,
        the same trip as the batch's write where there is one) before it is written and
        before the next is asked for. An error raised by either leaves nothing visible.
        A resumable sink calls ``checkpoint`` after each ``every`` bytes made durable."""

    async def commit(self, verified: Verified) -> Verified:
        """Make the streamed part visible under its final name."""

    async def discard(self) -> None:
        """Drop whatever an attempt kept: its bytes were wrong."""
