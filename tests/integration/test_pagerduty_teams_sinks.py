"""The PagerDuty and Teams sinks on real sockets: documented receivers, hostile ones, secrets.

The schema-checking receivers (``pd_teams_receivers``) accept only what PagerDuty's
Events API v2 and a Teams Workflows webhook document; the hostile corpus of the
webhook sink (``test_hostile_sinks.CASES``) runs against both new sinks, since they
classify answers the same way; and one dispatcher run with failing receivers shows the
routing key and the Teams URL nowhere in logs, errors, the journal or the audit log.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from tests.clock import VirtualClock
from tests.integration.hostile_server import HOOK_PATH, HostileServer
from tests.integration.pd_teams_receivers import (
    PagerDutyReceiver,
    Scripted,
    TeamsReceiver,
)
from tests.integration.test_hostile_sinks import CASES, HANG_GUARD, SinkCase
from tests.unit.test_tracker import DONE, IDLE, INIT, KEYS, down, feed, ok
from watcher.client import create_session
from watcher.config import Secret, ServerConfig, SinkConfig
from watcher.dispatcher import Dispatcher
from watcher.errors import DeliveryError
from watcher.events import Event, EventType
from watcher.sinks import build_sink
from watcher.store.sqlite import SqliteStore as Journal
from watcher.tracker import Failure

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 29, 10, tzinfo=UTC)
ROUTING_KEY = "R0UT1NGk3y0123456789abcdefABCDEF"
TIMEOUT = 0.5


def pd_config(url: str, name: str = "pager", **extra: Any) -> SinkConfig:
    """A pagerduty sink posting to a local receiver."""
    return SinkConfig(
        name=name,
        type="pagerduty",
        url=Secret(url),
        routing_key=Secret(ROUTING_KEY),
        timeout=TIMEOUT,
        allow_insecure_http=True,
        **extra,
    )


def teams_config(url: str, name: str = "teams", **extra: Any) -> SinkConfig:
    """A teams sink posting to a local receiver (no spacing unless asked)."""
    return SinkConfig(
        name=name,
        type="teams",
        url=Secret(url),
        timeout=TIMEOUT,
        allow_insecure_http=True,
        **extra,
    )


def tracked_events() -> list[Event]:
    """Real tracker events: a stall that completes, a restart too long, an outage, auth."""
    config = ServerConfig(
        name="sklm-1",
        url="https://s:9443",
        stall_after=60.0,
        restart_timeout=300.0,
        unreachable_after=30.0,
    )
    obs = [
        ok(0, IDLE),
        ok(10, INIT),
        ok(20, KEYS),
        ok(100, KEYS),  # stalled
        ok(110, DONE),
        down(120),
        down(430),  # did not come back
        ok(500, IDLE, relogin=True),
        down(600),
        down(640),  # unreachable
        ok(650, IDLE),
        down(700, Failure.AUTH, "rejected"),
        ok(1100, IDLE),
    ]
    _, events, _ = feed(obs, config=config)
    return events


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The process session as the daemon builds it."""
    async with create_session([]) as s:
        yield s


async def deliver(sink: Any, event: Event) -> DeliveryError | None:
    """Deliver once; return the error, if any."""
    with anyio.fail_after(HANG_GUARD):
        try:
            await sink.deliver(event)
        except DeliveryError as exc:
            return exc
    return None


def failed_event(reason: str = "back to IDLE from RESTORE_KEYSTORES") -> Event:
    """A failed restore (one trigger for PagerDuty, a full card for Teams)."""
    return Event.create(
        EventType.RESTORE_FAILED,
        "sklm-prod-1",
        START,
        {
            "restore_id": "r1",
            "phase": "RESTORE_KEYSTORES",
            "reason": reason,
            "duration": 70.0,
            "timeline": [{"phase": "INITIALIZE", "duration": 1.0, "inferred": False}],
        },
        key=("r1",),
    )


# -- PagerDuty against its documented behaviour ---------------------------------------


async def test_pagerduty_alerts_open_and_close_in_pairs(session) -> None:
    """Every tracker trigger is valid Events API v2 and has its resolve; resends fold."""
    events = tracked_events()
    async with PagerDutyReceiver() as pd:
        sink = build_sink(pd_config(pd.url), session, VirtualClock.auto(START))
        for event in events:
            assert await deliver(sink, event) is None
        assert pd.invalid == []
        kinds = {key.split("/", 2)[2].split("/")[0] for key in pd.alerts}
        assert kinds == {"restore", "restart", "unreachable", "auth"}
        assert pd.open_alerts() == []
        # A resend of a trigger (a retry after a lost answer) is the same alert.
        stalled = next(e for e in events if e.type is EventType.RESTORE_STALLED)
        before = dict(pd.alerts)
        assert await deliver(sink, stalled) is None
        assert await deliver(sink, stalled) is None
        assert pd.alerts.keys() == before.keys()
    bodies = [json.loads(b) for b in pd.bodies]
    assert {b["routing_key"] for b in bodies} == {ROUTING_KEY}
    assert all(b["event_action"] in ("trigger", "resolve") for b in bodies)


async def test_pagerduty_400_is_permanent_and_echoed_key_is_not_repeated(
    session,
) -> None:
    """An invalid event is dead at once; PagerDuty's words come along, never the key."""
    async with PagerDutyReceiver() as pd:
        pd.script.append(
            Scripted(
                400,
                json.dumps(
                    {
                        "status": "invalid event",
                        "message": "Event object is invalid",
                        "errors": [f"'routing_key' {ROUTING_KEY} is not valid"],
                    }
                ),
                {"Content-Type": "application/json"},
            )
        )
        sink = build_sink(pd_config(pd.url), session, VirtualClock.auto(START))
        error = await deliver(sink, failed_event())
    assert error is not None
    assert error.permanent
    assert error.detail == "HTTP 400 Event object is invalid"
    assert ROUTING_KEY not in str(error)
    assert pd.url not in str(error)


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (429, {"Retry-After": "30"}, 30.0),
        (429, {}, None),
        (500, {}, None),
        (503, {}, None),
    ],
)
async def test_pagerduty_rate_limit_and_server_errors_are_transient(
    session, status, headers, retry_after
) -> None:
    """429 (with or without Retry-After) and 5xx are retried, as PagerDuty advises."""
    async with PagerDutyReceiver() as pd:
        pd.script.append(Scripted(status, "{}", headers))
        sink = build_sink(pd_config(pd.url), session, VirtualClock.auto(START))
        error = await deliver(sink, failed_event())
        assert error is not None
        assert not error.permanent
        assert error.retry_after == retry_after
        # The retry is the same request and is accepted.
        assert await deliver(sink, failed_event()) is None
        assert pd.bodies[0] == pd.bodies[1]
        assert pd.open_alerts() == ["sklm-watcher/sklm-prod-1/restore/r1"]


async def test_pagerduty_gigantic_reason_is_still_a_valid_event(session) -> None:
    """A 100,000-character reason: summary cut to 1024, the event under 512 KB."""
    async with PagerDutyReceiver() as pd:
        sink = build_sink(pd_config(pd.url), session, VirtualClock.auto(START))
        assert await deliver(sink, failed_event("x" * 100_000)) is None
    assert pd.invalid == []


async def test_pagerduty_test_event_leaves_nothing_open(session) -> None:
    """test-sink's event is a trigger and its resolve: the key works, nothing pages on."""
    event = Event.create(EventType.TEST, "sklm-watcher-test", START, key=("t",))
    async with PagerDutyReceiver() as pd:
        sink = build_sink(pd_config(pd.url), session, VirtualClock.auto(START))
        assert await deliver(sink, event) is None
    assert [json.loads(b)["event_action"] for b in pd.bodies] == ["trigger", "resolve"]
    assert pd.invalid == []
    assert pd.open_alerts() == []


# -- Teams against its documented behaviour -------------------------------------------


async def test_teams_every_event_is_a_valid_card(session) -> None:
    """Each tracker event and a gigantic failure make cards a Workflows webhook takes."""
    events = [*tracked_events(), failed_event("y" * 200_000)]
    async with TeamsReceiver() as teams:
        sink = build_sink(teams_config(teams.url), session, VirtualClock.auto(START))
        for event in events:
            assert await deliver(sink, event) is None
    assert teams.invalid == []
    assert len(teams.bodies) == len(events)
    titles = [card["body"][0]["text"] for card in teams.cards()]
    assert "Restore completed on sklm-1" in titles
    assert any("did not come back" in title for title in titles)


async def test_teams_workflow_error_gives_its_code_only(session) -> None:
    """A 400 with Workflows' JSON error is permanent; its message (the URL) is not quoted."""
    async with TeamsReceiver() as teams:
        teams.script.append(
            Scripted(
                400,
                json.dumps(
                    {
                        "error": {
                            "code": "TriggerInputSchemaMismatch",
                            "message": f"bad input for {teams.url}",
                        }
                    }
                ),
                {"Content-Type": "application/json"},
            )
        )
        sink = build_sink(teams_config(teams.url), session, VirtualClock.auto(START))
        error = await deliver(sink, failed_event())
        assert error is not None
        assert error.permanent
        assert error.detail == "HTTP 400 TriggerInputSchemaMismatch"
        assert teams.url not in str(error)
        assert "S3CR3T" not in str(error)


async def test_teams_429_retry_after_is_honoured(session) -> None:
    """Throttled: transient, with the receiver's Retry-After."""
    async with TeamsReceiver() as teams:
        teams.script.append(Scripted(429, "", {"Retry-After": "60"}))
        sink = build_sink(teams_config(teams.url), session, VirtualClock.auto(START))
        error = await deliver(sink, failed_event())
    assert error is not None
    assert (error.permanent, error.retry_after) == (False, 60.0)


async def test_teams_posts_are_spaced_by_min_interval(session) -> None:
    """Three posts in a row wait min_interval between them (virtual time)."""
    clock = VirtualClock.auto(START)
    async with TeamsReceiver() as teams:
        sink = build_sink(teams_config(teams.url, min_interval=1.0), session, clock)
        for _ in range(3):
            assert await deliver(sink, failed_event()) is None
    assert clock.sleeps == [1.0, 1.0]
    assert len(teams.bodies) == 3


# -- the hostile corpus, run against both -----------------------------------------------

HOSTILE = [case for case in CASES if case.kind == "webhook"]


def _hostile_config(kind: str, url: str) -> SinkConfig:
    return (
        pd_config(url, "hostile")
        if kind == "pagerduty"
        else teams_config(url, "hostile")
    )


@pytest.mark.parametrize("kind", ["pagerduty", "teams"])
@pytest.mark.parametrize("case", HOSTILE, ids=[case.id for case in HOSTILE])
async def test_hostile_receiver(kind: str, case: SinkCase, session) -> None:
    """Hangs, resets, redirects, 4xx/5xx, huge bodies: the documented outcome, no leak."""
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(HostileServer(hook=case.hook))
        if case.witness:
            server.witness = await stack.enter_async_context(HostileServer())
        url = server.url + HOOK_PATH
        sink = build_sink(_hostile_config(kind, url), session, VirtualClock.auto(START))
        error = await deliver(sink, failed_event())
        assert server.hook_requests == 1
        if case.outcome == "delivered":
            assert error is None
        else:
            assert error is not None, "expected a delivery error"
            assert error.permanent is (case.outcome == "permanent"), str(error)
            assert re.search(case.detail, error.detail), error.detail
            assert error.retry_after == case.retry_after
            assert url not in str(error)
            assert ROUTING_KEY not in str(error)
        if case.check is not None:
            await case.check(server)


# -- secrets ----------------------------------------------------------------------------


async def test_routing_key_and_teams_url_appear_nowhere(
    tmp_path: Path, session, logs
) -> None:
    """Through the dispatcher, with failures of every kind: no secret in any output."""
    events = [e for e in tracked_events() if e.type is not EventType.RESTORE_PHASE]
    async with PagerDutyReceiver() as pd, TeamsReceiver() as teams:
        echo_pd = json.dumps(
            {"message": f"bad {ROUTING_KEY}", "errors": [f"key {ROUTING_KEY}", pd.url]}
        )
        pd.script.extend(
            [Scripted(500, echo_pd), Scripted(400, echo_pd), Scripted(429, echo_pd)]
        )
        echo_teams = json.dumps({"error": {"code": teams.url, "message": teams.url}})
        teams.script.extend(
            [
                Scripted(500, echo_teams),
                Scripted(404, echo_teams),
                Scripted(400, teams.url),
            ]
        )
        configs = (pd_config(pd.url, max_age=3600.0), teams_config(teams.url))
        journal = Journal.open(tmp_path / "state", tmp_path / "events.jsonl", configs)
        for event in events:
            journal.record(event.server, {}, [event])
        clock = VirtualClock.auto(START)
        dispatcher = Dispatcher(
            journal,
            {c.name: build_sink(c, session, clock) for c in configs},
            {c.name: c for c in configs},
            clock,
            jitter=0,
        )
        with anyio.fail_after(HANG_GUARD * 3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(dispatcher.run)
                # The rows' progress lives in the journal: poll it.
                while any(  # noqa: ASYNC110
                    s.pending for s in await journal.call(journal.outbox_summary, START)
                ):
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        summary = journal.outbox_summary(START)
        journal.close()
    assert [(s.sink, s.dead) for s in summary] == [("pager", 1), ("teams", 2)]
    assert any(entry["log_level"] == "warning" for entry in logs)
    # The errors' words are in the logs, so a leaking detail would be seen here.
    assert "HTTP 400" in repr(logs)
    assert "HTTP 404" in repr(logs)
    outputs = [
        repr(logs),
        (tmp_path / "events.jsonl").read_text(encoding="utf-8"),
        *(p.read_bytes().decode("latin-1") for p in (tmp_path / "state").iterdir()),
    ]
    for text in outputs:
        for secret in (ROUTING_KEY, pd.url, teams.url, "S3CR3T", ROUTING_KEY[:12]):
            assert secret not in text
