"""Browser-test fixtures: a simulated fleet, a real daemon listening, headless Chromium.

Playwright drives Debian's ``/usr/bin/chromium`` (``playwright install`` downloads a
browser of its own and cannot work offline); every test here skips with the reason
when that browser or the ``playwright`` package is missing. One Chromium per module
(a fresh profile directory each time), one simulator and daemon per module where the
tests only read, so the whole directory stays well under a minute.

Everything a page did is recorded by an init script Playwright injects before the
page's own scripts (it is not subject to the page's CSP, which forbids inline
script): every Server-Sent Events message the page's ``EventSource`` received (id and
data), and every change of a server row's ``data-phase`` with the browser's clock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from tests.e2e.conftest import Proc, read_jsonl, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page
    from playwright.sync_api._generated import LocatorAssertions

REPO: Final = Path(__file__).resolve().parents[2]
EXE: Final = [sys.executable, "-m", "watcher"]
CHROMIUM: Final = Path("/usr/bin/chromium")
#: The flags issue 14 asks for: no sandbox (containers), nothing fetched from outside.
CHROMIUM_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
#: Playwright's bound on every wait for a DOM condition (ms): a guard against hangs,
#: never the thing a test asserts.
DOM_TIMEOUT_MS: Final = 15_000
#: What the on-demand restore endpoint is sent (the simulator only checks the path).
BACKUP: Final = {"backupFilePath": "/opt/backups/sklm_backup.jar", "password": "x"}
API: Final = "/SKLM/rest/v1"

#: Injected before the page's scripts: records what the page received and showed.
RECORDER_JS: Final = r"""
(() => {
  const Real = window.EventSource;
  const sse = { ids: [], data: [], opened: 0, errors: 0, urls: [] };
  window.__sse = sse;
  class Recording extends Real {
    constructor(url, init) {
      super(url, init);
      sse.urls.push(String(url));
      this.addEventListener("open", () => { sse.opened += 1; });
      this.addEventListener("error", () => { sse.errors += 1; });
      this.addEventListener("message", (m) => {
        sse.ids.push(m.lastEventId);
        sse.data.push(m.data);
      });
    }
  }
  window.EventSource = Recording;
  const phases = {};
  window.__phases = phases;
  const record = (node) => {
    const server = node.dataset.server;
    if (server === undefined || node.dataset.phase === undefined) return;
    const list = (phases[server] = phases[server] || []);
    const phase = node.dataset.phase;
    if (!list.length || list[list.length - 1].phase !== phase) {
      list.push({ phase, at: Date.now() });
    }
  };
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      if (m.type === "attributes") record(m.target);
      for (const n of m.addedNodes || []) {
        if (n.nodeType !== 1) continue;
        if (n.matches("[data-server]")) record(n);
        n.querySelectorAll("[data-server]").forEach(record);
      }
    }
  }).observe(document, {
    subtree: true, childList: true, attributes: true, attributeFilter: ["data-phase"],
  });
})();
"""


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (Debian package chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def expect(locator: Locator) -> LocatorAssertions:
    """Playwright's ``expect``, imported late so a missing package skips, not errors."""
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=DOM_TIMEOUT_MS)
    return playwright_expect(locator)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_json(
    url: str, *, data: object = None, headers: dict[str, str] | None = None
) -> Any:
    """GET (or POST ``data`` as JSON to) a loopback URL and return the parsed answer."""
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
        url,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        method="GET" if data is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return json.loads(answer.read())


def spawn(workdir: Path, label: str, *args: str) -> Proc:
    """Start ``python -m watcher ARGS`` in ``workdir``, output to LABEL.out / .err."""
    out = workdir / f"{label}.out"
    err = workdir / f"{label}.err"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with out.open("a", encoding="utf-8") as o, err.open("a", encoding="utf-8") as e:
        popen = subprocess.Popen(
            [*EXE, *args],
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=workdir,
        )
    return Proc(popen, out, err)


@dataclass
class Dashboard:
    """A simulated fleet and a real ``sklm-watcher run`` listening on 127.0.0.1."""

    workdir: Path
    config: Path
    ground_truth: Path
    simulator: Proc
    port: int
    #: The simulated servers' base URLs by name.
    servers: dict[str, str]
    password: str
    daemons: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The dashboard's base URL (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def audit_log(self) -> Path:
        """The daemon's audit log."""
        return self.workdir / "state" / "events.jsonl"

    @property
    def daemon(self) -> Proc:
        """The daemon started last."""
        return self.daemons[-1]

    def start_daemon(self) -> Proc:
        """Start ``sklm-watcher run`` and wait until ``/api/status`` has every server."""
        proc = spawn(
            self.workdir, f"daemon{len(self.daemons)}", "run", "-c", str(self.config)
        )
        self.daemons.append(proc)
        expected = len(self.servers) + 1  # the simulated ones and the unreachable one

        def answering() -> bool:
            assert proc.popen.poll() is None, proc.stderr()
            try:
                return len(self.api("/api/status")) == expected
            except (OSError, ValueError):
                return False

        wait_for(answering, timeout=30, what="the daemon's /api/status")
        return proc

    def stop_daemon(self) -> None:
        """SIGTERM the running daemon and wait for its clean exit (code 0)."""
        proc = self.daemon
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, proc.stderr()

    def stop_all(self) -> None:
        """Stop every daemon still running (teardown)."""
        for proc in self.daemons:
            proc.stop()

    def api(self, path: str) -> Any:
        """GET a dashboard JSON path (``/api/...``)."""
        return http_json(self.url + path)

    def audit_lines(self) -> list[str]:
        """The audit log's complete lines, as written."""
        if not self.audit_log.exists():
            return []
        text = self.audit_log.read_text(encoding="utf-8")
        return text[: text.rfind("\n") + 1].splitlines()

    def truth(self) -> list[dict[str, Any]]:
        """The simulator's ground-truth lines so far."""
        return read_jsonl(self.ground_truth)

    def start_restore(self, server: str) -> None:
        """Start ``server``'s scripted on-demand restore now, as an operator would.

        Once the daemon has seen the server IDLE: a restore whose start it did not
        see begins, for it, at the first phase it polls, not at INITIALIZE.
        """

        def idle() -> bool:
            rows = {r["server"]: r for r in self.api("/api/status")}
            return (rows[server]["health"], rows[server]["phase"]) == ("ok", "IDLE")

        wait_for(idle, timeout=20, what=f"the daemon to see {server} IDLE")
        base = self.servers[server] + API
        login = http_json(
            f"{base}/ckms/login",
            data={"userid": "SKLMAdmin", "password": self.password},
        )
        auth = {"Authorization": f"SKLMAuth userAuthId={login['UserAuthId']}"}
        http_json(f"{base}/ckms/restore", data=BACKUP, headers=auth)

    def restore_of(
        self, server: str, outcome: str, *, restarted: bool = False, timeout: float = 20
    ) -> dict[str, Any]:
        """Wait for ``server``'s restore with ``outcome`` (and, if asked, its
        server's restart) in ``/api/restores``.
        """
        found: list[dict[str, Any]] = []

        def ended() -> bool:
            rows = self.api(f"/api/restores?server={server}")
            found[:] = [
                r
                for r in rows
                if r["outcome"] == outcome and (r["restarted"] or not restarted)
            ]
            return bool(found)

        wait_for(ended, timeout=timeout, what=f"a {outcome} restore of {server}")
        return found[0]


@contextmanager
def dashboard(workdir: Path, scenario: str, *, password: str) -> Iterator[Dashboard]:
    """Run the simulator on ``scenario`` (TOML text) and a daemon with ``listen``.

    The daemon's configuration is the one the simulator writes, plus ``listen`` on a
    free loopback port and one server on a closed port (``sklm-gone``, unreachable).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    scenario_file = workdir / "scenario.toml"
    scenario_file.write_text(scenario, encoding="utf-8")
    config = workdir / "watcher.toml"
    truth = workdir / "truth.jsonl"
    with ExitStack() as stack:
        simulator = spawn(
            workdir,
            "simulator",
            "simulate",
            str(scenario_file),
            "--write-config",
            str(config),
            "--state-dir",
            str(workdir / "state"),
            "--ground-truth",
            str(truth),
        )
        stack.callback(simulator.stop)
        wait_for(
            lambda: (
                "ready" in simulator.stdout().splitlines()
                or simulator.popen.poll() is not None
            ),
            timeout=30,
            what="the simulator to print ready",
        )
        assert simulator.popen.poll() is None, simulator.stderr()
        servers: dict[str, str] = {}
        for line in simulator.stdout().splitlines():
            if line.startswith("listening on "):
                url, _, name = line[len("listening on ") :].partition(" name=")
                servers[name.strip()] = url.strip()
        port = free_port()
        text = config.read_text(encoding="utf-8")
        text = text.replace(
            "[watcher]\n", f'[watcher]\nlisten = "127.0.0.1:{port}"\n', 1
        )
        password_file = next(workdir.glob("watcher.password-*"))
        text += (
            "\n[[servers]]\n"
            'name = "sklm-gone"\n'
            f'url = "http://127.0.0.1:{free_port()}"\n'
            'username = "SKLMAdmin"\n'
            f'password_file = "{password_file}"\n'
        )
        config.write_text(text, encoding="utf-8")
        board = Dashboard(workdir, config, truth, simulator, port, servers, password)
        stack.callback(board.stop_all)
        board.start_daemon()
        yield board


@dataclass
class WatchedPage:
    """A page under test and what it did: dialogs it opened, errors it logged."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def goto(self, url: str) -> None:
        """Load ``url`` and wait until the page says its first data is rendered."""
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='true']", state="attached")

    def attrs(self, selector: str, name: str) -> list[str | None]:
        """Attribute ``name`` of every element matching ``selector``, read at once
        (a live page may re-render between one locator call and the next).
        """
        values: list[str | None] = self.page.eval_on_selector_all(
            selector, "(els, name) => els.map(e => e.getAttribute(name))", name
        )
        return values

    def sse_ids(self) -> list[int]:
        """The ``id:`` of every stream message the page received, in order."""
        return [int(i) for i in self.page.evaluate("window.__sse.ids")]

    def sse_data(self) -> list[str]:
        """The ``data:`` of every stream message the page received, in order."""
        data: list[str] = self.page.evaluate("window.__sse.data")
        return data

    def phases(self, server: str) -> list[tuple[str, int]]:
        """Each ``data-phase`` the row of ``server`` showed, with the time (ms epoch)."""
        seen = self.page.evaluate(f"window.__phases[{json.dumps(server)}] || []")
        return [(str(p["phase"]), int(p["at"])) for p in seen]

    def pump(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Wait for a condition outside the page (a file, a process) while the page
        keeps running: Playwright's handlers (routes, events) only run inside its calls.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.page.wait_for_timeout(50)

    def assert_clean(self) -> None:
        """No dialog was opened and nothing was logged as an error (CSP violations,
        script errors, failed loads are all console errors in Chromium).
        """
        assert self.dialogs == []
        assert self.errors == []


@pytest.fixture(scope="module", autouse=True)
def needs_a_browser() -> None:
    """Skip (with the reason) before any simulator or daemon starts for nothing."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Headless Debian Chromium with a fresh profile directory, for one module."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": 1100, "height": 720},
        )
        context.set_default_timeout(DOM_TIMEOUT_MS)
        context.add_init_script(RECORDER_JS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def open_page(browser: BrowserContext) -> Iterator[Callable[[], WatchedPage]]:
    """New pages in the module's browser, recording dialogs and console errors."""
    pages: list[WatchedPage] = []

    def new() -> WatchedPage:
        watched = WatchedPage(browser.new_page())
        page = watched.page

        def on_dialog(dialog: Any) -> None:
            watched.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on(
            "console",
            lambda msg: (
                watched.errors.append(msg.text) if msg.type == "error" else None
            ),
        )
        page.on("pageerror", lambda exc: watched.errors.append(f"pageerror: {exc}"))
        pages.append(watched)
        return watched

    yield new
    for watched in pages:
        watched.page.close()
