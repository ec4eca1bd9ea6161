"""``sklm-watcher demo`` prints its dashboard's address, and the page shows it live.

With ``SKLM_WATCHER_DOCS_IMG=docs/img`` the test also waits for a fuller picture (a
stall reported, a restore over) and writes the README's two screenshots there:
``dashboard-fleet.png`` and ``dashboard-restore.png``. That is how they were made.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Proc, wait_for

from .conftest import WatchedPage, http_json, spawn

pytestmark = pytest.mark.browser

DEMO_SERVERS = 6
_URL = re.compile(r"^dashboard: (http://127\.0\.0\.1:\d+/)", re.MULTILINE)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Proc, str]]:
    """``sklm-watcher demo --keep-running`` and the dashboard URL it printed."""
    proc = spawn(
        tmp_path, "demo", "demo", "--keep-running", "--keep", str(tmp_path / "kept")
    )
    found: list[str] = []

    def printed() -> bool:
        assert proc.popen.poll() is None, proc.stdout() + proc.stderr()
        found[:] = _URL.findall(proc.stdout())
        return bool(found)

    try:
        wait_for(printed, timeout=30, what="the demo to print its dashboard URL")
        yield proc, found[0]
    finally:
        proc.stop()


def test_the_demo_prints_its_dashboard_and_the_page_follows_it(
    demo: tuple[Proc, str], open_page: Callable[[], WatchedPage], tmp_path: Path
) -> None:
    """The URL answers, the page lists the demo fleet and follows its restores."""
    proc, url = demo
    watched = open_page()
    watched.goto(url)
    page = watched.page
    page.wait_for_selector(f"#fleet [data-server]:nth-child({DEMO_SERVERS})")
    assert len(watched.attrs("#fleet [data-server]", "data-server")) == DEMO_SERVERS
    # Live: a restore the page did not have when it loaded shows up without a reload.
    page.wait_for_selector('[data-server][data-restoring="true"]')
    assert watched.sse_ids()
    docs = os.environ.get("SKLM_WATCHER_DOCS_IMG")
    if docs:
        _docs_screenshots(watched, url, Path(docs))
    page.screenshot(path=str(tmp_path / "demo-fleet.png"))
    watched.assert_clean()

    # Ctrl-C: before the scripted restores end, 130; after (the docs run waits for
    # them), the verdict, 0.
    proc.signal(signal.SIGINT)
    assert proc.wait(timeout=20) in ((0, 130) if docs else (130,)), proc.stderr()
    assert f"dashboard: {url}" in proc.stdout()


def _docs_screenshots(watched: WatchedPage, url: str, where: Path) -> None:
    """The README's images: the fleet mid-demo and sklm-fast's finished timeline."""
    page = watched.page
    page.set_viewport_size({"width": 1280, "height": 560})
    page.wait_for_selector(
        '[data-server="sklm-stall"][data-stalled="true"]', timeout=40_000
    )
    page.wait_for_selector(
        '[data-server="sklm-legacy"][data-restoring="true"]', timeout=40_000
    )
    where.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(where / "dashboard-fleet.png"))
    restore: list[str] = []

    def fast_done() -> bool:
        rows = http_json(f"{url}api/restores?server=sklm-fast")
        restore[:] = [r["restore_id"] for r in rows if r["restarted"]]
        return bool(restore)

    watched.pump(fast_done, timeout=40, what="sklm-fast's restore to end")
    page.set_viewport_size({"width": 1000, "height": 560})
    watched.goto(f"{url}restores/{restore[0]}")
    page.screenshot(path=str(where / "dashboard-restore.png"), full_page=True)
    page.set_viewport_size({"width": 1100, "height": 720})
    watched.goto(url)
