"""``[watcher]``'s cluster keys (issue 13): store_url, node_name, lease."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.unit.test_configfile import ENV, SERVER, problems_of, write
from watcher.config import Secret, WatcherSettings
from watcher.configfile import load_config, load_config_lenient
from watcher.errors import ConfigError

#: A URL with a password in it: it must never show up in a message.
STORE_URL = (
    "postgresql://watcher:pg-pw-93f1@pg-host-7.example.net:5432/sklm_watcher"
    "?sslmode=verify-full"
)
PASSWORD = "pg-pw-93f1"


def watcher_table(tmp_path: Path, body: str) -> Path:
    """A config whose ``[watcher]`` table is ``body`` (plus one server)."""
    return write(tmp_path, f"[watcher]\n{body}\n" + SERVER)


def no_secret_in(error: ConfigError | None, warnings: tuple[str, ...] = ()) -> None:
    """Neither the URL nor its password appears in any reason, warning or text."""
    texts = [*warnings]
    if error is not None:
        texts += [str(error), *(p.reason for p in error.problems)]
    for text in texts:
        assert PASSWORD not in text
        assert "pg-host-7" not in text


def test_without_store_url_nothing_changes(tmp_path: Path) -> None:
    """No store key: SQLite as before, no node name filled in, not a cluster."""
    settings = load_config(watcher_table(tmp_path, ""), ENV).watcher
    assert settings.store_url is None
    assert settings.is_cluster is False
    assert settings.node_name == ""
    assert settings.lease == 15.0
    assert settings == WatcherSettings()


def test_store_url_from_env_with_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the environment: a Secret; node_name defaults to the host name, lease 15."""
    monkeypatch.setattr(socket, "gethostname", lambda: "watch-host-1")
    path = watcher_table(tmp_path, 'store_url_env = "STORE"')
    config = load_config(path, {**ENV, "STORE": STORE_URL})
    settings = config.watcher
    assert settings.store_url == Secret(STORE_URL)
    assert settings.is_cluster is True
    assert settings.node_name == "watch-host-1"
    assert settings.lease == 15.0
    assert PASSWORD not in repr(settings)
    no_secret_in(None, config.warnings)
    assert not any("store_url" in w for w in config.warnings)


def test_store_url_from_a_credential_file(tmp_path: Path) -> None:
    """A relative store_url_file is read from $CREDENTIALS_DIRECTORY (newline dropped)."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "store-url").write_text(STORE_URL + "\n", encoding="utf-8")
    path = watcher_table(
        tmp_path, 'store_url_file = "store-url"\nnode_name = "n1"\nlease = 2'
    )
    env = {**ENV, "CREDENTIALS_DIRECTORY": str(credentials)}
    settings = load_config(path, env).watcher
    assert settings.store_url == Secret(STORE_URL)
    assert settings.node_name == "n1"
    assert settings.lease == 2.0


def test_postgres_scheme_alias_is_accepted(tmp_path: Path) -> None:
    """libpq takes postgres:// as well as postgresql://."""
    url = "postgres:///sklm?host=/run/postgresql"
    path = watcher_table(tmp_path, f'store_url = "{url}"\nnode_name = "n1"')
    assert load_config(path, ENV).watcher.store_url == Secret(url)


def test_an_inline_store_url_loads_with_a_warning(tmp_path: Path) -> None:
    """Written in the file: accepted, and the warning names the key, never the URL."""
    path = watcher_table(tmp_path, f'store_url = "{STORE_URL}"\nnode_name = "n1"')
    config = load_config(path, ENV)
    assert config.watcher.store_url == Secret(STORE_URL)
    assert (
        "watcher.store_url: the store URL is written in the configuration file; "
        "prefer store_url_env or store_url_file (a systemd credential)"
    ) in config.warnings
    no_secret_in(None, config.warnings)


@pytest.mark.parametrize(
    ("body", "environ", "expected"),
    [
        (
            'store_url = "https://watcher:pg-pw-93f1@pg-host-7.example.net/x"',
            {},
            [
                (
                    "watcher.store_url",
                    "the value is not a PostgreSQL URL: it must start with "
                    "postgresql:// (or postgres://), e.g. "
                    "postgresql://watcher@db.example.com/sklm_watcher",
                )
            ],
        ),
        (
            'store_url_env = "STORE"',
            {"STORE": "watcher:pg-pw-93f1@pg-host-7.example.net"},
            [
                (
                    "watcher.store_url_env",
                    "the value of environment variable STORE is not a PostgreSQL "
                    "URL: it must start with postgresql:// (or postgres://), e.g. "
                    "postgresql://watcher@db.example.com/sklm_watcher",
                )
            ],
        ),
        (
            'store_url_env = "STORE"',
            {"STORE": "postgresql://watcher:pg-pw-93f1@pg-host-7.example.net/a b"},
            [
                (
                    "watcher.store_url_env",
                    "the value of environment variable STORE is not a usable store "
                    "URL: it must not contain spaces or control characters "
                    "(percent-encode them, e.g. %20)",
                )
            ],
        ),
        (
            'store_url_env = "STORE"',
            {},
            [("watcher.store_url_env", "environment variable STORE is not set")],
        ),
        (
            'store_url_file = "{dir}/missing"',
            {},
            [
                (
                    "watcher.store_url_file",
                    "cannot read {dir}/missing: No such file or directory",
                )
            ],
        ),
        (
            'store_url = ""',
            {},
            [("watcher.store_url", "must not be empty")],
        ),
        (
            'store_url_env = "postgresql://watcher:pg-pw-93f1@pg-host-7.example.net/x"',
            {},
            [
                (
                    "watcher.store_url_env",
                    "is not an environment variable name (letters, digits and '_', "
                    "not starting with a digit); give the variable's name, not its "
                    "value",
                )
            ],
        ),
    ],
)
def test_a_bad_store_url_is_named_without_showing_it(
    tmp_path: Path, body: str, environ: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    """Each way to get the URL wrong is one problem on its key; the URL is never shown."""
    path = watcher_table(tmp_path, body + '\nnode_name = "n1"')
    found = problems_of(path, {**ENV, **environ})
    assert found == [(k, r.replace("{dir}", str(tmp_path))) for k, r in expected]
    with pytest.raises(ConfigError) as caught:
        load_config(path, {**ENV, **environ})
    no_secret_in(caught.value)


def test_two_store_url_keys_conflict(tmp_path: Path) -> None:
    """Exactly one of the three keys: a second one is a problem, not a silent choice."""
    path = watcher_table(
        tmp_path, f'store_url_env = "STORE"\nstore_url = "{STORE_URL}"'
    )
    assert problems_of(path, {**ENV, "STORE": STORE_URL}) == [
        (
            "watcher.store_url",
            "conflicts with store_url_env: set only one of store_url, "
            "store_url_env and store_url_file",
        )
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            '"node 1"',
            "must be printable characters without spaces (it is shown in status, "
            "cluster and the logs), e.g. watcher-1",
        ),
        (
            '"n\\u0007"',
            "must be printable characters without spaces (it is shown in status, "
            "cluster and the logs), e.g. watcher-1",
        ),
        ('"' + "n" * 64 + '"', "must be at most 63 characters, got 64"),
        ('""', "must not be empty"),
        ("7", "expected a string, got integer"),
    ],
)
def test_a_bad_node_name_is_a_problem(tmp_path: Path, value: str, reason: str) -> None:
    """The name operators read in status and cluster: printable, no spaces, <= 63."""
    path = watcher_table(tmp_path, f'store_url_env = "STORE"\nnode_name = {value}')
    assert problems_of(path, {**ENV, "STORE": STORE_URL}) == [
        ("watcher.node_name", reason)
    ]


def test_node_name_of_63_characters_and_unicode_load(tmp_path: Path) -> None:
    """The limits are inclusive; any printable character is fine."""
    for name in ("n" * 63, "wächter-süd"):
        path = watcher_table(tmp_path, f'store_url_env = "STORE"\nnode_name = "{name}"')
        assert load_config(path, {**ENV, "STORE": STORE_URL}).watcher.node_name == name


def test_an_unusable_host_name_asks_for_node_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host name that cannot be a node name: the problem says to set node_name."""
    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 64)
    path = watcher_table(tmp_path, 'store_url_env = "STORE"')
    assert problems_of(path, {**ENV, "STORE": STORE_URL}) == [
        (
            "watcher.node_name",
            "missing: this host's name is not usable as a node name (it must be "
            "printable, without spaces, at most 63 characters); set node_name, "
            'e.g. node_name = "watcher-1"',
        )
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        *(
            (
                raw,
                f"must be at least 1 second, got {raw}: a node renews its leases "
                "every lease / 3 seconds (at most every second), and a dead node's "
                "servers are taken over within one lease",
            )
            for raw in ("0.5", "0", "-3")
        ),
        ('"15s"', "expected a number of seconds, got string"),
        ("true", "expected a number of seconds, got boolean"),
        ("inf", "must be a finite number of seconds"),
    ],
)
def test_a_bad_lease_is_a_problem(tmp_path: Path, value: str, reason: str) -> None:
    """lease: a finite number of seconds, at least 1, and the reason says why."""
    path = watcher_table(tmp_path, f'store_url_env = "STORE"\nlease = {value}')
    assert problems_of(path, {**ENV, "STORE": STORE_URL}) == [("watcher.lease", reason)]


def test_lease_of_exactly_one_second_loads(tmp_path: Path) -> None:
    """Tests and labs use short leases: 1 s is the shortest accepted."""
    path = watcher_table(tmp_path, 'store_url_env = "STORE"\nlease = 1')
    assert load_config(path, {**ENV, "STORE": STORE_URL}).watcher.lease == 1.0


def test_cluster_keys_without_store_url_warn(tmp_path: Path) -> None:
    """node_name or lease without a store: they load, and the warning says they do nothing."""
    path = watcher_table(tmp_path, 'node_name = "n1"\nlease = 5')
    config = load_config(path, ENV)
    assert config.watcher.is_cluster is False
    for key in ("node_name", "lease"):
        assert (
            f"watcher.{key}: has no effect without store_url: this watcher runs "
            "alone, on its SQLite store in state_dir"
        ) in config.warnings


def test_lenient_load_reports_the_same_store_problem(tmp_path: Path) -> None:
    """The read-only commands see the same problem, and no [watcher] to go on with."""
    path = watcher_table(tmp_path, 'store_url = "mysql://x"')
    with pytest.raises(ConfigError) as lenient:
        load_config_lenient(path, ENV)
    with pytest.raises(ConfigError) as strict:
        load_config(path, ENV)
    assert lenient.value.problems == strict.value.problems


def test_readme_cluster_block_is_a_valid_configuration(tmp_path: Path) -> None:
    """The README's ``[watcher]`` cluster keys block loads as shown."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(
        encoding="utf-8"
    )
    blocks = [b.split("```")[0] for b in readme.split("```toml\n")[1:]]
    block = next(b for b in blocks if "store_url_env" in b and "lease = 15.0" in b)
    path = write(tmp_path, block + SERVER)
    settings = load_config(path, {**ENV, "SKLM_WATCHER_STORE_URL": STORE_URL}).watcher
    assert settings.store_url == Secret(STORE_URL)
    assert (settings.node_name, settings.lease) == ("watcher-1", 15.0)


UNVERIFIED = (
    "the store is on another host and its TLS certificate is not verified "
    "(sslmode is not verify-full or verify-ca): anyone on the network path can pose "
    "as the database and read the URL's password and every event; add "
    "sslmode=verify-full (and sslrootcert) to the URL"
)


@pytest.mark.parametrize(
    ("url", "environ", "warned"),
    [
        ("postgresql://w:pg-pw-93f1@pg-host-7.example.net/db", {}, True),
        ("postgresql://w@pg-host-7.example.net:5432/db?sslmode=require", {}, True),
        ("postgresql://w@10.0.0.9,127.0.0.1/db?sslmode=prefer", {}, True),
        ("postgresql:///db?host=pg-host-7.example.net", {}, True),
        ("postgresql://w@pg-host-7.example.net/db?sslmode=verify-ca", {}, False),
        (
            "postgresql://w@pg-host-7.example.net/db",
            {"PGSSLMODE": "verify-full"},
            False,
        ),
        ("postgresql://w:pg-pw-93f1@127.0.0.1:5432/db", {}, False),
        ("postgresql://w@[::1]:5432/db", {}, False),
        ("postgresql://w@localhost/db", {}, False),
        ("postgresql:///db?host=%2Frun%2Fpostgresql", {}, False),
        ("postgresql:///db?host=::1", {}, False),
        ("postgres:///db", {}, False),
    ],
)
def test_a_store_across_the_network_without_verified_tls_warns(
    tmp_path: Path, url: str, environ: dict[str, str], warned: bool
) -> None:
    """Loads either way; off loopback without sslmode=verify-*, a loud warning."""
    path = watcher_table(tmp_path, 'store_url_env = "STORE"\nnode_name = "n1"')
    config = load_config(path, {**ENV, **environ, "STORE": url})
    assert config.watcher.store_url == Secret(url)
    expected = [f"watcher.store_url_env: {UNVERIFIED}"] if warned else []
    assert [w for w in config.warnings if "TLS" in w] == expected
    no_secret_in(None, config.warnings)
