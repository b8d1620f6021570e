"""How a run tells what it does: the :class:`Reporter` it calls, the :class:`Activity` it
keeps up to date, and :class:`PlainReporter`, plain or JSON lines on stderr (what a
library call gets; the command line adds its bars, :mod:`backfill.cli.report`).

Progress goes to stderr, so that stdout stays for results. Nothing here ever receives a
token or a signed query.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TextIO

from backfill.clock import Clock, SystemClock
from backfill.keys import BEIJING
from backfill.model import Status, human_bytes, keys
from backfill.transfer.sink import Watch


@dataclass
class Activity:
    """What a run is doing now and what it waits for; the scheduler writes it, reporters
    read it (the live display's phase line, the heartbeat of plain and JSON logs)."""

    clock: Clock
    keys_total: int = 0
    keys_done: int = 0
    bytes: int = 0
    running: dict[str, float] = field(default_factory=dict)
    """Keys whose export job is RUNNING, and when each is asked again (the clock's
    monotonic time)."""
    not_due: dict[str, datetime] = field(default_factory=dict)
    """Keys not exportable yet, and from when they should be."""
    downloading: set[str] = field(default_factory=set)
    asking: int = 0
    started: float | None = None
    """When the run started (the clock's monotonic time; its first reading if not given)."""
    token_pending: Callable[[], bool] = field(default=lambda: False, repr=False)
    outage: Callable[[], str | None] = field(default=lambda: None, repr=False)
    """The service that is not answering now, in words, if one is not."""

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock.monotonic()

    def facts(self, now: float) -> dict[str, Any]:
        """The same as :meth:`describe`, as fields (the JSON heartbeat). ``now`` is anyio's
        clock, the one ``running`` holds."""
        soonest = min(self.not_due.values(), default=None)
        return {
            "phase": self.phase(),
            "keys_done": self.keys_done, "keys_total": self.keys_total,
            "jobs_running": len(self.running),
            "next_check_seconds": self._next_check(now),
            "keys_not_exportable": len(self.not_due),
            "exportable_from": soonest.isoformat(timespec="minutes") if soonest else None,
            "keys_downloading": len(self.downloading),
            "bytes": self.bytes, "bytes_per_second": round(self._rate()),
            "eta_seconds": self._eta(), "outage": self.outage(),
        }

    def phase(self) -> str:
        if self.outage():
            return "outage"
        if self.token_pending():
            return "token"
        if self.downloading:
            return "downloading"
        if self.running or self.asking:
            return "waiting for export jobs"
        if self.not_due:
            return "waiting for data"
        return "finishing" if self.keys_done else "starting"

    def describe(self, now: float) -> str:
        """One line: ``3 export jobs RUNNING, next check in 12 s; 2 keys not exportable
        before 15:40 Beijing time; downloading 4 keys at 12.3 MB/s; 10/48 keys done, ETA
        0:05:12``."""
        said: list[str] = []
        if outage := self.outage():
            said.append(f"{outage}; holding every key")
        if self.token_pending():
            said.append("getting a token")
        if self.running:
            said.append(f"{len(self.running)} export job{_s(len(self.running))} RUNNING, "
                        f"next check in {self._next_check(now)} s")
        elif self.asking:
            said.append(f"asking the export API about {self.asking} key{_s(self.asking)}")
        if self.not_due:
            soonest = min(self.not_due.values()).astimezone(BEIJING)
            said.append(f"{len(self.not_due)} key{_s(len(self.not_due))} not exportable "
                        f"before {soonest:%H:%M} Beijing time")
        if self.downloading:
            said.append(f"downloading {len(self.downloading)} key{_s(len(self.downloading))} "
                        f"at {human_bytes(self._rate())}/s")
        done = f"{self.keys_done}/{self.keys_total} keys done"
        if (eta := self._eta()) is not None:
            done += f", ETA {timedelta(seconds=eta)}"
        return "; ".join([*said, done])

    def _next_check(self, now: float) -> int | None:
        soonest = min(self.running.values(), default=None)
        return None if soonest is None else max(round(soonest - now), 0)

    def _elapsed(self) -> float:
        return self.clock.monotonic() - (self.started or 0.0)

    def _rate(self) -> float:
        return self.bytes / max(self._elapsed(), 1e-9)

    def _eta(self) -> int | None:
        """Keys left at the pace of the keys done so far; none while any key waits for an
        export job or for its data, whose end nothing here can tell (a pace measured over
        such a wait only grows)."""
        left = self.keys_total - self.keys_done
        if not self.keys_done or not left or self.running or self.not_due or self.asking:
            return None
        return round(self._elapsed() / self.keys_done * left)


def _s(count: int) -> str:
    return "" if count == 1 else "s"


class PartWatch(Watch, Protocol):
    def finished(self) -> None: ...


class Reporter(Protocol):
    def warning(self, text: str) -> None: ...
    def heartbeat(self, activity: Activity, now: float) -> None:
        """Called every second or so while a run fetches: say what it waits for."""
    def begin(self, to_fetch: int, already_done: int, max_wait: float = 0.0) -> None:
        """The run starts: ``max_wait`` seconds is how long keys not ready are waited for."""
    def key_done(self, key: str, status: Status, detail: str | None) -> None: ...
    def part(self, label: str) -> PartWatch: ...
    def end(self) -> None: ...


class _NoWatch:
    def started(self, total: int | None) -> None:
        pass

    def advanced(self, count: int) -> None:
        pass

    def finished(self) -> None:
        pass


_LEVELS = ("error", "warning", "info", "debug")


class PlainReporter:
    """A line every ``interval`` seconds, and one per key that did not finish."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0, *,
                 json_lines: bool = False, heartbeat: float = 30.0,
                 level: str = "info", clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._stream = stream or sys.stderr
        self._interval = interval
        self._heartbeat = heartbeat
        self._level = _LEVELS.index(level)
        self._json = json_lines
        self._bytes = 0
        self._done = 0
        self._total = 0
        self._started = self._clock.monotonic()
        self._last = self._started

    def warning(self, text: str) -> None:
        self._say(f"warning: {text}", level="warning", event="warning")

    def heartbeat(self, activity: Activity, now: float) -> None:
        """A line when none came for ``heartbeat`` seconds: what the run waits for."""
        if self._clock.monotonic() - self._last < self._heartbeat:
            return
        self._last = self._clock.monotonic()
        self._say(activity.describe(now), event="heartbeat", **activity.facts(now))

    def begin(self, to_fetch: int, already_done: int, max_wait: float = 0.0) -> None:
        from backfill.config import format_duration

        self._total = to_fetch
        waits = (f"; keys not ready are waited for up to {format_duration(max_wait)} "
                 "(--max-wait)" if to_fetch else "")
        self._say(f"{keys(to_fetch)} to fetch, {already_done} already done{waits}",
                  event="begin", to_fetch=to_fetch, already_done=already_done,
                  max_wait_seconds=max_wait)

    def key_done(self, key: str, status: Status, detail: str | None) -> None:
        self._done += 1
        # Keys that did not finish are worth a warning; finished ones a line at debug, and
        # in JSON (a machine reads every key's event).
        level = "warning" if status is not Status.DONE else "info" if self._json else "debug"
        self._say(f"key {key}: {status.value}" + (f": {detail}" if detail else ""),
                  level=level, event="key", key=key, status=status.value, detail=detail)
        self._tick()

    def part(self, label: str) -> PartWatch:
        reporter = self

        class _Watch(_NoWatch):
            def advanced(self, count: int) -> None:
                reporter._bytes += count
                reporter._tick()

        return _Watch()

    def end(self) -> None:
        self._tick(force=True)

    def _tick(self, force: bool = False) -> None:
        now = self._clock.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        rate = self._bytes / max(now - self._started, 1e-9)
        self._say(f"{self._done}/{self._total} keys, {human_bytes(self._bytes)}, "
                  f"{human_bytes(rate)}/s", event="progress", keys_done=self._done,
                  keys_total=self._total, bytes=self._bytes, bytes_per_second=round(rate))

    def _say(self, text: str, *, level: str = "info", **fields: object) -> None:
        if _LEVELS.index(level) > self._level:
            return
        self._last = self._clock.monotonic()
        if self._json:
            line = json.dumps({"time": self._clock.now().isoformat(timespec="milliseconds"),
                               **fields, "message": text})
        else:
            line = f"backfill: {text}"
        print(line, file=self._stream, flush=True)


