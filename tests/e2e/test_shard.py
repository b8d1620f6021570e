"""--shard K/N: the split of keys (pure), the token rule, the plan, and one lease per shard."""

from __future__ import annotations

import json
import re
import signal
from datetime import datetime
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from backfill.keys import BEIJING, Granularity, Key, Shard, expand
from tests.e2e.test_survive_process import start, started, wait_for
from tests.helpers import cli, env_for
from tests.s3 import Bucket


@settings(deadline=None)
@given(st.integers(0, 20_000), st.integers(1, 400), st.integers(1, 12),
       st.sampled_from(list(Granularity)))
def test_shards_are_disjoint_covering_balanced_and_stable(offset: int, length: int, n: int,
                                                          granularity: Granularity) -> None:
    first = Key(datetime(2024, 1, 1, tzinfo=BEIJING) + offset * granularity.step, granularity)
    keys = expand(first, Key(first.start + (length - 1) * granularity.step, granularity))
    shards = [Shard(k, n) for k in range(1, n + 1)]
    owners = [[s for s in shards if s.holds(key)] for key in keys]
    assert all(len(o) == 1 for o in owners)  # disjoint and covering
    sizes = [sum(o[0] is s for o in owners) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # balanced...
    # ...in time: any n consecutive keys go one to each shard, old and recent alike.
    if len(keys) >= n:
        assert {o[0] for o in owners[:n]} == set(shards)
        assert {o[0] for o in owners[-n:]} == set(shards)
    # Stable: a key's shard does not depend on the range it was asked in.
    middle = len(keys) // 2
    for i, key in enumerate(expand(keys[middle], keys[-1]), start=middle):
        assert [s for s in shards if s.holds(key)] == owners[i]


def test_a_shard_is_k_of_n() -> None:
    assert Shard.parse("2/4") == Shard(2, 4) and str(Shard(2, 4)) == "2/4"
    for bad in ("0/4", "5/4", "2", "a/b", "2/0", "-1/3"):
        with pytest.raises(ValueError, match="K/N"):
            Shard.parse(bad)


@pytest.fixture
async def emulator(data_dir: Path) -> object:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.2, bytes_per_hour=8192,
                                    part_size=4096)) as running:
        yield running


RANGE = ["--from", "-10d", "--to", "-1d"]


@pytest.mark.anyio
async def test_the_plan_says_the_shard_and_its_rate(emulator: RunningEmulator,
                                                    tmp_path: Path) -> None:
    env = env_for(emulator.url, GIO_SECRET="", GIO_TOKEN="console-token")
    counts = []
    for k in (1, 2, 3):
        code, out, err = await cli(["run", *RANGE, "--shard", f"{k}/3", "--dry-run", "--json"],
                                   env, tmp_path)
        assert code == 0, err
        plan = json.loads(out)
        assert plan["shard"] == f"{k}/3" and plan["rate"] == pytest.approx(2 / 3)
        counts.append(plan["keys"])
    assert sum(counts) == 10 and max(counts) - min(counts) <= 1
    code, out, _ = await cli(["run", *RANGE, "--shard", "2/3", "--dry-run"], env, tmp_path)
    assert "shard:                   2/3: one key in 3 (by time), at 0.666667 calls/s" in out
    assert emulator.state.stats()["export_calls"] == 0


@pytest.mark.anyio
async def test_shards_with_a_private_key_are_refused_unless_one_mints(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    env = env_for(emulator.url)  # GIO_SECRET, no GIO_TOKEN
    for command in ("run", "catchup", "retry"):
        args = [command, "--shard", "1/2", "--dry-run"] + (RANGE if command == "run" else [])
        code, _, err = await cli(args, env, tmp_path)
        assert code == 2, err
        assert err.count("\n") == 1 and "set GIO_TOKEN" in err and "revokes" in err
    code, _, err = await cli(["run", *RANGE, "--shard", "1/2", "--single-minter", "--dry-run"],
                             env, tmp_path)
    assert code == 0, err
    code, _, err = await cli(["run", *RANGE, "--shard", "1/1", "--dry-run"], env, tmp_path)
    assert code == 0, err  # one shard is the whole range: nobody to revoke
    assert emulator.state.stats()["calls"]["token"] == 0


@pytest.mark.anyio
async def test_a_rejected_shared_token_is_exit_3_without_minting(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    # The private key is there too: minting would revoke the token the others share.
    env = env_for(emulator.url, GIO_TOKEN="revoked-console-token")
    code, _, err = await cli(["run", "--from", "-4d", "--to", "-3d", "--shard", "1/2"],
                             env, tmp_path)  # two days: one for each shard
    assert code == 3, err
    assert "never mints" in err
    assert emulator.state.stats()["calls"]["token"] == 0


@pytest.mark.anyio
async def test_one_lease_per_shard(emulator: RunningEmulator, bucket: Bucket,
                                   tmp_path: Path) -> None:
    emulator.state.config.job_seconds = 3600  # the first shard keeps polling
    (tmp_path / "backfill.toml").write_text('poll_interval = "0.2s"\nlease_time = "3s"\n')
    env = env_for(emulator.url, GIO_SECRET="", **bucket.env(),
                  XDG_STATE_HOME=str(tmp_path / "state"))
    env["GIO_TOKEN"] = await _console_token(emulator)
    args = ["run", *RANGE, "--out", bucket.url(), "--quiet"]
    first = await start([*args, "--shard", "1/2"], env, tmp_path)
    try:
        with anyio.fail_after(20):
            await started(first)
        other = {**env, "XDG_STATE_HOME": str(tmp_path / "other-machine")}
        code, _, err = await cli([*args, "--shard", "1/2"], other, tmp_path)
        assert code == 2 and "another backfill holds" in err and "lease-1-of-2.json" in err
        code, _, err = await cli([*args, "--shard", "2/2", "--max-wait", "1s"], other, tmp_path)
        assert code == 4, err  # not refused: it ran, and its keys were not ready in 1 s
    finally:
        first.send_signal(signal.SIGINT)
        assert await wait_for(first, 10) == 130


async def _console_token(emulator: RunningEmulator) -> str:
    """A token issued once, as GrowingIO's console would, shared by every shard."""
    import aiohttp

    from tests.helpers import Api

    async with aiohttp.ClientSession() as session:
        return await Api(session, emulator.url).login()


def recipe_commands() -> list[str]:
    """The `backfill run` command lines of the scale-out recipes (docs/scale-out.md)."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "scale-out.md").read_text()
    section = page.split("# Run it at scale", 1)[1].split("\n**Many projects", 1)[0]
    recipes = "\n".join(re.findall(r"```yaml\n(.*?)```", section, flags=re.S))
    commands = ["backfill run " + line.split("backfill run ", 1)[1].strip()
                for line in recipes.splitlines() if "backfill run " in line]
    assert len(commands) == 2, commands
    return commands


@pytest.mark.anyio
async def test_the_readmes_shard_recipes_are_accepted(emulator: RunningEmulator,
                                                      bucket: Bucket, tmp_path: Path) -> None:
    env = env_for(emulator.url, GIO_SECRET="", GIO_TOKEN="console-token", **bucket.env(),
                  XDG_STATE_HOME=str(tmp_path / "state"))
    planned = 0
    # A dry run reads what the output records (its format…): the recipes' bucket exists.
    buckets = {re.search(r"s3://([a-z0-9.-]+)", c)[1] for c in recipe_commands()}  # type: ignore[index]
    existing = {b["Name"] for b in bucket.client.list_buckets()["Buckets"]}
    for name in buckets - existing:
        bucket.client.create_bucket(Bucket=name)
    for command in recipe_commands():
        for index in range(4):
            # The shell and Actions fill in the shard; so does this test.
            line = command.replace("$((JOB_COMPLETION_INDEX + 1))", str(index + 1))
            line = line.replace("${{ matrix.shard }}", str(index + 1))
            args = line.split()[1:]
            assert args[0] == "run" and "--shard" in args
            code, out, err = await cli([*args, "--dry-run", "--json"], env, tmp_path)
            assert code == 0, err
            planned += json.loads(out)["keys"]
    assert planned == 2 * 14 * 24  # each recipe's shards cover its range exactly once
    assert emulator.state.stats()["export_calls"] == 0


@pytest.mark.anyio
async def test_project_picks_the_entry_and_its_credentials(emulator: RunningEmulator,
                                                           tmp_path: Path) -> None:
    (tmp_path / "backfill.toml").write_text(
        '[[projects]]\nname = "acme"\nout = "acme-data"\ntypes = ["visit"]\n')
    env = {k: v for k, v in env_for(emulator.url).items() if not k.startswith("GIO_")}
    env.update(ACME_GIO_BASE_URL=emulator.url, ACME_GIO_CLIENT_ID="demo-client-id",
               ACME_GIO_AI="a1b2c3d4e5f60789", ACME_GIO_TOKEN="console-token")
    code, out, err = await cli(["run", *RANGE, "--project", "acme", "--shard", "1/2",
                                "--dry-run", "--json"], env, tmp_path)
    assert code == 0, err  # the project's GIO_TOKEN satisfies the token rule
    assert json.loads(out)["types"] == "visit"
    code, _, err = await cli(["status", "--project", "nope"], env, tmp_path)
    assert code == 2 and "no project 'nope'" in err and "acme" in err
