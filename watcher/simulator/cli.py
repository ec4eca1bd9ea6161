"""``sklm-watcher simulate``: run a scenario until SIGTERM, printing where it listens."""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import tempfile
from pathlib import Path

import anyio

from watcher.errors import ScenarioError, TlsUnavailableError
from watcher.simulator.fleet import Simulator
from watcher.simulator.scenario import load_scenario
from watcher.simulator.tls import make_tls
from watcher.simulator.watcher_config import write_watcher_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sklm-watcher simulate`` arguments to ``parser``."""
    parser.add_argument("scenario", type=Path, help="the scenario TOML file")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write every file here, created if missing (default: a new temporary "
        "directory, printed as `out DIR`); relative FILE / DIR arguments below are "
        "inside it, absolute ones are used as given",
    )
    parser.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a throw-away CA"
    )
    parser.add_argument(
        "--ca-out",
        type=Path,
        metavar="FILE",
        help="with --tls: write the CA certificate here (default: ca.pem)",
    )
    parser.add_argument(
        "--ground-truth",
        type=Path,
        metavar="FILE",
        help="append every true transition to this JSON Lines file",
    )
    parser.add_argument(
        "--write-config",
        type=Path,
        metavar="FILE",
        help="write a watcher configuration for the simulated fleet (and its "
        "password files beside it)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the state_dir written by --write-config (default: state)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )


async def run_from_args(args: argparse.Namespace) -> int:
    """Run ``sklm-watcher simulate`` until SIGTERM or SIGINT; return the exit code.

    Prints ``listening on URL name=NAME`` per server, ``out DIR`` (the output
    folder), ``ca-file PATH`` (with --tls), ``config PATH`` (with --write-config),
    then ``ready``. Every file goes into the output folder (``--out``, else a new
    temporary directory, left in place for the watcher to use) unless given as an
    absolute path: run from a checkout, it leaves nothing in the checkout.
    """
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        _say(str(exc), error=True)
        return 2
    if args.ca_out is not None and not args.tls:
        _say("--ca-out needs --tls", error=True)
        return 2
    ssl_context: ssl.SSLContext | None = None
    ca_pem = b""
    if args.tls:
        try:
            ca_pem, ssl_context, _ = make_tls(
                tuple(dict.fromkeys((args.host, "localhost")))
            )
        except TlsUnavailableError as exc:
            _say(str(exc), error=True)
            return 2
    try:
        out = output_folder(args.out)
    except OSError as exc:
        _say(f"cannot create the output folder {args.out}: {exc.strerror}", error=True)
        return 1
    ca_file: Path | None = None
    if args.tls:
        ca_file = out / (args.ca_out or Path("ca.pem"))
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca_file.write_bytes(ca_pem)
    ground_truth = None if args.ground_truth is None else out / args.ground_truth
    simulator = Simulator(
        scenario,
        host=args.host,
        ssl_context=ssl_context,
        ground_truth=ground_truth,
    )
    try:
        await simulator.start()
    except OSError as exc:
        _say(f"cannot listen on {args.host}: {exc.strerror or exc}", error=True)
        return 1
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            for name, url in simulator.urls.items():
                _say(f"listening on {url} name={name}")
            _say(f"out {out}")
            if ca_file is not None:
                _say(f"ca-file {ca_file}")
            if args.write_config is not None:
                config_file = out / args.write_config
                write_watcher_config(
                    simulator,
                    config_file,
                    state_dir=out / (args.state_dir or Path("state")),
                    ca_file=ca_file,
                )
                _say(f"config {config_file}")
            _say("ready")
            async for _ in signals:
                break
    finally:
        with anyio.CancelScope(shield=True):
            await simulator.close()
    return 0


def output_folder(out: Path | None) -> Path:
    """The absolute output folder of ``simulate``: ``out`` (created if missing) or new.

    Raises:
        OSError: the folder cannot be created.
    """
    if out is None:
        return Path(tempfile.mkdtemp(prefix="sklm-sim-"))
    folder = out.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _say(line: str, *, error: bool = False) -> None:
    stream = sys.stderr if error else sys.stdout
    stream.write(line + "\n")
    stream.flush()
