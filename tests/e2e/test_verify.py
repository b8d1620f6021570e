"""`backfill verify`: damaged keys on disk are found, reported and fetched again by run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from tests.e2e.test_run import days_ago, downloaded_md5s, source_md5s
from tests.helpers import cli, env_for

pytestmark = pytest.mark.anyio
RANGE = ["--from", "-4d", "--to", "-3d", "--types", "visit", "--out", "data"]


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=8192,
                                    part_size=4096)) as running:
        yield running


async def test_verify_finds_damage_and_run_repairs_it(emulator: RunningEmulator,
                                                      tmp_path: Path) -> None:
    env = env_for(emulator.url)
    assert (await cli(["run", *RANGE], env, tmp_path))[0] == 0
    code, out, _ = await cli(["verify", "--out", "data"], env, tmp_path)
    assert code == 0
    assert "checked 2 finished units" in out and "all intact" in out

    parts = sorted((tmp_path / "data" / "visit").rglob("part-*.csv.gz"))
    damaged = bytearray(parts[0].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # same size, one byte flipped
    parts[0].write_bytes(bytes(damaged))
    parts[-1].unlink()

    code, out, _ = await cli(["verify", "--out", "data"], env, tmp_path)
    assert code == 1
    assert out.count("damaged 2026") == 2
    assert "2 damaged, marked to be fetched again" in out

    calls = emulator.state.stats()["export_calls"]
    code, _, err = await cli(["run", *RANGE], env, tmp_path)
    assert code == 0, err
    assert emulator.state.stats()["export_calls"] == calls + 2  # only the damaged keys
    keys = days_ago(4, 3)
    assert downloaded_md5s(tmp_path / "data") == source_md5s(emulator, keys, ("visit",))
    assert (await cli(["verify", "--out", "data"], env, tmp_path))[0] == 0


async def test_verify_without_state_says_so(tmp_path: Path) -> None:
    code, _, err = await cli(["verify", "--out", "nothing-here"], {}, tmp_path)
    assert code == 2
    assert err.strip() == "backfill: error: no backfill state in nothing-here: nothing to verify"


async def test_verify_deep_inflates_what_the_manifest_md5_cannot_question(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    # A part whose bytes match its manifest's MD5 but do not inflate (stored broken at the
    # source): the default check (length, MD5, framing) passes it; --deep does not.
    env = env_for(emulator.url)
    assert (await cli(["run", *RANGE], env, tmp_path))[0] == 0
    part = sorted((tmp_path / "data" / "visit").rglob("part-*.csv.gz"))[0]
    broken = bytearray(part.read_bytes())
    broken[len(broken) // 2] ^= 0xFF
    part.write_bytes(bytes(broken))
    manifest_path = part.parent / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["parts"]:
        if entry["file"] == part.name:
            entry["md5"] = hashlib.md5(bytes(broken)).hexdigest()
    manifest_path.write_text(json.dumps(manifest))

    code, out, _ = await cli(["verify", "--out", "data"], env, tmp_path)
    assert code == 0 and "all intact" in out
    code, out, _ = await cli(["verify", "--deep", "--out", "data"], env, tmp_path)
    assert code == 1
    assert "gzip" in out and "1 damaged" in out


async def test_a_unit_verify_could_not_read_is_reported_and_never_marked(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    # The store fails to answer for one part (an I/O error, a bucket that times out):
    # that is not evidence of damage, so nothing is withdrawn or marked to be fetched.
    from backfill.destination.local import LocalFolder
    from backfill.errors import RemoteError
    from backfill.model import Status
    from backfill.state.store import Store
    from backfill.state.verify import verify
    from tests.e2e.test_run import settings_for

    env = env_for(emulator.url)
    assert (await cli(["run", *RANGE], env, tmp_path))[0] == 0
    out = tmp_path / "data"

    class Unreadable(LocalFolder):
        async def check(self, path: str, *args: object, **kwargs: object) -> None:
            raise RemoteError(f"{path}: the store did not answer")

    store = Store(out / ".backfill")
    try:
        report = await verify(store, Unreadable(out), settings_for(emulator, out,
                                                                  types=("visit",)), None)
        assert report.damaged == {} and report.checked == 0
        assert len(report.unchecked) == 2
        assert all("the store did not answer" in why for why in report.unchecked.values())
        assert {u.status for u in store.units()} == {Status.DONE}
    finally:
        store.close()
    assert len(list(out.rglob("_SUCCESS"))) == 2
