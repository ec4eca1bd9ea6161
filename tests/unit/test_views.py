"""Views over a journal filled with real tracker output, and the audit chain check."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from watcher.audit import (
    ANCHOR_MISMATCH,
    CHANGED,
    GENESIS_HASH,
    LAST_MISMATCH,
    NO_PREVHASH,
    NOT_JSON,
    REMOVED_OR_REORDERED,
    AuditFault,
    AuditVerdict,
    verify_audit,
)
from watcher.config import ServerConfig, SinkConfig
from watcher.events import Event, format_time, stable_id
from watcher.phases import Phase
from watcher.store.sqlite import SqliteStore as Journal
from watcher.tracker import Failure, Health, Observation, ServerState, step
from watcher.views import (
    FollowPhase,
    FollowView,
    Outcome,
    RestoreRow,
    ServerStatusRow,
    events,
    fleet_status,
    follow_outcome,
    follow_state,
    render_follow,
    render_table,
    restores,
)

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
P = Phase
UNREACHABLE = Failure.UNREACHABLE
AUTH = Failure.AUTH
Script = Sequence[tuple[float, Phase | Failure]]


def at(seconds: float) -> datetime:
    """T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def rid(server: str, seconds: float) -> str:
    """The id the tracker gives a restore first seen at T0 + ``seconds``."""
    return stable_id(server, "restore", at(seconds).strftime("%Y-%m-%dT%H:%M:%S.000Z"))


class Feed:
    """Drives the real tracker for one server and records as the scheduler would."""

    def __init__(self, journal: Journal, name: str) -> None:
        self.journal = journal
        self.config = ServerConfig(
            name=name,
            url="http://127.0.0.1:9",
            stall_after=60.0,
            restart_timeout=30.0,
            unreachable_after=10.0,
        )
        self.state = ServerState()

    def run(self, script: Script) -> None:
        """Feed each ``(seconds, phase or failure)``; record when the step says so."""
        for seconds, outcome in script:
            kw: dict[str, Any] = (
                {"phase": outcome}
                if isinstance(outcome, Phase)
                else {"failure": outcome, "detail": "connection refused"}
            )
            obs = Observation(at=at(seconds), monotonic=float(seconds), **kw)
            result = step(self.config, self.state, obs)
            self.state = result.state
            if result.save:
                self.journal.record(
                    self.config.name, self.state.to_dict(), result.events
                )


# prod-1: a restore with missed phases, COMPLETED, the restart, back.
PROD: Script = [
    (0, P.IDLE),
    (10, P.INITIALIZE),
    (12, P.RESTORE_CONFIG_FILES),
    (20, P.RESTORE_DATABASES),
    (30, P.COMPLETED),
    (32, UNREACHABLE),
    (34, UNREACHABLE),
    (40, P.IDLE),
]
# lab-1: drops back to IDLE from CREATE_TEMP_DIR: failed.
LAB: Script = [(0, P.IDLE), (5, P.INITIALIZE), (7, P.CREATE_TEMP_DIR), (9, P.IDLE)]
# dr-1: already restoring at start-up, then stuck in RESTORE_KEYSTORES.
DR: Script = [(0, P.INITIALIZE), (50, P.RESTORE_KEYSTORES), (120, P.RESTORE_KEYSTORES)]
# gone-1: COMPLETED (all but INITIALIZE missed), then never comes back.
GONE: Script = [
    (0, P.IDLE),
    (1, P.INITIALIZE),
    (3, P.COMPLETED),
    (5, UNREACHABLE),
    (40, UNREACHABLE),
]
# auth-1: credentials rejected from the first poll.
AUTHS: Script = [(0, AUTH)]

LAB_REASON = (
    "progress went from CREATE_TEMP_DIR back to IDLE without reaching COMPLETED"
)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """A journal holding the five scripted servers' real events and states."""
    with Journal.open(
        tmp_path / "state", tmp_path / "events.jsonl", [SinkConfig("ops", "webhook")]
    ) as opened:
        for name, script in [
            ("prod-1", PROD),
            ("lab-1", LAB),
            ("dr-1", DR),
            ("gone-1", GONE),
            ("auth-1", AUTHS),
        ]:
            Feed(opened, name).run(script)
        yield opened


def plain(rows: Any) -> str:
    """What render_table prints without colour."""
    out = io.StringIO()
    render_table(rows, console_file=out, color=False)
    return out.getvalue()


# --- status ---------------------------------------------------------------------


def test_fleet_status_rows(journal: Journal) -> None:
    """Each configured server gets a row from its stored state; unknown ones say so."""
    names = ["prod-1", "lab-1", "dr-1", "gone-1", "auth-1", "new-1"]

    rows = fleet_status(journal, at(200), names)
    # The time of the newest stored state (the journal stamps it when written).
    stored = journal.last_state_update()

    assert stored is not None
    assert rows == [
        ServerStatusRow(
            server="prod-1",
            health=Health.OK,
            phase=P.IDLE,
            phase_since=at(40),
            in_phase_for=160.0,
            restore_id=rid("prod-1", 10),
            last_ok_at=at(40),
            as_of=stored,
        ),
        ServerStatusRow(
            server="lab-1",
            health=Health.OK,
            phase=P.IDLE,
            phase_since=at(9),
            in_phase_for=191.0,
            restore_id=rid("lab-1", 5),
            last_ok_at=at(9),
            as_of=stored,
        ),
        ServerStatusRow(
            server="dr-1",
            health=Health.OK,
            phase=P.RESTORE_KEYSTORES,
            phase_since=at(50),
            in_phase_for=150.0,
            restore_id=rid("dr-1", 0),
            restore_active=True,
            restore_since=at(0),
            last_ok_at=at(120),
            as_of=stored,
            stalled=True,
        ),
        ServerStatusRow(
            server="gone-1",
            health=Health.UNREACHABLE,
            phase=P.COMPLETED,
            phase_since=at(3),
            in_phase_for=197.0,
            restore_id=rid("gone-1", 1),
            last_ok_at=at(3),
            failures=2,
            last_error="connection refused",
            last_failure="unreachable",
            as_of=stored,
        ),
        ServerStatusRow(
            server="auth-1",
            health=Health.AUTH_FAILED,
            last_error="connection refused",
            last_failure="auth",
            as_of=stored,
        ),
        ServerStatusRow(server="new-1", health=Health.UNKNOWN, as_of=stored),
    ]
    assert [r.server for r in fleet_status(journal, at(200))] == sorted(names[:-1])


def test_fleet_status_while_restarting(tmp_path: Path) -> None:
    """After COMPLETED and before the server is back, its health is restarting."""
    with Journal.open(tmp_path / "s", tmp_path / "e.jsonl", []) as journal:
        Feed(journal, "prod-1").run(PROD[:6])
        (row,) = fleet_status(journal, at(33), ["prod-1"])

    assert row.health is Health.RESTARTING
    assert row.failures == 1


def test_status_json_and_text(journal: Journal) -> None:
    """A status row's JSON has the documented keys and the table aligns columns."""
    rows = fleet_status(journal, at(200), ["dr-1", "auth-1"])
    stored = journal.last_state_update()

    assert stored is not None
    assert rows[0].to_json() == {
        "server": "dr-1",
        "health": "ok",
        "phase": "RESTORE_KEYSTORES",
        "code": 4,
        "step": "4/7",
        "phase_since": "2026-11-29T10:00:50.000Z",
        "in_phase_for": 150.0,
        "restore_id": rid("dr-1", 0),
        "restore_active": True,
        "restore_since": "2026-11-29T10:00:00.000Z",
        "last_ok_at": "2026-11-29T10:02:00.000Z",
        "failures": 0,
        "last_error": None,
        "last_failure": None,
        "daemon_running": None,
        "as_of": format_time(stored),
        "stalled": True,
    }
    assert rows[1].to_json()["health"] == "auth_failed"
    assert plain(rows) == (
        "SERVER  HEALTH       PHASE              STEP  IN PHASE  RESTORE SINCE         LAST OK               REASON\n"
        "dr-1    ok           RESTORE_KEYSTORES  4/7   2m30s     2026-11-29 10:00:00Z  2026-11-29 10:02:00Z  -\n"
        "auth-1  auth_failed  -                  -     -         -                     -                     connection refused\n"
    )


# --- restores -------------------------------------------------------------------

PROD_ROW = RestoreRow(
    server="prod-1",
    restore_id=rid("prod-1", 10),
    outcome=Outcome.COMPLETED,
    started_at=at(10),
    ended_at=at(30),
    duration=20.0,
    last_phase=P.COMPLETED,
    phases_observed=4,
    phases_inferred=3,
    restarted=True,
)
LAB_ROW = RestoreRow(
    server="lab-1",
    restore_id=rid("lab-1", 5),
    outcome=Outcome.FAILED,
    started_at=at(5),
    ended_at=at(9),
    duration=4.0,
    last_phase=P.CREATE_TEMP_DIR,
    phases_observed=2,
    reason=LAB_REASON,
)
DR_ROW = RestoreRow(
    server="dr-1",
    restore_id=rid("dr-1", 0),
    outcome=Outcome.STALLED,
    started_at=at(0),
    last_phase=P.RESTORE_KEYSTORES,
    phases_observed=2,
    phases_inferred=2,
)
GONE_ROW = RestoreRow(
    server="gone-1",
    restore_id=rid("gone-1", 1),
    outcome=Outcome.COMPLETED,
    started_at=at(1),
    ended_at=at(3),
    duration=2.0,
    last_phase=P.COMPLETED,
    phases_observed=2,
    phases_inferred=5,
)


def test_restores_rows(journal: Journal) -> None:
    """One row per restore with outcome, times and observed/inferred phase counts."""
    assert restores(journal) == [PROD_ROW, LAB_ROW, DR_ROW, GONE_ROW]
    assert restores(journal, server="lab-1") == [LAB_ROW]
    assert restores(journal, since=at(10)) == [PROD_ROW, DR_ROW]


def test_running_restore_row(tmp_path: Path) -> None:
    """A restore without an end and without a current stall is running."""
    with Journal.open(tmp_path / "s", tmp_path / "e.jsonl", []) as journal:
        Feed(journal, "prod-1").run(PROD[:3])
        assert restores(journal) == [
            RestoreRow(
                server="prod-1",
                restore_id=rid("prod-1", 10),
                outcome=Outcome.RUNNING,
                started_at=at(10),
                last_phase=P.RESTORE_CONFIG_FILES,
                phases_observed=2,
                phases_inferred=1,
            )
        ]


def test_restore_json_and_text(journal: Journal) -> None:
    """A restore row's JSON has the documented keys; the table shortens the id."""
    assert LAB_ROW.to_json() == {
        "server": "lab-1",
        "restore_id": rid("lab-1", 5),
        "outcome": "failed",
        "started_at": "2026-11-29T10:00:05.000Z",
        "ended_at": "2026-11-29T10:00:09.000Z",
        "duration": 4.0,
        "last_phase": "CREATE_TEMP_DIR",
        "phases_observed": 2,
        "phases_inferred": 0,
        "restarted": False,
        "reason": LAB_REASON,
    }
    short = rid("prod-1", 10)[:8]
    assert plain(restores(journal, server="prod-1")) == (
        "SERVER  RESTORE   STARTED               ENDED                 DURATION  OUTCOME    OBSERVED  INFERRED\n"
        f"prod-1  {short}  2026-11-29 10:00:10Z  2026-11-29 10:00:30Z  20s       completed  4         3\n"
    )


# --- events ---------------------------------------------------------------------


def test_events_view_filters_and_renders(journal: Journal) -> None:
    """events() passes the filters through; rows render a detail and JSON as CloudEvents."""
    rows = events(journal, server="lab-1", type_glob="sklm.restore.*", since=at(7))
    stored = journal.events(server="lab-1")

    assert [r.event for r in rows] == stored[-2:]
    assert [r.to_json() for r in rows] == [e.to_dict() for e in stored[-2:]]
    assert plain(rows) == (
        "TIME                  SERVER  TYPE                 DETAIL\n"
        "2026-11-29 10:00:07Z  lab-1   sklm.restore.phase   CREATE_TEMP_DIR\n"
        f"2026-11-29 10:00:09Z  lab-1   sklm.restore.failed  {LAB_REASON}\n"
    )


def test_event_row_details(journal: Journal) -> None:
    """Inferred phases, stalls, restarts and auth failures get a readable detail."""
    details = {
        (r.event.server, str(r.event.type), r.cells()[3]) for r in events(journal)
    }

    assert ("prod-1", "sklm.restore.phase", "CLEANUP (inferred)") in details
    assert ("prod-1", "sklm.server.restarted", "down 8.0s") in details
    assert ("dr-1", "sklm.restore.stalled", "RESTORE_KEYSTORES for 1m10s") in details
    assert ("auth-1", "sklm.auth.failed", "connection refused") in details


def test_empty_table() -> None:
    """Rendering no rows says so instead of printing a bare header."""
    assert plain([]) == "(nothing to show)\n"


def test_colour_table_uses_rich() -> None:
    """With colour the table is drawn by rich, with ANSI styles."""
    out = io.StringIO()
    render_table(
        [ServerStatusRow("a", Health.UNREACHABLE)], console_file=out, color=True
    )

    assert "\x1b[" in out.getvalue()
    assert "unreachable" in out.getvalue()


# --- follow ---------------------------------------------------------------------


def test_follow_completed_and_back(journal: Journal) -> None:
    """The timeline has each phase's duration, inferred ones marked, and ends with 0."""
    view = follow_state(journal, "prod-1")

    assert view == FollowView(
        server="prod-1",
        health=Health.OK,
        restore_id=rid("prod-1", 10),
        outcome=Outcome.COMPLETED,
        started_at=at(10),
        ended_at=at(30),
        phases=(
            FollowPhase(P.INITIALIZE, False, at(10), 2.0),
            FollowPhase(P.CREATE_TEMP_DIR, True, at(12), 0.0),
            FollowPhase(P.RESTORE_CONFIG_FILES, False, at(12), 8.0),
            FollowPhase(P.RESTORE_KEYSTORES, True, at(20), 0.0),
            FollowPhase(P.RESTORE_DATABASES, False, at(20), 10.0),
            FollowPhase(P.CLEANUP, True, at(30), 0.0),
            FollowPhase(P.COMPLETED, False, at(30), None),
        ),
        current_phase=P.IDLE,
        current_since=at(40),
        server_back=True,
    )
    assert follow_outcome(view) == 0


def test_follow_outcomes(journal: Journal) -> None:
    """Failed and not-back end with 1; stalled and no restore keep following."""
    lab = follow_state(journal, "lab-1")
    gone = follow_state(journal, "gone-1")
    dr = follow_state(journal, "dr-1")
    nothing = follow_state(journal, "auth-1")

    assert (lab.outcome, lab.reason, lab.phases[-1]) == (
        Outcome.FAILED,
        LAB_REASON,
        FollowPhase(P.CREATE_TEMP_DIR, False, at(7), 2.0),
    )
    assert (gone.outcome, gone.server_back, gone.health) == (
        Outcome.COMPLETED,
        False,
        Health.UNREACHABLE,
    )
    assert (dr.outcome, dr.current_phase, dr.current_since) == (
        Outcome.STALLED,
        P.RESTORE_KEYSTORES,
        at(50),
    )
    assert dr.phases[-1] == FollowPhase(P.RESTORE_KEYSTORES, False, at(50), None)
    assert nothing == FollowView(server="auth-1", health=Health.AUTH_FAILED)
    assert [follow_outcome(v) for v in (lab, gone, dr, nothing)] == [1, 1, None, None]


def test_follow_outcome_waits_for_the_restart(tmp_path: Path) -> None:
    """Follow keeps going through the phases and the restart, and ends once it is back."""
    outcomes = []
    with Journal.open(tmp_path / "s", tmp_path / "e.jsonl", []) as journal:
        feed = Feed(journal, "prod-1")
        for n in range(1, len(PROD) + 1):
            feed.run(PROD[n - 1 : n])
            view = follow_state(journal, "prod-1")
            outcomes.append((view.outcome, view.server_back, follow_outcome(view)))

    assert outcomes == [
        (None, None, None),  # IDLE: no restore yet
        (Outcome.RUNNING, None, None),
        (Outcome.RUNNING, None, None),
        (Outcome.RUNNING, None, None),
        (Outcome.COMPLETED, None, None),  # waiting for the restart
        (Outcome.COMPLETED, None, None),  # gone
        (Outcome.COMPLETED, None, None),
        (Outcome.COMPLETED, True, 0),  # back
    ]


def test_follow_json_and_text(journal: Journal) -> None:
    """The follow view's JSON has the documented keys; the text shows the timeline."""
    view = follow_state(journal, "lab-1")
    out = io.StringIO()
    render_follow(view, console_file=out, color=False)

    assert view.to_json() == {
        "server": "lab-1",
        "restore_id": rid("lab-1", 5),
        "outcome": "failed",
        "started_at": "2026-11-29T10:00:05.000Z",
        "ended_at": "2026-11-29T10:00:09.000Z",
        "reason": LAB_REASON,
        "current_phase": "IDLE",
        "current_since": "2026-11-29T10:00:09.000Z",
        "server_back": None,
        "health": "ok",
        "phases": [
            {
                "phase": "INITIALIZE",
                "code": 1,
                "inferred": False,
                "entered_at": "2026-11-29T10:00:05.000Z",
                "duration": 2.0,
            },
            {
                "phase": "CREATE_TEMP_DIR",
                "code": 2,
                "inferred": False,
                "entered_at": "2026-11-29T10:00:07.000Z",
                "duration": 2.0,
            },
        ],
    }
    assert out.getvalue() == (
        f"lab-1: restore {rid('lab-1', 5)[:8]} (failed)\n"
        "  1/7 INITIALIZE                         2026-11-29 10:00:05Z  2.0s\n"
        "  2/7 CREATE_TEMP_DIR                    2026-11-29 10:00:07Z  2.0s\n"
        f"  failed: {LAB_REASON}\n"
    )


# --- audit verify ---------------------------------------------------------------


def sha(line: bytes) -> str:
    """The chain's hash of one line."""
    return hashlib.sha256(line).hexdigest()


def edit_lines(path: Path, edit: Any) -> None:
    """Rewrite ``path`` with ``edit(list of line bytes)`` applied."""
    lines = path.read_bytes().splitlines()
    edit(lines)
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def fault(path: Path, line: int, reason: str) -> AuditFault:
    """Shorthand."""
    return AuditFault(path, line, reason)


def test_verify_passes_an_untouched_log(journal: Journal) -> None:
    """Every line of a log the journal wrote chains from the genesis anchor."""
    lines = journal.audit_log.read_bytes().splitlines()
    position = journal.audit_position()
    assert position is not None

    verdict = verify_audit([journal.audit_log], expect_last_hash=position.hash)

    assert len(lines) == len(journal.events()) > 20
    assert verdict == AuditVerdict(
        ok=True, lines=len(lines), anchor=GENESIS_HASH, last_hash=sha(lines[-1])
    )
    assert position.hash == sha(lines[-1])
    assert verdict.to_json() == {
        "ok": True,
        "lines": len(lines),
        "anchor": GENESIS_HASH,
        "last_hash": sha(lines[-1]),
        "first_bad": None,
    }


def test_verify_names_a_changed_line(journal: Journal) -> None:
    """One byte changed in line 5 is reported at line 5 of that file."""
    path = journal.audit_log

    def change(lines: list[bytes]) -> None:
        assert b'"server":"prod-1"' in lines[4]
        lines[4] = lines[4].replace(b'"server":"prod-1"', b'"server":"prod-2"', 1)

    edit_lines(path, change)
    verdict = verify_audit([path])

    assert (verdict.ok, verdict.lines, verdict.first_bad) == (
        False,
        4,
        fault(path, 5, CHANGED),
    )
    assert verdict.to_json()["first_bad"] == {
        "file": str(path),
        "line": 5,
        "reason": CHANGED,
    }


def test_verify_names_a_removed_line(journal: Journal) -> None:
    """A removed line is reported where the gap is."""
    path = journal.audit_log
    edit_lines(path, lambda lines: lines.pop(6))

    assert verify_audit([path]).first_bad == fault(path, 7, REMOVED_OR_REORDERED)


def test_verify_names_swapped_lines(journal: Journal) -> None:
    """Two swapped lines are reported at the first of them."""
    path = journal.audit_log

    def swap(lines: list[bytes]) -> None:
        lines[7], lines[8] = lines[8], lines[7]

    edit_lines(path, swap)

    assert verify_audit([path]).first_bad == fault(path, 8, REMOVED_OR_REORDERED)


def test_verify_names_a_line_that_is_not_json(journal: Journal) -> None:
    """A line that does not parse is named as such; an unchained event line too."""
    path = journal.audit_log
    plain_event = journal.events()[0].to_json().encode()

    def unchain(lines: list[bytes]) -> None:
        lines[9] = plain_event

    def truncate(lines: list[bytes]) -> None:
        lines[2] = lines[2][:-1]

    edit_lines(path, unchain)
    assert verify_audit([path]).first_bad == fault(path, 10, NO_PREVHASH)
    edit_lines(path, truncate)
    assert verify_audit([path]).first_bad == fault(path, 3, NOT_JSON)


def test_verify_needs_the_journal_for_the_last_line(journal: Journal) -> None:
    """A changed last line passes the chain alone but not the journal's last hash."""
    path = journal.audit_log
    position = journal.audit_position()
    assert position is not None

    def change(lines: list[bytes]) -> None:
        lines[-1] = lines[-1].replace(b'"server":"', b'"server":"x', 1)

    edit_lines(path, change)
    count = len(path.read_bytes().splitlines())

    assert verify_audit([path]).ok
    assert verify_audit([path], expect_last_hash=position.hash).first_bad == fault(
        path, count, LAST_MISMATCH
    )


def test_rotation_while_running_keeps_the_chain(tmp_path: Path) -> None:
    """After logrotate renames the file the next record starts a new file that chains on."""
    log = tmp_path / "events.jsonl"
    old = tmp_path / "events.jsonl.1"
    with Journal.open(tmp_path / "state", log, []) as journal:
        Feed(journal, "lab-1").run(LAB)
        log.rename(old)
        Feed(journal, "prod-1").run(PROD)
    old_lines = old.read_bytes().splitlines()
    new_lines = log.read_bytes().splitlines()

    both = verify_audit([old, log])
    alone = verify_audit([log])

    assert both == AuditVerdict(
        ok=True,
        lines=len(old_lines) + len(new_lines),
        anchor=GENESIS_HASH,
        last_hash=sha(new_lines[-1]),
    )
    assert alone == AuditVerdict(
        ok=True,
        lines=len(new_lines),
        anchor=sha(old_lines[-1]),
        last_hash=sha(new_lines[-1]),
    )
    assert verify_audit([log], anchor=GENESIS_HASH).first_bad == fault(
        log, 1, ANCHOR_MISMATCH
    )
    assert len(old_lines) == 4
    assert b'"auditseq":5,' in new_lines[0]

    edit_lines(old, lambda lines: lines.pop())
    assert verify_audit([old, log]).first_bad == fault(log, 1, REMOVED_OR_REORDERED)


def test_copytruncate_and_sighup_reopen_keep_the_chain(tmp_path: Path) -> None:
    """A log copied and truncated in place, or reopened on SIGHUP, chains on."""
    log = tmp_path / "events.jsonl"
    first = tmp_path / "events.jsonl.2"
    second = tmp_path / "events.jsonl.1"
    with Journal.open(tmp_path / "state", log, []) as journal:
        feed = Feed(journal, "prod-1")
        feed.run(PROD[:3])
        first.write_bytes(log.read_bytes())
        log.write_bytes(b"")  # copytruncate
        feed.run(PROD[3:5])
        log.rename(second)
        journal.reopen_audit_log()  # SIGHUP after the move
        assert log.read_bytes() == b""
        feed.run(PROD[5:])

    verdict = verify_audit([first, second, log])

    assert verdict.ok, verdict
    assert verdict.lines == len(journal_events(tmp_path)) == 10
    assert all(len(p.read_bytes().splitlines()) > 0 for p in (first, second, log))


def journal_events(tmp_path: Path) -> list[Event]:
    """The events stored in the journal under ``tmp_path/state``."""
    with Journal.open(
        tmp_path / "state", tmp_path / "events.jsonl", [], read_only=True
    ) as view:
        return view.events()


def test_reconcile_after_a_crash_keeps_the_chain(journal: Journal) -> None:
    """Lines lost to a crash (and a torn line) are rewritten so the chain verifies."""
    path = journal.audit_log
    before = path.read_bytes()
    journal.close()
    lines = before.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-3]) + lines[-3][:20])

    with Journal.open(path.parent / "state", path, []):
        pass

    assert path.read_bytes() == before
    assert verify_audit([path]).ok
