"""The dashboard in headless Chromium, against a real daemon watching the simulator.

One simulator and one daemon for the module: every test here only reads. Restores
run on demand (the simulator's ``POST /ckms/restore``), started by the test once the
page or the API is ready, so nothing depends on how fast the processes started.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from .conftest import Dashboard, WatchedPage, dashboard, expect

pytestmark = pytest.mark.browser

PASSWORD = "browser-password"
HOSTILE = "<script>alert(1)</script>"

# sklm-live restores while the page watches it: its 1.5 s phases are each seen by
# several polls (0.2 s apart), its millisecond ones (nearly always) only inferred;
# sklm-done and sklm-fail restore as soon as the daemon is up, for the restore and
# history pages.
SCENARIO = f"""
[watcher_defaults]
unreachable_after = 1.0
stall_after = 60.0

[defaults]
password = "{PASSWORD}"

[[servers]]
name = "sklm-live"
[servers.on_demand]
phases = [[1, 1.5], [2, 0.001], [3, 0.001], [4, 1.5], [5, 1.5], [6, 0.001], [7, 0.5]]
outcome = "complete"
restart_down = 0.6
restart_starting = 0.4

[[servers]]
name = "sklm-done"
[servers.on_demand]
phases = [[1, 0.5], [2, 0.001], [3, 0.5], [4, 0.6], [5, 0.001], [6, 0.5], [7, 0.4]]
outcome = "complete"
restart_down = 0.4
restart_starting = 0.3

[[servers]]
name = "sklm-fail"
[servers.on_demand]
phases = [[1, 0.4], [2, 0.4], [3, 0.6]]
outcome = "fail"

[[servers]]
name = "sklm-badpw"
watcher_password = "not-the-password"

[[servers]]
name = "sklm-hostile"
error_rate = 1.0
faults = ["json_500"]
fault_message = "{HOSTILE}"
"""

ALL_PHASES = [
    "INITIALIZE",
    "CREATE_TEMP_DIR",
    "RESTORE_CONFIG_FILES",
    "RESTORE_KEYSTORES",
    "RESTORE_DATABASES",
    "CLEANUP",
    "COMPLETED",
]


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """The module's fleet and daemon; sklm-done and sklm-fail restore at once."""
    with dashboard(
        tmp_path_factory.mktemp("dashboard"), SCENARIO, password=PASSWORD
    ) as board:
        board.start_restore("sklm-done")
        board.start_restore("sklm-fail")
        yield board


def _clock(stamp: str) -> str:
    """An ISO time as the page's UTC clock text (seconds: the page adds ms)."""
    return datetime.fromisoformat(stamp).strftime("%H:%M:%S")


def _ms(stamp: str) -> int:
    """An ISO time (``...Z``) as milliseconds since the epoch, like ``Date.now()``."""
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


def test_a_restore_appears_phase_by_phase_as_it_happens(
    board: Dashboard, open_page: Callable[[], WatchedPage]
) -> None:
    """Each phase the daemon sees is on the page while the server is still in it."""
    watched = open_page()
    watched.goto(board.url + "/")
    row = watched.page.locator('[data-server="sklm-live"]')
    row.wait_for()
    assert row.get_attribute("data-phase") == "IDLE"

    board.start_restore("sklm-live")
    watched.page.wait_for_selector('[data-server="sklm-live"][data-phase="COMPLETED"]')
    restore = board.restore_of("sklm-live", "completed")
    # Back to IDLE after the restart: the row follows the server to the end.
    watched.page.wait_for_selector(
        '[data-server="sklm-live"][data-phase="IDLE"][data-health="ok"]'
    )

    shown = [phase for phase, _ in watched.phases("sklm-live")]
    restoring = shown[shown.index("INITIALIZE") : shown.index("COMPLETED") + 1]
    # In order, never backwards, and every phase long enough to be polled is there.
    assert restoring == sorted(restoring, key=ALL_PHASES.index)
    assert len(set(restoring)) == len(restoring)
    for phase in ("INITIALIZE", "RESTORE_KEYSTORES", "RESTORE_DATABASES", "COMPLETED"):
        assert phase in restoring, shown
    # "As it happens": the page showed each long phase before the server left it.
    truth = [
        t
        for t in board.truth()
        if t["server"] == "sklm-live" and t["kind"] == "phase" and t["restore"] == 0
    ]
    began = {t["phase"]: _ms(t["at"]) for t in truth}
    shown_at = dict(watched.phases("sklm-live"))
    for phase, after in (
        ("INITIALIZE", "CREATE_TEMP_DIR"),
        ("RESTORE_KEYSTORES", "RESTORE_DATABASES"),
        ("RESTORE_DATABASES", "CLEANUP"),
    ):
        assert shown_at[phase] < began[after], (phase, shown_at, began)

    # The restore page marks the phases that passed between two polls.
    detail = board.api(f"/api/restores/{restore['restore_id']}")
    inferred = {p["phase"] for p in detail["phases"] if p["inferred"]}
    # Its three 1 ms phases: a poll lands in one only by rare chance, so at least
    # one of them (nearly always all three) was inferred.
    assert inferred
    assert inferred <= {"CREATE_TEMP_DIR", "RESTORE_CONFIG_FILES", "CLEANUP"}
    watched.goto(f"{board.url}/restores/{restore['restore_id']}")
    assert set(watched.attrs("svg#timeline rect.phase.inferred", "data-phase")) == (
        inferred
    )
    watched.assert_clean()


def test_failing_servers_show_their_reason(
    board: Dashboard, open_page: Callable[[], WatchedPage], tmp_path: Path
) -> None:
    """Rejected credentials and a closed port: each row says so, and why."""
    watched = open_page()
    watched.goto(board.url + "/")
    page = watched.page
    page.wait_for_selector('[data-server="sklm-badpw"][data-health="auth_failed"]')
    page.wait_for_selector('[data-server="sklm-gone"][data-health="unreachable"]')
    badpw = page.locator('[data-server="sklm-badpw"] .reason')
    assert "CTGKM6003E" in badpw.inner_text()
    gone = page.locator('[data-server="sklm-gone"] .reason')
    assert gone.inner_text().strip()
    # Auth failed, unreachable, and the hostile one's protocol errors.
    expect(page.locator('#counts [data-count="failing"]')).to_have_text("3")
    assert page.locator('#counts [data-count="watching"]').inner_text() == "6"
    assert page.locator("#stream-state").get_attribute("data-state") == "open"
    # A test artifact: the fleet view as this test saw it.
    board.restore_of("sklm-done", "completed")
    board.restore_of("sklm-fail", "failed")
    page.screenshot(path=str(tmp_path / "dashboard-fleet.png"), full_page=True)
    watched.assert_clean()


def test_the_restore_page_draws_every_phase(
    board: Dashboard, open_page: Callable[[], WatchedPage], tmp_path: Path
) -> None:
    """Seven bars, the inferred ones hatched with their bracketing polls; the events."""
    # Restarted too: the restore's last event is in, so the page and the API agree.
    restore = board.restore_of("sklm-done", "completed", restarted=True)
    detail = board.api(f"/api/restores/{restore['restore_id']}")
    watched = open_page()
    watched.goto(f"{board.url}/restores/{restore['restore_id']}")
    page = watched.page
    drawn = watched.attrs("svg#timeline rect.phase", "data-phase")
    assert drawn == ALL_PHASES, detail["phases"]
    inferred = [p["phase"] for p in detail["phases"] if p["inferred"]]
    # CREATE_TEMP_DIR and RESTORE_DATABASES last 1 ms: one at least was inferred
    # (more may be: the restore began between two idle polls, 1 s apart).
    assert inferred
    assert watched.attrs("svg#timeline rect.phase.inferred", "data-phase") == inferred
    # Widths follow durations: the longest observed phase has the widest bar.
    widths = {
        phase: float(width or 0)
        for phase, width in zip(
            ALL_PHASES, watched.attrs("svg#timeline rect.phase", "width"), strict=True
        )
    }
    observed = [p for p in detail["phases"] if not p["inferred"] and p["duration"]]
    longest = max(observed, key=lambda p: p["duration"])["phase"]
    assert widths[longest] == max(widths.values())
    # The polls that bracket an inferred phase: a tooltip (<title>) and visible text.
    for phase in (p for p in detail["phases"] if p["inferred"]):
        polls = [_clock(phase["bracket"]["before"]), _clock(phase["bracket"]["after"])]
        rect = page.locator(f'svg#timeline rect.phase[data-phase="{phase["phase"]}"]')
        tooltip = rect.locator("title").text_content() or ""
        assert all(t in tooltip for t in polls), (tooltip, polls)
        visible = page.locator("svg#timeline text").all_text_contents()
        assert any(all(t in text for t in polls) for text in visible), visible
    assert "completed" in page.locator("#outcome").inner_text().lower()
    assert page.locator("#events li").count() == len(detail["events"])
    page.locator("svg#timeline").screenshot(
        path=str(tmp_path / "dashboard-restore.png")
    )
    page.screenshot(path=str(tmp_path / "dashboard-restore-page.png"), full_page=True)
    watched.assert_clean()


def test_the_history_lists_filters_and_links(
    board: Dashboard, open_page: Callable[[], WatchedPage]
) -> None:
    """``/restores`` lists each restore, filters by outcome, links to its page."""
    done = board.restore_of("sklm-done", "completed")
    failed = board.restore_of("sklm-fail", "failed")
    watched = open_page()
    watched.goto(board.url + "/restores")
    page = watched.page
    for row in (done, failed):
        link = page.locator(
            f'table#restores tr[data-restore-id="{row["restore_id"]}"] '
            f'a[href="/restores/{row["restore_id"]}"]'
        )
        assert link.count() >= 1

    watched.goto(board.url + "/restores?outcome=failed")
    rows = watched.attrs("table#restores tr[data-restore-id]", "data-restore-id")
    assert rows == [failed["restore_id"]]
    page.locator(f'a[href="/restores/{failed["restore_id"]}"]').first.click()
    page.wait_for_url(f"**/restores/{failed['restore_id']}")
    page.wait_for_selector("body[data-ready='true']", state="attached")
    assert "failed" in page.locator("#outcome").inner_text().lower()

    watched.goto(board.url + "/restores?server=sklm-d*")
    rows = watched.attrs("table#restores tr[data-restore-id]", "data-restore-id")
    assert rows == [done["restore_id"]]
    watched.assert_clean()


def test_a_hostile_error_message_is_shown_and_runs_nothing(
    board: Dashboard, open_page: Callable[[], WatchedPage]
) -> None:
    """An SKLM error saying ``<script>alert(1)</script>`` is text on the page."""
    watched = open_page()
    watched.goto(board.url + "/")
    page = watched.page
    reason = page.locator('[data-server="sklm-hostile"] .reason')
    expect(reason).to_contain_text(HOSTILE)
    assert HOSTILE in reason.inner_text()
    assert reason.locator("script").count() == 0
    # The only scripts are the page's own files; none came from the message.
    sources = page.eval_on_selector_all("script", "s => s.map(e => e.src)")
    assert sources
    assert all(s.startswith(board.url + "/assets/") for s in sources)
    rows = {r["server"]: r for r in board.api("/api/status")}
    assert HOSTILE in rows["sklm-hostile"]["last_error"]
    watched.assert_clean()


def test_dark_mode_and_a_phone_sized_window(
    board: Dashboard, open_page: Callable[[], WatchedPage], tmp_path: Path
) -> None:
    """The system's dark mode darkens the page; 390 px wide, no sideways scrolling."""
    watched = open_page()
    page = watched.page
    watched.goto(board.url + "/")
    background = "() => getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate(background)
    assert light != dark
    assert _luminance(dark) < 0.2 < _luminance(light)

    page.set_viewport_size({"width": 390, "height": 800})
    row = page.locator('[data-server="sklm-badpw"]')
    name, reason = (
        row.locator(".name").bounding_box(),
        row.locator(".reason").bounding_box(),
    )
    assert name is not None
    assert reason is not None
    # One column: the reason goes under the name, and nothing sticks out sideways.
    assert reason["y"] >= name["y"] + name["height"]
    assert page.evaluate(
        "() => document.documentElement.scrollWidth <= window.innerWidth"
    )
    page.screenshot(path=str(tmp_path / "dashboard-phone-dark.png"), full_page=True)
    watched.assert_clean()


def _luminance(css: str) -> float:
    """The rough lightness (0 to 1) of a computed ``rgb(r, g, b)`` colour."""
    r, g, b = (int(c) for c in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_an_event_refetches_only_the_rows_it_names(
    board: Dashboard, open_page: Callable[[], WatchedPage]
) -> None:
    """While a restore runs, the page asks for its server's row, not the fleet's."""
    watched = open_page()
    page = watched.page
    asked: list[str] = []
    page.on(
        "request",
        lambda r: asked.append(r.url) if "/api/status" in r.url else None,
    )
    watched.goto(board.url + "/")
    # The first fetch of every row, and the one after the stream opened.
    watched.pump(
        lambda: sum(1 for url in asked if urlsplit(url).query == "") >= 2,
        timeout=20,
        what="the page's two whole-fleet fetches",
    )
    start = len(asked)
    board.start_restore("sklm-live")
    page.wait_for_selector('[data-server="sklm-live"][data-phase="COMPLETED"]')
    page.wait_for_selector(
        '[data-server="sklm-live"][data-phase="IDLE"][data-health="ok"]'
    )
    during = asked[start:]
    whole = [url for url in during if urlsplit(url).query == ""]
    some = [parse_qs(urlsplit(url).query).get("server", []) for url in during]
    # Each event named its server; the whole fleet was fetched at most once, by the
    # page's once-a-minute reconciliation (a reload journals no event).
    assert len(whole) <= 1, during
    assert any(names == ["sklm-live"] for names in some), during
    assert len(during) - len(whole) >= 3, during
    row = next(r for r in board.api("/api/status") if r["server"] == "sklm-live")
    shown = page.locator('[data-server="sklm-live"]')
    assert shown.get_attribute("data-phase") == row["phase"]
    assert shown.get_attribute("data-health") == row["health"]
    expect(page.locator('#counts [data-count="restoring"]')).to_have_text("0")
    watched.assert_clean()
