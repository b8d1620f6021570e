"""SIGINT and SIGTERM, at any moment, end in one clean stop: :class:`Interrupted`.

A signal's Python handler runs between two bytecodes of whatever the main thread does.
Raised from there, an exception lands anywhere: inside an event loop's own machinery,
where it can be swallowed (a run that ignored a SIGTERM and went on polling was seen),
or inside an import's generated code, which makes CPython kill itself with SIGINT at
exit under ``python -m`` (exit -2 instead of 130). So the command line keeps both
signals blocked (:func:`blocked`) and takes them at two places only: inside the event
loop, through a receiver of the loop's own (``loop.add_signal_handler``), and at its very
end. A signal that comes in between waits, pending, and is then received like any other.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

import anyio

from backfill.errors import Interrupted, flatten

T = TypeVar("T")
STOPS = (signal.SIGINT, signal.SIGTERM)
HANDLED: ContextVar[bool] = ContextVar("backfill_signals_handled", default=False)
"""Set while :func:`run_stoppable` takes the signals: nothing inside takes them again."""


def run_stoppable(function: Callable[..., Awaitable[T]], *args: object) -> T:
    """``anyio.run(function, *args)``, stopped cleanly by SIGINT or SIGTERM at any moment.

    Raises :class:`Interrupted` naming the signal once ``function`` has unwound.
    """
    with blocked():
        return anyio.run(_stoppable, function, args)


async def _stoppable(function: Callable[..., Awaitable[T]], args: tuple[object, ...]) -> T:
    received: list[str] = []
    results: list[T] = []
    token = HANDLED.set(True)
    try:
        with _first_of_group():
            await _watched(function, args, received, results)
    finally:
        HANDLED.reset(token)
    if received:
        raise Interrupted(received[0])
    return results[0]


async def _watched(function: Callable[..., Awaitable[T]], args: tuple[object, ...],
                   received: list[str], results: list[T]) -> None:
    async with anyio.create_task_group() as group:
        with anyio.open_signal_receiver(*STOPS) as signals:
            _mask(signal.SIG_UNBLOCK)
            try:
                group.start_soon(_cancel_on_first, signals, group.cancel_scope, received)
                results.append(await function(*args))
                group.cancel_scope.cancel()
            finally:
                _mask(signal.SIG_BLOCK)  # before the receiver closes, never after


@contextlib.contextmanager
def _first_of_group() -> Iterator[None]:
    """The command line's boundary: a group of our errors is one of them (see
    :func:`flatten`); a group with anything else goes on whole, traceback and all."""
    try:
        yield
    except BaseExceptionGroup as errors:
        flat = flatten(errors)
        if flat is errors:
            raise
        raise flat from None


async def stop_on_signal(scope: anyio.CancelScope, received: list[str]) -> None:
    """Cancel ``scope`` on the first SIGINT or SIGTERM, noting its name in ``received``;
    unless someone above (:func:`run_stoppable`) takes them, or this is not the main thread
    (a library call from a worker thread: signals are its host's to handle)."""
    if HANDLED.get() or threading.current_thread() is not threading.main_thread():
        return
    # The host's handlers come back afterwards (an Airflow task's, a notebook's): the
    # loop's receiver would leave the default ones.
    handlers = {s: signal.getsignal(s) for s in STOPS}
    try:
        with anyio.open_signal_receiver(*STOPS) as signals:
            await _cancel_on_first(signals, scope, received)
    finally:
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)


async def _cancel_on_first(signals: object, scope: anyio.CancelScope,
                           received: list[str]) -> None:
    async for signum in signals:  # type: ignore[attr-defined]
        received.append(signal.Signals(signum).name)
        scope.cancel()
        return


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held pending inside, and the handlers of before kept; on the way
    out the mask of before is back, so a pending signal is delivered then (if it was
    unblocked before)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {s: signal.getsignal(s) for s in STOPS}
    before = _mask(signal.SIG_BLOCK)
    try:
        yield
    finally:
        for signum, handler in handlers.items():  # a loop's receiver resets them
            if handler is not None:
                signal.signal(signum, handler)
        if before is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _mask(how: int) -> set[int | signal.Signals] | None:
    if hasattr(signal, "pthread_sigmask"):  # POSIX; elsewhere the handlers do what they can
        return signal.pthread_sigmask(how, STOPS)
    return None
