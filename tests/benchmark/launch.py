"""Run ``sklm-watcher`` (the real CLI), optionally on uvloop, for the benchmarks.

``python -m tests.benchmark.launch [OPTIONS] -- ARGS...`` is ``sklm-watcher ARGS...``
with, first:

- ``--uvloop``: ``uvloop.install()`` (anyio's asyncio backend then runs on it);
- ``--gc-log``: one stderr line per garbage collection (generation, ms, collected);
- ``--stock-runtime``: skip the daemon's tuning (``watcher.daemon.tune_runtime_for_service``:
  GC threshold and freeze, 16 KiB TLS read buffer), to measure it both ways;
- ``--ssl-buffer BYTES``: asyncio's per-connection TLS read buffer (CPython 3.11:
  256 KiB, ``asyncio.sslproto.SSLProtocol.max_size``) set to BYTES (with
  ``--stock-runtime``, or the daemon's tuning lowers anything above 16 KiB);
- ``--keepalive SECONDS``: the daemon's idle keep-alive set to SECONDS instead of
  1.25 x the longest idle interval + 5 s (prototype: idle servers reconnect);
- ``--heap-log SECONDS FILE``: every SECONDS append Python's allocated blocks and
  tracked objects to FILE (cheap; tells a leak of objects from allocator growth);

These only measure or prototype; the daemon's code is not changed.
"""

from __future__ import annotations

import gc
import importlib
import sys
import threading
import time
from collections import Counter

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


def _log_heap(every: float, path: str) -> None:
    """Every ``every`` seconds collect garbage, then append Python's live allocated
    blocks and object count to ``path``, then the 12 most numerous object types (indented): flat while RSS
    grows means the growth is outside Python's objects (allocator high-water marks,
    C libraries), not a leak of ours; a type whose count keeps rising is one."""

    def run() -> None:
        started = time.monotonic()
        while True:
            time.sleep(every)
            # Only what is reachable: cyclic garbage (an exception's traceback and
            # frames, say) waits for the next full collection and is not a leak.
            gc.collect()
            objects = gc.get_objects()
            counts = Counter(type(o).__qualname__ for o in objects)
            lines = [
                f"{time.monotonic() - started:.0f} s blocks={sys.getallocatedblocks()} "
                f"objects={len(objects)}\n",
                *(f"  {name} {count}\n" for name, count in counts.most_common(12)),
            ]
            del objects
            with open(path, "a", encoding="utf-8") as out:
                out.writelines(lines)

    threading.Thread(target=run, daemon=True).start()


def _stock_runtime() -> None:
    daemon = importlib.import_module("watcher.daemon")
    setattr(daemon, "tune_runtime_for_service", lambda: None)  # noqa: B010 - measurement


def main() -> int:
    """Apply the options, then run the CLI with the remaining arguments."""
    args = sys.argv[1:]
    while args and args[0] != "--":
        option = args.pop(0)
        if option == "--uvloop":
            importlib.import_module("uvloop").install()
        elif option == "--gc-log":
            _log_gc()
        elif option == "--heap-log":
            every, path = float(args.pop(0)), args.pop(0)
            _log_heap(every, path)
        elif option == "--stock-runtime":
            _stock_runtime()
        elif option == "--ssl-buffer":
            sslproto = importlib.import_module("asyncio.sslproto")
            sslproto.SSLProtocol.max_size = int(args.pop(0))
        elif option == "--keepalive":
            client = importlib.import_module("watcher.client")
            setattr(client, "KEEPALIVE_FACTOR", 0.0)  # noqa: B010 - prototype
            setattr(client, "KEEPALIVE_MARGIN", float(args.pop(0)))  # noqa: B010
        else:
            sys.stderr.write(f"launch: unknown option {option}\n")
            return 2
    return cli_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
