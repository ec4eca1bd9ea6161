"""``sklm-watcher demo``: the simulator, the daemon and a console, on loopback.

A newcomer with no SKLM anywhere sees the watcher follow a fleet of restores: the
built-in simulator plays the shipped ``demo`` scenario over HTTPS (TLS verified
against the simulator's own CA), the real daemon watches it with a real journal in a
temporary state directory, every event is printed as it is delivered, and at the end
each server's record is compared with the simulator's ground truth.

Without trustme (a plain ``pip install``) the simulator speaks plain HTTP on loopback,
said in one line. SIGINT / SIGTERM are the demo's, not the daemon's: Ctrl-C ends it at
once with what was recorded so far and no verdict (a restore cut short is not a
mismatch), exit 128 + the signal number.
"""

from __future__ import annotations

import signal
import ssl
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import anyio

from watcher.config import Listen
from watcher.configfile import load_config
from watcher.daemon import Daemon
from watcher.events import Event, EventType
from watcher.phases import Phase
from watcher.simulator import (
    Simulator,
    TlsUnavailableError,
    load_scenario,
    make_tls,
    scenario_path,
    write_watcher_config,
)

#: The demo ends by itself after this long even if an outcome never showed.
MAX_SECONDS: Final = 55.0

#: Where the demo's dashboard listens: loopback, on a port the system picks (so two
#: demos, or a demo beside a running daemon, never collide).
DASHBOARD_LISTEN: Final = Listen("127.0.0.1", 0)

_MARKS: Final = {
    EventType.RESTORE_STARTED: "▶ restore started",
    EventType.RESTORE_COMPLETED: "✔ restore completed",
    EventType.RESTORE_FAILED: "✘ restore failed",
    EventType.RESTORE_STALLED: "⚠ restore stalled",
    EventType.SERVER_UNREACHABLE: "✘ server unreachable",
    EventType.SERVER_RECOVERED: "✔ server answering again",
    EventType.SERVER_RESTARTED: "↻ server restarted after the restore",
    EventType.AUTH_FAILED: "✘ credentials rejected",
}

#: Which event ends a scripted restore, by the scenario's ``outcome``.
_OUTCOME_EVENT: Final = {
    "complete": EventType.SERVER_RESTARTED,
    "fail": EventType.RESTORE_FAILED,
    "stall": EventType.RESTORE_STALLED,
}


class ConsoleSink:
    """A sink that prints each event as one line a person reads at a glance."""

    def __init__(self, out: TextIO, started_at: datetime) -> None:
        self.name = "console"
        self._out = out
        self._started_at = started_at
        self.seen: dict[str, list[Event]] = defaultdict(list)
        self.changed = anyio.Event()

    async def deliver(self, event: Event) -> None:
        """Print the event and remember it."""
        self.seen[event.server].append(event)
        print(self.line(event), file=self._out, flush=True)
        self.changed.set()
        self.changed = anyio.Event()

    def line(self, event: Event) -> str:
        """The event as one console line: elapsed time, server, what happened."""
        elapsed = (event.time - self._started_at).total_seconds()
        data = event.data
        if event.type is EventType.RESTORE_PHASE:
            phase = Phase[str(data["phase"])]
            how = "inferred (passed between two polls)" if data["inferred"] else "seen"
            text = f"  · {phase.name:<21} {int(phase)}/7  {how}"
        else:
            text = _MARKS.get(event.type, str(event.type))
            if event.type in (EventType.RESTORE_COMPLETED, EventType.RESTORE_FAILED):
                if data.get("duration") is not None:
                    text += f" in {float(data['duration']):.1f} s"
                if data.get("reason"):
                    text += f": {data['reason']}"
            elif event.type is EventType.RESTORE_STALLED:
                text += f" in {data.get('phase')} for {float(data.get('stalled_for') or 0):.1f} s"
            elif event.type is EventType.SERVER_RESTARTED and data.get("down_for"):
                text += f" (away {float(data['down_for']):.1f} s)"
        return f"{elapsed:7.2f}s  {event.server:<14} {text}"


@dataclass(frozen=True, slots=True)
class TruthCheck:
    """One server's recorded phases compared with the simulator's ground truth."""

    server: str
    truth: tuple[str, ...]
    recorded: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether the watcher recorded exactly the phases that really happened."""
        return self.truth == self.recorded


def compare_with_truth(
    events: Iterable[Event], truth: Iterable[Mapping[str, Any]]
) -> dict[str, TruthCheck]:
    """Compare the phase events per server with the ground truth's phase lines."""
    true_phases: dict[str, list[str]] = defaultdict(list)
    for line in truth:
        if line.get("kind") == "phase" and line.get("phase") != "IDLE":
            true_phases[str(line["server"])].append(str(line["phase"]))
    recorded: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if event.type is EventType.RESTORE_PHASE:
            recorded[event.server].append(str(event.data["phase"]))
    servers = sorted(set(true_phases) | set(recorded))
    return {
        s: TruthCheck(s, tuple(true_phases[s]), tuple(recorded[s])) for s in servers
    }


def summary_rows(events: Sequence[Event], servers: Sequence[str]) -> list[list[str]]:
    """One row per server: outcome, phases observed / inferred, restore duration."""
    rows = []
    for server in servers:
        mine = [e for e in events if e.server == server]
        phases = [e for e in mine if e.type is EventType.RESTORE_PHASE]
        inferred = sum(1 for e in phases if e.data["inferred"])
        outcome, duration = "idle", "-"
        for event in mine:
            if event.type is EventType.RESTORE_STARTED:
                outcome = "running"
            elif event.type is EventType.RESTORE_COMPLETED:
                outcome = "completed"
                duration = f"{float(event.data.get('duration') or 0):.1f} s"
            elif event.type is EventType.RESTORE_FAILED:
                outcome = "failed"
                duration = f"{float(event.data.get('duration') or 0):.1f} s"
            elif event.type is EventType.RESTORE_STALLED and outcome == "running":
                outcome = f"stalled in {event.data.get('phase')}"
            elif event.type is EventType.SERVER_RESTARTED:
                outcome = "completed, restarted"
        rows.append(
            [server, outcome, f"{len(phases) - inferred} / {inferred}", duration]
        )
    return rows


async def run(
    *,
    keep: Path | None = None,
    keep_running: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run the demo and return its exit code.

    0 when every server's record matches the ground truth, 1 when one does not, and
    128 + the signal's number (130 for Ctrl-C) when SIGINT or SIGTERM ends it before
    the scripted restores have. With ``keep_running`` the daemon goes on watching the
    fleet after the summary; SIGINT / SIGTERM then end it with the verdict's code.
    With ``keep`` the state, audit log and configuration stay in that directory;
    otherwise they live in a temporary one, removed on exit.
    """
    stream = out if out is not None else sys.stdout
    interrupt = _Interrupt()
    # The demo, not the daemon, owns SIGINT / SIGTERM: Ctrl-C must also end the wait
    # for the scripted outcomes, not only the daemon's polling.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(interrupt.watch, signals)
            if keep is not None:
                workdir = Path(await anyio.Path(keep).resolve())
                await anyio.Path(workdir).mkdir(parents=True, exist_ok=True)
                code = await _run_in(
                    workdir, stream, interrupt, keep_running, kept=True
                )
            else:
                with tempfile.TemporaryDirectory(prefix="sklm-watcher-demo-") as tmp:
                    code = await _run_in(
                        Path(tmp), stream, interrupt, keep_running, kept=False
                    )
            tg.cancel_scope.cancel()
    return code


class _Interrupt:
    """SIGINT / SIGTERM as the demo sees them: they cancel what it is waiting for."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._scope: anyio.CancelScope | None = None

    async def watch(self, signals: AsyncIterator[int]) -> None:
        """Record the first signal and cancel the guarded scope on every one."""
        # Reading on after the first signal: a second Ctrl-C during the (bounded)
        # shutdown must not become a KeyboardInterrupt traceback.
        async for signum in signals:
            if self.signum is None:
                self.signum = signum
            if self._scope is not None:
                self._scope.cancel()

    def guard(self, scope: anyio.CancelScope) -> anyio.CancelScope:
        """Make ``scope`` the one a signal cancels (at once if one came already)."""
        self._scope = scope
        if self.signum is not None:
            scope.cancel()
        return scope


async def _run_in(
    workdir: Path,
    out: TextIO,
    interrupt: _Interrupt,
    keep_running: bool,
    *,
    kept: bool,
) -> int:
    scenario = load_scenario(scenario_path("demo"))
    ca_file: Path | None = None
    server_tls: ssl.SSLContext | None = None
    try:
        ca_pem, server_tls, _ = make_tls()
    except TlsUnavailableError:
        # A plain `pip install sklm-watcher` has no trustme (it is in the simulator
        # extra); loopback HTTP still shows everything the demo is about.
        print(
            "sklm-watcher demo: trustme is not installed, so the simulated servers "
            "speak plain HTTP on 127.0.0.1 (pip install 'sklm-watcher[simulator]' "
            "for HTTPS)",
            file=out,
        )
    else:
        ca_file = workdir / "simulator-ca.pem"
        ca_file.write_bytes(ca_pem)
    truth_file = workdir / "ground-truth.jsonl"
    truth_file.unlink(missing_ok=True)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    async with Simulator(
        scenario, ssl_context=server_tls, ground_truth=truth_file
    ) as simulator:
        config_file = workdir / "watcher.toml"
        write_watcher_config(
            simulator, config_file, state_dir=workdir / "state", ca_file=ca_file
        )
        # The generated file has no [[sinks]] (the demo adds its console), so the
        # loader's "no sinks" warning does not apply here.
        config = replace(load_config(config_file), warnings=())
        config = replace(
            config, watcher=replace(config.watcher, listen=DASHBOARD_LISTEN)
        )
        console = ConsoleSink(out, started_at)
        names = [s.name for s in config.servers]
        how = (
            "over plain HTTP"
            if ca_file is None
            else f"over HTTPS (TLS verified with {ca_file.name})"
        )
        print(
            f"sklm-watcher demo: {len(names)} simulated SKLM servers {how}; "
            f"state in {workdir}",
            file=out,
        )
        daemon = Daemon(
            config, extra_sinks={console.name: console}, handle_signals=False
        )
        expected = {
            spec.name: [_OUTCOME_EVENT[r.outcome] for r in spec.restores]
            for spec in scenario.servers
        }
        code: int | None = None
        dashboard = "not listening yet"
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with interrupt.guard(anyio.CancelScope()), anyio.move_on_after(MAX_SECONDS):
                dashboard = await _dashboard_url(daemon)
                print(f"dashboard: {dashboard} (live while the demo runs)", file=out)
                print(
                    "Events as the watcher records them (Ctrl-C ends early):\n",
                    file=out,
                    flush=True,
                )
                while not _all_seen(console.seen, expected):
                    await console.changed.wait()
            if interrupt.signum is None and keep_running:
                # Reported while the daemon runs on: the audit log is read up to
                # its last complete line.
                code = _report(out, workdir, names, simulator.truth)
                _say_keep_running(out, workdir, config_file, dashboard)
                with interrupt.guard(anyio.CancelScope()):
                    await anyio.sleep_forever()
                print("\nStopped.", file=out)
            daemon.stop()
        truth = simulator.truth
    if code is None:
        if interrupt.signum is None:
            code = _report(out, workdir, names, truth)
        else:
            code = 128 + interrupt.signum
            _report_interrupted(
                out, workdir, names, time.monotonic() - started, interrupt.signum
            )
    print(_where_state_is(workdir, kept=kept), file=out, flush=True)
    return code


def _report(
    out: TextIO, workdir: Path, names: Sequence[str], truth: Iterable[Mapping[str, Any]]
) -> int:
    """Print the summary and the check against ground truth; 0 if it matches, else 1."""
    events = daemon_events(workdir)
    print("\nSummary", file=out)
    _print_rows(
        out,
        ["SERVER", "OUTCOME", "PHASES SEEN / INFERRED", "RESTORE TOOK"],
        summary_rows(events, names),
    )
    checks = compare_with_truth(events, truth)
    bad = [c for c in checks.values() if not c.ok]
    verdict = "match" if not bad else "DIFFER FROM"
    print(
        f"\nThe recorded phases {verdict} the simulator's ground truth "
        f"({len(checks) - len(bad)}/{len(checks)} servers).",
        file=out,
    )
    for check in bad:
        print(
            f"  {check.server}: truth {check.truth}, recorded {check.recorded}",
            file=out,
        )
    for name in names:
        if name not in checks:
            print(
                f"  {name}: not counted: no restore ran on it (it stayed IDLE), "
                "so there were no phases to compare",
                file=out,
            )
    out.flush()
    return 0 if not bad else 1


def _report_interrupted(
    out: TextIO, workdir: Path, names: Sequence[str], after: float, signum: int
) -> None:
    """Print what was recorded before a signal ended the demo, without a verdict."""
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    print(
        f"\nInterrupted ({name}) after {after:.1f} s, before the scripted restores "
        "had ended.",
        file=out,
    )
    print("\nSummary so far", file=out)
    _print_rows(
        out,
        ["SERVER", "OUTCOME", "PHASES SEEN / INFERRED", "RESTORE TOOK"],
        summary_rows(daemon_events(workdir), names),
    )
    print(
        "\nThe record is not compared with the simulator's ground truth: "
        "the restores had not ended.",
        file=out,
    )


async def _dashboard_url(daemon: Daemon) -> str:
    """The dashboard's address, once the daemon listens (it binds before it polls)."""
    # The daemon picks the port (DASHBOARD_LISTEN asks for any free one) and says
    # which in ``listening``; it binds before the first poll, so this is short. No
    # event to wait on exists before run() has begun (wait_started() raises then),
    # hence the poll. If the daemon fails to start, its task's error cancels it.
    while daemon.listening is None:  # noqa: ASYNC110
        await anyio.sleep(0.01)
    host, port = daemon.listening
    return f"http://{host}:{port}/"


def _say_keep_running(
    out: TextIO, workdir: Path, config_file: Path, dashboard: str
) -> None:
    print(
        "\n--keep-running: the watcher goes on watching the simulated fleet; "
        "Ctrl-C ends it.\n"
        f"  dashboard:   {dashboard}\n"
        f"  audit log:   {workdir / 'state' / 'events.jsonl'}\n"
        f"  look at it:  sklm-watcher status -c {config_file}",
        file=out,
        flush=True,
    )


def _where_state_is(workdir: Path, *, kept: bool) -> str:
    """The closing line: where the audit log is, if it is still there."""
    audit = workdir / "state" / "events.jsonl"
    if not kept:
        return (
            "The state and audit log were in a temporary directory, now removed; "
            "sklm-watcher demo --keep DIR keeps them."
        )
    if audit.exists():
        return f"Audit log: {audit}"
    return f"No event was recorded, so there is no audit log; state in {workdir}"


def daemon_events(workdir: Path) -> list[Event]:
    """The events the demo's daemon wrote to its audit log, in order.

    A last line without its newline (the daemon is still writing it) is left out.
    """
    path = workdir / "state" / "events.jsonl"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return [Event.from_json(line) for line in complete.splitlines() if line.strip()]


def _all_seen(
    seen: Mapping[str, Sequence[Event]], expected: Mapping[str, Sequence[EventType]]
) -> bool:
    for server, outcomes in expected.items():
        types = [e.type for e in seen.get(server, ())]
        if any(types.count(t) < outcomes.count(t) for t in outcomes):
            return False
    return True


def _print_rows(
    out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)),
            file=out,
        )
