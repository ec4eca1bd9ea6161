"""Slack's fallback ``text`` (a phone's lock screen) names the reason in words."""

from collections.abc import Mapping

import pytest

from tests.unit.sinks.fakes import T0
from watcher.config import SLACK_DEFAULT_EVENTS
from watcher.events import Event, EventType
from watcher.sinks.slack import render

UNREACHABLE = EventType.SERVER_UNREACHABLE


def _text(type_: EventType, data: Mapping[str, object], server: str = "sklm-2") -> str:
    return str(render(Event.create(type_, server, T0, data))["text"])


def _block(type_: EventType, data: Mapping[str, object], server: str = "sklm-2") -> str:
    [block] = render(Event.create(type_, server, T0, data))["blocks"]
    return str(block["text"]["text"])


# data as the tracker writes it: reason (the kind, or the restart verdict),
# failure (the kind) and detail (the reason in words).
@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"reason": "unreachable", "failure": "unreachable", "detail": "connection refused", "after_restore": False},
         "sklm-2: unreachable: connection refused"),
        ({"reason": "tls", "failure": "tls", "detail": "certificate verify failed: unable to get local issuer certificate"},
         "sklm-2: TLS error: certificate verify failed: unable to get local issuer certificate"),
        ({"reason": "protocol", "failure": "protocol", "detail": "HTTP 404 from both progress paths"},
         "sklm-2: protocol error: HTTP 404 from both progress paths"),
        ({"reason": "unreachable", "failure": "unreachable", "detail": None},
         "sklm-2: unreachable"),
        ({"reason": "the server did not come back within restart_timeout (900 s) after the restore",
          "failure": "unreachable", "detail": "timed out after 10 s", "down_for": 901.0, "after_restore": True},
         "sklm-2: not back 15m 01s after the restore: timed out after 10 s"),
    ],
)  # fmt: skip
def test_unreachable_text_names_the_reason(data, text) -> None:
    """The kind in words, then data.detail; the block says the same."""
    assert _text(UNREACHABLE, data) == text
    assert (
        _block(UNREACHABLE, data)
        == f":warning: *sklm-2*: {text.removeprefix('sklm-2: ')}"
    )


def test_detail_of_an_older_version_is_not_doubled() -> None:
    """A detail that starts with the server's name (str(exc) before) shows it once."""
    data = {"failure": "unreachable", "detail": "sklm-2: connection refused"}
    assert _text(UNREACHABLE, data) == "sklm-2: unreachable: connection refused"


def test_detail_is_escaped() -> None:
    """mrkdwn control characters in a detail cannot make a link or a mention."""
    data = {"failure": "protocol", "detail": "HTML page <title>Login</title> & more"}
    assert _text(UNREACHABLE, data) == (
        "sklm-2: protocol error: HTML page &lt;title&gt;Login&lt;/title&gt; &amp; more"
    )


@pytest.mark.parametrize(
    ("type_", "data", "text"),
    [
        (EventType.AUTH_FAILED, {"detail": "CTGKM6003E login rejected", "phase": "IDLE"},
         "sklm-2: login rejected: CTGKM6003E login rejected; check the configured username and password"),
        (EventType.AUTH_FAILED, {"phase": "IDLE"},
         "sklm-2: login rejected: check the configured username and password"),
        # The client's own words are not repeated after a "login rejected:" of ours.
        (EventType.AUTH_FAILED,
         {"detail": "login rejected the credentials of user 'SKLMAdmin': HTTP 401 CTGKM6003E", "phase": "IDLE"},
         "sklm-2: login rejected the credentials of user 'SKLMAdmin': HTTP 401 CTGKM6003E; check the configured username and password"),
        (EventType.AUTH_RECOVERED, {"phase": "IDLE", "since": "2026-11-29T09:48:00.000Z", "failed_for": 725.0},
         "sklm-2: login accepted again (rejected for 12m 05s)"),
        (EventType.AUTH_RECOVERED, {"phase": "IDLE", "failed_for": None},
         "sklm-2: login accepted again"),
        (EventType.SERVER_RECOVERED, {"down_for": 75.0, "phase": "IDLE", "after_restore": False},
         "sklm-2: server answers again after 1m 15s"),
        (EventType.SERVER_RECOVERED, {"down_for": None, "phase": "IDLE"},
         "sklm-2: server answers again"),
        (EventType.SERVER_RECOVERED, {"down_for": 960.0, "phase": "IDLE", "after_restore": True},
         "sklm-2: server back after the restore, later than expected (away 16m 00s)"),
    ],
)  # fmt: skip
def test_auth_and_recovery_texts(type_, data, text) -> None:
    """Rejected logins name the reason; recoveries say how long it lasted."""
    assert _text(type_, data) == text


def test_recovery_events_have_their_own_emoji() -> None:
    """Both recovery types are in Slack's defaults and render with a green emoji."""
    assert {"sklm.auth.recovered", "sklm.server.recovered"} <= set(SLACK_DEFAULT_EVENTS)
    assert _block(EventType.AUTH_RECOVERED, {}).startswith(":unlock: *sklm-2*: ")
    assert _block(EventType.SERVER_RECOVERED, {}).startswith(":large_green_circle: ")
