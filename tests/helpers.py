"""Plain aiohttp calls against the emulator, independent of the backfill client."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from backfill.emulator import DEMO_CREDENTIALS, Credentials
from backfill.emulator.clock import machine_time


def sign(secret: str, project: str, ai: str, tm: int) -> str:
    # Written out again on purpose: a bug shared with backfill.growingio.auth would go unseen.
    message = f"POST\n/auth/token\nproject={project}&ai={ai}&tm={tm}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class Api:
    """A tiny hand-rolled client: token, export calls, downloads."""

    def __init__(self, session: aiohttp.ClientSession, url: str,
                 creds: Credentials = DEMO_CREDENTIALS) -> None:
        self.session, self.url, self.creds = session, url, creds
        self.token: str | None = None

    async def token_reply(self, *, secret: str | None = None, tm: int | None = None,
                          client_id: str | None = None, body: str | None = None) -> Reply:
        c = self.creds
        tm = int(machine_time() * 1000) if tm is None else tm
        auth = sign(secret or c.secret, c.project_uid, c.ai, tm)
        if body is None:
            body = f"project={c.project_uid}&ai={c.ai}&tm={tm}&auth={auth}"
        async with self.session.post(f"{self.url}/auth/token", data=body.encode(),
                                     headers={"X-Client-Id": client_id or c.client_id}) as r:
            return Reply(r.status, r.headers, await r.read())

    async def login(self) -> str:
        reply = await self.token_reply()
        assert reply.status == 200, reply.body
        self.token = reply.json()["code"]
        return self.token

    def auth_headers(self, token: str | None = None) -> dict[str, str]:
        return {"X-Client-Id": self.creds.client_id,
                "Authorization": f"Token {token or self.token}"}

    async def get(self, path: str, headers: dict[str, str] | None = None,
                  **params: str) -> Reply:
        if headers is None:
            headers = self.auth_headers()
        async with self.session.get(f"{self.url}{path}", headers=headers, params=params) as r:
            return Reply(r.status, r.headers, await r.read())

    async def v2(self, key: str, data_type: str | None = "visit", export_type: str = "hour",
                 **params: str) -> Reply:
        middle = f"{export_type}/{data_type}" if data_type else export_type
        return await self.get(f"/v2/insights/{middle}/{self.creds.ai}/{key}.json", **params)

    async def v1(self, key: str, **params: str) -> Reply:
        return await self.get(f"/insights/{self.creds.ai}/{key}.json", **params)

    async def fetch(self, link: str, headers: dict[str, str] | None = None) -> Reply:
        async with self.session.get(link, headers=headers or {}) as r:
            return Reply(r.status, r.headers, await r.read())

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/_emulator/stats") as r:
            result: dict[str, Any] = await r.json()
            return result


def env_for(url: str, **changes: str) -> dict[str, str]:
    """The environment of a user pointing backfill at the emulator at ``url``."""
    import os

    c = DEMO_CREDENTIALS
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIO_")}
    env.update(GIO_BASE_URL=url, GIO_CLIENT_ID=c.client_id, GIO_SECRET=c.secret,
               GIO_PROJECT_UID=c.project_uid, GIO_AI=c.ai)
    env.update(changes)
    return {k: v for k, v in env.items() if v}


def set_clock(monkeypatch: Any, moment: Any) -> None:
    """Run this test at ``moment`` (an aware datetime): the client and the emulator, in
    this process and in the CLI processes it starts, read ``BACKFILL_CLOCK_OFFSET``."""
    from backfill.emulator.clock import OFFSET_VARIABLE

    monkeypatch.delenv(OFFSET_VARIABLE, raising=False)
    monkeypatch.setenv(OFFSET_VARIABLE, repr(moment.timestamp() - machine_time()))


def command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "backfill", *args]


CLI_TIMEOUT = 180.0
"""Seconds any CLI run of the tests may take: a hang fails its test, not the whole suite."""


async def cli(args: list[str], env: dict[str, str], cwd: Any, *,
              timeout: float = CLI_TIMEOUT) -> tuple[int, str, str]:  # noqa: ASYNC109
    """Run the real CLI in a process of its own: (exit code, stdout, stderr). A run past
    ``timeout`` is killed, and the test fails with what it printed so far. The process is
    forked from one that imported the command line already (see :mod:`tests.forker`),
    unless the run needs an interpreter of its own (a ``PYTHONPATH`` of the test's, which
    only a fresh one reads)."""
    import os

    import pytest

    from tests.forker import FORKER

    if env.get("PYTHONPATH", "") != os.environ.get("PYTHONPATH", ""):
        code, out, err = await _fresh(args, env, cwd, timeout)
    else:
        code, out, err = await FORKER.run(args, env, cwd, timeout)
    if code is None:
        pytest.fail(f"backfill {' '.join(args)} still ran after {timeout:g} s\n"
                    f"stdout so far:\n{out}\nstderr so far:\n{err}")
    return code, out, err


async def _fresh(args: list[str], env: dict[str, str], cwd: Any,
                 timeout: float) -> tuple[int | None, str, str]:  # noqa: ASYNC109
    """``backfill args`` in a new interpreter: (exit code, None past ``timeout``; stdout,
    stderr)."""
    import subprocess

    import anyio

    with anyio.move_on_after(timeout):
        done = await anyio.run_process(command(*args), env=env, cwd=cwd, check=False,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return done.returncode, done.stdout.decode(), done.stderr.decode()
    return None, "", ""


def assert_no_secrets(texts: list[str], token: str | None) -> None:
    """Neither the private key, nor the token, nor a signed query is in any of ``texts``."""
    for text in texts:
        assert DEMO_CREDENTIALS.secret not in text
        assert token is None or token not in text
        assert "X-Amz-Signature" not in text and "X-Amz-Credential" not in text


def state_text(out: Any) -> str:
    """The state database and the other non-data files under ``out``, as text."""
    from pathlib import Path

    files = [p for p in Path(out).rglob("*") if p.is_file() and not p.name.endswith(".csv.gz")]
    return "\n".join(p.read_bytes().decode(errors="replace") for p in files)


@contextlib.asynccontextmanager
async def loopback(handler: Any) -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.1 that answers every request with ``handler``; yields
    its origin (``http://127.0.0.1:PORT``)."""
    from aiohttp import web

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
