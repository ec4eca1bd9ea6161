"""The operator's cluster commands against a small in-test cluster store.

``cluster``, ``status``'s NODE column, ``audit export`` and ``audit verify`` on a
cluster: what they print and exit with. The store is a fake standing in for the
PostgreSQL one (``tests/integration/test_cli_cluster.py`` runs the real one); the
views and JSON builders are the real ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from watcher import audit, cli, schema, views
from watcher import store as store_module
from watcher.audit import GENESIS_HASH, AuditPosition, chain_line, line_hash
from watcher.config import Config, Secret
from watcher.phases import Phase
from watcher.store import StoreCheck, StoreState
from watcher.store.base import AuditLine, Lease, NodeRow
from watcher.tracker import Health, ServerState

NOW = datetime.now(UTC)
STORE_URL = "postgresql://watcher:pg-pw-5e1d@pg-host-3.example.net/sklm"


@dataclass
class FakeClusterStore:
    """What the cluster commands read of a ClusterStore, from lists given in the test."""

    nodes_: list[NodeRow] = field(default_factory=list)
    leases_: list[Lease] = field(default_factory=list)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: list[AuditLine] = field(default_factory=list)
    position: AuditPosition | None = None
    opened: list[bool] = field(default_factory=list)

    def __enter__(self) -> FakeClusterStore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def nodes(self) -> list[NodeRow]:
        """Every node."""
        return list(self.nodes_)

    def leases(self) -> list[Lease]:
        """Every lease."""
        return list(self.leases_)

    def load_states(self) -> dict[str, dict[str, Any]]:
        """Every stored state."""
        return dict(self.states)

    def last_state_update(self) -> datetime | None:
        """When a state was last stored."""
        return NOW - timedelta(seconds=5) if self.states else None

    def audit_position(self) -> AuditPosition | None:
        """The chain's head."""
        return self.position

    def export_audit(self, after: int = 0) -> list[AuditLine]:
        """The lines after ``after``."""
        return [line for line in self.lines if line.auditseq > after]


def node(name: str, *, alive: bool = True, leases: int = 0, **kw: Any) -> NodeRow:
    """A node row with a heartbeat 2 s before NOW unless said otherwise."""
    values: dict[str, Any] = {
        "name": name,
        "version": "1.13.0",
        "host": f"{name}.lab",
        "pid": 4000 + len(name),
        "started_at": NOW - timedelta(hours=1),
        "heartbeat_at": NOW - timedelta(seconds=2),
        "alive": alive,
        "leases": leases,
    }
    values.update(kw)
    return NodeRow(**values)


def lease(server: str, holder: str, *, in_seconds: float = 10.0) -> Lease:
    """A lease expiring ``in_seconds`` after NOW (negative: expired)."""
    return Lease(server, holder, 3, NOW + timedelta(seconds=in_seconds))


def chain(count: int) -> tuple[list[AuditLine], AuditPosition]:
    """``count`` audit lines chained from genesis, and the head after them."""
    lines = []
    prev = GENESIS_HASH
    for i in range(1, count + 1):
        event = json.dumps({"specversion": "1.0", "id": f"e{i}", "data": {"n": i}})
        line = chain_line(event, i, prev)
        lines.append(AuditLine(i, line))
        prev = line_hash(line.encode("utf-8"))
    return lines, AuditPosition(seq=count, index=count, hash=prev)


def config_file(tmp_path: Path, *, cluster: bool = True, servers: int = 3) -> Path:
    """A configuration with ``servers`` servers, a cluster one unless said."""
    watcher = f'[watcher]\nstate_dir = "{tmp_path}/state"\n'
    if cluster:
        watcher += f'store_url = "{STORE_URL}"\nnode_name = "n1"\nlease = 5\n'
    body = "".join(
        f'[[servers]]\nname = "s{i}"\nurl = "https://s{i}.example.com"\n'
        'password = "pw"\n'
        for i in range(1, servers + 1)
    )
    path = tmp_path / "watcher.toml"
    path.write_text(watcher + body, encoding="utf-8")
    return path


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeClusterStore:
    """The fake store every cluster command of the test opens."""
    fake = FakeClusterStore()

    def open_journal(config: Config, *, write: bool = False) -> FakeClusterStore:
        assert config.watcher.is_cluster
        fake.opened.append(write)
        return fake

    monkeypatch.setattr(cli, "_open_journal", open_journal)
    monkeypatch.setattr(cli, "_now", lambda: NOW)
    return fake


# --- cluster ------------------------------------------------------------------


def test_cluster_lists_nodes_and_the_servers_without_a_live_owner(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """One row per node (by name); servers held by a dead node or nobody are named."""
    store.nodes_ = [
        node("n2", leases=1),
        node("n1", leases=1),
        node("n3", alive=False, heartbeat_at=NOW - timedelta(seconds=40)),
    ]
    store.leases_ = [
        lease("s1", "n1"),
        lease("s2", "n3"),
        lease("s3", "n2", in_seconds=-1),
    ]
    assert cli.main(["cluster", "-c", str(config_file(tmp_path))]) == cli.EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "NODE", "ALIVE", "LEASES", "LAST", "HEARTBEAT", "VERSION", "HOST", "PID",
    ]  # fmt: skip
    assert [line.split()[:4] for line in out[1:4]] == [
        ["n1", "yes", "1", "2.0s"],
        ["n2", "yes", "1", "2.0s"],
        ["n3", "no", "0", "40s"],
    ]
    assert out[1].split()[5:] == ["1.13.0", "n1.lab", "4002"]
    assert out[4] == (
        "2 of 3 servers have no live owner (a live node takes them over within "
        "one lease): s2, s3"
    )
    assert store.opened == [False]  # read-only


def test_cluster_json_is_the_documented_object(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cluster --json``: nodes with every field, the server count, the orphans."""
    left = NOW - timedelta(seconds=30)
    store.nodes_ = [
        node("n1", leases=3),
        node("n2", alive=False, left_at=left, heartbeat_at=left),
    ]
    store.leases_ = [lease(s, "n1") for s in ("s1", "s2", "s3")]
    assert cli.main(["cluster", "--json", "-c", str(config_file(tmp_path))]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["servers"] == 3
    assert document["without_owner"] == []
    first, second = document["nodes"]
    assert first == {
        "name": "n1",
        "alive": True,
        "left": False,
        "leases": 3,
        "heartbeat_at": schema.format_time(NOW - timedelta(seconds=2)),
        "heartbeat_age": 2.0,
        "version": "1.13.0",
        "host": "n1.lab",
        "pid": 4002,
        "started_at": schema.format_time(NOW - timedelta(hours=1)),
        "left_at": None,
    }
    assert first["heartbeat_age"] == 2.0
    assert second["left"] is True
    assert second["left_at"] == schema.format_time(left)


def test_cluster_text_says_when_every_server_has_an_owner(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """A left node reads ``left``; the closing line says all is covered."""
    store.nodes_ = [
        node("n1", leases=3),
        node("old", alive=False, left_at=NOW - timedelta(minutes=5)),
    ]
    store.leases_ = [lease(s, "n1") for s in ("s1", "s2", "s3")]
    assert cli.main(["cluster", "-c", str(config_file(tmp_path))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split()[:2] == ["old", "left"]
    assert out[-1] == "every configured server (3) has a live owner"


def test_cluster_with_no_node_yet_says_how_to_start_one(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty store: no table, a sentence, every server unowned."""
    assert cli.main(["cluster", "-c", str(config_file(tmp_path, servers=1))]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "no node has joined yet: start `sklm-watcher run` with this store_url",
        "1 of 1 servers has no live owner (no node is alive: nobody polls them "
        "until one starts): s1",
    ]


@pytest.mark.parametrize(
    ("argv", "tail"),
    [
        (["cluster"], "`sklm-watcher status` shows its servers"),
        (["audit", "export"], "its audit log is the file"),
    ],
)
def test_cluster_commands_on_a_single_node_config_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    tail: str,
) -> None:
    """Without store_url: said in words on standard error, exit 2, no store opened."""

    def no_store(config: Config, *, write: bool = False) -> None:
        raise AssertionError("no store is opened for a single-node config")

    monkeypatch.setattr(cli, "_open_journal", no_store)
    path = config_file(tmp_path, cluster=False)
    assert cli.main([*argv, "-c", str(path)]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(
        f"sklm-watcher: not a cluster: {path} sets no store_url, so the store is "
        f"SQLite in {tmp_path}/state; "
    )
    assert tail in err


# --- status -------------------------------------------------------------------


def _state(phase: Phase) -> dict[str, Any]:
    at = NOW - timedelta(minutes=1)
    return ServerState(
        phase=phase, phase_since_at=at, phase_since_monotonic=0.0, last_ok_at=at
    ).to_dict()


def test_status_shows_which_node_polls_each_server(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """NODE after SERVER: the holder of the unexpired lease; '-' for none."""
    store.nodes_ = [node("n1", leases=1), node("n2", leases=1)]
    store.leases_ = [
        lease("s1", "n1"),
        lease("s2", "n2"),
        lease("s3", "n2", in_seconds=-3),
    ]
    store.states = {name: _state(Phase.IDLE) for name in ("s1", "s2", "s3")}
    assert cli.main(["status", "-c", str(config_file(tmp_path))]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SERVER", "NODE", "HEALTH"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["s1", "n1", "ok"],
        ["s2", "n2", "ok"],
        # Nobody polls it now: its stored state is stale until a node takes it.
        ["s3", "-", "ok"],
    ]
    assert "(stale)" in lines[3]
    assert err == ""


def test_status_json_has_node_and_daemon_running_per_holder(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """``node`` in every object; ``daemon_running`` is whether its holder is alive."""
    store.nodes_ = [node("n1", leases=1), node("n2", alive=False)]
    store.leases_ = [lease("s1", "n1"), lease("s2", "n2")]
    store.states = {"s1": _state(Phase.RESTORE_KEYSTORES)}
    assert cli.main(["status", "--json", "-c", str(config_file(tmp_path))]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["server"], r["node"], r["daemon_running"]) for r in rows] == [
        ("s1", "n1", True),
        ("s2", "n2", False),
        ("s3", None, False),
    ]
    assert rows[0]["phase"] == "RESTORE_KEYSTORES"
    assert rows[2]["health"] == str(Health.UNKNOWN)


def test_status_with_no_live_node_says_so(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every node dead: the data's age on standard error, as for a stopped daemon."""
    store.nodes_ = [node("n1", alive=False)]
    store.states = {"s1": _state(Phase.IDLE)}
    assert cli.main(["status", "-c", str(config_file(tmp_path, servers=1))]) == 0
    err = capsys.readouterr().err
    assert err.startswith("no node of the cluster is alive; data as of ")


def test_single_node_status_has_no_node_column() -> None:
    """Without a cluster the table and JSON are unchanged (no NODE, no ``node``)."""
    row = views.ServerStatusRow(server="s1", health=Health.OK)
    assert "NODE" not in row.HEADERS
    assert "node" not in row.to_json()
    clustered = views.with_nodes([row], {"s1": "n1"})[0]
    assert clustered.to_json() == {**row.to_json(), "node": "n1"}


# --- audit export / verify ------------------------------------------------------


def test_audit_export_writes_the_chain_byte_for_byte(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o FILE: one line per AuditLine, exactly, and `audit verify FILE` accepts it."""
    store.lines, store.position = chain(5)
    out_file = tmp_path / "export.jsonl"
    path = str(config_file(tmp_path))
    assert cli.main(["audit", "export", "-c", path, "-o", str(out_file)]) == 0
    assert out_file.read_bytes() == b"".join(
        line.line.encode() + b"\n" for line in store.lines
    )
    assert capsys.readouterr().err == (
        f"exported 5 audit lines (auditseq 1..5) to {out_file}\n"
    )
    assert cli.main(["audit", "verify", str(out_file)]) == 0
    assert "audit log intact: 5 lines chain" in capsys.readouterr().out


def test_audit_export_after_n_to_standard_output(
    tmp_path: Path, store: FakeClusterStore, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    """--after N: the lines after auditseq N; still a chain audit verify accepts."""
    store.lines, store.position = chain(4)
    path = str(config_file(tmp_path))
    assert cli.main(["audit", "export", "--after", "2", "-c", path]) == 0
    out, err = capfdbinary.readouterr()
    assert out == b"".join(line.line.encode() + b"\n" for line in store.lines[2:])
    assert err == b"exported 2 audit lines (auditseq 3..4) to standard output\n"
    tail = tmp_path / "tail.jsonl"
    tail.write_bytes(out)
    assert audit.verify_audit([tail]).ok


@pytest.mark.parametrize("after", ["-1", "x"])
def test_audit_export_refuses_a_bad_after(
    tmp_path: Path, store: FakeClusterStore, after: str
) -> None:
    """--after takes an auditseq: argparse refuses anything else (exit 2)."""
    with pytest.raises(SystemExit) as caught:
        cli.main(["audit", "export", "--after", after, "-c", str(tmp_path / "x")])
    assert caught.value.code == cli.EXIT_USAGE


def test_audit_verify_without_files_checks_the_stores_chain(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a cluster, no files: the store's chain from genesis to its head."""
    store.lines, store.position = chain(3)
    path = str(config_file(tmp_path))
    assert cli.main(["audit", "verify", "-c", path, "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ok"] is True
    assert verdict["lines"] == 3
    assert verdict["anchor"] == GENESIS_HASH
    assert store.position is not None
    assert verdict["last_hash"] == store.position.hash


def test_audit_verify_names_a_changed_store_line_by_auditseq(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line edited in the database: exit 1, the fault at ``store:<auditseq>``."""
    lines, store.position = chain(4)
    edited = lines[1].line.replace('"n": 2', '"n": 20')
    store.lines = [lines[0], AuditLine(2, edited), *lines[2:]]
    assert cli.main(["audit", "verify", "-c", str(config_file(tmp_path))]) == 1
    assert capsys.readouterr().out.startswith("audit log NOT intact: store:2: ")


def test_audit_verify_notices_a_removed_first_line(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chain must start at genesis: deleting its first rows is caught too."""
    lines, store.position = chain(3)
    store.lines = lines[1:]
    assert cli.main(["audit", "verify", "-c", str(config_file(tmp_path))]) == 1
    assert capsys.readouterr().out.startswith("audit log NOT intact: store:1: ")


def test_audit_verify_notices_a_removed_last_line(
    tmp_path: Path, store: FakeClusterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """The head the store keeps tells a removed last line (the chain alone cannot)."""
    lines, store.position = chain(3)
    store.lines = lines[:2]
    assert cli.main(["audit", "verify", "-c", str(config_file(tmp_path))]) == 1
    assert capsys.readouterr().out.startswith("audit log NOT intact: store:2: ")


# --- check-config ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "version", "detail", "code"),
    [
        (StoreState.CURRENT, 1, "ready", cli.EXIT_OK),
        (StoreState.WILL_BE_MIGRATED, 0, "run migrates it", cli.EXIT_OK),
        (StoreState.TOO_NEW, 9, "run the release that wrote it", cli.EXIT_FAILURE),
        (StoreState.NO_DRIVER, None, "pip install", cli.EXIT_FAILURE),
    ],
)
def test_check_config_reports_what_run_finds_at_the_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    state: StoreState,
    version: int | None,
    detail: str,
    code: int,
) -> None:
    """Usable (current, created, migrated): exit 0 with a line; else exit 1, why."""
    asked: list[str] = []

    def check_store(url: Secret) -> StoreCheck:
        asked.append(url.reveal())
        return StoreCheck("pg-host-3.example.net:5432/sklm", state, version, detail)

    monkeypatch.setattr(store_module, "check_store", check_store)
    path = config_file(tmp_path)
    assert cli.main(["check-config", "-c", str(path)]) == code
    out, err = capsys.readouterr()
    assert asked == [STORE_URL]
    line = StoreCheck("pg-host-3.example.net:5432/sklm", state, version, detail)
    if code == cli.EXIT_OK:
        assert out.splitlines()[1] == f"{line.summary()}; node n1, lease 5 s"
    else:
        assert out == ""
        assert (
            f"sklm-watcher: {path}: the file is valid, but run cannot use its "
            f"store: {line.summary()}"
        ) in err
    assert "pg-pw-5e1d" not in out + err
