"""/metrics and /status of a cluster node: lease counters, and who polls each server."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from watcher.leasing import ClusterStats
from watcher.service import Snapshot, render_metrics, status_document
from watcher.tracker import ServerState

STATS = ClusterStats(
    node="node-a",
    leases_held=7,
    takeovers=2,
    handoffs=3,
    released=1,
    leases_lost=1,
    store_failures=1,
    store_up=True,
    fenced_writes=4,
)


def samples(snapshot: Snapshot) -> dict[str, float]:
    """Every sample of the rendered text format, by name (labels dropped)."""
    text = render_metrics(snapshot).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_cluster_node_exports_its_lease_counters() -> None:
    """Leases held, takeovers, hand-offs, losses, fenced writes and store health."""
    got = samples(Snapshot(version="1", states={}, stats={}, cluster=STATS))
    assert got["sklm_watcher_cluster_node_info"] == 1
    assert got["sklm_watcher_cluster_leases_held"] == 7
    assert got["sklm_watcher_cluster_takeovers_total"] == 2
    assert got["sklm_watcher_cluster_handoffs_total"] == 3
    assert got["sklm_watcher_cluster_leases_released_total"] == 1
    assert got["sklm_watcher_cluster_leases_lost_total"] == 1
    assert got["sklm_watcher_cluster_fenced_writes_total"] == 4
    assert got["sklm_watcher_cluster_store_failures_total"] == 1
    assert got["sklm_watcher_cluster_store_up"] == 1


def test_a_single_node_exports_no_cluster_metrics() -> None:
    """Without a cluster nothing changes: no cluster_* series."""
    got = samples(Snapshot(version="1", states={}, stats={}))
    assert not [name for name in got if "cluster" in name]


def test_status_names_the_node_polling_each_server_in_a_cluster() -> None:
    """``/status`` servers carry ``node`` on a cluster node, and only there."""
    states = {"s1": ServerState()}
    doc = status_document(Snapshot(version="1", states=states, stats={}, cluster=STATS))
    assert doc["servers"][0]["node"] == "node-a"
    single = status_document(Snapshot(version="1", states=states, stats={}))
    assert "node" not in single["servers"][0]
