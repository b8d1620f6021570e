"""What a run reports of itself, without a run: the watermark and freshness rules, the
metrics it writes, the lineage event it builds, the exit it reports for each ending."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backfill.config import Credentials, Settings, parse_out
from backfill.engine.policy import newest_ready
from backfill.errors import AuthError, Interrupted
from backfill.keys import BEIJING, Granularity, Key, Shard, expand
from backfill.model import Status, Summary, human_duration
from backfill.observe import Outcome, _exit, metrics
from backfill.observe import lineage as ol
from backfill.state.freshness import freshness, frontier

parser = pytest.importorskip("prometheus_client.parser")
H = Granularity.HOUR
NOW = datetime(2026, 12, 5, 12, 30, tzinfo=BEIJING)
S = Settings(granularity=H, types=("visit", "page"),
             credentials=Credentials(ai="a1b2c3", secret="never-shown-5f1e", token="tok-9c2"))


def hour(h: int) -> Key:
    return Key(datetime(2026, 12, 5, h, tzinfo=BEIJING), H)


# --- freshness -----------------------------------------------------------------------------

def test_the_watermark_stops_at_the_first_hole_whatever_is_complete_after_it() -> None:
    complete = {hour(h).name for h in (3, 4, 5, 7, 8)}
    assert frontier(complete, hour(3), H) == hour(5)
    assert frontier(complete, hour(2), H) is None  # the first key itself is missing
    assert frontier(complete, None, H) is None
    assert hour(5).end == datetime(2026, 12, 5, 6, tzinfo=BEIJING)  # the end of the key


def test_each_type_counts_from_its_first_known_key_or_the_start() -> None:
    due = hour(10)
    complete = [(hour(h).name, "visit") for h in range(3, 10)] + [
        (hour(5).name, "page"), (hour(6).name, "page"), ("20261204", "visit")]  # a day key
    known = [(hour(4).name, "page")]  # failed: known to the state, not complete
    found = {f.data_type: f for f in freshness(("visit", "page", "event"), H, complete,
                                               known, due)}
    assert found["visit"].complete_to == hour(9) and found["visit"].lag == 3600
    assert found["page"].first == hour(4) and found["page"].complete_to is None
    assert found["page"].lag == float("inf") and found["page"].watermark is None
    assert found["event"].first is None and found["event"].complete_to is None
    started = freshness(("visit",), H, complete, known, due, start=hour(6))
    assert started[0].first == hour(6) and started[0].complete_to == hour(9)
    assert found["visit"].behind(NOW) == 2.5 * 3600
    document = found["visit"].to_json(NOW)
    assert document["complete_to"] == hour(9).name and document["due"] == due.name
    assert document["watermark_seconds"] == hour(9).end.timestamp()


def test_the_key_due_is_the_newest_past_its_readiness() -> None:
    # 12:30: hour 11 is ready at 12:40, hour 10 at 11:40.
    assert newest_ready(S, NOW, H) == hour(10)
    assert newest_ready(S, NOW, H, lag=0) == hour(11)
    late = datetime(2026, 12, 6, 1, 50, tzinfo=BEIJING)  # 00 is a late hour: ready at 02:00
    assert newest_ready(S, late, H).name == "2026120523"
    assert newest_ready(S, NOW, Granularity.DAY).name == "20261204"  # ready at 03:00


def test_durations_read_as_people_say_them() -> None:
    assert human_duration(3 * 3600 + 600) == "3 h 10 min"
    assert human_duration(45 * 60) == "45 min"
    assert human_duration(2 * 86400 + 3 * 3600 + 59) == "2 d 3 h"
    assert human_duration(7200) == "2 h" and human_duration(0) == "0 min"


# --- metrics -------------------------------------------------------------------------------

def _outcome(code: int, *, summary: Summary | None = None, fmt: str = "csv",
             settings: Settings = S) -> Outcome:
    keys = expand(hour(3), hour(5))
    watermarks = freshness(("visit", "page"), H, [(hour(3).name, "visit")], [], hour(10))
    return Outcome(replace(settings, format=fmt), keys, "run-id", NOW,
                   NOW + timedelta(seconds=90), 90.0, code, summary, None, watermarks)


def _samples(outcome: Outcome, previous: float | None = None) -> dict[tuple[str, str], float]:
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry(outcome, previous)).decode()
    found = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels["project"] == "a1b2c3" and sample.labels["granularity"] == "hour"
            extra = sample.labels.get("state") or sample.labels.get("type") or ""
            found[(sample.name, extra)] = sample.value
    return found


def test_a_success_sets_the_last_success_and_a_failure_keeps_the_previous_one() -> None:
    summary = Summary(statuses=Counter({Status.DONE: 2, Status.FAILED: 1}), parts=7,
                      bytes=7000, api_calls=4)
    ended = (NOW + timedelta(seconds=90)).timestamp()
    ok = _samples(_outcome(0, summary=summary))
    assert ok[("backfill_last_success_timestamp_seconds", "")] == ended
    assert ok[("backfill_last_run_timestamp_seconds", "")] == ended
    assert ok[("backfill_last_run_duration_seconds", "")] == 90
    assert ok[("backfill_last_run_keys", "done")] == 2
    assert ok[("backfill_last_run_keys", "failed")] == 1
    assert ok[("backfill_last_run_keys", "gone")] == 0
    assert (ok[("backfill_last_run_parts", "")], ok[("backfill_last_run_bytes", "")],
            ok[("backfill_last_run_export_calls", "")]) == (7, 7000, 4)
    assert ok[("backfill_watermark_timestamp_seconds", "visit")] == hour(3).end.timestamp()
    assert ok[("backfill_watermark_timestamp_seconds", "page")] == 0  # nothing complete
    assert not any(name == "backfill_last_run_rows" for name, _ in ok)  # raw parts
    failed = _samples(_outcome(1, summary=summary), previous=123.0)
    assert failed[("backfill_last_success_timestamp_seconds", "")] == 123.0
    assert failed[("backfill_last_run_exit_code", "")] == 1
    never = _samples(_outcome(3))  # an error before any summary, never a success before
    assert ("backfill_last_success_timestamp_seconds", "") not in never
    assert never[("backfill_last_run_keys", "done")] == 0


def test_tables_report_their_rows_by_type() -> None:
    summary = Summary(statuses=Counter({Status.DONE: 3}), type_rows=Counter({"visit": 120}))
    found = _samples(_outcome(0, summary=summary, fmt="delta"))
    assert found[("backfill_last_run_rows", "visit")] == 120
    assert found[("backfill_last_run_rows", "page")] == 0


def test_the_file_is_replaced_whole_and_keeps_the_last_success_of_its_labels(
        tmp_path: Path) -> None:
    path = tmp_path / "backfill.prom"
    metrics.write_file(path, _outcome(0))
    success = (NOW + timedelta(seconds=90)).timestamp()
    later = replace(_outcome(1), ended=NOW + timedelta(hours=1))
    metrics.write_file(path, later)
    assert metrics._previous(path, metrics.LAST_SUCCESS, metrics.labels(later)) == {
        "": success}
    other = replace(S, credentials=Credentials(ai="zz"))
    assert metrics._previous(path, metrics.LAST_SUCCESS,
                             metrics.labels(_outcome(1, settings=other))) == {}
    assert [p.name for p in tmp_path.iterdir()] == ["backfill.prom"]
    path.write_text("not { the text format\n")  # someone else's file: started afresh
    metrics.write_file(path, _outcome(1))
    assert "backfill_last_success_timestamp_seconds" not in path.read_text()
    assert "never-shown" not in path.read_text() and "tok-9c2" not in path.read_text()


def test_pushes_are_grouped_by_project_granularity_and_shard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(prometheus_client, "pushadd_to_gateway",
                        lambda url, **kw: sent.append({"url": url, **kw}))
    outcome = _outcome(1, settings=replace(S, shard=Shard(2, 4)))
    metrics.push("http://127.0.0.1:9091", outcome)
    (push,) = sent
    assert push["job"] == "backfill" and push["timeout"] == metrics.PUSH_TIMEOUT
    assert push["grouping_key"] == {"project": "a1b2c3", "granularity": "hour",
                                    "shard": "shard-2-of-4"}
    from prometheus_client import generate_latest

    text = generate_latest(push["registry"]).decode()
    assert 'shard="shard-2-of-4"' in text  # the series too: shards never share one
    assert "backfill_last_success_timestamp_seconds" not in text  # a failure: left out


# --- lineage -------------------------------------------------------------------------------

def test_datasets_are_named_by_openlineage_conventions(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    assert ol.dataset(ol.output_uri("s3://lake/gio", "visit")) == ("s3://lake", "gio/visit")
    assert ol.dataset(ol.output_uri("gs://lake", "page")) == ("gs://lake", "page")
    assert ol.dataset(ol.output_uri(str(tmp_path / "d"), "visit")) == (
        "file", f"{tmp_path.resolve()}/d/visit")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    assert ol.dataset("az://box/gio/visit") == ("abfss://box@acct.dfs.core.windows.net",
                                                "gio/visit")
    assert ol.job_name("ai1", "hour") == "growingio.ai1.hour"


def test_lineage_is_on_only_where_the_client_would_find_a_transport(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not ol.configured({})
    assert ol.configured({"OPENLINEAGE_URL": "http://127.0.0.1:5000"})
    assert ol.configured({"OPENLINEAGE__TRANSPORT__TYPE": "console"})
    assert not ol.configured({"OPENLINEAGE_URL": "http://x", "OPENLINEAGE_DISABLED": "true"})
    (tmp_path / "openlineage.yml").write_text("transport:\n  type: console\n")
    assert ol.configured({})


def test_a_parent_run_is_taken_only_when_it_reads_as_one() -> None:
    warnings: list[str] = []
    run_id = "01933f4e-8d64-7a7e-9d62-0d9e2a6b1c11"
    assert ol._parent(f"airflow/dag.task/{run_id}", warnings.append) == (
        "airflow", "dag.task", run_id)
    assert ol._parent(f"ns/a/b/{run_id}", warnings.append) == ("ns", "a/b", run_id)
    assert ol._parent("airflow/dag.task/not-a-uuid", warnings.append) is None
    assert ol._parent("", warnings.append) is None
    assert len(warnings) == 1


def test_a_failed_run_event_says_why_and_holds_no_secret() -> None:
    pytest.importorskip("openlineage.client")
    from openlineage.client.serde import Serde

    summary = Summary(statuses=Counter({Status.FAILED: 1}), type_bytes=Counter({"visit": 5}))
    summary.add("2026120503", Status.FAILED, "export job failed: boom")
    outcome = replace(_outcome(1, summary=summary), error=summary.failure())
    events = ol.Lineage(None, outcome.settings, outcome.keys, "01933f4e-8d64-7a7e-9d62-"
                        "0d9e2a6b1c11", lambda _: None)
    event = json.loads(Serde.to_json(events.event("FAIL", outcome.ended, outcome)))
    assert event["eventType"] == "FAIL"
    assert "export job failed: boom" in event["run"]["facets"]["errorMessage"]["message"]
    stats = {d["name"].rsplit("/", 1)[1]: d["outputFacets"]["outputStatistics"]
             for d in event["outputs"]}
    assert stats["visit"] == {**stats["visit"], "size": 5}
    assert "rowCount" not in stats["visit"] or stats["visit"]["rowCount"] is None
    text = json.dumps(event)
    assert "never-shown" not in text and "tok-9c2" not in text


def test_a_lineage_endpoint_that_hangs_is_left_behind_in_bounded_time() -> None:
    import threading

    hanging = threading.Event()

    class Hanging:
        def emit(self, event: object) -> None:
            hanging.wait(30)

    try:
        assert ol._send(Hanging(), object(), 0.05) == "no answer in 0.05 s"
    finally:
        hanging.set()

    class Refusing:
        def emit(self, event: object) -> None:
            raise ConnectionRefusedError("http://user:pass@host/")

    assert ol._send(Refusing(), object(), 30.0) == "ConnectionRefusedError"  # no URL


# --- how each ending is reported ------------------------------------------------------------

def test_each_ending_has_its_exit_code_and_line() -> None:
    summary = Summary(statuses=Counter({Status.NOT_READY: 1}))
    assert _exit(summary, None) == (4, None)
    assert _exit(None, Interrupted("SIGTERM"))[0] == 130
    assert _exit(None, KeyboardInterrupt())[0] == 130
    assert _exit(None, AuthError("refused the token request")) == (
        3, "refused the token request")
    assert _exit(None, ExceptionGroup("g", [AuthError("no")]))[0] == 3
    assert _exit(None, ValueError("a bug"))[0] == 1


def test_a_watermark_output_that_is_a_bucket_reads_as_its_uri() -> None:
    out = parse_out("s3://lake/gio")
    assert ol.location(str(out)) == "s3://lake/gio"


def test_the_readmes_alert_rules_and_metric_names_are_the_ones_written() -> None:
    import re

    from prometheus_client import generate_latest

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Monitor it", 1)[1].split("\n### ", 1)[0]
    rules = re.search(r"```yaml\n(.*?)```", section, flags=re.S)
    assert rules, "the README's alert rules are gone"
    summary = Summary(statuses=Counter({Status.DONE: 1}))
    written = generate_latest(metrics.registry(_outcome(0, summary=summary, fmt="delta"),
                                               None)).decode()
    names = set(re.findall(r"^(backfill_\w+)\{", written, flags=re.M))
    used = set(re.findall(r"\bbackfill_\w+", rules[1]))
    assert used and used <= names
    named = {n.replace("…", "backfill_last_run") for n in re.findall(
        r"`(backfill_\w+|…_\w+)", section)}
    assert named == names  # the section names every metric, and no other


@pytest.mark.anyio
async def test_a_watermark_that_takes_too_long_is_left_out_not_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    from backfill.observe import Observer
    from tests.fakes import FakeClock

    monkeypatch.setattr("backfill.observe.FINISH_TIMEOUT", 0.05)
    said: list[str] = []

    class Reporter:
        def warning(self, text: str) -> None:
            said.append(text)

    async def never() -> list[Any]:
        await anyio.sleep(30)
        return []

    path = tmp_path / "backfill.prom"
    metrics.write_file(path, _outcome(0))  # an earlier run, with its watermarks
    settings = replace(S, metrics_file=path)
    observer = Observer(settings, [hour(3)], FakeClock(), Reporter(),  # type: ignore[arg-type]
                        lineage=False)
    with anyio.fail_after(5):
        await observer.ended(Summary(statuses=Counter({Status.DONE: 1})), None, never)
    assert said == ["metrics: the watermark was not read within 0.05 s; the metrics keep the "
                    "last one"]
    found = parser.text_string_to_metric_families(path.read_text())
    kept = {s.labels["type"]: s.value for family in found for s in family.samples
            if s.name == metrics.WATERMARK}
    assert kept == {"visit": hour(3).end.timestamp(), "page": 0.0}  # the last ones, kept


@pytest.mark.anyio
async def test_whatever_fails_in_reporting_leaves_the_runs_end_as_it_was(
        tmp_path: Path) -> None:
    from backfill.observe import Observer
    from tests.fakes import FakeClock

    said: list[str] = []

    class Reporter:
        def warning(self, text: str) -> None:
            said.append(text)

    async def broken() -> list[Any]:
        raise KeyError("a table's log, unreadable")

    settings = replace(S, metrics_file=tmp_path / "no-such-folder" / "backfill.prom")
    observer = Observer(settings, [hour(3)], FakeClock(), Reporter(),  # type: ignore[arg-type]
                        lineage=False)
    await observer.ended(Summary(statuses=Counter({Status.DONE: 1})), None, broken)
    assert said[0] == "metrics: the watermark could not be read (KeyError)"
    assert said[1].startswith(f"metrics: could not write {tmp_path}/no-such-folder/")


def test_a_key_gone_beyond_retention_does_not_hold_the_watermark_back_forever() -> None:
    complete = {hour(h).name for h in (3, 5, 6)}
    assert frontier(complete, hour(3), H) == hour(3)  # 4 is a hole
    assert frontier(complete, hour(3), H, {hour(4).name}) == hour(6)  # 4 can never be had
    assert frontier(complete, hour(2), H, {hour(2).name}) == hour(3)
    found = freshness(("visit",), H, [(hour(h).name, "visit") for h in (3, 5)], [],
                      hour(10), gone=[(hour(4).name, "visit"), (hour(4).name, "page")])
    assert found[0].complete_to == hour(5)
