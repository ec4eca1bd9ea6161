"""Command line: argparse subcommands; exit 0 ok, 2 usage or configuration, 1 other.

This is the only module that configures logging and the only one that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog

from watcher import __version__, logs
from watcher.config import Config, ServerConfig, load_config
from watcher.errors import ConfigError, ConfigProblem, SklmError, WatcherError

if TYPE_CHECKING:
    from watcher.journal import Journal

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

    demo = sub.add_parser("demo", help="simulator + watcher: see it work")
    demo.add_argument(
        "--keep", type=Path, default=None, help="keep state and audit log in DIR"
    )
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sklm-watcher`` command line and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO
    if args.command == "demo" and not args.debug:
        level = logging.WARNING  # the demo prints its own readable lines
    as_json = {"auto": None, "json": True, "console": False}[args.log_format]
    logs.configure(json=as_json, level=level)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"sklm-watcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WatcherError as exc:
        if args.debug:
            raise
        print(f"sklm-watcher: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    log = structlog.get_logger(__name__)
    for warning in config.warnings:
        log.warning("config.warning", detail=warning)
    return config


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: OK: {config.summary()}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from watcher.daemon import Daemon

    config = _load(args)
    daemon = Daemon(config, reload=lambda: load_config(args.config))
    anyio.run(daemon.run)
    return EXIT_OK


@dataclass(frozen=True, slots=True)
class _OnceRow:
    server: str
    phase: str | None
    code: int | None
    latency: float
    error: str | None
    error_kind: str | None


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
        print(json.dumps([_row_json(r) for r in rows], indent=2))
    else:
        _print_table(
            ("SERVER", "PHASE", "CODE", "LATENCY", "ERROR"),
            [
                (
                    r.server,
                    r.phase or "-",
                    "-" if r.code is None else f"{r.code}/7",
                    f"{r.latency * 1000:.0f} ms",
                    r.error or "",
                )
                for r in rows
            ],
        )
    return EXIT_OK if all(r.error is None for r in rows) else EXIT_FAILURE


def _row_json(row: _OnceRow) -> dict[str, Any]:
    return {
        "server": row.server,
        "phase": row.phase,
        "code": row.code,
        "latency": round(row.latency, 4),
        "error": row.error,
        "error_kind": row.error_kind,
    }


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [
        max(len(str(cell)) for cell in column)
        for column in zip(header, *rows, strict=False)
    ]
    for line in (header, *rows):
        print(
            "  ".join(
                str(c).ljust(w) for c, w in zip(line, widths, strict=True)
            ).rstrip()
        )


def _open_journal(config: Config, *, write: bool = False) -> Journal:
    from watcher.journal import Journal

    if write:
        # No lock: the daemon may be running; it keeps the audit log to itself.
        return Journal.open(
            config.watcher.state_dir, config.watcher.audit_log, config.sinks, lock=False
        )
    return Journal.open(
        config.watcher.state_dir,
        config.watcher.audit_log,
        config.sinks,
        read_only=True,
    )


def _cmd_outbox(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    now = datetime.now(UTC)
    with _open_journal(config) as journal:
        summary = journal.outbox_summary(now)
        dead = journal.dead_rows() if args.dead else []
    if args.json:
        print(
            json.dumps(
                {
                    "sinks": [
                        {
                            "sink": s.sink,
                            "pending": s.pending,
                            "dead": s.dead,
                            "oldest_pending_age": s.oldest_pending_age,
                        }
                        for s in summary
                    ],
                    "dead": [
                        {
                            "sink": r.sink,
                            "event_id": r.event.id,
                            "type": str(r.event.type),
                            "server": r.event.server,
                            "attempts": r.attempts,
                            "last_error": r.last_error,
                            "dead_at": None
                            if r.dead_at is None
                            else r.dead_at.isoformat(),
                        }
                        for r in dead
                    ],
                },
                indent=2,
            )
        )
        return EXIT_OK
    _print_table(
        ("SINK", "PENDING", "DEAD", "OLDEST PENDING"),
        [
            (
                s.sink,
                str(s.pending),
                str(s.dead),
                "-"
                if s.oldest_pending_age is None
                else f"{s.oldest_pending_age:.0f} s",
            )
            for s in summary
        ],
    )
    if args.dead:
        print()
        _print_table(
            ("SINK", "EVENT ID", "TYPE", "SERVER", "ATTEMPTS", "LAST ERROR"),
            [
                (
                    r.sink,
                    r.event.id,
                    str(r.event.type),
                    r.event.server,
                    str(r.attempts),
                    r.last_error or "",
                )
                for r in dead
            ],
        )
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
        return EXIT_FAILURE
    print(f"{args.sink}: delivered test event {event.id}")
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    from watcher import simulator

    async def run() -> int:
        return await simulator.run_from_args(args)

    return anyio.run(run)


def _cmd_demo(args: argparse.Namespace) -> int:
    from watcher import demo

    async def run() -> int:
        return await demo.run(keep=args.keep)

    return anyio.run(run)
