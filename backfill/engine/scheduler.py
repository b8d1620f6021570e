"""The scheduler: every key as one task in one task group, within the run's budgets.

Budgets: the rate limiter (API calls per second, inside the client), ``polls``
concurrent export calls, and ``downloads`` concurrent keys holding links and parts
in flight. A key asks for links only once it holds a download slot, so links are
fresh when its parts start; a link that fails anyway is refreshed by asking again.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Generic, ParamSpec, Protocol, TypeVar

import anyio

from backfill.clock import Clock
from backfill.config import Settings, format_duration
from backfill.destination import Destination, Stored
from backfill.destination.manifest import document
from backfill.engine import lifecycle
from backfill.engine.lifecycle import Download, End, Wait
from backfill.engine.plan import KeyTask
from backfill.engine.policy import typical
from backfill.engine.progress import Activity, PartWatch, Reporter
from backfill.errors import (
    IntegrityError,
    LinkExpiredError,
    OutageError,
    PermanentError,
    RemoteError,
    RetryableError,
)
from backfill.growingio.api import ExportAnswer, ExportApi
from backfill.keys import Key
from backfill.layout import key_folder, object_name, part_name, redact
from backfill.model import DonePart, ManifestPart, PartRecord, Status, Summary
from backfill.net.retry import retrying
from backfill.state.store import Store
from backfill.transfer.download import Downloader
from backfill.transfer.integrity import Progress
from backfill.transfer.sink import PartSink

KEYS_IN_FLIGHT = 1024
"""Keys started and not yet ended, at most. Sleeping keys (jobs RUNNING, data not ready)
hold a place, so the window must exceed what the API budget serves while a job runs:
2 calls/s x a 5-minute job = 600 keys."""

P = ParamSpec("P")
T = TypeVar("T")


class Watched(Protocol):
    """A service whose outage ends the run (see :mod:`backfill.net.outage`)."""

    async def watch(self) -> OutageError: ...


@dataclass(frozen=True)
class KeyResult:
    status: Status
    detail: str | None = None
    absent: tuple[str, ...] = ()
    """Types the all-types answer did not hold: asked again, each on its own endpoint."""


@dataclass
class _PartJob:
    data_type: str
    index: int
    link: str
    source: str
    """The link without its query, as the state and messages show it."""
    sink: PartSink
    progress: Progress


@dataclass
class _KeyState:
    """What one key carries between attempts within this run."""

    task: KeyTask
    progress: dict[tuple[str, int, str], Progress] = field(default_factory=dict)
    replanned: set[str] = field(default_factory=set)
    """Types whose parts were planned afresh in this run (``--force`` does it once)."""


class Scheduler:
    """Runs key tasks to an end: done, failed, gone or not ready by the deadline."""

    def __init__(self, settings: Settings, store: Store, destination: Destination,
                 api: ExportApi, downloader: Downloader, reporter: Reporter,
                 summary: Summary, clock: Clock, *,
                 rng: random.Random | None = None,
                 services: Sequence[Watched] = (),
                 activity: Activity | None = None) -> None:
        self._s = settings
        self._clock = clock
        self.activity = activity or Activity(clock)
        """What the run is doing now, for the progress display and the heartbeat."""
        self._services = services
        """The services whose outages end the run (see :mod:`backfill.net.outage`)."""
        self._ended: set[str] = set()
        self._store = store
        self._dest = destination
        self._api = api
        self._downloader = downloader
        self._reporter = reporter
        self._summary = summary
        self._rng = rng or random.Random()
        self._policy = settings.retry_policy(self._rng)
        self._key_slots = anyio.CapacityLimiter(settings.downloads)
        self._part_slots = anyio.CapacityLimiter(settings.downloads)
        self._poll_slots = anyio.CapacityLimiter(settings.polls)
        self._done_parts = GroupWrite[DonePart](partial(store.parts_done, settings.api))
        self._deadline = 0.0
        self._job_seconds: list[float] = []
        """How long export jobs took in this run, first RUNNING to FINISHED."""

    async def run(self, tasks: list[KeyTask]) -> None:
        """Process every task; returns when all reached an end.

        Per-key problems end that key only; an :class:`AuthError` or an
        :class:`OutputError` (disk full) ends the whole run. An outage that outlives its
        budget ends it too, but as a result, not an error: every key not finished is
        recorded failed (so ``retry`` takes it) and ``summary.outage`` says why.
        """
        self._deadline = self._clock.time() + self._s.max_wait
        outages: list[OutageError] = []

        async def watch(service: Watched, scope: anyio.CancelScope) -> None:
            outages.append(await service.watch())
            scope.cancel()

        try:
            async with anyio.create_task_group() as group:
                for service in self._services:
                    group.start_soon(watch, service, group.cancel_scope)
                await self._run_keys(tasks)
                group.cancel_scope.cancel()  # every key ended: stop watching
        except* OutageError as found:  # a key's call met the end of the budget first
            outages += [e for e in _leaves(found) if isinstance(e, OutageError)]
        if outages:
            await self._stop_for_outage(tasks, outages[0])

    async def _run_keys(self, tasks: list[KeyTask]) -> None:
        # A bounded window of key tasks keeps memory flat however long the range: keys
        # start in order as earlier ones end, so old keys go first, new ones wait.
        window = anyio.Semaphore(KEYS_IN_FLIGHT)

        async def key_in_window(task: KeyTask) -> None:
            try:
                await self._key(task)
            finally:
                window.release()

        async with anyio.create_task_group() as group:
            for task in tasks:
                await window.acquire()
                group.start_soon(key_in_window, task)

    async def _stop_for_outage(self, tasks: list[KeyTask], outage: OutageError) -> None:
        """Record every key without an end as failed by the outage, in one transaction."""
        left = [task for task in tasks if task.key.name not in self._ended]
        reason = f"not finished: {outage}"
        with anyio.CancelScope(shield=True):
            await self._db(self._store.set_statuses, self._s.api,
                           [(t.key.name, t.types) for t in left], Status.FAILED, reason)
        for task in left:
            self._summary.add(task.key.name, Status.FAILED, reason)
        budget = format_duration(self._s.outage_budget)
        self._summary.outage = (
            f"{outage}; stopped at the end of the outage budget ({budget}): {len(left)} "
            "keys not finished are kept for `backfill retry` (or the same command) once it "
            "is back")

    async def _key(self, task: KeyTask) -> None:
        api, name = self._s.api, task.key.name
        await self._db(self._store.set_status, api, name, task.types, Status.ACTIVE, None,
                       attempt=True)
        first = await self._attempt(task)
        outcomes = dict.fromkeys(task.types, first)
        for data_type in first.absent:
            # No news of it is not an empty unit: ask its own endpoint, as a key of one type.
            outcomes[data_type] = await self._attempt(replace(task, types=(data_type,)))
        by_outcome: dict[KeyResult, list[str]] = defaultdict(list)
        for data_type, outcome in outcomes.items():
            by_outcome[outcome].append(data_type)
        for outcome, types in by_outcome.items():
            if outcome.status is not Status.DONE:  # done units were recorded one by one
                await self._db(self._store.set_status, api, name, types, outcome.status,
                               outcome.detail)
        result = _worst_result(list(by_outcome))
        self.activity.keys_done += 1
        self._ended.add(name)
        self._summary.add(name, result.status, result.detail)
        self._reporter.key_done(name, result.status, result.detail)

    async def _attempt(self, task: KeyTask) -> KeyResult:
        try:
            return await self._work(_KeyState(task))
        except RemoteError as exc:
            return KeyResult(Status.FAILED, str(exc))

    async def _work(self, state: _KeyState) -> KeyResult:
        """Drive the key's lifecycle (:mod:`backfill.engine.lifecycle`) to its end: ask,
        wait, download, as it says. An ask and the download of its links hold one of the
        ``downloads`` slots, so links are fresh when the parts start; waits hold none."""
        key, types, clock = state.task.key, state.task.types, self._clock
        step = lifecycle.start(key, self._s, clock.time(), self._deadline)
        while True:
            action = step.action
            if isinstance(action, End):
                return KeyResult(action.status, action.reason)
            if isinstance(action, Wait):
                await self._wait(key.name, action)
                step = lifecycle.woke(step.life, clock.time())
                continue
            async with self._key_slots:
                answer = await self._ask(key, types)
                step = lifecycle.answered(step.life, answer.status, answer.error,
                                          clock.time(), settings=self._s,
                                          typical_job=typical(self._job_seconds))
                if step.job_seconds is not None:
                    self._job_seconds.append(step.job_seconds)
                if not isinstance(step.action, Download):
                    continue
                try:
                    self.activity.downloading.add(key.name)
                    try:
                        await self._download(state, answer)
                    finally:
                        self.activity.downloading.discard(key.name)
                    return KeyResult(Status.DONE, absent=answer.absent)
                except (LinkExpiredError, IntegrityError, RetryableError) as exc:
                    self._summary.retries += 1
                    step = lifecycle.download_failed(
                        step.life, expired=isinstance(exc, LinkExpiredError), reason=str(exc),
                        now=clock.time(), policy=self._policy)

    async def _wait(self, name: str, wait: Wait) -> None:
        """Sleep before asking about a key again; the activity says why meanwhile: its job
        is RUNNING (or failed and is asked again), or its data is not exportable yet."""
        activity, clock = self.activity, self._clock
        seconds = wait.until - clock.time()
        if wait.job:
            activity.running[name] = clock.monotonic() + seconds
        else:
            activity.not_due[name] = clock.now() + timedelta(seconds=seconds)
        try:
            await clock.sleep(seconds)
        finally:
            activity.running.pop(name, None)
            activity.not_due.pop(name, None)

    async def _ask(self, key: Key, types: tuple[str, ...]) -> ExportAnswer:
        self.activity.asking += 1
        try:
            async with self._poll_slots:
                return await self._api.export(key, types)
        finally:
            self.activity.asking -= 1

    # --- downloading ---------------------------------------------------------------------

    async def _download(self, state: _KeyState, answer: ExportAnswer) -> None:
        jobs: list[_PartJob] = []
        present = [t for t in state.task.types if t not in answer.absent]
        for data_type in present:
            # Links are known by their redacted form: that is what the state keeps.
            links = {redact(link): link for link in answer.links.get(data_type, [])}
            records = await self._plan_unit(state, data_type, sorted(links, key=object_name))
            for record in records:
                if not record.done:
                    progress = state.progress.setdefault(
                        (data_type, record.index, record.source),
                        Progress(record.offset, record.etag))
                    jobs.append(_PartJob(data_type, record.index, links[record.source],
                                         record.source, self._dest.part(record.path),
                                         progress))
        failures: list[BaseException] = []
        # A few part tasks at a time (twice the part slots, so that recording one part
        # never idles a slot): a key of thousands of parts costs no more memory than one
        # of ten.
        spawned = anyio.Semaphore(2 * self._s.downloads)
        async with anyio.create_task_group() as group:
            for job in jobs:
                await spawned.acquire()
                group.start_soon(self._part, state.task.key, job, failures, spawned)
        if failures:
            raise _worst(failures)
        for data_type in present:
            await self._publish(state.task.key, data_type)

    async def _plan_unit(self, state: _KeyState, data_type: str,
                         sources: list[str]) -> list[PartRecord]:
        """Parts of one unit, numbered by the objects their (sorted, redacted) links name;
        reuse what is done, whichever host serves the links now."""
        api, key = self._s.api, state.task.key
        folder = key_folder(self._s.layout, key, data_type)
        planned = [(i, str(folder / part_name(i)), src) for i, src in enumerate(sources)]
        records = await self._db(self._store.parts, api, key.name, data_type)
        fresh = state.task.force and data_type not in state.replanned
        replan = fresh or [(r.index, r.path, object_name(r.source)) for r in records] != [
            (i, path, object_name(src)) for i, path, src in planned]
        if not replan and [r.source for r in records] != sources:
            # The same objects from another host: keep what is done, name the new links.
            await self._db(self._store.rename_sources, api, key.name, data_type, sources)
            records = [replace(r, source=src) for r, src in zip(records, sources, strict=True)]
        if replan or not all(r.done for r in records):
            # The unit is about to be rewritten: readers must stop trusting it first.
            await self._dest.unpublish(str(folder))
        if replan:
            # A different set of objects (a new job version, a changed layout): start over,
            # dropping the files of the earlier plan that the new one does not name (the
            # state says we wrote them; nothing else in the folder is touched).
            await self._drop_unplanned(records, {path for _, path, _ in planned})
            await self._db(self._store.plan_parts, api, key.name, data_type, planned)
            records = await self._db(self._store.parts, api, key.name, data_type)
            state.replanned.add(data_type)
        if not any(r.done for r in records):
            return records
        # A part recorded done but missing or changed in the destination is fetched again.
        present = (await self._dest.listing(f"{folder}/")).get(str(folder), {})
        return _recheck_done(present, records)

    async def _drop_unplanned(self, records: list[PartRecord], planned: set[str]) -> None:
        by_folder: dict[str, set[str]] = defaultdict(set)
        for record in records:
            if record.path not in planned:
                folder, _, name = record.path.rpartition("/")
                by_folder[folder].add(name)
        for folder, names in by_folder.items():
            await self._dest.remove(folder, names)

    async def _part(self, key: Key, job: _PartJob, failures: list[BaseException],
                    spawned: anyio.Semaphore) -> None:
        api = self._s.api
        watch = _Counted(self._reporter.part(f"{key.name} {job.data_type} "
                                             f"{part_name(job.index)}"), self.activity)

        async def checkpoint(progress: Progress) -> None:
            await self._db(self._store.checkpoint, api, key.name, job.data_type, job.index,
                           progress.offset, progress.etag)

        def counted(exc: RetryableError) -> None:
            self._summary.retries += 1

        try:
            async with self._part_slots:
                # Expired links and bad bytes are the key's to handle (fresh links); a
                # broken line or a busy host is tried again here, as the policy says.
                verified = await retrying(
                    lambda: self._downloader.fetch(job.link, job.sink, job.progress,
                                                   checkpoint, watch, shown=job.source),
                    self._policy, self._clock, on_retry=counted)
                watch.finished()
            # In place now: recording it must finish even when the run is being stopped,
            # or the rerun would fetch a finished part again. A short SQLite write.
            with anyio.CancelScope(shield=True):
                await self._done_parts.add(DonePart(key.name, job.data_type, job.index,
                                                    verified.size, verified.md5,
                                                    verified.etag))
            self._summary.parts += 1
            self._summary.bytes += verified.size
            self._summary.type_bytes[job.data_type] += verified.size
        except (RemoteError, IntegrityError) as exc:
            failures.append(exc)  # siblings go on: their parts are good and are kept
        finally:
            watch.finished()
            spawned.release()

    async def _publish(self, key: Key, data_type: str) -> None:
        api = self._s.api
        records = await self._db(self._store.parts, api, key.name, data_type)
        folder = key_folder(self._s.layout, key, data_type)
        parts = [ManifestPart(r.path.rpartition("/")[2], r.size or 0, r.md5 or "", r.source,
                              r.stored_etag) for r in records]
        manifest = document(key=key.name, data_type=data_type, api=api, parts=parts,
                            completed_at=self._clock.now())
        rows = await self._dest.publish(str(folder), manifest, {p.file for p in parts})
        if rows is not None:
            self._summary.type_rows[data_type] += rows
        await self._db(self._store.finish_unit, api, key.name, data_type)

    async def _db(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """SQLite off the event loop."""
        return await anyio.to_thread.run_sync(lambda: method(*args, **kwargs))


class _Counted:
    """A part's watch that also counts its bytes into the run's activity."""

    def __init__(self, watch: PartWatch, activity: Activity) -> None:
        self._watch = watch
        self._activity = activity

    def started(self, total: int | None) -> None:
        self._watch.started(total)

    def advanced(self, count: int) -> None:
        self._activity.bytes += count
        self._watch.advanced(count)

    def finished(self) -> None:
        self._watch.finished()


class GroupWrite(Generic[T]):
    """Records written together: what arrives while a write is under way joins the next.

    ``add`` returns once its record is committed. Many small parts finish at nearly the
    same time; one transaction (and one worker-thread trip) for all of them costs far
    less than one each. A failed write fails every record that waited for it and every
    later one: the state can no longer be trusted to take more.
    """

    def __init__(self, write: Callable[[list[T]], None]) -> None:
        self._write = write
        self._pending: list[T] = []
        self._added = 0
        self._written = 0
        self._error: Exception | None = None
        self._lock = anyio.Lock()

    async def add(self, record: T) -> None:
        number = self._added
        self._added += 1
        self._pending.append(record)
        async with self._lock:
            if number < self._written:
                return  # an earlier writer took it along
            if self._error is not None:
                raise self._error
            batch, self._pending = self._pending, []
            taken = self._added
            with anyio.CancelScope(shield=True):  # short; a half-known batch helps nobody
                try:
                    await anyio.to_thread.run_sync(self._write, batch)
                except Exception as exc:
                    self._error = exc
                    raise
            self._written = taken


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [leaf for error in group.exceptions
            for leaf in (_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])]


def _recheck_done(present: dict[str, Stored], records: list[PartRecord]) -> list[PartRecord]:
    """``records``, with parts recorded done but missing or of another size undone."""
    def intact(record: PartRecord) -> bool:
        stored = present.get(record.path.rpartition("/")[2])
        return stored is not None and stored.size == record.size

    return [r if not r.done or intact(r) else replace(r, done=False, offset=0)
            for r in records]


_SEVERITY = (Status.FAILED, Status.NOT_READY, Status.GONE, Status.DONE)


def _worst_result(results: list[KeyResult]) -> KeyResult:
    """What a key's units add up to: its worst outcome."""
    return min(results, key=lambda r: _SEVERITY.index(r.status)
               if r.status in _SEVERITY else 0)


def _worst(failures: list[BaseException]) -> BaseException:
    """The failure that decides what the key does next: a link that cannot be fetched (fresh
    links would not help), then bad bytes, then expiry, then others."""
    for kind in (PermanentError, IntegrityError, LinkExpiredError):
        for failure in failures:
            if isinstance(failure, kind):
                return failure
    return failures[0]
