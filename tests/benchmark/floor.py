"""The floor: a bare aiohttp loop polling the same servers at the same rate.

``python -m tests.benchmark.floor SERVERS_JSON`` reads ``{"servers": [[name, url],
...], "interval": s, "jitter": f, "ca_file": path, "username": u, "password": p}``
(a server given as ``[name, url, seconds]`` keeps its own interval),
logs in to every server once, then GETs its progress path every ``interval`` seconds
(after the answer, as the daemon's loop does; first poll at a random offset within
one interval) and parses the JSON. Nothing else: no state machine, no journal, no
logging. One ``aiohttp.ClientSession`` sized for the fleet, connections kept alive
for 15 minutes.

Standard input takes ``interval SECONDS`` lines: every loop switches to the new
interval at once, restarting at a random offset within it (so the benchmark can
park the floor at a slow rate while it measures the daemon, without closing its
connections). Runs until SIGTERM or end of input. ``--uvloop`` runs it on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import random
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.benchmark.commands import stdin_commands

_API = "/SKLM/rest/v1/ckms"
_KEEPALIVE = 900.0


class _Pace:
    """The shared interval; setting it wakes every loop."""

    def __init__(self, interval: float, jitter: float) -> None:
        self.interval = interval
        self.jitter = jitter
        self.changed = asyncio.Event()

    def set(self, interval: float) -> None:
        self.interval = interval
        self.changed.set()
        self.changed = asyncio.Event()


async def _wait(pace: _Pace, seconds: float) -> bool:
    """Sleep ``seconds``; True if the interval changed meanwhile."""
    changed = pace.changed
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(changed.wait(), seconds)
    return changed.is_set()


async def _watch(
    session: aiohttp.ClientSession,
    server: list[Any],
    context: ssl.SSLContext,
    config: dict[str, Any],
    pace: _Pace,
    rng: random.Random,
) -> None:
    url = str(server[1])
    own = float(server[2]) if len(server) > 2 else None
    headers: dict[str, str] | None = None
    body = {"userid": config["username"], "password": config["password"]}
    delay = (own or pace.interval) * rng.random()
    while True:
        if await _wait(pace, delay):
            delay = (own or pace.interval) * rng.random()
            continue
        try:
            if headers is None:
                async with session.post(
                    url + _API + "/login", json=body, ssl=context
                ) as reply:
                    data = await reply.json(content_type=None)
                headers = {
                    "Accept": "application/json",
                    "Authorization": f"SKLMAuth userAuthId={data['UserAuthId']}",
                }
            async with session.get(
                url + _API + "/restore/progress", headers=headers, ssl=context
            ) as reply:
                raw = await reply.read()
            data = json.loads(raw)
            if reply.status != 200 or "code" not in data:
                headers = None
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            headers = None
        delay = own or pace.interval
        if pace.jitter:
            delay *= 1.0 + pace.jitter * (2.0 * rng.random() - 1.0)


async def _commands(pace: _Pace, stop: asyncio.Event) -> None:
    async for words in stdin_commands():
        if len(words) == 2 and words[0] == "interval":
            pace.set(float(words[1]))
            sys.stdout.write(f"interval {float(words[1])}\n")
            sys.stdout.flush()
    stop.set()


async def _main(config: dict[str, Any]) -> None:
    context = ssl.create_default_context(cafile=config["ca_file"])
    servers = config["servers"]
    connector = aiohttp.TCPConnector(
        limit=max(100, 2 * len(servers)),
        limit_per_host=4,
        keepalive_timeout=_KEEPALIVE,
    )
    rng = random.Random(1)
    pace = _Pace(float(config["interval"]), float(config.get("jitter", 0.0)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=float(config.get("timeout", 10.0))),
    ) as session:
        tasks = [
            asyncio.create_task(_watch(session, server, context, config, pace, rng))
            for server in servers
        ]
        commands = asyncio.create_task(_commands(pace, stop))
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await stop.wait()
        for task in [*tasks, commands]:
            task.cancel()
        await asyncio.gather(*tasks, commands, return_exceptions=True)


def main() -> None:
    """Parse the arguments and poll until SIGTERM or end of input."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("servers", type=Path)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        importlib.import_module("uvloop").install()
    asyncio.run(_main(json.loads(args.servers.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
