from tests.unit.sinks.fakes import completed_event, phase_event
from watcher.config import SinkConfig
from watcher.sinks.log import LogSink


async def test_events_are_logged_with_their_main_fields(logs) -> None:
    """Each event becomes one info entry ``sink.event`` with type, server and phase."""
    sink = LogSink(SinkConfig(name="console", type="log"))
    phase = phase_event("s1", "r-9", "CLEANUP")
    completed = completed_event()
    await sink.deliver(phase)
    await sink.deliver(completed)
    assert logs == [
        {
            "event": "sink.event",
            "log_level": "info",
            "sink": "console",
            "type": "sklm.restore.phase",
            "server": "s1",
            "event_id": phase.id,
            "time": "2026-11-29T10:00:00+00:00",
            "phase": "CLEANUP",
            "code": 1,
            "inferred": False,
            "restore_id": "r-9",
        },
        {
            "event": "sink.event",
            "log_level": "info",
            "sink": "console",
            "type": "sklm.restore.completed",
            "server": "sklm-prod-1",
            "event_id": completed.id,
            "time": "2026-11-29T10:00:00+00:00",
            "phase": "COMPLETED",
            "inferred": False,
            "restore_id": "r-1",
            "duration": 245.4,
        },
    ]
