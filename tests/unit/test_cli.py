"""The command line's handling of broken configurations: check-config and run alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_configfile import BROKEN, make_ca_file, write
from watcher import cli


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [pytest.param(text, env, exp, id=name) for name, text, env, exp in BROKEN],
)
def test_broken_file_is_refused_with_every_problem(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    text: str,
    environ: dict[str, str],
    expected: list[tuple[str, str]],
) -> None:
    """Exit 2, one line per problem with its key and reason, nothing on stdout.

    ``run`` refuses before it opens a journal or a socket: the state directory the
    broken file may name is never created.
    """
    make_ca_file(tmp_path)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    path = write(tmp_path, text)
    before = sorted(p.name for p in tmp_path.iterdir())

    assert cli.main([command, "-c", str(path)]) == cli.EXIT_USAGE

    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    problems = [line.removeprefix("  - ") for line in lines if line.startswith("  - ")]
    want = [
        f"{key}: {reason}" if key else reason
        for key, reason in (
            (key, reason.replace("{dir}", str(tmp_path))) for key, reason in expected
        )
    ]
    assert problems == want
    noun = "problem" if len(want) == 1 else "problems"
    assert f"{len(want)} configuration {noun} in {path}:" in lines[-len(want) - 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
