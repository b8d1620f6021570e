"""S3 credentials: resolved once per process by one chain, and handed to every writer
(obstore for the parts, delta-rs for Delta, pyiceberg's FileIO for Iceberg), so that they
can never disagree about who they are.

- Keys in the environment (``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``, with
  ``AWS_SESSION_TOKEN``) are used as they are.
- Otherwise, with the ``[aws]`` extra (botocore), the AWS SDK's own chain: the shared
  config and credentials files with every profile kind (keys, ``role_arn`` with
  ``source_profile`` or ``credential_source``, ``credential_process``, SSO, a web identity
  token file), the web identity and container variables, then the instance metadata
  service; the profile's region and the ``AWS_ENDPOINT_URL_STS`` its calls honour.
  Temporary credentials are renewed before they expire: obstore asks again every
  :data:`RENEW_SECONDS`, and delta-rs gets fresh ones with each table handle.
- Without the extra, the few sources the stores read themselves: a web identity, a
  container role, the keys of a profile in the shared credentials file, the instance
  metadata service. A profile that needs more (assume role, a process, SSO) is named,
  with the extra that reads it.

Nothing here is ever printed: messages name the profile and the source, never a key.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backfill.clock import machine_now
from backfill.errors import OutputError
from backfill.install import install_line

if TYPE_CHECKING:
    from backfill.config import Settings

RENEW_SECONDS = 300.0
"""How long obstore keeps what it was handed before it asks again (botocore renews the
credentials themselves well before they expire: 15 minutes ahead)."""
METADATA_ENDPOINT = "http://169.254.169.254"
METADATA_WAIT = 1.0
"""Seconds the instance metadata service gets to answer before it counts as absent: on
a cloud machine it answers in milliseconds."""
PROFILE_KINDS = {"role_arn": "assumes a role", "credential_process": "runs a "
                 "credential_process", "sso_session": "signs in with SSO",
                 "sso_start_url": "signs in with SSO",
                 "web_identity_token_file": "uses a web identity"}
CREDENTIAL_VARIABLES = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN"})
"""Who a writer is, as the environment says it: replaced by the resolved credentials
wherever a library would read them its own way."""


@dataclass
class S3Credentials:
    """Who the writers are on S3: fixed ``keys``, a botocore ``source`` that renews itself,
    or neither (the stores read a web identity, a container role or the instance metadata
    service themselves, at ``metadata``)."""

    keys: dict[str, str] = field(default_factory=dict, repr=False)
    source: Any = field(default=None, repr=False)
    """botocore's credentials (``RefreshableCredentials`` for temporary ones)."""
    region: str = ""
    metadata: str = ""
    profile: str = ""

    def current(self) -> dict[str, str]:
        """The keys to sign with now (renewed first when they are about to expire), as
        ``access_key_id``, ``secret_access_key`` and ``session_token``; empty when the
        stores resolve them themselves."""
        if self.source is None:
            return dict(self.keys)
        frozen = self.source.get_frozen_credentials()
        found = {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key}
        if frozen.token:
            found["session_token"] = frozen.token
        return found

    def obstore(self) -> dict[str, Any]:
        """``S3Store`` arguments: its ``config`` keys, and a ``credential_provider`` for a
        source that renews itself."""
        config: dict[str, Any] = {}
        if self.region:
            config["region"] = self.region
        if self.metadata:
            config["metadata_endpoint"] = self.metadata
        if self.source is None:
            config.update({("token" if k == "session_token" else k): v
                           for k, v in self.keys.items()})
            return {"config": config}
        return {"config": config, "credential_provider": self._provide}

    def _provide(self) -> dict[str, Any]:
        keys = self.current()
        return {"access_key_id": keys["access_key_id"],
                "secret_access_key": keys["secret_access_key"],
                "token": keys.get("session_token"),
                "expires_at": machine_now() + timedelta(seconds=RENEW_SECONDS)}

    def delta(self) -> dict[str, str]:
        """delta-rs's storage options for the credentials, current now: a table handle
        made with them lives shorter than they do."""
        return self._named(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                            "AWS_REGION"))

    def iceberg(self) -> dict[str, str]:
        """pyiceberg's FileIO properties for the credentials, current now."""
        return self._named(("s3.access-key-id", "s3.secret-access-key", "s3.session-token",
                            "s3.region"))

    def _named(self, names: tuple[str, str, str, str]) -> dict[str, str]:
        """The current keys and the region under a library's names for them (key id,
        secret, session token, region)."""
        ours = ("access_key_id", "secret_access_key", "session_token")
        found = {names[ours.index(k)]: v for k, v in self.current().items()}
        if self.region:
            found[names[3]] = self.region
        return found


def s3_endpoint(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """Where S3 is for every writer: ``[storage] endpoint``, else the SDKs' own
    ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``; "" for AWS itself."""
    env = os.environ if env is None else env
    return (settings.storage.endpoint or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL") or "")


def bucket_endpoint(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The endpoint the Rust object_store (obstore, delta-rs) takes. It uses a given
    endpoint as it is; with virtual-hosted-style requests (OSS, COS) that must be the
    bucket's own host, which is made here from the store's endpoint as the AWS SDKs make
    it (``https://oss-cn-hangzhou.aliyuncs.com`` becomes
    ``https://BUCKET.oss-cn-hangzhou.aliyuncs.com``). pyarrow (Iceberg) takes the store's
    endpoint and adds the bucket itself."""
    from urllib.parse import urlsplit, urlunsplit

    from backfill.config import Remote

    endpoint = s3_endpoint(settings, env)
    out = settings.out
    if not (endpoint and settings.storage.virtual_hosted_style and isinstance(out, Remote)):
        return endpoint
    parts = urlsplit(endpoint)
    if (parts.hostname or "").startswith(f"{out.bucket}."):
        return endpoint  # given as the bucket's host already
    return urlunsplit((parts.scheme, f"{out.bucket}.{parts.netloc}", parts.path, "", ""))


_RESOLVED: dict[tuple[tuple[str, str], ...], S3Credentials] = {}
_RESOLVING = threading.Lock()
"""Writers open in worker threads: one resolution (one role assumed, one process run)."""


def s3_credentials(region: str = "", env: Mapping[str, str] | None = None) -> S3Credentials:
    """The process's S3 credentials (``region``: the configured one, over the profile's):
    resolved once for an environment, shared by every writer. Raises
    :class:`OutputError`, one line naming the profile and what failed, or every source
    tried when there is none."""
    env = os.environ if env is None else env
    memo = (("region", region), *sorted((k, v) for k, v in env.items()
                                        if k.startswith("AWS_") or k == "HOME"))
    with _RESOLVING:
        if memo not in _RESOLVED:
            _RESOLVED[memo] = _resolve(region, env)
        return _RESOLVED[memo]


def _resolve(region: str, env: Mapping[str, str]) -> S3Credentials:
    region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        keys = {"access_key_id": env["AWS_ACCESS_KEY_ID"],
                "secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}
        if token := env.get("AWS_SESSION_TOKEN"):
            keys["session_token"] = token
        return S3Credentials(keys=keys, region=region)
    try:
        import botocore.session  # noqa: F401  (the [aws] extra)
    except ImportError:
        return _without_botocore(region, env)
    return _with_botocore(region, env)


def _with_botocore(region: str, env: Mapping[str, str]) -> S3Credentials:
    import botocore.exceptions as errors
    import botocore.session

    profile = _profile(env)
    named = f"AWS profile {profile!r}"
    try:
        session = botocore.session.Session()
        source = session.get_credentials()
        if source is None:
            raise OutputError(_nothing_found(env, profile))
        source.get_frozen_credentials()  # a role, a process, SSO: asked now, not mid-run
        region = region or session.get_config_variable("region") or ""
    except errors.ProfileNotFound:
        raise OutputError(f"{named} is not in {_config_file(env)} or "
                          f"{_shared_file(env)}") from None
    except (errors.SSOTokenLoadError, errors.UnauthorizedSSOTokenError,
            errors.TokenRetrievalError):
        raise OutputError(f"{named}: its SSO sign-in has expired or was never made: run "
                          f"`aws sso login --profile {profile}`") from None
    except errors.CredentialRetrievalError as exc:
        raise OutputError(f"{named}: its credential_process failed ({_short(exc)})") from None
    except errors.PartialCredentialsError as exc:
        raise OutputError(f"{named}: its keys are incomplete ({_short(exc)})") from None
    except errors.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "refused")
        raise OutputError(f"{named}: the role it assumes was refused ({code}: "
                          f"{_short(exc)})") from None
    except (errors.InvalidConfigError, errors.BotoCoreError) as exc:
        raise OutputError(f"{named}: {_short(exc)}") from None
    return S3Credentials(source=source, region=region, profile=profile)


def _without_botocore(region: str, env: Mapping[str, str]) -> S3Credentials:
    """The sources obstore and delta-rs read themselves, and a profile's plain keys."""
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") and env.get("AWS_ROLE_ARN"):
        return S3Credentials(region=region)
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return S3Credentials(region=region)
    profile = _profile(env)
    keys = _profile_keys(_shared_file(env), profile)
    if keys:
        return S3Credentials(keys=keys, region=region, profile=profile)
    if kind := _profile_kind(_config_file(env), profile):
        raise OutputError(f"AWS profile {profile!r} {kind}, which only the AWS SDK's "
                          f"chain reads: {install_line('aws')}")
    endpoint, disabled = _metadata(env)
    if not disabled and _metadata_answers(endpoint):
        return S3Credentials(region=region, metadata=endpoint)
    raise OutputError(_nothing_found(env, profile) + f" ({install_line('aws')} reads every kind of "
                      "profile in ~/.aws/config too)")


def _profile(env: Mapping[str, str]) -> str:
    """The profile in use, as the AWS CLI picks it."""
    return env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"


def _metadata(env: Mapping[str, str]) -> tuple[str, bool]:
    """Where the instance metadata service is, and whether it is switched off."""
    endpoint = (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or env.get("AWS_METADATA_ENDPOINT")
                or METADATA_ENDPOINT).rstrip("/")
    return endpoint, env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"


def _nothing_found(env: Mapping[str, str], profile: str) -> str:
    endpoint, disabled = _metadata(env)
    metadata = ("instance metadata (disabled)" if disabled
                else f"instance metadata at {endpoint} (no answer in {METADATA_WAIT:g} s)")
    return ("no storage credentials: tried AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY, {_shared_file(env)} and {_config_file(env)} (profile "
            f"{profile}), a web identity (AWS_WEB_IDENTITY_TOKEN_FILE), a container role "
            f"and {metadata}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "AWS_PROFILE with a profile in those files")


def _shared_file(env: Mapping[str, str]) -> Path:
    path = env.get("AWS_SHARED_CREDENTIALS_FILE") or str(_home(env) / ".aws" / "credentials")
    return Path(path).expanduser()


def _config_file(env: Mapping[str, str]) -> Path:
    path = env.get("AWS_CONFIG_FILE") or str(_home(env) / ".aws" / "config")
    return Path(path).expanduser()


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def _read(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    with contextlib.suppress(OSError, configparser.Error):
        parser.read(path, encoding="utf-8")
    return parser


def _profile_keys(path: Path, profile: str) -> dict[str, str]:
    """A profile's keys in an AWS shared credentials file (nothing if the file or the
    profile is not there)."""
    parser = _read(path)
    if not parser.has_section(profile):
        return {}
    section = parser[profile]
    key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key or not secret:
        return {}
    found = {"access_key_id": key, "secret_access_key": secret}
    if token := section.get("aws_session_token"):
        found["session_token"] = token
    return found


def _profile_kind(path: Path, profile: str) -> str:
    """What a profile of ``~/.aws/config`` does that needs the SDK's chain, or ""."""
    parser = _read(path)
    section = "default" if profile == "default" else f"profile {profile}"
    if not parser.has_section(section):
        return ""
    return next((kind for key, kind in PROFILE_KINDS.items() if parser[section].get(key)),
                "")


def _metadata_answers(endpoint: str) -> bool:
    """Whether an instance metadata service answers at ``endpoint`` (IMDSv2's token call);
    a machine without one says so within :data:`METADATA_WAIT`."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80,
                                            timeout=METADATA_WAIT)
    try:
        connection.request("PUT", "/latest/api/token",
                           headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        return connection.getresponse().status < 500
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
