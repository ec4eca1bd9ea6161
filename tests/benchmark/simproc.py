"""An instrumented simulator process for the benchmarks (one slice of a fleet).

``python -m tests.benchmark.simproc SCENARIO [--cert PEM --key PEM] [--ground-truth F]``
runs :class:`watcher.simulator.Simulator` like ``sklm-watcher simulate`` does, and also
records the monotonic arrival time of every progress GET per server (``CLOCK_MONOTONIC``
is shared by every process on the machine, so the benchmark can compare it with its
own readings). It prints ``listening on URL name=NAME`` per server, then ``ready``, and
reads commands on standard input, one per line:

- ``dump PATH``: write ``{"name": [arrival, ...]}`` (everything since the last dump)
  to PATH as JSON, then print ``dumped PATH``;
- ``restart NAME DOWN STARTING``: restart a server now (mid-restore or not);
- ``expire NAME``: forget the server's session ids;
- ``quit`` (or end of input): stop.

With ``--progress-latency`` a server's ``latency`` delays only its progress answers,
so that logins and logouts (a daemon's reload logs every changed server out, one
after another) stay quick.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import ssl
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.benchmark.commands import stdin_commands
from watcher.simulator import SimulatedServer, Simulator, load_scenario

_arrivals: defaultdict[str, list[float]] = defaultdict(list)
#: With --progress-latency: the scenario's latency per server, for progress only.
_progress_latency: dict[str, float] = {}
_original_handle = SimulatedServer._handle


async def _counting_handle(
    self: SimulatedServer, request: web.BaseRequest
) -> web.StreamResponse:
    if request.method == "GET" and request.path.endswith("/progress"):
        _arrivals[self.name].append(time.monotonic())
        delay = _progress_latency.get(self.name)
        if delay:
            await asyncio.sleep(delay)
    return await _original_handle(self, request)


def _dump(path: Path) -> None:
    # Blocking on purpose: the benchmark asks for it outside its measuring windows.
    data: dict[str, Any] = dict(_arrivals)
    _arrivals.clear()
    path.write_text(json.dumps(data), encoding="utf-8")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _commands(simulator: Simulator) -> None:
    async for words in stdin_commands():
        match words:
            case ["quit"]:
                return
            case ["dump", path]:
                _dump(Path(path))
                _say(f"dumped {path}")
            case ["restart", name, down, starting]:
                asyncio.ensure_future(  # noqa: RUF006 - fire and forget, by design
                    simulator.server(name).restart(float(down), float(starting))
                )
            case ["expire", name]:
                simulator.server(name).expire_sessions()
            case _:
                _say(f"unknown command {words!r}")


async def _main(args: argparse.Namespace) -> None:
    setattr(SimulatedServer, "_handle", _counting_handle)  # noqa: B010 - instrumentation
    scenario = load_scenario(args.scenario)
    if args.progress_latency:
        _progress_latency.update({s.name: s.latency for s in scenario.servers})
        scenario = dataclasses.replace(
            scenario,
            servers=tuple(
                dataclasses.replace(s, latency=0.0) for s in scenario.servers
            ),
        )
    context: ssl.SSLContext | None = None
    if args.cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    simulator = Simulator(scenario, ssl_context=context, ground_truth=args.ground_truth)
    await simulator.start()
    try:
        lines = [
            f"listening on {url} name={name}" for name, url in simulator.urls.items()
        ]
        sys.stdout.write("\n".join([*lines, "ready"]) + "\n")
        sys.stdout.flush()
        await _commands(simulator)
    finally:
        await simulator.close()


def main() -> None:
    """Parse the arguments and run until ``quit`` or end of input."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--ground-truth", type=Path)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument(
        "--progress-latency",
        action="store_true",
        help="apply each server's latency to progress GETs only (fast logins/logouts)",
    )
    args = parser.parse_args()
    if args.uvloop:
        importlib.import_module("uvloop").install()
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
