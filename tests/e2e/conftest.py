"""The end-to-end fixtures: the real emulator over loopback and a real S3 server (moto).
Every test under ``tests/e2e`` is marked ``e2e`` (``pytest -m "not e2e"`` runs the fast
ones alone)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from backfill.keys import BEIJING
from tests.helpers import Api
from tests.s3 import S3_ENV, Bucket, s3_server, s3_server_process

# A fixed, frozen emulated "now": tests move the clock themselves.
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=BEIJING)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated parts are shared by the whole session, as the real data folder would be,
    and by every worker of a parallel one: generation is deterministic and each file is
    written whole then renamed, so two workers that make the same part agree."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    folder = base / "emulator-data"
    folder.mkdir(exist_ok=True)
    return folder


EmulatorFactory = Callable[..., AbstractAsyncContextManager[tuple[RunningEmulator, Api]]]


@pytest.fixture
def emulator_factory(data_dir: Path) -> EmulatorFactory:
    """Start an emulator with config overrides; yields it and a logged-out Api."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[tuple[RunningEmulator, Api]]:
        settings: dict[str, Any] = {"data_dir": data_dir, "now": NOW, "speed": 0.0,
                                    "job_seconds": 60.0, "bytes_per_hour": 16 * 1024,
                                    "rate_limit": 1000}  # rate tests set their own
        settings.update(overrides)
        async with serve(EmulatorConfig(**settings)) as running, aiohttp.ClientSession() as s:
            yield running, Api(s, running.url)

    return start


@pytest.fixture
async def emulator(emulator_factory: EmulatorFactory) -> AsyncIterator[tuple[RunningEmulator, Api]]:
    async with emulator_factory() as pair:
        await pair[1].login()
        yield pair


@pytest.fixture(scope="session")
def s3_endpoint() -> Any:
    """One S3 server (moto) on loopback for the whole session."""
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_process_endpoint() -> Any:
    """One S3 server (moto) in a process of its own, for the table tests (delta-rs)."""
    with s3_server_process() as endpoint:
        yield endpoint


@pytest.fixture
def process_bucket(s3_process_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket on the S3 server of its own process."""
    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": s3_process_endpoint}.items():
        monkeypatch.setenv(name, value)
    return Bucket.create(s3_process_endpoint)


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket, and this process's environment pointing at its server."""
    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    return Bucket.create(s3_endpoint)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
