"""Writing to an object store: the real client, the real emulator and a real S3 server
(moto) on loopback. Behaviour shared with a local folder is tested on both."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import signal
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from backfill.config import Settings, parse_out
from backfill.emulator import DEMO_CREDENTIALS, EmulatorConfig, Faults, RunningEmulator, serve
from backfill.engine.progress import PlainReporter
from backfill.keys import Granularity, Key
from backfill.library import fetch_keys
from backfill.model import Status
from tests.e2e.test_run import days_ago, hours_ago, run, settings_for, source_md5s
from tests.e2e.test_survive_process import start, started, wait_for
from tests.helpers import assert_no_secrets, cli, env_for
from tests.s3 import S3_ENV, Bucket

pytestmark = pytest.mark.anyio
TYPES = ("visit", "page")


@dataclass
class Output:
    """Where a test run writes, and what a reader finds there afterwards."""

    out: Any
    """The ``--out`` value: a folder or an ``s3://`` URL."""
    state_dir: Path
    bucket: Bucket | None = None

    def settings(self, emulator: RunningEmulator, **changes: Any) -> Settings:
        return settings_for(emulator, parse_out(str(self.out)), state_dir=self.state_dir,
                            **changes)

    def files(self) -> dict[str, bytes]:
        if self.bucket is not None:
            return self.bucket.files()
        root = Path(self.out)
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file()}

    def write(self, name: str, data: bytes) -> None:
        """Change an object behind backfill's back (its path below the output)."""
        if self.bucket is not None:
            self.bucket.put(f"raw/{name}", data)
        else:
            (Path(self.out) / name).write_bytes(data)

    def remove(self, name: str) -> None:
        if self.bucket is not None:
            self.bucket.client.delete_object(Bucket=self.bucket.name, Key=f"raw/{name}")
        else:
            (Path(self.out) / name).unlink()


@pytest.fixture(params=["local", "s3"])
def output(request: pytest.FixtureRequest, tmp_path: Path) -> Output:
    if request.param == "local":
        return Output(tmp_path / "data", tmp_path / "data" / ".backfill")
    bucket: Bucket = request.getfixturevalue("bucket")
    return Output(bucket.url(), tmp_path / "cache", bucket)


@pytest.fixture
async def emulator(data_dir: Path) -> Any:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0,
                                    bytes_per_hour=8 * 1024, part_size=4 * 1024)) as running:
        yield running


def md5s(files: dict[str, bytes]) -> Counter[str]:
    return Counter(hashlib.md5(data).hexdigest() for name, data in files.items()
                   if name.rpartition("/")[2].startswith("part-"))


def unit_folders(files: dict[str, bytes]) -> set[str]:
    return {name.rpartition("/")[0] for name in files if "/" in name and ".backfill" not in name}


async def test_parts_land_byte_identical_then_manifest_then_marker(
        emulator: RunningEmulator, output: Output) -> None:
    keys = days_ago(4, 3)
    summary = await run(output.settings(emulator, types=TYPES), keys)
    assert summary.exit_code == 0
    files = output.files()
    assert md5s(files) == source_md5s(emulator, keys, TYPES)
    folders = unit_folders(files)
    assert folders == {f"{t}/dt={k.start:%Y-%m-%d}" for k in keys for t in TYPES}
    for folder in folders:
        assert files[f"{folder}/_SUCCESS"] == b""
        manifest = json.loads(files[f"{folder}/_manifest.json"])
        parts = {n.rpartition("/")[2] for n in files if n.startswith(f"{folder}/part-")}
        assert {p["file"] for p in manifest["parts"]} == parts
        for part in manifest["parts"]:
            data = files[f"{folder}/{part['file']}"]
            assert (len(data), hashlib.md5(data).hexdigest()) == (part["size"], part["md5"])
            assert ("etag" in part) == (output.bucket is not None)
    assert not [n for n in files if n.endswith(".partial")]
    if output.bucket is not None:
        assert not output.bucket.uploads_in_progress()
        assert not [n for n in files if n.startswith(".backfill/")]  # the lease is released


@pytest.fixture
def writes(output: Output, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every object made visible under its final name, in order, as ``folder/name``: the
    renames of a local folder, the PUTs (and completed uploads) of a bucket."""
    made: list[str] = []
    if output.bucket is not None:
        from backfill.destination.object_store import ObjectStore

        put = ObjectStore._put

        async def recording(self: ObjectStore, path: str, data: Any, **kw: Any) -> str | None:
            etag = await put(self, path, data, **kw)
            made.append(path)
            return etag

        monkeypatch.setattr(ObjectStore, "_put", recording)
    else:
        import os

        replace_file = os.replace
        root = Path(output.out)

        def renaming(source: Any, target: Any) -> None:
            replace_file(source, target)
            if Path(target).is_relative_to(root):
                made.append(Path(target).relative_to(root).as_posix())

        monkeypatch.setattr(os, "replace", renaming)
    return made


async def test_every_unit_commits_parts_then_manifest_then_marker(
        emulator: RunningEmulator, output: Output, writes: list[str]) -> None:
    keys = days_ago(4, 3)
    assert (await run(output.settings(emulator, types=TYPES), keys)).exit_code == 0
    folders = {w.rpartition("/")[0] for w in writes if "/_SUCCESS" in w}
    assert len(folders) == len(keys) * len(TYPES)
    for folder in folders:
        order = [w.rpartition("/")[2] for w in writes if w.rpartition("/")[0] == folder]
        assert order[-2:] == ["_manifest.json", "_SUCCESS"], order  # strictly last
        assert all(name.startswith("part-") for name in order[:-2]) and order[:-2]


async def test_a_unit_fetched_again_loses_its_marker_before_any_part_is_written(
        emulator: RunningEmulator, output: Output) -> None:
    keys = days_ago(4, 4)
    settings = output.settings(emulator, types=("visit",))
    assert (await run(settings, keys)).exit_code == 0
    marker = f"visit/dt={keys[0].start:%Y-%m-%d}/_SUCCESS"
    assert marker in output.files()
    # Forced again, and every download now breaks: the unit is half rewritten at best.
    emulator.state.config.faults.update(truncate=1.0)
    again = await run(replace(settings, retries=0), keys, force=True)
    assert again.exit_code == 1
    assert marker not in output.files()  # a reader no longer trusts what is there


async def test_a_marker_without_its_manifest_is_not_taken_for_a_done_unit(
        emulator: RunningEmulator, output: Output) -> None:
    keys = days_ago(4, 3)
    settings = output.settings(emulator, types=("visit",))
    assert (await run(settings, keys)).exit_code == 0
    shutil.rmtree(output.state_dir)  # a fresh runner: the destination is all it knows
    folder = f"visit/dt={keys[0].start:%Y-%m-%d}"
    output.remove(f"{folder}/_manifest.json")
    answered = emulator.state.stats()["answers"]["FINISHED"]
    again = await run(settings, keys)
    assert again.exit_code == 0 and again.parts > 0
    # That unit was asked for again, and only it (the other was adopted from its markers).
    assert emulator.state.stats()["answers"]["FINISHED"] == answered + 1
    assert f"{folder}/_manifest.json" in output.files()


async def test_verify_compares_every_part_size_with_its_manifest(
        emulator: RunningEmulator, output: Output) -> None:
    from backfill.destination import open_destination
    from backfill.engine.runner import open_store
    from backfill.state.verify import verify

    keys = days_ago(4, 3)
    settings = output.settings(emulator, types=("visit",))
    assert (await run(settings, keys)).exit_code == 0
    folder = f"visit/dt={keys[0].start:%Y-%m-%d}"
    manifest = json.loads(output.files()[f"{folder}/_manifest.json"])
    for entry in manifest["parts"]:  # the right MD5, no ETag, a size one byte off
        entry.pop("etag", None)
    manifest["parts"][0]["size"] += 1
    output.write(f"{folder}/_manifest.json", json.dumps(manifest).encode())
    store = open_store(settings)
    try:
        report = await verify(store, open_destination(settings), settings, None)
    finally:
        store.close()
    assert list(report.damaged) == [f"{keys[0].name} visit"]
    assert "expected" in report.damaged[f"{keys[0].name} visit"]


async def test_a_done_part_of_another_size_is_fetched_again(emulator: RunningEmulator,
                                                            output: Output) -> None:
    keys = days_ago(4, 4)
    settings = output.settings(emulator, types=("visit",), retries=0)
    emulator.state.config.faults.update(truncate=1.0, limit=1)  # one part fails, once
    first = await run(settings, keys)
    assert first.exit_code == 1 and first.parts > 0  # the others are done and kept
    done = sorted(name for name in output.files() if name.rpartition("/")[2].startswith(
        "part-"))
    output.write(done[0], output.files()[done[0]] + b"one byte more")
    again = await run(settings, keys)
    assert again.exit_code == 0, again.problems
    assert md5s(output.files()) == source_md5s(emulator, keys, ("visit",))


async def test_a_lost_cache_costs_no_export_call(emulator: RunningEmulator,
                                                  output: Output) -> None:
    # An ephemeral CI runner: the state is gone, the destination is not.
    keys = days_ago(5, 3)
    settings = output.settings(emulator, types=TYPES)
    assert (await run(settings, keys)).exit_code == 0
    shutil.rmtree(output.state_dir)
    before = emulator.state.stats()["calls"]
    again = await run(settings, keys)
    assert again.exit_code == 0
    assert again.statuses[Status.DONE] == len(keys) and again.parts == 0
    assert emulator.state.stats()["calls"] == before  # not an export call, not a token


@pytest.mark.parametrize("damage", ["garbage", "cut in half"])
async def test_a_damaged_cache_is_set_aside_and_rebuilt_from_the_markers(
        emulator: RunningEmulator, output: Output, damage: str) -> None:
    keys = days_ago(5, 3)
    settings = output.settings(emulator, types=TYPES)
    assert (await run(settings, keys)).exit_code == 0
    state = output.state_dir / "state.sqlite"
    for journal in ("state.sqlite-wal", "state.sqlite-shm"):
        (output.state_dir / journal).unlink(missing_ok=True)
    data = state.read_bytes()
    damaged = (b"\x00garbage, not a database\n" * 512 if damage == "garbage"
               else data[: len(data) // 2])
    state.write_bytes(damaged)
    before = emulator.state.stats()["calls"]
    lines = io.StringIO()
    again = await fetch_keys(settings, keys, reporter=PlainReporter(lines, interval=3600))
    assert again.exit_code == 0, again.problems
    assert again.statuses[Status.DONE] == len(keys) and again.parts == 0
    assert emulator.state.stats()["calls"] == before  # not an export call, not a token
    aside = list(output.state_dir.glob("state.sqlite.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept for inspection
    warnings = [line for line in lines.getvalue().splitlines() if "warning:" in line]
    assert len(warnings) == 1 and aside[0].name in warnings[0], lines.getvalue()


async def test_a_unit_without_its_marker_is_fetched_again(emulator: RunningEmulator,
                                                          output: Output) -> None:
    keys = days_ago(4, 3)
    settings = output.settings(emulator, types=("visit",))
    assert (await run(settings, keys)).exit_code == 0
    shutil.rmtree(output.state_dir)
    folder = f"visit/dt={keys[0].start:%Y-%m-%d}"
    if output.bucket is not None:
        output.bucket.client.delete_object(Bucket=output.bucket.name,
                                           Key=f"raw/{folder}/_SUCCESS")
    else:
        (Path(output.out) / folder / "_SUCCESS").unlink()
    answered = emulator.state.stats()["answers"]["FINISHED"]
    assert (await run(settings, keys)).exit_code == 0
    # One key asked for (the lost cache also lost the call history: a 429 may come first).
    assert emulator.state.stats()["answers"]["FINISHED"] == answered + 1
    assert f"{folder}/_SUCCESS" in output.files()


@pytest.mark.parametrize("size", [4 * 1024, 6 * 1024 * 1024], ids=["small", "large"])
async def test_a_part_that_fails_its_check_never_becomes_visible(
        data_dir: Path, output: Output, size: int) -> None:
    # Large parts stream up as a multipart upload: the check that fails at the end
    # aborts it. Small ones are checked before their single PUT.
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, flat_data=True, compress_level=1,
                            bytes_per_hour=size, faults=Faults(seed=3, corrupt=1.0))
    async with serve(config) as emulator:
        settings = output.settings(emulator, types=("visit",), retries=1,
                                   granularity=Granularity.HOUR)
        summary = await run(settings, hours_ago(30, 30))
    assert summary.exit_code == 1
    assert "MD5" in next(iter(summary.problems.values()))
    files = output.files()
    assert not [n for n in files if "part-" in n or n.endswith("_SUCCESS")], sorted(files)
    if output.bucket is not None:
        assert not output.bucket.uploads_in_progress()


# --- object stores only ----------------------------------------------------------------------


def remote_env(emulator: RunningEmulator, bucket: Bucket, tmp_path: Path) -> dict[str, str]:
    return env_for(emulator.url, **bucket.env(), XDG_STATE_HOME=str(tmp_path / "state"))


@pytest.fixture
def fast_polls(tmp_path: Path) -> None:
    (tmp_path / "backfill.toml").write_text(
        'poll_interval = "0.2s"\nmax_poll_interval = "0.5s"\nbackoff = "0.05s"\n'
        'max_backoff = "0.2s"\nlease_time = "3s"\n')


RANGE = ["--from", "-5d", "--to", "-3d", "--types", "visit,page", "--quiet"]


@pytest.mark.usefixtures("fast_polls")
async def test_large_parts_stream_up_and_kill_9_then_rerun_is_exact(
        data_dir: Path, bucket: Bucket, tmp_path: Path) -> None:
    # 6 MiB parts: each streams up as a multipart upload while it downloads.
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.2, flat_data=True, compress_level=1,
                            bytes_per_hour=6 * 1024 * 1024)
    async with serve(config) as emulator:
        env = remote_env(emulator, bucket, tmp_path)
        args = ["run", "--from", "-40h", "--to", "-39h", "--granularity", "hour",
                "--types", "visit,page", "--quiet", "--out", bucket.url(), "--downloads", "2"]
        process = await start(args, env, tmp_path)
        await anyio.sleep(random.Random(7).uniform(0.8, 1.5))
        process.send_signal(signal.SIGKILL)
        await wait_for(process, 10)
        keys = hours_ago(40, 39)
        wanted = source_md5s(emulator, keys, ("visit", "page"))
        # Nothing half-uploaded is visible: every part object present is whole.
        assert not md5s(bucket.files()) - wanted
        # The dead run's lease expires (3 s here); then the rerun finishes exactly.
        await anyio.sleep(3.5)
        code, out, err = await cli(args, env, tmp_path)
        assert code == 0, err
        files = bucket.files()
        assert md5s(files) == wanted
        assert all(f"{t}/dt={k.start:%Y-%m-%d}/hour={k.start:%H}/_SUCCESS" in files
                   for k in keys for t in ("visit", "page"))
        assert_no_secrets([out, err], None)
        assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in out + err


@pytest.mark.usefixtures("fast_polls")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_mid_upload_aborts_every_upload_in_flight(
        stop: signal.Signals, data_dir: Path, bucket: Bucket, tmp_path: Path) -> None:
    # 6 MiB parts that trickle in at 1 MiB/s: each is a multipart upload for seconds.
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, flat_data=True,
                            compress_level=1, bytes_per_hour=6 * 1024 * 1024,
                            faults=Faults(trickle=1.0, trickle_rate=1024 * 1024))
    async with serve(config) as emulator:
        env = remote_env(emulator, bucket, tmp_path)
        process = await start(["run", "--from", "-40h", "--to", "-39h", "--granularity",
                               "hour", "--types", "visit,page", "--quiet", "--out",
                               bucket.url(), "--downloads", "4"], env, tmp_path)
        try:
            with anyio.fail_after(30):
                while not bucket.uploads_in_progress():  # noqa: ASYNC110 (another process)
                    await anyio.sleep(0.05)
        finally:
            process.send_signal(stop)
        assert await wait_for(process, 30) == 130
        assert process.stderr is not None
        err = (await process.stderr.receive()).decode()
    assert bucket.uploads_in_progress() == []
    assert "raw/.backfill/lease.json" not in bucket.names()
    assert err.strip().splitlines()[-1].startswith(f"backfill: error: interrupted by {stop.name}")


@pytest.mark.usefixtures("fast_polls")
async def test_a_second_writer_is_refused_by_the_lease(emulator: RunningEmulator, bucket: Bucket,
                                                       tmp_path: Path) -> None:
    emulator.state.config.job_seconds = 3600  # the first run keeps polling
    env = remote_env(emulator, bucket, tmp_path)
    first = await start(["run", *RANGE, "--out", bucket.url()], env, tmp_path)
    try:
        with anyio.fail_after(20):
            await started(first)  # the plan is printed once the lease is held
        assert "raw/.backfill/lease.json" in bucket.names()
        # Another machine: its own state, the same bucket.
        other = {**env, "XDG_STATE_HOME": str(tmp_path / "other-machine")}
        code, _, err = await cli(["run", *RANGE, "--out", bucket.url()], other, tmp_path)
        assert code == 2
        assert err.count("\n") == 1
        assert f"another backfill holds {bucket.url()}" in err and f"pid {first.pid}" in err
        await anyio.sleep(4)  # past a lease time: the first run renewed it
        code, _, err = await cli(["run", *RANGE, "--out", bucket.url()], other, tmp_path)
        assert code == 2 and "another backfill holds" in err
    finally:
        first.send_signal(signal.SIGINT)
        assert await wait_for(first, 10) == 130
    assert "raw/.backfill/lease.json" not in bucket.names()  # released on the way out


async def test_a_stale_lease_expires(emulator: RunningEmulator, bucket: Bucket,
                                     tmp_path: Path) -> None:
    bucket.put("raw/.backfill/lease.json", json.dumps({
        "owner": "ci", "host": "runner-7", "pid": 4242, "started": "2026-01-01T00:00:00+00:00",
        "expires": "2026-01-01T00:05:00+00:00", "run": "dead"}).encode())
    settings = replace(settings_for(emulator, parse_out(bucket.url())),
                       state_dir=tmp_path / "cache", types=("visit",))
    assert (await run(settings, days_ago(3, 3))).exit_code == 0
    assert "raw/.backfill/lease.json" not in bucket.names()


async def test_the_lease_goes_on_release_even_after_a_renewal_whose_answer_was_lost(
        emulator: RunningEmulator, bucket: Bucket, tmp_path: Path) -> None:
    # A renewal cancelled on the way out (Ctrl-C) may still land: the lease then has an
    # ETag this run never heard of. It is still this run's, and must not outlive it. A
    # lease another run took over, though, is left alone.
    from backfill.destination.object_store import ObjectStore

    settings = replace(settings_for(emulator, parse_out(bucket.url())),
                       state_dir=tmp_path / "cache")
    lease = "raw/.backfill/lease.json"
    for taken_over in (False, True):
        async with ObjectStore.open(settings).hold(settings):
            document = json.loads(bucket.read(lease))
            if taken_over:
                document["run"] = "another-run"
            bucket.put(lease, json.dumps(document).encode())  # a new ETag, unheard of
        assert (lease in bucket.names()) is taken_over
    bucket.client.delete_object(Bucket=bucket.name, Key=lease)


async def test_a_live_lease_refuses_with_its_holder(emulator: RunningEmulator, bucket: Bucket,
                                                    tmp_path: Path) -> None:
    bucket.put("raw/.backfill/lease.json", json.dumps({
        "owner": "ci", "host": "runner-7", "pid": 4242, "started": "2026-01-01T00:00:00+00:00",
        "expires": "2999-01-01T00:00:00+00:00", "run": "alive"}).encode())
    code, _, err = await cli(["run", *RANGE, "--out", bucket.url()],
                             remote_env(emulator, bucket, tmp_path), tmp_path)
    assert code == 2
    assert "ci@runner-7 (pid 4242" in err
    assert "delete s3://" in err and "/raw/.backfill/lease.json" in err
    assert emulator.state.stats()["export_calls"] == 0


async def test_without_credentials_the_line_names_every_source_tried(
        emulator: RunningEmulator, bucket: Bucket, tmp_path: Path) -> None:
    # A laptop: no keys, no profile, and an instance metadata service that does not answer
    # (a dead loopback port: tests never reach a real metadata address).
    with anyio.fail_after(5):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()
    env = remote_env(emulator, bucket, tmp_path)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    del env["AWS_EC2_METADATA_DISABLED"]
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{port}",
               AWS_METADATA_ENDPOINT=f"http://127.0.0.1:{port}")
    started = anyio.current_time()
    code, _, err = await cli(["run", *RANGE, "--out", bucket.url()], env, tmp_path)
    assert code == 2, err
    line, = err.splitlines()
    assert line.startswith("backfill: error: no storage credentials: tried ")
    for source in ("AWS_ACCESS_KEY_ID", f"{tmp_path}/.aws/credentials and "
                   f"{tmp_path}/.aws/config (profile default)",
                   "a web identity", "a container role",
                   f"instance metadata at http://127.0.0.1:{port} (no answer"):
        assert source in line, source
    assert "169.254.169.254" not in line
    assert anyio.current_time() - started < 30  # bounded: the metadata wait is one second


@pytest.mark.parametrize("fmt", ["csv", "delta"])
async def test_a_shared_credentials_file_is_read(emulator: RunningEmulator, bucket: Bucket,
                                                 tmp_path: Path, fmt: str) -> None:
    """Keys in a profile of ~/.aws/credentials only: the parts and the Delta writer both
    use them (delta-rs alone went to the instance metadata service, and a traceback)."""
    if fmt == "delta":
        pytest.importorskip("deltalake")
    env = remote_env(emulator, bucket, tmp_path)
    key, secret = env.pop("AWS_ACCESS_KEY_ID"), env.pop("AWS_SECRET_ACCESS_KEY")
    shared = tmp_path / "aws-credentials"
    shared.write_text(f"[default]\naws_access_key_id = nope\naws_secret_access_key = nope\n"
                      f"[lake]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(shared), AWS_PROFILE="lake",
               HOME=str(tmp_path))
    code, out, err = await cli(["run", *RANGE, "--format", fmt, "--out", bucket.url()], env,
                               tmp_path)
    assert code == 0, err
    assert "Traceback" not in err
    assert any(name.endswith("/_SUCCESS") or "/_delta_log/" in name
               for name in bucket.names())
    assert secret not in out + err


@pytest.mark.parametrize("problem", ["no credentials", "no bucket", "wrong endpoint"])
async def test_a_store_that_cannot_be_used_is_one_line_exit_2_without_an_export_call(
        emulator: RunningEmulator, bucket: Bucket, tmp_path: Path, problem: str) -> None:
    env = remote_env(emulator, bucket, tmp_path)
    url = bucket.url()
    if problem == "no credentials":
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        env["HOME"] = str(tmp_path)  # no ~/.aws/credentials of the machine's either
        expected = ("no storage credentials: tried AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY")
    elif problem == "no bucket":
        url = "s3://no-such-bucket-here/raw"
        expected = "the bucket 'no-such-bucket-here' does not exist"
    else:
        with anyio.fail_after(5):
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            await listener.aclose()  # a port nothing listens on
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        expected = f"{url}: cannot "
    with anyio.fail_after(60):
        code, _, err = await cli(["run", *RANGE, "--out", url], env, tmp_path)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("backfill: error: "), err
    assert expected in err
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in err
    assert emulator.state.stats()["calls"]["token"] == 0
    assert emulator.state.stats()["export_calls"] == 0


async def test_status_and_verify_read_the_bucket(emulator: RunningEmulator, bucket: Bucket,
                                                 tmp_path: Path) -> None:
    env = remote_env(emulator, bucket, tmp_path)
    url = bucket.url()
    args = ["--from", "-4d", "--to", "-3d", "--types", "visit", "--out", url]
    assert (await cli(["run", *args], env, tmp_path))[0] == 0
    fresh = {**env, "XDG_STATE_HOME": str(tmp_path / "fresh-runner")}
    code, out, err = await cli(["status", "--json", "--out", url], fresh, tmp_path)
    assert code == 0, err
    report = json.loads(out)
    assert report["keys"]["done"] == 2 and report["out"] == url and report["bytes"] > 0

    code, out, err = await cli(["verify", "--out", url], fresh, tmp_path)
    assert code == 0 and "checked 2 finished units" in out and "all intact" in out, err
    parts = sorted(k for k in bucket.names("raw/visit/") if "/part-" in k)
    data = bytearray(bucket.read(parts[0]))
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: a new ETag
    bucket.put(parts[0], bytes(data))
    code, out, err = await cli(["verify", "--out", url], fresh, tmp_path)
    assert code == 1 and "1 damaged" in out and "ETag" in out, err
    assert parts[0].rpartition("/")[0] + "/_SUCCESS" not in bucket.names()

    calls = emulator.state.stats()["export_calls"]
    assert (await cli(["run", *args], fresh, tmp_path))[0] == 0
    assert emulator.state.stats()["export_calls"] == calls + 1  # only the damaged key
    keys: list[Key] = days_ago(4, 3)
    assert md5s(bucket.files()) == source_md5s(emulator, keys, ("visit",))
    code, out, err = await cli(["verify", "--deep", "--out", url], fresh, tmp_path)
    assert code == 0 and "all intact" in out, err


def _duckdb_with_httpfs() -> Any:
    """A DuckDB connection with the httpfs extension, from the test extra's wheels (no
    download at run time); skips when they are not installed."""
    duckdb = pytest.importorskip("duckdb", reason="DuckDB is not installed")
    try:
        import duckdb_ext  # type: ignore[import-not-found]  # from duckdb-ext-httpfs
    except ImportError:
        pytest.skip("the httpfs extension wheel (duckdb-ext-httpfs) is not installed")
    found = sorted(Path(next(iter(duckdb_ext.__path__))).glob(
        f"extensions/v{duckdb.__version__}/*/httpfs.duckdb_extension"))
    if not found:
        pytest.skip(f"no httpfs extension for DuckDB {duckdb.__version__} on this platform")
    connection = duckdb.connect()
    connection.execute(f"LOAD '{found[0]}'")
    return connection


async def test_duckdb_reads_the_bucket_as_it_is(emulator: RunningEmulator, bucket: Bucket,
                                                tmp_path: Path) -> None:
    import gzip

    connection = _duckdb_with_httpfs()
    keys = days_ago(4, 3)
    settings = replace(settings_for(emulator, parse_out(bucket.url())),
                       state_dir=tmp_path / "cache", types=("visit",))
    assert (await run(settings, keys)).exit_code == 0
    # The README's recipe: a secret for the endpoint, then the Hive layout as it is.
    host = bucket.endpoint.removeprefix("http://")
    connection.execute(
        f"CREATE SECRET gio (TYPE s3, KEY_ID '{S3_ENV['AWS_ACCESS_KEY_ID']}', "
        f"SECRET '{S3_ENV['AWS_SECRET_ACCESS_KEY']}', REGION 'us-east-1', ENDPOINT '{host}', "
        "URL_STYLE 'path', USE_SSL false)")
    rows = connection.sql(
        f"SELECT dt, count(*) AS visits FROM read_csv('s3://{bucket.name}/raw/visit/*/*.csv.gz', "
        "hive_partitioning = true, escape = '\\') GROUP BY dt ORDER BY dt").fetchall()
    data = emulator.state.data
    expected = [(k.start.date(), sum(
        gzip.decompress(p.path.read_bytes()).count(b"\n") - 1
        for hour in k.hours() for p in data.parts(DEMO_CREDENTIALS.ai, "visit", hour)))
        for k in keys]
    assert rows == expected


async def test_catchup_on_a_fresh_runner_starts_after_what_the_bucket_holds(
        emulator: RunningEmulator, bucket: Bucket, tmp_path: Path) -> None:
    env = remote_env(emulator, bucket, tmp_path)
    url = bucket.url()
    assert (await cli(["run", "--from", "-6d", "--to", "-4d", "--types", "visit", "--out", url],
                      env, tmp_path))[0] == 0
    fresh = {**env, "XDG_STATE_HOME": str(tmp_path / "fresh-runner")}
    code, out, err = await cli(["catchup", "--types", "visit", "--out", url, "--dry-run",
                                "--json"], fresh, tmp_path)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["first"] == days_ago(3, 3)[0].name  # the day after the newest complete one
    assert plan["done"] == 0 and plan["to_fetch"] == plan["keys"]


async def test_demo_writes_into_a_bucket(bucket: Bucket, tmp_path: Path) -> None:
    env = {**env_for("http://127.0.0.1:9"), **bucket.env(),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    code, out, err = await cli(["demo", "--quiet", "--out", bucket.url("demo")], env, tmp_path)
    assert code == 0, err
    markers = [n for n in bucket.names("demo/") if n.endswith("/_SUCCESS")]
    assert len(markers) == 7 * 3  # a week of three data types
    assert f"backfill status --out {bucket.url('demo')}" in out
    assert not list(tmp_path.glob("s3*"))  # nothing written to a local folder named "s3:"
    # It says, once, where it keeps what it writes outside the output.
    assert err.count("the emulator's generated data is kept in ") == 1
    assert f"token locks in {tmp_path / 'state' / 'backfill' / 'tokens'}" in err


def test_a_store_error_shows_neither_a_signed_query_nor_the_xml_body() -> None:
    from backfill.destination.object_store import _first_line

    error = Exception("Generic Azure error: Error performing GET https://acct.blob.core.windows"
                      ".net/c/x?sv=2024&sig=SECRETSIG in 3ms - Server returned non-2xx status "
                      "code: 403 Forbidden: <?xml version=\"1.0\"?><Error>…</Error>\nmore")
    line = _first_line(error)
    assert "SECRETSIG" not in line and "<?xml" not in line and "\n" not in line
    assert "https://acct.blob.core.windows.net/c/x" in line and "403 Forbidden" in line


async def test_check_lists_the_bucket_before_asking_for_a_token(
        emulator: RunningEmulator, bucket: Bucket, tmp_path: Path) -> None:
    env = remote_env(emulator, bucket, tmp_path)
    code, out, err = await cli(["check", "--out", bucket.url()], env, tmp_path)
    assert code == 0, err
    assert f"{bucket.url()} can be listed" in out and "issued a token" in out
    # Several times: obstore's threads once aborted the interpreter at exit (SIGABRT) in
    # about one run of seven.
    for _ in range(5):
        code, _, err = await cli(["check", "--out", "s3://no-such-bucket-here/x"], env,
                                 tmp_path)
        assert code == 2 and "does not exist" in err, (code, err)
    assert emulator.state.stats()["tokens_issued"] == 1  # the other checks stopped before
