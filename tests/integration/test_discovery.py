"""Progress-path discovery over real sockets (issue 11, "A server that was never polled").

A server that answers only one of the two progress paths, and answers the other
with a 404 of any body (IBM's ``CTGKM6005E``, JSON without an id, an HTML page,
nothing), is found on every poll order; a 404 on both names both paths and both
answers; a path that answered 200 is kept, so a 404 there later is a failure.
Both the built-in simulator and a scripted aiohttp server on 127.0.0.1 serve.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration.conftest import StartSimulator
from watcher import cli
from watcher.client import SklmClient, create_session
from watcher.config import Secret, ServerConfig
from watcher.errors import SklmProtocolError
from watcher.phases import Phase, PollResult
from watcher.simulator import write_watcher_config

pytestmark = pytest.mark.integration

PASSWORD = "discovery-Pa55word"
API = "/SKLM/rest/v1"
RESTORE = f"{API}/ckms/restore/progress"
BACKUP_RESTORE = f"{API}/ckms/backupRestore/progress"
PATH_OF = {"restore": RESTORE, "backupRestore": BACKUP_RESTORE}
OTHER = {"restore": "backupRestore", "backupRestore": "restore"}

#: What the simulator's ``missing_progress_answer`` makes the unserved path say,
#: as the client's detail quotes it.
SIM_WORDS = {
    "ctgkm": "CTGKM6005E The requested resource was not found (simulated).",
    "json": 'JSON {"error":"Not Found","status":404}',
    "empty": "empty body",
}


def sim_html_words(path: str) -> str:
    """The simulator's servlet-container 404 page for ``path``, in words."""
    return f"HTML page: Error 404: SRVE0190E: File not found: {path}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The process session as the daemon builds it."""
    async with create_session([]) as s:
        yield s


def config(url: str, **overrides: Any) -> ServerConfig:
    """A plain-HTTP server config for a local server at ``url``."""
    values: dict[str, Any] = {
        "name": "disc-1",
        "url": url,
        "password": Secret(PASSWORD),
        "timeout": 5.0,
        "allow_insecure_http": True,
    }
    values.update(overrides)
    return ServerConfig(**values)


# -- against the simulator ----------------------------------------------------------


@pytest.mark.parametrize("missing", ["ctgkm", "json", "html", "empty"])
@pytest.mark.parametrize("served", ["backupRestore", "restore"])
async def test_simulator_serving_one_path_is_found(
    simulator: StartSimulator, session, served, missing
) -> None:
    """Whichever path is served and whatever the other's 404 says: found, kept."""
    sim = await simulator(
        {
            "servers": [
                {
                    "name": "disc-1",
                    "password": PASSWORD,
                    "progress_paths": [served],
                    "missing_progress_answer": missing,
                }
            ]
        }
    )
    server = sim.server("disc-1")
    client = SklmClient(config(sim.urls["disc-1"]), session)
    for _ in range(3):
        assert await client.poll_phase() == PollResult(
            Phase.IDLE, False, PATH_OF[served]
        )
    unserved = f"GET /ckms/{OTHER[served]}/progress"
    # restore/progress is tried first: asked once when it is the unserved one.
    assert server.requests[unserved] == (1 if served == "backupRestore" else 0)
    assert server.requests[f"GET /ckms/{served}/progress"] == 3


@pytest.mark.parametrize("missing", ["ctgkm", "json", "empty"])
async def test_simulator_unserved_path_answers_as_configured(
    simulator: StartSimulator, missing
) -> None:
    """The simulator's unserved path answers 404 with the configured body."""
    sim = await simulator(
        {
            "servers": [
                {
                    "name": "disc-1",
                    "password": PASSWORD,
                    "progress_paths": ["backupRestore"],
                    "missing_progress_answer": missing,
                }
            ]
        }
    )
    async with (
        aiohttp.ClientSession() as http,
        http.get(sim.urls["disc-1"] + RESTORE) as resp,
    ):
        body = await resp.read()
    assert resp.status == 404
    if missing == "ctgkm":
        assert json.loads(body) == {
            "code": "CTGKM6005E",
            "message": "CTGKM6005E The requested resource was not found (simulated).",
        }
    elif missing == "json":
        assert json.loads(body) == {"error": "Not Found", "status": 404}
    else:
        assert body == b""


async def test_simulator_rejects_unknown_missing_progress_answer() -> None:
    """A typo in ``missing_progress_answer`` is a scenario problem naming the key."""
    from watcher.simulator import Scenario, ScenarioError

    with pytest.raises(ScenarioError) as info:
        Scenario.from_dict(
            {"servers": [{"name": "x", "missing_progress_answer": "HTML"}]}
        )
    assert info.value.problems == [
        (
            "servers[0].missing_progress_answer",
            "expected one of 'html', 'ctgkm', 'json', 'empty'",
        )
    ]


# -- against a scripted server --------------------------------------------------------

Answer = Callable[[], web.StreamResponse]


def ok(code: int, status: str) -> Answer:
    """A progress answer: 200 with the phase."""
    return lambda: web.json_response({"code": str(code), "status": status})


def not_found(kind: str) -> Answer:
    """A 404 of ``kind``: ctgkm, json, html or empty."""
    if kind == "ctgkm":
        return lambda: web.json_response(
            {"code": "CTGKM6005E", "message": "CTGKM6005E Not found."}, status=404
        )
    if kind == "json":
        return lambda: web.json_response({"error": "Not Found"}, status=404)
    if kind == "html":
        return lambda: web.Response(
            status=404,
            text="<html><head><title>404</title></head><body>"
            "<h1>SRVE0190E: File not found</h1></body></html>",
            content_type="text/html",
        )
    return lambda: web.Response(status=404)


SCRIPTED_WORDS = {
    "ctgkm": "CTGKM6005E Not found.",
    "json": 'JSON {"error": "Not Found"}',
    "html": "HTML page: SRVE0190E: File not found",
    "empty": "empty body",
}


class ScriptedSklm:
    """Login, and per progress path a script of answers (the last repeats)."""

    def __init__(self, scripts: dict[str, list[Answer]]) -> None:
        self.scripts = scripts
        self.sessions: set[str] = set()
        self.seen: list[str] = []

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_post(f"{API}/ckms/login", self._login)
        app.router.add_delete(f"{API}/ckms/logout", self._logout)
        app.router.add_get(f"{API}/ckms/{{service}}/progress", self._progress)
        return app

    async def _login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("password") != PASSWORD:
            return web.json_response({"code": "CTGKM6003E"}, status=401)
        session_id = uuid.uuid4().hex
        self.sessions.add(session_id)
        return web.json_response({"UserAuthId": session_id})

    async def _logout(self, _request: web.Request) -> web.Response:
        return web.json_response({})

    async def _progress(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path)
        header = request.headers.get("Authorization", "")
        if header.removeprefix("SKLMAuth userAuthId=") not in self.sessions:
            return web.json_response({"code": "CTGKM6004E"}, status=401)
        script = self.scripts.get(request.path) or [not_found("html")]
        answer = script.pop(0) if len(script) > 1 else script[0]
        return answer()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[ScriptedSklm], Awaitable[str]]]:
    """Start scripted servers on 127.0.0.1 (port 0); yields a starter returning URLs."""
    runners: list[web.AppRunner] = []

    async def start(fake: ScriptedSklm) -> str:
        runner = web.AppRunner(fake.app())
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("kind", ["ctgkm", "json", "html", "empty"])
async def test_404_of_any_body_on_first_path_finds_second(serve, session, kind) -> None:
    """restore/progress answers a 404 of ``kind``: backupRestore is found and kept."""
    fake = ScriptedSklm(
        {RESTORE: [not_found(kind)], BACKUP_RESTORE: [ok(4, "RESTORE_KEYSTORES")]}
    )
    client = SklmClient(config(await serve(fake)), session)
    for _ in range(2):
        assert await client.poll_phase() == PollResult(
            Phase.RESTORE_KEYSTORES, False, BACKUP_RESTORE
        )
    assert fake.seen == [RESTORE, BACKUP_RESTORE, BACKUP_RESTORE]


@pytest.mark.parametrize("kind", ["ctgkm", "json", "html", "empty"])
async def test_first_path_serving_is_kept_whatever_the_other_says(
    serve, session, kind
) -> None:
    """restore/progress answers: backupRestore (a 404 of ``kind``) is never asked."""
    fake = ScriptedSklm({RESTORE: [ok(0, "IDLE")], BACKUP_RESTORE: [not_found(kind)]})
    client = SklmClient(config(await serve(fake)), session)
    for _ in range(2):
        assert (await client.poll_phase()).path == RESTORE
    assert fake.seen == [RESTORE, RESTORE]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ctgkm", "ctgkm"),
        ("ctgkm", "html"),
        ("html", "ctgkm"),
        ("json", "empty"),
        ("empty", "json"),
        ("html", "html"),
    ],
)
async def test_404_on_both_paths_names_both_and_their_answers(
    serve, session, first, second
) -> None:
    """A 404 on both is a protocol error naming both paths and both answers."""
    fake = ScriptedSklm(
        {RESTORE: [not_found(first)], BACKUP_RESTORE: [not_found(second)]}
    )
    client = SklmClient(config(await serve(fake)), session)
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    error = info.value
    assert error.detail == (
        "HTTP 404 from both progress paths ("
        f"/ckms/restore/progress: {SCRIPTED_WORDS[first]}; "
        f"/ckms/backupRestore/progress: {SCRIPTED_WORDS[second]})"
    )
    assert RESTORE in error.hint
    assert BACKUP_RESTORE in error.hint
    assert str(error).startswith(f"disc-1: {error.detail}; tried {RESTORE} and ")
    # Nothing is remembered: the next poll tries both again.
    with pytest.raises(SklmProtocolError):
        await client.poll_phase()
    assert fake.seen == [RESTORE, BACKUP_RESTORE] * 2


@pytest.mark.parametrize("kind", ["ctgkm", "json", "html", "empty"])
async def test_kept_path_then_404_is_a_real_failure(serve, session, kind) -> None:
    """After a 200, a 404 on that path (a restarting server) fails; no flip back."""
    fake = ScriptedSklm(
        {
            RESTORE: [not_found("ctgkm")],
            BACKUP_RESTORE: [ok(7, "COMPLETED"), not_found(kind), ok(0, "IDLE")],
        }
    )
    client = SklmClient(config(await serve(fake)), session)
    assert (await client.poll_phase()).phase is Phase.COMPLETED
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert info.value.detail == f"HTTP 404 {SCRIPTED_WORDS[kind]}"
    assert f"(polled {BACKUP_RESTORE})" in info.value.hint
    assert await client.poll_phase() == PollResult(Phase.IDLE, False, BACKUP_RESTORE)
    assert fake.seen == [RESTORE, BACKUP_RESTORE, BACKUP_RESTORE, BACKUP_RESTORE]


async def test_ctgkm_500_reason_in_ibms_words(serve, session) -> None:
    """``HTTP 500 CTGKM0001E ...`` over a socket, as the operator reads it."""

    def failure() -> web.StreamResponse:
        return web.json_response(
            {
                "code": "CTGKM0001E",
                "message": "CTGKM0001E Internal server error. See the server log.",
            },
            status=500,
        )

    fake = ScriptedSklm({RESTORE: [failure]})
    client = SklmClient(config(await serve(fake)), session)
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert info.value.detail == (
        "HTTP 500 CTGKM0001E Internal server error. See the server log."
    )


# -- sklm-watcher once ------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [True, False])
async def test_once_polls_a_server_serving_only_backup_restore(
    simulator: StartSimulator, tmp_path: Path, as_json
) -> None:
    """`once` against a simulator serving only /ckms/backupRestore prints the phase.

    The other path answers ``404 CTGKM6005E``, as on the server that was never
    polled. ``sklm-watcher once`` runs as a subprocess while the simulator
    answers on this loop.
    """
    restore = {"phases": [[1, 0.01], [4, 60.0]], "outcome": "stall"}
    sim = await simulator(
        {
            "servers": [
                {
                    "name": "only-backup-restore",
                    "password": PASSWORD,
                    "progress_paths": ["backupRestore"],
                    "missing_progress_answer": "ctgkm",
                    "restores": [restore],
                }
            ]
        }
    )
    server = sim.server("only-backup-restore")
    await server.wait_settled()
    path = tmp_path / "watcher.toml"
    write_watcher_config(sim, path, state_dir=tmp_path / "state")
    argv = ["once", "-c", str(path), *(["--json"] if as_json else [])]
    # A real process: ``main`` configures structlog with cached loggers, which
    # would outlive this test inside the pytest process.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    out = stdout.decode()
    assert proc.returncode == cli.EXIT_OK, (out, stderr.decode())
    if as_json:
        (row,) = json.loads(out)
        assert row["server"] == "only-backup-restore"
        assert row["phase"] == "RESTORE_KEYSTORES"
        assert row["code"] == 4
        assert row["error"] is None
    else:
        (line,) = [ln for ln in out.splitlines() if ln.startswith("only-backup")]
        assert line.split()[1:3] == ["RESTORE_KEYSTORES", "4/7"]
    assert server.requests["GET /ckms/restore/progress"] == 1
    assert server.requests["GET /ckms/backupRestore/progress"] == 1
