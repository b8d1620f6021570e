"""The state store: a state file written by an earlier release opens, migrates, and keeps
what it knew. The schema of version 1 is frozen here as that release wrote it: editing a
migration in place (instead of adding one) breaks this test."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from backfill.model import DonePart, Status
from backfill.state.store import Store

RELEASE_1 = """
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
INSERT INTO units VALUES ('v2', '2026112007', 'visit', 'done', 1, NULL, 1, 4096,
                          '2026-11-20T00:00:00', '2026-11-20T00:01:00', '2026-11-20T00:01:00');
INSERT INTO units VALUES ('v2', '2026112008', 'visit', 'active', 1, NULL, 0, 0,
                          '2026-11-20T00:00:00', NULL, '2026-11-20T00:01:00');
INSERT INTO parts VALUES ('v2', '2026112007', 'visit', 0,
                          'visit/dt=2026-11-20/hour=07/part-00000.csv.gz',
                          'https://links/x/part-00000-a-c000.csv.gz', 4096,
                          '0123456789abcdef0123456789abcdef', 1, 4096, '"etag-1"');
INSERT INTO parts VALUES ('v2', '2026112008', 'visit', 0,
                          'visit/dt=2026-11-20/hour=08/part-00000.csv.gz',
                          'https://links/x/part-00000-b-c000.csv.gz', NULL, NULL, 0, 1024,
                          '"etag-2"');
PRAGMA user_version = 1;
"""


def _release_1_state(folder: Path) -> None:
    folder.mkdir(parents=True)
    db = sqlite3.connect(folder / "state.sqlite")
    db.executescript(RELEASE_1)
    db.close()


def test_a_state_file_of_release_1_opens_migrated_with_what_it_knew(tmp_path: Path) -> None:
    folder = tmp_path / "out" / ".backfill"
    _release_1_state(folder)
    store = Store(folder, lock=True)
    try:
        assert store.set_aside is None  # an old file is not a damaged one
        assert store.statuses("v2", ["2026112007", "2026112008"]) == {
            ("2026112007", "visit"): Status.DONE, ("2026112008", "visit"): Status.ACTIVE}
        done, = store.parts("v2", "2026112007", "visit")
        assert (done.done, done.size, done.etag, done.stored_etag) == (True, 4096,
                                                                      '"etag-1"', None)
        resumable, = store.parts("v2", "2026112008", "visit")
        assert (resumable.done, resumable.offset, resumable.etag) == (False, 1024, '"etag-2"')
        # And it takes what this release writes.
        store.parts_done("v2", [DonePart("2026112008", "visit", 0, 2048, "f" * 32, "s-etag")])
        assert store.parts("v2", "2026112008", "visit")[0].stored_etag == "s-etag"
    finally:
        store.close()
    db = sqlite3.connect(folder / "state.sqlite")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 2
    finally:
        db.close()
