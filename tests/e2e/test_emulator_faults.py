"""Each switchable fault, at rate 1, does what it says; rates are seeded and replayable."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest

from backfill.emulator import Faults
from tests.e2e.conftest import EmulatorFactory
from tests.helpers import Api

pytestmark = pytest.mark.anyio
READY_HOUR = "202611201000"


async def one_link(api: Api) -> str:
    await api.login()
    body = (await api.v2(READY_HOUR, data_type="page")).json()
    assert body["status"] == "FINISHED"
    return body["downloadLinks"][0]  # type: ignore[no-any-return]


def test_fault_draws_are_seeded_and_independent() -> None:
    a = Faults(seed=3, api_5xx=0.5, reset=0.5)
    b = Faults(seed=3, api_5xx=0.5)
    draws_a = [a.roll("api_5xx") for _ in range(50)]
    for _ in range(50):
        a.roll("reset")
    assert draws_a == [b.roll("api_5xx") for _ in range(50)]
    assert 10 < sum(draws_a) < 40
    with pytest.raises(ValueError, match="between 0 and 1"):
        Faults(corrupt=1.5)


def test_a_limit_caps_injections_per_kind() -> None:
    faults = Faults(api_5xx=1.0, reset=1.0, limit=2)
    assert [faults.roll("api_5xx") for _ in range(4)] == [True, True, False, False]
    assert faults.roll("reset")


async def test_api_5xx(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        await api.login()
        running.state.config.faults.update(api_5xx=1.0)
        assert (await api.v2(READY_HOUR)).status in (500, 502, 503)
        assert running.state.stats()["server_errors"] == 1


async def test_reset_mid_body(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        link = await one_link(api)
        running.state.config.faults.update(reset=1.0)
        with pytest.raises(aiohttp.ClientPayloadError):
            await api.fetch(link)
        assert running.state.stats()["faults"] == {"reset": 1}


async def test_truncated_body_is_consistent_but_short(emulator_factory: EmulatorFactory
                                                      ) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        link = await one_link(api)
        whole = (await api.fetch(link)).body
        running.state.config.faults.update(truncate=1.0)
        reply = await api.fetch(link)
        assert reply.status == 200
        assert int(reply.headers["Content-Length"]) == len(reply.body) < len(whole)
        assert reply.body == whole[: len(reply.body)]
        assert reply.headers["x-amz-meta-md5-hash"] != hashlib.md5(reply.body).hexdigest()


async def test_corrupt_body_has_the_right_length(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        link = await one_link(api)
        whole = (await api.fetch(link)).body
        running.state.config.faults.update(corrupt=1.0)
        reply = await api.fetch(link)
        assert len(reply.body) == len(whole)
        assert reply.body != whole
        assert sum(a != b for a, b in zip(reply.body, whole, strict=True)) == 1


async def test_slow_first_byte(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        link = await one_link(api)
        running.state.config.faults.update(slow_first_byte=1.0, slow_seconds=5.0)
        timeout = aiohttp.ClientTimeout(sock_read=0.3)
        with pytest.raises(TimeoutError):
            async with api.session.get(link, timeout=timeout) as r:
                await r.read()
        running.state.config.faults.update(slow_first_byte=0.0)
        async with api.session.get(link, timeout=timeout) as r:
            assert len(await r.read()) > 0


async def test_stalled_body(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        link = await one_link(api)
        running.state.config.faults.update(stall=1.0, stall_seconds=5.0)
        received = bytearray()
        with pytest.raises(TimeoutError):
            async with api.session.get(link, timeout=aiohttp.ClientTimeout(sock_read=0.3)) as r:
                assert r.status == 200
                async for chunk in r.content.iter_any():
                    received += chunk
        assert 0 < len(received) < int(r.headers["Content-Length"])


async def test_faults_switch_over_http(emulator_factory: EmulatorFactory) -> None:
    async with emulator_factory(job_seconds=0.0) as (running, api):
        async with api.session.post(f"{api.url}/_emulator/faults", json={"api_5xx": 0.25}) as r:
            assert (await r.json())["api_5xx"] == 0.25
        assert running.state.config.faults.api_5xx == 0.25
        async with api.session.post(f"{api.url}/_emulator/faults", json={"nope": 1}) as r:
            assert r.status == 400
