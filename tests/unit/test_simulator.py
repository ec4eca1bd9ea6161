"""Scenario files, the simulator's timeline and its command-line pieces, without sockets."""

from __future__ import annotations

import argparse
import hashlib
import math
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from watcher.errors import SimulatorError, WatcherError
from watcher.phases import Phase
from watcher.simulator import (
    Mode,
    RestoreRunning,
    RestoreScript,
    Scenario,
    ScenarioError,
    ServerSpec,
    SimulatedServer,
    TlsUnavailableError,
    add_arguments,
    load_scenario,
    make_tls,
    run_from_args,
    scenario_path,
)

SCENARIOS = Path(__file__).resolve().parents[2] / "watcher" / "scenarios"

FULL = """
description = "one of everything"

[watcher_defaults]
stall_after = 5.0
burst_polls = 2

[defaults]
password = "pw"
latency = 0.01

[[servers]]
name = "sim-1"
username = "admin"
progress_paths = ["restore"]
code_as_int = true
login_field = "userAuthId"
error_code_in_message = true
session_idle_timeout = 60
error_rate = 0.5
faults = ["json_404"]
seed = 3
tklm_version = "4.1.1.0"
watcher_password = "wrong"
watcher_progress_path = "restore"
api_base = "/GKLM/rest/v1/"

[[servers.restores]]
idle_before = 2
phases = [[1, 0.5], ["RESTORE_KEYSTORES", 1.0], [7, 0.3]]
restart_down = 1.0
restart_starting = 0.5

[[servers.restores]]
phases = [[1, 0.5], [4]]
outcome = "stall"

[servers.on_demand]
phases = [[2, 0.1], [3, 0.2]]
outcome = "fail"
"""


def parse(data: dict[str, Any]) -> Scenario:
    """Build a scenario from a dict."""
    return Scenario.from_dict(data)


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The (key, reason) list a bad scenario dict raises."""
    with pytest.raises(ScenarioError) as caught:
        Scenario.from_dict(data)
    return caught.value.problems


def test_a_full_scenario_file(tmp_path) -> None:
    """Every key of the format lands in the dataclasses, defaults merged in."""
    path = tmp_path / "full.toml"
    path.write_text(FULL)
    scenario = load_scenario(path)
    assert scenario == Scenario(
        servers=(
            ServerSpec(
                name="sim-1",
                username="admin",
                password="pw",
                api_base="/GKLM/rest/v1",
                progress_paths=("restore",),
                code_as_int=True,
                login_field="userAuthId",
                error_code_in_message=True,
                session_idle_timeout=60.0,
                latency=0.01,
                error_rate=0.5,
                faults=("json_404",),
                seed=3,
                tklm_version="4.1.1.0",
                restores=(
                    RestoreScript(
                        phases=(
                            (Phase.INITIALIZE, 0.5),
                            (Phase.RESTORE_KEYSTORES, 1.0),
                            (Phase.COMPLETED, 0.3),
                        ),
                        idle_before=2.0,
                        restart_down=1.0,
                        restart_starting=0.5,
                    ),
                    RestoreScript(
                        phases=(
                            (Phase.INITIALIZE, 0.5),
                            (Phase.RESTORE_KEYSTORES, math.inf),
                        ),
                        outcome="stall",
                    ),
                ),
                on_demand=RestoreScript(
                    phases=(
                        (Phase.CREATE_TEMP_DIR, 0.1),
                        (Phase.RESTORE_CONFIG_FILES, 0.2),
                    ),
                    outcome="fail",
                ),
                watcher_password="wrong",
                watcher_progress_path="restore",
            ),
        ),
        watcher_defaults={"stall_after": 5.0, "burst_polls": 2},
        description="one of everything",
        source=path,
    )


def test_defaults_and_replicas() -> None:
    """count = N makes N numbered replicas with their own seed, port and stagger."""
    scenario = parse(
        {
            "defaults": {"password": "pw"},
            "servers": [
                {"name": "one"},
                {"name": "many", "count": 3, "stagger": 0.5, "port": 9000, "seed": 10},
            ],
        }
    )
    assert [(s.name, s.seed, s.port, s.offset) for s in scenario.servers] == [
        ("one", 0, 0, 0.0),
        ("many-001", 10, 9000, 0.0),
        ("many-002", 11, 9001, 0.5),
        ("many-003", 12, 9002, 1.0),
    ]
    assert {s.password for s in scenario.servers} == {"pw"}


def test_every_problem_is_named() -> None:
    """A bad scenario raises one error listing each bad key and why."""
    found = problems(
        {
            "servres": [],
            "watcher_defaults": {"stall_afte": 1.0, "timeout": 0},
            "defaults": {"name": "x", "latency": -1},
            "servers": [
                {"name": "ok", "login_field": "userid", "restores": [{"phases": []}]},
                {"name": "ok", "progress_paths": ["other"], "error_rate": 2},
                {"port": 70000, "restores": [{"phases": [[1, 1]], "outcom": "x"}]},
            ],
        }
    )
    assert found == [
        ("servres", "unknown key; did you mean 'servers'?"),
        ("watcher_defaults.stall_afte", "unknown key; did you mean 'stall_after'?"),
        ("watcher_defaults.timeout", "must be greater than 0"),
        ("defaults.name", "is per server; set it in [[servers]]"),
        ("servers[0].login_field", 'expected "UserAuthId" or "userAuthId"'),
        ("defaults.latency", "must not be negative"),
        (
            "servers[0].restores[0].phases",
            "expected a non-empty list of [code, seconds] pairs",
        ),
        (
            "servers[1].progress_paths",
            'expected a non-empty list of distinct "backupRestore" / "restore"',
        ),
        ("servers[1].error_rate", "expected a fraction between 0 and 1"),
        ("servers[2].name", "missing: every server needs a unique name"),
        ("servers[2].port", "expected an integer from 0 to 65535"),
        ("servers[2].restores[0].outcom", "unknown key; did you mean 'outcome'?"),
        (
            "servers[2].restores[0].phases",
            "outcome = complete must end with COMPLETED (7)",
        ),
    ]


def test_duplicate_names_and_missing_servers() -> None:
    """Names must be unique after replication, and a scenario needs servers."""
    assert problems({"servers": [{"name": "a-001"}, {"name": "a", "count": 2}]}) == [
        ("servers", "server name 'a-001' is used twice")
    ]
    assert problems({}) == [("servers", "missing: add at least one [[servers]] table")]


@pytest.mark.parametrize(
    ("restore", "expected"),
    [
        (
            {"phases": [[1, 1], [4, 1]]},
            (
                "servers[0].restores[0].phases",
                "outcome = complete must end with COMPLETED (7)",
            ),
        ),
        (
            {"phases": [[1, 1], [7, 1]], "outcome": "fail"},
            (
                "servers[0].restores[0].phases",
                "outcome = fail must not reach COMPLETED (7)",
            ),
        ),
        (
            {"phases": [[4, 1], [2, 1], [7, 1]]},
            (
                "servers[0].restores[0].phases[1]",
                "CREATE_TEMP_DIR does not come after RESTORE_KEYSTORES",
            ),
        ),
        (
            {"phases": [[0, 1], [7, 1]]},
            (
                "servers[0].restores[0].phases[0]",
                "expected a phase code 1..7 or a status name",
            ),
        ),
        (
            {"phases": [[1], [7, 1]]},
            ("servers[0].restores[0].phases[0]", "expected [code, seconds]"),
        ),
        (
            {"phases": [[1, 1], [4, 1]], "outcome": "stall", "restart_down": 1},
            (
                "servers[0].restores[0].restart_down",
                "applies only to outcome = complete",
            ),
        ),
        (
            {"phases": [[1, "1s"], [7, 1]]},
            ("servers[0].restores[0].phases[0]", "expected a number of seconds"),
        ),
    ],
)
def test_phase_rules(restore, expected) -> None:
    """Phases climb strictly; complete ends in COMPLETED, fail and stall do not."""
    assert problems({"servers": [{"name": "s", "restores": [restore]}]}) == [expected]


def test_unreadable_and_malformed_files(tmp_path) -> None:
    """A missing file or a TOML syntax error is a ScenarioError naming the file."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(ScenarioError, match=r"(?s)missing\.toml.*cannot read"):
        load_scenario(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[servers]\nname = 1\n")
    with pytest.raises(ScenarioError, match=r"(?s)broken\.toml.*not valid TOML"):
        load_scenario(broken)


def _settles_after(spec: ServerSpec) -> float:
    """Seconds from start until the server is IDLE or stalled for good."""
    total = spec.offset
    for script in spec.restores:
        total += script.idle_before
        total += sum(s for _, s in script.phases if math.isfinite(s))
        if script.outcome == "complete":
            total += script.restart_down + script.restart_starting
        if script.outcome == "stall":
            break
    return total


def test_shipped_scenarios() -> None:
    """basic, demo and fleet20 load, have the promised shape and settle in time."""
    basic = load_scenario(scenario_path("basic"))
    assert [s.name for s in basic.servers] == ["sklm-1"]

    demo = load_scenario(SCENARIOS / "demo.toml")
    assert 5 <= len(demo.servers) <= 6
    assert demo.watcher_defaults["stall_after"] == 5.0
    outcomes = {r.outcome for s in demo.servers for r in s.restores}
    assert outcomes == {"complete", "fail", "stall"}
    assert any(not s.restores for s in demo.servers)
    assert any(s.code_as_int and s.progress_paths == ("restore",) for s in demo.servers)
    assert max(_settles_after(s) for s in demo.servers) <= 30

    fleet = load_scenario(scenario_path("fleet20.toml"))
    assert len({s.name for s in fleet.servers}) == 20
    assert sum(s.watcher_password is not None for s in fleet.servers) == 1
    assert any(s.session_idle_timeout < 1 for s in fleet.servers)
    assert any(
        s.code_as_int and s.progress_paths == ("restore",) for s in fleet.servers
    )
    phases = [p for s in fleet.servers for r in s.restores for p in r.phases]
    assert any(seconds < 0.01 for _, seconds in phases)
    assert max(_settles_after(s) for s in fleet.servers) <= 25
    with pytest.raises(FileNotFoundError):
        scenario_path("nope")


async def test_timeline_is_computed_from_the_clock() -> None:
    """The phase at any instant follows the script; nothing is bound or written."""
    records: list[tuple[str, float, dict[str, Any]]] = []
    spec = ServerSpec(
        name="s",
        restores=(
            RestoreScript(
                phases=((Phase.INITIALIZE, 0.5), (Phase.CREATE_TEMP_DIR, 0.001)),
                outcome="fail",
                idle_before=1.0,
            ),
            RestoreScript(
                phases=((Phase.INITIALIZE, 0.5), (Phase.COMPLETED, 1.0)),
                idle_before=2.0,
                restart_down=3.0,
                restart_starting=2.0,
            ),
        ),
    )
    server = SimulatedServer(
        spec,
        host="127.0.0.1",
        ssl_context=None,
        record=lambda name, at, fields: records.append((name, at, dict(fields))),
    )
    t0 = time.monotonic() + 1000.0  # far ahead: the driver never acts during the test
    await server.start(t0)
    try:
        expected = [
            (0.0, Mode.IDLE, Phase.IDLE, -1),
            (1.0, Mode.RESTORING, Phase.INITIALIZE, -1),
            (1.5, Mode.RESTORING, Phase.CREATE_TEMP_DIR, -1),
            (1.5005, Mode.RESTORING, Phase.CREATE_TEMP_DIR, -1),
            (1.501, Mode.IDLE, Phase.IDLE, 1),
            (3.501, Mode.RESTORING, Phase.INITIALIZE, 1),
            (4.001, Mode.RESTORING, Phase.COMPLETED, 0),
            (5.001, Mode.DOWN, None, -1),
            (8.001, Mode.STARTING, None, -1),
            (10.001, Mode.IDLE, Phase.IDLE, -1),
            (1e6, Mode.IDLE, Phase.IDLE, -1),
        ]
        for offset, mode, phase, result in expected:
            now = t0 + offset + 1e-7
            assert (
                server.mode(now),
                server.phase(now),
                server.restore_result(now),
            ) == (
                mode,
                phase,
                result,
            ), offset
        assert records == []
        assert not server.listening
    finally:
        await server.close()


async def test_bad_scenario_exits_2(tmp_path, capsys) -> None:
    """`simulate` with a bad scenario exits 2 and names the key on stderr."""
    path = tmp_path / "bad.toml"
    path.write_text('[[servers]]\nname = "a"\nlatency = "slow"\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert await run_from_args(parser.parse_args([str(path)])) == 2
    assert "servers[0].latency: expected a number of seconds" in capsys.readouterr().err
    assert await run_from_args(parser.parse_args([str(path), "--ca-out", "x"])) == 2


def test_make_tls() -> None:
    """make_tls gives a CA PEM, a server context and the leaf's SHA-256 pin."""
    ca_pem, context, fingerprint = make_tls()
    assert ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert context.get_ca_certs() == []
    for hostname in ("127.0.0.1", "localhost"):
        # The pin is the certificate the context presents, verified against the CA.
        leaf = _handshake(context, ca_pem, hostname)
        assert fingerprint == hashlib.sha256(leaf).hexdigest()


def _handshake(server: ssl.SSLContext, ca_pem: bytes, hostname: str) -> bytes:
    """Run a TLS handshake in memory (no socket); return the server's DER cert."""
    trusting = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = trusting.wrap_bio(to_client, to_server, server_hostname=hostname)
    served = server.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(10):
        finished = 0
        for side in (client, served):
            try:
                side.do_handshake()
                finished += 1
            except ssl.SSLWantReadError:
                pass
        if finished == 2:
            break
    leaf = client.getpeercert(binary_form=True)
    assert leaf is not None
    return leaf


def test_make_tls_without_trustme(monkeypatch) -> None:
    """Without trustme, make_tls says which extra to install."""
    monkeypatch.setitem(sys.modules, "trustme", None)
    with pytest.raises(RuntimeError, match=r"sklm-watcher\[simulator\]"):
        make_tls()


def test_simulator_errors_join_the_tree() -> None:
    """The simulator's errors are WatcherErrors, keeping the bases callers caught."""
    assert issubclass(SimulatorError, WatcherError)
    for error, also in (
        (ScenarioError, ValueError),
        (RestoreRunning, RuntimeError),
        (TlsUnavailableError, RuntimeError),
    ):
        assert issubclass(error, SimulatorError)
        assert issubclass(error, also)
