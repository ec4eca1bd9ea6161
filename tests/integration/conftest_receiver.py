"""A real HTTP receiver on 127.0.0.1 for sink and dispatcher tests.

Their clock is ``tests.clock.VirtualClock``.

``Receiver`` records every POST and answers from a script (status, headers), can hang
(never answer) and can be taken down (not listening) and brought back on its port.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
from aiohttp import web

#: The path the receiver's URL points at; its last part stands for a secret token.
HOOK_PATH = "/hooks/T0KEN-53cr3t"


@dataclass(frozen=True, slots=True)
class Received:
    """One POST as the receiver saw it."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    at: datetime

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]


class Receiver:
    """An ``aiohttp.web`` server on 127.0.0.1 (port 0 at first, then kept)."""

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.requests: list[Received] = []
        self.port = 0
        self.hang = False
        #: Stamps each request's ``at`` (a virtual clock's ``now`` in some tests).
        self.now = now
        self._script: deque[_Answer] = deque()
        self._default = _Answer(200, {})
        self._runner: web.AppRunner | None = None
        self._arrived = anyio.Event()
        self._release = anyio.Event()

    def url(self, path: str = HOOK_PATH) -> str:
        """The receiver's URL (valid while it is up, and again after ``start``)."""
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(
        self, status: int, headers: Mapping[str, str] | None = None, *, times: int = 1
    ) -> None:
        """Answer the next ``times`` POSTs with ``status`` (then the default)."""
        self._script.extend([_Answer(status, dict(headers or {}))] * times)

    def always(self, status: int, headers: Mapping[str, str] | None = None) -> None:
        """Answer every POST after the script with ``status``."""
        self._default = _Answer(status, dict(headers or {}))

    async def start(self) -> None:
        """Listen (again) on 127.0.0.1, on the same port as before if there was one."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._runner = runner
        self._release = anyio.Event()
        if self.port == 0:
            self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening (hung requests end): connections are refused until ``start``."""
        self._release.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def wait_for(self, count: int) -> list[Received]:
        """Wait (at most 10 s) until ``count`` POSTs arrived; return them all."""
        with anyio.fail_after(10):
            while len(self.requests) < count:
                arrived = self._arrived
                await arrived.wait()
        return list(self.requests)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Received(request.path, dict(request.headers), body, self.now())
        )
        arrived, self._arrived = self._arrived, anyio.Event()
        arrived.set()
        if self.hang:
            await self._release.wait()
        answer = self._script.popleft() if self._script else self._default
        return web.Response(status=answer.status, headers=answer.headers, text="ok")

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
