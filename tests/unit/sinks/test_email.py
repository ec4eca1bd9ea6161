"""The e-mail sink without sockets: configuration problems and subjects."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from watcher.config import Secret, SinkConfig
from watcher.errors import ConfigError
from watcher.events import Event, EventType
from watcher.sinks.email import EmailSink, subject

START = datetime(2026, 11, 29, 10, tzinfo=UTC)
PASSWORD = "smtp-Pa55w0rd-do-not-leak"


def completed() -> Event:
    """A completed restore of 4m 12s."""
    return Event.create(
        EventType.RESTORE_COMPLETED,
        "sklm-prod-1",
        START,
        {"restore_id": "r1", "duration": 252.0},
        key=("r1",),
    )


def test_missing_settings_are_config_problems() -> None:
    """No host, From or To, an unknown transport: every problem at once."""
    bad = SinkConfig(name="mail", type="email", transport="ssl")
    with pytest.raises(ConfigError) as caught:
        EmailSink(bad)
    assert [(p.key, p.reason) for p in caught.value.problems] == [
        ("sinks.mail.transport", "unknown transport 'ssl'; use starttls, tls or none"),
        ("sinks.mail.host", "an email sink needs the SMTP host"),
        ("sinks.mail.from", "an email sink needs a From address"),
        ("sinks.mail.to", "an email sink needs at least one address"),
    ]


def test_password_over_plain_smtp_to_a_remote_host_is_refused() -> None:
    """transport = none with a password is allowed only to a relay on this host."""
    remote = SinkConfig(
        name="mail",
        type="email",
        host="smtp.example.test",
        transport="none",
        username="alerts",
        password=Secret(PASSWORD),
        sender="watcher@example.test",
        recipients=("ops@example.test",),
    )
    with pytest.raises(ConfigError) as caught:
        EmailSink(remote)
    assert [p.key for p in caught.value.problems] == ["sinks.mail.transport"]
    assert PASSWORD not in str(caught.value)
    EmailSink(replace(remote, host="127.0.0.1"))  # a local relay is fine


def test_subjects_for_inbox_rules() -> None:
    """Subjects name the server and the outcome in words a rule can match."""
    unreachable = Event.create(
        EventType.SERVER_UNREACHABLE,
        "sklm-2",
        START,
        {"reason": "unreachable", "detail": "connection refused"},
        key=("o1",),
    )
    late = Event.create(
        EventType.SERVER_UNREACHABLE,
        "sklm-2",
        START,
        {"reason": "...", "after_restore": True, "down_for": 960.0},
        key=("o2",),
    )
    assert subject(completed()) == (
        "[sklm-watcher] sklm-prod-1: restore completed in 4m 12s"
    )
    assert (
        subject(unreachable) == "[sklm-watcher] sklm-2: unreachable: connection refused"
    )
    assert subject(late) == (
        "[sklm-watcher] sklm-2: did not come back after the restore (away 16m 00s)"
    )
    long = Event.create(
        EventType.RESTORE_FAILED, "s", START, {"reason": "x" * 500}, key=("r",)
    )
    assert len(subject(long)) == 200
    assert subject(long).endswith("…")
