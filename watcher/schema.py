"""The JSON the contract prints: one builder per document, one time format.

Every JSON object an operator or a program reads from the watcher is built here:
``status --json``, ``restores``, ``follow``, ``outbox``, ``once``, ``audit verify``
and the daemon's ``/status``. The views, the status server and the CLI (and the
coming dashboard) call these functions instead of building dicts themselves, so the
shapes cannot drift apart. Pure: no I/O, no clock; rows come in as any object with
the attributes a :class:`typing.Protocol` below names.

Stable: fields are added, never renamed or removed. Times are :func:`format_time`
(``2026-11-29T10:00:01.250Z``), durations float seconds, absent values ``null``.

``status`` (:func:`status_json`)::

    {"server": str, "health": "ok" | "unreachable" | "restarting" | "auth_failed"
     | "tls_error" | "protocol_error" | "unknown", "phase": str | null,
     "code": int | null, "step": "k/7" | null,
     "phase_since": time | null, "in_phase_for": float | null,
     "restore_id": str | null, "restore_active": bool, "restore_since": time | null,
     "last_ok_at": time | null, "failures": int,
     "last_error": str | null, "last_failure": "unreachable" | "protocol" | "tls"
     | "auth" | null, "daemon_running": bool | null, "as_of": time | null,
     "stalled": bool}

    ``last_error`` is the latest failed poll's reason in words (whole; the table's
    REASON column shortens it); ``daemon_running`` whether a daemon holds the
    state directory's lock (null: unknown); ``as_of`` the time of the data shown
    (the daemon's answer, or the newest state the journal holds); ``stalled``
    whether the running restore outlasted ``stall_after`` in its current phase
    (``sklm.restore.stalled`` was sent; :func:`is_stalled`).

``/status`` servers (:func:`daemon_server_json`): the daemon's own names for the
same facts (``name``, ``since``, ``consecutive_failures``, ``restore_started_at``)
plus its poll counters. :data:`STATUS_FROM_DAEMON` is the one place that maps
them onto ``status``'s names, and :func:`status_fields_from_daemon` the one
reader of them.

``restores`` (:func:`restore_json`)::

    {"server": str, "restore_id": str, "outcome": "completed" | "failed"
     | "running" | "stalled", "started_at": time, "ended_at": time | null,
     "duration": float | null, "last_phase": str | null,
     "phases_observed": int, "phases_inferred": int, "restarted": bool,
     "reason": str | null}

``/api/restores/<restore_id>`` (:func:`restore_detail_json`)::

    {"restore": <a restores object>,
     "phases": [{"phase": str, "code": int, "inferred": bool, "entered_at": time,
                 "left_at": time | null, "duration": float | null,
                 "bracket": {"before": time | null, "after": time | null}}],
     "events": [<CloudEvents object>, ...]}

    ``bracket``: for an inferred phase, the two real polls around it (the last
    answer before it and the poll that revealed it); both null for an observed one.

``events``: each event's CloudEvents object (``Event.to_dict()``, as webhooks get it).

``follow`` (:func:`follow_json`)::

    {"server": str, "restore_id": str | null, "outcome": ... | null,
     "started_at": time | null, "ended_at": time | null, "reason": str | null,
     "current_phase": str | null, "current_since": time | null,
     "server_back": bool | null, "health": ...,
     "phases": [{"phase": str, "code": int, "inferred": bool,
                 "entered_at": time, "duration": float | null}]}

``audit verify`` (:func:`audit_verdict_json`)::

    {"ok": bool, "lines": int, "anchor": str | null, "last_hash": str | null,
     "first_bad": {"file": str, "line": int, "reason": str} | null}

``outbox`` (:func:`outbox_json`)::

    {"sinks": [{"sink": str, "pending": int, "dead": int,
                "oldest_pending_age": float | null}],
     "dead": [{"sink": str, "event_id": str, "type": str, "server": str,
               "attempts": int, "last_error": str | null, "dead_at": time | null}]}

``once`` (:func:`once_json`), one per server::

    {"server": str, "phase": str | null, "code": int | null, "latency": float,
     "error": str | null, "error_kind": str | null}

``status`` in a cluster (:func:`cluster_status_json`): the ``status`` object plus
``"node": str | null``, the node whose unexpired lease polls the server (null: none);
``daemon_running`` is then whether that node is alive.

``cluster`` (:func:`cluster_json`)::

    {"nodes": [{"name": str, "alive": bool, "left": bool, "leases": int,
                "heartbeat_at": time, "heartbeat_age": float, "version": str,
                "host": str, "pid": int, "started_at": time, "left_at": time | null}],
     "servers": int, "without_owner": [str, ...]}

    ``alive``: heartbeat within one lease period and not left; ``leases`` the
    unexpired server leases it holds; ``heartbeat_age`` seconds from its last
    heartbeat (the store's clock) to the command's ``now``; ``servers`` how many are
    configured, and ``without_owner`` those of them no live node holds a lease on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from os import PathLike
from typing import Any, Final, Protocol

from watcher.events import Event, parse_time
from watcher.events import format_time as format_time  # the one definition
from watcher.phases import Phase
from watcher.tracker import Health, ServerState, health_of

_LAST_CODE: Final = int(Phase.COMPLETED)

#: ``status``'s field names for the ``/status`` entry's names that differ. The
#: two documents grew apart before this module existed; both are published, so
#: neither is renamed: this table is what keeps them meaning the same thing.
STATUS_FROM_DAEMON: Final[Mapping[str, str]] = {
    "server": "name",
    "phase_since": "since",
    "failures": "consecutive_failures",
    "restore_since": "restore_started_at",
}


def optional_time(at: datetime | None) -> str | None:
    """:func:`format_time`, or None for no instant."""
    return None if at is None else format_time(at)


def step_text(phase: Phase | None) -> str | None:
    """The phase as ``k/7`` (IDLE is ``0/7``); None for no phase."""
    return None if phase is None else f"{int(phase)}/{_LAST_CODE}"


def _name(phase: Phase | None) -> str | None:
    return None if phase is None else phase.name


def _code(phase: Phase | None) -> int | None:
    return None if phase is None else int(phase)


def _word(value: str | None) -> str | None:
    return None if value is None else str(value)


# --- the shapes rows must have --------------------------------------------------


class StatusRecord(Protocol):
    """What :func:`status_json` reads (``views.ServerStatusRow``)."""

    @property
    def server(self) -> str: ...  # noqa: D102
    @property
    def health(self) -> Health: ...  # noqa: D102
    @property
    def phase(self) -> Phase | None: ...  # noqa: D102
    @property
    def phase_since(self) -> datetime | None: ...  # noqa: D102
    @property
    def in_phase_for(self) -> float | None: ...  # noqa: D102
    @property
    def restore_id(self) -> str | None: ...  # noqa: D102
    @property
    def restore_active(self) -> bool: ...  # noqa: D102
    @property
    def restore_since(self) -> datetime | None: ...  # noqa: D102
    @property
    def last_ok_at(self) -> datetime | None: ...  # noqa: D102
    @property
    def failures(self) -> int: ...  # noqa: D102
    @property
    def last_error(self) -> str | None: ...  # noqa: D102
    @property
    def last_failure(self) -> str | None: ...  # noqa: D102
    @property
    def daemon_running(self) -> bool | None: ...  # noqa: D102
    @property
    def as_of(self) -> datetime | None: ...  # noqa: D102
    @property
    def stalled(self) -> bool: ...  # noqa: D102


class RestoreRecord(Protocol):
    """What :func:`restore_json` reads (``views.RestoreRow``)."""

    @property
    def server(self) -> str: ...  # noqa: D102
    @property
    def restore_id(self) -> str: ...  # noqa: D102
    @property
    def outcome(self) -> str: ...  # noqa: D102
    @property
    def started_at(self) -> datetime: ...  # noqa: D102
    @property
    def ended_at(self) -> datetime | None: ...  # noqa: D102
    @property
    def duration(self) -> float | None: ...  # noqa: D102
    @property
    def last_phase(self) -> Phase | None: ...  # noqa: D102
    @property
    def phases_observed(self) -> int: ...  # noqa: D102
    @property
    def phases_inferred(self) -> int: ...  # noqa: D102
    @property
    def restarted(self) -> bool: ...  # noqa: D102
    @property
    def reason(self) -> str | None: ...  # noqa: D102


class FollowPhaseRecord(Protocol):
    """What :func:`follow_phase_json` reads (``views.FollowPhase``)."""

    @property
    def phase(self) -> Phase: ...  # noqa: D102
    @property
    def inferred(self) -> bool: ...  # noqa: D102
    @property
    def entered_at(self) -> datetime: ...  # noqa: D102
    @property
    def duration(self) -> float | None: ...  # noqa: D102


class FollowRecord(Protocol):
    """What :func:`follow_json` reads (``views.FollowView``)."""

    @property
    def server(self) -> str: ...  # noqa: D102
    @property
    def health(self) -> Health: ...  # noqa: D102
    @property
    def restore_id(self) -> str | None: ...  # noqa: D102
    @property
    def outcome(self) -> str | None: ...  # noqa: D102
    @property
    def started_at(self) -> datetime | None: ...  # noqa: D102
    @property
    def ended_at(self) -> datetime | None: ...  # noqa: D102
    @property
    def reason(self) -> str | None: ...  # noqa: D102
    @property
    def phases(self) -> Sequence[FollowPhaseRecord]: ...  # noqa: D102
    @property
    def current_phase(self) -> Phase | None: ...  # noqa: D102
    @property
    def current_since(self) -> datetime | None: ...  # noqa: D102
    @property
    def server_back(self) -> bool | None: ...  # noqa: D102


class AuditFaultRecord(Protocol):
    """What :func:`audit_verdict_json` reads of the first bad line."""

    @property
    def file(self) -> PathLike[str] | str: ...  # noqa: D102
    @property
    def line(self) -> int: ...  # noqa: D102
    @property
    def reason(self) -> str: ...  # noqa: D102


class AuditRecord(Protocol):
    """What :func:`audit_verdict_json` reads (the audit verifier's verdict)."""

    @property
    def ok(self) -> bool: ...  # noqa: D102
    @property
    def lines(self) -> int: ...  # noqa: D102
    @property
    def anchor(self) -> str | None: ...  # noqa: D102
    @property
    def last_hash(self) -> str | None: ...  # noqa: D102
    @property
    def first_bad(self) -> AuditFaultRecord | None: ...  # noqa: D102


class BacklogRecord(Protocol):
    """One sink's outbox summary (``store.base.OutboxSummary``)."""

    @property
    def sink(self) -> str: ...  # noqa: D102
    @property
    def pending(self) -> int: ...  # noqa: D102
    @property
    def dead(self) -> int: ...  # noqa: D102
    @property
    def oldest_pending_age(self) -> float | None: ...  # noqa: D102


class DeadLetterRecord(Protocol):
    """One dead-lettered outbox row (``store.base.OutboxRow``)."""

    @property
    def sink(self) -> str: ...  # noqa: D102
    @property
    def event(self) -> Event: ...  # noqa: D102
    @property
    def attempts(self) -> int: ...  # noqa: D102
    @property
    def last_error(self) -> str | None: ...  # noqa: D102
    @property
    def dead_at(self) -> datetime | None: ...  # noqa: D102


class OnceRecord(Protocol):
    """One server's answer to ``sklm-watcher once``."""

    @property
    def server(self) -> str: ...  # noqa: D102
    @property
    def phase(self) -> str | None: ...  # noqa: D102
    @property
    def code(self) -> int | None: ...  # noqa: D102
    @property
    def latency(self) -> float: ...  # noqa: D102
    @property
    def error(self) -> str | None: ...  # noqa: D102
    @property
    def error_kind(self) -> str | None: ...  # noqa: D102


class PollCounters(Protocol):
    """A server's poll counters as ``/status`` shows them (``service.PollStats``)."""

    @property
    def last_poll_at(self) -> datetime | None: ...  # noqa: D102
    @property
    def last_latency(self) -> float | None: ...  # noqa: D102
    @property
    def polls_ok(self) -> int: ...  # noqa: D102
    @property
    def polls_failed(self) -> int: ...  # noqa: D102


# --- status -----------------------------------------------------------------------


def status_json(row: StatusRecord) -> dict[str, Any]:
    """One server's ``status --json`` object (module docstring)."""
    return {
        "server": row.server,
        "health": str(row.health),
        "phase": _name(row.phase),
        "code": _code(row.phase),
        "step": step_text(row.phase),
        "phase_since": optional_time(row.phase_since),
        "in_phase_for": row.in_phase_for,
        "restore_id": row.restore_id,
        "restore_active": row.restore_active,
        "restore_since": optional_time(row.restore_since),
        "last_ok_at": optional_time(row.last_ok_at),
        "failures": row.failures,
        "last_error": row.last_error,
        "last_failure": row.last_failure,
        "daemon_running": row.daemon_running,
        "as_of": optional_time(row.as_of),
        "stalled": row.stalled,
    }


class ClusterStatusRecord(StatusRecord, Protocol):
    """What :func:`cluster_status_json` reads (``views.ClusterStatusRow``)."""

    @property
    def node(self) -> str | None: ...  # noqa: D102


def cluster_status_json(row: ClusterStatusRecord) -> dict[str, Any]:
    """One server's ``status --json`` object in a cluster: with ``node``."""
    return {**status_json(row), "node": row.node}


def is_stalled(state: ServerState) -> bool:
    """Whether ``state``'s running restore is reported stalled in its current phase.

    The same test as the ``restore_stalled`` metric: a restore waiting for the
    server's restart after COMPLETED is not stalled.
    """
    return state.restore_active and state.stall_reported and not state.awaiting_restart


def daemon_server_json(
    name: str, state: ServerState, stats: PollCounters | None
) -> dict[str, Any]:
    """One server's entry of the daemon's ``/status`` (JSON-safe)."""
    phase = state.phase
    return {
        "name": name,
        "health": str(health_of(state)),
        "phase": _name(phase),
        "code": _code(phase),
        "since": optional_time(state.phase_since_at),
        "restore_active": state.restore_active,
        "restore_id": state.restore_id,
        "restore_started_at": optional_time(state.restore_started_at),
        "awaiting_restart": state.awaiting_restart,
        "consecutive_failures": state.consecutive_failures,
        "last_ok_at": optional_time(state.last_ok_at),
        # The reason in words is the client error's detail: never a secret.
        "last_error": state.last_error,
        "last_failure": _word(state.last_failure),
        "last_poll_at": optional_time(stats.last_poll_at if stats else None),
        "last_latency": stats.last_latency if stats else None,
        "polls_ok": stats.polls_ok if stats else 0,
        "polls_failed": stats.polls_failed if stats else 0,
        "stalled": is_stalled(state),
    }


def in_phase_for(since: datetime | None, now: datetime) -> float | None:
    """Seconds from ``since`` to ``now``, to the millisecond (None without ``since``)."""
    return None if since is None else round((now - since).total_seconds(), 3)


def status_fields_from_daemon(
    entry: Mapping[str, Any], *, now: datetime, as_of: datetime
) -> dict[str, Any]:
    """Read one :func:`daemon_server_json` entry back as a status row's fields.

    The keyword arguments of ``views.ServerStatusRow`` (typed: phases, health and
    instants parsed), so a row from the daemon and a row from the journal print
    the same ``status`` JSON.

    Args:
        entry: One element of ``/status``'s ``servers``.
        now: The instant ``in_phase_for`` is measured to.
        as_of: When the daemon's answer was true (its ``as_of``).

    Raises:
        KeyError, ValueError: ``entry`` is not a ``/status`` server entry.
    """

    def field(name: str) -> Any:
        return entry.get(STATUS_FROM_DAEMON.get(name, name))

    def at(name: str) -> datetime | None:
        value = field(name)
        return None if value is None else parse_time(str(value))

    def text(name: str) -> str | None:
        value = field(name)
        return None if value is None else str(value)

    phase = field("phase")
    since = at("phase_since")
    active = bool(field("restore_active"))
    return {
        "server": str(entry[STATUS_FROM_DAEMON["server"]]),
        "health": Health(field("health")),
        "phase": None if phase is None else Phase[str(phase)],
        "phase_since": since,
        "in_phase_for": in_phase_for(since, now),
        "restore_id": text("restore_id"),
        "restore_active": active,
        # ``/status`` keeps the last restore's start; status shows a running one's.
        "restore_since": at("restore_since") if active else None,
        "last_ok_at": at("last_ok_at"),
        "failures": int(field("failures") or 0),
        "last_error": text("last_error"),
        "last_failure": text("last_failure"),
        "daemon_running": True,
        "as_of": as_of,
        # Absent from an older daemon's /status: not known to be stalled.
        "stalled": bool(field("stalled")),
    }


# --- restores and follow ----------------------------------------------------------


def restore_json(row: RestoreRecord) -> dict[str, Any]:
    """One restore's ``restores --json`` object (module docstring)."""
    return {
        "server": row.server,
        "restore_id": row.restore_id,
        "outcome": str(row.outcome),
        "started_at": format_time(row.started_at),
        "ended_at": optional_time(row.ended_at),
        "duration": row.duration,
        "last_phase": _name(row.last_phase),
        "phases_observed": row.phases_observed,
        "phases_inferred": row.phases_inferred,
        "restarted": row.restarted,
        "reason": row.reason,
    }


class DetailPhaseRecord(Protocol):
    """What :func:`detail_phase_json` reads (``views.DetailPhase``)."""

    @property
    def phase(self) -> Phase: ...  # noqa: D102
    @property
    def inferred(self) -> bool: ...  # noqa: D102
    @property
    def entered_at(self) -> datetime: ...  # noqa: D102
    @property
    def left_at(self) -> datetime | None: ...  # noqa: D102
    @property
    def duration(self) -> float | None: ...  # noqa: D102
    @property
    def poll_before(self) -> datetime | None: ...  # noqa: D102
    @property
    def poll_after(self) -> datetime | None: ...  # noqa: D102


class DetailRecord(Protocol):
    """What :func:`restore_detail_json` reads (``views.RestoreDetail``)."""

    @property
    def restore(self) -> RestoreRecord: ...  # noqa: D102
    @property
    def phases(self) -> Sequence[DetailPhaseRecord]: ...  # noqa: D102
    @property
    def events(self) -> Sequence[Event]: ...  # noqa: D102


def detail_phase_json(phase: DetailPhaseRecord) -> dict[str, Any]:
    """One element of the restore detail's ``phases`` (brackets null if observed)."""
    return {
        "phase": phase.phase.name,
        "code": int(phase.phase),
        "inferred": phase.inferred,
        "entered_at": format_time(phase.entered_at),
        "left_at": optional_time(phase.left_at),
        "duration": phase.duration,
        "bracket": {
            "before": optional_time(phase.poll_before),
            "after": optional_time(phase.poll_after),
        },
    }


def restore_detail_json(detail: DetailRecord) -> dict[str, Any]:
    """The ``/api/restores/<restore_id>`` object (module docstring)."""
    return {
        "restore": restore_json(detail.restore),
        "phases": [detail_phase_json(p) for p in detail.phases],
        "events": [e.to_dict() for e in detail.events],
    }


def follow_phase_json(phase: FollowPhaseRecord) -> dict[str, Any]:
    """One element of ``follow``'s ``phases``."""
    return {
        "phase": phase.phase.name,
        "code": int(phase.phase),
        "inferred": phase.inferred,
        "entered_at": format_time(phase.entered_at),
        "duration": phase.duration,
    }


def follow_json(view: FollowRecord) -> dict[str, Any]:
    """One ``follow --json`` line (module docstring)."""
    return {
        "server": view.server,
        "restore_id": view.restore_id,
        "outcome": _word(view.outcome),
        "started_at": optional_time(view.started_at),
        "ended_at": optional_time(view.ended_at),
        "reason": view.reason,
        "current_phase": _name(view.current_phase),
        "current_since": optional_time(view.current_since),
        "server_back": view.server_back,
        "health": str(view.health),
        "phases": [follow_phase_json(p) for p in view.phases],
    }


# --- audit, outbox, once ----------------------------------------------------------


def audit_fault_json(fault: AuditFaultRecord) -> dict[str, Any]:
    """``{"file", "line", "reason"}`` of the first line that does not chain."""
    return {"file": str(fault.file), "line": fault.line, "reason": fault.reason}


def audit_verdict_json(verdict: AuditRecord) -> dict[str, Any]:
    """The ``audit verify --json`` object (module docstring)."""
    bad = verdict.first_bad
    return {
        "ok": verdict.ok,
        "lines": verdict.lines,
        "anchor": verdict.anchor,
        "last_hash": verdict.last_hash,
        "first_bad": None if bad is None else audit_fault_json(bad),
    }


def sink_backlog_json(backlog: BacklogRecord) -> dict[str, Any]:
    """One sink's backlog (``outbox``'s ``sinks`` and ``/status``'s ``outbox``)."""
    return {
        "sink": backlog.sink,
        "pending": backlog.pending,
        "dead": backlog.dead,
        "oldest_pending_age": backlog.oldest_pending_age,
    }


def dead_letter_json(row: DeadLetterRecord) -> dict[str, Any]:
    """One dead letter of ``outbox --dead --json``."""
    return {
        "sink": row.sink,
        "event_id": row.event.id,
        "type": str(row.event.type),
        "server": row.event.server,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "dead_at": optional_time(row.dead_at),
    }


def outbox_json(
    sinks: Iterable[BacklogRecord], dead: Iterable[DeadLetterRecord] = ()
) -> dict[str, Any]:
    """The ``outbox --json`` object (``dead`` is empty without ``--dead``)."""
    return {
        "sinks": [sink_backlog_json(s) for s in sinks],
        "dead": [dead_letter_json(r) for r in dead],
    }


def once_json(row: OnceRecord) -> dict[str, Any]:
    """One server's ``once --json`` object (latency to 0.1 ms)."""
    return {
        "server": row.server,
        "phase": row.phase,
        "code": row.code,
        "latency": round(row.latency, 4),
        "error": row.error,
        "error_kind": row.error_kind,
    }


# --- silence ----------------------------------------------------------------------


class SilenceRecord(Protocol):
    """One silence (``store.base.Silence``)."""

    @property
    def id(self) -> int: ...  # noqa: D102
    @property
    def server_glob(self) -> str: ...  # noqa: D102
    @property
    def until(self) -> datetime: ...  # noqa: D102
    @property
    def reason(self) -> str: ...  # noqa: D102
    @property
    def created_at(self) -> datetime: ...  # noqa: D102
    @property
    def removed_at(self) -> datetime | None: ...  # noqa: D102
    @property
    def removed_by(self) -> str | None: ...  # noqa: D102


def silence_json(silence: SilenceRecord) -> dict[str, Any]:
    """One silence of ``silence list --json``."""
    return {
        "id": silence.id,
        "server_glob": silence.server_glob,
        "until": format_time(silence.until),
        "reason": silence.reason,
        "created_at": format_time(silence.created_at),
        "removed_at": optional_time(silence.removed_at),
        "removed_by": silence.removed_by,
    }


# --- cluster ----------------------------------------------------------------------


class NodeRecord(Protocol):
    """One node as the store knows it (``store.base.NodeRow``)."""

    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def version(self) -> str: ...  # noqa: D102
    @property
    def host(self) -> str: ...  # noqa: D102
    @property
    def pid(self) -> int: ...  # noqa: D102
    @property
    def started_at(self) -> datetime: ...  # noqa: D102
    @property
    def heartbeat_at(self) -> datetime: ...  # noqa: D102
    @property
    def alive(self) -> bool: ...  # noqa: D102
    @property
    def leases(self) -> int: ...  # noqa: D102
    @property
    def left_at(self) -> datetime | None: ...  # noqa: D102


class NodeStatusRecord(Protocol):
    """One row of ``cluster`` (``views.NodeStatusRow``)."""

    @property
    def node(self) -> NodeRecord: ...  # noqa: D102
    @property
    def heartbeat_age(self) -> float: ...  # noqa: D102


class ClusterRecord(Protocol):
    """The whole ``cluster`` view (``views.ClusterView``)."""

    @property
    def nodes(self) -> Sequence[NodeStatusRecord]: ...  # noqa: D102
    @property
    def servers(self) -> int: ...  # noqa: D102
    @property
    def without_owner(self) -> Sequence[str]: ...  # noqa: D102


def node_json(row: NodeStatusRecord) -> dict[str, Any]:
    """One node of ``cluster --json`` (module docstring)."""
    node = row.node
    return {
        "name": node.name,
        "alive": node.alive,
        "left": node.left_at is not None,
        "leases": node.leases,
        "heartbeat_at": format_time(node.heartbeat_at),
        "heartbeat_age": row.heartbeat_age,
        "version": node.version,
        "host": node.host,
        "pid": node.pid,
        "started_at": format_time(node.started_at),
        "left_at": optional_time(node.left_at),
    }


def cluster_json(view: ClusterRecord) -> dict[str, Any]:
    """The ``cluster --json`` object (module docstring)."""
    return {
        "nodes": [node_json(row) for row in view.nodes],
        "servers": view.servers,
        "without_owner": list(view.without_owner),
    }
