"""The typer application, the options every command shares, and the helpers they use.

The commands live in one module per group, each thin over the library:
:mod:`backfill.cli.fetch` (run, retry, catchup), :mod:`backfill.cli.inspect` (status,
verify, check) and :mod:`backfill.cli.demo` (demo, emulator).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer

from backfill import __version__
from backfill.config import Kind, Scope, Settings, declared, default, flag, written
from backfill.errors import EXIT_CODES, BackfillError, ExitCode, Interrupted, UsageError

if TYPE_CHECKING:
    from backfill.engine.progress import Reporter

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="backfill",
    help="Pull GrowingIO raw event exports for any range of days or hours onto disk: "
    "fast, resumable, verified.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion: bash, zsh, fish
    pretty_exceptions_show_locals=False,  # locals can hold secrets
    # Plain help, as git and pip print it: rich's help panels cost 0.1 s of imports, a
    # third of `backfill --help`.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"backfill {__version__}")
        raise typer.Exit()


LEVELS = ("error", "warning", "info", "debug")


@dataclass(frozen=True)
class Output:
    """How a command talks: bars or lines, text or JSON lines on stderr, a JSON document
    on stdout (``--json``), and how much it says (``--log-level``, ``-v``)."""

    quiet: bool = False
    verbose: bool = False
    log_level: str | None = None
    log_format: str = "text"
    json: bool = False

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise UsageError(f"--log-format must be text or json, got {self.log_format!r}")
        if self.log_level is not None and self.log_level not in LEVELS:
            raise UsageError(f"--log-level must be one of {', '.join(LEVELS)}, got "
                             f"{self.log_level!r}")

    @property
    def level(self) -> str:
        return self.log_level or ("debug" if self.verbose else "info")

    def reporter(self, heartbeat: float = 30.0) -> Reporter:
        from backfill.cli.report import make_reporter

        return make_reporter(self.quiet or self.json, json_lines=self.log_format == "json",
                             heartbeat=heartbeat, level=self.level)

    def say(self, kind: str, text: str, **fields: object) -> None:
        """An ``error`` or ``warning`` line on stderr: text, or a JSON object."""
        if kind == "warning" and LEVELS.index(self.level) < LEVELS.index("warning"):
            return
        if self.log_format == "json":
            self.event(kind, message=text, **fields)
        else:
            typer.echo(f"backfill: {kind}: {text}", err=True)

    def event(self, name: str, **fields: object) -> None:
        """One JSON line on stderr (``--log-format json``)."""
        import json

        from backfill.clock import system_clock

        typer.echo(json.dumps({"time": system_clock().now().isoformat(timespec="milliseconds"),
                               "event": name, **fields}), err=True)


@dataclass
class _Session:
    output: Output = Output()
    """The output options of the command being run (see :func:`reporting`)."""
    flags: dict[str, object] = field(default_factory=dict)
    """Its settings flags (see :func:`configured`)."""
    error: bool = False
    """An error line went out: the entry point adds none of its own."""
    document: bool = False
    """The command's JSON document went out on stdout (``--json``)."""


said = _Session()


def error(text: str, **fields: object) -> None:
    """The one error line of a command: ``backfill: error: …`` on stderr (a JSON object
    with ``--log-format json``)."""
    said.output.say("error", text, **fields)
    said.error = True


def warning(text: str) -> None:
    said.output.say("warning", text)


def document(fields: dict[str, object], exit_code: int = 0, *, indent: int | None = None
             ) -> None:
    """The one JSON document of ``--json`` on stdout, with its ``exit_code``."""
    import json

    typer.echo(json.dumps({**fields, "exit_code": exit_code}, indent=indent))
    said.document = True


def failed(text: str, exit_code: int) -> None:
    """A command's end on an error: its line on stderr and, with ``--json``, a document
    that says so on stdout (a script reads one document, whatever happened)."""
    error(text)
    if said.output.json and not said.document:
        document({"error": text}, exit_code)


def output() -> Output:
    """The output options the command was given."""
    return said.output


def reporting(command: Callable[..., R]) -> Callable[..., R]:
    """Give ``command`` the output options every command takes: ``-q/--quiet``,
    ``-v/--verbose``, ``--log-level``, ``--log-format`` and ``--json`` (read them with
    :func:`output`)."""
    def take(values: dict[str, object]) -> None:
        said.output = Output(**values)  # type: ignore[arg-type]

    return _with_options(command, _OUTPUT_OPTIONS, take)


def configured(scope: Scope) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give a command the flags of the settings of ``scope`` (see
    :func:`_setting_options`), spelled and explained as declared; :func:`settings` reads
    them."""
    options = _setting_options(scope)

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        def take(values: dict[str, object]) -> None:
            said.flags = values

        return _with_options(command, options, take)

    return decorate


def settings() -> Settings:
    """The settings of this command: config file, environment, then its flags."""
    from backfill import library

    flags: dict[str, Any] = {name: value for name, value in said.flags.items()
                             if value is not None}
    config, project = flags.pop("config", None), flags.pop("project", None)
    return library.configure(config, project=project, origin="flag", **flags)


def settled() -> Settings:
    """:func:`settings`, with what the output records wherever they do not say (its
    format, API, granularity, layout); a contradiction is refused. Creates nothing."""
    from backfill import library

    return run_async(library.settle_output, settings())


def _with_options(command: Callable[..., R], options: dict[str, tuple[object, object]],
                  take: Callable[[dict[str, object]], None]) -> Callable[..., R]:
    signature = inspect.signature(command, eval_str=True)  # real annotations: typer reads them
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                               annotation=annotation)
             for name, (annotation, default) in options.items()]

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> R:
        take({name: kwargs.pop(name) for name in options})
        return command(*args, **kwargs)

    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *added])
    run.__annotations__ = {**command.__annotations__,
                           **{name: annotation for name, (annotation, _) in options.items()}}
    return run


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`BackfillError` into one line on stderr and its documented exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except BackfillError as exc:
            failed(str(exc), exc.exit_code)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # a signal before or after the run's own handling
            failed(str(Interrupted(str(exc) or "SIGINT")), ExitCode.INTERRUPTED)
            raise typer.Exit(ExitCode.INTERRUPTED) from None

    return run


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Pull GrowingIO raw event exports onto disk."""


DATE_HELP = ("YYYY-MM-DD, YYYYMMDD, YYYY-MM-DDTHH, YYYYMMDDHH, today, yesterday, -7d, -36h "
             "(Beijing time).")


Project_ = Annotated[str | None, typer.Option(
    "--project", help="Use the [[projects]] entry of this name in the config: its settings, "
    "and its credentials from <env_prefix>CLIENT_ID and the like.")]
Config_ = Annotated[Path | None, typer.Option(
    "--config", help="TOML config file [default: ./backfill.toml if present].")]
Force_ = Annotated[bool, typer.Option("--force", help="Fetch keys again even if done.")]
DryRun_ = Annotated[bool, typer.Option(
    "--dry-run", help="Print the plan and make no API call.")]
OptionalFrom_ = Annotated[str | None, typer.Option("--from", help="Only keys from here.")]
OptionalTo_ = Annotated[str | None, typer.Option("--to", help="Only keys up to here.")]


def _setting_options(scope: Scope) -> dict[str, tuple[object, object]]:
    """The flags of the settings a command takes, each as its declaration says: those
    naming an output, and those of the command's own ``scope`` (the commands that fetch
    take theirs; ``status`` its own)."""
    options: dict[str, tuple[object, object]] = {"config": (Config_, None),
                                                 "project": (Project_, None)}
    for name, what in declared().items():
        if what.scope not in (Scope.OUTPUT, scope):
            continue
        shown = what.help if "[default:" in what.help else (
            f"{what.help} [default: {written(name, default(name))}]")
        if what.kind is Kind.FLAG:
            annotation: object = Annotated[bool | None, typer.Option(
                f"{flag(name)}/--no-{flag(name)[2:]}", help=shown, show_default=False)]
        else:
            annotation = Annotated[str | None, typer.Option(flag(name), help=shown,
                                                            show_default=False)]
        options[name] = (annotation, None)
    return options


_OUTPUT_OPTIONS: dict[str, tuple[object, object]] = {
    "quiet": (Annotated[bool, typer.Option(
        "--quiet", "-q", help="Plain log lines instead of progress bars.")], False),
    "verbose": (Annotated[bool, typer.Option(
        "--verbose", "-v", help="More detail: a line for every key (--log-level debug).")],
        False),
    "log_level": (Annotated[str | None, typer.Option(
        "--log-level", help="error, warning, info or debug [default: info].")], None),
    "log_format": (Annotated[str, typer.Option(
        "--log-format", help="text or json: stderr as JSON lines, one object each, the "
        "summary and errors too.")], "text"),
    "json": (Annotated[bool, typer.Option(
        "--json", help="One JSON document on stdout at the end (exit codes unchanged).")],
        False),
}


def run_async(function: Callable[..., Awaitable[R]], *args: object) -> R:
    """Run ``function`` on an event loop that SIGINT and SIGTERM stop cleanly at any
    moment (:class:`Interrupted`, exit 130): see :mod:`backfill.engine.stops`."""
    from backfill.engine.stops import run_stoppable

    return run_stoppable(function, *args)
