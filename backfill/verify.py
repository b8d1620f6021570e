"""``backfill verify``: check finished keys on disk against their manifests.

A damaged unit (a part missing, resized, altered, or not gzip to its end) is marked
failed in the state, with what was wrong, so that the next ``run`` fetches it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from backfill.config import Settings
from backfill.download import check_part
from backfill.errors import IntegrityError
from backfill.keys import Key
from backfill.layout import MANIFEST, MARKER, key_folder
from backfill.store import Status, Store


@dataclass
class VerifyReport:
    checked: int = 0
    parts: int = 0
    damaged: dict[str, str] = field(default_factory=dict)
    """``"key type"`` → what is wrong."""


def verify(store: Store, settings: Settings, keys: list[Key] | None, *,
           deep: bool = False) -> VerifyReport:
    """Check every done unit of ``settings.api`` (within ``keys`` when given). Blocks.

    Each part's length and MD5 against its manifest, and its gzip framing; ``deep``
    inflates every gzip stream to its end as well.
    """
    wanted = {k.name for k in keys} if keys is not None else None
    report = VerifyReport()
    for unit in store.units(settings.api):
        if unit.status is not Status.DONE or (wanted is not None and unit.key not in wanted):
            continue
        report.checked += 1
        key = Key.parse(unit.key)
        folder = settings.out / key_folder(settings.layout, key, unit.data_type)
        problem = _check_folder(folder, report, deep)
        if problem:
            report.damaged[f"{unit.key} {unit.data_type}"] = problem
            store.mark_damaged(settings.api, unit.key, unit.data_type, problem)
    return report


def _check_folder(folder: Path, report: VerifyReport, deep: bool) -> str | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        parts = manifest["parts"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST} in {folder}"
    if not (folder / MARKER).exists():
        return f"no {MARKER} in {folder}"
    for part in parts:
        path = folder / part["file"]
        try:
            check_part(path, part["size"], part["md5"], str(path), deep=deep)
        except FileNotFoundError:
            return f"{path} is missing"
        except (IntegrityError, OSError) as exc:
            return str(exc)
        report.parts += 1
    return None
