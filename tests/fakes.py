"""In-memory stand-ins for the unit tests: a clock that jumps, an export API that answers
from a script. They run hours of waiting in milliseconds, with no network."""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint
from anyio.lowlevel import checkpoint as checkpoint_

from backfill.growingio.api import ExportAnswer
from backfill.keys import Key


class FakeClock:
    """A clock that never waits: when every task is blocked, it jumps to the earliest
    sleeper's wake-up time (as trio's autojump clock does). Wall and monotonic time move
    together. Use :func:`running` to start it."""

    def __init__(self, start: datetime | None = None) -> None:
        self._wall0 = (start or datetime(2026, 11, 20, 4, 0, tzinfo=UTC)).timestamp()
        self._mono = 1000.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def time(self) -> float:
        return self._wall0 + self._mono - 1000.0

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await checkpoint()
            return
        woken = anyio.Event()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._order), woken))
        await woken.wait()

    def advance(self, seconds: float) -> None:
        """Move time on by hand (waking whoever's time came)."""
        self._jump(self._mono + seconds)

    def _jump(self, to: float) -> None:
        self._mono = max(self._mono, to)
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            heapq.heappop(self._sleepers)[2].set()

    async def _autojump(self) -> None:
        from anyio import wait_all_tasks_blocked

        while True:
            await wait_all_tasks_blocked()
            if self._sleepers:
                self._jump(self._sleepers[0][0])
            else:
                await anyio.sleep(0.001)  # blocked on something else: let it be


@asynccontextmanager
async def running(clock: FakeClock) -> AsyncIterator[TaskGroup]:
    """Run ``clock``'s jumps for the time of the block; yields a task group to use."""
    async with anyio.create_task_group() as group:
        group.start_soon(clock._autojump)
        yield group
        group.cancel_scope.cancel()


@dataclass
class ScriptedApi:
    """An export API that answers each key from a script: a list of statuses per key
    (the last one repeats), links for FINISHED ones; or, with ``job_seconds``, as a job
    that runs that long from its first ask. It records every call's time."""

    clock: FakeClock
    script: dict[str, list[str]] = field(default_factory=dict)
    default: list[str] = field(default_factory=lambda: ["FINISHED"])
    job_seconds: float | None = None
    calls: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    started: dict[str, float] = field(default_factory=dict)
    """When each key's job started (its first ask)."""
    on_call: Callable[[Key], None] | None = None

    async def export(self, key: Key, types: tuple[str, ...]) -> ExportAnswer:
        await checkpoint()
        if self.on_call is not None:
            self.on_call(key)
        asked = self.calls[key.name]
        asked.append(self.clock.time())
        started = self.started.setdefault(key.name, asked[-1])
        if self.job_seconds is not None and key.name not in self.script:
            done = asked[-1] - started >= self.job_seconds
            status = "FINISHED" if done else "RUNNING"
        else:
            answers = self.script.get(key.name, self.default)
            status = answers[min(len(asked) - 1, len(answers) - 1)]
        links = {t: [f"https://links.example/{key.name}/{t}/part-0.csv.gz?sig=x"]
                 for t in types} if status == "FINISHED" else {}
        return ExportAnswer(status, links, "job failed" if status == "ERROR" else None)

    @property
    def total(self) -> int:
        return sum(len(times) for times in self.calls.values())


class FakeDownloader:
    """Writes a small gzip part of its link's name through the real sink, checked as the
    real downloader checks it; ``failures`` raises some first, link by link (its path)."""

    def __init__(self, failures: dict[str, list[BaseException]] | None = None) -> None:
        self.failures = failures or {}
        self.fetched: list[str] = []

    async def fetch(self, link: str, sink: Any, progress: Any, checkpoint: Any, watch: Any,
                    *, shown: str | None = None) -> Any:
        import gzip
        import hashlib
        from urllib.parse import urlsplit

        from backfill.transfer.integrity import Checker

        await checkpoint_()
        path = urlsplit(link).path
        if self.failures.get(path):
            raise self.failures[path].pop(0)
        body = gzip.compress(path.encode(), mtime=0)
        checker = Checker(shown or path)

        def check() -> Any:
            checker.feed(body)
            return checker.verdict(len(body), hashlib.md5(body).hexdigest())

        verified = await sink.write_whole(body, progress, check)
        self.fetched.append(path)
        return verified
