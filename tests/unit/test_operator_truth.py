"""Issue 11, "operator truth": the read-only commands say what is true, and go on.

status (REASON, last_error, daemon_running, as_of), the events table's detail, the
lenient configuration of the read-only commands, test-sink's failure message,
silences (unmatched globs, removed ones kept, ``Z`` times) and the outbox's
``dead_at``. Everything runs on a real journal in ``tmp_path``; the CLI is called
in-process (``cli.main``) except where the item is about the process itself.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_configfile import BROKEN, make_ca_file
from tests.unit.test_configfile import write as write_config
from tests.unit.test_views import AUTHS, DR, GONE, LAB, PROD, Feed, at
from watcher import cli
from watcher.config import SinkConfig
from watcher.configfile import load_config, load_config_lenient
from watcher.errors import ConfigError
from watcher.events import Event, EventType, format_time
from watcher.store.sqlite import SqliteStore as Journal
from watcher.store.sqlite import schema as journal_module
from watcher.views import EventRow

SERVERS = ("prod-1", "lab-1", "dr-1", "gone-1", "auth-1")
#: A time in the README's form: 2026-11-29T10:00:01.250Z.
Z_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

CONFIG = """
[watcher]
state_dir = "state"
audit_log = "state/events.jsonl"

[defaults]
password_env = "TRUTH_PASSWORD"

{servers}

[[sinks]]
name = "ops"
type = "log"
"""

#: A server entry being edited: its URL is not one yet.
HALF_EDITED = """
[[servers]]
name = "new-1"
url = "sklm-new.example.com"
"""


def servers_toml(names: tuple[str, ...] = SERVERS) -> str:
    """``[[servers]]`` tables for ``names`` (nothing listens at their URLs)."""
    return "\n".join(
        f'[[servers]]\nname = "{n}"\nurl = "https://127.0.0.1:9443"\n' for n in names
    )


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid configuration for the five scripted servers, and their journal."""
    monkeypatch.setenv("TRUTH_PASSWORD", "not-a-real-password")
    path = tmp_path / "watcher.toml"
    path.write_text(CONFIG.format(servers=servers_toml()), encoding="utf-8")
    with Journal.open(
        tmp_path / "state", tmp_path / "state" / "events.jsonl", [OPS]
    ) as journal:
        for name, script in zip(SERVERS, (PROD, LAB, DR, GONE, AUTHS), strict=True):
            Feed(journal, name).run(script)
    return path


OPS = SinkConfig("ops", "log")


def stored_as_of(config: Path) -> str:
    """The newest stored state's time, in the README's form."""
    with Journal.open(
        config.parent / "state", config.parent / "x.jsonl", [], read_only=True
    ) as view:
        newest = view.last_state_update()
    assert newest is not None
    return format_time(newest)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``sklm-watcher ARGV`` in-process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- status: reason, daemon, age ------------------------------------------------


def test_status_json_has_the_reason_and_says_no_daemon_runs(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped fleet: stderr says so with the data's age; each row carries it too."""
    code, out, err = run(capsys, "status", "-c", str(config), "--json")

    assert code == 0
    as_of = stored_as_of(config)
    assert err.startswith(f"no daemon running; data as of {as_of} (")
    assert err.rstrip().endswith(" ago)")
    rows = {r["server"]: r for r in json.loads(out)}
    assert list(rows) == list(SERVERS)
    assert {r["daemon_running"] for r in rows.values()} == {False}
    assert {r["as_of"] for r in rows.values()} == {as_of}
    assert (rows["gone-1"]["last_error"], rows["gone-1"]["last_failure"]) == (
        "connection refused",
        "unreachable",
    )
    assert (rows["prod-1"]["last_error"], rows["prod-1"]["last_failure"]) == (
        None,
        None,
    )


def test_status_table_marks_stale_health_and_shows_the_reason(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No daemon: health is not shown as a live ``ok``; REASON is the last error."""
    code, out, _ = run(capsys, "status", "-c", str(config))

    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[-1] == "REASON"
    by_server = {line.split()[0]: line for line in lines}
    assert by_server["prod-1"].split()[1:3] == ["ok", "(stale)"]
    assert by_server["gone-1"].endswith("connection refused")
    assert by_server["prod-1"].endswith(" -")


def test_status_with_the_lock_held_says_a_daemon_runs(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon holding state_dir's lock (not listening): live rows, no warning."""
    state = config.parent / "state"
    with Journal.open(state, state / "events.jsonl", [OPS]):  # takes the lock
        code, out, err = run(capsys, "status", "-c", str(config), "--json")

    assert code == 0
    assert "no daemon running" not in err
    assert {r["daemon_running"] for r in json.loads(out)} == {True}
    # The probe released the lock at once: a daemon can start now.
    with Journal.open(state, state / "events.jsonl", [OPS]):
        pass


def test_long_reasons_are_shortened_in_the_table_only(tmp_path: Path) -> None:
    """The table keeps one line per server; JSON has the whole reason."""
    from watcher.tracker import Health
    from watcher.views import REASON_WIDTH, ServerStatusRow

    reason = "TLS handshake failed: certificate verify failed: " + "x" * 200
    row = ServerStatusRow("a", Health.UNREACHABLE, last_error=reason)

    assert row.to_json()["last_error"] == reason
    cell = row.cells()[-1]
    assert len(cell) == REASON_WIDTH
    assert cell.endswith("…")
    assert reason.startswith(cell[:-1])


# --- events: the detail ---------------------------------------------------------


def test_events_table_shows_the_detail_not_only_the_kind(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreachable event's DETAIL is ``tls: <what failed>``, not just ``tls``."""
    state = config.parent / "state"
    detail = "TLS handshake failed: certificate verify failed (self-signed)"
    event = Event.create(
        EventType.SERVER_UNREACHABLE,
        "tls-1",
        at(300),
        {"reason": "tls", "failure": "tls", "detail": detail},
        key=("t",),
    )
    with Journal.open(state, state / "events.jsonl", [OPS]) as journal:
        journal.record("tls-1", {}, [event])

    code, out, _ = run(capsys, "events", "-c", str(config), "--server", "tls-1")

    assert code == 0
    assert out.splitlines()[-1].endswith(f"sklm.server.unreachable  tls: {detail}")
    assert EventRow(event).to_json()["data"]["detail"] == detail


# --- read-only commands with a half-edited file ---------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--json"],
        ["events"],
        ["restores"],
        ["outbox"],
        ["silence", "list"],
        ["audit", "verify"],
    ],
    ids=lambda argv: "-".join(argv),
)
def test_read_only_commands_warn_and_go_on_with_a_half_edited_file(
    config: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """The daemon keeps its last good configuration; the operator is not locked out."""
    with config.open("a", encoding="utf-8") as f:
        f.write(HALF_EDITED)
    strict = _strict_problems(config)

    code, out, err = run(capsys, *argv, "-c", str(config))

    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == (
        f"warning: {config}: 1 configuration problem (the daemon keeps its last "
        "good configuration); showing what is stored:"
    )
    assert lines[1 : 1 + len(strict)] == [f"  - {p}" for p in strict]
    assert out.strip()


def test_status_of_a_half_edited_file_shows_every_stored_server(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server whose entry is broken is still shown from the store."""
    config.write_text(
        CONFIG.format(servers=servers_toml(SERVERS[:2]))
        + '[[servers]]\nname = "dr-1"\nurl = "dr.example.com"\n',
        encoding="utf-8",
    )

    code, out, _ = run(capsys, "status", "-c", str(config), "--json")

    assert code == 0
    assert [r["server"] for r in json.loads(out)] == [
        "prod-1",
        "lab-1",
        "auth-1",
        "dr-1",
        "gone-1",
    ]


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_run_and_check_config_stay_strict(
    config: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """The same half-edited file is refused by the commands that act on it."""
    with config.open("a", encoding="utf-8") as f:
        f.write(HALF_EDITED)

    code, out, err = run(capsys, command, "-c", str(config))

    assert (code, out) == (cli.EXIT_USAGE, "")
    assert "1 configuration problem in" in err


def test_not_even_toml_still_finds_the_state(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A syntax error elsewhere: ``[watcher]`` is read on its own."""
    with config.open("a", encoding="utf-8") as f:
        f.write('\n[[servers]\nname = "half\n')

    code, out, err = run(capsys, "status", "-c", str(config), "--json")

    assert code == 0
    assert "not valid TOML" in err.splitlines()[1]
    assert [r["server"] for r in json.loads(out)] == sorted(SERVERS)


def _strict_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


# --- the lenient loader ---------------------------------------------------------


def test_lenient_load_of_a_valid_file_is_the_strict_load(config: Path) -> None:
    """No problems: exactly what load_config returns."""
    partial = load_config_lenient(config)

    assert partial.problems == ()
    assert partial.config == load_config(config)


def test_lenient_load_keeps_the_valid_servers_and_sinks(tmp_path: Path) -> None:
    """Broken entries are left out, valid ones kept, problems as the strict load's."""
    path = write_config(
        tmp_path,
        """
[watcher]
state_dir = "s"
[[servers]]
name = "a"
url = "https://a.example.com:9443"
password_env = "P"
[[servers]]
name = "b"
url = "b.example.com"
password_env = "P"
[[sinks]]
name = "ops"
type = "log"
[[sinks]]
name = "bad"
type = "carrier-pigeon"
""",
    )
    partial = load_config_lenient(path, {"P": "x"})

    with pytest.raises(ConfigError) as caught:
        load_config(path, {"P": "x"})
    assert list(partial.problems) == caught.value.problems
    assert [s.name for s in partial.config.servers] == ["a"]
    assert [s.name for s in partial.config.sinks] == ["ops"]
    assert partial.config.watcher.state_dir == tmp_path / "s"


def test_lenient_load_refuses_a_broken_watcher_table(tmp_path: Path) -> None:
    """Without a usable [watcher] there is no state to show: every problem raised."""
    path = write_config(tmp_path, "[watcher]\nstate_dir = 5\n[[servers]]\nname = 1\n")

    with pytest.raises(ConfigError) as lenient:
        load_config_lenient(path, {})
    with pytest.raises(ConfigError) as strict:
        load_config(path, {})
    assert lenient.value.problems == strict.value.problems


@pytest.mark.parametrize(
    ("text", "environ"),
    [pytest.param(text, env, id=name) for name, text, env, _ in BROKEN],
)
def test_lenient_problems_are_the_strict_ones_over_the_corpus(
    tmp_path: Path, text: str, environ: dict[str, str]
) -> None:
    """For every broken file of the config corpus, the same problems in the same order."""
    make_ca_file(tmp_path)
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as strict:
        load_config(path, environ)
    try:
        found = list(load_config_lenient(path, environ).problems)
    except ConfigError as lenient:
        found = lenient.problems  # not even [watcher]: raised, like the strict load
    assert found == strict.value.problems


# --- test-sink ------------------------------------------------------------------


def test_failed_test_sink_says_it_is_not_queued_or_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed test is final: the operator must not wait for a retry."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # released: nothing listens there
    monkeypatch.setenv("TRUTH_PASSWORD", "x")
    path = tmp_path / "w.toml"
    path.write_text(
        CONFIG.format(servers=servers_toml(("a",)))
        + f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "http://127.0.0.1:{port}/h"\n',
        encoding="utf-8",
    )

    code, out, err = run(capsys, "test-sink", "-c", str(path), "hook")

    assert (code, out) == (cli.EXIT_FAILURE, "")
    first, second = err.splitlines()[-2:]
    assert first.startswith("hook: FAILED: ")
    assert "is not queued or retried" in second


# --- silences -------------------------------------------------------------------


def test_silence_add_warns_when_the_glob_matches_no_server(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in the glob is said at once (the silence is still added)."""
    code, out, err = run(
        capsys,
        "silence",
        "add",
        "prdo-*",
        "--for",
        "1h",
        "--reason",
        "x",
        "-c",
        str(config),
    )

    assert code == 0
    assert re.fullmatch(
        rf"silence 1: prdo-\* until {Z_TIME.pattern} \(events are journaled, not sent\)\n",
        out,
    )
    assert err == (
        "warning: 'prdo-*' matches none of the 5 configured servers; check the "
        "name, or `sklm-watcher silence remove 1`\n"
    )
    code, _, err = run(
        capsys,
        "silence",
        "add",
        "prod-*",
        "--for",
        "1h",
        "--reason",
        "x",
        "-c",
        str(config),
    )
    assert (code, err) == (0, "")


def test_removed_silences_are_kept_with_when_and_who(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """list --all shows a removed silence, when and by whom; plain list does not."""
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.delenv("SUDO_USER", raising=False)
    add = ["silence", "add", "prod-*", "--for", "1h", "--reason", "window"]
    assert run(capsys, *add, "-c", str(config))[0] == 0

    assert run(capsys, "silence", "remove", "1", "-c", str(config)) == (
        0,
        "silence 1 removed\n",
        "",
    )
    assert run(capsys, "silence", "remove", "1", "-c", str(config)) == (
        1,
        "",
        "silence 1 was already removed\n",
    )
    assert run(capsys, "silence", "remove", "7", "-c", str(config))[2] == (
        "no silence 7\n"
    )

    _, out, _ = run(capsys, "silence", "list", "-c", str(config), "--json")
    assert json.loads(out) == []
    _, out, _ = run(capsys, "silence", "list", "--all", "-c", str(config), "--json")
    (listed,) = json.loads(out)
    assert listed["removed_by"] == "alice"
    for key in ("until", "created_at", "removed_at"):
        assert Z_TIME.fullmatch(listed[key]), listed[key]
    _, out, _ = run(capsys, "silence", "list", "--all", "-c", str(config))
    header, line = out.splitlines()
    assert header.split() == ["ID", "SERVERS", "UNTIL", "REASON", "STATE", "REMOVED"]
    assert line.split()[:5] == ["1", "prod-*", listed["until"], "window", "removed"]
    assert line.endswith(f"{listed['removed_at']} by alice")


def test_a_removed_silence_no_longer_holds(tmp_path: Path) -> None:
    """After removal an event is pending again; the row stays for the listing."""
    state = tmp_path / "s"
    with Journal.open(state, state / "a.jsonl", [OPS]) as journal:
        sid = journal.add_silence("a", at(100), "window", at(0))
        assert journal.remove_silence(sid, at=at(5), by="bob") is True
        journal.record("a", {}, [Event.create(EventType.TEST, "a", at(6), key=("1",))])
        (kept,) = journal.silences(at(6), include_expired=True)
        assert journal.silences(at(6)) == []
        assert journal.next_due("ops", at(6)) is not None

    assert (kept.removed_at, kept.removed_by) == (at(5), "bob")
    assert kept.is_active(at(4))
    assert not kept.is_active(at(5))


def test_version_2_database_keeps_its_silences(tmp_path: Path) -> None:
    """Migrating 2 -> 3 keeps existing silences, which then can be removed and kept."""
    state = tmp_path / "s"
    with Journal.open(state, state / "a.jsonl", [OPS]) as journal:
        sid = journal.add_silence("a", at(100), "window", at(0))
    conn = sqlite3.connect(state / journal_module.DB_NAME)
    with conn:
        conn.execute("ALTER TABLE silences DROP COLUMN removed_at")
        conn.execute("ALTER TABLE silences DROP COLUMN removed_by")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()

    with Journal.open(state, state / "a.jsonl", [OPS]) as journal:
        (before,) = journal.silences(at(1))
        assert journal.remove_silence(sid, at=at(2), by="carol")
        (after,) = journal.silences(at(3), include_expired=True)

    assert (before.id, before.reason, before.removed_at) == (sid, "window", None)
    assert (after.removed_at, after.removed_by) == (at(2), "carol")


# --- outbox ---------------------------------------------------------------------


def test_outbox_dead_at_is_in_the_readme_form(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dead_at`` is ``...Z`` like every other time, not ``+00:00``."""
    state = config.parent / "state"
    with Journal.open(state, state / "events.jsonl", [OPS]) as journal:
        row = journal.next_due("ops", at(1000))
        assert row is not None
        journal.dead_letter("ops", row.event.id, error="HTTP 410", at=at(1000))

    code, out, _ = run(capsys, "outbox", "--dead", "--json", "-c", str(config))

    assert code == 0
    (dead,) = json.loads(out)["dead"]
    assert dead["dead_at"] == "2026-11-29T10:16:40.000Z"


# --- pipes ----------------------------------------------------------------------


@pytest.fixture
def many_events(config: Path) -> Path:
    """A journal with far more event output than a pipe buffers (64 KiB)."""
    state = config.parent / "state"
    events = [
        Event.create(EventType.TEST, "bulk-1", at(i), {"n": i}, key=(str(i),))
        for i in range(3000)
    ]
    with Journal.open(state, state / "events.jsonl", [OPS]) as journal:
        journal.record("bulk-1", {}, events)
    return config


@pytest.mark.parametrize("json_lines", [False, True], ids=["table", "json"])
def test_output_piped_into_a_reader_that_leaves_ends_quietly(
    many_events: Path, json_lines: bool
) -> None:
    """``sklm-watcher events | head -1``: exit 141, no BrokenPipeError traceback."""
    argv = [sys.executable, "-m", "watcher", "events", "-c", str(many_events)]
    if json_lines:
        argv.append("--json")
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=many_events.parent,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()  # like head -1: one line, then the reader leaves
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)

    assert first
    assert "BrokenPipeError" not in err
    assert (code, err) == (141, "")  # 128 + SIGPIPE, as a shell reports it


def test_views_read_a_version_2_database_before_the_daemon_restarts(
    tmp_path: Path,
) -> None:
    """Upgraded, old daemon still running: read-only views work on schema 2."""
    state = tmp_path / "s"
    with Journal.open(state, state / "a.jsonl", [OPS]) as journal:
        sid = journal.add_silence("a", at(100), "window", at(0))
        journal.record("a", {"n": 1}, [])
    conn = sqlite3.connect(state / journal_module.DB_NAME)
    with conn:
        conn.execute("ALTER TABLE silences DROP COLUMN removed_at")
        conn.execute("ALTER TABLE silences DROP COLUMN removed_by")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()

    with Journal.open(state, state / "a.jsonl", [], read_only=True) as view:
        assert [(s.id, s.removed_at) for s in view.silences(at(1))] == [(sid, None)]
        assert len(view.silences(at(200), include_expired=True)) == 1
        assert view.load_states() == {"a": {"n": 1}}
    conn = sqlite3.connect(state / journal_module.DB_NAME)
    try:  # the read-only view changed nothing
        version = conn.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        columns = [row[1] for row in conn.execute("PRAGMA table_info(silences)")]
    finally:
        conn.close()
    assert version == ("2",)
    assert "removed_at" not in columns
