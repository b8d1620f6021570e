"""Waiting for many keys to be ready, with no download: what an Airflow trigger does while
its task is deferred. It drives every key's lifecycle (:mod:`backfill.engine.lifecycle`),
the one the scheduler drives: every key due is asked in the first round (within the
budget: the gate starts spent, as a handover from another process needs), then each is
asked again when its lifecycle says, all the keys due at a moment together.
"""

from __future__ import annotations

import math

import anyio

from backfill.clock import Clock
from backfill.config import Settings
from backfill.engine import lifecycle
from backfill.engine.lifecycle import Ask, Download, End, Step, Wait
from backfill.engine.policy import typical
from backfill.growingio.api import ExportApi
from backfill.keys import Key
from backfill.model import Status


async def until_ready(api: ExportApi, settings: Settings, keys: list[Key], *,
                      deadline: float, clock: Clock, asked_at: float | None = None) -> str:
    """Wait until every key of ``keys`` is ready (its job ``FINISHED``), or ends otherwise
    (gone, failed: the worker reports it), or ``deadline`` (wall-clock seconds) passes;
    ``"ready"`` or ``"deadline"``. ``asked_at``: when another process last asked these
    keys (each is then asked again one poll after that, not at once)."""
    now = clock.time()
    steps: dict[Key, Step] = {
        key: (lifecycle.resume(key, settings, now, deadline, asked_at=asked_at)
              if asked_at is not None else lifecycle.start(key, settings, now, deadline))
        for key in keys}
    durations: list[float] = []
    late = False
    slots = anyio.CapacityLimiter(settings.polls)

    async def ask(key: Key) -> None:
        async with slots:
            answer = await api.export(key, settings.wanted_types)
        step = lifecycle.answered(steps[key].life, answer.status, answer.error, clock.time(),
                                  settings=settings, typical_job=typical(durations))
        if step.job_seconds is not None:
            durations.append(step.job_seconds)
        steps[key] = step

    while True:
        now = clock.time()
        for key, step in list(steps.items()):
            if isinstance(step.action, Wait) and step.action.until <= now:
                steps[key] = lifecycle.woke(step.life, now)
        due = [key for key, step in steps.items() if isinstance(step.action, Ask)]
        for key in [k for k, s in steps.items() if isinstance(s.action, Download | End)]:
            action = steps.pop(key).action
            late |= isinstance(action, End) and action.status is Status.NOT_READY
        if not steps:
            return "deadline" if late else "ready"
        if now >= deadline:
            return "deadline"
        if due:
            async with anyio.create_task_group() as group:
                for key in due:
                    group.start_soon(ask, key)
            continue
        waits = [s.action.until for s in steps.values() if isinstance(s.action, Wait)]
        await clock.sleep(min([*waits, deadline, math.inf]) - now)
