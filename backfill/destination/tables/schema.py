"""The documented columns of each data type, and their types in a table. Pure.

From GrowingIO's v2 field tables (``docs/export-api.md``). Times are epoch milliseconds
in UTC, typed as ``timestamp[ms, UTC]``; the screen sizes and ``index`` are integers;
coordinates and ``eventNumber`` (it holds decimals) are doubles; every other column is
text, even one that looks like a number (``00123``) or a null (``NULL``). The JSON-map
columns (``appVariable`` and the like) stay text, byte for byte as exported: a reader
parses them with its own JSON functions, and nothing is lost or reordered.
"""

from __future__ import annotations

_CUSTOMER = [f"customerAttributes{i}" for i in range(2, 11)]
_PAGE_ATTRS = [f"pageAttributes{i}" for i in range(1, 11)]

COLUMNS: dict[str, tuple[str, ...]] = {
    "visit": (
        "visitUserId", "sessionId", "accountVersion", "platform", "domain", "page",
        "queryParameters", "referrer", "language", "screenHeight", "screenWidth", "time",
        "sendTime", "ip", "userAgent", "operatingSystem", "operatingSystemVersion",
        "clientVersion", "channel", "deviceBrand", "deviceModel", "deviceType",
        "deviceOrientation", "latitude", "longitude", "vstRequestId", "idfa", "androidId",
        "IMEI",
    ),
    "page": (
        "visitUserId", "sessionId", "platform", "domain", "page", "queryParameters",
        "referrer", "referrerPage", "title", "time", "sendTime", "deviceOrientation",
        "loginUserId", "pageGroup", "appVariable", *_CUSTOMER, *_PAGE_ATTRS,
        "pageRequestId", "vstRequestId",
    ),
    "action": (
        "visitUserId", "sessionId", "requestType", "domain", "page", "sendTime", "time",
        "href", "requestValue", "index", "info", "pageRequestId", "actionRequestId",
    ),
    "action_tag": ("sendTime", "actionRequestId", "ruleId"),
    "custom_event": (
        "visitUserId", "sessionId", "time", "sendTime", "pageTime", "domain", "page",
        "queryParameters", "eventName", "eventNumber", "eventVariable", "loginUserId",
        "pageRequestId",
    ),
    "pvar": (
        "visitUserId", "sessionId", "time", "sendTime", "pageTime", "domain", "page",
        "pageVariable", "pageRequestId",
    ),
    "evar": ("visitUserId", "sessionId", "time", "sendTime", "domain", "conversionVariable"),
    "ads_track_activation": (
        "visitUserId", "idfa", "imei", "uuid", "androidId", "ip", "userAgent", "platform",
        "operatingSystemVersion", "sendTime", "linkId", "campaignId", "channelId", "linkName",
        "campaignName", "channelName",
    ),
    "ads_track_click": (
        "idfa", "imei", "uuid", "androidId", "ip", "userAgent", "platform",
        "operatingSystemVersion", "eventTime", "linkId", "campaignId", "channelId", "linkName",
        "campaignName", "channelName",
    ),
    "vstr": ("visitUserId", "time", "sendTime", "visitorVariable"),
    # v1 only, with the older column names.
    "custom_attr": (
        "visitUserId", "sessionId", "time", "sendTime", "domain", "page", "eventName",
        "attributes", "loginUserId",
    ),
}  # fmt: skip

TIME_COLUMNS = frozenset({"time", "sendTime", "pageTime", "eventTime"})
INTEGER_COLUMNS = frozenset({"screenHeight", "screenWidth", "index"})
DOUBLE_COLUMNS = frozenset({"latitude", "longitude", "eventNumber"})
JSON_COLUMNS = frozenset({"appVariable", "eventVariable", "pageVariable",
                          "conversionVariable", "visitorVariable", "attributes"})


def column_kind(column: str) -> str:
    """``timestamp``, ``integer``, ``double`` or ``text``: what a column becomes."""
    if column in TIME_COLUMNS:
        return "timestamp"
    if column in INTEGER_COLUMNS:
        return "integer"
    if column in DOUBLE_COLUMNS:
        return "double"
    return "text"
