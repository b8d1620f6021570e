"""What an HTTP answer means, for every exchange backfill makes: the export API, the token
endpoint and the download links. Pure, but for reading a response's headers.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime

import aiohttp
from yarl import URL

from backfill.errors import UsageError
from backfill.layout import redact
from backfill.net.transport import origin


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), if usable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), 3600.0)


def not_json(resp: aiohttp.ClientResponse) -> str:
    """What a 200 that is not JSON looks like, for one line."""
    kind = resp.headers.get("Content-Type", "no content type").split(";")[0].strip()
    return (f"it answered {resp.status} {kind}, not JSON: is a proxy or a portal in the "
            "way?")


def redirect_refused(what: str, base_url: str, resp: aiohttp.ClientResponse) -> UsageError:
    """The one line for an API redirect, which is never followed (see :func:`origin`)."""
    location = resp.headers.get("Location", "")
    target = str(resp.url.join(URL(location))) if location else "nowhere"
    shown = redact(target) if location else target
    if location and origin(target) != origin(base_url):
        scheme, host, port = origin(target)
        return UsageError(f"{what} at {base_url} redirects to {shown} (HTTP {resp.status}): "
                          "the credentials are sent only to GIO_BASE_URL's own origin; set "
                          f"GIO_BASE_URL={scheme}://{host}:{port} if that is GrowingIO")
    return UsageError(f"{what} at {base_url} redirects to {shown} (HTTP {resp.status}); "
                      "backfill does not follow API redirects: check GIO_BASE_URL")
