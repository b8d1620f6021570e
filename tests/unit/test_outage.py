"""The run's judgement of a service (:mod:`backfill.net.outage`), alone, on a fake clock:
misses in a row, one probe at a time, the budget, each link host on its own, and an
unusable answer judged across keys."""

from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from backfill.errors import OutageError
from backfill.net.exchange import LinkHosts
from backfill.net.outage import OUTAGE_AFTER, ServiceHealth
from tests.fakes import FakeClock, running

pytestmark = pytest.mark.anyio


async def test_misses_in_a_row_make_an_outage_and_an_answer_ends_it() -> None:
    health = ServiceHealth("svc", FakeClock(), budget=60.0, probe_interval=0.01)
    for _ in range(OUTAGE_AFTER - 1):
        assert not health.missed("reset")
    health.answered()  # an answer between misses: bad luck, not an outage
    assert not health.missed("reset")
    assert [health.missed("reset") for _ in range(OUTAGE_AFTER - 1)][-1]
    assert health.down and health.outages == 1
    health.answered()
    assert not health.down


async def test_during_an_outage_one_probe_at_a_time_goes_out() -> None:
    clock = FakeClock()
    health = ServiceHealth("svc", clock, budget=60.0, probe_interval=0.01)
    for _ in range(OUTAGE_AFTER):
        health.missed("refused")
    probing = peak = probes = after = 0

    async def caller() -> None:
        nonlocal probing, peak, probes, after
        async with health.attempt():
            if not health.down:  # admitted after the recovery: no limit any more
                after += 1
                return
            probing += 1
            peak = max(peak, probing)
            await wait_all_tasks_blocked()  # every other caller tries to get in meanwhile
            probing -= 1
            probes += 1
            if probes < 3:
                health.missed("refused")  # the first probes fail too
            else:
                health.answered()

    with anyio.fail_after(10):
        async with running(clock), anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(caller)
    assert (peak, probes, after) == (1, 3, 3)  # one at a time while down, then the rest


async def test_an_outage_past_its_budget_raises_for_callers_and_the_watcher() -> None:
    clock = FakeClock()
    health = ServiceHealth("the export API", clock, budget=180.0, probe_interval=10.0)
    for _ in range(OUTAGE_AFTER):
        health.missed("ClientConnectorError (errno 111)")
    with anyio.fail_after(5):
        async with running(clock):
            error = await health.watch()
        with pytest.raises(OutageError) as caught:
            async with health.attempt():
                pass
    assert caught.value.service == error.service == "the export API"
    assert str(error).startswith("the export API has not answered since ")
    assert str(error).endswith("(3 min 0 s; last: ClientConnectorError (errno 111))")


async def test_each_link_host_is_judged_on_its_own() -> None:
    clock = FakeClock()
    hosts = LinkHosts(clock, budget=180.0, probe_interval=10.0)
    dead = hosts.for_url("https://bucket-a.example:443/part?sig=1").health
    alive = hosts.for_url("https://bucket-b.example/part").health
    assert hosts.for_url("https://bucket-a.example/other").health is dead  # one per host
    for _ in range(OUTAGE_AFTER):
        dead.missed("connection refused")
    assert dead.down and not alive.down
    with anyio.fail_after(5):
        async with alive.attempt():  # a healthy host's parts are not held
            pass
        async with running(clock):
            error = await hosts.watch()
    assert error.service == "the download links' host bucket-a.example:443"
    assert "sig=" not in str(error)


def test_an_unusable_answer_is_its_keys_while_other_keys_get_good_ones() -> None:
    """A page (or JSON cut short) for one key while others answer well is that key's
    problem; only different keys in a row, with no good answer between, are the
    service's: a portal, a proxy's page."""
    health = ServiceHealth("svc", FakeClock(), budget=60.0, probe_interval=1.0)
    for _ in range(10):  # one key, many times, others answering meanwhile: never an outage
        assert not health.unusable("it answered 200 text/html", "2026112007")
        health.answered()
    assert not health.down
    assert not health.unusable("page", "2026112007")
    assert not health.unusable("page", "2026112007")  # the same key again: still its own
    assert not health.unusable("page", "2026112008")
    assert health.unusable("page", "2026112009")  # three keys in a row: the service
    assert health.down and health.outages == 1
