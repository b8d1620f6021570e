"""The output knows what it is (``_backfill.json``), and nothing deletes a file backfill
did not write. Pure rules first, then both destinations, then the commands as a user
types them, on a raw output and on a Delta table."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backfill.config import Settings, load
from backfill.destination import descriptor, open_root
from backfill.destination.descriptor import DESCRIPTOR, Descriptor, settle
from backfill.destination.manifest import document, stale
from backfill.errors import UsageError
from backfill.keys import Granularity
from backfill.model import ManifestPart
from tests.helpers import cli, env_for
from tests.s3 import Bucket

pytestmark = pytest.mark.anyio


def _settings(out: Path, **flags: Any) -> Settings:
    return load(None, {"out": str(out), **flags}, env={})


# --- the rules, pure ----------------------------------------------------------------------

def test_an_iceberg_output_records_its_catalog_and_namespace(tmp_path: Path) -> None:
    written = _settings(tmp_path, format="iceberg", iceberg_catalog="lake")
    recorded = Descriptor.parse(Descriptor.of(written).to_bytes())
    assert (recorded.iceberg_catalog, recorded.iceberg_namespace) == ("lake", "growingio")
    settled = settle(_settings(tmp_path), recorded)  # a command that does not say: taken
    assert (settled.format, settled.iceberg_catalog) == ("iceberg", "lake")
    with pytest.raises(UsageError, match="--iceberg-catalog other says otherwise"):
        settle(_settings(tmp_path, iceberg_catalog="other"), recorded)
    delta = Descriptor.parse(Descriptor.of(_settings(tmp_path, format="delta")).to_bytes())
    assert delta.iceberg_catalog is None and delta.iceberg_namespace is None
    assert settle(_settings(tmp_path, iceberg_catalog="any"), delta).iceberg_catalog == "any"


def test_what_the_command_does_not_say_comes_from_the_output(tmp_path: Path) -> None:
    recorded = Descriptor("delta", "v2", Granularity.HOUR, "{type}/dt={date}/hour={hour}")
    settled = settle(_settings(tmp_path), recorded)
    assert (settled.format, settled.api, settled.granularity) == ("delta", "v2",
                                                                  Granularity.HOUR)
    assert settled.sources["format"] == "the output"


@pytest.mark.parametrize(("flags", "said"), [
    ({"format": "csv"}, "--format csv"),
    ({"granularity": "day"}, "--granularity day"),
    ({"api": "v1"}, "--api v1"),
])
def test_a_contradicting_flag_is_refused_naming_what_the_output_holds(
        tmp_path: Path, flags: dict[str, str], said: str) -> None:
    recorded = Descriptor("delta", "v2", Granularity.HOUR, "{type}/dt={date}/hour={hour}")
    settings = _settings(tmp_path, **flags) if "api" not in flags else replace(
        _settings(tmp_path), api="v1", sources={"api": "flag --api"})
    with pytest.raises(UsageError) as caught:
        settle(settings, recorded)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{tmp_path} holds Delta tables of the v2 API, hourly keys" in message
    assert said in message and "another --out" in message


def test_a_config_file_that_contradicts_the_output_is_named(tmp_path: Path) -> None:
    config = tmp_path / "backfill.toml"
    config.write_text('format = "parquet"\n')
    settings = load(config, {"out": str(tmp_path)}, env={})
    with pytest.raises(UsageError, match=r"format = 'parquet' in .*backfill.toml"):
        settle(settings, Descriptor("csv", "v2", Granularity.DAY, None))


def test_an_unknown_field_of_an_older_output_is_taken_from_the_command(tmp_path: Path) -> None:
    settings = _settings(tmp_path, format="parquet", granularity="hour")
    assert settle(settings, Descriptor(None, "v2", None, None)) == settings
    assert settle(settings, None) == settings


def test_the_record_holds_exactly_the_settings_declared_recorded() -> None:
    from dataclasses import fields

    from backfill.destination.descriptor import RECORDED

    assert set(RECORDED) == {f.name for f in fields(Descriptor)} == {
        "format", "api", "granularity", "layout", "iceberg_catalog", "iceberg_namespace"}


def test_the_record_round_trips_and_a_foreign_file_of_that_name_is_not_taken() -> None:
    recorded = Descriptor("parquet", "v2", Granularity.DAY, "{type}/dt={date}")
    assert Descriptor.parse(recorded.to_bytes()) == recorded
    iceberg = Descriptor("iceberg", "v2", Granularity.HOUR, None, "", "growingio")
    assert Descriptor.parse(iceberg.to_bytes()) == iceberg
    for foreign in (b"{}", b"[1]", b"not json", json.dumps({"format": "csv"}).encode()):
        with pytest.raises(ValueError):
            Descriptor.parse(foreign)


def test_a_publish_drops_only_what_an_earlier_manifest_of_ours_named() -> None:
    earlier = {"part-00000.csv.gz", "part-00001.csv.gz", "part-00002.csv.gz"}
    dropped = stale(earlier, {"part-00000.csv.gz", "part-00001.csv.gz"})
    assert "part-00002.csv.gz" in dropped  # an older job version had one more part
    assert "part-00000.csv.gz" not in dropped and "part-00001.csv.gz" not in dropped
    assert ".part-00001.csv.gz.partial" in dropped  # our own temporary name of a part
    assert stale(set(), {"part-00000.csv.gz"}) == {".part-00000.csv.gz.partial"}


# --- both destinations ----------------------------------------------------------------------

@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Settings, Any]:
    if request.param == "local":
        settings = _settings(tmp_path / "out")
        return settings, lambda: sorted(p.relative_to(tmp_path / "out").as_posix()
                                        for p in (tmp_path / "out").rglob("*") if p.is_file())
    bucket: Bucket = request.getfixturevalue("bucket")
    settings = load(None, {"out": bucket.url(), "state_dir": str(tmp_path / "cache")},
                    env=dict(os.environ))
    return settings, lambda: sorted(k.removeprefix("raw/") for k in bucket.files())


def _manifest(*names: str) -> bytes:
    return document(key="2026112007", data_type="visit", api="v2",
                    parts=[ManifestPart(n, 1, "0" * 32, "https://h/x") for n in names],
                    completed_at=datetime(2026, 11, 20, tzinfo=UTC))


async def test_nothing_backfill_did_not_write_is_deleted_by_a_publish(
        root: tuple[Settings, Any]) -> None:
    settings, listed = root
    destination = open_root(settings)
    folder = "visit/dt=2026-11-20/hour=07"
    for name in ("part-00000.csv.gz", "part-00001.csv.gz", "part-99999.csv.gz",
                 "part-00000-3b1f.c000.snappy.parquet", "notes.txt"):
        await destination.create(f"{folder}/{name}", b"x")
    await destination.publish(folder, _manifest("part-00000.csv.gz", "part-00001.csv.gz"),
                              {"part-00000.csv.gz", "part-00001.csv.gz"})
    # Republished with one part less: only the part the earlier manifest named goes.
    await destination.publish(folder, _manifest("part-00000.csv.gz"), {"part-00000.csv.gz"})
    assert listed() == sorted(f"{folder}/{n}" for n in (
        "_SUCCESS", "_manifest.json", "part-00000.csv.gz", "part-99999.csv.gz",
        "part-00000-3b1f.c000.snappy.parquet", "notes.txt"))


async def test_the_record_is_created_once_and_a_second_writer_reads_it(
        root: tuple[Settings, Any]) -> None:
    settings, listed = root
    destination = open_root(settings)
    await descriptor.record(destination, replace(settings, format="csv"))
    assert DESCRIPTOR in listed()
    assert not await destination.create(DESCRIPTOR, b"{}")  # never overwritten
    again = await descriptor.read(destination, settings)
    assert again == Descriptor.of(replace(settings, format="csv"))
    contradicting = replace(settings, format="parquet", sources={"format": "flag --format"})
    with pytest.raises(UsageError, match="holds raw parts"):
        await descriptor.record(destination, contradicting)


async def test_an_output_of_an_earlier_version_is_recognised_by_its_delta_log(
        tmp_path: Path) -> None:
    log = tmp_path / "out" / "page" / "_delta_log"
    log.mkdir(parents=True)
    (log / f"{0:020d}.json").write_text(
        json.dumps({"protocol": {"minReaderVersion": 1}}) + "\n"
        + json.dumps({"metaData": {"partitionColumns": ["dt", "hour"]}}) + "\n")
    found = await descriptor.read(open_root(_settings(tmp_path / "out")),
                                  _settings(tmp_path / "out"))
    assert found == Descriptor("delta", "v2", Granularity.HOUR, None)
    assert not (tmp_path / "out" / DESCRIPTOR).exists()  # reading creates nothing


# --- the commands, as typed ----------------------------------------------------------------

async def test_a_raw_output_keeps_foreign_files_through_force_and_refuses_a_table(
        emulator: Any, tmp_path: Path) -> None:
    from tests.e2e.test_run import days_ago

    day = days_ago(3, 3)[0].name
    env = env_for(emulator.url)
    args = ["--from", day, "--to", day, "--types", "visit", "--out", "data"]
    assert (await cli(["run", *args], env, tmp_path))[0] == 0
    folder = next((tmp_path / "data" / "visit").iterdir())
    (folder / "part-77777.csv.gz").write_bytes(b"theirs")
    (folder / "part-00000-theirs.snappy.parquet").write_bytes(b"theirs too")
    code, _, err = await cli(["run", *args, "--force"], env, tmp_path)
    assert code == 0, err
    assert (folder / "part-77777.csv.gz").read_bytes() == b"theirs"
    assert (folder / "part-00000-theirs.snappy.parquet").exists()
    record = json.loads((tmp_path / "data" / DESCRIPTOR).read_text())
    assert record["format"] == "csv" and record["granularity"] == "day"

    before = sorted(p for p in (tmp_path / "data").rglob("*"))
    code, _, err = await cli(["run", *args, "--format", "delta"], env, tmp_path)
    assert code == 2 and err.count("\n") == 1, err
    assert "data holds raw parts of the v2 API, daily keys, but --format delta" in err
    assert sorted(p for p in (tmp_path / "data").rglob("*")) == before  # nothing written


async def test_a_delta_output_survives_every_command_typed_without_format(
        emulator: Any, tmp_path: Path) -> None:
    deltalake = pytest.importorskip("deltalake")
    from tests.e2e.test_run import hours_ago
    from tests.e2e.test_tables import Table, _same, expected

    keys = hours_ago(8, 7)
    env = env_for(emulator.url)
    span = ["--from", keys[0].name, "--to", keys[-1].name]
    out = ["--out", "lake"]
    code, _, err = await cli(["run", *span, "--types", "visit,page", "--format", "delta",
                              *out], env, tmp_path)
    assert code == 0, err

    def versions() -> dict[str, int]:
        return {t: deltalake.DeltaTable(str(tmp_path / "lake" / t)).version()
                for t in ("visit", "page")}

    written = versions()
    code, report, err = await cli(["status", *out, "--json"], env, tmp_path)
    assert code == 0 and json.loads(report)["keys"]["done"] == len(keys), (report, err)
    code, report, err = await cli(["verify", *out, "--deep", "--json"], env, tmp_path)
    checked = json.loads(report)
    assert code == 0 and checked["damaged"] == {} and checked["checked"] == 2 * len(keys)
    assert checked["parts"] >= 2 * len(keys), checked  # the table's files, each read
    code, report, err = await cli(["retry", *out], env, tmp_path)
    assert code == 0 and "nothing to retry" in report, (report, err)
    code, _, err = await cli(["run", *span, "--types", "visit,page", *out], env, tmp_path)
    assert code == 0, err
    assert versions() == written  # nothing fetched again, no commit added
    assert not list((tmp_path / "lake").rglob("*.csv.gz"))  # no raw part in a table
    for data_type in ("visit", "page"):
        table = deltalake.DeltaTable(str(tmp_path / "lake" / data_type))
        for file in table.file_uris():
            assert Path(file.removeprefix("file://")).exists(), file
        for key in keys:
            _same(Table("delta", str(tmp_path / "lake"), tmp_path, None).rows(data_type, key),
                  expected(emulator, data_type, key))
    for fmt in ("csv", "parquet"):
        code, _, err = await cli(["status", *out, "--format", fmt], env, tmp_path)
        assert code == 2 and "lake holds Delta tables" in err and f"--format {fmt}" in err
    # The table's creation commit carries the record too: without the file, and without
    # the local state, the output is still known for what it is.
    (tmp_path / "lake" / DESCRIPTOR).unlink()
    shutil.rmtree(tmp_path / "lake" / ".backfill")
    code, shown, err = await cli(["config", "show", *out, "--json"], env, tmp_path)
    values = json.loads(shown)["settings"]
    assert values["format"] == {"value": "delta", "from": "the output"}, err
    assert values["granularity"]["value"] == "hour"
    code, report, err = await cli(["status", *out, "--json"], env, tmp_path)
    assert code == 0 and json.loads(report)["keys"]["done"] == len(keys), (report, err)


@pytest.fixture
async def emulator(data_dir: Path) -> Any:
    from backfill.emulator import EmulatorConfig, serve

    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0, keep_rows=True,
                                    bytes_per_hour=8 * 1024, part_size=4 * 1024)) as running:
        yield running
