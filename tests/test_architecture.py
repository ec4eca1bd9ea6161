"""Imports flow one way: each module imports only the package modules its row allows.

The table is the README's architecture section; change both together.
"""

from __future__ import annotations

import ast
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
    "events": {"phases"},
    "config": {"errors", "events"},
    "tracker": {"phases", "events", "config"},
    "cadence": {"phases", "tracker", "config"},
    "client": {"phases", "config", "errors"},
    "journal": {"phases", "events", "tracker", "config", "errors"},
    "sinks": {"events", "config", "errors", "phases", "sinks", "clock"},
    "scheduler": {
        "client",
        "tracker",
        "cadence",
        "phases",
        "config",
        "errors",
        "events",
        "clock",
    },
    "dispatcher": {"journal", "sinks", "events", "config", "errors", "clock"},
    "simulator": {"phases"},
    "service": {"tracker", "events", "phases", "config", "errors"},
    "daemon": {
        "clock",
        "errors",
        "phases",
        "events",
        "config",
        "tracker",
        "cadence",
        "client",
        "journal",
        "sinks",
        "scheduler",
        "dispatcher",
        "logs",
        "notify",
        "service",
    },
    "views": {"journal", "events", "phases", "tracker", "config", "errors"},
    "demo": {"simulator", "daemon", "config", "events", "phases", "errors", "journal"},
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


def test_only_the_journal_uses_sqlite() -> None:
    """SQLite stays behind the journal (and the CLI's read-only views go through it)."""
    users = {
        _module_key(p)
        for p in MODULES
        if "sqlite3"
        in {
            alias.name
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import)
            for alias in node.names
        }
    }
    assert users <= {"journal"}
