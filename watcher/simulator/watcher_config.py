"""The watcher configuration for a running simulated fleet, and its password files."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from watcher.simulator.fleet import Simulator
from watcher.simulator.scenario import DEFAULT_API_BASE

#: What ``--write-config`` puts in ``[defaults]`` unless the scenario says otherwise.
SIMULATION_DEFAULTS: Final[Mapping[str, float | int]] = MappingProxyType(
    {
        "idle_interval": 1.0,
        "active_interval": 0.2,
        "timeout": 2.0,
        "restart_interval": 0.2,
        "restart_timeout": 30.0,
    }
)


def write_watcher_config(
    simulator: Simulator, path: Path, *, state_dir: Path, ca_file: Path | None = None
) -> None:
    """Write a watcher TOML for the running fleet, and its password files (mode 0600).

    Passwords go to ``<config stem>.password-N`` files beside the config, one per
    distinct password; the config names them in ``password_file``.
    """
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dir = state_dir.resolve()
    password_files: dict[str, Path] = {}
    for spec in simulator.scenario.servers:
        password = spec.watcher_password or spec.password
        if password not in password_files:
            target = path.with_name(f"{path.stem}.password-{len(password_files) + 1}")
            _write_private(target, password + "\n")
            password_files[password] = target
    defaults: dict[str, float | int] = {
        **SIMULATION_DEFAULTS,
        **simulator.scenario.watcher_defaults,
    }
    source = simulator.scenario.source
    lines = [
        "# Watcher configuration for a simulated SKLM fleet, written by",
        f"# `sklm-watcher simulate {source or ''}`. The servers exist while it runs.",
        "",
        "[watcher]",
        f"state_dir = {_toml(str(state_dir))}",
        f"audit_log = {_toml(str(state_dir / 'events.jsonl'))}",
        "",
        "[defaults]",
        *(f"{key} = {value!r}" for key, value in defaults.items()),
    ]
    if ca_file is not None:
        lines.append(f"ca_file = {_toml(str(ca_file.resolve()))}")
    else:
        lines.append("allow_insecure_http = true")
    for spec in simulator.scenario.servers:
        server = simulator.server(spec.name)
        password = spec.watcher_password or spec.password
        lines += [
            "",
            "[[servers]]",
            f"name = {_toml(spec.name)}",
            f"url = {_toml(server.url)}",
            f"username = {_toml(spec.username)}",
            f"password_file = {_toml(str(password_files[password]))}",
        ]
        if spec.api_base != DEFAULT_API_BASE:
            lines.append(f"api_base = {_toml(spec.api_base)}")
        if spec.watcher_progress_path:
            progress = f"{spec.api_base}/ckms/{spec.watcher_progress_path}/progress"
            lines.append(f"progress_path = {_toml(progress)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _toml(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, given non-ASCII kept literal)."""
    return json.dumps(text, ensure_ascii=False)


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)
