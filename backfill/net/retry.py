"""One retry policy for every exchange of a run: the export API, the token endpoint, the
download links and the object store's uploads.

A failure worth another try is a :class:`RetryableError`. Each is tried again after a
full-jitter exponential backoff, or after the ``Retry-After`` the other side asked for if
that is longer, until ``retries`` tries again are spent. A miss inside an outage (see
:mod:`backfill.net.outage`) is the service's, not the caller's: it is tried again without
counting, and the outage judgement holds it meanwhile and ends the run when the outage
outlives its budget.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from backfill.clock import Clock
from backfill.errors import RetryableError

T = TypeVar("T")


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` tries again at most, ``backoff`` doubling up to ``max_backoff``."""

    retries: int = 6
    backoff: float = 1.0
    max_backoff: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait before try again number ``attempt`` (1 for the first): the backoff, or
        the other side's ``Retry-After`` when longer."""
        return max(retry_after or 0.0, backoff(attempt - 1, self.backoff, self.max_backoff,
                                               self.rng))

    def gives_up(self, attempt: int) -> bool:
        """Whether try again number ``attempt`` is one too many."""
        return attempt > self.retries


@dataclass
class Tries:
    """What a retried call did: tries again that counted, and misses of an outage."""

    counted: int = 0
    outage: int = 0

    @property
    def total(self) -> int:
        return self.counted + self.outage


async def retrying(call: Callable[[], Awaitable[T]], policy: RetryPolicy, clock: Clock,
                   tries: Tries | None = None,
                   on_retry: Callable[[RetryableError], None] | None = None) -> T:
    """``call()`` until it returns, trying again as the policy says; raises the last
    :class:`RetryableError` once the tries are spent, and anything else at once."""
    tries = tries if tries is not None else Tries()
    while True:
        try:
            return await call()
        except RetryableError as exc:
            if on_retry is not None:
                on_retry(exc)
            if exc.outage:  # the outage judgement holds the next try; it does not count
                tries.outage += 1
                continue
            tries.counted += 1
            if policy.gives_up(tries.counted):
                raise
            await clock.sleep(policy.delay(tries.counted, exc.retry_after))
