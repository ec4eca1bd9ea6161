"""Fixtures shared by every tier: a clean environment and a fresh structlog."""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog

from tests.pgserver import PostgresServer, PostgresUnavailable

# Variables that would silently change TLS trust or proxies under a test.
_LEAKY_VARS = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove environment variables that would change TLS, proxies or systemd paths."""
    for name in _LEAKY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    """Give each test structlog's defaults and restore them afterwards."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Capture structlog entries as a list of dicts (``structlog.testing``)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def pytest_report_header() -> str:
    """Say which Python runs the suite (CI logs)."""
    return f"pid {os.getpid()}"


@pytest.fixture(scope="session")
def postgres_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole run (skips where none exists)."""
    try:
        server = PostgresServer.start(tmp_path_factory.mktemp("postgres"))
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the run's PostgreSQL server."""
    return postgres_server.create_database()
