"""The one exception tree of backfill.

Every error a user can meet derives from :class:`BackfillError`; the CLI catches
only that root, prints ``str(error)`` as one line and exits with ``exit_code``::

    BackfillError                 exit 1
    ├── UsageError                exit 2  bad flags, dates, config
    │   └── OutputError                   the output folder: unwritable, full, in use
    ├── AuthError                 exit 3  credentials or token rejected
    │   └── TokenError                    no token to be had: an unusable answer (a portal)
    ├── RemoteError               exit 1  the API or a link answered something unusable
    │   ├── RetryableError                429, 5xx, connection trouble: try again later
    │   ├── LinkExpiredError              a signed link expired: ask the API again
    │   └── PermanentError                other 4xx: this key cannot be fetched
    ├── IntegrityError            exit 1  a download failed verification
    ├── OutageError               exit 1  a service stayed unreachable past the outage budget
    └── Interrupted               exit 130 SIGINT or SIGTERM; the state is consistent

Messages never contain secrets: callers pass redacted URLs and never a token.
"""

from __future__ import annotations

import errno
from datetime import datetime
from enum import IntEnum


class ExitCode(IntEnum):
    """What a command's exit status means; scripts and schedulers rely on these."""

    OK = 0
    FAILED = 1
    """Some keys failed (keys beyond retention too), or an outage outlived its budget."""
    USAGE = 2
    AUTH = 3
    NOT_READY = 4
    """Some keys are not ready yet: run again later."""
    INTERRUPTED = 130


EXIT_CODES = """\
Exit codes: 0 all requested keys complete; 1 some keys failed (including keys beyond
retention); 2 usage or configuration error; 3 authentication rejected; 4 some keys not
ready yet, run again later; 130 interrupted."""


class BackfillError(Exception):
    """Root of every error backfill raises on purpose."""

    exit_code: int = ExitCode.FAILED


class UsageError(BackfillError):
    """The command line, a date, the configuration or the output folder is wrong."""

    exit_code = ExitCode.USAGE


class OutputError(UsageError):
    """The output folder cannot be used: not writable, a file, full, or locked by a run."""

    @classmethod
    def from_os_error(cls, exc: OSError, path: object) -> OutputError:
        """Translate a failed write of ``path``; a full disk gets its own advice."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return cls(f"disk full while writing in {path}: free some space and run again "
                       "(finished parts are kept)")
        return cls(f"cannot write {path}: {exc.strerror or exc}")


class AuthError(BackfillError):
    """The API rejected the credentials or the token."""

    exit_code = ExitCode.AUTH


class TokenError(AuthError):
    """No token could be had: the token endpoint answered something unusable (a portal's
    page, JSON without a token) or kept failing. Judged once for the whole run."""


class RemoteError(BackfillError):
    """The API or an object store answered something the tool cannot use."""


class RetryableError(RemoteError):
    """A transient failure (429, 5xx, a dropped connection); ``retry_after`` in seconds.

    ``outage`` says the failure was part of a service-wide outage: the run judges it (see
    :mod:`backfill.net.outage`), and it does not count against the key's own retries.
    """

    def __init__(self, message: str, *, retry_after: float | None = None,
                 outage: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.outage = outage


class LinkExpiredError(RemoteError):
    """A signed download link is no longer valid; fresh links must be requested (trying
    the same link again would not help)."""


class PermanentError(RemoteError):
    """A failure that retrying will not fix (a 4xx other than 401/429)."""


class IntegrityError(BackfillError):
    """A downloaded part failed its length, checksum or gzip check."""


class OutageError(BackfillError):
    """A service did not answer any call for longer than the outage budget: stop the run.

    Not a :class:`RemoteError`: it ends the run, not one key.
    """

    def __init__(self, service: str, since: datetime, seconds: float, problem: str) -> None:
        self.service, self.since, self.seconds, self.problem = service, since, seconds, problem
        super().__init__(f"{service} has not answered since {since:%Y-%m-%d %H:%M:%S} UTC "
                         f"({_minutes(seconds)}; last: {problem})")


def _minutes(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s" if whole >= 60 else f"{whole} s"


class Interrupted(BackfillError):
    """The run was stopped by a signal after saving its state."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}: finished parts are kept; run the "
                         "same command again to resume")


def flatten(error: BaseException) -> BaseException:
    """What to report of ``error``: an exception group (from a task group) whose every
    exception is one of ours (or a stop) is reported as its first of ours, one line; a
    group that holds anything else (a bug) is returned whole, to be raised with its
    traceback. Used once, where the library (or the command line) hands an error out."""
    if not isinstance(error, BaseExceptionGroup):
        return error
    leaves = _leaves(error)
    if not all(isinstance(e, BackfillError | KeyboardInterrupt) for e in leaves):
        return error
    ours = [e for e in leaves if isinstance(e, BackfillError)]
    return (ours or leaves)[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return found
