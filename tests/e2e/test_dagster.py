"""The Dagster extra: partitioned assets materialized in-process against the emulator."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from backfill.emulator import DEMO_CREDENTIALS, Credentials, EmulatorConfig, RunningEmulator
from backfill.emulator.server import serve
from backfill.keys import Key
from tests.e2e.test_run import hours_ago

dg = pytest.importorskip("dagster", reason="the dagster extra is not installed")
pytestmark = pytest.mark.xdist_group("dagster")  # one worker pays for Dagster's imports
TYPES = ["visit", "page"]
FAST = {"poll_interval": 0.2, "backoff": 0.05, "max_backoff": 0.2, "types": TYPES}


@contextmanager
def emulator_in_a_thread(data_dir: Path, **changes: Any) -> Iterator[RunningEmulator]:
    """The emulator on its own event loop: Dagster's runs are synchronous and run theirs."""
    config = EmulatorConfig(**{"data_dir": data_dir, "job_seconds": 0.2,
                               "bytes_per_hour": 8192, "part_size": 4096, **changes})
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
            serve(config)) as running:
        yield running


def use(monkeypatch: pytest.MonkeyPatch, prefix: str, url: str, creds: Credentials) -> None:
    for name, value in {"BASE_URL": url, "CLIENT_ID": creds.client_id, "SECRET": creds.secret,
                        "PROJECT_UID": creds.project_uid, "AI": creds.ai}.items():
        monkeypatch.setenv(prefix + name, value)


def partition(key: Key) -> str:
    return key.start.strftime("%Y-%m-%d-%H:00")


def md5s(out: Path) -> Counter[str]:
    return Counter(hashlib.md5(p.read_bytes()).hexdigest() for p in out.rglob("part-*.csv.gz"))


def source(emulator: RunningEmulator, keys: list[Key], creds: Credentials) -> Counter[str]:
    data = emulator.state.data
    return Counter(p.md5 for k in keys for t in TYPES for p in data.parts(creds.ai, t, k))


@pytest.fixture
def emulator(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    with emulator_in_a_thread(data_dir) as running:
        use(monkeypatch, "GIO_", running.url, DEMO_CREDENTIALS)
        yield running


@pytest.fixture
def instance() -> Iterator[Any]:
    """An ephemeral Dagster instance, closed (its temporary folder removed) at the end."""
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def asset(tmp_path: Path, **changes: Any) -> Any:
    from backfill.integrations.dagster import growingio_asset

    start = hours_ago(72, 72)[0].start.strftime("%Y-%m-%d")
    return growingio_asset("gio_raw", start=start, out=str(tmp_path / "lake"),
                           **{**FAST, **changes})


def test_one_partition_is_exactly_its_key(emulator: RunningEmulator, tmp_path: Path,
                                          instance: Any) -> None:
    key = hours_ago(30, 30)[0]
    result = dg.materialize([asset(tmp_path)], partition_key=partition(key),
                            instance=instance)
    assert result.success
    materialization = result.asset_materializations_for_node("gio_raw")[0]
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["parts"] > 0 and metadata["bytes"] > 0
    assert metadata["export_calls"] == emulator.state.stats()["export_calls"]
    assert metadata["destination"] == str(tmp_path / "lake")
    assert md5s(tmp_path / "lake") == source(emulator, [key], DEMO_CREDENTIALS)


def test_a_backfill_of_partitions_runs_once_over_the_range(emulator: RunningEmulator,
                                                           tmp_path: Path, instance: Any) -> None:
    keys = hours_ago(33, 30)
    result = dg.materialize(
        [asset(tmp_path)], instance=instance,
        tags={"dagster/asset_partition_range_start": partition(keys[0]),
              "dagster/asset_partition_range_end": partition(keys[-1])})
    assert result.success
    assert md5s(tmp_path / "lake") == source(emulator, keys, DEMO_CREDENTIALS)
    assert emulator.state.stats()["tokens_issued"] == 1  # one process, one token


def test_a_failed_partition_raises_its_problem_and_reexecution_fixes_it(
        emulator: RunningEmulator, tmp_path: Path, instance: Any) -> None:
    key = hours_ago(31, 31)[0]
    emulator.state.config.faults.update(job_error=1.0)
    gio = asset(tmp_path, error_retries=0)
    failed = dg.materialize([gio], partition_key=partition(key), raise_on_error=False,
                            instance=instance)
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert key.name in str(failure.event_specific_data)
    emulator.state.config.faults.update(job_error=0.0)
    again = dg.materialize([gio], partition_key=partition(key),
                           instance=instance)
    assert again.success
    assert md5s(tmp_path / "lake") == source(emulator, [key], DEMO_CREDENTIALS)


def test_two_projects_in_one_definitions(data_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, instance: Any) -> None:
    from backfill.integrations.dagster import growingio_asset

    beta = Credentials(client_id="beta-client", secret="beta-key", project_uid="betaUid",
                       ai="b2c3d4e5f6078901")
    key = hours_ago(30, 30)[0]
    start = hours_ago(72, 72)[0].start.strftime("%Y-%m-%d")
    with emulator_in_a_thread(data_dir) as acme_api, emulator_in_a_thread(
            data_dir, credentials=beta) as beta_api:
        use(monkeypatch, "ACME_GIO_", acme_api.url, DEMO_CREDENTIALS)
        use(monkeypatch, "BETA_GIO_", beta_api.url, beta)
        acme = growingio_asset("acme_raw", start=start, out=str(tmp_path / "acme"),
                               env_prefix="ACME_GIO_", **FAST)
        other = growingio_asset("beta_raw", start=start, out=str(tmp_path / "beta"),
                                env_prefix="BETA_GIO_", **FAST)
        defs = dg.Definitions(assets=[acme, other])
        dg.Definitions.validate_loadable(defs)
        assert {acme.op.pool, other.op.pool} == {"growingio_acme", "growingio_beta"}
        result = dg.materialize([acme, other], partition_key=partition(key),
                                instance=instance)
        assert result.success
        assert md5s(tmp_path / "acme") == source(acme_api, [key], DEMO_CREDENTIALS)
        assert md5s(tmp_path / "beta") == source(beta_api, [key], beta)
        assert acme_api.state.stats()["tokens_issued"] == 1
        assert beta_api.state.stats()["tokens_issued"] == 1


def test_the_readmes_definitions_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    page = (Path(__file__).resolve().parents[2] / "docs" / "scale-out.md").read_text()
    section = page.split("**Dagster**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code, "the Dagster example of docs/scale-out.md is gone"
    # No credentials where the definitions load: the pools are known all the same.
    for variable in ("ACME_GIO_CLIENT_ID", "BETA_GIO_CLIENT_ID", "GIO_CLIENT_ID"):
        monkeypatch.delenv(variable, raising=False)
    scope: dict[str, Any] = {}
    exec(code[1], scope)
    dg.Definitions.validate_loadable(scope["defs"])
    assert scope["acme"].op.pool == "growingio_acme"
    assert scope["beta"].op.pool == "growingio_beta"
    assert isinstance(scope["beta"].partitions_def, dg.DailyPartitionsDefinition)
    assert scope["acme"].partitions_def.timezone == "Asia/Shanghai"
    # Stale after one readiness lag plus one partition: the late hours' 60 min and an
    # hour; a day's 3 h and a day.
    windows = {name: next(iter(scope[name].specs)).freshness_policy.fail_window.to_timedelta()
               for name in ("acme", "beta")}
    assert windows == {"acme": timedelta(hours=2), "beta": timedelta(hours=27)}


def test_the_configs_projects_become_assets(data_dir: Path, tmp_path: Path, instance: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from backfill.integrations.dagster import growingio_assets

    config = tmp_path / "backfill.toml"
    config.write_text(
        'poll_interval = "0.2s"\nbackoff = "0.05s"\n'
        f'[[projects]]\nname = "acme"\nout = "{tmp_path / "acme"}"\ntypes = ["visit", "page"]\n')
    key = hours_ago(30, 30)[0]
    with emulator_in_a_thread(data_dir) as api:
        use(monkeypatch, "ACME_GIO_", api.url, DEMO_CREDENTIALS)
        (acme,) = growingio_assets(config, start=hours_ago(72, 72)[0].start.strftime("%Y-%m-%d"))
        assert acme.key.path == ["acme_raw"] and acme.op.pool == "growingio_acme"
        result = dg.materialize([acme], partition_key=partition(key), instance=instance)
        assert result.success
        assert md5s(tmp_path / "acme") == source(api, [key], DEMO_CREDENTIALS)


def test_a_rematerialization_with_nothing_to_fetch_reports_what_the_partition_holds(
        emulator: RunningEmulator, tmp_path: Path, instance: Any) -> None:
    key = hours_ago(30, 30)[0]
    gio = asset(tmp_path)
    first = dg.materialize([gio], partition_key=partition(key), instance=instance)
    again = dg.materialize([gio], partition_key=partition(key), instance=instance)
    assert first.success and again.success
    held = sum(md5s(tmp_path / "lake").values())

    def metadata(result: Any) -> dict[str, Any]:
        (event,) = result.get_asset_materialization_events()
        values = event.materialization.metadata
        return {k: v.value for k, v in values.items()}

    assert metadata(first)["parts"] == metadata(again)["parts"] == held > 0
    assert metadata(again)["bytes"] == metadata(first)["bytes"] > 0
    assert metadata(again)["fetched_parts"] == 0 and metadata(again)["export_calls"] == 0


def test_two_assets_of_one_client_id_in_one_process_share_one_token(
        emulator: RunningEmulator, tmp_path: Path, instance: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from backfill.integrations.dagster import growingio_asset

    start = hours_ago(72, 72)[0].start.strftime("%Y-%m-%d")
    use(monkeypatch, "OTHER_GIO_", emulator.url, DEMO_CREDENTIALS)  # the same client id
    one = growingio_asset("one_raw", start=start, out=str(tmp_path / "one"), pool="gio", **FAST)
    two = growingio_asset("two_raw", start=start, out=str(tmp_path / "two"), pool="gio",
                          env_prefix="OTHER_GIO_", **FAST)
    key = hours_ago(30, 30)[0]
    result = dg.materialize([one, two], partition_key=partition(key), instance=instance)
    assert result.success
    assert emulator.state.stats()["tokens_issued"] == 1  # neither revoked the other's
    assert one.op.pool == two.op.pool == "gio"
