"""The timeline of one simulated server: segments of time, and what happens when.

The phase at any instant is computed from ``time.monotonic()`` against the planned
timeline, so millisecond phases are exact; the server's driver only performs the
actions (ground-truth lines, closing and reopening the socket) at their instants.
Everything here is pure: a :class:`Planner` lays out segments and actions, and the
server swaps them in.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from watcher.phases import Phase
from watcher.simulator.scenario import RestoreScript


class Mode(enum.Enum):
    """What a simulated server is doing at some instant."""

    IDLE = "idle"
    RESTORING = "restoring"
    DOWN = "down"
    STARTING = "starting"


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of monotonic time with one answer to "what is the server doing?"."""

    start: float
    end: float
    mode: Mode
    phase: Phase
    #: Ordinal of the restore this belongs to (for IDLE: the last one), None before any.
    restore: int | None
    #: How many restores had begun by this segment.
    started: int
    #: ``restore/result`` during this segment.
    result: int
    #: Scripted restores that have not begun yet.
    remaining: tuple[RestoreScript, ...]


@dataclass(frozen=True, slots=True)
class Action:
    """Something the driver does at ``at``: a ground-truth line and/or a socket change."""

    at: float
    truth: Mapping[str, Any] | None = None
    socket: Literal["close", "listen"] | None = None


class Planner:
    """Lays out segments and actions from ``start`` on; pure apart from its own lists."""

    def __init__(
        self, start: float, *, started: int, result: int, restore: int | None
    ) -> None:
        self.t = start
        self.started = started
        self.result = result
        self.restore_ordinal = restore
        self.segments: list[Segment] = []
        self.actions: list[Action] = []

    def segment(
        self,
        mode: Mode,
        duration: float,
        remaining: tuple[RestoreScript, ...],
        phase: Phase = Phase.IDLE,
    ) -> None:
        """Append ``duration`` seconds of ``mode`` (``phase``) from the plan's end."""
        end = self.t + duration
        self.segments.append(
            Segment(
                self.t,
                end,
                mode,
                phase,
                self.restore_ordinal,
                self.started,
                self.result,
                remaining,
            )
        )
        self.t = end

    def truth(self, kind: str, **fields: Any) -> None:
        """Write a ground-truth line of ``kind`` at the plan's end."""
        self.actions.append(
            Action(self.t, {"kind": kind, "restore": self.restore_ordinal, **fields})
        )

    def restart(
        self,
        down: float,
        starting: float,
        remaining: tuple[RestoreScript, ...],
        *,
        manual: bool,
    ) -> None:
        """Plan a restart: the socket closed for ``down`` s, then ``starting`` s."""
        self.actions.append(
            Action(
                self.t,
                {
                    "kind": "restart_begin",
                    "restore": self.restore_ordinal,
                    "down": down,
                    "starting": starting,
                    "manual": manual,
                },
                socket="close",
            )
        )
        self.result = -1
        self.segment(Mode.DOWN, down, remaining)
        self.actions.append(Action(self.t, socket="listen"))
        self.segment(Mode.STARTING, starting, remaining)
        self.truth("restart_end")

    def run(
        self, script: RestoreScript, remaining: tuple[RestoreScript, ...], *, wait: bool
    ) -> bool:
        """Plan one restore; False if it stalls (nothing after it ever happens)."""
        if wait:
            self.segment(Mode.IDLE, script.idle_before, (script, *remaining))
        self.restore_ordinal = self.started
        self.started += 1
        for i, (phase, seconds) in enumerate(script.phases):
            last = i == len(script.phases) - 1
            stalls = last and script.outcome == "stall"
            self.truth("phase", phase=phase.name, code=int(phase))
            if phase is Phase.COMPLETED:
                self.result = 0
                self.truth("completed", phase=phase.name, code=int(phase))
            if stalls:
                self.truth("stalled", phase=phase.name, code=int(phase))
            self.segment(
                Mode.RESTORING,
                math.inf if stalls else seconds,
                remaining,
                phase,
            )
        if script.outcome == "stall":
            return False
        if script.outcome == "fail":
            self.result = 1
            last_phase = script.phases[-1][0]
            self.truth("failed", phase=last_phase.name, code=int(last_phase))
        else:
            self.restart(
                script.restart_down, script.restart_starting, remaining, manual=False
            )
        return True

    def run_all(
        self, scripts: tuple[RestoreScript, ...], *, offset: float = 0.0
    ) -> None:
        """Plan ``scripts`` one after another, then IDLE forever (unless one stalls).

        ``offset`` lengthens the first script's ``idle_before`` (replicas).
        """
        for i, script in enumerate(scripts):
            if i == 0 and offset:
                script = replace(script, idle_before=script.idle_before + offset)
            if not self.run(script, scripts[i + 1 :], wait=True):
                return
        self.segment(Mode.IDLE, math.inf, ())
