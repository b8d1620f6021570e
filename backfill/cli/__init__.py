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
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from backfill.cli.shared import app

        load_commands()
        app()
    except KeyboardInterrupt as exc:  # a signal during start-up, before any command ran
        print(f"backfill: error: interrupted by {exc or 'SIGINT'}: nothing was started; run "
              "the same command again", file=sys.stderr)
        sys.exit(130)


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
    raise KeyboardInterrupt("SIGTERM")
