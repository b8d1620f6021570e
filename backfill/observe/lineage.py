"""OpenLineage events of a run (the ``lineage`` extra), and the
datasets it reads and writes, named by OpenLineage's conventions (the Airflow operator's
lineage uses the same names).

Configured the client's standard way: ``OPENLINEAGE_URL`` (with ``OPENLINEAGE_API_KEY``,
``OPENLINEAGE_ENDPOINT``), ``OPENLINEAGE__TRANSPORT__*`` variables, or an
``openlineage.yml`` (``OPENLINEAGE_CONFIG``, the working folder, ``~/.openlineage``).
Nothing configured: no event, and the client is not even imported.

- ``START``, then exactly one of ``COMPLETE`` (exit 0 or 4), ``FAIL`` (with the error
  line) or ``ABORT`` (interrupted), all with one UUIDv7 run id.
- Job: namespace ``OPENLINEAGE_NAMESPACE`` or ``backfill``, name
  ``growingio.<ai>.<granularity>``; a parent run from ``OPENLINEAGE_PARENT_ID``
  (``namespace/job/run id``, as Airflow's ``lineage_parent_id`` macro gives it).
- Inputs: namespace ``growingio``, name ``<ai>/<type>``. Outputs: one per type, at
  ``<out>/<type>`` (``s3://bucket`` + the key, ``file`` + the path), with the bytes and,
  for tables, the rows the run wrote; the nominal time is the range's.
- Lineage never slows or breaks the load: each event waits at most
  :data:`EMIT_TIMEOUT`, and the first that fails is one warning line and the last tried.
  Events carry no secret: names, counts and our own (redacted) error lines only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio

from backfill import __version__
from backfill.config import TABLE_FORMATS, Settings
from backfill.errors import ExitCode
from backfill.install import DISTRIBUTION, install_line
from backfill.keys import Key

if TYPE_CHECKING:
    from backfill.observe import Outcome

EMIT_TIMEOUT = 5.0
PRODUCER = f"https://pypi.org/project/{DISTRIBUTION}/{__version__}/"
INPUT_NAMESPACE = "growingio"
OK_CODES = (ExitCode.OK, ExitCode.NOT_READY)
"""The exits a run COMPLETEs with; INTERRUPTED ABORTs it, any other FAILs it."""


def configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the OpenLineage client has a transport configured, as it looks for one."""
    env = os.environ if environ is None else environ
    if env.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OPENLINEAGE_URL") or env.get("OPENLINEAGE_CONFIG"):
        return True
    if any(name.startswith("OPENLINEAGE__TRANSPORT") for name in env):
        return True
    try:  # a home that is not there or not readable: no file there
        return any(p.is_file() for p in (Path("openlineage.yml"),
                                         Path.home() / ".openlineage" / "openlineage.yml"))
    except (OSError, RuntimeError):
        return False


# --- names (shared with the Airflow operator) -------------------------------------------

def location(out: str) -> str:
    """An output as a URI: ``s3://bucket/prefix``, ``file:///abs/path``."""
    return (out if "://" in out else f"file://{Path(out).resolve()}").rstrip("/")


def output_uri(out: str, data_type: str) -> str:
    """Where a type's data is: ``s3://bucket/prefix/visit``, ``file:///abs/path/visit``."""
    return f"{location(out)}/{data_type}"


def dataset(uri: str) -> tuple[str, str]:
    """OpenLineage's (namespace, name) of a folder or bucket URI: ``file`` and the path;
    ``s3://bucket`` (``gs://…``) and the key; ``abfss://container@account…`` for Azure
    when the account is known."""
    scheme, _, rest = uri.partition("://")
    if scheme == "file":
        return "file", rest
    bucket, _, key = rest.partition("/")
    if scheme == "az" and (account := os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
                           or os.environ.get("AZURE_STORAGE_ACCOUNT")):
        return f"abfss://{bucket}@{account}.dfs.core.windows.net", key
    return f"{scheme}://{bucket}", key


def input_name(ai: str, data_type: str) -> str:
    return f"{ai}/{data_type}"


def job_name(ai: str, granularity: str) -> str:
    return f"growingio.{ai}.{granularity}"


# --- events --------------------------------------------------------------------------------

class Lineage:
    """The events of one run; see the module."""

    def __init__(self, client: Any, settings: Settings, keys: list[Key], run_id: str,
                 warn: Callable[[str], None]) -> None:
        self._client, self._settings, self._keys = client, settings, keys
        self._run_id, self._warn = run_id, warn
        self._broken = False
        self._parent = _parent(os.environ.get("OPENLINEAGE_PARENT_ID", ""), warn)

    @classmethod
    def configured(cls, settings: Settings, keys: list[Key], run_id: str,
                   warn: Callable[[str], None]) -> Lineage | None:
        """The run's lineage, or None when no OpenLineage transport is configured (or the
        client is not installed: one warning)."""
        if not configured():
            return None
        try:
            from openlineage.client import OpenLineageClient
        except ImportError:
            warn("OpenLineage is configured but its client is not installed: "
                 f"{install_line('lineage')}; no lineage is sent")
            return None
        try:
            client = OpenLineageClient()
        except Exception as exc:  # its configuration, read by it: never the run's end
            warn(f"OpenLineage: its configuration is not usable ({type(exc).__name__}); no "
                 "lineage is sent")
            return None
        return cls(client, settings, keys, run_id, warn)

    async def start(self, when: datetime) -> None:
        await self._emit("START", when, None)

    async def end(self, outcome: Outcome) -> None:
        code = outcome.exit_code
        state = ("COMPLETE" if code in OK_CODES else
                 "ABORT" if code == ExitCode.INTERRUPTED else "FAIL")
        await self._emit(state, outcome.ended, outcome)

    async def _emit(self, state: str, when: datetime, outcome: Outcome | None) -> None:
        if self._broken:
            return
        try:
            event = self.event(state, when, outcome)
        except Exception as exc:  # the client's checks of a facet: never the run's end
            error: str | None = type(exc).__name__
        else:
            error = await anyio.to_thread.run_sync(_send, self._client, event, EMIT_TIMEOUT)
        if error is not None:
            self._broken = True
            self._warn(f"OpenLineage: the {state} event was not sent ({error}); the run "
                       "goes on without lineage")

    def event(self, state: str, when: datetime, outcome: Outcome | None) -> Any:
        from openlineage.client.event_v2 import (
            InputDataset,
            Job,
            OutputDataset,
            Run,
            RunEvent,
            RunState,
        )
        from openlineage.client.facet_v2 import (
            error_message_run,
            job_type_job,
            nominal_time_run,
            output_statistics_output_dataset,
            parent_run,
        )

        s = self._settings
        ai, types = s.credentials.ai, s.wanted_types
        run_facets: dict[str, Any] = {}
        if self._keys:
            run_facets["nominalTime"] = nominal_time_run.NominalTimeRunFacet(
                nominalStartTime=_utc(self._keys[0].start),
                nominalEndTime=_utc(self._keys[-1].end))
        if self._parent is not None:
            namespace, name, run_id = self._parent
            run_facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=run_id),
                job=parent_run.Job(namespace=namespace, name=name))
        if outcome is not None and outcome.exit_code not in OK_CODES and outcome.error:
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=outcome.error, programmingLanguage="python")
        outputs = []
        summary = outcome.summary if outcome is not None else None
        for data_type in types:
            namespace, name = dataset(output_uri(str(s.out), data_type))
            facets: dict[str, Any] = {}
            if summary is not None:
                rows = (summary.type_rows[data_type]
                        if s.format in TABLE_FORMATS else None)
                facets["outputStatistics"] = (
                    output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                        rowCount=rows, size=summary.type_bytes[data_type]))
            outputs.append(OutputDataset(namespace=namespace, name=name,
                                         outputFacets=facets))
        job = Job(namespace=os.environ.get("OPENLINEAGE_NAMESPACE") or "backfill",
                  name=job_name(ai, s.granularity.value),
                  facets={"jobType": job_type_job.JobTypeJobFacet(
                      processingType="BATCH", integration="BACKFILL", jobType="JOB")})
        return RunEvent(
            eventType=getattr(RunState, state), eventTime=_utc(when),
            run=Run(runId=self._run_id, facets=run_facets), job=job,
            inputs=[InputDataset(namespace=INPUT_NAMESPACE, name=input_name(ai, t))
                    for t in types],
            outputs=outputs, producer=PRODUCER)


def _send(client: Any, event: Any, timeout: float) -> str | None:
    """Emit in a thread of its own, waiting at most ``timeout``: a transport that hangs
    (or retries for long) is left behind, a daemon, never waited for again. Returns why
    it failed, or None."""
    failure: list[str] = []
    done = threading.Event()

    def emit() -> None:
        try:
            client.emit(event)
        except Exception as exc:  # the transport's, whatever it is
            failure.append(type(exc).__name__)
        finally:
            done.set()

    threading.Thread(target=emit, name="openlineage", daemon=True).start()
    if not done.wait(timeout):
        return f"no answer in {timeout:g} s"
    return failure[0] if failure else None


def _parent(value: str, warn: Callable[[str], None]) -> tuple[str, str, str] | None:
    """``OPENLINEAGE_PARENT_ID`` (``namespace/job name/run id``) as its three parts."""
    if not value:
        return None
    namespace, _, rest = value.partition("/")
    name, _, run_id = rest.rpartition("/")
    try:
        UUID(run_id)
    except ValueError:
        warn("OPENLINEAGE_PARENT_ID is not namespace/job/run-id (a UUID): no parent run")
        return None
    if not namespace or not name:
        warn("OPENLINEAGE_PARENT_ID is not namespace/job/run-id (a UUID): no parent run")
        return None
    return namespace, name, run_id


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")

