"""``backfill demo``: a real backfill against the bundled emulator, in-process."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from backfill.clock import system_clock
from backfill.config import Credentials, Remote, Settings
from backfill.emulator import DEMO_CREDENTIALS, EmulatorConfig, Faults, serve
from backfill.engine.progress import Reporter
from backfill.keys import Granularity, expand, key_at
from backfill.library import fetch_keys
from backfill.model import Summary

DEMO_TYPES = ("visit", "page", "custom_event")
DEMO_DAYS = 7


def demo_emulator_config() -> EmulatorConfig:
    """Small parts, short jobs, and a sprinkle of faults for the client to survive."""
    return EmulatorConfig(
        bytes_per_hour=16 * 1024,
        part_size=16 * 1024,
        job_seconds=3.0,
        faults=Faults(seed=1, api_5xx=0.05, reset=0.02, corrupt=0.02),
    )


def demo_keys(now: datetime) -> list[Any]:
    """A week of days that ended at least a day ago, so every one is exportable now."""
    last = key_at(now - timedelta(days=2), Granularity.DAY)
    return expand(key_at(last.start - timedelta(days=DEMO_DAYS - 1), Granularity.DAY), last)


async def demo_settings(out: Path | Remote, fmt: str | None) -> Settings:
    """The demo's settings over ``out``: a week of days, in ``fmt`` (else what the output
    holds, else csv); a contradiction with what it holds is refused (creates nothing)."""
    from backfill.library import settle_output

    sources = {"granularity": "argument granularity=", "types": "argument types="}
    if fmt is not None:
        sources["format"] = "flag --format"
    return await settle_output(replace(
        Settings(), out=out, granularity=Granularity.DAY, types=DEMO_TYPES,
        format=fmt or "csv", poll_interval=1.0, max_poll_interval=2.0, backoff=0.2,
        max_wait=120.0, sources=sources))


async def run_demo(settings: Settings, reporter: Reporter) -> tuple[Summary, dict[str, Any]]:
    """Serve the emulator on a free loopback port and back a week up from it into
    ``settings.out`` (see :func:`demo_settings`).

    Returns the run's summary and the emulator's own counters.
    """
    async with serve(demo_emulator_config()) as emulator:
        c = DEMO_CREDENTIALS
        credentials = Credentials(base_url=emulator.url, client_id=c.client_id,
                                  secret=c.secret, project_uid=c.project_uid, ai=c.ai)
        summary = await fetch_keys(replace(settings, credentials=credentials),
                                   demo_keys(system_clock().now()), reporter=reporter)
        return summary, emulator.state.stats()
