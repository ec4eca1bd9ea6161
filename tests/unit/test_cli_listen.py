"""``run`` refuses a non-loopback ``listen`` that no credential guards."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_configfile import SERVER, write
from watcher import cli

EXPOSED = "192.0.2.7:9109"  # TEST-NET-1: never bound, the refusal comes first


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_an_unguarded_exposed_listen_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    """Exit 2 with the problem at ``watcher.listen``; nothing is created or bound."""
    monkeypatch.setenv("PW", "pw-value")
    state = tmp_path / "state"
    path = write(
        tmp_path,
        f'[watcher]\nstate_dir = "{state}"\nlisten = "{EXPOSED}"\n' + SERVER,
    )

    assert cli.main([command, "-c", str(path)]) == cli.EXIT_USAGE

    out, err = capsys.readouterr()
    assert out == ""
    assert f"  - watcher.listen: {EXPOSED} is not a loopback address" in err
    assert not state.exists()


def test_a_guarded_exposed_listen_passes_check_config(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With a token from the environment the same file is valid (and not printed)."""
    monkeypatch.setenv("PW", "pw-value")
    monkeypatch.setenv("LISTEN_TOKEN", "tok-secret-value")
    path = write(
        tmp_path,
        f'[watcher]\nlisten = "{EXPOSED}"\nlisten_token_env = "LISTEN_TOKEN"\n'
        + SERVER,
    )

    assert cli.main(["check-config", "-c", str(path)]) == cli.EXIT_OK

    out, err = capsys.readouterr()
    assert "tok-secret-value" not in out + err
