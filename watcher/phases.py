"""SKLM restore phases: their codes, names and order, and what a poll reports."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Phase(IntEnum):
    """A restore phase as SKLM reports it; the integer value is SKLM's ``code``.

    SKLM has no FAILED phase: a failed restore drops back to IDLE.
    """

    IDLE = 0
    INITIALIZE = 1
    CREATE_TEMP_DIR = 2
    RESTORE_CONFIG_FILES = 3
    RESTORE_KEYSTORES = 4
    RESTORE_DATABASES = 5
    CLEANUP = 6
    COMPLETED = 7

    @property
    def is_active(self) -> bool:
        """Whether a restore is running in this phase (neither IDLE nor COMPLETED)."""
        return Phase.IDLE < self < Phase.COMPLETED

    @property
    def is_terminal(self) -> bool:
        """Whether this phase ends a restore on success (COMPLETED)."""
        return self is Phase.COMPLETED

    @classmethod
    def from_status(cls, status: str) -> Phase | None:
        """Return the phase named ``status`` (SKLM's spelling), or None if unknown."""
        return cls.__members__.get(status)

    @classmethod
    def from_code(cls, code: int) -> Phase | None:
        """Return the phase with SKLM code ``code``, or None if out of range."""
        try:
            return cls(code)
        except ValueError:
            return None


#: Phases a restore passes through, in order, from its first to COMPLETED.
RESTORE_PHASES: tuple[Phase, ...] = tuple(p for p in Phase if p is not Phase.IDLE)


def phases_between(previous: Phase, current: Phase) -> tuple[Phase, ...]:
    """Return the restore phases strictly between ``previous`` and ``current``.

    These are the phases a poller missed. IDLE counts as "before INITIALIZE", so
    ``phases_between(IDLE, RESTORE_KEYSTORES)`` is INITIALIZE..RESTORE_CONFIG_FILES.
    Returns an empty tuple when ``current`` does not come after ``previous``.
    """
    if current <= previous + 1:
        return ()
    return tuple(Phase(code) for code in range(previous + 1, current))


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one successful progress poll saw (``SklmClient.poll_phase`` returns it).

    A plain value here, not in ``client``, so the scheduler can name it without
    loading aiohttp.

    Attributes:
        phase: The phase SKLM reported.
        relogin: True when the server rejected a session id that had worked
            before and one fresh login then succeeded (a hint of a restart).
        path: The progress path that answered (absolute, e.g.
            ``/SKLM/rest/v1/ckms/restore/progress``).
    """

    phase: Phase
    relogin: bool
    path: str
