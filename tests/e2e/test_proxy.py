"""Company networks: the API and the link hosts are reachable only through a forward proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from backfill.errors import UsageError
from backfill.net.proxy import Proxies, redact_proxy
from tests.helpers import cli, env_for
from tests.proxy import forward_proxy

pytestmark = pytest.mark.anyio

API, LINKS = "api.gio.test", "links.gio.test"  # .test never resolves outside the proxy
SECRET_PASSWORD = "p@ss w0rd:x"


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0,
                                    bytes_per_hour=4096, part_size=2048)) as running:
        port = running.url.rsplit(":", 1)[1]
        # The links live on another host than the API, as on S3 or OSS.
        running.state.config.link_origin = f"http://{LINKS}:{port}"
        yield running


def through(emulator: RunningEmulator) -> str:
    return f"http://{API}:{emulator.url.rsplit(':', 1)[1]}"


async def test_a_run_goes_through_the_proxy_for_token_calls_and_links(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    async with forward_proxy({API: "127.0.0.1", LINKS: "127.0.0.1"},
                             credentials=("backfill", SECRET_PASSWORD)) as proxy:
        env = env_for(through(emulator), HTTP_PROXY=proxy.url(), NO_PROXY="localhost")
        code, out, err = await cli(["run", "--from", "-4d", "--to", "-3d", "--types",
                                    "visit", "--out", "data"], env, tmp_path)
    stats = emulator.state.stats()
    assert code == 0, err
    assert proxy.seen[API] == stats["calls"]["token"] + stats["export_calls"] >= 3
    assert proxy.seen[LINKS] == stats["calls"]["download"] >= 2
    assert len(list((tmp_path / "data" / "visit").glob("dt=*/_SUCCESS"))) == 2
    assert SECRET_PASSWORD not in out + err and "backfill:" not in out


async def test_lowercase_wins_and_loopback_goes_direct(emulator: RunningEmulator,
                                                       tmp_path: Path) -> None:
    # HTTP_PROXY names a dead port, http_proxy the real proxy: the lowercase one is used.
    async with forward_proxy({API: "127.0.0.1", LINKS: "127.0.0.1"}) as proxy:
        env = env_for(through(emulator), HTTP_PROXY="http://127.0.0.1:9",
                      http_proxy=proxy.url())
        code, _, err = await cli(["run", "--from", "-4d", "--to", "-4d", "--types", "visit",
                                  "--out", "data"], env, tmp_path)
        assert code == 0, err
        assert proxy.seen[API] > 0
    # A loopback target goes straight there, whatever the proxy variables say (the
    # dead proxy on port 9 would refuse every call).
    env = env_for(emulator.url, HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="127.0.0.1:9")
    emulator.state.config.link_origin = None
    code, _, err = await cli(["run", "--from", "-5d", "--to", "-5d", "--types", "visit",
                              "--out", "data"], env, tmp_path)
    assert code == 0, err


async def test_a_proxy_that_wants_credentials_is_one_line_exit_2(emulator: RunningEmulator,
                                                                 tmp_path: Path) -> None:
    async with forward_proxy({API: "127.0.0.1"}, credentials=("u", "p")) as proxy:
        env = env_for(through(emulator), HTTP_PROXY=proxy.url(with_credentials=False))
        code, _, err = await cli(["run", "--from", "-4d", "--to", "-4d", "--types",
                                    "visit", "--out", "data"], env, tmp_path)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"backfill: error: the proxy {proxy.url(with_credentials=False)} wants credentials "
        "(HTTP 407): put them in the proxy variable, as http://user:password@host:port")
    assert proxy.refused == 1


async def test_check_names_the_proxy_without_its_credentials(emulator: RunningEmulator,
                                                             tmp_path: Path) -> None:
    async with forward_proxy({API: "127.0.0.1"}, credentials=("me", SECRET_PASSWORD)) as proxy:
        env = env_for(through(emulator), HTTPS_PROXY="http://127.0.0.1:9",
                      HTTP_PROXY=proxy.url())
        code, out, err = await cli(["check"], env, tmp_path)
    assert code == 0, err
    assert f"through the proxy http://***@127.0.0.1:{proxy.port}" in out
    assert SECRET_PASSWORD not in out + err and "me:" not in out + err
    assert proxy.seen[API] == 1  # the token request went through it


# --- the rules alone -------------------------------------------------------------------


def test_the_scheme_picks_the_variable_lowercase_first_then_all_proxy() -> None:
    p = Proxies.from_env({"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:1",
                          "ALL_PROXY": "http://every:1"})
    assert p.for_url("https://api.growingio.com/x") == "http://lower:1"
    assert p.for_url("http://api.growingio.com/x") == "http://every:1"
    assert Proxies.from_env({}).for_url("https://x.y/") is None
    assert Proxies.from_env({"HTTP_PROXY": "proxy.corp:3128"}).http == "http://proxy.corp:3128"


@pytest.mark.parametrize(("no_proxy", "url", "direct"), [
    ("*", "https://anything.example/", True),
    ("growingio.com", "https://www.growingio.com/a", True),
    (".growingio.com", "https://growingio.com/a", True),
    ("growingio.com", "https://notgrowingio.com/a", False),
    ("oss.example:8443", "https://oss.example/a", False),
    ("oss.example:443", "https://oss.example/a", True),
    ("10.0.0.0/8", "http://10.1.2.3:9000/b", True),
    ("10.0.0.0/8", "http://11.1.2.3/b", False),
    ("::1", "http://[::1]:8080/", True),
    ("10.0.0.1", "http://10.0.0.10/", False),
    ("", "http://localhost:8931/", True),  # loopback: always direct
    ("", "http://127.0.0.2/", True),
    ("", "https://www.growingio.com/", False),
])
def test_no_proxy_matching(no_proxy: str, url: str, direct: bool) -> None:
    p = Proxies.from_env({"HTTPS_PROXY": "http://p:1", "HTTP_PROXY": "http://p:1",
                          "NO_PROXY": no_proxy})
    assert (p.for_url(url) is None) is direct



def test_the_stores_reach_the_machines_credential_services_directly() -> None:
    """An object store behind a proxy gets the hosts that go direct: NO_PROXY's (without
    ports: the store's list takes none) and the metadata services, whose tokens a proxy
    must never see (and cannot reach)."""
    from backfill.config import Settings, parse_out
    from backfill.destination.object_store import proxy_options
    from backfill.destination.tables import delta_location

    env = {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "minio.lan:9000,.corp"}
    direct = Proxies.from_env(env).direct_hosts().split(",")
    assert direct[:2] == ["minio.lan", ".corp"]
    assert {"169.254.169.254", "169.254.170.2", "metadata.google.internal"} <= set(direct)
    expected = {"proxy_url": "http://proxy.corp:3128", "proxy_excludes": ",".join(direct)}
    settings = Settings(out=parse_out("gs://lake/gio"), proxies=Proxies.from_env(env))
    assert proxy_options(settings) == expected
    # A store NO_PROXY names still gets the proxy and its exclusions, explicitly: left
    # without, the client would read HTTPS_PROXY itself and send the metadata calls to it.
    near = Settings(out=parse_out("gs://lake/gio"), proxies=Proxies.from_env(
        {**env, "NO_PROXY": "storage.googleapis.com"}))
    assert proxy_options(near)["proxy_excludes"].startswith("storage.googleapis.com,")
    # delta-rs gets the same (it honours them: a proxy it is given is the one it calls).
    assert delta_location(settings)[1]().items() >= expected.items()
    assert proxy_options(Settings(out=parse_out("gs://lake/gio"))) == {}
    assert proxy_options(Settings(out=parse_out("gs://lake/gio"), proxies=Proxies.from_env(
        {**env, "NO_PROXY": "*"}))) == {}

def test_credentials_are_redacted_and_unusable_proxies_refused() -> None:
    assert redact_proxy("http://u:p%40ss@proxy:3128") == "http://***@proxy:3128"
    assert redact_proxy("http://proxy:3128") == "http://proxy:3128"
    with pytest.raises(UsageError, match="only http:// and https:// proxies") as caught:
        Proxies.from_env({"ALL_PROXY": "socks5://u:secret@proxy:1080"})
    assert "secret" not in str(caught.value)
