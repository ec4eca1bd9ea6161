"""Randomized restores, the audit-log tailer, a webhook receiver and the naive poller.

Used by ``bench_fleet.py`` (fidelity, detection and notification rows) and
``bench_soak.py``. The comparison reads the daemon's audit log (JSON Lines of
CloudEvents) and the simulator's ground truth, both as plain dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import ssl
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp

from tests.benchmark.common import PASSWORD, ServerGroup, percentile

PHASES = ("", "INITIALIZE", "2", "3", "4", "5", "CLEANUP", "COMPLETED")
_LOG_MIN, _LOG_MAX = math.log(0.002), math.log(10.0)


def random_phase_seconds(rng: random.Random) -> float:
    """A phase duration, log-uniform between 2 ms and 10 s."""
    return round(math.exp(rng.uniform(_LOG_MIN, _LOG_MAX)), 4)


@dataclass
class RestorePlan:
    """The randomized restores of one server (what the scenario scripts)."""

    server: str
    restores: list[dict[str, object]]
    #: Seconds after the simulator's start at which to restart it by hand.
    manual_restarts: list[tuple[float, float, float]] = field(default_factory=list)
    #: Seconds after the simulator's start at which to expire its sessions.
    expiries: list[float] = field(default_factory=list)


def random_restores(
    rng: random.Random,
    *,
    servers: int,
    per_server: int,
    prefix: str,
    latency: tuple[float, float] = (0.02, 0.2),
    observable_after: float = 3.0,
    max_total: float = 15.0,
    start_spread: float = 5.0,
) -> tuple[list[ServerGroup], list[RestorePlan]]:
    """Scenario groups with ``servers * per_server`` randomized restores.

    Phases last 2 ms to 10 s (log-uniform), each restore at most ``max_total`` s.
    Outcomes: ~70 % complete (then a restart of random length), ~20 % fail, ~10 %
    stall (a server's last). Restores that no poller could record exactly are
    redrawn (see :func:`observable`), so 100 % is a fair goal. A quarter of the
    servers have sessions that expire after 1.5 to 3 s unused; some get their
    sessions expired or are restarted by hand in the middle of a long phase.
    """
    groups: list[ServerGroup] = []
    plans: list[RestorePlan] = []
    for index in range(servers):
        name = f"{prefix}-{index + 1:03d}"
        keys: dict[str, object] = {
            "latency": round(rng.uniform(*latency), 3),
            "seed": index + 1,
        }
        if index % 4 == 1:
            keys["session_idle_timeout"] = round(rng.uniform(1.5, 3.0), 2)
        restores: list[dict[str, object]] = []
        plan = RestorePlan(name, restores)
        t = 0.0
        for r in range(per_server):
            last = r == per_server - 1
            roll = rng.random()
            outcome = (
                "stall" if last and roll < 0.1 else "fail" if roll < 0.3 else "complete"
            )
            idle = rng.uniform(observable_after, observable_after + 3.0)
            if r == 0:
                idle += rng.uniform(0.0, start_spread)
            while True:
                count = 7 if outcome == "complete" else rng.randint(1, 6)
                durations = [random_phase_seconds(rng) for _ in range(count)]
                if outcome == "stall":
                    durations[-1] = 0.0
                if sum(durations) <= max_total and observable(
                    durations, outcome, idle_window=observable_after
                ):
                    break
            restore: dict[str, object] = {"idle_before": round(idle, 3)}
            phases: list[list[float]] = [
                [code, seconds]
                for code, seconds in zip(range(1, 8), durations, strict=False)
            ]
            if outcome == "stall":
                phases[-1] = [count]
            restore["phases"] = phases
            restore["outcome"] = outcome
            starts = t + idle
            if outcome == "complete":
                down = round(rng.uniform(0.5, 4.0), 3)
                starting = round(rng.uniform(0.5, 3.0), 3)
                restore["restart_down"] = down
                restore["restart_starting"] = starting
                t = starts + sum(durations) + down + starting
            else:
                t = starts + sum(durations)
            restores.append(restore)
            if r == 0 and not plan.manual_restarts and not plan.expiries:
                _intervene(rng, plan, index, starts, durations, outcome)
            if outcome == "stall":
                break
        groups.append(ServerGroup(name, 1, keys, restores))
        plans.append(plan)
    return groups, plans


def observable(
    durations: Sequence[float],
    outcome: str,
    *,
    idle_window: float = 3.0,
    active_window: float = 1.5,
) -> bool:
    """Whether a poller at the benchmark's intervals can record this restore exactly.

    ``idle_window`` covers an idle poll (2 s, jitter, latency), ``active_window`` an
    active one (1 s, jitter, latency). A restore shorter than an idle poll can pass
    unseen; a failure's last phase must be seen (nothing tells where it failed);
    and CLEANUP plus COMPLETED must outlast an active poll, or the restart that
    follows looks exactly like a crash in the phase seen last (``restore/result``
    reads -1 after any restart).
    """
    if outcome == "stall":
        return True
    if sum(durations) < idle_window:
        return False
    if outcome == "fail":
        return durations[-1] >= active_window
    return durations[5] + durations[6] >= active_window


def _intervene(
    rng: random.Random,
    plan: RestorePlan,
    index: int,
    starts: float,
    durations: Sequence[float],
    outcome: str,
) -> None:
    """Maybe plan a manual restart or a session expiry mid-way through a long phase.

    Only in the first restore (later ones shift once the simulator re-plans), only in
    a phase of at least 4 s other than COMPLETED, at its middle: the watcher polls
    at least once a second while a restore runs, so it has seen that phase.
    """
    kind = index % 10
    if kind not in (3, 7):
        return
    at = starts
    for code, seconds in enumerate(durations, start=1):
        finite = outcome != "stall" or code < len(durations)
        if finite and code < 6 and seconds >= 4.0:
            middle = at + seconds / 2
            if kind == 3:
                plan.manual_restarts.append(
                    (
                        middle,
                        round(rng.uniform(0.5, 3.0), 2),
                        round(rng.uniform(0.5, 2.0), 2),
                    )
                )
            else:
                plan.expiries.append(middle)
            return
        at += seconds


# -- the audit log, the receiver ---------------------------------------------------------


class Tailer:
    """Follows the audit log in a thread; stamps each event id with when it appeared."""

    def __init__(self, path: Path, every: float = 0.005) -> None:
        self.path = path
        self.every = every
        self.first_seen: dict[str, float] = {}
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Tailer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def snapshot(self) -> list[dict[str, Any]]:
        """The events read so far, in file order."""
        with self._lock:
            return list(self.events)

    def _run(self) -> None:
        offset = 0
        pending = b""
        while not self._stop.is_set():
            try:
                size = os.stat(self.path).st_size
            except OSError:
                size = 0
            if size < offset:  # rotated or recreated
                offset, pending = 0, b""
            if size > offset:
                now = time.time()
                with open(self.path, "rb") as file:
                    file.seek(offset)
                    chunk = file.read(size - offset)
                offset += len(chunk)
                pending += chunk
                *complete, pending = pending.split(b"\n")
                with self._lock:
                    for raw in complete:
                        if raw.strip():
                            obj = json.loads(raw)
                            self.events.append(obj)
                            self.first_seen.setdefault(obj["id"], now)
            self._stop.wait(self.every)


class Receiver:
    """A webhook endpoint on 127.0.0.1 in threads; fails ``fail_rate`` of POSTs (500).

    ``first_received`` stamps each event id (the CloudEvent's ``id``) with the wall
    time of its first successful delivery; ``posts`` counts every POST per id.
    """

    def __init__(self, *, fail_rate: float = 0.0, seed: int = 7) -> None:
        self.fail_rate = fail_rate
        self.first_received: dict[str, float] = {}
        self.posts: Counter[str] = Counter()
        self.failed = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                now = time.time()
                status = receiver.accept(body, now)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where the sink posts."""
        return f"http://127.0.0.1:{self.port}/hook"

    def accept(self, body: bytes, now: float) -> int:
        """Record one POST; return the status to answer."""
        try:
            event_id = str(json.loads(body)["id"])
        except (ValueError, KeyError, TypeError):
            return 400
        with self._lock:
            self.posts[event_id] += 1
            if self.fail_rate and self._rng.random() < self.fail_rate:
                self.failed += 1
                return 500
            self.first_received.setdefault(event_id, now)
        return 200

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- comparison ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestoreRecord:
    """One restore as truth or the watcher has it: phases in order and how it ended."""

    phases: tuple[str, ...]
    outcome: str  # completed / failed / stalled / running


@dataclass
class Fidelity:
    """Truth vs recording over every server."""

    restores: int = 0
    exact: int = 0
    duplicates: int = 0
    mismatches: list[str] = field(default_factory=list)
    #: (server, restore index) -> wall time of the true COMPLETED / restart_begin.
    completed_at: dict[tuple[str, int], float] = field(default_factory=dict)
    completed_seconds: dict[tuple[str, int], float] = field(default_factory=dict)
    #: (server, restore index) -> seconds from its first phase to COMPLETED.
    running_seconds: dict[tuple[str, int], float] = field(default_factory=dict)
    #: (server, restore index) -> id of the recorded completed event.
    completed_ids: dict[tuple[str, int], str] = field(default_factory=dict)


def _wall(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def truth_restores(
    truth: Sequence[Mapping[str, Any]],
) -> dict[str, list[RestoreRecord]]:
    """Per server, the restores the simulator ran, in order."""
    phases: dict[tuple[str, int], list[str]] = defaultdict(list)
    outcome: dict[tuple[str, int], str] = {}
    order: dict[str, list[int]] = defaultdict(list)
    for line in truth:
        index = line.get("restore")
        if index is None:
            continue
        key = (str(line["server"]), int(index))
        if key[1] not in order[key[0]]:
            order[key[0]].append(key[1])
        kind = line["kind"]
        if kind == "phase" and line.get("phase") != "IDLE":
            phases[key].append(str(line["phase"]))
        elif kind in ("completed", "failed", "stalled") and key not in outcome:
            outcome[key] = kind
    return {
        server: [
            RestoreRecord(
                tuple(phases[(server, i)]), outcome.get((server, i), "running")
            )
            for i in indices
        ]
        for server, indices in order.items()
    }


def recorded_restores(
    events: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, list[RestoreRecord]], dict[str, list[str]], int]:
    """Per server, the restores in the audit log; the completed ids; duplicates."""
    ids = Counter(str(e["id"]) for e in events)
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    seen: set[str] = set()
    order: dict[str, list[str]] = defaultdict(list)
    phases: dict[str, list[str]] = defaultdict(list)
    outcome: dict[str, str] = {}
    completed_ids: dict[str, str] = {}
    for event in events:
        if event["id"] in seen:
            continue
        seen.add(str(event["id"]))
        data = event.get("data", {})
        restore = data.get("restore_id")
        kind = str(event["type"]).rsplit(".", 1)[-1]
        if restore is None or not str(event["type"]).startswith("sklm.restore."):
            continue
        server = str(data["server"])
        if restore not in order[server]:
            order[server].append(restore)
        if kind == "phase":
            if data["phase"] in phases[restore]:
                duplicates += 1
            phases[restore].append(str(data["phase"]))
        elif kind in ("completed", "failed", "stalled"):
            if kind in ("completed", "failed") and outcome.get(restore) in (
                "completed",
                "failed",
            ):
                duplicates += 1
            if kind == "completed":
                completed_ids[restore] = str(event["id"])
            if outcome.get(restore) != "completed" or kind != "stalled":
                outcome[restore] = kind
    records = {
        server: [
            RestoreRecord(tuple(phases[r]), outcome.get(r, "running")) for r in restores
        ]
        for server, restores in order.items()
    }
    completed = {
        server: [completed_ids.get(r, "") for r in restores]
        for server, restores in order.items()
    }
    return records, completed, duplicates


def compare(
    truth: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    servers: Sequence[str] | None = None,
) -> Fidelity:
    """Compare the recorded restores with the truth, restore by restore."""
    expected = truth_restores(truth)
    recorded, completed_ids, duplicates = recorded_restores(events)
    result = Fidelity(duplicates=duplicates)
    names = servers if servers is not None else sorted(expected)
    for server in names:
        want = expected.get(server, [])
        got = recorded.get(server, [])
        result.restores += len(want)
        for i, record in enumerate(want):
            have = got[i] if i < len(got) else None
            if have == record:
                result.exact += 1
            else:
                result.mismatches.append(
                    f"{server} restore {i}: truth {record.phases} {record.outcome}, "
                    f"recorded {have.phases if have else ()} "
                    f"{have.outcome if have else 'nothing'}"
                )
            if i < len(completed_ids.get(server, [])) and completed_ids[server][i]:
                result.completed_ids[(server, i)] = completed_ids[server][i]
        if len(got) > len(want):
            result.mismatches.append(
                f"{server}: {len(got) - len(want)} restores recorded that never ran"
            )
    starts: dict[tuple[str, int], float] = {}
    began: dict[tuple[str, int], float] = {}
    for line in truth:
        if line.get("restore") is None:
            continue
        key = (str(line["server"]), int(line["restore"]))
        if line["kind"] == "phase":
            began.setdefault(key, _wall(line["at"]))
        if line["kind"] == "completed":
            result.completed_at[key] = _wall(line["at"])
        elif line["kind"] == "restart_begin" and key in result.completed_at:
            starts.setdefault(key, _wall(line["at"]))
    for key, at in result.completed_at.items():
        if key in starts:
            result.completed_seconds[key] = starts[key] - at
        if key in began:
            result.running_seconds[key] = at - began[key]
    return result


def latencies(pairs: Mapping[Any, float], later: Mapping[Any, float]) -> list[float]:
    """``later[k] - pairs[k]`` for every key in both."""
    return [later[k] - v for k, v in pairs.items() if k in later]


# -- the naive fixed-interval poller (the baseline) ----------------------------------------


@dataclass
class NaiveRecord:
    """What a naive poller saw of one server: phase changes with their times."""

    changes: list[tuple[float, str]] = field(default_factory=list)


async def _naive_one(
    url: str,
    context: ssl.SSLContext,
    interval: float,
    record: NaiveRecord,
    stop: asyncio.Event,
    rng: random.Random,
) -> None:
    # A new connection (and TLS handshake) per poll: what `requests` does beyond
    # ten hosts, or a curl loop.
    await asyncio.sleep(interval * rng.random())
    api = url + "/SKLM/rest/v1/ckms"
    session_id: str | None = None
    timeout = aiohttp.ClientTimeout(total=5.0)
    while not stop.is_set():
        phase = "DOWN"
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, ssl=context),
                timeout=timeout,
            ) as http:
                if session_id is None:
                    async with http.post(
                        api + "/login",
                        json={"userid": "SKLMAdmin", "password": PASSWORD},
                    ) as reply:
                        session_id = (await reply.json(content_type=None))["UserAuthId"]
                async with http.get(
                    api + "/restore/progress",
                    headers={"Authorization": f"SKLMAuth userAuthId={session_id}"},
                ) as reply:
                    data = await reply.json(content_type=None)
                    if reply.status == 200:
                        phase = str(data["status"])
                    else:
                        session_id = None
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            session_id = None
        last = record.changes[-1][1] if record.changes else None
        if phase != last:
            record.changes.append((time.time(), phase))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


@dataclass
class NaiveSummary:
    """How the naive poller did against the truth."""

    restores: int
    exact: int
    phases_true: int
    phases_seen: int
    completed_true: int
    completed_seen: int
    detection: list[float]


def naive_summary(
    records: Mapping[str, NaiveRecord], truth: Sequence[Mapping[str, Any]]
) -> NaiveSummary:
    """Score the naive poller: it records only the phases it happened to see.

    Each true restore is matched with what the poller saw between its first phase
    and its end (failure, or the restart after COMPLETED).
    """
    expected = truth_restores(truth)
    began: dict[tuple[str, int], float] = {}
    ended: dict[tuple[str, int], float] = {}
    completed_at: dict[tuple[str, int], float] = {}
    for line in truth:
        if line.get("restore") is None:
            continue
        key = (str(line["server"]), int(line["restore"]))
        at = _wall(line["at"])
        if line["kind"] == "phase":
            began.setdefault(key, at)
        elif line["kind"] == "completed":
            completed_at[key] = at
        elif line["kind"] in ("failed", "restart_begin"):
            ended.setdefault(key, at)
    out = NaiveSummary(0, 0, 0, 0, 0, 0, [])
    for server, restores in expected.items():
        changes = records.get(server, NaiveRecord()).changes
        for i, truth_record in enumerate(restores):
            key = (server, i)
            start, end = began.get(key, math.inf), ended.get(key, math.inf)
            # A poll answered up to ~latency after the change it reports.
            got = [
                (at, p)
                for at, p in changes
                if start <= at <= end + 0.3 and p not in ("IDLE", "DOWN")
            ]
            names = tuple(p for _, p in got)
            out.restores += 1
            out.phases_true += len(truth_record.phases)
            out.phases_seen += len(set(names) & set(truth_record.phases))
            if names == truth_record.phases:
                out.exact += 1
            if truth_record.outcome == "completed":
                out.completed_true += 1
                hits = [at for at, p in got if p == "COMPLETED"]
                if hits and key in completed_at:
                    out.completed_seen += 1
                    out.detection.append(hits[0] - completed_at[key])
    return out


async def run_naive(
    urls: Mapping[str, str],
    ca_file: Path,
    *,
    interval: float,
    stop: asyncio.Event,
) -> dict[str, NaiveRecord]:
    """Poll every server every ``interval`` s until ``stop``; return what it saw."""
    context = ssl.create_default_context(cafile=str(ca_file))
    records = {name: NaiveRecord() for name in urls}
    rng = random.Random(3)
    await asyncio.gather(
        *(
            _naive_one(url, context, interval, records[name], stop, rng)
            for name, url in urls.items()
        )
    )
    return records


class NaiveThread:
    """The naive poller on its own event loop in a thread (start, then stop)."""

    def __init__(self, urls: Mapping[str, str], ca_file: Path, interval: float) -> None:
        self.urls = dict(urls)
        self.ca_file = ca_file
        self.interval = interval
        self.records: dict[str, NaiveRecord] = {}
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            self._ready.set()
            self.records = await run_naive(
                self.urls, self.ca_file, interval=self.interval, stop=self._stop
            )

        self._loop.run_until_complete(main())
        self._loop.close()

    def start(self) -> None:
        """Start polling."""
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        """Stop polling and wait for the thread (bounded)."""
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=15)


def percentiles(values: Sequence[float]) -> str:
    """``p50 / p99 / max`` in seconds."""
    if not values:
        return "n/a"
    return (
        f"p50 {percentile(values, 50):.3f} s, p99 {percentile(values, 99):.3f} s, "
        f"max {max(values):.3f} s"
    )
