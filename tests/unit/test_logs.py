"""logs.configure: the journald priority prefix and levels that follow meaning."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.unit.sinks.fakes import completed_event
from watcher import logs as watcher_logs
from watcher.config import SinkConfig
from watcher.events import Event, EventType, log_level
from watcher.sinks.log import LogSink

AT_EVENT = completed_event().time


def journal_env(path: Path) -> dict[str, str]:
    """JOURNAL_STREAM as systemd sets it for the file at ``path``."""
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_is_journal_stream_compares_device_and_inode(tmp_path: Path) -> None:
    """Only the stream JOURNAL_STREAM names counts, not any inherited variable."""
    mine = tmp_path / "stderr"
    other = tmp_path / "other"
    other.write_text("", encoding="utf-8")
    with mine.open("w", encoding="utf-8") as stream:
        assert watcher_logs.is_journal_stream(stream, journal_env(mine))
        assert not watcher_logs.is_journal_stream(stream, journal_env(other))
        assert not watcher_logs.is_journal_stream(stream, {})
        assert not watcher_logs.is_journal_stream(stream, {"JOURNAL_STREAM": "garbage"})
    assert not watcher_logs.is_journal_stream(io.StringIO(), journal_env(mine))


@pytest.mark.parametrize(
    ("method", "priority"),
    [("debug", 7), ("info", 6), ("warning", 4), ("error", 3), ("critical", 2)],
)
def test_syslog_prefixed_puts_the_priority_before_each_line(
    method: str, priority: int
) -> None:
    """sd-daemon prefix per level, on every line of a multi-line rendering."""
    render = watcher_logs.syslog_prefixed(lambda _l, _m, _e: "first\nsecond")
    assert render(None, method, {}) == f"<{priority}>first\n<{priority}>second"


def _configure_into(
    path: Path, monkeypatch: pytest.MonkeyPatch, *, journal: bool
) -> list[str]:
    with path.open("w", encoding="utf-8") as stream:
        if journal:
            monkeypatch.setenv("JOURNAL_STREAM", journal_env(path)["JOURNAL_STREAM"])
        else:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        watcher_logs.configure(json=True, level=logging.DEBUG, stream=stream)
        log = structlog.get_logger("test")
        log.debug("a.debug")
        log.info("a.info")
        log.warning("a.warning")
        log.error("a.error")
        log.log(logging.WARNING, "a.log")
    return path.read_text(encoding="utf-8").splitlines()


def test_configure_prefixes_lines_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under journald: ``<7>``, ``<6>``, ``<4>``, ``<3>`` before each JSON line."""
    lines = _configure_into(tmp_path / "err", monkeypatch, journal=True)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<4>"]
    assert all(line[3] == "{" for line in lines)


def test_configure_adds_no_prefix_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not under journald: plain JSON lines, as before."""
    lines = _configure_into(tmp_path / "err", monkeypatch, journal=False)
    assert len(lines) == 5
    assert all(line.startswith("{") for line in lines)


def test_event_log_levels_follow_meaning() -> None:
    """Failed, stalled, unreachable and auth failed are warnings; the rest info."""
    assert {t: logging.getLevelName(log_level(t)) for t in EventType} == {
        EventType.RESTORE_STARTED: "INFO",
        EventType.RESTORE_PHASE: "INFO",
        EventType.RESTORE_COMPLETED: "INFO",
        EventType.RESTORE_FAILED: "WARNING",
        EventType.RESTORE_STALLED: "WARNING",
        EventType.SERVER_UNREACHABLE: "WARNING",
        EventType.SERVER_RECOVERED: "INFO",
        EventType.SERVER_RESTARTED: "INFO",
        EventType.AUTH_FAILED: "WARNING",
        EventType.AUTH_RECOVERED: "INFO",
        EventType.TEST: "INFO",
    }


async def test_log_sink_logs_problems_as_warnings_with_the_reason(
    logs: list[dict[str, Any]],
) -> None:
    """The log sink's line for an outage is a warning carrying failure and detail."""
    sink = LogSink(SinkConfig(name="console", type="log"))
    outage = Event.create(
        EventType.SERVER_UNREACHABLE,
        "s1",
        AT_EVENT,
        {"failure": "tls", "detail": "certificate does not match tls_fingerprint"},
        key=("o-1",),
    )
    back = Event.create(
        EventType.AUTH_RECOVERED, "s1", AT_EVENT, {"failed_for": 12.5}, key=("a-1",)
    )
    await sink.deliver(outage)
    await sink.deliver(back)
    assert [
        (e["log_level"], e["type"], e.get("failure"), e.get("detail")) for e in logs
    ] == [
        (
            "warning",
            "sklm.server.unreachable",
            "tls",
            "certificate does not match tls_fingerprint",
        ),
        ("info", "sklm.auth.recovered", None, None),
    ]
    assert logs[1]["failed_for"] == 12.5
