"""The Airflow extra, for real: DAGs run with ``dag.test()`` against the emulator, with a
SQLite metadata database in a temporary AIRFLOW_HOME (each run in a process of its own),
and the trigger alone."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from backfill.emulator import DEMO_CREDENTIALS, RunningEmulator
from backfill.keys import BEIJING, Key
from tests.e2e.test_dagster import emulator_in_a_thread
from tests.e2e.test_run import hours_ago
from tests.helpers import env_for

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("airflow") is None,
                                 reason="the airflow extra is not installed"),
              # One worker for them all: Airflow's imports and its database cost seconds.
              pytest.mark.xdist_group("airflow")]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "airflow-dags"

DAG = '''
import json, os, sys
import pendulum
from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable
from backfill.integrations.airflow import GrowingIOFetchOperator

with DAG({dag_id!r}, schedule=CronDataIntervalTimetable({cron!r}, timezone="Asia/Shanghai"),
         start_date=pendulum.datetime(2026, 1, 1, tz="Asia/Shanghai"), catchup=False,
         max_active_runs=1) as dag:
    GrowingIOFetchOperator(task_id="fetch", out=os.environ["OUT"], granularity="hour",
                           types="{{{{ 'visit' }}}}", options={options!r})

if __name__ == "__main__":
    run = dag.test(logical_date=pendulum.parse(sys.argv[1]))
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.models.asset import AssetEvent
    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id={dag_id!r}).order_by(
            TaskInstance.start_date.desc()).first()
        rendered = session.query(RenderedTaskInstanceFields).filter_by(
            dag_id={dag_id!r}).all()
        events = session.query(AssetEvent).filter_by(source_dag_id={dag_id!r}).all()
        print("RESULT " + json.dumps({{"state": str(run.state), "ti": str(ti.state),
                                      "rendered": [r.rendered_fields for r in rendered],
                                      "assets": [[e.uri, e.extra] for e in events]}},
                                     default=str))
'''


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("airflow-home")
    (home / "dags").mkdir()
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=_env(home),
                   check=True, capture_output=True, timeout=600)
    return home


def _env(home: Path, **changes: str) -> dict[str, str]:
    return {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"), **changes}


@pytest.fixture
def emulator(data_dir: Path) -> Iterator[RunningEmulator]:
    with emulator_in_a_thread(data_dir, job_seconds=0.0) as running:
        yield running


def _dag(home: Path, dag_id: str, *, cron: str = "0 * * * *", **options: Any) -> Path:
    path = home / "dags" / f"{dag_id}.py"
    path.write_text(textwrap.dedent(DAG.format(dag_id=dag_id, cron=cron, options={
        "poll_interval": "1s", "backoff": "0.1s", "max_backoff": "0.5s", **options})))
    return path


def _run(home: Path, dag: Path, logical: str, emulator: RunningEmulator, out: Path,
         **env: str) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, str(dag), logical], cwd=home,
        env=_env(home, OUT=str(out), **{**env_for(emulator.url), **env}),
        capture_output=True, text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, output[-4000:]
    return json.loads(line[len("RESULT "):]), output


def _hour(key: Key) -> str:
    """The logical date of the run whose interval is ``key``: the hour after it."""
    return (key.start.astimezone(BEIJING) + (key.end - key.start)).isoformat()


def _md5s(out: Path) -> Counter[str]:
    return Counter(hashlib.md5(p.read_bytes()).hexdigest() for p in out.rglob("part-*.csv.gz"))


def test_one_interval_is_fetched_exactly_and_a_rerun_makes_no_call(
        airflow_home: Path, emulator: RunningEmulator, tmp_path: Path) -> None:
    key = hours_ago(30, 30)[0]
    dag = _dag(airflow_home, "gio_exact")
    result, output = _run(airflow_home, dag, _hour(key), emulator, tmp_path / "lake")
    assert result["state"].endswith("success"), output[-4000:]
    source = Counter(p.md5 for p in emulator.state.data.parts(DEMO_CREDENTIALS.ai, "visit",
                                                               key))
    assert _md5s(tmp_path / "lake") == source  # that hour, and only it
    calls = emulator.state.stats()["calls"]
    result, output = _run(airflow_home, dag, _hour(key), emulator, tmp_path / "lake")
    assert result["state"].endswith("success"), output[-4000:]
    assert emulator.state.stats()["calls"] == calls  # not an export call, not a token
    assert DEMO_CREDENTIALS.secret not in output
    assert result["rendered"] and DEMO_CREDENTIALS.secret not in json.dumps(result["rendered"])
    assert all(r.get("types") == "visit" for r in result["rendered"])  # templated
    # The output is an asset, with what the partition holds (after the rerun too).
    assert result["assets"], output[-6000:]
    uri, extra = result["assets"][-1]
    assert uri == f"file://{tmp_path / 'lake'}"  # the types are templated: the folder
    assert extra["parts"] == sum(source.values()) and extra["export_calls"] == 0


def test_a_running_job_defers_and_then_succeeds(airflow_home: Path, data_dir: Path,
                                                tmp_path: Path) -> None:
    key = hours_ago(28, 28)[0]
    with emulator_in_a_thread(data_dir, job_seconds=4.0) as emulator:
        dag = _dag(airflow_home, "gio_defer", max_wait="120s")
        result, output = _run(airflow_home, dag, _hour(key), emulator, tmp_path / "lake")
        stats = emulator.state.stats()
    assert result["state"].endswith("success"), output[-4000:]
    assert "Pausing task as DEFERRED" in output and "running trigger in line" in output
    assert stats["answers"]["RUNNING"] >= 1 and stats["answers"]["FINISHED"] >= 1
    assert (tmp_path / "lake" / "visit" / key.start.strftime("dt=%Y-%m-%d/hour=%H/_SUCCESS")
            ).exists()
    assert DEMO_CREDENTIALS.secret not in output


@pytest.mark.slow
@pytest.mark.xdist_group("airflow-day")  # two minutes of waiting: beside the others
def test_a_day_of_hours_defers_and_comes_back_within_the_budget(
        airflow_home: Path, data_dir: Path, tmp_path: Path) -> None:
    """24 hourly keys in one task, their jobs RUNNING 20 s, the real 2 calls/s limit: the
    worker starts every job, its trigger waits one poll and asks each key once, the
    worker fetches. No 429 at either handover; every job started within about 15 s of the
    first call; about 3 export calls a key; done within 3 minutes."""
    day = hours_ago(48, 48)[0].start.astimezone(BEIJING).replace(hour=0)
    with emulator_in_a_thread(data_dir, job_seconds=20.0, rate_limit=2,
                              bytes_per_hour=2048, part_size=2048) as emulator:
        dag = _dag(airflow_home, "gio_day", cron="0 0 * * *", max_wait="10m",
                   poll_interval="30s")
        started = time.monotonic()
        result, output = _run(airflow_home, dag, (day + timedelta(days=1)).isoformat(),
                              emulator, tmp_path / "lake")
        took = time.monotonic() - started
        stats = emulator.state.stats()
        jobs = sorted(emulator.state.jobs.started().values())
    assert result["state"].endswith("success"), output[-4000:]
    assert "Pausing task as DEFERRED" in output
    assert stats["rate_limited"] == 0, output[-4000:]  # no 429, at either handover
    assert len(jobs) == 24 and jobs[-1] - jobs[0] <= 15.0
    assert stats["export_calls"] <= 3 * 24 + 3
    assert took < 180.0
    assert len(list((tmp_path / "lake" / "visit").rglob("_SUCCESS"))) == 24


def test_a_failing_key_fails_the_task_naming_the_key(airflow_home: Path,
                                                     emulator: RunningEmulator,
                                                     tmp_path: Path) -> None:
    key = hours_ago(24 * 20, 24 * 20)[0]  # beyond the 15-day retention
    dag = _dag(airflow_home, "gio_fail")
    result, output = _run(airflow_home, dag, _hour(key), emulator, tmp_path / "lake")
    assert result["state"].endswith("failed")
    assert f"GrowingIO keys {key.start:%Y-%m-%dT%H}: the whole range is older than the " \
        "15-day retention" in output
    assert DEMO_CREDENTIALS.secret not in output


def test_the_example_dags_load(airflow_home: Path) -> None:
    script = (f"from airflow.dag_processing.dagbag import DagBag\n"
              f"bag = DagBag(dag_folder={str(DOCS)!r})\n"
              "print('ERRORS', bag.import_errors)\nprint('DAGS', sorted(bag.dag_ids))\n")
    result = subprocess.run([sys.executable, "-c", script], env=_env(airflow_home),
                            capture_output=True, text=True, timeout=300, check=False)
    assert "ERRORS {}" in result.stdout, result.stdout + result.stderr
    assert "DAGS ['growingio_daily', 'growingio_hourly', 'growingio_range']" in result.stdout


def test_the_provider_is_listed(airflow_home: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "airflow", "providers", "list", "-o",
                             "json"], env=_env(airflow_home), capture_output=True, text=True,
                            timeout=300, check=False)
    listed = json.loads(result.stdout[result.stdout.index("["):])
    assert any(p["package_name"] == "growingio-backfill" for p in listed), result.stdout


# --- the trigger alone ------------------------------------------------------------------------

def _trigger(emulator_url: str, deadline: float, **changes: Any) -> Any:
    from backfill.integrations.airflow import GrowingIOReadyTrigger

    key = hours_ago(26, 26)[0].start.strftime("%Y-%m-%dT%H")
    arguments = {"first": key, "last": key, "granularity": "hour", "types": ["visit"],
                 "env_prefix": "GIO_", "project": None, "config": None,
                 "options": {"poll_interval": 0.5}, "deadline": deadline, **changes}
    return GrowingIOReadyTrigger(**arguments)


def test_the_trigger_round_trips_and_holds_no_secret(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    for name, value in env_for("http://127.0.0.1:9").items():
        monkeypatch.setenv(name, value)
    trigger = _trigger("http://127.0.0.1:9", 123.0)
    path, kwargs = trigger.serialize()
    module, _, name = path.rpartition(".")
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert json.loads(json.dumps(kwargs)) == kwargs  # plain JSON, as the database keeps it
    text = json.dumps(kwargs)
    assert DEMO_CREDENTIALS.secret not in text and "GIO_SECRET" not in text


@pytest.mark.parametrize("job_seconds", [1.0, 3600.0], ids=["ready", "deadline"])
def test_the_trigger_yields_one_event_and_blocks_nothing(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        job_seconds: float) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    with emulator_in_a_thread(data_dir, job_seconds=job_seconds) as emulator:
        for name, value in env_for(emulator.url).items():
            monkeypatch.setenv(name, value)
        # A job of 1 s is ready well within 20 s, even on a busy machine; one of an hour
        # is not, and the trigger ends at its own deadline.
        trigger = _trigger(emulator.url, time.time() + (20.0 if job_seconds < 10 else 4.0))

        async def events() -> list[Any]:
            loop = asyncio.get_running_loop()
            loop.set_debug(True)
            loop.slow_callback_duration = 0.2  # a blocking call would show as a slow step
            return [event async for event in trigger.run()]

        slow: list[str] = []

        class Catch:
            def write(self, text: str) -> None:
                if "Executing" in text and "took" in text:
                    slow.append(text)

        import logging

        handler = logging.StreamHandler(Catch())  # type: ignore[arg-type]
        logging.getLogger("asyncio").addHandler(handler)
        try:
            started = time.monotonic()
            got = anyio.run(events)
            elapsed = time.monotonic() - started
        finally:
            logging.getLogger("asyncio").removeHandler(handler)
        stats = emulator.state.stats()
    assert len(got) == 1
    status = got[0].payload["status"]
    assert status == ("ready" if job_seconds < 10 else "deadline")
    assert got[0].payload["first"] == trigger.first
    if status == "deadline":
        assert 3.0 <= elapsed < 30.0  # it ended at its own deadline
    assert stats["export_calls"] <= elapsed / 0.5 + 3  # at most one call per poll
    assert not slow, slow


def test_a_cancelled_trigger_holds_nothing(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    """A deferral that times out cancels its trigger: no token lock stays held, and the
    next run of the client id in that process mints at once."""
    from backfill.growingio.auth import MINTED, MintLock

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    with emulator_in_a_thread(data_dir, job_seconds=3600.0) as emulator:
        for name, value in env_for(emulator.url).items():
            monkeypatch.setenv(name, value)
        trigger = _trigger(emulator.url, time.time() + 600.0)

        async def cancelled_while_polling() -> None:
            with anyio.move_on_after(600) as scope:
                async for _ in trigger.run():
                    break
            assert not scope.cancelled_caught

        async def cancel_after_a_call() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(cancelled_while_polling)
                while emulator.state.stats()["export_calls"] < 1:  # noqa: ASYNC110 (another loop)
                    await anyio.sleep(0.05)
                group.cancel_scope.cancel()

        anyio.run(cancel_after_a_call)
    lock = MintLock(DEMO_CREDENTIALS.client_id)
    assert lock.holder() is None
    who = (DEMO_CREDENTIALS.client_id, DEMO_CREDENTIALS.secret, DEMO_CREDENTIALS.project_uid)
    assert MINTED.claim(who)  # nobody is left minting
    MINTED.done(who)


def test_a_trigger_that_meets_a_problem_says_it_in_one_event(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    with emulator_in_a_thread(data_dir) as emulator:
        for name, value in env_for(emulator.url, GIO_SECRET="not-the-secret").items():
            monkeypatch.setenv(name, value)
        trigger = _trigger(emulator.url, time.time() + 600.0)

        async def events() -> list[Any]:
            with anyio.fail_after(120):
                return [event async for event in trigger.run()]

        got = anyio.run(events)
    assert [e.payload["status"] for e in got] == ["error"]
    reason = got[0].payload["reason"]
    assert "token" in reason and "not-the-secret" not in reason


def _operator(**kwargs: Any) -> Any:
    from backfill.integrations.airflow import GrowingIOFetchOperator

    return GrowingIOFetchOperator(task_id="fetch", out="/tmp/never-written", **kwargs)


def test_the_keys_are_the_data_interval_in_beijing_time_or_the_partition(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from airflow.sdk.exceptions import AirflowException

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    hourly = _operator(granularity="hour")
    # 16:00 to 19:00 UTC is 00:00 to 03:00 the next day in Beijing: three hour keys.
    start, end = datetime(2026, 11, 30, 16, tzinfo=UTC), datetime(2026, 11, 30, 19, tzinfo=UTC)
    context = {"data_interval_start": start, "data_interval_end": end}
    assert hourly._range(context) == ("2026-12-01T00", "2026-12-01T02")
    daily = _operator(granularity="day")
    assert daily._range({"data_interval_start": start,
                         "data_interval_end": datetime(2026, 12, 2, 16, tzinfo=UTC)}) == (
        "2026-12-01", "2026-12-02")

    class Run:
        partition_key = "2026-11-02"

    assert daily._range({**context, "dag_run": Run()}) == ("2026-11-02", "2026-11-02")
    # An interval that is not whole Beijing days (UTC midnight) is refused, naming the fix.
    with pytest.raises(AirflowException, match=r"not whole Beijing days.*Asia/Shanghai"):
        daily._range({"data_interval_start": datetime(2026, 11, 30, tzinfo=UTC),
                      "data_interval_end": datetime(2026, 12, 1, tzinfo=UTC)})
    with pytest.raises(AirflowException, match="no data interval"):
        hourly._range({"data_interval_start": None, "data_interval_end": None})


def test_options_keep_airflows_names_apart(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowException

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    task = _operator(retries=2, downloads=3, options={"retries": 7, "max_wait": "1h"})
    assert task.retries == 2  # Airflow's
    assert task.options == {"downloads": 3, "retries": 7, "max_wait": "1h"}  # backfill's
    with pytest.raises(AirflowException, match="unknown backfill option 'dowloads'"):
        _operator(options={"dowloads": 3})


@pytest.mark.parametrize("runs", [1, 3])
def test_concurrent_runs_that_would_mint_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path, runs: int) -> None:
    import pendulum
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowException

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    for name, value in env_for("http://127.0.0.1:9").items():
        monkeypatch.setenv(name, value)
    with DAG(f"gio_minters_{runs}", schedule=None, max_active_runs=runs,
             start_date=pendulum.datetime(2026, 1, 1)):
        task = _operator()
    if runs == 1:
        task._check_token_rule()  # one run at a time may mint
    else:
        with pytest.raises(AirflowException, match=r"lets 3 runs go at once.*GIO_TOKEN"):
            task._check_token_rule()
        monkeypatch.setenv("GIO_TOKEN", "a-console-token")
        task._check_token_rule()  # a console token is shared, never minted


@pytest.mark.xdist_group("airflow-day")
def test_a_task_killed_mid_run_leaves_no_lock_and_the_retry_finishes(
        airflow_home: Path, data_dir: Path, tmp_path: Path) -> None:
    """SIGTERM, as Airflow's supervisor sends it to kill a task, while the run polls on a
    worker (deferrable=False): the run stops cleanly (its own words, not a traceback, within
    the bound), the task fails, and the retry finishes the interval. (The locks are flocks:
    a process that is gone holds none, so their checks here only confirm it.)"""
    from backfill.growingio.auth import MintLock

    key = hours_ago(27, 27)[0]
    dag = _dag(airflow_home, "gio_killed", max_wait="1h")
    dag.write_text(dag.read_text().replace('options=', 'deferrable=False, options='))
    out = tmp_path / "lake"
    with emulator_in_a_thread(data_dir, job_seconds=3600.0) as emulator:
        env = _env(airflow_home, OUT=str(out), **env_for(emulator.url))
        process = subprocess.Popen([sys.executable, str(dag), _hour(key)], cwd=airflow_home,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        try:
            deadline = time.monotonic() + 300
            while emulator.state.stats()["answers"].get("RUNNING", 0) < 1:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            process.send_signal(15)
            output, _ = process.communicate(timeout=120)
        finally:
            process.kill()
        assert "interrupted by SIGTERM" in output, output[-4000:]
        assert "RESULT" in output and '"ti": "failed"' in output, output[-4000:]
        assert MintLock(DEMO_CREDENTIALS.client_id).holder() is None
        emulator.state.config.job_seconds = 0.0
        emulator.state.clock.advance(3601)
        result, output = _run(airflow_home, dag, _hour(key), emulator, out)
    assert result["state"].endswith("success"), output[-4000:]  # not refused as locked
    assert (out / "visit" / key.start.strftime("dt=%Y-%m-%d/hour=%H/_SUCCESS")).exists()
    assert DEMO_CREDENTIALS.secret not in output


def test_the_operator_names_its_datasets_as_the_command_lines_events(tmp_path: Path) -> None:
    """One naming for lineage: the operator's outlets (which the OpenLineage provider
    reports) are the outputs the command line's own events name."""
    from backfill.integrations.airflow import GrowingIOFetchOperator
    from backfill.observe import lineage

    for out in (str(tmp_path / "lake"), "s3://lake/gio"):
        operator = GrowingIOFetchOperator(task_id=f"fetch_{len(out)}", out=out,
                                          types="visit,page")
        assert [lineage.dataset(str(a.uri)) for a in operator.outlets] == [
            lineage.dataset(lineage.output_uri(out, t)) for t in ("visit", "page")]
