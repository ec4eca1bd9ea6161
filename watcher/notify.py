"""systemd's ``sd_notify`` datagram protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

A few lines of our own instead of a C binding: the protocol is one ``AF_UNIX`` datagram
of ``KEY=VALUE`` lines to ``$NOTIFY_SOCKET`` (``@`` = Linux abstract namespace).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Final

#: systemd's own recommendation: ping at half the watchdog interval.
_WATCHDOG_FRACTION: Final = 0.5


class SystemdNotifier:
    """Sends state changes to systemd; does nothing when not run by systemd.

    Errors sending a datagram are swallowed: systemd going away must never take the
    daemon down with it (it would restart us anyway if it cared).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        self._watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        """Whether ``$NOTIFY_SOCKET`` was set (we run under ``Type=notify``)."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` pings, or None without a watchdog."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1_000_000 * _WATCHDOG_FRACTION

    def send(self, **fields: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; return whether it was sent."""
        if self._address is None:
            return False
        payload = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(payload.encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Tell systemd start-up is done (``READY=1``)."""
        fields = {"READY": "1"}
        if status:
            fields["STATUS"] = status
        return self.send(**fields)

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """Ping the watchdog (``WATCHDOG=1``)."""
        return self.send(WATCHDOG="1")

    def reloading(self) -> bool:
        """Tell systemd a reload started (``RELOADING=1`` with ``MONOTONIC_USEC``)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING="1", MONOTONIC_USEC=str(usec))

    def stopping(self) -> bool:
        """Tell systemd shutdown started (``STOPPING=1``)."""
        return self.send(STOPPING="1")

    def close(self) -> None:
        """Close the datagram socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process
    return usec if usec > 0 else None
