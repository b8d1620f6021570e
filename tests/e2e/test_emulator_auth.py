"""The token endpoint and the export endpoints' authentication, as documented."""

from __future__ import annotations

from datetime import timedelta

import pytest

from backfill.emulator.clock import machine_time
from tests.e2e.conftest import EmulatorFactory

pytestmark = pytest.mark.anyio
READY_HOUR = "202611201000"


async def test_signed_request_gets_a_token(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory() as (_, api):
        reply = await api.token_reply()
        assert reply.status == 200
        body = reply.json()
        assert body["status"] == "success"
        assert len(body["code"]) >= 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"secret": "not-the-secret"}, "signature does not match"),
        ({"client_id": "someone-else"}, "unknown client id"),
        ({"tm": int(machine_time() * 1000) - 3_600_000}, "too far"),
        ({"body": "project=demoProjectUid&ai=a1b2c3d4e5f60789"}, "body must be"),
    ],
)
async def test_bad_token_requests_get_401_json(emulator_factory: EmulatorFactory,
                                               change: dict[str, object], message: str) -> None:
    async with emulator_factory() as (running, api):
        reply = await api.token_reply(**change)  # type: ignore[arg-type]
        assert reply.status == 401
        assert message in reply.json()["message"]
        assert running.state.stats()["tokens_issued"] == 0


async def test_a_new_token_revokes_the_previous_one(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory() as (_, api):
        first = await api.login()
        second = await api.login()
        assert first != second
        old = await api.get(f"/v2/insights/hour/visit/{api.creds.ai}/{READY_HOUR}.json",
                            headers=api.auth_headers(first))
        new = await api.get(f"/v2/insights/hour/visit/{api.creds.ai}/{READY_HOUR}.json",
                            headers=api.auth_headers(second))
        assert old.status == 401
        assert new.status == 200


async def test_tokens_expire_after_their_lifetime(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(token_lifetime=timedelta(hours=1)) as (running, api):
        await api.login()
        assert (await api.v2(READY_HOUR)).status == 200
        running.state.clock.advance(3601)
        reply = await api.v2(READY_HOUR)
        assert reply.status == 401
        assert reply.json()["message"] == "token expired"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Client-Id": "demo-client-id"},
        {"X-Client-Id": "demo-client-id", "Authorization": "Bearer x"},
        {"Authorization": "Token x"},
    ],
)
async def test_export_calls_need_client_id_and_token(emulator_factory: EmulatorFactory,
                                                     headers: dict[str, str]) -> None:
    async with emulator_factory() as (_, api):
        await api.login()
        path = f"/v2/insights/hour/visit/{api.creds.ai}/{READY_HOUR}.json"
        assert (await api.get(path, headers=headers)).status == 401


async def test_only_the_documented_token_form_is_accepted(
        emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory() as (_, api):
        token = await api.login()
        path = f"/v2/insights/hour/visit/{api.creds.ai}/{READY_HOUR}.json"
        bare = await api.get(path, headers={"X-Client-Id": api.creds.client_id,
                                            "Authorization": token})
        assert bare.status == 401


async def test_another_projects_ai_is_forbidden(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory() as (_, api):
        await api.login()
        assert (await api.get(f"/v2/insights/hour/visit/ffffffffffffffff/{READY_HOUR}.json")
                ).status == 403


async def test_revoke_fault_answers_401_until_a_new_token(
        emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory() as (running, api):
        await api.login()
        running.state.config.faults.update(revoke_token=1.0)
        assert (await api.v2(READY_HOUR)).status == 401
        running.state.config.faults.update(revoke_token=0.0)
        assert (await api.v2(READY_HOUR)).status == 401  # the old token stays revoked
        await api.login()
        assert (await api.v2(READY_HOUR)).status == 200
        stats = running.state.stats()
        assert stats["tokens_revoked"] == 1
        assert stats["unauthorized"] == 2
