"""S3-style presigned links: signing, checking, and the objects they point at."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from urllib.parse import urlencode

BUCKET = "gio-raw-export"
_ACCESS_KEY = "EMULATORACCESSKEY"
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class StoredObject:
    """What a link points at: a generated part, and whether it is an unfinished one."""

    file: Path
    size: int
    md5: str
    trap: bool


class LinkCheck(Enum):
    OK = "ok"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad signature"
    EXPIRED = "expired"


class LinkSigner:
    """Signs object paths with an expiry and checks them, like an S3 presigned URL."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def query(self, path: str, issued: datetime, expires_seconds: int) -> str:
        amz_date = issued.astimezone(UTC).strftime(_AMZ_DATE)
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{_ACCESS_KEY}/{amz_date[:8]}/cn-north-1/s3/aws4_request",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires_seconds),
            "X-Amz-SignedHeaders": "host",
            "X-Amz-Signature": self._sign(path, amz_date, str(expires_seconds)),
        }
        return urlencode(params)

    def check(self, path: str, query: dict[str, str], now: datetime) -> LinkCheck:
        try:
            amz_date, expires = query["X-Amz-Date"], query["X-Amz-Expires"]
            given = query["X-Amz-Signature"]
            issued = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
            seconds = int(expires)
        except (KeyError, ValueError):
            return LinkCheck.MALFORMED
        if not hmac.compare_digest(given, self._sign(path, amz_date, expires)):
            return LinkCheck.BAD_SIGNATURE
        if now.timestamp() > issued.timestamp() + seconds:
            return LinkCheck.EXPIRED
        return LinkCheck.OK

    def _sign(self, path: str, amz_date: str, expires: str) -> str:
        message = f"GET\n{path}\n{amz_date}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def s3_error(code: str, message: str, extra: dict[str, str]) -> str:
    """An S3-like XML error body."""
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{fields}"
        "<RequestId>EMULATOR</RequestId></Error>"
    )
