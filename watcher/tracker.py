"""The phase tracker: a pure state machine from observations to events.

``step(config, state, observation) -> Step(state, events, save)``. No I/O, no clock
reads, no logging, no randomness: time arrives inside the observation.

What a restore looks like from outside (``../shared/sklm-api.md``): phases
INITIALIZE..CLEANUP in order, then COMPLETED, then the server restarts itself; a
failed restore drops back to IDLE (SKLM has no FAILED phase). Polls miss short phases,
so the tracker fills the gaps with ``inferred`` phase events, and it reads the
restart (the server gone, or rejecting the watcher's session) as the sign that a
restore whose COMPLETED it never saw did complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from watcher.config import ServerConfig

# Failure is defined beside the error classes that name it (SklmError.failure_kind);
# re-exported here because an Observation carries it.
from watcher.errors import Failure as Failure
from watcher.events import Event, EventType, format_time, parse_time, stable_id
from watcher.phases import Phase, phases_between

#: Version of the :meth:`ServerState.to_dict` layout.
STATE_VERSION: Final = 1

# State fields that change on every poll: persisted with the rest, but a change in
# them alone does not make a step worth saving (the journal is written per
# transition, never per poll).
_VOLATILE: Final = frozenset({"consecutive_failures", "last_ok_at"})
# State fields that live only in the running process: never persisted, and a change
# in them never makes a step worth saving.
_TRANSIENT: Final = frozenset({"resumed"})


@dataclass(frozen=True, slots=True)
class Observation:
    """The outcome of one poll of one server, stamped by the scheduler.

    Exactly one of ``phase`` and ``failure`` is set.

    Args:
        at: Wall-clock time (aware UTC) when the answer arrived.
        monotonic: Monotonic clock reading at the same moment (durations, stalls).
        latency: Seconds the poll took.
        phase: The phase SKLM reported.
        failure: Why there is no phase.
        detail: The error's message (no secrets) when ``failure`` is set.
        relogin: True when the client had to log in again because the server
            rejected a session id it had accepted before (a restart sign).
        result: ``/ckms/restore/result`` hint (-1 unknown, 0 success, 1 failure),
            fetched by the scheduler when a restore's progress went back (failed,
            or restarted before COMPLETED was seen) or on the first answer after
            the watcher's own downtime; None otherwise (a live COMPLETED answer
            is evidence enough and is journaled without waiting for it).
    """

    at: datetime
    monotonic: float
    latency: float = 0.0
    phase: Phase | None = None
    failure: Failure | None = None
    detail: str = ""
    relogin: bool = False
    result: int | None = None


@dataclass(frozen=True, slots=True)
class PhaseVisit:
    """One phase of a restore's timeline.

    Args:
        phase: The phase.
        inferred: True when no poll saw it (it passed between two polls).
        entered_at: The poll that revealed it; for an inferred phase an upper bound
            (it was entered between the previous poll and this one).
        entered_monotonic: The monotonic reading of that poll.
    """

    phase: Phase
    inferred: bool
    entered_at: datetime
    entered_monotonic: float


@dataclass(frozen=True, slots=True)
class ServerState:
    """What the tracker knows about one server between two observations.

    Everything needed to resume after a restart of the daemon is in here and is
    persisted by the journal as JSON (see ``to_dict`` / ``from_dict``). Wall-clock
    instants are ``*_at``; the matching ``*_monotonic`` readings measure durations
    and are rebased onto the current process by ``from_dict``.
    """

    #: The last phase observed (or inferred); None before the first answer.
    phase: Phase | None = None
    #: When the current phase was first seen.
    phase_since_at: datetime | None = None
    phase_since_monotonic: float | None = None
    #: A stall of the current phase has been reported.
    stall_reported: bool = False
    #: The restore in progress, or else the last one seen (None before any).
    restore_id: str | None = None
    #: A restore is running (started, neither completed nor failed yet).
    restore_active: bool = False
    #: The restore was already running when the watcher first saw the server.
    seen_at_startup: bool = False
    #: The phases of ``restore_id`` so far, in order (observed and inferred).
    timeline: tuple[PhaseVisit, ...] = ()
    #: The server is expected to restart: COMPLETED was seen (or CLEANUP and then
    #: the server went away) and it has not come back yet.
    awaiting_restart: bool = False
    #: The outage in progress (failed polls since the last good one), if any.
    outage_id: str | None = None
    outage_since_at: datetime | None = None
    outage_since_monotonic: float | None = None
    consecutive_failures: int = 0
    unreachable_reported: bool = False
    #: Credentials were rejected and no poll has succeeded since.
    auth_failed: bool = False
    auth_run_id: str | None = None
    #: When the credentials were first rejected (for ``sklm.auth.recovered``).
    auth_failed_since_at: datetime | None = None
    auth_failed_since_monotonic: float | None = None
    #: The last successful poll.
    last_ok_at: datetime | None = None
    #: While failing (or after rejected credentials): the kind and the reason in
    #: words of the latest failed poll (the client error's ``detail``, no secrets).
    #: Cleared by the next successful poll.
    last_failure: Failure | None = None
    last_error: str | None = None
    #: Loaded by :meth:`from_dict` and no phase observed since: the watcher itself
    #: was down, so the first answer may follow a gap of unknown content (the end of
    #: a restore, the restart after one). Not persisted (issue #3).
    resumed: bool = False

    @property
    def failing(self) -> bool:
        """Whether the last polls failed (an outage is in progress; AUTH aside)."""
        return self.consecutive_failures > 0

    @property
    def restore_started_at(self) -> datetime | None:
        """When the current (or last) restore was first seen, if any."""
        return self.timeline[0].entered_at if self.timeline else None

    def to_dict(self) -> dict[str, Any]:
        """Return the state as a JSON-safe dict (times ISO 8601, phases by name)."""
        return {
            "version": STATE_VERSION,
            "phase": _phase_name(self.phase),
            "phase_since_at": _iso(self.phase_since_at),
            "stall_reported": self.stall_reported,
            "restore_id": self.restore_id,
            "restore_active": self.restore_active,
            "seen_at_startup": self.seen_at_startup,
            "timeline": [
                {
                    "phase": visit.phase.name,
                    "inferred": visit.inferred,
                    "entered_at": visit.entered_at.isoformat(),
                }
                for visit in self.timeline
            ],
            "awaiting_restart": self.awaiting_restart,
            "outage_id": self.outage_id,
            "outage_since_at": _iso(self.outage_since_at),
            "consecutive_failures": self.consecutive_failures,
            "unreachable_reported": self.unreachable_reported,
            "auth_failed": self.auth_failed,
            "auth_run_id": self.auth_run_id,
            "auth_failed_since_at": _iso(self.auth_failed_since_at),
            "last_ok_at": _iso(self.last_ok_at),
            "last_failure": None
            if self.last_failure is None
            else str(self.last_failure),
            "last_error": self.last_error,
        }

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, at: datetime, monotonic: float
    ) -> ServerState:
        """Rebuild a state saved by :meth:`to_dict`, possibly by an earlier process.

        Monotonic readings do not survive a process, so each is rebased from its
        wall-clock twin: ``mono = monotonic - (at - wall)``. Time spent while the
        daemon was down therefore counts towards stalls and outages. The state is
        marked ``resumed``: the next successful observation reads the daemon's
        downtime as a gap it could not observe.

        Args:
            d: What ``to_dict`` returned (missing keys take their defaults).
            at: The current wall-clock time (aware).
            monotonic: The current monotonic reading, taken with ``at``.

        Raises:
            ValueError: When ``d`` is not a state this version understands.
        """
        try:
            return _state_from_dict(d, at=at, monotonic=monotonic)
        except TypeError as exc:
            raise ValueError(f"not a tracker state: {exc}") from exc


class Health(StrEnum):
    """A server's health, as ``/status`` and ``sklm-watcher status`` show it."""

    OK = "ok"
    UNREACHABLE = "unreachable"
    RESTARTING = "restarting"
    AUTH_FAILED = "auth_failed"
    #: Failing with a TLS error: reachable, but the certificate or pin is wrong.
    TLS_ERROR = "tls_error"
    #: Failing with answers that are not SKLM's (wrong path, HTML page, 5xx).
    PROTOCOL_ERROR = "protocol_error"
    #: Not polled yet (and nothing known from an earlier run).
    UNKNOWN = "unknown"


def health_of(state: ServerState | None) -> Health:
    """Classify a server's state in one word.

    Rejected credentials win (nothing else is known until they are fixed); after a
    restore the server is ``restarting`` until it is back, or ``unreachable`` once
    that took long enough to be reported; a failing server is ``tls_error`` or
    ``protocol_error`` when the last failure says it answered but wrongly (those
    need a configuration fix, not a wait), else ``unreachable``; one never heard
    from is ``unknown``.
    """
    if state is None:
        return Health.UNKNOWN
    if state.auth_failed:
        return Health.AUTH_FAILED
    if state.awaiting_restart and not state.unreachable_reported:
        return Health.RESTARTING
    if state.failing:
        return _FAILING_HEALTH.get(state.last_failure, Health.UNREACHABLE)
    if state.phase is None and state.last_ok_at is None:
        return Health.UNKNOWN
    return Health.OK


_FAILING_HEALTH: Final[Mapping[Failure | None, Health]] = {
    Failure.TLS: Health.TLS_ERROR,
    Failure.PROTOCOL: Health.PROTOCOL_ERROR,
}

_DURABLE_FIELDS: Final = tuple(
    f.name
    for f in fields(ServerState)
    if f.name not in _VOLATILE and f.name not in _TRANSIENT
)


@dataclass(frozen=True, slots=True)
class Step:
    """The result of one tracker step: the new state and the events it produced.

    ``save`` is True when the events are not empty or a durable field of the state
    changed (phase, restore, outage, auth or stall flags): the scheduler writes to
    the journal only then, never merely because a poll happened.
    """

    state: ServerState
    events: tuple[Event, ...] = ()
    save: bool = False


def step(config: ServerConfig, state: ServerState, observation: Observation) -> Step:
    """Advance one server's state by one observation and return the events.

    Events come in causal order, each timed at ``observation.at``.

    Raises:
        ValueError: When the observation has both or neither of phase and failure.
    """
    if (observation.phase is None) == (observation.failure is None):
        raise ValueError("an observation has exactly one of phase and failure")
    run = _Run(config, state, observation)
    if observation.phase is not None:
        _on_phase(run, observation.phase)
    elif observation.failure is Failure.AUTH:
        _on_auth(run)
    else:
        _on_failure(run)
    new = run.state
    save = bool(run.events) or _durable_changed(state, new)
    return Step(state=new, events=tuple(run.events), save=save)


class _Run:
    """The working area of one step: the state so far and the events so far."""

    __slots__ = ("config", "events", "obs", "previous_poll_at", "state")

    def __init__(self, config: ServerConfig, state: ServerState, obs: Observation):
        self.config = config
        self.state = state
        self.obs = obs
        self.previous_poll_at = state.last_ok_at
        self.events: list[Event] = []

    def update(self, **changes: Any) -> None:
        # Most polls change nothing: skip the copy then (the idle poll is the hot path).
        current = self.state
        if any(getattr(current, key) != value for key, value in changes.items()):
            self.state = replace(current, **changes)

    def make(self, type: EventType, data: dict[str, Any], *key: str) -> Event:
        return Event.create(type, self.config.name, self.obs.at, data, key=key)

    def emit(self, type: EventType, data: dict[str, Any], *key: str) -> None:
        self.events.append(self.make(type, data, *key))

    def restore_id(self) -> str:
        rid = self.state.restore_id
        if rid is None:  # pragma: no cover - every caller has started a restore
            raise AssertionError("no restore in progress")
        return rid


# --- the three kinds of observation ---------------------------------------------


def _on_phase(run: _Run, cur: Phase) -> None:
    s = run.state
    obs = run.obs
    came_back = s.consecutive_failures > 0
    down_for: float | None = None
    if came_back and s.outage_since_monotonic is not None:
        down_for = _seconds(obs.monotonic - s.outage_since_monotonic)
    late = came_back and s.unreachable_reported
    if late and s.outage_id is not None:
        run.emit(
            EventType.SERVER_RECOVERED,
            {
                "down_for": down_for,
                "phase": cur.name,
                "since": _fmt(s.outage_since_at),
                "after_restore": s.awaiting_restart,
                "restore_id": _relevant_restore(s),
            },
            s.outage_id,
        )
    if s.auth_failed and s.auth_run_id is not None:
        # Logging in works again (SIGHUP with a new password, or fixed on SKLM):
        # without this event the server went silently from auth_failed to ok.
        failed_for = None
        if s.auth_failed_since_monotonic is not None:
            failed_for = _seconds(obs.monotonic - s.auth_failed_since_monotonic)
        run.emit(
            EventType.AUTH_RECOVERED,
            {
                "phase": cur.name,
                "since": _fmt(s.auth_failed_since_at),
                "failed_for": failed_for,
            },
            s.auth_run_id,
        )
    run.update(
        outage_id=None,
        outage_since_at=None,
        outage_since_monotonic=None,
        consecutive_failures=0,
        unreachable_reported=False,
        auth_failed=False,
        auth_run_id=None,
        auth_failed_since_at=None,
        auth_failed_since_monotonic=None,
        last_failure=None,
        last_error=None,
    )
    back = _Return(came_back=came_back, down_for=down_for, late=late)
    prev = s.phase
    if prev is None or (prev.is_active and not s.restore_active):
        # First answer (or a state that lost its restore): nothing came before it
        # that we saw, so invent no earlier phases. IDLE and COMPLETED say nothing
        # about a restore we could still report.
        if cur.is_active:
            _start_restore(run, cur, at_startup=True)
    elif s.resumed and _may_have_ended_unseen(s, prev, cur):
        _resume(run, prev, cur, back)
    elif s.restore_active:
        _advance_restore(run, prev, cur, back)
    else:
        _after_restore(run, prev, cur, back)
    if cur is not prev:
        run.update(
            phase=cur,
            phase_since_at=obs.at,
            phase_since_monotonic=obs.monotonic,
            stall_reported=False,
        )
    # The first answer after a resume has decided about the downtime.
    run.update(last_ok_at=obs.at, resumed=False)
    stall = _stall(run)
    if stall is not None:
        run.events.append(stall[1])


def _on_failure(run: _Run) -> None:
    s = run.state
    obs = run.obs
    if s.consecutive_failures == 0:
        run.update(
            outage_id=stable_id(run.config.name, "outage", format_time(obs.at)),
            outage_since_at=obs.at,
            outage_since_monotonic=obs.monotonic,
            unreachable_reported=False,
        )
    run.update(
        consecutive_failures=s.consecutive_failures + 1,
        last_failure=obs.failure,
        last_error=obs.detail or None,
    )
    if s.restore_active and s.phase is Phase.CLEANUP:
        # The restart SKLM does after a restore may begin before we poll COMPLETED.
        run.update(awaiting_restart=True)
    found = [x for x in (_stall(run), _unreachable(run)) if x is not None]
    found.sort(key=lambda x: x[0])  # the threshold crossed first comes first
    run.events.extend(event for _, event in found)


def _on_auth(run: _Run) -> None:
    # Rejected credentials are a configuration problem, not an outage: they leave
    # the outage bookkeeping as it is (the server answered, but told us no phase).
    stall = _stall(run)
    if stall is not None:
        run.events.append(stall[1])
    run.update(last_failure=Failure.AUTH, last_error=run.obs.detail or None)
    if not run.state.auth_failed:
        run_id = stable_id(run.config.name, "auth", format_time(run.obs.at))
        run.emit(
            EventType.AUTH_FAILED,
            {"detail": run.obs.detail, "phase": _phase_name(run.state.phase)},
            run_id,
        )
        run.update(
            auth_failed=True,
            auth_run_id=run_id,
            auth_failed_since_at=run.obs.at,
            auth_failed_since_monotonic=run.obs.monotonic,
        )


# --- restores --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Return:
    """How the server came back on this poll, if it had gone away."""

    came_back: bool
    down_for: float | None
    late: bool


def _advance_restore(run: _Run, prev: Phase, cur: Phase, back: _Return) -> None:
    """A restore is running (last seen in ``prev``) and the server answered ``cur``."""
    relogin = run.obs.relogin
    if cur is prev:
        # Back in the same phase: a blip, not the restart (that resets progress).
        run.update(awaiting_restart=False)
        return
    if cur > prev:
        _enter_phases(run, _gap(prev, cur), previous=prev)
        if cur is Phase.COMPLETED:
            _complete(run, inferred=False)
            if relogin:
                _restarted(run, cur, back)
        return
    # Progress went back: the restore ended between two polls.
    if prev is Phase.CLEANUP and (back.came_back or relogin):
        # Gone (or restarted) after CLEANUP and back: that is the restart SKLM does
        # after a successful restore, so COMPLETED passed while we were not looking.
        _enter_phases(run, ((Phase.COMPLETED, True),), previous=prev)
        _complete(run, inferred=True)
        _restarted(run, cur, back)
    else:
        _fail(run, _failure_reason(prev, cur, back.came_back, relogin, run.obs.result))
    if cur.is_active:
        _start_restore(run, cur, at_startup=False)


def _after_restore(run: _Run, prev: Phase, cur: Phase, back: _Return) -> None:
    """No restore is running (last seen IDLE or COMPLETED) and the server answered."""
    if run.state.awaiting_restart:
        if cur is Phase.COMPLETED:
            # Still COMPLETED: only a rejected session proves it restarted; a plain
            # gap with the session intact was a network blip before the restart.
            if run.obs.relogin:
                _restarted(run, cur, back)
        elif back.came_back or run.obs.relogin:
            _restarted(run, cur, back)
        elif cur is not prev or _restart_overdue(run):
            # Progress reset without a visible restart: nothing more to wait for.
            # (Still IDLE, after restore/result said the restart was yet to come,
            # see _resume: keep watching for it, up to restart_timeout.)
            run.update(awaiting_restart=False)
    if cur is not prev and cur is not Phase.IDLE:
        _start_restore(run, cur, at_startup=False)


def _may_have_ended_unseen(s: ServerState, prev: Phase, cur: Phase) -> bool:
    """Whether ``cur``, after the watcher's downtime, may hide an end or a restart.

    A running restore whose progress went back (to IDLE, or to an earlier phase: a
    new restore), or a restart still expected after COMPLETED and the server not
    COMPLETED any more. The same or a later phase is the ordinary path.
    """
    if s.restore_active:
        return cur < prev
    return s.awaiting_restart and cur is not Phase.COMPLETED


def _resume(run: _Run, prev: Phase, cur: Phase, back: _Return) -> None:
    """The first answer after the daemon's own downtime, which may hide an ending.

    The downtime is read like an outage we could not observe (issue #3). When the
    restart after a restore fell into it, when it happened is unknown, so
    ``restarted`` has ``down_for`` null. Completion, failure and restart keep the
    ids they would have had, so what the previous process journaled is skipped.
    """
    gap = replace(back, down_for=None)
    if run.state.restore_active:
        _resume_restore(run, prev, cur, gap)
    else:
        # COMPLETED was seen, then the watcher was down. restore/result resets
        # when the server restarts: still 0 means the restart is yet to come
        # (unless the previous process had already seen the server go away).
        if run.obs.result != 0 or back.came_back:
            _restarted(run, cur, gap, downtime=True)
        # Else, still IDLE: keep awaiting the restart (_after_restore bounds it).
    if cur.is_active:
        _start_restore(run, cur, at_startup=False)


def _resume_restore(run: _Run, prev: Phase, cur: Phase, back: _Return) -> None:
    """A restore last seen in ``prev`` ended while the watcher was down."""
    result = run.obs.result
    # This is the one place restore/result decides an outcome. sklm-api.md says to
    # treat it as a hint, never the only signal; across the watcher's own downtime
    # no other signal exists. -1: the server restarted since the restore (the
    # result resets on restart, and a failed restore does not restart the server),
    # so it completed; 0: completed, restart still to come; 1: failed. Without a
    # usable result, a restore last seen in CLEANUP is read as the gap after
    # CLEANUP always is (the restart after a successful restore); any other as
    # failed, outcome unknown.
    completed = result in (-1, 0) or (prev is Phase.CLEANUP and result != 1)
    if not completed:
        _fail(run, _downtime_reason(cur, result), downtime=True)
        return
    missed = (*phases_between(prev, Phase.COMPLETED), Phase.COMPLETED)
    _enter_phases(run, ((p, True) for p in missed), previous=prev)
    _complete(run, inferred=True, downtime=True)
    if result != 0:
        _restarted(run, cur, back, downtime=True)


def _start_restore(run: _Run, cur: Phase, *, at_startup: bool) -> None:
    obs = run.obs
    rid = stable_id(run.config.name, "restore", format_time(obs.at))
    first = cur if at_startup else Phase.INITIALIZE
    run.update(
        restore_id=rid,
        restore_active=True,
        seen_at_startup=at_startup,
        timeline=(),
        awaiting_restart=False,
    )
    run.emit(
        EventType.RESTORE_STARTED,
        {
            "restore_id": rid,
            "phase": first.name,
            "code": int(first),
            "seen_at_startup": at_startup,
            "poll_at": format_time(obs.at),
        },
        rid,
    )
    if at_startup:
        _enter_phases(run, ((cur, False),), previous=None)
    else:
        _enter_phases(run, _gap(Phase.IDLE, cur), previous=Phase.IDLE)
    if cur is Phase.COMPLETED:
        _complete(run, inferred=False)


def _enter_phases(
    run: _Run, phases: Iterable[tuple[Phase, bool]], *, previous: Phase | None
) -> None:
    obs = run.obs
    rid = run.restore_id()
    visits = list(run.state.timeline)
    for phase, inferred in phases:
        run.emit(
            EventType.RESTORE_PHASE,
            {
                "restore_id": rid,
                "phase": phase.name,
                "code": int(phase),
                "previous_phase": _phase_name(previous),
                "inferred": inferred,
                "poll_at": format_time(obs.at),
                "previous_poll_at": _fmt(run.previous_poll_at),
            },
            rid,
            phase.name,
        )
        visits.append(PhaseVisit(phase, inferred, obs.at, obs.monotonic))
        previous = phase
    run.update(timeline=tuple(visits))


def _complete(run: _Run, *, inferred: bool, downtime: bool = False) -> None:
    rid = run.restore_id()
    run.emit(
        EventType.RESTORE_COMPLETED,
        {
            "restore_id": rid,
            "phase": Phase.COMPLETED.name,
            "code": int(Phase.COMPLETED),
            "inferred": inferred,
            **_summary(run),
            "during_watcher_downtime": downtime,
        },
        rid,
    )
    run.update(restore_active=False, awaiting_restart=True)


def _fail(run: _Run, reason: str, *, downtime: bool = False) -> None:
    rid = run.restore_id()
    timeline = run.state.timeline
    last = timeline[-1].phase if timeline else run.state.phase
    run.emit(
        EventType.RESTORE_FAILED,
        {
            "restore_id": rid,
            "phase": _phase_name(last),
            "code": None if last is None else int(last),
            "reason": reason,
            **_summary(run),
            "during_watcher_downtime": downtime,
        },
        rid,
    )
    run.update(restore_active=False, awaiting_restart=False)


def _restarted(run: _Run, cur: Phase, back: _Return, *, downtime: bool = False) -> None:
    rid = run.state.restore_id
    if rid is not None:
        run.emit(
            EventType.SERVER_RESTARTED,
            {
                "restore_id": rid,
                # None when only the rejected session showed the restart, or when
                # it happened while the watcher itself was down.
                "down_for": back.down_for,
                "phase": cur.name,
                "late": back.late,
                "result": run.obs.result,
                "during_watcher_downtime": downtime,
            },
            rid,
        )
    run.update(awaiting_restart=False)


def _summary(run: _Run) -> dict[str, Any]:
    """The fields completed and failed share: when, how long, which phases."""
    s = run.state
    first = s.timeline[0] if s.timeline else None
    return {
        "started_at": None if first is None else format_time(first.entered_at),
        "duration": None
        if first is None
        else _seconds(run.obs.monotonic - first.entered_monotonic),
        "timeline": _timeline_json(s.timeline),
        "result": run.obs.result,
        "seen_at_startup": s.seen_at_startup,
    }


def _timeline_json(visits: tuple[PhaseVisit, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, visit in enumerate(visits):
        following = visits[i + 1] if i + 1 < len(visits) else None
        out.append(
            {
                "phase": visit.phase.name,
                "code": int(visit.phase),
                "inferred": visit.inferred,
                "entered_at": format_time(visit.entered_at),
                "duration": None
                if following is None
                else _seconds(following.entered_monotonic - visit.entered_monotonic),
            }
        )
    return out


_RESULT_WORDS: Final = {-1: "unknown", 0: "success", 1: "failure"}


def _failure_reason(
    prev: Phase, cur: Phase, came_back: bool, relogin: bool, result: int | None
) -> str:
    if came_back:
        how = f"the server stopped answering during {prev.name} and came back"
    elif relogin:
        how = (
            f"the server restarted during {prev.name} (it rejected the watcher's "
            "session) and came back"
        )
    else:
        how = f"progress went from {prev.name} back"
    if cur is Phase.IDLE:
        where = "to IDLE" if not (came_back or relogin) else "IDLE"
        reason = f"{how} {where} without reaching COMPLETED"
    else:
        where = f"to {cur.name}" if not (came_back or relogin) else f"in {cur.name}"
        reason = (
            f"{how} {where}: a new restore started before this one reached COMPLETED"
        )
    if result in _RESULT_WORDS:
        reason += f" (restore/result reports {result}, {_RESULT_WORDS[result]})"
    return reason


def _downtime_reason(cur: Phase, result: int | None) -> str:
    if result == 1:
        reason = (
            "the restore failed while the watcher was down (restore/result reports "
            "1, failure)"
        )
    elif result is None:
        reason = (
            "the restore ended while the watcher was down; outcome unknown "
            "(restore/result unavailable)"
        )
    else:
        reason = (
            "the restore ended while the watcher was down; outcome unknown "
            f"(restore/result reports {result})"
        )
    if cur.is_active:
        reason += f"; a new restore is running, now in {cur.name}"
    return reason


def _restart_overdue(run: _Run) -> bool:
    """Whether the restart awaited since the current phase began is overdue."""
    since = run.state.phase_since_monotonic
    if since is None:
        return True
    return run.obs.monotonic - since > run.config.restart_timeout


# --- thresholds ------------------------------------------------------------------


def _stall(run: _Run) -> tuple[float, Event] | None:
    """The stalled event, if the current phase has just outlasted ``stall_after``."""
    s = run.state
    phase = s.phase
    if (
        phase is None
        or not phase.is_active
        or not s.restore_active
        or s.awaiting_restart
        or s.stall_reported
        or s.phase_since_monotonic is None
    ):
        return None
    lasted = run.obs.monotonic - s.phase_since_monotonic
    if not lasted > run.config.stall_after:
        return None
    rid = run.restore_id()
    event = run.make(
        EventType.RESTORE_STALLED,
        {
            "restore_id": rid,
            "phase": phase.name,
            "code": int(phase),
            "stalled_for": _seconds(lasted),
            "stall_after": run.config.stall_after,
            "since": _fmt(s.phase_since_at),
        },
        rid,
        phase.name,
    )
    run.update(stall_reported=True)
    return s.phase_since_monotonic + run.config.stall_after, event


def _unreachable(run: _Run) -> tuple[float, Event] | None:
    """The unreachable event, if the outage has just become one worth reporting."""
    s = run.state
    failure = run.obs.failure
    if (
        s.unreachable_reported
        or s.consecutive_failures < 2
        or s.outage_id is None
        or s.outage_since_monotonic is None
        or failure is None
    ):
        return None
    down = run.obs.monotonic - s.outage_since_monotonic
    if s.awaiting_restart:
        # The restart after a restore is expected; only a long one is news.
        limit = run.config.restart_timeout
        if not down > limit:
            return None
        reason = (
            f"the server did not come back within restart_timeout ({limit:g} s) "
            "after the restore"
        )
    else:
        limit = run.config.unreachable_after
        if down < limit:
            return None
        reason = str(failure)
    event = run.make(
        EventType.SERVER_UNREACHABLE,
        {
            "reason": reason,
            "failure": str(failure),
            "detail": run.obs.detail,
            "since": _fmt(s.outage_since_at),
            "down_for": _seconds(down),
            "failures": s.consecutive_failures,
            "after_restore": s.awaiting_restart,
            "restore_id": _relevant_restore(s),
            "phase": _phase_name(s.phase),
        },
        s.outage_id,
    )
    run.update(unreachable_reported=True)
    return s.outage_since_monotonic + limit, event


def _get_failure(d: Mapping[str, Any], key: str) -> Failure | None:
    value = d.get(key)
    if value is None:
        return None
    try:
        return Failure(value)
    except ValueError:
        raise ValueError(
            f"tracker state {key!r} is not a failure kind: {value!r}"
        ) from None


def _state_from_dict(
    d: Mapping[str, Any], *, at: datetime, monotonic: float
) -> ServerState:
    version = d.get("version", STATE_VERSION)
    if version != STATE_VERSION:
        raise ValueError(f"unknown tracker state version: {version!r}")

    def rebase(wall: datetime | None) -> float | None:
        return None if wall is None else monotonic - (at - wall).total_seconds()

    timeline: list[PhaseVisit] = []
    raw_timeline = d.get("timeline", [])
    if not isinstance(raw_timeline, list):
        raise TypeError("tracker state 'timeline' must be a list")
    for item in raw_timeline:
        if not isinstance(item, Mapping):
            raise TypeError("tracker state 'timeline' items must be objects")
        phase = _get_phase(item, "phase")
        entered_at = _get_time(item, "entered_at")
        if phase is None or entered_at is None:
            raise ValueError("tracker state timeline items need phase and entered_at")
        timeline.append(
            PhaseVisit(
                phase=phase,
                inferred=_get_bool(item, "inferred"),
                entered_at=entered_at,
                entered_monotonic=monotonic - (at - entered_at).total_seconds(),
            )
        )
    phase_since_at = _get_time(d, "phase_since_at")
    outage_since_at = _get_time(d, "outage_since_at")
    auth_failed_since_at = _get_time(d, "auth_failed_since_at")
    failures = d.get("consecutive_failures", 0)
    if not isinstance(failures, int) or isinstance(failures, bool):
        raise TypeError("tracker state 'consecutive_failures' must be an int")
    if failures < 0:
        raise ValueError("tracker state 'consecutive_failures' must be >= 0")
    return ServerState(
        phase=_get_phase(d, "phase"),
        phase_since_at=phase_since_at,
        phase_since_monotonic=rebase(phase_since_at),
        stall_reported=_get_bool(d, "stall_reported"),
        restore_id=_get_str(d, "restore_id"),
        restore_active=_get_bool(d, "restore_active"),
        seen_at_startup=_get_bool(d, "seen_at_startup"),
        timeline=tuple(timeline),
        awaiting_restart=_get_bool(d, "awaiting_restart"),
        outage_id=_get_str(d, "outage_id"),
        outage_since_at=outage_since_at,
        outage_since_monotonic=rebase(outage_since_at),
        consecutive_failures=failures,
        last_failure=_get_failure(d, "last_failure"),
        last_error=_get_str(d, "last_error"),
        unreachable_reported=_get_bool(d, "unreachable_reported"),
        auth_failed=_get_bool(d, "auth_failed"),
        auth_run_id=_get_str(d, "auth_run_id"),
        auth_failed_since_at=auth_failed_since_at,
        auth_failed_since_monotonic=rebase(auth_failed_since_at),
        last_ok_at=_get_time(d, "last_ok_at"),
        resumed=True,
    )


# --- small helpers ---------------------------------------------------------------


def _gap(prev: Phase, cur: Phase) -> tuple[tuple[Phase, bool], ...]:
    """The phases after ``prev`` up to ``cur``: the missed ones inferred, then cur."""
    return (*((p, True) for p in phases_between(prev, cur)), (cur, False))


def _relevant_restore(s: ServerState) -> str | None:
    return s.restore_id if s.restore_active or s.awaiting_restart else None


def _durable_changed(before: ServerState, after: ServerState) -> bool:
    if before is after:
        return False
    return any(getattr(before, n) != getattr(after, n) for n in _DURABLE_FIELDS)


def _seconds(value: float) -> float:
    return round(value, 3)


def _phase_name(phase: Phase | None) -> str | None:
    return None if phase is None else phase.name


def _fmt(at: datetime | None) -> str | None:
    return None if at is None else format_time(at)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _get_time(d: Mapping[str, Any], key: str) -> datetime | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"tracker state {key!r} must be a time string")
    try:
        return parse_time(value)
    except ValueError as exc:
        raise ValueError(f"tracker state {key!r} is not a time: {value!r}") from exc


def _get_phase(d: Mapping[str, Any], key: str) -> Phase | None:
    value = d.get(key)
    if value is None:
        return None
    phase = Phase.from_status(value) if isinstance(value, str) else None
    if phase is None:
        raise ValueError(f"tracker state {key!r} is not a phase name: {value!r}")
    return phase


def _get_bool(d: Mapping[str, Any], key: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise TypeError(f"tracker state {key!r} must be true or false")
    return value


def _get_str(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"tracker state {key!r} must be a string")
    return value
