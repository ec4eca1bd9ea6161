"""``follow``'s view of one restore, over a journal filled by the real tracker.

The outcome only moves forward (running, stalled, then completed or failed) for the
restore being followed, a stalled phase shows as stalled with its duration, and a
state read before the restore's end never ends ``follow`` early.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from watcher.config import ServerConfig
from watcher.events import Event, stable_id
from watcher.phases import Phase
from watcher.store.sqlite import SqliteStore as Journal
from watcher.tracker import Failure, Observation, ServerState, step
from watcher.views import (
    FollowView,
    Outcome,
    follow_outcome,
    follow_state,
    render_follow,
)

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
P = Phase
DOWN = Failure.UNREACHABLE
Script = Sequence[tuple[float, Phase | Failure]]


def at(seconds: float) -> datetime:
    """T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def rid(server: str, seconds: float) -> str:
    """The id the tracker gives a restore first seen at T0 + ``seconds``."""
    return stable_id(server, "restore", at(seconds).strftime("%Y-%m-%dT%H:%M:%S.000Z"))


class Feed:
    """Drives the real tracker for one server and records as the scheduler does."""

    def __init__(self, journal: Journal, name: str = "prod-1") -> None:
        self.journal = journal
        self.config = ServerConfig(
            name=name,
            url="http://127.0.0.1:9",
            stall_after=60.0,
            restart_timeout=30.0,
            unreachable_after=10.0,
        )
        self.state = ServerState()

    def step(
        self, seconds: float, outcome: Phase | Failure
    ) -> tuple[ServerState, list[Event]]:
        """One poll; returns the new state and the events it produced (not recorded)."""
        kw: dict[str, Any] = (
            {"phase": outcome}
            if isinstance(outcome, Phase)
            else {"failure": outcome, "detail": "connection refused"}
        )
        result = step(
            self.config,
            self.state,
            Observation(at=at(seconds), monotonic=float(seconds), **kw),
        )
        self.state = result.state
        return result.state, list(result.events)

    def run(self, script: Script) -> None:
        """Feed and record each ``(seconds, phase or failure)``."""
        for seconds, outcome in script:
            state, events = self.step(seconds, outcome)
            self.journal.record(self.config.name, state.to_dict(), events)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """An empty journal."""
    with Journal.open(tmp_path / "state", tmp_path / "events.jsonl", []) as opened:
        yield opened


def text(view: FollowView, now: datetime | None = None) -> str:
    """What render_follow prints without colour."""
    out = io.StringIO()
    render_follow(view, console_file=out, color=False, now=now)
    return out.getvalue()


# Stuck in RESTORE_KEYSTORES from 20 s; reported stalled at 85 s (65 s > 60 s).
STUCK: Script = [(0, P.IDLE), (10, P.INITIALIZE), (20, P.RESTORE_KEYSTORES), (85, P.RESTORE_KEYSTORES)]  # fmt: skip


def test_stalled_phase_shows_stalled_with_its_duration(journal: Journal) -> None:
    """The stalled current phase says 'stalled' and how long, never 'now'."""
    Feed(journal).run(STUCK)
    view = follow_state(journal, "prod-1")

    assert (view.outcome, view.current_phase) == (Outcome.STALLED, P.RESTORE_KEYSTORES)
    assert view.stalls == ((P.RESTORE_KEYSTORES, 65.0),)
    assert follow_outcome(view) is None
    # With the caller's clock: the duration so far (20 s -> 200 s); without: at the stall.
    live = text(view, now=at(200)).splitlines()
    assert live[-2] == (
        "  4/7 RESTORE_KEYSTORES                  2026-11-29 10:00:20Z  stalled 3m00s"
    )
    assert text(view).splitlines()[-2].endswith("  stalled 1m05s")
    assert "now" not in text(view, now=at(200))
    assert live[-1] == "  in RESTORE_KEYSTORES since 2026-11-29 10:00:20Z"


def test_outcome_never_flips_back_to_running(journal: Journal) -> None:
    """Running, stalled (also after moving on), completed; a new restore changes nothing."""
    feed = Feed(journal)
    first = rid("prod-1", 10)
    script: Script = [
        *STUCK,
        (90, P.RESTORE_DATABASES),  # moves on after the stall
        (100, P.COMPLETED),
        (102, DOWN),  # the restart SKLM does after a restore
        (110, P.IDLE),  # back
        (200, P.INITIALIZE),  # the next restore begins
        (210, P.RESTORE_DATABASES),
    ]
    seen = []
    for seconds, outcome in script:
        feed.run([(seconds, outcome)])
        view = follow_state(journal, "prod-1", restore_id=first)
        seen.append((seconds, view.restore_id, view.outcome, follow_outcome(view)))

    assert seen == [
        (0, None, None, None),
        (10, first, Outcome.RUNNING, None),
        (20, first, Outcome.RUNNING, None),
        (85, first, Outcome.STALLED, None),
        (90, first, Outcome.STALLED, None),
        (100, first, Outcome.COMPLETED, None),  # waiting for the restart
        (102, first, Outcome.COMPLETED, None),
        (110, first, Outcome.COMPLETED, 0),  # back: done
        (200, first, Outcome.COMPLETED, 0),
        (210, first, Outcome.COMPLETED, 0),
    ]
    # The phase that stalled keeps its mark once the restore moved on.
    moved_on = follow_state(journal, "prod-1", restore_id=first)
    assert "  1m10s (stalled)" in text(moved_on)
    # Unpinned, the view is the server's current restore: the new one.
    assert follow_state(journal, "prod-1").restore_id == rid("prod-1", 200)


def test_a_state_older_than_the_events_does_not_end_follow(journal: Journal) -> None:
    """COMPLETED judged against a state from before it: still waiting for the restart.

    Models a read of the state just before the daemon recorded COMPLETED and a read
    of the events just after it: that must not exit 0 while the server restarts.
    """
    feed = Feed(journal)
    feed.run([(0, P.IDLE), (10, P.INITIALIZE), (20, P.CLEANUP)])
    before = feed.state.to_dict()
    _, events = feed.step(30, P.COMPLETED)
    journal.record("prod-1", before, events)

    view = follow_state(journal, "prod-1")

    assert (view.outcome, view.server_back) == (Outcome.COMPLETED, None)
    assert follow_outcome(view) is None


def test_a_later_restore_means_the_followed_one_is_back(journal: Journal) -> None:
    """COMPLETED, no restart seen, and the next restore begins: follow ends with 0."""
    first = rid("prod-1", 10)
    feed = Feed(journal)
    feed.run([(0, P.IDLE), (10, P.INITIALIZE), (20, P.COMPLETED)])
    assert follow_outcome(follow_state(journal, "prod-1", restore_id=first)) is None

    feed.run([(25, P.INITIALIZE)])  # the restart passed between two polls
    view = follow_state(journal, "prod-1", restore_id=first)

    assert (view.restore_id, view.outcome, view.server_back) == (
        first,
        Outcome.COMPLETED,
        True,
    )
    assert follow_outcome(view) == 0
