"""Imports flow one way: each module imports only the package modules its row allows.

The table is the README's architecture section; change both together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "watcher"

# module -> package-internal modules it may import ("sinks" covers watcher.sinks.*)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "phases": set(),
    "logs": set(),
    "notify": set(),
    "clock": set(),
    "backoff": set(),
    "events": {"phases"},
    "config": {"events"},
    "configfile": {"config", "errors", "events"},
    "tracker": {"phases", "events", "config", "errors"},
    "schema": {"phases", "events", "tracker"},
    "cadence": {"phases", "tracker", "config", "backoff"},
    "client": {"phases", "config", "errors"},
    "audit": {"errors", "schema"},
    # store/base.py is the protocol; store/sqlite/ and store/postgres/ (issue 13)
    # the implementations, each the only user of its driver (tests below).
    "store": {"audit", "clock", "config", "errors", "events", "schema"},
    "sinks": {"events", "config", "errors", "phases", "sinks", "clock"},
    # Not client: PollResult lives in phases, so the scheduler loads no aiohttp.
    # The cluster's lease plan (issue 13): pure, like the tracker.
    "cluster": set(),
    # The lease keeper: drives the fleet (through its own Follower protocol)
    # from a ClusterStore's leases.
    "leasing": {"cluster", "store", "tracker", "errors", "clock"},
    # What a cluster node shows of its peers' servers (/status, the dashboard).
    "peers": {"store", "tracker", "errors", "clock"},
    "scheduler": {
        "tracker",
        "cadence",
        "phases",
        "config",
        "errors",
        "events",
        "clock",
    },
    "dispatcher": {
        "store",
        "sinks",
        "events",
        "config",
        "errors",
        "clock",
        "backoff",
    },
    # A fenced subpackage: see test_only_cli_and_demo_import_the_simulator.
    "simulator": {"phases", "errors"},
    "service": {
        "tracker",
        "events",
        "phases",
        "config",
        "errors",
        "schema",
        "store",
        "dashboard",
        "stream",
    },
    # The dashboard's routes and its live event stream (issue 14).
    "stream": {"store", "errors"},
    "dashboard": {"schema", "views", "store", "stream", "errors", "tracker"},
    "daemon": {
        "clock",
        "errors",
        "phases",
        "events",
        "config",
        "tracker",
        "cadence",
        "client",
        "store",
        "sinks",
        "scheduler",
        "dispatcher",
        "logs",
        "notify",
        "service",
        "stream",
        "leasing",
        "peers",
    },
    "views": {
        "store",
        "events",
        "phases",
        "tracker",
        "config",
        "errors",
        "schema",
    },
    "demo": {
        "simulator",
        "daemon",
        "config",
        "configfile",
        "events",
        "phases",
        "errors",
        "store",
    },
    "cli": {"*"},
    "__main__": {"cli"},
    "__init__": set(),
}


def _module_key(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: use absolute imports (watcher.x)")
            names = [node.module]
            if node.module == "watcher":
                # `from watcher import x`: a module, or a name like __version__.
                names = [
                    f"watcher.{alias.name}"
                    for alias in node.names
                    if (PACKAGE / f"{alias.name}.py").exists()
                    or (PACKAGE / alias.name).is_dir()
                ]
        for name in names:
            parts = name.split(".")
            if parts[0] == "watcher" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_follow_the_table(path: Path) -> None:
    """A module imports only the package modules its row of the table allows."""
    key = _module_key(path)
    assert key in ALLOWED, f"{key} has no row in the architecture table"
    allowed = ALLOWED[key]
    if "*" in allowed:
        return
    imported = _imports(path) - {key}
    assert imported <= allowed, f"{key} imports {sorted(imported - allowed)}"


def test_only_the_sqlite_store_uses_sqlite() -> None:
    """SQLite stays behind the store boundary, in ``store/sqlite/`` only."""
    users = {
        p.relative_to(PACKAGE).parts[:2]
        for p in MODULES
        if "sqlite3"
        in {
            alias.name
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import)
            for alias in node.names
        }
    }
    assert users <= {("store", "sqlite")}


def test_only_the_postgres_store_uses_psycopg() -> None:
    """psycopg stays in ``store/postgres/``: a single-node install needs no driver."""
    users = set()
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "psycopg" for name in names):
                users.add(p.relative_to(PACKAGE).parts[:2])
    assert users <= {("store", "postgres")}


def test_importing_the_store_loads_no_psycopg() -> None:
    """The store package (and the SQLite store) import psycopg only for a store_url."""
    code = (
        "import sys, watcher.store, watcher.store.sqlite, watcher.daemon;"
        " print('psycopg' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


def test_only_cli_and_demo_import_the_simulator() -> None:
    """The simulator is fenced: in the package only ``cli`` and ``demo`` import it.

    (Tests and benchmarks import it too.) It speaks the wire format on its own, so
    nothing that runs in the daemon may lean on it; ``cli``'s wildcard row would
    otherwise hide a new importer.
    """
    importers = {_module_key(p) for p in MODULES if "simulator" in _imports(p)}
    assert importers - {"simulator"} <= {"cli", "demo"}


def test_the_scheduler_loads_no_aiohttp() -> None:
    """Importing the scheduler (or the pure core under it) does not import aiohttp."""
    code = "import sys, watcher.scheduler; print('aiohttp' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
