"""Settings of the emulator: credentials, the job clock, data volume, limits and faults."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path

from backfill.emulator.protocol import DAY_READY, HOUR_READY, LATE_HOUR_READY
from backfill.emulator.protocol import V1_TYPES as V1_TYPES
from backfill.emulator.protocol import V2_TYPES as V2_TYPES


@dataclass(frozen=True)
class Credentials:
    """One project's API credentials, as the GrowingIO console shows them."""

    client_id: str
    secret: str
    project_uid: str
    ai: str


DEMO_CREDENTIALS = Credentials(
    client_id="demo-client-id",
    secret="demo-private-key",
    project_uid="demoProjectUid",
    ai="a1b2c3d4e5f60789",
)


FAULT_KINDS = (
    "api_5xx",
    "revoke_token",
    "job_error",
    "slow_first_byte",
    "reset",
    "truncate",
    "corrupt",
    "stall",
    "wrong_object",
    "trickle",
    "endless",
)
"""Fault names, each a rate in [0, 1]. API faults first, then download faults.

``wrong_object`` serves a valid gzip of the right length that is not the stored object
(its header's timestamp differs, so its MD5 does): only an MD5 comparison catches it.
``trickle`` sends the body, with its full length announced, at ``trickle_rate`` bytes
per second. ``endless`` sends it without a length and never ends it."""


@dataclass
class Faults:
    """Switchable failures; each rate is the chance that one call or download suffers it.

    Each kind draws from its own generator seeded from ``seed``, so one rate does not
    shift the draws of another and a run can be replayed.
    """

    seed: int = 0
    api_5xx: float = 0.0
    revoke_token: float = 0.0
    job_error: float = 0.0
    slow_first_byte: float = 0.0
    reset: float = 0.0
    truncate: float = 0.0
    corrupt: float = 0.0
    stall: float = 0.0
    wrong_object: float = 0.0
    trickle: float = 0.0
    endless: float = 0.0
    trickle_rate: float = 256.0
    """Bytes per second of a trickling body."""
    slow_seconds: float = 2.0
    stall_seconds: float = 30.0
    limit: int = 0
    """At most this many injections of each kind (0: no limit), for "the first one fails"."""
    _rngs: dict[str, random.Random] = field(default_factory=dict, repr=False, compare=False,
                                            init=False)
    injected: Counter[str] = field(default_factory=Counter, repr=False, compare=False,
                                   init=False)
    """Every injection so far, by kind (served in the emulator's stats)."""
    _since_update: Counter[str] = field(default_factory=Counter, repr=False, compare=False,
                                        init=False)

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            rate = getattr(self, kind)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {kind}={rate} is not between 0 and 1")

    def roll(self, kind: str) -> bool:
        """Draw whether this call suffers ``kind``."""
        rate: float = getattr(self, kind)
        if rate <= 0.0 or (self.limit and self._since_update[kind] >= self.limit):
            return False
        rng = self._rngs.setdefault(kind, random.Random(f"{self.seed}:{kind}"))
        hit = rng.random() < rate
        if hit:
            self._since_update[kind] += 1
            self.injected[kind] += 1
        return hit

    def update(self, **changes: float) -> None:
        """Change rates or timings at run time (the ``/_emulator/faults`` endpoint)."""
        names = {f.name for f in fields(self) if f.init and f.name != "injected"}
        for name, value in changes.items():
            if name not in names:
                raise ValueError(f"unknown fault setting {name!r}")
            setattr(self, name, type(getattr(self, name))(value))
        self.__post_init__()
        self._rngs.clear()
        self._since_update.clear()


@dataclass
class EmulatorConfig:
    """Everything the emulator can be told. Times are emulated unless said otherwise."""

    credentials: Credentials = DEMO_CREDENTIALS
    seed: int = 0
    data_dir: Path | None = None
    """Where generated parts live; ``None`` means a cache folder under the user's home."""
    bytes_per_hour: int = 48 * 1024
    """Average gzip bytes one data type produces in one hour."""
    part_size: int = 64 * 1024 * 1024
    """Largest gzip part; the real service splits at 64 MB."""
    compress_level: int = 6
    flat_data: bool = False
    """Benchmarks: exactly ``bytes_per_hour`` per type and hour, generated fast."""
    keep_rows: bool = False
    """Keep the values of every generated row (``state.data.rows``), for table tests."""
    drift_hours: tuple[str, ...] = ()
    """Hour keys whose parts carry one column more (``extraColumn``) and one less."""
    long_field: int = 0
    """Now and then a text field this many bytes long."""
    now: datetime | None = None
    """Where the emulated clock starts; ``None`` means the real time."""
    speed: float = 1.0
    """Emulated seconds per real second; 0 freezes the clock."""
    hour_lag: timedelta = HOUR_READY
    late_hour_lag: timedelta = LATE_HOUR_READY
    """Lag for the hours 23:00–02:00, which the docs say take longer."""
    day_lag: timedelta = DAY_READY
    """Readiness as the documentation gives it (the client keeps its own copy)."""
    job_seconds: float = 120.0
    """How long (emulated) an export job stays RUNNING after its first request."""
    retention_days: int = 15
    token_lifetime: timedelta = timedelta(days=30)
    token_skew_seconds: float = 300.0
    """How far (real time) a token request's ``tm`` may be from now."""
    rate_limit: int = 2
    """Export calls allowed per client id in any window of ``rate_window`` real seconds."""
    rate_window: float = 1.0
    md5_header: bool = True
    """Send ``x-amz-meta-md5-hash`` on downloads (some real answers lack it)."""
    content_md5: bool = False
    """Send ``Content-MD5`` (base64) on downloads, as some object stores do."""
    etag_md5: bool = True
    """The ``ETag`` is the object's MD5; otherwise a multipart-style ``"<md5>-2"``."""
    trap_links: bool = True
    """RUNNING answers carry links to unfinished parts that a client must not download."""
    max_expire_minutes: int = 7 * 24 * 60
    link_origin: str | None = None
    """Where download links point (``scheme://host:port``), as the real links live on an
    object store apart from the API; ``None``: the host the API was asked on."""
    faults: Faults = field(default_factory=Faults)
    # --- a hostile server: what real networks and stores do, each switched on alone -----
    bad_links: dict[str, str] = field(default_factory=dict)
    """Key name → how one link of its FINISHED answers is bad: ``scheme`` (an ftp:// link),
    ``redirect_scheme`` (an http link that redirects to ftp://) or ``redirect_loop``."""
    api_redirect: str | None = None
    """An origin (``http://host:port``): export and token calls answer 307 to it."""
    unusable_keys: tuple[str, ...] = ()
    """Key names whose export calls answer a page (200, text/html), every time, while the
    others answer as they should: one key's problem, not the service's."""
    content_encoding: str | None = None
    """Sent as ``Content-Encoding`` with every download (S3 does, for objects uploaded with
    that metadata): the bytes are the stored object all the same."""
    absent_types: tuple[str, ...] = ()
    """Data types left out of all-types answers entirely (not even an empty list)."""
    retry_after_5xx: float | None = None
    """With ``api_5xx``: answer 503 with this ``Retry-After`` (seconds)."""
    token_answer: str = "json"
    """``html``: the token endpoint answers 200 with an HTML page, as a captive portal."""
    range_shift: int = 0
    """A 206 answer starts this many bytes after the offset asked for, and says so in its
    Content-Range (a store that serves another range than the one asked)."""
    clock_offset: float = 0.0
    """Seconds the server's clock is off from this machine's (negative: behind): the token
    request's ``tm`` is judged by it, and its ``Date`` header says it."""
