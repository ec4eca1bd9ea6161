"""E-mail and syslog alerts survive a dead SMTP server and relay and a daemon restart.

The real daemon (a subprocess) watches a simulated restore while the SMTP server
(aiosmtpd, STARTTLS, AUTH) and the syslog relay (RFC 5425 over TLS) are down;
after a restart with both back, every journaled event arrives at each, once per
event id, in order, and the SMTP password appears in no output.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme

from tests.integration.smtp_receiver import SmtpReceiver
from tests.integration.syslog_receiver import SyslogReceiver
from watcher.config import SLACK_DEFAULT_EVENTS
from watcher.events import EventType

from .conftest import SimulatedFleet, read_jsonl, wait_for

pytestmark = pytest.mark.e2e

T = TypeVar("T")

LOGIN = "watcher@example.test"
PASSWORD = "e2e-smtp-Pa55word-never-printed"


class LoopThread:
    """An asyncio loop in a thread, where the receivers live while the test waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
        """Run ``make()`` in the loop and wait (bounded) for its result."""

        async def call() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(call(), self.loop)
        return future.result(timeout)

    def close(self) -> None:
        """Stop the loop and the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """A background event loop for the receivers."""
    thread = LoopThread()
    yield thread
    thread.close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the receivers start later, on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def add_sinks(config: Path, ca_file: Path, smtp_port: int, syslog_port: int) -> None:
    """Append an email sink (STARTTLS + AUTH) and a syslog sink (TLS) to the config."""
    with config.open("a", encoding="utf-8") as f:
        f.write(
            "\n[[sinks]]\n"
            'name = "mail"\n'
            'type = "email"\n'
            'host = "127.0.0.1"\n'
            f"port = {smtp_port}\n"
            'transport = "starttls"\n'
            f'ca_file = "{ca_file}"\n'
            f'username = "{LOGIN}"\n'
            'password_env = "E2E_SMTP_PASSWORD"\n'
            'from = "watcher@example.test"\n'
            'to = ["kms-team@example.test"]\n'
            "max_age = 600.0\n"
            "\n[[sinks]]\n"
            'name = "siem"\n'
            'type = "syslog"\n'
            'host = "127.0.0.1"\n'
            f"port = {syslog_port}\n"
            'transport = "tls"\n'
            f'ca_file = "{ca_file}"\n'
            'facility = "local3"\n'
            "max_age = 600.0\n"
        )


def tls_pair(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A trustme CA written to a file, and a server context with a 127.0.0.1 cert."""
    ca = trustme.CA(organization_name="sklm-watcher e2e")
    ca_file = tmp_path / "sinks-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
    return ca_file, server_ssl


def mail_ids(journaled: list[dict[str, Any]]) -> list[str]:
    """The ids of the journaled events the email sink wants (its default filter)."""
    return [e["id"] for e in journaled if e["type"] in SLACK_DEFAULT_EVENTS]


def test_restore_while_smtp_and_relay_down_is_delivered_after_restart(
    spawn, simulated_fleet, loop_thread: LoopThread, tmp_path: Path
) -> None:
    """SMTP server and relay down + daemon restart: every event arrives at both later."""
    ca_file, server_ssl = tls_pair(tmp_path)
    fleet: SimulatedFleet = simulated_fleet("basic.toml")
    smtp_port, syslog_port = free_port(), free_port()
    add_sinks(fleet.config, ca_file, smtp_port, syslog_port)
    audit = fleet.config.parent / "state" / "events.jsonl"
    env = {"E2E_SMTP_PASSWORD": PASSWORD}

    def audit_types() -> list[str]:
        return [e["type"] for e in read_jsonl(audit)]

    daemon = spawn("--debug", "run", "-c", str(fleet.config), env=env)
    wait_for(
        lambda: str(EventType.RESTORE_COMPLETED) in audit_types(),
        timeout=40,
        what="the completed event, journaled while SMTP and the relay are down",
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()
    first_output = daemon.stdout() + daemon.stderr()

    pending = spawn("outbox", "-c", str(fleet.config), "--json", env=env)
    assert pending.wait() == 0, pending.stderr()
    backlog = {s["sink"]: s["pending"] for s in json.loads(pending.stdout())["sinks"]}
    journaled_now = read_jsonl(audit)
    # E-mail gets what a person acts on by default (no phases); syslog everything.
    assert backlog == {
        "mail": len([e for e in journaled_now if e["type"] in SLACK_DEFAULT_EVENTS]),
        "siem": len(journaled_now),
    }
    assert backlog["mail"] >= 2  # started, completed

    async def up() -> tuple[SmtpReceiver, SyslogReceiver]:
        smtp = SmtpReceiver("starttls", server_ssl, (LOGIN, PASSWORD))
        smtp.port = smtp_port
        relay = SyslogReceiver("tls", server_ssl)
        relay.port = syslog_port
        await smtp.start()
        await relay.start()
        return smtp, relay

    smtp, relay = loop_thread.run(up)
    try:
        daemon = spawn("--debug", "run", "-c", str(fleet.config), env=env)

        def mailed() -> list[str]:
            return [
                mail.message()["Message-ID"].strip("<>").split(".sklm-watcher@")[0]
                for mail in list(smtp.mails)
            ]

        def logged() -> list[str]:
            return [m.sd["sklm@32473"]["id"] for m in list(relay.messages)]

        def done() -> bool:
            journaled = read_jsonl(audit)
            return (
                str(EventType.SERVER_RESTARTED) in [e["type"] for e in journaled]
                and set(mailed()) == set(mail_ids(journaled))
                and set(logged()) == {e["id"] for e in journaled}
            )

        wait_for(done, timeout=60, what="every journaled event mailed and logged")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0, daemon.stderr()
    finally:
        loop_thread.run(smtp.stop)
        loop_thread.run(relay.stop)

    journaled = [e["id"] for e in read_jsonl(audit)]
    # Every event, once per id, in the order it happened (one server, one worker per sink).
    assert list(dict.fromkeys(mailed())) == mail_ids(read_jsonl(audit))
    assert list(dict.fromkeys(logged())) == journaled
    assert relay.errors == []
    assert {mail.login for mail in smtp.mails} == {LOGIN}
    assert all(mail.tls for mail in smtp.mails)
    by_id: dict[str, Any] = {e["id"]: e for e in read_jsonl(audit)}
    for message in relay.messages:
        event = json.loads(message.msg)
        assert event == {k: v for k, v in by_id[event["id"]].items() if k in event}
        assert message.facility == 19  # local3

    empty = spawn("outbox", "-c", str(fleet.config), "--json", env=env)
    assert empty.wait() == 0
    for row in json.loads(empty.stdout())["sinks"]:
        assert (row["sink"], row["pending"], row["dead"]) == (row["sink"], 0, 0)
    for output in (first_output, daemon.stdout(), daemon.stderr(), empty.stdout()):
        assert PASSWORD not in output


@pytest.mark.parametrize("password", [PASSWORD, "a-wrong-password-never-printed"])
def test_test_sink_reaches_smtp_and_relay(
    spawn, simulated_fleet, loop_thread: LoopThread, tmp_path: Path, password: str
) -> None:
    """test-sink mails and logs one test event (exit 0); a rejected login exits 1, unsaid."""
    ca_file, server_ssl = tls_pair(tmp_path)
    fleet: SimulatedFleet = simulated_fleet("basic.toml")

    async def up() -> tuple[SmtpReceiver, SyslogReceiver]:
        smtp = SmtpReceiver("starttls", server_ssl, (LOGIN, PASSWORD))
        relay = SyslogReceiver("tls", server_ssl)
        await smtp.start()
        await relay.start()
        return smtp, relay

    smtp, relay = loop_thread.run(up)
    try:
        add_sinks(fleet.config, ca_file, smtp.port, relay.port)
        env = {"E2E_SMTP_PASSWORD": password}
        mail = spawn("--debug", "test-sink", "-c", str(fleet.config), "mail", env=env)
        siem = spawn("test-sink", "-c", str(fleet.config), "siem", env=env)
        siem_rc, mail_rc = siem.wait(timeout=30), mail.wait(timeout=30)
    finally:
        loop_thread.run(smtp.stop)
        loop_thread.run(relay.stop)
    assert siem_rc == 0, siem.stderr()
    assert siem.stdout().startswith("siem: delivered test event ")
    (logged,) = relay.messages
    assert (logged.msgid, logged.severity) == ("sklm.watcher.test", 6)
    if password == PASSWORD:
        assert mail_rc == 0, mail.stderr()
        assert mail.stdout().startswith("mail: delivered test event ")
        (sent,) = smtp.mails
        assert sent.message()["Subject"] == (
            "[sklm-watcher] sklm-watcher-test: test message from sklm-watcher"
        )
    else:
        assert mail_rc == 1
        assert (
            "mail: FAILED: sink mail: SMTP 535 to AUTH: login rejected for username "
            f"'{LOGIN}'; check username and password_env / password_file"
        ) in mail.stderr()
        assert smtp.mails == []
    for proc in (mail, siem):
        assert password not in proc.stdout() + proc.stderr()
