"""`backfill emulator` standalone: prints how to use it, serves on loopback, bad flags exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backfill.cli import app

runner = CliRunner()


def test_the_emulator_prints_credentials_and_serves(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "backfill", "emulator", "--port", "0", "--data-dir",
               str(tmp_path), "--now", "2026-11-20T12:00"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        _check_banner_and_stop(proc)


def _check_banner_and_stop(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        banner = "".join(lines)
        url = re.search(r"export GIO_BASE_URL=(http://127\.0\.0\.1:\d+)", banner)
        assert url, banner
        for name in ("GIO_CLIENT_ID", "GIO_SECRET", "GIO_PROJECT_UID", "GIO_AI"):
            assert f"export {name}=" in banner
        assert "clock 2026-11-20 12:00 Beijing" in banner
        import urllib.request

        with urllib.request.urlopen(f"{url[1]}/_emulator/stats", timeout=5) as reply:
            assert b'"export_calls": 0' in reply.read()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "nope=0.1"], "unknown fault 'nope'"),
        (["--fault", "reset=2"], "the rate must be a number in 0..1"),
        (["--now", "yesterday-ish"], "invalid --now 'yesterday-ish'"),
        (["--speed", "-1"], "--speed cannot be negative"),
    ],
)
def test_bad_emulator_flags_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["emulator", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("backfill: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.output
