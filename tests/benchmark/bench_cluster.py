"""Cluster benchmark of sklm-watcher (issue 13): three nodes on one PostgreSQL store.

``python tests/benchmark/bench_cluster.py [--quick]`` (with the project's venv Python).

A throwaway PostgreSQL server (``tests/pgserver.py``) in a temporary directory; the
benchmark's simulator (``tests/benchmark/simproc.py``: it stamps the arrival of every
progress GET per server) and real ``sklm-watcher run`` processes started with the
fault runs' harness (``tests/e2e/cluster_harness.py``). Two parts, each with a fresh
database:

- **steady**: 3 cluster nodes (``lease`` 15 s, the default) share N idle servers
  (``--servers``, 1,000; quick 300; idle_interval 5 s, quick 2 s) while, in the same
  run, one single-node daemon (SQLite) watches N / 3 other idle servers of the same
  simulator at the same interval: one cluster node's share. After every lease is held
  and two intervals of warm-up, one window (8 intervals; quick 5): each process's CPU
  time (``/proc``) and each server's polls (the simulator's arrivals). Figures: CPU
  per poll of the cluster nodes / of the single daemon; polls per server per
  interval: every gap between two polls of a server must be one interval (under half
  an interval: polled twice; over 1.5: missed).
- **takeover**: 3 nodes (``lease`` 2 s, active_interval 0.5 s), 90 servers (quick 45),
  every one in a restore from a scripted instant after the nodes share the leases.
  Two thirds (``T``) stay in RESTORE_DATABASES through the handover; one third
  (``C``) enter COMPLETED (which lasts 4 s before the restart) at instants spread
  from 0.5 s before the kill to lease + 1.5 s after it. At a scripted instant the node
  holding the most leases gets ``kill -9``. Figures: per ``T`` server the dead node
  held, its last poll before the kill -> the first poll after it (the new owner's),
  p99, with a breakdown (last poll -> kill, kill -> the survivor's ``lease.taken``
  log line, -> first poll); completion detection (the ground truth's COMPLETED ->
  the time of the ``sklm.restore.completed`` event in the store, i.e. the poll that
  saw it) p99 over the ``C`` servers the dead node held. Then PostgreSQL is restarted
  (``pg_ctl restart -m immediate``) while the ``T`` restores run; at the end the
  store's history is compared with the ground truth: events lost / duplicated.

Exit 0 when every goal passed (PASS), 1 when one was missed (MISS).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmark.common import percentile, say
from tests.e2e.cluster_harness import (
    Intervals,
    Node,
    ScriptedServer,
    Simulation,
    held_by,
    lost_and_duplicated,
    outcomes_recorded,
    parse_time,
    shares,
    start_node,
    start_simulation,
    store_events,
    wait_for,
)
from tests.pgserver import PostgresServer

_dumps = itertools.count(1)
#: How long the simulated servers stay in COMPLETED before their restart: longer than
#: a handover, so the new owner can see it (a COMPLETED that passes unseen while
#: nobody polls is inferred only when the server is back from its restart).
COMPLETED_SECONDS = 4.0


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the report: what, measured, the goal, passed or not."""

    name: str
    value: str
    goal: str
    passed: bool


def dump(sim: Simulation, directory: Path, label: str) -> dict[str, list[float]]:
    """The simulator's progress-GET arrivals per server since the last dump."""
    path = directory / f"arrivals-{label}-{next(_dumps)}.json"
    sim.command(f"dump {path}")
    wait_for(
        lambda: f"dumped {path}" in sim.process.stdout(),
        timeout=60,
        what=f"the simulator's dump {label}",
    )
    data: dict[str, list[float]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def start_cluster(
    work: Path, names: Sequence[str], urls: Mapping[str, str], store: str, **kw: Any
) -> dict[str, Node]:
    """Start one cluster node per name on the same servers and store."""
    return {n: start_node(work, n, urls=urls, store_url=store, **kw) for n in names}


def fair(store: str, nodes: Sequence[str], total: int) -> bool:
    """Every server held by a live one of ``nodes``, each holding its fair share give
    or take one (a node keeps one above its share rather than hand over a server
    mid-restore)."""
    holding = held_by(store)
    counts = [len(holding.get(n, ())) for n in nodes]
    low, high = total // len(nodes), -(-total // len(nodes))
    return sum(counts) == total and all(low - 1 <= c <= high + 1 for c in counts)


def steady(args: argparse.Namespace, pg: PostgresServer, work: Path) -> list[Figure]:
    """Part 1: CPU per poll against the single daemon; polls per server per interval."""
    n = args.servers
    single_n = math.ceil(n / 3)
    interval = args.idle
    fleet = [ScriptedServer(f"cs-{i:04d}", None) for i in range(n)]
    fleet += [ScriptedServer(f"ss-{i:04d}", None) for i in range(single_n)]
    work.mkdir(parents=True, exist_ok=True)
    sim = start_simulation(work, fleet, label="steady-sim", instrumented=True)
    cluster_urls = {k: v for k, v in sim.urls.items() if k.startswith("cs-")}
    single_urls = {k: v for k, v in sim.urls.items() if k.startswith("ss-")}
    store = pg.create_database("bench_steady")
    intervals = Intervals(idle=interval, active=1.0, timeout=5.0)
    names = ["node-1", "node-2", "node-3"]
    nodes = start_cluster(
        work, names, cluster_urls, store, intervals=intervals, lease=args.steady_lease
    )
    single = start_node(
        work, "single", urls=single_urls, store_url=None, intervals=intervals
    )
    processes = [*nodes.values(), single]
    try:
        wait_for(
            lambda: fair(store, names, n),
            timeout=180,
            what=f"three nodes sharing {n} leases",
            every=0.5,
        )
        say(f"steady: leases shared {shares(store)}; warming up {args.warm:.0f} s")
        time.sleep(args.warm)  # a measuring window's start, not a wait for a condition
        dump(sim, work, "warm")
        cpu0 = {p.name: p.process.cpu_seconds() for p in processes}
        t0 = time.monotonic()
        time.sleep(args.window)
        arrivals = dump(sim, work, "window")
        elapsed = time.monotonic() - t0
        cpu = {p.name: p.process.cpu_seconds() - cpu0[p.name] for p in processes}
        assert all(p.process.alive() for p in processes), "a node died"
    finally:
        for p in processes:
            p.process.stop()
        sim.command("quit")
        sim.process.stop()
    cluster_polls = sum(len(arrivals.get(s, ())) for s in cluster_urls)
    single_polls = sum(len(arrivals.get(s, ())) for s in single_urls)
    cluster_cpu = sum(cpu[nm] for nm in names)
    per_cluster = cluster_cpu / max(cluster_polls, 1)
    per_single = cpu["single"] / max(single_polls, 1)
    ratio = per_cluster / per_single if per_single else math.inf
    say(
        f"steady: {elapsed:.1f} s window; cluster {cluster_polls} polls, "
        f"{cluster_cpu:.2f} s CPU ({', '.join(f'{nm} {cpu[nm]:.2f}' for nm in names)}); "
        f"single {single_polls} polls, {cpu['single']:.2f} s CPU"
    )
    # One poll per interval: every gap between two polls of a server is about one
    # interval (the jitter only lengthens it, by up to 10 %); a gap under half an
    # interval is a second poller, one over 1.5 intervals a poll missed.
    doubled = missed = 0
    one = 0
    every_gap: list[float] = []
    for server in cluster_urls:
        times = sorted(arrivals.get(server, ()))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        every_gap += gaps
        doubled += sum(1 for g in gaps if g < 0.5 * interval)
        missed += sum(1 for g in gaps if g > 1.5 * interval) + (0 if times else 1)
        one += sum(1 for g in gaps if 0.5 * interval <= g <= 1.5 * interval)
    share = one / max(len(every_gap), 1)
    mean_gap = sum(every_gap) / max(len(every_gap), 1) / interval
    say(
        f"steady: {len(every_gap)} gaps between polls, mean {mean_gap:.3f} x "
        f"idle_interval; polls per server per interval over the window "
        f"{cluster_polls / len(cluster_urls) / (elapsed / interval):.3f}"
    )
    return [
        Figure(
            "CPU per poll, cluster node / single-node daemon, same run",
            f"{ratio:.2f} ({per_cluster * 1e3:.2f} / {per_single * 1e3:.2f} ms)",
            "<= 1.1",
            ratio <= 1.1,
        ),
        Figure(
            f"3 nodes, {n} servers: polls per server per interval",
            f"1 in {share:.2%} of {len(every_gap)} intervals; {doubled} doubled, "
            f"{missed} missed",
            "exactly 1",
            doubled == 0 and missed == 0 and one == len(every_gap) > 0,
        ),
    ]


def takeover(args: argparse.Namespace, pg: PostgresServer, work: Path) -> list[Figure]:
    """Part 2: kill -9 mid-restore, then a PostgreSQL restart; the store's history."""
    lease, active = args.lease, 0.5
    kill_at = args.kill_at
    # The restores begin once the nodes are up and share the leases (a restore
    # already running at a node's start is recorded from the phase it first sees).
    begin = kill_at - 10.0
    count = args.restoring
    fleet: list[ScriptedServer] = []
    completes: list[str] = []
    for i in range(count):
        name = f"tk-{i:03d}"
        if i % 3 == 2:
            # COMPLETED entered begin + 1.3 + database + 0.3 s after the start:
            # spread from half a second before the kill to lease + 1.5 s after it.
            k = i // 3
            span = lease + 2.0
            entered = kill_at - 0.5 + span * k / max(count // 3 - 1, 1)
            db = entered - begin - 1.6
            completes.append(name)
        else:
            # COMPLETED well after the handover and the PostgreSQL restart.
            db = kill_at + lease + 12.0 + 0.05 * i - begin - 1.6
        phases = (
            f"[[1, 0.3], [2, 0.3], [3, 0.3], [4, 0.4], [5, {db:.3f}], [6, 0.3], "
            f"[7, {COMPLETED_SECONDS}]]"
        )
        fleet.append(ScriptedServer(name, begin, "complete", phases))
    work.mkdir(parents=True, exist_ok=True)
    sim = start_simulation(work, fleet, label="takeover-sim", instrumented=True)
    store = pg.create_database("bench_takeover")
    intervals = Intervals(idle=2.0, active=active, timeout=3.0, restart=0.5)
    names = ["node-1", "node-2", "node-3"]
    nodes = start_cluster(
        work, names, sim.urls, store, intervals=intervals, lease=lease
    )
    try:
        wait_for(
            lambda: fair(store, names, count),
            timeout=max(begin - (time.monotonic() - sim.started), 1.0),
            what=f"three nodes sharing {count} leases before the scripted restores",
            every=0.2,
        )
        holding = held_by(store)
        victim = max(names, key=lambda nm: len(holding.get(nm, ())))
        theirs = sorted(holding[victim])
        # The kill is scripted against the simulator's timeline (the C completions
        # are spread around it): sleep until that instant.
        time.sleep(max(0.0, sim.started + kill_at - time.monotonic()))
        killed = time.monotonic()
        nodes[victim].process.signal(signal.SIGKILL)
        nodes[victim].process.popen.wait(timeout=10)
        # After the kill: a dump blocks the simulator for a moment, which must not
        # delay the dead node's last polls. Nobody else can poll its servers before
        # its leases expire, and only arrivals up to the kill count as its.
        before = dump(sim, work, "before-kill")
        # Wall clock minus monotonic: the nodes' log lines carry wall-clock times.
        offset = time.time() - killed
        survivors = [nm for nm in names if nm != victim]

        def taken() -> bool:
            holding = held_by(store)
            return set(theirs) <= set().union(
                *(holding.get(nm, set()) for nm in survivors)
            )

        wait_for(taken, timeout=8 * lease + 10, what=f"{victim}'s servers taken over")
        probes = [s for s in theirs if s not in completes]
        after: dict[str, list[float]] = {}

        def polled_again() -> bool:
            for server, times in dump(sim, work, "after-kill").items():
                after.setdefault(server, []).extend(times)
            return all(any(t > killed for t in after.get(s, ())) for s in probes)

        wait_for(
            polled_again, timeout=30, what="the new owners' first polls", every=0.3
        )
        say(f"takeover: kill -9 {victim} ({len(theirs)} servers); taken over")
        wait_for(
            lambda: _all_completed_seen(
                store_events(nodes[survivors[0]], required=False), completes
            ),
            timeout=60,
            what="every C restore's completion recorded",
        )
        pg.restart(mode="immediate")
        say("takeover: PostgreSQL restarted (-m immediate) while the T restores run")
        wait_for(
            lambda: outcomes_recorded(
                store_events(nodes[survivors[0]], required=False), fleet
            ),
            timeout=kill_at + lease + 60,
            what="every restore's end in the store",
            every=0.5,
        )
        for nm in survivors:
            nodes[nm].process.stop()
        history = store_events(nodes[survivors[0]])
        truth = sim.truth()
        taken_at = _taken_over_at([nodes[nm] for nm in survivors], offset)
    finally:
        for node in nodes.values():
            node.process.stop()
        sim.command("quit")
        sim.process.stop()
    gaps = []
    parts: list[tuple[float, float, float]] = []
    for server in probes:
        last = [t for t in before.get(server, ()) if t <= killed]
        first = [t for t in after.get(server, ()) if t > killed]
        if last and first:
            gaps.append(min(first) - max(last))
            if server in taken_at:
                parts.append(
                    (
                        killed - max(last),
                        taken_at[server] - killed,
                        min(first) - taken_at[server],
                    )
                )
        else:
            gaps.append(math.inf)
    if parts:
        say(
            "takeover: medians of last poll -> kill "
            f"{percentile([p[0] for p in parts], 50):.2f} s, kill -> lease.taken "
            f"{percentile([p[1] for p in parts], 50):.2f} s (max "
            f"{max(p[1] for p in parts):.2f}), lease.taken -> first poll "
            f"{percentile([p[2] for p in parts], 50):.2f} s (max "
            f"{max(p[2] for p in parts):.2f})"
        )
    detected = []
    completed_at = {
        str(line["server"]): parse_time(str(line["at"]))
        for line in truth
        if line["kind"] == "completed"
    }
    for event in history:
        server = str(event["data"]["server"])
        if (
            event["type"] == "sklm.restore.completed"
            and server in theirs
            and server in completes
        ):
            detected.append(
                (parse_time(str(event["time"])) - completed_at[server]).total_seconds()
            )
    lost, duplicated = lost_and_duplicated(history, truth)
    p99_gap = percentile(gaps, 99)
    p99_done = percentile(detected, 99)
    say(
        f"takeover: gaps {len(gaps)} servers, median {percentile(gaps, 50):.2f} s, "
        f"max {max(gaps):.2f} s; completions on the dead node's servers {len(detected)}, "
        f"detection {', '.join(f'{d:.2f}' for d in sorted(detected))} s"
    )
    return [
        Figure(
            "takeover after kill -9: last poll by the dead node -> first by the new owner, p99",
            f"{p99_gap:.2f} s ({len(gaps)} servers)",
            f"<= lease + active_interval = {lease + active:.1f} s",
            p99_gap <= lease + active,
        ),
        Figure(
            "completion detection p99 during a takeover",
            f"{p99_done:.2f} s ({len(detected)} restores)",
            f"<= lease + active_interval + 0.2 s = {lease + active + 0.2:.1f} s",
            bool(detected) and p99_done <= lease + active + 0.2,
        ),
        Figure(
            "events lost / duplicated in the store (kill -9, PostgreSQL restart)",
            f"{lost} / {duplicated} ({len(history)} events)",
            "0 / 0",
            lost == 0 and duplicated == 0,
        ),
    ]


def _taken_over_at(nodes: Sequence[Node], offset: float) -> dict[str, float]:
    """server -> when (monotonic) a survivor logged taking it over (``lease.taken``)."""
    out: dict[str, float] = {}
    for node in nodes:
        for entry in node.logs():
            if entry.get("event") != "lease.taken":
                continue
            at = parse_time(str(entry["timestamp"])).timestamp() - offset
            for server in entry.get("taken_over", []):
                out.setdefault(str(server), at)
    return out


def _all_completed_seen(
    history: Sequence[Mapping[str, Any]], servers: Sequence[str]
) -> bool:
    done = {
        str(e["data"]["server"])
        for e in history
        if e["type"] == "sklm.restore.completed"
    }
    return set(servers) <= done


def main() -> int:
    """Run both parts; print the figures with their goals; 0 when all passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< ~2 min)")
    parser.add_argument("--servers", type=int, help="steady part: cluster servers")
    parser.add_argument("--restoring", type=int, help="takeover part: servers")
    parser.add_argument("--idle", type=float, help="steady part: idle_interval")
    parser.add_argument(
        "--lease", type=float, default=2.0, help="takeover part: lease seconds"
    )
    parser.add_argument(
        "--steady-lease",
        type=float,
        default=15.0,
        help="steady part: lease seconds (default: the configuration's default)",
    )
    parser.add_argument("--keep", type=Path, help="keep the work files here")
    args = parser.parse_args()
    args.servers = args.servers or (300 if args.quick else 1000)
    args.restoring = args.restoring or (45 if args.quick else 90)
    args.idle = args.idle or (2.0 if args.quick else 5.0)
    args.warm = 2 * args.idle
    args.window = (5 if args.quick else 8) * args.idle
    args.kill_at = 30.0 if args.quick else 35.0
    work = (
        Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        if args.keep is None
        else args.keep
    )
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with PostgresServer.start(work / "postgres") as pg:
            figures = steady(args, pg, work / "steady")
            figures += takeover(args, pg, work / "takeover")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    say()
    say(
        f"### sklm-watcher cluster benchmark, {'quick' if args.quick else 'full'}, "
        f"{time.monotonic() - started:.0f} s"
    )
    say()
    say("| figure | measured | goal | |")
    say("| --- | --- | --- | --- |")
    for f in figures:
        say(f"| {f.name} | {f.value} | {f.goal} | {'PASS' if f.passed else 'MISS'} |")
    return 0 if all(f.passed for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
