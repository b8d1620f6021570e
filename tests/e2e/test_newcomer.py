"""What a newcomer meets on the command line (issue 20): dates that mean what they say, a
run that is never silent, near-miss URLs refused, read-only commands that create nothing,
the same flags everywhere, config show, completion. The real CLI, the real emulator."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backfill.clock import wall_now
from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from tests.helpers import cli, env_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0,
                                    bytes_per_hour=4096, part_size=2048)) as running:
        yield running


def _hour(hours_ago: int) -> str:
    from datetime import timedelta

    from backfill.keys import BEIJING

    moment = (wall_now() - timedelta(hours=hours_ago)).astimezone(BEIJING)
    return moment.strftime("%Y-%m-%dT%H")


# --- 1. a date means what it says -------------------------------------------------------

async def test_hour_dates_fetch_hours_and_status_verify_retry_see_them(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    env = env_for(emulator.url)
    first, last = _hour(8), _hour(5)
    code, out, err = await cli(["run", "--from", first, "--to", last, "--types", "visit",
                                "--out", "hourly", "--json"], env, tmp_path)
    assert code == 0, err
    assert json.loads(out)["keys"]["done"] == 4  # four hour keys, not one day
    hours = sorted(p.parent.name for p in (tmp_path / "hourly" / "visit").rglob("_SUCCESS"))
    assert len(hours) == 4 and all(h.startswith("hour=") for h in hours)
    code, out, _ = await cli(["status", "--out", "hourly", "--json"], env, tmp_path)
    assert code == 0 and json.loads(out)["keys"]["total"] == 4
    code, out, _ = await cli(["status", "--out", "hourly", "--from", first, "--to", last,
                              "--json"], env, tmp_path)
    assert json.loads(out)["keys"]["done"] == 4
    code, out, _ = await cli(["verify", "--out", "hourly", "--json"], env, tmp_path)
    assert code == 0 and json.loads(out)["checked"] == 4
    code, out, err = await cli(["retry", "--out", "hourly"], env, tmp_path)
    assert code == 0 and out.strip().startswith("nothing to retry in hourly"), err


async def test_mixed_forms_are_one_line_and_exit_2(tmp_path: Path) -> None:
    code, _, err = await cli(["run", "--from", "2026-11-30", "--to", "2026-11-30T18",
                              "--out", "data"], env_for("http://127.0.0.1:9"), tmp_path)
    assert code == 2 and err.count("\n") == 1
    assert "is a day and --to 2026-11-30T18 is an hour" in err
    assert not (tmp_path / "data").exists()


# --- 2. never silent -------------------------------------------------------------------

async def test_plain_and_json_logs_say_what_the_run_waits_for(emulator: RunningEmulator,
                                                              tmp_path: Path) -> None:
    emulator.state.config.job_seconds = 3.0  # a job RUNNING for a few seconds
    (tmp_path / "backfill.toml").write_text('heartbeat = "1s"\npoll_interval = "2s"\n')
    env = env_for(emulator.url)
    code, _, err = await cli(["run", "--from", _hour(30), "--to", _hour(30), "--types",
                              "visit", "--out", "data", "--quiet"], env, tmp_path)
    assert code == 0, err
    assert "1 export job RUNNING, next check in" in err, err
    code, _, err = await cli(["run", "--from", _hour(31), "--to", _hour(31), "--types",
                              "visit", "--out", "data", "--log-format", "json"], env, tmp_path)
    assert code == 0, err
    events = [json.loads(line) for line in err.splitlines()]
    beats = [e for e in events if e["event"] == "heartbeat"]
    assert beats and all(b["phase"] for b in beats)
    assert any(b["jobs_running"] == 1 and b["phase"] == "waiting for export jobs" for b in beats)
    assert events[-1]["event"] == "summary"


# --- 4. where the data goes; near misses; read-only commands ------------------------------

@pytest.mark.parametrize(("given", "meant"), [("s3:/my-lake/x", "s3://my-lake/x"),
                                              ("s3//my-lake", "s3://my-lake"),
                                              ("gs:bucket/p", "gs://bucket/p")])
async def test_a_near_miss_url_is_refused_with_the_url_meant(tmp_path: Path, given: str,
                                                             meant: str) -> None:
    code, _, err = await cli(["run", "--from", "-3d", "--to", "-3d", "--out", given],
                             env_for("http://127.0.0.1:9"), tmp_path)
    assert code == 2 and err.count("\n") == 1
    assert f"did you mean {meant}?" in err
    assert list(tmp_path.iterdir()) == []  # no folder named "s3:"


async def test_read_only_commands_create_nothing(tmp_path: Path) -> None:
    env = env_for("http://127.0.0.1:9", XDG_STATE_HOME=str(tmp_path / "state"))
    for args in (["status", "--out", "fresh"], ["verify", "--out", "fresh"],
                 ["retry", "--out", "fresh"], ["retry", "--dry-run", "--out", "fresh"],
                 ["config", "show", "--out", "fresh"]):
        await cli(args, env, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


async def test_retry_with_nothing_to_retry_says_so_and_calls_nothing(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    env = env_for(emulator.url)
    code, out, _ = await cli(["retry", "--out", "fresh"], env, tmp_path)
    assert code == 0 and out.strip() == ("nothing to retry: no backfill state in fresh yet "
                                         "(run `backfill run`)")
    code, out, _ = await cli(["retry", "--out", "s3://my-lake/gio"],
                             {**env, "XDG_STATE_HOME": str(tmp_path / "s")}, tmp_path)
    assert code == 0 and "`backfill catchup` finds from the bucket where to start" in out
    assert emulator.state.stats()["calls"]["token"] == 0


async def test_the_dry_run_and_the_summary_name_the_destination_and_the_state(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    env = env_for(emulator.url)
    code, out, _ = await cli(["run", "--from", "-3d", "--to", "-3d", "--out", "data",
                              "--dry-run"], env, tmp_path)
    assert code == 0 and "into:                    data (state in data/.backfill)" in out
    code, out, _ = await cli(["run", "--from", "-3d", "--to", "-3d", "--out", "data",
                              "--types", "visit", "--quiet"], env, tmp_path)
    assert code == 0 and "destination" in out and "data/.backfill" in out


# --- 6. check leaves a running backfill's token alone ------------------------------------

async def test_check_mints_no_token_while_a_run_holds_one(emulator: RunningEmulator,
                                                          tmp_path: Path) -> None:
    from backfill.growingio.auth import MintLock

    env = env_for(emulator.url, XDG_STATE_HOME=str(tmp_path / "state"))
    running = MintLock("demo-client-id", tmp_path / "state")
    running.hold()  # what a run does once it minted its token
    try:
        code, out, err = await cli(["check"], env, tmp_path)
    finally:
        running.release()
    assert code == 0, err
    assert ("not checked: GIO_SECRET: a backfill running on this machine uses a token of "
            "client demo-client-id, and minting one to check the secret would revoke it") in out
    assert f"export API: {emulator.url}, reached directly" in out and "HTTP 401" in out
    assert "configuration ok" not in out and "issued" not in out
    assert emulator.state.stats()["calls"]["token"] == 0
    # A wrong secret is not found out then, and check says so rather than "ok".
    running.hold()
    try:
        code, out, err = await cli(["check", "--json"], {**env, "GIO_SECRET": "wrong"},
                                   tmp_path)
    finally:
        running.release()
    assert code == 0 and json.loads(out)["not_checked"][0].startswith("GIO_SECRET:"), err
    code, out, _ = await cli(["check", "--json"], env, tmp_path)  # the run ended
    assert code == 0 and json.loads(out)["token"] == "issued"
    assert emulator.state.stats()["tokens_issued"] == 1


# --- 8. machine-readable everywhere, consistent flags -------------------------------------

async def test_every_reporting_command_prints_one_json_document(emulator: RunningEmulator,
                                                                tmp_path: Path) -> None:
    env = env_for(emulator.url)
    assert (await cli(["run", "--from", "-3d", "--to", "-3d", "--types", "visit",
                       "--out", "data", "--json"], env, tmp_path))[0] == 0
    for args in (["status", "--out", "data"], ["verify", "--out", "data"], ["check"],
                 ["retry", "--out", "data"], ["config", "show"]):
        code, out, err = await cli([*args, "--json"], env, tmp_path)
        assert code == 0, (args, err)
        json.loads(out)  # one document
    code, out, _ = await cli(["check", "--json"], env_for(emulator.url, GIO_SECRET="no"),
                             tmp_path)
    assert code == 3  # exit codes unchanged


@pytest.mark.parametrize("command", ["run", "retry", "catchup", "status", "verify", "check",
                                     "demo", "config show"])
def test_every_command_takes_the_same_output_flags(command: str) -> None:
    from typer.testing import CliRunner

    from backfill.cli import app

    result = CliRunner().invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0
    for flag in ("--quiet", "-q", "--verbose", "-v", "--log-level", "--log-format", "--json"):
        assert flag in result.output, (command, flag)
    if command != "config show":
        assert "Examples:" in result.output


# --- 9. the habits of the tools people know ------------------------------------------

async def test_config_show_says_where_each_value_comes_from(tmp_path: Path) -> None:
    (tmp_path / "backfill.toml").write_text('out = "lake"\ndownloads = 4\n')
    env = env_for("http://127.0.0.1:8931", GIO_SECRET="s3cr3t-value")
    code, out, _ = await cli(["config", "show", "--downloads", "6", "--json"], env, tmp_path)
    assert code == 0
    shown = json.loads(out)["settings"]
    assert shown["downloads"] == {"value": "6", "from": "flag --downloads"}
    assert shown["out"]["from"] == "backfill.toml"
    assert shown["growingio.base_url"]["from"] == "environment GIO_BASE_URL"
    assert shown["growingio.secret"] == {"value": "*** (set)", "from": "environment GIO_SECRET"}
    assert shown["max_wait"] == {"value": "30m", "from": "default"}
    assert "s3cr3t-value" not in out


async def test_did_you_mean_for_commands_config_keys_and_types(tmp_path: Path) -> None:
    env = env_for("http://127.0.0.1:9")
    code, _, err = await cli(["rn"], env, tmp_path)
    assert code == 2 and "Did you mean 'run'?" in err and err.startswith("backfill: error:")
    (tmp_path / "backfill.toml").write_text('max_wiat = "10m"\n')
    code, _, err = await cli(["run", "--from", "-3d", "--to", "-3d"], env, tmp_path)
    assert code == 2 and "unknown key 'max_wiat'; did you mean 'max_wait'?" in err
    (tmp_path / "backfill.toml").unlink()
    code, _, err = await cli(["run", "--from", "-3d", "--to", "-3d", "--types", "vist"],
                             env, tmp_path)
    assert code == 2 and "unknown data type 'vist'; did you mean 'visit'?" in err


async def test_shell_completion_completes_commands(tmp_path: Path) -> None:
    env = {**os.environ, "_BACKFILL_COMPLETE": "complete_bash", "COMP_WORDS": "backfill ca",
           "COMP_CWORD": "1"}
    code, out, _ = await cli([], env, tmp_path)
    assert code == 0 and "catchup" in out.split()
