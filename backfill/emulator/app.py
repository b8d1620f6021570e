"""The emulator's aiohttp application: token, export endpoints, object store, controls.

Routes::

    POST /auth/token                                          token (HMAC-checked)
    GET  /insights/{ai}/{date}.json                           v1 export
    GET  /v2/insights/{export_type}/{data_type}/{ai}/{date}.json   v2, one type
    GET  /v2/insights/{export_type}/{ai}/{date}.json          v2, all types
    GET  /gio-raw-export/{object}                             presigned downloads
    GET  /_emulator/stats   POST /_emulator/faults   GET|POST /_emulator/clock
    GET  /_emulator/redirect?to=URL (or ?loop=1)              hostile links' redirects
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from hmac import compare_digest
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio
from aiohttp import web

from backfill.emulator.clock import Clock, machine_time
from backfill.emulator.config import FAULT_KINDS, V1_TYPES, V2_TYPES, EmulatorConfig
from backfill.emulator.data import DataSettings, DataStore, default_data_dir
from backfill.emulator.jobs import Answer, JobBook, Status
from backfill.emulator.links import BUCKET, LinkCheck, LinkSigner, StoredObject, s3_error
from backfill.emulator.protocol import TOKEN_PATH, signature
from backfill.emulator.ratelimit import SlidingWindowLimiter, retry_after_header
from backfill.keys import Granularity, Key, parse_export_date

_CHUNK = 256 * 1024
_LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


@dataclass
class _Token:
    code: str
    expires: float


class EmulatorState:
    """Everything the running emulator knows; one per application."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.clock = Clock(config.now, config.speed)
        self.data = DataStore(
            config.data_dir or default_data_dir(),
            DataSettings(config.seed, config.bytes_per_hour, config.part_size,
                         config.compress_level, config.flat_data, config.keep_rows,
                         frozenset(config.drift_hours), config.long_field),
        )
        self.jobs = JobBook(config)
        self.signer = LinkSigner(secrets.token_bytes(32))
        self.limiter = SlidingWindowLimiter(config.rate_limit, config.rate_window)
        self.objects: dict[str, StoredObject] = {}
        self.token: _Token | None = None
        self.counts: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.rng = random.Random(f"{config.seed}:order")
        self.generating = asyncio.Lock()
        self.downloads_by_object: Counter[str] = Counter()
        """Download requests by object name, whatever their outcome."""
        self.range_starts: list[tuple[int, int]] = []
        """Each range request's first byte and the object's size, in order."""
        self.export_times: list[float] = []
        self.export_keys: list[str] = []
        """The key of every export call that got past the rate limit, in order."""
        """When each export call arrived (``time.monotonic()``), in order."""

    def stats(self) -> dict[str, Any]:
        """The counters served at ``/_emulator/stats``."""
        calls = {name: self.counts[f"calls.{name}"]
                 for name in ("token", "v1", "v2_type", "v2_all", "download")}
        return {
            "calls": calls,
            "export_calls": calls["v1"] + calls["v2_type"] + calls["v2_all"],
            "answers": dict(self.statuses),
            "tokens_issued": self.counts["tokens_issued"],
            "tokens_revoked": self.counts["tokens_revoked"],
            "unauthorized": self.counts["unauthorized"],
            "rate_limited": self.counts["rate_limited"],
            "server_errors": self.counts["server_errors"],
            "links_issued": self.counts["links_issued"],
            "trap_links_issued": self.counts["trap_links_issued"],
            "bytes_served": self.counts["bytes_served"],
            "range_requests": self.counts["range_requests"],
            "downloads_completed": self.counts["downloads_completed"],
            "downloads_expired": self.counts["downloads_expired"],
            "downloads_trap": self.counts["downloads_trap"],
            "downloads_with_credentials": self.counts["downloads_with_credentials"],
            "downloads_not_identity": self.counts["downloads_not_identity"],
            "faults": dict(self.config.faults.injected),
            "peak_calls_per_window": self.limiter.peak_offered,
        }


STATE = web.AppKey("emulator_state", EmulatorState)


def create_app(config: EmulatorConfig | None = None) -> web.Application:
    """A new emulator application with its own state (``app[STATE]``)."""
    app = web.Application()
    app[STATE] = EmulatorState(config or EmulatorConfig())
    app.add_routes([
        web.post(TOKEN_PATH, _token),
        web.get("/insights/{ai}/{date}.json", _v1),
        web.get("/v2/insights/{export_type}/{data_type}/{ai}/{date}.json", _v2_type),
        web.get("/v2/insights/{export_type}/{ai}/{date}.json", _v2_all),
        web.get(f"/{BUCKET}/{{object:.+}}", _download),
        web.get("/_emulator/redirect", _redirect),
        web.get("/_emulator/stats", _stats),
        web.post("/_emulator/faults", _set_faults),
        web.get("/_emulator/clock", _get_clock),
        web.post("/_emulator/clock", _set_clock),
    ])  # fmt: skip
    return app


# --- authentication -----------------------------------------------------------------------


def _auth_failure(st: EmulatorState, message: str, status: int = 401) -> web.Response:
    if status == 401:
        st.counts["unauthorized"] += 1
    return web.json_response({"status": "error", "code": status, "message": message},
                             status=status)


async def _token(request: web.Request) -> web.StreamResponse:
    response = await _token_answer(request)
    # The server's own clock, as a real one's Date header would show it.
    offset = request.app[STATE].config.clock_offset
    response.headers["Date"] = formatdate(machine_time() + offset, usegmt=True)
    return response


async def _token_answer(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    st.counts["calls.token"] += 1
    if redirect := _api_redirect(request):
        return redirect
    if st.config.token_answer == "html":
        return web.Response(text=_PORTAL, content_type="text/html")
    creds = st.config.credentials
    body = await request.text()
    params = dict(parse_qsl(body, keep_blank_values=True))
    if request.headers.get("X-Client-Id") != creds.client_id:
        return _auth_failure(st, "unknown client id")
    if set(params) != {"project", "ai", "tm", "auth"}:
        return _auth_failure(st, "body must be project=...&ai=...&tm=...&auth=...")
    if params["project"] != creds.project_uid or params["ai"] != creds.ai:
        return _auth_failure(st, "unknown project")
    try:
        tm = int(params["tm"])
    except ValueError:
        return _auth_failure(st, "tm must be unix milliseconds")
    server_ms = (machine_time() + st.config.clock_offset) * 1000
    if abs(server_ms - tm) > st.config.token_skew_seconds * 1000:
        return _auth_failure(st, "tm is too far from the server's time")
    expected = signature(creds.secret, params["project"], params["ai"], tm)
    if not compare_digest(params["auth"].encode(), expected.encode()):
        return _auth_failure(st, "signature does not match")
    # A new token revokes the previous one, as the real service does.
    lifetime = st.config.token_lifetime.total_seconds()
    st.token = _Token(secrets.token_hex(24), st.clock.time() + lifetime)
    st.counts["tokens_issued"] += 1
    return web.json_response({"status": "success", "code": st.token.code})


_PORTAL = ("<!DOCTYPE html><html><head><title>Sign in to the guest network</title></head>"
           "<body><form action='/login'>Accept the terms to continue</form></body></html>")


def _api_redirect(request: web.Request) -> web.Response | None:
    target = request.app[STATE].config.api_redirect
    if target is None:
        return None
    return web.Response(status=307, headers={"Location": target + request.path_qs})


def _check_token(request: web.Request, ai: str) -> web.Response | None:
    st = request.app[STATE]
    creds = st.config.credentials
    if request.headers.get("X-Client-Id") != creds.client_id:
        return _auth_failure(st, "unknown client id")
    header = request.headers.get("Authorization", "")
    if not header.startswith("Token "):
        return _auth_failure(st, "Authorization must be 'Token <code>'")
    token = st.token
    if token is None or not compare_digest(header[6:].encode(), token.code.encode()):
        return _auth_failure(st, "token invalid or revoked")
    if st.clock.time() > token.expires:
        return _auth_failure(st, "token expired")
    if ai != creds.ai:
        return _auth_failure(st, "no access to this project", status=403)
    if st.config.faults.roll("revoke_token"):
        st.token = None
        st.counts["tokens_revoked"] += 1
        return _auth_failure(st, "token invalid or revoked")
    return None


# --- export endpoints ---------------------------------------------------------------------


async def _v1(request: web.Request) -> web.Response:
    date = request.match_info["date"]
    granularity = Granularity.HOUR if len(date) == 10 else Granularity.DAY
    return await _export(request, "v1", granularity.value, None)


async def _v2_type(request: web.Request) -> web.Response:
    info = request.match_info
    return await _export(request, "v2_type", info["export_type"], info["data_type"])


async def _v2_all(request: web.Request) -> web.Response:
    return await _export(request, "v2_all", request.match_info["export_type"], None)


def _bad_request(message: str) -> web.Response:
    return web.json_response({"status": "error", "errorMsg": message}, status=400)


async def _export(request: web.Request, family: str, export_type: str,
                  data_type: str | None) -> web.Response:
    st = request.app[STATE]
    st.counts[f"calls.{family}"] += 1
    st.export_times.append(time.monotonic())
    if redirect := _api_redirect(request):
        return redirect
    wait = st.limiter.admit(request.headers.get("X-Client-Id", ""))
    if wait is not None:
        st.counts["rate_limited"] += 1
        return web.json_response(
            {"status": "error", "code": 429, "message": "too many requests: 2 per second"},
            status=429, headers={"Retry-After": retry_after_header(wait)})
    if st.config.faults.roll("api_5xx"):
        st.counts["server_errors"] += 1
        if st.config.retry_after_5xx is not None:
            return web.json_response({"status": "error", "code": 503}, status=503, headers={
                "Retry-After": retry_after_header(st.config.retry_after_5xx)})
        code = st.rng.choice((500, 502, 503))
        return web.json_response({"status": "error", "code": code}, status=code)
    ai = request.match_info["ai"]
    if failure := _check_token(request, ai):
        return failure
    if export_type not in ("day", "hour"):
        return _bad_request(f"unknown export type {export_type!r}")
    if data_type is not None and data_type not in V2_TYPES:
        return _bad_request(f"unknown data type {data_type!r}")
    try:
        expire = int(request.query.get("expire", "5"))
    except ValueError:
        return _bad_request("expire must be a whole number of minutes")
    if not 1 <= expire <= st.config.max_expire_minutes:
        return _bad_request(f"expire must be 1..{st.config.max_expire_minutes} minutes")

    granularity = Granularity(export_type)
    date_text = request.match_info["date"]
    try:
        key: Key | None = (Key.parse(date_text) if family == "v1"
                           else parse_export_date(date_text, granularity))
    except ValueError:
        key = None  # a malformed date is NOT_EXISTS, as documented
    types = (data_type,) if data_type else (V1_TYPES if family == "v1" else V2_TYPES)
    st.export_keys.append(key.name if key is not None else date_text)
    if key is not None and key.name in st.config.unusable_keys:
        return web.Response(text="<html><body>Service temporarily rerouted</body></html>",
                            content_type="text/html")
    answer = Answer(Status.NOT_EXISTS)
    if key is not None:
        job_id = (family, ",".join(types), ai, key.name)
        answer = st.jobs.answer(job_id, key, st.clock.now(), can_fail=family != "v1")
    st.statuses[answer.status.value] += 1

    links: dict[str, list[str]] = {t: [] for t in types}
    if key is not None and answer.status in (Status.FINISHED, Status.RUNNING):
        trap = answer.status is Status.RUNNING
        if not trap or st.config.trap_links:
            links = await _links(request, key, types, answer, expire, trap=trap)
    return web.json_response(_body(family, answer, links, export_type, data_type, date_text,
                                   st.config.absent_types, st.clock.time()))


def _body(family: str, answer: Answer, links: dict[str, list[str]], export_type: str,
          data_type: str | None, date_text: str, absent: tuple[str, ...] = (),
          now: float = 0.0) -> dict[str, Any]:
    if family == "v1":
        return {"status": answer.status.value,
                "downlinks": [link for group in links.values() for link in group]}
    return {
        "status": answer.status.value,
        "downloadLinks": links[data_type] if data_type else {
            t: group for t, group in links.items() if t not in absent},
        "exportType": export_type,
        "dataType": data_type or "all",
        "exportDate": date_text,
        "exportVersion": answer.version,
        "requestTime": int(now * 1000),
        "errorMsg": answer.error,
    }


async def _links(request: web.Request, key: Key, types: tuple[str, ...], answer: Answer,
                 expire_minutes: int, *, trap: bool) -> dict[str, list[str]]:
    """Register the objects of a job answer and sign a link to each, in shuffled order."""
    st = request.app[STATE]
    ai = request.match_info["ai"]
    hours = key.hours()
    async with st.generating:
        found = await anyio.to_thread.run_sync(
            lambda: {(t, h): st.data.parts(ai, t, h) for t in types for h in hours})
    job_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"{st.config.seed}/{ai}/{key.name}/"
                                              f"{','.join(types)}/{answer.version}")
    issued = st.clock.now()
    origin = st.config.link_origin or str(request.url.origin())
    links: dict[str, list[str]] = {}
    for data_type in types:
        group = []
        for hour in hours:
            parts = found[data_type, hour]
            if trap:
                parts = parts[: max(1, len(parts) // 2)]
            for index, part in enumerate(parts):
                name = _object_name(ai, data_type, hour, index, job_uuid, trap)
                st.objects[name] = StoredObject(part.path, part.size, part.md5, trap)
                path = f"/{BUCKET}/{name}"
                group.append(f"{origin}{path}?{st.signer.query(path, issued, expire_minutes * 60)}")
        st.rng.shuffle(group)  # the API promises no order between two answers
        bad = st.config.bad_links.get(key.name)
        if bad and group and not trap and data_type == types[0]:
            group[0] = _hostile(group[0], bad, origin)
        links[data_type] = group
        st.counts["links_issued"] += len(group)
        st.counts["trap_links_issued"] += len(group) if trap else 0
    return links


def _hostile(link: str, how: str, origin: str) -> str:
    """``link`` made bad the way ``how`` says (see ``EmulatorConfig.bad_links``)."""
    if how == "scheme":
        return "ftp" + link[link.index("://"):]
    if how == "redirect_scheme":
        return f"{origin}/_emulator/redirect?{urlencode({'to': 'ftp' + link[link.index('://'):]})}"
    if how == "redirect_loop":
        return f"{origin}/_emulator/redirect?loop=1"
    raise ValueError(f"unknown bad link {how!r}")


async def _redirect(request: web.Request) -> web.Response:
    target = request.path_qs if request.query.get("loop") else request.query.get("to", "/")
    return web.Response(status=302, headers={"Location": target})


def _object_name(ai: str, data_type: str, hour: Key, index: int, job_uuid: uuid.UUID,
                 trap: bool) -> str:
    # Object names carry the UTC hour, like the real exports; one uuid per job, so that a
    # client naming files after the link's last segment would overwrite its own parts.
    folder = f"export_{ai}_{data_type}_{hour.start.astimezone(UTC):%Y%m%d%H}"
    temporary = "_temporary/0/" if trap else ""
    return f"{folder}/{temporary}part-{index:05d}-{job_uuid}-c000.csv.gz"


# --- the object store ---------------------------------------------------------------------


def _s3_denied(code: str, message: str, status: int = 403, *,
               headers: dict[str, str] | None = None,
               fields: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=s3_error(code, message, fields or {}),
                        content_type="application/xml", headers=headers)


async def _download(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    st.counts["calls.download"] += 1
    if {"X-Client-Id", "Authorization"} & set(request.headers):
        st.counts["downloads_with_credentials"] += 1  # the API's headers have no place here
    if request.headers.get("Accept-Encoding", "identity") != "identity":
        st.counts["downloads_not_identity"] += 1
    now = st.clock.now()
    check = st.signer.check(request.path, dict(request.query), now)
    if check is LinkCheck.MALFORMED:
        return _s3_denied("AuthorizationQueryParametersError", "Query-string authentication "
                          "requires the X-Amz-Date, X-Amz-Expires and X-Amz-Signature parameters")
    if check is LinkCheck.BAD_SIGNATURE:
        return _s3_denied("SignatureDoesNotMatch", "The request signature we calculated does "
                          "not match the signature you provided.")
    stored = st.objects.get(request.match_info["object"])
    st.downloads_by_object[request.match_info["object"]] += 1
    if stored is None:
        return _s3_denied("NoSuchKey", "The specified key does not exist.", status=404)
    if stored.trap:
        st.counts["downloads_trap"] += 1
    if check is LinkCheck.EXPIRED:
        st.counts["downloads_expired"] += 1
        extra = {"X-Amz-Expires": request.query["X-Amz-Expires"],
                 "ServerTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
        return _s3_denied("AccessDenied", "Request has expired", fields=extra)
    return await _serve(request, stored)


async def _serve(request: web.Request, stored: StoredObject) -> web.StreamResponse:
    st = request.app[STATE]
    size = stored.size
    try:
        span = request.http_range
    except ValueError:
        return _s3_denied("InvalidArgument", "Invalid Range header", status=400)
    start, stop, _ = span.indices(size)
    if span.start and st.config.range_shift:
        start = min(start + st.config.range_shift, size - 1)
    etag = stored.md5 if st.config.etag_md5 else f"{stored.md5[::-1]}-2"  # multipart-like
    headers = {
        "Content-Type": "application/octet-stream",
        "ETag": f'"{etag}"',
        "Accept-Ranges": "bytes",
        "Last-Modified": _LAST_MODIFIED,
    }
    if st.config.md5_header:
        headers["x-amz-meta-md5-hash"] = stored.md5
    if st.config.content_md5:
        headers["Content-MD5"] = base64.b64encode(bytes.fromhex(stored.md5)).decode()
    if st.config.content_encoding:
        headers["Content-Encoding"] = st.config.content_encoding
    status = 200
    if span.start is not None or span.stop is not None:
        st.counts["range_requests"] += 1
        st.range_starts.append((start, size))
        if start >= size or stop <= start:
            return _s3_denied("InvalidRange", "The requested range is not satisfiable",
                              status=416, headers={"Content-Range": f"bytes */{size}"},
                              fields={"ActualObjectSize": str(size)})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    count = stop - start

    fault = next((k for k in FAULT_KINDS[3:] if st.config.faults.roll(k)), None)
    if fault == "slow_first_byte":
        await asyncio.sleep(st.config.faults.slow_seconds)
    if fault == "truncate":
        count -= max(1, count // 3)  # a consistent but short answer: only checksums catch it
    response = web.StreamResponse(status=status, headers=headers)
    if fault == "endless":
        response.enable_chunked_encoding()  # no length, and no end
    else:
        response.content_length = count
    await response.prepare(request)
    # Opened here, not in a thread: aiohttp cancels handlers of clients that left, and a
    # cancellation landing as the thread returns would leak the handle. Opening a local
    # file is a metadata call; the reads and sendfile below stay off the loop.
    with stored.file.open("rb") as f:
        if fault in (None, "slow_first_byte", "truncate"):
            await _sendfile(request, f, start, count)
        elif fault in ("trickle", "endless"):
            await _unending_body(request, response, f, start, count, fault)
        else:
            await _faulty_body(request, response, f, start, count, fault)
    if request.transport is not None and not request.transport.is_closing():
        await response.write_eof()
        st.counts["downloads_completed"] += 1
    return response


async def _sendfile(request: web.Request, f: Any, offset: int, count: int) -> None:
    st = request.app[STATE]
    transport = request.transport
    if transport is None or count == 0:
        return
    # Counted before the send: the client may read the last byte before this handler resumes.
    st.counts["bytes_served"] += count
    try:
        await asyncio.get_running_loop().sendfile(transport, f, offset, count)
    except (ConnectionError, RuntimeError):  # the client went away mid-body
        st.counts["bytes_served"] -= count
    except BaseException:
        st.counts["bytes_served"] -= count
        raise


async def _faulty_body(request: web.Request, response: web.StreamResponse, f: Any,
                       offset: int, count: int, fault: str) -> None:
    """Send a body that breaks the way ``fault`` says: reset, corrupt or stall."""
    st = request.app[STATE]
    half = count // 2
    await anyio.to_thread.run_sync(f.seek, offset)
    sent = 0
    while sent < count:
        chunk = await anyio.to_thread.run_sync(f.read, min(_CHUNK, count - sent))
        if not chunk:
            break
        if fault == "corrupt" and sent <= half < sent + len(chunk):
            i = half - sent
            chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
        if fault == "wrong_object":
            chunk = _restamped(chunk, offset + sent)
        if fault in ("reset", "stall") and sent + len(chunk) > half >= sent:
            st.counts["bytes_served"] += half - sent
            await response.write(chunk[: half - sent])
            if fault == "reset":
                if request.transport is not None:
                    request.transport.abort()
                return
            await asyncio.sleep(st.config.faults.stall_seconds)
            chunk = chunk[half - sent:]
            sent = half
        st.counts["bytes_served"] += len(chunk)
        await response.write(chunk)
        sent += len(chunk)


async def _unending_body(request: web.Request, response: web.StreamResponse, f: Any,
                         offset: int, count: int, fault: str) -> None:
    """A body that trickles at ``trickle_rate`` bytes/s, or (``endless``) the object's
    bytes at full speed, then the same bytes again, forever."""
    st = request.app[STATE]
    await anyio.to_thread.run_sync(f.seek, offset)
    data = await anyio.to_thread.run_sync(f.read, count)
    if fault == "trickle":
        step = max(1, int(st.config.faults.trickle_rate / 4))
        for start in range(0, len(data), step):
            await response.write(data[start:start + step])
            st.counts["bytes_served"] += len(data[start:start + step])
            await asyncio.sleep(0.25)
        return
    while True:
        await response.write(data or b"\0" * _CHUNK)
        st.counts["bytes_served"] += len(data)


def _restamped(chunk: bytes, position: int) -> bytes:
    """``chunk`` (at ``position`` in the object) with the gzip header's MTIME changed.

    The MTIME (bytes 4–7) is covered by no checksum: the result is still a valid gzip of
    the same length and content, but not the stored object, and its MD5 differs.
    """
    start, stop = max(4 - position, 0), min(8 - position, len(chunk))
    if start >= stop:
        return chunk
    changed = bytes(b ^ 0x5A for b in chunk[start:stop])
    return chunk[:start] + changed + chunk[stop:]


# --- controls -----------------------------------------------------------------------------


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats())


async def _set_faults(request: web.Request) -> web.Response:
    st = request.app[STATE]
    try:
        st.config.faults.update(**await request.json())
    except (ValueError, TypeError) as exc:
        return _bad_request(str(exc))
    return web.json_response({k: getattr(st.config.faults, k) for k in FAULT_KINDS})


def _clock_body(st: EmulatorState) -> dict[str, Any]:
    return {"now": st.clock.now().isoformat(), "speed": st.clock.speed}


async def _get_clock(request: web.Request) -> web.Response:
    return web.json_response(_clock_body(request.app[STATE]))


async def _set_clock(request: web.Request) -> web.Response:
    """``{"now": ISO time}``, ``{"advance": seconds}`` and/or ``{"speed": x}``."""
    st = request.app[STATE]
    try:
        body = await request.json()
        if "now" in body:
            moment = datetime.fromisoformat(body["now"])
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            st.clock.set(moment, body.get("speed"))
        elif "speed" in body:
            st.clock.set(st.clock.now(), float(body["speed"]))
        if "advance" in body:
            st.clock.advance(timedelta(seconds=float(body["advance"])).total_seconds())
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        return _bad_request(str(exc))
    return web.json_response(_clock_body(st))


__all__ = ["STATE", "EmulatorState", "create_app"]
