"""``sklm-watcher follow`` in process, over a journal filled by the real tracker.

Only cases that end on the first look (``--last`` on an ended restore, an expired
``--timeout``), so no test waits on the wall clock.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_follow import Feed, P, rid
from watcher import cli
from watcher.store.sqlite import SqliteStore as Journal

DONE = [(0, P.IDLE), (10, P.INITIALIZE), (20, P.COMPLETED), (30, P.IDLE)]


def _config(tmp_path: Path, servers: str) -> Path:
    path = tmp_path / "watcher.toml"
    path.write_text(
        f"""
[watcher]
state_dir = "{tmp_path / "state"}"
audit_log = "{tmp_path / "events.jsonl"}"

[defaults]
password_env = "FOLLOW_TEST_PASSWORD"
allow_insecure_http = true
{servers}
""",
        encoding="utf-8",
    )
    return path


PROD = '[[servers]]\nname = "prod-1"\nurl = "http://127.0.0.1:9"\n'


@pytest.fixture
def journal_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory where prod-1's restore completed and the server is back."""
    monkeypatch.setenv("FOLLOW_TEST_PASSWORD", "not-a-real-password")
    with Journal.open(tmp_path / "state", tmp_path / "events.jsonl", []) as journal:
        Feed(journal).run(DONE)
    return tmp_path


def test_last_json_prints_one_line_and_exits_with_the_outcome(
    journal_done: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--last --json: the ended restore as one JSON line on stdout, exit 0."""
    config = _config(journal_done, PROD)

    assert cli.main(["follow", "prod-1", "-c", str(config), "--last", "--json"]) == 0

    [line] = capsys.readouterr().out.splitlines()
    view = json.loads(line)
    assert (view["restore_id"], view["outcome"], view["server_back"]) == (
        rid("prod-1", 10),
        "completed",
        True,
    )


def test_timeout_has_its_own_exit_code(
    journal_done: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ended restore is history: follow waits for the next; --timeout gives 124."""
    config = _config(journal_done, PROD)
    args = ["--timeout", "0.01", "--interval", "0.001", "--json"]

    code = cli.main(["follow", "prod-1", "-c", str(config), *args])

    assert code == cli.EXIT_FOLLOW_TIMEOUT == 124
    out, err = capsys.readouterr()
    assert out == ""  # with --json, stdout holds only JSON lines
    assert "prod-1: no restore running; waiting for one to start" in err
    assert "prod-1: gave up after 0.01 s" in err


def test_a_server_left_out_of_a_half_edited_file_can_be_followed(
    journal_done: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon still watches it (it is in the journal): warn and follow it."""
    broken = '[[servers]]\nname = "prod-1"\nurl = "not a url"\n'
    config = _config(journal_done, broken)

    assert cli.main(["follow", "prod-1", "-c", str(config), "--last"]) == 0

    out, err = capsys.readouterr()
    assert "configuration problem" in err
    assert out.rstrip().endswith("; server back")


def test_an_unknown_server_is_a_usage_error(
    journal_done: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither configured nor in the journal: exit 2 naming it."""
    config = _config(journal_done, PROD)

    assert cli.main(["follow", "nope-1", "-c", str(config), "--last"]) == 2

    assert "no server named 'nope-1'" in capsys.readouterr().err
