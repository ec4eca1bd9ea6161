"""Read-only views of the journal for the CLI: status, restores, events, follow.

Every view is a pure function of a (read-only) :class:`~watcher.store.base.History` and
the arguments; none reads the clock (``now`` is passed in). Each returns frozen rows
with a ``to_json()`` of stable shape, and :func:`render_table` prints any list of
them (``rich`` with colour on a terminal, aligned plain text otherwise).

JSON forms (stable: fields are added, never renamed or removed) are built by
:mod:`watcher.schema`, which documents each; the rows' ``to_json()`` call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Final, Protocol, TextIO

from watcher import schema
from watcher.events import Event, EventType, format_time, parse_time
from watcher.phases import Phase
from watcher.store.base import History, Lease, NodeRow
from watcher.tracker import Health, ServerState, health_of

#: ``ServerState.from_dict`` rebases monotonic readings from ``at``; the views use
#: only wall-clock fields, so any fixed instant will do (and no clock is read).
_REFERENCE_AT: Final = datetime(2000, 1, 1, tzinfo=UTC)
_LAST_CODE: Final = int(Phase.COMPLETED)

_RESTORE_TYPES: Final = frozenset(
    {
        EventType.RESTORE_STARTED,
        EventType.RESTORE_PHASE,
        EventType.RESTORE_COMPLETED,
        EventType.RESTORE_FAILED,
        EventType.RESTORE_STALLED,
        EventType.SERVER_RESTARTED,
        EventType.SERVER_UNREACHABLE,
    }
)


class Outcome(StrEnum):
    """How a restore ended, or that it has not."""

    COMPLETED = "completed"
    FAILED = "failed"
    RUNNING = "running"
    STALLED = "stalled"


_STYLES: Final[Mapping[str, str]] = {
    Health.OK: "green",
    Health.UNREACHABLE: "bold red",
    Health.RESTARTING: "yellow",
    Health.AUTH_FAILED: "bold red",
    Health.TLS_ERROR: "bold red",
    Health.PROTOCOL_ERROR: "bold red",
    Health.UNKNOWN: "dim",
    Outcome.COMPLETED: "green",
    Outcome.FAILED: "bold red",
    Outcome.RUNNING: "cyan",
    Outcome.STALLED: "yellow",
}


class TableRow(Protocol):
    """What :func:`render_table` needs of a row."""

    HEADERS: ClassVar[tuple[str, ...]]

    def cells(self) -> tuple[str, ...]:
        """The row's text, one string per header."""
        ...

    def style(self) -> str:
        """A rich style for the row ('' for none)."""
        ...


# --- status ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerStatusRow:
    """One server's current state (``sklm-watcher status``)."""

    HEADERS: ClassVar[tuple[str, ...]] = (
        "SERVER",
        "HEALTH",
        "PHASE",
        "STEP",
        "IN PHASE",
        "RESTORE SINCE",
        "LAST OK",
        "REASON",
    )

    server: str
    health: Health
    phase: Phase | None = None
    phase_since: datetime | None = None
    #: Seconds from ``phase_since`` to the ``now`` the view was built for.
    in_phase_for: float | None = None
    restore_id: str | None = None
    restore_active: bool = False
    #: When the running restore was first seen (None when none runs).
    restore_since: datetime | None = None
    last_ok_at: datetime | None = None
    failures: int = 0
    #: The latest failed poll's reason in words (None while the server answers).
    last_error: str | None = None
    #: Its kind (``tracker.Failure`` value), None while the server answers.
    last_failure: str | None = None
    #: Whether a daemon holds the state directory's lock; None when unknown.
    daemon_running: bool | None = None
    #: When the data shown was true (the daemon's answer or the newest stored state).
    as_of: datetime | None = None
    #: The running restore outlasted ``stall_after`` in its phase (reported stalled).
    stalled: bool = False

    @property
    def step(self) -> str | None:
        """The phase as ``k/7`` (IDLE is ``0/7``)."""
        return schema.step_text(self.phase)

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form (:func:`watcher.schema.status_json`)."""
        return schema.status_json(self)

    def cells(self) -> tuple[str, ...]:
        """The table cells (health marked stale when no daemon runs)."""
        health = str(self.health)
        if self.daemon_running is False:
            # Stored data of a stopped watcher: not a live "ok".
            health += " (stale)"
        return (
            self.server,
            health,
            _name(self.phase) or "-",
            self.step or "-",
            _duration_text(self.in_phase_for),
            _time_text(self.restore_since),
            _time_text(self.last_ok_at),
            shorten(self.last_error, REASON_WIDTH) or "-",
        )

    def style(self) -> str:
        """Coloured by health (dim when no daemon runs)."""
        if self.daemon_running is False:
            return "dim"
        # A health value this table has no colour for is a problem worth seeing.
        return _STYLES.get(self.health, "bold red")


#: Characters of ``last_error`` the status table shows (JSON has all of it).
REASON_WIDTH: Final = 60
#: Characters of an event's detail the events table shows (JSON has all of it).
DETAIL_WIDTH: Final = 80


def shorten(text: str | None, width: int) -> str | None:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


def fleet_status(
    journal: History, now: datetime, servers: Sequence[str] | None = None
) -> list[ServerStatusRow]:
    """One row per server from the stored states.

    Args:
        journal: The journal (read-only is enough).
        now: The instant ``in_phase_for`` is measured to.
        servers: The configured servers, in the order to show them; one without a
            stored state gets an ``unknown`` row. None: every stored server, by name.
    """
    states = _states(journal)
    as_of = journal.last_state_update()
    names = sorted(states) if servers is None else list(servers)
    rows = []
    for name in names:
        state = states.get(name)
        if state is None:
            rows.append(
                ServerStatusRow(server=name, health=Health.UNKNOWN, as_of=as_of)
            )
            continue
        rows.append(status_row(name, state, now=now, as_of=as_of))
    return rows


def status_row(
    name: str,
    state: ServerState,
    *,
    now: datetime,
    as_of: datetime | None,
    daemon_running: bool | None = None,
) -> ServerStatusRow:
    """One server's status row from its tracker state (stored or the daemon's).

    Args:
        name: The server's name.
        state: Its tracker state.
        now: The instant ``in_phase_for`` is measured to.
        as_of: When ``state`` was true.
        daemon_running: Whether a daemon runs (None: unknown).
    """
    since = state.phase_since_at
    return ServerStatusRow(
        server=name,
        health=health_of(state),
        phase=state.phase,
        phase_since=since,
        in_phase_for=schema.in_phase_for(since, now),
        restore_id=state.restore_id,
        restore_active=state.restore_active,
        restore_since=state.restore_started_at if state.restore_active else None,
        last_ok_at=state.last_ok_at,
        failures=state.consecutive_failures,
        last_error=state.last_error,
        last_failure=None if state.last_failure is None else str(state.last_failure),
        daemon_running=daemon_running,
        as_of=as_of,
        stalled=schema.is_stalled(state),
    )


def with_daemon(
    rows: Sequence[ServerStatusRow], daemon_running: bool | None
) -> list[ServerStatusRow]:
    """The rows marked with whether a daemon runs (the CLI finds out from the lock)."""
    return [replace(row, daemon_running=daemon_running) for row in rows]


@dataclass(frozen=True, slots=True)
class ClusterStatusRow(ServerStatusRow):
    """A server's status in a cluster, with the node that polls it (NODE column)."""

    HEADERS: ClassVar[tuple[str, ...]] = (
        ServerStatusRow.HEADERS[0],
        "NODE",
        *ServerStatusRow.HEADERS[1:],
    )

    #: The node whose unexpired lease polls the server; None when none holds one.
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        """``status --json`` with ``node`` (:func:`watcher.schema.cluster_status_json`)."""
        return schema.cluster_status_json(self)

    def cells(self) -> tuple[str, ...]:
        """:class:`ServerStatusRow`'s cells with the node after the server's name."""
        # Called through the base class: zero-argument super() does not work in a
        # slots dataclass (the decorator builds a new class).
        server, *rest = ServerStatusRow.cells(self)
        return (server, self.node or "-", *rest)


def lease_holders(leases: Sequence[Lease], now: datetime) -> dict[str, str]:
    """Each server's node, for the leases not expired at ``now``.

    ``expires_at`` is on the store's clock and ``now`` the reader's: within the
    clock skew of the two (NTP keeps it small) a lease just expired or renewed may
    show either way; the next look tells.
    """
    return {lease.server: lease.node for lease in leases if lease.expires_at > now}


def with_nodes(
    rows: Sequence[ServerStatusRow], holders: Mapping[str, str]
) -> list[ClusterStatusRow]:
    """The status rows of a cluster: each with the node that holds its lease."""
    return [
        ClusterStatusRow(
            **{f.name: getattr(row, f.name) for f in fields(row)},
            node=holders.get(row.server),
        )
        for row in rows
    ]


def data_age(as_of: datetime | None, now: datetime) -> str:
    """``data as of 2026-11-29T10:00:01.250Z (3h02m ago)``, or that nothing is stored."""
    if as_of is None:
        return "nothing stored yet"
    age = max(0.0, _seconds(now - as_of))
    return f"data as of {format_time(as_of)} ({_duration_text(age)} ago)"


# --- restores -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestoreRow:
    """One restore, from its events (``sklm-watcher restores``)."""

    HEADERS: ClassVar[tuple[str, ...]] = (
        "SERVER",
        "RESTORE",
        "STARTED",
        "ENDED",
        "DURATION",
        "OUTCOME",
        "OBSERVED",
        "INFERRED",
    )

    server: str
    restore_id: str
    outcome: Outcome
    started_at: datetime
    ended_at: datetime | None = None
    duration: float | None = None
    last_phase: Phase | None = None
    phases_observed: int = 0
    phases_inferred: int = 0
    #: A ``sklm.server.restarted`` followed it (the server came back).
    restarted: bool = False
    #: Why it failed (``failed`` only).
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form (:func:`watcher.schema.restore_json`)."""
        return schema.restore_json(self)

    def cells(self) -> tuple[str, ...]:
        """The table cells (the restore id shortened to 8 characters)."""
        return (
            self.server,
            self.restore_id[:8],
            _time_text(self.started_at),
            _time_text(self.ended_at),
            _duration_text(self.duration),
            str(self.outcome),
            str(self.phases_observed),
            str(self.phases_inferred),
        )

    def style(self) -> str:
        """Coloured by outcome."""
        return _STYLES[self.outcome]


@dataclass(slots=True)
class _Restore:
    """The events of one restore, gathered in journal order."""

    server: str
    restore_id: str
    started: Event | None = None
    phases: list[Event] = field(default_factory=list)
    end: Event | None = None
    last_stall: Event | None = None
    restarted: Event | None = None
    #: Unreachable after the restore (the server did not come back in time).
    lost: Event | None = None
    first: Event | None = None
    #: Position of the last phase / stall event (to tell a stall still current).
    last_phase_pos: int = -1
    last_stall_pos: int = -1

    def row(self) -> RestoreRow:
        first = self.started or self.first
        if first is None:  # pragma: no cover - a group exists because of an event
            raise AssertionError("empty restore group")
        started_at = first.time
        ended_at = None if self.end is None else self.end.time
        duration: float | None = None
        reason: str | None = None
        if self.end is not None:
            value = self.end.data.get("duration")
            duration = (
                float(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else _seconds(self.end.time - started_at)
            )
            if self.end.type is EventType.RESTORE_FAILED:
                reason = _str(self.end.data.get("reason"))
        inferred = sum(1 for e in self.phases if e.data.get("inferred") is True)
        return RestoreRow(
            server=self.server,
            restore_id=self.restore_id,
            outcome=self.outcome(),
            started_at=started_at,
            ended_at=ended_at,
            duration=duration,
            last_phase=_phase(self.phases[-1]) if self.phases else None,
            phases_observed=len(self.phases) - inferred,
            phases_inferred=inferred,
            restarted=self.restarted is not None,
            reason=reason,
        )

    def outcome(self) -> Outcome:
        if self.end is not None:
            if self.end.type is EventType.RESTORE_COMPLETED:
                return Outcome.COMPLETED
            return Outcome.FAILED
        if self.last_stall is not None and self.last_stall_pos > self.last_phase_pos:
            return Outcome.STALLED
        return Outcome.RUNNING


def _gather(events: Sequence[Event]) -> list[_Restore]:
    """Group restore events by ``restore_id``, in order of each restore's first event."""
    groups: dict[str, _Restore] = {}
    for pos, e in enumerate(events):
        if e.type not in _RESTORE_TYPES:
            continue
        rid = e.data.get("restore_id")
        if not isinstance(rid, str):
            continue
        if e.type is EventType.SERVER_UNREACHABLE:
            if e.data.get("after_restore") is True and rid in groups:
                groups[rid].lost = groups[rid].lost or e
            continue
        group = groups.get(rid)
        if group is None:
            if e.type is EventType.SERVER_RESTARTED:
                continue  # a restart without the restore's events (filtered out)
            group = groups[rid] = _Restore(server=e.server, restore_id=rid, first=e)
        if e.type is EventType.RESTORE_STARTED:
            group.started = group.started or e
        elif e.type is EventType.RESTORE_PHASE:
            group.phases.append(e)
            group.last_phase_pos = pos
        elif e.type in (EventType.RESTORE_COMPLETED, EventType.RESTORE_FAILED):
            group.end = group.end or e
        elif e.type is EventType.RESTORE_STALLED:
            group.last_stall = e
            group.last_stall_pos = pos
        elif e.type is EventType.SERVER_RESTARTED:
            group.restarted = group.restarted or e
    return list(groups.values())


def restores(
    journal: History, *, server: str | None = None, since: datetime | None = None
) -> list[RestoreRow]:
    """One row per restore found in the events, oldest first.

    Args:
        journal: The journal (read-only is enough).
        server: Only this server's restores.
        since: Only restores still running at or ended after this instant.
    """
    rows = [group.row() for group in _gather(journal.events(server=server))]
    if since is not None:
        rows = [r for r in rows if r.ended_at is None or r.ended_at >= since]
    return rows


# --- one restore (the dashboard's timeline) --------------------------------------


@dataclass(frozen=True, slots=True)
class DetailPhase:
    """One phase of one restore, with the polls that bracket an inferred one."""

    phase: Phase
    inferred: bool
    #: The poll that revealed it (an upper bound for an inferred phase).
    entered_at: datetime
    #: When the next phase (or the failure) was seen; None while current.
    left_at: datetime | None
    duration: float | None
    #: Inferred only: the last answer before it and the poll that revealed it.
    poll_before: datetime | None = None
    poll_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class RestoreDetail:
    """One restore: its row, its phases and its events (``/api/restores/<id>``)."""

    restore: RestoreRow
    phases: tuple[DetailPhase, ...]
    events: tuple[Event, ...]

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form (:func:`watcher.schema.restore_detail_json`)."""
        return schema.restore_detail_json(self)


def restore_detail(journal: History, restore_id: str) -> RestoreDetail | None:
    """The restore ``restore_id`` from the stored events; None when none has it."""
    found = journal.events()
    group = next((g for g in _gather(found) if g.restore_id == restore_id), None)
    if group is None:
        return None
    row = group.row()
    phases = []
    for follow, e in zip(
        _follow_phases(group.phases, row.ended_at),
        (e for e in group.phases if _phase(e) is not None),
        strict=True,
    ):
        left = (
            None
            if follow.duration is None
            else follow.entered_at + timedelta(seconds=follow.duration)
        )
        before = after = None
        if follow.inferred:
            before = _instant(e.data.get("previous_poll_at"))
            after = _instant(e.data.get("poll_at")) or e.time
        phases.append(
            DetailPhase(
                phase=follow.phase,
                inferred=follow.inferred,
                entered_at=follow.entered_at,
                left_at=left,
                duration=follow.duration,
                poll_before=before,
                poll_after=after,
            )
        )
    mine = tuple(e for e in found if e.data.get("restore_id") == restore_id)
    return RestoreDetail(restore=row, phases=tuple(phases), events=mine)


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


# --- events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event as a table row (``sklm-watcher events``); JSON is the event itself."""

    HEADERS: ClassVar[tuple[str, ...]] = ("TIME", "SERVER", "TYPE", "DETAIL")

    event: Event

    def to_json(self) -> dict[str, Any]:
        """The CloudEvents object, as webhooks receive it."""
        return self.event.to_dict()

    def cells(self) -> tuple[str, ...]:
        """Time, server, type and a short detail (phase, reason)."""
        e = self.event
        detail = shorten(_detail(e), DETAIL_WIDTH) or ""
        return (_time_text(e.time), e.server, str(e.type), detail)

    def style(self) -> str:
        """Failures red, stalls and outages yellow, completions green."""
        return {
            EventType.RESTORE_COMPLETED: "green",
            EventType.RESTORE_FAILED: "bold red",
            EventType.AUTH_FAILED: "bold red",
            EventType.RESTORE_STALLED: "yellow",
            EventType.SERVER_UNREACHABLE: "yellow",
        }.get(self.event.type, "")


def events(
    journal: History,
    *,
    server: str | None = None,
    type_glob: str | None = None,
    since: datetime | None = None,
) -> list[EventRow]:
    """Stored events in journal order, filtered like :meth:`History.events`."""
    found = journal.events(server=server, type_glob=type_glob, since=since)
    return [EventRow(e) for e in found]


def _detail(e: Event) -> str:
    data = e.data
    phase = _str(data.get("phase"))
    if e.type is EventType.RESTORE_PHASE:
        return f"{phase} (inferred)" if data.get("inferred") is True else phase or ""
    if e.type is EventType.SERVER_UNREACHABLE:
        return _reason_and_detail(data)
    if e.type is EventType.RESTORE_FAILED:
        return _str(data.get("reason")) or ""
    if e.type is EventType.RESTORE_STALLED:
        return f"{phase} for {_duration_text(_float(data.get('stalled_for')))}"
    if e.type in (EventType.SERVER_RESTARTED, EventType.SERVER_RECOVERED):
        return f"down {_duration_text(_float(data.get('down_for')))}"
    if e.type is EventType.AUTH_FAILED:
        return _str(data.get("detail")) or ""
    return phase or _str(data.get("detail")) or ""


def _reason_and_detail(data: Mapping[str, Any]) -> str:
    """``tls: certificate verify failed ...``: the kind alone says too little."""
    reason = _str(data.get("reason")) or ""
    detail = _str(data.get("detail"))
    if not detail or detail in reason:
        return reason
    return f"{reason}: {detail}" if reason else detail


# --- follow ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowPhase:
    """One phase of the followed restore."""

    phase: Phase
    inferred: bool
    #: The poll that revealed it (an upper bound for an inferred phase).
    entered_at: datetime
    #: Until the next phase (or the failure); None while current, and for COMPLETED.
    duration: float | None

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form (:func:`watcher.schema.follow_phase_json`)."""
        return schema.follow_phase_json(self)


@dataclass(frozen=True, slots=True)
class FollowView:
    """The current (or last) restore of one server (``sklm-watcher follow``)."""

    server: str
    health: Health
    restore_id: str | None = None
    outcome: Outcome | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    reason: str | None = None
    phases: tuple[FollowPhase, ...] = ()
    current_phase: Phase | None = None
    current_since: datetime | None = None
    #: After COMPLETED: True once it restarted and answers, False when it did not
    #: come back within restart_timeout, None while that is open (or not relevant).
    server_back: bool | None = None
    #: Each phase reported stalled, with how long it had lasted when it was
    #: (``sklm.restore.stalled``'s ``stalled_for``), in order.
    stalls: tuple[tuple[Phase, float], ...] = ()

    def stalled_for(self, phase: Phase) -> float | None:
        """How long ``phase`` had lasted when reported stalled; None if it was not."""
        return next((lasted for p, lasted in self.stalls if p is phase), None)

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form (:func:`watcher.schema.follow_json`)."""
        return schema.follow_json(self)


def follow_state(
    journal: History, server: str, *, restore_id: str | None = None
) -> FollowView:
    """The timeline of ``server``'s current restore, or of its last one.

    The outcome only moves forward: running, then stalled once a phase was reported
    stalled (it stays so while the restore runs on), then completed or failed.

    Args:
        journal: The journal (read-only is enough).
        server: The server's name.
        restore_id: This restore (the one ``follow`` is following), even after
            another one has started; None: the current restore, else the last one.
    """
    # Events first, then the state: the state is then at least as new as the
    # events, so a restore's end is never judged by a state read before it.
    found = journal.events(server=server)
    state = _states(journal).get(server)
    health = health_of(state)
    groups = _gather(found)
    group = None
    if restore_id is not None:
        group = next((g for g in groups if g.restore_id == restore_id), None)
    else:
        if state is not None and state.restore_id is not None:
            wanted = state.restore_id
            group = next((g for g in groups if g.restore_id == wanted), None)
        if group is None and groups:
            group = groups[-1]
    if group is None:
        return FollowView(
            server=server,
            health=health,
            current_phase=None if state is None else state.phase,
            current_since=None if state is None else state.phase_since_at,
        )
    row = group.row()
    current = state is not None and state.restore_id == group.restore_id
    phases = _follow_phases(group.phases, row.ended_at)
    stalls = _follow_stalls(found, group.restore_id)
    outcome = row.outcome
    if outcome is Outcome.RUNNING and stalls:
        # A restore that stalled stays stalled until it ends: moving on to the
        # next phase does not make it an ordinary running restore again.
        outcome = Outcome.STALLED
    current_phase = row.last_phase
    current_since = phases[-1].entered_at if phases else None
    if current and state is not None and state.phase is not None:
        current_phase, current_since = state.phase, state.phase_since_at
    server_back = _server_back(group, state if current else None, row.outcome)
    later = state is not None and state.restore_id not in (None, group.restore_id)
    if server_back is None and row.outcome is Outcome.COMPLETED and later:
        # A later restore has begun: the server answered after this one, though no
        # restart was seen (it may have passed between two polls).
        server_back = True
    return FollowView(
        server=server,
        health=health,
        restore_id=group.restore_id,
        outcome=outcome,
        started_at=row.started_at,
        ended_at=row.ended_at,
        reason=row.reason,
        phases=phases,
        current_phase=current_phase,
        current_since=current_since,
        server_back=server_back,
        stalls=stalls,
    )


def follow_outcome(view: FollowView) -> int | None:
    """The exit code ``follow`` ends with, or None while there is more to wait for.

    0: completed and the server is back; 1: failed, or the server did not come
    back after the restore; None: still running, stalled, or restarting.
    """
    if view.outcome is Outcome.FAILED:
        return 1
    if view.outcome is Outcome.COMPLETED:
        if view.server_back is None:
            return None
        return 0 if view.server_back else 1
    return None


def _follow_phases(
    phase_events: Sequence[Event], ended_at: datetime | None
) -> tuple[FollowPhase, ...]:
    out = []
    for i, e in enumerate(phase_events):
        phase = _phase(e)
        if phase is None:
            continue
        following = phase_events[i + 1] if i + 1 < len(phase_events) else None
        until = following.time if following is not None else None
        if until is None and ended_at is not None and phase is not Phase.COMPLETED:
            until = ended_at
        out.append(
            FollowPhase(
                phase=phase,
                inferred=e.data.get("inferred") is True,
                entered_at=e.time,
                duration=None if until is None else _seconds(until - e.time),
            )
        )
    return tuple(out)


def _follow_stalls(
    found: Sequence[Event], restore_id: str
) -> tuple[tuple[Phase, float], ...]:
    """Each phase of ``restore_id`` reported stalled, with its ``stalled_for``."""
    stalls: dict[Phase, float] = {}
    for e in found:
        if e.type is not EventType.RESTORE_STALLED:
            continue
        if e.data.get("restore_id") != restore_id:
            continue
        phase = _phase(e)
        if phase is not None and phase not in stalls:
            stalls[phase] = _float(e.data.get("stalled_for")) or 0.0
    return tuple(stalls.items())


def _server_back(
    group: _Restore, state: ServerState | None, outcome: Outcome
) -> bool | None:
    if outcome is not Outcome.COMPLETED:
        return None
    if group.restarted is not None:
        return True
    if group.lost is not None:
        return False
    if state is None or state.awaiting_restart or state.failing:
        return None
    if state.restore_active:
        # A state from before COMPLETED (the restore still running) says nothing
        # about the restart: it must not end ``follow`` as if the server were back.
        return None
    return True  # answering again, though no restart was seen


# --- cluster --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeStatusRow:
    """One node of the cluster (``sklm-watcher cluster``)."""

    HEADERS: ClassVar[tuple[str, ...]] = (
        "NODE",
        "ALIVE",
        "LEASES",
        "LAST HEARTBEAT",
        "VERSION",
        "HOST",
        "PID",
    )

    node: NodeRow
    #: Seconds from its last heartbeat to the ``now`` the view was built for.
    heartbeat_age: float

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form (:func:`watcher.schema.node_json`)."""
        return schema.node_json(self)

    def cells(self) -> tuple[str, ...]:
        """The table cells (``left`` for a node stopped cleanly)."""
        n = self.node
        if n.alive:
            alive = "yes"
        elif n.left_at is not None:
            alive = "left"
        else:
            alive = "no"
        return (
            n.name,
            alive,
            str(n.leases),
            f"{_duration_text(self.heartbeat_age)} ago",
            n.version,
            n.host,
            str(n.pid),
        )

    def style(self) -> str:
        """Red for a node that stopped heartbeating without leaving; dim once left."""
        if self.node.alive:
            return ""
        return "dim" if self.node.left_at is not None else "bold red"


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The cluster as ``sklm-watcher cluster`` shows it."""

    nodes: tuple[NodeStatusRow, ...]
    #: How many servers are configured.
    servers: int
    #: Configured servers that no live node holds an unexpired lease on.
    without_owner: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form (:func:`watcher.schema.cluster_json`)."""
        return schema.cluster_json(self)

    def owner_line(self) -> str:
        """One sentence on the servers nobody polls now."""
        if not self.without_owner:
            return f"every configured server ({self.servers}) has a live owner"
        count = len(self.without_owner)
        verb = "has" if count == 1 else "have"
        then = (
            "a live node takes them over within one lease"
            if any(row.node.alive for row in self.nodes)
            else "no node is alive: nobody polls them until one starts"
        )
        return (
            f"{count} of {self.servers} servers {verb} no live owner ({then}): "
            f"{', '.join(self.without_owner)}"
        )


def cluster_view(
    nodes: Sequence[NodeRow],
    leases: Sequence[Lease],
    servers: Sequence[str],
    now: datetime,
) -> ClusterView:
    """The nodes (by name) and the configured servers without a live owner.

    Args:
        nodes: Every node the store knows (``ClusterStore.nodes()``).
        leases: Every server lease (``ClusterStore.leases()``).
        servers: The configured servers, in the order to name them.
        now: The instant heartbeat ages and lease expiry are measured at.
    """
    alive = {n.name for n in nodes if n.alive}
    holders = lease_holders(leases, now)
    rows = tuple(
        NodeStatusRow(n, max(0.0, _seconds(now - n.heartbeat_at)))
        for n in sorted(nodes, key=lambda n: n.name)
    )
    without = tuple(s for s in servers if holders.get(s) not in alive)
    return ClusterView(rows, len(servers), without)


# --- rendering ------------------------------------------------------------------


def render_table(
    rows: Sequence[TableRow], *, console_file: TextIO, color: bool
) -> None:
    """Print rows as a table: rich with colour when ``color``, else plain text.

    Plain text is aligned columns separated by two spaces, for pipes and tests.
    """
    if not rows:
        print("(nothing to show)", file=console_file)
        return
    headers = type(rows[0]).HEADERS
    if color:
        try:
            _render_rich(rows, headers, console_file)
        except ImportError:
            pass
        else:
            return
    table = [headers, *(row.cells() for row in rows)]
    widths = [max(len(r[c]) for r in table) for c in range(len(headers))]
    for r in table:
        text = "  ".join(
            cell.ljust(width) for cell, width in zip(r, widths, strict=True)
        )
        print(text.rstrip(), file=console_file)


def _render_rich(
    rows: Sequence[TableRow], headers: tuple[str, ...], console_file: TextIO
) -> None:
    from rich import box  # optional: plain text when rich is missing
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    table = Table(box=box.SIMPLE, header_style="bold")
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(*row.cells(), style=row.style() or None)
    console = Console(file=console_file, force_terminal=True, highlight=False)
    unbounded = console.options.update_width(1 << 16)
    needed = Measurement.get(console, unbounded, table).maximum
    if needed > console.width:
        # Squeezed, rich would cut names and health words to "unr…": let a narrow
        # terminal wrap the long lines instead (the cells are already shortened).
        console = Console(
            file=console_file, force_terminal=True, highlight=False, width=needed
        )
    console.print(table)


def render_follow(
    view: FollowView,
    *,
    console_file: TextIO,
    color: bool,
    now: datetime | None = None,
) -> None:
    """Print a follow view: the phases so far, the current one and the outcome.

    ``now`` (the caller's clock) gives a stalled current phase its duration so far;
    without it, the duration it had when it was reported stalled is shown.
    """
    lines: list[tuple[str, str]] = []
    head = f"{view.server}: "
    if view.restore_id is None:
        lines.append((head + f"no restore seen ({view.health})", ""))
    else:
        lines.append((head + f"restore {view.restore_id[:8]} ({view.outcome})", "bold"))
    running = view.outcome in (Outcome.RUNNING, Outcome.STALLED)
    for p in view.phases:
        mark = " (inferred)" if p.inferred else ""
        stalled_for = view.stalled_for(p.phase)
        line_style = "dim" if p.inferred else ""
        if p.duration is None and running:
            if stalled_for is None:
                lasted = "now"
            else:
                lasted = f"stalled {_duration_text(_lasted(p, stalled_for, now))}"
                line_style = _STYLES[Outcome.STALLED]
        else:
            lasted = _duration_text(p.duration)
            if stalled_for is not None:
                lasted += " (stalled)"
        text = f"  {int(p.phase)}/{_LAST_CODE} {p.phase.name}{mark}"
        lines.append((f"{text:<40} {_time_text(p.entered_at)}  {lasted}", line_style))
    if view.outcome in (Outcome.RUNNING, Outcome.STALLED) and view.current_phase:
        lines.append(
            (
                f"  in {view.current_phase.name} since {_time_text(view.current_since)}",
                _STYLES[view.outcome],
            )
        )
    if view.outcome is Outcome.FAILED:
        lines.append((f"  failed: {view.reason or 'no reason recorded'}", "bold red"))
    if view.outcome is Outcome.COMPLETED:
        back = {
            True: "server back",
            False: "server did NOT come back",
            None: "waiting for the restart",
        }
        style = {True: "green", False: "bold red", None: "yellow"}
        lines.append(
            (
                f"  completed at {_time_text(view.ended_at)}; {back[view.server_back]}",
                style[view.server_back],
            )
        )
    if color:
        try:
            from rich.console import Console
            from rich.text import Text
        except ImportError:
            pass
        else:
            console = Console(file=console_file, force_terminal=True, highlight=False)
            for text, style_name in lines:
                console.print(Text(text, style=style_name))
            return
    for text, _ in lines:
        print(text, file=console_file)


def _lasted(p: FollowPhase, stalled_for: float, now: datetime | None) -> float:
    """How long the current phase ``p`` has lasted: by ``now``, else when it stalled."""
    if now is None:
        return stalled_for
    return max(stalled_for, _seconds(now - p.entered_at))


# --- helpers --------------------------------------------------------------------


def _states(journal: History) -> dict[str, ServerState]:
    return {
        name: ServerState.from_dict(d, at=_REFERENCE_AT, monotonic=0.0)
        for name, d in journal.load_states().items()
    }


def _phase(e: Event) -> Phase | None:
    name = e.data.get("phase")
    return Phase.from_status(name) if isinstance(name, str) else None


def _name(phase: Phase | None) -> str | None:
    return None if phase is None else phase.name


def _time_text(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _seconds(delta: Any) -> float:
    return round(float(delta.total_seconds()), 3)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _duration_text(seconds: float | None) -> str:
    """``0.4s``, ``12s``, ``2m05s``, ``1h02m``; ``-`` for none."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
