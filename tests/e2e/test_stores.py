"""The S3-compatible stores GrowingIO's users run, as their documented settings reach them:
Aliyun OSS and Tencent COS (virtual-hosted: the bucket in the host name), Cloudflare R2
and MinIO (path style). The real CLI writes a Delta table through a forward proxy that
resolves the stores' names to a loopback front, which records the host, the path and the
signature's region of every request and hands it to moto as a path-style request. So the
parts (obstore) and the table's commits (delta-rs) are both seen addressing the store the
way it requires. Whether a store honours conditional writes (the lease, Delta's commits)
is the store's own: see the test of a store that ignores them below, and the table in
docs/object-storage.md."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from tests.helpers import cli, env_for, loopback
from tests.proxy import forward_proxy
from tests.s3 import Bucket

pytestmark = pytest.mark.anyio


@dataclass
class StoreFront:
    """A store at ``host``: what it was asked (host, path, signing region), answered by
    moto as path-style requests. ``conditional``: "honour" passes If-None-Match and
    If-Match on, "ignore" drops them (a store that does not implement them silently),
    "refuse" answers 501 NotImplemented (as OSS is reported to)."""

    moto: str
    bucket: str
    conditional: str = "honour"
    seen: list[tuple[str, str, str, str]] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)
    """Each PUT of a lease, by the condition it carried: "create", "match" or "plain"."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        host = request.headers.get("Host", "")
        signed = re.search(r"Credential=[^/]+/[^/]+/([^/]+)/s3/",
                           request.headers.get("Authorization", ""))
        self.seen.append((request.method, host, request.path, signed[1] if signed else ""))
        if request.method == "PUT" and "/.backfill/lease" in request.path:
            self.leases.append("create" if "If-None-Match" in request.headers else
                               "match" if "If-Match" in request.headers else "plain")
        path = request.path_qs
        if host.startswith(f"{self.bucket}."):  # virtual-hosted: the bucket is the host's
            path = f"/{self.bucket}{path}" if path != "/" else f"/{self.bucket}"
        conditions = {"if-none-match", "if-match"}
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        if request.method == "PUT" and conditions & {k.lower() for k in headers}:
            if self.conditional == "refuse":
                return web.Response(status=501, content_type="application/xml", text=(
                    "<Error><Code>NotImplemented</Code><Message>A header you provided "
                    "implies functionality that is not implemented.</Message></Error>"))
            if self.conditional == "ignore":
                headers = {k: v for k, v in headers.items() if k.lower() not in conditions}
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
                request.method, self.moto + path, headers=headers, data=body,
                allow_redirects=False) as answer:
            data = await answer.read()
            kept = {k: v for k, v in answer.headers.items()
                    if k.lower() not in ("transfer-encoding", "content-length", "connection")}
            return web.Response(status=answer.status, headers=kept, body=data)


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0,
                                    bytes_per_hour=8 * 1024, part_size=4 * 1024)) as running:
        yield running


STORES = [
    # name, the store's endpoint host (".test": never a real name), region, virtual-hosted
    ("Aliyun OSS", "s3.oss-cn-hangzhou.aliyuncs.test", "cn-hangzhou", True),
    ("Tencent COS", "cos.ap-guangzhou.myqcloud.test", "ap-guangzhou", True),
    ("Cloudflare R2", "0123456789abcdef.r2.cloudflarestorage.test", "auto", False),
    ("MinIO", "minio.lan.test", "us-east-1", False),
]


async def _run_on(store: StoreFront, endpoint_host: str, region: str, virtual: bool,
                  emulator: RunningEmulator, bucket: Bucket, tmp_path: Path,
                  fmt: str = "delta", more: tuple[str, ...] | list[str] = (),
                  settings: str = "") -> tuple[int, str, str]:
    async with loopback(store.handle) as origin:
        port = origin.rsplit(":", 1)[1]
        hosts = {endpoint_host: "127.0.0.1", f"{bucket.name}.{endpoint_host}": "127.0.0.1"}
        async with forward_proxy(hosts) as proxy:
            tmp_path.mkdir(exist_ok=True)
            config = tmp_path / "backfill.toml"
            config.write_text(f'[storage]\nendpoint = "http://{endpoint_host}:{port}"\n'
                              f'region = "{region}"\n'
                              f"virtual_hosted_style = {str(virtual).lower()}\n")
            config.write_text(settings + config.read_text())
            env = {**env_for(emulator.url), **bucket.env(), "HTTP_PROXY": proxy.url(),
                   "XDG_STATE_HOME": str(tmp_path / "state")}
            del env["AWS_ENDPOINT_URL"], env["AWS_REGION"], env["AWS_DEFAULT_REGION"]
            return await cli(["run", "--config", str(config), "--from", "-5d", "--to", "-5d",
                              "--types", "visit", "--format", fmt, "--quiet",
                              "--out", bucket.url("lake"), *more], env, tmp_path)


@pytest.mark.parametrize(("name", "endpoint_host", "region", "virtual"), STORES,
                         ids=[s[0] for s in STORES])
async def test_a_delta_table_on_the_store_as_its_settings_say(
        name: str, endpoint_host: str, region: str, virtual: bool,
        emulator: RunningEmulator, bucket: Bucket, tmp_path: Path) -> None:
    pytest.importorskip("deltalake", reason="the tables extra is not installed")
    store = StoreFront(bucket.endpoint, bucket.name)
    code, _, err = await _run_on(store, endpoint_host, region, virtual, emulator, bucket,
                                 tmp_path)
    assert code == 0, err
    assert any("/_delta_log/" in path for _, _, path, _ in store.seen), "no commit seen"
    assert [n for n in bucket.names("lake/visit/_delta_log/") if n.endswith(".json")]
    for method, host, path, signed_for in store.seen:
        if virtual:  # the bucket's own host; the path is the key's
            assert host.startswith(f"{bucket.name}.{endpoint_host}:"), (method, host, path)
            assert not path.startswith(f"/{bucket.name}/"), (method, host, path)
        else:  # the store's host; the path starts with the bucket
            assert host.startswith(f"{endpoint_host}:"), (method, host, path)
            assert path == f"/{bucket.name}" or path.startswith(f"/{bucket.name}/")
        assert signed_for == region, (method, path, signed_for)


@pytest.mark.parametrize(("conditional", "said"), [
    ("refuse", "does not implement conditional writes"),
    ("ignore", "ignores conditional writes")])
async def test_a_store_without_conditional_writes_takes_parts_but_not_delta(
        conditional: str, said: str, emulator: RunningEmulator, bucket: Bucket,
        tmp_path: Path) -> None:
    """A store that answers NotImplemented to If-None-Match (as OSS is reported to), or
    drops it, cannot keep a second writer out: the run says so in one warning and the raw
    parts go up (the lease written plainly on the first, overwritten by its probe on the
    second); Delta, whose commits from the keys in flight would overwrite each other
    there, is one line and exit 2 before any export call."""
    store = StoreFront(bucket.endpoint, bucket.name, conditional=conditional)
    code, out, err = await _run_on(store, *STORES[0][1:], emulator, bucket, tmp_path,
                                   fmt="csv")
    assert code == 0, out + err
    assert err.count(said) == 1, err
    assert [n for n in bucket.names("lake/visit/") if n.endswith("/_SUCCESS")]
    assert not [n for n in bucket.names("lake/") if "lease" in n]  # released at the end
    calls = emulator.state.stats()["export_calls"]
    code, _, err = await _run_on(store, *STORES[0][1:], emulator, bucket, tmp_path / "delta",
                                 more=["--from", "-6d", "--out", bucket.url("table")])
    assert code == 2 and err.count("\n") == 1 and "every Delta commit needs" in err, err
    assert "Traceback" not in err
    assert emulator.state.stats()["export_calls"] == calls


@pytest.mark.parametrize(("conditional", "renewals"), [
    ("honour", "match"), ("ignore", "match"), ("refuse", "plain")])
async def test_the_lease_is_renewed_as_the_store_allows(
        conditional: str, renewals: str, bucket: Bucket, tmp_path: Path,
        data_dir: Path) -> None:
    """Renewals keep If-Match wherever the store does not answer 501 to it (a store that
    drops only If-None-Match may still honour it); on a 501 store they are plain."""
    config = EmulatorConfig(data_dir=data_dir, job_seconds=3.0, bytes_per_hour=8 * 1024,
                            part_size=4 * 1024)
    async with serve(config) as slow:  # a run of some seconds: several renewals at 3 s
        store = StoreFront(bucket.endpoint, bucket.name, conditional=conditional)
        code, out, err = await _run_on(store, *STORES[0][1:], slow, bucket, tmp_path,
                                       fmt="csv", settings='lease_time = "3s"\n')
    assert code == 0, out + err
    # Taken with If-None-Match; then the probe creates it again, or, on a 501 store (which
    # the client asks again, as any 5xx), it is written plainly after a read; every PUT
    # after those is a renewal.
    creates = next((i for i, kind in enumerate(store.leases) if kind != "create"),
                   len(store.leases))
    if conditional == "refuse":
        assert creates >= 1 and store.leases[creates] == "plain", store.leases
        renewed = store.leases[creates + 1:]
    else:
        assert creates == 2, store.leases
        renewed = store.leases[2:]
    assert renewed and set(renewed) == {renewals}, store.leases
