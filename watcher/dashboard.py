"""The dashboard's server side: its pages, its assets and its read-only JSON API.

Mounted by :class:`watcher.service.StatusServer` on ``[watcher] listen``:

* pages (static HTML shells the scripts fill): ``/`` (fleet), ``/restores``
  (history), ``/restores/{restore_id}`` (one restore's timeline);
* ``/assets/{name}``: the files of the package directory ``watcher/assets/``;
* the JSON API, the same JSON the CLI prints (built by :mod:`watcher.schema`):
  ``/api/status`` (``status --json``; ``?server=NAME``, repeatable, a name or a
  glob as in ``/api/restores``: only those servers' rows, what the fleet page
  refetches for an event), ``/api/restores`` (``restores --json``),
  ``/api/restores/{restore_id}`` (one restore's phases and events), ``/api/outbox``
  (``outbox --json``);
* ``/api/events/stream``: Server-Sent Events (:mod:`watcher.stream`).

Everything is read-only: nothing here changes state, and only GET (and HEAD) are
routed. The security headers and authentication are the status server's
middlewares, so they cover every path alike.
"""

from __future__ import annotations

import functools
import hashlib
import json
import stat
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final

import anyio
import structlog
from aiohttp import web

from watcher import schema, views
from watcher.errors import JournalError
from watcher.store.base import Store
from watcher.stream import EventStream
from watcher.tracker import ServerState

log = structlog.get_logger(__name__)

DASHBOARD_FAILED: Final = "dashboard.failed"

#: The package directory the assets ship in (included in the wheel).
ASSETS_DIR: Final = Path(__file__).resolve().parent / "assets"

#: Content types of the asset files by suffix; anything else is not served.
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_JSON: Final = "application/json; charset=utf-8"
#: Pages and assets change with the package: revalidate, never use a stale copy.
_NO_CACHE: Final = {"Cache-Control": "no-cache"}
#: API answers are of the moment.
_NO_STORE: Final = {"Cache-Control": "no-store"}
#: Rows of a ``/api/status?server=`` answer built on the event loop (~50 us each);
#: more go to a worker thread, as the whole fleet does.
ON_LOOP_ROWS: Final = 50
#: ``/api/restores``'s ``limit`` when none is given, and its largest value.
DEFAULT_LIMIT: Final = 500
MAX_LIMIT: Final = 10_000


class StatusRenderer:
    """``/api/status``'s body: each server's row JSON kept while its state is unchanged.

    Tracker states are immutable and replaced on every change, so a row's JSON is
    built (by :func:`watcher.schema.status_json`) once per change, not once per
    request; only ``in_phase_for`` and ``as_of``, which move with the clock, are
    filled in per request. 5,000 servers then cost a string join, not 5,000 row
    builds (``/api/status`` goal: < 50 ms server time).
    """

    def __init__(self) -> None:
        # A per-process marker no server string can contain (it cannot be guessed).
        self._mark = f"\x00{uuid.uuid4().hex}"
        self._rows: dict[str, tuple[ServerState, str, str, str]] = {}
        # Two requests may render at once, in two worker threads: one cache.
        self._lock = threading.Lock()

    def render(
        self,
        states: Mapping[str, ServerState],
        at: datetime,
        *,
        complete: bool = True,
    ) -> bytes:
        """The ``status --json`` rows of ``states`` as of ``at`` (compact, HTML-safe).

        Args:
            states: The servers to render, in order.
            at: The instant ``in_phase_for`` and ``as_of`` are measured to.
            complete: ``states`` is the whole fleet: rows kept for servers not in it
                are forgotten (False for a selection: the others stay cached).
        """
        with self._lock:
            return self._render(states, at, complete)

    def _render(
        self, states: Mapping[str, ServerState], at: datetime, complete: bool
    ) -> bytes:
        as_of = json.dumps(schema.format_time(at))
        parts = []
        rows = self._rows
        for name, state in states.items():
            cached = rows.get(name)
            if cached is None or cached[0] is not state:
                cached = rows[name] = (state, *self._pieces(name, state))
            moving = schema.in_phase_for(state.phase_since_at, at)
            # repr of a finite float is its JSON (json.dumps uses float.__repr__).
            seconds = "null" if moving is None else repr(moving)
            parts.append(f"{cached[1]}{seconds}{cached[2]}{as_of}{cached[3]}")
        if complete and len(rows) > len(states):
            for gone in rows.keys() - states.keys():
                del rows[gone]
        return ("[" + ",".join(parts) + "]").encode("utf-8")

    def _pieces(self, name: str, state: ServerState) -> tuple[str, str, str]:
        row = views.status_row(
            name, state, now=_MARK_AT, as_of=_MARK_AT, daemon_running=True
        ).to_json()
        mark_in, mark_as_of = self._mark + "i", self._mark + "a"
        row["in_phase_for"], row["as_of"] = mark_in, mark_as_of
        text = _compact(row)
        head, rest = text.split(_compact(mark_in), 1)
        middle, tail = rest.split(_compact(mark_as_of), 1)
        return head, middle, tail


#: Any instant: the two fields measured from it are replaced.
_MARK_AT: Final = datetime(2000, 1, 1, tzinfo=UTC)


class Dashboard:
    """The dashboard's routes.

    Args:
        states: The fleet's tracker states now, in configuration order (a copy,
            read on the event loop).
        store: The journal the history, restore and outbox views read (None: those
            answer 503).
        stream: The live event stream (None: ``/api/events/stream`` answers 503).
        now: The wall clock (the outbox's ages are measured to it).
        assets: Where the pages and assets are (tests pass their own).
    """

    def __init__(
        self,
        *,
        states: Callable[[], Mapping[str, ServerState]],
        store: Store | None,
        stream: EventStream | None,
        now: Callable[[], datetime],
        assets: Path = ASSETS_DIR,
    ) -> None:
        self._states = states
        self._status = StatusRenderer()
        self._store = store
        self._stream = stream
        self._now = now
        self._assets = assets
        # name -> (mtime_ns, size, body, ETag): pages and assets served from memory,
        # revalidated by one stat (no file open, no thread hop per request).
        self._files: dict[str, tuple[int, int, bytes, str]] = {}

    def add_routes(self, app: web.Application) -> None:
        """Register the pages, assets and API on ``app`` (GET only; HEAD follows)."""
        router = app.router
        router.add_get("/", self._page("index.html"))
        router.add_get("/restores", self._page("restores.html"))
        router.add_get("/restores/{restore_id}", self._page("restore.html"))
        router.add_get("/assets/{name}", self._asset)
        router.add_get("/api/status", self._api_status)
        router.add_get("/api/restores", self._api_restores)
        router.add_get("/api/restores/{restore_id}", self._api_restore)
        router.add_get("/api/outbox", self._api_outbox)
        router.add_get("/api/events/stream", self._api_stream)

    # --- pages and assets -------------------------------------------------------

    def _page(
        self, name: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def page(request: web.Request) -> web.StreamResponse:
            return self._file(request, name)

        return page

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        return self._file(request, request.match_info["name"])

    def _file(self, request: web.Request, name: str) -> web.StreamResponse:
        # One path segment of a known type inside the assets directory: no "..",
        # no hidden files, nothing outside it.
        content_type = CONTENT_TYPES.get(Path(name).suffix.lower())
        if content_type is None or "/" in name or name.startswith("."):
            return _error(404, "no such asset")
        found = self._read(name)
        if found is None:
            return _error(404, "no such asset")
        body, etag = found
        headers = {"Content-Type": content_type, "ETag": etag, **_NO_CACHE}
        # no-cache: the browser revalidates each load; an unchanged file is a 304.
        if etag in _etags(request.headers.get("If-None-Match")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers)

    def _read(self, name: str) -> tuple[bytes, str] | None:
        """The file's bytes and ETag, read again only when it changed on disk."""
        path = self._assets / name
        try:
            info = path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        cached = self._files.get(name)
        if cached is not None and cached[:2] == (info.st_mtime_ns, info.st_size):
            return cached[2], cached[3]
        try:
            body = path.read_bytes()
        except OSError:
            return None
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        self._files[name] = (info.st_mtime_ns, info.st_size, body, etag)
        return body, etag

    # --- the JSON API -----------------------------------------------------------

    async def _api_status(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        states, at = self._states(), self._now()
        wanted = request.query.getall("server", [])
        if not wanted:
            body = await anyio.to_thread.run_sync(self._status.render, states, at)
        else:
            chosen = _select(states, wanted)
            if len(chosen) <= ON_LOOP_ROWS:
                # The page's per-event fetch: a few rows, built here (no thread
                # hop, no wait for the cache's lock) on its path to the screen.
                body = _rows_now(chosen, at)
            else:
                body = await anyio.to_thread.run_sync(
                    functools.partial(self._status.render, chosen, at, complete=False)
                )
        # The server's own time, for the benchmark and browser devtools.
        took = (time.perf_counter() - started) * 1000
        headers = {
            "Content-Type": _JSON,
            "Server-Timing": f"app;dur={took:.1f}",
            **_NO_STORE,
        }
        return web.Response(body=body, headers=headers)

    async def _api_restores(self, request: web.Request) -> web.Response:
        store = self._store
        if store is None:
            return _error(503, "no journal")
        query = request.query
        server, outcome = query.get("server") or None, query.get("outcome") or None
        try:
            limit = int(query.get("limit") or DEFAULT_LIMIT)
        except ValueError:
            return _error(400, "limit must be a whole number")
        if not 1 <= limit <= MAX_LIMIT:
            return _error(400, f"limit must be between 1 and {MAX_LIMIT}")
        try:
            rows = await store.call(views.restores, store)
        except JournalError as exc:
            return _journal_error(request, exc)
        if server is not None:
            rows = [r for r in rows if fnmatchcase(r.server, server)]
        if outcome is not None:
            rows = [r for r in rows if str(r.outcome) == outcome]
        # The newest ``limit`` restores, in the CLI's order (oldest first).
        return await _json([r.to_json() for r in rows[-limit:]])

    async def _api_restore(self, request: web.Request) -> web.Response:
        store = self._store
        if store is None:
            return _error(503, "no journal")
        restore_id = request.match_info["restore_id"]
        try:
            detail = await store.call(views.restore_detail, store, restore_id)
        except JournalError as exc:
            return _journal_error(request, exc)
        if detail is None:
            return _error(404, "no restore with this id")
        return await _json(detail.to_json())

    async def _api_outbox(self, request: web.Request) -> web.Response:
        store = self._store
        if store is None:
            return _error(503, "no journal")
        with_dead = request.query.get("dead") in ("1", "true", "yes")
        try:
            summary = await store.call(store.outbox_summary, self._now())
            dead = await store.call(store.dead_rows) if with_dead else []
        except JournalError as exc:
            return _journal_error(request, exc)
        return await _json(schema.outbox_json(summary, dead))

    async def _api_stream(self, request: web.Request) -> web.StreamResponse:
        stream = self._stream
        if stream is None:
            return _error(503, "no event stream")
        if request.method == "HEAD":
            # What a GET would start with, without holding the connection open.
            return web.Response(
                headers={
                    "Content-Type": "text/event-stream; charset=utf-8",
                    **_NO_STORE,
                }
            )
        raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        after: int | None = None
        if raw:
            try:
                after = max(0, int(raw))
            except ValueError:
                return _error(400, "Last-Event-ID must be an auditseq (a number)")
        return await stream.serve(request, after=after)


def _select(
    states: Mapping[str, ServerState], wanted: list[str]
) -> dict[str, ServerState]:
    """The servers named by ``wanted`` (names, or globs matched in the fleet's order)."""
    exact = {name for name in wanted if name in states}
    globs = [p for p in wanted if p not in exact and any(c in p for c in "*?[")]
    if not globs:
        # The page's case: a few exact names, no scan of the fleet.
        return {name: states[name] for name in wanted if name in exact}
    return {
        name: state
        for name, state in states.items()
        if name in exact or any(fnmatchcase(name, p) for p in globs)
    }


def _rows_now(states: Mapping[str, ServerState], at: datetime) -> bytes:
    """``status --json`` rows of a few servers as of ``at``, without the cache."""
    rows = (
        _compact(
            views.status_row(
                name, state, now=at, as_of=at, daemon_running=True
            ).to_json()
        )
        for name, state in states.items()
    )
    return ("[" + ",".join(rows) + "]").encode("utf-8")


def _etags(header: str | None) -> set[str]:
    """The entity tags of an ``If-None-Match`` header (weak ones compare equal)."""
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


async def _json(document: Any) -> web.Response:
    # O(servers): rendered in a worker thread so a large fleet does not stall polls.
    body = await anyio.to_thread.run_sync(_dump, document)
    return web.Response(body=body, headers={"Content-Type": _JSON, **_NO_STORE})


#: HTML-significant characters, escaped in every JSON answer (they occur only
#: inside strings, so the values are the CLI's exactly): a hostile error message
#: stays inert even for a client that ignores the content type.
_HTML_SAFE: Final = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _dump(document: Any) -> bytes:
    return _compact(document).encode("utf-8")


def _compact(document: Any) -> str:
    # The CLI's values, compact: ``indent`` would force json's pure-Python encoder
    # (10x slower on a large fleet). ASCII escapes as ``--json`` prints; the page
    # inserts every string as text (textContent), never as markup.
    return json.dumps(document, separators=(",", ":")).translate(_HTML_SAFE)


def _error(status: int, message: str) -> web.Response:
    body = json.dumps({"error": message}).encode("utf-8")
    return web.Response(
        status=status, body=body, headers={"Content-Type": _JSON, **_NO_STORE}
    )


def _journal_error(request: web.Request, exc: JournalError) -> web.Response:
    log.warning(DASHBOARD_FAILED, path=request.path, error=exc.detail)
    return _error(503, "the journal cannot be read; see the daemon's log")
