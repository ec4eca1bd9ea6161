"""`sklm-watcher simulate` writes into an output folder, never into the current one."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import sys
from pathlib import Path

import pytest

from watcher.configfile import load_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BASIC = REPO / "watcher" / "scenarios" / "basic.toml"


async def simulate(cwd: Path, *args: str) -> list[str]:
    """Run ``simulate BASIC ARGS`` in ``cwd`` until ``ready``, SIGTERM it, return lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        "simulate",
        str(BASIC),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=cwd,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        # Only a guard against a hang: the loop ends on the "ready" line.
        async with asyncio.timeout(30):
            while not lines or lines[-1] != "ready":
                line = await process.stdout.readline()
                if not line:
                    break
                lines.append(line.decode().rstrip("\n"))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _, stderr = await process.communicate()
    assert lines[-1:] == ["ready"], "\n".join(lines) + stderr.decode()
    assert process.returncode == 0, stderr.decode()
    return lines


def printed(lines: list[str], key: str) -> Path:
    """The path of the ``KEY PATH`` line."""
    line = next(line for line in lines if line.startswith(f"{key} "))
    return Path(line.removeprefix(f"{key} "))


def tree(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, relative."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


async def test_relative_paths_land_inside_out(tmp_path: Path) -> None:
    """The README's command, run in a checkout, leaves the checkout untouched."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    lines = await simulate(
        checkout,
        "--out",
        "sim-out",
        "--tls",
        "--ca-out",
        "ca.pem",
        "--write-config",
        "watcher.toml",
        "--ground-truth",
        "truth.jsonl",
    )
    out = checkout / "sim-out"
    assert tree(checkout) == {"sim-out", *(f"sim-out/{p}" for p in tree(out))}
    assert printed(lines, "out") == out
    assert printed(lines, "ca-file") == out / "ca.pem"
    assert printed(lines, "config") == out / "watcher.toml"
    assert {"ca.pem", "watcher.toml", "truth.jsonl"} <= tree(out)
    secrets = sorted(out.glob("watcher.password-*"))
    assert secrets
    for secret in secrets:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    config = load_config(out / "watcher.toml", environ={})
    assert config.watcher.state_dir == out / "state"
    assert config.servers[0].ca_file == out / "ca.pem"


async def test_without_out_a_new_temporary_folder_is_printed(tmp_path: Path) -> None:
    """No --out: the files go to a fresh temporary folder whose path is printed."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    lines = await simulate(cwd, "--tls", "--write-config", "watcher.toml")
    out = printed(lines, "out")
    try:
        assert out.is_absolute()
        assert not out.is_relative_to(cwd)
        assert tree(cwd) == set()
        assert printed(lines, "ca-file") == out / "ca.pem"
        assert printed(lines, "config") == out / "watcher.toml"
        config = load_config(out / "watcher.toml", environ={})
        assert config.watcher.state_dir == out / "state"
    finally:
        shutil.rmtree(out, ignore_errors=True)


async def test_absolute_paths_are_used_as_given(tmp_path: Path) -> None:
    """An absolute FILE stays where it was asked for, outside the output folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    elsewhere = tmp_path / "elsewhere"
    lines = await simulate(
        cwd,
        "--out",
        str(tmp_path / "out"),
        "--write-config",
        str(elsewhere / "w.toml"),
        "--state-dir",
        str(elsewhere / "st"),
    )
    assert printed(lines, "config") == elsewhere / "w.toml"
    assert printed(lines, "out") == tmp_path / "out"
    config = load_config(elsewhere / "w.toml", environ={})
    assert config.watcher.state_dir == elsewhere / "st"
    assert config.servers[0].url.startswith("http://127.0.0.1:")
    assert tree(cwd) == set()
