"""Known secrets, every flow: none of them shows up anywhere the watcher writes."""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path

import pytest
import trustme

from .conftest import Receiver, SimulatedFleet, read_jsonl, wait_for

pytestmark = pytest.mark.e2e

# The simulator's fleet20 passwords are secrets too (the right and the wrong one).
RIGHT_PASSWORD = "fleet-password"
WRONG_PASSWORD = "not-the-fleet-password"
SIGNING_SECRET = (
    "whsec_" + base64.b64encode(b"leak-test-signing-key-0123456789").decode()
)
URL_TOKEN = "urlpathtoken7Q2x"
QUERY_TOKEN = "querytoken9Z4k"
SLACK_TOKEN = "slackT0K3Nb9"
GONE_TOKEN = "gonetoken3M8p"
SECRETS = [
    RIGHT_PASSWORD,
    WRONG_PASSWORD,
    SIGNING_SECRET,
    SIGNING_SECRET.removeprefix("whsec_"),
    URL_TOKEN,
    QUERY_TOKEN,
    SLACK_TOKEN,
    GONE_TOKEN,
]


def extend_config(fleet: SimulatedFleet, receiver: Receiver, other_ca: Path) -> None:
    """Add a TLS-failing server, a signed webhook, a Slack sink and a dead sink."""
    text = fleet.config.read_text(encoding="utf-8")
    base = f"http://127.0.0.1:{receiver.port}"
    text += f"""
[[servers]]
name = "fleet-05-wrong-ca"
url = "{fleet.urls["fleet-05"]}"
password_env = "LEAK_PASSWORD"
ca_file = "{other_ca}"
unreachable_after = 2.0

[[sinks]]
name = "hook"
type = "webhook"
url = "{base}/hook/{URL_TOKEN}?token={QUERY_TOKEN}"
secret_env = "LEAK_SIGNING_SECRET"

[[sinks]]
name = "chat"
type = "slack"
url = "{base}/services/{SLACK_TOKEN}"
allow_insecure_http = true
min_interval = 0.0

[[sinks]]
name = "dead"
type = "webhook"
url = "{base}/gone/{GONE_TOKEN}"
"""
    fleet.config.write_text(text, encoding="utf-8")


def assert_clean(where: str, blob: bytes) -> None:
    """None of the secrets appears in ``blob``."""
    for secret in SECRETS:
        assert secret.encode() not in blob, f"{secret!r} leaked into {where}"


def test_no_secret_leaks_from_any_flow(
    spawn, simulated_fleet, receiver: Receiver, tmp_path: Path
) -> None:
    """Login, re-login, auth and TLS failures, sinks, dead letters, bad configs, --debug."""
    fleet = simulated_fleet("fleet20.toml")
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(trustme.CA().cert_pem.bytes())
    receiver.up()
    extend_config(fleet, receiver, other_ca)
    env = {"LEAK_PASSWORD": RIGHT_PASSWORD, "LEAK_SIGNING_SECRET": SIGNING_SECRET}
    audit = fleet.config.parent / "state" / "events.jsonl"

    def types(server: str) -> set[str]:
        return {e["type"] for e in read_jsonl(audit) if e["subject"] == server}

    daemon = spawn(
        "--debug", "--log-format", "json", "run", "-c", str(fleet.config), env=env
    )
    wait_for(
        lambda: (
            "sklm.auth.failed" in types("fleet-08")
            and "sklm.server.unreachable" in types("fleet-05-wrong-ca")
            and "sklm.server.restarted" in types("fleet-07")
            and any("/gone/" in p for p in receiver.paths)
            and any("/services/" in p for p in receiver.paths)
        ),
        timeout=50,
        what="auth failure, TLS failure, a restart with re-login and every sink used",
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.stderr()[-3000:]

    outbox = spawn(
        "--debug", "outbox", "-c", str(fleet.config), "--dead", "--json", env=env
    )
    assert outbox.wait() == 0, outbox.stderr()
    dead = json.loads(outbox.stdout())["dead"]
    assert dead, "the 410 sink dead-lettered nothing"
    assert {row["sink"] for row in dead} == {"dead"}

    # A broken configuration that carries the secrets, through check-config and run.
    broken = tmp_path / "broken.toml"
    broken.write_text(
        f'[[servers]]\nname = "x"\nurl = "https://u:{RIGHT_PASSWORD}@h.example"\n'
        f'password = "{WRONG_PASSWORD}"\npassword_env = "LEAK_PASSWORD"\n'
        f'[[sinks]]\nname = "s"\ntype = "webhok"\n'
        f'url = "ftp://{SLACK_TOKEN}.example/{URL_TOKEN}?q={QUERY_TOKEN}"\n'
        f'secret = "{SIGNING_SECRET}x!"\n',
        encoding="utf-8",
    )
    for command in ("check-config", "run"):
        refused = spawn("--debug", command, "-c", str(broken), env=env)
        assert refused.wait(timeout=20) == 2
        assert_clean(f"{command} stderr", refused.stderr().encode())
        assert_clean(f"{command} stdout", refused.stdout().encode())

    assert_clean("daemon stderr", daemon.stderr().encode())
    assert_clean("daemon stdout", daemon.stdout().encode())
    assert_clean("outbox output", (outbox.stdout() + outbox.stderr()).encode())
    assert_clean("audit log", audit.read_bytes())
    state_dir = fleet.config.parent / "state"
    for path in sorted(state_dir.iterdir()):
        if path.is_file():
            assert_clean(path.name, path.read_bytes())
    # What the receiver got is the event, not our configuration.
    for headers, body in receiver.posts:
        assert_clean("a delivered body", body)
        assert_clean("delivered headers", json.dumps(headers).encode())
