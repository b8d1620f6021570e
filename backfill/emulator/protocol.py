"""What the export API promises, as the emulator plays it: written from the API's own
documentation (``docs/export-api.md``), not from the client. The client keeps its own
copy of each fact, so a test where the two agree says something.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

TOKEN_PATH = "/auth/token"

V2_TYPES = ("visit", "page", "action", "action_tag", "custom_event", "ads_track_activation",
            "ads_track_click", "pvar", "evar", "vstr")
"""The ten data types of the newest v2 page."""
V1_TYPES = ("visit", "page", "action", "action_tag", "custom_attr", "ads_track_click",
            "ads_track_activation")
"""The seven tables a v1 answer mixes."""

HOUR_READY = timedelta(minutes=40)
"""An hour is usually exportable 30-40 minutes after it ends..."""
LATE_HOUR_READY = timedelta(minutes=60)
"""...about 60 for the hours 23:00-02:00..."""
DAY_READY = timedelta(hours=3)
"""...and a day 2-4 hours after it ends."""


def signature(secret: str, project_uid: str, ai: str, tm: int) -> str:
    """HMAC-SHA256 (lowercase hex), keyed with the private key, of
    ``POST\\n/auth/token\\nproject=<uid>&ai=<ai>&tm=<ms>``, as the documentation writes it."""
    message = "\n".join(("POST", TOKEN_PATH, f"project={project_uid}&ai={ai}&tm={tm}"))
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


# The v2 CSV header rows, from the field tables (docs/export-api.md, section 5), as the
# document lists them; ``customerAttributes2 … customerAttributes10`` spelled out.
_DOCUMENTED = """
visit: visitUserId, sessionId, accountVersion, platform, domain, page, queryParameters,
  referrer, language, screenHeight, screenWidth, time, sendTime, ip, userAgent,
  operatingSystem, operatingSystemVersion, clientVersion, channel, deviceBrand, deviceModel,
  deviceType, deviceOrientation, latitude, longitude, vstRequestId, idfa, androidId, IMEI
page: visitUserId, sessionId, platform, domain, page, queryParameters, referrer,
  referrerPage, title, time, sendTime, deviceOrientation, loginUserId, pageGroup,
  appVariable, customerAttributes2..10, pageAttributes1..10, pageRequestId, vstRequestId
action: visitUserId, sessionId, requestType, domain, page, sendTime, time, href,
  requestValue, index, info, pageRequestId, actionRequestId
action_tag: sendTime, actionRequestId, ruleId
custom_event: visitUserId, sessionId, time, sendTime, pageTime, domain, page,
  queryParameters, eventName, eventNumber, eventVariable, loginUserId, pageRequestId
pvar: visitUserId, sessionId, time, sendTime, pageTime, domain, page, pageVariable,
  pageRequestId
evar: visitUserId, sessionId, time, sendTime, domain, conversionVariable
ads_track_activation: visitUserId, idfa, imei, uuid, androidId, ip, userAgent, platform,
  operatingSystemVersion, sendTime, linkId, campaignId, channelId, linkName, campaignName,
  channelName
ads_track_click: idfa, imei, uuid, androidId, ip, userAgent, platform,
  operatingSystemVersion, eventTime, linkId, campaignId, channelId, linkName, campaignName,
  channelName
vstr: visitUserId, time, sendTime, visitorVariable
custom_attr: visitUserId, sessionId, time, sendTime, domain, page, eventName, attributes,
  loginUserId
"""


def _columns(text: str) -> dict[str, tuple[str, ...]]:
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.strip().splitlines():
        if not line.startswith(" "):
            name, _, line = line.partition(":")
            current = tables[name] = []
        for item in (i.strip() for i in line.split(",") if i.strip()):
            stem, dots, last = item.partition("..")
            if dots:  # customerAttributes2..10
                base = stem.rstrip("0123456789")
                current += [f"{base}{n}" for n in range(int(stem[len(base):]), int(last) + 1)]
            else:
                current.append(item)
    return {name: tuple(columns) for name, columns in tables.items()}


COLUMNS = _columns(_DOCUMENTED)
"""Each data type's columns, in order (v1's ``custom_attr`` with the older names)."""
TIME_COLUMNS = frozenset({"time", "sendTime", "pageTime", "eventTime"})
"""Epoch milliseconds, UTC."""
JSON_COLUMNS = frozenset({"appVariable", "eventVariable", "pageVariable",
                          "conversionVariable", "visitorVariable", "attributes"})
"""JSON maps, as text: where the CSV escaping matters."""
