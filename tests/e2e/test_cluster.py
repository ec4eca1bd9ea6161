"""The cluster's fault runs (issue 13): real processes, one PostgreSQL store.

A simulator process with 20 servers and staggered scripted restores; three
``sklm-watcher run`` nodes with the same servers and store, ``lease = 2``, a webhook
and a Slack sink on loopback receivers. While the restores run: ``kill -9`` the node
polling a restoring server, ``SIGSTOP`` another past its lease and ``SIGCONT`` it
(it must say it lost its leases; its late write is refused when it makes one),
restart PostgreSQL (``-m immediate``), stop it until every node's ``/healthz`` says
the store is unreachable and one holds events for it, start it, add a node (checked
with ``cluster --json`` and ``status --json``), remove one (SIGTERM). Afterwards the
store's history equals the simulator's ground truth for every restore, no event id is
in it twice, ``audit verify`` accepts the store's chain and its ``audit export``, the
webhook receiver got every event and the Slack receiver no message twice but around
a crash of the node that sent it (each node posts to its own path, so the sender of
every copy is known; the count is printed).

The same harness runs first against the single-node daemon (SQLite): the checks
hold there, so a failure in the cluster run is the cluster's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.pgserver import USER, PostgresServer

from .cluster_harness import (
    EXE,
    Forwarder,
    Intervals,
    Node,
    Partitionable,
    Post,
    Recorder,
    ScriptedServer,
    Simulation,
    cli,
    held_by,
    history_problems,
    leases,
    outcomes_recorded,
    shares,
    sink_lease_holders,
    slack_keys,
    staggered_fleet,
    start_node,
    start_simulation,
    store_events,
    wait_for,
    wait_value,
)

pytestmark = pytest.mark.e2e

LEASE = 2.0
#: Seconds from the simulator's start to the first scripted restore: the nodes must
#: be polling by then (a restore already running at a node's start is recorded from
#: the phase it first sees, not from INITIALIZE as the ground truth has it).
FIRST_SINGLE = 6.0
FIRST_CLUSTER = 10.0
INTERVALS = Intervals(idle=1.0, active=0.2)
#: Phases with at least ~2.5 s of the restore still ahead: a fault lands mid-restore.
EARLY = {"INITIALIZE", "CREATE_TEMP_DIR", "RESTORE_CONFIG_FILES"}
#: How long after a crash-like fault a Slack message may arrive a second time: the
#: claim of the node that died (or lost the store) mid-delivery expires after a
#: lease, then another node resends.
CRASH_WINDOW = 2.0 * LEASE + 3.0


def assert_before_the_first_restore(sim: Simulation, first: float) -> None:
    """The nodes are up before the scripted restores begin (else the run proves nothing)."""
    late = time.monotonic() - sim.started
    assert late < first, (
        f"the nodes took {late:.1f} s to start, the first restore began at {first} s: "
        "the machine is too loaded for this run"
    )


def restoring(sim: Simulation, phases: set[str] = EARLY) -> list[str]:
    """Servers whose scripted restore is, right now, in one of ``phases``."""
    last: dict[str, Mapping[str, Any]] = {}
    for line in sim.truth():
        last[str(line["server"])] = line
    return sorted(
        server
        for server, line in last.items()
        if line["kind"] == "phase" and line.get("phase") in phases
    )


@dataclass(frozen=True, slots=True)
class Crash:
    """A crash-like fault: what, the node it hit (None: the store), when."""

    what: str
    node: str | None
    started: float
    ended: float


@dataclass
class Faults:
    """What the run did and when (``time.monotonic()``), for the Slack check and the report."""

    crashes: list[Crash] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def crash(self, what: str, node: str | None, started: float) -> None:
        """Note a crash-like fault from ``started`` to now (a delivery it cut short
        may be repeated); ``node`` None: the store's, any node may have been cut."""
        self.crashes.append(Crash(what, node, started, time.monotonic()))

    def explain(self, senders: set[str], first_at: float) -> str | None:
        """The fault that explains a message sent twice (by ``senders``), or None.

        The first copy arrived from shortly before the fault to a claim's expiry
        after it, and one of the copies came from the node the fault hit.
        """
        for crash in self.crashes:
            hit = crash.node is None or crash.node in senders
            if hit and crash.started - 2.0 <= first_at <= crash.ended + CRASH_WINDOW:
                return crash.what
        return None

    def note(self, text: str) -> None:
        """Note what happened (printed at the end: the closing note's material)."""
        self.notes.append(text)
        sys.stdout.write(f"[fault run] {text}\n")


def owner_of_a_restore(
    store_url: str, sim: Simulation, among: Sequence[str]
) -> tuple[str, str] | None:
    """(server, node): a server mid-restore whose live lease one of ``among`` holds."""
    held = leases(store_url)
    for server in restoring(sim):
        row = held.get(server)
        if row is not None and row.live and row.node in among:
            return server, row.node
    return None


def all_held_by(store_url: str, nodes: Sequence[str], servers: Sequence[str]) -> bool:
    """Every one of ``servers`` has a live lease held by one of ``nodes``."""
    rows = leases(store_url)
    return all(s in rows and rows[s].live and rows[s].node in nodes for s in servers)


def fair(store_url: str, nodes: Sequence[str], total: int) -> bool:
    """Every server held by a live one of ``nodes``, each holding its fair share give
    or take one (a node keeps one above its share rather than hand over a server
    mid-restore)."""
    holding = held_by(store_url)
    counts = [len(holding.get(n, ())) for n in nodes]
    low, high = total // len(nodes), -(-total // len(nodes))
    return sum(counts) == total and all(low - 1 <= c <= high + 1 for c in counts)


def fencing_evidence(node: Node) -> list[str]:
    """The node's own word that it lost leases / had writes refused: its lease
    counters on ``/metrics`` and its ``lease.lost`` / ``lease.fenced`` log lines."""
    found = [
        f"{name} = {value:g}"
        for name, value in node.metrics().items()
        if value > 0
        and name.startswith(
            ("sklm_watcher_cluster_leases_lost", "sklm_watcher_cluster_fenced_writes")
        )
    ]
    found += [
        f"log {entry['event']} {entry.get('server', '')}".strip()
        for entry in node.logs()
        if entry.get("event") in ("lease.lost", "lease.fenced")
    ]
    return found


def store_down_reasons(nodes: Sequence[Node]) -> dict[str, str] | None:
    """Each node's ``/healthz`` body when every one answers 503 naming the store."""
    answers = {n.name: n.get("/healthz") for n in nodes}
    if all(code == 503 and "store" in body for code, body in answers.values()):
        return {name: body.strip() for name, (_, body) in answers.items()}
    return None


def events_waiting(nodes: Sequence[Node]) -> dict[str, int]:
    """The nodes whose ``/healthz`` says events wait for the store, with how many."""
    found = {}
    for node in nodes:
        code, body = node.get("/healthz")
        match = re.search(r"\((\d+) events? waiting", body)
        if code == 503 and match and int(match[1]) > 0:
            found[node.name] = int(match[1])
    return found


class HealthWatch:
    """Polls every node's ``/healthz`` in a thread; remembers each status it saw."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.seen: dict[str, Counter[int]] = {n.name: Counter() for n in nodes}
        self._nodes = list(nodes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self._nodes:
                status, _ = node.get("/healthz", timeout=1.0)
                self.seen[node.name][status] += 1
            self._stop.wait(0.1)


def assert_operators_see_the_cluster(
    nodes: Mapping[str, Node],
    members: Sequence[str],
    store_url: str,
    servers: Sequence[str],
) -> None:
    """``cluster --json`` and ``status --json`` agree with the processes and the leases."""
    done = cli(nodes[members[-1]], "cluster", "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    rows = {n["name"]: n for n in view["nodes"]}
    assert {n for n, r in rows.items() if r["alive"]} == set(members), rows
    assert {n: rows[n]["pid"] for n in members} == {
        n: nodes[n].process.pid for n in members
    }
    assert {n: rows[n]["leases"] for n in members} == {
        n: len(held_by(store_url).get(n, ())) for n in members
    }
    assert view["without_owner"] == []
    done = cli(nodes[members[0]], "status", "--json")
    assert done.returncode == 0, done.stderr
    owners = {r["server"]: r["node"] for r in json.loads(done.stdout)}
    holders = {s: row.node for s, row in leases(store_url).items() if row.live}
    assert owners == {s: holders.get(s) for s in servers}


def assert_one_audit_chain(
    node: Node, history: Sequence[Mapping[str, Any]], tmp_path: Path
) -> None:
    """``audit verify`` checks the store's chain; ``audit export`` gives one line per event,
    which ``audit verify FILE`` accepts."""
    verified = cli(node, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = tmp_path / "audit-export.jsonl"
    done = cli(node, "audit", "export", "-o", str(exported))
    assert done.returncode == 0, done.stderr
    lines = [
        json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(line["id"] for line in lines) == sorted(str(e["id"]) for e in history)
    assert [line["auditseq"] for line in lines] == list(range(1, len(lines) + 1))
    checked = subprocess.run(
        [*EXE, "audit", "verify", str(exported)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def check_deliveries(
    events: Sequence[Mapping[str, Any]], recorder: Recorder, faults: Faults
) -> tuple[int, list[str]]:
    """Webhook: every event at least once. Slack: every outcome once, except repeats
    whose first copy arrived shortly before a crash-like fault. Returns (repeats, problems)."""
    problems: list[str] = []
    hooked = {p.headers.get("webhook-id") for p in recorder.received("/hook/")}
    missing = sorted(str(e["id"]) for e in events if str(e["id"]) not in hooked)
    if missing:
        problems.append(
            f"{len(missing)} events never reached the webhook: {missing[:5]}"
        )
    slack: list[Post] = recorder.received("/slack/")
    keys = slack_keys(slack)
    outcomes = [
        e
        for e in events
        if e["type"] in ("sklm.restore.completed", "sklm.restore.failed")
    ]
    if len(set(keys)) != len(outcomes):
        problems.append(
            f"Slack got {len(set(keys))} distinct messages for {len(outcomes)} outcomes"
        )
    first: dict[str, Post] = {}
    repeats = 0
    for post, key in zip(slack, keys, strict=True):
        if key not in first:
            first[key] = post
            continue
        repeats += 1
        # Each node posts to its own path (/slack/<node>): who sent each copy.
        senders = {first[key].path.rsplit("/", 1)[-1], post.path.rsplit("/", 1)[-1]}
        why = faults.explain(senders, first[key].at)
        if why is None:
            problems.append(
                f"Slack got a message twice ({sorted(senders)}) with no crash of "
                f"its sender around it: {key[:80]}"
            )
        else:
            faults.note(f"Slack message repeated by {sorted(senders)} after {why}")
    return repeats, problems


def run_to_the_end(
    sim: Simulation,
    nodes: Callable[[], Sequence[Node]],
    servers: Sequence[ScriptedServer],
    recorder: Recorder,
    *,
    timeout: float,
) -> list[dict[str, Any]]:
    """Wait until every scripted restore's end is in the store and every event was
    delivered to the webhook; return the store's history."""
    reader = nodes()[0]
    history: list[dict[str, Any]] = []

    def done() -> bool:
        nonlocal history
        history = store_events(reader, required=False)
        if not outcomes_recorded(history, servers):
            return False
        hooked = {p.headers.get("webhook-id") for p in recorder.received("/hook/")}
        outcomes = sum(
            1
            for e in history
            if e["type"] in ("sklm.restore.completed", "sklm.restore.failed")
        )
        return {str(e["id"]) for e in history} <= hooked and len(
            set(slack_keys(recorder.received("/slack/")))
        ) >= outcomes

    wait_for(
        done,
        timeout=timeout,
        what="every restore's end recorded and delivered",
        every=0.5,
    )
    return history


def test_single_node_daemon_passes_the_same_checks(tmp_path: Path) -> None:
    """The harness's baseline: one SQLite daemon, a smaller staggered fleet."""
    servers = staggered_fleet(5, first=FIRST_SINGLE, every=1.0, idle=[2], fail_every=4)
    recorder = Recorder().start()
    sim = start_simulation(tmp_path, servers)
    node = start_node(
        tmp_path,
        "single",
        urls=sim.urls,
        store_url=None,
        intervals=INTERVALS,
        webhook=recorder.url("/hook/single"),
        slack=recorder.url("/slack/single"),
    )
    try:
        wait_for(
            lambda: bool(node.port) or not node.process.alive(),
            timeout=FIRST_SINGLE,
            what="the daemon to start before the first scripted restore",
        )
        assert_before_the_first_restore(sim, FIRST_SINGLE)
        history = run_to_the_end(sim, lambda: [node], servers, recorder, timeout=60)
        assert node.process.stop() == 0, node.process.stderr()
        assert history_problems(store_events(node), sim.truth()) == []
        repeats, problems = check_deliveries(history, recorder, Faults())
        assert problems == []
        assert repeats == 0
        assert any(e["data"].get("inferred") for e in history), "nothing inferred"
    finally:
        node.process.stop()
        sim.process.stop()
        recorder.stop()


# The scripted restores span ~50 s and each fault waits for its condition: more than
# the suite's 60 s per test, bounded all the same.
@pytest.mark.timeout(240)
def test_three_nodes_through_kill_stop_store_restart_join_and_leave(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Every fault of the issue in one run; the history equals the ground truth."""
    servers = staggered_fleet(20, first=FIRST_CLUSTER, every=1.8, idle=[4, 13])
    names = [s.name for s in servers]
    store_url = postgres_server.create_database()
    recorder = Recorder().start()
    sim = start_simulation(tmp_path, servers)
    faults = Faults()
    nodes: dict[str, Node] = {}

    def start(name: str) -> Node:
        nodes[name] = start_node(
            tmp_path,
            name,
            urls=sim.urls,
            store_url=store_url,
            intervals=INTERVALS,
            lease=LEASE,
            webhook=recorder.url(f"/hook/{name}"),
            slack=recorder.url(f"/slack/{name}"),
        )
        return nodes[name]

    def live() -> list[str]:
        return [n for n, node in nodes.items() if node.process.alive()]

    try:
        for name in ("node-1", "node-2", "node-3"):
            start(name)
        wait_for(
            lambda: fair(store_url, ["node-1", "node-2", "node-3"], len(names)),
            timeout=40,
            what="three nodes sharing the 20 servers' leases fairly",
        )
        assert_before_the_first_restore(sim, FIRST_CLUSTER)
        faults.note(f"start: {shares(store_url)}")

        # 1. kill -9 the node polling a server mid-restore.
        server, victim = wait_value(
            lambda: owner_of_a_restore(store_url, sim, live()),
            timeout=40,
            what="a server mid-restore",
        )
        lost = sorted(held_by(store_url).get(victim, ()))
        chat = sink_lease_holders(store_url)
        killed_at = time.monotonic()
        nodes[victim].process.signal(signal.SIGKILL)
        nodes[victim].process.popen.wait(timeout=10)
        faults.crash(f"kill -9 {victim}", victim, killed_at)
        survivors = live()
        wait_for(
            lambda: all_held_by(store_url, survivors, lost),
            timeout=4 * LEASE + 10,
            what=f"{victim}'s {len(lost)} servers taken over",
        )
        faults.note(
            f"kill -9 {victim} while {server} restored ({len(lost)} servers, sink leases "
            f"{chat}): all taken over after {time.monotonic() - killed_at:.1f} s"
        )

        # 2. SIGSTOP another node that polls a restoring server, past its lease.
        server, paused = wait_value(
            lambda: owner_of_a_restore(store_url, sim, survivors),
            timeout=40,
            what="a server mid-restore on a survivor",
        )
        frozen = sorted(held_by(store_url).get(paused, ()))
        others = [n for n in survivors if n != paused]
        phase_before = {
            line["phase"]
            for line in sim.truth()
            if line["server"] == server and line["kind"] == "phase"
        }
        nodes[paused].process.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_for(
            lambda: all_held_by(store_url, others, frozen),
            timeout=4 * LEASE + 10,
            what=f"{paused}'s servers taken over while it is stopped",
        )
        # Something changed on its restoring server since: its late view is stale.
        wait_for(
            lambda: (
                {
                    line["phase"]
                    for line in sim.truth()
                    if line["server"] == server and line["kind"] == "phase"
                }
                != phase_before
            ),
            timeout=20,
            what=f"{server} to move on while {paused} is stopped",
        )
        nodes[paused].process.signal(signal.SIGCONT)
        faults.crash(f"SIGSTOP {paused}", paused, stopped_at)
        faults.note(
            f"SIGSTOP {paused} for {time.monotonic() - stopped_at:.1f} s (lease {LEASE} s) "
            f"while {server} restored; its {len(frozen)} servers taken over; SIGCONT"
        )
        evidence = wait_value(
            lambda: fencing_evidence(nodes[paused]) or None,
            timeout=15,
            what=f"{paused} to report its lost leases / refused writes",
        )
        faults.note(f"{paused} after SIGCONT: {sorted(set(evidence))}")
        wait_for(
            lambda: fair(store_url, survivors, len(names)),
            timeout=30,
            what="the two survivors sharing fairly again",
        )

        # 3. PostgreSQL restarts (like a crash) mid-run.
        wait_for(lambda: bool(restoring(sim)), timeout=40, what="a restore in progress")
        with HealthWatch([nodes[n] for n in survivors]) as health:
            restart_at = time.monotonic()
            postgres_server.restart(mode="immediate")
            faults.crash("PostgreSQL restart -m immediate", None, restart_at)
            faults.note("PostgreSQL restarted (-m immediate)")
            wait_for(
                lambda: all(nodes[n].get("/healthz")[0] == 200 for n in survivors),
                timeout=40,
                what="every node healthy again after the store came back",
            )
        faults.note(
            f"/healthz statuses seen around the restart: { {n: dict(c) for n, c in health.seen.items()} }"
        )
        assert all(nodes[n].process.alive() for n in survivors)

        # 3b. A longer outage: PostgreSQL down until every node says so, while the
        # restores go on (their events wait in the nodes' queues).
        wait_for(lambda: bool(restoring(sim)), timeout=40, what="a restore in progress")
        outage_at = time.monotonic()
        postgres_server.pg_ctl("stop", mode="immediate")
        try:
            reasons = wait_value(
                lambda: store_down_reasons([nodes[n] for n in survivors]),
                timeout=20,
                what="every node's /healthz saying the store is unreachable",
            )
            waiting = wait_value(
                lambda: events_waiting([nodes[n] for n in survivors]) or None,
                timeout=30,
                what="a node holding events for the store while it is down",
            )
        finally:
            postgres_server.pg_ctl("start")
        faults.crash("PostgreSQL down", None, outage_at)
        wait_for(
            lambda: all(nodes[n].get("/healthz")[0] == 200 for n in survivors),
            timeout=40,
            what="every node healthy again after the outage",
        )
        faults.note(
            f"PostgreSQL stopped for {time.monotonic() - outage_at:.1f} s: {reasons}; "
            f"then events waiting in memory: {waiting}"
        )

        # 4. A node joins and takes its share; 5. one leaves (SIGTERM) and gives it up.
        start("node-4")
        members = [*survivors, "node-4"]
        wait_for(
            lambda: fair(store_url, members, len(names)),
            timeout=40,
            what="node-4 taking its share",
        )
        faults.note(f"node-4 joined: {shares(store_url)}")
        assert_operators_see_the_cluster(nodes, members, store_url, names)
        leaving = next(n for n in survivors if n != paused)
        given = sorted(held_by(store_url).get(leaving, ()))
        nodes[leaving].process.signal(signal.SIGTERM)
        left_at = time.monotonic()
        assert nodes[leaving].process.popen.wait(timeout=20) == 0, nodes[
            leaving
        ].process.stderr()
        remaining = [n for n in members if n != leaving]
        wait_for(
            lambda: all_held_by(store_url, remaining, given),
            timeout=4 * LEASE + 10,
            what=f"{leaving}'s servers taken over after it left",
        )
        faults.note(
            f"SIGTERM {leaving}: exit 0, its {len(given)} servers taken over after {time.monotonic() - left_at:.1f} s"
        )

        history = run_to_the_end(
            sim, lambda: [nodes[n] for n in remaining], servers, recorder, timeout=120
        )
        for name in remaining:
            assert nodes[name].process.stop() == 0, nodes[name].process.stderr()
        history = store_events(nodes[remaining[0]])
        assert history_problems(history, sim.truth()) == []
        assert_one_audit_chain(nodes[remaining[0]], history, tmp_path)
        repeats, problems = check_deliveries(history, recorder, faults)
        faults.note(
            f"{len(history)} events in the store, {len(recorder.received('/hook/'))} webhook POSTs "
            f"for them, {len(recorder.received('/slack/'))} Slack messages, {repeats} repeated "
            "around a crash"
        )
        assert problems == []
        inferred = sum(1 for e in history if e["data"].get("inferred"))
        faults.note(f"{inferred} phases inferred, every one of them marked")
    finally:
        for node in nodes.values():
            node.process.stop()
        sim.process.stop()
        recorder.stop()


def partitionable() -> Partitionable:
    """A network namespace for the partition run, or skip where none can be made."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root")
    try:
        return Partitionable.create(os.getpid() % 10000)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no network namespace here: {exc}")


@pytest.mark.timeout(180)
def test_a_node_cut_off_from_the_store_is_fenced_when_the_partition_heals(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A partition between one node and PostgreSQL (the node inside a network
    namespace, its store connection through a veth pair whose far address is then
    removed: a black hole, no RST). It keeps polling while its leases expire and the
    other node takes its servers over; when the partition heals, its late writes are
    refused. The store's history still equals the ground truth."""
    net = partitionable()
    servers = staggered_fleet(6, first=FIRST_CLUSTER, every=1.5, idle=[], fail_every=0)
    store_url = postgres_server.create_database()
    database = store_url.rsplit("/", 1)[1]
    forwarder = Forwarder((net.store_address, 0), ("127.0.0.1", postgres_server.port))
    inside_url = f"postgresql://{USER}@{net.store_address}:{forwarder.port}/{database}"
    recorder = Recorder(host=net.host).start()
    nodes: dict[str, Node] = {}
    sim: Simulation | None = None
    try:
        sim = start_simulation(tmp_path, servers, host=net.host)
        for name, url, launcher in (
            ("inside", inside_url, net.launcher),
            ("outside", store_url, []),
        ):
            nodes[name] = start_node(
                tmp_path,
                name,
                urls=sim.urls,
                store_url=url,
                intervals=INTERVALS,
                lease=LEASE,
                webhook=recorder.url(f"/hook/{name}"),
                slack=recorder.url(f"/slack/{name}"),
                launcher=launcher,
            )
        names = [s.name for s in servers]
        wait_for(
            lambda: fair(store_url, ["inside", "outside"], len(names)),
            timeout=40,
            what="the two nodes sharing the leases",
        )
        assert_before_the_first_restore(sim, FIRST_CLUSTER)
        current = sim
        server, _ = wait_value(
            lambda: owner_of_a_restore(store_url, current, ["inside"]),
            timeout=40,
            what="a server mid-restore polled by the node inside",
        )
        theirs = sorted(held_by(store_url)["inside"])
        seen = {
            s: sum(1 for line in current.truth() if line["server"] == s) for s in theirs
        }
        net.cut()
        cut_at = time.monotonic()
        try:
            wait_for(
                lambda: all_held_by(store_url, ["outside"], theirs),
                timeout=4 * LEASE + 10,
                what="the other node taking the cut-off node's servers",
            )
            # A restore moved on where the cut-off node still polls: it holds
            # events it cannot write, for servers it no longer owns.
            wait_for(
                lambda: any(
                    sum(1 for line in current.truth() if line["server"] == s) > seen[s]
                    for s in theirs
                ),
                timeout=20,
                what="a restore moving on while the node is cut off",
            )
        finally:
            net.heal()
        # Deliveries the cut-off node made but could not mark may be repeated.
        faults = Faults()
        faults.crash("the partition", "inside", cut_at)
        fenced = wait_value(
            lambda: (
                [
                    f"{e['event']} {e.get('server', '')}".strip()
                    for e in nodes["inside"].logs()
                    if e.get("event") in ("lease.fenced", "lease.lost")
                ]
                or None
            ),
            timeout=60,
            what="the cut-off node to learn it lost its leases",
        )
        sys.stdout.write(
            f"[partition] cut {time.monotonic() - cut_at:.1f} s while {server} restored; "
            f"inside after the heal: {fenced}\n"
        )
        history = run_to_the_end(
            sim, lambda: [nodes["outside"]], servers, recorder, timeout=90
        )
        for node in nodes.values():
            assert node.process.stop() == 0, node.process.stderr()
        history = store_events(nodes["outside"])
        assert history_problems(history, sim.truth()) == []
        repeats, problems = check_deliveries(history, recorder, Faults())
        sys.stdout.write(
            f"[partition] {len(history)} events, {repeats} Slack repeats\n"
        )
        assert problems == []
    finally:
        for node in nodes.values():
            node.process.stop()
        if sim is not None:
            sim.process.stop()
        recorder.stop()
        forwarder.close()
        net.remove()
