"""The daemon: wiring only. One ClientSession, the journal, the fleet and the dispatcher.

SIGTERM / SIGINT stop polling, give deliveries in flight ``drain_timeout`` seconds,
log out of every SKLM server and return. SIGHUP reloads the configuration.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import structlog

from watcher.client import SklmClient, create_session
from watcher.config import Config
from watcher.dispatcher import Dispatcher
from watcher.errors import ConfigError, JournalError
from watcher.events import Event
from watcher.journal import Journal
from watcher.notify import SystemdNotifier
from watcher.scheduler import Clock, Fleet, SystemClock
from watcher.sinks import build_sink
from watcher.tracker import ServerState

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class JournalRecorder:
    """The scheduler's ``Recorder``: journal first, then wake the dispatcher."""

    journal: Journal
    wake: Callable[[], None]
    recorded: int = 0
    failures: int = field(default=0)

    async def record(
        self, server: str, state: ServerState, events: Sequence[Event]
    ) -> None:
        """Write the state and events durably, then let the dispatcher deliver them."""
        try:
            new = await self.journal.call(
                self.journal.record, server, state.to_dict(), events
            )
        except JournalError:
            self.failures += 1
            raise
        self.recorded += len(new)
        if new:
            self.wake()


class Daemon:
    """sklm-watcher, running: polls the fleet, journals events, delivers them.

    Args:
        config: The validated configuration.
        reload: Re-reads the configuration for SIGHUP; None disables reload.
        clock: Time source (tests inject a fake).
        notifier: systemd notification (a no-op outside systemd).
    """

    def __init__(
        self,
        config: Config,
        *,
        reload: Callable[[], Config] | None = None,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self._reload = reload
        self._clock = clock or SystemClock()
        self._notifier = notifier or SystemdNotifier()
        self.fleet: Fleet | None = None
        self._stop: anyio.Event | None = None
        self._stop_requested = False

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down cleanly."""
        self._stop = anyio.Event()
        if self._stop_requested:
            self._stop.set()
        config = self.config
        journal = Journal.open(
            config.watcher.state_dir, config.watcher.audit_log, config.sinks
        )
        try:
            await self._run(journal)
        finally:
            journal.close()

    async def _run(self, journal: Journal) -> None:
        config = self.config
        clock = self._clock
        now, mono = clock.now(), clock.monotonic()
        states = {
            name: ServerState.from_dict(stored, at=now, monotonic=mono)
            for name, stored in journal.load_states().items()
        }
        async with create_session(config.servers) as session:
            clients = {s.name: SklmClient(s, session) for s in config.servers}
            sinks = {c.name: build_sink(c, session) for c in config.sinks}
            dispatcher = Dispatcher(
                journal, sinks, {c.name: c for c in config.sinks}, clock
            )
            recorder = JournalRecorder(journal, dispatcher.wake)
            fleet = Fleet(
                config.servers,
                clients,
                recorder,
                clock,
                states=states,
                jitter=config.watcher.jitter,
            )
            self.fleet = fleet
            fleet_scope = anyio.CancelScope()
            dispatch_scope = anyio.CancelScope()

            async def run_fleet() -> None:
                with fleet_scope:
                    await fleet.run()

            async def run_dispatcher() -> None:
                with dispatch_scope:
                    await dispatcher.run()

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_fleet)
                tg.start_soon(run_dispatcher)
                tg.start_soon(self._watch_signals)
                log.info(
                    "daemon.started",
                    servers=len(config.servers),
                    sinks=len(config.sinks),
                )
                self._notifier.ready(self._status_line())
                await self._stop.wait()
                self._notifier.stopping()
                fleet_scope.cancel()
                with anyio.move_on_after(config.watcher.drain_timeout):
                    await dispatcher.drain()
                tg.cancel_scope.cancel()
            with anyio.move_on_after(3, shield=True):
                async with anyio.create_task_group() as tg:
                    for client in clients.values():
                        tg.start_soon(client.logout)
        log.info("daemon.stopped")

    def stop(self) -> None:
        """Ask the daemon to shut down cleanly (what SIGTERM does)."""
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(
            signal.SIGTERM, signal.SIGINT, signal.SIGHUP
        ) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self._handle_reload()
                    continue
                log.info("daemon.stopping", signal=signal.Signals(signum).name)
                self.stop()
                return

    async def _handle_reload(self) -> None:
        if self._reload is None:
            return
        self._notifier.reloading()
        try:
            new = self._reload()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload.problem", key=problem.key, reason=problem.reason)
            log.error("reload.rejected", detail="keeping the running configuration")
        else:
            log.info("reload.accepted", servers=len(new.servers))
            self.config = new
        self._notifier.ready(self._status_line())

    def _status_line(self) -> str:
        return f"watching {len(self.config.servers)} servers"
