"""The words an operator reads about a cluster: check-config's summary, the owner line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from watcher.config import Config, Secret, ServerConfig, WatcherSettings
from watcher.store.base import Lease, NodeRow
from watcher.views import cluster_view

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _node(name: str, *, alive: bool, left: bool = False) -> NodeRow:
    return NodeRow(
        name=name,
        version="0.1.0",
        host="h",
        pid=1,
        started_at=NOW - timedelta(hours=1),
        heartbeat_at=NOW - timedelta(seconds=1 if alive else 60),
        alive=alive,
        leases=0,
        left_at=NOW - timedelta(seconds=30) if left else None,
    )


def _server(name: str) -> ServerConfig:
    return ServerConfig(name=name, url="https://sklm.example:9443", username="u")


def test_summary_names_the_cluster_store_not_the_state_dir() -> None:
    """check-config's summary: where state lives, never the URL."""
    settings = WatcherSettings(
        store_url=Secret("postgresql://u:pw@db/x"), node_name="watcher-a", lease=5.0
    )
    summary = Config(watcher=settings, servers=(_server("s1"),)).summary()
    assert summary == (
        "1 server, no sinks; state in the cluster store (node watcher-a, lease 5 s)"
    )
    assert "pw" not in summary


def test_owner_line_says_nobody_polls_when_no_node_is_alive() -> None:
    """No live node: no promise of a takeover."""
    nodes = [_node("a", alive=False, left=True), _node("b", alive=False)]
    view = cluster_view(nodes, [], ["s1", "s2"], NOW)
    assert view.owner_line() == (
        "2 of 2 servers have no live owner (no node is alive: nobody polls them "
        "until one starts): s1, s2"
    )


def test_owner_line_promises_a_takeover_while_a_node_lives() -> None:
    """A live node takes unowned servers over within one lease."""
    nodes = [_node("a", alive=True), _node("b", alive=False)]
    leases = [Lease("s1", "a", 3, NOW + timedelta(seconds=5))]
    view = cluster_view(nodes, leases, ["s1", "s2"], NOW)
    assert view.owner_line() == (
        "1 of 2 servers has no live owner (a live node takes them over within one "
        "lease): s2"
    )
