"""The tracker tells what is wrong (issue 11): last failure, auth.recovered, health."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from watcher.config import ServerConfig
from watcher.events import Event, EventType, format_time, stable_id
from watcher.phases import Phase
from watcher.tracker import (
    Failure,
    Health,
    Observation,
    ServerState,
    health_of,
    step,
)

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
MONO0 = 5000.0
SERVER = "sklm-1"
CONFIG = ServerConfig(
    name=SERVER, url="https://sklm1.example.com:9443", unreachable_after=30.0
)
REFUSED = "connection refused"
UNTRUSTED = "certificate verify failed: unable to get local issuer certificate"
NOT_FOUND = "HTTP 404 from both progress paths"
REJECTED = "CTGKM6003E: invalid user name or password"


def ok(t: float, phase: Phase = Phase.IDLE) -> Observation:
    """A successful poll at t seconds."""
    return Observation(at=T0 + timedelta(seconds=t), monotonic=MONO0 + t, phase=phase)


def down(t: float, failure: Failure, detail: str) -> Observation:
    """A failed poll at t seconds."""
    return Observation(
        at=T0 + timedelta(seconds=t),
        monotonic=MONO0 + t,
        failure=failure,
        detail=detail,
    )


def feed(
    observations: Iterable[Observation], state: ServerState | None = None
) -> tuple[list[ServerState], list[Event]]:
    """Step through ``observations``; return the state after each, and all events."""
    current = state if state is not None else ServerState()
    states: list[ServerState] = []
    events: list[Event] = []
    for obs in observations:
        result = step(CONFIG, current, obs)
        current = result.state
        states.append(current)
        events.extend(result.events)
    return states, events


def test_each_failed_poll_sets_the_last_failure_and_a_success_clears_it() -> None:
    """Kind and reason follow the latest failed poll; the next answer clears both."""
    states, _ = feed(
        [
            ok(0),
            down(10, Failure.UNREACHABLE, REFUSED),
            down(11, Failure.TLS, UNTRUSTED),
            down(13, Failure.PROTOCOL, NOT_FOUND),
            ok(17),
        ]
    )
    assert [(s.last_failure, s.last_error) for s in states] == [
        (None, None),
        (Failure.UNREACHABLE, REFUSED),
        (Failure.TLS, UNTRUSTED),
        (Failure.PROTOCOL, NOT_FOUND),
        (None, None),
    ]


def test_a_change_of_reason_is_saved_a_repeat_is_not() -> None:
    """The journal is written when the reason changes, not on every failed poll."""
    first = step(CONFIG, ServerState(), ok(0)).state
    failing = step(CONFIG, first, down(10, Failure.TLS, UNTRUSTED))
    again = step(CONFIG, failing.state, down(11, Failure.TLS, UNTRUSTED))
    other = step(CONFIG, again.state, down(13, Failure.PROTOCOL, NOT_FOUND))
    assert (failing.save, again.save, other.save) == (True, False, True)


def test_rejected_credentials_set_the_last_failure_too() -> None:
    """An auth failure is a failure kind with its reason, though not an outage."""
    states, _ = feed([ok(0), down(10, Failure.AUTH, REJECTED)])
    assert (states[-1].last_failure, states[-1].last_error) == (Failure.AUTH, REJECTED)
    assert not states[-1].failing


def test_last_failure_and_auth_since_survive_to_dict_and_from_dict() -> None:
    """The new fields are persisted, and rebased on load like the others."""
    states, _ = feed([ok(0), down(10, Failure.AUTH, REJECTED)])
    saved = states[-1].to_dict()
    assert saved["last_failure"] == "auth"
    assert saved["last_error"] == REJECTED
    assert saved["auth_failed_since_at"] == (T0 + timedelta(seconds=10)).isoformat()
    later = T0 + timedelta(seconds=100)
    loaded = ServerState.from_dict(saved, at=later, monotonic=1.0)
    assert loaded.last_failure is Failure.AUTH
    assert loaded.last_error == REJECTED
    assert loaded.auth_failed_since_at == T0 + timedelta(seconds=10)
    assert loaded.auth_failed_since_monotonic == pytest.approx(1.0 - 90.0)


def test_an_unknown_failure_kind_in_saved_state_is_refused() -> None:
    """A saved last_failure this version does not know is a ValueError, named."""
    with pytest.raises(ValueError, match="last_failure"):
        ServerState.from_dict({"last_failure": "gremlins"}, at=T0, monotonic=0.0)


def test_auth_recovered_when_credentials_work_again() -> None:
    """auth.failed, then on the first answer auth.recovered with since and duration."""
    _, events = feed(
        [
            ok(0),
            down(10, Failure.AUTH, REJECTED),
            down(310, Failure.AUTH, REJECTED),
            ok(610, Phase.IDLE),
            ok(640, Phase.IDLE),
        ]
    )
    assert [e.type for e in events] == [EventType.AUTH_FAILED, EventType.AUTH_RECOVERED]
    failed, recovered = events
    run_id = stable_id(SERVER, "auth", format_time(T0 + timedelta(seconds=10)))
    assert recovered.id == stable_id(SERVER, str(EventType.AUTH_RECOVERED), run_id)
    assert recovered.time == T0 + timedelta(seconds=610)
    assert dict(recovered.data) == {
        "server": SERVER,
        "phase": "IDLE",
        "since": format_time(T0 + timedelta(seconds=10)),
        "failed_for": 600.0,
    }
    assert failed.id != recovered.id


def test_auth_recovered_after_a_resume_keeps_its_id() -> None:
    """Recovered after the daemon restarted: the same id the run had, duration kept."""
    states, _ = feed([ok(0), down(10, Failure.AUTH, REJECTED)])
    later = T0 + timedelta(seconds=110)
    loaded = ServerState.from_dict(states[-1].to_dict(), at=later, monotonic=0.0)
    result = step(
        CONFIG,
        loaded,
        Observation(at=later, monotonic=0.0, phase=Phase.IDLE, result=0),
    )
    recovered = [e for e in result.events if e.type is EventType.AUTH_RECOVERED]
    assert len(recovered) == 1
    run_id = stable_id(SERVER, "auth", format_time(T0 + timedelta(seconds=10)))
    assert recovered[0].id == stable_id(SERVER, str(EventType.AUTH_RECOVERED), run_id)
    assert recovered[0].data["failed_for"] == 100.0


def test_no_auth_recovered_after_an_ordinary_outage() -> None:
    """Only rejected credentials are followed by auth.recovered."""
    _, events = feed([ok(0), down(10, Failure.UNREACHABLE, REFUSED), ok(12)])
    assert EventType.AUTH_RECOVERED not in [e.type for e in events]


def test_unreachable_detail_is_the_reason_in_words() -> None:
    """sklm.server.unreachable carries the failed poll's reason as data.detail."""
    _, events = feed(
        [
            ok(0),
            down(10, Failure.TLS, UNTRUSTED),
            down(25, Failure.TLS, UNTRUSTED),
            down(40, Failure.TLS, UNTRUSTED),
        ]
    )
    assert [e.type for e in events] == [EventType.SERVER_UNREACHABLE]
    assert events[0].data["detail"] == UNTRUSTED
    assert events[0].data["failure"] == "tls"


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (Failure.UNREACHABLE, Health.UNREACHABLE),
        (Failure.TLS, Health.TLS_ERROR),
        (Failure.PROTOCOL, Health.PROTOCOL_ERROR),
    ],
)
def test_health_names_the_kind_of_failure(failure: Failure, expected: Health) -> None:
    """A server that answers with a bad certificate or a wrong page is not unreachable."""
    states, _ = feed([ok(0), down(10, failure, "why")])
    assert health_of(states[-1]) is expected


def test_health_precedence_with_failure_kinds() -> None:
    """Rejected credentials still win; an expected restart is still restarting."""
    tls_failing = ServerState(
        phase=Phase.IDLE, consecutive_failures=2, last_failure=Failure.TLS
    )
    assert health_of(tls_failing) is Health.TLS_ERROR
    restarting = ServerState(
        phase=Phase.COMPLETED,
        awaiting_restart=True,
        consecutive_failures=2,
        last_failure=Failure.PROTOCOL,
    )
    assert health_of(restarting) is Health.RESTARTING
    auth = ServerState(
        auth_failed=True, consecutive_failures=3, last_failure=Failure.TLS
    )
    assert health_of(auth) is Health.AUTH_FAILED
    recovered = ServerState(phase=Phase.IDLE, last_ok_at=T0)
    assert health_of(recovered) is Health.OK


def test_new_health_values_extend_the_old_ones() -> None:
    """Extending, never renaming: the five earlier words are unchanged."""
    assert {h.value for h in Health} == {
        "ok",
        "unreachable",
        "restarting",
        "auth_failed",
        "unknown",
        "tls_error",
        "protocol_error",
    }
