"""A run reports itself, as a scheduler's monitoring reads it: the Prometheus textfile and
Pushgateway pushes (parsed back, against what the emulator counted and what the
destination holds), ``status --max-lag`` (no API call), and OpenLineage events at a
loopback receiver. The real CLI against the real emulator."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from backfill.emulator import DEMO_CREDENTIALS, EmulatorConfig, RunningEmulator, serve
from backfill.keys import Key
from tests.e2e.test_run import hours_ago
from tests.e2e.test_survive_process import start, started, wait_for
from tests.helpers import assert_no_secrets, cli, env_for, loopback

pytestmark = pytest.mark.anyio
parser = pytest.importorskip("prometheus_client.parser")

KEYS = hours_ago(9, 4)  # once: a run across an hour's turn keeps the same keys
GOOD, BAD = KEYS[:3], KEYS[4]  # KEYS[4] answers a captive portal's page, every time
AI = DEMO_CREDENTIALS.ai


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0, bytes_per_hour=4096,
                                    part_size=1024, unusable_keys=(BAD.name,))) as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A loopback HTTP server that records every request (method, path, body) and
    answers 200: a Pushgateway, an OpenLineage endpoint."""
    seen: list[tuple[str, str, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, await request.read()))
        return web.Response(status=200)

    async with loopback(record) as origin:
        yield origin, seen


def _range(first: Key, last: Key) -> list[str]:
    """The keys, of two types, into ``data``; a key that fails, fails fast."""
    return ["--from", first.start.strftime("%Y-%m-%dT%H"),
            "--to", last.start.strftime("%Y-%m-%dT%H"), "--types", "visit,page",
            "--out", "data", "--retries", "1", "--backoff", "0.1s"]


def _metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text, by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in parser.text_string_to_metric_families(text)
            for s in family.samples}


def _value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float | None:
    wanted = {"project": AI, "granularity": "hour", **labels}
    return found.get((name, frozenset(wanted.items())))


def _stored(out: Path) -> tuple[int, int]:
    parts = list(out.rglob("part-*.csv.gz"))
    return len(parts), sum(p.stat().st_size for p in parts)


async def test_the_metrics_file_says_what_the_run_did_and_a_failure_keeps_the_last_success(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    env = env_for(emulator.url)
    args = ["--metrics-file", "backfill.prom"]
    code, _, err = await cli(["run", *_range(GOOD[0], GOOD[-1]), *args], env, tmp_path)
    assert code == 0, err
    found = _metrics((tmp_path / "backfill.prom").read_text())
    stats = emulator.state.stats()
    parts, size = _stored(tmp_path / "data")
    assert _value(found, "backfill_last_run_exit_code") == 0
    assert _value(found, "backfill_last_run_keys", state="done") == 3
    assert _value(found, "backfill_last_run_keys", state="failed") == 0
    assert _value(found, "backfill_last_run_parts") == parts == stats["calls"]["download"]
    assert _value(found, "backfill_last_run_bytes") == size == stats["bytes_served"]
    assert _value(found, "backfill_last_run_export_calls") == stats["export_calls"] == 3
    ended = _value(found, "backfill_last_run_timestamp_seconds")
    assert ended is not None and _value(found, "backfill_last_success_timestamp_seconds") == ended
    for data_type in ("visit", "page"):
        assert _value(found, "backfill_watermark_timestamp_seconds",
                      type=data_type) == GOOD[-1].end.timestamp()
    assert not list(tmp_path.glob("backfill.prom.*"))  # the temporary file was renamed

    # The next keys: the one after the first run's is complete, the next one fails, the
    # one after it is complete. The watermark stops at the hole.
    code, _, err = await cli(["run", *_range(KEYS[3], KEYS[5]), *args], env, tmp_path)
    assert code == 1, err
    found = _metrics((tmp_path / "backfill.prom").read_text())
    assert _value(found, "backfill_last_run_exit_code") == 1
    assert _value(found, "backfill_last_run_keys", state="failed") == 1
    assert _value(found, "backfill_last_run_keys", state="done") == 2
    assert _value(found, "backfill_last_success_timestamp_seconds") == ended  # kept
    assert _value(found, "backfill_last_run_timestamp_seconds") > ended  # type: ignore[operator]
    for data_type in ("visit", "page"):
        assert _value(found, "backfill_watermark_timestamp_seconds",
                      type=data_type) == KEYS[3].end.timestamp()


async def test_a_push_never_replaces_the_last_success_with_a_failure(
        emulator: RunningEmulator, tmp_path: Path,
        receiver: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    url, seen = receiver
    env = env_for(emulator.url)
    code, _, err = await cli(["run", *_range(GOOD[0], GOOD[0]), "--pushgateway", url], env,
                             tmp_path)
    assert code == 0, err
    code, _, err = await cli(["run", *_range(BAD, BAD), "--pushgateway", url], env, tmp_path)
    assert code == 1, err
    assert [(method, path) for method, path, _ in seen] == [
        ("POST", f"/metrics/job/backfill/granularity/hour/project/{AI}")] * 2  # pushadd
    first, second = (_metrics(body.decode()) for _, _, body in seen)
    assert _value(first, "backfill_last_success_timestamp_seconds") is not None
    assert _value(second, "backfill_last_run_exit_code") == 1
    assert not any(name == "backfill_last_success_timestamp_seconds" for name, _ in second)


async def test_an_unreachable_pushgateway_is_one_warning_and_the_exit_code_stays(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    code, _, err = await cli(["run", *_range(GOOD[0], GOOD[0]), "--pushgateway",
                              "http://127.0.0.1:9", "--quiet"], env_for(emulator.url),
                             tmp_path)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "Pushgateway" in line]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0], err
    assert "Traceback" not in err


async def test_status_max_lag_says_which_type_is_stale_without_a_call(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    env = env_for(emulator.url)
    code, _, err = await cli(["run", *_range(GOOD[0], GOOD[-1])], env, tmp_path)
    assert code == 0, err
    code, _, err = await cli(["run", *_range(KEYS[3], KEYS[3]), "--types", "visit"], env,
                             tmp_path)
    assert code == 0, err
    before = emulator.state.stats()["calls"]
    # The newest key due is at least 40 min behind now: nothing here is within 1 h.
    code, out, err = await cli(["status", "--out", "data", "--max-lag", "1h"], env, tmp_path)
    assert code == 1, err
    shown = KEYS[3].start.strftime("%Y-%m-%dT%H")
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert set(lines) == {"visit", "page"}  # the types the output holds
    assert lines["visit"].startswith(f"complete up to {shown} (Beijing), ")
    assert lines["visit"].endswith("behind, more than the 1 h allowed")
    assert lines["page"].startswith(f"complete up to {GOOD[-1].start:%Y-%m-%dT%H} (Beijing)")
    code, out, err = await cli(["status", "--out", "data", "--max-lag", "2d", "--json"], env,
                               tmp_path)
    assert code == 0, err
    report = json.loads(out)
    assert report["stale"] == [] and report["exit_code"] == 0
    assert report["freshness"]["visit"]["watermark_seconds"] == KEYS[3].end.timestamp()
    assert report["freshness"]["page"]["complete_to"] == GOOD[-1].name
    assert emulator.state.stats()["calls"] == before  # not an export call, not a token


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _events(seen: list[tuple[str, str, bytes]]) -> list[dict[str, Any]]:
    return [json.loads(body) for method, path, body in seen
            if method == "POST" and path == "/api/v1/lineage"]


async def test_openlineage_start_then_complete_or_fail_with_their_datasets(
        emulator: RunningEmulator, tmp_path: Path,
        receiver: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    url, seen = receiver
    parent = "airflow/gio_dag.fetch/01933f4e-8d64-7a7e-9d62-0d9e2a6b1c11"
    env = env_for(emulator.url, OPENLINEAGE_URL=url, OPENLINEAGE_PARENT_ID=parent)
    code, _, err = await cli(["run", *_range(GOOD[0], GOOD[-1])], env, tmp_path)
    assert code == 0, err
    start, complete = _events(seen)
    assert [start["eventType"], complete["eventType"]] == ["START", "COMPLETE"]
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert complete["job"] == {**complete["job"], "namespace": "backfill",
                               "name": f"growingio.{AI}.hour"}
    assert {(d["namespace"], d["name"]) for d in complete["inputs"]} == {
        ("growingio", f"{AI}/visit"), ("growingio", f"{AI}/page")}
    out = (tmp_path / "data").resolve()
    outputs = {d["name"]: d for d in complete["outputs"]}
    assert set(outputs) == {f"{out}/visit", f"{out}/page"}
    assert {d["namespace"] for d in complete["outputs"]} == {"file"}
    sizes = sum(d["outputFacets"]["outputStatistics"]["size"] for d in outputs.values())
    assert sizes == _stored(tmp_path / "data")[1]
    facets = complete["run"]["facets"]
    assert facets["nominalTime"] == {**facets["nominalTime"],
                                     "nominalStartTime": _utc(GOOD[0].start),
                                     "nominalEndTime": _utc(GOOD[-1].end)}
    assert facets["parent"]["run"]["runId"] == parent.rsplit("/", 1)[1]
    assert facets["parent"]["job"] == {**facets["parent"]["job"], "namespace": "airflow",
                                       "name": "gio_dag.fetch"}

    seen.clear()
    code, _, err = await cli(["run", *_range(BAD, BAD)], env, tmp_path)
    assert code == 1, err
    start, fail = _events(seen)
    assert [start["eventType"], fail["eventType"]] == ["START", "FAIL"]
    assert "errorMessage" in fail["run"]["facets"]
    token = emulator.state.token
    assert token is not None
    assert_no_secrets([body.decode() for _, _, body in seen], token.code)


async def test_an_unreachable_lineage_endpoint_leaves_the_run_as_it_was(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    env = env_for(emulator.url, OPENLINEAGE_URL="http://127.0.0.1:9")
    code, _, err = await cli(["run", *_range(GOOD[0], GOOD[0]), "--quiet"], env, tmp_path)
    assert code == 0, err
    assert len([line for line in err.splitlines() if "OpenLineage" in line]) == 1, err
    assert "Traceback" not in err


async def test_a_stopped_run_reports_130_and_aborts_its_lineage(
        emulator: RunningEmulator, tmp_path: Path,
        receiver: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    url, seen = receiver
    emulator.state.config.job_seconds = 3600  # it polls until it is stopped
    env = env_for(emulator.url, OPENLINEAGE_URL=url)
    process = await start(["run", *_range(GOOD[0], GOOD[-1]), "--quiet",
                           "--metrics-file", "backfill.prom"], env, tmp_path)
    with anyio.fail_after(20):
        await started(process)
        while not emulator.state.stats()["export_calls"]:  # noqa: ASYNC110 (a counter)
            await anyio.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert await wait_for(process, 20) == 130
    found = _metrics((tmp_path / "backfill.prom").read_text())
    assert _value(found, "backfill_last_run_exit_code") == 130
    assert _value(found, "backfill_last_success_timestamp_seconds") is None
    # What it did before it was stopped: the calls it sent (it was waiting on their jobs;
    # one sent as it was stopped may not have been counted by the emulator yet).
    calls = _value(found, "backfill_last_run_export_calls")
    assert calls is not None and 1 <= emulator.state.stats()["export_calls"] <= calls <= 3
    assert [e["eventType"] for e in _events(seen)] == ["START", "ABORT"]


async def test_a_retry_with_nothing_to_retry_still_reports_a_success(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    env = env_for(emulator.url)
    code, _, err = await cli(["run", *_range(GOOD[0], GOOD[0])], env, tmp_path)
    assert code == 0, err
    calls = emulator.state.stats()["calls"]
    code, _, err = await cli(["retry", "--out", "data", "--metrics-file", "backfill.prom"],
                             env, tmp_path)
    assert code == 0, err
    found = _metrics((tmp_path / "backfill.prom").read_text())
    assert _value(found, "backfill_last_success_timestamp_seconds") is not None
    assert _value(found, "backfill_watermark_timestamp_seconds",
                  type="visit") == GOOD[0].end.timestamp()
    assert emulator.state.stats()["calls"] == calls  # no call: a run of no key


async def test_a_table_run_reports_its_rows_in_metrics_and_lineage(
        emulator: RunningEmulator, tmp_path: Path,
        receiver: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    url, seen = receiver
    env = env_for(emulator.url, OPENLINEAGE_URL=url)
    code, _, err = await cli(["run", *_range(GOOD[0], GOOD[1]), "--format", "parquet",
                              "--metrics-file", "backfill.prom"], env, tmp_path)
    assert code == 0, err
    rows = {t: sum(pq.ParquetFile(p).metadata.num_rows
                   for p in (tmp_path / "data" / t).rglob("*.parquet"))
            for t in ("visit", "page")}
    assert all(rows.values())
    found = _metrics((tmp_path / "backfill.prom").read_text())
    for data_type, count in rows.items():
        assert _value(found, "backfill_last_run_rows", type=data_type) == count
    complete = _events(seen)[-1]
    assert {d["name"].rsplit("/", 1)[1]: d["outputFacets"]["outputStatistics"]["rowCount"]
            for d in complete["outputs"]} == rows
