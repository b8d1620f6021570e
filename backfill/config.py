"""Settings: defaults, then the TOML file, then the environment, then flags (flags win).

Each setting is declared once, as a field of :class:`Settings` made by :func:`setting`:
its default, its parser and what it expects, its help, whether the commands that only
look at an output take it too, and whether it may travel in a deferred trigger's
arguments. The config file's parser, the command line's options, ``config show`` and
the integrations all derive from that declaration. The credentials are declared the same
way, with the environment variable each comes from.

Secrets (the private key, a ready token) come only from the environment, never from the
file, so a config file can be committed and shared.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from backfill.errors import UsageError
from backfill.keys import V2_TYPES, Granularity, Shard
from backfill.layout import STATE_DIR
from backfill.net.proxy import Proxies
from backfill.net.retry import RetryPolicy

MAX_RATE = 2.0
"""GrowingIO's limit: two export calls a second."""
DEFAULT_BASE_URL = "https://www.growingio.com"
DEFAULT_CONFIG = Path("backfill.toml")
DEFAULT_LAYOUT = "{type}/dt={date}/hour={hour}"
TABLE_FORMATS = ("parquet", "delta", "iceberg")
"""The formats that write typed tables, whose rows are counted."""
FORMATS = ("csv", *TABLE_FORMATS)
"""``--format``: the raw parts, typed Parquet in the same layout, a Delta or an Iceberg table
per type."""
SECTIONS = ("iceberg",)
"""Tables of the config file whose keys are settings named ``<table>_<key>``:
``[iceberg] catalog`` is ``iceberg_catalog`` (``--iceberg-catalog``)."""
REMOTE_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "azure": "az",
                  "abfs": "az", "abfss": "az"}
"""URL schemes of object stores, and the kind each names."""


class Kind(StrEnum):
    """How a setting's value is written back, in a config file and by ``config show``."""

    TEXT = "text"
    DURATION = "duration"
    SIZE = "size"
    FLAG = "flag"


class Scope(StrEnum):
    """Which commands take a setting as a flag (every one is a config key and a library
    argument): all that read an output, or only those that fetch."""

    OUTPUT = "output"
    FETCH = "fetch"
    STATUS = "status"
    """Only ``status`` (besides the output's own)."""


@dataclass(frozen=True)
class Declared:
    """What one setting is, besides its name, type and default (its field's)."""

    parse: Callable[[Any], Any]
    expected: str
    """What a value must be, for the one line that refuses another: ``a duration such as
    30m``."""
    help: str
    kind: Kind = Kind.TEXT
    scope: Scope = Scope.FETCH
    trigger: bool = False
    """Safe in a deferred trigger's arguments: nothing secret, plain JSON."""
    recorded: bool = False
    """What an output is: recorded when it is first written, read by every command
    (:mod:`backfill.destination.descriptor`)."""


def setting(default: Any, parse: Callable[[Any], Any], expected: str, help: str, *,
            kind: Kind = Kind.TEXT, scope: Scope = Scope.FETCH, trigger: bool = False,
            recorded: bool = False) -> Any:
    """Declare a setting: a field of :class:`Settings` with what it is (see
    :class:`Declared`)."""
    return field(default=default, metadata={"declared": Declared(
        parse, expected, help, kind, scope, trigger, recorded)})


def credential(variable: str, default: str = "", *, secret: bool = False) -> Any:
    """Declare a credential: the environment variable it comes from; a secret comes from
    there only (never from a file), and is never shown."""
    return field(default=default, repr=not secret,
                 metadata={"env": variable, "secret": secret})


@dataclass(frozen=True)
class Credentials:
    base_url: str = credential("GIO_BASE_URL", DEFAULT_BASE_URL)
    client_id: str = credential("GIO_CLIENT_ID")
    project_uid: str = credential("GIO_PROJECT_UID")
    ai: str = credential("GIO_AI")
    secret: str = credential("GIO_SECRET", secret=True)
    token: str = credential("GIO_TOKEN", secret=True)

    def require(self) -> Credentials:
        """Check that the API can be reached with these; raise a UsageError naming what lacks."""
        missing = [ENV[name] for name in ("client_id", "ai") if not getattr(self, name)]
        if not self.token:
            missing += [ENV[n] for n in ("secret", "project_uid") if not getattr(self, n)]
        if missing:
            raise UsageError(f"missing credential{'s' if len(missing) > 1 else ''}: "
                             f"set {', '.join(missing)} (or GIO_TOKEN for a ready token)")
        if not re.match(r"^https?://[^/?#\s]+", self.base_url):
            raise UsageError(f"GIO_BASE_URL must be an http(s) URL, got {self.base_url!r}")
        return self


ENV: dict[str, str] = {f.name: f.metadata["env"] for f in fields(Credentials)}
"""Each credential's environment variable: ``{"secret": "GIO_SECRET", …}``."""
SECRETS = frozenset(f.name for f in fields(Credentials) if f.metadata["secret"])


@dataclass(frozen=True)
class Remote:
    """An object-store output: ``s3://bucket/prefix``, ``gs://…`` or ``az://…``."""

    url: str
    """As the user gave it, without a trailing slash."""
    kind: str
    """``s3``, ``gs`` or ``az``."""
    bucket: str
    prefix: str

    def __str__(self) -> str:
        return self.url

    def slug(self) -> str:
        """A folder name for this destination's local cache: readable, and unique by URL."""
        readable = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{self.kind}-{self.bucket}-{self.prefix}")
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:10]
        return f"{readable.strip('-')[:80]}-{digest}"


@dataclass(frozen=True)
class Storage:
    """The ``[storage]`` table: how to reach an S3-compatible store (OSS, COS, MinIO).

    Credentials are not here: they come from the environment and the provider chains."""

    endpoint: str = ""
    region: str = ""
    virtual_hosted_style: bool | None = None


def user_state_home(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME`` or ``~/.local/state``: where caches of remote outputs live."""
    env = os.environ if env is None else env
    return Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


# Parsers: each takes what a file (TOML), a flag (text) or an argument (Python) gives.
def _duration(value: Any) -> float:
    return parse_duration(value)


def _speed(value: Any) -> float:
    return float(parse_size(value, 0, 1 << 40))


def _part_size(value: Any) -> int:
    return parse_size(value, 1, 1 << 50)


def _ints(low: int, high: int) -> Callable[[Any], int]:
    return lambda value: _int(value, low, high)


def _choices(*options: str) -> Callable[[Any], Any]:
    return lambda value: _choice(value, options)


def _folder(value: Any) -> Path:
    return Path(_str(value)).expanduser()


def _shard(value: Any) -> Shard:
    return Shard.parse(_str(value))


def _rate(value: Any) -> float:
    return _number(value, 0.01, MAX_RATE)


def _layout(value: Any) -> str:
    return check_layout(_str(value))


def _catalog(value: Any) -> str:
    text = _str(value)
    if text and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise UsageError(f"{text!r} is not a name: letters, digits, _ . -")
    return text


def _namespace(value: Any) -> str:
    if not (text := _catalog(value)):
        raise UsageError("an empty namespace")
    return text


def _file(value: Any) -> Path | None:
    text = _str(value)
    return Path(text).expanduser() if text else None


def _url(value: Any) -> str:
    text = _str(value).rstrip("/")
    if text and not re.fullmatch(r"https?://[^/?#@\s]+(/[^?#\s]*)?", text):
        raise UsageError(f"{text!r} is not an http(s) URL such as http://pushgateway:9091")
    return text


def _out(value: Any) -> Path | Remote:
    return parse_out(value)


def _types(value: Any) -> tuple[str, ...]:
    return parse_types(value)


OUTPUT, DURATION, SIZE = Scope.OUTPUT, Kind.DURATION, Kind.SIZE
_SIZE_HELP = "such as 4KiB, 512MiB or 1GB"


@dataclass(frozen=True)
class Settings:
    """Everything a run needs; each field a setting declared with :func:`setting` (but
    ``storage``, ``credentials``, ``proxies`` and ``sources``). Durations are seconds."""

    out: Path | Remote = setting(
        Path("data"), _out, "a folder or an s3://, gs:// or az:// URL",
        "Output folder (or file:// URL), or an object store: s3://BUCKET/PREFIX, gs://…, "
        "az://… [default: ./data].", scope=OUTPUT)
    state_dir: Path | None = setting(
        None, _folder, "a folder",
        "Folder of the local state, a cache of what is done [default: OUT/.backfill; for a "
        "bucket, ~/.local/state/backfill/<its URL>].", scope=OUTPUT)
    granularity: Granularity = setting(
        Granularity.DAY, _choices("day", "hour"), "day or hour",
        "day or hour [default: what the output holds, else what the dates say: 2026-11-30 a "
        "day, 2026-11-30T15 an hour, -7d days, -36h hours].", scope=OUTPUT, recorded=True)
    api: str = setting("v2", _choices("v1", "v2"), "v1 or v2",
                       "v1 or v2 [default: what the output holds, else v2].", scope=OUTPUT,
                       recorded=True, trigger=True)
    types: tuple[str, ...] = setting(
        (), _types, "a list of data types",
        "v2 data types, comma-separated [default: all ten].", scope=OUTPUT)
    format: str = setting(
        "csv", _choices(*FORMATS), ", ".join(FORMATS[:-1]) + f" or {FORMATS[-1]}",
        "csv: the raw parts; parquet: typed Parquet in the same layout; delta: a Delta Lake "
        "table per data type (the tables extra); iceberg: an Iceberg "
        "table per data type (the iceberg extra) [default: what the "
        "output holds, else csv].", scope=OUTPUT, recorded=True)
    iceberg_catalog: str = setting(
        "", _catalog, "a catalog name such as lake",
        "--format iceberg: the catalog, by its name in ~/.pyiceberg.yaml or "
        "PYICEBERG_CATALOG__NAME__* variables [default: what the output holds, else "
        "<out>/catalog.db, a SQLite catalog in a local --out].", scope=OUTPUT, recorded=True)
    iceberg_namespace: str = setting(
        "growingio", _namespace, "a namespace such as growingio",
        "--format iceberg: the namespace of the tables, <namespace>.<type> [default: what "
        "the output holds, else growingio].", scope=OUTPUT, recorded=True)
    layout: str = setting(
        DEFAULT_LAYOUT, _layout, "a folder template such as {type}/dt={date}/hour={hour}",
        "Folder of each key and type; placeholders {type} {date} {hour} {yyyymmdd} {key} "
        "(day keys drop hour=) [default: what the output holds, else "
        "{type}/dt={date}/hour={hour}].", scope=OUTPUT, recorded=True)
    shard: Shard | None = setting(
        None, _shard, "K/N with 1 <= K <= N, such as 2/4",
        "K/N: fetch only shard K of N (every N-th key in time), at rate/N; for N machines "
        "or jobs on one destination.", scope=OUTPUT)
    single_minter: bool = setting(
        False, lambda v: _bool(v), "true or false",
        "With --shard and GIO_SECRET: this is the only process that mints tokens (else "
        "GIO_TOKEN is required).", kind=Kind.FLAG)
    downloads: int = setting(8, _ints(1, 64), "an integer from 1 to 64",
                             "Keys and parts downloading at once.")
    polls: int = setting(4, _ints(1, 32), "an integer from 1 to 32",
                         "Export calls in flight at once, all within --rate.")
    rate: float = setting(MAX_RATE, _rate, "a number of calls per second, at most 2",
                          "Export calls per second; GrowingIO allows at most 2.",
                          trigger=True)
    max_wait: float = setting(
        1800.0, _duration, "a duration such as 30m",
        "How long to wait for keys not ready yet, e.g. 30m (a bare number is seconds).",
        kind=DURATION)
    poll_interval: float = setting(
        30.0, _duration, "a duration such as 30s",
        "First wait before asking again about a RUNNING job; grows by half each time.",
        kind=DURATION, trigger=True)
    max_poll_interval: float = setting(300.0, _duration, "a duration such as 5m",
                                       "Longest wait between two asks about a RUNNING job.",
                                       kind=DURATION, trigger=True)
    not_ready_interval: float = setting(
        600.0, _duration, "a duration such as 10m",
        "Wait before asking again about a key that answered NOT_EXISTS but is still due.",
        kind=DURATION, trigger=True)
    error_retries: int = setting(3, _ints(0, 100), "an integer from 0 to 100",
                                 "Times an export job answering ERROR is asked again.",
                                 trigger=True)
    error_retry_delay: float = setting(300.0, _duration, "a duration such as 5m",
                                       "Wait before asking again about a job that answered "
                                       "ERROR.", kind=DURATION, trigger=True)
    retries: int = setting(6, _ints(0, 100), "an integer from 0 to 100",
                           "Attempts for 429, 5xx and broken exchanges, with backoff.",
                           trigger=True)
    backoff: float = setting(1.0, _duration, "a duration such as 1s",
                             "First backoff; doubles, with jitter, up to --max-backoff.",
                             kind=DURATION, trigger=True)
    max_backoff: float = setting(60.0, _duration, "a duration such as 60s",
                                 "Longest backoff.", kind=DURATION, trigger=True)
    expire: int = setting(60, _ints(1, 7 * 24 * 60), "minutes from 1 to 10080",
                          "Minutes the requested download links stay valid.",
                          trigger=True)
    retention_days: int = setting(15, _ints(1, 3650), "a number of days from 1 to 3650",
                                  "Days GrowingIO keeps raw data; older keys are gone.",
                                  trigger=True)
    hour_lag: float = setting(40 * 60.0, _duration, "a duration such as 40m",
                              "When an hour is exportable after it ends.",
                              kind=DURATION, trigger=True)
    late_hour_lag: float = setting(60 * 60.0, _duration, "a duration such as 60m",
                                   "The same for the hours 23:00-02:00.",
                                   kind=DURATION, trigger=True)
    day_lag: float = setting(3 * 3600.0, _duration, "a duration such as 3h",
                             "When a day is exportable after it ends.",
                             kind=DURATION, trigger=True)
    connect_timeout: float = setting(10.0, _duration, "a duration such as 10s",
                                     "Connecting may take this long.",
                                     kind=DURATION, trigger=True)
    read_timeout: float = setting(60.0, _duration, "a duration such as 60s",
                                  "A silent socket for this long is retried.",
                                  kind=DURATION, trigger=True)
    verify: str = setting("auto", _choices("auto", "full"), "auto or full",
                          "auto: inflate a part only when no MD5 proves its bytes; full: "
                          "inflate every part.")
    outage_budget: float = setting(
        180.0, _duration, "a duration such as 3m",
        "How long a service may fail every call before the run stops with exit 1; shorter "
        "blips are ridden out.", kind=DURATION, trigger=True)
    min_speed: float = setting(
        4096.0, _speed, f"bytes per second {_SIZE_HELP} (0: never cut)",
        "A download slower than this (per second) for --min-speed-time is cut and goes on "
        "over a fresh connection; 0: never.", kind=SIZE)
    min_speed_time: float = setting(60.0, _duration, "a duration such as 60s",
                                    "The window --min-speed is judged over.",
                                    kind=DURATION)
    max_part_size: int = setting(
        128 * 1024 * 1024, _part_size, f"a size {_SIZE_HELP}",
        "The most a part may be (GrowingIO splits at 64 MB): a body without a length stops "
        "here, a longer declared length is refused.", kind=SIZE)
    heartbeat: float = setting(30.0, _duration, "a duration such as 30s",
                               "Plain and JSON logs say what the run waits for this often.",
                               kind=DURATION)
    start: str | None = setting(
        None, lambda v: _date(v), "a date such as 2026-11-01, 2026-11-01T05 or -7d",
        "Where catchup begins: as a flag, from this key on whatever the output holds; in the "
        "config, only on an output that holds nothing yet [default: the earliest key not "
        "complete; on an empty output, the oldest key GrowingIO still keeps].")
    lease_time: float = setting(300.0, _duration, "a duration such as 5m",
                                "A bucket's lease lasts this long unless renewed: a run "
                                "killed with -9 blocks it this long.",
                                kind=DURATION)
    metrics_file: Path | None = setting(
        None, _file, "a file path such as /var/lib/node_exporter/backfill.prom",
        "After the run, write its Prometheus metrics to this file (atomically), for "
        "node_exporter's textfile collector.")
    pushgateway: str = setting(
        "", _url, "an http(s) URL such as http://pushgateway:9091",
        "After the run, push its Prometheus metrics to this Pushgateway (job backfill; a "
        "failed run never replaces the last success).")
    max_lag: float | None = setting(
        None, _duration, "a duration such as 2h",
        "Exit 1 when a type's data is more than this behind what should be ready now, e.g. "
        "2h (no API call).", kind=DURATION, scope=Scope.STATUS)
    chunk_size: int = 1024 * 1024
    checkpoint_bytes: int = 16 * 1024 * 1024
    storage: Storage = Storage()
    credentials: Credentials = Credentials()
    proxies: Proxies = field(default_factory=Proxies)
    """From HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY (see :mod:`backfill.net.proxy`)."""
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Where each setting given came from: a file, ``environment GIO_AI``, ``flag --out``
    (a setting not named here has its default)."""

    @property
    def state_folder(self) -> Path:
        """The local state: ``<out>/.backfill`` for a folder; for an object store, a folder
        of the user's state directory named after its URL (or ``state_dir`` for both)."""
        if self.state_dir is not None:
            folder = self.state_dir
        elif isinstance(self.out, Path):
            folder = self.out / STATE_DIR
        else:
            folder = user_state_home() / "backfill" / self.out.slug()
        # Each shard keeps its own state: shards never share a cache, nor its lock.
        return folder / self.shard.slug if self.shard is not None else folder

    def retry_policy(self, rng: random.Random | None = None) -> RetryPolicy:
        """The run's one retry policy (``retries``, ``backoff``, ``max_backoff``)."""
        return RetryPolicy(self.retries, self.backoff, self.max_backoff,
                           rng or random.Random())

    @property
    def reports_metrics(self) -> bool:
        """A run writes its metrics (``metrics_file``) or pushes them (``pushgateway``)."""
        return self.metrics_file is not None or bool(self.pushgateway)

    @property
    def wanted_types(self) -> tuple[str, ...]:
        """The data types to fetch: ``("all",)`` for v1, which mixes every table."""
        if self.api == "v1":
            return ("all",)
        return self.types or V2_TYPES


@functools.cache
def declared() -> dict[str, Declared]:
    """Every setting, by name, in the order of :class:`Settings`."""
    return {f.name: f.metadata["declared"] for f in fields(Settings)
            if "declared" in f.metadata}


def flag(name: str) -> str:
    """A setting's flag: ``--max-wait`` for ``max_wait``."""
    return "--" + name.replace("_", "-")


def default(name: str) -> Any:
    """A setting's default value."""
    return getattr(Settings(), name)


_API_KEYS = tuple(f.name for f in fields(Credentials) if not f.metadata["secret"])
_STORAGE_KEYS = tuple(f.name for f in fields(Storage))


@dataclass(frozen=True)
class Project:
    """One ``[[projects]]`` entry: a GrowingIO project with its own credentials (read from
    the environment under ``env_prefix``: ``ACME_GIO_CLIENT_ID`` for ``GIO_CLIENT_ID``)
    and its own settings over the file's top level."""

    name: str
    env_prefix: str
    values: dict[str, Any] = field(default_factory=dict)

    def environ(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with this project's variables standing for the ``GIO_…`` ones. Secrets
        and identity are the project's own; ``GIO_BASE_URL`` (where GrowingIO is: the
        emulator, a private deployment) is inherited unless the project sets its own."""
        inherited = {ENV["base_url"]}
        mapped = {k: v for k, v in env.items() if k not in ENV.values() or k in inherited}
        for variable in ENV.values():
            value = env.get(self.env_prefix + variable.removeprefix("GIO_"))
            if value:
                mapped[variable] = value
        return mapped


def projects(path: Path | None) -> list[Project]:
    """The ``[[projects]]`` of the config file (see :func:`config_file`)."""
    source = config_file(path)
    return _read_file(source)[3] if source is not None else []


def config_file(path: Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read, first found wins: ``path`` (``--config``), then
    ``$BACKFILL_CONFIG``, ``./backfill.toml``, ``$XDG_CONFIG_HOME/backfill/config.toml``
    (``~/.config`` without it). The first two must exist; the others are read if there."""
    env = os.environ if env is None else env
    if path is not None:
        return path
    if env.get("BACKFILL_CONFIG"):
        return Path(env["BACKFILL_CONFIG"]).expanduser()
    if DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG
    home = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    user = home / "backfill" / "config.toml"
    return user if user.exists() else None


def option_names() -> tuple[str, ...]:
    """The settings a config file, a flag or a library call may give."""
    return tuple(declared())


def written(name: str, value: Any) -> str:
    """A setting's value as a config file writes it: ``30m``, ``4KiB``, ``visit,page``."""
    kind = declared()[name].kind if name in declared() else Kind.TEXT
    if value is None:
        return "(none)"
    if kind is Kind.DURATION:
        return format_duration(value)
    if kind is Kind.SIZE:
        return format_size(value)
    if isinstance(value, tuple):
        return ",".join(value) or "(all)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(getattr(value, "value", value))


def load(path: Path | None, flags: dict[str, Any], env: dict[str, str] | None = None,
         *, project: str | None = None, origin: str = "flag") -> Settings:
    """Build settings: defaults < the config file (see :func:`config_file`) < the file's
    ``[[projects]]`` entry named ``project`` < env < flags.

    ``flags`` holds only the options the user gave (``None`` values are ignored);
    ``origin`` says what they are (``flag``: ``--max-wait``; ``argument``: a library
    call's keyword). ``Settings.sources`` says where each value came from.
    Raises :class:`UsageError` naming the file and key for anything wrong.
    """
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    api: dict[str, str] = {}
    storage = Storage()
    sources: dict[str, str] = {}
    source = config_file(path, env)
    found: list[Project] = []
    if source is not None:
        values, api, storage, found = _read_file(source)
        sources.update(dict.fromkeys(values, str(source)))
        sources.update({f"growingio.{k}": str(source) for k in api})
        sources.update({f"storage.{k}": str(source) for k, v in vars(storage).items()
                        if v not in ("", None)})
    if project is not None:
        chosen = next((p for p in found if p.name == project), None)
        if chosen is None:
            known = ", ".join(p.name for p in found) or "none"
            raise UsageError(f"no project {project!r} in {source or 'the config'} "
                             f"([[projects]]: {known})")
        values.update(chosen.values)
        sources.update(dict.fromkeys(chosen.values, f"{source} [[projects]] {project}"))
        env = chosen.environ(env)
    for name, variable in ENV.items():
        if env.get(variable):
            api[name] = env[variable]
            sources[f"growingio.{name}"] = f"environment {variable}"
    for name, value in flags.items():
        if value is not None:
            values[name] = parse_flag(name, value)
            sources[name] = (f"flag --{name.replace('_', '-')}" if origin == "flag"
                             else f"{origin} {name}=")
    if source is not None:
        values = _relative_to(source.parent, values, sources, str(source))
    settings = replace(Settings(), **values, credentials=Credentials(**api),
                       storage=storage, proxies=Proxies.from_env(env), sources=sources)
    if isinstance(settings.out, Remote) and settings.state_dir is None:
        settings = replace(settings, state_dir=user_state_home(env) / "backfill"
                           / settings.out.slug())
    check_hourly_layout(settings)
    if settings.api == "v1" and settings.types:
        raise UsageError("--types works with the v2 API only: v1 answers mix all tables")
    if settings.api == "v1" and settings.format != "csv":
        raise UsageError(f"--format {settings.format} needs the v2 API: a v1 answer mixes "
                         "seven tables in one list of links, and which table a part holds is "
                         "not certain; use --api v2, or --format csv for v1")
    if settings.shard is not None:
        # N shards together stay within the project's budget.
        settings = replace(settings, rate=settings.rate / settings.shard.n)
    return settings


def check_hourly_layout(settings: Settings) -> None:
    """Refuse hourly keys with a layout that gives an hour no folder of its own."""
    hourly_ok = "{hour}" in settings.layout or "{key}" in settings.layout
    if settings.granularity is Granularity.HOUR and not hourly_ok:
        raise UsageError(f"layout {settings.layout!r} needs {{hour}} (or {{key}}) for hourly keys")


def _relative_to(folder: Path, values: dict[str, Any], sources: dict[str, str],
                 file: str) -> dict[str, Any]:
    """Folders a config file names relatively are relative to the file's own folder (flags
    stay relative to where the command runs)."""
    fixed = dict(values)
    for name in ("out", "state_dir"):
        value = values.get(name)
        if isinstance(value, Path) and not value.is_absolute() and sources.get(name, "") \
                .startswith(file):
            fixed[name] = folder / value
    return fixed


def check_token_rule(settings: Settings) -> None:
    """Refuse shards that would mint tokens against each other (a new token revokes the
    previous one for the client id). Raises :class:`UsageError`."""
    shard, creds = settings.shard, settings.credentials
    if shard is None or shard.n == 1 or creds.token or settings.single_minter:
        return
    if creds.secret:
        raise UsageError(
            f"--shard {shard} with GIO_SECRET: every shard would mint its own token, and "
            "each new token revokes the others' (one token per client id); set GIO_TOKEN "
            "to a console token shared by all shards, or --single-minter if this is the only "
            "process that uses the private key")


def did_you_mean(word: str, known: list[str] | tuple[str, ...], *, every: bool = False
                 ) -> str:
    """``"; did you mean 'visit'?"`` for a near miss, else the known words (or nothing)."""
    import difflib

    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (known: {', '.join(known)})" if every or len(known) < 40 else ""


def parse_flag(name: str, value: Any) -> Any:
    """A flag's (or an argument's) value, parsed as its setting declares; raises
    :class:`UsageError` naming the flag and what it must be."""
    if name not in declared():
        return value
    what = declared()[name]
    try:
        return what.parse(value)
    except (UsageError, ValueError, TypeError) as exc:
        detail = f": {exc}" if isinstance(exc, UsageError) else ""
        raise UsageError(f"{flag(name)} must be {what.expected}, got {value!r}{detail}"
                         ) from None


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, str], Storage, list[Project]]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    api: dict[str, str] = {}
    storage = Storage()
    found: list[Project] = []
    for key, raw in document.items():
        if key == "storage" and isinstance(raw, dict):
            storage = _read_storage(path, raw)
            continue
        if key == "projects" and isinstance(raw, list):
            found = [_read_project(path, i, entry) for i, entry in enumerate(raw)]
            continue
        if key == "growingio" and isinstance(raw, dict):
            for name, value in raw.items():
                if name in SECRETS:
                    raise UsageError(f"{path}: growingio.{name} does not belong in a file: set "
                                     f"{ENV[name]} in the environment")
                if name not in _API_KEYS:
                    raise UsageError(f"{path}: unknown key growingio.{name} "
                                     f"(known: {', '.join(_API_KEYS)})")
                if not isinstance(value, str):
                    raise UsageError(f"{path}: growingio.{name} must be a string")
                api[name] = value
            continue
        if key in SECTIONS and isinstance(raw, dict):
            for name, value in raw.items():
                if f"{key}_{name}" not in declared():
                    known = [n.removeprefix(f"{key}_") for n in declared()
                             if n.startswith(f"{key}_")]
                    raise UsageError(f"{path}: unknown key {key}.{name} "
                                     f"(known: {', '.join(known)})")
                values[f"{key}_{name}"] = _parse_value(str(path), f"{key}.{name}", raw=value,
                                                       setting=f"{key}_{name}")
            continue
        if key not in declared():
            raise UsageError(f"{path}: unknown key {key!r}"
                             + did_you_mean(key, [*declared(), "growingio", "storage",
                                                  "projects", *SECTIONS]))
        values[key] = _parse_value(str(path), key, raw)
    return values, api, storage, found


def _parse_value(where: str, key: str, raw: Any, *, setting: str | None = None) -> Any:
    what = declared()[setting or key]
    try:
        return what.parse(raw)
    except (UsageError, ValueError, TypeError):
        raise UsageError(f"{where}: {key} must be {what.expected}, got {raw!r}") from None


def _read_project(path: Path, index: int, entry: Any) -> Project:
    where = f"{path}: projects[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise UsageError(f"{where} needs a name")
    prefix = entry.get("env_prefix", f"{entry['name'].upper()}_GIO_")
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*_", prefix):
        raise UsageError(f"{where}: env_prefix must be like ACME_GIO_, got {prefix!r}")
    values: dict[str, Any] = {}
    for key, raw in entry.items():
        if key in ("name", "env_prefix"):
            continue
        if key not in declared():
            raise UsageError(f"{where}: unknown key {key!r} (credentials come from "
                             f"{prefix}CLIENT_ID and the like)")
        values[key] = _parse_value(where, key, raw)
    return Project(entry["name"], prefix, values)


def _read_storage(path: Path, table: dict[str, Any]) -> Storage:
    for name, value in table.items():
        if name not in _STORAGE_KEYS:
            secretish = any(w in name.lower() for w in ("key", "secret", "token", "password"))
            hint = (": storage credentials come from the environment (AWS_ACCESS_KEY_ID, …)"
                    if secretish else f" (known: {', '.join(_STORAGE_KEYS)})")
            raise UsageError(f"{path}: unknown key storage.{name}{hint}")
        wanted = bool if name == "virtual_hosted_style" else str
        if not isinstance(value, wanted):
            raise UsageError(f"{path}: storage.{name} must be a "
                             f"{'boolean' if wanted is bool else 'string'}")
    endpoint = table.get("endpoint", "")
    if endpoint and not re.match(r"^https?://[^/?#\s]+", endpoint):
        raise UsageError(f"{path}: storage.endpoint must be an http(s) URL, got {endpoint!r}")
    return Storage(**table)


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"2h"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise UsageError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if not match:
            raise UsageError(f"invalid duration {value!r}: use e.g. 90s, 30m, 2h or 1d")
        seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    if not 0 <= seconds <= 366 * 86400:
        raise UsageError(f"invalid duration {value!r}")
    return seconds


def parse_out(value: Any) -> Path | Remote:
    """The output: a folder (a path or a ``file://`` URL), or an object store's URL.

    Any other URL is refused rather than taken for a folder (``ftp://h/x`` would otherwise
    become a local folder named ``ftp:``). Raises :class:`UsageError`.
    """
    if isinstance(value, Path):
        return value
    text = _str(value)
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", text)
    if match is None:
        _refuse_near_urls(text)
        return Path(text)
    scheme, rest = match[1].lower(), match[2]
    if scheme == "file":
        host, _, path = rest.partition("/")
        if host not in ("", "localhost"):
            raise UsageError("a file:// URL must name a local folder")
        return Path("/" + path)
    if scheme in REMOTE_SCHEMES:
        return _remote(text.rstrip("/"), REMOTE_SCHEMES[scheme], rest)
    raise UsageError(f"{scheme}:// outputs are not supported; give a local folder, a file:// "
                     "URL or an s3://, gs:// or az:// URL")


def _refuse_near_urls(text: str) -> None:
    """``s3:/bucket/x``, ``s3//bucket``, ``s3:bucket``: an object store's URL with a slip,
    which would otherwise become a local folder named ``s3:``."""
    near = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)(:/?|//?)(?!/)(.+)$", text)
    if near is None or near[1].lower() not in {*REMOTE_SCHEMES, "file"}:
        return
    scheme, rest = near[1].lower(), near[3]
    meant = f"file:///{rest.lstrip('/')}" if scheme == "file" else f"{scheme}://{rest}"
    raise UsageError(f"{text!r} looks like a URL with a slip; did you mean {meant}? (a "
                     f"local folder of that name: ./{text})")


def _remote(url: str, kind: str, rest: str) -> Remote:
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket and kind == "az":  # abfs://container@account.dfs.core.windows.net/…
        bucket = bucket.split("@", 1)[0]
    prefix = prefix.strip("/")
    # GCS also takes underscores, and dotted names up to 222 characters.
    pattern = r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]" if kind == "gs" else (
        r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
    if not re.fullmatch(pattern, bucket):
        raise UsageError(f"{url!r} does not name a bucket: use {kind}://BUCKET/PREFIX (bucket "
                         "names have 3 to 63 lowercase letters, digits, dots and dashes)")
    if any(s in (".", "..") for s in prefix.split("/")) or re.search(r"[?#\s]", prefix):
        raise UsageError(f"{url!r}: the prefix must be a plain path")
    return Remote(url, kind, bucket, prefix)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(value: Any, low: int, high: int) -> int:
    """Bytes from ``4096``, ``"4KiB"``, ``"512MiB"``, ``"1GB"``, within [low, high]."""
    if isinstance(value, bool):
        raise UsageError(f"invalid size {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
        if not match or match[2].lower() not in _SIZE_UNITS:
            raise UsageError(f"invalid size {value!r}: use e.g. 4096, 4KiB, 512MiB or 1GB")
        number = float(match[1]) * _SIZE_UNITS[match[2].lower()]
    if not low <= number <= high:
        raise UsageError(f"invalid size {value!r}")
    return int(number)


def format_size(count: float) -> str:
    """``"4KiB"``, ``"512MiB"``, ``"1000"``: the shortest exact form :func:`parse_size`
    reads."""
    whole = int(count)
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024), ("GB", 1000**3),
                       ("MB", 1000**2), ("kB", 1000)):
        if whole >= size and whole % size == 0 and whole == count:
            return f"{whole // size}{unit}"
    return f"{count:g}"


def format_duration(seconds: float) -> str:
    """``"3m"``, ``"90s"``, ``"2h"``: the shortest exact form :func:`parse_duration` reads."""
    whole = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{seconds:g}s"


def parse_types(value: Any) -> tuple[str, ...]:
    """Data types from a list or a comma-separated string; unknown names are refused."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(t, str) for t in items):
        raise UsageError("types must be a list of data type names")
    names = tuple(dict.fromkeys(t.strip() for t in items if t.strip()))
    if not names:
        raise UsageError("no data type named: give at least one (visit,page,…), or leave "
                         "types out for all ten")
    unknown = [t for t in names if t not in V2_TYPES]
    if unknown:
        raise UsageError(f"unknown data type {unknown[0]!r}"
                         + did_you_mean(unknown[0], V2_TYPES, every=True))
    return names


def check_layout(template: str) -> str:
    """Refuse templates that would not give each key and type a folder of its own."""
    if "{type}" not in template or ("{date}" not in template and "{key}" not in template):
        raise UsageError(f"layout {template!r} must contain {{type}} and {{date}} (or {{key}})")
    if template.startswith("/") or ".." in Path(template).parts:
        raise UsageError(f"layout {template!r} must stay inside the output folder")
    try:
        template.format(type="t", date="d", hour="h", key="k", yyyymmdd="y")
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"layout {template!r}: unknown placeholder {exc}") from None
    return template


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _choice(value: Any, options: tuple[str, ...]) -> Any:
    if value not in options:
        raise ValueError
    return Granularity(value) if options == ("day", "hour") else value


def _date(value: Any) -> str:
    from backfill.keys import date_form

    date_form(_str(value))  # raises with the accepted forms
    return str(value).strip()


def _bool(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise TypeError
    return value


def _int(value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)  # a flag's text
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError
    return value


def _number(value: Any, low: float, high: float) -> float:
    if isinstance(value, str):
        value = float(value)  # a flag's text; ValueError when it is not a number
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError
    return float(value)
