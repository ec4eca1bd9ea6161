"""A throwaway PostgreSQL server for the tests: ``initdb`` + ``pg_ctl``, loopback only.

One server per test run (``postgres_server`` in ``tests/conftest.py``), a fresh
database per test (``pg_url``). The binaries come from Debian's ``postgresql-15``
package (``/usr/lib/postgresql/<v>/bin``) or the PATH; ``.ci/run`` installs the
package when it is missing. PostgreSQL refuses to run as root, so as root the server
runs as the ``postgres`` user (created by the package) through ``runuser``.

Usable outside pytest too (the cluster benchmark starts one):
``with PostgresServer.start(tmp) as pg: pg.create_database("x")``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

#: The role every test connects as (trust authentication, loopback only).
USER: Final = "watcher"

_counter = itertools.count(1)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (the reason says what is missing)."""


def find_bindir() -> Path:
    """Return the directory of ``initdb`` / ``pg_ctl`` / ``postgres``.

    Raises:
        PostgresUnavailable: Neither Debian's versioned directory nor the PATH has them.
    """
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: (
            int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0
        ),
    )
    if debian:
        return debian[-1].parent
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian "
        "package postgresql-15 (.ci/run does)"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """A running throwaway PostgreSQL server on 127.0.0.1 (see the module docstring)."""

    bindir: Path
    root: Path
    port: int
    _as_user: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        """The server's log (read it when a test fails)."""
        return self.root / "postgres.log"

    @classmethod
    def start(cls, root: Path, *, port: int | None = None) -> PostgresServer:
        """Create a cluster in ``root`` (must not exist or be empty) and start it.

        Raises:
            PostgresUnavailable: The binaries are missing.
            subprocess.CalledProcessError: initdb or pg_ctl failed (its output included).
        """
        bindir = find_bindir()
        root.mkdir(parents=True, exist_ok=True)
        as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no 'postgres' user to run "
                    "PostgreSQL as (the postgresql-15 package creates it)"
                ) from None
            os.chown(root, entry.pw_uid, entry.pw_gid)
            # The socket directory and parents must be reachable by that user.
            for parent in root.parents:
                if parent == Path("/") or parent == Path("/tmp"):
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
            as_user = ["runuser", "-u", "postgres", "--"]
        server = cls(bindir, root, port or free_port(), as_user)
        server._run(
            "initdb",
            "-D",
            str(server.data),
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        conf = server.data / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as out:
            # Throwaway data: durability off keeps the suite fast; loopback only.
            out.write(
                "fsync = off\nfull_page_writes = off\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{root}'\nmax_connections = 300\n"
                "log_min_messages = warning\ninclude = 'port.conf'\n"
            )
        # The port was free when chosen, not necessarily when the server binds it
        # (other tests open thousands of connections): a few tries on fresh ports.
        for attempt in range(5):
            (server.data / "port.conf").write_text(f"port = {server.port}\n")
            try:
                server.pg_ctl("start")
            except subprocess.CalledProcessError:
                if attempt == 4 or port is not None:
                    raise
                server.port = free_port()
            else:
                break
        return server

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as_user, str(self.bindir / tool), *args],
            check=True,
            capture_output=True,
            text=True,
        )

    def pg_ctl(self, action: str, *, mode: str = "fast") -> None:
        """Run ``pg_ctl start|stop|restart`` and wait for it (``mode``: fast / immediate)."""
        args = ["-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60"]
        if action in ("stop", "restart"):
            args += ["-m", mode]
        self._run("pg_ctl", action, *args)

    def restart(self, *, mode: str = "immediate") -> None:
        """Restart the server (``immediate``: like a crash, what the fault tests do)."""
        self.pg_ctl("restart", mode=mode)

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (idempotent enough for teardown)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.pg_ctl("stop", mode=mode)

    def url(self, dbname: str = "postgres") -> str:
        """The ``postgresql://`` URL of one database on this server."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL (a fresh name when None)."""
        import psycopg

        name = name or f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> Self:
        """Return the server (stopped on exit)."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop(mode="immediate")
