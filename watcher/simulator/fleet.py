"""The fleet: every server of a scenario on loopback, and the ground truth they write.

Ground truth (``ground_truth=PATH``): one JSON object per line, flushed per line, at the
true transition time: ``{"at", "server", "kind", "restore", ...}`` with ``kind``
``phase`` (``phase``, ``code``), ``completed`` (when COMPLETED is entered), ``failed``
(when it drops back to IDLE, or a restart interrupts it; ``phase`` is the last phase),
``stalled`` (when the phase that never ends is entered), ``restart_begin`` (``down``,
``starting``, ``manual``) and ``restart_end`` (when it answers normally again).
``restore`` counts the server's restores from 0 (null before the first).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any, Self

from watcher.simulator.scenario import Scenario
from watcher.simulator.server import SimulatedServer


class Simulator:
    """Every server of a scenario, listening on loopback; an async context manager.

    ``urls`` maps each server name to its ``scheme://host:port``; ``truth`` holds the
    ground-truth lines written so far (also appended to ``ground_truth`` if given).
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        ground_truth: Path | None = None,
    ) -> None:
        self.scenario = scenario
        self.host = host
        self.ssl_context = ssl_context
        self.ground_truth = ground_truth
        self.truth: list[dict[str, Any]] = []
        self.urls: dict[str, str] = {}
        self.started_at = 0.0
        self._wall0 = datetime.now(UTC)
        self._truth_file: IO[str] | None = None
        self._truth_added = asyncio.Event()
        self._servers = {
            spec.name: SimulatedServer(
                spec, host=host, ssl_context=ssl_context, record=self._record
            )
            for spec in scenario.servers
        }

    @property
    def servers(self) -> Mapping[str, SimulatedServer]:
        """Every simulated server by name."""
        return MappingProxyType(self._servers)

    def server(self, name: str) -> SimulatedServer:
        """The simulated server called ``name``."""
        return self._servers[name]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind every port, then start every script at the same instant."""
        if self.ground_truth is not None:
            self._truth_file = _open_append(self.ground_truth)
        try:
            for server in self._servers.values():
                await server.listen()
        except BaseException:
            await self.close()
            raise
        self.urls = {name: server.url for name, server in self._servers.items()}
        self.started_at = time.monotonic()
        self._wall0 = datetime.now(UTC)
        for server in self._servers.values():
            await server.start(self.started_at)

    async def close(self) -> None:
        """Stop every server and close the ground-truth file."""
        for server in self._servers.values():
            await server.close()
        if self._truth_file is not None:
            self._truth_file.close()
            self._truth_file = None

    def wall(self, monotonic: float) -> datetime:
        """The UTC instant of a monotonic reading (this process's clock pairing)."""
        return self._wall0 + timedelta(seconds=monotonic - self.started_at)

    async def wait_settled(self) -> None:
        """Wait until every server is IDLE forever or stalled forever."""
        for server in self._servers.values():
            await server.wait_settled()

    async def wait_truth(
        self,
        kind: str,
        *,
        server: str | None = None,
        restore: int | None = None,
        phase: str | None = None,
    ) -> dict[str, Any]:
        """Wait for (or find) the first ground-truth line matching every given field.

        Unbounded: wrap it in a timeout (``asyncio.timeout`` / ``anyio.fail_after``).
        """
        wanted = {"kind": kind, "server": server, "restore": restore, "phase": phase}
        seen = 0
        while True:
            for line in self.truth[seen:]:
                if all(v is None or line.get(k) == v for k, v in wanted.items()):
                    return line
            seen = len(self.truth)
            self._truth_added.clear()
            await self._truth_added.wait()

    def _record(self, server: str, at: float, fields: Mapping[str, Any]) -> None:
        line: dict[str, Any] = {
            "at": _iso_ms(self.wall(at)),
            "server": server,
            **fields,
        }
        self.truth.append(line)
        if self._truth_file is not None:
            self._truth_file.write(json.dumps(line) + "\n")
            self._truth_file.flush()
        self._truth_added.set()


def _iso_ms(at: datetime) -> str:
    """``2026-11-29T10:00:01.250Z``."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _open_append(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8")
