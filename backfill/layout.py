"""Where files go: the folder template, part names, temporary names, redacted links. Pure."""

from __future__ import annotations

import re
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


_FIELDS = {"date": r"\d{4}-\d{2}-\d{2}", "yyyymmdd": r"\d{8}", "hour": r"\d{2}",
           "key": r"\d{10}|\d{8}"}


def folder_pattern(template: str, data_type: str, *, hourly: bool) -> re.Pattern[str]:
    """A pattern that matches the folders :func:`key_folder` makes for ``data_type``."""
    segments = [s for s in template.split("/") if s and (hourly or "{hour}" not in s)]
    seen: set[str] = set()

    def field(match: re.Match[str]) -> str:
        name = match[1]
        if name == "type":
            return re.escape(data_type)
        if name in seen:
            return f"(?P={name})"
        seen.add(name)
        return f"(?P<{name}>{_FIELDS[name]})"

    parts = (re.sub(r"\\\{(\w+)\\\}", field, re.escape(s)) for s in segments)
    return re.compile("/".join(parts))


def folder_key(template: str, data_type: str, folder: str, granularity: Granularity
               ) -> Key | None:
    """The key whose ``data_type`` folder is ``folder``, or None: the inverse of
    :func:`key_folder`."""
    match = folder_pattern(template, data_type,
                           hourly=granularity is Granularity.HOUR).fullmatch(folder)
    if match is None:
        return None
    found = match.groupdict()
    name = found.get("key") or (found.get("yyyymmdd") or (found.get("date") or "")
                                .replace("-", "")) + (found.get("hour") or "")
    try:
        key = Key.parse(name)
    except ValueError:
        return None
    return key if key.granularity is granularity else None


def literal_prefix(template: str, data_type: str) -> str:
    """The part of every ``data_type`` folder that does not depend on the key."""
    return template.replace("{type}", data_type).split("{", 1)[0]


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


def object_name(source: str) -> str:
    """What a (redacted) link names, whatever host serves it: its path. A unit's parts are
    numbered and matched by it, so a link host that changes (the demo's emulator on a new
    port, a new CDN) costs no finished part."""
    return urlsplit(source).path
