"""The scheduler's group commit of part records, alone."""

from __future__ import annotations

import threading

import anyio
import pytest

from backfill.engine.scheduler import GroupWrite

pytestmark = pytest.mark.anyio


async def test_records_that_arrive_during_a_write_share_the_next_one() -> None:
    batches: list[list[int]] = []
    writing, release = threading.Event(), threading.Event()

    def write(batch: list[int]) -> None:
        if not writing.is_set():
            writing.set()
            release.wait(5)  # the first write is slow: others queue up meanwhile
        batches.append(batch)

    group = GroupWrite[int](write)
    returned: list[int] = []

    async def add(n: int) -> None:
        await group.add(n)
        returned.append(n)
        assert any(n in batch for batch in batches), "add returned before its write"

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(add, 0)
        await anyio.to_thread.run_sync(writing.wait, 5)
        for n in range(1, 10):
            tasks.start_soon(add, n)
        await anyio.sleep(0.2)
        release.set()
    assert sorted(returned) == list(range(10))
    assert sorted(n for batch in batches for n in batch) == list(range(10))
    assert batches[0] == [0] and len(batches) == 2  # one write for the nine that waited


async def test_a_failed_write_fails_every_waiting_and_later_record() -> None:
    def write(batch: list[int]) -> None:
        raise OSError("disk full")

    group = GroupWrite[int](write)
    failures: list[int] = []

    async def add(n: int) -> None:
        try:
            await group.add(n)
        except OSError:
            failures.append(n)

    async with anyio.create_task_group() as tasks:
        for n in range(5):
            tasks.start_soon(add, n)
    await add(5)
    assert sorted(failures) == list(range(6))
