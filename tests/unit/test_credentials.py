"""Which S3 credentials every writer gets, decided from the environment and the AWS files
alone (no network): the keys of the environment, the SDK's chain's renewed keys handed
out fresh, the few sources read without the extra, and the one line when none is there."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backfill.destination import credentials as c
from backfill.errors import OutputError
from backfill.install import install_line


def test_keys_in_the_environment_reach_every_writer_as_they_are() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
           "AWS_SESSION_TOKEN": "tok", "AWS_REGION": "eu-west-1"}
    found = c._resolve("", env)
    assert found.obstore() == {"config": {"region": "eu-west-1", "access_key_id": "AKIAENV",
                                          "secret_access_key": "s3cr3t", "token": "tok"}}
    assert found.delta() == {"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                             "AWS_SESSION_TOKEN": "tok", "AWS_REGION": "eu-west-1"}
    assert found.iceberg()["s3.access-key-id"] == "AKIAENV"
    assert c._resolve("cn-north-1", env).region == "cn-north-1"  # [storage] region wins


class Renewing:
    """botocore's credentials as a run sees them: renewed between two asks."""

    def __init__(self) -> None:
        self.asked = 0

    def get_frozen_credentials(self) -> Any:
        self.asked += 1
        return SimpleNamespace(access_key=f"ASIA{self.asked}", secret_key="s", token="t")


def test_a_renewing_source_is_asked_each_time_a_writer_needs_keys() -> None:
    found = c.S3Credentials(source=Renewing(), region="us-east-1")
    arguments = found.obstore()
    provider = arguments.pop("credential_provider")
    assert arguments == {"config": {"region": "us-east-1"}}
    first, second = provider(), provider()
    assert (first["access_key_id"], second["access_key_id"]) == ("ASIA1", "ASIA2")
    assert first["token"] == "t" and first["expires_at"] > c.machine_now()
    assert found.delta()["AWS_ACCESS_KEY_ID"] == "ASIA3"  # a new Delta handle: fresh keys
    assert found.iceberg()["s3.session-token"] == "t"


@pytest.fixture
def without_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "botocore.session", None)


@pytest.mark.usefixtures("without_botocore")
def test_without_the_extra_a_profiles_plain_keys_are_read(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = nope\naws_secret_access_key = nope\n"
        "[lake]\naws_access_key_id = AKIALAKE\naws_secret_access_key = lake-secret\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"), "AWS_PROFILE": "lake",
           "HOME": str(tmp_path)}
    assert c._resolve("", env).current() == {"access_key_id": "AKIALAKE",
                                              "secret_access_key": "lake-secret"}
    web = {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_ROLE_ARN": "arn:x"}
    assert c._resolve("", web).current() == {}  # the stores read it themselves


@pytest.mark.usefixtures("without_botocore")
@pytest.mark.parametrize(("line", "kind"), [
    ("role_arn = arn:aws:iam::1:role/r\nsource_profile = base", "assumes a role"),
    ("credential_process = /bin/creds", "runs a credential_process"),
    ("sso_session = corp", "signs in with SSO")])
def test_without_the_extra_a_profile_that_needs_it_says_so(tmp_path: Path, line: str,
                                                           kind: str) -> None:
    (tmp_path / "config").write_text(f"[profile lake]\n{line}\n")
    env = {"AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_PROFILE": "lake",
           "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.raises(OutputError) as raised:
        c._resolve("", env)
    assert str(raised.value) == (f"AWS profile 'lake' {kind}, which only the AWS SDK's chain "
                                 f"reads: {install_line('aws')}")


@pytest.mark.usefixtures("without_botocore")
def test_with_nothing_the_line_names_every_source_and_the_extra(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.raises(OutputError) as raised:
        c._resolve("", env)
    line = str(raised.value)
    assert line.startswith("no storage credentials: tried AWS_ACCESS_KEY_ID")
    assert f"{tmp_path}/.aws/credentials and {tmp_path}/.aws/config (profile default)" in line
    assert "instance metadata (disabled)" in line and install_line("aws") in line


def test_credentials_are_resolved_once_per_environment(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(c, "_RESOLVED", {})
    env = {"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"}
    assert c.s3_credentials("", env) is c.s3_credentials("", env)
    assert c.s3_credentials("", env) is not c.s3_credentials("", {**env, "AWS_PROFILE": "x"})


def test_the_endpoint_is_one_for_every_writer() -> None:
    from dataclasses import replace

    from backfill.config import Settings, Storage

    s = Settings()
    assert c.s3_endpoint(s, {"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://b"}
                         ) == "http://b"
    assert c.s3_endpoint(s, {"AWS_ENDPOINT_URL": "http://a"}) == "http://a"
    given = replace(s, storage=Storage(endpoint="https://oss-cn-hangzhou.aliyuncs.com"))
    assert c.s3_endpoint(given, {"AWS_ENDPOINT_URL_S3": "http://b"}).startswith("https://oss")
    assert c.s3_endpoint(s, {}) == ""


def test_delta_gets_the_azure_and_gcs_identities_obstore_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """obstore reads IDENTITY_ENDPOINT (App Service) and SERVICE_ACCOUNT itself, delta-rs
    only under its own names: the table writer is handed the same identity as the parts."""
    from backfill.config import Settings, parse_out
    from backfill.destination.tables import delta_location

    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token")
    monkeypatch.setenv("SERVICE_ACCOUNT", "/var/run/sa.json")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "lake")
    root, options = delta_location(Settings(out=parse_out("az://tables/gio")))
    assert root == "az://tables/gio"
    assert options()["AZURE_MSI_ENDPOINT"] == "http://localhost:42356/msi/token"
    assert options()["GOOGLE_SERVICE_ACCOUNT"] == "/var/run/sa.json"
    assert options()["AZURE_STORAGE_ACCOUNT_NAME"] == "lake"
    monkeypatch.setenv("AZURE_MSI_ENDPOINT", "http://chosen/")  # the user's own name wins
    assert delta_location(Settings(out=parse_out("az://tables/gio")))[1]()[
        "AZURE_MSI_ENDPOINT"] == "http://chosen/"
