"""Dagster: partitioned assets that back up a GrowingIO project (the ``dagster`` extra)::

    from backfill.integrations.dagster import growingio_asset

    acme = growingio_asset("acme_raw", start="2026-11-01", out="s3://lake/acme",
                           env_prefix="ACME_GIO_", types=["visit", "page"])
    defs = dagster.Definitions(assets=[acme])

- One partition per Beijing hour (or day), ``Asia/Shanghai``, from ``start``.
- Backfills run as one run per batch of partitions (``BackfillPolicy.single_run()``):
  one process holds the project's API budget with one token and one rate-limited queue,
  which is what the API rewards; re-executing is cheap, since done keys cost no call.
- Every asset is in the Dagster concurrency pool ``growingio_<project>`` (or ``pool=``):
  give it a limit of 1 (``dagster.yaml``: ``concurrency: pools: default_limit: 1``, or
  per pool) so runs never exceed the budget; assets of one client id share a pool.
  Two assets of one client id in one process share one token, too.
- A materialization records what the partition holds (parts, bytes), what this run
  fetched, the export calls and the destination; a key that fails raises with its
  problem, so Dagster's "re-execute failed partitions" is the retry.
- Credentials come from the environment, under ``env_prefix`` per project:
  ``ACME_GIO_CLIENT_ID``, ``ACME_GIO_TOKEN``… stand for ``GIO_CLIENT_ID``, ``GIO_TOKEN``….
- Every asset has a freshness policy: it fails when no materialization came within one
  readiness lag plus one partition (2 h for hours: the late hours' 60 min and an hour;
  27 h for days), or ``freshness_window=``. Schedule it every partition, and Dagster
  flags the asset when the feed stalls.
"""


import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from backfill.config import Project

BEIJING_TZ = "Asia/Shanghai"


def growingio_assets(config: str | Path | None = None, *, start: str,
                     granularity: str = "hour") -> list[dg.AssetsDefinition]:
    """One asset per ``[[projects]]`` entry of ``config`` (``./backfill.toml`` by default),
    named ``<name>_raw``; each project's entry gives its ``out`` and other settings."""
    from backfill.config import projects
    from backfill.errors import UsageError

    path = Path(config) if config is not None else None
    found = projects(path)
    if not found:
        raise UsageError(f"no [[projects]] in {path or 'backfill.toml'}")
    assets = []
    for project in found:
        if "out" not in project.values:
            raise UsageError(f"project {project.name!r} needs an out")
        assets.append(growingio_asset(
            f"{project.name}_raw", start=start, out=str(project.values["out"]),
            granularity=project.values.get("granularity", granularity),
            env_prefix=project.env_prefix, config=path, project=project.name))
    return assets


def growingio_asset(name: str, *, start: str, out: str, granularity: str = "hour",
                    env_prefix: str = "GIO_", pool: str | None = None,
                    freshness_window: timedelta | None = None,
                    **options: Any) -> dg.AssetsDefinition:
    """A partitioned asset that fetches exactly its partitions' keys into ``out``;
    ``options`` are the config file's keys (types, downloads, …), or ``config=`` and
    ``project=`` to read a ``[[projects]]`` entry.

    Its concurrency pool is ``pool``, else ``growingio_<project>`` (the ``project=``
    name, or the one ``env_prefix`` names: ``ACME_GIO_`` is ``acme``; ``GIO_`` is
    ``growingio_default``): known when the definitions load, whatever the environment
    holds then. Assets of one client id must share a pool: give them the same ``pool=``
    (or the same project). Its freshness policy fails after ``freshness_window`` without
    a materialization (default: :func:`freshness_window`)."""
    hourly = granularity == "hour"
    partitions: dg.PartitionsDefinition[Any] = (
        dg.HourlyPartitionsDefinition(start_date=f"{start}-00:00", timezone=BEIJING_TZ)
        if hourly else dg.DailyPartitionsDefinition(start_date=start, timezone=BEIJING_TZ))
    pool = pool or pool_name(options.get("project"), env_prefix)

    # Dagster inspects this annotation at run time: hence no `from __future__ import
    # annotations` in this module.
    def materialize(context: AssetExecutionContext) -> dg.MaterializeResult[Any]:
        import backfill

        keys = context.partition_key_range
        # With a project, the config maps its credentials; else the prefix here does.
        environ = None if options.get("project") else _environ(env_prefix)
        summary = backfill.fetch(_key(keys.start, hourly), _key(keys.end, hourly), out=out,
                                 granularity=granularity, environ=environ, **options)
        if summary.exit_code != 0:
            raise dg.Failure(description=summary.failure(),
                             metadata={"problems": summary.problems})
        # What the partition holds: a rematerialization that had nothing to fetch holds
        # its parts all the same; what this run fetched is beside it.
        return dg.MaterializeResult(metadata={
            "parts": summary.held_parts, "bytes": summary.held_bytes,
            "fetched_parts": summary.parts, "fetched_bytes": summary.bytes,
            "export_calls": summary.api_calls, "destination": out})

    with warnings.catch_warnings():
        # backfill_policy is "beta" in Dagster 1.x; it is the documented way to say that
        # a backfill runs once over its range, which is what the API budget wants.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(name=name, partitions_def=partitions, pool=pool,
                        backfill_policy=dg.BackfillPolicy.single_run(), kinds={"growingio"},
                        description=f"GrowingIO raw exports of {env_prefix}AI into {out}",
                        freshness_policy=dg.FreshnessPolicy.time_window(
                            fail_window=freshness_window or default_freshness(
                                granularity, options)),
                        )(materialize)


def default_freshness(granularity: str, options: dict[str, Any]) -> timedelta:
    """One readiness lag (the longest of the granularity's: the late hours' for hours)
    plus one partition: a materialization older than that means the feed is behind."""
    from dataclasses import replace

    from backfill.config import Settings, parse_flag
    from backfill.engine.policy import longest_lag
    from backfill.keys import Granularity

    lags = {n: parse_flag(n, options[n]) for n in ("hour_lag", "late_hour_lag", "day_lag")
            if n in options}
    unit = Granularity(granularity)
    return longest_lag(unit, replace(Settings(), **lags)) + unit.step


def pool_name(project: str | None, env_prefix: str) -> str:
    """``growingio_<project>``: from the project's name, or the one its prefix names."""
    import re

    if project:
        name = project
    elif env_prefix == "GIO_":
        name = "default"
    else:
        name = env_prefix.removesuffix("_").removesuffix("_GIO")
    return "growingio_" + re.sub(r"[^a-z0-9_-]+", "_", name.lower())


def _key(partition: str, hourly: bool) -> str:
    """A partition key ("2026-11-20-05:00", "2026-11-20") as a backfill key."""
    return f"{partition[:10]}T{partition[11:13]}" if hourly else partition


def _environ(prefix: str) -> dict[str, str]:
    """The environment, with one project's ``<prefix>…`` variables as ``GIO_…``."""
    if prefix == "GIO_":
        return dict(os.environ)
    return Project("", prefix).environ(os.environ)
