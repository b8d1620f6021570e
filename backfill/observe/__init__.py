"""What a run tells the world when it ends, besides its exit code: Prometheus metrics (a
textfile, a Pushgateway) and OpenLineage events. Every ``run``, ``retry`` and ``catchup``
(and every library or orchestrator call of :func:`backfill.library.fetch_keys`) goes
through one :class:`Observer`.

Neither ever changes a run's outcome: a metrics file that cannot be written, a gateway
or a lineage endpoint that does not answer, is one warning line, within a bounded time.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import anyio

from backfill.clock import Clock
from backfill.config import Settings
from backfill.engine.progress import Reporter
from backfill.errors import BackfillError, ExitCode, Interrupted, flatten
from backfill.keys import Key
from backfill.model import Summary
from backfill.observe.lineage import Lineage
from backfill.state.freshness import Freshness

FINISH_TIMEOUT = 30.0
"""The most the end of a run spends reading its watermark for the metrics."""
STOPPED_TIMEOUT = 5.0
"""The same for a stopped run: a pod's grace period after SIGTERM is often 30 s."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended, for the metrics and the lineage: ``summary``, what it did (so far,
    when it ended on an error: ``error``, its one line)."""

    settings: Settings
    keys: list[Key]
    run_id: str
    started: datetime
    ended: datetime
    seconds: float
    exit_code: int
    summary: Summary | None
    error: str | None
    freshness: list[Freshness] | None
    """Each type's watermark as the destination holds it after the run (None when it
    could not be read)."""


class Observer:
    """One run, observed: :meth:`started` before it, :meth:`ended` after it, whatever
    happened."""

    def __init__(self, settings: Settings, keys: list[Key], clock: Clock,
                 reporter: Reporter, *, lineage: bool = True) -> None:
        self._settings, self._keys, self._clock = settings, keys, clock
        self._reporter = reporter
        self._run_id = str(_uuid7(clock))
        self._started = clock.now()
        self._since = clock.monotonic()
        self._lineage: Lineage | None = None
        if lineage:
            try:
                self._lineage = Lineage.configured(settings, keys, self._run_id,
                                                   reporter.warning)
            except Exception as exc:  # the client's own reading of its configuration
                reporter.warning(f"OpenLineage: not usable ({type(exc).__name__}); no lineage "
                                 "is sent")

    async def started(self) -> None:
        if self._lineage is not None:
            await self._lineage.start(self._started)

    async def ended(self, summary: Summary | None, error: BaseException | None,
                    freshness: Callable[[], Awaitable[list[Freshness]]]) -> None:
        """Report the end: ``summary`` (what the run did, so far if it raised ``error``);
        ``freshness`` reads the watermarks (only when metrics are asked for). Shielded
        from the run's cancellation, bounded in time."""
        with anyio.CancelScope(shield=True):
            await self._ended(summary, error, freshness)

    async def _ended(self, summary: Summary | None, error: BaseException | None,
                     freshness: Callable[[], Awaitable[list[Freshness]]]) -> None:
        s = self._settings
        if self._lineage is None and not s.reports_metrics:
            return
        code, line = _exit(summary, error)
        watermarks = None
        if s.reports_metrics:
            limit = STOPPED_TIMEOUT if code == ExitCode.INTERRUPTED else FINISH_TIMEOUT
            with anyio.move_on_after(limit) as reading:
                try:
                    watermarks = await freshness()
                except BackfillError as exc:
                    self._reporter.warning(f"metrics: the watermark could not be read: {exc}")
                except Exception as exc:  # a table's log, the state: never the run's end
                    self._reporter.warning("metrics: the watermark could not be read "
                                           f"({type(exc).__name__})")
            if reading.cancelled_caught:
                self._reporter.warning(f"metrics: the watermark was not read within {limit:g} "
                                       "s; the metrics keep the last one")
        outcome = Outcome(s, self._keys, self._run_id, self._started, self._clock.now(),
                          self._clock.monotonic() - self._since, code, summary, line,
                          watermarks)
        for report in (self._metrics, self._lineage_end):
            try:
                await report(outcome)
            except Exception as exc:  # what reports the run never changes how it ended
                self._reporter.warning(f"could not report the run ({type(exc).__name__})")

    async def _metrics(self, outcome: Outcome) -> None:
        if self._settings.reports_metrics:
            from backfill.observe import metrics

            await metrics.report(outcome, self._reporter.warning)

    async def _lineage_end(self, outcome: Outcome) -> None:
        if self._lineage is not None:
            await self._lineage.end(outcome)


def _exit(summary: Summary | None, error: BaseException | None) -> tuple[int, str | None]:
    """The exit code and error line of a run: its summary's, or its error's."""
    if error is None:
        assert summary is not None
        return summary.exit_code, summary.failure()
    flat = flatten(error)
    if isinstance(flat, BackfillError):
        return flat.exit_code, str(flat)  # ours: one line, redacted where it is made
    if not isinstance(flat, Exception):  # a signal, the run's cancellation
        return ExitCode.INTERRUPTED, str(Interrupted(str(flat) or "SIGINT"))
    # Not ours (a bug): its text may hold anything, a signed link's query included.
    return ExitCode.FAILED, f"{type(flat).__name__} (a bug: see the run's traceback)"


def _uuid7(clock: Clock) -> uuid.UUID:
    """A UUIDv7 (time-ordered, as OpenLineage asks of run ids) from the clock's time."""
    import os

    millis = int(clock.now().timestamp() * 1000)
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)
