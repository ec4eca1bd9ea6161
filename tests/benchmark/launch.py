"""Run ``sklm-watcher`` (the real CLI), optionally on uvloop, for the benchmarks.

``python -m tests.benchmark.launch [OPTIONS] -- ARGS...`` is ``sklm-watcher ARGS...``
with, first:

- ``--uvloop``: ``uvloop.install()`` (anyio's asyncio backend then runs on it);
- ``--gc-log``: one stderr line per garbage collection (generation, ms, collected);
- ``--gc-freeze SECONDS``: ``gc.freeze()`` that long after start (a prototype of a
  fix: start-up objects leave the collector's generations);
- ``--gc-threshold A,B,C``: ``gc.set_threshold(A, B, C)`` (prototype);
- ``--ssl-buffer BYTES``: asyncio's per-connection TLS read buffer (CPython 3.11:
  256 KiB, ``asyncio.sslproto.SSLProtocol.max_size``) set to BYTES (prototype);
- ``--keepalive SECONDS``: the daemon's idle keep-alive set to SECONDS instead of
  1.25 x the longest idle interval + 5 s (prototype: idle servers reconnect);
- ``--no-hint-on-completed``: the scheduler does not fetch ``restore/result`` when
  the poll saw COMPLETED (prototype: COMPLETED is journaled one round trip sooner);
- ``--jitter-down``: jitter only shortens delays, ``interval * (1 - jitter * U)``
  (prototype: a poll is never later than its interval).

These only measure or prototype; the daemon's code is not changed.
"""

from __future__ import annotations

import gc
import importlib
import random
import sys
import threading
import time

from watcher.cli import main as cli_main


def _log_gc() -> None:
    """Write one line per garbage collection to stderr: generation, ms, collected."""
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = (time.perf_counter() - started[0]) * 1000.0
        sys.stderr.write(
            f"gc.collect gen={info['generation']} ms={took:.2f} "
            f"collected={info['collected']} at={time.monotonic():.3f}\n"
        )

    gc.callbacks.append(callback)


def _freeze_later(seconds: float) -> None:
    def freeze() -> None:
        gc.collect()
        gc.freeze()
        sys.stderr.write(f"gc.frozen count={gc.get_freeze_count()}\n")

    timer = threading.Timer(seconds, freeze)
    timer.daemon = True
    timer.start()


def _no_hint_on_completed() -> None:
    scheduler = importlib.import_module("watcher.scheduler")
    phases = importlib.import_module("watcher.phases")
    original = scheduler._may_have_ended

    def may_have_ended(state: object, phase: object) -> bool:
        if phase is phases.Phase.COMPLETED:
            return False
        return bool(original(state, phase))

    setattr(scheduler, "_may_have_ended", may_have_ended)  # noqa: B010 - prototype


def _jitter_down() -> None:
    cadence = importlib.import_module("watcher.cadence")

    def jittered(interval: float, jitter: float, rng: random.Random) -> float:
        return interval * (1.0 - jitter * rng.random()) if jitter > 0 else interval

    setattr(cadence, "jittered", jittered)  # noqa: B010 - prototype


def main() -> int:
    """Apply the options, then run the CLI with the remaining arguments."""
    args = sys.argv[1:]
    while args and args[0] != "--":
        option = args.pop(0)
        if option == "--uvloop":
            importlib.import_module("uvloop").install()
        elif option == "--gc-log":
            _log_gc()
        elif option == "--gc-freeze":
            _freeze_later(float(args.pop(0)))
        elif option == "--gc-threshold":
            first, second, third = (int(x) for x in args.pop(0).split(","))
            gc.set_threshold(first, second, third)
        elif option == "--ssl-buffer":
            sslproto = importlib.import_module("asyncio.sslproto")
            sslproto.SSLProtocol.max_size = int(args.pop(0))
        elif option == "--keepalive":
            client = importlib.import_module("watcher.client")
            setattr(client, "KEEPALIVE_FACTOR", 0.0)  # noqa: B010 - prototype
            setattr(client, "KEEPALIVE_MARGIN", float(args.pop(0)))  # noqa: B010
        elif option == "--no-hint-on-completed":
            _no_hint_on_completed()
        elif option == "--jitter-down":
            _jitter_down()
        else:
            sys.stderr.write(f"launch: unknown option {option}\n")
            return 2
    return cli_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
