"""What the user sees: progress while running, a summary at the end, the exit code.

Progress goes to stderr (bars on a terminal, plain periodic lines otherwise), so that
stdout stays for results. Nothing here ever receives a token or a signed query.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from backfill.keys import BEIJING
from backfill.store import Status

if TYPE_CHECKING:
    from backfill.keys import Key

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_NOT_READY, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_CODES = """\
Exit codes: 0 all requested keys complete; 1 some keys failed (including keys beyond
retention); 2 usage or configuration error; 3 authentication rejected; 4 some keys not
ready yet, run again later; 130 interrupted."""


@dataclass
class Summary:
    """The outcome of a run, by key."""

    statuses: Counter[Status] = field(default_factory=Counter)
    problems: dict[str, str] = field(default_factory=dict)
    parts: int = 0
    bytes: int = 0
    api_calls: int = 0
    retries: int = 0
    seconds: float = 0.0
    outage: str | None = None
    """Set when an outage outlived its budget and stopped the run: the one line to show."""
    held_parts: int = 0
    held_bytes: int = 0
    """What the destination holds for the keys asked, done ones included (a rerun that
    fetched nothing still holds them)."""

    outcomes: dict[str, tuple[Status, str]] = field(default_factory=dict)
    """Every key that did not end done: its status and why (``problems``, apart)."""

    def add(self, key: str, status: Status, detail: str | None = None) -> None:
        self.statuses[status] += 1
        if detail and status is not Status.DONE:
            self.problems[key] = f"{status.value}: {detail}"
            self.outcomes[key] = (status, detail)

    def to_json(self) -> dict[str, object]:
        """The machine-readable report (``--json``)."""
        return {
            "keys": {status.value: self.statuses[status] for status in Status},
            "parts": self.parts,
            "bytes": self.bytes,
            "api_calls": self.api_calls,
            "retries": self.retries,
            "duration_seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
            "outage": self.outage,
            "held_parts": self.held_parts,
            "held_bytes": self.held_bytes,
            "problems": self.problems,
        }

    @property
    def exit_code(self) -> int:
        if self.outage or self.statuses[Status.FAILED] or self.statuses[Status.GONE]:
            return EXIT_FAILED
        if self.statuses[Status.NOT_READY]:
            return EXIT_NOT_READY
        return EXIT_OK


@dataclass
class Activity:
    """What a run is doing now and what it waits for; the scheduler writes it, reporters
    read it (the live display's phase line, the heartbeat of plain and JSON logs)."""

    keys_total: int = 0
    keys_done: int = 0
    bytes: int = 0
    running: dict[str, float] = field(default_factory=dict)
    """Keys whose export job is RUNNING, and when each is asked again (anyio time)."""
    not_due: dict[str, datetime] = field(default_factory=dict)
    """Keys not exportable yet, and from when they should be."""
    downloading: set[str] = field(default_factory=set)
    asking: int = 0
    started: float = field(default_factory=time.monotonic)
    token_pending: Callable[[], bool] = field(default=lambda: False, repr=False)
    outage: Callable[[], str | None] = field(default=lambda: None, repr=False)
    """The service that is not answering now, in words, if one is not."""

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

    def _rate(self) -> float:
        return self.bytes / max(time.monotonic() - self.started, 1e-9)

    def _eta(self) -> int | None:
        """Keys left at the pace of the keys done so far; none while any key waits for an
        export job or for its data, whose end nothing here can tell (a pace measured over
        such a wait only grows)."""
        left = self.keys_total - self.keys_done
        if not self.keys_done or not left or self.running or self.not_due or self.asking:
            return None
        return round((time.monotonic() - self.started) / self.keys_done * left)


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def keys(count: int) -> str:
    """``1 key``, ``24 keys``."""
    return f"{count} key{_s(count)}"


class Watch(Protocol):
    """Hears about one part's download: its size once known, then every chunk."""

    def started(self, total: int | None) -> None: ...
    def advanced(self, count: int) -> None: ...


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
                 level: str = "info") -> None:
        self._stream = stream or sys.stderr
        self._interval = interval
        self._heartbeat = heartbeat
        self._level = _LEVELS.index(level)
        self._json = json_lines
        self._bytes = 0
        self._done = 0
        self._total = 0
        self._started = time.monotonic()
        self._last = self._started

    def warning(self, text: str) -> None:
        self._say(f"warning: {text}", level="warning", event="warning")

    def heartbeat(self, activity: Activity, now: float) -> None:
        """A line when none came for ``heartbeat`` seconds: what the run waits for."""
        if time.monotonic() - self._last < self._heartbeat:
            return
        self._last = time.monotonic()
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
        now = time.monotonic()
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
        self._last = time.monotonic()
        if self._json:
            line = json.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                               **fields, "message": text})
        else:
            line = f"backfill: {text}"
        print(line, file=self._stream, flush=True)


class BarsReporter:
    """Progress bars on a terminal: keys, bytes, and each active download."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[extra]}"),
            console=self._console,
        )
        self._bytes_bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=None),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self._console,
        )
        self._keys: TaskID | None = None
        self._bytes: TaskID | None = None
        self._live_parts = 0
        self._phase = _Line("starting")

    def warning(self, text: str) -> None:
        self._console.print(f"[yellow]backfill: warning: {text}[/]", highlight=False)

    def heartbeat(self, activity: Activity, now: float) -> None:
        self._phase.text = activity.describe(now)  # the live display shows it at once

    def begin(self, to_fetch: int, already_done: int, max_wait: float = 0.0) -> None:
        from rich.console import Group
        from rich.live import Live

        self._keys = self._progress.add_task("keys", total=to_fetch,
                                             extra=f"({already_done} already done)")
        self._bytes = self._bytes_bar.add_task("bytes", total=None)
        self._live = Live(Group(self._phase, self._progress, self._bytes_bar),
                          console=self._console, refresh_per_second=8, transient=True)
        self._live.start()

    def key_done(self, key: str, status: Status, detail: str | None) -> None:
        assert self._keys is not None
        self._progress.advance(self._keys)
        if status is not Status.DONE:
            self._console.print(f"[yellow]key {key}: {status.value}[/]"
                                + (f": {detail}" if detail else ""), highlight=False)

    def part(self, label: str) -> PartWatch:
        bars = self._bytes_bar
        assert self._bytes is not None
        totals: TaskID = self._bytes

        class _Watch:
            task: TaskID | None = None

            def started(self, total: int | None) -> None:
                if self.task is None:
                    self.task = bars.add_task(f"  {label}", total=total)
                else:
                    bars.reset(self.task, total=total)

            def advanced(self, count: int) -> None:
                bars.advance(totals, count)
                if self.task is not None:
                    bars.advance(self.task, count)

            def finished(self) -> None:
                if self.task is not None:
                    bars.remove_task(self.task)
                    self.task = None

        return _Watch()

    def end(self) -> None:
        if self._keys is not None:
            self._live.stop()


class _Line:
    """One line of the live display that changes in place (the run's phase)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __rich__(self) -> Text:
        return Text(self.text, style="cyan", overflow="ellipsis", no_wrap=True)


def make_reporter(quiet: bool, *, json_lines: bool = False, heartbeat: float = 30.0,
                  level: str = "info") -> Reporter:
    """Bars when stderr is a terminal and not ``quiet``; plain (or JSON) lines otherwise,
    with a heartbeat line at least every ``heartbeat`` seconds while the run waits."""
    if not quiet and not json_lines and sys.stderr.isatty() and level in ("info", "debug"):
        return BarsReporter()
    return PlainReporter(json_lines=json_lines, heartbeat=heartbeat, level=level)


def print_summary(summary: Summary, console: Console | None = None, *,
                  where: tuple[str, str] | None = None, plain: bool = False) -> None:
    """The end of a run (``where``: the destination and the state), then the keys that
    need attention: a table on a terminal; ``name: value`` lines when ``plain`` (quiet, a
    log level above info) or when the output is not a terminal (a pipe, a CI log)."""
    console = console or Console()
    rows = _summary_rows(summary, where)
    if plain or not console.is_terminal:
        for name, value in rows:
            console.print(f"{name}: {value}", highlight=False, soft_wrap=True)
    else:
        table = Table(title="backfill summary", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column(justify="right")
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
    lines = problem_lines(summary.outcomes)
    for line in lines[:SHOWN_LINES]:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    if len(lines) > SHOWN_LINES:
        console.print(f"  … and {len(lines) - SHOWN_LINES} more lines (--json has every key)",
                      highlight=False)


def _summary_rows(summary: Summary, where: tuple[str, str] | None) -> list[tuple[str, str]]:
    rows = [("destination", where[0]), ("state", where[1])] if where is not None else []
    rows += [(f"keys {status.value.replace('_', ' ')}", str(summary.statuses[status]))
             for status in Status if summary.statuses[status]]
    return [*rows, ("parts downloaded", str(summary.parts)),
            ("bytes downloaded", human_bytes(summary.bytes)),
            ("API calls", str(summary.api_calls)), ("retries", str(summary.retries)),
            ("duration", f"{summary.seconds:.1f} s"), ("exit code", str(summary.exit_code))]


SHOWN_LINES = 20
_ORDER = (Status.FAILED, Status.ACTIVE, Status.PENDING, Status.NOT_READY, Status.GONE)
"""Failures first (they need a look), then what waits, then what is gone for good."""


def problem_lines(outcomes: dict[str, tuple[Status, str]]) -> list[str]:
    """One line per run of consecutive keys with the same outcome and reason (9,240 gone
    hours are one line), failures first. Pure."""
    from backfill.keys import Key

    runs: list[tuple[Status, str, Key, Key, int]] = []
    for name in sorted(outcomes, key=lambda n: (_rank(outcomes[n][0]), outcomes[n][1], n)):
        status, detail = outcomes[name]
        key = Key.parse(name)
        if runs:
            last_status, last_detail, first, last, count = runs[-1]
            if (last_status, last_detail) == (status, detail) and (
                    key.start == last.start + key.granularity.step):
                runs[-1] = (status, detail, first, key, count + 1)
                continue
        runs.append((status, detail, key, key, 1))
    lines = []
    for status, detail, first, last, count in sorted(runs, key=lambda r: (_rank(r[0]),
                                                                          r[2].start)):
        words = status.value.replace("_", " ")
        if count == 1:
            lines.append(f"{shown_key(first)}: {words}: {detail}")
        else:
            lines.append(f"{shown_key(first)} … {shown_key(last)}: {count:,} keys {words}: "
                         f"{detail}")
    return lines


def _rank(status: Status) -> int:
    return _ORDER.index(status) if status in _ORDER else len(_ORDER)


def shown_key(key: Key) -> str:
    """A key as people write it: ``2026-11-20`` or ``2026-11-20T07`` (Beijing time)."""
    return key.start.strftime("%Y-%m-%dT%H" if key.hour is not None else "%Y-%m-%d")


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")
