"""A faithful emulator of GrowingIO's raw-data export API, for the demo and the tests.

``serve(EmulatorConfig(...))`` runs it on a loopback port; ``create_app`` gives the bare
aiohttp application. See ``app.py`` for the routes.
"""

from backfill.emulator.app import STATE, EmulatorState, create_app
from backfill.emulator.config import (
    DEMO_CREDENTIALS,
    V1_TYPES,
    V2_TYPES,
    Credentials,
    EmulatorConfig,
    Faults,
)
from backfill.emulator.server import RunningEmulator, serve

__all__ = [
    "DEMO_CREDENTIALS",
    "STATE",
    "V1_TYPES",
    "V2_TYPES",
    "Credentials",
    "EmulatorConfig",
    "EmulatorState",
    "Faults",
    "RunningEmulator",
    "create_app",
    "serve",
]
