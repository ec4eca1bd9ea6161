"""``[watcher]``'s listen authentication keys: parsing, exact problems, the refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_configfile import ENV, SERVER, problems_of, write
from watcher.config import Listen, Secret
from watcher.configfile import load_config

TOKEN = "tok-7d1e-secret"
PASSWORD = "pw-55aa-secret"
EXPOSED = "0.0.0.0:9109"  # configuration text only: nothing binds


def watcher_table(tmp_path: Path, body: str) -> Path:
    """A config whose ``[watcher]`` table is ``body`` (plus one server)."""
    return write(tmp_path, f"[watcher]\n{body}\n" + SERVER)


def test_no_auth_keys_leave_listen_open_on_loopback(tmp_path: Path) -> None:
    """Loopback without credentials: allowed, and no credential is set."""
    config = load_config(watcher_table(tmp_path, 'listen = "127.0.0.1:9109"'), ENV)
    settings = config.watcher
    assert settings.listen == Listen("127.0.0.1", 9109)
    assert settings.listen_token is None
    assert settings.listen_username is None
    assert settings.listen_password is None
    assert settings.listen_auth is False


def test_a_non_loopback_listen_without_auth_is_a_problem(tmp_path: Path) -> None:
    """``run`` (and ``check-config``) refuse an exposed listen nobody guards."""
    path = watcher_table(tmp_path, f'listen = "{EXPOSED}"')
    ((key, reason),) = problems_of(path, ENV)
    assert key == "watcher.listen"
    assert reason.startswith(f"{EXPOSED} is not a loopback address")
    assert "listen_token_env" in reason
    assert "listen_password_env" in reason


def test_token_from_env_and_file(tmp_path: Path) -> None:
    """The bearer token resolves from ``_env`` or ``_file`` into a Secret."""
    env = {**ENV, "LISTEN_TOKEN": TOKEN}
    path = watcher_table(
        tmp_path, f'listen = "{EXPOSED}"\nlisten_token_env = "LISTEN_TOKEN"'
    )
    settings = load_config(path, env).watcher
    assert settings.listen_token == Secret(TOKEN)
    assert settings.listen_auth is True
    assert TOKEN not in repr(settings)

    (tmp_path / "token").write_text(TOKEN + "\n", encoding="utf-8")
    path = watcher_table(tmp_path, 'listen_token_file = "{dir}/token"')
    assert load_config(path, ENV).watcher.listen_token == Secret(TOKEN)


def test_basic_from_username_and_password_file(tmp_path: Path) -> None:
    """HTTP Basic: a user name and a password, relative files in the credentials dir."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "listen-password").write_text(PASSWORD, encoding="utf-8")
    path = watcher_table(
        tmp_path,
        f'listen = "{EXPOSED}"\nlisten_username = "operator"\n'
        'listen_password_file = "listen-password"',
    )
    env = {**ENV, "CREDENTIALS_DIRECTORY": str(credentials)}
    settings = load_config(path, env).watcher
    assert settings.listen_username == "operator"
    assert settings.listen_password == Secret(PASSWORD)
    assert settings.listen_token is None
    assert settings.listen_auth is True


def test_an_inline_token_loads_with_a_warning(tmp_path: Path) -> None:
    """Written in the file: accepted, and the warning names the key, not the value."""
    path = watcher_table(tmp_path, f'listen_token = "{TOKEN}"')
    config = load_config(path, ENV)
    assert config.watcher.listen_token == Secret(TOKEN)
    (warning,) = [w for w in config.warnings if "listen_token" in w]
    assert warning == (
        "watcher.listen_token: the listen token is written in the configuration "
        "file; prefer listen_token_env or listen_token_file (a systemd credential)"
    )
    assert TOKEN not in " ".join(config.warnings)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'listen_username = "operator"',
            [
                (
                    "watcher.listen_password",
                    "missing: listen_username needs listen_password_env, "
                    "listen_password_file or listen_password (HTTP Basic)",
                )
            ],
        ),
        (
            'listen_password_env = "LP"',
            [
                (
                    "watcher.listen_username",
                    "missing: listen_password needs listen_username (HTTP Basic)",
                )
            ],
        ),
        (
            'listen_token_env = "LT"\nlisten_token_file = "t"',
            [
                (
                    "watcher.listen_token_file",
                    "conflicts with listen_token_env: set only one of listen_token, "
                    "listen_token_env and listen_token_file",
                )
            ],
        ),
        (
            'listen_token_env = "NOT_SET"',
            [("watcher.listen_token_env", "environment variable NOT_SET is not set")],
        ),
        (
            f'listen_token_env = "{TOKEN}"',
            [
                (
                    "watcher.listen_token_env",
                    "is not an environment variable name (letters, digits and '_', "
                    "not starting with a digit); give the variable's name, not its "
                    "value",
                )
            ],
        ),
        (
            "listen_username = 3",
            [("watcher.listen_username", "expected a string, got integer")],
        ),
    ],
)
def test_broken_auth_keys_are_exact_problems(
    tmp_path: Path, body: str, expected: list[tuple[str, str]]
) -> None:
    """Each broken combination is one problem at the key, never echoing a secret."""
    env = {**ENV, "LP": PASSWORD, "LT": TOKEN}
    found = problems_of(watcher_table(tmp_path, body), env)
    assert found == expected
    assert all(TOKEN not in reason and PASSWORD not in reason for _, reason in found)


def test_the_readme_listen_example_loads(tmp_path: Path) -> None:
    """The README's ``[watcher]`` listen block is a valid configuration."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(
        encoding="utf-8"
    )
    blocks = readme.split("```toml\n")[1:]
    (block,) = [b.split("```")[0] for b in blocks if "listen_token_env" in b]
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "listen-password").write_text(PASSWORD, encoding="utf-8")
    path = write(tmp_path, block + SERVER)
    env = {
        **ENV,
        "SKLM_WATCHER_LISTEN_TOKEN": TOKEN,
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    settings = load_config(path, env).watcher
    assert settings.listen == Listen("10.0.0.5", 9464)
    assert settings.listen_token == Secret(TOKEN)
    assert settings.listen_username == "operator"
    assert settings.listen_password == Secret(PASSWORD)
