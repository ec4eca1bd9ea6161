"""The two gauges the Prometheus alert rules need: restore_stalled, journal_readable."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from watcher.phases import Phase
from watcher.service import Snapshot, render_metrics
from watcher.tracker import ServerState

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def gauge(snapshot: Snapshot, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one family in the rendered text: labels -> value."""
    body = render_metrics(snapshot).decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        if family.name == name
        for sample in family.samples
    }


def snapshot(**overrides: object) -> Snapshot:
    """Four servers: stalled, restoring, stalled-then-restarting, idle."""
    states = {
        "stalled": ServerState(
            phase=Phase.RESTORE_KEYSTORES,
            phase_since_at=T0,
            restore_id="r-1",
            restore_active=True,
            stall_reported=True,
        ),
        "restoring": ServerState(
            phase=Phase.RESTORE_DATABASES,
            phase_since_at=T0,
            restore_id="r-2",
            restore_active=True,
        ),
        # CLEANUP stalled, then SKLM went away for its restart: that is not a stall.
        "restarting": ServerState(
            phase=Phase.CLEANUP,
            restore_id="r-3",
            restore_active=True,
            stall_reported=True,
            awaiting_restart=True,
        ),
        # The flag outlives a failed restore; only a running one is stalled.
        "idle": ServerState(phase=Phase.IDLE, restore_id="r-4", stall_reported=True),
    }
    values: dict[str, object] = {"version": "0.1.0", "states": states, "stats": {}}
    values.update(overrides)
    return Snapshot(**values)  # type: ignore[arg-type]


def test_restore_stalled_is_one_only_for_a_running_stalled_restore() -> None:
    """1 for the stalled restore, 0 for every other server (always present)."""
    assert gauge(snapshot(), "sklm_watcher_restore_stalled") == {
        (("server", "stalled"),): 1.0,
        (("server", "restoring"),): 0.0,
        (("server", "restarting"),): 0.0,
        (("server", "idle"),): 0.0,
    }


def test_restore_stalled_has_no_samples_without_servers() -> None:
    """An empty fleet renders the family without samples."""
    assert gauge(snapshot(states={}), "sklm_watcher_restore_stalled") == {}


def test_journal_readable_follows_the_outbox_summary() -> None:
    """1 when the outbox could be read (even with no sinks), 0 when it could not."""
    assert gauge(snapshot(outbox=()), "sklm_watcher_journal_readable") == {(): 1.0}
    unreadable = snapshot(outbox=None, outbox_error="journal not readable: I/O")
    assert gauge(unreadable, "sklm_watcher_journal_readable") == {(): 0.0}
