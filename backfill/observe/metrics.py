"""A run's Prometheus metrics, in the text format: a file for node_exporter's textfile
collector (``metrics_file``), a push to a Pushgateway (``pushgateway``), or both.

Every metric is a gauge, every series labelled ``project`` (GIO_AI) and ``granularity``:

- ``backfill_last_run_timestamp_seconds``, ``…_duration_seconds``, ``…_exit_code``;
- ``backfill_last_success_timestamp_seconds``: the end of the last run that exited 0. A
  failing run keeps the value before it: the file keeps it from its previous version, and
  the push (``pushadd``, which replaces only the metrics it carries) leaves it out;
- ``backfill_last_run_keys{state}`` (done, failed, not_ready, gone),
  ``backfill_last_run_parts``, ``…_bytes``, ``…_export_calls``: what the run did;
- ``backfill_last_run_rows{type}``: typed output, the rows the run committed;
- ``backfill_watermark_timestamp_seconds{type}``: the end of the newest key up to which
  everything is complete at the destination (:mod:`backfill.state.freshness`), read from
  the destination after the run; 0 when nothing of the type is complete.

Every series carries ``shard`` too with ``--shard``; pushes group by ``job="backfill"``
and those labels, so that projects, granularities and shards never overwrite each other.
A watermark the run could not read is kept from the file's previous version (the push
leaves it out, so the gateway keeps its own).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio

from backfill.config import TABLE_FORMATS
from backfill.model import Status

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from backfill.observe import Outcome

PUSH_TIMEOUT = 10.0
JOB = "backfill"
LAST_SUCCESS = "backfill_last_success_timestamp_seconds"
WATERMARK = "backfill_watermark_timestamp_seconds"
STATES = (Status.DONE, Status.FAILED, Status.NOT_READY, Status.GONE)


async def report(outcome: Outcome, warn: Callable[[str], None]) -> None:
    """Write the file and push, as the settings ask; a failure is one warning each."""
    s = outcome.settings
    if s.metrics_file is not None:
        path = s.metrics_file
        try:
            await anyio.to_thread.run_sync(write_file, path, outcome)
        except OSError as exc:
            warn(f"metrics: could not write {path}: {exc.strerror or exc}")
    if s.pushgateway:
        try:
            await anyio.to_thread.run_sync(push, s.pushgateway, outcome)
        except Exception as exc:  # the gateway's answer, whatever it is: never the run's
            host = urlsplit(s.pushgateway).netloc
            warn(f"metrics: could not push to the Pushgateway at {host}: "
                 f"{_reason(exc)}")


def labels(outcome: Outcome) -> dict[str, str]:
    """Every series': the project and the granularity, and the shard of a sharded run
    (shards sharing a file or a gateway never overwrite each other)."""
    found = {"project": outcome.settings.credentials.ai,
             "granularity": outcome.settings.granularity.value}
    if outcome.settings.shard is not None:
        found["shard"] = outcome.settings.shard.slug
    return found


def write_file(path: Path, outcome: Outcome) -> None:
    """The metrics, atomically at ``path`` (a temporary file in its folder, renamed): the
    collector never reads half a file."""
    from prometheus_client import write_to_textfile

    ours = labels(outcome)
    success = _previous(path, LAST_SUCCESS, ours).get("")
    watermarks = _previous(path, WATERMARK, ours) if outcome.freshness is None else {}
    write_to_textfile(str(path), registry(outcome, success, watermarks))


def push(url: str, outcome: Outcome) -> None:
    """``pushadd`` to the gateway: a failed run's push carries no last success, so the
    gateway keeps the last one pushed."""
    from prometheus_client import pushadd_to_gateway

    pushadd_to_gateway(url, job=JOB, registry=registry(outcome, None),
                       grouping_key=labels(outcome), timeout=PUSH_TIMEOUT)


def registry(outcome: Outcome, previous_success: float | None,
             previous_watermarks: dict[str, float] | None = None) -> CollectorRegistry:
    """The run's metrics; ``previous_success``: the last success to keep when this run
    did not succeed (left out when None); ``previous_watermarks``: by type, those to keep
    when this run could not read them (a push leaves them out: the gateway keeps its
    own)."""
    from prometheus_client import CollectorRegistry, Gauge

    found = CollectorRegistry(auto_describe=True)
    common = labels(outcome)
    names = list(common)
    _gauges: dict[str, Gauge] = {}

    def gauge(name: str, doc: str, value: float, **extra: str) -> None:
        metric = _gauges.get(name)
        if metric is None:
            metric = _gauges[name] = Gauge(name, doc, [*names, *extra], registry=found)
        metric.labels(**common, **extra).set(value)

    ended = outcome.ended.timestamp()
    gauge("backfill_last_run_timestamp_seconds", "When the last run ended.", ended)
    gauge("backfill_last_run_duration_seconds", "How long the last run took.",
          outcome.seconds)
    gauge("backfill_last_run_exit_code", "The last run's exit code.", outcome.exit_code)
    success = ended if outcome.exit_code == 0 else previous_success
    if success is not None:
        gauge(LAST_SUCCESS, "When the last run that exited 0 ended.", success)
    summary = outcome.summary
    for state in STATES:
        gauge("backfill_last_run_keys", "The last run's keys, by how they ended.",
              summary.statuses[state] if summary else 0, state=state.value)
    gauge("backfill_last_run_parts", "Parts the last run downloaded and verified.",
          summary.parts if summary else 0)
    gauge("backfill_last_run_bytes", "Bytes the last run downloaded and verified.",
          summary.bytes if summary else 0)
    gauge("backfill_last_run_export_calls", "Export API calls the last run made.",
          summary.api_calls if summary else 0)
    if outcome.settings.format in TABLE_FORMATS:
        for data_type in outcome.settings.wanted_types:
            gauge("backfill_last_run_rows", "Rows the last run committed, by data type.",
                  summary.type_rows[data_type] if summary else 0, type=data_type)
    watermarks = {f.data_type: f.watermark.timestamp() if f.watermark else 0.0
                  for f in outcome.freshness or []} or previous_watermarks or {}
    for data_type, value in watermarks.items():
        gauge(WATERMARK, "The end of the newest key up to which every key is complete at "
              "the destination (0: none).", value, type=data_type)
    return found


def _previous(path: Path, name: str, wanted: dict[str, str]) -> dict[str, float]:
    """The samples of metric ``name`` the file at ``path`` holds for these labels, by the
    value of their one other label (``type``; "" for none)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    found: dict[str, float] = {}
    with contextlib.suppress(ValueError):  # a file someone else wrote: start afresh
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in wanted.items()):
                    other = set(sample.labels) - set(wanted)
                    found[sample.labels[other.pop()] if other else ""] = float(sample.value)
    return found


def _reason(exc: Exception) -> str:
    """What went wrong with a push, without its URL (it may carry a query)."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return type(exc).__name__ if not isinstance(exc, OSError) else (exc.strerror or
                                                                    type(exc).__name__)
