"""Sinks that hold a connection are closed when their dispatcher ends."""

from watcher.events import Event
from watcher.sinks.base import ClosableSink, Sink, close_sinks


class _Plain:
    name = "plain"

    async def deliver(self, event: Event) -> None:
        """Deliver nothing."""


class _Holding(_Plain):
    def __init__(self) -> None:
        self.closed = 0

    async def aclose(self) -> None:
        """Count the closes."""
        self.closed += 1


async def test_close_sinks_closes_exactly_the_sinks_that_hold_a_connection() -> None:
    """A syslog-like sink is closed once; a plain HTTP-style sink is left alone."""
    holding, plain = _Holding(), _Plain()
    sinks: list[Sink] = [plain, holding]

    await close_sinks(sinks)

    assert holding.closed == 1
    assert isinstance(holding, ClosableSink)
    assert not isinstance(plain, ClosableSink)
