"""Command line: argparse subcommands; exit 0 ok, 2 usage or configuration, 1 other.

This is the only module that configures logging and the only one that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, TextIO, cast

import anyio
import structlog

from watcher import __version__, logs, schema
from watcher.config import Config, Listen, Secret, ServerConfig, WatcherSettings
from watcher.configfile import PartialConfig, load_config, load_config_lenient
from watcher.errors import ConfigError, ConfigProblem, SklmError, WatcherError

if TYPE_CHECKING:
    from watcher.store.base import (
        AuditLine,
        ClusterStore,
        OutboxRow,
        OutboxSummary,
        Silence,
        Store,
    )
    from watcher.views import ServerStatusRow, TableRow

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

_DEFAULT_CONFIG: Final = Path("/etc/sklm-watcher/config.toml")

Handler = Callable[[argparse.Namespace], int]


def _add_config(
    parser: argparse.ArgumentParser, *, required: bool = True, nested: bool = False
) -> None:
    default: Any = None if required else _DEFAULT_CONFIG
    if nested:
        # A sub-subcommand's default would override the value given before it.
        default = argparse.SUPPRESS
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        required=required,
        default=default,
        help=f"the TOML configuration file (default {_DEFAULT_CONFIG})"
        if not required
        else "the TOML configuration file",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    from watcher import simulator

    parser = argparse.ArgumentParser(
        prog="sklm-watcher",
        description="Watch SKLM / GKLM servers restore from backup.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--debug", action="store_true", help="debug logging and tracebacks"
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="log format (auto: JSON unless standard error is a terminal)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    _add_config(run)
    run.set_defaults(handler=_cmd_run)

    check = sub.add_parser("check-config", help="validate a configuration file")
    _add_config(check)
    check.set_defaults(handler=_cmd_check_config)

    once = sub.add_parser("once", help="poll every server once and print its phase")
    _add_config(once)
    once.add_argument("--json", action="store_true", help="print JSON")
    once.set_defaults(handler=_cmd_once)

    simulate = sub.add_parser("simulate", help="run the built-in SKLM simulator")
    simulator.add_arguments(simulate)
    simulate.set_defaults(handler=_cmd_simulate)

    outbox = sub.add_parser("outbox", help="undelivered notifications, per sink")
    _add_config(outbox, required=False)
    outbox.add_argument("--dead", action="store_true", help="list dead letters")
    outbox.add_argument("--json", action="store_true", help="print JSON")
    outbox.set_defaults(handler=_cmd_outbox)
    outbox_sub = outbox.add_subparsers(dest="outbox_command", metavar="retry")
    retry = outbox_sub.add_parser("retry", help="requeue dead-lettered deliveries")
    _add_config(retry, required=False, nested=True)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("event_id", nargs="?", help="the event id to requeue")
    which.add_argument("--all-dead", action="store_true", help="every dead letter")
    retry.add_argument("--sink", help="only this sink's rows")
    retry.set_defaults(handler=_cmd_outbox_retry)

    test_sink = sub.add_parser("test-sink", help="send a marked test event to a sink")
    _add_config(test_sink)
    test_sink.add_argument("sink", help="the sink's name in the configuration")
    test_sink.set_defaults(handler=_cmd_test_sink)

    status = sub.add_parser("status", help="one row per server: phase, health")
    _add_config(status, required=False)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_cmd_status)

    follow = sub.add_parser(
        "follow",
        help="follow one restore to its end (exit 0 completed and back, 1 failed "
        "or not back, 124 --timeout ran out)",
    )
    follow.add_argument("server", help="the server's name")
    _add_config(follow, required=False)
    follow.add_argument(
        "--last",
        action="store_true",
        help="report the last restore even if it has ended (default: wait for one)",
    )
    follow.add_argument(
        "--timeout",
        type=_duration,
        default=None,
        help="give up after (e.g. 2h): exit 124",
    )
    follow.add_argument(
        "--interval", type=float, default=0.5, help="seconds between two looks"
    )
    follow.add_argument(
        "--json",
        action="store_true",
        help="print the view as one JSON object per line, each time it changes",
    )
    follow.set_defaults(handler=_cmd_follow)

    restores = sub.add_parser("restores", help="one row per restore")
    _add_config(restores, required=False)
    restores.add_argument("--server", help="only this server")
    restores.add_argument("--since", type=_since, help="ISO time or age (e.g. 24h)")
    restores.add_argument("--json", action="store_true", help="print JSON")
    restores.set_defaults(handler=_cmd_restores)

    events = sub.add_parser("events", help="the event history")
    _add_config(events, required=False)
    events.add_argument("--server", help="only this server")
    events.add_argument("--type", dest="type_glob", help="glob on the event type")
    events.add_argument("--since", type=_since, help="ISO time or age (e.g. 24h)")
    events.add_argument("--json", action="store_true", help="print JSON lines")
    events.set_defaults(handler=_cmd_events)

    silence = sub.add_parser("silence", help="hold notifications for some servers")
    silence_sub = silence.add_subparsers(
        dest="silence_command", required=True, metavar="add|list|remove"
    )
    s_add = silence_sub.add_parser("add", help="silence servers matching a glob")
    s_add.add_argument("server_glob", help="e.g. 'sklm-prod-*'")
    s_add.add_argument(
        "--for", dest="duration", type=_duration, required=True, help="e.g. 2h"
    )
    s_add.add_argument("--reason", required=True, help="why (shown in listings)")
    _add_config(s_add, required=False)
    s_add.set_defaults(handler=_cmd_silence_add)
    s_list = silence_sub.add_parser("list", help="active silences")
    s_list.add_argument("--all", action="store_true", help="include expired ones")
    s_list.add_argument("--json", action="store_true", help="print JSON")
    _add_config(s_list, required=False)
    s_list.set_defaults(handler=_cmd_silence_list)
    s_remove = silence_sub.add_parser("remove", help="end a silence now")
    s_remove.add_argument("id", type=int, help="the silence's id")
    _add_config(s_remove, required=False)
    s_remove.set_defaults(handler=_cmd_silence_remove)

    cluster = sub.add_parser(
        "cluster",
        help="the nodes sharing the store: alive, leases, last heartbeat (exit 2 "
        "without store_url)",
    )
    _add_config(cluster, required=False)
    cluster.add_argument("--json", action="store_true", help="print JSON")
    cluster.set_defaults(handler=_cmd_cluster)

    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    audit_sub = audit.add_subparsers(
        dest="audit_command", required=True, metavar="verify|export"
    )
    verify = audit_sub.add_parser("verify", help="check the audit log's hash chain")
    verify.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="files oldest first (default: the configured audit log and its "
        "rotations; in a cluster, the store's chain)",
    )
    _add_config(verify, required=False)
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=_cmd_audit_verify)
    export = audit_sub.add_parser(
        "export",
        help="write the cluster store's audit chain as JSON Lines (what audit "
        "verify FILE checks)",
    )
    export.add_argument(
        "--after",
        type=_auditseq,
        default=0,
        metavar="N",
        help="only the lines after auditseq N (default 0: the whole chain)",
    )
    export.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="write to FILE (default: standard output)",
    )
    _add_config(export, required=False)
    export.set_defaults(handler=_cmd_audit_export)

    demo = sub.add_parser("demo", help="simulator + watcher: see it work")
    demo.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep state, audit log and configuration in DIR (default: a "
        "temporary directory, removed on exit)",
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="after the summary, go on watching the simulated fleet until Ctrl-C",
    )
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sklm-watcher`` command line and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO
    if args.command == "demo" and not args.debug:
        # The demo prints its own readable lines, events included: a poll failing
        # during a scripted restart is its console's "unreachable", not a warning.
        level = logging.ERROR
    as_json = {"auto": None, "json": True, "console": False}[args.log_format]
    logs.configure(json=as_json, level=level)
    handler: Handler = args.handler
    try:
        code = handler(args)
        # Inside the try: a reader that left shows up at the last flush too.
        sys.stdout.flush()
    except BrokenPipeError:
        return _reader_left()
    except ConfigError as exc:
        _print_error(f"sklm-watcher: {exc}")
        return EXIT_USAGE
    except WatcherError as exc:
        if args.debug:
            raise
        _print_error(f"sklm-watcher: {exc}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return code


def _print_error(text: str) -> None:
    """Print why the command failed on standard error, as ``err`` under journald."""
    print(logs.for_stream(text, _SYSLOG_ERR, sys.stderr), file=sys.stderr)


#: syslog's ``err`` priority: a refused start-up is filed with the problems.
_SYSLOG_ERR: Final = 3


#: ``sklm-watcher events | head``: the reader closed the pipe early. 128 + SIGPIPE,
#: what a shell reports for any command stopped that way (``set -o pipefail``).
EXIT_BROKEN_PIPE: Final = 141


def _reader_left() -> int:
    """End quietly after the reader of standard output went away.

    The standard way (Python's ``signal`` documentation): point standard output at
    ``/dev/null`` so the interpreter's flush at exit does not raise again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by one without a descriptor
        pass
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    log = structlog.get_logger(__name__)
    for warning in config.warnings:
        log.warning("config.warning", detail=warning)
    return config


def _load_read_only(args: argparse.Namespace) -> PartialConfig:
    """The configuration for a command that only reads (or silences): lenient.

    Mid-incident the file may be half-edited while the daemon goes on with its last
    good configuration; these commands need only ``[watcher]``, so they warn about
    the problems on standard error and go on with what is valid.
    """
    partial = load_config_lenient(args.config)
    if partial.problems:
        count = len(partial.problems)
        noun = "problem" if count == 1 else "problems"
        print(
            f"warning: {args.config}: {count} configuration {noun} "
            "(the daemon keeps its last good configuration); showing what is stored:",
            file=sys.stderr,
        )
        for problem in partial.problems:
            print(f"  - {problem}", file=sys.stderr)
    return partial


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if config.watcher.store_url is not None:
        return _check_store(args, config, config.watcher.store_url)
    print(f"{args.config}: OK: {config.summary()}")
    return EXIT_OK


def _check_store(args: argparse.Namespace, config: Config, url: Secret) -> int:
    """check-config of a cluster: the file, then what ``run`` finds at the store.

    Reads only (creates and migrates nothing). A store ``run`` cannot use
    (unreachable, not ours, a newer schema, no driver) exits 1 with the reason: the
    file is valid, the place it points at is not ready. Never shows the URL's
    password: the check names ``host:port/dbname``.
    """
    from watcher.store import check_store

    check = check_store(url)
    settings = config.watcher
    node = f"node {settings.node_name}, lease {settings.lease:g} s"
    if not check.ok:
        _print_error(
            f"sklm-watcher: {args.config}: the file is valid, but run cannot use "
            f"its store: {check.summary()}"
        )
        return EXIT_FAILURE
    print(f"{args.config}: OK: {config.summary()}")
    print(f"{check.summary()}; {node}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from watcher.daemon import Daemon, tune_runtime_for_service

    config = _load(args)
    daemon = Daemon(config, reload=lambda: load_config(args.config))
    tune_runtime_for_service()
    anyio.run(daemon.run)
    return EXIT_OK


@dataclass(frozen=True, slots=True)
class _OnceRow:
    """One server's answer to ``once`` (JSON: ``schema.once_json``)."""

    HEADERS: ClassVar[tuple[str, ...]] = ("SERVER", "PHASE", "CODE", "LATENCY", "ERROR")

    server: str
    phase: str | None
    code: int | None
    latency: float
    error: str | None
    error_kind: str | None

    def cells(self) -> tuple[str, ...]:
        """The table cells."""
        return (
            self.server,
            self.phase or "-",
            "-" if self.code is None else f"{self.code}/7",
            f"{self.latency * 1000:.0f} ms",
            self.error or "",
        )

    def style(self) -> str:
        """Red when the server did not answer."""
        return "" if self.error is None else "bold red"


async def _poll_all(servers: Sequence[ServerConfig]) -> list[_OnceRow]:
    from watcher.client import SklmClient, create_session

    rows: dict[str, _OnceRow] = {}

    async with create_session(servers) as session:
        clients = {s.name: SklmClient(s, session) for s in servers}

        async def poll(server: ServerConfig) -> None:
            client = clients[server.name]
            started = time.monotonic()
            try:
                result = await client.poll_phase()
            except SklmError as exc:
                rows[server.name] = _OnceRow(
                    server.name,
                    None,
                    None,
                    time.monotonic() - started,
                    str(exc),
                    type(exc).__name__,
                )
            else:
                rows[server.name] = _OnceRow(
                    server.name,
                    result.phase.name,
                    int(result.phase),
                    time.monotonic() - started,
                    None,
                    None,
                )
            finally:
                with anyio.move_on_after(2, shield=True):
                    await client.logout()

        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(poll, server)
    return [rows[s.name] for s in servers]


def _cmd_once(args: argparse.Namespace) -> int:
    config = _load(args)
    rows = anyio.run(_poll_all, config.servers)
    if args.json:
        print(json.dumps([schema.once_json(r) for r in rows], indent=2))
    else:
        _print_rows(rows)
    return EXIT_OK if all(r.error is None for r in rows) else EXIT_FAILURE


def _print_rows(rows: Sequence[TableRow]) -> None:
    """Print rows as the views print theirs (rich on a terminal, else aligned)."""
    from watcher import views

    views.render_table(rows, console_file=sys.stdout, color=_color(sys.stdout))


def _open_journal(config: Config, *, write: bool = False) -> Store:
    from watcher.store import open_store

    # write: no lock on SQLite (the daemon may be running; it keeps the audit log
    # to itself), no leases on PostgreSQL; otherwise read-only.
    return open_store(config.watcher, config.sinks, mode="write" if write else "read")


@dataclass(frozen=True, slots=True)
class _BacklogRow:
    """One sink's outbox backlog as a table row."""

    HEADERS: ClassVar[tuple[str, ...]] = ("SINK", "PENDING", "DEAD", "OLDEST PENDING")

    summary: OutboxSummary

    def cells(self) -> tuple[str, ...]:
        """The table cells."""
        s = self.summary
        age = s.oldest_pending_age
        return (
            s.sink,
            str(s.pending),
            str(s.dead),
            "-" if age is None else f"{age:.0f} s",
        )

    def style(self) -> str:
        """Red while dead letters wait."""
        return "bold red" if self.summary.dead else ""


@dataclass(frozen=True, slots=True)
class _DeadRow:
    """One dead letter as a table row."""

    HEADERS: ClassVar[tuple[str, ...]] = (
        "SINK",
        "EVENT ID",
        "TYPE",
        "SERVER",
        "ATTEMPTS",
        "LAST ERROR",
    )

    row: OutboxRow

    def cells(self) -> tuple[str, ...]:
        """The table cells."""
        r = self.row
        return (
            r.sink,
            r.event.id,
            str(r.event.type),
            r.event.server,
            str(r.attempts),
            r.last_error or "",
        )

    def style(self) -> str:
        """No colour: every row is a dead letter."""
        return ""


def _cmd_outbox(args: argparse.Namespace) -> int:
    config = _load_read_only(args).config
    now = datetime.now(UTC)
    with _open_journal(config) as journal:
        summary = journal.outbox_summary(now)
        dead = journal.dead_rows() if args.dead else []
    if args.json:
        print(json.dumps(schema.outbox_json(summary, dead), indent=2))
        return EXIT_OK
    _print_rows([_BacklogRow(s) for s in summary])
    if args.dead:
        print()
        _print_rows([_DeadRow(r) for r in dead])
    return EXIT_OK


def _cmd_outbox_retry(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _open_journal(config, write=True) as journal:
        count = journal.requeue(
            sink=args.sink, event_id=args.event_id, all_dead=args.all_dead
        )
    print(
        f"requeued {count} dead deliveries; a running daemon sends them within a minute"
    )
    return EXIT_OK if count else EXIT_FAILURE


def _cmd_test_sink(args: argparse.Namespace) -> int:
    from watcher.client import create_session
    from watcher.errors import DeliveryError
    from watcher.events import Event, EventType
    from watcher.sinks import build_sink

    config = load_config(args.config)
    by_name = {s.name: s for s in config.sinks}
    if args.sink not in by_name:
        known = ", ".join(by_name) or "none"
        raise ConfigError(
            [
                ConfigProblem(
                    "sinks", f"no sink named {args.sink!r}; configured: {known}"
                )
            ],
            source=str(args.config),
        )
    sink_config = by_name[args.sink]
    now = datetime.now(UTC)
    event = Event.create(
        EventType.TEST,
        "sklm-watcher-test",
        now,
        {"message": "test event from `sklm-watcher test-sink`; ignore it"},
        key=(now.isoformat(),),
    )

    async def send() -> str | None:
        async with create_session(()) as session:
            sink = build_sink(sink_config, session)
            try:
                await sink.deliver(event)
            except DeliveryError as exc:
                return str(exc)
        return None

    error = anyio.run(send)
    if error is not None:
        print(f"{args.sink}: FAILED: {error}", file=sys.stderr)
        # Said plainly: an operator may otherwise wait for a retry that never comes.
        print(
            f"{args.sink}: the test event was sent once and is not queued or retried "
            "(the daemon queues and retries real events); fix the sink and run "
            "test-sink again",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(f"{args.sink}: delivered test event {event.id}")
    return EXIT_OK


_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float:
    """Parse ``90``, ``90s``, ``30m``, ``2h`` or ``1d`` into seconds."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:], None)
    number = raw[:-1] if unit is not None else raw
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (use e.g. 90s, 30m, 2h, 1d)"
        ) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive: {text!r}")
    return seconds


def _since(text: str) -> datetime:
    """Parse an ISO 8601 time (UTC if no offset) or an age like ``24h``."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC) - timedelta(seconds=_duration(text))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _color(out: TextIO) -> bool:
    return out.isatty() and "NO_COLOR" not in os.environ


def _cmd_status(args: argparse.Namespace) -> int:
    from watcher import views

    partial = _load_read_only(args)
    config = partial.config
    names = [s.name for s in config.servers]
    now = datetime.now(UTC)
    if config.watcher.is_cluster:
        # This host's daemon polls only the servers it holds leases on: the store
        # has every server, and which node polls each.
        return _cluster_status(args, partial, _now())
    rows = _status_from_daemon(
        config.watcher.listen, now, _listen_authorization(config.watcher)
    )
    if rows is None:
        # No daemon listening: the state database (saved on every transition).
        running = _daemon_running(config.watcher.state_dir)
        with _open_journal(config) as journal:
            if partial.problems:
                # Servers the broken part of the file names are still in the store.
                known = set(names)
                stored = views.fleet_status(journal, now)
                names += [r.server for r in stored if r.server not in known]
            rows = views.with_daemon(views.fleet_status(journal, now, names), running)
        as_of = max((r.as_of for r in rows if r.as_of is not None), default=None)
        if running is False:
            print(f"no daemon running; {views.data_age(as_of, now)}", file=sys.stderr)
        elif running is None:
            print(
                "cannot tell whether a daemon runs (its lock file is not readable); "
                f"{views.data_age(as_of, now)}",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        views.render_table(rows, console_file=sys.stdout, color=_color(sys.stdout))
    return EXIT_OK


def _cluster_status(
    args: argparse.Namespace, partial: PartialConfig, now: datetime
) -> int:
    """``status`` of a cluster: every server from the store, with its NODE.

    A row's ``daemon_running`` says whether the node holding its lease is alive:
    a server nobody holds now shows its last stored state, marked stale.
    """
    from watcher import views

    config = partial.config
    names = [s.name for s in config.servers]
    with _open_journal(config) as journal:
        store = _as_cluster(journal)
        if partial.problems:
            # Servers the broken part of the file names are still in the store.
            known = set(names)
            stored = views.fleet_status(store, now)
            names += [r.server for r in stored if r.server not in known]
        rows = views.fleet_status(store, now, names)
        nodes = store.nodes()
        holders = views.lease_holders(store.leases(), now)
    alive = {n.name for n in nodes if n.alive}
    clustered = [
        replace(row, daemon_running=row.node in alive)
        for row in views.with_nodes(rows, holders)
    ]
    if not alive:
        as_of = max((r.as_of for r in rows if r.as_of is not None), default=None)
        print(
            f"no node of the cluster is alive; {views.data_age(as_of, now)}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps([r.to_json() for r in clustered], indent=2))
    else:
        views.render_table(clustered, console_file=sys.stdout, color=_color(sys.stdout))
    return EXIT_OK


def _now() -> datetime:
    """The instant the cluster views measure ages at (a seam for tests)."""
    return datetime.now(UTC)


def _as_cluster(journal: Store) -> ClusterStore:
    """The store as the cluster store it is (``store_url`` set)."""
    if not hasattr(journal, "nodes"):
        raise TypeError(f"{type(journal).__name__} is not a cluster store")
    return cast("ClusterStore", journal)


def _not_a_cluster(args: argparse.Namespace, config: Config, what: str) -> int:
    """Say in words that a cluster command met a single-node configuration: exit 2.

    A usage error (2), not a failure (1): the command cannot apply to this file,
    and a script checking ``cluster`` should not mistake SQLite for a broken store.
    """
    print(
        f"sklm-watcher: not a cluster: {args.config} sets no store_url, so the "
        f"store is SQLite in {config.watcher.state_dir}; {what}",
        file=sys.stderr,
    )
    return EXIT_USAGE


def _cmd_cluster(args: argparse.Namespace) -> int:
    from watcher import views

    config = _load_read_only(args).config
    if not config.watcher.is_cluster:
        return _not_a_cluster(args, config, "`sklm-watcher status` shows its servers")
    now = _now()
    with _open_journal(config) as journal:
        store = _as_cluster(journal)
        nodes = store.nodes()
        leases = store.leases()
    view = views.cluster_view(nodes, leases, [s.name for s in config.servers], now)
    if args.json:
        print(json.dumps(view.to_json(), indent=2))
        return EXIT_OK
    if view.nodes:
        _print_rows(list(view.nodes))
    else:
        print("no node has joined yet: start `sklm-watcher run` with this store_url")
    print(view.owner_line())
    return EXIT_OK


def _listen_authorization(settings: WatcherSettings) -> str | None:
    """The ``Authorization`` header for our own daemon's ``listen``, if it needs one."""
    import base64

    if settings.listen_token:
        return f"Bearer {settings.listen_token.reveal()}"
    if settings.listen_username and settings.listen_password:
        pair = f"{settings.listen_username}:{settings.listen_password.reveal()}"
        return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return None


def _status_from_daemon(
    listen: Listen | None, now: datetime, authorization: str | None = None
) -> list[ServerStatusRow] | None:
    """Rows from a running daemon's ``/status`` (fresher than the database), or None.

    ``authorization``: the header its ``listen`` credentials need (None: none).
    """
    from urllib.error import URLError
    from urllib.request import Request, urlopen

    from watcher import schema, views
    from watcher.events import parse_time

    if listen is None:
        return None
    try:
        request = Request(f"http://{listen}/status")
        if authorization is not None:
            request.add_header("Authorization", authorization)
        with urlopen(request, timeout=2) as response:  # noqa: S310 - http:// only
            document = json.loads(response.read())
    except (URLError, OSError, ValueError):
        return None
    as_of = document.get("as_of")
    answered_at = now if as_of is None else parse_time(str(as_of))
    return [
        views.ServerStatusRow(
            **schema.status_fields_from_daemon(entry, now=now, as_of=answered_at)
        )
        for entry in document.get("servers", [])
    ]


def _daemon_running(state_dir: Path) -> bool | None:
    """Whether a daemon holds ``state_dir``'s lock; None when that cannot be told.

    A shared, non-blocking probe released at once: it never waits, and holds the
    lock only for the instant of the probe.
    """
    import fcntl

    from watcher.store.sqlite.schema import LOCK_NAME

    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # no daemon ever ran here
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _cmd_restores(args: argparse.Namespace) -> int:
    from watcher import views

    config = _load_read_only(args).config
    with _open_journal(config) as journal:
        rows = views.restores(journal, server=args.server, since=args.since)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        views.render_table(rows, console_file=sys.stdout, color=_color(sys.stdout))
    return EXIT_OK


def _cmd_events(args: argparse.Namespace) -> int:
    from watcher import views

    config = _load_read_only(args).config
    with _open_journal(config) as journal:
        rows = views.events(
            journal, server=args.server, type_glob=args.type_glob, since=args.since
        )
    if args.json:
        for row in rows:
            print(json.dumps(row.to_json(), ensure_ascii=False))
    else:
        views.render_table(rows, console_file=sys.stdout, color=_color(sys.stdout))
    return EXIT_OK


#: ``follow --timeout`` ran out before the restore ended: the code GNU
#: ``timeout(1)`` uses, distinct from 0 (completed and back), 1 (failed or not
#: back) and 2 (usage).
EXIT_FOLLOW_TIMEOUT: Final = 124


def _cmd_follow(args: argparse.Namespace) -> int:
    from watcher import views

    # Read-only: a half-edited file must not stop an operator following a restore.
    config = _load_read_only(args).config
    known = args.server in {s.name for s in config.servers}
    if not known:
        # Left out of a half-edited file, it may still be one the daemon watches.
        with _open_journal(config) as journal:
            known = args.server in journal.load_states()
    if not known:
        raise ConfigError(
            [ConfigProblem("servers", f"no server named {args.server!r}")],
            source=str(args.config),
        )
    started = time.monotonic()
    color = not args.json and _color(sys.stdout)
    shown: str | None = None
    # The restore being followed, once there is one: pinned, so that it is followed
    # to its end (the restart after COMPLETED included) even if another one starts.
    followed: str | None = None
    # Without --last, the restore that had already ended when follow started is
    # history: wait for the next one.
    history: str | None = None
    first_look = True
    waiting_said = False
    while True:
        with _open_journal(config) as journal:
            view = views.follow_state(journal, args.server, restore_id=followed)
        if first_look:
            first_look = False
            ended = views.follow_outcome(view) is not None
            if not args.last and view.restore_id is not None and ended:
                history = view.restore_id
        if followed is None and view.restore_id not in (None, history):
            followed = view.restore_id
        if followed is not None or args.last:
            key = json.dumps(view.to_json(), sort_keys=True)
            if key != shown:
                shown = key
                if args.json:
                    print(json.dumps(view.to_json(), ensure_ascii=False))
                else:
                    views.render_follow(
                        view,
                        console_file=sys.stdout,
                        color=color,
                        now=datetime.now(UTC),
                    )
                sys.stdout.flush()
            outcome = views.follow_outcome(view)
            if followed is not None and outcome is not None:
                return outcome
        elif not waiting_said:
            # With --json, standard output carries only JSON lines.
            print(
                f"{args.server}: no restore running; waiting for one to start",
                file=sys.stderr if args.json else sys.stdout,
            )
            sys.stdout.flush()
            waiting_said = True
        if args.timeout is not None and time.monotonic() - started > args.timeout:
            print(f"{args.server}: gave up after {args.timeout:g} s", file=sys.stderr)
            return EXIT_FOLLOW_TIMEOUT
        time.sleep(args.interval)


def _cmd_silence_add(args: argparse.Namespace) -> int:
    from fnmatch import fnmatchcase

    from watcher.events import format_time

    partial = _load_read_only(args)
    config = partial.config
    now = datetime.now(UTC)
    until = now + timedelta(seconds=args.duration)
    with _open_journal(config, write=True) as journal:
        silence_id = journal.add_silence(args.server_glob, until, args.reason, now)
    print(
        f"silence {silence_id}: {args.server_glob} until {format_time(until)}"
        " (events are journaled, not sent)"
    )
    if not any(fnmatchcase(s.name, args.server_glob) for s in config.servers):
        # Most likely a typo; kept anyway (a server may be added under that name).
        which = "valid " if partial.problems else ""
        print(
            f"warning: {args.server_glob!r} matches none of the "
            f"{len(config.servers)} {which}configured servers; "
            f"check the name, or `sklm-watcher silence remove {silence_id}`",
            file=sys.stderr,
        )
    return EXIT_OK


@dataclass(frozen=True, slots=True)
class _SilenceRow:
    """One silence as a table row (``silence list``)."""

    HEADERS: ClassVar[tuple[str, ...]] = ("ID", "SERVERS", "UNTIL", "REASON")

    silence: Silence
    now: datetime

    def cells(self) -> tuple[str, ...]:
        """The table cells."""
        s = self.silence
        return (str(s.id), s.server_glob, schema.format_time(s.until), s.reason)

    def style(self) -> str:
        """No colour."""
        return ""


@dataclass(frozen=True, slots=True)
class _SilenceHistoryRow:
    """One silence with its state, active or not (``silence list --all``)."""

    HEADERS: ClassVar[tuple[str, ...]] = (*_SilenceRow.HEADERS, "STATE", "REMOVED")

    silence: Silence
    now: datetime

    def cells(self) -> tuple[str, ...]:
        """The table cells: :class:`_SilenceRow`'s, then state and removal."""
        s = self.silence
        if s.removed_at is not None:
            state = "removed"
            removed = (
                f"{schema.format_time(s.removed_at)} by {s.removed_by or 'unknown'}"
            )
        else:
            state = "active" if s.is_active(self.now) else "expired"
            removed = "-"
        return (*_SilenceRow(s, self.now).cells(), state, removed)

    def style(self) -> str:
        """Dim once it no longer holds."""
        return "" if self.silence.is_active(self.now) else "dim"


def _cmd_silence_list(args: argparse.Namespace) -> int:
    config = _load_read_only(args).config
    now = datetime.now(UTC)
    with _open_journal(config) as journal:
        found = journal.silences(now, include_expired=args.all)
    if args.json:
        print(json.dumps([schema.silence_json(s) for s in found], indent=2))
        return EXIT_OK
    row = _SilenceHistoryRow if args.all else _SilenceRow
    _print_rows([row(s, now) for s in found])
    return EXIT_OK


def _cmd_silence_remove(args: argparse.Namespace) -> int:
    config = _load_read_only(args).config
    now = datetime.now(UTC)
    with _open_journal(config, write=True) as journal:
        removed = journal.remove_silence(args.id, at=now, by=_operator())
        if not removed:
            earlier = next(
                (
                    s
                    for s in journal.silences(now, include_expired=True)
                    if s.id == args.id
                ),
                None,
            )
    if not removed:
        if earlier is not None and earlier.removed_at is not None:
            print(f"silence {args.id} was already removed", file=sys.stderr)
        else:
            print(f"no silence {args.id}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"silence {args.id} removed")
    return EXIT_OK


def _operator() -> str:
    """Who runs this command, for ``removed_by`` (``alice (as root)`` under sudo)."""
    import getpass

    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{sudo} (as {user})" if sudo and sudo != user else user


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from watcher import audit
    from watcher.errors import JournalError

    files: list[Path] = list(args.files)
    expect_last: str | None = None
    if not files:
        config = _load_read_only(args).config
        if config.watcher.is_cluster:
            return _verify_store_chain(args, config)
        files = _audit_files(config.watcher.audit_log)
        try:
            with _open_journal(config) as journal:
                position = journal.audit_position()
        except JournalError:
            position = None
        expect_last = position.hash if position is not None else None
    try:
        verdict = audit.verify_audit(files, expect_last_hash=expect_last)
    except OSError as exc:
        print(
            f"sklm-watcher: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr
        )
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
    else:
        print(verdict.summary())
    return EXIT_OK if verdict.ok else EXIT_FAILURE


#: How ``audit verify`` names the cluster store's chain where it names a file.
STORE_CHAIN_LABEL: Final = "store"


def _verify_store_chain(args: argparse.Namespace, config: Config) -> int:
    """``audit verify`` in a cluster: the store's one chain, from its first line.

    Exported to a temporary file and checked by the same verifier an auditor runs
    on ``audit export``'s output; the head is read first, so lines appended by the
    nodes meanwhile do not count as a changed last line. A fault's ``file`` is
    ``store`` and its ``line`` the line's ``auditseq``.
    """
    import tempfile

    from watcher import audit

    with _open_journal(config) as journal:
        store = _as_cluster(journal)
        position = store.audit_position()
        lines = store.export_audit(0)
    with tempfile.TemporaryDirectory(prefix="sklm-watcher-audit-") as tmp:
        path = Path(tmp) / "chain.jsonl"
        path.write_bytes(_audit_bytes(lines))
        verdict = audit.verify_audit(
            [path],
            anchor=audit.GENESIS_HASH,
            expect_last_hash=None if position is None else position.hash,
        )
    if verdict.first_bad is not None:
        fault = replace(verdict.first_bad, file=Path(STORE_CHAIN_LABEL))
        verdict = replace(verdict, first_bad=fault)
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
    else:
        print(verdict.summary())
    return EXIT_OK if verdict.ok else EXIT_FAILURE


def _audit_bytes(lines: Sequence[AuditLine]) -> bytes:
    """Audit lines as the JSON Lines file holds them: UTF-8, a newline after each."""
    return b"".join(line.line.encode("utf-8") + b"\n" for line in lines)


def _auditseq(text: str) -> int:
    """Parse ``--after``: an ``auditseq``, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an auditseq: {text!r} (a whole number, 0 or more)"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"an auditseq is 0 or more: {text!r}")
    return value


def _cmd_audit_export(args: argparse.Namespace) -> int:
    config = _load_read_only(args).config
    if not config.watcher.is_cluster:
        return _not_a_cluster(
            args,
            config,
            f"its audit log is the file {config.watcher.audit_log} itself (with "
            "its rotations): copy it; `sklm-watcher audit verify` checks it",
        )
    with _open_journal(config) as journal:
        lines = _as_cluster(journal).export_audit(args.after)
    data = _audit_bytes(lines)
    if args.output is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        where = "standard output"
    else:
        try:
            args.output.write_bytes(data)
        except OSError as exc:
            print(
                f"sklm-watcher: cannot write {args.output}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        where = str(args.output)
    span = f" (auditseq {lines[0].auditseq}..{lines[-1].auditseq})" if lines else ""
    noun = "line" if len(lines) == 1 else "lines"
    print(f"exported {len(lines)} audit {noun}{span} to {where}", file=sys.stderr)
    return EXIT_OK


def _audit_files(current: Path) -> list[Path]:
    """The audit log's rotated files (oldest first), then the current one."""
    rotated = [
        p
        for p in current.parent.glob(current.name + "?*")
        if p.is_file() and not p.name.endswith((".gz", ".xz", ".bz2", ".zst"))
    ]
    rotated.sort(key=lambda p: (p.stat().st_mtime, p.name))
    return [*rotated, current] if current.exists() else rotated


def _cmd_simulate(args: argparse.Namespace) -> int:
    from watcher import simulator

    async def run() -> int:
        return await simulator.run_from_args(args)

    return anyio.run(run)


def _cmd_demo(args: argparse.Namespace) -> int:
    from watcher import demo

    async def run() -> int:
        return await demo.run(keep=args.keep, keep_running=args.keep_running)

    try:
        return anyio.run(run)
    except KeyboardInterrupt:
        # Ctrl-C before the demo's own signal handling was in place (while starting).
        print("\nInterrupted while starting; nothing was recorded.", file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for Ctrl-C
