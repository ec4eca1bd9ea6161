"""``/api/status``'s renderer: the CLI's rows, rebuilt only when a state changes."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from watcher import dashboard, views
from watcher.phases import Phase
from watcher.tracker import Failure, ServerState

T0 = datetime(2026, 11, 29, 10, tzinfo=UTC)
#: The builder itself, before a test counts its calls.
STATUS_ROW = views.status_row


def expected(states: dict[str, ServerState], at: datetime) -> list[dict[str, object]]:
    """What ``status --json`` prints for these states while the daemon runs."""
    return [
        STATUS_ROW(name, s, now=at, as_of=at, daemon_running=True).to_json()
        for name, s in states.items()
    ]


def test_rows_are_the_cli_rows_and_only_changed_ones_are_rebuilt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same JSON as the CLI at every instant; an unchanged state is not rebuilt."""
    states = {
        "a": ServerState(
            phase=Phase.RESTORE_DATABASES,
            phase_since_at=T0,
            restore_id="r-1",
            restore_active=True,
            last_ok_at=T0,
        ),
        "b": ServerState(),
        "c": ServerState(
            phase=Phase.IDLE,
            phase_since_at=T0,
            consecutive_failures=2,
            last_failure=Failure.PROTOCOL,
            last_error='<script>alert(1)</script> "\x00" & more',
        ),
    }
    built: list[str] = []

    def counting(name: str, *args: object, **kwargs: object) -> views.ServerStatusRow:
        built.append(name)
        return STATUS_ROW(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(views, "status_row", counting)
    renderer = dashboard.StatusRenderer()

    for seconds in (1.5, 2.25, 3600.125):
        at = T0 + timedelta(seconds=seconds)
        body = renderer.render(states, at)
        assert json.loads(body) == expected(states, at)
        assert b"<" not in body
    assert built == ["a", "b", "c"]

    states["a"] = dataclasses.replace(states["a"], phase=Phase.CLEANUP)
    del states["b"]
    at = T0 + timedelta(seconds=4000)
    assert json.loads(renderer.render(states, at)) == expected(states, at)
    assert built == ["a", "b", "c", "a"]
