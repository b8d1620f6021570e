"""What a person sees of a run: progress bars on a terminal, the summary at the end.

The engine reports through :class:`backfill.engine.progress.Reporter`; this module adds
the terminal's bars and the end-of-run summary. Nothing here ever receives a token or a
signed query.
"""

from __future__ import annotations

import sys
from collections import defaultdict

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

from backfill.engine.progress import Activity, PartWatch, PlainReporter, Reporter
from backfill.keys import Key
from backfill.model import Status, Summary, human_bytes
from backfill.state.status import SEVERITY, StatusReport


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


GLYPHS = {
    Status.DONE: ("█", "green"),
    Status.FAILED: ("✗", "bold red"),
    Status.GONE: ("·", "dim"),
    Status.NOT_READY: ("…", "yellow"),
    Status.ACTIVE: ("▶", "cyan"),
    Status.PENDING: ("○", "white"),
}


def print_calendar(report: StatusReport, console: Console) -> None:
    """Days as rows; hours as columns for hourly keys, one glyph per day for daily keys."""
    days: dict[str, dict[int | None, Status]] = defaultdict(dict)
    for name, state in report.keys.items():
        day = f"{name[:4]}-{name[4:6]}-{name[6:8]}"
        days[day][int(name[8:10]) if len(name) == 10 else None] = state
    hourly = any(hour is not None for cells in days.values() for hour in cells)
    if hourly:
        console.print(Text("           " + "".join(f"{h:<6d}" for h in range(0, 24, 3)),
                           style="dim"))
    for day in sorted(days):
        line = Text(f"{day} ")
        cells = days[day]
        for hour in (range(24) if hourly else [None]):
            cell = cells.get(hour)
            glyph, style = GLYPHS[cell] if cell else (" ", "")
            line.append(f"{glyph} " if hourly else glyph, style=style)
        console.print(line)
    legend = Text("  ")
    for state in SEVERITY:
        glyph, style = GLYPHS[state]
        legend.append(glyph, style=style).append(f" {report.word(state)}  ")
    console.print(legend)
