"""health_of: one word for a server's state, shared by /status and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from watcher.phases import Phase
from watcher.tracker import Health, ServerState, health_of

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (ServerState(), Health.UNKNOWN),
        (ServerState(phase=Phase.IDLE, last_ok_at=T0), Health.OK),
        (ServerState(last_ok_at=T0), Health.OK),
        (ServerState(phase=Phase.COMPLETED, awaiting_restart=True), Health.RESTARTING),
        (
            ServerState(
                phase=Phase.COMPLETED,
                awaiting_restart=True,
                consecutive_failures=9,
                unreachable_reported=True,
            ),
            Health.UNREACHABLE,
        ),
        (ServerState(phase=Phase.IDLE, consecutive_failures=1), Health.UNREACHABLE),
        (ServerState(consecutive_failures=3), Health.UNREACHABLE),
        (
            ServerState(
                phase=Phase.COMPLETED, awaiting_restart=True, consecutive_failures=2
            ),
            Health.RESTARTING,
        ),
        (ServerState(phase=Phase.IDLE, auth_failed=True), Health.AUTH_FAILED),
        (
            ServerState(auth_failed=True, consecutive_failures=4),
            Health.AUTH_FAILED,
        ),
    ],
)
def test_health_of(state: ServerState, expected: Health):
    """Auth failure wins; an expected restart until reported overdue; failing; unknown."""
    assert health_of(state) is expected


def test_health_words_are_the_contract() -> None:
    """The words /status and ``status --json`` print are pinned, one per health."""
    assert {h.name: str(h) for h in Health} == {
        "OK": "ok",
        "UNREACHABLE": "unreachable",
        "RESTARTING": "restarting",
        "AUTH_FAILED": "auth_failed",
        "TLS_ERROR": "tls_error",
        "PROTOCOL_ERROR": "protocol_error",
        "UNKNOWN": "unknown",
    }


def test_no_state_is_unknown() -> None:
    """A server without any stored state is unknown."""
    assert health_of(None) is Health.UNKNOWN
