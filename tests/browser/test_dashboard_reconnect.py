"""The fleet page across a reload (SIGHUP) and a restart of the daemon: nothing missed.

The page's ``EventSource`` is recorded by the init script (every message's id and
data). While the daemon is down the test holds the page's reconnection (a
Playwright route that fails it) until the new daemon has journaled events the page
has not seen: those can only reach it through ``Last-Event-ID`` and the store.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from .conftest import Dashboard, WatchedPage, dashboard

if TYPE_CHECKING:
    from playwright.sync_api import Route

pytestmark = pytest.mark.browser

PASSWORD = "reconnect-password"

# Phases long enough for a reload and a restart to fall inside the restore, each
# change a new event: the restart spans at least one of them.
SCENARIO = f"""
[defaults]
password = "{PASSWORD}"

[[servers]]
name = "sklm-a"
[servers.on_demand]
phases = [[1, 1.0], [2, 1.0], [3, 1.0], [4, 1.0], [5, 1.0], [6, 1.0], [7, 0.5]]
outcome = "complete"
restart_down = 0.3
restart_starting = 0.2
"""

STREAM = "**/api/events/stream*"


@pytest.fixture
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """A one-server fleet and its daemon."""
    with dashboard(
        tmp_path_factory.mktemp("reconnect"), SCENARIO, password=PASSWORD
    ) as board:
        yield board


def _seq(line: str) -> int:
    seq: int = json.loads(line)["auditseq"]
    return seq


def test_reload_and_restart_with_the_page_open_miss_nothing(
    board: Dashboard, open_page: Callable[[], WatchedPage]
) -> None:
    """SIGHUP, then SIGTERM and a new daemon: the page catches up, no gap, no dup."""
    watched = open_page()
    watched.goto(board.url + "/")
    page = watched.page
    page.wait_for_selector('#stream-state[data-state="open"]')
    board.start_restore("sklm-a")
    # (CSS, not wait_for_function: the page's CSP rightly forbids the eval it needs.)
    page.wait_for_selector(
        '[data-server="sklm-a"]:not([data-phase="IDLE"]):not([data-phase=""])'
    )

    # A reload keeps the daemon (and its stream) running: events go on arriving.
    before_reload = _seq(board.audit_lines()[-1])
    board.daemon.signal(signal.SIGHUP)
    watched.pump(
        lambda: '"reload.applied"' in board.daemon.stderr(),
        timeout=20,
        what="the reload to be applied",
    )
    watched.pump(
        lambda: any(i > before_reload for i in watched.sse_ids()),
        timeout=20,
        what="an event after the reload on the page",
    )

    # A restart: the page says it is reconnecting, and may not get back in until the
    # new daemon has journaled what the page has not seen.
    held: list[str] = []

    def hold(route: Route) -> None:
        held.append(route.request.url)
        route.abort()

    page.route(STREAM, hold)
    board.stop_daemon()
    page.wait_for_selector('#stream-state[data-state="reconnecting"]')
    seen_before = max(watched.sse_ids())
    board.start_daemon()
    # Another tab, connected live to the new daemon, sees its first new events: they
    # have been fanned out, so the held page can only get them from the store.
    other = open_page()
    other.goto(board.url + "/")
    other.pump(
        lambda: any(i > seen_before for i in other.sse_ids()),
        timeout=20,
        what="the new daemon to send an event the held page has not seen",
    )
    missed_while_down = max(other.sse_ids())
    watched.pump(lambda: bool(held), timeout=20, what="the page to try to reconnect")
    page.unroute(STREAM)
    page.wait_for_selector('#stream-state[data-state="open"]')
    watched.pump(
        lambda: missed_while_down in watched.sse_ids(),
        timeout=20,
        what="the events journaled while the page was away",
    )
    board.restore_of("sklm-a", "completed", restarted=True)
    watched.pump(
        lambda: max(watched.sse_ids()) == _seq(board.audit_lines()[-1]),
        timeout=20,
        what="the page to see the last event",
    )
    page.wait_for_selector('[data-server="sklm-a"][data-phase="IDLE"]')

    # Every event journaled since the page opened, once each, in order, as logged.
    ids = watched.sse_ids()
    lines = [line for line in board.audit_lines() if _seq(line) >= ids[0]]
    assert ids == [_seq(line) for line in lines]
    assert watched.sse_data() == lines
    row = next(r for r in board.api("/api/status") if r["server"] == "sklm-a")
    shown = page.locator('[data-server="sklm-a"]')
    assert shown.get_attribute("data-phase") == row["phase"]
    assert shown.get_attribute("data-health") == row["health"]
    # The only errors are the refused and held connections while it was down.
    assert watched.dialogs == []
    assert not [e for e in watched.errors if "pageerror" in e]
