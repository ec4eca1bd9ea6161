"""The built-in SKLM simulator: many scripted SKLM servers on loopback, one port each.

A fenced subpackage: only ``watcher.cli`` and ``watcher.demo`` (and the tests and
benchmarks) import it, through the names below; it imports nothing of the watcher
but ``errors`` and ``phases``, so it cannot mirror a client bug. Inside, each module
imports only those above it::

    scenario        the scenario model, and TOML -> validated Scenario
    planner         pure: a server's timeline (segments of time, actions at instants)
    server          one SimulatedServer: its port, sessions and SKLM wire answers
    fleet           Simulator: every server of a scenario, and the ground truth
    tls             make_tls: a throw-away CA for HTTPS (trustme)
    watcher_config  write_watcher_config: a watcher TOML for the running fleet
    cli             ``sklm-watcher simulate``
"""

from __future__ import annotations

from watcher.errors import RestoreRunning, ScenarioError, TlsUnavailableError
from watcher.simulator.cli import add_arguments, output_folder, run_from_args
from watcher.simulator.fleet import Simulator
from watcher.simulator.planner import Mode
from watcher.simulator.scenario import (
    DEFAULT_API_BASE,
    DEFAULT_PASSWORD,
    RestoreScript,
    Scenario,
    ServerSpec,
    load_scenario,
    scenario_path,
)
from watcher.simulator.server import SimulatedServer
from watcher.simulator.tls import make_tls
from watcher.simulator.watcher_config import SIMULATION_DEFAULTS, write_watcher_config

__all__ = [
    "DEFAULT_API_BASE",
    "DEFAULT_PASSWORD",
    "SIMULATION_DEFAULTS",
    "Mode",
    "RestoreRunning",
    "RestoreScript",
    "Scenario",
    "ScenarioError",
    "ServerSpec",
    "SimulatedServer",
    "Simulator",
    "TlsUnavailableError",
    "add_arguments",
    "load_scenario",
    "make_tls",
    "output_folder",
    "run_from_args",
    "scenario_path",
    "write_watcher_config",
]
