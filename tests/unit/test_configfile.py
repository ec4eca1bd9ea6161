"""load_config: broken files name every problem exactly; valid files load as written."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from types import MappingProxyType

import pytest
import trustme

from watcher.config import (
    SLACK_DEFAULT_EVENTS,
    Config,
    Listen,
    Secret,
    ServerConfig,
    SinkConfig,
    WatcherSettings,
)
from watcher.configfile import load_config
from watcher.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

# A valid server and a valid environment, to build broken files around.
SERVER = """
[[servers]]
name = "s1"
url = "https://s1.example.com:9443"
password_env = "PW"
"""
ENV = {"PW": "pw-value"}
GOOD_SECRET = "whsec_" + base64.b64encode(bytes(range(24))).decode()
SHORT_SECRET = "whsec_" + base64.b64encode(b"abc").decode()
FINGERPRINT = "ab" * 32


def write(tmp_path: Path, text: str, name: str = "watcher.toml") -> Path:
    """Write a config file (``{dir}`` stands for ``tmp_path``) and return its path."""
    path = tmp_path / name
    path.write_text(text.replace("{dir}", str(tmp_path)), encoding="utf-8")
    return path


def problems_of(path: Path, environ: dict[str, str]) -> list[tuple[str, str]]:
    """The (key, reason) list that loading ``path`` raises."""
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ)
    assert caught.value.source == str(path)
    return [(p.key, p.reason) for p in caught.value.problems]


def make_ca_file(tmp_path: Path, name: str = "ca.pem") -> Path:
    """Write a real PEM CA certificate (trustme) and return its path."""
    path = tmp_path / name
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


NO_PASSWORD = (
    "missing: SKLM needs a password to log in; set password_env, password_file "
    "or password (here or in [defaults])"
)
HTTP_SERVER = (
    "http:// would send the SKLM password unencrypted: use https://, or set "
    "allow_insecure_http = true (labs and simulators only)"
)
URL_PATH = (
    "must not have a path: write scheme, host and port only, e.g. "
    "https://sklm.example.com:9443 (api_base sets the REST path)"
)
BAD_FINGERPRINT = (
    "expected 'sha256:' followed by 64 hex digits (colons allowed), as printed by: "
    "openssl x509 -noout -fingerprint -sha256 -in cert.pem"
)
NOT_WHSEC = "is not a Standard Webhooks secret: it must start with 'whsec_'"
TYPES = "webhook, slack, log, pagerduty, teams, email or syslog"

# (id, file text, environment, exact problems); "{dir}" is the file's directory.
BROKEN: list[tuple[str, str, dict[str, str], list[tuple[str, str]]]] = [
    (
        "toml-syntax",
        "[[servers]\nname = 1\n",
        ENV,
        [
            (
                "",
                "not valid TOML: Expected ']]' at the end of an array declaration "
                "(at line 1, column 10)",
            )
        ],
    ),
    (
        "toml-duplicate-key",
        '[watcher]\nstate_dir = "a"\nstate_dir = "b"\n' + SERVER,
        ENV,
        [("", "not valid TOML: Cannot overwrite a value (at line 3, column 16)")],
    ),
    (
        "unknown-top-level-table",
        '[[server]]\nname = "s1"\n',
        ENV,
        [
            ("server", "unknown key 'server'; did you mean 'servers'?"),
            (
                "servers",
                "no servers: add at least one [[servers]] table with name and url",
            ),
        ],
    ),
    (
        "servers-not-an-array",
        '[servers]\nname = "s1"\n',
        ENV,
        [("servers", "expected an array of tables ([[servers]]), got table")],
    ),
    (
        "server-entry-not-a-table",
        "servers = [1]\n",
        ENV,
        [("servers[0]", "expected a table, got integer")],
    ),
    (
        "unknown-key-with-suggestion",
        "[defaults]\nidle_intervall = 5\n" + SERVER,
        ENV,
        [
            (
                "defaults.idle_intervall",
                "unknown key 'idle_intervall'; did you mean 'idle_interval'?",
            )
        ],
    ),
    (
        "unknown-key-without-suggestion",
        SERVER + "colour = 'blue'\n",
        ENV,
        [("servers[0].colour", "unknown key 'colour'")],
    ),
    (
        "unknown-watcher-key",
        "[watcher]\nstatedir = 'x'\n" + SERVER,
        ENV,
        [("watcher.statedir", "unknown key 'statedir'; did you mean 'state_dir'?")],
    ),
    (
        "name-and-url-in-defaults",
        "[defaults]\nname = 'x'\nurl = 'https://a'\n" + SERVER,
        ENV,
        [
            (
                "defaults.name",
                "'name' cannot be a default: set it in each [[servers]] table",
            ),
            (
                "defaults.url",
                "'url' cannot be a default: set it in each [[servers]] table",
            ),
        ],
    ),
    (
        "missing-name-and-url",
        "[[servers]]\npassword_env = 'PW'\n",
        ENV,
        [
            (
                "servers[0].name",
                "missing required key 'name' (a unique server name, "
                'e.g. name = "sklm-prod-1")',
            ),
            (
                "servers[0].url",
                "missing required key 'url' "
                '(e.g. url = "https://sklm.example.com:9443")',
            ),
        ],
    ),
    (
        "bad-name",
        SERVER.replace('"s1"', '"prod 1"'),
        ENV,
        [
            (
                "servers[0].name",
                "must start with a letter or digit and hold only letters, digits, "
                "'.', '_' and '-' (at most 64 characters)",
            )
        ],
    ),
    (
        "duplicate-server-name",
        SERVER + SERVER,
        ENV,
        [("servers[1].name", "duplicate server name 's1' (also servers[0])")],
    ),
    (
        "url-with-path",
        SERVER.replace(":9443", ":9443/SKLM/rest/v1"),
        ENV,
        [("servers[0].url", URL_PATH)],
    ),
    (
        "url-with-credentials",
        SERVER.replace("https://", "https://admin:hunter2@"),
        ENV,
        [
            (
                "servers[0].url",
                "must not contain a user name or password before the host",
            )
        ],
    ),
    (
        "url-with-query",
        SERVER.replace(":9443", ":9443/?x=1"),
        ENV,
        [
            (
                "servers[0].url",
                "must not have a query or fragment: write scheme, host and port only",
            )
        ],
    ),
    (
        "url-wrong-scheme",
        SERVER.replace("https://", "ftp://"),
        ENV,
        [("servers[0].url", "must start with https:// (or http://)")],
    ),
    (
        "url-bad-port",
        SERVER.replace(":9443", ":99999"),
        ENV,
        [("servers[0].url", "has an invalid port (expected 1 to 65535)")],
    ),
    (
        "url-no-host",
        SERVER.replace("s1.example.com:9443", ""),
        ENV,
        [("servers[0].url", "has no host name")],
    ),
    (
        "http-server-without-allow",
        SERVER.replace("https://", "http://"),
        ENV,
        [("servers[0].url", HTTP_SERVER)],
    ),
    (
        "interval-is-a-string",
        SERVER + "idle_interval = '30s'\n",
        ENV,
        [("servers[0].idle_interval", "expected a number of seconds, got string")],
    ),
    (
        "interval-is-a-boolean",
        "[defaults]\ntimeout = true\n" + SERVER,
        ENV,
        [("defaults.timeout", "expected a number of seconds, got boolean")],
    ),
    (
        "non-positive-intervals",
        SERVER + "active_interval = 0\nstall_after = -1.5\nmax_backoff = inf\n",
        ENV,
        [
            ("servers[0].active_interval", "must be more than 0 seconds, got 0"),
            ("servers[0].stall_after", "must be more than 0 seconds, got -1.5"),
            ("servers[0].max_backoff", "must be a finite number of seconds"),
        ],
    ),
    (
        "burst-polls-not-whole",
        SERVER + "burst_polls = 2.5\n",
        ENV,
        [("servers[0].burst_polls", "expected a whole number, got float")],
    ),
    (
        "flag-not-boolean",
        SERVER + "verify_tls = 'no'\n",
        ENV,
        [("servers[0].verify_tls", "expected true or false, got string")],
    ),
    (
        "two-password-sources",
        SERVER + "password = 'hunter2'\n",
        ENV,
        [
            (
                "servers[0].password",
                "conflicts with password_env: set only one of password, "
                "password_env and password_file",
            )
        ],
    ),
    (
        "no-password",
        SERVER.replace('password_env = "PW"', ""),
        ENV,
        [("servers[0].password", NO_PASSWORD)],
    ),
    (
        "env-var-unset",
        SERVER,
        {},
        [("servers[0].password_env", "environment variable PW is not set")],
    ),
    (
        "env-var-empty",
        SERVER,
        {"PW": ""},
        [("servers[0].password_env", "environment variable PW is empty")],
    ),
    (
        "env-name-is-not-a-name",
        SERVER.replace('password_env = "PW"', 'password_env = "s3cr3t!"'),
        ENV,
        [
            (
                "servers[0].password_env",
                "is not an environment variable name (letters, digits and '_', "
                "not starting with a digit); give the variable's name, not its value",
            )
        ],
    ),
    (
        "password-file-missing",
        SERVER.replace('password_env = "PW"', 'password_file = "nope"'),
        ENV,
        [
            (
                "servers[0].password_file",
                "cannot read {dir}/nope: No such file or directory",
            )
        ],
    ),
    (
        "password-file-is-a-directory",
        SERVER.replace('password_env = "PW"', 'password_file = "."'),
        ENV,
        [("servers[0].password_file", "cannot read {dir}: Is a directory")],
    ),
    (
        "tilde-path",
        SERVER + "ca_file = '~/ca.pem'\n",
        ENV,
        [("servers[0].ca_file", "'~' is not expanded here; write the full path")],
    ),
    (
        "ca-file-missing",
        SERVER + "ca_file = 'missing.pem'\n",
        ENV,
        [
            (
                "servers[0].ca_file",
                "cannot read {dir}/missing.pem: No such file or directory",
            )
        ],
    ),
    (
        "ca-file-with-verify-off",
        SERVER + "ca_file = 'ca.pem'\nverify_tls = false\n",
        ENV,
        [
            (
                "servers[0].verify_tls",
                "verify_tls = false conflicts with ca_file: ca_file makes "
                "verification work with a self-signed chain; remove verify_tls = false",
            )
        ],
    ),
    (
        "ca-file-with-fingerprint",
        "[defaults]\nca_file = 'ca.pem'\n"
        f"tls_fingerprint = 'sha256:{FINGERPRINT}'\n" + SERVER,
        ENV,
        [
            (
                "defaults.tls_fingerprint",
                "conflicts with ca_file: set ca_file (trust a CA) or tls_fingerprint "
                "(pin one certificate), not both",
            )
        ],
    ),
    (
        "fingerprint-format",
        SERVER
        + "tls_fingerprint = 'AB:CD'\n"
        + SERVER.replace("s1", "s2")
        + f"tls_fingerprint = 'sha1:{FINGERPRINT}'\n",
        ENV,
        [
            ("servers[0].tls_fingerprint", BAD_FINGERPRINT),
            ("servers[1].tls_fingerprint", BAD_FINGERPRINT),
        ],
    ),
    (
        "api-path-not-absolute",
        SERVER + "api_base = 'SKLM/rest'\nprogress_path = '/a b'\n",
        ENV,
        [
            (
                "servers[0].api_base",
                "expected an absolute URL path such as /SKLM/rest/v1 "
                "(no scheme, host, query or spaces)",
            ),
            (
                "servers[0].progress_path",
                "expected an absolute URL path such as /SKLM/rest/v1 "
                "(no scheme, host, query or spaces)",
            ),
        ],
    ),
    (
        "watcher-values",
        "[watcher]\nstate_dir = 3\njitter = 1.5\nlisten = '9109'\n"
        "drain_timeout = -1\noutbox_retention = '7d'\n" + SERVER,
        ENV,
        [
            ("watcher.state_dir", "expected a string, got integer"),
            ("watcher.jitter", "must be at least 0 and less than 1, got 1.5"),
            (
                "watcher.listen",
                "expected host:port, e.g. 127.0.0.1:9109 or [::1]:9109",
            ),
            ("watcher.drain_timeout", "must be 0 or more seconds, got -1"),
            ("watcher.outbox_retention", "expected a number of seconds, got string"),
        ],
    ),
    (
        "watcher-not-a-table",
        "watcher = 'x'\n" + SERVER,
        ENV,
        [("watcher", "expected a table, got string")],
    ),
    (
        "sink-missing-name-and-type",
        SERVER + "[[sinks]]\nurl = 'https://hooks.example.com/x'\n",
        ENV,
        [
            (
                "sinks[0].name",
                "missing required key 'name' (a unique sink name, e.g. name = \"ops\")",
            ),
            ("sinks[0].type", f"missing required key 'type' ({TYPES})"),
        ],
    ),
    (
        "sink-unknown-type",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'slak'\nurl = 'https://h/x'\n",
        ENV,
        [
            (
                "sinks[0].type",
                f"unknown sink type 'slak': expected {TYPES}; did you mean 'slack'?",
            )
        ],
    ),
    (
        "sink-type-that-is-a-url-is-not-echoed",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'https://hooks.slack.com/T0/B0/x'\n",
        ENV,
        [("sinks[0].type", f"unknown sink type: expected {TYPES}")],
    ),
    (
        "duplicate-sink-name",
        SERVER + "[[sinks]]\nname = 'log'\ntype = 'log'\n" * 2,
        ENV,
        [("sinks[1].name", "duplicate sink name 'log' (also sinks[0])")],
    ),
    (
        "webhook-without-url",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\n",
        ENV,
        [("sinks[0].url", "missing: a webhook sink needs url, url_env or url_file")],
    ),
    (
        "two-url-sources",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\nurl = 'https://h/x'\n"
        "url_env = 'HOOK'\n",
        ENV,
        [
            (
                "sinks[0].url_env",
                "conflicts with url: set only one of url, url_env and url_file",
            )
        ],
    ),
    (
        "slack-over-http",
        SERVER + "[[sinks]]\nname = 'chat'\ntype = 'slack'\nurl_env = 'SLACK'\n",
        {**ENV, "SLACK": "http://hooks.slack.com/services/T0/B0/x"},
        [
            (
                "sinks[0].url_env",
                "a Slack webhook URL must use https:// (allow_insecure_http = true "
                "only for a local test receiver)",
            )
        ],
    ),
    (
        "sink-url-with-credentials",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\n"
        "url = 'https://u:p@h.example.com/x'\n",
        ENV,
        [
            (
                "sinks[0].url",
                "the value is not a usable URL: it must not contain a user name or "
                "password before the host",
            )
        ],
    ),
    (
        "sink-url-from-env-not-a-url",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\nurl_env = 'HOOK'\n",
        {**ENV, "HOOK": "hooks.example.com/x"},
        [
            (
                "sinks[0].url_env",
                "the value of environment variable HOOK is not a usable URL: "
                "it must start with https:// (or http://)",
            )
        ],
    ),
    (
        "sink-url-file-missing",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\nurl_file = 'hook'\n",
        ENV,
        [("sinks[0].url_file", "cannot read {dir}/hook: No such file or directory")],
    ),
    (
        "secret-without-prefix",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\nurl = 'https://h/x'\n"
        "secret = 'hunter2'\n",
        ENV,
        [("sinks[0].secret", f"the value {NOT_WHSEC}")],
    ),
    (
        "secret-not-base64",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\nurl = 'https://h/x'\n"
        "secret_env = 'SIG'\n",
        {**ENV, "SIG": "whsec_not*base64"},
        [
            (
                "sinks[0].secret_env",
                "the value of environment variable SIG is not a Standard Webhooks "
                "secret: the part after 'whsec_' is not base64",
            )
        ],
    ),
    (
        "secret-too-short",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\nurl = 'https://h/x'\n"
        f"secret = '{SHORT_SECRET}'\n",
        ENV,
        [
            (
                "sinks[0].secret",
                "the value is too short: 3 bytes after base64 decoding; use at least "
                "16 random bytes (24 to 64 recommended)",
            )
        ],
    ),
    (
        "secret-rotation-list-one-unset",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\nurl = 'https://h/x'\n"
        "secret_env = ['NEW', 'OLD']\n",
        {**ENV, "NEW": GOOD_SECRET},
        [("sinks[0].secret_env[1]", "environment variable OLD is not set")],
    ),
    (
        "secret-list-wrong-items",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\nurl = 'https://h/x'\n"
        "secret_file = ['a', 7]\n",
        ENV,
        [("sinks[0].secret_file[1]", "expected a string, got integer")],
    ),
    (
        "log-sink-with-url-and-headers",
        SERVER + "[[sinks]]\nname = 'log'\ntype = 'log'\nurl = 'https://h/x'\n"
        "headers = { X-A = 'b' }\n",
        ENV,
        [
            (
                "sinks[0].url",
                "does not apply to a log sink (a log sink sends nothing over the "
                "network); remove it",
            ),
            (
                "sinks[0].headers",
                "does not apply to a log sink (a log sink sends nothing over the "
                "network); remove it",
            ),
        ],
    ),
    (
        "slack-sink-with-secret",
        SERVER + "[[sinks]]\nname = 'chat'\ntype = 'slack'\nurl = 'https://h/x'\n"
        f"secret = '{GOOD_SECRET}'\n",
        ENV,
        [
            (
                "sinks[0].secret",
                "does not apply to a slack sink (only webhook sinks are signed); "
                "remove it",
            )
        ],
    ),
    (
        "event-glob-matches-nothing",
        SERVER + "[[sinks]]\nname = 'log'\ntype = 'log'\n"
        "events = ['sklm.restore.*', 'sklm.restor.*', 'restore', 'x']\n",
        ENV,
        [
            (
                "sinks[0].events[1]",
                "pattern 'sklm.restor.*' matches no event type; "
                "did you mean 'sklm.restore.*'?",
            ),
            (
                "sinks[0].events[2]",
                "pattern 'restore' matches no event type; did you mean 'sklm.restore.*'?",
            ),
            ("sinks[0].events[3]", "pattern 'x' matches no event type"),
        ],
    ),
    (
        "events-not-a-list",
        SERVER + "[[sinks]]\nname = 'log'\ntype = 'log'\nevents = 'sklm.*'\n"
        "servers = []\n",
        ENV,
        [
            ("sinks[0].events", "expected a list of strings, got string"),
            (
                "sinks[0].servers",
                "must not be an empty list; leave the key out instead",
            ),
        ],
    ),
    (
        "server-glob-matches-nothing",
        SERVER
        + "[[sinks]]\nname = 'log'\ntype = 'log'\nservers = ['s11', 's*', 'zz']\n",
        ENV,
        [
            (
                "sinks[0].servers[0]",
                "pattern 's11' matches no configured server; did you mean 's1'?",
            ),
            ("sinks[0].servers[2]", "pattern 'zz' matches no configured server"),
        ],
    ),
    (
        "bad-headers",
        SERVER + "[[sinks]]\nname = 'ops'\ntype = 'webhook'\nurl = 'https://h/x'\n"
        "[sinks.headers]\n'Webhook-Signature' = 'x'\n'X-Count' = 3\n"
        "'Bad Name' = 'x'\n'X-Multi' = \"a\\r\\nInjected: 1\"\n",
        ENV,
        [
            (
                "sinks[0].headers.Webhook-Signature",
                "is set by sklm-watcher itself; remove it",
            ),
            ("sinks[0].headers.X-Count", "expected a string, got integer"),
            ("sinks[0].headers.Bad Name", "is not a valid HTTP header name"),
            (
                "sinks[0].headers.X-Multi",
                "contains a line break or control character",
            ),
        ],
    ),
    (
        "sink-numbers",
        SERVER + "[[sinks]]\nname = 'log'\ntype = 'log'\ntimeout = 0\n"
        "max_age = '1d'\nmin_interval = -1\n",
        ENV,
        [
            ("sinks[0].timeout", "must be more than 0 seconds, got 0"),
            ("sinks[0].max_age", "expected a number of seconds, got string"),
            ("sinks[0].min_interval", "must be 0 or more seconds, got -1"),
        ],
    ),
    # -- pagerduty, teams, email, syslog (issue 15)
    (
        "pagerduty-without-routing-key",
        SERVER + "[[sinks]]\nname = 'pager'\ntype = 'pagerduty'\n",
        ENV,
        [
            (
                "sinks[0].routing_key",
                "missing: a pagerduty sink needs routing_key_env, routing_key_file "
                "or routing_key (the integration key of the service's Events API v2 "
                "integration)",
            )
        ],
    ),
    (
        "pagerduty-two-routing-key-sources",
        SERVER + "[[sinks]]\nname = 'pager'\ntype = 'pagerduty'\n"
        "routing_key_env = 'PD'\nrouting_key_file = 'pd-key'\n",
        ENV,
        [
            (
                "sinks[0].routing_key_file",
                "conflicts with routing_key_env: set only one of routing_key, "
                "routing_key_env and routing_key_file",
            ),
        ],
    ),
    (
        "pagerduty-routing-key-that-is-a-url-is-not-echoed",
        SERVER + "[[sinks]]\nname = 'pager'\ntype = 'pagerduty'\n"
        "routing_key_env = 'PD'\n",
        {**ENV, "PD": "https://events.pagerduty.com/v2/enqueue?k=R0UT1NG"},
        [
            (
                "sinks[0].routing_key_env",
                "the value of environment variable PD is not an integration key "
                "(letters and digits, e.g. 32 characters; not a URL)",
            )
        ],
    ),
    (
        "pagerduty-http-url-and-webhook-keys",
        SERVER + "[[sinks]]\nname = 'pager'\ntype = 'pagerduty'\n"
        "routing_key_env = 'PD'\nurl = 'http://relay.example/pd'\n"
        f"secret = '{GOOD_SECRET}'\nhost = 'h'\n",
        {**ENV, "PD": "0123456789abcdef0123456789abcdef"},
        [
            (
                "sinks[0].secret",
                "does not apply to a pagerduty sink (only webhook sinks are "
                "signed); remove it",
            ),
            (
                "sinks[0].host",
                "does not apply to a pagerduty sink (a pagerduty sink posts to its "
                "URL; host, port, transport and TLS keys are for email and syslog "
                "sinks); remove it",
            ),
            (
                "sinks[0].url",
                "a PagerDuty URL must use https:// (the routing key is in the body) "
                "(allow_insecure_http = true only for a local test receiver)",
            ),
        ],
    ),
    (
        "teams-without-url-and-with-a-routing-key",
        SERVER + "[[sinks]]\nname = 'teams'\ntype = 'teams'\nrouting_key = 'k'\n"
        "from = 'a@example.com'\n",
        ENV,
        [
            (
                "sinks[0].routing_key",
                "does not apply to a teams sink (only pagerduty sinks take a "
                "routing key); remove it",
            ),
            (
                "sinks[0].from",
                "does not apply to a teams sink (only email sinks take SMTP "
                "credentials and addresses); remove it",
            ),
            ("sinks[0].url", "missing: a teams sink needs url, url_env or url_file"),
        ],
    ),
    (
        "teams-http-url",
        SERVER + "[[sinks]]\nname = 'teams'\ntype = 'teams'\nurl_env = 'TEAMS'\n",
        {**ENV, "TEAMS": "http://prod.westus.logic.example/workflows/x?sig=S3CR3T"},
        [
            (
                "sinks[0].url_env",
                "a Teams webhook URL must use https:// (allow_insecure_http = true "
                "only for a local test receiver)",
            )
        ],
    ),
    (
        "email-missing-host-from-to",
        SERVER + "[[sinks]]\nname = 'mail'\ntype = 'email'\n",
        ENV,
        [
            ("sinks[0].host", "missing: an email sink needs the SMTP server host"),
            (
                "sinks[0].from",
                "missing: an email sink needs from (the sender, e.g. from = "
                '"sklm-watcher@example.com")',
            ),
            (
                "sinks[0].to",
                "missing: an email sink needs to (one address or a list, e.g. "
                'to = ["ops@example.com"])',
            ),
        ],
    ),
    (
        "email-bad-values",
        SERVER + "[[sinks]]\nname = 'mail'\ntype = 'email'\n"
        "host = 'smtp://mail.example.com'\nport = 70000\ntransport = 'ssl'\n"
        "from = 'Ops <ops@example.com>'\nto = ['ok@example.com', 'nobody']\n"
        "url = 'https://h/x'\nfacility = 'local0'\n",
        ENV,
        [
            (
                "sinks[0].host",
                "expected a host name or IP address only (e.g. smtp.example.com), "
                "without scheme, user, path or spaces",
            ),
            ("sinks[0].port", "must be a port from 1 to 65535, got 70000"),
            (
                "sinks[0].from",
                "is not an e-mail address: write the bare address, e.g. "
                "ops@example.com (no display name, one address per item)",
            ),
            (
                "sinks[0].to[1]",
                "is not an e-mail address: write the bare address, e.g. "
                "ops@example.com (no display name, one address per item)",
            ),
            (
                "sinks[0].url",
                "does not apply to an email sink (an email sink connects to host "
                "and port, not to a URL); remove it",
            ),
            (
                "sinks[0].facility",
                "does not apply to an email sink (only syslog sinks take facility "
                "and app_name); remove it",
            ),
            (
                "sinks[0].transport",
                "unknown transport 'ssl': expected starttls, tls or none",
            ),
        ],
    ),
    (
        "email-credentials-half-and-in-the-clear",
        SERVER + "[[sinks]]\nname = 'mail'\ntype = 'email'\nhost = 'mail.example.com'\n"
        "from = 'w@example.com'\nto = 'ops@example.com'\nusername = 'w'\n"
        "[[sinks]]\nname = 'mail2'\ntype = 'email'\nhost = 'mail.example.com'\n"
        "transport = 'none'\nverify_tls = false\nfrom = 'w@example.com'\n"
        "to = 'ops@example.com'\npassword_env = 'SMTP'\n",
        {**ENV, "SMTP": "smtp-pw"},
        [
            (
                "sinks[0].password",
                "missing: a username needs password_env, password_file or "
                "password (SMTP AUTH takes both)",
            ),
            (
                "sinks[1].verify_tls",
                "applies only with TLS; transport = 'none' sends in the clear",
            ),
            (
                "sinks[1].password_env",
                "a password needs a username (SMTP AUTH takes both)",
            ),
            (
                "sinks[1].transport",
                "transport = 'none' would send the SMTP password unencrypted to a "
                "non-loopback host; use starttls or tls",
            ),
        ],
    ),
    (
        "email-ca-file-missing",
        SERVER + "[[sinks]]\nname = 'mail'\ntype = 'email'\nhost = '::1'\n"
        "ca_file = 'nope.pem'\nfrom = 'w@example.com'\nto = 'ops@example.com'\n",
        ENV,
        [
            (
                "sinks[0].ca_file",
                "cannot read {dir}/nope.pem: No such file or directory",
            )
        ],
    ),
    (
        "syslog-missing-host-bad-facility-and-app-name",
        SERVER + "[[sinks]]\nname = 'siem'\ntype = 'syslog'\nfacility = 'locl0'\n"
        "app_name = 'sklm watcher'\nport = '514'\nusername = 'u'\n",
        ENV,
        [
            (
                "sinks[0].app_name",
                "must be 1 to 48 printable ASCII characters without spaces "
                "(RFC 5424 APP-NAME)",
            ),
            ("sinks[0].port", "expected a port number, got string"),
            (
                "sinks[0].username",
                "does not apply to a syslog sink (only email sinks take SMTP "
                "credentials and addresses); remove it",
            ),
            (
                "sinks[0].host",
                "missing: a syslog sink needs the syslog relay or SIEM host",
            ),
            (
                "sinks[0].facility",
                "unknown facility 'locl0': expected an RFC 5424 name such as "
                "local0 .. local7, auth, daemon or user; did you mean 'local0'?",
            ),
        ],
    ),
    (
        "syslog-host-with-port-and-tls-keys-on-udp",
        SERVER + "[[sinks]]\nname = 'siem'\ntype = 'syslog'\n"
        "host = 'siem.example.com:6514'\ntransport = 'udp'\nca_file = 'ca.pem'\n",
        ENV,
        [
            (
                "sinks[0].host",
                "write the host name only; the port goes in the port key",
            ),
            (
                "sinks[0].ca_file",
                "applies only with TLS; transport = 'udp' sends in the clear",
            ),
        ],
    ),
    (
        "log-sink-with-routing-key-and-host",
        SERVER + "[[sinks]]\nname = 'log'\ntype = 'log'\nrouting_key_env = 'PD'\n"
        "host = 'h'\n",
        ENV,
        [
            (
                "sinks[0].routing_key_env",
                "does not apply to a log sink (a log sink sends nothing over the "
                "network); remove it",
            ),
            (
                "sinks[0].host",
                "does not apply to a log sink (a log sink sends nothing over the "
                "network); remove it",
            ),
        ],
    ),
    (
        "sinks-not-an-array",
        SERVER + "[sinks]\nname = 'x'\n",
        ENV,
        [("sinks", "expected an array of tables ([[sinks]]), got table")],
    ),
]


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [pytest.param(text, env, exp, id=name) for name, text, env, exp in BROKEN],
)
def test_broken_file_names_exact_problems(
    tmp_path: Path,
    text: str,
    environ: dict[str, str],
    expected: list[tuple[str, str]],
) -> None:
    """Each broken file raises ConfigError with exactly the expected (key, reason) list."""
    make_ca_file(tmp_path)  # for cases that name ca.pem but are broken elsewhere
    path = write(tmp_path, text)
    want = [(key, reason.replace("{dir}", str(tmp_path))) for key, reason in expected]
    assert problems_of(path, environ) == want


def test_broken_table_is_large_enough() -> None:
    """The table of broken files covers at least 25 distinct cases."""
    assert len({name for name, *_ in BROKEN}) == len(BROKEN) >= 25


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """A file with problems in every table reports all of them, grouped by table."""
    text = """
[[sinks]]
name = "ops"
type = "webhok"

[[servers]]
name = "a"
url = "http://a.example.com"
idle_intervall = 3

[defaults]
password_env = "MISSING"
timeout = 0

[[servers]]
name = "a"
url = "https://b.example.com/path"

[watcher]
jitter = "lots"
"""
    assert problems_of(write(tmp_path, text), {}) == [
        ("watcher.jitter", "expected a fraction such as 0.1, got string"),
        ("defaults.timeout", "must be more than 0 seconds, got 0"),
        ("defaults.password_env", "environment variable MISSING is not set"),
        (
            "servers[0].idle_intervall",
            "unknown key 'idle_intervall'; did you mean 'idle_interval'?",
        ),
        ("servers[0].url", HTTP_SERVER),
        ("servers[1].name", "duplicate server name 'a' (also servers[0])"),
        ("servers[1].url", URL_PATH),
        (
            "sinks[0].type",
            f"unknown sink type 'webhok': expected {TYPES}; did you mean 'webhook'?",
        ),
    ]


def test_error_message_lists_every_problem_with_the_source(tmp_path: Path) -> None:
    """str(ConfigError) names the file, the count and each key with its reason."""
    path = write(tmp_path, "[defaults]\ntimeout = 'x'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value) == (
        f"2 configuration problems in {path}:\n"
        "  - defaults.timeout: expected a number of seconds, got string\n"
        "  - servers: no servers: add at least one [[servers]] table with name and url"
    )


def test_unreadable_file_is_a_file_level_problem(tmp_path: Path) -> None:
    """A missing configuration file is one problem with the empty key."""
    path = tmp_path / "absent.toml"
    assert problems_of(path, {}) == [
        ("", f"cannot read {path}: No such file or directory")
    ]


def test_file_that_is_not_utf8_is_a_file_level_problem(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported as a TOML problem, not a crash."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[watcher]\nstate_dir = "caf\xe9"\n')
    assert problems_of(path, {}) == [("", "not valid TOML: the file is not UTF-8 text")]


def test_ca_file_without_certificate_is_a_problem(tmp_path: Path) -> None:
    """A ca_file that holds no PEM certificate is caught at load, not at first poll."""
    (tmp_path / "ca.pem").write_text("not a certificate\n", encoding="utf-8")
    path = write(tmp_path, SERVER + "ca_file = 'ca.pem'\n")
    assert problems_of(path, ENV) == [
        (
            "servers[0].ca_file",
            f"{tmp_path}/ca.pem holds no PEM certificate "
            "(expected -----BEGIN CERTIFICATE-----)",
        )
    ]


def test_empty_secret_file_is_a_problem(tmp_path: Path) -> None:
    """A password file holding only a newline is empty, and says so."""
    (tmp_path / "pw").write_text("\n", encoding="utf-8")
    path = write(
        tmp_path, SERVER.replace('password_env = "PW"', "password_file = 'pw'")
    )
    assert problems_of(path, {}) == [
        ("servers[0].password_file", f"{tmp_path}/pw is empty")
    ]


def test_defaults_problem_is_reported_once_for_many_servers(tmp_path: Path) -> None:
    """An unset variable in [defaults] is one problem, not one per server."""
    text = "[defaults]\npassword_env = 'PW'\n" + "".join(
        f"[[servers]]\nname = 's{i}'\nurl = 'https://s{i}.example.com'\n"
        for i in range(3)
    )
    assert problems_of(write(tmp_path, text), {}) == [
        ("defaults.password_env", "environment variable PW is not set")
    ]


def test_defaults_not_inherited_are_not_resolved(tmp_path: Path) -> None:
    """A [defaults] password no server uses is not looked up, so it cannot fail."""
    text = "[defaults]\npassword_env = 'UNSET'\n" + SERVER.replace(
        'password_env = "PW"', "password = 'x'"
    )
    config = load_config(write(tmp_path, text), {})
    assert config.servers[0].password == Secret("x")


def test_valid_file_loads_with_defaults_merged(tmp_path: Path) -> None:
    """A full file loads to the expected frozen objects, [defaults] under server keys."""
    ca_file = make_ca_file(tmp_path)
    (tmp_path / "pw2").write_text("second-pw\n\n", encoding="utf-8")
    text = f"""
[watcher]
state_dir = "state"
audit_log = "/var/log/w/events.jsonl"
listen = "127.0.0.1:9109"
drain_timeout = 0
jitter = 0

[defaults]
username = "watcher"
password_env = "PW"
ca_file = "ca.pem"
idle_interval = 60
timeout = 5.5

[[servers]]
name = "prod-1"
url = "https://PROD1.example.com:9443/"

[[servers]]
name = "prod-2"
url = "https://prod2.example.com"
password_file = "pw2"
tls_fingerprint = "SHA256:{":".join(["AB"] * 32)}"
idle_interval = 15.0
api_base = "/GKLM/rest/v1/"
progress_path = "/GKLM/rest/v1/ckms/restore/progress"
burst_polls = 0

[[servers]]
name = "lab"
url = "http://127.0.0.1:8080"
allow_insecure_http = true

[[sinks]]
name = "ops"
type = "webhook"
url_env = "HOOK"
secret = ["{GOOD_SECRET}", "{GOOD_SECRET.replace("A", "B")}"]
events = ["sklm.restore.*"]
servers = ["prod-*"]
headers = {{ X-Team = "storage" }}
timeout = 3
max_age = 600

[[sinks]]
name = "chat"
type = "slack"
url = "https://hooks.slack.com/services/T0/B0/xyz"

[[sinks]]
name = "log"
type = "log"
min_interval = 0.5
"""
    path = write(tmp_path, text)
    config = load_config(path, {"PW": "first-pw", "HOOK": "https://h.example.com/x"})
    expected = Config(
        watcher=WatcherSettings(
            state_dir=tmp_path / "state",
            audit_log=Path("/var/log/w/events.jsonl"),
            listen=Listen("127.0.0.1", 9109),
            drain_timeout=0.0,
            jitter=0.0,
        ),
        servers=(
            ServerConfig(
                name="prod-1",
                url="https://PROD1.example.com:9443",
                username="watcher",
                password=Secret("first-pw"),
                ca_file=ca_file,
                idle_interval=60.0,
                timeout=5.5,
            ),
            ServerConfig(
                name="prod-2",
                url="https://prod2.example.com",
                username="watcher",
                password=Secret("second-pw\n"),
                tls_fingerprint=FINGERPRINT,
                api_base="/GKLM/rest/v1",
                progress_path="/GKLM/rest/v1/ckms/restore/progress",
                idle_interval=15.0,
                timeout=5.5,
                burst_polls=0,
            ),
            ServerConfig(
                name="lab",
                url="http://127.0.0.1:8080",
                username="watcher",
                password=Secret("first-pw"),
                ca_file=ca_file,
                allow_insecure_http=True,
                idle_interval=60.0,
                timeout=5.5,
            ),
        ),
        sinks=(
            SinkConfig(
                name="ops",
                type="webhook",
                url=Secret("https://h.example.com/x"),
                secrets=(Secret(GOOD_SECRET), Secret(GOOD_SECRET.replace("A", "B"))),
                events=("sklm.restore.*",),
                servers=("prod-*",),
                headers={"X-Team": "storage"},
                timeout=3.0,
                max_age=600.0,
            ),
            SinkConfig(
                name="chat",
                type="slack",
                url=Secret("https://hooks.slack.com/services/T0/B0/xyz"),
                events=SLACK_DEFAULT_EVENTS,
                min_interval=1.0,
            ),
            SinkConfig(name="log", type="log", min_interval=0.5),
        ),
        source=path,
        warnings=(
            "sinks[0].secret: the signing secret is written in the configuration "
            "file; prefer secret_env or secret_file (a systemd credential)",
        ),
    )
    assert config == expected
    assert isinstance(config.sinks[0].headers, MappingProxyType)
    assert config.summary() == (
        f"3 servers, 3 sinks (webhook, slack, log); state in {tmp_path / 'state'}"
    )


def test_server_trust_choice_replaces_the_defaults_trust(tmp_path: Path) -> None:
    """A server's ca_file, pin or verify_tls = false takes nothing of that group from [defaults]."""
    make_ca_file(tmp_path)
    make_ca_file(tmp_path, "other.pem")
    text = (
        f"[defaults]\npassword = 'x'\ntls_fingerprint = 'sha256:{FINGERPRINT}'\n"
        "[[servers]]\nname = 'pinned'\nurl = 'https://a'\n"
        "[[servers]]\nname = 'ca'\nurl = 'https://b'\nca_file = 'other.pem'\n"
        "[[servers]]\nname = 'off'\nurl = 'https://c'\nverify_tls = false\n"
        "[[servers]]\nname = 'on'\nurl = 'https://d'\nverify_tls = true\n"
    )
    servers = load_config(write(tmp_path, text), {}).servers
    trust = [(s.ca_file, s.tls_fingerprint, s.verify_tls) for s in servers]
    assert trust == [
        (None, FINGERPRINT, True),
        (tmp_path / "other.pem", None, True),
        (None, None, False),
        (None, FINGERPRINT, True),
    ]


def test_server_password_source_replaces_the_defaults_one(tmp_path: Path) -> None:
    """A server's password_file wins over [defaults].password_env without a conflict."""
    (tmp_path / "pw").write_text("from-file\n", encoding="utf-8")
    text = "[defaults]\npassword_env = 'PW'\n" + SERVER.replace(
        'password_env = "PW"', "password_file = 'pw'"
    )
    config = load_config(write(tmp_path, text), ENV)
    assert config.servers[0].password == Secret("from-file")


def test_relative_secret_files_resolve_under_credentials_directory(
    tmp_path: Path,
) -> None:
    """With CREDENTIALS_DIRECTORY set, relative *_file paths resolve there; ca_file and state_dir do not."""
    creds = tmp_path / "creds"
    conf = tmp_path / "etc"
    creds.mkdir()
    conf.mkdir()
    (creds / "sklm-password").write_text("cred-pw\n", encoding="utf-8")
    (creds / "slack-url").write_text(
        "https://hooks.slack.com/services/T/B/c\r\n", encoding="utf-8"
    )
    (creds / "webhook-secret").write_text(GOOD_SECRET, encoding="utf-8")
    (conf / "sklm-password").write_text("wrong\n", encoding="utf-8")
    absolute = tmp_path / "abs-pw"
    absolute.write_text("abs-pw", encoding="utf-8")
    make_ca_file(conf)
    text = f"""
[watcher]
state_dir = "state"
[[servers]]
name = "a"
url = "https://a.example.com"
password_file = "sklm-password"
ca_file = "ca.pem"
[[servers]]
name = "b"
url = "https://b.example.com"
password_file = "{absolute}"
[[sinks]]
name = "chat"
type = "slack"
url_file = "slack-url"
[[sinks]]
name = "ops"
type = "webhook"
url = "https://h.example.com/x"
secret_file = "webhook-secret"
"""
    config = load_config(
        write(conf, text, "config.toml"), {"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert config.watcher.state_dir == conf / "state"
    assert [s.password for s in config.servers] == [Secret("cred-pw"), Secret("abs-pw")]
    assert config.servers[0].ca_file == conf / "ca.pem"
    assert config.sinks[0].url == Secret("https://hooks.slack.com/services/T/B/c")
    assert config.sinks[1].secrets == (Secret(GOOD_SECRET),)


def test_relative_secret_files_resolve_beside_the_config_without_credentials(
    tmp_path: Path,
) -> None:
    """Without CREDENTIALS_DIRECTORY, a relative password_file is beside the config file."""
    (tmp_path / "pw").write_text("beside\n", encoding="utf-8")
    path = write(
        tmp_path, SERVER.replace('password_env = "PW"', "password_file = 'pw'")
    )
    assert load_config(path, {}).servers[0].password == Secret("beside")


def test_environ_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an environ argument, *_env keys read os.environ."""
    monkeypatch.setenv("PW", "from-os")
    config = load_config(write(tmp_path, SERVER))
    assert config.servers[0].password == Secret("from-os")


def test_environment_values_are_taken_exactly(tmp_path: Path) -> None:
    """A password from the environment keeps its whitespace (only files drop a newline)."""
    config = load_config(write(tmp_path, SERVER), {"PW": " pw\n"})
    assert config.servers[0].password == Secret(" pw\n")


def test_fingerprint_is_normalised(tmp_path: Path) -> None:
    """A colon-separated uppercase pin becomes lowercase hex without colons."""
    pin = ":".join(f"{b:02X}" for b in range(32))
    path = write(tmp_path, SERVER + f"tls_fingerprint = 'sha256:{pin}'\n")
    assert load_config(path, ENV).servers[0].tls_fingerprint == bytes(range(32)).hex()


def test_slack_min_interval_can_be_overridden(tmp_path: Path) -> None:
    """A Slack sink's min_interval defaults to 1.0 but an explicit value wins, events too."""
    text = SERVER + (
        "[[sinks]]\nname = 'chat'\ntype = 'slack'\nurl = 'https://h/x'\n"
        "min_interval = 0\nevents = ['sklm.*']\n"
    )
    sink = load_config(write(tmp_path, text), ENV).sinks[0]
    assert (sink.min_interval, sink.events) == (0.0, ("sklm.*",))
    assert sink.wants("sklm.restore.phase", "s1")


def test_dangerous_settings_load_with_warnings(tmp_path: Path) -> None:
    """verify_tls = false, inline passwords and http:// to other hosts load, each with a warning."""
    text = """
[defaults]
password = "inline"
[[servers]]
name = "off"
url = "https://off.example.com"
verify_tls = false
[[servers]]
name = "lab"
url = "http://lab.example.com:8080"
allow_insecure_http = true
[[servers]]
name = "local"
url = "http://localhost:8080"
allow_insecure_http = true
[[sinks]]
name = "relay"
type = "webhook"
url = "http://relay.example.com/hook"
[[sinks]]
name = "loop"
type = "webhook"
url = "http://127.0.0.1:8000/hook"
[[sinks]]
name = "chat"
type = "slack"
url = "http://[::1]:9000/slack"
allow_insecure_http = true
"""
    config = load_config(write(tmp_path, text), {})
    assert config.warnings == (
        "defaults.password: the password is written in the configuration file; "
        "prefer password_env or password_file (a systemd credential)",
        "servers[0] (off): verify_tls = false: TLS CERTIFICATE VERIFICATION IS OFF; "
        "anyone on the network path can impersonate the server and take the SKLM "
        "password; set ca_file or tls_fingerprint instead",
        "servers[1] (lab): http:// to a non-loopback host: the SKLM password and "
        "session id cross the network unencrypted",
        "sinks[0].url: the URL uses http:// to a non-loopback host: events cross "
        "the network unencrypted",
    )


def test_no_sinks_loads_with_a_warning(tmp_path: Path) -> None:
    """A file without sinks is valid; the warning says events only reach the audit log."""
    config = load_config(write(tmp_path, SERVER), ENV)
    assert config.sinks == ()
    assert config.warnings == (
        "no [[sinks]]: events go only to the audit log; add a webhook or slack sink "
        "to be told about restores",
    )
    assert config.summary() == "1 server, no sinks; state in /var/lib/sklm-watcher"


KNOWN_SECRETS = (
    "pw-inline-7Q2",
    "pw-env-8R3",
    "pw-file-9S4",
    "hooks.slack.example/T000/B000/slacksecret5T5",
    "url-file-secret6U6",
    "hdr-value-7V7",
    "whsec_c2VjcmV0LXRoYXQtaXMtbm90LWxvbmc=",
    GOOD_SECRET,
)


def _assert_no_secret(text: str) -> None:
    for secret in KNOWN_SECRETS:
        assert secret not in text
    for part in ("7Q2", "8R3", "9S4", "5T5", "6U6", "7V7"):
        assert part not in text


def test_secrets_never_appear_in_problems_warnings_or_repr(tmp_path: Path) -> None:
    """Known secrets from every source appear in no error, warning or repr, broken or valid."""
    (tmp_path / "pw").write_text("pw-file-9S4\n", encoding="utf-8")
    (tmp_path / "hook").write_text(
        "http://u:url-file-secret6U6@h/x\n", encoding="utf-8"
    )
    environ = {
        "PW": "pw-env-8R3",
        "SLACK": "http://hooks.slack.example/T000/B000/slacksecret5T5",
        "SIG": "whsec_c2VjcmV0LXRoYXQtaXMtbm90LWxvbmc=",
    }
    broken = """
[defaults]
password = "pw-inline-7Q2"
password_env = "PW"
[[servers]]
name = "a"
url = "https://admin:pw-inline-7Q2@a.example.com"
password_file = "pw"
[[servers]]
name = "b"
url = "http://b.example.com/pw-env-8R3?pw-file-9S4"
[[sinks]]
name = "chat"
type = "slack"
url_env = "SLACK"
[[sinks]]
name = "ops"
type = "webhook"
url_file = "hook"
secret_env = ["SIG", "PW"]
headers = { Authorization = "hdr-value-7V7\\n" }
[[sinks]]
name = "x"
type = "hooks.slack.example/T000/B000/slacksecret5T5"
secret = "pw-inline-7Q2"
"""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, broken), environ)
    assert len(caught.value.problems) >= 8
    _assert_no_secret(str(caught.value))
    _assert_no_secret(repr(caught.value.problems))

    valid = f"""
[defaults]
password = "pw-inline-7Q2"
verify_tls = false
[[servers]]
name = "a"
url = "https://a.example.com"
password_file = "pw"
[[servers]]
name = "b"
url = "https://b.example.com"
password_env = "PW"
[[servers]]
name = "c"
url = "http://c.example.com"
allow_insecure_http = true
[[sinks]]
name = "chat"
type = "slack"
url = "https://hooks.slack.example/T000/B000/slacksecret5T5"
[[sinks]]
name = "ops"
type = "webhook"
url = "http://relay.example/url-file-secret6U6"
secret = ["{GOOD_SECRET}"]
headers = {{ Authorization = "hdr-value-7V7" }}
"""
    config = load_config(write(tmp_path, valid), environ)
    assert config.servers[1].password.reveal() == "pw-env-8R3"
    assert config.sinks[1].headers["Authorization"] == "hdr-value-7V7"
    # Five, and since issue 11 the inline signing secret's.
    assert len(config.warnings) == 6
    _assert_no_secret(repr(config))
    _assert_no_secret(str(config))
    _assert_no_secret("\n".join(config.warnings))
    _assert_no_secret(config.summary())


def _example_environ() -> dict[str, str]:
    return {
        "SKLM_PASSWORD": "example-password",
        "SKLM_WATCHER_WEBHOOK_SECRET": GOOD_SECRET,
        "SKLM_WATCHER_SLACK_URL": "https://hooks.slack.com/services/T0/B0/x",
    }


def test_minimal_example_loads(tmp_path: Path) -> None:
    """config/minimal.toml loads as shipped: one server, one webhook, no warnings."""
    config = load_config(REPO / "config" / "minimal.toml", _example_environ())
    assert [s.name for s in config.servers] == ["sklm-prod-1"]
    assert config.servers[0].password == Secret("example-password")
    assert [(s.name, s.type) for s in config.sinks] == [("ops", "webhook")]
    assert config.warnings == ()


def test_reference_example_loads(tmp_path: Path) -> None:
    """config/reference.toml loads with its contract values; only ca_file is pointed at a real CA."""
    text = (REPO / "config" / "reference.toml").read_text(encoding="utf-8")
    contract_ca = "/etc/sklm-watcher/sklm-ca.pem"
    assert text.count(f'"{contract_ca}"') == 1
    ca_file = make_ca_file(tmp_path)
    path = write(tmp_path, text.replace(contract_ca, str(ca_file)))
    config = load_config(path, _example_environ())
    assert config.watcher == WatcherSettings()
    assert config.servers == (
        ServerConfig(
            name="sklm-prod-1",
            url="https://sklm1.example.com:9443",
            password=Secret("example-password"),
            ca_file=ca_file,
        ),
    )
    assert [(s.name, s.type, s.events) for s in config.sinks] == [
        ("ops", "webhook", ("sklm.restore.*",)),
        ("chat", "slack", SLACK_DEFAULT_EVENTS),
    ]
    assert config.sinks[0].secrets == (Secret(GOOD_SECRET),)
    assert config.warnings == ()


def test_reference_example_documents_every_key() -> None:
    """Every key load_config accepts appears in config/reference.toml, set or commented."""
    from watcher import configfile as module

    text = (REPO / "config" / "reference.toml").read_text(encoding="utf-8")
    documented = set(re.findall(r"^#? ?([a-z_]+) = ", text, flags=re.MULTILINE))
    accepted = (
        set(module._SERVER_TABLE_CHECKS)
        | set(module._SINK_CHECKS)
        | set(module._WATCHER_CHECKS)
    )
    assert accepted - documented == set()


def test_service_example_loads_with_systemd_credentials(tmp_path: Path) -> None:
    """config/service.toml loads with secrets from $CREDENTIALS_DIRECTORY."""
    text = (REPO / "config" / "service.toml").read_text(encoding="utf-8")
    contract_ca = "/etc/sklm-watcher/sklm-ca.pem"
    assert text.count(f'"{contract_ca}"') == 1
    ca_file = make_ca_file(tmp_path)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "sklm-password").write_text("cred-password\n", encoding="utf-8")
    (credentials / "webhook-secret").write_text(GOOD_SECRET + "\n", encoding="utf-8")
    path = write(tmp_path, text.replace(contract_ca, str(ca_file)))
    config = load_config(path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert [s.name for s in config.servers] == ["sklm-prod-1", "sklm-prod-2"]
    assert {s.password.reveal() for s in config.servers} == {"cred-password"}
    assert config.sinks[0].secrets == (Secret(GOOD_SECRET),)
    assert config.watcher.listen == Listen("127.0.0.1", 9464)
    assert config.warnings == ()


@pytest.mark.parametrize("value", ["[::1:9109", "127.0.0.1:²", "127.0.0.1:"])
def test_a_malformed_listen_is_one_problem(tmp_path: Path, value: str) -> None:
    """Unbalanced brackets or a port int() reads but is no port: one problem, no crash."""
    path = write(tmp_path, f"[watcher]\nlisten = {value!r}\n" + SERVER)
    assert problems_of(path, ENV) == [
        ("watcher.listen", "expected host:port, e.g. 127.0.0.1:9109 or [::1]:9109")
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[::1]:9109", Listen("::1", 9109)),
        (" 127.0.0.1:0 ", Listen("127.0.0.1", 0)),
        ("status.localhost:9109", Listen("status.localhost", 9109)),
    ],
)
def test_listen_is_parsed_once_into_a_listen(
    tmp_path: Path, value: str, expected: Listen
) -> None:
    """``[watcher] listen`` loads as a typed Listen (space around it ignored)."""
    config = load_config(
        write(tmp_path, f"[watcher]\nlisten = {value!r}\n" + SERVER), ENV
    )
    assert config.watcher.listen == expected
