"""Integrations with the engines users already run (optional extras)."""
