"""Fleet benchmark of sklm-watcher against its bare-aiohttp floor (issue #6).

``python tests/benchmark/bench_fleet.py [--quick]`` (with the project's venv Python).

Everything runs as subprocesses on 127.0.0.1 and is measured from outside: CPU time,
resident memory and open descriptors from ``/proc/<pid>``; poll times from the
simulator (it stamps every progress request it receives); events from the daemon's
audit log (tailed) and a local webhook receiver. The daemon (and the floor) run
pinned to CPU 0, the simulator to CPU 1 (``--no-pin`` to let them float); the
benchmark's own process is light but shares the machine, which the report says.

Parts (``--parts``, comma-separated; default all):

- ``ratio``: the same idle TLS fleet polled at the same rate by the daemon and by the
  floor (``tests/benchmark/floor.py``: log in, GET progress, parse JSON, sleep),
  alternating, several runs: CPU per poll and the ratio, RSS per server.
- ``memory`` (not in ``--quick``): daemon and floor on stock asyncio and on uvloop
  (if installed), one run each: memory per idle TLS connection.
- ``throughput``: the daemon at rising poll rates (no jitter) until a poll is late
  (p99 of lateness vs plan >= 100 ms) or the core is full.
- ``fleet``: 5,000 servers idle at 30 s plus 200 restoring at 1 s (``--quick``: 1,000
  idle at 6 s, the same idle poll rate, plus 200 restoring): time to ready, first
  poll of every server, CPU share of one core, RSS and fds.
- ``fidelity``: 200 randomized restores (phases 2 ms to 10 s, failures, stalls,
  restarts, manual restarts and session expiry) recorded vs ground truth; completion
  detection and webhook notification latency; a naive fixed 5 s poller alongside.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmark.common import (
    PASSWORD,
    PY,
    Child,
    Children,
    ServerGroup,
    SimFleet,
    Spread,
    Tls,
    add_run_options,
    make_tls,
    percentile,
    sample,
    say,
    start_fleet,
    wait_file,
    write_config,
    write_scenario,
)
from tests.benchmark.fidelity import (
    NaiveThread,
    Receiver,
    Tailer,
    compare,
    naive_summary,
    percentiles,
    random_restores,
    recorded_restores,
    truth_restores,
)

DAEMON_CPUS = {0}
SIM_CPUS = {1}
#: Server latencies of the idle fleets: ten groups, 20 ms to 200 ms.
LATENCIES = tuple(round(0.02 * (k + 1), 3) for k in range(10))
MEAN_LATENCY = sum(LATENCIES) / len(LATENCIES)
LAG_GOAL = 0.100
#: Seconds the watcher gets, after the last true restore ended, to record it all
#: (stall_after 12 s plus a few polls).
CATCH_UP = 16.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and durations of one benchmark run."""

    quick: bool
    runs: int
    idle_fleet: int
    ratio_rate: float
    #: Seconds of settling after a rate change, beyond one interval.
    warm: float
    measure: float
    steps: tuple[float, ...]
    big_idle: int
    big_interval: float
    big_active: int
    big_measure: float
    fidelity_servers: int
    fidelity_per_server: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        """The quick plan (under 2 minutes) or the full one (the published numbers)."""
        if quick:
            return cls(
                quick=True,
                runs=3,
                idle_fleet=1000,
                ratio_rate=1000.0,
                warm=0.5,
                measure=2.5,
                steps=(2000.0, 3000.0),
                big_idle=1000,
                big_interval=6.0,
                big_active=200,
                big_measure=5.0,
                fidelity_servers=200,
                fidelity_per_server=1,
            )
        return cls(
            quick=False,
            runs=5,
            idle_fleet=2000,
            ratio_rate=1000.0,
            warm=2.0,
            measure=10.0,
            steps=(1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 4000.0),
            big_idle=5000,
            big_interval=30.0,
            big_active=200,
            big_measure=60.0,
            fidelity_servers=100,
            fidelity_per_server=2,
        )


@dataclass
class Row:
    """One line of the result table."""

    figure: str
    measured: str
    goal: str
    verdict: str  # PASS / MISS / info


@dataclass
class Context:
    """What every part shares: the work directory, children, TLS, options."""

    plan: Plan
    workdir: Path
    children: Children
    tls: Tls
    pin: bool
    daemon_flags: tuple[str, ...]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def daemon_cpus(self) -> set[int] | None:
        """Where the measured process runs."""
        return DAEMON_CPUS if self.pin else None

    @property
    def sim_cpus(self) -> set[int] | None:
        """Where the simulator runs."""
        return SIM_CPUS if self.pin else None

    def row(self, figure: str, measured: str, goal: str, ok: bool | None) -> None:
        """Add a table row; ``ok`` None means informational."""
        verdict = "info" if ok is None else "PASS" if ok else "MISS"
        self.rows.append(Row(figure, measured, goal, verdict))
        say(f"  -> {figure}: {measured}  [{goal}: {verdict}]")


# -- running the measured programs ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunResult:
    """One measuring window of one poller (daemon or floor)."""

    kind: str
    polls: int
    seconds: float
    cpu: float
    rss: int
    fds: int
    sim_cpu: float
    lags: tuple[float, ...]

    @property
    def rate(self) -> float:
        """Polls per second seen by the simulator."""
        return self.polls / self.seconds

    @property
    def cpu_per_poll(self) -> float:
        """CPU seconds per poll."""
        return self.cpu / self.polls if self.polls else math.nan

    @property
    def share(self) -> float:
        """Fraction of one core used."""
        return self.cpu / self.seconds

    @property
    def sim_share(self) -> float:
        """Fraction of one core the simulator used."""
        return self.sim_cpu / self.seconds

    def lag(self, q: float) -> float:
        """Percentile of lateness (s) of polls versus their planned time."""
        return percentile(self.lags, q)


def start_daemon(
    ctx: Context,
    config: Path,
    *,
    uvloop: bool = False,
    name: str = "daemon",
) -> tuple[Child, float]:
    """Start ``sklm-watcher run``; return it and the wall time it was spawned."""
    args = [PY, "-m", "tests.benchmark.launch"]
    if uvloop:
        args.append("--uvloop")
    args += [*ctx.daemon_flags, "--", "--log-format", "json", "run", "-c", str(config)]
    spawned = time.time()
    child = ctx.children.start(name, args, cpus=ctx.daemon_cpus)
    return child, spawned


class Poller:
    """A measured process polling the idle fleet whose rate can be changed live.

    Both kinds start at a slow interval (so the TLS handshakes and logins of start-up
    do not pile up), then :meth:`pace` switches every loop to a new interval at a
    fresh random offset within it, keeping the connections: the daemon by SIGHUP
    (its reload restarts every changed server's loop), the floor by a command. A
    parked poller (:data:`PARK`) costs next to nothing while the other is measured.
    """

    kind: str
    child: Child

    def pace(self, interval: float) -> None:
        """Poll every ``interval`` seconds from now on."""
        raise NotImplementedError


#: Interval of a parked poller (a few polls per second for a thousand servers).
PARK = 120.0
#: The anchor server's interval: the daemon sizes its keep-alive by the longest one,
#: so connections outlive a parked interval.
ANCHOR_INTERVAL = 600.0
ANCHOR = "anchor"


def start_interval(servers: int) -> float:
    """A first interval that spreads the start-up handshakes (~2 ms CPU each)."""
    return max(2.0, servers * 0.003)


class DaemonPoller(Poller):
    """``sklm-watcher run`` on the idle fleet, paced by rewriting its config + SIGHUP."""

    def __init__(self, ctx: Context, fleet: SimFleet, *, uvloop: bool = False) -> None:
        self.kind = "daemon" + (" (uvloop)" if uvloop else "")
        self.ctx = ctx
        self.fleet = fleet
        self.state = ctx.workdir / f"state-idle{'-uv' if uvloop else ''}"
        shutil.rmtree(self.state, ignore_errors=True)
        self.config = ctx.workdir / f"idle{'-uv' if uvloop else ''}.toml"
        first = start_interval(len(fleet.urls))
        self._write(first)
        self.child, _ = start_daemon(ctx, self.config, uvloop=uvloop)
        self.err = self.child.stderr_path or Path()
        wait_file(self.err, "daemon.started", timeout=120, child=self.child)
        # Every server polled once (handshake, login, first journal write).
        time.sleep(first + 1.0)

    def _write(self, interval: float) -> None:
        write_config(
            self.config,
            self.fleet.urls,
            state_dir=self.state,
            tls=self.ctx.tls,
            defaults={"idle_interval": interval, "timeout": 10.0},
            watcher={"jitter": 0.0},
            per_server={ANCHOR: {"idle_interval": ANCHOR_INTERVAL}},
        )

    def pace(self, interval: float) -> None:
        """Rewrite the config and SIGHUP; return once the reload is applied."""
        before = self._applied()
        self._write(interval)
        self.child.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 120.0
        while self._applied() <= before:
            if time.monotonic() > deadline or self.child.popen.poll() is not None:
                raise RuntimeError(f"daemon reload not applied: {self.child.tail()}")
            time.sleep(0.05)

    def _applied(self) -> int:
        return self.err.read_text(encoding="utf-8").count('"reload.applied"')


class FloorPoller(Poller):
    """The bare aiohttp loop (``floor.py``), paced by an ``interval`` command.

    ``intervals`` gives some servers their own fixed interval (the fleet part);
    the others follow ``interval`` (default: a start-up interval, then :meth:`pace`).
    """

    def __init__(
        self,
        ctx: Context,
        fleet: SimFleet,
        *,
        uvloop: bool = False,
        interval: float | None = None,
        intervals: Mapping[str, float] | None = None,
        jitter: float = 0.0,
    ) -> None:
        self.kind = "floor" + (" (uvloop)" if uvloop else "")
        path = ctx.workdir / "floor.json"
        first = interval or start_interval(len(fleet.urls))
        own = intervals or {}
        servers = [
            [name, url, own[name]] if name in own else [name, url]
            for name, url in fleet.urls.items()
        ]
        path.write_text(
            json.dumps(
                {
                    "servers": servers,
                    "interval": first,
                    "jitter": jitter,
                    "ca_file": str(ctx.tls.ca_file),
                    "username": "SKLMAdmin",
                    "password": PASSWORD,
                }
            ),
            encoding="utf-8",
        )
        args = [PY, "-m", "tests.benchmark.floor", str(path)]
        if uvloop:
            args.append("--uvloop")
        self.child = ctx.children.start("floor", args, stdin=True, cpus=ctx.daemon_cpus)
        self.child.wait_line("ready".__eq__, timeout=60)
        time.sleep(first + 1.0)

    def pace(self, interval: float) -> None:
        """Send the new interval; return once the floor echoed it."""
        self.child.send(f"interval {interval}")
        echo = f"interval {float(interval)}"
        self.child.wait_line(echo.__eq__, timeout=30)


def measure_window(
    ctx: Context,
    child: Child,
    fleet: SimFleet,
    *,
    kind: str,
    seconds: float,
    interval: float | None,
    latency: Mapping[str, float],
) -> RunResult:
    """Measure ``child`` for ``seconds``: CPU, RSS, fds, polls and their lateness.

    Lateness of a poll: the gap since the server's previous poll minus the interval
    and the server's latency (the daemon sleeps ``interval`` after each answer;
    runs without jitter).
    """
    fleet.arrivals(ctx.workdir)  # forget what came before the window
    sims = [c.pid for c in fleet.children]
    a, sa = sample(child.pid), [sample(pid) for pid in sims]
    time.sleep(seconds)
    b, sb = sample(child.pid), [sample(pid) for pid in sims]
    arrivals = fleet.arrivals(ctx.workdir)
    polls = 0
    lags: list[float] = []
    for name, times in arrivals.items():
        if name == ANCHOR:
            continue
        inside = [t for t in times if a.at <= t <= b.at]
        polls += len(inside)
        if interval is not None:
            expected = interval + latency.get(name, 0.0)
            lags.extend(
                later - earlier - expected
                for earlier, later in itertools.pairwise(inside)
            )
    sim_cpu = sum(y.cpu - x.cpu for x, y in zip(sa, sb, strict=True))
    return RunResult(
        kind=kind,
        polls=polls,
        seconds=b.at - a.at,
        cpu=b.cpu - a.cpu,
        rss=b.rss,
        fds=b.fds,
        sim_cpu=sim_cpu,
        lags=tuple(lags),
    )


def measure_at(
    ctx: Context,
    poller: Poller,
    fleet: SimFleet,
    latency: Mapping[str, float],
    interval: float,
    *,
    park: bool = True,
) -> RunResult:
    """Pace ``poller`` to ``interval``, let it settle, measure, park it again."""
    poller.pace(interval)
    # Every loop restarts within one interval (the daemon logs in again first).
    time.sleep(interval + 2 * MEAN_LATENCY + ctx.plan.warm)
    result = measure_window(
        ctx,
        poller.child,
        fleet,
        kind=poller.kind,
        seconds=ctx.plan.measure,
        interval=interval,
        latency=latency,
    )
    if park:
        poller.pace(PARK)
    say(
        f"  {poller.kind:<16} {result.rate:6.0f} polls/s  "
        f"{result.cpu_per_poll * 1e6:5.0f} us/poll  core {result.share:5.1%}  "
        f"RSS {result.rss / 1e6:5.0f} MB  fds {result.fds:5d}  "
        f"late p50/p99 {result.lag(50) * 1000:4.0f}/{result.lag(99) * 1000:4.0f} ms  "
        f"simulator {result.sim_share:5.1%}"
    )
    return result


def idle_groups(count: int, prefix: str) -> tuple[list[ServerGroup], dict[str, float]]:
    """``count`` idle servers in ten latency groups (20 to 200 ms)."""
    groups: list[ServerGroup] = []
    latency: dict[str, float] = {}
    per_group = max(1, count // len(LATENCIES))
    for k, seconds in enumerate(LATENCIES):
        group = ServerGroup(
            f"{prefix}-g{k}", per_group, {"latency": seconds, "seed": k + 1}
        )
        groups.append(group)
        latency.update(dict.fromkeys(group.names(), seconds))
    return groups, latency


# -- the parts ---------------------------------------------------------------------------


def part_ratio_and_throughput(ctx: Context, parts: set[str]) -> None:
    """Ratio to the floor, memory per idle TLS connection, sustained polls per second."""
    plan = ctx.plan
    groups, latency = idle_groups(plan.idle_fleet, "idle")
    groups.append(ServerGroup(ANCHOR, 1, {"seed": 99}))
    scenario = ctx.workdir / "idle-scenario.toml"
    write_scenario(scenario, groups, "benchmark: idle fleet, latency 20-200 ms")
    fleet = start_fleet(
        ctx.children, [scenario], ctx.tls, cpus=ctx.sim_cpus, progress_latency=True
    )
    n = len(fleet.urls) - 1
    interval = n / plan.ratio_rate - MEAN_LATENCY
    daemon: DaemonPoller | None = None
    try:
        if parts & {"ratio", "throughput"}:
            daemon = DaemonPoller(ctx, fleet)
        measured: list[RunResult] = []
        if "ratio" in parts and daemon is not None:
            measured = part_ratio(ctx, fleet, latency, interval, daemon)
        if "memory" in parts:
            part_memory(ctx, fleet, latency, interval)
        if "throughput" in parts and daemon is not None:
            part_throughput(ctx, fleet, latency, daemon, measured)
    finally:
        if daemon is not None:
            ctx.children.stop(daemon.child)
        for child in fleet.children:
            ctx.children.stop(child)


def part_ratio(
    ctx: Context,
    fleet: SimFleet,
    latency: Mapping[str, float],
    interval: float,
    daemon: DaemonPoller,
) -> list[RunResult]:
    """Daemon and floor, alternating windows at the same rate on the same servers.

    Returns the daemon's windows (they count for the throughput row too).
    """
    plan = ctx.plan
    n = len(fleet.urls) - 1
    say(
        f"\n[ratio] {n} idle TLS servers, interval {interval:.2f} s "
        f"(+ {MEAN_LATENCY * 1000:.0f} ms mean latency: ~{plan.ratio_rate:.0f} "
        f"polls/s), {plan.runs} alternating windows of {plan.measure:.0f} s each"
    )
    daemon.pace(PARK)
    floor = FloorPoller(ctx, fleet)
    floor.pace(PARK)
    floors: list[RunResult] = []
    daemons: list[RunResult] = []
    try:
        for _ in range(plan.runs):
            floors.append(measure_at(ctx, floor, fleet, latency, interval))
            daemons.append(measure_at(ctx, daemon, fleet, latency, interval))
    finally:
        ctx.children.stop(floor.child)
    ratios = [
        d.cpu_per_poll / f.cpu_per_poll for d, f in zip(daemons, floors, strict=True)
    ]
    floor_us = Spread.of(f.cpu_per_poll * 1e6 for f in floors)
    daemon_us = Spread.of(d.cpu_per_poll * 1e6 for d in daemons)
    ratio = Spread.of(ratios)
    ctx.row(
        "CPU per poll, daemon / bare-aiohttp floor (same servers, same rate)",
        f"{ratio.show()} [daemon {daemon_us.show('{:.0f}', ' us')}, "
        f"floor {floor_us.show('{:.0f}', ' us')}, "
        f"~{Spread.of(d.rate for d in daemons).median:.0f} polls/s]",
        "<= 1.5",
        ratio.median <= 1.5,
    )
    daemon_lag = Spread.of(d.lag(99) * 1000 for d in daemons)
    floor_lag = Spread.of(f.lag(99) * 1000 for f in floors)
    ctx.row(
        "poll lateness p99 at that rate, daemon vs floor",
        f"daemon {daemon_lag.show('{:.0f}', ' ms')}, "
        f"floor {floor_lag.show('{:.0f}', ' ms')}",
        "info",
        None,
    )
    per_daemon = Spread.of(d.rss / n / 1024 for d in daemons)
    per_floor = Spread.of(f.rss / n / 1024 for f in floors)
    ctx.row(
        "RSS per idle TLS server (total / servers), asyncio (the floor untuned)",
        f"daemon {per_daemon.show('{:.0f}', ' KB')}, "
        f"floor {per_floor.show('{:.0f}', ' KB')}",
        "info",
        None,
    )
    return daemons


def part_memory(
    ctx: Context, fleet: SimFleet, latency: Mapping[str, float], interval: float
) -> None:
    """Daemon and floor, stock asyncio and uvloop: memory per idle TLS connection."""
    n = len(fleet.urls) - 1
    try:
        importlib.import_module("uvloop")
    except ImportError:
        say("\n[memory] uvloop is not installed: skipped")
        return
    say(f"\n[memory] {n} idle TLS servers: stock asyncio vs uvloop, one run each")
    results: dict[tuple[str, bool], RunResult] = {}
    for kind in ("floor", "daemon"):
        for uvloop in (False, True):
            poller: Poller = (
                FloorPoller(ctx, fleet, uvloop=uvloop)
                if kind == "floor"
                else DaemonPoller(ctx, fleet, uvloop=uvloop)
            )
            try:
                results[(kind, uvloop)] = measure_at(
                    ctx, poller, fleet, latency, interval, park=False
                )
            finally:
                ctx.children.stop(poller.child)
    for kind in ("daemon", "floor"):
        stock, uv = results[(kind, False)], results[(kind, True)]
        ctx.row(
            f"{kind}: RSS per idle TLS server, asyncio -> uvloop",
            f"{stock.rss / n / 1024:.0f} KB -> {uv.rss / n / 1024:.0f} KB "
            f"(total {stock.rss / 1e6:.0f} -> {uv.rss / 1e6:.0f} MB); CPU per poll "
            f"{stock.cpu_per_poll * 1e6:.0f} -> {uv.cpu_per_poll * 1e6:.0f} us",
            "info",
            None,
        )


def part_throughput(
    ctx: Context,
    fleet: SimFleet,
    latency: Mapping[str, float],
    daemon: DaemonPoller,
    earlier_runs: Sequence[RunResult] = (),
) -> None:
    """Raise the poll rate until polls are late or the core is full.

    ``earlier_runs``: windows already measured (the ratio part's, ~1,000 polls/s).
    """
    plan = ctx.plan
    n = len(fleet.urls) - 1
    say(f"\n[throughput] {n} idle TLS servers, no jitter, daemon pinned to one core")
    best: RunResult | None = None
    for earlier in earlier_runs:
        if earlier.lag(99) < LAG_GOAL and (best is None or earlier.rate > best.rate):
            best = earlier
    simulator_bound = False
    try:
        for target in plan.steps:
            interval = n / target - MEAN_LATENCY
            if interval <= 0.02:
                say(f"  {target:.0f} polls/s needs more servers than {n}: skipped")
                continue
            result = measure_at(ctx, daemon, fleet, latency, interval, park=False)
            simulator_bound = simulator_bound or result.sim_share > 0.9
            on_time = result.lag(99) < LAG_GOAL and result.share < 0.98
            if on_time and (best is None or result.rate > best.rate):
                best = result
            if not on_time:
                break
    finally:
        daemon.pace(PARK)
    if best is None:
        measured = "none on time"
    else:
        measured = (
            f"{best.rate:.0f} polls/s (core {best.share:.0%}, late p99 "
            f"{best.lag(99) * 1000:.0f} ms, {best.cpu_per_poll * 1e6:.0f} us/poll)"
        )
    if simulator_bound:
        measured += "; simulator near its core's limit"
    ctx.row(
        "sustained polls/s, one core, polls on time (late p99 < 100 ms)",
        measured,
        ">= 2,000",
        best is not None and best.rate >= 2000,
    )


def fleet_groups(ctx: Context) -> tuple[list[ServerGroup], int]:
    """The big fleet: idle servers plus servers restoring for the whole run."""
    plan = ctx.plan
    groups, _ = idle_groups(plan.big_idle, "big")
    rng = random.Random(5)
    # Long phases (10-30 s; quick: 5-15 s): the restores run through the window,
    # with a phase change now and then (a journal write and a burst of polls).
    low, high = (5.0, 15.0) if plan.quick else (10.0, 30.0)
    for i in range(plan.big_active):
        phases = [[code, round(rng.uniform(low, high), 2)] for code in range(1, 8)]
        groups.append(
            ServerGroup(
                f"busy-{i + 1:03d}",
                1,
                {"latency": LATENCIES[i % len(LATENCIES)], "seed": 1000 + i},
                [{"idle_before": round(rng.uniform(0.0, 2.0), 2), "phases": phases}],
            )
        )
    return groups, plan.big_idle + plan.big_active


def part_fleet(ctx: Context) -> None:
    """Start-up, CPU share, memory and fds of a big idle fleet with 200 restores."""
    plan = ctx.plan
    groups, total = fleet_groups(ctx)
    scenario = ctx.workdir / "big-scenario.toml"
    write_scenario(scenario, groups, "benchmark: big fleet")
    say(
        f"\n[fleet] {plan.big_idle} servers idle at {plan.big_interval:.0f} s + "
        f"{plan.big_active} restoring at 1 s (TLS, latency 20-200 ms)"
        + ("; QUICK: fleet scaled down, same idle poll rate" if plan.quick else "")
    )
    started = time.monotonic()
    fleet = start_fleet(ctx.children, [scenario], ctx.tls, cpus=ctx.sim_cpus)
    say(
        f"  simulator up in {time.monotonic() - started:.1f} s ({len(fleet.urls)} ports)"
    )
    state = ctx.workdir / "state-big"
    config = ctx.workdir / "big.toml"
    write_config(
        config,
        fleet.urls,
        state_dir=state,
        tls=ctx.tls,
        defaults={
            "idle_interval": plan.big_interval,
            "active_interval": 1.0,
            "timeout": 10.0,
            "stall_after": 3600.0,
        },
    )
    child, spawned = start_daemon(ctx, config)
    spawned_mono = time.monotonic()
    try:
        line = wait_file(
            child.stderr_path or Path(), "daemon.started", timeout=120, child=child
        )
        ready = _log_time(line) - spawned
        firsts: dict[str, float] = {}
        deadline = spawned_mono + plan.big_interval * 1.2 + 10.0
        while len(firsts) < total and time.monotonic() < deadline:
            time.sleep(min(2.0, plan.big_interval / 3))
            for name, times in fleet.arrivals(ctx.workdir).items():
                if times and name not in firsts:
                    firsts[name] = times[0]
        all_polled = max(firsts.values()) - spawned_mono if firsts else math.nan
        # Steady state: every server has had its first poll (and TLS handshake).
        time.sleep(max(0.0, spawned_mono + plan.big_interval + 2.0 - time.monotonic()))
        result = measure_window(
            ctx,
            child,
            fleet,
            kind="daemon",
            seconds=plan.big_measure,
            interval=None,
            latency={},
        )
        ctx.children.stop(child)
        # The floor on the same fleet at the same intervals (no bursts, no journal).
        busy = {g.name: 1.0 for g in groups if g.restores}
        floor = FloorPoller(
            ctx, fleet, interval=plan.big_interval, intervals=busy, jitter=0.1
        )
        reference = measure_window(
            ctx,
            floor.child,
            fleet,
            kind="floor",
            seconds=plan.big_measure,
            interval=None,
            latency={},
        )
    finally:
        ctx.children.stop(child)
        for sim in fleet.children:
            ctx.children.stop(sim)
    scale = "" if not plan.quick else f" (QUICK: {total} servers)"
    ctx.row(
        f"time to ready (daemon.started){scale}",
        f"{ready:.2f} s; first poll of all {len(firsts)}/{total} servers after "
        f"{all_polled:.1f} s (interval {plan.big_interval:.0f} s)",
        "ready < 3 s",
        ready < 3.0 and len(firsts) == total,
    )
    ctx.row(
        f"CPU share of one core, idle fleet + {plan.big_active} restoring{scale}",
        f"{result.share:.1%} at {result.rate:.0f} polls/s "
        f"({result.cpu_per_poll * 1e6:.0f} us/poll; simulator {result.sim_share:.0%}); "
        f"floor at the same intervals {reference.share:.1%} at {reference.rate:.0f} "
        f"polls/s ({reference.cpu_per_poll * 1e6:.0f} us/poll): daemon / floor "
        f"{result.share / reference.share:.2f}",
        "<= 25 %",
        result.share <= 0.25,
    )
    if plan.quick:
        per_server = result.rss / total
        extrapolated = per_server * 5000
        measured = (
            f"{result.rss / 1e6:.0f} MB for {total} servers -> "
            f"~{extrapolated / 1e6:.0f} MB for 5,000 (extrapolated); fds {result.fds}"
        )
        ok = extrapolated <= 150e6
    else:
        measured = f"{result.rss / 1e6:.0f} MB for {total} servers; fds {result.fds}"
        ok = result.rss <= 150e6
    ctx.row("resident memory for 5,000 servers", measured, "<= 150 MB", ok)


def _log_time(line: str) -> float:
    return _iso(json.loads(line)["timestamp"])


def _iso(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def part_fidelity(ctx: Context) -> None:
    """Randomized restores: fidelity, detection and notification latency, naive poller."""
    plan = ctx.plan
    rng = random.Random(2026)
    groups, plans = random_restores(
        rng,
        servers=plan.fidelity_servers,
        per_server=plan.fidelity_per_server,
        prefix="fid",
        start_spread=3.0 if plan.quick else 5.0,
    )
    planned = sum(len(g.restores) for g in groups)
    scenario = ctx.workdir / "fidelity-scenario.toml"
    write_scenario(scenario, groups, "benchmark: randomized restores")
    interventions = sorted(
        [
            (at, f"restart {p.server} {down} {starting}")
            for p in plans
            for at, down, starting in p.manual_restarts
        ]
        + [(at, f"expire {p.server}") for p in plans for at in p.expiries]
    )
    say(
        f"\n[fidelity] {planned} randomized restores on {len(groups)} TLS servers "
        f"({sum(len(p.manual_restarts) for p in plans)} manual restarts, "
        f"{sum(len(p.expiries) for p in plans)} session expiries by hand, "
        f"{sum(1 for g in groups if 'session_idle_timeout' in g.keys)} servers with "
        "short session timeouts); a naive 5 s poller alongside"
    )
    fleet = start_fleet(
        ctx.children, [scenario], ctx.tls, truth=True, cpus=ctx.sim_cpus
    )
    sim_start = time.monotonic()
    state = ctx.workdir / "state-fidelity"
    config = ctx.workdir / "fidelity.toml"
    audit = state / "events.jsonl"
    with Receiver() as receiver, Tailer(audit) as tailer:
        write_config(
            config,
            fleet.urls,
            state_dir=state,
            tls=ctx.tls,
            defaults={
                "idle_interval": 2.0,
                "active_interval": 1.0,
                "restart_interval": 0.5,
                "stall_after": 12.0,
                "restart_timeout": 60.0,
                "timeout": 5.0,
            },
            sinks=[{"name": "bench", "type": "webhook", "url": receiver.url}],
        )
        child, _ = start_daemon(ctx, config)
        naive = NaiveThread(fleet.urls, ctx.tls.ca_file, 5.0)
        naive.start()
        try:
            pending = list(interventions)
            deadline = time.monotonic() + 150.0
            truth_done: float | None = None
            while time.monotonic() < deadline:
                now = time.monotonic() - sim_start
                while pending and pending[0][0] <= now:
                    fleet.send_all(pending.pop(0)[1])
                truth = fleet.truth()
                if truth_done is None and not pending and _truth_settled(truth, groups):
                    truth_done = time.monotonic()
                if truth_done is not None and (
                    _recorded_settled(truth, tailer.snapshot())
                    or time.monotonic() > truth_done + CATCH_UP
                ):
                    break
                time.sleep(0.2)
            # Deliveries in flight.
            time.sleep(1.0)
        finally:
            naive.stop()
            ctx.children.stop(child)
            for sim in fleet.children:
                ctx.children.stop(sim)
        truth = fleet.truth()
        events = tailer.snapshot()
        first_seen = dict(tailer.first_seen)
        (ctx.workdir / "fidelity-journaled.json").write_text(
            json.dumps(first_seen), encoding="utf-8"
        )
        received = dict(receiver.first_received)
    names = [g.name for g in groups]
    result = compare(truth, events, names)
    took = time.monotonic() - sim_start
    ctx.row(
        f"fidelity: {result.restores} randomized restores vs ground truth",
        f"{result.exact}/{result.restores} exact "
        f"({result.exact / max(result.restores, 1):.1%}), "
        f"{result.duplicates} duplicates ({took:.0f} s run)",
        "100 % exact, 0 duplicates",
        result.exact == result.restores and result.duplicates == 0,
    )
    for line in result.mismatches[:10]:
        say(f"     mismatch: {line}")
    # The goal applies once the watcher knows a restore runs (it polls at
    # active_interval then) and COMPLETED lasts long enough to be polled; the
    # other cases are printed for information.
    watched: list[float] = []
    sudden: list[float] = []
    short: list[float] = []
    for key, event_id in result.completed_ids.items():
        if event_id not in first_seen or key not in result.completed_at:
            continue
        took_s = first_seen[event_id] - result.completed_at[key]
        if result.completed_seconds.get(key, math.inf) < 1.2:
            short.append(took_s)
        elif result.running_seconds.get(key, 0.0) < 3.0:
            sudden.append(took_s)
        else:
            watched.append(took_s)
    ctx.row(
        "completion detection: COMPLETED entered -> journaled (restore seen "
        "running, COMPLETED lasting >= 1.2 s)",
        f"{percentiles(watched)} (n={len(watched)})",
        "p99 <= active_interval + 0.2 s = 1.2 s",
        bool(watched) and percentile(watched, 99) <= 1.2,
    )
    ctx.row(
        "  same, IDLE to COMPLETED within one idle poll (2 s)",
        f"{percentiles(sudden)} (n={len(sudden)})",
        "info",
        None,
    )
    ctx.row(
        "  same, COMPLETED shorter than 1.2 s (inferred when the server is back)",
        f"{percentiles(short)} (n={len(short)})",
        "info",
        None,
    )
    journal_delay = [
        first_seen[str(e["id"])] - _iso(str(e["time"]))
        for e in events
        if str(e["id"]) in first_seen and str(e["type"]).startswith("sklm.restore.")
    ]
    ctx.row(
        "  of which: poll answered (event time) -> journaled",
        f"{percentiles(journal_delay)} (n={len(journal_delay)})",
        "info",
        None,
    )
    notify = [received[i] - t for i, t in first_seen.items() if i in received]
    ctx.row(
        "notification: journaled -> healthy webhook receiver has it",
        f"{percentiles(notify)} (n={len(notify)}, "
        f"{len(first_seen) - len(notify)} not received)",
        "p99 <= 0.25 s",
        bool(notify)
        and percentile(notify, 99) <= 0.25
        and len(notify) == len(first_seen),
    )
    baseline = naive_summary(naive.records, truth)
    ctx.row(
        "naive fixed 5 s poller on the same restores",
        f"{baseline.exact}/{baseline.restores} restores exact, "
        f"{baseline.phases_seen}/{baseline.phases_true} phases seen, "
        f"{baseline.completed_seen}/{baseline.completed_true} completions seen "
        f"(detection {percentiles(baseline.detection)})",
        "printed for comparison",
        None,
    )


def _truth_settled(
    truth: Sequence[Mapping[str, Any]], groups: Sequence[ServerGroup]
) -> bool:
    """Whether every planned restore has ended (and every restart is over)."""
    expected = truth_restores(truth)
    last_kind: dict[str, str] = {}
    for line in truth:
        last_kind[str(line["server"])] = str(line["kind"])
    for group in groups:
        want = expected.get(group.name, [])
        if len(want) < len(group.restores) or any(r.outcome == "running" for r in want):
            return False
        if last_kind.get(group.name) == "restart_begin":
            return False
    return True


def _recorded_settled(
    truth: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
) -> bool:
    """Whether the audit log has an ending for every true restore (and restarts)."""
    expected = truth_restores(truth)
    recorded, _, _ = recorded_restores(events)
    restarted = {
        str(e["data"].get("restore_id"))
        for e in events
        if e["type"] == "sklm.server.restarted"
    }
    last_restore: dict[str, str] = {}
    for event in events:
        if event["type"] == "sklm.restore.completed":
            last_restore[str(event["data"]["server"])] = str(
                event["data"]["restore_id"]
            )
    for server, want in expected.items():
        got = recorded.get(server, [])
        if len(got) < len(want) or any(r.outcome == "running" for r in got):
            return False
        if (
            want
            and want[-1].outcome == "completed"
            and last_restore.get(server) not in restarted
        ):
            return False
    return True


# -- report --------------------------------------------------------------------------------


def machine() -> str:
    """CPU model, cores, memory, Python and load, for the report."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"load {load}"
    )


def print_table(ctx: Context, started: float) -> None:
    """The result table (Markdown), with date, machine and mode."""
    mode = "QUICK (scaled down)" if ctx.plan.quick else "full"
    say("")
    say(
        f"## sklm-watcher fleet benchmark, {mode}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {time.monotonic() - started:.0f} s"
    )
    say(f"Machine: {machine()}")
    pinned = "daemon/floor on CPU 0, simulator on CPU 1" if ctx.pin else "not pinned"
    say(
        f"Processes: {pinned}; the benchmark process (tailer, receiver, naive poller) "
        "shares the machine. Medians of runs with their range."
    )
    say("")
    say("| figure | measured | goal | |")
    say("| --- | --- | --- | --- |")
    for row in ctx.rows:
        say(f"| {row.figure} | {row.measured} | {row.goal} | {row.verdict} |")
    for note in ctx.notes:
        say(f"\nNote: {note}")


def timed(label: str, part: Callable[..., None], *args: Any) -> None:
    """Run one part and say how long it took."""
    started = time.monotonic()
    part(*args)
    say(f"  ({label}: {time.monotonic() - started:.0f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every goal passed, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="under 2 minutes")
    parser.add_argument(
        "--parts",
        help="comma-separated subset of ratio,memory,throughput,fleet,fidelity "
        "(default: all; --quick leaves out memory)",
    )
    parser.add_argument("--runs", type=int, help="alternating runs for the ratio")
    parser.add_argument("--warm", type=float, help="seconds of warm-up per run")
    parser.add_argument("--measure", type=float, help="seconds measured per run")
    parser.add_argument(
        "--steps", help="comma-separated poll rates for the throughput part"
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    default = "ratio,throughput,fleet,fidelity" + ("" if args.quick else ",memory")
    parts = set((args.parts or default).split(","))
    plan = Plan.make(args.quick)
    if args.steps:
        steps = tuple(float(x) for x in args.steps.split(","))
        plan = dataclasses.replace(plan, steps=steps)
    for key in ("runs", "warm", "measure"):
        if getattr(args, key) is not None:
            plan = dataclasses.replace(plan, **{key: getattr(args, key)})
    started = time.monotonic()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="sklm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    children = Children(workdir)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    say(
        f"sklm-watcher fleet benchmark ({'quick' if plan.quick else 'full'}); work in {workdir}"
    )
    say(f"Machine: {machine()}")
    try:
        ctx = Context(
            plan, workdir, children, make_tls(workdir), pin, tuple(args.daemon_flag)
        )
        if parts & {"ratio", "memory", "throughput"}:
            timed("ratio, memory, throughput", part_ratio_and_throughput, ctx, parts)
        if "fleet" in parts:
            timed("fleet", part_fleet, ctx)
        if "fidelity" in parts:
            timed("fidelity", part_fidelity, ctx)
        print_table(ctx, started)
    finally:
        children.stop_all()
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r.verdict != "MISS" for r in ctx.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
