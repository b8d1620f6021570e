"""The HTTP layer (:mod:`backfill.net`) on a fake clock and fake answers: the budget of
calls per second, the ``Retry-After`` hold of the whole run, the one retry policy, and the
one place where statuses and failures are classified."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest

from backfill.errors import PermanentError, RetryableError, UsageError
from backfill.net.exchange import Service
from backfill.net.outage import OUTAGE_AFTER, ServiceHealth
from backfill.net.retry import RetryPolicy, Tries, retrying
from backfill.net.throttle import RateGate
from tests.fakes import FakeClock, running

pytestmark = pytest.mark.anyio


# --- the gate ------------------------------------------------------------------------------

async def test_never_more_than_two_calls_in_any_second() -> None:
    clock = FakeClock()
    gate = RateGate(clock, 2.0, spent=False)
    sent: list[float] = []

    async def call() -> None:
        await gate.admit()
        sent.append(clock.monotonic())

    async with running(clock), anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(call)
    for i in range(len(sent) - 2):
        assert sent[i + 2] - sent[i] >= 1.0  # any third call is a second after the first
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(sent))  # never two at once
    assert sent[-1] - sent[0] < 11.0  # and no slower than the budget


async def test_a_fresh_gate_starts_spent_whatever_it_is_told() -> None:
    """A handover from another process (an Airflow worker to its trigger and back) cannot
    see the calls just made: a fresh gate's first call waits a window, even when the
    previous run of this machine says it made none (the trigger may have, since)."""
    clock = FakeClock()
    fresh = RateGate(clock, 2.0, spent=False)
    told = RateGate(clock, 2.0)
    told.remember([])  # the previous run made no call lately
    start = clock.monotonic()
    async with running(clock):
        await fresh.admit()
        assert clock.monotonic() == start
        await told.admit()
        assert clock.monotonic() - start >= 0.5  # as if a call had just gone out


async def test_a_retry_after_holds_every_call_of_the_run_even_one_queued_before_it() -> None:
    """Calls that took their place in the budget before the 503 came wait as well: the
    hold is checked right before sending (a call 1 s after a Retry-After: 20 was seen)."""
    clock = FakeClock()
    gate = RateGate(clock, 2.0, spent=False)
    sent: list[float] = []
    queued = anyio.Event()

    async def call(first: bool) -> None:
        if not first:
            queued.set()
        await gate.admit()
        sent.append(clock.monotonic())
        if first:  # its answer: 503, Retry-After: 20
            await queued.wait()
            gate.hold(20.0)

    start = clock.monotonic()
    async with running(clock), anyio.create_task_group() as group:
        group.start_soon(call, True)
        for _ in range(5):
            group.start_soon(call, False)
    assert sent[0] == start
    assert all(t >= start + 20.0 for t in sent[2:])  # one was sent before the answer came
    assert gate.held_for == 0


# --- the retry policy -------------------------------------------------------------------

async def test_tries_again_as_the_policy_says_then_gives_up() -> None:
    clock = FakeClock()
    policy = RetryPolicy(retries=3, backoff=1.0, max_backoff=4.0, rng=random.Random(7))
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(clock.monotonic())
        raise RetryableError("reset", retry_after=2.5 if len(calls) == 2 else None)

    tries = Tries()
    async with running(clock):
        with pytest.raises(RetryableError):
            await retrying(flaky, policy, clock, tries)
    assert len(calls) == 1 + policy.retries and tries.counted == policy.retries + 1
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[1] >= 2.5  # the Retry-After, when longer than the backoff
    assert all(gap <= 4.0 for gap in gaps[:1] + gaps[2:])  # capped by max_backoff


async def test_misses_of_an_outage_do_not_count() -> None:
    clock = FakeClock()
    calls = 0

    async def through_an_outage() -> str:
        nonlocal calls
        calls += 1
        if calls <= 10:
            raise RetryableError("refused", outage=True)  # the judgement holds these
        if calls == 11:
            raise RetryableError("reset")
        return "done"

    tries = Tries()
    async with running(clock):
        assert await retrying(through_an_outage, RetryPolicy(retries=1), clock, tries) == "done"
    assert (tries.counted, tries.outage) == (1, 10)


# --- one place that classifies ----------------------------------------------------------

class _Answer:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status, self.headers = status, headers or {}


def _sending(answer: _Answer | BaseException) -> Any:
    @asynccontextmanager
    async def send() -> AsyncIterator[_Answer]:
        await anyio.lowlevel.checkpoint()
        if isinstance(answer, BaseException):
            raise answer
        yield answer

    return send


def _service(clock: FakeClock) -> Service:
    health = ServiceHealth("the export API", clock, budget=60.0, probe_interval=1.0)
    return Service("the export API", health, RateGate(clock, 2.0, spent=False), clock)


async def _exchange(service: Service, answer: _Answer | BaseException,
                    proxy: str | None = None) -> int:
    async with service.exchange(_sending(answer), proxy=proxy, what="the export API") as got:
        return int(got.status)


async def test_a_5xx_is_a_miss_and_its_retry_after_holds_the_service() -> None:
    clock = FakeClock()
    service = _service(clock)
    with pytest.raises(RetryableError) as caught:
        await _exchange(service, _Answer(503, {"Retry-After": "20"}))
    assert caught.value.retry_after == 20.0 and not caught.value.outage
    assert str(caught.value) == "the export API: HTTP 503"
    assert service.gate.held_for == 20.0
    async with running(clock):
        for _ in range(OUTAGE_AFTER - 1):  # in a row, with no answer between: an outage
            with pytest.raises(RetryableError):
                await _exchange(service, _Answer(502))
    assert service.health.down


async def test_a_429_holds_the_service_and_any_status_with_retry_after_too() -> None:
    clock = FakeClock()
    service = _service(clock)
    with pytest.raises(RetryableError, match="rate limited"):
        await _exchange(service, _Answer(429, {"Retry-After": "3"}))
    assert service.gate.held_for == 3.0 and not service.health.down
    async with running(clock):
        assert await _exchange(service, _Answer(401, {"Retry-After": "7"})) == 401
    assert service.gate.held_for == 7.0  # honoured on every status that carries it


async def test_a_proxy_that_wants_credentials_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="wants credentials"):
        await _exchange(_service(FakeClock()), _Answer(407), proxy="http://proxy:3128")


@pytest.mark.parametrize(("failure", "kind", "down"), [
    (aiohttp.ServerDisconnectedError(), RetryableError, True),
    (TimeoutError(), RetryableError, True),
    (aiohttp.TooManyRedirects(None, ()), PermanentError, False),  # type: ignore[arg-type]
])
async def test_a_failed_exchange_is_classified_once(failure: BaseException,
                                                    kind: type[Exception],
                                                    down: bool) -> None:
    clock = FakeClock()
    service = _service(clock)
    async with running(clock):
        for _ in range(OUTAGE_AFTER):
            with pytest.raises(kind):
                await _exchange(service, failure)
    assert service.health.down is down  # only a host that did not answer is a miss
