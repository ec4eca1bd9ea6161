"""SklmClient over real sockets: a tiny SKLM stand-in on 127.0.0.1, real TLS (trustme)."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from watcher import client as client_module
from watcher.client import MAX_BODY_BYTES, SklmClient, create_session
from watcher.config import Secret, ServerConfig
from watcher.errors import (
    SklmAuthError,
    SklmProtocolError,
    SklmTlsError,
    SklmUnreachable,
)
from watcher.phases import Phase, PollResult
from watcher.simulator import Simulator

pytestmark = pytest.mark.integration

PASSWORD = "integration-Pa55word"
API = "/SKLM/rest/v1"
RESTORE = f"{API}/ckms/restore/progress"
BACKUP_RESTORE = f"{API}/ckms/backupRestore/progress"


@dataclass
class FakeSklm:
    """A minimal SKLM: login, progress on chosen paths, result, logout; records calls."""

    progress_paths: tuple[str, ...] = (RESTORE,)
    phase: tuple[Any, str] = ("4", "RESTORE_KEYSTORES")
    sessions: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    logins: int = 0
    peers: list[Any] = field(default_factory=list)
    #: Replace the progress handler's answer (oversized bodies, redirects, stalls).
    progress_override: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = (
        None
    )

    def expire_sessions(self) -> None:
        """Forget every session id, as a restart or an idle timeout does."""
        self.sessions.clear()

    def app(self) -> web.Application:
        """The aiohttp application serving this fake."""
        app = web.Application()
        app.router.add_post(f"{API}/ckms/login", self._login)
        app.router.add_delete(f"{API}/ckms/logout", self._logout)
        app.router.add_get(f"{API}/ckms/restore/result", self._result)
        for path in self.progress_paths:
            app.router.add_get(path, self._progress)
        app.middlewares.append(self._record)
        return app

    @web.middleware
    async def _record(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        if request.transport is not None:
            self.peers.append(request.transport.get_extra_info("peername"))
        return await handler(request)

    async def _login(self, request: web.Request) -> web.Response:
        self.logins += 1
        body = await request.json()
        if body != {"userid": "SKLMAdmin", "password": PASSWORD}:
            return web.json_response(
                {
                    "code": "CTGKM6003E",
                    "message": "CTGKM6003E Authentication Failure: Incorrect userid "
                    "or password",
                },
                status=401,
            )
        session_id = uuid.uuid4().hex
        self.sessions.add(session_id)
        return web.json_response({"UserAuthId": session_id})

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        prefix = "SKLMAuth userAuthId="
        return header.startswith(prefix) and header[len(prefix) :] in self.sessions

    @staticmethod
    def _expired() -> web.Response:
        return web.json_response(
            {
                "code": "CTGKM6004E",
                "message": "CTGKM6004E User is not authenticated or has already "
                "logged out",
            },
            status=401,
        )

    async def _progress(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._expired()
        if self.progress_override is not None:
            return await self.progress_override(request)
        code, status = self.phase
        return web.json_response({"code": code, "status": status})

    async def _result(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._expired()
        return web.json_response({"code": "0"})

    async def _logout(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not self._authorized(request):
            return self._expired()
        self.sessions.discard(body.get("userAuthId"))
        return web.json_response({})


Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start aiohttp apps on 127.0.0.1 port 0; yields a starter returning the URL."""
    runners: list[web.AppRunner] = []

    async def start(
        app: web.Application, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        host, port = runner.addresses[0][:2]
        scheme = "https" if ssl_context else "http"
        return f"{scheme}://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def other_ca_file(tmp_path: Path) -> Path:
    """A PEM file of an unrelated CA."""
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The process session as the daemon builds it."""
    async with create_session([]) as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_system_context() -> None:
    """Rebuild the system-store context per test, so the environment test is honest."""
    client_module._system_context.cache_clear()


def config(url: str, **overrides: Any) -> ServerConfig:
    """A server config for a fake at ``url``."""
    values: dict[str, Any] = {
        "name": "sklm-int",
        "url": url,
        "password": Secret(PASSWORD),
        "timeout": 5.0,
        "allow_insecure_http": url.startswith("http:"),
    }
    values.update(overrides)
    return ServerConfig(**values)


# -- TLS -----------------------------------------------------------------------


async def test_ca_file_is_trusted(serve, server_ssl, ca_file, session) -> None:
    """A server whose chain ends at ca_file is accepted; the connection is reused."""
    fake = FakeSklm()
    url = await serve(fake.app(), server_ssl)
    client = SklmClient(config(url, ca_file=ca_file), session)
    assert await client.poll_phase() == PollResult(
        Phase.RESTORE_KEYSTORES, False, RESTORE
    )
    assert (await client.poll_phase()).phase is Phase.RESTORE_KEYSTORES
    assert len(set(fake.peers)) == 1  # one TLS connection for login and both polls


async def test_unknown_ca_is_rejected_by_default(serve, server_ssl, session) -> None:
    """Without ca_file, a certificate from an unknown CA is a TLS error."""
    fake = FakeSklm()
    url = await serve(fake.app(), server_ssl)
    client = SklmClient(config(url), session)
    with pytest.raises(SklmTlsError) as info:
        await client.poll_phase()
    assert info.value.detail == (
        "certificate verify failed: unable to get local issuer certificate"
    )
    assert fake.calls == []


async def test_other_ca_file_is_rejected(
    serve, server_ssl, other_ca_file, session
) -> None:
    """A ca_file of another CA does not trust the server."""
    url = await serve(FakeSklm().app(), server_ssl)
    client = SklmClient(config(url, ca_file=other_ca_file), session)
    with pytest.raises(SklmTlsError):
        await client.poll_phase()


async def test_host_name_is_checked(serve, ca, ca_file, session) -> None:
    """A trusted certificate for another host name is rejected."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("sklm.example.com").configure_cert(context)
    url = await serve(FakeSklm().app(), context)
    client = SklmClient(config(url, ca_file=ca_file), session)
    with pytest.raises(SklmTlsError) as info:
        await client.poll_phase()
    assert info.value.detail == (
        "certificate verify failed: IP address mismatch, certificate is not valid "
        "for '127.0.0.1'"
    )


async def test_pin_replaces_ca_trust(
    serve, server_ssl, server_fingerprint, session
) -> None:
    """A matching pin is accepted although no CA trusts the certificate."""
    url = await serve(FakeSklm().app(), server_ssl)
    client = SklmClient(config(url, tls_fingerprint=server_fingerprint), session)
    assert (await client.poll_phase()).phase is Phase.RESTORE_KEYSTORES


async def test_wrong_pin_is_rejected(
    serve, server_ssl, server_fingerprint, ca_file, session
) -> None:
    """A pin that does not match is a TLS error naming the presented fingerprint."""
    fake = FakeSklm()
    url = await serve(fake.app(), server_ssl)
    client = SklmClient(
        config(url, tls_fingerprint="00" * 32, ca_file=ca_file), session
    )
    with pytest.raises(SklmTlsError) as info:
        await client.poll_phase()
    assert info.value.detail == (
        "certificate does not match tls_fingerprint (the server presented "
        f"sha256:{server_fingerprint})"
    )
    assert fake.calls == []


async def test_verify_tls_false_accepts_anything(serve, server_ssl, session) -> None:
    """``verify_tls = false`` talks to an untrusted server."""
    url = await serve(FakeSklm().app(), server_ssl)
    client = SklmClient(config(url, verify_tls=False), session)
    assert (await client.poll_phase()).phase is Phase.RESTORE_KEYSTORES


async def test_environment_does_not_add_trust(
    serve, server_ssl, ca_file, session, monkeypatch
) -> None:
    """SSL_CERT_FILE / SSL_CERT_DIR naming the test CA do not make it trusted."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    monkeypatch.setenv("SSL_CERT_DIR", str(ca_file.parent))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    url = await serve(FakeSklm().app(), server_ssl)
    client = SklmClient(config(url), session)
    with pytest.raises(SklmTlsError, match="certificate verify failed: unable to get"):
        await client.poll_phase()


async def test_environment_does_not_replace_ca_file(
    serve, server_ssl, ca_file, other_ca_file, session, monkeypatch
) -> None:
    """With ca_file set, SSL_CERT_FILE neither adds nor removes trust."""
    url = await serve(FakeSklm().app(), server_ssl)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    distrusting = SklmClient(config(url, ca_file=other_ca_file), session)
    with pytest.raises(SklmTlsError):
        await distrusting.poll_phase()
    monkeypatch.setenv("SSL_CERT_FILE", str(other_ca_file))
    trusting = SklmClient(config(url, ca_file=ca_file), session)
    assert (await trusting.poll_phase()).phase is Phase.RESTORE_KEYSTORES


async def test_proxy_environment_is_ignored(serve, session, monkeypatch) -> None:
    """HTTP(S)_PROXY in the environment changes nothing (trust_env is off)."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    url = await serve(FakeSklm().app())
    client = SklmClient(config(url), session)
    assert (await client.poll_phase()).phase is Phase.RESTORE_KEYSTORES


async def test_tls_to_plain_http_is_tls_error(serve, session, ca_file) -> None:
    """An https URL pointing at a plain-HTTP port fails the handshake loudly."""
    url = await serve(FakeSklm().app())
    client = SklmClient(
        config(url.replace("http:", "https:"), ca_file=ca_file), session
    )
    with pytest.raises(SklmTlsError, match="TLS handshake failed"):
        await client.poll_phase()


# -- sessions, paths, bodies -----------------------------------------------------


async def test_relogin_after_server_expires_sessions(serve, session) -> None:
    """Sessions expired on the server lead to one re-login and ``relogin=True``."""
    fake = FakeSklm()
    client = SklmClient(config(await serve(fake.app())), session)
    assert (await client.poll_phase()).relogin is False
    fake.expire_sessions()
    fake.phase = ("7", "COMPLETED")
    assert await client.poll_phase() == PollResult(Phase.COMPLETED, True, RESTORE)
    assert fake.logins == 2
    assert (await client.poll_phase()).relogin is False


async def test_rejected_credentials(serve, session) -> None:
    """Wrong credentials are SklmAuthError after exactly one login attempt."""
    fake = FakeSklm()
    url = await serve(fake.app())
    client = SklmClient(config(url, password=Secret("wrong")), session)
    with pytest.raises(SklmAuthError, match="CTGKM6003E"):
        await client.poll_phase()
    assert fake.logins == 1
    assert await client.restore_result() is None


async def test_path_discovery(serve, session) -> None:
    """A server with only backupRestore/progress is found and remembered."""
    fake = FakeSklm(progress_paths=(BACKUP_RESTORE,), phase=(5, "RESTORE_DATABASES"))
    client = SklmClient(config(await serve(fake.app())), session)
    assert await client.poll_phase() == PollResult(
        Phase.RESTORE_DATABASES, False, BACKUP_RESTORE
    )
    await client.poll_phase()
    assert [c for c in fake.calls if c[0] == "GET"] == [
        ("GET", RESTORE),
        ("GET", BACKUP_RESTORE),
        ("GET", BACKUP_RESTORE),
    ]


async def test_no_progress_path(serve, session) -> None:
    """A server with neither progress path is a protocol error naming both."""
    fake = FakeSklm(progress_paths=())
    client = SklmClient(config(await serve(fake.app())), session)
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert RESTORE in str(info.value)
    assert BACKUP_RESTORE in str(info.value)
    assert info.value.detail.startswith("HTTP 404 from both progress paths (")


async def test_redirect_is_not_followed(serve, session) -> None:
    """A 302 to another host is a protocol error; the other host receives nothing."""
    other = FakeSklm()
    other_url = await serve(other.app())

    async def redirect(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{other_url}{RESTORE}")

    fake = FakeSklm(progress_override=redirect)
    client = SklmClient(config(await serve(fake.app())), session)
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert "HTTP 302 (a redirect, not followed)" in str(info.value)
    assert other_url not in str(info.value)
    assert other.calls == []


async def test_oversized_streamed_body(serve, session) -> None:
    """A chunked body beyond MAX_BODY_BYTES is a protocol error."""

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b" " * 16384
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            await response.write(chunk)
        await response.write_eof()
        return response

    fake = FakeSklm(progress_override=huge)
    client = SklmClient(config(await serve(fake.app())), session)
    with pytest.raises(SklmProtocolError, match="65536-byte limit"):
        await client.poll_phase()


async def test_gzip_bomb_is_capped(serve, session) -> None:
    """A small gzip body inflating past the cap is refused, not inflated in full."""
    payload = gzip.compress(
        b'{"status": "IDLE", "code": "0", "p": "' + b"0" * 20_000_000
    )

    async def bomb(_request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=payload,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    fake = FakeSklm(progress_override=bomb)
    client = SklmClient(config(await serve(fake.app())), session)
    with pytest.raises(SklmProtocolError, match="65536-byte limit"):
        await client.poll_phase()


async def test_gzip_body_is_read(serve, session) -> None:
    """A small compressed answer is decompressed and parsed."""
    payload = gzip.compress(json.dumps({"code": "6", "status": "CLEANUP"}).encode())

    async def small(_request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=payload,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    fake = FakeSklm(progress_override=small)
    client = SklmClient(config(await serve(fake.app())), session)
    assert (await client.poll_phase()).phase is Phase.CLEANUP


async def test_timeout_is_unreachable(serve, session) -> None:
    """A server that never answers within ``timeout`` is SklmUnreachable."""
    release = asyncio.Event()

    async def stall(_request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"code": "0", "status": "IDLE"})

    fake = FakeSklm(progress_override=stall)
    client = SklmClient(config(await serve(fake.app()), timeout=0.3), session)
    try:
        with pytest.raises(SklmUnreachable, match=r"no answer within 0\.3 s"):
            await client.poll_phase()
    finally:
        release.set()


async def test_connection_refused_is_unreachable(serve, session) -> None:
    """A closed port is SklmUnreachable."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await runner.cleanup()
    client = SklmClient(config(f"http://127.0.0.1:{port}"), session)
    with pytest.raises(SklmUnreachable) as info:
        await client.poll_phase()
    assert info.value.detail == "connection refused"


async def test_result_and_logout(serve, server_ssl, ca_file, session) -> None:
    """restore_result reads the code; logout ends the session on the server."""
    fake = FakeSklm()
    client = SklmClient(
        config(await serve(fake.app(), server_ssl), ca_file=ca_file), session
    )
    await client.poll_phase()
    assert await client.restore_result() == 0
    assert len(fake.sessions) == 1
    await client.logout()
    assert fake.sessions == set()
    assert ("DELETE", f"{API}/ckms/logout") in fake.calls


# -- against the simulator ---------------------------------------------------------

SIM_PASSWORD = "sim-Secret-pw"


def sim_scenario(**server: Any) -> dict[str, Any]:
    """A one-server scenario dict; ``server`` overrides the server's keys."""
    spec: dict[str, Any] = {"name": "sim-1", "password": SIM_PASSWORD}
    spec.update(server)
    return {"servers": [spec]}


def sim_config(sim: Simulator, **overrides: Any) -> ServerConfig:
    """A server config for the simulator's only server."""
    values: dict[str, Any] = {"password": Secret(SIM_PASSWORD), "name": "sim-1"}
    values.update(overrides)
    return config(sim.urls["sim-1"], **values)


async def test_simulator_over_tls(
    simulator, ca_file, server_fingerprint, session
) -> None:
    """Over the simulator's TLS: ca_file and pin accepted; untrusted rejected."""
    sim = await simulator(sim_scenario(), tls=True)
    for overrides in ({"ca_file": ca_file}, {"tls_fingerprint": server_fingerprint}):
        client = SklmClient(sim_config(sim, **overrides), session)
        assert (await client.poll_phase()).phase is Phase.IDLE
        await client.logout()
    for overrides in ({}, {"tls_fingerprint": "11" * 32}):
        client = SklmClient(sim_config(sim, **overrides), session)
        with pytest.raises(SklmTlsError):
            await client.poll_phase()
    assert sim.server("sim-1").logins == 2
    assert sim.server("sim-1").logouts == 2


@pytest.mark.parametrize(
    ("server", "path"),
    [
        ({"progress_paths": ["restore"]}, RESTORE),
        ({"progress_paths": ["backupRestore"]}, BACKUP_RESTORE),
        ({"progress_paths": ["backupRestore", "restore"]}, RESTORE),
        ({"code_as_int": True, "login_field": "userAuthId"}, RESTORE),
        ({"error_code_in_message": True}, RESTORE),
    ],
)
async def test_simulator_variants(simulator, session, server, path) -> None:
    """Each wire variant the simulator offers is understood; the path is discovered."""
    sim = await simulator(sim_scenario(**server))
    client = SklmClient(sim_config(sim), session)
    assert await client.poll_phase() == PollResult(Phase.IDLE, False, path)
    sim.server("sim-1").expire_sessions()
    assert await client.poll_phase() == PollResult(Phase.IDLE, True, path)
    assert sim.server("sim-1").logins == 2
    assert await client.restore_result() == -1
    assert await client.version() == "4.2.1.0"


async def test_simulator_stalled_restore_phase(simulator, session) -> None:
    """A restore sitting in RESTORE_KEYSTORES is read as that phase."""
    restore = {"phases": [[1, 0.01], [4, 1.0]], "outcome": "stall"}
    sim = await simulator(sim_scenario(restores=[restore]))
    await sim.server("sim-1").wait_settled()
    client = SklmClient(sim_config(sim, progress_path=RESTORE), session)
    assert (await client.poll_phase()).phase is Phase.RESTORE_KEYSTORES


async def test_simulator_restart(simulator, session) -> None:
    """A restart is unreachable, then a re-login reports ``relogin=True``."""
    sim = await simulator(sim_scenario())
    server = sim.server("sim-1")
    client = SklmClient(sim_config(sim), session)
    assert (await client.poll_phase()).relogin is False
    await server.restart(down=1.0, starting=0.2)
    with pytest.raises(SklmUnreachable):
        await client.poll_phase()
    await server.wait_settled()
    assert await client.poll_phase() == PollResult(Phase.IDLE, True, RESTORE)


async def test_simulator_rejects_credentials(simulator, session) -> None:
    """Wrong credentials are one failed login and SklmAuthError."""
    sim = await simulator(sim_scenario())
    client = SklmClient(sim_config(sim, password=Secret("nope")), session)
    with pytest.raises(SklmAuthError, match="CTGKM6003E"):
        await client.poll_phase()
    assert sim.server("sim-1").failed_logins == 1


@pytest.mark.parametrize(
    ("fault", "detail"),
    [
        ("json_500", "HTTP 500 CTGKM0999E An internal error occurred (simulated)."),
        ("json_404", "HTTP 404 CTGKM0998E The request failed (simulated)."),
        (
            "html_200",
            "body is an HTML page, not JSON: 'Session expired. Please log in again.'",
        ),
        ("html_500", "HTTP 500 HTML page: Session expired. Please log in again."),
        ("truncated", "body is not JSON (application/json): '"),
    ],
)
async def test_simulator_faults(simulator, session, fault, detail) -> None:
    """Every injected fault is a protocol error naming the server."""
    sim = await simulator(sim_scenario(error_rate=1.0, faults=[fault]))
    client = SklmClient(sim_config(sim, progress_path=RESTORE), session)
    with pytest.raises(SklmProtocolError) as info:
        await client.poll_phase()
    assert str(info.value).startswith("sim-1: ")
    assert info.value.detail.startswith(detail)
    assert str(info.value).startswith(f"sim-1: {info.value.detail}; ")
