"""The operator's cluster commands as processes, against a real PostgreSQL store.

Two nodes (``PostgresStore`` in daemon mode, through the ClusterStore API) write one
database: heartbeats, leases, transitions with their audit lines. Then
``sklm-watcher`` runs as a subprocess with a configuration naming that database
(``store_url_env``, with a password in the URL that must never be printed):
``cluster``, ``status``, ``audit export`` / ``audit verify`` and ``check-config``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pgserver import PostgresServer
from watcher.config import SinkConfig
from watcher.events import Event, EventType
from watcher.phases import Phase
from watcher.store.base import NodeInfo
from watcher.store.postgres import PostgresStore
from watcher.tracker import ServerState

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
OPS = SinkConfig(name="ops", type="log")
#: In the URL given to the CLI: trust authentication ignores it; output must not show it.
PASSWORD = "pg-pw-c1u5t3r"
SERVERS = ("s1", "s2", "s3")
#: Long enough that the nodes of a test stay alive while it runs.
LEASE = 60


def with_password(url: str) -> str:
    """``url`` with :data:`PASSWORD` after its user name."""
    return url.replace("postgresql://watcher@", f"postgresql://watcher:{PASSWORD}@")


def run_cli(
    tmp_path: Path, url: str, *argv: str, check_output: bool = True
) -> subprocess.CompletedProcess[str]:
    """``sklm-watcher ARGV -c <config naming url>`` as a process; no output shows it."""
    config = tmp_path / "watcher.toml"
    servers = "".join(
        f'[[servers]]\nname = "{s}"\nurl = "https://{s}.example.com"\n'
        'password_env = "SKLM_PW"\n'
        for s in SERVERS
    )
    config.write_text(
        f'[watcher]\nstate_dir = "{tmp_path}/state"\nstore_url_env = "STORE"\n'
        f'node_name = "cli"\nlease = {LEASE}\n'
        '[[sinks]]\nname = "ops"\ntype = "log"\n' + servers,
        encoding="utf-8",
    )
    env = {**os.environ, "STORE": with_password(url), "SKLM_PW": "x"}
    done = subprocess.run(
        [sys.executable, "-m", "watcher", *argv, "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,  # a hang guard, not an assertion
        check=False,
    )
    if check_output:
        assert PASSWORD not in done.stdout + done.stderr
    return done


def info(name: str) -> NodeInfo:
    """What node ``name`` says of itself."""
    return NodeInfo(
        name=name, version="1.13.0", host=f"host-{name}", pid=4242, started_at=T0
    )


def event(server: str, n: int) -> Event:
    """The n-th deterministic phase event of ``server``."""
    return Event.create(
        EventType.RESTORE_PHASE,
        server,
        T0 + timedelta(seconds=n),
        {
            "restore_id": f"r-{server}",
            "phase": "RESTORE_CONFIG_FILES",
            "inferred": False,
        },
        key=(str(n),),
    )


def state(phase: Phase) -> dict[str, Any]:
    """A stored tracker state in ``phase``."""
    return ServerState(
        phase=phase, phase_since_at=T0, phase_since_monotonic=0.0, last_ok_at=T0
    ).to_dict()


@pytest.fixture
def nodes(pg_url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Nodes a (s1, s2) and b (s3) on a fresh database, each with a transition."""
    a = PostgresStore.open(pg_url, [OPS], node_name="a", lease_seconds=LEASE)
    b = PostgresStore.open(pg_url, [OPS], node_name="b", lease_seconds=LEASE)
    try:
        a.heartbeat(info("a"))
        b.heartbeat(info("b"))
        assert {t.server for t in a.take(["s1", "s2"], 2)} == {"s1", "s2"}
        assert [t.server for t in b.take(SERVERS, 3)] == ["s3"]
        a.record("s1", state(Phase.RESTORE_CONFIG_FILES), [event("s1", 1)])
        b.record("s3", state(Phase.IDLE), [event("s3", 1), event("s3", 2)])
        a.record("s2", state(Phase.IDLE), [event("s2", 1)])
        yield a, b
    finally:
        a.close()
        b.close()


def test_cluster_lists_both_nodes_and_their_leases(
    tmp_path: Path, pg_url: str, nodes: tuple[PostgresStore, PostgresStore]
) -> None:
    """``cluster --json``: a with 2 leases, b with 1, every server owned; exit 0."""
    done = run_cli(tmp_path, pg_url, "cluster", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [(n["name"], n["alive"], n["leases"]) for n in document["nodes"]] == [
        ("a", True, 2),
        ("b", True, 1),
    ]
    assert document["nodes"][0]["host"] == "host-a"
    assert document["nodes"][0]["version"] == "1.13.0"
    assert document["servers"] == 3
    assert document["without_owner"] == []


def test_a_node_that_left_leaves_its_servers_without_owner(
    tmp_path: Path, pg_url: str, nodes: tuple[PostgresStore, PostgresStore]
) -> None:
    """After a's clean stop: ``left`` in the table, its servers named as unowned."""
    a, _ = nodes
    a.leave()
    done = run_cli(tmp_path, pg_url, "cluster")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["NODE", "ALIVE", "LEASES"]
    assert [line.split()[:3] for line in lines[1:3]] == [
        ["a", "left", "0"],
        ["b", "yes", "1"],
    ]
    assert lines[3] == (
        "2 of 3 servers have no live owner (a live node takes them over within "
        "one lease): s1, s2"
    )


def test_status_names_the_node_of_each_server(
    tmp_path: Path, pg_url: str, nodes: tuple[PostgresStore, PostgresStore]
) -> None:
    """``status``: the NODE column and ``node`` in JSON, from the store's leases."""
    done = run_cli(tmp_path, pg_url, "status", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["server"], r["node"], r["phase"]) for r in rows] == [
        ("s1", "a", "RESTORE_CONFIG_FILES"),
        ("s2", "a", "IDLE"),
        ("s3", "b", "IDLE"),
    ]
    assert all(r["daemon_running"] for r in rows)


def test_audit_export_is_the_chain_and_verifies(
    tmp_path: Path, pg_url: str, nodes: tuple[PostgresStore, PostgresStore]
) -> None:
    """The exported file is the store's lines byte for byte; both verify paths agree."""
    a, _ = nodes
    out = tmp_path / "chain.jsonl"
    done = run_cli(tmp_path, pg_url, "audit", "export", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"exported 4 audit lines (auditseq 1..4) to {out}\n"
    stored = a.export_audit()
    assert out.read_bytes() == b"".join(x.line.encode() + b"\n" for x in stored)
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [x["auditseq"] for x in lines] == [1, 2, 3, 4]

    by_file = run_cli(tmp_path, pg_url, "audit", "verify", str(out))
    assert by_file.returncode == 0, by_file.stdout
    assert by_file.stdout.startswith("audit log intact: 4 lines chain")
    in_store = run_cli(tmp_path, pg_url, "audit", "verify", "--json")
    assert in_store.returncode == 0, in_store.stdout
    verdict = json.loads(in_store.stdout)
    assert (verdict["ok"], verdict["lines"]) == (True, 4)


def test_audit_verify_finds_a_line_changed_in_the_database(
    tmp_path: Path, pg_url: str, nodes: tuple[PostgresStore, PostgresStore]
) -> None:
    """Someone with SQL access edits line 2: exit 1, named as ``store:2``."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE audit SET line = replace(line, 'RESTORE_CONFIG_FILES', "
            "'RESTORE_KEYSTORES') WHERE auditseq = 2"
        )
    done = run_cli(tmp_path, pg_url, "audit", "verify")
    assert done.returncode == 1
    assert done.stdout.startswith("audit log NOT intact: store:2: ")


def test_check_config_reports_the_store_state(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """Empty: will be created (exit 0); after a node opened it: current (exit 0)."""
    url = postgres_server.create_database()
    empty = run_cli(tmp_path, url, "check-config")
    assert empty.returncode == 0, empty.stderr
    out = empty.stdout.splitlines()
    assert out[0].startswith(f"{tmp_path}/watcher.toml: OK: 3 servers, 1 sink (log)")
    where = url.rsplit("@", 1)[1]
    assert out[1] == (
        f"store {where}: will be created; empty: run creates the schema; "
        f"node cli, lease {LEASE} s"
    )
    PostgresStore.open(url, [OPS], node_name="a", lease_seconds=LEASE).close()
    current = run_cli(tmp_path, url, "check-config")
    assert current.returncode == 0, current.stderr
    assert current.stdout.splitlines()[1].startswith(
        f"store {where}: current (schema version 1)"
    )


def test_check_config_of_an_unreachable_store_exits_1_with_the_reason(
    tmp_path: Path,
) -> None:
    """Nothing listens at the URL's port: exit 1, the reason in words, no password."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # released: nothing listens there
    url = f"postgresql://watcher@127.0.0.1:{port}/sklm"
    done = run_cli(tmp_path, url, "check-config")
    assert done.returncode == 1
    assert done.stdout == ""
    assert (
        f"the file is valid, but run cannot use its store: store 127.0.0.1:{port}"
        "/sklm: unreachable; "
    ) in done.stderr
    assert "refused" in done.stderr.lower()
