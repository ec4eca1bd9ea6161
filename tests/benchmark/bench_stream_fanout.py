"""The event stream's own CPU, isolated: 20 SSE readers against none (issue 14).

``python tests/benchmark/bench_stream_fanout.py [--clients 20] [--rate 50] [--seconds 10]``

One process: a real :class:`watcher.stream.EventStream` over an in-memory store (the
lines of a phase event), served by aiohttp on 127.0.0.1; ``curl -sN`` readers in
their own processes (so their CPU is not counted); events appended and notified at a
fixed rate. The figure is this process's CPU (``getrusage``) over the window, with
the readers against without them: what the fleet benchmark's alternating windows try
to measure inside a busy daemon, without its noise.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiohttp import web

from tests.benchmark.common import say
from watcher.store.base import AuditLine
from watcher.stream import EventStream

LINE = (
    '{"specversion":"1.0","id":"%d","source":"sklm-watcher/busy-042",'
    '"type":"sklm.restore.phase","time":"2026-12-01T23:13:33.416Z",'
    '"subject":"busy-042","datacontenttype":"application/json","data":{"server":'
    '"busy-042","restore_id":"1aa9100c-5043-520b-ba1e-471a833c773c","phase":'
    '"RESTORE_KEYSTORES","code":4,"previous_phase":"RESTORE_CONFIG_FILES",'
    '"inferred":false},"auditseq":%d,"prevhash":"%s"}'
)


class MemoryStore:
    """``events_since`` over a list, ``call`` inline (no journal, no thread)."""

    def __init__(self) -> None:
        self.lines: list[AuditLine] = []

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` here."""
        return fn(*args)

    def events_since(self, after: int, limit: int) -> list[AuditLine]:
        """The lines after ``after`` (auditseq = index + 1)."""
        return self.lines[after : after + limit]


def cpu() -> float:
    """This process's CPU seconds (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def window(clients: int, seconds: float, rate: float) -> tuple[int, float]:
    """Events sent and this process's share of a core with ``clients`` readers."""
    store = MemoryStore()
    stream = EventStream(store)  # type: ignore[arg-type]
    pump = asyncio.create_task(stream.run())
    app = web.Application()

    async def serve(request: web.Request) -> web.StreamResponse:
        return await stream.serve(request, after=None)

    app.router.add_get("/stream", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    curl = shutil.which("curl") or "curl"
    url = f"http://127.0.0.1:{port}/stream"
    readers = [
        await asyncio.create_subprocess_exec(
            curl, "-sN", url, stdout=subprocess.DEVNULL
        )
        for _ in range(clients)
    ]
    try:
        # The stream has no "client connected" event to wait on; its count is read.
        while stream.clients < clients:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        before, started, sent = cpu(), time.monotonic(), 0
        while time.monotonic() - started < seconds:
            sent += 1
            store.lines.append(AuditLine(sent, LINE % (sent, sent, "0" * 64)))
            stream.notify()
            await asyncio.sleep(1 / rate)
        share = (cpu() - before) / (time.monotonic() - started)
    finally:
        for reader in readers:
            reader.terminate()
            await reader.wait()
        pump.cancel()
        await runner.cleanup()
    return sent, share


def main(argv: Sequence[str] | None = None) -> int:
    """Print the stream's CPU without and with the readers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    results = {}
    for clients in (0, args.clients):
        sent, share = asyncio.run(window(clients, args.seconds, args.rate))
        results[clients] = share
        say(f"{clients:3d} readers: {sent} events, CPU {share:.2%} of a core")
    extra = results[args.clients] - results[0]
    say(f"extra for {args.clients} readers: {extra:+.2%} of a core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
