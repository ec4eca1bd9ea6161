"""The README's first command: `sklm-watcher demo` shows a fleet followed correctly."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_by_itself_and_matches_ground_truth(spawn) -> None:
    """The demo ends on its own, exit 0, with a summary that matches ground truth."""
    demo = spawn("demo")
    assert demo.wait(timeout=58) == 0, demo.stdout() + demo.stderr()
    out = demo.stdout()
    assert "restore completed" in out
    assert "inferred (passed between two polls)" in out
    assert "restore failed" in out
    assert "restore stalled" in out
    assert "server restarted after the restore" in out
    assert (
        "The recorded phases match the simulator's ground truth (5/5 servers)." in out
    )
    for server in ("sklm-fast", "sklm-fail", "sklm-restart", "sklm-stall", "sklm-idle"):
        assert server in out.split("Summary", 1)[1]
    assert demo.stderr() == ""
