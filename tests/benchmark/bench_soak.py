"""Soak test of sklm-watcher: a busy fleet for minutes, a flaky webhook (issue #8).

``python tests/benchmark/bench_soak.py [--minutes M] [--servers N]`` (venv Python).

A simulator process serves N TLS servers (default 1,000) whose restores start and end
all the time for M minutes (default 4; the whole run takes about a minute more): 20
groups of replicas, each group with its own randomized restores (complete with a
restart, or fail), replicas staggered across the restore period, some groups with
sessions that expire between polls. The daemon (``sklm-watcher run``) watches them
with a webhook sink pointing at a receiver in this process (``127.0.0.1``) that
answers 500 to a tenth of its requests. Every few seconds the daemon's RSS and open
descriptors are sampled.

Printed: RSS and fds over time and their growth after warm-up (the first third of
the run, at least 60 s: flat?), the daemon's live Python heap (allocated blocks,
sampled by ``launch.py --heap-log``: a leak of objects shows there even when the
allocator's high-water mark hides it in RSS), restores recorded exactly vs ground truth, duplicates in the audit log, and whether the
receiver got every audit-log event at least once (and nothing else). Exit 0 when
every check passes.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmark.common import (
    PY,
    Children,
    Sample,
    ServerGroup,
    add_run_options,
    make_tls,
    sample,
    say,
    slope,
    start_fleet,
    wait_file,
    write_config,
    write_scenario,
)
from tests.benchmark.fidelity import (
    Receiver,
    Tailer,
    compare,
    observable,
    random_phase_seconds,
    recorded_restores,
    truth_restores,
)

GROUPS = 20
IDLE_INTERVAL = 5.0
ACTIVE_INTERVAL = 1.0
#: Seconds between two restores of one server (IDLE), at random in this range.
IDLE_BETWEEN = (20.0, 60.0)
#: Warm-up is the first third of the run, and at least this many seconds: RSS climbs
#: (connections, first journal rows, then the allocator's high-water mark of the
#: busiest moments) before it settles; a leak keeps climbing after.
MIN_WARM_UP = 60.0
#: Seconds between two samples of the daemon's live Python heap (``--heap-log``).
HEAP_EVERY = 30.0
#: Allowed growth of the live heap's median from the first to the last third.
HEAP_TOLERANCE = 0.10
SAMPLE_EVERY = 5.0


def soak_groups(
    rng: random.Random, *, servers: int, seconds: float
) -> tuple[list[ServerGroup], int]:
    """Replica groups whose restores keep coming for ``seconds``; and their count."""
    per_group = max(1, servers // GROUPS)
    # Replicas start spread over this many seconds (the last one starts that late).
    spread = min(IDLE_BETWEEN[1], seconds / 4)
    groups: list[ServerGroup] = []
    restores_total = 0
    for g in range(GROUPS):
        keys: dict[str, object] = {
            "latency": round(0.02 + 0.18 * g / (GROUPS - 1), 3),
            "seed": g + 1,
            "stagger": round(spread / per_group, 4),
        }
        if g % 5 == 2:
            # Shorter than the idle interval: idle polls log in again every time.
            keys["session_idle_timeout"] = 3.0
        restores: list[dict[str, object]] = []
        # The last replica starts ``spread`` later; leave room for it to finish.
        t = spread
        while True:
            idle = rng.uniform(*IDLE_BETWEEN)
            outcome = "fail" if rng.random() < 0.2 else "complete"
            while True:
                count = 7 if outcome == "complete" else rng.randint(1, 6)
                durations = [min(random_phase_seconds(rng), 4.0) for _ in range(count)]
                if sum(durations) <= 20.0 and observable(
                    durations, outcome, idle_window=IDLE_INTERVAL * 1.1 + 0.5
                ):
                    break
            restore: dict[str, object] = {
                "idle_before": round(idle, 3),
                "phases": [
                    [code, round(d, 4)]
                    for code, d in zip(range(1, 8), durations, strict=False)
                ],
                "outcome": outcome,
            }
            length = idle + sum(durations)
            if outcome == "complete":
                down, starting = (
                    round(rng.uniform(0.5, 2.0), 2),
                    round(rng.uniform(0.5, 2.0), 2),
                )
                restore["restart_down"] = down
                restore["restart_starting"] = starting
                length += down + starting
            if t + length > seconds:
                break
            t += length
            restores.append(restore)
        restores_total += len(restores) * per_group
        groups.append(ServerGroup(f"soak-g{g:02d}", per_group, keys, restores))
    return groups, restores_total


def _flat(
    samples: Sequence[tuple[float, float]], tolerance: float
) -> tuple[float, float, bool]:
    """Slope per minute after warm-up, growth (median of the last third minus the
    first third) and whether that growth stays within ``tolerance``.

    Medians of thirds, not the end points: open connections come and go with the
    restarts, so single samples wobble.
    """
    per_minute = slope(samples) * 60.0
    third = max(1, len(samples) // 3)
    values = [v for _, v in samples]
    if not values:
        return math.nan, math.nan, False
    growth = statistics.median(values[-third:]) - statistics.median(values[:third])
    return per_minute, growth, growth <= tolerance


def _heap_samples(path: Path, warm_up: float) -> list[float]:
    """Allocated blocks the daemon logged (``launch.py --heap-log``) after warm-up."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        at, _, rest = line.partition(" s blocks=")
        if rest and float(at) >= warm_up:
            out.append(float(rest.split()[0]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; exit 0 when memory and fds are flat and nothing was lost."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="restore period")
    parser.add_argument("--servers", type=int, default=1000, help="fleet size")
    add_run_options(parser)
    args = parser.parse_args(argv)
    seconds = args.minutes * 60.0
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="sklm-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    heap_log = workdir / "heap.log"
    children = Children(workdir)
    started = time.monotonic()
    checks: list[tuple[str, str, bool]] = []
    try:
        tls = make_tls(workdir)
        groups, planned = soak_groups(
            random.Random(8), servers=args.servers, seconds=seconds
        )
        scenario = workdir / "soak-scenario.toml"
        write_scenario(scenario, groups, "soak: restores all the time")
        names = [name for g in groups for name in g.names()]
        say(
            f"sklm-watcher soak: {len(names)} TLS servers, {planned} restores over "
            f"{args.minutes:g} min (idle {IDLE_INTERVAL:g} s, active "
            f"{ACTIVE_INTERVAL:g} s), webhook failing 10 %; work in {workdir}"
        )
        fleet = start_fleet(
            children, [scenario], tls, truth=True, cpus={1} if pin else None
        )
        sim_start = time.monotonic()
        state = workdir / "state"
        config = workdir / "soak.toml"
        with (
            Receiver(fail_rate=0.1) as receiver,
            Tailer(state / "events.jsonl") as tailer,
        ):
            write_config(
                config,
                fleet.urls,
                state_dir=state,
                tls=tls,
                defaults={
                    "idle_interval": IDLE_INTERVAL,
                    "active_interval": ACTIVE_INTERVAL,
                    "restart_interval": 0.5,
                    "stall_after": 60.0,
                    "restart_timeout": 60.0,
                    "timeout": 5.0,
                },
                sinks=[{"name": "soak", "type": "webhook", "url": receiver.url}],
            )
            daemon = children.start(
                "daemon",
                [
                    PY,
                    "-m",
                    "tests.benchmark.launch",
                    "--heap-log",
                    str(HEAP_EVERY),
                    str(heap_log),
                    *args.daemon_flag,
                    "--",
                    "--log-format",
                    "json",
                    "run",
                    "-c",
                    str(config),
                ],
                cpus={0} if pin else None,
            )
            wait_file(
                daemon.stderr_path or Path(),
                "daemon.started",
                timeout=120,
                child=daemon,
            )
            samples: list[Sample] = []
            next_sample = time.monotonic()
            next_print = time.monotonic() + 30.0
            truth_done: float | None = None
            deadline = sim_start + seconds + IDLE_BETWEEN[1] + 120.0
            while time.monotonic() < deadline:
                now = time.monotonic()
                if now >= next_sample:
                    samples.append(sample(daemon.pid))
                    next_sample += SAMPLE_EVERY
                if now >= next_print:
                    last = samples[-1]
                    say(
                        f"  {now - sim_start:5.0f} s: RSS {last.rss / 1e6:6.1f} MB, "
                        f"fds {last.fds}, CPU {last.cpu:6.1f} s, events "
                        f"{len(tailer.first_seen)}, delivered "
                        f"{len(receiver.first_received)} ({receiver.failed} x 500)"
                    )
                    next_print += 30.0
                if now - sim_start > seconds and truth_done is None:
                    truth = fleet.truth()
                    if _truth_over(truth):
                        truth_done = now
                if truth_done is not None:
                    events = tailer.snapshot()
                    delivered = set(receiver.first_received)
                    caught_up = _recorded_over(fleet.truth(), events)
                    if caught_up and {str(e["id"]) for e in events} <= delivered:
                        break
                    if now > truth_done + 90.0:
                        break
                time.sleep(0.5)
            final = sample(daemon.pid)
            children.stop(daemon)
            truth = fleet.truth()
            events = tailer.snapshot()
            received = dict(receiver.first_received)
            posts = receiver.posts.copy()
            failed = receiver.failed
        took = time.monotonic() - started
        warm_up = max(MIN_WARM_UP, seconds / 3.0)
        steady = [s for s in samples if s.at - sim_start >= warm_up]
        if len(steady) < 3:
            steady = samples[len(samples) // 2 :]
        rss_points = [(s.at, s.rss / 1e6) for s in steady]
        fd_points = [(s.at, float(s.fds)) for s in steady]
        rss_tolerance = max(5.0, 0.05 * (rss_points[0][1] if rss_points else 0.0))
        rss_slope, rss_growth, rss_flat = _flat(rss_points, rss_tolerance)
        fd_tolerance = max(20.0, 0.02 * len(names))
        fd_slope, fd_growth, fd_flat = _flat(fd_points, fd_tolerance)
        cpu_share = (final.cpu - samples[0].cpu) / (final.at - samples[0].at)
        say("")
        say("RSS (MB) / fds every ~30 s:")
        say(
            "  "
            + ", ".join(
                f"{s.at - sim_start:.0f}s {s.rss / 1e6:.0f}/{s.fds}"
                for s in samples[:: max(1, int(30 / SAMPLE_EVERY))]
            )
        )
        checks.append(
            (
                f"RSS flat after {warm_up:.0f} s warm-up (growth <= "
                f"{rss_tolerance:.0f} MB)",
                f"{rss_points[0][1] if rss_points else math.nan:.1f} -> "
                f"{rss_points[-1][1] if rss_points else math.nan:.1f} MB, growth "
                f"{rss_growth:+.1f} MB, slope {rss_slope:+.2f} MB/min",
                rss_flat,
            )
        )
        checks.append(
            (
                f"open fds flat after warm-up (growth <= {fd_tolerance:.0f})",
                f"{fd_points[0][1] if fd_points else math.nan:.0f} -> "
                f"{fd_points[-1][1] if fd_points else math.nan:.0f}, growth "
                f"{fd_growth:+.0f}, slope {fd_slope:+.2f} /min",
                fd_flat,
            )
        )
        heap = _heap_samples(heap_log, warm_up)
        heap_third = max(1, len(heap) // 3)
        heap_growth = (
            statistics.median(heap[-heap_third:]) / statistics.median(heap[:heap_third])
            - 1.0
            if heap
            else math.nan
        )
        checks.append(
            (
                "Python live heap flat after warm-up (allocated blocks, medians of "
                f"thirds, growth <= {HEAP_TOLERANCE:.0%})",
                f"{len(heap)} samples, "
                + (
                    f"{statistics.median(heap[:heap_third]):,.0f} -> "
                    f"{statistics.median(heap[-heap_third:]):,.0f} blocks, "
                    f"growth {heap_growth:+.1%}"
                    if heap
                    else "none"
                ),
                bool(heap) and heap_growth <= HEAP_TOLERANCE,
            )
        )
        result = compare(truth, events, names)
        checks.append(
            (
                "restores recorded exactly vs ground truth",
                f"{result.exact}/{result.restores}",
                result.exact == result.restores and result.restores > 0,
            )
        )
        checks.append(
            (
                "duplicates in the audit log",
                str(result.duplicates),
                result.duplicates == 0,
            )
        )
        audit_ids = {str(e["id"]) for e in events}
        missing = audit_ids - set(received)
        extra = set(received) - audit_ids
        checks.append(
            (
                "webhook got every audit event at least once (and nothing else)",
                f"{len(audit_ids) - len(missing)}/{len(audit_ids)} received, "
                f"{len(extra)} unknown ids; {sum(posts.values())} POSTs, "
                f"{failed} answered 500, "
                f"{sum(1 for n in posts.values() if n > 1)} ids posted more than once",
                not missing and not extra and bool(audit_ids),
            )
        )
        say("")
        say(
            f"## sklm-watcher soak: {len(names)} servers, {args.minutes:g} min of "
            f"restores, {took:.0f} s in all; daemon CPU {cpu_share:.1%} of a core"
        )
        say("")
        say("| check | measured | |")
        say("| --- | --- | --- |")
        for name, measured, ok in checks:
            say(f"| {name} | {measured} | {'PASS' if ok else 'FAIL'} |")
        for line in result.mismatches[:10]:
            say(f"  mismatch: {line}")
        for event_id in sorted(missing)[:5]:
            say(f"  not delivered: {event_id}")
    finally:
        children.stop_all()
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if checks and all(ok for _, _, ok in checks) else 1


def _truth_over(truth: Sequence[dict[str, object]]) -> bool:
    """Whether no restore or restart is still running in the ground truth."""
    last: dict[str, str] = {}
    for line in truth:
        last[str(line["server"])] = str(line["kind"])
    expected = truth_restores(truth)
    running = any(r.outcome == "running" for rs in expected.values() for r in rs)
    return not running and "restart_begin" not in last.values()


def _recorded_over(
    truth: Sequence[dict[str, object]], events: Sequence[dict[str, object]]
) -> bool:
    """Whether the audit log has as many ended restores as the truth, per server."""
    expected = truth_restores(truth)
    recorded, _, _ = recorded_restores(events)
    for server, want in expected.items():
        got = recorded.get(server, [])
        if len(got) < len(want) or any(r.outcome == "running" for r in got):
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
