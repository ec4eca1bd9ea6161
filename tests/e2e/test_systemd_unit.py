"""The shipped systemd unit verifies and rates 1.5 or better on systemd's own checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "sklm-watcher.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed: unit checks SKIPPED"
)


def _unit_with_real_executable(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists; point it at this environment's script.
    script = Path(sys.executable).with_name("sklm-watcher")
    text = UNIT.read_text(encoding="utf-8").replace(
        "/opt/sklm-watcher/bin/sklm-watcher", str(script)
    )
    unit = tmp_path / UNIT.name
    unit.write_text(text, encoding="utf-8")
    return unit


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit."""
    assert ANALYZE is not None
    unit = _unit_with_real_executable(tmp_path)
    done = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


@needs_analyze
def test_unit_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates the unit 1.5 or lower."""
    assert ANALYZE is not None
    unit = _unit_with_real_executable(tmp_path)
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--threshold=15", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "Overall exposure level" in done.stdout


def test_unit_is_type_notify_with_watchdog_and_reload() -> None:
    """The unit declares the protocol the daemon speaks: notify, watchdog, SIGHUP reload."""
    text = UNIT.read_text(encoding="utf-8")
    for line in (
        "Type=notify",
        "WatchdogSec=30s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "StateDirectory=sklm-watcher",
        "LogsDirectory=sklm-watcher",
        "ConfigurationDirectory=sklm-watcher",
    ):
        assert line in text.splitlines()
