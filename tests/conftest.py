"""Fixtures shared by every tier: a clean environment and a fresh structlog."""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog

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
