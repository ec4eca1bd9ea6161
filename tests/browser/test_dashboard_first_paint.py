"""The fleet page's first paint of a big fleet, in headless Chromium.

A real :class:`StatusServer` on 127.0.0.1 (in a thread of this process) serves 2,000
servers' states, three of them failing, names last in the alphabet. The page must put
the counts and a first screenful of rows, problems first, in the DOM before the rest
(``body[data-first-rows]``), then every row, each once (``body[data-ready]``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watcher.phases import Phase
from watcher.service import StatusServer
from watcher.tracker import Failure, ServerState

from .conftest import WatchedPage

pytestmark = pytest.mark.browser

NOW = datetime(2026, 12, 1, 23, 0, tzinfo=UTC)
SERVERS = 2000
FAILING = ("zz-fail-1", "zz-fail-2", "zz-fail-3")

#: Before the page's scripts: the rows in the DOM (in order) when each mark is set.
PROBE = """
(() => {
  const got = window.__paint = {first: null, ready: null};
  const names = () => [...document.querySelectorAll("#fleet [data-server]")]
    .map((row) => row.dataset.server);
  new MutationObserver(() => {
    const data = document.body ? document.body.dataset : {};
    if (got.first === null && data.firstRows === "true") got.first = names();
    if (got.ready === null && data.ready === "true") got.ready = names();
  }).observe(document, {subtree: true, attributes: true,
                        attributeFilter: ["data-first-rows", "data-ready"]});
})();
"""


class Fleet:
    """A ``StatusSource`` of fixed states: idle servers and three failing ones."""

    def __init__(self) -> None:
        ok = ServerState(phase=Phase.IDLE, phase_since_at=NOW, last_ok_at=NOW)
        self._states: dict[str, ServerState] = {
            f"srv-{i:04d}": ok for i in range(SERVERS - len(FAILING))
        }
        for name in FAILING:
            self._states[name] = ServerState(
                consecutive_failures=3,
                last_failure=Failure.UNREACHABLE,
                last_error="connection refused",
                last_ok_at=NOW - timedelta(minutes=5),
            )

    def states(self) -> Mapping[str, ServerState]:
        """The servers' states."""
        return dict(self._states)

    def stats(self) -> Mapping[str, Any]:
        """No poll counters."""
        return {}

    async def outbox(self) -> Sequence[Any]:
        """No backlog."""
        return []

    def health(self) -> str | None:
        """Healthy."""
        return None

    def events_by_type(self) -> Mapping[str, int]:
        """No events."""
        return {}

    def poll_latency(self) -> Mapping[str, Any]:
        """No histograms."""
        return {}


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """The status server on 127.0.0.1 in a thread of its own; its base URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, loop)
        return future.result(timeout=30)

    server = StatusServer(Fleet(), version="9.9.9", now=lambda: NOW)
    host, port = run(server.start("127.0.0.1", 0))
    try:
        yield f"http://{host}:{port}"
    finally:
        run(server.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_a_big_fleet_paints_a_first_screenful_problems_first(
    served: str, open_page: Callable[[], WatchedPage]
) -> None:
    """The first rows are in the DOM (the failing ones on top) before all 2,000 are."""
    watched = open_page()
    page = watched.page
    page.add_init_script(PROBE)
    watched.goto(served + "/")
    # Polled through evaluate: wait_for_function evaluates a string (the CSP says no).
    watched.pump(
        lambda: bool(page.evaluate("window.__paint.ready !== null")),
        timeout=30,
        what="every row in the DOM",
    )
    first: list[str] = page.evaluate("window.__paint.first")
    ready: list[str] = page.evaluate("window.__paint.ready")
    # A screenful (the viewport holds ~14 rows) and not yet the whole fleet.
    assert 14 <= len(first) < SERVERS
    assert first[: len(FAILING)] == list(FAILING)
    assert first == ready[: len(first)]
    assert len(ready) == SERVERS
    assert len(set(ready)) == SERVERS
    assert page.locator('#counts [data-count="watching"]').inner_text() == "2000"
    assert page.locator('#counts [data-count="failing"]').inner_text() == "3"
