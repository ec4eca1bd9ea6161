"""Integration fixtures: a session trustme CA, TLS contexts, and the SKLM simulator."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trustme

from watcher.simulator import Scenario, Simulator

StartSimulator = Callable[..., Awaitable[Simulator]]


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A throw-away certificate authority for the whole session."""
    return trustme.CA(organization_name="sklm-watcher tests")


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    """The simulator's certificate, for 127.0.0.1 and localhost, issued by ``ca``."""
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture(scope="session")
def server_ssl(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server-side SSLContext presenting ``server_cert``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


@pytest.fixture(scope="session")
def server_fingerprint(server_cert: trustme.LeafCert) -> str:
    """SHA-256 of ``server_cert`` (DER) as lowercase hex, for pinning tests."""
    pem = server_cert.cert_chain_pems[0].bytes().decode("ascii")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA certificate written as a PEM file."""
    path = tmp_path / "sklm-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    """A client-side SSLContext trusting only ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def simulator(server_ssl: ssl.SSLContext) -> AsyncIterator[StartSimulator]:
    """Start simulators on 127.0.0.1 (any free ports); all are closed at teardown.

    Call ``await simulator(scenario, tls=False, ground_truth=None)`` with a
    :class:`Scenario` or the dict a scenario file would hold.
    """
    started: list[Simulator] = []

    async def start(
        scenario: Scenario | Mapping[str, Any],
        *,
        tls: bool = False,
        ground_truth: Path | None = None,
    ) -> Simulator:
        if not isinstance(scenario, Scenario):
            scenario = Scenario.from_dict(scenario)
        sim = Simulator(
            scenario,
            ssl_context=server_ssl if tls else None,
            ground_truth=ground_truth,
        )
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in reversed(started):
        await sim.close()
