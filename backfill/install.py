"""How to add an extra to this copy of backfill: the one ``pip install`` line a missing
extra's message gives, true for the way this copy was installed.

pip records where a distribution came from when it was not the package index
(``direct_url.json``, PEP 610): a folder (a clone, editable or not), a VCS URL, an
archive. The line installs the extra from the same place, so a clone is never sent to the
index for a package that is not there (or is someone else's). Credentials and queries
of a recorded URL are never repeated.
"""

from __future__ import annotations

import json
import re
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

DISTRIBUTION = "growingio-backfill"


def install_line(extra: str) -> str:
    """``pip install …`` that adds ``extra`` (``tables``, ``aws``, …) to this installation."""
    origin = _origin()
    url = str(origin.get("url", "")) if origin else ""
    if origin and url.startswith("file://") and "vcs_info" not in origin:
        path = unquote(urlsplit(url).path)
        editable = bool(origin.get("dir_info", {}).get("editable"))
        return f"pip install {'-e ' if editable else ''}{shlex.quote(f'{path}[{extra}]')}"
    if origin and url:
        vcs = origin.get("vcs_info")
        where = _public(url)
        if isinstance(vcs, dict) and vcs.get("vcs"):
            commit = vcs.get("commit_id")
            where = f"{vcs['vcs']}+{where}" + (f"@{commit}" if commit else "")
        return f"pip install {shlex.quote(f'{DISTRIBUTION}[{extra}] @ {where}')}"
    source = Path(__file__).resolve().parent.parent
    if _is_our_source(source / "pyproject.toml"):  # a clone on the path, not installed
        return f"pip install {shlex.quote(f'{source}[{extra}]')}"
    return f"pip install {shlex.quote(f'{DISTRIBUTION}[{extra}]')}"


def _origin() -> dict[str, Any] | None:
    """This distribution's ``direct_url.json``: None when it came from an index (or its
    record is unreadable). A clone's build leaves metadata without one beside the
    sources (``*.egg-info``), which the path may list first: the record is looked for in
    every copy of the metadata."""
    for found in metadata.distributions(name=DISTRIBUTION):
        try:
            text = found.read_text("direct_url.json")
            origin = json.loads(text) if text else None
        except (ValueError, OSError):
            continue
        if isinstance(origin, dict):
            return origin
    return None


def _public(url: str) -> str:
    """``url`` without a password or token and without its query: what a line shown to a
    user may repeat. An ssh ``git@`` user stays, and so do environment placeholders
    (``${GIT_TOKEN}``, which PEP 610 records instead of a secret)."""
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    if user == "git" or re.fullmatch(r"\$\{\w+\}(:\$\{\w+\})?", user):
        host = f"{user}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _is_our_source(pyproject: Path) -> bool:
    try:
        return f'name = "{DISTRIBUTION}"' in pyproject.read_text(encoding="utf-8")
    except OSError:
        return False
