"""backfill: pull GrowingIO raw event exports onto disk, fast, resumably and verifiably."""

__version__ = "0.1.0"
