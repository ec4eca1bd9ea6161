"""Every node of a cluster shows the whole fleet: ``/status`` and the live stream.

A node polls only the servers it holds, but an operator opens whichever node's page
is at hand: its ``/status`` lists every configured server with the node that polls
it, and its event stream carries events other nodes recorded. Two real daemons on
the run's PostgreSQL, the simulator on loopback, real HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from tests.integration.test_cluster_daemon import (
    BOUND,
    RESTORING,
    SERVERS,
    cluster,
    config,
    sim,
    wait_until,
)
from watcher.config import Listen
from watcher.simulator import Simulator

__all__ = ["sim"]  # the fixture, re-used


async def _status(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/status") as response,
    ):
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document


async def test_each_nodes_status_lists_every_server_with_its_poller(
    tmp_path: Path, sim: Simulator, pg_url: str
) -> None:
    """Both nodes answer for all six servers and agree on who polls which."""
    listen = Listen("127.0.0.1", 0)
    async with cluster() as start:
        a = start(config(tmp_path, sim, pg_url, "node-a", listen=listen))
        b = start(config(tmp_path, sim, pg_url, "node-b", listen=listen))
        await wait_until(
            lambda: (
                len(a.watching()) == len(b.watching()) == SERVERS // 2
                and a.daemon.listening is not None
                and b.daemon.listening is not None
            ),
            "an even split, both listening",
        )
        expected = dict.fromkeys(a.watching(), "node-a") | dict.fromkeys(
            b.watching(), "node-b"
        )
        assert a.daemon.listening is not None
        assert b.daemon.listening is not None
        ports = (a.daemon.listening[1], b.daemon.listening[1])
        seen: dict[int, dict[str, Any]] = {}

        async def agreed() -> bool:
            for port in ports:
                seen[port] = await _status(port)
            return all(
                {s["name"]: s["node"] for s in seen[p]["servers"]} == expected
                and all(s["last_ok_at"] for s in seen[p]["servers"])
                for p in ports
            )

        with anyio.fail_after(BOUND):
            # Polling: the condition is in two other processes' answers.
            while not await agreed():  # noqa: ASYNC110
                await anyio.sleep(0.2)
        for port in ports:
            names = [s["name"] for s in seen[port]["servers"]]
            assert names == sorted(sim.servers), "configuration order, every server"
        # The per-server metrics stay each node's own: one exporter per server.
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{ports[0]}/metrics") as response,
        ):
            metrics = await response.text()
        exported = {
            line.split('server="', 1)[1].split('"', 1)[0]
            for line in metrics.splitlines()
            if line.startswith("sklm_watcher_server_health{")
        }
        assert exported == a.watching()


async def test_a_nodes_stream_carries_the_events_another_node_recorded(
    tmp_path: Path, sim: Simulator, pg_url: str
) -> None:
    """A restore polled by node B shows up on node A's event stream within seconds."""
    listen = Listen("127.0.0.1", 0)
    async with cluster() as start:
        a = start(config(tmp_path, sim, pg_url, "node-a", listen=listen))
        b = start(config(tmp_path, sim, pg_url, "node-b", listen=listen))
        await wait_until(
            lambda: (
                len(a.watching()) == len(b.watching()) == SERVERS // 2
                and a.daemon.listening is not None
            ),
            "an even split, A listening",
        )
        # Watch on the node that does not poll the restoring server.
        viewer = b if RESTORING in a.watching() else a
        assert viewer.daemon.listening is not None
        port = viewer.daemon.listening[1]
        types: list[str] = []
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{port}/api/events/stream",
                timeout=aiohttp.ClientTimeout(total=None, sock_read=BOUND),
            ) as response,
        ):
            assert response.status == 200
            sim.server(RESTORING).start_restore()
            with anyio.fail_after(BOUND):
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    if event.get("subject") != RESTORING:
                        continue
                    types.append(event["type"])
                    if event["type"] == "sklm.restore.completed":
                        break
        assert types[0] == "sklm.restore.started"
        assert "sklm.restore.phase" in types
