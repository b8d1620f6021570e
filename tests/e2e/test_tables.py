"""Typed tables (``--format parquet|delta|iceberg``): the real client, the real emulator,
a folder and a real S3 server (moto), read back with deltalake, pyiceberg, DuckDB and
polars. Tables are compared with the rows the emulator generated, not with a parse of the
CSV."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import random
import shutil
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from backfill.config import Settings, parse_out
from backfill.destination.tables.schema import COLUMNS, column_kind
from backfill.emulator import DEMO_CREDENTIALS, EmulatorConfig, Faults, RunningEmulator, serve
from backfill.errors import IntegrityError
from backfill.install import install_line
from backfill.keys import V2_TYPES, Granularity, Key
from tests.e2e.test_run import hours_ago, run, settings_for
from tests.e2e.test_survive_process import start, wait_for
from tests.helpers import cli, env_for
from tests.s3 import S3_ENV, Bucket

pytestmark = pytest.mark.anyio
pa = pytest.importorskip("pyarrow")
deltalake = pytest.importorskip("deltalake")
FORMATS = ["parquet", "delta", pytest.param("iceberg", marks=pytest.mark.skipif(
    importlib.util.find_spec("pyiceberg") is None, reason="the iceberg extra is not installed"))]
"""The table formats; Iceberg's tests need its extra (the floor job goes without)."""


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0, keep_rows=True,
                                    bytes_per_hour=24 * 1024, part_size=8 * 1024,
                                    drift_hours=(_drifting(),))) as running:
        yield running


def _drifting() -> str:
    return hours_ago(9, 9)[0].name


class Table:
    """Where a test writes a table, and what a reader reads back."""

    def __init__(self, fmt: str, out: str, state: Path, bucket: Bucket | None,
                 catalog: str = "") -> None:
        self.fmt, self.out, self.state, self.bucket = fmt, out, state, bucket
        self.catalog = catalog
        """An Iceberg output's named catalog ("": the embedded one)."""

    def settings(self, emulator: RunningEmulator, **changes: Any) -> Settings:
        return settings_for(emulator, parse_out(self.out), state_dir=self.state,
                            format=self.fmt, granularity=Granularity.HOUR,
                            iceberg_catalog=self.catalog, **changes)

    def iceberg(self, data_type: str) -> Any:
        """The type's Iceberg table, through the catalog as a reader opens it."""
        if self.catalog:  # as configured now (pyiceberg reads its variables at import)
            from pyiceberg.catalog import load_catalog
            from pyiceberg.utils.config import Config

            catalog = load_catalog(self.catalog,
                                   **Config().get_catalog_config(self.catalog) or {})
        else:
            from pyiceberg.catalog.sql import SqlCatalog

            catalog = SqlCatalog("backfill", uri=f"sqlite:///{self.out}/catalog.db")
        try:
            return catalog.load_table(f"growingio.{data_type}")
        finally:
            catalog.close()  # the table reads its files without it

    def snapshots(self, data_type: str) -> list[dict[str, str]]:
        """The summaries of the main branch's snapshots, the oldest first."""
        from pyiceberg.table.snapshots import ancestors_of

        table = self.iceberg(data_type)
        found = ancestors_of(table.current_snapshot(), table.metadata)
        return [dict(s.summary.additional_properties) for s in found][::-1]

    def options(self) -> dict[str, str]:
        assert self.bucket is not None
        return {"AWS_ENDPOINT_URL": self.bucket.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": S3_ENV["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": S3_ENV["AWS_SECRET_ACCESS_KEY"]}

    def delta(self, data_type: str) -> Any:
        if self.bucket is None:
            return deltalake.DeltaTable(f"{self.out}/{data_type}")
        return deltalake.DeltaTable(f"{self.out}/{data_type}", storage_options=self.options())

    def rows(self, data_type: str, key: Key) -> list[dict[str, Any]]:
        """The rows of one unit, as a reader gets them, in file order."""
        dt, hour = key.start.strftime("%Y-%m-%d"), key.start.strftime("%H")
        if self.fmt in ("delta", "iceberg"):
            table = self.delta(data_type).to_pyarrow_table(
                filters=[("dt", "=", dt), ("hour", "=", hour)]) if self.fmt == "delta" else (
                self.iceberg(data_type).scan(row_filter=f"dt = '{dt}' AND hour = '{hour}'")
                .to_arrow())
            return [{k: v for k, v in r.items() if k not in ("dt", "hour")}
                    for r in table.to_pylist()]
        import pyarrow.parquet as pq

        files = self.files(f"{data_type}/dt={dt}/hour={hour}/")
        return [row for name in sorted(files) if name.endswith(".parquet")
                for row in pq.read_table(pa.BufferReader(files[name])).to_pylist()]

    def files(self, prefix: str = "") -> dict[str, bytes]:
        if self.bucket is not None:
            return {k.removeprefix(f"raw/{prefix}"): v
                    for k, v in self.bucket.files("raw/").items() if k.startswith(prefix)}
        root = Path(self.out) / prefix
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file()} if root.exists() else {}


@pytest.fixture(params=["parquet local", "delta local", "iceberg local", "parquet s3",
                        "delta s3", "iceberg s3"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Table:
    fmt, where = request.param.split()
    if fmt == "iceberg":
        pytest.importorskip("pyiceberg")
    if where == "local":
        return Table(fmt, str(tmp_path / "lake"), tmp_path / "lake" / ".backfill", None)
    # Its own process: delta-rs holds the GIL while it opens a table.
    bucket: Bucket = request.getfixturevalue("process_bucket")
    if fmt != "iceberg":
        return Table(fmt, bucket.url(), tmp_path / "cache", bucket)
    # A bucket's Iceberg tables need a catalog every runner shares: here a SQL one,
    # named and configured only as pyiceberg reads it, from PYICEBERG_CATALOG__ variables.
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for name, value in iceberg_catalog_env("lake", tmp_path / "catalog.db", bucket).items():
        monkeypatch.setenv(name, value)
    return Table(fmt, bucket.url(), tmp_path / "cache", bucket, catalog="lake")


def iceberg_catalog_env(name: str, database: Path, bucket: Bucket | None) -> dict[str, str]:
    """A SQL catalog ``name`` on SQLite, as ``PYICEBERG_CATALOG__`` variables; with the
    S3 server's endpoint and keys when its warehouse is a bucket."""
    prefix = f"PYICEBERG_CATALOG__{name.upper()}__"
    env = {f"{prefix}URI": f"sqlite:///{database}"}
    if bucket is not None:
        env.update({f"{prefix}WAREHOUSE": bucket.url(), f"{prefix}S3__ENDPOINT": bucket.endpoint,
                    f"{prefix}S3__REGION": "us-east-1",
                    f"{prefix}S3__ACCESS_KEY_ID": S3_ENV["AWS_ACCESS_KEY_ID"],
                    f"{prefix}S3__SECRET_ACCESS_KEY": S3_ENV["AWS_SECRET_ACCESS_KEY"]})
    return env


def expected(emulator: RunningEmulator, data_type: str, key: Key) -> list[dict[str, Any]]:
    """What the emulator generated for one unit, typed as the schema says."""
    columns, rows = emulator.state.data.rows(DEMO_CREDENTIALS.ai, data_type, key)
    documented = COLUMNS[data_type]
    typed = []
    for values in rows:
        row: dict[str, Any] = dict.fromkeys(documented)
        for column, value in zip(columns, values, strict=True):
            kind = column_kind(column) if column in documented else "text"
            if kind == "text":
                row[column] = value
            elif value == "":
                row[column] = None
            elif kind == "timestamp":
                row[column] = datetime.fromtimestamp(int(value) / 1000, UTC)
            else:
                row[column] = int(value) if kind == "integer" else float(value)
        typed.append(row)
    return typed


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps({k: v.timestamp() if isinstance(v, datetime) else v
                       for k, v in sorted(row.items())}, default=str)


def _same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """The same rows, each exactly (a table promises no order within a partition)."""
    assert len(got) == len(want)
    columns = set(want[0]) if want else set()
    got = sorted(got, key=lambda r: _canonical({k: r.get(k) for k in columns}))
    want = sorted(want, key=_canonical)
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        for column, value in w.items():
            actual = g.get(column)
            if isinstance(value, datetime):
                assert actual is not None and actual.timestamp() == value.timestamp(), (
                    index, column)
            else:
                assert actual == value, (index, column, value, actual)


# --- exact typed rows ------------------------------------------------------------------

async def test_every_type_lands_as_exactly_the_rows_generated(emulator: RunningEmulator,
                                                              table: Table) -> None:
    keys = hours_ago(7, 6)
    summary = await run(table.settings(emulator, types=V2_TYPES), keys)
    assert summary.exit_code == 0, summary.problems
    for key in keys:
        for data_type in V2_TYPES:
            _same(table.rows(data_type, key), expected(emulator, data_type, key))
    if table.fmt == "parquet":
        files = table.files()
        assert not [n for n in files if n.endswith(".csv.gz")]  # no raw part left
        folder = f"visit/dt={keys[0].start:%Y-%m-%d}/hour={keys[0].start:%H}"
        manifest = json.loads(files[f"{folder}/_manifest.json"])
        assert manifest["format"] == "parquet"
        assert manifest["rows"] == len(expected(emulator, "visit", keys[0]))
        sources = {p.md5 for h in keys[0].hours() for p in emulator.state.data.parts(
            DEMO_CREDENTIALS.ai, "visit", h)}
        assert {p["source_md5"] for p in manifest["parts"]} == sources
        assert all(p["rows"] >= 0 and p["md5"] and p["size"] for p in manifest["parts"])


async def test_a_type_folder_reads_as_one_table_in_duckdb_and_polars(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    import duckdb
    import polars as pl

    keys = hours_ago(7, 5)
    for fmt in ("parquet", "delta"):
        out = tmp_path / fmt
        settings = settings_for(emulator, out, format=fmt, granularity=Granularity.HOUR,
                                types=("custom_event",))
        assert (await run(settings, keys)).exit_code == 0
        want = sum(len(expected(emulator, "custom_event", k)) for k in keys)
        if fmt == "parquet":
            connection = duckdb.connect()
            try:
                got = connection.sql(f"SELECT count(*), count(DISTINCT typeof(time)) FROM "
                                     f"read_parquet('{out}/custom_event/**/*.parquet', "
                                     "hive_partitioning = true)").fetchone()
            finally:
                connection.close()
            assert got == (want, 1)
            frame = pl.read_parquet(f"{out}/custom_event/**/*.parquet", hive_partitioning=True)
        else:
            frame = pl.read_delta(str(out / "custom_event"))
        assert frame.height == want
        assert frame.schema["eventNumber"] == pl.Float64
        assert frame.schema["time"] == pl.Datetime("ms", "UTC") or str(
            frame.schema["time"]).startswith("Datetime")


# --- commits -----------------------------------------------------------------------------

async def test_delta_commits_once_per_unit_a_rerun_adds_none_and_force_replaces_its_own(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    keys = hours_ago(8, 6)
    settings = settings_for(emulator, tmp_path / "lake", format="delta",
                            granularity=Granularity.HOUR, types=("visit",))
    assert (await run(settings, keys)).exit_code == 0
    table = deltalake.DeltaTable(str(tmp_path / "lake" / "visit"))
    # Version 0 creates the table with the type's documented columns; then one commit per
    # unit.
    *commits, created = table.history()  # the newest first
    assert created["operation"] == "CREATE TABLE" and "backfill.unit" not in created
    assert len(commits) == len(keys)
    units = [c["backfill.unit"] for c in commits]
    assert sorted(units) == sorted(f"{k.name} visit" for k in keys)
    assert (await run(settings, keys)).exit_code == 0
    assert len(deltalake.DeltaTable(str(tmp_path / "lake" / "visit")).history()) == \
        len(keys) + 1  # a rerun adds none
    before = _partition_files(tmp_path / "lake" / "visit")
    assert (await run(settings, keys[1:2], force=True)).exit_code == 0
    table = deltalake.DeltaTable(str(tmp_path / "lake" / "visit"))
    assert len(table.history()) == len(keys) + 2  # --force: one more, for its one unit
    after = _partition_files(tmp_path / "lake" / "visit")
    forced = f"dt={keys[1].start:%Y-%m-%d}/hour={keys[1].start:%H}"
    assert {k: v for k, v in before.items() if forced not in k} == {
        k: v for k, v in after.items() if forced not in k}  # no other partition touched
    assert [k for k in after if forced in k] != [k for k in before if forced in k]
    for key in keys:
        _same(Table("delta", str(tmp_path / "lake"), tmp_path, None).rows("visit", key),
              expected(emulator, "visit", key))


def _partition_files(root: Path) -> dict[str, int]:
    table = deltalake.DeltaTable(str(root))
    actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    return dict(zip(actions["path"], actions["size_bytes"], strict=True))


async def test_a_fresh_runner_reads_the_table_and_makes_no_call(emulator: RunningEmulator,
                                                                table: Table) -> None:
    keys = hours_ago(8, 6)
    settings = table.settings(emulator, types=("visit", "page"))
    assert (await run(settings, keys)).exit_code == 0
    shutil.rmtree(table.state)
    before = emulator.state.stats()["calls"]
    again = await run(settings, keys)
    assert again.exit_code == 0 and again.parts == 0
    assert emulator.state.stats()["calls"] == before  # not an export call, not a token


# --- faults, drift, kill -9 ------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["api_5xx", "reset", "truncate", "corrupt", "wrong_object"])
async def test_faults_still_give_exact_tables(fault: str, data_dir: Path,
                                              tmp_path: Path) -> None:
    keys = hours_ago(7, 6)
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.0, keep_rows=True,
                            bytes_per_hour=24 * 1024, part_size=8 * 1024,
                            faults=Faults(seed=3, **{fault: 0.3}))
    async with serve(config) as emulator:
        with_iceberg = importlib.util.find_spec("pyiceberg") is not None
        for fmt in ("parquet", "delta", "iceberg")[:3 if with_iceberg else 2]:
            out = tmp_path / fmt
            settings = settings_for(emulator, out, format=fmt, granularity=Granularity.HOUR,
                                    types=("visit", "page"), retries=20)
            assert (await run(settings, keys)).exit_code == 0
            for key in keys:
                for data_type in ("visit", "page"):
                    _same(Table(fmt, str(out), tmp_path, None).rows(data_type, key),
                          expected(emulator, data_type, key))


async def test_schema_drift_keeps_the_new_column_and_nulls_the_missing_one(
        emulator: RunningEmulator, table: Table) -> None:
    drifting = Key.parse(_drifting())
    keys = [drifting, Key(drifting.start.replace(hour=(drifting.start.hour + 1) % 24)
                          if drifting.start.hour < 23 else drifting.start, Granularity.HOUR)]
    keys = sorted(set(keys))
    assert (await run(table.settings(emulator, types=("visit",)), keys)).exit_code == 0
    rows = table.rows("visit", drifting)
    want = expected(emulator, "visit", drifting)
    assert rows and all(r["extraColumn"] is not None for r in rows)  # kept, as text
    missing = COLUMNS["visit"][1]
    assert all(r[missing] is None for r in rows)  # documented, absent: null
    _same(rows, want)
    if table.fmt == "delta":
        assert "extraColumn" in table.delta("visit").schema().to_arrow().names
    if table.fmt == "iceberg":  # added by the unit that brought it, in its one snapshot
        schema = table.iceberg("visit").schema()
        assert str(schema.find_field("extraColumn").field_type) == "string"
        assert len(table.snapshots("visit")) == len(keys)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_kill_9_at_any_moment_then_rerun_leaves_every_row_exactly_once(
        fmt: str, data_dir: Path, tmp_path: Path) -> None:
    config = EmulatorConfig(data_dir=data_dir, job_seconds=0.2, keep_rows=True,
                            bytes_per_hour=24 * 1024, part_size=4 * 1024,
                            faults=Faults(slow_first_byte=0.3, slow_seconds=0.1))
    async with serve(config) as emulator:
        env = env_for(emulator.url)
        keys = hours_ago(12, 5)  # once: a run across an hour's turn keeps the same keys
        args = ["run", "--from", keys[0].start.strftime("%Y-%m-%dT%H"), "--to",
                keys[-1].start.strftime("%Y-%m-%dT%H"), "--types", "visit",
                "--format", fmt, "--out", "lake", "--quiet"]
        rng = random.Random(fmt)
        for _ in range(2):
            process = await start(args, env, tmp_path)
            await anyio.sleep(rng.uniform(1.0, 3.0))
            process.send_signal(signal.SIGKILL)
            await wait_for(process, 20)
        code, _, err = await cli(args, env, tmp_path)
        assert code == 0, err
        out = Table(fmt, str(tmp_path / "lake"), tmp_path, None)
        for key in keys:
            _same(out.rows("visit", key), expected(emulator, "visit", key))
        if fmt == "delta":
            committed = [c["backfill.unit"] for c in out.delta("visit").history()
                         if "backfill.unit" in c]
            assert sorted(set(committed)) == sorted(f"{k.name} visit" for k in keys)
        if fmt == "iceberg":
            committed = [s["backfill.unit"] for s in out.snapshots("visit")]
            assert sorted(set(committed)) == sorted(
                f"visit/dt={k.start:%Y-%m-%d}/hour={k.start:%H}" for k in keys)


# --- verify, status, refusals ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
async def test_verify_finds_a_damaged_table_file_and_run_repairs_it(
        emulator: RunningEmulator, tmp_path: Path, fmt: str) -> None:
    env = env_for(emulator.url)
    keys = hours_ago(7, 6)  # once: a run across an hour's turn keeps the same keys
    first, last = (k.start.strftime("%Y-%m-%dT%H") for k in (keys[0], keys[-1]))
    args = ["--from", first, "--to", last, "--types", "visit", "--format", fmt, "--out", "lake"]
    assert (await cli(["run", *args], env, tmp_path))[0] == 0
    code, out, _ = await cli(["verify", "--out", "lake", "--format", fmt, "--json"], env,
                             tmp_path)
    assert code == 0 and json.loads(out)["checked"] == 2
    data = sorted((tmp_path / "lake" / "visit").rglob("*.parquet"))
    data[0].write_bytes(data[0].read_bytes()[:-10])  # a table file cut short
    code, out, _ = await cli(["verify", "--out", "lake", "--format", fmt, "--json"], env,
                             tmp_path)
    report = json.loads(out)
    assert code == 1 and len(report["damaged"]) == 1
    code, _, err = await cli(["run", *args], env, tmp_path)
    assert code == 0, err
    table = Table(fmt, str(tmp_path / "lake"), tmp_path, None)
    for key in keys:
        _same(table.rows("visit", key), expected(emulator, "visit", key))
    code, out, _ = await cli(["status", "--out", "lake", "--format", fmt, "--json"], env,
                             tmp_path)
    assert json.loads(out)["keys"]["done"] == 2


async def test_typed_output_refuses_v1_and_says_how_to_get_the_extra(tmp_path: Path) -> None:
    env = env_for("http://127.0.0.1:9")
    code, _, err = await cli(["run", "--from", "-3d", "--to", "-3d", "--api", "v1",
                              "--format", "delta"], env, tmp_path)
    assert code == 2 and "--format delta needs the v2 API" in err and err.count("\n") == 1
    blocker = tmp_path / "no-tables"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['pyarrow'] = None\nsys.modules['deltalake'] = None\n")
    code, _, err = await cli(["run", "--from", "-3d", "--to", "-3d", "--format", "parquet"],
                             {**env, "PYTHONPATH": str(blocker)}, tmp_path)
    assert code == 2
    assert err.strip() == ("backfill: error: --format parquet needs the tables extra: "
                           f"{install_line('tables')}")
    assert not (tmp_path / "data").exists()  # a refused command creates nothing


def test_a_value_a_typed_column_cannot_hold_fails_with_its_row_never_its_content(
        tmp_path: Path) -> None:
    from backfill.destination.tables.convert import UnitSchema, batches

    part = tmp_path / "part-00000.csv.gz"
    with gzip.open(part, "wt", newline="") as f:
        f.write("sendTime,actionRequestId,ruleId\n1763600000000,a,b\nsecret-junk,c,d\n")
    with pytest.raises(IntegrityError) as caught:
        list(batches(part, UnitSchema("action_tag").arrow(), shown="the part"))
    assert str(caught.value) == ("the part: row 2 has a sendTime that is not an "
                                 "epoch-milliseconds time")
    assert "secret-junk" not in str(caught.value)


def test_a_field_longer_than_a_megabyte_and_every_escape_read_exactly(tmp_path: Path) -> None:
    import csv

    from backfill.destination.tables.convert import UnitSchema, batches

    long = "x" * (3 << 20)
    variable = json.dumps({"城市": '北京 "旗舰店"', "a": "b,c\nd", "path": "x\\y"},
                          ensure_ascii=False)
    part = tmp_path / "part-00000.csv.gz"
    with gzip.open(part, "wt", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quotechar='"', escapechar="\\", doublequote=False,
                            lineterminator="\n")  # GrowingIO's dialect, as the emulator's
        writer.writerows([["visitUserId", "time", "sendTime", "visitorVariable"],
                          ["u1", "1763600000000", "1763600000001", long],
                          ["u2", "1763600000002", "", variable],
                          ["NULL", "1763600000003", "1763600000004", 'two\nlines "q" \\']])
    rows = [r for b in batches(part, UnitSchema("vstr").arrow(), shown="p")
            for r in b.to_pylist()]
    assert rows[0]["visitorVariable"] == long
    # Epoch milliseconds, kept in ms (Parquet) or µs (Delta, Iceberg): the same instant.
    for unit in ("ms", "us"):
        typed = next(batches(part, UnitSchema("vstr").arrow(time_unit=unit), shown="p"))
        assert typed.schema.field("time").type == pa.timestamp(unit, tz="UTC")
        assert typed.column("time")[0].as_py() == datetime.fromtimestamp(1763600000, UTC)
    assert rows[1]["sendTime"] is None and rows[1]["visitorVariable"] == variable
    assert rows[2]["visitUserId"] == "NULL"  # text, not a null
    assert rows[2]["visitorVariable"] == 'two\nlines "q" \\'


async def test_the_readme_tables_command_runs(emulator: RunningEmulator, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Tables: Parquet, Delta Lake and Iceberg", 1)[1].split(
        "\n### ", 1)[0]
    line = next(x for x in section.splitlines() if x.startswith("backfill run "))
    import shlex

    args = shlex.split(line, comments=True)[1:]
    code, _, err = await cli(args, env_for(emulator.url), tmp_path)
    assert code in (0, 4), err
    assert (tmp_path / "lake" / "visit" / "_delta_log").exists()
    # The section's Python reads it back, as written, with only what the extra installs.
    import re
    import sys

    snippet = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(snippet) == 1
    blocker = tmp_path / "only-the-extra"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(  # as if not installed: ModuleNotFoundError
        "import sys\nclass Absent:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('polars', 'duckdb', 'pandas'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Absent())\n")
    with anyio.fail_after(120):
        done = await anyio.run_process([sys.executable, "-c", snippet[0]], cwd=tmp_path,
                                       check=False, env={**os.environ,
                                                         "PYTHONPATH": str(blocker)})
    assert done.returncode == 0, done.stderr.decode()
    assert "count_all" in done.stdout.decode()
    # The Iceberg lines: its run into a folder of its own, then its read, as written.
    pytest.importorskip("pyiceberg")
    iceberg = tmp_path / "iceberg"
    iceberg.mkdir()
    line = next(x for x in section.splitlines()
                if x.startswith("backfill run ") and "--format iceberg --out lake" in x)
    code, _, err = await cli(shlex.split(line, comments=True)[1:], env_for(emulator.url),
                             iceberg)
    assert code in (0, 4), err
    assert (iceberg / "lake" / "catalog.db").exists()
    read = next(x for x in section.splitlines() if x.startswith("python3 -c "))
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [sys.executable, *shlex.split(read)[1:]], cwd=iceberg, check=False,
            env={**os.environ, "PYTHONPATH": str(blocker)})
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip().isdigit()



def _commit_at_once(tables: Any, root: Path, hour: str, extra: bool, barrier: Any) -> int:
    """One unit's commit (prepare, its file, commit), started with another's; how many
    times it lost a race and was prepared again."""
    import pyarrow.parquet as pq

    from backfill.destination.tables.commits import Conflict, Written
    from backfill.destination.tables.convert import UnitSchema

    unit = UnitSchema("visit", ("extraColumn",) if extra else ())
    folder, partitions = f"visit/dt=2026-11-20/hour={hour}", {"dt": "2026-11-20", "hour": hour}
    barrier.wait()
    for retried in range(8):
        try:
            prepared = tables.prepare("visit", unit, partitions)
            row = {name: ["e" if name == "extraColumn" else None] for name in
                   prepared.schema.names}
            path = root / folder / f"part-{retried}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(row, schema=prepared.schema), path)
            written = Written(path.name, path.stat().st_size, 1, "", tables.stats(path))
            tables.commit(prepared, "visit", folder, partitions, [written],
                          {"key": f"20261120{hour}", "data_type": "visit"})
            return retried
        except Conflict:
            continue
    raise AssertionError(f"{hour}: not committed in 8 attempts")


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "two processes"])
def test_units_that_create_a_table_at_once_keep_every_column(tmp_path: Path,
                                                             processes: int) -> None:
    """Two units of one type commit at the same moment to a table that does not exist yet,
    one with a column the other lacks (drift): the table keeps the column and both units'
    rows, whether the two run in one process (one lock) or in two (a lock each)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from deltalake import DeltaTable

    from backfill.destination.tables.delta import DeltaTables

    for round_ in range(12):
        root = tmp_path / f"lake-{round_}"
        uri = str(root / "visit")
        tables = [DeltaTables(str(root), dict, {}) for _ in range(processes)]
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            units = [pool.submit(_commit_at_once, tables[0], root, "01", True, barrier),
                     pool.submit(_commit_at_once, tables[-1], root, "02", False, barrier)]
            for unit in units:
                unit.result(timeout=120)
        table = DeltaTable(uri)
        assert "extraColumn" in table.schema().to_arrow().names, f"round {round_}"
        hours = sorted(r["hour"] for r in table.to_pyarrow_table().to_pylist())
        assert hours == ["01", "02"], f"round {round_}"


# --- iceberg ---------------------------------------------------------------------------------

async def test_iceberg_snapshot_per_unit_a_rerun_adds_none_and_force_replaces_its_own(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    pytest.importorskip("pyiceberg")
    keys = hours_ago(8, 6)
    out = Table("iceberg", str(tmp_path / "lake"), tmp_path / "lake" / ".backfill", None)
    settings = out.settings(emulator, types=("visit",))
    assert (await run(settings, keys)).exit_code == 0
    table = out.iceberg("visit")
    assert table.metadata.format_version == 2
    assert [f.name for f in table.spec().fields] == ["dt", "hour"]
    assert str(table.schema().find_field("time").field_type) == "timestamptz"
    assert json.loads(table.properties["backfill.output"])["format"] == "iceberg"
    snapshots = out.snapshots("visit")
    assert sorted(s["backfill.unit"] for s in snapshots) == sorted(
        f"visit/dt={k.start:%Y-%m-%d}/hour={k.start:%H}" for k in keys)  # one per unit
    manifest = json.loads(snapshots[0]["backfill.manifest"])
    sources = {p.md5 for k in keys for p in emulator.state.data.parts(
        DEMO_CREDENTIALS.ai, "visit", k)}
    assert {p["md5"] for p in manifest["parts"]} <= sources
    assert "?" not in json.dumps(manifest)  # no signed query in the summary
    assert (await run(settings, keys)).exit_code == 0
    assert len(out.snapshots("visit")) == len(keys)  # a rerun adds none
    before = {t.file.file_path for t in out.iceberg("visit").scan().plan_files()}
    assert (await run(settings, keys[1:2], force=True)).exit_code == 0
    assert len(out.snapshots("visit")) == len(keys) + 1  # --force: one, for its one unit
    after = {t.file.file_path for t in out.iceberg("visit").scan().plan_files()}
    forced = f"dt={keys[1].start:%Y-%m-%d}/hour={keys[1].start:%H}/"
    assert {f for f in before if forced not in f} == {f for f in after if forced not in f}
    assert {f for f in after if forced in f} and not (
        {f for f in after if forced in f} & {f for f in before if forced in f})
    for key in keys:
        _same(out.rows("visit", key), expected(emulator, "visit", key))


def _duckdb_with_iceberg() -> Any:
    """DuckDB with its iceberg and avro extensions, from the test extra's wheels: loaded
    from disk with autoinstall off, nothing downloaded."""
    duckdb = pytest.importorskip("duckdb")
    try:
        import duckdb_ext  # type: ignore[import-not-found]  # from duckdb-ext-iceberg
    except ImportError:
        pytest.skip("the iceberg extension wheel (duckdb-ext-iceberg) is not installed")
    folder = Path(next(iter(duckdb_ext.__path__))) / "extensions"
    if not list(folder.glob(f"v{duckdb.__version__}/*/iceberg.duckdb_extension")):
        pytest.skip(f"no iceberg extension for DuckDB {duckdb.__version__} here")
    connection = duckdb.connect(config={"autoinstall_known_extensions": "false"})
    connection.execute(f"SET extension_directory = '{folder}'")
    connection.execute("LOAD avro")
    connection.execute("LOAD iceberg")
    return connection


async def test_an_iceberg_folder_reads_in_duckdb_and_pyiceberg_as_generated(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    pytest.importorskip("pyiceberg")
    connection = _duckdb_with_iceberg()
    keys = hours_ago(7, 5)
    out = Table("iceberg", str(tmp_path / "lake"), tmp_path / "lake" / ".backfill", None)
    assert (await run(out.settings(emulator, types=("custom_event",)), keys)).exit_code == 0
    want = sum(len(expected(emulator, "custom_event", k)) for k in keys)
    location = out.iceberg("custom_event").metadata_location
    try:
        got = connection.sql(f"SELECT count(*), count(DISTINCT dt || hour), "
                             f"any_value(typeof(time)) FROM iceberg_scan('{location}')"
                             ).fetchone()
    finally:
        connection.close()
    assert got == (want, len(keys), "TIMESTAMP WITH TIME ZONE")
    assert out.iceberg("custom_event").scan().to_arrow().num_rows == want


async def test_two_shards_committing_to_one_iceberg_table_lose_nothing(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    from tests.e2e.test_shard import _console_token

    pytest.importorskip("pyiceberg")
    env = env_for(emulator.url, GIO_SECRET="", GIO_TOKEN=await _console_token(emulator))
    keys = hours_ago(12, 5)
    args = ["run", "--from", f"{keys[0].start:%Y-%m-%dT%H}", "--to",
            f"{keys[-1].start:%Y-%m-%dT%H}", "--types", "visit,page", "--format", "iceberg",
            "--out", "lake", "--quiet"]
    results: list[tuple[int, str, str]] = []

    async def shard(k: int) -> None:
        results.append(await cli([*args, "--shard", f"{k}/2"], env, tmp_path))

    async with anyio.create_task_group() as group:
        for k in (1, 2):
            group.start_soon(shard, k)
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    out = Table("iceberg", str(tmp_path / "lake"), tmp_path, None)
    for data_type in ("visit", "page"):
        assert len(out.snapshots(data_type)) == len(keys)  # a commit per unit, none lost
        for key in keys:
            _same(out.rows(data_type, key), expected(emulator, data_type, key))


async def test_iceberg_in_a_bucket_with_a_catalog_named_in_the_config_file(
        emulator: RunningEmulator, process_bucket: Bucket, tmp_path: Path) -> None:
    """The README's way for a bucket: [iceberg] catalog in the config file, the catalog
    defined by PYICEBERG_CATALOG__ variables; a fresh runner reads what is done from the
    catalog alone. Without a catalog, one line and exit 2, nothing written."""
    pytest.importorskip("pyiceberg")
    keys = hours_ago(8, 7)
    env = {**env_for(emulator.url), **S3_ENV, "AWS_ENDPOINT_URL": process_bucket.endpoint,
           "XDG_STATE_HOME": str(tmp_path / "runner-1")}
    args = ["run", "--from", f"{keys[0].start:%Y-%m-%dT%H}", "--to",
            f"{keys[-1].start:%Y-%m-%dT%H}", "--types", "visit", "--format", "iceberg",
            "--out", process_bucket.url()]
    code, _, err = await cli(args, env, tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs a catalog" in err and "[iceberg] catalog" in err
    assert not process_bucket.files()
    (tmp_path / "backfill.toml").write_text('[iceberg]\ncatalog = "lake"\n')
    env.update(iceberg_catalog_env("lake", tmp_path / "catalog.db", process_bucket))
    code, _, err = await cli(args, env, tmp_path)
    assert code == 0, err
    table = Table("iceberg", process_bucket.url(), tmp_path, process_bucket, catalog="lake")
    for name, value in iceberg_catalog_env("lake", tmp_path / "catalog.db",
                                           process_bucket).items():
        os.environ[name] = value
    try:
        for key in keys:
            _same(table.rows("visit", key), expected(emulator, "visit", key))
    finally:
        for name in iceberg_catalog_env("lake", tmp_path / "catalog.db", process_bucket):
            os.environ.pop(name, None)
    fresh = {**env, "XDG_STATE_HOME": str(tmp_path / "runner-2")}
    before = emulator.state.stats()["calls"]
    code, out, err = await cli([*args, "--json"], fresh, tmp_path)
    assert code == 0, err
    assert emulator.state.stats()["calls"] == before  # the catalog said: all done
    code, out, err = await cli(["status", "--out", process_bucket.url(), "--json"], fresh,
                               tmp_path)
    assert code == 0 and json.loads(out)["keys"]["done"] == len(keys), err


async def test_read_only_commands_create_no_catalog_and_a_missing_one_is_one_line(
        tmp_path: Path) -> None:
    pytest.importorskip("pyiceberg")
    env = env_for("http://127.0.0.1:9")
    for command in ("status", "verify"):
        code, _, err = await cli([command, "--out", "lake", "--format", "iceberg"], env,
                                 tmp_path)
        assert code == 2 and "in lake" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "lake").exists()  # no catalog.db, no table, no state
    code, _, err = await cli(["run", "--from", "-8h", "--to", "-7h", "--out", "other",
                              "--format", "iceberg", "--iceberg-catalog", "nowhere"], env,
                             tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no Iceberg catalog 'nowhere'" in err and "PYICEBERG_CATALOG__NOWHERE__URI" in err
    assert not (tmp_path / "other").exists()  # refused before anything is written
