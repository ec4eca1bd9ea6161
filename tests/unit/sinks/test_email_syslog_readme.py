"""The README's copy-paste configurations for the e-mail and syslog sinks load and build."""

from __future__ import annotations

import re
from pathlib import Path

import trustme

from watcher.config import Secret, SinkConfig
from watcher.configfile import load_config
from watcher.sinks.email import EmailSink
from watcher.sinks.syslog import SEVERITIES, SyslogSink

README = Path(__file__).resolve().parents[3] / "README.md"

SERVER = """
[defaults]
password_env = "SKLM_PASSWORD"

[[servers]]
name = "sklm-prod-1"
url = "https://sklm1.example.com:9443"
"""


def section(title: str) -> str:
    """The README text from ``### title`` to the next heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n### {title}\n")
    end = re.compile(r"\n##+ ").search(text, start + 1)
    assert end is not None
    return text[start : end.start()]


def toml_block(title: str) -> str:
    """The first ```toml block of a README section."""
    found = re.search(r"```toml\n(.*?)```", section(title), re.DOTALL)
    assert found is not None
    return found.group(1)


def load_sink(title: str, tmp_path: Path) -> SinkConfig:
    """Load the section's block (its ca_file pointed at a real PEM) beside a server."""
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    block = re.sub(r'ca_file = "[^"]*"', f'ca_file = "{ca}"', toml_block(title))
    path = tmp_path / "watcher.toml"
    path.write_text(SERVER + block, encoding="utf-8")
    env = {"SKLM_PASSWORD": "x", "SKLM_WATCHER_SMTP_PASSWORD": "smtp-secret"}
    (sink,) = load_config(path, env).sinks
    return sink


def test_readme_email_config_builds_a_sink(tmp_path: Path) -> None:
    """The E-mail block is a valid sink: STARTTLS, AUTH, from and to as written."""
    sink = load_sink("E-mail", tmp_path)
    assert (sink.type, sink.host, sink.port, sink.transport) == (
        "email",
        "smtp.example.com",
        587,
        "starttls",
    )
    assert (sink.username, sink.password) == ("sklm-watcher", Secret("smtp-secret"))
    assert sink.sender == "sklm-watcher@example.com"
    assert sink.recipients == ("kms-ops@example.com", "change-records@example.com")
    EmailSink(sink)


def test_readme_syslog_config_builds_a_sink(tmp_path: Path) -> None:
    """The Syslog block is a valid sink: TLS to 6514, facility local0."""
    sink = load_sink("Syslog (SIEM)", tmp_path)
    assert (sink.type, sink.host, sink.port, sink.transport, sink.facility) == (
        "syslog",
        "qradar.example.com",
        6514,
        "tls",
        "local0",
    )
    SyslogSink(sink)


def test_readme_severity_table_is_the_code() -> None:
    """Every row of the README's severity table is what the sink sends."""
    names = {3: "err", 4: "warning", 5: "notice", 6: "info"}
    rows = re.findall(
        r"^\| (`sklm\..*?) \| (\d) (\w+) \|$", section("Syslog (SIEM)"), re.M
    )
    table = {
        kind: (int(code), word)
        for types, code, word in rows
        for kind in re.findall(r"`([a-z.]+)`", types)
    }
    assert table == {
        str(kind): (severity, names[severity]) for kind, severity in SEVERITIES.items()
    }
