"""The syslog sink's message format, without sockets: RFC 5424 fields, escapes, severities."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.syslog_receiver import parse_message
from watcher.config import SinkConfig
from watcher.errors import ConfigError
from watcher.events import Event, EventType
from watcher.sinks.syslog import SyslogSink, format_message, frame, sd_escape

START = datetime(2026, 11, 29, 10, 0, 1, 250000, tzinfo=UTC)


def failed(server: str = "sklm-prod-1") -> Event:
    """A failed restore."""
    return Event.create(
        EventType.RESTORE_FAILED,
        server,
        START,
        {"restore_id": "r1", "duration": 12.0, "reason": "x", "phase": "CLEANUP"},
        key=("r1",),
    )


def test_structured_data_escapes_quote_backslash_and_bracket() -> None:
    """``"``, ``\\`` and ``]`` in a server name survive the SD round trip."""
    hostile = 'evil"]\\ [x="1"]'
    event = failed(server=hostile)
    raw = format_message(
        event, facility=16, hostname="host", app_name="sklm-watcher", procid="1"
    )
    assert sd_escape(hostile) == 'evil\\"\\]\\\\ [x=\\"1\\"\\]'
    parsed = parse_message(raw)
    assert parsed.sd["sklm@32473"]["server"] == hostile
    assert json.loads(parsed.msg)["subject"] == hostile
    assert frame(raw) == str(len(raw)).encode() + b" " + raw


def test_header_fields_are_printable_ascii() -> None:
    """A host or app name with spaces or non-ASCII cannot break the header."""
    raw = format_message(
        failed(), facility=16, hostname="my host", app_name="wätcher", procid="1"
    )
    parsed = parse_message(raw)
    assert (parsed.hostname, parsed.app_name) == ("my_host", "w_tcher")


@pytest.mark.parametrize(
    ("event_type", "severity"),
    [
        (EventType.RESTORE_FAILED, 3),
        (EventType.SERVER_UNREACHABLE, 3),
        (EventType.AUTH_FAILED, 3),
        (EventType.RESTORE_STALLED, 4),
        (EventType.RESTORE_STARTED, 5),
        (EventType.RESTORE_COMPLETED, 5),
        (EventType.SERVER_RECOVERED, 5),
        (EventType.SERVER_RESTARTED, 5),
        (EventType.AUTH_RECOVERED, 5),
        (EventType.RESTORE_PHASE, 6),
        (EventType.TEST, 6),
    ],
)
def test_severity_table(event_type: EventType, severity: int) -> None:
    """The README's severity table, type by type (local0: facility 16)."""
    event = Event.create(event_type, "s", START, key=("k",))
    raw = format_message(event, facility=16, hostname="h", app_name="a", procid="1")
    assert parse_message(raw).pri == 16 * 8 + severity


def test_bad_settings_are_config_problems() -> None:
    """No host, an unknown transport or facility: every problem at once."""
    bad = SinkConfig(name="siem", type="syslog", transport="tls1", facility="local9")
    with pytest.raises(ConfigError) as caught:
        SyslogSink(bad)
    assert [p.key for p in caught.value.problems] == [
        "sinks.siem.transport",
        "sinks.siem.host",
        "sinks.siem.facility",
    ]


def test_unreadable_ca_file_is_a_config_problem(tmp_path: Path) -> None:
    """A ca_file that is not a PEM bundle is named at construction."""
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ConfigError) as caught:
        SyslogSink(
            SinkConfig(name="siem", type="syslog", host="relay.example", ca_file=bogus)
        )
    assert [p.key for p in caught.value.problems] == ["sinks.siem.ca_file"]
