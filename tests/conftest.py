"""What every test gets: asyncio for anyio tests, and a user state folder of its own.

Nothing heavy is imported here: the end-to-end fixtures (the emulator, moto) live in
``tests/e2e/conftest.py``, and a unit test never pays for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def own_state_home(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's user state folder of its own (bucket caches, token locks): nothing a
    test leaves there, nor another suite running beside it, reaches the next."""
    home = tmp_path_factory.mktemp("state-home")
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home
