"""The SKLM simulator over real sockets, exercised with a real aiohttp client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import stat
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from watcher.configfile import load_config
from watcher.phases import Phase
from watcher.simulator import (
    RestoreRunning,
    RestoreScript,
    Simulator,
    write_watcher_config,
)

pytestmark = pytest.mark.integration

API = "/SKLM/rest/v1"
PASSWORD = "sim-Pa55word"
REPO = Path(__file__).resolve().parents[2]

CTGKM6002E = (
    "CTGKM6002E Bad Request: Invalid user authentication ID or invalid request format."
)
CTGKM6003E = "CTGKM6003E Authentication Failure: Incorrect userid or password"
CTGKM6004E = "CTGKM6004E User is not authenticated or has already logged out"


def one_server(**server: Any) -> dict[str, Any]:
    """A scenario dict with one server called ``s`` and the test password."""
    return {"servers": [{"name": "s", "password": PASSWORD, **server}]}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    session_id: str | None = None,
    **kwargs: Any,
) -> tuple[int, str, str]:
    """One request; returns (status, content type, body text)."""
    headers = {"Accept": "application/json"}
    if session_id is not None:
        headers["Authorization"] = f"SKLMAuth userAuthId={session_id}"
    async with http.request(method, url, headers=headers, **kwargs) as response:
        return response.status, response.content_type, await response.text()


async def login(
    http: aiohttp.ClientSession, base: str, *, field: str = "UserAuthId"
) -> str:
    """Log in as SKLMAdmin and return the session id."""
    status, _, text = await call(
        http,
        "POST",
        f"{base}{API}/ckms/login",
        json={"userid": "SKLMAdmin", "password": PASSWORD},
    )
    assert status == 200, text
    session_id: str = json.loads(text)[field]
    return session_id


async def progress(
    http: aiohttp.ClientSession, base: str, session_id: str, path: str = "restore"
) -> tuple[int, Any]:
    """GET a progress path; returns (status, parsed JSON)."""
    status, _, text = await call(
        http, "GET", f"{base}{API}/ckms/{path}/progress", session_id=session_id
    )
    return status, json.loads(text)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 5.0, what: str
) -> None:
    """Poll ``check`` until it holds, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


async def truth(sim: Simulator, kind: str, **fields: Any) -> dict[str, Any]:
    """The ground-truth line of ``kind`` (waiting for it, at most 5 s)."""
    async with asyncio.timeout(5):
        return await sim.wait_truth(kind, **fields)


def at(line: dict[str, Any]) -> datetime:
    """The ``at`` of a ground-truth line as a datetime."""
    return datetime.fromisoformat(line["at"])


@pytest.mark.parametrize("field", ["UserAuthId", "userAuthId"])
async def test_login_answers_with_the_configured_field(simulator, http, field) -> None:
    """Login returns the session id under the server's spelling of the field."""
    sim = await simulator(one_server(login_field=field))
    base = sim.urls["s"]
    session_id = await login(http, base, field=field)
    assert await progress(http, base, session_id) == (
        200,
        {"code": "0", "status": "IDLE"},
    )
    assert sim.server("s").logins == 1


async def test_bad_logins_are_refused(simulator, http) -> None:
    """Wrong credentials get 401 CTGKM6003E; an empty body a plain-text 500."""
    sim = await simulator(one_server())
    url = f"{sim.urls['s']}{API}/ckms/login"
    wrong = {"userid": "SKLMAdmin", "password": "nope"}
    status, ctype, text = await call(http, "POST", url, json=wrong)
    assert (status, ctype) == (401, "application/json")
    assert json.loads(text) == {"code": "CTGKM6003E", "message": CTGKM6003E}
    status, ctype, _ = await call(http, "POST", url)
    assert (status, ctype) == (500, "text/plain")
    assert sim.server("s").failed_logins == 1


@pytest.mark.parametrize("in_message", [False, True])
async def test_authenticated_services_check_the_header(
    simulator, http, in_message
) -> None:
    """Missing or malformed headers get 400 CTGKM6002E, unknown ids 401 CTGKM6004E."""
    sim = await simulator(one_server(error_code_in_message=in_message))
    url = f"{sim.urls['s']}{API}/ckms/restore/progress"

    def body(message: str) -> dict[str, str]:
        if in_message:
            return {"message": message}
        return {"code": message.split()[0], "message": message}

    status, _, text = await call(http, "GET", url)
    assert (status, json.loads(text)) == (400, body(CTGKM6002E))
    async with http.get(url, headers={"Authorization": "Bearer x"}) as response:
        assert (response.status, await response.json()) == (400, body(CTGKM6002E))
    status, _, text = await call(http, "GET", url, session_id="not-a-session")
    assert (status, json.loads(text)) == (401, body(CTGKM6004E))
    server = sim.server("s")
    assert (server.bad_auth, server.rejected) == (2, 1)


async def test_progress_paths_and_code_types(simulator, http) -> None:
    """Each server answers on its progress paths; the others are non-JSON 404s."""
    sim = await simulator(
        {
            "defaults": {"password": PASSWORD},
            "servers": [
                {"name": "both"},
                {"name": "legacy", "progress_paths": ["restore"], "code_as_int": True},
                {"name": "new", "progress_paths": ["backupRestore"]},
            ],
        }
    )
    idle_str = {"code": "0", "status": "IDLE"}
    both = sim.urls["both"]
    both_id = await login(http, both)
    assert await progress(http, both, both_id, "restore") == (200, idle_str)
    assert await progress(http, both, both_id, "backupRestore") == (200, idle_str)

    legacy = sim.urls["legacy"]
    legacy_id = await login(http, legacy)
    assert await progress(http, legacy, legacy_id, "restore") == (
        200,
        {"code": 0, "status": "IDLE"},
    )
    url = f"{legacy}{API}/ckms/backupRestore/progress"
    status, ctype, text = await call(http, "GET", url, session_id=legacy_id)
    assert (status, ctype) == (404, "text/html")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)

    new = sim.urls["new"]
    new_id = await login(http, new)
    assert await progress(http, new, new_id, "backupRestore") == (200, idle_str)
    status, ctype, _ = await call(
        http, "GET", f"{new}{API}/ckms/restore/progress", session_id=new_id
    )
    assert (status, ctype) == (404, "text/html")


async def test_wrong_method_version_and_unknown_path(simulator, http) -> None:
    """A wrong method is a 405 without JSON; versionInfo names the version."""
    sim = await simulator(one_server(tklm_version="4.1.1.0"))
    base = sim.urls["s"]
    session_id = await login(http, base)
    status, ctype, _ = await call(http, "POST", f"{base}{API}/ckms/restore/progress")
    assert (status, ctype) == (405, "text/plain")
    status, _, text = await call(
        http, "GET", f"{base}{API}/ckms/versionInfo", session_id=session_id
    )
    assert (status, json.loads(text)) == (200, {"tklm_version": "4.1.1.0"})
    status, ctype, _ = await call(http, "GET", f"{base}/nowhere")
    assert (status, ctype) == (404, "text/html")
    assert sim.server("s").requests == Counter(
        {
            "POST /ckms/login": 1,
            "POST /ckms/restore/progress": 1,
            "GET /ckms/versionInfo": 1,
            "GET /nowhere": 1,
        }
    )


async def test_scripted_phases_follow_the_clock(simulator, http) -> None:
    """Every poll sees the phase the script puts at that instant, to the millisecond."""
    script: list[tuple[int, float]] = [
        (1, 0.12),
        (2, 0.003),
        (3, 0.002),
        (4, 0.12),
        (6, 0.004),
        (7, 0.12),
    ]
    sim = await simulator(
        one_server(
            restores=[
                {
                    "idle_before": 0.05,
                    "phases": [list(step) for step in script],
                    "restart_down": 0.1,
                    "restart_starting": 0.1,
                }
            ]
        )
    )
    boundaries: list[tuple[float, Phase]] = [(sim.started_at, Phase.IDLE)]
    t = sim.started_at + 0.05
    for code, seconds in script:
        boundaries.append((t, Phase(code)))
        t += seconds

    def expected(now: float) -> Phase:
        return [phase for start, phase in boundaries if start <= now][-1]

    base = sim.urls["s"]
    session_id = await login(http, base)
    seen: list[Phase] = []
    while (before := time.monotonic()) < t - 0.01:
        status, body = await progress(http, base, session_id)
        after = time.monotonic()
        assert status == 200
        phase = Phase(int(body["code"]))
        assert Phase.from_status(body["status"]) is phase
        assert expected(before) <= phase <= expected(after), (before, after, body)
        if not seen or seen[-1] is not phase:
            seen.append(phase)
    assert seen[0] is Phase.IDLE
    for long_phase in (Phase.INITIALIZE, Phase.RESTORE_KEYSTORES, Phase.COMPLETED):
        assert long_phase in seen

    lines = [line for line in sim.truth if line["kind"] == "phase"]
    assert [line["code"] for line in lines] == [code for code, _ in script]
    for line, following, (_, seconds) in zip(lines, lines[1:], script, strict=False):
        gap = (at(following) - at(line)).total_seconds()
        assert gap == pytest.approx(seconds, abs=0.0011)


async def test_session_idle_timeout_logout_and_expiry(simulator, http) -> None:
    """An id unused for session_idle_timeout, logged out or expired gets CTGKM6004E."""
    # Polls 0.1 s apart against a 1 s timeout: a 10x margin, so a loaded machine
    # does not expire the session by accident (0.3 s once left only 3x).
    sim = await simulator(one_server(session_idle_timeout=1.0))
    base = sim.urls["s"]
    server = sim.server("s")
    session_id = await login(http, base)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # polling keeps it alive past the timeout
        assert (await progress(http, base, session_id))[0] == 200
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.05)  # the server reads this much elapsed time; not a race
    assert await progress(http, base, session_id) == (
        401,
        {"code": "CTGKM6004E", "message": CTGKM6004E},
    )

    session_id = await login(http, base)
    server.expire_sessions()
    assert (await progress(http, base, session_id))[0] == 401

    session_id = await login(http, base)
    logout = f"{base}{API}/ckms/logout"
    status, _, _ = await call(http, "DELETE", logout, json={"userAuthId": session_id})
    assert status == 200
    assert (await progress(http, base, session_id))[0] == 401
    status, _, _ = await call(http, "DELETE", logout, json={"userAuthId": session_id})
    assert status == 401
    assert server.logouts == 1


async def test_restart_after_a_completed_restore(simulator, http) -> None:
    """After COMPLETED: refused, then 404 and 500 pages, then IDLE with old ids dead."""
    sim = await simulator(
        one_server(
            restores=[
                {
                    "idle_before": 0.05,
                    "phases": [[1, 0.05], [7, 0.1]],
                    "restart_down": 0.3,
                    "restart_starting": 0.4,
                }
            ]
        )
    )
    base = sim.urls["s"]
    server = sim.server("s")
    session_id = await login(http, base)
    assert (await progress(http, base, session_id))[0] == 200  # a kept-alive connection
    await truth(sim, "restart_begin")
    with pytest.raises(aiohttp.ClientError):
        await progress(http, base, session_id)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)
    assert server.phase() is None

    statuses: list[int] = []

    async def answering_again() -> bool:
        try:
            status, ctype, _ = await call(
                http,
                "GET",
                f"{base}{API}/ckms/restore/progress",
                session_id=session_id,
            )
        except aiohttp.ClientError:
            return False
        if status == 401:
            return True
        assert ctype == "text/html"
        statuses.append(status)
        return False

    await eventually(answering_again, what="the restarted server to answer")
    assert sorted(set(statuses)) == [404, 500]
    assert statuses == sorted(statuses)  # 404s while starting, then 500s
    await truth(sim, "restart_end")
    session_id = await login(http, base)
    assert await progress(http, base, session_id) == (
        200,
        {"code": "0", "status": "IDLE"},
    )
    url = f"{base}{API}/ckms/restore/result"
    status, _, text = await call(http, "GET", url, session_id=session_id)
    assert (status, json.loads(text)) == (200, {"code": "-1"})


async def test_manual_restart_closes_the_port_at_once(simulator, http) -> None:
    """restart() returns with the port closed; it listens again on the same port."""
    sim = await simulator(one_server())
    base = sim.urls["s"]
    server = sim.server("s")
    old_id = await login(http, base)
    port = server.port
    await server.restart(down=0.2, starting=0.05)
    assert not server.listening
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    await truth(sim, "restart_end")
    assert server.port == port
    new_id = await login(http, base)
    assert (await progress(http, base, old_id))[0] == 401
    assert await progress(http, base, new_id) == (200, {"code": "0", "status": "IDLE"})
    begin = sim.truth[0]
    assert (begin["kind"], begin["manual"], begin["restore"]) == (
        "restart_begin",
        True,
        None,
    )


async def test_restore_result_values(simulator, http) -> None:
    """restore/result is -1 at start and after a restart, 0 after success, 1 after failure."""
    sim = await simulator(
        {
            "defaults": {"password": PASSWORD, "code_as_int": True},
            "servers": [
                {
                    "name": "ok",
                    "restores": [
                        {
                            "idle_before": 0.05,
                            "phases": [[1, 0.05], [7, 0.3]],
                            "restart_down": 0.05,
                            "restart_starting": 0.05,
                        }
                    ],
                },
                {
                    "name": "bad",
                    "restores": [
                        {
                            "idle_before": 0.05,
                            "phases": [[1, 0.05], [4, 0.05]],
                            "outcome": "fail",
                        }
                    ],
                },
            ],
        }
    )
    ids = {name: await login(http, url) for name, url in sim.urls.items()}

    async def result(name: str) -> int:
        url = f"{sim.urls[name]}{API}/ckms/restore/result"
        status, _, text = await call(http, "GET", url, session_id=ids[name])
        assert status == 200
        code: int = json.loads(text)["code"]
        return code

    assert (await result("ok"), await result("bad")) == (-1, -1)
    await truth(sim, "failed", server="bad")
    assert await result("bad") == 1
    assert await progress(http, sim.urls["bad"], ids["bad"]) == (
        200,
        {"code": 0, "status": "IDLE"},
    )
    await truth(sim, "completed", server="ok")
    assert await result("ok") == 0
    await truth(sim, "restart_end", server="ok")
    ids["ok"] = await login(http, sim.urls["ok"])
    assert await result("ok") == -1


async def test_ground_truth_lines(simulator, tmp_path) -> None:
    """Every transition is a flushed JSON line: phases, outcome and restart, in order."""
    path = tmp_path / "truth.jsonl"
    quick = {"idle_before": 0.02, "restart_down": 0.05, "restart_starting": 0.05}
    sim = await simulator(
        {
            "defaults": {"password": PASSWORD},
            "servers": [
                {
                    "name": "ok",
                    "restores": [{**quick, "phases": [[1, 0.02], [7, 0.02]]}],
                },
                {
                    "name": "bad",
                    "restores": [
                        {"idle_before": 0.02, "phases": [[2, 0.02]], "outcome": "fail"}
                    ],
                },
                {
                    "name": "stuck",
                    "restores": [
                        {
                            "idle_before": 0.02,
                            "phases": [[1, 0.02], [3]],
                            "outcome": "stall",
                        }
                    ],
                },
                {"name": "idle"},
            ],
        },
        ground_truth=path,
    )
    async with asyncio.timeout(5):
        await sim.wait_settled()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == sim.truth

    def kinds(server: str) -> list[tuple[str, str | None]]:
        return [(x["kind"], x.get("phase")) for x in lines if x["server"] == server]

    assert kinds("ok") == [
        ("phase", "INITIALIZE"),
        ("phase", "COMPLETED"),
        ("completed", "COMPLETED"),
        ("restart_begin", None),
        ("restart_end", None),
    ]
    assert kinds("bad") == [("phase", "CREATE_TEMP_DIR"), ("failed", "CREATE_TEMP_DIR")]
    assert kinds("stuck") == [
        ("phase", "INITIALIZE"),
        ("phase", "RESTORE_CONFIG_FILES"),
        ("stalled", "RESTORE_CONFIG_FILES"),
    ]
    assert kinds("idle") == []
    assert {x["restore"] for x in lines} == {0}
    assert all(x["at"].endswith("Z") and len(x["at"]) == 24 for x in lines)
    for server in ("ok", "bad", "stuck"):
        times = [at(x) for x in lines if x["server"] == server]
        assert times == sorted(times)
    assert sim.server("stuck").phase() is Phase.RESTORE_CONFIG_FILES


async def test_https_with_the_ca_file(simulator, http, ca_file) -> None:
    """Over HTTPS the CA file is trusted and the default trust store is not."""
    sim = await simulator(one_server(), tls=True)
    base = sim.urls["s"]
    assert base.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(ca_file))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=trusting)
    ) as secure:
        session_id = await login(secure, base)
        assert (await progress(secure, base, session_id))[0] == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await login(http, base)


async def test_error_rate_injects_every_fault_kind(simulator, http) -> None:
    """With error_rate = 1 every progress answer is one of the configured faults."""
    kinds = ["json_500", "json_404", "html_200", "html_500", "truncated"]
    sim = await simulator(one_server(error_rate=1.0, faults=kinds, seed=7))
    base = sim.urls["s"]
    session_id = await login(http, base)
    seen: Counter[str] = Counter()
    url = f"{base}{API}/ckms/restore/progress"
    for _ in range(60):
        status, ctype, text = await call(http, "GET", url, session_id=session_id)
        if ctype == "text/html":
            seen[f"html_{status}"] += 1
        elif status == 200:
            with pytest.raises(json.JSONDecodeError):
                json.loads(text)
            seen["truncated"] += 1
        else:
            assert json.loads(text)["code"].startswith("CTGKM")
            seen[f"json_{status}"] += 1
    assert seen == sim.server("s").faults
    assert set(seen) == set(kinds)


async def test_on_demand_restore(simulator, http) -> None:
    """POST /ckms/restore runs the on_demand script; a second one is refused."""
    sim = await simulator(
        {
            "defaults": {"password": PASSWORD},
            "servers": [
                {
                    "name": "s",
                    "on_demand": {"phases": [[1, 0.3], [4]], "outcome": "stall"},
                },
                {"name": "plain"},
            ],
        }
    )
    base = sim.urls["s"]
    session_id = await login(http, base)
    url = f"{base}{API}/ckms/restore"
    backup = {"backupFilePath": "/opt/backups/sklm_backup.jar", "password": "x"}
    status, _, text = await call(http, "POST", url, session_id=session_id, json={})
    assert (status, json.loads(text)["code"]) == (400, "CTGKM0630E")
    status, _, _ = await call(http, "POST", url, session_id=session_id, json=backup)
    assert status == 200
    assert await progress(http, base, session_id) == (
        200,
        {"code": "1", "status": "INITIALIZE"},
    )
    status, _, text = await call(http, "POST", url, session_id=session_id, json=backup)
    assert (status, json.loads(text)["code"]) == (409, "CTGKM0630E")
    with pytest.raises(RestoreRunning):
        sim.server("s").start_restore(RestoreScript(phases=((Phase.INITIALIZE, 1.0),)))
    line = await truth(sim, "stalled", server="s")
    assert (line["phase"], line["restore"]) == ("RESTORE_KEYSTORES", 0)

    plain = sim.urls["plain"]
    plain_id = await login(http, plain)
    status, _, _ = await call(
        http, "POST", f"{plain}{API}/ckms/restore", session_id=plain_id, json=backup
    )
    assert status == 400


async def test_latency_delays_every_answer(simulator, http) -> None:
    """A server with latency answers no sooner than that."""
    sim = await simulator(one_server(latency=0.1))
    started = time.monotonic()
    await login(http, sim.urls["s"])
    assert time.monotonic() - started >= 0.1


async def test_written_config_loads(simulator, tmp_path, ca_file) -> None:
    """--write-config output passes load_config, with 0600 password files."""
    sim = await simulator(
        {
            "watcher_defaults": {"stall_after": 5.0},
            "defaults": {"password": PASSWORD},
            "servers": [
                {"name": "a", "watcher_progress_path": "restore"},
                {"name": "b", "watcher_password": "wrong-one"},
                {"name": "c", "api_base": "/GKLM/rest/v1"},
            ],
        },
        tls=True,
    )
    path = tmp_path / "conf" / "watcher.toml"
    write_watcher_config(sim, path, state_dir=tmp_path / "state", ca_file=ca_file)
    config = load_config(path, environ={})
    servers = {s.name: s for s in config.servers}
    assert {name: s.url for name, s in servers.items()} == sim.urls
    assert servers["a"].password.reveal() == PASSWORD
    assert servers["b"].password.reveal() == "wrong-one"
    assert servers["a"].progress_path == f"{API}/ckms/restore/progress"
    assert servers["b"].progress_path is None
    assert servers["c"].api_base == "/GKLM/rest/v1"
    assert servers["a"].ca_file == ca_file.resolve()
    assert (servers["a"].stall_after, servers["a"].idle_interval) == (5.0, 1.0)
    assert config.watcher.state_dir == (tmp_path / "state").resolve()
    secrets = sorted(path.parent.glob("watcher.password-*"))
    assert len(secrets) == 2
    for secret in secrets:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert PASSWORD not in path.read_text()


async def test_simulate_command(tmp_path) -> None:
    """`sklm-watcher simulate` prints listening lines and ready, and exits 0 on SIGTERM."""
    config = tmp_path / "watcher.toml"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        "simulate",
        str(REPO / "watcher" / "scenarios" / "basic.toml"),
        "--tls",
        "--write-config",
        str(config),
        "--state-dir",
        str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not lines or lines[-1] != "ready":
                line = await process.stdout.readline()
                assert line, "the simulator exited before ready"
                lines.append(line.decode().rstrip("\n"))
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert lines[0].startswith("listening on https://127.0.0.1:")
    assert lines[0].endswith(" name=sklm-1")
    ca_line = next(line for line in lines if line.startswith("ca-file "))
    ca_pem = await anyio.Path(ca_line.removeprefix("ca-file ")).read_text()
    assert ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert f"config {config}" in lines
    assert "basic-password" not in "\n".join(lines) + stderr.decode()
    assert load_config(config, environ={}).servers[0].name == "sklm-1"
