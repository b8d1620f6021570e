"""A server that misbehaves on purpose: every bad answer costs its own key at most, and
every run ends by itself (issue 18). The real client against the real emulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from backfill.emulator import EmulatorConfig, Faults, RunningEmulator, serve
from backfill.errors import TokenError, UsageError
from backfill.keys import Granularity
from backfill.model import Status
from tests.e2e.test_run import downloaded_md5s, hours_ago, run, settings_for, source_md5s
from tests.helpers import assert_no_secrets, cli, env_for, loopback

pytestmark = pytest.mark.anyio

VISIT = ("visit",)


def _config(data_dir: Path, **changes: Any) -> EmulatorConfig:
    base: dict[str, Any] = {"data_dir": data_dir, "job_seconds": 0.0,
                            "bytes_per_hour": 8 * 1024, "part_size": 4 * 1024,
                            "rate_limit": 1000}
    return EmulatorConfig(**{**base, **changes})


def _hourly(emulator: RunningEmulator, out: Path, **changes: Any) -> Any:
    return settings_for(emulator, out, granularity=Granularity.HOUR, types=VISIT, rate=10.0,
                        **changes)


# --- 1. one bad link fails its key, not the run -----------------------------------------

@pytest.mark.parametrize("how", ["scheme", "redirect_scheme", "redirect_loop"])
async def test_one_bad_link_fails_only_its_key(how: str, data_dir: Path,
                                               tmp_path: Path) -> None:
    keys = hours_ago(8, 5)
    bad = keys[1]
    async with serve(_config(data_dir, bad_links={bad.name: how})) as emulator:
        # A budget far longer than the test: a bad link must not be judged an outage.
        settings = _hourly(emulator, tmp_path, outage_budget=600.0)
        with anyio.fail_after(60):
            summary = await run(settings, keys)
    assert summary.outage is None
    assert summary.statuses[Status.FAILED] == 1 and summary.statuses[Status.DONE] == 3
    problem = summary.problems[bad.name]
    assert "refused the link " in problem
    expected = {"scheme": "only http and https links are fetched",
                "redirect_scheme": "a redirect to a URL that is not http(s)",
                "redirect_loop": "more than 5 redirects"}[how]
    assert expected in problem, problem
    assert "?" not in problem and "X-Amz" not in problem  # named without its query
    good = [k for k in keys if k != bad]
    assert downloaded_md5s(tmp_path) - downloaded_md5s(tmp_path / "visit" / bad.start.strftime(
        "dt=%Y-%m-%d") / bad.start.strftime("hour=%H")) == source_md5s(emulator, good, VISIT)
    assert not (tmp_path / "visit" / bad.start.strftime("dt=%Y-%m-%d/hour=%H/_SUCCESS")
                ).exists()


# --- 2. credentials go only where they belong ---------------------------------------------

@pytest.fixture
async def elsewhere() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """Another origin (another port on loopback), recording the headers it is sent."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"status": "success", "code": "stolen"})

    async with loopback(record) as origin:
        yield origin, seen


async def test_api_calls_never_follow_a_redirect_to_another_origin(
        data_dir: Path, tmp_path: Path, elsewhere: tuple[str, list[dict[str, str]]]) -> None:
    origin, seen = elsewhere
    async with serve(_config(data_dir)) as emulator:
        settings = _hourly(emulator, tmp_path)
        await run(settings, hours_ago(6, 6))
        assert emulator.state.token is not None  # a ready token: no token call below
        settings = replace(settings, credentials=replace(settings.credentials,
                                                         token=emulator.state.token.code))
        emulator.state.config.api_redirect = origin
        with pytest.raises(UsageError) as caught:
            await run(settings, hours_ago(5, 5))
    assert not seen  # nothing at all went there, let alone X-Client-Id
    message = str(caught.value)
    assert f"redirects to {origin}/v2/insights/" in message
    assert "credentials are sent only to GIO_BASE_URL's own origin" in message
    assert "?" not in message


async def test_the_token_request_never_follows_a_redirect_either(
        data_dir: Path, tmp_path: Path, elsewhere: tuple[str, list[dict[str, str]]]) -> None:
    origin, seen = elsewhere
    async with serve(_config(data_dir, api_redirect=origin)) as emulator:
        with pytest.raises(UsageError, match=r"the token endpoint at .* redirects to"):
            await run(_hourly(emulator, tmp_path), hours_ago(5, 5))
    assert not seen


async def test_links_never_carry_the_api_credentials(data_dir: Path, tmp_path: Path) -> None:
    async with serve(_config(data_dir)) as emulator:
        summary = await run(_hourly(emulator, tmp_path), hours_ago(6, 5))
        stats = emulator.state.stats()
    assert summary.exit_code == 0 and stats["calls"]["download"] > 0
    assert stats["downloads_with_credentials"] == 0


# --- 3. slow, stalled and endless bodies end by themselves -------------------------------

async def test_a_trickling_body_is_cut_and_fetched_again(data_dir: Path, tmp_path: Path) -> None:
    keys = hours_ago(6, 5)
    faults = Faults(trickle=1.0, trickle_rate=64.0, limit=1)  # the first download trickles
    async with serve(_config(data_dir, faults=faults)) as emulator:
        settings = _hourly(emulator, tmp_path, min_speed=1024.0, min_speed_time=1.0)
        with anyio.fail_after(60):  # a 4 KiB part at 64 bytes/s would take a minute
            summary = await run(settings, keys)
        assert emulator.state.stats()["faults"] == {"trickle": 1}
    assert summary.exit_code == 0, summary.problems
    assert summary.retries >= 1
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, VISIT)


async def test_a_body_that_always_trickles_fails_its_key_and_the_run_ends(
        data_dir: Path, tmp_path: Path) -> None:
    keys = hours_ago(6, 6)
    faults = Faults(trickle=1.0, trickle_rate=64.0)
    async with serve(_config(data_dir, faults=faults)) as emulator:
        settings = _hourly(emulator, tmp_path, min_speed=1024.0, min_speed_time=0.5,
                           retries=1)
        with anyio.fail_after(60):
            summary = await run(settings, keys)
    assert summary.exit_code == 1
    assert "too slow" in summary.problems[keys[0].name]
    assert "under min_speed" in summary.problems[keys[0].name]


async def test_an_endless_body_is_cut_at_the_ceiling_and_fetched_again(
        data_dir: Path, tmp_path: Path) -> None:
    keys = hours_ago(6, 5)
    faults = Faults(endless=1.0, limit=2)
    ceiling = 64 * 1024
    async with serve(_config(data_dir, faults=faults)) as emulator:
        settings = _hourly(emulator, tmp_path, max_part_size=ceiling)
        with anyio.fail_after(60):
            summary = await run(settings, keys)
        served = emulator.state.stats()["bytes_served"]
    assert summary.exit_code == 0, summary.problems
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, VISIT)
    # Each endless body was read to the ceiling (and a socket buffer), never further.
    parts = sum(source_md5s(emulator, keys, VISIT).values())
    assert served < 2 * (ceiling + 4 << 20) + parts * 8 * 1024


async def test_a_declared_length_past_the_ceiling_is_refused(data_dir: Path,
                                                             tmp_path: Path) -> None:
    keys = hours_ago(6, 6)
    async with serve(_config(data_dir)) as emulator:
        settings = _hourly(emulator, tmp_path, max_part_size=1024, retries=0)
        summary = await run(settings, keys)
    assert summary.exit_code == 1
    assert "more than max_part_size (1024)" in summary.problems[keys[0].name]
    assert not list(tmp_path.rglob("*part-*"))  # not a byte of it was written


# --- 4. the bytes on disk are the stored object --------------------------------------------

async def test_a_part_stored_with_content_encoding_gzip_lands_byte_identical(
        data_dir: Path, tmp_path: Path) -> None:
    keys = hours_ago(6, 5)
    async with serve(_config(data_dir, content_encoding="gzip")) as emulator:
        summary = await run(_hourly(emulator, tmp_path, retries=0), keys)
        stats = emulator.state.stats()
    assert summary.exit_code == 0, summary.problems
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, VISIT)
    assert stats["downloads_not_identity"] == 0  # asked for the bytes as stored


# --- 5. Retry-After is honoured on 5xx ------------------------------------------------------

@pytest.mark.parametrize("keys", [1, 4], ids=["one key", "four keys at once"])
async def test_retry_after_on_503_holds_every_call_of_the_run(keys: int, data_dir: Path,
                                                              tmp_path: Path) -> None:
    wait = 1.5
    faults = Faults(api_5xx=1.0, limit=6)  # six 503s in a row, then answers
    async with serve(_config(data_dir, faults=faults, retry_after_5xx=wait)) as emulator:
        with anyio.fail_after(60):
            summary = await run(_hourly(emulator, tmp_path), hours_ago(4 + keys, 5))
        times = emulator.state.export_times
    assert summary.exit_code == 0, summary.problems
    if keys == 1:
        # One caller: every call after a 503 waited its Retry-After, the first retries and
        # the probes alike, once three misses in a row made it an outage.
        gaps = [later - earlier for earlier, later in pairwise(times[:7])]
        assert min(gaps) >= wait - 0.2, gaps
    else:
        # Keys asked at once (polls=4) got their 503s before any was heard; after that
        # wave, no call went out before the Retry-After, whichever key made it.
        wave = [t for t in times if t - times[0] < wait / 2]
        assert len(wave) <= 4 < len(times)
        assert times[len(wave)] - wave[-1] >= wait - 0.2


async def test_a_page_for_one_key_is_that_keys_problem_not_an_outage(
        data_dir: Path, tmp_path: Path) -> None:
    """One key's export calls answer a page (a proxy reroutes that URL) while the eleven
    others answer well: that key fails after its own tries, with the reason; the run does
    not judge the export API down, and every other key is done."""
    keys = hours_ago(16, 5)
    bad = keys[3]
    config = _config(data_dir, unusable_keys=(bad.name,))
    async with serve(config) as emulator:
        settings = _hourly(emulator, tmp_path, retries=2, outage_budget=600.0)
        with anyio.fail_after(60):
            summary = await run(settings, keys)
        calls = [name for name in emulator.state.export_keys if name == bad.name]
    assert summary.outage is None
    assert summary.statuses[Status.FAILED] == 1
    assert summary.statuses[Status.DONE] == len(keys) - 1
    assert "answered 200 text/html, not JSON" in summary.problems[bad.name]
    assert len(calls) == settings.retries + 1  # its own tries, no more


# --- 6. a broken token endpoint is one failure, not a storm -------------------------------

async def test_a_portal_at_the_token_endpoint_is_judged_once(data_dir: Path,
                                                             tmp_path: Path) -> None:
    async with serve(_config(data_dir, token_answer="html")) as emulator:
        with anyio.fail_after(30), pytest.raises(TokenError) as caught:
            await run(_hourly(emulator, tmp_path), hours_ago(20, 5))
        stats = emulator.state.stats()
    assert stats["calls"]["token"] == 1
    assert stats["export_calls"] == 0
    assert str(caught.value).endswith("it answered 200 text/html, not JSON: is a proxy or a "
                                      "portal in the way?")
    assert caught.value.exit_code == 3


async def test_a_portal_at_the_token_endpoint_is_exit_3_and_one_line(data_dir: Path,
                                                                     tmp_path: Path) -> None:
    async with serve(_config(data_dir, token_answer="html")) as emulator:
        code, out, err = await cli(["run", "--from", "-20h", "--to", "-5h", "--types",
                                    "visit", "--out", "data", "--quiet"],
                                   env_for(emulator.url), tmp_path)
        stats = emulator.state.stats()
    assert code == 3
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "200 text/html, not JSON" in lines[0], err
    assert stats["calls"]["token"] == 1
    assert_no_secrets([out, err], None)


# --- 7. absent is not empty ----------------------------------------------------------------

async def test_a_type_absent_from_the_answer_is_asked_for_alone(data_dir: Path,
                                                                tmp_path: Path) -> None:
    keys = hours_ago(6, 5)
    types = ("visit", "page")
    async with serve(_config(data_dir, absent_types=("page",))) as emulator:
        summary = await run(settings_for(emulator, tmp_path, granularity=Granularity.HOUR,
                                         types=types, rate=10.0), keys)
        stats = emulator.state.stats()
    assert summary.exit_code == 0, summary.problems
    assert stats["calls"]["v2_type"] >= len(keys)  # page on its own endpoint, per key
    assert downloaded_md5s(tmp_path) == source_md5s(emulator, keys, types)
    for key in keys:
        manifest = json.loads((tmp_path / "page" / key.start.strftime("dt=%Y-%m-%d/hour=%H")
                               / "_manifest.json").read_text())
        assert manifest["parts"]  # not an empty unit marked done


# --- 10. say what the server said ------------------------------------------------------------

async def test_a_skewed_clock_is_named_with_the_servers_message(data_dir: Path,
                                                                tmp_path: Path) -> None:
    # The server's clock 10 minutes behind this machine's: this one is 10 min ahead.
    async with serve(_config(data_dir, clock_offset=-600.0)) as emulator:
        code, _, err = await cli(["check"], env_for(emulator.url), tmp_path)
        code_run, _, err_run = await cli(["run", "--from", "-3d", "--to", "-3d", "--out",
                                          "data", "--quiet"], env_for(emulator.url), tmp_path)
    for c, e in ((code, err), (code_run, err_run)):
        assert c == 3, e
        assert "HTTP 401: tm is too far from the server's time" in e
        assert "this machine's clock is 10 min ahead of GrowingIO's" in e
        assert_no_secrets([e], None)
