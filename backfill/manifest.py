"""The per-key record on disk: ``_manifest.json`` (what the folder holds) and ``_SUCCESS``.

Both are written last, after every part is in place, so a reader that waits for
``_SUCCESS`` (Spark, Hive, Airflow sensors) never sees a half-filled folder.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from backfill.layout import MANIFEST, MARKER, PARTIAL_SUFFIX


@dataclass(frozen=True)
class ManifestPart:
    file: str
    size: int
    md5: str
    source: str
    """The link the part came from, without its signed query."""


def publish(folder: Path, *, key: str, data_type: str, api: str,
            parts: list[ManifestPart]) -> None:
    """Write the manifest and the marker; drop leftovers that the manifest does not name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {p.file for p in parts}
    for entry in folder.iterdir():
        stale_part = entry.name.startswith("part-") and entry.name not in names
        if stale_part or entry.name.endswith(PARTIAL_SUFFIX):
            entry.unlink(missing_ok=True)
    document = {
        "key": key,
        "data_type": data_type,
        "api": api,
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parts": [asdict(p) for p in parts],
    }
    _atomic_write(folder / MANIFEST, json.dumps(document, indent=2).encode() + b"\n")
    _atomic_write(folder / MARKER, b"")


def unpublish(folder: Path) -> None:
    """Remove the marker first: from now on the folder is being rewritten."""
    (folder / MARKER).unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
