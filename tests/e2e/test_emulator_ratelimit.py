"""At most 2 export calls per second per client id; 429 with Retry-After above it."""

from __future__ import annotations

import anyio
import pytest

from backfill.emulator.ratelimit import SlidingWindowLimiter, retry_after_header
from tests.e2e.conftest import EmulatorFactory
from tests.helpers import Reply

pytestmark = pytest.mark.anyio


def test_the_window_admits_two_calls_per_second() -> None:
    limiter = SlidingWindowLimiter(2, 1.0)
    assert limiter.admit("a", 10.0) is None
    assert limiter.admit("a", 10.4) is None
    assert limiter.admit("a", 10.9) == pytest.approx(0.1)
    assert limiter.admit("b", 10.9) is None  # per client id
    assert limiter.admit("a", 11.0) is None  # the call at 10.0 left the window
    assert limiter.admit("a", 11.3) == pytest.approx(0.1)
    assert limiter.peak_offered == 4


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert retry_after_header(0.1) == "1"
    assert retry_after_header(1.2) == "2"


async def test_a_burst_gets_429_with_retry_after(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(rate_limit=2) as (running, api):
        await api.login()
        replies: list[Reply] = []

        async def call() -> None:
            replies.append(await api.v2("202611201000"))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call)
        codes = sorted(r.status for r in replies)
        assert codes == [200, 200, 429, 429, 429]
        limited = next(r for r in replies if r.status == 429)
        assert int(limited.headers["Retry-After"]) >= 1
        stats = running.state.stats()
        assert stats["rate_limited"] == 3
        assert stats["peak_calls_per_window"] == 5


async def test_the_token_endpoint_is_not_limited(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(rate_limit=2) as (running, api):
        for _ in range(4):
            await api.login()
        assert running.state.stats()["rate_limited"] == 0
