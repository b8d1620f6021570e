"""Where files go: the folder template, part names, temporary names, redacted links. Pure."""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import urlsplit

from backfill.keys import Granularity, Key

MARKER = "_SUCCESS"
MANIFEST = "_manifest.json"
PARTIAL_SUFFIX = ".partial"
STATE_DIR = ".backfill"


def key_folder(template: str, key: Key, data_type: str) -> PurePosixPath:
    """The folder, relative to the output, that holds one key's parts of one data type.

    Day keys have no hour, so path segments that mention ``{hour}`` are dropped.
    """
    segments = template.split("/")
    if key.granularity is Granularity.DAY:
        segments = [s for s in segments if "{hour}" not in s]
    values = {"type": data_type, "date": key.start.strftime("%Y-%m-%d"),
              "yyyymmdd": key.start.strftime("%Y%m%d"), "hour": key.start.strftime("%H"),
              "key": key.name}
    return PurePosixPath(*(s.format(**values) for s in segments if s))


def part_name(index: int) -> str:
    """Files are named by their index in the key, never after the link."""
    return f"part-{index:05d}.csv.gz"


def partial_name(final_name: str) -> str:
    """The temporary name a part downloads to; hidden, so readers never see it."""
    return f".{final_name}{PARTIAL_SUFFIX}"


def redact(url: str) -> str:
    """A link without its query (the signature), fragment or user info: safe to show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"
