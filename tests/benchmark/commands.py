"""Commands from the benchmark to its subprocesses (simulator, floor), one per line.

Kept apart from ``common`` so a subprocess imports nothing it does not use (the floor's
resident memory is one of the figures).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator


async def stdin_commands() -> AsyncIterator[list[str]]:
    """Yield the words of each non-empty line on stdin until the parent closes it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while raw := await reader.readline():
        words = raw.decode().split()
        if words:
            yield words
