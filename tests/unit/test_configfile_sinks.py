"""load_config for the pagerduty, teams, email and syslog sinks: values, defaults, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_configfile import SERVER, make_ca_file, write
from watcher.config import (
    PAGERDUTY_DEFAULT_EVENTS,
    SLACK_DEFAULT_EVENTS,
    Secret,
    SinkConfig,
)
from watcher.configfile import load_config
from watcher.errors import ConfigError

ROUTING_KEY = "0123456789abcdef0123456789ABCDEF"
TEAMS_URL = "https://prod-01.westeurope.logic.azure.example/workflows/abc?sig=T3AMSsig"
SMTP_PASSWORD = "smtp-pa55word-Q9"

VALID = (
    SERVER
    + """
[[sinks]]
name = "pager"
type = "pagerduty"
routing_key_env = "PD"

[[sinks]]
name = "teams"
type = "teams"
url_env = "TEAMS"

[[sinks]]
name = "mail"
type = "email"
host = "smtp.example.com"
ca_file = "ca.pem"
username = "watcher"
password_file = "smtp-password"
from = "sklm-watcher@example.com"
to = "kms-ops@example.com"

[[sinks]]
name = "siem"
type = "syslog"
host = "siem.example.com"
port = 6514
facility = "local3"
app_name = "sklm"
events = ["sklm.restore.*"]
"""
)


def environ() -> dict[str, str]:
    """The environment of the valid file."""
    return {"PW": "pw-value", "PD": ROUTING_KEY, "TEAMS": TEAMS_URL}


def test_every_new_sink_type_loads_with_its_defaults(tmp_path: Path) -> None:
    """Each type gets its fields, its default events, spacing, transport and port."""
    ca_file = make_ca_file(tmp_path)
    (tmp_path / "smtp-password").write_text(SMTP_PASSWORD + "\n", encoding="utf-8")
    config = load_config(write(tmp_path, VALID), environ())
    assert config.sinks == (
        SinkConfig(
            name="pager",
            type="pagerduty",
            routing_key=Secret(ROUTING_KEY),
            events=PAGERDUTY_DEFAULT_EVENTS,
        ),
        SinkConfig(
            name="teams",
            type="teams",
            url=Secret(TEAMS_URL),
            events=SLACK_DEFAULT_EVENTS,
            min_interval=1.0,
        ),
        SinkConfig(
            name="mail",
            type="email",
            host="smtp.example.com",
            transport="starttls",
            ca_file=ca_file,
            username="watcher",
            password=Secret(SMTP_PASSWORD),
            sender="sklm-watcher@example.com",
            recipients=("kms-ops@example.com",),
            events=SLACK_DEFAULT_EVENTS,
        ),
        SinkConfig(
            name="siem",
            type="syslog",
            host="siem.example.com",
            port=6514,
            transport="tls",
            facility="local3",
            app_name="sklm",
            events=("sklm.restore.*",),
        ),
    )
    assert config.warnings == ()
    assert config.summary().startswith(
        "1 server, 4 sinks (pagerduty, teams, email, syslog)"
    )
    for text in (repr(config), str(config)):
        for secret in (ROUTING_KEY, TEAMS_URL, "T3AMSsig", SMTP_PASSWORD):
            assert secret not in text


def test_plain_transports_and_unverified_tls_load_with_warnings(tmp_path: Path) -> None:
    """A plain relay off loopback and verify_tls = false are allowed, said loudly."""
    text = (
        SERVER
        + """
[[sinks]]
name = "relay"
type = "syslog"
host = "relay.example.com"
transport = "udp"

[[sinks]]
name = "local"
type = "email"
host = "127.0.0.1"
transport = "none"
username = "u"
password_env = "SMTP"
from = "a@example.com"
to = ["b@example.com", "c@example.com"]

[[sinks]]
name = "unverified"
type = "email"
host = "smtp.example.com"
transport = "tls"
verify_tls = false
from = "a@example.com"
to = "b@example.com"
"""
    )
    config = load_config(write(tmp_path, text), {"PW": "pw", "SMTP": SMTP_PASSWORD})
    assert config.sinks[1].recipients == ("b@example.com", "c@example.com")
    assert config.sinks[1].password == Secret(SMTP_PASSWORD)
    assert config.sinks[2].verify_tls is False
    assert config.warnings == (
        "sinks[0].transport: transport = 'udp' to a non-loopback host: events cross "
        "the network unencrypted",
        "sinks[2] (unverified): verify_tls = false: TLS CERTIFICATE VERIFICATION IS "
        "OFF; anyone on the network path can impersonate the email server and read "
        "what is sent; set ca_file instead",
    )
    assert SMTP_PASSWORD not in " ".join(config.warnings)


def test_new_sink_secrets_never_appear_in_problems(tmp_path: Path) -> None:
    """Broken values around the routing key, Teams URL and SMTP password echo none."""
    text = (
        SERVER
        + """
[[sinks]]
name = "pager"
type = "pagerduty"
routing_key_env = "PD"
url_env = "TEAMS"

[[sinks]]
name = "teams"
type = "teams"
url = "http://prod-01.westeurope.logic.azure.example/workflows/abc?sig=T3AMSsig"

[[sinks]]
name = "mail"
type = "email"
host = "smtp.example.com"
transport = "none"
username = "u"
password = "smtp-pa55word-Q9"
from = "a@example.com"
to = "smtp-pa55word-Q9"
routing_key = "0123456789abcdef0123456789ABCDEF"
"""
    )
    env = {"PW": "pw", "PD": "https://x/0123456789abcdef0123456789ABCDEF"}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), {**env, "TEAMS": "http://h/T3AMSsig"})
    keys = [p.key for p in caught.value.problems]
    assert keys == [
        "sinks[0].url_env",
        "sinks[0].routing_key_env",
        "sinks[1].url",
        "sinks[2].to",
        "sinks[2].routing_key",
        "sinks[2].transport",
    ]
    for secret in (ROUTING_KEY, "T3AMSsig", SMTP_PASSWORD, "0123456789abcdef"):
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value.problems)


def test_inline_routing_key_and_smtp_password_load_with_a_warning(
    tmp_path: Path,
) -> None:
    """Secrets written in the file work, and the warning points at _env / _file."""
    text = (
        SERVER
        + f"""
[[sinks]]
name = "pager"
type = "pagerduty"
routing_key = "{ROUTING_KEY}"

[[sinks]]
name = "mail"
type = "email"
host = "smtp.example.com"
username = "u"
password = "{SMTP_PASSWORD}"
from = "a@example.com"
to = "b@example.com"
"""
    )
    config = load_config(write(tmp_path, text), {"PW": "pw"})
    assert config.sinks[0].routing_key == Secret(ROUTING_KEY)
    assert config.warnings == (
        "sinks[0].routing_key: the routing key is written in the configuration "
        "file; prefer routing_key_env or routing_key_file (a systemd credential)",
        "sinks[1].password: the SMTP password is written in the configuration "
        "file; prefer password_env or password_file (a systemd credential)",
    )
    for secret in (ROUTING_KEY, SMTP_PASSWORD):
        assert secret not in " ".join(config.warnings)
