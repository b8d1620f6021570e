"""`backfill run` as a user runs it: a subprocess, environment credentials, exit codes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backfill.emulator import DEMO_CREDENTIALS, EmulatorConfig, RunningEmulator, serve
from tests.helpers import cli, env_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0,
                                    bytes_per_hour=4096)) as running:
        yield running


async def test_run_exits_0_with_a_summary(emulator: RunningEmulator, tmp_path: Path) -> None:
    code, out, err = await cli(["run", "--from", "-4d", "--to", "-3d", "--types", "visit",
                                "--out", "data"], env_for(emulator.url), tmp_path)
    assert code == 0, err
    assert "keys done" in out
    assert list((tmp_path / "data" / "visit").glob("dt=*/_SUCCESS"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-02-30", "--to", "-1d"], "invalid date '2026-02-30'"),
        (["--from", "-2d", "--to", "-4d"], "--from -2d is after --to -4d"),
        (["--from", "-2d", "--to", "-1d", "--types", "visit,clicks"],
         "unknown data type 'clicks'"),
        (["--from", "-2d", "--to", "-1d", "--granularity", "week"], "--granularity must be"),
        (["--from", "-60d", "--to", "-40d"], "older than the 15-day retention"),
        (["--from", "-2d", "--to", "-1d", "--downloads", "0"], "--downloads must be"),
        (["--from", "-2d", "--to", "-1d", "--max-wait", "soon"], "invalid duration 'soon'"),
        (["--from", "-2d", "--to", "-1d", "--config", "missing.toml"],
         "config file missing.toml does not exist"),
        (["--from", "-2d", "--to", "-1d", "--out", "ftp://host/x"],
         "ftp:// outputs are not supported"),
        (["--from", "-2d", "--to", "-1d", "--out", "s3://B/x"],
         "'s3://B/x' does not name a bucket"),
        (["--from", "-2d", "--to", "-1d", "--out", "file://elsewhere/x"],
         "a file:// URL must name a local folder"),
    ],
)
async def test_bad_input_is_one_line_exit_2_and_no_call(emulator: RunningEmulator,
                                                        tmp_path: Path, args: list[str],
                                                        message: str) -> None:
    code, out, err = await cli(["run", *args], env_for(emulator.url), tmp_path)
    assert code == 2
    assert err.strip().count("\n") == 0, err
    assert message in err
    assert "Traceback" not in err + out
    assert emulator.state.stats()["calls"]["token"] == 0
    assert not list(tmp_path.iterdir())  # nothing written: no folder named "ftp:" either


async def test_a_missing_credential_is_named(emulator: RunningEmulator, tmp_path: Path) -> None:
    code, _, err = await cli(["run", "--from", "-3d", "--to", "-3d"],
                             env_for(emulator.url, GIO_SECRET="", GIO_AI=""), tmp_path)
    assert code == 2
    assert "missing credentials: set GIO_AI, GIO_SECRET" in err
    assert emulator.state.stats()["calls"]["token"] == 0


async def test_a_wrong_secret_exits_3_without_showing_it(emulator: RunningEmulator,
                                                         tmp_path: Path) -> None:
    secret = "wrong-secret-b6f2a0c3e9"
    code, out, err = await cli(["run", "--from", "-3d", "--to", "-3d", "--out", "data"],
                               env_for(emulator.url, GIO_SECRET=secret), tmp_path)
    assert code == 3
    assert "refused the token request (HTTP 401: signature does not match)" in err
    assert secret not in out + err
    assert emulator.state.stats()["calls"]["token"] == 1  # no retry storm
    state = (tmp_path / "data" / ".backfill" / "state.sqlite").read_bytes()
    assert secret.encode() not in state


async def test_a_rejected_ready_token_exits_3(emulator: RunningEmulator, tmp_path: Path) -> None:
    code, out, err = await cli(["run", "--from", "-3d", "--to", "-3d"],
                               env_for(emulator.url, GIO_SECRET="", GIO_TOKEN="stale-token-77"),
                               tmp_path)
    assert code == 3
    assert "GIO_TOKEN" in err
    assert "stale-token-77" not in out + err


async def test_no_secret_reaches_output_logs_or_state(emulator: RunningEmulator,
                                                      tmp_path: Path) -> None:
    env = env_for(emulator.url)
    code, out, err = await cli(["run", "--from", "-3d", "--to", "-3d", "--types", "page",
                                "--out", "data"], env, tmp_path)
    assert code == 0
    token = emulator.state.token
    assert token is not None
    texts = [out, err] + [p.read_text(errors="replace") for p in (tmp_path / "data").rglob("*")
                          if p.is_file() and not p.name.endswith(".csv.gz")]
    texts.append((tmp_path / "data" / ".backfill" / "state.sqlite").read_bytes().decode(
        errors="replace"))
    for text in texts:
        assert DEMO_CREDENTIALS.secret not in text
        assert token.code not in text
        assert "X-Amz-Signature" not in text


async def test_help_documents_exit_codes(tmp_path: Path) -> None:
    code, out, _ = await cli(["run", "--help"], dict(os.environ), tmp_path)
    assert code == 0
    assert "4 some keys not ready yet" in " ".join(out.split())


async def test_a_cli_run_that_hangs_fails_its_test_with_the_output_so_far(
        tmp_path: Path) -> None:
    from tests import helpers

    # The emulator, standalone, never ends by itself: the helper must stop it.
    with pytest.raises(pytest.fail.Exception) as caught:
        await helpers.cli(["emulator", "--port", "0", "--data-dir", str(tmp_path)],
                          env_for("http://127.0.0.1:9"), tmp_path, timeout=3)
    assert "still ran after 3 s" in str(caught.value)
    assert "GrowingIO export API emulator on http://127.0.0.1:" in str(caught.value)
