"""Dashboard benchmark of sklm-watcher (issue 14): page, JSON API, live stream.

``python tests/benchmark/bench_dashboard.py [--quick]`` (with the project's venv Python).

One simulator process (TLS, 20-200 ms per answer) serves 5,000 idle servers plus 200
that restore for the whole run (long phases, so a phase changes every few seconds
somewhere); ``sklm-watcher run`` watches them with ``[watcher] listen`` on
``127.0.0.1:0`` (the port is read from its ``service.listening`` log line). The
daemon runs pinned to CPU 0, the simulator to CPU 1 (``--no-pin`` to let them float);
Chromium and this process share the machine; on a machine shared with other
work ``--no-pin`` gives steadier figures (the published ones). Everything stays on
127.0.0.1. After
every server has had its first poll (one idle interval), four figures:

- **first paint of ``/``**: headless Debian Chromium (``/usr/bin/chromium`` driven by
  Playwright, a fresh profile) loads the fleet view, several times; measured in the
  page by an init script: first-contentful-paint (the empty shell), the first
  meaningful paint, what the goal is judged on (the counts and the first screenful of
  rows in the DOM, ``document.body.dataset.firstRows``, plus the next animation
  frame; the rows inside the viewport then are counted, a screenful must be there),
  and every row in the DOM (``dataset.ready`` plus the next frame; the rest of the
  rows are built in chunks between frames after the first screenful).
- **``/api/status``**: sequential GETs with aiohttp on a warm keep-alive connection;
  the server's own time from a ``Server-Timing`` header when the daemon sends one,
  otherwise the client's round trip on loopback (an upper bound; the report says
  which).
- **20 stream clients**: daemon CPU (``/proc``) in alternating windows without and
  with 20 aiohttp readers on ``/api/events/stream`` (same run, same fleet): the extra
  share of one core is mean(with) - mean(without).
- **event journaled -> visible**: the audit log is tailed every 5 ms (the time each
  event line appears = journaled); a MutationObserver injected into the open fleet
  page stamps, per server row, each new ``data-phase`` (at the next animation frame,
  i.e. when it is painted). Each observed (not inferred) ``sklm.restore.phase`` event
  is matched with the first time its server's row shows that phase.

``--quick`` (under ~2 minutes): the same 5,200-server fleet, fewer and shorter
windows. Exit 0 when every goal passed, 1 when one was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from tests.benchmark.bench_fleet import LATENCIES, idle_groups, machine
from tests.benchmark.common import (
    PY,
    Child,
    Children,
    ServerGroup,
    SimFleet,
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
from tests.benchmark.fidelity import Tailer

DAEMON_CPUS = {0}
SIM_CPUS = {1}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
SSE_CLIENTS = 20
#: How much earlier than its audit-log line a phase may appear on the page and still
#: be matched with it (the page shows the daemon's state, the journal may trail it).
EARLY = 20.0

#: Runs in every page before its own scripts (CDP, so the page's CSP does not apply):
#: records when each stream message arrived, and stamps the moment ``body.dataset.firstRows`` (the counts and the first screenful of
#: rows are in the DOM) and ``body.dataset.ready`` (every row is) become "true", and
#: the next animation frame after each (when it is painted), plus how many rows were
#: in the DOM and inside the viewport at the first one.
READY_PROBE = """
(() => {
  // When each stream message arrived (wall-clock ms by its id = auditseq): the
  // stream's share of journaled -> visible.
  const arrived = window.__sseAt = new Map();
  const Real = window.EventSource;
  window.EventSource = class extends Real {
    constructor(url, init) {
      super(url, init);
      this.addEventListener("message", (m) => {
        if (!arrived.has(m.lastEventId)) {
          arrived.set(m.lastEventId, performance.timeOrigin + performance.now());
        }
      });
    }
  };
  // Every /api/status fetch: [url, sent, answered] (performance.now() ms).
  const fetches = window.__fetches = [];
  const realFetch = window.fetch;
  window.fetch = function (url, init) {
    const entry = [String(url), performance.now(), null];
    if (entry[0].includes("/api/status")) fetches.push(entry);
    const pending = realFetch.call(this, url, init);
    pending.then(() => { entry[2] = performance.now(); }, () => {});
    return pending;
  };
  const b = window.__bench = {first: null, firstFrame: null, firstRows: null,
                              firstVisible: null, ready: null, frame: null};
  const visible = () => {
    let n = 0;
    for (const row of document.querySelectorAll("[data-server]")) {
      const r = row.getBoundingClientRect();
      if (r.bottom > 0 && r.top < innerHeight) n += 1;
    }
    return n;
  };
  const seen = () => {
    if (!document.body) return;
    const data = document.body.dataset;
    if (b.first === null && data.firstRows === "true") {
      b.first = performance.now();
      b.firstRows = document.querySelectorAll("[data-server]").length;
      requestAnimationFrame(() => {
        b.firstFrame = performance.now();
        b.firstVisible = visible();
      });
    }
    if (b.ready === null && data.ready === "true") {
      b.ready = performance.now();
      requestAnimationFrame(() => { b.frame = performance.now(); });
    }
  };
  new MutationObserver(seen).observe(document, {
    subtree: true, childList: true, attributes: true,
    attributeFilter: ["data-ready", "data-first-rows"],
  });
})();
"""

#: Injected into the open fleet page: every change of a row's ``data-phase`` (also a
#: row replaced as a whole), stamped in wall-clock milliseconds at the next frame.
PHASE_PROBE = """
(() => {
  const last = new Map();
  const out = [];
  window.__phases = out;
  for (const row of document.querySelectorAll("[data-server]")) {
    last.set(row.dataset.server, row.dataset.phase || "");
  }
  const pending = [];
  let frame = false;
  const flush = () => {
    frame = false;
    const at = performance.timeOrigin + performance.now();
    for (const [server, phase, domAt] of pending.splice(0)) out.push([server, phase, domAt, at]);
  };
  const look = (row) => {
    const server = row.dataset.server;
    const phase = row.dataset.phase || "";
    if (last.get(server) === phase) return;
    last.set(server, phase);
    pending.push([server, phase, performance.timeOrigin + performance.now()]);
    if (!frame) { frame = true; requestAnimationFrame(flush); }
  };
  new MutationObserver((records) => {
    for (const r of records) {
      const t = r.target;
      if (r.type === "attributes" || r.type === "characterData") {
        const el = t.nodeType === 1 ? t : t.parentElement;
        const row = el && el.closest("[data-server]");
        if (row) look(row);
      } else {
        for (const n of r.addedNodes) {
          if (n.nodeType !== 1) continue;
          if (n.matches("[data-server]")) look(n);
          for (const row of n.querySelectorAll("[data-server]")) look(row);
        }
      }
    }
  }).observe(document.body, {subtree: true, childList: true, attributes: true,
                             attributeFilter: ["data-phase", "data-server"]});
})();
"""


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and durations of one run."""

    quick: bool
    idle: int
    idle_interval: float
    busy: int
    phase_seconds: tuple[float, float]
    restores_per_busy: int
    paint_runs: int
    api_requests: int
    cpu_windows: int
    cpu_seconds: float
    latency_seconds: float

    @classmethod
    def make(cls, quick: bool, servers: int) -> Plan:
        """The quick plan (under ~2 minutes) or the full one (the published figures)."""
        if quick:
            return cls(True, servers, 30.0, 200, (4.0, 10.0), 6, 3, 15, 5, 5.0, 15.0)
        return cls(False, servers, 30.0, 200, (8.0, 20.0), 4, 7, 50, 9, 15.0, 60.0)


@dataclass
class Row:
    """One line of the result table."""

    figure: str
    measured: str
    goal: str
    verdict: str


@dataclass
class Run:
    """What the parts share."""

    plan: Plan
    workdir: Path
    base: str
    daemon: Child
    fleet: SimFleet
    total: int
    py_spy: bool = False
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, figure: str, measured: str, goal: str, ok: bool | None) -> None:
        """Add a table row; ``ok`` None means informational."""
        verdict = "info" if ok is None else "PASS" if ok else "MISS"
        self.rows.append(Row(figure, measured, goal, verdict))
        say(f"  -> {figure}: {measured}  [{goal}: {verdict}]")


# -- the fleet -------------------------------------------------------------------------


def busy_groups(plan: Plan) -> list[ServerGroup]:
    """Servers restoring for the whole run: restores of 7 long phases, back to back."""
    rng = random.Random(14)
    low, high = plan.phase_seconds
    groups = []
    for i in range(plan.busy):
        restores = []
        for k in range(plan.restores_per_busy):
            phases = [[code, round(rng.uniform(low, high), 2)] for code in range(1, 8)]
            restores.append(
                {
                    # The first restores start during the first idle interval,
                    # spread out; the next ones follow within seconds.
                    "idle_before": round(
                        rng.uniform(0.0, 3.0)
                        if k
                        else rng.uniform(5.0, plan.idle_interval),
                        2,
                    ),
                    "phases": phases,
                    "restart_down": 1.0,
                    "restart_starting": 1.0,
                }
            )
        groups.append(
            ServerGroup(
                f"busy-{i + 1:03d}",
                1,
                {"latency": LATENCIES[i % len(LATENCIES)], "seed": 2000 + i},
                restores,
            )
        )
    return groups


def start_daemon(
    children: Children, config: Path, flags: Sequence[str], pin: bool
) -> tuple[Child, str]:
    """``sklm-watcher run``; wait for ``daemon.started``; return it and its base URL."""
    args = [PY, "-m", "tests.benchmark.launch", *flags]
    args += ["--", "--log-format", "json", "run", "-c", str(config)]
    child = children.start("daemon", args, cpus=DAEMON_CPUS if pin else None)
    err = child.stderr_path or Path()
    wait_file(err, "daemon.started", timeout=120, child=child)
    line = wait_file(err, "service.listening", timeout=10, child=child)
    record = json.loads(line)
    return child, f"http://{record['host']}:{record['port']}"


# -- /api/status -----------------------------------------------------------------------


def _server_timing(header: str | None) -> float | None:
    """Seconds from a ``Server-Timing`` header (the sum of its ``dur`` values)."""
    if not header:
        return None
    total, found = 0.0, False
    for metric in header.split(","):
        for param in metric.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key == "dur":
                with contextlib.suppress(ValueError):
                    total += float(value.strip('"')) / 1000.0
                    found = True
    return total if found else None


async def part_api(run: Run) -> None:
    """Sequential GETs of /api/status on one warm connection."""
    plan = run.plan
    say(f"\n[api] GET /api/status x {plan.api_requests}, one keep-alive connection")
    rtts: list[float] = []
    server: list[float] = []
    rows = size = 0
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(plan.api_requests + 3):
            started = time.perf_counter()
            async with session.get(run.base + "/api/status") as response:
                body = await response.read()
                took = time.perf_counter() - started
                response.raise_for_status()
                timing = _server_timing(response.headers.get("Server-Timing"))
            if i < 3:  # warm-up: connection, first serialisation
                continue
            rtts.append(took)
            if timing is not None:
                server.append(timing)
            size = len(body)
            rows = len(json.loads(body))
    p50, p95, worst = (percentile(rtts, q) for q in (50, 95, 100))
    rtt = f"round trip p50 {p50 * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms, max {worst * 1e3:.1f} ms"
    detail = f"{rows} rows, {size / 1e6:.2f} MB, n={len(rtts)}"
    if server:
        s50, s95 = percentile(server, 50), percentile(server, 95)
        measured = (
            f"server time (Server-Timing) p50 {s50 * 1e3:.1f} ms, p95 {s95 * 1e3:.1f} "
            f"ms; {rtt}; {detail}"
        )
        ok = s50 < 0.050
    else:
        measured = (
            f"{rtt} (no Server-Timing header: client round trip on loopback); {detail}"
        )
        ok = p50 < 0.050
    run.row(f"/api/status for {rows} servers", measured, "< 50 ms server time", ok)
    if rows != run.total:
        run.notes.append(f"/api/status had {rows} rows, the fleet {run.total} servers")


# -- the stream clients ------------------------------------------------------------------


async def _reader(
    session: aiohttp.ClientSession, url: str, counts: list[int], i: int
) -> None:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"id:"):
                counts[i] += 1


async def part_stream_cpu(run: Run) -> None:
    """Daemon CPU without and with 20 SSE readers, alternating windows."""
    plan = run.plan
    say(
        f"\n[stream] daemon CPU, {plan.cpu_windows} alternating windows of "
        f"{plan.cpu_seconds:.0f} s: none / {SSE_CLIENTS} stream clients"
    )
    shares: list[float] = []
    sim_shares: list[float] = []
    delivered = 0
    tail = Tailer(run.workdir / "state" / "events.jsonl")
    url = run.base + "/api/events/stream"
    with tail:
        for w in range(plan.cpu_windows):
            connected = w % 2 == 1
            counts = [0] * SSE_CLIENTS
            tasks: list[asyncio.Task[None]] = []
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=SSE_CLIENTS + 1)
            )
            try:
                if connected:
                    tasks = [
                        asyncio.create_task(_reader(session, url, counts, i))
                        for i in range(SSE_CLIENTS)
                    ]
                await asyncio.sleep(1.0)  # connected (or torn down) and settled
                journaled = len(tail.snapshot())
                sim = run.fleet.children[0].pid
                spy = _py_spy(run, f"stream-w{w + 1}") if run.py_spy else None
                a, before, sa = sample(run.daemon.pid), list(counts), sample(sim)
                await asyncio.sleep(plan.cpu_seconds)
                b, after, sb = sample(run.daemon.pid), list(counts), sample(sim)
                if spy is not None:
                    await asyncio.to_thread(spy.wait)
                events = len(tail.snapshot()) - journaled
                got = [y - x for x, y in zip(before, after, strict=True)]
                share = (b.cpu - a.cpu) / (b.at - a.at)
                sim_share = (sb.cpu - sa.cpu) / (sb.at - sa.at)
                for task in tasks:
                    if task.done() and task.exception() is not None:
                        raise RuntimeError(
                            f"stream client failed: {task.exception()!r}"
                        )
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await session.close()
            shares.append(share)
            sim_shares.append(sim_share)
            if connected:
                delivered += min(got)
            say(
                f"  window {w + 1}: {'with' if connected else 'no  '} clients  "
                f"daemon {share:6.1%}  simulator {sim_share:6.1%}  events journaled {events}"
                + (f", each client got >= {min(got)}" if connected else "")
            )
    # Each window with clients against the mean of the two without around it: the
    # event rate (phase changes) and the machine's load drift over the run.
    extras = [
        shares[w] - (shares[w - 1] + shares[w + 1]) / 2
        for w in range(1, len(shares) - 1, 2)
    ]
    extra = statistics.median(extras)
    without = shares[0::2]
    with_clients = shares[1::2]
    # The fleet's restore waves move the daemon's and the simulator's shares together
    # (the simulator knows nothing of stream clients): the daemon's share expected
    # from the simulator's, by their ratio in the windows without clients, against
    # what it was with them. Printed beside the figure, not judged.
    ratio = statistics.median(
        d / m for d, m in zip(shares[0::2], sim_shares[0::2], strict=True) if m > 0
    )
    scaled = statistics.median(
        d - ratio * m for d, m in zip(shares[1::2], sim_shares[1::2], strict=True)
    )
    run.row(
        f"{SSE_CLIENTS} stream clients on a {run.total}-server fleet with "
        f"{plan.busy} restoring: extra daemon CPU",
        f"{extra:+.1%} of one core (median of {len(extras)} pairs, {min(extras):+.1%} "
        f"to {max(extras):+.1%}; without {statistics.fmean(without):.1%}, with "
        f"{statistics.fmean(with_clients):.1%}; {plan.cpu_windows} windows of "
        f"{plan.cpu_seconds:.0f} s; {delivered} events per client while connected; "
        f"against the share the simulator's predicts: {scaled:+.1%})",
        "<= 5 % of one core",
        extra <= 0.05 and delivered > 0,
    )


def _py_spy(run: Run, name: str) -> subprocess.Popen[bytes]:
    """``py-spy record`` of the daemon for one window (collapsed stacks, --keep)."""
    out = run.workdir / f"py-spy-{name}.txt"
    args = [str(Path(PY).with_name("py-spy")), "record", "-p", str(run.daemon.pid)]
    args += ["-d", str(int(run.plan.cpu_seconds)), "-r", "200", "--format", "raw"]
    return subprocess.Popen(
        [*args, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# -- the browser -------------------------------------------------------------------------


async def part_browser(run: Run) -> None:
    """First paint of / (several loads) and journaled -> visible latency."""
    from playwright.async_api import async_playwright

    plan = run.plan
    profile = run.workdir / "chromium-profile"
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport={"width": 1280, "height": 900},
        )
        try:
            await context.add_init_script(READY_PROBE)
            await _paint(run, context)
            await _latency(run, context)
        finally:
            await context.close()
    del plan


async def _wait_painted(page: Any, seconds: float = 60.0) -> None:
    """Until the ready probe stamped the frame after ``dataset.ready``.

    Polled from here: Playwright's ``wait_for_function`` evaluates a string, which
    the page's CSP (no ``unsafe-eval``) forbids; ``evaluate`` goes through the
    DevTools protocol instead. The times are stamped in the page, so the polling
    interval does not enter them.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # navigating: no context yet
            if await page.evaluate(
                "!!(window.__bench && window.__bench.frame !== null)"
            ):
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the page set no body.dataset.ready in {seconds:.0f} s")


async def _paint(run: Run, context: Any) -> None:
    plan = run.plan
    say(
        f"\n[paint] / with {run.total} servers, {plan.paint_runs} loads (first is cold)"
    )
    fcps: list[float] = []
    firsts: list[float] = []
    readies: list[float] = []
    screenful: list[int] = []
    for i in range(plan.paint_runs):
        page = await context.new_page()
        try:
            await page.goto(run.base + "/", wait_until="commit")
            await _wait_painted(page)
            got = await page.evaluate(
                """() => ({
                  fcp: (performance.getEntriesByName('first-contentful-paint')[0]
                        || {startTime: null}).startTime,
                  ready: window.__bench.ready, frame: window.__bench.frame,
                  first: window.__bench.firstFrame,
                  firstRows: window.__bench.firstRows,
                  firstVisible: window.__bench.firstVisible,
                  rows: document.querySelectorAll('[data-server]').length,
                  api: (performance.getEntriesByType('resource')
                        .filter(e => e.name.endsWith('/api/status'))
                        .map(e => [e.startTime, e.responseStart, e.responseEnd]))[0]
                       || null,
                })"""
            )
        finally:
            await page.close()
        first = got["first"]
        say(
            f"  load {i + 1}: first-contentful-paint {got['fcp']} ms, "
            + (
                f"first rows painted {first:.0f} ms ({got['firstRows']} in the DOM, "
                f"{got['firstVisible']} in view), "
                if first is not None
                else "no first-rows mark, "
            )
            + f"every row: ready {got['ready']:.0f} ms, painted {got['frame']:.0f} ms, "
            f"{got['rows']} rows"
            + (
                " (first /api/status: sent {:.0f}, first byte {:.0f}, "
                "last byte {:.0f} ms)".format(*got["api"])
                if got["api"]
                else ""
            )
        )
        if i == 0:
            continue  # cold: Chromium's own start-up (profile, compositor) included
        if got["fcp"] is not None:
            fcps.append(got["fcp"] / 1000.0)
        readies.append(got["frame"] / 1000.0)
        # A page without the first-rows mark is judged on every row painted.
        firsts.append((first if first is not None else got["frame"]) / 1000.0)
        screenful.append(int(got["firstVisible"] or 0))
        if got["rows"] < run.total:
            run.notes.append(
                f"load {i + 1}: {got['rows']} rows for {run.total} servers"
            )
    fcp = statistics.median(fcps) if fcps else math.nan
    ready = statistics.median(readies)
    first = statistics.median(firsts)
    # A screenful: the viewport (900 px) holds ~17 rows of 46 px below the counts.
    full = min(screenful) >= min(10, run.total)
    run.row(
        f"/ with {run.total} servers: time to first paint in headless Chromium",
        f"counts and first screenful of rows painted {first:.2f} s (median of "
        f"{len(firsts)} warm loads, {min(firsts):.2f} to {max(firsts):.2f}; "
        f">= {min(screenful)} rows in view); every row in the DOM and painted "
        f"{ready:.2f} s ({min(readies):.2f} to {max(readies):.2f}); "
        f"first-contentful-paint (the shell) {fcp:.2f} s",
        "< 1 s",
        first < 1.0 and full,
    )


async def _latency(run: Run, context: Any) -> None:
    plan = run.plan
    say(f"\n[latency] journaled -> visible on /, {plan.latency_seconds:.0f} s")
    page = await context.new_page()
    errors: list[str] = []
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if msg.type == "error" else None,
    )
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    tail = Tailer(run.workdir / "state" / "events.jsonl")
    try:
        await page.goto(run.base + "/", wait_until="commit")
        await _wait_painted(page)
        with tail:
            await page.evaluate(PHASE_PROBE)
            armed = time.time()
            await asyncio.sleep(plan.latency_seconds)
            # What was journaled in the window gets 3 s more to show.
            until = time.time()
            await asyncio.sleep(3.0)
            seen: list[list[Any]] = await page.evaluate("window.__phases")
            arrived: dict[str, float] = await page.evaluate(
                "Object.fromEntries(window.__sseAt)"
            )
            fetches: list[list[Any]] = await page.evaluate("window.__fetches")
            state = await page.evaluate(
                "(document.getElementById('stream-state') || {dataset: {}}).dataset.state"
            )
            events = tail.snapshot()
            first_seen = dict(tail.first_seen)
    finally:
        await page.close()
    some = [f for f in fetches if "?" in f[0] and f[2] is not None]
    whole = [f for f in fetches if "?" not in f[0]]
    if some:
        rtt = [(f[2] - f[1]) / 1000.0 for f in some]
        say(
            f"  the page fetched {len(some)} rows by name (answer p50 "
            f"{percentile(rtt, 50):.3f} s, p99 {percentile(rtt, 99):.3f} s) and the "
            f"whole fleet {len(whole)} times"
        )
    if errors:
        run.notes.append(
            f"the latency page logged {len(errors)} errors, first: {errors[0][:200]}"
        )
    shown: dict[str, list[tuple[str, float, float]]] = {}
    for server, phase, dom_at, frame_at in seen:
        shown.setdefault(server, []).append((phase, dom_at / 1000.0, frame_at / 1000.0))
    latencies: list[float] = []
    dom_latencies: list[float] = []
    stream_latencies: list[float] = []
    missing = 0
    for event in events:
        data = event.get("data") or {}
        if event.get("type") != "sklm.restore.phase" or data.get("inferred"):
            continue
        journaled = first_seen.get(event["id"])
        if journaled is None or not armed + 0.5 <= journaled <= until:
            continue
        delivered = arrived.get(str(event.get("auditseq")))
        if delivered is not None:
            stream_latencies.append(delivered / 1000.0 - journaled)
        # The page shows the daemon's state, which a journal write may trail: a
        # phase can be on the page before its line is in the audit log (a negative
        # latency, counted). A server enters the same phase again only in its next
        # restore, a minute or more later.
        match = next(
            (
                (dom, frame)
                for phase, dom, frame in shown.get(data.get("server", ""), [])
                if phase == data.get("phase") and dom >= journaled - EARLY
            ),
            None,
        )
        if match is None:
            missing += 1
            if missing <= 3:
                say(
                    f"  never shown: {data.get('server')} {data.get('phase')} "
                    f"journaled {journaled:.3f}; the row showed "
                    f"{shown.get(data.get('server', ''), [])[-4:]}"
                )
            continue
        dom_latencies.append(match[0] - journaled)
        latencies.append(match[1] - journaled)
    early = sum(1 for x in latencies if x < 0)
    p50, p99, worst = (percentile(latencies, q) for q in (50, 99, 100))
    d99 = percentile(dom_latencies, 99)
    s50, s99 = (
        (percentile(stream_latencies, q) for q in (50, 99))
        if stream_latencies
        else (math.nan, math.nan)
    )
    run.row(
        "event journaled -> visible in the page (p99)",
        f"p99 {p99:.3f} s, p50 {p50:.3f} s, max {worst:.3f} s (n={len(latencies)}, "
        f"{missing} never shown, {early} shown before journaled; DOM updated p99 "
        f"{d99:.3f} s; of which the stream: message in the page p50 {s50:.3f} s, "
        f"p99 {s99:.3f} s; stream {state})",
        "< 1 s",
        bool(latencies) and p99 < 1.0 and missing == 0,
    )


# -- report --------------------------------------------------------------------------------


def print_table(run: Run, started: float, pin: bool) -> None:
    """The result table (Markdown), with date, machine and mode."""
    mode = "QUICK (short windows)" if run.plan.quick else "full"
    say("")
    say(
        f"## sklm-watcher dashboard benchmark, {mode}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {time.monotonic() - started:.0f} s"
    )
    say(f"Machine: {machine()}")
    pinned = "daemon on CPU 0, simulator on CPU 1" if pin else "not pinned"
    say(f"Processes: {pinned}; Chromium and the benchmark process share the machine.")
    say("")
    say("| figure | measured | goal | |")
    say("| --- | --- | --- | --- |")
    for row in run.rows:
        say(f"| {row.figure} | {row.measured} | {row.goal} | {row.verdict} |")
    for note in run.notes:
        say(f"\nNote: {note}")


async def settle(run: Run, at_least: float, at_most: float = 300.0) -> None:
    """Until the fleet is in steady state, at least ``at_least`` s after start-up.

    Steady state: every server answered a poll (its TLS handshake done) and the
    journal keeps up (the newest audit-log line is an event of the last 3 s). At
    start-up each server's first poll writes a journal row, one fsync each, one
    after another; on a busy disk that queue takes a while to drain.
    """
    started = time.monotonic()
    log = run.workdir / "state" / "events.jsonl"
    polled, lag = 0, math.inf
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < at_most:
            await asyncio.sleep(2.0)
            async with session.get(run.base + "/api/status") as response:
                rows = await response.json()
            polled = sum(1 for r in rows if r.get("last_ok_at"))
            lag = _journal_lag(log)
            if (
                time.monotonic() - started >= at_least
                and polled == run.total
                and lag < 3.0
            ):
                say(
                    f"  steady after {time.monotonic() - started:.0f} s: "
                    f"{polled}/{run.total} polled, journal lag {lag:.1f} s"
                )
                return
    # Measured all the same (the figures then show it), and said so.
    note = (
        f"no steady state in {at_most:.0f} s: {polled}/{run.total} servers polled, "
        f"journal lag {lag:.1f} s; measured anyway"
    )
    say(f"  {note}")
    run.notes.append(note)


def _journal_lag(path: Path) -> float:
    """Seconds between now and the event time of the audit log's last line."""
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - 8192))
            lines = file.read().splitlines()
    except OSError:
        return math.inf
    for raw in reversed(lines):
        with contextlib.suppress(ValueError, KeyError):
            stamp = json.loads(raw)["time"].replace("Z", "+00:00")
            return time.time() - datetime.fromisoformat(stamp).timestamp()
    return math.inf


async def measure(run: Run, parts: set[str], warm: float) -> None:
    """Wait for steady state, then run the asked parts: api, stream CPU, browser."""
    await settle(run, warm)
    for name, part in (
        ("api", part_api),
        ("stream", part_stream_cpu),
        ("browser", part_browser),
    ):
        if name not in parts:
            continue
        try:
            await part(run)
        except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others
            say(f"  {name} FAILED: {exc!r}")
            run.rows.append(Row(f"{name} part", f"failed: {exc}"[:200], "runs", "MISS"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every goal passed, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="under ~2 minutes")
    parser.add_argument("--servers", type=int, default=5000, help="idle servers")
    parser.add_argument(
        "--parts", default="api,stream,browser", help="subset of api,stream,browser"
    )
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="record the daemon with py-spy in each stream window (files in --keep)",
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick, args.servers)
    parts = set(args.parts.split(","))
    started = time.monotonic()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="sklm-bench-dash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    children = Children(workdir)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    say(
        f"sklm-watcher dashboard benchmark ({'quick' if plan.quick else 'full'}); work in {workdir}"
    )
    say(f"Machine: {machine()}")
    rows: list[Row] = []
    try:
        tls: Tls = make_tls(workdir)
        groups, _ = idle_groups(plan.idle, "idle")
        groups += busy_groups(plan)
        scenario = workdir / "scenario.toml"
        write_scenario(scenario, groups, "benchmark: dashboard fleet")
        fleet = start_fleet(children, [scenario], tls, cpus=SIM_CPUS if pin else None)
        total = len(fleet.urls)
        config = workdir / "watcher.toml"
        write_config(
            config,
            fleet.urls,
            state_dir=workdir / "state",
            tls=tls,
            defaults={
                "idle_interval": plan.idle_interval,
                "active_interval": 1.0,
                "timeout": 10.0,
                "stall_after": 3600.0,
            },
            watcher={"listen": "127.0.0.1:0"},
        )
        daemon, base = start_daemon(children, config, args.daemon_flag, pin)
        say(
            f"[fleet] {plan.idle} idle at {plan.idle_interval:.0f} s + {plan.busy} "
            f"restoring (TLS, 20-200 ms); daemon at {base}"
        )
        run = Run(plan, workdir, base, daemon, fleet, total, py_spy=args.py_spy)
        try:
            asyncio.run(measure(run, parts, plan.idle_interval + 2.0))
        finally:
            rows = run.rows
            print_table(run, started, pin)
    finally:
        children.stop_all()
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if rows and all(r.verdict != "MISS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
