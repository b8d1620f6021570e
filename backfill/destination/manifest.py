"""The per-unit record: ``_manifest.json`` (what the folder holds) and ``_SUCCESS``.

Both are written last, after every part is in place, so a reader that waits for
``_SUCCESS`` (Spark, Hive, Airflow sensors) never sees a half-filled folder. This module
builds the manifest and writes both into a local folder; object stores write the same
bytes (:mod:`backfill.destination.object_store`).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from backfill.layout import MANIFEST, MARKER, PARTIAL_SUFFIX, partial_name
from backfill.model import ManifestPart


def document(*, key: str, data_type: str, api: str, parts: list[ManifestPart],
             completed_at: datetime) -> bytes:
    """The manifest's bytes."""
    entries = [{k: v for k, v in asdict(p).items() if v is not None} for p in parts]
    return json.dumps({
        "key": key,
        "data_type": data_type,
        "api": api,
        "completed_at": completed_at.astimezone(UTC).isoformat(timespec="seconds"),
        "parts": entries,
    }, indent=2).encode() + b"\n"


def parse(data: bytes) -> list[ManifestPart]:
    """The parts a manifest lists; raises ``ValueError`` if it is not one of ours."""
    try:
        entries = json.loads(data)["parts"]
        return [ManifestPart(e["file"], int(e["size"]), e["md5"], e["source"], e.get("etag"),
                             e.get("rows"), e.get("source_md5"), e.get("source_size"))
                for e in entries]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a manifest: {exc}") from None


def named(data: bytes) -> set[str]:
    """The files a manifest of ours names; none when it is not one of ours."""
    try:
        return {part.file for part in parse(data)}
    except ValueError:
        return set()


def stale(earlier: set[str], names: set[str]) -> set[str]:
    """What a publish of ``names`` drops: the files the folder's earlier manifest named and
    the new one does not (an older job version had more parts), and our temporary names of
    either. Never a file merely because its name looks like a part. Pure."""
    return (earlier - names) | {partial_name(name) for name in earlier | names}


def publish(folder: Path, manifest: bytes, names: set[str]) -> None:
    """Drop what :func:`stale` names, then write the manifest, then the marker."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        earlier = named((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        earlier = set()
    remove(folder, stale(earlier, names))
    _atomic_write(folder / MANIFEST, manifest)
    _atomic_write(folder / MARKER, b"")


def remove(folder: Path, names: set[str]) -> None:
    """Delete ``names`` in ``folder``, each a file backfill wrote; absent ones are fine."""
    for name in names:
        (folder / name).unlink(missing_ok=True)


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
