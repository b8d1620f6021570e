"""The state store: what is done, in SQLite under the output folder.

A *unit* is one key of one data type (``all`` for v1). Every change is one
transaction; the schema is versioned and migrations are recorded in the same
transaction that applies them. Methods block: call them from a worker thread.
Nothing secret is stored: links are kept without their query.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backfill.clock import system_clock
from backfill.errors import OutputError
from backfill.layout import MARKER, STATE_DIR
from backfill.model import DonePart, PartRecord, Status, UnitRecord

_MIGRATIONS = (
    """
    CREATE TABLE units (
        api TEXT NOT NULL, key TEXT NOT NULL, data_type TEXT NOT NULL,
        status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        parts INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
        started_at TEXT, finished_at TEXT, updated_at TEXT NOT NULL,
        PRIMARY KEY (api, key, data_type)
    );
    CREATE TABLE parts (
        api TEXT NOT NULL, key TEXT NOT NULL, data_type TEXT NOT NULL, idx INTEGER NOT NULL,
        path TEXT NOT NULL, source TEXT NOT NULL, size INTEGER, md5 TEXT,
        done INTEGER NOT NULL DEFAULT 0, offset INTEGER NOT NULL DEFAULT 0, etag TEXT,
        PRIMARY KEY (api, key, data_type, idx)
    );
    """,
    "ALTER TABLE parts ADD COLUMN stored_etag TEXT",
)


STATE_FILE = "state.sqlite"


def has_state(folder: Path) -> bool:
    """Whether a run ever wrote state into the state ``folder`` (creating nothing)."""
    return (folder / STATE_FILE).exists()


def running_pid(folder: Path) -> int | None:
    """The process of a run that holds the state ``folder`` now, if one does: the pid its
    lock file names, when that process is alive. Takes no lock and creates nothing."""
    try:
        pid = int((folder / "lock").read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, someone else's
    return pid


def _now() -> str:
    """When a row changes, for people reading the state: the machine's wall clock."""
    return system_clock().now().isoformat(timespec="seconds")


class Store:
    """SQLite state of one output, with an exclusive lock while a run holds it.

    ``folder`` is the state folder (``Settings.state_folder``): inside a local output, or
    a cache of a remote one in the user's state directory.
    """

    def __init__(self, folder: Path, owner: object = None, *, lock: bool = False) -> None:
        self.folder = folder
        self.owner = owner if owner is not None else (
            folder.parent if folder.name == STATE_DIR else folder)
        """What a lock refusal names: the output the state belongs to."""
        self._where = (f"output folder {self.owner}" if isinstance(self.owner, Path)
                       and folder == self.owner / STATE_DIR else f"state folder {folder}")
        self._mutex = threading.Lock()
        self._lock_file: int | None = None
        self.set_aside: Path | None = None
        """Where a state file SQLite could not use was moved (it is rebuilt from the
        destination's markers: the destination is the truth)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot use {self._where}: {_reason(exc)}") from None
        if lock:
            self.lock()  # first: a damaged file is set aside only by its lock's holder
        try:
            self._db = self._open(check=lock)
        except _Damaged as damage:
            self.set_aside = self._put_aside(damage.reason)
            self._db = self._open(check=False)
        except BaseException:
            self._unlock()
            raise

    def _open(self, *, check: bool) -> sqlite3.Connection:
        """Connect, migrate, and (``check``) ask SQLite whether every page reads back;
        raises :class:`_Damaged` for a file it cannot use."""
        try:
            db = sqlite3.connect(self.folder / STATE_FILE, check_same_thread=False,
                                 isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"cannot use {self._where}: {_reason(exc)}") from None
        self._db = db
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a crash never corrupts the state; a power cut may lose the last
            # commits, which only means fetching those parts again (files are checked).
            db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            if check:  # 60 ms for a year of hourly keys of ten types
                verdict = db.execute("PRAGMA quick_check").fetchone()[0]
                if verdict != "ok":
                    raise _Damaged(str(verdict))
        except sqlite3.DatabaseError as exc:
            db.close()  # never left for the garbage collector (Python 3.13 warns)
            if getattr(exc, "sqlite_errorcode", None) in _DAMAGED or _damaged_text(exc):
                raise _Damaged(str(exc)) from None
            raise OutputError(f"cannot use {self._where}: {_reason(exc)}") from None
        except BaseException:
            db.close()
            raise
        return db

    def _put_aside(self, reason: str) -> Path:
        """Move the damaged file (and its journal) beside itself, under the lock."""
        holding = self._lock_file is not None
        if not holding:
            self.lock()
        try:
            stamp = system_clock().now().strftime("%Y%m%dT%H%M%SZ")
            aside = self.folder / f"{STATE_FILE}.damaged-{stamp}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.folder / f"{STATE_FILE}{suffix}", f"{aside}{suffix}")
        except OSError as exc:
            raise OutputError(f"cannot use {self._where}: its state file is damaged "
                              f"({reason}) and cannot be moved aside: {_reason(exc)}") from None
        finally:
            if not holding:
                self._unlock()
        return aside

    def close(self) -> None:
        self._db.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def lock(self) -> None:
        """Take the folder for this process; a second run on it is refused at once."""
        try:
            fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot use {self._where}: {_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(f"another backfill (pid {holder}) is using "
                             f"{self.owner}; wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_file = fd

    def _migrate(self) -> None:
        with self._mutex:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in script.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {number}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def _write(self, statements: Iterable[tuple[str, tuple[object, ...]]]) -> None:
        with self._mutex:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for sql, args in statements:
                        self._db.execute(sql, args)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if "full" in str(exc):
                    raise OutputError.from_os_error(OSError(errno.ENOSPC, "full"),
                                                    self.folder) from None
                raise OutputError(f"cannot write the state in {self.folder}: {exc}") from None

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._mutex:
            return self._db.execute(sql, args).fetchall()

    # --- units -------------------------------------------------------------------------

    def statuses(self, api: str, keys: list[str]) -> dict[tuple[str, str], Status]:
        """Status of every known unit of ``keys``: {(key, data_type): status}."""
        rows = self._read("SELECT key, data_type, status FROM units WHERE api = ?", (api,))
        wanted = set(keys)
        return {(k, t): Status(s) for k, t, s in rows if k in wanted}

    def units(self, api: str | None = None) -> list[UnitRecord]:
        rows = self._read(
            "SELECT api, key, data_type, status, attempts, last_error, parts, bytes, updated_at"
            " FROM units" + (" WHERE api = ?" if api else "") + " ORDER BY key, data_type",
            (api,) if api else ())
        return [UnitRecord(a, k, t, Status(s), n, e, p, b, u)
                for a, k, t, s, n, e, p, b, u in rows]

    def set_status(self, api: str, key: str, types: Iterable[str], status: Status,
                   error: str | None = None, *, attempt: bool = False) -> None:
        """Set the status of units (creating them), in one transaction."""
        self.set_statuses(api, [(key, tuple(types))], status, error, attempt=attempt)

    def set_statuses(self, api: str, keys: Iterable[tuple[str, tuple[str, ...]]],
                     status: Status, error: str | None = None, *,
                     attempt: bool = False) -> None:
        """Set one status on many keys' units (creating them), in one transaction."""
        now = _now()
        self._write(
            ("INSERT INTO units (api, key, data_type, status, attempts, last_error, started_at,"
             " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (api, key, data_type) DO"
             " UPDATE SET status = excluded.status, last_error = excluded.last_error,"
             " attempts = attempts + ?, updated_at = excluded.updated_at,"
             " started_at = COALESCE(started_at, excluded.started_at)",
             (api, key, t, status.value, int(attempt), error, now, now, int(attempt)))
            for key, types in keys for t in types)

    def finish_unit(self, api: str, key: str, data_type: str) -> None:
        """Mark a unit done once all its parts are recorded."""
        now = _now()
        self._write([(
            "UPDATE units SET status = ?, last_error = NULL, finished_at = ?, updated_at = ?,"
            " parts = (SELECT COUNT(*) FROM parts p WHERE p.api = units.api AND p.key = units.key"
            " AND p.data_type = units.data_type AND p.done),"
            " bytes = (SELECT COALESCE(SUM(size), 0) FROM parts p WHERE p.api = units.api AND"
            " p.key = units.key AND p.data_type = units.data_type AND p.done)"
            " WHERE api = ? AND key = ? AND data_type = ?",
            (Status.DONE.value, now, now, api, key, data_type))])

    def adopt(self, api: str, done: list[tuple[str, str, int, int]],
              undone: list[tuple[str, str]]) -> None:
        """Bring the cache in line with the destination, in one transaction: units it
        shows complete, as (key, data_type, parts, bytes), are done; ``undone`` units,
        recorded done but without a marker there, are to be fetched again."""
        now = _now()
        statements: list[tuple[str, tuple[object, ...]]] = []
        for key, data_type, parts, size in done:
            statements += [
                ("INSERT INTO units (api, key, data_type, status, parts, bytes, finished_at,"
                 " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (api, key, data_type)"
                 " DO UPDATE SET status = excluded.status, last_error = NULL, parts ="
                 " excluded.parts, bytes = excluded.bytes, finished_at = excluded.finished_at,"
                 " updated_at = excluded.updated_at",
                 (api, key, data_type, Status.DONE.value, parts, size, now, now)),
                # Whatever plan the cache had is not the one that finished.
                ("DELETE FROM parts WHERE api = ? AND key = ? AND data_type = ?",
                 (api, key, data_type)),
            ]
        statements += [
            ("UPDATE units SET status = ?, last_error = ?, updated_at = ? WHERE api = ? AND"
             " key = ? AND data_type = ?", (Status.PENDING.value, f"no {MARKER} in the "
                                            "destination", now, api, key, data_type))
            for key, data_type in undone]
        self._write(statements)

    def mark_damaged(self, api: str, key: str, data_type: str, problem: str) -> None:
        """A done unit failed verification: fetch all its parts again on the next run."""
        self._write([
            ("UPDATE units SET status = ?, last_error = ?, updated_at = ? WHERE api = ? AND"
             " key = ? AND data_type = ?",
             (Status.FAILED.value, f"damaged on disk: {problem}", _now(), api, key, data_type)),
            ("UPDATE parts SET done = 0, offset = 0 WHERE api = ? AND key = ? AND data_type = ?",
             (api, key, data_type)),
        ])

    # --- parts -------------------------------------------------------------------------

    def parts(self, api: str, key: str, data_type: str) -> list[PartRecord]:
        rows = self._read(
            "SELECT idx, path, source, size, md5, done, offset, etag, stored_etag FROM parts"
            " WHERE api = ? AND key = ? AND data_type = ? ORDER BY idx", (api, key, data_type))
        return [PartRecord(i, p, s, z, m, bool(d), o, e, t)
                for i, p, s, z, m, d, o, e, t in rows]

    def plan_parts(self, api: str, key: str, data_type: str,
                   parts: list[tuple[int, str, str]]) -> None:
        """Record the parts of a unit as (index, path, source), replacing another plan."""
        self._write([
            ("DELETE FROM parts WHERE api = ? AND key = ? AND data_type = ?",
             (api, key, data_type)),
            *(("INSERT INTO parts (api, key, data_type, idx, path, source) VALUES"
               " (?, ?, ?, ?, ?, ?)", (api, key, data_type, i, p, s)) for i, p, s in parts),
        ])

    def rename_sources(self, api: str, key: str, data_type: str, sources: list[str]) -> None:
        """The links of a unit's parts, in index order, now served by another host."""
        self._write(("UPDATE parts SET source = ? WHERE api = ? AND key = ? AND data_type = ?"
                     " AND idx = ?", (source, api, key, data_type, index))
                    for index, source in enumerate(sources))

    def checkpoint(self, api: str, key: str, data_type: str, index: int, offset: int,
                   etag: str | None) -> None:
        """Bytes of a part safely on disk (fsynced) so far, and the object's ETag."""
        self._write([("UPDATE parts SET offset = ?, etag = ? WHERE api = ? AND key = ? AND"
                      " data_type = ? AND idx = ?", (offset, etag, api, key, data_type, index))])

    def parts_done(self, api: str, parts: list[DonePart]) -> None:
        """Parts verified and renamed into place, in one transaction."""
        self._write(("UPDATE parts SET done = 1, size = ?, md5 = ?, offset = ?, stored_etag = ?"
                     " WHERE api = ? AND key = ? AND data_type = ? AND idx = ?",
                     (p.size, p.md5, p.size, p.stored_etag, api, p.key, p.data_type, p.index))
                    for p in parts)


_DAMAGED = (11, 26)
"""SQLITE_CORRUPT and SQLITE_NOTADB: a file SQLite cannot use, whatever it holds."""


class _Damaged(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _damaged_text(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)
