"""Every answer is honest (issue 25, section 4): one JSON document whatever happens,
check says what it did not check, an interrupted unit reads as interrupted, no ETA that
only grows, plain lines where no terminal is, settings shown as they are written, no
silent guesses, a refused command creates nothing, one line for a busy port."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from backfill.engine.progress import Activity
from tests.fakes import FakeClock
from tests.helpers import cli, command, env_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0,
                                    bytes_per_hour=4096, part_size=2048)) as running:
        yield running


# --- --json: one document, with its exit code, whatever happened ---------------------------

@pytest.mark.parametrize(("args", "code"), [
    (["run", "--from", "2026-13-01", "--to", "-1d"], 2),  # a bad date
    (["run", "--from", "-1d", "--to", "-1d", "--no-such-flag"], 2),  # bad usage: click's
    (["status", "--out", "nothing-here"], 2),
    (["check"], 3),  # a wrong secret
    (["check", "--out", "s3://no-credentials-here/x"], 2),
])
async def test_json_is_one_document_with_the_exit_code_even_on_an_error(
        emulator: RunningEmulator, tmp_path: Path, args: list[str], code: int) -> None:
    env = env_for(emulator.url, GIO_SECRET="wrong", AWS_EC2_METADATA_DISABLED="true",
                  AWS_CONFIG_FILE=str(tmp_path / "none"),
                  AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    got, out, err = await cli([*args, "--json"], env, tmp_path)
    assert got == code, err
    document = json.loads(out)
    assert document["exit_code"] == code and document["error"] in err
    assert out.count("\n") == 1 and err.count("\n") == 1


async def test_an_interrupted_run_still_prints_its_json_document(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    emulator.state.config.job_seconds = 3600.0  # every job stays RUNNING
    env = env_for(emulator.url)
    process = await anyio.open_process(
        command("run", "--from", "-3d", "--to", "-3d", "--types", "visit", "--out", "data",
                "--json", "--log-format", "json"), env=env, cwd=tmp_path)
    async with process:
        assert process.stderr is not None and process.stdout is not None
        with anyio.fail_after(60):
            async for line in process.stderr:  # wait for the run to be under way
                if b'"event": "begin"' in line:
                    break
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            out = b"".join([chunk async for chunk in process.stdout])
            await process.wait()
    assert process.returncode == 130
    document = json.loads(out)
    assert document["exit_code"] == 130 and "SIGTERM" in document["error"]


# --- check says what it checked, and what not ------------------------------------------------

async def test_check_with_a_console_token_reaches_the_api_and_says_the_token_is_unchecked(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    env = env_for(emulator.url, GIO_SECRET="", GIO_TOKEN="console-token")
    code, out, err = await cli(["check"], env, tmp_path)
    assert code == 0, err
    assert "ok: export API" in out and "HTTP 401 to a call without a token" in out
    assert "not checked: GIO_TOKEN" in out and "ok: credentials" not in out
    stats = emulator.state.stats()
    # One question without credentials, refused: no job started, no token sent or minted.
    assert stats["export_calls"] == stats["unauthorized"] == 1 and not stats["answers"]
    assert stats["calls"]["token"] == 0 and "console-token" not in out + err


async def test_check_of_a_dead_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = env_for(f"http://127.0.0.1:{port}", GIO_SECRET="", GIO_TOKEN="console-token")
    with anyio.fail_after(60):
        code, out, err = await cli(["check"], env, tmp_path)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "cannot reach the export API" in err
    assert "connection refused" in err


async def test_check_names_the_project_uid_and_the_project_id_apart(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    code, out, err = await cli(["check"], env_for(emulator.url), tmp_path)
    assert code == 0, err
    assert ("issued a token for project UID demoProjectUid, project id (GIO_AI) "
            "a1b2c3d4e5f60789") in out


# --- status, progress and the summary --------------------------------------------------------

async def test_a_unit_left_by_a_stopped_run_reads_as_interrupted(tmp_path: Path) -> None:
    from backfill.model import Status
    from backfill.state.store import Store

    store = Store(tmp_path / "data" / ".backfill", lock=True)
    store.set_status("v2", "2026112007", ("visit",), Status.ACTIVE, attempt=True)
    store.close()  # the lock file names this process, which lives: a run holds it...
    (tmp_path / "data" / ".backfill" / "lock").write_text("999999999")  # ...now none does
    code, out, err = await cli(["status", "--out", "data"], {}, tmp_path)
    assert code == 0, err
    assert "1 key in data (v2): 1 interrupted" in out
    assert "2026112007 visit: interrupted after 1 attempt\n" in out  # no dangling colon
    code, out, _ = await cli(["status", "--out", "data", "--json"], {}, tmp_path)
    assert json.loads(out)["problems"][0]["status"] == "interrupted"


def test_no_eta_while_keys_wait_for_their_jobs_or_data() -> None:
    activity = Activity(FakeClock(), keys_total=10, keys_done=2, started=0.0)
    activity.running["2026112007"] = 5.0
    assert activity.facts(0.0)["eta_seconds"] is None and "ETA" not in activity.describe(0.0)
    activity.running.clear()
    activity.not_due["2026112008"] = datetime(2026, 11, 20, tzinfo=UTC)
    assert activity.facts(0.0)["eta_seconds"] is None
    activity.not_due.clear()
    assert activity.facts(0.0)["eta_seconds"] is not None  # downloading only: a real pace


async def test_a_piped_or_quiet_summary_is_plain_lines(emulator: RunningEmulator,
                                                      tmp_path: Path) -> None:
    env = env_for(emulator.url)
    for extra in ([], ["--quiet"], ["--log-level", "error"]):
        code, out, err = await cli(["run", "--from", "-3d", "--to", "-3d", "--types", "visit",
                                    "--out", "data", *extra], env, tmp_path)
        assert code == 0, err
        assert "keys done: 1" in out and "exit code: 0" in out
        assert not set(out) & set("│┃┌┐└┘─━"), out


# --- settings as written, and no silent guess ---------------------------------------------

async def test_config_show_prints_sizes_in_the_units_the_config_takes(tmp_path: Path) -> None:
    _, out, _ = await cli(["config", "show", "--json"], {}, tmp_path)
    shown = json.loads(out)["settings"]
    assert shown["min_speed"]["value"] == "4KiB"
    assert shown["max_part_size"]["value"] == "128MiB"
    assert shown["max_wait"]["value"] == "30m"


async def test_an_empty_type_list_is_refused_and_a_bare_wait_is_named_in_seconds(
        tmp_path: Path) -> None:
    code, out, err = await cli(["run", "--from", "-3d", "--to", "-3d", "--types", ""], {},
                               tmp_path)
    assert code == 2 and "no data type named" in err and "leave types out for all" in err
    code, out, err = await cli(["run", "--from", "-3d", "--to", "-3d", "--types", "visit",
                                "--max-wait", "30", "--dry-run"], {}, tmp_path)
    assert code == 0, err
    assert "keys not ready are waited for up to 30s" in out
    assert not (tmp_path / "data").exists()


async def test_a_busy_port_is_one_line_and_exit_2(emulator: RunningEmulator,
                                                 tmp_path: Path) -> None:
    port = emulator.url.rsplit(":", 1)[1]
    with anyio.fail_after(60):
        code, out, err = await cli(["emulator", "--port", port], {}, tmp_path)
    assert code == 2 and err.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in err
    assert "Traceback" not in err + out
