"""The phase tracker: a pure state machine from observations to events.

``step(config, state, observation) -> Step(state, events)``. No I/O, no clock reads,
no logging, no randomness: time arrives inside the observation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from watcher.config import ServerConfig
from watcher.events import Event
from watcher.phases import Phase


class Failure(StrEnum):
    """Why a poll produced no phase (mirrors the client's error classes)."""

    UNREACHABLE = "unreachable"  # connect / reset / timeout
    PROTOCOL = "protocol"  # answered, but not as SKLM should (incl. 5xx while starting)
    TLS = "tls"
    AUTH = "auth"  # credentials rejected at login


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
            fetched by the scheduler when a restore may have ended; None otherwise.
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
class ServerState:
    """What the tracker knows about one server between two observations.

    Everything needed to resume after a restart of the daemon is in here and is
    persisted by the journal as JSON (see ``to_dict`` / ``from_dict``).
    """

    #: The last phase observed (or inferred); None before the first answer.
    phase: Phase | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """The result of one tracker step: the new state and the events it produced."""

    state: ServerState
    events: tuple[Event, ...] = ()


def step(config: ServerConfig, state: ServerState, observation: Observation) -> Step:
    """Advance one server's state by one observation and return the events."""
    raise NotImplementedError
