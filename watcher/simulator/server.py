"""One simulated SKLM server: its port, its sessions and its answers.

Every simulated server is an ``aiohttp.web`` low-level server on its own port
(``127.0.0.1``, HTTP or HTTPS) speaking SKLM's REST wire format as ``sklm-api.md``
describes it. The wire literals are written here, independently of ``watcher.client``,
so that a parsing bug in the client is not mirrored by the simulator.

Wire behaviour (``<base>`` is the server's ``api_base``, ``/SKLM/rest/v1`` by default):

- ``POST <base>/ckms/login`` ``{"userid", "password"}`` → 200 ``{"UserAuthId": id}``
  (``"userAuthId"`` with ``login_field``); wrong credentials → 401 CTGKM6003E; an empty
  or non-JSON body → 500 plain-text servlet exception.
- Authenticated services need ``Authorization: SKLMAuth userAuthId=<id>``: missing or
  malformed → 400 CTGKM6002E; unknown, idle longer than ``session_idle_timeout``,
  logged out or issued before a restart → 401 CTGKM6004E.
- ``GET <base>/ckms/backupRestore/progress`` and/or ``GET <base>/ckms/restore/progress``
  (``progress_paths``) → ``{"code": "4", "status": "RESTORE_KEYSTORES"}`` (``code`` an
  integer with ``code_as_int``). A progress path the server does not serve answers
  404 with ``missing_progress_answer``: ``"html"`` a servlet container's HTML page
  (the default), ``"ctgkm"`` IBM's ``{"code": "CTGKM6005E", "message": ...}``
  (as a real server was seen to), ``"json"`` JSON without a CTGKM id, ``"empty"``
  no body at all. With ``error_rate``, that fraction of progress answers is a
  fault instead (see ``faults``); ``fault_message`` replaces the text of the JSON
  ones.
- ``GET <base>/ckms/restore/result`` → ``{"code": "-1"|"0"|"1"}``: -1 after a (re)start
  until a restore ends, 0 after a completed one, 1 after a failed one.
- ``GET <base>/ckms/versionInfo`` → ``{"tklm_version": "4.2.1.0"}``.
- ``DELETE <base>/ckms/logout`` ``{"userAuthId": id}`` → 200, the id is invalidated.
- ``POST <base>/ckms/restore`` ``{"backupFilePath": ...}`` runs the server's
  ``on_demand`` script; 409 CTGKM0630E while a restore runs, 400 CTGKM0630E without
  ``backupFilePath`` or without an ``on_demand`` script.
- A wrong method → 405 plain text; an unknown path → 404 HTML. With
  ``error_code_in_message`` every CTGKM error body has only ``message`` (the id at its
  start), no ``code``.
- A restart (after a completed restore, or :meth:`SimulatedServer.restart`): the
  listening socket is closed and open connections are aborted for ``restart_down``
  seconds; then the port listens again but answers 404 (first half) and 500 (second
  half) HTML pages for ``restart_starting`` seconds; then every old session id is
  rejected, the phase is IDLE and ``restore/result`` is -1.

The phase at any instant is computed from ``time.monotonic()`` against the planned
timeline (``planner``), so millisecond phases are exact; timers only write the
ground truth and close / reopen sockets.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import random
import re
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Final

import structlog
from aiohttp import web

from watcher.errors import RestoreRunning
from watcher.phases import Phase
from watcher.simulator.planner import Action, Mode, Planner, Segment
from watcher.simulator.scenario import PROGRESS_PATHS, RestoreScript, ServerSpec

_log = structlog.get_logger(__name__)

# -- wire-format literals (deliberately not shared with watcher.client) -------------

_CTGKM6002E: Final = (
    "CTGKM6002E",
    "Bad Request: Invalid user authentication ID or invalid request format.",
)
_CTGKM6003E: Final = (
    "CTGKM6003E",
    "Authentication Failure: Incorrect userid or password",
)
_CTGKM6004E: Final = (
    "CTGKM6004E",
    "User is not authenticated or has already logged out",
)
_AUTH_RE: Final = re.compile(r"SKLMAuth\s+userAuthId=([^\s,]+)", re.IGNORECASE)
_SERVLET_500: Final = (
    "Error 500: javax.servlet.ServletException: com.fasterxml.jackson.databind."
    "exc.MismatchedInputException: No content to map due to end-of-input"
)
_JSON: Final = "application/json"
_HTML: Final = "text/html"
#: Seconds ``SimulatedServer`` keeps trying to bind its port again after a restart.
_REBIND_PATIENCE: Final = 5.0


def _html_page(status: int, text: str) -> str:
    return (
        f"<!DOCTYPE html><html><head><title>Error {status}</title></head>"
        f"<body><h1>Error {status}: {text}</h1></body></html>"
    )


Handler = Callable[[web.BaseRequest, float, Segment], Awaitable[web.StreamResponse]]


class SimulatedServer:
    """One simulated SKLM server: its HTTP listener, timeline, sessions and counters.

    Counters (for tests): ``requests`` counts ``"METHOD /path"`` (the path relative to
    ``api_base``) of every request that reached the server; ``logins``,
    ``failed_logins``, ``logouts``, ``rejected`` (401 CTGKM6004E answers), ``bad_auth``
    (400 CTGKM6002E answers) and ``faults`` (injected, by kind).
    """

    def __init__(
        self,
        spec: ServerSpec,
        *,
        host: str,
        ssl_context: ssl.SSLContext | None,
        record: Callable[[str, float, Mapping[str, Any]], None],
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.host = host
        self.port = spec.port
        self._ssl = ssl_context
        self._record = record
        self._rng = random.Random(spec.seed)  # noqa: S311 - fault injection, not crypto
        self._sessions: dict[str, float] = {}
        self._runner: web.ServerRunner | None = None
        self._web: web.Server | None = None
        # Until start(): IDLE, as a server whose scripts have not begun.
        self._segments = [
            Segment(-math.inf, math.inf, Mode.IDLE, Phase.IDLE, None, 0, -1, ())
        ]
        self._starts = [-math.inf]
        self._teardowns: set[asyncio.Task[None]] = set()
        self._actions: list[Action] = []
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._closed_count = 0
        self._closed = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.logins = 0
        self.failed_logins = 0
        self.logouts = 0
        self.rejected = 0
        self.bad_auth = 0
        base = spec.api_base
        routes: dict[str, dict[str, Handler]] = {
            "/ckms/login": {"POST": self._login},
            "/ckms/logout": {"DELETE": self._logout},
            "/ckms/restore/result": {"GET": self._result},
            "/ckms/versionInfo": {"GET": self._version},
            "/ckms/restore": {"POST": self._restore},
        }
        for path in PROGRESS_PATHS:
            if path in spec.progress_paths:
                routes[f"/ckms/{path}/progress"] = {"GET": self._progress}
            elif spec.missing_progress_answer != "html":
                # Answered by the REST application (any method, no session
                # needed), not by the servlet container's file-not-found page.
                routes[f"/ckms/{path}/progress"] = dict.fromkeys(
                    ("GET", "POST", "PUT", "DELETE"), self._missing_progress
                )
        self._routes = {base + suffix: methods for suffix, methods in routes.items()}

    # -- public ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Scheme, host and port, e.g. ``http://127.0.0.1:41234``."""
        scheme = "https" if self._ssl else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The REST base URL, e.g. ``http://127.0.0.1:41234/SKLM/rest/v1``."""
        return self.url + self.spec.api_base

    @property
    def listening(self) -> bool:
        """Whether the port accepts connections right now."""
        return self._runner is not None

    @property
    def sessions(self) -> int:
        """How many session ids the server holds (expired ones included until used)."""
        return len(self._sessions)

    def mode(self, now: float | None = None) -> Mode:
        """What the server is doing now (or at monotonic ``now``)."""
        return self._segment_at(time.monotonic() if now is None else now).mode

    def phase(self, now: float | None = None) -> Phase | None:
        """The true phase now (or at monotonic ``now``); None while down or starting."""
        segment = self._segment_at(time.monotonic() if now is None else now)
        if segment.mode in (Mode.DOWN, Mode.STARTING):
            return None
        return segment.phase

    def restore_result(self, now: float | None = None) -> int:
        """What ``restore/result`` answers now: -1, 0 or 1."""
        return self._segment_at(time.monotonic() if now is None else now).result

    def expire_sessions(self) -> None:
        """Forget every session id: the next authenticated request gets CTGKM6004E."""
        self._sessions.clear()

    def start_restore(self, script: RestoreScript | None = None) -> None:
        """Start ``script`` (default: the scenario's ``on_demand``) now.

        Scripted restores not begun yet follow it (their ``idle_before`` counts afresh).

        Raises:
            RestoreRunning: a restore is running, or the server is restarting.
            ValueError: no script given and the scenario has no ``on_demand``.
        """
        script = script or self.spec.on_demand
        if script is None:
            raise ValueError(f"{self.name} has no on_demand restore script")
        now = time.monotonic()
        current = self._segment_at(now)
        if current.mode is not Mode.IDLE:
            raise RestoreRunning(f"{self.name} is {current.mode.value}")
        planner = Planner(
            now, started=current.started, result=current.result, restore=current.restore
        )
        if planner.run(script, current.remaining, wait=False):
            planner.run_all(current.remaining)
        self._replan(now, planner)

    async def restart(self, down: float = 0.5, starting: float = 0.5) -> None:
        """Restart now: closed for ``down`` s, then 404/500 for ``starting`` s, then IDLE.

        A running restore is abandoned (ground truth ``failed``); scripted restores not
        begun yet follow the restart. Returns once the listening socket is closed and
        every connection dropped.
        """
        now = time.monotonic()
        current = self._segment_at(now)
        planner = Planner(
            now, started=current.started, result=current.result, restore=current.restore
        )
        if current.mode is Mode.RESTORING and current.phase is not Phase.COMPLETED:
            planner.truth("failed", phase=current.phase.name, code=int(current.phase))
        planner.restart(down, starting, current.remaining, manual=True)
        planner.run_all(current.remaining)
        closed = self._closed_count
        self._replan(now, planner)
        while self._closed_count == closed:
            await self._closed.wait()

    async def wait_settled(self) -> None:
        """Wait until nothing more is scheduled: IDLE forever or stalled forever."""
        while not self._settled.is_set():
            await self._settled.wait()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, t0: float) -> None:
        """Plan the scripted restores from monotonic ``t0`` (after :meth:`listen`)."""
        planner = Planner(t0, started=0, result=-1, restore=None)
        planner.run_all(self.spec.restores, offset=self.spec.offset)
        self._replan(t0, planner)

    async def listen(self) -> None:
        """Bind the port (the same one again after a restart)."""
        if self._runner is not None:
            return
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=0.01)
        await runner.setup()
        site = web.TCPSite(
            runner, self.host, self.port, ssl_context=self._ssl, reuse_address=True
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner, self._web = runner, server

    async def close(self) -> None:
        """Stop the driver and the listener."""
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        await self._unlisten()
        for task in list(self._teardowns):
            await task

    async def _unlisten(self) -> None:
        runner, server = self._runner, self._web
        self._runner = self._web = None
        if runner is None or server is None:
            return
        # A restarting process drops its connections at once, no graceful close.
        for connection in list(server.connections):
            transport = connection.transport
            if transport is not None:
                transport.abort()
        # Shielded, so that close() cancelling the driver cannot leave a socket open;
        # close() awaits what is still running.
        task = asyncio.ensure_future(runner.cleanup())
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)
        await asyncio.shield(task)

    # -- timeline and driver --------------------------------------------------------------

    def _segment_at(self, now: float) -> Segment:
        index = bisect.bisect_right(self._starts, now) - 1
        return self._segments[max(index, 0)]

    def _replan(self, now: float, planner: Planner) -> None:
        keep = [s for s in self._segments if s.start < now]
        if keep:
            last = keep[-1]
            keep[-1] = replace(last, end=min(last.end, now))
        self._segments = keep + planner.segments
        self._starts = [s.start for s in self._segments]
        # Actions due before the new plan's start but not yet performed still happen.
        self._actions = [a for a in self._actions if a.at < now] + planner.actions
        self._settled.clear()
        self._wake.set()
        if self._driver is None:
            self._driver = asyncio.create_task(
                self._drive(), name=f"simulate {self.name}"
            )

    async def _drive(self) -> None:
        while True:
            if not self._actions:
                self._settled.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            action = self._actions[0]
            delay = action.at - time.monotonic()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            self._actions.pop(0)
            if action.truth is not None:
                self._record(self.name, action.at, action.truth)
            if action.socket == "close":
                self._sessions.clear()
                await self._unlisten()
                self._closed_count += 1
                self._closed.set()
                self._closed = asyncio.Event()
            elif action.socket == "listen":
                await self._relisten()

    async def _relisten(self) -> None:
        deadline = time.monotonic() + _REBIND_PATIENCE
        while True:
            try:
                await self.listen()
            except OSError as exc:
                if time.monotonic() > deadline:
                    _log.error(
                        "simulator.rebind_failed", server=self.name, error=str(exc)
                    )
                    return
                await asyncio.sleep(0.02)
            else:
                return

    # -- HTTP -------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        base = self.spec.api_base
        shown = path[len(base) :] if path.startswith(base + "/") else path
        self.requests[f"{request.method} {shown}"] += 1
        if self.spec.latency:
            await asyncio.sleep(self.spec.latency)
        now = time.monotonic()
        segment = self._segment_at(now)
        if segment.mode is Mode.DOWN:
            # The process is gone: the connection dies without an answer.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if segment.mode is Mode.STARTING:
            return self._starting_page(path, now, segment)
        methods = self._routes.get(path)
        if methods is None:
            return web.Response(
                status=404,
                text=_html_page(404, f"SRVE0190E: File not found: {path}"),
                content_type=_HTML,
            )
        handler = methods.get(request.method)
        if handler is None:
            return web.Response(
                status=405,
                text="Error 405: Method Not Allowed",
                content_type="text/plain",
                headers={"Allow": ", ".join(methods)},
            )
        return await handler(request, now, segment)

    def _starting_page(self, path: str, now: float, segment: Segment) -> web.Response:
        if now < (segment.start + segment.end) / 2:
            text = f"SRVE0255E: A WebGroup/Virtual Host to handle {path} has not been defined."
            return web.Response(
                status=404, text=_html_page(404, text), content_type=_HTML
            )
        text = "SRVE0207E: Uncaught initialization exception created by servlet"
        return web.Response(status=500, text=_html_page(500, text), content_type=_HTML)

    def _json(self, status: int, body: Mapping[str, Any]) -> web.Response:
        return web.Response(
            status=status,
            text=json.dumps(body, separators=(",", ":")),
            content_type=_JSON,
        )

    def _error(self, status: int, error: tuple[str, str]) -> web.Response:
        code, text = error
        body: dict[str, str] = {} if self.spec.error_code_in_message else {"code": code}
        body["message"] = f"{code} {text}"
        return self._json(status, body)

    def _code(self, value: int) -> int | str:
        return value if self.spec.code_as_int else str(value)

    def _authenticate(
        self, request: web.BaseRequest, now: float
    ) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        match = _AUTH_RE.fullmatch(header.strip())
        if match is None:
            self.bad_auth += 1
            return self._error(400, _CTGKM6002E)
        session = match[1]
        last_used = self._sessions.get(session)
        if last_used is None or now - last_used > self.spec.session_idle_timeout:
            self._sessions.pop(session, None)
            self.rejected += 1
            return self._error(401, _CTGKM6004E)
        self._sessions[session] = now
        return None

    async def _json_body(self, request: web.BaseRequest) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    async def _login(
        self, request: web.BaseRequest, now: float, segment: Segment
    ) -> web.StreamResponse:
        body = await self._json_body(request)
        if body is None:
            return web.Response(
                status=500, text=_SERVLET_500, content_type="text/plain"
            )
        if (
            body.get("userid") != self.spec.username
            or body.get("password") != self.spec.password
        ):
            self.failed_logins += 1
            return self._error(401, _CTGKM6003E)
        session = str(uuid.uuid4())
        self._sessions[session] = now
        self.logins += 1
        return self._json(200, {self.spec.login_field: session})

    async def _logout(
        self, request: web.BaseRequest, now: float, segment: Segment
    ) -> web.StreamResponse:
        body = await self._json_body(request) or {}
        session = next(
            (
                v
                for k, v in body.items()
                if k.lower() == "userauthid" and isinstance(v, str)
            ),
            None,
        )
        if session is None:
            match = _AUTH_RE.fullmatch(request.headers.get("Authorization", "").strip())
            session = match[1] if match else None
        if session is None:
            self.bad_auth += 1
            return self._error(400, _CTGKM6002E)
        if self._sessions.pop(session, None) is None:
            self.rejected += 1
            return self._error(401, _CTGKM6004E)
        self.logouts += 1
        return self._json(200, {"message": "User logged out"})

    async def _progress(
        self, request: web.BaseRequest, now: float, segment: Segment
    ) -> web.StreamResponse:
        rejected = self._authenticate(request, now)
        if rejected is not None:
            return rejected
        if self.spec.error_rate and self._rng.random() < self.spec.error_rate:
            return self._fault(segment)
        return self._json(
            200, {"code": self._code(int(segment.phase)), "status": segment.phase.name}
        )

    async def _missing_progress(
        self, request: web.BaseRequest, now: float, segment: Segment
    ) -> web.StreamResponse:
        kind = self.spec.missing_progress_answer
        if kind == "ctgkm":
            return self._error(
                404, ("CTGKM6005E", "The requested resource was not found (simulated).")
            )
        if kind == "json":
            return self._json(404, {"error": "Not Found", "status": 404})
        return web.Response(status=404)

    def _fault(self, segment: Segment) -> web.Response:
        kind = self._rng.choice(self.spec.faults)
        self.faults[kind] += 1
        message = self.spec.fault_message
        if kind == "json_500":
            return self._error(
                500,
                ("CTGKM0999E", message or "An internal error occurred (simulated)."),
            )
        if kind == "json_404":
            return self._error(
                404, ("CTGKM0998E", message or "The request failed (simulated).")
            )
        if kind in ("html_200", "html_500"):
            status = 200 if kind == "html_200" else 500
            page = "<!DOCTYPE html><html><head><title>IBM Security Key Lifecycle Manager</title>"
            page += "</head><body>Session expired. Please log in again.</body></html>"
            return web.Response(status=status, text=page, content_type=_HTML)
        whole = json.dumps(
            {"code": self._code(int(segment.phase)), "status": segment.phase.name},
            separators=(",", ":"),
        )
        cut = self._rng.randrange(1, len(whole) - 1)
        return web.Response(status=200, text=whole[:cut], content_type=_JSON)

    async def _result(
        self, request: web.BaseRequest, now: float, segment: Segment
    ) -> web.StreamResponse:
        rejected = self._authenticate(request, now)
        if rejected is not None:
            return rejected
        return self._json(200, {"code": self._code(segment.result)})

    async def _version(
        self, request: web.BaseRequest, now: float, segment: Segment
    ) -> web.StreamResponse:
        rejected = self._authenticate(request, now)
        if rejected is not None:
            return rejected
        return self._json(200, {"tklm_version": self.spec.tklm_version})

    async def _restore(
        self, request: web.BaseRequest, now: float, segment: Segment
    ) -> web.StreamResponse:
        rejected = self._authenticate(request, now)
        if rejected is not None:
            return rejected
        body = await self._json_body(request)
        if body is None:
            return web.Response(
                status=500, text=_SERVLET_500, content_type="text/plain"
            )
        if (
            not isinstance(body.get("backupFilePath"), str)
            or not body["backupFilePath"]
        ):
            return self._error(
                400, ("CTGKM0630E", "Validation error: backupFilePath is required.")
            )
        if self.spec.on_demand is None:
            return self._error(
                400,
                (
                    "CTGKM0630E",
                    "Validation error: this simulated server has no on_demand restore.",
                ),
            )
        try:
            self.start_restore(self.spec.on_demand)
        except RestoreRunning:
            return self._error(
                409,
                (
                    "CTGKM0630E",
                    "Validation error: a backup or restore is already running.",
                ),
            )
        return self._json(200, {"code": self._code(0), "message": "Restore started"})
