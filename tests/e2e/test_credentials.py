"""S3 credentials the way organisations hand them out: a role assumed from a base profile,
a ``credential_process`` helper, SSO. The real CLI writes to a real S3 server (moto, with
its STS) through a loopback relay that records which access key signed each request, so
the tests see who the writers were: the parts (obstore) and the Delta writer (delta-rs)
alike, never the base profile's keys."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from backfill.emulator import EmulatorConfig, RunningEmulator, serve
from tests.helpers import cli, env_for, loopback
from tests.s3 import Bucket

pytestmark = pytest.mark.anyio
pytest.importorskip("botocore", reason="the aws extra is not installed")

RANGE = ["--from", "-5d", "--to", "-4d", "--types", "visit", "--quiet"]
BASE_KEY = "AKIABASEPROFILE00001"
PROCESS_KEY = "AKIAFROMAPROCESS0001"
SSO_KEY = "ASIAFROMSSOPORTAL001"
ROLE = "arn:aws:iam::123456789012:role/lake-writer"


class Relay:
    """What the store was asked, and with whose key: (service, action, access key id)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[tuple[str, str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path == "/federation/credentials":  # SSO's GetRoleCredentials
            self.seen.append(("sso", "GetRoleCredentials", request.headers.get(
                "x-amz-sso_bearer_token", "")))
            expires = int((datetime.now(UTC) + timedelta(hours=1)).timestamp() * 1000)
            return web.json_response({"roleCredentials": {
                "accessKeyId": SSO_KEY, "secretAccessKey": "sso-secret",
                "sessionToken": "sso-session-token", "expiration": expires}})
        signed = re.search(r"Credential=([A-Z0-9]+)/[^/]+/[^/]+/([a-z0-9-]+)/",
                           request.headers.get("Authorization", ""))
        key, service = (signed[1], signed[2]) if signed else ("", "")
        action = (re.search(rb"Action=(\w+)", body) or [b"", b""])[1].decode() \
            if service == "sts" else request.method
        self.seen.append((service, action, key))
        if service == "sts" and b"denied" in body:  # a role the account refuses
            return web.Response(status=403, content_type="text/xml", text=(
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>"
                "not authorized to perform sts:AssumeRole</Message></Error>"
                "<RequestId>1</RequestId></ErrorResponse>"))
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
                request.method, self.target + request.path_qs, headers=headers,
                data=body, allow_redirects=False) as answer:
            data = await answer.read()
            kept = {k: v for k, v in answer.headers.items()
                    if k.lower() not in ("transfer-encoding", "content-length", "connection")}
            return web.Response(status=answer.status, headers=kept, body=data)

    def keys(self, service: str) -> set[str]:
        return {key for s, _, key in self.seen if s == service}


@pytest.fixture
async def relay(bucket: Bucket) -> AsyncIterator[tuple[str, Relay]]:
    recorder = Relay(bucket.endpoint)
    async with loopback(recorder.handle) as origin:
        yield origin, recorder


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[RunningEmulator]:
    async with serve(EmulatorConfig(data_dir=data_dir, job_seconds=0.0,
                                    bytes_per_hour=8 * 1024, part_size=4 * 1024)) as running:
        yield running


def profile_env(emulator: RunningEmulator, origin: str, tmp_path: Path, profile: str,
                config: str) -> dict[str, str]:
    """A laptop's shell: no keys in the environment, a profile in ~/.aws/config."""
    aws = tmp_path / ".aws"
    aws.mkdir(exist_ok=True)
    (aws / "config").write_text(config)
    (aws / "credentials").write_text(
        f"[base]\naws_access_key_id = {BASE_KEY}\naws_secret_access_key = base-secret\n")
    env = env_for(emulator.url, HOME=str(tmp_path), AWS_PROFILE=profile,
                  AWS_ENDPOINT_URL=origin, AWS_EC2_METADATA_DISABLED="true",
                  XDG_STATE_HOME=str(tmp_path / "state"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(name, None)
    return env


ASSUMED = f"""[profile lake]
role_arn = {ROLE}
source_profile = base
region = eu-central-1
"""


@pytest.mark.parametrize("fmt", ["csv", "delta"])
async def test_an_assumed_role_signs_every_write_parts_and_delta_alike(
        emulator: RunningEmulator, bucket: Bucket, relay: tuple[str, Relay], tmp_path: Path,
        fmt: str) -> None:
    if fmt == "delta":
        pytest.importorskip("deltalake")
    origin, seen = relay
    env = profile_env(emulator, origin, tmp_path, "lake", ASSUMED)
    code, out, err = await cli(["run", *RANGE, "--format", fmt, "--out", bucket.url()], env,
                               tmp_path)
    assert code == 0, err
    assert "Traceback" not in err
    assert any(name.endswith("/_SUCCESS") or "_delta_log" in name for name in bucket.names())
    # The base keys sign the role's assumption only; every S3 request, the Delta writer's
    # too, is signed by the role's temporary key.
    assert seen.keys("sts") == {BASE_KEY}
    assert ("sts", "AssumeRole", BASE_KEY) in seen.seen
    s3 = seen.keys("s3")
    assert s3 and all(key.startswith("ASIA") for key in s3), s3
    assert "base-secret" not in out + err


async def test_a_short_lived_role_is_renewed_during_the_run(
        emulator: RunningEmulator, bucket: Bucket, relay: tuple[str, Relay],
        tmp_path: Path) -> None:
    pytest.importorskip("deltalake")
    origin, seen = relay
    # 15 minutes, the shortest a role session may be: always inside botocore's renewal
    # window, so each writer that asks gets renewed keys, as a long run does every hour.
    env = profile_env(emulator, origin, tmp_path, "lake",
                      ASSUMED + "duration_seconds = 900\n")
    code, _, err = await cli(["run", *RANGE, "--format", "delta", "--out", bucket.url()], env,
                             tmp_path)
    assert code == 0, err
    assumed = [action for service, action, _ in seen.seen if action == "AssumeRole"]
    assert len(assumed) >= 2
    assert len({key for key in seen.keys("s3") if key.startswith("ASIA")}) >= 2


async def test_a_credential_process_profile(emulator: RunningEmulator, bucket: Bucket,
                                            relay: tuple[str, Relay], tmp_path: Path) -> None:
    origin, seen = relay
    helper = tmp_path / "creds.py"
    helper.write_text("import json\nprint(json.dumps({'Version': 1, 'AccessKeyId': "
                      f"'{PROCESS_KEY}', 'SecretAccessKey': 'process-secret'}}))\n")
    env = profile_env(emulator, origin, tmp_path, "helper",
                      f"[profile helper]\ncredential_process = {sys.executable} {helper}\n"
                      "region = us-east-1\n")
    code, _, err = await cli(["run", *RANGE, "--out", bucket.url()], env, tmp_path)
    assert code == 0, err
    assert seen.keys("s3") == {PROCESS_KEY}


async def test_an_sso_profile_with_a_cached_token(emulator: RunningEmulator, bucket: Bucket,
                                                  relay: tuple[str, Relay],
                                                  tmp_path: Path) -> None:
    import hashlib

    origin, seen = relay
    cache = tmp_path / ".aws" / "sso" / "cache"
    cache.mkdir(parents=True)
    expires = (datetime.now(UTC) + timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (cache / f"{hashlib.sha1(b'corp').hexdigest()}.json").write_text(json.dumps({
        "startUrl": "https://corp.awsapps.com/start", "region": "us-east-1",
        "accessToken": "cached-sso-access-token", "expiresAt": expires}))
    config = ("[profile sso]\nsso_session = corp\nsso_account_id = 123456789012\n"
              "sso_role_name = LakeWriter\nregion = us-east-1\n"
              "[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\n"
              "sso_region = us-east-1\n")
    env = profile_env(emulator, origin, tmp_path, "sso", config)
    env["AWS_ENDPOINT_URL_SSO"] = origin  # the portal's GetRoleCredentials, played here
    code, _, err = await cli(["run", *RANGE, "--out", bucket.url()], env, tmp_path)
    assert code == 0, err
    assert ("sso", "GetRoleCredentials", "cached-sso-access-token") in seen.seen
    assert seen.keys("s3") == {SSO_KEY}


@pytest.mark.parametrize("problem", ["no source keys", "role refused", "sso expired",
                                     "no such profile", "process fails"])
async def test_a_profile_that_fails_is_named_with_what_happened(
        emulator: RunningEmulator, bucket: Bucket, relay: tuple[str, Relay], tmp_path: Path,
        problem: str) -> None:
    origin, _ = relay
    profile, config, expected = {
        "no source keys": ("lake", f"[profile lake]\nrole_arn = {ROLE}\nsource_profile = "
                           "nobody\n", "AWS profile 'lake'"),
        "role refused": ("lake", f"[profile lake]\nrole_arn = {ROLE}-denied\n"
                         "source_profile = base\nregion = us-east-1\n",
                         "AWS profile 'lake': the role it assumes was refused (AccessDenied"),
        "sso expired": ("sso", "[profile sso]\nsso_session = corp\nsso_account_id = 1\n"
                        "sso_role_name = R\n[sso-session corp]\nsso_start_url = "
                        "https://corp.awsapps.com/start\nsso_region = us-east-1\n",
                        "AWS profile 'sso': its SSO sign-in has expired or was never made: "
                        "run `aws sso login --profile sso`"),
        "no such profile": ("ghost", "", "AWS profile 'ghost' is not in "),
        "process fails": ("helper", f"[profile helper]\ncredential_process = {sys.executable}"
                          " -c \"raise SystemExit(3)\"\n",
                          "AWS profile 'helper': its credential_process failed"),
    }[problem]
    env = profile_env(emulator, origin, tmp_path, profile, config)
    code, out, err = await cli(["run", *RANGE, "--out", bucket.url()], env, tmp_path)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert "base-secret" not in out + err
    assert emulator.state.stats()["export_calls"] == 0

