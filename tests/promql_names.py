"""The metric names the shipped Prometheus rules and Grafana dashboard query.

Shared by the rule tests (integration) and the real-daemon scrape (e2e): both check
that every name is one the daemon exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "config" / "prometheus" / "sklm-watcher.rules.yml"
RULE_TESTS = REPO / "config" / "prometheus" / "sklm-watcher.rules.test.yml"
DASHBOARD = REPO / "config" / "grafana" / "sklm-watcher.json"

#: A daemon metric inside a PromQL expression (the daemon's names all start so).
_DAEMON_NAME = re.compile(r"\bsklm_watcher_[a-zA-Z0-9_]*")
#: The rules file keeps every ``expr:`` on one line (no YAML parser in [dev]).
_EXPR_LINE = re.compile(r"^\s+expr:\s*(.+?)\s*$", re.MULTILINE)
_ALERT_LINE = re.compile(r"^\s+- alert:\s*(\S+)\s*$", re.MULTILINE)


def rule_exprs() -> dict[str, str]:
    """Alert name -> its ``expr`` from the shipped rules file."""
    text = RULES.read_text(encoding="utf-8")
    alerts = _ALERT_LINE.findall(text)
    exprs = _EXPR_LINE.findall(text)
    assert len(alerts) == len(exprs), "every alert needs a one-line expr"
    return dict(zip(alerts, exprs, strict=True))


def dashboard() -> dict[str, Any]:
    """The shipped Grafana dashboard, parsed."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel that queries (rows are layout only)."""
    return [p for p in dashboard()["panels"] if p.get("type") != "row"]


def dashboard_exprs() -> list[str]:
    """Every target ``expr`` of the dashboard, in panel order."""
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def daemon_names(expr: str) -> set[str]:
    """The daemon metric names one PromQL expression uses."""
    return set(_DAEMON_NAME.findall(expr))


def queried_names() -> dict[str, set[str]]:
    """Metric name -> where it is used (alert names, ``dashboard``)."""
    used: dict[str, set[str]] = {}
    for alert, expr in rule_exprs().items():
        for name in daemon_names(expr):
            used.setdefault(name, set()).add(alert)
    for expr in dashboard_exprs():
        for name in daemon_names(expr):
            used.setdefault(name, set()).add("dashboard")
    return used


def exported_names(exposition: str) -> set[str]:
    """The sample names (``_total``, ``_bucket`` ... included) in a /metrics body."""
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
