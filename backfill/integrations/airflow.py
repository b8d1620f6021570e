"""Airflow 3: a deferrable operator that fetches a run's data interval from GrowingIO
(the ``airflow`` extra)::

    from backfill.integrations.airflow import GrowingIOFetchOperator

    GrowingIOFetchOperator(task_id="visit_page", out="s3://lake/gio", granularity="hour",
                           types="visit,page", pool="growingio_acme")

- It fetches exactly the keys of the run's data interval (``data_interval_start``
  inclusive to ``data_interval_end`` exclusive, in Beijing time), or the run's
  ``partition_key`` when the run is partitioned. Done keys cost no call.
- While a key is not ready (not exportable yet, or its export job ``RUNNING``) it defers
  to :class:`GrowingIOReadyTrigger`, which holds no worker slot, polls with async I/O only
  (one export call per poll) and ends at a wall-clock deadline (``max_wait``) it keeps
  itself. Downloads always run on a worker, with the library's guarantees.
- Options: every backfill config key (``config.example.toml``) goes in ``options={…}``;
  those whose names Airflow's ``BaseOperator`` does not take itself may also be given
  directly (``downloads=4``). ``retries`` is Airflow's: backfill's own is
  ``options={"retries": 6}``. ``out`` and ``types`` are templated.
- Credentials come from the environment under ``env_prefix`` (``GIO_CLIENT_ID``…), or a
  ``[[projects]]`` entry of ``config``, read on the worker and in the triggerer; never in
  the trigger's arguments, the task's rendered fields or its logs.
- A pool per client id, ``growingio_<client id>`` with 1 slot and ``include_deferred``
  (``airflow pools set growingio_acme 1 "GrowingIO acme" --include-deferred``): without
  ``include_deferred`` a deferred task holds no slot, and two runs would share the 2
  calls/s budget unknowingly. Several runs of one client id at once need a console token
  (``GIO_TOKEN``): minted tokens revoke each other, so with only ``GIO_SECRET`` a DAG that
  lets more than one run go at once is refused.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, BaseOperator, Context
from airflow.sdk.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from backfill.config import Project, option_names
from backfill.keys import BEIJING, Granularity, key_at

_OPERATOR_ARGS = frozenset(inspect.signature(BaseOperator.__init__).parameters)
"""What BaseOperator takes itself (``retries``, ``pool``…): a backfill setting of such a
name goes in ``options``."""
TRIGGER = "backfill.integrations.airflow.GrowingIOReadyTrigger"


class GrowingIOFetchOperator(BaseOperator):
    """Fetch the run's keys of GrowingIO raw exports into ``out``; see the module."""

    template_fields = ("out", "types")

    def __init__(self, *, out: str, granularity: str = "hour",
                 types: list[str] | str | None = None, env_prefix: str = "GIO_",
                 project: str | None = None, config: str | None = None,
                 deferrable: bool = True, options: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        direct = {k: kwargs.pop(k) for k in list(kwargs)
                  if k in option_names() and k not in _OPERATOR_ARGS}
        outlets = kwargs.pop("outlets", None)
        if outlets is None:
            outlets = _assets(out, types)
        super().__init__(outlets=outlets, **kwargs)
        self.out = out
        self.types = types
        self.granularity = granularity
        self.env_prefix = env_prefix
        self.project = project
        self.config = config
        self.deferrable = deferrable
        self.options = {**direct, **(options or {})}
        unknown = sorted(set(self.options) - set(option_names()))
        if unknown:
            raise AirflowException(f"unknown backfill option {unknown[0]!r}")

    # --- on the worker ------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        first, last = self._range(context)
        deadline = _clock().time() + self._max_wait()  # wall clock: it outlives a deferral
        return self._fetch(context, first, last, deadline)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Back from the trigger: every key ready; or the deadline passed, or the trigger
        met a problem (one last look, without waiting on the worker)."""
        status = event.get("status")
        if status == "error":
            self.log.warning("the trigger stopped waiting: %s", event.get("reason"))
        return self._fetch(context, event["first"], event["last"], event["deadline"],
                           last_look=status != "ready")

    def on_kill(self) -> None:
        """Nothing to undo here: a stop reaches the run, which aborts uploads in flight and
        releases its lock and lease before it ends; a deferred task holds none of them."""

    def _fetch(self, context: Context, first: str, last: str, deadline: float, *,
               last_look: bool = False) -> dict[str, Any]:
        import backfill
        from backfill.engine.progress import PlainReporter
        from backfill.errors import BackfillError

        self._check_token_rule()
        waiting = self.deferrable and not last_look
        # A deferrable task never waits on a worker: what is not ready defers, and the
        # last look (after the trigger) asks once. Only deferrable=False waits here.
        wait = 0.0 if self.deferrable else max(deadline - _clock().time(), 0.0)
        try:
            summary = backfill.fetch(
                first, last, config=self.config, project=self.project,
                environ=self._environ(), reporter=PlainReporter(),
                lineage=False,  # the OpenLineage provider emits the task's events
                **self._backfill_options(max_wait=wait))
        except BackfillError as exc:  # bad settings, credentials, a range all gone: one line
            span = first if first == last else f"{first} … {last}"
            raise AirflowException(f"GrowingIO keys {span}: {exc}") from None
        asked_at = _clock().time()  # the keys not ready were asked at the latest now
        not_ready = sorted(k for k, p in summary.problems.items() if p.startswith("not_ready"))
        if not_ready and waiting and _clock().time() < deadline:
            self.log.info("%d keys not ready: deferring until they are (or %s)",
                          len(not_ready), datetime.fromtimestamp(deadline, UTC))
            self.defer(trigger=GrowingIOReadyTrigger(
                first=first, last=last, granularity=self.granularity, types=self._types(),
                env_prefix=self.env_prefix, project=self.project, config=self.config,
                options=self._trigger_options(), deadline=deadline, keys=not_ready,
                asked_at=asked_at),
                method_name="execute_complete",
                timeout=timedelta(seconds=max(deadline - _clock().time(), 1.0) + 60))
        facts: dict[str, Any] = {
            "keys": sum(summary.statuses.values()), "parts": summary.held_parts,
            "bytes": summary.held_bytes, "fetched_parts": summary.parts,
            "export_calls": summary.api_calls, "exit_code": summary.exit_code}
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = dict(facts)
        if summary.exit_code != 0:
            raise AirflowException(f"GrowingIO: {summary.failure()}")
        return facts

    def _range(self, context: Context) -> tuple[str, str]:
        """The run's keys, as backfill dates: the data interval (start inclusive, end
        exclusive, in Beijing time) or the partition key."""
        partition = getattr(context.get("dag_run"), "partition_key", None)
        if partition:
            return str(partition), str(partition)
        start, end = context["data_interval_start"], context["data_interval_end"]
        if start is None or end is None:
            raise AirflowException("the run has no data interval: give the DAG a timetable "
                                   "with one (CronDataIntervalTimetable)")
        unit = Granularity(self.granularity)
        first = key_at(start, unit)
        last = key_at(end - timedelta(microseconds=1), unit)
        aligned = all(key_at(moment, unit).start == moment for moment in (start, end))
        if last < first or not aligned:
            tz = "timezone=\"Asia/Shanghai\""
            cron = "0 * * * *" if unit is Granularity.HOUR else "0 0 * * *"
            raise AirflowException(
                f"the data interval {start} to {end} is not whole Beijing {unit.value}s: "
                f"schedule with CronDataIntervalTimetable(\"{cron}\", {tz})")
        form = "%Y-%m-%dT%H" if unit is Granularity.HOUR else "%Y-%m-%d"
        return (first.start.astimezone(BEIJING).strftime(form),
                last.start.astimezone(BEIJING).strftime(form))

    def _backfill_options(self, **changes: Any) -> dict[str, Any]:
        options = {**self.options, "out": self.out, "granularity": self.granularity,
                   **changes}
        if self._types():
            options["types"] = self._types()
        return options

    def _trigger_options(self) -> dict[str, Any]:
        """What the trigger needs of the settings: those declared safe to travel in its
        arguments (nothing secret, plain JSON)."""
        from backfill.config import declared

        return {k: v for k, v in self.options.items() if k in declared() and declared()[k].trigger}

    def _types(self) -> list[str]:
        if isinstance(self.types, str):
            return [t.strip() for t in self.types.split(",") if t.strip()]
        return list(self.types or [])

    def _max_wait(self) -> float:
        from backfill.config import parse_duration

        return parse_duration(self.options.get("max_wait", "6h"))

    def _environ(self) -> dict[str, str] | None:
        return _environ(self.env_prefix, self.project)

    def _check_token_rule(self) -> None:
        import os

        env = self._environ() or dict(os.environ)
        concurrent = getattr(self.dag, "max_active_runs", 1) if self.has_dag() else 1
        if (concurrent != 1 and env.get("GIO_SECRET") and not env.get("GIO_TOKEN")
                and not self.options.get("single_minter")):
            raise AirflowException(
                f"the DAG lets {concurrent} runs go at once, and each would mint a token "
                "with GIO_SECRET that revokes the others' (one token per client id): set "
                "GIO_TOKEN to a console token, or max_active_runs=1, or "
                "options={'single_minter': True} if one run at a time is assured otherwise")

    # --- lineage ------------------------------------------------------------------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The GrowingIO types read and the folders or buckets written, named as the
        command line's own events name them (:mod:`backfill.observe.lineage`), for the
        OpenLineage provider when it is installed."""
        try:
            from airflow.providers.openlineage.extractors import OperatorLineage
            from openlineage.client.event_v2 import Dataset
        except ImportError:
            return None
        import os

        from backfill.observe import lineage

        env = self._environ() or dict(os.environ)
        ai = env.get("GIO_AI", "unknown")
        types = self._types() or ["all"]
        outputs = [Dataset(*lineage.dataset(uri))
                   for uri in (str(a.uri) for a in self.outlets if isinstance(a, Asset))]
        return OperatorLineage(inputs=[Dataset(lineage.INPUT_NAMESPACE,
                                               lineage.input_name(ai, t)) for t in types],
                               outputs=outputs)


class GrowingIOReadyTrigger(BaseTrigger):
    """Waits, in the triggerer, until every key the worker found not ready (``keys``, of
    the range ``first`` to ``last``) is ready at GrowingIO (its export job ``FINISHED``),
    or the wall-clock ``deadline`` passes. It drives each key's lifecycle, the one the
    worker's run drives (:func:`backfill.library.until_ready`): the keys the worker asked at
    ``asked_at`` are asked again a poll after that, all the keys due together, within the
    calls-per-second budget. Async I/O only. Its arguments hold no secret: credentials are
    read here, from the triggerer's environment or the config's ``[[projects]]``."""

    def __init__(self, *, first: str, last: str, granularity: str, types: list[str],
                 env_prefix: str, project: str | None, config: str | None,
                 options: dict[str, Any], deadline: float, keys: list[str] | None = None,
                 asked_at: float | None = None) -> None:
        super().__init__()
        self.first, self.last, self.granularity = first, last, granularity
        self.types, self.env_prefix, self.project = types, env_prefix, project
        self.config, self.options, self.deadline = config, options, deadline
        self.keys, self.asked_at = keys, asked_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return TRIGGER, {"first": self.first, "last": self.last,
                         "granularity": self.granularity, "types": self.types,
                         "env_prefix": self.env_prefix, "project": self.project,
                         "config": self.config, "options": self.options,
                         "deadline": self.deadline, "keys": self.keys,
                         "asked_at": self.asked_at}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import anyio

        from backfill.errors import BackfillError

        event: dict[str, Any] = {"first": self.first, "last": self.last,
                                 "deadline": self.deadline}
        try:
            # The config file is read off the event loop: a trigger shares it with others.
            settings, keys = await anyio.to_thread.run_sync(self._plan)
            event["status"] = await self._wait(settings, keys)
        except BackfillError as exc:  # settings, credentials, an outage: the worker says
            event.update(status="error", reason=str(exc))
        yield TriggerEvent(event)

    def _plan(self) -> tuple[Any, list[Any]]:
        from backfill import library
        from backfill.keys import Key

        options = {**self.options, "granularity": self.granularity}
        if self.types:
            options["types"] = self.types
        settings = library.configure(self.config, project=self.project, **options,
                                     environ=_environ(self.env_prefix, self.project))
        settings, keys = library.range_keys(settings, self.first, self.last,
                                            check_retention=False)
        if self.keys is not None:  # the keys the worker found not ready
            keys = [Key.parse(name) for name in self.keys]
        return settings, keys

    async def _wait(self, settings: Any, keys: list[Any]) -> str:
        from backfill import library

        return await library.until_ready(settings, keys, deadline=self.deadline,
                                         asked_at=self.asked_at)


def _clock() -> Any:
    from backfill.clock import system_clock

    return system_clock()


def _environ(prefix: str, project: str | None) -> dict[str, str] | None:
    """The environment with ``<prefix>…`` standing for ``GIO_…`` (a project maps its own)."""
    import os

    if project is not None or prefix == "GIO_":
        return None
    return Project("", prefix).environ(os.environ)


def _assets(out: str, types: list[str] | str | None) -> list[Asset]:
    """One asset per data type written (``s3://bucket/prefix/<type>``, ``file://…``), or
    one for ``out`` when the types are templated (not known when the DAG is parsed)."""
    from backfill.observe.lineage import location, output_uri

    if "{{" in out:
        return []
    names = types.split(",") if isinstance(types, str) else list(types or [])
    if not names or (isinstance(types, str) and "{{" in types):
        return [Asset(location(out))]
    return [Asset(output_uri(out, t.strip())) for t in names if t.strip()]


