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
from pathlib import Path
from typing import Any, Final

import anyio
import structlog

from watcher import __version__, logs
from watcher.config import Config, ServerConfig, load_config
from watcher.errors import ConfigError, SklmError, WatcherError

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

_DEFAULT_CONFIG: Final = Path("/etc/sklm-watcher/config.toml")

Handler = Callable[[argparse.Namespace], int]


def _add_config(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        required=required,
        default=None if required else _DEFAULT_CONFIG,
        help="the TOML configuration file",
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
