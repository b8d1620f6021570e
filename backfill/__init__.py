"""backfill: pull GrowingIO raw event exports into a folder or a bucket, fast, resumably
and verifiably. The library entry point is :func:`fetch` (see :mod:`backfill.library`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["BackfillError", "Summary", "fetch", "fetch_async"]

if TYPE_CHECKING:
    from backfill.errors import BackfillError
    from backfill.library import fetch, fetch_async
    from backfill.model import Summary


def __getattr__(name: str) -> Any:
    # Imported on first use: `backfill --help` must not pay for the library's imports.
    if name in ("fetch", "fetch_async"):
        from backfill import library

        return getattr(library, name)
    if name == "Summary":
        from backfill.model import Summary

        return Summary
    if name == "BackfillError":
        from backfill.errors import BackfillError

        return BackfillError
    raise AttributeError(f"module 'backfill' has no attribute {name!r}")
