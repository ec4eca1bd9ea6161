"""Golden tests: the literals the contract promises, pinned byte for byte.

An event id, a persisted ``ServerState`` and one JSON line per schema, each written
out as a literal computed once by the code of the day. A change that breaks one of
them re-alerts every receiver after an upgrade (ids), loses the state of a running
fleet (``ServerState``) or breaks a script reading ``--json``: change the literal
only with a migration and a README entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from watcher import audit, schema
from watcher.config import ServerConfig
from watcher.events import Event, EventType, stable_id
from watcher.phases import Phase
from watcher.store.base import OutboxRow, OutboxStatus, OutboxSummary, Silence
from watcher.tracker import (
    Failure,
    Health,
    Observation,
    PhaseVisit,
    ServerState,
    step,
)
from watcher.views import (
    FollowPhase,
    FollowView,
    Outcome,
    RestoreRow,
    ServerStatusRow,
    fleet_status,
    with_daemon,
)

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
CONFIG = ServerConfig(
    name="sklm-1",
    url="https://sklm1.example.com:9443",
    stall_after=600.0,
    restart_timeout=300.0,
    unreachable_after=30.0,
)

#: stable_id("sklm-1", "restore", "2026-11-29T10:00:10.000Z"): the restore first
#: seen by the poll at 10:00:10.
RESTORE_ID = "d9be3cb7-f1a7-53e5-8c2a-6592622b4f40"
STARTED_ID = "beb6d87d-8941-5883-bb77-c1071de259c3"
INITIALIZE_ID = "c3decd6a-b0a7-59ef-9b92-7954bd8f5417"
CREATE_TEMP_DIR_ID = "e3a0fc77-989a-5bf0-9ece-a687bfa144a7"


def at(seconds: float) -> datetime:
    """T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


# --- event ids --------------------------------------------------------------------


def test_event_ids_are_the_literals_of_the_namespace() -> None:
    """(server, restore, type, phase) give the same id forever: receivers dedup on it."""
    assert stable_id("sklm-1", "restore", "2026-11-29T10:00:10.000Z") == RESTORE_ID
    phase = Event.create(
        EventType.RESTORE_PHASE,
        "sklm-1",
        at(10),
        key=(RESTORE_ID, "CREATE_TEMP_DIR"),
    )
    started = Event.create(
        EventType.RESTORE_STARTED, "sklm-1", at(10), key=(RESTORE_ID,)
    )
    assert (phase.id, started.id) == (CREATE_TEMP_DIR_ID, STARTED_ID)


def test_the_tracker_gives_its_events_the_pinned_ids() -> None:
    """The ids the tracker derives for a restore seen at 10:00:10 are the literals."""
    idle = step(
        CONFIG, ServerState(), Observation(at=T0, monotonic=100.0, phase=Phase.IDLE)
    )
    seen = step(
        CONFIG,
        idle.state,
        Observation(at=at(10), monotonic=110.0, phase=Phase.CREATE_TEMP_DIR),
    )

    assert [(str(e.type), e.data.get("phase"), e.id) for e in seen.events] == [
        ("sklm.restore.started", "INITIALIZE", STARTED_ID),
        ("sklm.restore.phase", "INITIALIZE", INITIALIZE_ID),
        ("sklm.restore.phase", "CREATE_TEMP_DIR", CREATE_TEMP_DIR_ID),
    ]
    assert seen.state.restore_id == RESTORE_ID


# --- the persisted ServerState ----------------------------------------------------

#: A restore in CREATE_TEMP_DIR whose server stopped answering at 10:00:20, as the
#: journal stores it (the daemon of the next release must read this).
PERSISTED: dict[str, Any] = {
    "version": 1,
    "phase": "CREATE_TEMP_DIR",
    "phase_since_at": "2026-11-29T10:00:10+00:00",
    "stall_reported": False,
    "restore_id": RESTORE_ID,
    "restore_active": True,
    "seen_at_startup": False,
    "timeline": [
        {
            "phase": "INITIALIZE",
            "inferred": True,
            "entered_at": "2026-11-29T10:00:10+00:00",
        },
        {
            "phase": "CREATE_TEMP_DIR",
            "inferred": False,
            "entered_at": "2026-11-29T10:00:10+00:00",
        },
    ],
    "awaiting_restart": False,
    "outage_id": "db348a2c-adfc-54de-91e6-3264edb8bbfa",
    "outage_since_at": "2026-11-29T10:00:20+00:00",
    "consecutive_failures": 1,
    "unreachable_reported": False,
    "auth_failed": False,
    "auth_run_id": None,
    "auth_failed_since_at": None,
    "last_ok_at": "2026-11-29T10:00:10+00:00",
    "last_failure": "unreachable",
    "last_error": "connection refused",
}


def _outage_state() -> ServerState:
    """The tracker's state after IDLE, CREATE_TEMP_DIR, then a refused connection."""
    state = ServerState()
    for obs in (
        Observation(at=T0, monotonic=100.0, phase=Phase.IDLE),
        Observation(at=at(10), monotonic=110.0, phase=Phase.CREATE_TEMP_DIR),
        Observation(
            at=at(20),
            monotonic=120.0,
            failure=Failure.UNREACHABLE,
            detail="connection refused",
        ),
    ):
        state = step(CONFIG, state, obs).state
    return state


def test_the_persisted_state_layout_is_the_literal() -> None:
    """``ServerState.to_dict()`` writes exactly the stored layout, key for key."""
    assert _outage_state().to_dict() == PERSISTED


def test_a_persisted_literal_loads_into_the_state() -> None:
    """A stored row of this layout loads back into the same state."""
    loaded = ServerState.from_dict(PERSISTED, at=at(30), monotonic=130.0)

    assert loaded.to_dict() == PERSISTED
    # Monotonic readings are rebased from their wall-clock twins: 130 - (30 - 10).
    assert loaded.timeline == (
        PhaseVisit(Phase.INITIALIZE, True, at(10), 110.0),
        PhaseVisit(Phase.CREATE_TEMP_DIR, False, at(10), 110.0),
    )
    assert (loaded.phase_since_monotonic, loaded.outage_since_monotonic) == (
        110.0,
        120.0,
    )


# --- one JSON line per schema -----------------------------------------------------


def line(document: Any) -> str:
    """The document as one line of JSON, keys in the order the schema writes them."""
    return json.dumps(document, ensure_ascii=False)


def test_format_time_is_the_events_one() -> None:
    """One time format: the schema's is the events' (milliseconds, ``Z``)."""
    from watcher import events

    assert schema.format_time is events.format_time
    assert schema.optional_time(at(1.25)) == "2026-11-29T10:00:01.250Z"
    assert schema.optional_time(None) is None


def test_status_line() -> None:
    """``status --json``: the README's fields, in order."""
    row = ServerStatusRow(
        server="sklm-1",
        health=Health.UNREACHABLE,
        phase=Phase.CREATE_TEMP_DIR,
        phase_since=at(10),
        in_phase_for=50.0,
        restore_id=RESTORE_ID,
        restore_active=True,
        restore_since=at(10),
        last_ok_at=at(10),
        failures=1,
        last_error="connection refused",
        last_failure="unreachable",
        daemon_running=False,
        as_of=at(20),
    )
    assert line(schema.status_json(row)) == (
        '{"server": "sklm-1", "health": "unreachable", "phase": "CREATE_TEMP_DIR",'
        ' "code": 2, "step": "2/7", "phase_since": "2026-11-29T10:00:10.000Z",'
        ' "in_phase_for": 50.0, "restore_id": "' + RESTORE_ID + '",'
        ' "restore_active": true, "restore_since": "2026-11-29T10:00:10.000Z",'
        ' "last_ok_at": "2026-11-29T10:00:10.000Z", "failures": 1,'
        ' "last_error": "connection refused", "last_failure": "unreachable",'
        ' "daemon_running": false, "as_of": "2026-11-29T10:00:20.000Z",'
        ' "stalled": false}'
    )
    assert row.to_json() == schema.status_json(row)


POLLED_AT = at(20)


@dataclass(frozen=True, slots=True)
class Counters:
    """Poll counters as the scheduler keeps them."""

    last_poll_at: datetime | None = POLLED_AT
    last_latency: float | None = 0.25
    polls_ok: int = 2
    polls_failed: int = 1


def test_daemon_status_line() -> None:
    """``/status``'s server entry keeps the daemon's names and its counters."""
    assert line(schema.daemon_server_json("sklm-1", _outage_state(), Counters())) == (
        '{"name": "sklm-1", "health": "unreachable", "phase": "CREATE_TEMP_DIR",'
        ' "code": 2, "since": "2026-11-29T10:00:10.000Z", "restore_active": true,'
        ' "restore_id": "' + RESTORE_ID + '",'
        ' "restore_started_at": "2026-11-29T10:00:10.000Z",'
        ' "awaiting_restart": false, "consecutive_failures": 1,'
        ' "last_ok_at": "2026-11-29T10:00:10.000Z", "last_error": "connection refused",'
        ' "last_failure": "unreachable", "last_poll_at": "2026-11-29T10:00:20.000Z",'
        ' "last_latency": 0.25, "polls_ok": 2, "polls_failed": 1, "stalled": false}'
    )


class StoredStates:
    """The two reads :func:`fleet_status` makes of a journal, from fixed states."""

    def __init__(self, states: dict[str, ServerState], updated: datetime) -> None:
        self._states = states
        self._updated = updated

    def load_states(self) -> dict[str, dict[str, Any]]:
        """Each state as the journal stores it."""
        return {name: s.to_dict() for name, s in self._states.items()}

    def last_state_update(self) -> datetime:
        """When the newest state was saved."""
        return self._updated


def test_the_daemon_and_the_journal_print_the_same_status() -> None:
    """``status --json`` is the same from a daemon's ``/status`` as from the journal.

    The two paths once built the row each its own way (issue 12); here every kind
    of state goes through both and must come out identical.
    """
    outage = _outage_state()
    states = {
        "fresh": ServerState(),
        "idle": step(
            CONFIG, ServerState(), Observation(at=T0, monotonic=1.0, phase=Phase.IDLE)
        ).state,
        "outage": outage,
        "ended": ServerState.from_dict(
            {**PERSISTED, "restore_active": False, "awaiting_restart": True},
            at=at(30),
            monotonic=130.0,
        ),
    }
    now, as_of = at(61.2345), at(30)
    stored = fleet_status(cast(Any, StoredStates(states, as_of)), now, list(states))
    from_journal = with_daemon(stored, True)
    from_daemon = [
        ServerStatusRow(
            **schema.status_fields_from_daemon(
                schema.daemon_server_json(name, state, None), now=now, as_of=as_of
            )
        )
        for name, state in states.items()
    ]

    assert [r.to_json() for r in from_daemon] == [r.to_json() for r in from_journal]
    assert from_daemon == from_journal


def test_restore_line() -> None:
    """``restores --json``: one completed restore."""
    row = RestoreRow(
        server="sklm-1",
        restore_id=RESTORE_ID,
        outcome=Outcome.COMPLETED,
        started_at=at(10),
        ended_at=at(70),
        duration=60.0,
        last_phase=Phase.COMPLETED,
        phases_observed=5,
        phases_inferred=2,
        restarted=True,
    )
    assert line(schema.restore_json(row)) == (
        '{"server": "sklm-1", "restore_id": "' + RESTORE_ID + '",'
        ' "outcome": "completed", "started_at": "2026-11-29T10:00:10.000Z",'
        ' "ended_at": "2026-11-29T10:01:10.000Z", "duration": 60.0,'
        ' "last_phase": "COMPLETED", "phases_observed": 5, "phases_inferred": 2,'
        ' "restarted": true, "reason": null}'
    )
    assert row.to_json() == schema.restore_json(row)


def test_follow_line() -> None:
    """``follow --json``: a running restore with one finished and one current phase."""
    view = FollowView(
        server="sklm-1",
        health=Health.OK,
        restore_id=RESTORE_ID,
        outcome=Outcome.RUNNING,
        started_at=at(10),
        phases=(
            FollowPhase(Phase.INITIALIZE, True, at(10), 0.0),
            FollowPhase(Phase.CREATE_TEMP_DIR, False, at(10), None),
        ),
        current_phase=Phase.CREATE_TEMP_DIR,
        current_since=at(10),
    )
    assert line(schema.follow_json(view)) == (
        '{"server": "sklm-1", "restore_id": "' + RESTORE_ID + '",'
        ' "outcome": "running", "started_at": "2026-11-29T10:00:10.000Z",'
        ' "ended_at": null, "reason": null, "current_phase": "CREATE_TEMP_DIR",'
        ' "current_since": "2026-11-29T10:00:10.000Z", "server_back": null,'
        ' "health": "ok", "phases": ['
        '{"phase": "INITIALIZE", "code": 1, "inferred": true,'
        ' "entered_at": "2026-11-29T10:00:10.000Z", "duration": 0.0},'
        ' {"phase": "CREATE_TEMP_DIR", "code": 2, "inferred": false,'
        ' "entered_at": "2026-11-29T10:00:10.000Z", "duration": null}]}'
    )
    assert view.to_json() == schema.follow_json(view)


def test_outbox_line() -> None:
    """``outbox --dead --json``: ``dead_at`` in the README's ``Z`` form."""
    event = Event.create(EventType.RESTORE_STARTED, "sklm-1", at(10), key=(RESTORE_ID,))
    dead = OutboxRow(
        sink="ops-hook",
        event=event,
        attempts=3,
        first_attempt_at=at(10),
        next_attempt_at=at(40),
        last_error="HTTP 410 Gone",
        status=OutboxStatus.DEAD,
        dead_at=at(40.5),
    )
    summary = [
        OutboxSummary("ops-hook", pending=2, dead=1, oldest_pending_age=12.5),
        OutboxSummary("slack", pending=0, dead=0, oldest_pending_age=None),
    ]
    assert line(schema.outbox_json(summary, [dead])) == (
        '{"sinks": [{"sink": "ops-hook", "pending": 2, "dead": 1,'
        ' "oldest_pending_age": 12.5}, {"sink": "slack", "pending": 0, "dead": 0,'
        ' "oldest_pending_age": null}], "dead": [{"sink": "ops-hook",'
        ' "event_id": "' + STARTED_ID + '", "type": "sklm.restore.started",'
        ' "server": "sklm-1", "attempts": 3, "last_error": "HTTP 410 Gone",'
        ' "dead_at": "2026-11-29T10:00:40.500Z"}]}'
    )
    assert schema.outbox_json(summary) == {
        "sinks": [schema.sink_backlog_json(s) for s in summary],
        "dead": [],
    }


@dataclass(frozen=True, slots=True)
class Answer:
    """One server's answer to ``once``."""

    server: str
    phase: str | None
    code: int | None
    latency: float
    error: str | None
    error_kind: str | None


def test_once_line() -> None:
    """``once --json``: latency rounded to 0.1 ms; an error with its kind."""
    rows = [
        Answer("sklm-1", "IDLE", 0, 0.123456, None, None),
        Answer("sklm-2", None, None, 2.0, "connection refused", "SklmUnreachable"),
    ]
    assert line([schema.once_json(r) for r in rows]) == (
        '[{"server": "sklm-1", "phase": "IDLE", "code": 0, "latency": 0.1235,'
        ' "error": null, "error_kind": null}, {"server": "sklm-2", "phase": null,'
        ' "code": null, "latency": 2.0, "error": "connection refused",'
        ' "error_kind": "SklmUnreachable"}]'
    )


def test_silence_line() -> None:
    """``silence list --all --json``: a removed silence with who removed it."""
    silence = Silence(
        id=1,
        server_glob="prod-*",
        until=at(7200),
        reason="window",
        created_at=T0,
        removed_at=at(600),
        removed_by="alice",
    )
    assert line(schema.silence_json(silence)) == (
        '{"id": 1, "server_glob": "prod-*", "until": "2026-11-29T12:00:00.000Z",'
        ' "reason": "window", "created_at": "2026-11-29T10:00:00.000Z",'
        ' "removed_at": "2026-11-29T10:10:00.000Z", "removed_by": "alice"}'
    )
    assert silence.to_json() == schema.silence_json(silence)


@dataclass(frozen=True, slots=True)
class Fault:
    """The first line that does not chain."""

    file: Path
    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """An audit verdict, as the verifier returns it."""

    ok: bool
    lines: int
    anchor: str | None
    last_hash: str | None
    first_bad: Fault | None


def test_audit_verdict_lines() -> None:
    """``audit verify --json``: intact, and broken at a named line."""
    zeros = "0" * 64
    intact = Verdict(True, 3, zeros, "ab" * 32, None)
    broken = Verdict(False, 1, zeros, "cd" * 32, Fault(Path("/a.jsonl"), 2, "changed"))

    assert line(schema.audit_verdict_json(intact)) == (
        '{"ok": true, "lines": 3, "anchor": "' + zeros + '",'
        ' "last_hash": "' + "ab" * 32 + '", "first_bad": null}'
    )
    assert line(schema.audit_verdict_json(broken)) == (
        '{"ok": false, "lines": 1, "anchor": "' + zeros + '",'
        ' "last_hash": "' + "cd" * 32 + '",'
        ' "first_bad": {"file": "/a.jsonl", "line": 2, "reason": "changed"}}'
    )
    verified = audit.AuditVerdict(
        ok=False,
        lines=1,
        first_bad=audit.AuditFault(Path("/a.jsonl"), 2, "changed"),
        anchor=zeros,
        last_hash="cd" * 32,
    )
    assert verified.to_json() == schema.audit_verdict_json(broken)
