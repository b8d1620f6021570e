"""The command line: a thin typer layer over the library (see :mod:`backfill.cli.shared`).

This module is the console script's entry point and stays light: it takes over SIGTERM
before anything is imported, so a stop at any moment, start-up included, ends with one
line and exit 130. Errors are :class:`BackfillError`'s one line (``backfill: error: …``)
and its documented exit code; anything else reaching a user is a bug.
"""

from __future__ import annotations

import signal
import sys
from typing import Any


def main() -> None:
    """Console entry point."""
    # Stops are held first (until the event loop takes them, or until the end: see
    # backfill.engine.stops), then SIGTERM gets its handler: one that arrived in between
    # would raise outside the try below, a traceback instead of one line and 130.
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS) if _CAN_MASK else None
    signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            code = _run()
        finally:
            if before is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)  # pending ones: now
    except KeyboardInterrupt as exc:
        code = _interrupted(str(exc) or "SIGINT")
    _exit(code)


def _exit(code: int) -> None:
    """Exit with ``code``. Without finalizing the interpreter once obstore was used: its
    Rust runtime's threads may still be returning from a call into Python (a future's
    result), and a thread that asks for the GIL while the interpreter finalizes is ended
    with pthread_exit, which aborts the process (SIGABRT, measured in 4 of 30 runs of a
    failed bucket check). Everything of ours is closed and synced by now."""
    if "obstore" not in sys.modules:
        sys.exit(code)
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


STOPS = (signal.SIGINT, signal.SIGTERM)
_CAN_MASK = hasattr(signal, "pthread_sigmask")


def _run() -> int:
    """The app, with click's own error printing replaced by ours: one line, one code."""
    import typer

    from backfill.cli.shared import app, said

    load_commands()
    try:
        result = app(standalone_mode=False, prog_name="backfill")
    except typer.Abort:
        return _interrupted("SIGINT")
    except _usage_errors() as exc:
        code = int(getattr(exc, "exit_code", 2))
        if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments at all: the help
            print(exc.format_message(), file=sys.stderr)  # type: ignore[attr-defined]
        else:
            print(f"backfill: error: {usage_line(exc)}", file=sys.stderr)
            _json_error(usage_line(exc), code)
        return code
    code = result if isinstance(result, int) else 0
    if code == 130 and not said.error:
        # typer turns an interrupt outside a command (while parsing) into a silent 130.
        return _interrupted(signal_seen[-1] if signal_seen else "SIGINT")
    return code


signal_seen: list[str] = []
"""Signals our own handler took (SIGINT is Python's: KeyboardInterrupt)."""


def _usage_errors() -> tuple[type[Exception], ...]:
    """What click raises for bad usage: typer's own copy of click (0.29 and newer) or click."""
    import typer

    kinds: list[type[Exception]] = []
    if isinstance(getattr(typer, "TyperException", None), type):
        kinds.append(typer.TyperException)
    try:
        import click
    except ImportError:
        pass
    else:
        kinds.append(click.ClickException)
    return tuple(kinds)


def usage_line(exc: Any) -> str:
    """A click usage error as one line, naming the help to read."""
    line = " ".join(exc.format_message().split())
    context = getattr(exc, "ctx", None)
    if context is not None and getattr(exc, "exit_code", 0) == 2:
        line += f" (see '{context.command_path} --help')"
    return line


def _interrupted(name: str) -> int:
    from backfill.errors import Interrupted

    print(f"backfill: error: {Interrupted(name)}", file=sys.stderr)
    _json_error(str(Interrupted(name)), Interrupted.exit_code)
    return Interrupted.exit_code


def _json_error(text: str, code: int) -> None:
    """With ``--json`` on the command line, the document a script waits for says what
    happened, also when the command never ran (bad usage, an early signal)."""
    import json

    arguments = sys.argv[1:]
    if "--json" not in arguments[:arguments.index("--") if "--" in arguments else None]:
        return
    said = sys.modules.get("backfill.cli.shared")
    if said is not None and said.said.document:
        return
    print(json.dumps({"error": text, "exit_code": code}), flush=True)


def load_commands() -> None:
    """Register every command on the app (each module adds its own), in --help's order."""
    import importlib

    for group in ("fetch", "inspect", "demo"):
        importlib.import_module(f"backfill.cli.{group}")


def __getattr__(name: str) -> Any:
    if name == "app":
        from backfill.cli.shared import app

        load_commands()
        return app
    raise AttributeError(f"module 'backfill.cli' has no attribute {name!r}")


def _terminate(signum: int, frame: object) -> None:
    # Until a run installs its own handling, SIGTERM stops like Ctrl-C: cleanly, exit 130.
    signal_seen.append("SIGTERM")
    raise KeyboardInterrupt("SIGTERM")
